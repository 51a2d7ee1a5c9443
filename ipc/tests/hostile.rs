//! A client can only ever write its own rings. Each test runs one attack of
//! `ipc-peer attack` (a client process that tries to reach the header, the
//! other clients' memory and the slot bookkeeping through everything it
//! holds or can open, including the memfds of a second attach that keeps
//! them) while two well-behaved clients call; afterwards the server still
//! serves, every slot but the attacker's can be taken while the attacker
//! lives, and none of the attacker's writes landed: each was tried, and the
//! kernel refused it with the error the seals give.

mod common;

use std::time::Duration;

use common::{Caller, Msg, Peer, START, ServerThread, connect_retrying, name};
use ipc::{Client, ServerConfig};

/// What the attacker's `attacked KIND: L landed, T tried (ERRNO N, ...)`
/// line says.
struct Report {
    landed: usize,
    tried: usize,
    /// Tries the kernel refused, by errno name.
    refused: Vec<(String, usize)>,
}

fn parse_report(kind: &str, line: &str) -> Option<Report> {
    let rest = line.strip_prefix(&format!("attacked {kind}: "))?;
    let (counts, refused) = rest.split_once(" (").unwrap_or((rest, ")"));
    let (landed, tried) = counts.strip_suffix(" tried")?.split_once(" landed, ")?;
    let refused = refused
        .strip_suffix(')')?
        .split(", ")
        .filter(|r| !r.is_empty())
        .map(|r| {
            let (errno, n) = r.split_once(' ')?;
            Some((errno.to_owned(), n.parse().ok()?))
        })
        .collect::<Option<_>>()?;
    Some(Report {
        landed: landed.parse().ok()?,
        tried: tried.parse().ok()?,
        refused,
    })
}

/// Runs attack `kind`, which must make at least `min_tries` tries (what it
/// reaches without privileges) and have every one refused with an errno
/// of `refusals`.
fn hostile_client_cannot_hurt_the_server_or_others(
    kind: &str,
    min_tries: usize,
    refusals: &[&str],
) {
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
    let r = parse_report(kind, &report).unwrap_or_else(|| panic!("unexpected report {report:?}"));
    assert_eq!(
        r.landed, 0,
        "the attacker reached beyond its own region: {report}"
    );
    assert!(
        r.tried >= min_tries,
        "the attack tried too little to prove anything: {report}"
    );
    assert_eq!(
        r.refused.iter().map(|(_, n)| n).sum::<usize>(),
        r.tried,
        "{report}"
    );
    for (errno, _) in &r.refused {
        assert!(
            refusals.contains(&errno.as_str()),
            "a try failed with {errno}, not for the seals' reasons ({refusals:?}): {report}"
        );
    }
    // It did nothing to its own region, so it is still served.
    assert_eq!(after, "after: ok", "{report}");
    drop(fresh);
    drop(attacker);
    server.stop();
}

/// Truncation: at least the kept header and region memfds (any user), plus
/// both mappings re-opened through `/proc/self/map_files` (root); every
/// memfd is sealed against shrinking, which `ftruncate` answers with EPERM.
#[test]
fn a_client_cannot_truncate_the_segment_under_the_server() {
    hostile_client_cannot_hurt_the_server_or_others("truncate", 2, &["EPERM"]);
}

/// Writes into the header: through the kept header memfd and re-opened
/// files (`write` on a memfd sealed against future writes: EPERM) and
/// through its read-only mapping (`mprotect` to writable: EACCES).
#[test]
fn a_client_cannot_write_the_header_state_word() {
    hostile_client_cannot_hurt_the_server_or_others("header", 2, &["EPERM", "EACCES"]);
}

#[test]
fn a_client_cannot_squat_free_slots() {
    hostile_client_cannot_hurt_the_server_or_others("squat", 2, &["EPERM", "EACCES"]);
}

#[test]
fn a_client_cannot_write_other_clients_regions() {
    hostile_client_cannot_hurt_the_server_or_others("others", 2, &["EPERM", "EACCES"]);
}
