//! One Raft group behind our own interface. This is the only place that
//! drives openraft's `Raft` handle, so an openraft upgrade touches `raft/`
//! and nothing else.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures_util::future::BoxFuture;
use openraft::async_runtime::{Instant as _, WatchReceiver};
use openraft::error::{RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::v2::RaftNetworkV2;
use openraft::network::{RPCOption, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderError,
    TransferLeaderRequest, TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{Config, OptionalSend, SnapshotPolicy};
use prost::Message;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::codec::{self, kind};
use super::log_store::LogStore;
use super::sm::{PbPartitionDesc, SnapshotData, Staged, StateMachine, Target};
use super::transport::{Transport, TransportError};
use super::types::{Command, CommandResult, TypeConfig, Vote};
use crate::log::PartitionLog;
use crate::storage::Store;
use crate::storage::{log_key, IndexEntry, CF_INDEX, CF_LOG};

type Raft = openraft::Raft<TypeConfig, StateMachine>;
type Snapshot = openraft::alias::SnapshotOf<TypeConfig, SnapshotData>;

/// Timing and log-compaction knobs shared by every group of a broker.
#[derive(Debug, Clone)]
pub struct RaftSettings {
    pub heartbeat_ms: u64,
    pub election_min_ms: u64,
    pub election_max_ms: u64,
    /// Build a snapshot (and purge the Raft log behind it) after this many
    /// applied entries.
    pub snapshot_every: u64,
    /// Entries kept behind the snapshot for followers that lag slightly.
    pub keep_behind_snapshot: u64,
    /// A follower that has not caught up to the commit index for this long
    /// is out of the ISR.
    pub replica_lag: Duration,
    /// Quiescent groups send no heartbeats and never start elections on
    /// their own timers; the broker drives both from node-level liveness
    /// (see `cluster.rs`), so a thousand idle partitions cost nothing.
    pub quiescent: bool,
}

/// Whether a peer broker is alive (node-level failure detection).
pub type Liveness = Arc<dyn Fn(u64) -> bool + Send + Sync>;

/// What the rest of the broker sees of a group.
#[derive(Debug, Clone, Default)]
pub struct GroupStatus {
    pub leader: Option<u64>,
    pub term: u64,
    pub is_leader: bool,
    /// Replicas caught up within `replica_lag` (the leader included). Only
    /// the leader knows; elsewhere empty.
    pub isr: Vec<u64>,
    pub voters: Vec<u64>,
    /// Members that receive the log without voting (a replica or broker
    /// being added, until it has caught up).
    pub learners: Vec<u64>,
    /// On the leader: time since a quorum last acknowledged it.
    pub quorum_ack_age: Option<Duration>,
    /// On the leader: whether it can still count on a quorum (recent quorum
    /// acknowledgement, or for quiescent groups a live majority of voters).
    /// A leader cut off from its followers stops serving before a new one
    /// is elected.
    pub leader_fresh: bool,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    pub last_log_index: Option<u64>,
    /// The newest Raft log entry purged after a snapshot: entries up to here
    /// reach a lagging follower only by snapshot install.
    pub purged_index: Option<u64>,
    pub snapshot_index: Option<u64>,
    /// On the leader: voters other than itself whose log reaches the
    /// commit index right now and whose broker is alive. Unlike the ISR
    /// (caught up at some point within `replica_lag`), this is what a
    /// leadership transfer needs: a target that is behind refuses it.
    pub caught_up_now: Vec<u64>,
    /// On the leader: for each other voter, how long it has not held every
    /// committed entry (zero when it does now; counted from when this
    /// broker took the lead if it never has since).
    pub follower_lag: Vec<(u64, Duration)>,
}

/// Everything a person debugging a stalled partition wants to see of one
/// replica's Raft state, as served by `/v1/partitions/<t>/<p>` (`raft`).
#[derive(Debug, Clone, serde::Serialize)]
pub struct GroupDebug {
    pub state: String,
    pub vote: String,
    pub leader: Option<u64>,
    pub last_log_index: Option<u64>,
    pub committed_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// On the leader: time since a quorum last acknowledged it (the lease).
    pub quorum_ack_age_ms: Option<u64>,
    /// On the leader: per follower, the last log index it is known to hold.
    pub replication: BTreeMap<u64, Option<u64>>,
    /// On the leader: per follower, time since it last acknowledged a
    /// heartbeat or an append.
    pub heartbeat_ack_age_ms: BTreeMap<u64, Option<u64>>,
    /// Peers the node-level failure detector considers alive.
    pub peers_alive: BTreeMap<u64, bool>,
    pub submitter: SubmitterView,
    /// A leadership transfer this replica started and has not seen through.
    pub transfer: Option<TransferView>,
}

#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct SubmitterView {
    /// Commands submitted and not yet handed to openraft.
    pub queued: u64,
    /// `idle`, `renewing lease` or `proposing`.
    pub phase: &'static str,
    pub phase_age_ms: u64,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct TransferView {
    pub to: u64,
    pub term: u64,
    pub age_ms: u64,
    pub attempts: u32,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProposeError {
    #[error("not the leader (leader: {0:?})")]
    NotLeader(Option<u64>),
    #[error("{0}")]
    Unavailable(String),
}

/// The interface the broker programs against; [`OpenraftGroup`] is the one
/// implementation.
pub trait ReplicaGroup: Send + Sync + 'static {
    fn id(&self) -> u64;
    fn status(&self) -> GroupStatus;
    /// Leader, term and whether this replica leads, without building the
    /// full status (cheap enough to poll every group often).
    fn brief(&self) -> (Option<u64>, u64, bool);
    /// Queues a command. Commands submitted from one task are proposed in
    /// submission order (a producer's pipelined batches stay in order).
    fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<CommandResult, ProposeError>>;
    fn propose(&self, cmd: Command) -> BoxFuture<'_, Result<CommandResult, ProposeError>> {
        let rx = self.submit(cmd);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(ProposeError::Unavailable("the group stopped".into())))
        })
    }
    /// Serves a Raft RPC that arrived from a peer.
    fn handle(&self, kind: i32, body: Bytes) -> BoxFuture<'_, Result<Bytes, String>>;
    /// Bootstraps the group with `members` as voters if it has no state yet.
    fn initialize(&self, members: Vec<u64>) -> BoxFuture<'_, bool>;
    fn is_initialized(&self) -> BoxFuture<'_, bool>;
    fn shutdown(&self) -> BoxFuture<'_, ()>;
    /// Asks `to` to take over leadership (preferred-leader balancing,
    /// reassignment), and sees it through: see [`see_transfer_through`].
    fn transfer_leadership(&self, to: u64) -> BoxFuture<'_, ()>;
    /// The replica's Raft state for people debugging it.
    fn debug(&self) -> GroupDebug;
    /// Starts an election (after a pre-vote, so a healthy leader stays).
    fn elect(&self) -> BoxFuture<'_, ()>;
    /// Sends one round of heartbeats now (a leader, to re-sync followers).
    fn heartbeat(&self) -> BoxFuture<'_, ()>;
    /// Whether a quorum still follows this leader, asked now (Raft's
    /// ReadIndex: one heartbeat round, then the state machine has applied
    /// everything committed before it). False when no quorum answers
    /// within an election timeout. For the rare answers a stale leader
    /// must never give, like OFFSET_OUT_OF_RANGE.
    fn confirm_leadership(&self) -> BoxFuture<'_, bool>;
    /// A leader no quorum has acknowledged in this process yet: openraft
    /// restores a leader from its committed vote on disk at startup, and
    /// only a heartbeat round tells whether a successor was elected since.
    fn leadership_unconfirmed(&self) -> bool;
    /// The term, if this replica leads and may serve
    /// ([`GroupStatus::leader_fresh`]): what every produce and fetch asks,
    /// so without building the whole status.
    fn serving_term(&self) -> Option<u64> {
        let st = self.status();
        st.leader_fresh.then_some(st.term)
    }
    /// Removes the group's Raft state (its partition was deleted).
    fn destroy_into(&self, wb: &mut rocksdb::WriteBatch);
    /// On the leader, one step towards voters = `target` (partition
    /// reassignment): new replicas join as learners first, and the voter
    /// change (a joint-consensus change) waits until they have caught up.
    /// `Ok(true)` once the voters are `target` and no learner remains.
    fn change_voters(&self, target: Vec<u64>) -> BoxFuture<'_, Result<bool, String>>;
}

