//! The array every transport keeps its slots in: a power of two of them,
//! starting on a pair of cache lines, indexed by a running position with a
//! mask (no division, no bounds check on the data path).
//!
//! Why the alignment: the transports hand slots over a batch of whole
//! line pairs at a time ([`Ring::batch`]). That only keeps the two threads
//! on different lines if a batch's first slot starts a line pair; `Vec`'s
//! alignment (that of the slot, often 8) would let every batch share its
//! first and last line with its neighbours. Pairs rather than single lines
//! because the adjacent-line prefetcher of x86-64 pulls lines in pairs
//! (crossbeam's `CachePadded` is 128 bytes for the same reason).

use std::alloc::{self, Layout};
use std::ptr::NonNull;

use crate::error::CapacityError;

/// Bytes of the unit the threads hand over: two 64-byte cache lines.
pub(crate) const LINE_PAIR: usize = 128;

/// Slots a consumer hands back to the producer at a time (FastForward
/// clears their flags, onesided stores its position): a producer waiting
/// for room polls the line that says it, so each hand-back costs the
/// consumer a transfer of that line; per 8 slots that transfer, not the
/// slots, set the pace (8-byte messages, ring of 4096: onesided took 4.0 ns
/// per message handing back every 8 slots, 2.9 every 64, no less every
/// 256). It also hands room back in runs, so the producer refills lines the
/// consumer has left while the consumer reads the next ones.
const HAND_BACK: usize = 64;

/// The slots of a ring asked to hold `capacity` values, as [`Ring::new`]
/// rounds it (`usize::MAX` where no such ring exists).
pub(crate) fn slots_for(capacity: usize) -> usize {
    capacity
        .max(2)
        .checked_next_power_of_two()
        .unwrap_or(usize::MAX)
}

/// About the bytes of a queue whose ends share an `Arc<I>` owning a ring of
/// `capacity` slots of `S` (saturating): what
/// [`Transport::channel_bytes`](crate::Transport::channel_bytes) says.
pub(crate) fn queue_bytes<I, S>(capacity: usize) -> usize {
    // The Arc's two counts, then the shared state, then the slots.
    (2 * size_of::<usize>() + size_of::<I>())
        .saturating_add(slots_for(capacity).saturating_mul(size_of::<S>()))
}

/// A power of two of `S`, aligned to [`LINE_PAIR`], owned.
pub(crate) struct Ring<S> {
    ptr: NonNull<S>,
    mask: usize,
}

// SAFETY: a Ring owns its slots like a Box<[S]> does.
unsafe impl<S: Send> Send for Ring<S> {}
// SAFETY: shared access hands out only `&S`, like &Box<[S]>.
unsafe impl<S: Sync> Sync for Ring<S> {}

