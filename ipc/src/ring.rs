//! The slot protocol: one single-producer single-consumer ring per direction,
//! a sequence word per slot, and the in-flight accounting that makes slot
//! reuse safe without the consumer ever writing to the producer's memory.
//!
//! # Who writes which word, and when
//!
//! | word                      | written by | when                                   | read by  |
//! |---------------------------|------------|----------------------------------------|----------|
//! | `req[p % depth].payload`  | client     | call `p`, before its `seq`             | server   |
//! | `req[p % depth].call_id`  | client     | call `p`, before its `seq`             | server   |
//! | `req[p % depth].seq`      | client     | last, `Release`, value `p + 1`         | server (`Acquire`) |
//! | `resp[r % depth].payload` | server     | reply `r`, before its `seq`            | client   |
//! | `resp[r % depth].call_id` | server     | reply `r`, echoes the request's id     | client   |
//! | `resp[r % depth].seq`     | server     | last, `Release`, value `r + 1`         | client (`Acquire`) |
//!
//! A slot holds message `p` exactly when its sequence word is `p + 1`; any
//! other value (zero, an older lap, garbage) means "not yet".
//!
//! # Why a slot is free when its producer reuses it
//!
//! Nobody acknowledges consumption. Instead the client never has more than
//! `depth` calls in flight (a free call id is needed to call), and the server
//! never holds more than `depth` unanswered requests of one client:
//!
//! * Request slot: before the client publishes call `p` it holds a free id,
//!   so at least `p - depth + 1` replies have reached it. Every reply answers
//!   a request the server had already copied out, and the server consumes in
//!   order, so request `p - depth` was copied before the reply the client
//!   acquired. The client's overwrite happens after that acquire.
//! * Response slot: the server writes reply `r` only while it holds an
//!   unanswered request, i.e. `r < consumed`. Request `consumed - 1` was sent
//!   when the client had received at least `consumed - depth` replies, which
//!   is more than `r - depth`. So reply `r - depth` was already read.
//!
//! # What the server checks
//!
//! A correct client leaves in the server's next request slot either that
//! request (`seq = p + 1`) or the one a lap before (`p + 1 - depth`, zero in
//! the first lap). Any other sequence value, or a call id of `depth` or
//! more, is a client breaking the protocol: [`ServedClient::try_recv`]
//! reports it as [`Corruption`] and the server evicts that client. Garbage
//! that looks valid (a payload, a plausible call id) only reaches that
//! client's own answers, bounded by `depth` unanswered requests; the server
//! never waits on a client and never uses a value read from shared memory
//! as an index.

use core::mem::MaybeUninit;
use core::ptr::{self, NonNull};
use zerocopy::{FromBytes, Immutable, IntoBytes};

use crate::sync::{AtomicU32, AtomicU64, Ordering, UnsafeCell};

/// One ring slot. `repr(C)` so both processes agree on the layout; aligned
/// to a cache line so neighbouring slots never share one.
#[repr(C, align(64))]
pub(crate) struct Slot<T> {
    seq: AtomicU64,
    call_id: AtomicU32,
    payload: UnsafeCell<T>,
}

// SAFETY: the payload cell is only written by the single producer while the
// slot is free and only read by the single consumer after it acquired the
// slot's sequence word, so sharing `&Slot<T>` across threads is sound for
// any `T: Send`.
unsafe impl<T: Send> Sync for Slot<T> {}

impl<T> Slot<T> {
    /// A zeroed slot, as a fresh segment holds it.
    #[cfg(all(test, ipc_loom))]
    pub(crate) fn empty() -> Self
    where
        T: FromBytes,
    {
        Self {
            seq: AtomicU64::new(0),
            call_id: AtomicU32::new(0),
            payload: UnsafeCell::new(T::new_zeroed()),
        }
    }
}

/// A view of `depth` consecutive slots (depth a power of two).
pub(crate) struct RingRef<T> {
    base: NonNull<Slot<T>>,
    mask: u64,
}

impl<T> RingRef<T> {
    /// # Safety
    ///
    /// `base` must point to `depth` initialized slots that stay valid and
    /// are not moved for as long as this view and anything made from it
    /// exists; `depth` must be a non-zero power of two.
    pub(crate) unsafe fn new(base: NonNull<Slot<T>>, depth: u32) -> Self {
        debug_assert!(depth.is_power_of_two());
        Self {
            base,
            mask: u64::from(depth) - 1,
        }
    }

