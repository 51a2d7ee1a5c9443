//! Asynchronous events on hardware: `ibv_get_async_event` on the context's
//! `async_fd`, which [`super::Device`] makes non-blocking when it opens the
//! device, `poll` for a deadline, the event mapped to [`AsyncEvent`], then
//! `ibv_ack_async_event`.
//!
//! What an event names, by type (`enum ibv_event_type`):
//!
//! | events | `element` | reported as |
//! |---|---|---|
//! | QP_FATAL, QP_REQ_ERR, QP_ACCESS_ERR, COMM_EST, SQ_DRAINED, PATH_MIG(_ERR), QP_LAST_WQE_REACHED | `qp`: the QP, alive until the event is acknowledged (`ibv_destroy_qp` waits for it) | its `qp_num` |
//! | CQ_ERR | `cq` | the CQN the device recorded when it created that CQ |
//! | SRQ_ERR, SRQ_LIMIT_REACHED | `srq` | the SRQN, likewise |
//! | PORT_ACTIVE, PORT_ERR, LID_CHANGE, PKEY_CHANGE, SM_CHANGE, CLIENT_REREGISTER, GID_CHANGE | `port_num` | the port and the type |
//! | DEVICE_FATAL | none | [`AsyncEvent::DeviceFatal`] |
//! | WQ_FATAL and types this crate does not know | — | [`AsyncEvent::Other`] |
//!
//! Every event taken is acknowledged before it is returned, so a destroy
//! never waits on one of ours for longer than the mapping takes.

use std::ffi::c_int;
use std::time::{Duration, Instant};

use super::ffi::{self, ibv_async_event, ibv_cq, ibv_srq};
use crate::error::Error;
use crate::event::AsyncEvent;

/// The [`AsyncEvent`] that `ev` describes. `cqn` and `srqn` give the
/// number of a CQ or SRQ of this device by its verbs pointer (`None`: not
/// one of ours, which a live device cannot report; the event is then
/// [`AsyncEvent::Other`]).
///
/// # Safety
///
/// For the QP events (the first row of the module docs' table),
/// `ev.element.qp` must point to a live `ibv_qp`, as it does for an event
/// from `ibv_get_async_event` that is not yet acknowledged.
pub(crate) unsafe fn map_event(
    ev: &ibv_async_event,
    cqn: impl FnOnce(*mut ibv_cq) -> Option<u32>,
    srqn: impl FnOnce(*mut ibv_srq) -> Option<u32>,
) -> AsyncEvent {
    let code = ev.event_type;
    let qpn = || {
        // SAFETY: a QP event: `element.qp` is the member libibverbs wrote
        // and points to a live QP (the caller's guarantee).
        unsafe { (*ev.element.qp).qp_num }
    };
    let port = || {
        // SAFETY: a port event: `element.port_num` is the member written.
        // Port numbers are 1..=255 (`uint8_t` everywhere else in verbs).
        unsafe { ev.element.port_num as u8 }
    };
    match code {
        ffi::IBV_EVENT_QP_FATAL => AsyncEvent::QpFatal { qpn: qpn() },
        ffi::IBV_EVENT_QP_REQ_ERR => AsyncEvent::QpRequestError { qpn: qpn() },
        ffi::IBV_EVENT_QP_ACCESS_ERR => AsyncEvent::QpAccessError { qpn: qpn() },
        ffi::IBV_EVENT_COMM_EST => AsyncEvent::CommEstablished { qpn: qpn() },
        ffi::IBV_EVENT_SQ_DRAINED => AsyncEvent::SqDrained { qpn: qpn() },
        ffi::IBV_EVENT_QP_LAST_WQE_REACHED => AsyncEvent::QpLastWqeReached { qpn: qpn() },
        ffi::IBV_EVENT_PATH_MIG | ffi::IBV_EVENT_PATH_MIG_ERR => AsyncEvent::PathMigration {
            qpn: qpn(),
            failed: code == ffi::IBV_EVENT_PATH_MIG_ERR,
        },
        ffi::IBV_EVENT_CQ_ERR => {
            // SAFETY: a CQ event: `element.cq` is the member written (only
            // compared as an address here).
            match cqn(unsafe { ev.element.cq }) {
                Some(cqn) => AsyncEvent::CqError { cqn },
                None => AsyncEvent::Other { code },
            }
        }
        ffi::IBV_EVENT_SRQ_ERR | ffi::IBV_EVENT_SRQ_LIMIT_REACHED => {
            // SAFETY: an SRQ event: `element.srq` is the member written
            // (only compared as an address here).
            match srqn(unsafe { ev.element.srq }) {
                Some(srqn) if code == ffi::IBV_EVENT_SRQ_ERR => AsyncEvent::SrqError { srqn },
                Some(srqn) => AsyncEvent::SrqLimitReached { srqn },
                None => AsyncEvent::Other { code },
            }
        }
        ffi::IBV_EVENT_PORT_ACTIVE
        | ffi::IBV_EVENT_PORT_ERR
        | ffi::IBV_EVENT_LID_CHANGE
        | ffi::IBV_EVENT_PKEY_CHANGE
        | ffi::IBV_EVENT_SM_CHANGE
        | ffi::IBV_EVENT_CLIENT_REREGISTER
        | ffi::IBV_EVENT_GID_CHANGE => AsyncEvent::Port { port: port(), code },
        ffi::IBV_EVENT_DEVICE_FATAL => AsyncEvent::DeviceFatal,
        _ => AsyncEvent::Other { code },
    }
}

