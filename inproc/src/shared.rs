//! What every transport shares: liveness of the two ends and the parking
//! used by the waiting operations.

use std::sync::Mutex;
use std::sync::atomic::{self as std_atomic, AtomicBool as StdBool};
use std::thread::Thread;
use std::time::{Duration, Instant};

use crossbeam_utils::{Backoff, CachePadded};

use crate::error::CapacityError;
use crate::sync::{AtomicBool, Ordering};

/// Longest park before a waiter re-checks on its own. Bounds the delay of a
/// wake-up lost to the unfenced check in `Signal::notify_relaxed`.
const MAX_PARK: Duration = Duration::from_millis(1);

/// A place for one thread to sleep until the other side signals.
pub(crate) struct Signal {
    sleeping: StdBool,
    thread: Mutex<Option<Thread>>,
}

impl Signal {
    fn new() -> Self {
        Self {
            sleeping: StdBool::new(false),
            thread: Mutex::new(None),
        }
    }

    /// Whether a thread sleeps (or is about to) waiting for this signal.
    #[inline(always)]
    pub(crate) fn sleeping(&self) -> bool {
        // Relaxed: a hint (as in `notify_relaxed`): a sleeper seen late, or
        // not at all, wakes on its own after at most `MAX_PARK`.
        self.sleeping.load(std_atomic::Ordering::Relaxed)
    }

    /// Wakes the sleeper, if any. The SeqCst fence orders the caller's
    /// publication before the load of `sleeping`, pairing with the fence in
    /// `wait_until` (Dekker), so no wake-up is lost.
    #[inline]
    pub(crate) fn notify(&self) {
        std_atomic::fence(std_atomic::Ordering::SeqCst);
        self.notify_relaxed();
    }

    /// Like `notify` without the fence, for the data path (every send,
    /// receive, publish and sync): a full fence there would cost more than
    /// the message. In the narrow race the fence closes, the sleeper wakes on
    /// its own after at most `MAX_PARK`, so a wake-up can be late but never
    /// lost.
    #[inline(always)]
    pub(crate) fn notify_relaxed(&self) {
        if self.sleeping.load(std_atomic::Ordering::Relaxed) {
            self.wake();
        }
    }

    #[cold]
    fn wake(&self) {
        if let Some(t) = self
            .thread
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            t.unpark();
        }
    }

    /// Spins with backoff, then parks, until `attempt` succeeds or `deadline`
    /// passes (`None` on timeout).
    pub(crate) fn wait_until<R>(
        &self,
        deadline: Option<Instant>,
        mut attempt: impl FnMut() -> Option<R>,
    ) -> Option<R> {
        let backoff = Backoff::new();
        loop {
            if let Some(r) = attempt() {
                return Some(r);
            }
            let now = deadline.map(|_| Instant::now());
            if let (Some(d), Some(n)) = (deadline, now)
                && n >= d
            {
                return None;
            }
            if !backoff.is_completed() {
                backoff.snooze();
                continue;
            }
            {
                // The thread that sleeps now: an end may have moved to
                // another thread since it last slept (waking the old one
                // would leave this one to its park timeout).
                let me = std::thread::current();
                let mut t = self.thread.lock().unwrap_or_else(|e| e.into_inner());
                if t.as_ref().is_none_or(|t| t.id() != me.id()) {
                    *t = Some(me);
                }
            }
            // Relaxed + SeqCst fence: `sleeping = true` is ordered before
            // the re-check below (Dekker, with the fence in `notify`).
            self.sleeping.store(true, std_atomic::Ordering::Relaxed);
            std_atomic::fence(std_atomic::Ordering::SeqCst);
            if let Some(r) = attempt() {
                self.sleeping.store(false, std_atomic::Ordering::Relaxed);
                return Some(r);
            }
            let nap = match (deadline, now) {
                (Some(d), Some(n)) => (d - n).min(MAX_PARK),
                _ => MAX_PARK,
            };
            std::thread::park_timeout(nap);
            self.sleeping.store(false, std_atomic::Ordering::Relaxed);
        }
    }
}

/// Liveness of both ends and their parking places, on lines of their own.
pub(crate) struct Control {
    producer_alive: CachePadded<AtomicBool>,
    consumer_alive: CachePadded<AtomicBool>,
    /// The consumer sleeps here waiting for data.
    pub(crate) data: CachePadded<Signal>,
    /// The producer sleeps here waiting for room.
    pub(crate) space: CachePadded<Signal>,
}

impl Control {
    pub(crate) fn new() -> Self {
        Self {
            producer_alive: CachePadded::new(AtomicBool::new(true)),
            consumer_alive: CachePadded::new(AtomicBool::new(true)),
            data: CachePadded::new(Signal::new()),
            space: CachePadded::new(Signal::new()),
        }
    }

    /// Acquire: a consumer that sees the producer gone also sees everything
    /// it published before dropping.
    #[inline(always)]
    pub(crate) fn producer_gone(&self) -> bool {
        !self.producer_alive.load(Ordering::Acquire)
    }

