//! What a PostgreSQL backend connects to and how long it waits.

use std::time::Duration;

use crate::error::PostgresError;

/// The environment variable holding the connection string
/// ([`PostgresConfig::from_env`]).
pub const URL_ENV: &str = "ODO_POSTGRES_URL";
/// The environment variable holding the schema name.
pub const SCHEMA_ENV: &str = "ODO_POSTGRES_SCHEMA";
/// The environment variable holding the CA certificate file (PEM) that
/// turns TLS on.
pub const TLS_CA_ENV: &str = "ODO_POSTGRES_TLS_CA";
/// The environment variable holding a client certificate chain (PEM).
pub const TLS_CERT_ENV: &str = "ODO_POSTGRES_TLS_CERT";
/// The environment variable holding the client certificate's private key
/// (PEM).
pub const TLS_KEY_ENV: &str = "ODO_POSTGRES_TLS_KEY";

/// The schema used when none is given.
pub const DEFAULT_SCHEMA: &str = "odo";
/// The longest schema name PostgreSQL keeps whole, in bytes.
pub const MAX_SCHEMA_BYTES: usize = 63;

/// TLS towards PostgreSQL, from files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsFiles {
    /// The CA certificate(s) (PEM) the server's certificate must chain to.
    pub ca: std::path::PathBuf,
    /// A client certificate chain and its private key (PEM), for servers
    /// that authenticate clients by certificate.
    pub client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

/// How a [`PostgresFactory`](crate::PostgresFactory) reaches its database.
///
/// The connection string is libpq's (`host=... user=... dbname=...` or
/// `postgresql://user@host:5432/db`; a `host` starting with `/` is a Unix
/// socket directory). Keep passwords off command lines: give the URL
/// through [`URL_ENV`].
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PostgresConfig {
    /// The connection string.
    pub url: String,
    /// The schema holding odo's tables (made if missing). One schema holds
    /// every shard of one odo cluster; two clusters on one database use
    /// two schemas. Default [`DEFAULT_SCHEMA`].
    pub schema: String,
    /// TLS, or plain text when `None` (only for a Unix socket or loopback).
    pub tls: Option<TlsFiles>,
    /// How long one connection attempt may take. Default 5 s.
    pub connect_timeout: Duration,
    /// How long one statement (or one group commit) may take before its
    /// connection is dropped and the call fails. Default 10 s.
    pub query_timeout: Duration,
    /// How long a call keeps reconnecting (with backoff) to a database that
    /// does not answer before it fails. Default 10 s.
    pub reconnect_timeout: Duration,
    /// The first wait between reconnection attempts; it doubles up to
    /// [`max_backoff`](Self::max_backoff). Default 50 ms.
    pub first_backoff: Duration,
    /// The longest wait between reconnection attempts. Default 1 s.
    pub max_backoff: Duration,
    /// PostgreSQL ends a session of odo's that stays idle inside a
    /// transaction longer than this (`idle_in_transaction_session_timeout`),
    /// rolling it back. A holder paused or partitioned in the middle of a
    /// group commit holds the fence's share lock on its shard's row, which
    /// the next holder's claim waits for: this bounds that wait. Default 5 s.
    pub idle_in_transaction_timeout: Duration,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may hold a password.
        f.debug_struct("PostgresConfig")
            .field("url", &"<hidden>")
            .field("schema", &self.schema)
            .field("tls", &self.tls)
            .field("connect_timeout", &self.connect_timeout)
            .field("query_timeout", &self.query_timeout)
            .field("reconnect_timeout", &self.reconnect_timeout)
            .field(
                "idle_in_transaction_timeout",
                &self.idle_in_transaction_timeout,
            )
            .finish_non_exhaustive()
    }
}

