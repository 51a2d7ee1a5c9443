//! Shared receive queues.
//!
//! An SRQ WQE is a 16-byte next segment (`next_wqe_index`) followed by
//! `max_sge` data segments. The device follows the `next_wqe_index` links;
//! they are initialised in ring order (as libmlx5 does) and software posts
//! in ring order, so WQE `i` is reusable once the device consumed it: every
//! consumption yields exactly one CQE, counted by whichever CQ polls it.
//!
//! | word | written by | when |
//! |---|---|---|
//! | WQE data segments | software | before the doorbell record |
//! | doorbell record word 0 (be32, WQEs posted mod 2^16) | software | after the WQEs, `Release` |
//! | `SrqTrack::consumed` (ours, not the NIC's) | CQ pollers | per receive CQE, `Release` |

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::backend::SrqHandle;
use crate::error::Error;
use crate::mr::{Pd, PdInner};
use crate::prm::SEG;
use crate::queue::{SrqMem, SrqTrack};
use crate::wqe::{Sge, write_sges};

pub(crate) struct SrqShared {
    pub(crate) pd: Arc<PdInner>,
    pub(crate) srqn: u32,
    pub(crate) mem: SrqMem,
    pub(crate) max_sge: u32,
    /// Shared with the routes of the CQs its QPs complete on.
    pub(crate) track: Arc<SrqTrack>,
    pub(crate) handle: SrqHandle,
}

// SAFETY: raw pointers into `handle`'s memory, alive as long as this value;
// accesses follow the protocol in the module doc.
unsafe impl Send for SrqShared {}
// SAFETY: as above.
unsafe impl Sync for SrqShared {}

impl Drop for SrqShared {
    fn drop(&mut self) {
        self.pd
            .ctx
            .inner
            .backend
            .destroy_srq(self.srqn, &self.handle);
    }
}

/// A shared receive queue: receive WQEs any QP attached to it may consume.
pub struct Srq {
    pub(crate) shared: Arc<SrqShared>,
    posted: u32,
}

impl std::fmt::Debug for Srq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Srq")
            .field("srqn", &self.shared.srqn)
            .field("depth", &self.depth())
            .finish()
    }
}

impl Srq {
    /// An SRQ with room for at least `depth` posted WQEs of up to
    /// `max_sge` scatter entries each.
    pub fn new(pd: &Pd, depth: u32, max_sge: u32) -> Result<Srq, Error> {
        if depth == 0 || depth > 1 << 15 || max_sge == 0 || max_sge > 30 {
            return Err(Error::InvalidAttr(format!(
                "SRQ depth {depth} (1..=32768) / max_sge {max_sge} (1..=30)"
            )));
        }
        let (handle, mem, srqn) =
            pd.inner
                .ctx
                .inner
                .backend
                .create_srq(&pd.inner.handle, depth, max_sge)?;
        Ok(Srq {
            shared: Arc::new(SrqShared {
                pd: pd.inner.clone(),
                srqn,
                mem,
                max_sge,
                track: Arc::new(SrqTrack::new()),
                handle,
            }),
            posted: 0,
        })
    }

    /// The SRQ number.
    pub fn srqn(&self) -> u32 {
        self.shared.srqn
    }

    /// WQEs that can be posted at once.
    pub fn depth(&self) -> u32 {
        self.shared.mem.wqe_cnt - 1
    }

    /// WQEs posted and not yet consumed (as far as polled CQEs tell).
    pub fn outstanding(&self) -> u32 {
        self.posted.wrapping_sub(self.shared.track.count())
    }

    /// Posts a receive WQE scattering into `sges` (may be empty: enough for
    /// WRITE_IMM, which consumes a WQE but no buffer).
    pub fn post_recv(&mut self, sges: &[Sge]) -> Result<(), Error> {
        let m = &self.shared.mem;
        if sges.len() > self.shared.max_sge as usize {
            return Err(Error::TooManySges {
                count: sges.len(),
                max: self.shared.max_sge as usize,
            });
        }
        if self.outstanding() >= self.depth() {
            return Err(Error::RecvQueueFull {
                depth: self.depth() as usize,
            });
        }
        let slot = self.posted & (m.wqe_cnt - 1);
        // SAFETY: slot < wqe_cnt; the WQE is not owned by the device (the
        // outstanding check above), so we may write its data segments.
        let wqe = unsafe {
            std::slice::from_raw_parts_mut(
                m.buf.add((slot * m.stride) as usize + SEG),
                (m.stride as usize) - SEG,
            )
        };
        write_sges(wqe, sges);
        self.posted = self.posted.wrapping_add(1);
        // SAFETY: dbrec is the SRQ's 4-aligned doorbell record.
        let db = unsafe { AtomicU32::from_ptr(m.dbrec) };
        // Release: the device reads the WQE after it sees the counter.
        db.store((self.posted & 0xffff).to_be(), Ordering::Release);
        Ok(())
    }
}
