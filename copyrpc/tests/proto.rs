//! The protocol core driven by random interleavings of call, reply, drop,
//! flush (accepted or failed) and delivery, on tiny rings and at every wrap
//! offset, with asymmetric request and reply sizes. A model wire copies
//! each flushed batch from the sender's send ring into the receiver's
//! receive ring at delivery time, in order, as an RC QP does; the NIC reads
//! the bytes late on purpose, so a sender that reused bytes too early is
//! caught. Asserted: no unread byte is overwritten (held requests keep
//! their bytes until released), no message is lost, duplicated or
//! reordered, replies always fit, and every state with work pending makes
//! progress until everything is answered.

use std::collections::{HashMap, VecDeque};

use copyrpc::proto::{AppendError, BATCH_HEADER, Conn, Flush, Limits, msg_wire};
use proptest::prelude::*;

/// One side of the model: its protocol state, its two rings, its calls in
/// flight and the requests it holds.
struct Side {
    conn: Conn,
    send: Vec<u8>,
    recv: Vec<u8>,
    /// Call id → (request sequence number, reply length it asked for).
    calls: HashMap<u32, (u64, u32)>,
    next_id: u32,
    /// Requests sent so far (their sequence numbers).
    sent_seq: u64,
    /// Next request sequence number expected from the peer.
    expect_seq: u64,
    /// Held requests: batch seq, call id, ring offset, the payload as it
    /// arrived.
    held: Vec<(u64, u32, usize, Vec<u8>)>,
    /// Flushed batches not yet delivered to the peer.
    wire: VecDeque<Flush>,
    answered: u64,
}

impl Side {
    fn new(lim: Limits) -> Side {
        Side {
            conn: Conn::new(lim).unwrap(),
            send: vec![0xee; lim.ring as usize],
            recv: vec![0xdd; lim.ring as usize],
            calls: HashMap::new(),
            next_id: 1,
            sent_seq: 0,
            expect_seq: 0,
            held: Vec::new(),
            wire: VecDeque::new(),
            answered: 0,
        }
    }
}

/// The request payload: its sequence number, the reply length it wants,
/// then bytes derived from both.
fn request(seq: u64, reply_len: u32, len: usize) -> Vec<u8> {
    let mut v = Vec::with_capacity(len.max(12));
    v.extend_from_slice(&seq.to_le_bytes());
    v.extend_from_slice(&reply_len.to_le_bytes());
    v.extend((12..len.max(12)).map(|i| (seq as u8).wrapping_mul(7).wrapping_add(i as u8)));
    v
}

fn reply_for(seq: u64, len: u32) -> Vec<u8> {
    (0..len)
        .map(|i| (seq as u8).wrapping_add(i as u8) ^ 0x5a)
        .collect()
}

#[derive(Clone, Debug)]
enum Op {
    Call { side: usize, len: usize, reply: u32 },
    Reply { side: usize, pick: usize },
    Drop { side: usize, pick: usize },
    Flush { side: usize, accepted: bool },
    Deliver { side: usize },
}

fn op(lim: Limits) -> impl Strategy<Value = Op> {
    let call = (0..2usize, 12..=lim.max_call as usize, 0..=lim.max_reply)
        .prop_map(|(side, len, reply)| Op::Call { side, len, reply });
    prop_oneof![
        4 => call,
        4 => (0..2usize, any::<usize>()).prop_map(|(side, pick)| Op::Reply { side, pick }),
        1 => (0..2usize, any::<usize>()).prop_map(|(side, pick)| Op::Drop { side, pick }),
        4 => (0..2usize, prop::bool::weighted(0.85))
            .prop_map(|(side, accepted)| Op::Flush { side, accepted }),
        5 => (0..2usize).prop_map(|side| Op::Deliver { side }),
    ]
}

struct World {
    s: [Side; 2],
}

