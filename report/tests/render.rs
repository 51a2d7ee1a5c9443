//! The renderer on a small fixture run: every section, the limits and the
//! critical path computed from the fixture's figures, and the check that
//! finds a number typed into a report.

use std::collections::BTreeMap;

use benchutil::counters::Availability;
use benchutil::{FigureRecord, Kind, Metadata, Ratio, SuiteRecord};
use report::check::{check_dir, check_markdown};
use report::input::{C2c, InstrRow, KvPoint, Run, SCHEMA, parse_instr};
use report::render::{NOT_AVAILABLE, SECTIONS, render};

fn metadata() -> Metadata {
    Metadata {
        host: "fixture-host".into(),
        cpu: "Fixture CPU".into(),
        cores_online: 2,
        cpus_allowed: vec![0, 1],
        core_pair: (0, 1),
        kernel: "6.1.0".into(),
        toolchain: "rustc 1.95.0".into(),
        git: "abc1234".into(),
        device_selection: "soft:manual".into(),
        date: "2026-11-30T12:00:00Z".into(),
        params: BTreeMap::from([("IPC_BENCH_ROUNDS".into(), "3".into())]),
    }
}

fn lat(name: &str, min: f64, median: f64, max: f64) -> FigureRecord {
    FigureRecord {
        name: name.into(),
        kind: Kind::Latency,
        unit: "ns".into(),
        min,
        median,
        max,
        ns_per_op: median,
        iters: 1000,
        samples_ns: vec![min, median, max],
        note: None,
        ratios: Vec::new(),
        counters: BTreeMap::from([("task_clock_ns".into(), 2.0 * median)]),
    }
}

fn thr(name: &str, ns: f64) -> FigureRecord {
    FigureRecord {
        name: name.into(),
        kind: Kind::Throughput,
        unit: "ops/s".into(),
        min: 0.9e9 / ns,
        median: 1e9 / ns,
        max: 1.1e9 / ns,
        ns_per_op: ns,
        iters: 1000,
        samples_ns: vec![ns],
        note: Some("a note".into()),
        ratios: Vec::new(),
        counters: BTreeMap::new(),
    }
}

fn with_ratio(mut f: FigureRecord, against: &str, against_ns: f64, role: &str) -> FigureRecord {
    f.ratios.push(Ratio {
        figure: f.name.clone(),
        against: against.into(),
        role: role.into(),
        time_ratio: f.ns_per_op / against_ns,
    });
    f
}

fn suite(name: &str, figures: Vec<FigureRecord>) -> SuiteRecord {
    SuiteRecord {
        suite: name.into(),
        metadata: metadata(),
        rounds: 3,
        dropped: 0,
        all_slow: false,
        quick: false,
        canaries_ns: vec![80.0, 81.0, 79.0],
        kept: vec![true; 3],
        counters: Availability {
            opened: vec!["task_clock_ns".into()],
            missing: vec![(
                "cycles".into(),
                "perf_event_open(cycles): No such file or directory (os error 2)".into(),
            )],
            paranoid: Some("2".into()),
        },
        figures,
    }
}

fn point(backend: &str, depth: u32, ops: f64, p50: u64) -> KvPoint {
    KvPoint {
        backend: backend.into(),
        transport: vec![format!("{backend} transport")],
        clients: 1,
        depth,
        daemons: 1,
        client_procs: false,
        ranks: 2,
        run_ops_per_s: vec![ops],
        p50_ns: p50,
        p99_ns: 2 * p50,
        p999_ns: 3 * p50,
        local: 500,
        flux: 0,
        remote: 500,
        note: None,
        mpi: "Open MPI v4.1.4".into(),
        device_selection: "soft:manual".into(),
        params: vec![
            ("backend".into(), backend.into()),
            ("keys".into(), "1024".into()),
        ],
    }
}

