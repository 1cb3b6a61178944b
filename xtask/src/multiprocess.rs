//! `cargo xtask test-multiprocess`: every scenario on every cell of the
//! backend x transport matrix, with real child processes.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};

/// The storage backends of the matrix. Adding one here (and to the
/// server's `--storage` flag) puts it in the matrix.
pub(crate) const BACKENDS: &[&str] = &["memory", "fjall"];

/// The transports of the matrix, with whether this platform has them.
/// Adding one here (and to the server's `--transport` flag) puts it in the
/// matrix.
pub(crate) const TRANSPORTS: &[(&str, bool)] = &[("uds", cfg!(unix)), ("tcp", true)];

#[derive(Debug, Default)]
struct Options {
    backends: Vec<String>,
    transports: Vec<String>,
    filter: Option<String>,
    keep_going: bool,
}

fn parse(args: &[String]) -> Result<Options> {
    let mut options = Options::default();
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let mut value = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--backend" => options.backends = value()?.split(',').map(str::to_owned).collect(),
            "--transport" => options.transports = value()?.split(',').map(str::to_owned).collect(),
            "--filter" => options.filter = Some(value()?.clone()),
            "--keep-going" => options.keep_going = true,
            other => bail!(
                "unknown argument {other:?}\nusage: cargo xtask test-multiprocess [--backend memory,fjall] \
                 [--transport uds,tcp] [--filter NAME] [--keep-going]"
            ),
        }
    }
    if options.backends.is_empty() {
        options.backends = BACKENDS.iter().map(|s| s.to_string()).collect();
    }
    if options.transports.is_empty() {
        options.transports = TRANSPORTS.iter().map(|(s, _)| s.to_string()).collect();
    }
    for backend in &options.backends {
        if !BACKENDS.contains(&backend.as_str()) {
            bail!("unknown backend {backend:?} (known: {BACKENDS:?})");
        }
    }
    for transport in &options.transports {
        if !TRANSPORTS.iter().any(|(t, _)| t == transport) {
            bail!("unknown transport {transport:?}");
        }
    }
    Ok(options)
}

/// One cell's outcome per scenario.
#[derive(Debug, Clone)]
enum Outcome {
    Pass,
    Fail(String),
    Skip(String),
}

pub(crate) fn run(args: &[String]) -> Result<()> {
    let options = parse(args)?;
    let started = Instant::now();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    println!("xtask: building the scenario runner and the test server once");
    let status = Command::new(&cargo)
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
            let mut command = Command::new(&cargo);
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
                for line in diff(&reference, &other) {
                    println!("    {line}");
                }
            }
        }
    }
    differences
}

/// A minimal line diff: lines only in `a` with `-`, only in `b` with `+`.
fn diff(a: &str, b: &str) -> Vec<String> {
    let (a, b): (Vec<&str>, Vec<&str>) = (a.lines().collect(), b.lines().collect());
    // Longest common subsequence table; transcripts are short.
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] {
                lcs[i + 1][j + 1] + 1
            } else {
                lcs[i + 1][j].max(lcs[i][j + 1])
            };
        }
    }
    let (mut i, mut j, mut out) = (0, 0, Vec::new());
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals before additions, as diff(1) prints them.
            out.push(format!("- {}", a[i]));
            i += 1;
        } else {
            out.push(format!("+ {}", b[j]));
            j += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_marks_changed_lines() {
        assert_eq!(diff("a\nb\nc", "a\nx\nc"), vec!["- b", "+ x"]);
        assert!(diff("same", "same").is_empty());
    }

    #[test]
    fn options_default_to_the_whole_matrix_and_refuse_unknowns() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.backends, ["memory", "fjall"]);
        assert_eq!(o.transports, ["uds", "tcp"]);
        assert!(parse(&["--backend".into(), "rocks".into()]).is_err());
        let o = parse(&["--backend".into(), "fjall".into(), "--keep-going".into()]).unwrap();
        assert_eq!(o.backends, ["fjall"]);
        assert!(o.keep_going);
    }
}
