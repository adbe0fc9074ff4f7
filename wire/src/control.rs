//! Transaction markers: the control batches that end a transaction in each
//! partition it wrote (KIP-98). A marker is one record whose key is
//! `(version: i16 = 0, type: i16)`, type 0 aborting and 1 committing, and
//! whose value is `(version: i16 = 0, coordinator epoch: i32)`, in an
//! uncompressed batch with the transactional and control bits set and the
//! producer's id and epoch (no sequence).
//!
//! Chronik may add a [`Note`] after the coordinator epoch: clients read only
//! a marker's key, and Kafka's own parser of version 0 values stops after
//! the epoch. The note says which of its producer's transactions a commit
//! ends and in how many partitions, so a region holding a mirror can tell
//! whether every part of a commit reached it, and it marks the aborts that
//! retract a commit that did not reach it whole (see `docs/transactions.md`).

use crate::batch::{self, BatchHeader};

const ABORT: i16 = 0;
const COMMIT: i16 = 1;
const TRANSACTIONAL_AND_CONTROL: i16 = 0x10 | 0x20;
/// Starts a note ("CN").
const NOTE_TAG: i16 = 0x434e;
const ENDING: i8 = 1;
const RETRACTS: i8 = 2;

/// What Chronik adds to a marker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Note {
    /// A commit: the transaction numbered `seq` among those its
    /// transactional id ended, whose coordinator wrote a commit marker into
    /// `parts` partitions.
    Ending { seq: i64, parts: i32 },
    /// An abort that a promoted copy wrote: it retracts this partition's
    /// part of its producer's transaction `seq`, committed in the lost home
    /// region but not whole in this one.
    Retracts { seq: i64 },
}

/// A marker as stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Marker {
    pub commit: bool,
    pub note: Option<Note>,
}

/// The marker batch, offsets and leader epoch left for the append to stamp.
pub fn marker_batch(
    producer_id: i64,
    producer_epoch: i16,
    commit: bool,
    coordinator_epoch: i32,
    timestamp: i64,
    note: Option<Note>,
) -> Vec<u8> {
    let mut key = Vec::with_capacity(4);
    key.extend_from_slice(&0i16.to_be_bytes());
    key.extend_from_slice(&(if commit { COMMIT } else { ABORT }).to_be_bytes());
    let mut value = Vec::with_capacity(21);
    value.extend_from_slice(&0i16.to_be_bytes());
    value.extend_from_slice(&coordinator_epoch.to_be_bytes());
    if let Some(note) = note {
        let (kind, seq, parts) = match note {
            Note::Ending { seq, parts } => (ENDING, seq, parts),
            Note::Retracts { seq } => (RETRACTS, seq, 0),
        };
        value.extend_from_slice(&NOTE_TAG.to_be_bytes());
        value.push(kind as u8);
        value.extend_from_slice(&seq.to_be_bytes());
        value.extend_from_slice(&parts.to_be_bytes());
    }
    let mut b = batch::build::batch(
        timestamp,
        Some((producer_id, producer_epoch, -1)),
        &[batch::build::Record {
            key: Some(&key),
            value: Some(&value),
            headers: Vec::new(),
            timestamp_delta: 0,
        }],
    );
    b[batch::ATTRIBUTES_OFFSET..batch::ATTRIBUTES_OFFSET + 2]
        .copy_from_slice(&TRANSACTIONAL_AND_CONTROL.to_be_bytes());
    batch::reseal(&mut b);
    b
}

fn note_of(value: &[u8]) -> Option<Note> {
    let rest = value.get(6..)?;
    if rest.len() < 15 || i16::from_be_bytes([rest[0], rest[1]]) != NOTE_TAG {
        return None;
    }
    let seq = i64::from_be_bytes(rest[3..11].try_into().ok()?);
    let parts = i32::from_be_bytes(rest[11..15].try_into().ok()?);
    match rest[2] as i8 {
        ENDING => Some(Note::Ending { seq, parts }),
        RETRACTS => Some(Note::Retracts { seq }),
        _ => None,
    }
}

/// The marker a stored control batch holds, or `None` for another control
/// record. `bytes` is the whole batch; control batches are never
/// compressed.
pub fn marker(h: &BatchHeader, bytes: &[u8]) -> Option<Marker> {
    if !h.is_control() || h.compression() != 0 || h.records_count < 1 {
        return None;
    }
    // Record: length, attributes (i8), timestamp delta, offset delta, key,
    // value.
    let mut at = batch::HEADER_LEN;
    let (_len, n) = batch::read_varint(bytes.get(at..)?)?;
    at += n + 1;
    for _ in 0..2 {
        let (_, n) = batch::read_varint(bytes.get(at..)?)?;
        at += n;
    }
    let (klen, n) = batch::read_varint(bytes.get(at..)?)?;
    at += n;
    if klen < 4 {
        return None;
    }
    let commit = key_kind(bytes.get(at..at + klen as usize)?)?;
    at += klen as usize;
    let note = batch::read_varint(bytes.get(at..)?).and_then(|(vlen, n)| {
        let from = at + n;
        let value = bytes.get(from..from + usize::try_from(vlen).ok()?)?;
        note_of(value)
    });
    Some(Marker { commit, note })
}

