//! The onesided queue: a sequence number per slot, and the consumer never
//! writes a line the producer writes.
//!
//! | word          | written by | when                                         |
//! |---------------|------------|----------------------------------------------|
//! | `slot.value`  | producer   | before its `seq`                             |
//! | `slot.seq`    | producer   | `pos + 1` after the value (`Release`)        |
//! | `tail`        | consumer   | after each receive (`Release`), own line     |
//!
//! The consumer learns that a slot is filled from the slot itself (no shared
//! head to read), and reports consumption on a line only it writes, which
//! the producer reads only when its cached copy says the ring is full. The
//! producer's lines move to the consumer and never come back dirty.
//!
//! Values are visible as soon as `try_send` returns; `publish` and `sync`
//! are no-ops.

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
    cached_tail: usize,
}

/// Receiving end of a onesided queue.
pub struct OnesidedConsumer<T> {
    inner: Arc<Inner<T>>,
    tail: usize,
}

impl Transport for Onesided {
    type Producer<T: Send> = OnesidedProducer<T>;
    type Consumer<T: Send> = OnesidedConsumer<T>;
    const NAME: &'static str = "onesided";

    fn try_channel<T: Send>(
        capacity: usize,
    ) -> Result<(OnesidedProducer<T>, OnesidedConsumer<T>), CapacityError> {
        let ring = Ring::new(capacity, || Slot {
            seq: AtomicUsize::new(0),
            value: UnsafeCell::new(MaybeUninit::uninit()),
        })?;
        let inner = Arc::new(Inner {
            ring,
            tail: CachePadded::new(AtomicUsize::new(0)),
            ctl: Control::new(),
        });
        Ok((
            OnesidedProducer {
                inner: inner.clone(),
                head: 0,
                cached_tail: 0,
            },
            OnesidedConsumer { inner, tail: 0 },
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
        if self.head - self.cached_tail == inner.ring.len() {
            // Acquire: the consumer's reads of freed slots happen before we
            // overwrite them.
            self.cached_tail = inner.tail.load(Ordering::Acquire);
            if self.head - self.cached_tail == inner.ring.len() {
                return Err(TrySendError::Full(value));
            }
        }
        let slot = inner.ring.at(self.head);
        // SAFETY: the slot's previous value was consumed (tail passed it).
        slot.value.with_mut(|p| unsafe { (*p).write(value) });
        // Release: the value is visible to the consumer that sees this seq.
        slot.seq.store(self.head + 1, Ordering::Release);
        self.head += 1;
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

impl<T: Send> Receiver<T> for OnesidedConsumer<T> {
    #[inline]
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let inner = &*self.inner;
        let slot = inner.ring.at(self.tail);
        // Acquire: pairs with the producer's Release of `seq`.
        if slot.seq.load(Ordering::Acquire) != self.tail + 1 {
            if inner.ctl.producer_gone() && slot.seq.load(Ordering::Acquire) != self.tail + 1 {
                return Err(TryRecvError::Disconnected);
            }
            return Err(TryRecvError::Empty);
        }
        // SAFETY: seq says the slot holds the value for position `tail`.
        let value = slot.value.with(|p| unsafe { (*p).assume_init_read() });
        self.tail += 1;
        // Release: our read happens before the producer reuses the slot.
        inner.tail.store(self.tail, Ordering::Release);
        inner.ctl.space.notify_relaxed();
        Ok(value)
    }

    #[inline]
    fn sync(&mut self) {}

    waiting_receiver!();
}

impl<T> Drop for OnesidedConsumer<T> {
    fn drop(&mut self) {
        self.inner.ctl.drop_consumer();
    }
}
