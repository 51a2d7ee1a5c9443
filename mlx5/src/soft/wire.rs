//! The wire between software devices in different processes or hosts, as a
//! pure codec: addresses, frame headers, `REQ` and `RESP` bodies in and out
//! of byte buffers. No I/O (that is the links'), no device state.
//!
//! # Addresses
//!
//! A software device's address is the 16-byte GID its QPs put in
//! [`crate::ConnInfo`]:
//!
//! | bytes | unix (kind 1) | tcp (kind 2) |
//! |---|---|---|
//! | 0..4 | `"SOFT"` | `"SOFT"` |
//! | 4 | 1 | 2 |
//! | 5 | 0 | 0 |
//! | 6..8 | 0 | port, big-endian |
//! | 8..12 | process id, LE | IPv4 address |
//! | 12..16 | device id, LE | device id, LE |
//!
//! A unix address names the abstract socket `@mlx5-soft.<pid>.<id>`, bound
//! the first time a QP of the device hands out its connection info. A tcp
//! address is the device's listening socket (`soft@tcp...`).
//!
//! # Links and frames
//!
//! Two devices talk over one stream socket (a *link*), whichever side
//! connected, shared by all their QPs. The connector sends `HELLO` (its
//! address and the address it wants), the acceptor answers `WELCOME` with a
//! status; then both sides send `REQ`, `RESP` and `ACKREQ` frames, through the
//! socket or, when the connector offered shared memory (`HELLO` flag) and
//! the acceptor took it (`WELCOME` byte 1), through the two byte rings of
//! a memfd passed over the socket ([`super::shm`]): the same bytes either
//! way. Every frame is an
//! 8-byte header (`body length u32 LE`, `kind u8`, 3 zero bytes) and a body
//! (all integers little-endian):
//!
//! * `HELLO` (1): `"M5SW"`, version u16 = 3, flags u16 (bit 0: offers
//!   shared-memory rings; unix sockets only), from `[16]`, to `[16]`.
//! * `WELCOME` (2): status u8 (0 ok, 1 no such device, 2 refused: over a
//!   unix socket, the connector is not the process whose pid its address
//!   names, or runs as another user than the acceptor and root; over TCP,
//!   it announced a unix address; see `cred`), shared memory u8
//!   (1: taken), 6 zero bytes. When taken, the connector sends
//!   `"M5SHMOFR"` with the memfd (`SCM_RIGHTS`), the acceptor answers
//!   `"M5SHMACC"` once it checked and mapped it; after that only wake-up
//!   bytes (any value, sent to a peer found asleep) cross the socket.
//! * `REQ` (3): src QPN u32, dst QPN u32, PSN u32, epoch u32, opcode u8,
//!   flags u8 (bit 0: solicited event; bit 1: ACK at once, see below), 2
//!   zero bytes, rkey u32, remote
//!   address u64, length u32, immediate u32, swap/add u64, compare u64
//!   (56 bytes), then the payload (WRITE and SEND only; `length` bytes).
//! * `RESP` (4): requester QPN u32, epoch u32, PSN u32, status u8 (0 ACK,
//!   1 RNR NAK, 2 NAK, 3 out of sequence, 4 no answer: the target QP
//!   dropped it as a NIC drops a packet it cannot take), argument u8 (RNR timer or
//!   syndrome), more u16, atomic original value u64, data length u32,
//!   0 u32 (32 bytes), then the READ data.
//!
//! * `ACKREQ` (5): no body. The requester has a WQE that completes
//!   locally (a NOP, a local failure) waiting behind requests whose
//!   answers the responder may hold back (below): those leave at the end
//!   of the pass that reads it, as answers wanted at once do (a manual
//!   device may keep them one more pass; a full ring or socket, longer).
//!   A NIC's AckReq bit. At most one per flight of requests.
//!
//! The responder answers every `REQ`, in the order the requests arrived,
//! so a link's answers come in the order its requests were sent. Each
//! answer is one `RESP`, except that consecutive *plain* ACKs (status 0,
//! original value 0, no data: every WRITE and SEND, and whatever else has
//! nothing more to say) queued together travel as one: a `RESP` with
//! `more` = k answers the k + 1 oldest requests unanswered on its link,
//! and names (QPN, epoch, PSN) the newest of them. A `RESP` that does not
//! name the oldest request still unanswered on its link (or, with `more`,
//! the one k after it) is stale or forged: it is dropped and is not
//! progress. `more` on anything but a plain ACK is a malformed frame. Progress, which restarts the ACK
//! clock of a link with requests outstanding, is an answer to that oldest
//! request, or bytes of a frame still arriving (a large one takes a while).
//!
//! When answers leave is the responder's choice, as a NIC coalesces ACKs:
//! an answer that is not a plain ACK, or answers a `REQ` with the *ACK at
//! once* flag, leaves at the end of the pass that executed it (a manual
//! device may keep it for one more pass, see `Link::defer_answers`);
//! plain ACKs of the other `REQ`s may wait on the link for
//! `link::ACK_HOLD`, and leave earlier with the first frame that goes to
//! that peer (a request, most often, in the same store or `write`). A
//! requester sets the flag on a WQE that asked for a completion, on
//! every READ and atomic, and on every `REQ` of a link whose ACK timeout
//! is under `link::ACK_AT_ONCE_BELOW`; an unsignaled WRITE or SEND's ACK
//! completes nothing the application sees.
//!

