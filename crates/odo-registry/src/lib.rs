//! odo-registry: spawning and supervising worker processes.
//!
//! This crate will own spawning worker processes, supervising them (restart
//! with backoff, kill on missed heartbeats), shard placement with epochs, the
//! registry side of the control protocol and the placement-table watch.
//!
//! It is not built yet: its issue ("odo-registry, odo-router and `odo
//! serve`") has not landed, so the crate deliberately exports nothing.
