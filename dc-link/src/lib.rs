//! dc-link: ships committed log batches between regions over QUIC, so every
//! mirror region holds each topic at the same offsets as its home region.
//!
//! One process per region. It dials every other region (the sending side,
//! `sender`) and accepts their links (the receiving side, `receiver`). What
//! travels is in `proto` (no I/O); lag bookkeeping in `lag` (no I/O).
//! The region's own brokers are reached through Kafka (`kafka`: metadata,
//! fetch, topic admin) and their admin HTTP API (`broker_http`: mirror
//! appends). See docs/dc-link.md.

pub mod actor;
pub mod auto_failover;
pub mod broker_http;
pub mod drain;
pub mod forward;
pub mod health;
pub mod kafka;
pub mod lag;
pub mod lease_link;
pub mod meta_sync;
pub mod proto;
mod settle_view;
pub use settle_view::view as settle_view;
mod receiver;
mod sender;
pub mod tls;
pub mod witness;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use chronik_topology::{DcLinkConfig, Faults, Region, TopicPolicy, Topology};
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::Notify;

use crate::broker_http::{encode_segment, AdminConn, HttpError};
use crate::kafka::ClusterView;
use crate::lag::{
    IncomingRow, LinkRow, LinkStats, PartitionLag, PartitionRow, PartitionState, ReceivedRow,
    Report,
};

#[derive(Debug, thiserror::Error)]
pub enum DcLinkError {
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("binding {what} {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("metrics: {0}")]
    Metrics(String),
    #[error("lease state: {0}")]
    LeaseState(String),
    #[error("{0}")]
    Config(String),
    #[error("the dc-link actor role of this region was taken by {by} (term {term}); this process stops so that nothing of its superseded term keeps running (restart it: it comes back as a standby)")]
    Superseded { by: String, term: u64 },
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// Keeps a repeated log line from flooding the log: the first passes, then
/// at most one per `every`, counting those held back in between.
#[derive(Debug)]
pub(crate) struct LogEvery {
    every: Duration,
    last: Option<Instant>,
    held: u64,
}

impl LogEvery {
    pub(crate) const fn new(every: Duration) -> LogEvery {
        LogEvery {
            every,
            last: None,
            held: 0,
        }
    }

    /// `Some(held)`: log now, mentioning `held` lines held back since the
    /// last one; `None`: stay quiet.
    pub(crate) fn check(&mut self, now: Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|t| now.duration_since(t) < self.every)
        {
            self.held += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.held))
    }
}

/// Writes one envelope as an uncompressed frame (handshakes, control).
pub(crate) async fn write_envelope(
    send: &mut quinn::SendStream,
    env: &proto::Envelope,
) -> Result<(), String> {
    send.write_all(&proto::encode(env, None).0)
        .await
        .map_err(|e| e.to_string())
}

/// Writes every envelope `rx` yields as a frame (zstd at `level`, if any),
/// in order, until the channel closes or the stream fails.
pub(crate) async fn write_frames(
    mut send: quinn::SendStream,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<proto::Envelope>,
    level: Option<i32>,
) -> Result<(), String> {
    while let Some(env) = rx.recv().await {
        let (frame, _) = proto::encode(&env, level);
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Envelopes from one QUIC receive stream.
pub(crate) struct FrameReader {
    recv: quinn::RecvStream,
    dec: proto::Decoder,
    buf: Vec<u8>,
}

pub(crate) enum ReadError {
    /// A corrupt frame: the stream cannot be trusted after it.
    Frame(proto::FrameError),
    /// The stream failed or the peer closed it.
    Stream(String),
}

impl std::fmt::Display for ReadError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ReadError::Frame(e) => write!(f, "corrupt frame: {e}"),
            ReadError::Stream(e) => f.write_str(e),
        }
    }
}

impl FrameReader {
    pub(crate) fn new(recv: quinn::RecvStream) -> FrameReader {
        FrameReader {
            recv,
            dec: proto::Decoder::default(),
            buf: vec![0u8; 256 << 10],
        }
    }

    /// The next envelope and its size on the wire.
    pub(crate) async fn next(&mut self) -> Result<(proto::Envelope, usize), ReadError> {
        loop {
            if let Some(x) = self.dec.next_frame().map_err(ReadError::Frame)? {
                return Ok(x);
            }
            let n = self
                .recv
                .read(&mut self.buf)
                .await
                .map_err(|e| ReadError::Stream(e.to_string()))?
                .ok_or_else(|| ReadError::Stream("the peer closed the stream".into()))?;
            self.dec.push(&self.buf[..n]);
        }
    }
}

/// A topic homed in this region, with its resolved policy.
#[derive(Debug, Clone)]
pub struct HomedTopic {
    pub name: String,
    /// Which incarnation of the name (nil if the broker gave none).
    pub id: uuid::Uuid,
    pub partitions: i32,
    pub replication_factor: i32,
    pub configs: BTreeMap<String, String>,
    pub policy: TopicPolicy,
}

/// A mirror topic here whose home fails over automatically
/// (`chronik.failover.auto`).
#[derive(Debug, Clone)]
pub struct AutoTopic {
    pub name: String,
    pub id: uuid::Uuid,
    pub home: String,
    pub timeout_ms: u64,
}

/// Per link: when last sampled, records and bytes sent then, and the
/// rates (records/s, bytes/s) over the last interval; forwarded batches
/// then and their rate.
type RateSample = (Instant, u64, u64, f64, f64, u64, f64);

/// (link, topic, partition).
type LinkPartition = (String, String, i32);

/// How long a QUIC handshake with a peer dc-link or the witness may take.
const DIAL_TIMEOUT: Duration = Duration::from_secs(3);

