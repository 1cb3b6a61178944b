//! The server process's surroundings: its log output, and the signals and
//! standard input that stop it or restart its workers.

use std::sync::Arc;

use odo_registry::Registry;
use tracing::info;

/// The log filter when `RUST_LOG` is not set: odo at `info`, the storage
/// engine's own per-file chatter (fjall, lsm-tree) only from `warn`, and
/// the HTTP/2 layer (h2) only from `error`: it warns about what clients do
/// wrong (a stream reset flood closes the connection with a warning), one
/// line per hostile connection, which any client could repeat without end.
const DEFAULT_LOG_FILTER: &str = "info,fjall=warn,lsm_tree=warn,h2=error";

/// Log lines waiting for standard error at most; past it, lines are
/// dropped rather than wait. The queue's slots are made up front: with
/// 16,384 of them a fresh server with 2 workers took 33.9 MB over all its
/// processes, with 1,024 32.4 MB, and 31.2 MB when the log was written by
/// the thread that logged (the writer thread's own memory is the rest).
const LOG_LINES_BUFFERED: usize = 1024;

/// Sends the process's log to standard error through a thread of its own:
/// a standard error that nobody reads (a pipe whose reader stopped) once
/// blocked the thread that logged, and with it the server: after 64 KiB of
/// log no request was answered, and SIGTERM did nothing. Now lines past
/// [`LOG_LINES_BUFFERED`] are dropped instead. The guard writes out what
/// is buffered when dropped, for a second at most.
pub(crate) fn init_logging() -> Option<tracing_appender::non_blocking::WorkerGuard> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    let color = log_color(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(true)
        .buffered_lines_limit(LOG_LINES_BUFFERED)
        .thread_name("odo-log")
        .finish(std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(color)
        .with_writer(writer)
        .try_init()
        .ok()
        .map(|()| guard)
}

/// Writes a line to standard output, whatever becomes of it: a closed pipe
/// (`odo serve | true`) made `println!` panic before the server served.
pub(crate) fn say(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = out.write_fmt(line).and_then(|()| out.write_all(b"\n"));
    let _ = out.flush();
}

/// Writes a line to standard error, whatever becomes of it (see [`say`]).
pub(crate) fn complain(line: std::fmt::Arguments<'_>) {
    use std::io::Write;
    let mut err = std::io::stderr().lock();
    let _ = err.write_fmt(line).and_then(|()| err.write_all(b"\n"));
}

/// Whether logs are colored: only on a terminal, and not when `NO_COLOR`
/// is set to a non-empty value (<https://no-color.org>). A log written to a
/// file or a pipe carries no escape codes.
fn log_color(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> bool {
    stderr_is_terminal && no_color.is_none_or(|v| v.is_empty())
}

/// Restarts the workers one after another on each SIGHUP
/// ([`Registry::restart_workers`]: their shards, and the WebSockets of
/// their objects, move to the other workers and back; nothing is dropped).
/// Never returns; aborted at shutdown.
pub(crate) async fn restart_on_hangup(registry: Arc<Registry>) {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut hangup) = signal(SignalKind::hangup()) {
            while hangup.recv().await.is_some() {
                info!("SIGHUP: restarting the workers one after another");
                match registry.restart_workers().await {
                    Ok(()) => info!("every worker restarted"),
                    Err(e) => tracing::warn!(error = %e, "the rolling restart stopped"),
                }
            }
        }
    }
    #[cfg(not(unix))]
    drop(registry);
    std::future::pending::<()>().await;
}

/// Watches for SIGINT and SIGTERM (Ctrl-C elsewhere) from now on, and for
/// SIGHUP: the future resolves on the first SIGINT or SIGTERM, even one
/// that came before it was first polled. Called as the server starts: the
/// handlers used to be installed only once it listened, so a signal during
/// a long start (a split of the shards, workers slow to come up) killed it
/// with the default action. A SIGHUP before the workers run is ignored
/// (there is nothing to restart yet; [`restart_on_hangup`] takes them
/// after).
pub(crate) fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    #[cfg(unix)]
    let signals = {
        use tokio::signal::unix::{SignalKind, signal};
        // Registered for the life of the process once made, whether the
        // stream is kept or not.
        let _ = signal(SignalKind::hangup());
        (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        )
    };
    async move {
        #[cfg(unix)]
        if let (Ok(mut term), Ok(mut int)) = signals {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
            info!("signal received: shutting down");
            return;
        }
        let _ = tokio::signal::ctrl_c().await;
        info!("Ctrl-C received: shutting down");
    }
}

/// Resolves when standard input reaches end of file (or fails).
pub(crate) async fn stdin_closed() {
    use tokio::io::AsyncReadExt;
    let mut stdin = tokio::io::stdin();
    let mut buf = [0u8; 256];
    while let Ok(n) = stdin.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsStr;

    use super::*;

    #[test]
    fn logs_are_colored_only_on_a_terminal_without_no_color() {
        assert!(log_color(true, None));
        assert!(log_color(true, Some(OsStr::new(""))));
        assert!(!log_color(true, Some(OsStr::new("1"))));
        assert!(!log_color(false, None));
        assert!(!log_color(false, Some(OsStr::new("1"))));
    }
}