fn fixture() -> Run {
    let ipc = suite(
        "ipc",
        vec![
            lat("floor/threads", 70.0, 80.0, 90.0),
            lat("floor/processes", 70.0, 80.0, 90.0),
            with_ratio(
                lat("pingpong/threads", 90.0, 100.0, 110.0),
                "floor/threads",
                80.0,
                "floor",
            ),
            with_ratio(
                lat("pingpong/processes", 90.0, 100.0, 110.0),
                "floor/processes",
                80.0,
                "floor",
            ),
            lat("peers/uds", 9000.0, 10_000.0, 11_000.0),
            lat("peers/iceoryx2", 1900.0, 2000.0, 2100.0),
            thr("multi_client/1x-depth4", 50.0),
        ],
    );
    let inproc = suite(
        "inproc",
        vec![
            lat("floor/threads", 70.0, 80.0, 90.0),
            lat("pingpong/onesided", 85.0, 88.0, 95.0),
            lat("pingpong/lamport", 150.0, 170.0, 190.0),
            with_ratio(
                thr("spsc_throughput/pause/onesided/8B", 4.0),
                "spsc_throughput/pause/rtrb/8B",
                8.0,
                "peer",
            ),
            thr("spsc_throughput/pause/rtrb/8B", 8.0),
        ],
    );
    let mlx5 = suite(
        "mlx5",
        vec![
            lat("pingpong/inproc-1x1", 500.0, 600.0, 700.0),
            lat("pingpong/cross-shm-1x1", 2000.0, 2400.0, 2600.0),
            thr("rate/cross-shm-8x256", 300.0),
            lat("bw/floor-cross-core-copy", 150_000.0, 160_000.0, 170_000.0),
            lat("bw/cross-shm-write", 190_000.0, 200_000.0, 210_000.0),
            lat("bw/cross-shm-read", 200_000.0, 210_000.0, 220_000.0),
        ],
    );
    let copyrpc = suite(
        "copyrpc",
        vec![
            lat("pingpong/cross-raw", 2000.0, 2500.0, 3000.0),
            with_ratio(
                lat("pingpong/cross-copyrpc", 2500.0, 3000.0, 3500.0),
                "pingpong/cross-raw",
                2500.0,
                "baseline",
            ),
            thr("rate/cross-raw-8x256", 400.0),
            thr("rate/cross-copyrpc-8x256", 200.0),
        ],
    );
    let ucx = suite(
        "ucx",
        vec![
            lat("floor/processes", 70.0, 80.0, 90.0),
            with_ratio(
                lat("pingpong/ucx-am-shm", 900.0, 1000.0, 1100.0),
                "floor/processes",
                80.0,
                "floor",
            ),
        ],
    );
    Run {
        schema: SCHEMA.into(),
        metadata: metadata(),
        suites: vec![ipc, ucx, inproc, mlx5, copyrpc],
        missing_suites: Vec::new(),
        instr: parse_instr(
            "row\tmlx5\tpost\t100\t500\t10000\t30000\n\
             top\t12000\tsrc/qp.rs:mlx5::qp::Qp::post [/bin/instr]\n\
             row\tcopyrpc\tRPC of 32 bytes, depth1\t100\t500\t400000\t2000000\n\
             row\tipc\tcall\t100\t500\t30000\t90000\n\
             row\tinproc\tsend+recv onesided\t100\t500\t3000\t11000\n",
        )
        .unwrap(),
        instr_missing: None,
        benchkv: vec![
            point("copyrpc", 1, 10_000.0, 150_000),
            point("ucx-am:shm", 1, 100_000.0, 20_000),
        ],
        benchkv_missing: None,
        c2c: C2c {
            available: false,
            what: "perf version 6.1 c2c record fails here: failed: memory events not supported"
                .into(),
            lines: Vec::new(),
        },
    }
}

#[test]
fn every_section_is_there_and_filled_by_the_fixtures_measurements() {
    let r = render(&fixture());
    let problems = check_markdown(&r.markdown, true);
    assert!(problems.is_empty(), "{problems:#?}\n{}", r.markdown);
    for s in SECTIONS {
        assert!(r.markdown.contains(&format!("\n## {s}\n")), "{s}");
    }
    // The only reasons a complete run gives are the machine's.
    for line in r.markdown.lines().filter(|l| l.contains(NOT_AVAILABLE)) {
        assert!(
            line.contains("perf c2c") || line.contains("callgrind"),
            "{line}"
        );
    }
}

