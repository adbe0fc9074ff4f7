//! One region's copy of `__meta` and the merge rules, as a pure state
//! machine in the style of the broker's `groups::state`: no clocks, no
//! sockets, no storage, no randomness. Every call that needs the time takes
//! `wall_ms`; every decision the broker must act on comes back as an
//! [`Effect`]; every entry the replica itself writes comes back too, so the
//! caller can persist and forward it.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;
use prost::Message;

use crate::names::NameView;
use crate::value::{HomeValue, OffsetValue, TopicDef};
use crate::wire::{Delta, Summary};
use crate::{Causality, Entry, Hlc, Key, Knowledge, MergeRule, RegionId, TopicId, VersionVector};

/// Bounds on what a peer may send and on what a replica holds besides its
/// live entries. Every region should use the same values.
#[derive(Debug, Clone)]
pub struct Limits {
    /// A summary or delta larger than this is refused before decoding.
    pub max_message_bytes: usize,
    /// Entries per delta (and per `apply_remote` call).
    pub max_delta_entries: usize,
    pub max_key_bytes: usize,
    pub max_value_bytes: usize,
    /// Regions in a version vector or a knowledge set.
    pub max_regions: usize,
    /// Tombstones held while waiting for every region's acknowledgement.
    /// At the limit, local deletes fail and a peer message that would add
    /// tombstones is refused whole until collection frees room.
    pub max_tombstones: usize,
    /// Conflict records kept (the counters keep counting past it).
    pub max_conflict_log: usize,
    /// Bytes of conflict records kept.
    pub max_conflict_log_bytes: usize,
    /// Out-of-order dots held in the knowledge set; beyond it the highest
    /// are forgotten (peers then re-send them; merging them is a no-op).
    pub max_knowledge_extra: usize,
    /// A remote timestamp further ahead of the local wall clock than this
    /// is merged but not observed, so one region's bad clock cannot drag
    /// every other region's clock forward.
    pub max_clock_skew_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_message_bytes: 16 << 20,
            max_delta_entries: 20_000,
            max_key_bytes: 4 << 10,
            max_value_bytes: 256 << 10,
            max_regions: 64,
            max_tombstones: 100_000,
            max_conflict_log: 1_024,
            max_conflict_log_bytes: 4 << 20,
            max_knowledge_extra: 65_536,
            max_clock_skew_ms: 60_000,
        }
    }
}

/// A peer message refused whole: nothing of it was merged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MergeError {
    #[error("message of {bytes} bytes exceeds the {limit}-byte limit")]
    TooLarge { bytes: usize, limit: usize },
    #[error("message does not decode: {0}")]
    Malformed(String),
    #[error("protocol version {theirs}, this region speaks {ours}")]
    Version { theirs: u32, ours: u32 },
    #[error("{entries} entries exceed the limit of {limit}")]
    TooManyEntries { entries: usize, limit: usize },
    #[error("entry {index}: {reason}")]
    BadEntry { index: usize, reason: String },
    #[error("region {0} is not in the topology")]
    UnknownRegion(String),
    #[error("message claims to come from this region")]
    FromSelf,
    /// The entry contradicts what this region holds in a way no correct
    /// peer can produce (e.g. a dominating version with an older timestamp).
    #[error("entry {index} ({key}) breaks the version order: {reason}")]
    OutOfOrder {
        index: usize,
        key: String,
        reason: String,
    },
    #[error("merging would hold {would} tombstones, over the limit of {limit}")]
    TombstoneLimit { would: usize, limit: usize },
}

/// A local write refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum UpdateError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0} does not exist")]
    NotFound(Key),
    #[error("topic name {name} is taken by topic {id}")]
    NameTaken { name: String, id: TopicId },
    #[error("home epoch {proposed} is not above the current {current}")]
    StaleEpoch { current: u64, proposed: u64 },
    #[error(
        "{0} tombstones are waiting for collection; deletes are refused until some are collected"
    )]
    TombstoneLimit(usize),
    #[error("{key} is not written this way: {why}")]
    NotWritable { key: Key, why: &'static str },
}

/// One side of a resolved conflict.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Side {
    pub origin: RegionId,
    pub hlc: Hlc,
    pub vv: VersionVector,
    /// `None`: the side was a tombstone.
    pub value: Option<Bytes>,
}

impl Side {
    fn of(e: &Entry) -> Side {
        Side {
            origin: e.origin.clone(),
            hlc: e.hlc,
            vv: e.vv.clone(),
            value: e.value.clone(),
        }
    }

