//! Waking and sleeping: the eventfd a sleeping thread polls, `ppoll`, and
//! the software device's doorbell ([`Bell`]), which wakes the progress
//! thread only when it sleeps.

use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::atomic::{AtomicBool, Ordering, fence};
use std::time::Duration;

use crate::error::Error;

/// An eventfd: the doorbell's wire to a sleeping `poll`.
pub(crate) struct EventFd(std::os::fd::OwnedFd);

impl EventFd {
    pub(crate) fn new() -> Result<EventFd, Error> {
        // SAFETY: plain syscall; the result is checked.
        let fd = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if fd < 0 {
            return Err(Error::Os {
                what: "eventfd for the software device's doorbell",
                source: std::io::Error::last_os_error(),
            });
        }
        // SAFETY: fd is a fresh descriptor we own.
        Ok(EventFd(unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) }))
    }

    pub(crate) fn signal(&self) {
        let one = 1u64.to_ne_bytes();
        // SAFETY: writes 8 bytes from a live buffer; a full counter
        // (EAGAIN) still leaves the fd readable, which is all we need.
        let _ = unsafe { libc::write(self.0.as_raw_fd(), one.as_ptr().cast(), 8) };
    }

    pub(crate) fn drain(&self) {
        let mut b = [0u8; 8];
        // SAFETY: reads 8 bytes into a live buffer (non-blocking fd).
        let _ = unsafe { libc::read(self.0.as_raw_fd(), b.as_mut_ptr().cast(), 8) };
    }

    pub(crate) fn pollfd(&self) -> libc::pollfd {
        libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        }
    }
}

/// `ppoll` on `fds` until one is ready or `timeout` (None: forever).
pub(crate) fn poll(fds: &mut [libc::pollfd], timeout: Option<Duration>) {
    let ts = timeout.map(|t| libc::timespec {
        tv_sec: t.as_secs().min(i32::MAX as u64) as libc::time_t,
        tv_nsec: libc::c_long::from(t.subsec_nanos() as i32),
    });
    let tp = ts
        .as_ref()
        .map_or(std::ptr::null(), |t| t as *const libc::timespec);
    // SAFETY: fds is a live slice of pollfd; tp is null or points at ts.
    let _ = unsafe {
        libc::ppoll(
            fds.as_mut_ptr(),
            fds.len() as libc::nfds_t,
            tp,
            std::ptr::null(),
        )
    };
}

/// The doorbell of a software device: posters ring it after updating a
/// doorbell record; it wakes the device thread only if it sleeps.
///
/// Protocol (Dekker): the poster stores the record (`Release`), fences
/// (`SeqCst`) and reads `sleeping`; the device sets `sleeping`, fences
/// (`SeqCst`) and then scans the records. Either the poster sees `sleeping`
/// and signals the eventfd the device sleeps on (with its sockets), or the
/// device's scan sees the record.
pub(crate) struct Bell {
    sleeping: AtomicBool,
    efd: EventFd,
}

impl Bell {
    pub(crate) fn new() -> Result<Bell, Error> {
        Ok(Bell {
            sleeping: AtomicBool::new(false),
            efd: EventFd::new()?,
        })
    }

    /// Rings: wakes the device thread if it sleeps.
    pub(crate) fn ring(&self) {
        // SeqCst: orders the caller's doorbell-record store before the load
        // of `sleeping` (see the protocol above).
        fence(Ordering::SeqCst);
        // Relaxed: the fence orders it.
        if self.sleeping.load(Ordering::Relaxed) {
            self.efd.signal();
        }
    }

    /// Sleeps until rung, a socket in `fds` is ready, or `timeout`, unless
    /// `check` finds work first.
    pub(crate) fn sleep(
        &self,
        timeout: Duration,
        fds: &mut Vec<libc::pollfd>,
        check: impl FnOnce() -> usize,
    ) {
        // Relaxed + SeqCst fence: see the protocol above.
        self.sleeping.store(true, Ordering::Relaxed);
        fence(Ordering::SeqCst);
        if check() == 0 {
            fds.push(self.efd.pollfd());
            poll(fds, Some(timeout));
            self.efd.drain();
        }
        // Relaxed: only an optimisation hint for ringers from here on.
        self.sleeping.store(false, Ordering::Relaxed);
    }
}
