//! The consumer-group coordinator (classic protocol).
//!
//! Group state and committed offsets are entries of the regional
//! controller's Raft group (see `record.rs`), so the coordinator of every
//! group is the controller leader: it holds the live state in memory and
//! writes through the controller before it answers. When leadership moves,
//! the new leader loads the groups from its applied copy and carries on;
//! members keep their ids and generation, and no committed offset is lost.
//!
//! Why the controller and not an internal offsets topic: the controller
//! state is already a keyed map of versioned entries, which is what
//! metadata-sync will merge across regions, and it needs no compaction.
//! The cost is one coordinator per region; Raft batches the commits.

pub mod record;
pub mod state;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use tokio::sync::oneshot;

use crate::catalog::Catalog;
use crate::cluster::Cluster;
use crate::coordinator_phase::{self, Phase};
use crate::raft::types::ControllerCommand;
use crate::storage::Store;
use record::{GroupRecord, OffsetRecord};
use state::{code, Effects, Group, JoinRequest, JoinResult, Limits, Step, SyncResult};

pub use state::State as GroupState;

/// Every Kafka error code the coordinator answers with, in one place.
pub use state::code as err;

#[derive(Debug, Clone)]
pub struct GroupSettings {
    pub limits: Limits,
    /// offsets.retention.minutes, in ms: offsets of an empty group expire
    /// this long after the group emptied (or their commit, if later).
    pub offsets_retention_ms: i64,
    pub retention_check_ms: u64,
    pub max_metadata_bytes: usize,
}

impl GroupSettings {
    pub fn from_config(c: &chronik_topology::Groups) -> GroupSettings {
        GroupSettings {
            limits: Limits {
                min_session_timeout_ms: c.min_session_timeout_ms,
                max_session_timeout_ms: c.max_session_timeout_ms,
                initial_rebalance_delay_ms: c.initial_rebalance_delay_ms,
                max_size: if c.max_size == 0 {
                    usize::MAX
                } else {
                    c.max_size as usize
                },
            },
            offsets_retention_ms: (c.offsets_retention_minutes as i64).saturating_mul(60_000),
            retention_check_ms: c.offsets_retention_check_interval_ms,
            max_metadata_bytes: c.offset_metadata_max_bytes as usize,
        }
    }
}

impl Default for GroupSettings {
    fn default() -> Self {
        GroupSettings {
            limits: Limits::default(),
            offsets_retention_ms: 7 * 24 * 60 * 60 * 1000,
            retention_check_ms: 600_000,
            max_metadata_bytes: 4096,
        }
    }
}

struct Slot {
    g: Group,
    offsets: BTreeMap<(String, i32), OffsetRecord>,
    joins: HashMap<String, oneshot::Sender<JoinResult>>,
    syncs: HashMap<String, oneshot::Sender<SyncResult>>,
}

impl Slot {
    fn new(id: &str) -> Slot {
        Slot {
            g: Group::new(id),
            offsets: BTreeMap::new(),
            joins: HashMap::new(),
            syncs: HashMap::new(),
        }
    }

    /// A group exists for the tools while it has members or offsets.
    fn exists(&self) -> bool {
        self.g.state != GroupState::Dead
            && (!self.g.members.is_empty() || !self.offsets.is_empty() || self.g.generation > 0)
    }

    fn deliver(&mut self, fx: &mut Effects) {
        for (id, r) in fx.joins.drain(..) {
            if let Some(tx) = self.joins.remove(&id) {
                let _ = tx.send(r);
            }
        }
        for (id, r) in fx.syncs.drain(..) {
            if let Some(tx) = self.syncs.remove(&id) {
                let _ = tx.send(r);
            }
        }
    }
}

type SlotRef = Arc<tokio::sync::Mutex<Slot>>;

struct Inner {
    phase: Phase,
    groups: HashMap<String, SlotRef>,
}

pub struct Coordinator {
    cluster: Arc<Cluster>,
    catalog: Arc<Catalog>,
    store: Arc<Store>,
    settings: GroupSettings,
    inner: Mutex<Inner>,
}

/// One partition's commit request.
pub struct CommitItem {
    pub topic: String,
    pub partition: i32,
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
}

