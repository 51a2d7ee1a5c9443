//! copyrpc over the software device, two contexts in one process.

mod common;

use common::{config, pair, run};
use copyrpc::{CallErrorKind, Limits, RpcError};
use mlx5::Progress;

fn echo(d: &[u8]) -> Vec<u8> {
    d.iter().map(|b| b.wrapping_add(1)).collect()
}

#[test]
fn ping_pong_round_trips_in_order_with_user_data() {
    for progress in [Progress::Manual, Progress::Background] {
        let (mut a, mut b) = pair::<u64>(progress, 1, config(Limits::default()));
        for i in 0..500u64 {
            let msg = i.to_le_bytes();
            a.ctx.call(a.eps[0], &msg, i).unwrap();
            run(&mut a, &mut b, echo, |a, _| a.done.len() as u64 == i + 1);
            let (u, r) = a.done.last().unwrap();
            assert_eq!(*u, i);
            assert_eq!(r.as_ref().unwrap(), &echo(&msg));
        }
    }
}

/// On manual devices, one poll of the caller that finds nothing flushes
/// the call and steps the device, so the call has left when the poll
/// returns: the other side receives it without the caller polling again,
/// and its reply comes back within one more poll of each side.
#[test]
fn an_idle_poll_sends_the_call_it_flushes() {
    let (mut a, mut b) = pair::<u64>(Progress::Manual, 1, config(Limits::default()));
    a.ctx.call(a.eps[0], b"ping", 7).unwrap();
    assert_eq!(a.poll(), 0);
    b.poll();
    let req = b
        .ctx
        .recv()
        .expect("the call arrived after one poll of the caller");
    assert_eq!(req.data(), b"ping");
    b.ctx.reply(req, b"pong").unwrap();
    assert_eq!(b.poll(), 0);
    a.poll();
    assert_eq!(
        a.done.len(),
        1,
        "the reply arrived after one poll of the server"
    );
    assert_eq!(a.done[0].1.as_deref().unwrap(), b"pong");
}

#[test]
fn many_endpoints_each_get_their_own_replies() {
    let (mut a, mut b) = pair::<(usize, u32)>(Progress::Manual, 16, config(Limits::default()));
    for round in 0..20u32 {
        for (i, &ep) in a.eps.iter().enumerate() {
            let msg = [i as u8, round as u8, 7];
            a.ctx.call(ep, &msg, (i, round)).unwrap();
        }
        let want = (round as usize + 1) * 16;
        run(&mut a, &mut b, |d| d.to_vec(), |a, _| a.done.len() == want);
    }
    for ((i, round), r) in &a.done {
        assert_eq!(r.as_ref().unwrap(), &[*i as u8, *round as u8, 7]);
    }
}

/// Bytes of call `i` of a stream, `len` long.
fn pattern(i: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|k| (i as u8).wrapping_mul(31).wrapping_add(k as u8) ^ (k >> 8) as u8)
        .collect()
}

#[test]
fn rings_wrap_at_every_offset_with_every_byte_checked() {
    let lim = Limits {
        ring: 1024,
        max_inflight: 2,
        max_call: 64,
        max_reply: 64,
        max_batch: 160,
    };
    for shift in 0..(1024 / 8) {
        let (mut a, mut b) = pair::<u64>(Progress::Manual, 1, config(lim));
        // An 8-byte call and its reply move both rings 32 bytes: `shift`
        // of them, then calls of every size, each answered before the next.
        for i in 0..shift + 60 {
            let len = if i < shift { 0 } else { (i * 7) % 65 };
            let next = i as u64 + 1;
            a.ctx
                .call(a.eps[0], &pattern(i as u64, len), i as u64)
                .unwrap();
            run(
                &mut a,
                &mut b,
                |d| d.iter().rev().copied().collect(),
                |a, _| a.done.len() as u64 == next,
            );
        }
        for (i, r) in &a.done {
            let len = if (*i as usize) < shift {
                0
            } else {
                (*i as usize * 7) % 65
            };
            let want: Vec<u8> = pattern(*i, len).into_iter().rev().collect();
            assert_eq!(r.as_ref().unwrap(), &want, "shift {shift} call {i}");
        }
    }
}

