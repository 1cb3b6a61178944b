//! The crash test: a child process is killed with SIGKILL mid-commit.

use std::collections::hash_map::RandomState;
use std::hash::{BuildHasher, Hasher};
use std::io::{BufRead, BufReader, Lines};
use std::path::Path;
use std::process::{Child, ChildStdout, Command, Stdio};

use super::{Harness, object_id, runtime};
use crate::{Backend, Store, StoreOptions};

/// Set in the child's environment to the store directory.
const CHILD_ENV: &str = "ODO_STORAGE_CONFORMANCE_CRASH_DIR";
pub(super) const OBJECTS: usize = 8;
const KEYS: [&str; 4] = ["k0", "k1", "k2", "seq"];
const ROUNDS: usize = 3;
pub(super) const READY: &str = "odo-crash ready";
pub(super) const ACK: &str = "odo-crash ack ";

/// Kills and reaps the child however the test ends.
pub(super) struct ChildGuard(pub(super) Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn random_below(n: u64) -> u64 {
    RandomState::new().build_hasher().finish() % n
}

/// Crashes a process that is committing, then checks what survived.
///
/// Call it from a `#[test]` whose name is `test_name` (the full name libtest
/// prints, e.g. `fjall_survives_sigkill` at the top of an integration test
/// file): the function re-executes the current test binary filtered to that
/// test, with an environment variable that makes the same call act as the
/// child. The child opens the store and, from 8 objects concurrently,
/// commits turns that each write 4 keys with the same sequence number (some
/// after a `delete_all`) and set the alarm to it, printing an
/// acknowledgement line once each turn is durable. The parent waits for
/// the child's readiness line and a random number of acknowledgements,
/// kills it with SIGKILL, and reopens the store: every acknowledged
/// sequence must be there in full, and every object must hold one whole
/// sequence (never a mix). Three rounds run on the same directory.
///
/// Does nothing for a backend that is not durable.
///
/// # Panics
///
/// Panics when a check fails or the child misbehaves.
pub fn crash<H: Harness>(harness: &H, test_name: &str) {
    if let Some(dir) = std::env::var_os(CHILD_ENV) {
        child(harness, Path::new(&dir));
    }
    if !harness.durable() {
        return;
    }
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut acked = [0u64; OBJECTS];
    for round in 0..ROUNDS {
        let (mut guard, mut lines) = spawn_ready(
            test_name,
            (CHILD_ENV, dir.path()),
            harness.child_env(),
            round,
        );

        let target = 1 + random_below(300);
        let mut seen = 0;
        while seen < target {
            match next_line(&mut lines) {
                Some(line) => seen += record_ack(&line, &mut acked),
                None => panic!(
                    "round {round}: the child exited early: {:?}",
                    guard.0.wait()
                ),
            }
        }
        guard.0.kill().expect("SIGKILL the child");
        // Acknowledgements printed before the kill are still in the pipe.
        while let Some(line) = next_line(&mut lines) {
            record_ack(&line, &mut acked);
        }
        drop(guard);
        verify(harness, dir.path(), &acked, round);
    }
}

/// The lines a child prints.
pub(super) type ChildLines = Lines<BufReader<ChildStdout>>;

/// Runs test `test_name` of this binary again as a child, its data
/// directory in the environment variable `dir.0` and `env` beside (what
/// the harness needs), and waits for its ready line. The child is killed
/// when the guard drops.
pub(super) fn spawn_ready(
    test_name: &str,
    dir: (&str, &Path),
    env: Vec<(String, String)>,
    round: usize,
) -> (ChildGuard, ChildLines) {
    let exe = std::env::current_exe().expect("the current test binary");
    let child = Command::new(exe)
        .args([test_name, "--exact", "--nocapture", "--test-threads=1"])
        .env(dir.0, dir.1)
        .envs(env)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("spawning the child");
    let mut guard = ChildGuard(child);
    let stdout = guard.0.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    wait_ready(&mut lines, &mut guard, round);
    (guard, lines)
}

pub(super) fn next_line(lines: &mut Lines<BufReader<ChildStdout>>) -> Option<String> {
    lines.next().and_then(Result::ok)
}

fn wait_ready(lines: &mut Lines<BufReader<ChildStdout>>, guard: &mut ChildGuard, round: usize) {
    loop {
        match next_line(lines) {
            // libtest may print `test name ... ` on the same line first.
            Some(line) if line.ends_with(READY) => return,
            Some(_) => {}
            None => panic!(
                "round {round}: the child exited before it was ready: {:?}",
                guard.0.wait()
            ),
        }
    }
}

/// Records `odo-crash ack <object> <seq>`; returns 1 for an ack line.
fn record_ack(line: &str, acked: &mut [u64; OBJECTS]) -> u64 {
    let Some(at) = line.find(ACK) else {
        return 0;
    };
    let rest = &line[at + ACK.len()..];
    let mut words = rest.split_whitespace().map(|w| w.parse::<u64>().ok());
    let (Some(Some(object)), Some(Some(seq))) = (words.next(), words.next()) else {
        panic!("malformed acknowledgement {line:?}");
    };
    let slot = &mut acked[object as usize];
    assert!(
        seq > *slot,
        "acknowledgements out of order: {line:?} after {slot}"
    );
    *slot = seq;
    1
}

fn verify<H: Harness>(harness: &H, dir: &Path, acked: &[u64; OBJECTS], round: usize) {
    let backend = harness.open(dir).expect("reopening after the crash");
    for (n, &acked) in acked.iter().enumerate() {
        let id = object_id(n);
        let values: Vec<Option<u64>> = KEYS
            .iter()
            .map(|key| {
                backend
                    .get(&id, key)
                    .expect("reading after the crash")
                    .map(|v| decode(&v))
            })
            .collect();
        let first = values[0];
        assert!(
            values.iter().all(|v| *v == first),
            "round {round}, object {n}: a commit is half there: {values:?}"
        );
        let stored = first.unwrap_or(0);
        assert!(
            stored >= acked,
            "round {round}, object {n}: acknowledged sequence {acked} lost (found {stored})"
        );
        let alarm = backend.alarm(&id).expect("reading the alarm");
        assert_eq!(
            alarm, first,
            "round {round}, object {n}: the alarm does not match the data"
        );
        // Nothing else ever lived in the object.
        let all = backend
            .scan(
                &id,
                &crate::KeyRange::all(),
                false,
                crate::ScanLimit {
                    entries: usize::MAX,
                    bytes: usize::MAX,
                },
            )
            .expect("scanning after the crash");
        assert_eq!(all.len(), if first.is_some() { KEYS.len() } else { 0 });
    }
    backend.close().expect("closing after the check");
}

/// Ends the child at the first failure, so that the parent sees it exit.
pub(super) fn die(what: &str, error: crate::StorageError) -> ! {
    eprintln!("crash child: {what} failed: {error}");
    std::process::exit(2)
}

/// Prints one line, on a line of its own.
pub(super) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    if writeln!(out, "\n{line}")
        .and_then(|()| out.flush())
        .is_err()
    {
        std::process::exit(3);
    }
}

