//! Log compaction (`cleanup.policy=compact`): when a partition is due for a
//! cleaning pass, and what the pass does to each stored batch.
//!
//! Pure: the partition leader reads its stored batches, runs them through
//! here, and proposes the outcome as one `Command::Compact` entry. Every
//! replica then writes the leader's bytes, so replicas stay byte-identical
//! without having to agree on the output of a compressor (which differs
//! between library versions). See `docs/compaction.md`.
//!
//! What a pass keeps, as Kafka's cleaner does:
//! - offsets never change: a batch keeps its base offset and last offset
//!   delta (and so its producer id, epoch and base sequence still describe
//!   the records left); a batch left without records is removed, leaving a
//!   hole that fetches step over;
//! - the record with a key's greatest offset below the pass's end, and
//!   every record above that end;
//! - a tombstone (null value) until `delete.retention.ms` after the first
//!   pass that reached it, so consumers that read within that time see the
//!   delete;
//! - control batches, whole.
//!
//! Records without a key are dropped (produce refuses them on compacted
//! topics; only records written before the topic became compacted have
//! none).

use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};
use serde::{Deserialize, Serialize};

use crate::batch::{read_varint, BatchHeader, HEADER_LEN};
use crate::storage::IndexEntry;

/// The topic configs a pass acts on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Policy {
    /// `min.cleanable.dirty.ratio`.
    pub min_cleanable_dirty_ratio: f64,
    /// `min.compaction.lag.ms`: records younger than this stay as written.
    pub min_compaction_lag_ms: i64,
    /// `max.compaction.lag.ms`: a dirty record older than this makes the
    /// log due whatever its dirty ratio.
    pub max_compaction_lag_ms: i64,
    /// `delete.retention.ms`.
    pub delete_retention_ms: i64,
}

// Configs hold Policy; the ratio is validated to lie in [0, 1], never NaN.
impl Eq for Policy {}

/// A tombstone kept only because the mirrors do not hold it yet is looked
/// at again after this long.
pub const FLOOR_RECHECK_MS: i64 = 30_000;

/// The most passes [`Cleaned::passes`] remembers; older ones merge.
const MAX_PASSES: usize = 32;

/// What earlier passes did, kept in the partition record (so every replica
/// and a restarted leader agree on what is dirty and when a tombstone may
/// go).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cleaned {
    /// Everything below was cleaned at least once; the dirty part starts here.
    pub to: i64,
    /// (end, time) of passes, ends increasing: a record was first cleaned
    /// at the time of the first pass whose end is above its offset.
    pub passes: Vec<(i64, i64)>,
    /// When the earliest tombstone the last pass kept may be removed: the
    /// log is due then even if nothing is dirty.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tombstone_horizon: Option<i64>,
}

impl Cleaned {
    /// When a pass first reached `offset` (`None`: none has yet).
    pub fn first_cleaned(&self, offset: i64) -> Option<i64> {
        let i = self.passes.partition_point(|(end, _)| *end <= offset);
        self.passes.get(i).map(|(_, t)| *t)
    }

    /// The record once the log is cut back to end at `offset` (a failback):
    /// what is written there from now on has never been cleaned.
    pub fn cut_back(&self, offset: i64) -> Cleaned {
        let mut passes: Vec<(i64, i64)> = Vec::new();
        for (end, t) in &self.passes {
            passes.push(((*end).min(offset), *t));
            if *end >= offset {
                break;
            }
        }
        passes.dedup_by_key(|p| p.0);
        Cleaned {
            to: self.to.min(offset),
            passes,
            tombstone_horizon: self.tombstone_horizon,
        }
    }

    /// The record after a pass that ended at `end` at `now_ms`. Passes
    /// whose range lies below the log start are forgotten, and past
    /// [`MAX_PASSES`] the two oldest merge into the later one's time, which
    /// only keeps tombstones longer.
    pub fn after_pass(
        &self,
        end: i64,
        now_ms: i64,
        tombstone_horizon: Option<i64>,
        log_start: i64,
    ) -> Cleaned {
        let mut passes: Vec<(i64, i64)> = self
            .passes
            .iter()
            .copied()
            .filter(|(e, _)| *e > log_start)
            .collect();
        if passes.last().is_none_or(|(e, _)| *e < end) {
            passes.push((end, now_ms));
        }
        while passes.len() > MAX_PASSES {
            let second = passes.remove(1);
            passes[0] = second;
        }
        Cleaned {
            to: self.to.max(end),
            passes,
            tombstone_horizon,
        }
    }
}

