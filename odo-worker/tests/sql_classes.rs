//! SQLite-backed classes in the runtime: `ctx.storage().sql()`, a turn as
//! one implicit transaction over SQL and key-value writes, the output
//! gate, and a failed group commit that resets the object and brings its
//! database back to the last durable state.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use odo_core::WireError;
use odo_storage::conformance::CommitValve;
use odo_storage::{
    Backend, FjallBackend, FjallOptions, MemoryBackend, SqlValue, StorageError, Store, StoreOptions,
};
use odo_worker::{
    ClassStorage, Classes, Context, DurableObject, ObjectAddress, ObjectError, Request, Response,
    Runtime, RuntimeConfig,
};

/// `/add` adds 1 to a SQL row and to key `n` and answers both; `/get`
/// answers both; `/fail` adds and fails; `/kv-sql` tries SQL on a
/// key-value-backed class.
struct Tally;

fn text(s: impl ToString) -> Response {
    Response::new(Bytes::from(s.to_string()))
}

async fn both(ctx: &mut Context) -> Result<String, ObjectError> {
    let row = ctx
        .storage()
        .sql()?
        .exec("SELECT value FROM tally", &[])?
        .one()
        .map_err(StorageError::from)?;
    let sql = row.values()[0].as_i64().unwrap_or(-1);
    let kv = ctx.storage().get_typed::<i64>("n").await?.unwrap_or(0);
    Ok(format!("{sql} {kv}"))
}

async fn add(ctx: &mut Context) -> Result<(), ObjectError> {
    ctx.storage()
        .sql()?
        .exec("UPDATE tally SET value = value + ?", &[SqlValue::from(1)])?;
    let n = ctx.storage().get_typed::<i64>("n").await?.unwrap_or(0);
    ctx.storage().put_typed("n", &(n + 1)).await?;
    Ok(())
}

impl DurableObject for Tally {
    fn create(_: &Context) -> Self {
        Tally
    }

    async fn init(&mut self, ctx: &mut Context) -> Result<(), ObjectError> {
        if ctx.class() == "TALLY" {
            ctx.storage().sql()?.exec(
                "CREATE TABLE IF NOT EXISTS tally (value INTEGER NOT NULL);
                 INSERT INTO tally SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM tally)",
                &[],
            )?;
        }
        Ok(())
    }

    async fn fetch(&mut self, ctx: &mut Context, req: Request) -> Result<Response, ObjectError> {
        match req.uri().path() {
            "/add" => {
                add(ctx).await?;
                // Reads in the turn see its writes.
                Ok(text(both(ctx).await?))
            }
            "/get" => Ok(text(both(ctx).await?)),
            "/fail" => {
                add(ctx).await?;
                Err(ObjectError::msg("failing on purpose"))
            }
            "/bookmark" => Ok(text(ctx.storage().current_bookmark().await?)),
            restore if restore.starts_with("/restore/") => {
                let bookmark = &restore["/restore/".len()..];
                Ok(text(
                    ctx.storage()
                        .on_next_session_restore_bookmark(bookmark)
                        .await?,
                ))
            }
            "/kv-sql" => match ctx.storage().sql() {
                Ok(_) => Ok(text("sql")),
                Err(e) => Ok(text(e)),
            },
            other => Err(ObjectError::msg(format!("no route {other}"))),
        }
    }
}

fn runtime(store: Store) -> Runtime {
    let mut classes = Classes::default();
    classes.register_sqlite::<Tally>("TALLY").expect("class");
    classes.register::<Tally>("KV_TALLY").expect("class");
    assert_eq!(
        classes.storage_kinds(),
        vec![
            ("KV_TALLY".to_owned(), ClassStorage::KeyValue),
            ("TALLY".to_owned(), ClassStorage::Sqlite)
        ]
    );
    let runtime = Runtime::new(classes, RuntimeConfig::default(), 1);
    runtime.open_shard(0, 1, store).expect("shard");
    runtime
}

async fn send(runtime: &Runtime, class: &str, name: &str, path: &str) -> Result<String, WireError> {
    let target = ObjectAddress {
        class: Arc::from(class),
        id: odo_core::Namespace::new(class).id_from_name(name),
        name: Some(Arc::from(name)),
    };
    let request = http::Request::builder()
        .uri(path)
        .body(Bytes::new())
        .expect("request");
    let response = tokio::time::timeout(
        Duration::from_secs(20),
        runtime.fetch(target, None, request),
    )
    .await
    .expect("an answer within 20 s")?;
    Ok(String::from_utf8_lossy(response.body()).into_owned())
}

