//! Produce: validate and append each partition's batch in request order,
//! then answer once every append is durable.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, BrokerId, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::authorize::Authz;
use super::{now_ms, Reply};
use crate::acl::op;
use crate::catalog::Topic;
use crate::context::BrokerCtx;
use crate::error::KafkaCode;
use crate::forward::ForwardError;
use crate::log::PartitionLog;
use crate::produce_order::{HeldBack, Ids};
use crate::protocol::encode_response;
use crate::raft::types::{Command, CommandResult};
use crate::raft::ProposeError;
use crate::rpo::Decision;

/// The topic's `min.insync.replicas`, else the region default.
fn min_insync_replicas(ctx: &BrokerCtx, t: &Topic) -> i32 {
    match t.record.configs.get("min.insync.replicas") {
        Some(_) => t.effective.min_insync_replicas,
        None => ctx.catalog.region().default_min_insync_replicas,
    }
}

/// A partition's outcome before durability is known.
enum Outcome {
    Done(PartitionProduceResponse),
    /// Proposed to the partition's Raft group; resolves once committed and
    /// applied (offsets are assigned at apply).
    Replicating {
        ok: PartitionProduceResponse,
        done: oneshot::Receiver<Result<CommandResult, ProposeError>>,
        /// `global_quorum` topics: the log and the batch's last offset
        /// delta; acks=all also waits for the mirror regions.
        global: Option<(Arc<PartitionLog>, i32)>,
    },
    /// A mirror partition here: forwarded to the topic's home region.
    Forwarded {
        ok: PartitionProduceResponse,
        home: String,
        topic: TopicName,
        /// Taken when the forwarded request is built.
        records: Option<Bytes>,
        /// `chronik.forward.ack=mirrored`: the local mirror and the batch's
        /// last offset delta; the answer waits until the mirror holds it.
        mirrored: Option<(Arc<PartitionLog>, i32)>,
    },
}
/// Error messages exist in the response from v8.
const ERROR_MESSAGE_VERSION: i16 = 8;
/// The log start offset exists in the response from v5.
const LOG_START_VERSION: i16 = 5;

fn partition_error(
    version: i16,
    index: i32,
    code: i16,
    message: Option<String>,
) -> PartitionProduceResponse {
    let r = PartitionProduceResponse::default()
        .with_index(index)
        .with_error_code(code)
        .with_base_offset(-1)
        .with_log_append_time_ms(-1);
    if version >= ERROR_MESSAGE_VERSION {
        r.with_error_message(message.map(StrBytes::from_string))
    } else {
        r
    }
}

/// Who a produce request comes from.
pub struct Sender<'a> {
    /// The home region's dc-link, producing for another region.
    pub forwarded: bool,
    pub authz: &'a Authz,
    /// For a forwarded produce: the region it comes from, which must be
    /// allowed to write too.
    pub origin: Option<&'a Authz>,
    /// The connection's refused batches (`produce_order`).
    pub held_back: &'a std::sync::Mutex<HeldBack>,
}

