//! Flux and call/reply: all-to-all stress on real threads for every
//! transport, out-of-order deferred replies, and every error.

use inproc::flux::{self, FluxConfig, FluxError, FluxNode, ReplyError};
use inproc::rpc::{self, CallError};
use inproc::{Disconnected, FastForward, Lamport, Onesided, Transport};

/// Every node calls every other node `calls` times and notifies it once;
/// each response must carry the user data of its own call.
fn all_to_all<T: Transport>(n: usize, calls: u64) {
    let cfg = FluxConfig {
        capacity: 64,
        max_in_flight: 8,
    };
    let nodes = flux::mesh::<T, (usize, u64), u64, (usize, u64)>(n, cfg);
    let handles: Vec<_> = nodes
        .into_iter()
        .map(|mut node| {
            std::thread::spawn(move || {
                let me = node.id();
                let n = node.len();
                let mut next = vec![0u64; n];
                let mut done = 0u64;
                let mut notified = 0usize;
                let total = calls * (n as u64 - 1);
                let mut answered_all = false;
                let mut idle = 0u64;
                while done < total || notified < n - 1 || !answered_all {
                    for to in (0..n).filter(|&t| t != me) {
                        if next[to] < calls {
                            match node.call(to, (me, next[to]), (to, next[to])) {
                                Ok(()) => next[to] += 1,
                                Err(FluxError::Full(_)) => {}
                                Err(e) => panic!("node {me}: call failed: {e}"),
                            }
                        }
                        if next[to] == calls {
                            node.notify(to, (me, u64::MAX)).unwrap();
                            next[to] += 1;
                        }
                    }
                    done += node.poll(|from, (to, seq), resp| {
                        assert_eq!(from, to, "response from the wrong peer");
                        assert_eq!(resp, Ok(seq * 2 + me as u64), "response to another call");
                    }) as u64;
                    let mut got = false;
                    while let Some(req) = node.try_recv() {
                        got = true;
                        let (caller, x) = *req.data();
                        assert_eq!(caller, req.from());
                        if req.is_call() {
                            req.reply(x * 2 + caller as u64).unwrap();
                        } else {
                            assert_eq!(x, u64::MAX);
                            notified += 1;
                        }
                    }
                    // Keep serving until every peer has sent its last call.
                    answered_all = notified == n - 1;
                    if !got {
                        idle += 1;
                        if idle.is_multiple_of(64) {
                            std::thread::yield_now();
                        }
                    }
                }
                // Stay reachable until the others are done too: answer
                // late calls until they drop their nodes.
                node
            })
        })
        .collect();
    let nodes: Vec<FluxNode<T, _, _, _>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    drop(nodes);
}

fn deferred_out_of_order<T: Transport>() {
    let mut nodes = flux::mesh::<T, u32, u32, u32>(2, FluxConfig::default());
    let mut b = nodes.pop().unwrap();
    let mut a = nodes.pop().unwrap();
    for i in 0..10 {
        a.call(1, i, 100 + i).unwrap();
    }
    a.flush();
    let mut held = Vec::new();
    while held.len() < 10 {
        if let Some(req) = b.try_recv() {
            let (x, d) = req.defer();
            held.push((x, d.unwrap()));
        }
    }
    // Answer newest first.
    while let Some((x, d)) = held.pop() {
        assert_eq!(d.to(), 0);
        b.reply(d, x * 3).unwrap();
    }
    b.flush();
    let mut got = Vec::new();
    while got.len() < 10 {
        a.poll(|from, user, resp| got.push((from, user, resp)));
    }
    for (from, user, resp) in got {
        assert_eq!(from, 1);
        assert_eq!(resp, Ok((user - 100) * 3), "user data of another call");
    }
    assert_eq!(a.in_flight(1), 0);
}