#[test]
fn tiny_rings_carry_replies_much_larger_than_requests() {
    let lim = Limits {
        ring: 4096,
        max_inflight: 2,
        max_call: 16,
        max_reply: 480,
        max_batch: 512,
    };
    let (mut a, mut b) = pair::<u64>(Progress::Manual, 1, config(lim));
    let total = 300u64;
    let mut sent = 0;
    while (a.done.len() as u64) < total {
        while sent < total {
            match a.ctx.call(a.eps[0], &sent.to_le_bytes(), sent) {
                Ok(()) => sent += 1,
                Err(e) if e.kind == CallErrorKind::NoRoom => break,
                Err(e) => panic!("{e}"),
            }
        }
        let want = a.done.len() + 1;
        run(
            &mut a,
            &mut b,
            |d| pattern(u64::from_le_bytes(d.try_into().unwrap()), 480),
            |a, _| a.done.len() >= want,
        );
    }
    for (i, r) in &a.done {
        assert_eq!(r.as_ref().unwrap(), &pattern(*i, 480));
    }
}

#[test]
fn both_sides_call_each_other_under_load_with_every_byte_verified() {
    for progress in [Progress::Manual, Progress::Background] {
        let lim = Limits {
            ring: 8192,
            max_inflight: 16,
            max_call: 200,
            max_reply: 200,
            max_batch: 1024,
        };
        let (mut a, mut b) = pair::<u64>(progress, 2, config(lim));
        let total = 3000u64;
        let (mut sa, mut sb) = (0u64, 0u64);
        let answer = |d: &[u8]| {
            let i = u64::from_le_bytes(d[..8].try_into().unwrap());
            assert_eq!(d, pattern_call(i).as_slice(), "request {i} arrived intact");
            pattern(i ^ 0xffff, (i % 200) as usize)
        };
        let start = std::time::Instant::now();
        while a.done.len() < total as usize || b.done.len() < total as usize {
            for (side, sent) in [(&mut a, &mut sa), (&mut b, &mut sb)] {
                while *sent < total {
                    let ep = side.eps[(*sent % 2) as usize];
                    match side.ctx.call(ep, &pattern_call(*sent), *sent) {
                        Ok(()) => *sent += 1,
                        Err(e) if e.kind == CallErrorKind::NoRoom => break,
                        Err(e) => panic!("{e}"),
                    }
                }
                side.poll();
                while let Some(req) = side.ctx.recv() {
                    let out = answer(req.data());
                    side.ctx.reply(req, &out).unwrap();
                }
            }
            assert!(start.elapsed() < common::TIMEOUT, "stalled");
        }
        for side in [&a, &b] {
            let mut seen: Vec<u64> = side.done.iter().map(|(i, _)| *i).collect();
            seen.sort_unstable();
            assert_eq!(
                seen,
                (0..total).collect::<Vec<_>>(),
                "each call answered once"
            );
            for (i, r) in &side.done {
                assert_eq!(
                    r.as_ref().unwrap(),
                    &pattern(i ^ 0xffff, (i % 200) as usize)
                );
            }
        }
    }
}

/// A request: its index, then bytes derived from it (8..200 bytes).
fn pattern_call(i: u64) -> Vec<u8> {
    let mut v = i.to_le_bytes().to_vec();
    v.extend(pattern(i, (i % 193) as usize));
    v
}

#[test]
fn deferred_replies_out_of_order_reach_their_callers() {
    let (mut a, mut b) = pair::<u32>(Progress::Manual, 1, config(Limits::default()));
    for i in 0..32u32 {
        a.ctx.call(a.eps[0], &i.to_le_bytes(), i).unwrap();
    }
    let mut held = Vec::new();
    let start = std::time::Instant::now();
    while held.len() < 32 {
        a.poll();
        b.poll();
        while let Some(r) = b.ctx.recv() {
            held.push(r);
        }
        assert!(start.elapsed() < common::TIMEOUT);
    }
    // Zero-copy views stay intact while held, even as more traffic flows.
    while let Some(r) = held.pop() {
        let i = u32::from_le_bytes(r.data().try_into().unwrap());
        b.ctx.reply(r, &(i * 10).to_le_bytes()).unwrap();
        b.poll();
        a.poll();
    }
    run(&mut a, &mut b, |d| d.to_vec(), |a, _| a.done.len() == 32);
    let order: Vec<u32> = a.done.iter().map(|(u, _)| *u).collect();
    assert_eq!(
        order,
        (0..32).rev().collect::<Vec<_>>(),
        "answered newest first"
    );
    for (u, r) in &a.done {
        assert_eq!(r.as_ref().unwrap(), &(u * 10).to_le_bytes());
    }
}