pub fn handle(
    ctx: &Arc<BrokerCtx>,
    correlation_id: i32,
    version: i16,
    req: ProduceRequest,
    from: Sender<'_>,
) -> Reply {
    let Sender {
        forwarded,
        authz,
        origin,
        held_back,
    } = from;
    let mut held_back = held_back.lock().unwrap();
    let acks = req.acks;
    let now = now_ms();
    let mut topics: Vec<(TopicProduceResponse, Vec<Outcome>)> =
        Vec::with_capacity(req.topic_data.len());
    // The longest wait any partition's RPO asks of this producer.
    let mut throttle_ms = 0i32;
    for td in req.topic_data {
        // Kafka checks WRITE before anything else about the topic, so a
        // principal without it cannot learn whether the topic exists.
        let allowed =
            authz.topic(op::WRITE, &td.name) && origin.is_none_or(|o| o.topic(op::WRITE, &td.name));
        let topic = ctx.catalog.get(&td.name).filter(|_| allowed);
        let mut outcomes = Vec::with_capacity(td.partition_data.len());
        // (outcome, partition, batch) of each idempotent batch looked at.
        let mut idempotent: Vec<(usize, i32, Ids)> = Vec::new();
        for pd in td.partition_data {
            let idx = pd.index;
            if !allowed {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::TopicAuthorizationFailed.code(),
                    None,
                )));
                continue;
            }
            if !matches!(acks, -1..=1) {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::InvalidRequiredAcks.code(),
                    None,
                )));
                continue;
            }
            let Some((t, log)) = topic
                .as_ref()
                .and_then(|t| t.partition(idx).map(|p| (t, p)))
            else {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::UnknownTopicOrPartition.code(),
                    None,
                )));
                continue;
            };
            let Some(records) = pd.records else {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::InvalidRecord.code(),
                    Some("no records".into()),
                )));
                continue;
            };
            if let Ok(h) = chronik_wire::batch::BatchHeader::parse(&records) {
                let ids = Ids {
                    producer_id: h.producer_id,
                    epoch: h.producer_epoch,
                    first_seq: h.base_sequence,
                };
                let held = held_back.check(td.name.as_str(), idx, ids, || {
                    log.last_written(ids.producer_id)
                });
                if let Some(code) = held {
                    outcomes.push(Outcome::Done(partition_error(
                        version,
                        idx,
                        code,
                        Some(format!(
                            "an earlier batch of producer {} was refused on this connection; it must be resent before sequence {}",
                            ids.producer_id, ids.first_seq
                        )),
                    )));
                    continue;
                }
                idempotent.push((outcomes.len(), idx, ids));
            }
            let mut ok = PartitionProduceResponse::default()
                .with_index(idx)
                .with_log_append_time_ms(-1);
            if version >= LOG_START_VERSION {
                ok = ok.with_log_start_offset(log.log_start_offset());
            }
            // The one place that decides whether this partition is
            // writable here: not being deleted, its home region, then its
            // Raft leader.
            if t.is_deleting() {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::UnknownTopicOrPartition.code(),
                    Some(format!("topic {} is being deleted", t.name())),
                )));
                continue;
            }
            if let Some(refusal) = moved_refusal(t, log, &ctx.config.region, forwarded)
                .or_else(|| lease_refusal(ctx, t))
            {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::NotLeaderOrFollower.code(),
                    Some(refusal),
                )));
                continue;
            }
            let Some((group, status)) = ctx.cluster.leader_group(log) else {
                let v = ctx.cluster.view(t, log);
                let leader = LeaderIdAndEpoch::default()
                    .with_leader_id(BrokerId(v.leader.unwrap_or(-1)))
                    .with_leader_epoch(v.epoch);
                outcomes.push(Outcome::Done(
                    partition_error(version, idx, E::NotLeaderOrFollower.code(), None)
                        .with_current_leader(leader),
                ));
                continue;
            };
            let header = match PartitionLog::check_batch(&records, &t.effective) {
                Ok(h) => h,
                Err(e) => {
                    tracing::debug!(topic = %td.name.0.as_str(), partition = idx, error = %e, "produce rejected");
                    outcomes.push(Outcome::Done(partition_error(
                        version,
                        idx,
                        e.kafka_code(),
                        Some(e.to_string()),
                    )));
                    continue;
                }
            };
            if header.is_transactional() {
                if let Err((code, message)) = verify_transactional(ctx, t.name(), log, &header) {
                    outcomes.push(Outcome::Done(partition_error(
                        version,
                        idx,
                        code,
                        Some(message),
                    )));
                    continue;
                }
            }
            if let Some(home) = t.mirror_of(&ctx.config.region) {
                let mirrored = t
                    .effective
                    .forward_ack_mirrored
                    .then(|| (log.clone(), header.last_offset_delta));
                outcomes.push(Outcome::Forwarded {
                    ok,
                    home: home.to_string(),
                    topic: td.name.clone(),
                    records: Some(records),
                    mirrored,
                });
                continue;
            }
            // Here, at the leader, so that the Raft log and every replica
            // and mirror hold the same bytes (see `recompress`).
            let records = match crate::recompress::recompress(&records, t.effective.compression) {
                Ok(None) => records,
                Ok(Some(rewritten))
                    if rewritten.len() > t.effective.max_message_bytes.max(0) as usize =>
                {
                    outcomes.push(Outcome::Done(partition_error(
                        version,
                        idx,
                        E::MessageTooLarge.code(),
                        Some(format!(
                            "the batch rewritten in the topic's compression.type is {} bytes, more than max.message.bytes={}",
                            rewritten.len(),
                            t.effective.max_message_bytes
                        )),
                    )));
                    continue;
                }
                Ok(Some(rewritten)) => {
                    metrics::counter!("chronik_recompressed_batches_total", "topic" => t.name().to_string())
                        .increment(1);
                    rewritten
                }
                Err(e) => {
                    outcomes.push(Outcome::Done(partition_error(
                        version,
                        idx,
                        E::CorruptMessage.code(),
                        Some(e.to_string()),
                    )));
                    continue;
                }
            };
            if t.effective.rpo_enforce {
                let alone = rpo_decision(t, log);
                match log.rpo_in_order(
                    header.producer_id,
                    header.producer_epoch,
                    header.base_sequence,
                    alone,
                ) {
                    Decision::Accept => {}
                    Decision::Throttle { ms } => {
                        throttle_ms = throttle_ms.max(ms);
                        metrics::counter!("chronik_rpo_throttled_total", "topic" => t.name().to_string())
                            .increment(1);
                    }
                    Decision::Refuse => {
                        metrics::counter!("chronik_rpo_refused_total", "topic" => t.name().to_string())
                            .increment(1);
                        outcomes.push(Outcome::Done(partition_error(
                            version,
                            idx,
                            E::NotEnoughReplicas.code(),
                            Some(format!(
                                "the mirror regions are too far behind to take this write within the topic's RPO (chronik.rpo.ms={}, chronik.rpo.enforce=true); retry once they catch up",
                                t.effective.rpo_ms
                            )),
                        )));
                        continue;
                    }
                }
            }
            let min_isr = min_insync_replicas(ctx, t);
            if acks == -1 && (status.isr.len() as i32) < min_isr {
                outcomes.push(Outcome::Done(partition_error(
                    version,
                    idx,
                    E::NotEnoughReplicas.code(),
                    Some(format!(
                        "The size of the current ISR {:?} is insufficient to satisfy the min.isr requirement of {min_isr}",
                        status.isr
                    )),
                )));
                continue;
            }
            // The size check above and the timestamp type are decided here,
            // once, from this broker's catalog: replicas apply the entry
            // without reading configs, which each of them learns at its own
            // log position.
            let done = group.submit(Command::Produce {
                records,
                now_ms: now,
                log_append_time: Some(t.effective.log_append_time),
            });
            let global = (acks == -1 && t.effective.global_quorum)
                .then(|| (log.clone(), header.last_offset_delta));
            outcomes.push(Outcome::Replicating { ok, done, global });
        }
        for (at, idx, ids) in idempotent {
            if let Some(Outcome::Done(r)) = outcomes.get(at) {
                if E::try_from_code(r.error_code).is_some_and(|e| e.is_retriable()) {
                    held_back.refused(td.name.as_str(), idx, ids, r.error_code);
                }
            }
        }
        topics.push((TopicProduceResponse::default().with_name(td.name), outcomes));
    }
    let forwards = forward_all(ctx, &mut topics, req.timeout_ms);
    if acks == 0 {
        // Nobody waits for the home's answers; the budget they hold is
        // released when they come.
        for f in forwards.into_values() {
            tokio::spawn(f);
        }
        let failed = topics.iter().flat_map(|(_, o)| o).find_map(|o| match o {
            Outcome::Done(r) if r.error_code != 0 => Some(r.error_code),
            _ => None,
        });
        return match failed {
            Some(code) => Reply::Close(format!("acks=0 produce failed with error {code}")),
            None => Reply::Nothing,
        };
    }
    // A zero timeout would fail writes that are merely a group commit away.
    let timeout = Duration::from_millis(if req.timeout_ms > 0 {
        req.timeout_ms as u64
    } else {
        30_000
    });
    Reply::Later(Box::pin(async move {
        let mut responses = Vec::with_capacity(topics.len());
        for (topic, outcomes) in topics {
            let mut parts = Vec::with_capacity(outcomes.len());
            for o in outcomes {
                parts.push(match o {
                    Outcome::Done(r) => r,
                    Outcome::Replicating { ok, done, global } => {
                        let idx = ok.index;
                        let deadline = tokio::time::Instant::now() + timeout;
                        let r = match tokio::time::timeout_at(deadline, done).await {
                            Ok(Ok(Ok(CommandResult::Produced {
                                base_offset,
                                log_append_time,
                            }))) => ok
                                .with_base_offset(base_offset)
                                .with_log_append_time_ms(log_append_time),
                            Ok(Ok(Ok(CommandResult::Duplicate { base_offset }))) => {
                                ok.with_base_offset(base_offset)
                            }
                            Ok(Ok(Ok(CommandResult::Rejected { code, message }))) => {
                                partition_error(version, idx, code, Some(message))
                            }
                            Ok(Ok(Ok(other))) => partition_error(
                                version,
                                idx,
                                E::UnknownServerError.code(),
                                Some(format!("unexpected apply result {other:?}")),
                            ),
                            Ok(Ok(Err(ProposeError::NotLeader(_)))) => {
                                partition_error(version, idx, E::NotLeaderOrFollower.code(), None)
                            }
                            // Not known to be written or not: the client
                            // retries, and idempotence removes duplicates.
                            Ok(Ok(Err(ProposeError::Unavailable(m)))) => {
                                partition_error(version, idx, E::RequestTimedOut.code(), Some(m))
                            }
                            Ok(Err(_)) | Err(_) => {
                                partition_error(version, idx, E::RequestTimedOut.code(), None)
                            }
                        };
                        match global {
                            Some((log, delta)) if r.error_code == 0 => {
                                let end = r.base_offset + delta as i64 + 1;
                                match tokio::time::timeout_at(deadline, log.wait_mirrored(end))
                                    .await
                                {
                                    Ok(()) => r,
                                    // Written here but not yet in enough mirror
                                    // regions: the producer retries, and the
                                    // retry (a duplicate) waits again.
                                    Err(_) => partition_error(
                                        version,
                                        idx,
                                        E::NotEnoughReplicasAfterAppend.code(),
                                        Some("written in the home region, but not acknowledged by enough mirror regions in time (chronik.replication.mode=global_quorum)".into()),
                                    ),
                                }
                            }
                            _ => r,
                        }
                    }
                    Outcome::Forwarded {
                        ok,
                        home,
                        topic,
                        mirrored,
                        ..
                    } => {
                        let deadline = tokio::time::Instant::now() + timeout;
                        let answer = match forwards.get(&home) {
                            Some(f) => tokio::time::timeout_at(deadline, f.clone())
                                .await
                                .unwrap_or_else(|_| {
                                    Err(ForwardError::Lost {
                                        message: format!(
                                            "no answer from the home region {home} within the produce timeout"
                                        ),
                                    })
                                }),
                            None => Err(ForwardError::Lost {
                                message: "not handed over".into(),
                            }),
                        };
                        // The home's enforced RPO slows this producer too.
                        if let Ok(resp) = &answer {
                            throttle_ms = throttle_ms.max(resp.throttle_time_ms);
                        }
                        forwarded_outcome(version, ok, &topic, answer, mirrored, deadline).await
                    }
                });
            }
            responses.push(topic.with_partition_responses(parts));
        }
        encode_response(
            correlation_id,
            ApiKey::Produce,
            version,
            &ProduceResponse::default()
                .with_responses(responses)
                .with_throttle_time_ms(throttle_ms),
        )
    }))
}