impl World {
    fn call(&mut self, side: usize, len: usize, reply: u32) {
        let me = &mut self.s[side];
        let payload = request(me.sent_seq, reply, len);
        let id = me.next_id;
        match me.conn.call(me.send.as_mut_slice(), id, &payload) {
            Ok(()) => {
                me.calls.insert(id, (me.sent_seq, reply));
                me.next_id += 1;
                me.sent_seq += 1;
            }
            Err(AppendError::NoRoom) => {}
            Err(e) => panic!("call of {len} bytes: {e}"),
        }
    }

    fn answer(&mut self, side: usize, pick: usize, drop: bool) {
        let me = &mut self.s[side];
        if me.held.is_empty() {
            return;
        }
        let (seq, id, _, payload) = me.held.swap_remove(pick % me.held.len());
        let rseq = u64::from_le_bytes(payload[0..8].try_into().unwrap());
        let rlen = u32::from_le_bytes(payload[8..12].try_into().unwrap());
        let r = if drop {
            me.conn.reply_dropped(me.send.as_mut_slice(), id)
        } else {
            me.conn
                .reply(me.send.as_mut_slice(), id, &reply_for(rseq, rlen))
        };
        r.unwrap_or_else(|e| panic!("a reply must always fit: {e}"));
        me.conn.release(seq);
    }

    fn flush(&mut self, side: usize, accepted: bool) {
        let me = &mut self.s[side];
        if let Some(f) = me.conn.next_flush(me.send.as_mut_slice())
            && accepted
        {
            me.conn.flushed(f);
            me.wire.push_back(f);
        }
    }

    fn deliver(&mut self, side: usize) {
        let (a, b) = self.s.split_at_mut(1);
        let (me, peer) = if side == 0 {
            (&mut a[0], &mut b[0])
        } else {
            (&mut b[0], &mut a[0])
        };
        let Some(f) = me.wire.pop_front() else { return };
        let (o, l) = (f.offset as usize, f.len as usize);
        peer.recv[o..o + l].copy_from_slice(&me.send[o..o + l]);
        let parsed = peer
            .conn
            .on_batch(peer.recv.as_slice(), f.len)
            .unwrap_or_else(|e| panic!("a correct peer's batch: {e}"));
        let msgs = peer.conn.messages().to_vec();
        assert_eq!(msgs.len(), usize::from(parsed.count));
        for m in msgs {
            let data = &peer.recv[m.offset as usize..(m.offset + m.len) as usize];
            if m.response {
                let (seq, want) = peer
                    .calls
                    .remove(&m.id)
                    .unwrap_or_else(|| panic!("response to unknown or answered call {}", m.id));
                if !m.dropped {
                    assert_eq!(data, reply_for(seq, want).as_slice(), "reply to {seq}");
                }
                peer.conn.call_done();
                peer.answered += 1;
            } else {
                let seq = u64::from_le_bytes(data[0..8].try_into().unwrap());
                assert_eq!(seq, peer.expect_seq, "requests arrive in order, once");
                peer.expect_seq += 1;
                peer.held
                    .push((parsed.seq, m.id, m.offset as usize, data.to_vec()));
            }
        }
        peer.conn.advance();
    }

    /// Held requests still read what arrived (zero-copy views are never
    /// overwritten while held).
    fn check_held(&self) {
        for s in &self.s {
            for (_, _, at, copy) in &s.held {
                assert_eq!(&s.recv[*at..at + copy.len()], copy.as_slice());
                let seq = u64::from_le_bytes(copy[0..8].try_into().unwrap());
                let reply = u32::from_le_bytes(copy[8..12].try_into().unwrap());
                assert_eq!(copy, &request(seq, reply, copy.len()));
            }
        }
    }

    fn apply(&mut self, op: &Op) {
        match *op {
            Op::Call { side, len, reply } => self.call(side, len, reply),
            Op::Reply { side, pick } => self.answer(side, pick, false),
            Op::Drop { side, pick } => self.answer(side, pick, true),
            Op::Flush { side, accepted } => self.flush(side, accepted),
            Op::Deliver { side } => self.deliver(side),
        }
        self.check_held();
    }