    fn weight(&self) -> usize {
        64 + self.value.as_ref().map_or(0, Bytes::len) + 24 * self.vv.len()
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConflictKind {
    /// Two versions neither of which had seen the other; `kept` has the
    /// higher (HLC, region) and its value won, `lost`'s value is gone.
    Concurrent,
    /// Two topics asked for one name; `kept` is the topic that has it, the
    /// conflict's key is the other one, now shown as `renamed_to`.
    TopicName {
        name: String,
        winner: TopicId,
        renamed_to: String,
    },
    /// Two different homes with the same epoch: the fencing decision was not
    /// unique. Nothing was replaced; this needs an operator.
    Fence,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Conflict {
    /// This replica's sequence number of the record (never reused).
    pub seq: u64,
    pub key: Key,
    pub kind: ConflictKind,
    pub kept: Side,
    pub lost: Side,
}

/// What the broker must do after a merge or a local write.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A topic's visible name changed because of a name conflict: rename the
    /// local topic with this id in place (catalog only, no data moves).
    RenameTopic {
        id: TopicId,
        from: String,
        to: String,
    },
    /// A topic's home or epoch changed; `None`: the topic was deleted.
    HomeChanged {
        id: TopicId,
        home: Option<HomeValue>,
    },
    /// A committed offset arrived from another region; `None`: deleted.
    /// The broker checks it against its own copy of the partition (log end,
    /// epoch history) before a consumer may use it.
    OffsetCommitted {
        group: String,
        topic: String,
        partition: i32,
        value: Option<OffsetValue>,
    },
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MergeReport {
    /// Entries that changed this replica's state.
    pub merged: usize,
    /// Entries already reflected here (duplicates, late older versions).
    pub already_known: usize,
    /// Home entries refused because this replica holds a higher epoch.
    pub stale_epochs: usize,
    /// Keys whose value (or tombstone) changed, in key order.
    pub changed: Vec<Key>,
    pub conflicts: Vec<Conflict>,
    pub effects: Vec<Effect>,
    /// Entries this replica wrote as a consequence (renaming its own topic
    /// after it lost a name): persist and forward them like local writes.
    pub local_writes: Vec<Entry>,
    /// A timestamp too far ahead of the wall clock was not observed.
    pub clock_skew_ignored: bool,
}

/// What a local write produced.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Written {
    pub entries: Vec<Entry>,
    pub effects: Vec<Effect>,
}

/// Totals since the replica was created; they never go down.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    pub concurrent_conflicts: u64,
    pub topic_name_conflicts: u64,
    pub fence_conflicts: u64,
    pub stale_epochs: u64,
    pub tombstones_collected: u64,
    pub conflicts_evicted: u64,
    pub knowledge_trimmed: u64,
    pub rejected_messages: u64,
}

enum Merged {
    Unchanged,
    Take(Entry),
    Resolved {
        result: Entry,
        kept: Side,
        lost: Side,
    },
    StaleEpoch(Entry),
    FenceClash {
        kept: Side,
        lost: Side,
    },
}

/// One region's store of global entries.
#[derive(Debug, Clone)]
pub struct Replica {
    region: RegionId,
    regions: BTreeSet<RegionId>,
    limits: Limits,
    clock: Hlc,
    /// This region's write counter: every local write gets the next value,
    /// whatever its key. Must be persisted with the entries: reusing a
    /// counter would give two different writes one name.
    counter: u64,
    entries: BTreeMap<Key, Entry>,
    knowledge: Knowledge,
    /// Per tombstone: each region that has acknowledged it, with that
    /// region's own counter at the time (what it had written by then).
    gc_acks: BTreeMap<Key, BTreeMap<RegionId, u64>>,
    tombstones: usize,
    /// Above the timestamp of every collected tombstone, so a later write
    /// to a collected key still wins over copies of the tombstone that other
    /// regions have not collected yet.
    gc_floor: Hlc,
    names: NameView,
    conflicts: VecDeque<Conflict>,
    conflict_bytes: usize,
    next_conflict: u64,
    counters: Counters,
    /// Keys whose entry or acknowledgements changed since the last
    /// [`Replica::take_changes`]: what the caller must write to its store.
    dirty: BTreeSet<Key>,
    /// Conflict records above this sequence number are not yet persisted.
    persisted_conflicts: u64,
}

mod persist;
pub use persist::{Changes, RestoreError};

impl Replica {
    /// `regions`: every region of the topology, this one included.
    pub fn new(
        region: RegionId,
        regions: impl IntoIterator<Item = RegionId>,
        limits: Limits,
    ) -> Replica {
        let mut regions: BTreeSet<RegionId> = regions.into_iter().collect();
        regions.insert(region.clone());
        Replica {
            region,
            regions,
            limits,
            clock: Hlc::ZERO,
            counter: 0,
            entries: BTreeMap::new(),
            knowledge: Knowledge::new(),
            gc_acks: BTreeMap::new(),
            tombstones: 0,
            gc_floor: Hlc::ZERO,
            names: NameView::default(),
            conflicts: VecDeque::new(),
            conflict_bytes: 0,
            next_conflict: 0,
            counters: Counters::default(),
            dirty: BTreeSet::new(),
            persisted_conflicts: 0,
        }
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// The topology changed. A removed region's acknowledgements are no
    /// longer waited for; an added one's are.
    pub fn set_regions(&mut self, regions: impl IntoIterator<Item = RegionId>) {
        self.regions = regions.into_iter().collect();
        self.regions.insert(self.region.clone());
    }

    /// Every region of the topology, this one included.
    pub fn regions(&self) -> impl Iterator<Item = &RegionId> + '_ {
        self.regions.iter()
    }

