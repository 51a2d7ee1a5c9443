//! A `loom` model of the send-queue / completion-queue protocol between
//! the three parties that share a QP's memory: the poster, the device and
//! the CQ poller, each on its own thread. Every interleaving (and every
//! value a weak memory order allows) of a tiny configuration is explored:
//! a 2-WQEBB send queue and a 2-entry CQ, three signaled one-WQEBB WQEs,
//! so both rings wrap.
//!
//! | word | written by | read by | code |
//! |---|---|---|---|
//! | SQ WQEBB | poster, before the doorbell record | device, after it | `Qp::post_with`, `engine::local_phase` |
//! | SQ doorbell record (`pi`, be32) | poster, `Release` | device, `Acquire` | `Qp::ring_doorbell`, `SoftQp::sq_pi` |
//! | CQE body | device, before `op_own` | poller, after it | `SoftCq::push`, `Cq::poll` |
//! | CQE `op_own` | device, last, `Release` | poller, `Acquire` | `SoftCq::push`, `Cq::poll` |
//! | CQ doorbell record (`ci`, be32) | poller, `Release`, before the SQ space is returned | device, `Acquire`, before it writes a slot | `Cq::poll`, `SoftCq::push` |
//! | `QpTrack::completed` | poller, `Release` | poster, `Acquire` | `QpTrack::send_completed`, `Qp::retire` |
//!
//! What is checked: the device never reads a WQEBB the poster is writing
//! or has not written (loom's cell tracking reports the race; the device's
//! own index check, as in `local_phase`, reports a stale WQE); the poller
//! never reads a CQE body the device is writing (cell tracking); CQEs
//! arrive in order, none lost or overwritten; the device never finds the
//! CQ full (at most two CQEs can be unpolled here, so any overrun is
//! false); the poster never writes a WQEBB the device may still read (cell
//! tracking); and when every posted WQE was polled, the poster gets its
//! whole ring back.
//!
//! The poster's ring accounting is the crate's own [`SqRing`] and the
//! poller's ownership test is [`cqe::is_sw_owned`]; the rest mirrors the
//! functions named in the table, step by step, with their orderings. Each
//! party makes a bounded number of attempts, passes or polls instead of
//! spinning, and loom explores their interleavings up to a preemption
//! bound ([`PREEMPTIONS`]). Not modelled: the device's wake-up
//! (`Bell::ring`/`Bell::sleep`, which only decides whether a sleeping
//! device thread is woken; the model's device makes its passes),
//! receives and SRQs, errors and flushes.
//!
//! The same model with the poll order before commit 9d64801 (SQ space
//! returned per CQE, the CQ consumer index published after the batch)
//! fails with a false overrun, and each of the doorbell record's,
//! `op_own`'s and `QpTrack::completed`'s `Release` weakened to `Relaxed`
//! fails with a race: those tests expect the failure. The CQ consumer
//! index's `Release` is not load-bearing in this configuration (checked:
//! the model passes with it `Relaxed`): the poller stores it before its
//! `Release` of `completed`, and the device learns of every WQE that could
//! need the freed slot through the poster's `Acquire`/`Release` chain, so
//! it sees the index anyway. What matters there, and what 9d64801 fixed,
//! is its place before the space is returned.
//!
//! `RUSTFLAGS="--cfg mlx5_loom" cargo test -p mlx5 --test queue_model --release`
#![cfg(mlx5_loom)]

use loom::cell::UnsafeCell;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicBool, AtomicU8, AtomicU32, Ordering};
use loom::thread;
use mlx5::cqe;
use mlx5::wqe::SqRing;

/// Send-queue WQEBBs (every WQE is one WQEBB).
const SQ: u32 = 2;
/// CQ entries, and its log2.
const CQ: u32 = 2;
const LOG_CQ: u32 = 1;
/// WQEs posted: enough to wrap both rings.
const WQES: u32 = 3;
/// `QpTrack`'s "a completion was seen" bit.
const COMPLETED_VALID: u32 = 1 << 16;