/// State shared by every task of the process.
pub struct Shared {
    pub region: String,
    pub topology: Topology,
    pub faults: Faults,
    endpoint: quinn::Endpoint,
    client_config: quinn::ClientConfig,
    forward_client_config: quinn::ClientConfig,
    view: Mutex<Option<ClusterView>>,
    admin_by_node: Mutex<BTreeMap<i32, String>>,
    homed: Mutex<Vec<HomedTopic>>,
    policy_errors: Mutex<BTreeMap<String, String>>,
    lag: Mutex<BTreeMap<(String, String, i32), PartitionLag>>,
    /// Receiving side: mirror partitions that are not taking data, by
    /// (link, topic, partition).
    incoming: Mutex<BTreeMap<LinkPartition, (PartitionState, String)>>,
    /// The last discovery that succeeded, and the last error.
    discovery: Mutex<(Option<Instant>, Option<String>)>,
    links: Mutex<BTreeMap<String, LinkStats>>,
    rates: Mutex<BTreeMap<String, RateSample>>,
    refresh: Notify,
    quorum_changed: Notify,
    /// metadata-sync, per peer region.
    meta: Mutex<BTreeMap<String, meta_sync::MetaPeer>>,
    /// Receiving side, per (link, topic, partition): the home high watermark
    /// the last chunk carried, when it arrived, and the mirror's durable end.
    received: Mutex<BTreeMap<LinkPartition, (i64, Instant, i64)>>,
    /// Discovery rounds started, and the deleting home topics seen in them.
    rounds: std::sync::atomic::AtomicU64,
    draining: Mutex<drain::Tracker>,
    /// Mirror topics here that fail over automatically.
    auto_topics: Mutex<Vec<AutoTopic>>,
    /// (region, topic id) -> how much that region's copy holds, and when it
    /// said so (`MirrorEnds`).
    peer_ends: Mutex<BTreeMap<(String, uuid::Uuid), (i64, Instant)>>,
    /// Which dc-link process of the region acts.
    pub actor: Arc<actor::ActorState>,
    /// This region's vote in the home-role lease (set once acting).
    voter: std::sync::OnceLock<Arc<lease_link::Voter>>,
    /// This region's holder side of the lease (set once started).
    lease: std::sync::OnceLock<Arc<lease_link::LeaseClient>>,
    /// Per peer region: woken when that peer dials us, so our own link to it
    /// reconnects at once instead of after its backoff (a region coming back
    /// learns the others' metadata, new homes included, sooner).
    peer_back: Mutex<BTreeMap<String, Arc<Notify>>>,
    /// Write forwarding: the streams to the home regions and their budgets.
    pub forwarding: forward::Forwarding,
}

impl Shared {
    pub fn local_region(&self) -> &Region {
        self.topology
            .region(&self.region)
            .expect("validated at load: this region is in the topology")
    }

    pub fn view(&self) -> Option<ClusterView> {
        self.view.lock().unwrap().clone()
    }

    pub fn refresh_soon(&self) {
        self.refresh.notify_one();
    }

    pub fn homed_topics(&self) -> Vec<HomedTopic> {
        self.homed.lock().unwrap().clone()
    }

    pub fn leader_addr(&self, topic: &str, partition: i32) -> Option<String> {
        self.view
            .lock()
            .unwrap()
            .as_ref()?
            .leader_addr(topic, partition)
            .map(str::to_string)
    }

    /// A connection to the admin listener of the partition's leader.
    pub async fn leader_admin(
        &self,
        view: &ClusterView,
        topic: &str,
        partition: i32,
    ) -> Result<AdminConn, HttpError> {
        let leader = view
            .topics
            .get(topic)
            .and_then(|t| t.leaders.get(partition as usize).copied())
            .filter(|l| *l >= 0);
        let Some(leader) = leader else {
            return Err(HttpError::NotLeader {
                addr: "metadata".into(),
                leader: None,
            });
        };
        let known = self.admin_by_node.lock().unwrap().get(&leader).cloned();
        let addr = match known {
            Some(a) => a,
            None => {
                self.learn_admin_addresses().await;
                self.admin_by_node
                    .lock()
                    .unwrap()
                    .get(&leader)
                    .cloned()
                    .ok_or_else(|| HttpError::Transport {
                        addr: format!("broker {leader}"),
                        message: "no admin address in the topology answers as this broker".into(),
                    })?
            }
        };
        AdminConn::connect(&addr).await
    }

    /// Asks each configured broker admin address which broker it is.
    async fn learn_admin_addresses(&self) {
        for addr in &self.local_region().brokers_admin {
            if let Ok(mut c) = AdminConn::connect(addr).await {
                if let Ok(id) = c.node_id().await {
                    self.admin_by_node.lock().unwrap().insert(id, addr.clone());
                }
            }
        }
    }

    fn peer_back(&self, peer: &str) -> Arc<Notify> {
        self.peer_back
            .lock()
            .unwrap()
            .entry(peer.to_string())
            .or_default()
            .clone()
    }

    fn link_stats(&self, link: &str, f: impl FnOnce(&mut LinkStats)) {
        f(self
            .links
            .lock()
            .unwrap()
            .entry(link.to_string())
            .or_default())
    }

    fn with_lag(&self, link: &str, topic: &str, p: i32, f: impl FnOnce(&mut PartitionLag)) {
        let mut lag = self.lag.lock().unwrap();
        f(lag
            .entry((link.to_string(), topic.to_string(), p))
            .or_default())
    }

    fn observe_high_watermark(&self, link: &str, topic: &str, p: i32, hw: i64) {
        self.with_lag(link, topic, p, |l| {
            l.observe_high_watermark(hw, Instant::now())
        });
    }

    #[allow(clippy::too_many_arguments)]
    fn shipped(&self, link: &str, topic: &str, p: i32, base: i64, next: i64, ts: i64, bytes: u64) {
        self.with_lag(link, topic, p, |l| l.shipped(base, next, ts, bytes));
    }

    fn acked(&self, link: &str, topic: &str, p: i32, offset: i64, now: Instant) {
        self.with_lag(link, topic, p, |l| l.acked(offset, now));
        if self
            .homed
            .lock()
            .unwrap()
            .iter()
            .any(|t| t.name == topic && t.policy.global_quorum)
        {
            self.quorum_changed.notify_one();
        }
    }

    /// The receiving side's view of a sending link's partition, from its
    /// `PartitionStatus` messages.
    fn set_partition_state(
        &self,
        link: &str,
        topic: &str,
        p: i32,
        state: PartitionState,
        error: Option<String>,
    ) {
        self.with_lag(link, topic, p, |l| l.set_state(state, error));
    }

