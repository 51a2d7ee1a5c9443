//! The onesided queue: a sequence number per slot, and the consumer never
//! writes a line the producer writes.
//!
//! | word          | written by | when                                                        |
//! |---------------|------------|-------------------------------------------------------------|
//! | `slot.value`  | producer   | before its `seq`                                            |
//! | `slot.seq`    | producer   | `pos + 1` after the value (`Release`)                       |
//! | `tail`        | consumer   | every [`Ring::hand_back`] slots read, and at `sync` (`Release`), own line |
//!
//! The consumer learns that a slot is filled from the slot itself (no shared
//! head to read), and reports consumption on a line only it writes. Each side
//! keeps a copy of what it knows of the other and touches a shared line only
//! when that copy runs out:
//!
//! * the producer keeps `tail + size` as the end of its known room and reads
//!   the `tail` line again only when it reaches it;
//! * the consumer stores `tail` once per hand-back of [`Ring::hand_back`]
//!   slots (64), not once per message: a producer waiting for room reads the
//!   line in a loop, so every store there costs the consumer a transfer of
//!   it (see [`Ring::hand_back`] for what that cost). Room then comes back
//!   in runs of 64 slots, which the producer refills while the consumer
//!   reads the next ones (temporal slipping, producer side).
//!
//! The producer's lines move to the consumer and never come back dirty: the
//! producer pushes each line pair it has filled to the shared cache, and the
//! consumer each run it has read ([`Ring::demote`]), so neither finds the
//! other's lines in the other's core.
//!
//! Values are visible as soon as `try_send` returns; `publish` is a no-op.
//! Slots read since the last store of `tail` go back at
//! [`sync`](crate::Receiver::sync) (the batch and waiting operations sync,
//! and dropping the consumer does), exactly: rpc's "a reply never fails for
//! lack of room" relies on it. Between syncs the producer may find up to a
//! hand-back less room than the capacity, never so little that it waits on
//! slots the consumer has read: a queue it finds full still holds unread
//! values.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::error::{CapacityError, TryRecvError, TrySendError};
use crate::ring::Ring;
use crate::shared::{Control, recv_deadline, waiting_receiver, waiting_sender};
use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};
use crate::{Receiver, Sender, Transport};

/// The onesided transport.
pub struct Onesided;

struct Slot<T> {
    seq: AtomicUsize,
    value: UnsafeCell<MaybeUninit<T>>,
}

struct Inner<T> {
    ring: Ring<Slot<T>>,
    /// Slots per line-pair batch ([`Ring::batch`]): the producer demotes
    /// them together.
    batch: usize,
    /// Slots read between two stores of `tail` ([`Ring::hand_back`]).
    hand_back: usize,
    tail: CachePadded<AtomicUsize>,
    ctl: Control,
}

// SAFETY: a slot's value is handed from producer to consumer by its `seq`
// (Release/Acquire) and back by `tail` (Release/Acquire). T: Send.
unsafe impl<T: Send> Sync for Inner<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Inner<T> {}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // Relaxed: `&mut self`, both ends are gone (Arc count synchronizes).
        // The consumer stored its exact position when it was dropped.
        let mut pos = self.tail.load(Ordering::Relaxed);
        loop {
            let slot = self.ring.at(pos);
            if slot.seq.load(Ordering::Relaxed) != pos + 1 {
                break;
            }
            // SAFETY: seq == pos + 1 marks an initialized value at a
            // position the consumer had not reached.
            slot.value.with_mut(|p| unsafe { (*p).assume_init_drop() });
            pos += 1;
        }
    }
}

/// Sending end of a onesided queue.
pub struct OnesidedProducer<T> {
    inner: Arc<Inner<T>>,
    head: usize,
    /// The consumer's `tail` as last read, plus the ring's size: positions
    /// before it are free.
    limit: usize,
}

/// Receiving end of a onesided queue.
pub struct OnesidedConsumer<T> {
    inner: Arc<Inner<T>>,
    tail: usize,
    /// `tail` as last stored for the producer.
    stored: usize,
}

