//! Shared-memory links: two software devices in different processes of
//! one host exchange their frames through a pair of single-producer
//! single-consumer byte rings in a memfd, instead of through their unix
//! socket. The socket stays as the control channel: the handshake passes
//! the memfd over it (`SCM_RIGHTS`), a side that finds its peer asleep
//! sends it a wake-up byte on it, and a peer that dies closes it.
//!
//! The rings carry exactly the byte stream the socket would: the same
//! frames, parsed and validated by the same code ([`super::link`]). Only
//! the transport differs: a `write` is a copy into the ring as one
//! *record*, a `read` a copy out of the records that arrived.
//!
//! # Records
//!
//! A ring is a sequence of records, each at a 16-byte aligned position:
//! a 16-byte header, then its bytes, then padding to the next multiple of
//! 16. The header's second word is the record's length; its first, the
//! *seal*, is the record's free-running ring position XOR a constant,
//! stored `Release` after everything else. A consumer knows where the next
//! record will start and waits on that seal: the word it polls shares its
//! cache line with the record's first bytes, so a small frame reaches the
//! other core in the one line transfer, and the producer writes no index
//! the consumer polls. (A tail index, as the first version of this link
//! had, costs every message a second line on each side: the producer takes
//! the tail's line back from the consumer that polls it, and the consumer
//! misses on the tail and then, in sequence, on the bytes.) The check for
//! a seal ([`Consumer::may_have_bytes`], a quiet device's pass) prefetches
//! the rest of a small record as soon as it sees one, so its other lines
//! cross while the pass that copies them starts. A stale word
//! left by an earlier lap cannot pass for a seal: it names a position a
//! whole ring earlier.
//!
//! A *rewind* record has the length word `u64::MAX` and no bytes: the
//! next record starts at the beginning of the ring's next lap. A producer
//! writes one before a new record that would start [`REWIND_AT`] or more
//! into the ring and is no longer than the lap behind it, once the head
//! shows the consumer took everything (it reads the head for this at most
//! once per `REWIND_AT / 16` bytes it publishes). A link whose consumer
//! keeps up thus stays in the first lines of each ring, which stay in
//! both cores' caches; the rest of the ring is there for bursts and large
//! frames. A consumer accepts a rewind only past the ring's start and
//! where its own published head is (the only place the producer can have
//! written one), and returns the skipped rest of the lap at once.
//!
//! # Layout of the memfd (created and sealed by the connector)
//!
//! | offset | bytes | word | written by | read by |
//! |---|---|---|---|---|
//! | 0 | 16 | `"M5SHMLNK"`, version u32 = 3, ring bytes u32 (LE) | connector, before it is sent | acceptor, once |
//! | 256 | 8 | ring 0 head (bytes consumed, free-running) | acceptor, `Release` | connector, `Acquire` |
//! | 512 | 8 | ring 1 head | connector, `Release` | acceptor, `Acquire` |
//! | 640 | 8 | connector's sleep sequence | connector | acceptor, after a `SeqCst` fence |
//! | 768 | 8 | acceptor's sleep sequence | acceptor | connector, after a `SeqCst` fence |
//! | 4096 | R | ring 0 records: connector → acceptor | connector, seal last (`Release`) | acceptor, seal first (`Acquire`) |
//! | 4096 + R | R | ring 1 records: acceptor → connector | acceptor | connector |
//!
//! Every word sits on its own 128-byte pair of lines (the adjacent-line
//! prefetcher moves lines in pairs), so a consumer's head store does not
//! take a line the producer writes, and the sleep words, written only
//! around a sleep, stay shared in both caches while the link is busy.
//!
//! # Untrusted memory
//!
//! The rings and words are written by another process. Each side keeps
//! its own positions in private memory and only publishes them; what the
//! peer wrote is checked before use: a consumer accepts a record only if
//! its seal names the position it expects and the record lies inside the
//! space it has returned to the producer, a producer a head only if it
//! lies between the last head it saw and its own tail. A peer that breaks
//! this breaks only its link, with an error; the bytes it wrote are
//! frames, validated like any socket peer's. The memfd is sealed against
//! shrinking and growing before it is handed over (the acceptor checks the
//! seals), so a peer cannot truncate it under the other's mapping.
//!
//! # Sleeping (a Dekker handshake per direction)
//!
//! A device thread about to sleep makes its sleep sequence odd
//! ([`Sleeper::announce`]), then (in [`super::bell::Bell::sleep`]) fences
//! `SeqCst` and makes one more pass over its rings before it blocks in
//! `ppoll` (its control sockets are in the set); awake again, it makes the
//! sequence even. A producer that published a record, or a consumer that
//! freed space, fences `SeqCst` and reads the peer's sequence
//! ([`Waker::wants_signal`]): odd and not yet signalled, it sends the peer
//! one byte on the control socket (`MSG_DONTWAIT`: nothing the peer does to
//! its end can make this side block). Either the sleeper's last pass sees
//! the record (or the space), or the waker sees the odd sequence. A busy
//! link, whose peer never sleeps, makes no system call.
//!
//! The wake-up goes over the socket, not an eventfd passed to the peer: a
//! descriptor shared with another process shares its file status flags,
//! so a peer could make a shared eventfd blocking and hang whoever writes
//! or drains it; each end of a socket pair is its own.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicU64, Ordering, fence};

use super::wire::Data;

/// Bytes of each of the two rings.
pub(crate) const RING: usize = 8 << 20;
/// Where the rings start (the control words fit in the first page).
const DATA: usize = 4096;
const MAGIC: [u8; 8] = *b"M5SHMLNK";
const VERSION: u32 = 3;
const HEAD0: usize = 256;
const HEAD1: usize = 512;
const SLEEP_CONNECTOR: usize = 640;
const SLEEP_ACCEPTOR: usize = 768;
/// A record's header: seal and length.
const REC: u64 = 16;
/// XORed into a record's position to make its seal (so that the zeros of
/// a fresh ring, or small numbers in old bytes, are no seal).
const SEAL: u64 = 0x6d35_7368_6d72_6563;
/// The length word of a *rewind* record: no bytes; the next record starts
/// at the beginning of the ring's next lap.
const REWIND: u64 = u64::MAX;
/// How far into a ring a producer goes before it rewinds (when its
/// consumer has taken everything): a link that carries small messages
/// keeps its records in the first lines of each ring, which stay in both
/// cores' caches, instead of walking through megabytes of lines last
/// touched a lap ago.
const REWIND_AT: u64 = 64 << 10;

/// The size of a link's memfd.
pub(crate) const fn region_len(ring: usize) -> usize {
    DATA + 2 * ring
}

/// The ring bytes a record of `n` bytes takes: header, bytes, padding.
const fn record_len(n: u64) -> u64 {
    (REC + n + 15) & !15
}

/// An index word of the rings (std's atomics here; loom's in the model).
pub(crate) trait Word {
    fn load(&self, o: Ordering) -> u64;
    fn store(&self, v: u64, o: Ordering);
    /// A `SeqCst` fence of the memory model the word lives in.
    fn fence(&self);
}

impl Word for AtomicU64 {
    fn load(&self, o: Ordering) -> u64 {
        AtomicU64::load(self, o)
    }
    fn store(&self, v: u64, o: Ordering) {
        AtomicU64::store(self, v, o)
    }
    fn fence(&self) {
        fence(Ordering::SeqCst);
    }
}

/// A ring's memory: bytes, and the header words of the records in it.
pub(crate) trait Bytes {
    type W: Word;
    /// Bytes in the ring (a power of two, at least 32).
    fn len(&self) -> usize;
    /// Copies `src` to ring offset `at` (`at + src.len() <= len`).
    fn put(&self, at: usize, src: &[u8]);
    /// Copies `src` (bytes that may be another's memory, never made a
    /// slice) to ring offset `at` (`at + src.len() <= len`). This default
    /// goes through a temporary buffer, for the loom model's cells; the
    /// real ring copies straight in.
    fn put_data(&self, at: usize, src: Data<'_>) {
        let mut v = vec![0u8; src.len()];
        // SAFETY: `v` is a fresh buffer of `src.len()` bytes.
        unsafe { src.copy_to(v.as_mut_ptr()) };
        self.put(at, &v);
    }
    /// Copies ring offset `at` into `dst` (`at + dst.len() <= len`).
    fn get(&self, at: usize, dst: &mut [u8]);
    /// The header word at ring offset `at` (a multiple of 8).
    fn word(&self, at: usize) -> &Self::W;
    /// Asks the CPU to fetch the lines of ring offsets `at..at + len` (at
    /// most [`PREFETCH_MAX`] bytes; a hint: never faults, changes nothing).
    fn prefetch(&self, _at: usize, _len: usize) {}
}

