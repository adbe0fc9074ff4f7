//! The invariants a simulation run must keep, checked from what the run
//! recorded (acknowledgements, high-watermark and leadership samples) and
//! from every replica's partition log at the end. Pure: the tests at the
//! bottom feed it planted bugs.
//!
//! - Every acknowledged batch is in the log exactly once, at the offset the
//!   acknowledgement named, with the acknowledged record count.
//! - Each replica's log is dense (every batch starts at the previous one's
//!   last offset + 1, from the log start) and holds no producer batch
//!   twice.
//! - Replicas never diverge below their high watermarks: of two replicas,
//!   the shorter committed log is a byte-for-byte prefix of the longer.
//! - A replica's high watermark never moves backwards, restarts included.
//! - At most one leader per Raft term in every group.

use std::collections::{BTreeMap, BTreeSet};

use chronik_broker::batch::BatchHeader;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub partition: i32,
    pub producer_id: i64,
    pub sequence: i32,
    pub base_offset: i64,
    pub records: i32,
    /// Answered as an idempotent duplicate of an earlier append.
    pub duplicate: bool,
    pub at_ms: u64,
}

/// A batch a consumer was served by a leader.
#[derive(Debug, Clone)]
pub struct ReadBatch {
    pub partition: i32,
    pub broker: u64,
    pub base: i64,
    pub bytes: Vec<u8>,
    pub at_ms: u64,
}

#[derive(Debug, Default)]
pub struct History {
    pub acks: Vec<Ack>,
    /// Every batch the consumers were served.
    pub reads: Vec<ReadBatch>,
    pub producers_done: bool,
    /// DeleteRecords asked, as (partition, offset), before each was sent.
    pub trims: Vec<(i32, i64)>,
    /// Last high watermark seen per (broker, partition).
    pub hw: BTreeMap<(u64, i32), i64>,
    /// Leader seen per (group, term).
    pub leaders: BTreeMap<(u64, u64), u64>,
    /// Violations seen while the run went on.
    pub violations: Vec<String>,
    /// Per (broker, partition): the last snapshot and purged Raft indexes
    /// seen, to count snapshot installs (coverage, not an invariant).
    pub snapshots: BTreeMap<(u64, i32), (Option<u64>, Option<u64>)>,
    pub snapshot_installs: u64,
}

impl History {
    pub fn observe_hw(&mut self, node: u64, partition: i32, hw: i64, at_ms: u64) -> bool {
        let prev = self.hw.insert((node, partition), hw);
        if let Some(p) = prev.filter(|p| *p > hw) {
            self.violations.push(format!(
                "high watermark moved backwards: broker {node} partition {partition} {p} -> {hw} at {at_ms} ms"
            ));
        }
        prev != Some(hw)
    }

    /// Returns whether the replica installed a snapshot since last seen. A
    /// snapshot the replica built itself purges the Raft log only up to
    /// `keep_behind_snapshot` entries before it; an installed one replaces
    /// the log up to its last index.
    pub fn observe_snapshot(
        &mut self,
        node: u64,
        partition: i32,
        snapshot: Option<u64>,
        purged: Option<u64>,
    ) -> bool {
        let prev = self.snapshots.insert((node, partition), (snapshot, purged));
        let installed =
            snapshot.is_some() && purged == snapshot && prev != Some((snapshot, purged));
        self.snapshot_installs += installed as u64;
        installed
    }

    /// Returns whether this (group, term) had no leader recorded yet.
    pub fn observe_leader(&mut self, group: u64, term: u64, node: u64, at_ms: u64) -> bool {
        match self.leaders.get(&(group, term)) {
            Some(other) if *other != node => {
                self.violations.push(format!(
                    "two leaders in term {term} of group {group}: brokers {other} and {node} (at {at_ms} ms)"
                ));
                false
            }
            Some(_) => false,
            None => {
                self.leaders.insert((group, term), node);
                true
            }
        }
    }
}

/// One replica's committed partition log at the end of the run.
#[derive(Debug, Clone)]
pub struct Replica {
    pub node: u64,
    pub partition: i32,
    pub log_start: i64,
    pub high_watermark: i64,
    /// Every batch from the log start up to the high watermark.
    pub bytes: Vec<u8>,
}

struct Batch {
    base: i64,
    last: i64,
    records: i32,
    producer: Option<(i64, i32)>,
    range: std::ops::Range<usize>,
}

