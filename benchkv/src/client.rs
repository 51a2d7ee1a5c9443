//! A client: its operation stream, `depth` calls in flight through its
//! daemon's ipc segment, latencies into a histogram, and in verify mode the
//! check of every GET against the last PUT of its key.
//!
//! A run is warm-up then measurement, both timed from the start instant
//! the rank's main thread hands every client; an operation counts when it
//! was issued after the warm-up and completed before the end. At the end
//! the client stops issuing and waits for its calls in flight.
//!
//! Verify mode: the client uses only the keys it owns
//! ([`KeySpace::owned`]) and never has two operations on one key in
//! flight (an operation whose key is busy waits, and the stream with it),
//! so the value a GET must return is exactly the last one this client PUT
//! there ([`crate::value`]). Versions persist across runs: the store does.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;

use crate::error::Error;
use crate::ipc_link::{Link, LinkCallError};
use crate::params::{Idler, Params};
use crate::route::KeySpace;
use crate::value;
use crate::wire::{KvReq, KvResp, Status};
use crate::workload::{Op, OpKind, OpStream};

/// A client that gets no response for this long fails the run.
pub const STALL: Duration = Duration::from_secs(30);
/// Mismatches described in full (the rest are counted).
pub const EXAMPLES: usize = 8;

/// Who a client is and what it runs.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct ClientSpec {
    /// Its rank.
    pub rank: u32,
    /// Its index on the rank.
    pub index: u32,
    /// Its id over all ranks (the writer id in its values).
    pub global: u64,
    /// Its daemon's ipc segment.
    pub segment: String,
    /// The run's parameters.
    pub params: Params,
    /// The keys it draws from.
    pub keys: KeySpace,
}

/// The latency histogram every client and report uses: 1 ns to 100 s, 3
/// significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 100_000_000_000, 3).expect("valid histogram bounds")
}

/// What one client measured in one run.
#[derive(Clone, Debug)]
pub struct ClientRun {
    /// Operations issued after the warm-up and completed before the end.
    pub ops: u64,
    /// Their latencies, in nanoseconds.
    pub hist: Histogram<u64>,
    /// GETs that did not return the last value PUT (verify mode).
    pub mismatches: u64,
    /// Responses whose status was not OK.
    pub bad_status: u64,
    /// The first mismatches and bad statuses, described.
    pub examples: Vec<String>,
}

struct Slot {
    issued: Instant,
    op: Op,
    /// PUT: the tag written; GET (verify mode): the tag expected.
    tag: u64,
}

struct Verify {
    /// Versions of the last acknowledged PUT per owned key (0: never).
    versions: Vec<u64>,
    /// Owned keys with an operation in flight.
    busy: Vec<bool>,
}

/// A client attached to its daemon.
pub struct Client<const N: usize> {
    spec: ClientSpec,
    link: Link<N, u32>,
    ops: OpStream,
    slots: Vec<Option<Slot>>,
    free: Vec<u32>,
    held: Option<Op>,
    verify: Option<Verify>,
    puts: u64,
    progress: Arc<AtomicU64>,
    abort: Arc<AtomicBool>,
}

impl<const N: usize> Client<N> {
    /// Attaches to the daemon's segment.
    pub fn connect(
        spec: ClientSpec,
        progress: Arc<AtomicU64>,
        abort: Arc<AtomicBool>,
    ) -> Result<Client<N>, Error> {
        let link = Link::connect(&spec.segment).map_err(|source| Error::Ipc {
            rank: spec.rank,
            who: format!("client {}", spec.index),
            source,
        })?;
        let p = &spec.params;
        let ops = OpStream::new(p.seed, spec.global, spec.keys, p.read_ratio, p.dist);
        let verify = p.verify.then(|| Verify {
            versions: vec![0; spec.keys.len() as usize],
            busy: vec![false; spec.keys.len() as usize],
        });
        let depth = p.depth;
        Ok(Client {
            link,
            ops,
            slots: (0..depth).map(|_| None).collect(),
            free: (0..depth as u32).rev().collect(),
            held: None,
            verify,
            puts: 0,
            progress,
            abort,
            spec,
        })
    }

    fn aborted(&self, why: &str) -> Error {
        Error::Aborted {
            rank: self.spec.rank,
            reason: format!("client {}: {why}", self.spec.index),
        }
    }

