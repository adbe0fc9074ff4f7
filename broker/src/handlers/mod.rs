//! Kafka API handlers. Each takes a decoded request and produces the
//! response body; framing and ordering live in `server.rs`.

mod acls;
mod admin;
pub mod authorize;
mod fetch;
mod groups;
mod partition_admin;
mod produce;
mod scram;
mod txn;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::metadata_response::{
    MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
};
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, BrokerId, DescribeClusterResponse, InitProducerIdRequest,
    InitProducerIdResponse, MetadataRequest, MetadataResponse, ProducerId, RequestKind, TopicName,
};
use kafka_protocol::protocol::{Encodable, StrBytes};

use crate::acl::op;
use crate::catalog::{validate_topic_name, Topic};
use crate::connection::ConnCtx;
use crate::context::BrokerCtx;
use crate::error::KafkaCode;
use crate::protocol::{self, encode_response, Request};
use authorize::Authz;

pub type BoxFuture = Pin<Box<dyn Future<Output = Bytes> + Send>>;

/// How a request is answered.
pub enum Reply {
    Now(Bytes),
    /// Runs concurrently with later requests; its response is still written
    /// in request order.
    Later(BoxFuture),
    /// acks=0 produce: Kafka sends nothing back.
    Nothing,
    /// acks=0 produce that failed: closing the connection is the only way
    /// to tell the producer, and it is what Kafka does.
    Close(String),
}

/// Authorized-operations value Kafka sends when they were not requested.
const OPS_NOT_REQUESTED: i32 = i32::MIN;

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

fn later<M, F>(
    ctx: &Arc<BrokerCtx>,
    (cid, key, version): (i32, ApiKey, i16),
    f: impl FnOnce(Arc<BrokerCtx>) -> F + Send + 'static,
) -> Reply
where
    M: Encodable + Send + 'static,
    F: Future<Output = M> + Send + 'static,
{
    let ctx = ctx.clone();
    Reply::Later(Box::pin(async move {
        let body = f(ctx).await;
        encode_response(cid, key, version, &body)
    }))
}

