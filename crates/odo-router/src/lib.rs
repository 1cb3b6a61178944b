//! odo-router: the HTTP front door and the Rust client API.
//!
//! This crate will own the HTTP front door (hyper), object id extraction,
//! forwarding to the owning worker, retries on `Moved`, request limits, and
//! the client API (`Namespace`, stubs) usable from any Rust program.
//!
//! It is not built yet: its issue ("odo-registry, odo-router and `odo
//! serve`") has not landed, so the crate deliberately exports nothing.
