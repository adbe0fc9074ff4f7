//! What the controller leader does next to bring the region to its
//! recorded membership (see `catalog/members.rs`): free of I/O, so that the
//! decisions are tested on their own. `Cluster::membership_loop` carries
//! the steps out, one round at a time, and plans again from what changed.
//!
//! The order keeps every partition at its replication factor and the
//! controller at a majority of brokers that hold its log:
//! 1. a leaving broker's replicas move to the least loaded active brokers,
//!    by the ordinary reassignment (the new replica catches up as a
//!    learner before the old one stops voting);
//! 2. the controller's voters become the active and joining brokers plus
//!    the leaving ones that still host a replica (an added broker catches
//!    up as a learner first, see `ReplicaGroup::change_voters`);
//! 3. a joining broker that votes becomes active: replicas go there only
//!    from then on, so none is placed on a broker that never started;
//! 4. a leaving broker that hosts nothing and no longer votes is forgotten.

use std::collections::{BTreeMap, BTreeSet};

use crate::catalog::{Member, MemberState};

/// One partition's placement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    pub topic: String,
    pub partition: i32,
    pub replicas: Vec<i32>,
    /// A reassignment's target, while one runs.
    pub reassigning: Option<Vec<i32>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Start moving a partition's replicas (AlterPartitionReassignments).
    Reassign {
        topic: String,
        partition: i32,
        target: Vec<i32>,
    },
    /// Change the controller's voters towards these (one step at a time).
    ControllerVoters(BTreeSet<u64>),
    /// A joining broker votes now: replicas may be placed on it.
    Activate(i32),
    /// The broker has left: record it.
    Forget(i32),
}

/// The steps to take now. `voters` and `learners` are the controller
/// group's current membership.
pub fn plan(
    members: &[Member],
    placements: &[Placement],
    voters: &BTreeSet<u64>,
    learners: &BTreeSet<u64>,
) -> Vec<Step> {
    let active: Vec<i32> = with_state(members, MemberState::Active);
    let joining: Vec<i32> = with_state(members, MemberState::Joining);
    let leaving: Vec<i32> = with_state(members, MemberState::Leaving);
    let mut steps = Vec::new();
    // Replicas per broker, counting where running moves are going.
    let mut load: BTreeMap<i32, usize> = active.iter().map(|b| (*b, 0)).collect();
    for p in placements {
        for b in p.reassigning.as_ref().unwrap_or(&p.replicas) {
            *load.entry(*b).or_default() += 1;
        }
    }
    for p in placements {
        if p.reassigning.is_some() || !p.replicas.iter().any(|r| leaving.contains(r)) {
            continue;
        }
        let mut target = p.replicas.clone();
        let mut complete = true;
        for i in 0..target.len() {
            if !leaving.contains(&target[i]) {
                continue;
            }
            let pick = active
                .iter()
                .filter(|b| !p.replicas.contains(b) && !target.contains(b))
                .min_by_key(|b| (load.get(b).copied().unwrap_or(0), **b))
                .copied();
            match pick {
                Some(b) => {
                    *load.entry(b).or_default() += 1;
                    target[i] = b;
                }
                None => complete = false,
            }
        }
        if complete {
            steps.push(Step::Reassign {
                topic: p.topic.clone(),
                partition: p.partition,
                target,
            });
        }
    }
    let hosting = |b: i32| {
        placements.iter().any(|p| {
            p.replicas.contains(&b) || p.reassigning.as_ref().is_some_and(|r| r.contains(&b))
        })
    };
    let want: BTreeSet<u64> = active
        .iter()
        .chain(joining.iter())
        .chain(leaving.iter().filter(|b| hosting(**b)))
        .map(|b| *b as u64)
        .collect();
    if !want.is_empty() && (want != *voters || !learners.is_empty()) {
        steps.push(Step::ControllerVoters(want));
    }
    for b in joining {
        if voters.contains(&(b as u64)) {
            steps.push(Step::Activate(b));
        }
    }
    for b in leaving {
        let id = b as u64;
        if !hosting(b) && !voters.contains(&id) && !learners.contains(&id) {
            steps.push(Step::Forget(b));
        }
    }
    steps
}

