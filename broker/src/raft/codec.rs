//! The peer wire format: prost messages for every Raft RPC, and the
//! conversions to and from openraft's types.
//!
//! Only this module and its siblings in `raft/` name openraft types; the
//! messages here are ours, so an openraft upgrade cannot change the bytes on
//! the wire or in the Raft log without a change in this file.

use std::collections::{BTreeMap, BTreeSet};

use bytes::Bytes;
use openraft::entry::RaftEntry;
use prost::Message;

use super::types::{Command, Entry, LogId, Membership, TypeConfig, Vote};
use openraft::raft::{AppendEntriesRequest, AppendEntriesResponse, VoteRequest, VoteResponse};

/// Frame kinds carried on a peer connection.
pub mod kind {
    pub const HELLO: i32 = 1;
    pub const APPEND: i32 = 2;
    pub const VOTE: i32 = 3;
    pub const PRE_VOTE: i32 = 4;
    pub const SNAPSHOT: i32 = 5;
    /// A controller command forwarded to the controller leader.
    pub const FORWARD: i32 = 6;
    /// One-way: the groups the sender leads (leader hints for Metadata).
    pub const LEADERS: i32 = 7;
    /// Snapshot transfer, step 1: "how far is your log?"
    pub const SNAP_BEGIN: i32 = 8;
    /// Snapshot transfer, step 2 (repeated): missing batches.
    pub const SNAP_CHUNK: i32 = 9;
    /// Leadership transfer to a preferred replica.
    pub const TRANSFER_LEADER: i32 = 10;
    /// ElectLeaders (preferred), forwarded to the partition's leader; the
    /// body is the preferred broker id (8 bytes BE) and the wait in ms (8).
    pub const ELECT_PREFERRED: i32 = 11;
    /// Instead of a Hello, from a broker starting on an empty data
    /// directory: "do you know me as a member?" The answer (one byte, 1 for
    /// yes) comes back and the connection closes.
    pub const PROBE: i32 = 12;
    /// A transaction marker for a partition this broker leads (`group` is
    /// the partition's log id, the body a JSON `TxnMarker`), from the
    /// transaction coordinator.
    pub const TXN_MARKER: i32 = 13;
}

