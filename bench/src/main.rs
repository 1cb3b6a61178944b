//! `odo-bench`: the benchmarks behind `cargo xtask bench [NAME...]`.
//!
//! Each benchmark measures its baseline in the same run and prints absolute
//! figures plus the ratio odo/baseline. Nothing here asserts on time.

use clap::Parser;
use clap::builder::{PossibleValue, PossibleValuesParser};

mod cluster;
#[cfg(target_os = "linux")]
mod cluster_failover;
mod e2e;
mod sql;
mod stats;
mod storage;
mod transport;
mod websocket;
mod worker;

type Bench = fn() -> anyhow::Result<()>;

const BENCHES: &[(&str, &str, Bench)] = &[
    (
        "transport",
        "odo's channel against raw echo over UDS and TCP",
        transport::run,
    ),
    (
        "storage",
        "group-committed increments against raw fjall batches and per-write fsync",
        storage::run,
    ),
    (
        "worker",
        "in-process object runtime: events/s, activations/s, memory per object, durable increments",
        worker::run,
    ),
    (
        "sql",
        "SQLite-backed counters and queries against fjall-backed objects and raw rusqlite",
        sql::run,
    ),
    (
        "e2e",
        "HTTP load on the odo server against workerd (wrk, fjall with fsync)",
        e2e::run,
    ),
    (
        "websocket",
        "the room over WebSockets against workerd's: fan-out, idle sockets, a worker killed, one big room",
        websocket::run,
    ),
    (
        "cluster",
        "odo across hosts: fjall, PostgreSQL, 3 hosts entering at owner and not; PostgreSQL alone; etcd's work per shard move",
        cluster::run,
    ),
];

/// `odo-bench [NAME...]`.
#[derive(Debug, Parser)]
#[command(
    name = "odo-bench",
    about = "odo's benchmarks, each against a baseline measured in the same run"
)]
struct Cli {
    /// The benchmarks to run (none: all).
    #[arg(value_name = "NAME", value_parser = bench_names())]
    names: Vec<String>,
}

/// The names of [`BENCHES`] with what each measures, for `--help`.
fn bench_names() -> PossibleValuesParser {
    PossibleValuesParser::new(
        BENCHES
            .iter()
            .map(|(name, what, _)| PossibleValue::new(*name).help(*what)),
    )
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    for (name, _, run) in BENCHES {
        if cli.names.is_empty() || cli.names.iter().any(|a| a == name) {
            println!("== bench {name}");
            run()?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;
    use clap::error::ErrorKind;

    use super::*;

    #[test]
    fn names_are_checked_against_the_benchmarks() {
        Cli::command().debug_assert();
        let names = |args: &[&str]| {
            Cli::try_parse_from(std::iter::once("odo-bench").chain(args.iter().copied()))
                .map(|cli| cli.names)
        };
        assert_eq!(names(&[]).unwrap(), Vec::<String>::new());
        assert_eq!(names(&["storage", "e2e"]).unwrap(), ["storage", "e2e"]);
        assert_eq!(
            names(&["disk"]).expect_err("unknown").kind(),
            ErrorKind::InvalidValue
        );
    }

    #[test]
    fn help_lists_every_benchmark_with_what_it_measures() {
        let help = Cli::command().render_long_help().to_string();
        for (name, what, _) in BENCHES {
            assert!(help.contains(name) && help.contains(what), "{help}");
        }
    }
}
