//! The multi-process scenario suite: one small function per scenario, each
//! run against a real topology (the test server, its registry and two
//! worker processes) and producing a [`Transcript`] that must be identical
//! on every backend and transport.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, anyhow, ensure};
use bytes::Bytes;
use futures_util::future::LocalBoxFuture;
use odo_core::Namespace;

use crate::http::HttpClient;
use crate::topology::{RunningServer, ServerSpec, Signal, process_alive, signal, stop_process};
use crate::transcript::Transcript;

/// Worker processes in every topology (and so the shard count).
pub const WORKERS: u32 = 2;
/// The runtime's idle timeout in the topology (eviction scenarios).
pub const IDLE_MS: u64 = 400;
/// The per-object queue depth in the topology (overload scenarios).
pub const QUEUE_DEPTH: u64 = 8;

/// A running topology and what scenarios need to drive it.
#[derive(Debug)]
pub struct World {
    // Dropped first: the server stops before its database and its data
    // directory go.
    server: Option<RunningServer>,
    #[cfg(unix)]
    _postgres: Option<crate::postgres::LocalPostgres>,
    dir: tempfile::TempDir,
    spec: ServerSpec,
    /// The storage backend of this cell.
    pub backend: String,
    /// The transport of this cell.
    pub transport: String,
    /// A client for the current server.
    pub client: HttpClient,
}

impl World {
    /// Starts the test server for a cell in a fresh data directory.
    pub fn start(binary: PathBuf, backend: &str, transport: &str) -> Result<World> {
        let mut spec = ServerSpec::new(binary, WORKERS);
        spec.storage = backend.to_owned();
        spec.transport = transport.to_owned();
        spec.env = vec![
            ("ODO_TEST_IDLE_MS".into(), IDLE_MS.to_string()),
            ("ODO_TEST_QUEUE_DEPTH".into(), QUEUE_DEPTH.to_string()),
        ];
        let dir = tempfile::tempdir()?;
        #[cfg(unix)]
        let postgres = if backend == odo_postgres::NAME {
            let (server, env) = crate::postgres::for_server()?;
            spec.env.extend(env);
            server
        } else {
            None
        };
        let server = spec.start(dir.path())?;
        let client = HttpClient::new(&server.base);
        Ok(World {
            backend: backend.to_owned(),
            transport: transport.to_owned(),
            spec,
            #[cfg(unix)]
            _postgres: postgres,
            dir,
            server: Some(server),
            client,
        })
    }

    /// Whether data survives a restart of the server: what the backend's
    /// factory says (the test server offers
    /// [`test_server_backends`](crate::backend::test_server_backends)).
    pub fn durable(&self) -> bool {
        crate::backend::test_server_backends()
            .get(&self.backend)
            .is_ok_and(|factory| factory.durable())
    }

    /// Stops the server (SIGTERM, must exit 0) and starts it again on the
    /// same data directory.
    pub fn restart(&mut self) -> Result<()> {
        let server = self.server.take().ok_or_else(|| anyhow!("no server"))?;
        let status = server.terminate()?;
        ensure!(status.success(), "the server exited with {status}");
        let server = self.spec.start(self.dir.path())?;
        self.client = HttpClient::new(&server.base);
        self.server = Some(server);
        Ok(())
    }

    /// The server's pid.
    pub fn server_pid(&self) -> u32 {
        self.server.as_ref().map_or(0, |s| s.pid)
    }
}

/// What a scenario needs from its cell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Needs {
    /// A backend whose data survives a restart.
    Durability,
    /// Process signals and `/proc` (to find and signal processes).
    LinuxProcesses,
}

type Run = for<'a> fn(&'a mut World, &'a mut Transcript) -> LocalBoxFuture<'a, Result<()>>;

/// One scenario.
#[derive(Debug, Clone, Copy)]
pub struct Scenario {
    /// Its name (and its snapshot's).
    pub name: &'static str,
    /// What the cell must offer, or it is skipped.
    pub needs: &'static [Needs],
    /// The scenario.
    pub run: Run,
}

impl Scenario {
    /// Why this scenario cannot run on `world`'s cell, if it cannot.
    pub fn skip_reason(&self, world: &World) -> Option<String> {
        self.needs.iter().find_map(|need| match need {
            Needs::Durability if !world.durable() => Some(format!(
                "the {} backend keeps nothing across a process restart",
                world.backend
            )),
            Needs::LinuxProcesses if !cfg!(target_os = "linux") => {
                Some("needs Linux's /proc and signals to find and stop processes".into())
            }
            _ => None,
        })
    }
}