    #[inline(always)]
    fn slot(&self, pos: u64) -> &Slot<T> {
        // SAFETY: `pos & mask < depth` and `new`'s contract keeps all `depth`
        // slots valid for the lifetime of `self`.
        unsafe { &*self.base.as_ptr().add((pos & self.mask) as usize) }
    }
}

/// Producing end of one ring.
pub(crate) struct Producer<T> {
    ring: RingRef<T>,
    pos: u64,
}

// SAFETY: a producer is the only writer of its ring's slots; moving it to
// another thread moves that role with it.
unsafe impl<T: Send> Send for Producer<T> {}

/// Copies `value` into a slot's payload (`shmcopy`; a plain copy in the
/// loom model, which tracks the cell's accesses itself, and under the
/// fuzzer, whose AddressSanitizer does not see into inline assembly).
///
/// # Safety
///
/// `p` is a live slot's payload, writable, of one `T`.
#[inline(always)]
unsafe fn copy_to_slot<T>(p: *mut T, value: &T) {
    #[cfg(not(any(ipc_loom, fuzzing)))]
    // SAFETY: `p` holds one `T` (the caller's contract); `value` is ours.
    unsafe {
        shmcopy::to_shared(p.cast(), ptr::from_ref(value).cast(), size_of::<T>());
    }
    #[cfg(any(ipc_loom, fuzzing))]
    // SAFETY: as above.
    unsafe {
        ptr::copy_nonoverlapping(ptr::from_ref(value), p, 1);
    }
}

/// Copies a slot's payload out into `dst` (`shmcopy`; a plain copy in the
/// loom model and under the fuzzer).
///
/// # Safety
///
/// `p` is a live slot's payload of one `T`; `dst` is ours, room for one.
#[inline(always)]
unsafe fn copy_from_slot<T>(dst: *mut T, p: *const T) {
    #[cfg(not(any(ipc_loom, fuzzing)))]
    // SAFETY: the caller's contract.
    unsafe {
        shmcopy::from_shared(dst.cast(), p.cast(), size_of::<T>());
    }
    #[cfg(any(ipc_loom, fuzzing))]
    // SAFETY: as above.
    unsafe {
        ptr::copy_nonoverlapping(p, dst, 1);
    }
}

impl<T: IntoBytes + Immutable + Copy> Producer<T> {
    pub(crate) fn new(ring: RingRef<T>) -> Self {
        Self { ring, pos: 0 }
    }

    /// Publishes `value` in the next slot.
    ///
    /// The caller's in-flight accounting (see the module doc) guarantees the
    /// consumer is done with that slot.
    #[inline(always)]
    pub(crate) fn publish(&mut self, call_id: u32, value: &T) {
        let slot = self.ring.slot(self.pos);
        // SAFETY: the pointer comes from a live slot of the mapping and
        // `value` is a whole `T`. The slot is free (module doc): a correct
        // consumer does not read it now; a faulty peer process that reads or
        // writes it meanwhile gets or leaves torn bytes in its own view,
        // never anything of ours past the slot. A copy the compiler cannot
        // look into (`shmcopy`, no data race for a racing peer to make),
        // not a volatile write, which for a large `T` compiles to one store
        // per byte; the ordering comes from the Release below.
        slot.payload.with_mut(|p| unsafe { copy_to_slot(p, value) });
        // Relaxed: ordered before the consumer's read by the Release below.
        slot.call_id.store(call_id, Ordering::Relaxed);
        // Release: makes the payload and call id visible to the consumer
        // that acquires this sequence value.
        slot.seq.store(self.pos + 1, Ordering::Release);
        self.pos += 1;
    }
}

/// Consuming end of one ring.
pub(crate) struct Consumer<T> {
    ring: RingRef<T>,
    pos: u64,
}

// SAFETY: a consumer is the only reader of its ring's payloads.
unsafe impl<T: Send> Send for Consumer<T> {}

/// What a consumer finds in its next slot's sequence word.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Seq {
    /// The next message is there.
    Ready,
    /// The slot still holds the previous lap's message (or nothing yet).
    Empty,
    /// A value no correct producer writes there.
    Bad(u64),
}

impl<T: FromBytes + Copy> Consumer<T> {
    pub(crate) fn new(ring: RingRef<T>) -> Self {
        Self { ring, pos: 0 }
    }

