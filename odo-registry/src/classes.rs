//! The class record, `<data>/odo-classes.json`: the kind of storage of
//! each class a server has served from the data directory (`key-value`,
//! `sqlite`, ...). A class keeps its kind for the life of the directory:
//! its objects' data is where that kind put it, and the other kind would
//! not find it (or would misread it). Written atomically and durably,
//! only under the data directory's lock.

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::RegistryError;

const CLASSES_FILE: &str = "odo-classes.json";
const FORMAT: u32 = 1;

#[derive(Debug, Default, Serialize, Deserialize, PartialEq, Eq)]
struct ClassesFile {
    format: u32,
    /// Class name to its kind of storage.
    classes: BTreeMap<String, String>,
}

/// Checks `classes` (name, kind of storage) against the record in
/// `data_dir` and records the classes it does not hold yet. Classes the
/// record holds and `classes` does not stay recorded.
pub(crate) fn check_and_record(
    data_dir: &Path,
    classes: &[(String, String)],
) -> Result<(), RegistryError> {
    let path = data_dir.join(CLASSES_FILE);
    let mut file = match std::fs::read(&path) {
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
            file
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => ClassesFile {
            format: FORMAT,
            classes: BTreeMap::new(),
        },
        Err(source) => {
            return Err(RegistryError::DataDirIo {
                path,
                what: "cannot read the class record".into(),
                source,
            });
        }
    };
    let mut changed = false;
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

    fn kinds(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(c, k)| ((*c).to_owned(), (*k).to_owned()))
            .collect()
    }

    #[test]
    fn a_class_keeps_its_kind_and_new_classes_are_added() {
        let dir = tempfile::tempdir().unwrap();
        check_and_record(dir.path(), &kinds(&[("A", "key-value"), ("B", "sqlite")])).unwrap();
        // The same kinds, a class fewer and a new one: fine.
        check_and_record(dir.path(), &kinds(&[("B", "sqlite"), ("C", "key-value")])).unwrap();
        let error =
            check_and_record(dir.path(), &kinds(&[("A", "sqlite")])).expect_err("A changed kind");
        let message = error.to_string();
        assert!(
            matches!(&error, RegistryError::ClassStorageChanged { class, recorded, registered, .. }
                if class == "A" && recorded == "key-value" && registered == "sqlite"),
            "{message}"
        );
        assert!(message.contains("class A"), "{message}");
        let error = check_and_record(dir.path(), &kinds(&[("C", "sqlite")])).unwrap_err();
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
        let error = check_and_record(dir.path(), &kinds(&[("A", "sqlite")])).unwrap_err();
        assert!(
            matches!(error, RegistryError::ClassRecord { .. }),
            "{error}"
        );
        let source = std::error::Error::source(&error).expect("a source");
        assert!(source.is::<serde_json::Error>(), "{source:?}");
    }
}
