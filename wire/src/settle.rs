//! A failover's verdict on the lost home region's commits: which reached
//! this region whole, and what each promoted partition retracts.
//!
//! Each partition's commit marker reaches a mirror region through that
//! partition's own stream, so when the home region is lost in the middle,
//! a transaction may have committed in some mirrored partitions and not yet
//! in others. Every commit marker says which of its transactional id's
//! transactions it ends and into how many partitions it was written
//! ([`crate::control::Note::Ending`]). A failover counts each commit's
//! markers across every mirrored partition of the lost home's topics at
//! once (the *view*). A commit is *settled* when all of them are there.
//! Every other commit is retracted where it arrived, so it is all there or
//! all missing.
//!
//! Settling is per producer and prefix-closed: from a producer's first
//! unsettled commit on, all its commits are retracted. A retraction is an
//! abort marker naming the commit, indexed as aborted from the commit's
//! first record. Clients drop a producer's records from there up to the
//! next abort marker, so a later commit of the same producer in the same
//! partition could not be kept anyway, and it must then go everywhere.
//!
//! A part that arrives after the view was taken (the region lost was only
//! cut off, and its data kept flowing) is retracted too: the view did not
//! count it, so its commit may have been judged unsettled elsewhere.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

/// One partition's part of a noted commit, as its mirror holds it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Part {
    pub producer_id: i64,
    /// The commit's number among its transactional id's.
    pub seq: i64,
    /// Into how many partitions its commit marker was written.
    pub parts: i32,
    /// The commit marker's offset here.
    pub marker: i64,
}

/// One mirrored partition in the view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionView {
    pub topic: String,
    pub partition: i32,
    pub log_end: i64,
    pub parts: Vec<Part>,
}

/// The verdict, the same for every partition promoted by one failover.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    /// Producer id -> its first unsettled commit: it and every later one
    /// are retracted.
    pub retract_from: BTreeMap<i64, i64>,
    /// `topic/partition` -> its log end in the view.
    pub view_end: BTreeMap<String, i64>,
}

/// The key of a partition in [`Plan::view_end`].
pub fn partition_key(topic: &str, partition: i32) -> String {
    format!("{topic}/{partition}")
}

/// The verdict on a view: every mirrored partition of the lost home's
/// topics (a partition missing from it would make its commits look
/// unsettled).
pub fn plan(view: &[PartitionView]) -> Plan {
    // (producer, commit) -> (markers seen, markers written).
    let mut seen: HashMap<(i64, i64), (i64, i32)> = HashMap::new();
    for p in view {
        for part in &p.parts {
            let e = seen
                .entry((part.producer_id, part.seq))
                .or_insert((0, part.parts));
            e.0 += 1;
        }
    }
    let mut retract_from: BTreeMap<i64, i64> = BTreeMap::new();
    for ((producer, seq), (count, parts)) in seen {
        if count != i64::from(parts) {
            let from = retract_from.entry(producer).or_insert(seq);
            *from = (*from).min(seq);
        }
    }
    Plan {
        retract_from,
        view_end: view
            .iter()
            .map(|p| (partition_key(&p.topic, p.partition), p.log_end))
            .collect(),
    }
}

/// What a partition retracts at its promotion: (producer id, commit
/// number) of each part to retract, in marker order. `parts`: the noted
/// commits it holds.
pub fn retractions(plan: &Plan, topic: &str, partition: i32, parts: &[Part]) -> Vec<(i64, i64)> {
    let view_end = plan.view_end.get(&partition_key(topic, partition)).copied();
    retractions_in(&plan.retract_from, view_end, parts)
}

/// Whether a partition's part of `producer`'s commit `seq`, its marker at
/// `marker`, is not counted whole: its producer's commits are retracted
/// from an earlier one on, or it arrived at or past `view_end` (the
/// partition's log end when counted; `None`: no bound).
pub fn withheld(
    retract_from: &BTreeMap<i64, i64>,
    view_end: Option<i64>,
    producer: i64,
    seq: i64,
    marker: i64,
) -> bool {
    view_end.is_some_and(|end| marker >= end)
        || retract_from.get(&producer).is_some_and(|from| seq >= *from)
}

