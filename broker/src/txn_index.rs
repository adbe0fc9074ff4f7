//! One partition's view of transactions (KIP-98): which producers have a
//! transaction open here and where it began, and which ended in an abort
//! (the aborted-transaction index that `read_committed` fetches carry).
//! Pure: the log feeds it every batch it stores, in offset order, and asks
//! for the last stable offset and the aborted transactions of a read.
//!
//! It is a function of the log's batches alone (data batches open a
//! transaction, markers end it), so every replica and every mirror region,
//! which store the same batches, hold the same index.

use std::collections::BTreeMap;

use chronik_wire::control::{Marker, Note};
use serde::{Deserialize, Serialize};

/// How many of each producer's noted commits a partition remembers: a
/// promotion needs only those that may not have reached it whole, which
/// are the producer's last few.
pub const KEPT_COMMITS: usize = 8;

/// This partition's part of a transaction whose commit marker carries a
/// note ([`Note::Ending`]): what a promotion needs to tell whether the
/// commit reached this region whole, and to retract it if not.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitPart {
    /// The transaction's number among its transactional id's.
    pub seq: i64,
    /// How many partitions its coordinator wrote a commit marker into.
    pub parts: i32,
    /// Its first record here (`None`: it wrote no record here).
    pub first: Option<i64>,
    /// The commit marker's offset.
    pub marker: i64,
    /// A promotion's abort marker retracted it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub retracted: bool,
}

/// A transaction that ended in an abort: its records in this partition lie
/// in `first..last`, where `last` is the abort marker's offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Aborted {
    pub producer_id: i64,
    pub first: i64,
    pub last: i64,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnIndex {
    /// Producer id -> the offset of its open transaction's first record.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub open: BTreeMap<i64, i64>,
    /// Aborted transactions, by marker offset.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aborted: Vec<Aborted>,
    /// Producer id -> its last noted commits here, oldest first.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub committed: BTreeMap<i64, Vec<CommitPart>>,
}

impl TxnIndex {
    pub fn is_empty(&self) -> bool {
        self.open.is_empty() && self.aborted.is_empty() && self.committed.is_empty()
    }

    /// A transactional data batch from `producer_id` stored at `base`.
    /// Returns whether the index changed.
    pub fn on_data(&mut self, producer_id: i64, base: i64) -> bool {
        if self.open.contains_key(&producer_id) {
            return false;
        }
        self.open.insert(producer_id, base);
        true
    }

    /// A marker from `producer_id` stored at `offset`. Returns whether the
    /// index changed (a plain marker with no open transaction here changes
    /// nothing).
    pub fn on_marker(&mut self, producer_id: i64, marker: Marker, offset: i64) -> bool {
        if let Some(Note::Retracts { seq }) = marker.note {
            // Its part is aborted from its first record to this marker:
            // clients drop the producer's records from there until here.
            let Some(part) = self
                .committed
                .get_mut(&producer_id)
                .and_then(|v| v.iter_mut().find(|p| p.seq == seq && !p.retracted))
            else {
                return false;
            };
            part.retracted = true;
            if let Some(first) = part.first {
                self.aborted.push(Aborted {
                    producer_id,
                    first,
                    last: offset,
                });
            }
            return true;
        }
        let first = self.open.remove(&producer_id);
        if let (true, Some(Note::Ending { seq, parts })) = (marker.commit, marker.note) {
            let v = self.committed.entry(producer_id).or_default();
            v.push(CommitPart {
                seq,
                parts,
                first,
                marker: offset,
                retracted: false,
            });
            if v.len() > KEPT_COMMITS {
                v.remove(0);
            }
            return true;
        }
        let Some(first) = first else {
            return false;
        };
        if !marker.commit {
            self.aborted.push(Aborted {
                producer_id,
                first,
                last: offset,
            });
        }
        true
    }

    /// The newest noted commit of `producer_id` here.
    pub fn last_commit_seq(&self, producer_id: i64) -> Option<i64> {
        self.committed.get(&producer_id)?.last().map(|p| p.seq)
    }

    /// Whether `producer_id` has a transaction open here.
    pub fn is_open(&self, producer_id: i64) -> bool {
        self.open.contains_key(&producer_id)
    }

    /// The open transactions' producers, in id order.
    pub fn open_producers(&self) -> Vec<i64> {
        self.open.keys().copied().collect()
    }