/// The order in which `Cq::poll` publishes the consumer index and returns
/// send-queue space.
#[derive(Clone, Copy)]
enum PollOrder {
    /// Today's `Cq::poll`: per CQE, `ci` is published (`Release`), then
    /// `Cq::retire` returns the send-queue space.
    CiThenRetire,
    /// Before 9d64801: per CQE, `Cq::retire` first; `ci` published once,
    /// after the batch.
    RetireThenCiAfterBatch,
}

/// The protocol's orderings, as the code uses them or weakened.
#[derive(Clone, Copy)]
struct Model {
    poll: PollOrder,
    /// `Qp::ring_doorbell`'s store of the SQ doorbell record.
    doorbell: Ordering,
    /// `SoftCq::push`'s store of `op_own`.
    cqe_owner: Ordering,
    /// `Cq::poll`'s store of the CQ doorbell record.
    cq_ci: Ordering,
    /// `QpTrack::send_completed`'s store.
    completed: Ordering,
}

/// The code as it is.
const CODE: Model = Model {
    poll: PollOrder::CiThenRetire,
    doorbell: Ordering::Release,
    cqe_owner: Ordering::Release,
    cq_ci: Ordering::Release,
    completed: Ordering::Release,
};

/// The memory the three share: the QP's and the CQ's buffers and doorbell
/// records, and the `QpTrack`.
struct Shared {
    /// Each WQEBB holds what the device checks first: the WQE index
    /// (`local_phase` refuses a WQE whose index is not its position).
    sq: [UnsafeCell<u16>; SQ as usize],
    /// Doorbell record word 1.
    sq_dbrec: AtomicU32,
    /// CQE bodies: the `wqe_counter`.
    cqe_body: [UnsafeCell<u16>; CQ as usize],
    cqe_op_own: [AtomicU8; CQ as usize],
    /// The CQ's doorbell record.
    cq_dbrec: AtomicU32,
    /// `QpTrack::completed`.
    completed: AtomicU32,
    /// `CqShared::overrun`.
    overrun: AtomicBool,
}

impl Shared {
    fn new() -> Shared {
        // `init_invalid` in cq.rs: INVALID with owner 1, so the first lap
        // (owner 0) sees nothing.
        let invalid = (cqe::op::INVALID << 4) | 1;
        Shared {
            sq: [UnsafeCell::new(0), UnsafeCell::new(0)],
            sq_dbrec: AtomicU32::new(0),
            cqe_body: [UnsafeCell::new(0), UnsafeCell::new(0)],
            cqe_op_own: [AtomicU8::new(invalid), AtomicU8::new(invalid)],
            cq_dbrec: AtomicU32::new(0),
            completed: AtomicU32::new(0),
            overrun: AtomicBool::new(false),
        }
    }
}

/// Attempts the poster makes to post (a full queue costs one), passes
/// the device makes over the queue, and polls the poller makes. Each
/// party runs a bounded number of steps instead of spinning, yielding
/// when it finds nothing to do: loom explores the interleavings of those
/// steps, among them the ones where every WQE gets through (checked: an
/// assertion that none does fails) and the ones where not all do. Safety
/// is checked in all of them, the returned ring in the first.
const POST_TRIES: u32 = 5;
const DEVICE_PASSES: u32 = 3;
const POLLS: u32 = 3;

