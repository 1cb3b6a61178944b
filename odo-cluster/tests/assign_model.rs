//! The elected host's decision (`odo_cluster::assign::assign`), a pure
//! function, checked on random clusters: every shard goes to a host that
//! takes shards; with shared storage the load is even and a decision is
//! stable; with storage on the hosts a shard never moves.
#![cfg(target_os = "linux")]

use std::collections::{BTreeMap, BTreeSet};

use odo_cluster::assign::{Inputs, assign};
use proptest::prelude::*;

fn inputs() -> impl Strategy<Value = Inputs> {
    (
        1u32..40,
        proptest::collection::btree_set(0u8..6, 0..6),
        proptest::collection::btree_set(0u8..6, 0..3),
        proptest::collection::vec(proptest::option::of(0u8..8), 40),
        any::<bool>(),
        any::<bool>(),
    )
        .prop_map(
            |(shards, members, draining, assigned, shared_storage, hold_new)| {
                let host = |h: u8| format!("h{h}");
                Inputs {
                    shards,
                    members: members.iter().copied().map(host).collect(),
                    draining: draining.iter().copied().map(host).collect(),
                    assigned: assigned
                        .iter()
                        .take(shards as usize)
                        .enumerate()
                        .filter_map(|(s, h)| h.map(|h| (s as u32, host(h))))
                        .collect(),
                    shared_storage,
                    hold_new,
                }
            },
        )
}

proptest! {
    #[test]
    fn the_assignment_follows_the_rules(inputs in inputs()) {
        let out = assign(&inputs);
        let takers: BTreeSet<&String> = inputs.members.difference(&inputs.draining).collect();
        for shard in 0..inputs.shards {
            match (out.get(&shard), inputs.assigned.get(&shard)) {
                // Still gathering hosts: a new shard waits.
                (got, None) if inputs.hold_new => prop_assert_eq!(got, None),
                // Storage on the hosts: an assigned shard never moves.
                (got, Some(was)) if !inputs.shared_storage => prop_assert_eq!(got, Some(was)),
                // Otherwise it goes to a taker whenever there is one.
                (Some(host), _) if !takers.is_empty() => prop_assert!(takers.contains(host)),
                (None, _) => prop_assert!(takers.is_empty()),
                // No taker: it keeps its entry.
                (Some(host), was) => prop_assert_eq!(Some(host), was),
            }
        }
        if inputs.shared_storage && !takers.is_empty() {
            let mut load: BTreeMap<&String, u32> = takers.iter().map(|t| (*t, 0)).collect();
            for host in out.values() {
                *load.get_mut(host).expect("a taker") += 1;
            }
            let most = load.values().max().copied().unwrap_or(0);
            let least = load.values().min().copied().unwrap_or(0);
            prop_assert!(most <= least + 1, "uneven: {load:?}");
            // Deciding again from the decision changes nothing.
            let again = assign(&Inputs { assigned: out.clone(), ..inputs.clone() });
            prop_assert_eq!(again, out);
        }
    }
}
