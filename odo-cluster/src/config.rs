//! How a host joins its cluster.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::ClusterError;

/// Certificates and keys from PEM files: the cluster's CA, and this host's
/// certificate and key. The same files serve etcd (client certificate)
/// and the connections between odo hosts (both ways).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) that peers' certificates must chain to.
    pub ca: PathBuf,
    /// This host's certificate chain.
    pub cert: PathBuf,
    /// This host's private key.
    pub key: PathBuf,
}

/// A host's cluster settings (`odo serve --cluster ...`).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub struct ClusterConfig {
    /// etcd's client endpoints (`host:port`).
    pub etcd: Vec<String>,
    /// The cluster's name: its keys live under `/odo/<name>/`.
    pub name: String,
    /// This host's id. Default: the advertised address.
    pub host: String,
    /// Where other hosts reach this host's objects: the transport server
    /// binds it.
    pub advertise: SocketAddr,
    /// This host's HTTP front door, as other hosts and tools should reach
    /// it (shown in `/_odo/cluster`).
    pub http: String,
    /// The shard count, used when the cluster is new (the first host
    /// records it). Default 16.
    pub shards: u32,
    /// The membership lease's time to live. Default 3 s.
    pub lease_ttl: Duration,
    /// How long after a keep-alive was sent this host keeps serving if no
    /// later one is acknowledged: the local deadline, shorter than the TTL
    /// (the lease cannot expire in etcd before `sent + TTL`). Default 2/3
    /// of the TTL.
    pub local_deadline: Duration,
    /// The bound on each etcd call. Default 2 s.
    pub etcd_timeout: Duration,
    /// TLS towards etcd and between hosts. Required unless every address
    /// (etcd's and the advertised one) is a loopback address.
    pub tls: Option<TlsFiles>,
    /// Whether the storage backend is reachable from every host (so
    /// shards may move between hosts), as PostgreSQL is. With storage on
    /// the host (fjall), a shard stays where it was first placed.
    pub shared_storage: bool,
    /// With storage on the hosts: how many hosts the elected host waits
    /// for (as members) before it places shards that were never placed,
    /// so a new cluster's shards spread over the hosts started together
    /// instead of all staying with the first one up. Default 1 (no wait).
    pub expected_hosts: usize,
    /// The longest the elected host waits for [`Self::expected_hosts`];
    /// then it places new shards on the members it has. Default 30 s.
    pub expected_hosts_wait: Duration,
}

impl ClusterConfig {
    /// The defaults for cluster `name` on `etcd`, this host at `advertise`.
    pub fn new(etcd: Vec<String>, name: impl Into<String>, advertise: SocketAddr) -> Self {
        let ttl = Duration::from_secs(3);
        Self {
            etcd,
            name: name.into(),
            host: advertise.to_string(),
            advertise,
            http: String::new(),
            shards: 16,
            lease_ttl: ttl,
            local_deadline: ttl * 2 / 3,
            etcd_timeout: Duration::from_secs(2),
            tls: None,
            shared_storage: false,
            expected_hosts: 1,
            expected_hosts_wait: Duration::from_secs(30),
        }
    }

    /// Parses `etcd://host:port[,host:port...]` into endpoints.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Config`] if the scheme or an address is missing.
    pub fn parse_etcd(url: &str) -> Result<Vec<String>, ClusterError> {
        let rest = url.strip_prefix("etcd://").ok_or_else(|| {
            ClusterError::Config(format!(
                "--cluster takes etcd://host:port[,host:port...], not {url:?}"
            ))
        })?;
        let endpoints: Vec<String> = rest
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        if endpoints.is_empty() || endpoints.iter().any(|e| !e.contains(':')) {
            return Err(ClusterError::Config(format!(
                "--cluster needs host:port for each etcd member, got {url:?}"
            )));
        }
        Ok(endpoints)
    }

    /// Checks the settings: a usable name, a TTL etcd accepts, a local
    /// deadline shorter than the TTL, and TLS wherever an address is not
    /// a loopback one.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Config`] saying what is wrong.
    pub fn validate(&self) -> Result<(), ClusterError> {
        let name_ok = !self.name.is_empty()
            && self.name.len() <= 64
            && self
                .name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !name_ok {
            return Err(ClusterError::Config(format!(
                "cluster name {:?}: use 1 to 64 ASCII letters, digits, '-' and '_'",
                self.name
            )));
        }
        if self.host.is_empty() || self.host.contains('/') || self.host.len() > 128 {
            return Err(ClusterError::Config(format!(
                "host id {:?}: 1 to 128 characters, no '/'",
                self.host
            )));
        }
        if self.shards == 0 || self.shards > 65_536 {
            return Err(ClusterError::Config(format!(
                "{} shards: use 1 to 65536",
                self.shards
            )));
        }
        if self.expected_hosts == 0 {
            return Err(ClusterError::Config(
                "expected hosts: at least 1 (this host)".into(),
            ));
        }
        if self.lease_ttl < Duration::from_secs(2) || self.lease_ttl.subsec_millis() != 0 {
            return Err(ClusterError::Config(format!(
                "lease TTL {:?}: etcd takes whole seconds, at least 2",
                self.lease_ttl
            )));
        }
        if self.local_deadline >= self.lease_ttl || self.local_deadline.is_zero() {
            return Err(ClusterError::Config(format!(
                "the local deadline ({:?}) must be shorter than the lease TTL ({:?})",
                self.local_deadline, self.lease_ttl
            )));
        }
        if self.tls.is_none() {
            let remote_etcd = self.etcd.iter().find(|e| !is_loopback(e));
            if let Some(endpoint) = remote_etcd {
                return Err(ClusterError::Config(format!(
                    "etcd at {endpoint} is not on this machine: give --cluster-tls-ca, --cluster-tls-cert and --cluster-tls-key (traffic beyond loopback is never plain text)"
                )));
            }
            if !self.advertise.ip().is_loopback() {
                return Err(ClusterError::Config(format!(
                    "--advertise {} is not a loopback address: give --cluster-tls-ca, --cluster-tls-cert and --cluster-tls-key (traffic between hosts is never plain text)",
                    self.advertise
                )));
            }
        }
        Ok(())
    }
}

/// Whether `host:port` names a loopback address.
fn is_loopback(endpoint: &str) -> bool {
    let host = endpoint
        .rsplit_once(':')
        .map_or(endpoint, |(host, _)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ClusterConfig {
        ClusterConfig::new(
            vec!["127.0.0.1:2379".into()],
            "c1",
            "127.0.0.1:7000".parse().unwrap(),
        )
    }

    #[test]
    fn etcd_urls_parse() {
        assert_eq!(
            ClusterConfig::parse_etcd("etcd://a:1,b:2").unwrap(),
            ["a:1", "b:2"]
        );
        for bad in ["http://a:1", "etcd://", "etcd://a", "a:1"] {
            assert!(ClusterConfig::parse_etcd(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn settings_are_checked() {
        assert!(config().validate().is_ok());
        let mut c = config();
        c.name = "a/b".into();
        assert!(c.validate().is_err());
        let mut c = config();
        c.local_deadline = c.lease_ttl;
        assert!(c.validate().is_err());
        let mut c = config();
        c.lease_ttl = Duration::from_millis(2500);
        assert!(c.validate().is_err());
        let mut c = config();
        c.expected_hosts = 0;
        assert!(c.validate().is_err());
        let mut c = config();
        c.advertise = "198.18.0.2:7000".parse().unwrap();
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .contains("never plain text")
        );
        let mut c = config();
        c.etcd = vec!["198.18.0.9:2379".into()];
        assert!(c.validate().is_err());
    }
}
