//! A daemon: one shard, the ipc segment of its clients, a node of its
//! rank's Flux mesh and a network backend, driven by one busy thread.
//!
//! A client request is executed here when its key is in this shard,
//! handed to the daemon of this rank that owns it through Flux, or sent to
//! the owning daemon of another rank through the network; the answer goes
//! back to the client with the request's ipc token. A request that cannot
//! be forwarded now (Flux queue or network ring full) waits in a queue per
//! destination, in order; it is never dropped. Requests from other daemons
//! (Flux or network) are executed on this shard at once.
//!
//! The loop, every round: up to [`BATCH`] client requests, Flux responses
//! and requests, a network poll, the waiting queues. A round with nothing
//! to do counts towards yielding the CPU, as the idle policy says
//! (`--idle-yield`: other busy threads may need it on a host whose cores
//! they share).

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use inproc::Onesided;
use inproc::flux::{FluxError, FluxNode};

use crate::error::Error;
use crate::ipc_link::{Front, Token};
use crate::net::{NetError, Network, Refused};
use crate::params::{IdleYield, Idler};
use crate::route::Routing;
use crate::store::Shard;
use crate::wire::{self, KvReq, KvResp, ReqHeader, Status};
use crate::workload::OpKind;

/// Client requests taken per round before the other sources are served.
pub const BATCH: usize = 32;

/// A Flux node of a rank's daemon mesh.
pub type Flux<const N: usize> = FluxNode<Onesided, KvReq<N>, KvResp<N>, Token>;

/// What the rank's main thread tells its daemons, and they it.
#[derive(Debug, Default)]
pub struct Control {
    /// Every client of every rank is done: failures of peers are now
    /// expected (they shut down) and not reported.
    pub quiesce: AtomicBool,
    /// Daemons that have seen `quiesce`.
    pub quiesced: AtomicUsize,
    /// Leave the loop.
    pub stop: AtomicBool,
    /// Something failed elsewhere on this rank: leave at once.
    pub abort: AtomicBool,
}

/// What a daemon did, for the report (its JSON fields are these names).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DaemonCounts {
    /// Client requests executed on this shard.
    pub local: u64,
    /// Client requests forwarded to another daemon of this rank.
    pub flux: u64,
    /// Client requests forwarded to another rank.
    pub remote: u64,
    /// Requests of other daemons of this rank executed here.
    pub served_flux: u64,
    /// Requests of other ranks executed here.
    pub served_remote: u64,
    /// Times a request had to wait for room (Flux or network).
    pub waited: u64,
    /// The time its rounds took, with `--round-costs`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rounds: Option<RoundCosts>,
}

/// What a daemon's rounds cost (`--round-costs`): rounds that did
/// something and rounds that found nothing, the time each kind took in
/// all, and the part of it spent in the network backend (its calls and
/// its poll, with the work the poll calls back: serving the other rank's
/// requests from the store, replying to clients, which is the same for
/// every backend), over the daemon's whole run (warm-up included). Read
/// with the CPU's time-stamp counter (scaled to ns over the run) where
/// there is one, else the monotonic clock; the two reads per round count
/// in the round times, the reads around the backend's calls and poll in
/// its part.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct RoundCosts {
    /// Rounds that did some work.
    pub busy_rounds: u64,
    /// Their time in all, ns.
    pub busy_ns: u64,
    /// Of that, the network backend's (calls and poll), ns.
    #[serde(default)]
    pub busy_net_ns: u64,
    /// Rounds that found nothing to do.
    pub idle_rounds: u64,
    /// Their time in all, ns.
    pub idle_ns: u64,
    /// Of that, the network backend's (calls and poll), ns.
    #[serde(default)]
    pub idle_net_ns: u64,
}

/// Times rounds in ticks of [`ticks`], scaled to ns at the end.
struct RoundClock {
    start: (std::time::Instant, u64),
    /// Rounds, their ticks and the network backend's ticks in them.
    busy: (u64, u64, u64),
    idle: (u64, u64, u64),
    /// The current round's time in the network backend.
    net: u64,
}

/// A cheap monotonic tick: the time-stamp counter on x86-64.
#[cfg(target_arch = "x86_64")]
#[inline(always)]
fn ticks() -> u64 {
    // SAFETY: RDTSC has no preconditions (x86-64 always has it); it reads
    // a counter and touches no memory.
    unsafe { std::arch::x86_64::_rdtsc() }
}

