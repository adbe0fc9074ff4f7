//! Transaction APIs: InitProducerId with a transactional id,
//! AddPartitionsToTxn, AddOffsetsToTxn, TxnOffsetCommit, EndTxn,
//! DescribeTransactions, ListTransactions, and WriteTxnMarkers from admin
//! clients. The coordinator's rules are in
//! `crate::txn`; here are the wire shapes and the ACL checks.

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::add_partitions_to_txn_response::{
    AddPartitionsToTxnPartitionResult, AddPartitionsToTxnTopicResult,
};
use kafka_protocol::messages::describe_transactions_response::{TopicData, TransactionState};
use kafka_protocol::messages::list_transactions_response::TransactionState as ListedState;
use kafka_protocol::messages::txn_offset_commit_response::{
    TxnOffsetCommitResponsePartition, TxnOffsetCommitResponseTopic,
};
use kafka_protocol::messages::write_txn_markers_response::{
    WritableTxnMarkerPartitionResult, WritableTxnMarkerResult, WritableTxnMarkerTopicResult,
};
use kafka_protocol::messages::{
    AddOffsetsToTxnRequest, AddOffsetsToTxnResponse, AddPartitionsToTxnRequest,
    AddPartitionsToTxnResponse, DescribeTransactionsRequest, DescribeTransactionsResponse,
    EndTxnRequest, EndTxnResponse, ListTransactionsRequest, ListTransactionsResponse, ProducerId,
    TopicName, TransactionalId, TxnOffsetCommitRequest, TxnOffsetCommitResponse,
    WriteTxnMarkersRequest, WriteTxnMarkersResponse,
};
use kafka_protocol::protocol::StrBytes;

use crate::acl::{op, resource};
use crate::context::BrokerCtx;
use crate::groups::record::OffsetRecord;
use crate::txn::state::{Status, TxnOffset};

use super::authorize::Authz;
use super::by_topic;

fn txn_allowed(authz: &Authz, operation: i8, id: &str) -> bool {
    authz.allows(operation, resource::TRANSACTIONAL_ID, id)
}

/// InitProducerId for a transactional id: (producer id, epoch) or a code.
pub async fn init_producer_id(
    ctx: &BrokerCtx,
    authz: &Authz,
    id: &str,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
) -> Result<(i64, i16), i16> {
    if !txn_allowed(authz, op::WRITE, id) {
        return Err(E::TransactionalIdAuthorizationFailed.code());
    }
    ctx.txns.init(id, timeout_ms, expected).await
}

pub async fn add_partitions(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: AddPartitionsToTxnRequest,
) -> AddPartitionsToTxnResponse {
    let id = req.v3_and_below_transactional_id.0.to_string();
    let parts: Vec<(String, i32)> = req
        .v3_and_below_topics
        .iter()
        .flat_map(|t| t.partitions.iter().map(|p| (t.name.0.to_string(), *p)))
        .collect();
    let codes: Vec<i16> = if !txn_allowed(authz, op::WRITE, &id) {
        vec![E::TransactionalIdAuthorizationFailed.code(); parts.len()]
    } else if let Some(denied) = parts.iter().position(|(t, _)| !authz.topic(op::WRITE, t)) {
        // As Kafka: the denied topics say so, the rest were not attempted.
        parts
            .iter()
            .enumerate()
            .map(|(i, (t, _))| {
                if i == denied || !authz.topic(op::WRITE, t) {
                    E::TopicAuthorizationFailed.code()
                } else {
                    E::OperationNotAttempted.code()
                }
            })
            .collect()
    } else {
        match ctx
            .txns
            .add_partitions(
                &id,
                req.v3_and_below_producer_id.0,
                req.v3_and_below_producer_epoch,
                &parts,
            )
            .await
        {
            Ok(codes) => codes,
            Err(code) => vec![code; parts.len()],
        }
    };
    let rows = parts
        .into_iter()
        .zip(codes)
        .map(|((topic, partition), code)| {
            let result = AddPartitionsToTxnPartitionResult::default()
                .with_partition_index(partition)
                .with_partition_error_code(code);
            (topic, result)
        });
    let by_topic = by_topic(rows)
        .into_iter()
        .map(|(topic, results)| {
            AddPartitionsToTxnTopicResult::default()
                .with_name(TopicName(StrBytes::from_string(topic)))
                .with_results_by_partition(results)
        })
        .collect();
    AddPartitionsToTxnResponse::default().with_results_by_topic_v3_and_below(by_topic)
}

pub async fn add_offsets(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: AddOffsetsToTxnRequest,
) -> AddOffsetsToTxnResponse {
    let id = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let code = if !txn_allowed(authz, op::WRITE, &id) {
        E::TransactionalIdAuthorizationFailed.code()
    } else if !authz.group(op::READ, &group) {
        E::GroupAuthorizationFailed.code()
    } else {
        match ctx
            .txns
            .add_offsets(&id, req.producer_id.0, req.producer_epoch, &group)
            .await
        {
            Ok(()) => 0,
            Err(c) => c,
        }
    };
    AddOffsetsToTxnResponse::default().with_error_code(code)
}

