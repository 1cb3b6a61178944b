//! This process's claim on a store directory, and the lock file that tells
//! processes apart.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::error::StorageError;

const LOCK_FILE: &str = "odo.lock";
/// How long an open waits for a lock that this process itself still holds
/// although none of its backends has the directory open: a child process
/// forked at the moment the last backend closed shares that lock until it
/// `exec`s (see [`lock_dir`]).
const STALE_OWN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// This process's claim on a store directory, held as long as a backend has
/// it open (or is opening it).
///
/// The lock file tells processes apart; the claims tell this process's own
/// backends apart, so that a second open here fails at once while a lock
/// left behind by a closed backend (see [`lock_dir`]) is waited out.
pub(super) struct DirClaim(PathBuf);

impl DirClaim {
    fn claimed() -> &'static Mutex<HashSet<PathBuf>> {
        static CLAIMED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
        CLAIMED.get_or_init(Mutex::default)
    }

    /// Claims `dir` (canonical), or `None` if a backend of this process
    /// has it.
    pub(super) fn take(dir: PathBuf) -> Option<DirClaim> {
        let newly = Self::claimed()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dir.clone());
        // Built only when claimed: a claim dropped here would unclaim `dir`.
        newly.then(|| DirClaim(dir))
    }
}

impl Drop for DirClaim {
    fn drop(&mut self) {
        Self::claimed()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// Locks the store directory for this process (the caller holds its
/// [`DirClaim`], so no backend of this process has it open).
///
/// A lock held under this process's own pid is then a leftover: a lock
/// belongs to the open file, and a child forked while a backend was open
/// shares that file until it `exec`s, so the lock can outlive the backend
/// that closed by as long as the child takes to get there (on a loaded
/// machine, milliseconds). Such a lock is waited for, up to
/// [`STALE_OWN_LOCK_WAIT`]; another process's lock fails at once.
pub(super) fn lock_dir(dir: &Path) -> Result<File, StorageError> {
    let path = dir.join(LOCK_FILE);
    let mut file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(|e| StorageError::io(format!("opening lock file {}", path.display()), e))?;
    let give_up = Instant::now() + STALE_OWN_LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => {
                let pid = std::process::id().to_string();
                file.set_len(0)
                    .and_then(|()| file.write_all(pid.as_bytes()))
                    .map_err(|e| StorageError::io(format!("writing {}", path.display()), e))?;
                return Ok(file);
            }
            Err(TryLockError::WouldBlock) => {
                // Best effort: the holder may be between truncating and
                // writing, and on some platforms a locked file cannot be read.
                let holder_pid = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|text| text.trim().parse().ok());
                if holder_pid == Some(std::process::id()) && Instant::now() < give_up {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                }
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                    holder_pid,
                });
            }
            Err(TryLockError::Error(e)) => {
                return Err(StorageError::io(format!("locking {}", path.display()), e));
            }
        }
    }
}