use std::marker::PhantomData;
use std::net::Ipv4Addr;

use crate::prm::{Syndrome, opcode};
use crate::wqe::Remote;

pub(crate) const ADDR_MAGIC: [u8; 4] = *b"SOFT";
const KIND_UNIX: u8 = 1;
const KIND_TCP: u8 = 2;

/// A software device's address.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Addr {
    Unix { pid: u32, id: u32 },
    Tcp { ip: Ipv4Addr, port: u16, id: u32 },
}

impl Addr {
    pub(crate) fn encode(&self) -> [u8; 16] {
        let mut g = [0u8; 16];
        g[0..4].copy_from_slice(&ADDR_MAGIC);
        match *self {
            Addr::Unix { pid, id } => {
                g[4] = KIND_UNIX;
                g[8..12].copy_from_slice(&pid.to_le_bytes());
                g[12..16].copy_from_slice(&id.to_le_bytes());
            }
            Addr::Tcp { ip, port, id } => {
                g[4] = KIND_TCP;
                g[6..8].copy_from_slice(&port.to_be_bytes());
                g[8..12].copy_from_slice(&ip.octets());
                g[12..16].copy_from_slice(&id.to_le_bytes());
            }
        }
        g
    }

    pub(crate) fn decode(g: &[u8; 16]) -> Result<Addr, String> {
        if g[0..4] != ADDR_MAGIC {
            return Err(
                "remote address is not a software device's (mixing hardware and software devices?)"
                    .into(),
            );
        }
        let word = |i: usize| [g[i], g[i + 1], g[i + 2], g[i + 3]];
        let id = u32::from_le_bytes(word(12));
        match (g[4], g[5]) {
            (KIND_UNIX, 0) if g[6..8] == [0, 0] => Ok(Addr::Unix {
                pid: u32::from_le_bytes(word(8)),
                id,
            }),
            (KIND_TCP, 0) => Ok(Addr::Tcp {
                ip: Ipv4Addr::from(word(8)),
                port: u16::from_be_bytes([g[6], g[7]]),
                id,
            }),
            _ => Err(format!(
                "unknown software device address kind {} (a newer version of this crate?)",
                g[4]
            )),
        }
    }

    pub(crate) fn unix_name(pid: u32, id: u32) -> String {
        format!("mlx5-soft.{pid}.{id}")
    }
}

impl std::fmt::Display for Addr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Addr::Unix { pid, id } => write!(f, "unix:@{}", Addr::unix_name(pid, id)),
            Addr::Tcp { ip, port, id } => write!(f, "tcp:{ip}:{port} (soft{id})"),
        }
    }
}

pub(crate) const HDR: usize = 8;
pub(crate) const K_HELLO: u8 = 1;
pub(crate) const K_WELCOME: u8 = 2;
pub(crate) const K_REQ: u8 = 3;
pub(crate) const K_RESP: u8 = 4;
/// An ACK request: no body; the answers the receiver holds back on the
/// link go at the end of the pass that reads it.
pub(crate) const K_ACKREQ: u8 = 5;
pub(crate) const HELLO_LEN: usize = 40;
pub(crate) const WELCOME_LEN: usize = 8;
pub(crate) const REQ_LEN: usize = 56;
pub(crate) const RESP_LEN: usize = 32;
/// The RC message limit: the most a REQ payload or READ can carry.
pub(crate) const MAX_MSG: u64 = 1 << 31;
pub(crate) const WIRE_MAGIC: [u8; 4] = *b"M5SW";
pub(crate) const WIRE_VERSION: u16 = 3;

