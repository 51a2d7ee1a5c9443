//! Property test: random sequences of WRITE, READ and atomics on one QP end
//! with the target memory, and every READ/atomic result, equal to a byte
//! model that applies the same operations in posting order (RC order).

mod common;

use common::pair::pair_with;
use mlx5::wqe::{AtomicCas, AtomicFa, Read, Write};
use mlx5::{Progress, QpCaps};
use proptest::prelude::*;

const TARGET: usize = 512;
/// Each op gets its own 64-byte slot in the requester's region (source of a
/// WRITE, destination of a READ or atomic result).
const SLOT: usize = 64;

#[derive(Clone, Debug)]
enum Op {
    Write { off: usize, data: Vec<u8> },
    Read { off: usize, len: usize },
    FetchAdd { word: usize, add: u64 },
    Cas { word: usize, hit: bool, swap: u64 },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        (0..TARGET - 1).prop_flat_map(|off| {
            proptest::collection::vec(any::<u8>(), 1..=(TARGET - off).min(SLOT))
                .prop_map(move |data| Op::Write { off, data })
        }),
        (0..TARGET - 1).prop_flat_map(|off| {
            (1..=(TARGET - off).min(SLOT)).prop_map(move |len| Op::Read { off, len })
        }),
        (0..TARGET / 8, any::<u64>()).prop_map(|(word, add)| Op::FetchAdd { word, add }),
        (0..TARGET / 8, any::<bool>(), any::<u64>()).prop_map(|(word, hit, swap)| Op::Cas {
            word,
            hit,
            swap
        }),
    ]
}

fn word(m: &[u8], w: usize) -> u64 {
    u64::from_le_bytes(m[w * 8..w * 8 + 8].try_into().unwrap())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn random_rdma_ops_match_a_memory_model(
        init in proptest::collection::vec(any::<u8>(), TARGET),
        ops in proptest::collection::vec(op(), 1..48),
        miss in any::<u64>(),
    ) {
        let caps = QpCaps { max_send_wr: 64, ..QpCaps::default() };
        let (mut a, b) = pair_with(Progress::Manual, caps, 256);
        // SAFETY: no WQE that reads or writes these bytes is in flight.
        unsafe { b.mr.write(0, &init) };
        let mut model = init.clone();
        // Expected bytes in each op's result slot (READ/atomics).
        let mut expect: Vec<Option<Vec<u8>>> = Vec::new();
        for (i, op) in ops.iter().enumerate() {
            let slot = a.mr.sge(i * SLOT, SLOT as u32);
            let signaled = i + 1 == ops.len();
            let r = |off: usize| b.mr.remote(off);
            let posted = match op {
                Op::Write { off, data } => {
                    // SAFETY: no WQE that reads or writes these bytes is in flight.
                    unsafe { a.mr.write(i * SLOT, data) };
                    model[*off..off + data.len()].copy_from_slice(data);
                    expect.push(None);
                    let sge = [a.mr.sge(i * SLOT, data.len() as u32)];
                    let w = Write::new(r(*off), &sge);
                    if signaled { a.qp.post(&w.signaled()) } else { a.qp.post(&w) }
                }
                Op::Read { off, len } => {
                    expect.push(Some(model[*off..off + len].to_vec()));
                    let sge = [a.mr.sge(i * SLOT, *len as u32)];
                    let w = Read::new(r(*off), &sge);
                    if signaled { a.qp.post(&w.signaled()) } else { a.qp.post(&w) }
                }
                Op::FetchAdd { word: w, add } => {
                    let orig = word(&model, *w);
                    model[w * 8..w * 8 + 8].copy_from_slice(&orig.wrapping_add(*add).to_le_bytes());
                    expect.push(Some(orig.to_be_bytes().to_vec()));
                    let x = AtomicFa::new(r(w * 8), slot, *add);
                    if signaled { a.qp.post(&x.signaled()) } else { a.qp.post(&x) }
                }
                Op::Cas { word: w, hit, swap } => {
                    let orig = word(&model, *w);
                    let cmp = if *hit { orig } else { orig ^ (miss | 1) };
                    if *hit {
                        model[w * 8..w * 8 + 8].copy_from_slice(&swap.to_le_bytes());
                    }
                    expect.push(Some(orig.to_be_bytes().to_vec()));
                    let x = AtomicCas::new(r(w * 8), slot, cmp, *swap);
                    if signaled { a.qp.post(&x.signaled()) } else { a.qp.post(&x) }
                }
            };
            posted.unwrap();
        }
        a.qp.ring_doorbell();
        let c = a.expect(1);
        prop_assert_eq!(c[0].status(), Ok(()));
        let mut got = vec![0u8; TARGET];
        // SAFETY: the WQEs that wrote these bytes have completed (their
        // completions were polled) and none is in flight to them.
        unsafe { b.mr.read(0, &mut got) };
        prop_assert_eq!(got, model);
        for (i, e) in expect.iter().enumerate() {
            if let Some(e) = e {
                let mut r = vec![0u8; e.len()];
                // SAFETY: the WQEs that wrote these bytes have completed (their
                // completions were polled) and none is in flight to them.
                unsafe { a.mr.read(i * SLOT, &mut r) };
                prop_assert_eq!(&r, e, "result of op {} ({:?})", i, ops[i]);
            }
        }
    }
}
