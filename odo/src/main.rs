//! The `odo` binary: `odo serve` runs the demo server of the HTTP contract.

fn main() -> std::process::ExitCode {
    odo::demo_app().main()
}
