//! odo touches only what it made and keeps its secret to itself: one lock
//! on the whole data directory (a second server fails, naming the holder,
//! and changes nothing), the cluster token never in a worker's environment
//! (nor so in that of a program object code starts), worker figures
//! that say how old they are or are fetched fresh, and sockets that a
//! temporary-file cleaner removed made again.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use odo_registry::{Registry, RegistryConfig, WorkerCommand};
use odo_tests::topology::ServerSpec;

fn spec(workers: u32) -> ServerSpec {
    ServerSpec::new(env!("CARGO_BIN_EXE_odo-test-server"), workers)
}

fn cluster_record(data_dir: &Path) -> Vec<u8> {
    std::fs::read(data_dir.join("odo-cluster.json")).expect("the cluster record")
}

/// A second `odo serve` on a data directory a running server holds exits
/// non-zero naming the lock and the holder's pid, and leaves the cluster
/// record as it was, byte for byte. TCP, so that the two servers' sockets
/// cannot collide and only the data directory is shared.
#[test]
fn a_second_server_on_a_data_dir_in_use_fails_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(2);
    spec.transport = "tcp".into();
    let first = spec.start(dir.path()).expect("the first server starts");
    let before = cluster_record(dir.path());
    let (status, stderr) = spec
        .run_to_exit(dir.path(), Duration::from_secs(60))
        .unwrap();
    let after = cluster_record(dir.path());
    assert!(!status.success(), "the second server must fail: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid)) && stderr.contains("odo.lock"),
        "the error names the lock and its holder {}: {stderr}",
        first.pid
    );
    assert!(
        before == after,
        "the cluster record changed under the running server:\n{}\n---\n{}",
        String::from_utf8_lossy(&before),
        String::from_utf8_lossy(&after)
    );
    let status = first.terminate().unwrap();
    assert!(status.success(), "{status}");
    // Once the holder is gone, the directory is free again.
    let again = spec
        .start(dir.path())
        .expect("a server starts after the holder");
    drop(again);
}

/// The same with in-process hosting (`--workers 0`) and the memory backend,
/// where no shard store lock stands in for the data directory's.
#[test]
fn an_in_process_server_locks_its_data_dir_too() {
    let dir = tempfile::tempdir().unwrap();
    let mut spec = spec(0);
    spec.storage = "memory".into();
    let first = spec.start(dir.path()).expect("the first server starts");
    let before = cluster_record(dir.path());
    let (status, stderr) = spec
        .run_to_exit(dir.path(), Duration::from_secs(60))
        .unwrap();
    assert!(!status.success(), "the second server must fail: {stderr}");
    assert!(
        stderr.contains(&format!("pid {}", first.pid)),
        "the error names the holder {}: {stderr}",
        first.pid
    );
    assert_eq!(before, cluster_record(dir.path()));
    drop(first);
}

/// An operator's slips that once lost acknowledged data for good, each now
/// refused with what to do: serving a directory of fjall shards with
/// `--storage memory` (its split rewrote the shard count under the fjall
/// data: 14 of 30 counters read 0 afterwards, and a later split destroyed
/// them), and starting on shard data whose cluster record was removed (a
/// fresh record with another shard count: 12 of 30 read 0).
#[test]
fn a_data_dir_keeps_its_backend_and_its_records() {
    let dir = tempfile::tempdir().unwrap();
    let first = spec(1).start(dir.path()).expect("the first server starts");
    let status = first.terminate().unwrap();
    assert!(status.success(), "{status}");
    let before = cluster_record(dir.path());
    let mut memory = spec(2);
    memory.storage = "memory".into();
    let (status, stderr) = memory
        .run_to_exit(dir.path(), Duration::from_secs(60))
        .unwrap();
    assert!(
        !status.success(),
        "memory over fjall shards must fail: {stderr}"
    );
    assert!(stderr.contains("--storage fjall"), "{stderr}");
    assert_eq!(before, cluster_record(dir.path()), "the record changed");

    std::fs::remove_file(dir.path().join("odo-cluster.json")).unwrap();
    let (status, stderr) = spec(2)
        .run_to_exit(dir.path(), Duration::from_secs(60))
        .unwrap();
    assert!(!status.success(), "a lost record must be refused: {stderr}");
    assert!(stderr.contains("no cluster record"), "{stderr}");
    assert!(!dir.path().join("odo-cluster.json").exists());
}

/// A pid that no process has now: a child that exited and was reaped.
#[cfg(target_os = "linux")]
fn dead_pid() -> u32 {
    let mut child = std::process::Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    pid
}

