//! copyrpc over the software device, two contexts in one process.

mod common;

use common::{config, pair, run};
use copyrpc::{CallErrorKind, Limits, RpcError};
use mlx5::Progress;

fn echo(d: &[u8]) -> Vec<u8> {
    d.iter().map(|b| b.wrapping_add(1)).collect()
}

#[test]
fn ping_pong_round_trips_in_order_with_user_data() {
    for progress in [Progress::Manual, Progress::Background] {
        let (mut a, mut b) = pair::<u64>(progress, 1, config(Limits::default()));
        for i in 0..500u64 {
            let msg = i.to_le_bytes();
            a.ctx.call(a.eps[0], &msg, i).unwrap();
            run(&mut a, &mut b, echo, |a, _| a.done.len() as u64 == i + 1);
            let (u, r) = a.done.last().unwrap();
            assert_eq!(*u, i);
            assert_eq!(r.as_ref().unwrap(), &echo(&msg));
        }
    }
}
