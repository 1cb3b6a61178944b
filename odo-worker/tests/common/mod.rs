//! The class, harness and helpers the runtime tests share.

#![allow(dead_code, unused_imports)] // each test file uses part of it

pub(crate) use std::sync::atomic::{AtomicUsize, Ordering};
pub(crate) use std::sync::{Arc, Mutex};
pub(crate) use std::time::Duration;

pub(crate) use bytes::Bytes;
pub(crate) use futures_util::FutureExt;
pub(crate) use odo_core::WireError;
pub(crate) use odo_storage::conformance::CommitValve;
pub(crate) use odo_storage::{
    Backend, FjallBackend, FjallOptions, MemoryBackend, Store, StoreOptions,
};
pub(crate) use odo_worker::{
    AlarmInfo, AlarmRetry, Classes, Context, DurableObject, ObjectAddress, ObjectError, Request,
    Response, RpcCall, RpcReply, Runtime, RuntimeConfig, now_ms,
};
pub(crate) use tokio::sync::{Notify, mpsc};

/// What objects report to the test.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Note {
    Start(u64),
    End(u64),
    Alarm(u64, u32),
    Init,
    /// A `wait_until` task ran.
    Background(u64),
}

/// Shared by the test and every instance.
#[derive(Default)]
pub(crate) struct Env {
    pub(crate) notes: Mutex<Vec<Note>>,
    pub(crate) alarm_tx: Mutex<Option<mpsc::UnboundedSender<Note>>>,
    /// Handlers of `/block` wait on this.
    pub(crate) unblock: Notify,
    pub(crate) blocked: Notify,
    /// Alarm handlers fail this many times before succeeding.
    pub(crate) alarm_failures: AtomicUsize,
    pub(crate) background_release: Notify,
}

impl Env {
    pub(crate) fn note(&self, note: Note) {
        self.notes.lock().unwrap().push(note.clone());
        if let Some(tx) = self.alarm_tx.lock().unwrap().as_ref() {
            let _ = tx.send(note);
        }
    }
}

pub(crate) struct Counter {
    pub(crate) env: Arc<Env>,
}

pub(crate) async fn count(ctx: &mut Context) -> Result<u64, ObjectError> {
    Ok(ctx.storage().get_typed::<u64>("n").await?.unwrap_or(0))
}

pub(crate) fn text(s: impl ToString) -> Response {
    Response::new(Bytes::from(s.to_string()))
}

impl DurableObject for Counter {
    fn create(_: &Context) -> Self {
        unreachable!("registered with a factory")
    }

    async fn init(&mut self, ctx: &mut Context) -> Result<(), ObjectError> {
        if ctx.name() == Some("bad-init") {
            return Err(ObjectError::msg("init refuses"));
        }
        self.env.note(Note::Init);
        Ok(())
    }

