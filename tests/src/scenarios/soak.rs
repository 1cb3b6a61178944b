//! A short kill soak (the long one is `cargo xtask soak`): four workers,
//! load on 20 counters, ten SIGKILLs of a random worker; nothing
//! acknowledged is lost and no object ever has two live instances.
//! Recovery times are figures, not facts: timing is the long soak's.

use crate::soak::{SoakPlan, soak};

use super::*;

scenario!(fault_soak, |w, t| {
    let dir = tempfile::tempdir()?;
    let mut spec = w.spec.clone();
    spec.workers = 4;
    let server = spec.start(dir.path())?;
    let client = HttpClient::new(&server.base);
    let plan = SoakPlan {
        kills: 10,
        interval: Duration::from_millis(500),
        counters: 20,
        clients: 8,
        ..SoakPlan::default()
    };
    let report = soak(&client, &plan).await?;
    t.fact("kills", plan.kills);
    t.fact(
        "every kill recovered",
        report.recoveries.len() == plan.kills as usize,
    );
    t.fact("no acknowledged write lost", report.lost == 0);
    t.fact("never two live instances", report.double_activations == 0);
    t.fact("load was acknowledged", report.acknowledged > 0);
    t.figure("requests", report.requests);
    t.figure("acknowledged", report.acknowledged);
    t.figure("failed", report.failed);
    t.figure("recovery_p50_ms", report.recovery_quantile(0.5).as_millis());
    t.figure("recovery_max_ms", report.recovery_max().as_millis());
    drop(server);
    Ok(())
});
