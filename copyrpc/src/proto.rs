//! The protocol core: ring positions, batch framing, wrap handling and the
//! credit state machine of one endpoint, with no device calls (sans-IO).
//! The transport (`crate::Context`) moves the bytes; this module decides
//! what the bytes are and when they may move.
//!
//! # Rings
//!
//! Each endpoint owns a *send ring* and a *receive ring* of `N` bytes
//! (a power of two). The send ring mirrors the peer's receive ring: a batch
//! written at offset `o` of our send ring is copied by one RDMA
//! WRITE_IMM to offset `o` of the peer's receive ring. Positions are
//! virtual, monotonically increasing `u64`s; the offset is `pos & (N - 1)`.
//!
//! # Batches
//!
//! A batch is a 16-byte header and messages, all 8-byte aligned, and never
//! straddles the ring end: when a batch of length `L` would not fit before
//! the end, the tail of the lap is skipped and the batch starts at the
//! next lap (the header's `WRAPPED` flag says so; the receiver makes the
//! same decision from the immediate and checks the flag: the explicit wrap
//! marker). The WRITE_IMM's immediate is `L`.
//!
//! | bytes | batch header (little-endian) |
//! |---|---|
//! | 0..8 | credit: the sender's receive-ring consumed position (absolute) |
//! | 8..12 | `L`, the batch length in bytes, header included |
//! | 12..14 | message count |
//! | 14..16 | flags (bit 0: `WRAPPED`) |
//!
//! | bytes | message header |
//! |---|---|
//! | 0..4 | call id |
//! | 4..8 | payload length (bits 0..30); bit 31: a response; bit 30 (with 31): the responder dropped the request without an answer |
//! | 8.. | payload, zero padding to 8 bytes |
//!
//! # Credit
//!
//! The receiver releases its ring in order: a batch's bytes are consumed
//! once every request in it was replied to or dropped (responses are
//! consumed when delivered), so a zero-copy view of a held request is never
//! overwritten. The consumed position rides on every batch the receiver
//! sends. With nothing to send, it sends an empty (credit-only) batch only
//! once what it consumed since its last credit exceeds the *credit lag*
//! `G = (N - K·(S + C) - 3·W - E) / 2` (0 when that is negative), and only
//! for batches that carried messages (never for a batch that was itself
//! empty, so empty batches do not bounce). No RDMA READ is ever needed.
//! The receiver of an empty batch checks this: one that returns no more
//! than `G` of credit is a protocol error (a peer could otherwise send
//! them without end, each taking a receive of the context's shared SRQ).
//!
//! Holding credit back costs the peer nothing it needs: its replies fit
//! by the credit its requests carried (below), and its requests are
//! refused only when `U + W + W + E > N - K·(S + C)` (a request and a
//! wrap's skip take at most `2·W`): once this side has consumed
//! everything the peer sent, the peer's `U` is this side's unsent credit,
//! so a peer refused for lack of credit is owed more than `2·G` and gets
//! it. In a request/reply exchange every request carries the credit for
//! the replies before it, and no empty batch (nor the ACK the transport
//! sends for it) is ever written. The one cost: a side that holds some
//! of the peer's requests unanswered keeps up to `G` of credit for what
//! it consumed before them, so the peer's calls may meet `NoRoom` sooner
//! (never with the default limits, whose `K` requests fit well within
//! `G`); answering the held requests sends it.
//!
//! # Admission: replies never fail for lack of space
//!
//! Let `K` be the calls one side may have in flight, `S` the wire size of
//! the largest reply in its own batch (`16 + 8 + align8(max_reply)`), `W`
//! the largest batch (the most a wrap can skip), `C` = 24 the most a
//! credit-only batch takes (its header and a wrap's skip) and `E` a
//! reserve for credit-only batches. With `U` the unconsumed bytes of our
//! send ring (as far as the peer's credit tells us):
//!
//! * a **request** is appended only if `U + wire + W + E <= N - K·(S + C)`:
//!   the peer's replies to our calls, and our replies to its calls, always
//!   have `K·S` left, and `K·C` stays back for credit-only batches;
//! * a **call** is admitted only if, in our *receive* ring, the worst place
//!   the peer can have reached — the larger of what has arrived and the
//!   request limit our latest credit allowed it
//!   (`credit + N - K·(S + C) - W - E`) — plus one `S` per reply we are
//!   owed (this call's included) plus `W` plus `C` per batch of replies
//!   only that we sent and its credit does not cover yet stays within
//!   `consumed + N - E`. The last term bounds the credit-only batches the
//!   peer may have sent that have not arrived: it sends one only after
//!   consuming a batch of ours beyond its last credit with nothing of its
//!   own to send, and a batch with requests is consumed when the last of
//!   them is replied to, so the reply carries that credit. Credit-only
//!   batches themselves are bounded only by the ring, so that credit
//!   always flows. Then the peer's reply is guaranteed to fit, whatever
//!   requests and credit it sent meanwhile; a held request handle shows up
//!   as back-pressure on new calls, never as a reply without room;
//! * a **reply** must then fit `U + wire <= N - E`; if it does not (the peer
//!   broke the rules), or is larger than `max_reply`, it is an error for the
//!   responder and nothing is written.
//!
//! Counters move only when the transport accepted a flush
//! ([`Conn::flushed`]): a failed post loses no credit and no batch.

