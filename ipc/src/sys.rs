//! Thin wrappers over the Linux system calls the crate needs: sealed memfds,
//! unix sockets in the abstract namespace with descriptor passing, epoll,
//! futex waits on shared words, and a cheap clock. Everything `unsafe` about
//! the OS lives here; every descriptor is created close-on-exec, so a child
//! process never holds a client's or the server's end of anything.

use std::io;
use std::mem::{size_of, size_of_val, zeroed};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::AtomicU32;
use std::time::Duration;

fn check(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Takes ownership of a descriptor the kernel just returned.
fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: the kernel just returned this descriptor to us; nobody else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

// ---------------------------------------------------------------- futexes

/// Blocks while `*word == expected`, for at most `timeout`. Shared (not
/// `FUTEX_PRIVATE`) because the word lives in memory mapped by several
/// processes. Spurious returns are possible; callers re-check their condition.
pub(crate) fn futex_wait(word: &AtomicU32, expected: u32, timeout: Duration) {
    let ts = libc::timespec {
        tv_sec: timeout.as_secs().min(i64::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(timeout.subsec_nanos() as i32),
    };
    // SAFETY: `word` is a valid, aligned u32 for the duration of the call
    // and `ts` outlives it. The kernel only reads both.
    unsafe {
        libc::syscall(
            libc::SYS_futex,
            word.as_ptr(),
            libc::FUTEX_WAIT,
            expected,
            &ts as *const libc::timespec,
        );
    }
}

/// Wakes every waiter blocked on `word`.
pub(crate) fn futex_wake_all(word: &AtomicU32) {
    // SAFETY: `word` is a valid, aligned u32; FUTEX_WAKE does not touch it.
    unsafe {
        libc::syscall(libc::SYS_futex, word.as_ptr(), libc::FUTEX_WAKE, i32::MAX);
    }
}

// ------------------------------------------------------------------ clock

/// Nanoseconds of `CLOCK_MONOTONIC_COARSE`: a few nanoseconds to read (the
/// precise clock costs ~60 ns on the development VM), with a resolution of
/// one scheduler tick (1 to 4 ms). Used to gate periodic checks on hot
/// paths, never to measure.
#[inline]
pub(crate) fn coarse_now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid out-pointer; the coarse monotonic clock
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// The resolution of [`coarse_now_ns`] (one scheduler tick), read once. A
/// deadline measured on the coarse clock adds it, so it never expires early.
pub(crate) fn coarse_resolution_ns() -> u64 {
    static RES: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *RES.get_or_init(|| {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is a valid out-pointer.
        let r = unsafe { libc::clock_getres(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
        if r == 0 {
            ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
        } else {
            // The coarsest tick Linux has (HZ = 100).
            10_000_000
        }
    })
}

// ----------------------------------------------------------------- memfds

/// A new anonymous memory file of `len` bytes, zero-filled, that accepts
/// seals. `name` shows in `/proc/PID/maps` (as `/memfd:NAME`).
pub(crate) fn memfd(name: &str, len: u64) -> io::Result<OwnedFd> {
    let cname = std::ffi::CString::new(name).map_err(|_| io::ErrorKind::InvalidInput)?;
    // SAFETY: `cname` is a valid NUL-terminated string for the call.
    let fd = owned(unsafe {
        libc::memfd_create(cname.as_ptr(), libc::MFD_CLOEXEC | libc::MFD_ALLOW_SEALING)
    })?;
    // SAFETY: ftruncate on a descriptor we own.
    check(unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) })?;
    Ok(fd)
}

/// The memfd may never change size again, and its seals are final.
pub(crate) const SEALS_FIXED_SIZE: libc::c_int =
    libc::F_SEAL_SHRINK | libc::F_SEAL_GROW | libc::F_SEAL_SEAL;
/// As [`SEALS_FIXED_SIZE`], and no new writable mapping or `write` either:
/// mappings made before the seal (the server's) stay writable.
pub(crate) const SEALS_READ_ONLY: libc::c_int = SEALS_FIXED_SIZE | libc::F_SEAL_FUTURE_WRITE;

/// Adds `seals` to a memfd.
pub(crate) fn add_seals(fd: &OwnedFd, seals: libc::c_int) -> io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_ADD_SEALS, seals) }).map(drop)
}