macro_rules! scenario {
    ($name:ident, |$w:ident, $t:ident| $body:block) => {
        pub(crate) fn $name<'a>(
            $w: &'a mut World,
            $t: &'a mut Transcript,
        ) -> LocalBoxFuture<'a, Result<()>> {
            Box::pin(async move { $body })
        }
    };
}

// Scenario modules, one per topic. Declared here, after the `scenario!`
// macro they use (a macro is visible only below its definition).
mod alarm_flood;
mod calls;
mod front_door;
mod listing;
mod reset_race;
mod secrets;
mod soak;
mod sql;
mod sql_api;
mod strangers;
mod websockets;
mod ws_batches;
mod ws_moves;

/// Every scenario, in the order they run.
pub fn all() -> Vec<Scenario> {
    let s = |name, needs: &'static [Needs], run| Scenario { name, needs, run };
    vec![
        s("ids", &[], ids),
        s("storage_list", &[], storage_list),
        s("large_listing", &[], listing::large_listing),
        s("transactions", &[], transactions),
        s("serialisation", &[], serialisation),
        s("reset_after_failure", &[], reset_after_failure),
        s(
            "reset_keeps_acknowledged_writes",
            &[],
            reset_race::reset_keeps_acknowledged_writes,
        ),
        s("rpc_across_workers", &[], rpc_across_workers),
        s("calls_and_cycles", &[], calls::calls_and_cycles),
        s("alarms", &[], alarms),
        s("alarm_during_flood", &[], alarm_flood::alarm_during_flood),
        s(
            "alarm_after_restart",
            &[Needs::Durability],
            alarm_after_restart,
        ),
        s("eviction", &[], eviction),
        s("fidelity", &[], fidelity),
        s("overload", &[], overload),
        s("bad_input", &[], bad_input),
        s(
            "fault_sigkill_worker",
            &[Needs::Durability, Needs::LinuxProcesses],
            fault_sigkill_worker,
        ),
        s(
            "fault_sigstop_worker",
            &[Needs::LinuxProcesses],
            fault_sigstop_worker,
        ),
        s("fault_malformed_frames", &[], fault_malformed_frames),
        s("front_door_limits", &[], front_door::front_door_limits),
        s(
            "fault_soak",
            &[Needs::Durability, Needs::LinuxProcesses],
            soak::fault_soak,
        ),
        s(
            "fault_sigkill_registry",
            &[Needs::LinuxProcesses],
            fault_sigkill_registry,
        ),
        s(
            "secrets_and_files",
            &[Needs::LinuxProcesses],
            secrets::secrets_and_files,
        ),
        s("ws_room", &[], websockets::ws_room),
        s("ws_hibernation", &[], websockets::ws_hibernation),
        s(
            "ws_sigkill_worker",
            &[Needs::Durability, Needs::LinuxProcesses],
            websockets::ws_sigkill_worker,
        ),
        s(
            "ws_planned_move",
            &[Needs::Durability, Needs::LinuxProcesses],
            ws_moves::ws_planned_move,
        ),
        s("ws_batches", &[], ws_batches::ws_batches),
        s("ws_large_message", &[], websockets::ws_large_message),
        s("ws_shutdown", &[], websockets::ws_shutdown),
        s("ws_limits", &[Needs::LinuxProcesses], websockets::ws_limits),
        s(
            "fault_strangers",
            &[Needs::LinuxProcesses],
            strangers::fault_strangers,
        ),
        s("sql_counter", &[], sql::sql_counter),
        s(
            "sql_after_restart",
            &[Needs::Durability],
            sql::sql_after_restart,
        ),
        s(
            "fault_sigkill_sql_worker",
            &[Needs::Durability, Needs::LinuxProcesses],
            sql::fault_sigkill_sql_worker,
        ),
        s("sql_schema_and_types", &[], sql_api::sql_schema_and_types),
        s("sql_refused", &[], sql_api::sql_refused),
        s("sql_limits", &[], sql_api::sql_limits),
        s("sql_rollback", &[], sql_api::sql_rollback),
        s(
            "sql_point_in_time_recovery",
            &[],
            sql_api::sql_point_in_time_recovery,
        ),
        s(
            "sql_restore_after_restart",
            &[Needs::Durability],
            sql_api::sql_restore_after_restart,
        ),
    ]
}

