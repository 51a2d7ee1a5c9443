//! Byte copies between this process's memory and memory another process
//! may write or read while they run: the payloads of shared-memory rings
//! (`ipc`'s slots).
//!
//! A plain `memcpy` (`ptr::copy_nonoverlapping`) there is a data race in
//! Rust's memory model whenever the other process breaks its protocol and
//! writes (or reads) the bytes during the copy, and a data race is
//! undefined behaviour, whatever the bytes: the compiler may assume the
//! source does not change, and read it again after a check made on the
//! copy. These copies are inline assembly, which the compiler cannot look
//! into or repeat: each byte is read (or written) once, as by a relaxed
//! atomic load (store) of it, so a racing peer can only make the copy hold
//! torn bytes, which the caller validates as it would any peer's input.
//!
//! On x86-64: `rep movsb` from [`REP_MIN`] bytes on (as fast as a
//! `memcpy` there on CPUs with ERMS), 8-byte `mov`s below it (no
//! start-up cost). Elsewhere: relaxed atomic byte accesses (slower).

#![deny(missing_docs)]

/// From this many bytes on, one `rep movsb`; below, 8-byte moves.
pub const REP_MIN: usize = 256;

/// Copies `len` bytes from `src`, which another process may write during
/// the copy, to `dst`, this process's own memory.
///
/// # Safety
///
/// `src..src + len` is mapped and readable, `dst..dst + len` is valid for
/// writes and not accessed by anything else during the call, and the two
/// do not overlap.
#[inline]
pub unsafe fn from_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy(dst, src, len) }
}

/// Copies `len` bytes from `src`, this process's own memory, to `dst`,
/// which another process may read (or write) during the copy.
///
/// # Safety
///
/// `src..src + len` is valid for reads and not written by anything else
/// during the call, `dst..dst + len` is mapped and writable, and the two
/// do not overlap.
#[inline]
pub unsafe fn to_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy(dst, src, len) }
}

/// # Safety
///
/// As [`from_shared`] and [`to_shared`].
#[cfg(target_arch = "x86_64")]
#[inline]
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    use std::arch::asm;
    if len >= REP_MIN {
        // SAFETY: copies exactly `len` bytes forward from `src` to `dst`,
        // both valid (the caller's contract); the direction flag is clear
        // (the ABI's guarantee at every call); `rep movsb` leaves the
        // flags as they were.
        unsafe {
            asm!(
                "rep movsb",
                inout("rcx") len => _,
                inout("rsi") src => _,
                inout("rdi") dst => _,
                options(nostack, preserves_flags)
            );
        }
        return;
    }
    let mut i = 0;
    while i + 8 <= len {
        // SAFETY: `i + 8 <= len`: inside both ranges; x86-64 allows
        // unaligned moves.
        unsafe {
            let v: u64;
            asm!(
                "mov {v}, qword ptr [{p}]",
                p = in(reg) src.add(i),
                v = out(reg) v,
                options(nostack, readonly, preserves_flags)
            );
            asm!(
                "mov qword ptr [{p}], {v}",
                p = in(reg) dst.add(i),
                v = in(reg) v,
                options(nostack, preserves_flags)
            );
        }
        i += 8;
    }
    while i < len {
        // SAFETY: `i < len`: inside both ranges.
        unsafe {
            let v: u8;
            asm!(
                "mov {v}, byte ptr [{p}]",
                p = in(reg) src.add(i),
                v = out(reg_byte) v,
                options(nostack, readonly, preserves_flags)
            );
            asm!(
                "mov byte ptr [{p}], {v}",
                p = in(reg) dst.add(i),
                v = in(reg_byte) v,
                options(nostack, preserves_flags)
            );
        }
        i += 1;
    }
}

/// # Safety
///
/// As [`from_shared`] and [`to_shared`].
#[cfg(not(target_arch = "x86_64"))]
#[inline]
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    use std::sync::atomic::{AtomicU8, Ordering};
    for i in 0..len {
        // SAFETY: `i < len`: inside both ranges (the caller's contract);
        // relaxed atomic bytes, so a racing peer makes no data race.
        unsafe {
            let b = AtomicU8::from_ptr(src.add(i).cast_mut()).load(Ordering::Relaxed);
            AtomicU8::from_ptr(dst.add(i)).store(b, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length around the two paths' edges, at every alignment of
    /// both ends, copies exactly its bytes and nothing beside them.
    #[test]
    fn every_length_and_alignment_copies_exactly_its_bytes() {
        let src: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in (0..=40).chain([63, 64, 255, 256, 257, 700]) {
            for s in 0..8 {
                for d in 0..8 {
                    let mut dst = vec![0xeeu8; 1024];
                    // SAFETY: both ranges inside their vectors, distinct.
                    unsafe {
                        if (len + s + d) % 2 == 0 {
                            from_shared(dst.as_mut_ptr().add(d), src.as_ptr().add(s), len);
                        } else {
                            to_shared(dst.as_mut_ptr().add(d), src.as_ptr().add(s), len);
                        }
                    }
                    assert_eq!(&dst[d..d + len], &src[s..s + len], "{len} {s} {d}");
                    assert!(dst[..d].iter().all(|&b| b == 0xee), "{len} {s} {d}");
                    assert!(dst[d + len..].iter().all(|&b| b == 0xee), "{len} {s} {d}");
                }
            }
        }
    }
}
