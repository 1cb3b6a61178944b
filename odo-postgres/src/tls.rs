//! Plain or TLS (rustls, from PEM files) connections to PostgreSQL.

use tokio::task::JoinHandle;
use tokio_postgres::Client;
use tracing::debug;

use crate::config::TlsFiles;
use crate::error::PostgresError;

/// How connections are made.
#[derive(Clone)]
pub(crate) enum Connector {
    /// Plain text: for a Unix socket or loopback.
    Plain,
    /// TLS with rustls, verifying the server against the configured CA.
    #[cfg(feature = "tls")]
    Rustls(tokio_postgres_rustls::MakeRustlsConnect),
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Plain => f.write_str("Plain"),
            #[cfg(feature = "tls")]
            Self::Rustls(_) => f.write_str("Rustls"),
        }
    }
}

impl Connector {
    /// The connector for `tls` (plain when `None`).
    ///
    /// # Errors
    ///
    /// [`PostgresError::Tls`] if a file cannot be read or used, or
    /// [`PostgresError::Config`] if TLS is asked for in a build without the
    /// `tls` feature.
    pub(crate) fn new(tls: Option<&TlsFiles>) -> Result<Self, PostgresError> {
        match tls {
            None => Ok(Self::Plain),
            #[cfg(feature = "tls")]
            Some(files) => rustls_connector(files),
            #[cfg(not(feature = "tls"))]
            Some(_) => Err(PostgresError::Config(
                "TLS towards PostgreSQL needs odo-postgres's `tls` feature (odo's `cluster` feature turns it on)"
                    .into(),
            )),
        }
    }

    /// Connects, and runs the connection's driver on the current runtime.
    pub(crate) async fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> Result<(Client, JoinHandle<()>), tokio_postgres::Error> {
        match self {
            Self::Plain => {
                let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
                Ok((client, drive(connection)))
            }
            #[cfg(feature = "tls")]
            Self::Rustls(tls) => {
                let (client, connection) = config.connect(tls.clone()).await?;
                Ok((client, drive(connection)))
            }
        }
    }
}

fn drive<F>(connection: F) -> JoinHandle<()>
where
    F: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            debug!(error = %e, "PostgreSQL connection ended");
        }
    })
}

#[cfg(feature = "tls")]
fn rustls_connector(files: &TlsFiles) -> Result<Connector, PostgresError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let tls_error = |context: String| {
        move |e: rustls::pki_types::pem::Error| PostgresError::Tls {
            context,
            source: Some(Box::new(e)),
        }
    };
    let mut roots = rustls::RootCertStore::empty();
    let cas = CertificateDer::pem_file_iter(&files.ca)
        .map_err(tls_error(format!("reading {}", files.ca.display())))?;
    for ca in cas {
        let ca = ca.map_err(tls_error(format!("reading {}", files.ca.display())))?;
        roots.add(ca).map_err(|e| PostgresError::Tls {
            context: format!("using the CA of {}", files.ca.display()),
            source: Some(Box::new(e)),
        })?;
    }
    let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| PostgresError::Tls {
            context: "choosing TLS versions".into(),
            source: Some(Box::new(e)),
        })?
        .with_root_certificates(roots);
    let config = match &files.client {
        None => builder.with_no_client_auth(),
        Some((cert, key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .map_err(tls_error(format!("reading {}", cert.display())))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(tls_error(format!("reading {}", cert.display())))?;
            let key = PrivateKeyDer::from_pem_file(key)
                .map_err(tls_error(format!("reading {}", key.display())))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| PostgresError::Tls {
                    context: "using the client certificate".into(),
                    source: Some(Box::new(e)),
                })?
        }
    };
    Ok(Connector::Rustls(
        tokio_postgres_rustls::MakeRustlsConnect::new(config),
    ))
}