/// A deferred call answered through another node (of the same mesh, or
/// the node of the same index in another mesh) is refused with the response
/// and the `DeferredReply` handed back, and no reply reaches anyone; the
/// handle still completes the call through the node that took it. (It used
/// to be accepted: the reply went down another node's queue, where it was
/// dropped or, worse, answered that node's own call with the same id.)
fn deferred_reply_is_answered_only_by_its_own_node<T: Transport>() {
    let mut nodes = flux::mesh::<T, u32, u32, &str>(3, FluxConfig::default());
    let mut elsewhere = flux::mesh::<T, u32, u32, &str>(3, FluxConfig::default());
    let mut c = nodes.pop().unwrap();
    let mut b = nodes.pop().unwrap();
    let mut a = nodes.pop().unwrap();
    // Both calls get call id 0 on their own pair.
    a.call(1, 5, "to b").unwrap();
    a.call(2, 7, "to c").unwrap();
    a.flush();
    let d = loop {
        if let Some(req) = b.try_recv() {
            break req.defer().1.unwrap();
        }
    };
    assert_eq!((d.node(), d.to()), (1, 0));

    let (resp, d) = match c.reply(d, 50) {
        Err(ReplyError::WrongNode(resp, d)) => (resp, d),
        other => panic!("answered through node 2: {other:?}"),
    };
    let (resp, d) = match elsewhere[1].reply(d, resp) {
        Err(ReplyError::WrongNode(resp, d)) => (resp, d),
        other => panic!("answered through node 1 of another mesh: {other:?}"),
    };
    c.flush();
    elsewhere[1].flush();
    let mut got = Vec::new();
    for _ in 0..100 {
        a.poll(|from, user, resp| got.push((from, user, resp)));
        elsewhere[0].poll(|_, user, _| panic!("another mesh got a reply for {user}"));
    }
    assert_eq!(got, [], "a refused reply was delivered");
    assert_eq!((a.in_flight(1), a.in_flight(2)), (1, 1));

    b.reply(d, resp).unwrap();
    b.flush();
    while got.is_empty() {
        a.poll(|from, user, resp| got.push((from, user, resp)));
    }
    assert_eq!(got, [(1, "to b", Ok(50))]);
    assert_eq!((a.in_flight(1), a.in_flight(2)), (0, 1));
}

/// Calls in flight to a node that is dropped come back from `poll`, each
/// once, with their user data and a `Disconnected` result, after the
/// replies it sent before it went; `in_flight` falls to 0, and other peers
/// are unaffected. (They used to stay in flight forever, their user data
/// never returned.)
fn dropped_peer_hands_back_calls_in_flight<T: Transport>() {
    let cfg = FluxConfig {
        capacity: 8,
        max_in_flight: 4,
    };
    let mut nodes = flux::mesh::<T, u32, u32, &str>(3, cfg);
    let mut c = nodes.pop().unwrap();
    let mut b = nodes.pop().unwrap();
    let mut a = nodes.pop().unwrap();
    a.call(1, 1, "answered").unwrap();
    a.call(1, 2, "taken, not answered").unwrap();
    a.call(1, 3, "never taken").unwrap();
    a.call(2, 4, "to c").unwrap();
    a.flush();
    let mut taken = 0;
    while taken < 2 {
        if let Some(req) = b.try_recv() {
            taken += 1;
            if *req.data() == 1 {
                req.reply(10).unwrap();
            } else {
                drop(req);
            }
        }
    }
    b.flush();
    drop(b);

    let mut got = Vec::new();
    for _ in 0..1000 {
        a.poll(|from, user, resp| got.push((from, user, resp)));
        if a.in_flight(1) == 0 {
            break;
        }
    }
    assert_eq!(
        a.in_flight(1),
        0,
        "calls to the dropped peer still in flight"
    );
    assert_eq!(
        got,
        [
            (1, "answered", Ok(10)),
            (1, "taken, not answered", Err(Disconnected(()))),
            (1, "never taken", Err(Disconnected(()))),
        ]
    );
    for _ in 0..10 {
        a.poll(|from, user, _| panic!("{user} from {from} delivered twice"));
    }
    assert_eq!(a.in_flight(2), 1);
    loop {
        if let Some(req) = c.try_recv() {
            req.reply(40).unwrap();
            break;
        }
    }
    c.flush();
    got.clear();
    while got.is_empty() {
        a.poll(|from, user, resp| got.push((from, user, resp)));
    }
    assert_eq!(got, [(2, "to c", Ok(40))]);
}

