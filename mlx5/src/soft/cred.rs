//! Who is at the other end of a unix link. A unix device address names a
//! process (`pid`) and a device of it; abstract unix sockets have no
//! permissions, so any local process could connect and announce any
//! address, or bind a name a device left. Both ends therefore ask the
//! kernel which process the other end is (`SO_PEERCRED`, recorded at
//! `connect` for the connector and at `listen` for the listener) and
//! refuse a process of another user (root excepted: it can read this
//! process's memory anyway), or one whose pid is not the one its address
//! names. A unix address is announced only over a unix socket (a TCP
//! connector that announces one is refused): nothing could check it over
//! TCP.
//!
//! Pid namespaces: a process names itself with its pid in its own
//! namespace, and the kernel reports the peer's pid in ours. When the two
//! differ (the peer is in a namespace below ours), the peer's
//! `/proc/<pid>/status` `NSpid` line gives its pid in its own namespace
//! (this assumes `/proc` is our namespace's). A peer in a namespace that
//! ours cannot see is reported as pid 0: only its user id is checked then,
//! except that it cannot be this process.

use std::fmt;
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

/// Why the process at the other end is refused.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// The kernel would not say who it is.
    Unknown(String),
    /// It runs as another user (and not as root).
    User { theirs: u32, mine: u32 },
    /// It is not the process its address names (`theirs` is its pid here;
    /// 0: a namespace this one cannot see).
    Pid { theirs: u32, claimed: u32 },
}

impl fmt::Display for Refused {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refused::Unknown(e) => write!(f, "cannot tell who the peer is (SO_PEERCRED): {e}"),
            Refused::User { theirs, mine } => write!(
                f,
                "the process at the other end runs as uid {theirs}, not as this process's \
                 uid {mine}"
            ),
            Refused::Pid { theirs: 0, claimed } => write!(
                f,
                "the process at the other end is in a pid namespace this one cannot see, so \
                 it is not pid {claimed} that the address names"
            ),
            Refused::Pid { theirs, claimed } => write!(
                f,
                "the process at the other end is pid {theirs}, not pid {claimed} that the \
                 address names"
            ),
        }
    }
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

/// Checks that the process at the other end of `fd` runs as this user (or
/// as root) and, with `pid` (the pid a unix device address names), is
/// that process.
pub(crate) fn check(fd: RawFd, pid: Option<u32>) -> Result<(), Refused> {
    let c = peer(fd).map_err(|e| Refused::Unknown(e.to_string()))?;
    let me = Me {
        uid: euid(),
        pid: std::process::id(),
    };
    judge(c, pid, me, |p| {
        std::fs::read_to_string(format!("/proc/{p}/status"))
            .ok()
            .and_then(|s| own_pid(&s))
    })
}

/// This process, as [`judge`] needs it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Me {
    pub uid: u32,
    pub pid: u32,
}

/// The decision of [`check`], on given facts: `c` is the peer as the
/// kernel reports it, `claimed` the pid its address names (if it names
/// one), `me` this process, and `own_pid_of(p)` the pid the process that
/// is `p` here has in its own namespace (`None` if unknown).
pub(crate) fn judge(
    c: Cred,
    claimed: Option<u32>,
    me: Me,
    own_pid_of: impl FnOnce(u32) -> Option<u32>,
) -> Result<(), Refused> {
    if c.uid != me.uid && c.uid != 0 {
        return Err(Refused::User {
            theirs: c.uid,
            mine: me.uid,
        });
    }
    let Some(claimed) = claimed else {
        return Ok(());
    };
    let ok = if c.pid == 0 {
        // Unseen: anyone but this process, which sees itself.
        claimed != me.pid
    } else {
        c.pid == claimed || own_pid_of(c.pid) == Some(claimed)
    };
    if ok {
        Ok(())
    } else {
        Err(Refused::Pid {
            theirs: c.pid,
            claimed,
        })
    }
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
    const ME: Me = Me { uid: 7, pid: 99 };

    #[test]
    fn the_named_process_of_this_user_or_of_root_passes() {
        let c = Cred { pid: 42, uid: 7 };
        assert_eq!(judge(c, Some(42), ME, NONE), Ok(()));
        let c = Cred { pid: 42, uid: 0 };
        assert_eq!(judge(c, Some(42), ME, NONE), Ok(()));
    }

    #[test]
    fn another_user_is_refused_whatever_its_pid() {
        let c = Cred { pid: 42, uid: 8 };
        let e = judge(c, Some(42), ME, NONE).unwrap_err();
        assert_eq!(e, Refused::User { theirs: 8, mine: 7 });
        let s = e.to_string();
        assert!(s.contains("uid 8") && s.contains("uid 7"), "{s}");
        let c = Cred { pid: 0, uid: 8 };
        assert!(judge(c, Some(42), ME, NONE).is_err());
        // Root's device refuses an ordinary user.
        let root = Me { uid: 0, pid: 99 };
        assert!(judge(Cred { pid: 42, uid: 7 }, Some(42), root, NONE).is_err());
    }

    #[test]
    fn another_process_is_refused_unless_it_is_the_named_one_in_its_namespace() {
        let c = Cred { pid: 4242, uid: 7 };
        let e = judge(c, Some(42), ME, NONE).unwrap_err();
        assert_eq!(
            e,
            Refused::Pid {
                theirs: 4242,
                claimed: 42
            }
        );
        let s = e.to_string();
        assert!(s.contains("pid 4242") && s.contains("pid 42 "), "{s}");
        assert!(judge(c, Some(42), ME, |_| Some(41)).is_err());
        // A namespace below ours: pid 4242 here, 42 in its own.
        let mut asked = 0;
        let r = judge(c, Some(42), ME, |p| {
            asked = p;
            Some(42)
        });
        assert_eq!((r, asked), (Ok(()), 4242));
    }

    #[test]
    fn an_unseen_peer_is_checked_by_user_and_is_never_this_process() {
        let c = Cred { pid: 0, uid: 7 };
        assert_eq!(judge(c, Some(42), ME, NONE), Ok(()));
        let e = judge(c, Some(ME.pid), ME, NONE).unwrap_err();
        assert!(e.to_string().contains("cannot see"), "{e}");
    }

    #[test]
    fn an_address_that_names_no_pid_is_checked_by_user_only() {
        let c = Cred { pid: 4242, uid: 7 };
        assert_eq!(judge(c, None, ME, NONE), Ok(()));
        let c = Cred { pid: 4242, uid: 8 };
        assert!(judge(c, None, ME, NONE).is_err());
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
        use std::os::fd::AsRawFd as _;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        let me = std::process::id();
        assert_eq!(peer(a.as_raw_fd()).unwrap().pid, me);
        assert_eq!(check(b.as_raw_fd(), Some(me)), Ok(()));
        assert!(check(b.as_raw_fd(), Some(me.wrapping_add(1))).is_err());
    }
}