    /// The last stable offset: nothing at or past the first record of an
    /// open transaction is stable, nor anything past the high watermark.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        self.open
            .values()
            .copied()
            .min()
            .map_or(high_watermark, |first| first.min(high_watermark))
    }

    /// The aborted transactions a read of `from..to` must name: those whose
    /// records overlap it (Kafka's fetch answers them as producer id and
    /// first offset; the client drops that producer's records until its
    /// abort marker).
    pub fn aborted_overlapping(&self, from: i64, to: i64) -> Vec<Aborted> {
        // `aborted` is in marker order: skip the ones that ended before `from`.
        let start = self.aborted.partition_point(|a| a.last < from);
        let mut out: Vec<Aborted> = self.aborted[start..]
            .iter()
            .filter(|a| a.first < to)
            .copied()
            .collect();
        // By first offset, as Kafka answers: a retraction's range begins
        // before the aborts that ended earlier, and librdkafka and franz-go
        // take each producer's ranges in the order given.
        out.sort_by_key(|a| (a.first, a.last));
        out
    }

    /// The log now starts at `start`: aborted transactions wholly below it
    /// are forgotten. Returns whether the index changed.
    pub fn trim(&mut self, start: i64) -> bool {
        let below = self.aborted.partition_point(|a| a.last < start);
        self.aborted.drain(..below);
        let mut changed = below > 0;
        self.committed.retain(|_, v| {
            let before = v.len();
            v.retain(|p| p.marker >= start);
            changed |= v.len() != before;
            !v.is_empty()
        });
        changed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(commit: bool) -> Marker {
        Marker { commit, note: None }
    }

    #[test]
    fn an_open_transaction_holds_the_last_stable_offset_at_its_first_record() {
        let mut t = TxnIndex::default();
        assert_eq!(t.last_stable_offset(10), 10);
        assert!(t.on_data(7, 3));
        assert!(!t.on_data(7, 5), "its later batches change nothing");
        assert!(t.on_data(8, 6));
        assert_eq!(t.last_stable_offset(10), 3);
        assert_eq!(t.last_stable_offset(2), 2, "never past the high watermark");
        assert!(t.on_marker(7, m(true), 9));
        assert_eq!(t.last_stable_offset(12), 6);
        assert!(t.on_marker(8, m(false), 11));
        assert_eq!(t.last_stable_offset(12), 12);
        assert_eq!(
            t.aborted,
            vec![Aborted {
                producer_id: 8,
                first: 6,
                last: 11
            }]
        );
        assert!(
            !t.on_marker(8, m(false), 12),
            "a second marker changes nothing"
        );
    }

    /// What a read_committed client keeps of one producer's batches, given
    /// the aborted transactions a fetch from offset 0 names. `java`: Kafka's
    /// consumer (a set of aborted producers, entered at each range's first
    /// offset and left at any abort marker); otherwise librdkafka and
    /// franz-go (each abort marker consumes the producer's next range, and
    /// a batch at or past the current range's first offset is dropped).
    fn kept(log: &[(i64, Option<bool>)], aborted: &[Aborted], java: bool) -> Vec<i64> {
        let mut ranges: Vec<i64> = aborted.iter().map(|a| a.first).collect();
        let mut inside = false;
        let mut out = Vec::new();
        for &(o, marker) in log {
            match marker {
                Some(false) if java => inside = false,
                Some(false) => {
                    if ranges.first().is_some_and(|f| *f <= o) {
                        ranges.remove(0);
                    }
                }
                Some(true) => {}
                None => {
                    let dropped = if java {
                        if aborted.iter().any(|a| a.first == o) {
                            inside = true;
                        }
                        inside
                    } else {
                        ranges.first().is_some_and(|f| o >= *f)
                    };
                    if !dropped {
                        out.push(o);
                    }
                }
            }
        }
        out
    }

    #[test]
    fn a_retracted_commit_is_dropped_by_every_client() {
        let noted = |commit, seq| Marker {
            commit,
            note: Some(Note::Ending { seq, parts: 2 }),
        };
        let retracts = |seq| Marker {
            commit: false,
            note: Some(Note::Retracts { seq }),
        };
        // One producer: a settled commit (seq 1), a commit that did not
        // arrive whole (seq 2), an abort, another commit (seq 4), and a
        // transaction still open when the copy was promoted.
        let d = None;
        let events = [
            d,
            d,
            d,
            Some(noted(true, 1)),
            d,
            d,
            d,
            Some(noted(true, 2)),
            d,
            d,
            Some(m(false)),
            d,
            d,
            Some(noted(true, 4)),
            d,
            d,
            // The promotion: retract seq 2 and 4, abort the open one.
            Some(retracts(2)),
            Some(retracts(4)),
            Some(m(false)),
        ];
        let mut log: Vec<(i64, Option<bool>)> = Vec::new();
        let mut t = TxnIndex::default();
        for (at, e) in events.iter().enumerate() {
            let at = at as i64;
            match e {
                None => {
                    t.on_data(5, at);
                }
                Some(marker) => {
                    t.on_marker(5, *marker, at);
                }
            }
            log.push((at, e.map(|m| m.commit)));
        }
        assert!(!t.on_marker(5, retracts(2), 19), "retracted once");
        let named = t.aborted_overlapping(0, 20);
        assert_eq!(
            named.iter().map(|a| (a.first, a.last)).collect::<Vec<_>>(),
            [(4, 16), (8, 10), (11, 17), (14, 18)]
        );
        for java in [true, false] {
            assert_eq!(kept(&log, &named, java), [0, 1, 2], "java: {java}");
        }
        assert_eq!(t.last_stable_offset(19), 19);
        // The index is a function of the batches: a mirror of this copy
        // that replays them holds the same.
        assert!(t.trim(5));
        assert_eq!(t.committed[&5].len(), 2, "parts before the log start go");
    }

    #[test]
    fn a_read_names_the_aborted_transactions_it_overlaps() {
        let mut t = TxnIndex::default();
        for (pid, first, last) in [(1, 0, 4), (2, 5, 9), (3, 10, 14)] {
            t.on_data(pid, first);
            t.on_marker(pid, m(false), last);
        }
        let pids = |v: Vec<Aborted>| v.iter().map(|a| a.producer_id).collect::<Vec<_>>();
        assert_eq!(pids(t.aborted_overlapping(0, 100)), vec![1, 2, 3]);
        assert_eq!(pids(t.aborted_overlapping(5, 10)), vec![2]);
        assert_eq!(pids(t.aborted_overlapping(4, 5)), vec![1]);
        assert_eq!(pids(t.aborted_overlapping(15, 20)), Vec::<i64>::new());
        assert!(t.trim(9));
        assert_eq!(pids(t.aborted_overlapping(0, 100)), vec![2, 3]);
        assert!(!t.trim(9));
    }

    /// Against a model that keeps every batch, over random logs: the last
    /// stable offset is the first record of the oldest transaction without
    /// a marker, and a read names every aborted transaction with a record
    /// inside it, and no transaction that lies wholly outside it.
    #[test]
    fn the_index_agrees_with_the_batches() {
        use rand::{Rng, SeedableRng};
        for seed in 0..500u64 {
            let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
            let mut t = TxnIndex::default();
            // (offset, pid, kind): 0 data, 1 commit marker, 2 abort marker.
            let n = rng.random_range(1..60);
            let log: Vec<(i64, i64, u8)> = (0..n)
                .map(|o| (o as i64, rng.random_range(0..4), rng.random_range(0..3)))
                .collect();
            for &(o, pid, kind) in &log {
                match kind {
                    0 => {
                        t.on_data(pid, o);
                    }
                    k => {
                        t.on_marker(pid, m(k == 1), o);
                    }
                }
            }
            let end = log.len() as i64;
            let mut open: BTreeMap<i64, i64> = BTreeMap::new();
            let mut pending: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
            let mut aborted_records: Vec<(i64, i64)> = Vec::new();
            for &(o, pid, kind) in &log {
                if kind == 0 {
                    open.entry(pid).or_insert(o);
                    pending.entry(pid).or_default().push(o);
                } else if open.remove(&pid).is_some() {
                    let recs = pending.remove(&pid).unwrap_or_default();
                    if kind == 2 {
                        aborted_records.extend(recs.into_iter().map(|r| (r, pid)));
                    }
                }
            }
            let lso = open.values().copied().min().unwrap_or(end);
            assert_eq!(t.last_stable_offset(end), lso, "seed {seed}");
            let from = rng.random_range(0..60);
            let to = from + rng.random_range(0..60);
            let named = t.aborted_overlapping(from, to);
            for &(o, pid) in &aborted_records {
                if o >= from && o < to {
                    assert!(
                        named
                            .iter()
                            .any(|a| a.producer_id == pid && a.first <= o && o < a.last),
                        "seed {seed}: aborted record {o} of {pid} not covered"
                    );
                }
            }
            for a in named {
                assert!(
                    a.last >= from && a.first < to,
                    "seed {seed}: {a:?} outside the read"
                );
            }
        }
    }
}
