//! metadata-sync between regions: the global `__meta` travels on its own
//! QUIC stream of each link, so a data stream with a full window never
//! holds metadata back.
//!
//! Each link carries one direction. The dialing region pushes: it sends its
//! summary, the other side answers with its own, and from then on the
//! pusher sends a delta whenever the other side lacks something (one delta
//! in flight; the answer to each is the merger's new summary). The first
//! exchange after a connect is the anti-entropy round; later ones stream
//! changes as they are applied, woken by a long poll on the local broker.
//! Both sides keep no state of their own: everything lives in the brokers'
//! controller, so restarts of a dc-link or a controller lose nothing.
//!
//! A message the merging region refuses (malformed, oversized, another
//! protocol version, breaking the merge rules) closes the link, with an
//! error naming the peer; nothing of it is merged.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chronik_metadata_sync::{Delta, Limits, Summary};
use hyper::Method;
use serde::Serialize;

use crate::broker_http::{AdminConn, HttpError};
use crate::proto::{self, Body, Envelope};
use crate::{FrameReader, ReadError, Shared};

/// Per peer, as the pushing side sees it.
#[derive(Debug, Clone, Default, Serialize)]
pub struct MetaPeer {
    pub connected: bool,
    /// Entries the peer lacked at the last check (0: in sync).
    pub pending_entries: u64,
    /// Since when the peer has lacked something, if it does.
    #[serde(skip)]
    pub behind_since: Option<Instant>,
    pub lag_seconds: f64,
    pub entries_sent: u64,
    pub entries_received: u64,
    pub peer_digest: String,
    pub last_error: Option<String>,
}

/// How long a delta may go unanswered before it is sent again.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);
/// How soon an empty delta is computed again while the digests differ, and
/// the most it backs off to.
const RECHECK_FIRST: Duration = Duration::from_millis(100);
const RECHECK_MAX: Duration = Duration::from_secs(5);
/// How often the peer's summary is recorded as its acknowledgement of
/// tombstones (a controller write; tombstones can wait that long).
const ACK_EVERY: Duration = Duration::from_secs(5);

/// The local region's brokers' `__meta` API, with failover between them.
pub(crate) struct LocalMeta {
    shared: Arc<Shared>,
    conn: Option<AdminConn>,
    next: usize,
}

impl LocalMeta {
    pub(crate) fn new(shared: Arc<Shared>) -> LocalMeta {
        LocalMeta {
            shared,
            conn: None,
            next: 0,
        }
    }

