//! The lock on a whole data directory: one server at a time.
//!
//! `<data>/odo.lock` is locked (an advisory lock on the open file, which
//! the kernel releases when the process dies however it dies) and holds
//! the holder's pid, so that a second server fails at once naming it.
//! Shard stores have their own locks inside; this one covers what is
//! shared above them: the cluster record and the shard layout.

use std::collections::HashSet;
use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant};

use crate::RegistryError;
use crate::classes::StorageBackend;
use crate::record::ClusterFile;
use crate::split::{self, ShardSplitter};

/// The lock file's name inside the data directory.
pub const DATA_DIR_LOCK_FILE: &str = "odo.lock";

/// How long an acquisition waits for a lock this process itself still
/// holds although none of its [`DataDirLock`]s has the directory: a child
/// forked at the moment the last one was dropped shares the lock until it
/// `exec`s.
const STALE_OWN_LOCK_WAIT: Duration = Duration::from_secs(5);

/// This process's claim on a data directory (canonical path), held by its
/// [`DataDirLock`]: tells this process's own holders apart, which the file
/// lock cannot always do.
#[derive(Debug)]
struct Claim(PathBuf);

impl Claim {
    fn claimed() -> &'static Mutex<HashSet<PathBuf>> {
        static CLAIMED: OnceLock<Mutex<HashSet<PathBuf>>> = OnceLock::new();
        CLAIMED.get_or_init(Mutex::default)
    }

    fn take(dir: PathBuf) -> Option<Claim> {
        let newly = Self::claimed()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(dir.clone());
        newly.then(|| Claim(dir))
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        Self::claimed()
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.0);
    }
}

/// The exclusive right to a data directory, for as long as it lives: a
/// registry holds one for its whole life, and so does a server hosting
/// objects in its own process (`--workers 0`).
///
/// ```no_run
/// # fn run() -> Result<(), odo_registry::RegistryError> {
/// let lock = odo_registry::DataDirLock::acquire("./.odo".as_ref())?;
/// let shards = lock.shard_count(4)?;
/// # let _ = shards; Ok(()) }
/// ```
#[derive(Debug)]
pub struct DataDirLock {
    dir: PathBuf,
    // Field order: the file lock goes before this process forgets its claim.
    _file: File,
    _claim: Claim,
}

