//! TLS between odo hosts (rustls): [`HostTls`], a
//! [`TcpUpgrade`](odo_transport::upgrade::TcpUpgrade) for the transport
//! server other hosts reach and the connections this host opens to them.
//! Both sides authenticate: a host's certificate must chain to the
//! cluster's CA, and the server checks the client's certificate too, so
//! only hosts holding a certificate of the cluster's CA can connect
//! (besides the transport token they must still present).

use std::io;
use std::sync::Arc;

use futures_util::FutureExt;
use futures_util::future::BoxFuture;
use odo_transport::upgrade::{TcpUpgrade, Upgraded};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::net::TcpStream;
use tokio_rustls::{TlsAcceptor, TlsConnector};

use crate::config::TlsFiles;
use crate::error::ClusterError;

/// Mutual TLS from the cluster's files, both ways.
#[derive(Clone)]
pub struct HostTls {
    connector: TlsConnector,
    acceptor: TlsAcceptor,
}

impl std::fmt::Debug for HostTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("HostTls")
    }
}

fn tls_error(context: String) -> impl FnOnce(rustls::pki_types::pem::Error) -> ClusterError {
    move |e| ClusterError::Tls {
        context,
        source: Box::new(e),
    }
}

impl HostTls {
    /// Reads the CA, this host's certificate chain and its key.
    ///
    /// # Errors
    ///
    /// [`ClusterError::Tls`] if a file cannot be read or parsed, or the
    /// key does not suit the certificate.
    pub fn from_files(files: &TlsFiles) -> Result<Self, ClusterError> {
        let mut roots = rustls::RootCertStore::empty();
        let cas = CertificateDer::pem_file_iter(&files.ca)
            .map_err(tls_error(format!("reading {}", files.ca.display())))?;
        for ca in cas {
            let ca = ca.map_err(tls_error(format!("reading {}", files.ca.display())))?;
            roots.add(ca).map_err(|e| ClusterError::Tls {
                context: format!("using the CA of {}", files.ca.display()),
                source: Box::new(e),
            })?;
        }
        if roots.is_empty() {
            return Err(ClusterError::Tls {
                context: format!("{} holds no certificate", files.ca.display()),
                source: "an empty CA file".into(),
            });
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&files.cert)
            .map_err(tls_error(format!("reading {}", files.cert.display())))?
            .collect::<Result<_, _>>()
            .map_err(tls_error(format!("reading {}", files.cert.display())))?;
        let key = PrivateKeyDer::from_pem_file(&files.key)
            .map_err(tls_error(format!("reading {}", files.key.display())))?;
        let rustls_error = |context: &str| {
            let context = context.to_owned();
            move |e: rustls::Error| ClusterError::Tls {
                context,
                source: Box::new(e),
            }
        };
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let roots = Arc::new(roots);
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            roots.clone(),
            provider.clone(),
        )
        .build()
        .map_err(|e| ClusterError::Tls {
            context: "checking peers' certificates".into(),
            source: Box::new(e),
        })?;
        let server = rustls::ServerConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .map_err(rustls_error("choosing TLS versions"))?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain.clone(), key.clone_key())
            .map_err(rustls_error("using this host's certificate and key"))?;
        let client = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(rustls_error("choosing TLS versions"))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, key)
            .map_err(rustls_error("using this host's certificate and key"))?;
        Ok(Self {
            connector: TlsConnector::from(Arc::new(client)),
            acceptor: TlsAcceptor::from(Arc::new(server)),
        })
    }
}

impl TcpUpgrade for HostTls {
    fn connect(&self, tcp: TcpStream, host: &str) -> BoxFuture<'static, io::Result<Upgraded>> {
        let connector = self.connector.clone();
        let name = ServerName::try_from(host.to_owned());
        async move {
            let name = name.map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
            let tls = connector.connect(name, tcp).await?;
            Ok(Box::new(tls) as Upgraded)
        }
        .boxed()
    }

    fn accept(&self, tcp: TcpStream) -> BoxFuture<'static, io::Result<Upgraded>> {
        let acceptor = self.acceptor.clone();
        async move {
            let tls = acceptor.accept(tcp).await?;
            Ok(Box::new(tls) as Upgraded)
        }
        .boxed()
    }
}
