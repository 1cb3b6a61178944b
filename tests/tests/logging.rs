//! The server's log, written to a pipe, carries no terminal escape codes
//! (colors are for terminals only; `NO_COLOR` is honoured there, see the
//! unit test of `log_color` in `odo::app`).

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A bound on every wait: a failure guard, not a timing.
const GUARD: Duration = Duration::from_secs(30);

/// The server, killed and reaped however the test ends.
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_log_written_to_a_pipe_has_no_color_codes() {
    let dir = tempfile::tempdir().unwrap();
    let child = Command::new(env!("CARGO_BIN_EXE_odo-test-server"))
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--storage", "memory"])
        .arg("--data-dir")
        .arg(dir.path())
        .arg("--runtime-dir")
        .arg(dir.path().join("run"))
        .arg("--exit-on-stdin-eof")
        .env("RUST_LOG", "info")
        .env_remove("NO_COLOR")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn the test server");
    let mut server = Server(child);
    let stdout = server.0.stdout.take().unwrap();
    let mut stderr = server.0.stderr.take().unwrap();
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if line.starts_with("odo listening on ") {
                let _ = ready_tx.send(());
            }
        }
    });
    let (log_tx, log_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut log = Vec::new();
        let _ = stderr.read_to_end(&mut log);
        let _ = log_tx.send(log);
    });
    ready_rx
        .recv_timeout(GUARD)
        .expect("the server's ready line");
    // Closing standard input shuts the server down; its log ends with it.
    drop(server.0.stdin.take());
    let deadline = Instant::now() + GUARD;
    while server.0.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "the server did not stop");
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = log_rx.recv_timeout(GUARD).expect("the server's log");
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("odo serving"),
        "the log lacks the serving line: {text}"
    );
    let escapes = log.iter().filter(|&&b| b == 0x1b).count();
    assert_eq!(escapes, 0, "escape codes in a piped log:\n{text:?}");
}