fn errors<T: Transport>() {
    let cfg = FluxConfig {
        capacity: 4,
        max_in_flight: 2,
    };
    let mut nodes = flux::mesh::<T, u32, u32, &str>(3, cfg);
    let c = nodes.pop().unwrap();
    let mut b = nodes.pop().unwrap();
    let mut a = nodes.pop().unwrap();
    assert_eq!(
        a.call(0, 1, "self"),
        Err(FluxError::InvalidPeer((1, "self")))
    );
    assert_eq!(
        a.call(9, 1, "nobody"),
        Err(FluxError::InvalidPeer((1, "nobody")))
    );
    assert_eq!(a.notify(3, 5), Err(FluxError::InvalidPeer(5)));
    // In-flight limit towards one peer.
    a.call(1, 1, "x").unwrap();
    a.call(1, 2, "y").unwrap();
    assert_eq!(a.call(1, 3, "z"), Err(FluxError::Full((3, "z"))));
    assert_eq!(a.in_flight(1), 2);
    // Other peers are unaffected.
    a.call(2, 4, "w").unwrap();
    // A notification takes no reply.
    a.notify(1, 9).unwrap();
    a.flush();
    let mut seen_notify = false;
    while !seen_notify {
        if let Some(req) = b.try_recv() {
            if req.is_call() {
                let x = *req.data();
                req.reply(x).unwrap();
            } else {
                assert_eq!(req.reply(0), Err(FluxError::NotACall(0)));
                seen_notify = true;
            }
        }
    }
    // A dropped peer is reported as disconnected, values handed back: the
    // message, and the call in flight to it.
    drop(c);
    assert!(a.is_disconnected(2));
    assert_eq!(a.notify(2, 7), Err(FluxError::Disconnected(7)));
    let mut got = Vec::new();
    for _ in 0..100_000 {
        b.flush();
        a.poll(|from, user, resp| got.push((from, user, resp)));
        if got.len() == 3 {
            break;
        }
    }
    got.sort_by_key(|&(from, user, _)| (from, user));
    assert_eq!(
        got,
        [
            (1, "x", Ok(1)),
            (1, "y", Ok(2)),
            (2, "w", Err(Disconnected(())))
        ]
    );
    assert_eq!(
        a.call(2, 8, "late"),
        Err(FluxError::Disconnected((8, "late")))
    );
}

fn rpc_pair_reserves_reply_room<T: Transport>() {
    // Request queue of 8, at most 3 in flight: the 4th call is refused and
    // every admitted call's reply fits without the caller polling.
    let (mut caller, mut responder) = rpc::pair::<T, u8, u8, u8>(8, 3);
    for i in 0..3 {
        caller.call(i, i).unwrap();
    }
    assert_eq!(caller.call(3, 3), Err(CallError::Full(3, 3)));
    caller.flush();
    let mut tokens = Vec::new();
    while tokens.len() < 3 {
        if let Ok((Some(t), x)) = responder.try_recv() {
            tokens.push((t, x));
        }
    }
    for (t, x) in tokens {
        responder.reply(t, x + 1).unwrap();
    }
    responder.flush();
    let mut sum = 0;
    while caller.in_flight() > 0 {
        caller
            .poll(|u, r| sum += u32::from(r.unwrap() - u))
            .unwrap();
    }
    assert_eq!(sum, 3);
}

