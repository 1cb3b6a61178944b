//! `cargo xtask test-multiprocess`: every scenario on every cell of the
//! backend x transport matrix, with real child processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::builder::PossibleValuesParser;
use similar::TextDiff;

/// The storage backends of the matrix: names the test server registers
/// (odo's built-in `memory` and `fjall`, `logfile`, a backend defined
/// in the tests crate, outside odo's: `odo_tests::backend`, `sqlite`,
/// fjall with every class SQLite-backed: `odo_tests::sqlite_cell`, and
/// `postgres`, against a private PostgreSQL server the cell starts).
/// Registering a backend in the test server (`App::backend`) and adding
/// its name here puts it in the matrix; whether it is durable (which
/// decides the durable-only scenarios) comes from its factory.
pub(crate) const BACKENDS: &[&str] = &["memory", "fjall", "logfile", "sqlite", "postgres"];

/// The transports of the matrix, with whether this platform has them.
/// Adding one here (and to the server's `--transport` flag) puts it in the
/// matrix.
pub(crate) const TRANSPORTS: &[(&str, bool)] = &[("uds", cfg!(unix)), ("tcp", true)];

/// The names of [`TRANSPORTS`], for the command line.
fn transport_names() -> Vec<&'static str> {
    TRANSPORTS.iter().map(|(name, _)| *name).collect()
}

/// `cargo xtask test-multiprocess [--backend ...] [--transport ...]
/// [--filter NAME] [--keep-going]`.
#[derive(Debug, clap::Args)]
pub(crate) struct Options {
    /// The storage backends to run, comma-separated.
    #[arg(
        long = "backend",
        value_name = "BACKEND,...",
        value_delimiter = ',',
        value_parser = PossibleValuesParser::new(BACKENDS),
        default_values = BACKENDS,
    )]
    backends: Vec<String>,
    /// The transports to run, comma-separated (one this platform lacks is
    /// reported as skipped).
    #[arg(
        long = "transport",
        value_name = "TRANSPORT,...",
        value_delimiter = ',',
        value_parser = PossibleValuesParser::new(transport_names()),
        default_values = transport_names(),
    )]
    transports: Vec<String>,
    /// Only the scenarios whose name contains NAME.
    #[arg(long, value_name = "NAME")]
    filter: Option<String>,
    /// Runs every cell even after one failed.
    #[arg(long)]
    keep_going: bool,
}

impl Options {
    /// Every scenario on every cell, stopping at the first failing cell:
    /// what `cargo xtask ci` runs.
    pub(crate) fn whole_matrix() -> Self {
        Options {
            backends: BACKENDS.iter().map(|b| b.to_string()).collect(),
            transports: transport_names().iter().map(|t| t.to_string()).collect(),
            filter: None,
            keep_going: false,
        }
    }
}

/// One cell's outcome per scenario.
#[derive(Debug, Clone)]
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

