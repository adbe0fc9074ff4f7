//! One partition's log: offset assignment, idempotence, reads and retention
//! over the shared [`Store`].
//!
//! Invariants:
//! - Offsets are assigned under the partition lock, and writes are queued to
//!   the store under that same lock, so the store sees a partition's batches
//!   in offset order and completes them in that order.
//! - The high watermark only moves forward, and only over batches the store
//!   has made durable. Fetch never serves past it, so a crash can never take
//!   back a record a consumer has seen.
//! - The log start offset is always the base offset of the first stored batch
//!   (or the log end offset when the log is empty).

use std::sync::atomic::{AtomicBool, AtomicI64, Ordering};
use std::sync::{Arc, Mutex, Weak};

use bytes::{Bytes, BytesMut};
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use tokio::sync::{oneshot, Notify};

use crate::batch::{self, BatchError, BatchHeader};
use crate::configs::EffectiveConfig;
use crate::home_role::{self, Role};
use crate::producer::{BatchMeta, ProducerEntry, ProducerStates, SequenceCheck, SequenceError};
use crate::storage::{
    log_key, split_log_key, IndexEntry, Store, StoreError, CF_INDEX, CF_LOG, CF_META, CF_PRODUCERS,
};
use crate::txn_index::TxnIndex;

/// Durable per-partition state besides the batches themselves.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub log_start_offset: i64,
    /// Leader epoch -> first offset written in it, oldest first; the basis
    /// for finding where two copies of a log diverge.
    pub epochs: Vec<(i32, i64)>,
    /// Added to the partition group's Raft term to give the leader epoch
    /// stamped on produced batches (see [`stamp_epoch`]).
    #[serde(default)]
    pub epoch_base: i32,
    /// Whether the newest epoch in `epochs` was stamped by a produce here,
    /// rather than copied from another region by a mirror append. Records
    /// written before this existed have none, and count as stamped here: a
    /// home topic then keeps its epoch, and replicas still running the
    /// previous build (which stamp the bare term) write the same bytes.
    #[serde(default)]
    pub own_latest: Option<bool>,
    /// The home role the last `SetRole` entry gave this copy; `None` until
    /// its topic first moves (see [`crate::home_role`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<Role>,
    /// The log end when a `SetRole` entry last made this copy the home:
    /// everything below it was written by an earlier home and is
    /// committed here (a `global_quorum` high watermark starts there).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub home_since: Option<i64>,
    /// What compaction passes did (see [`crate::compaction::Cleaned`]).
    /// Once set, `log_start_offset` is where the log starts even when the
    /// cleaner removed the batch that began there.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cleaned: Option<crate::compaction::Cleaned>,
    /// Open and aborted transactions (see [`crate::txn_index`]). Kept here,
    /// not rebuilt from the log at open, so a restart reads no batch; the
    /// record is rewritten when a transaction begins or ends here.
    #[serde(default, skip_serializing_if = "TxnIndex::is_empty")]
    pub txns: TxnIndex,
}

impl Default for PartitionRecord {
    fn default() -> Self {
        PartitionRecord {
            log_start_offset: 0,
            epochs: vec![(0, 0)],
            epoch_base: 0,
            own_latest: Some(false),
            role: None,
            home_since: None,
            cleaned: None,
            txns: TxnIndex::default(),
        }
    }
}

/// One partition's part of a count of the home's commits
/// (`chronik_wire::settle::Plan`): the dc-link's latest, kept by a mirror,
/// or a failover's verdict, applied by a promotion (`Command::SetRole`).
#[derive(Debug, Clone, Default)]
pub struct Settled {
    pub retract_from: std::collections::BTreeMap<i64, i64>,
    pub view_end: Option<i64>,
}

impl Settled {
    /// Where read_committed reads stop: the first record (or marker) of the
    /// first commit not counted as whole, whether counted unsettled or
    /// arrived after the count.
    fn hold_at(&self, txns: &TxnIndex) -> i64 {
        // A partition left out of the count holds every commit.
        let end = Some(self.view_end.unwrap_or(i64::MIN));
        txns.committed
            .iter()
            .flat_map(|(pid, parts)| parts.iter().map(move |p| (*pid, p)))
            .filter(|(pid, p)| {
                !p.retracted
                    && chronik_wire::settle::withheld(
                        &self.retract_from,
                        end,
                        *pid,
                        p.seq,
                        p.marker,
                    )
            })
            .map(|(_, p)| p.first.unwrap_or(p.marker))
            .min()
            .unwrap_or(i64::MAX)
    }
}

/// A role in one word: 0 for none, else `epoch << 1 | home` (epochs start
/// at 1, so a role is never 0).
fn encode_role(role: Option<Role>) -> u64 {
    role.map_or(0, |r| r.epoch << 1 | r.home as u64)
}

/// The leader epoch for a batch produced here in Raft term `term`: the term
/// plus the partition's epoch base, which moves up when needed so that the
/// epoch is never below the newest epoch in the log, and is above it when
/// that epoch came from another region (a mirror that became the home).
/// Kafka clients tell divergent histories apart by epoch (KIP-320), so two
/// regions must never stamp the same epoch on different records. Above the
/// newest epoch it received is not enough for a copy promoted in a
/// failover: the old home, cut off, may have stamped that next epoch too,
/// from the same offset (a new leader there, or a promoted copy that had
/// received nothing), and neither the dc-link nor a consumer could tell the
/// two logs apart there. So a copy that holds the home role at fencing
/// epoch F stamps at least `floor` = [`epoch_floor`]`(F)`, above every
/// epoch of earlier tenures. Decided at apply, from the entry's term and
/// replicated state only, so every replica stamps the same. Returns
/// (epoch, new base).
pub fn stamp_epoch(term: i32, base: i32, latest: i32, own_latest: bool, floor: i32) -> (i32, i32) {
    let epoch = term.saturating_add(base);
    if (epoch > latest || (epoch == latest && own_latest)) && epoch >= floor {
        return (epoch, base);
    }
    let wanted = latest.saturating_add(1).max(floor);
    (wanted, wanted.saturating_sub(term))
}

/// Leader epochs a home of fencing epoch `fence` stamps at least: each home
/// tenure owns a range of 2^16 epochs (elections), so no two tenures, and
/// no two regions, stamp the same epoch. A topic whose home never moved
/// has no floor.
pub fn epoch_floor(role: Option<Role>) -> i32 {
    match role {
        Some(r) if r.home => {
            (r.epoch.min(i32::MAX as u64 >> EPOCHS_PER_TENURE_BITS) as i32)
                << EPOCHS_PER_TENURE_BITS
        }
        _ => 0,
    }
}

const EPOCHS_PER_TENURE_BITS: u32 = 16;

fn partition_key(log_id: u64) -> String {
    format!("partition/{log_id:016x}")
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error(transparent)]
    Batch(#[from] BatchError),
    #[error("record batch of {size} bytes exceeds max.message.bytes ({max})")]
    TooLarge { size: usize, max: i32 },
    #[error(transparent)]
    Sequence(#[from] SequenceError),
    #[error("compacted topic cannot accept a record without a key")]
    KeyRequired,
    /// The leader had to read the records (a compacted topic) and could not.
    #[error("record batch cannot be read: {0}")]
    Undecodable(String),
    #[error(transparent)]
    Storage(#[from] StoreError),
    #[error("the partition was deleted")]
    Deleted,
    #[error(transparent)]
    Role(#[from] home_role::RoleError),
    #[error(
        "mirrored batch at offset {offset} has leader epoch {epoch}, below this log's latest epoch {latest}: \
         the home's history is not this mirror's (was the home moved?)"
    )]
    EpochRegressed {
        offset: i64,
        epoch: i32,
        latest: i32,
    },
}

/// Why a copy's suffix was not cut (see [`PartitionLog::truncate_into`]).
#[derive(Debug, thiserror::Error)]
pub enum TruncateError {
    #[error("offset {offset} is outside the log [{start}, {end}]")]
    OutOfRange { offset: i64, start: i64, end: i64 },
    #[error(
        "offset {offset} falls inside the batch {base}..={last}: a copy is cut only between batches"
    )]
    InsideBatch { offset: i64, base: i64, last: i64 },
    #[error(
        "this copy holds the home role or never gave it up (role {role:?}): only a copy demoted to a mirror \
         after a move of the home is cut"
    )]
    NotDemoted { role: Option<Role> },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    #[error("offset {offset} is out of range [{start}, {end}]")]
    OutOfRange { offset: i64, start: i64, end: i64 },
    #[error(transparent)]
    Storage(#[from] StoreError),
}

pub enum Appended {
    /// Queued; the receiver resolves once the batch is durable.
    Pending {
        base_offset: i64,
        done: oneshot::Receiver<Result<(), StoreError>>,
    },
    /// A retry of a batch already in the log.
    Duplicate { base_offset: i64 },
}

struct LogState {
    next_offset: i64,
    /// Epoch -> first offset history, newest last (mirrors PartitionRecord).
    epochs: Vec<(i32, i64)>,
    /// See [`PartitionRecord::epoch_base`] and [`PartitionRecord::own_latest`].
    epoch_base: i32,
    own_latest: bool,
    /// See [`PartitionRecord::role`].
    role: Option<Role>,
    /// See [`PartitionRecord::home_since`].
    home_since: Option<i64>,
    /// See [`PartitionRecord::cleaned`].
    cleaned: Option<crate::compaction::Cleaned>,
    /// See [`PartitionRecord::txns`].
    txns: TxnIndex,
    producers: ProducerStates,
    size_bytes: u64,
}

impl LogState {
    fn record(&self, log_start_offset: i64) -> PartitionRecord {
        PartitionRecord {
            log_start_offset,
            epochs: self.epochs.clone(),
            epoch_base: self.epoch_base,
            own_latest: Some(self.own_latest),
            role: self.role,
            home_since: self.home_since,
            cleaned: self.cleaned.clone(),
            txns: self.txns.clone(),
        }
    }
}

/// The outcome of [`PartitionLog::mirror_into`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mirrored {
    pub log_end_offset: i64,
    /// False when the batches did not start at the log end (nothing added).
    pub appended: bool,
}

/// A batch appended into a caller's `WriteBatch` (see [`PartitionLog::append_into`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendedInto {
    /// New offsets `base..=last`; call [`PartitionLog::committed`] with
    /// `last + 1` once the write is done.
    New {
        base: i64,
        last: i64,
    },
    Duplicate {
        base_offset: i64,
    },
}

/// Records that `epoch` starts at `base` if it is newer than the history's
/// last epoch; returns whether the history changed. A trailing entry that
/// never got a batch is replaced, so the history only names epochs that own
/// data (besides the initial one).
fn note_epoch(st: &mut LogState, epoch: i32, base: i64) -> bool {
    if st.epochs.last().is_some_and(|(e, _)| *e >= epoch) {
        return false;
    }
    if st.epochs.len() > 1 && st.epochs.last().is_some_and(|(_, o)| *o == base) {
        st.epochs.pop();
    }
    st.epochs.push((epoch, base));
    true
}

/// Forgets the epochs that no longer start a record of the log once it
/// starts at `start`, as Kafka's leader-epoch cache does: the epoch in
/// effect at `start` is kept, moved to start there. Every replica and every
/// mirror that starts at the same offset then holds the same history,
/// whatever happened below it.
fn truncate_epochs_from_start(epochs: &mut Vec<(i32, i64)>, start: i64) {
    let below = epochs.iter().take_while(|(_, o)| *o <= start).count();
    if below == 0 {
        return;
    }
    let epoch = epochs[below - 1].0;
    epochs.splice(..below, [(epoch, start)]);
}

pub struct PartitionLog {
    pub log_id: u64,
    pub topic: Arc<str>,
    pub partition: i32,
    store: Arc<Store>,
    state: Mutex<LogState>,
    high_watermark: AtomicI64,
    /// The leader epoch clients see (the partition group's current term).
    current_epoch: std::sync::atomic::AtomicI32,
    /// A copy of the state's epoch base, for [`PartitionLog::note_term`].
    epoch_base: std::sync::atomic::AtomicI32,
    /// A copy of the state's role ([`encode_role`]), read by produce and the
    /// role keeper without the state lock.
    role_copy: std::sync::atomic::AtomicU64,
    log_end: AtomicI64,
    log_start: AtomicI64,
    deleted: AtomicBool,
    /// On a mirror: the dc-link's latest count of the home's commits
    /// (`None`: nothing held, as on the home). In memory: the dc-link tells
    /// it when the count changes or this process is new.
    settled: Mutex<Option<Settled>>,
    waiters: Mutex<Vec<Weak<Notify>>>,
    /// Held from offset assignment until the write is queued, for writers
    /// that queue their own writes ([`PartitionLog::append`]).
    submit_order: Mutex<()>,
    /// `global_quorum` topics: each mirror region's durable log end and how
    /// many regions must reach an offset, as the home dc-link last reported
    /// (`None` until it reports). In memory only: dc-link re-reports to a
    /// new leader within a second.
    mirror_acks:
        tokio::sync::watch::Sender<(std::collections::BTreeMap<String, i64>, Option<usize>)>,
    /// When this broker saw each offset committed, until the mirrors hold
    /// it (the RPO's at-risk span, see `crate::rpo`); kept once the home
    /// dc-link reports mirror ends here.
    commit_times: Mutex<crate::rpo::CommitTimes>,
    /// The leader epoch in which the home dc-link last reported mirror
    /// ends here (-1: never). Before the first report of its own epoch, a
    /// new leader does not know what its predecessor showed consumers.
    mirror_acks_epoch: std::sync::atomic::AtomicI32,
    /// Idempotent producers whose batch the RPO refused (see
    /// `crate::rpo::RefusedOrder`).
    rpo_refused: Mutex<crate::rpo::RefusedOrder>,
}

