//! odo-cluster owns odo across machines: a host joins its cluster through
//! etcd (a member key under the host's lease, kept alive), one host elected
//! through etcd's election API assigns shards to hosts, each host acquires
//! the shards assigned to it (an owner key under its lease, whose creation
//! revision is the shard's epoch: a fencing token that only grows) and
//! serves them from its own object runtime, and every host's router
//! follows the owner keys ([`EtcdPlacement`]) to forward requests to the
//! owning host over odo's transport. It does not store data (a backend
//! does: with PostgreSQL a shard survives its host, with fjall it stays on
//! it) and it does not speak HTTP (the odo facade's front door does).
//!
//! # Single activation when leases lie
//!
//! A host serves a shard only while its lease holds within the **local
//! deadline** ([`ClusterConfig::local_deadline`], shorter than the TTL,
//! measured on the monotonic clock from when an acknowledged keep-alive
//! was sent): past it, it stops serving every shard, before etcd can expire
//! the lease and another host acquire them. A host that misses that (paused
//! by SIGSTOP, a clock jump, a slow thread) is caught at the write: the new
//! owner opens the shard at a newer epoch, and PostgreSQL refuses every
//! commit the old one makes (`odo_postgres`, DESIGN "Beyond one machine").
//!
//! Cluster mode is built on Linux only: on other platforms this crate is
//! empty (and odo's `cluster` feature refuses to compile).
//!
//! # Keys
//!
//! See [`keys`] for the layout under `/odo/<cluster name>/`.

#[cfg(target_os = "linux")]
pub mod assign;
#[cfg(target_os = "linux")]
mod config;
#[cfg(target_os = "linux")]
mod doors;
#[cfg(target_os = "linux")]
mod error;
#[cfg(target_os = "linux")]
mod host;
#[cfg(target_os = "linux")]
pub mod keys;
#[cfg(target_os = "linux")]
mod leader;
#[cfg(target_os = "linux")]
mod lease;
#[cfg(target_os = "linux")]
mod placement;
#[cfg(target_os = "linux")]
mod shards;
#[cfg(target_os = "linux")]
mod tls;
#[cfg(target_os = "linux")]
mod view;
#[cfg(target_os = "linux")]
pub use config::{ClusterConfig, TlsFiles};
#[cfg(target_os = "linux")]
pub use error::ClusterError;
#[cfg(target_os = "linux")]
pub use host::{Host, HostStatus, ShardPlacement};
#[cfg(target_os = "linux")]
pub use lease::LeaseState;
#[cfg(target_os = "linux")]
pub use placement::EtcdPlacement;
#[cfg(target_os = "linux")]
pub use tls::HostTls;
#[cfg(target_os = "linux")]
pub use view::{MemberEntry, OwnerEntry, View};
