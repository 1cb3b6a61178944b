//! What only the fjall backend does: locking its directory, surviving
//! reopen, reporting bad directories as errors.

#![cfg(feature = "fjall")]

use std::time::Duration;

use odo_core::Namespace;
use odo_storage::{Backend, FjallBackend, FjallOptions, StorageError, Store, StoreOptions};

fn id() -> odo_core::ObjectId {
    Namespace::new("FJALL").id_from_name("x")
}

#[test]
fn a_second_open_names_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let first = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap();
    let error = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap_err();
    match &error {
        StorageError::Locked {
            dir: locked,
            holder_pid,
        } => {
            assert_eq!(locked, dir.path());
            assert_eq!(*holder_pid, Some(std::process::id()));
        }
        other => panic!("expected Locked, got {other:?}"),
    }
    let message = error.to_string();
    assert!(
        message.contains(&std::process::id().to_string()),
        "{message}"
    );
    // Closing releases the directory, even while the value is still alive.
    first.close().unwrap();
    assert!(matches!(first.get(&id(), "k"), Err(StorageError::Closed)));
    let again = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap();
    drop(again);
    // Dropping releases it too.
    FjallBackend::open(dir.path(), FjallOptions::default()).unwrap();
}

/// Holds the lock file of `dir` through a second open file, the way a child
/// process forked while a backend was open holds it until it `exec`s, with
/// `pid` written in it.
fn hold_lock(dir: &std::path::Path, pid: u32) -> std::fs::File {
    let path = dir.join("odo.lock");
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    file.try_lock().unwrap();
    std::fs::write(&path, pid.to_string()).unwrap();
    file
}

#[test]
fn a_lock_this_process_left_behind_is_waited_out() {
    let dir = tempfile::tempdir().unwrap();
    drop(FjallBackend::open(dir.path(), FjallOptions::default()).unwrap());
    let lingering = hold_lock(dir.path(), std::process::id());
    // Released a little later, as the child's `exec` would.
    let release = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(200));
        drop(lingering);
    });
    let backend = FjallBackend::open(dir.path(), FjallOptions::default())
        .expect("the open waits for the leftover lock");
    release.join().unwrap();
    backend.close().unwrap();
}

#[test]
fn another_process_lock_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    drop(FjallBackend::open(dir.path(), FjallOptions::default()).unwrap());
    // pid 1 never runs odo tests: the lock is another process's.
    let _held = hold_lock(dir.path(), 1);
    let error = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap_err();
    assert!(
        matches!(
            error,
            StorageError::Locked {
                holder_pid: Some(1),
                ..
            }
        ),
        "{error:?}"
    );
}

#[test]
fn a_store_directory_that_is_a_file_is_an_io_error() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("not-a-dir");
    std::fs::write(&file, b"x").unwrap();
    let error = FjallBackend::open(&file, FjallOptions::default()).unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "{error:?}");
}

#[test]
fn garbage_in_the_database_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    rt.block_on(async {
        let backend = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap();
        let store = Store::open(backend, StoreOptions::default()).unwrap();
        let mut s = store.object(id());
        s.put("k", "v").await.unwrap();
        s.commit_turn().unwrap().await.unwrap();
        store.close().await.unwrap();
    });
    // Overwrite every file fjall wrote with garbage.
    let mut stack = vec![dir.path().join("fjall")];
    while let Some(path) = stack.pop() {
        for entry in std::fs::read_dir(&path).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_dir() {
                stack.push(entry.path());
            } else {
                std::fs::write(entry.path(), b"\xffnot fjall data at all\x00\x01").unwrap();
            }
        }
    }
    let result = std::panic::catch_unwind(|| {
        FjallBackend::open(dir.path(), FjallOptions::default()).map(|b| b.get(&id(), "k"))
    });
    let result = result.expect("opening a damaged directory must not panic");
    assert!(
        matches!(
            result,
            Err(StorageError::Corruption { .. }
                | StorageError::Io { .. }
                | StorageError::Backend { .. })
        ),
        "{result:?}"
    );
    // fjall's own error stays reachable as the source.
    if let Err(error) = &result {
        assert!(std::error::Error::source(error).is_some(), "{error:?}");
    }
}

#[tokio::test]
async fn data_and_alarms_survive_reopen_and_disk_space_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    {
        let backend = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap();
        let store = Store::open(backend, StoreOptions::default()).unwrap();
        let mut s = store.object(id());
        s.put("b", "2").await.unwrap();
        s.put("a", "1").await.unwrap();
        s.set_alarm(42).await.unwrap();
        // Not awaited: closing commits it.
        drop(s.commit_turn());
        store.close().await.unwrap();
    }
    let backend = FjallBackend::open(dir.path(), FjallOptions::default()).unwrap();
    assert!(backend.disk_space().unwrap() > 0);
    let store = Store::open(backend, StoreOptions::default()).unwrap();
    let mut s = store.object(id());
    let all = s.list(&Default::default()).await.unwrap();
    let keys: Vec<&str> = all.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys, ["a", "b"]);
    assert_eq!(s.get_alarm().await.unwrap(), Some(42));
    assert_eq!(store.due_alarms(u64::MAX, 1).unwrap(), [(id(), 42)]);
    store.close().await.unwrap();
}