/// The home's answer for `topic`'s partition `ok.index`, as its answer to
/// this client.
async fn forwarded_outcome(
    version: i16,
    ok: PartitionProduceResponse,
    topic: &TopicName,
    answer: Result<ProduceResponse, ForwardError>,
    mirrored: Option<(Arc<PartitionLog>, i32)>,
    deadline: tokio::time::Instant,
) -> PartitionProduceResponse {
    let idx = ok.index;
    let resp = match answer {
        Ok(resp) => resp,
        Err(e) => {
            let code = match e {
                // Not handed over: nothing was written.
                ForwardError::NoDcLink { .. }
                | ForwardError::Full { .. }
                | ForwardError::Unreachable { .. } => E::NotEnoughReplicas.code(),
                ForwardError::Lost { .. } | ForwardError::Decode(_) => E::RequestTimedOut.code(),
            };
            return partition_error(version, idx, code, Some(e.to_string()));
        }
    };
    let Some(p) = resp
        .responses
        .iter()
        .filter(|t| t.name == *topic)
        .flat_map(|t| &t.partition_responses)
        .find(|p| p.index == idx)
    else {
        return partition_error(
            version,
            idx,
            E::UnknownServerError.code(),
            Some("the home region's answer left this partition out".into()),
        );
    };
    if p.error_code != 0 {
        let message = p.error_message.as_ref().map(|m| m.to_string());
        return partition_error(version, idx, p.error_code, message);
    }
    if let Some((log, delta)) = mirrored {
        let end = p.base_offset + delta as i64 + 1;
        if tokio::time::timeout_at(deadline, log.wait_high_watermark(end))
            .await
            .is_err()
        {
            return partition_error(
                version,
                idx,
                E::RequestTimedOut.code(),
                Some(format!(
                    "written in the home region at offset {}, but not yet in this region's mirror (chronik.forward.ack=mirrored); an idempotent producer's retry is deduplicated",
                    p.base_offset
                )),
            );
        }
    }
    let mut r = ok
        .with_base_offset(p.base_offset)
        .with_log_append_time_ms(p.log_append_time_ms);
    if version >= LOG_START_VERSION {
        r = r.with_log_start_offset(p.log_start_offset);
    }
    r
}