pub struct OpenraftGroup {
    id: u64,
    node: u64,
    raft: Raft,
    log: LogStore,
    sm: StateMachine,
    replica_lag: Duration,
    election_max: Duration,
    quiescent: bool,
    alive: Liveness,
    caught_up: Mutex<HashMap<u64, Instant>>,
    /// (term, when this broker saw itself lead in it): the baseline of
    /// follower lag for a follower not caught up since.
    leading_since: Mutex<(u64, Instant)>,
    queue: mpsc::UnboundedSender<(
        Command,
        oneshot::Sender<Result<CommandResult, ProposeError>>,
    )>,
    /// A partition group's log, for snapshot transfers.
    partition: Option<(Arc<PartitionLog>, Arc<Store>)>,
    /// Batches received for a snapshot install in progress.
    staged: Mutex<Option<Arc<Mutex<Staged>>>>,
    submitting: Arc<SubmitterStats>,
    transfer: Arc<Mutex<Option<Transfer>>>,
    election_min: Duration,
}

/// What the submitter is doing, shared with the debug view.
struct SubmitterStats {
    queued: std::sync::atomic::AtomicU64,
    phase: Mutex<(&'static str, Instant)>,
}

impl SubmitterStats {
    fn enter(&self, phase: &'static str) {
        *self.phase.lock().unwrap() = (phase, Instant::now());
    }
}

#[derive(Debug, Clone)]
struct Transfer {
    to: u64,
    term: u64,
    since: Instant,
    attempts: u32,
}

type Proposal = (
    Command,
    oneshot::Sender<Result<CommandResult, ProposeError>>,
);

/// Resolves once this replica leads but its broker-level failure detector
/// sees no live majority of the voters: the quiescent-group equivalent of
/// a lost lease. A write waiting for a commit that cannot come should not
/// hold the client for its whole request timeout (30 s by default), when
/// a new leader is elected on the other side within seconds.
async fn cut_off(raft: &Raft, alive: &Liveness) {
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let lost = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
            let live = voters
                .iter()
                .filter(|v| Some(**v) == m.current_leader || alive(**v))
                .count();
            m.state.is_leader() && voters.len() > 1 && live * 2 <= voters.len()
        };
        if lost {
            return;
        }
    }
}

/// `raft_log_replay_duration_seconds`: from opening the group until its
/// state machine has applied what the log had committed when it opened.
async fn time_replay(raft: Raft, started: Instant) {
    let mut m = raft.metrics();
    let target = m
        .borrow_watched()
        .local_committed
        .as_ref()
        .map(|l| l.index());
    let replayed = tokio::time::timeout(Duration::from_secs(600), async {
        loop {
            let applied = m.borrow_watched().last_applied.as_ref().map(|l| l.index());
            if applied >= target {
                return true;
            }
            if m.changed().await.is_err() {
                return false;
            }
        }
    })
    .await;
    if replayed == Ok(true) {
        metrics::histogram!("raft_log_replay_duration_seconds")
            .record(started.elapsed().as_secs_f64());
    }
}

/// `raft_leadership_changes_total` and `raft_membership_changes_total`,
/// counted by the broker that leads: elections it won, and membership
/// changes committed while it led. openraft's server metrics change only
/// on such events, not on every append, so this task sleeps otherwise.
async fn count_role_changes(raft: Raft, node: u64) {
    let mut m = raft.server_metrics();
    let (mut leading, mut membership) = {
        let s = m.borrow_watched();
        (
            s.state.is_leader() && s.current_leader == Some(node),
            *s.committed_membership_config.log_id(),
        )
    };
    while m.changed().await.is_ok() {
        let s = m.borrow_watched().clone();
        let leads = s.state.is_leader() && s.current_leader == Some(node);
        if leads && !leading {
            metrics::counter!("raft_leadership_changes_total").increment(1);
        }
        leading = leads;
        let committed = *s.committed_membership_config.log_id();
        if committed != membership {
            if leads {
                metrics::counter!("raft_membership_changes_total").increment(1);
            }
            membership = committed;
        }
    }
}