/// The most of a record [`Consumer::may_have_bytes`] prefetches: a small
/// frame's lines (a larger one is copied in bulk, which the hardware
/// prefetcher follows).
const PREFETCH_MAX: usize = 256;

/// The peer broke the ring's protocol (an index it cannot have published).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Corrupt(pub(crate) &'static str);

/// The producer's side of one ring: its tail is private, the consumer's
/// head is read (and checked) only when the space it knows of runs out,
/// and, now and then, to see whether it may rewind.
/// Bytes can be staged (written into the next record, not yet published)
/// and published later as one record, so a pass's frames go out together.
#[derive(Debug, Default)]
pub(crate) struct Producer {
    /// Published up to (where the next record's header goes; a multiple
    /// of 16).
    tail: u64,
    /// Bytes written into the next record, not yet published.
    staged: u64,
    /// The consumer's head, as last read.
    head: u64,
    /// Rewind once a new record would start this far into the ring (0:
    /// never).
    rewind_at: u64,
    /// Do not look at the consumer's head for a rewind before the tail
    /// reaches this (it was behind when last looked at).
    rewind_next: u64,
}

impl Producer {
    /// A producer that rewinds to the start of the ring once it is
    /// `rewind_at` bytes into it and its consumer has taken everything.
    pub(crate) fn rewinding(rewind_at: u64) -> Producer {
        Producer {
            rewind_at,
            ..Producer::default()
        }
    }

    /// Free ring bytes after the tail, reading the consumer's head when
    /// fewer than `need` are known to be free.
    fn room<W: Word>(&mut self, head_w: &W, size: u64, need: u64) -> Result<u64, Corrupt> {
        let used = self.tail - self.head;
        if size - used >= need {
            return Ok(size - used);
        }
        self.read_head(head_w)?;
        Ok(size - (self.tail - self.head))
    }

    fn read_head<W: Word>(&mut self, head_w: &W) -> Result<(), Corrupt> {
        // Acquire: pairs with the consumer's Release of its head; the
        // bytes it consumed were read before the space comes back.
        let head = head_w.load(Ordering::Acquire);
        if head.wrapping_sub(self.head) > self.tail - self.head {
            return Err(Corrupt("the consumer's head is outside the ring"));
        }
        self.head = head;
        Ok(())
    }

    /// Before a new record of `need` ring bytes: past `rewind_at`, with
    /// everything published taken by the consumer, publishes a rewind
    /// record and moves the tail to the start of the ring's next lap. The
    /// head is read for this at most once per `rewind_at / 16` bytes
    /// published (it costs a line transfer), so a busy link seldom looks.
    /// A record longer than the lap behind the tail does not rewind: until
    /// the consumer passes the rewind only that much of the new lap is
    /// known free, and the record would go split, through `tx`, instead of
    /// whole (where the consumer can take a large frame in place).
    fn rewind<W: Word, B: Bytes>(
        &mut self,
        head_w: &W,
        ring: &B,
        need: u64,
    ) -> Result<(), Corrupt> {
        let size = ring.len() as u64;
        let off = self.tail & (size - 1);
        if self.staged != 0 || self.rewind_at == 0 || off < self.rewind_at || need > off {
            return Ok(());
        }
        if self.head != self.tail {
            if self.tail < self.rewind_next {
                return Ok(());
            }
            self.read_head(head_w)?;
            if self.head != self.tail {
                self.rewind_next = self.tail + (self.rewind_at / 16).max(REC);
                return Ok(());
            }
        }
        // The consumer is at the tail: the rest of this lap is free, and
        // the header fits (the tail is 16-aligned, `off` below the size).
        let at = off as usize;
        // Relaxed: published by the seal's Release.
        ring.word(at + 8).store(REWIND, Ordering::Relaxed);
        // Release: the length word is visible before the seal.
        ring.word(at).store(self.tail ^ SEAL, Ordering::Release);
        self.tail = (self.tail | (size - 1)) + 1;
        Ok(())
    }

    fn put<B: Bytes>(&mut self, ring: &B, src: Data<'_>) {
        let size = ring.len() as u64;
        let at = ((self.tail + REC + self.staged) & (size - 1)) as usize;
        let (first, rest) = src.split_at(src.len().min(ring.len() - at));
        ring.put_data(at, first);
        if !rest.is_empty() {
            ring.put_data(0, rest);
        }
        self.staged += src.len() as u64;
    }

    /// Stages the concatenation of `parts` if all of it fits (false: it
    /// does not, nothing is written).
    pub(crate) fn stage<W: Word, B: Bytes>(
        &mut self,
        head_w: &W,
        ring: &B,
        parts: &[Data<'_>],
    ) -> Result<bool, Corrupt> {
        let total: u64 = parts.iter().map(|p| p.len() as u64).sum();
        let need = record_len(self.staged + total);
        self.rewind(head_w, ring, need)?;
        if self.staged + total > max_record(ring)
            || self.room(head_w, ring.len() as u64, need)? < need
        {
            return Ok(false);
        }
        for &p in parts {
            self.put(ring, p);
        }
        Ok(true)
    }

    /// Publishes what was staged as one record. True if there was
    /// something.
    pub(crate) fn publish<B: Bytes>(&mut self, ring: &B) -> bool {
        if self.staged == 0 {
            return false;
        }
        let at = (self.tail & (ring.len() as u64 - 1)) as usize;
        // Relaxed: the seal's Release below publishes it with the bytes.
        ring.word(at + 8).store(self.staged, Ordering::Relaxed);
        // Release: the bytes and the length written before are visible
        // before the seal that publishes them.
        ring.word(at).store(self.tail ^ SEAL, Ordering::Release);
        self.tail += record_len(self.staged);
        self.staged = 0;
        true
    }

    /// Copies as much of `src` as fits (at most [`max_record`] bytes a
    /// record) and publishes it with anything staged before: `Ok(0)` when
    /// the ring is full (back-pressure: the bytes wait).
    pub(crate) fn push<W: Word, B: Bytes>(
        &mut self,
        head_w: &W,
        ring: &B,
        src: &[u8],
    ) -> Result<usize, Corrupt> {
        let want = (src.len() as u64).min(max_record(ring) - self.staged.min(max_record(ring)));
        self.rewind(head_w, ring, record_len(self.staged + want))?;
        let room = self.room(head_w, ring.len() as u64, record_len(self.staged + want))?;
        // The most bytes whose record fits in `room`.
        let fit = (room & !15).saturating_sub(REC + self.staged);
        let n = want.min(fit) as usize;
        self.put(ring, Data::slice(&src[..n]));
        self.publish(ring);
        Ok(n)
    }
}

/// The most bytes one record carries: half a ring, so that a consumer
/// copying one out leaves the producer room for the next.
fn max_record<B: Bytes>(ring: &B) -> u64 {
    ring.len() as u64 / 2
}

/// The consumer's side of one ring: its head is private; a record is read
/// only once its seal is checked.
#[derive(Debug, Default)]
pub(crate) struct Consumer {
    /// Consumed up to (inside the current record, or at its end).
    head: u64,
    /// Where the current record's bytes end (the next record's header is
    /// at the next multiple of 16).
    end: u64,
    /// The head last published to the producer.
    released: u64,
}

impl Consumer {
    /// Unconsumed bytes of the current record; when it is used up, looks
    /// at the next record's seal and enters that record if it is sealed
    /// (passing a rewind record to the record after it).
    fn current<B: Bytes>(&mut self, ring: &B) -> Result<u64, Corrupt> {
        if self.head < self.end {
            return Ok(self.end - self.head);
        }
        let size = ring.len() as u64;
        let mut pos = (self.end + 15) & !15;
        let mut at = (pos & (size - 1)) as usize;
        // Acquire: pairs with the producer's Release of the seal; the
        // record's length and bytes are visible.
        if ring.word(at).load(Ordering::Acquire) != pos ^ SEAL {
            return Ok(0);
        }
        // Relaxed: ordered by the seal's Acquire.
        let mut len = ring.word(at + 8).load(Ordering::Relaxed);
        if len == REWIND {
            // A producer rewinds only past the ring's start and only once
            // it saw everything before returned (this side returns a
            // record's space as it leaves it, so that is the head it last
            // published).
            if at == 0 || self.released != pos {
                return Err(Corrupt("a rewind record the producer cannot have written"));
            }
            pos = (pos | (size - 1)) + 1;
            self.head = pos;
            self.end = pos;
            at = 0;
            // Acquire, Relaxed: as for the first record.
            if ring.word(at).load(Ordering::Acquire) != pos ^ SEAL {
                return Ok(0);
            }
            // (A rewind right after a rewind is refused below: longer
            // than the ring.)
            len = ring.word(at + 8).load(Ordering::Relaxed);
        }
        // The producer may write only the space this side returned (the
        // bound on `len` first: it keeps `record_len` from overflowing).
        if len == 0 || len > size || pos + record_len(len) > self.released + size {
            return Err(Corrupt("a record outside the ring's free space"));
        }
        self.head = pos + REC;
        self.end = self.head + len;
        Ok(len)
    }

