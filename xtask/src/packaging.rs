//! `cargo xtask package-check`: every published crate packages on its own,
//! and every library crate builds alone.
//!
//! `cargo package` catches what only shows outside the workspace: a path
//! dependency without a version, a file the crate needs but does not ship.
//! `cargo check -p <crate>`, one crate at a time, catches a crate that only
//! compiles because another crate of the workspace turned on a feature of a
//! shared dependency (features are unified across what one cargo command
//! builds, so the workspace-wide build cannot see it). The same with
//! `--all-targets` does it for the crate's tests and examples, whose
//! dev-dependencies add features of their own (what `cargo test -p <crate>`
//! needs). A crate with default features is checked without them too.
//! `cargo check` rather than `cargo build`: features decide what compiles,
//! code generation adds nothing here but time.

use anyhow::{Context, Result, bail};

use crate::{cargo, cargo_command};

/// The workspace's crates, from `cargo metadata`.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Crates {
    /// Crates with `publish = false` (xtask, the tests, the benchmarks).
    pub(crate) unpublished: Vec<String>,
    /// Published crates with a library target: each must build alone.
    pub(crate) libraries: Vec<String>,
    /// Those of `libraries` with default features: each must build without
    /// them too.
    pub(crate) with_defaults: Vec<String>,
}

/// Packages every published crate without verifying (building) the
/// packages, then checks each library crate alone: its library, then all its
/// targets, then its library without default features if it has some.
pub(crate) fn check() -> Result<()> {
    let crates = workspace_crates()?;
    let mut args = vec!["package", "--workspace", "--no-verify", "--allow-dirty"];
    for name in &crates.unpublished {
        args.extend(["--exclude", name.as_str()]);
    }
    cargo(&args)?;
    for name in &crates.libraries {
        cargo(&["check", "-p", name])?;
        cargo(&["check", "-p", name, "--all-targets"])?;
        if crates.with_defaults.contains(name) {
            cargo(&["check", "-p", name, "--no-default-features"])?;
        }
    }
    Ok(())
}

fn workspace_crates() -> Result<Crates> {
    let out = cargo_command()
        .args(["metadata", "--no-deps", "--format-version", "1"])
        .output()
        .context("running cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    classify(&String::from_utf8_lossy(&out.stdout))
}

/// Sorts the packages of `cargo metadata --no-deps` output into the
/// unpublished crates and the published libraries.
fn classify(metadata: &str) -> Result<Crates> {
    let metadata: serde_json::Value =
        serde_json::from_str(metadata).context("reading cargo metadata's output")?;
    let packages = metadata["packages"]
        .as_array()
        .context("cargo metadata's output has no package list")?;
    let mut crates = Crates::default();
    for package in packages {
        let name = package["name"]
            .as_str()
            .context("a package without a name in cargo metadata's output")?
            .to_owned();
        // `publish = false` shows as an empty registry list; no `publish`
        // key (null) means any registry.
        let unpublished = package["publish"].as_array().is_some_and(Vec::is_empty);
        let is_library = package["targets"].as_array().is_some_and(|targets| {
            targets.iter().any(|target| {
                target["kind"]
                    .as_array()
                    .is_some_and(|kinds| kinds.iter().any(|k| k == "lib"))
            })
        });
        let has_defaults = package["features"]["default"]
            .as_array()
            .is_some_and(|default| !default.is_empty());
        if unpublished {
            crates.unpublished.push(name);
        } else if is_library {
            if has_defaults {
                crates.with_defaults.push(name.clone());
            }
            crates.libraries.push(name);
        }
    }
    Ok(crates)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpublished_crates_are_excluded_and_libraries_built_alone() {
        let metadata = r#"{"packages": [
            {"name": "odo-core", "publish": null, "targets": [{"kind": ["lib"]}, {"kind": ["test"]}],
             "features": {"default": []}},
            {"name": "odo", "publish": null, "targets": [{"kind": ["lib"]}, {"kind": ["bin"]}],
             "features": {"default": ["fjall"], "fjall": []}},
            {"name": "odo-cli", "publish": null, "targets": [{"kind": ["bin"]}]},
            {"name": "odo-tests", "publish": [], "targets": [{"kind": ["lib"]}, {"kind": ["test"]}]},
            {"name": "xtask", "publish": [], "targets": [{"kind": ["bin"]}]}
        ]}"#;
        assert_eq!(
            classify(metadata).unwrap(),
            Crates {
                unpublished: vec!["odo-tests".into(), "xtask".into()],
                libraries: vec!["odo-core".into(), "odo".into()],
                with_defaults: vec!["odo".into()],
            }
        );
        assert!(classify("not json").is_err());
        assert!(classify("{}").is_err());
    }
}