use std::collections::VecDeque;

/// Byte access to a ring's memory, one region at a time. The protocol only
/// ever asks for regions it owns at that moment (a message being written,
/// a batch that arrived), so an implementation over memory a NIC reads and
/// writes concurrently never hands out a reference to bytes in flight.
pub trait Ring {
    /// The `len` bytes at ring offset `offset`, to read.
    fn bytes(&self, offset: usize, len: usize) -> &[u8];
    /// The `len` bytes at ring offset `offset`, to write.
    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8];
}

impl Ring for [u8] {
    fn bytes(&self, offset: usize, len: usize) -> &[u8] {
        &self[offset..offset + len]
    }
    fn bytes_mut(&mut self, offset: usize, len: usize) -> &mut [u8] {
        &mut self[offset..offset + len]
    }
}

/// Alignment of every batch and message.
pub const ALIGN: u64 = 8;
/// Bytes of a batch header.
pub const BATCH_HEADER: u64 = 16;
/// Bytes of a message header.
pub const MSG_HEADER: u64 = 8;
/// Header flag: the batch starts at a lap start, the previous lap's tail
/// was skipped.
pub const WRAPPED: u16 = 1;
/// Message length bit: a response.
const RESPONSE: u32 = 1 << 31;
/// Message length bit (responses only): the request was dropped unanswered.
const DROPPED: u32 = 1 << 30;
/// The payload length bits.
const LEN_MASK: u32 = DROPPED - 1;
/// Reserve for credit-only batches (each 16 bytes, plus a wrap).
const CREDIT_RESERVE: u64 = 4 * BATCH_HEADER;
/// The most ring bytes one credit-only batch takes: its header, and the
/// skip of a wrap (batches are 8-byte aligned, so at most 8).
const CREDIT_ONLY: u64 = BATCH_HEADER + ALIGN;

/// `x` rounded up to [`ALIGN`].
pub const fn align(x: u64) -> u64 {
    (x + ALIGN - 1) & !(ALIGN - 1)
}

/// Wire bytes of a message with `len` payload bytes.
pub const fn msg_wire(len: u32) -> u64 {
    MSG_HEADER + align(len as u64)
}

/// The sizes both ends of an endpoint agree on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Bytes of each ring (a power of two).
    pub ring: u32,
    /// Calls one side may have in flight on the endpoint.
    pub max_inflight: u32,
    /// Largest request payload.
    pub max_call: u32,
    /// Largest reply payload (the space every admitted call reserves).
    pub max_reply: u32,
    /// Largest batch, header included.
    pub max_batch: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            ring: 1 << 20,
            max_inflight: 256,
            max_call: 1024,
            max_reply: 1024,
            max_batch: 16 << 10,
        }
    }
}