    /// Whether bytes may be waiting: some of the current record, or a seal
    /// on the next one (one load; [`Consumer::current`] checks what it
    /// finds).
    fn may_have_bytes<B: Bytes>(&self, ring: &B) -> bool {
        if self.head < self.end {
            return true;
        }
        let pos = (self.end + 15) & !15;
        let at = (pos & (ring.len() as u64 - 1)) as usize;
        // Relaxed: a hint; the pass that follows reads the seal again with
        // Acquire.
        if ring.word(at).load(Ordering::Relaxed) != pos ^ SEAL {
            return false;
        }
        // The seal's line is here: ask for the record's other lines now,
        // so that they cross while the pass that reads them starts (a
        // length the peer lies about only prefetches other ring lines).
        // Relaxed: the length only steers a prefetch; `current` reads it
        // again after the seal's Acquire.
        let len = ring.word(at + 8).load(Ordering::Relaxed);
        if len != REWIND {
            ring.prefetch(
                at + 64,
                len.saturating_add(REC)
                    .saturating_sub(64)
                    .min(PREFETCH_MAX as u64) as usize,
            );
        }
        true
    }

    /// Returns the space consumed so far to the producer: up to the head,
    /// or, with the record used up, its padding too (else a producer that
    /// needs that much would wait for a consumer waiting for it); and the
    /// rest of a lap a rewind record skipped. Stores the head only if it
    /// moved.
    fn release<W: Word>(&mut self, head_w: &W) {
        let to = if self.head == self.end {
            (self.end + 15) & !15
        } else {
            self.head
        };
        if to == self.released {
            return;
        }
        self.released = to;
        // Release: the bytes were read before the producer may write over
        // them.
        head_w.store(self.released, Ordering::Release);
    }

    fn copy<B: Bytes>(&self, ring: &B, dst: &mut [u8]) {
        let at = (self.head & (ring.len() as u64 - 1)) as usize;
        let first = dst.len().min(ring.len() - at);
        ring.get(at, &mut dst[..first]);
        if first < dst.len() {
            let n = dst.len();
            ring.get(0, &mut dst[first..n]);
        }
    }

    /// The ring offset of the next `n` bytes if they arrived in one record
    /// and do not wrap (they stay unconsumed: [`Consumer::skip`] consumes
    /// them).
    pub(crate) fn peek<B: Bytes>(&mut self, ring: &B, n: usize) -> Result<Option<usize>, Corrupt> {
        if self.current(ring)? < n as u64 {
            return Ok(None);
        }
        let at = (self.head & (ring.len() as u64 - 1)) as usize;
        Ok((at + n <= ring.len()).then_some(at))
    }

    /// The next `N` bytes if they arrived in one record (wrapped or not),
    /// not consumed.
    pub(crate) fn peek_bytes<B: Bytes, const N: usize>(
        &mut self,
        ring: &B,
    ) -> Result<Option<[u8; N]>, Corrupt> {
        if self.current(ring)? < N as u64 {
            return Ok(None);
        }
        let mut b = [0u8; N];
        self.copy(ring, &mut b);
        Ok(Some(b))
    }

    /// Consumes `n` bytes read in place (`n` at most what
    /// [`Consumer::peek`] found).
    pub(crate) fn skip<W: Word>(&mut self, head_w: &W, n: usize) {
        assert!(n as u64 <= self.end - self.head);
        self.head += n as u64;
        self.release(head_w);
    }

    /// Copies what has arrived, at most `dst.len()` bytes (across records),
    /// and returns that space (and any a rewind record skipped) to the
    /// producer.
    pub(crate) fn pop<W: Word, B: Bytes>(
        &mut self,
        head_w: &W,
        ring: &B,
        dst: &mut [u8],
    ) -> Result<usize, Corrupt> {
        let mut got = 0;
        while got < dst.len() {
            let avail = self.current(ring)?;
            if avail == 0 {
                break;
            }
            let n = (avail as usize).min(dst.len() - got);
            self.copy(ring, &mut dst[got..got + n]);
            self.head += n as u64;
            got += n;
        }
        self.release(head_w);
        Ok(got)
    }
}

/// The sleeping side of the handshake: its sleep sequence.
#[derive(Debug, Default)]
pub(crate) struct Sleeper {
    seq: u64,
}

impl Sleeper {
    /// About to sleep: the sequence becomes odd. The caller fences
    /// `SeqCst` and looks at its rings once more before it blocks.
    pub(crate) fn announce<W: Word>(&mut self, w: &W) {
        if self.seq & 1 == 0 {
            self.seq += 1;
            // Relaxed: the sleeper's SeqCst fence orders it.
            w.store(self.seq, Ordering::Relaxed);
        }
    }

    /// Awake: the sequence becomes even (wakers stop signalling).
    pub(crate) fn awake<W: Word>(&mut self, w: &W) {
        if self.seq & 1 == 1 {
            self.seq += 1;
            // Relaxed: only spares the peer a system call from here on.
            w.store(self.seq, Ordering::Relaxed);
        }
    }
}

/// The waking side: the last sleep of the peer it signalled.
#[derive(Debug, Default)]
pub(crate) struct Waker {
    signalled: u64,
}

impl Waker {
    /// After publishing a record or freeing space: whether the peer sleeps
    /// and has not been signalled for this sleep yet.
    pub(crate) fn wants_signal<W: Word>(&mut self, peer_seq: &W) -> bool {
        // SeqCst: orders the seal (or head) store before the load of the
        // peer's sequence (see the module doc).
        peer_seq.fence();
        // Relaxed: the fence orders it.
        let s = peer_seq.load(Ordering::Relaxed);
        if s & 1 == 1 && s != self.signalled {
            self.signalled = s;
            return true;
        }
        false
    }
}

/// A mapping of a link's memfd.
struct Region {
    base: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain shared memory; every access goes through
// atomics (the words) or copies of published bytes (the rings).
unsafe impl Send for Region {}

impl Region {
    fn map(fd: RawFd, len: usize) -> std::io::Result<Region> {
        // SAFETY: a fresh shared mapping of `len` bytes of `fd`; the
        // kernel picks the address.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Region {
            base: p.cast(),
            len,
        })
    }

    fn word(&self, at: usize) -> &AtomicU64 {
        debug_assert!(at + 8 <= DATA && at.is_multiple_of(8));
        // SAFETY: inside the mapping (the control page), 8-aligned (the
        // mapping is page-aligned), and only ever accessed atomically.
        unsafe { AtomicU64::from_ptr(self.base.add(at).cast()) }
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `map`, unmapped once.
        unsafe { libc::munmap(self.base.cast(), self.len) };
    }
}

/// One ring's memory inside a [`Region`] (or, in tests, a heap buffer
/// that outlives it).
struct Ring {
    base: *mut u8,
    len: usize,
}

// SAFETY: a view of a mapping owned by the same `Pipe`; see `Region`.
unsafe impl Send for Ring {}

