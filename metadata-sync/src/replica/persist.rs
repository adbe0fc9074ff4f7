//! Saving a replica to a keyed store and loading it back.
//!
//! The broker keeps `__meta` in its controller's state machine, which must
//! survive restarts and travel in snapshots. Writing the whole replica on
//! every change would cost its full size per offset commit, so the replica
//! tracks what changed and hands it over as [`Changes`]: per-key records
//! (entries and tombstone acknowledgements), new conflict records, and a
//! small state record (clock, write counter, knowledge, counters). Applying
//! every `Changes` in order to a map and restoring from that map gives back
//! a replica that behaves exactly like the original.
//!
//! Tombstone acknowledgements are saved too: every broker of a region must
//! collect the same tombstones at the same log position, including a broker
//! that restarted in between.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;
use prost::Message;

use super::{Conflict, ConflictKind, Counters, Replica, Side};
use crate::names::NameView;
use crate::wire::{knowledge_from_wire, knowledge_to_wire, WireCounter, WireEntry, WireKnowledge};
use crate::{Entry, Hlc, Key, Limits, RegionId, TopicId};

/// What changed since the last call, to be written to the store in one
/// atomic batch.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Changes {
    /// Per key: its record (entry and acknowledgements), or `None` when the
    /// key is gone (a collected tombstone).
    pub keys: Vec<(Key, Option<Bytes>)>,
    /// Conflict records to add, by sequence number.
    pub conflicts: Vec<(u64, Bytes)>,
    /// Conflict records below this sequence number were evicted.
    pub conflicts_from: u64,
    /// The state record; it replaces the previous one.
    pub state: Bytes,
}

#[derive(Debug, thiserror::Error)]
#[error("stored __meta record {what} is unreadable: {detail}")]
pub struct RestoreError {
    pub what: String,
    pub detail: String,
}

#[derive(Clone, PartialEq, Message)]
struct KeyRecord {
    #[prost(message, optional, tag = "1")]
    entry: Option<WireEntry>,
    /// Regions that acknowledged the tombstone, with their own counter then.
    #[prost(message, repeated, tag = "2")]
    acks: Vec<WireCounter>,
}

