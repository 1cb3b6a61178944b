//! A private PostgreSQL server for tests: its own data directory in a
//! temporary directory, started by the test, stopped and removed when the
//! handle is dropped.
//!
//! PostgreSQL refuses to run as root, so a test running as root starts it
//! as the `postgres` system user (Debian's `postgresql` package makes it).
//! The binaries are found in `ODO_PG_BINDIR`, else under
//! `/usr/lib/postgresql/<version>/bin` (newest version first). Without
//! them, [`LocalPostgres::start_or_skip`] says why and returns `None`,
//! unless `ODO_REQUIRE_POSTGRES` is set (as `cargo xtask ci` does, after
//! installing the package), when it panics instead: CI must not skip.

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

/// Names a PostgreSQL server to use instead of starting one.
pub const URL_ENV: &str = "ODO_TEST_POSTGRES_URL";
/// Set to make a missing PostgreSQL a failure instead of a skip.
pub const REQUIRE_ENV: &str = "ODO_REQUIRE_POSTGRES";
/// Overrides where the PostgreSQL binaries are.
pub const BINDIR_ENV: &str = "ODO_PG_BINDIR";
/// The port the server's Unix socket is named after (no TCP unless asked).
const SOCKET_PORT: u16 = 5432;
/// The database user the tests connect as (trust authentication).
pub const USER: &str = "odo";

/// How long the server may take to say it is ready.
const READY_WITHIN: Duration = Duration::from_secs(60);

/// Where a [`LocalPostgres`] listens besides its Unix socket.
#[derive(Debug, Clone, Default)]
pub struct Listen {
    /// TCP addresses (`listen_addresses`), none by default.
    pub tcp: Vec<String>,
    /// The TCP port (also names the socket file). Default 5432.
    pub port: Option<u16>,
    /// Extra `-c name=value` settings.
    pub settings: Vec<(String, String)>,
    /// The whole of `pg_hba.conf`, if not initdb's.
    pub hba: Option<String>,
}

/// A running private PostgreSQL server.
#[derive(Debug)]
pub struct LocalPostgres {
    child: Option<Child>,
    bindir: PathBuf,
    listen: Listen,
    run_as: Option<(u32, u32)>,
    // Last: removed after the server stopped.
    dir: tempfile::TempDir,
}

impl LocalPostgres {
    /// Starts a server (Unix socket only), or says why it cannot and
    /// returns `None` (see the module docs for when it panics instead).
    pub fn start_or_skip(test: &str) -> Option<Self> {
        match Self::bindir() {
            Some(bindir) => Some(
                Self::start(bindir, Listen::default())
                    .unwrap_or_else(|e| panic!("{test}: starting PostgreSQL: {e:#}")),
            ),
            None => {
                let why = format!(
                    "{test}: skipped: no PostgreSQL server binaries (initdb, postgres) under /usr/lib/postgresql/*/bin or {BINDIR_ENV}; install them with `apt-get install -y postgresql` (cargo xtask ci does)"
                );
                if std::env::var_os(REQUIRE_ENV).is_some() {
                    panic!("{why}, but {REQUIRE_ENV} is set");
                }
                eprintln!("{why}");
                None
            }
        }
    }

    /// The directory of `initdb` and `postgres`, if found.
    pub fn bindir() -> Option<PathBuf> {
        if let Some(dir) = std::env::var_os(BINDIR_ENV) {
            return Some(PathBuf::from(dir));
        }
        let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(|entry| {
                let entry = entry.ok()?;
                let version = entry.file_name().to_str()?.parse().ok()?;
                let bin = entry.path().join("bin");
                bin.join("initdb").exists().then_some((version, bin))
            })
            .collect();
        versions.sort();
        versions.pop().map(|(_, bin)| bin)
    }

