//! Partition administration that Kafka's tools use: OffsetForLeaderEpoch,
//! DeleteRecords, DescribeLogDirs, ElectLeaders (preferred),
//! DescribeProducers and partition reassignment.

use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::alter_partition_reassignments_response::{
    ReassignablePartitionResponse, ReassignableTopicResponse,
};
use kafka_protocol::messages::delete_records_response::{
    DeleteRecordsPartitionResult, DeleteRecordsTopicResult,
};
use kafka_protocol::messages::describe_log_dirs_response::{
    DescribeLogDirsPartition, DescribeLogDirsResult, DescribeLogDirsTopic,
};
use kafka_protocol::messages::describe_producers_response::{
    PartitionResponse as ProducersPartition, ProducerState, TopicResponse as ProducersTopic,
};
use kafka_protocol::messages::elect_leaders_response::{PartitionResult, ReplicaElectionResult};
use kafka_protocol::messages::list_partition_reassignments_response::{
    OngoingPartitionReassignment, OngoingTopicReassignment,
};
use kafka_protocol::messages::offset_for_leader_epoch_response::{
    EpochEndOffset, OffsetForLeaderTopicResult,
};
use kafka_protocol::messages::{
    AlterPartitionReassignmentsRequest, AlterPartitionReassignmentsResponse, BrokerId,
    DeleteRecordsRequest, DeleteRecordsResponse, DescribeLogDirsRequest, DescribeLogDirsResponse,
    DescribeProducersRequest, DescribeProducersResponse, ElectLeadersRequest, ElectLeadersResponse,
    ListPartitionReassignmentsRequest, ListPartitionReassignmentsResponse,
    OffsetForLeaderEpochRequest, OffsetForLeaderEpochResponse, ProducerId, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::acl::op;
use crate::catalog::TopicError;
use crate::context::BrokerCtx;
use crate::error::KafkaCode;
use crate::raft::types::{Command, CommandResult};
use crate::raft::ProposeError;

use super::authorize::Authz;

use super::fetch::check_epoch;

const ELECTION_TYPE_PREFERRED: i8 = 0;

/// Kafka's leader-epoch lookup: the end offset of `requested` (the start of
/// the next higher epoch, or the log end for the current one) and the
/// largest epoch at or below it. `history` is (epoch, start offset), oldest
/// first; epochs after the last entry up to `current` wrote nothing yet, so
/// they end at the log end.
pub fn end_offset_for(
    history: &[(i32, i64)],
    current: i32,
    requested: i32,
    log_end: i64,
) -> (i32, i64) {
    if requested < 0 {
        return (-1, -1);
    }
    let latest = history.last().map(|e| e.0).unwrap_or(-1);
    if requested >= latest && requested <= current.max(latest) {
        return (requested, log_end);
    }
    match history.iter().find(|e| e.0 > requested) {
        None => (-1, -1),
        Some(higher) => match history.iter().rev().find(|e| e.0 <= requested) {
            Some(floor) => (floor.0, higher.1),
            None => (requested, higher.1),
        },
    }
}

pub fn offset_for_leader_epoch(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: OffsetForLeaderEpochRequest,
) -> OffsetForLeaderEpochResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.catalog.get(&t.topic.0);
            let allowed = authz.topic(op::DESCRIBE, &t.topic.0);
            let parts = t
                .partitions
                .into_iter()
                .map(|p| {
                    let out = EpochEndOffset::default()
                        .with_partition(p.partition)
                        .with_leader_epoch(-1)
                        .with_end_offset(-1);
                    if !allowed {
                        return out.with_error_code(E::TopicAuthorizationFailed.code());
                    }
                    let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition)) else {
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    if ctx.cluster.leader_group(log).is_none() {
                        return out.with_error_code(E::NotLeaderOrFollower.code());
                    }
                    let current = log.leader_epoch();
                    if let Some(code) = check_epoch(p.current_leader_epoch, current) {
                        return out.with_error_code(code);
                    }
                    let (epoch, end) = end_offset_for(
                        &log.epoch_history(),
                        current,
                        p.leader_epoch,
                        log.log_end_offset(),
                    );
                    out.with_leader_epoch(epoch).with_end_offset(end)
                })
                .collect();
            OffsetForLeaderTopicResult::default()
                .with_topic(t.topic)
                .with_partitions(parts)
        })
        .collect();
    OffsetForLeaderEpochResponse::default().with_topics(topics)
}