fn fjall_store(dir: &Path) -> Store {
    let backend = FjallBackend::open(dir.join("kv"), FjallOptions::default()).expect("fjall");
    let mut options = StoreOptions::default();
    options.sql.dir = Some(dir.join("sql"));
    Store::open(backend, options).expect("store")
}

#[tokio::test]
async fn sql_and_key_value_writes_commit_together_and_survive_a_restart() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(fjall_store(dir.path()));
    for expected in ["1 1", "2 2", "3 3"] {
        assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), expected);
    }
    // A failed turn rolls back its SQL and key-value writes alike.
    assert!(matches!(
        send(&rt, "TALLY", "a", "/fail").await,
        Err(WireError::ObjectReset { .. })
    ));
    assert_eq!(send(&rt, "TALLY", "a", "/get").await.unwrap(), "3 3");
    assert_eq!(send(&rt, "TALLY", "b", "/add").await.unwrap(), "1 1");
    // A key-value-backed class has no SQL.
    let refused = send(&rt, "KV_TALLY", "a", "/kv-sql").await.unwrap();
    assert!(refused.contains("SQLite-backed"), "{refused}");
    rt.shutdown().await;

    let rt = runtime(fjall_store(dir.path()));
    assert_eq!(send(&rt, "TALLY", "a", "/get").await.unwrap(), "3 3");
    assert_eq!(send(&rt, "TALLY", "b", "/get").await.unwrap(), "1 1");
    rt.shutdown().await;
}

#[tokio::test]
async fn a_failed_group_commit_resets_the_object_and_its_database_goes_back() {
    let valve = CommitValve::new();
    let _open = valve.open_on_drop();
    let backend = valve.backend(MemoryBackend::new());
    let store = Store::open(backend, StoreOptions::default()).expect("store");
    let rt = runtime(store);
    valve.allow(true);
    assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), "1 1");
    // The next group commit fails: the answer never says it is done, and
    // the local SQLite commit it carried is taken back.
    valve.allow(false);
    match send(&rt, "TALLY", "a", "/add").await {
        Err(WireError::OutcomeUnknown { .. }) => {}
        other => panic!("expected OutcomeUnknown, got {other:?}"),
    }
    valve.open();
    assert_eq!(send(&rt, "TALLY", "a", "/get").await.unwrap(), "1 1");
    assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), "2 2");
    rt.shutdown().await;
}

/// The output gate: an answer leaves only once its turn's SQL is durable.
#[tokio::test]
async fn an_answer_waits_for_its_turns_sql_to_be_durable() {
    let valve = CommitValve::new();
    let _open = valve.open_on_drop();
    let backend: Arc<dyn Backend> = Arc::new(valve.backend(MemoryBackend::new()));
    let store = Store::open_shared(backend, StoreOptions::default()).expect("store");
    let rt = runtime(store);
    let pending = tokio::spawn({
        let rt = rt.clone();
        async move { send(&rt, "TALLY", "a", "/add").await }
    });
    let give_up = tokio::time::Instant::now() + Duration::from_secs(20);
    while valve.waiting() < 1 {
        assert!(tokio::time::Instant::now() < give_up, "no commit arrived");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(!pending.is_finished(), "answered before durable");
    valve.open();
    assert_eq!(pending.await.unwrap().unwrap(), "1 1");
    rt.shutdown().await;
}

/// A restore asked for in a turn is done before the object's next event.
#[tokio::test]
async fn a_restore_asked_for_in_a_turn_is_there_for_the_next_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let rt = runtime(fjall_store(dir.path()));
    assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), "1 1");
    let bookmark = send(&rt, "TALLY", "a", "/bookmark").await.unwrap();
    assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), "2 2");
    assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), "3 3");
    let undo = send(&rt, "TALLY", "a", &format!("/restore/{bookmark}"))
        .await
        .unwrap();
    assert_eq!(send(&rt, "TALLY", "a", "/get").await.unwrap(), "1 1");
    assert_eq!(send(&rt, "TALLY", "a", "/add").await.unwrap(), "2 2");
    send(&rt, "TALLY", "a", &format!("/restore/{undo}"))
        .await
        .unwrap();
    assert_eq!(send(&rt, "TALLY", "a", "/get").await.unwrap(), "3 3");
    rt.shutdown().await;
}
