//! The region as this broker sees it: the controller group, the partition
//! groups hosted here, the peer transport, and where each partition's
//! leader is. Handlers ask this module one question per partition: "can I
//! write/read it here, and if not, who can?"

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use prost::Message;
use tokio::time::Instant;

use chronik_topology::BrokerConfig;

use crate::catalog::{BrokerEndpoint, Catalog, ControllerProposer, Topic, TopicError};
use crate::log::PartitionLog;
use crate::raft::codec::{self, kind, Frame};
use crate::raft::sm::Target;
use crate::raft::transport::{Inbound, PeerIo, Probed, TcpIo, Transport};
use crate::raft::types::{Command, CommandResult, ControllerCommand, TxnMarker};

/// NOT_LEADER_OR_FOLLOWER: a marker that did not reach the partition's
/// leader is retried once leadership is known again.
const NOT_LEADER: i16 = 6;
use crate::raft::{
    GroupDebug, GroupStatus, OpenraftGroup, ProposeError, RaftSettings, ReplicaGroup,
    CONTROLLER_GROUP,
};
use crate::storage::Store;

mod members;

/// Where a partition's leader is, as Metadata reports it.
#[derive(Debug, Clone, Default)]
pub struct PartitionView {
    pub leader: Option<i32>,
    pub epoch: i32,
    pub replicas: Vec<i32>,
    pub isr: Vec<i32>,
}

#[derive(Debug, Clone)]
struct Hint {
    leader: i32,
    term: u64,
    isr: Vec<i32>,
    /// The leader epoch clients see (>= term; see `PartitionLog::leader_epoch`).
    epoch: i32,
    at: Instant,
}

pub struct Cluster {
    node_id: i32,
    store: Arc<Store>,
    catalog: Arc<Catalog>,
    transport: Arc<Transport>,
    settings: RaftSettings,
    controller: Arc<dyn ReplicaGroup>,
    groups: RwLock<HashMap<u64, Arc<dyn ReplicaGroup>>>,
    starting: Mutex<std::collections::HashSet<u64>>,
    hints: Mutex<HashMap<u64, Hint>>,
    reconcile: Arc<tokio::sync::Notify>,
    stopping: std::sync::atomic::AtomicBool,
    /// Whether this broker hears from less than a majority of its region;
    /// refreshed by the election loop, read on every client request.
    cut_off: std::sync::atomic::AtomicBool,
    /// When this broker started: until its peers had one liveness window to
    /// be heard, silence says nothing about them.
    started: Instant,
    /// Kafka's auto.leader.rebalance.enable.
    auto_leader_rebalance: bool,
    /// Partition groups with a reassignment step running.
    moving: Mutex<std::collections::HashSet<u64>>,
}

struct Proposer(Weak<Cluster>);

impl ControllerProposer for Proposer {
    fn propose(&self, cmd: ControllerCommand) -> BoxFuture<'_, Result<(), TopicError>> {
        Box::pin(async move {
            match self.0.upgrade() {
                Some(c) => c.controller_write(cmd).await,
                None => Err(TopicError::Unavailable("broker shutting down".into())),
            }
        })
    }
}

fn to_u64(ids: &[i32]) -> Vec<u64> {
    ids.iter().map(|i| *i as u64).collect()
}

impl Cluster {
    /// Starts the controller group and the peer transport, then (in the
    /// background) every partition group this broker hosts.
    ///
    /// `form`: whether this broker may form the region's controller if it
    /// has none yet. A broker that found the region running must not: it
    /// waits to be added (or, if it is one of the voters the controller
    /// formed with, to be caught up), as a second controller formed from
    /// its own configuration would diverge from the first.
    pub async fn start(
        cfg: &BrokerConfig,
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        form: bool,
    ) -> Result<Arc<Cluster>, String> {
        Self::start_with_io(cfg, store, catalog, Self::peer_io(cfg)?, form).await
    }

    /// The peer sockets `[cluster.tls]` asks for: mutual TLS, or plain TCP.
    pub fn peer_io(cfg: &BrokerConfig) -> Result<Arc<dyn PeerIo>, String> {
        Ok(match &cfg.cluster.tls {
            Some(t) => Arc::new(
                crate::raft::peer_tls::TlsIo::load(&cfg.region, t)
                    .map_err(|e| format!("Raft peer TLS: {e}"))?,
            ),
            None => Arc::new(TcpIo),
        })
    }