/// Sizes that cannot work together.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("copyrpc limits {limits:?}: {reason}")]
pub struct LimitsError {
    /// The limits.
    pub limits: Limits,
    /// What is wrong with them.
    pub reason: String,
}

impl Limits {
    /// The wire size of the largest reply in a batch of its own (`S`).
    pub fn reply_slot(&self) -> u64 {
        BATCH_HEADER + msg_wire(self.max_reply)
    }

    /// The credit lag `G` (see the module doc): consumed bytes a side may
    /// leave unreported while it has nothing else to send.
    pub fn credit_lag(&self) -> u64 {
        let n = u64::from(self.ring);
        let margin = u64::from(self.max_inflight) * (self.reply_slot() + CREDIT_ONLY)
            + 3 * u64::from(self.max_batch)
            + CREDIT_RESERVE;
        n.saturating_sub(margin) / 2
    }

    /// Checks that the sizes admit at least one call of each size.
    pub fn validate(&self) -> Result<(), LimitsError> {
        let bad = |reason: String| {
            Err(LimitsError {
                limits: *self,
                reason,
            })
        };
        let n = u64::from(self.ring);
        if !self.ring.is_power_of_two() || self.ring < 256 || self.ring > 1 << 30 {
            return bad("ring must be a power of two in 256..=2^30 bytes".into());
        }
        if self.max_inflight == 0 || self.max_inflight > 1 << 16 {
            return bad("max_inflight must be in 1..=65536".into());
        }
        if self.max_call > LEN_MASK || self.max_reply > LEN_MASK {
            return bad("message payloads must be under 1 GiB".into());
        }
        let batch = u64::from(self.max_batch);
        let biggest = BATCH_HEADER + msg_wire(self.max_call.max(self.max_reply));
        if batch < biggest || batch % ALIGN != 0 {
            return bad(format!(
                "max_batch must be a multiple of 8 holding the largest message ({biggest} bytes)"
            ));
        }
        let reserved = u64::from(self.max_inflight) * (self.reply_slot() + CREDIT_ONLY);
        let request_room = n.saturating_sub(reserved + 2 * batch + CREDIT_RESERVE);
        if request_room < BATCH_HEADER + msg_wire(self.max_call) {
            return bad(format!(
                "ring too small: {} in-flight replies of up to {} bytes and their empty \
                 credit batches reserve {reserved} bytes, two batches of {batch} and the credit reserve leave no room for a request",
                self.max_inflight, self.max_reply
            ));
        }
        Ok(())
    }
}

/// A message could not be appended (nothing was written).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AppendError {
    /// The payload is larger than the limit for its kind.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// Its length.
        len: usize,
        /// The limit.
        max: u32,
    },
    /// Not now: the peer's ring (or the room reserved for replies) is full,
    /// or `max_inflight` calls are in flight. Poll and retry.
    #[error(
        "no room: the peer has not released enough of its ring, or max_inflight calls are in flight"
    )]
    NoRoom,
    /// A reply that does not fit the space the peer reserved: the peer
    /// broke the admission rule (or this side over-replied).
    #[error("reply does not fit the space reserved for it")]
    ReplyOverrun,
}

/// What the peer sent that no correct peer sends.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("protocol violation by the peer: {0}")]
pub struct ProtoError(pub String);

/// A batch ready to be written: `len` bytes at ring offset `offset` of the
/// send ring, to the same offset of the peer's receive ring, immediate
/// `len`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flush {
    /// Ring offset.
    pub offset: u32,
    /// Bytes (the immediate).
    pub len: u32,
    start: u64,
    credit: u64,
    real: bool,
    /// It carries a request (see [`Conn::flushed`]).
    requests: bool,
}

/// A batch being filled or waiting to be flushed.
#[derive(Clone, Copy, Debug)]
struct OutBatch {
    start: u64,
    len: u64,
    count: u16,
    wrapped: bool,
    /// It carries a request.
    requests: bool,
}

