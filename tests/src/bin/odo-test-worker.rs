//! A worker binary for black-box tests: hosts the test classes and serves
//! the worker role when started with a worker command line.

use std::process::ExitCode;

use bytes::Bytes;
use odo_core::launch::{TOKEN_ENV, WorkerLaunch};
use odo_worker::{Classes, Context, DurableObject, ObjectError, Request, Response, RuntimeConfig};

/// `POST /increment` adds one and answers the new value; `GET` answers it.
struct Counter;

impl DurableObject for Counter {
    fn create(_: &Context) -> Self {
        Counter
    }

    async fn fetch(
        &mut self,
        ctx: &mut Context,
        request: Request,
    ) -> Result<Response, ObjectError> {
        let n: u64 = ctx.storage().get_typed("n").await?.unwrap_or(0);
        if request.method() == "POST" {
            ctx.storage().put_typed("n", &(n + 1)).await?;
            return Ok(Response::new(Bytes::from((n + 1).to_string())));
        }
        Ok(Response::new(Bytes::from(n.to_string())))
    }
}

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
    let token = std::env::var(TOKEN_ENV).unwrap_or_default();
    let mut classes = Classes::default();
    if let Err(e) = classes.register::<Counter>("COUNTER") {
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
