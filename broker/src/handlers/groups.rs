//! Consumer-group APIs: FindCoordinator, JoinGroup, SyncGroup, Heartbeat,
//! LeaveGroup, OffsetCommit, OffsetFetch, DescribeGroups, ListGroups,
//! DeleteGroups and OffsetDelete. The rules live in `crate::groups`; this
//! file only translates between Kafka messages and the coordinator.

use std::net::SocketAddr;

use bytes::Bytes;
use kafka_protocol::messages::delete_groups_response::DeletableGroupResult;
use kafka_protocol::messages::describe_groups_response::{DescribedGroup, DescribedGroupMember};
use kafka_protocol::messages::find_coordinator_response::Coordinator as CoordinatorEntry;
use kafka_protocol::messages::join_group_response::JoinGroupResponseMember;
use kafka_protocol::messages::leave_group_response::MemberResponse;
use kafka_protocol::messages::list_groups_response::ListedGroup;
use kafka_protocol::messages::offset_commit_response::{
    OffsetCommitResponsePartition, OffsetCommitResponseTopic,
};
use kafka_protocol::messages::offset_delete_response::{
    OffsetDeleteResponsePartition, OffsetDeleteResponseTopic,
};
use kafka_protocol::messages::offset_fetch_response::{
    OffsetFetchResponseGroup, OffsetFetchResponsePartition, OffsetFetchResponsePartitions,
    OffsetFetchResponseTopic, OffsetFetchResponseTopics,
};
use kafka_protocol::messages::{
    BrokerId, DeleteGroupsRequest, DeleteGroupsResponse, DescribeGroupsRequest,
    DescribeGroupsResponse, FindCoordinatorRequest, FindCoordinatorResponse, GroupId,
    HeartbeatRequest, HeartbeatResponse, JoinGroupRequest, JoinGroupResponse, LeaveGroupRequest,
    LeaveGroupResponse, ListGroupsRequest, ListGroupsResponse, OffsetCommitRequest,
    OffsetCommitResponse, OffsetDeleteRequest, OffsetDeleteResponse, OffsetFetchRequest,
    OffsetFetchResponse, SyncGroupRequest, SyncGroupResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;

use crate::acl::op;
use crate::context::BrokerCtx;
use crate::groups::record::OffsetRecord;
use crate::groups::state::JoinRequest;
use crate::groups::{err, CommitItem};

use super::authorize::Authz;
use super::OPS_NOT_REQUESTED;

const GROUP_DENIED: i16 = 30; // GROUP_AUTHORIZATION_FAILED
const TOPIC_DENIED: i16 = 29; // TOPIC_AUTHORIZATION_FAILED

const TRANSACTIONAL_ID_DENIED: i16 = 53; // TRANSACTIONAL_ID_AUTHORIZATION_FAILED

const KEY_TYPE_GROUP: i8 = 0;
const KEY_TYPE_TRANSACTION: i8 = 1;
const INVALID_REQUEST: i16 = 42;

fn s(v: impl Into<String>) -> StrBytes {
    StrBytes::from_string(v.into())
}

fn opt(v: &Option<StrBytes>) -> Option<String> {
    v.as_ref().map(|x| x.to_string())
}

fn message(code: i16) -> Option<StrBytes> {
    let text = match code {
        0 => return None,
        err::NOT_COORDINATOR => "This broker is not the group coordinator; find it again.",
        err::COORDINATOR_NOT_AVAILABLE => "The group coordinator is not available.",
        err::COORDINATOR_LOAD_IN_PROGRESS => "The group coordinator is loading groups.",
        _ => return None,
    };
    Some(s(text))
}

pub fn find_coordinator(
    ctx: &BrokerCtx,
    authz: &Authz,
    listener: &str,
    version: i16,
    req: FindCoordinatorRequest,
) -> FindCoordinatorResponse {
    let keys: Vec<StrBytes> = if version >= 4 {
        req.coordinator_keys.clone()
    } else {
        vec![req.key.clone()]
    };
    let answer = |key: StrBytes| -> CoordinatorEntry {
        let allowed = match req.key_type {
            KEY_TYPE_GROUP => authz.group(op::DESCRIBE, &key),
            KEY_TYPE_TRANSACTION => {
                authz.allows(op::DESCRIBE, crate::acl::resource::TRANSACTIONAL_ID, &key)
            }
            _ => false,
        };
        let base = CoordinatorEntry::default()
            .with_key(key)
            .with_node_id(BrokerId(-1))
            .with_port(-1);
        if req.key_type != KEY_TYPE_GROUP && req.key_type != KEY_TYPE_TRANSACTION {
            // Share groups are not served here.
            return base
                .with_error_code(INVALID_REQUEST)
                .with_error_message(Some(s(format!(
                    "key type {} is not supported: Chronik coordinates consumer groups and transactions",
                    req.key_type
                ))));
        }
        if !allowed {
            return base.with_error_code(if req.key_type == KEY_TYPE_GROUP {
                GROUP_DENIED
            } else {
                TRANSACTIONAL_ID_DENIED
            });
        }
        // Both coordinators are the controller leader.
        match ctx.groups.find(listener) {
            Ok((id, host, port)) => base
                .with_node_id(BrokerId(id))
                .with_host(s(host))
                .with_port(port as i32),
            Err(code) => base.with_error_code(code).with_error_message(message(code)),
        }
    };
    let results: Vec<CoordinatorEntry> = keys.into_iter().map(answer).collect();
    let mut resp = FindCoordinatorResponse::default();
    if version >= 4 {
        resp.coordinators = results;
    } else if let Some(c) = results.into_iter().next() {
        resp.error_code = c.error_code;
        resp.error_message = c.error_message;
        resp.node_id = c.node_id;
        resp.host = c.host;
        resp.port = c.port;
    }
    resp
}

pub async fn join_group(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    client_id: Option<StrBytes>,
    peer: SocketAddr,
    req: JoinGroupRequest,
) -> JoinGroupResponse {
    let group = req.group_id.0.to_string();
    if !authz.group(op::READ, &group) {
        return JoinGroupResponse::default()
            .with_error_code(GROUP_DENIED)
            .with_generation_id(-1)
            .with_member_id(req.member_id);
    }
    let r = ctx
        .groups
        .join(
            &group,
            JoinRequest {
                member_id: req.member_id.to_string(),
                instance_id: opt(&req.group_instance_id),
                client_id: client_id.map(|c| c.to_string()).unwrap_or_default(),
                client_host: format!("/{}", peer.ip()),
                session_timeout_ms: req.session_timeout_ms,
                // v0 has no rebalance timeout: Kafka uses the session timeout.
                rebalance_timeout_ms: if version >= 1 {
                    req.rebalance_timeout_ms
                } else {
                    req.session_timeout_ms
                },
                protocol_type: req.protocol_type.to_string(),
                protocols: req
                    .protocols
                    .iter()
                    .map(|p| (p.name.to_string(), p.metadata.to_vec()))
                    .collect(),
                require_known_member_id: version >= 4,
                supports_skip_assignment: version >= 9,
            },
        )
        .await;
    JoinGroupResponse::default()
        .with_error_code(r.error)
        .with_generation_id(r.generation)
        .with_protocol_type(r.protocol_type.map(s))
        .with_protocol_name(if version >= 7 {
            r.protocol.map(s)
        } else {
            Some(s(r.protocol.unwrap_or_default()))
        })
        .with_leader(s(r.leader))
        .with_skip_assignment(r.skip_assignment)
        .with_member_id(s(r.member_id))
        .with_members(
            r.members
                .into_iter()
                .map(|(id, inst, meta)| {
                    JoinGroupResponseMember::default()
                        .with_member_id(s(id))
                        .with_group_instance_id(inst.map(s))
                        .with_metadata(Bytes::from(meta))
                })
                .collect(),
        )
}

pub async fn sync_group(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: SyncGroupRequest,
) -> SyncGroupResponse {
    if !authz.group(op::READ, &req.group_id.0) {
        return SyncGroupResponse::default().with_error_code(GROUP_DENIED);
    }
    let r = ctx
        .groups
        .sync(
            &req.group_id.0,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
            req.protocol_type.as_deref(),
            req.protocol_name.as_deref(),
            req.assignments
                .iter()
                .map(|a| (a.member_id.to_string(), a.assignment.to_vec()))
                .collect(),
        )
        .await;
    SyncGroupResponse::default()
        .with_error_code(r.error)
        .with_protocol_type(r.protocol_type.map(s))
        .with_protocol_name(r.protocol.map(s))
        .with_assignment(Bytes::from(r.assignment))
}

pub async fn heartbeat(ctx: &BrokerCtx, authz: &Authz, req: HeartbeatRequest) -> HeartbeatResponse {
    if !authz.group(op::READ, &req.group_id.0) {
        return HeartbeatResponse::default().with_error_code(GROUP_DENIED);
    }
    let code = ctx
        .groups
        .heartbeat(
            &req.group_id.0,
            &req.member_id,
            req.group_instance_id.as_deref(),
            req.generation_id,
        )
        .await;
    HeartbeatResponse::default().with_error_code(code)
}

pub async fn leave_group(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: LeaveGroupRequest,
) -> LeaveGroupResponse {
    if !authz.group(op::READ, &req.group_id.0) {
        return LeaveGroupResponse::default().with_error_code(GROUP_DENIED);
    }
    let members: Vec<(String, Option<String>)> = if version >= 3 {
        req.members
            .iter()
            .map(|m| (m.member_id.to_string(), opt(&m.group_instance_id)))
            .collect()
    } else {
        vec![(req.member_id.to_string(), None)]
    };
    match ctx.groups.leave(&req.group_id.0, &members).await {
        Err(code) => LeaveGroupResponse::default().with_error_code(code),
        Ok(codes) if version >= 3 => LeaveGroupResponse::default().with_members(
            members
                .into_iter()
                .zip(codes)
                .map(|((m, i), c)| {
                    MemberResponse::default()
                        .with_member_id(s(m))
                        .with_group_instance_id(i.map(s))
                        .with_error_code(c)
                })
                .collect(),
        ),
        Ok(codes) => LeaveGroupResponse::default().with_error_code(codes[0]),
    }
}

pub async fn offset_commit(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: OffsetCommitRequest,
) -> OffsetCommitResponse {
    // Kafka checks the group first: without it, nothing is committed.
    let group_ok = authz.group(op::READ, &req.group_id.0);
    let topic_ok: Vec<bool> = req
        .topics
        .iter()
        .map(|t| group_ok && authz.topic(op::READ, &t.name.0))
        .collect();
    let mut items = Vec::new();
    for (t, _) in req.topics.iter().zip(&topic_ok).filter(|(_, ok)| **ok) {
        for p in &t.partitions {
            items.push(CommitItem {
                topic: t.name.0.to_string(),
                partition: p.partition_index,
                offset: p.committed_offset,
                leader_epoch: p.committed_leader_epoch,
                metadata: opt(&p.committed_metadata),
            });
        }
    }
    let result = if !group_ok {
        Err(GROUP_DENIED)
    } else if items.is_empty() && topic_ok.iter().any(|ok| !ok) {
        Ok(Vec::new())
    } else {
        ctx.groups
            .commit(
                &req.group_id.0,
                &req.member_id,
                req.group_instance_id.as_deref(),
                req.generation_id_or_member_epoch,
                items,
            )
            .await
    };
    let mut codes = match &result {
        Ok(c) => c.clone().into_iter(),
        Err(_) => Vec::new().into_iter(),
    };
    let topics = req
        .topics
        .iter()
        .zip(topic_ok)
        .map(|(t, ok)| {
            OffsetCommitResponseTopic::default()
                .with_name(t.name.clone())
                .with_partitions(
                    t.partitions
                        .iter()
                        .map(|p| {
                            let code = match &result {
                                Err(c) => *c,
                                Ok(_) if !ok => TOPIC_DENIED,
                                Ok(_) => codes.next().unwrap_or(0),
                            };
                            OffsetCommitResponsePartition::default()
                                .with_partition_index(p.partition_index)
                                .with_error_code(code)
                        })
                        .collect(),
                )
        })
        .collect();
    OffsetCommitResponse::default().with_topics(topics)
}

/// (offset, leader epoch, metadata, error) of one fetched row.
fn fetched(r: &Fetched) -> (i64, i32, Option<StrBytes>, i16) {
    match r {
        Ok(Some(r)) => (
            r.offset,
            r.leader_epoch,
            Some(s(r.metadata.clone().unwrap_or_default())),
            0,
        ),
        Ok(None) => (-1, -1, Some(s("")), 0),
        Err(code) => (-1, -1, Some(s("")), *code),
    }
}

/// A committed offset, or why the principal may not see it.
type Fetched = Result<Option<OffsetRecord>, i16>;

/// Kafka's OffsetFetch rule for topics: a named topic the principal may
/// not describe answers TOPIC_AUTHORIZATION_FAILED; asked for all, such a
/// topic is left out.
fn visible(
    authz: &Authz,
    named: bool,
    rows: Vec<(String, i32, Option<OffsetRecord>)>,
) -> Vec<(String, i32, Fetched)> {
    rows.into_iter()
        .filter_map(|(t, p, r)| match authz.topic(op::DESCRIBE, &t) {
            true => Some((t, p, Ok(r))),
            false if named => Some((t, p, Err(TOPIC_DENIED))),
            false => None,
        })
        .collect()
}

pub async fn offset_fetch(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: OffsetFetchRequest,
) -> OffsetFetchResponse {
    if version >= 8 {
        let mut groups = Vec::new();
        for g in &req.groups {
            let topics = g.topics.as_ref().map(|ts| {
                ts.iter()
                    .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
                    .collect()
            });
            let named = topics.is_some();
            let out = OffsetFetchResponseGroup::default().with_group_id(g.group_id.clone());
            let rows = if authz.group(op::DESCRIBE, &g.group_id.0) {
                ctx.groups.fetch(&g.group_id.0, topics).await
            } else {
                Err(GROUP_DENIED)
            };
            let group = g.group_id.0.to_string();
            groups.push(match rows {
                Err(code) => out.with_error_code(code),
                Ok(rows) => out.with_topics(group_rows(visible(authz, named, rows), |t, parts| {
                    OffsetFetchResponseTopics::default()
                        .with_name(TopicName(s(t.clone())))
                        .with_partitions(
                            parts
                                .into_iter()
                                .map(|(p, r)| {
                                    let (o, e, m, code) =
                                        stable(ctx, req.require_stable, &group, &t, p, fetched(&r));
                                    OffsetFetchResponsePartitions::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(o)
                                        .with_committed_leader_epoch(e)
                                        .with_metadata(m)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })),
            });
        }
        return OffsetFetchResponse::default().with_groups(groups);
    }
    let topics = req.topics.as_ref().map(|ts| {
        ts.iter()
            .map(|t| (t.name.0.to_string(), t.partition_indexes.clone()))
            .collect()
    });
    let named = topics.is_some();
    let rows = if authz.group(op::DESCRIBE, &req.group_id.0) {
        ctx.groups.fetch(&req.group_id.0, topics).await
    } else {
        Err(GROUP_DENIED)
    };
    match rows {
        Err(code) => {
            // Before v2 there is no top-level error: report it per partition.
            let topics = req
                .topics
                .unwrap_or_default()
                .into_iter()
                .map(|t| {
                    OffsetFetchResponseTopic::default()
                        .with_name(t.name)
                        .with_partitions(
                            t.partition_indexes
                                .into_iter()
                                .map(|p| {
                                    OffsetFetchResponsePartition::default()
                                        .with_partition_index(p)
                                        .with_committed_offset(-1)
                                        .with_error_code(code)
                                })
                                .collect(),
                        )
                })
                .collect();
            OffsetFetchResponse::default()
                .with_error_code(code)
                .with_topics(topics)
        }
        Ok(rows) => OffsetFetchResponse::default().with_topics(group_rows(
            visible(authz, named, rows),
            |t, parts| {
                OffsetFetchResponseTopic::default()
                    .with_name(TopicName(s(t.clone())))
                    .with_partitions(
                        parts
                            .into_iter()
                            .map(|(p, r)| {
                                let (o, e, m, code) = stable(
                                    ctx,
                                    version >= 7 && req.require_stable,
                                    &req.group_id.0,
                                    &t,
                                    p,
                                    fetched(&r),
                                );
                                OffsetFetchResponsePartition::default()
                                    .with_partition_index(p)
                                    .with_committed_offset(o)
                                    .with_committed_leader_epoch(e)
                                    .with_metadata(m)
                                    .with_error_code(code)
                            })
                            .collect(),
                    )
            },
        )),
    }
}

/// KIP-447: a consumer that asks for stable offsets gets
/// UNSTABLE_OFFSET_COMMIT (and retries) while a transaction that commits
/// the partition's offset is still open, instead of an offset the
/// transaction may be about to move.
fn stable<M>(
    ctx: &BrokerCtx,
    require_stable: bool,
    group: &str,
    topic: &str,
    partition: i32,
    row: (i64, i32, M, i16),
) -> (i64, i32, M, i16) {
    if require_stable && ctx.catalog.txn_offset_pending(group, topic, partition) {
        return (
            -1,
            -1,
            row.2,
            kafka_protocol::error::ResponseError::UnstableOffsetCommit.code(),
        );
    }
    row
}

/// Groups (topic, partition, record) rows by topic, keeping first-seen order.
fn group_rows<T, R>(
    rows: Vec<(String, i32, R)>,
    make: impl Fn(String, Vec<(i32, R)>) -> T,
) -> Vec<T> {
    super::by_topic(rows.into_iter().map(|(t, p, r)| (t, (p, r))))
        .into_iter()
        .map(|(t, parts)| make(t, parts))
        .collect()
}

pub async fn describe_groups(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: DescribeGroupsRequest,
) -> DescribeGroupsResponse {
    let mut out = Vec::new();
    for g in req.groups {
        let base = DescribedGroup::default()
            .with_group_id(g.clone())
            .with_authorized_operations(OPS_NOT_REQUESTED);
        let described = if authz.group(op::DESCRIBE, &g.0) {
            ctx.groups.describe(&g.0).await
        } else {
            Err(GROUP_DENIED)
        };
        out.push(match described {
            Err(code) => base.with_error_code(code).with_error_message(message(code)),
            // Kafka 4 answers an unknown group with GROUP_ID_NOT_FOUND from
            // v6 on, and as a Dead group before.
            Ok(None) if version >= 6 => base
                .with_error_code(err::GROUP_ID_NOT_FOUND)
                .with_error_message(Some(s(format!("Group {} not found.", g.0))))
                .with_group_state(s("Dead")),
            Ok(None) => base.with_group_state(s("Dead")),
            Ok(Some(d)) => base
                .with_group_state(s(d.state.name()))
                .with_protocol_type(s(d.protocol_type))
                .with_protocol_data(s(d.protocol))
                .with_members(
                    d.members
                        .into_iter()
                        .map(|m| {
                            DescribedGroupMember::default()
                                .with_member_id(s(m.member_id))
                                .with_group_instance_id(m.instance_id.map(s))
                                .with_client_id(s(m.client_id))
                                .with_client_host(s(m.client_host))
                                .with_member_metadata(Bytes::from(m.metadata))
                                .with_member_assignment(Bytes::from(m.assignment))
                        })
                        .collect(),
                ),
        });
    }
    DescribeGroupsResponse::default().with_groups(out)
}

pub async fn list_groups(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: ListGroupsRequest,
) -> ListGroupsResponse {
    // Kafka: DESCRIBE on the cluster lists every group; otherwise each
    // group is listed only to a principal that may describe it.
    let all = authz.cluster(op::DESCRIBE);
    match ctx.groups.list().await {
        // Only the coordinator knows groups; elsewhere the answer is an
        // empty list, as from a Kafka broker that coordinates none.
        Err(err::NOT_COORDINATOR) => ListGroupsResponse::default(),
        Err(code) => ListGroupsResponse::default().with_error_code(code),
        Ok(groups) => {
            let states: Vec<String> = req.states_filter.iter().map(|x| x.to_lowercase()).collect();
            let types: Vec<String> = req.types_filter.iter().map(|x| x.to_lowercase()).collect();
            ListGroupsResponse::default().with_groups(
                groups
                    .into_iter()
                    .filter(|(_, _, st)| {
                        states.is_empty() || states.contains(&st.name().to_lowercase())
                    })
                    .filter(|_| types.is_empty() || types.iter().any(|t| t == "classic"))
                    .filter(|(id, _, _)| all || authz.group(op::DESCRIBE, id))
                    .map(|(id, ptype, st)| {
                        ListedGroup::default()
                            .with_group_id(GroupId(s(id)))
                            .with_protocol_type(s(ptype))
                            .with_group_state(s(st.name()))
                            .with_group_type(s("classic"))
                    })
                    .collect(),
            )
        }
    }
}

pub async fn delete_groups(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: DeleteGroupsRequest,
) -> DeleteGroupsResponse {
    let mut results = Vec::new();
    for g in req.groups_names {
        let code = if authz.group(op::DELETE, &g.0) {
            ctx.groups.delete(&g.0).await
        } else {
            GROUP_DENIED
        };
        results.push(
            DeletableGroupResult::default()
                .with_group_id(g)
                .with_error_code(code),
        );
    }
    DeleteGroupsResponse::default().with_results(results)
}

pub async fn offset_delete(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: OffsetDeleteRequest,
) -> OffsetDeleteResponse {
    if !authz.group(op::DELETE, &req.group_id.0) {
        return OffsetDeleteResponse::default().with_error_code(GROUP_DENIED);
    }
    let topic_ok: Vec<bool> = req
        .topics
        .iter()
        .map(|t| authz.topic(op::READ, &t.name.0))
        .collect();
    let parts: Vec<(String, i32)> = req
        .topics
        .iter()
        .zip(&topic_ok)
        .filter(|(_, ok)| **ok)
        .flat_map(|(t, _)| {
            t.partitions
                .iter()
                .map(|p| (t.name.0.to_string(), p.partition_index))
        })
        .collect();
    match ctx.groups.delete_offsets(&req.group_id.0, parts).await {
        Err(code) => OffsetDeleteResponse::default().with_error_code(code),
        Ok(codes) => {
            let mut codes = codes.into_iter();
            OffsetDeleteResponse::default().with_topics(
                req.topics
                    .into_iter()
                    .zip(topic_ok)
                    .map(|(t, ok)| {
                        OffsetDeleteResponseTopic::default()
                            .with_name(t.name)
                            .with_partitions(
                                t.partitions
                                    .iter()
                                    .map(|p| {
                                        OffsetDeleteResponsePartition::default()
                                            .with_partition_index(p.partition_index)
                                            .with_error_code(if ok {
                                                codes.next().unwrap_or(0)
                                            } else {
                                                TOPIC_DENIED
                                            })
                                    })
                                    .collect(),
                            )
                    })
                    .collect(),
            )
        }
    }
}