impl Bytes for Ring {
    type W = AtomicU64;
    fn len(&self) -> usize {
        self.len
    }
    fn put(&self, at: usize, src: &[u8]) {
        assert!(at + src.len() <= self.len);
        // SAFETY: inside the ring (checked above). The consumer does not
        // read these bytes before the seal publishes them; a peer that
        // breaks the protocol and reads or writes them anyway races only
        // with a copy the compiler cannot look into (`shmcopy`).
        unsafe { shmcopy::to_shared(self.base.add(at), src.as_ptr(), src.len()) };
    }
    fn put_data(&self, at: usize, src: Data<'_>) {
        assert!(at + src.len() <= self.len);
        // SAFETY: inside the ring (checked above), not yet published; the
        // source is a frame's bytes or a registered region's, never this
        // ring's unpublished part.
        unsafe { src.copy_to(self.base.add(at)) };
    }
    fn get(&self, at: usize, dst: &mut [u8]) {
        assert!(at + dst.len() <= self.len);
        // SAFETY: inside the ring (checked above), published by the
        // producer's seal. A peer that breaks the protocol and writes here
        // anyway only changes bytes this side validates as frames, and
        // makes no data race: `shmcopy` copies with moves the compiler
        // cannot look into or repeat.
        unsafe { shmcopy::from_shared(dst.as_mut_ptr(), self.base.add(at), dst.len()) };
    }
    fn prefetch(&self, at: usize, len: usize) {
        #[cfg(target_arch = "x86_64")]
        {
            let end = (at + len.min(PREFETCH_MAX)).min(self.len);
            let mut p = at & !63;
            while p < end {
                // SAFETY: `p` is inside the ring (below `end`); a prefetch
                // reads nothing into the program and cannot fault.
                unsafe {
                    std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(
                        self.base.add(p).cast(),
                    );
                }
                p += 64;
            }
        }
        #[cfg(not(target_arch = "x86_64"))]
        let _ = (at, len);
    }
    fn word(&self, at: usize) -> &AtomicU64 {
        assert!(at + 8 <= self.len && at.is_multiple_of(8));
        // SAFETY: inside the ring, 8-aligned (the ring starts on a page);
        // a header word is accessed atomically by both sides (an honest
        // producer writes a header's position with plain copies only a
        // ring after the consumer passed it; see the module doc).
        unsafe { AtomicU64::from_ptr(self.base.add(at).cast()) }
    }
}

/// Which side of the link this process is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Role {
    Connector,
    Acceptor,
}

/// This side of a shared-memory link: a producer on one ring, a consumer
/// on the other, its sleep sequence, and what it knows of the peer's.
pub(crate) struct Pipe {
    region: Region,
    out: Ring,
    inn: Ring,
    out_head: usize,
    in_head: usize,
    my_seq: usize,
    peer_seq: usize,
    producer: Producer,
    consumer: Consumer,
    /// Reads returned ring space since [`Pipe::take_freed`] last looked.
    freed: bool,
    sleeper: Sleeper,
    waker: Waker,
    /// Fault injection: publish impossible heads from now on.
    lie_head: bool,
}

impl Pipe {
    fn new(region: Region, ring: usize, role: Role) -> Pipe {
        // SAFETY: inside the mapping, which is DATA + 2 * ring long.
        let (b0, b1) = unsafe { (region.base.add(DATA), region.base.add(DATA + ring)) };
        let r0 = Ring {
            base: b0,
            len: ring,
        };
        let r1 = Ring {
            base: b1,
            len: ring,
        };
        let (out, inn, oh, ih, me, peer) = match role {
            Role::Connector => (r0, r1, HEAD0, HEAD1, SLEEP_CONNECTOR, SLEEP_ACCEPTOR),
            Role::Acceptor => (r1, r0, HEAD1, HEAD0, SLEEP_ACCEPTOR, SLEEP_CONNECTOR),
        };
        Pipe {
            region,
            out,
            inn,
            out_head: oh,
            in_head: ih,
            my_seq: me,
            peer_seq: peer,
            producer: Producer::rewinding(REWIND_AT.min(ring as u64 / 4)),
            consumer: Consumer::default(),
            freed: false,
            sleeper: Sleeper::default(),
            waker: Waker::default(),
            lie_head: false,
        }
    }

    /// The acceptor's side: maps the memfd the connector sent, after
    /// checking it is sealed against shrinking and growing, as long as its
    /// header says and that the header is this version's.
    pub(crate) fn open(fd: &OwnedFd) -> Result<Pipe, String> {
        let raw = fd.as_raw_fd();
        // SAFETY: plain syscall on a descriptor we own.
        let seals = unsafe { libc::fcntl(raw, libc::F_GET_SEALS) };
        let both = libc::F_SEAL_SHRINK | libc::F_SEAL_GROW;
        if seals < 0 || seals & both != both {
            return Err("the link's memory is not sealed against resizing".into());
        }
        // SAFETY: fstat into a zeroed struct.
        let mut st: libc::stat = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        if unsafe { libc::fstat(raw, &mut st) } != 0 {
            return Err(format!(
                "fstat of the link's memory: {}",
                std::io::Error::last_os_error()
            ));
        }
        let mut h = [0u8; 16];
        // SAFETY: reads 16 bytes at offset 0 into a live buffer.
        let got = unsafe { libc::pread(raw, h.as_mut_ptr().cast(), 16, 0) };
        if got != 16 || h[..8] != MAGIC || h[8..12] != VERSION.to_le_bytes() {
            return Err("the link's memory has no valid header".into());
        }
        let ring = u32::from_le_bytes([h[12], h[13], h[14], h[15]]) as usize;
        if !ring.is_power_of_two() || !(64 << 10..=64 << 20).contains(&ring) {
            return Err(format!("the link's memory names a bad ring size {ring}"));
        }
        if st.st_size as u64 != region_len(ring) as u64 {
            return Err("the link's memory does not have the size its header says".into());
        }
        let region = Region::map(raw, region_len(ring)).map_err(|e| e.to_string())?;
        Ok(Pipe::new(region, ring, Role::Acceptor))
    }

