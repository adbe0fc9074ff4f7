//! Write forwarding: a produce to a mirror partition, made by a client in
//! this region, is carried to the topic's home region and written there,
//! and the client gets the home's answer (the offset where the record is,
//! or the error a client of the home would get).
//!
//! Three hops, each keeping the order in which it received batches, so a
//! producer's batches reach the home leader in the order it sent them:
//! - the partition's leader here hands the produce to this process on one
//!   TCP connection per broker ([`brokers`], Kafka framing);
//! - this process sends it to the home region's dc-link on a QUIC
//!   connection of its own per link ([`run_link`], [`run_stream`]), so
//!   forwarded writes never queue behind mirror data and have their own
//!   congestion control (`cross_dc.forward_congestion`);
//! - the home's dc-link produces it to the partition leader there on one
//!   pipelined connection per broker ([`home`]), as a client would, with the
//!   producer id, epoch and sequence untouched: the home deduplicates a
//!   retried batch exactly as it would a local one.
//!
//! What may be waiting for the home's answer is bounded per link
//! (`cross_dc.forward_max_inflight_bytes`); past it, and while the link is
//! down, forwarded produces fail at once with a retriable error.

pub(crate) mod brokers;
pub(crate) mod home;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::proto::{self, Body, Envelope};
use crate::{FrameReader, Shared};

/// The home's answer, or why none came (the link went down).
pub(crate) type Reply = Result<proto::ForwardReply, String>;

struct Request {
    forward: proto::Forward,
    done: oneshot::Sender<Reply>,
}

/// Per link: the stream to the home region and the bytes awaiting answers.
#[derive(Default)]
pub struct Forwarding {
    /// Peer region -> (session number, the stream's queue).
    streams: Mutex<HashMap<String, (u64, mpsc::UnboundedSender<Request>)>>,
    /// Link name -> bytes sent and not yet answered.
    inflight: Mutex<HashMap<String, Arc<AtomicU64>>>,
    sessions: AtomicU64,
    /// Where this process takes produces from its brokers (announced to
    /// them with every lease push).
    pub(crate) listen: OnceLock<std::net::SocketAddr>,
}

/// Why a forward was not sent; either way nothing reached the home.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum Refused {
    #[error("the home region {home} cannot be reached from {region} now (no dc-link connection to it); retry")]
    Unreachable { region: String, home: String },
    #[error("forwarding to {home} is backed up: {inflight} bytes await its answer, the limit is {limit} (cross_dc.forward_max_inflight_bytes); retry")]
    Full {
        home: String,
        inflight: u64,
        limit: u64,
    },
}

impl Refused {
    pub(crate) fn label(&self) -> &'static str {
        match self {
            Refused::Unreachable { .. } => "unreachable",
            Refused::Full { .. } => "backpressure",
        }
    }
}

/// A batch's outcome when it was not written: a Kafka error code and why.
pub(crate) fn failed(code: i16, message: String) -> proto::ForwardResult {
    proto::ForwardResult {
        error_code: code as i32,
        error_message: message,
        base_offset: -1,
        log_append_time_ms: -1,
        log_start_offset: -1,
    }
}

/// Bytes counted against a link's budget until dropped.
pub(crate) struct Budget {
    counter: Arc<AtomicU64>,
    bytes: u64,
    link: String,
}

impl Drop for Budget {
    fn drop(&mut self) {
        let left = self.counter.fetch_sub(self.bytes, Ordering::AcqRel) - self.bytes;
        metrics::gauge!("chronik_forward_inflight_bytes", "link" => self.link.clone())
            .set(left as f64);
    }
}

impl Forwarding {
    fn counter(&self, link: &str) -> Arc<AtomicU64> {
        self.inflight
            .lock()
            .unwrap()
            .entry(link.to_string())
            .or_default()
            .clone()
    }

    /// Queues `forward` on the stream to `home`, in call order.
    pub(crate) fn send(
        &self,
        region: &str,
        home: &str,
        limit: u64,
        forward: proto::Forward,
    ) -> Result<(oneshot::Receiver<Reply>, Budget), Refused> {
        let link = format!("{region}->{home}");
        let bytes: u64 = forward.items.iter().map(|i| i.records.len() as u64).sum();
        let counter = self.counter(&link);
        let before = counter.fetch_add(bytes, Ordering::AcqRel);
        let budget = Budget {
            counter,
            bytes,
            link: link.clone(),
        };
        // One batch larger than the whole budget still goes alone.
        if before > 0 && before + bytes > limit {
            return Err(Refused::Full {
                home: home.to_string(),
                inflight: before,
                limit,
            });
        }
        metrics::gauge!("chronik_forward_inflight_bytes", "link" => link)
            .set((before + bytes) as f64);
        let tx = self
            .streams
            .lock()
            .unwrap()
            .get(home)
            .map(|(_, tx)| tx.clone());
        let unreachable = || Refused::Unreachable {
            region: region.to_string(),
            home: home.to_string(),
        };
        let tx = tx.ok_or_else(unreachable)?;
        let (done, rx) = oneshot::channel();
        tx.send(Request { forward, done })
            .map_err(|_| unreachable())?;
        Ok((rx, budget))
    }
}

