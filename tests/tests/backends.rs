//! Storage backends that plug in: a server accepts any backend its binary
//! registered (the test server adds `logfile`, defined in this crate, not in
//! odo's), by name, and refuses an unknown name before it starts anything,
//! saying which names it knows.

use std::path::Path;
use std::time::Duration;

use odo_tests::http::HttpClient;
use odo_tests::topology::ServerSpec;

fn spec(workers: u32, storage: &str) -> ServerSpec {
    let mut spec = ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), workers);
    spec.storage = storage.to_owned();
    spec
}

#[test]
fn serve_refuses_an_unknown_backend_and_names_the_registered_ones() {
    for workers in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let (status, stderr) = spec(workers, "nosuch")
            .run_to_exit(dir.path(), Duration::from_secs(30))
            .unwrap();
        assert!(!status.success(), "{workers} workers: {status}\n{stderr}");
        assert!(
            stderr.contains("unknown storage backend \"nosuch\""),
            "{workers} workers: {stderr}"
        );
        for known in ["fjall", "memory", "logfile"] {
            assert!(
                stderr.contains(known),
                "{workers} workers: {known} not listed in: {stderr}"
            );
        }
        // Refused before anything started: no shard was opened.
        assert!(
            !dir.path().join("shards").exists(),
            "{workers} workers: shards were opened"
        );
    }
}

/// The files of shard `n` (sorted names).
fn shard_files(data_dir: &Path, n: u32) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(data_dir.join("shards").join(n.to_string()))
        .map(|entries| {
            entries
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backend_defined_outside_odo_serves_and_keeps_its_data() {
    for workers in [0, 2] {
        let dir = tempfile::tempdir().unwrap();
        let spec = spec(workers, "logfile");
        let server = spec.start(dir.path()).expect("the server starts");
        let c = HttpClient::new(&server.base);
        for expected in 1..=3 {
            let answer = c.post("/counter/kept/increment").await.unwrap();
            assert_eq!(answer.text(), expected.to_string(), "{workers} workers");
        }
        let put = c
            .send("PUT", "/kv/box/greeting", &[], "hello")
            .await
            .unwrap();
        assert_eq!(put.status, 204);
        let status = server.terminate().unwrap();
        assert!(status.success(), "{workers} workers: exit {status}");

        // The test backend's files, not fjall's, hold every shard.
        let shards = workers.max(1);
        for n in 0..shards {
            assert_eq!(
                shard_files(dir.path(), n),
                ["commits.lock", "commits.log"],
                "{workers} workers, shard {n}"
            );
        }

        let server = spec.start(dir.path()).expect("the server starts again");
        let c = HttpClient::new(&server.base);
        assert_eq!(c.get("/counter/kept").await.unwrap().text(), "3");
        assert_eq!(c.get("/kv/box/greeting").await.unwrap().text(), "hello");
        let status = server.terminate().unwrap();
        assert!(status.success(), "{workers} workers: exit {status}");
    }
}

/// A worker checks the name too (a registry of another binary could pass
/// one it lacks): it refuses to start, naming what it has.
#[test]
fn a_worker_refuses_a_backend_it_did_not_register() {
    use std::io::Write;
    use std::process::{Command, Stdio};

    let dir = tempfile::tempdir().unwrap();
    let launch = odo_core::launch::WorkerLaunch {
        index: 0,
        registry: "tcp:127.0.0.1:1".into(),
        listen: "tcp:127.0.0.1:0".into(),
        data_dir: dir.path().display().to_string(),
        storage: "nosuch".into(),
        shard_count: 1,
        parent_pid: std::process::id(),
        websocket_max_message_bytes: 32 << 20,
    };
    let mut child = Command::new(env!("CARGO_BIN_EXE_odo-test-server"))
        .args(launch.to_args())
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"test-token\n").unwrap();
    drop(stdin);
    let output = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(
        stderr.contains(
            "unknown storage backend \"nosuch\"; the registered backends are: fjall, memory, postgres, logfile"
        ),
        "{stderr}"
    );
}