/// A received batch not yet fully released.
#[derive(Clone, Copy, Debug)]
struct InBatch {
    end: u64,
    /// Requests of the batch not yet replied to or dropped.
    pending: u32,
    /// Whether it carried messages (its consumption is credit worth
    /// sending an empty batch for).
    real: bool,
}

/// A message of a received batch.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Msg {
    /// The call id.
    pub id: u32,
    /// A response (else a request).
    pub response: bool,
    /// A response saying the request was dropped without an answer.
    pub dropped: bool,
    /// Ring offset of the payload.
    pub offset: u32,
    /// Payload bytes.
    pub len: u32,
}

/// A received batch, parsed: its sequence number (for releasing its
/// requests) and the range of its messages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Parsed {
    /// Sequence number of the batch (see [`Conn::release`]).
    pub seq: u64,
    /// Ring offset of the batch.
    pub offset: u32,
    /// Its length.
    pub len: u32,
    /// Messages in it.
    pub count: u16,
}

/// The protocol state of one endpoint: both directions.
#[derive(Debug)]
pub struct Conn {
    lim: Limits,
    mask: u64,
    reply_slot: u64,
    /// Request limit margin: `K·(S + C) + W + E`.
    request_margin: u64,
    // -- send side --
    /// End of what was written into the send ring (open batch included).
    written: u64,
    open: Option<OutBatch>,
    ready: VecDeque<OutBatch>,
    /// The peer's receive-ring consumed position (credit it returned).
    peer_consumed: u64,
    /// End of what the transport accepted.
    sent: u64,
    /// Ends of the batches with messages and no request (replies only)
    /// the transport accepted that the peer's credit does not cover yet:
    /// each may make the peer send one credit-only batch this side has not
    /// seen (see [`Conn::can_call`]).
    uncredited: VecDeque<u64>,
    // -- receive side --
    /// Where the next batch is expected.
    recv_pos: u64,
    /// Released prefix of the receive ring.
    consumed: u64,
    /// The consumed position last sent as credit.
    advertised: u64,
    /// A batch with messages was consumed since the last credit went out.
    owe_real: bool,
    /// The credit lag `G` (see the module doc): how far `consumed` may run
    /// ahead of `advertised` before a credit-only batch goes.
    credit_lag: u64,
    batches: VecDeque<InBatch>,
    first_seq: u64,
    /// The messages of the last batch [`Conn::on_batch`] accepted, as it
    /// validated them: read once from the ring, which the peer can still
    /// write, and never read again.
    msgs: Vec<Msg>,
    // -- calls --
    /// Calls in flight (replies owed to us), timed-out ones included.
    owed: u32,
}

impl Conn {
    /// A fresh endpoint state.
    pub fn new(lim: Limits) -> Result<Conn, LimitsError> {
        lim.validate()?;
        let reply_slot = lim.reply_slot();
        Ok(Conn {
            lim,
            mask: u64::from(lim.ring) - 1,
            reply_slot,
            request_margin: u64::from(lim.max_inflight) * (reply_slot + CREDIT_ONLY)
                + u64::from(lim.max_batch)
                + CREDIT_RESERVE,
            written: 0,
            open: None,
            ready: VecDeque::new(),
            peer_consumed: 0,
            sent: 0,
            uncredited: VecDeque::new(),
            recv_pos: 0,
            consumed: 0,
            advertised: 0,
            owe_real: false,
            credit_lag: lim.credit_lag(),
            batches: VecDeque::new(),
            first_seq: 0,
            msgs: Vec::new(),
            owed: 0,
        })
    }

    /// The limits.
    pub fn limits(&self) -> &Limits {
        &self.lim
    }

    /// Calls in flight (admitted, reply not yet received or abandoned).
    pub fn owed(&self) -> u32 {
        self.owed
    }