    pub(crate) async fn call(
        &mut self,
        method: Method,
        path: &str,
        body: Bytes,
        json: bool,
    ) -> Result<Bytes, HttpError> {
        let addrs = self.shared.local_region().brokers_admin.clone();
        let mut last = None;
        for _ in 0..addrs.len().max(1) {
            if self.conn.as_ref().is_none_or(|c| !c.is_open()) {
                let addr = &addrs[self.next % addrs.len()];
                self.next += 1;
                match AdminConn::connect(addr).await {
                    Ok(c) => self.conn = Some(c),
                    Err(e) => {
                        last = Some(e);
                        continue;
                    }
                }
            }
            let c = self.conn.as_mut().expect("connected");
            match c.meta(method.clone(), path, body.clone(), json).await {
                Ok(b) => return Ok(b),
                // The broker answered: its answer stands.
                Err(e @ HttpError::Status { status: 400, .. }) => return Err(e),
                Err(e) => {
                    self.conn = None;
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| HttpError::Transport {
            addr: "-".into(),
            message: "no broker admin address configured".into(),
        }))
    }

    pub(crate) async fn summary(&mut self) -> Result<Bytes, HttpError> {
        self.call(Method::GET, "/v1/meta/summary", Bytes::new(), false)
            .await
    }

    async fn delta_for(&mut self, peer_summary: Bytes) -> Result<Bytes, HttpError> {
        self.call(Method::POST, "/v1/meta/delta", peer_summary, false)
            .await
    }

    async fn merge(&mut self, delta: Bytes) -> Result<(), HttpError> {
        self.call(Method::POST, "/v1/meta/merge", delta, false)
            .await
            .map(|_| ())
    }

    async fn ack(&mut self, peer_summary: Bytes) -> Result<(), HttpError> {
        self.call(Method::POST, "/v1/meta/ack", peer_summary, false)
            .await
            .map(|_| ())
    }

    async fn set_regions(&mut self, regions: &[String]) -> Result<(), HttpError> {
        let body = serde_json::to_vec(regions).expect("serializes");
        self.call(Method::POST, "/v1/meta/regions", body.into(), true)
            .await
            .map(|_| ())
    }

    /// Asks the brokers to re-create this region's copy of a topic from its
    /// global entry (a mirror deleted here).
    pub(crate) async fn reconcile(&mut self, topic_id: &str) -> Result<(), HttpError> {
        let path = format!("/v1/meta/reconcile/{topic_id}");
        self.call(Method::POST, &path, Bytes::new(), false)
            .await
            .map(|_| ())
    }

    /// Returns the local digest once it differs from `seen` (or after 10 s).
    async fn wait(&mut self, seen: &str) -> Result<String, HttpError> {
        let path = format!("/v1/meta/wait?digest={seen}&timeout_ms=10000");
        let b = self.call(Method::GET, &path, Bytes::new(), false).await?;
        let v: serde_json::Value = serde_json::from_slice(&b).unwrap_or_default();
        Ok(v["digest"].as_str().unwrap_or(seen).to_string())
    }
}

fn envelope(body: Body) -> Envelope {
    Envelope {
        id: 0,
        reply_to: 0,
        body: Some(body),
    }
}

async fn write(send: &mut quinn::SendStream, body: Body) -> Result<(), String> {
    let (frame, _) = proto::encode(&envelope(body), None);
    send.write_all(&frame).await.map_err(|e| e.to_string())
}

fn read_error(e: ReadError) -> String {
    match e {
        ReadError::Stream(e) => e,
        ReadError::Frame(e) => format!("malformed frame on the metadata stream: {e}"),
    }
}

fn digest_of(summary: &[u8]) -> String {
    Summary::decode(summary, &Limits::default())
        .map(|s| format!("{:016x}", s.digest))
        .unwrap_or_default()
}

impl Shared {
    pub(crate) fn meta_peer(&self, peer: &str, f: impl FnOnce(&mut MetaPeer)) {
        f(self
            .meta
            .lock()
            .unwrap()
            .entry(peer.to_string())
            .or_default());
    }

