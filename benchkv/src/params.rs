//! The parameters of one run, checked before any work.
//!
//! [`Params::check`] is called on every rank with the same arguments and the
//! same world size, so every rank refuses an impossible run with the same
//! message before a thread is started.

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::Error;

/// Largest value size (bytes).
pub const MAX_VALUE: usize = 4096;
/// Smallest value size (bytes): the verification tag needs 8.
pub const MIN_VALUE: usize = 8;
/// Most slots of an ipc ring, hence the largest queue depth per client.
pub const MAX_DEPTH: usize = 65536;
/// Most clients one daemon's ipc segment admits.
pub const MAX_CLIENTS_PER_DAEMON: usize = 4096;
/// Most daemons per rank (each is a busy thread).
pub const MAX_DAEMONS: usize = 64;
/// Most keys per rank (values live in memory, one shard per daemon).
pub const MAX_KEYS: u64 = 1 << 32;
/// Most bytes of values per rank.
pub const MAX_STORE_BYTES: u64 = 16 << 30;

/// The network layer between daemons of different ranks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Backend {
    /// copyrpc endpoints between daemons (`MLX5_DEVICE` picks the device).
    Copyrpc,
    /// UCP active messages. `tls`: the transports to use (`UCX_TLS`), or
    /// `None` for whatever the environment says.
    UcxAm {
        /// An explicit transport list (`tcp`, `shm`, ...).
        tls: Option<String>,
    },
}

impl Backend {
    /// Parses `copyrpc`, `ucx-am` or `ucx-am:TLS` (`ucx-am:tcp`,
    /// `ucx-am:shm`, `ucx-am:posix,sysv`).
    pub fn parse(s: &str) -> Result<Backend, Error> {
        match s {
            "copyrpc" => Ok(Backend::Copyrpc),
            "ucx-am" | "ucx" => Ok(Backend::UcxAm { tls: None }),
            other => match other
                .strip_prefix("ucx-am:")
                .or_else(|| other.strip_prefix("ucx:"))
            {
                Some(tls)
                    if !tls.is_empty()
                        && tls
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b"_,-^".contains(&b)) =>
                {
                    Ok(Backend::UcxAm {
                        tls: Some(tls.to_string()),
                    })
                }
                _ => Err(Error::Params(format!(
                    "unknown backend {s:?} (expected copyrpc, ucx-am or ucx-am:TLS such as ucx-am:tcp)"
                ))),
            },
        }
    }

    /// The short name, without transport: `copyrpc` or `ucx-am`.
    pub fn name(&self) -> &'static str {
        match self {
            Backend::Copyrpc => "copyrpc",
            Backend::UcxAm { .. } => "ucx-am",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Backend::Copyrpc => f.write_str("copyrpc"),
            Backend::UcxAm { tls: None } => f.write_str("ucx-am"),
            Backend::UcxAm { tls: Some(t) } => write!(f, "ucx-am:{t}"),
        }
    }
}

/// How keys are drawn.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub enum Dist {
    /// Every key equally likely.
    Uniform,
    /// Zipf with exponent θ: the i-th most popular key (1-based) has weight
    /// i^-θ.
    Zipf(f64),
}

impl Dist {
    /// Parses `uniform`, `zipf` (θ = 0.99) or `zipf:THETA`.
    pub fn parse(s: &str) -> Result<Dist, Error> {
        let bad = || {
            Error::Params(format!(
                "unknown key distribution {s:?} (expected uniform, zipf or zipf:THETA with 0 < THETA <= 10)"
            ))
        };
        match s {
            "uniform" => Ok(Dist::Uniform),
            "zipf" => Ok(Dist::Zipf(0.99)),
            other => {
                let theta: f64 = other
                    .strip_prefix("zipf:")
                    .ok_or_else(bad)?
                    .parse()
                    .map_err(|_| bad())?;
                if theta.is_finite() && theta > 0.0 && theta <= 10.0 {
                    Ok(Dist::Zipf(theta))
                } else {
                    Err(bad())
                }
            }
        }
    }
}