    /// Receiving side: a mirror partition stopped (`Some`) or takes data.
    fn set_incoming(&self, link: &str, topic: &str, p: i32, st: Option<(PartitionState, String)>) {
        let key = (link.to_string(), topic.to_string(), p);
        let mut m = self.incoming.lock().unwrap();
        match st {
            Some(st) => {
                m.insert(key, st);
            }
            None => {
                m.remove(&key);
            }
        }
    }

    /// Forgets a link's stopped partitions (its session ended); returns them.
    fn clear_incoming(&self, link: &str) -> Vec<(String, i32)> {
        let mut m = self.incoming.lock().unwrap();
        let gone: Vec<_> = m.keys().filter(|k| k.0 == link).cloned().collect();
        gone.into_iter()
            .map(|k| {
                m.remove(&k);
                (k.1, k.2)
            })
            .collect()
    }

    /// Readiness, from the last discovery and the links' states.
    /// Dials a voter or peer region: the `which`-th of its dc-link
    /// addresses (wrapping; the witness has one), bounded so that a dead
    /// primary does not hold up its standby for a whole idle timeout.
    pub(crate) async fn dial(
        &self,
        name: &str,
        which: usize,
    ) -> Result<(quinn::Connection, SocketAddr), String> {
        self.dial_with(name, which, self.client_config.clone())
            .await
    }

    /// Dials a peer region for forwarded produces (`forward::run_link`),
    /// with `cross_dc.forward_congestion`.
    pub(crate) async fn dial_forward(
        &self,
        name: &str,
        which: usize,
    ) -> Result<(quinn::Connection, SocketAddr), String> {
        self.dial_with(name, which, self.forward_client_config.clone())
            .await
    }

    async fn dial_with(
        &self,
        name: &str,
        which: usize,
        config: quinn::ClientConfig,
    ) -> Result<(quinn::Connection, SocketAddr), String> {
        let addrs = self.topology.voter_addrs(name);
        if addrs.is_empty() {
            return Err(format!("{name} is not in the topology"));
        }
        let addr: SocketAddr = addrs[which % addrs.len()]
            .parse()
            .map_err(|e| format!("{e}"))?;
        let connecting = self
            .endpoint
            .connect_with(config, addr, &crate::tls::region_dns_name(name))
            .map_err(|e| e.to_string())?;
        let conn = tokio::time::timeout(DIAL_TIMEOUT, connecting)
            .await
            .map_err(|_| {
                format!(
                    "no answer from {name} at {addr} within {} s",
                    DIAL_TIMEOUT.as_secs()
                )
            })?
            .map_err(|e| format!("connecting to {name} at {addr}: {e}"))?;
        Ok((conn, addr))
    }

    /// Why this process does not act for the region (a standby's answer).
    pub fn not_acting(&self) -> String {
        if self.actor.is_active() {
            return "this dc-link cannot renew its role with this region's brokers just now".into();
        }
        match self.actor.holder() {
            Some(h) => format!("standby: the dc-link acting for {} is {h}", self.region),
            None => format!(
                "standby: claiming the dc-link role of {} (are its brokers reachable?)",
                self.region
            ),
        }
    }

    fn readiness(&self) -> Result<(), Vec<String>> {
        if !self.actor.is_active() {
            return Err(vec![self.not_acting()]);
        }
        let (discovered, discovery_error) = self.discovery.lock().unwrap().clone();
        let must_ship_to = self
            .homed
            .lock()
            .unwrap()
            .iter()
            .flat_map(|t| t.policy.mirrors.iter().cloned())
            .filter(|m| *m != self.region)
            .collect();
        let prefix = format!("{}->", self.region);
        let links = self
            .links
            .lock()
            .unwrap()
            .iter()
            .filter_map(|(name, s)| {
                let peer = name.strip_prefix(&prefix)?;
                Some((
                    peer.to_string(),
                    health::LinkHealth {
                        connected: s.connected,
                        down_since: s.down_since,
                        last_error: s.last_error.clone(),
                    },
                ))
            })
            .collect();
        let rest = health::readiness(&health::Observed {
            now: Instant::now(),
            discovered,
            discovery_error,
            must_ship_to,
            links,
        });
        if self.actor.may_act() {
            return rest;
        }
        let mut why = vec![self.not_acting()];
        why.extend(rest.err().unwrap_or_default());
        Err(why)
    }

    /// Receiving side: a chunk carried the home's high watermark.
    fn home_seen(&self, link: &str, topic: &str, p: i32, hw: i64) {
        let mut r = self.received.lock().unwrap();
        let e = r
            .entry((link.to_string(), topic.to_string(), p))
            .or_insert((hw, Instant::now(), 0));
        // The latest, not the largest: a failback can cut the home's log
        // back, and chunks of one link arrive in order.
        e.0 = hw;
        e.1 = Instant::now();
    }

    /// Sending side: the home high watermarks of every partition mirrored
    /// to `peer`, as last read.
    fn home_watermarks_for(&self, peer: &str) -> Vec<proto::Watermark> {
        let link = format!("{}->{peer}", self.region);
        self.lag
            .lock()
            .unwrap()
            .iter()
            .filter(|((l, _, _), lag)| *l == link && lag.source_high_watermark > 0)
            .map(|((_, t, p), lag)| proto::Watermark {
                topic: t.clone(),
                partition: *p,
                high_watermark: lag.source_high_watermark,
            })
            .collect()
    }

    /// Receiving side: how much this region's copy of `topic` (homed in
    /// `home`) holds, summed over its partitions.
    fn mirror_total(&self, home: &str, topic: &str) -> i64 {
        let link = format!("{home}->{}", self.region);
        self.received
            .lock()
            .unwrap()
            .iter()
            .filter(|((l, t, _), _)| *l == link && t == topic)
            .map(|(_, (_, _, end))| *end)
            .sum()
    }

    /// Receiving side: where the mirror partition ends when a home offers
    /// its topic (a session start, a new home): exactly that, whatever was
    /// recorded before (a failback may have cut the copy back, and writes
    /// this region took as the home came through no chunk).
    fn mirror_end_is(&self, link: &str, topic: &str, p: i32, end: i64) {
        self.received
            .lock()
            .unwrap()
            .entry((link.to_string(), topic.to_string(), p))
            .or_insert((0, Instant::now(), end))
            .2 = end;
    }