/// A call that gets no answer times out even when no poll of its
/// context is ever idle (answers to other calls, on another endpoint whose
/// ring the held request does not block, keep coming): deadlines are also
/// looked at in polls that find completions.
#[test]
fn a_call_times_out_while_every_poll_finds_answers() {
    let timeout = std::time::Duration::from_millis(50);
    let cfg = copyrpc::Config {
        call_timeout: Some(timeout),
        ..config(Limits::default())
    };
    let (mut a, mut b) = pair::<u32>(Progress::Manual, 2, cfg);
    a.ctx.call(a.eps[0], b"hold", 0).unwrap();
    let mut held = Vec::new();
    let start = std::time::Instant::now();
    let mut i = 0u32;
    while !a.done.iter().any(|(u, _)| *u == 0) {
        i += 1;
        a.ctx.call(a.eps[1], &i.to_le_bytes(), i).unwrap();
        a.ctx.flush();
        let found = a.poll();
        // From the second round on, each poll of `a` finds the answer to
        // the call before: none is idle.
        assert!(i < 2 || found > 0, "poll {i} of the caller was idle");
        b.poll();
        while let Some(r) = b.ctx.recv() {
            if r.data() == b"hold" {
                held.push(r);
            } else {
                let d = r.data().to_vec();
                b.ctx.reply(r, &d).unwrap();
            }
        }
        b.poll();
        assert!(
            start.elapsed() < common::TIMEOUT,
            "no timeout after {i} busy polls"
        );
    }
    assert!(start.elapsed() >= timeout);
    assert_eq!(held.len(), 1, "the held call reached the server");
    let timed_out: Vec<_> = a.done.iter().filter(|(_, r)| r.is_err()).collect();
    assert_eq!(timed_out, [&(0, Err(RpcError::Timeout))]);
}

/// A call queued without a flush leaves even when every poll of its
/// context finds completions (requests from the other side, on another
/// endpoint, arrive in each): busy polls flush too, every fourth.
#[test]
fn a_queued_call_leaves_while_every_poll_finds_requests() {
    let (mut a, mut b) = pair::<u32>(Progress::Manual, 2, config(Limits::default()));
    a.ctx.call(a.eps[0], b"queued", 0).unwrap();
    let mut busy_polls = 0;
    let mut arrived = false;
    while !arrived {
        assert!(
            busy_polls <= 8,
            "the call did not leave in {busy_polls} busy polls"
        );
        // `b` keeps `a` busy: a call on endpoint 1 every round, sent and
        // executed at once (in this process it lands in `a`'s ring and CQ).
        b.ctx.call(b.eps[1], b"busy", 1).unwrap();
        b.ctx.flush();
        b.poll();
        assert!(a.poll() > 0, "a poll of `a` found nothing");
        busy_polls += 1;
        while let Some(r) = a.ctx.recv() {
            a.ctx.reply(r, b"ok").unwrap();
        }
        b.poll();
        while let Some(r) = b.ctx.recv() {
            assert_eq!(r.data(), b"queued");
            arrived = true;
            b.ctx.reply(r, b"done").unwrap();
        }
    }
    run(&mut a, &mut b, echo, |a, _| !a.done.is_empty());
    assert_eq!(a.done, [(0, Ok(b"done".to_vec()))]);
}

#[test]
fn a_request_dropped_unanswered_tells_its_caller() {
    let (mut a, mut b) = pair::<u8>(Progress::Manual, 1, config(Limits::default()));
    a.ctx.call(a.eps[0], b"please", 1).unwrap();
    a.ctx.call(a.eps[0], b"answer", 2).unwrap();
    let start = std::time::Instant::now();
    let mut got = 0;
    while a.done.len() < 2 {
        a.poll();
        b.poll();
        while let Some(r) = b.ctx.recv() {
            got += 1;
            if r.data() == b"please" {
                drop(r);
            } else {
                b.ctx.reply(r, b"ok").unwrap();
            }
        }
        assert!(start.elapsed() < common::TIMEOUT);
    }
    assert_eq!(got, 2);
    a.done.sort_by_key(|(u, _)| *u);
    assert_eq!(a.done[0], (1, Err(RpcError::Dropped)));
    assert_eq!(a.done[1], (2, Ok(b"ok".to_vec())));
    assert_eq!(a.ctx.in_flight(a.eps[0]), 0);
}