/// Sets `O_NONBLOCK` on `fd`, so that `ibv_get_async_event` (a `read` of
/// it) fails with `EAGAIN` instead of blocking when no event is queued.
pub(crate) fn set_nonblocking(fd: c_int) -> Result<(), Error> {
    let os = |what| Error::Os {
        what,
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: F_GETFL on a descriptor only reads its flags (a bad one is
    // EBADF).
    let flags = unsafe { libc::fcntl(fd, libc::F_GETFL) };
    if flags < 0 {
        return Err(os("fcntl(async_fd, F_GETFL)"));
    }
    // SAFETY: as above, F_SETFL changes only the status flags.
    if unsafe { libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0 {
        return Err(os("fcntl(async_fd, F_SETFL, O_NONBLOCK)"));
    }
    Ok(())
}

/// When to stop waiting: `timeout` from now, or never for a timeout too
/// large to add to `Instant::now()` (`Duration::MAX`).
pub(crate) fn deadline(timeout: Duration) -> Option<Instant> {
    Instant::now().checked_add(timeout)
}

/// Waits until `fd` is readable or `deadline` passes (`None`: no deadline).
/// `Ok(true)`: readable (or in error, which the next read reports);
/// `Ok(false)`: the deadline passed or a signal interrupted the wait (the
/// caller checks the deadline again).
pub(crate) fn wait_readable(fd: c_int, deadline: Option<Instant>) -> Result<bool, Error> {
    let ms = match deadline {
        None => -1,
        Some(d) => {
            let left = d.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(false);
            }
            // Rounded up, so that a wait of under a millisecond waits.
            c_int::try_from(left.as_nanos().div_ceil(1_000_000)).unwrap_or(c_int::MAX)
        }
    };
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        let e = std::io::Error::last_os_error();
        if e.kind() == std::io::ErrorKind::Interrupted {
            return Ok(false);
        }
        return Err(Error::Os {
            what: "poll(async_fd)",
            source: e,
        });
    }
    Ok(n > 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(code: u32, element: ffi::ibv_async_event_element) -> ibv_async_event {
        ibv_async_event {
            element,
            event_type: code,
        }
    }

    /// A QP as libibverbs lays it out, with its lock and condition
    /// initialised as `ibv_create_qp` leaves them.
    fn fake_qp(qpn: u32) -> Box<ffi::ibv_qp> {
        // SAFETY: ibv_qp is integers, raw pointers and glibc pthread types,
        // for all of which all-zero bytes are a valid value.
        let mut qp: Box<ffi::ibv_qp> = Box::new(unsafe { std::mem::zeroed() });
        qp.qp_num = qpn;
        qp.mutex = libc::PTHREAD_MUTEX_INITIALIZER;
        qp.cond = libc::PTHREAD_COND_INITIALIZER;
        qp
    }

    fn qp_element(qp: &mut ffi::ibv_qp) -> ffi::ibv_async_event_element {
        ffi::ibv_async_event_element { qp }
    }

    #[test]
    fn qp_events_carry_the_qp_number() {
        let mut qp = fake_qp(0x1234);
        let cases = [
            (ffi::IBV_EVENT_QP_FATAL, AsyncEvent::QpFatal { qpn: 0x1234 }),
            (
                ffi::IBV_EVENT_QP_REQ_ERR,
                AsyncEvent::QpRequestError { qpn: 0x1234 },
            ),
            (
                ffi::IBV_EVENT_QP_ACCESS_ERR,
                AsyncEvent::QpAccessError { qpn: 0x1234 },
            ),
            (
                ffi::IBV_EVENT_COMM_EST,
                AsyncEvent::CommEstablished { qpn: 0x1234 },
            ),
            (
                ffi::IBV_EVENT_SQ_DRAINED,
                AsyncEvent::SqDrained { qpn: 0x1234 },
            ),
            (
                ffi::IBV_EVENT_QP_LAST_WQE_REACHED,
                AsyncEvent::QpLastWqeReached { qpn: 0x1234 },
            ),
            (
                ffi::IBV_EVENT_PATH_MIG,
                AsyncEvent::PathMigration {
                    qpn: 0x1234,
                    failed: false,
                },
            ),
            (
                ffi::IBV_EVENT_PATH_MIG_ERR,
                AsyncEvent::PathMigration {
                    qpn: 0x1234,
                    failed: true,
                },
            ),
        ];
        for (code, want) in cases {
            let ev = event(code, qp_element(&mut qp));
            // SAFETY: element.qp points at the live fake QP.
            let got = unsafe { map_event(&ev, |_| None, |_| None) };
            assert_eq!(got, want, "event type {code}");
        }
    }

    /// [`map_event`] for an event that is not a QP event.
    fn map_no_qp(
        ev: &ibv_async_event,
        cqn: impl FnOnce(*mut ibv_cq) -> Option<u32>,
        srqn: impl FnOnce(*mut ibv_srq) -> Option<u32>,
    ) -> AsyncEvent {
        assert!(
            !matches!(
                ev.event_type,
                ffi::IBV_EVENT_QP_FATAL
                    ..=ffi::IBV_EVENT_PATH_MIG_ERR | ffi::IBV_EVENT_QP_LAST_WQE_REACHED
            ),
            "a QP event: use map_event with a live QP"
        );
        // SAFETY: not a QP event (checked above): map_event dereferences
        // nothing for it.
        unsafe { map_event(ev, cqn, srqn) }
    }

    #[test]
    fn cq_and_srq_events_carry_the_recorded_numbers() {
        let cq = 0x1000 as *mut ibv_cq;
        let srq = 0x2000 as *mut ibv_srq;
        let cqn = |p: *mut ibv_cq| (p == cq).then_some(7);
        let srqn = |p: *mut ibv_srq| (p == srq).then_some(9);
        let ev = event(ffi::IBV_EVENT_CQ_ERR, ffi::ibv_async_event_element { cq });
        assert_eq!(map_no_qp(&ev, cqn, srqn), AsyncEvent::CqError { cqn: 7 });
        let ev = event(ffi::IBV_EVENT_SRQ_ERR, ffi::ibv_async_event_element { srq });
        assert_eq!(map_no_qp(&ev, cqn, srqn), AsyncEvent::SrqError { srqn: 9 });
        let ev = event(
            ffi::IBV_EVENT_SRQ_LIMIT_REACHED,
            ffi::ibv_async_event_element { srq },
        );
        assert_eq!(
            map_no_qp(&ev, cqn, srqn),
            AsyncEvent::SrqLimitReached { srqn: 9 }
        );
        // A CQ the device never recorded.
        let other = 0x3000 as *mut ibv_cq;
        let ev = event(
            ffi::IBV_EVENT_CQ_ERR,
            ffi::ibv_async_event_element { cq: other },
        );
        assert_eq!(
            map_no_qp(&ev, cqn, srqn),
            AsyncEvent::Other {
                code: ffi::IBV_EVENT_CQ_ERR
            }
        );
    }

    #[test]
    fn port_device_and_unknown_events() {
        for code in [
            ffi::IBV_EVENT_PORT_ACTIVE,
            ffi::IBV_EVENT_PORT_ERR,
            ffi::IBV_EVENT_LID_CHANGE,
            ffi::IBV_EVENT_PKEY_CHANGE,
            ffi::IBV_EVENT_SM_CHANGE,
            ffi::IBV_EVENT_CLIENT_REREGISTER,
            ffi::IBV_EVENT_GID_CHANGE,
        ] {
            let ev = event(code, ffi::ibv_async_event_element { port_num: 2 });
            assert_eq!(
                map_no_qp(&ev, |_| None, |_| None),
                AsyncEvent::Port { port: 2, code }
            );
        }
        let null = ffi::ibv_async_event_element {
            qp: std::ptr::null_mut(),
        };
        let ev = event(ffi::IBV_EVENT_DEVICE_FATAL, null);
        assert_eq!(map_no_qp(&ev, |_| None, |_| None), AsyncEvent::DeviceFatal);
        for code in [ffi::IBV_EVENT_WQ_FATAL, 20, 1000] {
            let ev = event(code, null);
            assert_eq!(
                map_no_qp(&ev, |_| None, |_| None),
                AsyncEvent::Other { code }
            );
        }
    }

    /// The real `ibv_ack_async_event` (rdma-core installed here, no device
    /// needed) reads our `ibv_async_event` and counts the event on the QP
    /// or SRQ it names, exactly as `ibv_destroy_*` will wait for: our
    /// layouts of the event, `ibv_qp` and `ibv_srq` agree with the library.
    #[test]
    fn ack_counts_the_event_on_its_object() {
        let Ok(verbs) = ffi::Verbs::load() else {
            eprintln!("rdma-core is not installed; nothing to check");
            return;
        };
        let mut qp = fake_qp(5);
        let mut ev = event(ffi::IBV_EVENT_QP_ACCESS_ERR, qp_element(&mut qp));
        // SAFETY: the event names a QP whose lock and condition are
        // initialised; ack locks it, counts, signals and unlocks.
        unsafe { (verbs.ibv_ack_async_event)(&mut ev) };
        assert_eq!(qp.events_completed, 1);

        // SAFETY: as for the QP above.
        let mut srq: Box<ffi::ibv_srq> = Box::new(unsafe { std::mem::zeroed() });
        srq.mutex = libc::PTHREAD_MUTEX_INITIALIZER;
        srq.cond = libc::PTHREAD_COND_INITIALIZER;
        let mut ev = event(
            ffi::IBV_EVENT_SRQ_LIMIT_REACHED,
            ffi::ibv_async_event_element { srq: &mut *srq },
        );
        // SAFETY: as above, for the SRQ.
        unsafe { (verbs.ibv_ack_async_event)(&mut ev) };
        // SAFETY: as above.
        unsafe { (verbs.ibv_ack_async_event)(&mut ev) };
        assert_eq!(srq.events_completed, 2);

        // A port event names no object: nothing to count, nothing touched.
        let mut ev = event(
            ffi::IBV_EVENT_PORT_ERR,
            ffi::ibv_async_event_element { port_num: 1 },
        );
        // SAFETY: a port event; ack returns without dereferencing.
        unsafe { (verbs.ibv_ack_async_event)(&mut ev) };
    }

    fn pipe() -> (c_int, c_int) {
        let mut fds = [0; 2];
        // SAFETY: a writable array of two descriptors.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        (fds[0], fds[1])
    }

    fn close(fd: c_int) {
        // SAFETY: a descriptor this test opened and closes once.
        unsafe { libc::close(fd) };
    }

    #[test]
    fn nonblocking_descriptor_reads_would_block_instead_of_waiting() {
        let (r, w) = pipe();
        set_nonblocking(r).unwrap();
        let mut b = [0u8; 1];
        // SAFETY: reads at most one byte into `b`.
        let n = unsafe { libc::read(r, b.as_mut_ptr().cast(), 1) };
        assert_eq!(n, -1);
        assert_eq!(
            std::io::Error::last_os_error().kind(),
            std::io::ErrorKind::WouldBlock
        );
        close(r);
        close(w);
        assert!(matches!(set_nonblocking(-1), Err(Error::Os { .. })));
    }

    #[test]
    fn wait_readable_times_out_then_sees_data() {
        let (r, w) = pipe();
        let start = Instant::now();
        assert!(!wait_readable(r, deadline(Duration::from_millis(30))).unwrap());
        assert!(start.elapsed() >= Duration::from_millis(30));
        // A deadline already passed does not wait at all.
        assert!(!wait_readable(r, Some(Instant::now())).unwrap());
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            // SAFETY: writes one byte from a valid buffer.
            assert_eq!(unsafe { libc::write(w, [1u8].as_ptr().cast(), 1) }, 1);
            w
        });
        // No deadline: waits for the writer.
        assert!(wait_readable(r, deadline(Duration::MAX)).unwrap());
        close(writer.join().unwrap());
        close(r);
    }

    #[test]
    fn deadline_of_an_unrepresentable_timeout_is_none() {
        assert!(deadline(Duration::MAX).is_none());
        assert!(deadline(Duration::from_secs(1)).is_some());
    }
}