    /// The send ring's position after the last message appended: a call's
    /// request ends here right after [`Conn::call`].
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The end of what the transport accepted ([`Conn::flushed`]): a
    /// request that ends past it has not left, and no reply to it can
    /// have come back.
    pub fn sent(&self) -> u64 {
        self.sent
    }

    fn ring(&self) -> u64 {
        u64::from(self.lim.ring)
    }

    /// Where a batch of (at least) `len` bytes starting at or after `pos`
    /// begins: `pos`, or the next lap start when it would straddle the end.
    fn batch_start(&self, pos: u64, len: u64) -> (u64, bool) {
        if (pos & self.mask) + len > self.ring() {
            ((pos | self.mask) + 1, true)
        } else {
            (pos, false)
        }
    }

    /// Where a message of `wire` bytes would go: appended to the open
    /// batch, or opening a new one. Returns (new `written`, whether a new
    /// batch opens, its start, wrapped).
    fn place(&self, wire: u64) -> (u64, Option<(u64, bool)>) {
        if let Some(b) = &self.open {
            let fits_batch = b.len + wire <= u64::from(self.lim.max_batch);
            let fits_lap = (b.start & self.mask) + b.len + wire <= self.ring();
            if fits_batch && fits_lap && b.count < u16::MAX {
                return (self.written + wire, None);
            }
        }
        let (start, wrapped) = self.batch_start(self.written, BATCH_HEADER + wire);
        (start + BATCH_HEADER + wire, Some((start, wrapped)))
    }

    /// Whether a call may be admitted now (room for the request in the
    /// peer's ring, room for its reply in ours, `max_inflight`).
    pub fn can_call(&self, len: usize) -> Result<(), AppendError> {
        if len > self.lim.max_call as usize {
            return Err(AppendError::TooLarge {
                len,
                max: self.lim.max_call,
            });
        }
        if self.owed >= self.lim.max_inflight {
            return Err(AppendError::NoRoom);
        }
        let (end, _) = self.place(msg_wire(len as u32));
        if end - self.peer_consumed + self.request_margin > self.ring() {
            return Err(AppendError::NoRoom);
        }
        // The worst place the peer can reach in our receive ring: its
        // requests up to the limit our credit allows, the replies we are
        // owed, a wrap, and the credit-only batches it may have sent that
        // have not arrived. Those are bounded by our reply-only batches
        // its credit does not cover yet (see `flushed`), not by the ring:
        // without this term they could fill the space its replies need.
        // The request limit keeps `K·C` back for them, so up to `K` of
        // them leave the `K`-th call admissible.
        let n = self.ring();
        let peer_request_limit = (self.advertised + n).saturating_sub(self.request_margin);
        let credit_only = self.uncredited.len() as u64 * CREDIT_ONLY;
        let worst = self.recv_pos.max(peer_request_limit)
            + u64::from(self.owed + 1) * self.reply_slot
            + u64::from(self.lim.max_batch)
            + credit_only;
        if worst > self.consumed + n - CREDIT_RESERVE {
            return Err(AppendError::NoRoom);
        }
        Ok(())
    }

    /// Appends a request with call id `id` to the send ring `ring` (the
    /// whole ring, `N` bytes), after [`Conn::can_call`]'s checks. The
    /// caller allocates `id` and remembers the call.
    pub fn call<R: Ring + ?Sized>(
        &mut self,
        ring: &mut R,
        id: u32,
        payload: &[u8],
    ) -> Result<(), AppendError> {
        self.can_call(payload.len())?;
        self.append(ring, id, 0, payload);
        self.owed += 1;
        Ok(())
    }

    /// Appends a reply to the request with call id `id`.
    pub fn reply<R: Ring + ?Sized>(
        &mut self,
        ring: &mut R,
        id: u32,
        payload: &[u8],
    ) -> Result<(), AppendError> {
        if payload.len() > self.lim.max_reply as usize {
            return Err(AppendError::TooLarge {
                len: payload.len(),
                max: self.lim.max_reply,
            });
        }
        self.append_reply(ring, id, RESPONSE, payload)
    }