/// Where a pass due now would end (exclusive, a batch boundary), or `None`.
///
/// Only batches below the high watermark are cleaned, never the log's last
/// batch (the log end is read from it after a restart), and not from the
/// first batch younger than `min.compaction.lag.ms` on.
pub fn due(
    entries: &[IndexEntry],
    high_watermark: i64,
    cleaned: &Cleaned,
    policy: &Policy,
    now_ms: i64,
) -> Option<i64> {
    let young = now_ms.saturating_sub(policy.min_compaction_lag_ms.max(0));
    let cleanable = entries[..entries.len().saturating_sub(1)]
        .iter()
        .take_while(|e| e.last_offset < high_watermark && e.max_timestamp <= young);
    let (mut end, mut total, mut dirty) = (None, 0u64, 0u64);
    let mut oldest_dirty: Option<i64> = None;
    for e in cleanable {
        end = Some(e.last_offset + 1);
        total += e.size as u64;
        if e.base_offset >= cleaned.to {
            dirty += e.size as u64;
            oldest_dirty.get_or_insert(e.max_timestamp);
        }
    }
    let end = end?;
    let tombstones_due = cleaned.tombstone_horizon.is_some_and(|h| h <= now_ms);
    if dirty == 0 && !tombstones_due {
        return None;
    }
    let ratio = dirty as f64 / total.max(1) as f64;
    let overdue = oldest_dirty
        .is_some_and(|ts| ts <= now_ms.saturating_sub(policy.max_compaction_lag_ms.max(0)));
    (ratio >= policy.min_cleanable_dirty_ratio || overdue || tombstones_due).then_some(end)
}

#[derive(Debug, thiserror::Error)]
pub enum CompactError {
    #[error("stored batch at offset {base} does not parse: {detail}")]
    Malformed { base: i64, detail: String },
}

fn malformed(base: i64, detail: impl Into<String>) -> CompactError {
    CompactError::Malformed {
        base,
        detail: detail.into(),
    }
}

/// One record's place in a decoded records section.
struct RawRecord<'a> {
    offset_delta: i64,
    key: Option<&'a [u8]>,
    tombstone: bool,
    /// The record's bytes, length prefix included.
    raw: std::ops::Range<usize>,
}

/// The batch's records section, decompressed (within
/// [`crate::decompress::MAX_DECOMPRESSED`]).
fn records_section(batch: &[u8], h: &BatchHeader) -> Result<Bytes, CompactError> {
    crate::decompress::records_section(batch, crate::decompress::MAX_DECOMPRESSED)
        .map_err(|e| malformed(h.base_offset, e.to_string()))
}

fn parse_records<'a>(
    section: &'a [u8],
    h: &BatchHeader,
) -> Result<Vec<RawRecord<'a>>, CompactError> {
    let bad = || malformed(h.base_offset, "malformed record");
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    let mut at = 0usize;
    for _ in 0..h.records_count.max(0) {
        let (len, used) = read_varint(&section[at..]).ok_or_else(bad)?;
        let body_start = at + used;
        let end = body_start
            .checked_add(usize::try_from(len).map_err(|_| bad())?)
            .filter(|e| *e <= section.len())
            .ok_or_else(bad)?;
        let body = &section[body_start..end];
        let mut p = 1; // attributes
        let (_, n) = read_varint(body.get(p..).ok_or_else(bad)?).ok_or_else(bad)?; // timestamp delta
        p += n;
        let (offset_delta, n) = read_varint(body.get(p..).ok_or_else(bad)?).ok_or_else(bad)?;
        p += n;
        let (key_len, n) = read_varint(body.get(p..).ok_or_else(bad)?).ok_or_else(bad)?;
        p += n;
        let key = if key_len < 0 {
            None
        } else {
            let k = body.get(p..p + key_len as usize).ok_or_else(bad)?;
            p += key_len as usize;
            Some(k)
        };
        let (value_len, _) = read_varint(body.get(p..).ok_or_else(bad)?).ok_or_else(bad)?;
        out.push(RawRecord {
            offset_delta,
            key,
            tombstone: value_len < 0,
            raw: at..end,
        });
        at = end;
    }
    Ok(out)
}

/// Whether a produced batch holds a record without a key (refused on a
/// compacted topic, as Kafka does).
pub fn has_keyless_record(batch: &[u8]) -> Result<bool, CompactError> {
    let h = BatchHeader::parse(batch).map_err(|e| malformed(-1, e.to_string()))?;
    let section = records_section(batch, &h)?;
    Ok(parse_records(&section, &h)?.iter().any(|r| r.key.is_none()))
}

