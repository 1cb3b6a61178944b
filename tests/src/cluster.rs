//! A cluster of odo hosts for tests: a private etcd cluster
//! ([`crate::etcd`]), a private PostgreSQL ([`crate::postgres`]) and odo
//! hosts (the test server with `--cluster`, `--storage postgres`), each
//! etcd member and each host ([`ClusterSpec::netns`], as `cargo xtask
//! test-cluster` runs them) in a network namespace of its own on a bridge
//! ([`crate::netns`]), with PostgreSQL on the bridge's address; or each a
//! process of its own on a loopback address of its own (hosts
//! `127.0.1.N`, etcd `127.0.2.N`, PostgreSQL `127.0.3.1`: the benchmarks,
//! and the cluster test without root). All torn down however the test
//! ends.
//!
//! Optionally with TLS everywhere (required in namespaces): a test CA
//! ([`crate::tls::TestCa`]) signs a certificate for each etcd member,
//! PostgreSQL and each host; etcd requires client certificates (its
//! `/metrics` is served in plain HTTP on a port of its own,
//! [`crate::etcd::MemberSpec::metrics_url`]), PostgreSQL is reached over
//! TCP with certificate authentication, and the hosts talk to each other
//! over mutual TLS.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::etcd::{self, EtcdMember, EtcdTls, MemberSpec};
use crate::http::HttpClient;
use crate::postgres::{Listen, LocalPostgres};
use crate::tls::TestCa;
use crate::topology::{RunningServer, ServerSpec};

/// Set to make missing etcd or PostgreSQL a failure instead of a skip.
pub const REQUIRE_ENV: &str = "ODO_REQUIRE_CLUSTER";
/// Names a directory to copy the hosts' logs to when the cluster is
/// dropped (to read them after a run that passed).
pub const KEEP_LOGS_ENV: &str = "ODO_CLUSTER_LOGS";

/// The hosts' `RUST_LOG` (default `warn`), to read more of what they do.
pub const HOST_LOG_ENV: &str = "ODO_CLUSTER_HOST_LOG";

/// How a test cluster is made.
#[derive(Debug, Clone)]
pub struct ClusterSpec {
    /// The test server binary (`CARGO_BIN_EXE_odo-test-server`).
    pub binary: PathBuf,
    /// etcd members.
    pub etcd_members: usize,
    /// The cluster's shard count.
    pub shards: u32,
    /// The hosts' lease TTL in seconds (at least 2).
    pub lease_ttl_s: u64,
    /// TLS between hosts, towards etcd and towards PostgreSQL.
    pub tls: bool,
    /// The hosts' storage: `postgres` (shared: shards move between
    /// hosts) or `fjall` (on each host: shards stay).
    pub storage: String,
    /// The hosts' request deadline (`--request-timeout-ms`), if not the
    /// default.
    pub request_timeout_ms: Option<u64>,
    /// `--cluster-expected-hosts`, if not the default (1): with storage on
    /// the hosts, a new cluster's shards wait for this many hosts.
    pub expected_hosts: Option<usize>,
    /// Each etcd member and each of [`NETNS_HOSTS`] hosts in a network
    /// namespace of its own (needs root, and `tls`: odo talks plain text on
    /// loopback only).
    pub netns: bool,
}

/// How many hosts a [`ClusterSpec::netns`] cluster has namespaces for.
pub const NETNS_HOSTS: usize = 3;
/// Inside its namespace each node has every port to itself: these
/// (client, peer, metrics).
const NETNS_ETCD_PORTS: (u16, u16, u16) = (2379, 2380, 2381);
const NETNS_TRANSPORT_PORT: u16 = 7000;

/// One odo host of a [`TestCluster`].
#[derive(Debug)]
pub struct ClusterHost {
    /// Its id in the cluster (`h0`, `h1`, ...).
    pub id: String,
    /// The process.
    pub server: RunningServer,
    /// A client for its front door.
    pub client: HttpClient,
    /// Its log (stderr, `RUST_LOG=warn`).
    pub log: PathBuf,
    /// Its address (loopback, or its namespace's).
    pub ip: Ipv4Addr,
    /// Where other hosts reach its objects (odo's transport).
    pub advertise: SocketAddr,
}