/// Feeds queued commands to openraft one at a time, so their order in the
/// Raft log is their submission order; results are awaited concurrently.
///
/// openraft refuses writes on a leader whose lease (a quorum ack within
/// `lease`) has run out, and an idle quiescent group exchanges nothing that
/// would renew it. So before writing to such a group the submitter renews
/// the lease with one heartbeat round and waits (bounded) for the acks;
/// doing it here keeps the submission order.
async fn submitter(
    raft: Raft,
    mut rx: mpsc::UnboundedReceiver<Proposal>,
    quiescent: bool,
    lease: Duration,
    stats: Arc<SubmitterStats>,
    alive: Liveness,
) {
    use std::sync::atomic::Ordering;
    let fresh = |raft: &Raft| {
        let m = raft.metrics();
        let m = m.borrow_watched();
        // A single voter is its own quorum: its lease never runs out.
        !m.state.is_leader()
            || m.membership_config.membership().voter_ids().count() <= 1
            || m.last_quorum_acked
                .as_ref()
                .is_some_and(|t| (**t).elapsed() < lease / 2)
    };
    while let Some((cmd, tx)) = rx.recv().await {
        stats.queued.fetch_sub(1, Ordering::Relaxed);
        if quiescent && !fresh(&raft) {
            stats.enter("renewing lease");
            let _ = raft.trigger().heartbeat().await;
            let deadline = Instant::now() + lease;
            while !fresh(&raft) && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        }
        stats.enter("proposing");
        let (responder, done) = openraft::impls::ProgressResponder::complete_only();
        let proposed = raft.write(cmd).responder(responder).await;
        stats.enter("idle");
        if proposed.is_err() {
            let _ = tx.send(Err(ProposeError::Unavailable("raft stopped".into())));
            continue;
        }
        let (raft, alive) = (raft.clone(), alive.clone());
        tokio::spawn(async move {
            let mut done = done;
            let outcome = if quiescent {
                tokio::select! {
                    r = &mut done => Some(r),
                    _ = cut_off(&raft, &alive) => None,
                }
            } else {
                Some(done.await)
            };
            let Some(outcome) = outcome else {
                // The entry may still commit if this leader keeps its
                // role, so the outcome is unknown (REQUEST_TIMED_OUT):
                // an idempotent retry is deduplicated either way.
                let _ = tx.send(Err(ProposeError::Unavailable(
                    "the leader is cut off from a majority of its replicas".into(),
                )));
                return;
            };
            let r = match outcome {
                Ok(Ok(w)) => Ok(w.data),
                Ok(Err(openraft::error::ClientWriteError::ForwardToLeader(f))) => {
                    Err(ProposeError::NotLeader(f.leader_id))
                }
                Ok(Err(e)) => Err(ProposeError::Unavailable(e.to_string())),
                Err(_) => Err(ProposeError::Unavailable("raft stopped".into())),
            };
            let _ = tx.send(r);
        });
    }
}

impl OpenraftGroup {
    /// No leader, or one whose broker the failure detector sees as dead.
    fn leader_gone(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        !m.state.is_leader()
            && m.current_leader
                .is_none_or(|l| l != self.node && !(self.alive)(l))
    }

    pub async fn start(
        id: u64,
        node: u64,
        settings: &RaftSettings,
        store: Arc<Store>,
        transport: Arc<Transport>,
        target: Target,
        on_change: Arc<dyn Fn() + Send + Sync>,
        alive: Liveness,
    ) -> Result<Arc<OpenraftGroup>, String> {
        let config = Config {
            cluster_name: "chronik".into(),
            heartbeat_interval: settings.heartbeat_ms,
            election_timeout_min: settings.election_min_ms,
            election_timeout_max: settings.election_max_ms,
            snapshot_policy: SnapshotPolicy::LogsSinceLast(settings.snapshot_every),
            max_in_snapshot_log_to_keep: settings.keep_behind_snapshot,
            enable_pre_vote: Some(true),
            // No tick at all: a tick per group is what costs CPU when a
            // thousand partitions sit idle.
            enable_tick: !settings.quiescent,
            enable_heartbeat: !settings.quiescent,
            enable_elect: !settings.quiescent,
            ..Default::default()
        }
        .validate()
        .map_err(|e| e.to_string())?;
        let log = LogStore::new(store.clone(), id);
        let partition = match &target {
            Target::Partition { log, .. } => Some((log.clone(), store.clone())),
            Target::Controller(_) => None,
        };
        let sm = StateMachine::new(store, id, target, on_change);
        let net = Net {
            transport,
            group: id,
            partition: partition.clone(),
        };
        let started = Instant::now();
        let raft = Raft::new(node, Arc::new(config), net, log.clone(), sm.clone())
            .await
            .map_err(|e| e.to_string())?;
        tokio::spawn(time_replay(raft.clone(), started));
        tokio::spawn(count_role_changes(raft.clone(), node));
        let (queue, rx) = mpsc::unbounded_channel();
        let submitting = Arc::new(SubmitterStats {
            queued: Default::default(),
            phase: Mutex::new(("idle", Instant::now())),
        });
        tokio::spawn(submitter(
            raft.clone(),
            rx,
            settings.quiescent,
            Duration::from_millis(settings.election_max_ms),
            submitting.clone(),
            alive.clone(),
        ));
        Ok(Arc::new(OpenraftGroup {
            submitting,
            transfer: Arc::new(Mutex::new(None)),
            election_min: Duration::from_millis(settings.election_min_ms),
            partition,
            staged: Mutex::new(None),
            queue,
            id,
            node,
            raft,
            log,
            sm,
            replica_lag: settings.replica_lag,
            election_max: Duration::from_millis(settings.election_max_ms),
            quiescent: settings.quiescent,
            alive,
            caught_up: Mutex::new(HashMap::new()),
            leading_since: Mutex::new((0, Instant::now())),
        }))
    }
}

