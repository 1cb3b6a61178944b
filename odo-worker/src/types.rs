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

/// Where the objects of a class keep their storage; chosen when the class
/// is registered, and fixed for the life of a data directory (a server
/// records each class's kind and refuses to start with the other).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum ClassStorage {
    /// The key-value API on the shard's backend (fjall, memory, or a
    /// plugged-in one).
    #[default]
    KeyValue,
    /// One private SQLite database per object
    /// ([`ObjectStorage::sql`](odo_storage::ObjectStorage::sql)), its
    /// key-value API and alarm inside it, group-committed through the
    /// shard's backend.
    Sqlite,
}

impl ClassStorage {
    /// The kind's name as data directories record it: `key-value` or
    /// `sqlite`.
    pub fn as_str(self) -> &'static str {
        match self {
            ClassStorage::KeyValue => "key-value",
            ClassStorage::Sqlite => "sqlite",
        }
    }
}

impl std::fmt::Display for ClassStorage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