impl ClusterHost {
    /// Its log so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Its `/_odo/workers` (cluster state).
    pub async fn status(&self) -> Result<Value> {
        let answer = self.client.get("/_odo/workers").await?;
        if answer.status != 200 {
            bail!("{}: /_odo/workers answered {}", self.id, answer.status);
        }
        Ok(serde_json::from_slice(&answer.body)?)
    }
}

/// etcd, PostgreSQL and odo hosts.
#[derive(Debug)]
pub struct TestCluster {
    spec: ClusterSpec,
    /// The etcd members.
    pub etcd: Vec<EtcdMember>,
    /// The database.
    pub postgres: LocalPostgres,
    /// The hosts by index; `None` once killed or stopped.
    pub hosts: Vec<Option<ClusterHost>>,
    pg_url: String,
    /// Where PostgreSQL listens (`ip:port`, or its socket's directory).
    pg_at: String,
    ca: Option<TestCa>,
    /// The namespaces, with [`ClusterSpec::netns`]: removed after every
    /// process above stopped.
    network: Option<crate::netns::Network>,
    // Last: removed after everything above stopped.
    dir: tempfile::TempDir,
}

/// Whether etcd and PostgreSQL are installed; if not, says why the test
/// `test` skips (or panics when [`REQUIRE_ENV`] is set).
pub fn available_or_skip(test: &str) -> bool {
    let mut missing = Vec::new();
    if etcd::binary().is_none() {
        missing.push("etcd (apt-get install -y etcd-server)");
    }
    if LocalPostgres::bindir().is_none() {
        missing.push("PostgreSQL's server binaries (apt-get install -y postgresql)");
    }
    if missing.is_empty() {
        return true;
    }
    let why = format!(
        "{test}: skipped: {} not installed; cargo xtask test-cluster installs them",
        missing.join(" and ")
    );
    crate::skip::unless_required(&why, REQUIRE_ENV)
}

/// A free TCP port on `ip`.
fn free_port(ip: Ipv4Addr) -> Result<u16> {
    Ok(TcpListener::bind((ip, 0))?.local_addr()?.port())
}

/// Host `i`'s loopback address.
pub fn host_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(127, 0, 1, 1 + i as u8)
}

