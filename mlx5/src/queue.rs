//! The seam between the resources (`Context`, `Qp`, `Cq`, `Srq`, ...) and
//! the backends (`soft`, `hw`): what both sides name and neither owns.
//!
//! * The queue memory as a backend hands it out or takes it: [`QpMem`],
//!   [`CqMem`], [`SrqMem`] (buffers, sizes, doorbell records; the buffers
//!   themselves are [`crate::mem::DmaBuf`]s or rdma-core's).
//! * What a QP is created and connected with: [`QpCaps`], [`ConnInfo`],
//!   [`ConnectOpts`], [`Mtu`].
//! * The completion tracking a CQ poller shares with a QP's poster and the
//!   software device: [`QpTrack`], [`SrqTrack`].
//!
//! | word | written by | when |
//! |---|---|---|
//! | `QpTrack::completed` | CQ poller | WQE index of the latest send completion, `Release` |
//! | `QpTrack::rq_consumed`, `SrqTrack::consumed` | CQ poller | one per receive CQE, `Release` |
//! | `QpTrack::state` | the QP's owner, the software device, a poller of an error CQE | advisory, `Relaxed` |

use std::sync::atomic::{AtomicU8, AtomicU32, Ordering};

use crate::error::Error;
use crate::prm::{Access, MAX_DS, QpState, SEG};

/// The largest send queue, in WQEBBs: the WQE counter of doorbells and
/// completions is 16 bits, so a queue of 2^16 could not tell full from
/// empty (ConnectX allows 2^15).
pub const MAX_SQ_WQEBBS: u64 = 1 << 15;

/// Queue sizes and limits of a QP.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    /// Send WQEs of the largest size that fit at once.
    pub max_send_wr: u32,
    /// Receive WQEs (ignored with an SRQ).
    pub max_recv_wr: u32,
    /// Gather entries per send WQE.
    pub max_send_sge: u32,
    /// Scatter entries per receive WQE.
    pub max_recv_sge: u32,
    /// Inline bytes per send WQE.
    pub max_inline: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 128,
            max_recv_wr: 128,
            max_send_sge: 2,
            max_recv_sge: 2,
            max_inline: 64,
        }
    }
}

impl QpCaps {
    /// Segments of the largest WQE these caps allow.
    pub(crate) fn max_ds(&self) -> usize {
        let sges = 2 + self.max_send_sge as usize;
        let inline = 2 + (4 + self.max_inline as usize).div_ceil(SEG);
        sges.max(inline).max(4)
    }

    /// WQEBBs of the send queue these caps make: room for `max_send_wr`
    /// WQEs of the largest size, rounded up to a power of two.
    pub fn sq_wqebbs(&self) -> u64 {
        (u64::from(self.max_send_wr) * crate::wqe::wqebbs(self.max_ds()) as u64).next_power_of_two()
    }

    /// Checks the caps as [`crate::QpBuilder::build`] does: sizes within
    /// the device's limits, a WQE that fits, and a send queue of at most
    /// [`MAX_SQ_WQEBBS`].
    pub fn validate(&self) -> Result<(), Error> {
        let bad = |m: String| Err(Error::InvalidAttr(m));
        if self.max_send_wr == 0 || self.max_send_wr > 1 << 14 {
            return bad(format!("max_send_wr {} (1..=16384)", self.max_send_wr));
        }
        if self.max_recv_wr > 1 << 14 {
            return bad(format!("max_recv_wr {} (0..=16384)", self.max_recv_wr));
        }
        if self.max_send_sge > 16 || self.max_recv_sge > 16 {
            return bad("more than 16 SGEs".into());
        }
        if self.max_ds() > MAX_DS {
            return bad(format!(
                "max_inline {} makes WQEs over {} bytes",
                self.max_inline,
                MAX_DS * SEG
            ));
        }
        if self.sq_wqebbs() > MAX_SQ_WQEBBS {
            return bad(format!(
                "max_send_wr {} of WQEs up to {} WQEBBs makes a send queue of {} WQEBBs \
                 (at most {MAX_SQ_WQEBBS}: the WQE counter is 16 bits)",
                self.max_send_wr,
                crate::wqe::wqebbs(self.max_ds()),
                self.sq_wqebbs()
            ));
        }
        Ok(())
    }
}