    pub fn get(&self, key: &Key) -> Option<&Entry> {
        self.entries.get(key)
    }

    /// Every entry, tombstones included, in key order.
    pub fn entries(&self) -> impl Iterator<Item = &Entry> + '_ {
        self.entries.values()
    }

    pub fn knowledge(&self) -> &Knowledge {
        &self.knowledge
    }

    /// Entries held, tombstones included.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub fn tombstones(&self) -> usize {
        self.tombstones
    }

    pub fn counters(&self) -> &Counters {
        &self.counters
    }

    /// The most recent conflict records, oldest first.
    pub fn conflicts(&self) -> impl Iterator<Item = &Conflict> + '_ {
        self.conflicts.iter()
    }

    /// The name the topic is shown under, if it is live.
    pub fn topic_name(&self, id: &TopicId) -> Option<&str> {
        self.names.name(id)
    }

    pub fn topic_by_name(&self, name: &str) -> Option<TopicId> {
        self.names.id(name)
    }

    /// Live topics: id, visible name, definition.
    pub fn topics(&self) -> impl Iterator<Item = (TopicId, &str, TopicDef)> + '_ {
        self.names.iter().filter_map(|(id, name)| {
            let def = self.entries.get(&Key::Topic(*id))?.topic_def()?;
            Some((*id, name, def))
        })
    }

    pub fn home(&self, id: &TopicId) -> Option<HomeValue> {
        self.entries.get(&Key::TopicHome(*id))?.home()
    }

    /// A digest of the visible state: every key with its value or tombstone,
    /// timestamp and origin. Two regions with equal digests show the same
    /// metadata. Version vectors are left out on purpose: after a tombstone
    /// is collected, a region may keep a component naming it that another
    /// region no longer has, with no effect on any value.
    pub fn digest(&self) -> u64 {
        let mut h = Fnv::new();
        for e in self.entries.values() {
            h.u64(u64::from(e.key.kind()));
            h.bytes(&e.key.encode());
            match &e.value {
                Some(v) => {
                    h.u64(1);
                    h.bytes(v);
                }
                None => h.u64(0),
            }
            h.u64(e.hlc.physical_ms);
            h.u64(u64::from(e.hlc.logical));
            h.bytes(e.origin.as_str().as_bytes());
        }
        h.0
    }

    pub fn summary(&self) -> Summary {
        Summary {
            region: self.region.clone(),
            knowledge: self.knowledge.clone(),
            digest: self.digest(),
            entries: self.entries.len() as u64,
        }
    }

    // ---- local writes ----------------------------------------------------

    /// The generic write: `value` is the kind's encoding, `None` deletes.
    /// Homes are written only through [`Replica::set_home`], and kinds this
    /// build does not know cannot be written here at all.
    pub fn local_update(
        &mut self,
        key: Key,
        value: Option<Bytes>,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        match (&key, value) {
            (Key::Topic(id), Some(v)) => {
                let def = TopicDef::decode(v).map_err(|e| UpdateError::Invalid(e.to_string()))?;
                self.put_topic(*id, def, wall_ms)
            }
            (Key::Topic(id), None) => self.delete_topic(*id, wall_ms),
            (Key::TopicHome(_), _) => Err(UpdateError::NotWritable {
                key,
                why: "a home changes only by epoch, through set_home",
            }),
            (Key::Unknown { .. }, _) => Err(UpdateError::NotWritable {
                key,
                why: "this build does not know the kind",
            }),
            (Key::GroupOffset { .. }, Some(v)) => {
                let o = OffsetValue::decode(v).map_err(|e| UpdateError::Invalid(e.to_string()))?;
                o.validate().map_err(UpdateError::Invalid)?;
                self.write(key, Some(o.encode_to_vec().into()), wall_ms)
            }
            (_, value) => self.write(key, value, wall_ms),
        }
    }

    /// Creates or changes a topic. Its creation stamp is set on the first
    /// write of the id and kept afterwards, whatever `def` says.
    pub fn put_topic(
        &mut self,
        id: TopicId,
        mut def: TopicDef,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        let key = Key::Topic(id);
        // Only a new or changed name is checked: a topic shown under its
        // conflict name keeps asking for its original one until its creating
        // region renames it, and other regions may still change its configs.
        let asked = self
            .entries
            .get(&key)
            .and_then(Entry::topic_def)
            .map(|d| d.name);
        if asked.as_deref() != Some(def.name.as_str()) {
            if let Some(holder) = self.names.id(&def.name).filter(|h| *h != id) {
                return Err(UpdateError::NameTaken {
                    name: def.name,
                    id: holder,
                });
            }
        }
        let hlc = self.stamp(&key, wall_ms);
        match self.entries.get(&key).and_then(Entry::topic_def) {
            Some(old) => {
                def.created_ms = old.created_ms;
                def.created_logical = old.created_logical;
                def.creator = old.creator;
            }
            None => {
                def.created_ms = hlc.physical_ms;
                def.created_logical = hlc.logical;
                def.creator = self.region.to_string();
            }
        }
        def.validate().map_err(UpdateError::Invalid)?;
        self.commit_local(key, Some(def.encode_to_vec().into()), hlc, wall_ms)
    }

    /// Deletes a topic: its definition and its home become tombstones.
    pub fn delete_topic(&mut self, id: TopicId, wall_ms: u64) -> Result<Written, UpdateError> {
        let mut out = self.write(Key::Topic(id), None, wall_ms)?;
        let home = Key::TopicHome(id);
        if self.entries.get(&home).is_some_and(|e| !e.is_tombstone()) {
            let more = self.write(home, None, wall_ms)?;
            out.entries.extend(more.entries);
            out.effects.extend(more.effects);
        }
        Ok(out)
    }

    /// Records a home decided elsewhere with `epoch`; only a strictly
    /// higher epoch than the one held is accepted.
    pub fn set_home(
        &mut self,
        id: TopicId,
        home: &RegionId,
        epoch: u64,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        let key = Key::TopicHome(id);
        if let Some(e) = self.entries.get(&key) {
            match e.home() {
                None => return Err(UpdateError::NotFound(Key::Topic(id))),
                Some(h) if epoch <= h.epoch => {
                    return Err(UpdateError::StaleEpoch {
                        current: h.epoch,
                        proposed: epoch,
                    })
                }
                Some(_) => {}
            }
        }
        let v = HomeValue {
            home: home.to_string(),
            epoch,
        };
        v.validate().map_err(UpdateError::Invalid)?;
        self.write(key, Some(v.encode_to_vec().into()), wall_ms)
    }

    pub fn commit_offset(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        mut value: OffsetValue,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        value.committed_in = self.region.to_string();
        value.validate().map_err(UpdateError::Invalid)?;
        let key = Key::group_offset(group, topic, partition);
        self.write(key, Some(value.encode_to_vec().into()), wall_ms)
    }

    pub fn delete_offset(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        self.write(Key::group_offset(group, topic, partition), None, wall_ms)
    }

    fn write(
        &mut self,
        key: Key,
        value: Option<Bytes>,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        let hlc = self.stamp(&key, wall_ms);
        self.commit_local(key, value, hlc, wall_ms)
    }

    /// The timestamp of a new local write to `key`: after the clock and
    /// after the version it replaces, so a write that dominates another
    /// always has the larger stamp, whatever the wall clocks did.
    fn stamp(&mut self, key: &Key, wall_ms: u64) -> Hlc {
        let floor = self.entries.get(key).map_or(self.gc_floor, |e| e.hlc);
        let mut hlc = self.clock.now(wall_ms);
        if hlc <= floor {
            hlc = floor.successor();
            self.clock = hlc;
        }
        hlc
    }

    fn commit_local(
        &mut self,
        key: Key,
        value: Option<Bytes>,
        hlc: Hlc,
        wall_ms: u64,
    ) -> Result<Written, UpdateError> {
        let existing = self.entries.get(&key);
        let live_before = existing.is_some_and(|e| !e.is_tombstone());
        if value.is_none() {
            if !live_before {
                return Err(UpdateError::NotFound(key));
            }
            if self.tombstones >= self.limits.max_tombstones {
                return Err(UpdateError::TombstoneLimit(self.tombstones));
            }
        }
        let mut vv = existing.map(|e| e.vv.clone()).unwrap_or_default();
        vv.advance(&self.region, self.counter + 1);
        let entry = Entry {
            key: key.clone(),
            value,
            vv,
            hlc,
            origin: self.region.clone(),
        };
        entry.check(&self.limits).map_err(UpdateError::Invalid)?;
        self.counter += 1;
        let region = self.region.clone();
        self.knowledge.insert(&region, self.counter);
        let names_before = self.names.clone();
        self.store(entry.clone());
        let mut out = Written {
            entries: vec![entry],
            effects: Vec::new(),
        };
        if matches!(key, Key::Topic(_)) {
            let mut conflicts = Vec::new();
            self.after_topic_change(
                names_before,
                wall_ms,
                &mut out.effects,
                &mut conflicts,
                &mut out.entries,
            );
            for c in conflicts {
                self.log_conflict(c);
            }
        }
        if let Key::TopicHome(id) = &key {
            out.effects.push(Effect::HomeChanged {
                id: *id,
                home: out.entries[0].home(),
            });
        }
        Ok(out)
    }

    /// Puts an entry in the store, keeping the tombstone count and
    /// invalidating acknowledgements of a tombstone version that changed.
    fn store(&mut self, entry: Entry) {
        let new_tomb = entry.is_tombstone();
        self.gc_acks.remove(&entry.key);
        self.dirty.insert(entry.key.clone());
        let old = self.entries.insert(entry.key.clone(), entry);
        let old_tomb = old.is_some_and(|e| e.is_tombstone());
        match (old_tomb, new_tomb) {
            (false, true) => self.tombstones += 1,
            (true, false) => self.tombstones -= 1,
            _ => {}
        }
    }

    // ---- merging ---------------------------------------------------------

    /// Merges entries pushed by `from` (e.g. forwarded as they were written).
    pub fn apply_remote(
        &mut self,
        from: &RegionId,
        entries: Vec<Entry>,
        wall_ms: u64,
    ) -> Result<MergeReport, MergeError> {
        self.apply(from, entries, None, wall_ms)
    }

    /// Merges an anti-entropy delta. A complete delta also hands over the
    /// sender's knowledge: everything it had seen is now reflected here,
    /// including writes that were overwritten before they reached us.
    pub fn apply_delta(&mut self, delta: Delta, wall_ms: u64) -> Result<MergeReport, MergeError> {
        self.apply(&delta.from, delta.entries, delta.context, wall_ms)
    }

    fn known_region(&self, r: &RegionId) -> Result<(), MergeError> {
        if self.regions.contains(r) {
            Ok(())
        } else {
            Err(MergeError::UnknownRegion(r.to_string()))
        }
    }

    /// Everything a message must satisfy before any of it is merged.
    fn check_message(
        &self,
        from: &RegionId,
        entries: &[Entry],
        context: Option<&Knowledge>,
    ) -> Result<(), MergeError> {
        if *from == self.region {
            return Err(MergeError::FromSelf);
        }
        self.known_region(from)?;
        if entries.len() > self.limits.max_delta_entries {
            return Err(MergeError::TooManyEntries {
                entries: entries.len(),
                limit: self.limits.max_delta_entries,
            });
        }
        for (index, e) in entries.iter().enumerate() {
            e.check(&self.limits)
                .map_err(|reason| MergeError::BadEntry { index, reason })?;
            self.known_region(&e.origin)?;
            for (r, _) in e.vv.iter() {
                self.known_region(r)?;
            }
            if let Some(d) = e.topic_def() {
                self.known_region(&RegionId::new(d.creator).expect("checked"))?;
            }
            if let Some(h) = e.home() {
                self.known_region(&RegionId::new(h.home).expect("checked"))?;
            }
        }
        if let Some(k) = context {
            if k.extra_len() > self.limits.max_knowledge_extra {
                return Err(MergeError::Malformed("context knowledge too large".into()));
            }
            for (r, _) in k.rows() {
                self.known_region(r)?;
            }
        }
        Ok(())
    }

    fn apply(
        &mut self,
        from: &RegionId,
        entries: Vec<Entry>,
        context: Option<Knowledge>,
        wall_ms: u64,
    ) -> Result<MergeReport, MergeError> {
        let checked = self.check_message(from, &entries, context.as_ref());
        if let Err(e) = checked {
            self.counters.rejected_messages += 1;
            return Err(e);
        }
        // Merge into a scratch map first: an entry that breaks the version
        // order rejects the whole message, so nothing may be stored before
        // every entry has been merged.
        let mut report = MergeReport::default();
        let mut staged: BTreeMap<Key, Entry> = BTreeMap::new();
        let mut learned: Vec<usize> = Vec::new();
        let mut conflicts: Vec<(Key, ConflictKind, Side, Side)> = Vec::new();
        let mut refused = false;
        for (index, e) in entries.iter().enumerate() {
            if self.knowledge.covers(&e.vv) {
                report.already_known += 1;
                continue;
            }
            let local = staged.get(&e.key).or_else(|| self.entries.get(&e.key));
            let merged = match local {
                None => Ok(Merged::Take(e.clone())),
                Some(local) => match e.key.rule() {
                    MergeRule::LastWriterWins => merge_lww(local, e),
                    MergeRule::Fenced => Ok(merge_fenced(local, e)),
                },
            };
            let merged = match merged {
                Ok(m) => m,
                Err(reason) => {
                    self.counters.rejected_messages += 1;
                    return Err(MergeError::OutOfOrder {
                        index,
                        key: e.key.to_string(),
                        reason,
                    });
                }
            };
            match merged {
                Merged::Unchanged => learned.push(index),
                Merged::Take(result) => {
                    staged.insert(e.key.clone(), result);
                    learned.push(index);
                }
                Merged::Resolved { result, kept, lost } => {
                    staged.insert(e.key.clone(), result);
                    conflicts.push((e.key.clone(), ConflictKind::Concurrent, kept, lost));
                    learned.push(index);
                }
                Merged::StaleEpoch(result) => {
                    staged.insert(e.key.clone(), result);
                    report.stale_epochs += 1;
                    self.counters.stale_epochs += 1;
                    learned.push(index);
                }
                Merged::FenceClash { kept, lost } => {
                    // Not learned: the peer keeps re-sending it, and every
                    // round reports it again until an operator resolves it.
                    conflicts.push((e.key.clone(), ConflictKind::Fence, kept, lost));
                    refused = true;
                }
            }
        }
        let mut would = self.tombstones;
        for (k, new) in &staged {
            let old_tomb = self.entries.get(k).is_some_and(Entry::is_tombstone);
            match (old_tomb, new.is_tombstone()) {
                (false, true) => would += 1,
                (true, false) => would -= 1,
                _ => {}
            }
        }
        if would > self.limits.max_tombstones && would > self.tombstones {
            self.counters.rejected_messages += 1;
            return Err(MergeError::TombstoneLimit {
                would,
                limit: self.limits.max_tombstones,
            });
        }

        // Commit.
        let names_before = self.names.clone();
        let mut topics_changed = false;
        for (key, new) in staged {
            let old = self.entries.get(&key);
            if old == Some(&new) {
                continue;
            }
            let visible_change = old.map(|o| &o.value) != Some(&new.value);
            report.merged += 1;
            if visible_change {
                match &key {
                    Key::Topic(_) => topics_changed = true,
                    Key::TopicHome(id) => report.effects.push(Effect::HomeChanged {
                        id: *id,
                        home: new.home(),
                    }),
                    Key::GroupOffset {
                        group,
                        topic,
                        partition,
                    } => report.effects.push(Effect::OffsetCommitted {
                        group: group.clone(),
                        topic: topic.clone(),
                        partition: *partition,
                        value: new.offset(),
                    }),
                    _ => {}
                }
                report.changed.push(key.clone());
            }
            self.store(new);
        }
        for i in learned {
            for (r, c) in entries[i].vv.iter() {
                self.knowledge.insert(r, c);
            }
        }
        if let Some(k) = context.filter(|_| !refused) {
            self.knowledge.join(&k);
        }
        self.counters.knowledge_trimmed +=
            self.knowledge.trim(self.limits.max_knowledge_extra) as u64;

        if let Some(newest) = entries.iter().map(|e| e.hlc).max() {
            if newest.physical_ms <= wall_ms.saturating_add(self.limits.max_clock_skew_ms) {
                self.clock.observe(newest, wall_ms);
            } else {
                report.clock_skew_ignored = true;
            }
        }

        let mut records: Vec<Conflict> = Vec::new();
        for (key, kind, kept, lost) in conflicts {
            records.push(self.conflict_record(key, kind, kept, lost));
        }
        if topics_changed {
            self.after_topic_change(
                names_before,
                wall_ms,
                &mut report.effects,
                &mut records,
                &mut report.local_writes,
            );
        }
        for c in &records {
            self.log_conflict(c.clone());
        }
        report.conflicts = records;
        Ok(report)
    }

    /// Recomputes the name view after topic entries changed: records the
    /// newly displaced topics, renames this region's own displaced topics
    /// in their definitions, and reports every visible rename.
    fn after_topic_change(
        &mut self,
        before: NameView,
        wall_ms: u64,
        effects: &mut Vec<Effect>,
        conflicts: &mut Vec<Conflict>,
        writes: &mut Vec<Entry>,
    ) {
        self.recompute_names();
        let newly: Vec<TopicId> = self
            .names
            .displaced()
            .filter(|id| !before.is_displaced(id))
            .copied()
            .collect();
        for id in newly {
            let Some(lost) = self.entries.get(&Key::Topic(id)) else {
                continue;
            };
            let Some(def) = lost.topic_def() else {
                continue;
            };
            let Some(winner) = self.names.id(&def.name) else {
                continue;
            };
            let Some(kept) = self.entries.get(&Key::Topic(winner)) else {
                continue;
            };
            let kind = ConflictKind::TopicName {
                name: def.name.clone(),
                winner,
                renamed_to: self.names.name(&id).unwrap_or_default().to_string(),
            };
            let (kept, lost) = (Side::of(kept), Side::of(lost));
            let c = self.conflict_record(Key::Topic(id), kind, kept, lost);
            conflicts.push(c);
        }
        // Our own topics that lost their name take the new one for good, so
        // it does not flip back if the winner is deleted later.
        let own: Vec<(TopicId, TopicDef, String)> = self
            .names
            .displaced()
            .filter_map(|id| {
                let def = self.entries.get(&Key::Topic(*id))?.topic_def()?;
                (def.creator == self.region.as_str()).then(|| {
                    (
                        *id,
                        def,
                        self.names.name(id).unwrap_or_default().to_string(),
                    )
                })
            })
            .collect();
        for (id, mut def, name) in own {
            def.name = name;
            let key = Key::Topic(id);
            let hlc = self.stamp(&key, wall_ms);
            let mut vv = self.entries[&key].vv.clone();
            vv.advance(&self.region, self.counter + 1);
            let entry = Entry {
                key,
                value: Some(def.encode_to_vec().into()),
                vv,
                hlc,
                origin: self.region.clone(),
            };
            self.counter += 1;
            let region = self.region.clone();
            self.knowledge.insert(&region, self.counter);
            self.store(entry.clone());
            writes.push(entry);
        }
        self.recompute_names();
        let ids: BTreeSet<TopicId> = before
            .iter()
            .map(|(id, _)| *id)
            .chain(self.names.iter().map(|(id, _)| *id))
            .collect();
        for id in ids {
            if let (Some(from), Some(to)) = (before.name(&id), self.names.name(&id)) {
                if from != to {
                    effects.push(Effect::RenameTopic {
                        id,
                        from: from.to_string(),
                        to: to.to_string(),
                    });
                }
            }
        }
    }

    fn recompute_names(&mut self) {
        let defs: Vec<(TopicId, TopicDef)> = self
            .entries
            .values()
            .filter_map(|e| match e.key {
                Key::Topic(id) => Some((id, e.topic_def()?)),
                _ => None,
            })
            .collect();
        self.names = NameView::compute(defs.iter().map(|(id, d)| (*id, d)));
    }

    fn conflict_record(
        &mut self,
        key: Key,
        kind: ConflictKind,
        kept: Side,
        lost: Side,
    ) -> Conflict {
        match kind {
            ConflictKind::Concurrent => self.counters.concurrent_conflicts += 1,
            ConflictKind::TopicName { .. } => self.counters.topic_name_conflicts += 1,
            ConflictKind::Fence => self.counters.fence_conflicts += 1,
        }
        self.next_conflict += 1;
        Conflict {
            seq: self.next_conflict,
            key,
            kind,
            kept,
            lost,
        }
    }

    fn log_conflict(&mut self, c: Conflict) {
        self.conflict_bytes += conflict_weight(&c);
        self.conflicts.push_back(c);
        while self.conflicts.len() > self.limits.max_conflict_log
            || (self.conflict_bytes > self.limits.max_conflict_log_bytes
                && !self.conflicts.is_empty())
        {
            let old = self.conflicts.pop_front().expect("non-empty");
            self.conflict_bytes -= conflict_weight(&old);
            self.counters.conflicts_evicted += 1;
        }
    }

    // ---- anti-entropy and collection ---------------------------------------

    /// Takes a peer's summary as its acknowledgement of every tombstone it
    /// covers. Called by [`Replica::delta_since`]; call it directly for
    /// summaries that do not ask for a delta.
    pub fn record_summary(&mut self, peer: &Summary) -> Result<(), MergeError> {
        if peer.region == self.region {
            return Err(MergeError::FromSelf);
        }
        self.known_region(&peer.region)?;
        let own = peer.knowledge.base(&peer.region);
        for (key, e) in &self.entries {
            if e.is_tombstone() && peer.knowledge.covers(&e.vv) {
                let acks = self.gc_acks.entry(key.clone()).or_default();
                if !acks.contains_key(&peer.region) {
                    acks.insert(peer.region.clone(), own);
                    self.dirty.insert(key.clone());
                }
            }
        }
        Ok(())
    }

    /// The entries `peer` lacks, in key order, cut at the message limits.
    /// Also records the summary as the peer's acknowledgement.
    pub fn delta_since(&mut self, peer: &Summary) -> Result<Delta, MergeError> {
        self.record_summary(peer)?;
        self.delta_for(peer)
    }

    /// The entries `peer` lacks, without taking the summary as an
    /// acknowledgement: for readers that may not change the replica (a
    /// broker serving a peer from its applied state records summaries
    /// through its controller instead, so every broker collects alike).
    pub fn delta_for(&self, peer: &Summary) -> Result<Delta, MergeError> {
        if peer.region == self.region {
            return Err(MergeError::FromSelf);
        }
        self.known_region(&peer.region)?;
        // Room for the envelope and the context.
        let budget = self.limits.max_message_bytes / 2;
        let mut used = 0usize;
        let mut out = Vec::new();
        let mut complete = true;
        for e in self.entries.values() {
            if peer.knowledge.covers(&e.vv) {
                continue;
            }
            let size = e.to_wire().encoded_len() + 8;
            if out.len() == self.limits.max_delta_entries || used + size > budget {
                complete = false;
                break;
            }
            used += size;
            out.push(e.clone());
        }
        Ok(Delta {
            from: self.region.clone(),
            entries: out,
            context: complete.then(|| self.knowledge.clone()),
        })
    }

    /// Drops the tombstones that can no longer matter, and returns them.
    ///
    /// A tombstone goes once (1) every region has acknowledged this version
    /// of it, (2) this replica has seen every write each region had made
    /// when it acknowledged (so no write concurrent with the deletion is
    /// still on its way here), and (3) the tombstone's whole history lies in
    /// this replica's contiguous knowledge (so any older version arriving
    /// late is recognised as known and dropped, not resurrected). (2)
    /// implies (3): each region's component of the tombstone's vector is at
    /// most its own counter when it acknowledged. (3) is checked anyway, as
    /// the direct statement of what makes dropping safe.
    pub fn collect_garbage(&mut self) -> Vec<Entry> {
        let mut gone = Vec::new();
        let keys: Vec<Key> = self
            .entries
            .values()
            .filter(|e| e.is_tombstone())
            .map(|e| e.key.clone())
            .collect();
        for key in keys {
            let e = &self.entries[&key];
            let acks = self.gc_acks.get(&key);
            let acked = self.regions.iter().filter(|r| **r != self.region).all(|r| {
                acks.and_then(|a| a.get(r))
                    .is_some_and(|own| self.knowledge.base(r) >= *own)
            });
            if !acked || !self.knowledge.base_covers(&e.vv) {
                continue;
            }
            let e = self.entries.remove(&key).expect("present");
            self.gc_acks.remove(&key);
            self.dirty.insert(key.clone());
            self.tombstones -= 1;
            self.gc_floor = self.gc_floor.max(e.hlc);
            self.counters.tombstones_collected += 1;
            gone.push(e);
        }
        gone
    }
}