#[test]
fn the_cache_line_limit_is_transfers_times_half_the_floor() {
    let md = render(&fixture()).markdown;
    assert!(
        md.contains(
            "| pingpong/processes | 2 transfers in sequence × (floor/processes 80.0 ns ÷ 2 \
             transfers) = 2 × 40.0 ns = 80.0 ns | 100 ns | 1.25× |"
        ),
        "{md}"
    );
    // Lamport moves four lines per round trip but waits for two: 80 ns.
    assert!(md.contains("| pingpong/lamport | 2 transfers in sequence × (floor/threads 80.0 ns ÷ 2 transfers) = 2 × 40.0 ns = 80.0 ns | 170 ns | 2.12× |"), "{md}");
    assert!(md.contains("- pingpong/lamport: 4 lines change cores per round trip: each way the published `head` line"), "{md}");
}

#[test]
fn copyrpc_is_measured_against_raw_write_imm_of_the_same_run() {
    let md = render(&fixture()).markdown;
    assert!(md.contains("| pingpong/cross-copyrpc | 1 WRITE_IMM each way = pingpong/cross-raw = 2.50 µs | 3.00 µs | 1.20× |"), "{md}");
    // Rates: raw 2.5 M/s, copyrpc 5 M/s: half the limit's time.
    assert!(md.contains("| rate/cross-copyrpc-8x256 | raw WRITE_IMM round trips at 8x256 = rate/cross-raw-8x256 = 2.50 M/s | 5.00 M/s | 0.500× |"), "{md}");
}

#[test]
fn the_benchkv_critical_path_sums_the_layers_round_trips() {
    let run = fixture();
    let md = render(&run).markdown;
    // ipc threads 100 ns for every request + half the requests × copyrpc
    // cross 3 µs = 1.60 µs; 2 ranks × 1 client × depth 1 in flight.
    assert!(md.contains("| copyrpc c1 q1 | client ↔ daemon (ipc): 1.00 × 100 ns (ipc pingpong/threads)<br>rank ↔ rank (network): 0.500 × 3.00 µs (copyrpc pingpong/cross-copyrpc) | 1.60 µs | 150 µs | 93.8× | 1.25 M/s | 10.0 k/s | 0.008× |"), "{md}");
    // UCX-AM's hop is the ucx suite's round trip: 100 ns + 0.5 × 1 µs.
    assert!(md.contains("| ucx-am:shm c1 q1 | client ↔ daemon (ipc): 1.00 × 100 ns (ipc pingpong/threads)<br>rank ↔ rank (network): 0.500 × 1.00 µs (ucx pingpong/ucx-am-shm) | 600 ns | 20.0 µs | 33.3× |"), "{md}");
}

/// benchkv notes differ by point (threads per core, idle policy): each
/// distinct note once, with the client counts it holds for; the idle
/// policy is not listed as a parameter of the whole sweep.
#[test]
fn benchkv_notes_are_shown_per_client_count() {
    let mut run = fixture();
    let note = |c: u32| Some(format!("{} busy threads on 2 cores", 2 * (1 + c)));
    for p in &mut run.benchkv {
        p.note = note(1);
        p.params.push(("idle_yield".into(), "1".into()));
    }
    let mut two = point("copyrpc", 1, 20_000.0, 150_000);
    two.clients = 2;
    two.note = note(2);
    run.benchkv.push(two);
    let md = render(&run).markdown;
    assert!(
        md.contains("benchkv notes (1 client(s) per rank): 4 busy threads on 2 cores."),
        "{md}"
    );
    assert!(
        md.contains("benchkv notes (2 client(s) per rank): 6 busy threads on 2 cores."),
        "{md}"
    );
    assert_eq!(md.matches("benchkv notes (1 client(s)").count(), 1, "{md}");
    assert!(!md.contains("benchkv idle_yield"), "{md}");
}

#[test]
fn the_ucx_am_peer_stands_beside_ipc() {
    let md = render(&fixture()).markdown;
    assert!(md.contains("| pingpong/ucx-am-shm | 900 ns | 1.00 µs | 1.10 µs | 12.5× floor/processes | 10.0× ipc |"), "{md}");
    assert!(md.contains("- UCX active messages over shared memory between the same two processes: 1.00 µs, 10.0× ipc's round trip."), "{md}");
}

#[test]
fn copyrpc_stands_beside_ucx_am_between_the_same_processes() {
    let md = render(&fixture()).markdown;
    assert!(
        md.contains("| 3.00 µs | pingpong/ucx-am-shm | 1.00 µs | 3.00× pingpong/ucx-am-shm |"),
        "{md}"
    );
}