pub(crate) fn run(options: Options) -> Result<()> {
    let started = Instant::now();
    if options.backends.iter().any(|b| b == "postgres") {
        crate::system::ensure(&[crate::system::POSTGRES])?;
    }
    println!("xtask: building the scenario runner and the test server once");
    let status = crate::cargo_command()
        .args([
            "test",
            "-p",
            "odo-tests",
            "--test",
            "multiprocess",
            "--no-run",
        ])
        .status()
        .context("cargo")?;
    if !status.success() {
        bail!("building the scenario runner failed");
    }
    // Absolute: the runner's working directory is its package's.
    let out_root = std::env::current_dir()?.join("target/multiprocess");
    let _ = std::fs::remove_dir_all(&out_root);
    let mut cells: Vec<String> = Vec::new();
    let mut results: BTreeMap<String, BTreeMap<String, Outcome>> = BTreeMap::new();
    let mut failed_cells = 0;
    'cells: for backend in &options.backends {
        for transport in &options.transports {
            let cell = format!("{backend}/{transport}");
            cells.push(cell.clone());
            let available = TRANSPORTS.iter().any(|(t, ok)| t == transport && *ok);
            if !available {
                println!("xtask: [{cell}] skipped: this platform has no {transport} transport");
                results.entry("*".into()).or_default().insert(
                    cell,
                    Outcome::Skip(format!("no {transport} on this platform")),
                );
                continue;
            }
            let out = out_root.join(format!("{backend}-{transport}"));
            println!("xtask: [{cell}] starting a topology and running the scenarios");
            let mut command = crate::cargo_command();
            command.args([
                "test",
                "-q",
                "-p",
                "odo-tests",
                "--test",
                "multiprocess",
                "--",
            ]);
            command.args(["--backend", backend, "--transport", transport]);
            command.arg("--out").arg(&out);
            if let Some(filter) = &options.filter {
                command.args(["--filter", filter]);
            }
            let status = command.status().context("running the scenario runner")?;
            let cell_results = read_results(&out.join("results.tsv"));
            if cell_results.is_empty() {
                results.entry("(topology)".into()).or_default().insert(
                    cell.clone(),
                    Outcome::Fail("the runner produced no results".into()),
                );
            }
            for (scenario, outcome) in cell_results {
                results
                    .entry(scenario)
                    .or_default()
                    .insert(cell.clone(), outcome);
            }
            if !status.success() {
                failed_cells += 1;
                if !options.keep_going {
                    println!(
                        "xtask: [{cell}] failed; stopping (use --keep-going to run every cell)"
                    );
                    break 'cells;
                }
            }
        }
    }
    print_matrix(&cells, &results);
    let differences = compare_cells(&out_root, &cells);
    println!(
        "xtask: test-multiprocess finished in {:.0} s: {} cell(s), {} failing, {} transcript difference(s)",
        started.elapsed().as_secs_f64(),
        cells.len(),
        failed_cells,
        differences
    );
    if failed_cells > 0 || differences > 0 {
        bail!("the multi-process matrix did not match everywhere");
    }
    Ok(())
}

fn read_results(path: &Path) -> Vec<(String, Outcome)> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|line| {
            let mut parts = line.splitn(3, '\t');
            let name = parts.next()?.to_owned();
            let status = parts.next()?;
            let detail = parts.next().unwrap_or("").to_owned();
            Some(match status {
                "PASS" => (name, Outcome::Pass),
                "SKIP" => (name, Outcome::Skip(detail)),
                _ => (name, Outcome::Fail(detail)),
            })
        })
        .collect()
}

fn print_matrix(cells: &[String], results: &BTreeMap<String, BTreeMap<String, Outcome>>) {
    let width = results.keys().map(String::len).max().unwrap_or(8).max(8);
    let mut header = format!("{:<width$}", "scenario");
    for cell in cells {
        header.push_str(&format!(" | {cell:<12}"));
    }
    println!("\n{header}\n{}", "-".repeat(header.len()));
    let mut notes = Vec::new();
    for (scenario, by_cell) in results {
        let mut row = format!("{scenario:<width$}");
        for cell in cells {
            let mark = match by_cell
                .get(cell)
                .or_else(|| results.get("*").and_then(|all| all.get(cell)))
            {
                Some(Outcome::Pass) => "pass".to_owned(),
                Some(Outcome::Fail(why)) => {
                    notes.push(format!("{scenario} on {cell}: FAIL: {why}"));
                    "FAIL".to_owned()
                }
                Some(Outcome::Skip(why)) => {
                    notes.push(format!("{scenario} on {cell}: skipped: {why}"));
                    "skipped".to_owned()
                }
                None => "-".to_owned(),
            };
            row.push_str(&format!(" | {mark:<12}"));
        }
        println!("{row}");
    }
    notes.dedup();
    for note in notes {
        println!("  {note}");
    }
    println!();
}

