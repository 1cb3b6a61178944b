//! The elected host: one host at a time, chosen through etcd's election
//! API under its lease, writes where each shard should go
//! ([`crate::assign`]), conditioned on still being the leader.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::assign::{Inputs, assign};
use crate::config::ClusterConfig;
use crate::keys::Keys;
use crate::lease::LeaseState;
use crate::view::View;

/// Campaigns whenever this host holds a lease, and assigns shards while it
/// leads. `leading` says whether it leads now.
// Each argument is one channel or handle the task owns.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn run(
    mut client: Client,
    keys: Keys,
    config: Arc<ClusterConfig>,
    shards: u32,
    mut lease: watch::Receiver<LeaseState>,
    mut view: watch::Receiver<Arc<View>>,
    leading: watch::Sender<bool>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        if *stop.borrow() {
            return;
        }
        let Some(id) = lease.borrow().serving(Instant::now()) else {
            tokio::select! {
                _ = lease.changed() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
            continue;
        };
        let campaign = client.campaign(keys.election(), config.host.clone(), id);
        let won = tokio::select! {
            won = campaign => won,
            _ = stop.changed() => return,
            () = lease_gone(&mut lease, id) => continue,
        };
        let leader = match won.map(|mut r| r.take_leader()) {
            Ok(Some(leader)) => leader,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "campaign failed; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        info!(host = %config.host, "elected: assigning shards");
        leading.send_replace(true);
        let leader_key = leader.key().to_vec();
        let leader_rev = leader.rev();
        let elected = Instant::now();
        let mut gathering = false;
        loop {
            if *stop.borrow() || lease.borrow().serving(Instant::now()) != Some(id) {
                break;
            }
            let current = view.borrow_and_update().clone();
            let hold_new = hold_new_shards(&config, current.members.len(), elected.elapsed());
            if hold_new != gathering {
                gathering = hold_new;
                if hold_new {
                    info!(
                        members = current.members.len(),
                        expected = config.expected_hosts,
                        wait_ms = config.expected_hosts_wait.as_millis() as u64,
                        "waiting for the expected hosts before placing new shards"
                    );
                }
            }
            let desired = desired(&current, shards, config.shared_storage, hold_new);
            let changes: Vec<(u32, String)> = desired
                .iter()
                .filter(|(shard, host)| current.assign.get(shard) != Some(host))
                .map(|(s, h)| (*s, h.clone()))
                .collect();
            if !changes.is_empty() {
                let ops: Vec<TxnOp> = changes
                    .iter()
                    .map(|(shard, host)| TxnOp::put(keys.assign(*shard), host.clone(), None))
                    .collect();
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        leader_key.clone(),
                        CompareOp::Equal,
                        leader_rev,
                    )])
                    .and_then(ops);
                match tokio::time::timeout(config.etcd_timeout, client.txn(txn)).await {
                    Ok(Ok(r)) if r.succeeded() => {
                        info!(moves = changes.len(), "assigned shards");
                    }
                    Ok(Ok(_)) => {
                        warn!("no longer the leader");
                        break;
                    }
                    Ok(Err(e)) => warn!(error = %e, "writing the assignment failed"),
                    Err(_) => warn!("writing the assignment timed out"),
                }
            }
            tokio::select! {
                _ = view.changed() => {}
                _ = lease.changed() => {}
                _ = stop.changed() => {}
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
            }
        }
        leading.send_replace(false);
        // Step down cleanly when still possible (a lost lease does it by
        // itself).
        let _ = tokio::time::timeout(
            config.etcd_timeout,
            client.resign(Some(etcd_client::ResignOptions::new().with_leader(leader))),
        )
        .await;
    }
}

/// Whether shards never assigned yet wait: with storage on the hosts
/// (their shards never move), while fewer than the expected hosts are
/// members and the elected host has not waited for them long enough.
fn hold_new_shards(config: &ClusterConfig, members: usize, waited: Duration) -> bool {
    !config.shared_storage && members < config.expected_hosts && waited < config.expected_hosts_wait
}

/// The assignment for `view`.
pub(crate) fn desired(
    view: &View,
    shards: u32,
    shared_storage: bool,
    hold_new: bool,
) -> BTreeMap<u32, String> {
    let members: BTreeSet<String> = view.members.keys().cloned().collect();
    let draining = view
        .members
        .iter()
        .filter(|(_, m)| m.member.draining)
        .map(|(h, _)| h.clone())
        .collect();
    assign(&Inputs {
        shards,
        members,
        draining,
        assigned: view.assign.clone(),
        shared_storage,
        hold_new,
    })
}

async fn lease_gone(lease: &mut watch::Receiver<LeaseState>, id: i64) {
    loop {
        let until = match *lease.borrow_and_update() {
            LeaseState::Held { id: held, until } if held == id => until,
            _ => return,
        };
        tokio::select! {
            () = tokio::time::sleep_until(until) => {
                if lease.borrow().serving(Instant::now()) != Some(id) {
                    return;
                }
            }
            changed = lease.changed() => if changed.is_err() { return },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_shards_wait_for_the_expected_hosts_only_with_storage_on_the_hosts() {
        let mut config = ClusterConfig::new(
            vec!["127.0.0.1:2379".into()],
            "t",
            "127.0.0.1:7000".parse().unwrap(),
        );
        config.expected_hosts = 3;
        config.expected_hosts_wait = Duration::from_secs(30);
        let early = Duration::from_secs(1);
        assert!(hold_new_shards(&config, 1, early));
        assert!(hold_new_shards(&config, 2, early));
        assert!(!hold_new_shards(&config, 3, early), "all there");
        assert!(
            !hold_new_shards(&config, 2, Duration::from_secs(30)),
            "waited long enough"
        );
        config.shared_storage = true;
        assert!(
            !hold_new_shards(&config, 1, early),
            "shared storage rebalances"
        );
        config.shared_storage = false;
        config.expected_hosts = 1;
        assert!(
            !hold_new_shards(&config, 1, early),
            "the default waits for no one"
        );
    }
}
