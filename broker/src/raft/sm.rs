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
            (Target::Partition { log, catalog }, Command::Produce { records, now_ms }) => {
                let cfg = match catalog.get(&log.topic) {
                    Some(t) => t.effective.clone(),
                    None => {
                        return CommandResult::Rejected {
                            code: kafka_protocol::error::ResponseError::UnknownTopicOrPartition
                                .code(),
                            message: "the topic was deleted".into(),
                        }
                    }
                };
                let epoch = log_id.committed_leader_id().term.min(i32::MAX as u64) as i32;
                match log.append_into(wb, records, epoch, &cfg, *now_ms) {
                    Ok(AppendedInto::New { base, last }) => {
                        *hw = Some(last + 1);
                        CommandResult::Produced {
                            base_offset: base,
                            log_append_time: if cfg.log_append_time { *now_ms } else { -1 },
                        }
                    }
                    Ok(AppendedInto::Duplicate { base_offset }) => {
                        CommandResult::Duplicate { base_offset }
                    }
                    Err(e) => CommandResult::Rejected {
                        code: e.kafka_code(),
                        message: e.to_string(),
                    },
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
                Err(e) => CommandResult::Rejected {
                    code: e.kafka_code(),
                    message: e.to_string(),
                },
            },
            (Target::Partition { log, .. }, Command::DeleteRecords { offset }) => {
                match log.trim_into(wb, *offset) {
                    Ok(low_watermark) => CommandResult::Trimmed { low_watermark },
                    Err(e) => CommandResult::Rejected {
                        code: e.kafka_code(),
                        message: e.to_string(),
                    },
                }
            }
            (Target::Controller(cat), Command::Controller(c)) => match cat.apply(c, wb) {
                Ok(p) => {
                    post.push(p);
                    CommandResult::Done
                }
                Err(e) => CommandResult::Rejected {
                    code: e.kafka_code(),
                    message: e.to_string(),
                },
            },
            _ => CommandResult::Rejected {
                code: kafka_protocol::error::ResponseError::InvalidRequest.code(),
                message: "command does not belong to this group".into(),
            },
        }
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

/// A captured state, turned into a snapshot by openraft's builder task.
pub struct Builder {
    sm: StateMachine,
    captured: io::Result<(Bytes, Option<LogId>, StoredMembership)>,
}

impl RaftSnapshotBuilder<TypeConfig> for Builder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
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
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            let result = match &entry.payload {
                EntryPayload::Blank => CommandResult::None,
                EntryPayload::Normal(cmd) => {
                    self.apply_one(&mut wb, &entry.log_id, cmd, &mut post, &mut hw)
                }
                EntryPayload::Membership(m) => {
                    let sm = StoredMembership::new(Some(entry.log_id), m.clone());
                    self.put_json(&mut wb, "membership", &sm);
                    CommandResult::None
                }
            };
            last = Some(entry.log_id);
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
        if last.is_some() && !controller {
            self.put_json(&mut wb, "applied", &last);
            self.write(wb).await?;
            if let (Some(hw), Target::Partition { log, .. }) = (hw, &self.target) {
                log.committed(hw);
            }
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
                    crate::log::PartitionRecord {
                        log_start_offset: 0,
                        epochs: vec![(0, 0)],
                    }
                } else {
                    serde_json::from_slice(&desc.record).map_err(io_err)?
                };
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