/// Compares each scenario's transcript across the cells that ran it;
/// prints a line diff against the first cell. Returns the differences.
fn compare_cells(root: &Path, cells: &[String]) -> usize {
    let dir_of = |cell: &str| root.join(cell.replace('/', "-"));
    let Some(first) = cells.iter().find(|c| dir_of(c).exists()) else {
        return 0;
    };
    let Ok(entries) = std::fs::read_dir(dir_of(first)) else {
        return 0;
    };
    let mut differences = 0;
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if !name.ends_with(".txt") {
            continue;
        }
        let Ok(reference) = std::fs::read_to_string(entry.path()) else {
            continue;
        };
        for cell in cells.iter().filter(|c| *c != first) {
            let Ok(other) = std::fs::read_to_string(dir_of(cell).join(&name)) else {
                continue;
            };
            if other != reference {
                differences += 1;
                println!(
                    "xtask: {} differs between {first} and {cell}:",
                    name.trim_end_matches(".txt")
                );
                for line in diff(&reference, &other, first, cell).lines() {
                    println!("    {line}");
                }
            }
        }
    }
    differences
}

/// A unified line diff from transcript `a` (of cell `a_name`) to `b`, with
/// two lines of context around each change.
fn diff(a: &str, b: &str, a_name: &str, b_name: &str) -> String {
    TextDiff::from_lines(a, b)
        .unified_diff()
        .context_radius(2)
        .header(a_name, b_name)
        .to_string()
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    /// `Options` as the only arguments of a command.
    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        options: Options,
    }

    fn parse(args: &[&str]) -> Result<Options, clap::Error> {
        Cli::try_parse_from(std::iter::once("test-multiprocess").chain(args.iter().copied()))
            .map(|cli| cli.options)
    }

    #[test]
    fn the_diff_names_the_differing_lines_and_the_cells() {
        let reference = "get a\nput a 1\nget a -> 1\nlist -> a\n";
        let other = "get a\nput a 1\nget a -> 2\nlist -> a\n";
        let shown = diff(reference, other, "memory/uds", "fjall/tcp");
        let lines: Vec<&str> = shown.lines().collect();
        assert_eq!(
            lines,
            [
                "--- memory/uds",
                "+++ fjall/tcp",
                "@@ -1,4 +1,4 @@",
                " get a",
                " put a 1",
                "-get a -> 1",
                "+get a -> 2",
                " list -> a",
            ]
        );
        assert_eq!(diff("same\n", "same\n", "a", "b"), "");
    }

    #[test]
    fn options_default_to_the_whole_matrix() {
        let o = parse(&[]).unwrap();
        assert_eq!(
            o.backends,
            ["memory", "fjall", "logfile", "sqlite", "postgres"]
        );
        assert_eq!(o.transports, ["uds", "tcp"]);
        assert_eq!(o.filter, None);
        assert!(!o.keep_going);
        let whole = Options::whole_matrix();
        assert_eq!(
            (whole.backends, whole.transports),
            (o.backends, o.transports)
        );
    }

    #[test]
    fn options_take_lists_a_filter_and_keep_going() {
        let o = parse(&[
            "--backend",
            "fjall",
            "--transport",
            "tcp,uds",
            "--filter",
            "alarm",
            "--keep-going",
        ])
        .unwrap();
        assert_eq!(o.backends, ["fjall"]);
        assert_eq!(o.transports, ["tcp", "uds"]);
        assert_eq!(o.filter.as_deref(), Some("alarm"));
        assert!(o.keep_going);
    }

    #[test]
    fn options_refuse_unknown_values_and_flags() {
        use clap::error::ErrorKind;
        let kind = |args: &[&str]| parse(args).expect_err("refused").kind();
        assert_eq!(kind(&["--backend", "rocks"]), ErrorKind::InvalidValue);
        assert_eq!(
            kind(&["--backend", "memory,rocks"]),
            ErrorKind::InvalidValue
        );
        assert_eq!(kind(&["--transport", "quic"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--filter"]), ErrorKind::InvalidValue);
        assert_eq!(kind(&["--fast"]), ErrorKind::UnknownArgument);
    }
}