/// Each key's greatest offset among the batches added.
pub struct KeyMap {
    latest: HashMap<Bytes, i64>,
    bytes: usize,
    budget: usize,
    /// The end of the last batch added.
    pub end: i64,
}

/// Memory an entry of the map costs beyond its key (hash table slot,
/// `Bytes` header, offset).
const ENTRY_OVERHEAD: usize = 64;

impl KeyMap {
    pub fn new(budget: usize) -> KeyMap {
        KeyMap {
            latest: HashMap::new(),
            bytes: 0,
            budget,
            end: i64::MIN,
        }
    }

    /// Whether the map is as large as a pass may make it: batches after
    /// this one are left for a later pass.
    pub fn full(&self) -> bool {
        self.bytes >= self.budget
    }

    pub fn add_batch(&mut self, batch: &[u8]) -> Result<(), CompactError> {
        let h = BatchHeader::parse(batch).map_err(|e| malformed(-1, e.to_string()))?;
        self.end = h.last_offset() + 1;
        if h.is_control() {
            return Ok(());
        }
        let section = records_section(batch, &h)?;
        for r in parse_records(&section, &h)? {
            let Some(k) = r.key else { continue };
            let offset = h.base_offset + r.offset_delta;
            match self.latest.get_mut(k) {
                Some(o) => *o = (*o).max(offset),
                None => {
                    self.bytes += k.len() + ENTRY_OVERHEAD;
                    self.latest.insert(Bytes::copy_from_slice(k), offset);
                }
            }
        }
        Ok(())
    }

    /// A batch the map must not learn from (an aborted transaction's):
    /// only the end moves past it.
    pub fn skip_batch(&mut self, batch: &[u8]) -> Result<(), CompactError> {
        let h = BatchHeader::parse(batch).map_err(|e| malformed(-1, e.to_string()))?;
        self.end = h.last_offset() + 1;
        Ok(())
    }

    fn superseded(&self, key: &[u8], offset: i64) -> bool {
        self.latest.get(key).is_some_and(|l| *l > offset)
    }
}

/// A stored batch replaced by a pass.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rewrite {
    pub base_offset: i64,
    /// The CRC of the batch the leader cleaned: a replica whose batch
    /// differs (a trim or another pass came first) applies nothing.
    pub crc: u32,
    /// The cleaned batch; empty when no record is left.
    pub bytes: Bytes,
}

/// How much one pass may take on.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Memory for the key map; a log with more distinct keys is cleaned
    /// over several passes, each up to where its map filled.
    pub key_map_bytes: usize,
    /// Rewritten bytes in one pass (one Raft entry).
    pub rewrite_bytes: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            key_map_bytes: 64 << 20,
            rewrite_bytes: 8 << 20,
        }
    }
}

/// A cleaning pass as the leader proposes it (`Command::Compact`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub rewrites: Vec<Rewrite>,
    /// Everything below is clean once this applies.
    pub end: i64,
    /// The epoch history entry in effect at `end - 1` on the leader.
    pub through: Option<(i32, i64)>,
    /// The leader's clock: when tombstones in this pass's range were first
    /// cleaned, if they were not before.
    pub now_ms: i64,
    pub tombstone_horizon: Option<i64>,
}

