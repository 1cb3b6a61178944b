//! The server the black-box tests and the multi-process harness run: the
//! demo app of `odo serve` (Counter, Kv) plus a `Probe` class that provokes
//! what the scenarios need (failing handlers, slow turns, transactions,
//! alarms that fail, calls between objects, echoes), with one more storage
//! backend than odo's own: `logfile` (`odo_tests::backend`), and a
//! SQLite-backed `SqlProbe` (`odo_tests::sqlprobe`) that drives the SQL API
//! from outside.
//!
//! `ODO_TEST_IDLE_MS` sets the runtime's idle timeout (eviction scenarios);
//! `ODO_TEST_QUEUE_DEPTH` its per-object queue depth (overload scenarios);
//! `ODO_TEST_WS_PER_OBJECT` the WebSockets one object may accept;
//! `ODO_TEST_SQL_MAX_DATABASE_BYTES` the largest database of a SQLite-backed
//! object and `ODO_TEST_SQL_MAX_STATEMENT_MS` the longest statement
//! (`RuntimeConfig::sql`, which reaches every worker).

use std::process::ExitCode;
use std::time::Duration;

use bytes::Bytes;
use http::{Method, StatusCode};
use odo::{
    AlarmInfo, ClassStorage, Context, DurableObject, ObjectError, Request, Response, RuntimeConfig,
};

fn reply(status: StatusCode, body: impl Into<Bytes>) -> Response {
    let mut response = Response::new(body.into());
    *response.status_mut() = status;
    response
}