/// A request as it travels from requester to responder.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Request {
    pub(crate) opcode: u8,
    /// The requester device's address.
    pub(crate) src: [u8; 16],
    pub(crate) src_qpn: u32,
    /// Request sequence number (per QP, from 0).
    pub(crate) psn: u32,
    pub(crate) dst_qpn: u32,
    pub(crate) remote: Remote,
    /// Payload bytes (WRITE/SEND) or bytes to read (READ).
    pub(crate) len: u32,
    pub(crate) imm: u32,
    pub(crate) swap_add: u64,
    pub(crate) compare: u64,
    /// The WQE asked for a solicited event at the responder.
    pub(crate) solicited: bool,
    /// The requester wants the answer at once (flags bit 1): the responder
    /// does not hold it back (see the module doc).
    pub(crate) ack_now: bool,
}

/// The responder's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Response {
    /// Done; for atomics, the original value (READ data is in the buffer).
    Ack { orig: u64 },
    /// No receive WQE: retry after the responder's RNR timer.
    Rnr { timer: u8 },
    /// Rejected: the requester completes with this syndrome.
    Nak(Syndrome),
    /// Not the sequence number the responder expects (a request sent after
    /// one that was RNR NAKed): ignored, the requester resends it.
    OutOfSequence,
    /// Dropped without an answer, as a NIC drops a packet for a QP that
    /// does not exist, is not in RTR/RTS, or is connected to another QP:
    /// the requester resends after its ACK timeout, `retry_cnt` times, then
    /// completes with `TransportRetryExceeded` (so a peer still connecting
    /// is waited for, as on hardware).
    NoAnswer,
}

pub(crate) fn header(kind: u8, body: usize) -> [u8; HDR] {
    let mut h = [0u8; HDR];
    h[0..4].copy_from_slice(&(body as u32).to_le_bytes());
    h[4] = kind;
    h
}

pub(crate) fn le32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
}

pub(crate) fn le64(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// A REQ's fixed part (what follows its header, before the payload).
pub(crate) fn req_fixed(req: &Request, epoch: u32) -> [u8; REQ_LEN] {
    let mut b = [0u8; REQ_LEN];
    b[0..4].copy_from_slice(&req.src_qpn.to_le_bytes());
    b[4..8].copy_from_slice(&req.dst_qpn.to_le_bytes());
    b[8..12].copy_from_slice(&req.psn.to_le_bytes());
    b[12..16].copy_from_slice(&epoch.to_le_bytes());
    b[16] = req.opcode;
    b[17] = u8::from(req.solicited) | (u8::from(req.ack_now) << 1);
    b[20..24].copy_from_slice(&req.remote.rkey.to_le_bytes());
    b[24..32].copy_from_slice(&req.remote.addr.to_le_bytes());
    b[32..36].copy_from_slice(&req.len.to_le_bytes());
    b[36..40].copy_from_slice(&req.imm.to_le_bytes());
    b[40..48].copy_from_slice(&req.swap_add.to_le_bytes());
    b[48..56].copy_from_slice(&req.compare.to_le_bytes());
    b
}

/// The bytes a frame carries (a WRITE or SEND payload, READ data), read
/// only by copying them out: a slice of this device's own buffers, or a
/// span of a shared-memory ring another process published. The latter is
/// never made a `&[u8]`: that process could still write it (it would only
/// change the bytes copied, which are the peer's to choose anyway).
#[derive(Clone, Copy, Debug)]
pub(crate) struct Data<'a> {
    ptr: *const u8,
    len: usize,
    _life: PhantomData<&'a [u8]>,
}