    /// Answers, flushes and delivers until nothing is pending; panics if
    /// that does not converge (a deadlock).
    fn drain(&mut self) {
        for _ in 0..10_000 {
            for side in 0..2 {
                while !self.s[side].held.is_empty() {
                    self.answer(side, 0, false);
                }
                self.flush(side, true);
                while !self.s[side].wire.is_empty() {
                    self.deliver(side);
                }
            }
            let idle = self.s.iter().all(|s| {
                s.held.is_empty() && s.wire.is_empty() && s.calls.is_empty() && !s.conn.dirty()
            });
            if idle {
                return;
            }
        }
        panic!(
            "no progress: calls in flight {} / {}, dirty {} / {}",
            self.s[0].calls.len(),
            self.s[1].calls.len(),
            self.s[0].conn.dirty(),
            self.s[1].conn.dirty()
        );
    }
}

/// Tiny rings (a few batches per lap), 1 to 8 calls in flight, requests
/// and replies of equal or very different sizes; only valid combinations.
/// Both credit modes occur: rings with no room to spare send credit for
/// every reply batch (lag 0), the others hold it back (see
/// `tiny_limits_cover_both_credit_modes`).
fn tiny() -> impl Strategy<Value = Limits> {
    (0..3u32, 1..=8u32, 0..3usize, 0..2usize)
        .prop_map(|(ring, inflight, asym, batch)| tiny_limits(ring, inflight, asym, batch))
        .prop_filter("valid limits", |l| l.validate().is_ok())
}

fn tiny_limits(ring: u32, inflight: u32, asym: usize, batch: usize) -> Limits {
    let (max_call, max_reply) = [(24, 24), (16, 120), (120, 16)][asym];
    Limits {
        ring: 1024 << ring,
        max_inflight: inflight,
        max_call,
        max_reply,
        max_batch: [160, 320][batch],
    }
}

#[test]
fn tiny_limits_cover_both_credit_modes() {
    let mut lags = Vec::new();
    for ring in 0..3 {
        for inflight in 1..=8 {
            for asym in 0..3 {
                for batch in 0..2 {
                    let l = tiny_limits(ring, inflight, asym, batch);
                    if l.validate().is_ok() {
                        lags.push(l.credit_lag());
                    }
                }
            }
        }
    }
    let zero = lags.iter().filter(|&&g| g == 0).count();
    assert!(
        zero >= 8 && lags.len() - zero >= 8,
        "{zero} of {} with lag 0",
        lags.len()
    );
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    #[test]
    fn random_interleavings_keep_every_invariant(
        (lim, ops) in tiny().prop_flat_map(|lim| (Just(lim), prop::collection::vec(op(lim), 1..1500)))
    ) {
        let mut w = World { s: [Side::new(lim), Side::new(lim)] };
        for o in &ops {
            w.apply(o);
        }
        w.drain();
        let sent: u64 = w.s.iter().map(|s| s.sent_seq).sum();
        let answered: u64 = w.s.iter().map(|s| s.answered).sum();
        prop_assert_eq!(sent, answered, "every call answered exactly once");
    }
}

/// Every wrap offset: a stream of calls of one size, starting from each
/// 8-byte offset of a small ring, wraps at every possible place.
#[test]
fn every_wrap_offset_round_trips() {
    let lim = Limits {
        ring: 1024,
        max_inflight: 2,
        max_call: 40,
        max_reply: 40,
        max_batch: 128,
    };
    for shift in 0..(lim.ring / 8) as usize {
        let mut w = World {
            s: [Side::new(lim), Side::new(lim)],
        };
        // Move both rings by `shift` small round trips first.
        for _ in 0..shift {
            w.call(0, 12, 0);
            w.drain();
        }
        for len in [12usize, 20, 33, 40] {
            for _ in 0..40 {
                w.call(0, len, 40 - (len as u32 % 8));
                w.call(1, 40, len as u32);
                w.flush(0, true);
                w.deliver(0);
                w.answer(1, 0, false);
                w.flush(1, true);
                w.deliver(1);
            }
            w.drain();
        }
        assert_eq!(w.s[0].sent_seq, w.s[0].answered, "shift {shift}");
        assert_eq!(w.s[1].sent_seq, w.s[1].answered, "shift {shift}");
    }
}