/// What a pass read and removed, for the leader's metrics (not replicated).
#[derive(Debug, Clone, Copy, Default)]
pub struct PassStats {
    pub bytes_read: u64,
    pub records_removed: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Batch(#[from] CompactError),
    #[error(transparent)]
    Storage(#[from] crate::storage::StoreError),
}

/// The inputs every batch of one pass is cleaned with.
pub struct Pass<'a> {
    pub map: &'a KeyMap,
    pub cleaned: &'a Cleaned,
    pub policy: &'a Policy,
    pub now_ms: i64,
    /// Tombstones at or above this offset stay (the mirror regions do not
    /// hold them yet); `i64::MAX` when no mirror is known to lag.
    pub tombstone_floor: i64,
}

/// The outcome for one batch.
#[derive(Debug)]
pub struct Cleaning {
    /// The batch's end (its last offset + 1).
    pub next_offset: i64,
    pub rewrite: Option<Rewrite>,
    pub records_removed: u64,
    /// When the earliest tombstone kept here may be removed.
    pub tombstone_horizon: Option<i64>,
}

impl Pass<'_> {
    pub fn clean_batch(&self, batch: &[u8]) -> Result<Cleaning, CompactError> {
        let h = BatchHeader::parse(batch).map_err(|e| malformed(-1, e.to_string()))?;
        let kept_whole = Cleaning {
            next_offset: h.last_offset() + 1,
            rewrite: None,
            records_removed: 0,
            tombstone_horizon: None,
        };
        if h.is_control() {
            return Ok(kept_whole);
        }
        let section = records_section(batch, &h)?;
        let records = parse_records(&section, &h)?;
        let mut horizon: Option<i64> = None;
        let mut kept = Vec::with_capacity(records.len());
        for r in &records {
            let offset = h.base_offset + r.offset_delta;
            let Some(key) = r.key else { continue };
            if self.map.superseded(key, offset) {
                continue;
            }
            if r.tombstone {
                let retention = self.policy.delete_retention_ms.max(0);
                let until = match self.cleaned.first_cleaned(offset) {
                    None => self.now_ms.saturating_add(retention),
                    Some(t) if offset >= self.tombstone_floor => t
                        .saturating_add(retention)
                        .max(self.now_ms + FLOOR_RECHECK_MS),
                    Some(t) => t.saturating_add(retention),
                };
                if until <= self.now_ms {
                    continue;
                }
                horizon = Some(horizon.map_or(until, |h| h.min(until)));
            }
            kept.push(r.raw.clone());
        }
        let removed = (records.len() - kept.len()) as u64;
        if removed == 0 {
            return Ok(Cleaning {
                tombstone_horizon: horizon,
                ..kept_whole
            });
        }
        let bytes = if kept.is_empty() {
            Bytes::new()
        } else {
            rebuild(batch, &h, &section, &kept)?
        };
        Ok(Cleaning {
            next_offset: kept_whole.next_offset,
            rewrite: Some(Rewrite {
                base_offset: h.base_offset,
                crc: h.crc,
                bytes,
            }),
            records_removed: removed,
            tombstone_horizon: horizon,
        })
    }
}

/// `batch` with only the `kept` records of its (decompressed) `section`,
/// in the batch's codec. The header is the original one except for the
/// record count, the length and the CRC: offsets and sequence numbers stay
/// described by the same base and deltas, the records' timestamps by the
/// same base timestamp.
fn rebuild(
    batch: &[u8],
    h: &BatchHeader,
    section: &[u8],
    kept: &[std::ops::Range<usize>],
) -> Result<Bytes, CompactError> {
    let mut raw = BytesMut::with_capacity(kept.iter().map(|r| r.len()).sum());
    for r in kept {
        raw.put_slice(&section[r.clone()]);
    }
    let mut out = BytesMut::with_capacity(HEADER_LEN + raw.len());
    out.put_slice(&batch[..HEADER_LEN]);
    let codec = match h.compression() {
        0 => None,
        1 => Some(crate::recompress::TopicCompression::Gzip(-1)),
        2 => Some(crate::recompress::TopicCompression::Snappy),
        3 => Some(crate::recompress::TopicCompression::Lz4(9)),
        4 => Some(crate::recompress::TopicCompression::Zstd(3)),
        c => return Err(malformed(h.base_offset, format!("unknown codec {c}"))),
    };
    match codec {
        None => out.put_slice(&raw),
        Some(target) => crate::recompress::compress_section(&mut raw, &mut out, target)
            .map_err(|e| malformed(h.base_offset, e.to_string()))?,
    }
    let len = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[57..61].copy_from_slice(&(kept.len() as i32).to_be_bytes());
    crate::batch::reseal(&mut out);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests;

/// The removal of a batch of an aborted transaction (`None` for any other
/// batch): no read_committed consumer ever sees its records, so, as
/// Kafka's cleaner does, they neither count as a key's latest value (which
/// would hide the committed one) nor stay. The abort marker stays, so the
/// aborted-transaction index still names the transaction.
pub fn remove_aborted(
    batch: &[u8],
    aborted: &[crate::txn_index::Aborted],
) -> Option<(Rewrite, i32)> {
    let h = BatchHeader::parse(batch).ok()?;
    if !h.is_transactional() || h.is_control() {
        return None;
    }
    aborted
        .iter()
        .any(|a| {
            a.producer_id == h.producer_id && a.first <= h.base_offset && h.base_offset < a.last
        })
        .then(|| {
            (
                Rewrite {
                    base_offset: h.base_offset,
                    crc: h.crc,
                    bytes: Bytes::new(),
                },
                h.records_count,
            )
        })
}
