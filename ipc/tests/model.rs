//! Property test: any interleaving of client calls and polls with server
//! receives and out-of-order replies delivers every response to its own
//! call exactly once, and the in-flight accounting never lets the rings
//! overrun.

mod common;

use std::collections::HashMap;

use ipc::{AsyncClient, CallError, ClientConfig, RequestToken, Server, ServerConfig};
use proptest::prelude::*;

#[derive(Debug, Clone)]
enum Op {
    Call(u64),
    Recv,
    /// Reply to the held request at this index (mod the number held).
    Reply(usize),
    Poll,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        any::<u64>().prop_map(Op::Call),
        Just(Op::Recv),
        any::<usize>().prop_map(Op::Reply),
        Just(Op::Poll),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn every_response_reaches_its_own_call_exactly_once(
        depth_log in 0u32..4,
        ops in proptest::collection::vec(op(), 1..300),
    ) {
        let depth = 1u32 << depth_log;
        let name = format!("ipc-model-{}-{}", std::process::id(), rand_suffix(&ops));
        let mut server = Server::<[u64; 2], [u64; 2]>::create(
            &name,
            ServerConfig::new().max_clients(1).ring_depth(depth),
        ).unwrap();
        let mut client = common::attach_while_serving(&mut server, || {
            AsyncClient::<[u64; 2], [u64; 2], u64>::connect(&name, ClientConfig::new()).unwrap()
        });
        let mut held: Vec<(RequestToken, [u64; 2])> = Vec::new();
        // user data -> request value, for calls in flight
        let mut in_flight: HashMap<u64, u64> = HashMap::new();
        let mut next_user = 0u64;
        let mut delivered = Vec::new();
        for op in ops {
            match op {
                Op::Call(v) => match client.call(&[v, next_user], next_user) {
                    Ok(()) => {
                        in_flight.insert(next_user, v);
                        next_user += 1;
                    }
                    Err(CallError::Full(u)) => {
                        prop_assert_eq!(u, next_user);
                        prop_assert_eq!(in_flight.len(), depth as usize);
                    }
                    Err(e) => prop_assert!(false, "call failed: {e}"),
                },
                Op::Recv => {
                    if let Some(r) = server.recv() {
                        held.push(r);
                    }
                }
                Op::Reply(i) => {
                    if !held.is_empty() {
                        let (token, req) = held.swap_remove(i % held.len());
                        server.reply(token, [req[0].wrapping_add(1), req[1]]).unwrap();
                    }
                }
                Op::Poll => {
                    client.poll(|u, resp| delivered.push((u, resp))).unwrap();
                }
            }
            for (u, resp) in delivered.drain(..) {
                let v = in_flight.remove(&u);
                prop_assert!(v.is_some(), "response for call {u} not in flight");
                prop_assert_eq!(resp, [v.unwrap().wrapping_add(1), u]);
            }
            prop_assert_eq!(client.in_flight(), in_flight.len());
            prop_assert!(held.len() <= depth as usize);
        }
        // Drain: everything still in flight arrives.
        while let Some(r) = server.recv() {
            held.push(r);
        }
        for (token, req) in held.drain(..) {
            server.reply(token, [req[0].wrapping_add(1), req[1]]).unwrap();
        }
        client.poll(|u, resp| delivered.push((u, resp))).unwrap();
        for (u, resp) in delivered.drain(..) {
            let v = in_flight.remove(&u).unwrap();
            prop_assert_eq!(resp, [v.wrapping_add(1), u]);
        }
        prop_assert!(in_flight.is_empty(), "lost calls: {:?}", in_flight);
    }
}

fn rand_suffix(ops: &[Op]) -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed) ^ ((ops.len() as u64) << 32)
}