/// The shard of `class`/`name` (S is the worker count of a fresh data dir).
fn shard_of(class: &str, name: &str) -> u32 {
    Namespace::new(class).id_from_name(name).shard(WORKERS)
}

/// The first name `prefix{i}` of `class` that lands on `shard`.
fn name_on(class: &str, prefix: &str, shard: u32) -> String {
    (0..)
        .map(|i| format!("{prefix}{i}"))
        .find(|n| shard_of(class, n) == shard)
        .unwrap_or_default()
}

async fn owner_pid(client: &HttpClient, path: &str) -> Result<u32> {
    client.owner_pid(path).await
}

/// Polls `check` until it is true, for at most `limit`.
async fn eventually(limit: Duration, mut check: impl AsyncFnMut() -> Result<bool>) -> Result<bool> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if check().await? {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    Ok(false)
}

/// Worker 0 as `/_odo/workers` shows it once it is up, with an endpoint,
/// a pid and a shard: a scenario before may have just replaced it.
async fn first_worker(c: &HttpClient) -> Result<serde_json::Value> {
    let mut found = serde_json::Value::Null;
    let up = eventually(Duration::from_secs(30), async || {
        let workers: serde_json::Value =
            serde_json::from_slice(&c.get("/_odo/workers").await?.body)?;
        let worker = &workers[0];
        let ready = worker["endpoint"].is_string()
            && worker["pid"].is_u64()
            && worker["shards"][0].is_u64();
        if ready {
            found = worker.clone();
        }
        Ok(ready)
    })
    .await?;
    ensure!(
        up,
        "worker 0 did not come up with an endpoint and a shard within 30 s"
    );
    Ok(found)
}

scenario!(ids, |w, t| {
    let c = w.client.clone();
    let ns = Namespace::new("COUNTER");
    let id = ns.id_from_name("ids-a").to_string();
    t.post(&c, "/counter/ids-a/increment").await?;
    t.get(&c, &format!("/counter/id:{id}")).await?;
    t.get(&c, &format!("/counter/id:{}", id.to_uppercase()))
        .await?;
    let placement: serde_json::Value =
        serde_json::from_slice(&c.get("/_odo/placement/counter/ids-a").await?.body)?;
    t.fact("placement id matches id_from_name", placement["id"] == id);
    t.fact("placement shard", &placement["shard"]);
    let foreign = Namespace::new("KV").id_from_name("ids-a");
    t.get(&c, &format!("/counter/id:{foreign}")).await?;
    t.get(&c, "/counter/id:0123").await?;
    t.get(&c, &format!("/counter/id:{}", "g".repeat(64)))
        .await?;
    let other_ns = Namespace::new("KV").id_from_name("ids-a").to_string();
    t.fact("same name, other namespace, other id", other_ns != id);
    Ok(())
});

scenario!(storage_list, |w, t| {
    let c = w.client.clone();
    // Mixed case, underscores, non-ASCII (percent-encoded in the URL).
    for key in [
        "a",
        "b",
        "c",
        "d",
        "e",
        "a_b",
        "axb",
        "A_b",
        "%C3%A9t%C3%A9",
        "Z",
        "zz",
    ] {
        t.send(
            &c,
            "PUT",
            &format!("/kv/list/{key}"),
            &[],
            Bytes::from(format!("v-{key}")),
        )
        .await?;
    }
    for query in [
        "",
        "?prefix=a_",
        "?start_after=c&reverse=true",
        "?end=c&reverse=true",
        "?start=b&end=e",
        "?start=b&end=e&reverse=true&limit=2",
        "?limit=3",
        "?limit=3&reverse=true",
        "?prefix=a&limit=1&reverse=true",
        "?start=%C3%A9",
        "?start=a&start_after=a",
        "?limit=0",
        "?reverse=perhaps",
    ] {
        t.get(&c, &format!("/kv/list{query}")).await?;
    }
    t.send(&c, "DELETE", "/kv/list/b", &[], Bytes::new())
        .await?;
    t.send(&c, "DELETE", "/kv/list/b", &[], Bytes::new())
        .await?;
    t.get(&c, "/kv/list/b").await?;
    t.get(&c, "/kv/list?start=a&end=c").await?;
    Ok(())
});

