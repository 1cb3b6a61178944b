//! odo touches only what it made: a runtime directory it is handed keeps
//! its mode and contents (odo works in a private directory inside), and a
//! data directory in use is locked for the server's whole life.
#![cfg(unix)]

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use odo_registry::{Registry, RegistryConfig, RegistryError, WorkerCommand};

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path).unwrap().permissions().mode() & 0o7777
}

/// Workers that exit at once (these tests need none), retried rarely.
fn config(data_dir: PathBuf, runtime_dir: PathBuf) -> RegistryConfig {
    let command = WorkerCommand {
        program: "sh".into(),
        args: vec!["-c".into(), "exit 3".into(), "sh".into()],
    };
    let mut config = RegistryConfig::new(command, data_dir);
    config.workers = 1;
    config.runtime_dir = Some(runtime_dir);
    config.restart_backoff = Duration::from_secs(60);
    config
}

fn names(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[tokio::test]
async fn a_given_runtime_dir_keeps_its_mode_and_contents() {
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("shared-run");
    std::fs::create_dir(&given).unwrap();
    std::fs::set_permissions(&given, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::write(given.join("someone-else.pid"), "42").unwrap();

    let registry = Registry::start(config(dir.path().join("data"), given.clone()))
        .await
        .unwrap();
    let socket = PathBuf::from(
        registry
            .control_endpoint()
            .to_string()
            .strip_prefix("unix:")
            .expect("a socket"),
    );
    let own = socket.parent().unwrap().to_owned();
    let mode_while_running = mode(&given);
    let own_mode = mode(&own);
    registry.shutdown().await;

    assert_eq!(
        mode_while_running, 0o755,
        "the mode of the directory odo was handed changed"
    );
    assert_eq!(mode(&given), 0o755);
    assert_ne!(own, given, "odo works in a directory of its own");
    assert_eq!(own.parent(), Some(given.as_path()));
    assert_eq!(own_mode, 0o700, "odo's own directory is private");
    assert_eq!(
        names(&given),
        ["someone-else.pid"],
        "only odo's own directory goes at shutdown"
    );
}

#[tokio::test]
async fn a_missing_runtime_dir_is_created_private() {
    let dir = tempfile::tempdir().unwrap();
    let given = dir.path().join("new").join("run");
    let registry = Registry::start(config(dir.path().join("data"), given.clone()))
        .await
        .unwrap();
    assert_eq!(mode(&given), 0o700);
    registry.shutdown().await;
    assert!(names(&given).is_empty(), "{:?}", names(&given));
}

#[tokio::test]
async fn a_second_registry_on_the_same_data_dir_fails_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Registry::start(config(data.clone(), dir.path().join("run1")))
        .await
        .unwrap();
    let record = std::fs::read(data.join("odo-cluster.json")).unwrap();
    let second = Registry::start(config(data.clone(), dir.path().join("run2"))).await;
    let message = match &second {
        Ok(_) => String::from("started"),
        Err(e) => e.to_string(),
    };
    assert!(
        matches!(
            second,
            Err(RegistryError::DataDirLocked { holder_pid: Some(pid), .. }) if pid == std::process::id()
        ),
        "{message}"
    );
    assert!(
        message.contains(&format!("pid {}", std::process::id())) && message.contains("odo.lock"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(data.join("odo-cluster.json")).unwrap(),
        record
    );
    assert!(
        matches!(
            odo_registry::shard_count(&data, 1),
            Err(RegistryError::DataDirLocked { .. })
        ),
        "reading S goes through the lock too"
    );
    first.shutdown().await;
    // Free again once the holder is gone.
    let third = Registry::start(config(data.clone(), dir.path().join("run3")))
        .await
        .unwrap();
    third.shutdown().await;
    assert_eq!(odo_registry::shard_count(&data, 1).unwrap(), 1);
}

#[tokio::test]
async fn a_dropped_registry_lets_go_of_its_data_dir() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let first = Registry::start(config(data.clone(), dir.path().join("run")))
        .await
        .unwrap();
    drop(first);
    let again = Registry::start(config(data, dir.path().join("run")))
        .await
        .unwrap();
    again.shutdown().await;
    assert!(names(&dir.path().join("run")).is_empty());
}