impl<S> Ring<S> {
    /// The ring of a queue asked to hold `capacity` values: `capacity`
    /// rounded up to a power of two (at least 2) slots, each made by `make`.
    /// Refused, rather than wrapped or panicking, when that size does not
    /// exist or the allocator has no room for it.
    pub(crate) fn new(capacity: usize, mut make: impl FnMut() -> S) -> Result<Self, CapacityError> {
        // The largest power of two whose slots fit in one allocation (at
        // most `isize::MAX` bytes; a multiple of 128 bytes below that stays
        // below it once rounded up to the alignment).
        let max = 1usize << ((isize::MAX as usize) / size_of::<S>().max(1)).ilog2();
        let size = match capacity.max(2).checked_next_power_of_two() {
            Some(size) if size <= max => size,
            _ => {
                return Err(CapacityError::TooLarge {
                    requested: capacity,
                    max,
                });
            }
        };
        let too_large = || CapacityError::TooLarge {
            requested: capacity,
            max,
        };
        let bytes = size.checked_mul(size_of::<S>()).ok_or_else(too_large)?;
        let layout = Layout::from_size_align(bytes, LINE_PAIR.max(align_of::<S>()))
            .map_err(|_| too_large())?;
        let ptr = if bytes == 0 {
            NonNull::dangling()
        } else {
            // SAFETY: the layout has a non-zero size.
            let p = unsafe { alloc::alloc(layout) }.cast::<S>();
            NonNull::new(p).ok_or(CapacityError::OutOfMemory {
                requested: capacity,
                bytes,
            })?
        };
        // Frees what was made so far if `make` panics.
        struct Partial<S> {
            ptr: NonNull<S>,
            made: usize,
            layout: Layout,
        }
        impl<S> Drop for Partial<S> {
            fn drop(&mut self) {
                // SAFETY: the first `made` slots were written and nothing
                // else refers to them; the memory came from `alloc` with
                // `layout` unless it has no size.
                unsafe {
                    std::ptr::drop_in_place(std::ptr::slice_from_raw_parts_mut(
                        self.ptr.as_ptr(),
                        self.made,
                    ));
                    if self.layout.size() != 0 {
                        alloc::dealloc(self.ptr.as_ptr().cast(), self.layout);
                    }
                }
            }
        }
        let mut partial = Partial {
            ptr,
            made: 0,
            layout,
        };
        while partial.made < size {
            // SAFETY: slot `made` is inside the allocation of `size` slots
            // and not yet written.
            unsafe { ptr.as_ptr().add(partial.made).write(make()) };
            partial.made += 1;
        }
        std::mem::forget(partial);
        Ok(Self {
            ptr,
            mask: size - 1,
        })
    }

    /// The slot of running position `pos` (any `usize`: it wraps).
    #[inline(always)]
    pub(crate) fn at(&self, pos: usize) -> &S {
        // SAFETY: `pos & mask` is below the ring's size, and every slot was
        // initialized in `new`.
        unsafe { &*self.ptr.as_ptr().add(pos & self.mask) }
    }

    /// Hints the CPU to move the cache lines of the `n` slots from position
    /// `first` (not wrapping the ring's end) out of this core's private
    /// caches into the shared last-level cache, where the other thread's
    /// next read finds them without snooping this core: x86's CLDEMOTE. A
    /// line that the slot after them shares, if any, stays: the caller is
    /// about to write it, and a line demoted and then written again costs
    /// more than one left alone. CLDEMOTE is a hint in the NOP space, so
    /// processors without it execute it as a NOP and no feature check is
    /// needed. Elsewhere, and under loom, nothing.
    #[inline(always)]
    pub(crate) fn demote(&self, first: usize, n: usize) {
        #[cfg(all(target_arch = "x86_64", not(inproc_loom)))]
        {
            let start = self.at(first) as *const S as usize;
            let end = (start + n * size_of::<S>()) & !63;
            let mut line = start & !63;
            while line < end {
                // SAFETY: CLDEMOTE neither reads nor writes memory (it is a
                // hint about the line holding `line`, which lies in our
                // ring) and changes no register or flag.
                unsafe {
                    std::arch::asm!(
                        "cldemote [{0}]",
                        in(reg) line,
                        options(nostack, preserves_flags, readonly)
                    );
                }
                line += 64;
            }
        }
        #[cfg(not(all(target_arch = "x86_64", not(inproc_loom))))]
        let _ = (first, n);
    }

    /// [`demote`](Self::demote) of the slots of positions `[from, to)`, at
    /// most the whole ring, which may wrap its end.
    #[inline]
    pub(crate) fn demote_range(&self, from: usize, to: usize) {
        let to_end = self.len() - (from & self.mask);
        let n = to - from;
        if n <= to_end {
            self.demote(from, n);
        } else {
            self.demote(from, to_end);
            self.demote(from + to_end, n - to_end);
        }
    }

    /// Number of slots (a power of two).
    #[inline(always)]
    pub(crate) fn len(&self) -> usize {
        self.mask + 1
    }

    /// Every slot, for a destructor that owns the ring.
    pub(crate) fn slots_mut(&mut self) -> &mut [S] {
        // SAFETY: `len()` initialized slots, borrowed mutably through `self`.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len()) }
    }

