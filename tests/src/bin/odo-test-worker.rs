//! A worker binary for black-box tests: hosts the demo `Counter` and serves
//! the worker role when started with a worker command line, without the
//! rest of the `odo` app (so tests can play the registry themselves).

use std::process::ExitCode;

use odo_core::launch::WorkerLaunch;
use odo_worker::{Classes, RuntimeConfig};

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_writer(std::io::stderr)
        .init();
    let launch = match WorkerLaunch::parse(std::env::args().skip(1)) {
        Ok(Some(launch)) => launch,
        Ok(None) => {
            eprintln!("odo-test-worker only runs as a worker (started by a registry or a test)");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("odo-test-worker: {e}");
            return ExitCode::from(2);
        }
    };
    // The token comes on standard input, one line (see odo_core::launch).
    let token = match odo_worker::read_token(std::io::stdin().lock()) {
        Ok(token) => token,
        Err(e) => {
            eprintln!("odo-test-worker: {e}");
            return ExitCode::from(2);
        }
    };
    let mut classes = Classes::default();
    if let Err(e) = classes.register::<odo::demo::Counter>("COUNTER") {
        eprintln!("odo-test-worker: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("odo-test-worker: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(odo_worker::serve(
        classes,
        odo_storage::Backends::builtin(),
        launch,
        token,
        RuntimeConfig::default(),
    )) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("odo-test-worker: {e}");
            ExitCode::FAILURE
        }
    }
}
