//! copyrpc under faults on the software device: every failure gives the
//! documented error within a bound, never a hang, and every outstanding
//! call's user data comes back.

mod common;

use std::time::{Duration, Instant};

use common::{Side, TIMEOUT, config, pair, run};
use copyrpc::{CallErrorKind, Config, Context, EndpointError, Limits, RpcError};
use mlx5::{AsyncEvent, Progress, Syndrome};

/// Polls `side` until `n` calls came back; panics after the timeout.
fn wait_done<U>(side: &mut Side<U>, n: usize, other: Option<&mut dyn FnMut()>) {
    let start = Instant::now();
    let mut other = other;
    while side.done.len() < n {
        side.poll();
        if let Some(f) = other.as_mut() {
            f();
        }
        assert!(
            start.elapsed() < TIMEOUT,
            "{} of {n} calls came back",
            side.done.len()
        );
    }
}

/// Two contexts on manual software devices of this process, no endpoints.
fn manual_sides() -> (Side<u32>, Side<u32>) {
    let cfg = config(Limits::default());
    let side = || Side::<u32> {
        ctx: Context::new(&mlx5::Context::soft(Progress::Manual), cfg).unwrap(),
        eps: Vec::new(),
        done: Vec::new(),
    };
    (side(), side())
}

/// A new endpoint on each side, connected to the other; with `bad_key`,
/// `a`'s is given a ring key `b` never registered, so `a`'s first write
/// fails both QPs (`b`'s as the responder, through an async event only).
fn connect_endpoints(
    a: &mut Side<u32>,
    b: &mut Side<u32>,
    bad_key: bool,
) -> (copyrpc::Endpoint, copyrpc::Endpoint) {
    let (ea, eb) = (a.ctx.endpoint().unwrap(), b.ctx.endpoint().unwrap());
    let (ia, mut ib) = (a.ctx.local_info(ea).unwrap(), b.ctx.local_info(eb).unwrap());
    if bad_key {
        ib.ring_rkey ^= 0x100;
    }
    a.ctx.connect(ea, &ib).unwrap();
    b.ctx.connect(eb, &ia).unwrap();
    (ea, eb)
}

#[test]
fn a_remote_access_error_fails_both_endpoints_and_returns_every_call() {
    let (mut a, mut b) = manual_sides();
    let (ea, eb) = connect_endpoints(&mut a, &mut b, true);
    // b has calls in flight too: they must come back when its QP fails.
    for i in 0..3 {
        b.ctx.call(eb, b"b", 100 + i).unwrap();
    }
    b.ctx.flush();
    for i in 0..5 {
        a.ctx.call(ea, b"a", i).unwrap();
    }
    let start = Instant::now();
    while a.done.len() < 5 || b.done.len() < 3 {
        a.poll();
        b.poll();
        while let Some(r) = b.ctx.recv() {
            drop(r);
        }
        while let Some(r) = a.ctx.recv() {
            drop(r);
        }
        assert!(start.elapsed() < TIMEOUT, "a {:?} b {:?}", a.done, b.done);
    }
    let want_a = EndpointError::Completion {
        endpoint: 0,
        syndrome: Syndrome::RemoteAccess,
    };
    assert!(
        a.done
            .iter()
            .all(|(_, r)| r == &Err(RpcError::Endpoint(want_a.clone()))),
        "{:?}",
        a.done
    );
    let mut ua: Vec<u32> = a.done.iter().map(|(u, _)| *u).collect();
    ua.sort_unstable();
    assert_eq!(ua, [0, 1, 2, 3, 4]);
    // The responder's QP failed too (IBA class C), and copyrpc learned it
    // from the async event, not from a completion.
    assert_eq!(
        b.ctx.endpoint_error(eb),
        Some(&EndpointError::Async {
            endpoint: 0,
            event: AsyncEvent::QpAccessError {
                qpn: b.ctx.qp(eb).unwrap().qpn()
            }
        })
    );
    let mut ub: Vec<u32> = b.done.iter().map(|(u, _)| *u).collect();
    ub.sort_unstable();
    assert_eq!(ub, [100, 101, 102]);
    // New calls are refused with the endpoint's error, data handed back.
    let e = a.ctx.call(ea, b"again", 9).unwrap_err();
    assert_eq!((e.kind, e.user_data), (CallErrorKind::Endpoint(want_a), 9));
}