/// What a peer needs to connect to a QP, for any out-of-band exchange.
///
/// Encoded as 32 little-endian bytes: `magic "M5CI"`, `version u16 = 1`,
/// `lid u16`, `qpn u32`, `psn u32`, `gid [u8; 16]`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnInfo {
    /// QP number (24 bits).
    pub qpn: u32,
    /// First packet sequence number the QP sends (24 bits).
    pub psn: u32,
    /// Port LID (InfiniBand; 0 on RoCE and the software device).
    pub lid: u16,
    /// Port GID; for the software device, the device address.
    pub gid: [u8; 16],
}

impl ConnInfo {
    /// Encoded length.
    pub const LEN: usize = 32;
    const MAGIC: [u8; 4] = *b"M5CI";
    const VERSION: u16 = 1;

    /// The 32-byte encoding.
    pub fn encode(&self) -> [u8; Self::LEN] {
        let mut b = [0u8; Self::LEN];
        b[0..4].copy_from_slice(&Self::MAGIC);
        b[4..6].copy_from_slice(&Self::VERSION.to_le_bytes());
        b[6..8].copy_from_slice(&self.lid.to_le_bytes());
        b[8..12].copy_from_slice(&self.qpn.to_le_bytes());
        b[12..16].copy_from_slice(&self.psn.to_le_bytes());
        b[16..32].copy_from_slice(&self.gid);
        b
    }

    /// Decodes [`ConnInfo::encode`]'s bytes; anything else is an error.
    pub fn decode(b: &[u8]) -> Result<ConnInfo, Error> {
        if b.len() != Self::LEN {
            return Err(Error::BadConnInfo("length is not 32 bytes"));
        }
        if b[0..4] != Self::MAGIC {
            return Err(Error::BadConnInfo("bad magic"));
        }
        if u16::from_le_bytes([b[4], b[5]]) != Self::VERSION {
            return Err(Error::BadConnInfo("unknown version"));
        }
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let (qpn, psn) = (u32_at(8), u32_at(12));
        if qpn > 0x00ff_ffff || psn > 0x00ff_ffff {
            return Err(Error::BadConnInfo("QPN or PSN over 24 bits"));
        }
        let mut gid = [0u8; 16];
        gid.copy_from_slice(&b[16..32]);
        Ok(ConnInfo {
            qpn,
            psn,
            lid: u16::from_le_bytes([b[6], b[7]]),
            gid,
        })
    }
}

/// Path MTU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mtu {
    /// 256 bytes.
    M256 = 1,
    /// 512 bytes.
    M512 = 2,
    /// 1024 bytes.
    M1024 = 3,
    /// 2048 bytes.
    M2048 = 4,
    /// 4096 bytes.
    M4096 = 5,
}

/// Attributes of the INIT/RTR/RTS transitions.
#[derive(Clone, Copy, Debug)]
pub struct ConnectOpts {
    /// What peers may do to this QP's memory (REMOTE_* of [`Access`]).
    pub access: Access,
    /// Port number (hardware; 1-based).
    pub port: u8,
    /// GID table index (hardware, RoCE).
    pub gid_index: u8,
    /// Path MTU.
    pub mtu: Mtu,
    /// RNR NAK timer this QP asks senders to wait (IB encoding, 0..=31).
    pub min_rnr_timer: u8,
    /// Local ACK timeout (IB encoding: 4.096 µs × 2^timeout; 0 waits
    /// forever).
    pub timeout: u8,
    /// Transport retries.
    pub retry_cnt: u8,
    /// RNR retries (7 = forever).
    pub rnr_retry: u8,
    /// Outstanding READs/atomics, each direction.
    pub max_rd_atomic: u8,
}