    /// One run: warm-up and measurement from `start`, then the calls in
    /// flight drained.
    pub fn run(&mut self, start: Instant) -> Result<ClientRun, Error> {
        let p = &self.spec.params;
        let measure_from = start + p.warmup;
        let end = measure_from + p.duration;
        let mut out = ClientRun {
            ops: 0,
            hist: histogram(),
            mismatches: 0,
            bad_status: 0,
            examples: Vec::new(),
        };
        let mut idler = Idler::new(p.idle_yield);
        let mut last_response = Instant::now();
        let mut rounds = 0u32;
        loop {
            let now = Instant::now();
            let issuing = now < end;
            if issuing {
                self.issue()?;
            } else if self.free.len() == self.slots.len() {
                return Ok(out);
            }
            let n = self.collect(measure_from, end, &mut out)?;
            rounds = rounds.wrapping_add(1);
            if n > 0 {
                idler.busy();
                last_response = now;
                // Relaxed: a counter for the progress line only.
                self.progress.fetch_add(n as u64, Ordering::Relaxed);
                continue;
            }
            // Relaxed: a flag; nothing is published through it.
            if self.abort.load(Ordering::Relaxed) {
                return Err(self.aborted("stopped: another thread failed"));
            }
            if rounds.is_multiple_of(1024)
                && self.free.len() < self.slots.len()
                && now.duration_since(last_response) > STALL
            {
                return Err(self.aborted(&format!(
                    "no response from its daemon for {} s with {} calls in flight",
                    STALL.as_secs(),
                    self.slots.len() - self.free.len()
                )));
            }
            idler.idle();
        }
    }

    /// Issues operations until `depth` are in flight (or, in verify mode,
    /// the next one's key is busy).
    fn issue(&mut self) -> Result<(), Error> {
        let vs = self.spec.params.value_size;
        let writer = self.spec.global as u32;
        while let Some(&slot) = self.free.last() {
            let op = self.held.take().unwrap_or_else(|| self.ops.next_op());
            let tag = match &mut self.verify {
                Some(v) => {
                    let i = op.index as usize;
                    if v.busy[i] {
                        self.held = Some(op);
                        return Ok(());
                    }
                    v.busy[i] = true;
                    match op.kind {
                        OpKind::Get => match v.versions[i] {
                            0 => 0,
                            ver => value::tag(writer, ver),
                        },
                        OpKind::Put => value::tag(writer, v.versions[i] + 1),
                    }
                }
                None if op.kind == OpKind::Put => {
                    self.puts += 1;
                    value::tag(writer, self.puts & ((1 << 40) - 1) | 1)
                }
                None => 0,
            };
            let req = match op.kind {
                OpKind::Get => KvReq::<N>::get(op.key),
                OpKind::Put if self.verify.is_some() => {
                    KvReq::put_with(op.key, vs, |b| value::fill(b, op.key, tag))
                }
                OpKind::Put => KvReq::put_with(op.key, vs, |b| {
                    b[..8].copy_from_slice(&tag.to_le_bytes());
                }),
            };
            match self.link.call(&req, slot) {
                Ok(()) => {
                    self.free.pop();
                    self.slots[slot as usize] = Some(Slot {
                        issued: Instant::now(),
                        op,
                        tag,
                    });
                }
                Err(LinkCallError::Full(_)) => {
                    if let Some(v) = &mut self.verify {
                        v.busy[op.index as usize] = false;
                    }
                    self.held = Some(op);
                    return Ok(());
                }
                Err(LinkCallError::Failed(_, source)) => {
                    return Err(Error::Ipc {
                        rank: self.spec.rank,
                        who: format!("client {}", self.spec.index),
                        source,
                    });
                }
            }
        }
        Ok(())
    }

    /// Takes the responses that arrived; returns how many.
    fn collect(
        &mut self,
        measure_from: Instant,
        end: Instant,
        out: &mut ClientRun,
    ) -> Result<usize, Error> {
        let Client {
            link,
            slots,
            free,
            verify,
            spec,
            ..
        } = self;
        let mut now = None;
        let mut bad_slot = None;
        let n = link
            .poll(|slot, resp: KvResp<N>| {
                let Some(s) = slots.get_mut(slot as usize).and_then(Option::take) else {
                    bad_slot.get_or_insert(slot);
                    return;
                };
                free.push(slot);
                let t = *now.get_or_insert_with(Instant::now);
                if s.issued >= measure_from && t <= end {
                    out.ops += 1;
                    let ns = t.duration_since(s.issued).as_nanos() as u64;
                    // Saturates at the histogram's top instead of failing.
                    out.hist.saturating_record(ns.max(1));
                }
                check(spec, verify.as_mut(), &s, &resp, out);
            })
            .map_err(|source| Error::Ipc {
                rank: spec.rank,
                who: format!("client {}", spec.index),
                source,
            })?;
        if let Some(slot) = bad_slot {
            return Err(Error::Aborted {
                rank: spec.rank,
                reason: format!(
                    "client {}: a response for call slot {slot}, which is not in flight",
                    spec.index
                ),
            });
        }
        Ok(n)
    }
}