#[test]
fn missing_hardware_counters_are_one_line_with_the_kernels_reason() {
    let md = render(&fixture()).markdown;
    assert!(md.contains(
        "Hardware counters: not exposed by this kernel (perf_event_open(cycles): No such file \
         or directory (os error 2), perf_event_paranoid 2); instruction counts come from \
         callgrind instead."
    ));
    assert!(md.contains(
        "Not available: `perf c2c` contention data: perf version 6.1 c2c record fails here: \
         failed: memory events not supported."
    ));
}

#[test]
fn the_cross_layer_table_shows_what_each_layer_adds() {
    let md = render(&fixture()).markdown;
    // copyrpc 3 µs over raw 2.5 µs: 500 ns, 1.2×.
    assert!(md.contains("| copyrpc (two processes) | 3.00 µs (copyrpc pingpong/cross-copyrpc) | 200 ns (copyrpc rate/cross-copyrpc-8x256) | 2.50 µs (copyrpc pingpong/cross-raw) | 500 ns | 1.20× |"), "{md}");
}

#[test]
fn figures_json_has_every_figure_with_its_spread_and_ratios() {
    let r = render(&fixture());
    let f = r
        .figures
        .figures
        .iter()
        .find(|f| f.suite == "ipc" && f.name == "pingpong/processes")
        .unwrap();
    assert_eq!((f.min, f.median, f.max), (90.0, 100.0, 110.0));
    assert_eq!(f.ratios[0].against, "floor/processes");
    assert_eq!(f.ratios[0].time_ratio, 1.25);
    let kv = r
        .figures
        .figures
        .iter()
        .find(|f| f.suite == "benchkv" && f.name == "ucx-am:shm c1 q1 ops/s")
        .unwrap();
    assert_eq!(kv.ratios[0].time_ratio, 0.1);
    assert!(
        r.figures
            .figures
            .iter()
            .any(|f| f.suite == "callgrind" && f.name == "mlx5 post" && f.median == 50.0)
    );
    assert_eq!(r.figures.metadata.host, "fixture-host");
}

#[test]
fn a_missing_suite_says_why_and_fails_only_the_strict_check() {
    let mut run = fixture();
    run.suites.retain(|s| s.suite != "mlx5");
    run.missing_suites.push((
        "mlx5".into(),
        "target/bench-summary/mlx5.json was not written".into(),
    ));
    let md = render(&run).markdown;
    assert!(md.contains(
        "Not available: the mlx5 suite did not run: target/bench-summary/mlx5.json was not \
         written."
    ));
    assert!(check_markdown(&md, false).is_empty());
    assert!(!check_markdown(&md, true).is_empty());
}

#[test]
fn the_check_finds_a_number_typed_into_the_report() {
    let run = fixture();
    let dir = std::env::temp_dir().join(format!("bench-report-test-{}", std::process::id()));
    let path = report::write(&run, &dir).unwrap();
    let rdir = path.parent().unwrap();
    assert_eq!(check_dir(rdir, true), Vec::<String>::new());
    let md = std::fs::read_to_string(&path).unwrap();
    std::fs::write(&path, md.replacen("1.25×", "1.05×", 1)).unwrap();
    let problems = check_dir(rdir, true);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("not the rendering of run.json")),
        "{problems:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn the_check_finds_a_commentary_figure_the_report_does_not_print() {
    let run = fixture();
    let dir = std::env::temp_dir().join(format!("bench-report-comm-{}", std::process::id()));
    let path = report::write(&run, &dir).unwrap();
    let rdir = path.parent().unwrap();
    let md = std::fs::read_to_string(&path).unwrap();
    let printed = report::check::figures_in(&md);
    let quoted = printed.first().expect("the fixture prints figures").clone();
    std::fs::write(rdir.join("commentary.md"), format!("It took {quoted}.\n")).unwrap();
    assert_eq!(check_dir(rdir, true), Vec::<String>::new());
    std::fs::write(rdir.join("commentary.md"), "It took 1.2345× as long.\n").unwrap();
    let problems = check_dir(rdir, true);
    assert!(
        problems.iter().any(|p| p.contains("1.2345×")),
        "{problems:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn figures_are_numbers_with_a_ratio_sign_or_a_unit() {
    let f = report::check::figures_in(
        "8 × 256 in flight at 4.09 M/s, 1.20× the floor, 487 ns, 75 %, v1.2 nsx 3 nsec",
    );
    assert_eq!(f, ["4.09 M/s", "1.20×", "487 ns", "75 %"]);
}

