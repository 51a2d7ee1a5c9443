//! The segment file: naming, exclusive creation with stale-segment
//! replacement, mapping, and typed access to the header and client regions.
//!
//! A live server holds an exclusive `flock` on its segment file for its whole
//! life. The kernel drops that lock when the process dies, however it dies,
//! so "can I take the lock?" tells a stale segment from a live one without
//! trusting pids that may have been reused.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::Ordering;

use memmap2::{MmapOptions, MmapRaw};

use crate::Error;
use std::mem::{align_of, size_of};

use crate::layout::{CTL_SIZE, ClientCtl, HEADER_SIZE, Header, Layout, MAGIC, VERSION};
use crate::message::{Message, fingerprint};
use crate::ring::{RingRef, Slot};
use crate::sys;

const SHM_DIR: &str = "/dev/shm";
const MAX_NAME: usize = 200;

/// Checks that `name` is a plain file name: 1 to 200 of `[A-Za-z0-9._-]`,
/// not starting with a dot.
pub(crate) fn validate_name(name: &str) -> Result<PathBuf, Error> {
    let bad = |reason| Error::InvalidName {
        name: name.to_owned(),
        reason,
    };
    if name.is_empty() {
        return Err(bad("empty"));
    }
    if name.len() > MAX_NAME {
        return Err(bad("longer than 200 bytes"));
    }
    if name.starts_with('.') {
        return Err(bad("starts with '.'"));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
    {
        return Err(bad(
            "only ASCII letters, digits, '.', '_' and '-' are allowed",
        ));
    }
    Ok(Path::new(SHM_DIR).join(name))
}

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> Error + 'a {
    move |source| Error::Io {
        op,
        path: path.to_owned(),
        source,
    }
}

/// A mapped segment.
pub(crate) struct Segment {
    file: File,
    map: MmapRaw,
    pub(crate) layout: Layout,
    pub(crate) path: PathBuf,
}

impl Segment {
    /// Creates the segment for a server: a private temporary file is sized,
    /// initialized by `init` and locked, then linked under its name. An
    /// existing file of that name is replaced only if no live server holds it.
    pub(crate) fn create(
        name: &str,
        layout: Layout,
        init: impl FnOnce(&Header),
    ) -> Result<Self, Error> {
        let path = validate_name(name)?;
        let tmp = Path::new(SHM_DIR).join(format!(
            ".{name}.{}.{}.tmp",
            sys::current_pid(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos())
                .unwrap_or(0)
        ));
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(io_err("create", &tmp))?;
        let result = Self::init_and_link(file, &tmp, &path, name, layout, init);
        // Whatever happened, the temporary name must not stay behind.
        let _ = std::fs::remove_file(&tmp);
        result
    }