#[test]
fn oversized_calls_and_replies_are_refused_with_the_data_handed_back() {
    let lim = Limits {
        max_call: 64,
        max_reply: 32,
        ..Limits::default()
    };
    let (mut a, mut b) = pair::<&str>(Progress::Manual, 1, config(lim));
    let e = a.ctx.call(a.eps[0], &[0; 65], "big").unwrap_err();
    assert_eq!(e.kind, CallErrorKind::TooLarge { len: 65, max: 64 });
    assert_eq!(e.user_data, "big");
    a.ctx.call(a.eps[0], b"x", "small").unwrap();
    let start = std::time::Instant::now();
    while a.done.is_empty() {
        a.poll();
        b.poll();
        if let Some(r) = b.ctx.recv() {
            let e = b.ctx.reply(r, &[0; 33]).unwrap_err();
            assert_eq!(e, copyrpc::ReplyError::TooLarge { len: 33, max: 32 });
        }
        assert!(start.elapsed() < common::TIMEOUT);
    }
    assert_eq!(a.done[0], ("small", Err(RpcError::Dropped)));
}

#[test]
fn calls_beyond_max_inflight_are_refused_until_replies_arrive() {
    let lim = Limits {
        max_inflight: 4,
        ..Limits::default()
    };
    let (mut a, mut b) = pair::<u32>(Progress::Manual, 1, config(lim));
    for i in 0..4 {
        a.ctx.call(a.eps[0], b"x", i).unwrap();
    }
    let e = a.ctx.call(a.eps[0], b"x", 4).unwrap_err();
    assert_eq!((e.kind, e.user_data), (CallErrorKind::NoRoom, 4));
    run(&mut a, &mut b, |d| d.to_vec(), |a, _| a.done.len() == 4);
    a.ctx.call(a.eps[0], b"x", 4).unwrap();
}

/// The largest `max_inflight` the limits accept (2^16) gives every call
/// id a slot (the slot list was once built with the count cast to u16:
/// none, and every call refused).
#[test]
fn the_largest_max_inflight_carries_calls() {
    let lim = Limits {
        ring: 4 << 20,
        max_inflight: 1 << 16,
        max_call: 8,
        max_reply: 8,
        max_batch: 4096,
    };
    lim.validate().unwrap();
    let (mut a, mut b) = pair::<u32>(Progress::Manual, 1, config(lim));
    for i in 0..1000u32 {
        a.ctx.call(a.eps[0], &i.to_le_bytes(), i).unwrap();
    }
    run(&mut a, &mut b, |d| d.to_vec(), |a, _| a.done.len() == 1000);
    for (i, (u, r)) in a.done.iter().enumerate() {
        assert_eq!(
            (*u, r.as_deref()),
            (i as u32, Ok(&(i as u32).to_le_bytes()[..]))
        );
    }
}

#[test]
fn malformed_endpoint_info_and_mismatched_limits_are_clear_errors() {
    use copyrpc::{EndpointInfo, Error};
    let (mut a, b) = pair::<u8>(Progress::Manual, 1, config(Limits::default()));
    let good = b.ctx.local_info(b.eps[0]).unwrap();
    let bytes = good.encode();
    assert_eq!(EndpointInfo::decode(&bytes).unwrap(), good);
    assert_eq!(EndpointInfo::from_hex(&good.to_hex()).unwrap(), good);
    let mut bad_magic = bytes;
    bad_magic[0] ^= 1;
    let mut bad_version = bytes;
    bad_version[4] = 9;
    let mut bad_reserved = bytes;
    bad_reserved[75] = 1;
    let mut bad_limits = bytes;
    bad_limits[52..56].copy_from_slice(&1000u32.to_le_bytes()); // not a power of two
    for (what, b) in [
        ("magic", &bad_magic[..]),
        ("version", &bad_version[..]),
        ("reserved", &bad_reserved[..]),
        ("limits", &bad_limits[..]),
        ("length", &bytes[..79]),
    ] {
        assert!(
            matches!(EndpointInfo::decode(b), Err(Error::BadInfo(_))),
            "{what}"
        );
    }
    assert!(matches!(
        EndpointInfo::from_hex("zz"),
        Err(Error::BadInfo(_))
    ));
    // A peer built with other limits is refused at connect, clearly.
    let mut other = good;
    other.limits.max_reply = 512;
    let ep = a.ctx.endpoint().unwrap();
    let e = a.ctx.connect(ep, &other).unwrap_err();
    assert!(
        matches!(&e, Error::BadInfo(m) if m.contains("limits")),
        "{e}"
    );
    // So is a ring that would end past the address space (each WRITE goes
    // to the ring's address plus an offset: this overflowed, a panic in
    // a debug build).
    let mut past = good;
    past.ring_addr = u64::MAX - 8;
    let e = a.ctx.connect(ep, &past).unwrap_err();
    assert!(
        matches!(&e, Error::BadInfo(m) if m.contains("address space")),
        "{e}"
    );
    // Connecting twice is refused; so is an endpoint of nobody.
    let e = a.ctx.connect(a.eps[0], &good).unwrap_err();
    assert!(matches!(e, Error::AlreadyConnected(0)), "{e}");
    let nobody = endpoint_of_a_larger_context();
    assert!(matches!(
        a.ctx.local_info(nobody),
        Err(Error::NoEndpoint(5))
    ));
    // A handle of another context with an index this one has: refused too.
    let foreign = b.eps[0];
    assert!(matches!(
        a.ctx.local_info(foreign),
        Err(Error::NoEndpoint(0))
    ));
    let e = a.ctx.call(nobody, b"x", 1).unwrap_err();
    assert_eq!(
        (e.kind, e.user_data),
        (copyrpc::CallErrorKind::WrongContext, 1)
    );
}