/// Offsets and bytes returned by a read.
pub struct ReadResult {
    pub records: Bytes,
    pub high_watermark: i64,
    pub log_start_offset: i64,
}

impl PartitionLog {
    /// Adds the writes that create a new, empty partition to `wb`.
    pub fn init_record(store: &Store, wb: &mut WriteBatch, log_id: u64) {
        wb.put_cf(
            store.cf(CF_META),
            partition_key(log_id),
            serde_json::to_vec(&PartitionRecord::default()).expect("serializes"),
        );
    }

    /// Adds the write of this partition's durable state (besides batches).
    fn put_record(&self, wb: &mut WriteBatch, st: &LogState, log_start_offset: i64) {
        wb.put_cf(
            self.store.cf(CF_META),
            partition_key(self.log_id),
            serde_json::to_vec(&st.record(log_start_offset)).expect("serializes"),
        );
    }

    /// Loads a partition from the store: log end offset from the index, the
    /// high watermark (everything stored is durable to this broker), the log
    /// start offset and producer state.
    pub fn open(
        store: Arc<Store>,
        log_id: u64,
        topic: Arc<str>,
        partition: i32,
    ) -> Result<Arc<PartitionLog>, StoreError> {
        let (st, log_start) = Self::load_state(&store, log_id)?;
        let next_offset = st.next_offset;
        let leader_epoch = st.epochs.last().map(|e| e.0).unwrap_or(0);
        let epoch_base = st.epoch_base;
        let role = encode_role(st.role);
        Ok(Arc::new(PartitionLog {
            log_id,
            topic,
            partition,
            store,
            state: Mutex::new(st),
            high_watermark: AtomicI64::new(next_offset),
            current_epoch: std::sync::atomic::AtomicI32::new(leader_epoch),
            epoch_base: std::sync::atomic::AtomicI32::new(epoch_base),
            role_copy: std::sync::atomic::AtomicU64::new(role),
            log_end: AtomicI64::new(next_offset),
            log_start: AtomicI64::new(log_start),
            deleted: AtomicBool::new(false),
            settled: Mutex::new(None),
            waiters: Mutex::new(Vec::new()),
            submit_order: Mutex::new(()),
            mirror_acks: tokio::sync::watch::Sender::new(Default::default()),
            mirror_acks_epoch: std::sync::atomic::AtomicI32::new(-1),
            commit_times: Default::default(),
            rpo_refused: Default::default(),
        }))
    }

    /// Re-reads everything from the store, after the partition's data was
    /// replaced wholesale (a Raft snapshot was installed).
    pub fn reload(&self) -> Result<(), StoreError> {
        let (fresh, log_start) = Self::load_state(&self.store, self.log_id)?;
        let mut st = self.state.lock().unwrap();
        let next = fresh.next_offset;
        if let Some((e, _)) = fresh.epochs.last() {
            self.current_epoch.fetch_max(*e, Ordering::AcqRel);
        }
        self.epoch_base.store(fresh.epoch_base, Ordering::Release);
        self.role_copy
            .store(encode_role(fresh.role), Ordering::Release);
        *st = fresh;
        self.log_end.store(next, Ordering::Release);
        self.log_start.store(log_start, Ordering::Release);
        self.high_watermark.store(next, Ordering::Release);
        drop(st);
        self.wake_waiters();
        Ok(())
    }