    /// [`Cluster::start`] with the peer sockets from `io` (the deterministic
    /// simulation passes simulated ones).
    pub async fn start_with_io(
        cfg: &BrokerConfig,
        store: Arc<Store>,
        catalog: Arc<Catalog>,
        io: Arc<dyn PeerIo>,
        form: bool,
    ) -> Result<Arc<Cluster>, String> {
        let c = &cfg.cluster;
        let settings = RaftSettings {
            heartbeat_ms: c.heartbeat_interval_ms,
            election_min_ms: c.election_timeout_min_ms,
            election_max_ms: c.election_timeout_max_ms,
            snapshot_every: c.raft_snapshot_entries,
            keep_behind_snapshot: c.raft_log_keep_entries,
            replica_lag: Duration::from_millis(c.replica_lag_time_max_ms),
            quiescent: false,
        };
        let peers: HashMap<u64, String> = c
            .peers
            .iter()
            .map(|p| (p.id as u64, p.raft.clone()))
            .collect();
        let transport = Transport::with_io(cfg.node_id as u64, peers, io);
        if let Some(d) = &c.discovery {
            tokio::spawn(crate::discovery::refresh_loop(
                d.clone(),
                cfg.node_id,
                transport.clone(),
            ));
        }
        let listener = match (c.peers.is_empty(), cfg.listeners.raft) {
            (false, Some(addr)) => Some(
                transport
                    .bind(addr)
                    .await
                    .map_err(|e| format!("binding raft listener {addr}: {e}"))?,
            ),
            _ => None,
        };
        let node = cfg.node_id as u64;
        let me_cell: Arc<std::sync::OnceLock<Weak<Cluster>>> = Arc::new(std::sync::OnceLock::new());
        let cell = me_cell.clone();
        let on_change_ctrl: Arc<dyn Fn() + Send + Sync> = Arc::new(move || {
            if let Some(c) = cell.get().and_then(|w| w.upgrade()) {
                c.reconcile.notify_one();
            }
        });
        let controller = OpenraftGroup::start(
            CONTROLLER_GROUP,
            node,
            &settings,
            store.clone(),
            transport.clone(),
            Target::Controller(catalog.clone()),
            on_change_ctrl,
            Self::liveness(&transport, &settings),
        )
        .await?;
        let cluster = Arc::new(Cluster {
            node_id: cfg.node_id,
            store,
            catalog: catalog.clone(),
            transport: transport.clone(),
            settings,
            controller: controller.clone(),
            groups: RwLock::new(HashMap::new()),
            starting: Mutex::new(Default::default()),
            hints: Mutex::new(HashMap::new()),
            reconcile: Arc::new(tokio::sync::Notify::new()),
            stopping: std::sync::atomic::AtomicBool::new(false),
            cut_off: std::sync::atomic::AtomicBool::new(false),
            started: Instant::now(),
            auto_leader_rebalance: cfg.cluster.auto_leader_rebalance,
            moving: Mutex::new(Default::default()),
        });
        let _ = me_cell.set(Arc::downgrade(&cluster));
        catalog.attach_controller(Arc::new(Proposer(Arc::downgrade(&cluster))));
        transport.start(listener, Arc::new(InboundRef(Arc::downgrade(&cluster))));
        cluster.sync_peers();
        if form && !controller.is_initialized().await {
            // Every broker bootstraps the controller with the same voters;
            // Raft elects one leader whatever the order.
            let members = to_u64(catalog.broker_ids());
            controller.initialize(members).await;
        }
        let (host, port) = cfg.listeners.advertised();
        let ep = BrokerEndpoint {
            id: cfg.node_id,
            host,
            port,
            rack: None,
            listeners: cfg
                .listeners
                .kafka_listeners()
                .iter()
                .map(|l| (l.name.clone(), l.advertised()))
                .collect(),
        };
        tokio::spawn(Self::register_loop(Arc::downgrade(&cluster), ep));
        tokio::spawn(Self::reconcile_loop(Arc::downgrade(&cluster)));
        tokio::spawn(Self::leader_loop(Arc::downgrade(&cluster)));
        tokio::spawn(Self::election_loop(Arc::downgrade(&cluster)));
        tokio::spawn(Self::membership_loop(Arc::downgrade(&cluster)));
        Ok(cluster)
    }

    pub fn node_id(&self) -> i32 {
        self.node_id
    }

    /// A peer is alive if it sent anything (every broker sends leader hints
    /// every 250 ms) within the minimum election timeout.
    fn liveness(transport: &Arc<Transport>, settings: &RaftSettings) -> crate::raft::Liveness {
        let t = Arc::downgrade(transport);
        let within = Duration::from_millis(settings.election_min_ms);
        Arc::new(move |peer| t.upgrade().is_some_and(|t| t.heard_from(peer, within)))
    }

    /// Whether broker `id` is this one or was heard from within the
    /// failure detector's window.
    pub fn hears_from(&self, id: i32) -> bool {
        self.alive(id as u64)
    }

    fn alive(&self, node: u64) -> bool {
        self.transport
            .heard_from(node, Duration::from_millis(self.settings.election_min_ms))
    }

