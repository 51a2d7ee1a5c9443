//! The queues as the benchmark drives them: one non-blocking attempt per
//! call ([`Tx::try_send`], [`Rx::try_recv`]), wrapped in busy loops
//! ([`send_spin`], [`recv_spin`]) of one of two kinds ([`Idle`]: a PAUSE
//! after every failed attempt, or none), so every implementation is
//! measured in the same spin mode. The inproc transports are adapted by
//! [`Inproc`], which publishes and syncs every `EVERY` messages (or only
//! when the queue is full or empty); the peers (rtrb, crossbeam, std) by
//! thin impls of [`Tx`]/[`Rx`].

use std::hint::spin_loop;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::{Duration, Instant};

use inproc::{Receiver, Sender, Transport, TryRecvError, TrySendError};

/// A side that made no progress for this long has lost a message or
/// deadlocked: the benchmark panics rather than hang.
const STALL: Duration = Duration::from_secs(10);

/// One SPSC queue implementation.
pub trait Queue: 'static {
    /// Name in figure ids.
    const NAME: &'static str;
    /// Sending end.
    type Tx<M: Send + 'static>: Tx<M>;
    /// Receiving end.
    type Rx<M: Send + 'static>: Rx<M>;
    /// A queue of `capacity` messages.
    fn pair<M: Send + 'static>(capacity: usize) -> (Self::Tx<M>, Self::Rx<M>);
}

/// Sending end: one non-blocking attempt.
pub trait Tx<M>: Send {
    /// Enqueues `m` or hands it back when full.
    fn try_send(&mut self, m: M) -> Result<(), M>;
    /// Makes everything sent visible (Lamport's `publish`).
    fn flush(&mut self) {}
}

/// Receiving end: one non-blocking attempt.
pub trait Rx<M>: Send {
    /// The oldest visible message, if any.
    fn try_recv(&mut self) -> Option<M>;
    /// Returns the room of everything received (Lamport's `sync`).
    fn release(&mut self) {}
}

/// Counts polls that found nothing to do, and panics once they have lasted
/// [`STALL`]. Looks at the clock only every 64 Ki polls.
struct Stall {
    polls: u32,
    since: Option<Instant>,
}

impl Stall {
    fn new() -> Self {
        Self {
            polls: 0,
            since: None,
        }
    }

    #[inline]
    fn tick(&mut self, side: &str) {
        self.polls = self.polls.wrapping_add(1);
        if self.polls & 0xffff == 0 {
            self.check(side);
        }
    }

    #[cold]
    fn check(&mut self, side: &str) {
        let now = Instant::now();
        let since = *self.since.get_or_insert(now);
        if now - since > STALL {
            panic!(
                "{side} made no progress for {STALL:?}: a message was lost or the queue stalled"
            );
        }
    }
}

/// What a busy loop does after an attempt that found the queue full or
/// empty, before it tries again.
pub trait Idle {
    /// Name in figure ids.
    const NAME: &'static str;
    /// What the table says about it.
    const ABOUT: &'static str;
    /// Called after every failed attempt.
    fn idle();
}

/// Spin with PAUSE: `std::hint::spin_loop()` (the x86 PAUSE instruction)
/// after every failed attempt, as a well-behaved spin-wait does. On recent
/// Intel cores a PAUSE lasts on the order of a hundred cycles, so it slows
/// down whichever side fails more often.
pub struct Pause;

impl Idle for Pause {
    const NAME: &'static str = "pause";
    const ABOUT: &'static str = "spin with PAUSE (a `spin_loop()` hint after every poll that finds the queue full or empty)";
    #[inline(always)]
    fn idle() {
        spin_loop();
    }
}

/// Plain busy poll: the next attempt follows at once, so the figure shows
/// the queue's own cost, including what polling a contended line costs the
/// other side.
pub struct Poll;

impl Idle for Poll {
    const NAME: &'static str = "poll";
    const ABOUT: &'static str = "plain busy poll (no PAUSE: a failed poll is retried at once)";
    #[inline(always)]
    fn idle() {}
}