impl PostgresConfig {
    /// The defaults, connecting with `url`.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            schema: DEFAULT_SCHEMA.to_owned(),
            tls: None,
            connect_timeout: Duration::from_secs(5),
            query_timeout: Duration::from_secs(10),
            reconnect_timeout: Duration::from_secs(10),
            first_backoff: Duration::from_millis(50),
            max_backoff: Duration::from_secs(1),
            idle_in_transaction_timeout: Duration::from_secs(5),
        }
    }

    /// The same with another schema.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The same with TLS from `tls`.
    pub fn with_tls(mut self, tls: TlsFiles) -> Self {
        self.tls = Some(tls);
        self
    }

    /// From the environment: [`URL_ENV`] (required), [`SCHEMA_ENV`],
    /// [`TLS_CA_ENV`] (turns TLS on), [`TLS_CERT_ENV`] and [`TLS_KEY_ENV`]
    /// (both or neither).
    ///
    /// # Errors
    ///
    /// [`PostgresError::Config`] when the URL is missing, or a client
    /// certificate comes without its key (or the other way round).
    pub fn from_env() -> Result<Self, PostgresError> {
        let var = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
        let url = var(URL_ENV).ok_or_else(|| {
            PostgresError::Config(format!(
                "no PostgreSQL connection string: set {URL_ENV} (or pass --postgres-url)"
            ))
        })?;
        let mut config = Self::new(url);
        if let Some(schema) = var(SCHEMA_ENV) {
            config.schema = schema;
        }
        let client = match (var(TLS_CERT_ENV), var(TLS_KEY_ENV)) {
            (Some(cert), Some(key)) => Some((cert.into(), key.into())),
            (None, None) => None,
            _ => {
                return Err(PostgresError::Config(format!(
                    "{TLS_CERT_ENV} and {TLS_KEY_ENV} go together: set both or neither"
                )));
            }
        };
        match var(TLS_CA_ENV) {
            Some(ca) => {
                config.tls = Some(TlsFiles {
                    ca: ca.into(),
                    client,
                })
            }
            None if client.is_some() => {
                return Err(PostgresError::Config(format!(
                    "a client certificate needs TLS: set {TLS_CA_ENV} too"
                )));
            }
            None => {}
        }
        Ok(config)
    }

    /// The environment variables that carry this configuration to another
    /// process (a worker): what [`from_env`](Self::from_env) reads.
    pub fn to_env(&self) -> Vec<(String, String)> {
        let mut env = vec![
            (URL_ENV.to_owned(), self.url.clone()),
            (SCHEMA_ENV.to_owned(), self.schema.clone()),
        ];
        if let Some(tls) = &self.tls {
            env.push((TLS_CA_ENV.to_owned(), tls.ca.display().to_string()));
            if let Some((cert, key)) = &tls.client {
                env.push((TLS_CERT_ENV.to_owned(), cert.display().to_string()));
                env.push((TLS_KEY_ENV.to_owned(), key.display().to_string()));
            }
        }
        env
    }

    /// Checks what can be checked without connecting: the schema name and
    /// the connection string's syntax.
    ///
    /// # Errors
    ///
    /// [`PostgresError::Config`] saying what is wrong.
    pub fn validate(&self) -> Result<tokio_postgres::Config, PostgresError> {
        check_schema(&self.schema)?;
        let mut parsed: tokio_postgres::Config = self.url.parse().map_err(|e| {
            PostgresError::Config(format!("the PostgreSQL connection string is invalid: {e}"))
        })?;
        if parsed.get_connect_timeout().is_none() {
            parsed.connect_timeout(self.connect_timeout);
        }
        if parsed.get_application_name().is_none() {
            parsed.application_name("odo");
        }
        if !self.idle_in_transaction_timeout.is_zero() {
            let ms = self.idle_in_transaction_timeout.as_millis().max(1);
            let setting = format!("-c idle_in_transaction_session_timeout={ms}");
            let options = match parsed.get_options() {
                Some(given) if !given.is_empty() => format!("{given} {setting}"),
                _ => setting,
            };
            parsed.options(options);
        }
        Ok(parsed)
    }
}

/// Whether `schema` is a name odo uses as it is: ASCII lowercase letters,
/// digits and `_`, starting with a letter or `_`, at most
/// [`MAX_SCHEMA_BYTES`] bytes. (So it never needs quoting and never meets
/// PostgreSQL's case folding.)
pub(crate) fn check_schema(schema: &str) -> Result<(), PostgresError> {
    let good = !schema.is_empty()
        && schema.len() <= MAX_SCHEMA_BYTES
        && schema.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && schema
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        && !schema.starts_with("pg_");
    if good {
        Ok(())
    } else {
        Err(PostgresError::Config(format!(
            "{schema:?} is not a usable schema name: use ASCII lowercase letters, digits and '_', starting with a letter or '_' (not 'pg_'), at most {MAX_SCHEMA_BYTES} bytes"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_names_are_checked() {
        for good in ["odo", "_x", "a1_b", &"s".repeat(63)] {
            assert!(check_schema(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "Odo",
            "1a",
            "a-b",
            "a b",
            "pg_odo",
            "é",
            &"s".repeat(64),
        ] {
            assert!(check_schema(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn urls_are_parsed_and_never_printed() {
        let config = PostgresConfig::new("postgresql://odo:secret@localhost:5432/db");
        assert!(config.validate().is_ok());
        assert!(!format!("{config:?}").contains("secret"));
        let bad = PostgresConfig::new("postgresql://odo@localhost:notaport/db");
        assert!(matches!(bad.validate(), Err(PostgresError::Config(_))));
        let bad_schema = PostgresConfig::new("host=/tmp").with_schema("Bad");
        assert!(matches!(
            bad_schema.validate(),
            Err(PostgresError::Config(_))
        ));
    }
}