    /// Writes the concatenation of `parts` into the next outgoing record,
    /// not yet published, if all of it fits.
    pub(crate) fn stage(&mut self, parts: &[Data<'_>]) -> Result<bool, Corrupt> {
        let h = self.region.word(self.out_head);
        self.producer.stage(h, &self.out, parts)
    }

    /// Publishes what was staged. True if there was something.
    pub(crate) fn publish(&mut self) -> bool {
        self.producer.publish(&self.out)
    }

    /// Copies what fits of `src` into the outgoing ring and publishes it
    /// (after anything staged): `Ok(0)` when it is full.
    pub(crate) fn write(&mut self, src: &[u8]) -> Result<usize, Corrupt> {
        let h = self.region.word(self.out_head);
        self.producer.push(h, &self.out, src)
    }

    /// The first `n` bytes that arrived, if they have, in one record, and
    /// lie contiguous in the ring: a pointer to them, valid until
    /// [`Pipe::skip`] (the producer does not write them before) and while
    /// the pipe lives.
    pub(crate) fn peek(&mut self, n: usize) -> Result<Option<*const u8>, Corrupt> {
        let at = self.consumer.peek(&self.inn, n)?;
        // SAFETY: inside the ring (peek checked that at + n <= len).
        Ok(at.map(|at| unsafe { self.inn.base.add(at).cast_const() }))
    }

    /// The first `N` bytes that arrived, if in one record (wrapped or not).
    pub(crate) fn peek_bytes<const N: usize>(&mut self) -> Result<Option<[u8; N]>, Corrupt> {
        self.consumer.peek_bytes(&self.inn)
    }

    /// Consumes `n` bytes read in place.
    pub(crate) fn skip(&mut self, n: usize) {
        self.consumer.skip(self.region.word(self.in_head), n);
        self.lie();
    }

    /// Copies what arrived, at most `dst.len()` bytes.
    pub(crate) fn read(&mut self, dst: &mut [u8]) -> Result<usize, Corrupt> {
        let h = self.region.word(self.in_head);
        let before = self.consumer.released;
        let n = self.consumer.pop(h, &self.inn, dst)?;
        self.freed |= self.consumer.released != before;
        self.lie();
        Ok(n)
    }

    /// Whether the peer may have published bytes this side has not read
    /// (a hint for a pass that would otherwise do nothing).
    pub(crate) fn may_have_bytes(&self) -> bool {
        self.consumer.may_have_bytes(&self.inn)
    }

    /// Whether reads returned space to the producer since the last call
    /// (bytes taken, or a lap a rewind record skipped).
    pub(crate) fn take_freed(&mut self) -> bool {
        std::mem::take(&mut self.freed)
    }

    /// Fault injection: from now on, every head this side publishes is one
    /// no consumer can have reached (a ring and more past the tail), which
    /// the producer must refuse when it next needs space.
    pub(crate) fn corrupt_head(&mut self) {
        self.lie_head = true;
        self.lie();
    }

    fn lie(&self) {
        if self.lie_head {
            let bad = self.consumer.head + 4 * self.inn.len as u64 + 1;
            // Relaxed: a deliberate lie; the producer's check is what is
            // tested.
            self.region.word(self.in_head).store(bad, Ordering::Relaxed);
        }
    }

    /// After bytes were published or space freed: whether the peer
    /// sleeps and must be woken (once per sleep; the caller sends the
    /// byte on the control socket).
    pub(crate) fn peer_asleep(&mut self) -> bool {
        self.waker.wants_signal(self.region.word(self.peer_seq))
    }

    /// Fault injection: seals, at the next record's place, a record longer
    /// than the ring, which the consumer must refuse.
    pub(crate) fn corrupt(&mut self) {
        let tail = self.producer.tail;
        let at = (tail & (self.out.len as u64 - 1)) as usize;
        // Relaxed, then Release: a deliberate lie, published like a
        // record; the consumer's check is what is tested.
        self.out
            .word(at + 8)
            .store(2 * self.out.len as u64 + 1, Ordering::Relaxed);
        self.out.word(at).store(tail ^ SEAL, Ordering::Release);
    }

    /// This side is about to sleep (see the module doc).
    pub(crate) fn announce_sleep(&mut self) {
        self.sleeper.announce(self.region.word(self.my_seq));
    }

    /// This side woke up.
    pub(crate) fn awake(&mut self) {
        self.sleeper.awake(self.region.word(self.my_seq));
    }
}

/// The connector's mapping before the acceptor took it.
pub(crate) struct Offer(Region);

impl Offer {
    /// The connector's side: a new sealed memfd, mapped and initialised,
    /// and the memfd to send (the pipe is made once the acceptor took
    /// it: [`Offer::into_pipe`]).
    pub(crate) fn create() -> std::io::Result<(Offer, OwnedFd)> {
        // SAFETY: a plain syscall on a NUL-terminated name.
        let fd = unsafe {
            libc::memfd_create(
                c"mlx5-soft-link".as_ptr(),
                libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let len = region_len(RING);
        // SAFETY: plain syscalls on our descriptor.
        unsafe {
            if libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) != 0
                || libc::fcntl(
                    fd.as_raw_fd(),
                    libc::F_ADD_SEALS,
                    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL,
                ) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
        }
        let region = Region::map(fd.as_raw_fd(), len)?;
        let mut h = [0u8; 16];
        h[..8].copy_from_slice(&MAGIC);
        h[8..12].copy_from_slice(&VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(RING as u32).to_le_bytes());
        // SAFETY: the first 16 bytes of a mapping no one else has yet.
        unsafe { std::ptr::copy_nonoverlapping(h.as_ptr(), region.base, 16) };
        Ok((Offer(region), fd))
    }

    /// The connector's pipe, once the acceptor took the memfd.
    pub(crate) fn into_pipe(self) -> Pipe {
        Pipe::new(self.0, RING, Role::Connector)
    }
}

/// Sends `bytes` and the descriptors `fds` over a unix socket.
pub(crate) fn send_fds(sock: RawFd, bytes: &[u8], fds: &[RawFd]) -> std::io::Result<()> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    let payload = std::mem::size_of_val(fds);
    // SAFETY: CMSG_SPACE is a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: the control buffer is `space` bytes, enough for one cmsg
    // carrying `fds`; the macros stay inside it.
    unsafe {
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(payload as u32) as _;
        std::ptr::copy_nonoverlapping(fds.as_ptr(), libc::CMSG_DATA(c).cast::<RawFd>(), fds.len());
    }
    // SAFETY: msg points at live buffers set up above.
    let n = unsafe { libc::sendmsg(sock, &msg, libc::MSG_NOSIGNAL) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    if n as usize != bytes.len() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::WriteZero,
            "short send of the link's shared-memory offer",
        ));
    }
    Ok(())
}