    /// Appends the answer of a request dropped without a reply: the caller
    /// learns its call will get none (and the reserved space is used).
    pub fn reply_dropped<R: Ring + ?Sized>(
        &mut self,
        ring: &mut R,
        id: u32,
    ) -> Result<(), AppendError> {
        self.append_reply(ring, id, RESPONSE | DROPPED, &[])
    }

    fn append_reply<R: Ring + ?Sized>(
        &mut self,
        ring: &mut R,
        id: u32,
        kind: u32,
        payload: &[u8],
    ) -> Result<(), AppendError> {
        let (end, _) = self.place(msg_wire(payload.len() as u32));
        if end - self.peer_consumed + CREDIT_RESERVE > self.ring() {
            return Err(AppendError::ReplyOverrun);
        }
        self.append(ring, id, kind, payload);
        Ok(())
    }

    fn append<R: Ring + ?Sized>(&mut self, ring: &mut R, id: u32, kind: u32, payload: &[u8]) {
        let wire = msg_wire(payload.len() as u32);
        let (end, new) = self.place(wire);
        if let Some((start, wrapped)) = new {
            if let Some(b) = self.open.take() {
                self.ready.push_back(b);
            }
            self.open = Some(OutBatch {
                start,
                len: BATCH_HEADER,
                count: 0,
                wrapped,
                requests: false,
            });
        }
        let at = ((end - wire) & self.mask) as usize;
        let len_word = payload.len() as u32 | kind;
        let out = ring.bytes_mut(at, wire as usize);
        out[0..4].copy_from_slice(&id.to_le_bytes());
        out[4..8].copy_from_slice(&len_word.to_le_bytes());
        let body = MSG_HEADER as usize;
        out[body..body + payload.len()].copy_from_slice(payload);
        if body + payload.len() < out.len() {
            // Padding (up to 7 bytes): not worth a memset call when none.
            out[body + payload.len()..].fill(0);
        }
        let b = self.open.as_mut().expect("opened above");
        b.len += wire;
        b.count += 1;
        b.requests |= kind & RESPONSE == 0;
        self.written = end;
    }

    /// Whether anything waits to be flushed (messages, or credit owed for
    /// a batch that carried messages).
    pub fn dirty(&self) -> bool {
        self.open.is_some() || !self.ready.is_empty() || self.owes_credit()
    }

    /// Whether a credit-only batch is due: batches with messages were
    /// consumed and the credit not sent exceeds the lag.
    fn owes_credit(&self) -> bool {
        self.owe_real && self.consumed.saturating_sub(self.advertised) > self.credit_lag
    }

    /// The next batch to write, its header filled in (credit, length,
    /// count, flags); `None` when there is nothing to send (or no room for
    /// a credit-only batch). Nothing is committed until
    /// [`Conn::flushed`]: calling it again returns the same batch with the
    /// credit brought up to date.
    pub fn next_flush<R: Ring + ?Sized>(&mut self, ring: &mut R) -> Option<Flush> {
        let (b, real) = if let Some(b) = self.ready.front() {
            (*b, true)
        } else if let Some(b) = self.open {
            (b, true)
        } else if self.owes_credit() {
            let (start, wrapped) = self.batch_start(self.written, BATCH_HEADER);
            if start + BATCH_HEADER - self.peer_consumed > self.ring() {
                return None;
            }
            let b = OutBatch {
                start,
                len: BATCH_HEADER,
                count: 0,
                wrapped,
                requests: false,
            };
            (b, false)
        } else {
            return None;
        };
        let at = (b.start & self.mask) as usize;
        let h = ring.bytes_mut(at, BATCH_HEADER as usize);
        h[0..8].copy_from_slice(&self.consumed.to_le_bytes());
        h[8..12].copy_from_slice(&(b.len as u32).to_le_bytes());
        h[12..14].copy_from_slice(&b.count.to_le_bytes());
        let flags = if b.wrapped { WRAPPED } else { 0 };
        h[14..16].copy_from_slice(&flags.to_le_bytes());
        Some(Flush {
            offset: at as u32,
            len: b.len as u32,
            start: b.start,
            credit: self.consumed,
            real,
            requests: b.requests,
        })
    }