/// Handles one request. Work that must happen in request order (offset
/// assignment for produce) is done before this returns.
pub fn dispatch(ctx: &Arc<BrokerCtx>, req: Request, conn: &ConnCtx) -> Reply {
    let Request {
        header,
        api_key: key,
        version: v,
        body,
    } = req;
    let cid = header.correlation_id;
    let id = (cid, key, v);
    metrics::counter!("chronik_requests_total", "api" => protocol::api_name(key)).increment(1);
    let authz = ctx.authorizer.for_request(&ctx.catalog, conn);
    // Requests that only the cluster permission allows, refused whole.
    if let Some(b) = cluster_refusal(&authz, cid, key, v, &body) {
        return Reply::Now(b);
    }
    match body {
        RequestKind::ApiVersions(_) => {
            let body = ApiVersionsResponse::default().with_api_keys(protocol::api_versions_list());
            Reply::Now(encode_response(cid, key, v, &body))
        }
        RequestKind::Produce(p) => {
            // A produce the home region's dc-link makes for another region
            // is never forwarded again, and must be allowed to the region it
            // comes from as well as to the connection.
            let origin = chronik_wire::protocol::forwarded_origin(header.client_id.as_deref());
            let as_origin = origin.flatten().map(|r| authz.as_region(r));
            let from = produce::Sender {
                forwarded: origin.is_some(),
                authz: &authz,
                origin: as_origin.as_ref(),
                held_back: &conn.held_back,
            };
            produce::handle(ctx, cid, v, p, from)
        }
        RequestKind::Fetch(f) => later(ctx, id, move |ctx| async move {
            fetch::handle_fetch(ctx, authz, v, f).await
        }),
        RequestKind::ListOffsets(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &fetch::handle_list_offsets(ctx, &authz, v, r),
        )),
        RequestKind::Metadata(m) => {
            let listener = conn.listener.name.clone();
            later(ctx, id, move |ctx| async move {
                handle_metadata(&ctx, &authz, &listener, v, m).await
            })
        }
        RequestKind::InitProducerId(r) => later(ctx, id, move |ctx| async move {
            handle_init_producer_id(&ctx, &authz, r).await
        }),
        RequestKind::AddPartitionsToTxn(r) => later(ctx, id, move |ctx| async move {
            txn::add_partitions(&ctx, &authz, r).await
        }),
        RequestKind::AddOffsetsToTxn(r) => later(ctx, id, move |ctx| async move {
            txn::add_offsets(&ctx, &authz, r).await
        }),
        RequestKind::TxnOffsetCommit(r) => later(ctx, id, move |ctx| async move {
            txn::txn_offset_commit(&ctx, &authz, r).await
        }),
        RequestKind::EndTxn(r) => later(ctx, id, move |ctx| async move {
            txn::end_txn(&ctx, &authz, r).await
        }),
        RequestKind::DescribeTransactions(r) => later(ctx, id, move |ctx| async move {
            txn::describe(&ctx, &authz, r).await
        }),
        RequestKind::ListTransactions(r) => later(ctx, id, move |ctx| async move {
            txn::list(&ctx, &authz, r).await
        }),
        RequestKind::WriteTxnMarkers(r) => later(ctx, id, move |ctx| async move {
            txn::write_markers(&ctx, &authz, r).await
        }),
        RequestKind::DescribeCluster(_) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &describe_cluster(ctx, &conn.listener.name),
        )),
        RequestKind::DescribeUserScramCredentials(r) => {
            Reply::Now(encode_response(cid, key, v, &scram::describe(ctx, &r)))
        }
        RequestKind::AlterUserScramCredentials(r) => {
            later(
                ctx,
                id,
                move |ctx| async move { scram::alter(&ctx, r).await },
            )
        }
        RequestKind::DescribeAcls(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &acls::describe(ctx, &authz, &r),
        )),
        RequestKind::CreateAcls(r) => later(ctx, id, move |ctx| async move {
            acls::create(&ctx, &authz, r).await
        }),
        RequestKind::DeleteAcls(r) => later(ctx, id, move |ctx| async move {
            acls::delete(&ctx, &authz, r).await
        }),
        // Chronik has no client quotas, so every filter matches nothing;
        // `kafka-configs.sh --describe --entity-type users` asks for them
        // next to the SCRAM credentials.
        RequestKind::DescribeClientQuotas(_) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &kafka_protocol::messages::DescribeClientQuotasResponse::default()
                .with_entries(Some(Vec::new())),
        )),
        // The connection answers these itself: they change its state.
        RequestKind::SaslHandshake(_) | RequestKind::SaslAuthenticate(_) => {
            Reply::Close("a SASL request reached the request handlers".into())
        }
        RequestKind::CreateTopics(r) => later(ctx, id, move |ctx| async move {
            admin::create_topics(&ctx, &authz, v, r).await
        }),
        RequestKind::DeleteTopics(r) => later(ctx, id, move |ctx| async move {
            admin::delete_topics(&ctx, &authz, v, r).await
        }),
        RequestKind::CreatePartitions(r) => later(ctx, id, move |ctx| async move {
            admin::create_partitions(&ctx, &authz, r).await
        }),
        RequestKind::DescribeConfigs(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &admin::describe_configs(ctx, &authz, v, &r),
        )),
        RequestKind::IncrementalAlterConfigs(r) => later(ctx, id, move |ctx| async move {
            admin::incremental_alter_configs(&ctx, &authz, r).await
        }),
        RequestKind::AlterConfigs(r) => later(ctx, id, move |ctx| async move {
            admin::alter_configs(&ctx, &authz, r).await
        }),
        RequestKind::OffsetForLeaderEpoch(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &partition_admin::offset_for_leader_epoch(ctx, &authz, r),
        )),
        RequestKind::AlterPartitionReassignments(r) => later(ctx, id, move |ctx| async move {
            partition_admin::alter_partition_reassignments(&ctx, r).await
        }),
        RequestKind::ListPartitionReassignments(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &partition_admin::list_partition_reassignments(ctx, r),
        )),
        RequestKind::DescribeProducers(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &partition_admin::describe_producers(ctx, &authz, r),
        )),
        RequestKind::DeleteRecords(r) => later(ctx, id, move |ctx| async move {
            partition_admin::delete_records(&ctx, &authz, r).await
        }),
        RequestKind::DescribeLogDirs(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &partition_admin::describe_log_dirs(ctx, r),
        )),
        RequestKind::ElectLeaders(r) => later(ctx, id, move |ctx| async move {
            partition_admin::elect_leaders(&ctx, r).await
        }),
        RequestKind::FindCoordinator(r) => Reply::Now(encode_response(
            cid,
            key,
            v,
            &groups::find_coordinator(ctx, &authz, &conn.listener.name, v, r),
        )),
        RequestKind::JoinGroup(r) => {
            let client_id = header.client_id.clone();
            let peer = conn.peer;
            later(ctx, id, move |ctx| async move {
                groups::join_group(&ctx, &authz, v, client_id, peer, r).await
            })
        }
        RequestKind::SyncGroup(r) => later(ctx, id, move |ctx| async move {
            groups::sync_group(&ctx, &authz, r).await
        }),
        RequestKind::Heartbeat(r) => later(ctx, id, move |ctx| async move {
            groups::heartbeat(&ctx, &authz, r).await
        }),
        RequestKind::LeaveGroup(r) => later(ctx, id, move |ctx| async move {
            groups::leave_group(&ctx, &authz, v, r).await
        }),
        RequestKind::OffsetCommit(r) => later(ctx, id, move |ctx| async move {
            groups::offset_commit(&ctx, &authz, r).await
        }),
        RequestKind::OffsetFetch(r) => later(ctx, id, move |ctx| async move {
            groups::offset_fetch(&ctx, &authz, v, r).await
        }),
        RequestKind::DescribeGroups(r) => later(ctx, id, move |ctx| async move {
            groups::describe_groups(&ctx, &authz, v, r).await
        }),
        RequestKind::ListGroups(r) => later(ctx, id, move |ctx| async move {
            groups::list_groups(&ctx, &authz, r).await
        }),
        RequestKind::DeleteGroups(r) => later(ctx, id, move |ctx| async move {
            groups::delete_groups(&ctx, &authz, r).await
        }),
        RequestKind::OffsetDelete(r) => later(ctx, id, move |ctx| async move {
            groups::offset_delete(&ctx, &authz, r).await
        }),
        // protocol::parse only lets through the APIs listed in SUPPORTED,
        // each of which has an arm above.
        other => unreachable!(
            "dispatch has no handler for {:?}",
            std::mem::discriminant(&other)
        ),
    }
}

