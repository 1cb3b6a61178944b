//! A real server topology for black-box tests: the server binary (router and
//! registry) and its worker processes, in a temporary data directory, torn
//! down however the test ends.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};

/// How to start a server.
#[derive(Debug, Clone)]
pub struct ServerSpec {
    /// The binary (`odo` or `odo-test-server`).
    pub binary: PathBuf,
    /// Worker processes (0: in-process).
    pub workers: u32,
    /// The storage backend's name (`fjall`, `memory`, or one the binary
    /// registered, like the test server's `logfile`).
    pub storage: String,
    /// `uds` or `tcp`.
    pub transport: String,
    /// Extra arguments after `serve ...`.
    pub extra_args: Vec<String>,
    /// Extra environment variables.
    pub env: Vec<(String, String)>,
    /// The front door's address. Default `127.0.0.1:0`.
    pub listen: String,
    /// Where the server's stderr goes (default: the test's stderr).
    pub stderr: Option<PathBuf>,
    /// The network namespace to run in (`ip netns exec NAME`, which execs:
    /// the pid is the server's).
    pub netns: Option<String>,
}

/// A running server. Dropping it stops it (SIGTERM, then SIGKILL after
/// 10 s) and reaps it; its workers exit with it.
#[derive(Debug)]
pub struct RunningServer {
    child: Option<Child>,
    // Held open: the server shuts down when it closes (if the test process
    // dies, the kernel closes it).
    stdin: Option<ChildStdin>,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The server's pid.
    pub pid: u32,
}

impl ServerSpec {
    /// The `odo` binary's demo server with defaults for tests.
    pub fn new(binary: impl Into<PathBuf>, workers: u32) -> Self {
        Self {
            binary: binary.into(),
            workers,
            storage: "fjall".into(),
            transport: if cfg!(unix) { "uds" } else { "tcp" }.into(),
            extra_args: Vec::new(),
            env: Vec::new(),
            listen: "127.0.0.1:0".into(),
            stderr: None,
            netns: None,
        }
    }

    /// The server's command line on `data_dir`.
    fn command(&self, data_dir: &Path) -> Command {
        let mut command = match &self.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.binary);
                c
            }
            None => Command::new(&self.binary),
        };
        command
            .arg("serve")
            .args(["--listen", &self.listen])
            .args(["--workers", &self.workers.to_string()])
            .arg("--data-dir")
            .arg(data_dir)
            // Inside the test's directory, so nothing is left behind even
            // when a test kills the server.
            .arg("--runtime-dir")
            .arg(data_dir.join("run"))
            .args(["--storage", &self.storage])
            .args(["--transport", &self.transport])
            .arg("--exit-on-stdin-eof")
            .args(&self.extra_args)
            .envs(self.env.iter().map(|(k, v)| (k, v)));
        if self.storage == odo_postgres::NAME {
            // A schema per data directory: a new data directory starts its
            // epochs again, and must not meet (and be fenced by, or fence)
            // another server's shards in a shared schema.
            command.env(odo_postgres::SCHEMA_ENV, schema_for(data_dir));
        }
        if std::env::var_os("RUST_LOG").is_none() && !self.env.iter().any(|(k, _)| k == "RUST_LOG")
        {
            command.env("RUST_LOG", "error");
        }
        command
    }

    /// Runs the server on `data_dir` with standard input closed (a server
    /// that starts stops again at once) and returns how it exited and what
    /// it wrote on stderr; killed if it has not exited within `limit`.
    pub fn run_to_exit(
        &self,
        data_dir: &Path,
        limit: Duration,
    ) -> Result<(std::process::ExitStatus, String)> {
        let mut child = self
            .command(data_dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        let mut stderr = child.stderr.take().ok_or_else(|| anyhow!("no stderr"))?;
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = std::io::Read::read_to_string(&mut stderr, &mut text);
            text
        });
        let give_up = std::time::Instant::now() + limit;
        let status = loop {
            if let Some(status) = child.try_wait()? {
                break status;
            }
            if std::time::Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                bail!("the server did not exit within {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(10));
        };
        let stderr = reader
            .join()
            .map_err(|_| anyhow!("the stderr reader panicked"))?;
        Ok((status, stderr))
    }

    /// Starts the server on `data_dir` and waits for its ready line.
    pub fn start(&self, data_dir: &Path) -> Result<RunningServer> {
        let mut command = self.command(data_dir);
        command.stdin(Stdio::piped()).stdout(Stdio::piped());
        if let Some(path) = &self.stderr {
            let file = std::fs::File::options()
                .create(true)
                .append(true)
                .open(path)
                .with_context(|| format!("open {}", path.display()))?;
            command.stderr(file);
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("spawn {}", self.binary.display()))?;
        let pid = child.id();
        let stdin = child.stdin.take();
        let stdout = child.stdout.take().ok_or_else(|| anyhow!("no stdout"))?;
        let mut server = RunningServer {
            child: Some(child),
            stdin,
            base: String::new(),
            pid,
        };
        // The ready line, read on a thread so a silent server cannot hang
        // the test: it prints it once every worker holds its shards.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            for line in lines.by_ref() {
                let Ok(line) = line else { break };
                if let Some(addr) = line.strip_prefix("odo listening on ") {
                    let _ = tx.send(addr.trim().to_owned());
                    break;
                }
            }
            // Keep draining so the server never blocks on a full pipe.
            for _ in lines {}
        });
        match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(base) => server.base = base,
            Err(_) => bail!("the server printed no ready line within 30 s"),
        }
        Ok(server)
    }
}