type ForwardAnswer = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<ProduceResponse, ForwardError>>,
>;

/// Hands every forwarded partition to the dc-link, one request per home
/// region, before the handler returns (so in request order). A home that
/// cannot be handed over to fails its partitions at once.
fn forward_all(
    ctx: &BrokerCtx,
    topics: &mut [(TopicProduceResponse, Vec<Outcome>)],
    timeout_ms: i32,
) -> HashMap<String, ForwardAnswer> {
    let mut requests: Vec<(String, ProduceRequest)> = Vec::new();
    for (_, outcomes) in topics.iter_mut() {
        for o in outcomes.iter_mut() {
            let Outcome::Forwarded {
                ok,
                home,
                topic,
                records,
                ..
            } = o
            else {
                continue;
            };
            let i = match requests.iter().position(|(h, _)| h == home) {
                Some(i) => i,
                None => {
                    let req = ProduceRequest::default()
                        .with_acks(-1)
                        .with_timeout_ms(if timeout_ms > 0 { timeout_ms } else { 30_000 });
                    requests.push((home.clone(), req));
                    requests.len() - 1
                }
            };
            let pd = PartitionProduceData::default()
                .with_index(ok.index)
                .with_records(records.take());
            let req = &mut requests[i].1;
            match req.topic_data.iter_mut().find(|t| t.name == *topic) {
                Some(t) => t.partition_data.push(pd),
                None => req.topic_data.push(
                    TopicProduceData::default()
                        .with_name(topic.clone())
                        .with_partition_data(vec![pd]),
                ),
            }
        }
    }
    requests
        .into_iter()
        .map(|(home, req)| {
            use futures_util::FutureExt;
            let f: futures_util::future::BoxFuture<'static, _> =
                match ctx.forwarder.send(&home, &req) {
                    Ok(f) => f.boxed(),
                    Err(e) => futures_util::future::ready(Err(e)).boxed(),
                };
            (home, f.shared())
        })
        .collect()
}

