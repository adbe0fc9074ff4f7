//! Fetch (with long-poll) and ListOffsets.
//!
//! Fetch serves stored batch bytes as they are, never decoding records.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::fetch_response::{
    AbortedTransaction, FetchableTopicResponse, LeaderIdAndEpoch, PartitionData,
};
use kafka_protocol::messages::list_offsets_response::{
    ListOffsetsPartitionResponse, ListOffsetsTopicResponse,
};
use kafka_protocol::messages::{
    BrokerId, FetchRequest, FetchResponse, ListOffsetsRequest, ListOffsetsResponse, ProducerId,
    TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::Notify;
use uuid::Uuid;

use crate::acl::op;
use crate::catalog::Topic;
use crate::context::BrokerCtx;
use crate::error::KafkaCode;
use crate::fetch_session as fs;
use crate::log::PartitionLog;

use super::authorize::Authz;

/// Topic ids replace names in Fetch from this version on.
const FETCH_TOPIC_ID_VERSION: i16 = 13;
/// The fetching replica's id moves into `replica_state` from this version on.
const FETCH_REPLICA_STATE_VERSION: i16 = 15;
/// Incremental fetch sessions (KIP-227) from this version on.
const FETCH_SESSION_VERSION: i16 = 7;
/// Fetch responses carry the log start offset from v5.
const FETCH_LOG_START_VERSION: i16 = 5;
/// ListOffsets responses carry the leader epoch from v4.
const LIST_OFFSETS_EPOCH_VERSION: i16 = 4;
/// KIP-207: the first ListOffsets version whose clients know OFFSET_NOT_AVAILABLE.
const LIST_OFFSETS_NOT_AVAILABLE_VERSION: i16 = 5;
/// Upper bound on a long-poll, whatever the client asks for.
const MAX_WAIT_CAP_MS: i32 = 60_000;

/// Kafka's replica id for a consumer that may read what ordinary consumers
/// may not yet see. Here: the dc-link, which must ship a `global_quorum`
/// topic's records before its mirrors hold them.
pub const DEBUGGING_REPLICA_ID: i32 = -2;

/// `isolation.level=read_committed` in Fetch and ListOffsets.
const READ_COMMITTED: i8 = 1;
const EARLIEST: i64 = -2;
const LATEST: i64 = -1;
const MAX_TIMESTAMP: i64 = -3;
const EARLIEST_LOCAL: i64 = -4;

/// Leader-epoch fencing as Kafka applies it: a client that knows a newer
/// epoch than ours is ahead of us, one that knows an older one is stale.
pub(super) fn check_epoch(client: i32, ours: i32) -> Option<i16> {
    match client {
        e if e < 0 || e == ours => None,
        e if e > ours => Some(E::UnknownLeaderEpoch.code()),
        _ => Some(E::FencedLeaderEpoch.code()),
    }
}

struct Slot {
    topic_index: usize,
    log: Option<Arc<PartitionLog>>,
    data: PartitionData,
    fetch_offset: i64,
    max_bytes: usize,
    /// Read only what the required mirror regions hold (`global_quorum`).
    wait_for_mirrors: bool,
}

pub async fn handle_fetch(
    ctx: Arc<BrokerCtx>,
    authz: Authz,
    version: i16,
    req: FetchRequest,
) -> FetchResponse {
    let node = BrokerId(ctx.config.node_id);
    let by_id = version >= FETCH_TOPIC_ID_VERSION;
    let replica_id = if version >= FETCH_REPLICA_STATE_VERSION {
        req.replica_state.replica_id.0
    } else {
        req.replica_id.0
    };
    let debugging = replica_id == DEBUGGING_REPLICA_ID;
    // A replica's fetch needs CLUSTER_ACTION on the cluster; a consumer's,
    // READ on each topic (Kafka's rule).
    let replica_allowed = replica_id < 0 || authz.cluster(op::CLUSTER_ACTION);
    let (wanted, forgotten) = requested(&req, version);
    let session_req = fs::Request {
        session_id: if version >= FETCH_SESSION_VERSION {
            req.session_id
        } else {
            0
        },
        epoch: if version >= FETCH_SESSION_VERSION {
            req.session_epoch
        } else {
            -1
        },
        partitions: &wanted,
        forgotten: &forgotten,
    };
    let plan = {
        let mut cache = ctx.fetch_sessions.lock().unwrap();
        let plan = cache.begin(&session_req, std::time::Instant::now());
        metrics::gauge!("chronik_fetch_sessions").set(cache.len() as f64);
        match plan {
            // A session's partitions in its order, which its answers follow.
            Ok(fs::Plan::Incremental { id }) => {
                Ok((fs::Plan::Incremental { id }, cache.partitions(id)))
            }
            Ok(fs::Plan::Full { id }) => Ok((fs::Plan::Full { id }, cache.partitions(id))),
            Ok(fs::Plan::Sessionless) => Ok((fs::Plan::Sessionless, wanted)),
            Err(code) => Err(code),
        }
    };
    let (plan, wanted) = match plan {
        Ok(p) => p,
        Err(code) => {
            return FetchResponse::default()
                .with_error_code(code)
                .with_session_id(0)
        }
    };
    let mut topics: Vec<FetchableTopicResponse> = Vec::new();
    let mut slots: Vec<Slot> = Vec::new();
    let mut current: Option<(&[u8; 16], &str)> = None;
    let mut resolved: (Option<Arc<Topic>>, bool, i16) = (None, true, 0);
    for (key, position) in &wanted {
        if current != Some((&key.topic_id, &key.topic)) {
            current = Some((&key.topic_id, &key.topic));
            let topic_id = Uuid::from_bytes(key.topic_id);
            let topic: Option<Arc<Topic>> = if by_id {
                ctx.catalog.get_by_id(&topic_id)
            } else {
                ctx.catalog.get(&key.topic)
            };
            // Kafka: an unknown id is UNKNOWN_TOPIC_ID, but a partition that a
            // known topic does not have is UNKNOWN_TOPIC_OR_PARTITION.
            let denied = match &topic {
                _ if !replica_allowed => true,
                _ if replica_id >= 0 => false,
                Some(t) => !authz.topic(op::READ, t.name()),
                None => !by_id && !authz.topic(op::READ, &key.topic),
            };
            let missing = if !replica_allowed {
                E::ClusterAuthorizationFailed.code()
            } else if denied {
                E::TopicAuthorizationFailed.code()
            } else if by_id && topic.is_none() {
                E::UnknownTopicId.code()
            } else {
                E::UnknownTopicOrPartition.code()
            };
            resolved = (topic, denied, missing);
            topics.push(
                FetchableTopicResponse::default()
                    .with_topic(TopicName(StrBytes::from_string(key.topic.to_string())))
                    .with_topic_id(topic_id),
            );
        }
        let (topic, denied, missing) = (&resolved.0, resolved.1, resolved.2);
        {
            let mut log = topic
                .as_ref()
                .filter(|_| !denied)
                .and_then(|t| t.partition(key.partition))
                .cloned();
            let mut data = PartitionData::default()
                .with_partition_index(key.partition)
                .with_high_watermark(-1)
                .with_last_stable_offset(-1)
                .with_log_start_offset(-1);
            match &log {
                None => data.error_code = missing,
                Some(l) if !ctx.cluster.leader_for_read(l, position.fetch_offset).await => {
                    // Consumers read from the leader; point them at it.
                    let v = ctx
                        .cluster
                        .view(topic.as_ref().expect("log implies topic"), l);
                    data.error_code = E::NotLeaderOrFollower.code();
                    data.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(v.leader.unwrap_or(-1)))
                        .with_leader_epoch(v.epoch);
                    log = None;
                }
                Some(l) => {
                    if let Some(code) = check_epoch(position.current_leader_epoch, l.leader_epoch())
                    {
                        data.error_code = code;
                    }
                    data.current_leader = LeaderIdAndEpoch::default()
                        .with_leader_id(node)
                        .with_leader_epoch(l.leader_epoch());
                }
            }
            slots.push(Slot {
                topic_index: topics.len() - 1,
                log,
                data,
                fetch_offset: position.fetch_offset,
                max_bytes: position.max_bytes.max(0) as usize,
                wait_for_mirrors: !debugging
                    && topic
                        .as_ref()
                        .is_some_and(|t| t.reads_wait_for_mirrors(&ctx.config.region)),
            });
        }
    }

    let max_wait = Duration::from_millis(req.max_wait_ms.clamp(0, MAX_WAIT_CAP_MS) as u64);
    let deadline = tokio::time::Instant::now() + max_wait;
    let min_bytes = req.min_bytes.max(0) as usize;
    let max_bytes = if req.max_bytes <= 0 {
        usize::MAX
    } else {
        req.max_bytes as usize
    };
    // isolation.level=read_committed: nothing past the last stable offset.
    let read_committed = req.isolation_level == READ_COMMITTED;
    let wake = Arc::new(Notify::new());
    loop {
        // Register before reading so a write landing in between still wakes us.
        for s in &slots {
            if let Some(l) = &s.log {
                l.register_waiter(&wake);
            }
        }
        let (total, any_error) = read_all(&mut slots, max_bytes, version, read_committed);
        let now = tokio::time::Instant::now();
        if total >= min_bytes || any_error || now >= deadline {
            break;
        }
        if tokio::time::timeout_at(deadline, wake.notified())
            .await
            .is_err()
        {
            // One last read so data that arrived with the deadline is not missed.
            read_all(&mut slots, max_bytes, version, read_committed);
            break;
        }
    }
    metrics::counter!("chronik_fetch_requests_total").increment(1);
    let (session_id, incremental) = match plan {
        fs::Plan::Sessionless => (0, false),
        fs::Plan::Full { id } => (id, false),
        fs::Plan::Incremental { id } => (id, true),
    };
    let keep = if session_id == 0 {
        vec![true; slots.len()]
    } else {
        let answers: Vec<(fs::Told, fs::Answer)> = slots
            .iter()
            .map(|s| {
                (
                    fs::Told {
                        high_watermark: s.data.high_watermark,
                        last_stable_offset: s.data.last_stable_offset,
                        log_start_offset: s.data.log_start_offset,
                    },
                    fs::Answer {
                        records: s.data.records.as_ref().is_some_and(|r| !r.is_empty()),
                        error: s.data.error_code != 0,
                    },
                )
            })
            .collect();
        ctx.fetch_sessions
            .lock()
            .unwrap()
            .finish(session_id, &answers, incremental)
    };
    for (s, keep) in slots.into_iter().zip(keep) {
        if keep {
            topics[s.topic_index].partitions.push(answered(s.data));
        }
    }
    // An incremental response names only topics with news.
    topics.retain(|t| !incremental || !t.partitions.is_empty());
    FetchResponse::default()
        .with_session_id(session_id)
        .with_responses(topics)
}

