//! odo-router: the HTTP front door and the Rust client API.
//!
//! This crate owns the path from a request to the object's worker:
//! [`Router`] (hyper 1, HTTP/1.1 and HTTP/2) finds the object with an
//! [`IdExtractor`] (by default [`PathRoutes`]: `/{class}/{name}/...`),
//! enforces the limits (body size, name length, deadline), and hands the
//! request to an [`ObjectService`]; [`ClusterService`] forwards it over a
//! pooled, multiplexed channel to the worker that owns the object's shard,
//! retrying only what is safe to retry. [`Client`] offers the same reach to
//! Rust programs without HTTP.
//!
//! It does not host objects (odo-worker) or supervise processes
//! (odo-registry): it reads the registry's placement table.
//!
//! Answers: unknown class 404, malformed id or over-long name 400, body over
//! the limit 413; a failed call answers by what the client can do with it
//! (never delivered and worth retrying: 503 with `Retry-After`; the
//! object's handler failed: 500; outcome unknown: 502; deadline: 504; call
//! cycle: 508), with the headers `x-odo-error` (the kind) and
//! `x-odo-retryable` (`true` only when the request never reached the
//! object). The table is in the `status` module's docs and DURABILITY.md.
//!
//! ```no_run
//! use std::sync::Arc;
//! use odo_router::{ClusterService, PathRoutes, Router, RouterConfig};
//!
//! # async fn run(registry: odo_registry::Registry) -> std::io::Result<()> {
//! let client = odo_transport::ClientConfig::new(registry.token());
//! let service = Arc::new(ClusterService::new(registry.placement(), client));
//! let routes = Arc::new(PathRoutes::new(256).route("counter", "COUNTER"));
//! let router = Arc::new(Router::new(routes, service, RouterConfig::default()));
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8787").await?;
//! router.serve(listener, std::future::pending()).await;
//! # Ok(()) }
//! ```

mod accept;
mod client;
mod http;
mod metrics;
mod service;
mod status;

pub use client::{Client, ClientError, ClientNamespace, ClientStub};
pub use http::{Admin, IdExtractor, PathRoutes, RouteError, Router, RouterConfig};
pub use odo_transport::forward::Outcome;
pub use service::{ClusterService, ForwardError, Location, ObjectAddress, ObjectService};
pub use status::{ERROR_HEADER, RETRYABLE_HEADER};

use odo_registry::Registry;

/// A per-worker metric: name, Prometheus type, help text, value.
type WorkerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&odo_registry::WorkerStatus) -> u64,
);

/// The registry's view for the admin endpoints.
impl Admin for Registry {
    fn workers(&self) -> futures_util::future::BoxFuture<'_, serde_json::Value> {
        // Asks every running worker for its figures now (bounded), falling
        // back to its last heartbeat's, with their age.
        Box::pin(async move {
            serde_json::to_value(self.workers_fresh().await).unwrap_or(serde_json::Value::Null)
        })
    }

    fn metrics(&self, out: &mut String) {
        let workers = Registry::workers(self);
        let per_worker: [WorkerMetric; 4] = [
            (
                "odo_live_objects",
                "gauge",
                "Objects live on each worker.",
                |w| w.live_objects,
            ),
            (
                "odo_worker_restarts_total",
                "counter",
                "Worker process restarts.",
                |w| u64::from(w.restarts),
            ),
            (
                "odo_commit_batches_total",
                "counter",
                "Group commits by each worker's current process.",
                |w| w.commit_batches,
            ),
            (
                "odo_commit_turns_total",
                "counter",
                "Turns committed in those batches (turns / batches = average batch size).",
                |w| w.commit_turns,
            ),
        ];
        for (name, kind, help, value) in per_worker {
            use std::fmt::Write;
            let _ = write!(out, "# HELP {name} {help}\n# TYPE {name} {kind}\n");
            for w in &workers {
                let _ = writeln!(out, "{name}{{worker=\"{}\"}} {}", w.slot, value(w));
            }
        }
    }
}