pub async fn delete_records(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: DeleteRecordsRequest,
) -> DeleteRecordsResponse {
    let timeout = Duration::from_millis(req.timeout_ms.clamp(1_000, 120_000) as u64);
    let mut topics = Vec::new();
    for t in req.topics {
        let topic = ctx.catalog.get(&t.name.0);
        let allowed = authz.topic(op::DELETE, &t.name.0);
        let mut parts = Vec::new();
        for p in t.partitions {
            let out = DeleteRecordsPartitionResult::default()
                .with_partition_index(p.partition_index)
                .with_low_watermark(-1);
            if !allowed {
                parts.push(out.with_error_code(E::TopicAuthorizationFailed.code()));
                continue;
            }
            let Some(log) = topic.as_ref().and_then(|t| t.partition(p.partition_index)) else {
                parts.push(out.with_error_code(E::UnknownTopicOrPartition.code()));
                continue;
            };
            let Some((group, _)) = ctx.cluster.leader_group(log) else {
                parts.push(out.with_error_code(E::NotLeaderOrFollower.code()));
                continue;
            };
            // -1 means "up to the high watermark", as in Kafka.
            let hw = log.high_watermark();
            let offset = if p.offset == -1 { hw } else { p.offset };
            if offset < 0 || offset > hw {
                parts.push(out.with_error_code(E::OffsetOutOfRange.code()));
                continue;
            }
            let done = group.submit(Command::DeleteRecords { offset });
            parts.push(match tokio::time::timeout(timeout, done).await {
                Ok(Ok(Ok(CommandResult::Trimmed { low_watermark }))) => {
                    out.with_low_watermark(low_watermark)
                }
                Ok(Ok(Ok(CommandResult::Rejected { code, .. }))) => out.with_error_code(code),
                Ok(Ok(Err(ProposeError::NotLeader(_)))) => {
                    out.with_error_code(E::NotLeaderOrFollower.code())
                }
                Ok(Ok(Ok(_))) => out.with_error_code(E::UnknownServerError.code()),
                _ => out.with_error_code(E::RequestTimedOut.code()),
            });
        }
        topics.push(
            DeleteRecordsTopicResult::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    DeleteRecordsResponse::default().with_topics(topics)
}

/// One log directory: the broker's data dir, with every partition replica
/// hosted here.
pub fn describe_log_dirs(ctx: &BrokerCtx, req: DescribeLogDirsRequest) -> DescribeLogDirsResponse {
    let wanted = |topic: &str, p: i32| match &req.topics {
        None => true,
        Some(list) => list
            .iter()
            .any(|t| t.topic.0.as_str() == topic && t.partitions.contains(&p)),
    };
    let me = ctx.config.node_id;
    let mut topics: Vec<DescribeLogDirsTopic> = Vec::new();
    for t in ctx.catalog.list() {
        let parts: Vec<DescribeLogDirsPartition> = t
            .partitions
            .iter()
            .filter(|p| {
                ctx.cluster.replicas_of(&t, p.partition).contains(&me)
                    && wanted(t.name(), p.partition)
            })
            .map(|p| {
                DescribeLogDirsPartition::default()
                    .with_partition_index(p.partition)
                    .with_partition_size(p.size_bytes() as i64)
                    // Replicas hold only committed data, so a replica is
                    // behind its leader by what it has yet to apply.
                    .with_offset_lag(0)
            })
            .collect();
        if !parts.is_empty() {
            topics.push(
                DescribeLogDirsTopic::default()
                    .with_name(TopicName(StrBytes::from_string(t.name().to_string())))
                    .with_partitions(parts),
            );
        }
    }
    let (total, usable) = disk_space(&ctx.config.data_dir);
    DescribeLogDirsResponse::default().with_results(vec![DescribeLogDirsResult::default()
        .with_log_dir(StrBytes::from_string(
            ctx.config.data_dir.display().to_string(),
        ))
        .with_topics(topics)
        .with_total_bytes(total)
        .with_usable_bytes(usable)])
}

/// (total, available) bytes of the filesystem holding `dir`, or -1 each
/// when unknown (what Kafka reports then too).
fn disk_space(dir: &std::path::Path) -> (i64, i64) {
    use std::os::unix::ffi::OsStrExt;
    let Ok(path) = std::ffi::CString::new(dir.as_os_str().as_bytes()) else {
        return (-1, -1);
    };
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a valid NUL-terminated path and a zeroed out-struct.
    if unsafe { libc::statvfs(path.as_ptr(), &mut st) } != 0 {
        return (-1, -1);
    }
    let frag = st.f_frsize as i64;
    (st.f_blocks as i64 * frag, st.f_bavail as i64 * frag)
}

pub async fn elect_leaders(ctx: &BrokerCtx, req: ElectLeadersRequest) -> ElectLeadersResponse {
    let wait = Duration::from_millis(req.timeout_ms.clamp(1_000, 60_000) as u64);
    let wanted: Vec<(String, Vec<i32>)> = match req.topic_partitions {
        Some(list) => list
            .into_iter()
            .map(|t| (t.topic.0.to_string(), t.partitions))
            .collect(),
        None => ctx
            .catalog
            .list()
            .into_iter()
            .map(|t| {
                (
                    t.name().to_string(),
                    t.partitions.iter().map(|p| p.partition).collect(),
                )
            })
            .collect(),
    };
    let mut results = Vec::new();
    for (name, partitions) in wanted {
        let topic = ctx.catalog.get(&name);
        let jobs = partitions.into_iter().map(|p| {
            let topic = topic.clone();
            async move {
                let res = PartitionResult::default().with_partition_id(p);
                if req.election_type != ELECTION_TYPE_PREFERRED {
                    return res.with_error_code(E::InvalidRequest.code()).with_error_message(Some(
                        StrBytes::from_static_str(
                            "unclean leader election does not exist with Raft: a leader is always elected from an up-to-date majority",
                        ),
                    ));
                }
                let Some((t, log)) = topic.as_ref().and_then(|t| Some((t, t.partition(p)?))) else {
                    return res.with_error_code(E::UnknownTopicOrPartition.code());
                };
                let view = ctx.cluster.view(t, log);
                let Some(&preferred) = view.replicas.first() else {
                    return res.with_error_code(E::UnknownTopicOrPartition.code());
                };
                let code = ctx.cluster.elect_preferred(log.log_id, view.leader, preferred, wait).await;
                res.with_error_code(code)
            }
        });
        let parts = futures_util::future::join_all(jobs).await;
        results.push(
            ReplicaElectionResult::default()
                .with_topic(TopicName(StrBytes::from_string(name)))
                .with_partition_result(parts),
        );
    }
    ElectLeadersResponse::default().with_replica_election_results(results)
}

/// The producers each partition leader remembers, with where each one's
/// open transaction begins (`kafka-transactions.sh find-hanging` and
/// `abort --start-offset` look for it here). Chronik keeps no per-producer
/// timestamp nor the epoch of the coordinator that wrote a producer's last
/// marker: both are -1.
pub fn describe_producers(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: DescribeProducersRequest,
) -> DescribeProducersResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let topic = ctx.catalog.get(&t.name.0);
            let allowed = authz.topic(op::READ, &t.name.0);
            let parts = t
                .partition_indexes
                .into_iter()
                .map(|p| {
                    let out = ProducersPartition::default().with_partition_index(p);
                    if !allowed {
                        return out.with_error_code(E::TopicAuthorizationFailed.code());
                    }
                    let Some(log) = topic.as_ref().and_then(|t| t.partition(p)) else {
                        return out.with_error_code(E::UnknownTopicOrPartition.code());
                    };
                    if ctx.cluster.leader_group(log).is_none() {
                        return out.with_error_code(E::NotLeaderOrFollower.code());
                    }
                    let open = log.open_transactions();
                    out.with_active_producers(
                        log.producers()
                            .into_iter()
                            .map(|(pid, epoch, seq)| {
                                ProducerState::default()
                                    .with_producer_id(ProducerId(pid))
                                    .with_producer_epoch(epoch as i32)
                                    .with_last_sequence(seq)
                                    .with_last_timestamp(-1)
                                    .with_coordinator_epoch(-1)
                                    .with_current_txn_start_offset(
                                        open.get(&pid).copied().unwrap_or(-1),
                                    )
                            })
                            .collect(),
                    )
                })
                .collect();
            ProducersTopic::default()
                .with_name(t.name)
                .with_partitions(parts)
        })
        .collect();
    DescribeProducersResponse::default().with_topics(topics)
}

