//! The `postgres` backend against a real PostgreSQL server that the test
//! starts (odo_tests::postgres): the storage conformance suite, fencing by
//! epoch (a stale holder's commits are refused and its objects reset),
//! reconnection, and typed errors.
//!
//! `ODO_TEST_POSTGRES_URL` runs them against another server instead.
#![cfg(unix)]

use std::sync::Arc;
use std::time::Duration;

use odo_core::Namespace;
use odo_postgres::{PostgresConfig, PostgresError, PostgresFactory};
use odo_storage::conformance::{self, FactoryHarness};
use odo_storage::{
    Backend, BackendFactory, OpenFuture, ShardSpec, StorageError, Store, StoreOptions,
};
use odo_tests::postgres::LocalPostgres;

const URL_ENV: &str = "ODO_TEST_POSTGRES_URL";

/// A server for this test: the one `ODO_TEST_POSTGRES_URL` names (the
/// crash test's child gets its parent's that way), or a private one.
fn server(test: &str) -> Option<(Option<LocalPostgres>, String)> {
    if let Ok(url) = std::env::var(URL_ENV) {
        return Some((None, url));
    }
    let pg = LocalPostgres::start_or_skip(test)?;
    let url = pg.url();
    Some((Some(pg), url))
}

/// The postgres factory with a schema of its own for each data directory
/// the suite opens (the suite expects each new directory to be empty).
#[derive(Debug, Clone)]
struct SchemaPerDir(String);

fn schema_for(dir: &std::path::Path) -> String {
    let hash = blake3::hash(dir.as_os_str().as_encoded_bytes());
    format!("t{}", &hash.to_hex()[..20])
}

impl BackendFactory for SchemaPerDir {
    fn name(&self) -> &str {
        "postgres"
    }
    fn durable(&self) -> bool {
        true
    }
    fn open(&self, shard: ShardSpec) -> OpenFuture {
        let config = PostgresConfig::new(self.0.clone()).with_schema(schema_for(&shard.data_dir));
        PostgresFactory::new(config).open(shard)
    }
}

fn harness(url: &str) -> FactoryHarness<SchemaPerDir> {
    let mut harness = FactoryHarness::new(SchemaPerDir(url.to_owned()));
    harness.child_env = vec![(URL_ENV.to_owned(), url.to_owned())];
    harness
}

#[test]
fn postgres_matches_the_model() {
    let Some((_pg, url)) = server("postgres_matches_the_model") else {
        return;
    };
    conformance::state_machine(&harness(&url));
}

#[test]
fn postgres_survives_close_and_reopen() {
    let Some((_pg, url)) = server("postgres_survives_close_and_reopen") else {
        return;
    };
    conformance::durability(&harness(&url));
}

#[test]
fn postgres_survives_sigkill() {
    let Some((_pg, url)) = server("postgres_survives_sigkill") else {
        return;
    };
    conformance::crash(&harness(&url), "postgres_survives_sigkill");
}

async fn open(
    url: &str,
    schema: &str,
    shard: u32,
    epoch: u64,
) -> Result<Arc<dyn Backend>, StorageError> {
    let config = PostgresConfig::new(url).with_schema(schema);
    PostgresFactory::new(config)
        .open(ShardSpec::new("/nonexistent", shard, epoch))
        .await
}