/// The poster: `Qp::post_with` (reserve, write the WQEBB, commit) and
/// `Qp::ring_doorbell` per WQE; on a full queue `Qp::retire` first, and
/// if still full, a failed attempt (`SendQueueFull` to the caller, who
/// tries again). Returns its ring and how many WQEs it posted.
fn poster(m: Model, s: &Shared) -> (SqRing, u32) {
    let mut ring = SqRing::new(SQ);
    let mut posted = 0;
    for _ in 0..POST_TRIES {
        if posted == WQES {
            break;
        }
        let slot = match ring.reserve(1) {
            Ok(slot) => slot,
            Err(_) => {
                retire(s, &mut ring);
                match ring.reserve(1) {
                    Ok(slot) => slot,
                    Err(_) => {
                        thread::yield_now();
                        continue;
                    }
                }
            }
        };
        let at = (slot.at % SQ) as usize;
        // SAFETY: `SqRing` counted this WQEBB free, so the device is done
        // with it (loom reports the race if that is not so).
        s.sq[at].with_mut(|p| unsafe { *p = slot.at as u16 });
        ring.commit(slot, 1);
        // `Qp::ring_doorbell`: Release, the device reads the WQEs after it
        // sees the counter.
        s.sq_dbrec.store((ring.pi() & 0xffff).to_be(), m.doorbell);
        posted += 1;
    }
    (ring, posted)
}

/// `Qp::retire`: the send-queue space up to the latest polled completion.
fn retire(s: &Shared, ring: &mut SqRing) {
    // Acquire: pairs with `QpTrack::send_completed`.
    let c = s.completed.load(Ordering::Acquire);
    if c & COMPLETED_VALID == 0 {
        return;
    }
    let idx = c as u16;
    let pi = ring.pi();
    let back = u32::from((pi as u16).wrapping_sub(idx));
    let ci_now = ring.ci();
    if back == 0 || back > pi.wrapping_sub(ci_now) {
        return;
    }
    let new_ci = pi.wrapping_sub(back).wrapping_add(1); // every WQE is 1 WQEBB
    if new_ci.wrapping_sub(ci_now) <= pi.wrapping_sub(ci_now) {
        ring.retire(new_ci);
    }
}

/// The device: passes of `engine::progress`/`process_qp`, each reading the
/// doorbell record (`SoftQp::sq_pi`) and executing what it says was
/// posted: `local_phase` copies the WQE, then `SoftCq::push` writes its
/// completion.
fn device(m: Model, s: &Shared) {
    let (mut sq_ci, mut cq_pi) = (0u32, 0u32);
    for _ in 0..DEVICE_PASSES {
        // Acquire: pairs with the poster's Release; the WQEs are visible.
        let pi = u32::from_be(s.sq_dbrec.load(Ordering::Acquire)) as u16;
        if sq_ci as u16 == pi {
            thread::yield_now();
        }
        while sq_ci as u16 != pi {
            // SAFETY: posted, so the poster no longer writes it (loom
            // reports the race if that is not so).
            let index = s.sq[(sq_ci % SQ) as usize].with(|p| unsafe { *p });
            assert_eq!(index, sq_ci as u16, "the device read a stale WQE");
            sq_ci += 1;
            // SoftCq::push. Acquire: pairs with the poller's Release; the
            // slots it consumed are free.
            let ci = u32::from_be(s.cq_dbrec.load(Ordering::Acquire)) & 0x00ff_ffff;
            let used = cq_pi.wrapping_sub(ci) & 0x00ff_ffff;
            if used >= CQ {
                // Relaxed: a sticky flag, as in the code (the CQE is lost).
                s.overrun.store(true, Ordering::Relaxed);
                continue;
            }
            let owner = ((cq_pi >> LOG_CQ) & 1) as u8;
            let slot = (cq_pi & (CQ - 1)) as usize;
            // SAFETY: the poller is done with this slot, as ci says (loom
            // reports the race if that is not so).
            s.cqe_body[slot].with_mut(|p| unsafe { *p = index });
            // Release: the body above is visible before the owner flips.
            s.cqe_op_own[slot].store((cqe::op::REQ << 4) | owner, m.cqe_owner);
            cq_pi += 1;
        }
    }
}

