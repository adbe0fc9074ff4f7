//! The home-role lease carried between processes (the rules themselves are
//! `chronik_metadata_sync::lease`, free of I/O).
//!
//! - Every region's dc-link is one **voter** (an acceptor), and so is the
//!   optional witness. A voter answers on any QUIC connection whose first
//!   message is `LeaseHello`.
//! - Every region's dc-link is also the **holder** of its own region's
//!   lease: it dials every other voter (one connection each, apart from the
//!   data link, so no backlog of data delays a renewal), renews every
//!   `renew_every_ms`, and tells its brokers how long they may still write
//!   (`/v1/lease`). The same connection carries the home high watermarks to
//!   each mirror region.
//! - A region taking over a topic (failover) asks every voter to agree to
//!   the promotion (`/v1/promote` on its dc-link's admin API); a voter agrees
//!   only once the old home's lease has expired by its own clock, and keeps
//!   the promotion in a file before saying so.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chronik_metadata_sync::lease::{Acceptor, Grant, Holder, LeaseConfig, Promotion, Refusal};
use chronik_metadata_sync::{RegionId, TopicId};
use chronik_topology::Topology;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, oneshot};

use crate::proto::{
    self, Body, Envelope, Granted, Hello, Promote, PromoteReply, Renew, TopicEpoch, Watermarks,
};
use crate::{write_envelope as write, FrameReader, Shared};

/// A promotion as a voter keeps it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StoredPromotion {
    topic_id: uuid::Uuid,
    from: String,
    to: String,
    epoch: u64,
}

pub fn lease_config(topo: &Topology) -> LeaseConfig {
    LeaseConfig {
        duration_ms: topo.lease.duration_ms,
        renew_every_ms: topo.lease.renew_every_ms,
        max_drift: topo.lease.max_drift,
    }
}

fn region_id(name: &str) -> Result<RegionId, String> {
    RegionId::new(name.to_string()).map_err(|e| e.to_string())
}

/// Where a voter keeps the promotions it agreed to, before saying so.
pub enum PromotionStore {
    /// The witness: a file of its own.
    File(PathBuf),
    /// A region's dc-link: the region's controller, written by the process
    /// acting for the region, so a standby taking over votes the same way.
    Controller(Arc<crate::actor::ActorState>),
}

/// This process's vote: an acceptor whose promotions survive restarts and
/// changes of the acting dc-link process.
pub struct Voter {
    pub name: String,
    cfg: LeaseConfig,
    start: Instant,
    acceptor: Mutex<Acceptor>,
    store: PromotionStore,
    /// One promotion stored at a time (each write holds the whole list).
    storing: tokio::sync::Mutex<()>,
}

fn to_promotions(stored: Vec<StoredPromotion>) -> Result<Vec<Promotion>, String> {
    stored
        .into_iter()
        .map(|p| {
            Ok(Promotion {
                topic: TopicId(*p.topic_id.as_bytes()),
                from: region_id(&p.from)?,
                to: region_id(&p.to)?,
                epoch: p.epoch,
            })
        })
        .collect()
}

fn to_stored<'a>(ps: impl Iterator<Item = &'a Promotion>) -> Vec<StoredPromotion> {
    ps.map(|p| StoredPromotion {
        topic_id: uuid::Uuid::from_bytes(p.topic.0),
        from: p.from.to_string(),
        to: p.to.to_string(),
        epoch: p.epoch,
    })
    .collect()
}

/// The promotions kept in `dir` (the witness's, or those of a dc-link built
/// before they moved to the controller); none if there is no file.
pub fn read_promotions_file(dir: &Path) -> Result<Vec<StoredPromotion>, String> {
    let file = dir.join("promotions.json");
    match std::fs::read(&file) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", file.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", file.display())),
    }
}

