//! Helpers for tests that cross a process boundary with `ipc-peer`.

#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::Duration;

pub type Msg = [u64; 4];

/// A unique segment name for one test.
pub fn name(test: &str) -> String {
    format!("ipc-test-{}-{test}", std::process::id())
}

pub struct Peer {
    pub child: Child,
    lines: Receiver<String>,
}

impl Peer {
    pub fn spawn(args: &[&str]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_ipc-peer"))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn ipc-peer");
        let out = child.stdout.take().unwrap();
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self { child, lines }
    }

    /// Waits for a stdout line starting with `prefix`; panics with the
    /// peer's stderr if it exits or takes longer than `timeout`.
    pub fn expect_line(&mut self, prefix: &str, timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left.min(Duration::from_millis(50))) {
                Ok(line) if line.starts_with(prefix) => return line,
                Ok(_) => {}
                Err(_) => {
                    if let Ok(Some(status)) = self.child.try_wait() {
                        let err = self.stderr();
                        panic!("peer exited ({status}) before printing {prefix:?}: {err}");
                    }
                    if left.is_zero() {
                        panic!("peer did not print {prefix:?} within {timeout:?}");
                    }
                }
            }
        }
    }

    fn stderr(&mut self) -> String {
        let mut s = String::new();
        if let Some(mut e) = self.child.stderr.take() {
            let _ = std::io::Read::read_to_string(&mut e, &mut s);
        }
        s
    }

    /// Waits for exit (at most `timeout`) and returns (success, stdout lines, stderr).
    pub fn finish(mut self, timeout: Duration) -> (bool, Vec<String>, String) {
        let deadline = std::time::Instant::now() + timeout;
        let status = loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                break s;
            }
            if std::time::Instant::now() >= deadline {
                let _ = self.child.kill();
                let _ = self.child.wait();
                panic!("peer did not exit within {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        };
        let mut lines = Vec::new();
        while let Ok(l) = self.lines.recv_timeout(Duration::from_millis(200)) {
            lines.push(l);
        }
        let err = self.stderr();
        (status.success(), lines, err)
    }

    /// SIGKILL.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill peer");
        self.child.wait().expect("reap peer");
    }
}

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