    /// Slots per batch: the fewest that fill a whole number of line pairs
    /// (so batches that start on a line pair end on one), but no more than
    /// twice as many as one line pair holds (slots of a size that shares few
    /// factors with 128 would otherwise need long batches), and no more than
    /// a quarter of the ring (so a batch held back by the consumer never
    /// stops the producer for long). A power of two, at least 1.
    pub(crate) fn batch(&self) -> usize {
        let s = size_of::<S>().max(1);
        let whole_pairs = LINE_PAIR >> (s.trailing_zeros().min(LINE_PAIR.trailing_zeros()));
        let two_pairs = 2 * LINE_PAIR.div_ceil(s).next_power_of_two();
        whole_pairs.min(two_pairs).min(self.len() / 4).max(1)
    }

    /// Slots a consumer hands back at a time: [`HAND_BACK`], at least a
    /// [`batch`](Self::batch), at most a quarter of the ring. A power of
    /// two, at least 1.
    pub(crate) fn hand_back(&self) -> usize {
        HAND_BACK.max(self.batch()).min(self.len() / 4).max(1)
    }
}

impl<S> Drop for Ring<S> {
    fn drop(&mut self) {
        let bytes = self.len() * size_of::<S>();
        // SAFETY: every slot is initialized and owned by us; the memory came
        // from `alloc` with this layout (checked in `new`) unless it has no
        // size.
        unsafe {
            std::ptr::drop_in_place(self.slots_mut() as *mut [S]);
            if bytes != 0 {
                let layout =
                    Layout::from_size_align_unchecked(bytes, LINE_PAIR.max(align_of::<S>()));
                alloc::dealloc(self.ptr.as_ptr().cast(), layout);
            }
        }
    }
}

#[cfg(all(test, not(inproc_loom)))]
mod tests {
    use super::*;

    #[test]
    fn slots_start_on_a_line_pair_and_wrap_by_mask() {
        let r = Ring::new(5, || 0u64).unwrap();
        assert_eq!(r.len(), 8);
        assert_eq!(r.at(0) as *const u64 as usize % LINE_PAIR, 0);
        assert!(std::ptr::eq(r.at(3), r.at(11)));
        assert!(std::ptr::eq(r.at(usize::MAX), r.at(7)));
    }

    #[test]
    fn a_batch_fills_whole_line_pairs() {
        let r = Ring::new(4096, || [0u8; 16]).unwrap();
        assert_eq!(r.batch(), 8);
        let r = Ring::new(4096, || [0u8; 40]).unwrap();
        // 8 × 40 = 320 bytes: five lines (a 64-byte boundary), the closest
        // to one pair that ends on a line.
        assert_eq!(r.batch(), 8);
        let r = Ring::new(4096, || [0u8; 24]).unwrap();
        assert_eq!(r.batch() * 24 % LINE_PAIR, 0);
        let r = Ring::new(4, || [0u8; 16]).unwrap();
        assert_eq!(r.batch(), 1);
    }

    #[test]
    fn hand_back_is_a_whole_number_of_batches_and_a_quarter_ring_at_most() {
        let r = Ring::new(4096, || [0u8; 16]).unwrap();
        assert_eq!(r.hand_back(), 64);
        let r = Ring::new(64, || [0u8; 16]).unwrap();
        assert_eq!(r.hand_back(), 16);
        let r = Ring::new(2, || [0u8; 16]).unwrap();
        assert_eq!(r.hand_back(), 1);
    }

    #[test]
    fn slots_are_dropped_with_the_ring() {
        let token = std::sync::Arc::new(());
        let r = Ring::new(3, || token.clone()).unwrap();
        assert_eq!(std::sync::Arc::strong_count(&token), 5);
        drop(r);
        assert_eq!(std::sync::Arc::strong_count(&token), 1);
    }

    #[test]
    fn zero_sized_slots_need_no_memory() {
        let r = Ring::new(16, || ()).unwrap();
        assert_eq!(r.len(), 16);
        let _ = r.at(99);
    }
}
