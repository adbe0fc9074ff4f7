//! Idempotent-producer state of one partition: the sans-IO rules Kafka applies
//! to (producer id, epoch, sequence) on every append.
//!
//! The last five batches of each producer are remembered, as Kafka does, so a
//! retried batch is recognised and answered with its original offset instead
//! of being written twice.

use std::collections::{HashMap, VecDeque};

/// Kafka clients allow at most five in-flight requests with idempotence, so
/// five remembered batches cover every retry.
pub const RETAINED_BATCHES: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchMeta {
    pub first_seq: i32,
    pub last_seq: i32,
    pub first_offset: i64,
    pub last_offset: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ProducerEntry {
    pub epoch: i16,
    pub batches: VecDeque<BatchMeta>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SequenceError {
    #[error("producer epoch {got} is older than the current epoch {current}")]
    FencedEpoch { got: i16, current: i16 },
    #[error("out of order sequence: expected {expected}, got {got} (epoch {epoch})")]
    OutOfOrder { expected: i32, got: i32, epoch: i16 },
}

/// What to do with an incoming batch from an idempotent producer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SequenceCheck {
    /// Append it.
    Append,
    /// Already written: acknowledge with the original offsets.
    Duplicate(BatchMeta),
}

/// The sequence after `s`: Kafka's sequences wrap from `i32::MAX` to 0.
pub fn next_seq(s: i32) -> i32 {
    if s == i32::MAX {
        0
    } else {
        s + 1
    }
}

#[derive(Debug, Default)]
pub struct ProducerStates {
    entries: HashMap<i64, ProducerEntry>,
}

impl ProducerStates {
    pub fn get(&self, pid: i64) -> Option<&ProducerEntry> {
        self.entries.get(&pid)
    }

    pub fn insert(&mut self, pid: i64, e: ProducerEntry) {
        self.entries.insert(pid, e);
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// (producer id, epoch, last sequence written) of every producer, by id.
    pub fn summary(&self) -> Vec<(i64, i16, i32)> {
        let mut out: Vec<(i64, i16, i32)> = self
            .entries
            .iter()
            .filter_map(|(pid, e)| e.batches.back().map(|b| (*pid, e.epoch, b.last_seq)))
            .collect();
        out.sort_unstable();
        out
    }

    /// Producers that remember a batch ending at or after `offset`.
    pub fn written_from(&self, offset: i64) -> Vec<i64> {
        self.entries
            .iter()
            .filter(|(_, e)| e.batches.iter().any(|b| b.last_offset >= offset))
            .map(|(pid, _)| *pid)
            .collect()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Applies Kafka's sequence rules without changing state.
    pub fn check(
        &self,
        pid: i64,
        epoch: i16,
        first_seq: i32,
        last_seq: i32,
    ) -> Result<SequenceCheck, SequenceError> {
        let Some(e) = self.entries.get(&pid) else {
            // A producer we have no state for may start at any sequence, as in
            // Kafka after its state was removed by retention.
            return Ok(SequenceCheck::Append);
        };
        if epoch < e.epoch {
            return Err(SequenceError::FencedEpoch {
                got: epoch,
                current: e.epoch,
            });
        }
        if epoch > e.epoch {
            if first_seq != 0 {
                return Err(SequenceError::OutOfOrder {
                    expected: 0,
                    got: first_seq,
                    epoch,
                });
            }
            return Ok(SequenceCheck::Append);
        }
        if let Some(b) = e
            .batches
            .iter()
            .find(|b| b.first_seq == first_seq && b.last_seq == last_seq)
        {
            return Ok(SequenceCheck::Duplicate(*b));
        }
        let expected = e.batches.back().map(|b| next_seq(b.last_seq)).unwrap_or(0);
        if first_seq != expected {
            return Err(SequenceError::OutOfOrder {
                expected,
                got: first_seq,
                epoch,
            });
        }
        Ok(SequenceCheck::Append)
    }

    /// A transaction marker at `epoch` was stored: a newer epoch than the
    /// producer's here becomes its epoch (its sequence starts again), so
    /// the old epoch's late batches are fenced. Returns the entry to
    /// persist, if it changed.
    pub fn fence(&mut self, pid: i64, epoch: i16) -> Option<&ProducerEntry> {
        if self.entries.get(&pid).is_some_and(|e| epoch <= e.epoch) {
            return None;
        }
        let e = self.entries.entry(pid).or_default();
        e.epoch = epoch;
        e.batches.clear();
        Some(e)
    }

    /// Records an appended batch; returns the entry to persist.
    pub fn record(&mut self, pid: i64, epoch: i16, meta: BatchMeta) -> &ProducerEntry {
        let e = self.entries.entry(pid).or_default();
        if epoch != e.epoch {
            e.batches.clear();
            e.epoch = epoch;
        }
        if e.batches.len() == RETAINED_BATCHES {
            e.batches.pop_front();
        }
        e.batches.push_back(meta);
        e
    }
}

impl ProducerEntry {
    /// Compact binary form stored in the `producers` column family.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(3 + self.batches.len() * 24);
        v.extend_from_slice(&self.epoch.to_be_bytes());
        v.push(self.batches.len() as u8);
        for b in &self.batches {
            v.extend_from_slice(&b.first_seq.to_be_bytes());
            v.extend_from_slice(&b.last_seq.to_be_bytes());
            v.extend_from_slice(&b.first_offset.to_be_bytes());
            v.extend_from_slice(&b.last_offset.to_be_bytes());
        }
        v
    }

    pub fn decode(v: &[u8]) -> Option<ProducerEntry> {
        if v.len() < 3 {
            return None;
        }
        let epoch = i16::from_be_bytes([v[0], v[1]]);
        let n = v[2] as usize;
        if v.len() != 3 + n * 24 {
            return None;
        }
        let mut batches = VecDeque::with_capacity(n);
        for c in v[3..].chunks_exact(24) {
            batches.push_back(BatchMeta {
                first_seq: i32::from_be_bytes(c[0..4].try_into().ok()?),
                last_seq: i32::from_be_bytes(c[4..8].try_into().ok()?),
                first_offset: i64::from_be_bytes(c[8..16].try_into().ok()?),
                last_offset: i64::from_be_bytes(c[16..24].try_into().ok()?),
            });
        }
        Some(ProducerEntry { epoch, batches })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(first_seq: i32, n: i32, first_offset: i64) -> BatchMeta {
        BatchMeta {
            first_seq,
            last_seq: first_seq + n - 1,
            first_offset,
            last_offset: first_offset + n as i64 - 1,
        }
    }

    #[test]
    fn in_order_batches_append_and_retries_are_duplicates() {
        let mut s = ProducerStates::default();
        assert_eq!(s.check(7, 0, 0, 9), Ok(SequenceCheck::Append));
        s.record(7, 0, meta(0, 10, 100));
        assert_eq!(s.check(7, 0, 10, 19), Ok(SequenceCheck::Append));
        s.record(7, 0, meta(10, 10, 110));
        assert_eq!(
            s.check(7, 0, 0, 9),
            Ok(SequenceCheck::Duplicate(meta(0, 10, 100)))
        );
        assert_eq!(
            s.check(7, 0, 10, 19),
            Ok(SequenceCheck::Duplicate(meta(10, 10, 110)))
        );
    }

    #[test]
    fn gaps_are_out_of_order() {
        let mut s = ProducerStates::default();
        s.record(7, 0, meta(0, 10, 0));
        assert_eq!(
            s.check(7, 0, 11, 12),
            Err(SequenceError::OutOfOrder {
                expected: 10,
                got: 11,
                epoch: 0
            })
        );
    }

    #[test]
    fn only_last_five_batches_are_remembered() {
        let mut s = ProducerStates::default();
        for i in 0..6 {
            s.record(1, 0, meta(i, 1, i as i64));
        }
        assert!(matches!(
            s.check(1, 0, 0, 0),
            Err(SequenceError::OutOfOrder { .. })
        ));
        assert!(matches!(
            s.check(1, 0, 1, 1),
            Ok(SequenceCheck::Duplicate(_))
        ));
    }

    #[test]
    fn epochs_fence_and_reset() {
        let mut s = ProducerStates::default();
        s.record(1, 3, meta(0, 5, 0));
        assert_eq!(
            s.check(1, 2, 5, 5),
            Err(SequenceError::FencedEpoch { got: 2, current: 3 })
        );
        assert!(matches!(
            s.check(1, 4, 5, 5),
            Err(SequenceError::OutOfOrder { expected: 0, .. })
        ));
        assert_eq!(s.check(1, 4, 0, 0), Ok(SequenceCheck::Append));
        s.record(1, 4, meta(0, 1, 5));
        assert_eq!(s.get(1).unwrap().batches.len(), 1);
    }

    #[test]
    fn unknown_producer_may_start_anywhere() {
        let s = ProducerStates::default();
        assert_eq!(s.check(9, 0, 42, 50), Ok(SequenceCheck::Append));
    }

    #[test]
    fn sequence_wraps() {
        let mut s = ProducerStates::default();
        s.record(
            1,
            0,
            BatchMeta {
                first_seq: i32::MAX - 1,
                last_seq: i32::MAX,
                first_offset: 0,
                last_offset: 1,
            },
        );
        assert_eq!(s.check(1, 0, 0, 3), Ok(SequenceCheck::Append));
    }

    #[test]
    fn entries_round_trip() {
        let mut s = ProducerStates::default();
        s.record(1, 2, meta(0, 3, 10));
        s.record(1, 2, meta(3, 3, 13));
        let e = s.get(1).unwrap().clone();
        assert_eq!(ProducerEntry::decode(&e.encode()), Some(e));
        assert_eq!(ProducerEntry::decode(&[0, 1, 1]), None);
    }
}