/// Receives exactly `buf.len()` bytes and up to `max` descriptors (fewer
/// bytes, or more descriptors, is an error; every descriptor received is
/// owned by the result, or closed).
pub(crate) fn recv_fds(sock: RawFd, buf: &mut [u8], max: usize) -> std::io::Result<Vec<OwnedFd>> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let payload = max * std::mem::size_of::<RawFd>();
    // SAFETY: a pure computation.
    let space = unsafe { libc::CMSG_SPACE(payload as u32) } as usize;
    let mut cbuf = vec![0u64; space.div_ceil(8)];
    // SAFETY: msghdr is plain data; zeroed is a valid value.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = space as _;
    // SAFETY: msg points at live buffers set up above.
    let n = unsafe { libc::recvmsg(sock, &mut msg, libc::MSG_CMSG_CLOEXEC) };
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut fds = Vec::new();
    // SAFETY: walks the control messages the kernel wrote into cbuf.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len as usize - libc::CMSG_LEN(0) as usize)
                    / std::mem::size_of::<RawFd>();
                for i in 0..count {
                    fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidData, what.to_string());
    if msg.msg_flags & libc::MSG_CTRUNC != 0 || fds.len() > max {
        return Err(bad(
            "too many descriptors in the link's shared-memory offer",
        ));
    }
    if n as usize != buf.len() {
        return Err(bad("short shared-memory offer"));
    }
    Ok(fds)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A ring over heap memory (the buffer must outlive it).
    fn heap(len: usize) -> (Vec<AtomicU64>, Ring) {
        let mut mem: Vec<AtomicU64> = (0..len / 8).map(|_| AtomicU64::new(0)).collect();
        let ring = Ring {
            base: mem.as_mut_ptr().cast(),
            len,
        };
        (mem, ring)
    }

    #[test]
    fn bytes_cross_every_wrap_offset_in_order_and_a_full_ring_pushes_back() {
        let (_mem, ring) = heap(64);
        let head = AtomicU64::new(0);
        let (mut p, mut c) = (Producer::default(), Consumer::default());
        let mut next_out = 0u8;
        let mut next_in = 0u8;
        for round in 0..400usize {
            let chunk: Vec<u8> = (0..(round % 23))
                .map(|i| next_out.wrapping_add(i as u8))
                .collect();
            let n = p.push(&head, &ring, &chunk).unwrap();
            assert!(n <= chunk.len());
            next_out = next_out.wrapping_add(n as u8);
            let mut buf = vec![0u8; round % 7 + 1];
            let got = c.pop(&head, &ring, &mut buf).unwrap();
            for &b in &buf[..got] {
                assert_eq!(b, next_in);
                next_in = next_in.wrapping_add(1);
            }
            // Relaxed (here and below): one thread plays both sides.
            assert!(p.tail - head.load(Ordering::Relaxed) <= 64);
        }
        // Drain it, then fill it: the rest waits.
        let mut buf = [0u8; 64];
        while c.pop(&head, &ring, &mut buf).unwrap() > 0 {}
        let mut total = 0;
        loop {
            let n = p.push(&head, &ring, &[1; 5]).unwrap();
            if n == 0 {
                break;
            }
            total += n;
        }
        assert!(total <= 64);
        assert!(p.tail - head.load(Ordering::Relaxed) <= 64);
        assert!(64 - (p.tail - head.load(Ordering::Relaxed)) < record_len(1));
        // Drained, every byte arrives once.
        let mut rest = Vec::new();
        loop {
            let n = c.pop(&head, &ring, &mut buf).unwrap();
            if n == 0 {
                break;
            }
            rest.extend_from_slice(&buf[..n]);
        }
        assert_eq!(rest.len(), total);
        assert!(rest.iter().all(|&b| b == 1));
    }

    #[test]
    fn staged_bytes_are_one_record_and_arrive_only_once_published() {
        let (_mem, ring) = heap(256);
        let head = AtomicU64::new(0);
        let (mut p, mut c) = (Producer::default(), Consumer::default());
        let d = Data::slice;
        assert!(p.stage(&head, &ring, &[d(b"ab"), d(b"cd")]).unwrap());
        assert!(p.stage(&head, &ring, &[d(b"ef")]).unwrap());
        let mut buf = [0u8; 16];
        assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 0, "not published");
        assert!(p.publish(&ring));
        assert!(!p.publish(&ring), "nothing more staged");
        assert_eq!(c.peek_bytes::<_, 6>(&ring).unwrap(), Some(*b"abcdef"));
        assert_eq!(c.peek(&ring, 7).unwrap(), None, "only six bytes");
        let at = c.peek(&ring, 6).unwrap().expect("in one record");
        assert_eq!(at, REC as usize);
        c.skip(&head, 6);
        // Relaxed: one thread plays both sides.
        assert_eq!(
            head.load(Ordering::Relaxed),
            record_len(6),
            "a used-up record is returned with its padding"
        );
        // A record is at most half a ring, staged bytes included.
        let d = Data::slice;
        assert!(!p.stage(&head, &ring, &[d(&[0; 129])]).unwrap());
        assert!(p.stage(&head, &ring, &[d(&[0; 100])]).unwrap());
        assert!(!p.stage(&head, &ring, &[d(&[0; 29])]).unwrap());
        assert!(p.publish(&ring));
        assert_eq!(c.pop(&head, &ring, &mut [0; 128]).unwrap(), 100);
        // Records a frame was split over are read across, not peeked.
        assert_eq!(p.push(&head, &ring, b"gh").unwrap(), 2);
        assert_eq!(p.push(&head, &ring, b"ij").unwrap(), 2);
        assert_eq!(c.peek(&ring, 4).unwrap(), None);
        assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 4);
        assert_eq!(&buf[..4], b"ghij");
    }

    #[test]
    fn a_producer_rewinds_once_its_consumer_caught_up_and_never_before() {
        let (_mem, ring) = heap(1024);
        let head = AtomicU64::new(0);
        let (mut p, mut c) = (Producer::rewinding(256), Consumer::default());
        let mut buf = [0u8; 64];
        let mut next = 0u8;
        // Records of 48 bytes take 64: the fifth would start 256 in. The
        // consumer keeps up: it starts the ring again, every fourth time.
        for i in 0..12u64 {
            let chunk: Vec<u8> = (0..48).map(|k| next.wrapping_add(k)).collect();
            assert_eq!(p.push(&head, &ring, &chunk).unwrap(), 48);
            let at = (p.tail - record_len(48)) & 1023;
            assert_eq!(at, (i % 4) * 64, "record {i}");
            assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 48);
            assert_eq!(buf[..48], chunk[..]);
            next = next.wrapping_add(48);
        }
        // Relaxed (here and below): one thread plays both sides.
        assert_eq!(head.load(Ordering::Relaxed), p.tail, "all returned");
        // A consumer behind: no rewind; the producer goes on into the
        // ring and looks at the head again only a while later.
        let (_mem, ring) = heap(1024);
        let head = AtomicU64::new(0);
        let (mut p, mut c) = (Producer::rewinding(256), Consumer::default());
        for _ in 0..6 {
            assert_eq!(p.push(&head, &ring, &[1; 48]).unwrap(), 48);
        }
        assert_eq!(p.tail, 6 * 64, "no rewind with five records unread");
        let mut got = 0;
        while got < 6 * 48 {
            let n = c.pop(&head, &ring, &mut buf).unwrap();
            assert!(n > 0);
            got += n;
        }
        // The head was read at 320 (consumer behind): next look at 336.
        assert_eq!(p.rewind_next, 5 * 64 + 16);
        assert_eq!(p.push(&head, &ring, &[2; 8]).unwrap(), 8);
        assert_eq!(p.tail, 1024 + record_len(8), "caught up: rewound");
        assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 8);
        assert_eq!(buf[..8], [2; 8]);
        assert_eq!(head.load(Ordering::Relaxed), p.tail);
        // A record longer than the lap behind the tail does not rewind: it
        // goes whole where it is (after a rewind only that much of the new
        // lap would be known free).
        let (_mem, ring) = heap(1024);
        let head = AtomicU64::new(0);
        let (mut p, mut c) = (Producer::rewinding(256), Consumer::default());
        let mut big = [0u8; 400];
        for _ in 0..4 {
            assert_eq!(p.push(&head, &ring, &[3; 48]).unwrap(), 48);
            assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 48);
        }
        assert_eq!(p.tail, 256);
        assert!(p.stage(&head, &ring, &[Data::slice(&[4; 300])]).unwrap());
        assert!(p.publish(&ring));
        assert_eq!(
            p.tail,
            256 + record_len(300),
            "320 bytes past 256: no rewind"
        );
        assert_eq!(c.pop(&head, &ring, &mut big).unwrap(), 300);
        assert_eq!(big[..300], [4; 300]);
        // A read that only passes a rewind returns the skipped lap.
        let (_mem, ring) = heap(1024);
        let head = AtomicU64::new(0);
        let (mut p, mut c) = (Producer::rewinding(256), Consumer::default());
        for _ in 0..4 {
            assert_eq!(p.push(&head, &ring, &[5; 48]).unwrap(), 48);
            assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 48);
        }
        p.rewind(&head, &ring, record_len(48)).unwrap();
        assert_eq!(p.tail, 1024, "rewound, nothing after it yet");
        assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 0);
        assert_eq!(head.load(Ordering::Relaxed), 1024, "the lap is returned");
    }

    #[test]
    fn a_rewind_record_a_producer_cannot_have_written_is_refused() {
        // The forged headers are stored as a producer stores them (length
        // Relaxed, seal Release); one thread plays both sides.
        let mut buf = [0u8; 64];
        // At the ring's start.
        let (_mem, ring) = heap(256);
        let head = AtomicU64::new(0);
        ring.word(8).store(REWIND, Ordering::Relaxed);
        ring.word(0).store(SEAL, Ordering::Release);
        assert!(Consumer::default().pop(&head, &ring, &mut buf).is_err());
        // Over bytes this side has not returned yet (the producer cannot
        // have seen its head there).
        let (_mem, ring) = heap(256);
        let mut p = Producer::default();
        assert_eq!(p.push(&head, &ring, &[7; 8]).unwrap(), 8);
        ring.word(40).store(REWIND, Ordering::Relaxed);
        ring.word(32).store(32 ^ SEAL, Ordering::Release);
        let mut c = Consumer::default();
        assert_eq!(c.peek(&ring, 8).unwrap(), Some(REC as usize));
        assert!(c.peek(&ring, 9).unwrap().is_none());
        // Read without returning it: `current` moves on unreleased.
        c.head += 8;
        assert!(
            c.pop(&head, &ring, &mut buf).is_err(),
            "rewind over unreturned space"
        );
        // Two rewinds in a row.
        let (_mem, ring) = heap(256);
        let head = AtomicU64::new(0);
        let mut p = Producer::default();
        let mut c = Consumer::default();
        assert_eq!(p.push(&head, &ring, &[7; 8]).unwrap(), 8);
        assert_eq!(c.pop(&head, &ring, &mut buf).unwrap(), 8);
        ring.word(40).store(REWIND, Ordering::Relaxed);
        ring.word(32).store(32 ^ SEAL, Ordering::Release);
        ring.word(8).store(REWIND, Ordering::Relaxed);
        ring.word(0).store(256 ^ SEAL, Ordering::Release);
        assert!(
            c.pop(&head, &ring, &mut buf).is_err(),
            "a rewind to a rewind"
        );
    }

    /// A seal's length word is the peer's: whatever it says, looking for
    /// bytes (which prefetches the record's lines) only says yes, near the
    /// ring's end too; reading then refuses a record that cannot be.
    #[test]
    fn a_lying_length_only_prefetches() {
        let mut buf = [0u8; 64];
        let head = AtomicU64::new(0);
        for len in [1, 63, 200, 1 << 40, u64::MAX - 1, u64::MAX >> 1] {
            for pos in [0u64, 224, 240] {
                let (_mem, ring) = heap(256);
                let mut c = Consumer {
                    head: pos,
                    end: pos,
                    released: pos,
                };
                let at = pos as usize;
                ring.word(at + 8).store(len, Ordering::Relaxed);
                ring.word(at).store(pos ^ SEAL, Ordering::Release);
                assert!(c.may_have_bytes(&ring), "len {len} at {pos}");
                if len > 256 {
                    assert!(c.pop(&head, &ring, &mut buf).is_err(), "len {len} at {pos}");
                }
            }
        }
    }

    #[test]
    fn what_a_peer_cannot_have_published_is_refused() {
        let mut buf = [0u8; 64];
        // A seal at the right place over a record longer than the ring.
        let (_mem, ring) = heap(64);
        let head = AtomicU64::new(0);
        ring.word(8).store(65, Ordering::Relaxed);
        ring.word(0).store(SEAL, Ordering::Release);
        let mut c = Consumer::default();
        assert!(
            c.pop(&head, &ring, &mut buf).is_err(),
            "a record past a ring"
        );
        // A record that runs into bytes not yet returned to the producer.
        let (_mem, ring) = heap(64);
        let mut p = Producer::default();
        assert_eq!(p.push(&head, &ring, &[7; 8]).unwrap(), 8);
        let mut c = Consumer::default();
        assert_eq!(c.peek(&ring, 8).unwrap(), Some(REC as usize));
        // The first record's 32 bytes come back once read: 64 from 32 on
        // may be written, and a record of 49 bytes takes 80.
        ring.word(40).store(49, Ordering::Relaxed);
        ring.word(32).store(32 ^ SEAL, Ordering::Release);
        c.skip(&head, 8);
        assert!(
            c.pop(&head, &ring, &mut buf).is_err(),
            "over unreturned space"
        );
        // An empty record.
        let (_mem, ring) = heap(64);
        ring.word(0).store(SEAL, Ordering::Release);
        assert!(Consumer::default().pop(&head, &ring, &mut buf).is_err());
        // A stale record of the lap before is no record.
        let (_mem, ring) = heap(64);
        ring.word(8).store(1, Ordering::Relaxed);
        ring.word(0).store(64 ^ SEAL, Ordering::Release);
        assert_eq!(Consumer::default().pop(&head, &ring, &mut buf).unwrap(), 0);
        // Heads the producer cannot accept.
        let (_mem, ring) = heap(64);
        let head = AtomicU64::new(0);
        let mut p = Producer::default();
        p.push(&head, &ring, &[0; 32]).unwrap();
        head.store(49, Ordering::Relaxed);
        assert!(
            p.push(&head, &ring, &[0; 32]).is_err(),
            "a head past the tail"
        );
        head.store(u64::MAX, Ordering::Relaxed);
        assert!(p.push(&head, &ring, &[0; 32]).is_err(), "a head going back");
    }

    #[test]
    fn a_waker_signals_once_per_sleep() {
        let seq = AtomicU64::new(0);
        let (mut s, mut w) = (Sleeper::default(), Waker::default());
        assert!(!w.wants_signal(&seq), "awake: no signal");
        s.announce(&seq);
        assert!(w.wants_signal(&seq));
        assert!(!w.wants_signal(&seq), "signalled already for this sleep");
        s.awake(&seq);
        assert!(!w.wants_signal(&seq));
        s.announce(&seq);
        assert!(w.wants_signal(&seq), "a new sleep");
    }

    #[test]
    fn a_memfd_crosses_a_socket_and_both_sides_see_each_others_bytes() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let (r, memfd) = Offer::create().unwrap();
        send_fds(a.as_raw_fd(), b"SHM1\0\0\0\0", &[memfd.as_raw_fd()]).unwrap();
        let mut buf = [0u8; 8];
        let fds = recv_fds(b.as_raw_fd(), &mut buf, 1).unwrap();
        assert_eq!(&buf, b"SHM1\0\0\0\0");
        assert_eq!(fds.len(), 1);
        let mut acc = Pipe::open(&fds[0]).unwrap();
        let mut con = r.into_pipe();
        assert_eq!(con.write(b"hello").unwrap(), 5);
        let mut got = [0u8; 16];
        assert_eq!(acc.read(&mut got).unwrap(), 5);
        assert_eq!(&got[..5], b"hello");
        assert_eq!(acc.write(b"back").unwrap(), 4);
        assert_eq!(con.read(&mut got).unwrap(), 4);
        // A sleeping connector is to be woken by the acceptor's next bytes.
        con.announce_sleep();
        acc.write(b"x").unwrap();
        assert!(acc.peer_asleep());
        assert!(!acc.peer_asleep(), "once per sleep");
    }

    /// A memfd that can still shrink (or grow) is refused: a peer could
    /// truncate it under the mapping (SIGBUS).
    #[test]
    fn a_memfd_not_sealed_against_both_resizes_is_refused() {
        for seals in [0, libc::F_SEAL_GROW, libc::F_SEAL_SHRINK] {
            // SAFETY: plain syscalls; the descriptor is owned below.
            let fd = unsafe {
                let raw =
                    libc::memfd_create(c"x".as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING);
                assert!(raw >= 0);
                assert_eq!(libc::ftruncate(raw, region_len(RING) as libc::off_t), 0);
                if seals != 0 {
                    assert_eq!(libc::fcntl(raw, libc::F_ADD_SEALS, seals), 0);
                }
                OwnedFd::from_raw_fd(raw)
            };
            let e = Pipe::open(&fd).err().expect("refused");
            assert!(e.contains("sealed"), "{e}");
        }
    }
}

