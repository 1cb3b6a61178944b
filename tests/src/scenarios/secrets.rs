//! What is not odo's stays untouched and odo's secret stays odo's: the
//! cluster token is in no worker's environment (as `/proc` shows it to any
//! process of the user) nor in that of a program object code starts, and a
//! second server on a data directory in use fails, naming the lock and its
//! holder, without touching the cluster record.

use super::*;

/// The environment variable that carried the token before it moved to the
/// workers' standard input.
const TOKEN_VAR: &str = "ODO_CLUSTER_TOKEN";

fn holds_token_var(environ: &[u8]) -> bool {
    environ
        .windows(TOKEN_VAR.len())
        .any(|w| w == TOKEN_VAR.as_bytes())
}

scenario!(secrets_and_files, |w, t| {
    let c = w.client.clone();
    let workers: serde_json::Value = serde_json::from_slice(&c.get("/_odo/workers").await?.body)?;
    let pids: Vec<u32> = workers
        .as_array()
        .context("a list of workers")?
        .iter()
        .filter_map(|worker| worker["pid"].as_u64())
        .map(|pid| pid as u32)
        .collect();
    t.fact("running workers", pids.len());
    let mut clean = true;
    for pid in &pids {
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .with_context(|| format!("reading worker {pid}'s environment"))?;
        clean &= !holds_token_var(&environ);
    }
    t.fact("no worker's environment holds the token", clean);

    // `env`'s output varies with the machine: only facts are recorded.
    let child = c.get("/probe/secrets/child-env").await?;
    t.fact("a program object code starts: status", child.status);
    t.fact(
        "it has an environment",
        child.text().lines().any(|l| l.starts_with("PATH=")),
    );
    t.fact(
        "its environment holds no token",
        !holds_token_var(&child.body),
    );

    let record = w.dir.path().join("odo-cluster.json");
    let before = std::fs::read(&record)?;
    let (status, stderr) = w.spec.run_to_exit(w.dir.path(), Duration::from_secs(60))?;
    t.fact(
        "a second server on the data directory fails",
        !status.success(),
    );
    t.fact("its error names the lock file", stderr.contains("odo.lock"));
    t.fact(
        "its error names the holder's pid",
        stderr.contains(&format!("pid {}", w.server_pid())),
    );
    t.fact(
        "the cluster record is unchanged, byte for byte",
        std::fs::read(&record)? == before,
    );
    t.post(&c, "/counter/secrets/increment").await?;
    Ok(())
});
