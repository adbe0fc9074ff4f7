//! The transaction coordinator (KIP-98).
//!
//! Each transactional id's state (`state::Txn`) is an entry of the regional
//! controller's Raft group, next to the consumer groups, so the coordinator
//! of every transactional id is the controller leader, as it is for groups:
//! one replicated store, one broker for clients to find, no
//! `__transaction_state` topic to compact. A request is answered only after
//! the state it leads to is committed there, so a new controller leader
//! (which loads the states after a barrier) carries on where the old one
//! stopped: it finishes the transactions that were ending, and aborts the
//! ones past their timeout.
//!
//! Ending a transaction writes a marker into every partition it wrote,
//! through that partition's own Raft log (`Command::TxnMarker`, sent to the
//! partition's leader); the partition keeps the open transactions, the
//! aborted-transaction index and the last stable offset (`crate::txn_index`).
//! Offsets committed in a transaction become the groups' committed offsets
//! once its commit markers are written.

pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::coordinator_phase::{self, Phase, Step};
use crate::producer_ids::ProducerIdAllocator;
use crate::raft::types::{ControllerCommand, TxnMarker};
use crate::storage::Store;
use kafka_protocol::error::ResponseError as E;
use state::{End, Init, Status, Txn, TxnOffset};

pub const TXN_PREFIX: &str = "txn/";

pub fn txn_key(id: &str) -> String {
    format!("{TXN_PREFIX}{id}")
}

/// How long a marker round may take before EndTxn answers anyway: the
/// decision is committed, and the coordinator's own loop finishes it.
const DRIVE_WAIT: Duration = Duration::from_secs(20);
/// How soon a marker round that failed (a partition leader moving) is
/// tried again.
const RETRY_EVERY: Duration = Duration::from_millis(200);

type Slot = Arc<tokio::sync::Mutex<Option<Txn>>>;

struct Inner {
    phase: Phase,
    txns: HashMap<String, Slot>,
}

pub struct Coordinator {
    cluster: Arc<Cluster>,
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    groups: Arc<crate::groups::Coordinator>,
    producer_ids: Arc<ProducerIdAllocator>,
    node_id: i32,
    region: String,
    /// How often open transactions are checked against their timeout (and
    /// idle ids against their expiration).
    abort_check: Duration,
    /// `transactional.id.expiration.ms`.
    id_expiration_ms: i64,
    inner: Mutex<Inner>,
}

fn now_ms() -> i64 {
    crate::handlers::now_ms()
}

impl Coordinator {
    #[allow(clippy::too_many_arguments)]
    pub fn start(
        cluster: Arc<Cluster>,
        catalog: Arc<Catalog>,
        store: Arc<Store>,
        groups: Arc<crate::groups::Coordinator>,
        producer_ids: Arc<ProducerIdAllocator>,
        node_id: i32,
        region: String,
        settings: &chronik_topology::Transactions,
    ) -> Arc<Coordinator> {
        let c = Arc::new(Coordinator {
            cluster,
            catalog,
            store,
            groups,
            producer_ids,
            node_id,
            region,
            abort_check: Duration::from_millis(settings.abort_timed_out_check_interval_ms.max(10)),
            id_expiration_ms: settings.transactional_id_expiration_ms.min(i64::MAX as u64) as i64,
            inner: Mutex::new(Inner {
                phase: Phase::Inactive,
                txns: HashMap::new(),
            }),
        });
        tokio::spawn(Self::run(Arc::downgrade(&c)));
        c
    }

