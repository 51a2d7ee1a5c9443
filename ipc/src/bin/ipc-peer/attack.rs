//! `ipc-peer attack NAME KIND`: a hostile client for the robustness tests.
//!
//! It attaches like any client, then tries to hurt the server and the other
//! clients through everything a client process can reach: a file of the
//! segment's name in `/dev/shm`, every descriptor it holds that names shared
//! memory (re-opened read-write through `/proc/self/fd`), the same memory
//! re-opened through `/proc/self/map_files` (possible for root), and its own
//! shared mappings (made writable with `mprotect` where the kernel lets it).
//! It never writes its own region: that is the scribbler's job.
//!
//! | KIND       | what it tries                                                        |
//! |------------|----------------------------------------------------------------------|
//! | `truncate` | `ftruncate(0)` every reachable file                                  |
//! | `header`   | write the shutdown value into the header's state word (offset 128)   |
//! | `squat`    | mark every other client slot as attached by pid 1 (offsets 512 + k × region) |
//! | `others`   | fill every byte outside its own region and the header with garbage   |
//!
//! The offsets are those of the shared-file layout this crate once had, where
//! a client mapped the whole segment; they are kept so the attacks stay
//! meaningful against any layout that exposes such a file. It prints
//! `attacked KIND: L landed, T tried` (a write or truncation that the kernel
//! accepted counts as landed), then the outcome of one more call of its own
//! (`after: ok` or `after: <error>`), then `holding`, and stays attached until
//! its stdin closes.

use std::fs::{File, OpenOptions};
use std::io::Read;
use std::ops::Range;
use std::os::unix::fs::{FileExt, MetadataExt};

/// State word offset and closed value in the old shared-file header.
const STATE_OFFSET: u64 = 128;
const STATE_CLOSED: u32 = 2;
/// Size of the old shared-file header, where client regions began.
const OLD_HEADER: u64 = 512;
/// An owner word saying "attached by pid 1", as the old layout encoded it.
const SQUAT_WORD: u64 = (1 << 32) | 2;

/// One shared mapping of this process, from `/proc/self/maps`.
struct Mapping {
    start: usize,
    end: usize,
    offset: u64,
    inode: u64,
    path: String,
}

fn shared_memory_path(path: &str) -> bool {
    path.starts_with("/memfd:") || path.starts_with("/dev/shm/")
}

fn mappings() -> Vec<Mapping> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut it = line.split_whitespace();
            let range = it.next()?;
            let _perms = it.next()?;
            let offset = u64::from_str_radix(it.next()?, 16).ok()?;
            let _dev = it.next()?;
            let inode = it.next()?.parse().ok()?;
            let path = it.collect::<Vec<_>>().join(" ");
            let (s, e) = range.split_once('-')?;
            Some(Mapping {
                start: usize::from_str_radix(s, 16).ok()?,
                end: usize::from_str_radix(e, 16).ok()?,
                offset,
                inode,
                path,
            })
        })
        .filter(|m| shared_memory_path(&m.path))
        .collect()
}

/// Everything shared this process can reach, and where its own region is.
pub struct Reach {
    files: Vec<(String, File)>,
    maps: Vec<Mapping>,
    own: Range<usize>,
    /// Inode and file byte range of the own region.
    own_file: Option<(u64, Range<u64>)>,
}

impl Reach {
    pub fn gather(name: &str, own_base: *mut u8, own_len: usize) -> Self {
        let own = own_base as usize..own_base as usize + own_len;
        let maps = mappings();
        let own_file = maps
            .iter()
            .find(|m| m.start <= own.start && own.start < m.end)
            .map(|m| {
                let off = m.offset + (own.start - m.start) as u64;
                (m.inode, off..off + own_len as u64)
            });
        let rw = |p: &str| OpenOptions::new().read(true).write(true).open(p);
        let mut files = Vec::new();
        let by_name = format!("/dev/shm/{name}");
        if let Ok(f) = rw(&by_name) {
            files.push((by_name, f));
        }
        if let Ok(dir) = std::fs::read_dir("/proc/self/fd") {
            for e in dir.flatten() {
                let Ok(target) = std::fs::read_link(e.path()) else {
                    continue;
                };
                let target = target.to_string_lossy().into_owned();
                if shared_memory_path(&target)
                    && let Ok(f) = rw(&e.path().to_string_lossy())
                {
                    files.push((format!("fd {} ({target})", e.file_name().display()), f));
                }
            }
        }
        for m in &maps {
            let p = format!("/proc/self/map_files/{:x}-{:x}", m.start, m.end);
            if let Ok(f) = rw(&p) {
                files.push((format!("{p} ({})", m.path), f));
            }
        }
        Self {
            files,
            maps: maps
                .into_iter()
                .filter(|m| m.end <= own.start || m.start >= own.end)
                .collect(),
            own,
            own_file,
        }
    }

    fn in_own_file(&self, f: &File, range: Range<u64>) -> bool {
        let Some((inode, own)) = &self.own_file else {
            return false;
        };
        f.metadata().is_ok_and(|md| md.ino() == *inode)
            && range.start < own.end
            && own.start < range.end
    }