    /// Whether this broker hears from less than a majority of its region
    /// (itself included). Such a broker can commit nothing, and a leader
    /// it still believes it is has been replaced on the other side; see
    /// `connection::serve` for what it does about its clients.
    pub fn is_cut_off(&self) -> bool {
        self.cut_off.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn refresh_cut_off(&self) {
        let peers = self.transport.peer_ids();
        let alive = peers.iter().filter(|p| self.alive(**p)).count();
        // A broker that just (re)started has not heard from anyone yet, and
        // a leader it restarted as is no staler than one the normal window
        // would still trust: declaring it cut off would only drop the
        // clients that found it first.
        let settling =
            self.started.elapsed() < Duration::from_millis(self.settings.election_min_ms);
        let now = !settling && !peers.is_empty() && (alive + 1) * 2 <= peers.len() + 1;
        let was = self.cut_off.swap(now, std::sync::atomic::Ordering::Relaxed);
        if now != was {
            if now {
                tracing::warn!(
                    alive_peers = alive,
                    peers = peers.len(),
                    "cut off from the region's majority: dropping Kafka clients until it is back"
                );
            } else {
                tracing::info!(
                    alive_peers = alive,
                    peers = peers.len(),
                    "back in touch with the region's majority: serving Kafka clients again"
                );
            }
        }
        metrics::gauge!("chronik_broker_cut_off").set(if now { 1.0 } else { 0.0 });
    }

    pub fn controller_status(&self) -> GroupStatus {
        self.controller.status()
    }

    async fn register_loop(me: Weak<Cluster>, ep: BrokerEndpoint) {
        loop {
            let Some(c) = me.upgrade() else { return };
            if c.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            match c.catalog.register_broker(ep.clone()).await {
                Ok(()) => {
                    tracing::info!(id = ep.id, host = %ep.host, port = ep.port, "registered with the controller");
                    return;
                }
                Err(e) => tracing::debug!(error = %e, "broker registration pending"),
            }
            drop(c);
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }

    /// Starts groups for partitions hosted here and stops those whose
    /// topic is gone; runs after every controller change and every second.
    async fn reconcile_loop(me: Weak<Cluster>) {
        loop {
            let Some(c) = me.upgrade() else { return };
            c.reconcile_once().await;
            let wake = c.reconcile.clone();
            // Never hold the cluster while idle: a stopped broker must be
            // able to release its storage.
            drop(c);
            let _ = tokio::time::timeout(Duration::from_secs(1), wake.notified()).await;
        }
    }

    pub fn replicas_of(&self, t: &Topic, p: i32) -> Vec<i32> {
        let r = t.replicas(p);
        if r.is_empty() {
            vec![self.node_id]
        } else {
            r
        }
    }

    async fn reconcile_once(self: &Arc<Self>) {
        let mut wanted: HashMap<u64, (Arc<Topic>, Arc<PartitionLog>, Vec<i32>)> = HashMap::new();
        for (t, p) in self.catalog.all_partitions() {
            let replicas = self.replicas_of(&t, p.partition);
            // A replica being added hosts the group (as a learner) too.
            let adding = t
                .reassigning(p.partition)
                .is_some_and(|r| r.contains(&self.node_id));
            if replicas.contains(&self.node_id) || adding {
                wanted.insert(p.log_id, (t.clone(), p, replicas));
            }
        }
        let running: Vec<u64> = self.groups.read().unwrap().keys().copied().collect();
        let live_logs: HashMap<u64, Arc<PartitionLog>> = self
            .catalog
            .all_partitions()
            .into_iter()
            .map(|(_, p)| (p.log_id, p))
            .collect();
        for id in running {
            if !wanted.contains_key(&id) {
                let g = self.groups.write().unwrap().remove(&id);
                if let Some(g) = g {
                    g.shutdown().await;
                    let mut wb = rocksdb::WriteBatch::default();
                    g.destroy_into(&mut wb);
                    // A replica that moved away drops its copy, so that a
                    // later move back starts clean from the leader.
                    let moved = live_logs.get(&id);
                    if let Some(log) = moved {
                        log.clear_into(&mut wb);
                    }
                    let _ = self.store.write(wb).await;
                    if let Some(log) = moved {
                        let _ = log.reload();
                        tracing::info!(group = id, topic = %log.topic, partition = log.partition, "replica moved away; local copy removed");
                    } else {
                        tracing::info!(group = id, "stopped partition group (topic deleted)");
                    }
                }
            }
        }
        let mut to_start = Vec::new();
        {
            let groups = self.groups.read().unwrap();
            let mut starting = self.starting.lock().unwrap();
            for (id, v) in wanted {
                if !groups.contains_key(&id) && starting.insert(id) {
                    to_start.push((id, v));
                }
            }
        }
        // Start in parallel, bounded, so 1,000 new partitions come up fast.
        let sem = Arc::new(tokio::sync::Semaphore::new(32));
        let mut tasks = Vec::new();
        for (id, (_t, log, replicas)) in to_start {
            let me = self.clone();
            let permit = sem.clone().acquire_owned().await;
            tasks.push(tokio::spawn(async move {
                let _permit = permit;
                me.start_group(id, log, replicas).await;
                me.starting.lock().unwrap().remove(&id);
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    }

    async fn start_group(self: &Arc<Self>, id: u64, log: Arc<PartitionLog>, replicas: Vec<i32>) {
        let target = Target::Partition {
            log: log.clone(),
            catalog: self.catalog.clone(),
        };
        let settings = RaftSettings {
            quiescent: true,
            ..self.settings.clone()
        };
        let g = match OpenraftGroup::start(
            id,
            self.node_id as u64,
            &settings,
            self.store.clone(),
            self.transport.clone(),
            target,
            Arc::new(|| {}),
            Self::liveness(&self.transport, &self.settings),
        )
        .await
        {
            Ok(g) => g,
            Err(e) => {
                tracing::error!(group = id, error = %e, "cannot start partition group");
                return;
            }
        };
        let g: Arc<dyn ReplicaGroup> = g;
        self.groups.write().unwrap().insert(id, g.clone());
        // Only the partition's current replicas ever bootstrap its group; a
        // replica being added waits for the leader to reach it.
        if replicas.contains(&self.node_id) && !g.is_initialized().await {
            let members = to_u64(&replicas);
            if replicas.first() == Some(&self.node_id) {
                // The preferred leader bootstraps at once and so usually
                // wins the first election: leaders spread as assigned.
                g.initialize(members).await;
            } else {
                let delay = Duration::from_millis(self.settings.election_max_ms * 3);
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    if !g.is_initialized().await {
                        g.initialize(members).await;
                    }
                });
            }
        }
    }

    /// Publishes the groups led here to every peer, keeps each log's
    /// leader epoch current, and moves leadership back to preferred
    /// replicas once they are in sync.
    async fn leader_loop(me: Weak<Cluster>) {
        let mut tick: u64 = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(250)).await;
            tick += 1;
            let Some(c) = me.upgrade() else { return };
            let groups: Vec<Arc<dyn ReplicaGroup>> =
                c.groups.read().unwrap().values().cloned().collect();
            let mut led = Vec::new();
            let logs: HashMap<u64, (Arc<Topic>, Arc<PartitionLog>)> = c
                .catalog
                .all_partitions()
                .into_iter()
                .map(|(t, p)| (p.log_id, (t, p)))
                .collect();
            let mut leaders_here = 0u64;
            for g in &groups {
                let (_, term, is_leader) = g.brief();
                if let Some((t, log)) = logs.get(&g.id()) {
                    log.note_term(term.min(i32::MAX as u64) as i32);
                    if is_leader {
                        let st = g.status();
                        leaders_here += 1;
                        led.push(codec::PbLeaderHint {
                            group: g.id(),
                            term: st.term,
                            isr: st.isr.iter().map(|i| *i as i32).collect(),
                            epoch: log.leader_epoch(),
                        });
                        c.drive_reassignment(g, t, log, &st);
                        // Preferred-leader balancing (Kafka's
                        // auto.leader.rebalance), every ~10 s.
                        let preferred = c.replicas_of(t, log.partition)[0];
                        if c.auto_leader_rebalance
                            && tick.is_multiple_of(40)
                            && preferred != c.node_id
                            && st.caught_up_now.contains(&(preferred as u64))
                        {
                            g.transfer_leadership(preferred as u64).await;
                        }
                    }
                }
            }
            metrics::gauge!("chronik_partition_leaders").set(leaders_here as f64);
            metrics::gauge!("chronik_partition_replicas").set(groups.len() as f64);
            let body: Bytes = codec::PbLeaders {
                node: c.node_id,
                groups: led,
            }
            .encode_to_vec()
            .into();
            for peer in c.transport.peer_ids() {
                c.transport.notify(peer, kind::LEADERS, body.clone());
            }
        }
    }

    /// Drives the quiescent partition groups: they have no heartbeat or
    /// election timers of their own, so this loop (1) starts an election in
    /// a group whose leader's broker went silent, on the first live replica
    /// in preference order (the others follow later only if that fails),
    /// and (2) has leaders re-sync a follower whose broker came back.
    async fn election_loop(me: Weak<Cluster>) {
        let mut leaderless: HashMap<u64, Instant> = HashMap::new();
        let mut was_alive: HashMap<u64, bool> = HashMap::new();
        let tick = Duration::from_millis(150);
        loop {
            tokio::time::sleep(tick).await;
            let Some(c) = me.upgrade() else { return };
            c.refresh_cut_off();
            let me_id = c.node_id as u64;
            let mut returned = Vec::new();
            for peer in c.transport.peer_ids() {
                let alive = c.alive(peer);
                if alive && was_alive.insert(peer, true) == Some(false) {
                    returned.push(peer);
                } else if !alive {
                    was_alive.insert(peer, false);
                }
            }
            let logs: HashMap<u64, (Arc<Topic>, Arc<PartitionLog>)> = c
                .catalog
                .all_partitions()
                .into_iter()
                .map(|(t, p)| (p.log_id, (t, p)))
                .collect();
            let groups: Vec<Arc<dyn ReplicaGroup>> =
                c.groups.read().unwrap().values().cloned().collect();
            let now = Instant::now();
            let backup_after = Duration::from_millis(c.settings.election_max_ms * 2);
            for g in groups {
                let (cur_leader, term, is_leader) = g.brief();
                if is_leader {
                    leaderless.remove(&g.id());
                    // Until a quorum answers, a leader restored at startup
                    // serves nothing (see `leader_fresh`); the heartbeat
                    // either confirms it or shows it the successor's term.
                    if !returned.is_empty() || g.leadership_unconfirmed() {
                        g.heartbeat().await;
                    }
                    continue;
                }
                let Some((t, log)) = logs.get(&g.id()) else {
                    continue;
                };
                let hinted = c.fresh_hint(g.id());
                let leader = match (cur_leader, hinted) {
                    (Some(_), Some(h)) if h.term > term => Some(h.leader as u64),
                    (Some(l), _) => Some(l),
                    (None, Some(h)) => Some(h.leader as u64),
                    (None, None) => None,
                };
                if leader.is_some_and(|l| l != me_id && c.alive(l)) {
                    leaderless.remove(&g.id());
                    continue;
                }
                let st = g.status();
                if st.voters.is_empty() {
                    continue; // not bootstrapped yet
                }
                let since = *leaderless.entry(g.id()).or_insert(now);
                let designated = c
                    .replicas_of(t, log.partition)
                    .into_iter()
                    .map(|r| r as u64)
                    .find(|r| st.voters.contains(r) && c.alive(*r));
                let waited = now.saturating_duration_since(since);
                if (designated == Some(me_id) && waited >= tick) || waited >= backup_after {
                    g.elect().await;
                    leaderless.insert(g.id(), now);
                }
            }
            leaderless.retain(|id, _| logs.contains_key(id));
        }
    }

    /// Sends a catalog change to the controller leader (here or remote) and
    /// waits for it to be applied there.
    /// On a partition's leader: moves the group's voters towards the
    /// catalog's wish (a reassignment's target, else the replicas), one
    /// step per call, and completes the reassignment once there.
    fn drive_reassignment(
        self: &Arc<Self>,
        g: &Arc<dyn ReplicaGroup>,
        t: &Arc<Topic>,
        log: &PartitionLog,
        st: &GroupStatus,
    ) {
        let target = t.reassigning(log.partition).cloned();
        let wanted = target
            .clone()
            .unwrap_or_else(|| self.replicas_of(t, log.partition));
        let mut voters = st.voters.clone();
        voters.sort_unstable();
        let mut w = to_u64(&wanted);
        w.sort_unstable();
        if target.is_none() && voters == w {
            return;
        }
        if !self.moving.lock().unwrap().insert(g.id()) {
            return;
        }
        let (me, g, name, partition) =
            (self.clone(), g.clone(), t.name().to_string(), log.partition);
        tokio::spawn(async move {
            match g.change_voters(to_u64(&wanted)).await {
                Ok(true) => {
                    if let Some(replicas) = target {
                        let done = ControllerCommand::CompleteReassignment {
                            name: name.clone(),
                            partition,
                            replicas: replicas.clone(),
                        };
                        match me.controller_write(done).await {
                            Ok(()) => {
                                tracing::info!(topic = %name, partition, ?replicas, "reassignment complete")
                            }
                            Err(e) => {
                                tracing::warn!(topic = %name, partition, error = %e, "reassignment not recorded yet")
                            }
                        }
                    }
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::debug!(topic = %name, partition, error = %e, "reassignment step failed; will retry")
                }
            }
            me.moving.lock().unwrap().remove(&g.id());
        });
    }

    /// ElectLeaders for one partition: moves leadership to `preferred`
    /// (the first assigned replica), asking the current leader to do it when
    /// that is another broker. Returns a Kafka error code: 0 once
    /// `preferred` leads, ELECTION_NOT_NEEDED if it already did,
    /// PREFERRED_LEADER_NOT_AVAILABLE if it is not in sync or did not take
    /// over within `wait`.
    pub async fn elect_preferred(
        &self,
        log_id: u64,
        leader: Option<i32>,
        preferred: i32,
        wait: Duration,
    ) -> i16 {
        const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
        const ELECTION_NOT_NEEDED: i16 = 84;
        match leader {
            Some(l) if l == preferred => ELECTION_NOT_NEEDED,
            Some(l) if l == self.node_id => self.elect_here(log_id, preferred as u64, wait).await,
            Some(l) => {
                let mut body = Vec::with_capacity(16);
                body.extend_from_slice(&(preferred as u64).to_be_bytes());
                body.extend_from_slice(&(wait.as_millis() as u64).to_be_bytes());
                match self
                    .transport
                    .request(
                        l as u64,
                        kind::ELECT_PREFERRED,
                        log_id,
                        body.into(),
                        wait + Duration::from_secs(5),
                    )
                    .await
                {
                    Ok(b) if b.len() == 2 => i16::from_be_bytes([b[0], b[1]]),
                    _ => PREFERRED_LEADER_NOT_AVAILABLE,
                }
            }
            None => PREFERRED_LEADER_NOT_AVAILABLE,
        }
    }

    async fn elect_here(&self, log_id: u64, preferred: u64, wait: Duration) -> i16 {
        const NOT_LEADER_OR_FOLLOWER: i16 = 6;
        const PREFERRED_LEADER_NOT_AVAILABLE: i16 = 80;
        const ELECTION_NOT_NEEDED: i16 = 84;
        let Some(g) = self.group(log_id) else {
            return NOT_LEADER_OR_FOLLOWER;
        };
        let st = g.status();
        if st.leader == Some(preferred) {
            return ELECTION_NOT_NEEDED;
        }
        if !st.is_leader {
            return NOT_LEADER_OR_FOLLOWER;
        }
        if !st.isr.contains(&preferred) {
            return PREFERRED_LEADER_NOT_AVAILABLE;
        }
        g.transfer_leadership(preferred).await;
        let deadline = Instant::now() + wait;
        loop {
            let (leader, _, _) = g.brief();
            if leader == Some(preferred) {
                return 0;
            }
            if Instant::now() >= deadline {
                return PREFERRED_LEADER_NOT_AVAILABLE;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes on the local controller group only if this broker leads it
    /// (the group coordinator writes as leader, never through forwarding).
    pub async fn propose_as_controller(&self, cmd: ControllerCommand) -> Result<(), TopicError> {
        if !self.controller.status().is_leader {
            return Err(TopicError::Unavailable(
                "this broker no longer leads the controller".into(),
            ));
        }
        match self.controller.propose(Command::Controller(cmd)).await {
            Ok(r) => result_of(r),
            Err(e) => Err(TopicError::Unavailable(e.to_string())),
        }
    }

    pub async fn controller_write(&self, cmd: ControllerCommand) -> Result<(), TopicError> {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if self.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return Err(TopicError::Unavailable(
                    "the broker is shutting down".into(),
                ));
            }
            let st = self.controller.status();
            let attempt: Result<Result<(), TopicError>, String> = if st.is_leader {
                match self
                    .controller
                    .propose(Command::Controller(cmd.clone()))
                    .await
                {
                    Ok(r) => Ok(result_of(r)),
                    Err(e) => Err(e.to_string()),
                }
            } else if let Some(leader) = st.leader.filter(|l| *l != self.node_id as u64) {
                let body = serde_json::to_vec(&cmd).expect("serializes");
                match self
                    .transport
                    .request(
                        leader,
                        kind::FORWARD,
                        CONTROLLER_GROUP,
                        body.into(),
                        Duration::from_secs(10),
                    )
                    .await
                {
                    Ok(resp) => match serde_json::from_slice::<Result<(), (i16, String)>>(&resp) {
                        Ok(Ok(())) => Ok(Ok(())),
                        Ok(Err((code, message))) => Ok(Err(TopicError::Rejected { code, message })),
                        Err(e) => Err(e.to_string()),
                    },
                    Err(e) => Err(e.to_string()),
                }
            } else {
                Err("no controller leader".into())
            };
            match attempt {
                Ok(r) => return r,
                Err(e) if Instant::now() > deadline => {
                    return Err(TopicError::Unavailable(format!(
                        "the regional controller is unavailable: {e}"
                    )))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    }

    /// Writes a transaction marker into partition `log_id` through its
    /// leader: here, or on the broker `leader` names. `Ok(None)`: the
    /// producer had no transaction open there.
    pub async fn write_marker(
        &self,
        log_id: u64,
        leader: i32,
        marker: TxnMarker,
    ) -> Result<Option<i64>, (i16, String)> {
        if leader == self.node_id {
            return self.write_marker_here(log_id, marker).await;
        }
        let body = serde_json::to_vec(&marker).expect("serializes");
        match self
            .transport
            .request(
                leader as u64,
                kind::TXN_MARKER,
                log_id,
                body.into(),
                Duration::from_secs(10),
            )
            .await
        {
            Ok(resp) => serde_json::from_slice(&resp)
                .unwrap_or_else(|e| Err((NOT_LEADER, format!("undecodable answer: {e}")))),
            Err(e) => Err((NOT_LEADER, format!("broker {leader}: {e}"))),
        }
    }

    async fn write_marker_here(
        &self,
        log_id: u64,
        marker: TxnMarker,
    ) -> Result<Option<i64>, (i16, String)> {
        let Some(g) = self.group(log_id) else {
            return Err((NOT_LEADER, "the partition is not hosted here".into()));
        };
        if !g.status().is_leader {
            return Err((NOT_LEADER, "this broker does not lead the partition".into()));
        }
        match tokio::time::timeout(
            Duration::from_secs(10),
            g.submit(Command::TxnMarker(marker)),
        )
        .await
        {
            Ok(Ok(Ok(CommandResult::Marked { offset }))) => Ok(offset),
            Ok(Ok(Ok(CommandResult::Rejected { code, message }))) => Err((code, message)),
            Ok(Ok(Ok(other))) => Err((NOT_LEADER, format!("unexpected result {other:?}"))),
            Ok(Ok(Err(e))) => Err((NOT_LEADER, e.to_string())),
            Ok(Err(e)) => Err((NOT_LEADER, e.to_string())),
            Err(_) => Err((NOT_LEADER, "the marker did not commit within 10 s".into())),
        }
    }

    /// The replica group for a partition hosted here.
    pub fn group(&self, log_id: u64) -> Option<Arc<dyn ReplicaGroup>> {
        self.groups.read().unwrap().get(&log_id).cloned()
    }

    /// The group if this broker leads the partition and a quorum has
    /// acknowledged it recently (a leader cut off from its followers stops
    /// claiming leadership to clients before a new one is elected).
    pub fn leader_group(&self, log: &PartitionLog) -> Option<(Arc<dyn ReplicaGroup>, GroupStatus)> {
        let g = self.group(log.log_id)?;
        let st = g.status();
        // Clients learn the epoch from Metadata (the term) and send it back;
        // the log must know it before it is asked.
        log.note_term(st.term.min(i32::MAX as u64) as i32);
        st.leader_fresh.then_some((g, st))
    }

    /// [`Cluster::leader_group`] for a read at `offset`. An offset past the
    /// log end is answered OFFSET_OUT_OF_RANGE, and a consumer then resets
    /// its position, so that answer must come from the current leader: a
    /// quiescent leader that was cut off cannot tell from its own state
    /// that a successor has committed more. Only then is leadership
    /// confirmed with a quorum round.
    pub async fn leader_for_read(&self, log: &PartitionLog, offset: i64) -> bool {
        let Some(g) = self.group(log.log_id) else {
            return false;
        };
        // Every fetch asks this of every partition it names: the cheap
        // question, not the whole status.
        let Some(term) = g.serving_term() else {
            return false;
        };
        log.note_term(term.min(i32::MAX as u64) as i32);
        offset <= log.log_end_offset() || g.confirm_leadership().await
    }

    /// A peer's claim to lead group `id`, if it repeated it recently. Leaders
    /// repeat their claims every 250 ms; a claim that stopped coming is from
    /// a broker that no longer leads (it stepped down on seeing a higher
    /// term), and trusting it forever would leave the group without anyone
    /// starting an election.
    fn fresh_hint(&self, id: u64) -> Option<Hint> {
        let stale = Duration::from_millis(self.settings.election_max_ms * 2 + 1000);
        self.hints
            .lock()
            .unwrap()
            .get(&id)
            .filter(|h| h.at.elapsed() <= stale)
            .cloned()
    }

    /// Leader, epoch, replicas and ISR of a partition, from the local group
    /// when hosted here and from peers' leader hints otherwise (the newest
    /// term wins).
    pub fn view(&self, t: &Topic, log: &PartitionLog) -> PartitionView {
        let replicas = self.replicas_of(t, log.partition);
        // (term, leader, isr, the epoch clients see)
        let mut best: Option<(u64, i32, Vec<i32>, i32)> = None;
        if let Some(g) = self.group(log.log_id) {
            // Only the leader knows the ISR; elsewhere the cheap brief() does,
            // since Metadata asks this for every partition.
            let (leader, term, is_leader) = g.brief();
            log.note_term(term.min(i32::MAX as u64) as i32);
            if let Some(l) = leader {
                let isr = if is_leader {
                    g.status().isr.iter().map(|i| *i as i32).collect()
                } else {
                    Vec::new()
                };
                best = Some((term, l as i32, isr, log.leader_epoch()));
            }
        }
        if let Some(h) = self.fresh_hint(log.log_id) {
            let newer = best.as_ref().is_none_or(|(term, _, isr, _)| {
                h.term > *term || (h.term == *term && isr.is_empty())
            });
            if newer {
                let epoch = h.epoch.max(log.leader_epoch());
                best = Some((h.term, h.leader, h.isr.clone(), epoch));
            }
        }
        match best {
            Some((_, leader, mut isr, epoch)) => {
                if isr.is_empty() {
                    isr = vec![leader];
                }
                PartitionView {
                    leader: Some(leader),
                    epoch,
                    replicas,
                    isr,
                }
            }
            None => PartitionView {
                leader: None,
                epoch: log.leader_epoch(),
                replicas,
                isr: Vec::new(),
            },
        }
    }

    /// Waits (bounded) until every partition of `t` has a known leader, so
    /// a client told "created" can produce at once.
    pub async fn wait_leaders(&self, t: &Topic, within: Duration) {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if t.partitions
                .iter()
                .all(|p| self.view(t, p).leader.is_some())
            {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits (bounded) for the controller to have a leader.
    pub async fn wait_controller(&self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while Instant::now() < deadline {
            if self.controller.status().leader.is_some() {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        false
    }

    /// Every replica group's status, for the admin API.
    pub fn local_status(&self, log_id: u64) -> Option<GroupStatus> {
        self.group(log_id).map(|g| g.status())
    }

    /// A local replica's Raft internals, for people debugging a stall.
    pub fn local_debug(&self, log_id: u64) -> Option<GroupDebug> {
        self.group(log_id).map(|g| g.debug())
    }

    pub async fn shutdown(&self) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Release);
        let groups: Vec<_> = self
            .groups
            .write()
            .unwrap()
            .drain()
            .map(|(_, g)| g)
            .collect();
        for g in groups {
            g.shutdown().await;
        }
        self.controller.shutdown().await;
        self.transport.close_all();
    }
}

fn result_of(r: CommandResult) -> Result<(), TopicError> {
    match r {
        CommandResult::Rejected { code, message } => Err(TopicError::Rejected { code, message }),
        _ => Ok(()),
    }
}

/// The transport's view of the cluster; weak, so a stopped broker's
/// storage can close while peer sockets linger.
struct InboundRef(Weak<Cluster>);

impl Inbound for InboundRef {
    fn request(&self, from: u64, frame: Frame) -> BoxFuture<'static, Result<Bytes, String>> {
        match self.0.upgrade() {
            Some(c) => c.inbound_request(from, frame),
            None => Box::pin(async { Err("broker shutting down".to_string()) }),
        }
    }

    fn notify(&self, from: u64, frame: Frame) {
        if let Some(c) = self.0.upgrade() {
            c.inbound_notify(from, frame)
        }
    }

    fn probe(&self, id: u64) -> Probed {
        let Some(c) = self.0.upgrade() else {
            return Probed::default();
        };
        let st = c.controller.status();
        Probed {
            known: c.catalog.brokers().iter().any(|b| b.id as u64 == id),
            running: !st.voters.is_empty(),
            member: st.voters.contains(&id) || st.learners.contains(&id),
            removed: c
                .catalog
                .members()
                .iter()
                .any(|m| m.id as u64 == id && m.state == crate::catalog::MemberState::Removed),
        }
    }
}

impl Cluster {
    fn inbound_request(
        self: &Arc<Self>,
        _from: u64,
        frame: Frame,
    ) -> BoxFuture<'static, Result<Bytes, String>> {
        let group: Option<Arc<dyn ReplicaGroup>> = if frame.group == CONTROLLER_GROUP {
            Some(self.controller.clone())
        } else {
            self.group(frame.group)
        };
        if frame.kind == kind::ELECT_PREFERRED {
            let me = self.clone();
            return Box::pin(async move {
                let b = &frame.body;
                if b.len() != 16 {
                    return Err("malformed ELECT_PREFERRED".into());
                }
                let preferred = u64::from_be_bytes(b[..8].try_into().unwrap());
                let wait = Duration::from_millis(u64::from_be_bytes(b[8..].try_into().unwrap()));
                let code = me.elect_here(frame.group, preferred, wait).await;
                Ok(Bytes::copy_from_slice(&code.to_be_bytes()))
            });
        }
        if frame.kind == kind::TXN_MARKER {
            let me = self.clone();
            return Box::pin(async move {
                let marker: TxnMarker =
                    serde_json::from_slice(&frame.body).map_err(|e| e.to_string())?;
                let r = me.write_marker_here(frame.group, marker).await;
                Ok(serde_json::to_vec(&r).expect("serializes").into())
            });
        }
        if frame.kind == kind::FORWARD {
            let controller = self.controller.clone();
            return Box::pin(async move {
                let cmd: ControllerCommand =
                    serde_json::from_slice(&frame.body).map_err(|e| e.to_string())?;
                let r = match controller.propose(Command::Controller(cmd)).await {
                    Ok(CommandResult::Rejected { code, message }) => Err((code, message)),
                    Ok(_) => Ok(()),
                    Err(ProposeError::NotLeader(_)) => {
                        return Err("not the controller leader".into())
                    }
                    Err(e) => return Err(e.to_string()),
                };
                Ok(serde_json::to_vec(&r).expect("serializes").into())
            });
        }
        Box::pin(async move {
            match group {
                Some(g) => g.handle(frame.kind, frame.body).await,
                None => Err(format!("group {} is not hosted here (yet)", frame.group)),
            }
        })
    }

    fn inbound_notify(&self, from: u64, frame: Frame) {
        if frame.kind != kind::LEADERS {
            return;
        }
        let Ok(msg) = codec::PbLeaders::decode(frame.body) else {
            return;
        };
        let now = Instant::now();
        let mut hints = self.hints.lock().unwrap();
        for g in msg.groups {
            let keep = hints.get(&g.group).is_some_and(|h| h.term > g.term);
            if !keep {
                hints.insert(
                    g.group,
                    Hint {
                        leader: from as i32,
                        term: g.term,
                        isr: g.isr,
                        epoch: g.epoch.max(g.term.min(i32::MAX as u64) as i32),
                        at: now,
                    },
                );
            }
        }
    }
}

/// Brokers by id for Metadata.
pub fn endpoints(catalog: &Catalog) -> BTreeMap<i32, BrokerEndpoint> {
    catalog.brokers().into_iter().map(|e| (e.id, e)).collect()
}
