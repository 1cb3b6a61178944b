//! Request counters and the latency histogram, rendered in the Prometheus
//! text format.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::PoisonError;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
const BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// What the router counts.
#[derive(Debug, Default)]
pub(crate) struct Metrics {
    /// Requests by class, then status.
    requests: Mutex<BTreeMap<String, BTreeMap<u16, u64>>>,
    /// Requests per latency bucket, *not* cumulative (each request counts
    /// once, in the first bucket that holds it; slower than every bound:
    /// in none); [`Metrics::render`] sums them into Prometheus' cumulative
    /// form.
    buckets: [AtomicU64; BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

impl Metrics {
    /// Records one answered request: its class (`-` when none) and status.
    /// Runs on every request: a class seen before costs no allocation, and
    /// the histogram one atomic add.
    pub(crate) fn record(&self, class: &str, status: u16, elapsed: Duration) {
        {
            let mut requests = self.requests.lock().unwrap_or_else(PoisonError::into_inner);
            let by_status = match requests.get_mut(class) {
                Some(by_status) => by_status,
                None => requests.entry(class.to_owned()).or_default(),
            };
            *by_status.entry(status).or_default() += 1;
        }
        let seconds = elapsed.as_secs_f64();
        if let Some(bucket) = BUCKETS.iter().position(|bound| seconds <= *bound) {
            self.buckets[bucket].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Appends the router's metrics.
    pub(crate) fn render(&self, out: &mut String) {
        out.push_str(
            "# HELP odo_http_requests_total HTTP requests answered, by class and status.\n",
        );
        out.push_str("# TYPE odo_http_requests_total counter\n");
        for (class, by_status) in self
            .requests
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
        {
            for (status, n) in by_status {
                let _ = writeln!(
                    out,
                    "odo_http_requests_total{{class=\"{class}\",status=\"{status}\"}} {n}"
                );
            }
        }
        out.push_str("# HELP odo_http_request_duration_seconds Time to answer HTTP requests.\n");
        out.push_str("# TYPE odo_http_request_duration_seconds histogram\n");
        let mut cumulative = 0;
        for (bound, bucket) in BUCKETS.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "odo_http_request_duration_seconds_bucket{{le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count.load(Ordering::Relaxed);
        let _ = writeln!(
            out,
            "odo_http_request_duration_seconds_bucket{{le=\"+Inf\"}} {count}"
        );
        let _ = writeln!(
            out,
            "odo_http_request_duration_seconds_sum {}",
            self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "odo_http_request_duration_seconds_count {count}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_a_cumulative_histogram() {
        let m = Metrics::default();
        m.record("COUNTER", 200, Duration::from_micros(700));
        m.record("COUNTER", 200, Duration::from_millis(30));
        m.record("-", 404, Duration::from_secs(20));
        let mut out = String::new();
        m.render(&mut out);
        assert!(
            out.contains("odo_http_requests_total{class=\"COUNTER\",status=\"200\"} 2\n"),
            "{out}"
        );
        assert!(out.contains("odo_http_requests_total{class=\"-\",status=\"404\"} 1\n"));
        assert!(out.contains("odo_http_request_duration_seconds_bucket{le=\"0.0005\"} 0\n"));
        assert!(out.contains("odo_http_request_duration_seconds_bucket{le=\"0.001\"} 1\n"));
        assert!(out.contains("odo_http_request_duration_seconds_bucket{le=\"0.025\"} 1\n"));
        assert!(out.contains("odo_http_request_duration_seconds_bucket{le=\"0.05\"} 2\n"));
        assert!(out.contains("odo_http_request_duration_seconds_bucket{le=\"10\"} 2\n"));
        assert!(out.contains("odo_http_request_duration_seconds_bucket{le=\"+Inf\"} 3\n"));
        assert!(out.contains("odo_http_request_duration_seconds_count 3\n"));
    }
}
