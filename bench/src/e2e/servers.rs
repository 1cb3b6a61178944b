//! The servers the `e2e` benchmark compares: odo, the single-process
//! limit server and workerd, each built or installed on first use, started
//! from an empty data directory, awaited until `GET /hello` answers, and
//! stopped.

use std::io::{BufRead as _, BufReader, Read as _, Write as _};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::Context as _;

const READY_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Server {
    /// `odo serve --workers 2`, fjall with `SyncData`, UDS between processes.
    Odo,
    /// The same with the demo's counter SQLite-backed
    /// (`ODO_DEMO_STORAGE=sqlite`).
    OdoSql,
    /// `limit-bench --mode fjall-group`: bare hyper and one group-commit
    /// thread in one process, the ceiling for odo's design here.
    Limit,
    /// Cloudflare's workerd, a SQLite-backed Durable Object.
    Workerd,
}

impl Server {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Server::Odo => "odo",
            Server::OdoSql => "odo-sql",
            Server::Limit => "limit",
            Server::Workerd => "workerd",
        }
    }
}

/// Where the processes run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Pinning {
    /// Anywhere: server and wrk share both CPUs.
    None,
    /// The server (all its processes) on CPU 0, wrk on CPU 1.
    ServerCpu0WrkCpu1,
}

pub(crate) fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub(crate) fn target_dir(root: &Path) -> PathBuf {
    std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
}

pub(crate) fn on_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|dir| dir.join(program).is_file()))
}

/// Builds the release `odo` binary (a no-op when it is up to date), or
/// takes the one `ODO_BENCH_ODO` names.
pub(crate) fn odo_binary(root: &Path) -> anyhow::Result<PathBuf> {
    // A given binary (`ODO_BENCH_ODO=path`, say a build of another commit
    // to compare with) is used as it is.
    if let Some(given) = std::env::var_os("ODO_BENCH_ODO") {
        let given = PathBuf::from(given);
        anyhow::ensure!(
            given.is_file(),
            "ODO_BENCH_ODO: {} not found",
            given.display()
        );
        return Ok(given);
    }
    let binary = target_dir(root).join("release/odo");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("e2e: cargo build --release -p odo");
    let status = Command::new(cargo)
        .args(["build", "--release", "-p", "odo"])
        .current_dir(root)
        .status();
    match status {
        Ok(s) if s.success() => {}
        other if binary.is_file() => {
            println!(
                "warning: building odo failed ({other:?}); using the existing {}",
                binary.display()
            );
        }
        other => anyhow::bail!(
            "cannot build odo ({other:?}); build it with `cargo build --release -p odo`"
        ),
    }
    anyhow::ensure!(binary.is_file(), "{} not found", binary.display());
    Ok(binary)
}

/// A workerd binary and the directory holding its config.
#[derive(Debug)]
pub(crate) struct Workerd {
    pub(crate) binary: PathBuf,
    pub(crate) dir: PathBuf,
}