fn conflict_weight(c: &Conflict) -> usize {
    c.key.encode().len() + c.kept.weight() + c.lost.weight()
}

/// Same write: the rest of an entry follows from its stamp, since a region
/// never gives two writes one timestamp.
fn same_write(a: &Entry, b: &Entry) -> bool {
    a.stamp() == b.stamp() && a.value == b.value
}

fn merge_lww(local: &Entry, inc: &Entry) -> Result<Merged, String> {
    // The replica keeps "a version's stamp is the highest in its history"
    // (every write is stamped above what it replaces, and a merge keeps
    // the higher stamp). So dominance and stamps never disagree between
    // correct peers; when they do, the message is refused rather than
    // guessed at.
    match inc.vv.compare(&local.vv) {
        Causality::Equal if same_write(local, inc) => Ok(Merged::Unchanged),
        Causality::Equal => Err("same version vector, different write".into()),
        Causality::Before if inc.stamp() <= local.stamp() => Ok(Merged::Unchanged),
        Causality::Before => Err("an older version with a newer timestamp".into()),
        Causality::After if inc.stamp() > local.stamp() || same_write(local, inc) => {
            Ok(Merged::Take(inc.clone()))
        }
        Causality::After => Err("a newer version with an older timestamp".into()),
        // One winning write whose histories picked up different losers in
        // different regions: nothing to resolve, just join the histories.
        Causality::Concurrent if same_write(local, inc) => {
            let mut result = local.clone();
            result.vv = local.vv.merged(&inc.vv);
            Ok(Merged::Take(result))
        }
        Causality::Concurrent if inc.stamp() == local.stamp() => {
            Err("two different writes with one timestamp".into())
        }
        Causality::Concurrent => {
            let (win, lose) = if inc.stamp() > local.stamp() {
                (inc, local)
            } else {
                (local, inc)
            };
            let mut result = win.clone();
            result.vv = local.vv.merged(&inc.vv);
            Ok(Merged::Resolved {
                result,
                kept: Side::of(win),
                lost: Side::of(lose),
            })
        }
    }
}