/// The seals of a file (an error for a file that cannot carry seals).
pub(crate) fn seals(fd: &OwnedFd) -> io::Result<libc::c_int> {
    // SAFETY: fcntl on a descriptor we own.
    check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GET_SEALS) })
}

/// The size of a file in bytes.
pub(crate) fn file_len(fd: &OwnedFd) -> io::Result<u64> {
    // SAFETY: all-zero is a valid `stat`.
    let mut st: libc::stat = unsafe { zeroed() };
    // SAFETY: fstat writes into `st`, which outlives the call.
    check(unsafe { libc::fstat(fd.as_raw_fd(), &mut st) })?;
    Ok(st.st_size as u64)
}

// ---------------------------------------------------------------- sockets

/// An address in the abstract unix socket namespace: no file, released by
/// the kernel when the last socket bound to it closes, however its owner
/// died.
pub(crate) struct AbstractAddr {
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl AbstractAddr {
    /// Longest name that fits (`sun_path` minus the leading NUL).
    pub(crate) const MAX: usize = 107;

    pub(crate) fn new(name: &str) -> io::Result<Self> {
        // SAFETY: all-zero is a valid `sockaddr_un`.
        let mut addr: libc::sockaddr_un = unsafe { zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if name.len() > Self::MAX {
            return Err(io::ErrorKind::InvalidInput.into());
        }
        // sun_path[0] stays NUL: that is what makes the address abstract.
        for (dst, &b) in addr.sun_path[1..].iter_mut().zip(name.as_bytes()) {
            *dst = b as libc::c_char;
        }
        let len = (size_of::<libc::sa_family_t>() + 1 + name.len()) as libc::socklen_t;
        Ok(Self { addr, len })
    }

    fn ptr(&self) -> *const libc::sockaddr {
        (&raw const self.addr).cast()
    }
}

fn stream_socket() -> io::Result<OwnedFd> {
    // SAFETY: socket takes plain integers and returns a new fd or -1.
    owned(unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        )
    })
}

/// A non-blocking listening socket bound to `addr`. `AddrInUse` when a live
/// socket holds the name. Its connections refuse descriptors where the
/// kernel can ([`pass_rights`]).
pub(crate) fn listen(addr: &AbstractAddr, backlog: u32) -> io::Result<OwnedFd> {
    let fd = stream_socket()?;
    // Before `listen`, so no connection is ever without it. Kernels before
    // 6.16 lack the option; `recv` defuses what reaches us there.
    let _ = pass_rights(&fd, false);
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::bind(fd.as_raw_fd(), addr.ptr(), addr.len) })?;
    let backlog = backlog.min(libc::c_int::MAX as u32) as libc::c_int;
    // SAFETY: listen on a bound socket we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), backlog) })?;
    Ok(fd)
}

/// `SO_PASSRIGHTS` (Linux 6.16) in the asm-generic numbering, which the
/// `libc` crate does not export yet; MIPS and SPARC number it otherwise,
/// and go without.
const SO_PASSRIGHTS: Option<libc::c_int> = if cfg!(any(
    target_arch = "mips",
    target_arch = "mips64",
    target_arch = "sparc",
    target_arch = "sparc64"
)) {
    None
} else {
    Some(83)
};