/// The poller: calls of `Cq::poll` (up to the whole CQ each), whose
/// `Cq::retire` calls `QpTrack::send_completed`. Returns the CQEs polled.
fn poller(m: Model, s: &Shared) -> u32 {
    let (mut ci, mut next) = (0u32, 0u16);
    for _ in 0..POLLS {
        let mut n = 0;
        while n < CQ {
            let slot = (ci & (CQ - 1)) as usize;
            // Acquire: the CQE body was written before op_own.
            let op_own = s.cqe_op_own[slot].load(Ordering::Acquire);
            if !cqe::is_sw_owned(op_own, ci, LOG_CQ) {
                break;
            }
            // SAFETY: software-owned, so the device does not write it until
            // the doorbell record moves (loom reports the race if it does).
            let counter = s.cqe_body[slot].with(|p| unsafe { *p });
            assert_eq!(counter, next, "CQEs in order, none lost or overwritten");
            next += 1;
            ci = ci.wrapping_add(1);
            match m.poll {
                PollOrder::CiThenRetire => {
                    // Release: the device may reuse the slot only after our
                    // reads; published before the space is returned.
                    s.cq_dbrec.store((ci & 0x00ff_ffff).to_be(), m.cq_ci);
                    // `QpTrack::send_completed`. Release: the poster reuses
                    // the WQEBBs only after this CQE was read.
                    s.completed
                        .store(COMPLETED_VALID | u32::from(counter), m.completed);
                }
                PollOrder::RetireThenCiAfterBatch => {
                    s.completed
                        .store(COMPLETED_VALID | u32::from(counter), m.completed);
                }
            }
            n += 1;
        }
        if matches!(m.poll, PollOrder::RetireThenCiAfterBatch) && n > 0 {
            s.cq_dbrec.store((ci & 0x00ff_ffff).to_be(), m.cq_ci);
        }
        if n == 0 {
            thread::yield_now();
        }
    }
    u32::from(next)
}

/// Preemptions explored per execution (waiting is a `yield_now`, which
/// costs none). The interleaving that breaks the poll order before
/// 9d64801 needs 2; 3 takes about 10 s on the 2-vCPU development VM, 4
/// about a minute (and passes too). `LOOM_MAX_PREEMPTIONS` overrides it.
const PREEMPTIONS: usize = 3;

fn check(m: Model) {
    let mut b = loom::model::Builder::new();
    b.preemption_bound = b.preemption_bound.or(Some(PREEMPTIONS));
    b.check(move || {
        let s = Arc::new(Shared::new());
        let p = {
            let s = s.clone();
            thread::spawn(move || poster(m, &s))
        };
        let d = {
            let s = s.clone();
            thread::spawn(move || device(m, &s))
        };
        let polled = poller(m, &s);
        d.join().unwrap();
        let (mut ring, posted) = p.join().unwrap();
        // Relaxed: every thread has been joined.
        assert!(
            !s.overrun.load(Ordering::Relaxed),
            "false CQ overrun: the device found the CQ full with at most {SQ} CQEs unpolled"
        );
        if polled == posted {
            retire(&s, &mut ring);
            assert_eq!(ring.free(), SQ, "every WQEBB came back");
        }
    });
}

#[test]
fn loom_sq_cq_protocol_as_coded_is_race_free_and_never_overruns() {
    check(CODE);
}

#[test]
#[should_panic(expected = "false CQ overrun")]
fn loom_poll_order_before_9d64801_overruns_the_cq() {
    check(Model {
        poll: PollOrder::RetireThenCiAfterBatch,
        ..CODE
    });
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_relaxed_doorbell_record_lets_the_device_read_a_wqe_being_written() {
    check(Model {
        doorbell: Ordering::Relaxed,
        ..CODE
    });
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_relaxed_op_own_lets_the_poller_read_a_cqe_being_written() {
    check(Model {
        cqe_owner: Ordering::Relaxed,
        ..CODE
    });
}

#[test]
#[should_panic(expected = "Causality violation")]
fn loom_relaxed_completion_lets_the_poster_reuse_a_wqebb_being_read() {
    check(Model {
        completed: Ordering::Relaxed,
        ..CODE
    });
}
