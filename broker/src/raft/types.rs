//! openraft's type configuration and the commands our groups replicate.

use std::collections::BTreeMap;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

openraft::declare_raft_types!(
    /// One type configuration for every group: partition groups and the
    /// regional controller differ only in the state machine behind them.
    pub TypeConfig:
        D = Command,
        R = CommandResult,
        NodeId = u64,
        Node = openraft::EmptyNode,
        LeaderId = openraft::impls::leader_id_std::LeaderId<u64, u64>,
);

pub type LogId = openraft::alias::LogIdOf<TypeConfig>;
pub type Vote = openraft::impls::Vote<openraft::impls::leader_id_std::LeaderId<u64, u64>>;
pub type Entry = openraft::alias::EntryOf<TypeConfig>;
pub type Membership = openraft::Membership<u64, openraft::EmptyNode>;
pub type StoredMembership = openraft::alias::StoredMembershipOf<TypeConfig>;

/// What a group replicates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// A producer's record batch, exactly as received. Offsets are assigned
    /// at apply time, from the replica's own log, so all replicas agree.
    /// Everything that depends on the topic's configs (the
    /// `max.message.bytes` check, the timestamp type) is decided by the
    /// leader when it proposes: configs live in the controller group, which
    /// each broker applies at its own pace, so a replica's catalog at apply
    /// time is not ordered with this entry.
    Produce {
        records: Bytes,
        /// The leader's wall clock when it proposed the batch.
        now_ms: i64,
        /// `Some(true)`: stamp `now_ms` as the batch's LogAppendTime.
        /// `None` only in entries proposed by brokers that predate this
        /// field: they are applied as those brokers apply them (see
        /// `sm::legacy_produce`).
        log_append_time: Option<bool>,
    },
    Controller(ControllerCommand),
    /// Move the partition's log start to `offset`: DeleteRecords, and
    /// retention (the leader picks the cutoff from its clock and the
    /// topic's configs, so every replica trims at the same log position).
    DeleteRecords {
        offset: i64,
    },
    /// Batches copied from the topic's home region by dc-link, already
    /// stamped with their offsets and leader epochs there. Applied verbatim
    /// only if they start exactly at this log's end, so a resent or
    /// reordered copy can never create a gap or a duplicate.
    MirrorAppend {
        records: Bytes,
        base_offset: i64,
        /// The home log starts at `base_offset` (retention removed what came
        /// before): an empty mirror may start there instead of at its end.
        from_log_start: bool,
    },
    /// This copy's home role from here on (see `crate::home_role`):
    /// ordered with the data, so no produce applies after a demotion and
    /// no mirror append after a promotion.
    SetRole {
        role: crate::home_role::Role,
        /// At a promotion after a region loss, the failover's verdict on
        /// the lost home's commits (`chronik_wire::settle`): each
        /// producer's first commit to retract, and this partition's log end
        /// in the view. Applied to the log as it is when the entry applies,
        /// so every replica retracts the same.
        retract_from: Vec<Retraction>,
        view_end: Option<i64>,
    },
    /// Failback: remove every record from `offset` on (see
    /// `PartitionLog::truncate_into`). Ordered with the data, so mirror
    /// appends from the new home apply after the cut on every replica.
    TruncateSuffix {
        offset: i64,
    },
    /// A log compaction pass, as the leader cleaned it (see
    /// `crate::compaction`): every replica writes the same bytes.
    Compact(crate::compaction::Plan),
    /// The end of a producer's transaction in this partition, as its
    /// coordinator decided it (see `crate::txn`).
    TxnMarker(TxnMarker),
    /// Changes nothing. A leader writes one before handing leadership over:
    /// a replica that restarted has appended nothing under the current
    /// leader yet, and openraft's target refuses a transfer until it has
    /// ("log not flushed"), however complete its log is. Written, the
    /// marker gives it that append.
    Noop,
}

/// A transaction marker to write (see `chronik_wire::control`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnMarker {
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub commit: bool,
    pub coordinator_epoch: i32,
    /// The marker's timestamp: the coordinator's clock.
    pub now_ms: i64,
    /// A commit's number among its transactional id's and its number of
    /// partitions (`chronik_wire::control::Note::Ending`).
    #[serde(default)]
    pub ending: Option<(i64, i32)>,
}

/// A producer whose commits from `seq` on a promoted copy retracts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Retraction {
    pub producer_id: i64,
    pub seq: i64,
}

