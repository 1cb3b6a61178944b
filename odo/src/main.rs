//! The `odo` binary: `odo serve` runs the demo server of the HTTP contract.
//! With `ODO_DEMO_STORAGE=sqlite` its `Counter` and `Kv` classes are
//! SQLite-backed (for benchmarks; a data directory keeps the kind it was
//! first served with).

/// mimalloc rather than the system allocator: the front door holds many
/// small long-lived allocations per WebSocket between the short-lived
/// buffers of each connection's HTTP handshake, and glibc's heap kept
/// about three times the live bytes resident (10,000 idle sockets: 21 MB
/// in use, 73 MB of heap; `cargo xtask bench websocket`, idle). Built
/// with `no_thp`: it does not ask for transparent huge pages, which held
/// whole 2 MiB pages resident for the few KiB a process had touched
/// (`App::main` also turns them off for the process and its workers).
#[cfg(target_os = "linux")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    let storage = match std::env::var("ODO_DEMO_STORAGE").as_deref() {
        Ok("sqlite") => odo::ClassStorage::Sqlite,
        _ => odo::ClassStorage::KeyValue,
    };
    odo::demo_app_on(storage).main()
}
