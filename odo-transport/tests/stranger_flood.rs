//! A flood of strangers against a server in its own process: clients that
//! announce huge frames and keep sending, and clients that send nothing,
//! while a real channel makes calls. Every real call is answered, and the
//! server's memory (its peak resident set, read from `/proc`) stays within a
//! bound far below what the strangers announce.
//!
//! The server runs in a child process (this test binary, re-executed with
//! [`CHILD_ENV`] set, running only [`stranger_flood_child_server`]) so that
//! its memory is its own: nothing the test's clients allocate counts.
#![cfg(target_os = "linux")]

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use common::*;
use odo_core::wire::Response;
use odo_transport::{DEFAULT_MAX_FRAME_LEN, Endpoint, Server};
use tokio::io::AsyncWriteExt;

/// Set in the child's environment to `tcp` or `unix:<socket path>`: the
/// child test then runs the server there.
const CHILD_ENV: &str = "ODO_TRANSPORT_STRANGER_FLOOD_SERVER";
/// What the child prints, followed by its endpoint, once it listens.
const READY: &str = "stranger-flood-server-ready";
/// The child test's name.
const CHILD_TEST: &str = "stranger_flood_child_server";

/// Strangers announcing a frame of exactly the default bound (16 MiB), then
/// sending [`SENT_PER_STRANGER`] bytes of it.
const FULL_SIZE: usize = 50;
/// Strangers announcing a frame of 4 GiB, then sending the same.
const FOUR_GIB: usize = 50;
/// Strangers that connect and send nothing.
const SILENT: usize = 100;
/// What each announcing stranger sends after its prefix (if the server
/// lets it): 50 of them buffered would be 200 MiB.
const SENT_PER_STRANGER: usize = 4 * 1024 * 1024;
/// How much the server's peak resident set may grow over its resident set
/// before the flood.
const GROWTH_BOUND: u64 = 64 * 1024 * 1024;
/// Real calls made while the strangers flood in, and after.
const CALLS_DURING: u64 = 200;
const CALLS_AFTER: u64 = 20;

/// Not a test of its own: the server half of the flood tests, run in a
/// child process. Without [`CHILD_ENV`] it does nothing.
#[test]
fn stranger_flood_child_server() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    runtime.block_on(async move {
        let endpoint: Endpoint = if spec == "tcp" {
            Endpoint::tcp_loopback_any_port()
        } else {
            spec.parse().expect("the parent's endpoint")
        };
        let mut config = server_config();
        // Long enough that no stranger is dropped for its silence during the
        // test: only the server's limits may close them.
        config.handshake_timeout = Duration::from_secs(120);
        let server = Server::bind(&endpoint, config).await.expect("bind");
        // libtest may have written the test's name on this line already.
        println!("\n{READY} {}", server.endpoint());
        // Serve until the parent closes our stdin.
        let stdin_closed = async {
            let _ = tokio::task::spawn_blocking(|| {
                let mut sink = String::new();
                while std::io::stdin().read_line(&mut sink).is_ok_and(|n| n > 0) {}
            })
            .await;
        };
        server.serve(Arc::new(echo()), stdin_closed).await;
    });
}

/// The child server process; killed and reaped when dropped.
struct ChildServer {
    child: Child,
    stdin: Option<ChildStdin>,
    endpoint: Endpoint,
}

impl ChildServer {
    fn start(spec: &str) -> ChildServer {
        let mut child = Command::new(std::env::current_exe().expect("this test binary"))
            .args(["--exact", CHILD_TEST, "--nocapture", "--test-threads", "1"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn the child server");
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().expect("child stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some((_, endpoint)) = line.split_once(READY) {
                    let _ = tx.send(endpoint.trim().to_owned());
                    break;
                }
            }
            // Keep draining so the child never blocks on a full pipe.
            for _ in lines {}
        });
        let mut server = ChildServer {
            child,
            stdin,
            endpoint: Endpoint::tcp_loopback_any_port(),
        };
        let endpoint = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("the child server's ready line");
        server.endpoint = endpoint.parse().expect("the child's endpoint");
        server
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Closes the child's stdin (a graceful stop) and waits for it.
    fn stop(mut self) {
        drop(self.stdin.take());
        let status = self.child.wait().expect("wait for the child server");
        assert!(status.success(), "the child server exited with {status}");
    }
}