impl<'a> Data<'a> {
    pub(crate) fn slice(s: &'a [u8]) -> Data<'a> {
        Data {
            ptr: s.as_ptr(),
            len: s.len(),
            _life: PhantomData,
        }
    }

    /// # Safety
    ///
    /// `ptr..ptr + len` is mapped and readable for `'a`.
    pub(crate) unsafe fn raw(ptr: *const u8, len: usize) -> Data<'a> {
        Data {
            ptr,
            len,
            _life: PhantomData,
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.len
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `n` bytes and the rest (`n <= len`).
    pub(crate) fn split_at(self, n: usize) -> (Data<'a>, Data<'a>) {
        assert!(n <= self.len);
        // SAFETY: n <= len: both halves lie in the readable range.
        unsafe {
            (
                Data::raw(self.ptr, n),
                Data::raw(self.ptr.add(n), self.len - n),
            )
        }
    }

    /// Appends the bytes to `out`.
    pub(crate) fn append_to(self, out: &mut Vec<u8>) {
        let at = out.len();
        out.reserve(self.len);
        // SAFETY: `out` has room for the bytes (reserved above) and its
        // length covers them only once they are copied (no zeroing first:
        // the copy is the only write); a Vec's spare capacity never
        // overlaps readable bytes.
        unsafe {
            self.copy_to(out.as_mut_ptr().add(at));
            out.set_len(at + self.len);
        }
    }

    /// Copies the bytes to `dst`.
    ///
    /// # Safety
    ///
    /// `dst..dst + len` is writable and does not overlap the bytes.
    pub(crate) unsafe fn copy_to(self, dst: *mut u8) {
        // SAFETY: the source is readable (type invariant); the caller
        // vouches for the destination. Either side may be memory another
        // process or the application writes during the copy (a ring span,
        // a registered region): `shmcopy` makes that no data race.
        unsafe { shmcopy::from_shared(dst, self.ptr, self.len) };
    }
}

/// Decodes a REQ body (from `src`): the request, the requester's epoch and
/// the payload.
pub(crate) fn get_req(
    body: &[u8],
    src: [u8; 16],
) -> Result<(Request, u32, Data<'_>), &'static str> {
    if body.len() < REQ_LEN {
        return Err("short REQ frame");
    }
    req_from(&body[..REQ_LEN], Data::slice(&body[REQ_LEN..]), src)
}

/// Decodes a REQ from its fixed part and its payload (wherever that is).
pub(crate) fn req_from<'a>(
    body: &[u8],
    payload: Data<'a>,
    src: [u8; 16],
) -> Result<(Request, u32, Data<'a>), &'static str> {
    if body.len() < REQ_LEN {
        return Err("short REQ frame");
    }
    let req = Request {
        opcode: body[16],
        src,
        src_qpn: le32(body, 0),
        dst_qpn: le32(body, 4),
        psn: le32(body, 8),
        remote: Remote {
            rkey: le32(body, 20),
            addr: le64(body, 24),
        },
        len: le32(body, 32),
        imm: le32(body, 36),
        swap_add: le64(body, 40),
        compare: le64(body, 48),
        solicited: body[17] & 1 != 0,
        ack_now: body[17] & 2 != 0,
    };
    let carries = matches!(
        req.opcode,
        opcode::RDMA_WRITE | opcode::RDMA_WRITE_IMM | opcode::SEND | opcode::SEND_IMM
    );
    let want = if carries { req.len as usize } else { 0 };
    if payload.len() != want {
        return Err("REQ payload length disagrees with its header");
    }
    Ok((req, le32(body, 12), payload))
}

/// Starts a RESP frame at the end of `tx`; returns where it starts. READ
/// data is appended after it, then [`finish_resp`] fills it in.
pub(crate) fn start_resp(tx: &mut Vec<u8>) -> usize {
    let at = tx.len();
    tx.resize(at + HDR + RESP_LEN, 0);
    at
}

pub(crate) fn finish_resp(tx: &mut [u8], at: usize, req: &Request, epoch: u32, r: Response) {
    let data = tx.len() - at - HDR - RESP_LEN;
    tx[at..at + HDR].copy_from_slice(&header(K_RESP, RESP_LEN + data));
    tx[at + HDR..at + HDR + RESP_LEN].copy_from_slice(&resp_fixed(req, epoch, r, data));
}

/// The fixed part of the RESP answering `req`, followed by `data` bytes of
/// READ data.
pub(crate) fn resp_fixed(req: &Request, epoch: u32, r: Response, data: usize) -> [u8; RESP_LEN] {
    let mut b = [0u8; RESP_LEN];
    b[0..4].copy_from_slice(&req.src_qpn.to_le_bytes());
    b[4..8].copy_from_slice(&epoch.to_le_bytes());
    b[8..12].copy_from_slice(&req.psn.to_le_bytes());
    let (status, arg, orig) = match r {
        Response::Ack { orig } => (0u8, 0u8, orig),
        Response::Rnr { timer } => (1, timer, 0),
        Response::Nak(s) => (2, s.code(), 0),
        Response::OutOfSequence => (3, 0, 0),
        Response::NoAnswer => (4, 0, 0),
    };
    b[12] = status;
    b[13] = arg;
    b[16..24].copy_from_slice(&orig.to_le_bytes());
    b[24..28].copy_from_slice(&(data as u32).to_le_bytes());
    b
}

/// Whether a RESP fixed part at the start of `b` (a whole `RESP_LEN`)
/// is a plain ACK: status ACK, original value 0, no data.
fn plain_ack(b: &[u8]) -> bool {
    b[12] == 0 && b[13] == 0 && le64(b, 16) == 0 && le32(b, 24) == 0
}

/// Folds a plain ACK of `req` into the plain-ACK `RESP` frame `frame`
/// (its header and fixed part, unsent): it then answers one request more,
/// and names `req`. False (nothing changed) if `frame` is no such frame or
/// already carries as many answers as `more` counts.
pub(crate) fn fold_ack(frame: &mut [u8], req: &Request, epoch: u32) -> bool {
    if frame.len() != HDR + RESP_LEN || frame[..HDR] != header(K_RESP, RESP_LEN) {
        return false;
    }
    let b = &mut frame[HDR..];
    let more = u16::from_le_bytes([b[14], b[15]]);
    if !plain_ack(b) || more == u16::MAX {
        return false;
    }
    b[0..4].copy_from_slice(&req.src_qpn.to_le_bytes());
    b[4..8].copy_from_slice(&epoch.to_le_bytes());
    b[8..12].copy_from_slice(&req.psn.to_le_bytes());
    b[14..16].copy_from_slice(&(more + 1).to_le_bytes());
    true
}

/// A decoded RESP.
pub(crate) struct Resp<'a> {
    pub(crate) qpn: u32,
    pub(crate) epoch: u32,
    pub(crate) psn: u32,
    pub(crate) resp: Response,
    pub(crate) data: Data<'a>,
    /// The plain ACKs it carries for the requests sent before the one it
    /// names (see the module doc).
    pub(crate) more: u16,
}

impl Resp<'_> {
    /// The plain ACK of one request.
    pub(crate) fn ack(qpn: u32, epoch: u32, psn: u32) -> Resp<'static> {
        Resp {
            qpn,
            epoch,
            psn,
            resp: Response::Ack { orig: 0 },
            data: Data::slice(&[]),
            more: 0,
        }
    }
}

