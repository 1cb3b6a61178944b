//! The `odo` binary: `odo serve` runs the demo server of the HTTP contract.
//! With `ODO_DEMO_STORAGE=sqlite` its `Counter` and `Kv` classes are
//! SQLite-backed (for benchmarks; a data directory keeps the kind it was
//! first served with).

fn main() -> std::process::ExitCode {
    let storage = match std::env::var("ODO_DEMO_STORAGE").as_deref() {
        Ok("sqlite") => odo::ClassStorage::Sqlite,
        _ => odo::ClassStorage::KeyValue,
    };
    odo::demo_app_on(storage).main()
}