    pub fn meta_report(&self) -> BTreeMap<String, MetaPeer> {
        let now = Instant::now();
        let mut m = self.meta.lock().unwrap().clone();
        for p in m.values_mut() {
            p.lag_seconds = p
                .behind_since
                .map_or(0.0, |t| now.duration_since(t).as_secs_f64());
        }
        m
    }
}

/// The pushing side, on a link this region dialed.
pub(crate) async fn push(
    shared: Arc<Shared>,
    conn: quinn::Connection,
    peer: String,
) -> Result<(), String> {
    let mut local = LocalMeta::new(shared.clone());
    let regions: Vec<String> = shared
        .topology
        .regions
        .iter()
        .map(|r| r.name.clone())
        .collect();
    // The brokers must know every region before a peer's entries can be
    // merged (or acknowledged) there.
    let mut backoff = Duration::from_millis(100);
    while let Err(e) = local.set_regions(&regions).await {
        tracing::warn!(error = %e, "metadata-sync: cannot tell the brokers the topology's regions; retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    // Metadata goes before data whenever both wait to be sent.
    let _ = send.set_priority(1);
    let mut frames = FrameReader::new(recv);
    let own = local.summary().await.map_err(|e| e.to_string())?;
    write(&mut send, Body::MetaSummary(own)).await?;

    // A separate connection long-polls for local changes.
    let (digest_tx, mut digest_rx) = tokio::sync::watch::channel(String::new());
    let waiter = {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut w = LocalMeta::new(shared);
            let mut seen = String::from("0");
            loop {
                match w.wait(&seen).await {
                    Ok(d) => {
                        if d != seen {
                            seen = d.clone();
                            if digest_tx.send(d).is_err() {
                                return;
                            }
                        }
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(500)).await,
                }
            }
        })
    };
    let _stop_waiter = AbortOnDrop(waiter);
    shared.meta_peer(&peer, |p| {
        p.connected = true;
        p.last_error = None;
    });
    let mut peer_summary: Option<Bytes> = None;
    let mut sent_at: Option<Instant> = None;
    let mut last_ack = Instant::now() - ACK_EVERY;
    // The newest summary not yet recorded as the peer's acknowledgement: the
    // last one before a quiet spell must be recorded too, or tombstones it
    // covers would wait for the next change.
    let mut unacked: Option<Bytes> = None;
    // The long poll and the delta may be answered by different brokers, and
    // a broker's controller replica can be a moment behind another's: a
    // delta computed there may miss the change the poll announced, and no
    // later change may come to wake us. So while the peer's digest differs
    // from the newest local one and the delta came out empty, look again
    // (backing off: a peer that holds more than we do looks the same).
    let mut peer_digest = String::new();
    let mut recheck: Option<Duration> = None;
    loop {
        tokio::select! {
            frame = frames.next() => {
                let (env, _) = frame.map_err(read_error)?;
                match env.body {
                    Some(Body::MetaSummary(s)) => {
                        let d = digest_of(&s);
                        tracing::debug!(peer = %peer, digest = %d, "metadata-sync: the peer's summary");
                        peer_digest = d.clone();
                        shared.meta_peer(&peer, |p| p.peer_digest = d);
                        unacked = Some(s.clone());
                        peer_summary = Some(s);
                        sent_at = None;
                    }
                    _ => return Err("unexpected message on the metadata stream".into()),
                }
            }
            changed = digest_rx.changed() => {
                if changed.is_err() {
                    return Err("the local long poll stopped".into());
                }
                tracing::debug!(peer = %peer, digest = %*digest_rx.borrow(), waiting = sent_at.is_some(), "metadata-sync: local change");
            }
            _ = tokio::time::sleep_until((last_ack + ACK_EVERY).into()), if unacked.is_some() => {
                last_ack = Instant::now();
                let s = unacked.take().expect("guarded");
                if let Err(e) = local.ack(s.clone()).await {
                    tracing::debug!(error = %e, "metadata-sync: acknowledgement not recorded; retrying");
                    unacked = Some(s);
                }
                continue;
            }
            _ = tokio::time::sleep(recheck.unwrap_or_default()), if recheck.is_some() && sent_at.is_none() => {}
            _ = tokio::time::sleep(ANSWER_TIMEOUT), if sent_at.is_some() => {
                tracing::warn!(peer = %peer, "metadata-sync: no answer to a delta within {ANSWER_TIMEOUT:?}; sending again");
                sent_at = None;
            }
        }
        if sent_at.is_some() {
            continue;
        }
        let Some(s) = peer_summary.clone() else {
            continue;
        };
        let bytes = local.delta_for(s).await.map_err(|e| e.to_string())?;
        let delta = Delta::decode(&bytes, &Limits::default()).map_err(|e| e.to_string())?;
        let n = delta.entries.len() as u64;
        tracing::debug!(peer = %peer, entries = n, "metadata-sync: the peer lacks");
        shared.meta_peer(&peer, |p| {
            p.pending_entries = n;
            if n == 0 {
                p.behind_since = None;
            } else if p.behind_since.is_none() {
                p.behind_since = Some(Instant::now());
            }
        });
        recheck = next_recheck(recheck, n, &digest_rx.borrow(), &peer_digest);
        if n == 0 {
            continue;
        }
        write(&mut send, Body::MetaDelta(bytes)).await?;
        metrics::counter!("chronik_meta_sync_entries_total", "peer" => peer.clone(), "direction" => "sent")
            .increment(n);
        shared.meta_peer(&peer, |p| p.entries_sent += n);
        sent_at = Some(Instant::now());
    }
}

/// When to compute the delta again although nothing woke us: never after a
/// delta with entries (its answer will), nor once the peer's digest is the
/// newest local one; otherwise soon, then backing off.
fn next_recheck(
    prev: Option<Duration>,
    entries: u64,
    local_digest: &str,
    peer_digest: &str,
) -> Option<Duration> {
    if entries > 0 || local_digest == peer_digest {
        return None;
    }
    Some(prev.map_or(RECHECK_FIRST, |d| (d * 2).min(RECHECK_MAX)))
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The merging side, on a link the peer dialed: merges each delta through
/// the local controller and answers with the new summary.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    peer: String,
    first: Envelope,
    mut frames: FrameReader,
    mut send: quinn::SendStream,
) -> Result<(), String> {
    let mut local = LocalMeta::new(shared.clone());
    let mut next = Some(first);
    loop {
        let env = match next.take() {
            Some(env) => env,
            None => frames.next().await.map_err(read_error)?.0,
        };
        match env.body {
            Some(Body::MetaSummary(_)) => {}
            Some(Body::MetaDelta(d)) => {
                let n = Delta::decode(&d, &Limits::default())
                    .map(|d| d.entries.len() as u64)
                    .map_err(|e| {
                        tracing::error!(peer = %peer, error = %e, "metadata-sync: refusing a malformed delta from {peer}; closing the link");
                        format!("malformed metadata delta: {e}")
                    })?;
                loop {
                    match local.merge(d.clone()).await {
                        Ok(()) => break,
                        Err(HttpError::Status {
                            status: 400, body, ..
                        }) => {
                            tracing::error!(peer = %peer, error = %body.trim(), "metadata-sync: the brokers refused a delta from {peer}; closing the link");
                            return Err(format!("metadata delta refused: {}", body.trim()));
                        }
                        Err(e) => {
                            tracing::warn!(peer = %peer, error = %e, "metadata-sync: merge not written yet; retrying");
                            tokio::time::sleep(Duration::from_millis(500)).await;
                        }
                    }
                }
                metrics::counter!("chronik_meta_sync_entries_total", "peer" => peer.clone(), "direction" => "received")
                    .increment(n);
                shared.meta_peer(&peer, |p| p.entries_received += n);
            }
            _ => {
                tracing::error!(peer = %peer, "metadata-sync: unexpected message from {peer} on the metadata stream; closing the link");
                return Err("unexpected message on the metadata stream".into());
            }
        }
        let own = local.summary().await.map_err(|e| e.to_string())?;
        write(&mut send, Body::MetaSummary(own)).await?;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_empty_delta_while_the_digests_differ_is_computed_again_backing_off() {
        // In sync, or a delta on its way: nothing to look at again.
        assert_eq!(next_recheck(None, 0, "ab", "ab"), None);
        assert_eq!(next_recheck(Some(RECHECK_MAX), 3, "ab", "cd"), None);
        // The broker that computed the delta had not applied what the long
        // poll announced yet: look again soon, then less and less often.
        let mut d = next_recheck(None, 0, "ab", "cd");
        assert_eq!(d, Some(RECHECK_FIRST));
        for _ in 0..10 {
            d = next_recheck(d, 0, "ab", "cd");
        }
        assert_eq!(d, Some(RECHECK_MAX));
        assert_eq!(next_recheck(d, 0, "cd", "cd"), None);
    }
}
