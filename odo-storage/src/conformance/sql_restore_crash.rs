//! The crash test of point-in-time recovery: a child process commits SQL
//! transactions and, every few turns, asks for a restore to an earlier
//! bookmark and reopens the object (which does the restore), and is
//! killed with SIGKILL while a restore and the reactivation after it run.

use std::path::Path;

use super::crash::{READY, die, next_line, random_below, say, spawn_ready};
use super::sql_crash::{whole_state, write_turn};
use super::{Harness, object_id, runtime};
use crate::Store;

const CHILD_ENV: &str = "ODO_STORAGE_CONFORMANCE_SQL_RESTORE_CRASH_DIR";
const ROUND_ENV: &str = "ODO_STORAGE_CONFORMANCE_SQL_RESTORE_CRASH_ROUND";
const OBJECTS: usize = 4;
const ROUNDS: usize = 4;
/// `try <object> <state>`: the child is about to commit a turn after which
/// the object holds `state` (a write of it, or a restore request to a
/// bookmark of it).
const TRY: &str = "odo-restore try ";
/// `ack <object> <state>`: that turn is durable.
const ACK: &str = "odo-restore ack ";
/// `restoring <object>`: the object is being opened again, which does the
/// restore just acknowledged.
const RESTORING: &str = "odo-restore restoring ";
/// `restored <object>`: the reopened object holds the restored state.
const RESTORED: &str = "odo-restore restored ";

/// What the parent knows of one object.
#[derive(Debug, Clone, Copy, Default)]
struct Known {
    /// The state of the last acknowledged turn (`None`: nothing yet).
    acked: Option<u64>,
    /// The state of a turn tried since, which may or may not be durable.
    tried: Option<u64>,
    /// Between `restoring` and `restored`.
    restoring: bool,
}

/// Crashes a process that restores SQLite-backed objects to bookmarks,
/// then checks what survived.
///
/// Like [`sql_crash`](super::sql_crash), call it from a `#[test]` named
/// `test_name`, with a [`SqlHarness`](super::SqlHarness) over a durable
/// backend. The child's objects (4 at once) each commit turns that write
/// a new number (into rows, a key and the alarm, as in `sql_crash`),
/// and every fourth turn asks for a restore to the bookmark of the state
/// three turns back, then opens the object again (the restore runs then)
/// and checks it holds that state. The parent kills the child right after
/// it announces such a reopening, a random number of turns in. After each
/// kill, every object, opened again (a restore asked for and not done yet
/// is done then), is whole and holds the state of its last acknowledged
/// turn, or of the one turn it tried after it: a restore either happened
/// fully or is still pending and then completes.
///
/// # Panics
///
/// Panics when a check fails or the child misbehaves.
pub fn sql_restore_crash<H: Harness>(harness: &H, test_name: &str) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        let round = std::env::var(ROUND_ENV)
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(0);
        child(harness, Path::new(&dir), round);
    }
    if !harness.durable() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut known = [Known::default(); OBJECTS];
    let mut inside = 0;
    for round in 0..ROUNDS {
        let mut env = harness.child_env();
        env.push((ROUND_ENV.to_owned(), (round + 1).to_string()));
        let (mut guard, mut lines) = spawn_ready(test_name, (CHILD_ENV, dir.path()), env, round);
        // A random number of acknowledgements, then the next reopening
        // that restores, then kill (at once, or a line or two later).
        let acks = 1 + random_below(120);
        let mut after = None;
        let mut seen = 0;
        loop {
            let Some(line) = next_line(&mut lines) else {
                panic!(
                    "round {round}: the child exited early: {:?}",
                    guard.0.wait()
                );
            };
            let event = record(&line, &mut known);
            if event == Some(ACK) {
                seen += 1;
            }
            match &mut after {
                None if seen >= acks && event == Some(RESTORING) => {
                    after = Some(random_below(3));
                }
                Some(0) => {}
                Some(n) => *n -= 1,
                None => {}
            }
            if after == Some(0) {
                break;
            }
        }
        guard.0.kill().expect("SIGKILL the child");
        let during = known.iter().any(|k| k.restoring);
        while let Some(line) = next_line(&mut lines) {
            record(&line, &mut known);
        }
        if during && known.iter().any(|k| k.restoring) {
            inside += 1;
        }
        drop(guard);
        verify(harness, dir.path(), &mut known, round);
    }
    eprintln!(
        "{test_name}: {inside} of {ROUNDS} kills landed while an object was reopening to restore"
    );
}

