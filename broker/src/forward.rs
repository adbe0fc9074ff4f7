//! Write forwarding, the broker's side: a produce to a mirror partition led
//! here is handed to the region's dc-link, which carries it to the topic's
//! home region and brings back the home's answer.
//!
//! The dc-link that acts for the region announces where it takes these
//! produces with every lease push (every 250 ms), so brokers follow a
//! standby's takeover. There is one pipelined connection per home region;
//! a produce is queued on it before the request handler returns, so a
//! connection's batches reach the home in the order the client sent them.
//! What awaits an answer is bounded (`limits.forward_max_inflight_bytes`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chronik_wire::client::{Pipe, PipeError};
use kafka_protocol::messages::{ApiKey, ProduceRequest, ProduceResponse};

/// Produce v9: the answer carries error messages and log start offsets.
pub const VERSION: i16 = 9;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ForwardError {
    #[error("this region's dc-link has not announced itself to this broker, so produces to mirror partitions cannot be forwarded to the home region {home}; retry once it is up")]
    NoDcLink { home: String },
    #[error("forwarding to {home} is backed up: {inflight} bytes await the home's answer on this broker, the limit is {limit} (limits.forward_max_inflight_bytes); retry")]
    Full {
        home: String,
        inflight: u64,
        limit: u64,
    },
    #[error("the dc-link at {addr} was not reachable: {message}; retry")]
    Unreachable { addr: String, message: String },
    /// Handed over, fate unknown.
    #[error("the forwarded produce was lost on the way ({message}); it may or may not have been written: retry (an idempotent producer's retry is deduplicated at the home)")]
    Lost { message: String },
    #[error("the home region's answer did not decode: {0}")]
    Decode(String),
}

pub struct Forwarder {
    addr: Mutex<Option<String>>,
    /// Per home region, the connection to the dc-link.
    pipes: Mutex<HashMap<String, Arc<Pipe>>>,
    inflight: Arc<AtomicU64>,
    limit: u64,
}

/// Bytes counted against this broker's budget until dropped.
pub struct Budget {
    counter: Arc<AtomicU64>,
    bytes: u64,
}

impl Drop for Budget {
    fn drop(&mut self) {
        self.counter.fetch_sub(self.bytes, Ordering::AcqRel);
    }
}

impl Forwarder {
    pub fn new(limit: u64) -> Forwarder {
        Forwarder {
            addr: Mutex::new(None),
            pipes: Mutex::default(),
            inflight: Arc::default(),
            limit,
        }
    }

    /// The acting dc-link's forward address, from its lease push. A new
    /// address drops the connections to the old one.
    pub fn announce(&self, addr: &str) {
        let mut a = self.addr.lock().unwrap();
        if a.as_deref() != Some(addr) {
            tracing::info!(dc_link = %addr, "write forwarding goes through the dc-link at {addr}");
            *a = Some(addr.to_string());
            self.pipes.lock().unwrap().clear();
        }
    }

    /// Queues `req` (partitions homed in `home`) for the dc-link, in call
    /// order; resolves to the home's answer.
    pub fn send(
        &self,
        home: &str,
        req: &ProduceRequest,
    ) -> Result<
        impl std::future::Future<Output = Result<ProduceResponse, ForwardError>> + Send + 'static,
        ForwardError,
    > {
        let bytes: u64 = req
            .topic_data
            .iter()
            .flat_map(|t| &t.partition_data)
            .map(|p| p.records.as_ref().map_or(0, |r| r.len() as u64))
            .sum();
        let before = self.inflight.fetch_add(bytes, Ordering::AcqRel);
        let budget = Budget {
            counter: self.inflight.clone(),
            bytes,
        };
        // One batch larger than the whole budget still goes alone.
        if before > 0 && before + bytes > self.limit {
            return Err(ForwardError::Full {
                home: home.to_string(),
                inflight: before,
                limit: self.limit,
            });
        }
        let Some(addr) = self.addr.lock().unwrap().clone() else {
            return Err(ForwardError::NoDcLink {
                home: home.to_string(),
            });
        };
        let pipe = {
            let mut pipes = self.pipes.lock().unwrap();
            match pipes.get(home) {
                Some(p) if !p.is_closed() => p.clone(),
                _ => {
                    // The client id names the home region to the dc-link.
                    let p = Arc::new(Pipe::open(addr.clone(), home));
                    pipes.insert(home.to_string(), p.clone());
                    p
                }
            }
        };
        let pending = pipe.call(ApiKey::Produce, VERSION, req);
        Ok(async move {
            let answer = pending.await;
            drop(budget);
            match answer {
                Ok(Ok(body)) => Pipe::decode(&addr, ApiKey::Produce, VERSION, body)
                    .map_err(|e| ForwardError::Decode(e.to_string())),
                Ok(Err(PipeError::Connect { addr, message })) => {
                    Err(ForwardError::Unreachable { addr, message })
                }
                Ok(Err(e)) => Err(ForwardError::Lost {
                    message: e.to_string(),
                }),
                Err(_) => Err(ForwardError::Lost {
                    message: "the connection to the dc-link closed".into(),
                }),
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};

    fn request(bytes: usize) -> ProduceRequest {
        ProduceRequest::default().with_topic_data(vec![TopicProduceData::default()
            .with_partition_data(vec![PartitionProduceData::default()
                .with_records(Some(bytes::Bytes::from(vec![0u8; bytes])))])])
    }

    #[tokio::test]
    async fn nothing_is_sent_before_the_dc_link_announces_itself() {
        let f = Forwarder::new(1000);
        assert!(matches!(
            f.send("us", &request(10)).err(),
            Some(ForwardError::NoDcLink { .. })
        ));
        assert_eq!(f.inflight.load(Ordering::Acquire), 0);
    }

    #[tokio::test]
    async fn an_unreachable_dc_link_fails_the_produce_as_not_sent_and_frees_the_budget() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap().to_string();
        drop(l);
        let f = Forwarder::new(100);
        f.announce(&addr);
        let sent = f.send("us", &request(60)).unwrap();
        assert!(matches!(
            f.send("us", &request(60)).err(),
            Some(ForwardError::Full { inflight: 60, .. })
        ));
        assert!(matches!(sent.await, Err(ForwardError::Unreachable { .. })));
        assert_eq!(f.inflight.load(Ordering::Acquire), 0);
    }
}