/// Requests that need a permission on the cluster as a whole, answered
/// with CLUSTER_AUTHORIZATION_FAILED without running them.
fn cluster_refusal(
    authz: &Authz,
    cid: i32,
    key: ApiKey,
    v: i16,
    body: &RequestKind,
) -> Option<Bytes> {
    use kafka_protocol::messages::*;
    let code = E::ClusterAuthorizationFailed.code();
    let msg = Some(StrBytes::from_static_str("Cluster authorization failed."));
    // These are rare admin requests: the refusal is encoded up front, next
    // to the permission it answers for.
    let (needed, refusal) = match body {
        RequestKind::ElectLeaders(_) => (
            op::ALTER,
            encode_response(cid, key, v, &ElectLeadersResponse::default().with_error_code(code)),
        ),
        RequestKind::AlterPartitionReassignments(_) => (
            op::ALTER,
            encode_response(
                cid,
                key,
                v,
                &AlterPartitionReassignmentsResponse::default()
                    .with_error_code(code)
                    .with_error_message(msg),
            ),
        ),
        RequestKind::ListPartitionReassignments(_) => (
            op::DESCRIBE,
            encode_response(
                cid,
                key,
                v,
                &ListPartitionReassignmentsResponse::default()
                    .with_error_code(code)
                    .with_error_message(msg),
            ),
        ),
        RequestKind::DescribeLogDirs(_) => (
            op::DESCRIBE,
            encode_response(cid, key, v, &DescribeLogDirsResponse::default().with_error_code(code)),
        ),
        RequestKind::DescribeUserScramCredentials(_) => (
            op::DESCRIBE,
            encode_response(
                cid,
                key,
                v,
                &DescribeUserScramCredentialsResponse::default()
                    .with_error_code(code)
                    .with_error_message(msg),
            ),
        ),
        RequestKind::AlterUserScramCredentials(r) => (
            op::ALTER,
            encode_response(
                cid,
                key,
                v,
                &AlterUserScramCredentialsResponse::default().with_results(
                    r.deletions
                        .iter()
                        .map(|d| d.name.clone())
                        .chain(r.upsertions.iter().map(|u| u.name.clone()))
                        .collect::<std::collections::BTreeSet<_>>()
                        .into_iter()
                        .map(|user| {
                            alter_user_scram_credentials_response::AlterUserScramCredentialsResult::default()
                                .with_user(user)
                                .with_error_code(code)
                                .with_error_message(msg.clone())
                        })
                        .collect(),
                ),
            ),
        ),
        RequestKind::DescribeClientQuotas(_) => (
            op::DESCRIBE_CONFIGS,
            encode_response(
                cid,
                key,
                v,
                &DescribeClientQuotasResponse::default()
                    .with_error_code(code)
                    .with_error_message(msg),
            ),
        ),
        _ => return None,
    };
    (!authz.cluster(needed)).then_some(refusal)
}