/// The safety property: once a newer holder opened the shard, every
/// commit of the old one is refused (nothing of it lands), its objects
/// are reset, and an older epoch cannot even open the shard.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_holder_is_fenced() {
    let Some((_pg, url)) = server("a_stale_holder_is_fenced") else {
        return;
    };
    let id = Namespace::new("FENCE").id_from_name("x");
    let old = Store::open_shared(
        open(&url, "fence", 3, 5).await.unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut zombie = old.object(id);
    zombie.put_typed("n", &1u64).await.unwrap();
    zombie.commit_turn().unwrap().await.unwrap();

    // A newer holder takes the shard (another host, after a lease ran out).
    let new = Store::open_shared(
        open(&url, "fence", 3, 6).await.unwrap(),
        StoreOptions::default(),
    )
    .unwrap();

    // The old holder does not know: its next commit is refused.
    zombie.put_typed("n", &2u64).await.unwrap();
    let refused = zombie.commit_turn().unwrap().await.unwrap_err();
    match &refused {
        StorageError::CommitFailed(cause) => assert!(
            matches!(
                **cause,
                StorageError::Fenced {
                    shard: 3,
                    epoch: 5,
                    newest: 6
                }
            ),
            "{cause:?}"
        ),
        other => panic!("expected a fenced commit, got {other:?}"),
    }
    // The object is reset: its storage refuses to go on.
    assert!(matches!(
        zombie.get_typed::<u64>("n").await,
        Err(StorageError::CommitFailed(_))
    ));
    // A fresh view on the old store (a new activation there) is refused
    // too, without asking the database again.
    let mut again = old.object(id);
    again.put_typed("n", &3u64).await.unwrap();
    assert!(again.commit_turn().unwrap().await.is_err());

    // The new holder sees exactly what was acknowledged.
    let mut owner = new.object(id);
    assert_eq!(owner.get_typed::<u64>("n").await.unwrap(), Some(1));
    owner.put_typed("n", &10u64).await.unwrap();
    owner.commit_turn().unwrap().await.unwrap();

    // An older epoch cannot open the shard at all; other shards are free.
    match open(&url, "fence", 3, 4).await {
        Err(StorageError::Fenced {
            shard: 3,
            epoch: 4,
            newest: 6,
        }) => {}
        other => panic!("expected a fenced open, got {other:?}"),
    }
    open(&url, "fence", 4, 1).await.unwrap().close().unwrap();

    old.close().await.unwrap();
    new.close().await.unwrap();
    let check = Store::open_shared(
        open(&url, "fence", 3, 7).await.unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    assert_eq!(
        check.object(id).get_typed::<u64>("n").await.unwrap(),
        Some(10)
    );
    check.close().await.unwrap();
}

/// A holder whose commit is in flight when the newer holder claims the
/// shard: the claim waits for that commit (it holds the fence's share lock
/// until it ends), so the new holder reads it, or the commit is refused.
/// Either way nothing acknowledged is lost and nothing refused lands.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_racing_commits_never_loses_an_acknowledged_one() {
    let Some((_pg, url)) = server("a_claim_racing_commits") else {
        return;
    };
    let ns = Namespace::new("RACE");
    // The writer goes on until it is refused (bounded, as a guard).
    const MAX: u64 = 20_000;
    for round in 0..5u64 {
        let schema = format!("race{round}");
        let old = Store::open_shared(
            open(&url, &schema, 0, 1).await.unwrap(),
            StoreOptions::default(),
        )
        .unwrap();
        let (started_tx, started_rx) = tokio::sync::oneshot::channel();
        let writer = tokio::spawn({
            let old = old.clone();
            let ns = ns.clone();
            async move {
                let mut started = Some(started_tx);
                for n in 0..MAX {
                    let mut s = old.object(ns.id_from_name(&n.to_string()));
                    s.put_typed("v", &n).await.unwrap();
                    match s.commit_turn().unwrap().await {
                        Ok(()) => {
                            if let Some(tx) = started.take() {
                                let _ = tx.send(());
                            }
                        }
                        Err(e) => return (n, Some(e)),
                    }
                }
                (MAX, None)
            }
        });
        // Claim while the writer is going.
        started_rx.await.unwrap();
        tokio::time::sleep(Duration::from_millis(3 * round)).await;
        let new = Store::open_shared(
            open(&url, &schema, 0, 2).await.unwrap(),
            StoreOptions::default(),
        )
        .unwrap();
        let (refused, error) = writer.await.unwrap();
        match error {
            Some(StorageError::CommitFailed(cause))
                if matches!(*cause, StorageError::Fenced { .. }) => {}
            other => panic!(
                "round {round}: the old holder was not fenced: {other:?} after {refused} commits"
            ),
        }
        for n in 0..=refused {
            let got = new
                .object(ns.id_from_name(&n.to_string()))
                .get_typed::<u64>("v")
                .await
                .unwrap();
            if n < refused {
                assert_eq!(got, Some(n), "acknowledged write {n} lost in round {round}");
            } else {
                assert_eq!(got, None, "refused write {n} landed in round {round}");
            }
        }
        old.close().await.unwrap();
        new.close().await.unwrap();
    }
}

