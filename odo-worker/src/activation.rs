//! Names for live instances, and the wall clock alarms use.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// A number unique to each activation in this process.
pub(crate) fn next_activation() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

/// The printed form of activation number `n`: unique in this process by
/// the counter, and across processes with overwhelming probability by a
/// random per-process prefix.
pub(crate) fn activation_name(n: u64) -> String {
    static PREFIX: OnceLock<u64> = OnceLock::new();
    // Uniqueness within the process holds through the counter.
    let prefix = *PREFIX.get_or_init(random_u64);
    format!("{prefix:016x}-{n}")
}

/// A random number from the OS generator, or (if it is unavailable) from
/// the clock and the pid: a start that two processes do not share.
pub(crate) fn random_u64() -> u64 {
    getrandom::u64().unwrap_or_else(|_| {
        let t = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos() as u64;
        t ^ u64::from(std::process::id())
    })
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