/// Whether `sock` accepts descriptors (`SCM_RIGHTS`); a listener's setting
/// carries over to the connections it accepts. Refused, a peer's `sendmsg`
/// with descriptors fails (EPERM) and nothing reaches us: nothing to close,
/// and closing a peer's descriptor can block (a socket it set to linger
/// with unsent data, a FUSE file whose daemon never answers the flush).
/// `ENOPROTOOPT` before Linux 6.16.
pub(crate) fn pass_rights(sock: &OwnedFd, allow: bool) -> io::Result<()> {
    let Some(option) = SO_PASSRIGHTS else {
        return Err(io::Error::from_raw_os_error(libc::ENOPROTOOPT));
    };
    let v = libc::c_int::from(allow);
    // SAFETY: `v` is a valid int option value for the call.
    check(unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            option,
            (&raw const v).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Accepts one pending connection, non-blocking and close-on-exec.
/// `Ok(None)` when none is pending.
pub(crate) fn accept(listener: &OwnedFd) -> io::Result<Option<OwnedFd>> {
    // SAFETY: null address pointers are allowed; flags are plain integers.
    let r = unsafe {
        libc::accept4(
            listener.as_raw_fd(),
            std::ptr::null_mut(),
            std::ptr::null_mut(),
            libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
        )
    };
    match owned(r) {
        Ok(fd) => Ok(Some(fd)),
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(e) => Err(e),
    }
}

/// Starts a non-blocking connection to `addr`. `WouldBlock` means the
/// listener's backlog is full (retry); `ConnectionRefused`/`NotFound` that
/// nobody listens there.
pub(crate) fn connect(addr: &AbstractAddr) -> io::Result<OwnedFd> {
    let fd = stream_socket()?;
    // SAFETY: `addr` is a valid sockaddr_un of `len` bytes.
    check(unsafe { libc::connect(fd.as_raw_fd(), addr.ptr(), addr.len) })?;
    Ok(fd)
}

/// The user id of the process at the other end of a connected unix socket,
/// as the kernel recorded it at `connect`/`listen` time.
pub(crate) fn peer_uid(sock: &OwnedFd) -> io::Result<u32> {
    // SAFETY: all-zero is a valid `ucred`.
    let mut cred: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid out-pointers of matching size.
    check(unsafe {
        libc::getsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut cred).cast(),
            &mut len,
        )
    })?;
    Ok(cred.uid)
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Sends `bytes` (and `fds`, as `SCM_RIGHTS`) without blocking and without
/// `SIGPIPE`. Returns how many bytes the kernel took.
pub(crate) fn send(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr().cast_mut().cast(),
        iov_len: bytes.len(),
    };
    // Room for up to 4 descriptors, aligned for cmsghdr.
    let mut cbuf = [0u64; 8];
    // SAFETY: all-zero is a valid `msghdr`.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if !fds.is_empty() {
        assert!(fds.len() <= 4, "at most 4 descriptors per message");
        let payload = size_of_val(fds) as u32;
        // SAFETY: CMSG_SPACE is a pure computation.
        let space = unsafe { libc::CMSG_SPACE(payload) } as usize;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        // SAFETY: msg_control points to `space` ≤ 64 writable bytes, enough
        // for one header and 4 descriptors; CMSG_FIRSTHDR/CMSG_DATA stay
        // inside it.
        unsafe {
            let c = libc::CMSG_FIRSTHDR(&msg);
            (*c).cmsg_level = libc::SOL_SOCKET;
            (*c).cmsg_type = libc::SCM_RIGHTS;
            (*c).cmsg_len = libc::CMSG_LEN(payload) as usize;
            std::ptr::copy_nonoverlapping(
                fds.as_ptr(),
                libc::CMSG_DATA(c).cast::<RawFd>(),
                fds.len(),
            );
        }
    }
    // SAFETY: `msg` points to live buffers for the duration of the call.
    let n = unsafe {
        libc::sendmsg(
            sock.as_raw_fd(),
            &msg,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL,
        )
    };
    if n < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Receives into `buf` without blocking; descriptors that arrive with the
/// bytes are appended to `fds` (close-on-exec), each a socket's linger
/// switched off: a peer's socket set to linger, with data its own peer
/// never reads, would block our `close` of it for the linger time.
/// `Ok(0)` is end of stream.
pub(crate) fn recv(sock: &OwnedFd, buf: &mut [u8], fds: &mut Vec<OwnedFd>) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut cbuf = [0u64; 8];
    // SAFETY: all-zero is a valid `msghdr`.
    let mut msg: libc::msghdr = unsafe { zeroed() };
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = size_of::<[u64; 8]>();
    // SAFETY: `msg` points to live buffers for the duration of the call.
    let n = unsafe {
        libc::recvmsg(
            sock.as_raw_fd(),
            &mut msg,
            libc::MSG_DONTWAIT | libc::MSG_CMSG_CLOEXEC,
        )
    };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel filled msg_control with msg_controllen bytes of
    // well-formed cmsg headers; the CMSG_* walk stays inside them.
    unsafe {
        let mut c = libc::CMSG_FIRSTHDR(&msg);
        while !c.is_null() {
            if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(c).cast::<RawFd>();
                let count = ((*c).cmsg_len - libc::CMSG_LEN(0) as usize) / size_of::<RawFd>();
                for i in 0..count {
                    let fd = data.add(i).read_unaligned();
                    // The kernel installed this descriptor for us.
                    let fd = OwnedFd::from_raw_fd(fd);
                    // ENOTSOCK for what is no socket, as expected.
                    let _ = set_linger_off(&fd);
                    fds.push(fd);
                }
            }
            c = libc::CMSG_NXTHDR(&msg, c);
        }
    }
    Ok(n as usize)
}