/// A monotonic tick elsewhere: the monotonic clock, in ns.
#[cfg(not(target_arch = "x86_64"))]
fn ticks() -> u64 {
    benchutil::mono_ns()
}

impl RoundClock {
    fn new() -> RoundClock {
        RoundClock {
            start: (std::time::Instant::now(), ticks()),
            busy: (0, 0, 0),
            idle: (0, 0, 0),
            net: 0,
        }
    }

    /// The costs so far, in ns (ticks scaled by the wall time they spanned).
    fn costs(&self) -> RoundCosts {
        let spanned = ticks().wrapping_sub(self.start.1).max(1);
        let per_tick = self.start.0.elapsed().as_nanos() as f64 / spanned as f64;
        let ns = |t: u64| (t as f64 * per_tick) as u64;
        RoundCosts {
            busy_rounds: self.busy.0,
            busy_ns: ns(self.busy.1),
            busy_net_ns: ns(self.busy.2),
            idle_rounds: self.idle.0,
            idle_ns: ns(self.idle.1),
            idle_net_ns: ns(self.idle.2),
        }
    }
}

/// Environment variable of the test fault: set to [`FAULT_GARBAGE_STORE`],
/// every shard starts filled with bytes no client writes instead of
/// zeros, so that a verified GET of a key not yet PUT is a mismatch (the
/// test that a `--verify` mismatch fails the run, end to end). Read once
/// per daemon at start; nothing on the request path looks at it.
pub const FAULT_ENV: &str = "BENCHKV_TEST_FAULT";
/// [`FAULT_ENV`]'s value for shards of garbage.
pub const FAULT_GARBAGE_STORE: &str = "garbage-store";
/// [`FAULT_ENV`]'s value for a network that takes two calls in flight per
/// destination (instead of 256): requests to the other rank must wait for
/// room, the path no normal short run reaches (read once, at setup).
pub const FAULT_TIGHT_NETWORK: &str = "tight-network";

/// One daemon's state.
pub struct Daemon<const N: usize, Net> {
    rank: u32,
    index: u32,
    routing: Routing,
    shard: Shard,
    front: Front<N>,
    flux: Flux<N>,
    net: Net,
    /// Requests waiting for room, per daemon of this rank.
    flux_wait: Vec<VecDeque<(KvReq<N>, Token)>>,
    /// Requests waiting for room, per global daemon id.
    net_wait: Vec<VecDeque<(KvReq<N>, Token)>>,
    waiting: usize,
    counts: DaemonCounts,
    control: Arc<Control>,
    /// When an empty round yields the core.
    idler: Idler,
    /// With `--round-costs`, what the rounds took.
    clock: Option<RoundClock>,
}

/// Executes a request on `shard`, which is daemon `daemon` of `rank`;
/// returns the status and, for a GET, the value.
#[inline]
fn execute<'s>(
    shard: &'s mut Shard,
    routing: &Routing,
    (rank, daemon): (u32, u32),
    h: &ReqHeader,
    value: &[u8],
) -> (Status, &'s [u8]) {
    let Some(p) = routing.place(h.key) else {
        return (Status::OutOfRange, &[]);
    };
    if p.rank != rank || p.daemon != daemon {
        return (Status::OutOfRange, &[]);
    }
    match h.op {
        OpKind::Get => match shard.get(p.slot) {
            Ok(v) => (Status::Ok, v),
            Err(_) => (Status::OutOfRange, &[]),
        },
        OpKind::Put if value.len() != shard.value_size() => (Status::Malformed, &[]),
        OpKind::Put => match shard.put(p.slot, value) {
            Ok(()) => (Status::Ok, &[]),
            Err(_) => (Status::OutOfRange, &[]),
        },
    }
}

/// Executes a request that came in a slot (ipc or Flux).
#[inline]
fn execute_slot<const N: usize>(
    shard: &mut Shard,
    routing: &Routing,
    me: (u32, u32),
    req: &KvReq<N>,
) -> KvResp<N> {
    match req.parse() {
        Ok((h, v)) => match execute(shard, routing, me, &h, v) {
            (Status::Ok, v) => KvResp::with_value(v),
            (s, _) => KvResp::status(s),
        },
        Err(_) => KvResp::status(Status::Malformed),
    }
}