fn self_broker(ctx: &BrokerCtx, listener: &str) -> Option<(i32, StrBytes, i32)> {
    let (host, port) = ctx.config.listeners.advertised_for(listener)?;
    Some((ctx.config.node_id, StrBytes::from_string(host), port as i32))
}

/// Every registered broker (id, host, port) as clients of `listener` reach
/// it; this broker is always listed, even before its registration has been
/// applied. A broker without that listener is left out, as Kafka leaves it.
fn brokers(ctx: &BrokerCtx, listener: &str) -> Vec<(i32, StrBytes, i32)> {
    let mut out: Vec<(i32, StrBytes, i32)> = ctx
        .catalog
        .brokers()
        .into_iter()
        .filter(|b| b.id != ctx.config.node_id)
        .filter_map(|b| {
            let (host, port) = b.address(listener)?;
            Some((b.id, StrBytes::from_string(host), port as i32))
        })
        .collect();
    out.extend(self_broker(ctx, listener));
    out.sort_by_key(|b| b.0);
    out
}

/// The controller as clients see it: the controller group's leader.
fn controller_id(ctx: &BrokerCtx) -> i32 {
    ctx.cluster
        .controller_status()
        .leader
        .map(|l| l as i32)
        .unwrap_or(-1)
}

fn describe_cluster(ctx: &BrokerCtx, listener: &str) -> DescribeClusterResponse {
    use kafka_protocol::messages::describe_cluster_response::DescribeClusterBroker;
    DescribeClusterResponse::default()
        .with_cluster_id(StrBytes::from_string(ctx.cluster_id.clone()))
        .with_controller_id(BrokerId(controller_id(ctx)))
        .with_endpoint_type(1)
        .with_cluster_authorized_operations(OPS_NOT_REQUESTED)
        .with_brokers(
            brokers(ctx, listener)
                .into_iter()
                .map(|(id, host, port)| {
                    DescribeClusterBroker::default()
                        .with_broker_id(BrokerId(id))
                        .with_host(host)
                        .with_port(port)
                })
                .collect(),
        )
}

