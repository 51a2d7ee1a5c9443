//! iceoryx2 request-response round-trip latency between two processes.
//!
//! One process calls [`run_server`], the other [`client_round_trips`] with the
//! same service name. Both sides busy poll (no waitsets, no sleeping on the hot
//! path) over an iceoryx2 `ipc::Service` request-response service whose request and
//! response payload is the 16-byte `Msg`.
//!
//! Robustness notes:
//! * Both sides build their node from `Config::default()` so that no
//!   `iceoryx2.toml` lying around on the machine changes the QoS, paths or the
//!   stale-resource cleanup behaviour (and no "no config file" warning is
//!   printed).
//! * Node creation cleans up resources of dead nodes (processes that were
//!   killed before they could drop their iceoryx2 objects); the server repeats
//!   that cleanup explicitly when the service "already exists", so a server
//!   that was SIGKILLed does not block a new server with the same name.
//! * iceoryx2 signal handling is disabled (defensive): its SIGINT/SIGTERM
//!   handler only takes effect through `Node::wait`, which busy loops never
//!   call, so a handler would swallow the signal and leave the process
//!   spinning. (In 0.10 the handler is installed lazily, so with the default
//!   mode SIGTERM still killed the server in tests; `Disabled` keeps it so.)

use std::error::Error;
use std::hint::spin_loop;
use std::thread::sleep;
use std::time::{Duration, Instant};

use iceoryx2::port::client::Client;
use iceoryx2::prelude::*;
use iceoryx2::service::builder::request_response::RequestResponseCreateError;
use iceoryx2::service::ipc::Service as IoxIpc;
use iceoryx2::service::port_factory::request_response::PortFactory as RrFactory;

type BoxError = Box<dyn Error>;
type RrService = RrFactory<IoxIpc, Msg, (), Msg, ()>;

/// Request and response payload. The explicit type name makes the service
/// type-compatible regardless of the crate/module path this file lives in.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ZeroCopySend)]
#[repr(C)]
#[type_name("IoxPeerMsg")]
struct Msg {
    a: u64,
    b: u64,
}

/// `Msg::a` value that tells the server to stop.
const STOP: u64 = u64::MAX;
/// How long the client keeps retrying to open the service / find the server.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Longest time the client waits for a single response before giving up.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long the client waits for the acknowledgement of the stop request.
const STOP_ACK_TIMEOUT: Duration = Duration::from_secs(1);
/// The slow checks (clock, liveness) run once every this many empty polls.
const POLLS_PER_CHECK: u32 = 1 << 12;
/// Idle time after which the server checks whether its client vanished.
const SERVER_IDLE_CHECK: Duration = Duration::from_millis(100);

// QoS of the service. 1 request is in flight at any time; 2 leaves room for
// the short window in which the server still holds the previous request while
// the client already sends the next one.
const MAX_SERVERS: usize = 1;
const MAX_CLIENTS: usize = 2;
const MAX_NODES: usize = 4;
const MAX_ACTIVE_REQUESTS_PER_CLIENT: usize = 2;
const MAX_LOANED_REQUESTS: usize = 2;
const MAX_RESPONSE_BUFFER_SIZE: usize = 2;
const MAX_BORROWED_RESPONSES: usize = 2;

fn new_node() -> Result<Node<IoxIpc>, BoxError> {
    let node = NodeBuilder::new()
        .config(&Config::default())
        .signal_handling_mode(SignalHandlingMode::Disabled)
        .create::<IoxIpc>()?;
    Ok(node)
}

/// Opens (`create == false`) or creates the service with the benchmark QoS.
/// When opening, the QoS values are requirements the existing service must
/// satisfy, so a stale/foreign service with the same name is rejected.
fn build_service(
    node: &Node<IoxIpc>,
    name: &ServiceName,
    create: bool,
) -> Result<RrService, BoxError> {
    let builder = node
        .service_builder(name)
        .request_response::<Msg, Msg>()
        .max_servers(MAX_SERVERS)
        .max_clients(MAX_CLIENTS)
        .max_nodes(MAX_NODES)
        .max_active_requests_per_client(MAX_ACTIVE_REQUESTS_PER_CLIENT)
        .max_loaned_requests(MAX_LOANED_REQUESTS)
        .max_response_buffer_size(MAX_RESPONSE_BUFFER_SIZE)
        .max_borrowed_responses_per_pending_response(MAX_BORROWED_RESPONSES);
    if create {
        Ok(builder.create()?)
    } else {
        Ok(builder.open()?)
    }
}

/// Runs the server side until the client sends a request with `a == u64::MAX`
/// (stop), replying to each request with `Msg { a: req.a, b: req.b + 1 }`.
/// Busy polls.
///
/// Also returns (with an error) when a client that was connected disappears
/// without sending the stop request, so a crashed client does not leave a
/// server spinning at 100% CPU forever.
pub fn run_server(service_name: &str) -> Result<(), Box<dyn std::error::Error>> {
    let node = new_node()?;
    let name: ServiceName = service_name.try_into()?;

    let service = match build_service(&node, &name, true) {
        Ok(service) => service,
        Err(e) => {
            let already_exists = matches!(
                e.downcast_ref::<RequestResponseCreateError>(),
                Some(RequestResponseCreateError::AlreadyExists)
            );
            if !already_exists {
                return Err(e);
            }
            // Possibly left behind by a killed process: remove resources of
            // dead nodes and try once more. If a live server owns the name
            // this fails again, which is what we want.
            node.blocking_cleanup_dead_nodes(Duration::from_secs(1));
            build_service(&node, &name, true)?
        }
    };
    let server = service.server_builder().create()?;

    let mut served: u64 = 0;
    let mut empty_polls: u32 = 0;
    let mut idle_since = Instant::now();
    loop {
        match server.receive()? {
            Some(request) => {
                let req = *request;
                request.send_copy(Msg {
                    a: req.a,
                    b: req.b.wrapping_add(1),
                })?;
                drop(request);
                if req.a == STOP {
                    return Ok(());
                }
                served += 1;
                empty_polls = 0;
            }
            None => {
                empty_polls += 1;
                if empty_polls < POLLS_PER_CHECK {
                    spin_loop();
                    continue;
                }
                empty_polls = 0;
                if served == 0 {
                    continue; // still waiting for the first client
                }
                let now = Instant::now();
                if now.duration_since(idle_since) < SERVER_IDLE_CHECK {
                    continue;
                }
                idle_since = now;
                // A killed client stays registered until someone removes
                // its dead node, so clean up before counting.
                service.try_cleanup_dead_nodes();
                if service.dynamic_config().number_of_clients() == 0 {
                    return Err(format!(
                        "iox_peer server '{service_name}': client disconnected without stop \
                         request after {served} requests"
                    )
                    .into());
                }
            }
        }
    }
}