fn with_state(members: &[Member], state: MemberState) -> Vec<i32> {
    members
        .iter()
        .filter(|m| m.state == state)
        .map(|m| m.id)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: i32, state: MemberState) -> Member {
        Member {
            id,
            state,
            raft: None,
        }
    }

    fn place(topic: &str, partition: i32, replicas: &[i32]) -> Placement {
        Placement {
            topic: topic.into(),
            partition,
            replicas: replicas.to_vec(),
            reassigning: None,
        }
    }

    fn set(ids: &[u64]) -> BTreeSet<u64> {
        ids.iter().copied().collect()
    }

    #[test]
    fn a_settled_region_needs_nothing() {
        let members = [1, 2, 3].map(|i| member(i, MemberState::Active));
        let p = [place("t", 0, &[1, 2, 3])];
        assert!(plan(&members, &p, &set(&[1, 2, 3]), &set(&[])).is_empty());
    }

    #[test]
    fn an_added_broker_becomes_a_controller_voter_then_active() {
        let mut members = [1, 2, 3, 4].map(|i| member(i, MemberState::Active));
        members[3].state = MemberState::Joining;
        let steps = plan(&members, &[], &set(&[1, 2, 3]), &set(&[]));
        assert_eq!(steps, vec![Step::ControllerVoters(set(&[1, 2, 3, 4]))]);
        let steps = plan(&members, &[], &set(&[1, 2, 3, 4]), &set(&[]));
        assert_eq!(steps, vec![Step::Activate(4)]);
    }

    #[test]
    fn a_leaving_broker_drains_to_the_least_loaded_then_stops_voting_then_is_forgotten() {
        let members = [
            member(1, MemberState::Active),
            member(2, MemberState::Active),
            member(3, MemberState::Leaving),
            member(4, MemberState::Active),
        ];
        let p = [place("t", 0, &[3, 1]), place("t", 1, &[1, 2])];
        let steps = plan(&members, &p, &set(&[1, 2, 3, 4]), &set(&[]));
        // Broker 4 hosts nothing: it takes the replica; broker 3 keeps its
        // vote while it still hosts one.
        assert_eq!(
            steps,
            vec![Step::Reassign {
                topic: "t".into(),
                partition: 0,
                target: vec![4, 1]
            }]
        );
        // The move runs: still nothing else.
        let mut moving = p.clone();
        moving[0].reassigning = Some(vec![4, 1]);
        assert!(plan(&members, &moving, &set(&[1, 2, 3, 4]), &set(&[])).is_empty());
        // The move completed: broker 3 stops voting.
        let moved = [place("t", 0, &[4, 1]), place("t", 1, &[1, 2])];
        let steps = plan(&members, &moved, &set(&[1, 2, 3, 4]), &set(&[]));
        assert_eq!(steps, vec![Step::ControllerVoters(set(&[1, 2, 4]))]);
        // It no longer votes: forget it.
        let steps = plan(&members, &moved, &set(&[1, 2, 4]), &set(&[]));
        assert_eq!(steps, vec![Step::Forget(3)]);
    }

    #[test]
    fn a_drain_with_nowhere_to_go_waits() {
        let members = [
            member(1, MemberState::Active),
            member(2, MemberState::Leaving),
        ];
        let p = [place("t", 0, &[1, 2])];
        let steps = plan(&members, &p, &set(&[1, 2]), &set(&[]));
        assert!(steps
            .iter()
            .all(|s| !matches!(s, Step::Reassign { .. } | Step::Forget(_))));
    }

    /// Random regions: a planned move keeps the replication factor, names
    /// distinct active brokers only, and keeps every replica that stays.
    #[test]
    fn planned_moves_keep_the_replication_factor_on_active_brokers() {
        let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        for _ in 0..2_000 {
            let brokers = 2 + next(6) as i32;
            let members: Vec<Member> = (1..=brokers)
                .map(|i| {
                    let state = if next(3) == 0 {
                        MemberState::Leaving
                    } else {
                        MemberState::Active
                    };
                    member(i, state)
                })
                .collect();
            let mut p = Vec::new();
            for part in 0..next(8) as i32 {
                let rf = 1 + next(brokers as u64) as usize;
                let start = next(brokers as u64) as i32;
                let replicas: Vec<i32> =
                    (0..rf as i32).map(|k| 1 + (start + k) % brokers).collect();
                p.push(place("t", part, &replicas));
            }
            let active = with_state(&members, MemberState::Active);
            let voters: BTreeSet<u64> = (1..=brokers as u64).collect();
            for s in plan(&members, &p, &voters, &set(&[])) {
                match s {
                    Step::Reassign {
                        partition, target, ..
                    } => {
                        let before = &p[partition as usize].replicas;
                        assert_eq!(target.len(), before.len());
                        let distinct: BTreeSet<i32> = target.iter().copied().collect();
                        assert_eq!(distinct.len(), target.len(), "{target:?}");
                        assert!(target.iter().all(|b| active.contains(b)), "{target:?}");
                        for (old, new) in before.iter().zip(&target) {
                            if active.contains(old) {
                                assert_eq!(old, new);
                            }
                        }
                    }
                    Step::ControllerVoters(v) => assert!(!v.is_empty()),
                    Step::Activate(b) => panic!("broker {b} was not joining"),
                    Step::Forget(b) => panic!("broker {b} still votes"),
                }
            }
        }
    }
}