/// Every committed report is still the rendering of its run, and its
/// commentary quotes only figures it prints.
#[test]
fn the_committed_reports_pass_the_strict_check() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/analysis");
    let mut seen = 0;
    for e in std::fs::read_dir(&root).unwrap() {
        let dir = e.unwrap().path();
        if dir.join("run.json").exists() {
            seen += 1;
            assert_eq!(
                check_dir(&dir, true),
                Vec::<String>::new(),
                "{}",
                dir.display()
            );
        }
    }
    assert!(seen > 0, "no committed report under {}", root.display());
}

#[test]
fn the_check_finds_an_edited_plot() {
    let run = fixture();
    let dir = std::env::temp_dir().join(format!("bench-report-plot-{}", std::process::id()));
    let path = report::write(&run, &dir).unwrap();
    let rdir = path.parent().unwrap();
    let svg = std::fs::read_dir(rdir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.extension().is_some_and(|x| x == "svg"))
        .expect("the fixture has plots");
    let text = std::fs::read_to_string(&svg).unwrap();
    std::fs::write(&svg, text.replacen("<svg", "<svg data-edited=\"1\"", 1)).unwrap();
    let problems = check_dir(rdir, true);
    assert!(
        problems
            .iter()
            .any(|p| p.contains("is not the plot of run.json")),
        "{problems:?}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn instruction_rows_and_their_top_functions_are_parsed() {
    let rows: Vec<InstrRow> = fixture().instr;
    assert_eq!(rows[0].per_op, 50.0);
    assert_eq!(rows[0].top[0].0, 12000);
    assert!(parse_instr("row\tx\ty\t5\t5\t1\t2\n").is_err());
    assert!(parse_instr("top\t1\tf\n").is_err());
}

#[test]
fn mlx5_limits_are_the_in_process_work_plus_a_floor_and_the_cross_core_copy() {
    let md = render(&fixture()).markdown;
    // 600 ns in process + the fixture's ipc floor between processes.
    assert!(
        md.contains("pingpong/inproc-1x1 600 ns + ipc floor/processes"),
        "{md}"
    );
    assert!(
        md.contains("bw/floor-cross-core-copy = 160 µs per MiB"),
        "{md}"
    );
}

#[test]
fn a_nic_named_by_mlx5_device_leaves_the_software_devices_cross_limits_in() {
    // The cross-process figures always run on the software device, so a
    // NIC in MLX5_DEVICE (the in-process figures' device) changes nothing
    // there.
    let mut run = fixture();
    run.metadata.device_selection = "mlx5_0".into();
    let md = render(&run).markdown;
    assert!(
        md.contains("pingpong/inproc-1x1 600 ns + ipc floor/processes"),
        "{md}"
    );
    assert!(md.contains("software device: its frames cross shared-memory rings"));
}

#[test]
fn figures_json_carries_every_limit_mlx5_included() {
    let r = render(&fixture());
    let limits: Vec<&str> = r
        .figures
        .figures
        .iter()
        .filter(|f| f.suite == "limit")
        .map(|f| f.name.as_str())
        .collect();
    for want in [
        "mlx5 pingpong/cross-shm-1x1",
        "mlx5 bw/cross-shm-write",
        "copyrpc pingpong/cross-copyrpc",
    ] {
        assert!(limits.contains(&want), "{want} missing from {limits:?}");
    }
}

/// A callgrind row whose instruction count did not grow with the
/// operations (the toggle matched nothing) is refused, not printed as
/// "0 instructions per operation".
#[test]
fn an_instruction_row_that_counted_nothing_is_refused() {
    use report::input::parse_instr;
    assert!(parse_instr("row\tmlx5\tpost\t1000\t5000\t100\t500\n").is_ok());
    let e = parse_instr("row\tmlx5\tpost\t1000\t5000\t100\t100\n").unwrap_err();
    assert!(e.contains("do not grow"), "{e}");
}