fn batches(r: &Replica) -> Result<Vec<Batch>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < r.bytes.len() {
        let h = BatchHeader::parse(&r.bytes[at..])
            .map_err(|e| format!("unparsable batch at byte {at}: {e}"))?;
        let end = at + h.total_len();
        if end > r.bytes.len() {
            return Err(format!("truncated batch at byte {at}"));
        }
        out.push(Batch {
            base: h.base_offset,
            last: h.last_offset(),
            records: h.records_count,
            producer: (h.producer_id >= 0).then_some((h.producer_id, h.base_sequence)),
            range: at..end,
        });
        at = end;
    }
    Ok(out)
}

/// Splits a fetch answer into (base offset, last offset, bytes) per batch.
pub fn split_batches(bytes: &[u8]) -> Result<Vec<(i64, i64, Vec<u8>)>, String> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < bytes.len() {
        let h = BatchHeader::parse(&bytes[at..])
            .map_err(|e| format!("an unparsable batch at byte {at}: {e}"))?;
        let end = at + h.total_len();
        if end > bytes.len() {
            return Err(format!("a truncated batch at byte {at}"));
        }
        out.push((h.base_offset, h.last_offset(), bytes[at..end].to_vec()));
        at = end;
    }
    Ok(out)
}

/// Every violation found; empty when the run kept every invariant.
pub fn check(history: &History, replicas: &[Replica]) -> Vec<String> {
    let mut v = history.violations.clone();
    let parts: BTreeSet<i32> = replicas.iter().map(|r| r.partition).collect();
    for p in parts {
        let reps: Vec<&Replica> = replicas.iter().filter(|r| r.partition == p).collect();
        let mut parsed = Vec::new();
        for r in &reps {
            match batches(r) {
                Ok(b) => {
                    check_dense(r, &b, &mut v);
                    parsed.push((*r, b));
                }
                Err(e) => v.push(format!("partition {p} on broker {}: {e}", r.node)),
            }
        }
        // Pairwise, from where both still hold batches (a replica may not
        // have applied the last DeleteRecords yet): the shorter committed
        // log is a prefix of the longer.
        for (i, (a, ab)) in parsed.iter().enumerate() {
            for (b, bb) in parsed.iter().skip(i + 1) {
                let first = |bs: &[Batch]| bs.first().map_or(i64::MAX, |x| x.base);
                let from = first(ab).max(first(bb));
                let (Some(at), Some(bt)) = (tail_from(a, ab, from), tail_from(b, bb, from)) else {
                    // One log ends before the other starts, or they do not
                    // share the batch boundary where the later one starts.
                    let end = |bs: &[Batch]| bs.last().map_or(-1, |x| x.last);
                    if from != i64::MAX && end(ab).min(end(bb)) >= from {
                        v.push(format!(
                            "partition {p}: replicas on brokers {} and {} have no batch starting at {from} in common",
                            a.node, b.node
                        ));
                    }
                    continue;
                };
                let (short, st, long, lt) = if at.len() <= bt.len() {
                    (a, at, b, bt)
                } else {
                    (b, bt, a, at)
                };
                if !lt.starts_with(st) {
                    let mut pos = 0;
                    let first = split_batches(st)
                        .unwrap_or_default()
                        .into_iter()
                        .find_map(|(base, _, x)| {
                            let same = lt.get(pos..pos + x.len()) == Some(x.as_slice());
                            pos += x.len();
                            (!same).then_some(base)
                        })
                        .unwrap_or(-1);
                    v.push(format!(
                        "partition {p}: replicas on brokers {} (hw {}) and {} (hw {}) diverge below the high watermark, first at offset {first}",
                        short.node, short.high_watermark, long.node, long.high_watermark
                    ));
                }
            }
        }
        // Acknowledged writes, against the longest log.
        let Some((longest, lb)) = parsed
            .iter()
            .max_by_key(|(r, _)| (r.high_watermark, r.node))
        else {
            continue;
        };
        // What consumers were served is what the log holds: a read of
        // anything else came from a leader that should not have answered.
        let at: BTreeMap<i64, &Batch> = lb.iter().map(|b| (b.base, b)).collect();
        // Below the final log's first batch, records were deleted.
        let kept_from = lb.first().map_or(longest.log_start, |b| b.base);
        for r in history
            .reads
            .iter()
            .filter(|r| r.partition == p && r.base >= kept_from)
        {
            let stored = at.get(&r.base).map(|b| &longest.bytes[b.range.clone()]);
            if stored != Some(r.bytes.as_slice()) {
                v.push(format!(
                    "partition {p}: broker {} served a batch at offset {} ({} ms) that the final log (broker {}) {}",
                    r.broker,
                    r.base,
                    r.at_ms,
                    longest.node,
                    if stored.is_some() { "holds with other bytes" } else { "does not have" }
                ));
            }
        }
        let mut by_producer: BTreeMap<(i64, i32), Vec<&Batch>> = BTreeMap::new();
        for b in lb {
            if let Some(k) = b.producer {
                by_producer.entry(k).or_default().push(b);
            }
        }
        let mut acked_at: BTreeMap<(i64, i32), i64> = BTreeMap::new();
        for a in history.acks.iter().filter(|a| a.partition == p) {
            let key = (a.producer_id, a.sequence);
            if let Some(prev) = acked_at.insert(key, a.base_offset) {
                if prev != a.base_offset {
                    v.push(format!(
                        "partition {p}: producer {} sequence {} acknowledged at offsets {prev} and {}",
                        a.producer_id, a.sequence, a.base_offset
                    ));
                }
            }
            let found = by_producer.get(&key).map(Vec::as_slice).unwrap_or(&[]);
            match found {
                // Deleted by a DeleteRecords: below where the log starts.
                [] if a.base_offset + a.records as i64 <= longest.log_start => {}
                [] => v.push(format!(
                    "partition {p}: acknowledged batch lost: producer {} sequence {} acked at offset {} ({} ms), longest replica (broker {}) ends at {}",
                    a.producer_id, a.sequence, a.base_offset, a.at_ms, longest.node, longest.high_watermark
                )),
                [b] if b.base != a.base_offset || b.records != a.records => v.push(format!(
                    "partition {p}: producer {} sequence {} acked at offset {} ({} records) but stored at {} ({} records)",
                    a.producer_id, a.sequence, a.base_offset, a.records, b.base, b.records
                )),
                [_] => {}
                many => v.push(format!(
                    "partition {p}: producer {} sequence {} stored {} times (offsets {:?})",
                    a.producer_id,
                    a.sequence,
                    many.len(),
                    many.iter().map(|b| b.base).collect::<Vec<_>>()
                )),
            }
        }
    }
    v
}

