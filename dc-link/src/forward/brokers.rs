//! The region's brokers hand produces for mirror partitions to this
//! process: one TCP connection per broker, Kafka framing, Produce only.
//! The request's client id names the topics' home region. Answers go back
//! as they arrive, matched by correlation id.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use chronik_wire::framing::FrameDecoder;
use chronik_wire::protocol::{self, Parsed};
use kafka_protocol::error::ResponseError as E;
use kafka_protocol::messages::produce_response::{PartitionProduceResponse, TopicProduceResponse};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse, RequestKind};
use kafka_protocol::protocol::StrBytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

use super::failed;
use crate::proto::{self, ForwardItem, ForwardResult};
use crate::Shared;

/// The largest request a broker hands over: its own request size limit is
/// smaller.
const MAX_REQUEST: usize = 256 << 20;

pub(crate) async fn serve(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        match listener.accept().await {
            Ok((s, remote)) => {
                let shared = shared.clone();
                tokio::spawn(async move {
                    if let Err(e) = connection(shared, s).await {
                        tracing::debug!(%remote, error = %e, "forwarding: broker connection closed");
                    }
                });
            }
            Err(e) => {
                tracing::warn!(error = %e, "forwarding: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn connection(shared: Arc<Shared>, s: TcpStream) -> Result<(), String> {
    let _ = s.set_nodelay(true);
    let (mut rd, mut wr) = s.into_split();
    let (out, mut out_rx) = mpsc::unbounded_channel::<Bytes>();
    let writer = async move {
        while let Some(b) = out_rx.recv().await {
            wr.write_all(&b).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let reader = async {
        let decoder = FrameDecoder::new(MAX_REQUEST);
        let mut buf = BytesMut::with_capacity(256 << 10);
        loop {
            while let Some(frame) = decoder.decode(&mut buf).map_err(|e| e.to_string())? {
                let req = match protocol::parse(frame).map_err(|e| e.to_string())? {
                    Parsed::Request(r) => r,
                    Parsed::ApiVersionsFallback { .. } => {
                        return Err("a forward connection carries Produce only".to_string())
                    }
                };
                let RequestKind::Produce(p) = req.body else {
                    return Err(format!(
                        "a forward connection carries Produce only, got {:?}",
                        req.api_key
                    ));
                };
                let home = req
                    .header
                    .client_id
                    .as_ref()
                    .map(|c| c.to_string())
                    .unwrap_or_default();
                forward(
                    &shared,
                    req.header.correlation_id,
                    req.version,
                    home,
                    p,
                    out.clone(),
                );
            }
            if rd.read_buf(&mut buf).await.map_err(|e| e.to_string())? == 0 {
                return Ok(());
            }
        }
    };
    tokio::select! {
        r = writer => r,
        r = reader => r,
    }
}

/// Sends one broker request on to `home` (queued before this returns, so
/// the connection's order is kept) and answers it when the home has.
fn forward(
    shared: &Arc<Shared>,
    correlation_id: i32,
    version: i16,
    home: String,
    p: ProduceRequest,
    out: mpsc::UnboundedSender<Bytes>,
) {
    let items: Vec<ForwardItem> = p
        .topic_data
        .iter()
        .flat_map(|t| {
            t.partition_data.iter().map(|pd| ForwardItem {
                topic: t.name.0.to_string(),
                partition: pd.index,
                records: pd.records.clone().unwrap_or_default(),
            })
        })
        .collect();
    let link = format!("{}->{home}", shared.region);
    let bytes: u64 = items.iter().map(|i| i.records.len() as u64).sum();
    let n = items.len();
    let timeout = Duration::from_millis(p.timeout_ms.max(1) as u64);
    let sent = if home == shared.region || shared.topology.region(&home).is_none() {
        Err(format!("{home:?} is not another region of the topology"))
    } else {
        shared
            .forwarding
            .send(
                &shared.region,
                &home,
                shared.topology.cross_dc.forward_max_inflight_bytes,
                proto::Forward {
                    items,
                    timeout_ms: p.timeout_ms,
                },
            )
            .map_err(|r| {
                metrics::counter!("chronik_forward_requests_total", "link" => link.clone(), "result" => r.label())
                    .increment(n as u64);
                r.to_string()
            })
    };
    let shared = shared.clone();
    let started = Instant::now();
    tokio::spawn(async move {
        let mut throttle_time_ms = 0;
        let results: Vec<ForwardResult> = match sent {
            Err(why) => (0..n)
                .map(|_| failed(E::NotEnoughReplicas.code(), why.clone()))
                .collect(),
            Ok((rx, budget)) => {
                let r = tokio::time::timeout(timeout, rx).await;
                drop(budget);
                let results = match r {
                    Ok(Ok(Ok(reply))) if reply.results.len() == n => {
                        throttle_time_ms = reply.throttle_time_ms;
                        reply.results
                    }
                    Ok(Ok(Ok(_))) => (0..n)
                        .map(|_| {
                            failed(
                                E::UnknownServerError.code(),
                                "the home answered a different number of batches".into(),
                            )
                        })
                        .collect(),
                    // The link went down with the batches sent: the client
                    // retries, and idempotence settles what was written.
                    Ok(Ok(Err(why))) => (0..n)
                        .map(|_| {
                            failed(
                                E::RequestTimedOut.code(),
                                format!("the link to {home} went down before it answered: {why}"),
                            )
                        })
                        .collect(),
                    Ok(Err(_)) => (0..n)
                        .map(|_| failed(E::RequestTimedOut.code(), format!("the link to {home} went down before it answered")))
                        .collect(),
                    Err(_) => (0..n)
                        .map(|_| {
                            failed(
                                E::RequestTimedOut.code(),
                                format!("the home region {home} did not answer within the produce timeout"),
                            )
                        })
                        .collect(),
                };
                metrics::histogram!("chronik_forward_latency_seconds", "link" => link.clone())
                    .record(started.elapsed().as_secs_f64());
                let (ok, err) = results.iter().fold((0u64, 0u64), |(o, e), r| {
                    if r.error_code == 0 {
                        (o + 1, e)
                    } else {
                        (o, e + 1)
                    }
                });
                let timeouts = results
                    .iter()
                    .filter(|r| r.error_code as i16 == E::RequestTimedOut.code())
                    .count() as u64;
                metrics::counter!("chronik_forward_requests_total", "link" => link.clone(), "result" => "ok")
                    .increment(ok);
                metrics::counter!("chronik_forward_requests_total", "link" => link.clone(), "result" => "timeout")
                    .increment(timeouts);
                metrics::counter!("chronik_forward_requests_total", "link" => link.clone(), "result" => "error")
                    .increment(err - timeouts);
                shared.link_stats(&link, |s| {
                    s.forwarded_batches += ok;
                    s.forwarded_bytes += bytes;
                    s.forward_errors += err;
                });
                results
            }
        };
        let mut results = results.into_iter();
        let responses = p
            .topic_data
            .into_iter()
            .map(|t| {
                let parts = t
                    .partition_data
                    .iter()
                    .map(|pd| {
                        let r = results.next().expect("one result per item");
                        PartitionProduceResponse::default()
                            .with_index(pd.index)
                            .with_error_code(r.error_code as i16)
                            .with_error_message(
                                (!r.error_message.is_empty())
                                    .then(|| StrBytes::from_string(r.error_message)),
                            )
                            .with_base_offset(r.base_offset)
                            .with_log_append_time_ms(r.log_append_time_ms)
                            .with_log_start_offset(r.log_start_offset)
                    })
                    .collect();
                TopicProduceResponse::default()
                    .with_name(t.name)
                    .with_partition_responses(parts)
            })
            .collect();
        let body = ProduceResponse::default()
            .with_responses(responses)
            .with_throttle_time_ms(throttle_time_ms);
        let _ = out.send(protocol::encode_response(
            correlation_id,
            ApiKey::Produce,
            version,
            &body,
        ));
    });
}
