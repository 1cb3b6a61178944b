//! The class record, `<data>/odo-classes.json`: the storage backend the
//! data directory's shards are kept with (`fjall`, ...), and the kind of
//! storage of each class a server has served from it (`key-value`,
//! `sqlite`, ...). Both keep their value for the life of the directory: the
//! objects' data is where that backend and kind put it, and another would
//! not find it (or would misread it, or a split of the shards made with it
//! would destroy it). Written atomically and durably, only under the data
//! directory's lock.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

const CLASSES_FILE: &str = "odo-classes.json";
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct ClassesFile {
    format: u32,
    /// The backend the shards are kept with (absent in records written
    /// before it was recorded: the next server's backend is taken).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    backend: Option<RecordedBackend>,
    /// Class name to its kind of storage.
    classes: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
struct RecordedBackend {
    name: String,
    /// A backend that keeps nothing (`memory`) leaves nothing to protect:
    /// a durable one may take the directory over.
    durable: bool,
}

/// The storage backend a server keeps the shards with, as `odo serve
/// --storage` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StorageBackend<'a> {
    /// Its registered name.
    pub name: &'a str,
    /// Whether it keeps what it is given across restarts.
    pub durable: bool,
}

/// Whether `data_dir` holds shard data (a non-empty `shards/`).
pub(crate) fn holds_shards(data_dir: &Path) -> bool {
    std::fs::read_dir(data_dir.join(odo_core::SHARDS_DIR))
        .is_ok_and(|mut entries| entries.next().is_some())
}

/// Checks `backend` and `classes` (name, kind of storage) against the
/// record in `data_dir` and records what it does not hold yet. Classes the
/// record holds and `classes` does not stay recorded. A directory with
/// shard data and no record is refused: its classes' kinds are unknown.
pub(crate) fn check_and_record(
    data_dir: &Path,
    backend: StorageBackend<'_>,
    classes: &[(String, String)],
) -> Result<(), RegistryError> {
    let path = data_dir.join(CLASSES_FILE);
    let (mut file, mut changed) = match std::fs::read(&path) {
        Ok(bytes) => {
            let file: ClassesFile =
                serde_json::from_slice(&bytes).map_err(|source| RegistryError::ClassRecord {
                    path: path.clone(),
                    source,
                })?;
            if file.format != FORMAT {
                return Err(RegistryError::DataDir {
                    path,
                    reason: format!("class record of unknown format {}", file.format),
                });
            }
            (file, false)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if holds_shards(data_dir) {
                return Err(RegistryError::DataDir {
                    path: data_dir.to_path_buf(),
                    reason: format!(
                        "it holds shard data (shards/) but no class record ({CLASSES_FILE}): \
                         the record was removed or lost, and without it each class's kind of \
                         storage is unknown (a class served with the other kind would not see \
                         its data); put the record back, or move the shards away to start afresh"
                    ),
                });
            }
            // Written even with no class to record, so that a record
            // missing beside shard data always means it was lost.
            let file = ClassesFile {
                format: FORMAT,
                backend: None,
                classes: BTreeMap::new(),
            };
            (file, true)
        }
        Err(source) => {
            return Err(RegistryError::DataDirIo {
                path,
                what: "cannot read the class record".into(),
                source,
            });
        }
    };
    match &file.backend {
        Some(recorded) if recorded.name == backend.name => {}
        Some(recorded) if recorded.durable => {
            return Err(RegistryError::BackendChanged {
                recorded: recorded.name.clone(),
                registered: backend.name.to_owned(),
                record: path,
            });
        }
        // Nothing recorded, or a backend that kept nothing: this one
        // takes the directory.
        _ => {
            file.backend = Some(RecordedBackend {
                name: backend.name.to_owned(),
                durable: backend.durable,
            });
            changed = true;
        }
    }
    for (class, kind) in classes {
        match file.classes.get(class) {
            Some(recorded) if recorded == kind => {}
            Some(recorded) => {
                return Err(RegistryError::ClassStorageChanged {
                    class: class.clone(),
                    recorded: recorded.clone(),
                    registered: kind.clone(),
                    record: path,
                });
            }
            None => {
                file.classes.insert(class.clone(), kind.clone());
                changed = true;
            }
        }
    }
    if changed {
        save(data_dir, &path, &file)?;
    }
    Ok(())
}