/// AlterPartitionReassignments: records each move with the controller; the
/// partition's leader then adds the new replicas as Raft learners, switches
/// the voters once they have caught up, and completes the move.
pub async fn alter_partition_reassignments(
    ctx: &BrokerCtx,
    req: AlterPartitionReassignmentsRequest,
) -> AlterPartitionReassignmentsResponse {
    let mut responses = Vec::new();
    for t in req.topics {
        let mut parts = Vec::new();
        for p in t.partitions {
            let target = p
                .replicas
                .map(|r| r.into_iter().map(|b| b.0).collect::<Vec<i32>>());
            let current = ctx
                .catalog
                .get(&t.name.0)
                .map(|topic| topic.replicas(p.partition_index));
            let res = match (&target, current) {
                (Some(want), Some(now))
                    if !req.allow_replication_factor_change
                        && !now.is_empty()
                        && want.len() != now.len() =>
                {
                    Err(TopicError::InvalidReplicaAssignment(format!(
                        "the replication factor would change from {} to {}",
                        now.len(),
                        want.len()
                    )))
                }
                _ => {
                    ctx.catalog
                        .reassign(&t.name.0, p.partition_index, target)
                        .await
                }
            };
            let out =
                ReassignablePartitionResponse::default().with_partition_index(p.partition_index);
            parts.push(match res {
                Ok(()) => out,
                Err(e) => out
                    .with_error_code(e.kafka_code())
                    .with_error_message(Some(StrBytes::from_string(e.to_string()))),
            });
        }
        responses.push(
            ReassignableTopicResponse::default()
                .with_name(t.name)
                .with_partitions(parts),
        );
    }
    AlterPartitionReassignmentsResponse::default()
        .with_allow_replication_factor_change(req.allow_replication_factor_change)
        .with_responses(responses)
}

