//! The registry's view for the router's admin endpoints (`/_odo/workers`,
//! `/_odo/metrics`): the router does not depend on the registry, so the
//! facade joins them.

use std::sync::Arc;

use futures_util::future::BoxFuture;
use odo_registry::{Registry, WorkerStatus};
use odo_router::Admin;

/// [`Admin`] over a running [`Registry`].
#[derive(Debug, Clone)]
pub struct RegistryAdmin(pub Arc<Registry>);

/// A per-worker metric: name, Prometheus type, help text, value.
type WorkerMetric = (
    &'static str,
    &'static str,
    &'static str,
    fn(&WorkerStatus) -> u64,
);

impl Admin for RegistryAdmin {
    fn workers(&self) -> BoxFuture<'_, serde_json::Value> {
        // Asks every running worker for its figures now (bounded), falling
        // back to its last heartbeat's, with their age.
        Box::pin(async move {
            serde_json::to_value(self.0.workers_fresh().await).unwrap_or(serde_json::Value::Null)
        })
    }

    fn metrics(&self, out: &mut String) {
        let workers = self.0.workers();
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
