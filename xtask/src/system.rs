//! What the tests need beyond Rust: Debian packages, installed when
//! missing (as root, with apt-get), or a message saying exactly what to
//! run.

use std::path::Path;
use std::process::Command;

use anyhow::{Context, Result, bail};

/// A program a test needs, and the Debian package that brings it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Need {
    /// What it is, for messages.
    pub(crate) what: &'static str,
    /// The Debian package.
    pub(crate) package: &'static str,
    /// Whether it is there.
    pub(crate) present: fn() -> bool,
}

/// PostgreSQL's server binaries (`initdb`, `postgres`), which the
/// `postgres` backend's tests start.
pub(crate) const POSTGRES: Need = Need {
    what: "PostgreSQL's server (initdb, postgres)",
    package: "postgresql",
    present: postgres_present,
};

/// Chromium, which the room page's browser test drives (headless).
pub(crate) const CHROMIUM: Need = Need {
    what: "Chromium (the room page's browser test)",
    package: "chromium",
    present: chromium_present,
};

fn chromium_present() -> bool {
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("chromium").is_file()))
}

/// etcd, which `cargo xtask test-cluster` runs (three members).
pub(crate) const ETCD: Need = Need {
    what: "etcd",
    package: "etcd-server",
    present: etcd_present,
};

fn etcd_present() -> bool {
    ["/usr/bin/etcd", "/usr/local/bin/etcd"]
        .iter()
        .any(|p| Path::new(p).exists())
}

/// `protoc`, which the etcd client (odo's `cluster` feature, which the
/// tests crate turns on on Linux) needs at build time.
pub(crate) const PROTOC: Need = Need {
    what: "protoc (the etcd client of the `cluster` feature needs it to build)",
    package: "protobuf-compiler",
    present: protoc_present,
};

fn protoc_present() -> bool {
    if let Some(protoc) = std::env::var_os("PROTOC") {
        return Path::new(&protoc).exists();
    }
    std::env::var_os("PATH")
        .is_some_and(|path| std::env::split_paths(&path).any(|dir| dir.join("protoc").exists()))
}

/// The `.proto` files of protobuf's well-known types
/// (`google/protobuf/descriptor.proto`, ...), which the etcd client's
/// protos import. Debian ships them in `libprotobuf-dev`, which
/// `protobuf-compiler` only recommends: an install without recommends (as
/// [`ensure`] makes) leaves protoc unable to build the client.
pub(crate) const PROTO_INCLUDES: Need = Need {
    what: "protobuf's well-known .proto files (google/protobuf/descriptor.proto: the etcd client's protos import them)",
    package: "libprotobuf-dev",
    present: proto_includes_present,
};

fn proto_includes_present() -> bool {
    // protoc looks beside itself (`../include`) and in PROTOC_INCLUDE.
    let mut dirs = vec![std::path::PathBuf::from("/usr/include")];
    if let Some(dir) = std::env::var_os("PROTOC_INCLUDE") {
        dirs.push(dir.into());
    }
    if let Some(protoc) = std::env::var_os("PROTOC")
        && let Some(bin) = Path::new(&protoc).parent()
    {
        dirs.push(bin.join("../include"));
    }
    // A protoc found on PATH (a release zip unpacked under /usr/local, or
    // a CI's setup step) brings its own `include` beside its `bin`.
    if let Some(path) = std::env::var_os("PATH") {
        for bin in std::env::split_paths(&path) {
            if bin.join("protoc").exists() {
                dirs.push(bin.join("../include"));
            }
        }
    }
    dirs.iter()
        .any(|dir| dir.join("google/protobuf/descriptor.proto").is_file())
}

/// `ip` (iproute2), with which `cargo xtask test-cluster` makes the
/// network namespaces its partition scenarios run in.
pub(crate) const IPROUTE2: Need = Need {
    what: "ip (iproute2: the cluster test's network namespaces)",
    package: "iproute2",
    present: ip_present,
};

fn ip_present() -> bool {
    ["/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip"]
        .iter()
        .any(|p| Path::new(p).exists())
}

fn postgres_present() -> bool {
    if let Some(dir) = std::env::var_os("ODO_PG_BINDIR") {
        return Path::new(&dir).join("initdb").exists();
    }
    std::fs::read_dir("/usr/lib/postgresql").is_ok_and(|dir| {
        dir.flatten()
            .any(|version| version.path().join("bin/initdb").exists())
    })
}

/// Makes sure every `need` is there: installs the missing ones' packages
/// with `apt-get install -y` when this runs as root on a system with
/// apt-get, else fails naming the command to run.
pub(crate) fn ensure(needs: &[Need]) -> Result<()> {
    let missing: Vec<&Need> = needs.iter().filter(|n| !(n.present)()).collect();
    if missing.is_empty() {
        return Ok(());
    }
    let packages: Vec<&str> = missing.iter().map(|n| n.package).collect();
    let command = format!("apt-get install -y {}", packages.join(" "));
    let root = is_root();
    let apt = Path::new("/usr/bin/apt-get").exists();
    if !(root && apt) {
        let what: Vec<&str> = missing.iter().map(|n| n.what).collect();
        bail!(
            "the tests need {}: run `{command}` as root ({})",
            what.join(", "),
            if apt {
                "not root here"
            } else {
                "no apt-get here"
            }
        );
    }
    println!(
        "xtask: installing {}: $ apt-get update && {command}",
        packages.join(" ")
    );
    let update = Command::new("apt-get")
        .args(["update", "-qq"])
        .status()
        .context("running apt-get update")?;
    if !update.success() {
        bail!("`apt-get update` failed ({update})");
    }
    let status = Command::new("apt-get")
        .args(["install", "-y", "-qq", "--no-install-recommends"])
        .args(&packages)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get install")?;
    if !status.success() {
        bail!("`{command}` failed ({status})");
    }
    for need in &missing {
        if !(need.present)() {
            bail!("{} is still missing after `{command}`", need.what);
        }
    }
    Ok(())
}

/// Whether this process runs as root (uid 0), from /proc/self/status, so
/// xtask needs no crate for it.
pub(crate) fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status").is_ok_and(|status| {
        status
            .lines()
            .find_map(|line| line.strip_prefix("Uid:"))
            .and_then(|ids| ids.split_whitespace().nth(1))
            == Some("0")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What [`PROTOC`] and [`PROTO_INCLUDES`] call present is what the etcd
    /// client's build needs: protoc compiles a file that imports a
    /// well-known type exactly when both say so. (A fresh machine's CI once
    /// had protoc without the well-known files, installed without
    /// recommends, and the build failed after `ensure` had passed.)
    #[test]
    fn protoc_needs_match_what_the_etcd_client_build_needs() {
        if !protoc_present() {
            eprintln!("SKIPPED: no protoc here (xtask ci installs it before its build)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("probe.proto"),
            "syntax = \"proto3\";\nimport \"google/protobuf/descriptor.proto\";\n\
             extend google.protobuf.MessageOptions { string probe = 50000; }\n",
        )
        .unwrap();
        let protoc = std::env::var_os("PROTOC").unwrap_or_else(|| "protoc".into());
        let out = Command::new(protoc)
            .current_dir(dir.path())
            .args([
                "--proto_path=.",
                "--descriptor_set_out=probe.bin",
                "probe.proto",
            ])
            .output()
            .unwrap();
        assert_eq!(
            out.status.success(),
            proto_includes_present(),
            "protoc: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