    /// Receiving side: the mirror partition's durable end after an append
    /// (appends of one partition may report out of order).
    fn mirror_end(&self, link: &str, topic: &str, p: i32, end: i64) {
        let mut r = self.received.lock().unwrap();
        let e = r
            .entry((link.to_string(), topic.to_string(), p))
            .or_insert((0, Instant::now(), end));
        e.2 = e.2.max(end);
    }

    fn policy_error(&self, topic: &str, message: String) {
        self.policy_errors
            .lock()
            .unwrap()
            .insert(topic.to_string(), message);
    }

    /// Per global_quorum partition, and per partition of a topic with an
    /// RPO: each mirror region's durable end, and
    /// how many regions must reach an offset for it to count.
    fn quorum_positions(&self) -> BTreeMap<(String, i32), (BTreeMap<String, i64>, usize)> {
        let homed = self.homed.lock().unwrap().clone();
        let lag = self.lag.lock().unwrap();
        let want = self.topology.cross_dc.global_quorum_regions as usize;
        let mut out = BTreeMap::new();
        // global_quorum acks wait on these; a topic with an RPO is held (or
        // measured) against them.
        let rpo = |t: &HomedTopic| {
            t.configs.contains_key("chronik.rpo.ms")
                || t.configs
                    .get("chronik.rpo.enforce")
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        };
        for t in homed.iter().filter(|t| t.policy.global_quorum || rpo(t)) {
            let required = if want == 0 {
                t.policy.mirrors.len()
            } else {
                want.min(t.policy.mirrors.len())
            };
            for p in 0..t.partitions {
                let mut acks = BTreeMap::new();
                for m in &t.policy.mirrors {
                    let link = format!("{}->{m}", self.region);
                    if let Some(l) = lag.get(&(link, t.name.clone(), p)) {
                        acks.insert(m.clone(), l.acked);
                    }
                }
                out.insert((t.name.clone(), p), (acks, required));
            }
        }
        out
    }

    /// The lag report (`chronik ctl lag`, `/v1/lag`).
    pub fn report(&self) -> Report {
        let now = Instant::now();
        let now_ms = now_ms();
        let partitions = self
            .lag
            .lock()
            .unwrap()
            .iter()
            .map(|((link, topic, p), l)| PartitionRow {
                link: link.clone(),
                topic: topic.clone(),
                partition: *p,
                source_high_watermark: l.source_high_watermark,
                mirror_log_end: l.acked,
                lag_records: l.records(),
                lag_bytes: l.bytes(),
                lag_seconds: l.seconds(now, now_ms),
                state: l.state,
                error: l.error.clone(),
            })
            .collect();
        let incoming = self
            .incoming
            .lock()
            .unwrap()
            .iter()
            .map(|((link, topic, p), (state, error))| IncomingRow {
                link: link.clone(),
                topic: topic.clone(),
                partition: *p,
                state: *state,
                error: error.clone(),
            })
            .collect();
        let rates = self.rates.lock().unwrap().clone();
        let links = self
            .links
            .lock()
            .unwrap()
            .iter()
            .map(|(link, s)| {
                let (from, to) = link.split_once("->").unwrap_or((link, ""));
                let (r, b, f) = rates.get(link).map_or((0.0, 0.0, 0.0), |x| (x.3, x.4, x.6));
                LinkRow {
                    link: link.clone(),
                    from: from.to_string(),
                    to: to.to_string(),
                    stats: s.clone(),
                    compression_ratio: s.compression_ratio(),
                    throughput_records_per_sec: r,
                    throughput_bytes_per_sec: b,
                    forwarded_batches_per_sec: f,
                }
            })
            .collect();
        let received = self
            .received
            .lock()
            .unwrap()
            .iter()
            .map(|(key, (hw, seen, end))| {
                ReceivedRow::new(
                    key.clone(),
                    *hw,
                    *end,
                    now.saturating_duration_since(*seen).as_millis() as u64,
                )
            })
            .collect();
        Report {
            region: self.region.clone(),
            links,
            partitions,
            policy_errors: self.policy_errors.lock().unwrap().clone(),
            incoming,
            received,
        }
    }

    fn sample_rates(&self) {
        let links = self.links.lock().unwrap().clone();
        let mut rates = self.rates.lock().unwrap();
        let now = Instant::now();
        for (link, s) in links {
            let e = rates.entry(link).or_insert((
                now,
                s.records_sent,
                s.raw_bytes_sent,
                0.0,
                0.0,
                s.forwarded_batches,
                0.0,
            ));
            let dt = now.duration_since(e.0).as_secs_f64();
            if dt >= 1.0 {
                *e = (
                    now,
                    s.records_sent,
                    s.raw_bytes_sent,
                    (s.records_sent - e.1) as f64 / dt,
                    (s.raw_bytes_sent - e.2) as f64 / dt,
                    s.forwarded_batches,
                    (s.forwarded_batches - e.5) as f64 / dt,
                );
            }
        }
    }

    /// Re-reads the region's topics (see [`Shared::discover_once`]) and
    /// records the outcome for readiness.
    async fn discover(&self) -> Result<(), String> {
        let r = self.discover_once().await;
        let mut d = self.discovery.lock().unwrap();
        match &r {
            Ok(()) => *d = (Some(Instant::now()), None),
            Err(e) => d.1 = Some(e.clone()),
        }
        r
    }

