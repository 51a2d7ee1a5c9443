//! Flux all-to-all call/reply throughput, and the same workload on a mesh
//! built from crossbeam channels.
//!
//! Every thread calls every other thread round-robin, keeping up to
//! [`WINDOW`] calls in flight towards each peer, answers the calls it
//! receives (`x + 1`), and checks that each response belongs to its call.
//! A thread that has made its share of calls keeps answering until every
//! thread is done. Idle loops yield, so the figures stay meaningful when
//! threads outnumber cores (the table says when they do). The figure is the
//! aggregate rate of completed calls from a common start to the last
//! thread's last response.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::{Duration, Instant};

use benchutil::{allowed_cpus, pin};
use inproc::Transport;
use inproc::flux::{self, FluxConfig};

/// Calls in flight per (caller, peer).
pub const WINDOW: usize = 32;
/// Requests served per loop turn before the thread polls again.
const SERVE_BATCH: usize = 64;

fn cpu_of(i: usize) -> usize {
    let cpus = allowed_cpus();
    cpus[i % cpus.len()]
}

/// Runs `body(i)` on `n` threads pinned round-robin to the allowed CPUs,
/// all released together; returns the time from the first thread's release
/// to the last thread's end, scaled to `iters` calls of the `n × per` made.
///
/// Each thread takes its own start time as it leaves the barrier: the
/// releasing thread may be descheduled before it could read the clock
/// (more threads than cores), and a start taken there could come after the
/// threads had already finished.
fn run_threads(
    n: usize,
    iters: u64,
    body: impl Fn(usize, u64, &AtomicUsize) -> Instant + Send + Sync + 'static,
) -> Duration {
    let per = (iters / n as u64).max(WINDOW as u64);
    let barrier = Arc::new(Barrier::new(n + 1));
    let finished = Arc::new(AtomicUsize::new(0));
    let body = Arc::new(body);
    let handles: Vec<_> = (0..n)
        .map(|i| {
            let (barrier, finished, body) = (barrier.clone(), finished.clone(), body.clone());
            thread::spawn(move || {
                pin(cpu_of(i));
                barrier.wait();
                let start = Instant::now();
                (start, body(i, per, &finished))
            })
        })
        .collect();
    barrier.wait();
    let times: Vec<(Instant, Instant)> = handles
        .into_iter()
        .map(|h| h.join().expect("mesh thread"))
        .collect();
    let t0 = times.iter().map(|t| t.0).min().expect("threads");
    let end = times.iter().map(|t| t.1).max().expect("threads");
    let total = per * n as u64;
    Duration::from_secs_f64((end - t0).as_secs_f64() * iters as f64 / total as f64)
}

/// The Flux figure for transport `T` on `n` threads.
pub fn flux<T: Transport>(n: usize, iters: u64) -> Duration {
    let cfg = FluxConfig {
        capacity: 2 * WINDOW,
        max_in_flight: WINDOW,
    };
    let nodes = flux::mesh::<T, u64, u64, u64>(n, cfg);
    let slots: Vec<_> = nodes
        .into_iter()
        .map(|x| std::sync::Mutex::new(Some(x)))
        .collect();
    let slots = Arc::new(slots);
    run_threads(n, iters, move |i, per, finished| {
        let mut node = slots[i].lock().unwrap().take().expect("node");
        let n = node.len();
        let (mut sent, mut done, mut end) = (0u64, 0u64, None);
        let mut to = (i + 1) % n;
        while finished.load(Ordering::Relaxed) < n {
            let mut progress = false;
            // Call: round-robin over peers while windows have room.
            let mut tries = 0;
            while sent < per && tries < n {
                // Full (window or queue) just means: another peer, or later.
                if to != i && node.in_flight(to) < WINDOW && node.call(to, sent, sent).is_ok() {
                    sent += 1;
                    progress = true;
                    tries = 0;
                } else {
                    tries += 1;
                }
                to = (to + 1) % n;
            }
            for _ in 0..SERVE_BATCH {
                let Some(req) = node.try_recv() else { break };
                let x = *req.data();
                req.reply(x + 1).expect("reply");
                progress = true;
            }
            let got = node.poll(|_, user, resp| assert_eq!(resp, Ok(user + 1), "misdelivered"));
            if got > 0 {
                done += got as u64;
                progress = true;
                if done == per {
                    end = Some(Instant::now());
                    finished.fetch_add(1, Ordering::Relaxed);
                }
            }
            if !progress {
                thread::yield_now();
            }
        }
        end.expect("all calls answered")
    })
}

enum Msg {
    Call { from: usize, id: u32, x: u64 },
    Reply { id: u32, x: u64 },
}

/// The same workload on a mesh of crossbeam channels: one bounded inbox per
/// thread that every other thread sends its calls and replies to.
pub fn crossbeam_mesh(n: usize, iters: u64) -> Duration {
    let (txs, rxs): (Vec<_>, Vec<_>) = (0..n)
        .map(|_| crossbeam_channel::bounded::<Msg>(2 * WINDOW * n))
        .unzip();
    let rxs: Vec<_> = rxs
        .into_iter()
        .map(|r| std::sync::Mutex::new(Some(r)))
        .collect();
    let (txs, rxs) = (Arc::new(txs), Arc::new(rxs));
    run_threads(n, iters, move |i, per, finished| {
        let inbox = rxs[i].lock().unwrap().take().expect("inbox");
        // Call ids: peer * WINDOW + slot; the slot holds the expected answer.
        let mut calls: Vec<Option<u64>> = vec![None; n * WINDOW];
        let mut free: Vec<Vec<u32>> = (0..n)
            .map(|p| {
                (0..WINDOW as u32)
                    .map(|s| (p * WINDOW) as u32 + s)
                    .collect()
            })
            .collect();
        let (mut sent, mut done, mut end) = (0u64, 0u64, None);
        let mut to = (i + 1) % n;
        while finished.load(Ordering::Relaxed) < n {
            let mut progress = false;
            let mut tries = 0;
            while sent < per && tries < n {
                if to != i
                    && let Some(id) = free[to].pop()
                {
                    calls[id as usize] = Some(sent + 1);
                    txs[to]
                        .send(Msg::Call {
                            from: i,
                            id,
                            x: sent,
                        })
                        .expect("peer inbox");
                    sent += 1;
                    progress = true;
                    tries = 0;
                } else {
                    tries += 1;
                }
                to = (to + 1) % n;
            }
            for _ in 0..SERVE_BATCH {
                let Ok(m) = inbox.try_recv() else { break };
                progress = true;
                match m {
                    Msg::Call { from, id, x } => txs[from]
                        .send(Msg::Reply { id, x: x + 1 })
                        .expect("caller inbox"),
                    Msg::Reply { id, x } => {
                        let want = calls[id as usize].take().expect("call in flight");
                        assert_eq!(x, want, "misdelivered");
                        free[id as usize / WINDOW].push(id);
                        done += 1;
                        if done == per {
                            end = Some(Instant::now());
                            finished.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                }
            }
            if !progress {
                thread::yield_now();
            }
        }
        end.expect("all calls answered")
    })
}