/// A server without `--runtime-dir` works in the system's temporary
/// directory (here a directory of the test's, through `TMPDIR`), where it
/// first removes the runtime directories killed registries left: only
/// those odo provably made, not a user's that merely looks like one.
#[cfg(target_os = "linux")]
#[test]
fn only_odos_own_dead_runtime_dirs_are_removed() {
    let temp = tempfile::tempdir().unwrap();
    let dead = dead_pid();
    // A user's directory that happens to be named like odo's.
    let user = temp.path().join(format!("odo-{dead}-x"));
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("thesis.tex"), "years of work").unwrap();
    // One a killed odo left: its marker names the dead pid.
    let stale = temp.path().join(format!("odo-{dead}-0123abcd"));
    std::fs::create_dir(&stale).unwrap();
    std::fs::write(stale.join(".odo-runtime"), format!("{dead}\n")).unwrap();
    // A marker naming another pid than the directory's proves nothing.
    let mismatched = temp.path().join(format!("odo-{dead}-4567cdef"));
    std::fs::create_dir(&mismatched).unwrap();
    std::fs::write(mismatched.join(".odo-runtime"), "1\n").unwrap();

    // Standard input closed: the server starts, then stops at once.
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_odo-test-server"))
        .args(["serve", "--listen", "127.0.0.1:0", "--workers", "1"])
        .args(["--storage", "memory", "--exit-on-stdin-eof"])
        .arg("--data-dir")
        .arg(temp.path().join("data"))
        .env("TMPDIR", temp.path())
        .env("RUST_LOG", "error")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );

    assert!(
        user.join("thesis.tex").exists(),
        "the user's directory {} was removed",
        user.display()
    );
    assert!(mismatched.exists(), "a directory with another pid's marker");
    assert!(!stale.exists(), "odo's dead runtime directory is removed");
    let mut left: Vec<String> = std::fs::read_dir(temp.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    let mut expected = vec![
        "data".to_owned(),
        format!("odo-{dead}-4567cdef"),
        format!("odo-{dead}-x"),
    ];
    expected.sort();
    assert_eq!(left, expected, "the server removed its own at shutdown");
}

/// A registry in this process whose workers are the test server (the demo
/// app plus the probe class), with a token the test knows.
fn registry_config(dir: &Path, token: &str) -> RegistryConfig {
    let command = WorkerCommand {
        program: env!("CARGO_BIN_EXE_odo-test-server").into(),
        args: Vec::new(),
    };
    let mut config = RegistryConfig::new(command, dir.join("data"));
    config.workers = 1;
    config.runtime_dir = Some(dir.join("run"));
    config.storage = "memory".to_owned();
    config.token = token.to_owned();
    config
}

fn client(registry: &Registry) -> odo_router::Client {
    let transport = odo_transport::ClientConfig::new(registry.token());
    let service = odo_router::ClusterService::new(registry.placement_source(), transport);
    odo_router::Client::new(Arc::new(service))
}

async fn probe(client: &odo_router::Client, name: &str, route: &str) -> (u16, Bytes) {
    let request = http::Request::get(format!("/probe/{name}/{route}"))
        .body(Bytes::new())
        .unwrap();
    let response = client
        .namespace("PROBE")
        .get_by_name(name)
        .fetch(request)
        .await
        .expect("the probe answers");
    (response.status().as_u16(), response.into_body())
}

#[cfg(target_os = "linux")]
fn contains(haystack: &[u8], needle: &str) -> bool {
    haystack
        .windows(needle.len())
        .any(|w| w == needle.as_bytes())
}

/// The token is in neither the worker's own environment (as `/proc`
/// shows it to any process of the same user) nor that of a program the
/// object code starts.
#[cfg(target_os = "linux")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_is_in_no_environment() {
    let dir = tempfile::tempdir().unwrap();
    let token = "a-token-this-test-knows-0123456789abcdef";
    let registry = Registry::start(registry_config(dir.path(), token))
        .await
        .unwrap();
    registry.ready().await.unwrap();
    let pid = registry.workers()[0].pid.expect("a running worker");
    let environ = std::fs::read(format!("/proc/{pid}/environ")).unwrap();
    let in_worker = contains(&environ, token) || contains(&environ, "ODO_CLUSTER_TOKEN");

    let client = client(&registry);
    let (status, child_env) = probe(&client, "env", "child-env").await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&child_env));
    assert!(
        contains(&child_env, "PATH="),
        "env printed the child's environment: {}",
        String::from_utf8_lossy(&child_env)
    );
    let in_child = contains(&child_env, token) || contains(&child_env, "ODO_CLUSTER_TOKEN");
    registry.shutdown().await;
    assert!(
        !in_worker && !in_child,
        "the token leaks: in the worker's environ {in_worker}, in its child's {in_child}"
    );
}

/// A worker started without a token on its standard input refuses to run,
/// with an error that says so.
#[cfg(unix)]
#[test]
fn a_worker_without_a_token_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let launch = odo_core::launch::WorkerLaunch {
        index: 0,
        registry: format!("unix:{}", dir.path().join("registry.sock").display()),
        listen: format!("unix:{}", dir.path().join("worker.sock").display()),
        data_dir: dir.path().display().to_string(),
        storage: "memory".to_owned(),
        shard_count: 1,
        parent_pid: std::process::id(),
        websocket_max_message_bytes: 32 << 20,
    };
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_odo-test-server"))
        .args(launch.to_args())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success(), "{stderr}");
    assert!(stderr.contains("token"), "{stderr}");
}

