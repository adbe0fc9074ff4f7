//! The state machines behind our groups. A partition group applies produce
//! commands to its [`PartitionLog`]; the controller group applies catalog
//! commands to the [`Catalog`]. Either way the applied log id is written in
//! the same RocksDB batch as the effects, so a crash can never apply an
//! entry twice or skip one.
//!
//! Snapshots. The controller's snapshot is its catalog entries. A
//! partition's snapshot is a small *descriptor* (log end and start offsets,
//! epoch history, producer state as of the snapshot's log id), never its
//! batches: every replica's partition log holds only committed data, stamped
//! deterministically, so a lagging follower's log is a byte-identical prefix
//! of the leader's. Installing a snapshot therefore pulls just the missing
//! batches (see `group.rs`), writes them without index entries (invisible,
//! so a crash mid-transfer leaves the old state intact), and commits the
//! index entries, producer state and applied log id in one write at the end.

use std::io;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use openraft::storage::{EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::{EntryPayload, OptionalSend};
use prost::Message;
use rocksdb::WriteBatch;

use super::log_store::{get_group_json, io_err, meta_key, put_group_json};
use super::types::{Command, CommandResult, LogId, StoredMembership, TypeConfig};
use crate::catalog::{Catalog, PostApply};
use crate::error::KafkaCode;
use crate::log::{AppendedInto, PartitionLog};
use crate::storage::{log_key, Store, CF_INDEX, CF_LOG, CF_META, CF_PRODUCERS};

/// A snapshot as openraft carries it: the descriptor, plus on a follower
/// the batches it staged while receiving.
#[derive(Debug, Clone)]
pub struct SnapshotData {
    pub desc: Bytes,
    pub staged: Option<Arc<Mutex<Staged>>>,
}
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;
type SnapshotMeta = openraft::alias::SnapshotMetaOf<TypeConfig>;

/// What a group's entries are applied to.
#[derive(Clone)]
pub enum Target {
    Partition {
        log: Arc<PartitionLog>,
        /// Read only for produce entries of older brokers (`legacy_produce`):
        /// the catalog is another group's state, not ordered with this log.
        catalog: Arc<Catalog>,
    },
    Controller(Arc<Catalog>),
}

#[derive(Clone)]
pub struct StateMachine {
    store: Arc<Store>,
    group: u64,
    target: Target,
    /// Called after each applied batch of controller entries.
    on_change: Arc<dyn Fn() + Send + Sync>,
}

/// A partition snapshot's descriptor (see the module docs).
#[derive(Clone, PartialEq, Message)]
pub struct PbPartitionDesc {
    #[prost(int64, tag = "1")]
    pub log_end: i64,
    /// The partition record (JSON: log start offset and epoch history).
    #[prost(bytes = "vec", tag = "2")]
    pub record: Vec<u8>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub producer_keys: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub producer_values: Vec<Bytes>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbCatalogSnapshot {
    #[prost(string, repeated, tag = "1")]
    pub keys: Vec<String>,
    #[prost(bytes = "vec", repeated, tag = "2")]
    pub values: Vec<Vec<u8>>,
}

/// The persisted snapshot: its meta (JSON) and descriptor.
#[derive(serde::Serialize, serde::Deserialize)]
struct StoredSnapshot {
    meta: SnapshotMeta,
    desc: Vec<u8>,
}

/// Batches a follower pulled from the leader for a snapshot install; the
/// index entries become visible only when the install commits.
#[derive(Debug, Default)]
pub struct Staged {
    /// When set, the follower's log was too far behind the leader's log
    /// start: everything below this offset is dropped at install.
    pub reset_to: Option<i64>,
    /// When set, the follower's log holds records from this offset on that
    /// the leader's does not (a failback cut it missed): they go at install.
    pub cut_from: Option<i64>,
    pub index: Vec<(Bytes, Bytes)>,
}

impl StateMachine {
    pub fn new(
        store: Arc<Store>,
        group: u64,
        target: Target,
        on_change: Arc<dyn Fn() + Send + Sync>,
    ) -> StateMachine {
        StateMachine {
            store,
            group,
            target,
            on_change,
        }
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, what: &str) -> io::Result<Option<T>> {
        get_group_json(&self.store, self.group, what)
    }

    fn put_json<T: serde::Serialize>(&self, wb: &mut WriteBatch, what: &str, v: &T) {
        put_group_json(&self.store, wb, self.group, what, v)
    }

    /// Removes the group's state-machine markers (its topic was deleted).
    pub fn destroy_into(&self, wb: &mut WriteBatch) {
        for what in ["applied", "membership", "snapshot"] {
            wb.delete_cf(self.store.cf(CF_META), meta_key(self.group, what));
        }
    }

    fn apply_one(
        &self,
        wb: &mut WriteBatch,
        log_id: &LogId,
        cmd: &Command,
        post: &mut Vec<PostApply>,
        hw: &mut Option<i64>,
    ) -> CommandResult {
        match (&self.target, cmd) {
            (
                Target::Partition { log, catalog },
                Command::Produce {
                    records,
                    now_ms,
                    log_append_time,
                },
            ) => {
                let append_time = match log_append_time {
                    Some(lat) => lat.then_some(*now_ms),
                    None => match legacy_produce(log, catalog, records, *now_ms) {
                        Ok(t) => t,
                        Err(rejected) => return rejected,
                    },
                };
                let term = log_id.committed_leader_id().term.min(i32::MAX as u64) as i32;
                match log.append_into(wb, records, term, append_time) {
                    Ok(AppendedInto::New { base, last }) => {
                        *hw = Some(last + 1);
                        CommandResult::Produced {
                            base_offset: base,
                            log_append_time: append_time.unwrap_or(-1),
                        }
                    }
                    Ok(AppendedInto::Duplicate { base_offset }) => {
                        CommandResult::Duplicate { base_offset }
                    }
                    Err(e) => rejected(&e),
                }
            }
            (
                Target::Partition { log, .. },
                Command::MirrorAppend {
                    records,
                    base_offset,
                    from_log_start,
                },
            ) => match log.mirror_into(wb, records, *base_offset, *from_log_start) {
                Ok(m) => {
                    if m.appended {
                        *hw = Some(m.log_end_offset);
                    }
                    CommandResult::Mirrored {
                        log_end_offset: m.log_end_offset,
                        appended: m.appended,
                    }
                }
                Err(e) => rejected(&e),
            },
            (Target::Partition { log, .. }, Command::DeleteRecords { offset }) => {
                match log.trim_into(wb, *offset) {
                    Ok(low_watermark) => CommandResult::Trimmed { low_watermark },
                    Err(e) => rejected(&e),
                }
            }
            (Target::Partition { log, .. }, Command::TruncateSuffix { offset }) => {
                match log.truncate_into(wb, *offset) {
                    Ok(removed_batches) => CommandResult::Truncated {
                        log_end_offset: (*offset).min(log.log_end_offset()),
                        removed_batches,
                    },
                    Err(e) => rejected(&e),
                }
            }
            (Target::Partition { log, .. }, Command::TxnMarker(marker)) => {
                let term = log_id.committed_leader_id().term.min(i32::MAX as u64) as i32;
                match log.marker_into(wb, marker, term) {
                    Ok(Some(offset)) => {
                        *hw = Some(offset + 1);
                        CommandResult::Marked {
                            offset: Some(offset),
                        }
                    }
                    Ok(None) => CommandResult::Marked { offset: None },
                    Err(e) => rejected(&e),
                }
            }
            (Target::Partition { log, .. }, Command::Compact(plan)) => {
                match log.compact_into(wb, plan) {
                    Ok(applied) => CommandResult::Compacted { applied },
                    Err(e) => rejected(&e),
                }
            }
            (
                Target::Partition { log, .. },
                Command::SetRole {
                    role,
                    retract_from,
                    view_end,
                },
            ) => {
                let term = log_id.committed_leader_id().term.min(i32::MAX as u64) as i32;
                let settle = crate::log::Settled {
                    retract_from: retract_from
                        .iter()
                        .map(|r| (r.producer_id, r.seq))
                        .collect(),
                    view_end: *view_end,
                };
                match log.set_role_into(wb, *role, &settle, term) {
                    Ok(_) => {
                        // A promotion may have written abort markers.
                        *hw = Some(log.log_end_offset());
                        CommandResult::Done
                    }
                    Err(e) => rejected(&e),
                }
            }
            (Target::Controller(cat), Command::Controller(c)) => match cat.apply(c, wb) {
                Ok(p) => {
                    post.push(p);
                    CommandResult::Done
                }
                Err(e) => rejected(&e),
            },
            (_, Command::Noop) => CommandResult::None,
            _ => CommandResult::Rejected {
                code: kafka_protocol::error::ResponseError::InvalidRequest.code(),
                message: "command does not belong to this group".into(),
            },
        }
    }

    /// Writes what the entries applied so far in this batch added to `wb`,
    /// with their applied log id, and moves the high watermark over them.
    async fn write_applied(
        &self,
        wb: &mut WriteBatch,
        last: &Option<LogId>,
        hw: &mut Option<i64>,
    ) -> io::Result<()> {
        self.put_json(wb, "applied", last);
        self.write(std::mem::take(wb)).await?;
        if let (Some(hw), Target::Partition { log, .. }) = (hw.take(), &self.target) {
            log.committed(hw);
        }
        Ok(())
    }

    async fn write(&self, wb: WriteBatch) -> io::Result<()> {
        // Applied state needs no sync of its own: the Raft log holds every
        // committed entry until a snapshot covers it, and snapshots sync.
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.submit_unsynced(
            wb,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .map_err(|_| io_err("writer stopped"))?
            .map_err(io_err)
    }

    /// Captures the state as of the last applied entry. Runs on the state
    /// machine's task, between applies, so what it reads is consistent.
    fn capture(&self) -> io::Result<(Bytes, Option<LogId>, StoredMembership)> {
        let applied: Option<LogId> = self.get_json("applied")?.flatten();
        let membership: StoredMembership = self.get_json("membership")?.unwrap_or_default();
        let desc = match &self.target {
            Target::Partition { log, .. } => {
                let lid = log.log_id;
                let mut d = PbPartitionDesc {
                    log_end: log.log_end_offset(),
                    record: self
                        .store
                        .get_meta(&format!("partition/{lid:016x}"))
                        .map_err(io_err)?
                        .unwrap_or_default(),
                    ..Default::default()
                };
                let mut it = self.store.log_iter(CF_PRODUCERS, lid);
                it.seek_to_first();
                while it.valid() {
                    d.producer_keys
                        .push(Bytes::copy_from_slice(it.key().unwrap_or_default()));
                    d.producer_values
                        .push(Bytes::copy_from_slice(it.value().unwrap_or_default()));
                    it.next();
                }
                it.status().map_err(io_err)?;
                d.encode_to_vec()
            }
            Target::Controller(cat) => {
                let entries = cat.snapshot_entries().map_err(io_err)?;
                let (keys, values) = entries.into_iter().unzip();
                PbCatalogSnapshot { keys, values }.encode_to_vec()
            }
        };
        Ok((Bytes::from(desc), applied, membership))
    }
}

fn rejected<E: KafkaCode + std::fmt::Display>(e: &E) -> CommandResult {
    CommandResult::Rejected {
        code: e.kafka_code(),
        message: e.to_string(),
    }
}

/// A produce entry without the leader's timestamp decision was proposed by a
/// broker that predates it. Such a broker applies it with its own catalog's
/// configs (size limit and timestamp type), and so does this one, so a group
/// of mixed versions agrees as well as the old version did. This is the one
/// apply input not ordered with the entry, and only for those old entries.
fn legacy_produce(
    log: &PartitionLog,
    catalog: &Catalog,
    records: &[u8],
    now_ms: i64,
) -> Result<Option<i64>, CommandResult> {
    let Some(t) = catalog.get(&log.topic) else {
        return Err(CommandResult::Rejected {
            code: kafka_protocol::error::ResponseError::UnknownTopicOrPartition.code(),
            message: "the topic was deleted".into(),
        });
    };
    PartitionLog::check_batch(records, &t.effective).map_err(|e| rejected(&e))?;
    Ok(t.effective.log_append_time.then_some(now_ms))
}

/// A captured state, turned into a snapshot by openraft's builder task.
pub struct Builder {
    /// When the state was captured: the snapshot's creation starts there.
    started: std::time::Instant,
    sm: StateMachine,
    captured: io::Result<(Bytes, Option<LogId>, StoredMembership)>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let built = self.build().await;
        if built.is_ok() {
            metrics::histogram!("raft_snapshot_creation_duration_seconds")
                .record(self.started.elapsed().as_secs_f64());
        }
        built
    }
}

impl Builder {
    async fn build(&mut self) -> io::Result<Snapshot> {
        let (desc, applied, membership) = match &self.captured {
            Ok(c) => c.clone(),
            Err(e) => return Err(io_err(e)),
        };
        let meta = SnapshotMeta {
            last_log_id: applied,
            last_membership: membership,
        };
        // The Raft log behind this point is about to be purged: make the
        // state it describes durable first.
        self.sm.store.db().flush_wal(true).map_err(io_err)?;
        let mut wb = WriteBatch::default();
        self.sm.put_json(
            &mut wb,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                desc: desc.to_vec(),
            },
        );
        self.sm.write(wb).await?;
        Ok(Snapshot {
            meta,
            snapshot: SnapshotData { desc, staged: None },
        })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = Builder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        let applied: Option<LogId> = self.get_json("applied")?.flatten();
        let membership: StoredMembership = self.get_json("membership")?.unwrap_or_default();
        Ok((applied, membership))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = io::Result<EntryResponder<TypeConfig>>> + Unpin + OptionalSend,
    {
        let mut wb = WriteBatch::default();
        let mut last: Option<LogId> = None;
        let mut responses = Vec::new();
        let mut post = Vec::new();
        let mut hw = None;
        let controller = matches!(self.target, Target::Controller(_));
        let mut unwritten = false;
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let cut = matches!(
                entry.payload,
                EntryPayload::Normal(Command::TruncateSuffix { .. })
            );
            if unwritten
                && (cut
                    || matches!(
                        entry.payload,
                        EntryPayload::Normal(Command::DeleteRecords { .. } | Command::Compact(_))
                    ))
            {
                // A trim finds the batches below its offset in the store.
                // Where an apply batch ends differs between replicas, so the
                // entries before it must be in the store here too, or this
                // replica would keep batches that the others removed.
                self.write_applied(&mut wb, &last, &mut hw).await?;
            }
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(cmd) => {
                    self.apply_one(&mut wb, &entry.log_id, cmd, &mut post, &mut hw)
                }
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.put_json(&mut wb, "membership", &sm);
                    if let Target::Controller(cat) = &self.target {
                        let voters: Vec<u64> = m.voter_ids().collect();
                        post.extend(cat.seed_members_into(&voters, &mut wb));
                    }
                    CommandResult::None
                }
            };
            last = Some(entry.log_id);
            unwritten = true;
            if cut {
                // The cut is read back from the store: the entries after it
                // (a mirror append at the new end) must see the shorter log.
                self.write_applied(&mut wb, &last, &mut hw).await?;
                unwritten = false;
                if let (
                    Target::Partition { log, .. },
                    CommandResult::Truncated {
                        removed_batches: 1..,
                        ..
                    },
                ) = (&self.target, &result)
                {
                    log.reload().map_err(io_err)?;
                    log.forget_mirror_acks();
                    tracing::warn!(topic = %log.topic, partition = log.partition, log_end = log.log_end_offset(), "log cut back for a failback");
                }
            }
            responses.push((responder, result));
            if controller {
                // Each controller command sees the effects of the one before.
                self.put_json(&mut wb, "applied", &last);
                self.write(std::mem::take(&mut wb)).await?;
                for p in post.drain(..) {
                    if let Target::Controller(cat) = &self.target {
                        p.run(cat).map_err(io_err)?;
                    }
                }
            }
        }
        if unwritten && !controller {
            self.write_applied(&mut wb, &last, &mut hw).await?;
        }
        if controller && last.is_some() {
            (self.on_change)();
        }
        for (responder, result) in responses {
            if let Some(r) = responder {
                r.send(result);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        Builder {
            started: std::time::Instant::now(),
            sm: self.clone(),
            captured: self.capture(),
        }
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        data: SnapshotData,
    ) -> io::Result<()> {
        let mut wb = WriteBatch::default();
        match &self.target {
            Target::Partition { log, .. } => {
                let desc = PbPartitionDesc::decode(data.desc.clone()).map_err(io_err)?;
                let lid = log.log_id;
                let meta_cf = self.store.cf(CF_META);
                let mut record: crate::log::PartitionRecord = if desc.record.is_empty() {
                    crate::log::PartitionRecord::default()
                } else {
                    serde_json::from_slice(&desc.record).map_err(io_err)?
                };
                // Batches this replica holds wholly below the leader's log
                // start were deleted there (DeleteRecords, retention) by
                // entries the snapshot replaces: delete them here too, or
                // they stay on disk under a record that says they are gone.
                let below = self
                    .store
                    .index_entries(lid)
                    .map_err(io_err)?
                    .into_iter()
                    .take_while(|e| e.last_offset < record.log_start_offset)
                    .last();
                if let Some(e) = below {
                    for cf in [CF_LOG, CF_INDEX] {
                        wb.delete_range_cf(
                            self.store.cf(cf),
                            log_key(lid, 0),
                            log_key(lid, e.last_offset + 1),
                        );
                    }
                }
                if let Some(staged) = &data.staged {
                    let staged = std::mem::take(&mut *staged.lock().unwrap());
                    if let Some(reset) = staged.reset_to {
                        for cf in [CF_LOG, CF_INDEX] {
                            wb.delete_range_cf(
                                self.store.cf(cf),
                                log_key(lid, 0),
                                log_key(lid, reset),
                            );
                        }
                        record.log_start_offset = record.log_start_offset.max(reset);
                    }
                    if let Some(cut) = staged.cut_from {
                        // The staged batches were written over some of these
                        // keys already; the rest of the diverged tail goes.
                        let fresh: std::collections::HashSet<&[u8]> =
                            staged.index.iter().map(|(k, _)| k.as_ref()).collect();
                        for e in self.store.index_entries(lid).map_err(io_err)? {
                            if e.base_offset < cut {
                                continue;
                            }
                            let k = log_key(lid, e.base_offset);
                            wb.delete_cf(self.store.cf(CF_INDEX), k);
                            if !fresh.contains(k.as_slice()) {
                                wb.delete_cf(self.store.cf(CF_LOG), k);
                            }
                        }
                    }
                    for (k, v) in &staged.index {
                        wb.put_cf(self.store.cf(CF_INDEX), k, v);
                    }
                }
                let (from, to) = (log_key(lid, 0), log_key(lid + 1, 0));
                wb.delete_range_cf(self.store.cf(CF_PRODUCERS), from, to);
                for (k, v) in desc.producer_keys.iter().zip(&desc.producer_values) {
                    wb.put_cf(self.store.cf(CF_PRODUCERS), k, v);
                }
                wb.put_cf(
                    meta_cf,
                    format!("partition/{lid:016x}"),
                    serde_json::to_vec(&record).expect("serializes"),
                );
            }
            Target::Controller(cat) => {
                let snap = PbCatalogSnapshot::decode(data.desc.clone()).map_err(io_err)?;
                let entries: Vec<(String, Vec<u8>)> =
                    snap.keys.into_iter().zip(snap.values).collect();
                cat.install_snapshot_entries(&entries, &mut wb)
                    .map_err(io_err)?;
            }
        }
        self.put_json(&mut wb, "applied", &meta.last_log_id);
        self.put_json(&mut wb, "membership", &meta.last_membership);
        self.put_json(
            &mut wb,
            "snapshot",
            &StoredSnapshot {
                meta: meta.clone(),
                desc: data.desc.to_vec(),
            },
        );
        self.write(wb).await?;
        match &self.target {
            Target::Partition { log, .. } => log.reload().map_err(io_err)?,
            Target::Controller(cat) => {
                cat.reload().map_err(io_err)?;
                (self.on_change)();
            }
        }
        tracing::info!(group = self.group, last = ?meta.last_log_id, "installed snapshot");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        let stored: Option<StoredSnapshot> = self.get_json("snapshot")?;
        Ok(stored.map(|st| Snapshot {
            meta: st.meta,
            snapshot: SnapshotData {
                desc: st.desc.into(),
                staged: None,
            },
        }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use chronik_topology::{Durability, TopicDefaults};

    use super::*;
    use crate::batch::{build, BatchHeader};
    use crate::catalog::{ConfigOp, RegionSettings};
    use crate::raft::types::Entry;

    const LOG_APPEND_TIME: i16 = 1 << 3;

    /// One broker's copy of partition t/0, applied through a state machine.
    struct Replica {
        _dir: tempfile::TempDir,
        cat: Arc<Catalog>,
        log: Arc<PartitionLog>,
        sm: StateMachine,
    }

    async fn replica() -> Replica {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat = Arc::new(
            Catalog::open(
                store.clone(),
                TopicDefaults::default(),
                RegionSettings::single(1),
            )
            .unwrap(),
        );
        cat.create_topic("t", 1, -1, &[], &BTreeMap::new(), false)
            .await
            .unwrap();
        let log = cat.get("t").unwrap().partition(0).unwrap().clone();
        let target = Target::Partition {
            log: log.clone(),
            catalog: cat.clone(),
        };
        let sm = StateMachine::new(store, log.log_id, target, Arc::new(|| {}));
        Replica {
            _dir: dir,
            cat,
            log,
            sm,
        }
    }

    async fn set(cat: &Catalog, name: &str, value: &str) {
        cat.alter_configs("t", vec![ConfigOp::Set(name.into(), value.into())], false)
            .await
            .unwrap();
    }

    fn entry(index: u64, cmd: Command) -> Entry {
        Entry {
            log_id: LogId::new_term_index(2, index),
            payload: EntryPayload::Normal(cmd),
        }
    }

    fn produce(records: Vec<u8>, now_ms: i64, log_append_time: Option<bool>) -> Command {
        Command::Produce {
            records: records.into(),
            now_ms,
            log_append_time,
        }
    }

    /// Applies `entries` as openraft does, in one call.
    async fn apply(r: &mut Replica, entries: Vec<Entry>) {
        let items: Vec<io::Result<EntryResponder<TypeConfig>>> =
            entries.into_iter().map(|e| Ok((e, None))).collect();
        r.sm.apply(futures_util::stream::iter(items)).await.unwrap();
    }

    /// (max timestamp, LogAppendTime?) of each stored batch.
    fn stamps(log: &PartitionLog) -> Vec<(i64, bool)> {
        let dump = log.dump().unwrap();
        let mut out = Vec::new();
        let mut pos = 0;
        while pos < dump.len() {
            let h = BatchHeader::parse(&dump[pos..]).unwrap();
            out.push((h.max_timestamp, h.attributes & LOG_APPEND_TIME != 0));
            pos += h.total_len();
        }
        out
    }

    #[tokio::test]
    async fn produce_apply_does_not_read_the_local_topic_configs() {
        let (mut a, mut b) = (replica().await, replica().await);
        // Replica b has applied a config change that a has not seen yet.
        set(&b.cat, "message.timestamp.type", "LogAppendTime").await;
        set(&b.cat, "max.message.bytes", "10").await;
        let entries = || {
            vec![
                entry(
                    1,
                    produce(build::simple(3, 100, Some((7, 0, 0))), 5_000, Some(false)),
                ),
                entry(
                    2,
                    produce(build::simple(3, 200, Some((7, 0, 3))), 6_000, Some(true)),
                ),
                // An idempotent retry applies as a duplicate on both.
                entry(
                    3,
                    produce(build::simple(3, 100, Some((7, 0, 0))), 7_000, Some(true)),
                ),
            ]
        };
        apply(&mut a, entries()).await;
        apply(&mut b, entries()).await;
        assert_eq!(stamps(&a.log), vec![(102, false), (6_000, true)]);
        assert_eq!(a.log.dump().unwrap(), b.log.dump().unwrap());
        assert_eq!(a.log.producers(), b.log.producers());
        assert_eq!(a.log.epoch_history(), b.log.epoch_history());
        assert_eq!(b.log.high_watermark(), 6);
    }

    #[tokio::test]
    async fn produce_results_report_the_entrys_append_time() {
        let r = replica().await;
        set(&r.cat, "message.timestamp.type", "LogAppendTime").await;
        let mut wb = WriteBatch::default();
        let (mut post, mut hw) = (Vec::new(), None);
        let id = LogId::new_term_index(2, 1);
        let cmd = produce(build::simple(2, 100, None), 9_000, Some(false));
        assert_eq!(
            r.sm.apply_one(&mut wb, &id, &cmd, &mut post, &mut hw),
            CommandResult::Produced {
                base_offset: 0,
                log_append_time: -1
            }
        );
        let cmd = produce(build::simple(2, 100, None), 9_000, Some(true));
        assert_eq!(
            r.sm.apply_one(&mut wb, &id, &cmd, &mut post, &mut hw),
            CommandResult::Produced {
                base_offset: 2,
                log_append_time: 9_000
            }
        );
    }

    #[tokio::test]
    async fn entries_of_older_brokers_apply_with_the_local_configs() {
        let mut r = replica().await;
        set(&r.cat, "message.timestamp.type", "LogAppendTime").await;
        apply(
            &mut r,
            vec![entry(1, produce(build::simple(2, 100, None), 5_000, None))],
        )
        .await;
        assert_eq!(stamps(&r.log), vec![(5_000, true)]);
        set(&r.cat, "max.message.bytes", "10").await;
        let mut wb = WriteBatch::default();
        let (mut post, mut hw) = (Vec::new(), None);
        let old = produce(build::simple(2, 100, None), 6_000, None);
        let res = r.sm.apply_one(
            &mut wb,
            &LogId::new_term_index(2, 2),
            &old,
            &mut post,
            &mut hw,
        );
        assert!(
            matches!(res, CommandResult::Rejected { code, .. }
                if code == kafka_protocol::error::ResponseError::MessageTooLarge.code()),
            "{res:?}"
        );
    }

    #[tokio::test]
    async fn a_trim_removes_the_same_batches_wherever_the_apply_batch_ends() {
        let (mut a, mut b) = (replica().await, replica().await);
        let batches: Vec<Entry> = (0..4u64)
            .map(|i| entry(i + 1, produce(build::simple(2, 100, None), 0, Some(false))))
            .collect();
        let trim = entry(5, Command::DeleteRecords { offset: 6 });
        let more = entry(6, produce(build::simple(1, 100, None), 0, Some(false)));
        // A leader applies entries as they commit; a follower catching up
        // gets them all in one call.
        for e in batches.clone() {
            apply(&mut a, vec![e]).await;
        }
        apply(&mut a, vec![trim.clone(), more.clone()]).await;
        let mut all = batches;
        all.extend([trim, more]);
        apply(&mut b, all).await;
        for r in [&a, &b] {
            assert_eq!((r.log.log_start_offset(), r.log.log_end_offset()), (6, 9));
        }
        assert_eq!(a.log.dump().unwrap(), b.log.dump().unwrap());
        assert_eq!(a.log.size_bytes(), b.log.size_bytes());
        assert_eq!(
            stamps(&b.log).len(),
            2,
            "batches below the log start stayed"
        );
    }

    #[tokio::test]
    async fn a_failback_cut_leaves_every_replica_the_same_shorter_log() {
        let (mut a, mut b) = (replica().await, replica().await);
        let mut all: Vec<Entry> = (0..4u64)
            .map(|i| {
                let seq = (i * 2) as i32;
                entry(
                    i + 1,
                    produce(build::simple(2, 100, Some((7, 0, seq))), 0, Some(false)),
                )
            })
            .collect();
        let role = crate::home_role::Role {
            home: false,
            epoch: 1,
        };
        all.push(entry(
            5,
            Command::SetRole {
                role,
                retract_from: Vec::new(),
                view_end: None,
            },
        ));
        all.push(entry(6, Command::TruncateSuffix { offset: 3 })); // inside a batch: refused
        all.push(entry(7, Command::TruncateSuffix { offset: 4 }));
        let from_new_home = crate::batch::stamp(&build::simple(3, 100, None), 4, 9, None);
        all.push(entry(
            8,
            Command::MirrorAppend {
                records: from_new_home,
                base_offset: 4,
                from_log_start: false,
            },
        ));
        all.push(entry(9, Command::TruncateSuffix { offset: 40 })); // past the end: nothing
                                                                    // The leader applies entry by entry, a follower catching up all at once.
        for e in all.clone() {
            apply(&mut a, vec![e]).await;
        }
        apply(&mut b, all).await;
        for r in [&a, &b] {
            assert_eq!(r.log.log_end_offset(), 7);
            assert_eq!(r.log.high_watermark(), 7);
            assert_eq!(r.log.epoch_history(), vec![(0, 0), (2, 0), (9, 4)]);
            assert_eq!(
                r.log.producers(),
                vec![],
                "a producer that wrote in the suffix is forgotten: it may go on past the cut"
            );
        }
        assert_eq!(a.log.dump().unwrap(), b.log.dump().unwrap());
        assert_eq!(a.log.size_bytes(), b.log.size_bytes());
        // Cut back to the start: the history is a fresh log's again.
        let cut_all = entry(10, Command::TruncateSuffix { offset: 0 });
        apply(&mut a, vec![cut_all]).await;
        assert_eq!(a.log.log_end_offset(), 0);
        assert_eq!(a.log.epoch_history(), vec![(0, 0)]);
        assert_eq!(a.log.producers(), vec![]);
        // A home copy is never cut.
        let mut c = replica().await;
        let home = entry(1, produce(build::simple(2, 100, None), 0, Some(false)));
        apply(&mut c, vec![home]).await;
        let mut wb = WriteBatch::default();
        assert!(matches!(
            c.log.truncate_into(&mut wb, 0),
            Err(crate::log::TruncateError::NotDemoted { role: None })
        ));
    }
}