/// Makes closing the socket `fd` return at once, its unsent data left to
/// the kernel.
fn set_linger_off(fd: &OwnedFd) -> io::Result<()> {
    let off = libc::linger {
        l_onoff: 0,
        l_linger: 0,
    };
    // SAFETY: `off` is a valid linger value of the size given.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const off).cast(),
            size_of::<libc::linger>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Waits until `sock` is readable (or hung up) for at most `timeout`.
/// Returns whether it is.
pub(crate) fn wait_readable(sock: &OwnedFd, timeout: Duration) -> io::Result<bool> {
    let mut pfd = libc::pollfd {
        fd: sock.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    };
    let ms = timeout.as_millis().min(i32::MAX as u128) as libc::c_int;
    // SAFETY: one valid pollfd.
    let n = check(unsafe { libc::poll(&mut pfd, 1, ms) })?;
    Ok(n > 0)
}

// ------------------------------------------------------------------ epoll

/// An epoll instance; each registered descriptor carries a `u64` token.
pub(crate) struct Epoll {
    fd: OwnedFd,
}

/// What an epoll event reports.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Event {
    pub(crate) token: u64,
    /// Readable, hung up or in error: in every case, read to find out.
    pub(crate) readable: bool,
}

impl Epoll {
    pub(crate) fn new() -> io::Result<Self> {
        // SAFETY: epoll_create1 takes a flag and returns a new fd or -1.
        let fd = unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) };
        Ok(Self { fd: owned(fd)? })
    }

    /// Watches `fd` for input and hang-ups (level-triggered).
    pub(crate) fn add(&self, fd: &OwnedFd, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event {
            events: (libc::EPOLLIN | libc::EPOLLRDHUP) as u32,
            u64: token,
        };
        // SAFETY: `ev` is valid for the call; both fds are open.
        check(unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_ADD,
                fd.as_raw_fd(),
                &mut ev,
            )
        })
        .map(drop)
    }

    /// Stops watching `fd` (closing it would too, unless it was duplicated).
    pub(crate) fn remove(&self, fd: &OwnedFd) {
        // SAFETY: a null event is allowed for EPOLL_CTL_DEL since 2.6.9.
        unsafe {
            libc::epoll_ctl(
                self.fd.as_raw_fd(),
                libc::EPOLL_CTL_DEL,
                fd.as_raw_fd(),
                std::ptr::null_mut(),
            );
        }
    }

    /// Waits up to `timeout` (zero: just look) and appends what happened to
    /// `out` (at most its spare capacity, at least one slot).
    pub(crate) fn wait(&self, out: &mut Vec<Event>, timeout: Duration) -> io::Result<()> {
        const MAX: usize = 64;
        // SAFETY: all-zero is a valid epoll_event.
        let mut evs: [libc::epoll_event; MAX] = unsafe { zeroed() };
        let ms = if timeout.is_zero() {
            0
        } else {
            // Round up so a sub-millisecond wait does not become a spin.
            timeout.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int
        };
        // SAFETY: `evs` has room for MAX events.
        let n = unsafe {
            libc::epoll_wait(
                self.fd.as_raw_fd(),
                evs.as_mut_ptr(),
                MAX as libc::c_int,
                ms,
            )
        };
        let n = match check(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => 0,
            Err(e) => return Err(e),
        };
        out.extend(evs[..n].iter().map(|e| Event {
            token: e.u64,
            readable: e.events != 0,
        }));
        Ok(())
    }
}

/// Raises this process's soft limit on open descriptors to at least `want`
/// (capped by the hard limit). A server holds one socket per client.
pub(crate) fn raise_fd_limit(want: u64) {
    // SAFETY: all-zero is a valid rlimit.
    let mut lim: libc::rlimit = unsafe { zeroed() };
    // SAFETY: getrlimit writes into `lim`.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) } != 0 {
        return;
    }
    if lim.rlim_cur >= want as libc::rlim_t {
        return;
    }
    lim.rlim_cur = (want as libc::rlim_t).min(lim.rlim_max);
    // SAFETY: setrlimit reads `lim`. Failure leaves the old limit, which
    // only means fewer clients can connect; accept reports it then.
    unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
}