/// A `loom` model of the ring and of the sleep handshake: the crate's own
/// [`Producer`], [`Consumer`], [`Sleeper`] and [`Waker`] over loom's
/// atomics and cells, every interleaving (and every value the memory model
/// allows) of a small configuration explored. The sleeper's side mirrors
/// `Bell::sleep` (announce, `SeqCst` fence, one more look, block until
/// woken: the control socket's wake-up byte, modelled by a mutex and a
/// condition variable).
///
/// Checked to bite: with the producer's seal store `Relaxed` instead of
/// `Release`, both tests fail (loom reports the consumer's read of a byte
/// being written); without the waker's `SeqCst` fence, the sleep test
/// fails with a deadlock (the lost wake-up).
///
/// `RUSTFLAGS="--cfg mlx5_loom" cargo test -p mlx5 --lib --release shm::model`
#[cfg(all(test, mlx5_loom))]
mod model {
    use super::*;
    use loom::cell::UnsafeCell;
    use loom::sync::atomic::AtomicU64 as LoomU64;
    use loom::sync::{Arc, Condvar, Mutex};

    impl Word for LoomU64 {
        fn load(&self, o: Ordering) -> u64 {
            LoomU64::load(self, o)
        }
        fn store(&self, v: u64, o: Ordering) {
            LoomU64::store(self, v, o)
        }
        fn fence(&self) {
            loom::sync::atomic::fence(Ordering::SeqCst);
        }
    }

    /// Ring bytes whose every access loom checks for races, and the
    /// records' header words as loom atomics beside them (in the real ring
    /// they overlay the bytes; an honest peer never writes a header's
    /// place with plain copies while the other side may read it).
    struct Cells(Vec<UnsafeCell<u8>>, Vec<LoomU64>);

    impl Bytes for Cells {
        type W = LoomU64;
        fn len(&self) -> usize {
            self.0.len()
        }
        fn put(&self, at: usize, src: &[u8]) {
            for (i, &b) in src.iter().enumerate() {
                // SAFETY: loom tracks the access; a race fails the model.
                self.0[at + i].with_mut(|p| unsafe { *p = b });
            }
        }
        fn get(&self, at: usize, dst: &mut [u8]) {
            for (i, d) in dst.iter_mut().enumerate() {
                // SAFETY: as above.
                *d = self.0[at + i].with(|p| unsafe { *p });
            }
        }
        fn word(&self, at: usize) -> &LoomU64 {
            &self.1[at / 8]
        }
    }

    struct Link {
        head: LoomU64,
        /// The consumer's sleep sequence.
        seq: LoomU64,
        ring: Cells,
        /// The consumer's wake-up (its control socket).
        bell: Mutex<bool>,
        rung: Condvar,
    }

    fn link(bytes: usize) -> Arc<Link> {
        Arc::new(Link {
            head: LoomU64::new(0),
            seq: LoomU64::new(0),
            ring: Cells(
                (0..bytes).map(|_| UnsafeCell::new(0)).collect(),
                (0..bytes / 8).map(|_| LoomU64::new(0)).collect(),
            ),
            bell: Mutex::new(false),
            rung: Condvar::new(),
        })
    }