scenario!(transactions, |w, t| {
    let c = w.client.clone();
    t.post(&c, "/probe/tx/tx?fail=1").await?;
    t.get(&c, "/probe/tx/keys").await?;
    t.post(&c, "/probe/tx/tx").await?;
    t.post(&c, "/probe/tx/multi").await?;
    t.get(&c, "/probe/tx/keys").await?;
    Ok(())
});

scenario!(serialisation, |w, t| {
    let c = w.client.clone();
    // As many as the queue holds, so none is refused.
    let calls = (0..QUEUE_DEPTH).map(|_| {
        let c = c.clone();
        async move { c.post("/probe/serial/slow?ms=10").await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let mut values = Vec::new();
    for answer in answers {
        let answer = answer?;
        ensure!(
            answer.status == 200,
            "turns overlapped or failed: {} {}",
            answer.status,
            answer.text()
        );
        values.push(answer.text().parse::<u64>()?);
    }
    values.sort_unstable();
    t.fact(
        &format!("{QUEUE_DEPTH} overlapping requests, each value once"),
        values == (1..=QUEUE_DEPTH).collect::<Vec<_>>(),
    );
    t.get(&c, "/probe/serial/slow").await?;
    Ok(())
});

scenario!(reset_after_failure, |w, t| {
    let c = w.client.clone();
    t.post(&c, "/probe/reset/incr").await?;
    let before = c.get("/probe/reset/whoami").await?.text();
    t.post(&c, "/probe/reset/fail").await.map(|a| a.status)?;
    t.get(&c, "/probe/reset/n").await?;
    t.post(&c, "/probe/reset/panic").await?;
    t.get(&c, "/probe/reset/n").await?;
    let after = c.get("/probe/reset/whoami").await?.text();
    t.fact("a new instance after the reset", before != after);
    t.post(&c, "/probe/reset/incr").await?;
    Ok(())
});

scenario!(rpc_across_workers, |w, t| {
    let c = w.client.clone();
    let caller = name_on("PROBE", "caller", 0);
    let callee = name_on("COUNTER", "callee", 1);
    t.fact("caller", &caller);
    t.fact("callee", &callee);
    let caller_pid = owner_pid(&c, &format!("probe/{caller}")).await?;
    let callee_pid = owner_pid(&c, &format!("counter/{callee}")).await?;
    t.fact("on different workers", caller_pid != callee_pid);
    t.post(&c, &format!("/probe/{caller}/add-to/{callee}?n=5"))
        .await?;
    t.post(&c, &format!("/probe/{caller}/add-to/{callee}?n=7"))
        .await?;
    t.get(&c, &format!("/counter/{callee}")).await?;
    Ok(())
});

scenario!(alarms, |w, t| {
    let c = w.client.clone();
    // Fire.
    t.post(&c, "/probe/al-fire/alarm?in_ms=50").await?;
    let fired = eventually(Duration::from_secs(10), async || {
        Ok(c.get("/probe/al-fire/alarm")
            .await?
            .text()
            .contains("fired=1"))
    })
    .await?;
    t.fact("fired", fired);
    t.get(&c, "/probe/al-fire/alarm").await?;
    // Replace: an alarm an hour away, then one 50 ms away: it fires once.
    t.post(&c, "/probe/al-replace/alarm?in_ms=3600000").await?;
    t.post(&c, "/probe/al-replace/alarm?in_ms=50").await?;
    let fired = eventually(Duration::from_secs(10), async || {
        Ok(c.get("/probe/al-replace/alarm")
            .await?
            .text()
            .contains("fired=1"))
    })
    .await?;
    t.fact("replaced alarm fired", fired);
    t.get(&c, "/probe/al-replace/alarm").await?;
    // Delete.
    t.post(&c, "/probe/al-delete/alarm?in_ms=200").await?;
    t.send(&c, "DELETE", "/probe/al-delete/alarm", &[], Bytes::new())
        .await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    t.get(&c, "/probe/al-delete/alarm").await?;
    // Retry: fails twice, succeeds on its second retry.
    t.post(&c, "/probe/al-retry/alarm?in_ms=10&fail=2").await?;
    let fired = eventually(Duration::from_secs(15), async || {
        Ok(c.get("/probe/al-retry/alarm")
            .await?
            .text()
            .contains("fired=1"))
    })
    .await?;
    t.fact("fired after two failures", fired);
    t.get(&c, "/probe/al-retry/alarm").await?;
    Ok(())
});

scenario!(alarm_after_restart, |w, t| {
    t.post(&w.client.clone(), "/probe/al-restart/alarm?in_ms=1500")
        .await?;
    t.post(&w.client.clone(), "/counter/al-restart/increment")
        .await?;
    w.restart()?;
    let c = w.client.clone();
    // No request touches the object until its alarm has fired; the
    // placement endpoint does not wake objects.
    let started = Instant::now();
    let mut fired = false;
    while started.elapsed() < Duration::from_secs(15) {
        tokio::time::sleep(Duration::from_millis(200)).await;
        let metrics = c.get("/_odo/metrics").await?.text();
        let turns: u64 = metrics
            .lines()
            .filter(|l| l.starts_with("odo_commit_turns_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
            .sum();
        if turns > 0 {
            fired = true;
            break;
        }
    }
    t.fact("a commit happened with no request (the alarm)", fired);
    t.get(&c, "/probe/al-restart/alarm").await?;
    t.get(&c, "/counter/al-restart").await?;
    Ok(())
});

scenario!(eviction, |w, t| {
    let c = w.client.clone();
    t.post(&c, "/probe/evict/incr").await?;
    t.post(&c, "/probe/evict/incr").await?;
    let first = c.get("/probe/evict/whoami").await?.text();
    // Idle for well over the idle timeout.
    tokio::time::sleep(Duration::from_millis(IDLE_MS * 3)).await;
    let second = c.get("/probe/evict/whoami").await?.text();
    t.fact("evicted and reactivated", first != second);
    t.get(&c, "/probe/evict/n").await?;
    Ok(())
});

scenario!(fidelity, |w, t| {
    let c = w.client.clone();
    let path = "/probe/echo/echo?b=2&a=1&a=%20x&empty=&q=%E2%9C%93";
    let answer = t
        .send(
            &c,
            "POST",
            path,
            &[("x-a", "1"), ("x-a", "2"), ("x-b", "three")],
            "hello",
        )
        .await?;
    t.fact("x-echo-a", answer.header("x-echo-a").join(","));
    t.fact("x-echo-b", answer.header("x-echo-b").join(","));
    t.fact("uri untouched", answer.header("x-uri").join(",") == path);
    let body: Vec<u8> = (0..1024 * 1024u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
        .collect();
    let answer = c.send("PUT", "/probe/echo/echo", &[], body.clone()).await?;
    t.fact("1 MiB binary body status", answer.status);
    t.fact(
        "1 MiB binary body identical",
        answer.body.as_ref() == body.as_slice(),
    );
    t.fact("method", answer.header("x-method").join(","));
    Ok(())
});

scenario!(overload, |w, t| {
    let c = w.client.clone();
    let calls = (0..QUEUE_DEPTH * 4).map(|_| {
        let c = c.clone();
        async move { c.post("/probe/busy/slow?ms=100").await }
    });
    let answers = futures_util::future::join_all(calls).await;
    let (mut ok, mut refused, mut retry_after) = (0, 0, true);
    for answer in answers {
        let answer = answer?;
        match answer.status {
            200 => ok += 1,
            503 => {
                refused += 1;
                retry_after &= answer.header("retry-after") == ["1"];
            }
            other => return Err(anyhow!("unexpected status {other}")),
        }
    }
    t.figure("accepted", ok);
    t.figure("refused", refused);
    t.fact("some accepted", ok > 0);
    t.fact("some refused at once", refused > 0);
    t.fact("refusals carry Retry-After", retry_after);
    Ok(())
});

scenario!(bad_input, |w, t| {
    let c = w.client.clone();
    t.get(&c, "/nope/x").await?;
    t.get(&c, &format!("/counter/{}", "n".repeat(300))).await?;
    t.get(&c, "/counter/").await?;
    let big = Bytes::from(vec![1u8; 1024 * 1024 + 1]);
    t.send(&c, "PUT", "/kv/bad/k", &[], big).await?;
    t.send(
        &c,
        "PUT",
        "/kv/bad/k",
        &[],
        Bytes::from(vec![1u8; 129 * 1024]),
    )
    .await?;
    t.send(
        &c,
        "PUT",
        &format!("/kv/bad/{}", "k".repeat(2049)),
        &[],
        "v",
    )
    .await?;
    t.get(&c, "/_odo/nothing").await?;
    // Malformed HTTP closes that connection only.
    let addr = w
        .server
        .as_ref()
        .map(|s| s.base.trim_start_matches("http://").to_owned())
        .unwrap_or_default();
    let closed = tokio::task::spawn_blocking(move || -> Result<bool> {
        use std::io::{Read, Write};
        let mut raw = std::net::TcpStream::connect(&addr)?;
        raw.set_read_timeout(Some(Duration::from_secs(5)))?;
        raw.write_all(b"\x00\x01\x02 not http at all\r\n\r\n")?;
        let mut rest = Vec::new();
        let _ = raw.read_to_end(&mut rest);
        Ok(rest.is_empty() || rest.starts_with(b"HTTP/1.1 400"))
    })
    .await??;
    t.fact("malformed HTTP closed its connection", closed);
    t.get(&c, "/hello").await?;
    Ok(())
});

/// One load task: the values it got acknowledged, and its failed answers.
type LoadClient = tokio::task::JoinHandle<Result<(Vec<u64>, u64)>>;

/// Whether a failed answer says what a client may do: 503 (never
/// delivered) marked retryable, 502 (outcome unknown) marked not.
fn says_whether_to_retry(answer: &crate::http::Answer) -> bool {
    match answer.status {
        503 => answer.header("x-odo-retryable") == ["true"],
        502 => answer.header("x-odo-retryable") == ["false"],
        _ => false,
    }
}

/// Increments `path` from `clients` tasks until `stop`; returns the values
/// acknowledged and how many failed (503: never delivered; 502: the worker
/// died with it, outcome unknown), each saying whether a retry is safe.
fn load(c: &HttpClient, path: &str, clients: usize, stop: Arc<AtomicBool>) -> Vec<LoadClient> {
    (0..clients)
        .map(|_| {
            let c = c.clone();
            let stop = stop.clone();
            let path = path.to_owned();
            tokio::spawn(async move {
                let (mut acked, mut failed) = (Vec::new(), 0);
                while !stop.load(Ordering::SeqCst) {
                    let answer = c.post(&path).await?;
                    match answer.status {
                        200 => acked.push(answer.text().parse::<u64>()?),
                        502 | 503 if says_whether_to_retry(&answer) => failed += 1,
                        other => {
                            return Err(anyhow!(
                                "unexpected {other} {:?}: {}",
                                answer.headers,
                                answer.text()
                            ));
                        }
                    }
                }
                Ok((acked, failed))
            })
        })
        .collect()
}

scenario!(fault_sigkill_worker, |w, t| {
    kill_under_load(&w.client.clone(), t, "counter/victim").await
});

/// Increments the counter at `/{counter}` from several clients, SIGKILLs
/// the worker that holds it, and checks that it is served again by
/// another process with every acknowledged increment kept and none
/// acknowledged twice.
async fn kill_under_load(c: &HttpClient, t: &mut Transcript, counter: &str) -> Result<()> {
    let increment = format!("/{counter}/increment");
    let read = format!("/{counter}");
    c.post(&increment).await?;
    let victim = owner_pid(c, counter).await?;
    let stop = Arc::new(AtomicBool::new(false));
    // Half the per-object queue: with the progress reads below, the object's
    // queue never fills, so every refusal counted is the kill's doing.
    let clients = load(c, &increment, (QUEUE_DEPTH / 2) as usize, stop.clone());
    loop {
        let answer = c.get(&read).await?;
        ensure!(
            answer.status == 200,
            "reading the counter before the kill: {} {}",
            answer.status,
            answer.text()
        );
        if answer.text().parse::<u64>()? >= 100 {
            break;
        }
        tokio::task::yield_now().await;
    }
    signal(victim, Signal::Kill)?;
    let killed = Instant::now();
    let back = eventually(Duration::from_secs(10), async || {
        Ok(c.get(&read).await?.status == 200 && owner_pid(c, counter).await? != victim)
    })
    .await?;
    let recovery = killed.elapsed();
    tokio::time::sleep(Duration::from_millis(100)).await;
    stop.store(true, Ordering::SeqCst);
    let (mut acked, mut failed) = (vec![1u64], 0u64);
    for client in clients {
        let (values, refused) = client.await??;
        acked.extend(values);
        failed += refused;
    }
    let final_value: u64 = c.get(&read).await?.text().parse()?;
    let distinct: HashSet<u64> = acked.iter().copied().collect();
    let lost = acked.iter().filter(|&&v| v > final_value).count();
    t.figure("requests", acked.len() as u64 + failed);
    t.figure("acknowledged", acked.len());
    t.figure("failed", failed);
    t.figure("lost", lost);
    t.figure("recovery_ms", recovery.as_millis());
    t.fact("served again", back);
    t.fact(
        "no acknowledged write lost",
        lost == 0 && final_value >= acked.len() as u64,
    );
    t.fact(
        "no value acknowledged twice (one live instance)",
        distinct.len() == acked.len(),
    );
    t.fact("back within 2 s", recovery < Duration::from_secs(2));
    Ok(())
}

scenario!(fault_sigstop_worker, |w, t| {
    let c = w.client.clone();
    t.post(&c, "/counter/frozen/increment").await?;
    let frozen = owner_pid(&c, "counter/frozen").await?;
    // Outside Linux the stop cannot be watched: should the frozen worker
    // still answer the first request, "by another process" comes out false
    // and fails the cell.
    stop_process(frozen).await?;
    let stopped = Instant::now();
    let answer = loop {
        let answer = c.post("/counter/frozen/increment").await?;
        if answer.status == 200 || stopped.elapsed() > Duration::from_secs(15) {
            break answer;
        }
    };
    t.figure("recovery_ms", stopped.elapsed().as_millis());
    t.fact("served again", answer.status == 200);
    t.fact(
        "by another process",
        owner_pid(&c, "counter/frozen").await? != frozen,
    );
    let dead = eventually(Duration::from_secs(5), async || Ok(!process_alive(frozen))).await?;
    t.fact("the stopped worker was killed", dead);
    Ok(())
});

scenario!(fault_malformed_frames, |w, t| {
    let c = w.client.clone();
    t.post(&c, "/counter/frames/increment").await?;
    let worker = first_worker(&c).await?;
    let endpoint = worker["endpoint"]
        .as_str()
        .context("a worker endpoint")?
        .to_owned();
    let pid = worker["pid"].as_u64().context("a worker pid")? as u32;
    let refused = tokio::task::spawn_blocking(move || -> Result<bool> {
        use std::io::{Read, Write};
        let garbage = b"\x00\x00\x00\x10this is not a frame at all";
        let mut rest = Vec::new();
        if let Some(path) = endpoint.strip_prefix("unix:") {
            #[cfg(unix)]
            {
                let mut s = std::os::unix::net::UnixStream::connect(path)?;
                s.set_read_timeout(Some(Duration::from_secs(10)))?;
                s.write_all(garbage)?;
                let _ = s.read_to_end(&mut rest);
            }
            #[cfg(not(unix))]
            let _ = path;
        } else if let Some(addr) = endpoint.strip_prefix("tcp:") {
            let mut s = std::net::TcpStream::connect(addr)?;
            s.set_read_timeout(Some(Duration::from_secs(10)))?;
            s.write_all(garbage)?;
            let _ = s.read_to_end(&mut rest);
        }
        // Closed without a welcome: nothing but possibly a refusal frame.
        Ok(!rest.windows(7).any(|w| w == b"Welcome"))
    })
    .await??;
    t.fact("the worker closed the connection", refused);
    t.fact("the worker is unaffected", process_alive(pid));
    t.post(&c, "/counter/frames/increment").await?;
    Ok(())
});

fn children_of(parent: u32) -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
                stat.rsplit(')')
                    .next()
                    .and_then(|rest| rest.split_whitespace().nth(1)?.parse::<u32>().ok())
                    == Some(parent)
            })
        })
        .collect()
}

scenario!(fault_sigkill_registry, |w, t| {
    // Its own topology: this one is killed.
    let world = World::start(w.spec.binary.clone(), &w.backend, &w.transport)?;
    let workers = children_of(world.server_pid());
    t.fact("workers", workers.len());
    let server = world.server_pid();
    signal(server, Signal::Kill)?;
    let killed = Instant::now();
    let gone = eventually(Duration::from_secs(2), async || {
        Ok(workers.iter().all(|&p| !process_alive(p)))
    })
    .await?;
    t.figure("exit_ms", killed.elapsed().as_millis());
    t.fact("no orphan workers within 2 s", gone);
    drop(world);
    Ok(())
});