/// Copies the shared workerd setup into the target directory and runs
/// `npm install` there once.
pub(crate) fn workerd_binary(root: &Path, shared: &Path) -> anyhow::Result<Workerd> {
    let source = shared.join("workerd");
    let dir = target_dir(root).join("odo-bench-workerd");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    for file in ["config.capnp", "counter-worker.mjs", "package.json"] {
        let to = dir.join(file);
        let _ = std::fs::remove_file(&to);
        std::fs::copy(source.join(file), &to)
            .with_context(|| format!("copying {}", source.join(file).display()))?;
        let mut perms = std::fs::metadata(&to)?.permissions();
        #[allow(clippy::permissions_set_readonly_false)]
        perms.set_readonly(false);
        std::fs::set_permissions(&to, perms)?;
    }
    if let Some(binary) = std::env::var_os("WORKERD") {
        return Ok(Workerd {
            binary: binary.into(),
            dir,
        });
    }
    let binary = dir.join("node_modules/@cloudflare/workerd-linux-64/bin/workerd");
    if !binary.is_file() {
        anyhow::ensure!(on_path("npm"), "npm not found (needed to install workerd)");
        eprintln!("e2e: npm install in {}", dir.display());
        let out = Command::new("npm")
            .args(["install", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .output()
            .context("running npm install")?;
        anyhow::ensure!(
            out.status.success(),
            "npm install failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    anyhow::ensure!(
        binary.is_file(),
        "npm install left no binary at {}",
        binary.display()
    );
    let version = Command::new(&binary)
        .arg("--version")
        .output()
        .context("running workerd --version")?;
    anyhow::ensure!(
        version.status.success(),
        "workerd --version failed: {}",
        String::from_utf8_lossy(&version.stderr).trim()
    );
    Ok(Workerd { binary, dir })
}

/// A server under test; dropping its data directory removes its data.
#[derive(Debug)]
pub(crate) struct Running {
    /// Which server: `odo`, `workerd` or `limit` (for messages).
    name: &'static str,
    pub(crate) child: Child,
    pub(crate) base: String,
    _data: tempfile::TempDir,
}

impl Running {
    /// SIGTERM (or, for odo, closing its standard input), then SIGKILL
    /// after 10 s.
    pub(crate) fn stop(mut self) {
        drop(self.child.stdin.take());
        let pid = self.child.id().to_string();
        let _ = Command::new("kill").args(["-TERM", &pid]).status();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        eprintln!(
            "e2e: {} (pid {pid}) did not stop within 10 s of SIGTERM; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn pinned(program: &Path, pinning: Pinning) -> Command {
    match pinning {
        Pinning::None => Command::new(program),
        Pinning::ServerCpu0WrkCpu1 => {
            let mut c = Command::new("taskset");
            c.args(["-c", "0"]).arg(program);
            c
        }
    }
}

pub(crate) fn start_odo(odo: &Path, pinning: Pinning, sqlite: bool) -> anyhow::Result<Running> {
    let data = tempfile::tempdir().context("temp dir")?;
    let log = std::fs::File::create(data.path().join("odo.log"))?;
    let mut child = pinned(odo, pinning)
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "2"])
        .arg("--data-dir")
        .arg(data.path().join("data"))
        .arg("--exit-on-stdin-eof")
        .env("RUST_LOG", "warn")
        .env(
            "ODO_DEMO_STORAGE",
            if sqlite { "sqlite" } else { "key-value" },
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", odo.display()))?;
    let stdout = child.stdout.take().context("odo stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if let Some(url) = line.strip_prefix("odo listening on ") {
                let _ = tx.send(url.trim().to_owned());
            }
        }
    });
    let base = match rx.recv_timeout(READY_TIMEOUT) {
        Ok(url) => url,
        Err(_) => {
            let _ = child.kill();
            let log = std::fs::read_to_string(data.path().join("odo.log")).unwrap_or_default();
            anyhow::bail!("odo did not report its address within 60 s; log:\n{log}");
        }
    };
    let running = Running {
        name: "odo",
        child,
        base,
        _data: data,
    };
    wait_ready(&running)?;
    Ok(running)
}

pub(crate) fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(crate) fn start_workerd(workerd: &Workerd, pinning: Pinning) -> anyhow::Result<Running> {
    let data = tempfile::tempdir().context("temp dir")?;
    let store = data.path().join("do");
    std::fs::create_dir_all(&store)?;
    let port = free_port()?;
    let log = std::fs::File::create(data.path().join("workerd.log"))?;
    let child = pinned(&workerd.binary, pinning)
        .arg("serve")
        .arg("config.capnp")
        .arg("--socket-addr")
        .arg(format!("http=127.0.0.1:{port}"))
        .arg("--directory-path")
        .arg(format!("do-storage={}", store.display()))
        .current_dir(&workerd.dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", workerd.binary.display()))?;
    ready_on_port(child, port, data, "workerd")
}

/// The server `child` started on `port` of loopback, once it answers; if it
/// does not, stops it and fails with its log (`{name}.log`, in `data`).
fn ready_on_port(
    child: Child,
    port: u16,
    data: tempfile::TempDir,
    name: &'static str,
) -> anyhow::Result<Running> {
    let log = format!("{name}.log");
    let running = Running {
        name,
        child,
        base: format!("http://127.0.0.1:{port}"),
        _data: data,
    };
    if let Err(e) = wait_ready(&running) {
        let text = std::fs::read_to_string(running._data.path().join(&log)).unwrap_or_default();
        running.stop();
        anyhow::bail!("{e:#}; {log}:\n{text}");
    }
    Ok(running)
}

/// Waits until `GET /hello` answers `hello`.
fn wait_ready(server: &Running) -> anyhow::Result<()> {
    let addr: SocketAddr = server
        .base
        .trim_start_matches("http://")
        .parse()
        .with_context(|| format!("server address {:?}", server.base))?;
    let deadline = Instant::now() + READY_TIMEOUT;
    while Instant::now() < deadline {
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
            let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
            let _ = s.write_all(b"GET /hello HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
            let mut answer = String::new();
            let _ = s.read_to_string(&mut answer);
            if answer.starts_with("HTTP/1.1 200") && answer.ends_with("hello") {
                return Ok(());
            }
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    anyhow::bail!("{} did not answer GET /hello within 60 s", server.base)
}

/// The limit server's binary, built from `shared/limit` into the target
/// directory (the shared tree may be read-only), `--locked` to its own
/// lock file.
pub(crate) fn limit_binary(root: &Path, shared: &Path) -> anyhow::Result<PathBuf> {
    let manifest = shared.join("limit/Cargo.toml");
    anyhow::ensure!(manifest.is_file(), "{} not found", manifest.display());
    let target = target_dir(root).join("limit-bench");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("e2e: cargo build --release --locked (limit server)");
    let out = Command::new(cargo)
        .args(["build", "--release", "--locked", "--manifest-path"])
        .arg(&manifest)
        .arg("--target-dir")
        .arg(&target)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .context("running cargo build for the limit server")?;
    anyhow::ensure!(
        out.status.success(),
        "building the limit server failed: {}",
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let binary = target.join("release/limit-bench");
    anyhow::ensure!(binary.is_file(), "{} not found", binary.display());
    Ok(binary)
}

/// Starts the limit server in its reference mode, `fjall-group`.
pub(crate) fn start_limit(limit: &Path, pinning: Pinning) -> anyhow::Result<Running> {
    let data = tempfile::tempdir().context("temp dir")?;
    let port = free_port()?;
    let log = std::fs::File::create(data.path().join("limit.log"))?;
    let child = pinned(limit, pinning)
        .args(["--mode", "fjall-group", "--port", &port.to_string()])
        .arg("--data")
        .arg(data.path().join("db"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", limit.display()))?;
    ready_on_port(child, port, data, "limit")
}