/// What the topic's enforced RPO says about a write to `log` now. Nothing
/// known yet of the mirrors (no report from the home dc-link to this
/// leader): accepted, see docs/rpo.md.
fn rpo_decision(t: &Topic, log: &PartitionLog) -> Decision {
    match log.rpo_span(crate::rpo::clock_ms()) {
        Some(span) => crate::rpo::decide(t.effective.rpo_ms, span.if_written_now_ms),
        None => Decision::Accept,
    }
}

/// A mirrored topic homed here takes writes only while the region holds
/// the home lease (see `crate::lease_gate`): a home cut off from the
/// majority of the voters stops before another region can be promoted.
fn lease_refusal(ctx: &BrokerCtx, t: &Topic) -> Option<String> {
    // Two voters (the common case): no lease, and no catalog lookups here.
    if !ctx.lease.binds()
        || t.mirror_of(&ctx.config.region).is_some()
        || !ctx.catalog.mirrored_elsewhere(&t.record)
    {
        return None;
    }
    let (_, epoch) = ctx.catalog.home_of(&t.id())?;
    ctx.lease.check(&t.id(), epoch).err().map(|e| e.to_string())
}

/// Produce to a topic whose home is moving, or whose home role this
/// partition's own log has not caught up with (see `crate::home_role`),
/// gets a retriable error: clients retry, and once the move is applied the
/// write goes to the new home, locally or forwarded. A mirror partition in
/// step with the catalog is `None`: its produce is forwarded.
fn moved_refusal(t: &Topic, log: &PartitionLog, region: &str, forwarded: bool) -> Option<String> {
    if let Some(m) = &t.record.moving {
        return Some(format!(
            "topic {} is moving its home from {region} to {}; writes are fenced until it completes",
            t.name(),
            m.to
        ));
    }
    let role = log.role();
    match t.mirror_of(region) {
        // Forwarded here by another region that still thinks this is the
        // home: its retry goes to the home it learns next.
        Some(home) if forwarded => Some(format!(
            "topic {} is no longer homed in {region} but in {home}; the forwarding region re-routes the retry",
            t.name()
        )),
        // Demoted by the catalog, but the partition's own log has not
        // applied it yet: once it has, the produce is forwarded.
        Some(home) if role.is_some_and(|r| r.home) => Some(format!(
            "topic {} is moving its home to {home}; this partition is being demoted",
            t.name()
        )),
        Some(_) => None,
        None if role.is_some_and(|r| !r.home) => Some(format!(
            "topic {} became homed in {region}; its partitions are being promoted",
            t.name()
        )),
        None => None,
    }
}