/// A responder that is never idle and never flushes or syncs explicitly
/// still returns request slots and publishes replies (paced every quarter
/// of a queue), so its caller keeps going. (Lamport stalled here when
/// publication happened only on idle.)
fn busy_responder_never_starves_its_caller<T: Transport>() {
    let (mut caller, mut responder) = rpc::pair::<T, u32, u32, u32>(8, 8);
    let (mut sent, mut done) = (0u32, 0u32);
    let mut stalled = 0;
    while done < 1000 {
        let mut progress = false;
        if sent < 1000 && caller.call(sent, sent).is_ok() {
            sent += 1;
            progress = true;
        }
        if let Ok((Some(t), x)) = responder.try_recv() {
            responder.reply(t, x + 1).unwrap();
            progress = true;
        }
        done += caller.poll(|u, r| assert_eq!(r, Ok(u + 1))).unwrap() as u32;
        stalled = if progress { 0 } else { stalled + 1 };
        assert!(stalled < 1000, "stalled after {done} calls");
        if sent == 1000 && !progress {
            // Only the last, not yet paced, replies remain.
            responder.flush();
            caller.flush();
        }
    }
}

/// A Flux node kept busy by one peer (never idle, never polling or
/// flushing) still answers another peer that has a single call in flight:
/// its replies are all published every 16 it sends, not only each
/// response queue every quarter of itself. (The light caller's reply
/// waited for the node to go idle before, under Lamport.)
fn busy_node_answers_a_light_caller<T: Transport>() {
    let mut nodes = flux::mesh::<T, u32, u32, u32>(3, FluxConfig::default());
    let mut server = nodes.pop().unwrap();
    let mut heavy = nodes.pop().unwrap();
    let mut light = nodes.pop().unwrap();
    light.call(2, 7, 70).unwrap();
    light.flush();
    let mut answered = None;
    for round in 0..200 {
        // One request from `heavy` each round, taken before the server
        // looks again: the server never finds its queues empty.
        if heavy.call(2, round, round).is_ok() {
            heavy.flush();
        }
        let req = server.try_recv().expect("a request is always waiting");
        let x = *req.data();
        req.reply(x + 1).unwrap();
        heavy.poll(|_, _, r| assert!(r.is_ok()));
        light.poll(|from, u, r| answered = Some((round, from, u, r)));
        if answered.is_some() {
            break;
        }
    }
    let (round, from, u, r) = answered.expect("the light caller got no reply in 200 rounds");
    assert_eq!((from, u, r), (2, 70, Ok(8)));
    assert!(round < 20, "answered only in round {round}");
}

macro_rules! flux_tests {
    ($($m:ident: $t:ty),*) => {$(
        mod $m {
            use super::*;
            #[test] fn two_nodes_all_to_all() { all_to_all::<$t>(2, 20_000) }
            #[test] fn four_nodes_all_to_all() { all_to_all::<$t>(4, 5_000) }
            #[test] fn deferred_replies_out_of_order_keep_user_data() { deferred_out_of_order::<$t>() }
            #[test] fn errors_hand_values_back() { errors::<$t>() }
            #[test] fn dropped_peer_hands_back_calls_in_flight() { super::dropped_peer_hands_back_calls_in_flight::<$t>() }
            #[test] fn deferred_reply_is_answered_only_by_its_own_node() { super::deferred_reply_is_answered_only_by_its_own_node::<$t>() }
            #[test] fn reply_never_fails_when_call_was_admitted() { rpc_pair_reserves_reply_room::<$t>() }
            #[test] fn busy_responder_never_starves_its_caller() { super::busy_responder_never_starves_its_caller::<$t>() }
            #[test] fn busy_node_answers_a_light_caller() { super::busy_node_answers_a_light_caller::<$t>() }
        }
    )*};
}

flux_tests!(fastforward: FastForward, lamport: Lamport, onesided: Onesided);