    async fn fetch(&mut self, ctx: &mut Context, req: Request) -> Result<Response, ObjectError> {
        let path = req.uri().path().to_owned();
        match path.as_str() {
            "/increment" => {
                let n = count(ctx).await? + 1;
                self.env.note(Note::Start(n));
                // A suspension point inside the turn: another event must not
                // run here.
                tokio::task::yield_now().await;
                ctx.storage().put_typed("n", &n).await?;
                self.env.note(Note::End(n));
                Ok(text(n))
            }
            "/get" => Ok(text(count(ctx).await?)),
            "/whoami" => Ok(text(ctx.activation())),
            "/panic" => {
                ctx.storage().put_typed("n", &1000u64).await?;
                panic!("boom");
            }
            "/fail" => {
                ctx.storage().put_typed("n", &1000u64).await?;
                Err(ObjectError::msg("refused"))
            }
            "/block" => {
                let unblock = self.env.unblock.notified();
                self.env.blocked.notify_one();
                unblock.await;
                Ok(text("unblocked"))
            }
            "/alarm" => {
                let at: u64 = req
                    .uri()
                    .query()
                    .unwrap_or("0")
                    .parse()
                    .map_err(ObjectError::msg)?;
                ctx.storage().set_alarm(at).await?;
                Ok(text("set"))
            }
            "/alarm-delete" => {
                ctx.storage().delete_alarm().await?;
                Ok(text("deleted"))
            }
            "/alarm-get" => Ok(text(format!("{:?}", ctx.storage().get_alarm().await?))),
            "/background" => {
                let env = self.env.clone();
                ctx.wait_until(async move { env.background_release.notified().await });
                Ok(text("started"))
            }
            "/add-to-other" => {
                let other = ctx.namespace("COUNTER").get_by_name("other");
                let total: u64 = ctx.call(&other, "add", &5u64).await?;
                Ok(text(total))
            }
            "/ungated" => {
                let other = ctx.namespace("COUNTER").get_by_name("other");
                match other.call::<u64, u64>("add", &1).await {
                    Err(e) => Ok(text(e)),
                    Ok(_) => Ok(text("the gate was bypassed")),
                }
            }
            // Writes `before`, calls `other` (which commits `before` first),
            // writes `after`, then fails.
            "/partial" => {
                ctx.storage().put("before", "1").await?;
                let other = ctx.namespace("COUNTER").get_by_name("other");
                let _: u64 = ctx.call(&other, "add", &1u64).await?;
                ctx.storage().put("after", "1").await?;
                Err(ObjectError::msg("failing after a call"))
            }
            "/keys" => {
                let keys: Vec<String> = ctx
                    .storage()
                    .list(&odo_storage::ListOptions::default())
                    .await?
                    .into_iter()
                    .map(|(k, _)| k)
                    .collect();
                Ok(text(keys.join(",")))
            }
            // Increments, and tells the test from a `wait_until` task; with
            // `?fail`, the turn then fails.
            path @ ("/notify-later" | "/notify-later-fail") => {
                let n = count(ctx).await? + 1;
                ctx.storage().put_typed("n", &n).await?;
                let env = self.env.clone();
                ctx.wait_until(async move { env.note(Note::Background(n)) });
                if path.ends_with("fail") {
                    return Err(ObjectError::msg("failing after wait_until"));
                }
                Ok(text(n))
            }
            // `/relay/a/b/...`: fetch `/relay/b/...` from object `a`; an
            // empty rest answers where the chain ended, `hang` never answers.
            // A failed call is answered as text (the object is not reset).
            path if path.starts_with("/relay") => {
                let rest: Vec<&str> = path
                    .trim_start_matches("/relay")
                    .split('/')
                    .filter(|s| !s.is_empty())
                    .collect();
                match rest.as_slice() {
                    [] => Ok(text(format!(
                        "end at {} with {} ms left",
                        ctx.name().unwrap_or("?"),
                        ctx.remaining().as_millis()
                    ))),
                    ["hang"] => {
                        self.env.blocked.notify_one();
                        std::future::pending().await
                    }
                    [next, more @ ..] => {
                        let stub = ctx.namespace("COUNTER").get_by_name(next);
                        let uri = format!("/relay/{}", more.join("/"));
                        let request = http::Request::builder()
                            .uri(uri)
                            .body(Bytes::new())
                            .map_err(ObjectError::msg)?;
                        match ctx.fetch(&stub, request).await {
                            Ok(response) => Ok(response),
                            Err(e) => Ok(text(format!("call failed: {e}"))),
                        }
                    }
                }
            }
            other => Err(ObjectError::msg(format!("no route {other}"))),
        }
    }

    async fn call(&mut self, ctx: &mut Context, call: RpcCall) -> Result<RpcReply, ObjectError> {
        match call.method.as_str() {
            "add" => {
                let delta: u64 = call.args()?;
                let n = count(ctx).await? + delta;
                ctx.storage().put_typed("n", &n).await?;
                RpcReply::new(&n)
            }
            _ => Err(ObjectError::UnknownMethod(call.method)),
        }
    }