/// The partitions a Fetch names, in request order, and the ones it asks
/// its session to forget.
fn requested(
    req: &FetchRequest,
    version: i16,
) -> (Vec<(fs::PartitionKey, fs::Position)>, Vec<fs::PartitionKey>) {
    let key = |topic: &Arc<str>, id: &Uuid, partition: i32| fs::PartitionKey {
        topic_id: *id.as_bytes(),
        topic: topic.clone(),
        partition,
    };
    let wanted = req
        .topics
        .iter()
        .flat_map(|t| {
            let name: Arc<str> = t.topic.0.as_str().into();
            t.partitions.iter().map(move |p| {
                (
                    key(&name, &t.topic_id, p.partition),
                    fs::Position {
                        fetch_offset: p.fetch_offset,
                        max_bytes: p.partition_max_bytes,
                        current_leader_epoch: p.current_leader_epoch,
                    },
                )
            })
        })
        .collect();
    let forgotten = if version >= FETCH_SESSION_VERSION {
        req.forgotten_topics_data
            .iter()
            .flat_map(|t| {
                let name: Arc<str> = t.topic.0.as_str().into();
                t.partitions
                    .iter()
                    .map(move |p| key(&name, &t.topic_id, *p))
            })
            .collect()
    } else {
        Vec::new()
    };
    (wanted, forgotten)
}

