//! Two copyrpc contexts on software devices, connected, for the tests.

#![allow(dead_code)]

use std::time::{Duration, Instant};

use copyrpc::{Config, Context, Endpoint, Limits, RpcError};
use mlx5::Progress;

pub const TIMEOUT: Duration = Duration::from_secs(20);

/// A context and its endpoints, with what came back to it.
pub struct Side<U> {
    pub ctx: Context<U>,
    pub eps: Vec<Endpoint>,
    pub done: Vec<(U, Result<Vec<u8>, RpcError>)>,
}

impl<U> Side<U> {
    /// One poll; responses are recorded in `done`.
    pub fn poll(&mut self) -> usize {
        let done = &mut self.done;
        self.ctx
            .poll(|u, r| done.push((u, r.map(|d| d.to_vec()))))
            .expect("poll")
    }
}

pub fn config(limits: Limits) -> Config {
    Config {
        limits,
        srq_depth: 256,
        cq_depth: 8192,
        sq_depth: 64,
        ..Config::default()
    }
}

/// Two contexts on two software devices of this process with `n`
/// endpoints connected pairwise.
pub fn pair<U>(progress: Progress, n: usize, cfg: Config) -> (Side<U>, Side<U>) {
    let (da, db) = (mlx5::Context::soft(progress), mlx5::Context::soft(progress));
    let mut a = Side {
        ctx: Context::new(&da, cfg).expect("context a"),
        eps: Vec::new(),
        done: Vec::new(),
    };
    let mut b = Side {
        ctx: Context::new(&db, cfg).expect("context b"),
        eps: Vec::new(),
        done: Vec::new(),
    };
    for _ in 0..n {
        let (ea, eb) = (a.ctx.endpoint().unwrap(), b.ctx.endpoint().unwrap());
        let (ia, ib) = (a.ctx.local_info(ea).unwrap(), b.ctx.local_info(eb).unwrap());
        a.ctx.connect(ea, &ib).unwrap();
        b.ctx.connect(eb, &ia).unwrap();
        a.eps.push(ea);
        b.eps.push(eb);
    }
    (a, b)
}

/// Polls both sides (answering every request on `b` with `answer`) until
/// `until` holds; panics after [`TIMEOUT`].
pub fn run<U, V>(
    a: &mut Side<U>,
    b: &mut Side<V>,
    mut answer: impl FnMut(&[u8]) -> Vec<u8>,
    mut until: impl FnMut(&Side<U>, &Side<V>) -> bool,
) {
    let start = Instant::now();
    while !until(a, b) {
        a.poll();
        b.poll();
        while let Some(req) = b.ctx.recv() {
            let out = answer(req.data());
            b.ctx.reply(req, &out).expect("reply");
        }
        assert!(start.elapsed() < TIMEOUT, "no progress within {TIMEOUT:?}");
    }
}
