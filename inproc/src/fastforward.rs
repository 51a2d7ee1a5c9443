//! FastForward (Giacomoni et al., PPoPP 2008): no shared indices at all.
//! Each slot carries a `full` flag; the producer fills empty slots, the
//! consumer empties full ones, each following its own private index.
//!
//! | word            | written by | when                                  |
//! |-----------------|------------|---------------------------------------|
//! | `slot.value`    | producer   | while `full == false`                 |
//! | `slot.full`     | producer   | `true` after the value (`Release`)    |
//! | `slot.full`     | consumer   | `false` after reading it (`Release`), a cache line of slots at a time, oldest first, and whenever it finds the queue empty |
//!
//! *Temporal slipping*: the producer does not look at the slot it is about
//! to fill but at one `LOOKAHEAD` slots further. If that one is empty, every
//! slot up to it is (the consumer empties in order), so the producer may
//! fill them all without touching the consumer's lines again. The two sides
//! then work on different cache lines unless the queue is nearly full.
//!
//! Values are visible to the consumer as soon as `try_send` returns;
//! [`publish`](crate::Sender::publish) and [`sync`](crate::Receiver::sync)
//! are no-ops.

use std::mem::MaybeUninit;

use crate::error::{CapacityError, TryRecvError, TrySendError};
use crate::ring::Ring;
use crate::shared::{Control, recv_deadline, waiting_receiver, waiting_sender};
use crate::sync::{Arc, AtomicBool, Ordering, UnsafeCell};
use crate::{Receiver, Sender, Transport};

/// The FastForward transport.
pub struct FastForward;

struct Slot<T> {
    full: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Inner<T> {
    ring: Ring<Slot<T>>,
    lookahead: usize,
    /// Slots per cache line (a power of two): the consumer clears `full`
    /// flags a line at a time.
    clear_batch: usize,
    ctl: Control,
}

// SAFETY: a slot's value is accessed by one side at a time, as its `full`
// flag (Acquire/Release) hands it over; T: Send lets values cross threads.
unsafe impl<T: Send> Sync for Inner<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Inner<T> {}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, both ends are gone and joined with us
        // through the Arc's reference count.
        for s in self.ring.slots_mut() {
            if s.full.load(Ordering::Relaxed) {
                // SAFETY: `full` marks an initialized value nobody else can
                // reach: both ends are gone.
                s.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
            }
        }
    }
}

/// Sending end of a FastForward queue.
pub struct FfProducer<T> {
    inner: Arc<Inner<T>>,
    head: usize,
    /// Slots before this position are known to be empty.
    limit: usize,
}

/// Receiving end of a FastForward queue.
pub struct FfConsumer<T> {
    inner: Arc<Inner<T>>,
    tail: usize,
    /// Slots in `[cleared, tail)` were read but their flags not yet reset.
    cleared: usize,
}

impl Transport for FastForward {
    type Producer<T: Send> = FfProducer<T>;
    type Consumer<T: Send> = FfConsumer<T>;
    const NAME: &'static str = "fastforward";

    fn try_channel<T: Send>(
        capacity: usize,
    ) -> Result<(FfProducer<T>, FfConsumer<T>), CapacityError> {
        let ring = Ring::new(capacity, || Slot {
            full: AtomicBool::new(false),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })?;
        let size = ring.len();
        // Two cache lines of slots ahead, but never more than half the ring.
        let per_line = (64 / size_of::<Slot<T>>().max(1)).max(1);
        let lookahead = (2 * per_line).min(size / 2).max(1);
        // Largest power of two not above `per_line`, and at most half the ring.
        let clear_batch = (1usize << per_line.ilog2()).clamp(1, size / 2);
        let inner = Arc::new(Inner {
            ring,
            lookahead,
            clear_batch,
            ctl: Control::new(),
        });
        Ok((
            FfProducer {
                inner: inner.clone(),
                head: 0,
                limit: 0,
            },
            FfConsumer {
                inner,
                tail: 0,
                cleared: 0,
            },
        ))
    }
}

impl<T: Send> FfProducer<T> {
    /// Finds room for the next value: `true` if `head < limit` afterwards.
    #[inline]
    fn make_room(&mut self) -> bool {
        let inner = &*self.inner;
        let ahead = self.head + inner.lookahead;
        // Acquire: the consumer's reads of every slot up to `ahead` happen
        // before we overwrite them (it empties in order, Release each).
        if !inner.ring.at(ahead).full.load(Ordering::Acquire) {
            self.limit = ahead;
            return true;
        }
        if !inner.ring.at(self.head).full.load(Ordering::Acquire) {
            self.limit = self.head + 1;
            return true;
        }
        false
    }
}

impl<T: Send> Sender<T> for FfProducer<T> {
    #[inline]
    fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        if self.inner.ctl.consumer_gone() {
            return Err(TrySendError::Disconnected(value));
        }
        if self.head >= self.limit && !self.make_room() {
            return Err(TrySendError::Full(value));
        }
        let slot = self.inner.ring.at(self.head);
        // SAFETY: the slot is empty (make_room) so the consumer does not
        // touch its value until we set `full`.
        slot.value.with_mut(|p| unsafe { (*p).write(value) });
        // Release: the value is visible to the consumer that sees `full`.
        slot.full.store(true, Ordering::Release);
        self.head += 1;
        self.inner.ctl.data.notify_relaxed();
        Ok(())
    }

    #[inline]
    fn publish(&mut self) {}

    fn capacity(&self) -> usize {
        self.inner.ring.len()
    }

    waiting_sender!();
}

impl<T> Drop for FfProducer<T> {
    fn drop(&mut self) {
        self.inner.ctl.drop_producer();
    }
}

impl<T: Send> FfConsumer<T> {
    recv_deadline!();
}

impl<T> FfConsumer<T> {
    /// Hands every read slot back to the producer, oldest first (the
    /// producer's lookahead relies on that order).
    #[inline]
    fn clear_read(&mut self) {
        if self.cleared == self.tail {
            return;
        }
        let inner = &*self.inner;
        while self.cleared < self.tail {
            // Release: our read of the value happens before the producer
            // reuses the slot.
            inner
                .ring
                .at(self.cleared)
                .full
                .store(false, Ordering::Release);
            self.cleared += 1;
        }
        inner.ctl.space.notify_relaxed();
    }
}

impl<T: Send> Receiver<T> for FfConsumer<T> {
    #[inline]
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let slot = self.inner.ring.at(self.tail);
        // Acquire: pairs with the producer's Release of `full`.
        if !slot.full.load(Ordering::Acquire) {
            // Idle: give back what we read before reporting it.
            self.clear_read();
            let inner = &*self.inner;
            if inner.ctl.producer_gone() && !inner.ring.at(self.tail).full.load(Ordering::Acquire) {
                return Err(TryRecvError::Disconnected);
            }
            return Err(TryRecvError::Empty);
        }
        // SAFETY: `full` says the slot holds an initialized value that the
        // producer will not touch until we clear the flag.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        self.tail += 1;
        // Clearing a line's flags together, once we are past it, keeps the
        // consumer from writing into a line the producer is still filling.
        if self.tail & (self.inner.clear_batch - 1) == 0 {
            self.clear_read();
        }
        Ok(value)
    }

    #[inline]
    fn sync(&mut self) {
        self.clear_read();
    }

    waiting_receiver!();
}

impl<T> Drop for FfConsumer<T> {
    fn drop(&mut self) {
        // Read values were moved out: their flags must not say `full` when
        // the queue drops what it still holds.
        self.clear_read();
        self.inner.ctl.drop_consumer();
    }
}
