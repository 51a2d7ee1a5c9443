//! `mlx5-peer` refuses what it cannot do: every bad command line (garbage,
//! a missing or non-numeric argument, numbers whose sum or product
//! overflows, ranges outside the MR, QP indexes it does not have, zero
//! where zero is meaningless) gets one `err REASON` line, and the peer
//! keeps answering; it never panics, and it exits with status 0 on `quit`
//! or at the end of its input.

use std::io::{BufRead, BufReader, Read as _, Write as _};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

const PEER: &str = env!("CARGO_BIN_EXE_mlx5-peer");

/// `u64::MAX` (and `usize::MAX` on the 64-bit hosts this crate runs on).
const MAX: &str = "18446744073709551615";
/// One more than `u64::MAX`: not a number for any of the peer's fields.
const OVER_MAX: &str = "18446744073709551616";
/// The MR length of [`Peer::set_up`].
const MR_LEN: usize = 65536;

/// An `mlx5-peer` on a software device, not yet set up, with its stderr
/// kept to look for a panic message.
struct Peer {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: mpsc::Receiver<String>,
}

impl Peer {
    fn spawn() -> Peer {
        let mut child = Command::new(PEER)
            .args(["--device", "soft"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn mlx5-peer");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        // Answers arrive on a thread, so a peer that hangs fails the test
        // instead of blocking it.
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for l in stdout.lines() {
                let Ok(l) = l else { break };
                if tx.send(l).is_err() {
                    break;
                }
            }
        });
        Peer {
            child,
            stdin,
            lines,
        }
    }

    /// A peer with two QPs (depth 16) and an MR of [`MR_LEN`] bytes, and
    /// its QPs' connection infos (hex).
    fn set_up() -> (Peer, Vec<String>) {
        let mut p = Peer::spawn();
        let r = p.ok(&format!("setup 2 {MR_LEN} 16 16"));
        let infos: Vec<String> = r.split_whitespace().skip(2).map(String::from).collect();
        assert_eq!(infos.len(), 2, "ADDR RKEY INFO INFO: {r:?}");
        (p, infos)
    }

    fn send_bytes(&mut self, line: &[u8]) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(line).expect("write to mlx5-peer");
        stdin.write_all(b"\n").expect("write to mlx5-peer");
        stdin.flush().expect("flush to mlx5-peer");
    }

    /// The answer line to `line`.
    fn ask_bytes(&mut self, line: &[u8]) -> String {
        self.send_bytes(line);
        match self.lines.recv_timeout(Duration::from_secs(10)) {
            Ok(l) => l,
            Err(e) => panic!(
                "mlx5-peer: no answer to {:?} ({e}); stderr: {}",
                String::from_utf8_lossy(line),
                self.stderr()
            ),
        }
    }

    fn ask(&mut self, cmd: &str) -> String {
        self.ask_bytes(cmd.as_bytes())
    }

    /// Asserts `cmd` is answered `ok` and returns the rest.
    fn ok(&mut self, cmd: &str) -> String {
        let r = self.ask(cmd);
        match r.strip_prefix("ok") {
            Some(rest) => rest.trim().to_string(),
            None => panic!("mlx5-peer: {cmd:?} → {r:?}, expected ok"),
        }
    }

    /// Asserts `line` is answered `err` with a reason that contains `why`.
    fn refused_bytes(&mut self, line: &[u8], why: &str) {
        let r = self.ask_bytes(line);
        let reason = r.strip_prefix("err ").unwrap_or_else(|| {
            panic!(
                "mlx5-peer: {:?} → {r:?}, expected err",
                String::from_utf8_lossy(line)
            )
        });
        assert!(
            reason.contains(why),
            "mlx5-peer: {:?} → {r:?}, expected a reason with {why:?}",
            String::from_utf8_lossy(line)
        );
    }

    fn refused(&mut self, cmd: &str, why: &str) {
        self.refused_bytes(cmd.as_bytes(), why);
    }

    /// Kills the peer (if it still runs) and returns what it wrote on
    /// stderr.
    fn stderr(&mut self) -> String {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = e.read_to_string(&mut s);
        }
        s
    }

    /// Ends the input with `quit` (or closes it, when `quit` is false) and
    /// asserts the peer exits with status 0, without a panic and without
    /// another answer.
    fn finish(mut self, quit: bool) {
        if quit {
            self.send_bytes(b"quit");
        }
        drop(self.stdin.take());
        let mut err = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            e.read_to_string(&mut err).expect("read stderr");
        }
        let status = self.child.wait().expect("wait for mlx5-peer");
        assert!(!err.contains("panicked"), "mlx5-peer panicked: {err}");
        assert!(status.success(), "mlx5-peer exited with {status}: {err}");
        let rest: Vec<String> = self.lines.try_iter().collect();
        assert!(rest.is_empty(), "answers after the end: {rest:?}");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn empty_input_ends_the_peer_with_status_0() {
    Peer::spawn().finish(false);
}

