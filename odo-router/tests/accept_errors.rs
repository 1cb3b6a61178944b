//! Accept errors back off and are logged at a limited rate: a router run
//! out of file descriptors (`EMFILE`, for real: a child process with a low
//! `RLIMIT_NOFILE`) must neither spin on a core nor flood its log, and must
//! serve again once descriptors are free.
//!
//! This binary has its own `main` (`harness = false`): run with
//! `ODO_ROUTER_TEST_EMFILE_CHILD` set, it is the child, a router over an
//! echo service that prints `listening ADDR` and serves until its standard
//! input closes; otherwise it is the test, which starts itself as that
//! child. Linux only (`/proc/<pid>/stat` gives the child's CPU time).

mod common;

use std::process::ExitCode;

/// Set in the child's environment.
const CHILD_ENV: &str = "ODO_ROUTER_TEST_EMFILE_CHILD";
/// The test's name, for filters and the summary line.
const NAME: &str = "emfile_backs_off_logs_little_and_recovers";

fn main() -> ExitCode {
    if std::env::var_os(CHILD_ENV).is_some() {
        return child::main();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--list") {
        println!("{NAME}: test");
        return ExitCode::SUCCESS;
    }
    // Positional arguments are name filters, as with the usual harness.
    let filters: Vec<&String> = args.iter().filter(|a| !a.starts_with('-')).collect();
    if !filters.is_empty() && !filters.iter().any(|f| NAME.contains(f.as_str())) {
        println!("accept_errors: 0 passed, 0 failed, 1 skipped");
        return ExitCode::SUCCESS;
    }
    if cfg!(not(target_os = "linux")) {
        println!("test {NAME} ... skipped: needs Linux (RLIMIT_NOFILE, /proc/<pid>/stat)");
        println!("accept_errors: 0 passed, 0 failed, 1 skipped");
        return ExitCode::SUCCESS;
    }
    match parent::run() {
        Ok(()) => {
            println!("test {NAME} ... ok");
            println!("accept_errors: 1 passed, 0 failed");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test {NAME} ... FAILED\n{e}");
            println!("accept_errors: 0 passed, 1 failed");
            ExitCode::FAILURE
        }
    }
}

#[cfg(target_os = "linux")]
mod child {
    use std::io::Write;
    use std::process::ExitCode;
    use std::time::Duration;

    use odo_router::RouterConfig;
    use rustix::process::{Resource, getrlimit, setrlimit};
    use tokio::io::AsyncReadExt;

    use super::common::echo_router;

    /// The child's open-file limit: a handful for the runtime, the rest for
    /// connections.
    pub(crate) const NOFILE: u64 = 64;

    pub(crate) fn main() -> ExitCode {
        let mut limit = getrlimit(Resource::Nofile);
        limit.current = Some(NOFILE);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            eprintln!("child: cannot lower RLIMIT_NOFILE: {e}");
            return ExitCode::FAILURE;
        }
        tracing_subscriber::fmt()
            .with_ansi(false)
            .with_max_level(tracing::Level::INFO)
            .with_writer(std::io::stderr)
            .init();
        let runtime = match tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
        {
            Ok(runtime) => runtime,
            Err(e) => {
                eprintln!("child: {e}");
                return ExitCode::FAILURE;
            }
        };
        runtime.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            println!("listening {}", listener.local_addr().unwrap());
            let _ = std::io::stdout().flush();
            // Connections stay open for the whole test: the timeouts are
            // long, and the cap is above the descriptor limit.
            let config = RouterConfig {
                max_connections: 10_000,
                header_read_timeout: Duration::from_secs(300),
                idle_timeout: Duration::from_secs(300),
                ..RouterConfig::default()
            };
            echo_router(config)
                .serve(listener, async {
                    let mut stdin = tokio::io::stdin();
                    let mut buf = [0u8; 64];
                    while let Ok(n) = stdin.read(&mut buf).await {
                        if n == 0 {
                            break;
                        }
                    }
                })
                .await;
        });
        runtime.shutdown_background();
        ExitCode::SUCCESS
    }
}

#[cfg(target_os = "linux")]
mod parent {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::net::{SocketAddr, TcpStream};
    use std::process::{Child, Command, Stdio};
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::sync::{Arc, Mutex, mpsc};
    use std::time::{Duration, Instant};

    use super::CHILD_ENV;
    use super::child::NOFILE;

    /// A bound on every wait: a failure guard, not a timing.
    const GUARD: Duration = Duration::from_secs(10);
    /// How long the child's CPU time and log are measured under `EMFILE`.
    const WINDOW: Duration = Duration::from_secs(2);
    /// Failure guards for that window. A spinning accept loop uses the
    /// whole window (a full core) and writes hundreds of megabytes.
    const MAX_CPU: Duration = Duration::from_millis(500);
    const MAX_LOG_BYTES: u64 = 64 * 1024;

    /// The child, killed and reaped however the test ends.
    struct ChildGuard(Child);

    impl Drop for ChildGuard {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    /// The child's log as it arrives: every byte counted, the first
    /// 64 KiB kept.
    #[derive(Default)]
    struct Log {
        bytes: AtomicU64,
        head: Mutex<Vec<u8>>,
    }

    impl Log {
        fn contains(&self, needle: &str) -> bool {
            let head = self.head.lock().unwrap_or_else(|e| e.into_inner());
            String::from_utf8_lossy(&head).contains(needle)
        }
    }