/// Checks one response: an OK status, and in verify mode the value a GET
/// returned and the version a PUT acknowledged.
fn check<const N: usize>(
    spec: &ClientSpec,
    verify: Option<&mut Verify>,
    s: &Slot,
    resp: &KvResp<N>,
    out: &mut ClientRun,
) {
    let note = |out: &mut ClientRun, what: String| {
        if out.examples.len() < EXAMPLES {
            out.examples.push(format!(
                "rank {} client {} (global {}): {what}",
                spec.rank, spec.index, spec.global
            ));
        }
    };
    let (status, got) = match resp.parse() {
        Ok((Status::Ok, v)) => (Status::Ok, v),
        Ok((st, _)) => (st, &[][..]),
        Err(e) => {
            out.bad_status += 1;
            note(out, format!("{:?} of key {}: {e}", s.op.kind, s.op.key));
            return;
        }
    };
    if status != Status::Ok {
        out.bad_status += 1;
        note(
            out,
            format!("{:?} of key {}: status {status:?}", s.op.kind, s.op.key),
        );
    }
    let Some(v) = verify else { return };
    let i = s.op.index as usize;
    v.busy[i] = false;
    match s.op.kind {
        OpKind::Put if status == Status::Ok => v.versions[i] += 1,
        OpKind::Put => {}
        OpKind::Get => {
            let vs = spec.params.value_size;
            if status == Status::Ok && (got.len() != vs || !value::matches(got, s.op.key, s.tag)) {
                out.mismatches += 1;
                let found = if got.len() >= 8 {
                    match value::split(value::tag_of(got)) {
                        Some((w, ver)) => format!("writer {w} version {ver}"),
                        None => "the unwritten value".into(),
                    }
                } else {
                    format!("{} bytes", got.len())
                };
                let want = match value::split(s.tag) {
                    Some((w, ver)) => format!("writer {w} version {ver}"),
                    None => "the unwritten value".into(),
                };
                note(
                    out,
                    format!("GET of key {} returned {found}, expected {want}", s.op.key),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::Routing;

    fn spec() -> ClientSpec {
        let r = Routing::new(1, 1, 16);
        ClientSpec {
            rank: 0,
            index: 0,
            global: 0,
            segment: "unused".into(),
            params: Params {
                verify: true,
                value_size: 16,
                ..Params::default()
            },
            keys: KeySpace::owned(&r, 0, 1),
        }
    }

    fn run() -> ClientRun {
        ClientRun {
            ops: 0,
            hist: histogram(),
            mismatches: 0,
            bad_status: 0,
            examples: Vec::new(),
        }
    }

    fn value(key: u64, tag: u64) -> [u8; 16] {
        let mut v = [0u8; 16];
        value::fill(&mut v, key, tag);
        v
    }

    fn slot(kind: OpKind, key: u64, tag: u64) -> Slot {
        Slot {
            issued: Instant::now(),
            op: Op {
                kind,
                key,
                index: key,
            },
            tag,
        }
    }

    #[test]
    fn a_get_must_return_the_last_put_of_its_key() {
        let s = spec();
        let mut v = Verify {
            versions: vec![0; 16],
            busy: vec![true; 16],
        };
        let mut out = run();
        // Never written: zeros expected, zeros returned.
        let r = KvResp::<64>::with_value(&[0; 16]);
        check(&s, Some(&mut v), &slot(OpKind::Get, 3, 0), &r, &mut out);
        assert_eq!(out.mismatches, 0);
        assert!(!v.busy[3], "the key is free again");
        // A PUT of version 1 acknowledged.
        let t1 = value::tag(0, 1);
        let r = KvResp::<64>::status(Status::Ok);
        check(&s, Some(&mut v), &slot(OpKind::Put, 3, t1), &r, &mut out);
        assert_eq!(v.versions[3], 1);
        // The GET expecting version 1 gets it: fine; gets zeros: mismatch.
        let r = KvResp::<64>::with_value(&value(3, t1));
        check(&s, Some(&mut v), &slot(OpKind::Get, 3, t1), &r, &mut out);
        assert_eq!(out.mismatches, 0);
        let r = KvResp::<64>::with_value(&[0; 16]);
        check(&s, Some(&mut v), &slot(OpKind::Get, 3, t1), &r, &mut out);
        assert_eq!(out.mismatches, 1);
        assert!(
            out.examples[0].contains("returned the unwritten value, expected writer 0 version 1"),
            "{:?}",
            out.examples
        );
        // Another key's value is a mismatch too.
        let r = KvResp::<64>::with_value(&value(4, t1));
        check(&s, Some(&mut v), &slot(OpKind::Get, 3, t1), &r, &mut out);
        assert_eq!(out.mismatches, 2);
    }

    #[test]
    fn a_status_other_than_ok_is_counted() {
        let s = spec();
        let mut out = run();
        let r = KvResp::<64>::status(Status::OutOfRange);
        check(&s, None, &slot(OpKind::Get, 3, 0), &r, &mut out);
        assert_eq!(out.bad_status, 1);
        assert!(out.examples[0].contains("OutOfRange"));
    }
}