impl fmt::Display for Dist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Dist::Uniform => f.write_str("uniform"),
            Dist::Zipf(t) => write!(f, "zipf:{t}"),
        }
    }
}

/// When a daemon or client with nothing to do gives its core away
/// (`sched_yield`), so that a thread with work sharing the core runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum IdleYield {
    /// Decided by each rank when it starts (once for all its runs): at
    /// once (after one empty round) when its threads share cores (see
    /// [`shares_cores`]), else never.
    Auto,
    /// Never: every thread has a core of its own.
    Never,
    /// After this many empty rounds in a row.
    After(u32),
}

/// Most empty rounds `--idle-yield` may ask for.
pub const MAX_IDLE_ROUNDS: u32 = 1 << 20;

impl IdleYield {
    /// Parses `auto`, `never` or a number of empty rounds (1 or more).
    pub fn parse(s: &str) -> Result<IdleYield, Error> {
        match s {
            "auto" => Ok(IdleYield::Auto),
            "never" => Ok(IdleYield::Never),
            n => match n.parse::<u32>() {
                Ok(n @ 1..=MAX_IDLE_ROUNDS) => Ok(IdleYield::After(n)),
                _ => Err(Error::Params(format!(
                    "--idle-yield {s:?} (expected auto, never, or empty rounds 1..={MAX_IDLE_ROUNDS})"
                ))),
            },
        }
    }

    /// `Auto` decided (`shared`: the rank's busy threads share cores);
    /// the others as they are.
    pub fn resolve(self, shared: bool) -> IdleYield {
        match self {
            IdleYield::Auto if shared => IdleYield::After(1),
            IdleYield::Auto => IdleYield::Never,
            other => other,
        }
    }

    /// What the reports say of the policy.
    pub fn describe(self) -> String {
        match self.rounds() {
            Some(1) => "idle threads yield their core at once".into(),
            Some(n) => format!("idle threads yield their core after {n} empty rounds"),
            None => "idle threads never yield their core".into(),
        }
    }

    /// Empty rounds before yielding; `None`: never. An unresolved `Auto`
    /// yields at once (the choice for a shared core, which is safe when
    /// nothing is known).
    pub fn rounds(self) -> Option<u32> {
        match self {
            IdleYield::Auto => Some(1),
            IdleYield::Never => None,
            IdleYield::After(n) => Some(n),
        }
    }
}

impl fmt::Display for IdleYield {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IdleYield::Auto => f.write_str("auto"),
            IdleYield::Never => f.write_str("never"),
            IdleYield::After(n) => write!(f, "{n}"),
        }
    }
}

/// A busy loop's empty rounds, counted to give the core away as an
/// [`IdleYield`] says.
#[derive(Debug)]
pub struct Idler {
    after: Option<u32>,
    empty: u32,
}

impl Idler {
    /// Counting for `policy`.
    pub fn new(policy: IdleYield) -> Idler {
        Idler {
            after: policy.rounds(),
            empty: 0,
        }
    }

    /// A round that did something.
    pub fn busy(&mut self) {
        self.empty = 0;
    }

    /// A round that found nothing: yields the core when the policy says.
    pub fn idle(&mut self) {
        if let Some(n) = self.after {
            self.empty += 1;
            if self.empty >= n {
                std::thread::yield_now();
                self.empty = 0;
            }
        }
    }
}

/// Whether a rank's busy threads share cores: `host_busy` busy threads of
/// all the ranks on its host against the host's `online` CPUs, or its own
/// `per_rank` against the CPUs it may run on (`allowed`: mpirun may bind
/// it to fewer).
pub fn shares_cores(host_busy: usize, online: usize, per_rank: usize, allowed: usize) -> bool {
    host_busy > online || per_rank > allowed
}