impl DataDirLock {
    /// Creates `data_dir` if needed and locks it.
    ///
    /// # Errors
    ///
    /// [`RegistryError::DataDirLocked`] naming the holder's pid when
    /// another server (or another holder in this process) has it,
    /// [`RegistryError::DataDirIo`] when it cannot be created or locked.
    pub fn acquire(data_dir: &Path) -> Result<Self, RegistryError> {
        let io = |what: &str, source: std::io::Error| RegistryError::DataDirIo {
            path: data_dir.to_path_buf(),
            what: what.to_owned(),
            source,
        };
        std::fs::create_dir_all(data_dir).map_err(|e| io("cannot create it", e))?;
        let canonical = data_dir
            .canonicalize()
            .map_err(|e| io("cannot resolve it", e))?;
        let path = data_dir.join(DATA_DIR_LOCK_FILE);
        let claim = Claim::take(canonical).ok_or_else(|| RegistryError::DataDirLocked {
            dir: data_dir.to_path_buf(),
            lock_file: path.clone(),
            holder_pid: Some(std::process::id()),
        })?;
        let mut options = OpenOptions::new();
        options.read(true).write(true).create(true).truncate(false);
        // A link put in the lock file's place is not followed: the file it
        // names (anything the server may write) was truncated to hold the
        // pid.
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.custom_flags(rustix::fs::OFlags::NOFOLLOW.bits() as i32);
        }
        let mut file = options
            .open(&path)
            .map_err(|e| io(&format!("cannot open {}", path.display()), e))?;
        let give_up = Instant::now() + STALE_OWN_LOCK_WAIT;
        loop {
            match file.try_lock() {
                Ok(()) => break,
                Err(TryLockError::WouldBlock) => {
                    // Best effort: the holder may be between truncating and
                    // writing, and some platforms refuse to read a locked
                    // file.
                    let holder_pid = std::fs::read_to_string(&path)
                        .ok()
                        .and_then(|text| text.trim().parse().ok());
                    if holder_pid == Some(std::process::id()) && Instant::now() < give_up {
                        std::thread::sleep(Duration::from_millis(5));
                        continue;
                    }
                    return Err(RegistryError::DataDirLocked {
                        dir: data_dir.to_path_buf(),
                        lock_file: path,
                        holder_pid,
                    });
                }
                Err(TryLockError::Error(e)) => {
                    return Err(io(&format!("cannot lock {}", path.display()), e));
                }
            }
        }
        file.set_len(0)
            .and_then(|()| file.write_all(format!("{}\n", std::process::id()).as_bytes()))
            .map_err(|e| io(&format!("cannot write {}", path.display()), e))?;
        Ok(DataDirLock {
            dir: data_dir.to_path_buf(),
            _file: file,
            _claim: claim,
        })
    }

    /// The locked directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Checks the storage backend and each class's kind of storage
    /// (`key-value`, `sqlite`, ...) against the directory's class record,
    /// `odo-classes.json`, and records what it does not hold yet: the
    /// backend (unless the recorded one kept nothing, `memory`) and each
    /// class keep theirs for the life of the directory. Call it before
    /// anything serves the shards.
    ///
    /// # Errors
    ///
    /// [`RegistryError::BackendChanged`] when the shards are kept with
    /// another durable backend; [`RegistryError::ClassStorageChanged`] when
    /// a class is registered with another kind than the recorded one;
    /// [`RegistryError::DataDir`] when the directory holds shard data but
    /// no record; [`RegistryError::ClassRecord`]
    /// when the record is unreadable, [`RegistryError::DataDirIo`] when it
    /// cannot be read or written.
    pub fn record_class_storage(
        &self,
        backend: StorageBackend<'_>,
        classes: &[(String, String)],
    ) -> Result<(), RegistryError> {
        crate::classes::check_and_record(&self.dir, backend, classes)
    }

    /// The number of shards, S, of the directory: read from its cluster
    /// record, or recorded as `default` if the directory is new.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ClusterRecord`] or [`RegistryError::DataDirIo`]
    /// when the record is unreadable, [`RegistryError::DataDir`] when it
    /// records a split in progress: [`prepare_shards`](Self::prepare_shards)
    /// finishes it.
    pub fn shard_count(&self, default: u32) -> Result<u32, RegistryError> {
        let record = ClusterFile::load_or_create(&self.dir, default)?;
        if record.split.is_some() {
            return Err(RegistryError::DataDir {
                path: self.dir.clone(),
                reason: "a shard split is in progress; starting the server finishes it".into(),
            });
        }
        Ok(record.shard_count)
    }

    /// The number of shards, S, the directory is to be served with by
    /// `workers` workers (0 means one process hosting them all): reads the
    /// cluster record (or records `default` shards if the directory is
    /// new), finishes a split left unfinished by a crash, and, while S is
    /// below `workers`, splits the shards with `splitter` (doubling S each
    /// time; see [`ShardSplitter`]). Call it before anything serves the
    /// shards.
    ///
    /// # Errors
    ///
    /// [`RegistryError::ClusterRecord`] or [`RegistryError::DataDirIo`]
    /// when the record is unreadable or cannot be written,
    /// [`RegistryError::Split`] when a split fails (it goes on
    /// at the next call).
    pub async fn prepare_shards(
        &self,
        default: u32,
        workers: u32,
        splitter: Option<&dyn ShardSplitter>,
    ) -> Result<u32, RegistryError> {
        Ok(split::prepare(&self.dir, default, workers, splitter)
            .await?
            .shard_count)
    }
}

#[cfg(all(test, unix))]
mod tests {
    use super::*;

    /// A link in the lock file's place was followed, and the file it named
    /// truncated to hold the pid.
    #[test]
    fn a_link_in_the_lock_files_place_is_refused_and_its_target_kept() {
        let dir = tempfile::tempdir().unwrap();
        let precious = dir.path().join("precious.txt");
        std::fs::write(&precious, b"precious content").unwrap();
        let data = dir.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::os::unix::fs::symlink(&precious, data.join(DATA_DIR_LOCK_FILE)).unwrap();
        let refused = DataDirLock::acquire(&data);
        assert!(refused.is_err(), "a linked lock file was taken");
        assert_eq!(std::fs::read(&precious).unwrap(), b"precious content");
    }
}