pub async fn txn_offset_commit(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: TxnOffsetCommitRequest,
) -> TxnOffsetCommitResponse {
    let id = req.transactional_id.0.to_string();
    let group = req.group_id.0.to_string();
    let now = super::now_ms();
    let mut code = if !txn_allowed(authz, op::WRITE, &id) {
        E::TransactionalIdAuthorizationFailed.code()
    } else if !authz.group(op::READ, &group) {
        E::GroupAuthorizationFailed.code()
    } else {
        ctx.groups
            .check_member(
                &group,
                req.member_id.as_str(),
                req.group_instance_id.as_deref(),
                req.generation_id,
            )
            .await
            .err()
            .unwrap_or(0)
    };
    let mut per_partition: Vec<(String, i32, i16)> = Vec::new();
    let mut offsets = Vec::new();
    for t in &req.topics {
        let topic = t.name.0.to_string();
        let known = ctx.catalog.get(&topic);
        for p in &t.partitions {
            let c = match &known {
                _ if !authz.topic(op::READ, &topic) => E::TopicAuthorizationFailed.code(),
                Some(k)
                    if p.partition_index >= 0
                        && (p.partition_index as usize) < k.partitions.len() =>
                {
                    0
                }
                _ => E::UnknownTopicOrPartition.code(),
            };
            if c == 0 {
                offsets.push(TxnOffset {
                    group: group.clone(),
                    topic: topic.clone(),
                    partition: p.partition_index,
                    offset: OffsetRecord {
                        offset: p.committed_offset,
                        leader_epoch: p.committed_leader_epoch,
                        metadata: p.committed_metadata.as_ref().map(|m| m.to_string()),
                        commit_ms: now,
                    },
                });
            }
            per_partition.push((topic.clone(), p.partition_index, c));
        }
    }
    if code == 0 && !offsets.is_empty() {
        if let Err(c) = ctx
            .txns
            .commit_offsets(&id, req.producer_id.0, req.producer_epoch, offsets)
            .await
        {
            code = c;
        }
    }
    let rows = per_partition.into_iter().map(|(topic, partition, c)| {
        let result = TxnOffsetCommitResponsePartition::default()
            .with_partition_index(partition)
            .with_error_code(if code != 0 { code } else { c });
        (topic, result)
    });
    let topics = by_topic(rows)
        .into_iter()
        .map(|(topic, partitions)| {
            TxnOffsetCommitResponseTopic::default()
                .with_name(TopicName(StrBytes::from_string(topic)))
                .with_partitions(partitions)
        })
        .collect();
    TxnOffsetCommitResponse::default().with_topics(topics)
}

pub async fn end_txn(ctx: &BrokerCtx, authz: &Authz, req: EndTxnRequest) -> EndTxnResponse {
    let id = req.transactional_id.0.to_string();
    let code = if !txn_allowed(authz, op::WRITE, &id) {
        E::TransactionalIdAuthorizationFailed.code()
    } else {
        match ctx
            .txns
            .end(&id, req.producer_id.0, req.producer_epoch, req.committed)
            .await
        {
            Ok(()) => 0,
            Err(c) => c,
        }
    };
    EndTxnResponse::default()
        .with_error_code(code)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1)
}

pub async fn describe(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: DescribeTransactionsRequest,
) -> DescribeTransactionsResponse {
    let mut states = Vec::new();
    for id in req.transactional_ids {
        let name = id.0.to_string();
        let base = TransactionState::default()
            .with_transactional_id(id.clone())
            .with_producer_id(ProducerId(-1))
            .with_producer_epoch(-1)
            .with_transaction_start_time_ms(-1)
            .with_transaction_state(StrBytes::from_static_str(""));
        if !txn_allowed(authz, op::DESCRIBE, &name) {
            states.push(base.with_error_code(E::TransactionalIdAuthorizationFailed.code()));
            continue;
        }
        states.push(match ctx.txns.describe(&name).await {
            Err(code) => base.with_error_code(code),
            Ok(None) => base.with_error_code(E::TransactionalIdNotFound.code()),
            Ok(Some(t)) => {
                let visible = t
                    .partitions
                    .iter()
                    .filter(|(topic, _)| authz.topic(op::DESCRIBE, topic))
                    .cloned();
                let topics = by_topic(visible)
                    .into_iter()
                    .map(|(topic, partitions)| {
                        TopicData::default()
                            .with_topic(TopicName(StrBytes::from_string(topic)))
                            .with_partitions(partitions)
                    })
                    .collect();
                base.with_producer_id(ProducerId(t.producer_id))
                    .with_producer_epoch(t.producer_epoch)
                    .with_transaction_timeout_ms(t.timeout_ms)
                    .with_transaction_start_time_ms(t.started_ms)
                    .with_transaction_state(StrBytes::from_static_str(t.status.kafka_name()))
                    .with_topics(topics)
            }
        });
    }
    DescribeTransactionsResponse::default().with_transaction_states(states)
}