    /// Runs one attack; returns (landed, tried).
    pub fn attack(&self, kind: &str) -> Result<(usize, usize), String> {
        let mut landed = 0;
        let mut tried = 0;
        let mut count = |ok: bool| {
            tried += 1;
            landed += usize::from(ok);
        };
        let region = (self.own.end - self.own.start) as u64;
        match kind {
            "truncate" => {
                for (_, f) in &self.files {
                    count(f.set_len(0).is_ok());
                }
            }
            "header" => {
                let word = STATE_CLOSED.to_le_bytes();
                for (_, f) in &self.files {
                    let at = STATE_OFFSET..STATE_OFFSET + 4;
                    if !self.in_own_file(f, at.clone()) {
                        count(f.write_all_at(&word, at.start).is_ok());
                    }
                }
                for m in &self.maps {
                    count(write_mapping(m, STATE_OFFSET as usize, &word));
                }
            }
            "squat" => {
                let word = SQUAT_WORD.to_le_bytes();
                for (_, f) in &self.files {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let mut at = OLD_HEADER;
                    while at + 8 <= len {
                        if !self.in_own_file(f, at..at + 8) {
                            count(f.write_all_at(&word, at).is_ok());
                        }
                        at += region;
                    }
                }
                for m in &self.maps {
                    let mut at = OLD_HEADER as usize;
                    while at + 8 <= m.end - m.start {
                        count(write_mapping(m, at, &word));
                        at += region as usize;
                    }
                }
            }
            "others" => {
                let garbage = vec![0xa5u8; 4096];
                for (_, f) in &self.files {
                    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
                    let mut at = OLD_HEADER;
                    while at < len {
                        let n = (len - at).min(garbage.len() as u64);
                        let mut end = at + n;
                        if let Some((_, own)) = &self.own_file
                            && self.in_own_file(f, at..end)
                        {
                            // Skip over the own region, write up to it.
                            if at >= own.start {
                                at = own.end;
                                continue;
                            }
                            end = own.start;
                        }
                        count(f.write_all_at(&garbage[..(end - at) as usize], at).is_ok());
                        at = end;
                    }
                }
                for m in &self.maps {
                    let len = m.end - m.start;
                    if len > OLD_HEADER as usize {
                        let garbage = vec![0xa5u8; len - OLD_HEADER as usize];
                        count(write_mapping(m, OLD_HEADER as usize, &garbage));
                    }
                }
            }
            other => return Err(format!("unknown attack {other:?}")),
        }
        Ok((landed, tried))
    }

    /// Names of the handles found, for the report.
    pub fn describe(&self) -> String {
        let files: Vec<&str> = self.files.iter().map(|(n, _)| n.as_str()).collect();
        let maps: Vec<String> = self
            .maps
            .iter()
            .map(|m| format!("{:x}-{:x} {}", m.start, m.end, m.path))
            .collect();
        format!("files {files:?}, other mappings {maps:?}")
    }
}

/// Makes `m` writable and writes `bytes` at `at` into it. False when the
/// kernel refuses write access (a read-only or sealed mapping).
fn write_mapping(m: &Mapping, at: usize, bytes: &[u8]) -> bool {
    let len = m.end - m.start;
    if at + bytes.len() > len {
        return false;
    }
    // SAFETY: `m` is a mapping of this process (from /proc/self/maps);
    // changing its protection affects only this process's view of shared
    // memory, which is what a hostile client would do.
    let r = unsafe {
        libc::mprotect(
            m.start as *mut libc::c_void,
            len,
            libc::PROT_READ | libc::PROT_WRITE,
        )
    };
    if r != 0 {
        return false;
    }
    // SAFETY: the range lies inside the mapping, which is now writable. Other
    // processes may read these bytes concurrently: that is the attack.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (m.start + at) as *mut u8, bytes.len());
    }
    true
}

/// Blocks until stdin reaches end of file (the test closes it or dies).
pub fn hold() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// `ipc-peer probe ADDRESS HEX`: connects to the abstract unix socket
/// ADDRESS, sends the bytes HEX, and reports what comes back until the
/// other end closes or is quiet for a second: `status S, N descriptors, M
/// bytes` (S is the little-endian u32 at offset 12, a welcome's status).
pub fn probe(address: &str, hex: &str) -> Result<(), String> {
    use std::io::Write;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::{SocketAddr, UnixStream};

    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("not hex: {hex:?}"))?;
    let addr = SocketAddr::from_abstract_name(address).map_err(|e| e.to_string())?;
    let mut s = UnixStream::connect_addr(&addr).map_err(|e| format!("connect: {e}"))?;
    s.write_all(&bytes).map_err(|e| format!("send: {e}"))?;
    s.set_read_timeout(Some(std::time::Duration::from_secs(1)))
        .map_err(|e| e.to_string())?;
    let mut got = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        let mut cbuf = [0u64; 8];
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: all-zero is a valid msghdr.
        let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&cbuf);
        // SAFETY: `msg` points to live buffers for the duration of the call.
        let n = unsafe { libc::recvmsg(s.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) };
        if n <= 0 {
            break;
        }
        got.extend_from_slice(&buf[..n as usize]);
        // SAFETY: the kernel filled msg_control with well-formed cmsgs; the
        // CMSG_* walk stays inside them, and each descriptor it installed is
        // ours to own.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_type == libc::SCM_RIGHTS {
                    let data = libc::CMSG_DATA(c).cast::<i32>();
                    let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / 4;
                    for i in 0..count {
                        fds.push(OwnedFd::from_raw_fd(data.add(i).read_unaligned()));
                    }
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
    }
    let status = got
        .get(12..16)
        .map(|b| u32::from_le_bytes(b.try_into().unwrap()).to_string())
        .unwrap_or_else(|| "none".into());
    println!(
        "status {status}, {} descriptors, {} bytes",
        fds.len(),
        got.len()
    );
    Ok(())
}
