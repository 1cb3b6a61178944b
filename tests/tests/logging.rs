//! The server's log: written to a pipe, it carries no terminal escape codes
//! (colors are for terminals only; `NO_COLOR` is honoured there, see the
//! unit test of `log_color` in `odo::app`); hostile clients cannot fill it
//! at the default level; and a standard error nobody reads, or a standard
//! output closed at once, do not stop the server.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// A bound on every wait: a failure guard, not a timing.
const GUARD: Duration = Duration::from_secs(30);

/// The server, killed and reaped however the test ends.
struct Server {
    child: Child,
    port: u16,
    log: mpsc::Receiver<Vec<u8>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The test server's command line: one worker, memory storage, in `dir`,
/// with no `RUST_LOG` or `NO_COLOR` of the test's own, its standard streams
/// piped, stopping when its standard input ends.
fn serve_command(dir: &std::path::Path) -> Command {
    serve_command_with(dir, 1)
}

/// [`serve_command`] with `workers` workers.
fn serve_command_with(dir: &std::path::Path, workers: u32) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_odo-test-server"));
    command
        .arg("serve")
        .args(["--listen", "127.0.0.1:0", "--workers"])
        .arg(workers.to_string())
        .args(["--storage", "memory"])
        .arg("--data-dir")
        .arg(dir)
        .arg("--runtime-dir")
        .arg(dir.join("run"))
        .arg("--exit-on-stdin-eof")
        .env_remove("NO_COLOR")
        .env_remove("RUST_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    command
}

/// The port of the server's ready line on `stdout`, once it comes.
fn ready_port(stdout: std::process::ChildStdout) -> mpsc::Receiver<Option<u16>> {
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if let Some(at) = line.strip_prefix("odo listening on http://127.0.0.1:") {
                let _ = ready_tx.send(at.trim().parse::<u16>().ok());
            }
        }
    });
    ready_rx
}

impl Server {
    /// A server spawned by the test (its stdout piped, its log taken care
    /// of by the caller), once its ready line came: killed and reaped
    /// however the test ends.
    fn ready(mut child: Child, what: &str) -> Server {
        let ready = ready_port(child.stdout.take().unwrap());
        let mut server = Server {
            child,
            port: 0,
            log: mpsc::channel().1,
        };
        server.port = ready
            .recv_timeout(GUARD)
            .unwrap_or_else(|_| panic!("no ready line {what}"))
            .expect("a port in the ready line");
        server
    }

    /// Starts the test server with `log_filter` as `RUST_LOG` (none: the
    /// server's default) and waits for its ready line.
    fn start(dir: &std::path::Path, log_filter: Option<&str>) -> Server {
        let mut command = serve_command(dir);
        if let Some(filter) = log_filter {
            command.env("RUST_LOG", filter);
        }
        let mut child = command.spawn().expect("spawn the test server");
        let mut stderr = child.stderr.take().unwrap();
        let (log_tx, log) = mpsc::channel();
        std::thread::spawn(move || {
            let mut log = Vec::new();
            let _ = stderr.read_to_end(&mut log);
            let _ = log_tx.send(log);
        });
        let mut server = Server::ready(child, "");
        server.log = log;
        server
    }

    /// Shuts the server down (closing its standard input) and returns its
    /// whole log.
    fn stop(mut self) -> Vec<u8> {
        drop(self.child.stdin.take());
        let deadline = Instant::now() + GUARD;
        while self.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "the server did not stop");
            std::thread::sleep(Duration::from_millis(20));
        }
        self.log.recv_timeout(GUARD).expect("the server's log")
    }
}

#[test]
fn a_log_written_to_a_pipe_has_no_color_codes() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), Some("info"));
    let log = server.stop();
    let text = String::from_utf8_lossy(&log);
    assert!(
        text.contains("odo serving"),
        "the log lacks the serving line: {text}"
    );
    let escapes = log.iter().filter(|&&b| b == 0x1b).count();
    assert_eq!(escapes, 0, "escape codes in a piped log:\n{text:?}");
}

/// A server started, asked one thing, its workers restarted one after
/// another (SIGHUP) and stopped logs no warning: an operator learns to
/// read warnings only if they mean something. Each worker's clean exit in
/// the rolling restart was a warning, and so, now and then, was the reset
/// of the door's channel to it.
#[cfg(target_os = "linux")]
#[test]
fn a_rolling_restart_and_a_stop_log_no_warning() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_command_with(dir.path(), 2)
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn the test server");
    let stderr = child.stderr.take().unwrap();
    let (line_tx, lines) = mpsc::channel::<String>();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line_tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut server = Server::ready(child, "");
    assert!(hello(server.port), "/hello not answered");
    let mut log = Vec::new();
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::HUP).unwrap();
    loop {
        let line = lines
            .recv_timeout(GUARD)
            .unwrap_or_else(|_| panic!("no end of the rolling restart in:\n{}", log.join("\n")));
        let done = line.contains("every worker restarted");
        log.push(line);
        if done {
            break;
        }
    }
    assert!(hello(server.port), "/hello not answered after the restart");
    drop(server.child.stdin.take());
    let status = exits(&mut server.child).expect("it stops at its stdin's end");
    assert!(status.success(), "{status}");
    log.extend(lines.iter());
    let warnings: Vec<&String> = log
        .iter()
        .filter(|l| l.contains(" WARN ") || l.contains(" ERROR "))
        .collect();
    assert!(warnings.is_empty(), "warnings: {warnings:#?}");
}

