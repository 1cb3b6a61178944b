//! The cluster record, `<data>/odo-cluster.json`: the data directory's
//! shard count S, the last epoch of each shard, and a split in progress.
//! Written atomically and durably, only under the data directory's lock.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use crate::RegistryError;

/// The record's format when no split is in progress.
const FORMAT: u32 = 1;
/// The format while a split is in progress: a binary that predates
/// splitting (and knows only format 1) refuses such a directory instead of
/// serving half-split shards.
const FORMAT_SPLITTING: u32 = 2;

/// What the data directory records: S and the last epoch of each shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ClusterFile {
    pub(crate) format: u32,
    pub(crate) shard_count: u32,
    pub(crate) epochs: Vec<u64>,
    /// The worker slot serving each shard when the record was written
    /// (`None`: unassigned). Informational: a restarted registry assigns
    /// shards afresh, with new epochs.
    #[serde(default)]
    pub(crate) assignment: Vec<Option<u32>>,
    /// A split of the shards from `from` to twice as many, begun and not
    /// finished (see [`crate::split`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) split: Option<Split>,
}

/// A split in progress, from `from` shards to `2 * from`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Split {
    /// The shard count before the split.
    pub(crate) from: u32,
    /// How far it got.
    pub(crate) phase: SplitPhase,
}

/// The two passes of a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum SplitPhase {
    /// Objects are being copied from each shard `k` to `k + from`; the
    /// record still says `from` shards and the new shards serve nothing.
    Copying,
    /// The record says `2 * from` shards; the moved objects are being
    /// deleted from the old shards, which no worker serves until that is
    /// done.
    Pruning,
}

const CLUSTER_FILE: &str = "odo-cluster.json";

impl ClusterFile {
    /// Reads the data directory's record, or creates one with
    /// `shard_count` shards.
    pub(crate) fn load_or_create(data_dir: &Path, shard_count: u32) -> Result<Self, RegistryError> {
        let path = data_dir.join(CLUSTER_FILE);
        match std::fs::read(&path) {
            Ok(bytes) => {
                let file: ClusterFile = serde_json::from_slice(&bytes).map_err(|source| {
                    RegistryError::ClusterRecord {
                        path: path.clone(),
                        source,
                    }
                })?;
                if !file.consistent() {
                    return Err(RegistryError::DataDir {
                        path,
                        reason: "inconsistent cluster record (format, shard count or epochs)"
                            .into(),
                    });
                }
                Ok(file)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                // The shard count decides which shard holds which object:
                // a record made afresh beside shard data would look for
                // objects in the wrong shards (and a split would then
                // destroy them).
                if crate::classes::holds_shards(data_dir) {
                    return Err(RegistryError::DataDir {
                        path: data_dir.to_path_buf(),
                        reason: format!(
                            "it holds shard data (shards/) but no cluster record ({CLUSTER_FILE}): \
                             the record was removed or lost, and without it the shard count is \
                             unknown; put the record back, or move the shards away to start afresh"
                        ),
                    });
                }
                let file = ClusterFile::new(shard_count.max(1));
                file.save(data_dir)?;
                Ok(file)
            }
            Err(source) => Err(RegistryError::DataDirIo {
                path,
                what: "cannot read the cluster record".into(),
                source,
            }),
        }
    }

    /// A record of `shard_count` shards, never assigned.
    pub(crate) fn new(shard_count: u32) -> Self {
        ClusterFile {
            format: FORMAT,
            shard_count,
            epochs: vec![0; shard_count as usize],
            assignment: vec![None; shard_count as usize],
            split: None,
        }
    }

    /// Whether the record agrees with itself.
    fn consistent(&self) -> bool {
        let split_fits = match self.split {
            None => self.format == FORMAT,
            Some(Split { from, phase }) => {
                self.format == FORMAT_SPLITTING
                    && match phase {
                        SplitPhase::Copying => self.shard_count == from,
                        SplitPhase::Pruning => Some(self.shard_count) == from.checked_mul(2),
                    }
            }
        };
        split_fits
            && self.shard_count > 0
            && self.epochs.len() == self.shard_count as usize
            && self.assignment.len() <= self.shard_count as usize
    }

    /// Begins, advances or ends a split (and the format with it).
    pub(crate) fn set_split(&mut self, split: Option<Split>) {
        self.format = if split.is_some() {
            FORMAT_SPLITTING
        } else {
            FORMAT
        };
        self.split = split;
    }

    /// Writes the record atomically and durably (temporary file, fsync,
    /// rename, fsync of the directory), so that epochs never go backwards.
    /// The temporary file's name is its writer's own (pid and a counter),
    /// and it is removed if the write fails.
    pub(crate) fn save(&self, data_dir: &Path) -> Result<(), RegistryError> {
        static WRITES: AtomicU64 = AtomicU64::new(0);
        let path = data_dir.join(CLUSTER_FILE);
        let tmp = data_dir.join(format!(
            "{CLUSTER_FILE}.{}-{}.tmp",
            std::process::id(),
            WRITES.fetch_add(1, Ordering::Relaxed)
        ));
        let written = self.write_and_rename(data_dir, &path, &tmp);
        if written.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        written
    }