/// One frame on a peer connection. Requests carry `id` > 0 and are answered
/// by a frame with the same id and `response = true`.
#[derive(Clone, PartialEq, Message)]
pub struct Frame {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    #[prost(bool, tag = "2")]
    pub response: bool,
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(uint64, tag = "4")]
    pub group: u64,
    #[prost(bytes = "bytes", tag = "5")]
    pub body: Bytes,
    /// Set on a response when the request could not be served.
    #[prost(string, tag = "6")]
    pub error: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLogId {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub index: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbVote {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub node: u64,
    #[prost(bool, tag = "3")]
    pub committed: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbNodeSet {
    #[prost(uint64, repeated, tag = "1")]
    pub ids: Vec<u64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbMembership {
    #[prost(message, repeated, tag = "1")]
    pub configs: Vec<PbNodeSet>,
    #[prost(uint64, repeated, tag = "2")]
    pub nodes: Vec<u64>,
}

pub const ENTRY_BLANK: i32 = 0;
pub const ENTRY_NORMAL: i32 = 1;
pub const ENTRY_MEMBERSHIP: i32 = 2;

#[derive(Clone, PartialEq, Message)]
pub struct PbEntry {
    #[prost(uint64, tag = "1")]
    pub term: u64,
    #[prost(uint64, tag = "2")]
    pub index: u64,
    #[prost(int32, tag = "3")]
    pub kind: i32,
    #[prost(message, optional, tag = "4")]
    pub command: Option<PbCommand>,
    #[prost(message, optional, tag = "5")]
    pub membership: Option<PbMembership>,
}

/// A replicated command. Produce carries the producer's batch unchanged;
/// offsets are assigned when the entry is applied, so every replica assigns
/// the same ones.
#[derive(Clone, PartialEq, Message)]
pub struct PbCommand {
    #[prost(bytes = "bytes", tag = "1")]
    pub records: Bytes,
    /// Leader wall clock when proposed (LogAppendTime topics).
    #[prost(int64, tag = "2")]
    pub now_ms: i64,
    /// A controller command, JSON: catalog entries are small and rare, and
    /// JSON keeps them readable in `chronik` debugging output.
    #[prost(bytes = "bytes", tag = "3")]
    pub controller: Bytes,
    /// DeleteRecords: the partition's new log start offset.
    #[prost(int64, optional, tag = "4")]
    pub delete_records: Option<i64>,
    /// MirrorAppend: `records` are stamped batches starting at this offset.
    #[prost(int64, optional, tag = "5")]
    pub mirror_base_offset: Option<i64>,
    #[prost(bool, tag = "6")]
    pub mirror_from_log_start: bool,
    /// Produce: the leader's `message.timestamp.type` decision. Absent in
    /// entries written before it was recorded (see `Command::Produce`).
    #[prost(bool, optional, tag = "7")]
    pub log_append_time: Option<bool>,
    /// `Command::Noop`.
    #[prost(bool, tag = "8")]
    pub noop: bool,
    /// `Command::SetRole`: the fencing epoch, and whether the copy is home.
    #[prost(uint64, optional, tag = "9")]
    pub role_epoch: Option<u64>,
    #[prost(bool, tag = "10")]
    pub role_home: bool,
    /// TruncateSuffix: the offset the log is cut back to.
    #[prost(int64, optional, tag = "11")]
    pub truncate_suffix: Option<i64>,
    /// Compact: the leader's cleaning pass.
    #[prost(message, optional, tag = "12")]
    pub compact: Option<PbCompact>,
    /// TxnMarker: a transaction's end in this partition.
    #[prost(message, optional, tag = "13")]
    pub txn_marker: Option<PbTxnMarker>,
    /// SetRole: the failover's verdict (see `Command::SetRole`).
    #[prost(message, repeated, tag = "14")]
    pub retract_from: Vec<PbRetraction>,
    #[prost(int64, optional, tag = "15")]
    pub view_end: Option<i64>,
}

/// `Retraction`.
#[derive(Clone, PartialEq, Message)]
pub struct PbRetraction {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int64, tag = "2")]
    pub seq: i64,
}

/// `Command::TxnMarker`.
#[derive(Clone, PartialEq, Message)]
pub struct PbTxnMarker {
    #[prost(int64, tag = "1")]
    pub producer_id: i64,
    #[prost(int32, tag = "2")]
    pub producer_epoch: i32,
    #[prost(bool, tag = "3")]
    pub commit: bool,
    #[prost(int32, tag = "4")]
    pub coordinator_epoch: i32,
    #[prost(int64, tag = "5")]
    pub now_ms: i64,
    /// A noted commit: its number and partition count.
    #[prost(int64, optional, tag = "6")]
    pub ending_seq: Option<i64>,
    #[prost(int32, tag = "7")]
    pub ending_parts: i32,
}

/// `Command::Compact` (see `crate::compaction::Plan`).
#[derive(Clone, PartialEq, Message)]
pub struct PbCompact {
    #[prost(message, repeated, tag = "1")]
    pub rewrites: Vec<PbRewrite>,
    #[prost(int64, tag = "2")]
    pub end: i64,
    #[prost(int32, optional, tag = "3")]
    pub through_epoch: Option<i32>,
    #[prost(int64, tag = "4")]
    pub through_start: i64,
    #[prost(int64, tag = "5")]
    pub now_ms: i64,
    #[prost(int64, optional, tag = "6")]
    pub tombstone_horizon: Option<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbRewrite {
    #[prost(int64, tag = "1")]
    pub base_offset: i64,
    #[prost(uint32, tag = "2")]
    pub crc: u32,
    /// The cleaned batch; empty when it is removed.
    #[prost(bytes = "bytes", tag = "3")]
    pub bytes: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbAppendRequest {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<PbVote>,
    #[prost(message, optional, tag = "2")]
    pub prev_log_id: Option<PbLogId>,
    #[prost(message, repeated, tag = "3")]
    pub entries: Vec<PbEntry>,
    #[prost(message, optional, tag = "4")]
    pub leader_commit: Option<PbLogId>,
}

pub const APPEND_SUCCESS: i32 = 0;
pub const APPEND_PARTIAL: i32 = 1;
pub const APPEND_CONFLICT: i32 = 2;
pub const APPEND_HIGHER_VOTE: i32 = 3;

#[derive(Clone, PartialEq, Message)]
pub struct PbAppendResponse {
    #[prost(int32, tag = "1")]
    pub outcome: i32,
    #[prost(message, optional, tag = "2")]
    pub log_id: Option<PbLogId>,
    #[prost(message, optional, tag = "3")]
    pub vote: Option<PbVote>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbVoteRequest {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<PbVote>,
    #[prost(message, optional, tag = "2")]
    pub last_log_id: Option<PbLogId>,
    #[prost(bool, tag = "3")]
    pub leadership_transfer: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbVoteResponse {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<PbVote>,
    #[prost(bool, tag = "2")]
    pub granted: bool,
    #[prost(message, optional, tag = "3")]
    pub last_log_id: Option<PbLogId>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbSnapshot {
    #[prost(message, optional, tag = "1")]
    pub vote: Option<PbVote>,
    #[prost(message, optional, tag = "2")]
    pub last_log_id: Option<PbLogId>,
    #[prost(message, optional, tag = "3")]
    pub membership_log_id: Option<PbLogId>,
    #[prost(message, optional, tag = "4")]
    pub membership: Option<PbMembership>,
    #[prost(bytes = "bytes", tag = "5")]
    pub data: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbTransferLeader {
    #[prost(message, optional, tag = "1")]
    pub from_leader: Option<PbVote>,
    #[prost(uint64, tag = "2")]
    pub to: u64,
    #[prost(message, optional, tag = "3")]
    pub last_log_id: Option<PbLogId>,
}

/// The answer to a leadership transfer: empty when accepted, else the vote
/// the receiver expected and the one it has.
#[derive(Clone, PartialEq, Message)]
pub struct PbTransferLeaderResponse {
    #[prost(message, optional, tag = "1")]
    pub expected: Option<PbVote>,
    #[prost(message, optional, tag = "2")]
    pub actual: Option<PbVote>,
    /// The receiver had not flushed the leader's log that far yet.
    #[prost(bool, tag = "3")]
    pub log_not_flushed: bool,
    #[prost(message, optional, tag = "4")]
    pub log_expected: Option<PbLogId>,
    #[prost(message, optional, tag = "5")]
    pub log_actual: Option<PbLogId>,
}

/// A leader's log as a snapshot transfer starts: the follower finds where
/// its own log leaves it (a failback cut it missed) and asks from there.
#[derive(Clone, PartialEq, Message)]
pub struct PbSnapBegin {
    #[prost(int64, tag = "1")]
    pub log_start: i64,
    #[prost(int64, tag = "2")]
    pub log_end: i64,
    #[prost(int32, repeated, tag = "3")]
    pub epochs: Vec<i32>,
    #[prost(int64, repeated, tag = "4")]
    pub epoch_starts: Vec<i64>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbSnapBeginResponse {
    #[prost(int64, tag = "1")]
    pub log_end: i64,
    #[prost(int64, tag = "2")]
    pub log_start: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbSnapChunk {
    /// >= 0 on the first chunk when the follower must drop its whole log.
    #[prost(int64, tag = "1")]
    pub reset_to: i64,
    #[prost(bytes = "bytes", repeated, tag = "2")]
    pub keys: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "3")]
    pub index: Vec<Bytes>,
    #[prost(bytes = "bytes", repeated, tag = "4")]
    pub batches: Vec<Bytes>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLeaderHint {
    #[prost(uint64, tag = "1")]
    pub group: u64,
    #[prost(uint64, tag = "2")]
    pub term: u64,
    #[prost(int32, repeated, tag = "3")]
    pub isr: Vec<i32>,
    /// The leader epoch clients see, when above the term (a mirror carries
    /// its home region's epochs).
    #[prost(int32, tag = "4")]
    pub epoch: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct PbLeaders {
    #[prost(int32, tag = "1")]
    pub node: i32,
    #[prost(message, repeated, tag = "2")]
    pub groups: Vec<PbLeaderHint>,
}

#[derive(Debug, thiserror::Error)]
#[error("malformed peer message: {0}")]
pub struct DecodeError(pub String);

impl From<prost::DecodeError> for DecodeError {
    fn from(e: prost::DecodeError) -> Self {
        DecodeError(e.to_string())
    }
}

fn missing(what: &str) -> DecodeError {
    DecodeError(format!("missing {what}"))
}

pub fn log_id_to_pb(l: &LogId) -> PbLogId {
    PbLogId {
        term: l.committed_leader_id().term,
        index: l.index(),
    }
}

pub fn log_id_from_pb(p: &PbLogId) -> LogId {
    LogId::new_term_index(p.term, p.index)
}

pub fn opt_log_id_to_pb(l: &Option<LogId>) -> Option<PbLogId> {
    l.as_ref().map(log_id_to_pb)
}

pub fn opt_log_id_from_pb(p: &Option<PbLogId>) -> Option<LogId> {
    p.as_ref().map(log_id_from_pb)
}

pub fn vote_to_pb(v: &Vote) -> PbVote {
    PbVote {
        term: v.leader_id.term,
        node: v.leader_id.voted_for,
        committed: v.committed,
    }
}

pub fn vote_from_pb(p: &Option<PbVote>) -> Result<Vote, DecodeError> {
    let p = p.as_ref().ok_or_else(|| missing("vote"))?;
    Ok(if p.committed {
        Vote::new_committed(p.term, p.node)
    } else {
        Vote::new(p.term, p.node)
    })
}

pub fn membership_to_pb(m: &Membership) -> PbMembership {
    PbMembership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|s| PbNodeSet {
                ids: s.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, _)| *id).collect(),
    }
}

pub fn membership_from_pb(p: &PbMembership) -> Result<Membership, DecodeError> {
    let configs: Vec<BTreeSet<u64>> = p
        .configs
        .iter()
        .map(|s| s.ids.iter().copied().collect())
        .collect();
    let nodes: BTreeMap<u64, openraft::EmptyNode> = p
        .nodes
        .iter()
        .map(|id| (*id, openraft::EmptyNode {}))
        .collect();
    Membership::new(configs, nodes).map_err(|e| DecodeError(format!("membership: {e}")))
}

pub fn command_to_pb(c: &Command) -> PbCommand {
    match c {
        Command::Produce {
            records,
            now_ms,
            log_append_time,
        } => PbCommand {
            records: records.clone(),
            now_ms: *now_ms,
            controller: Bytes::new(),
            delete_records: None,
            mirror_base_offset: None,
            mirror_from_log_start: false,
            log_append_time: *log_append_time,
            ..Default::default()
        },
        Command::Controller(cmd) => PbCommand {
            records: Bytes::new(),
            now_ms: 0,
            controller: serde_json::to_vec(cmd).expect("serializes").into(),
            delete_records: None,
            mirror_base_offset: None,
            mirror_from_log_start: false,
            log_append_time: None,
            ..Default::default()
        },
        Command::DeleteRecords { offset } => PbCommand {
            records: Bytes::new(),
            now_ms: 0,
            controller: Bytes::new(),
            delete_records: Some(*offset),
            mirror_base_offset: None,
            mirror_from_log_start: false,
            log_append_time: None,
            ..Default::default()
        },
        Command::MirrorAppend {
            records,
            base_offset,
            from_log_start,
        } => PbCommand {
            records: records.clone(),
            now_ms: 0,
            controller: Bytes::new(),
            delete_records: None,
            mirror_base_offset: Some(*base_offset),
            mirror_from_log_start: *from_log_start,
            log_append_time: None,
            ..Default::default()
        },
        Command::Noop => PbCommand {
            noop: true,
            ..Default::default()
        },
        Command::TruncateSuffix { offset } => PbCommand {
            truncate_suffix: Some(*offset),
            ..Default::default()
        },
        Command::Compact(p) => PbCommand {
            compact: Some(PbCompact {
                rewrites: p
                    .rewrites
                    .iter()
                    .map(|r| PbRewrite {
                        base_offset: r.base_offset,
                        crc: r.crc,
                        bytes: r.bytes.clone(),
                    })
                    .collect(),
                end: p.end,
                through_epoch: p.through.map(|t| t.0),
                through_start: p.through.map_or(0, |t| t.1),
                now_ms: p.now_ms,
                tombstone_horizon: p.tombstone_horizon,
            }),
            ..Default::default()
        },
        Command::TxnMarker(m) => PbCommand {
            txn_marker: Some(PbTxnMarker {
                producer_id: m.producer_id,
                producer_epoch: m.producer_epoch as i32,
                commit: m.commit,
                coordinator_epoch: m.coordinator_epoch,
                now_ms: m.now_ms,
                ending_seq: m.ending.map(|e| e.0),
                ending_parts: m.ending.map_or(0, |e| e.1),
            }),
            ..Default::default()
        },
        Command::SetRole {
            role,
            retract_from,
            view_end,
        } => PbCommand {
            role_epoch: Some(role.epoch),
            role_home: role.home,
            view_end: *view_end,
            retract_from: retract_from
                .iter()
                .map(|r| PbRetraction {
                    producer_id: r.producer_id,
                    seq: r.seq,
                })
                .collect(),
            ..Default::default()
        },
    }
}

pub fn command_from_pb(p: PbCommand) -> Result<Command, DecodeError> {
    if p.noop {
        Ok(Command::Noop)
    } else if let Some(c) = p.compact {
        Ok(Command::Compact(crate::compaction::Plan {
            rewrites: c
                .rewrites
                .into_iter()
                .map(|r| crate::compaction::Rewrite {
                    base_offset: r.base_offset,
                    crc: r.crc,
                    bytes: r.bytes,
                })
                .collect(),
            end: c.end,
            through: c.through_epoch.map(|e| (e, c.through_start)),
            now_ms: c.now_ms,
            tombstone_horizon: c.tombstone_horizon,
        }))
    } else if let Some(m) = p.txn_marker {
        Ok(Command::TxnMarker(crate::raft::types::TxnMarker {
            producer_id: m.producer_id,
            producer_epoch: i16::try_from(m.producer_epoch)
                .map_err(|_| DecodeError(format!("producer epoch {}", m.producer_epoch)))?,
            commit: m.commit,
            coordinator_epoch: m.coordinator_epoch,
            now_ms: m.now_ms,
            ending: m.ending_seq.map(|seq| (seq, m.ending_parts)),
        }))
    } else if let Some(epoch) = p.role_epoch {
        let retract_from = p
            .retract_from
            .into_iter()
            .map(|r| crate::raft::types::Retraction {
                producer_id: r.producer_id,
                seq: r.seq,
            })
            .collect();
        Ok(Command::SetRole {
            role: crate::home_role::Role {
                home: p.role_home,
                epoch,
            },
            retract_from,
            view_end: p.view_end,
        })
    } else if !p.controller.is_empty() {
        let cmd = serde_json::from_slice(&p.controller)
            .map_err(|e| DecodeError(format!("controller command: {e}")))?;
        Ok(Command::Controller(cmd))
    } else if let Some(offset) = p.truncate_suffix {
        Ok(Command::TruncateSuffix { offset })
    } else if let Some(offset) = p.delete_records {
        Ok(Command::DeleteRecords { offset })
    } else if let Some(base_offset) = p.mirror_base_offset {
        Ok(Command::MirrorAppend {
            records: p.records,
            base_offset,
            from_log_start: p.mirror_from_log_start,
        })
    } else {
        Ok(Command::Produce {
            records: p.records,
            now_ms: p.now_ms,
            log_append_time: p.log_append_time,
        })
    }
}

pub fn entry_to_pb(e: &Entry) -> PbEntry {
    let id = e.log_id();
    let mut pb = PbEntry {
        term: id.committed_leader_id().term,
        index: id.index(),
        kind: ENTRY_BLANK,
        command: None,
        membership: None,
    };
    let payload: &openraft::EntryPayload<Command, u64, openraft::EmptyNode> = &e.payload;
    match payload {
        openraft::EntryPayload::Blank => {}
        openraft::EntryPayload::Normal(c) => {
            pb.kind = ENTRY_NORMAL;
            pb.command = Some(command_to_pb(c));
        }
        openraft::EntryPayload::Membership(m) => {
            pb.kind = ENTRY_MEMBERSHIP;
            pb.membership = Some(membership_to_pb(m));
        }
    }
    pb
}

pub fn entry_from_pb(p: PbEntry) -> Result<Entry, DecodeError> {
    let log_id = LogId::new_term_index(p.term, p.index);
    let payload = match p.kind {
        ENTRY_BLANK => openraft::EntryPayload::Blank,
        ENTRY_NORMAL => openraft::EntryPayload::Normal(command_from_pb(
            p.command.ok_or_else(|| missing("command"))?,
        )?),
        ENTRY_MEMBERSHIP => openraft::EntryPayload::Membership(membership_from_pb(
            p.membership.as_ref().ok_or_else(|| missing("membership"))?,
        )?),
        k => return Err(DecodeError(format!("unknown entry kind {k}"))),
    };
    Ok(Entry { log_id, payload })
}

pub fn encode_entry(e: &Entry) -> Vec<u8> {
    entry_to_pb(e).encode_to_vec()
}

pub fn decode_entry(b: &[u8]) -> Result<Entry, DecodeError> {
    entry_from_pb(PbEntry::decode(b)?)
}

pub fn append_req_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> PbAppendRequest {
    PbAppendRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(&r.prev_log_id),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(&r.leader_commit),
    }
}

pub fn append_req_from_pb(
    p: PbAppendRequest,
) -> Result<AppendEntriesRequest<TypeConfig>, DecodeError> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(&p.vote)?,
        prev_log_id: opt_log_id_from_pb(&p.prev_log_id),
        leader_commit: opt_log_id_from_pb(&p.leader_commit),
        entries: p
            .entries
            .into_iter()
            .map(entry_from_pb)
            .collect::<Result<_, _>>()?,
    })
}

pub fn append_resp_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> PbAppendResponse {
    match r {
        AppendEntriesResponse::Success => PbAppendResponse {
            outcome: APPEND_SUCCESS,
            log_id: None,
            vote: None,
        },
        AppendEntriesResponse::PartialSuccess(l) => PbAppendResponse {
            outcome: APPEND_PARTIAL,
            log_id: opt_log_id_to_pb(l),
            vote: None,
        },
        AppendEntriesResponse::Conflict => PbAppendResponse {
            outcome: APPEND_CONFLICT,
            log_id: None,
            vote: None,
        },
        AppendEntriesResponse::HigherVote(v) => PbAppendResponse {
            outcome: APPEND_HIGHER_VOTE,
            log_id: None,
            vote: Some(vote_to_pb(v)),
        },
    }
}

pub fn append_resp_from_pb(
    p: PbAppendResponse,
) -> Result<AppendEntriesResponse<TypeConfig>, DecodeError> {
    Ok(match p.outcome {
        APPEND_SUCCESS => AppendEntriesResponse::Success,
        APPEND_PARTIAL => AppendEntriesResponse::PartialSuccess(opt_log_id_from_pb(&p.log_id)),
        APPEND_CONFLICT => AppendEntriesResponse::Conflict,
        APPEND_HIGHER_VOTE => AppendEntriesResponse::HigherVote(vote_from_pb(&p.vote)?),
        o => return Err(DecodeError(format!("unknown append outcome {o}"))),
    })
}

pub fn vote_req_to_pb(r: &VoteRequest<TypeConfig>) -> PbVoteRequest {
    PbVoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
        leadership_transfer: r.leadership_transfer,
    }
}

pub fn vote_req_from_pb(p: PbVoteRequest) -> Result<VoteRequest<TypeConfig>, DecodeError> {
    let mut r = VoteRequest::new(vote_from_pb(&p.vote)?, opt_log_id_from_pb(&p.last_log_id));
    r.leadership_transfer = p.leadership_transfer;
    Ok(r)
}

pub fn vote_resp_to_pb(r: &VoteResponse<TypeConfig>) -> PbVoteResponse {
    PbVoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
    }
}

pub fn vote_resp_from_pb(p: PbVoteResponse) -> Result<VoteResponse<TypeConfig>, DecodeError> {
    Ok(VoteResponse::new(
        vote_from_pb(&p.vote)?,
        opt_log_id_from_pb(&p.last_log_id),
        p.granted,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::raft::types::ControllerCommand;

    #[test]
    fn entries_round_trip() {
        let m = Membership::new(
            vec![[1u64, 2, 3].into_iter().collect()],
            [1u64, 2, 3]
                .into_iter()
                .map(|i| (i, openraft::EmptyNode {}))
                .collect::<BTreeMap<_, _>>(),
        )
        .unwrap();
        let entries = vec![
            Entry {
                log_id: LogId::new_term_index(3, 7),
                payload: openraft::EntryPayload::Blank,
            },
            Entry {
                log_id: LogId::new_term_index(3, 8),
                payload: openraft::EntryPayload::Normal(Command::Produce {
                    records: Bytes::from_static(b"batch"),
                    now_ms: 42,
                    log_append_time: Some(true),
                }),
            },
            Entry {
                log_id: LogId::new_term_index(3, 9),
                payload: openraft::EntryPayload::Normal(Command::Produce {
                    records: Bytes::from_static(b"batch"),
                    now_ms: 43,
                    log_append_time: Some(false),
                }),
            },
            Entry {
                log_id: LogId::new_term_index(4, 9),
                payload: openraft::EntryPayload::Membership(m),
            },
            Entry {
                log_id: LogId::new_term_index(4, 10),
                payload: openraft::EntryPayload::Normal(Command::Controller(
                    ControllerCommand::DeleteTopic {
                        name: "t".into(),
                        now_ms: 0,
                        id: None,
                    },
                )),
            },
            Entry {
                log_id: LogId::new_term_index(4, 11),
                payload: openraft::EntryPayload::Normal(Command::Noop),
            },
            Entry {
                log_id: LogId::new_term_index(4, 12),
                payload: openraft::EntryPayload::Normal(Command::SetRole {
                    role: crate::home_role::Role {
                        home: false,
                        epoch: 7,
                    },
                    retract_from: vec![crate::raft::types::Retraction {
                        producer_id: 5,
                        seq: 9,
                    }],
                    view_end: Some(40),
                }),
            },
            Entry {
                log_id: LogId::new_term_index(4, 13),
                payload: openraft::EntryPayload::Normal(Command::Compact(
                    crate::compaction::Plan {
                        rewrites: vec![
                            crate::compaction::Rewrite {
                                base_offset: 4,
                                crc: 0xdead_beef,
                                bytes: Bytes::from_static(b"cleaned"),
                            },
                            crate::compaction::Rewrite {
                                base_offset: 9,
                                crc: 7,
                                bytes: Bytes::new(),
                            },
                        ],
                        end: 20,
                        through: Some((3, 0)),
                        now_ms: 1_700_000_000_000,
                        tombstone_horizon: Some(1_700_086_400_000),
                    },
                )),
            },
            Entry {
                log_id: LogId::new_term_index(4, 14),
                payload: openraft::EntryPayload::Normal(Command::TxnMarker(
                    crate::raft::types::TxnMarker {
                        producer_id: 1 << 40,
                        producer_epoch: 3,
                        commit: true,
                        coordinator_epoch: 2,
                        now_ms: 1_700_000_000_001,
                        ending: Some((12, 3)),
                    },
                )),
            },
        ];
        for e in entries {
            let back = decode_entry(&encode_entry(&e)).unwrap();
            assert_eq!(format!("{e:?}"), format!("{back:?}"));
        }
    }

    /// `PbCommand` as brokers wrote it before the timestamp decision was
    /// recorded; their entries may still sit in Raft logs.
    #[derive(Clone, PartialEq, Message)]
    struct PbCommandV1 {
        #[prost(bytes = "bytes", tag = "1")]
        records: Bytes,
        #[prost(int64, tag = "2")]
        now_ms: i64,
    }

    #[test]
    fn produce_entries_without_a_timestamp_decision_still_decode() {
        let old = PbCommandV1 {
            records: Bytes::from_static(b"batch"),
            now_ms: 42,
        }
        .encode_to_vec();
        let cmd = command_from_pb(PbCommand::decode(old.as_slice()).unwrap()).unwrap();
        assert_eq!(
            cmd,
            Command::Produce {
                records: Bytes::from_static(b"batch"),
                now_ms: 42,
                log_append_time: None,
            }
        );
        // And brokers that predate the field read new entries as before.
        let new = command_to_pb(&Command::Produce {
            records: Bytes::from_static(b"batch"),
            now_ms: 42,
            log_append_time: Some(false),
        })
        .encode_to_vec();
        let back = PbCommandV1::decode(new.as_slice()).unwrap();
        assert_eq!((back.records.as_ref(), back.now_ms), (&b"batch"[..], 42));
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        assert!(decode_entry(&[0xff, 0xff, 0xff]).is_err());
        let bad = PbEntry {
            term: 1,
            index: 1,
            kind: 9,
            command: None,
            membership: None,
        };
        assert!(entry_from_pb(bad).is_err());
    }
}
