//! odo-tests: black-box tests of odo and the helper binaries they spawn.
//!
//! Nothing here is a library for users: it exists so that tests can depend
//! on every odo crate at once without any odo crate depending on them.
//! [`topology`] starts real servers; [`http`] talks to them; [`scenarios`]
//! is the multi-process scenario suite, each scenario producing a
//! [`transcript::Transcript`]; [`soak`] is the kill soak behind
//! `cargo xtask soak`; [`backend`] is a storage backend defined outside
//! odo's crates, which the test server registers.

pub mod backend;
#[cfg(target_os = "linux")]
pub mod cluster;
#[cfg(unix)]
pub mod etcd;
pub mod http;
#[cfg(target_os = "linux")]
pub mod netns;
#[cfg(unix)]
pub mod postgres;
pub mod scenarios;
pub mod skip;
#[cfg(target_os = "linux")]
pub mod small_disk;
pub mod soak;
pub mod sqlite_cell;
pub mod sqlprobe;
#[cfg(target_os = "linux")]
pub mod tls;
pub mod topology;
pub mod transcript;
pub mod ws;