    /// The transport accepted `f` (the WRITE_IMM is posted): commit it.
    pub fn flushed(&mut self, f: Flush) {
        let end = f.start + u64::from(f.len);
        if f.real && !f.requests {
            // Only a batch without requests can make the peer send a
            // credit-only batch: the peer consumes one with requests when
            // it releases the last of them, right after queueing its
            // reply, and that reply's batch carries the credit.
            self.uncredited.push_back(end);
        }
        if f.real {
            if self.ready.front().is_some_and(|b| b.start == f.start) {
                self.ready.pop_front();
            } else if self.open.is_some_and(|b| b.start == f.start) {
                self.open = None;
            }
        } else {
            self.written = end;
        }
        self.sent = self.sent.max(end);
        if f.credit >= self.advertised {
            self.advertised = f.credit;
            self.owe_real = false;
        }
    }

    /// A batch of `imm` bytes arrived in the receive ring `ring`: validates
    /// and parses it, header and messages, reading each byte once. Its
    /// messages, as validated, are then in [`Conn::messages`] (never read
    /// from the ring again: the peer may write it meanwhile); the batch
    /// stays unconsumed until every request in it was released
    /// ([`Conn::release`]).
    pub fn on_batch<R: Ring + ?Sized>(&mut self, ring: &R, imm: u32) -> Result<Parsed, ProtoError> {
        let len = u64::from(imm);
        if len < BATCH_HEADER || len > u64::from(self.lim.max_batch) || len % ALIGN != 0 {
            return Err(ProtoError(format!("batch length {len} (immediate)")));
        }
        let (start, wrapped) = self.batch_start(self.recv_pos, len);
        if start + len - self.consumed > self.ring() {
            return Err(ProtoError(format!(
                "batch of {len} bytes at {start} overruns unreleased bytes (consumed {})",
                self.consumed
            )));
        }
        let at = (start & self.mask) as usize;
        let batch = ring.bytes(at, len as usize);
        let h = &batch[..BATCH_HEADER as usize];
        let credit = u64::from_le_bytes(h[0..8].try_into().expect("8 bytes"));
        let hlen = u32::from_le_bytes(h[8..12].try_into().expect("4 bytes"));
        let count = u16::from_le_bytes(h[12..14].try_into().expect("2 bytes"));
        let flags = u16::from_le_bytes(h[14..16].try_into().expect("2 bytes"));
        if u64::from(hlen) != len {
            return Err(ProtoError(format!(
                "batch header says {hlen} bytes, immediate {len}"
            )));
        }
        if (flags & WRAPPED != 0) != wrapped || flags & !WRAPPED != 0 {
            return Err(ProtoError(format!(
                "batch flags {flags:#x} disagree with the wrap at {start}"
            )));
        }
        if credit < self.peer_consumed || credit > self.sent {
            return Err(ProtoError(format!(
                "credit {credit} outside {}..={} (what was sent)",
                self.peer_consumed, self.sent
            )));
        }
        // A batch without messages only returns credit, and a peer sends
        // one only when it owes more than the credit lag (see
        // `owes_credit`). One that returned less could be sent without
        // end, each taking a receive of the SRQ that every endpoint of the
        // context shares (the other endpoints' peers would then meet
        // receiver-not-ready NAKs): it is refused.
        if count == 0 && credit - self.peer_consumed <= self.credit_lag {
            return Err(ProtoError(format!(
                "a batch without messages returns {} bytes of credit, not more than the \
                 credit lag {}",
                credit - self.peer_consumed,
                self.credit_lag
            )));
        }
        // Walk the messages once: they must tile the batch exactly.
        self.msgs.clear();
        let mut p = BATCH_HEADER;
        let mut requests = 0u32;
        for _ in 0..count {
            let m = read_msg(batch, p, at)?;
            if !m.response {
                requests += 1;
            } else if m.len > self.lim.max_reply {
                return Err(ProtoError(format!(
                    "response of {} bytes exceeds max_reply",
                    m.len
                )));
            }
            if !m.response && m.len > self.lim.max_call {
                return Err(ProtoError(format!(
                    "request of {} bytes exceeds max_call",
                    m.len
                )));
            }
            p += msg_wire(m.len);
            self.msgs.push(m);
        }
        if p != len {
            return Err(ProtoError(format!(
                "{count} messages end at byte {p} of a {len}-byte batch"
            )));
        }
        self.peer_consumed = credit;
        while self.uncredited.front().is_some_and(|&end| end <= credit) {
            self.uncredited.pop_front();
        }
        self.recv_pos = start + len;
        let seq = self.first_seq + self.batches.len() as u64;
        self.batches.push_back(InBatch {
            end: start + len,
            pending: requests,
            real: count > 0,
        });
        Ok(Parsed {
            seq,
            offset: at as u32,
            len: len as u32,
            count,
        })
    }

