//! SQLite-backed objects move with a shard split: their log is keys of the
//! object, copied and pruned like any other, and their database files
//! are in the data directory's `sql/`, named by object id alone.

#![cfg(feature = "fjall")]

use odo_core::{Namespace, ObjectId};
use odo_storage::split::{copy_objects, prune_objects};
use odo_storage::{BackendFactory, FjallFactory, ShardSpec, SqlValue, Store, StoreOptions};

fn id(n: usize) -> ObjectId {
    Namespace::new("SQL").id_from_name(&format!("o{n}"))
}

async fn store(factory: &FjallFactory, spec: ShardSpec) -> Store {
    let options = StoreOptions::for_shard(&spec, factory.durable());
    Store::open_shared(factory.open(spec).await.unwrap(), options).unwrap()
}

#[tokio::test]
async fn sqlite_backed_objects_keep_everything_through_a_split() {
    let dir = tempfile::tempdir().unwrap();
    let factory = FjallFactory::default();
    let spec = |shard| ShardSpec::new(dir.path(), shard, 1);
    let objects = 8;
    let one = store(&factory, spec(0)).await;
    for n in 0..objects {
        let mut turns = one.sql_object(id(n)).unwrap();
        turns.prepare().await.unwrap();
        let sql = turns.sql().unwrap();
        sql.exec("CREATE TABLE t (n INTEGER)", &[]).unwrap();
        sql.exec("INSERT INTO t VALUES (?)", &[SqlValue::from(n as i64)])
            .unwrap();
        turns.put("n", vec![n as u8]).await.unwrap();
        turns.commit_turn().unwrap().await.unwrap();
    }
    one.close().await.unwrap();

    copy_objects(&factory, spec(0), spec(1), 2).await.unwrap();
    prune_objects(&factory, spec(0), 2).await.unwrap();

    let shards = [
        store(&factory, spec(0)).await,
        store(&factory, spec(1)).await,
    ];
    let moved = (0..objects).filter(|n| id(*n).shard(2) == 1).count();
    assert!(moved > 0 && moved < objects, "{moved} of {objects} moved");
    for n in 0..objects {
        let shard = &shards[id(n).shard(2) as usize];
        let mut turns = shard.sql_object(id(n)).unwrap();
        turns.prepare().await.unwrap();
        let rows: Vec<i64> = turns
            .sql()
            .unwrap()
            .exec("SELECT n FROM t", &[])
            .unwrap()
            .raw()
            .map(|r| r[0].as_i64().unwrap())
            .collect();
        assert_eq!(rows, [n as i64], "object {n}");
        assert_eq!(
            turns.get("n").await.unwrap().as_deref(),
            Some(&[n as u8][..])
        );
        turns.rollback_turn();
        // The other shard holds nothing of it.
        let other = &shards[1 - id(n).shard(2) as usize];
        let range = odo_storage::KeyRange {
            lower: std::ops::Bound::Unbounded,
            upper: std::ops::Bound::Unbounded,
        };
        let limit = odo_storage::ScanLimit {
            entries: 1,
            bytes: usize::MAX,
        };
        assert!(
            other
                .backend()
                .scan(&id(n), &range, false, limit)
                .unwrap()
                .is_empty(),
            "object {n} left behind"
        );
    }
    for shard in shards {
        shard.close().await.unwrap();
    }
}