/// Deleted beats every epoch (topic ids are never reused); otherwise the
/// epoch.
fn fence_rank(e: &Entry) -> (u8, u64) {
    match e.home() {
        None => (1, 0),
        Some(h) => (0, h.epoch),
    }
}

fn merge_fenced(local: &Entry, inc: &Entry) -> Merged {
    let vv = local.vv.merged(&inc.vv);
    let (rl, ri) = (fence_rank(local), fence_rank(inc));
    if ri > rl {
        let mut r = inc.clone();
        r.vv = vv;
        return Merged::Take(r);
    }
    if ri < rl {
        if vv == local.vv {
            return Merged::Unchanged;
        }
        let mut r = local.clone();
        r.vv = vv;
        return Merged::StaleEpoch(r);
    }
    if local.value != inc.value {
        return Merged::FenceClash {
            kept: Side::of(local),
            lost: Side::of(inc),
        };
    }
    // The same decision recorded by two regions: keep one stamp, the same
    // one everywhere.
    let mut r = if inc.stamp() > local.stamp() {
        inc.clone()
    } else {
        local.clone()
    };
    r.vv = vv;
    if r == *local {
        Merged::Unchanged
    } else {
        Merged::Take(r)
    }
}

/// FNV-1a, 64 bits: stable across builds and platforms, which the digest
/// must be since regions compare it.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn byte(&mut self, b: u8) {
        self.0 ^= u64::from(b);
        self.0 = self.0.wrapping_mul(0x0000_0100_0000_01b3);
    }

    fn u64(&mut self, v: u64) {
        for b in v.to_le_bytes() {
            self.byte(b);
        }
    }

    fn bytes(&mut self, b: &[u8]) {
        self.u64(b.len() as u64);
        for x in b {
            self.byte(*x);
        }
    }
}