    /// Relaxed: only a hint for the sender; nothing is read after it.
    #[inline(always)]
    pub(crate) fn consumer_gone(&self) -> bool {
        !self.consumer_alive.load(Ordering::Relaxed)
    }

    /// Release: orders the producer's last publication before the flag.
    pub(crate) fn drop_producer(&self) {
        self.producer_alive.store(false, Ordering::Release);
        self.data.notify();
    }

    pub(crate) fn drop_consumer(&self) {
        self.consumer_alive.store(false, Ordering::Release);
        self.space.notify();
    }
}

/// `n` values made by `make`, or `OutOfMemory` (naming `requested`) when
/// the allocator refuses, or `TooLarge` when `n` values cannot be one
/// allocation.
pub(crate) fn new_slots<S>(
    requested: usize,
    n: usize,
    make: impl FnMut() -> S,
) -> Result<Box<[S]>, CapacityError> {
    if std::alloc::Layout::array::<S>(n).is_err() {
        return Err(CapacityError::TooLarge {
            requested,
            max: (isize::MAX as usize) / size_of::<S>().max(1),
        });
    }
    let mut v = Vec::new();
    v.try_reserve_exact(n)
        .map_err(|_| CapacityError::OutOfMemory {
            requested,
            bytes: n * size_of::<S>(),
        })?;
    v.extend(std::iter::repeat_with(make).take(n));
    Ok(v.into_boxed_slice())
}

/// The waiting operations of `Sender`/`Receiver`, identical for every
/// transport: try once, then wait on the other side's signal. Expects
/// `self.inner: Arc<Inner>` with a `ctl: Control` field.
macro_rules! waiting_sender {
    () => {
        fn send(&mut self, value: T) -> Result<(), $crate::error::Disconnected<T>> {
            use $crate::error::{Disconnected, TrySendError};
            let mut pending = match self.try_send(value) {
                Ok(()) => {
                    self.publish();
                    return Ok(());
                }
                Err(TrySendError::Disconnected(v)) => return Err(Disconnected(v)),
                Err(TrySendError::Full(v)) => Some(v),
            };
            // The consumer may be waiting for what we sent before.
            self.publish();
            let inner = self.inner.clone();
            let r = inner.ctl.space.wait_until(None, || {
                match self.try_send(pending.take().expect("value present")) {
                    Ok(()) => Some(Ok(())),
                    Err(TrySendError::Full(v)) => {
                        pending = Some(v);
                        None
                    }
                    Err(TrySendError::Disconnected(v)) => Some(Err(Disconnected(v))),
                }
            });
            self.publish();
            r.expect("no deadline")
        }

        fn is_disconnected(&self) -> bool {
            self.inner.ctl.consumer_gone()
        }
    };
}

macro_rules! waiting_receiver {
    () => {
        fn recv(&mut self) -> Option<T> {
            self.recv_deadline(None).ok()
        }

        fn recv_timeout(
            &mut self,
            timeout: std::time::Duration,
        ) -> Result<T, $crate::error::TryRecvError> {
            // A timeout past what the clock holds waits without one.
            self.recv_deadline(std::time::Instant::now().checked_add(timeout))
        }
    };
}

macro_rules! recv_deadline {
    () => {
        fn recv_deadline(
            &mut self,
            deadline: Option<std::time::Instant>,
        ) -> Result<T, $crate::error::TryRecvError> {
            use $crate::error::TryRecvError;
            let r = match self.try_recv() {
                Err(TryRecvError::Empty) => {
                    // The producer may be waiting for the room we made.
                    self.sync();
                    let inner = self.inner.clone();
                    inner
                        .ctl
                        .data
                        .wait_until(deadline, || match self.try_recv() {
                            Err(TryRecvError::Empty) => None,
                            done => Some(done),
                        })
                        .unwrap_or(Err(TryRecvError::Empty))
                }
                done => done,
            };
            if r.is_ok() && self.inner.ctl.space.sleeping() {
                // A producer asleep in `send` waits for room, which a
                // transport that batches it (Lamport) shows only at
                // `sync`: hand back what was taken now, not once the
                // queue is drained.
                self.sync();
            }
            r
        }
    };
}

pub(crate) use {recv_deadline, waiting_receiver, waiting_sender};

#[cfg(all(test, not(inproc_loom)))]
mod tests {
    use super::*;

    /// The thread a wake-up goes to is the one that sleeps now, not the
    /// first that ever slept: a channel end can move between threads.
    #[test]
    fn the_sleeper_recorded_is_the_last_thread_that_slept() {
        let s = std::sync::Arc::new(Signal::new());
        let slept_on = |s: std::sync::Arc<Signal>| {
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_millis(5);
                assert!(s.wait_until(Some(deadline), || None::<()>).is_none());
                std::thread::current().id()
            })
            .join()
            .unwrap()
        };
        let first = slept_on(s.clone());
        let second = slept_on(s.clone());
        assert_ne!(first, second);
        let recorded = s.thread.lock().unwrap().as_ref().map(|t| t.id());
        assert_eq!(recorded, Some(second));
    }
}