/// Writes the record atomically and durably (temporary file, fsync,
/// rename, fsync of the directory).
fn save(data_dir: &Path, path: &Path, file: &ClassesFile) -> Result<(), RegistryError> {
    let io = |source: std::io::Error| RegistryError::DataDirIo {
        path: path.to_path_buf(),
        what: "cannot write the class record".into(),
        source,
    };
    let bytes = serde_json::to_vec_pretty(file).map_err(|source| RegistryError::ClassRecord {
        path: path.to_path_buf(),
        source,
    })?;
    let tmp = data_dir.join(format!("{CLASSES_FILE}.{}.tmp", std::process::id()));
    let written = (|| {
        use std::io::Write;
        let mut out = std::fs::File::create(&tmp)?;
        out.write_all(&bytes)?;
        out.sync_all()?;
        std::fs::rename(&tmp, path)?;
        #[cfg(unix)]
        std::fs::File::open(data_dir)?.sync_all()?;
        Ok(())
    })();
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written.map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    const FJALL: StorageBackend<'static> = StorageBackend {
        name: "fjall",
        durable: true,
    };
    const MEMORY: StorageBackend<'static> = StorageBackend {
        name: "memory",
        durable: false,
    };

    fn kinds(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(c, k)| ((*c).to_owned(), (*k).to_owned()))
            .collect()
    }

    #[test]
    fn a_class_keeps_its_kind_and_new_classes_are_added() {
        let dir = tempfile::tempdir().unwrap();
        check_and_record(
            dir.path(),
            FJALL,
            &kinds(&[("A", "key-value"), ("B", "sqlite")]),
        )
        .unwrap();
        // The same kinds, a class fewer and a new one: fine.
        check_and_record(
            dir.path(),
            FJALL,
            &kinds(&[("B", "sqlite"), ("C", "key-value")]),
        )
        .unwrap();
        let error = check_and_record(dir.path(), FJALL, &kinds(&[("A", "sqlite")]))
            .expect_err("A changed kind");
        let message = error.to_string();
        assert!(
            matches!(&error, RegistryError::ClassStorageChanged { class, recorded, registered, .. }
                if class == "A" && recorded == "key-value" && registered == "sqlite"),
            "{message}"
        );
        assert!(message.contains("class A"), "{message}");
        let error = check_and_record(dir.path(), FJALL, &kinds(&[("C", "sqlite")])).unwrap_err();
        assert!(matches!(error, RegistryError::ClassStorageChanged { .. }));
        // Nothing but the record is left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(CLASSES_FILE)]);
    }

    #[test]
    fn an_unreadable_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CLASSES_FILE), b"{not json").unwrap();
        let error = check_and_record(dir.path(), FJALL, &kinds(&[("A", "sqlite")])).unwrap_err();
        assert!(
            matches!(error, RegistryError::ClassRecord { .. }),
            "{error}"
        );
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.is::<serde_json::Error>(), "{source:?}");
    }

    /// A server with `--storage memory` on a directory of fjall shards
    /// once served none of their data and, with more workers, split the
    /// shards (rewriting the shard count): 14 of 30 counters read 0 when
    /// fjall served the directory again, and a later split destroyed them.
    #[test]
    fn the_shards_keep_their_durable_backend() {
        let dir = tempfile::tempdir().unwrap();
        let classes = kinds(&[("A", "key-value")]);
        // A directory first served in memory may be taken over.
        check_and_record(dir.path(), MEMORY, &classes).unwrap();
        check_and_record(dir.path(), FJALL, &classes).unwrap();
        check_and_record(dir.path(), FJALL, &classes).unwrap();
        // Not the other way.
        let error = check_and_record(dir.path(), MEMORY, &classes).unwrap_err();
        let message = error.to_string();
        assert!(
            matches!(&error, RegistryError::BackendChanged { recorded, registered, .. }
                if recorded == "fjall" && registered == "memory"),
            "{message}"
        );
        assert!(message.contains("--storage fjall"), "{message}");
        // A record without a backend (written before it was recorded)
        // takes the next server's.
        std::fs::write(
            dir.path().join(CLASSES_FILE),
            br#"{"format":1,"classes":{"A":"key-value"}}"#,
        )
        .unwrap();
        check_and_record(dir.path(), FJALL, &classes).unwrap();
        assert!(check_and_record(dir.path(), MEMORY, &classes).is_err());
    }

    /// The record lost beside shard data: once read as "no class recorded",
    /// which let a class change its kind and fork its objects' data.
    #[test]
    fn shard_data_without_a_record_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("shards/0")).unwrap();
        let error = check_and_record(dir.path(), FJALL, &kinds(&[("A", "sqlite")])).unwrap_err();
        let message = error.to_string();
        assert!(message.contains("no class record"), "{message}");
        assert!(!dir.path().join(CLASSES_FILE).exists());
        // A new directory gets a record even with no class to record.
        let fresh = tempfile::tempdir().unwrap();
        check_and_record(fresh.path(), FJALL, &[]).unwrap();
        assert!(fresh.path().join(CLASSES_FILE).exists());
    }
}
