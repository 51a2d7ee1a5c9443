//! The interface every SPSC transport implements, so Flux, the call/reply
//! layer and the benchmarks are generic over the algorithm.

use std::time::Duration;

use crate::error::{CapacityError, Disconnected, TryRecvError, TrySendError};

/// Both ends of a queue of transport `Tr` carrying `T`.
pub type Channel<Tr, T> = (
    <Tr as Transport>::Producer<T>,
    <Tr as Transport>::Consumer<T>,
);

/// An SPSC algorithm: makes a connected producer/consumer pair.
pub trait Transport: 'static {
    /// The sending end. Not `Clone`: one producer.
    type Producer<T: Send>: Sender<T>;
    /// The receiving end. Not `Clone`: one consumer.
    type Consumer<T: Send>: Receiver<T>;

    /// A queue holding at least `capacity` values (rounded up to a power of
    /// two; at least 2), or why it cannot be made: the rounded size does not
    /// fit in `usize`, its bytes exceed `isize::MAX`, or the allocator
    /// refuses the memory.
    fn try_channel<T: Send>(capacity: usize) -> Result<Channel<Self, T>, CapacityError>;

    /// About the bytes a queue of `capacity` values of `T` allocates: its
    /// slots (`capacity` rounded as [`try_channel`](Self::try_channel)
    /// rounds it) and the state its two ends share; saturating. Sizing
    /// checks use it ([`crate::flux::try_mesh`] refuses a mesh larger than
    /// the machine's memory). The default counts the slots alone.
    fn channel_bytes<T: Send>(capacity: usize) -> usize {
        crate::ring::slots_for(capacity).saturating_mul(size_of::<T>())
    }

    /// A queue holding at least `capacity` values (rounded up to a power of
    /// two; at least 2).
    ///
    /// # Panics
    ///
    /// When [`try_channel`](Self::try_channel) refuses `capacity`, with a
    /// message naming the transport, the capacity and the reason, in debug
    /// and release builds alike.
    #[track_caller]
    fn channel<T: Send>(capacity: usize) -> Channel<Self, T> {
        match Self::try_channel(capacity) {
            Ok(ends) => ends,
            Err(e) => panic!("{}::channel({capacity}): {e}", Self::NAME),
        }
    }

    /// Short name for reports.
    const NAME: &'static str;
}

/// The producing end of an SPSC queue.
pub trait Sender<T>: Send {
    /// Enqueues `value`, or hands it back when the queue is full or the
    /// consumer is gone. Whether the consumer can see it before
    /// [`publish`](Self::publish) depends on the transport (see its docs);
    /// generic code calls `publish` after a batch.
    fn try_send(&mut self, value: T) -> Result<(), TrySendError<T>>;

    /// Makes every value sent so far visible to the consumer. A no-op for
    /// transports that publish each value as it is sent.
    fn publish(&mut self);

    /// Sends values from the front of `batch` until it is empty or the queue
    /// is full, then publishes once. Returns how many were sent.
    fn send_batch(
        &mut self,
        batch: &mut std::collections::VecDeque<T>,
    ) -> Result<usize, Disconnected<()>> {
        let mut n = 0;
        while let Some(v) = batch.pop_front() {
            match self.try_send(v) {
                Ok(()) => n += 1,
                Err(TrySendError::Full(v)) => {
                    batch.push_front(v);
                    break;
                }
                Err(TrySendError::Disconnected(v)) => {
                    batch.push_front(v);
                    self.publish();
                    return Err(Disconnected(()));
                }
            }
        }
        self.publish();
        Ok(n)
    }

    /// Sends `value`, waiting while the queue is full: spins with backoff,
    /// then parks until the consumer makes room. Publishes.
    fn send(&mut self, value: T) -> Result<(), Disconnected<T>>;

    /// Whether the consumer has been dropped.
    fn is_disconnected(&self) -> bool;

    /// Most values the queue holds.
    fn capacity(&self) -> usize;
}

/// The consuming end of an SPSC queue.
pub trait Receiver<T>: Send {
    /// Takes the oldest published value.
    fn try_recv(&mut self) -> Result<T, TryRecvError>;

    /// Returns the slots of received values to the producer. A no-op for
    /// transports that return each slot as it is read.
    fn sync(&mut self);

    /// Receives up to `max` values into `f`, then syncs once. Returns how
    /// many; `Err(Disconnected)` only when none was left and the producer is
    /// gone.
    fn recv_batch(&mut self, max: usize, mut f: impl FnMut(T)) -> Result<usize, TryRecvError> {
        let mut n = 0;
        while n < max {
            match self.try_recv() {
                Ok(v) => {
                    f(v);
                    n += 1;
                }
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) if n == 0 => {
                    self.sync();
                    return Err(TryRecvError::Disconnected);
                }
                Err(TryRecvError::Disconnected) => break,
            }
        }
        self.sync();
        Ok(n)
    }

    /// Receives a value, waiting while the queue is empty: spins with
    /// backoff, then parks until the producer publishes. Syncs before
    /// parking. `None` once the producer is gone and the queue is drained.
    fn recv(&mut self) -> Option<T>;

    /// Like [`recv`](Self::recv), giving up after `timeout`.
    fn recv_timeout(&mut self, timeout: Duration) -> Result<T, TryRecvError>;
}
