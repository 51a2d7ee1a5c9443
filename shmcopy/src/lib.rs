//! Byte copies between this process's memory and memory another process
//! may write or read while they run: the payloads of shared-memory rings
//! (`ipc`'s slots, the frames of `mlx5`'s shared-memory link).
//!
//! A plain `memcpy` (`ptr::copy_nonoverlapping`) there is a data race in
//! Rust's memory model whenever the other process breaks its protocol and
//! writes (or reads) the bytes during the copy, and a data race is
//! undefined behaviour, whatever the bytes: the compiler may assume the
//! source does not change, and read it again after a check made on the
//! copy. These copies are inline assembly, which the compiler cannot look
//! into or repeat: each byte is read and written by one to three moves
//! (overlapping ones, below), as by relaxed atomic accesses, so a racing
//! peer can only make the copy hold torn bytes, which the caller validates
//! as it would any peer's input.
//!
//! Built for the fuzzer (`cfg(fuzzing)`, which `cargo fuzz` sets for every
//! crate), the copies are plain `memcpy`s instead: AddressSanitizer does
//! not see into inline assembly, and a copy past a buffer is what it is
//! there to catch.
//!
//! On x86-64: `rep movsb` from [`REP_MIN`] bytes on (as fast as a
//! `memcpy` there on CPUs with ERMS), 16-byte SSE moves below it, and
//! below 16 bytes two overlapping moves of 8, 4 or 1 bytes (no start-up
//! cost, no per-byte loop). Bytes where two moves overlap are read and
//! written twice. Elsewhere: relaxed atomic byte accesses (slower).

#![deny(missing_docs)]

/// From this many bytes on, one `rep movsb`; below, 16-byte moves (and
/// narrower overlapping ones below 16 bytes).
pub const REP_MIN: usize = 256;

/// Copies `len` bytes from `src`, which another process (or thread) may
/// write during the copy, to `dst`. The destination may be shared too (a
/// registered region the application reads, another ring): what the
/// function needs is only what the safety section says; the name says
/// which side is usually the other party's.
///
/// # Safety
///
/// `src..src + len` is mapped and readable, `dst..dst + len` is mapped and
/// writable, and the two do not overlap. Anything else may read or write
/// either range during the call: the bytes copied are then torn, and
/// nothing else happens (no data race in this process).
#[inline]
pub unsafe fn from_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy(dst, src, len) }
}

/// Copies `len` bytes from `src`, usually this process's own memory, to
/// `dst`, which another process may read (or write) during the copy. The
/// same copy as [`from_shared`], with the same contract.
///
/// # Safety
///
/// As [`from_shared`].
#[inline]
pub unsafe fn to_shared(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract.
    unsafe { copy(dst, src, len) }
}

/// # Safety
///
/// As [`from_shared`] and [`to_shared`].
#[cfg(all(target_arch = "x86_64", not(fuzzing)))]
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
    // Below REP_MIN: 16-byte moves, the last one ending at `len` (it may
    // overlap the one before: those bytes are read and written twice,
    // which a racing peer can only make torn, as any other byte); below
    // 16 bytes, two overlapping moves of the widest size that fits.
    // SAFETY: each move below covers `[o, o + w)` with `o + w <= len`,
    // inside both ranges; x86-64 allows unaligned moves.
    unsafe {
        if len >= 16 {
            let mut i = 0;
            while i + 16 <= len {
                mov16(dst.add(i), src.add(i));
                i += 16;
            }
            if i < len {
                mov16(dst.add(len - 16), src.add(len - 16));
            }
        } else if len >= 8 {
            let (a, b) = (load8(src), load8(src.add(len - 8)));
            store8(dst, a);
            store8(dst.add(len - 8), b);
        } else if len >= 4 {
            let (a, b) = (load4(src), load4(src.add(len - 4)));
            store4(dst, a);
            store4(dst.add(len - 4), b);
        } else if len > 0 {
            // 1, 2 or 3 bytes: the first, the middle and the last.
            let (a, b, c) = (load1(src), load1(src.add(len / 2)), load1(src.add(len - 1)));
            store1(dst, a);
            store1(dst.add(len / 2), b);
            store1(dst.add(len - 1), c);
        }
    }
}