/// Sends `m`, spinning while the queue is full (flushing first, so a
/// batching sender never waits on values it has not published).
#[inline]
pub fn send_spin<I: Idle, M>(tx: &mut impl Tx<M>, mut m: M) {
    let mut stall = Stall::new();
    loop {
        match tx.try_send(m) {
            Ok(()) => return,
            Err(back) => {
                m = back;
                tx.flush();
                I::idle();
                stall.tick("sender");
            }
        }
    }
}

/// Receives a message, spinning while the queue is empty (releasing room
/// first, so a batching receiver never holds back a waiting sender).
#[inline]
pub fn recv_spin<I: Idle, M>(rx: &mut impl Rx<M>) -> M {
    let mut stall = Stall::new();
    loop {
        if let Some(m) = rx.try_recv() {
            return m;
        }
        rx.release();
        I::idle();
        stall.tick("receiver");
    }
}

/// An inproc transport `T` that publishes after every `EVERY` sends and
/// syncs after every `EVERY` receives (`EVERY = 1`: each message), and in
/// any case when the queue is found full or empty ([`send_spin`],
/// [`recv_spin`]). `EVERY = `[`IDLE_ONLY`]: only then.
pub struct Inproc<T, const EVERY: usize>(PhantomData<T>);

/// `Inproc`'s `EVERY` for publishing and syncing only when the queue is
/// found full or empty: how FastForward and onesided are used, since their
/// values are visible at `try_send` and room comes back as they are read
/// (a partly read batch waits for a sync).
pub const IDLE_ONLY: usize = 0;

/// One end of an inproc queue with its count of messages not yet
/// published (sender) or synced (receiver).
pub struct Paced<E, const EVERY: usize> {
    end: E,
    pending: usize,
}

impl<T: Transport, const EVERY: usize> Queue for Inproc<T, EVERY> {
    const NAME: &'static str = T::NAME;
    type Tx<M: Send + 'static> = Paced<T::Producer<M>, EVERY>;
    type Rx<M: Send + 'static> = Paced<T::Consumer<M>, EVERY>;

    fn pair<M: Send + 'static>(capacity: usize) -> (Self::Tx<M>, Self::Rx<M>) {
        let (tx, rx) = T::channel(capacity);
        (
            Paced {
                end: tx,
                pending: 0,
            },
            Paced {
                end: rx,
                pending: 0,
            },
        )
    }
}

impl<M, S: Sender<M>, const EVERY: usize> Tx<M> for Paced<S, EVERY> {
    #[inline]
    fn try_send(&mut self, m: M) -> Result<(), M> {
        match self.end.try_send(m) {
            Ok(()) => {
                if EVERY != IDLE_ONLY {
                    self.pending += 1;
                    if self.pending == EVERY {
                        self.end.publish();
                        self.pending = 0;
                    }
                }
                Ok(())
            }
            Err(TrySendError::Full(m)) => Err(m),
            Err(TrySendError::Disconnected(_)) => panic!("consumer dropped mid-benchmark"),
        }
    }

    #[inline]
    fn flush(&mut self) {
        self.end.publish();
        self.pending = 0;
    }
}

impl<M, R: Receiver<M>, const EVERY: usize> Rx<M> for Paced<R, EVERY> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        match self.end.try_recv() {
            Ok(m) => {
                if EVERY != IDLE_ONLY {
                    self.pending += 1;
                    if self.pending == EVERY {
                        self.end.sync();
                        self.pending = 0;
                    }
                }
                Some(m)
            }
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => panic!("producer dropped mid-benchmark"),
        }
    }

    #[inline]
    fn release(&mut self) {
        self.end.sync();
        self.pending = 0;
    }
}

/// rtrb's `RingBuffer`.
pub struct Rtrb;