/// Changes to the region's catalog, decided by the controller group. Every
/// input that is not a pure function of the catalog (ids, clocks) is fixed
/// by the proposer, so applying is deterministic on every broker.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum ControllerCommand {
    RegisterBroker {
        id: i32,
        host: String,
        port: u16,
        rack: Option<String>,
        /// Every listener's advertised address, by listener name.
        #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
        listeners: BTreeMap<String, (String, u16)>,
    },
    CreateTopic {
        name: String,
        id: Uuid,
        partitions: i32,
        replication_factor: i16,
        assignments: Vec<Vec<i32>>,
        configs: BTreeMap<String, String>,
        now_ms: i64,
    },
    DeleteTopic {
        name: String,
        /// The proposer's wall clock (stamps the global `__meta` change);
        /// 0 in entries of brokers that predate it.
        #[serde(default)]
        now_ms: i64,
        /// Only this incarnation of the name (a drained deletion).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        id: Option<Uuid>,
    },
    /// DeleteTopics at home of a mirrored topic: no more writes; the data
    /// stays until the dc-link has drained it (then `DeleteTopic`).
    MarkTopicDeleting { name: String, id: Uuid, now_ms: i64 },
    /// A planned move of the topic's home to `to`: stop writes here
    /// (`epoch`: the home epoch being left). See `catalog/home_move.rs`.
    FenceHome {
        name: String,
        id: Uuid,
        to: String,
        epoch: u64,
        now_ms: i64,
    },
    /// Committed offsets beyond a promoted partition's log end, moved to it
    /// (each only if the group's offset is still `from`).
    MoveOffsets {
        moves: Vec<crate::catalog::OffsetMove>,
        now_ms: i64,
    },
    /// Lift a fence before the move happened.
    UnfenceHome { name: String, id: Uuid },
    /// The topic's home becomes `to` at fencing epoch `epoch`; this
    /// region's copy becomes a mirror.
    MoveHome {
        name: String,
        id: Uuid,
        to: String,
        epoch: u64,
        now_ms: i64,
    },
    /// Failover: this region takes the home of a topic from the lost
    /// region `from`, at fencing epoch `epoch` (its epoch + 1), once the
    /// lease voters agreed (`chronik ctl failover`).
    TakeHome {
        name: String,
        id: Uuid,
        from: String,
        epoch: u64,
        now_ms: i64,
        /// The verdict on the lost home's commits (`chronik_wire::settle`),
        /// which the promoted partitions apply.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        settle: Option<chronik_wire::settle::Plan>,
    },
    CreatePartitions {
        name: String,
        count: i32,
        assignments: Option<Vec<Vec<i32>>>,
        #[serde(default)]
        now_ms: i64,
    },
    /// `None` deletes the key (back to the default).
    AlterConfigs {
        name: String,
        ops: Vec<(String, Option<String>)>,
        #[serde(default)]
        now_ms: i64,
    },
    /// Start (`Some`), redirect or cancel (`None`) moving a partition's
    /// replicas (AlterPartitionReassignments).
    Reassign {
        name: String,
        partition: i32,
        target: Option<Vec<i32>>,
    },
    /// The partition's Raft voters are now `replicas`: make it so in the
    /// catalog and end the reassignment.
    CompleteReassignment {
        name: String,
        partition: i32,
        replicas: Vec<i32>,
    },
    /// A consumer group's record as of its last generation; `None` deletes
    /// the group and all its committed offsets.
    PutGroup {
        group: String,
        record: Option<crate::groups::record::GroupRecord>,
        #[serde(default)]
        now_ms: i64,
        /// A deletion by offset retention: it stays in this region. Other
        /// regions may hold the group non-empty, so expiry never deletes
        /// the global offsets (DeleteGroups does).
        #[serde(default)]
        regional: bool,
    },
    /// A transactional id's state (see `crate::txn`); `None` forgets it.
    PutTxn {
        id: String,
        txn: Option<crate::txn::state::Txn>,
    },
    CommitOffsets {
        group: String,
        offsets: Vec<(String, i32, crate::groups::record::OffsetRecord)>,
    },
    DeleteOffsets {
        group: String,
        partitions: Vec<(String, i32)>,
        #[serde(default)]
        now_ms: i64,
        /// See `PutGroup::regional`.
        #[serde(default)]
        regional: bool,
    },
    /// The regions of the topology, as the dc-link knows them: the global
    /// `__meta` waits for each one's acknowledgement before it forgets a
    /// tombstone, and refuses entries that name any other.
    MetaRegions { regions: Vec<String> },
    /// A dc-link's claim on (or renewal of) the region's dc-link actor
    /// role: a compare-and-set, see `chronik_metadata_sync::actor`.
    ClaimLinkActor {
        claim: chronik_metadata_sync::actor::Claim,
    },
    /// The promotions the region's lease vote agreed to (the dc-link's
    /// JSON), written by the actor `holder` at `term` only.
    KeepLinkPromotions {
        holder: String,
        term: u64,
        #[serde(with = "super::json_bytes")]
        promotions: Vec<u8>,
    },
    /// A peer region's anti-entropy delta (`chronik_metadata_sync::Delta`,
    /// encoded), merged into the global `__meta`; mirror topics and
    /// committed offsets follow what changed.
    MetaMerge {
        #[serde(with = "super::json_bytes")]
        delta: Vec<u8>,
        wall_ms: i64,
    },
    /// A peer region's summary, taken as its acknowledgement of the
    /// tombstones it covers; tombstones every region has seen are dropped.
    MetaPeerSummary {
        #[serde(with = "super::json_bytes")]
        summary: Vec<u8>,
    },
    /// Bring this region's copy of one topic (by id) back in line with its
    /// global entry: a mirror deleted here is created again when the
    /// dc-link offers the topic anew.
    MetaReconcile { topic_id: Uuid },
    /// AlterUserScramCredentials: credentials stored (the keys derived from
    /// the client's salted password) and deleted (user, mechanism number),
    /// in the global `__meta`.
    AlterScram {
        upserts: Vec<crate::catalog::ScramUpsert>,
        deletions: Vec<(String, i8)>,
        now_ms: i64,
    },
    /// CreateAcls and DeleteAcls: bindings stored and deleted in the global
    /// `__meta`.
    AlterAcls {
        create: Vec<crate::acl::AclBinding>,
        delete: Vec<crate::acl::AclBinding>,
        now_ms: i64,
    },
    /// `chronik ctl broker add`: broker `id` joins the region; its peers
    /// reach it at `raft` (see `catalog/members.rs`).
    AddBroker { id: i32, raft: String },
    /// Broker `id`, joining, now votes in the controller: it takes
    /// replicas from now on.
    ActivateBroker { id: i32 },
    /// `chronik ctl broker remove`: broker `id` starts leaving the region.
    RemoveBroker { id: i32 },
    /// Broker `id` has left: no replicas, no controller vote.
    ForgetBroker { id: i32 },
    /// Changes nothing: once applied, everything committed before it is
    /// applied too (a new group coordinator waits for this before loading).
    Barrier,
}

