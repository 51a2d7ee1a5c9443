//! benchkv end to end: two ranks under `mpirun` on this host, as CI runs
//! it (the software device for copyrpc, UCX over tcp and shared memory).
//!
//! Needs Open MPI's `mpirun` (Debian: openmpi-bin; scripts/test.sh
//! installs it). The tests run one at a time: each starts busy threads on
//! every core.

use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::time::{Duration, Instant};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

fn mpirun(args: &[&str]) -> Command {
    mpirun_bound(&["--bind-to", "none"], args)
}

/// `mpirun` with the binding options `bind`.
fn mpirun_bound(bind: &[&str], args: &[&str]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", "2", "--oversubscribe"])
        .args(bind)
        .arg(env!("CARGO_BIN_EXE_benchkv"))
        .args(args)
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("MLX5_DEVICE", "soft:manual")
        .env_remove("UCX_TLS")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    c
}

fn spawn(mut c: Command) -> Child {
    c.spawn().unwrap_or_else(|e| {
        panic!(
            "starting mpirun: {e} (install Open MPI: apt-get install openmpi-bin libopenmpi-dev)"
        )
    })
}

/// Output lines of a child (stdout and stderr merged), as they come.
fn lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let out = child.stdout.take().expect("piped");
    let err = child.stderr.take().expect("piped");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        for l in BufReader::new(out).lines().map_while(Result::ok) {
            let _ = tx.send(l);
        }
    });
    std::thread::spawn(move || {
        for l in BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx2.send(l);
        }
    });
    rx
}