    /// Re-reads the region's topics: which are homed here, and their policy.
    async fn discover_once(&self) -> Result<(), String> {
        self.rounds
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let local = self.local_region();
        let view = kafka::metadata(&local.bootstrap, None)
            .await
            .map_err(|e| e.to_string())?;
        let names: Vec<String> = view
            .topics
            .iter()
            .filter(|(n, t)| t.error == 0 && !n.starts_with("__"))
            .map(|(n, _)| n.clone())
            .collect();
        let mut c = kafka::connect_any(&local.bootstrap)
            .await
            .map_err(|e| e.to_string())?;
        let configs = if names.is_empty() {
            BTreeMap::new()
        } else {
            kafka::topic_configs(&mut c, &names)
                .await
                .map_err(|e| e.to_string())?
        };
        let mut homed = Vec::new();
        let mut auto = Vec::new();
        let mut errors = BTreeMap::new();
        let mut home_of: BTreeMap<String, String> = BTreeMap::new();
        for name in names {
            let cfg = configs.get(&name).cloned().unwrap_or_default();
            let policy = self.topology.policy(
                &self.region,
                cfg.get("chronik.home.region").map(String::as_str),
                cfg.get("chronik.mirror.regions").map(String::as_str),
                cfg.get("chronik.replication.mode").map(String::as_str),
            );
            if let Ok(p) = &policy {
                home_of.insert(name.clone(), p.home.clone());
            }
            match policy {
                Ok(p) if p.home == self.region => {
                    let t = &view.topics[&name];
                    homed.push(HomedTopic {
                        id: t.id,
                        partitions: t.leaders.len() as i32,
                        replication_factor: t.replication_factor,
                        name,
                        configs: cfg,
                        policy: p,
                    });
                }
                Ok(p) => {
                    let on = cfg
                        .get("chronik.failover.auto")
                        .is_some_and(|v| v.eq_ignore_ascii_case("true"));
                    if on && p.mirrors.contains(&self.region) {
                        auto.push(AutoTopic {
                            id: view.topics[&name].id,
                            home: p.home,
                            timeout_ms: cfg
                                .get("chronik.failover.timeout.ms")
                                .and_then(|v| v.parse().ok())
                                .unwrap_or(10_000),
                            name,
                        });
                    }
                }
                Err(e) => {
                    errors.insert(name, e.to_string());
                }
            }
        }
        *self.auto_topics.lock().unwrap() = auto;
        // What was received for topics no longer in the region goes, and
        // what came from a region that is no longer the topic's home: a
        // failover moved it (what the old home said then would otherwise
        // count as data at risk forever).
        self.received.lock().unwrap().retain(|(link, t, _), _| {
            let from = link.split("->").next().unwrap_or_default();
            match home_of.get(t) {
                Some(home) => home == from,
                None => configs.contains_key(t) || view.topics.contains_key(t),
            }
        });
        for (t, e) in &errors {
            if !self.policy_errors.lock().unwrap().contains_key(t) {
                tracing::error!(topic = %t, error = %e, "invalid replication policy; not mirroring this topic");
            }
        }
        *self.policy_errors.lock().unwrap() = errors;
        // Shipping state of topics no longer homed here goes: it described
        // another tenure (a switchover or failover moved the home), and a
        // later return starts from what the mirrors hold then.
        self.lag
            .lock()
            .unwrap()
            .retain(|(_, t, _), _| homed.iter().any(|h| &h.name == t));
        self.observe_home_watermarks(&view, &homed).await;
        *self.homed.lock().unwrap() = homed;
        *self.view.lock().unwrap() = Some(view);
        Ok(())
    }

    /// Home topics deleted while mirrored: once this dc-link has shipped
    /// them to every mirror region it can reach, the brokers delete them
    /// (see [`drain`]).
    async fn drain_deleted(&self, local: &mut meta_sync::LocalMeta) -> Result<(), HttpError> {
        let body = local
            .call(
                hyper::Method::GET,
                "/v1/deleting",
                bytes::Bytes::new(),
                false,
            )
            .await?;
        let listed: drain::DeletingList =
            serde_json::from_slice(&body).map_err(|e| HttpError::Transport {
                addr: "/v1/deleting".into(),
                message: format!("bad JSON: {e}"),
            })?;
        let round = self.rounds.load(std::sync::atomic::Ordering::Acquire);
        let settled = self.draining.lock().unwrap().settled(&listed.topics, round);
        let homed = self.homed_topics();
        for d in settled {
            let done = match homed.iter().find(|t| t.name == d.name && t.id == d.id) {
                // Not shipped from here: nothing to wait for.
                None => true,
                Some(t) => {
                    let links = self.links.lock().unwrap();
                    let lag = self.lag.lock().unwrap();
                    drain::drained(
                        t.partitions,
                        &t.policy.mirrors,
                        |m| {
                            links
                                .get(&format!("{}->{m}", self.region))
                                .is_some_and(|l| l.connected)
                        },
                        |m, p| {
                            lag.get(&(format!("{}->{m}", self.region), t.name.clone(), p))
                                .map(|l| drain::Shipped {
                                    home_end: l.source_high_watermark,
                                    acked: l.acked,
                                    state: l.state,
                                })
                        },
                    )
                }
            };
            if !done {
                continue;
            }
            let path = format!("/v1/deleting/{}?id={}", encode_segment(&d.name), d.id);
            match local
                .call(hyper::Method::POST, &path, bytes::Bytes::new(), false)
                .await
            {
                Ok(_) => {
                    tracing::info!(topic = %d.name, id = %d.id, "deleted home topic drained to its mirrors; the brokers delete it now")
                }
                Err(e) => {
                    tracing::warn!(topic = %d.name, error = %e, "reporting a drained topic failed; retrying")
                }
            }
        }
        Ok(())
    }

    /// Lag must stay visible while a link is down (nothing is fetched then),
    /// so the home high watermarks are also read here, once a second.
    async fn observe_home_watermarks(&self, view: &ClusterView, homed: &[HomedTopic]) {
        let mut by_leader: BTreeMap<String, Vec<(String, i32)>> = BTreeMap::new();
        for t in homed.iter().filter(|t| !t.policy.mirrors.is_empty()) {
            for p in 0..t.partitions {
                if let Some(addr) = view.leader_addr(&t.name, p) {
                    by_leader
                        .entry(addr.to_string())
                        .or_default()
                        .push((t.name.clone(), p));
                }
            }
        }
        let now = Instant::now();
        for (addr, parts) in by_leader {
            let Ok(mut c) = kafka::Conn::connect(&addr).await else {
                continue;
            };
            let Ok(hws) = kafka::high_watermarks(&mut c, &parts).await else {
                continue;
            };
            for t in homed {
                for m in &t.policy.mirrors {
                    let link = format!("{}->{m}", self.region);
                    for p in 0..t.partitions {
                        if let Some(hw) = hws.get(&(t.name.clone(), p)) {
                            self.with_lag(&link, &t.name, p, |l| {
                                l.observe_high_watermark(*hw, now)
                            });
                        }
                    }
                }
            }
        }
    }
}