#[test]
fn quit_ends_the_peer_with_status_0() {
    let (mut p, _) = Peer::set_up();
    p.refused("bogus", "unknown command");
    p.finish(true);
}

#[test]
fn garbage_lines_are_answered_err_and_the_peer_goes_on() {
    let mut p = Peer::spawn();
    p.refused("", "empty command");
    p.refused("   \t ", "empty command");
    p.refused("bogus 1 2", "unknown command \"bogus\"");
    p.refused("SETUP 1 4096 16 16", "unknown command");
    // Not UTF-8: still one line, and one answer.
    p.refused_bytes(b"\xff\xfe setup", "unknown command");
    p.refused("setup", "missing QPS");
    p.refused("setup 1 4096 16", "missing RQ_DEPTH");
    p.refused("setup x 4096 16 16", "QPS: not a number");
    p.refused("setup -1 4096 16 16", "QPS: not a number");
    p.refused("setup 1 4096 1.5 16", "SQ_DEPTH: not a number");
    p.refused(&format!("setup 1 {OVER_MAX} 16 16"), "MR_LEN: not a number");
    // A CRLF line is the same command.
    p.refused("bogus\r", "unknown command \"bogus\"");
    // None of it set anything up; a good setup still works.
    p.ok(&format!("setup 1 {MR_LEN} 16 16"));
    p.refused("connect", "missing I");
    p.refused("connect 0", "missing INFO");
    p.refused("connect 0 zz", "INFO: not hex");
    p.refused("connect 0 00", "malformed connection info");
    p.refused(&format!("fill 0 {OVER_MAX} 0"), "LEN: not a number");
    p.refused("fill 0 -8 0", "LEN: not a number");
    p.refused("recv 0 1 0 4294967296", "LEN: not a number");
    p.refused("set64 0 x", "V: not a number");
    p.refused("echo 1 x", "RKEY: not a number");
    p.refused("withhold 0 256", "ON: not a number");
    p.finish(true);
}

#[test]
fn commands_before_setup_are_refused() {
    let mut p = Peer::spawn();
    for cmd in ["hash 0 1", "hex 0 1", "fill 0 1 0", "get64 0", "set64 0 1"] {
        p.refused(cmd, "no setup yet");
    }
    p.refused("poll 1 0", "no setup yet");
    p.refused("echo 1 1", "no setup yet");
    p.refused("stream 0 1 0 1 1", "no setup yet");
    p.refused("recv 0 1 0 0", "no setup yet");
    p.refused("state 0", "no QP 0");
    p.refused("withhold 0 1", "no QP 0");
    p.finish(true);
}

#[test]
fn setup_refuses_queues_whose_cqe_count_overflows() {
    let mut p = Peer::spawn();
    // SQ_DEPTH + RQ_DEPTH overflows u32.
    p.refused("setup 1 4096 4294967295 1", "need more CQEs than a CQ has");
    // QPS does not fit u32.
    p.refused("setup 4294967296 4096 1 1", "need more CQEs than a CQ has");
    p.refused(
        &format!("setup {MAX} 4096 1 1"),
        "need more CQEs than a CQ has",
    );
    // (SQ + RQ) * QPS * 2 overflows u32.
    p.refused("setup 2 4096 2147483648 0", "need more CQEs than a CQ has");
    p.refused(
        "setup 65536 4096 32768 32768",
        "need more CQEs than a CQ has",
    );
    // The product fits, its next power of two does not.
    p.refused("setup 1 4096 1073741824 1", "need more CQEs than a CQ has");
    // Fits u32, not a CQ.
    p.refused("setup 1 4096 4194304 1", "CQ of 16777216 entries");
    // An MR no allocation can hold, and QPs of no work requests.
    p.refused(
        &format!("setup 1 {MAX} 16 16"),
        "larger than one allocation",
    );
    p.refused("setup 1 4096 0 16", "max_send_wr 0");
    p.finish(true);
}