fn param(request: &Request, name: &str) -> Option<String> {
    let query = request.uri().query()?;
    form_urlencoded::parse(query.as_bytes())
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

fn number(request: &Request, name: &str) -> u64 {
    param(request, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// Routes under `/probe/{name}`.
struct Probe;

async fn get_u64(ctx: &mut Context, key: &str) -> Result<u64, ObjectError> {
    Ok(ctx.storage().get_typed::<u64>(key).await?.unwrap_or(0))
}

impl DurableObject for Probe {
    fn create(_: &Context) -> Self {
        Probe
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let path: Vec<String> = request
            .uri()
            .path()
            .split('/')
            .skip(3)
            .map(str::to_owned)
            .collect();
        let path: Vec<&str> = path.iter().map(String::as_str).collect();
        match (request.method().clone(), path.as_slice()) {
            // Echo: status 200, the request's headers back as x-echo-*
            // (repeats kept), the body back, and the URI in x-uri.
            (_, ["echo"]) => {
                let mut response = reply(StatusCode::OK, request.body().clone());
                let headers = response.headers_mut();
                for (name, value) in request.headers() {
                    if let Some(suffix) = name.as_str().strip_prefix("x-")
                        && let Ok(echo) =
                            http::HeaderName::from_bytes(format!("x-echo-{suffix}").as_bytes())
                    {
                        headers.append(echo, value.clone());
                    }
                }
                if let Ok(uri) = http::HeaderValue::from_str(&request.uri().to_string()) {
                    headers.insert("x-uri", uri);
                }
                headers.insert(
                    "x-method",
                    http::HeaderValue::from_str(request.method().as_str())
                        .unwrap_or(http::HeaderValue::from_static("?")),
                );
                Ok(response)
            }
            (Method::POST, ["fail"]) => {
                let n = get_u64(ctx, "n").await?;
                ctx.storage().put_typed("n", &(n + 1000)).await?;
                Err(ObjectError::msg("failing on purpose"))
            }
            (Method::POST, ["panic"]) => {
                ctx.storage().put_typed("n", &999u64).await?;
                panic!("panicking on purpose");
            }
            (Method::POST, ["incr"]) => {
                let n = get_u64(ctx, "n").await? + 1;
                ctx.storage().put_typed("n", &n).await?;
                Ok(reply(StatusCode::OK, n.to_string()))
            }
            (Method::GET, ["n"]) => Ok(reply(StatusCode::OK, get_u64(ctx, "n").await?.to_string())),
            (Method::GET, ["slow"]) => Ok(reply(
                StatusCode::OK,
                get_u64(ctx, "slow").await?.to_string(),
            )),
            // A slow turn that records when it started and ended, to show
            // that turns of one object never overlap.
            (Method::POST, ["slow"]) => {
                let log_in = get_u64(ctx, "inside").await?;
                if log_in != 0 {
                    return Ok(reply(StatusCode::CONFLICT, "two turns overlapped"));
                }
                ctx.storage().put_typed("inside", &1u64).await?;
                tokio::time::sleep(Duration::from_millis(number(&request, "ms"))).await;
                ctx.storage().put_typed("inside", &0u64).await?;
                let n = get_u64(ctx, "slow").await? + 1;
                ctx.storage().put_typed("slow", &n).await?;
                Ok(reply(StatusCode::OK, n.to_string()))
            }
            // put_many of a..e, atomically; or a transaction that writes
            // then fails half way.
            (Method::POST, ["multi"]) => {
                let entries: Vec<(String, Bytes)> = ["a", "b", "c", "d", "e"]
                    .iter()
                    .map(|k| (format!("m/{k}"), Bytes::from(k.to_uppercase())))
                    .collect();
                ctx.storage().put_many(entries).await?;
                Ok(reply(StatusCode::OK, "ok"))
            }
            (Method::POST, ["tx"]) => {
                let fail = param(&request, "fail").is_some();
                let result: Result<(), ObjectError> = ctx
                    .storage()
                    .transaction(async |tx| {
                        tx.put("t/1", Bytes::from_static(b"one")).await?;
                        tx.put("t/2", Bytes::from_static(b"two")).await?;
                        if fail {
                            return Err(ObjectError::msg("transaction aborted half way"));
                        }
                        Ok(())
                    })
                    .await;
                match result {
                    Ok(()) => Ok(reply(StatusCode::OK, "committed")),
                    Err(e) => Ok(reply(StatusCode::OK, format!("rolled back: {e}"))),
                }
            }
            (Method::GET, ["keys"]) => {
                let entries = ctx.storage().list(&odo::ListOptions::default()).await?;
                let keys: Vec<String> = entries
                    .into_iter()
                    .filter(|(k, _)| k.starts_with("m/") || k.starts_with("t/"))
                    .map(|(k, v)| format!("{k}={}", String::from_utf8_lossy(&v)))
                    .collect();
                Ok(reply(StatusCode::OK, keys.join(",")))
            }
            // An alarm in `in_ms` whose handler fails its first `fail` runs.
            (Method::POST, ["alarm"]) => {
                ctx.storage()
                    .put_typed("alarm_fail", &number(&request, "fail"))
                    .await?;
                let at = odo_worker::now_ms() + number(&request, "in_ms");
                ctx.storage().set_alarm(at).await?;
                Ok(reply(StatusCode::OK, "set"))
            }
            (Method::DELETE, ["alarm"]) => {
                ctx.storage().delete_alarm().await?;
                Ok(reply(StatusCode::OK, "deleted"))
            }
            (Method::GET, ["alarm"]) => {
                let pending = ctx.storage().get_alarm().await?.is_some();
                let fired = get_u64(ctx, "alarm_runs").await?;
                let retry = get_u64(ctx, "alarm_retry").await?;
                Ok(reply(
                    StatusCode::OK,
                    format!("pending={pending} fired={fired} last_retry={retry}"),
                ))
            }
            // Calls COUNTER `other`'s `add` RPC: usually another worker.
            (Method::POST, ["add-to", other]) => {
                let stub = ctx.namespace("COUNTER").get_by_name(other);
                let total: u64 = ctx.call(&stub, "add", &number(&request, "n")).await?;
                Ok(reply(StatusCode::OK, total.to_string()))
            }
            // `relay/a/b/...`: fetch `/probe/a/relay/b/...`; an empty rest
            // answers where the chain ended and the deadline left there,
            // `hang` never answers. A failed call is answered as text. With
            // `?pause_ms=N` the first object waits N ms before its call.
            (_, ["relay", rest @ ..]) => match rest
                .iter()
                .copied()
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .as_slice()
            {
                [] => Ok(reply(
                    StatusCode::OK,
                    format!(
                        "end at {} with {} ms left",
                        ctx.name().unwrap_or("?"),
                        ctx.remaining().as_millis()
                    ),
                )),
                ["hang"] => std::future::pending().await,
                [next, more @ ..] => {
                    tokio::time::sleep(Duration::from_millis(number(&request, "pause_ms"))).await;
                    let stub = ctx.namespace("PROBE").get_by_name(next);
                    let uri = format!("/probe/{next}/relay/{}", more.join("/"));
                    let request = http::Request::builder()
                        .method(Method::POST)
                        .uri(uri)
                        .body(Bytes::new())
                        .map_err(ObjectError::msg)?;
                    match ctx.fetch(&stub, request).await {
                        Ok(response) => Ok(response),
                        Err(e) => Ok(reply(StatusCode::OK, format!("call failed: {e}"))),
                    }
                }
            },
            // Writes m/before, calls COUNTER `other` (committing m/before
            // first), writes m/after, then fails: m/before stays.
            (Method::POST, ["partial", other]) => {
                ctx.storage()
                    .put("m/before", Bytes::from_static(b"1"))
                    .await?;
                let stub = ctx.namespace("COUNTER").get_by_name(other);
                let _: u64 = ctx.call(&stub, "add", &1u64).await?;
                ctx.storage()
                    .put("m/after", Bytes::from_static(b"1"))
                    .await?;
                Err(ObjectError::msg("failing after a call"))
            }
            // Never returns from its poll: an endless loop in object code.
            (Method::POST, ["spin"]) => loop {
                std::hint::spin_loop();
            },
            (Method::GET, ["whoami"]) => Ok(reply(
                StatusCode::OK,
                format!("{} {}", std::process::id(), ctx.activation()),
            )),
            // The environment a program started by object code inherits:
            // `env`'s output (secrets tests).
            (Method::GET, ["child-env"]) => {
                let output = tokio::process::Command::new("env")
                    .stdin(std::process::Stdio::null())
                    .output()
                    .await
                    .map_err(|e| ObjectError::msg(format!("cannot run env: {e}")))?;
                Ok(reply(StatusCode::OK, output.stdout))
            }
            // A WebSocket with the tags `tag=...` (see `websocket_message`).
            (Method::GET, ["ws"]) => {
                let tags: Vec<String> = request
                    .uri()
                    .query()
                    .map(|q| {
                        form_urlencoded::parse(q.as_bytes())
                            .filter(|(k, _)| k == "tag")
                            .map(|(_, v)| v.into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                match ctx.accept_websocket(tags) {
                    Ok(response) => Ok(response),
                    Err(e) => Ok(reply(StatusCode::BAD_REQUEST, format!("{e}\n"))),
                }
            }
            // What the object's WebSocket events left: one line each.
            (Method::GET, ["wslog"]) => {
                let options = odo::ListOptions {
                    prefix: Some("wslog/".into()),
                    ..Default::default()
                };
                let mut out = String::new();
                for (_, line) in ctx.storage().list(&options).await? {
                    out.push_str(&String::from_utf8_lossy(&line));
                    out.push('\n');
                }
                Ok(reply(StatusCode::OK, out))
            }
            _ => Ok(reply(StatusCode::NOT_FOUND, "no such probe route")),
        }
    }

    /// Commands over the socket: `whoami` (the activation), `attach:V`
    /// (keeps V with the socket), `list` (every socket's tags and
    /// attachment, in order), `sockets` (how many), `count:T` (sockets
    /// tagged T), `auto:Q=R`
    /// (the auto-response pair), `autots` (whether this socket's
    /// auto-response was answered), `flood:N` (N messages of 64 KiB to
    /// this socket), `broadcast:N` (N of them to every socket, then
    /// `done`), `close` (closes it, 4000), `waitfile:PATH` (makes
    /// `PATH.started`, then the turn lasts until PATH exists), `put:K` (stores `ws/K`), `fail:K` (stores
    /// `ws/K`, sends, then fails: neither survives), `has:K`; a binary
    /// message comes back as it is.
    async fn websocket_message(
        &mut self,
        ctx: &mut Context,
        ws: odo::WebSocket,
        message: odo::WebSocketMessage,
    ) -> Result<(), ObjectError> {
        let text = match message {
            odo::WebSocketMessage::Binary(bytes) => {
                ws.send(bytes)?;
                return Ok(());
            }
            odo::WebSocketMessage::Text(text) => text,
        };
        let answer = if text == "whoami" {
            ctx.activation().to_string()
        } else if let Some(value) = text.strip_prefix("attach:") {
            ws.serialize_attachment(&value.to_owned())?;
            "attached".to_owned()
        } else if text == "list" {
            let mut rows = Vec::new();
            for socket in ctx.websockets(None) {
                let attachment: Option<String> = socket.deserialize_attachment()?;
                rows.push(format!(
                    "{}={}",
                    ctx.tags(&socket).join("+"),
                    attachment.unwrap_or_default()
                ));
            }
            rows.join(",")
        } else if text == "sockets" {
            ctx.websockets(None).len().to_string()
        } else if let Some(tag) = text.strip_prefix("count:") {
            ctx.websockets(Some(tag)).len().to_string()
        } else if let Some(pair) = text.strip_prefix("auto:") {
            let (request, response) = pair.split_once('=').unwrap_or((pair, ""));
            ctx.set_websocket_auto_response(request, response)?;
            "auto set".to_owned()
        } else if text == "autots" {
            format!("answered={}", ctx.auto_response_timestamp(&ws).is_some())
        } else if let Some(count) = text.strip_prefix("flood:") {
            // `count` messages of 64 KiB each, for a client that stops
            // reading.
            let chunk = "x".repeat(64 * 1024);
            for _ in 0..count.parse::<usize>().unwrap_or(0) {
                ws.send(chunk.as_str())?;
            }
            return Ok(());
        } else if let Some(count) = text.strip_prefix("broadcast:") {
            // `count` messages of 64 KiB each to every socket of the
            // object, then `done` to every socket: a flood for clients
            // that stop reading among ones that read.
            let chunk = "x".repeat(64 * 1024);
            let sockets = ctx.websockets(None);
            for _ in 0..count.parse::<usize>().unwrap_or(0) {
                for socket in &sockets {
                    socket.send(chunk.as_str())?;
                }
            }
            for socket in &sockets {
                socket.send("done")?;
            }
            return Ok(());
        } else if text == "close" {
            ws.close(4000, "asked to")?;
            return Ok(());
        } else if let Some(path) = text.strip_prefix("waitfile:") {
            // Makes `PATH.started`, then runs until the test makes `path`
            // (at most 30 s): what the object's sockets send meanwhile
            // queues at the door.
            std::fs::write(format!("{path}.started"), b"")
                .map_err(|e| ObjectError::msg(format!("waitfile: {e}")))?;
            let start = std::time::Instant::now();
            while !std::path::Path::new(path).exists() {
                if start.elapsed() > std::time::Duration::from_secs(30) {
                    return Err(ObjectError::msg("waitfile: the file never came"));
                }
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            "released".to_owned()
        } else if let Some(key) = text.strip_prefix("put:") {
            ctx.storage()
                .put(&format!("ws/{key}"), Bytes::from_static(b"1"))
                .await?;
            format!("stored {key}")
        } else if let Some(key) = text.strip_prefix("fail:") {
            // Written, then refused: the turn's write is rolled back and
            // it sends nothing.
            ctx.storage()
                .put(&format!("ws/{key}"), Bytes::from_static(b"1"))
                .await?;
            ws.send(format!("never sent {key}"))?;
            return Err(ObjectError::msg("failing on purpose"));
        } else if let Some(key) = text.strip_prefix("has:") {
            let stored = ctx.storage().get(&format!("ws/{key}")).await?.is_some();
            format!("{key} stored: {}", if stored { "yes" } else { "no" })
        } else {
            format!("unknown command {text:?}")
        };
        ws.send(answer)?;
        Ok(())
    }

    async fn websocket_close(
        &mut self,
        ctx: &mut Context,
        _ws: odo::WebSocket,
        code: u16,
        _reason: String,
        was_clean: bool,
    ) -> Result<(), ObjectError> {
        let left = ctx.websockets(None).len();
        ws_log(ctx, format!("close {code} clean={was_clean} left={left}")).await
    }

    async fn websocket_error(
        &mut self,
        ctx: &mut Context,
        _ws: odo::WebSocket,
        _error: String,
    ) -> Result<(), ObjectError> {
        let left = ctx.websockets(None).len();
        ws_log(ctx, format!("error left={left}")).await
    }

    async fn alarm(&mut self, ctx: &mut Context, alarm: AlarmInfo) -> Result<(), ObjectError> {
        let fail = get_u64(ctx, "alarm_fail").await?;
        if u64::from(alarm.retry_count) < fail {
            return Err(ObjectError::msg("alarm failing on purpose"));
        }
        let runs = get_u64(ctx, "alarm_runs").await? + 1;
        ctx.storage().put_typed("alarm_runs", &runs).await?;
        ctx.storage()
            .put_typed("alarm_retry", &u64::from(alarm.retry_count))
            .await?;
        Ok(())
    }
}

/// Appends `line` to the object's WebSocket log.
async fn ws_log(ctx: &mut Context, line: String) -> Result<(), ObjectError> {
    let n = get_u64(ctx, "wslog_n").await? + 1;
    ctx.storage().put_typed("wslog_n", &n).await?;
    ctx.storage()
        .put(&format!("wslog/{n:08}"), Bytes::from(line))
        .await?;
    Ok(())
}

fn env_u64(name: &str) -> Option<u64> {
    std::env::var(name).ok().and_then(|v| v.parse().ok())
}

fn main() -> ExitCode {
    let mut runtime = RuntimeConfig::default();
    if let Some(ms) = env_u64("ODO_TEST_IDLE_MS") {
        runtime.idle_timeout = Duration::from_millis(ms);
    }
    if let Some(max) = env_u64("ODO_TEST_WS_PER_OBJECT") {
        runtime.websocket_max_sockets_per_object = max as usize;
    }
    if let Some(depth) = env_u64("ODO_TEST_QUEUE_DEPTH") {
        runtime.queue_depth = depth as usize;
    }
    if let Some(bytes) = env_u64("ODO_TEST_SQL_MAX_DATABASE_BYTES") {
        runtime.sql.max_database_bytes = bytes;
    }
    if let Some(ms) = env_u64("ODO_TEST_SQL_MAX_STATEMENT_MS") {
        runtime.sql.max_statement_ms = ms;
    }
    // Failing alarms are retried quickly so scenarios stay short.
    runtime.alarm_retry.first_delay = Duration::from_millis(50);
    // The `sqlite` cell: every class SQLite-backed, on fjall.
    let args: Vec<String> = std::env::args().collect();
    let storage = if odo_tests::sqlite_cell::chosen(&args) {
        ClassStorage::Sqlite
    } else {
        ClassStorage::KeyValue
    };
    odo::demo_app_on(storage)
        .class_as("probe", "PROBE", storage, Probe::create)
        .sqlite_class::<odo_tests::sqlprobe::SqlProbe>("sqlprobe", "SQL_PROBE")
        // A backend from outside odo's crates (the harness's
        // `test_server_backends` lists what this server offers).
        .backend(odo_tests::backend::LogFileFactory)
        .backend(odo_tests::sqlite_cell::SqliteCellFactory::default())
        .runtime(runtime)
        .main()
}