impl TestCluster {
    /// Starts etcd and PostgreSQL (no odo host yet).
    pub fn start(spec: ClusterSpec) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("odo-cluster-").tempdir()?;
        let ca = if spec.tls {
            // PostgreSQL (another user) reads its certificate from here.
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755))?;
            Some(TestCa::new(dir.path().join("ca"))?)
        } else {
            None
        };
        let network = if spec.netns {
            if !spec.tls {
                bail!("a cluster in namespaces needs TLS: odo talks plain text on loopback only");
            }
            let labels: Vec<String> = (0..spec.etcd_members)
                .map(|i| format!("e{i}"))
                .chain((0..NETNS_HOSTS).map(|i| format!("h{i}")))
                .collect();
            let labels: Vec<&str> = labels.iter().map(String::as_str).collect();
            Some(crate::netns::Network::create(&labels)?)
        } else {
            None
        };
        // etcd on 127.0.2.N, or each in its namespace.
        let members: Vec<MemberSpec> = (0..spec.etcd_members)
            .map(|i| {
                let name = format!("e{i}");
                if let Some(net) = &network {
                    let node = net.node(&name)?;
                    return Ok(MemberSpec {
                        name,
                        ip: node.ip.to_string(),
                        client_port: NETNS_ETCD_PORTS.0,
                        peer_port: NETNS_ETCD_PORTS.1,
                        netns: Some(node.ns.clone()),
                        metrics_port: Some(NETNS_ETCD_PORTS.2),
                    });
                }
                let ip = Ipv4Addr::new(127, 0, 2, 1 + i as u8);
                Ok(MemberSpec {
                    name,
                    ip: ip.to_string(),
                    client_port: free_port(ip)?,
                    peer_port: free_port(ip)?,
                    netns: None,
                    metrics_port: Some(free_port(ip)?),
                })
            })
            .collect::<Result<_>>()?;
        let etcd_tls = match &ca {
            Some(ca) => {
                let mut files = Vec::new();
                for m in &members {
                    // etcd checks a peer's certificate against the
                    // address the peer connects from: in a namespace the
                    // member's own, on loopback 127.0.0.1 (the source the
                    // kernel picks towards 127.0.2.N).
                    let from: &[&str] = match m.netns {
                        Some(_) => &[&m.ip],
                        None => &[&m.ip, "127.0.0.1"],
                    };
                    let (cert, key) = ca.issue(&m.name, from)?;
                    files.push(EtcdTls {
                        ca: ca.cert_path(),
                        cert,
                        key,
                    });
                }
                Some(files)
            }
            None => None,
        };
        let tls_of = etcd_tls.map(|files| move |i: usize| files[i].clone());
        let etcd = etcd::start_cluster(
            &members,
            tls_of.as_ref().map(|f| f as &dyn Fn(usize) -> EtcdTls),
        )?;
        let bindir = LocalPostgres::bindir().context("PostgreSQL is not installed")?;
        let (postgres, pg_url, pg_at) = match &ca {
            Some(ca) => {
                // On the bridge's address with namespaces (the hosts reach
                // it there), else on loopback.
                let (ip, clients) = match &network {
                    Some(net) => (net.gateway(), format!("{}/28", net.gateway())),
                    None => (Ipv4Addr::new(127, 0, 3, 1), "127.0.0.0/8".to_owned()),
                };
                let port = free_port(ip)?;
                let (cert, key) = ca.issue("postgres", &[&ip.to_string()])?;
                // PostgreSQL runs as `postgres` when the test runs as
                // root, else as the test's user (who owns the files).
                let owner = rustix::process::geteuid()
                    .is_root()
                    .then(|| crate::postgres::system_user("postgres"))
                    .flatten();
                let (cert, key) = ca.readable_by(owner, &cert, &key)?;
                let listen = Listen {
                    tcp: vec![ip.to_string()],
                    port: Some(port),
                    settings: vec![
                        ("ssl".into(), "on".into()),
                        ("ssl_cert_file".into(), cert.display().to_string()),
                        ("ssl_key_file".into(), key.display().to_string()),
                        ("ssl_ca_file".into(), ca.cert_path().display().to_string()),
                    ],
                    // TCP only with TLS, and only with a client
                    // certificate the CA signed for the user.
                    hba: Some(format!(
                        "local all all trust\nhostssl all all {clients} cert\n"
                    )),
                };
                let pg = LocalPostgres::start(bindir, listen)?;
                // rustls checks the server's certificate against the CA
                // and the address (what libpq calls verify-full).
                let url = format!(
                    "host={ip} port={port} user={} dbname=postgres sslmode=require",
                    crate::postgres::USER
                );
                (pg, url, format!("{ip}:{port}"))
            }
            None => {
                let pg = LocalPostgres::start(bindir, Listen::default())?;
                let url = pg.url();
                let at = pg.dir().display().to_string();
                (pg, url, at)
            }
        };
        Ok(Self {
            spec,
            etcd,
            postgres,
            hosts: Vec::new(),
            pg_url,
            pg_at,
            ca,
            network,
            dir,
        })
    }

    /// `etcd://a,b,c`.
    pub fn etcd_url(&self) -> String {
        let clients: Vec<String> = self.etcd.iter().map(|m| m.spec.client()).collect();
        format!("etcd://{}", clients.join(","))
    }

    /// Starts host `i` (a new one, or again after it was killed), on
    /// `127.0.1.(i+1)` or in its namespace, and waits for its front door.
    pub fn start_host(&mut self, i: usize) -> Result<()> {
        self.start_host_with(i, true)
    }

    /// Starts host `i` as [`start_host`](Self::start_host) does, but
    /// without its `--cluster-tls-*` and `--postgres-tls-*` files even if
    /// the cluster has TLS: beyond loopback odo refuses to start so, and
    /// this says why (the error carries the host's log).
    pub fn start_host_without_tls(&mut self, i: usize) -> Result<()> {
        self.start_host_with(i, false)
    }

    fn start_host_with(&mut self, i: usize, tls: bool) -> Result<()> {
        let id = format!("h{i}");
        let (ip, netns) = match &self.network {
            Some(net) => {
                let node = net.node(&id)?;
                (node.ip, Some(node.ns.clone()))
            }
            None => (host_ip(i), None),
        };
        let data_dir = self.dir.path().join(&id);
        std::fs::create_dir_all(&data_dir)?;
        let log = self.dir.path().join(format!("{id}.log"));
        let mut spec = ServerSpec::new(&self.spec.binary, 0);
        spec.storage = self.spec.storage.clone();
        spec.transport = "tcp".into();
        spec.listen = format!("{ip}:0");
        spec.stderr = Some(log.clone());
        let port = match netns {
            Some(_) => NETNS_TRANSPORT_PORT,
            None => free_port(ip)?,
        };
        spec.netns = netns;
        let advertise = SocketAddr::from((ip, port));
        let filter = std::env::var(HOST_LOG_ENV).unwrap_or_else(|_| "warn".to_owned());
        spec.env = vec![("RUST_LOG".to_owned(), filter)];
        spec.extra_args = Vec::new();
        let postgres = self.spec.storage == odo_postgres::NAME;
        if postgres {
            spec.env
                .push((odo_postgres::URL_ENV.to_owned(), self.pg_url.clone()));
            spec.extra_args
                .extend(["--postgres-schema".into(), "odo_cluster_test".into()]);
        }
        if let Some(ms) = self.spec.request_timeout_ms {
            spec.extra_args
                .extend(["--request-timeout-ms".into(), ms.to_string()]);
        }
        if let Some(n) = self.spec.expected_hosts {
            spec.extra_args
                .extend(["--cluster-expected-hosts".into(), n.to_string()]);
        }
        spec.extra_args.extend([
            "--cluster".into(),
            self.etcd_url(),
            "--cluster-name".into(),
            "test".into(),
            "--cluster-host".into(),
            id.clone(),
            "--advertise".into(),
            advertise.to_string(),
            "--shards".into(),
            self.spec.shards.to_string(),
            "--lease-ttl-s".into(),
            self.spec.lease_ttl_s.to_string(),
        ]);
        if let Some(ca) = self.ca.as_ref().filter(|_| tls) {
            let (cert, key) = ca.issue(&id, &[&ip.to_string()])?;
            let mut files = vec![
                ("--cluster-tls-ca", ca.cert_path()),
                ("--cluster-tls-cert", cert.clone()),
                ("--cluster-tls-key", key.clone()),
            ];
            if postgres {
                // PostgreSQL's `cert` authentication: the user is the
                // certificate's common name.
                let (pg_cert, pg_key) = ca.issue(crate::postgres::USER, &[])?;
                files.extend([
                    ("--postgres-tls-ca", ca.cert_path()),
                    ("--postgres-tls-cert", pg_cert),
                    ("--postgres-tls-key", pg_key),
                ]);
            }
            for (flag, path) in files {
                spec.extra_args.push(flag.into());
                spec.extra_args.push(path.display().to_string());
            }
        }
        let server = spec.start(&data_dir).with_context(|| {
            format!(
                "starting {id}: {}",
                std::fs::read_to_string(&log).unwrap_or_default()
            )
        })?;
        let client = HttpClient::new(&server.base);
        let host = ClusterHost {
            id,
            server,
            client,
            log,
            ip,
            advertise,
        };
        if self.hosts.len() <= i {
            self.hosts.resize_with(i + 1, || None);
        }
        self.hosts[i] = Some(host);
        Ok(())
    }

    /// Host `i`, if running.
    pub fn host(&self, i: usize) -> Option<&ClusterHost> {
        self.hosts.get(i).and_then(Option::as_ref)
    }

    /// The running hosts.
    pub fn live(&self) -> impl Iterator<Item = &ClusterHost> {
        self.hosts.iter().flatten()
    }

    /// Waits (up to `within`) until every running host serves, agrees on
    /// the placement, every shard is owned by a running host that serves
    /// it at that epoch, and (`balanced`) no host holds more than
    /// `ceil(S / hosts)` shards. Returns the placement: shard -> (host,
    /// epoch).
    pub async fn wait_placed(
        &self,
        within: Duration,
        balanced: bool,
    ) -> Result<BTreeMap<u32, (String, u64)>> {
        let give_up = Instant::now() + within;
        loop {
            let last = match self.placement_now(balanced).await {
                Ok(placement) => return Ok(placement),
                Err(e) => format!("{e:#}"),
            };
            if Instant::now() > give_up {
                bail!("no settled placement within {within:?}: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn placement_now(&self, balanced: bool) -> Result<BTreeMap<u32, (String, u64)>> {
        let live: Vec<&ClusterHost> = self.live().collect();
        let mut agreed: Option<BTreeMap<u32, (String, u64)>> = None;
        let mut serving: BTreeMap<String, BTreeMap<u32, u64>> = BTreeMap::new();
        for host in &live {
            let status = host.status().await?;
            if status["serving"] != Value::Bool(true) {
                bail!("{} is not serving", host.id);
            }
            let placement = parse_placement(&status["placement"])?;
            let shards: BTreeMap<u32, u64> = status["shards"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter_map(|(k, v)| Some((k.parse().ok()?, v.as_u64()?)))
                        .collect()
                })
                .unwrap_or_default();
            serving.insert(host.id.clone(), shards);
            match &agreed {
                None => agreed = Some(placement),
                Some(p) if *p == placement => {}
                Some(_) => bail!("hosts disagree on the placement"),
            }
        }
        let placement = agreed.context("no host is running")?;
        if placement.len() != self.spec.shards as usize {
            bail!(
                "{} of {} shards have an owner",
                placement.len(),
                self.spec.shards
            );
        }
        for (shard, (owner, epoch)) in &placement {
            let held = serving.get(owner).and_then(|s| s.get(shard));
            if held != Some(epoch) {
                bail!("shard {shard}: {owner} does not serve it at epoch {epoch} yet");
            }
        }
        if balanced {
            let most = (self.spec.shards as usize).div_ceil(live.len().max(1));
            for host in &live {
                let n = placement.values().filter(|(o, _)| *o == host.id).count();
                if n > most || n == 0 {
                    bail!("{} holds {n} shards", host.id);
                }
            }
        }
        Ok(placement)
    }

    /// SIGKILLs host `i` (every process of it: the host runs its objects
    /// in-process) and reaps it.
    pub fn kill_host(&mut self, i: usize) -> Result<()> {
        let host = self
            .hosts
            .get_mut(i)
            .and_then(Option::take)
            .context("no such host")?;
        host.server.kill()
    }

    /// Stops host `i` gracefully (SIGTERM: it drains its shards to the
    /// others and leaves), and waits for it to exit.
    pub fn stop_host(&mut self, i: usize) -> Result<std::process::ExitStatus> {
        let host = self
            .hosts
            .get_mut(i)
            .and_then(Option::take)
            .context("no such host")?;
        host.server.terminate()
    }

    /// The test CA, with TLS.
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// The namespaces, with [`ClusterSpec::netns`] (to cut and heal
    /// links).
    pub fn network(&mut self) -> Option<&mut crate::netns::Network> {
        self.network.as_mut()
    }

    /// Whether its etcd members and hosts run in network namespaces.
    pub fn has_network(&self) -> bool {
        self.network.is_some()
    }

    /// Where PostgreSQL listens: `ip:port` (the bridge's address in
    /// namespaces), or the directory of its Unix socket without TLS.
    pub fn pg_host(&self) -> &str {
        &self.pg_at
    }

    /// The cluster's directory (logs, data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let Some(to) = std::env::var_os(KEEP_LOGS_ENV) else {
            return;
        };
        // Stop the hosts first so their logs are complete.
        self.hosts.clear();
        let to = PathBuf::from(to);
        // One run has several clusters, each with hosts h0..: their
        // directory's (unique) name keeps their logs apart.
        let tag = format!(
            "{}-",
            self.dir
                .path()
                .file_name()
                .map(|n| n.to_string_lossy())
                .unwrap_or_default()
        );
        for entry in std::fs::read_dir(self.dir.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            let path = entry.path();
            if path.extension().is_some_and(|e| e == "log") {
                let name = format!("{tag}{}", entry.file_name().to_string_lossy());
                let _ = std::fs::copy(&path, to.join(name));
            }
        }
    }
}

/// `placement` of `/_odo/workers`: shard -> (owner, epoch), owned shards
/// only.
pub fn parse_placement(value: &Value) -> Result<BTreeMap<u32, (String, u64)>> {
    let map = value.as_object().context("placement is not an object")?;
    let mut out = BTreeMap::new();
    for (shard, entry) in map {
        let shard: u32 = shard.parse()?;
        if let (Some(owner), Some(epoch)) = (entry["owner"].as_str(), entry["epoch"].as_u64()) {
            out.insert(shard, (owner.to_owned(), epoch));
        }
    }
    Ok(out)
}
