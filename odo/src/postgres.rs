//! The `postgres` backend in the facade (feature `postgres`): its flags,
//! and how its settings reach the workers.

use std::path::PathBuf;
use std::sync::Arc;

use odo_postgres::{PostgresConfig, PostgresFactory, TlsFiles};
use odo_storage::BackendFactory;

use crate::app::OdoError;

/// `odo serve`'s PostgreSQL flags. Each can come from its environment
/// variable instead (keep a password off the command line: put the URL in
/// `ODO_POSTGRES_URL`).
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct PostgresFlags {
    /// With `--storage postgres`: the PostgreSQL connection string
    /// (`postgresql://user@host:5432/db`, or `host=/run/postgresql
    /// user=odo dbname=odo`).
    #[arg(long, env = odo_postgres::URL_ENV, hide_env_values = true, value_name = "URL")]
    postgres_url: Option<String>,
    /// With `--storage postgres`: the schema holding odo's tables (one per
    /// odo cluster).
    #[arg(long, env = odo_postgres::SCHEMA_ENV, default_value = odo_postgres::DEFAULT_SCHEMA)]
    postgres_schema: String,
    /// Turns TLS towards PostgreSQL on: the CA certificate file (PEM) the
    /// server's certificate must chain to.
    #[arg(long, env = odo_postgres::TLS_CA_ENV, value_name = "FILE")]
    postgres_tls_ca: Option<PathBuf>,
    /// A client certificate chain (PEM) for PostgreSQL, with
    /// `--postgres-tls-key`.
    #[arg(long, env = odo_postgres::TLS_CERT_ENV, value_name = "FILE", requires = "postgres_tls_key")]
    postgres_tls_cert: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    #[arg(long, env = odo_postgres::TLS_KEY_ENV, value_name = "FILE", requires = "postgres_tls_cert")]
    postgres_tls_key: Option<PathBuf>,
}

impl PostgresFlags {
    /// The configuration the flags give, if a URL was given.
    pub(crate) fn config(&self) -> Result<Option<PostgresConfig>, OdoError> {
        let Some(url) = &self.postgres_url else {
            if self.postgres_tls_ca.is_some() || self.postgres_tls_cert.is_some() {
                return Err(OdoError::Other(
                    "--postgres-tls-* without --postgres-url".into(),
                ));
            }
            return Ok(None);
        };
        let mut config = PostgresConfig::new(url.clone()).with_schema(self.postgres_schema.clone());
        match (
            &self.postgres_tls_ca,
            &self.postgres_tls_cert,
            &self.postgres_tls_key,
        ) {
            (Some(ca), cert, key) => {
                config = config.with_tls(TlsFiles {
                    ca: ca.clone(),
                    client: cert.clone().zip(key.clone()),
                });
            }
            (None, None, None) => {}
            (None, _, _) => {
                return Err(OdoError::Other(
                    "a PostgreSQL client certificate needs TLS: give --postgres-tls-ca too".into(),
                ));
            }
        }
        Ok(Some(config))
    }
}

/// Environment variables for the workers.
pub(crate) type WorkerEnv = Vec<(String, String)>;

/// For `--storage postgres`: the factory this process opens shards with
/// and the environment its workers need (they read the same settings from
/// it). Other backends pass through.
pub(crate) fn resolve(
    storage: &str,
    config: Option<&PostgresConfig>,
    backend: Arc<dyn BackendFactory>,
) -> Result<(Arc<dyn BackendFactory>, WorkerEnv), OdoError> {
    if storage != odo_postgres::NAME {
        return Ok((backend, Vec::new()));
    }
    let config = match config {
        Some(config) => config.clone(),
        None => PostgresConfig::from_env().map_err(|e| OdoError::Other(e.to_string()))?,
    };
    // A bad URL or schema fails here, before any worker starts.
    config
        .validate()
        .map_err(|e| OdoError::Other(e.to_string()))?;
    let env = config.to_env();
    Ok((Arc::new(PostgresFactory::new(config)), env))
}