/// Moves 16 bytes through an SSE register (SSE2 is part of x86-64).
///
/// # Safety
///
/// `src..src + 16` readable, `dst..dst + 16` writable.
#[cfg(all(target_arch = "x86_64", not(fuzzing)))]
#[inline(always)]
unsafe fn mov16(dst: *mut u8, src: *const u8) {
    // SAFETY: the caller's contract; unaligned moves.
    unsafe {
        std::arch::asm!(
            "movdqu {x}, xmmword ptr [{s}]",
            "movdqu xmmword ptr [{d}], {x}",
            s = in(reg) src,
            d = in(reg) dst,
            x = out(xmm_reg) _,
            options(nostack, preserves_flags)
        );
    }
}

/// `mov` loads and stores of one width: `$load`/`$store` for `$t` through
/// register class `$reg` written as `$v`, memory operand size `$ptr`.
macro_rules! narrow_moves {
    (load $load:ident, $t:ty, $reg:ident, $v:literal, $ptr:literal) => {
        /// One load of the width, as a relaxed atomic load would be.
        ///
        /// # Safety
        ///
        /// The bytes are readable.
        #[cfg(all(target_arch = "x86_64", not(fuzzing)))]
        #[inline(always)]
        unsafe fn $load(src: *const u8) -> $t {
            let v: $t;
            // SAFETY: the caller's contract; unaligned loads.
            unsafe {
                std::arch::asm!(
                    concat!("mov ", $v, ", ", $ptr, " ptr [{p}]"),
                    p = in(reg) src,
                    v = out($reg) v,
                    options(nostack, readonly, preserves_flags)
                );
            }
            v
        }
    };
    (store $store:ident, $t:ty, $reg:ident, $v:literal, $ptr:literal) => {
        /// One store of the width.
        ///
        /// # Safety
        ///
        /// The bytes are writable.
        #[cfg(all(target_arch = "x86_64", not(fuzzing)))]
        #[inline(always)]
        unsafe fn $store(dst: *mut u8, v: $t) {
            // SAFETY: the caller's contract; unaligned stores.
            unsafe {
                std::arch::asm!(
                    concat!("mov ", $ptr, " ptr [{p}], ", $v),
                    p = in(reg) dst,
                    v = in($reg) v,
                    options(nostack, preserves_flags)
                );
            }
        }
    };
}

narrow_moves!(load load8, u64, reg, "{v}", "qword");
narrow_moves!(store store8, u64, reg, "{v}", "qword");
narrow_moves!(load load4, u32, reg, "{v:e}", "dword");
narrow_moves!(store store4, u32, reg, "{v:e}", "dword");
narrow_moves!(store store1, u8, reg_byte, "{v}", "byte");

/// One byte load, zero-extended into a 32-bit register (`movzx`: no
/// merge into the register's old upper bits, as `mov al, [m]` would).
///
/// # Safety
///
/// The byte is readable.
#[cfg(all(target_arch = "x86_64", not(fuzzing)))]
#[inline(always)]
unsafe fn load1(src: *const u8) -> u8 {
    let v: u32;
    // SAFETY: the caller's contract.
    unsafe {
        std::arch::asm!(
            "movzx {v:e}, byte ptr [{p}]",
            p = in(reg) src,
            v = out(reg) v,
            options(nostack, readonly, preserves_flags)
        );
    }
    v as u8
}

/// # Safety
///
/// As [`from_shared`] and [`to_shared`].
#[cfg(all(not(target_arch = "x86_64"), not(fuzzing)))]
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

/// # Safety
///
/// As [`from_shared`] and [`to_shared`].
#[cfg(fuzzing)]
#[inline]
unsafe fn copy(dst: *mut u8, src: *const u8, len: usize) {
    // SAFETY: the caller's contract; the fuzzer's peers follow the
    // protocol (a plain copy, for AddressSanitizer: module doc).
    unsafe { std::ptr::copy_nonoverlapping(src, dst, len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every length up to past the `rep movsb` threshold, and a few above,
    /// at every alignment of both ends, copies exactly its bytes and
    /// nothing beside them.
    #[test]
    fn every_length_and_alignment_copies_exactly_its_bytes() {
        let src: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
        for len in (0..=300).chain([511, 512, 700]) {
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
