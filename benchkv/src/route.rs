//! Where a key lives, and which keys a client owns in verify mode.
//!
//! The key space is `0 .. ranks × keys_per_rank`. It is striped over the
//! `S = ranks × daemons` shards: key `k` lives in shard `k mod S`, at slot
//! `k / S` of that shard; shard `s` belongs to daemon `s mod daemons` of
//! rank `s / daemons`. Striping spreads neighbouring keys (and so the hot
//! head of a Zipf distribution, which is the lowest keys) over every shard
//! and every rank. Each rank holds `keys_per_rank` keys (exactly when it is
//! a multiple of `daemons`, otherwise within one key per shard).
//!
//! In verify mode each of the `G` clients (over all ranks) owns the keys
//! whose slot is its global id modulo `G`: every key has one writer, so the
//! last value PUT for a key is known to the one client that reads it, and a
//! client's keys still lie in every shard.

/// Key → (rank, daemon, slot).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Routing {
    ranks: u32,
    daemons: u32,
    total: u64,
    shards: u64,
    /// The two divisors of [`Routing::place`], fixed here: every request
    /// is routed, and the usual shapes (powers of two) need no division.
    by_shards: Divisor,
    by_daemons: Divisor,
}

/// A divisor fixed once: a shift and a mask when it is a power of two, a
/// division otherwise.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Divisor {
    d: u64,
    shift: Option<u32>,
}

impl Divisor {
    fn new(d: u64) -> Divisor {
        assert!(d > 0, "a divisor of 0");
        Divisor {
            d,
            shift: d.is_power_of_two().then(|| d.trailing_zeros()),
        }
    }

    /// `(n / d, n % d)`.
    #[inline]
    fn div_rem(self, n: u64) -> (u64, u64) {
        match self.shift {
            Some(s) => (n >> s, n & (self.d - 1)),
            None => (n / self.d, n % self.d),
        }
    }
}

/// Where one key lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Place {
    /// The owning rank.
    pub rank: u32,
    /// The owning daemon on that rank.
    pub daemon: u32,
    /// The key's index in that daemon's shard.
    pub slot: u64,
}

impl Routing {
    /// The routing of `ranks × keys_per_rank` keys over `ranks × daemons`
    /// shards.
    pub fn new(ranks: u32, daemons: u32, keys_per_rank: u64) -> Routing {
        assert!(ranks > 0 && daemons > 0, "at least one rank and daemon");
        let shards = u64::from(ranks) * u64::from(daemons);
        Routing {
            ranks,
            daemons,
            total: u64::from(ranks) * keys_per_rank,
            shards,
            by_shards: Divisor::new(shards),
            by_daemons: Divisor::new(u64::from(daemons)),
        }
    }

    /// Keys over all ranks.
    pub fn total_keys(&self) -> u64 {
        self.total
    }

    /// Shards over all ranks (one per daemon).
    pub fn shards(&self) -> u64 {
        self.shards
    }

    /// Ranks.
    pub fn ranks(&self) -> u32 {
        self.ranks
    }

    /// Daemons per rank.
    pub fn daemons(&self) -> u32 {
        self.daemons
    }

    /// Where `key` lives, or `None` outside the key space.
    #[inline]
    pub fn place(&self, key: u64) -> Option<Place> {
        if key >= self.total {
            return None;
        }
        let (slot, shard) = self.by_shards.div_rem(key);
        let (rank, daemon) = self.by_daemons.div_rem(shard);
        Some(Place {
            rank: rank as u32,
            daemon: daemon as u32,
            slot,
        })
    }

    /// Keys in the shard of `daemon` on `rank`.
    pub fn shard_len(&self, rank: u32, daemon: u32) -> u64 {
        let shard = u64::from(rank) * u64::from(self.daemons) + u64::from(daemon);
        if shard >= self.total {
            return 0;
        }
        (self.total - shard).div_ceil(self.shards)
    }

    /// Global index of daemon `daemon` of `rank` (`rank × daemons + daemon`).
    pub fn daemon_id(&self, rank: u32, daemon: u32) -> usize {
        rank as usize * self.daemons as usize + daemon as usize
    }
}

/// The keys one client may use: all of them, or in verify mode those it
/// owns (see the module docs). Index `i` in `0..len()` maps to a key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeySpace {
    /// Every key: index `i` is key `i`.
    All {
        /// Keys over all ranks.
        total: u64,
    },
    /// The keys client `client` of `clients` owns.
    Owned {
        /// Its global id.
        client: u64,
        /// Clients over all ranks.
        clients: u64,
        /// Shards over all ranks.
        shards: u64,
        /// Keys over all ranks.
        total: u64,
        /// How many it owns.
        len: u64,
    },
}

impl KeySpace {
    /// Every key of `routing`.
    pub fn all(routing: &Routing) -> KeySpace {
        KeySpace::All {
            total: routing.total,
        }
    }

    /// The keys global client `client` of `clients` owns.
    pub fn owned(routing: &Routing, client: u64, clients: u64) -> KeySpace {
        assert!(client < clients, "client {client} of {clients}");
        let (s, total) = (routing.shards, routing.total);
        // Block b holds the keys at slot client + b × clients of every
        // shard: S keys, fewer in the last block the key space cuts.
        let mut len = 0;
        let mut b = 0u64;
        loop {
            let first = (client + b * clients).saturating_mul(s);
            if first >= total {
                break;
            }
            len += (total - first).min(s);
            b += 1;
        }
        KeySpace::Owned {
            client,
            clients,
            shards: s,
            total,
            len,
        }
    }

