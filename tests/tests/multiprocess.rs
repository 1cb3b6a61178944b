//! The multi-process scenario runner: one cell (backend x transport) of
//! `cargo xtask test-multiprocess`. Not part of `cargo test`: run it through
//! xtask, which builds it once and runs it per cell.
//!
//! `cargo test -p odo-tests --test multiprocess -- --backend fjall --transport uds [--filter NAME] [--out DIR]`
//!
//! Each scenario's transcript must match its committed snapshot in
//! `tests/snapshots/` (one snapshot for every cell, so every cell must
//! produce the same transcript). Results go to `DIR/results.tsv`, each
//! transcript to `DIR/NAME.txt` and its figures to `DIR/NAME.summary`.

use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Parser;
use odo_tests::scenarios::{self, World};
use odo_tests::transcript::Transcript;

/// One cell's command line.
#[derive(Debug, Parser)]
#[command(
    name = "multiprocess",
    bin_name = "cargo test -p odo-tests --test multiprocess --",
    about = "One cell of `cargo xtask test-multiprocess`"
)]
struct Args {
    /// The storage backend the test server runs (the server's `--storage`
    /// checks the name).
    #[arg(long, default_value = "fjall")]
    backend: String,
    /// The transport between the processes (the server checks the name).
    #[arg(long, default_value = if cfg!(unix) { "uds" } else { "tcp" })]
    transport: String,
    /// Only the scenarios whose name contains NAME.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Where to write results.tsv and each transcript.
    #[arg(long, value_name = "DIR")]
    out: Option<PathBuf>,
    /// Passed along by `cargo test`; ignored.
    #[arg(long = "nocapture", hide = true)]
    _nocapture: bool,
    /// Passed along by `cargo test -q`; ignored.
    #[arg(long = "quiet", short = 'q', hide = true)]
    _quiet: bool,
}

fn main() -> ExitCode {
    // A bad argument prints clap's message and exits with status 2.
    let args = Args::parse();
    let cell = format!("{}/{}", args.backend, args.transport);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("multiprocess: {e}");
            return ExitCode::FAILURE;
        }
    };
    if let Some(out) = &args.out
        && let Err(e) = std::fs::create_dir_all(out)
    {
        eprintln!("multiprocess: cannot create {}: {e}", out.display());
        return ExitCode::FAILURE;
    }
    let all = scenarios::all();
    let selected: Vec<_> = all
        .iter()
        .filter(|s| args.filter.as_deref().is_none_or(|f| s.name.contains(f)))
        .collect();
    if selected.is_empty() {
        let names: Vec<_> = all.iter().map(|s| s.name).collect();
        eprintln!(
            "[{cell}] no scenario matches --filter {:?}; the scenarios are: {}",
            args.filter.as_deref().unwrap_or_default(),
            names.join(", ")
        );
        return ExitCode::FAILURE;
    }
    let binary = PathBuf::from(env!("CARGO_BIN_EXE_odo-test-server"));
    let mut world = match World::start(binary, &args.backend, &args.transport) {
        Ok(world) => world,
        Err(e) => {
            eprintln!("[{cell}] cannot start the topology: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let total = selected.len();
    let mut results = String::new();
    let mut failed = 0;
    for (i, scenario) in selected.iter().enumerate() {
        let started = Instant::now();
        let (status, detail) = if let Some(reason) = scenario.skip_reason(&world) {
            ("SKIP", reason)
        } else {
            let mut transcript = Transcript::default();
            let run = runtime.block_on(async {
                tokio::time::timeout(
                    Duration::from_secs(90),
                    (scenario.run)(&mut world, &mut transcript),
                )
                .await
            });
            let outcome = match run {
                Err(_) => Err("timed out after 90 s".to_owned()),
                Ok(Err(e)) => Err(format!("{e:#}")),
                Ok(Ok(())) if !transcript.false_facts().is_empty() => {
                    Err(format!("false: {}", transcript.false_facts().join("; ")))
                }
                Ok(Ok(())) => {
                    let text = transcript.text();
                    let name = scenario.name;
                    std::panic::catch_unwind(AssertUnwindSafe(|| {
                        insta::with_settings!({
                            snapshot_path => "snapshots",
                            prepend_module_to_snapshot => false,
                            omit_expression => true,
                        }, {
                            insta::assert_snapshot!(name, text);
                        });
                    }))
                    .map_err(|_| "the transcript differs from its snapshot".to_owned())
                }
            };
            if let Some(out) = &args.out {
                let _ = std::fs::write(
                    out.join(format!("{}.txt", scenario.name)),
                    transcript.text(),
                );
                let _ = std::fs::write(
                    out.join(format!("{}.summary", scenario.name)),
                    transcript.summary().join("\n"),
                );
            }
            match outcome {
                Ok(()) => ("PASS", transcript.summary().join(" ")),
                Err(e) => {
                    failed += 1;
                    ("FAIL", e)
                }
            }
        };
        println!(
            "[{cell}] ({}/{total}) {:<24} {status} {:>6} ms  {detail}",
            i + 1,
            scenario.name,
            started.elapsed().as_millis()
        );
        results.push_str(&format!(
            "{}\t{status}\t{}\n",
            scenario.name,
            detail.replace(['\t', '\n'], " ")
        ));
    }
    drop(world);
    if let Some(out) = &args.out {
        let _ = std::fs::write(out.join("results.tsv"), results);
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