impl Drop for ChildServer {
    fn drop(&mut self) {
        if self.stdin.take().is_some() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A `/proc/<pid>/status` figure in bytes (`VmRSS`, `VmHWM`).
fn memory(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    let line = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/status"));
    let kib: u64 = line
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .expect("a size in kB");
    kib * 1024
}

/// One stranger: connects, sends `prefix` as a length prefix (if any), then
/// up to [`SENT_PER_STRANGER`] bytes until the server stops taking them.
/// Returns the connection, still open.
async fn stranger(endpoint: Endpoint, prefix: Option<u32>) -> Box<dyn RawStream> {
    let mut stream = raw(&endpoint).await;
    if let Some(prefix) = prefix
        && stream.write_all(&prefix.to_be_bytes()).await.is_ok()
    {
        let chunk = vec![0u8; 64 * 1024];
        let mut sent = 0;
        while sent < SENT_PER_STRANGER {
            if stream.write_all(&chunk).await.is_err() {
                break;
            }
            sent += chunk.len();
        }
        let _ = stream.flush().await;
    }
    stream
}

async fn call_and_check(channel: &odo_transport::Channel, n: u64) {
    let body = Bytes::from(format!("real call {n}"));
    let (response, answer) = channel
        .call(request(n), body.clone(), LONG)
        .await
        .unwrap_or_else(|e| panic!("real call {n} failed during the flood: {e}"));
    assert_eq!((response, answer), (Response::Rpc, body));
}

async fn flood(kind: Kind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let spec = match kind {
        Kind::Tcp => "tcp".to_owned(),
        Kind::Unix => format!("unix:{}", dir.path().join("run").join("s.sock").display()),
    };
    let server = ChildServer::start(&spec);
    let pid = server.pid();
    let channel = connect(&server.endpoint).await;
    call_and_check(&channel, 0).await;
    let before = memory(pid, "VmRSS");

    let full_size = u32::try_from(DEFAULT_MAX_FRAME_LEN).expect("the bound fits a prefix");
    // The three kinds of strangers, interleaved.
    let mut kinds: Vec<Option<u32>> = Vec::new();
    for i in 0..FULL_SIZE.max(FOUR_GIB).max(SILENT) {
        if i < FULL_SIZE {
            kinds.push(Some(full_size));
        }
        if i < FOUR_GIB {
            kinds.push(Some(u32::MAX));
        }
        if i < SILENT {
            kinds.push(None);
        }
    }
    let strangers: Vec<_> = kinds
        .into_iter()
        .map(|prefix| tokio::spawn(stranger(server.endpoint.clone(), prefix)))
        .collect();
    // Real calls while the strangers connect and send.
    for n in 1..=CALLS_DURING {
        call_and_check(&channel, n).await;
    }
    let mut open = Vec::new();
    for stranger in strangers {
        open.push(stranger.await.expect("stranger task"));
    }
    // Every stranger has done its worst; the server still answers.
    for n in 0..CALLS_AFTER {
        call_and_check(&channel, CALLS_DURING + 1 + n).await;
    }
    let peak = memory(pid, "VmHWM");
    let after = memory(pid, "VmRSS");
    let mib = |bytes: u64| bytes as f64 / (1024.0 * 1024.0);
    eprintln!(
        "{kind:?} stranger flood: server VmRSS {:.1} MiB before, {:.1} MiB after, peak VmHWM {:.1} MiB",
        mib(before),
        mib(after),
        mib(peak)
    );
    assert!(
        peak.saturating_sub(before) < GROWTH_BOUND,
        "{kind:?}: the server's peak resident set grew by {:.1} MiB under the stranger flood \
         (from {:.1} MiB to {:.1} MiB); the bound is {:.0} MiB",
        mib(peak.saturating_sub(before)),
        mib(before),
        mib(peak),
        mib(GROWTH_BOUND)
    );
    drop(open);
    drop(channel);
    server.stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flood_over_tcp_leaves_the_server_small_and_serving() {
    flood(Kind::Tcp).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_flood_over_unix_leaves_the_server_small_and_serving() {
    flood(Kind::Unix).await;
}