/// One run's parameters (per rank unless said otherwise).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Params {
    /// The network layer between ranks.
    pub backend: Backend,
    /// Daemon threads per rank.
    pub daemons: usize,
    /// Clients per rank.
    pub clients: usize,
    /// Clients are processes (attached to their daemon's ipc segment from
    /// another process), not threads of the rank.
    pub client_procs: bool,
    /// Calls each client keeps in flight.
    pub depth: usize,
    /// Keys per rank (the key space is `ranks × keys`).
    pub keys: u64,
    /// Fraction of GETs.
    pub read_ratio: f64,
    /// How keys are drawn.
    pub dist: Dist,
    /// Bytes per value.
    pub value_size: usize,
    /// Time before measuring, each run.
    pub warmup: Duration,
    /// Measured time, each run.
    pub duration: Duration,
    /// Measured runs.
    pub runs: u32,
    /// Seed of every client's operation stream.
    pub seed: u64,
    /// Check every GET against the last PUT of its key.
    pub verify: bool,
    /// When idle daemons and clients yield their core (resolved by each
    /// rank when the run starts; reports show what it decided).
    pub idle_yield: IdleYield,
    /// Time every daemon round (see [`crate::daemon::RoundCosts`]).
    #[serde(default)]
    pub round_costs: bool,
}

impl Default for Params {
    fn default() -> Self {
        Params {
            backend: Backend::Copyrpc,
            daemons: 1,
            clients: 1,
            client_procs: false,
            depth: 8,
            keys: 1024,
            read_ratio: 0.5,
            dist: Dist::Uniform,
            value_size: 8,
            warmup: Duration::from_secs(1),
            duration: Duration::from_secs(5),
            runs: 1,
            seed: 1,
            verify: false,
            idle_yield: IdleYield::Auto,
            round_costs: false,
        }
    }
}

impl Params {
    /// Refuses parameters that cannot run on `ranks` ranks, naming the
    /// parameter and the limit.
    pub fn check(&self, ranks: usize) -> Result<(), Error> {
        let bad = |m: String| Err(Error::Params(m));
        if ranks < 2 {
            return bad(format!(
                "{ranks} rank(s): benchkv measures requests between ranks, so it needs at least 2 \
                 (launch it with mpirun -n 2; see benchkv/README.md)"
            ));
        }
        if self.daemons == 0 || self.daemons > MAX_DAEMONS {
            return bad(format!(
                "--daemons {} (1..={MAX_DAEMONS} per rank)",
                self.daemons
            ));
        }
        if self.clients == 0 {
            return bad("--clients 0: at least one client per rank is needed".into());
        }
        let per_daemon = self.clients.div_ceil(self.daemons);
        if per_daemon > MAX_CLIENTS_PER_DAEMON {
            return bad(format!(
                "--clients {} over {} daemon(s) puts {per_daemon} clients on one daemon's ipc segment (at most {MAX_CLIENTS_PER_DAEMON})",
                self.clients, self.daemons
            ));
        }
        if self.depth == 0 {
            return bad("--depth 0: a client needs at least one call in flight".into());
        }
        if self.depth > MAX_DEPTH {
            return bad(format!(
                "--depth {} is larger than the ipc ring (at most {MAX_DEPTH} slots per client)",
                self.depth
            ));
        }
        if self.keys == 0 || self.keys > MAX_KEYS {
            return bad(format!("--keys {} (1..={MAX_KEYS} per rank)", self.keys));
        }
        if !(MIN_VALUE..=MAX_VALUE).contains(&self.value_size) {
            return bad(format!(
                "--value-size {} ({MIN_VALUE}..={MAX_VALUE} bytes)",
                self.value_size
            ));
        }
        let store = self.keys.saturating_mul(self.value_size as u64);
        if store > MAX_STORE_BYTES {
            return bad(format!(
                "--keys {} of {} bytes need {store} bytes per rank (at most {MAX_STORE_BYTES})",
                self.keys, self.value_size
            ));
        }
        if !(0.0..=1.0).contains(&self.read_ratio) {
            return bad(format!("--read-ratio {} (0..=1)", self.read_ratio));
        }
        if self.duration.is_zero() {
            return bad("--duration must be more than 0 seconds".into());
        }
        if self.runs == 0 {
            return bad("--runs 0: at least one run".into());
        }
        if self.verify && self.read_ratio == 0.0 {
            return bad(
                "--verify checks what GETs return, and --read-ratio 0 issues none: nothing would be checked"
                    .into(),
            );
        }
        if self.verify {
            // Each client owns the keys whose slot in their shard is its id
            // modulo the number of clients (see `route::Ownership`): every
            // client must own at least one key.
            let clients = (ranks * self.clients) as u64;
            let shards = (ranks * self.daemons) as u64;
            let total = ranks as u64 * self.keys;
            if (clients - 1).saturating_mul(shards) >= total {
                return bad(format!(
                    "--verify gives each of the {clients} clients keys of its own, but {total} keys over {shards} shards leave some client none (need --keys > {} per rank)",
                    (clients - 1) * self.daemons as u64
                ));
            }
        }
        Ok(())
    }