    fn write_and_rename(
        &self,
        data_dir: &Path,
        path: &Path,
        tmp: &Path,
    ) -> Result<(), RegistryError> {
        let io = |source: std::io::Error| RegistryError::DataDirIo {
            path: path.to_path_buf(),
            what: "cannot write the cluster record".into(),
            source,
        };
        let bytes =
            serde_json::to_vec_pretty(self).map_err(|source| RegistryError::ClusterRecord {
                path: path.to_path_buf(),
                source,
            })?;
        {
            use std::io::Write;
            let mut file = std::fs::File::create(tmp).map_err(io)?;
            file.write_all(&bytes).map_err(io)?;
            file.sync_all().map_err(io)?;
        }
        std::fs::rename(tmp, path).map_err(io)?;
        // The rename is durable once the directory is synced (Unix; other
        // platforms have no directory handle to sync).
        #[cfg(unix)]
        std::fs::File::open(data_dir)
            .and_then(|d| d.sync_all())
            .map_err(io)?;
        #[cfg(not(unix))]
        let _ = data_dir;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cluster_file_keeps_s_and_epochs() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ClusterFile::load_or_create(dir.path(), 3).unwrap();
        assert_eq!(file.epochs, vec![0, 0, 0]);
        file.epochs = vec![7, 8, 9];
        file.assignment = vec![Some(0), None, Some(1)];
        file.save(dir.path()).unwrap();
        // S is fixed at creation: a different worker count later does not
        // change it.
        assert_eq!(ClusterFile::load_or_create(dir.path(), 5).unwrap(), file);
        // Nothing but the record is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CLUSTER_FILE)]);
        std::fs::write(dir.path().join(CLUSTER_FILE), b"{garbage").unwrap();
        let error = ClusterFile::load_or_create(dir.path(), 3).unwrap_err();
        assert!(
            matches!(error, RegistryError::ClusterRecord { .. }),
            "{error:?}"
        );
        // The parser's own error stays the source, for callers to inspect.
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.is::<serde_json::Error>(), "{source:?}");
    }

    #[test]
    fn a_record_that_cannot_be_read_or_written_keeps_the_io_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the record should be: reading it fails.
        std::fs::create_dir(dir.path().join(CLUSTER_FILE)).unwrap();
        let error = ClusterFile::load_or_create(dir.path(), 3).unwrap_err();
        assert!(
            matches!(error, RegistryError::DataDirIo { .. }),
            "{error:?}"
        );
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.is::<std::io::Error>(), "{source:?}");
        assert!(
            error.to_string().contains("cannot read the cluster record"),
            "{error}"
        );
        // A data directory that is a file: the record cannot be written.
        let file = dir.path().join("plain-file");
        std::fs::write(&file, b"x").unwrap();
        let error = ClusterFile::new(2).save(&file).unwrap_err();
        assert!(
            matches!(error, RegistryError::DataDirIo { .. }),
            "{error:?}"
        );
        assert!(std::error::Error::source(&error).is_some_and(|s| s.is::<std::io::Error>()));
    }
    #[test]
    fn a_split_in_progress_changes_the_format_and_must_fit_the_shard_count() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = ClusterFile::load_or_create(dir.path(), 2).unwrap();
        file.set_split(Some(Split {
            from: 2,
            phase: SplitPhase::Copying,
        }));
        file.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CLUSTER_FILE)).unwrap();
        assert!(text.contains("\"format\": 2"), "{text}");
        assert!(text.contains("\"copying\""), "{text}");
        assert_eq!(ClusterFile::load_or_create(dir.path(), 9).unwrap(), file);
        // Pruning claims the doubled count: with 2 shards recorded, that is
        // inconsistent.
        file.split = Some(Split {
            from: 2,
            phase: SplitPhase::Pruning,
        });
        file.save(dir.path()).unwrap();
        assert!(matches!(
            ClusterFile::load_or_create(dir.path(), 2),
            Err(RegistryError::DataDir { .. })
        ));
        file.set_split(None);
        file.save(dir.path()).unwrap();
        let text = std::fs::read_to_string(dir.path().join(CLUSTER_FILE)).unwrap();
        assert!(
            text.contains("\"format\": 1") && !text.contains("split"),
            "{text}"
        );
    }

    /// A record removed beside shard data was once made afresh with S =
    /// the new worker count: 12 of 30 counters read 0, and the next split
    /// destroyed them.
    #[test]
    fn shard_data_without_a_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shards/3")).unwrap();
        let error = ClusterFile::load_or_create(dir.path(), 2).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("no cluster record"), "{message}");
        assert!(!dir.path().join(CLUSTER_FILE).exists());
        // An empty shards/ is no data.
        std::fs::remove_dir(dir.path().join("shards/3")).unwrap();
        assert_eq!(
            ClusterFile::load_or_create(dir.path(), 2)
                .unwrap()
                .shard_count,
            2
        );
    }
}
