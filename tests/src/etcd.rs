//! Private etcd members for tests (Debian's `etcd-server`): each with its
//! own data directory in a temporary directory, started by the test and
//! stopped (and removed) when dropped. A member may run inside a network
//! namespace (`ip netns exec NAME etcd ...`).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Set to make a missing etcd a failure instead of a skip.
pub const REQUIRE_ENV: &str = "ODO_REQUIRE_ETCD";

/// The etcd binary, if installed.
pub fn binary() -> Option<PathBuf> {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
}

/// One member's place: its name, address and ports, and the namespace it
/// runs in (none: this one).
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// The member's name.
    pub name: String,
    /// Its IP address.
    pub ip: String,
    /// Its client port.
    pub client_port: u16,
    /// Its peer port.
    pub peer_port: u16,
    /// The network namespace to run in.
    pub netns: Option<String>,
    /// A port for `/metrics` (and `/health`) in plain HTTP
    /// (`--listen-metrics-urls`), besides the client port: with TLS the
    /// client port wants a client certificate, and tests read metrics
    /// (which member leads) with a plain HTTP client.
    pub metrics_port: Option<u16>,
}

impl MemberSpec {
    /// `ip:client_port`.
    pub fn client(&self) -> String {
        format!("{}:{}", self.ip, self.client_port)
    }

    /// Where `/metrics` answers in plain HTTP: the metrics port if it has
    /// one, else the client port (plain HTTP only without TLS).
    pub fn metrics_url(&self) -> String {
        match self.metrics_port {
            Some(port) => format!("http://{}:{port}", self.ip),
            None => format!("http://{}", self.client()),
        }
    }
}

