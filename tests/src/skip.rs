//! Tests that need what a machine may lack (root, etcd, PostgreSQL, ...)
//! skip and say why, unless their `ODO_REQUIRE_*` variable is set (as
//! `cargo xtask ci` sets it where it installed or has what they need):
//! then they fail instead, so that CI never skips them silently.

/// Prints `why` (the whole line: the test, what it does instead, and why)
/// and returns `false`; panics instead when `require_env` is set.
pub fn unless_required(why: &str, require_env: &str) -> bool {
    if std::env::var_os(require_env).is_some() {
        panic!("{why}, but {require_env} is set");
    }
    eprintln!("{why}");
    false
}
