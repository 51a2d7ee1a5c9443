//! `Transport::channel_bytes`, which `flux::try_mesh` sizes a mesh with,
//! against what `try_channel` really allocates (counted by this test's
//! allocator, on this thread only).

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use inproc::{FastForward, Lamport, Onesided, Transport};

struct Counting;

thread_local! {
    static ALLOCATED: Cell<usize> = const { Cell::new(0) };
}

// SAFETY: every call is passed to the system allocator unchanged; the
// count is a const-initialised thread-local, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let _ = ALLOCATED.try_with(|a| a.set(a.get() + l.size()));
        // SAFETY: the caller's layout, as GlobalAlloc requires.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        // SAFETY: `p` came from `alloc` above (the system allocator).
        unsafe { System.dealloc(p, l) }
    }
}

#[global_allocator]
static COUNTING: Counting = Counting;

/// The bytes `f` allocates on this thread.
fn allocated_by<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let before = ALLOCATED.with(Cell::get);
    let r = f();
    (r, ALLOCATED.with(Cell::get) - before)
}

fn close_to_what_is_allocated<T: Transport>() {
    for capacity in [2, 256, 1000, 1 << 16] {
        for (what, estimate, (q, real)) in [
            (
                "u64",
                T::channel_bytes::<u64>(capacity),
                allocated_by(|| T::try_channel::<u64>(capacity).map(|_| ())),
            ),
            (
                "[u8; 100]",
                T::channel_bytes::<[u8; 100]>(capacity),
                allocated_by(|| T::try_channel::<[u8; 100]>(capacity).map(|_| ())),
            ),
        ] {
            q.unwrap();
            // A lower bound (the Arc's counts pad to the shared state's
            // alignment, a cache-line pair), within one such pair.
            assert!(
                estimate <= real && real <= estimate + 128,
                "{} {what} × {capacity}: estimated {estimate} bytes, allocated {real}",
                T::NAME
            );
        }
    }
}

#[test]
fn channel_bytes_is_close_to_what_is_allocated() {
    close_to_what_is_allocated::<FastForward>();
    close_to_what_is_allocated::<Lamport>();
    close_to_what_is_allocated::<Onesided>();
}