    /// Whether the next message has been published.
    #[inline(always)]
    pub(crate) fn ready(&self) -> bool {
        // Acquire: callers that see `true` go on to read the payload.
        self.ring.slot(self.pos).seq.load(Ordering::Acquire) == self.pos + 1
    }

    /// Like [`ready`](Self::ready), but tells "not yet" from garbage: a
    /// correct producer leaves in the slot either message `pos` (`pos + 1`)
    /// or the message one lap before (`pos + 1 - depth`, zero in the first
    /// lap). The consumer read that older value itself when it consumed it,
    /// so read-read coherence rules out anything older.
    #[inline(always)]
    pub(crate) fn check(&self) -> Seq {
        // Acquire: as in `ready`.
        let seq = self.ring.slot(self.pos).seq.load(Ordering::Acquire);
        if seq == self.pos + 1 {
            Seq::Ready
        } else if seq == (self.pos + 1).saturating_sub(self.ring.mask + 1) {
            Seq::Empty
        } else {
            Seq::Bad(seq)
        }
    }

    /// Takes the next message, if published.
    #[inline(always)]
    pub(crate) fn try_take(&mut self) -> Option<(u32, T)> {
        if !self.ready() {
            return None;
        }
        Some(self.take_ready())
    }

    /// Takes the next message; the caller has acquired its sequence word.
    #[inline(always)]
    fn take_ready(&mut self) -> (u32, T) {
        let slot = self.ring.slot(self.pos);
        // Relaxed: made visible by the caller's Acquire of `seq`.
        let call_id = slot.call_id.load(Ordering::Relaxed);
        // SAFETY: the pointer comes from a live slot of the mapping, whose
        // bytes are initialised (the segment is created zeroed). The slot
        // holds message `pos` (its sequence word said so) and a correct
        // producer does not touch it until this read is acknowledged
        // through the other ring; a faulty peer process (a client is
        // untrusted) may write it during the copy, which then holds torn
        // bytes: `T: FromBytes` makes any bit pattern a valid `T`. One copy
        // out of the slot into our own memory, which the compiler cannot
        // look into or repeat (`shmcopy`: no data race), and the slot is
        // read nowhere else: what the caller validates and uses is this
        // copy. (A volatile read of a large `T` compiles to one load per
        // byte: 4096 for a 4 KiB payload.)
        let value = slot.payload.with(|p| unsafe {
            let mut v = MaybeUninit::<T>::uninit();
            copy_from_slot(v.as_mut_ptr(), p);
            v.assume_init()
        });
        self.pos += 1;
        (call_id, value)
    }

    /// Position of the next message and its slot index, for error reports.
    fn position(&self) -> (u64, u64) {
        (self.pos, self.pos & self.ring.mask)
    }
}

/// Client side of one client slot: request producer, response consumer and
/// the table of calls in flight, indexed by call id.
pub(crate) struct ClientCore<Req, Resp, U> {
    req: Producer<Req>,
    resp: Consumer<Resp>,
    calls: Box<[Option<U>]>,
    free: Vec<u32>,
}

/// The server broke the protocol: it answered a call id that is not in flight.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct UnknownCallId(pub(crate) u32);

impl<Req, Resp, U> ClientCore<Req, Resp, U>
where
    Req: IntoBytes + Immutable + Copy,
    Resp: FromBytes + Copy,
{
    pub(crate) fn new(req: RingRef<Req>, resp: RingRef<Resp>, depth: u32) -> Self {
        Self {
            req: Producer::new(req),
            resp: Consumer::new(resp),
            calls: (0..depth).map(|_| None).collect(),
            // Reversed so ids are handed out 0, 1, 2, ...
            free: (0..depth).rev().collect(),
        }
    }

    pub(crate) fn in_flight(&self) -> usize {
        self.calls.len() - self.free.len()
    }

    pub(crate) fn capacity(&self) -> usize {
        self.calls.len()
    }

    /// Sends a call, or hands `user` back when `depth` calls are in flight.
    #[inline]
    pub(crate) fn try_call(&mut self, req: &Req, user: U) -> Result<(), U> {
        let Some(id) = self.free.pop() else {
            return Err(user);
        };
        self.calls[id as usize] = Some(user);
        self.req.publish(id, req);
        Ok(())
    }

    /// Whether a response is waiting.
    #[inline(always)]
    pub(crate) fn response_ready(&self) -> bool {
        self.resp.ready()
    }

    /// Takes the next response with the user data of its call.
    #[inline]
    pub(crate) fn try_complete(&mut self) -> Result<Option<(U, Resp)>, UnknownCallId> {
        let Some((id, resp)) = self.resp.try_take() else {
            return Ok(None);
        };
        let user = self
            .calls
            .get_mut(id as usize)
            .and_then(Option::take)
            .ok_or(UnknownCallId(id))?;
        self.free.push(id);
        Ok(Some((user, resp)))
    }
}