/// A responder's QP failure, which only its asynchronous event reports,
/// is noticed even when every idle poll flushes and steps the device
/// (calls keep being queued on another endpoint): the events are read
/// before the step, not only in idle polls that did not step.
#[test]
fn an_async_failure_is_noticed_while_every_idle_poll_steps() {
    let (mut a, mut b) = manual_sides();
    let (ea0, eb0) = connect_endpoints(&mut a, &mut b, true);
    let (_, eb1) = connect_endpoints(&mut a, &mut b, false);
    // One bad WRITE_IMM into b's ring: b's QP of endpoint 0 fails as the
    // responder (an event only; b has nothing in flight there).
    a.ctx.call(ea0, b"bad", 0).unwrap();
    a.poll();
    assert!(b.ctx.endpoint_error(eb0).is_none());
    // a never answers: a poll of b finds at most the completion of a
    // signaled send; each that finds nothing flushes the call just queued
    // on endpoint 1 and steps the device.
    let mut polls = 0;
    while b.ctx.endpoint_error(eb0).is_none() {
        assert!(polls < 2 * 64, "not noticed in {polls} polls");
        b.ctx.call(eb1, b"keep", polls).unwrap();
        b.poll();
        polls += 1;
    }
    assert!(
        matches!(
            b.ctx.endpoint_error(eb0),
            Some(EndpointError::Async {
                endpoint: 0,
                event: AsyncEvent::QpAccessError { .. }
            })
        ),
        "{:?}",
        b.ctx.endpoint_error(eb0)
    );
    assert!(b.ctx.endpoint_error(eb1).is_none());
}

#[test]
fn a_dropped_peer_fails_calls_with_transport_retry_exceeded() {
    let (mut a, b) = pair::<u32>(Progress::Manual, 1, config(Limits::default()));
    let peer = b.ctx.local_info(b.eps[0]).unwrap();
    a.ctx.device().faults().unwrap().drop_peer(&peer.qp);
    for i in 0..4 {
        a.ctx.call(a.eps[0], b"x", i).unwrap();
    }
    wait_done(&mut a, 4, None);
    for (_, r) in &a.done {
        assert_eq!(
            r,
            &Err(RpcError::Endpoint(EndpointError::Completion {
                endpoint: 0,
                syndrome: Syndrome::TransportRetryExceeded
            }))
        );
    }
}

#[test]
fn a_peer_that_stops_polling_makes_calls_time_out_and_late_replies_are_discarded() {
    let cfg = Config {
        call_timeout: Some(Duration::from_millis(50)),
        ..config(Limits {
            max_inflight: 2,
            ..Limits::default()
        })
    };
    let (mut a, mut b) = pair::<u32>(Progress::Manual, 1, cfg);
    a.ctx.call(a.eps[0], b"one", 1).unwrap();
    a.ctx.call(a.eps[0], b"two", 2).unwrap();
    let start = Instant::now();
    // b's device runs (its QP acknowledges), but b never polls for requests.
    wait_done(
        &mut a,
        2,
        Some(&mut || {
            b.ctx.device().progress().unwrap();
        }),
    );
    assert!(start.elapsed() >= Duration::from_millis(50));
    assert!(a.done.iter().all(|(_, r)| r == &Err(RpcError::Timeout)));
    // The reply space stays reserved until the late replies arrive.
    assert_eq!(a.ctx.in_flight(a.eps[0]), 2);
    let e = a.ctx.call(a.eps[0], b"three", 3).unwrap_err();
    assert_eq!(e.kind, CallErrorKind::NoRoom);
    // b wakes up and answers: the late replies are discarded, no callback.
    run(
        &mut a,
        &mut b,
        |d| d.to_vec(),
        |a, _| a.ctx.in_flight(a.eps[0]) == 0,
    );
    assert_eq!(a.done.len(), 2);
    a.ctx.call(a.eps[0], b"three", 3).unwrap();
    run(&mut a, &mut b, |d| d.to_vec(), |a, _| a.done.len() == 3);
    assert_eq!(a.done[2], (3, Ok(b"three".to_vec())));
}

#[test]
fn an_exhausted_srq_is_refilled_and_every_call_completes() {
    let cfg = Config {
        srq_depth: 4,
        ..config(Limits {
            max_inflight: 8,
            ..Limits::default()
        })
    };
    let (mut a, mut b) = pair::<(usize, u32)>(Progress::Manual, 8, cfg);
    // Eight endpoints each flush their own batch: twice the SRQ's four
    // receives. b's device runs but b does not poll, so nothing refills it:
    // the requesters are RNR-NAKed and retry.
    for round in 0..4u32 {
        for (i, &ep) in a.eps.iter().enumerate() {
            a.ctx.call(ep, &[i as u8, round as u8], (i, round)).unwrap();
        }
        a.ctx.flush();
    }
    for _ in 0..50 {
        a.ctx.device().progress().unwrap();
        b.ctx.device().progress().unwrap();
    }
    assert!(a.done.is_empty());
    run(&mut a, &mut b, |d| d.to_vec(), |a, _| a.done.len() == 32);
    for ((i, round), r) in &a.done {
        assert_eq!(r.as_ref().unwrap(), &[*i as u8, *round as u8]);
    }
}
