//! FastForward (Giacomoni et al., PPoPP 2008): no shared indices at all.
//! Each slot carries a `full` flag; the producer fills empty slots, the
//! consumer empties full ones, each following its own private index.
//!
//! | word            | written by | when                                  |
//! |-----------------|------------|---------------------------------------|
//! | `slot.value`    | producer   | while `full == false`                 |
//! | `slot.full`     | producer   | `true` after the value (`Release`)    |
//! | `slot.full`     | consumer   | `false` after reading it (`Release`): a batch at a time, once it has read the whole batch, oldest first; and at [`sync`](crate::Receiver::sync) |
//!
//! The slots are handed back in *batches*: as many slots as fill a whole
//! number of cache-line pairs ([`Ring::batch`], 8 slots of a `u64`), the
//! ring starting on a line pair. The consumer clears a batch's flags only
//! once it has read the whole batch and moved on to the next, and the
//! producer, when it runs out of known-empty slots, looks at the *last* slot
//! of its batch: if that one is empty, so is the rest of the batch (the
//! consumer empties in order), and it fills them all without looking again.
//! So when the queue is full the producer refills the lines the consumer has
//! just left while the consumer reads the next ones (*temporal slipping*: the
//! two work a batch apart), the consumer writes each line once per lap, and
//! the producer reads one flag per batch. The consumer reads each slot's
//! flag with its value (one line); only on an empty queue does it poll the
//! line the producer is filling, as it must to see the next value at once.
//! It clears no flag there: that line is the producer's, and a write would
//! take it from the producer, once per message on a queue kept nearly
//! empty.
//!
//! The producer pushes each batch it has filled towards the shared cache
//! ([`Ring::demote`]), where the consumer finds it without snooping the
//! producer's core.
//!
//! Values are visible to the consumer as soon as `try_send` returns;
//! [`publish`](crate::Sender::publish) is a no-op. Slots of a batch read
//! only in part go back at [`sync`](crate::Receiver::sync) (the batch and
//! waiting operations sync, and dropping the consumer does); until then the
//! producer may find up to a batch less room than the capacity.

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
    /// Slots handed back at a time (a power of two, [`Ring::batch`]).
    batch: usize,
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
        let inner = Arc::new(Inner {
            batch: ring.batch(),
            ring,
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
        // The last slot of head's batch. Its previous value is older than
        // every other one in [head, last], so if the consumer has emptied it
        // (Acquire: after reading it and every older slot, in order, each
        // with Release), the whole rest of the batch is ours.
        let last = self.head | (inner.batch - 1);
        if !inner.ring.at(last).full.load(Ordering::Acquire) {
            self.limit = last + 1;
            return true;
        }
        // A batch the consumer returned in part (`sync`). Acquire as above.
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
        if self.head == self.limit && !self.make_room() {
            return Err(TrySendError::Full(value));
        }
        let inner = &*self.inner;
        let head = self.head;
        let slot = inner.ring.at(head);
        // SAFETY: the slot is empty (make_room) so the consumer does not
        // touch its value until we set `full`.
        slot.value.with_mut(|p| unsafe { (*p).write(value) });
        // Release: the value is visible to the consumer that sees `full`.
        slot.full.store(true, Ordering::Release);
        self.head = head + 1;
        if (head + 1) & (inner.batch - 1) == 0 {
            // The batch's lines are complete: off to the shared cache.
            inner.ring.demote(head + 1 - inner.batch, inner.batch);
        }
        inner.ctl.data.notify_relaxed();
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
    /// producer's look at the end of a batch relies on that order).
    #[inline]
    fn clear_read(&mut self) {
        if self.cleared == self.tail {
            return;
        }
        let inner = &*self.inner;
        for pos in self.cleared..self.tail {
            // Release: our read of the value happens before the producer
            // reuses the slot.
            inner.ring.at(pos).full.store(false, Ordering::Release);
        }
        self.cleared = self.tail;
        inner.ctl.space.notify_relaxed();
    }
}

impl<T: Send> Receiver<T> for FfConsumer<T> {
    #[inline]
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let inner = &*self.inner;
        let tail = self.tail;
        let slot = inner.ring.at(tail);
        // Acquire: pairs with the producer's Release of `full`.
        if !slot.full.load(Ordering::Acquire) {
            // Nothing is cleared here: the slots read last share the line
            // the producer is filling now.
            if inner.ctl.producer_gone() && !slot.full.load(Ordering::Acquire) {
                return Err(TryRecvError::Disconnected);
            }
            return Err(TryRecvError::Empty);
        }
        // SAFETY: `full` says the slot holds an initialized value that the
        // producer will not touch until we clear the flag.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        self.tail = tail + 1;
        // A batch read to its end goes back whole, once we are past it.
        if (tail + 1) & (inner.batch - 1) == 0 {
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