impl<const N: usize, Net: Network<Token>> Daemon<N, Net> {
    /// A daemon of `rank` with index `index`, serving its shard.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        rank: u32,
        index: u32,
        routing: Routing,
        value_size: usize,
        front: Front<N>,
        flux: Flux<N>,
        net: Net,
        control: Arc<Control>,
        idle_yield: IdleYield,
        round_costs: bool,
    ) -> Daemon<N, Net> {
        let queues = |n: usize| (0..n).map(|_| VecDeque::new()).collect();
        let mut shard = Shard::new(routing.shard_len(rank, index), value_size);
        if std::env::var(FAULT_ENV).as_deref() == Ok(FAULT_GARBAGE_STORE) {
            shard.fill(0xa5);
        }
        Daemon {
            rank,
            index,
            shard,
            flux_wait: queues(routing.daemons() as usize),
            net_wait: queues(routing.shards() as usize),
            routing,
            front,
            flux,
            net,
            waiting: 0,
            counts: DaemonCounts::default(),
            control,
            idler: Idler::new(idle_yield),
            clock: round_costs.then(RoundClock::new),
        }
    }

    fn net_error(&self, e: NetError) -> Error {
        Error::Net {
            rank: self.rank,
            daemon: self.index,
            backend: Net::NAME,
            reason: e.to_string(),
        }
    }

    fn ipc_error(&self, source: ipc::Error) -> Error {
        Error::Ipc {
            rank: self.rank,
            who: format!("daemon {}", self.index),
            source,
        }
    }

    /// The network's transport line for reports.
    pub fn transport(&self) -> String {
        self.net.transport()
    }

    /// Runs until told to stop; returns what it did.
    pub fn run(mut self) -> Result<DaemonCounts, Error> {
        let mut quiesced = false;
        loop {
            let work = self.timed_round()?;
            // Relaxed: flags only; nothing is published through them.
            if self.control.abort.load(Ordering::Relaxed) {
                return Err(Error::Aborted {
                    rank: self.rank,
                    reason: format!("daemon {} stopped: another thread failed", self.index),
                });
            }
            // Relaxed (here and below): flags; the daemon's counts reach
            // the rank through `join`, which synchronizes.
            if !quiesced && self.control.quiesce.load(Ordering::Relaxed) {
                self.net.quiesce();
                self.control.quiesced.fetch_add(1, Ordering::Relaxed);
                quiesced = true;
            }
            if work > 0 {
                self.idler.busy();
                continue;
            }
            if self.control.stop.load(Ordering::Relaxed) {
                self.counts.rounds = self.clock.as_ref().map(RoundClock::costs);
                return Ok(self.counts);
            }
            self.idler.idle();
        }
    }

    /// [`Daemon::round`], timed with `--round-costs`.
    #[inline]
    fn timed_round(&mut self) -> Result<usize, Error> {
        if self.clock.is_none() {
            return self.round();
        }
        let t0 = ticks();
        let work = self.round()?;
        let dt = ticks().wrapping_sub(t0);
        if let Some(c) = &mut self.clock {
            let kind = if work > 0 { &mut c.busy } else { &mut c.idle };
            kind.0 += 1;
            kind.1 += dt;
            kind.2 += std::mem::take(&mut c.net);
        }
        Ok(work)
    }

    /// One round of the loop; returns how much was done.
    fn round(&mut self) -> Result<usize, Error> {
        let mut work = 0;
        for _ in 0..BATCH {
            let Some((token, req)) = self.front.recv() else {
                break;
            };
            self.route(token, req)?;
            work += 1;
        }
        work += self.flux_round()?;
        // With `--round-costs`, the network backend's part of the round.
        let t0 = self.clock.is_some().then(ticks);
        work += self.net_round()?;
        if let (Some(t0), Some(c)) = (t0, &mut self.clock) {
            c.net += ticks().wrapping_sub(t0);
        }
        if self.waiting > 0 {
            work += self.retry_waiting()?;
        }
        Ok(work)
    }

    fn reply(&mut self, token: Token, resp: KvResp<N>) -> Result<(), Error> {
        self.front.reply(token, resp).map_err(|e| self.ipc_error(e))
    }

    /// Sends a client request where its key lives.
    #[inline]
    fn route(&mut self, token: Token, req: KvReq<N>) -> Result<(), Error> {
        let me = (self.rank, self.index);
        let place = match req.parse() {
            Ok((h, _)) => self.routing.place(h.key),
            Err(_) => return self.reply(token, KvResp::status(Status::Malformed)),
        };
        let Some(p) = place else {
            return self.reply(token, KvResp::status(Status::OutOfRange));
        };
        if (p.rank, p.daemon) == me {
            self.counts.local += 1;
            let resp = execute_slot(&mut self.shard, &self.routing, me, &req);
            return self.reply(token, resp);
        }
        if p.rank == self.rank {
            self.counts.flux += 1;
            let to = p.daemon as usize;
            if self.flux_wait[to].is_empty() {
                match self.flux.call(to, req, token) {
                    Ok(()) => return Ok(()),
                    Err(FluxError::Full((req, token))) => {
                        self.counts.waited += 1;
                        self.flux_wait[to].push_back((req, token));
                    }
                    Err(e) => return Err(self.flux_failed(to, &e)),
                }
            } else {
                self.flux_wait[to].push_back((req, token));
            }
            self.waiting += 1;
            return Ok(());
        }
        self.counts.remote += 1;
        let to = self.routing.daemon_id(p.rank, p.daemon);
        if self.net_wait[to].is_empty() {
            match self.net_call(to, &req, token) {
                Ok(()) => return Ok(()),
                Err(Refused::Busy(token)) => {
                    self.counts.waited += 1;
                    self.net_wait[to].push_back((req, token));
                }
                Err(Refused::Failed(_, e)) => return Err(self.net_error(e)),
            }
        } else {
            self.net_wait[to].push_back((req, token));
        }
        self.waiting += 1;
        Ok(())
    }

    /// Hands `req` to the network backend (timed into the round's
    /// network part with `--round-costs`: a backend may send in its call,
    /// as UCX does, or only queue there and send in its poll, as copyrpc
    /// does).
    #[inline]
    fn net_call(&mut self, to: usize, req: &KvReq<N>, token: Token) -> Result<(), Refused<Token>> {
        let Some(c) = &mut self.clock else {
            return self.net.call(to, req.wire(), token);
        };
        let t0 = ticks();
        let r = self.net.call(to, req.wire(), token);
        c.net += ticks().wrapping_sub(t0);
        r
    }

    fn flux_failed<V>(&self, to: usize, e: &FluxError<V>) -> Error {
        Error::Aborted {
            rank: self.rank,
            reason: format!(
                "daemon {} cannot reach daemon {to} through Flux: {e}",
                self.index
            ),
        }
    }

    /// Flux responses to this daemon's calls, then calls of the others.
    fn flux_round(&mut self) -> Result<usize, Error> {
        let mut lost = None;
        let Daemon { flux, front, .. } = self;
        let mut failed = None;
        let mut work = flux.poll(|from, token, r| match r {
            Ok(resp) => {
                if let Err(e) = front.reply(token, resp) {
                    failed.get_or_insert(e);
                }
            }
            Err(_) => {
                lost.get_or_insert(from);
            }
        });
        if let Some(e) = failed {
            return Err(self.ipc_error(e));
        }
        if let Some(from) = lost {
            return Err(Error::Aborted {
                rank: self.rank,
                reason: format!(
                    "daemon {from} of this rank left with calls of daemon {} in flight",
                    self.index
                ),
            });
        }
        let me = (self.rank, self.index);
        while let Some(inc) = self.flux.try_recv() {
            let resp = execute_slot(&mut self.shard, &self.routing, me, inc.data());
            let from = inc.from();
            if inc.reply(resp).is_err() {
                return Err(Error::Aborted {
                    rank: self.rank,
                    reason: format!(
                        "daemon {from} of this rank left before daemon {} answered it",
                        self.index
                    ),
                });
            }
            self.counts.served_flux += 1;
            work += 1;
        }
        Ok(work)
    }

    /// The network: requests of other ranks, responses to ours.
    fn net_round(&mut self) -> Result<usize, Error> {
        let me = (self.rank, self.index);
        let Daemon {
            net,
            front,
            shard,
            routing,
            counts,
            ..
        } = self;
        let mut failed = None;
        let r = net.poll(
            &mut |req, out| {
                counts.served_remote += 1;
                match ReqHeader::parse(req) {
                    Ok((h, v)) => {
                        let (s, v) = execute(shard, routing, me, &h, v);
                        wire::write_response(out, s, v)
                    }
                    Err(_) => wire::write_response(out, Status::Malformed, &[]),
                }
            },
            &mut |token, bytes| {
                let resp = KvResp::<N>::from_wire(bytes)
                    .unwrap_or_else(|_| KvResp::status(Status::Malformed));
                if let Err(e) = front.reply(token, resp) {
                    failed.get_or_insert(e);
                }
            },
        );
        if let Some(e) = failed {
            return Err(self.ipc_error(e));
        }
        r.map_err(|e| self.net_error(e))
    }

    /// Forwards what waited, in order, until a destination is full again.
    fn retry_waiting(&mut self) -> Result<usize, Error> {
        let mut sent = 0;
        for to in 0..self.flux_wait.len() {
            while let Some((req, token)) = self.flux_wait[to].pop_front() {
                match self.flux.call(to, req, token) {
                    Ok(()) => sent += 1,
                    Err(FluxError::Full((req, token))) => {
                        self.flux_wait[to].push_front((req, token));
                        break;
                    }
                    Err(e) => return Err(self.flux_failed(to, &e)),
                }
            }
        }
        for to in 0..self.net_wait.len() {
            while let Some((req, token)) = self.net_wait[to].pop_front() {
                match self.net_call(to, &req, token) {
                    Ok(()) => sent += 1,
                    Err(Refused::Busy(token)) => {
                        self.net_wait[to].push_front((req, token));
                        break;
                    }
                    Err(Refused::Failed(_, e)) => return Err(self.net_error(e)),
                }
            }
        }
        self.waiting -= sent;
        Ok(sent)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn shard_of(routing: &Routing, rank: u32, daemon: u32) -> Shard {
        Shard::new(routing.shard_len(rank, daemon), 8)
    }

    #[test]
    fn a_put_then_a_get_of_a_key_in_this_shard() {
        let r = Routing::new(2, 2, 16);
        // Key 5 lives on shard 5 mod 4 = 1: rank 0, daemon 1, slot 1.
        let me = (0, 1);
        let mut s = shard_of(&r, 0, 1);
        let put = KvReq::<8>::put(5, &[9; 8]);
        assert_eq!(
            execute_slot(&mut s, &r, me, &put).parse().unwrap(),
            (Status::Ok, &[][..])
        );
        let get = KvReq::<8>::get(5);
        let resp = execute_slot(&mut s, &r, me, &get);
        assert_eq!(resp.parse().unwrap(), (Status::Ok, &[9u8; 8][..]));
        assert_eq!(s.get(1).unwrap(), &[9u8; 8]);
    }

    #[test]
    fn a_key_of_another_shard_or_outside_the_space_is_refused() {
        let r = Routing::new(2, 2, 16);
        let mut s = shard_of(&r, 0, 1);
        for key in [4, 6, 32, u64::MAX] {
            let resp = execute_slot(&mut s, &r, (0, 1), &KvReq::<8>::get(key));
            assert_eq!(resp.parse().unwrap().0, Status::OutOfRange, "key {key}");
        }
    }

    #[test]
    fn a_put_of_the_wrong_length_or_a_malformed_request_is_refused() {
        let r = Routing::new(1, 1, 4);
        let mut s = shard_of(&r, 0, 0);
        let short = KvReq::<64>::put(1, &[1; 7]);
        assert_eq!(
            execute_slot(&mut s, &r, (0, 0), &short).parse().unwrap().0,
            Status::Malformed
        );
        let mut bad = KvReq::<8>::get(1);
        zerocopy::IntoBytes::as_mut_bytes(&mut bad)[8] = 77;
        assert_eq!(
            execute_slot(&mut s, &r, (0, 0), &bad).parse().unwrap().0,
            Status::Malformed
        );
        assert_eq!(s.get(1).unwrap(), &[0u8; 8], "nothing written");
    }

    #[test]
    fn network_requests_are_served_from_their_bytes() {
        let r = Routing::new(2, 1, 8);
        // Key 3: shard 1 = rank 1.
        let mut s = shard_of(&r, 1, 0);
        let mut out = [0u8; 64];
        let put = KvReq::<8>::put(3, &[4; 8]);
        let (h, v) = ReqHeader::parse(put.wire()).unwrap();
        let (st, _) = execute(&mut s, &r, (1, 0), &h, v);
        assert_eq!(st, Status::Ok);
        let get = KvReq::<8>::get(3);
        let (h, v) = ReqHeader::parse(get.wire()).unwrap();
        let (st, val) = execute(&mut s, &r, (1, 0), &h, v);
        let n = wire::write_response(&mut out, st, val);
        assert_eq!(
            wire::parse_response(&out[..n]).unwrap(),
            (Status::Ok, &[4u8; 8][..])
        );
    }
}
