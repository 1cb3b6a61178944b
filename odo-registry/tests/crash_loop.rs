//! A worker command that dies at once: restarted with backoff, reported as
//! crash looping, and `ready` says which shards never came up.
#![cfg(unix)]

use std::time::{Duration, Instant};

use odo_registry::{Registry, RegistryConfig, RegistryError, WorkerCommand};

#[tokio::test]
async fn a_worker_that_always_dies_is_reported_as_crash_looping() {
    let dir = tempfile::tempdir().unwrap();
    let command = WorkerCommand {
        program: "sh".into(),
        // `sh -c 'exit 3' sh <worker arguments...>`: exits at once.
        args: vec!["-c".into(), "exit 3".into(), "sh".into()],
    };
    let mut config = RegistryConfig::new(command, dir.path().join("data"));
    config.workers = 1;
    config.runtime_dir = Some(dir.path().join("run"));
    config.restart_backoff = Duration::from_millis(5);
    config.max_restart_backoff = Duration::from_millis(20);
    config.crash_loop_limit = 3;
    config.startup_timeout = Duration::from_millis(300);
    let registry = Registry::start(config).await.unwrap();
    match registry.ready().await {
        Err(RegistryError::NotReady(message)) => {
            assert!(message.contains("(shards 0)"), "{message}")
        }
        other => panic!("expected NotReady, got {other:?}"),
    }
    let started = Instant::now();
    loop {
        let status = registry.workers().remove(0);
        if status.crash_looping {
            assert!(status.restarts >= 3, "{status:?}");
            assert!(status.pid.is_none() || status.shards.is_empty());
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "never reported: {status:?}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    registry.shutdown().await;
}
