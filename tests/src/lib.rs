//! odo-tests: black-box tests of odo, the helper binaries they spawn, and the
//! benchmarks behind `cargo xtask bench`.
//!
//! Nothing here is a library for users: it exists so that tests and
//! benchmarks can depend on every odo crate at once without any odo crate
//! depending on them. [`topology`] starts real servers; [`http`] talks to
//! them; [`scenarios`] is the multi-process scenario suite, each scenario
//! producing a [`transcript::Transcript`].

pub mod http;
pub mod scenarios;
pub mod topology;
pub mod transcript;