/// A request held (zero-copy) by side 0 while side 0 keeps calling side 1:
/// side 1's replies land after it, the ring fills up behind it, and side
/// 0's new calls are refused (back-pressure) before a single byte of the
/// held request is overwritten. Releasing it lets everything drain.
#[test]
fn a_held_request_is_never_overwritten_and_backpressures_new_calls() {
    for max_reply in [16, 64] {
        let lim = Limits {
            ring: 1024,
            max_inflight: 2,
            max_call: 24,
            max_reply,
            max_batch: 128,
        };
        let mut w = World {
            s: [Side::new(lim), Side::new(lim)],
        };
        w.call(1, 24, 8);
        w.flush(1, true);
        w.deliver(1);
        assert_eq!(w.s[0].held.len(), 1);
        let mut refused = 0;
        for _ in 0..500 {
            let before = w.s[0].sent_seq;
            w.call(0, 12, max_reply);
            if w.s[0].sent_seq == before {
                refused += 1;
            }
            w.flush(0, true);
            w.deliver(0);
            w.answer(1, 0, false);
            w.flush(1, true);
            w.deliver(1);
            w.check_held();
        }
        assert!(refused > 400, "calls were not refused: {refused}");
        assert!(
            w.s[0].sent_seq > 5,
            "calls went through before the ring filled"
        );
        w.drain();
        assert_eq!(w.s[0].sent_seq, w.s[0].answered);
    }
}

#[test]
fn limits_that_cannot_work_are_refused() {
    let ok = Limits::default();
    ok.validate().unwrap();
    for bad in [
        Limits { ring: 1000, ..ok },
        Limits {
            max_inflight: 0,
            ..ok
        },
        Limits {
            max_batch: 100,
            ..ok
        },
        Limits {
            ring: 4096,
            max_inflight: 64,
            ..ok
        },
    ] {
        assert!(bad.validate().is_err(), "{bad:?}");
    }
}