    /// Every parameter as (name, value) pairs, for reports.
    pub fn pairs(&self) -> Vec<(&'static str, String)> {
        vec![
            ("backend", self.backend.to_string()),
            ("daemons", self.daemons.to_string()),
            ("clients", self.clients.to_string()),
            ("client_procs", self.client_procs.to_string()),
            ("depth", self.depth.to_string()),
            ("keys", self.keys.to_string()),
            ("read_ratio", self.read_ratio.to_string()),
            ("dist", self.dist.to_string()),
            ("value_size", self.value_size.to_string()),
            ("warmup_s", self.warmup.as_secs_f64().to_string()),
            ("duration_s", self.duration.as_secs_f64().to_string()),
            ("runs", self.runs.to_string()),
            ("seed", self.seed.to_string()),
            ("verify", self.verify.to_string()),
            ("idle_yield", self.idle_yield.to_string()),
            ("round_costs", self.round_costs.to_string()),
        ]
    }
}

/// Parses a duration in seconds (`5`, `0.5`).
pub fn parse_seconds(s: &str) -> Result<Duration, String> {
    let v: f64 = s
        .parse()
        .map_err(|_| format!("{s:?} is not a number of seconds"))?;
    if !v.is_finite() || !(0.0..=86_400.0).contains(&v) {
        return Err(format!("{s:?}: seconds must be in 0..=86400"));
    }
    Ok(Duration::from_secs_f64(v))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backends_parse_with_and_without_transport() {
        assert_eq!(Backend::parse("copyrpc").unwrap(), Backend::Copyrpc);
        assert_eq!(
            Backend::parse("ucx-am").unwrap(),
            Backend::UcxAm { tls: None }
        );
        let tcp = Backend::parse("ucx-am:tcp").unwrap();
        assert_eq!(
            tcp,
            Backend::UcxAm {
                tls: Some("tcp".into())
            }
        );
        assert_eq!(tcp.to_string(), "ucx-am:tcp");
        for bad in ["", "tcp", "ucx-am:", "ucx-am:a b", "copyrpc2"] {
            let e = Backend::parse(bad).unwrap_err().to_string();
            assert!(e.contains("unknown backend"), "{bad}: {e}");
        }
    }

    #[test]
    fn distributions_parse_and_refuse_bad_exponents() {
        assert_eq!(Dist::parse("uniform").unwrap(), Dist::Uniform);
        assert_eq!(Dist::parse("zipf").unwrap(), Dist::Zipf(0.99));
        assert_eq!(Dist::parse("zipf:1.2").unwrap(), Dist::Zipf(1.2));
        for bad in [
            "zipf:0", "zipf:-1", "zipf:nan", "zipf:inf", "zipf:", "normal",
        ] {
            assert!(Dist::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn defaults_are_valid_on_two_ranks_and_one_rank_is_refused() {
        Params::default().check(2).unwrap();
        Params::default().check(4).unwrap();
        refused(Params::default(), 1, "at least 2");
    }

    fn refused(p: Params, ranks: usize, needle: &str) {
        let e = p.check(ranks).unwrap_err();
        assert!(matches!(e, Error::Params(_)));
        assert_eq!(e.exit_code(), 2);
        assert!(e.to_string().contains(needle), "{e} lacks {needle:?}");
    }

    #[test]
    fn impossible_parameters_are_refused_with_the_parameter_named() {
        let d = Params::default;
        refused(Params { clients: 0, ..d() }, 2, "--clients 0");
        refused(Params { daemons: 0, ..d() }, 2, "--daemons 0");
        refused(Params { depth: 0, ..d() }, 2, "--depth 0");
        refused(
            Params {
                depth: MAX_DEPTH + 1,
                ..d()
            },
            2,
            "larger than the ipc ring",
        );
        refused(
            Params {
                value_size: MAX_VALUE + 1,
                ..d()
            },
            2,
            "--value-size 4097",
        );
        refused(
            Params {
                value_size: 7,
                ..d()
            },
            2,
            "--value-size 7",
        );
        refused(
            Params {
                read_ratio: 1.5,
                ..d()
            },
            2,
            "--read-ratio",
        );
        refused(
            Params {
                duration: Duration::ZERO,
                ..d()
            },
            2,
            "--duration",
        );
        refused(Params { runs: 0, ..d() }, 2, "--runs 0");
        refused(
            Params {
                verify: true,
                read_ratio: 0.0,
                ..d()
            },
            2,
            "--read-ratio 0 issues none",
        );
        refused(Params { keys: 0, ..d() }, 2, "--keys 0");
        refused(
            Params {
                keys: MAX_KEYS,
                value_size: MAX_VALUE,
                ..d()
            },
            2,
            "bytes per rank",
        );
        refused(
            Params {
                clients: 8 * MAX_CLIENTS_PER_DAEMON,
                daemons: 4,
                ..d()
            },
            2,
            "ipc segment",
        );
    }

    #[test]
    fn verify_needs_a_key_for_every_client() {
        let p = Params {
            verify: true,
            keys: 3,
            clients: 2,
            ..Params::default()
        };
        // 2 ranks × 2 clients = 4 clients, 2 shards, 6 keys: client 3 would
        // own slot 3 of a shard of 3 keys.
        refused(p.clone(), 2, "--verify");
        Params { keys: 7, ..p }.check(2).unwrap();
    }

    #[test]
    fn seconds_parse() {
        assert_eq!(parse_seconds("0.5").unwrap(), Duration::from_millis(500));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("x").is_err());
        assert!(parse_seconds("inf").is_err());
    }

    #[test]
    fn the_idle_policy_parses_and_resolves_by_the_threads_per_core() {
        assert_eq!(IdleYield::parse("auto").unwrap(), IdleYield::Auto);
        assert_eq!(IdleYield::parse("never").unwrap(), IdleYield::Never);
        assert_eq!(IdleYield::parse("64").unwrap(), IdleYield::After(64));
        for bad in ["0", "-1", "x", "", "1048577"] {
            let e = IdleYield::parse(bad).unwrap_err().to_string();
            assert!(e.contains("--idle-yield"), "{bad}: {e}");
        }
        // Auto: at once when threads share cores, else never; a policy
        // given is kept.
        assert_eq!(IdleYield::Auto.resolve(true), IdleYield::After(1));
        assert_eq!(IdleYield::Auto.resolve(false), IdleYield::Never);
        assert_eq!(IdleYield::Never.resolve(true), IdleYield::Never);
        assert_eq!(IdleYield::After(7).resolve(false), IdleYield::After(7));
        // Two ranks of 3 threads on 8 CPUs share none, even bound to 4
        // each; on 4 CPUs, or bound to 2, they do.
        assert!(!shares_cores(6, 8, 3, 4));
        assert!(shares_cores(6, 4, 3, 4));
        assert!(shares_cores(6, 8, 3, 2));
        assert_eq!(
            IdleYield::Never.describe(),
            "idle threads never yield their core"
        );
        assert_eq!(
            IdleYield::After(1).describe(),
            "idle threads yield their core at once"
        );
        assert_eq!(IdleYield::After(7).rounds(), Some(7));
        assert_eq!(IdleYield::Never.rounds(), None);
        for y in [IdleYield::Auto, IdleYield::Never, IdleYield::After(3)] {
            assert_eq!(IdleYield::parse(&y.to_string()).unwrap(), y);
        }
        let pairs = Params::default().pairs();
        assert!(pairs.contains(&("idle_yield", "auto".to_string())));
    }
}