/// TLS for etcd: the CA, and the member's certificate and key (PEM).
#[derive(Debug, Clone)]
pub struct EtcdTls {
    /// The CA certificate.
    pub ca: PathBuf,
    /// The member's certificate (valid for its IP).
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

/// A running etcd member.
#[derive(Debug)]
pub struct EtcdMember {
    /// Where it is.
    pub spec: MemberSpec,
    child: Option<Child>,
    log: PathBuf,
    dir: tempfile::TempDir,
    args: Vec<String>,
}

/// Starts every member of `members` as one cluster (each with TLS from
/// `tls(i)` if given), and waits until each says it serves clients.
pub fn start_cluster(
    members: &[MemberSpec],
    tls: Option<&dyn Fn(usize) -> EtcdTls>,
) -> Result<Vec<EtcdMember>> {
    let etcd = binary().context("etcd is not installed: apt-get install -y etcd-server")?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    let initial: Vec<String> = members
        .iter()
        .map(|m| format!("{}={scheme}://{}:{}", m.name, m.ip, m.peer_port))
        .collect();
    let mut started = Vec::new();
    for (i, spec) in members.iter().enumerate() {
        // In memory where there is /dev/shm: the tests kill processes,
        // never the machine, and a shared disk's fsync latency would eat
        // into the hosts' lease deadlines.
        let shm = Path::new("/dev/shm");
        let mut builder = tempfile::Builder::new();
        builder.prefix("odo-etcd-");
        let dir = if shm.is_dir() {
            builder.tempdir_in(shm)?
        } else {
            builder.tempdir()?
        };
        let client = format!("{scheme}://{}:{}", spec.ip, spec.client_port);
        let peer = format!("{scheme}://{}:{}", spec.ip, spec.peer_port);
        let mut args = vec![
            "--name".to_owned(),
            spec.name.clone(),
            "--data-dir".to_owned(),
            dir.path().join("data").display().to_string(),
            "--listen-client-urls".to_owned(),
            client.clone(),
            "--advertise-client-urls".to_owned(),
            client,
            "--listen-peer-urls".to_owned(),
            peer.clone(),
            "--initial-advertise-peer-urls".to_owned(),
            peer,
            "--initial-cluster".to_owned(),
            initial.join(","),
            "--initial-cluster-state".to_owned(),
            "new".to_owned(),
            "--initial-cluster-token".to_owned(),
            "odo-test".to_owned(),
            // Quick elections (the tests kill leaders), but not so quick
            // that a busy 2-core machine makes spurious ones.
            "--heartbeat-interval".to_owned(),
            "100".to_owned(),
            "--election-timeout".to_owned(),
            "1000".to_owned(),
        ];
        if let Some(port) = spec.metrics_port {
            args.push("--listen-metrics-urls".to_owned());
            args.push(format!("http://{}:{port}", spec.ip));
        }
        if let Some(tls) = tls {
            let tls = tls(i);
            for (flag, path) in [
                ("--trusted-ca-file", &tls.ca),
                ("--cert-file", &tls.cert),
                ("--key-file", &tls.key),
                ("--peer-trusted-ca-file", &tls.ca),
                ("--peer-cert-file", &tls.cert),
                ("--peer-key-file", &tls.key),
            ] {
                args.push(flag.to_owned());
                args.push(path.display().to_string());
            }
            args.push("--client-cert-auth".to_owned());
            args.push("--peer-client-cert-auth".to_owned());
        }
        let log = dir.path().join("etcd.log");
        let mut member = EtcdMember {
            spec: spec.clone(),
            child: None,
            log,
            dir,
            args,
        };
        member.spawn(&etcd)?;
        started.push(member);
    }
    for member in &mut started {
        member.wait_ready()?;
    }
    Ok(started)
}

impl EtcdMember {
    fn spawn(&mut self, etcd: &Path) -> Result<()> {
        let log = File::create(&self.log)?;
        let mut command = match &self.spec.netns {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns]).arg(etcd);
                c
            }
            None => Command::new(etcd),
        };
        command
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        self.child = Some(command.spawn().context("starting etcd")?);
        Ok(())
    }

    fn wait_ready(&mut self) -> Result<()> {
        let give_up = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "etcd {} exited with {status}: {}",
                    self.spec.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            let ready = BufReader::new(File::open(&self.log)?)
                .lines()
                .map_while(Result::ok)
                .any(|l| l.contains("ready to serve client requests"));
            if ready {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!(
                    "etcd {} not ready within 60 s: {}",
                    self.spec.name,
                    std::fs::read_to_string(&self.log).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the member (SIGKILL) and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on its data directory (after [`kill`](Self::kill)),
    /// rejoining the cluster, and waits until it serves.
    pub fn restart(&mut self) -> Result<()> {
        let etcd = binary().context("etcd is not installed")?;
        for arg in self.args.iter_mut() {
            if arg == "new" {
                *arg = "existing".to_owned();
            }
        }
        // The old log said ready already: start a fresh one.
        self.spawn(&etcd)?;
        self.wait_ready()
    }

    /// Its data directory's parent (log, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The member's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for EtcdMember {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `count` members on loopback, on free ports, or `None` with the reason
/// printed when etcd is missing (a failure instead when [`REQUIRE_ENV`] is
/// set, as under `cargo xtask ci`).
pub fn loopback_or_skip(test: &str, count: usize) -> Option<Vec<EtcdMember>> {
    if binary().is_none() {
        let why = format!(
            "{test}: skipped: etcd is not installed (apt-get install -y etcd-server; cargo xtask ci installs it)"
        );
        if std::env::var_os(REQUIRE_ENV).is_some() {
            panic!("{why}, but {REQUIRE_ENV} is set");
        }
        eprintln!("{why}");
        return None;
    }
    let specs: Vec<MemberSpec> = (0..count)
        .map(|i| MemberSpec {
            name: format!("e{i}"),
            ip: "127.0.0.1".into(),
            client_port: free_port(),
            peer_port: free_port(),
            netns: None,
            metrics_port: None,
        })
        .collect();
    Some(start_cluster(&specs, None).unwrap_or_else(|e| panic!("{test}: starting etcd: {e:#}")))
}

/// A free TCP port on loopback (bound and released: another process may
/// take it in between, which would show as a failure to start).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}
