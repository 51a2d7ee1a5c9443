//! FastForward (Giacomoni et al., PPoPP 2008): no shared indices at all.
//! Each slot carries a `full` flag; the producer fills empty slots, the
//! consumer empties full ones, each following its own private index.
//!
//! | word            | written by | when                                  |
//! |-----------------|------------|---------------------------------------|
//! | `slot.value`    | producer   | while `full == false`                 |
//! | `slot.full`     | producer   | `true` after the value (`Release`)    |
//! | `slot.full`     | consumer   | `false` after reading it (`Release`), oldest first: a hand-back of [`Ring::hand_back`] slots at a time, once it has read all of them; and at [`sync`](crate::Receiver::sync) |
//! | `returned`      | consumer   | at `sync`: every position before it is empty (`Release`), own line |
//!
//! The consumer hands slots back in runs of [`Ring::hand_back`] (64 slots),
//! the ring starting on a cache-line pair: it clears a run's flags once it
//! has read the whole run and pushes their lines to the shared cache
//! ([`Ring::demote`]). The producer, out of known-empty slots, reads the
//! flag of the *last* slot of its run: if that one is empty, so is the rest
//! of the run (the consumer empties in order), and it fills them all
//! without looking again. So when the queue is full the producer refills
//! lines the consumer has left while the consumer reads the next ones
//! (*temporal slipping*, producer side), the consumer writes each line once
//! per lap, and the producer reads one flag per run. A run read only in
//! part goes back at `sync`, which also stores how far on `returned`, a
//! line the producer reads only when the last flag of its run says full:
//! `sync` makes all room available, exactly (rpc's "a reply never fails for
//! lack of room" relies on it), without the producer ever polling the line
//! the consumer is reading. Between syncs the producer may find up to a run
//! less room than the capacity, never so little that it waits on slots
//! the consumer has read: a queue it finds full still holds unread values.
//!
//! The consumer reads each slot's flag with its value (one line); on an
//! empty queue it polls the slot it waits for, and clears no flag there
//! (that line is the producer's). The producer pushes each line pair it has
//! filled to the shared cache.
//!
//! Values are visible to the consumer as soon as `try_send` returns;
//! [`publish`](crate::Sender::publish) is a no-op.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::error::{CapacityError, TryRecvError, TrySendError};
use crate::ring::Ring;
use crate::shared::{Control, recv_deadline, waiting_receiver, waiting_sender};
use crate::sync::{Arc, AtomicBool, AtomicUsize, Ordering, UnsafeCell};
use crate::{Receiver, Sender, Transport};

/// The FastForward transport.
pub struct FastForward;

struct Slot<T> {
    full: AtomicBool,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Inner<T> {
    ring: Ring<Slot<T>>,
    /// Slots per line-pair batch ([`Ring::batch`]): the producer demotes
    /// them together.
    batch: usize,
    /// Slots the consumer hands back at a time ([`Ring::hand_back`]).
    hand_back: usize,
    /// Positions before this one were handed back by a `sync`.
    returned: CachePadded<AtomicUsize>,
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

    fn channel_bytes<T: Send>(capacity: usize) -> usize {
        crate::ring::queue_bytes::<Inner<T>, Slot<T>>(capacity)
    }

    fn try_channel<T: Send>(
        capacity: usize,
    ) -> Result<(FfProducer<T>, FfConsumer<T>), CapacityError> {
        let ring = Ring::new(capacity, || Slot {
            full: AtomicBool::new(false),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })?;
        let inner = Arc::new(Inner {
            batch: ring.batch(),
            hand_back: ring.hand_back(),
            returned: CachePadded::new(AtomicUsize::new(0)),
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
        // The last slot of head's run. Its previous value is older than
        // every other one in [head, last], so if the consumer has emptied it
        // (Acquire: after reading it and every older slot, in order, each
        // with Release), the whole rest of the run is ours.
        let last = self.head | (inner.hand_back - 1);
        if !inner.ring.at(last).full.load(Ordering::Acquire) {
            self.limit = last + 1;
            return true;
        }
        // A run the consumer handed back in part, at a sync. Acquire: its
        // clears (and reads) happen before we reuse the slots.
        let limit = inner.returned.load(Ordering::Acquire) + inner.ring.len();
        if limit > self.head {
            self.limit = limit;
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
    /// producer's look at the end of a run relies on that order), and moves
    /// their lines to the shared cache, where the producer will want them.
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
        inner.ring.demote(self.cleared, self.tail - self.cleared);
        self.cleared = self.tail;
        inner.ctl.space.notify_relaxed();
    }
}

impl<T: Send> Receiver<T> for FfConsumer<T> {
    #[inline]
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let inner = &*self.inner;
        let tail = self.tail;
        // Acquire: pairs with the producer's Release of `full`.
        let filled = |pos| inner.ring.at(pos).full.load(Ordering::Acquire);
        if !filled(tail) {
            // Nothing is cleared here: the slots read last share the line
            // the producer is filling now.
            if inner.ctl.producer_gone() && !filled(tail) {
                return Err(TryRecvError::Disconnected);
            }
            return Err(TryRecvError::Empty);
        }
        let slot = inner.ring.at(tail);
        // SAFETY: `full` says the slot holds an initialized value that the
        // producer will not touch until we clear the flag.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        self.tail = tail + 1;
        // A run read to its end goes back whole, once we are past it.
        if (tail + 1) & (inner.hand_back - 1) == 0 {
            self.clear_read();
        }
        Ok(value)
    }

    #[inline]
    fn sync(&mut self) {
        if self.cleared != self.tail {
            self.clear_read();
            // Release: the clears (and our reads) before it happen before
            // the producer, which reads this instead of our flags, reuses
            // the slots.
            self.inner.returned.store(self.cleared, Ordering::Release);
        }
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