    /// Follows controller leadership; while active, finishes transactions
    /// that are ending and aborts those past their timeout.
    async fn run(me: Weak<Coordinator>) {
        let mut last_check = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(c) = me.upgrade() else { return };
            let st = c.cluster.controller_status();
            let phase = c.inner.lock().unwrap().phase;
            match coordinator_phase::next(phase, st.is_leader, st.leader_fresh, st.term) {
                Step::Wait => continue,
                Step::Load(term) => {
                    c.inner.lock().unwrap().phase = Phase::Loading;
                    let c2 = c.clone();
                    tokio::spawn(async move { c2.load(term).await });
                    continue;
                }
                Step::StepDown => {
                    tracing::info!("transaction coordinator stepping down");
                    let mut inner = c.inner.lock().unwrap();
                    inner.phase = Phase::Inactive;
                    inner.txns.clear();
                    continue;
                }
                Step::Serve => {}
            }
            // Transactions left ending (a request gave up, a new leader
            // loaded them) are finished at once; timeouts are looked for
            // every `abort_check`.
            let check_timeouts = last_check.elapsed() >= c.abort_check;
            if check_timeouts {
                last_check = tokio::time::Instant::now();
            }
            let slots: Vec<(String, Slot)> = c
                .inner
                .lock()
                .unwrap()
                .txns
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            for (id, slot) in slots {
                // A slot held by a request is that request's to finish.
                let Ok(mut g) = slot.try_lock() else { continue };
                if check_timeouts
                    && g.as_ref()
                        .is_some_and(|t| state::id_expired(t, now_ms(), c.id_expiration_ms))
                {
                    // The empty slot stays: a request may already hold it.
                    if c.persist(&id, None).await.is_ok() {
                        tracing::info!(transactional_id = id, "idle transactional id expired");
                        *g = None;
                    }
                    continue;
                }
                let due = g.as_ref().is_some_and(|t| match t.status {
                    Status::PrepareCommit | Status::PrepareAbort => true,
                    Status::Ongoing => check_timeouts,
                    _ => false,
                });
                if !due {
                    continue;
                }
                let Some(cur) = g.clone() else { continue };
                let now = now_ms();
                let next = match cur.status {
                    Status::PrepareCommit | Status::PrepareAbort => Some(cur),
                    Status::Ongoing => match state::expire(&cur, now) {
                        Some(aborting) => {
                            tracing::info!(
                                transactional_id = id,
                                producer_id = aborting.producer_id,
                                "aborting a transaction past its timeout"
                            );
                            metrics::counter!("chronik_txn_timed_out_total").increment(1);
                            if c.persist(&id, Some(&aborting)).await.is_err() {
                                continue;
                            }
                            *g = Some(aborting.clone());
                            Some(aborting)
                        }
                        None => None,
                    },
                    _ => None,
                };
                if let Some(ending) = next {
                    if let Ok(done) = c.finish(&id, &ending).await {
                        *g = Some(done);
                    }
                }
            }
        }
    }

    async fn load(self: Arc<Self>, term: u64) {
        let loaded = match self
            .cluster
            .propose_as_controller(ControllerCommand::Barrier)
            .await
        {
            Ok(()) => self.read_txns(),
            Err(e) => Err(e.to_string()),
        };
        let mut inner = self.inner.lock().unwrap();
        match loaded {
            Ok(txns) => {
                tracing::info!(
                    transactional_ids = txns.len(),
                    term,
                    "transaction coordinator active"
                );
                inner.txns = txns
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(tokio::sync::Mutex::new(Some(v)))))
                    .collect();
                inner.phase = Phase::Active(term);
            }
            Err(e) => {
                tracing::warn!(error = %e, "transaction coordinator failed to load; retrying");
                inner.phase = Phase::Inactive;
            }
        }
    }

    fn read_txns(&self) -> Result<HashMap<String, Txn>, String> {
        let mut out = HashMap::new();
        for (k, v) in self
            .store
            .scan_meta(TXN_PREFIX)
            .map_err(|e| e.to_string())?
        {
            let txn: Txn = serde_json::from_slice(&v).map_err(|e| format!("{k}: {e}"))?;
            out.insert(k[TXN_PREFIX.len()..].to_string(), txn);
        }
        Ok(out)
    }

    /// The controller term, as the coordinator epoch markers carry.
    fn epoch(&self) -> Result<i32, i16> {
        let term = self.inner.lock().unwrap().phase.serving()?;
        Ok(term.min(i32::MAX as u64) as i32)
    }

    fn slot(&self, id: &str, create: bool) -> Result<Option<Slot>, i16> {
        let mut inner = self.inner.lock().unwrap();
        inner.phase.serving()?;
        if create {
            Ok(Some(
                inner
                    .txns
                    .entry(id.to_string())
                    .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(None)))
                    .clone(),
            ))
        } else {
            Ok(inner.txns.get(id).cloned())
        }
    }

    async fn persist(&self, id: &str, txn: Option<&Txn>) -> Result<(), i16> {
        self.cluster
            .propose_as_controller(ControllerCommand::PutTxn {
                id: id.to_string(),
                txn: txn.cloned(),
            })
            .await
            .map_err(|e| {
                tracing::warn!(error = %e, transactional_id = id, "transaction state write failed");
                E::NotCoordinator.code()
            })
    }

    /// InitProducerId with a transactional id: the producer id and epoch.
    pub async fn init(
        &self,
        id: &str,
        timeout_ms: i32,
        expected: Option<(i64, i16)>,
    ) -> Result<(i64, i16), i16> {
        if id.is_empty() {
            return Err(E::InvalidRequest.code());
        }
        let slot = self.slot(id, true)?.expect("created");
        let mut g = slot.lock().await;
        // Minted before the rule runs (it is pure); unused ids are skipped.
        let needs_id = g.as_ref().is_none_or(|t| t.producer_epoch >= i16::MAX - 2);
        let fresh = if needs_id {
            self.producer_ids
                .next(
                    &self.store,
                    self.node_id,
                    chronik_topology::region_tag(&self.region),
                )
                .await
                .map_err(|e| crate::error::KafkaCode::kafka_code(&e))?
        } else {
            -1
        };
        let now = now_ms();
        match state::init_producer_id(g.as_ref(), timeout_ms, expected, now, || fresh)
            .map_err(|e| crate::error::KafkaCode::kafka_code(&e))?
        {
            Init::Ready(txn) => {
                if g.as_ref() != Some(&txn) {
                    self.persist(id, Some(&txn)).await?;
                }
                let answer = (txn.producer_id, txn.producer_epoch);
                *g = Some(txn);
                Ok(answer)
            }
            Init::AbortFirst(aborting) => {
                // The old producer's transaction is aborted first; the
                // client retries once it is.
                self.persist(id, Some(&aborting)).await?;
                *g = Some(aborting.clone());
                if let Some(done) = self.drive(id, &aborting).await {
                    *g = Some(done);
                }
                Err(E::ConcurrentTransactions.code())
            }
        }
    }

    /// Whether `topic`/`partition` may join a transaction here.
    fn partition_code(&self, topic: &str, partition: i32) -> i16 {
        match self.catalog.get(topic) {
            Some(t) if partition >= 0 && (partition as usize) < t.partitions.len() => {
                if t.mirror_of(&self.region).is_some() {
                    // Its markers would have to be written by the home
                    // region's coordinator; this region's cannot.
                    E::InvalidTxnState.code()
                } else {
                    0
                }
            }
            _ => E::UnknownTopicOrPartition.code(),
        }
    }

    /// AddPartitionsToTxn: a code per partition, all or none added.
    pub async fn add_partitions(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        partitions: &[(String, i32)],
    ) -> Result<Vec<i16>, i16> {
        let codes: Vec<i16> = partitions
            .iter()
            .map(|(t, p)| self.partition_code(t, *p))
            .collect();
        if codes.iter().any(|c| *c != 0) {
            // As Kafka: the others are not attempted.
            let not_attempted = E::OperationNotAttempted.code();
            return Ok(codes
                .into_iter()
                .map(|c| if c == 0 { not_attempted } else { c })
                .collect());
        }
        self.update(id, |cur, now| {
            state::add(cur, pid, epoch, partitions, &[], now)
        })
        .await?;
        Ok(codes)
    }

    pub async fn add_offsets(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        group: &str,
    ) -> Result<(), i16> {
        let groups = [group.to_string()];
        self.update(id, |cur, now| {
            state::add(cur, pid, epoch, &[], &groups, now)
        })
        .await
    }

    pub async fn commit_offsets(
        &self,
        id: &str,
        pid: i64,
        epoch: i16,
        offsets: Vec<TxnOffset>,
    ) -> Result<(), i16> {
        self.update(id, |cur, now| {
            state::commit_offsets(cur, pid, epoch, offsets, now)
        })
        .await
    }

    /// Runs a rule on one id's state and stores what it leads to.
    async fn update(
        &self,
        id: &str,
        rule: impl FnOnce(Option<&Txn>, i64) -> Result<Txn, state::TxnError>,
    ) -> Result<(), i16> {
        let slot = self
            .slot(id, false)?
            .ok_or(E::InvalidProducerIdMapping.code())?;
        let mut g = slot.lock().await;
        let next =
            rule(g.as_ref(), now_ms()).map_err(|e| crate::error::KafkaCode::kafka_code(&e))?;
        if g.as_ref() != Some(&next) {
            self.persist(id, Some(&next)).await?;
            *g = Some(next);
        }
        Ok(())
    }

    /// EndTxn: the decision is stored, then the markers written; the answer
    /// waits for them (bounded), so a client's next transaction rarely
    /// meets CONCURRENT_TRANSACTIONS.
    pub async fn end(&self, id: &str, pid: i64, epoch: i16, commit: bool) -> Result<(), i16> {
        let slot = self
            .slot(id, false)?
            .ok_or(E::InvalidProducerIdMapping.code())?;
        let mut g = slot.lock().await;
        let ending = match state::end_txn(g.as_ref(), pid, epoch, commit, now_ms())
            .map_err(|e| crate::error::KafkaCode::kafka_code(&e))?
        {
            End::AlreadyDone => return Ok(()),
            End::Prepare(t) => t,
        };
        self.persist(id, Some(&ending)).await?;
        *g = Some(ending.clone());
        metrics::counter!(
            "chronik_txn_ended_total",
            "outcome" => if commit { "commit" } else { "abort" }
        )
        .increment(1);
        if let Some(done) = self.drive(id, &ending).await {
            *g = Some(done);
        }
        Ok(())
    }

    /// [`Coordinator::finish`], retried while a partition's leader is
    /// moving, for at most [`DRIVE_WAIT`]; `None` leaves the transaction
    /// ending, for the coordinator's loop to finish.
    async fn drive(&self, id: &str, ending: &Txn) -> Option<Txn> {
        let deadline = tokio::time::Instant::now() + DRIVE_WAIT;
        loop {
            match tokio::time::timeout_at(deadline, self.finish(id, ending)).await {
                Ok(Ok(done)) => return Some(done),
                Ok(Err(e)) if tokio::time::Instant::now() + RETRY_EVERY < deadline => {
                    tracing::debug!(transactional_id = id, error = %e, "transaction markers: retrying");
                    tokio::time::sleep(RETRY_EVERY).await;
                }
                Ok(Err(e)) => {
                    tracing::warn!(transactional_id = id, error = %e, "transaction markers not written yet; the coordinator retries");
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Writes the markers of a prepared transaction and, for a commit, its
    /// offsets; then stores it complete. Safe to repeat: a partition
    /// without the transaction open takes no second marker, and offsets are
    /// written as values.
    async fn finish(&self, id: &str, ending: &Txn) -> Result<Txn, String> {
        let commit = match ending.status {
            Status::PrepareCommit => true,
            Status::PrepareAbort => false,
            s => return Err(format!("{id} is {s:?}, not ending")),
        };
        let coordinator_epoch = self.epoch().map_err(|c| format!("code {c}"))?;
        let marker = TxnMarker {
            producer_id: ending.producer_id,
            producer_epoch: ending.producer_epoch,
            commit,
            coordinator_epoch,
            now_ms: now_ms(),
            // Every partition it holds gets a commit marker, so a mirror
            // region can count whether all of them reached it.
            ending: commit.then_some((ending.ended, ending.partitions.len() as i32)),
        };
        let writes = ending
            .partitions
            .iter()
            .map(|(t, p)| self.write_marker(t, *p, marker));
        let results = futures_util::future::join_all(writes).await;
        if let Some(e) = results.into_iter().find_map(Result::err) {
            return Err(e);
        }
        if commit {
            let mut by_group: BTreeMap<
                &str,
                Vec<(String, i32, crate::groups::record::OffsetRecord)>,
            > = BTreeMap::new();
            for o in &ending.offsets {
                by_group.entry(&o.group).or_default().push((
                    o.topic.clone(),
                    o.partition,
                    o.offset.clone(),
                ));
            }
            for (group, offsets) in by_group {
                self.groups
                    .commit_transactional(group, offsets)
                    .await
                    .map_err(|c| format!("committing {group}'s offsets: code {c}"))?;
            }
        }
        let done = state::complete(ending, now_ms()).ok_or("not ending")?;
        self.persist(id, Some(&done))
            .await
            .map_err(|c| format!("code {c}"))?;
        Ok(done)
    }

    async fn write_marker(
        &self,
        topic: &str,
        partition: i32,
        marker: TxnMarker,
    ) -> Result<(), String> {
        // A deleted topic has nothing left to mark.
        let Some(t) = self.catalog.get(topic) else {
            return Ok(());
        };
        let Some(log) = t.partitions.get(partition as usize).cloned() else {
            return Ok(());
        };
        if let Some(home) = t.mirror_of(&self.region) {
            // The home moved away meanwhile: the new home aborted the
            // transactions this region left open there when it took the
            // role (see `PartitionLog::set_role_into`), and this copy takes
            // no writes of its own any more.
            tracing::warn!(
                topic,
                partition,
                home,
                producer_id = marker.producer_id,
                commit = marker.commit,
                "transaction marker not written: the partition's home moved to another region"
            );
            metrics::counter!("chronik_txn_markers_skipped_total").increment(1);
            return Ok(());
        }
        let leader = self
            .cluster
            .view(&t, &log)
            .leader
            .ok_or_else(|| format!("{topic}-{partition} has no leader"))?;
        self.cluster
            .write_marker(log.log_id, leader, marker)
            .await
            .map(|_| ())
            .map_err(|(code, message)| {
                format!(
                    "marker for {topic}-{partition} on broker {leader}: {message} (code {code})"
                )
            })
    }

    /// DescribeTransactions: the ids' states (`None`: unknown here).
    pub async fn describe(&self, id: &str) -> Result<Option<Txn>, i16> {
        let Some(slot) = self.slot(id, false)? else {
            return Ok(None);
        };
        let g = slot.lock().await;
        Ok(g.clone())
    }

    /// ListTransactions: every id with its state. The admin client asks
    /// every broker and joins the answers (in Kafka each coordinates some
    /// ids): a broker that is not the coordinator answers none.
    pub fn list(&self) -> Result<Vec<(String, Txn)>, i16> {
        match self.epoch() {
            Ok(_) => {}
            Err(c) if c == E::NotCoordinator.code() => return Ok(Vec::new()),
            Err(c) => return Err(c),
        }
        let slots: Vec<(String, Slot)> = self
            .inner
            .lock()
            .unwrap()
            .txns
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let mut out = Vec::new();
        for (id, slot) in slots {
            // A slot busy with a request is described as it was stored.
            let txn = match slot.try_lock() {
                Ok(g) => g.clone(),
                Err(_) => self
                    .store
                    .get_meta(&txn_key(&id))
                    .ok()
                    .flatten()
                    .and_then(|v| serde_json::from_slice(&v).ok()),
            };
            if let Some(t) = txn {
                out.push((id, t));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    /// KIP-890's check before a partition leader takes a transactional
    /// batch that would open a transaction (the leader need not be the
    /// coordinator): `producer_id` at `epoch` must have `topic`/`partition`
    /// in its open transaction, as this broker's copy of the controller
    /// state says. `Err(true)`: a newer epoch fenced the producer;
    /// `Err(false)`: not (yet) in the transaction.
    pub fn verify(
        catalog: &Catalog,
        producer_id: i64,
        epoch: i16,
        topic: &str,
        partition: i32,
    ) -> Result<(), bool> {
        match catalog.txn_by_producer(producer_id) {
            Some(t) if t.producer_epoch > epoch => Err(true),
            Some(t)
                if t.producer_epoch == epoch
                    && t.status == Status::Ongoing
                    && t.partitions.contains(&(topic.to_string(), partition)) =>
            {
                Ok(())
            }
            _ => Err(false),
        }
    }
}
