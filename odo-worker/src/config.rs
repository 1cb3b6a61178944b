//! Runtime limits and policies, with their defaults.

use std::time::Duration;

use odo_storage::SqlLimits;

/// Limits and timings of the object runtime. `Default` gives the documented
/// defaults.
#[derive(Debug, Clone)]
pub struct RuntimeConfig {
    /// Events queued per object beyond the one running; one more is refused
    /// with `Overloaded` at once. Default 1,024.
    pub queue_depth: usize,
    /// An object with no event and no background task for this long is
    /// evicted. Default 30 s.
    pub idle_timeout: Duration,
    /// Live objects above this are evicted, least recently used first, as
    /// soon as they are idle. Default 100,000.
    pub max_live_objects: usize,
    /// How failing alarms are retried.
    pub alarm_retry: AlarmRetry,
    /// The deadline of events that do not bring their caller's (alarms,
    /// calls from a program holding the runtime): how long calls they make
    /// to other objects may take in all. Default 30 s. A request's or a
    /// call's turn still running at its deadline is cut there (the object
    /// reset); an alarm's is cut at [`alarm_time_limit`](Self::alarm_time_limit).
    pub call_timeout: Duration,
    /// How long an alarm handler may run. One still running then is cut
    /// (its object reset, its turn's writes dropped) and counts as a
    /// failure, retried as [`alarm_retry`](Self::alarm_retry) says.
    /// Default 15 minutes (Cloudflare's limit on an alarm's wall time).
    pub alarm_time_limit: Duration,
    /// How long releasing a shard (a move, a drain, shutdown) waits for its
    /// objects to finish their events; then the objects still running are
    /// stopped, their events answered `OutcomeUnknown`. Default 10 s.
    pub release_grace: Duration,
    /// The largest WebSocket message an object may send or receive, in
    /// bytes. Default 32 MiB (as Cloudflare). A server that odo's facade
    /// runs sets it to its front door's limit (`--websocket-max-message-bytes`),
    /// in this process and in its workers (their launch carries it), so
    /// objects receive every message the door lets through.
    pub websocket_max_message_bytes: usize,
    /// The most WebSockets one object may have accepted at once; one more
    /// accept fails with [`WebSocketError::TooManySockets`](crate::WebSocketError).
    /// Default [`MAX_SOCKETS_PER_OBJECT`](crate::MAX_SOCKETS_PER_OBJECT)
    /// (32,768, as Cloudflare).
    pub websocket_max_sockets_per_object: usize,
    /// SQLite-backed objects' largest database and the history kept for
    /// point-in-time recovery, for every store this runtime's host opens
    /// ([`Runtime::store_options`](crate::Runtime::store_options)).
    /// Default: [`SqlLimits::default`] (10 GB, 30 days, 1 GiB per shard).
    pub sql: SqlLimits,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            queue_depth: 1024,
            idle_timeout: Duration::from_secs(30),
            max_live_objects: 100_000,
            alarm_retry: AlarmRetry::default(),
            call_timeout: crate::call::DEFAULT_CALL_DEADLINE,
            alarm_time_limit: Duration::from_secs(15 * 60),
            release_grace: Duration::from_secs(10),
            websocket_max_message_bytes: 32 * 1024 * 1024,
            websocket_max_sockets_per_object: 32_768,
            sql: SqlLimits::default(),
        }
    }
}

/// Exponential backoff for failing alarms: retry `n` (0-based) waits
/// `min(first_delay * 2^n, max_delay)`; after `max_retries` failed retries
/// the alarm is dropped with a log line.
///
/// The alarm itself is durable; its failure count is not. The count lives
/// in the runtime that holds the shard, so when the worker restarts or the
/// shard moves, a failing alarm runs again at once with `retry_count` 0
/// and gets a full set of retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmRetry {
    /// The delay before the first retry. Default 2 s.
    pub first_delay: Duration,
    /// The cap on any delay. Default 5 minutes.
    pub max_delay: Duration,
    /// Retries after the first failure. Default 6.
    pub max_retries: u32,
}

impl Default for AlarmRetry {
    fn default() -> Self {
        Self {
            first_delay: Duration::from_secs(2),
            max_delay: Duration::from_secs(300),
            max_retries: 6,
        }
    }
}

impl AlarmRetry {
    /// The delay before running again an alarm that has failed `failures`
    /// times (1 after the first failure), or `None` when it must be dropped.
    pub fn delay_after(&self, failures: u32) -> Option<Duration> {
        if failures == 0 || failures > self.max_retries {
            return None;
        }
        let factor = 1u32.checked_shl(failures - 1).unwrap_or(u32::MAX);
        Some(self.first_delay.saturating_mul(factor).min(self.max_delay))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap_then_gives_up() {
        let r = AlarmRetry::default();
        let secs: Vec<_> = (1..=7)
            .map(|n| r.delay_after(n).map(|d| d.as_secs()))
            .collect();
        assert_eq!(
            secs,
            [
                Some(2),
                Some(4),
                Some(8),
                Some(16),
                Some(32),
                Some(64),
                None
            ]
        );
        let capped = AlarmRetry {
            max_delay: Duration::from_secs(5),
            max_retries: 100,
            ..r
        };
        assert_eq!(capped.delay_after(3), Some(Duration::from_secs(5)));
        assert_eq!(capped.delay_after(64), Some(Duration::from_secs(5)));
        assert_eq!(r.delay_after(0), None);
    }
}
