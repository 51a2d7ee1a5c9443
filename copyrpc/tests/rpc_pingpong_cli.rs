//! The `rpc_pingpong` example as a user runs it: a bad command line is
//! refused with the usage and status 2, input it cannot use (a garbage
//! info line, no info line, a device it cannot open) with an error and
//! status 1; and two processes meeting through `--dir` can do so again and
//! again in one directory, never taking an info file a process that is
//! gone left behind.
//!
//! Cargo builds examples for `cargo test` of the whole package, but not
//! for `cargo test --test rpc_pingpong_cli`: [`example`] builds it (a
//! no-op when it is up to date) beside this test's own binary.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// How long one run of the example may take.
const DEADLINE: Duration = Duration::from_secs(30);

/// The example's binary, built with this test's profile into this test's
/// target directory: `<target>[/<triple>]/<profile>/examples/rpc_pingpong`
/// where this test runs from `<...>/<profile>/deps/`.
fn example() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let exe = std::env::current_exe().expect("current_exe");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test binary in <profile>/deps/");
        let profile = match profile_dir.file_name().and_then(|n| n.to_str()) {
            Some("debug") => "dev",
            Some(p) => p,
            None => panic!("profile of {}", exe.display()),
        };
        let mut target_dir = profile_dir.parent().expect("target dir");
        let mut cargo = Command::new(std::env::var("CARGO").unwrap_or(env!("CARGO").into()));
        // `--target TRIPLE` builds put a triple between the target
        // directory (the one with CACHEDIR.TAG) and the profile.
        if !target_dir.join("CACHEDIR.TAG").exists()
            && let (Some(triple), Some(up)) = (target_dir.file_name(), target_dir.parent())
            && up.join("CACHEDIR.TAG").exists()
        {
            cargo.arg("--target").arg(triple);
            target_dir = up;
        }
        let status = cargo
            .args(["build", "-p", "copyrpc", "--example", "rpc_pingpong"])
            .args(["--profile", profile, "--target-dir"])
            .arg(target_dir)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("run cargo");
        assert!(status.success(), "building the rpc_pingpong example");
        let bin = profile_dir
            .join("examples")
            .join(format!("rpc_pingpong{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} after the build", bin.display());
        bin
    })
}

/// The example with `args` on a manual software device (each process's
/// one thread steps its own), stdin from `input`.
fn start(args: &[&str], input: Stdio) -> Child {
    Command::new(example())
        .args(args)
        .env("MLX5_DEVICE", "soft:manual")
        .stdin(input)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rpc_pingpong")
}