    /// Keys in the space.
    pub fn len(&self) -> u64 {
        match *self {
            KeySpace::All { total } => total,
            KeySpace::Owned { len, .. } => len,
        }
    }

    /// Whether the space has no key.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The key at index `i` (`i < len()`). Indices follow key order, so a
    /// skewed index distribution favours the lowest keys.
    #[inline]
    pub fn key(&self, i: u64) -> u64 {
        match *self {
            KeySpace::All { .. } => i,
            KeySpace::Owned {
                client,
                clients,
                shards,
                ..
            } => (client + (i / shards) * clients) * shards + i % shards,
        }
    }

    /// The index of `key` in this space, if it belongs to it (the inverse
    /// of [`key`](Self::key)).
    #[inline]
    pub fn index(&self, key: u64) -> Option<u64> {
        match *self {
            KeySpace::All { total } => (key < total).then_some(key),
            KeySpace::Owned {
                client,
                clients,
                shards,
                total,
                ..
            } => {
                if key >= total {
                    return None;
                }
                let slot = key / shards;
                (slot % clients == client).then(|| (slot / clients) * shards + key % shards)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_key_lives_in_exactly_one_slot_and_shards_are_dense() {
        for (ranks, daemons, keys) in [(1, 1, 10), (2, 1, 1024), (2, 3, 100), (3, 2, 7)] {
            let r = Routing::new(ranks, daemons, keys);
            let mut seen = std::collections::HashSet::new();
            let mut per_shard = vec![0u64; (ranks * daemons) as usize];
            for k in 0..r.total_keys() {
                let p = r.place(k).unwrap();
                assert!(p.rank < ranks && p.daemon < daemons);
                assert!(p.slot < r.shard_len(p.rank, p.daemon), "slot in bounds");
                assert!(
                    seen.insert((p.rank, p.daemon, p.slot)),
                    "no two keys share a slot"
                );
                per_shard[r.daemon_id(p.rank, p.daemon)] += 1;
            }
            for rank in 0..ranks {
                for d in 0..daemons {
                    assert_eq!(per_shard[r.daemon_id(rank, d)], r.shard_len(rank, d));
                }
            }
            assert_eq!(r.place(r.total_keys()), None);
        }
    }

    /// Shifts and masks where the shapes are powers of two, divisions
    /// elsewhere: the same places as the striping formula of the module
    /// docs, for every shape up to 8 ranks × 8 daemons.
    #[test]
    fn places_follow_the_striping_formula_in_every_shape() {
        for ranks in 1..=8u32 {
            for daemons in 1..=8u32 {
                let r = Routing::new(ranks, daemons, 97);
                let s = u64::from(ranks * daemons);
                for key in (0..r.total_keys()).chain([u64::MAX - 1]) {
                    let want = (key < r.total_keys()).then(|| Place {
                        rank: ((key % s) / u64::from(daemons)) as u32,
                        daemon: ((key % s) % u64::from(daemons)) as u32,
                        slot: key / s,
                    });
                    assert_eq!(r.place(key), want, "{ranks} × {daemons}, key {key}");
                }
            }
        }
    }

    #[test]
    fn each_rank_holds_its_key_range_when_daemons_divide_it() {
        let r = Routing::new(2, 4, 1024);
        for rank in 0..2 {
            let held: u64 = (0..4).map(|d| r.shard_len(rank, d)).sum();
            assert_eq!(held, 1024);
        }
    }

    #[test]
    fn neighbouring_keys_go_to_different_ranks() {
        let r = Routing::new(2, 1, 1024);
        assert_eq!(r.place(0).unwrap().rank, 0);
        assert_eq!(r.place(1).unwrap().rank, 1);
        assert_eq!(r.place(2).unwrap().rank, 0);
    }

    #[test]
    fn owned_key_spaces_partition_the_keys_and_span_every_shard() {
        for (ranks, daemons, keys, clients) in [(2, 1, 1024, 2), (2, 2, 100, 6), (3, 1, 9, 3)] {
            let r = Routing::new(ranks, daemons, keys);
            let mut owner = vec![None; r.total_keys() as usize];
            for c in 0..clients {
                let ks = KeySpace::owned(&r, c, clients);
                assert!(!ks.is_empty());
                let mut shards = std::collections::HashSet::new();
                let mut last = None;
                for i in 0..ks.len() {
                    let k = ks.key(i);
                    assert!(k < r.total_keys());
                    assert!(last < Some(k), "indices follow key order");
                    last = Some(k);
                    assert_eq!(ks.index(k), Some(i));
                    assert_eq!(owner[k as usize].replace(c), None, "key {k} has one owner");
                    let p = r.place(k).unwrap();
                    shards.insert((p.rank, p.daemon));
                }
                if ks.len() >= r.shards() {
                    assert_eq!(
                        shards.len() as u64,
                        r.shards(),
                        "client {c} spans every shard"
                    );
                }
            }
            assert!(owner.iter().all(Option::is_some), "every key is owned");
            // A key of another client is not in this one's space.
            let ks = KeySpace::owned(&r, 0, clients);
            let foreign = (0..r.total_keys()).find(|&k| owner[k as usize] != Some(0));
            assert_eq!(ks.index(foreign.unwrap()), None);
        }
    }

    #[test]
    fn the_whole_space_maps_keys_to_themselves() {
        let r = Routing::new(2, 2, 10);
        let ks = KeySpace::all(&r);
        assert_eq!(ks.len(), 20);
        assert_eq!(ks.key(13), 13);
        assert_eq!(ks.index(13), Some(13));
        assert_eq!(ks.index(20), None);
    }
}