    fn load_state(store: &Store, log_id: u64) -> Result<(LogState, i64), StoreError> {
        let key = partition_key(log_id);
        let rec: PartitionRecord = match store.get_meta(&key)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: key.clone(),
                detail: e.to_string(),
            })?,
            None => PartitionRecord::default(),
        };
        let entries = store.index_entries(log_id)?;
        let size_bytes = entries.iter().map(|e| e.size as u64).sum();
        let next_offset = entries
            .last()
            .map(|e| e.last_offset + 1)
            .unwrap_or(rec.log_start_offset);
        let log_start = if rec.cleaned.is_some() {
            // The cleaner may have removed the first batch; the log still
            // starts where it did (as in Kafka, compaction leaves holes).
            rec.log_start_offset.min(next_offset)
        } else {
            entries
                .first()
                .map(|e| e.base_offset)
                .unwrap_or(next_offset)
                .max(rec.log_start_offset)
        };
        let mut producers = ProducerStates::default();
        {
            let mut it = store.log_iter(CF_PRODUCERS, log_id);
            it.seek_to_first();
            while it.valid() {
                let (k, v) = (it.key().unwrap_or_default(), it.value().unwrap_or_default());
                let (_, pid) = split_log_key(k).ok_or_else(|| StoreError::Corrupt {
                    key: format!("{k:?}"),
                    detail: "producer key".into(),
                })?;
                let e = ProducerEntry::decode(v).ok_or_else(|| StoreError::Corrupt {
                    key: format!("producer {pid}"),
                    detail: "producer entry".into(),
                })?;
                producers.insert(pid, e);
                it.next();
            }
            it.status()?;
        }
        Ok((
            LogState {
                next_offset,
                epochs: rec.epochs,
                epoch_base: rec.epoch_base,
                own_latest: rec.own_latest.unwrap_or(true),
                role: rec.role,
                home_since: rec.home_since,
                cleaned: rec.cleaned,
                txns: rec.txns,
                producers,
                size_bytes,
            },
            log_start,
        ))
    }

    pub fn high_watermark(&self) -> i64 {
        self.high_watermark.load(Ordering::Acquire)
    }

    pub fn log_end_offset(&self) -> i64 {
        self.log_end.load(Ordering::Acquire)
    }

    pub fn log_start_offset(&self) -> i64 {
        self.log_start.load(Ordering::Acquire)
    }

    /// The leader epoch clients see: the partition group's Raft term, or the
    /// newest epoch in the history if that is larger. A mirror's history
    /// holds the home region's epochs, and clients that read (or committed
    /// offsets) there must never see the epoch go backwards here.
    pub fn leader_epoch(&self) -> i32 {
        self.current_epoch.load(Ordering::Acquire)
    }

    /// The partition group's current Raft term: the epoch clients see is
    /// at least the epoch a produce in that term would stamp.
    pub fn note_term(&self, term: i32) {
        let base = self.epoch_base.load(Ordering::Acquire);
        self.current_epoch
            .fetch_max(term.saturating_add(base), Ordering::AcqRel);
    }

    /// The durable (epoch, start offset) history, oldest first.
    pub fn epoch_history(&self) -> Vec<(i32, i64)> {
        self.state.lock().unwrap().epochs.clone()
    }

    /// (producer id, epoch, last sequence) of the idempotent producers this
    /// partition remembers (DescribeProducers).
    pub fn producers(&self) -> Vec<(i64, i16, i32)> {
        self.state.lock().unwrap().producers.summary()
    }

    /// The epoch and last sequence this partition holds for `producer_id`.
    pub fn last_written(&self, producer_id: i64) -> Option<(i16, i32)> {
        let st = self.state.lock().unwrap();
        let e = st.producers.get(producer_id)?;
        e.batches.back().map(|b| (e.epoch, b.last_seq))
    }

    /// The noted commits this copy holds and has not retracted, as a
    /// failover's view counts them (`chronik_wire::settle`).
    pub fn commit_parts(&self) -> Vec<chronik_wire::settle::Part> {
        let st = self.state.lock().unwrap();
        let mut out: Vec<chronik_wire::settle::Part> = st
            .txns
            .committed
            .iter()
            .flat_map(|(pid, v)| {
                v.iter()
                    .filter(|p| !p.retracted)
                    .map(|p| chronik_wire::settle::Part {
                        producer_id: *pid,
                        seq: p.seq,
                        parts: p.parts,
                        marker: p.marker,
                    })
            })
            .collect();
        out.sort_by_key(|p| p.marker);
        out
    }

    /// The first offset of each producer's open transaction here.
    pub fn open_transactions(&self) -> std::collections::BTreeMap<i64, i64> {
        self.state.lock().unwrap().txns.open.clone()
    }

    /// What the cleaner has done to this log (`None`: never cleaned).
    pub fn cleaned(&self) -> Option<crate::compaction::Cleaned> {
        self.state.lock().unwrap().cleaned.clone()
    }

    /// The last stable offset for reads bounded by `high_watermark` (the
    /// visible one): read_committed fetches stop here.
    pub fn last_stable_offset(&self, high_watermark: i64) -> i64 {
        let st = self.state.lock().unwrap();
        let lso = st.txns.last_stable_offset(high_watermark);
        match &*self.settled.lock().unwrap() {
            Some(s) => lso.min(s.hold_at(&st.txns)),
            None => lso,
        }
    }

    /// On a mirror: which of the home's commits reached this region whole
    /// (the dc-link's latest count); read_committed reads stop before any
    /// other, which a failover could still retract.
    pub fn set_settled(&self, settled: Settled) {
        *self.settled.lock().unwrap() = Some(settled);
    }

    /// A mirror copy opened by this process knows no count yet (the count
    /// lives in memory): it holds every noted commit until the dc-link
    /// tells it one, rather than show a commit that may have arrived in
    /// part. A copy that holds the home role, or was told, is left alone.
    pub fn hold_until_counted(&self) {
        if self.role().is_some_and(|r| r.home) {
            return;
        }
        self.settled
            .lock()
            .unwrap()
            .get_or_insert_with(Settled::default);
    }

    /// Commits whose markers land at or past `from` are new to this copy
    /// (it was just demoted, or cut back by a failback), whatever the last
    /// count said: they are held until the dc-link counts them.
    fn hold_from(&self, from: i64) {
        let mut settled = self.settled.lock().unwrap();
        match &mut *settled {
            // A count without this partition (no view end) holds every
            // commit already.
            Some(s) => s.view_end = s.view_end.map(|end| end.min(from)),
            None => {
                *settled = Some(Settled {
                    retract_from: Default::default(),
                    view_end: Some(from),
                })
            }
        }
    }

    /// The aborted transactions a read of `from..to` overlaps.
    pub fn aborted_in(&self, from: i64, to: i64) -> Vec<crate::txn_index::Aborted> {
        self.state
            .lock()
            .unwrap()
            .txns
            .aborted_overlapping(from, to)
    }

    pub fn has_open_transaction(&self, producer_id: i64) -> bool {
        self.state.lock().unwrap().txns.is_open(producer_id)
    }

    pub fn size_bytes(&self) -> u64 {
        self.state.lock().unwrap().size_bytes
    }

    /// Checks a batch as the leader does before replicating it: everything
    /// [`PartitionLog::validate`] checks, and the topic's `max.message.bytes`.
    /// Only the leader applies the size limit, once, when it proposes: the
    /// config can change between proposal and apply, and replicas learn of
    /// the change at different log positions.
    pub fn check_batch(records: &[u8], cfg: &EffectiveConfig) -> Result<BatchHeader, AppendError> {
        let h = Self::validate(records)?;
        if records.len() > cfg.max_message_bytes.max(0) as usize {
            return Err(AppendError::TooLarge {
                size: records.len(),
                max: cfg.max_message_bytes,
            });
        }
        if cfg.compaction.is_some()
            && crate::compaction::has_keyless_record(records)
                .map_err(|e| AppendError::Undecodable(e.to_string()))?
        {
            return Err(AppendError::KeyRequired);
        }
        Ok(h)
    }

    /// Framing, CRC and features: a function of the bytes alone, so every
    /// replica applying the same entry reaches the same verdict.
    pub fn validate(records: &[u8]) -> Result<BatchHeader, AppendError> {
        Ok(batch::validate_produce_batch(records)?)
    }

    /// Adds one offset-stamped batch to `wb` (data, index entry, and the
    /// producer's state when it is idempotent) and moves `st` past it.
    /// Returns whether the partition record must be written again (the
    /// batch began or ended a transaction here).
    #[must_use]
    fn put_batch(
        &self,
        wb: &mut WriteBatch,
        st: &mut LogState,
        h: &BatchHeader,
        base: i64,
        bytes: &[u8],
        max_timestamp: i64,
    ) -> bool {
        let last = base + h.last_offset_delta as i64;
        let key = log_key(self.log_id, base);
        wb.put_cf(self.store.cf(CF_LOG), key, bytes);
        let idx = IndexEntry {
            base_offset: base,
            last_offset: last,
            max_timestamp,
            size: bytes.len() as u32,
        };
        wb.put_cf(self.store.cf(CF_INDEX), key, idx.encode());
        if h.has_producer_id() && !h.is_control() {
            let meta = BatchMeta {
                first_seq: h.base_sequence,
                last_seq: h.last_sequence(),
                first_offset: base,
                last_offset: last,
            };
            let entry = st.producers.record(h.producer_id, h.producer_epoch, meta);
            wb.put_cf(
                self.store.cf(CF_PRODUCERS),
                log_key(self.log_id, h.producer_id),
                entry.encode(),
            );
        }
        let mut txns_changed = false;
        if h.is_transactional() && h.has_producer_id() {
            if h.is_control() {
                // A marker with a newer epoch (an abort that fenced the
                // producer) fences the old epoch's late batches here too.
                if let Some(entry) = st.producers.fence(h.producer_id, h.producer_epoch) {
                    wb.put_cf(
                        self.store.cf(CF_PRODUCERS),
                        log_key(self.log_id, h.producer_id),
                        entry.encode(),
                    );
                }
                if let Some(marker) = chronik_wire::control::marker(h, bytes) {
                    txns_changed = st.txns.on_marker(h.producer_id, marker, base);
                }
            } else {
                txns_changed = st.txns.on_data(h.producer_id, base);
            }
        }
        st.next_offset = last + 1;
        st.size_bytes += bytes.len() as u64;
        txns_changed
    }

    /// Adds batches copied from the topic's home region (see
    /// [`crate::raft::types::Command::MirrorAppend`]) to `wb`, unchanged: they
    /// keep the offsets and leader epochs the home region stamped, so the
    /// mirror's log, and the epoch history derived from it, are identical to
    /// the home's. Nothing is written unless the batches start exactly at
    /// this log's end; with `from_log_start`, an empty log may start later
    /// (the home's retention already removed the beginning).
    pub fn mirror_into(
        &self,
        wb: &mut WriteBatch,
        records: &[u8],
        base_offset: i64,
        from_log_start: bool,
    ) -> Result<Mirrored, AppendError> {
        let batches = batch::split_stored(records)?;
        let mut st = self.state.lock().unwrap();
        if self.deleted.load(Ordering::Acquire) {
            return Err(AppendError::Deleted);
        }
        home_role::check_mirror(st.role)?;
        let first = batches.first().map(|(h, _)| h.base_offset);
        let empty = st.size_bytes == 0 && self.log_start_offset() == st.next_offset;
        // The first batch may start after `base_offset` when the home's
        // cleaner removed the batches in between (a compacted topic).
        let starts_here = first.is_some_and(|f| f >= base_offset)
            && (base_offset == st.next_offset
                || (from_log_start && empty && base_offset > st.next_offset));
        if !starts_here {
            return Ok(Mirrored {
                log_end_offset: st.next_offset,
                appended: false,
            });
        }
        // Leader epochs only grow along a log; a batch that goes back would
        // make OffsetForLeaderEpoch answer for data this log does not hold
        // (KIP-320's divergence check would miss it). Checked for the whole
        // chunk first, so nothing of a refused chunk is written.
        let mut latest = st.epochs.last().map(|(e, _)| *e).unwrap_or(0);
        if base_offset > st.next_offset {
            latest = 0;
        }
        for (h, _) in &batches {
            if h.partition_leader_epoch < latest {
                return Err(AppendError::EpochRegressed {
                    offset: h.base_offset,
                    epoch: h.partition_leader_epoch,
                    latest,
                });
            }
            latest = h.partition_leader_epoch;
        }
        let mut start = self.log_start_offset();
        if base_offset > st.next_offset {
            start = base_offset;
            st.next_offset = base_offset;
            // The home's history was cut at this same start (retention);
            // the first batch's epoch begins the copy's.
            st.epochs.clear();
        }
        let mut history_changed = start != self.log_start_offset();
        for (h, range) in &batches {
            let bytes = &records[range.clone()];
            let base = h.base_offset;
            if note_epoch(&mut st, h.partition_leader_epoch, base) {
                self.current_epoch
                    .fetch_max(h.partition_leader_epoch, Ordering::AcqRel);
                history_changed = true;
            }
            // Even at an epoch equal to one stamped here: it came from
            // elsewhere, so the next produce here must stamp above it.
            if std::mem::take(&mut st.own_latest) {
                history_changed = true;
            }
            // Producer state travels with the data, so a mirror promoted to
            // home keeps deduplicating the same producers; transactions and
            // their markers too, so a mirror's read_committed view is the
            // home's.
            if self.put_batch(wb, &mut st, h, base, bytes, h.max_timestamp) {
                history_changed = true;
            }
        }
        if history_changed {
            self.put_record(wb, &st, start);
        }
        self.log_start.fetch_max(start, Ordering::AcqRel);
        self.log_end.store(st.next_offset, Ordering::Release);
        let end = st.next_offset;
        drop(st);
        metrics::counter!("chronik_mirrored_bytes_total").increment(records.len() as u64);
        Ok(Mirrored {
            log_end_offset: end,
            appended: true,
        })
    }

    /// Validates, deduplicates and assigns offsets to a batch, adding its
    /// writes (data, index, producer state, epoch history) to `wb`. The
    /// in-memory state moves at once, so the next append sees these offsets;
    /// the high watermark moves only when the caller reports the write done
    /// through [`PartitionLog::committed`]. The epoch from `term` (see
    /// [`stamp_epoch`]) is stamped into the batch and recorded in the epoch
    /// history when it is new; `log_append_time`,
    /// when set, is stamped as the batch's LogAppendTime.
    ///
    /// No topic config is read here: the outcome depends only on the
    /// arguments and this log's state, so replicas applying the same entries
    /// write the same bytes. Config-dependent checks belong to the leader
    /// ([`PartitionLog::check_batch`]).
    pub fn append_into(
        &self,
        wb: &mut WriteBatch,
        records: &[u8],
        term: i32,
        log_append_time: Option<i64>,
    ) -> Result<AppendedInto, AppendError> {
        let h = Self::validate(records)?;
        self.append_checked(wb, h, records, term, log_append_time)
    }

    /// Writes a transaction marker (see `chronik_wire::control`) for
    /// `producer_id`'s open transaction here, as the coordinator decided
    /// it: ordered with the data, stamped like a produced batch. A producer
    /// with no transaction open here gets no marker (`Ok(None)`), so a
    /// coordinator retrying after a lost answer writes it once; except a
    /// noted commit, written into every partition its transaction holds
    /// (once: a commit with the same number or a later one stops it). A
    /// marker older than the producer's epoch here is refused.
    pub fn marker_into(
        &self,
        wb: &mut WriteBatch,
        marker: &crate::raft::types::TxnMarker,
        term: i32,
    ) -> Result<Option<i64>, AppendError> {
        let note = marker
            .ending
            .filter(|_| marker.commit)
            .map(|(seq, parts)| chronik_wire::control::Note::Ending { seq, parts });
        {
            let st = self.state.lock().unwrap();
            let open = st.txns.is_open(marker.producer_id);
            let written = match note {
                Some(chronik_wire::control::Note::Ending { seq, .. }) => {
                    // Where it wrote nothing, a newer epoch here means the
                    // producer moved on: nothing of this transaction to end.
                    let newer = st
                        .producers
                        .get(marker.producer_id)
                        .is_some_and(|e| e.epoch > marker.producer_epoch);
                    (!open && newer)
                        || st
                            .txns
                            .last_commit_seq(marker.producer_id)
                            .is_some_and(|last| last >= seq)
                }
                _ => !open,
            };
            if written {
                return Ok(None);
            }
        }
        self.write_marker(wb, marker, note, term)
    }

    /// Appends `marker` with `note`, refused when older than the
    /// producer's epoch here.
    fn write_marker(
        &self,
        wb: &mut WriteBatch,
        marker: &crate::raft::types::TxnMarker,
        note: Option<chronik_wire::control::Note>,
        term: i32,
    ) -> Result<Option<i64>, AppendError> {
        {
            let st = self.state.lock().unwrap();
            if let Some(e) = st.producers.get(marker.producer_id) {
                if marker.producer_epoch < e.epoch {
                    return Err(AppendError::Sequence(SequenceError::FencedEpoch {
                        got: marker.producer_epoch,
                        current: e.epoch,
                    }));
                }
            }
        }
        let bytes = chronik_wire::control::marker_batch(
            marker.producer_id,
            marker.producer_epoch,
            marker.commit,
            marker.coordinator_epoch,
            marker.now_ms,
            note,
        );
        let h = BatchHeader::parse(&bytes)?;
        match self.append_checked(wb, h, &bytes, term, None)? {
            AppendedInto::New { base, .. } => Ok(Some(base)),
            AppendedInto::Duplicate { .. } => Ok(None),
        }
    }

    /// Writes the abort marker that retracts this partition's part of a
    /// commit (see `crate::txn_settle`), once; a part it does not hold (or
    /// no longer) is skipped.
    fn retract_into(
        &self,
        wb: &mut WriteBatch,
        producer_id: i64,
        seq: i64,
        term: i32,
    ) -> Result<Option<i64>, AppendError> {
        let epoch = {
            let st = self.state.lock().unwrap();
            let held = st
                .txns
                .committed
                .get(&producer_id)
                .is_some_and(|v| v.iter().any(|p| p.seq == seq && !p.retracted));
            if !held {
                return Ok(None);
            }
            st.producers.get(producer_id).map_or(0, |e| e.epoch)
        };
        let marker = crate::raft::types::TxnMarker {
            producer_id,
            producer_epoch: epoch,
            commit: false,
            coordinator_epoch: -1,
            now_ms: -1,
            ending: None,
        };
        let note = chronik_wire::control::Note::Retracts { seq };
        self.write_marker(wb, &marker, Some(note), term)
    }

    fn append_checked(
        &self,
        wb: &mut WriteBatch,
        h: BatchHeader,
        records: &[u8],
        term: i32,
        log_append_time: Option<i64>,
    ) -> Result<AppendedInto, AppendError> {
        let mut st = self.state.lock().unwrap();
        if self.deleted.load(Ordering::Acquire) {
            return Err(AppendError::Deleted);
        }
        if self.store.is_failed() {
            return Err(AppendError::Storage(StoreError::Failed(
                "an earlier write failed".into(),
            )));
        }
        if h.has_producer_id() && !h.is_control() {
            if let SequenceCheck::Duplicate(b) = st.producers.check(
                h.producer_id,
                h.producer_epoch,
                h.base_sequence,
                h.last_sequence(),
            )? {
                return Ok(AppendedInto::Duplicate {
                    base_offset: b.first_offset,
                });
            }
        }
        // After the duplicate check: a retry of a batch written before a
        // demotion is still answered with its offset.
        home_role::check_produce(st.role)?;
        let base = st.next_offset;
        let last = base + h.last_offset_delta as i64;
        let latest = st.epochs.last().map(|(e, _)| *e).unwrap_or(0);
        let (epoch, epoch_base) = stamp_epoch(
            term,
            st.epoch_base,
            latest,
            st.own_latest,
            epoch_floor(st.role),
        );
        st.epoch_base = epoch_base;
        self.epoch_base.store(epoch_base, Ordering::Release);
        if note_epoch(&mut st, epoch, base) {
            st.own_latest = true;
            self.current_epoch.fetch_max(epoch, Ordering::AcqRel);
            self.put_record(wb, &st, self.log_start_offset());
        }
        let stamped = batch::stamp(records, base, epoch, log_append_time);
        let max_ts = log_append_time.unwrap_or(h.max_timestamp);
        if self.put_batch(wb, &mut st, &h, base, &stamped, max_ts) {
            self.put_record(wb, &st, self.log_start_offset());
        }
        self.log_end.store(last + 1, Ordering::Release);
        drop(st);
        metrics::counter!("chronik_produced_records_total").increment(h.records_count as u64);
        metrics::counter!("chronik_produced_bytes_total").increment(records.len() as u64);
        Ok(AppendedInto::New { base, last })
    }

    /// Validates, deduplicates, assigns offsets and queues a produced batch
    /// to the store on its own (no replication).
    pub fn append(
        self: &Arc<Self>,
        records: &[u8],
        cfg: &EffectiveConfig,
        now_ms: i64,
    ) -> Result<Appended, AppendError> {
        Self::check_batch(records, cfg)?;
        let mut wb = WriteBatch::default();
        let epoch = self.leader_epoch();
        // The lock keeps the store's queue in offset order.
        let _order = self.submit_order.lock().unwrap();
        let append_time = cfg.log_append_time.then_some(now_ms);
        match self.append_into(&mut wb, records, epoch, append_time)? {
            AppendedInto::Duplicate { base_offset } => Ok(Appended::Duplicate { base_offset }),
            AppendedInto::New { base, last } => {
                let (tx, rx) = oneshot::channel();
                // Weak: the writer thread must never hold the last reference to a
                // log (and so to the store), or dropping it there would deadlock.
                let me = Arc::downgrade(self);
                self.store.submit(
                    wb,
                    Box::new(move |r| {
                        if let (Ok(()), Some(me)) = (&r, me.upgrade()) {
                            me.committed(last + 1);
                        }
                        let _ = tx.send(r);
                    }),
                );
                Ok(Appended::Pending {
                    base_offset: base,
                    done: rx,
                })
            }
        }
    }

    /// Everything below `to` is written: move the high watermark and wake
    /// long-polling fetches.
    pub fn committed(&self, to: i64) {
        self.advance_high_watermark(to)
    }

    fn advance_high_watermark(&self, to: i64) {
        if self.high_watermark.fetch_max(to, Ordering::AcqRel) < to {
            // Only partitions the home dc-link reports mirror ends for
            // (an RPO or global_quorum at home) keep commit times: nothing
            // else would ever prune them.
            if self.mirror_acks.borrow().1.is_some() {
                self.commit_times
                    .lock()
                    .unwrap()
                    .committed(to, crate::rpo::clock_ms());
            }
            self.wake_waiters();
        }
    }

    fn wake_waiters(&self) {
        let waiters = std::mem::take(&mut *self.waiters.lock().unwrap());
        for w in waiters {
            if let Some(n) = w.upgrade() {
                n.notify_one();
            }
        }
    }

    /// Records mirror regions' durable log ends (offsets only move forward).
    pub fn report_mirror_acks(
        &self,
        acks: &std::collections::BTreeMap<String, i64>,
        required: usize,
    ) {
        self.mirror_acks.send_modify(|(known, req)| {
            for (region, off) in acks {
                let e = known.entry(region.clone()).or_insert(*off);
                *e = (*e).max(*off);
            }
            *req = Some(required);
        });
        self.mirror_acks_epoch
            .store(self.leader_epoch(), Ordering::Release);
        if let Some(m) = self.mirrored_through() {
            self.commit_times.lock().unwrap().mirrored(m);
        }
        // The high watermark that global_quorum consumers see may have moved.
        self.wake_waiters();
    }

    /// Drops what the home dc-link reported about the mirrors: after a role
    /// change or a cut of this log, ends reported against the old log or
    /// the old home say nothing about this one. The dc-link reports again
    /// within a second; until then no mirror end counts.
    pub fn forget_mirror_acks(&self) {
        self.mirror_acks.send_replace(Default::default());
        self.mirror_acks_epoch.store(-1, Ordering::Release);
        *self.commit_times.lock().unwrap() = Default::default();
    }

    /// Produce's decision for a batch of a topic whose RPO is enforced:
    /// `alone` as the span decides it, held so that no producer's later
    /// batch is taken while an earlier one was refused.
    pub fn rpo_in_order(
        &self,
        pid: i64,
        epoch: i16,
        base_seq: i32,
        alone: crate::rpo::Decision,
    ) -> crate::rpo::Decision {
        self.rpo_refused
            .lock()
            .unwrap()
            .decide(pid, epoch, base_seq, alone)
    }

    /// The RPO's at-risk span of this partition at home (see `crate::rpo`);
    /// `None` until the home dc-link has reported the mirrors' ends to this
    /// broker, or when nothing says when the oldest unmirrored record was
    /// committed.
    pub fn rpo_span(&self, now_ms: i64) -> Option<crate::rpo::Span> {
        let mirrored = self.mirrored_through()?;
        let floor = self.log_start_offset().max(self.home_since());
        self.commit_times
            .lock()
            .unwrap()
            .span(mirrored, floor, self.high_watermark(), now_ms)
    }

    /// The lowest log end the home dc-link reported for a mirror region
    /// (`None`: no report, or no mirror): the cleaner keeps tombstones at
    /// or above it, so no mirror misses a delete.
    pub fn slowest_mirror_end(&self) -> Option<i64> {
        let acks = self.mirror_acks.borrow();
        acks.1.and(acks.0.values().copied().min())
    }

    /// For a `global_quorum` topic at home: the offset below which enough
    /// mirror regions hold the log, as the home dc-link last reported;
    /// `None` until it has reported to this leader.
    pub fn mirrored_through(&self) -> Option<i64> {
        let acks = self.mirror_acks.borrow();
        let required = acks.1?;
        if required == 0 {
            return Some(i64::MAX);
        }
        let mut ends: Vec<i64> = acks.0.values().copied().collect();
        ends.sort_unstable_by(|a, b| b.cmp(a));
        Some(ends.get(required - 1).copied().unwrap_or(i64::MIN))
    }

    /// Whether the mirror ends this broker holds were reported while it
    /// led in its current epoch. Until then the `global_quorum` high
    /// watermark it would show can be below what its predecessor showed:
    /// ListOffsets answers a retriable error rather than let a consumer
    /// see the log shrink (as Kafka does for a leader whose high
    /// watermark is not known yet, KIP-207).
    pub fn mirror_view_current(&self) -> bool {
        self.mirror_acks_epoch.load(Ordering::Acquire) == self.leader_epoch()
    }

    /// The high watermark consumers see. For a `global_quorum` topic at
    /// home it stops where the required mirror regions hold the log: a
    /// record only the home region holds can still be lost in a failover,
    /// so no consumer may act on it yet.
    pub fn visible_high_watermark(&self, wait_for_mirrors: bool) -> i64 {
        let hw = self.high_watermark();
        if !wait_for_mirrors {
            return hw;
        }
        // What an earlier home wrote is committed here already.
        let floor = self.log_start_offset().max(self.home_since());
        hw.min(self.mirrored_through().unwrap_or(floor).max(floor))
    }

    /// Resolves once enough mirror regions hold everything below `offset`.
    pub async fn wait_mirrored(&self, offset: i64) {
        let mut rx = self.mirror_acks.subscribe();
        let _ = rx
            .wait_for(|(known, req)| {
                req.is_some_and(|r| known.values().filter(|o| **o >= offset).count() >= r)
            })
            .await;
    }

    /// Resolves once the high watermark reaches `offset`.
    pub async fn wait_high_watermark(&self, offset: i64) {
        let wake = Arc::new(Notify::new());
        loop {
            let woken = wake.notified();
            tokio::pin!(woken);
            woken.as_mut().enable();
            // Registered before the check, so an append in between wakes us.
            self.register_waiter(&wake);
            if self.high_watermark() >= offset {
                return;
            }
            woken.await;
        }
    }

    /// Asks to be woken when the high watermark next moves. Registration is
    /// weak, so an abandoned long-poll costs nothing once it is dropped.
    pub fn register_waiter(&self, n: &Arc<Notify>) {
        let mut w = self.waiters.lock().unwrap();
        if w.len() >= 64 {
            w.retain(|x| x.strong_count() > 0);
        }
        w.push(Arc::downgrade(n));
    }

    /// Whole batches from the one containing `offset`, up to `max_bytes`
    /// (at least one batch when `min_one`, so a batch larger than the limit
    /// cannot stall a consumer), never past the high watermark.
    pub fn read(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
    ) -> Result<ReadResult, ReadError> {
        self.read_below(offset, max_bytes, min_one, i64::MAX)
    }

    /// [`PartitionLog::read`], stopping at `limit` too when it is below the
    /// high watermark (see [`PartitionLog::visible_high_watermark`]); the
    /// high watermark answered is the lower of the two.
    pub fn read_below(
        &self,
        offset: i64,
        max_bytes: usize,
        min_one: bool,
        limit: i64,
    ) -> Result<ReadResult, ReadError> {
        let hw = self.high_watermark().min(limit);
        let start = self.log_start_offset();
        let end = self.log_end_offset();
        if offset < start || offset > end {
            return Err(ReadError::OutOfRange { offset, start, end });
        }
        let mut out = BytesMut::new();
        if offset < hw {
            let mut it = self.store.log_iter(CF_LOG, self.log_id);
            it.seek_for_prev(log_key(self.log_id, offset));
            if it.valid() {
                let v = it.value().unwrap_or_default();
                let covers = BatchHeader::parse(v)
                    .map(|h| h.last_offset() >= offset)
                    .unwrap_or(false);
                if !covers {
                    it.next();
                }
            } else {
                it.seek(log_key(self.log_id, offset));
            }
            while it.valid() {
                let Some((_, base)) = it.key().and_then(split_log_key) else {
                    break;
                };
                if base >= hw {
                    break;
                }
                let v = it.value().unwrap_or_default();
                if out.len() + v.len() > max_bytes && !(min_one && out.is_empty()) {
                    break;
                }
                out.extend_from_slice(v);
                if out.len() >= max_bytes {
                    break;
                }
                it.next();
            }
            it.status().map_err(StoreError::from)?;
        }
        Ok(ReadResult {
            records: out.freeze(),
            high_watermark: hw,
            log_start_offset: self.log_start_offset(),
        })
    }

    /// Kafka's ListOffsets by timestamp: the first record at or after `ts`,
    /// as (offset, its timestamp). Only the one batch that contains it is
    /// decoded (decompressing if needed).
    pub fn offset_for_timestamp(&self, ts: i64) -> Result<Option<(i64, i64)>, StoreError> {
        let hw = self.high_watermark();
        let entry = self
            .store
            .index_entries(self.log_id)?
            .into_iter()
            .take_while(|e| e.base_offset < hw)
            .find(|e| e.max_timestamp >= ts);
        let Some(e) = entry else { return Ok(None) };
        self.find_in_batch(e, |rec_ts| rec_ts >= ts)
    }

    /// The record with the largest timestamp (ListOffsets MAX_TIMESTAMP).
    pub fn max_timestamp_offset(&self) -> Result<Option<(i64, i64)>, StoreError> {
        let hw = self.high_watermark();
        let mut best: Option<IndexEntry> = None;
        for e in self
            .store
            .index_entries(self.log_id)?
            .into_iter()
            .take_while(|e| e.base_offset < hw)
        {
            if best
                .map(|b| e.max_timestamp > b.max_timestamp)
                .unwrap_or(true)
            {
                best = Some(e);
            }
        }
        let Some(e) = best else { return Ok(None) };
        self.find_in_batch(e, |rec_ts| rec_ts >= e.max_timestamp)
    }

    fn find_in_batch(
        &self,
        e: IndexEntry,
        pred: impl Fn(i64) -> bool,
    ) -> Result<Option<(i64, i64)>, StoreError> {
        let raw = self
            .store
            .db()
            .get_cf(self.store.cf(CF_LOG), log_key(self.log_id, e.base_offset))?
            .ok_or_else(|| StoreError::Corrupt {
                key: format!("log {} @{}", self.log_id, e.base_offset),
                detail: "indexed batch missing".into(),
            })?;
        let mut buf = Bytes::from(raw);
        let set = kafka_protocol::records::RecordBatchDecoder::decode(&mut buf).map_err(|err| {
            StoreError::Corrupt {
                key: format!("log {} @{}", self.log_id, e.base_offset),
                detail: err.to_string(),
            }
        })?;
        Ok(set
            .records
            .iter()
            .find(|r| pred(r.timestamp))
            .map(|r| (r.offset, r.timestamp))
            .or(Some((e.base_offset, e.max_timestamp))))
    }

    /// Where `retention.ms` and `retention.bytes` would move the log start
    /// (the base offset of the first batch to keep, or the high watermark),
    /// if past the current one. The leader decides this and proposes it as a
    /// trim ([`PartitionLog::trim_into`] through the Raft log), so every
    /// replica cuts at the same offset and the partition record is only ever
    /// written by the apply path.
    pub fn retention_cutoff(
        &self,
        cfg: &EffectiveConfig,
        now_ms: i64,
    ) -> Result<Option<i64>, StoreError> {
        let hw = self.high_watermark();
        let entries = self.store.index_entries(self.log_id)?;
        let mut remaining: i64 = entries.iter().map(|e| e.size as i64).sum();
        let mut cut = 0;
        for e in &entries {
            if e.last_offset >= hw {
                break;
            }
            let expired =
                cfg.retention_ms >= 0 && e.max_timestamp < now_ms.saturating_sub(cfg.retention_ms);
            let oversize =
                cfg.retention_bytes >= 0 && remaining - e.size as i64 >= cfg.retention_bytes;
            if !(expired || oversize) {
                break;
            }
            remaining -= e.size as i64;
            cut += 1;
        }
        if cut == 0 {
            return Ok(None);
        }
        let new_start = entries
            .get(cut)
            .map(|e| e.base_offset)
            .unwrap_or(entries[cut - 1].last_offset + 1);
        Ok((new_start > self.log_start_offset()).then_some(new_start))
    }

    /// The leader's cleaning pass over this log (see [`crate::compaction`]),
    /// read from the store; `None` when the log is not due. Proposed as
    /// `Command::Compact` and applied by [`PartitionLog::compact_into`].
    pub fn plan_compaction(
        &self,
        policy: &crate::compaction::Policy,
        now_ms: i64,
        tombstone_floor: i64,
        limits: crate::compaction::Limits,
    ) -> Result<
        Option<(crate::compaction::Plan, crate::compaction::PassStats)>,
        crate::compaction::PlanError,
    > {
        use crate::compaction::{due, KeyMap, Pass, PassStats, Plan};
        let (cleaned, epochs, aborted, stable) = {
            let st = self.state.lock().unwrap();
            (
                st.cleaned.clone().unwrap_or_default(),
                st.epochs.clone(),
                st.txns.aborted.clone(),
                // Open transactions may still abort: their records, and
                // everything after, wait.
                st.txns.last_stable_offset(self.high_watermark()),
            )
        };
        let entries = self.store.index_entries(self.log_id)?;
        let Some(clean_end) = due(&entries, stable, &cleaned, policy, now_ms) else {
            return Ok(None);
        };
        let mut stats = PassStats::default();
        let mut map = KeyMap::new(limits.key_map_bytes);
        self.each_batch_below(clean_end, |b| {
            stats.bytes_read += b.len() as u64;
            if crate::compaction::remove_aborted(b, &aborted).is_some() {
                map.skip_batch(b)?;
            } else {
                map.add_batch(b)?;
            }
            Ok(!map.full())
        })?;
        if map.end == i64::MIN {
            return Ok(None); // trimmed away meanwhile
        }
        let pass = Pass {
            map: &map,
            cleaned: &cleaned,
            policy,
            now_ms,
            tombstone_floor,
        };
        let mut plan = Plan {
            rewrites: Vec::new(),
            end: map.end.min(clean_end),
            through: None,
            now_ms,
            tombstone_horizon: None,
        };
        let (map_end, mut rewritten) = (plan.end, 0usize);
        self.each_batch_below(map_end, |b| {
            if let Some((removal, records)) = crate::compaction::remove_aborted(b, &aborted) {
                stats.records_removed += records as u64;
                plan.rewrites.push(removal);
                return Ok(true);
            }
            let c = pass.clean_batch(b)?;
            stats.records_removed += c.records_removed;
            if let Some(h) = c.tombstone_horizon {
                plan.tombstone_horizon = Some(plan.tombstone_horizon.map_or(h, |p| p.min(h)));
            }
            if let Some(r) = c.rewrite {
                rewritten += r.bytes.len();
                plan.rewrites.push(r);
            }
            if rewritten >= limits.rewrite_bytes {
                // The rest waits for the next pass: one Raft entry stays small.
                plan.end = c.next_offset;
                return Ok(false);
            }
            Ok(true)
        })?;
        // Named so that a replica whose log was cut back and refilled from
        // another history there does not apply the pass.
        plan.through = chronik_wire::epochs::entry_at(&epochs, plan.end - 1);
        Ok(Some((plan, stats)))
    }

    /// Calls `f` with each stored batch from the log start that starts below
    /// `end`, until it returns false.
    fn each_batch_below(
        &self,
        end: i64,
        mut f: impl FnMut(&[u8]) -> Result<bool, crate::compaction::CompactError>,
    ) -> Result<(), crate::compaction::PlanError> {
        let mut it = self.store.log_iter(CF_LOG, self.log_id);
        it.seek_to_first();
        while it.valid() {
            let Some((_, base)) = it.key().and_then(split_log_key) else {
                break;
            };
            if base >= end || !f(it.value().unwrap_or_default())? {
                break;
            }
            it.next();
        }
        it.status().map_err(StoreError::from)?;
        Ok(())
    }

    /// A cleaning pass, applied from the partition's Raft log on every
    /// replica: the leader's rewrites are written as they are, all or none.
    /// None are when this log no longer holds what the leader cleaned (a
    /// batch differs, or the log was cut back below the pass's end and
    /// refilled): then nothing changes and the next pass starts over.
    /// Returns whether the pass was applied. The caller writes every
    /// earlier entry first (this reads the store).
    pub fn compact_into(
        &self,
        wb: &mut WriteBatch,
        c: &crate::compaction::Plan,
    ) -> Result<bool, StoreError> {
        let mut st = self.state.lock().unwrap();
        if st.next_offset < c.end
            || chronik_wire::epochs::entry_at(&st.epochs, c.end - 1) != c.through
        {
            return Ok(false);
        }
        let mut changes = Vec::with_capacity(c.rewrites.len());
        for r in &c.rewrites {
            let key = log_key(self.log_id, r.base_offset);
            let stored = self.store.db().get_cf(self.store.cf(CF_LOG), key)?;
            // The batch's index entry follows from the batch (see `put_batch`).
            let entry = stored.as_deref().and_then(|b| {
                let h = BatchHeader::parse(b).ok().filter(|h| h.crc == r.crc)?;
                Some(IndexEntry {
                    base_offset: r.base_offset,
                    last_offset: h.last_offset(),
                    max_timestamp: h.max_timestamp,
                    size: b.len() as u32,
                })
            });
            let Some(entry) = entry else {
                return Ok(false);
            };
            changes.push((key, entry, r));
        }
        let mut freed = 0u64;
        for (key, entry, r) in changes {
            freed += entry.size as u64;
            if r.bytes.is_empty() {
                wb.delete_cf(self.store.cf(CF_LOG), key);
                wb.delete_cf(self.store.cf(CF_INDEX), key);
                continue;
            }
            freed -= r.bytes.len() as u64;
            wb.put_cf(self.store.cf(CF_LOG), key, &r.bytes);
            let idx = IndexEntry {
                size: r.bytes.len() as u32,
                ..entry
            };
            wb.put_cf(self.store.cf(CF_INDEX), key, idx.encode());
        }
        st.size_bytes = st.size_bytes.saturating_sub(freed);
        let start = self.log_start_offset();
        let cleaned = st.cleaned.clone().unwrap_or_default();
        st.cleaned = Some(cleaned.after_pass(c.end, c.now_ms, c.tombstone_horizon, start));
        self.put_record(wb, &st, start);
        metrics::counter!("chronik_cleaner_freed_bytes_total").increment(freed);
        Ok(true)
    }

    /// The log end when this copy last became the home (0: never).
    pub fn home_since(&self) -> i64 {
        self.state.lock().unwrap().home_since.unwrap_or(0)
    }

    /// The home role this copy's log gave it (`None`: never moved).
    pub fn role(&self) -> Option<Role> {
        let v = self.role_copy.load(Ordering::Acquire);
        (v != 0).then_some(Role {
            home: v & 1 == 1,
            epoch: v >> 1,
        })
    }

    /// Applies a `SetRole` entry: from here on, produce or mirror appends
    /// are refused at apply as the role says. A promotion first retracts
    /// the old home's commits that `settle` finds did not reach this
    /// region whole, then aborts what the old home left open.
    pub fn set_role_into(
        &self,
        wb: &mut WriteBatch,
        next: Role,
        settle: &Settled,
        term: i32,
    ) -> Result<Role, AppendError> {
        let mut st = self.state.lock().unwrap();
        if self.deleted.load(Ordering::Acquire) {
            return Err(AppendError::Deleted);
        }
        let role = home_role::apply(st.role, next)?;
        if st.role != Some(role) {
            let promoted = role.home && !st.role.is_some_and(|r| r.home);
            if promoted {
                st.home_since = Some(st.next_offset);
                // The home's own commits are whole by construction.
                *self.settled.lock().unwrap() = None;
            } else if !role.home && st.role.is_some_and(|r| r.home) {
                // Its own commits are whole; what the new home sends is
                // not, until counted.
                self.hold_from(st.next_offset);
            }
            st.role = Some(role);
            self.role_copy
                .store(encode_role(st.role), Ordering::Release);
            self.put_record(wb, &st, self.log_start_offset());
            let open = st.txns.open_producers();
            let epochs: Vec<i16> = open
                .iter()
                .map(|p| st.producers.get(*p).map_or(0, |e| e.epoch))
                .collect();
            drop(st);
            self.forget_mirror_acks();
            if promoted {
                // The transactions the old home left open here had their
                // coordinator in the old home's region, which no longer
                // decides for this copy: they are aborted, never half
                // applied. Deterministic (the log's own open set), so every
                // replica writes the same markers.
                let parts = self.commit_parts();
                for (producer_id, seq) in chronik_wire::settle::retractions_in(
                    &settle.retract_from,
                    settle.view_end,
                    &parts,
                ) {
                    if self.retract_into(wb, producer_id, seq, term)?.is_some() {
                        tracing::warn!(
                            topic = %self.topic,
                            partition = self.partition,
                            producer_id,
                            commit = seq,
                            "promotion retracts a commit of the lost home that did not reach this region whole"
                        );
                        metrics::counter!("chronik_txn_commits_retracted_total", "topic" => self.topic.to_string())
                            .increment(1);
                    }
                }
                for (producer_id, producer_epoch) in open.into_iter().zip(epochs) {
                    let marker = crate::raft::types::TxnMarker {
                        producer_id,
                        producer_epoch,
                        commit: false,
                        coordinator_epoch: -1,
                        now_ms: -1,
                        ending: None,
                    };
                    self.marker_into(wb, &marker, term)?;
                }
            }
        }
        Ok(role)
    }

    /// DeleteRecords, applied from the partition's Raft log on every
    /// replica: the log start moves to exactly `offset` (which may fall
    /// inside a batch, as in Kafka), and every batch wholly below it is
    /// removed. Returns the new log start offset.
    pub fn trim_into(&self, wb: &mut WriteBatch, offset: i64) -> Result<i64, ReadError> {
        let mut st = self.state.lock().unwrap();
        let start = self.log_start_offset();
        if offset < 0 || offset > st.next_offset {
            return Err(ReadError::OutOfRange {
                offset,
                start,
                end: st.next_offset,
            });
        }
        if offset <= start {
            return Ok(start);
        }
        // Read from the store: the caller has written every earlier append
        // (the state machine writes its pending batch before a trim), or a
        // batch below `offset` would survive here and not on a replica that
        // applied it in an earlier write.
        let entries = self.store.index_entries(self.log_id)?;
        let gone: Vec<&crate::storage::IndexEntry> = entries
            .iter()
            .take_while(|e| e.last_offset < offset)
            .collect();
        if let Some(last) = gone.last() {
            let (from, to) = (
                log_key(self.log_id, 0),
                log_key(self.log_id, last.last_offset + 1),
            );
            wb.delete_range_cf(self.store.cf(CF_LOG), from, to);
            wb.delete_range_cf(self.store.cf(CF_INDEX), from, to);
        }
        truncate_epochs_from_start(&mut st.epochs, offset);
        st.txns.trim(offset);
        self.put_record(wb, &st, offset);
        drop(st);
        let freed: u64 = gone.iter().map(|e| e.size as u64).sum();
        let mut st = self.state.lock().unwrap();
        st.size_bytes = st.size_bytes.saturating_sub(freed);
        self.log_start.fetch_max(offset, Ordering::AcqRel);
        Ok(offset)
    }

    /// Failback, applied from the partition's Raft log on every replica:
    /// removes every record from `offset` on, the suffix a copy wrote as the
    /// home after the other regions had moved the home away. Only a copy
    /// demoted to a mirror is cut, and only between batches (a divergence
    /// point always is one: mirrors copy whole batches). The epoch history
    /// loses the epochs that start at or after the cut, and each producer
    /// that wrote in the suffix gets back the state the remaining log gives
    /// it. The caller writes `wb` (after every earlier entry: this reads the
    /// store) and then calls [`PartitionLog::reload`], which moves the high
    /// watermark back. Returns the batches removed (0 when the log already
    /// ends at or before `offset`: a replayed cut changes nothing).
    pub fn truncate_into(&self, wb: &mut WriteBatch, offset: i64) -> Result<u64, TruncateError> {
        let mut st = self.state.lock().unwrap();
        match st.role {
            Some(r) if !r.home => {}
            role => return Err(TruncateError::NotDemoted { role }),
        }
        let start = self.log_start_offset();
        if offset < start {
            return Err(TruncateError::OutOfRange {
                offset,
                start,
                end: st.next_offset,
            });
        }
        if offset >= st.next_offset {
            return Ok(0);
        }
        let entries = self.store.index_entries(self.log_id)?;
        if let Some(e) = entries
            .iter()
            .find(|e| e.base_offset < offset && e.last_offset >= offset)
        {
            return Err(TruncateError::InsideBatch {
                offset,
                base: e.base_offset,
                last: e.last_offset,
            });
        }
        let gone = &entries[entries.partition_point(|e| e.base_offset < offset)..];
        let (from, to) = (log_key(self.log_id, offset), log_key(self.log_id + 1, 0));
        wb.delete_range_cf(self.store.cf(CF_LOG), from, to);
        wb.delete_range_cf(self.store.cf(CF_INDEX), from, to);
        // Producers that wrote in the suffix are forgotten, as Kafka treats
        // a producer whose records retention removed: its next batch is taken
        // at any sequence number. Their acknowledged batches past the cut are
        // in the recovery topic, and a producer still running goes on from
        // there; a state rebuilt to the cut would refuse it
        // (OUT_OF_ORDER_SEQUENCE) and fail its batches in flight. What this
        // gives up: a retry of a batch from before the cut is not recognised
        // as a duplicate (it is then in both topics; nothing is lost).
        for pid in st.producers.written_from(offset) {
            wb.delete_cf(self.store.cf(CF_PRODUCERS), log_key(self.log_id, pid));
        }
        // A log cut back to its start keeps its first entry, as a log that
        // never held a record does: copies filled from there again then
        // carry the same history as their home.
        st.cleaned = st.cleaned.as_ref().map(|c| c.cut_back(offset));
        // A marker past the cut may end a transaction whose records stay:
        // it is open again (the new home's abort marker, mirrored, ends
        // it). Rebuilt from the batches that stay, since a cut commit
        // leaves no trace of where its transaction began.
        st.txns = self.scan_txns(&entries[..entries.len() - gone.len()])?;
        self.hold_from(offset);
        let first = st.epochs.first().copied();
        st.epochs.retain(|(_, o)| *o < offset);
        if st.epochs.is_empty() {
            st.epochs.extend(first.map(|(e, _)| (e, start)));
        }
        self.put_record(wb, &st, start);
        Ok(gone.len() as u64)
    }

    /// The transaction index of the stored batches `entries` (read from
    /// the store, in offset order).
    fn scan_txns(&self, entries: &[crate::storage::IndexEntry]) -> Result<TxnIndex, StoreError> {
        let mut txns = TxnIndex::default();
        for e in entries {
            let Some(bytes) = self
                .store
                .get_cf(CF_LOG, &log_key(self.log_id, e.base_offset))?
            else {
                continue;
            };
            let Ok(h) = BatchHeader::parse(&bytes) else {
                continue;
            };
            if !h.is_transactional() || !h.has_producer_id() {
                continue;
            }
            if h.is_control() {
                if let Some(marker) = chronik_wire::control::marker(&h, &bytes) {
                    txns.on_marker(h.producer_id, marker, e.base_offset);
                }
            } else {
                txns.on_data(h.producer_id, e.base_offset);
            }
        }
        txns.trim(self.log_start_offset());
        Ok(txns)
    }

    /// Adds the removal of this replica's data to `wb`, leaving an empty
    /// partition (its replica moved to other brokers); call
    /// [`PartitionLog::reload`] once `wb` is written.
    pub fn clear_into(&self, wb: &mut WriteBatch) {
        let (from, to) = (log_key(self.log_id, 0), log_key(self.log_id + 1, 0));
        for cf in [CF_LOG, CF_INDEX, CF_PRODUCERS] {
            wb.delete_range_cf(self.store.cf(cf), from, to);
        }
        Self::init_record(&self.store, wb, self.log_id);
    }

    /// Marks the partition deleted and adds the removal of all its data to
    /// `wb`. Appends racing with the delete fail with [`AppendError::Deleted`].
    pub fn delete_into(&self, wb: &mut WriteBatch) {
        let _st = self.state.lock().unwrap();
        self.deleted.store(true, Ordering::Release);
        let (from, to) = (log_key(self.log_id, 0), log_key(self.log_id + 1, 0));
        for cf in [CF_LOG, CF_INDEX, CF_PRODUCERS] {
            wb.delete_range_cf(self.store.cf(cf), from, to);
        }
        wb.delete_cf(self.store.cf(CF_META), partition_key(self.log_id));
    }

    /// Every stored batch from the log start up to the high watermark,
    /// concatenated: what replica comparisons and debugging read.
    pub fn dump(&self) -> Result<Vec<u8>, StoreError> {
        self.dump_range(0, i64::MAX)
    }

    /// As [`PartitionLog::dump`], from the batch that holds `from`, and
    /// only batches that start below `to`.
    pub fn dump_range(&self, from: i64, to: i64) -> Result<Vec<u8>, StoreError> {
        let hw = self.high_watermark().min(to);
        let mut it = self.store.log_iter(CF_LOG, self.log_id);
        // The batch holding `from` starts at or before it.
        it.seek_for_prev(log_key(self.log_id, from));
        if !it.valid() {
            it.seek_to_first();
        }
        let mut out = Vec::new();
        while it.valid() {
            let (_, base) = split_log_key(it.key().unwrap_or_default()).unwrap_or((0, i64::MAX));
            if base >= hw {
                break;
            }
            out.extend_from_slice(it.value().unwrap_or_default());
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    pub fn is_deleted(&self) -> bool {
        self.deleted.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::build;
    use chronik_topology::{Durability, TopicDefaults};

    fn cfg() -> EffectiveConfig {
        EffectiveConfig::resolve(&Default::default(), &TopicDefaults::default())
    }

    fn open(store: &Arc<Store>) -> Arc<PartitionLog> {
        PartitionLog::open(store.clone(), 1, "t".into(), 0).unwrap()
    }

    async fn append(log: &Arc<PartitionLog>, b: &[u8]) -> i64 {
        match log.append(b, &cfg(), 0).unwrap() {
            Appended::Pending { base_offset, done } => {
                done.await.unwrap().unwrap();
                base_offset
            }
            Appended::Duplicate { base_offset } => base_offset,
        }
    }

    fn transactional(n: usize, pid: i64, epoch: i16, seq: i32) -> Vec<u8> {
        build::transactional(build::simple(n, 100, Some((pid, epoch, seq))))
    }

    async fn mark(
        log: &Arc<PartitionLog>,
        store: &Store,
        pid: i64,
        epoch: i16,
        commit: bool,
    ) -> Option<i64> {
        let mut wb = WriteBatch::default();
        let marker = crate::raft::types::TxnMarker {
            producer_id: pid,
            producer_epoch: epoch,
            commit,
            coordinator_epoch: 1,
            now_ms: 1,
            ending: None,
        };
        let at = log.marker_into(&mut wb, &marker, 1).unwrap();
        store.write(wb).await.unwrap();
        log.committed(log.log_end_offset());
        at
    }

    #[tokio::test]
    async fn markers_end_transactions_fence_late_batches_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = PartitionLog::open(store.clone(), 9, "tx".into(), 0).unwrap();
        assert_eq!(append(&log, &transactional(2, 5, 0, 0)).await, 0);
        assert_eq!(append(&log, &transactional(1, 6, 0, 0)).await, 2);
        assert_eq!(log.last_stable_offset(log.high_watermark()), 0);
        assert_eq!(mark(&log, &store, 5, 0, true).await, Some(3));
        assert_eq!(log.last_stable_offset(log.high_watermark()), 2);
        // An abort at a bumped epoch (a fenced producer's transaction).
        assert_eq!(mark(&log, &store, 6, 1, false).await, Some(4));
        assert_eq!(log.last_stable_offset(log.high_watermark()), 5);
        let aborted = crate::txn_index::Aborted {
            producer_id: 6,
            first: 2,
            last: 4,
        };
        assert_eq!(log.aborted_in(0, 5), vec![aborted]);
        // A repeated marker writes nothing.
        assert_eq!(mark(&log, &store, 6, 1, false).await, None);
        assert_eq!(log.log_end_offset(), 5);
        // The fenced epoch's late batch is refused.
        assert!(matches!(
            log.append(&transactional(1, 6, 0, 1), &cfg(), 0),
            Err(AppendError::Sequence(SequenceError::FencedEpoch { .. }))
        ));
        let reopened = PartitionLog::open(store.clone(), 9, "tx".into(), 0).unwrap();
        assert_eq!(reopened.aborted_in(0, 5), vec![aborted]);
        assert_eq!(reopened.last_stable_offset(5), 5);
        // Every batch stored is a valid v2 batch; the markers are control batches.
        let dump = reopened.dump().unwrap();
        let batches = crate::batch::split_stored(&dump).unwrap();
        let controls: Vec<i64> = batches
            .iter()
            .filter(|(h, _)| h.is_control())
            .map(|(h, _)| h.base_offset)
            .collect();
        assert_eq!(controls, vec![3, 4]);
    }

    #[tokio::test]
    async fn a_noted_commit_reaches_every_partition_once_and_a_promotion_can_retract_it() {
        use crate::raft::types::TxnMarker;
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let with_data = PartitionLog::open(store.clone(), 4, "tx".into(), 0).unwrap();
        let without = PartitionLog::open(store.clone(), 5, "tx".into(), 1).unwrap();
        append(&with_data, &transactional(3, 8, 2, 0)).await;
        let commit = |seq| TxnMarker {
            producer_id: 8,
            producer_epoch: 2,
            commit: true,
            coordinator_epoch: 1,
            now_ms: 1,
            ending: Some((seq, 2)),
        };
        for log in [&with_data, &without] {
            for attempt in 0..2 {
                let mut wb = WriteBatch::default();
                let at = log.marker_into(&mut wb, &commit(0), 1).unwrap();
                store.write(wb).await.unwrap();
                log.committed(log.log_end_offset());
                let want = (attempt == 0).then_some(log.log_end_offset() - 1);
                assert_eq!(at, want, "written once, retries skipped");
            }
        }
        assert_eq!(
            (with_data.log_end_offset(), without.log_end_offset()),
            (4, 1)
        );
        let part = with_data.state.lock().unwrap().txns.committed[&8][0];
        assert_eq!(
            (part.seq, part.parts, part.first, part.marker),
            (0, 2, Some(0), 3)
        );
        let settle = Settled {
            retract_from: [(8, 0)].into_iter().collect(),
            view_end: Some(4),
        };
        for (home, epoch) in [(false, 2), (true, 3)] {
            let mut wb = WriteBatch::default();
            with_data
                .set_role_into(&mut wb, Role { home, epoch }, &settle, 1)
                .unwrap();
            store.write(wb).await.unwrap();
        }
        with_data.committed(with_data.log_end_offset());
        assert_eq!(
            with_data.log_end_offset(),
            5,
            "one retraction, written at the promotion"
        );
        let retracted = crate::txn_index::Aborted {
            producer_id: 8,
            first: 0,
            last: 4,
        };
        assert_eq!(with_data.aborted_in(0, 5), vec![retracted]);
        let reopened = PartitionLog::open(store.clone(), 4, "tx".into(), 0).unwrap();
        assert_eq!(
            reopened.aborted_in(0, 5),
            vec![retracted],
            "rebuilt from the batches"
        );
        // A mirror of this copy derives the same index from the same bytes.
        let mirror = PartitionLog::open(store.clone(), 6, "tx".into(), 0).unwrap();
        let mut wb = WriteBatch::default();
        mirror
            .mirror_into(&mut wb, &with_data.dump().unwrap(), 0, false)
            .unwrap();
        store.write(wb).await.unwrap();
        assert_eq!(mirror.aborted_in(0, 5), vec![retracted]);
    }

    #[test]
    fn a_mirror_holds_reads_before_commits_not_counted_whole() {
        use chronik_wire::control::{Marker, Note};
        let mut t = TxnIndex::default();
        let noted = |seq| Marker {
            commit: true,
            note: Some(Note::Ending { seq, parts: 2 }),
        };
        // Producer 1: commit 0 at 0..=2, commit 1 at 3..=5; producer 2:
        // commit 0 at 6..=7.
        for (pid, first, marker, seq) in [(1, 0, 2, 0), (1, 3, 5, 1), (2, 6, 7, 0)] {
            t.on_data(pid, first);
            t.on_marker(pid, noted(seq), marker);
        }
        let held = |from: &[(i64, i64)], view_end| {
            Settled {
                retract_from: from.iter().copied().collect(),
                view_end,
            }
            .hold_at(&t)
        };
        assert_eq!(held(&[], Some(8)), i64::MAX, "every commit counted whole");
        assert_eq!(
            held(&[(1, 1)], Some(8)),
            3,
            "producer 1's second commit is not"
        );
        assert_eq!(
            held(&[], Some(7)),
            6,
            "producer 2's arrived after the count"
        );
        assert_eq!(
            held(&[(1, 0)], None),
            0,
            "a partition not counted holds every commit"
        );
    }

    #[tokio::test]
    async fn a_promotion_aborts_the_transactions_the_old_home_left_open() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = PartitionLog::open(store.clone(), 4, "tx".into(), 0).unwrap();
        append(&log, &transactional(3, 8, 2, 0)).await;
        let mut wb = WriteBatch::default();
        log.set_role_into(
            &mut wb,
            Role {
                home: false,
                epoch: 2,
            },
            &Settled::default(),
            1,
        )
        .unwrap();
        store.write(wb).await.unwrap();
        assert_eq!(log.last_stable_offset(3), 0, "still open on a mirror");
        let mut wb = WriteBatch::default();
        log.set_role_into(
            &mut wb,
            Role {
                home: true,
                epoch: 3,
            },
            &Settled::default(),
            1,
        )
        .unwrap();
        store.write(wb).await.unwrap();
        assert_eq!(log.log_end_offset(), 4, "one abort marker");
        assert_eq!(log.last_stable_offset(4), 4);
        assert_eq!(
            log.aborted_in(0, 4),
            vec![crate::txn_index::Aborted {
                producer_id: 8,
                first: 0,
                last: 3
            }]
        );
    }

    #[tokio::test]
    async fn a_copy_holds_commits_it_may_hold_in_part_until_it_is_told_a_count() {
        use crate::raft::types::TxnMarker;
        use chronik_wire::control::{marker_batch, Note};
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = PartitionLog::open(store.clone(), 4, "tx".into(), 0).unwrap();
        let set_role = |log: &Arc<PartitionLog>, home, epoch| {
            let mut wb = WriteBatch::default();
            log.set_role_into(&mut wb, Role { home, epoch }, &Settled::default(), 1)
                .unwrap();
            wb
        };
        store.write(set_role(&log, true, 2)).await.unwrap();
        append(&log, &transactional(3, 8, 2, 0)).await;
        let mut wb = WriteBatch::default();
        let commit = TxnMarker {
            producer_id: 8,
            producer_epoch: 2,
            commit: true,
            coordinator_epoch: 1,
            now_ms: 1,
            ending: Some((0, 1)),
        };
        assert_eq!(log.marker_into(&mut wb, &commit, 1).unwrap(), Some(3));
        store.write(wb).await.unwrap();
        log.committed(4);
        log.hold_until_counted();
        assert_eq!(log.last_stable_offset(4), 4, "the home holds nothing");

        store.write(set_role(&log, false, 3)).await.unwrap();
        assert_eq!(log.last_stable_offset(4), 4, "its own commit stays visible");
        // The new home's commit over two partitions, its marker here first.
        let arriving = |base: i64| {
            let mut b = marker_batch(9, 0, true, 1, 1, Some(Note::Ending { seq: 0, parts: 2 }));
            b[..8].copy_from_slice(&base.to_be_bytes());
            // Above every epoch the old home stamped (see `epoch_floor`).
            b[12..16].copy_from_slice(&(4i32 << 16).to_be_bytes());
            b
        };
        mirror(&log, &store, &arriving(4), 4).await;
        assert_eq!(
            log.last_stable_offset(5),
            4,
            "arrived after the demotion: held"
        );
        log.set_settled(Settled {
            retract_from: Default::default(),
            view_end: Some(5),
        });
        assert_eq!(log.last_stable_offset(5), 5, "counted whole");

        // A restart forgets the count: everything is held until told again.
        let log = PartitionLog::open(store.clone(), 4, "tx".into(), 0).unwrap();
        log.hold_until_counted();
        assert_eq!(log.last_stable_offset(5), 0);
        log.set_settled(Settled {
            retract_from: Default::default(),
            view_end: Some(5),
        });
        log.hold_until_counted();
        assert_eq!(log.last_stable_offset(5), 5, "a told copy keeps its count");

        // A failback's cut: what arrives again at the cut is new here.
        let mut wb = WriteBatch::default();
        assert_eq!(log.truncate_into(&mut wb, 4).unwrap(), 1);
        store.write(wb).await.unwrap();
        log.reload().unwrap();
        mirror(&log, &store, &arriving(4), 4).await;
        assert_eq!(log.last_stable_offset(5), 4);
    }

    /// Writes `wb` and moves the high watermark, as the state machine does.
    async fn mirror(
        log: &Arc<PartitionLog>,
        store: &Arc<Store>,
        records: &[u8],
        base: i64,
    ) -> Mirrored {
        mirror_from(log, store, records, base, false).await
    }

    async fn mirror_from(
        log: &Arc<PartitionLog>,
        store: &Arc<Store>,
        records: &[u8],
        base: i64,
        from_log_start: bool,
    ) -> Mirrored {
        let mut wb = WriteBatch::default();
        let m = log
            .mirror_into(&mut wb, records, base, from_log_start)
            .unwrap();
        store.write(wb).await.unwrap();
        if m.appended {
            log.committed(m.log_end_offset);
        }
        m
    }

    #[tokio::test]
    async fn global_quorum_consumers_see_only_what_enough_mirrors_hold() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        for _ in 0..5 {
            append(&log, &build::simple(2, 100, None)).await;
        }
        assert_eq!(log.high_watermark(), 10);
        // Nothing reported yet (a new leader): nothing is visible.
        assert_eq!(log.mirrored_through(), None);
        assert_eq!(log.visible_high_watermark(true), 0);
        assert_eq!(log.visible_high_watermark(false), 10);
        // Two regions required: the second best decides.
        let acks = |v: &[(&str, i64)]| -> std::collections::BTreeMap<String, i64> {
            v.iter().map(|(r, o)| (r.to_string(), *o)).collect()
        };
        log.report_mirror_acks(&acks(&[("eu", 6)]), 2);
        assert_eq!(log.visible_high_watermark(true), 0);
        log.report_mirror_acks(&acks(&[("ap", 4)]), 2);
        assert_eq!(log.visible_high_watermark(true), 4);
        let r = log.read_below(0, 1 << 20, true, 4).unwrap();
        assert_eq!(r.high_watermark, 4);
        let batches = crate::batch::split_stored(&r.records).unwrap();
        assert_eq!(batches.last().unwrap().0.last_offset(), 3);
        // An offset between the visible and the local high watermark is in
        // range and answers nothing yet.
        let r = log.read_below(6, 1 << 20, true, 4).unwrap();
        assert!(r.records.is_empty());
        // Acks only move forward, and never past the local high watermark.
        log.report_mirror_acks(&acks(&[("ap", 2), ("eu", 12)]), 1);
        assert_eq!(log.visible_high_watermark(true), 10);
        log.report_mirror_acks(&Default::default(), 0);
        assert_eq!(log.mirrored_through(), Some(i64::MAX));
    }

    #[test]
    fn a_new_term_needs_a_new_mirror_report_before_its_view_counts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        log.note_term(3);
        assert!(!log.mirror_view_current(), "never reported");
        log.report_mirror_acks(&Default::default(), 1);
        assert!(log.mirror_view_current());
        // Leadership moved away and back: what it holds may predate what
        // its predecessor showed.
        log.note_term(5);
        assert!(!log.mirror_view_current());
        log.report_mirror_acks(&Default::default(), 1);
        assert!(log.mirror_view_current());
    }

    #[test]
    fn produced_epochs_never_go_back_and_rise_above_foreign_ones() {
        // A home region: the term is the epoch, and stays while it leads.
        assert_eq!(stamp_epoch(3, 0, 0, false, 0), (3, 0));
        assert_eq!(stamp_epoch(3, 0, 3, true, 0), (3, 0));
        assert_eq!(stamp_epoch(4, 0, 3, true, 0), (4, 0));
        // A mirror that held the home's epoch 16 and is now written here in
        // its own term 3: above 16, and the base keeps later terms above.
        assert_eq!(stamp_epoch(3, 0, 16, false, 0), (17, 14));
        assert_eq!(stamp_epoch(3, 14, 17, true, 0), (17, 14));
        assert_eq!(stamp_epoch(5, 14, 17, true, 0), (19, 14));
        // The same number copied from elsewhere is not ours to continue.
        assert_eq!(stamp_epoch(3, 14, 17, false, 0), (18, 15));
        // Promoted at fencing epoch 2: above 2 << 16 whatever the old home
        // stamped in its tenure, and the base keeps it there.
        let floor = epoch_floor(Some(Role {
            home: true,
            epoch: 2,
        }));
        assert_eq!(floor, 131_072);
        assert_eq!(stamp_epoch(3, 0, 0, false, floor), (131_072, 131_069));
        assert_eq!(
            stamp_epoch(4, 131_069, 131_072, true, floor),
            (131_073, 131_069)
        );
        assert_eq!(
            epoch_floor(Some(Role {
                home: false,
                epoch: 2
            })),
            0
        );
        assert_eq!(epoch_floor(None), 0);
    }

    /// Any sequence of produces (terms only grow) and mirror appends
    /// (epochs never below the log's newest): produced epochs never go
    /// back, and a produce after a mirrored epoch is strictly above it.
    #[test]
    fn stamp_epoch_holds_its_rules_over_random_histories() {
        let mut rng = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        for _ in 0..2_000 {
            let (mut term, mut base, mut latest, mut own) = (0i32, 0i32, 0i32, false);
            for _ in 0..40 {
                if next(3) == 0 {
                    latest += next(5) as i32;
                    own = false;
                } else {
                    term += next(3) as i32;
                    let (epoch, b) = stamp_epoch(term, base, latest, own, 0);
                    assert!(epoch >= latest);
                    assert!(own || epoch > latest, "{epoch} after foreign {latest}");
                    assert!(b >= base && epoch == term + b);
                    (base, latest, own) = (b, epoch, true);
                }
            }
        }
    }

    #[tokio::test]
    async fn a_promoted_mirror_stamps_epochs_above_the_mirrored_ones() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        let home = crate::batch::stamp(&build::simple(2, 100, None), 0, 16, None);
        assert!(mirror(&log, &store, &home, 0).await.appended);
        assert_eq!(log.leader_epoch(), 16);
        // Written here now, in this region's Raft term 3.
        let mut wb = WriteBatch::default();
        let AppendedInto::New { base, .. } = log
            .append_into(&mut wb, &build::simple(1, 200, None), 3, None)
            .unwrap()
        else {
            panic!("not new")
        };
        store.write(wb).await.unwrap();
        assert_eq!(base, 2);
        assert_eq!(log.epoch_history(), vec![(0, 0), (16, 0), (17, 2)]);
        assert_eq!(log.leader_epoch(), 17);
        // A new term here shows as a new epoch to clients before any write.
        log.note_term(4);
        assert_eq!(log.leader_epoch(), 18);
        // The base is durable.
        drop(log);
        let log = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        let mut wb = WriteBatch::default();
        log.append_into(&mut wb, &build::simple(1, 300, None), 4, None)
            .unwrap();
        store.write(wb).await.unwrap();
        assert_eq!(log.epoch_history(), vec![(0, 0), (16, 0), (17, 2), (18, 3)]);
    }

    #[tokio::test]
    async fn a_mirrored_chunk_whose_epoch_goes_back_is_refused_whole() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let copy = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        let stamped = |base: i64, epoch: i32| {
            crate::batch::stamp(&build::simple(2, 100, None), base, epoch, None).to_vec()
        };
        assert!(mirror(&copy, &store, &stamped(0, 5), 0).await.appended);
        // Epoch 7 then 3 in one chunk: nothing of it is written.
        let mut chunk = stamped(2, 7);
        chunk.extend_from_slice(&stamped(4, 3));
        let mut wb = WriteBatch::default();
        let e = copy.mirror_into(&mut wb, &chunk, 2, false).unwrap_err();
        assert!(
            matches!(
                e,
                AppendError::EpochRegressed {
                    offset: 4,
                    epoch: 3,
                    latest: 7
                }
            ),
            "{e:?}"
        );
        assert_eq!(crate::error::KafkaCode::kafka_code(&e), 74); // FENCED_LEADER_EPOCH
        assert_eq!(copy.log_end_offset(), 2);
        assert_eq!(copy.epoch_history(), vec![(0, 0), (5, 0)]);
        let mut wb = WriteBatch::default();
        assert!(copy.mirror_into(&mut wb, &stamped(2, 4), 2, false).is_err());
        // The same epoch, or a newer one, continues the log.
        assert!(mirror(&copy, &store, &stamped(2, 5), 2).await.appended);
        assert!(mirror(&copy, &store, &stamped(4, 9), 4).await.appended);
        assert_eq!(copy.epoch_history(), vec![(0, 0), (5, 0), (9, 4)]);
    }

    #[tokio::test]
    async fn mirrored_batches_keep_offsets_epochs_and_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let home = PartitionLog::open(store.clone(), 1, "home".into(), 0).unwrap();
        let copy = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        // Home batches in two leader epochs, one from an idempotent producer.
        for (epoch, b) in [
            (3, build::simple(3, 100, None)),
            (3, build::simple(2, 200, Some((7, 0, 0)))),
            (5, build::simple(4, 300, None)),
        ] {
            let mut wb = WriteBatch::default();
            let AppendedInto::New { last, .. } =
                home.append_into(&mut wb, &b, epoch, None).unwrap()
            else {
                panic!("not new")
            };
            store.write(wb).await.unwrap();
            home.committed(last + 1);
        }
        let all = home.dump().unwrap();
        let first_len = BatchHeader::parse(&all).unwrap().total_len();
        // A chunk that does not start at the log end is refused whole.
        let m = mirror(&copy, &store, &all[first_len..], 3).await;
        assert_eq!(
            m,
            Mirrored {
                log_end_offset: 0,
                appended: false
            }
        );
        assert_eq!(
            mirror(&copy, &store, &all[..first_len], 0)
                .await
                .log_end_offset,
            3
        );
        // A resend of what is there already changes nothing.
        assert!(!mirror(&copy, &store, &all[..first_len], 0).await.appended);
        assert_eq!(
            mirror(&copy, &store, &all[first_len..], 3)
                .await
                .log_end_offset,
            9
        );
        assert_eq!(copy.dump().unwrap(), all, "byte-identical");
        assert_eq!(copy.epoch_history(), home.epoch_history());
        assert_eq!(copy.epoch_history(), vec![(0, 0), (3, 0), (5, 5)]);
        assert_eq!(
            copy.leader_epoch(),
            5,
            "clients never see the mirror's epoch behind the home's"
        );
        assert_eq!(copy.producers(), home.producers());
        // A corrupted batch never reaches the log.
        let mut bad = all[..first_len].to_vec();
        bad[first_len - 1] ^= 1;
        let copy2 = PartitionLog::open(store.clone(), 3, "copy2".into(), 0).unwrap();
        assert!(copy2
            .mirror_into(&mut WriteBatch::default(), &bad, 0, false)
            .is_err());
        // Reopened, the copy still agrees.
        let again = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        assert_eq!(
            (again.log_end_offset(), again.epoch_history()),
            (9, home.epoch_history())
        );
    }

    #[tokio::test]
    async fn the_role_in_the_log_decides_what_applies_and_survives_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = PartitionLog::open(store.clone(), 3, "moving".into(), 0).unwrap();
        let set = |log: &PartitionLog, home, epoch| {
            let mut wb = WriteBatch::default();
            let r = log.set_role_into(&mut wb, Role { home, epoch }, &Settled::default(), 1);
            (r, wb)
        };
        let idem = build::simple(2, 100, Some((7, 0, 0)));
        append(&log, &idem).await;
        // Demoted (a fence): produce no longer applies, a retry of a
        // batch already written is still answered with its offset.
        let (r, wb) = set(&log, false, 1);
        r.unwrap();
        store.write(wb).await.unwrap();
        let mut wb = WriteBatch::default();
        assert!(matches!(
            log.append_into(&mut wb, &build::simple(1, 100, None), 1, None),
            Err(AppendError::Role(home_role::RoleError::NotHome {
                epoch: 1
            }))
        ));
        assert!(matches!(
            log.append_into(&mut wb, &idem, 1, None),
            Ok(AppendedInto::Duplicate { base_offset: 0 })
        ));
        // A mirror now: appends from the new home apply.
        let new_home = crate::batch::stamp(&build::simple(1, 100, None), 2, 9, None);
        assert!(mirror(&log, &store, &new_home, 2).await.appended);
        // Epochs never go back.
        let (r, wb) = set(&log, false, 2);
        r.unwrap();
        store.write(wb).await.unwrap();
        assert!(matches!(set(&log, true, 1).0, Err(AppendError::Role(_))));
        let (r, wb) = set(&log, true, 3);
        r.unwrap();
        store.write(wb).await.unwrap();
        let again = PartitionLog::open(store.clone(), 3, "moving".into(), 0).unwrap();
        assert_eq!(
            again.role(),
            Some(Role {
                home: true,
                epoch: 3
            })
        );
        let mut wb = WriteBatch::default();
        let more = crate::batch::stamp(&build::simple(1, 100, None), 3, 9, None);
        assert!(matches!(
            again.mirror_into(&mut wb, &more, 3, false),
            Err(AppendError::Role(home_role::RoleError::IsHome { epoch: 3 }))
        ));
        assert!(again
            .append_into(&mut wb, &build::simple(1, 100, None), 1, None)
            .is_ok());
    }

    #[test]
    fn a_log_start_keeps_only_the_epoch_in_effect_there() {
        let cut = |mut e: Vec<(i32, i64)>, start| {
            truncate_epochs_from_start(&mut e, start);
            e
        };
        let h = vec![(0, 0), (1, 0), (3, 10), (4, 20)];
        assert_eq!(cut(h.clone(), 0), vec![(1, 0), (3, 10), (4, 20)]);
        assert_eq!(cut(h.clone(), 9), vec![(1, 9), (3, 10), (4, 20)]);
        assert_eq!(cut(h.clone(), 10), vec![(3, 10), (4, 20)]);
        assert_eq!(cut(h.clone(), 25), vec![(4, 25)]);
        assert_eq!(
            cut(vec![(2, 5)], 3),
            vec![(2, 5)],
            "nothing below the start"
        );
        assert_eq!(cut(vec![], 3), vec![]);
    }

    #[tokio::test]
    async fn an_empty_mirror_may_start_where_the_home_log_starts() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let home = PartitionLog::open(store.clone(), 1, "home".into(), 0).unwrap();
        for _ in 0..3 {
            append(&home, &build::simple(2, 100, None)).await;
        }
        let all = home.dump().unwrap();
        let len = BatchHeader::parse(&all).unwrap().total_len();
        let copy = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        // Not without being told the home log starts there.
        assert!(!mirror(&copy, &store, &all[2 * len..], 4).await.appended);
        let m = mirror_from(&copy, &store, &all[2 * len..], 4, true).await;
        assert_eq!(
            m,
            Mirrored {
                log_end_offset: 6,
                appended: true
            }
        );
        assert_eq!(copy.log_start_offset(), 4);
        // The home's retention cut its history at the same start: the two agree.
        let mut wb = WriteBatch::default();
        assert_eq!(home.trim_into(&mut wb, 4).unwrap(), 4);
        store.write(wb).await.unwrap();
        assert_eq!(copy.epoch_history(), home.epoch_history());
        // Once it holds data, a gap is refused.
        let m = mirror_from(&copy, &store, &all[2 * len..], 10, true).await;
        assert!(!m.appended);
        let again = PartitionLog::open(store.clone(), 2, "copy".into(), 0).unwrap();
        assert_eq!((again.log_start_offset(), again.log_end_offset()), (4, 6));
    }

    #[tokio::test]
    async fn offsets_are_assigned_contiguously_and_survive_reopen() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
            let log = open(&store);
            assert_eq!(append(&log, &build::simple(3, 100, None)).await, 0);
            assert_eq!(append(&log, &build::simple(2, 200, None)).await, 3);
            assert_eq!(log.high_watermark(), 5);
            let r = log.read(0, 1 << 20, true).unwrap();
            let h1 = BatchHeader::parse(&r.records).unwrap();
            assert_eq!(h1.base_offset, 0);
            let h2 = BatchHeader::parse(&r.records[h1.total_len()..]).unwrap();
            assert_eq!(h2.base_offset, 3);
            assert_eq!(r.records.len(), h1.total_len() + h2.total_len());
        }
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        assert_eq!(log.log_end_offset(), 5);
        assert_eq!(log.high_watermark(), 5);
        assert_eq!(append(&log, &build::simple(1, 300, None)).await, 5);
    }

    #[tokio::test]
    async fn reads_start_at_the_batch_containing_the_offset() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Replicated).unwrap());
        let log = open(&store);
        for _ in 0..3 {
            append(&log, &build::simple(4, 0, None)).await;
        }
        let r = log.read(6, 1 << 20, true).unwrap();
        assert_eq!(BatchHeader::parse(&r.records).unwrap().base_offset, 4);
        // A limit below one batch still returns one batch when min_one...
        let one = log.read(0, 10, true).unwrap();
        assert_eq!(
            BatchHeader::parse(&one.records).unwrap().total_len(),
            one.records.len()
        );
        // ...and nothing otherwise.
        assert!(log.read(0, 10, false).unwrap().records.is_empty());
        // At the end: empty, not an error. Past it: out of range.
        assert!(log.read(12, 1 << 20, true).unwrap().records.is_empty());
        assert!(matches!(
            log.read(13, 1 << 20, true),
            Err(ReadError::OutOfRange { .. })
        ));
    }

    #[tokio::test]
    async fn idempotent_retries_are_not_written_twice() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        let b0 = build::simple(3, 0, Some((5, 0, 0)));
        let b1 = build::simple(3, 0, Some((5, 0, 3)));
        assert_eq!(append(&log, &b0).await, 0);
        assert_eq!(append(&log, &b1).await, 3);
        assert!(matches!(
            log.append(&b0, &cfg(), 0).unwrap(),
            Appended::Duplicate { base_offset: 0 }
        ));
        assert_eq!(log.log_end_offset(), 6);
        let gap = build::simple(1, 0, Some((5, 0, 9)));
        assert!(matches!(
            log.append(&gap, &cfg(), 0),
            Err(AppendError::Sequence(SequenceError::OutOfOrder { .. }))
        ));
        // Producer state is recovered with the log.
        drop(log);
        let log = open(&store);
        assert!(matches!(
            log.append(&b1, &cfg(), 0).unwrap(),
            Appended::Duplicate { base_offset: 3 }
        ));
    }

    /// Writes `wb` and moves the high watermark, as the state machine does.
    async fn commit(log: &PartitionLog, store: &Store, wb: WriteBatch) {
        store.write(wb).await.unwrap();
        log.committed(log.log_end_offset());
    }

    async fn trim(log: &PartitionLog, store: &Store, offset: i64) {
        let mut wb = WriteBatch::default();
        log.trim_into(&mut wb, offset).unwrap();
        commit(log, store, wb).await;
    }

    fn keyed(key: &str, value: Option<&str>) -> Vec<u8> {
        build::batch(
            1_000,
            None,
            &[build::Record {
                key: Some(key.as_bytes()),
                value: value.map(str::as_bytes),
                headers: vec![],
                timestamp_delta: 0,
            }],
        )
    }

    fn compact_policy() -> crate::compaction::Policy {
        crate::compaction::Policy {
            min_cleanable_dirty_ratio: 0.0,
            min_compaction_lag_ms: 0,
            max_compaction_lag_ms: i64::MAX,
            delete_retention_ms: 60_000,
        }
    }

    async fn compact(log: &PartitionLog, store: &Store, plan: &crate::compaction::Plan) -> bool {
        let mut wb = WriteBatch::default();
        let applied = log.compact_into(&mut wb, plan).unwrap();
        commit(log, store, wb).await;
        applied
    }

    #[tokio::test]
    async fn a_compacted_log_keeps_its_start_end_and_offsets_through_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        for (k, v) in [("a", "1"), ("b", "1"), ("a", "2"), ("c", "1"), ("b", "2")] {
            append(&log, &keyed(k, Some(v))).await;
        }
        let (plan, stats) = log
            .plan_compaction(&compact_policy(), 2_000, i64::MAX, Default::default())
            .unwrap()
            .expect("due");
        // The last batch (offset 4, b=2) is never cleaned, nor does it count
        // in the key map: of 0..4 only a=1 is superseded.
        assert_eq!(plan.end, 4);
        assert_eq!(stats.records_removed, 1);
        assert!(compact(&log, &store, &plan).await);
        // A replayed (or stale) pass finds other bytes and changes nothing.
        assert!(!compact(&log, &store, &plan).await);
        let offsets = |log: &PartitionLog| -> Vec<i64> {
            let r = log.read(0, 1 << 20, true).unwrap().records;
            crate::batch::split_stored(&r)
                .unwrap()
                .iter()
                .map(|(h, _)| h.base_offset)
                .collect()
        };
        assert_eq!(offsets(&log), vec![1, 2, 3, 4]);
        // A fetch at a removed offset gets the next batch.
        let at0 = log.read(0, 1 << 20, true).unwrap().records;
        assert_eq!(BatchHeader::parse(&at0).unwrap().base_offset, 1);
        drop(log);
        let log = open(&store);
        assert_eq!((log.log_start_offset(), log.log_end_offset()), (0, 5));
        assert_eq!(offsets(&log), vec![1, 2, 3, 4]);
        // Nothing is dirty now.
        assert!(log
            .plan_compaction(&compact_policy(), 2_000, i64::MAX, Default::default())
            .unwrap()
            .is_none());
        // A batch trimmed away between planning and applying voids the pass.
        append(&log, &keyed("a", Some("3"))).await;
        let plan = log
            .plan_compaction(&compact_policy(), 2_000, i64::MAX, Default::default())
            .unwrap()
            .expect("b=2 is no longer the last batch")
            .0;
        assert_eq!(plan.rewrites.len(), 1, "b=1 goes");
        trim(&log, &store, 3).await;
        assert!(!compact(&log, &store, &plan).await);
        assert_eq!(offsets_from(&log, 3), vec![3, 4, 5]);
    }

    fn offsets_from(log: &PartitionLog, from: i64) -> Vec<i64> {
        let r = log.read(from, 1 << 20, true).unwrap().records;
        crate::batch::split_stored(&r)
            .unwrap()
            .iter()
            .map(|(h, _)| h.base_offset)
            .collect()
    }

    #[tokio::test]
    async fn a_mirror_takes_batches_across_a_hole_the_home_cleaner_left() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let home = open(&store);
        for (k, v) in [("a", "1"), ("a", "2"), ("b", "1")] {
            append(&home, &keyed(k, Some(v))).await;
        }
        let plan = home
            .plan_compaction(&compact_policy(), 2_000, i64::MAX, Default::default())
            .unwrap()
            .unwrap()
            .0;
        assert!(compact(&home, &store, &plan).await);
        let shipped = home.read(0, 1 << 20, true).unwrap().records;
        assert_eq!(BatchHeader::parse(&shipped).unwrap().base_offset, 1);
        let mirror_log = PartitionLog::open(store.clone(), 2, "t".into(), 0).unwrap();
        let m = mirror(&mirror_log, &store, &shipped, 0).await;
        assert!(m.appended);
        assert_eq!(m.log_end_offset, 3);
        assert_eq!(mirror_log.dump().unwrap(), home.dump().unwrap());
    }

    #[tokio::test]
    async fn retention_cuts_at_whole_old_batches() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        append(&log, &build::simple(2, 1_000, None)).await; // offsets 0-1, ts ~1000
        append(&log, &build::simple(2, 2_000, None)).await; // 2-3
        append(&log, &build::simple(2, 9_000, None)).await; // 4-5
        let mut c = cfg();
        c.retention_ms = 5_000;
        assert_eq!(log.retention_cutoff(&c, 10_000).unwrap(), Some(4));
        // Deciding changes nothing: the trim goes through the Raft log.
        assert_eq!(log.log_start_offset(), 0);
        trim(&log, &store, 4).await;
        assert_eq!(log.log_start_offset(), 4);
        assert!(matches!(
            log.read(0, 1 << 20, true),
            Err(ReadError::OutOfRange { .. })
        ));
        assert_eq!(
            BatchHeader::parse(&log.read(4, 1 << 20, true).unwrap().records)
                .unwrap()
                .base_offset,
            4
        );
        assert_eq!(log.retention_cutoff(&c, 10_000).unwrap(), None);
        // Size-based: keep at most one batch's worth.
        let one = log.size_bytes() as i64;
        append(&log, &build::simple(2, 9_500, None)).await;
        c.retention_ms = -1;
        c.retention_bytes = one;
        assert_eq!(log.retention_cutoff(&c, 10_000).unwrap(), Some(6));
        trim(&log, &store, 6).await;
        assert_eq!(log.size_bytes() as i64, one);
        drop(log);
        let log = open(&store);
        assert_eq!(log.log_start_offset(), 6);
        assert_eq!(log.log_end_offset(), 8);
    }

    /// Retention used to write the partition record from its own task, so
    /// an apply recording a new epoch at the same time could lose the epoch
    /// or the log start. Both now come through the apply path, in order.
    #[tokio::test]
    async fn a_trim_and_a_new_epoch_in_one_write_keep_both() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        for (id, trim_first) in [(1u64, true), (2, false)] {
            let log = PartitionLog::open(store.clone(), id, "t".into(), 0).unwrap();
            let mut wb = WriteBatch::default();
            for ts in [1_000, 2_000, 9_000] {
                log.append_into(&mut wb, &build::simple(2, ts, None), 1, None)
                    .unwrap();
            }
            commit(&log, &store, wb).await;
            let mut c = cfg();
            c.retention_ms = 5_000;
            let cut = log.retention_cutoff(&c, 10_000).unwrap().unwrap();
            let mut wb = WriteBatch::default();
            let next = build::simple(1, 9_500, None);
            if trim_first {
                log.trim_into(&mut wb, cut).unwrap();
                log.append_into(&mut wb, &next, 2, None).unwrap();
            } else {
                log.append_into(&mut wb, &next, 2, None).unwrap();
                log.trim_into(&mut wb, cut).unwrap();
            }
            commit(&log, &store, wb).await;
            drop(log);
            let log = PartitionLog::open(store.clone(), id, "t".into(), 0).unwrap();
            assert_eq!(
                (log.log_start_offset(), log.epoch_history()),
                (4, vec![(1, 4), (2, 6)]),
                "trim first: {trim_first}"
            );
        }
    }

    /// What append_into writes is a function of its arguments and the log:
    /// no config is consulted, so a limit or timestamp type that changed on
    /// one replica cannot make it write something else there.
    #[tokio::test]
    async fn append_into_stamps_only_what_it_is_given() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let (a, b) = (
            open(&store),
            PartitionLog::open(store.clone(), 2, "t".into(), 0).unwrap(),
        );
        let big = build::simple(50, 100, None);
        let mut tiny = cfg();
        tiny.max_message_bytes = 64;
        assert!(matches!(
            PartitionLog::check_batch(&big, &tiny),
            Err(AppendError::TooLarge { .. })
        ));
        for log in [&a, &b] {
            let mut wb = WriteBatch::default();
            log.append_into(&mut wb, &big, 3, None).unwrap();
            log.append_into(&mut wb, &build::simple(2, 100, None), 3, Some(7_000))
                .unwrap();
            commit(log, &store, wb).await;
        }
        let dump = a.dump().unwrap();
        assert_eq!(dump, b.dump().unwrap());
        let first = BatchHeader::parse(&dump).unwrap();
        let second = BatchHeader::parse(&dump[first.total_len()..]).unwrap();
        assert_eq!((first.max_timestamp, first.attributes & 0x08), (149, 0));
        assert_eq!(
            (second.max_timestamp, second.attributes & 0x08),
            (7_000, 0x08)
        );
        assert_eq!(
            a.offset_for_timestamp(7_000).unwrap().map(|x| x.0),
            Some(50)
        );
    }

    #[tokio::test]
    async fn timestamp_lookup_finds_first_record_at_or_after() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = open(&store);
        append(&log, &build::simple(3, 100, None)).await; // ts 100,101,102
        append(&log, &build::simple(3, 200, None)).await; // ts 200,201,202
        assert_eq!(log.offset_for_timestamp(101).unwrap(), Some((1, 101)));
        assert_eq!(log.offset_for_timestamp(150).unwrap(), Some((3, 200)));
        assert_eq!(log.offset_for_timestamp(203).unwrap(), None);
        assert_eq!(log.max_timestamp_offset().unwrap(), Some((5, 202)));
    }
}