    /// Five bytes through a 32-byte ring (one record at a time) in pushes
    /// of up to three: the ring wraps and pushes back; the consumer gets
    /// every byte once, in order, and never reads a byte being written.
    #[test]
    fn bytes_arrive_in_order_through_a_full_ring() {
        loom::model(|| {
            let l = link(32);
            let p = l.clone();
            let producer = loom::thread::spawn(move || {
                push_all(&mut Producer::default(), &p, &[1, 2, 3, 4, 5], 3);
            });
            assert_eq!(pop_all(&l, 5, 2), [1, 2, 3, 4, 5]);
            producer.join().unwrap();
        });
    }

    /// Pushes `data` in pushes of up to `chunk` bytes, yielding while the
    /// ring is full.
    fn push_all(prod: &mut Producer, l: &Link, data: &[u8], chunk: usize) {
        let mut sent = 0;
        while sent < data.len() {
            let end = (sent + chunk).min(data.len());
            let n = prod.push(&l.head, &l.ring, &data[sent..end]).unwrap();
            sent += n;
            if n == 0 {
                loom::thread::yield_now();
            }
        }
    }

    /// Pops `want` bytes in reads of up to `chunk`, yielding while none
    /// have arrived.
    fn pop_all(l: &Link, want: usize, chunk: usize) -> Vec<u8> {
        let mut cons = Consumer::default();
        let mut got = Vec::new();
        let mut b = vec![0u8; chunk];
        while got.len() < want {
            let n = cons.pop(&l.head, &l.ring, &mut b).unwrap();
            got.extend_from_slice(&b[..n]);
            if n == 0 {
                loom::thread::yield_now();
            }
        }
        got
    }

    /// Runs `produce` on a producer thread with a producer that rewinds 32
    /// bytes in, and `consume` on this thread; returns the producer's
    /// final tail (for [`model_with_rewinds`]).
    fn rewinding_pair(
        l: Arc<Link>,
        produce: impl FnOnce(&mut Producer, &Link) + Send + 'static,
        consume: impl FnOnce(&Link),
    ) -> u64 {
        let p = l.clone();
        let producer = loom::thread::spawn(move || {
            let mut prod = Producer::rewinding(32);
            produce(&mut prod, &p);
            prod.tail
        });
        consume(&l);
        producer.join().unwrap()
    }

    /// Runs `body` (a producer thread's work on a 64-byte ring whose
    /// producer rewinds 32 bytes in, returning its final tail, and a
    /// consumer's checks) under loom, and checks that some interleaving
    /// rewound: the records end at `plain_end` without a rewind (96 for
    /// three one-line records), later with one.
    fn model_with_rewinds(plain_end: u64, body: impl Fn(Arc<Link>) -> u64 + Send + Sync + 'static) {
        // Outside the model (a std atomic, not a loom one): Relaxed, read
        // once every interleaving has run.
        let rewound = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = rewound.clone();
        loom::model(move || {
            if body(link(64)) > plain_end {
                seen.store(true, Ordering::Relaxed);
            }
        });
        assert!(rewound.load(Ordering::Relaxed), "no interleaving rewound");
    }

    /// Five bytes through a 64-byte ring whose producer rewinds once it is
    /// 32 bytes in (the second record's place) and finds the consumer
    /// caught up: whether it rewinds or not depends on the interleaving;
    /// either way every byte arrives once, in order, and no byte is read
    /// while written.
    #[test]
    fn bytes_arrive_in_order_across_rewinds() {
        model_with_rewinds(96, |l| {
            rewinding_pair(
                l,
                |prod, p| push_all(prod, p, &[1, 2, 3, 4, 5], 2),
                |l| assert_eq!(pop_all(l, 5, 2), [1, 2, 3, 4, 5]),
            )
        });
    }

    /// As above with records staged in parts and then published (the
    /// link's way for frames that go straight into the ring): the rewind
    /// before a staged record keeps every byte in order.
    #[test]
    fn staged_records_arrive_in_order_across_rewinds() {
        model_with_rewinds(96, |l| {
            rewinding_pair(
                l,
                |prod, p| {
                    for rec in [[1u8, 2], [3, 4], [5, 6]] {
                        let parts = [Data::slice(&rec[..1]), Data::slice(&rec[1..])];
                        while !prod.stage(&p.head, &p.ring, &parts).unwrap() {
                            loom::thread::yield_now();
                        }
                        assert!(prod.publish(&p.ring));
                    }
                },
                |l| assert_eq!(pop_all(l, 6, 4), [1, 2, 3, 4, 5, 6]),
            )
        });
    }

    /// Records read in place (the link's way for large frames: `peek`,
    /// read at the ring offset it gives, `skip`), whole or a byte at a
    /// time after a `peek_bytes` look, across rewinds: every byte once, in
    /// order, never read while written.
    #[test]
    fn records_read_in_place_arrive_in_order_across_rewinds() {
        model_with_rewinds(96, |l| {
            rewinding_pair(
                l,
                |prod, p| push_all(prod, p, &[1, 2, 3, 4, 5], 2),
                |l| {
                    let mut cons = Consumer::default();
                    let mut got = Vec::new();
                    while got.len() < 5 {
                        if let Some(at) = cons.peek(&l.ring, 2).unwrap() {
                            let mut b = [0u8; 2];
                            l.ring.get(at, &mut b);
                            cons.skip(&l.head, 2);
                            got.extend_from_slice(&b);
                        } else if let Some([b]) = cons.peek_bytes::<_, 1>(&l.ring).unwrap() {
                            let at = cons
                                .peek(&l.ring, 1)
                                .unwrap()
                                .expect("the byte peek_bytes saw");
                            let mut x = [0u8];
                            l.ring.get(at, &mut x);
                            assert_eq!(x[0], b);
                            cons.skip(&l.head, 1);
                            got.push(b);
                        } else {
                            loom::thread::yield_now();
                        }
                    }
                    assert_eq!(got, [1, 2, 3, 4, 5]);
                },
            )
        });
    }

    /// A consumer that goes to sleep while the producer publishes is
    /// always woken (a lost wake-up would leave it blocked: loom reports
    /// the deadlock), and a producer signals at most once per sleep.
    #[test]
    fn a_sleeping_consumer_is_always_woken() {
        loom::model(|| {
            sleeping_consumer(link(32), Producer::default());
        });
    }

    /// As above, with a producer that rewinds 32 bytes into a 64-byte ring
    /// (the second record goes to the ring's start when the consumer,
    /// asleep or not, took the first).
    #[test]
    fn a_sleeping_consumer_is_woken_across_rewinds() {
        model_with_rewinds(64, |l| sleeping_consumer(l, Producer::rewinding(32)));
    }

    /// Two one-byte records from `prod` to a consumer that sleeps (the
    /// `Bell::sleep` handshake) whenever it finds nothing; returns the
    /// producer's final tail.
    fn sleeping_consumer(l: Arc<Link>, mut prod: Producer) -> u64 {
        let p = l.clone();
        let producer = loom::thread::spawn(move || {
            let mut waker = Waker::default();
            let mut signals = 0;
            for b in [7u8, 8] {
                while prod.push(&p.head, &p.ring, &[b]).unwrap() == 0 {
                    loom::thread::yield_now();
                }
                if waker.wants_signal(&p.seq) {
                    signals += 1;
                    *p.bell.lock().unwrap() = true;
                    p.rung.notify_one();
                }
            }
            (signals, prod.tail)
        });
        let mut cons = Consumer::default();
        let mut sleeper = Sleeper::default();
        let mut got = Vec::new();
        let mut sleeps = 0;
        while got.len() < 2 {
            let mut b = [0u8; 2];
            let n = cons.pop(&l.head, &l.ring, &mut b).unwrap();
            if n > 0 {
                got.extend_from_slice(&b[..n]);
                continue;
            }
            // Bell::sleep: announce, fence, one more look, block.
            sleeper.announce(&l.seq);
            l.seq.fence();
            let n = cons.pop(&l.head, &l.ring, &mut b).unwrap();
            if n == 0 {
                sleeps += 1;
                let mut rung = l.bell.lock().unwrap();
                while !*rung {
                    rung = l.rung.wait(rung).unwrap();
                }
                *rung = false;
            }
            got.extend_from_slice(&b[..n]);
            sleeper.awake(&l.seq);
        }
        let (signals, tail) = producer.join().unwrap();
        assert_eq!(got, [7, 8]);
        assert!(
            signals <= 2 && sleeps <= signals,
            "{sleeps} sleeps, {signals} signals"
        );
        tail
    }
}