pub(crate) fn get_resp(body: &[u8]) -> Result<Resp<'_>, &'static str> {
    if body.len() < RESP_LEN {
        return Err("short RESP frame");
    }
    resp_from(&body[..RESP_LEN], Data::slice(&body[RESP_LEN..]))
}

/// Decodes a RESP from its fixed part and its data (wherever that is).
pub(crate) fn resp_from<'a>(body: &[u8], data: Data<'a>) -> Result<Resp<'a>, &'static str> {
    if body.len() < RESP_LEN {
        return Err("short RESP frame");
    }
    if le32(body, 24) as usize != data.len() {
        return Err("RESP data length disagrees with its header");
    }
    let more = u16::from_le_bytes([body[14], body[15]]);
    if more > 0 && !plain_ack(body) {
        return Err("a RESP answering several requests that is not a plain ACK");
    }
    let resp = match body[12] {
        0 => Response::Ack {
            orig: le64(body, 16),
        },
        1 => Response::Rnr { timer: body[13] },
        2 => Response::Nak(Syndrome::from_code(body[13])),
        3 => Response::OutOfSequence,
        4 => Response::NoAnswer,
        _ => return Err("unknown RESP status"),
    };
    Ok(Resp {
        qpn: le32(body, 0),
        epoch: le32(body, 4),
        psn: le32(body, 8),
        resp,
        data,
        more,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The REQ flags byte: solicited event (bit 0) and ACK at once (bit 1)
    /// each travel on their own; other bits are ignored.
    #[test]
    fn req_flags_round_trip() {
        for (solicited, ack_now) in [(false, false), (true, false), (false, true), (true, true)] {
            let req = Request {
                opcode: opcode::RDMA_WRITE,
                src: [9; 16],
                src_qpn: 0x100,
                psn: 3,
                dst_qpn: 0x101,
                remote: Remote {
                    addr: 0x1000,
                    rkey: 7,
                },
                len: 0,
                imm: 0,
                swap_add: 0,
                compare: 0,
                solicited,
                ack_now,
            };
            let mut b = req_fixed(&req, 5);
            assert_eq!(b[17], u8::from(solicited) | u8::from(ack_now) << 1);
            b[17] |= 0xf0;
            let (got, epoch, _) = req_from(&b, Data::slice(&[]), [9; 16]).expect("valid");
            assert_eq!(epoch, 5);
            assert_eq!((got.solicited, got.ack_now), (solicited, ack_now));
        }
    }
}