    /// Makes a new cluster in a temporary directory and starts it.
    pub fn start(bindir: PathBuf, listen: Listen) -> Result<Self> {
        let dir = tempfile::Builder::new().prefix("odo-pg-").tempdir()?;
        let run_as = if rustix::process::geteuid().is_root() {
            let (uid, gid) = system_user("postgres")
                .context("running as root, PostgreSQL needs the `postgres` system user")?;
            std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid))?;
            Some((uid, gid))
        } else {
            None
        };
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
        let mut initdb = Command::new(bindir.join("initdb"));
        initdb
            .arg("-D")
            .arg(dir.path().join("data"))
            .args(["-U", USER, "-A", "trust", "-E", "UTF8", "--no-sync"])
            .arg("--no-instructions")
            .stdin(Stdio::null());
        as_user(&mut initdb, run_as);
        let out = initdb.output().context("running initdb")?;
        if !out.status.success() {
            bail!(
                "initdb failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if let Some(hba) = &listen.hba {
            // initdb made the file (owned by the server's user): rewrite it
            // in place.
            std::fs::write(dir.path().join("data/pg_hba.conf"), hba)?;
        }
        let mut server = Self {
            child: None,
            bindir,
            listen,
            run_as,
            dir,
        };
        server.start_again()?;
        Ok(server)
    }

    /// Starts the server on its existing data directory (after
    /// [`stop`](Self::stop)), and waits until it accepts connections.
    pub fn start_again(&mut self) -> Result<()> {
        if self.child.is_some() {
            bail!("the server is running");
        }
        let log_path = self.dir.path().join("postgres.log");
        let log = File::create(&log_path)?;
        if let Some((uid, gid)) = self.run_as {
            std::os::unix::fs::chown(&log_path, Some(uid), Some(gid))?;
        }
        let mut command = Command::new(self.bindir.join("postgres"));
        command
            .arg("-D")
            .arg(self.dir.path().join("data"))
            .arg("-k")
            .arg(self.dir.path())
            .args(["-p", &self.port().to_string()])
            .args([
                "-c",
                &format!("listen_addresses={}", self.listen.tcp.join(",")),
            ])
            .args(["-c", "max_connections=300", "-c", "shared_buffers=32MB"])
            .args(["-c", "log_min_messages=warning"]);
        for (name, value) in &self.listen.settings {
            command.args(["-c", &format!("{name}={value}")]);
        }
        command
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        as_user(&mut command, self.run_as);
        // Its own process group: a test's Ctrl-C does not reach it first.
        command.process_group(0);
        self.child = Some(command.spawn().context("starting postgres")?);
        self.wait_ready(&log_path)
    }

    fn wait_ready(&mut self, log_path: &Path) -> Result<()> {
        let give_up = Instant::now() + READY_WITHIN;
        let socket = self.dir.path().join(format!(".s.PGSQL.{}", self.port()));
        loop {
            if let Some(child) = self.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                self.child = None;
                bail!(
                    "postgres exited with {status} before it was ready: {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            // Ready: the server's own line, once its socket exists.
            let ready = socket.exists()
                && BufReader::new(File::open(log_path)?)
                    .lines()
                    .map_while(Result::ok)
                    .any(|line| line.contains("ready to accept connections"));
            if ready {
                return Ok(());
            }
            if Instant::now() > give_up {
                bail!(
                    "postgres not ready within {READY_WITHIN:?}: {}",
                    std::fs::read_to_string(log_path).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Stops the server (fast shutdown: open transactions are rolled back),
    /// keeping its data directory.
    pub fn stop(&mut self) -> Result<()> {
        let Some(mut child) = self.child.take() else {
            return Ok(());
        };
        let pid = rustix::process::Pid::from_raw(child.id() as i32);
        if let Some(pid) = pid {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::INT);
        }
        let give_up = Instant::now() + Duration::from_secs(20);
        loop {
            if child.try_wait()?.is_some() {
                return Ok(());
            }
            if Instant::now() > give_up {
                let _ = child.kill();
                let _ = child.wait();
                bail!("postgres did not stop within 20 s; killed");
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The port (TCP, and the name of the Unix socket).
    pub fn port(&self) -> u16 {
        self.listen.port.unwrap_or(SOCKET_PORT)
    }

    /// The connection string over the Unix socket.
    pub fn url(&self) -> String {
        format!(
            "host={} port={} user={USER} dbname=postgres",
            self.dir.path().display(),
            self.port()
        )
    }

    /// The server's directory (data, socket, log).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for LocalPostgres {
    fn drop(&mut self) {
        if let Err(e) = self.stop() {
            eprintln!("stopping the test PostgreSQL: {e:#}");
        }
    }
}

fn as_user(command: &mut Command, run_as: Option<(u32, u32)>) {
    if let Some((uid, gid)) = run_as {
        command.uid(uid).gid(gid);
        // Its HOME is root's otherwise.
        command.env("HOME", "/tmp");
    }
}

/// The uid and gid of system user `name`, from /etc/passwd.
pub fn system_user(name: &str) -> Option<(u32, u32)> {
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }
        let _password = fields.next()?;
        let uid = fields.next()?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some((uid, gid))
    })
}

/// Environment variables for a test server.
pub type ServerEnv = Vec<(String, String)>;

/// For test servers with `--storage postgres`: the database (the one
/// [`URL_ENV`] names, or a private one, returned so the caller keeps it
/// running) and the environment that points the servers at it. Each
/// server gets a schema of its own from its data directory
/// ([`crate::topology::schema_for`]).
pub fn for_server() -> Result<(Option<LocalPostgres>, ServerEnv)> {
    let (server, url) = match std::env::var(URL_ENV) {
        Ok(url) => (None, url),
        Err(_) => {
            let bindir = LocalPostgres::bindir().context(
                "the postgres cell needs PostgreSQL's server binaries: apt-get install -y postgresql",
            )?;
            let server = LocalPostgres::start(bindir, Listen::default())?;
            let url = server.url();
            (Some(server), url)
        }
    };
    Ok((server, vec![(odo_postgres::URL_ENV.to_owned(), url)]))
}