/// Takes one line of the child's into what is known; answers its kind.
fn record(line: &str, known: &mut [Known; OBJECTS]) -> Option<&'static str> {
    for kind in [TRY, ACK, RESTORING, RESTORED] {
        let Some(at) = line.find(kind) else { continue };
        let mut words = line[at + kind.len()..]
            .split_whitespace()
            .map(|w| w.parse::<u64>().ok());
        let Some(Some(object)) = words.next() else {
            panic!("malformed line {line:?}");
        };
        let object = &mut known[object as usize];
        let state = words.next().flatten();
        match kind {
            TRY => object.tried = state,
            ACK => {
                object.acked = state;
                object.tried = None;
            }
            RESTORING => object.restoring = true,
            _ => object.restoring = false,
        }
        return Some(kind);
    }
    None
}

fn verify<H: Harness>(harness: &H, dir: &Path, known: &mut [Known; OBJECTS], round: usize) {
    runtime().block_on(async {
        let backend = harness.open(dir).expect("reopening after the crash");
        let store = Store::open(backend, harness.store_options(dir)).expect("store");
        for (n, object) in known.iter_mut().enumerate() {
            let mut turns = harness.object(&store, object_id(n));
            let what = format!("round {round}, object {n}");
            let state = whole_state(&store, &mut turns, &what).await;
            assert!(
                state == object.acked || (object.tried.is_some() && state == object.tried),
                "{what}: holds {state:?}, acknowledged {:?} (then tried {:?})",
                object.acked,
                object.tried,
            );
            // What the next round starts from.
            *object = Known {
                acked: state,
                ..Known::default()
            };
        }
        store.close().await.expect("close");
    });
}

/// The child: writes and restores until killed. States it writes are
/// `round * 1_000_000 + n`: new in each run.
fn child<H: Harness>(harness: &H, dir: &Path, round: u64) -> ! {
    runtime().block_on(async {
        let backend = harness
            .open(dir)
            .unwrap_or_else(|e| die("opening the store", e));
        let store = Store::open(backend, harness.store_options(dir))
            .unwrap_or_else(|e| die("starting the store", e));
        say(READY);
        let mut tasks = Vec::new();
        for n in 0..OBJECTS {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let id = object_id(n);
                let open = |store: &Store| {
                    store
                        .sql_object(id)
                        .unwrap_or_else(|e| die("opening the object", e))
                };
                let mut turns = open(&store);
                let mut next = round * 1_000_000;
                // Bookmarks of this run, with the state each names.
                let mut marks: Vec<(String, u64)> = Vec::new();
                for turn in 1u64.. {
                    turns
                        .prepare()
                        .await
                        .unwrap_or_else(|e| die("preparing", e));
                    if turn.is_multiple_of(4) && marks.len() >= 3 {
                        let (bookmark, state) = marks[marks.len() - 3].clone();
                        say(&format!("{TRY}{n} {state}"));
                        turns
                            .on_next_session_restore_bookmark(&bookmark)
                            .await
                            .unwrap_or_else(|e| die("asking for a restore", e));
                        if let Some(durable) = turns.commit_turn() {
                            durable.await.unwrap_or_else(|e| die("committing", e));
                        }
                        say(&format!("{ACK}{n} {state}"));
                        say(&format!("{RESTORING}{n}"));
                        drop(turns);
                        turns = open(&store);
                        turns
                            .prepare()
                            .await
                            .unwrap_or_else(|e| die("restoring", e));
                        let got = turns.get("seq").await.unwrap_or_else(|e| die("reading", e));
                        turns.rollback_turn();
                        if got.as_deref() != Some(&state.to_be_bytes()[..]) {
                            eprintln!(
                                "restore child: object {n} restored to {state} holds {got:?}"
                            );
                            std::process::exit(4);
                        }
                        say(&format!("{RESTORED}{n}"));
                    } else {
                        next += 1;
                        say(&format!("{TRY}{n} {next}"));
                        write_turn(&mut turns, next)
                            .await
                            .unwrap_or_else(|e| die("writing", e));
                        if let Some(durable) = turns.commit_turn() {
                            durable.await.unwrap_or_else(|e| die("committing", e));
                        }
                        say(&format!("{ACK}{n} {next}"));
                        let bookmark = turns
                            .current_bookmark()
                            .await
                            .unwrap_or_else(|e| die("taking a bookmark", e));
                        marks.push((bookmark, next));
                    }
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    std::process::exit(1)
}