fn decode(value: &[u8]) -> u64 {
    let bytes: [u8; 8] = value.try_into().expect("an 8-byte sequence number");
    u64::from_be_bytes(bytes)
}

/// The child: commits forever until killed.
fn child<H: Harness>(harness: &H, dir: &Path) -> ! {
    let rt = runtime();
    rt.block_on(async {
        let backend = harness
            .open(dir)
            .unwrap_or_else(|e| die("opening the store", e));
        let store = Store::open(backend, StoreOptions::default())
            .unwrap_or_else(|e| die("starting the store", e));
        say(READY);
        let mut tasks = Vec::new();
        for n in 0..OBJECTS {
            let mut storage = store.object(object_id(n));
            tasks.push(tokio::spawn(async move {
                let stored = storage
                    .get("seq")
                    .await
                    .unwrap_or_else(|e| die("reading", e));
                let mut seq = stored.map_or(0, |v| decode(&v));
                loop {
                    seq += 1;
                    let turn = async {
                        if seq % 5 == 0 {
                            storage.delete_all().await?;
                        }
                        let value = seq.to_be_bytes().to_vec();
                        storage.put_many(KEYS.map(|k| (k, value.clone()))).await?;
                        storage.set_alarm(seq).await
                    };
                    turn.await.unwrap_or_else(|e| die("writing", e));
                    if let Some(durable) = storage.commit_turn() {
                        durable.await.unwrap_or_else(|e| die("committing", e));
                    }
                    say(&format!("{ACK}{n} {seq}"));
                }
            }));
        }
        for task in tasks {
            let _ = task.await;
        }
    });
    // The tasks loop until the process is killed.
    std::process::exit(1)
}