    /// The CPU time (user + system) process `pid` used so far.
    fn cpu_time(pid: u32) -> Result<Duration, String> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .map_err(|e| format!("reading /proc/{pid}/stat: {e}"))?;
        // Fields after the command name, which ends with the last ')'.
        let rest = stat
            .rsplit_once(')')
            .map(|(_, rest)| rest)
            .ok_or("malformed stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        // utime and stime are fields 14 and 15; `rest` starts at field 3.
        let ticks: u64 = fields
            .get(11..13)
            .ok_or("short stat")?
            .iter()
            .map(|f| f.parse::<u64>().map_err(|e| e.to_string()))
            .sum::<Result<u64, String>>()?;
        let hz = rustix::param::clock_ticks_per_second();
        Ok(Duration::from_secs_f64(ticks as f64 / hz as f64))
    }

    fn wait_for(what: &str, mut done: impl FnMut() -> bool) -> Result<(), String> {
        let deadline = Instant::now() + GUARD;
        while !done() {
            if Instant::now() > deadline {
                return Err(format!("{what}: not within {GUARD:?}"));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// `GET /hello` on a new connection; the status line, or why none.
    fn hello(addr: SocketAddr) -> Result<String, String> {
        let mut stream = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(GUARD))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET /hello HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).map_err(|e| e.to_string())?;
        let answer = String::from_utf8_lossy(&answer).into_owned();
        Ok(answer.lines().next().unwrap_or_default().to_owned())
    }

    pub(crate) fn run() -> Result<(), String> {
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let child = Command::new(exe)
            .env(CHILD_ENV, "1")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| format!("spawning the child: {e}"))?;
        let mut child = ChildGuard(child);
        let pid = child.0.id();
        let stdout = child.0.stdout.take().ok_or("no stdout")?;
        let mut stderr = child.0.stderr.take().ok_or("no stderr")?;
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            if let Some(Ok(line)) = lines.next() {
                let _ = tx.send(line);
            }
            for _ in lines {}
        });
        let log = Arc::new(Log::default());
        let reader = log.clone();
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 1 << 16];
            while let Ok(n) = stderr.read(&mut buf) {
                if n == 0 {
                    break;
                }
                reader.bytes.fetch_add(n as u64, Ordering::Relaxed);
                let mut head = reader.head.lock().unwrap_or_else(|e| e.into_inner());
                let room = (64 * 1024usize).saturating_sub(head.len()).min(n);
                head.extend_from_slice(&buf[..room]);
            }
        });
        let line = rx
            .recv_timeout(Duration::from_secs(30))
            .map_err(|_| "the child printed no ready line".to_owned())?;
        let addr: SocketAddr = line
            .strip_prefix("listening ")
            .ok_or_else(|| format!("unexpected ready line {line:?}"))?
            .parse()
            .map_err(|e| format!("{line:?}: {e}"))?;
        if hello(addr)? != "HTTP/1.1 200 OK" {
            return Err("the child does not serve".into());
        }

        // More connections than the child has descriptors: it accepts
        // until EMFILE, and the rest wait in its accept queue.
        let mut held = Vec::new();
        for _ in 0..2 * NOFILE {
            held.push(TcpStream::connect(addr).map_err(|e| format!("connect: {e}"))?);
        }
        wait_for("the child logs an accept failure", || {
            log.contains("accept failed")
        })?;

        let cpu_before = cpu_time(pid)?;
        let log_before = log.bytes.load(Ordering::Relaxed);
        let started = Instant::now();
        std::thread::sleep(WINDOW);
        let cpu = cpu_time(pid)?.saturating_sub(cpu_before);
        let logged = log.bytes.load(Ordering::Relaxed) - log_before;
        let elapsed = started.elapsed();
        println!(
            "under EMFILE for {elapsed:.1?}: {cpu:.2?} of CPU, {logged} bytes of log \
             (guards: {MAX_CPU:?}, {MAX_LOG_BYTES} bytes)"
        );
        {
            let head = log.head.lock().unwrap_or_else(|e| e.into_inner());
            let text = String::from_utf8_lossy(&head);
            for line in text.lines().take(3) {
                println!("  child log: {line}");
            }
        }
        let mut failures = Vec::new();
        if cpu >= MAX_CPU {
            failures.push(format!(
                "the accept loop spins: {cpu:.2?} of CPU in {elapsed:.1?} under EMFILE"
            ));
        }
        if logged >= MAX_LOG_BYTES {
            failures.push(format!(
                "the log floods: {logged} bytes in {elapsed:.1?} under EMFILE"
            ));
        }

        // Descriptors come back: the child serves again.
        drop(held);
        let deadline = Instant::now() + GUARD;
        loop {
            match hello(addr) {
                Ok(status) if status == "HTTP/1.1 200 OK" => break,
                other if Instant::now() > deadline => {
                    failures.push(format!(
                        "the child does not serve again after EMFILE: {other:?}"
                    ));
                    break;
                }
                _ => std::thread::sleep(Duration::from_millis(20)),
            }
        }

        // Closing its standard input stops the child.
        drop(child.0.stdin.take());
        wait_for("the child exits", || {
            matches!(child.0.try_wait(), Ok(Some(_)))
        })?;
        if failures.is_empty() {
            Ok(())
        } else {
            Err(failures.join("\n"))
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod child {
    pub(crate) fn main() -> std::process::ExitCode {
        std::process::ExitCode::FAILURE
    }
}

#[cfg(not(target_os = "linux"))]
mod parent {
    pub(crate) fn run() -> Result<(), String> {
        Err("needs Linux".into())
    }
}
