//! `list` semantics, data-driven: one line per case, on both backends, with
//! the data in the backend, in the turn buffer, or split between them.

use odo_core::Namespace;
use odo_storage::{
    BackendFactory, Backends, ListOptions, ObjectStorage, ObjectTurns, ShardSpec, StorageError,
    Store, StoreOptions,
};

/// Parses `"start_after=c reverse limit=2"` into options.
fn options(spec: &str) -> ListOptions {
    let mut options = ListOptions::default();
    for token in spec.split_whitespace() {
        let (name, value) = token.split_once('=').unwrap_or((token, ""));
        let value = value.to_string();
        match name {
            "start" => options.start = Some(value),
            "start_after" => options.start_after = Some(value),
            "end" => options.end = Some(value),
            "prefix" => options.prefix = Some(value),
            "reverse" => options.reverse = true,
            "limit" => options.limit = Some(value.parse().unwrap()),
            other => panic!("unknown option {other}"),
        }
    }
    options
}

#[derive(Clone, Copy, Debug)]
enum Placement {
    /// Written, committed and durable before listing.
    Durable,
    /// Written in the listing turn.
    TurnBuffer,
    /// Even keys durable, odd keys in flight, none in the turn.
    Split,
}

struct Fixture {
    store: Store,
    storage: ObjectTurns,
    _dir: tempfile::TempDir,
}

/// A store of the backend `factory` opens, in a new directory.
async fn fixture(factory: &dyn BackendFactory, keys: &[&str], placement: Placement) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let backend = factory
        .open(ShardSpec::new(dir.path(), 0, 1))
        .await
        .unwrap();
    let store = Store::open_shared(backend, StoreOptions::default()).unwrap();
    // A neighbour object with the same keys must never leak into the list.
    let ns = Namespace::new("LIST");
    let mut neighbour = store.object(ns.id_from_name("neighbour"));
    for key in keys {
        neighbour.put(key, "other").await.unwrap();
    }
    neighbour.commit_turn().unwrap().await.unwrap();

    let mut storage = store.object(ns.id_from_name("subject"));
    for (i, key) in keys.iter().enumerate() {
        storage.put(key, key.to_string()).await.unwrap();
        if matches!(placement, Placement::Split) && i % 2 == 0 {
            storage.commit_turn().unwrap().await.unwrap();
        }
    }
    match placement {
        Placement::Durable => storage.commit_turn().unwrap().await.unwrap(),
        Placement::Split => drop(storage.commit_turn()),
        Placement::TurnBuffer => {}
    }
    Fixture {
        store,
        storage,
        _dir: dir,
    }
}

const LETTERS: &[&str] = &["a", "b", "c", "d", "e"];
const MIXED: &[&str] = &[
    "a", "A_b", "a_b", "a_c", "ab", "axb", "B", "b", "Z", "é", "éa", "ü", "中",
];

async fn check_all(keys: &[&str], spec: &str, expected: &str) {
    let expected: Vec<&str> = expected.split_whitespace().collect();
    for factory in Backends::builtin().iter() {
        let backend = factory.name();
        for placement in [Placement::Durable, Placement::TurnBuffer, Placement::Split] {
            let mut f = fixture(factory.as_ref(), keys, placement).await;
            let got = f.storage.list(&options(spec)).await.unwrap();
            let got: Vec<&str> = got.iter().map(|(k, _)| k.as_str()).collect();
            assert_eq!(got, expected, "list {spec:?} ({backend}, {placement:?})");
            for (k, v) in f.storage.list(&options(spec)).await.unwrap() {
                assert_eq!(k.as_bytes(), &v[..], "value of {k}");
            }
            f.store.close().await.unwrap();
        }
    }
}