/// Connections the server ends (a restart, an administrator) are made
/// again: reads retry once on a new connection, the next commit uses a
/// new one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_made_again_after_the_server_restarts() {
    let Some(mut pg) = LocalPostgres::start_or_skip("connections_are_made_again") else {
        return;
    };
    let url = pg.url();
    let id = Namespace::new("AGAIN").id_from_name("x");
    let store = Store::open_shared(
        open(&url, "again", 0, 1).await.unwrap(),
        StoreOptions::default(),
    )
    .unwrap();
    let mut s = store.object(id);
    s.put_typed("n", &1u64).await.unwrap();
    s.commit_turn().unwrap().await.unwrap();

    let pg = tokio::task::spawn_blocking(move || {
        pg.stop().unwrap();
        pg.start_again().unwrap();
        pg
    })
    .await
    .unwrap();
    // A new view, so the read reaches the database (on a new connection).
    assert_eq!(
        store.object(id).get_typed::<u64>("n").await.unwrap(),
        Some(1)
    );
    let mut s = store.object(id);
    s.put_typed("n", &2u64).await.unwrap();
    s.commit_turn().unwrap().await.unwrap();
    assert_eq!(
        store.object(id).get_typed::<u64>("n").await.unwrap(),
        Some(2)
    );
    store.close().await.unwrap();
    tokio::task::spawn_blocking(move || drop(pg)).await.unwrap();
}

/// A database that cannot be reached fails the open with a typed error
/// that keeps its cause, after the reconnect timeout.
#[tokio::test]
async fn an_unreachable_database_is_a_typed_error() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = PostgresConfig::new(format!(
        "host={} port=5432 user=odo dbname=postgres",
        dir.path().display()
    ));
    config.reconnect_timeout = Duration::from_millis(200);
    let error = PostgresFactory::new(config)
        .open(ShardSpec::new(dir.path(), 0, 1))
        .await
        .unwrap_err();
    let StorageError::Backend { source, .. } = &error else {
        panic!("expected a backend error, got {error:?}");
    };
    let cause = source
        .downcast_ref::<PostgresError>()
        .expect("a PostgresError");
    assert!(
        matches!(cause, PostgresError::Unreachable { .. }),
        "{cause:?}"
    );
    assert!(std::error::Error::source(cause).is_some());

    let bad_schema = PostgresConfig::new("host=/tmp").with_schema("Not-A-Schema");
    let error = PostgresFactory::new(bad_schema)
        .open(ShardSpec::new(dir.path(), 0, 1))
        .await
        .unwrap_err();
    assert!(error.to_string().contains("schema name"), "{error}");
}

/// A holder stopped in the middle of a group commit (SIGSTOP, a partition)
/// holds the fence's share lock on its shard's row, which the next
/// holder's claim waits for. PostgreSQL ends odo's sessions that idle in
/// a transaction past `idle_in_transaction_timeout`, so the claim goes
/// through. Here the stopped holder is a session made from odo's own
/// connection settings that takes the lock and then never speaks again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_stopped_inside_a_commit_does_not_block_the_next_claim() {
    let Some((_pg, url)) = server("a_holder_stopped_inside_a_commit") else {
        return;
    };
    let schema = "stopped";
    let mut config = PostgresConfig::new(&url).with_schema(schema);
    config.idle_in_transaction_timeout = Duration::from_millis(300);
    let first = PostgresFactory::new(config.clone())
        .open(ShardSpec::new("/nonexistent", 0, 1))
        .await
        .unwrap();
    let (client, connection) = config
        .validate()
        .unwrap()
        .connect(tokio_postgres::NoTls)
        .await
        .unwrap();
    let driver = tokio::spawn(connection);
    client
        .batch_execute(&format!(
            "BEGIN; SELECT epoch FROM {schema}.odo_shards WHERE shard = 0 AND epoch = 1 FOR SHARE"
        ))
        .await
        .unwrap();
    // The stopped holder says nothing more. The claim waits for its lock
    // until PostgreSQL ends its session (a bounded wait as the guard).
    let claim = PostgresFactory::new(config).open(ShardSpec::new("/nonexistent", 0, 2));
    let second = tokio::time::timeout(Duration::from_secs(20), claim)
        .await
        .expect("the claim waited past the guard: the stopped session was never ended")
        .unwrap();
    let ended = tokio::time::timeout(Duration::from_secs(5), driver)
        .await
        .expect("the stopped session's connection ended");
    assert!(
        matches!(ended, Ok(Err(_))),
        "PostgreSQL ended the idle session: {ended:?}"
    );
    drop((first, second));
}
