//! `odo-bench`: the benchmarks behind `cargo xtask bench [NAME...]`.
//!
//! Each benchmark measures its baseline in the same run and prints absolute
//! figures plus the ratio odo/baseline. Nothing here asserts on time.

mod e2e;
mod stats;
mod storage;
mod transport;
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
        "e2e",
        "HTTP load on the odo server against workerd (wrk, fjall with fsync)",
        e2e::run,
    ),
];

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("usage: odo-bench [NAME...]   (no name: all)\n");
        for (name, what, _) in BENCHES {
            println!("  {name:<10} {what}");
        }
        return Ok(());
    }
    for arg in &args {
        if !BENCHES.iter().any(|(name, _, _)| name == arg) {
            anyhow::bail!("unknown benchmark {arg:?}; try --help");
        }
    }
    for (name, _, run) in BENCHES {
        if args.is_empty() || args.iter().any(|a| a == name) {
            println!("== bench {name}");
            run()?;
        }
    }
    Ok(())
}