impl Transport for Onesided {
    type Producer<T: Send> = OnesidedProducer<T>;
    type Consumer<T: Send> = OnesidedConsumer<T>;
    const NAME: &'static str = "onesided";

    fn channel_bytes<T: Send>(capacity: usize) -> usize {
        crate::ring::queue_bytes::<Inner<T>, Slot<T>>(capacity)
    }

    fn try_channel<T: Send>(
        capacity: usize,
    ) -> Result<(OnesidedProducer<T>, OnesidedConsumer<T>), CapacityError> {
        let ring = Ring::new(capacity, || Slot {
            seq: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })?;
        let size = ring.len();
        let inner = Arc::new(Inner {
            batch: ring.batch(),
            hand_back: ring.hand_back(),
            ring,
            tail: CachePadded::new(AtomicUsize::new(0)),
            ctl: Control::new(),
        });
        Ok((
            OnesidedProducer {
                inner: inner.clone(),
                head: 0,
                limit: size,
            },
            OnesidedConsumer {
                inner,
                tail: 0,
                stored: 0,
            },
        ))
    }
}

impl<T: Send> Sender<T> for OnesidedProducer<T> {
    #[inline]
    fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        let inner = &*self.inner;
        if inner.ctl.consumer_gone() {
            return Err(TrySendError::Disconnected(value));
        }
        let head = self.head;
        if head == self.limit {
            // Acquire: the consumer's reads of freed slots happen before we
            // overwrite them.
            self.limit = inner.tail.load(Ordering::Acquire) + inner.ring.len();
            if head == self.limit {
                return Err(TrySendError::Full(value));
            }
        }
        let slot = inner.ring.at(head);
        // SAFETY: the slot's previous value was consumed (tail passed it).
        slot.value.with_mut(|p| unsafe { (*p).write(value) });
        // Release: the value is visible to the consumer that sees this seq.
        slot.seq.store(head + 1, Ordering::Release);
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

impl<T> Drop for OnesidedProducer<T> {
    fn drop(&mut self) {
        self.inner.ctl.drop_producer();
    }
}

impl<T: Send> OnesidedConsumer<T> {
    recv_deadline!();
}

impl<T> OnesidedConsumer<T> {
    /// Tells the producer how far we have read, and moves the lines read
    /// since the last time to the shared cache, where the producer will
    /// want them.
    #[inline]
    fn store_tail(&mut self) {
        if self.stored != self.tail {
            // Release: our reads of the slots before `tail` happen before
            // the producer reuses them.
            self.inner.tail.store(self.tail, Ordering::Release);
            self.inner.ring.demote(self.stored, self.tail - self.stored);
            self.stored = self.tail;
            self.inner.ctl.space.notify_relaxed();
        }
    }
}

impl<T: Send> Receiver<T> for OnesidedConsumer<T> {
    #[inline]
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let inner = &*self.inner;
        let tail = self.tail;
        // Acquire: pairs with the producer's Release of `seq`.
        let filled = |pos: usize| inner.ring.at(pos).seq.load(Ordering::Acquire) == pos + 1;
        if !filled(tail) {
            if inner.ctl.producer_gone() && !filled(tail) {
                return Err(TryRecvError::Disconnected);
            }
            return Err(TryRecvError::Empty);
        }
        let slot = inner.ring.at(tail);
        // SAFETY: seq says the slot holds the value for position `tail`.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        self.tail = tail + 1;
        if (tail + 1) & (inner.hand_back - 1) == 0 {
            self.store_tail();
        }
        Ok(value)
    }

    #[inline]
    fn sync(&mut self) {
        self.store_tail();
    }

    waiting_receiver!();
}

impl<T> Drop for OnesidedConsumer<T> {
    fn drop(&mut self) {
        // The queue drops what lies at and after the stored tail: it must
        // be exact.
        self.store_tail();
        self.inner.ctl.drop_consumer();
    }
}