/// QUIC transport sized for the configured bandwidth-delay product, with
/// BBR: loss-based congestion control (NewReno, Cubic) collapses at WAN
/// loss rates (1% loss at 100 ms allows ~1.5 Mbit/s by the Mathis bound).
fn transport(
    topo: &Topology,
    congestion: chronik_topology::Congestion,
    initial_window: Option<u64>,
) -> quinn::TransportConfig {
    let bdp = topo.cross_dc.bdp_bytes().max(4 << 20);
    let stream_window = (2 * bdp).min((1u64 << 30) - 1);
    let mut t = quinn::TransportConfig::default();
    t.stream_receive_window(quinn::VarInt::from_u64(stream_window).expect("bounded"))
        .receive_window(quinn::VarInt::from_u64(2 * stream_window).expect("bounded"))
        .send_window(2 * stream_window)
        .initial_rtt(Duration::from_millis(topo.cross_dc.link_rtt_ms as u64))
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(
            quinn::IdleTimeout::try_from(Duration::from_millis(
                topo.cross_dc.idle_timeout_ms as u64,
            ))
            .expect("validated: at most 600 s"),
        ))
        .congestion_controller_factory(match congestion {
            chronik_topology::Congestion::Bbr => {
                let mut c = quinn::congestion::BbrConfig::default();
                if let Some(w) = initial_window {
                    c.initial_window(w);
                }
                Arc::new(c)
            }
            chronik_topology::Congestion::Cubic => {
                let mut c = quinn::congestion::CubicConfig::default();
                if let Some(w) = initial_window {
                    c.initial_window(w);
                }
                Arc::new(c)
            }
        });
    t
}

/// A UDP socket with kernel buffers large enough for a bandwidth-delay
/// product's worth of bursts (the kernel caps them at rmem_max/wmem_max).
fn udp_socket(addr: SocketAddr, bytes: usize) -> std::io::Result<std::net::UdpSocket> {
    let domain = socket2::Domain::for_address(addr);
    let s = socket2::Socket::new(domain, socket2::Type::DGRAM, Some(socket2::Protocol::UDP))?;
    let _ = s.set_recv_buffer_size(bytes);
    let _ = s.set_send_buffer_size(bytes);
    s.bind(&addr.into())?;
    Ok(s.into())
}