impl ReplicaGroup for OpenraftGroup {
    fn id(&self) -> u64 {
        self.id
    }

    fn serving_term(&self) -> Option<u64> {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        if !(m.current_leader == Some(self.node) && m.state.is_leader()) {
            return None;
        }
        // Outside a membership change the voters are one set: read it in
        // place (voter_ids() builds a new set on every call).
        let fresh = match m
            .membership_config
            .membership()
            .get_joint_config()
            .as_slice()
        {
            [one] => self.fresh(&m, one.iter().copied()),
            _ => {
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                self.fresh(&m, voters.into_iter())
            }
        };
        fresh.then_some(m.current_term)
    }

    fn brief(&self) -> (Option<u64>, u64, bool) {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        let is_leader = m.current_leader == Some(self.node) && m.state.is_leader();
        (m.current_leader, m.current_term, is_leader)
    }

    fn status(&self) -> GroupStatus {
        let m = self.raft.metrics().borrow_watched().clone();
        let is_leader = m.current_leader == Some(self.node) && m.state.is_leader();
        let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
        let learners: Vec<u64> = m.membership_config.membership().learner_ids().collect();
        let committed = m.local_committed.as_ref().map(|l| l.index());
        let mut isr = Vec::new();
        let mut caught_up_now = Vec::new();
        let mut follower_lag = Vec::new();
        if is_leader {
            isr.push(self.node);
            let now = Instant::now();
            let since = {
                let mut l = self.leading_since.lock().unwrap();
                if l.0 != m.current_term {
                    *l = (m.current_term, now);
                }
                l.1
            };
            let mut cu = self.caught_up.lock().unwrap();
            if let (Some(rep), Some(hb)) = (&m.replication, &m.heartbeat) {
                for (node, matched) in rep.iter() {
                    // Learners (replicas being added) are not in sync yet.
                    if *node == self.node || !voters.contains(node) {
                        continue;
                    }
                    // Idle quiescent groups exchange nothing, so there
                    // liveness comes from the node-level detector.
                    let acked_recently = if self.quiescent {
                        (self.alive)(*node)
                    } else {
                        hb.get(node)
                            .and_then(|t| t.as_ref())
                            .is_some_and(|t| (**t).elapsed() <= self.replica_lag)
                    };
                    let caught = matched.as_ref().map(|l| l.index()) >= committed;
                    if caught && acked_recently {
                        cu.insert(*node, now);
                        caught_up_now.push(*node);
                    }
                    if acked_recently
                        && cu
                            .get(node)
                            .is_some_and(|t| now.saturating_duration_since(*t) <= self.replica_lag)
                    {
                        isr.push(*node);
                    }
                    let last = cu.get(node).map_or(since, |t| (*t).max(since));
                    follower_lag.push((*node, now.saturating_duration_since(last)));
                }
            }
            isr.sort_unstable();
        }
        let leader_fresh = is_leader && self.fresh(&m, voters.iter().copied());
        GroupStatus {
            leader_fresh,
            leader: m.current_leader,
            term: m.current_term,
            is_leader,
            isr,
            voters,
            learners,
            quorum_ack_age: m.last_quorum_acked.as_ref().map(|t| (**t).elapsed()),
            committed_index: committed,
            applied_index: m.last_applied.as_ref().map(|l| l.index()),
            last_log_index: m.last_log_index,
            purged_index: m.purged.as_ref().map(|l| l.index()),
            snapshot_index: m.snapshot.as_ref().map(|l| l.index()),
            caught_up_now,
            follower_lag,
        }
    }

    fn debug(&self) -> GroupDebug {
        let m = self.raft.metrics().borrow_watched().clone();
        let ms = |d: Duration| d.as_millis().min(u64::MAX as u128) as u64;
        let replication = m
            .replication
            .as_ref()
            .map(|r| {
                r.iter()
                    .map(|(n, l)| (*n, l.as_ref().map(|l| l.index())))
                    .collect()
            })
            .unwrap_or_default();
        let heartbeat_ack_age_ms = m
            .heartbeat
            .as_ref()
            .map(|h| {
                h.iter()
                    .map(|(n, t)| (*n, t.as_ref().map(|t| ms((**t).elapsed()))))
                    .collect()
            })
            .unwrap_or_default();
        let peers_alive = m
            .membership_config
            .membership()
            .nodes()
            .map(|(n, _)| *n)
            .filter(|n| *n != self.node)
            .map(|n| (n, (self.alive)(n)))
            .collect();
        let (phase, since) = *self.submitting.phase.lock().unwrap();
        GroupDebug {
            state: format!("{:?}", m.state),
            vote: m.vote.to_string(),
            leader: m.current_leader,
            last_log_index: m.last_log_index,
            committed_index: m.local_committed.as_ref().map(|l| l.index()),
            applied_index: m.last_applied.as_ref().map(|l| l.index()),
            quorum_ack_age_ms: m.last_quorum_acked.as_ref().map(|t| ms((**t).elapsed())),
            replication,
            heartbeat_ack_age_ms,
            peers_alive,
            submitter: SubmitterView {
                queued: self
                    .submitting
                    .queued
                    .load(std::sync::atomic::Ordering::Relaxed),
                phase,
                phase_age_ms: ms(since.elapsed()),
            },
            transfer: self
                .transfer
                .lock()
                .unwrap()
                .as_ref()
                .map(|t| TransferView {
                    to: t.to,
                    term: t.term,
                    age_ms: ms(t.since.elapsed()),
                    attempts: t.attempts,
                }),
        }
    }

    fn submit(&self, cmd: Command) -> oneshot::Receiver<Result<CommandResult, ProposeError>> {
        let (tx, rx) = oneshot::channel();
        self.submitting
            .queued
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if let Err(mpsc::error::SendError((_, tx))) = self.queue.send((cmd, tx)) {
            let _ = tx.send(Err(ProposeError::Unavailable("the group stopped".into())));
        }
        rx
    }