/// A replica's bytes from its batch starting at `base`, if it has one.
fn tail_from<'a>(r: &'a Replica, bs: &[Batch], base: i64) -> Option<&'a [u8]> {
    bs.iter()
        .find(|x| x.base == base)
        .map(|x| &r.bytes[x.range.start..])
}

fn check_dense(r: &Replica, bs: &[Batch], v: &mut Vec<String>) {
    let (p, n) = (r.partition, r.node);
    let mut next = r.log_start;
    let mut seen = BTreeSet::new();
    for b in bs {
        // The log start may fall inside the first batch (DeleteRecords).
        let ok = if b.range.start == 0 {
            b.base <= next && next <= b.last + 1
        } else {
            b.base == next
        };
        if !ok {
            v.push(format!(
                "partition {p} on broker {n}: offsets not dense: batch at {} where {next} was next",
                b.base
            ));
        }
        next = b.last + 1;
        if let Some(k) = b.producer {
            if !seen.insert(k) {
                v.push(format!(
                    "partition {p} on broker {n}: producer {} sequence {} stored twice (again at offset {})",
                    k.0, k.1, b.base
                ));
            }
        }
    }
    let end = if bs.is_empty() {
        r.log_start.max(r.high_watermark)
    } else {
        next
    };
    if end != r.high_watermark {
        v.push(format!(
            "partition {p} on broker {n}: high watermark {} but committed batches end at {end}",
            r.high_watermark
        ));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_broker::batch::{build, stamp};

    /// A committed log of `n` batches from producer 7, one record each
    /// except every third with two.
    fn log(n: i32) -> (Vec<u8>, Vec<Ack>) {
        let mut bytes = Vec::new();
        let mut acks = Vec::new();
        let mut offset = 0i64;
        for seq in 0..n {
            let records = 1 + (seq % 3 == 2) as usize;
            let b = build::simple(records, 1000, Some((7, 0, seq)));
            bytes.extend_from_slice(&stamp(&b, offset, 1, None));
            acks.push(Ack {
                partition: 0,
                producer_id: 7,
                sequence: seq,
                base_offset: offset,
                records: records as i32,
                duplicate: false,
                at_ms: 0,
            });
            offset += records as i64;
        }
        (bytes, acks)
    }

    fn replica(node: u64, bytes: Vec<u8>) -> Replica {
        let hw = batches(&Replica {
            node,
            partition: 0,
            log_start: 0,
            high_watermark: 0,
            bytes: bytes.clone(),
        })
        .unwrap()
        .last()
        .map(|b| b.last + 1)
        .unwrap_or(0);
        Replica {
            node,
            partition: 0,
            log_start: 0,
            high_watermark: hw,
            bytes,
        }
    }

    fn history(acks: Vec<Ack>) -> History {
        History {
            acks,
            ..Default::default()
        }
    }

    #[test]
    fn a_correct_run_passes() {
        let (bytes, acks) = log(6);
        let (short, _) = log(4);
        let reps = [
            replica(1, bytes.clone()),
            replica(2, bytes),
            replica(3, short),
        ];
        assert_eq!(check(&history(acks), &reps), Vec::<String>::new());
    }

    #[test]
    fn catches_a_lost_ack() {
        let (bytes, mut acks) = log(4);
        let (_, more) = log(5);
        acks.push(more[4].clone()); // acknowledged, but in no replica
        let v = check(
            &history(acks),
            &[replica(1, bytes.clone()), replica(2, bytes)],
        );
        assert!(
            v.len() == 1 && v[0].contains("acknowledged batch lost"),
            "{v:?}"
        );
    }

    #[test]
    fn catches_an_ack_at_the_wrong_offset() {
        let (bytes, mut acks) = log(4);
        acks[2].base_offset += 1;
        let v = check(&history(acks), &[replica(1, bytes)]);
        assert!(v.iter().any(|m| m.contains("but stored at")), "{v:?}");
    }

    #[test]
    fn catches_a_divergent_replica() {
        let (bytes, acks) = log(6);
        // Same framing and length, different committed content at offset 4
        // (sequence 3's place): a follower that applied another batch there.
        let mut other = bytes.clone();
        let forged = stamp(&build::simple(1, 5000, Some((9, 0, 0))), 4, 1, None);
        let at = log(3).0.len();
        other.splice(at..at + forged.len(), forged.iter().copied());
        assert_eq!(other.len(), bytes.len());
        let v = check(&history(acks), &[replica(1, bytes), replica(2, other)]);
        assert!(
            v.iter()
                .any(|m| m.contains("diverge below the high watermark")),
            "{v:?}"
        );
    }

    #[test]
    fn catches_a_duplicate_and_a_gap() {
        let (bytes, acks) = log(3);
        // The batch of sequence 1 appended again at the end.
        let again = stamp(&build::simple(1, 1000, Some((7, 0, 1))), 4, 1, None);
        let mut dup = bytes.clone();
        dup.extend_from_slice(&again);
        let v = check(&history(acks.clone()), &[replica(1, dup)]);
        assert!(v.iter().any(|m| m.contains("stored twice")), "{v:?}");

        let hole = stamp(&build::simple(1, 1000, Some((7, 0, 3))), 9, 1, None);
        let mut gap = bytes;
        gap.extend_from_slice(&hole);
        let v = check(&history(acks), &[replica(1, gap)]);
        assert!(v.iter().any(|m| m.contains("not dense")), "{v:?}");
    }

    #[test]
    fn catches_a_high_watermark_going_back_and_two_leaders() {
        let mut h = History::default();
        assert!(h.observe_hw(1, 0, 10, 5));
        assert!(!h.observe_hw(1, 0, 10, 6));
        h.observe_hw(1, 0, 12, 7);
        h.observe_hw(2, 0, 3, 7); // another broker may lag
        assert!(h.violations.is_empty());
        h.observe_hw(1, 0, 11, 8);
        assert!(
            h.violations[0].contains("moved backwards"),
            "{:?}",
            h.violations
        );

        let mut h = History::default();
        assert!(h.observe_leader(5, 3, 1, 0));
        assert!(!h.observe_leader(5, 3, 1, 1));
        assert!(h.observe_leader(5, 4, 2, 2));
        assert!(h.violations.is_empty());
        h.observe_leader(5, 4, 3, 3);
        assert!(
            h.violations[0].contains("two leaders in term 4"),
            "{:?}",
            h.violations
        );
        assert!(!check(&h, &[]).is_empty());
    }

    #[test]
    fn catches_a_read_the_final_log_does_not_hold() {
        let (bytes, acks) = log(4);
        let served = |base: i64, bytes: Vec<u8>| ReadBatch {
            partition: 0,
            broker: 2,
            base,
            bytes,
            at_ms: 0,
        };
        let mut h = history(acks);
        let first = split_batches(&bytes).unwrap();
        h.reads = first
            .iter()
            .map(|(b, _, x)| served(*b, x.clone()))
            .collect();
        assert_eq!(
            check(&h, &[replica(1, bytes.clone())]),
            Vec::<String>::new()
        );
        // A stale leader served its own batch at offset 4.
        let forged = stamp(&build::simple(1, 5000, Some((9, 0, 0))), 4, 1, None);
        h.reads.push(served(4, forged.to_vec()));
        let v = check(&h, &[replica(1, bytes)]);
        assert!(
            v.len() == 1 && v[0].contains("holds with other bytes"),
            "{v:?}"
        );
    }
}