impl RunningServer {
    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(mut self) -> Result<std::process::ExitStatus> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        signal(child.id(), Signal::Term)?;
        let status = child.wait()?;
        Ok(status)
    }

    /// Sends SIGKILL to the server itself (not its workers) and reaps it.
    pub fn kill(mut self) -> Result<()> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| anyhow!("already stopped"))?;
        child.kill()?;
        child.wait()?;
        Ok(())
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        drop(self.stdin.take());
        if let Some(mut child) = self.child.take() {
            let _ = signal(child.id(), Signal::Term);
            for _ in 0..200 {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Signals the tests send.
#[derive(Debug, Clone, Copy)]
pub enum Signal {
    /// SIGTERM.
    Term,
    /// SIGKILL.
    Kill,
    /// SIGSTOP.
    Stop,
    /// SIGCONT.
    Cont,
    /// SIGHUP (`odo serve`: restart the workers one after another).
    Hup,
}

/// Sends `sig` to process `pid`.
#[cfg(unix)]
pub fn signal(pid: u32, sig: Signal) -> Result<()> {
    use rustix::process::{Pid, Signal as S, kill_process};
    let pid = Pid::from_raw(pid as i32).ok_or_else(|| anyhow!("pid 0"))?;
    let sig = match sig {
        Signal::Term => S::TERM,
        Signal::Kill => S::KILL,
        Signal::Stop => S::STOP,
        Signal::Cont => S::CONT,
        Signal::Hup => S::HUP,
    };
    kill_process(pid, sig).with_context(|| format!("signal {pid:?}"))?;
    Ok(())
}

/// Sends `sig` to process `pid`.
#[cfg(not(unix))]
pub fn signal(pid: u32, sig: Signal) -> Result<()> {
    bail!("signals are not available on this platform (pid {pid}, {sig:?})")
}

/// Whether a process with this pid exists (and, on Linux, is not a
/// zombie whose threads all exited).
#[cfg(unix)]
pub fn process_alive(pid: u32) -> bool {
    if let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        let zombie = stat
            .rsplit(')')
            .next()
            .is_some_and(|rest| rest.trim_start().starts_with('Z'));
        // The main thread of a killed process may be a zombie while its
        // other threads still exit, with the process's sockets open: a
        // peer may still write to them. Dead once it alone is left.
        return !zombie
            || std::fs::read_dir(format!("/proc/{pid}/task")).is_ok_and(|t| t.count() > 1);
    }
    if cfg!(target_os = "linux") {
        return false;
    }
    rustix::process::Pid::from_raw(pid as i32)
        .is_some_and(|pid| rustix::process::test_kill_process(pid).is_ok())
}

/// Whether a process with this pid exists.
#[cfg(not(unix))]
pub fn process_alive(_pid: u32) -> bool {
    false
}

/// Whether every thread of process `pid` is stopped (SIGSTOP takes effect
/// asynchronously: until then a thread may still finish a request), or
/// `None` where this cannot be read (outside Linux).
pub fn process_stopped(pid: u32) -> Option<bool> {
    if !cfg!(target_os = "linux") {
        return None;
    }
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Some(false);
    };
    let mut any = false;
    for task in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(task.path().join("stat")) else {
            continue;
        };
        // The state follows the command name, which ends at the last ')'.
        let state = stat
            .rsplit(')')
            .next()
            .and_then(|rest| rest.trim_start().chars().next());
        if !matches!(state, Some('T' | 't')) {
            return Some(false);
        }
        any = true;
    }
    Some(any)
}

/// A field of `/proc/PID/status` in bytes (`VmRSS`, `VmHWM`: the peak).
pub fn proc_memory(pid: u32, field: &str) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kib: u64 = status
        .lines()
        .find_map(|line| line.strip_prefix(field)?.strip_prefix(':'))
        .and_then(|rest| rest.split_whitespace().next()?.parse().ok())
        .ok_or_else(|| anyhow!("no {field} in /proc/{pid}/status"))?;
    Ok(kib * 1024)
}

/// Stops process `pid` with SIGSTOP and waits (up to 10 s) until every
/// one of its threads has stopped, where that can be seen. Returns whether
/// it was seen (`false` outside Linux: the stop may still be landing).
pub async fn stop_process(pid: u32) -> Result<bool> {
    signal(pid, Signal::Stop)?;
    let give_up = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        match process_stopped(pid) {
            Some(true) => return Ok(true),
            None => return Ok(false),
            Some(false) if std::time::Instant::now() > give_up => {
                bail!("process {pid} did not stop within 10 s of SIGSTOP")
            }
            Some(false) => tokio::time::sleep(Duration::from_millis(1)).await,
        }
    }
}

/// The PostgreSQL schema of the server on `data_dir` (`--storage
/// postgres`): named after the directory.
pub fn schema_for(data_dir: &Path) -> String {
    let hash = blake3::hash(data_dir.as_os_str().as_encoded_bytes());
    format!("w{}", &hash.to_hex()[..20])
}