    fn handle(&self, k: i32, body: Bytes) -> BoxFuture<'_, Result<Bytes, String>> {
        Box::pin(async move {
            match k {
                kind::APPEND => {
                    let req = codec::PbAppendRequest::decode(body).map_err(|e| e.to_string())?;
                    let req = codec::append_req_from_pb(req).map_err(|e| e.to_string())?;
                    let resp = self
                        .raft
                        .append_entries(req)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(codec::append_resp_to_pb(&resp).encode_to_vec().into())
                }
                kind::VOTE | kind::PRE_VOTE => {
                    let req = codec::PbVoteRequest::decode(body).map_err(|e| e.to_string())?;
                    let req = codec::vote_req_from_pb(req).map_err(|e| e.to_string())?;
                    let candidate_log = req.last_log_id;
                    let resp = if k == kind::VOTE {
                        self.raft.vote(req).await
                    } else {
                        self.raft.pre_vote(req).await
                    }
                    .map_err(|e| e.to_string())?;
                    if self.quiescent
                        && !resp.vote_granted
                        && candidate_log < resp.last_log_id
                        && self.leader_gone()
                    {
                        // The broker picks one replica per leaderless group
                        // to campaign (the first live one in preference
                        // order), but it cannot win when its log is behind
                        // ours, which is normal: a leader commits on the
                        // fastest majority. The others would wait twice the
                        // election timeout before trying, so a stale
                        // candidate held writes up for 5 s. We know it
                        // cannot win and we can: campaign now (pre-vote
                        // first, so a live leader is never disturbed).
                        let raft = self.raft.clone();
                        tokio::spawn(async move {
                            let _ = raft.trigger().elect(true).await;
                        });
                    }
                    Ok(codec::vote_resp_to_pb(&resp).encode_to_vec().into())
                }
                kind::SNAP_BEGIN => {
                    let (log, _) = self.partition.as_ref().ok_or("not a partition group")?;
                    let leader = codec::PbSnapBegin::decode(body).map_err(|e| e.to_string())?;
                    let mut staged = Staged::default();
                    let mut log_end = log.log_end_offset();
                    if !leader.epochs.is_empty() {
                        // Batches this log holds that the leader's does not
                        // are replaced from where the two leave each other.
                        let ours = log.epoch_history();
                        let theirs: Vec<(i32, i64)> = leader
                            .epochs
                            .iter()
                            .copied()
                            .zip(leader.epoch_starts.iter().copied())
                            .collect();
                        let d = chronik_wire::epochs::divergence(
                            chronik_wire::epochs::LogShape {
                                epochs: &ours,
                                log_start: log.log_start_offset(),
                                log_end,
                            },
                            chronik_wire::epochs::LogShape {
                                epochs: &theirs,
                                log_start: leader.log_start,
                                log_end: leader.log_end,
                            },
                        );
                        if d < log_end {
                            tracing::warn!(topic = %log.topic, partition = log.partition, from = d, log_end, "this replica's log leaves the leader's: the snapshot replaces it from there");
                            staged.cut_from = Some(d);
                            log_end = d;
                        }
                    }
                    *self.staged.lock().unwrap() = Some(Arc::new(Mutex::new(staged)));
                    Ok(codec::PbSnapBeginResponse {
                        log_end,
                        log_start: log.log_start_offset(),
                    }
                    .encode_to_vec()
                    .into())
                }
                kind::SNAP_CHUNK => {
                    let (log, store) = self.partition.as_ref().ok_or("not a partition group")?;
                    let staged = self
                        .staged
                        .lock()
                        .unwrap()
                        .clone()
                        .ok_or("no snapshot transfer in progress")?;
                    let chunk = codec::PbSnapChunk::decode(body).map_err(|e| e.to_string())?;
                    if chunk.keys.len() != chunk.batches.len()
                        || chunk.keys.len() != chunk.index.len()
                    {
                        return Err("malformed snapshot chunk".into());
                    }
                    // Data first, without index entries: invisible until
                    // the install commits them.
                    let mut wb = rocksdb::WriteBatch::default();
                    for (k, b) in chunk.keys.iter().zip(&chunk.batches) {
                        if k.len() != 16 || k[..8] != log.log_id.to_be_bytes() {
                            return Err("snapshot chunk for another log".into());
                        }
                        wb.put_cf(store.cf(CF_LOG), k, b);
                    }
                    store.write(wb).await.map_err(|e| e.to_string())?;
                    let mut st = staged.lock().unwrap();
                    if chunk.reset_to >= 0 {
                        st.reset_to = Some(chunk.reset_to);
                    }
                    st.index.extend(chunk.keys.into_iter().zip(chunk.index));
                    Ok(Bytes::new())
                }
                kind::SNAPSHOT => {
                    let req = codec::PbSnapshot::decode(body).map_err(|e| e.to_string())?;
                    let vote = codec::vote_from_pb(&req.vote).map_err(|e| e.to_string())?;
                    let membership = match &req.membership {
                        Some(m) => codec::membership_from_pb(m).map_err(|e| e.to_string())?,
                        None => Default::default(),
                    };
                    let meta = openraft::alias::SnapshotMetaOf::<TypeConfig> {
                        last_log_id: codec::opt_log_id_from_pb(&req.last_log_id),
                        last_membership: openraft::StoredMembership::new(
                            codec::opt_log_id_from_pb(&req.membership_log_id),
                            membership,
                        ),
                    };
                    let staged = self.staged.lock().unwrap().take();
                    let snap = Snapshot {
                        meta,
                        snapshot: SnapshotData {
                            desc: req.data,
                            staged,
                        },
                    };
                    let resp = self
                        .raft
                        .install_full_snapshot(vote, snap)
                        .await
                        .map_err(|e| e.to_string())?;
                    Ok(codec::vote_to_pb(&resp.vote).encode_to_vec().into())
                }
                kind::TRANSFER_LEADER => {
                    let req = codec::PbTransferLeader::decode(body).map_err(|e| e.to_string())?;
                    let req = TransferLeaderRequest::new(
                        codec::vote_from_pb(&req.from_leader).map_err(|e| e.to_string())?,
                        req.to,
                        codec::opt_log_id_from_pb(&req.last_log_id),
                    );
                    let resp = self
                        .raft
                        .handle_transfer_leader(req)
                        .await
                        .map_err(|e| e.to_string())?;
                    let pb = match resp {
                        Ok(()) => codec::PbTransferLeaderResponse::default(),
                        Err(TransferLeaderError::VoteChanged { expected, actual }) => {
                            codec::PbTransferLeaderResponse {
                                expected: Some(codec::vote_to_pb(&expected)),
                                actual: Some(codec::vote_to_pb(&actual)),
                                ..Default::default()
                            }
                        }
                        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => {
                            codec::PbTransferLeaderResponse {
                                log_not_flushed: true,
                                log_expected: codec::opt_log_id_to_pb(&expected),
                                log_actual: codec::opt_log_id_to_pb(&actual),
                                ..Default::default()
                            }
                        }
                    };
                    Ok(pb.encode_to_vec().into())
                }
                other => Err(format!("unknown raft message kind {other}")),
            }
        })
    }

    fn initialize(&self, members: Vec<u64>) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let nodes: BTreeMap<u64, openraft::EmptyNode> = members
                .into_iter()
                .map(|n| (n, openraft::EmptyNode {}))
                .collect();
            self.raft.initialize(nodes).await.is_ok()
        })
    }

    fn is_initialized(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move { self.raft.is_initialized().await.unwrap_or(true) })
    }

    fn shutdown(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.raft.shutdown().await;
        })
    }

    fn transfer_leadership(&self, to: u64) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let term = {
                let m = self.raft.metrics();
                let m = m.borrow_watched();
                if !(m.state.is_leader() && m.current_leader == Some(self.node)) {
                    return;
                }
                m.current_term
            };
            {
                let mut t = self.transfer.lock().unwrap();
                if t.as_ref().is_some_and(|t| t.term == term) {
                    return; // already being seen through
                }
                *t = Some(Transfer {
                    to,
                    term,
                    since: Instant::now(),
                    attempts: 1,
                });
            }
            // A marker entry the target must hold before it is asked (see
            // `Command::Noop`). Only while the marker is written can this
            // leader still take writes; once asked, it refuses them.
            if !self.marker_reached(to).await {
                *self.transfer.lock().unwrap() = None;
                return;
            }
            if self.raft.trigger().transfer_leader(to).await.is_err() {
                *self.transfer.lock().unwrap() = None;
                return;
            }
            tokio::spawn(see_transfer_through(
                self.raft.clone(),
                self.node,
                self.transfer.clone(),
                self.election_min,
            ));
        })
    }

    fn elect(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.raft.trigger().elect(true).await;
        })
    }

    fn leadership_unconfirmed(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state.is_leader()
            && m.last_quorum_acked.is_none()
            && m.membership_config
                .membership()
                .voter_ids()
                .nth(1)
                .is_some()
    }

    fn heartbeat(&self) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let _ = self.raft.trigger().heartbeat().await;
        })
    }

    fn confirm_leadership(&self) -> BoxFuture<'_, bool> {
        Box::pin(async move {
            let read = self
                .raft
                .ensure_linearizable(openraft::raft::ReadPolicy::ReadIndex);
            matches!(
                tokio::time::timeout(self.election_max, read).await,
                Ok(Ok(_))
            )
        })
    }

    fn destroy_into(&self, wb: &mut rocksdb::WriteBatch) {
        self.log.destroy_into(wb);
        self.sm.destroy_into(wb);
    }

    fn change_voters(&self, target: Vec<u64>) -> BoxFuture<'_, Result<bool, String>> {
        Box::pin(async move {
            use openraft::ChangeMembers;
            let m = self.raft.metrics().borrow_watched().clone();
            if !(m.state.is_leader() && m.current_leader == Some(self.node)) {
                return Err("not the leader".into());
            }
            let membership = m.membership_config.membership();
            let voters: BTreeSet<u64> = membership.voter_ids().collect();
            let nodes: BTreeSet<u64> = membership.nodes().map(|(id, _)| *id).collect();
            let learners: BTreeSet<u64> = nodes.difference(&voters).copied().collect();
            let target: BTreeSet<u64> = target.into_iter().collect();
            if voters == target {
                if learners.is_empty() {
                    return Ok(true);
                }
                // A cancelled move leaves learners behind: drop them.
                self.raft
                    .change_membership(ChangeMembers::RemoveNodes(learners), false)
                    .await
                    .map_err(|e| e.to_string())?;
                return Ok(true);
            }
            for n in target.difference(&nodes) {
                self.raft
                    .add_learner(*n, openraft::EmptyNode {}, false)
                    .await
                    .map_err(|e| e.to_string())?;
            }
            // Switch voters only once every new replica holds the log up to
            // the commit index, so the new majority loses nothing.
            let committed = m.local_committed.as_ref().map(|l| l.index());
            let caught_up = target.difference(&voters).all(|n| {
                m.replication
                    .as_ref()
                    .and_then(|r| r.get(n))
                    .is_some_and(|matched| matched.as_ref().map(|l| l.index()) >= committed)
            });
            if !caught_up {
                return Ok(false);
            }
            // A leader that is moving away hands over to a replica that
            // stays first, so the partition never waits for an election.
            if !target.contains(&self.node) {
                if let Some(next) = target.iter().find(|n| voters.contains(n)) {
                    self.transfer_leadership(*next).await;
                    return Ok(false);
                }
            }
            self.raft
                .change_membership(target, false)
                .await
                .map_err(|e| e.to_string())?;
            Ok(true)
        })
    }
}