/// Credit-only batches against the reply reserve. Side 0 holds nothing and
/// side 1 holds one request of side 0's, so side 1 consumes nothing more of
/// side 0's ring. Side 0 fills its ring with calls that side 1 answers, a
/// batch per reply, and returns credit for each reply batch with a
/// credit-only batch still on the wire when side 1 makes every call it may
/// to side 0. Side 1 cannot see those batches when it admits its calls:
/// unless its admission counts the ones side 0 may have sent, they take
/// the room of side 0's replies (`ReplyOverrun`, found by review). Swept
/// over limits and over how many calls side 0 has in flight when its ring
/// fills; everything must then drain. Counted only where side 0's
/// credit-only batches are on the wire (its credit lag is small enough
/// for those rounds' replies to exceed it).
#[test]
fn credit_only_batches_never_take_the_room_of_replies() {
    let mut overrun_shape_reached = 0;
    for k in [4u32, 8, 16, 32] {
        for ring in [1024u32, 2048, 4096, 8192] {
            for max_batch in [32u32, 64, 128, 256, 384, 512] {
                let lim = Limits {
                    ring,
                    max_inflight: k,
                    max_call: 16,
                    max_reply: 8,
                    max_batch,
                };
                if lim.validate().is_err() {
                    continue;
                }
                for per_round in 1..k {
                    let mut w = World {
                        s: [Side::new(lim), Side::new(lim)],
                    };
                    w.call(0, 12, 8);
                    w.flush(0, true);
                    w.deliver(0);
                    assert_eq!(w.s[1].held.len(), 1);
                    // Rounds of calls until side 0's ring refuses one;
                    // side 1 answers all but the held one, side 0 returns
                    // credit for each reply batch.
                    let mut in_flight = 0;
                    'fill: for _ in 0..1000 {
                        in_flight = 0;
                        for _ in 0..per_round {
                            let before = w.s[0].sent_seq;
                            w.call(0, 12, 8);
                            if w.s[0].sent_seq == before {
                                break 'fill;
                            }
                            in_flight += 1;
                            w.flush(0, true);
                            w.deliver(0);
                        }
                        answer_all_but_the_held_one(&mut w, true);
                    }
                    // The last calls' answers: side 0's credit for them
                    // stays on the wire while side 1 calls.
                    answer_all_but_the_held_one(&mut w, false);
                    let credit_on_wire = w.s[0]
                        .wire
                        .iter()
                        .filter(|f| u64::from(f.len) == BATCH_HEADER)
                        .count();
                    let mut admitted = 0;
                    for _ in 0..k {
                        let before = w.s[1].sent_seq;
                        w.call(1, 12, 8);
                        admitted += w.s[1].sent_seq - before;
                        w.flush(1, true);
                        w.deliver(1);
                    }
                    if in_flight > 2 && admitted > 0 && credit_on_wire > 0 {
                        overrun_shape_reached += 1;
                    }
                    // Side 0 answers each call in a batch of its own
                    // (`answer` panics on ReplyOverrun).
                    while !w.s[0].held.is_empty() {
                        w.answer(0, 0, false);
                        w.flush(0, true);
                    }
                    w.drain();
                    assert_eq!(w.s[0].sent_seq, w.s[0].answered);
                    assert_eq!(w.s[1].sent_seq, w.s[1].answered);
                }
            }
        }
    }
    assert!(
        overrun_shape_reached > 20,
        "the sweep rarely reached the shape: {overrun_shape_reached}"
    );
}

/// `max_inflight` calls, each flushed in a batch of its own, while the
/// peer answers none of them: every one is admitted (a review found the
/// first version of the credit-only bound refusing the last one whenever
/// an earlier call had been flushed alone). Also with the peer's credit
/// for `K` batches of replies still on the wire.
#[test]
fn max_inflight_calls_flushed_one_by_one_are_all_admitted() {
    for k in [1u32, 2, 8, 64] {
        let lim = Limits {
            ring: 1 << 16,
            max_inflight: k,
            max_call: 16,
            max_reply: 16,
            max_batch: 256,
        };
        let mut w = World {
            s: [Side::new(lim), Side::new(lim)],
        };
        // Side 1 calls side 0 k times; side 0 answers each in a batch of
        // its own, whose credit side 1 keeps on the wire.
        for _ in 0..k {
            w.call(1, 12, 8);
            w.flush(1, true);
            w.deliver(1);
        }
        for _ in 0..k {
            w.answer(0, 0, false);
            w.flush(0, true);
            w.deliver(0);
        }
        w.flush(1, true);
        assert_eq!(w.s[1].answered, u64::from(k));
        for i in 0..k {
            let before = w.s[0].sent_seq;
            w.call(0, 12, 8);
            assert_eq!(w.s[0].sent_seq, before + 1, "k {k}: call {i} refused");
            w.flush(0, true);
            w.deliver(0);
        }
        w.drain();
        assert_eq!(w.s[0].sent_seq, w.s[0].answered);
    }
}

/// Side 1 answers every request it holds but the first, a batch per
/// reply; side 0 returns credit for each reply batch, delivered to side 1
/// only if `deliver_credit`.
fn answer_all_but_the_held_one(w: &mut World, deliver_credit: bool) {
    while w.s[1].held.len() > 1 {
        let last = w.s[1].held.len() - 1;
        w.answer(1, last, false);
        w.flush(1, true);
        w.deliver(1);
        w.flush(0, true);
        if deliver_credit {
            w.deliver(0);
        }
    }
}