    fn init_and_link(
        file: File,
        tmp: &Path,
        path: &Path,
        name: &str,
        layout: Layout,
        init: impl FnOnce(&Header),
    ) -> Result<Self, Error> {
        if !sys::try_lock_exclusive(&file).map_err(io_err("flock", tmp))? {
            return Err(Error::Io {
                op: "flock",
                path: tmp.to_owned(),
                source: io::Error::from_raw_os_error(libc::EWOULDBLOCK),
            });
        }
        file.set_len(layout.total as u64)
            .map_err(io_err("ftruncate", tmp))?;
        let map = MmapOptions::new()
            .len(layout.total)
            .map_raw(&file)
            .map_err(io_err("mmap", tmp))?;
        let seg = Self {
            file,
            map,
            layout,
            path: path.to_owned(),
        };
        init(seg.header());

        for _ in 0..8 {
            match std::fs::hard_link(tmp, path) {
                Ok(()) => return Ok(seg),
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                    Self::remove_if_stale(path, name)?;
                }
                Err(e) => return Err(io_err("link", path)(e)),
            }
        }
        Err(Error::AlreadyRunning {
            name: name.to_owned(),
        })
    }

    /// Removes the segment at `path` if it is ours and no live server holds
    /// it. Errors if it is live or not a segment at all.
    fn remove_if_stale(path: &Path, name: &str) -> Result<(), Error> {
        let existing = match OpenOptions::new().read(true).write(true).open(path) {
            Ok(f) => f,
            // Removed by someone else meanwhile: just retry the link.
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(io_err("open", path)(e)),
        };
        let len = existing.metadata().map_err(io_err("fstat", path))?.len();
        let mut magic = [0u8; 8];
        let is_segment = len >= HEADER_SIZE as u64 && {
            use std::os::unix::fs::FileExt;
            existing.read_exact_at(&mut magic, 0).is_ok() && u64::from_le_bytes(magic) == MAGIC
        };
        if !is_segment {
            return Err(Error::NotASegment {
                path: path.to_owned(),
            });
        }
        if !sys::try_lock_exclusive(&existing).map_err(io_err("flock", path))? {
            return Err(Error::AlreadyRunning {
                name: name.to_owned(),
            });
        }
        // We hold the dead server's lock, so no other starter can be
        // deciding about this same file right now.
        match std::fs::remove_file(path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("unlink", path)(e)),
        }
    }

    /// Maps an existing segment for a client. The caller validates the
    /// header with [`Segment::validate`] before touching anything else.
    pub(crate) fn open(name: &str) -> Result<Self, Error> {
        let path = validate_name(name)?;
        let file = match OpenOptions::new().read(true).write(true).open(&path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(Error::NotFound {
                    name: name.to_owned(),
                    path,
                });
            }
            Err(e) => return Err(io_err("open", &path)(e)),
        };
        let len = file.metadata().map_err(io_err("fstat", &path))?.len();
        if len < HEADER_SIZE as u64 {
            return Err(Error::Malformed {
                name: name.to_owned(),
                reason: format!("file is {len} bytes, smaller than the {HEADER_SIZE}-byte header"),
            });
        }
        let map = MmapOptions::new()
            .len(len as usize)
            .map_raw(&file)
            .map_err(io_err("mmap", &path))?;
        // Geometry is filled in by `validate`; until then only the header
        // may be read.
        let layout = Layout {
            max_clients: 0,
            depth: 1,
            req_slot: 0,
            resp_slot: 0,
            client_region: 0,
            total: len as usize,
        };
        Ok(Self {
            file,
            map,
            layout,
            path,
        })
    }

    /// Whether a live server holds this segment (its exclusive `flock`).
    /// Unlike the recorded pid, this cannot be fooled by pid reuse.
    pub(crate) fn server_alive(&self) -> Result<bool, Error> {
        sys::exclusively_locked(&self.file).map_err(io_err("flock", &self.path))
    }

    /// Whether the file now at our path is still the one we mapped.
    pub(crate) fn path_is_ours(&self) -> bool {
        let (Ok(mine), Ok(there)) = (self.file.metadata(), std::fs::metadata(&self.path)) else {
            return false;
        };
        mine.dev() == there.dev() && mine.ino() == there.ino()
    }

    pub(crate) fn header(&self) -> &Header {
        // SAFETY: the mapping is at least HEADER_SIZE bytes (checked at
        // create/open), page-aligned, and lives as long as `self`. Header
        // is made only of atomics, so shared mutation by other processes is
        // fine and any bit pattern is valid.
        unsafe { &*self.map.as_ptr().cast::<Header>() }
    }

    /// Control block of client slot `client` (< max_clients, checked by the
    /// layout invariant: `validate` made `layout.total` ≤ the mapping).
    pub(crate) fn ctl(&self, client: u32) -> &ClientCtl {
        assert!(client < self.layout.max_clients);
        // SAFETY: offset + CTL_SIZE ≤ layout.total ≤ mapping length, the
        // offset is a multiple of 128, and ClientCtl is all atomics.
        unsafe {
            &*self
                .map
                .as_ptr()
                .add(self.layout.ctl_offset(client))
                .cast::<ClientCtl>()
        }
    }

    fn ring<T>(&self, offset: usize) -> RingRef<T> {
        // SAFETY: the ring lies within the client's region, which lies
        // within the mapping; slots are zero-initialized by ftruncate or
        // reset by the server, and all-zero is a valid Slot (atomics and a
        // FromBytes payload). The mapping outlives every user of the ring:
        // rings are only held by the Server/Client that owns this Segment.
        unsafe {
            let p = self.map.as_mut_ptr().add(offset).cast::<Slot<T>>();
            RingRef::new(NonNull::new_unchecked(p), self.layout.depth)
        }
    }

    pub(crate) fn req_ring<T>(&self, client: u32) -> RingRef<T> {
        assert!(client < self.layout.max_clients);
        self.ring(self.layout.req_offset(client))
    }

    pub(crate) fn resp_ring<T>(&self, client: u32) -> RingRef<T> {
        assert!(client < self.layout.max_clients);
        self.ring(self.layout.resp_offset(client))
    }

    /// Resets both rings of a client slot (server, when reclaiming it).
    pub(crate) fn reset_rings(&self, client: u32) {
        let l = self.layout;
        for (off, stride) in [
            (l.req_offset(client), l.req_slot),
            (l.resp_offset(client), l.resp_slot),
        ] {
            for i in 0..l.depth as usize {
                // SAFETY: as in `ring`: in bounds, aligned, valid for any bits.
                let slot = unsafe { &*self.map.as_ptr().add(off + i * stride).cast::<Slot<u8>>() };
                slot.reset();
            }
        }
    }

    /// Checks a mapped segment against this process's build and message
    /// types, and adopts its geometry. Nothing beyond the header is touched
    /// before this succeeds.
    pub(crate) fn validate<Req: Message, Resp: Message>(
        &mut self,
        name: &str,
    ) -> Result<(), Error> {
        let g = &self.header().geo.0;
        let mismatch = |what, found: u64, expected: u64| Error::Mismatch {
            name: name.to_owned(),
            what,
            found,
            expected,
        };
        // Acquire: pairs with the creator's Release store of the magic, which
        // it makes after writing every other geometry word.
        let magic = g.magic.load(Ordering::Acquire);
        if magic != MAGIC {
            return Err(mismatch("magic", magic, MAGIC));
        }
        // Relaxed: geometry is written once before the magic acquired above.
        let r = |w: &std::sync::atomic::AtomicU32| u64::from(w.load(Ordering::Relaxed));
        let checks: [(&'static str, u64, u64); 10] = [
            ("layout version", r(&g.version), u64::from(VERSION)),
            ("header size", r(&g.header_size), HEADER_SIZE as u64),
            ("client control block size", r(&g.ctl_size), CTL_SIZE as u64),
            ("request size", r(&g.req_size), size_of::<Req>() as u64),
            (
                "request alignment",
                r(&g.req_align),
                align_of::<Req>() as u64,
            ),
            ("response size", r(&g.resp_size), size_of::<Resp>() as u64),
            (
                "response alignment",
                r(&g.resp_align),
                align_of::<Resp>() as u64,
            ),
            (
                "request type fingerprint",
                g.req_fingerprint.load(Ordering::Relaxed),
                fingerprint::<Req>(),
            ),
            (
                "response type fingerprint",
                g.resp_fingerprint.load(Ordering::Relaxed),
                fingerprint::<Resp>(),
            ),
            (
                "request slot size",
                r(&g.req_slot),
                size_of::<Slot<Req>>() as u64,
            ),
        ];
        for (what, found, expected) in checks {
            if found != expected {
                return Err(mismatch(what, found, expected));
            }
        }
        let malformed = |reason: String| Error::Malformed {
            name: name.to_owned(),
            reason,
        };
        let layout = Layout::new::<Req, Resp>(
            g.max_clients.load(Ordering::Relaxed),
            g.ring_depth.load(Ordering::Relaxed),
        )
        .map_err(|e| malformed(e.to_string()))?;
        let recorded = (
            g.resp_slot.load(Ordering::Relaxed) as usize,
            g.client_region.load(Ordering::Relaxed),
            g.total_size.load(Ordering::Relaxed),
        );
        if recorded
            != (
                layout.resp_slot,
                layout.client_region as u64,
                layout.total as u64,
            )
        {
            return Err(malformed(format!(
                "recorded geometry {recorded:?} differs from the computed one"
            )));
        }
        if layout.total != self.layout.total {
            return Err(malformed(format!(
                "file is {} bytes, its header describes {}",
                self.layout.total, layout.total
            )));
        }
        self.layout = layout;
        Ok(())
    }
}