/// Retries a leadership transfer until some other replica leads.
///
/// openraft marks a transferring leader for good: from then on it refuses
/// writes and sends no heartbeats, and only a higher vote ends that. The
/// target takes over only if its log already reaches the leader's when the
/// request arrives (it waits `election_timeout_min` for that), so a target
/// that is a little behind refuses, and nothing else would ever elect:
/// quiescent followers see the leader's broker alive. That left partitions
/// unwritable until the next rebalance round, 10 s or more later.
///
/// So every `retry` the leader, if it still leads in the same term, asks
/// again: the original target if it has caught up by now, else any voter
/// that has, else the original target again (it may catch up while the
/// leader takes no new writes).
async fn see_transfer_through(
    raft: Raft,
    me: u64,
    state: Arc<Mutex<Option<Transfer>>>,
    retry: Duration,
) {
    loop {
        tokio::time::sleep(retry).await;
        let Some(t) = state.lock().unwrap().clone() else {
            return;
        };
        let next = {
            let m = raft.metrics();
            let m = m.borrow_watched();
            if !(m.state.is_leader() && m.current_leader == Some(me)) || m.current_term != t.term {
                None
            } else {
                let last = m.last_log_index;
                let holds_all = |n: &u64| {
                    m.replication
                        .as_ref()
                        .and_then(|r| r.get(n))
                        .is_some_and(|l| l.as_ref().map(|l| l.index()) >= last)
                };
                let voters: Vec<u64> = m.membership_config.membership().voter_ids().collect();
                Some(if holds_all(&t.to) {
                    t.to
                } else {
                    voters
                        .iter()
                        .copied()
                        .find(|n| *n != me && holds_all(n))
                        .unwrap_or(t.to)
                })
            }
        };
        let Some(to) = next else {
            *state.lock().unwrap() = None;
            return;
        };
        tracing::info!(
            to,
            first_target = t.to,
            attempts = t.attempts,
            waited_ms = t.since.elapsed().as_millis() as u64,
            "leadership transfer not taken up yet; asking again"
        );
        if let Some(cur) = state.lock().unwrap().as_mut() {
            cur.attempts += 1;
        }
        if raft.trigger().transfer_leader(to).await.is_err() {
            *state.lock().unwrap() = None;
            return;
        }
    }
}