/// One HTTP/2 frame: its 9-byte header, then `payload`.
fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u32;
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// Rapid reset (CVE-2023-44487): streams opened and cancelled at once, 30
/// on each of 20 connections. hyper's HTTP/2 layer closes each such
/// connection, and once logged a warning for every one: about 900 KB of
/// log in 10 s from one client at the default level.
#[test]
fn rapid_resets_leave_no_line_in_the_default_log() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path(), None);
    // GET / on http://t: indexed :method GET, :scheme http, :path /, and
    // :authority "t" as a literal.
    let head = [0x82, 0x86, 0x84, 0x41, 0x01, b't'];
    for _ in 0..20 {
        let mut stream = TcpStream::connect(("127.0.0.1", server.port)).expect("connect");
        stream.set_read_timeout(Some(GUARD)).unwrap();
        let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
        out.extend(frame(0x4, 0, 0, &[]));
        for i in 0..30u32 {
            let id = 2 * i + 1;
            // HEADERS with END_STREAM and END_HEADERS, then RST_STREAM
            // (CANCEL).
            out.extend(frame(0x1, 0x5, id, &head));
            out.extend(frame(0x3, 0, id, &8u32.to_be_bytes()));
        }
        stream.write_all(&out).expect("the burst");
        // The server ends the connection (GOAWAY, then the close).
        let mut sink = Vec::new();
        let _ = stream.read_to_end(&mut sink);
    }
    let log = server.stop();
    let text = String::from_utf8_lossy(&log);
    let lines: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("WARN") || l.contains("ERROR"))
        .collect();
    assert!(
        lines.is_empty(),
        "{} warnings from 20 hostile connections, the first: {:?}",
        lines.len(),
        lines.first()
    );
}

/// `GET /hello` on a fresh connection: whether it was answered 200.
fn hello(port: u16) -> bool {
    let Ok(mut stream) = TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let _ = stream.set_read_timeout(Some(GUARD));
    if stream
        .write_all(b"GET /hello HTTP/1.1\r\nhost: t\r\nconnection: close\r\n\r\n")
        .is_err()
    {
        return false;
    }
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer);
    answer.starts_with(b"HTTP/1.1 200 ")
}

/// Waits until `child` exits; whether it did within the guard.
fn exits(child: &mut Child) -> Option<std::process::ExitStatus> {
    let deadline = Instant::now() + GUARD;
    while Instant::now() < deadline {
        if let Some(status) = child.try_wait().unwrap() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    None
}

/// A pipe whose reader has stopped: its write end, already full, and its
/// read end, to hold (never read) while the write end is in use.
#[cfg(unix)]
fn full_pipe() -> (std::io::PipeReader, std::io::PipeWriter) {
    use rustix::fs::{OFlags, fcntl_getfl, fcntl_setfl};
    let (reader, mut writer) = std::io::pipe().expect("a pipe");
    let blocking = fcntl_getfl(&writer).unwrap();
    fcntl_setfl(&writer, blocking | OFlags::NONBLOCK).unwrap();
    let chunk = [b'.'; 4096];
    loop {
        match writer.write(&chunk) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => panic!("filling the pipe: {e}"),
        }
    }
    // The flag belongs to the open pipe, which the server shares: its
    // writes must block, as they do on a pipe whose reader stopped.
    fcntl_setfl(&writer, blocking).unwrap();
    (reader, writer)
}

/// A standard error that nobody reads (a pipe whose reader stopped, full
/// from the start): the server blocked on its first log line. It never
/// became ready; one whose pipe filled later (64 KiB of log) stopped
/// answering, SIGTERM included. Now the lines that do not fit are dropped.
#[cfg(unix)]
#[test]
fn a_standard_error_nobody_reads_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let (_unread, full) = full_pipe();
    let child = serve_command(dir.path())
        .env("RUST_LOG", "debug")
        .stderr(Stdio::from(full))
        .spawn()
        .expect("spawn the test server");
    let mut server = Server::ready(child, "with its log unread");
    for i in 0..200 {
        assert!(hello(server.port), "request {i} unanswered, its log unread");
    }
    let pid = rustix::process::Pid::from_raw(server.child.id() as i32).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).unwrap();
    let status = exits(&mut server.child).expect("SIGTERM stops it, its log unread");
    assert!(status.success(), "{status}");
}

/// A standard output closed at once (`odo serve | true`): the ready line
/// made `println!` panic, and the server exited 101 before it served.
#[test]
fn a_closed_standard_output_does_not_stop_the_server() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = serve_command(dir.path())
        .env("RUST_LOG", "info")
        .spawn()
        .expect("spawn the test server");
    drop(child.stdout.take());
    let stderr = child.stderr.take().unwrap();
    let mut server = Server {
        child,
        port: 0,
        log: mpsc::channel().1,
    };
    // The port from the log's serving line.
    let (ready_tx, ready_rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines() {
            let Ok(line) = line else { break };
            if line.contains("odo serving")
                && let Some(at) = line.split("listen=127.0.0.1:").nth(1)
            {
                let port: String = at.chars().take_while(char::is_ascii_digit).collect();
                let _ = ready_tx.send(port.parse::<u16>().ok());
            }
        }
    });
    let port = ready_rx
        .recv_timeout(GUARD)
        .expect("the serving line")
        .expect("a port");
    assert!(hello(port), "not served with its standard output closed");
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "the server exited"
    );
    drop(server.child.stdin.take());
    let status = exits(&mut server.child).expect("it stops at its stdin's end");
    assert!(status.success(), "{status}");
}
