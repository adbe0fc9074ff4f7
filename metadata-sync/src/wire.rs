//! The anti-entropy messages as prost structs (no .proto file, like the
//! dc-link protocol), and their conversion to checked domain types.
//!
//! A summary says what a region has seen; the answer is a delta holding
//! every entry the summary does not cover. Decoding checks the whole
//! message before returning anything, so a malformed or oversized message
//! is refused whole and nothing of it reaches a merge.

use bytes::Bytes;
use prost::Message;

use crate::{Entry, Hlc, Key, Knowledge, Limits, MergeError, RegionId, VersionVector};

/// Bumped on incompatible changes; a message of another version is refused.
/// New entry kinds do not need a bump: unknown kinds are carried through.
pub const PROTOCOL_VERSION: u32 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct WireSummary {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint32, tag = "2")]
    pub protocol_version: u32,
    #[prost(message, repeated, tag = "3")]
    pub knowledge: Vec<WireKnowledge>,
    /// [`crate::Replica::digest`]: equal digests mean equal visible state.
    #[prost(uint64, tag = "4")]
    pub digest: u64,
    #[prost(uint64, tag = "5")]
    pub entries: u64,
}

/// One region's row of a knowledge set: `1..=base` plus `extra`.
#[derive(Clone, PartialEq, Message)]
pub struct WireKnowledge {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint64, tag = "2")]
    pub base: u64,
    #[prost(uint64, repeated, tag = "3")]
    pub extra: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct WireDelta {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint32, tag = "2")]
    pub protocol_version: u32,
    #[prost(message, repeated, tag = "3")]
    pub entries: Vec<WireEntry>,
    /// Set when `entries` is everything the summary lacked; `context` is
    /// then the sender's knowledge, which the receiver may adopt.
    #[prost(bool, tag = "4")]
    pub complete: bool,
    #[prost(message, repeated, tag = "5")]
    pub context: Vec<WireKnowledge>,
}

#[derive(Clone, PartialEq, Message)]
pub struct WireEntry {
    #[prost(uint32, tag = "1")]
    pub kind: u32,
    #[prost(bytes = "bytes", tag = "2")]
    pub key: Bytes,
    #[prost(bytes = "bytes", tag = "3")]
    pub value: Bytes,
    /// Tombstones carry no value bytes.
    #[prost(bool, tag = "4")]
    pub tombstone: bool,
    #[prost(message, repeated, tag = "5")]
    pub vv: Vec<WireCounter>,
    #[prost(uint64, tag = "6")]
    pub hlc_ms: u64,
    #[prost(uint32, tag = "7")]
    pub hlc_logical: u32,
    #[prost(string, tag = "8")]
    pub origin: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct WireCounter {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint64, tag = "2")]
    pub counter: u64,
}

/// What a region has seen, sent to ask a peer for what it lacks. Also the
/// region's acknowledgement of every entry it covers (tombstone GC).
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub region: RegionId,
    pub knowledge: Knowledge,
    pub digest: u64,
    pub entries: u64,
}

/// Entries a peer lacked, in key order.
#[derive(Debug, Clone, PartialEq)]
pub struct Delta {
    pub from: RegionId,
    pub entries: Vec<Entry>,
    /// The sender's knowledge when the delta is complete; `None` when it was
    /// cut at the size limits (the receiver asks again).
    pub context: Option<Knowledge>,
}

fn region(s: &str) -> Result<RegionId, MergeError> {
    RegionId::new(s).map_err(|e| MergeError::Malformed(e.to_string()))
}

fn check_size(len: usize, limits: &Limits) -> Result<(), MergeError> {
    if len > limits.max_message_bytes {
        return Err(MergeError::TooLarge {
            bytes: len,
            limit: limits.max_message_bytes,
        });
    }
    Ok(())
}

fn check_version(v: u32) -> Result<(), MergeError> {
    if v != PROTOCOL_VERSION {
        return Err(MergeError::Version {
            theirs: v,
            ours: PROTOCOL_VERSION,
        });
    }
    Ok(())
}

pub(crate) fn knowledge_to_wire(k: &Knowledge) -> Vec<WireKnowledge> {
    k.rows()
        .map(|(r, row)| WireKnowledge {
            region: r.to_string(),
            base: row.base,
            extra: row.extra.iter().copied().collect(),
        })
        .collect()
}