pub fn list_partition_reassignments(
    ctx: &BrokerCtx,
    req: ListPartitionReassignmentsRequest,
) -> ListPartitionReassignmentsResponse {
    let ids = |v: &[i32]| v.iter().map(|b| BrokerId(*b)).collect::<Vec<_>>();
    let mut topics = Vec::new();
    for t in ctx.catalog.list() {
        let wanted: Option<Vec<i32>> = match &req.topics {
            None => None,
            Some(list) => match list.iter().find(|x| x.name.0.as_str() == t.name()) {
                Some(x) => Some(x.partition_indexes.clone()),
                None => continue,
            },
        };
        let parts: Vec<OngoingPartitionReassignment> = t
            .record
            .reassigning
            .iter()
            .filter(|(p, _)| wanted.as_ref().is_none_or(|w| w.contains(p)))
            .map(|(p, target)| {
                let now = ctx.cluster.replicas_of(&t, *p);
                let mut all = now.clone();
                all.extend(target.iter().filter(|b| !now.contains(b)));
                let adding: Vec<i32> = target
                    .iter()
                    .copied()
                    .filter(|b| !now.contains(b))
                    .collect();
                let removing: Vec<i32> = now
                    .iter()
                    .copied()
                    .filter(|b| !target.contains(b))
                    .collect();
                OngoingPartitionReassignment::default()
                    .with_partition_index(*p)
                    .with_replicas(ids(&all))
                    .with_adding_replicas(ids(&adding))
                    .with_removing_replicas(ids(&removing))
            })
            .collect();
        if !parts.is_empty() {
            topics.push(
                OngoingTopicReassignment::default()
                    .with_name(TopicName(StrBytes::from_string(t.name().to_string())))
                    .with_partitions(parts),
            );
        }
    }
    ListPartitionReassignmentsResponse::default().with_topics(topics)
}

#[cfg(test)]
mod tests {
    use super::end_offset_for;

    #[test]
    fn leader_epoch_lookup_follows_kafka() {
        let h = [(1, 0), (3, 100), (4, 250)];
        assert_eq!(
            end_offset_for(&h, 4, 4, 300),
            (4, 300),
            "current epoch ends at the log end"
        );
        assert_eq!(end_offset_for(&h, 4, 3, 300), (3, 250));
        assert_eq!(
            end_offset_for(&h, 4, 2, 300),
            (1, 100),
            "an epoch that wrote nothing maps to the one below"
        );
        assert_eq!(
            end_offset_for(&h, 4, 0, 300),
            (0, 0),
            "before the first epoch"
        );
        assert_eq!(
            end_offset_for(&h, 6, 5, 300),
            (5, 300),
            "terms since the last write end at the log end"
        );
        assert_eq!(
            end_offset_for(&h, 4, 7, 300),
            (-1, -1),
            "unknown future epoch"
        );
        assert_eq!(end_offset_for(&h, 4, -1, 300), (-1, -1));
        assert_eq!(end_offset_for(&[], 2, 2, 0), (2, 0));
    }
}