#[test]
fn a_refused_setup_leaves_nothing_and_a_second_setup_is_refused() {
    let mut p = Peer::spawn();
    // Refused after its QP was made (the MR cannot be): that QP must not
    // stay behind as QP 0 of the next setup.
    p.refused(
        &format!("setup 1 {MAX} 16 16"),
        "larger than one allocation",
    );
    p.refused("state 0", "no QP 0");
    p.refused("hash 0 1", "no setup yet");
    let r = p.ok(&format!("setup 2 {MR_LEN} 16 16"));
    assert_eq!(
        r.split_whitespace().count(),
        4,
        "ADDR RKEY INFO INFO: {r:?}"
    );
    assert_eq!(p.ok("state 0"), "Reset");
    assert_eq!(p.ok("state 1"), "Reset");
    p.refused("state 2", "no QP 2");
    // QP indexes and `poll` refer to the one setup.
    p.refused(&format!("setup 1 {MR_LEN} 16 16"), "already set up");
    p.refused("state 2", "no QP 2");
    p.finish(true);
}

#[test]
fn ranges_that_overflow_or_leave_the_mr_are_refused() {
    let (mut p, _) = Peer::set_up();
    let last = MR_LEN - 8;
    // OFF + LEN overflows usize.
    p.refused(&format!("fill 1 {MAX} 0"), "outside the MR");
    p.refused(&format!("fill {MAX} 1 0"), "outside the MR");
    p.refused(&format!("hash {MAX} {MAX}"), "outside the MR");
    p.refused(&format!("hex 8 {MAX}"), "outside the MR");
    p.refused(&format!("recv 0 1 {MAX} 1"), "outside the MR");
    // 8-aligned, and OFF + 8 overflows.
    p.refused("get64 18446744073709551608", "outside the MR");
    p.refused("set64 18446744073709551608 1", "outside the MR");
    p.refused("get64 3", "OFF must be 8-aligned");
    // In range of the types, one byte past the MR.
    p.refused(&format!("fill 0 {} 0", MR_LEN + 1), "outside the MR");
    p.refused(&format!("hex {} 2", MR_LEN - 1), "outside the MR");
    p.refused(&format!("get64 {MR_LEN}"), "outside the MR");
    p.refused("recv 0 1 0 4294967295", "outside the MR");
    // The edges themselves are fine.
    p.ok(&format!("fill 0 {MR_LEN} 7"));
    p.ok(&format!("hash 0 {MR_LEN}"));
    p.ok(&format!("set64 {last} {MAX}"));
    assert_eq!(p.ok(&format!("get64 {last}")), MAX);
    assert_eq!(p.ok(&format!("hex {last} 8")), "ff".repeat(8));
    assert_eq!(p.ok(&format!("hex {MR_LEN} 0")), "");
    p.finish(true);
}

#[test]
fn stream_refuses_zero_and_overflowing_windows() {
    let (mut p, _) = Peer::set_up();
    p.refused("stream 0 1 0 0 1", "MAXLEN and WINDOW must be at least 1");
    p.refused("stream 0 1 0 1 0", "MAXLEN and WINDOW must be at least 1");
    // MAXLEN * WINDOW overflows usize.
    p.refused("stream 0 1 0 4294967296 4294967296", "overflow");
    p.refused(&format!("stream 0 1 0 {MAX} 2"), "overflow");
    // Fits usize, not the MR.
    p.refused(&format!("stream 0 1 0 1 {MAX}"), "outside the MR");
    p.refused("stream 0 1 0 4096 4096", "outside the MR");
    p.refused("stream 7 1 0 1 1", "no QP 7");
    p.finish(true);
}

#[test]
fn qp_indexes_out_of_range_are_refused() {
    let (mut p, infos) = Peer::set_up();
    for i in ["2", "4294967296", MAX] {
        p.refused(&format!("state {i}"), &format!("no QP {i}"));
        p.refused(&format!("recv {i} 1 0 0"), &format!("no QP {i}"));
        p.refused(&format!("withhold {i} 1"), &format!("no QP {i}"));
    }
    p.refused(&format!("connect {OVER_MAX} 00"), "I: not a number");
    // A valid INFO (the peer's own QP 1) for a QP it does not have.
    p.refused(&format!("connect 2 {}", infos[1]), "no QP 2");
    p.refused(
        &format!("connect {MAX} {}", infos[1]),
        &format!("no QP {MAX}"),
    );
    p.refused(
        &format!("connect 0 {} 256", infos[1]),
        "MIN_RNR_TIMER: not a number",
    );
    // Nothing above touched QP 0.
    assert_eq!(p.ok("state 0"), "Reset");
    p.finish(true);
}