/// Flushes every batch side `side` has and delivers it; returns how many
/// of them were credit-only (empty).
fn flush_all(w: &mut World, side: usize) -> usize {
    let mut empty = 0;
    loop {
        let before = w.s[side].wire.len();
        w.flush(side, true);
        if w.s[side].wire.len() == before {
            break;
        }
        empty += usize::from(u64::from(w.s[side].wire.back().unwrap().len) == BATCH_HEADER);
    }
    while !w.s[side].wire.is_empty() {
        w.deliver(side);
    }
    empty
}

/// Call, reply, call, reply...: each request carries the credit for the
/// reply before it, so with room to spare in the ring (a credit lag) no
/// credit-only batch is ever written, in either direction; with none
/// (lag 0) every reply batch is followed by one, as before the lag.
#[test]
fn request_reply_streams_write_no_credit_only_batches() {
    let roomy = Limits::default();
    assert!(roomy.credit_lag() > 0);
    let tight = Limits {
        ring: 1024,
        max_inflight: 4,
        max_call: 64,
        max_reply: 64,
        max_batch: 176,
    };
    tight.validate().unwrap();
    assert_eq!(tight.credit_lag(), 0);
    for (lim, want_empty) in [(roomy, false), (tight, true)] {
        let mut w = World {
            s: [Side::new(lim), Side::new(lim)],
        };
        let (mut empty, rounds) = (0, 1000);
        for i in 0..rounds {
            let (caller, callee) = if i % 3 == 2 { (1, 0) } else { (0, 1) };
            w.call(caller, 40, 40);
            empty += flush_all(&mut w, caller);
            w.answer(callee, 0, false);
            empty += flush_all(&mut w, callee);
            empty += flush_all(&mut w, caller);
        }
        w.drain();
        assert_eq!(w.s[0].answered + w.s[1].answered, rounds as u64);
        if want_empty {
            assert_eq!(empty, rounds, "lag 0: one credit-only batch per reply");
        } else {
            assert_eq!(empty, 0, "lag {}: no credit-only batch", lim.credit_lag());
        }
    }
}

/// A side that consumed replies and has nothing to send holds their
/// credit back up to the lag, and sends a credit-only batch as soon as
/// it is over: after `n` replies of one batch each, it owes a flush
/// exactly when `n` reply batches exceed the lag. The peer can then still
/// make every call it may.
#[test]
fn credit_past_the_lag_goes_in_an_empty_batch() {
    let lim = Limits {
        ring: 4096,
        max_inflight: 8,
        max_call: 24,
        max_reply: 120,
        max_batch: 160,
    };
    lim.validate().unwrap();
    let reply_batch = BATCH_HEADER + msg_wire(lim.max_reply);
    let lag = lim.credit_lag();
    assert!(lag > 0 && u64::from(lim.max_inflight) * reply_batch > lag);
    let mut owed_seen = [false; 2];
    for n in 1..=u64::from(lim.max_inflight) {
        let mut w = World {
            s: [Side::new(lim), Side::new(lim)],
        };
        for _ in 0..n {
            w.call(0, 24, lim.max_reply);
        }
        flush_all(&mut w, 0);
        for _ in 0..n {
            w.answer(1, 0, false);
            flush_all(&mut w, 1);
        }
        assert_eq!(w.s[0].answered, n);
        let over = n * reply_batch > lag;
        assert_eq!(
            w.s[0].conn.dirty(),
            over,
            "{n} replies of {reply_batch} bytes, lag {lag}"
        );
        owed_seen[usize::from(over)] = true;
        assert_eq!(flush_all(&mut w, 0), usize::from(over));
        assert!(!w.s[0].conn.dirty());
        for i in 0..lim.max_inflight {
            let before = w.s[1].sent_seq;
            w.call(1, 24, lim.max_reply);
            assert_eq!(
                w.s[1].sent_seq,
                before + 1,
                "n {n}: side 1's call {i} refused"
            );
            flush_all(&mut w, 1);
        }
        w.drain();
        assert_eq!(w.s[1].answered, u64::from(lim.max_inflight));
    }
    assert_eq!(owed_seen, [true, true]);
}