fn metadata_topic(ctx: &BrokerCtx, t: &Topic) -> MetadataResponseTopic {
    let ids = |v: &[i32]| v.iter().map(|i| BrokerId(*i)).collect::<Vec<_>>();
    MetadataResponseTopic::default()
        .with_name(Some(TopicName(StrBytes::from_string(t.name().to_string()))))
        .with_topic_id(t.id())
        .with_topic_authorized_operations(OPS_NOT_REQUESTED)
        .with_partitions(
            t.partitions
                .iter()
                .map(|p| {
                    let v = ctx.cluster.view(t, p);
                    let r = MetadataResponsePartition::default()
                        .with_partition_index(p.partition)
                        .with_leader_id(BrokerId(v.leader.unwrap_or(-1)))
                        .with_leader_epoch(v.epoch)
                        .with_replica_nodes(ids(&v.replicas))
                        .with_isr_nodes(ids(&v.isr));
                    if v.leader.is_none() {
                        r.with_error_code(E::LeaderNotAvailable.code())
                    } else {
                        r
                    }
                })
                .collect(),
        )
}

fn metadata_error(name: Option<TopicName>, id: uuid::Uuid, code: i16) -> MetadataResponseTopic {
    MetadataResponseTopic::default()
        .with_name(name)
        .with_topic_id(id)
        .with_error_code(code)
        .with_topic_authorized_operations(OPS_NOT_REQUESTED)
}

async fn handle_metadata(
    ctx: &BrokerCtx,
    authz: &Authz,
    listener: &str,
    version: i16,
    req: MetadataRequest,
) -> MetadataResponse {
    // v0 had no null: an empty list meant "all topics".
    let requested = match req.topics {
        Some(t) if !(version == 0 && t.is_empty()) => Some(t),
        _ => None,
    };
    // Auto-creation could not be refused by clients before v4.
    let may_create =
        ctx.config.topics.auto_create && (version < 4 || req.allow_auto_topic_creation);
    let topics = match requested {
        // Asked for every topic: those the principal may not describe are
        // left out, as Kafka leaves them out.
        None => ctx
            .catalog
            .list()
            .iter()
            .filter(|t| authz.topic(op::DESCRIBE, t.name()))
            .map(|t| metadata_topic(ctx, t))
            .collect(),
        Some(list) => {
            let mut out = Vec::with_capacity(list.len());
            for rt in list {
                let Some(name) = rt.name.clone() else {
                    out.push(match ctx.catalog.get_by_id(&rt.topic_id) {
                        Some(t) if !authz.topic(op::DESCRIBE, t.name()) => {
                            metadata_error(None, rt.topic_id, E::TopicAuthorizationFailed.code())
                        }
                        Some(t) => metadata_topic(ctx, &t),
                        None => metadata_error(None, rt.topic_id, E::UnknownTopicId.code()),
                    });
                    continue;
                };
                let exists = ctx.catalog.get(&name);
                // Kafka: an unknown topic the principal may create is not
                // a describe failure; it is created (or reported unknown).
                let denied = !authz.topic(op::DESCRIBE, &name)
                    && !(exists.is_none() && may_create && authz.create_topic(&name));
                if denied {
                    out.push(metadata_error(
                        Some(name),
                        uuid::Uuid::nil(),
                        E::TopicAuthorizationFailed.code(),
                    ));
                    continue;
                }
                if let Some(t) = exists {
                    out.push(metadata_topic(ctx, &t));
                    continue;
                }
                if let Err(e) = validate_topic_name(&name) {
                    out.push(metadata_error(
                        Some(name),
                        uuid::Uuid::nil(),
                        e.kafka_code(),
                    ));
                    continue;
                }
                if !may_create || !authz.create_topic(&name) {
                    out.push(metadata_error(
                        Some(name),
                        uuid::Uuid::nil(),
                        E::UnknownTopicOrPartition.code(),
                    ));
                    continue;
                }
                match ctx
                    .catalog
                    .create_topic(&name, -1, -1, &[], &Default::default(), false)
                    .await
                {
                    Ok(t) => {
                        ctx.cluster
                            .wait_leaders(&t, std::time::Duration::from_secs(5))
                            .await;
                        out.push(metadata_topic(ctx, &t))
                    }
                    Err(crate::catalog::TopicError::AlreadyExists(_)) => {
                        match ctx.catalog.get(&name) {
                            Some(t) => out.push(metadata_topic(ctx, &t)),
                            None => out.push(metadata_error(
                                Some(name),
                                uuid::Uuid::nil(),
                                E::LeaderNotAvailable.code(),
                            )),
                        }
                    }
                    Err(e) => out.push(metadata_error(
                        Some(name),
                        uuid::Uuid::nil(),
                        e.kafka_code(),
                    )),
                }
            }
            out
        }
    };
    let mut topics = topics;
    // Fields newer than the negotiated version must stay at their defaults.
    for t in &mut topics {
        if version < 10 {
            t.topic_id = uuid::Uuid::nil();
        }
        if version < 7 {
            for p in &mut t.partitions {
                p.leader_epoch = -1;
            }
        }
    }
    MetadataResponse::default()
        .with_brokers(
            brokers(ctx, listener)
                .into_iter()
                .map(|(id, host, port)| {
                    MetadataResponseBroker::default()
                        .with_node_id(BrokerId(id))
                        .with_host(host)
                        .with_port(port)
                })
                .collect(),
        )
        .with_cluster_id(Some(StrBytes::from_string(ctx.cluster_id.clone())))
        .with_controller_id(BrokerId(controller_id(ctx)))
        .with_cluster_authorized_operations(OPS_NOT_REQUESTED)
        .with_topics(topics)
}