/// Server side of one attached client.
pub(crate) struct ServedClient<Req, Resp> {
    req: Consumer<Req>,
    resp: Producer<Resp>,
    outstanding: u32,
    depth: u32,
}

/// What the server found in a client's request ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Take<T> {
    /// Nothing to take now.
    Empty,
    /// Request with its call id.
    Request(u32, T),
    /// The client wrote what no correct client writes; stop serving it.
    Corrupt(Corruption),
}

/// How a client's request ring broke the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Corruption {
    /// A slot's sequence word holds neither the next request nor the one
    /// a lap before it.
    Sequence {
        /// The request position the server expected next.
        pos: u64,
        /// Its slot index.
        slot: u64,
        /// What the sequence word held.
        found: u64,
    },
    /// A request's call id is beyond the ring depth (ids are slot numbers
    /// of the client's call table, `0..depth`).
    CallId {
        /// The request position.
        pos: u64,
        /// The id found.
        id: u32,
        /// The ring depth.
        depth: u32,
    },
}

impl std::fmt::Display for Corruption {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match *self {
            Self::Sequence { pos, slot, found } => write!(
                f,
                "request slot {slot} holds sequence {found:#x}, expected {:#x} (request {pos}) \
                 or the previous lap's value",
                pos + 1
            ),
            Self::CallId { pos, id, depth } => write!(
                f,
                "request {pos} carries call id {id}, beyond the ring depth {depth}"
            ),
        }
    }
}

impl<Req, Resp> ServedClient<Req, Resp>
where
    Req: FromBytes + Copy,
    Resp: IntoBytes + Immutable + Copy,
{
    pub(crate) fn new(req: RingRef<Req>, resp: RingRef<Resp>, depth: u32) -> Self {
        Self {
            req: Consumer::new(req),
            resp: Producer::new(resp),
            outstanding: 0,
            depth,
        }
    }

    /// Requests taken from this client so far.
    pub(crate) fn taken(&self) -> u64 {
        self.req.pos
    }

    /// The client's ring depth.
    pub(crate) fn depth(&self) -> u32 {
        self.depth
    }

    /// Whether a request is waiting that may be taken now, or the ring is
    /// corrupt (which [`try_recv`](Self::try_recv) then reports).
    #[inline(always)]
    pub(crate) fn has_work(&self) -> bool {
        self.outstanding < self.depth && self.req.check() != Seq::Empty
    }

    /// Takes the next request unless `depth` of this client's requests are
    /// already unanswered (then the client is misbehaving or the application
    /// is holding tokens; either way, waiting is the answer).
    #[inline]
    pub(crate) fn try_recv(&mut self) -> Take<Req> {
        if self.outstanding >= self.depth {
            return Take::Empty;
        }
        match self.req.check() {
            Seq::Empty => Take::Empty,
            Seq::Bad(found) => {
                let (pos, slot) = self.req.position();
                Take::Corrupt(Corruption::Sequence { pos, slot, found })
            }
            Seq::Ready => {
                let (pos, _) = self.req.position();
                let (id, req) = self.req.take_ready();
                if id >= self.depth {
                    return Take::Corrupt(Corruption::CallId {
                        pos,
                        id,
                        depth: self.depth,
                    });
                }
                self.outstanding += 1;
                Take::Request(id, req)
            }
        }
    }

    /// Answers one taken request. Returns `false` (and writes nothing) when
    /// no request is unanswered.
    #[inline]
    pub(crate) fn reply(&mut self, call_id: u32, resp: &Resp) -> bool {
        if self.outstanding == 0 {
            return false;
        }
        self.resp.publish(call_id, resp);
        self.outstanding -= 1;
        true
    }
}