/// Reads every partition once; returns (bytes read, whether any partition
/// has an error to report). Kafka returns the first batch even if it is
/// larger than the limits, but only for the first partition that has data,
/// so that one oversized batch cannot stall a consumer.
fn read_all(
    slots: &mut [Slot],
    max_bytes: usize,
    version: i16,
    read_committed: bool,
) -> (usize, bool) {
    let with_start = version >= FETCH_LOG_START_VERSION;
    let mut total = 0usize;
    let mut any_error = false;
    for s in slots.iter_mut() {
        let Some(log) = &s.log else {
            any_error = true;
            continue;
        };
        if s.data.error_code != 0
            && s.data.error_code != E::OffsetOutOfRange.code()
            && s.data.error_code != E::KafkaStorageError.code()
        {
            any_error = true;
            continue;
        }
        s.data.error_code = 0;
        let budget = s.max_bytes.min(max_bytes.saturating_sub(total));
        let hw = log.visible_high_watermark(s.wait_for_mirrors);
        let lso = log.last_stable_offset(hw);
        let limit = if read_committed { lso } else { hw };
        match log.read_below(s.fetch_offset, budget, total == 0, limit) {
            Ok(r) => {
                total += r.records.len();
                s.data.high_watermark = hw;
                s.data.last_stable_offset = lso;
                s.data.log_start_offset = if with_start { r.log_start_offset } else { -1 };
                // The client drops these producers' records up to each
                // one's abort marker.
                s.data.aborted_transactions = Some(if read_committed && !r.records.is_empty() {
                    log.aborted_in(s.fetch_offset, limit)
                        .into_iter()
                        .map(|a| {
                            AbortedTransaction::default()
                                .with_producer_id(ProducerId(a.producer_id))
                                .with_first_offset(a.first)
                        })
                        .collect()
                } else {
                    vec![]
                });
                s.data.records = Some(r.records);
            }
            Err(e) => {
                any_error = true;
                s.data.error_code = e.kafka_code();
                s.data.high_watermark = hw;
                s.data.last_stable_offset = lso;
                s.data.log_start_offset = if with_start {
                    log.log_start_offset()
                } else {
                    -1
                };
                s.data.records = Some(Bytes::new());
            }
        }
    }
    (total, any_error)
}

