//! A test CA (rcgen): made by the test in its temporary directory, it
//! signs a certificate for each etcd member, PostgreSQL and each odo host
//! (valid for the names and IP addresses given, for server and client
//! authentication both), written as PEM files.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose, SanType,
};

/// A certificate authority for one test.
pub struct TestCa {
    dir: PathBuf,
    issuer: Issuer<'static, KeyPair>,
}

impl std::fmt::Debug for TestCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TestCa").field("dir", &self.dir).finish()
    }
}

impl TestCa {
    /// A new CA, its certificate written to `dir/ca.pem`.
    pub fn new(dir: PathBuf) -> Result<Self> {
        std::fs::create_dir_all(&dir)?;
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params
            .distinguished_name
            .push(DnType::CommonName, "odo test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let key = KeyPair::generate()?;
        let cert = params.self_signed(&key)?;
        std::fs::write(dir.join("ca.pem"), cert.pem())?;
        Ok(Self {
            dir,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA certificate (PEM).
    pub fn cert_path(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    /// A certificate for `name`, valid for `name` and each of `ips` (as
    /// IP addresses where they parse), for servers and clients; returns
    /// the certificate and key files (`dir/name.pem`, `dir/name.key`).
    pub fn issue(&self, name: &str, ips: &[&str]) -> Result<(PathBuf, PathBuf)> {
        let mut params = CertificateParams::new(vec![name.to_owned()])?;
        params.distinguished_name.push(DnType::CommonName, name);
        for ip in ips {
            match ip.parse() {
                Ok(ip) => params.subject_alt_names.push(SanType::IpAddress(ip)),
                Err(_) => params
                    .subject_alt_names
                    .push(SanType::DnsName((*ip).try_into()?)),
            }
        }
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        let cert_path = self.dir.join(format!("{name}.pem"));
        let key_path = self.dir.join(format!("{name}.key"));
        std::fs::write(&cert_path, cert.pem())?;
        std::fs::write(&key_path, key.serialize_pem())?;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        Ok((cert_path, key_path))
    }

    /// Copies `cert` and `key` into a directory `owner` (uid, gid) can read,
    /// owned by it, as PostgreSQL wants its key (run as the `postgres`
    /// user when the test runs as root); unchanged without an owner.
    pub fn readable_by(
        &self,
        owner: Option<(u32, u32)>,
        cert: &Path,
        key: &Path,
    ) -> Result<(PathBuf, PathBuf)> {
        let Some((uid, gid)) = owner else {
            return Ok((cert.to_owned(), key.to_owned()));
        };
        let dir = self.dir.join(format!("for-{uid}"));
        std::fs::create_dir_all(&dir)?;
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
        let mut out = Vec::new();
        for path in [cert, key] {
            let name = path.file_name().context("a file name")?;
            let to = dir.join(name);
            std::fs::copy(path, &to)?;
            std::os::unix::fs::chown(&to, Some(uid), Some(gid))?;
            out.push(to);
        }
        // The CA directory itself must be reachable.
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o755))?;
        Ok((out[0].clone(), out[1].clone()))
    }
}