/// `GET /_odo/workers` figures: `workers()` gives the last heartbeat's
/// with their age; `workers_fresh()` asks the workers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_figures_say_how_old_they_are_or_are_fresh() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = registry_config(dir.path(), "figures-token-0123456789");
    // One heartbeat at start, then none within the test.
    config.heartbeat_interval = Duration::from_secs(3600);
    let registry = Registry::start(config).await.unwrap();
    registry.ready().await.unwrap();
    let started = Instant::now();
    while registry.workers()[0].stats_age_ms.is_none() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "no first heartbeat"
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let client = client(&registry);
    for name in ["a", "b", "c"] {
        assert_eq!(probe(&client, name, "n").await.0, 200);
    }
    // The last heartbeat predates the activations: the figure lags, and
    // says so.
    let last = registry.workers().remove(0);
    assert_eq!(last.live_objects, 0, "{last:?}");
    assert!(last.stats_age_ms.is_some(), "{last:?}");
    let json = serde_json::to_value(registry.workers()).unwrap();
    assert!(json[0]["stats_age_ms"].is_u64(), "{json}");
    // Asked afresh, the worker reports its three objects.
    let fresh = registry.workers_fresh().await.remove(0);
    assert_eq!(fresh.live_objects, 3, "{fresh:?}");
    assert!(fresh.stats_age_ms.is_some(), "{fresh:?}");
    // The fresh figures are kept.
    assert_eq!(registry.workers()[0].live_objects, 3);
    registry.shutdown().await;
}

/// A cleaner of temporary files (systemd-tmpfiles ages `/tmp` out after
/// 10 days) removes the runtime directory with every socket in it while
/// the server runs. Each server made its socket again, so a worker that
/// dies afterwards is replaced (it reaches the registry) and serves again
/// (the router and the front door reach it). Before, the replacement
/// could never reach the registry: it exited at once, again and again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_a_cleaner_removed_are_made_again() {
    let dir = tempfile::tempdir().unwrap();
    let server = spec(2).start(dir.path()).expect("the server starts");
    let client = odo_tests::http::HttpClient::new(&server.base);
    let names: Vec<String> = (0..16).map(|i| format!("clean-{i}")).collect();
    for name in &names {
        let answer = client
            .post(&format!("/counter/{name}/increment"))
            .await
            .unwrap();
        assert_eq!(answer.status, 200, "{}", answer.text());
    }
    // The cleaner: the runtime directory (`odo-<pid>-<random>` inside
    // the `--runtime-dir` the test gave), sockets and all.
    let run = dir.path().join("run");
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(&run).unwrap().flatten() {
        std::fs::remove_dir_all(entry.path()).unwrap();
        removed.push(entry.path());
    }
    assert_eq!(removed.len(), 1, "one runtime directory: {removed:?}");
    let victim = client.owner_pid("counter/clean-0").await.unwrap();
    odo_tests::topology::signal(victim, odo_tests::topology::Signal::Kill).unwrap();
    let killed = Instant::now();
    while odo_tests::topology::process_alive(victim) {
        assert!(
            killed.elapsed() < Duration::from_secs(10),
            "{victim} outlived SIGKILL"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // Every object answers, each counted once more: first on the worker
    // that lived (its shards moved there), with replacements that find
    // the registry's socket gone exiting before they listen, so that no
    // request meets one (before, one could take a request and exit: 502).
    let increment_all = async |expect: &str| {
        let started = Instant::now();
        let mut pending: Vec<&String> = names.iter().collect();
        while !pending.is_empty() {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "30 s on, {} objects still fail",
                pending.len()
            );
            let mut failed = Vec::new();
            for name in pending {
                let answer = client
                    .post(&format!("/counter/{name}/increment"))
                    .await
                    .unwrap();
                match answer.status {
                    200 => assert_eq!(answer.text(), expect, "{name}"),
                    // Never delivered (its shard moving): sent again.
                    503 => failed.push(name),
                    other => panic!("{name}: {other} {}", answer.text()),
                }
            }
            pending = failed;
            if !pending.is_empty() {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };
    increment_all("2").await;
    // A replacement runs.
    let started = Instant::now();
    loop {
        let now = client.running_worker_pids().await.unwrap();
        if now.len() == 2 && !now.contains(&victim) {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "no replacement of the killed worker {victim} runs: {now:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // And every object answers again, wherever its shard is now (the
    // router and the door reach the replacement's socket).
    increment_all("3").await;
    // The directory is odo's again, to a later odo too: its marker names
    // the server (so a later server can clean it up after a crash).
    let marker = removed[0].join(".odo-runtime");
    let started = Instant::now();
    while std::fs::read_to_string(&marker).ok().as_deref() != Some(&format!("{}\n", server.pid)) {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the runtime directory's marker was not written again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    drop(server);
}