/// Keeps a forward connection to `peer` up for as long as the process runs:
/// dials it (the next of its dc-link addresses after a failure, so a
/// standby that took over is found), says Hello with `forward_only`, then
/// runs the forward stream on it.
pub(crate) async fn run_link(shared: Arc<Shared>, peer: String) {
    let mut which = 0usize;
    let mut backoff = Duration::from_millis(200);
    loop {
        let started = std::time::Instant::now();
        if let Err(e) = connect_and_forward(&shared, &peer, which).await {
            which += 1;
            tracing::info!(peer = %peer, error = %e, "forward connection to {peer} down; redialing");
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn connect_and_forward(shared: &Arc<Shared>, peer: &str, which: usize) -> Result<(), String> {
    let (conn, addr) = shared.dial_forward(peer, which).await?;
    let (send, frames) = crate::sender::handshake(shared, &conn, peer, addr, true).await?;
    tracing::info!(peer = %peer, remote = %addr, "forward connection to {peer} up");
    let r = tokio::select! {
        r = run_stream(shared.clone(), conn.clone(), peer.to_string()) => r,
        e = conn.closed() => Err(e.to_string()),
    };
    // The handshake stream stays open for as long as the connection serves.
    drop((send, frames));
    conn.close(0u32.into(), b"forward link reset");
    r
}

/// The forward stream of one forward connection to `peer` (this region sends,
/// the peer is the home). Ends, failing what awaits an answer, when the
/// stream or the connection fails.
pub(crate) async fn run_stream(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: String,
) -> Result<(), String> {
    let (send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let (tx, mut rx) = mpsc::unbounded_channel::<Request>();
    let f = &shared.forwarding;
    let session = f.sessions.fetch_add(1, Ordering::AcqRel);
    f.streams
        .lock()
        .unwrap()
        .insert(peer.clone(), (session, tx));
    struct Unregister<'a>(&'a Forwarding, String, u64);
    impl Drop for Unregister<'_> {
        fn drop(&mut self) {
            let mut s = self.0.streams.lock().unwrap();
            if s.get(&self.1).is_some_and(|(n, _)| *n == self.2) {
                s.remove(&self.1);
            }
        }
    }
    let _unregister = Unregister(f, peer.clone(), session);
    let level = shared.topology.cross_dc.zstd_level();
    let waiting: Mutex<HashMap<u64, oneshot::Sender<Reply>>> = Mutex::default();
    let writer = async {
        let mut send = send;
        let mut id = 0u64;
        while let Some(Request { forward, done }) = rx.recv().await {
            id += 1;
            waiting.lock().unwrap().insert(id, done);
            let env = Envelope {
                id,
                reply_to: 0,
                body: Some(Body::Forward(forward)),
            };
            let (frame, _) = proto::encode(&env, level);
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let reader = async {
        let mut frames = FrameReader::new(recv);
        loop {
            let (env, _) = frames.next().await.map_err(|e| e.to_string())?;
            match env.body {
                Some(Body::ForwardReply(r)) => {
                    if let Some(done) = waiting.lock().unwrap().remove(&env.reply_to) {
                        let _ = done.send(Ok(r));
                    }
                }
                _ => return Err::<(), String>("unexpected message on the forward stream".into()),
            }
        }
    };
    let r = tokio::select! {
        r = writer => r,
        r = reader => r,
    };
    let why = r.err().unwrap_or_else(|| "the link closed".into());
    for (_, done) in waiting.lock().unwrap().drain() {
        let _ = done.send(Err(why.clone()));
    }
    Err(why)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn forward(bytes: usize) -> proto::Forward {
        proto::Forward {
            items: vec![proto::ForwardItem {
                topic: "t".into(),
                partition: 0,
                records: bytes::Bytes::from(vec![0u8; bytes]),
            }],
            timeout_ms: 1000,
        }
    }

    fn with_stream(f: &Forwarding, home: &str) -> mpsc::UnboundedReceiver<Request> {
        let (tx, rx) = mpsc::unbounded_channel();
        f.streams.lock().unwrap().insert(home.into(), (0, tx));
        rx
    }

    #[test]
    fn without_a_link_the_home_is_unreachable_and_nothing_stays_counted() {
        let f = Forwarding::default();
        let e = f.send("eu", "us", 1000, forward(10)).err().unwrap();
        assert_eq!(e.label(), "unreachable");
        assert_eq!(f.counter("eu->us").load(Ordering::Acquire), 0);
    }

    #[test]
    fn the_budget_refuses_past_its_limit_and_frees_on_answer() {
        let f = Forwarding::default();
        let mut rx = with_stream(&f, "us");
        // A batch larger than the whole budget goes when nothing else waits.
        let (_, big) = f.send("eu", "us", 100, forward(150)).unwrap();
        let e = f.send("eu", "us", 100, forward(1)).err().unwrap();
        assert!(matches!(e, Refused::Full { inflight: 150, .. }), "{e:?}");
        drop(big);
        let (_, a) = f.send("eu", "us", 100, forward(60)).unwrap();
        assert!(f.send("eu", "us", 100, forward(60)).is_err());
        let (_, b) = f.send("eu", "us", 100, forward(40)).unwrap();
        assert_eq!(f.counter("eu->us").load(Ordering::Acquire), 100);
        drop((a, b));
        assert_eq!(f.counter("eu->us").load(Ordering::Acquire), 0);
        // Queued in call order.
        let sizes: Vec<usize> = std::iter::from_fn(|| rx.try_recv().ok())
            .map(|r| r.forward.items[0].records.len())
            .collect();
        assert_eq!(sizes, vec![150, 60, 40]);
    }
}
