//! `ipc-peer attack NAME KIND`: a hostile client for the robustness tests.
//!
//! It attaches like any client, then tries to hurt the server and the other
//! clients through everything a client process can reach: a file of the
//! segment's name in `/dev/shm`, every descriptor it holds that names shared
//! memory (re-opened read-write through `/proc/self/fd`), the same memory
//! re-opened through `/proc/self/map_files` (possible for root), its own
//! shared mappings (made writable with `mprotect` where the kernel lets it),
//! and the two memfds of a second attach that keeps them as the server sent
//! them (a hostile client need not close them as `Client` does; that
//! attach stays open during the attack, so its region is one the server
//! maps). It never writes its own regions: that is the scribbler's job.
//!
//! | KIND       | what it tries                                                        |
//! |------------|----------------------------------------------------------------------|
//! | `truncate` | `ftruncate(0)` every reachable file, the kept memfds included        |
//! | `header`   | write the shutdown value into the header's state word (offset 128)   |
//! | `squat`    | mark every other client slot as attached by pid 1 (offsets 512 + k × region) |
//! | `others`   | fill every byte outside its own region and the header with garbage   |
//!
//! The offsets are those of the shared-file layout this crate once had, where
//! a client mapped the whole segment; they are kept so the attacks stay
//! meaningful against any layout that exposes such a file. It prints
//! `attacked KIND: L landed, T tried` (a write or truncation that the kernel
//! accepted counts as landed), followed by what the kernel answered the
//! others, as ` (ERRNO N, ...)` when there were any; then the outcome of one
//! more call of its own (`after: ok` or `after: <error>`), then `holding`,
//! and stays attached until its stdin closes. The kept attach is closed
//! before `after`, so it holds one slot only while attacking.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::ops::Range;
use std::os::fd::OwnedFd;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::os::unix::net::UnixStream;

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
    /// The kept attach's region: its own too, so only truncated.
    kept_region: Option<(String, File)>,
}

