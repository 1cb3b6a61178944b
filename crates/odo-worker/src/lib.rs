//! odo-worker: where Durable Objects live.
//!
//! This crate will own the object trait a user implements and its context
//! (storage, alarm, stubs to other objects, background tasks), activation,
//! turn-based execution, the output gate, alarms, eviction, RPC dispatch, the
//! worker side of the control protocol and `odo_worker::serve`.
//!
//! It is not built yet: its issue ("odo-worker: the object runtime and the
//! worker process") has not landed, so the crate deliberately exports nothing.
