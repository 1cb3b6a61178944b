//! `cargo xtask`: the project's automation, in Rust so that it runs wherever
//! cargo does.
//!
//! - `cargo xtask ci`: everything CI checks, in order (format, lints, each
//!   library crate packaged and built alone, docs, tests, the multi-process
//!   matrix, cross-platform compilation).
//! - `cargo xtask test-multiprocess`: the scenario suite on every backend x
//!   transport.
//! - `cargo xtask test-cluster`: odo across machines (etcd, PostgreSQL,
//!   several hosts), installing etcd and PostgreSQL when missing.
//! - `cargo xtask bench [NAME...]`: the benchmarks, in release mode.
//! - `cargo xtask package-check`, `cargo xtask cross-check`: one step of
//!   `ci` alone.
//!
//! Each step prints the command it runs, and the first failing step stops
//! the run with its exit status.

use std::process::{Command, ExitCode};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};

mod multiprocess;
mod packaging;
mod system;

/// Targets whose compilation `ci` checks besides the host's, so that
/// platform-specific code (named pipes, Unix sockets) keeps compiling.
const CROSS_TARGETS: &[&str] = &["x86_64-pc-windows-gnu", "aarch64-apple-darwin"];

/// The command line: `cargo xtask <task>`.
#[derive(Debug, Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "odo's automation: what CI checks, the multi-process matrix, the benchmarks"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Everything CI checks: cargo fmt --check, cargo clippy -D warnings,
    /// package-check, cargo doc (warnings denied), cargo test --workspace,
    /// test-multiprocess, test-cluster, cross-check.
    Ci,
    /// Every scenario on every backend x transport, with real child
    /// processes; prints a matrix and any transcript difference between cells.
    TestMultiprocess(multiprocess::Options),
    /// The benchmarks, in release mode (`bench --help` lists them).
    // Everything after `bench`, `--help` included, goes to odo-bench, which
    // knows the benchmarks.
    #[command(disable_help_flag = true)]
    Bench {
        /// Benchmark names (none: all), passed to odo-bench.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The kill soak in release mode: SIGKILL a random worker of four every
    /// second under load on 50 counters, 100 times; fails if an
    /// acknowledged write was lost or an object had two live instances, and
    /// reports recovery times (`soak --help` lists its options).
    #[command(disable_help_flag = true)]
    Soak {
        /// Options passed to the soak (`--kills`, `--interval-ms`, ...).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// odo across machines with real processes: a 3-member etcd cluster,
    /// PostgreSQL and odo hosts, each etcd member and host in a network
    /// namespace of its own on a bridge, TLS everywhere (placement,
    /// forwarding, failover, fencing of a paused host, join, leave, fjall,
    /// partitions). Without root the hosts run on loopback addresses and
    /// the partitions skip. Installs etcd-server, postgresql,
    /// protobuf-compiler, libprotobuf-dev and iproute2 when missing.
    TestCluster,
    /// Only the packaging step of ci: cargo package for every published
    /// crate, then cargo check of each library crate alone.
    PackageCheck,
    /// Only the cross-target cargo check step of ci (Windows, macOS).
    CrossCheck,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.task) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(task: Task) -> Result<()> {
    match task {
        Task::Ci => ci(),
        Task::TestMultiprocess(options) => multiprocess::run(options),
        Task::Bench { args } => bench(&args),
        Task::Soak { args } => soak(&args),
        Task::TestCluster => test_cluster(),
        Task::PackageCheck => packaging::check(),
        Task::CrossCheck => cross_check(),
    }
}

fn ci() -> Result<()> {
    let started = Instant::now();
    // A clean checkout compiles everything once: incremental caches would
    // only take disk (3.3 GB of a 6.9 GB target measured).
    NOT_INCREMENTAL.store(true, Ordering::Relaxed);
    cargo(&["fmt", "--all", "--check"])?;
    // The tests crate builds odo's `cluster` feature on Linux: its etcd
    // client needs protoc.
    if cfg!(target_os = "linux") {
        system::ensure(&[system::PROTOC, system::PROTO_INCLUDES])?;
    }
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // `--all-targets` leaves out the tests that `cargo test` does not run.
    cargo(&[
        "clippy",
        "-p",
        "odo-tests",
        "--test",
        "multiprocess",
        "--test",
        "soak",
        "--test",
        "cluster",
        "--test",
        "cluster_port_from_outside",
        "--",
        "-D",
        "warnings",
    ])?;
    packaging::check()?;
    // Broken intra-doc links and malformed docs fail here, not on docs.rs.
    cargo_with_env(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    // The browser test drives the room's page in Chromium, and the
    // postgres backend's tests start a private PostgreSQL server: both are
    // installed here when missing, and required (not skipped) under `ci`.
    system::ensure(&[system::CHROMIUM, system::POSTGRES])?;
    // The full-disk tests mount a small tmpfs: as root (as CI runs) they
    // must run, not skip.
    let mut env = vec![("ODO_REQUIRE_BROWSER", "1"), ("ODO_REQUIRE_POSTGRES", "1")];
    if system::is_root() {
        env.push(("ODO_REQUIRE_SMALL_DISK", "1"));
    }
    cargo_with_env(&["test", "--workspace"], &env)?;
    multiprocess::run(multiprocess::Options::whole_matrix())?;
    if cfg!(target_os = "linux") {
        test_cluster()?;
    }
    cross_check()?;
    println!(
        "xtask: ci passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// `cargo xtask test-cluster`: installs what the cluster test needs when
/// missing (or says what to run), then runs it, failing rather than
/// skipping if something is still missing.
fn test_cluster() -> Result<()> {
    if !cfg!(target_os = "linux") {
        println!(
            "xtask: SKIPPED test-cluster: it runs on Linux only (etcd, PostgreSQL and the hosts as processes of this machine)"
        );
        return Ok(());
    }
    system::ensure(&[
        system::PROTOC,
        system::PROTO_INCLUDES,
        system::ETCD,
        system::POSTGRES,
        system::IPROUTE2,
    ])?;
    // The clusters' hosts run in network namespaces: as root (as CI
    // runs) they must, not fall back to loopback or skip; otherwise the
    // hosts run on loopback addresses and the partitions skip, saying
    // why.
    let mut env = vec![("ODO_REQUIRE_CLUSTER", "1")];
    if system::is_root() {
        env.push(("ODO_REQUIRE_NETNS", "1"));
    } else {
        println!(
            "xtask: not root: test-cluster's hosts run on loopback addresses, not in network namespaces, and its partition scenarios skip"
        );
    }
    cargo_with_env(
        &[
            "test",
            "-p",
            "odo-tests",
            "--test",
            "cluster",
            "--test",
            "cluster_port_from_outside",
        ],
        &env,
    )
}

fn bench(names: &[String]) -> Result<()> {
    let mut args = vec![
        "run",
        "--release",
        "-p",
        "odo-bench",
        "--bin",
        "odo-bench",
        "--",
    ];
    args.extend(names.iter().map(String::as_str));
    cargo(&args)
}

fn soak(options: &[String]) -> Result<()> {
    let mut args = vec![
        "test",
        "--release",
        "-p",
        "odo-tests",
        "--test",
        "soak",
        "--",
    ];
    args.extend(options.iter().map(String::as_str));
    cargo(&args)
}

/// `cargo check --workspace --all-targets` for each cross target, adding a
/// missing target with rustup. A target that cannot be added (no rustup, no
/// network) is skipped with a message saying how to add it by hand.
fn cross_check() -> Result<()> {
    let installed = installed_targets();
    for target in CROSS_TARGETS {
        let have = match &installed {
            Some(list) if list.iter().any(|t| t == target) => true,
            Some(_) => {
                println!("xtask: adding the missing target {target} (rustup target add {target})");
                Command::new("rustup")
                    .args(["target", "add", target])
                    .status()
                    .is_ok_and(|s| s.success())
            }
            None => false,
        };
        if !have {
            println!(
                "xtask: SKIPPED cargo check --target {target}: the target is not installed and \
                 could not be added; run `rustup target add {target}` to check it"
            );
            continue;
        }
        // Rust only: bundled SQLite's C source would need a C compiler for
        // the target. Pointing libsqlite3-sys at a system library (which
        // `check` never links) keeps its bundled bindings and skips the C.
        cargo_with_env(
            &["check", "--workspace", "--all-targets", "--target", target],
            &[("LIBSQLITE3_SYS_USE_PKG_CONFIG", "1")],
        )?;
    }
    Ok(())
}

fn installed_targets() -> Option<Vec<String>> {
    let out = Command::new("rustup")
        .args(["target", "list", "--installed"])
        .output()
        .ok()?;
    out.status.success().then(|| {
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .map(|l| l.trim().to_owned())
            .collect()
    })
}

/// Set by `ci`: every cargo it runs builds without incremental caches,
/// unless `CARGO_INCREMENTAL` says otherwise. All of them alike, since
/// cargo rebuilds what another setting built.
static NOT_INCREMENTAL: AtomicBool = AtomicBool::new(false);

/// The cargo that runs xtask, so that every step uses the same toolchain.
fn cargo_program() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// A command running [`cargo_program`], as every step of xtask runs it.
pub(crate) fn cargo_command() -> Command {
    let mut command = Command::new(cargo_program());
    if NOT_INCREMENTAL.load(Ordering::Relaxed) && std::env::var_os("CARGO_INCREMENTAL").is_none() {
        command.env("CARGO_INCREMENTAL", "0");
    }
    command
}

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

/// Runs cargo with `args`, and `env` added to its environment.
fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    println!("xtask: $ {}cargo {}", shown.concat(), args.join(" "));
    let status = cargo_command()
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("could not start {}", cargo_program()))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &[&str]) -> Result<Task, clap::Error> {
        Cli::try_parse_from(std::iter::once("cargo xtask").chain(args.iter().copied()))
            .map(|cli| cli.task)
    }

    #[test]
    fn the_command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn each_task_parses() {
        assert!(matches!(parse(&["ci"]), Ok(Task::Ci)));
        assert!(matches!(parse(&["package-check"]), Ok(Task::PackageCheck)));
        assert!(matches!(parse(&["cross-check"]), Ok(Task::CrossCheck)));
        assert!(matches!(parse(&["test-cluster"]), Ok(Task::TestCluster)));
        assert!(matches!(
            parse(&["test-multiprocess"]),
            Ok(Task::TestMultiprocess(_))
        ));
    }

    #[test]
    fn no_task_or_an_unknown_one_is_refused() {
        assert!(parse(&[]).is_err());
        let err = parse(&["deploy"]).expect_err("unknown task");
        assert_eq!(err.kind(), clap::error::ErrorKind::InvalidSubcommand);
        assert!(parse(&["ci", "--fast"]).is_err());
    }

    #[test]
    fn soak_passes_everything_to_the_soak() {
        let Ok(Task::Soak { args }) = parse(&["soak", "--kills", "10"]) else {
            panic!("soak");
        };
        assert_eq!(args, ["--kills", "10"]);
    }

    #[test]
    fn bench_passes_everything_to_odo_bench() {
        let Ok(Task::Bench { args }) = parse(&["bench", "storage", "e2e"]) else {
            panic!("bench with names")
        };
        assert_eq!(args, ["storage", "e2e"]);
        // `--help` lists the benchmarks, which odo-bench knows.
        let Ok(Task::Bench { args }) = parse(&["bench", "--help"]) else {
            panic!("bench --help")
        };
        assert_eq!(args, ["--help"]);
        let Ok(Task::Bench { args }) = parse(&["bench"]) else {
            panic!("bench alone")
        };
        assert!(args.is_empty());
    }
}