#[derive(Clone, PartialEq, Message)]
struct StateRecord {
    #[prost(uint64, tag = "1")]
    clock_ms: u64,
    #[prost(uint32, tag = "2")]
    clock_logical: u32,
    #[prost(uint64, tag = "3")]
    counter: u64,
    #[prost(message, repeated, tag = "4")]
    knowledge: Vec<WireKnowledge>,
    #[prost(uint64, tag = "5")]
    gc_floor_ms: u64,
    #[prost(uint32, tag = "6")]
    gc_floor_logical: u32,
    #[prost(uint64, tag = "7")]
    next_conflict: u64,
    /// [`Counters`] in field order.
    #[prost(uint64, repeated, tag = "8")]
    counters: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
struct ConflictRecord {
    #[prost(uint64, tag = "1")]
    seq: u64,
    /// 1 concurrent, 2 topic name, 3 fence.
    #[prost(uint32, tag = "2")]
    kind: u32,
    #[prost(string, tag = "3")]
    name: String,
    #[prost(bytes = "bytes", tag = "4")]
    winner: Bytes,
    #[prost(string, tag = "5")]
    renamed_to: String,
    /// Each side as an entry of the conflict's key.
    #[prost(message, optional, tag = "6")]
    kept: Option<WireEntry>,
    #[prost(message, optional, tag = "7")]
    lost: Option<WireEntry>,
}

fn counters_to_vec(c: &Counters) -> Vec<u64> {
    vec![
        c.concurrent_conflicts,
        c.topic_name_conflicts,
        c.fence_conflicts,
        c.stale_epochs,
        c.tombstones_collected,
        c.conflicts_evicted,
        c.knowledge_trimmed,
        c.rejected_messages,
    ]
}

fn counters_from_vec(v: &[u64]) -> Counters {
    let at = |i: usize| v.get(i).copied().unwrap_or(0);
    Counters {
        concurrent_conflicts: at(0),
        topic_name_conflicts: at(1),
        fence_conflicts: at(2),
        stale_epochs: at(3),
        tombstones_collected: at(4),
        conflicts_evicted: at(5),
        knowledge_trimmed: at(6),
        rejected_messages: at(7),
    }
}

fn side_to_wire(key: &Key, s: &Side) -> WireEntry {
    Entry {
        key: key.clone(),
        value: s.value.clone(),
        vv: s.vv.clone(),
        hlc: s.hlc,
        origin: s.origin.clone(),
    }
    .to_wire()
}

/// Stored records were written by this code, so the message limits do not
/// apply to them: a record accepted once is never refused on reload.
fn unbounded() -> Limits {
    Limits {
        max_message_bytes: usize::MAX,
        max_delta_entries: usize::MAX,
        max_key_bytes: usize::MAX,
        max_value_bytes: usize::MAX,
        max_regions: usize::MAX,
        max_knowledge_extra: usize::MAX,
        ..Limits::default()
    }
}

fn entry_from_wire(w: WireEntry, what: &str) -> Result<Entry, RestoreError> {
    Entry::from_wire(w, 0, &unbounded()).map_err(|e| RestoreError {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn parse_region(s: String, what: &str) -> Result<RegionId, RestoreError> {
    RegionId::new(s).map_err(|e| RestoreError {
        what: what.to_string(),
        detail: e.to_string(),
    })
}

fn encode_conflict(c: &Conflict) -> Bytes {
    let (kind, name, winner, renamed_to) = match &c.kind {
        ConflictKind::Concurrent => (1, String::new(), Bytes::new(), String::new()),
        ConflictKind::TopicName {
            name,
            winner,
            renamed_to,
        } => (
            2,
            name.clone(),
            Bytes::copy_from_slice(&winner.0),
            renamed_to.clone(),
        ),
        ConflictKind::Fence => (3, String::new(), Bytes::new(), String::new()),
    };
    ConflictRecord {
        seq: c.seq,
        kind,
        name,
        winner,
        renamed_to,
        kept: Some(side_to_wire(&c.key, &c.kept)),
        lost: Some(side_to_wire(&c.key, &c.lost)),
    }
    .encode_to_vec()
    .into()
}

fn decode_conflict(bytes: &[u8]) -> Result<Conflict, RestoreError> {
    let what = "conflict";
    let bad = |detail: String| RestoreError {
        what: what.to_string(),
        detail,
    };
    let r = ConflictRecord::decode(bytes).map_err(|e| bad(e.to_string()))?;
    let kept = entry_from_wire(r.kept.ok_or_else(|| bad("no kept side".into()))?, what)?;
    let lost = entry_from_wire(r.lost.ok_or_else(|| bad("no lost side".into()))?, what)?;
    let kind = match r.kind {
        1 => ConflictKind::Concurrent,
        2 => ConflictKind::TopicName {
            name: r.name,
            winner: TopicId::from_slice(&r.winner)
                .ok_or_else(|| bad("winner id is not 16 bytes".into()))?,
            renamed_to: r.renamed_to,
        },
        3 => ConflictKind::Fence,
        k => return Err(bad(format!("conflict kind {k}"))),
    };
    Ok(Conflict {
        seq: r.seq,
        key: kept.key.clone(),
        kind,
        kept: Side::of(&kept),
        lost: Side::of(&lost),
    })
}

impl Replica {
    /// Everything that changed since the last call. The caller writes it
    /// atomically with whatever caused the change.
    pub fn take_changes(&mut self) -> Changes {
        let dirty = std::mem::take(&mut self.dirty);
        let keys = dirty
            .into_iter()
            .map(|key| {
                let record = self.entries.get(&key).map(|e| {
                    let acks = self
                        .gc_acks
                        .get(&key)
                        .map(|a| {
                            a.iter()
                                .map(|(r, c)| WireCounter {
                                    region: r.to_string(),
                                    counter: *c,
                                })
                                .collect()
                        })
                        .unwrap_or_default();
                    Bytes::from(
                        KeyRecord {
                            entry: Some(e.to_wire()),
                            acks,
                        }
                        .encode_to_vec(),
                    )
                });
                (key, record)
            })
            .collect();
        let conflicts = self
            .conflicts
            .iter()
            .filter(|c| c.seq > self.persisted_conflicts)
            .map(|c| (c.seq, encode_conflict(c)))
            .collect();
        self.persisted_conflicts = self.next_conflict;
        let conflicts_from = self
            .conflicts
            .front()
            .map_or(self.next_conflict + 1, |c| c.seq);
        Changes {
            keys,
            conflicts,
            conflicts_from,
            state: self.state_record(),
        }
    }

    fn state_record(&self) -> Bytes {
        StateRecord {
            clock_ms: self.clock.physical_ms,
            clock_logical: self.clock.logical,
            counter: self.counter,
            knowledge: knowledge_to_wire(&self.knowledge),
            gc_floor_ms: self.gc_floor.physical_ms,
            gc_floor_logical: self.gc_floor.logical,
            next_conflict: self.next_conflict,
            counters: counters_to_vec(&self.counters),
        }
        .encode_to_vec()
        .into()
    }

    /// Rebuilds a replica from what [`Replica::take_changes`] handed out:
    /// the latest state record, every key record, and the conflict records
    /// (any order). `state` of `None`: nothing was ever saved.
    pub fn restore<'a>(
        region: RegionId,
        regions: impl IntoIterator<Item = RegionId>,
        limits: Limits,
        state: Option<&[u8]>,
        keys: impl IntoIterator<Item = &'a [u8]>,
        conflicts: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Replica, RestoreError> {
        let mut r = Replica::new(region, regions, limits);
        let Some(state) = state else {
            return Ok(r);
        };
        let s = StateRecord::decode(state).map_err(|e| RestoreError {
            what: "state".into(),
            detail: e.to_string(),
        })?;
        r.clock = Hlc::new(s.clock_ms, s.clock_logical);
        r.counter = s.counter;
        r.knowledge = knowledge_from_wire(s.knowledge, &unbounded()).map_err(|e| RestoreError {
            what: "knowledge".into(),
            detail: e.to_string(),
        })?;
        r.gc_floor = Hlc::new(s.gc_floor_ms, s.gc_floor_logical);
        r.next_conflict = s.next_conflict;
        r.persisted_conflicts = s.next_conflict;
        r.counters = counters_from_vec(&s.counters);
        for bytes in keys {
            let rec = KeyRecord::decode(bytes).map_err(|e| RestoreError {
                what: "entry".into(),
                detail: e.to_string(),
            })?;
            let Some(w) = rec.entry else { continue };
            let e = entry_from_wire(w, "entry")?;
            if !rec.acks.is_empty() {
                let mut acks = BTreeMap::new();
                for c in rec.acks {
                    acks.insert(parse_region(c.region, "acknowledgement")?, c.counter);
                }
                r.gc_acks.insert(e.key.clone(), acks);
            }
            if e.is_tombstone() {
                r.tombstones += 1;
            }
            r.entries.insert(e.key.clone(), e);
        }
        let mut log: Vec<Conflict> = conflicts
            .into_iter()
            .map(decode_conflict)
            .collect::<Result<_, _>>()?;
        log.sort_by_key(|c| c.seq);
        r.conflicts = VecDeque::new();
        for c in log {
            r.conflict_bytes += super::conflict_weight(&c);
            r.conflicts.push_back(c);
        }
        r.names = NameView::default();
        r.recompute_names();
        Ok(r)
    }

    /// Equality of everything that decides future behaviour (for tests of
    /// save and restore).
    #[cfg(test)]
    pub(crate) fn same_state(&self, o: &Replica) -> bool {
        self.region == o.region
            && self.clock == o.clock
            && self.counter == o.counter
            && self.entries == o.entries
            && self.knowledge == o.knowledge
            && self.gc_acks == o.gc_acks
            && self.tombstones == o.tombstones
            && self.gc_floor == o.gc_floor
            && self.conflicts == o.conflicts
            && self.next_conflict == o.next_conflict
            && self.counters == o.counters
            && self.names.iter().collect::<Vec<_>>() == o.names.iter().collect::<Vec<_>>()
    }
}
