//! Who is at the other end of a unix link. A unix device address names a
//! process (`pid`) and a device of it; abstract unix sockets have no
//! permissions, so any local process could connect and announce any
//! address, or bind a name a device left. Both ends therefore ask the
//! kernel which process the other end is (`SO_PEERCRED`, recorded at
//! `connect` for the connector and at `listen` for the listener) and
//! refuse a process of another user, or one whose pid is not the one its
//! address names.
//!
//! Pid namespaces: a process names itself with its pid in its own
//! namespace, and the kernel reports the peer's pid in ours. When the two
//! differ (the peer is in a namespace below ours), the peer's
//! `/proc/<pid>/status` `NSpid` line gives its pid in its own namespace.
//! A peer in a namespace that ours cannot see is reported as pid 0: only
//! its user id is checked then.

use std::io;
use std::mem::{size_of, zeroed};
use std::os::fd::RawFd;

/// The kernel's record of the process at the other end of a unix socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Cred {
    /// Its pid in this process's namespace; 0 if not visible here.
    pub pid: u32,
    pub uid: u32,
}

/// The process at the other end of the connected unix socket `fd`.
pub(crate) fn peer(fd: RawFd) -> io::Result<Cred> {
    // SAFETY: all-zero is a valid `ucred`.
    let mut c: libc::ucred = unsafe { zeroed() };
    let mut len = size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `c` and `len` are valid out-pointers of matching size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&raw mut c).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(Cred {
        pid: u32::try_from(c.pid).unwrap_or(0),
        uid: c.uid,
    })
}

/// This process's effective user id.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() }
}

/// Checks that the process at the other end of `fd` runs as this user and,
/// with `pid` (the pid a unix device address names), is that process. The
/// error says who it is instead.
pub(crate) fn check(fd: RawFd, pid: Option<u32>) -> Result<(), String> {
    let c = peer(fd).map_err(|e| format!("cannot tell who the peer is (SO_PEERCRED): {e}"))?;
    judge(c, pid, euid(), |p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| own_pid(&s))
    })
}

/// The decision of [`check`], on given facts: `c` is the peer as the
/// kernel reports it, `claimed` the pid its address names (if it names
/// one), `me` this
/// process's user id, and `own_pid_of(p)` the pid the process that is `p`
/// here has in its own namespace (`None` if unknown).
pub(crate) fn judge(
    c: Cred,
    claimed: Option<u32>,
    me: u32,
    own_pid_of: impl FnOnce(u32) -> Option<u32>,
) -> Result<(), String> {
    if c.uid != me {
        return Err(format!(
            "the process at the other end runs as uid {}, not as this process's uid {me}",
            c.uid
        ));
    }
    let Some(claimed) = claimed else {
        return Ok(());
    };
    if c.pid == 0 || c.pid == claimed || own_pid_of(c.pid) == Some(claimed) {
        return Ok(());
    }
    Err(format!(
        "the process at the other end is pid {}, not pid {claimed} that the address names",
        c.pid
    ))
}

/// The pid a process has in its own pid namespace: the last number of the
/// `NSpid` line of its `/proc/<pid>/status` text (`None` without one).
pub(crate) fn own_pid(status: &str) -> Option<u32> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("NSpid:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|w| w.parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    const NONE: fn(u32) -> Option<u32> = |_| None;

    #[test]
    fn the_named_process_of_this_user_passes() {
        let c = Cred { pid: 42, uid: 7 };
        assert_eq!(judge(c, Some(42), 7, NONE), Ok(()));
    }

    #[test]
    fn another_user_is_refused_whatever_its_pid() {
        let c = Cred { pid: 42, uid: 0 };
        let e = judge(c, Some(42), 7, NONE).unwrap_err();
        assert!(e.contains("uid 0") && e.contains("uid 7"), "{e}");
        let c = Cred { pid: 0, uid: 8 };
        assert!(judge(c, Some(42), 7, NONE).is_err());
    }

    #[test]
    fn another_process_is_refused_unless_it_is_the_named_one_in_its_namespace() {
        let c = Cred { pid: 4242, uid: 7 };
        let e = judge(c, Some(42), 7, NONE).unwrap_err();
        assert!(e.contains("pid 4242") && e.contains("pid 42 "), "{e}");
        assert!(judge(c, Some(42), 7, |_| Some(41)).is_err());
        // A namespace below ours: pid 4242 here, 42 in its own.
        let mut asked = 0;
        let r = judge(c, Some(42), 7, |p| {
            asked = p;
            Some(42)
        });
        assert_eq!((r, asked), (Ok(()), 4242));
    }

    #[test]
    fn a_peer_this_namespace_cannot_see_or_that_names_no_pid_is_checked_by_user_only() {
        let c = Cred { pid: 0, uid: 7 };
        assert_eq!(judge(c, Some(42), 7, NONE), Ok(()));
        let c = Cred { pid: 4242, uid: 7 };
        assert_eq!(judge(c, None, 7, NONE), Ok(()));
        let c = Cred { pid: 4242, uid: 8 };
        assert!(judge(c, None, 7, NONE).is_err());
    }

    #[test]
    fn own_pid_is_the_innermost_nspid() {
        let s = "Name:\tx\nTgid:\t4242\nPid:\t4242\nNSpid:\t4242\t17\t42\nNSsid:\t1\n";
        assert_eq!(own_pid(s), Some(42));
        assert_eq!(own_pid("Pid:\t9\nNSpid:\t9\n"), Some(9));
        assert_eq!(own_pid("Pid:\t9\n"), None);
        assert_eq!(own_pid("NSpid:\n"), None);
        assert_eq!(own_pid("NSpid:\tx\n"), None);
    }

    #[test]
    fn this_process_checks_out_against_itself() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        use std::os::fd::AsRawFd as _;
        let me = std::process::id();
        assert_eq!(peer(a.as_raw_fd()).unwrap().pid, me);
        assert_eq!(check(b.as_raw_fd(), Some(me)), Ok(()));
        assert!(check(b.as_raw_fd(), Some(me.wrapping_add(1))).is_err());
    }
}