    /// The messages of the batch [`Conn::on_batch`] accepted last, in
    /// order, as it validated them (their payloads lie inside the batch).
    pub fn messages(&self) -> &[Msg] {
        &self.msgs
    }

    /// A response to call `id` arrived (or a call was abandoned for good):
    /// one reply less is owed.
    pub fn call_done(&mut self) {
        debug_assert!(self.owed > 0);
        self.owed = self.owed.saturating_sub(1);
    }

    /// A request of batch `seq` was replied to or dropped: its bytes may be
    /// released once the batch's other requests are.
    pub fn release(&mut self, seq: u64) {
        let Some(i) = seq.checked_sub(self.first_seq) else {
            return;
        };
        if let Some(b) = self.batches.get_mut(i as usize) {
            b.pending = b.pending.saturating_sub(1);
        }
        self.advance();
    }

    /// Consumes every leading batch whose requests are all released (call
    /// after handling a batch: one without requests is consumed at once).
    pub fn advance(&mut self) {
        while let Some(b) = self.batches.front() {
            if b.pending > 0 {
                break;
            }
            self.consumed = b.end;
            self.owe_real |= b.real;
            self.batches.pop_front();
            self.first_seq += 1;
        }
    }

    /// The receive ring's released prefix (what credit says).
    pub fn consumed(&self) -> u64 {
        self.consumed
    }

    /// The send ring's unconsumed bytes as the peer's credit tells.
    pub fn unconsumed(&self) -> u64 {
        self.written - self.peer_consumed
    }
}

/// Reads the message header at byte `p` of `batch` (at ring offset
/// `base`), checking that it and its payload lie inside the batch.
fn read_msg(batch: &[u8], p: u64, base: usize) -> Result<Msg, ProtoError> {
    let end = batch.len() as u64;
    if p + MSG_HEADER > end {
        return Err(ProtoError("message header past the batch end".into()));
    }
    let at = p as usize;
    let m = decode_msg(&batch[at..at + MSG_HEADER as usize], base + at);
    if m.dropped && (!m.response || m.len != 0) {
        return Err(ProtoError(
            "DROPPED flag on a request or with a payload".into(),
        ));
    }
    if p + msg_wire(m.len) > end {
        return Err(ProtoError(format!(
            "message of {} bytes past the batch end",
            m.len
        )));
    }
    Ok(m)
}

/// A message header at ring offset `at`.
fn decode_msg(h: &[u8], at: usize) -> Msg {
    let id = u32::from_le_bytes(h[0..4].try_into().expect("4 bytes"));
    let w = u32::from_le_bytes(h[4..8].try_into().expect("4 bytes"));
    Msg {
        id,
        response: w & RESPONSE != 0,
        dropped: w & DROPPED != 0,
        offset: (at + MSG_HEADER as usize) as u32,
        len: w & LEN_MASK,
    }
}
