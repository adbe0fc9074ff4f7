//! The home side of write forwarding: produce what another region forwards
//! to the partition leaders here, as a client would, and answer with what
//! they answered.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chronik_wire::client::{Pipe, PipeError};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, TopicName};
use kafka_protocol::protocol::StrBytes;
use tokio::sync::mpsc;

use super::failed;
use crate::proto::{self, Body, Envelope, ForwardResult};
use crate::{kafka, FrameReader, Shared};

/// Produce v9: error messages and log start offsets in the answer.
const PRODUCE_VERSION: i16 = 9;

/// Which broker leads each partition here, and one pipelined connection to
/// each broker. A connection carries every forwarded batch for the
/// partitions its broker leads, in arrival order.
struct Leaders {
    shared: Arc<Shared>,
    /// The region the forwarded produces come from: named in the client id,
    /// so that the home's brokers authorize them as that region too.
    origin: String,
    addr_of: Mutex<HashMap<(String, i32), String>>,
    pipes: Mutex<HashMap<String, Arc<Pipe>>>,
}

impl Leaders {
    async fn leader(&self, topic: &str, partition: i32) -> Result<String, ForwardResult> {
        let key = (topic.to_string(), partition);
        if let Some(a) = self.addr_of.lock().unwrap().get(&key) {
            return Ok(a.clone());
        }
        let view = kafka::metadata(&self.shared.local_region().bootstrap, Some(&[topic.into()]))
            .await
            .map_err(|e| {
                failed(
                    E::NotLeaderOrFollower.code(),
                    format!("the home region's brokers did not answer: {e}"),
                )
            })?;
        let Some(t) = view.topics.get(topic) else {
            return Err(failed(
                E::UnknownTopicOrPartition.code(),
                format!(
                    "topic {topic} does not exist in its home region {}",
                    self.shared.region
                ),
            ));
        };
        if partition < 0 || partition as usize >= t.leaders.len() {
            return Err(failed(
                E::UnknownTopicOrPartition.code(),
                format!("{topic} has no partition {partition} in its home region"),
            ));
        }
        let addr = view.leader_addr(topic, partition).ok_or_else(|| {
            failed(
                E::NotLeaderOrFollower.code(),
                format!("{topic}/{partition} has no leader in its home region now"),
            )
        })?;
        self.addr_of.lock().unwrap().insert(key, addr.to_string());
        Ok(addr.to_string())
    }

    fn forget(&self, topic: &str, partition: i32) {
        self.addr_of
            .lock()
            .unwrap()
            .remove(&(topic.to_string(), partition));
    }

    fn pipe(&self, addr: &str) -> Arc<Pipe> {
        let mut pipes = self.pipes.lock().unwrap();
        match pipes.get(addr) {
            Some(p) if !p.is_closed() => p.clone(),
            _ => {
                let p = Arc::new(Pipe::open(
                    addr.to_string(),
                    &chronik_wire::protocol::forwarded_client_id(&self.origin),
                ));
                pipes.insert(addr.to_string(), p.clone());
                p
            }
        }
    }
}