#[tokio::test]
async fn list_letters() {
    let check = |spec, expected| check_all(LETTERS, spec, expected);
    check("", "a b c d e").await;
    check("reverse", "e d c b a").await;
    check("start=c", "c d e").await;
    check("start_after=c", "d e").await;
    check("end=c", "a b").await;
    check("start=b end=d", "b c").await;
    check("start_after=c reverse", "e d").await;
    check("end=c reverse", "b a").await;
    check("start=b end=e reverse", "d c b").await;
    check("start_after=a end=e reverse limit=2", "d c").await;
    check("limit=2", "a b").await;
    check("limit=2 reverse", "e d").await;
    check("limit=9", "a b c d e").await;
    check("start=d end=b", "").await;
    check("start=c end=c", "").await;
    check("start=bb", "c d e").await;
    check("end=cc reverse limit=1", "c").await;
    check("start=f", "").await;
    check("prefix=c", "c").await;
    check("prefix=x", "").await;
}

#[tokio::test]
async fn list_mixed_case_unicode_and_prefix() {
    let check = |spec, expected| check_all(MIXED, spec, expected);
    check("", "A_b B Z a a_b a_c ab axb b é éa ü 中").await;
    check("prefix=a_", "a_b a_c").await;
    check("prefix=a_ reverse", "a_c a_b").await;
    check("prefix=a_ limit=1 reverse", "a_c").await;
    check("prefix=a", "a a_b a_c ab axb").await;
    check("prefix=A", "A_b").await;
    check("prefix=é", "é éa").await;
    check("prefix=", "A_b B Z a a_b a_c ab axb b é éa ü 中").await;
    check("prefix=a start_after=a_b", "a_c ab axb").await;
    check("prefix=a start=a_c end=axb reverse", "ab a_c").await;
    check("prefix=a end=a_", "a").await;
    check("prefix=b start=Z", "b").await;
    check("start=b", "b é éa ü 中").await;
    check("start=é reverse", "中 ü éa é").await;
    check("end=a reverse limit=2", "Z B").await;
    check("start_after=ü", "中").await;
    check("start= end=B", "A_b").await;
    check("start_after= end=B", "A_b").await;
}

#[tokio::test]
async fn invalid_list_options_are_errors() {
    let mut f = fixture(&odo_storage::MemoryFactory, LETTERS, Placement::Durable).await;
    for spec in [
        "start=a start_after=a",
        "limit=0",
        "start=a start_after=b limit=0",
    ] {
        let error = f.storage.list(&options(spec)).await.unwrap_err();
        assert!(
            matches!(error, StorageError::InvalidListOptions(_)),
            "{spec}: {error}"
        );
    }
}

/// Turn writes (puts and deletes) are merged over durable and in-flight
/// data, with reverse and limits.
#[tokio::test]
async fn list_merges_turn_writes_over_stored_data() {
    for factory in Backends::builtin().iter() {
        let backend = factory.name();
        for placement in [Placement::Durable, Placement::Split] {
            let mut f = fixture(factory.as_ref(), LETTERS, placement).await;
            let s = &mut f.storage;
            s.delete("b").await.unwrap();
            s.delete("c").await.unwrap();
            s.put("bb", "bb").await.unwrap();
            s.put("f", "f").await.unwrap();
            s.put("a", "A").await.unwrap();
            let check = async |s: &mut ObjectStorage, spec: &str, expected: &str| {
                let got = s.list(&options(spec)).await.unwrap();
                let got: Vec<String> = got
                    .iter()
                    .map(|(k, v)| format!("{k}={}", std::str::from_utf8(v).unwrap()))
                    .collect();
                assert_eq!(got.join(" "), expected, "{spec} ({backend}, {placement:?})");
            };
            check(s, "", "a=A bb=bb d=d e=e f=f").await;
            check(s, "limit=2", "a=A bb=bb").await;
            check(s, "limit=1 start=b", "bb=bb").await;
            check(s, "reverse limit=2", "f=f e=e").await;
            check(s, "reverse end=d", "bb=bb a=A").await;
            check(s, "reverse end=d limit=1", "bb=bb").await;
            check(s, "start_after=a end=e limit=2", "bb=bb d=d").await;
            check(s, "prefix=b", "bb=bb").await;
            // delete_all hides everything stored; later writes show.
            s.delete_all().await.unwrap();
            check(s, "", "").await;
            s.put("c", "c2").await.unwrap();
            check(s, "reverse limit=3", "c=c2").await;
            s.commit_turn().unwrap().await.unwrap();
            check(s, "", "c=c2").await;
            f.store.close().await.unwrap();
        }
    }
}
