//! The server's bookkeeping as its user sees it: tokens belong to the
//! server that issued them, `serve` reports what it did, and queries need
//! no exclusive borrow.

mod common;

use std::time::Duration;

use common::{Msg, answer, attach_while_serving, name};
use ipc::{AsyncClient, ClientConfig, Error, RequestToken, Server, ServerConfig};

type Conn = AsyncClient<Msg, Msg, u64>;

fn server_and_client(tag: &str) -> (Server<Msg, Msg>, Conn) {
    let name = name(tag);
    let mut server = Server::<Msg, Msg>::create(&name, ServerConfig::new()).unwrap();
    let client = attach_while_serving(&mut server, || {
        Conn::connect(&name, ClientConfig::new()).unwrap()
    });
    (server, client)
}

fn take(server: &mut Server<Msg, Msg>) -> (RequestToken, Msg) {
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        if let Some(r) = server.recv() {
            return r;
        }
        assert!(std::time::Instant::now() < deadline, "no request arrived");
    }
}

#[test]
fn a_token_used_with_another_server_is_refused_and_changes_nothing() {
    let (mut a, mut client_a) = server_and_client("token-a");
    let (mut b, mut client_b) = server_and_client("token-b");
    // Same slot, same attach count, same call id on both servers.
    client_a.call(&[1, 1, 1, 0], 10).unwrap();
    client_b.call(&[2, 2, 2, 0], 20).unwrap();
    let (token_a, req_a) = take(&mut a);
    let (token_b, req_b) = take(&mut b);
    assert_eq!(token_a.client(), token_b.client());

    // B refuses A's token, and hands it back.
    let token_a = match b.reply(token_a, [9; 4]) {
        Err(Error::ForeignToken { token, name }) => {
            assert_eq!(name, b.name());
            token
        }
        other => panic!("B accepted A's token: {other:?}"),
    };
    // Nothing reached B's client, and B's own reply still goes through.
    std::thread::sleep(Duration::from_millis(20));
    assert_eq!(
        client_b
            .poll(|u, r| panic!("stray answer {u} {r:?}"))
            .unwrap(),
        0
    );
    b.reply(token_b, answer(&req_b)).unwrap();
    let mut got = Vec::new();
    client_b.wait(|u, r| got.push((u, r))).unwrap();
    assert_eq!(got, vec![(20, [2, 2, 7, 0])]);
    // The returned token still answers A's client.
    a.reply(token_a, answer(&req_a)).unwrap();
    got.clear();
    client_a.wait(|u, r| got.push((u, r))).unwrap();
    assert_eq!(got, vec![(10, [1, 1, 4, 0])]);
}

#[test]
fn serve_reports_how_many_it_handled_and_how_many_it_could_not_deliver() {
    let (mut server, mut client) = server_and_client("serve-count");
    for i in 0..5 {
        client.call(&[0, i, i, 0], i).unwrap();
    }
    let mut done = ipc::Served::default();
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while done.handled < 5 {
        let s = server.serve(3, |_, r| answer(r));
        assert!(s.handled <= 3);
        done.handled += s.handled;
        done.undelivered += s.undelivered;
        assert!(std::time::Instant::now() < deadline);
    }
    assert_eq!(
        done,
        ipc::Served {
            handled: 5,
            undelivered: 0
        }
    );
    let mut n = 0;
    while n < 5 {
        n += client.wait(|u, r| assert_eq!(r[2], 3 * u + 1)).unwrap();
    }
}

#[test]
fn attached_clients_is_a_query_through_a_shared_reference() {
    let (mut server, client) = server_and_client("attached");
    let view: &Server<Msg, Msg> = &server;
    assert_eq!(view.attached_clients(), 1);
    assert_eq!(view.evictions(), 0);
    drop(client);
    // The departure is seen at the next look at the connections.
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while server.attached_clients() != 0 {
        server.refresh();
        assert!(std::time::Instant::now() < deadline, "departure not seen");
    }
}