pub(crate) fn knowledge_from_wire(
    rows: Vec<WireKnowledge>,
    limits: &Limits,
) -> Result<Knowledge, MergeError> {
    if rows.len() > limits.max_regions {
        return Err(MergeError::Malformed(format!(
            "knowledge of {} regions",
            rows.len()
        )));
    }
    let extra: usize = rows.iter().map(|r| r.extra.len()).sum();
    if extra > limits.max_knowledge_extra {
        return Err(MergeError::Malformed(format!(
            "knowledge with {extra} out-of-order dots exceeds {}",
            limits.max_knowledge_extra
        )));
    }
    let mut k = Knowledge::new();
    for row in rows {
        let r = region(&row.region)?;
        k.insert_row(&r, row.base, row.extra);
    }
    Ok(k)
}

impl Entry {
    pub fn to_wire(&self) -> WireEntry {
        WireEntry {
            kind: self.key.kind(),
            key: self.key.encode(),
            value: self.value.clone().unwrap_or_default(),
            tombstone: self.value.is_none(),
            vv: self
                .vv
                .iter()
                .map(|(r, c)| WireCounter {
                    region: r.to_string(),
                    counter: c,
                })
                .collect(),
            hlc_ms: self.hlc.physical_ms,
            hlc_logical: self.hlc.logical,
            origin: self.origin.to_string(),
        }
    }

    /// Decodes and checks one entry; `index` names it in errors.
    pub fn from_wire(w: WireEntry, index: usize, limits: &Limits) -> Result<Entry, MergeError> {
        let bad = |reason: String| MergeError::BadEntry { index, reason };
        if w.tombstone && !w.value.is_empty() {
            return Err(bad("tombstone with a value".into()));
        }
        if w.vv.len() > limits.max_regions {
            return Err(bad(format!("version vector of {} regions", w.vv.len())));
        }
        let mut vv = VersionVector::new();
        for c in &w.vv {
            let r = RegionId::new(c.region.clone()).map_err(|e| bad(e.to_string()))?;
            if c.counter == 0 || vv.get(&r) != 0 {
                return Err(bad(format!(
                    "version vector component {}:{}",
                    c.region, c.counter
                )));
            }
            vv.advance(&r, c.counter);
        }
        let e = Entry {
            key: Key::decode(w.kind, w.key).map_err(bad)?,
            value: (!w.tombstone).then_some(w.value),
            vv,
            hlc: Hlc::new(w.hlc_ms, w.hlc_logical),
            origin: RegionId::new(w.origin).map_err(|e| bad(e.to_string()))?,
        };
        e.check(limits).map_err(bad)?;
        Ok(e)
    }
}

impl Summary {
    pub fn to_wire(&self) -> WireSummary {
        WireSummary {
            region: self.region.to_string(),
            protocol_version: PROTOCOL_VERSION,
            knowledge: knowledge_to_wire(&self.knowledge),
            digest: self.digest,
            entries: self.entries,
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Summary, MergeError> {
        check_size(bytes.len(), limits)?;
        let w = WireSummary::decode(bytes).map_err(|e| MergeError::Malformed(e.to_string()))?;
        check_version(w.protocol_version)?;
        Ok(Summary {
            region: region(&w.region)?,
            knowledge: knowledge_from_wire(w.knowledge, limits)?,
            digest: w.digest,
            entries: w.entries,
        })
    }
}

impl Delta {
    pub fn to_wire(&self) -> WireDelta {
        WireDelta {
            region: self.from.to_string(),
            protocol_version: PROTOCOL_VERSION,
            entries: self.entries.iter().map(Entry::to_wire).collect(),
            complete: self.context.is_some(),
            context: self
                .context
                .as_ref()
                .map(knowledge_to_wire)
                .unwrap_or_default(),
        }
    }

    pub fn encode(&self) -> Vec<u8> {
        self.to_wire().encode_to_vec()
    }

    pub fn decode(bytes: &[u8], limits: &Limits) -> Result<Delta, MergeError> {
        check_size(bytes.len(), limits)?;
        let w = WireDelta::decode(bytes).map_err(|e| MergeError::Malformed(e.to_string()))?;
        check_version(w.protocol_version)?;
        if w.entries.len() > limits.max_delta_entries {
            return Err(MergeError::TooManyEntries {
                entries: w.entries.len(),
                limit: limits.max_delta_entries,
            });
        }
        if !w.complete && !w.context.is_empty() {
            return Err(MergeError::Malformed(
                "context on an incomplete delta".into(),
            ));
        }
        let entries = w
            .entries
            .into_iter()
            .enumerate()
            .map(|(i, e)| Entry::from_wire(e, i, limits))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Delta {
            from: region(&w.region)?,
            entries,
            context: if w.complete {
                Some(knowledge_from_wire(w.context, limits)?)
            } else {
                None
            },
        })
    }
}