/// The outcome of applying one entry, returned to the proposer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum CommandResult {
    /// Blank and membership entries.
    None,
    Produced {
        base_offset: i64,
        /// The broker time stamped into LogAppendTime batches, else -1.
        log_append_time: i64,
    },
    /// An idempotent retry of a batch already in the log.
    Duplicate { base_offset: i64 },
    /// Applying failed deterministically (on every replica alike).
    Rejected { code: i16, message: String },
    /// A controller command succeeded.
    Done,
    /// DeleteRecords applied: the partition's new log start offset.
    Trimmed { low_watermark: i64 },
    /// TruncateSuffix applied: the log now ends at `log_end_offset`, and
    /// `removed_batches` batches went.
    Truncated {
        log_end_offset: i64,
        removed_batches: u64,
    },
    /// MirrorAppend: the log now ends at `log_end_offset`. `appended` is
    /// false when the batches did not start at the log end (nothing written).
    Mirrored { log_end_offset: i64, appended: bool },
    /// Compact: whether the pass was applied (false: this log no longer
    /// holds what the leader cleaned; nothing changed).
    Compacted { applied: bool },
    /// TxnMarker: the marker's offset, or `None` when the producer had no
    /// transaction open in the partition (nothing written).
    Marked { offset: Option<i64> },
}

impl std::fmt::Display for Command {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Command::Produce { records, .. } => write!(f, "produce({} bytes)", records.len()),
            Command::Controller(c) => write!(f, "{c:?}"),
            Command::DeleteRecords { offset } => write!(f, "delete-records(<{offset})"),
            Command::MirrorAppend {
                records,
                base_offset,
                ..
            } => write!(f, "mirror-append(@{base_offset}, {} bytes)", records.len()),
            Command::TruncateSuffix { offset } => write!(f, "truncate-suffix(>={offset})"),
            Command::Noop => write!(f, "noop"),
            Command::Compact(p) => write!(f, "compact(<{}, {} rewrites)", p.end, p.rewrites.len()),
            Command::TxnMarker(m) => write!(
                f,
                "txn-marker({} producer {} epoch {})",
                if m.commit { "commit" } else { "abort" },
                m.producer_id,
                m.producer_epoch
            ),
            Command::SetRole {
                role, retract_from, ..
            } => write!(
                f,
                "set-role({} @ epoch {}, {} producers retracted)",
                if role.home { "home" } else { "mirror" },
                role.epoch,
                retract_from.len()
            ),
        }
    }
}