/// Serves a forward stream from `peer`, whose first request is `first`.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    peer: String,
    first: Envelope,
    mut frames: FrameReader,
    send: quinn::SendStream,
) -> Result<(), String> {
    let (out, out_rx) = mpsc::unbounded_channel::<Envelope>();
    let writer = crate::write_frames(send, out_rx, shared.topology.cross_dc.zstd_level());
    let leaders = Arc::new(Leaders {
        shared: shared.clone(),
        origin: peer.clone(),
        addr_of: Mutex::default(),
        pipes: Mutex::default(),
    });
    let reader = async {
        let mut next = Some(first);
        loop {
            let env = match next.take() {
                Some(e) => e,
                None => frames.next().await.map_err(|e| e.to_string())?.0,
            };
            let Some(Body::Forward(f)) = env.body else {
                tracing::error!(peer = %peer, "forwarding: unexpected message from {peer} on the forward stream; closing it");
                return Err::<(), String>("unexpected message on the forward stream".into());
            };
            // Handed to the leaders' connections here, in stream order; the
            // answers are awaited off the stream.
            let calls = submit(&leaders, &f).await;
            let (leaders, out, id) = (leaders.clone(), out.clone(), env.id);
            let timeout = Duration::from_millis(f.timeout_ms.max(1) as u64 + 2_000);
            tokio::spawn(async move {
                let (results, throttle_time_ms) = collect(&leaders, &f, calls, timeout).await;
                let _ = out.send(Envelope {
                    id: 0,
                    reply_to: id,
                    body: Some(Body::ForwardReply(proto::ForwardReply {
                        results,
                        throttle_time_ms,
                    })),
                });
            });
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

/// One produce to one leader: its address and pending answer.
type Call = (String, chronik_wire::client::Pending);

/// Per item, the index of the call that carries it, or why there is none;
/// and the calls, one per leader, queued in stream order.
type Submitted = (Vec<Result<usize, ForwardResult>>, Vec<Call>);

async fn submit(leaders: &Leaders, f: &proto::Forward) -> Submitted {
    let mut by_addr: Vec<(String, ProduceRequest)> = Vec::new();
    let mut placed = Vec::with_capacity(f.items.len());
    for item in &f.items {
        let addr = match leaders.leader(&item.topic, item.partition).await {
            Ok(a) => a,
            Err(r) => {
                placed.push(Err(r));
                continue;
            }
        };
        let i = match by_addr.iter().position(|(a, _)| *a == addr) {
            Some(i) => i,
            None => {
                let req = ProduceRequest::default()
                    .with_acks(-1)
                    .with_timeout_ms(f.timeout_ms.max(1));
                by_addr.push((addr, req));
                by_addr.len() - 1
            }
        };
        let req = &mut by_addr[i].1;
        let name = TopicName(StrBytes::from_string(item.topic.clone()));
        let pd = PartitionProduceData::default()
            .with_index(item.partition)
            .with_records(Some(item.records.clone()));
        match req.topic_data.iter_mut().find(|t| t.name == name) {
            Some(t) => t.partition_data.push(pd),
            None => req.topic_data.push(
                TopicProduceData::default()
                    .with_name(name)
                    .with_partition_data(vec![pd]),
            ),
        }
        placed.push(Ok(i));
    }
    let calls = by_addr
        .into_iter()
        .map(|(addr, req)| {
            let pending = leaders
                .pipe(&addr)
                .call(ApiKey::Produce, PRODUCE_VERSION, &req);
            (addr, pending)
        })
        .collect();
    (placed, calls)
}

/// Each item's outcome, in item order, and the longest throttle asked.
async fn collect(
    leaders: &Leaders,
    f: &proto::Forward,
    (placed, calls): Submitted,
    timeout: Duration,
) -> (Vec<ForwardResult>, i32) {
    let mut answers: Vec<Result<ProduceResponse, ForwardResult>> = Vec::with_capacity(calls.len());
    for (addr, pending) in calls {
        let answer = match tokio::time::timeout(timeout, pending).await {
            Ok(Ok(Ok(body))) => {
                Pipe::decode::<ProduceResponse>(&addr, ApiKey::Produce, PRODUCE_VERSION, body)
                    .map_err(|e| failed(E::UnknownServerError.code(), e.to_string()))
            }
            // Never sent: the leader moved or its broker is down.
            Ok(Ok(Err(e @ PipeError::Connect { .. }))) => {
                Err(failed(E::NotLeaderOrFollower.code(), e.to_string()))
            }
            // Sent, fate unknown: the client retries and the home
            // deduplicates an idempotent producer's batch.
            Ok(Ok(Err(e))) => Err(failed(E::RequestTimedOut.code(), e.to_string())),
            Ok(Err(_)) => Err(failed(
                E::RequestTimedOut.code(),
                format!("connection to {addr} lost"),
            )),
            Err(_) => Err(failed(
                E::RequestTimedOut.code(),
                format!("the home leader {addr} did not answer in time"),
            )),
        };
        answers.push(answer);
    }
    let throttle = answers
        .iter()
        .filter_map(|a| a.as_ref().ok())
        .map(|r| r.throttle_time_ms)
        .max()
        .unwrap_or(0);
    let results = f
        .items
        .iter()
        .zip(placed)
        .map(|(item, place)| {
            let r = match place {
                Err(r) => r,
                Ok(i) => match &answers[i] {
                    Err(r) => r.clone(),
                    Ok(resp) => resp
                        .responses
                        .iter()
                        .filter(|t| t.name.0.as_str() == item.topic)
                        .flat_map(|t| t.partition_responses.iter())
                        .find(|p| p.index == item.partition)
                        .map(|p| ForwardResult {
                            error_code: p.error_code as i32,
                            error_message: p
                                .error_message
                                .as_ref()
                                .map(|m| m.to_string())
                                .unwrap_or_default(),
                            base_offset: p.base_offset,
                            log_append_time_ms: p.log_append_time_ms,
                            log_start_offset: p.log_start_offset,
                        })
                        .unwrap_or_else(|| {
                            failed(
                                E::UnknownServerError.code(),
                                "the home leader's answer left this partition out".into(),
                            )
                        }),
                },
            };
            // A leader that moved or a broker that went away: look it up
            // afresh for the client's retry.
            let code = r.error_code as i16;
            if code == E::NotLeaderOrFollower.code()
                || code == E::LeaderNotAvailable.code()
                || code == E::UnknownTopicOrPartition.code()
                || code == E::RequestTimedOut.code()
            {
                leaders.forget(&item.topic, item.partition);
            }
            r
        })
        .collect();
    (results, throttle)
}
