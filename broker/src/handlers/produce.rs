//! Produce: validate and append each partition's batch in request order,
//! then answer once every append is durable.

use std::sync::Arc;
use std::time::Duration;

use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::produce_response::{
    LeaderIdAndEpoch, PartitionProduceResponse, TopicProduceResponse,
};
use kafka_protocol::messages::{ApiKey, BrokerId, ProduceRequest, ProduceResponse};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::oneshot;

use super::{now_ms, Reply};
use crate::error::KafkaCode;
use crate::log::Appended;
use crate::protocol::encode_response;
use crate::server::BrokerCtx;
use crate::storage::StoreError;

/// A partition's outcome before durability is known.
enum Outcome {
    Done(PartitionProduceResponse),
    Waiting(
        PartitionProduceResponse,
        oneshot::Receiver<Result<(), StoreError>>,
    ),
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

pub fn handle(
    ctx: &Arc<BrokerCtx>,
    correlation_id: i32,
    version: i16,
    req: ProduceRequest,
) -> Reply {
    let acks = req.acks;
    let now = now_ms();
    let mut topics: Vec<(TopicProduceResponse, Vec<Outcome>)> =
        Vec::with_capacity(req.topic_data.len());
    for td in req.topic_data {
        let topic = ctx.catalog.get(&td.name);
        let mut outcomes = Vec::with_capacity(td.partition_data.len());
        for pd in td.partition_data {
            let idx = pd.index;
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
            let append_time = if t.effective.log_append_time { now } else { -1 };
            let ok = |base: i64| {
                let r = PartitionProduceResponse::default()
                    .with_index(idx)
                    .with_base_offset(base)
                    .with_log_append_time_ms(append_time);
                if version >= LOG_START_VERSION {
                    r.with_log_start_offset(log.log_start_offset())
                } else {
                    r
                }
            };
            match log.append(&records, &t.effective, now) {
                Ok(Appended::Pending { base_offset, done }) => {
                    outcomes.push(Outcome::Waiting(ok(base_offset), done))
                }
                Ok(Appended::Duplicate { base_offset }) => {
                    outcomes.push(Outcome::Done(ok(base_offset)))
                }
                Err(e) => {
                    tracing::debug!(topic = %td.name.0.as_str(), partition = idx, error = %e, "produce rejected");
                    let leader = LeaderIdAndEpoch::default()
                        .with_leader_id(BrokerId(ctx.config.node_id))
                        .with_leader_epoch(log.leader_epoch());
                    outcomes.push(Outcome::Done(
                        partition_error(version, idx, e.kafka_code(), Some(e.to_string()))
                            .with_current_leader(leader),
                    ));
                }
            }
        }
        topics.push((TopicProduceResponse::default().with_name(td.name), outcomes));
    }
    if acks == 0 {
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
                    Outcome::Waiting(r, done) => match tokio::time::timeout(timeout, done).await {
                        Ok(Ok(Ok(()))) => r,
                        Ok(Ok(Err(e))) => {
                            partition_error(version, r.index, e.kafka_code(), Some(e.to_string()))
                        }
                        Ok(Err(_)) => partition_error(
                            version,
                            r.index,
                            E::KafkaStorageError.code(),
                            Some("write was dropped".into()),
                        ),
                        Err(_) => {
                            partition_error(version, r.index, E::RequestTimedOut.code(), None)
                        }
                    },
                });
            }
            responses.push(topic.with_partition_responses(parts));
        }
        encode_response(
            correlation_id,
            ApiKey::Produce,
            version,
            &ProduceResponse::default().with_responses(responses),
        )
    }))
}