/// Waits (bounded by STOP_ACK_TIMEOUT) until this process's node is the last
/// one attached to the service. When both processes drop their service handles
/// at the same instant, iceoryx2 0.10 sometimes logs "The static storage was
/// already removed" (seen in roughly 10-20% of runs here); letting the server leave first
/// avoids that teardown race.
fn wait_for_peer_teardown(service: &RrService) {
    let until = Instant::now() + STOP_ACK_TIMEOUT;
    loop {
        let mut nodes = 0usize;
        let listed = service.nodes(|_| {
            nodes += 1;
            CallbackProgression::Continue
        });
        if listed.is_err() || nodes <= 1 || Instant::now() >= until {
            return;
        }
        sleep(Duration::from_micros(200));
    }
}

/// Sends one request and busy polls for its response. Returns `Ok(None)` when
/// no response arrived within roughly `timeout` (checked only on the slow path).
fn round_trip(
    client: &Client<IoxIpc, Msg, (), Msg, ()>,
    msg: Msg,
    timeout: Duration,
) -> Result<Option<Msg>, BoxError> {
    let pending = client.loan_uninit()?.write_payload(msg).send()?;
    if pending.number_of_server_connections() == 0 {
        return Err("iox_peer client: request reached no server".into());
    }
    let mut polls: u32 = 0;
    let mut deadline: Option<Instant> = None;
    loop {
        if let Some(response) = pending.receive()? {
            return Ok(Some(*response));
        }
        polls += 1;
        if polls < POLLS_PER_CHECK {
            spin_loop();
            continue;
        }
        polls = 0;
        // Slow path, reached only after thousands of empty polls.
        if !pending.is_connected() {
            // The server dropped the request; its response, if any, was
            // enqueued before that, so one final receive is conclusive.
            return match pending.receive()? {
                Some(response) => Ok(Some(*response)),
                None => Err("iox_peer client: server dropped request without response".into()),
            };
        }
        let now = Instant::now();
        match deadline {
            None => deadline = Some(now + timeout),
            Some(d) if now >= d => return Ok(None),
            Some(_) => {}
        }
    }
}

/// Client side: connects to an existing server service (retry opening for up
/// to 5 s while the server process starts), does `warmup` untimed round trips,
/// then `iters` timed round trips (send one request, busy-poll until its
/// response arrives, check b == a+1, else return an error), then sends the stop
/// request. Returns the elapsed time of the timed part.
pub fn client_round_trips(
    service_name: &str,
    warmup: u64,
    iters: u64,
) -> Result<std::time::Duration, Box<dyn std::error::Error>> {
    let node = new_node()?;
    let name: ServiceName = service_name.try_into()?;

    // The service exists once the server process created it; the server port
    // is registered a moment later. Requests sent before that reach nobody,
    // so wait for both.
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    let service = loop {
        match build_service(&node, &name, false) {
            Ok(service) if service.dynamic_config().number_of_servers() > 0 => break service,
            Ok(_) | Err(_) if Instant::now() < deadline => sleep(Duration::from_millis(2)),
            Ok(_) => {
                return Err(format!(
                    "iox_peer client: service '{service_name}' has no server after {CONNECT_TIMEOUT:?}"
                )
                .into());
            }
            Err(e) => {
                return Err(format!(
                    "iox_peer client: cannot open service '{service_name}' within \
                     {CONNECT_TIMEOUT:?}: {e}"
                )
                .into());
            }
        }
    };
    let client = service.client_builder().create()?;

    let exchange = |i: u64| -> Result<(), BoxError> {
        let sent = Msg { a: i, b: i };
        match round_trip(&client, sent, RESPONSE_TIMEOUT)? {
            Some(got) if got.a == sent.a && got.b == sent.a.wrapping_add(1) => Ok(()),
            Some(got) => {
                Err(format!("iox_peer client: bad response {got:?} to request {sent:?}").into())
            }
            None => Err(format!(
                "iox_peer client: no response within {RESPONSE_TIMEOUT:?} to request {sent:?}"
            )
            .into()),
        }
    };

    for i in 0..warmup {
        exchange(i)?;
    }
    let start = Instant::now();
    for i in 0..iters {
        exchange(i)?;
    }
    let elapsed = start.elapsed();

    // Wait (bounded) for the server's acknowledgement so the stop request is
    // consumed before this process tears down its ports; a missing ack does
    // not invalidate the measurement.
    let _ = round_trip(&client, Msg { a: STOP, b: 0 }, STOP_ACK_TIMEOUT);
    drop(client);
    wait_for_peer_teardown(&service);
    Ok(elapsed)
}