impl Default for ConnectOpts {
    fn default() -> Self {
        ConnectOpts {
            access: Access::REMOTE_WRITE | Access::REMOTE_READ | Access::REMOTE_ATOMIC,
            port: 1,
            gid_index: 0,
            mtu: Mtu::M4096,
            min_rnr_timer: 12, // 0.64 ms
            timeout: 14,       // ~67 ms
            retry_cnt: 7,
            rnr_retry: 7,
            max_rd_atomic: 16,
        }
    }
}

/// State the CQ poller shares with the QP's poster (see the module doc).
pub(crate) struct QpTrack {
    /// Bit 16 set ([`COMPLETED_VALID`]): bits 0..16 hold the WQE index of
    /// the latest send completion.
    pub(crate) completed: AtomicU32,
    /// Receive WQEs of the QP's own RQ consumed (as polled CQEs tell).
    pub(crate) rq_consumed: AtomicU32,
    state: AtomicU8,
}

/// Marks [`QpTrack::completed`] as holding a WQE index.
pub(crate) const COMPLETED_VALID: u32 = 1 << 16;

impl QpTrack {
    pub(crate) fn new() -> QpTrack {
        QpTrack {
            completed: AtomicU32::new(0),
            rq_consumed: AtomicU32::new(0),
            state: AtomicU8::new(QpState::Reset as u8),
        }
    }

    pub(crate) fn send_completed(&self, wqe_counter: u16) {
        // Release: the poster reuses the WQEBBs only after this CQE was read.
        self.completed
            .store(COMPLETED_VALID | u32::from(wqe_counter), Ordering::Release);
    }

    pub(crate) fn recv_consumed(&self) {
        // Release: as above, for receive WQEs.
        self.rq_consumed.fetch_add(1, Ordering::Release);
    }

    pub(crate) fn reset(&self) {
        // Relaxed: called with the device's state lock held during RESET,
        // when no poller may be polling completions of this QP.
        self.completed.store(0, Ordering::Relaxed);
        self.rq_consumed.store(0, Ordering::Relaxed);
    }

    pub(crate) fn set_state(&self, s: QpState) {
        // Relaxed: an advisory cache of the device's state, read by posters
        // to refuse or allow posting; no data is published through it.
        self.state.store(s as u8, Ordering::Relaxed);
    }

    pub(crate) fn state(&self) -> QpState {
        // Relaxed: see set_state.
        QpState::from_u8(self.state.load(Ordering::Relaxed))
    }
}

/// The consumer side of an SRQ: receive WQEs consumed, counted by
/// whichever CQ polls their completions.
pub(crate) struct SrqTrack {
    consumed: AtomicU32,
}

impl SrqTrack {
    pub(crate) fn new() -> SrqTrack {
        SrqTrack {
            consumed: AtomicU32::new(0),
        }
    }

    /// One receive WQE of the SRQ was consumed (a CQE was polled).
    pub(crate) fn consumed(&self) {
        // Release: the poster reuses the WQE only after this CQE was read.
        self.consumed.fetch_add(1, Ordering::Release);
    }

    /// Receive WQEs consumed so far (free-running).
    pub(crate) fn count(&self) -> u32 {
        // Acquire: pairs with `consumed`.
        self.consumed.load(Ordering::Acquire)
    }
}

/// Where a QP's queues live.
pub(crate) struct QpMem {
    pub(crate) sq_buf: *mut u8,
    pub(crate) sq_wqe_cnt: u32,
    pub(crate) rq_buf: *mut u8,
    pub(crate) rq_wqe_cnt: u32,
    pub(crate) rq_stride: u32,
    /// Word 0: RQ counter; word 1: SQ counter.
    pub(crate) dbrec: *mut u32,
}

/// Where a CQ's memory lives.
pub(crate) struct CqMem {
    pub(crate) buf: *mut u8,
    pub(crate) cqe_cnt: u32,
    pub(crate) dbrec: *mut u32,
}

/// Where an SRQ's memory lives.
pub(crate) struct SrqMem {
    pub(crate) buf: *mut u8,
    pub(crate) wqe_cnt: u32,
    pub(crate) stride: u32,
    pub(crate) dbrec: *mut u32,
}