/// A partition as it goes on the wire. Kafka answers every partition,
/// errors included, with records present (empty when there is nothing to
/// return), never null: librdkafka refuses a null records field ("invalid
/// MessageSetSize -1") and fails the whole response, so a consumer with an
/// out-of-range offset would never get to apply auto.offset.reset.
fn answered(mut data: PartitionData) -> PartitionData {
    if data.records.is_none() {
        data.records = Some(Bytes::new());
    }
    data
}

pub fn handle_list_offsets(
    ctx: &BrokerCtx,
    authz: &Authz,
    version: i16,
    req: ListOffsetsRequest,
) -> ListOffsetsResponse {
    let topics = req
        .topics
        .into_iter()
        .map(|t| {
            let allowed = authz.topic(op::DESCRIBE, &t.name);
            let topic = ctx.catalog.get(&t.name).filter(|_| allowed);
            let wait_for_mirrors = req.replica_id.0 != DEBUGGING_REPLICA_ID
                && topic
                    .as_ref()
                    .is_some_and(|t| t.reads_wait_for_mirrors(&ctx.config.region));
            let partitions = t
                .partitions
                .into_iter()
                .map(|p| {
                    if !allowed {
                        return ListOffsetsPartitionResponse::default()
                            .with_partition_index(p.partition_index)
                            .with_timestamp(-1)
                            .with_offset(-1)
                            .with_leader_epoch(-1)
                            .with_error_code(E::TopicAuthorizationFailed.code());
                    }
                    list_offset(
                        ctx,
                        topic.as_deref(),
                        version,
                        p.partition_index,
                        p.current_leader_epoch,
                        p.timestamp,
                        Visibility {
                            wait_for_mirrors,
                            read_committed: req.isolation_level == READ_COMMITTED,
                        },
                    )
                })
                .collect();
            ListOffsetsTopicResponse::default()
                .with_name(TopicName(t.name.0))
                .with_partitions(partitions)
        })
        .collect();
    ListOffsetsResponse::default().with_topics(topics)
}

/// What a ListOffsets reader may see: a `global_quorum` topic's reads wait
/// for the mirrors; read_committed stops at the last stable offset.
struct Visibility {
    wait_for_mirrors: bool,
    read_committed: bool,
}