/// Whether a stored control batch commits (`Some(true)`), aborts
/// (`Some(false)`) or is some other control record (`None`).
pub fn marker_kind(h: &BatchHeader, bytes: &[u8]) -> Option<bool> {
    marker(h, bytes).map(|m| m.commit)
}

/// What a control record's key marks: a commit (`Some(true)`), an abort
/// (`Some(false)`) or neither.
pub fn key_kind(key: &[u8]) -> Option<bool> {
    match i16::from_be_bytes([*key.get(2)?, *key.get(3)?]) {
        COMMIT => Some(true),
        ABORT => Some(false),
        _ => None,
    }
}

/// What became of one batch's records, as the batches after it in the same
/// partition's log tell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fate {
    /// Not transactional: its records stand.
    Plain,
    /// A control batch: no records of the application's.
    Control,
    /// Its transaction's commit marker follows.
    Committed,
    /// Its transaction's abort marker follows.
    Aborted,
    /// No marker of its producer follows: the transaction never ended here.
    Open,
}

/// The fate of each of `batches` (a stretch of one partition's log, in
/// offset order: each batch's header and, for a control batch, what it
/// marks). A transaction whose data lies partly before the stretch is judged
/// by the marker in it all the same; one whose marker lies past the
/// stretch is `Open`.
pub fn fates(batches: &[(BatchHeader, Option<bool>)]) -> Vec<Fate> {
    let mut out = Vec::with_capacity(batches.len());
    // Producer id -> its batches since its last marker.
    let mut pending: std::collections::HashMap<i64, Vec<usize>> = Default::default();
    for (i, (h, kind)) in batches.iter().enumerate() {
        if h.is_control() {
            out.push(Fate::Control);
            if let (Some(commit), Some(open)) = (kind, pending.remove(&h.producer_id)) {
                let fate = if *commit {
                    Fate::Committed
                } else {
                    Fate::Aborted
                };
                for j in open {
                    out[j] = fate;
                }
            }
        } else if h.is_transactional() {
            out.push(Fate::Open);
            pending.entry(h.producer_id).or_default().push(i);
        } else {
            out.push(Fate::Plain);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_marker_reads_back_as_what_it_marks() {
        for commit in [true, false] {
            let b = marker_batch(42, 7, commit, 3, 1_000, None);
            let h = batch::BatchHeader::parse(&b).unwrap();
            assert!(h.is_control() && h.is_transactional());
            assert_eq!((h.producer_id, h.producer_epoch), (42, 7));
            assert_eq!(h.records_count, 1);
            assert_eq!(marker_kind(&h, &b), Some(commit));
            // A valid batch as stored (the CRC covers the attributes).
            assert!(batch::split_stored(&b).is_ok());
        }
    }

    #[test]
    fn each_batch_takes_the_fate_of_the_marker_after_it() {
        let data = |pid: i64, txn: bool| {
            let mut b = batch::build::simple(1, 0, Some((pid, 0, 0)));
            if txn {
                b = batch::build::transactional(b);
            }
            (batch::BatchHeader::parse(&b).unwrap(), None)
        };
        let marker = |pid: i64, commit: bool| {
            let b = marker_batch(pid, 0, commit, 0, 0, None);
            let h = batch::BatchHeader::parse(&b).unwrap();
            let kind = marker_kind(&h, &b);
            (h, kind)
        };
        let log = [
            data(1, true),
            data(2, true),
            data(9, false),
            data(1, true),
            marker(1, true),
            data(3, true),
            marker(2, false),
            marker(4, true), // its data lies before the stretch
            data(1, true),
        ];
        use Fate::*;
        assert_eq!(
            fates(&log),
            [Committed, Aborted, Plain, Committed, Control, Open, Control, Control, Open]
        );
    }

    #[test]
    fn a_note_reads_back_and_leaves_kafkas_fields_in_place() {
        for note in [
            Note::Ending { seq: 9, parts: 3 },
            Note::Retracts { seq: i64::MAX },
        ] {
            let commit = matches!(note, Note::Ending { .. });
            let b = marker_batch(42, 7, commit, 3, 1_000, Some(note));
            let h = batch::BatchHeader::parse(&b).unwrap();
            assert_eq!(
                marker(&h, &b),
                Some(Marker {
                    commit,
                    note: Some(note)
                })
            );
            assert!(batch::split_stored(&b).is_ok());
            // Kafka's version 0 value is still at the front: version 0, then
            // the coordinator epoch.
            // Each value is followed by a zero header count.
            let plain = marker_batch(42, 7, commit, 3, 1_000, None);
            let (at, plain_at) = (b.len() - 1 - 21, plain.len() - 1 - 6);
            assert_eq!(&b[at..at + 6], &plain[plain_at..plain_at + 6]);
        }
    }

    #[test]
    fn data_batches_are_not_markers() {
        let b = batch::build::simple(2, 0, Some((1, 0, 0)));
        let h = batch::BatchHeader::parse(&b).unwrap();
        assert_eq!(marker_kind(&h, &b), None);
    }
}