impl Queue for Rtrb {
    const NAME: &'static str = "rtrb";
    type Tx<M: Send + 'static> = rtrb::Producer<M>;
    type Rx<M: Send + 'static> = rtrb::Consumer<M>;

    fn pair<M: Send + 'static>(capacity: usize) -> (Self::Tx<M>, Self::Rx<M>) {
        rtrb::RingBuffer::new(capacity)
    }
}

impl<M: Send> Tx<M> for rtrb::Producer<M> {
    #[inline]
    fn try_send(&mut self, m: M) -> Result<(), M> {
        self.push(m).map_err(|rtrb::PushError::Full(m)| m)
    }
}

impl<M: Send> Rx<M> for rtrb::Consumer<M> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        self.pop().ok()
    }
}

/// crossbeam-queue's `ArrayQueue` (MPMC), shared by the two threads.
pub struct ArrayQueue;

/// One thread's handle on an [`ArrayQueue`].
pub struct SharedArray<M>(Arc<crossbeam_queue::ArrayQueue<M>>);

impl Queue for ArrayQueue {
    const NAME: &'static str = "crossbeam-arrayqueue";
    type Tx<M: Send + 'static> = SharedArray<M>;
    type Rx<M: Send + 'static> = SharedArray<M>;

    fn pair<M: Send + 'static>(capacity: usize) -> (Self::Tx<M>, Self::Rx<M>) {
        let q = Arc::new(crossbeam_queue::ArrayQueue::new(capacity));
        (SharedArray(q.clone()), SharedArray(q))
    }
}

impl<M: Send> Tx<M> for SharedArray<M> {
    #[inline]
    fn try_send(&mut self, m: M) -> Result<(), M> {
        self.0.push(m)
    }
}

impl<M: Send> Rx<M> for SharedArray<M> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        self.0.pop()
    }
}

/// crossbeam-channel's `bounded` channel.
pub struct CrossbeamChannel;

impl Queue for CrossbeamChannel {
    const NAME: &'static str = "crossbeam-channel";
    type Tx<M: Send + 'static> = crossbeam_channel::Sender<M>;
    type Rx<M: Send + 'static> = crossbeam_channel::Receiver<M>;

    fn pair<M: Send + 'static>(capacity: usize) -> (Self::Tx<M>, Self::Rx<M>) {
        crossbeam_channel::bounded(capacity)
    }
}

impl<M: Send> Tx<M> for crossbeam_channel::Sender<M> {
    #[inline]
    fn try_send(&mut self, m: M) -> Result<(), M> {
        crossbeam_channel::Sender::try_send(self, m).map_err(|e| e.into_inner())
    }
}

impl<M: Send> Rx<M> for crossbeam_channel::Receiver<M> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        crossbeam_channel::Receiver::try_recv(self).ok()
    }
}

/// `std::sync::mpsc::sync_channel`.
pub struct StdMpsc;

impl Queue for StdMpsc {
    const NAME: &'static str = "std-mpsc";
    type Tx<M: Send + 'static> = std::sync::mpsc::SyncSender<M>;
    type Rx<M: Send + 'static> = std::sync::mpsc::Receiver<M>;

    fn pair<M: Send + 'static>(capacity: usize) -> (Self::Tx<M>, Self::Rx<M>) {
        std::sync::mpsc::sync_channel(capacity)
    }
}

impl<M: Send> Tx<M> for std::sync::mpsc::SyncSender<M> {
    #[inline]
    fn try_send(&mut self, m: M) -> Result<(), M> {
        use std::sync::mpsc::TrySendError;
        match std::sync::mpsc::SyncSender::try_send(self, m) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m)) => Err(m),
            Err(TrySendError::Disconnected(_)) => panic!("receiver dropped mid-benchmark"),
        }
    }
}

impl<M: Send> Rx<M> for std::sync::mpsc::Receiver<M> {
    #[inline]
    fn try_recv(&mut self) -> Option<M> {
        std::sync::mpsc::Receiver::try_recv(self).ok()
    }
}