impl Voter {
    /// The witness's voter, its promotions kept in `dir`.
    pub fn open(name: &str, cfg: LeaseConfig, dir: &Path) -> Result<Voter, String> {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let stored = read_promotions_file(dir)?;
        Voter::new(
            name,
            cfg,
            stored,
            PromotionStore::File(dir.join("promotions.json")),
        )
    }

    /// A voter that starts with `stored` (and its restart grace).
    pub fn new(
        name: &str,
        cfg: LeaseConfig,
        stored: Vec<StoredPromotion>,
        store: PromotionStore,
    ) -> Result<Voter, String> {
        Ok(Voter {
            name: name.to_string(),
            cfg,
            start: Instant::now(),
            acceptor: Mutex::new(Acceptor::new(cfg, 0, to_promotions(stored)?)),
            store,
            storing: tokio::sync::Mutex::new(()),
        })
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Whether this process may vote now: always for the witness; for a
    /// dc-link, only while it acts for its region.
    pub fn may_vote(&self) -> bool {
        match &self.store {
            PromotionStore::File(_) => true,
            PromotionStore::Controller(a) => a.may_act(),
        }
    }

    pub fn renew(&self, holder: &RegionId, round: u64, topics: &[(TopicId, u64)]) -> Grant {
        let now = self.now_ms();
        self.acceptor
            .lock()
            .unwrap()
            .renew(now, holder, round, topics)
    }

    /// Agrees to `p` (kept first) or says why not.
    pub async fn promote(&self, p: &Promotion) -> Result<(), Refusal> {
        if !self.may_vote() {
            return Err(Refusal::Unavailable(
                "this dc-link does not act for its region now (a standby, or its role lapsed)"
                    .into(),
            ));
        }
        let _one = self.storing.lock().await;
        let (before, after) = {
            let mut a = self.acceptor.lock().unwrap();
            let before: Vec<Promotion> = a.promotions().cloned().collect();
            a.promote(self.now_ms(), p)?;
            (before, to_stored(a.promotions()))
        };
        if before.contains(p) {
            return Ok(()); // agreed again: already kept
        }
        let kept = match &self.store {
            PromotionStore::File(file) => {
                write_atomically(file, &serde_json::to_vec(&after).expect("json"))
                    .map_err(|e| format!("{}: {e}", file.display()))
            }
            PromotionStore::Controller(actor) => {
                actor
                    .keep_promotions(&serde_json::to_value(&after).expect("json"))
                    .await
            }
        };
        if let Err(e) = kept {
            // Not kept: not agreed. Forget it here too; the rebuilt
            // acceptor starts its restart grace again, which only delays.
            *self.acceptor.lock().unwrap() = Acceptor::new(self.cfg, self.now_ms(), before);
            tracing::error!(error = %e, "cannot keep a promotion; refusing it");
            return Err(Refusal::Unavailable(format!(
                "cannot keep the promotion: {e}"
            )));
        }
        tracing::warn!(topic = %uuid::Uuid::from_bytes(p.topic.0), from = %p.from, to = %p.to, epoch = p.epoch, "lease: promotion agreed");
        Ok(())
    }

    /// What `/v1/lease` reports of this voter.
    pub fn report(&self, holders: &[String]) -> serde_json::Value {
        let now = self.now_ms();
        let a = self.acceptor.lock().unwrap();
        let live: BTreeMap<&str, u64> = holders
            .iter()
            .filter_map(|h| Some((h.as_str(), a.live_for_ms(now, &region_id(h).ok()?))))
            .collect();
        serde_json::json!({
            "voter": self.name,
            "recovering": a.recovering(now),
            "holders_live_for_ms": live,
            "promotions": a.promotions().map(|p| serde_json::json!({
                "topic_id": uuid::Uuid::from_bytes(p.topic.0).to_string(),
                "from": p.from.to_string(), "to": p.to.to_string(), "epoch": p.epoch,
            })).collect::<Vec<_>>(),
        })
    }
}

fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn topic_epochs(v: &[TopicEpoch]) -> Vec<(TopicId, u64)> {
    v.iter()
        .filter_map(|t| Some((TopicId::from_slice(&t.topic_id)?, t.epoch)))
        .collect()
}

/// Answers one holder's lease connection (its first message, `hello`,
/// already read). `shared`: the dc-link's state, for the home high
/// watermarks (the witness has none).
pub(crate) async fn serve(
    voter: Arc<Voter>,
    topo: &Topology,
    shared: Option<Arc<Shared>>,
    conn: &quinn::Connection,
    mut send: quinn::SendStream,
    mut frames: FrameReader,
    hello: Hello,
) -> Result<(), String> {
    let peer = hello.region;
    if hello.protocol_version != proto::PROTOCOL_VERSION {
        return Err(format!(
            "{peer} speaks dc-link protocol {}, this build {}",
            hello.protocol_version,
            proto::PROTOCOL_VERSION
        ));
    }
    if topo.region(&peer).is_none() || peer == voter.name {
        return Err(format!(
            "lease: {peer} is not another region of the topology"
        ));
    }
    crate::tls::check_peer_region(conn, &peer).map_err(|e| e.to_string())?;
    let holder = region_id(&peer)?;
    tracing::info!(peer = %peer, "lease: voting for {peer}");
    loop {
        let (env, _) = frames.next().await.map_err(|e| e.to_string())?;
        if !voter.may_vote() {
            // The holder redials and finds the process acting now.
            return Err("this dc-link no longer acts for its region".into());
        }
        let reply = match env.body {
            Some(Body::Renew(r)) => {
                let g = voter.renew(&holder, r.round, &topic_epochs(&r.topics));
                Body::Granted(Granted {
                    round: g.round,
                    moved: g
                        .moved
                        .into_iter()
                        .map(|(t, epoch)| TopicEpoch {
                            topic_id: t.0.to_vec(),
                            epoch,
                        })
                        .collect(),
                })
            }
            Some(Body::Promote(p)) => {
                let answer = match (TopicId::from_slice(&p.topic_id), region_id(&p.from)) {
                    (Some(topic), Ok(from)) => {
                        voter
                            .promote(&Promotion {
                                topic,
                                from,
                                // Only the region taking the topic asks for it.
                                to: holder.clone(),
                                epoch: p.epoch,
                            })
                            .await
                    }
                    _ => Err(Refusal::Unavailable("a malformed promotion".into())),
                };
                Body::PromoteReply(promote_reply(answer))
            }
            Some(Body::MirrorEnds(m)) => {
                if let Some(s) = &shared {
                    let now = Instant::now();
                    let mut ends = s.peer_ends.lock().unwrap();
                    for t in m.topics {
                        if let Ok(id) = uuid::Uuid::from_slice(&t.topic_id) {
                            ends.insert((peer.clone(), id), (t.end, now));
                        }
                    }
                }
                continue;
            }
            Some(Body::Watermarks(w)) => {
                if let Some(s) = &shared {
                    let link = format!("{peer}->{}", s.region);
                    for m in w.partitions {
                        s.home_seen(&link, &m.topic, m.partition, m.high_watermark);
                    }
                }
                continue;
            }
            _ => continue,
        };
        write(
            &mut send,
            &Envelope {
                id: 0,
                reply_to: env.id,
                body: Some(reply),
            },
        )
        .await?;
    }
}

fn promote_reply(answer: Result<(), Refusal>) -> PromoteReply {
    match answer {
        Ok(()) => PromoteReply {
            accepted: true,
            ..Default::default()
        },
        Err(r) => PromoteReply {
            accepted: false,
            retry_after_ms: match &r {
                Refusal::LeaseLive { remaining_ms, .. } => *remaining_ms,
                Refusal::Recovering { .. } | Refusal::Unavailable(_) => 500,
                Refusal::Taken { .. } => 0,
            },
            refusal: r.to_string(),
        },
    }
}

/// Messages to one remote voter.
enum Outgoing {
    Renew(Renew),
    Promote(Promote, oneshot::Sender<PromoteReply>),
    Watermarks(Watermarks),
    MirrorEnds(proto::MirrorEnds),
}

/// The holder side of this region, and its way to every other voter.
pub struct LeaseClient {
    voter: Arc<Voter>,
    here: RegionId,
    holder: Mutex<Holder>,
    start: Instant,
    voters: BTreeMap<String, mpsc::UnboundedSender<Outgoing>>,
    /// When each remote voter last answered a renewal.
    heard: Mutex<BTreeMap<String, Instant>>,
    renew_every_ms: u64,
    enforced: bool,
    voter_count: usize,
}

impl LeaseClient {
    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// How long ago `voter` last answered a renewal (`None`: never since
    /// this process started, `started_ms_ago` ago).
    pub fn heard_ms_ago(&self, voter: &str) -> Option<u64> {
        self.heard
            .lock()
            .unwrap()
            .get(voter)
            .map(|t| t.elapsed().as_millis() as u64)
    }