/// Waits for the child to exit within `limit`; kills it and fails if not.
fn wait(child: &mut Child, limit: Duration, what: &str) -> (ExitStatus, Duration) {
    let start = Instant::now();
    loop {
        if let Some(s) = child.try_wait().expect("waiting for mpirun") {
            return (s, start.elapsed());
        }
        if start.elapsed() > limit {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: mpirun still running after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn drain(rx: &mpsc::Receiver<String>) -> String {
    let mut s = String::new();
    while let Ok(l) = rx.recv_timeout(Duration::from_millis(200)) {
        s.push_str(&l);
        s.push('\n');
    }
    s
}

fn run(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut child = spawn(mpirun(args));
    let rx = lines(&mut child);
    let (status, _) = wait(&mut child, limit, &args.join(" "));
    (status, drain(&rx))
}

fn temp_json(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("benchkv-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir.join(name)
}

/// A short verified run of `backend`: both ranks measured something, no
/// mismatch, and the report names the transport.
fn smoke(backend: &str, transport: &str, extra: &[&str]) {
    smoke_with(backend, transport, extra, None);
}

/// `smoke` with `BENCHKV_TEST_FAULT` set to `fault`; returns the report.
fn smoke_with(
    backend: &str,
    transport: &str,
    extra: &[&str],
    fault: Option<&str>,
) -> serde_json::Value {
    let _g = serial();
    let json = temp_json(&format!("{}.json", backend.replace(':', "-")));
    let mut args = extra.to_vec();
    args.extend_from_slice(&[
        "--backend",
        backend,
        "--daemons",
        "2",
        "--clients",
        "2",
        "--depth",
        "4",
        "--warmup",
        "0.2",
        "--duration",
        "1",
        "--verify",
        "--value-size",
        "24",
        "--json",
        json.to_str().unwrap(),
    ]);
    let mut c = mpirun(&args);
    if let Some(f) = fault {
        c.env("BENCHKV_TEST_FAULT", f);
    }
    let mut child = spawn(c);
    let rx = lines(&mut child);
    let (status, _) = wait(&mut child, Duration::from_secs(120), backend);
    let out = drain(&rx);
    assert!(status.success(), "{backend}: {status}\n{out}");
    assert!(out.contains("verify: 0 mismatch(es)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert_eq!(report["schema"], "benchkv/3");
    // The floors of the same run, and the figures against them.
    let floors = &report["floors"];
    assert!(floors["cache_line_ns"].as_f64().unwrap() > 0.0, "{floors}");
    let raw = &floors["write_imm"];
    assert!(raw["round_trip_p50_ns"].as_u64().unwrap() > 0, "{floors}");
    assert!(raw["round_trips_per_s"].as_f64().unwrap() > 0.0, "{floors}");
    assert_eq!(raw["selection"], "soft:manual");
    assert!(
        report["vs_floors"]["remote_ops_vs_raw_rate"]
            .as_f64()
            .unwrap()
            > 0.0
    );
    assert!(report["canary"]["before_ns"].as_f64().unwrap() > 0.0);
    assert!(
        out.contains("floors (measured before the run): cache-line round trip"),
        "{out}"
    );
    assert_eq!(report["mismatches"], 0);
    assert_eq!(report["metadata"]["backend"], backend);
    let t = report["metadata"]["transport"].to_string();
    assert!(t.contains(transport), "transport {t} lacks {transport}");
    assert_eq!(report["metadata"]["hosts"].as_array().unwrap().len(), 2);
    // The idle policy was decided (`auto` is not what ran) and the note
    // says what it was.
    let idle = report["metadata"]["params"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == "idle_yield")
        .map(|p| p[1].as_str().unwrap().to_string())
        .expect("idle_yield among the parameters");
    let note = report["metadata"]["note"].as_str().unwrap_or_default();
    match idle.as_str() {
        "never" => assert!(note.contains("idle threads never yield"), "{note}"),
        "auto" => panic!("the idle policy was not decided"),
        _ => assert!(note.contains("idle threads yield their core"), "{note}"),
    }
    for rank in 0..2 {
        let r = &report["summary"][rank];
        assert_eq!(r["rank"], rank);
        assert!(
            r["ops"].as_u64().unwrap() > 0,
            "rank {rank} measured nothing: {out}"
        );
        assert!(r["p99_ns"].as_u64().unwrap() >= r["p50_ns"].as_u64().unwrap());
    }
    // Every daemon forwarded to the other rank and through Flux.
    for rank in 0..2 {
        for d in report["daemons"][rank].as_array().unwrap() {
            assert!(d["remote"].as_u64().unwrap() > 0, "{d}");
            assert!(d["served_remote"].as_u64().unwrap() > 0, "{d}");
            assert!(d["flux"].as_u64().unwrap() > 0, "{d}");
        }
    }
    let _ = std::fs::remove_file(json);
    report
}

/// With two calls in flight per destination, requests to the other rank
/// wait for room: they are all answered (the clients finish every call
/// they made) and every GET still returns the last PUT.
#[test]
fn requests_that_wait_for_room_are_answered_not_dropped() {
    for (backend, transport) in [("copyrpc", "mlx5 soft"), ("ucx-am:tcp", "UCX_TLS=tcp")] {
        let report = smoke_with(backend, transport, &[], Some("tight-network"));
        let waited: u64 = (0..2)
            .flat_map(|r| report["daemons"][r].as_array().unwrap().clone())
            .map(|d| d["waited"].as_u64().unwrap())
            .sum();
        assert!(
            waited > 0,
            "{backend}: no request waited: {}",
            report["daemons"]
        );
    }
}

/// Also with `--round-costs`: every daemon's rounds were timed and the
/// JSON carries them (the other smoke runs go without, and carry none).
#[test]
fn copyrpc_on_the_software_device_verifies() {
    let report = smoke_with("copyrpc", "mlx5 soft", &["--round-costs"], None);
    for rank in 0..2 {
        for d in report["daemons"][rank].as_array().unwrap() {
            let r = &d["rounds"];
            for k in [
                "busy_rounds",
                "busy_ns",
                "busy_net_ns",
                "idle_rounds",
                "idle_ns",
                "idle_net_ns",
            ] {
                assert!(r[k].as_u64().unwrap() > 0, "rounds.{k}: {d}");
            }
            let part = |net: &str, all: &str| r[net].as_u64().unwrap() <= r[all].as_u64().unwrap();
            assert!(
                part("busy_net_ns", "busy_ns") && part("idle_net_ns", "idle_ns"),
                "{d}"
            );
        }
    }
}

/// The transport line names the lanes UCX chose, not only what was asked.
#[test]
fn ucx_over_tcp_verifies() {
    let report = smoke_with("ucx-am:tcp", "UCX_TLS=tcp", &[], None);
    assert!(report["daemons"][0][0].get("rounds").is_none());
    let t = report["metadata"]["transport"].to_string();
    assert!(
        t.contains("lanes tcp/") && !t.contains("lanes unknown"),
        "{t}"
    );
}

#[test]
fn ucx_over_shared_memory_verifies() {
    let report = smoke_with("ucx-am:shm", "UCX_TLS=shm", &[], None);
    let t = report["metadata"]["transport"].to_string();
    assert!(
        t.contains("lanes ") && t.contains("/memory") && !t.contains("tcp/"),
        "{t}"
    );
}

/// Clients as processes of their own: the ipc layer crossed between
/// processes, still every GET verified.
#[test]
fn client_processes_verify() {
    smoke("copyrpc", "mlx5 soft", &["--client-procs"]);
}

/// Each rank bound to one logical CPU (Open MPI's default for two ranks
/// binds each to a core), so each rank's daemon and client (and the
/// floor's two canary threads) share one CPU. The floors and the run complete (a pure spin between two
/// threads of one CPU would hand over once per time slice) and the note
/// says why threads yield.
#[test]
fn ranks_bound_to_one_core_each_run_and_say_so() {
    let _g = serial();
    let json = temp_json("bound.json");
    let args = [
        "--backend",
        "copyrpc",
        "--depth",
        "2",
        "--warmup",
        "0.2",
        "--duration",
        "0.5",
        "--verify",
        "--json",
        json.to_str().unwrap(),
    ];
    // One logical CPU per rank, hyperthreads or not (a one-CPU host: both
    // ranks on it, unbound).
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let one_cpu: &[&str] = if cpus >= 2 {
        &[
            "--use-hwthread-cpus",
            "--map-by",
            "slot:PE=1",
            "--bind-to",
            "hwthread",
        ]
    } else {
        &["--bind-to", "none"]
    };
    let mut child = spawn(mpirun_bound(one_cpu, &args));
    let rx = lines(&mut child);
    let (status, took) = wait(&mut child, Duration::from_secs(60), "bound run");
    let out = drain(&rx);
    assert!(status.success(), "{status} after {took:?}\n{out}");
    assert!(out.contains("verify: 0 mismatch(es)"), "{out}");
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    let note = report["metadata"]["note"].as_str().unwrap_or_default();
    // (On a one-CPU host the note says the threads outnumber the cores.)
    assert!(note.contains("may run on only 1 CPU") || cpus < 2, "{note}");
    assert!(note.contains("idle threads yield their core"), "{note}");
    assert!(
        out.contains("each on the one CPU mpirun bound it to"),
        "{out}"
    );
    // The canary's two threads share rank 0's one CPU: said so.
    assert!(
        out.contains("sharing its one CPU")
            && report["floors"]["canary_between"]
                .as_str()
                .unwrap()
                .contains("not a cache-line round trip"),
        "{out}"
    );
    let _ = std::fs::remove_file(json);
}

#[test]
fn bad_parameters_fail_on_every_rank_before_any_work() {
    let _g = serial();
    for (args, needle) in [
        (&["--clients", "0"][..], "--clients 0"),
        (&["--depth", "100000"][..], "larger than the ipc ring"),
        (&["--value-size", "5000"][..], "--value-size 5000"),
        (&["--backend", "rdma"][..], "unknown backend"),
        (&["--no-such-flag"][..], "--no-such-flag"),
        (&["--clients", "-1"][..], "invalid value '-1'"),
        (&["--daemons", "0"][..], "--daemons 0"),
        (&["--read-ratio", "1.5"][..], "--read-ratio 1.5"),
        (&["--dist", "zipf:0"][..], "unknown key distribution"),
        (&["--idle-yield", "0"][..], "--idle-yield"),
        (&["sweep", "--clients", "1,0"][..], "--clients 0"),
        (
            &["sweep", "--backends", "copyrpc,rdma"][..],
            "unknown backend",
        ),
        (
            &["sweep", "--depths", "8,100000"][..],
            "point copyrpc clients 1 depth 100000: --depth 100000 is larger than the ipc ring",
        ),
        (
            &["--verify", "--keys", "2", "--clients", "4"][..],
            "--verify gives each",
        ),
    ] {
        let (status, out) = run(args, Duration::from_secs(60));
        assert_eq!(status.code(), Some(2), "{args:?}: exit status\n{out}");
        for rank in 0..2 {
            let line = format!("benchkv (rank {rank}): error");
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&line) && l.contains(needle))
                    || out.contains(&format!(
                        "benchkv (rank {rank}): error: unexpected argument '{needle}'"
                    )),
                "{args:?}: rank {rank} did not say {needle:?}:\n{out}"
            );
        }
        assert!(!out.contains("| total |"), "{args:?} ran:\n{out}");
    }
}

/// A report path (or sweep directory) that cannot be written fails before
/// the run, on every rank, with status 2, as any bad parameter (rank 0
/// finds it and tells the others; once the run went to its end and then
/// failed to write, later rank 0 alone failed, with status 1); one rank
/// alone (benchkv without mpirun) is refused: nothing would cross a
/// network.
#[test]
fn an_unwritable_report_path_and_a_lone_rank_fail_before_any_work() {
    let _g = serial();
    let blocker = std::env::temp_dir().join(format!("benchkv-file-{}", std::process::id()));
    std::fs::write(&blocker, b"a file, not a directory").unwrap();
    let under_a_file = blocker.join("sweep");
    for (args, needle) in [
        (
            vec![
                "--json",
                "/nonexistent-benchkv-dir/x.json",
                "--duration",
                "1",
            ],
            "its directory does not exist".to_string(),
        ),
        (
            vec![
                "sweep",
                "--out",
                under_a_file.to_str().unwrap(),
                "--depths",
                "1",
                "--clients",
                "1",
            ],
            "creating the sweep directory".to_string(),
        ),
    ] {
        let (status, out) = run(&args, Duration::from_secs(60));
        assert_eq!(status.code(), Some(2), "{args:?}: exit status\n{out}");
        for rank in 0..2 {
            let line = format!("benchkv (rank {rank}): error");
            assert!(
                out.lines()
                    .any(|l| l.starts_with(&line) && l.contains(needle.as_str())),
                "{args:?}: rank {rank} did not say {needle:?}:\n{out}"
            );
        }
        assert!(!out.contains("| total |"), "it ran:\n{out}");
    }
    let _ = std::fs::remove_file(&blocker);
    let alone = Command::new(env!("CARGO_BIN_EXE_benchkv"))
        .args(["--duration", "1"])
        .env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("MLX5_DEVICE", "soft:manual")
        .stdin(Stdio::null())
        .output()
        .expect("running benchkv");
    let err = String::from_utf8_lossy(&alone.stderr);
    assert_eq!(alone.status.code(), Some(2), "{err}");
    assert!(
        err.contains("at least 2") && err.contains("mpirun -n 2"),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&alone.stdout).contains("| total |"));
}

/// A short sweep writes every point's JSON, the CSV, the SVG of
/// throughput and p99 per backend, and the summary with the floors of the
/// same run and each point against them.
#[test]
fn a_sweep_writes_its_points_csv_plot_and_floors() {
    let _g = serial();
    let dir = temp_json("sweep");
    let _ = std::fs::remove_dir_all(&dir);
    let (status, out) = run(
        &[
            "sweep",
            "--backends",
            "copyrpc,ucx-am:tcp",
            "--clients",
            "1",
            "--depths",
            "1,4",
            "--warmup",
            "0.1",
            "--duration",
            "0.3",
            "--out",
            dir.to_str().unwrap(),
        ],
        Duration::from_secs(120),
    );
    assert!(status.success(), "{status}\n{out}");
    let points: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with("point-") && n.ends_with(".json"))
        .collect();
    assert_eq!(points.len(), 4, "{points:?}");
    let csv = std::fs::read_to_string(dir.join("sweep.csv")).unwrap();
    assert_eq!(csv.lines().count(), 5, "{csv}");
    assert!(
        csv.starts_with("backend,transport,clients,depth,ops_per_s,"),
        "{csv}"
    );
    let svg = std::fs::read_to_string(dir.join("sweep.svg")).unwrap();
    for needle in [
        "copyrpc ×1 clients",
        "ucx-am:tcp ×1 clients",
        "p99 latency",
        "throughput",
    ] {
        assert!(svg.contains(needle), "the plot lacks {needle:?}");
    }
    let md = std::fs::read_to_string(dir.join("sweep.md")).unwrap();
    assert!(
        md.contains(
            "floors (measured once per sweep, before the first point): cache-line round trip"
        ),
        "{md}"
    );
    assert!(
        md.contains("raw WRITE_IMM (32 B inline) on mlx5 soft"),
        "{md}"
    );
    assert_eq!(md.matches("| copyrpc |").count(), 2, "{md}");
    // 2 ranks × (1 daemon + 1 client) busy threads.
    // SAFETY: sysconf reads a system constant.
    let cores = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    assert_eq!(
        md.contains("threads outnumber cores"),
        cores < 4,
        "{cores} cores:\n{md}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A device that cannot be opened leaves the run without its raw
/// WRITE_IMM floor, said so with the reason, when the backend does not
/// need the device; the cache-line floor is still there.
#[test]
fn without_a_device_the_floors_say_why_and_ucx_runs() {
    let _g = serial();
    let json = temp_json("no-device.json");
    let mut c = mpirun(&[
        "--backend",
        "ucx-am:shm",
        "--warmup",
        "0.1",
        "--duration",
        "0.3",
        "--json",
        json.to_str().unwrap(),
    ]);
    c.env("MLX5_DEVICE", "mlx5_no_such_device");
    let mut child = spawn(c);
    let rx = lines(&mut child);
    let (status, _) = wait(&mut child, Duration::from_secs(60), "no device");
    let out = drain(&rx);
    assert!(status.success(), "{status}\n{out}");
    assert!(
        out.contains("no raw WRITE_IMM floor: rank 0 (MLX5_DEVICE=mlx5_no_such_device)"),
        "{out}"
    );
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&json).expect("the JSON report")).expect("JSON");
    assert!(report["floors"]["write_imm"].is_null());
    assert!(report["floors"]["cache_line_ns"].as_f64().unwrap() > 0.0);
    assert!(report["vs_floors"]["remote_ops_vs_raw_rate"].is_null());
    let _ = std::fs::remove_file(json);
}

/// copyrpc without a device: every rank names the cause (the device that
/// could not be opened), every time. Before, the main thread often saw the
/// daemon's setup channel close before the daemon had recorded its error,
/// and said only that a thread ended without answering.
#[test]
fn without_a_device_copyrpc_says_why_on_every_rank() {
    let _g = serial();
    for attempt in 0..3 {
        let mut c = mpirun(&["--backend", "copyrpc", "--duration", "0.3"]);
        c.env("MLX5_DEVICE", "mlx5_no_such_device");
        let mut child = spawn(c);
        let rx = lines(&mut child);
        let (status, _) = wait(&mut child, Duration::from_secs(60), "copyrpc, no device");
        let out = drain(&rx);
        assert!(!status.success(), "{out}");
        assert!(
            !out.contains("without answering"),
            "attempt {attempt}:\n{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.starts_with("benchkv (rank ") && l.contains("mlx5_no_such_device")),
            "attempt {attempt}:\n{out}"
        );
    }
}

/// A `--verify` mismatch fails the run (and a sweep) with a non-zero exit
/// and says which GET returned what: every shard starts with bytes no
/// client wrote (the daemons' test fault), so a GET of a key not yet PUT
/// cannot match.
#[test]
fn a_verify_mismatch_fails_the_run() {
    let _g = serial();
    let json = temp_json("mismatch.json");
    let out_dir = temp_json("mismatch-sweep");
    for args in [
        &["--backend", "copyrpc", "--json", json.to_str().unwrap()][..],
        &[
            "sweep",
            "--backends",
            "ucx-am:tcp",
            "--clients",
            "1",
            "--depths",
            "4",
            "--out",
            out_dir.to_str().unwrap(),
        ][..],
    ] {
        let mut c = mpirun(args);
        c.args([
            "--verify",
            "--keys",
            "100000",
            "--warmup",
            "0",
            "--duration",
            "0.5",
        ])
        .env("BENCHKV_TEST_FAULT", "garbage-store");
        let mut child = spawn(c);
        let rx = lines(&mut child);
        let (status, _) = wait(&mut child, Duration::from_secs(120), "mismatch");
        let out = drain(&rx);
        assert!(!status.success(), "{args:?}: a mismatch passed:\n{out}");
        assert!(
            out.contains("error: verification failed:") && out.contains("returned writer"),
            "{args:?}: no mismatch named:\n{out}"
        );
    }
    assert!(
        !out_dir.join("sweep.csv").exists(),
        "a failed sweep wrote its CSV"
    );
    let _ = std::fs::remove_file(json);
    let _ = std::fs::remove_dir_all(out_dir);
}

/// The pid of `rank` among mpirun's children.
fn rank_pid(mpirun: u32, rank: u32) -> Option<u32> {
    let want = format!("OMPI_COMM_WORLD_RANK={rank}");
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // The parent pid follows the command name's closing parenthesis.
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        if ppid != Some(mpirun) {
            continue;
        }
        let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
        if env.split(|&b| b == 0).any(|v| v == want.as_bytes()) {
            return Some(pid);
        }
    }
    None
}

/// Rank 1 SIGKILLed mid-run: the run ends with an error within seconds,
/// whatever the backend (copyrpc and UCX over tcp see the peer fail
/// themselves; over shared memory, where UCX detects nothing, mpirun ends
/// the job).
#[test]
fn a_killed_rank_ends_the_run_within_seconds() {
    let _g = serial();
    for backend in ["copyrpc", "ucx-am:tcp", "ucx-am:shm"] {
        let json = temp_json("killed.json");
        let mut child = spawn(mpirun(&[
            "--backend",
            backend,
            "--warmup",
            "0",
            "--duration",
            "60",
            "--json",
            json.to_str().unwrap(),
        ]));
        let rx = lines(&mut child);
        // Rank 0's progress line: the run is under way.
        let start = Instant::now();
        let mut seen = String::new();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(l) => {
                    let going = l.starts_with("benchkv run 1/1:");
                    seen.push_str(&l);
                    seen.push('\n');
                    if going {
                        break;
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    panic!("{backend}: mpirun ended:\n{seen}")
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{backend}: no progress line within 60 s:\n{seen}"
            );
        }
        let pid = rank_pid(child.id(), 1).unwrap_or_else(|| panic!("{backend}: rank 1 not found"));
        // SAFETY: kill(2) with a pid we found among mpirun's children.
        assert_eq!(unsafe { libc::kill(pid as i32, libc::SIGKILL) }, 0);
        let (status, took) = wait(&mut child, Duration::from_secs(20), backend);
        let out = seen + &drain(&rx);
        assert!(
            !status.success(),
            "{backend}: the job succeeded after a rank died:\n{out}"
        );
        assert!(
            took < Duration::from_secs(10),
            "{backend}: took {took:?} to end:\n{out}"
        );
        assert!(
            !out.contains("| total |"),
            "{backend}: a report after a rank died:\n{out}"
        );
    }
}