pub async fn list(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: ListTransactionsRequest,
) -> ListTransactionsResponse {
    let listed = match ctx.txns.list() {
        Ok(l) => l,
        Err(code) => return ListTransactionsResponse::default().with_error_code(code),
    };
    let known: Vec<&str> = [
        Status::Empty,
        Status::Ongoing,
        Status::PrepareCommit,
        Status::PrepareAbort,
        Status::CompleteCommit,
        Status::CompleteAbort,
    ]
    .map(Status::kafka_name)
    .to_vec();
    let unknown: Vec<StrBytes> = req
        .state_filters
        .iter()
        .filter(|f| !known.contains(&f.as_str()))
        .cloned()
        .collect();
    let now = super::now_ms();
    let states = listed
        .into_iter()
        .filter(|(id, _)| txn_allowed(authz, op::DESCRIBE, id))
        .filter(|(_, t)| {
            req.state_filters.is_empty()
                || req
                    .state_filters
                    .iter()
                    .any(|f| f.as_str() == t.status.kafka_name())
        })
        .filter(|(_, t)| {
            req.producer_id_filters.is_empty()
                || req.producer_id_filters.iter().any(|p| p.0 == t.producer_id)
        })
        // v1: only transactions running longer than this.
        .filter(|(_, t)| {
            req.duration_filter < 0
                || (t.status == Status::Ongoing
                    && now.saturating_sub(t.started_ms) > req.duration_filter)
        })
        .map(|(id, t)| {
            ListedState::default()
                .with_transactional_id(TransactionalId(StrBytes::from_string(id)))
                .with_producer_id(ProducerId(t.producer_id))
                .with_transaction_state(StrBytes::from_static_str(t.status.kafka_name()))
        })
        .collect();
    ListTransactionsResponse::default()
        .with_unknown_state_filters(unknown)
        .with_transaction_states(states)
}

/// WriteTxnMarkers, as Kafka's admin client sends it to end a hanging
/// transaction (`kafka-transactions.sh abort`): each marker written on the
/// partitions this broker leads, through the partition's Raft log as the
/// coordinator's own markers are. Needs ClusterAction, as in Kafka.
pub async fn write_markers(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: WriteTxnMarkersRequest,
) -> WriteTxnMarkersResponse {
    let allowed = authz.cluster(op::CLUSTER_ACTION);
    let mut results = Vec::with_capacity(req.markers.len());
    for m in req.markers {
        let marker = crate::raft::types::TxnMarker {
            producer_id: m.producer_id.0,
            producer_epoch: m.producer_epoch,
            commit: m.transaction_result,
            coordinator_epoch: m.coordinator_epoch,
            now_ms: super::now_ms(),
            ending: None,
        };
        let mut rows = Vec::new();
        for t in &m.topics {
            for p in &t.partition_indexes {
                let code = if allowed {
                    write_one(ctx, &t.name.0, *p, &marker).await
                } else {
                    E::ClusterAuthorizationFailed.code()
                };
                rows.push((t.name.0.to_string(), (*p, code)));
            }
        }
        let topics = by_topic(rows)
            .into_iter()
            .map(|(name, parts)| {
                WritableTxnMarkerTopicResult::default()
                    .with_name(TopicName(StrBytes::from_string(name)))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, code)| {
                                WritableTxnMarkerPartitionResult::default()
                                    .with_partition_index(p)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            })
            .collect();
        results.push(
            WritableTxnMarkerResult::default()
                .with_producer_id(m.producer_id)
                .with_topics(topics),
        );
    }
    WriteTxnMarkersResponse::default().with_markers(results)
}

async fn write_one(
    ctx: &BrokerCtx,
    topic: &str,
    partition: i32,
    marker: &crate::raft::types::TxnMarker,
) -> i16 {
    let Some(t) = ctx.catalog.get(topic) else {
        return E::UnknownTopicOrPartition.code();
    };
    let Some(log) = t.partition(partition) else {
        return E::UnknownTopicOrPartition.code();
    };
    // A mirror's log is its home's: a marker of its own would part them.
    if t.mirror_of(&ctx.config.region).is_some() || ctx.cluster.leader_group(log).is_none() {
        return E::NotLeaderOrFollower.code();
    }
    match ctx
        .cluster
        .write_marker(log.log_id, ctx.config.node_id, *marker)
        .await
    {
        Ok(_) => 0,
        Err((code, message)) => {
            tracing::info!(
                topic,
                partition,
                producer_id = marker.producer_id,
                code,
                message,
                "WriteTxnMarkers: marker not written"
            );
            code
        }
    }
}
