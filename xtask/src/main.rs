//! `cargo xtask`: the project's automation, in Rust so that it runs wherever
//! cargo does.
//!
//! - `cargo xtask ci`: everything CI checks, in order (format, lints, docs,
//!   tests, the multi-process matrix, cross-platform compilation).
//! - `cargo xtask test-multiprocess`: the scenario suite on every backend x
//!   transport.
//! - `cargo xtask bench [NAME...]`: the benchmarks, in release mode.
//!
//! Each step prints the command it runs, and the first failing step stops
//! the run with its exit status.

use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{Context, Result, bail};

mod multiprocess;

/// Targets whose compilation `ci` checks besides the host's, so that
/// platform-specific code (named pipes, Unix sockets) keeps compiling.
const CROSS_TARGETS: &[&str] = &["x86_64-pc-windows-gnu", "aarch64-apple-darwin"];

const USAGE: &str = "\
usage: cargo xtask <command>

commands:
  ci               cargo fmt --check, cargo clippy -D warnings, cargo doc (warnings denied),
                   cargo test --workspace, cargo xtask test-multiprocess, cargo check for the
                   cross targets (Windows, macOS)
  test-multiprocess [--backend memory,fjall] [--transport uds,tcp] [--filter NAME] [--keep-going]
                   every scenario on every backend x transport, with real child processes
  bench [NAME...]  run benchmarks in release mode (no name: all; `bench --help` lists them)
  cross-check      only the cross-target cargo check step of ci
";

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("xtask: error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some((command, rest)) = args.split_first() else {
        print!("{USAGE}");
        bail!("no command given");
    };
    match command.as_str() {
        "ci" => ci(),
        "bench" => bench(rest),
        "cross-check" => cross_check(),
        "test-multiprocess" => multiprocess::run(rest),
        "-h" | "--help" | "help" => {
            print!("{USAGE}");
            Ok(())
        }
        other => {
            print!("{USAGE}");
            bail!("unknown command {other:?}")
        }
    }
}

fn ci() -> Result<()> {
    let started = Instant::now();
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&[
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ])?;
    // Broken intra-doc links and malformed docs fail here, not on docs.rs.
    cargo_with_env(
        &["doc", "--workspace", "--no-deps"],
        &[("RUSTDOCFLAGS", "-D warnings")],
    )?;
    cargo(&["test", "--workspace"])?;
    multiprocess::run(&[])?;
    cross_check()?;
    println!(
        "xtask: ci passed in {:.0} s",
        started.elapsed().as_secs_f64()
    );
    Ok(())
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
        cargo(&["check", "--workspace", "--all-targets", "--target", target])?;
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

fn cargo(args: &[&str]) -> Result<()> {
    cargo_with_env(args, &[])
}

/// Runs cargo with `args`, and `env` added to its environment.
fn cargo_with_env(args: &[&str], env: &[(&str, &str)]) -> Result<()> {
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let shown: Vec<String> = env.iter().map(|(k, v)| format!("{k}={v:?} ")).collect();
    println!("xtask: $ {}cargo {}", shown.concat(), args.join(" "));
    let status = Command::new(&cargo)
        .args(args)
        .envs(env.iter().copied())
        .status()
        .with_context(|| format!("could not start {cargo}"))?;
    if !status.success() {
        bail!("`cargo {}` failed ({status})", args.join(" "));
    }
    Ok(())
}
