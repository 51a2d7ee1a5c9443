//! Call/reply over a pair of SPSC queues.
//!
//! A [`Caller`] sends `(call id, request)` on one queue and receives
//! `(call id, response)` on the other; a [`Responder`] does the opposite.
//! The caller keeps each call's user data in a slab indexed by call id, so
//! responses may come in any order, and a responder may keep a
//! [`ReplyToken`] and answer later.
//!
//! **A reply never fails for lack of room**: a call is admitted only while
//! fewer than `max_in_flight` calls are outstanding, and the response queue
//! holds at least `max_in_flight` values, so every admitted call's reply
//! has a slot waiting for it.
//!
//! **Nothing in flight is lost**: when the responder is dropped, the
//! caller's [`poll`](Caller::poll) delivers every reply it sent, then hands
//! back each call it never answered, with its user data and a
//! `Disconnected` result.

use crate::error::{CapacityError, Disconnected, TryRecvError, TrySendError};
use crate::shared::new_slots;
use crate::{Receiver, Sender, Transport};

/// Call id marking a one-way message (no reply expected).
pub(crate) const NOTIFY: u32 = u32::MAX;

/// Why a call was not sent; the request and user data come back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CallError<Req, U> {
    /// `max_in_flight` calls are outstanding, or the request queue is full.
    #[error("call limit or queue full")]
    Full(Req, U),
    /// The responder is gone.
    #[error("responder disconnected")]
    Disconnected(Req, U),
}

/// Identifies a request to answer with [`Responder::reply`]. Not `Clone`:
/// each request is answered once.
#[must_use = "an unanswered call never completes at the caller"]
#[derive(Debug)]
pub struct ReplyToken {
    pub(crate) call_id: u32,
}

/// The calling end.
pub struct Caller<T: Transport, Req: Send, Resp: Send, U> {
    req: T::Producer<(u32, Req)>,
    resp: T::Consumer<(u32, Resp)>,
    calls: Box<[Option<U>]>,
    free: Vec<u32>,
    pace: Pace,
}

/// The answering end.
pub struct Responder<T: Transport, Req: Send, Resp: Send> {
    req: T::Consumer<(u32, Req)>,
    resp: T::Producer<(u32, Resp)>,
    /// Returns request slots at least this often, so a responder that is
    /// never idle does not starve its caller of room.
    sync_pace: Pace,
    /// Publishes replies at least this often (a quarter of the response
    /// queue), so a busy responder that never flushes is not held back for
    /// long; a reply is published at once only by a flush (or a queue that
    /// shows each value as it is sent): call it when idle.
    reply_pace: Pace,
}

/// Counts operations between publications: batches them, but never more
/// than a quarter of the queue, so a busy side cannot hold the other up.
struct Pace {
    since: usize,
    every: usize,
}

impl Pace {
    fn new(queue: usize) -> Self {
        Self {
            since: 0,
            every: (queue / 4).max(1),
        }
    }

    /// Counts one operation; `true` when it is time to publish.
    #[inline(always)]
    fn tick(&mut self) -> bool {
        self.since += 1;
        if self.since >= self.every {
            self.since = 0;
            true
        } else {
            false
        }
    }

    #[inline(always)]
    fn reset(&mut self) {
        self.since = 0;
    }
}

/// Both ends of one call/reply channel.
pub type Pair<T, Req, Resp, U> = (Caller<T, Req, Resp, U>, Responder<T, Req, Resp>);

/// Most calls a caller may have outstanding: one call id each, in `u32`,
/// with one id reserved for notifications.
pub const MAX_IN_FLIGHT: usize = NOTIFY as usize;

/// A connected caller/responder pair: up to `max_in_flight` calls
/// outstanding (at least 1), request queue of `capacity` (at least
/// `max_in_flight`).
///
/// # Panics
///
/// When [`try_pair`] refuses the sizes, with a message naming them and the
/// reason.
#[track_caller]
pub fn pair<T: Transport, Req: Send, Resp: Send, U>(
    capacity: usize,
    max_in_flight: usize,
) -> Pair<T, Req, Resp, U> {
    match try_pair(capacity, max_in_flight) {
        Ok(pair) => pair,
        Err(e) => panic!(
            "rpc::pair({capacity}, {max_in_flight}) over {}: {e}",
            T::NAME
        ),
    }
}