/// Runs the dc-link until `shutdown` resolves.
pub async fn run(
    cfg: DcLinkConfig,
    topo: Topology,
    metrics: PrometheusHandle,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DcLinkError> {
    let region = topo
        .region(&cfg.region)
        .cloned()
        .expect("validated at load");
    let identity = tls::Identity::load(&topo.tls.ca, &region.cert, &region.key)?;
    let transport_config = Arc::new(transport(&topo, topo.cross_dc.congestion, None));
    let server_config = identity.server_config(transport_config.clone())?;
    let client_config = identity.client_config(transport_config)?;
    // The server side's congestion control is the data link's: forwarded
    // produces flow from the dialer, which picks its own.
    // A forwarded produce is a burst of up to a bandwidth-delay product once
    // per round trip, after which the connection is app-limited and its
    // window does not grow: start it at the configured BDP (bounded) rather
    // than ten packets, so a burst goes out in one round trip.
    let forward_window = topo.cross_dc.bdp_bytes().clamp(1 << 20, 2 << 20);
    let forward_client_config = identity.client_config(Arc::new(transport(
        &topo,
        topo.cross_dc.forward_congestion,
        Some(forward_window),
    )))?;
    let listen = cfg.listen_addr(&topo);
    let buf = (topo.cross_dc.bdp_bytes() as usize).clamp(4 << 20, 64 << 20);
    let socket = udp_socket(listen, buf).map_err(|source| DcLinkError::Bind {
        what: "QUIC",
        addr: listen,
        source,
    })?;
    let endpoint = quinn::Endpoint::new(
        quinn::EndpointConfig::default(),
        Some(server_config),
        socket,
        Arc::new(quinn::TokioRuntime),
    )
    .map_err(|source| DcLinkError::Bind {
        what: "QUIC",
        addr: listen,
        source,
    })?;
    let admin = tokio::net::TcpListener::bind(cfg.admin)
        .await
        .map_err(|source| DcLinkError::Bind {
            what: "admin",
            addr: cfg.admin,
            source,
        })?;
    let forward_addr = cfg
        .forward_listen
        .unwrap_or_else(|| SocketAddr::new(cfg.admin.ip(), 0));
    let forward_listener = tokio::net::TcpListener::bind(forward_addr)
        .await
        .map_err(|source| DcLinkError::Bind {
            what: "forward",
            addr: forward_addr,
            source,
        })?;
    let actor = Arc::new(actor::ActorState::new(
        listen.to_string(),
        region.brokers_admin.clone(),
    ));
    let shared = Arc::new(Shared {
        region: cfg.region.clone(),
        topology: topo.clone(),
        faults: cfg.faults.clone(),
        endpoint: endpoint.clone(),
        client_config,
        forward_client_config,
        view: Mutex::new(None),
        admin_by_node: Mutex::new(BTreeMap::new()),
        homed: Mutex::new(Vec::new()),
        policy_errors: Mutex::new(BTreeMap::new()),
        lag: Mutex::new(BTreeMap::new()),
        incoming: Mutex::new(BTreeMap::new()),
        discovery: Mutex::new((None, None)),
        links: Mutex::new(BTreeMap::new()),
        rates: Mutex::new(BTreeMap::new()),
        refresh: Notify::new(),
        quorum_changed: Notify::new(),
        meta: Mutex::new(BTreeMap::new()),
        received: Default::default(),
        rounds: Default::default(),
        draining: Default::default(),
        auto_topics: Default::default(),
        peer_ends: Default::default(),
        actor: actor.clone(),
        voter: Default::default(),
        lease: Default::default(),
        peer_back: Default::default(),
        forwarding: Default::default(),
    });
    if let Ok(a) = forward_listener.local_addr() {
        let _ = shared.forwarding.listen.set(a);
    }
    tracing::info!(region = %cfg.region, quic = %listen, admin = %cfg.admin, forward = ?shared.forwarding.listen.get(), "dc-link started");

    let mut tasks = tokio::task::JoinSet::new();
    // The admin API and the QUIC listener answer at once, a standby's too
    // (it refuses connections, so peers move on to the active process).
    let app = axum::Router::new()
        .route("/metrics", get(render_metrics))
        .route("/v1/lag", get(lag_json))
        .route("/v1/meta", get(meta_json))
        .route("/v1/lease", get(lease_json))
        .route("/v1/actor", get(actor_json))
        .route("/v1/promote", axum::routing::post(promote))
        .route("/health/live", get(|| async { "live\n" }))
        .route("/health/ready", get(ready))
        .with_state((shared.clone(), metrics))
        .layer(axum::middleware::from_fn(broker_http::require_token));
    tasks.spawn(async move {
        if let Err(e) = axum::serve(admin, app).await {
            tracing::warn!(error = %e, "admin listener stopped");
        }
    });

    let (became_tx, became_rx) = tokio::sync::oneshot::channel();
    let mut role = tokio::spawn({
        let actor = actor.clone();
        async move { actor.run(became_tx).await }
    });
    tokio::pin!(shutdown);
    let stop = |tasks: &mut tokio::task::JoinSet<()>| {
        tracing::info!("dc-link stopping");
        endpoint.close(0u32.into(), b"shutting down");
        tasks.abort_all();
    };
    let superseded = |s: Result<actor::Superseded, tokio::task::JoinError>| match s {
        Ok(s) => DcLinkError::Superseded {
            by: s.by,
            term: s.term,
        },
        Err(e) => DcLinkError::Config(format!("the dc-link actor task failed: {e}")),
    };
    tracing::info!(me = %actor.me(), "dc-link actor: claiming the role for {} (or standing by)", cfg.region);
    let stored = tokio::select! {
        _ = &mut shutdown => {
            role.abort();
            stop(&mut tasks);
            return Ok(());
        }
        s = &mut role => {
            stop(&mut tasks);
            return Err(superseded(s));
        }
        b = became_rx => match b {
            Ok(b) => b,
            Err(_) => {
                stop(&mut tasks);
                return Err(superseded(role.await));
            }
        },
    };
    actor.acting();
    let voter = Arc::new(
        acting_voter(&cfg, &topo, &actor, stored)
            .await
            .map_err(DcLinkError::LeaseState)?,
    );
    let _ = shared.voter.set(voter.clone());
    let lease = lease_link::start(shared.clone(), voter, &mut tasks);
    let _ = shared.lease.set(lease);
    {
        let shared = shared.clone();
        tasks.spawn(async move {
            let mut local = meta_sync::LocalMeta::new(shared.clone());
            loop {
                if let Err(e) = shared.discover().await {
                    tracing::warn!(error = %e, "cannot read this region's topics");
                } else if let Err(e) = shared.drain_deleted(&mut local).await {
                    tracing::warn!(error = %e, "cannot read the home topics being deleted");
                }
                shared.sample_rates();
                tokio::select! {
                    _ = shared.refresh.notified() => tokio::time::sleep(Duration::from_millis(100)).await,
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                }
            }
        });
    }
    {
        let shared = shared.clone();
        tasks.spawn(async move {
            while let Some(incoming) = shared.endpoint.accept().await {
                let shared = shared.clone();
                tokio::spawn(async move {
                    match incoming.await {
                        Ok(conn) => receiver::serve(shared, conn).await,
                        Err(e) => tracing::warn!(error = %e, "incoming dc-link handshake failed (untrusted certificate?)"),
                    }
                });
            }
        });
    }
    let peers: BTreeSet<String> = topo
        .regions
        .iter()
        .map(|r| r.name.clone())
        .filter(|r| *r != cfg.region)
        .collect();
    for peer in peers {
        tasks.spawn(sender::run_link(shared.clone(), peer.clone()));
        tasks.spawn(forward::run_link(shared.clone(), peer.clone()));
        tasks.spawn(settle_view::keep_brokers_told(shared.clone(), peer));
    }
    tasks.spawn(sender::report_quorum_acks(shared.clone()));
    tasks.spawn(forward::brokers::serve(shared.clone(), forward_listener));
    tokio::select! {
        _ = &mut shutdown => {
            role.abort();
            stop(&mut tasks);
            Ok(())
        }
        s = &mut role => {
            let e = superseded(s);
            tracing::error!(error = %e, "dc-link actor role lost");
            stop(&mut tasks);
            Err(e)
        }
    }
}

/// The vote of the process now acting for the region: the promotions kept
/// with the role, plus any a dc-link of an older build kept in its
/// `state_dir` (copied into the controller once).
async fn acting_voter(
    cfg: &DcLinkConfig,
    topo: &Topology,
    actor: &Arc<actor::ActorState>,
    stored: serde_json::Value,
) -> Result<lease_link::Voter, String> {
    let mut kept: Vec<lease_link::StoredPromotion> = if stored.is_null() {
        Vec::new()
    } else {
        serde_json::from_value(stored)
            .map_err(|e| format!("promotions kept by the brokers: {e}"))?
    };
    if let Some(dir) = &cfg.state_dir {
        let old = lease_link::read_promotions_file(dir)?;
        let missing: Vec<_> = old.into_iter().filter(|p| !kept.contains(p)).collect();
        if !missing.is_empty() {
            kept.extend(missing);
            actor
                .keep_promotions(&serde_json::to_value(&kept).expect("json"))
                .await
                .map_err(|e| {
                    format!(
                        "copying {}/promotions.json to the brokers: {e}",
                        dir.display()
                    )
                })?;
            tracing::warn!(dir = %dir.display(), "lease: promotions of an older build copied to this region's brokers");
        }
    }
    lease_link::Voter::new(
        &cfg.region,
        lease_link::lease_config(topo),
        kept,
        lease_link::PromotionStore::Controller(actor.clone()),
    )
}

type AppState = (Arc<Shared>, PrometheusHandle);

async fn meta_json(State((s, _)): State<AppState>) -> impl IntoResponse {
    axum::Json(serde_json::json!({"region": s.region, "peers": s.meta_report()}))
}

async fn actor_json(State((s, _)): State<AppState>) -> impl IntoResponse {
    axum::Json(s.actor.report())
}

async fn lease_json(State((s, _)): State<AppState>) -> impl IntoResponse {
    let regions: Vec<String> = s.topology.regions.iter().map(|r| r.name.clone()).collect();
    match s.lease.get() {
        Some(l) => axum::Json(l.report(&regions)),
        None => axum::Json(serde_json::json!({"error": s.not_acting(), "actor": s.actor.report()})),
    }
}

/// `POST /v1/promote?topic_id=&from=&epoch=`: asks every voter to agree
/// that the topic's home moves here (a failover). Answers each voter's
/// reply and whether a majority agreed.
async fn promote(
    State((s, _)): State<AppState>,
    axum::extract::RawQuery(q): axum::extract::RawQuery,
) -> (StatusCode, axum::Json<serde_json::Value>) {
    let q = q.unwrap_or_default();
    let param = |k: &str| {
        q.split('&')
            .filter_map(|kv| kv.split_once('='))
            .find(|(key, _)| *key == k)
            .map(|(_, v)| v.to_string())
    };
    let bad = |m: &str| {
        (
            StatusCode::BAD_REQUEST,
            axum::Json(serde_json::json!({"error": m})),
        )
    };
    let Some(topic) = param("topic_id").and_then(|t| t.parse::<uuid::Uuid>().ok()) else {
        return bad("topic_id=<uuid> is required");
    };
    let Some(from) = param("from") else {
        return bad("from=<region> is required");
    };
    let Some(epoch) = param("epoch").and_then(|e| e.parse::<u64>().ok()) else {
        return bad("epoch=<new home epoch> is required");
    };
    if s.topology.region(&from).is_none() || from == s.region {
        return bad("from must be another region of the topology");
    }
    let Some(lease) = s.lease.get().filter(|_| s.actor.may_act()) else {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": s.not_acting()})),
        );
    };
    match lease.promote(topic, &from, epoch).await {
        Ok(replies) => {
            let voters = s.topology.voters().len();
            let accepted = replies.values().filter(|r| r.accepted).count();
            let answers: BTreeMap<&String, serde_json::Value> = replies
                .iter()
                .map(|(v, r)| {
                    (v, serde_json::json!({"accepted": r.accepted, "refusal": r.refusal, "retry_after_ms": r.retry_after_ms}))
                })
                .collect();
            (
                StatusCode::OK,
                axum::Json(serde_json::json!({
                    "voters": voters,
                    "accepted": accepted,
                    "majority": accepted > voters / 2,
                    "answers": answers,
                })),
            )
        }
        Err(e) => bad(&e),
    }
}