fn list_offset(
    ctx: &BrokerCtx,
    topic: Option<&Topic>,
    version: i16,
    partition: i32,
    leader_epoch: i32,
    ts: i64,
    Visibility {
        wait_for_mirrors,
        read_committed,
    }: Visibility,
) -> ListOffsetsPartitionResponse {
    let resp = ListOffsetsPartitionResponse::default()
        .with_partition_index(partition)
        .with_timestamp(-1)
        .with_offset(-1)
        .with_leader_epoch(-1);
    let Some(log) = topic.and_then(|t| t.partition(partition)) else {
        return resp.with_error_code(E::UnknownTopicOrPartition.code());
    };
    if ctx.cluster.leader_group(log).is_none() {
        return resp.with_error_code(E::NotLeaderOrFollower.code());
    }
    let epoch = log.leader_epoch();
    if let Some(code) = check_epoch(leader_epoch, epoch) {
        return resp.with_error_code(code);
    }
    if wait_for_mirrors && !matches!(ts, EARLIEST | EARLIEST_LOCAL) && !log.mirror_view_current() {
        // Kafka's clients retry both (older versions know no OFFSET_NOT_AVAILABLE).
        let code = if version >= LIST_OFFSETS_NOT_AVAILABLE_VERSION {
            E::OffsetNotAvailable
        } else {
            E::LeaderNotAvailable
        };
        return resp.with_error_code(code.code());
    }
    let found = match ts {
        EARLIEST => Ok(Some((log.log_start_offset(), -1))),
        EARLIEST_LOCAL if version >= 8 => Ok(Some((log.log_start_offset(), -1))),
        LATEST => {
            let hw = log.visible_high_watermark(wait_for_mirrors);
            let end = if read_committed {
                log.last_stable_offset(hw)
            } else {
                hw
            };
            Ok(Some((end, -1)))
        }
        MAX_TIMESTAMP if version >= 7 => log.max_timestamp_offset(),
        t if t >= 0 => log.offset_for_timestamp(t),
        _ => return resp.with_error_code(E::UnsupportedVersion.code()),
    };
    // A record consumers may not see yet is not found by timestamp either.
    let mut visible = log.visible_high_watermark(wait_for_mirrors);
    if read_committed {
        visible = log.last_stable_offset(visible);
    }
    let by_timestamp = ts >= 0 || ts == MAX_TIMESTAMP;
    let found = found.map(|f| f.filter(|(offset, _)| !by_timestamp || *offset < visible));
    let epoch = if version >= LIST_OFFSETS_EPOCH_VERSION {
        epoch
    } else {
        -1
    };
    match found {
        Ok(Some((offset, timestamp))) => resp
            .with_offset(offset)
            .with_timestamp(timestamp)
            .with_leader_epoch(epoch),
        Ok(None) => resp.with_leader_epoch(epoch),
        Err(e) => resp.with_error_code(e.kafka_code()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::Store;
    use chronik_topology::Durability;

    fn slot(log: Option<Arc<PartitionLog>>, error_code: i16, fetch_offset: i64) -> Slot {
        Slot {
            topic_index: 0,
            log,
            data: PartitionData::default().with_error_code(error_code),
            fetch_offset,
            max_bytes: 1 << 20,
            wait_for_mirrors: false,
        }
    }

    #[test]
    fn error_partitions_are_answered_with_empty_records_never_null() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let log = PartitionLog::open(store, 1, "t".into(), 0).unwrap();
        let mut slots = vec![
            // Past the log end (0): OFFSET_OUT_OF_RANGE.
            slot(Some(log.clone()), 0, 5),
            // Below the log start.
            slot(Some(log.clone()), 0, -3),
            // Errors decided before reading: unknown topic, stale epoch.
            slot(None, E::UnknownTopicId.code(), 0),
            slot(Some(log), E::FencedLeaderEpoch.code(), 0),
        ];
        let (_, any_error) = read_all(&mut slots, usize::MAX, 16, false);
        assert!(any_error);
        let codes: Vec<i16> = slots.iter().map(|s| s.data.error_code).collect();
        assert_eq!(
            codes,
            vec![
                E::OffsetOutOfRange.code(),
                E::OffsetOutOfRange.code(),
                E::UnknownTopicId.code(),
                E::FencedLeaderEpoch.code()
            ]
        );
        for s in slots {
            assert_eq!(s.data.records, Some(Bytes::new()));
            assert_eq!(answered(s.data).records, Some(Bytes::new()));
        }
        let nulled = PartitionData::default().with_records(None);
        assert_eq!(answered(nulled).records, Some(Bytes::new()));
    }
}