impl OpenraftGroup {
    /// Whether a leader (as `m` shows it, with these voters) may serve: see
    /// [`GroupStatus::leader_fresh`].
    fn fresh(
        &self,
        m: &openraft::RaftMetrics<TypeConfig>,
        voters: impl ExactSizeIterator<Item = u64>,
    ) -> bool {
        // A new leader holds every committed entry in its Raft log, but its
        // partition log (the state machine) has them only once it applied
        // the blank entry of its own term. Before that, a fetch between its
        // applied end and the old high watermark would be answered
        // OFFSET_OUT_OF_RANGE, and a consumer would reset its position.
        let applied_own_term = m
            .last_applied
            .as_ref()
            .is_some_and(|l| l.committed_leader_id().term == m.current_term);
        let n = voters.len();
        applied_own_term
            && (n <= 1
                || if self.quiescent {
                    let live = voters
                        .filter(|v| *v == self.node || (self.alive)(*v))
                        .count();
                    // A leader restored from disk at startup has heard from
                    // no one in this process: a successor may have been
                    // elected and committed more while it was down.
                    live * 2 > n && m.last_quorum_acked.is_some()
                } else {
                    m.last_quorum_acked
                        .as_ref()
                        .map(|t| (**t).elapsed())
                        .is_some_and(|a| a <= self.election_max)
                })
    }

