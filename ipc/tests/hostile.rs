//! A client can only ever write its own rings. Each test runs one attack of
//! `ipc-peer attack` (a client process that tries to reach the header, the
//! other clients' memory and the slot bookkeeping through everything it
//! holds or can open) while two well-behaved clients call; afterwards the
//! server still serves, every slot but the attacker's can be taken while
//! the attacker lives, and none of the attacker's writes landed.

mod common;

use std::time::Duration;

use common::{Caller, Msg, Peer, START, ServerThread, connect_retrying, name};
use ipc::{Client, ServerConfig};

fn hostile_client_cannot_hurt_the_server_or_others(kind: &str) {
    let name = name(&format!("attack-{kind}"));
    let max_clients = 4;
    let cfg = ServerConfig::new().max_clients(max_clients).ring_depth(8);
    let server = ServerThread::start(&name, cfg);
    let good: Vec<Caller> = (0..2).map(|k| Caller::start(&name, k)).collect();
    let mut attacker = Peer::spawn(&["attack", &name, kind]);
    attacker.expect_line("ready", START);
    let report = attacker.expect_line("attacked", START);
    let after = attacker.expect_line("after", START);
    attacker.expect_line("holding", START);
    // Let the good clients run on after the attack.
    std::thread::sleep(Duration::from_millis(200));
    for g in good {
        assert!(g.finish() > 0, "a well-behaved client made no calls");
    }
    // Every slot but the live attacker's can be taken and is served.
    let mut fresh: Vec<Client<Msg, Msg>> = (1..max_clients)
        .map(|_| connect_retrying(&name, Duration::from_secs(5)))
        .collect();
    for (k, c) in fresh.iter_mut().enumerate() {
        for i in 0..100 {
            let r = c.call(&[k as u64, i, i, 0]).expect("fresh client call");
            assert_eq!(r[..3], [k as u64, i, 3 * i + 1]);
        }
    }
    assert!(
        report.starts_with(&format!("attacked {kind}: 0 landed")),
        "the attacker reached beyond its own region: {report}"
    );
    // It did nothing to its own region, so it is still served.
    assert_eq!(after, "after: ok", "{report}");
    drop(fresh);
    drop(attacker);
    server.stop();
}

#[test]
fn a_client_cannot_truncate_the_segment_under_the_server() {
    hostile_client_cannot_hurt_the_server_or_others("truncate");
}

#[test]
fn a_client_cannot_write_the_header_state_word() {
    hostile_client_cannot_hurt_the_server_or_others("header");
}

#[test]
fn a_client_cannot_squat_free_slots() {
    hostile_client_cannot_hurt_the_server_or_others("squat");
}

#[test]
fn a_client_cannot_write_other_clients_regions() {
    hostile_client_cannot_hurt_the_server_or_others("others");
}
