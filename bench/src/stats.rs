//! Small helpers shared by the benchmarks: latency percentiles and ratios.

use std::time::Duration;

/// Latency samples of one measurement.
#[derive(Debug, Default)]
pub(crate) struct Latencies(Vec<Duration>);

impl Latencies {
    pub(crate) fn with_capacity(n: usize) -> Self {
        Self(Vec::with_capacity(n))
    }

    pub(crate) fn push(&mut self, d: Duration) {
        self.0.push(d);
    }

    pub(crate) fn extend(&mut self, other: Latencies) {
        self.0.extend(other.0);
    }

    pub(crate) fn len(&self) -> usize {
        self.0.len()
    }

    /// The `p`-th percentile (0..=100), zero when empty.
    pub(crate) fn percentile(&mut self, p: f64) -> Duration {
        if self.0.is_empty() {
            return Duration::ZERO;
        }
        self.0.sort_unstable();
        let rank = ((p / 100.0) * (self.0.len() - 1) as f64).round() as usize;
        self.0[rank.min(self.0.len() - 1)]
    }
}

/// Microseconds with one decimal, for tables.
pub(crate) fn us(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e6)
}

/// `odo / baseline` as `0.00x`.
pub(crate) fn ratio(odo: f64, baseline: f64) -> String {
    if baseline == 0.0 {
        "n/a".into()
    } else {
        format!("{:.2}x", odo / baseline)
    }
}
