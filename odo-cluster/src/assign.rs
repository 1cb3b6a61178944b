//! Where each shard should go: the elected host's decision, as a pure
//! function of what etcd says (no I/O, no clock), so it is property-tested
//! on its own (`tests/assign_model.rs`).
//!
//! Rules, in order:
//!
//! 1. With storage that stays on its host (fjall, SQLite), a shard once
//!    assigned never moves: its data is there. While that host is down the
//!    shard is unavailable.
//! 2. With shared storage (PostgreSQL), a shard stays where it is while its
//!    host is a live member that is not draining.
//! 3. A shard with no live, non-draining assignee goes to the live,
//!    non-draining member holding the fewest shards (the smallest host id
//!    on a tie), except that a shard never assigned yet waits while
//!    [`Inputs::hold_new`] says the cluster is still gathering its hosts.
//! 4. Then, with shared storage, shards move from members above
//!    `ceil(S / members)` to members below `floor(S / members)`, one at a
//!    time, from the most loaded (the highest shard number first) to the
//!    least loaded, until no such pair is left: a host that joins gets its
//!    share, drained from the others.

use std::collections::{BTreeMap, BTreeSet};

/// What the decision is made from.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Inputs {
    /// The number of shards.
    pub shards: u32,
    /// Live members (their lease holds) that take shards.
    pub members: BTreeSet<String>,
    /// Live members that are leaving: they take no shard and give theirs
    /// away (with shared storage).
    pub draining: BTreeSet<String>,
    /// The current assignment: shard -> host.
    pub assigned: BTreeMap<u32, String>,
    /// Whether shards may move between hosts (their data is in storage
    /// every host reaches).
    pub shared_storage: bool,
    /// Leave shards that were never assigned unassigned for now: the
    /// elected host is still waiting for the hosts it expects
    /// (`ClusterConfig::expected_hosts`). With storage on the hosts a
    /// shard never moves, so the first host up would otherwise keep every
    /// shard for good.
    pub hold_new: bool,
}

/// The assignment the elected host should write: shard -> host. Shards
/// that no member can take (no member, or pinned to a host that is gone)
/// keep their current entry, or none.
pub fn assign(inputs: &Inputs) -> BTreeMap<u32, String> {
    let takers: BTreeSet<&String> = inputs.members.difference(&inputs.draining).collect();
    let mut out = BTreeMap::new();
    let mut load: BTreeMap<&String, u32> = takers.iter().map(|m| (*m, 0)).collect();
    let mut unplaced = Vec::new();
    for shard in 0..inputs.shards {
        match inputs.assigned.get(&shard) {
            Some(host) if !inputs.shared_storage => {
                // Pinned: it stays, whatever the host's state.
                out.insert(shard, host.clone());
                if let Some(n) = load.get_mut(host) {
                    *n += 1;
                }
            }
            Some(host) if takers.contains(host) => {
                out.insert(shard, host.clone());
                *load.get_mut(host).expect("takers are in load") += 1;
            }
            None if inputs.hold_new => {}
            _ => unplaced.push(shard),
        }
    }
    for shard in unplaced {
        let least = load
            .iter()
            .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
            .map(|(host, _)| (*host).clone());
        match least {
            Some(host) => {
                *load.get_mut(&host).expect("chosen from load") += 1;
                out.insert(shard, host);
            }
            None => {
                if let Some(host) = inputs.assigned.get(&shard) {
                    out.insert(shard, host.clone());
                }
            }
        }
    }
    if inputs.shared_storage && !load.is_empty() {
        let n = load.len() as u32;
        let high = inputs.shards.div_ceil(n);
        let low = inputs.shards / n;
        loop {
            let most = load
                .iter()
                .max_by(|a, b| a.1.cmp(b.1).then_with(|| b.0.cmp(a.0)))
                .map(|(h, c)| ((*h).clone(), *c));
            let least = load
                .iter()
                .min_by(|a, b| a.1.cmp(b.1).then_with(|| a.0.cmp(b.0)))
                .map(|(h, c)| ((*h).clone(), *c));
            let (Some((from, most_n)), Some((to, least_n))) = (most, least) else {
                break;
            };
            if most_n <= high && least_n >= low || most_n <= least_n + 1 {
                break;
            }
            let shard = out
                .iter()
                .rev()
                .find(|(_, h)| **h == from)
                .map(|(s, _)| *s)
                .expect("a loaded host holds a shard");
            out.insert(shard, to.clone());
            *load.get_mut(&from).expect("in load") -= 1;
            *load.get_mut(&to).expect("in load") += 1;
        }
    }
    out
}