    pub fn started_ms_ago(&self) -> u64 {
        self.now_ms()
    }

    pub fn voter_count(&self) -> usize {
        self.voter_count
    }

    /// For how much longer this region may write its topics (0: lapsed).
    pub fn valid_for_ms(&self) -> u64 {
        let now = self.now_ms();
        self.holder
            .lock()
            .unwrap()
            .valid_until_ms()
            .saturating_sub(now)
    }

    /// Asks every voter to agree that `topic` moves from `from` to this
    /// region at `epoch`. Returns each voter's answer (unreachable voters
    /// answer with an error).
    pub async fn promote(
        &self,
        topic: uuid::Uuid,
        from: &str,
        epoch: u64,
    ) -> Result<BTreeMap<String, PromoteReply>, String> {
        let p = Promotion {
            topic: TopicId(*topic.as_bytes()),
            from: region_id(from)?,
            to: self.here.clone(),
            epoch,
        };
        let mut out = BTreeMap::new();
        out.insert(
            self.voter.name.clone(),
            promote_reply(self.voter.promote(&p).await),
        );
        // Answers as they come (a voter that is down must not hold up the
        // others).
        let unreachable = |name: &str| PromoteReply {
            accepted: false,
            refusal: format!("{name} did not answer (unreachable)"),
            retry_after_ms: 500,
        };
        let (tx, mut rx) = mpsc::unbounded_channel();
        let mut asked = 0;
        for (name, voter) in &self.voters {
            let (rtx, rrx) = oneshot::channel();
            let msg = Promote {
                topic_id: topic.as_bytes().to_vec(),
                from: from.to_string(),
                epoch,
            };
            // A voter silent for several renewals is not waited for (it
            // would hold every attempt up for the full timeout).
            let silent = self
                .heard_ms_ago(name)
                .is_none_or(|ms| ms > 3 * self.renew_every_ms.max(500));
            if silent || voter.send(Outgoing::Promote(msg, rtx)).is_err() {
                out.insert(name.clone(), unreachable(name));
                continue;
            }
            asked += 1;
            let (tx, name) = (tx.clone(), name.clone());
            tokio::spawn(async move {
                let reply = match tokio::time::timeout(Duration::from_secs(3), rrx).await {
                    Ok(Ok(r)) => r,
                    _ => unreachable(&name),
                };
                let _ = tx.send((name, reply));
            });
        }
        // Done once a majority agreed, or can no longer agree this time.
        let majority = self.voter_count / 2 + 1;
        while asked > 0 && {
            let agreed = out.values().filter(|r| r.accepted).count();
            agreed < majority && agreed + asked >= majority
        } {
            let Some((name, reply)) = rx.recv().await else {
                break;
            };
            out.insert(name, reply);
            asked -= 1;
        }
        for name in self.voters.keys() {
            out.entry(name.clone()).or_insert_with(|| PromoteReply {
                accepted: false,
                refusal: "no answer yet (the others decided first)".into(),
                retry_after_ms: 0,
            });
        }
        Ok(out)
    }