/// About the bytes [`try_pair`] allocates for these sizes (saturating):
/// its two queues and the caller's call table.
pub(crate) fn pair_bytes<T: Transport, Req: Send, Resp: Send, U>(
    capacity: usize,
    max_in_flight: usize,
) -> usize {
    let m = max_in_flight.max(1);
    T::channel_bytes::<(u32, Req)>(capacity.max(m))
        .saturating_add(T::channel_bytes::<(u32, Resp)>(m))
        .saturating_add(m.saturating_mul(size_of::<Option<U>>() + size_of::<u32>()))
}

/// Like [`pair`], or why it cannot be made: `max_in_flight` above
/// [`MAX_IN_FLIGHT`], or a queue or the call table refused
/// ([`Transport::try_channel`]).
pub fn try_pair<T: Transport, Req: Send, Resp: Send, U>(
    capacity: usize,
    max_in_flight: usize,
) -> Result<Pair<T, Req, Resp, U>, CapacityError> {
    if max_in_flight > MAX_IN_FLIGHT {
        return Err(CapacityError::TooManyInFlight {
            requested: max_in_flight,
            max: MAX_IN_FLIGHT,
        });
    }
    let max_in_flight = max_in_flight.max(1);
    let (req_tx, req_rx) = T::try_channel(capacity.max(max_in_flight))?;
    let (resp_tx, resp_rx) = T::try_channel(max_in_flight)?;
    let calls = new_slots(max_in_flight, max_in_flight, || None)?;
    // Ids handed out lowest first: the free list is a stack.
    let mut next = max_in_flight as u32;
    let free = new_slots(max_in_flight, max_in_flight, || {
        next -= 1;
        next
    })?
    .into_vec();
    let req_size = req_tx.capacity();
    let resp_size = resp_tx.capacity();
    Ok((
        Caller {
            req: req_tx,
            resp: resp_rx,
            calls,
            free,
            pace: Pace::new(req_size),
        },
        Responder {
            req: req_rx,
            resp: resp_tx,
            sync_pace: Pace::new(req_size),
            reply_pace: Pace::new(resp_size),
        },
    ))
}

impl<T: Transport, Req: Send, Resp: Send, U> Caller<T, Req, Resp, U> {
    /// Sends a call. It becomes visible to the responder at the next
    /// [`flush`](Self::flush) (immediately for transports that publish per
    /// message).
    #[inline]
    pub fn call(&mut self, req: Req, user: U) -> Result<(), CallError<Req, U>> {
        let Some(id) = self.free.pop() else {
            return Err(CallError::Full(req, user));
        };
        match self.req.try_send((id, req)) {
            Ok(()) => {
                self.calls[id as usize] = Some(user);
                if self.pace.tick() {
                    self.req.publish();
                }
                Ok(())
            }
            Err(e) => {
                self.free.push(id);
                Err(match e {
                    TrySendError::Full((_, r)) => CallError::Full(r, user),
                    TrySendError::Disconnected((_, r)) => CallError::Disconnected(r, user),
                })
            }
        }
    }

    /// Sends a one-way message (no reply, no call id).
    #[inline]
    pub fn notify(&mut self, req: Req) -> Result<(), TrySendError<Req>> {
        self.req.try_send((NOTIFY, req)).map_err(|e| match e {
            TrySendError::Full((_, r)) => TrySendError::Full(r),
            TrySendError::Disconnected((_, r)) => TrySendError::Disconnected(r),
        })?;
        if self.pace.tick() {
            self.req.publish();
        }
        Ok(())
    }