async fn lag_json(State((s, _)): State<AppState>) -> impl IntoResponse {
    axum::Json(s.report())
}

async fn ready(State((s, _)): State<AppState>) -> (StatusCode, String) {
    match s.readiness() {
        Ok(()) => (StatusCode::OK, "ready\n".into()),
        Err(why) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", why.join("; ")),
        ),
    }
}

async fn render_metrics(State((s, m)): State<AppState>) -> String {
    let r = s.report();
    for p in &r.partitions {
        let labels = [
            ("link", p.link.clone()),
            ("topic", p.topic.clone()),
            ("partition", p.partition.to_string()),
        ];
        metrics::gauge!("chronik_dclink_lag_records", &labels).set(p.lag_records as f64);
        metrics::gauge!("chronik_dclink_lag_bytes", &labels).set(p.lag_bytes as f64);
        metrics::gauge!("chronik_dclink_lag_seconds", &labels).set(p.lag_seconds);
        metrics::gauge!("chronik_dclink_partition_failed", &labels)
            .set((p.state == PartitionState::Failed) as u8 as f64);
        metrics::gauge!("chronik_dclink_partition_retrying", &labels)
            .set((p.state == PartitionState::Retrying) as u8 as f64);
    }
    for l in &r.links {
        let labels = [("link", l.link.clone())];
        metrics::gauge!("chronik_dclink_connected", &labels).set(l.stats.connected as u8 as f64);
        metrics::gauge!("chronik_dclink_rtt_seconds", &labels).set(l.stats.rtt_ms / 1000.0);
        metrics::gauge!("chronik_dclink_compression_ratio", &labels).set(l.compression_ratio);
        metrics::gauge!("chronik_dclink_frames_in_flight", &labels)
            .set(l.stats.frames_in_flight as f64);
        metrics::gauge!("chronik_dclink_throughput_records_per_second", &labels)
            .set(l.throughput_records_per_sec);
    }
    for (peer, p) in s.meta_report() {
        metrics::gauge!("chronik_meta_sync_lag_seconds", "peer" => peer.clone()).set(p.lag_seconds);
        metrics::gauge!("chronik_meta_sync_pending_entries", "peer" => peer.clone())
            .set(p.pending_entries as f64);
        metrics::gauge!("chronik_meta_sync_connected", "peer" => peer)
            .set(p.connected as u8 as f64);
    }
    metrics::gauge!("chronik_dclink_policy_errors").set(r.policy_errors.len() as f64);
    metrics::gauge!("chronik_dclink_ready").set(s.readiness().is_ok() as u8 as f64);
    m.render()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_log_line_passes_once_then_once_per_interval() {
        let t0 = Instant::now();
        let mut l = LogEvery::new(Duration::from_secs(60));
        assert_eq!(l.check(t0), Some(0));
        for s in 1..=3 {
            assert_eq!(l.check(t0 + Duration::from_secs(s)), None);
        }
        assert_eq!(
            l.check(t0 + Duration::from_secs(60)),
            Some(3),
            "says how many it held back"
        );
        assert_eq!(l.check(t0 + Duration::from_secs(61)), None);
        assert_eq!(l.check(t0 + Duration::from_secs(120)), Some(1));
    }
}
