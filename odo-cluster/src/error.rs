//! The crate's error type.

/// What can go wrong in cluster mode.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClusterError {
    /// The configuration is unusable.
    #[error("cluster configuration: {0}")]
    Config(String),
    /// A TLS file could not be read.
    #[error("cluster TLS: cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The TLS files do not make a usable configuration (a malformed
    /// PEM, a key that does not match, no CA certificate).
    #[error("cluster TLS: {context}: {source}")]
    Tls {
        /// What was being done.
        context: String,
        /// rustls' or the PEM parser's error.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// etcd refused or could not be reached.
    #[error("etcd: {context}: {source}")]
    Etcd {
        /// What was being done.
        context: &'static str,
        /// etcd's client error.
        #[source]
        source: etcd_client::Error,
    },
    /// An etcd call did not answer in time.
    #[error("etcd: {context}: no answer within {timeout_ms} ms")]
    Timeout {
        /// What was being done.
        context: &'static str,
        /// The bound.
        timeout_ms: u64,
    },
    /// The cluster's record in etcd is not what odo writes.
    #[error("etcd holds an unexpected value at {key}: {what}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// The transport server for other hosts could not start.
    #[error(transparent)]
    Bind(#[from] odo_transport::BindError),
}

impl ClusterError {
    pub(crate) fn etcd(context: &'static str) -> impl FnOnce(etcd_client::Error) -> Self {
        move |source| Self::Etcd { context, source }
    }
}