impl Reach {
    pub fn gather(name: &str, own_base: *mut u8, own_len: usize, kept: &Kept) -> Self {
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
                // The kept memfds are added below, as what they are.
                let fd = e.file_name().to_string_lossy().parse().unwrap_or(-1);
                if kept.fds().contains(&fd) {
                    continue;
                }
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
        let dup = |f: &File| f.try_clone().expect("dup a kept descriptor");
        files.push(("kept header memfd".to_owned(), dup(&kept.header)));
        Self {
            files,
            kept_region: Some(("kept region memfd".to_owned(), dup(&kept.region))),
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

    /// Runs one attack and says what came of each try.
    pub fn attack(&self, kind: &str) -> Result<Tally, String> {
        let mut tally = Tally::default();
        let mut count = |r: io::Result<()>| tally.count(r);
        let region = (self.own.end - self.own.start) as u64;
        match kind {
            "truncate" => {
                for (_, f) in self.files.iter().chain(&self.kept_region) {
                    count(f.set_len(0));
                }
            }
            "header" => {
                let word = STATE_CLOSED.to_le_bytes();
                for (_, f) in &self.files {
                    let at = STATE_OFFSET..STATE_OFFSET + 4;
                    if !self.in_own_file(f, at.clone()) {
                        count(f.write_all_at(&word, at.start));
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
                            count(f.write_all_at(&word, at));
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
                        count(f.write_all_at(&garbage[..(end - at) as usize], at));
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
        Ok(tally)
    }

    /// Names of the handles found, for the report.
    pub fn describe(&self) -> String {
        let files: Vec<&str> = self
            .files
            .iter()
            .chain(&self.kept_region)
            .map(|(n, _)| n.as_str())
            .collect();
        let maps: Vec<String> = self
            .maps
            .iter()
            .map(|m| format!("{:x}-{:x} {}", m.start, m.end, m.path))
            .collect();
        format!("files {files:?}, other mappings {maps:?}")
    }
}

/// What the tries of one attack came to.
#[derive(Default)]
pub struct Tally {
    landed: usize,
    tried: usize,
    /// How many tries the kernel refused, by error.
    refused: BTreeMap<String, usize>,
}

impl Tally {
    fn count(&mut self, r: io::Result<()>) {
        self.tried += 1;
        match r {
            Ok(()) => self.landed += 1,
            Err(e) => *self.refused.entry(errno_name(&e)).or_default() += 1,
        }
    }
}

/// `L landed, T tried` and, if the kernel refused any, ` (EPERM 2, ...)`.
impl fmt::Display for Tally {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} landed, {} tried", self.landed, self.tried)?;
        let mut sep = " (";
        for (errno, n) in &self.refused {
            write!(f, "{sep}{errno} {n}")?;
            sep = ", ";
        }
        if !self.refused.is_empty() {
            f.write_str(")")?;
        }
        Ok(())
    }
}

/// The symbolic name of the errno behind `e`.
fn errno_name(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(libc::EPERM) => "EPERM".into(),
        Some(libc::EACCES) => "EACCES".into(),
        Some(libc::EBADF) => "EBADF".into(),
        Some(libc::EINVAL) => "EINVAL".into(),
        Some(libc::EFBIG) => "EFBIG".into(),
        Some(libc::ENOSPC) => "ENOSPC".into(),
        Some(n) => format!("errno{n}"),
        None => format!("{:?}", e.kind()),
    }
}

/// Makes `m` writable and writes `bytes` at `at` into it. An error when the
/// kernel refuses write access (a read-only or sealed mapping).
fn write_mapping(m: &Mapping, at: usize, bytes: &[u8]) -> io::Result<()> {
    let len = m.end - m.start;
    if at + bytes.len() > len {
        return Err(io::ErrorKind::InvalidInput.into());
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
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the range lies inside the mapping, which is now writable. Other
    // processes may read these bytes concurrently: that is the attack.
    unsafe {
        std::ptr::copy_nonoverlapping(bytes.as_ptr(), (m.start + at) as *mut u8, bytes.len());
    }
    Ok(())
}

/// Blocks until stdin reaches end of file (the test closes it or dies).
pub fn hold() {
    let mut sink = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut sink);
}

/// A valid hello, as `wire::Hello` encodes it: magic "CPRCIPC2", protocol
/// version 2, no flags. Should the protocol change, the server refuses it
/// and [`Kept::attach`] fails: the attack stops rather than try less.
const HELLO: [u8; 16] = *b"CPRCIPC2\x02\0\0\0\0\0\0\0";
/// Length of a welcome's fixed part; where its status and its type text's
/// length lie in it.
const WELCOME_LEN: usize = 80;
const WELCOME_STATUS: usize = 12;
const WELCOME_TEXT_LEN: usize = 72;

/// A second attach, made byte by byte, that keeps the header and region
/// memfds the server sent.
pub struct Kept {
    /// Open while the attack runs, so the server maps `region` meanwhile.
    _conn: UnixStream,
    header: File,
    region: File,
}

impl Kept {
    pub fn attach(name: &str) -> Result<Self, String> {
        use std::io::Write;
        // SAFETY: geteuid cannot fail.
        let address = format!("ipc.{}.{name}", unsafe { libc::geteuid() });
        let conn = connect_abstract(&address, std::time::Duration::from_secs(10))?;
        (&conn)
            .write_all(&HELLO)
            .map_err(|e| format!("send hello: {e}"))?;
        let mut got = Vec::new();
        let mut fds = Vec::new();
        let mut want = WELCOME_LEN;
        while got.len() < want {
            let mut buf = [0u8; 4096];
            let n = crate::rawsock::recv_with_fds(&conn, &mut buf[..want - got.len()], &mut fds)
                .map_err(|e| format!("receive the welcome: {e}"))?;
            if n == 0 {
                return Err(format!("the server closed after {} bytes", got.len()));
            }
            got.extend_from_slice(&buf[..n]);
            if got.len() == WELCOME_LEN {
                let text = u32::from_le_bytes(got[WELCOME_TEXT_LEN..][..4].try_into().unwrap());
                want += text as usize;
            }
        }
        let status = u32::from_le_bytes(got[WELCOME_STATUS..][..4].try_into().unwrap());
        let [header, region] = <[OwnedFd; 2]>::try_from(fds).map_err(|fds| {
            format!(
                "the kept attach got status {status} and {} descriptors",
                fds.len()
            )
        })?;
        Ok(Self {
            _conn: conn,
            header: header.into(),
            region: region.into(),
        })
    }

    fn fds(&self) -> [i32; 2] {
        use std::os::fd::AsRawFd;
        [self.header.as_raw_fd(), self.region.as_raw_fd()]
    }
}

fn connect_abstract(address: &str, timeout: std::time::Duration) -> Result<UnixStream, String> {
    use std::os::linux::net::SocketAddrExt;
    use std::os::unix::net::SocketAddr;
    let addr = SocketAddr::from_abstract_name(address).map_err(|e| e.to_string())?;
    let s = UnixStream::connect_addr(&addr).map_err(|e| format!("connect: {e}"))?;
    s.set_read_timeout(Some(timeout))
        .map_err(|e| e.to_string())?;
    Ok(s)
}

/// `ipc-peer probe ADDRESS HEX`: connects to the abstract unix socket
/// ADDRESS, sends the bytes HEX, and reports what comes back until the
/// other end closes or is quiet for a second: `status S, N descriptors, M
/// bytes` (S is the little-endian u32 at offset 12, a welcome's status).
pub fn probe(address: &str, hex: &str) -> Result<(), String> {
    use std::io::Write;

    let bytes = (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2).unwrap_or("zz"), 16))
        .collect::<Result<Vec<u8>, _>>()
        .map_err(|_| format!("not hex: {hex:?}"))?;
    let mut s = connect_abstract(address, std::time::Duration::from_secs(1))?;
    s.write_all(&bytes).map_err(|e| format!("send: {e}"))?;
    let mut got = Vec::new();
    let mut fds: Vec<OwnedFd> = Vec::new();
    loop {
        let mut buf = [0u8; 4096];
        match crate::rawsock::recv_with_fds(&s, &mut buf, &mut fds) {
            Ok(n) if n > 0 => got.extend_from_slice(&buf[..n]),
            _ => break,
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