    /// Writes a `Command::Noop` and waits, bounded, until `to` holds it.
    /// False if this replica lost leadership or the marker did not commit;
    /// a target that is merely slow is still asked (the transfer is
    /// repeated until it takes, see [`see_transfer_through`]).
    async fn marker_reached(&self, to: u64) -> bool {
        let wait = self.election_min * 4;
        match tokio::time::timeout(wait, self.propose(Command::Noop)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::debug!(group = self.id, to, error = %e, "leadership transfer: marker not written");
                return false;
            }
            Err(_) => return false,
        }
        let mut metrics = self.raft.metrics();
        let index = metrics.borrow_watched().last_log_index;
        let _ = tokio::time::timeout(self.election_min, async {
            loop {
                let holds = metrics
                    .borrow_watched()
                    .replication
                    .as_ref()
                    .and_then(|r| r.get(&to))
                    .is_some_and(|l| l.as_ref().map(|l| l.index()) >= index);
                if holds || metrics.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        true
    }
}

/// openraft's network for one group: every RPC goes over the shared
/// per-peer connection, tagged with the group id.
#[derive(Clone)]
struct Net {
    transport: Arc<Transport>,
    group: u64,
    partition: Option<(Arc<PartitionLog>, Arc<Store>)>,
}

struct NetClient {
    transport: Arc<Transport>,
    group: u64,
    target: u64,
    partition: Option<(Arc<PartitionLog>, Arc<Store>)>,
}

impl RaftNetworkFactory<TypeConfig> for Net {
    type Network = NetClient;

    async fn new_client(&mut self, target: u64, _node: &openraft::EmptyNode) -> NetClient {
        NetClient {
            transport: self.transport.clone(),
            group: self.group,
            target,
            partition: self.partition.clone(),
        }
    }
}

fn unreachable(e: TransportError) -> RPCError<TypeConfig> {
    RPCError::Unreachable(Unreachable::new(&e))
}

impl NetClient {
    async fn call(&self, k: i32, body: Vec<u8>, ttl: Duration) -> Result<Bytes, TransportError> {
        self.transport
            .request(self.target, k, self.group, body.into(), ttl)
            .await
    }
}

impl RaftNetworkV2<TypeConfig> for NetClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = codec::append_req_to_pb(&rpc).encode_to_vec();
        let resp = self
            .call(kind::APPEND, body, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        let pb = codec::PbAppendResponse::decode(resp).map_err(|e| {
            unreachable(TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            })
        })?;
        codec::append_resp_from_pb(pb).map_err(|e| {
            unreachable(TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            })
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_kind(kind::VOTE, rpc, option).await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = codec::PbTransferLeader {
            from_leader: Some(codec::vote_to_pb(req.from_leader())),
            to: *req.to_node_id(),
            last_log_id: req.last_log_id().map(codec::log_id_to_pb),
        }
        .encode_to_vec();
        let resp = self
            .call(kind::TRANSFER_LEADER, body, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        let pb = codec::PbTransferLeaderResponse::decode(resp).map_err(|e| {
            unreachable(TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            })
        })?;
        if pb.log_not_flushed {
            return Ok(Err(TransferLeaderError::LogNotFlushed {
                expected: codec::opt_log_id_from_pb(&pb.log_expected),
                actual: codec::opt_log_id_from_pb(&pb.log_actual),
            }));
        }
        match (pb.expected, pb.actual) {
            (Some(e), Some(a)) => {
                let expected = codec::vote_from_pb(&Some(e)).map_err(|e| {
                    unreachable(TransportError::Remote {
                        peer: self.target,
                        message: e.to_string(),
                    })
                })?;
                let actual = codec::vote_from_pb(&Some(a)).map_err(|e| {
                    unreachable(TransportError::Remote {
                        peer: self.target,
                        message: e.to_string(),
                    })
                })?;
                Ok(Err(TransferLeaderError::VoteChanged { expected, actual }))
            }
            _ => Ok(Ok(())),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.vote_kind(kind::PRE_VOTE, rpc, option).await
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        _cancel: impl std::future::Future<Output = ReplicationClosed> + OptionalSend + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let remote = |e: String| {
            StreamingError::Unreachable(Unreachable::new(&TransportError::Remote {
                peer: self.target,
                message: e,
            }))
        };
        if let Some((log, store)) = self.partition.clone() {
            let desc = PbPartitionDesc::decode(snapshot.snapshot.desc.clone())
                .map_err(|e| remote(e.to_string()))?;
            self.send_batches(&log, &store, desc.log_end, option.hard_ttl())
                .await
                .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        }
        let m = &snapshot.meta.last_membership;
        let body = codec::PbSnapshot {
            vote: Some(codec::vote_to_pb(&vote)),
            last_log_id: codec::opt_log_id_to_pb(&snapshot.meta.last_log_id),
            membership_log_id: codec::opt_log_id_to_pb(m.log_id()),
            membership: Some(codec::membership_to_pb(m.membership())),
            data: snapshot.snapshot.desc,
        }
        .encode_to_vec();
        let ttl = option.hard_ttl().max(Duration::from_secs(60));
        let resp = self
            .call(kind::SNAPSHOT, body, ttl)
            .await
            .map_err(|e| StreamingError::Unreachable(Unreachable::new(&e)))?;
        let pb = codec::PbVote::decode(resp).map_err(|e| {
            StreamingError::Unreachable(Unreachable::new(&TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            }))
        })?;
        let vote = codec::vote_from_pb(&Some(pb)).map_err(|e| {
            StreamingError::Unreachable(Unreachable::new(&TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            }))
        })?;
        Ok(SnapshotResponse::new(vote))
    }
}

impl NetClient {
    /// Sends the follower the batches it lacks below `log_end`, read from
    /// this (leader's) log, in chunks of a few MiB.
    async fn send_batches(
        &self,
        log: &PartitionLog,
        store: &Store,
        log_end: i64,
        ttl: Duration,
    ) -> Result<(), TransportError> {
        let ttl = ttl.max(Duration::from_secs(30));
        let history = log.epoch_history();
        let begin = codec::PbSnapBegin {
            log_start: log.log_start_offset(),
            log_end,
            epochs: history.iter().map(|(e, _)| *e).collect(),
            epoch_starts: history.iter().map(|(_, o)| *o).collect(),
        };
        let resp = self
            .call(kind::SNAP_BEGIN, begin.encode_to_vec(), ttl)
            .await?;
        let begin =
            codec::PbSnapBeginResponse::decode(resp).map_err(|e| TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            })?;
        let start = log.log_start_offset();
        let (mut from, mut reset_to) = (begin.log_end, -1);
        if begin.log_end < start {
            from = start;
            reset_to = start;
        }
        const CHUNK: usize = 4 << 20;
        loop {
            let mut chunk = codec::PbSnapChunk {
                reset_to,
                ..Default::default()
            };
            let mut size = 0usize;
            let mut next = from;
            {
                let mut it = store.log_iter(CF_INDEX, log.log_id);
                it.seek(log_key(log.log_id, from));
                while it.valid() && size < CHUNK {
                    let k = it.key().unwrap_or_default();
                    let Some(e) = IndexEntry::decode(k, it.value().unwrap_or_default()) else {
                        break;
                    };
                    if e.base_offset >= log_end {
                        break;
                    }
                    let batch = store
                        .db()
                        .get_cf(store.cf(CF_LOG), k)
                        .ok()
                        .flatten()
                        .ok_or_else(|| TransportError::Remote {
                            peer: self.target,
                            message: format!("batch at {} vanished (retention?)", e.base_offset),
                        })?;
                    size += batch.len();
                    chunk.keys.push(Bytes::copy_from_slice(k));
                    chunk
                        .index
                        .push(Bytes::copy_from_slice(it.value().unwrap_or_default()));
                    chunk.batches.push(batch.into());
                    next = e.last_offset + 1;
                    it.next();
                }
            }
            let done = chunk.keys.is_empty() || next >= log_end;
            if !chunk.keys.is_empty() || reset_to >= 0 {
                self.call(kind::SNAP_CHUNK, chunk.encode_to_vec(), ttl)
                    .await?;
            }
            reset_to = -1;
            from = next;
            if done {
                return Ok(());
            }
        }
    }

    async fn vote_kind(
        &mut self,
        k: i32,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        let body = codec::vote_req_to_pb(&rpc).encode_to_vec();
        let resp = self
            .call(k, body, option.hard_ttl())
            .await
            .map_err(unreachable)?;
        let pb = codec::PbVoteResponse::decode(resp).map_err(|e| {
            unreachable(TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            })
        })?;
        codec::vote_resp_from_pb(pb).map_err(|e| {
            unreachable(TransportError::Remote {
                peer: self.target,
                message: e.to_string(),
            })
        })
    }
}
