//! The values handlers take: requests and responses, alarm information,
//! and which method names are the runtime's.

use bytes::Bytes;

/// An HTTP request delivered to an object's [`DurableObject::fetch`](crate::DurableObject::fetch).
pub type Request = http::Request<Bytes>;

/// The HTTP response an object's [`DurableObject::fetch`](crate::DurableObject::fetch) returns.
pub type Response = http::Response<Bytes>;

/// Method names no RPC call may use: they are the runtime's own events, or
/// start with an underscore (kept for the runtime's future use).
pub fn is_reserved_method(name: &str) -> bool {
    name.is_empty()
        || name.starts_with('_')
        || matches!(name, "fetch" | "alarm" | "init" | "create" | "call")
}

/// What an alarm handler is told about the alarm.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AlarmInfo {
    /// When the alarm was due, milliseconds since the Unix epoch.
    pub scheduled_ms: u64,
    /// How many earlier runs of this alarm failed (0 on the first run).
    pub retry_count: u32,
}