/// Waits for `child` (killed, and the test failed, after [`DEADLINE`]).
fn finish(mut child: Child) -> Output {
    let start = Instant::now();
    while child.try_wait().expect("try_wait").is_none() {
        if start.elapsed() > DEADLINE {
            let _ = child.kill();
            let out = child.wait_with_output().expect("wait");
            panic!(
                "rpc_pingpong still running after {DEADLINE:?}; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    child.wait_with_output().expect("wait")
}

/// Runs the example with `args` and stdin `input`, asserts it exits with
/// `code` and its stderr contains each of `says`.
fn expect_exit(args: &[&str], input: Option<&str>, code: i32, says: &[&str]) {
    let mut child = start(
        args,
        if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        },
    );
    if let Some(text) = input {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("piped stdin");
        // The example may refuse before it reads: a closed pipe is fine.
        let _ = stdin.write_all(text.as_bytes());
    }
    let out = finish(child);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "{args:?}: stderr {err}");
    assert!(!err.contains("panicked"), "{args:?} panicked: {err}");
    for s in says {
        assert!(err.contains(s), "{args:?}: stderr {err:?} lacks {s:?}");
    }
}

const USAGE: &str = "usage: rpc_pingpong serve|call [N] [--dir DIR]";

#[test]
fn bad_command_lines_print_the_usage_and_exit_2() {
    let n_refused = "N must be a number of calls, at least 1";
    for (args, why) in [
        (&[][..], "say serve or call"),
        (&["bogus"][..], "unexpected arguments [\"bogus\"]"),
        (&["serve", "5"][..], "unexpected arguments"),
        (&["call", "1", "2"][..], "unexpected arguments"),
        (&["--dir"][..], "--dir needs a path"),
        (&["call", "1", "--dir"][..], "--dir needs a path"),
        (&["call", "0"][..], n_refused),
        (&["call", "-1"][..], n_refused),
        (&["call", "1.5"][..], n_refused),
        (&["call", "ten"][..], n_refused),
        (&["call", ""][..], n_refused),
        // One past u64::MAX.
        (&["call", "18446744073709551616"][..], n_refused),
        (&["call", "99999999999999999999999"][..], n_refused),
    ] {
        expect_exit(args, None, 2, &[why, USAGE]);
    }
}

#[test]
fn unusable_input_is_an_error_with_status_1() {
    let error = "rpc_pingpong: error:";
    // No info line at all.
    expect_exit(&["call", "1"], None, 1, &[error, "stdin ended before"]);
    // A line that is not an endpoint's info.
    for (role, line) in [("call", "garbage\n"), ("serve", "zz\n"), ("call", "\n")] {
        expect_exit(
            &[role],
            Some(line),
            1,
            &[error, "not the other side's info line"],
        );
    }
    // An info file of a live writer (this test) that is not an info file.
    let dir = scratch("garbage_info_file");
    let text = format!("{} not-hex", std::process::id());
    std::fs::write(dir.join("serve.info"), text).expect("write serve.info");
    let d = dir.to_str().expect("utf-8 path");
    expect_exit(
        &["call", "1", "--dir", d],
        None,
        1,
        &[error, "is not an info file"],
    );
    // The caller's own info file is gone with it.
    assert!(!dir.join("call.info").exists());
    std::fs::remove_dir_all(&dir).expect("remove scratch dir");
}

#[test]
fn a_device_that_cannot_be_opened_is_an_error_with_status_1() {
    let out = finish(
        Command::new(example())
            .args(["call", "1"])
            .env("MLX5_DEVICE", "no-such-selection:")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rpc_pingpong"),
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr {err}");
    assert!(err.contains("rpc_pingpong: error:"), "stderr {err:?}");
}

/// A server whose caller is killed mid-run (no "stop" ever comes) exits
/// with an error within seconds, found by its keepalive probe: it does not
/// wait forever for requests.
#[test]
fn serve_exits_with_an_error_when_its_caller_is_killed() {
    use std::io::BufRead as _;
    let dir = scratch("killed-caller");
    let d = dir.to_str().expect("utf-8 path");
    let mut serve = start(&["serve", "--dir", d], Stdio::null());
    // The server's stderr, line by line as it comes.
    let err = serve.stderr.take().expect("piped stderr");
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let reader = std::thread::spawn(move || {
        for line in std::io::BufReader::new(err).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let mut call = start(&["call", "1000000", "--dir", d], Stdio::null());
    // Until a call reached the server: only an endpoint that has heard
    // from its peer is probed.
    let mut said = Vec::new();
    let waiting = Instant::now();
    while !said
        .iter()
        .any(|l: &String| l.contains("first call arrived"))
    {
        let left = DEADLINE.saturating_sub(waiting.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => said.push(line),
            Err(_) => {
                let _ = call.kill();
                let _ = serve.kill();
                panic!("no call reached the server; it said {said:?}");
            }
        }
    }
    assert!(
        call.try_wait().expect("try_wait").is_none(),
        "the caller ended before it was killed"
    );
    call.kill().expect("kill the caller");
    call.wait().expect("reap the caller");
    let killed = Instant::now();
    let out = finish(serve);
    reader.join().expect("stderr reader");
    said.extend(rx.try_iter());
    let err = said.join("\n");
    assert_eq!(out.status.code(), Some(1), "serve: stderr {err}");
    assert!(err.contains("the caller is gone"), "serve: stderr {err}");
    assert!(
        err.contains("TransportRetryExceeded"),
        "serve: stderr {err}"
    );
    assert!(
        killed.elapsed() < Duration::from_secs(10),
        "serve took {:?} to notice",
        killed.elapsed()
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// An empty directory of this test's own under the target directory.
fn scratch(name: &str) -> PathBuf {
    let d = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("rpc_pingpong_cli-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).expect("create scratch dir");
    d
}

/// A pid no process has now: that of a child that ran and was reaped.
fn dead_pid() -> u32 {
    let mut c = Command::new("true").spawn().expect("spawn true");
    let pid = c.id();
    c.wait().expect("wait for true");
    pid
}

/// One `--dir` run of `calls` calls: `first` starts, and `second` only
/// once `first` had time to find (and must have passed over) a stale info
/// file; both must succeed, and each removes its own info file.
fn dir_run(dir: &Path, first: &str, calls: &str) {
    let d = dir.to_str().expect("utf-8 path");
    let run = |role: &str| match role {
        "call" => start(&["call", calls, "--dir", d], Stdio::null()),
        _ => start(&["serve", "--dir", d], Stdio::null()),
    };
    let second = if first == "call" { "serve" } else { "call" };
    let a = run(first);
    std::thread::sleep(Duration::from_millis(300));
    let mut b = run(second);
    let a = finish(a);
    if !a.status.success() {
        // The second would wait for the first's info in vain.
        let _ = b.kill();
    }
    let b = finish(b);
    let (call, serve) = if first == "call" { (a, b) } else { (b, a) };
    for (role, out) in [("call", &call), ("serve", &serve)] {
        assert!(
            out.status.success(),
            "{role} (started {}) exited with {}: {}",
            if role == first { "first" } else { "second" },
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let said = String::from_utf8_lossy(&call.stdout);
    assert!(
        said.contains(&format!("{calls} calls of 32 bytes")),
        "call printed {said:?}"
    );
    assert!(
        String::from_utf8_lossy(&serve.stderr).contains("stopped by the caller"),
        "serve: {}",
        String::from_utf8_lossy(&serve.stderr)
    );
    for f in ["serve.info", "call.info", "serve.tmp", "call.tmp"] {
        assert!(!dir.join(f).exists(), "{f} left behind");
    }
}

#[test]
fn dir_mode_runs_twice_in_one_directory_past_stale_info_files() {
    let dir = scratch("rerun");
    // What a run killed before it could clean up leaves: a dead writer's
    // pid, and an info that would fail the reader if it were taken.
    let stale = |role: &str| {
        let text = format!("{} stale-not-hex", dead_pid());
        std::fs::write(dir.join(format!("{role}.info")), text).expect("write stale info");
    };
    // The caller waits 300 ms over a stale serve.info before the server
    // starts.
    stale("serve");
    dir_run(&dir, "call", "200");
    // Again in the same directory, the server first, over a stale
    // call.info.
    stale("call");
    dir_run(&dir, "serve", "200");
    std::fs::remove_dir_all(&dir).expect("remove scratch dir");
}