pub struct MemberDescription {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub metadata: Vec<u8>,
    pub assignment: Vec<u8>,
}

pub struct GroupDescription {
    pub state: GroupState,
    pub protocol_type: String,
    pub protocol: String,
    pub members: Vec<MemberDescription>,
}

fn now_ms() -> u64 {
    crate::handlers::now_ms().max(0) as u64
}

impl Coordinator {
    pub fn start(
        cluster: Arc<Cluster>,
        catalog: Arc<Catalog>,
        store: Arc<Store>,
        settings: GroupSettings,
    ) -> Arc<Coordinator> {
        let c = Arc::new(Coordinator {
            cluster,
            catalog,
            store,
            settings,
            inner: Mutex::new(Inner {
                phase: Phase::Inactive,
                groups: HashMap::new(),
            }),
        });
        tokio::spawn(Self::run(Arc::downgrade(&c)));
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        c.catalog.on_remote_offsets(Box::new(move |keys| {
            let _ = tx.send(keys);
        }));
        tokio::spawn(Self::follow_remote_offsets(Arc::downgrade(&c), rx));
        c
    }

    /// Offsets committed in another region reach this region's store through
    /// a merge; the live coordinator re-reads them, or its next commit of
    /// the group would be based on a stale copy and clients would fetch
    /// stale positions. Keys noticed while the coordinator loads wait until
    /// it is active: its load may have read the store just before them.
    async fn follow_remote_offsets(
        me: Weak<Coordinator>,
        mut rx: tokio::sync::mpsc::UnboundedReceiver<Vec<(String, String, i32)>>,
    ) {
        let mut pending: Vec<(String, String, i32)> = Vec::new();
        while let Some(keys) = rx.recv().await {
            pending.extend(keys);
            while let Ok(more) = rx.try_recv() {
                pending.extend(more);
            }
            let Some(c) = me.upgrade() else { return };
            loop {
                let phase = match c.inner.lock().unwrap().phase {
                    Phase::Active(_) => Some(true),
                    Phase::Loading => None,
                    Phase::Inactive => Some(false),
                };
                match phase {
                    Some(true) => break,
                    // A later load reads the store after these writes.
                    Some(false) => {
                        pending.clear();
                        break;
                    }
                    None => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
            for (g, t, p) in pending.drain(..) {
                c.refresh_offset(&g, &t, p).await;
            }
        }
    }

    async fn refresh_offset(&self, group: &str, topic: &str, partition: i32) {
        let key = record::offset_key(group, topic, partition);
        let rec: Option<OffsetRecord> = match self.store.get_meta(&key) {
            Ok(v) => v.and_then(|v| serde_json::from_slice(&v).ok()),
            Err(e) => {
                tracing::warn!(error = %e, key, "could not read a merged offset");
                return;
            }
        };
        let Ok(Some(slot)) = self.slot(group, rec.is_some()) else {
            return;
        };
        let mut s = slot.lock().await;
        match rec {
            Some(r) => s.offsets.insert((topic.to_string(), partition), r),
            None => s.offsets.remove(&(topic.to_string(), partition)),
        };
    }

    /// Follows controller leadership, expires sessions, and drops offsets
    /// past retention.
    async fn run(me: Weak<Coordinator>) {
        let mut last_retention = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let Some(c) = me.upgrade() else { return };
            let st = c.cluster.controller_status();
            let phase = c.inner.lock().unwrap().phase;
            match coordinator_phase::next(phase, st.is_leader, st.leader_fresh, st.term) {
                coordinator_phase::Step::Wait => continue,
                coordinator_phase::Step::Load(term) => {
                    c.deactivate();
                    c.inner.lock().unwrap().phase = Phase::Loading;
                    let c2 = c.clone();
                    tokio::spawn(async move { c2.load(term).await });
                    continue;
                }
                coordinator_phase::Step::StepDown => {
                    tracing::info!(
                        "group coordinator stepping down: no longer the controller leader"
                    );
                    c.deactivate();
                    continue;
                }
                coordinator_phase::Step::Serve => {}
            }
            c.tick().await;
            let every = Duration::from_millis(c.settings.retention_check_ms);
            if last_retention.elapsed() >= every {
                last_retention = tokio::time::Instant::now();
                c.expire_offsets().await;
            }
        }
    }

    /// Drops every group; waiting members get NOT_COORDINATOR (their
    /// senders drop) and find the new coordinator.
    fn deactivate(&self) {
        let mut inner = self.inner.lock().unwrap();
        inner.phase = Phase::Inactive;
        inner.groups.clear();
    }

    async fn load(self: Arc<Self>, term: u64) {
        // A barrier entry applied means everything committed before this
        // term is applied here too.
        let loaded = match self
            .cluster
            .propose_as_controller(ControllerCommand::Barrier)
            .await
        {
            Ok(()) => self.read_groups(),
            Err(e) => Err(e.to_string()),
        };
        let mut inner = self.inner.lock().unwrap();
        match loaded {
            Ok(groups) => {
                tracing::info!(groups = groups.len(), term, "group coordinator active");
                inner.groups = groups
                    .into_iter()
                    .map(|(k, v)| (k, Arc::new(tokio::sync::Mutex::new(v))))
                    .collect();
                inner.phase = Phase::Active(term);
            }
            Err(e) => {
                tracing::warn!(error = %e, "group coordinator failed to load; retrying");
                inner.phase = Phase::Inactive;
            }
        }
    }

    fn read_groups(&self) -> Result<HashMap<String, Slot>, String> {
        let now = now_ms();
        let mut out: HashMap<String, Slot> = HashMap::new();
        for (k, v) in self
            .store
            .scan_meta(record::GROUP_PREFIX)
            .map_err(|e| e.to_string())?
        {
            let id = k[record::GROUP_PREFIX.len()..].to_string();
            let rec: GroupRecord = serde_json::from_slice(&v).map_err(|e| format!("{k}: {e}"))?;
            let mut slot = Slot::new(&id);
            slot.g = Group::load(&id, rec, now);
            out.insert(id, slot);
        }
        for (k, v) in self
            .store
            .scan_meta(record::OFFSET_PREFIX)
            .map_err(|e| e.to_string())?
        {
            let Some((g, t, p)) = record::parse_offset_key(&k) else {
                continue;
            };
            let rec: OffsetRecord = serde_json::from_slice(&v).map_err(|e| format!("{k}: {e}"))?;
            out.entry(g.clone())
                .or_insert_with(|| Slot::new(&g))
                .offsets
                .insert((t, p), rec);
        }
        Ok(out)
    }

    fn check_active(&self) -> Result<(), i16> {
        self.inner.lock().unwrap().phase.serving().map(|_| ())
    }

    fn slot(&self, group: &str, create: bool) -> Result<Option<SlotRef>, i16> {
        let mut inner = self.inner.lock().unwrap();
        inner.phase.serving()?;
        if create {
            Ok(Some(
                inner
                    .groups
                    .entry(group.to_string())
                    .or_insert_with(|| Arc::new(tokio::sync::Mutex::new(Slot::new(group))))
                    .clone(),
            ))
        } else {
            Ok(inner.groups.get(group).cloned())
        }
    }

    /// The coordinator's (node id, host, port) as clients of `listener`
    /// reach it: the controller leader.
    pub fn find(&self, listener: &str) -> Result<(i32, String, u16), i16> {
        let st = self.cluster.controller_status();
        let Some(leader) = st.leader else {
            return Err(err::COORDINATOR_NOT_AVAILABLE);
        };
        self.catalog
            .brokers()
            .into_iter()
            .find(|b| b.id as u64 == leader)
            .and_then(|b| {
                let (host, port) = b.address(listener)?;
                Some((b.id, host, port))
            })
            .ok_or(err::COORDINATOR_NOT_AVAILABLE)
    }

    async fn persist(&self, slot: &Slot) -> Result<(), i16> {
        let record = (slot.g.state != GroupState::Dead).then(|| slot.g.record());
        self.write(ControllerCommand::PutGroup {
            group: slot.g.id.clone(),
            record,
            now_ms: now_ms() as i64,
            // Deletions that must reach other regions write their own.
            regional: true,
        })
        .await
    }

    async fn write(&self, cmd: ControllerCommand) -> Result<(), i16> {
        self.cluster.propose_as_controller(cmd).await.map_err(|e| {
            tracing::warn!(error = %e, "group state write failed");
            err::NOT_COORDINATOR
        })
    }

    /// Applies effects: persists first (when asked), then answers waiters,
    /// so nobody hears of a generation that a failover could forget.
    async fn settle(&self, slot: &mut Slot, mut fx: Effects) {
        if fx.persist && self.persist(slot).await.is_err() {
            for (_, r) in fx.syncs.iter_mut() {
                *r = SyncResult {
                    error: err::NOT_COORDINATOR,
                    protocol_type: None,
                    protocol: None,
                    assignment: Vec::new(),
                };
            }
        }
        slot.deliver(&mut fx);
    }

    /// Runs one state-machine call on a group: an answer for now is
    /// returned at once; otherwise the member's waiter is registered before
    /// the effects are settled (they may already hold its answer) and the
    /// answer awaited. None if the coordinator dropped the group meanwhile.
    async fn step<T>(
        &self,
        slot: &SlotRef,
        run: impl FnOnce(&mut Slot) -> (Step<T>, Effects),
        waiters: fn(&mut Slot) -> &mut HashMap<String, oneshot::Sender<T>>,
    ) -> Option<T> {
        let rx = {
            let mut s = slot.lock().await;
            let (step, fx) = run(&mut s);
            let rx = match step {
                Step::Now(r) => {
                    self.settle(&mut s, fx).await;
                    return Some(r);
                }
                Step::Wait(id) => {
                    let (tx, rx) = oneshot::channel();
                    waiters(&mut s).insert(id, tx);
                    rx
                }
            };
            self.settle(&mut s, fx).await;
            rx
        };
        rx.await.ok()
    }

    pub async fn join(&self, group: &str, req: JoinRequest) -> JoinResult {
        let error = |code: i16| JoinResult::error(code, &req.member_id);
        if group.is_empty() || group.contains('\0') {
            return error(err::INVALID_GROUP_ID);
        }
        let slot = match self.slot(group, true) {
            Ok(s) => s.unwrap(),
            Err(c) => return error(c),
        };
        let limits = &self.settings.limits;
        self.step(
            &slot,
            |s| s.g.join(req.clone(), limits, now_ms()),
            |s| &mut s.joins,
        )
        .await
        .unwrap_or_else(|| error(err::NOT_COORDINATOR))
    }

    pub async fn sync(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> SyncResult {
        let error = |code: i16| SyncResult {
            error: code,
            protocol_type: None,
            protocol: None,
            assignment: Vec::new(),
        };
        if group.is_empty() {
            return error(err::INVALID_GROUP_ID);
        }
        let slot = match self.slot(group, false) {
            Ok(Some(s)) => s,
            Ok(None) => return error(code::UNKNOWN_MEMBER_ID),
            Err(c) => return error(c),
        };
        self.step(
            &slot,
            |s| {
                s.g.sync(
                    member_id,
                    instance_id,
                    generation,
                    protocol_type,
                    protocol,
                    assignments,
                )
            },
            |s| &mut s.syncs,
        )
        .await
        .unwrap_or_else(|| error(err::NOT_COORDINATOR))
    }

    pub async fn heartbeat(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if group.is_empty() {
            return err::INVALID_GROUP_ID;
        }
        match self.slot(group, false) {
            Ok(Some(slot)) => {
                slot.lock()
                    .await
                    .g
                    .heartbeat(member_id, instance_id, generation, now_ms())
            }
            Ok(None) => code::UNKNOWN_MEMBER_ID,
            Err(c) => c,
        }
    }

    /// LeaveGroup: one code per member, or a group-level error.
    pub async fn leave(
        &self,
        group: &str,
        members: &[(String, Option<String>)],
    ) -> Result<Vec<i16>, i16> {
        if group.is_empty() {
            return Err(err::INVALID_GROUP_ID);
        }
        let Some(slot) = self.slot(group, false)? else {
            return Ok(vec![code::UNKNOWN_MEMBER_ID; members.len()]);
        };
        let mut s = slot.lock().await;
        let mut out = Vec::with_capacity(members.len());
        let mut all = Effects::default();
        for (m, i) in members {
            let (code, fx) = s.g.leave(m, i.as_deref(), &self.settings.limits, now_ms());
            out.push(code);
            all.joins.extend(fx.joins);
            all.syncs.extend(fx.syncs);
            all.persist |= fx.persist;
        }
        self.settle(&mut s, all).await;
        Ok(out)
    }

    async fn tick(&self) {
        let slots: Vec<SlotRef> = self
            .inner
            .lock()
            .unwrap()
            .groups
            .values()
            .cloned()
            .collect();
        let now = now_ms();
        for slot in slots {
            let mut s = slot.lock().await;
            let fx = s.g.tick(&self.settings.limits, now);
            if !fx.joins.is_empty() || !fx.syncs.is_empty() || fx.persist {
                self.settle(&mut s, fx).await;
            }
        }
    }

    /// Kafka's classic-group commit validation, then one controller write
    /// for the whole request.
    pub async fn commit(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        items: Vec<CommitItem>,
    ) -> Result<Vec<i16>, i16> {
        if group.is_empty() || group.contains('\0') {
            return Err(err::INVALID_GROUP_ID);
        }
        let slot = self
            .slot(group, generation < 0)?
            .ok_or(code::ILLEGAL_GENERATION)?;
        let mut s = slot.lock().await;
        if s.g.state == GroupState::Dead {
            return Err(err::COORDINATOR_NOT_AVAILABLE);
        }
        if !(generation < 0 && s.g.is_empty()) {
            let e = s.g.validate_member(member_id, instance_id, generation);
            if e != code::NONE {
                return Err(e);
            }
            if s.g.state == GroupState::CompletingRebalance {
                return Err(code::REBALANCE_IN_PROGRESS);
            }
        }
        let now = now_ms() as i64;
        let mut codes = Vec::with_capacity(items.len());
        let mut accepted = Vec::new();
        for it in items {
            let code = match self.catalog.get(&it.topic) {
                None => err::UNKNOWN_TOPIC_OR_PARTITION,
                Some(t) if it.partition < 0 || it.partition as usize >= t.partitions.len() => {
                    err::UNKNOWN_TOPIC_OR_PARTITION
                }
                Some(_)
                    if it
                        .metadata
                        .as_ref()
                        .is_some_and(|m| m.len() > self.settings.max_metadata_bytes) =>
                {
                    err::OFFSET_METADATA_TOO_LARGE
                }
                Some(_) => {
                    accepted.push((
                        it.topic,
                        it.partition,
                        OffsetRecord {
                            offset: it.offset,
                            leader_epoch: it.leader_epoch,
                            metadata: it.metadata,
                            commit_ms: now,
                        },
                    ));
                    code::NONE
                }
            };
            codes.push(code);
        }
        if !accepted.is_empty() {
            self.write(ControllerCommand::CommitOffsets {
                group: group.to_string(),
                offsets: accepted.clone(),
            })
            .await?;
            for (t, p, r) in accepted {
                s.offsets.insert((t, p), r);
            }
        }
        Ok(codes)
    }

    /// Offsets a committed transaction wrote (TxnOffsetCommit, checked
    /// when the transaction took them): they become the group's committed
    /// offsets, whatever its membership is now, as Kafka's commit markers
    /// make them.
    pub async fn commit_transactional(
        &self,
        group: &str,
        offsets: Vec<(String, i32, OffsetRecord)>,
    ) -> Result<(), i16> {
        let slot = self.slot(group, true)?.expect("created");
        let mut s = slot.lock().await;
        self.write(ControllerCommand::CommitOffsets {
            group: group.to_string(),
            offsets: offsets.clone(),
        })
        .await?;
        for (t, p, r) in offsets {
            s.offsets.insert((t, p), r);
        }
        Ok(())
    }

    /// TxnOffsetCommit's membership check (KIP-447): a producer that names
    /// a member and generation must hold them; one that names none
    /// (generation -1) commits as a standalone producer.
    pub async fn check_member(
        &self,
        group: &str,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> Result<(), i16> {
        if group.is_empty() || group.contains('\0') {
            return Err(err::INVALID_GROUP_ID);
        }
        self.check_active()?;
        if generation < 0 {
            return Ok(());
        }
        let slot = self.slot(group, false)?.ok_or(code::ILLEGAL_GENERATION)?;
        let s = slot.lock().await;
        match s.g.validate_member(member_id, instance_id, generation) {
            code::NONE => Ok(()),
            e => Err(e),
        }
    }

    /// Committed offsets: of the listed partitions (unknown ones as None),
    /// or of every committed partition when `topics` is None.
    pub async fn fetch(
        &self,
        group: &str,
        topics: Option<Vec<(String, Vec<i32>)>>,
    ) -> Result<Vec<(String, i32, Option<OffsetRecord>)>, i16> {
        self.check_active()?;
        let slot = self.slot(group, false)?;
        let s = match &slot {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        let get = |t: &str, p: i32| {
            s.as_ref()
                .and_then(|s| s.offsets.get(&(t.to_string(), p)).cloned())
        };
        Ok(match topics {
            Some(list) => list
                .into_iter()
                .flat_map(|(t, ps)| ps.into_iter().map(move |p| (t.clone(), p)))
                .map(|(t, p)| {
                    let r = get(&t, p);
                    (t, p, r)
                })
                .collect(),
            None => s
                .as_ref()
                .map(|s| {
                    s.offsets
                        .iter()
                        .map(|((t, p), r)| (t.clone(), *p, Some(r.clone())))
                        .collect()
                })
                .unwrap_or_default(),
        })
    }

    pub async fn describe(&self, group: &str) -> Result<Option<GroupDescription>, i16> {
        let Some(slot) = self.slot(group, false)? else {
            return Ok(None);
        };
        let s = slot.lock().await;
        if !s.exists() {
            return Ok(None);
        }
        let g = &s.g;
        let proto = g.protocol.clone().unwrap_or_default();
        let stable = g.state == GroupState::Stable;
        Ok(Some(GroupDescription {
            state: g.state,
            protocol_type: g.protocol_type.clone().unwrap_or_default(),
            protocol: if stable { proto.clone() } else { String::new() },
            members: g
                .members
                .values()
                .map(|m| MemberDescription {
                    member_id: m.rec.id.clone(),
                    instance_id: m.rec.instance_id.clone(),
                    client_id: m.rec.client_id.clone(),
                    client_host: m.rec.client_host.clone(),
                    metadata: if stable {
                        m.rec
                            .protocols
                            .iter()
                            .find(|p| p.0 == proto)
                            .map(|p| p.1.clone())
                            .unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    assignment: if stable {
                        m.rec.assignment.clone()
                    } else {
                        Vec::new()
                    },
                })
                .collect(),
        }))
    }

    /// (group id, protocol type, state) of every group.
    pub async fn list(&self) -> Result<Vec<(String, String, GroupState)>, i16> {
        self.check_active()?;
        let slots: Vec<SlotRef> = self
            .inner
            .lock()
            .unwrap()
            .groups
            .values()
            .cloned()
            .collect();
        let mut out = Vec::new();
        for slot in slots {
            let s = slot.lock().await;
            if s.exists() {
                out.push((
                    s.g.id.clone(),
                    s.g.protocol_type.clone().unwrap_or_default(),
                    s.g.state,
                ));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }

    pub async fn delete(&self, group: &str) -> i16 {
        let slot = match self.slot(group, false) {
            Ok(Some(s)) => s,
            Ok(None) => return err::GROUP_ID_NOT_FOUND,
            Err(c) => return c,
        };
        let mut s = slot.lock().await;
        if !s.exists() {
            return err::GROUP_ID_NOT_FOUND;
        }
        if !s.g.is_empty() {
            return err::NON_EMPTY_GROUP;
        }
        let mut fx = s.g.kill();
        if let Err(c) = self
            .write(ControllerCommand::PutGroup {
                group: group.to_string(),
                record: None,
                now_ms: now_ms() as i64,
                regional: false,
            })
            .await
        {
            // Not deleted after all: keep it as it was (empty).
            s.g = Group::new(group);
            return c;
        }
        s.offsets.clear();
        s.deliver(&mut fx);
        self.inner.lock().unwrap().groups.remove(group);
        code::NONE
    }

    /// OffsetDelete: per partition codes, or a group-level error.
    pub async fn delete_offsets(
        &self,
        group: &str,
        partitions: Vec<(String, i32)>,
    ) -> Result<Vec<i16>, i16> {
        let Some(slot) = self.slot(group, false)? else {
            return Err(err::GROUP_ID_NOT_FOUND);
        };
        let mut s = slot.lock().await;
        if !s.exists() {
            return Err(err::GROUP_ID_NOT_FOUND);
        }
        let subscribed = subscribed_topics(&s.g);
        let mut codes = Vec::new();
        let mut gone = Vec::new();
        for (t, p) in partitions {
            if self
                .catalog
                .get(&t)
                .is_none_or(|tp| p < 0 || p as usize >= tp.partitions.len())
            {
                codes.push(err::UNKNOWN_TOPIC_OR_PARTITION);
            } else if subscribed.contains(&t) {
                codes.push(err::GROUP_SUBSCRIBED_TO_TOPIC);
            } else {
                codes.push(code::NONE);
                gone.push((t, p));
            }
        }
        if !gone.is_empty() {
            self.write(ControllerCommand::DeleteOffsets {
                group: group.to_string(),
                partitions: gone.clone(),
                now_ms: now_ms() as i64,
                regional: false,
            })
            .await?;
            for k in gone {
                s.offsets.remove(&k);
            }
        }
        Ok(codes)
    }

    /// Offsets of empty groups expire `offsets_retention_ms` after the later
    /// of their commit and the group emptying; a group left with nothing is
    /// deleted.
    async fn expire_offsets(&self) {
        let slots: Vec<SlotRef> = self
            .inner
            .lock()
            .unwrap()
            .groups
            .values()
            .cloned()
            .collect();
        let now = now_ms() as i64;
        for slot in slots {
            let mut s = slot.lock().await;
            if !s.g.is_empty() || s.g.state == GroupState::Dead {
                continue;
            }
            let since = s.g.empty_since_ms.unwrap_or(0);
            let retention = self.settings.offsets_retention_ms;
            let expired: Vec<(String, i32)> = s
                .offsets
                .iter()
                .filter(|(_, r)| r.commit_ms.max(since).saturating_add(retention) <= now)
                .map(|(k, _)| k.clone())
                .collect();
            if expired.is_empty() {
                continue;
            }
            let group = s.g.id.clone();
            if expired.len() == s.offsets.len() {
                if self
                    .write(ControllerCommand::PutGroup {
                        group: group.clone(),
                        record: None,
                        now_ms: now,
                        regional: true,
                    })
                    .await
                    .is_ok()
                {
                    tracing::info!(group = %group, offsets = expired.len(), "offsets expired; group removed");
                    let mut fx = s.g.kill();
                    s.deliver(&mut fx);
                    s.offsets.clear();
                    drop(s);
                    self.inner.lock().unwrap().groups.remove(&group);
                }
            } else if self
                .write(ControllerCommand::DeleteOffsets {
                    group: group.clone(),
                    partitions: expired.clone(),
                    now_ms: now,
                    regional: true,
                })
                .await
                .is_ok()
            {
                tracing::info!(group = %group, offsets = expired.len(), "offsets expired");
                for k in expired {
                    s.offsets.remove(&k);
                }
            }
        }
    }
}

/// Topics a consumer-protocol group's members subscribe to (OffsetDelete
/// refuses to delete offsets the group is consuming).
fn subscribed_topics(g: &Group) -> Vec<String> {
    use kafka_protocol::messages::ConsumerProtocolSubscription;
    use kafka_protocol::protocol::Decodable;
    if g.protocol_type.as_deref() != Some("consumer") {
        return Vec::new();
    }
    let proto = g.protocol.clone().unwrap_or_default();
    let mut out = Vec::new();
    for m in g.members.values() {
        let Some((_, meta)) = m.rec.protocols.iter().find(|p| p.0 == proto) else {
            continue;
        };
        if meta.len() < 2 {
            continue;
        }
        let version = i16::from_be_bytes([meta[0], meta[1]]).clamp(0, 3);
        let mut buf = bytes::Bytes::copy_from_slice(&meta[2..]);
        if let Ok(sub) = ConsumerProtocolSubscription::decode(&mut buf, version) {
            out.extend(sub.topics.into_iter().map(|t| t.to_string()));
        }
    }
    out
}