/// [`retractions`] with the plan's part for one partition: what it
/// retracts from each producer on, and its log end in the view.
pub fn retractions_in(
    retract_from: &BTreeMap<i64, i64>,
    view_end: Option<i64>,
    parts: &[Part],
) -> Vec<(i64, i64)> {
    let mut out: Vec<&Part> = parts
        .iter()
        .filter(|p| withheld(retract_from, view_end, p.producer_id, p.seq, p.marker))
        .collect();
    out.sort_by_key(|p| p.marker);
    out.into_iter().map(|p| (p.producer_id, p.seq)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn part(producer_id: i64, seq: i64, parts: i32, marker: i64) -> Part {
        Part {
            producer_id,
            seq,
            parts,
            marker,
        }
    }

    fn view(topic: &str, partition: i32, log_end: i64, parts: Vec<Part>) -> PartitionView {
        PartitionView {
            topic: topic.into(),
            partition,
            log_end,
            parts,
        }
    }

    #[test]
    fn a_commit_missing_a_part_is_retracted_with_its_producers_later_ones() {
        // Producer 1: commit 0 on a/0 and b/0 (whole), commit 1 on a/0 and
        // b/0 (b/0's marker missing), commit 2 on c/0 (whole). Producer 2:
        // commit 5 whole.
        let v = [
            view(
                "a",
                0,
                10,
                vec![part(1, 0, 2, 2), part(1, 1, 2, 5), part(2, 5, 1, 7)],
            ),
            view("b", 0, 4, vec![part(1, 0, 2, 3)]),
            view("c", 0, 9, vec![part(1, 2, 1, 8)]),
        ];
        let p = plan(&v);
        assert_eq!(p.retract_from, [(1, 1)].into_iter().collect());
        assert_eq!(retractions(&p, "a", 0, &v[0].parts), [(1, 1)]);
        assert_eq!(retractions(&p, "b", 0, &v[1].parts), []);
        assert_eq!(
            retractions(&p, "c", 0, &v[2].parts),
            [(1, 2)],
            "a later commit goes too"
        );
        // b/0's part of commit 1 arrives after the view: retracted as well.
        let late = [part(1, 0, 2, 3), part(1, 1, 2, 4)];
        assert_eq!(retractions(&p, "b", 0, &late), [(1, 1)]);
        // A part of a settled producer that arrives late goes too.
        let late = [part(2, 6, 1, 11)];
        assert_eq!(retractions(&p, "a", 0, &late), [(2, 6)]);
    }

    /// (partitions, each transaction's producer and partitions, each
    /// mirror's cut).
    type History = (usize, Vec<(i64, Vec<usize>)>, Vec<u8>);

    /// Producers' transactions, one after another, each writing into
    /// some of `n` partitions; each partition's mirror holds a prefix of
    /// its log. Whatever the cut, every commit ends up kept in all its
    /// parts or in none, and in each partition a producer's kept parts come
    /// before its retracted ones (clients drop a retracted range's
    /// producer up to the next abort marker).
    fn history() -> impl Strategy<Value = History> {
        (2usize..5).prop_flat_map(|n| {
            (
                Just(n),
                proptest::collection::vec(
                    (0i64..3, proptest::collection::btree_set(0..n, 1..=n)),
                    1..12,
                )
                .prop_map(|txns| {
                    txns.into_iter()
                        .map(|(p, set)| (p, set.into_iter().collect()))
                        .collect()
                }),
                proptest::collection::vec(any::<u8>(), n),
            )
        })
    }

    proptest! {
        #[test]
        fn every_commit_is_kept_whole_or_not_at_all((n, txns, cuts) in history()) {
            // The home's logs: each partition's markers in commit order.
            let mut logs: Vec<Vec<Part>> = vec![Vec::new(); n];
            let mut next_seq: HashMap<i64, i64> = HashMap::new();
            let mut commits = Vec::new();
            for (producer, set) in &txns {
                let seq = *next_seq.entry(*producer).and_modify(|s| *s += 1).or_insert(0);
                for &p in set {
                    let marker = logs[p].len() as i64;
                    logs[p].push(part(*producer, seq, set.len() as i32, marker));
                }
                commits.push((*producer, seq, set.clone()));
            }
            // Each mirror holds a prefix.
            let held: Vec<Vec<Part>> = logs
                .iter()
                .zip(&cuts)
                .map(|(log, cut)| log[..(*cut as usize % (log.len() + 1))].to_vec())
                .collect();
            let v: Vec<PartitionView> = held
                .iter()
                .enumerate()
                .map(|(i, parts)| view("t", i as i32, parts.len() as i64, parts.clone()))
                .collect();
            let p = plan(&v);
            let retracted: Vec<Vec<(i64, i64)>> = held
                .iter()
                .enumerate()
                .map(|(i, parts)| retractions(&p, "t", i as i32, parts))
                .collect();
            for (producer, seq, set) in &commits {
                let kept: Vec<bool> = set
                    .iter()
                    .map(|&i| {
                        held[i].iter().any(|x| (x.producer_id, x.seq) == (*producer, *seq))
                            && !retracted[i].contains(&(*producer, *seq))
                    })
                    .collect();
                prop_assert!(
                    kept.iter().all(|k| *k) || kept.iter().all(|k| !*k),
                    "commit {seq} of {producer} kept in part: {kept:?}"
                );
            }
            for (i, parts) in held.iter().enumerate() {
                let mut dropped: HashMap<i64, bool> = HashMap::new();
                for x in parts {
                    let gone = retracted[i].contains(&(x.producer_id, x.seq));
                    let before = dropped.entry(x.producer_id).or_insert(false);
                    prop_assert!(!*before || gone, "a kept commit after a retracted one in {i}");
                    *before |= gone;
                }
            }
            // Nothing is retracted needlessly: a producer's commits before
            // its first unsettled one stay.
            for (producer, seq, set) in &commits {
                let whole = set.iter().all(|&i| held[i].iter().any(|x| (x.producer_id, x.seq) == (*producer, *seq)));
                let earlier_whole = commits.iter().filter(|(q, s, _)| q == producer && s < seq).all(|(q, s, set)| {
                    set.iter().all(|&i| held[i].iter().any(|x| (x.producer_id, x.seq) == (*q, *s)))
                });
                if whole && earlier_whole {
                    prop_assert!(set.iter().all(|&i| !retracted[i].contains(&(*producer, *seq))));
                }
            }
        }
    }
}
