//! A small disk for tests that fill one: a tmpfs of a given size, mounted
//! on a temporary directory by the test and unmounted when it is dropped
//! (however the test ends). A filler file takes the space a test wants
//! gone, and gives it back when removed: what an operator does who frees
//! space on a full disk.
//!
//! Mounting needs root: [`available_or_skip`] says why a test skips, or
//! fails it when [`REQUIRE_ENV`] is set (`cargo xtask ci` sets it when it
//! runs as root, as CI does).

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result, bail};

/// Set to make a missing root a failure instead of a skip.
pub const REQUIRE_ENV: &str = "ODO_REQUIRE_SMALL_DISK";

/// Why a small disk cannot be mounted here, or `None` when it can.
pub fn unavailable() -> Option<String> {
    if !cfg!(target_os = "linux") {
        return Some("tmpfs mounts are Linux only".into());
    }
    if !rustix::process::geteuid().is_root() {
        return Some(
            "not root: mounting a tmpfs of a fixed size needs root (CAP_SYS_ADMIN)".into(),
        );
    }
    None
}

/// Whether small-disk tests run; if not, prints why `test` skips (or
/// panics when [`REQUIRE_ENV`] is set).
pub fn available_or_skip(test: &str) -> bool {
    let Some(why) = unavailable() else {
        return true;
    };
    crate::skip::unless_required(&format!("{test}: skipped: {why}"), REQUIRE_ENV)
}

/// A mounted tmpfs; unmounted (and its directory removed) on drop.
#[derive(Debug)]
pub struct SmallDisk {
    // Dropped after the unmount in `Drop`, which removes the directory.
    dir: tempfile::TempDir,
    filler: PathBuf,
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` on a new temporary directory.
    pub fn mount(bytes: u64) -> Result<Self> {
        let dir = tempfile::tempdir()?;
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o"])
            .arg(format!("size={bytes},mode=0700"))
            .arg("odo-test-disk")
            .arg(dir.path())
            .status()
            .context("running mount")?;
        if !status.success() {
            bail!(
                "mount -t tmpfs on {} failed: {status}",
                dir.path().display()
            );
        }
        let filler = dir.path().join("filler");
        Ok(Self { dir, filler })
    }

    /// The mount point.
    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Bytes still free for files.
    pub fn available(&self) -> Result<u64> {
        let stat = rustix::fs::statvfs(self.dir.path())?;
        Ok(stat.f_bavail * stat.f_frsize)
    }

    /// Grows the filler file until at most `left` bytes are free.
    pub fn fill_leaving(&self, left: u64) -> Result<()> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.filler)?;
        let chunk = vec![0x5a_u8; 64 * 1024];
        loop {
            let free = self.available()?;
            if free <= left {
                return Ok(());
            }
            let n = usize::try_from(free - left)
                .unwrap_or(usize::MAX)
                .min(chunk.len());
            file.write_all(&chunk[..n])
                .with_context(|| format!("filling {}", self.filler.display()))?;
        }
    }

    /// Removes the filler file: its space is free again.
    pub fn free(&self) -> Result<()> {
        match std::fs::remove_file(&self.filler) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        // Lazy: a process still holding a file there (a server the test
        // failed to stop) cannot keep the mount, nor the directory, alive.
        let _ = Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}