/// KIP-890's defence, at the partition leader: a transactional batch that
/// would open a transaction here must come from a producer whose open
/// transaction holds this partition, or a late batch (after its
/// transaction ended) would open one that no marker ever closes, and hold
/// the last stable offset back for good. The state is this broker's copy
/// of the controller's, which may trail the coordinator's answer by a few
/// milliseconds: anything short of a newer epoch is answered retriably.
fn verify_transactional(
    ctx: &BrokerCtx,
    topic: &str,
    log: &PartitionLog,
    h: &crate::batch::BatchHeader,
) -> Result<(), (i16, String)> {
    if log.has_open_transaction(h.producer_id) {
        return Ok(());
    }
    match crate::txn::Coordinator::verify(
        &ctx.catalog,
        h.producer_id,
        h.producer_epoch,
        topic,
        log.partition,
    ) {
        Ok(()) => Ok(()),
        Err(true) => Err((
            E::InvalidProducerEpoch.code(),
            format!(
                "producer {} epoch {} was fenced by a newer epoch",
                h.producer_id, h.producer_epoch
            ),
        )),
        Err(false) => Err((
            E::NotEnoughReplicas.code(),
            format!(
                "{topic}-{} is not (yet) part of producer {}'s open transaction here; retry",
                log.partition, h.producer_id
            ),
        )),
    }
}
