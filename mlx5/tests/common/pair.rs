//! Two connected RC QPs on software devices, for the tests.

#![allow(dead_code)]

use std::time::Duration;

use mlx5::{Access, Completion, ConnectOpts, Context, Cq, Mr, Pd, Progress, Qp, QpCaps, Srq};

pub const TIMEOUT: Duration = Duration::from_secs(10);

/// One end: its device, PD, one CQ for sends and receives, the QP, and a
/// registered buffer.
pub struct End {
    pub ctx: Context,
    pub pd: Pd,
    pub cq: Cq,
    pub qp: Qp,
    pub mr: Mr,
}

impl End {
    /// Polls exactly `n` completions (stepping manual devices), panicking
    /// after the timeout.
    pub fn expect(&mut self, n: usize) -> Vec<Completion> {
        let mut out = Vec::new();
        let got = self
            .cq
            .poll_until(n, TIMEOUT, |c| out.push(*c))
            .expect("poll");
        assert_eq!(got, n, "wanted {n} completions, got {out:?}");
        out
    }

    /// Polls once (after stepping a manual device) and returns what came.
    pub fn drain(&mut self) -> Vec<Completion> {
        if self.ctx.is_soft() {
            let _ = self.ctx.progress();
        }
        let mut out = Vec::new();
        self.cq.poll(usize::MAX, |c| out.push(*c)).expect("poll");
        out
    }
}

pub fn end(ctx: &Context, caps: QpCaps, cq_entries: u32, mr_len: usize, mr_access: Access) -> End {
    let pd = Pd::new(ctx).expect("pd");
    let cq = Cq::new(ctx, cq_entries).expect("cq");
    let qp = Qp::builder(&pd, &cq, &cq).caps(caps).build().expect("qp");
    let mr = pd.alloc_mr(mr_len, mr_access).expect("mr");
    End {
        ctx: ctx.clone(),
        pd,
        cq,
        qp,
        mr,
    }
}

pub fn connect(a: &mut Qp, b: &mut Qp, oa: &ConnectOpts, ob: &ConnectOpts) {
    let ia = a.local_info(oa).expect("info a");
    let ib = b.local_info(ob).expect("info b");
    a.connect(&ib, oa).expect("connect a");
    b.connect(&ia, ob).expect("connect b");
}

/// A connected pair on two devices of the given progress mode.
pub fn pair_with(progress: Progress, caps: QpCaps, cq_entries: u32) -> (End, End) {
    let (ca, cb) = (Context::soft(progress), Context::soft(progress));
    let mut a = end(&ca, caps, cq_entries, 1 << 16, Access::ALL);
    let mut b = end(&cb, caps, cq_entries, 1 << 16, Access::ALL);
    let o = ConnectOpts::default();
    connect(&mut a.qp, &mut b.qp, &o, &o);
    (a, b)
}

pub fn pair(progress: Progress) -> (End, End) {
    pair_with(progress, QpCaps::default(), 256)
}

/// A QP on `end`'s PD receiving through `srq`.
pub fn srq_qp(e: &End, cq: &Cq, srq: &Srq) -> Qp {
    Qp::builder(&e.pd, cq, cq).srq(srq).build().expect("srq qp")
}

/// A connected pair on the device `MLX5_DEVICE` names (two contexts).
pub fn pair_env(caps: QpCaps, cq_entries: u32) -> (End, End) {
    let ca = Context::from_env().expect("open MLX5_DEVICE");
    let cb = Context::from_env().expect("open MLX5_DEVICE");
    let mut a = end(&ca, caps, cq_entries, 1 << 16, Access::ALL);
    let mut b = end(&cb, caps, cq_entries, 1 << 16, Access::ALL);
    let o = ConnectOpts::default();
    connect(&mut a.qp, &mut b.qp, &o, &o);
    (a, b)
}