    pub fn report(&self, holders: &[String]) -> serde_json::Value {
        let (until, moved) = {
            let h = self.holder.lock().unwrap();
            let moved: Vec<_> = h
                .moved()
                .map(|(t, e)| serde_json::json!({"topic_id": uuid::Uuid::from_bytes(t.0).to_string(), "epoch": e}))
                .collect();
            (h.valid_until_ms(), moved)
        };
        let heard: BTreeMap<String, u64> = self
            .heard
            .lock()
            .unwrap()
            .iter()
            .map(|(v, t)| (v.clone(), t.elapsed().as_millis() as u64))
            .collect();
        serde_json::json!({
            "region": self.here.to_string(),
            "voters": self.voter_count,
            "renew_every_ms": self.renew_every_ms,
            "voters_heard_ms_ago": heard,
            "enforced": self.enforced,
            "valid_for_ms": until.saturating_sub(self.now_ms()),
            "moved": moved,
            "vote": self.voter.report(holders),
        })
    }
}

/// Starts the lease of this dc-link's region: its vote, its holder, a
/// connection to every other voter, and the pushes to its brokers.
pub fn start(
    shared: Arc<Shared>,
    voter: Arc<Voter>,
    tasks: &mut tokio::task::JoinSet<()>,
) -> Arc<LeaseClient> {
    let topo = &shared.topology;
    let cfg = lease_config(topo);
    let all = topo.voters();
    let here = RegionId::new(shared.region.clone()).expect("validated region name");
    let mut voters = BTreeMap::new();
    let mut rxs = Vec::new();
    for v in all.iter().filter(|v| **v != shared.region) {
        let (tx, rx) = mpsc::unbounded_channel();
        voters.insert(v.clone(), tx);
        rxs.push((v.clone(), rx));
    }
    let client = Arc::new(LeaseClient {
        voter,
        here,
        holder: Mutex::new(Holder::new(
            cfg,
            all.iter().filter_map(|v| RegionId::new(v.clone()).ok()),
        )),
        start: Instant::now(),
        voters,
        heard: Mutex::new(BTreeMap::new()),
        renew_every_ms: cfg.renew_every_ms,
        enforced: topo.lease_enforced(),
        voter_count: all.len(),
    });
    for (name, rx) in rxs {
        tasks.spawn(voter_link(shared.clone(), client.clone(), name, rx));
    }
    tasks.spawn(renew_loop(shared.clone(), client.clone()));
    tasks.spawn(crate::auto_failover::run(shared.clone(), client.clone()));
    tasks.spawn(push_to_brokers(shared, client.clone()));
    client
}

/// Renews on schedule and sends the home high watermarks to the mirror
/// regions.
async fn renew_loop(shared: Arc<Shared>, c: Arc<LeaseClient>) {
    let mut last_marks = Instant::now();
    loop {
        let now = c.now_ms();
        // A process that may not act for the region holds nothing for it.
        let round = if c.voter.may_vote() {
            c.holder.lock().unwrap().tick(now)
        } else {
            None
        };
        if let Some(round) = round {
            let topics: Vec<(TopicId, u64)> = shared
                .homed_topics()
                .iter()
                .filter(|t| !t.id.is_nil())
                // Epoch 0: every promotion away from here is reported; the
                // brokers compare it with the epoch they hold.
                .map(|t| (TopicId(*t.id.as_bytes()), 0))
                .collect();
            let grant = c.voter.renew(&c.here, round, &topics);
            c.holder.lock().unwrap().granted(&c.here, &grant);
            let msg = Renew {
                round,
                topics: topics
                    .iter()
                    .map(|(t, e)| TopicEpoch {
                        topic_id: t.0.to_vec(),
                        epoch: *e,
                    })
                    .collect(),
            };
            for tx in c.voters.values() {
                let _ = tx.send(Outgoing::Renew(msg.clone()));
            }
        }
        if last_marks.elapsed() >= Duration::from_millis(500) {
            last_marks = Instant::now();
            let auto: Vec<proto::TopicEnd> = shared
                .auto_topics
                .lock()
                .unwrap()
                .clone()
                .iter()
                .map(|t| proto::TopicEnd {
                    topic_id: t.id.as_bytes().to_vec(),
                    end: shared.mirror_total(&t.home, &t.name),
                })
                .collect();
            for (peer, tx) in &c.voters {
                if shared.topology.region(peer).is_none() {
                    continue; // the witness mirrors nothing
                }
                if !auto.is_empty() {
                    let _ = tx.send(Outgoing::MirrorEnds(proto::MirrorEnds {
                        topics: auto.clone(),
                    }));
                }
                let marks = shared.home_watermarks_for(peer);
                if !marks.is_empty() {
                    let _ = tx.send(Outgoing::Watermarks(Watermarks { partitions: marks }));
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One remote voter: dials it, sends what the holder asks, feeds grants
/// back; reconnects after any failure.
async fn voter_link(
    shared: Arc<Shared>,
    c: Arc<LeaseClient>,
    name: String,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
) {
    let from = RegionId::new(name.clone()).expect("validated voter name");
    let mut which = 0usize;
    loop {
        let result: Result<(), String> = async {
            let (conn, _) = shared.dial(&name, which).await?;
            let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
            let mut frames = FrameReader::new(recv);
            write(
                &mut send,
                &Envelope {
                    id: 0,
                    reply_to: 0,
                    body: Some(Body::LeaseHello(Hello {
                        region: shared.region.clone(),
                        protocol_version: proto::PROTOCOL_VERSION,
                        forward_only: false,
                    })),
                },
            )
            .await?;
            tracing::info!(voter = %name, "lease: connected to voter {name}");
            let mut pending: HashMap<u64, oneshot::Sender<PromoteReply>> = HashMap::new();
            let mut next_id = 1u64;
            loop {
                tokio::select! {
                    m = rx.recv() => {
                        let Some(m) = m else { return Ok(()) };
                        next_id += 1;
                        let body = match m {
                            Outgoing::Renew(r) => Body::Renew(r),
                            Outgoing::Watermarks(w) => Body::Watermarks(w),
                            Outgoing::MirrorEnds(m) => Body::MirrorEnds(m),
                            Outgoing::Promote(p, reply) => {
                                pending.insert(next_id, reply);
                                Body::Promote(p)
                            }
                        };
                        write(&mut send, &Envelope { id: next_id, reply_to: 0, body: Some(body) }).await?;
                    }
                    f = frames.next() => {
                        let (env, _) = f.map_err(|e| e.to_string())?;
                        match env.body {
                            Some(Body::Granted(g)) => {
                                let grant = Grant { round: g.round, moved: topic_epochs(&g.moved) };
                                c.holder.lock().unwrap().granted(&from, &grant);
                                c.heard.lock().unwrap().insert(name.clone(), Instant::now());
                            }
                            Some(Body::PromoteReply(r)) => {
                                if let Some(tx) = pending.remove(&env.reply_to) {
                                    let _ = tx.send(r);
                                }
                            }
                            _ => {}
                        }
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            which += 1;
            tracing::debug!(voter = %name, error = %e, "lease: voter unreachable");
        }
        // Nothing queued while disconnected is worth sending late: renewals
        // are superseded, and a promotion's caller sees its answer dropped.
        let pause = tokio::time::sleep(Duration::from_millis(500));
        tokio::pin!(pause);
        loop {
            tokio::select! {
                _ = &mut pause => break,
                m = rx.recv() => if m.is_none() { return },
            }
        }
    }
}

/// Tells each broker of the region how long it may still take writes for
/// the region's topics, and which were promoted elsewhere.
///
/// Safe against a slow push: the broker's own clock reading, taken before
/// this computes the remaining time, is what the time counts from.
async fn push_to_brokers(shared: Arc<Shared>, c: Arc<LeaseClient>) {
    #[derive(Deserialize)]
    struct Clock {
        boot: String,
        now_ms: u64,
    }
    let mut conns: BTreeMap<String, crate::broker_http::AdminConn> = BTreeMap::new();
    loop {
        let pushing = c.voter.may_vote();
        for addr in shared.local_region().brokers_admin.clone() {
            if !pushing {
                break;
            }
            let conn = match conns.remove(&addr) {
                Some(c) if c.is_open() => c,
                _ => match crate::broker_http::AdminConn::connect(&addr).await {
                    Ok(c) => c,
                    Err(_) => continue,
                },
            };
            let mut conn = conn;
            let pushed = async {
                let body = conn
                    .meta(hyper::Method::GET, "/v1/lease/clock", bytes::Bytes::new(), false)
                    .await
                    .map_err(|e| e.to_string())?;
                let clock: Clock = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
                let moved: Vec<_> = c
                    .holder
                    .lock()
                    .unwrap()
                    .moved()
                    .map(|(t, e)| serde_json::json!({"topic_id": uuid::Uuid::from_bytes(t.0).to_string(), "epoch": e}))
                    .collect();
                let push = serde_json::json!({
                    "boot": clock.boot,
                    "from_ms": clock.now_ms,
                    "valid_for_ms": c.valid_for_ms(),
                    "voters": c.voter_count,
                    "moved": moved,
                    // Where the brokers hand over produces to forward: the
                    // acting process's, so they follow a takeover.
                    "forward": shared.forwarding.listen.get().map(|a| a.to_string()),
                });
                conn.meta(
                    hyper::Method::POST,
                    "/v1/lease",
                    bytes::Bytes::from(push.to_string()),
                    true,
                )
                .await
                .map_err(|e| e.to_string())
            }
            .await;
            match pushed {
                Ok(_) => {
                    conns.insert(addr, conn);
                }
                Err(e) => {
                    tracing::debug!(broker = %addr, error = %e, "lease: push to broker failed")
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name.to_string()).unwrap()
    }

    #[tokio::test]
    async fn an_agreed_promotion_survives_a_restart_and_a_restarted_vote_waits() {
        let dir = std::env::temp_dir().join(format!("voter-{}", uuid::Uuid::new_v4()));
        let cfg = LeaseConfig {
            duration_ms: 1_000,
            renew_every_ms: 200,
            max_drift: 0.0,
        };
        let topic = TopicId([3; 16]);
        let p = Promotion {
            topic,
            from: r("us-east"),
            to: r("eu-west"),
            epoch: 2,
        };
        let v = Voter::open("witness", cfg, &dir).unwrap();
        // Just started: leases granted before the start may be live.
        assert!(matches!(
            v.promote(&p).await,
            Err(Refusal::Recovering { .. })
        ));
        tokio::time::sleep(std::time::Duration::from_millis(1_050)).await;
        v.promote(&p).await.unwrap();
        drop(v);

        let again = Voter::open("witness", cfg, &dir).unwrap();
        // The stored promotion is remembered: the same one is agreed again at
        // once, another region at the same epoch is refused, and the old
        // home's renewals are told the topic moved.
        again.promote(&p).await.unwrap();
        let rival = Promotion {
            to: r("ap-south"),
            ..p.clone()
        };
        assert!(matches!(
            again.promote(&rival).await,
            Err(Refusal::Taken { .. })
        ));
        let g = again.renew(&r("us-east"), 7, &[(topic, 1)]);
        assert_eq!(g.moved, vec![(topic, 2)]);
        std::fs::remove_dir_all(dir).ok();
    }
}