    /// Publishes calls and notifications sent so far. (They are also
    /// published on their own every quarter of the queue.)
    #[inline]
    pub fn flush(&mut self) {
        self.req.publish();
        self.pace.reset();
    }

    /// Delivers every arrived response as `f(user_data, Ok(response))`.
    /// Once the responder is gone and every reply it sent has been
    /// delivered, the calls it never answered come back as
    /// `f(user_data, Err(Disconnected(())))`, each once. Returns how many
    /// calls were delivered either way; `Err` when the responder is gone
    /// and nothing was left.
    #[inline]
    pub fn poll(
        &mut self,
        mut f: impl FnMut(U, Result<Resp, Disconnected<()>>),
    ) -> Result<usize, Disconnected<()>> {
        let calls = &mut self.calls;
        let free = &mut self.free;
        match self.resp.recv_batch(usize::MAX, |(id, resp)| {
            // Ids come from our own slab through the responder, which only
            // echoes them; an unknown id would be a bug in this module.
            if let Some(user) = calls.get_mut(id as usize).and_then(Option::take) {
                free.push(id);
                f(user, Ok(resp));
            }
        }) {
            Ok(n) => Ok(n),
            Err(TryRecvError::Empty) => Ok(0),
            Err(TryRecvError::Disconnected) => self.abandon_in_flight(f),
        }
    }

    /// The responder is gone and its queue drained (`recv_batch` saw the
    /// producer gone with Acquire, after its last publication): no call
    /// still in the slab can be answered. Hands each back.
    #[cold]
    fn abandon_in_flight(
        &mut self,
        mut f: impl FnMut(U, Result<Resp, Disconnected<()>>),
    ) -> Result<usize, Disconnected<()>> {
        let mut n = 0;
        for (id, call) in self.calls.iter_mut().enumerate() {
            if let Some(user) = call.take() {
                self.free.push(id as u32);
                f(user, Err(Disconnected(())));
                n += 1;
            }
        }
        if n == 0 { Err(Disconnected(())) } else { Ok(n) }
    }

    /// Calls sent and not yet answered.
    pub fn in_flight(&self) -> usize {
        self.calls.len() - self.free.len()
    }

    /// Whether the responder is gone.
    pub fn is_disconnected(&self) -> bool {
        self.req.is_disconnected()
    }
}

impl<T: Transport, Req: Send, Resp: Send> Responder<T, Req, Resp> {
    /// Takes the next request: `Some(token)` for a call, `None` for a
    /// notification.
    #[inline]
    pub fn try_recv(&mut self) -> Result<(Option<ReplyToken>, Req), TryRecvError> {
        let (id, req) = self.req.try_recv()?;
        if self.sync_pace.tick() {
            self.req.sync();
        }
        Ok(((id != NOTIFY).then_some(ReplyToken { call_id: id }), req))
    }

    /// Returns received requests' slots to the caller. (They are also
    /// returned on their own every quarter of the queue.)
    #[inline]
    pub fn sync(&mut self) {
        self.req.sync();
        self.sync_pace.reset();
    }

    /// Answers a call. Cannot fail for lack of room (module doc); fails only
    /// if the caller is gone, handing the response back.
    #[inline]
    pub fn reply(&mut self, token: ReplyToken, resp: Resp) -> Result<(), Disconnected<Resp>> {
        match self.resp.try_send((token.call_id, resp)) {
            Ok(()) => {
                if self.reply_pace.tick() {
                    self.resp.publish();
                }
                Ok(())
            }
            Err(TrySendError::Disconnected((_, r))) => Err(Disconnected(r)),
            Err(TrySendError::Full(v)) => {
                // Unreachable by the admission rule; if it were reached,
                // waiting is still correct (the caller frees room by polling).
                self.resp
                    .send(v)
                    .map_err(|Disconnected((_, r))| Disconnected(r))
            }
        }
    }

    /// Publishes replies sent so far. (They are also published on their
    /// own every quarter of the queue.)
    #[inline]
    pub fn flush(&mut self) {
        self.resp.publish();
        self.reply_pace.reset();
    }
}
