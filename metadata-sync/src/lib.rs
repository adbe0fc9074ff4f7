//! The global `__meta`: one keyed map of metadata that every region holds a
//! copy of, merged across regions without coordination.
//!
//! This crate holds the merge rules only, with no I/O: version vectors, a
//! hybrid logical clock, entries with tombstones, the merge, and the
//! summaries and deltas of anti-entropy. The broker (persisting entries,
//! acting on effects) and the dc-link (carrying summaries and deltas between
//! regions) call it; see `docs/metadata-sync.md` for the rules in prose.
//!
//! Merging is commutative, associative and idempotent, so regions converge
//! whatever order, duplication or loss the messages go through, as long as
//! anti-entropy eventually runs between every pair. Two paths are not
//! last-writer-wins: a topic's home and fencing epoch ([`Key::TopicHome`]),
//! which only a higher epoch replaces, and topic names, which are derived
//! from the topic entries so a name clash renames a topic instead of
//! overwriting one ([`names`]).

pub mod actor;
mod entry;
mod hlc;
mod key;
mod knowledge;
pub mod lease;
pub mod names;
mod region;
mod replica;
mod value;
mod vv;
pub mod wire;

pub use entry::Entry;
pub use hlc::Hlc;
pub use key::{kind, Key, MergeRule, TopicId};
pub use knowledge::{Knowledge, Row};
pub use region::{InvalidRegion, RegionId};
pub use replica::{
    Changes, Conflict, ConflictKind, Counters, Effect, Limits, MergeError, MergeReport, Replica,
    RestoreError, Side, UpdateError, Written,
};
pub use value::{
    valid_topic_name, AclKey, HomeValue, OffsetValue, ScramValue, TopicDef, HOME_REGION_CONFIG,
};
pub use vv::{Causality, VersionVector};
pub use wire::{Delta, Summary};

#[cfg(test)]
mod replica_tests;