async fn handle_init_producer_id(
    ctx: &BrokerCtx,
    authz: &Authz,
    req: InitProducerIdRequest,
) -> InitProducerIdResponse {
    let resp = InitProducerIdResponse::default()
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    if req.transactional_id.is_none() && !authz.idempotent_write() {
        return resp.with_error_code(E::ClusterAuthorizationFailed.code());
    }
    if let Some(id) = &req.transactional_id {
        let expected = (req.producer_id.0 >= 0).then_some((req.producer_id.0, req.producer_epoch));
        return match txn::init_producer_id(ctx, authz, id, req.transaction_timeout_ms, expected)
            .await
        {
            Ok((pid, epoch)) => resp
                .with_producer_id(ProducerId(pid))
                .with_producer_epoch(epoch),
            Err(code) => resp.with_error_code(code),
        };
    }
    let tag = chronik_topology::region_tag(&ctx.config.region);
    match ctx
        .producer_ids
        .next(&ctx.store, ctx.config.node_id, tag)
        .await
    {
        // Kafka gives idempotent (non-transactional) producers a fresh id on
        // every InitProducerId, including epoch-bump retries.
        Ok(pid) => resp
            .with_producer_id(ProducerId(pid))
            .with_producer_epoch(0),
        Err(e) => resp.with_error_code(e.kafka_code()),
    }
}

/// Rows grouped by topic, in the order topics first appear (responses list
/// each topic once, with its partitions).
fn by_topic<T>(rows: impl IntoIterator<Item = (String, T)>) -> Vec<(String, Vec<T>)> {
    let mut order: Vec<String> = Vec::new();
    let mut by: std::collections::HashMap<String, Vec<T>> = Default::default();
    for (topic, row) in rows {
        if !by.contains_key(&topic) {
            order.push(topic.clone());
        }
        by.entry(topic).or_default().push(row);
    }
    order
        .into_iter()
        .map(|t| {
            let rows = by.remove(&t).unwrap_or_default();
            (t, rows)
        })
        .collect()
}