/// An endpoint handle of another context with more endpoints: not one of
/// a two-endpoint context's.
fn endpoint_of_a_larger_context() -> copyrpc::Endpoint {
    let (mut c, _) = pair::<u8>(Progress::Manual, 0, config(Limits::default()));
    for _ in 0..5 {
        c.ctx.endpoint().unwrap();
    }
    c.ctx.endpoint().unwrap()
}

#[test]
fn impossible_configurations_are_refused() {
    use copyrpc::{Config, Context, Error};
    let dev = mlx5::Context::soft(Progress::Manual);
    let bad = [
        Config {
            sq_depth: 2,
            ..Config::default()
        },
        Config {
            srq_depth: 1,
            ..Config::default()
        },
        Config {
            cq_depth: 16,
            ..Config::default()
        },
        Config {
            limits: Limits {
                ring: 100,
                ..Limits::default()
            },
            ..Config::default()
        },
    ];
    for cfg in bad {
        let e = Context::<()>::new(&dev, cfg).unwrap_err();
        assert!(matches!(e, Error::Config(_) | Error::Limits(_)), "{e}");
    }
    // More endpoints than the CQ can hold completions for.
    let cfg = Config {
        cq_depth: 2048,
        srq_depth: 1024,
        sq_depth: 512,
        ..Config::default()
    };
    let mut ctx = Context::<()>::new(&dev, cfg).unwrap();
    ctx.endpoint().unwrap();
    ctx.endpoint().unwrap();
    assert!(matches!(ctx.endpoint(), Err(Error::Config(_))));
}

#[test]
fn a_call_on_another_contexts_endpoint_is_refused_with_its_data() {
    let (mut a, b) = pair::<u8>(Progress::Manual, 1, config(Limits::default()));
    let e = a.ctx.call(b.eps[0], b"hi", 9).unwrap_err();
    assert_eq!(e.kind, copyrpc::CallErrorKind::WrongContext);
    assert_eq!(e.user_data, 9);
}

#[test]
fn a_request_replied_through_another_context_is_refused_and_its_caller_told() {
    let (mut a, mut b) = pair::<u8>(Progress::Manual, 1, config(Limits::default()));
    let (_c, mut d) = pair::<u8>(Progress::Manual, 1, config(Limits::default()));
    a.ctx.call(a.eps[0], b"hi", 7).unwrap();
    let start = std::time::Instant::now();
    let req = loop {
        a.poll();
        b.poll();
        if let Some(r) = b.ctx.recv() {
            break r;
        }
        assert!(start.elapsed() < common::TIMEOUT);
    };
    assert_eq!(
        d.ctx.reply(req, b"wrong").unwrap_err(),
        copyrpc::ReplyError::WrongContext
    );
    d.poll();
    run(&mut a, &mut b, |d| d.to_vec(), |a, _| !a.done.is_empty());
    assert_eq!(a.done[0], (7, Err(RpcError::Dropped)));
}
