//! Lamport's queue with cached indices and batched publication.
//!
//! | word     | written by | when                                              |
//! |----------|------------|---------------------------------------------------|
//! | `buf[i]` | producer   | before publishing a head beyond `i`               |
//! | `head`   | producer   | [`publish`](crate::Sender::publish) (`Release`)   |
//! | `tail`   | consumer   | [`sync`](crate::Receiver::sync) (`Release`)       |
//!
//! Each side keeps a private copy of the other's index and reloads it only
//! when the copy says "full" or "empty", and writes its own index only when
//! asked to, so a batch of `n` messages costs one shared write per side
//! instead of `n`.
//!
//! **Values become visible only at `publish`, and room only at `sync`.**
//! The batch operations and the waiting operations do both (`recv` syncs
//! before it sleeps, and after each value it takes while the producer
//! sleeps in `send` waiting for room); code that uses
//! `try_send`/`try_recv` directly must call them.

use std::mem::MaybeUninit;

use crossbeam_utils::CachePadded;

use crate::error::{CapacityError, TryRecvError, TrySendError};
use crate::ring::Ring;
use crate::shared::{Control, recv_deadline, waiting_receiver, waiting_sender};
use crate::sync::{Arc, AtomicUsize, Ordering, UnsafeCell};
use crate::{Receiver, Sender, Transport};

/// The Lamport transport.
pub struct Lamport;

struct Inner<T> {
    buf: Ring<UnsafeCell<MaybeUninit<T>>>,
    head: CachePadded<AtomicUsize>,
    tail: CachePadded<AtomicUsize>,
    ctl: Control,
}

// SAFETY: a slot is written by the producer only between `tail` and
// `tail + size` and read by the consumer only between `tail` and `head`; the
// Release/Acquire pairs on the indices hand slots over. T: Send.
unsafe impl<T: Send> Sync for Inner<T> {}
// SAFETY: as above.
unsafe impl<T: Send> Send for Inner<T> {}

impl<T> Drop for Inner<T> {
    fn drop(&mut self) {
        // Both ends published/synced when they dropped; Relaxed because
        // `&mut self` means they are gone (Arc count synchronizes).
        let (tail, head) = (
            self.tail.load(Ordering::Relaxed),
            self.head.load(Ordering::Relaxed),
        );
        for i in tail..head {
            // SAFETY: positions in [tail, head) hold initialized values that
            // were sent and never received.
            self.buf
                .at(i)
                .with_mut(|p| unsafe { (*p).assume_init_drop() });
        }
    }
}

/// Sending end of a Lamport queue.
pub struct LamportProducer<T> {
    inner: Arc<Inner<T>>,
    head: usize,
    published: usize,
    cached_tail: usize,
}

/// Receiving end of a Lamport queue.
pub struct LamportConsumer<T> {
    inner: Arc<Inner<T>>,
    tail: usize,
    synced: usize,
    cached_head: usize,
}

impl Transport for Lamport {
    type Producer<T: Send> = LamportProducer<T>;
    type Consumer<T: Send> = LamportConsumer<T>;
    const NAME: &'static str = "lamport";

    fn channel_bytes<T: Send>(capacity: usize) -> usize {
        crate::ring::queue_bytes::<Inner<T>, UnsafeCell<MaybeUninit<T>>>(capacity)
    }

    fn try_channel<T: Send>(
        capacity: usize,
    ) -> Result<(LamportProducer<T>, LamportConsumer<T>), CapacityError> {
        let buf = Ring::new(capacity, || UnsafeCell::new(MaybeUninit::uninit()))?;
        let inner = Arc::new(Inner {
            buf,
            head: CachePadded::new(AtomicUsize::new(0)),
            tail: CachePadded::new(AtomicUsize::new(0)),
            ctl: Control::new(),
        });
        Ok((
            LamportProducer {
                inner: inner.clone(),
                head: 0,
                published: 0,
                cached_tail: 0,
            },
            LamportConsumer {
                inner,
                tail: 0,
                synced: 0,
                cached_head: 0,
            },
        ))
    }
}

impl<T: Send> Sender<T> for LamportProducer<T> {
    #[inline]
    fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>> {
        let inner = &*self.inner;
        if inner.ctl.consumer_gone() {
            return Err(TrySendError::Disconnected(value));
        }
        if self.head - self.cached_tail == inner.buf.len() {
            // Acquire: the consumer's reads of the slots it synced happen
            // before we overwrite them.
            self.cached_tail = inner.tail.load(Ordering::Acquire);
            if self.head - self.cached_tail == inner.buf.len() {
                return Err(TrySendError::Full(value));
            }
        }
        // SAFETY: the slot is outside [tail, head) as last synced, so the
        // consumer does not read it until we publish past it.
        inner
            .buf
            .at(self.head)
            .with_mut(|p| unsafe { (*p).write(value) });
        self.head += 1;
        Ok(())
    }

    #[inline]
    fn publish(&mut self) {
        if self.head != self.published {
            // Release: every value written before is visible to a consumer
            // that acquires this head.
            self.inner.head.store(self.head, Ordering::Release);
            self.inner.buf.demote_range(self.published, self.head);
            self.published = self.head;
            self.inner.ctl.data.notify_relaxed();
        }
    }

    fn capacity(&self) -> usize {
        self.inner.buf.len()
    }

    waiting_sender!();
}

impl<T> Drop for LamportProducer<T> {
    fn drop(&mut self) {
        // Values sent but not published are delivered too.
        self.inner.head.store(self.head, Ordering::Release);
        self.inner.ctl.drop_producer();
    }
}

impl<T: Send> LamportConsumer<T> {
    recv_deadline!();
}

impl<T: Send> Receiver<T> for LamportConsumer<T> {
    #[inline]
    fn try_recv(&mut self) -> Result<T, TryRecvError> {
        let inner = &*self.inner;
        if self.tail == self.cached_head {
            // Acquire: pairs with `publish`'s Release.
            self.cached_head = inner.head.load(Ordering::Acquire);
            if self.tail == self.cached_head {
                if inner.ctl.producer_gone() {
                    // The producer stored its final head before the flag.
                    self.cached_head = inner.head.load(Ordering::Acquire);
                    if self.tail == self.cached_head {
                        return Err(TryRecvError::Disconnected);
                    }
                } else {
                    return Err(TryRecvError::Empty);
                }
            }
        }
        // SAFETY: tail < published head: initialized, and the producer does
        // not overwrite it before we sync past it.
        let value = inner
            .buf
            .at(self.tail)
            .with(|p| unsafe { (*p).assume_init_read() });
        self.tail += 1;
        Ok(value)
    }

    #[inline]
    fn sync(&mut self) {
        if self.tail != self.synced {
            // Release: our reads of the freed slots happen before the
            // producer reuses them.
            self.inner.tail.store(self.tail, Ordering::Release);
            self.synced = self.tail;
            self.inner.ctl.space.notify_relaxed();
        }
    }

    waiting_receiver!();
}

impl<T> Drop for LamportConsumer<T> {
    fn drop(&mut self) {
        // Release: our reads of the slots before `tail` happen before the
        // queue drops what lies after it.
        self.inner.tail.store(self.tail, Ordering::Release);
        self.inner.ctl.drop_consumer();
    }
}