    async fn alarm(&mut self, ctx: &mut Context, alarm: AlarmInfo) -> Result<(), ObjectError> {
        self.env
            .note(Note::Alarm(alarm.scheduled_ms, alarm.retry_count));
        if self.env.alarm_failures.load(Ordering::SeqCst) > alarm.retry_count as usize {
            return Err(ObjectError::msg("alarm fails on purpose"));
        }
        let fired: u64 = ctx.storage().get_typed("alarms").await?.unwrap_or(0) + 1;
        ctx.storage().put_typed("alarms", &fired).await?;
        Ok(())
    }
}

#[derive(Clone, Copy, Debug)]
pub(crate) enum Kind {
    Memory,
    Fjall,
}

pub(crate) struct Harness {
    pub(crate) runtime: Runtime,
    pub(crate) env: Arc<Env>,
    pub(crate) _dir: tempfile::TempDir,
}

pub(crate) fn config() -> RuntimeConfig {
    RuntimeConfig {
        alarm_retry: AlarmRetry {
            first_delay: Duration::from_millis(10),
            max_delay: Duration::from_millis(40),
            max_retries: 6,
        },
        ..RuntimeConfig::default()
    }
}

pub(crate) fn open_store(kind: Kind, dir: &std::path::Path) -> Store {
    let backend: Arc<dyn Backend> = match kind {
        Kind::Memory => Arc::new(MemoryBackend::new()),
        Kind::Fjall => {
            Arc::new(FjallBackend::open(dir.join("shard-0"), FjallOptions::default()).unwrap())
        }
    };
    Store::open_shared(backend, StoreOptions::default()).unwrap()
}

pub(crate) fn classes(env: &Arc<Env>) -> Classes {
    let mut classes = Classes::default();
    let env = env.clone();
    classes
        .register_with("COUNTER", move |_| Counter { env: env.clone() })
        .unwrap();
    classes
}

impl Harness {
    pub(crate) fn new(kind: Kind, config: RuntimeConfig) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::with_store(open_store(kind, dir.path()), config, dir)
    }

    pub(crate) fn with_store(store: Store, config: RuntimeConfig, dir: tempfile::TempDir) -> Self {
        let env = Arc::new(Env::default());
        let runtime = Runtime::new(classes(&env), config, 1);
        runtime.open_shard(0, 1, store).unwrap();
        Self {
            runtime,
            env,
            _dir: dir,
        }
    }

    pub(crate) fn target(&self, name: &str) -> ObjectAddress {
        let id = odo_core::Namespace::new("COUNTER").id_from_name(name);
        ObjectAddress {
            class: Arc::from("COUNTER"),
            id,
            name: Some(Arc::from(name)),
        }
    }

    /// Sends a request from a task of its own; the handle answers the
    /// raw response.
    pub(crate) fn spawn_fetch(
        &self,
        name: &str,
        path: &str,
    ) -> tokio::task::JoinHandle<Result<Response, WireError>> {
        let runtime = self.runtime.clone();
        let target = self.target(name);
        let request = http::Request::builder()
            .uri(path)
            .body(Bytes::new())
            .unwrap();
        tokio::spawn(async move { runtime.fetch(target, None, request).await })
    }

    pub(crate) async fn fetch(&self, name: &str, path: &str) -> Result<String, WireError> {
        let request = http::Request::builder()
            .uri(path)
            .body(Bytes::new())
            .unwrap();
        let response = self.runtime.fetch(self.target(name), None, request).await?;
        Ok(String::from_utf8(response.into_body().to_vec()).unwrap())
    }
}

pub(crate) async fn both(test: impl AsyncFn(Kind)) {
    test(Kind::Memory).await;
    test(Kind::Fjall).await;
}

/// The next note, within 30 s (a missing alarm fails instead of hanging).
pub(crate) async fn recv(rx: &mut mpsc::UnboundedReceiver<Note>) -> Note {
    tokio::time::timeout(Duration::from_secs(30), rx.recv())
        .await
        .expect("a note within 30 s")
        .expect("the sender is alive")
}

pub(crate) async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    for _ in 0..1000 {
        if cond() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("timed out waiting until {what}");
}
