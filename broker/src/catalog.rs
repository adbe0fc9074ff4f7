//! The topic catalog: names, ids, partitions and configs, persisted in the
//! `meta` column family as one versioned entry per topic.
//!
//! The catalog is a keyed map of entries that each carry a version, so it
//! can later be replicated by the regional controller and merged across
//! regions without changing its shape.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use chronik_topology::TopicDefaults;

use crate::configs::{self, ConfigValueError, EffectiveConfig};
use crate::global_meta::GlobalMeta;
use crate::groups::record as groups;
use crate::log::PartitionLog;
use crate::raft::types::ControllerCommand;
use crate::storage::{Store, StoreError, CF_META};

mod acls;
mod credentials;
mod home_move;
mod link_actor;
mod members;
mod meta_apply;
mod txns;

pub use credentials::ScramUpsert;
pub use home_move::{HomeMove, OffsetMove, OffsetMoveReason, OFFSET_MOVED_PREFIX};
pub use members::{Member, MemberState};

const TOPIC_PREFIX: &str = "topic/";
const NEXT_LOG_ID_KEY: &str = "counter/next_log_id";
const BROKER_PREFIX: &str = "broker/";
/// Keyed controller entries besides topics that a snapshot carries whole.
const SNAPSHOT_PREFIXES: [&str; 8] = [
    BROKER_PREFIX,
    crate::txn::TXN_PREFIX,
    members::MEMBER_PREFIX,
    groups::GROUP_PREFIX,
    groups::OFFSET_PREFIX,
    crate::global_meta::PREFIX,
    OFFSET_MOVED_PREFIX,
    link_actor::LINK_PREFIX,
];

/// A broker's Kafka listener as clients should reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BrokerEndpoint {
    pub id: i32,
    /// The first (`listeners.kafka`) listener's advertised address.
    pub host: String,
    pub port: u16,
    pub rack: Option<String>,
    /// Every listener's advertised (host, port), by listener name; a client
    /// is told the addresses of the listener it came through. Empty in
    /// registrations of brokers that predate named listeners.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub listeners: BTreeMap<String, (String, u16)>,
}

impl BrokerEndpoint {
    /// Where clients of `listener` reach this broker: `None` when the
    /// broker has no such listener (Kafka leaves such brokers out).
    pub fn address(&self, listener: &str) -> Option<(String, u16)> {
        if self.listeners.is_empty() {
            return Some((self.host.clone(), self.port));
        }
        self.listeners.get(listener).cloned()
    }
}

/// Region-wide settings the catalog needs to place replicas.
#[derive(Debug, Clone)]
pub struct RegionSettings {
    /// The region's name (its copy of the global `__meta` is named so).
    pub name: String,
    /// Every broker of the region, ascending.
    pub brokers: Vec<i32>,
    pub default_replication_factor: i16,
    pub default_min_insync_replicas: i32,
}

impl RegionSettings {
    pub fn single(node_id: i32) -> RegionSettings {
        RegionSettings {
            name: "local".to_string(),
            brokers: vec![node_id],
            default_replication_factor: 1,
            default_min_insync_replicas: 1,
        }
    }
}

/// Kafka's longest legal topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: Uuid,
    /// Log id of each partition, by partition index.
    pub partitions: Vec<u64>,
    /// Replica broker ids of each partition; the first is the preferred
    /// leader. Empty in entries written before replication existed.
    #[serde(default)]
    pub replicas: Vec<Vec<i32>>,
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
    /// Bumped on every change to this entry.
    pub version: u64,
    /// Reassignments in progress: partition -> target replicas. The
    /// partition's leader moves the Raft voters there, then completes it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub reassigning: BTreeMap<i32, Vec<i32>>,
    /// Deleted at home while mirrored: the data stays until the dc-link
    /// has shipped it to every mirror region it can reach (or
    /// [`DRAIN_TIMEOUT_MS`] passed), then the topic goes everywhere. Set
    /// to the proposer's wall clock when the deletion was asked for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleting_since_ms: Option<i64>,
    /// A move of the home role away from this region, under way (writes
    /// stopped; see `catalog/home_move.rs`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub moving: Option<HomeMove>,
}

/// How long a home topic deleted while mirrored waits for the dc-link to
/// drain it before it is deleted anyway (a dc-link that is down never
/// answers).
pub const DRAIN_TIMEOUT_MS: i64 = 60_000;

pub struct Topic {
    pub record: TopicRecord,
    pub partitions: Vec<Arc<PartitionLog>>,
    pub effective: EffectiveConfig,
}

impl Topic {
    pub fn name(&self) -> &str {
        &self.record.name
    }

    pub fn id(&self) -> Uuid {
        self.record.id
    }

    /// The region this topic is homed in, if that is not `local`: the topic
    /// is then a read-only mirror here, written only by dc-link.
    pub fn mirror_of<'a>(&'a self, local: &str) -> Option<&'a str> {
        self.effective
            .home_region
            .as_deref()
            .filter(|home| *home != local)
    }

    /// Deleted at home and waiting for its dc-link to drain it: readable,
    /// not writable.
    pub fn is_deleting(&self) -> bool {
        self.record.deleting_since_ms.is_some()
    }

    /// Whether consumers here see only what the required mirror regions
    /// hold: a `global_quorum` topic at its home.
    pub fn reads_wait_for_mirrors(&self, local: &str) -> bool {
        self.effective.global_quorum && self.mirror_of(local).is_none()
    }

    /// The target replicas of a reassignment of partition `index` in progress.
    pub fn reassigning(&self, index: i32) -> Option<&Vec<i32>> {
        self.record.reassigning.get(&index)
    }

    /// Replica broker ids of partition `index` (preferred leader first).
    pub fn replicas(&self, index: i32) -> Vec<i32> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.record.replicas.get(i))
            .cloned()
            .unwrap_or_default()
    }

    pub fn partition(&self, index: i32) -> Option<&Arc<PartitionLog>> {
        usize::try_from(index)
            .ok()
            .and_then(|i| self.partitions.get(i))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TopicError {
    #[error("{0}")]
    InvalidName(String),
    #[error("Topic '{0}' already exists.")]
    AlreadyExists(String),
    #[error("This server does not host this topic-partition.")]
    Unknown,
    #[error("{0}")]
    InvalidPartitions(String),
    #[error("{0}")]
    InvalidReplicationFactor(String),
    #[error("{0}")]
    InvalidReplicaAssignment(String),
    #[error(transparent)]
    InvalidConfig(#[from] ConfigValueError),
    #[error(transparent)]
    Storage(#[from] StoreError),
    /// The controller could not be reached or did not commit in time.
    #[error("{0}")]
    Unavailable(String),
    /// The controller applied the change and rejected it (the same error,
    /// by Kafka code, on every broker).
    #[error("{message}")]
    Rejected { code: i16, message: String },
}

/// Kafka's topic-name rules; the message mirrors Kafka's wording.
pub fn validate_topic_name(name: &str) -> Result<(), TopicError> {
    if name.is_empty() {
        return Err(TopicError::InvalidName(
            "Topic name is illegal, it can't be empty".into(),
        ));
    }
    if name == "." || name == ".." {
        return Err(TopicError::InvalidName(
            "Topic name cannot be \".\" or \"..\"".into(),
        ));
    }
    if name.len() > MAX_TOPIC_NAME_LEN {
        return Err(TopicError::InvalidName(format!(
            "Topic name is illegal, it can't be longer than {MAX_TOPIC_NAME_LEN} characters, topic name: {name}"
        )));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(TopicError::InvalidName(format!(
            "Topic name \"{name}\" is illegal, it contains a character other than ASCII alphanumerics, '.', '_' and '-'"
        )));
    }
    Ok(())
}

/// One requested config change (IncrementalAlterConfigs).
pub enum ConfigOp {
    Set(String, String),
    Delete(String),
}

pub struct Catalog {
    store: Arc<Store>,
    defaults: TopicDefaults,
    region: RegionSettings,
    endpoints: RwLock<BTreeMap<i32, BrokerEndpoint>>,
    /// The region's brokers as the controller recorded them (see
    /// `catalog/members.rs`); empty until the first one is applied.
    members: RwLock<BTreeMap<i32, Member>>,
    controller: std::sync::OnceLock<Arc<dyn ControllerProposer>>,
    /// Notified after every applied change.
    pub changed: tokio::sync::Notify,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    by_id: RwLock<HashMap<Uuid, Arc<Topic>>>,
    next_log_id: AtomicU64,
    /// Serializes catalog changes so two creates of one name cannot race.
    admin: tokio::sync::Mutex<()>,
    /// This region's copy of the global `__meta`.
    pub global: GlobalMeta,
    /// Told which committed offsets a merge changed (the live group
    /// coordinator re-reads them).
    offsets_hook: std::sync::OnceLock<OffsetsHook>,
    /// Transactional ids' states (see `catalog/txns.rs`).
    txns: txns::Txns,
}

/// (group, topic, partition) of offsets changed by another region.
pub type OffsetsHook = Box<dyn Fn(Vec<(String, String, i32)>) + Send + Sync>;

fn broker_key(id: i32) -> String {
    format!("{BROKER_PREFIX}{id:08}")
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

impl Catalog {
    /// Loads every topic and recovers each partition's log.
    pub fn open(
        store: Arc<Store>,
        defaults: TopicDefaults,
        region: RegionSettings,
    ) -> Result<Catalog, StoreError> {
        let next = match store.get_meta(NEXT_LOG_ID_KEY)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().unwrap()),
            _ => 1,
        };
        let region_name = region.name.clone();
        let cat = Catalog {
            store: store.clone(),
            defaults,
            region,
            endpoints: RwLock::new(BTreeMap::new()),
            members: RwLock::new(BTreeMap::new()),
            controller: std::sync::OnceLock::new(),
            changed: tokio::sync::Notify::new(),
            topics: RwLock::new(HashMap::new()),
            by_id: RwLock::new(HashMap::new()),
            next_log_id: AtomicU64::new(next),
            admin: tokio::sync::Mutex::new(()),
            global: GlobalMeta::open(&store, &region_name)?,
            offsets_hook: std::sync::OnceLock::new(),
            txns: txns::Txns::default(),
        };
        for (key, value) in store.scan_meta(TOPIC_PREFIX)? {
            let record: TopicRecord =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    detail: e.to_string(),
                })?;
            let topic = cat.materialize(record)?;
            cat.install(topic);
        }
        cat.load_brokers()?;
        cat.load_members()?;
        cat.txns.load(&store)?;
        Ok(cat)
    }

    fn materialize(&self, record: TopicRecord) -> Result<Arc<Topic>, StoreError> {
        let name: Arc<str> = record.name.as_str().into();
        let partitions = record
            .partitions
            .iter()
            .enumerate()
            .map(|(i, log_id)| {
                PartitionLog::open(self.store.clone(), *log_id, name.clone(), i as i32)
            })
            .collect::<Result<Vec<_>, _>>()?;
        Ok(self.with_partitions(record, partitions))
    }

    fn with_partitions(
        &self,
        record: TopicRecord,
        partitions: Vec<Arc<PartitionLog>>,
    ) -> Arc<Topic> {
        let effective = EffectiveConfig::resolve(&record.configs, &self.defaults);
        if effective
            .home_region
            .as_deref()
            .is_some_and(|home| home != self.region.name)
        {
            for log in &partitions {
                log.hold_until_counted();
            }
        }
        Arc::new(Topic {
            record,
            partitions,
            effective,
        })
    }

    fn install(&self, topic: Arc<Topic>) {
        self.by_id
            .write()
            .unwrap()
            .insert(topic.id(), topic.clone());
        self.topics
            .write()
            .unwrap()
            .insert(topic.record.name.clone(), topic);
    }

    pub fn defaults(&self) -> &TopicDefaults {
        &self.defaults
    }

    pub fn get(&self, name: &str) -> Option<Arc<Topic>> {
        self.topics.read().unwrap().get(name).cloned()
    }

    pub fn get_by_id(&self, id: &Uuid) -> Option<Arc<Topic>> {
        self.by_id.read().unwrap().get(id).cloned()
    }

    /// All topics, sorted by name.
    pub fn list(&self) -> Vec<Arc<Topic>> {
        let mut v: Vec<_> = self.topics.read().unwrap().values().cloned().collect();
        v.sort_by(|a, b| a.record.name.cmp(&b.record.name));
        v
    }

    /// Every partition of every topic.
    pub fn all_partitions(&self) -> Vec<(Arc<Topic>, Arc<PartitionLog>)> {
        self.list()
            .into_iter()
            .flat_map(|t| {
                t.partitions
                    .clone()
                    .into_iter()
                    .map(move |p| (t.clone(), p))
            })
            .collect()
    }

    /// Registered brokers (id -> Kafka endpoint), ascending by id.
    pub fn brokers(&self) -> Vec<BrokerEndpoint> {
        self.endpoints.read().unwrap().values().cloned().collect()
    }

    /// The configured broker ids: the controller voters a new region
    /// forms with (afterwards, see [`Catalog::members`]).
    pub fn broker_ids(&self) -> &[i32] {
        &self.region.brokers
    }

    pub fn region(&self) -> &RegionSettings {
        &self.region
    }

    /// Called after a merge changed committed offsets (see [`OffsetsHook`]).
    pub fn on_remote_offsets(&self, hook: OffsetsHook) {
        let _ = self.offsets_hook.set(hook);
    }

    /// Routes catalog changes through the regional controller from now on.
    pub fn attach_controller(&self, c: Arc<dyn ControllerProposer>) {
        let _ = self.controller.set(c);
    }

    fn check_replication(&self, replication_factor: i16) -> Result<i16, TopicError> {
        if replication_factor == 0 || replication_factor < -1 {
            return Err(TopicError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ));
        }
        let rf = if replication_factor == -1 {
            self.region.default_replication_factor
        } else {
            replication_factor
        };
        let n = self.active_brokers().len();
        if rf as usize > n {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "Unable to replicate the partition {rf} time(s): The target replication factor of {rf} cannot be reached because only {n} broker(s) are registered."
            )));
        }
        Ok(rf)
    }

    fn check_assignments(&self, assignments: &[Vec<i32>]) -> Result<(), TopicError> {
        let members = self.active_brokers();
        for (i, brokers) in assignments.iter().enumerate() {
            let mut uniq = brokers.clone();
            uniq.sort_unstable();
            uniq.dedup();
            if brokers.is_empty() || uniq.len() != brokers.len() {
                return Err(TopicError::InvalidReplicaAssignment(format!(
                    "Replica assignment for partition {i} must list distinct brokers (got {brokers:?})"
                )));
            }
            if let Some(b) = brokers.iter().find(|b| !members.contains(b)) {
                return Err(TopicError::InvalidReplicaAssignment(format!(
                    "Replica assignment for partition {i} names broker {b}, which is not a broker of this region {members:?}"
                )));
            }
        }
        Ok(())
    }

    /// Spreads partition `p`'s replicas over the region's brokers, starting
    /// at an offset derived from the topic id, so preferred leaders (the
    /// first replica) rotate across brokers and across topics.
    fn assign(&self, id: &Uuid, first_partition: usize, count: usize, rf: i16) -> Vec<Vec<i32>> {
        let b = &self.active_brokers();
        let start = (id.as_u128() % b.len() as u128) as usize;
        (first_partition..first_partition + count)
            .map(|p| {
                (0..rf as usize)
                    .map(|k| b[(start + p + k) % b.len()])
                    .collect()
            })
            .collect()
    }

    fn validate_configs(
        configs: &BTreeMap<String, String>,
    ) -> Result<BTreeMap<String, String>, TopicError> {
        configs
            .iter()
            .map(|(k, v)| Ok((k.clone(), configs::validate(k, v)?)))
            .collect()
    }

    fn alloc_log_ids(&self, n: usize, wb: &mut WriteBatch) -> Vec<u64> {
        let first = self.next_log_id.fetch_add(n as u64, Ordering::SeqCst);
        wb.put_cf(
            self.store.cf(CF_META),
            NEXT_LOG_ID_KEY,
            (first + n as u64).to_be_bytes(),
        );
        (first..first + n as u64).collect()
    }

    /// Checks a CreateTopics entry against the current catalog; returns the
    /// partition count and replica assignment it resolves to.
    fn plan_create(
        &self,
        name: &str,
        id: &Uuid,
        partitions: i32,
        replication_factor: i16,
        assignments: &[Vec<i32>],
        configs: &BTreeMap<String, String>,
    ) -> Result<(Vec<Vec<i32>>, BTreeMap<String, String>), TopicError> {
        validate_topic_name(name)?;
        if self.get(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        self.check_global_name(name, configs)?;
        let replicas = if !assignments.is_empty() {
            if partitions != -1 || replication_factor != -1 {
                return Err(TopicError::InvalidReplicaAssignment(
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
                ));
            }
            self.check_assignments(assignments)?;
            assignments.to_vec()
        } else {
            let rf = self.check_replication(replication_factor)?;
            let count = match partitions {
                -1 => self.defaults.default_partitions as i32,
                n if n <= 0 => {
                    return Err(TopicError::InvalidPartitions(
                        "Number of partitions must be larger than 0.".into(),
                    ))
                }
                n => n,
            };
            self.assign(id, 0, count as usize, rf)
        };
        let configs = Self::validate_configs(configs)?;
        self.check_rpo(name, &configs)?;
        Ok((replicas, configs))
    }

    /// Creates a topic. `partitions` of -1 means the broker default;
    /// `assignments`, if given, define the partition count.
    pub async fn create_topic(
        &self,
        name: &str,
        partitions: i32,
        replication_factor: i16,
        assignments: &[Vec<i32>],
        configs: &BTreeMap<String, String>,
        validate_only: bool,
    ) -> Result<Arc<Topic>, TopicError> {
        let id = Uuid::new_v4();
        let (replicas, configs) = self.plan_create(
            name,
            &id,
            partitions,
            replication_factor,
            assignments,
            configs,
        )?;
        if validate_only {
            let record = TopicRecord {
                name: name.to_string(),
                id,
                partitions: vec![0; replicas.len()],
                replicas,
                configs,
                created_ms: now_ms(),
                version: 1,
                reassigning: BTreeMap::new(),
                deleting_since_ms: None,
                moving: None,
            };
            return Ok(self.with_partitions(record, vec![]));
        }
        // The placement made here is the one applied: applying it again
        // would use the applying broker's default replication factor.
        self.submit(ControllerCommand::CreateTopic {
            name: name.to_string(),
            id,
            partitions: -1,
            replication_factor: -1,
            assignments: replicas,
            configs,
            now_ms: now_ms(),
        })
        .await?;
        self.await_local(|| self.get(name).filter(|t| t.id() == id))
            .await
    }

    /// DeleteTopics. A home topic that other regions mirror is only marked
    /// (no more writes) until its dc-link has drained it, see
    /// [`TopicRecord::deleting_since_ms`]; everything else goes at once.
    pub async fn delete_topic(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        if topic.is_deleting() {
            return Ok(topic);
        }
        if self.mirrored_elsewhere(&topic.record) {
            self.change_topic(
                name,
                |id| ControllerCommand::MarkTopicDeleting {
                    name: name.to_string(),
                    id,
                    now_ms: now_ms(),
                },
                Topic::is_deleting,
            )
            .await?;
            return Ok(topic);
        }
        self.finish_delete(name, None).await?;
        Ok(topic)
    }

    /// Submits a change to topic `name` (the command is built from its id)
    /// and waits until this broker applied it: `done` holds, or the name is
    /// gone or belongs to another incarnation.
    async fn change_topic(
        &self,
        name: &str,
        cmd: impl FnOnce(Uuid) -> ControllerCommand,
        done: impl Fn(&Topic) -> bool,
    ) -> Result<(), TopicError> {
        let id = self.get(name).ok_or(TopicError::Unknown)?.id();
        self.submit(cmd(id)).await?;
        self.await_local(|| {
            self.get(name)
                .is_none_or(|t| t.id() != id || done(&t))
                .then_some(())
        })
        .await
    }

    /// Deletes the topic now (everywhere, if it is homed here). With `id`,
    /// only that incarnation of the name: a drain report or timeout that
    /// arrives late must not delete a topic created again since.
    pub async fn finish_delete(&self, name: &str, id: Option<Uuid>) -> Result<(), TopicError> {
        self.submit(ControllerCommand::DeleteTopic {
            name: name.to_string(),
            now_ms: now_ms(),
            id,
        })
        .await?;
        self.await_local(|| {
            self.get(name)
                .is_none_or(|t| id.is_some_and(|id| t.id() != id))
                .then_some(())
        })
        .await
    }

    /// Topic `name`, only if it is incarnation `id`.
    fn incarnation(&self, name: &str, id: &Uuid) -> Result<Arc<Topic>, TopicError> {
        self.get(name)
            .filter(|t| t.id() == *id)
            .ok_or(TopicError::Unknown)
    }

    /// Writes a new version of `topic`'s record, changed by `change`.
    fn put_changed(
        &self,
        topic: &Topic,
        wb: &mut WriteBatch,
        change: impl FnOnce(&mut TopicRecord),
    ) -> PostApply {
        let mut record = topic.record.clone();
        change(&mut record);
        record.version += 1;
        self.put_record(wb, &record);
        PostApply::Install(record)
    }

    /// Topics marked for deletion that wait for their dc-link to drain.
    pub fn deleting(&self) -> Vec<Arc<Topic>> {
        self.list()
            .into_iter()
            .filter(|t| t.is_deleting())
            .collect()
    }

    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        self.plan_partitions(name, count, assignments)?;
        if validate_only {
            return Ok(());
        }
        self.submit(ControllerCommand::CreatePartitions {
            name: name.to_string(),
            count,
            assignments: assignments.map(|a| a.to_vec()),
            now_ms: now_ms(),
        })
        .await?;
        self.await_local(|| {
            self.get(name)
                .filter(|t| t.partitions.len() as i32 >= count)
                .map(|_| ())
        })
        .await
    }

    /// AlterPartitionReassignments for one partition: `Some(target)` starts
    /// (or redirects) a move, `None` cancels one in progress.
    pub async fn reassign(
        &self,
        name: &str,
        partition: i32,
        target: Option<Vec<i32>>,
    ) -> Result<(), TopicError> {
        let cmd = ControllerCommand::Reassign {
            name: name.to_string(),
            partition,
            target,
        };
        self.check_reassign(&cmd)?;
        self.submit(cmd).await
    }

    fn check_reassign(&self, cmd: &ControllerCommand) -> Result<(), TopicError> {
        let ControllerCommand::Reassign {
            name,
            partition,
            target,
        } = cmd
        else {
            return Ok(());
        };
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        if *partition < 0 || *partition as usize >= topic.partitions.len() {
            return Err(TopicError::Unknown);
        }
        match target {
            Some(t) => self.check_assignments(std::slice::from_ref(t)),
            None if !topic.record.reassigning.contains_key(partition) => {
                Err(TopicError::Rejected {
                    code: 85,
                    message: format!("no reassignment of {name}-{partition} is in progress"),
                })
            }
            None => Ok(()),
        }
    }

    pub async fn alter_configs(
        &self,
        name: &str,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let ops: Vec<(String, Option<String>)> = ops
            .into_iter()
            .map(|op| match op {
                ConfigOp::Set(k, v) => (k, Some(v)),
                ConfigOp::Delete(k) => (k, None),
            })
            .collect();
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let configs = Self::altered_configs(&topic, &ops)?;
        self.check_rpo(name, &configs)?;
        if validate_only {
            return Ok(());
        }
        let version = topic.record.version;
        self.submit(ControllerCommand::AlterConfigs {
            name: name.to_string(),
            ops,
            now_ms: now_ms(),
        })
        .await?;
        self.await_local(|| {
            self.get(name)
                .filter(|t| t.record.version > version && t.record.configs == configs)
                .map(|_| ())
        })
        .await
    }

    /// Records a broker's Kafka endpoint (brokers register on start).
    pub async fn register_broker(&self, ep: BrokerEndpoint) -> Result<(), TopicError> {
        if self.endpoints.read().unwrap().get(&ep.id) == Some(&ep) {
            return Ok(());
        }
        self.submit(ControllerCommand::RegisterBroker {
            id: ep.id,
            host: ep.host,
            port: ep.port,
            rack: ep.rack,
            listeners: ep.listeners,
        })
        .await
    }

    fn plan_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
    ) -> Result<(Arc<Topic>, Vec<Vec<i32>>), TopicError> {
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let current = topic.partitions.len() as i32;
        if count < current {
            return Err(TopicError::InvalidPartitions(format!(
                "Topic currently has {current} partitions, which is higher than the requested {count}."
            )));
        }
        if count == current {
            return Err(TopicError::InvalidPartitions(format!(
                "Topic already has {current} partitions."
            )));
        }
        let replicas = match assignments {
            Some(a) => {
                if a.len() as i32 != count - current {
                    return Err(TopicError::InvalidReplicaAssignment(format!(
                        "Increasing the number of partitions by {} but {} assignments provided.",
                        count - current,
                        a.len()
                    )));
                }
                self.check_assignments(a)?;
                a.to_vec()
            }
            None => {
                let rf = topic.replicas(0).len().max(1) as i16;
                self.assign(
                    &topic.id(),
                    current as usize,
                    (count - current) as usize,
                    rf,
                )
            }
        };
        Ok((topic, replicas))
    }

    fn altered_configs(
        topic: &Topic,
        ops: &[(String, Option<String>)],
    ) -> Result<BTreeMap<String, String>, TopicError> {
        let mut configs = topic.record.configs.clone();
        for (k, v) in ops {
            // The home role moves only with its fencing epoch (`chronik ctl
            // switchover`); a config write would skip the fence and let two
            // regions take writes.
            let read_only = match k.as_str() {
                configs::HOME_REGION => Some(
                    "the home region moves with `chronik ctl switchover` (or failover), which fences it",
                ),
                configs::MIRROR_SOURCE_TOPIC_ID => Some("it is set by metadata-sync on mirror topics"),
                _ => None,
            };
            if let Some(why) = read_only {
                let now = configs.get(k.as_str());
                let next = v.as_ref().map(|v| configs::validate(k, v)).transpose()?;
                if now != next.as_ref() {
                    return Err(ConfigValueError::ReadOnly {
                        name: k.clone(),
                        why,
                    }
                    .into());
                }
                continue;
            }
            match v {
                Some(v) => {
                    let v = configs::validate(k, v)?;
                    configs.insert(k.clone(), v);
                }
                None => {
                    if configs::find(k).is_none() {
                        return Err(ConfigValueError::Unknown(k.clone()).into());
                    }
                    configs.remove(k);
                }
            }
        }
        Ok(configs)
    }

    /// Sends a change to the controller, or applies it here when no
    /// controller is attached (a catalog used on its own, as in unit tests).
    async fn submit(&self, cmd: ControllerCommand) -> Result<(), TopicError> {
        let _g = self.admin.lock().await;
        match self.controller.get() {
            Some(c) => c.propose(cmd).await,
            None => {
                let mut wb = WriteBatch::default();
                let post = self.apply(&cmd, &mut wb)?;
                self.store.write(wb).await?;
                post.run(self)?;
                Ok(())
            }
        }
    }

    /// Waits (bounded) until this broker has applied a change the
    /// controller committed; a forwarded change can land here a moment
    /// after the controller leader acknowledged it.
    async fn await_local<T>(&self, f: impl Fn() -> Option<T>) -> Result<T, TopicError> {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            if let Some(v) = f() {
                return Ok(v);
            }
            if tokio::time::Instant::now() > deadline {
                return Err(TopicError::Unavailable(
                    "the change was committed but has not reached this broker yet".into(),
                ));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// Applies a committed controller command: its writes go into `wb`
    /// (with the caller's applied-index marker, atomically); the returned
    /// step updates the in-memory catalog once `wb` is written. Errors are
    /// deterministic: every broker reaches the same one.
    pub fn apply(
        &self,
        cmd: &ControllerCommand,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        match cmd {
            ControllerCommand::RegisterBroker {
                id,
                host,
                port,
                rack,
                listeners,
            } => {
                let ep = BrokerEndpoint {
                    id: *id,
                    host: host.clone(),
                    port: *port,
                    rack: rack.clone(),
                    listeners: listeners.clone(),
                };
                wb.put_cf(
                    self.store.cf(CF_META),
                    broker_key(*id),
                    serde_json::to_vec(&ep).expect("serializes"),
                );
                Ok(PostApply::Broker(ep))
            }
            ControllerCommand::CreateTopic {
                name,
                id,
                partitions,
                replication_factor,
                assignments,
                configs,
                now_ms,
            } => {
                let (replicas, configs) = self.plan_create(
                    name,
                    id,
                    *partitions,
                    *replication_factor,
                    assignments,
                    configs,
                )?;
                let mut record = TopicRecord {
                    name: name.clone(),
                    id: *id,
                    partitions: vec![0; replicas.len()],
                    replicas,
                    configs,
                    created_ms: *now_ms,
                    version: 1,
                    reassigning: BTreeMap::new(),
                    deleting_since_ms: None,
                    moving: None,
                };
                // First, since it may refuse the topic (a name taken in
                // the global metadata) before anything is written.
                self.global_created(&record, *now_ms, wb)?;
                record.partitions = self.alloc_log_ids(record.replicas.len(), wb);
                for lid in &record.partitions {
                    PartitionLog::init_record(&self.store, wb, *lid);
                }
                self.put_record(wb, &record);
                Ok(PostApply::Install(record))
            }
            ControllerCommand::MarkTopicDeleting { name, id, now_ms } => {
                let topic = self.incarnation(name, id)?;
                if topic.is_deleting() {
                    return Ok(PostApply::Nothing);
                }
                Ok(self.put_changed(&topic, wb, |r| r.deleting_since_ms = Some(*now_ms)))
            }
            ControllerCommand::FenceHome {
                name,
                id,
                to,
                epoch,
                now_ms,
            } => self.apply_fence_home(name, id, to, *epoch, *now_ms, wb),
            ControllerCommand::UnfenceHome { name, id } => self.apply_unfence_home(name, id, wb),
            ControllerCommand::MoveOffsets { moves, now_ms } => {
                self.apply_move_offsets(moves, *now_ms, wb)
            }
            ControllerCommand::MoveHome {
                name,
                id,
                to,
                epoch,
                now_ms,
            } => self.apply_move_home(name, id, to, *epoch, *now_ms, wb),
            ControllerCommand::TakeHome {
                name,
                id,
                from,
                epoch,
                now_ms,
                settle,
            } => self.apply_take_home(name, id, (from, *epoch), settle.as_ref(), *now_ms, wb),
            ControllerCommand::DeleteTopic { name, now_ms, id } => {
                let topic = self
                    .get(name)
                    .filter(|t| id.is_none_or(|id| t.id() == id))
                    .ok_or(TopicError::Unknown)?;
                self.global_deleted(&topic, *now_ms, wb)?;
                wb.delete_cf(self.store.cf(CF_META), format!("{TOPIC_PREFIX}{name}"));
                self.forget_settlement(&topic.id(), wb);
                for p in &topic.partitions {
                    p.delete_into(wb);
                }
                Ok(PostApply::Remove(topic))
            }
            ControllerCommand::CreatePartitions {
                name,
                count,
                assignments,
                now_ms,
            } => {
                let (topic, replicas) =
                    self.plan_partitions(name, *count, assignments.as_deref())?;
                let new_ids = self.alloc_log_ids(replicas.len(), wb);
                for lid in &new_ids {
                    PartitionLog::init_record(&self.store, wb, *lid);
                }
                let mut record = topic.record.clone();
                if record.replicas.is_empty() {
                    record.replicas = (0..record.partitions.len())
                        .map(|i| topic.replicas(i as i32))
                        .collect();
                }
                record.partitions.extend(new_ids.iter().copied());
                record.replicas.extend(replicas);
                record.version += 1;
                self.global_changed(&record, true, *now_ms, wb)?;
                self.put_record(wb, &record);
                Ok(PostApply::Install(record))
            }
            ControllerCommand::AlterConfigs { name, ops, now_ms } => {
                let topic = self.get(name).ok_or(TopicError::Unknown)?;
                let mut record = topic.record.clone();
                record.configs = Self::altered_configs(&topic, ops)?;
                record.version += 1;
                self.global_changed(&record, false, *now_ms, wb)?;
                self.put_record(wb, &record);
                Ok(PostApply::Install(record))
            }
            ControllerCommand::Reassign {
                name,
                partition,
                target,
            } => {
                self.check_reassign(cmd)?;
                let topic = self.get(name).ok_or(TopicError::Unknown)?;
                let mut record = topic.record.clone();
                if record.replicas.is_empty() {
                    record.replicas = (0..record.partitions.len())
                        .map(|i| topic.replicas(i as i32))
                        .collect();
                }
                match target {
                    // Moving to where it already is: nothing to do.
                    Some(t) if record.replicas.get(*partition as usize) == Some(t) => {
                        record.reassigning.remove(partition);
                    }
                    Some(t) => {
                        record.reassigning.insert(*partition, t.clone());
                    }
                    None => {
                        record.reassigning.remove(partition);
                    }
                }
                record.version += 1;
                self.put_record(wb, &record);
                Ok(PostApply::Install(record))
            }
            ControllerCommand::CompleteReassignment {
                name,
                partition,
                replicas,
            } => {
                let topic = self.get(name).ok_or(TopicError::Unknown)?;
                if topic.record.reassigning.get(partition) != Some(replicas) {
                    return Err(TopicError::Rejected {
                        code: 85,
                        message: format!("{name}-{partition} is no longer moving to {replicas:?}"),
                    });
                }
                let mut record = topic.record.clone();
                if record.replicas.is_empty() {
                    record.replicas = (0..record.partitions.len())
                        .map(|i| topic.replicas(i as i32))
                        .collect();
                }
                record.replicas[*partition as usize] = replicas.clone();
                record.reassigning.remove(partition);
                record.version += 1;
                self.put_record(wb, &record);
                Ok(PostApply::Install(record))
            }
            ControllerCommand::PutGroup {
                group,
                record,
                now_ms,
                regional,
            } => {
                let meta = self.store.cf(CF_META);
                match record {
                    Some(r) => wb.put_cf(
                        meta,
                        groups::group_key(group),
                        serde_json::to_vec(r).expect("serializes"),
                    ),
                    None => {
                        wb.delete_cf(meta, groups::group_key(group));
                        // A range delete, not a scan: earlier entries'
                        // writes may still be on their way to the store.
                        let (from, to) = groups::group_offsets_range(group);
                        wb.delete_range_cf(meta, from, to);
                        if !regional {
                            self.global_offsets_deleted(group, None, *now_ms, wb);
                        }
                    }
                }
                Ok(PostApply::Nothing)
            }
            ControllerCommand::PutTxn { id, txn } => {
                txns::Txns::put_into(&self.store, wb, id, txn.as_ref());
                Ok(PostApply::Txn(id.clone(), txn.clone()))
            }
            ControllerCommand::CommitOffsets { group, offsets } => {
                let meta = self.store.cf(CF_META);
                for (t, p, r) in offsets {
                    wb.put_cf(
                        meta,
                        groups::offset_key(group, t, *p),
                        serde_json::to_vec(r).expect("serializes"),
                    );
                }
                self.global_offsets(group, offsets, wb);
                Ok(PostApply::Nothing)
            }
            ControllerCommand::DeleteOffsets {
                group,
                partitions,
                now_ms,
                regional,
            } => {
                let meta = self.store.cf(CF_META);
                for (t, p) in partitions {
                    wb.delete_cf(meta, groups::offset_key(group, t, *p));
                }
                if !regional {
                    self.global_offsets_deleted(group, Some(partitions), *now_ms, wb);
                }
                Ok(PostApply::Nothing)
            }
            ControllerCommand::MetaRegions { regions } => {
                self.apply_meta_regions(regions, wb);
                Ok(PostApply::Nothing)
            }
            ControllerCommand::MetaMerge { delta, wall_ms } => {
                self.apply_meta_merge(delta, *wall_ms, wb)
            }
            ControllerCommand::MetaPeerSummary { summary } => self.apply_peer_summary(summary, wb),
            ControllerCommand::MetaReconcile { topic_id } => {
                self.apply_meta_reconcile(topic_id, wb)
            }
            ControllerCommand::ClaimLinkActor { claim } => self.apply_claim_link_actor(claim, wb),
            ControllerCommand::KeepLinkPromotions {
                holder,
                term,
                promotions,
            } => self.apply_keep_link_promotions(holder, *term, promotions, wb),
            ControllerCommand::AlterScram {
                upserts,
                deletions,
                now_ms,
            } => self.apply_alter_scram(upserts, deletions, *now_ms, wb),
            ControllerCommand::AlterAcls {
                create,
                delete,
                now_ms,
            } => self.apply_alter_acls(create, delete, *now_ms, wb),
            ControllerCommand::AddBroker { id, raft } => self.apply_add_broker(*id, raft, wb),
            ControllerCommand::RemoveBroker { id } => self.apply_remove_broker(*id, wb),
            ControllerCommand::ActivateBroker { id } => self.apply_activate_broker(*id, wb),
            ControllerCommand::ForgetBroker { id } => self.apply_forget_broker(*id, wb),
            ControllerCommand::Barrier => Ok(PostApply::Nothing),
        }
    }

    fn put_record(&self, wb: &mut WriteBatch, record: &TopicRecord) {
        wb.put_cf(
            self.store.cf(CF_META),
            format!("{TOPIC_PREFIX}{}", record.name),
            serde_json::to_vec(record).expect("serializes"),
        );
    }

    /// Replaces the whole catalog with `entries` (meta key -> value), as a
    /// controller snapshot install does. Returns the topics that vanished.
    pub fn snapshot_entries(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut out = self.store.scan_meta(TOPIC_PREFIX)?;
        for prefix in SNAPSHOT_PREFIXES {
            out.extend(self.store.scan_meta(prefix)?);
        }
        out.extend(
            self.store
                .get_meta(NEXT_LOG_ID_KEY)?
                .map(|v| (NEXT_LOG_ID_KEY.to_string(), v)),
        );
        Ok(out)
    }

    pub fn install_snapshot_entries(
        &self,
        entries: &[(String, Vec<u8>)],
        wb: &mut WriteBatch,
    ) -> Result<Vec<Arc<Topic>>, StoreError> {
        let meta = self.store.cf(CF_META);
        for (k, _) in self.store.scan_meta(TOPIC_PREFIX)? {
            wb.delete_cf(meta, k);
        }
        for prefix in SNAPSHOT_PREFIXES {
            for (k, _) in self.store.scan_meta(prefix)? {
                wb.delete_cf(meta, k);
            }
        }
        let mut incoming = std::collections::HashSet::new();
        for (k, v) in entries {
            if let Some(name) = k.strip_prefix(TOPIC_PREFIX) {
                let r: TopicRecord =
                    serde_json::from_slice(v).map_err(|e| StoreError::Corrupt {
                        key: k.clone(),
                        detail: e.to_string(),
                    })?;
                incoming.insert((name.to_string(), r.id));
            }
            wb.put_cf(meta, k, v);
        }
        let gone: Vec<Arc<Topic>> = self
            .list()
            .into_iter()
            .filter(|t| !incoming.contains(&(t.name().to_string(), t.id())))
            .collect();
        for t in &gone {
            for p in &t.partitions {
                p.delete_into(wb);
            }
        }
        Ok(gone)
    }

    /// Reloads the in-memory catalog from the store (after a snapshot install).
    /// The state of the transactional id that holds `producer_id`, as
    /// this broker applied it.
    pub fn txn_by_producer(&self, producer_id: i64) -> Option<crate::txn::state::Txn> {
        self.txns.by_producer(producer_id)
    }

    /// See `Txns::offset_pending`.
    pub fn txn_offset_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        self.txns.offset_pending(group, topic, partition)
    }

    pub fn reload(&self) -> Result<(), StoreError> {
        let next = match self.store.get_meta(NEXT_LOG_ID_KEY)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().unwrap()),
            _ => 1,
        };
        self.next_log_id.store(next, Ordering::SeqCst);
        let mut keep = HashMap::new();
        for (key, value) in self.store.scan_meta(TOPIC_PREFIX)? {
            let record: TopicRecord =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    detail: e.to_string(),
                })?;
            keep.insert(record.name.clone(), record.id);
            let same = self.get(&record.name).filter(|t| t.record == record);
            if same.is_none() {
                PostApply::Install(record).run(self)?;
            }
        }
        for t in self.list() {
            if keep.get(t.name()) != Some(&t.id()) {
                self.topics.write().unwrap().remove(t.name());
                self.by_id.write().unwrap().remove(&t.id());
            }
        }
        self.load_brokers()?;
        self.load_members()?;
        self.txns.load(&self.store)?;
        self.global.reload(&self.store)?;
        Ok(())
    }

    fn load_brokers(&self) -> Result<(), StoreError> {
        let mut eps = BTreeMap::new();
        for (key, value) in self.store.scan_meta(BROKER_PREFIX)? {
            let ep: BrokerEndpoint =
                serde_json::from_slice(&value).map_err(|e| StoreError::Corrupt {
                    key: key.clone(),
                    detail: e.to_string(),
                })?;
            eps.insert(ep.id, ep);
        }
        *self.endpoints.write().unwrap() = eps;
        Ok(())
    }
}

/// What to do in memory once an applied command's writes are stored.
pub enum PostApply {
    Broker(BrokerEndpoint),
    /// A broker removed from the region: out of Metadata.
    Unregister(i32),
    /// Membership records written (see `catalog/members.rs`).
    Members(Vec<Member>),
    /// A topic was created or changed: (re)install it, keeping open logs.
    Install(TopicRecord),
    Remove(Arc<Topic>),
    /// Consumer-group entries: the coordinator keeps its own memory.
    Nothing,
    /// Committed offsets another region changed: tell the coordinator.
    RemoteOffsets(Vec<(String, String, i32)>),
    /// A transactional id's state was stored.
    Txn(String, Option<crate::txn::state::Txn>),
    Many(Vec<PostApply>),
}

impl PostApply {
    pub fn run(self, cat: &Catalog) -> Result<(), StoreError> {
        match self {
            PostApply::Broker(ep) => {
                cat.endpoints.write().unwrap().insert(ep.id, ep);
            }
            PostApply::Unregister(id) => {
                cat.endpoints.write().unwrap().remove(&id);
            }
            PostApply::Members(members) => {
                let mut m = cat.members.write().unwrap();
                for member in members {
                    m.insert(member.id, member);
                }
            }
            PostApply::Install(record) => {
                // By id: a topic renamed in place keeps its open logs.
                let old = cat.get_by_id(&record.id);
                if let Some(o) = old.as_ref().filter(|o| o.name() != record.name) {
                    let mut topics = cat.topics.write().unwrap();
                    if topics.get(o.name()).is_some_and(|t| t.id() == record.id) {
                        topics.remove(o.name());
                    }
                }
                let name: Arc<str> = record.name.as_str().into();
                let mut parts = Vec::with_capacity(record.partitions.len());
                for (i, lid) in record.partitions.iter().enumerate() {
                    let existing = old
                        .as_ref()
                        .and_then(|t| t.partitions.get(i))
                        .filter(|p| p.log_id == *lid)
                        .cloned();
                    parts.push(match existing {
                        Some(p) => p,
                        None => {
                            PartitionLog::open(cat.store.clone(), *lid, name.clone(), i as i32)?
                        }
                    });
                }
                tracing::info!(topic = %record.name, partitions = parts.len(), version = record.version, "catalog: topic installed");
                cat.install(cat.with_partitions(record, parts));
            }
            PostApply::Nothing => return Ok(()),
            PostApply::Txn(id, txn) => {
                cat.txns.applied(&id, txn);
                return Ok(());
            }
            PostApply::RemoteOffsets(keys) => {
                if let Some(hook) = cat.offsets_hook.get() {
                    hook(keys);
                }
                return Ok(());
            }
            PostApply::Many(posts) => {
                for p in posts {
                    p.run(cat)?;
                }
                return Ok(());
            }
            PostApply::Remove(topic) => {
                cat.topics.write().unwrap().remove(topic.name());
                cat.by_id.write().unwrap().remove(&topic.id());
                tracing::info!(topic = topic.name(), "catalog: topic deleted");
            }
        }
        cat.changed.notify_waiters();
        Ok(())
    }
}

/// Sends controller commands to the region's controller group.
pub trait ControllerProposer: Send + Sync {
    fn propose(
        &self,
        cmd: ControllerCommand,
    ) -> futures_util::future::BoxFuture<'_, Result<(), TopicError>>;
}

#[cfg(test)]
mod tests {
    use super::*;
    use chronik_topology::Durability;

    #[test]
    fn topic_names_follow_kafka_rules() {
        for ok in ["a", "orders.v1", "my_topic-2", &"x".repeat(249)] {
            assert!(validate_topic_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".", "..", "bad topic!", "ümlaut", &"x".repeat(250)] {
            assert!(
                matches!(validate_topic_name(bad), Err(TopicError::InvalidName(_))),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn topics_persist_and_reject_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let id;
        {
            let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
            let cat =
                Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
            let mut cfgs = BTreeMap::new();
            cfgs.insert("retention.ms".to_string(), "1000".to_string());
            let t = cat
                .create_topic("orders", 3, -1, &[], &cfgs, false)
                .await
                .unwrap();
            id = t.id();
            assert!(matches!(
                cat.create_topic("orders", 1, 1, &[], &BTreeMap::new(), false)
                    .await,
                Err(TopicError::AlreadyExists(_))
            ));
            assert!(matches!(
                cat.create_topic("x", 1, 3, &[], &BTreeMap::new(), false)
                    .await,
                Err(TopicError::InvalidReplicationFactor(_))
            ));
            assert!(matches!(
                cat.create_topic("y", 0, 1, &[], &BTreeMap::new(), false)
                    .await,
                Err(TopicError::InvalidPartitions(_))
            ));
            cat.create_partitions("orders", 5, None, false)
                .await
                .unwrap();
            assert!(matches!(
                cat.create_partitions("orders", 2, None, false).await,
                Err(TopicError::InvalidPartitions(_))
            ));
        }
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat =
            Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
        let t = cat.get("orders").unwrap();
        assert_eq!(t.id(), id);
        assert_eq!(t.partitions.len(), 5);
        assert_eq!(t.effective.retention_ms, 1000);
        assert!(cat.get_by_id(&id).is_some());
        // Log ids are never reused, even after delete + recreate.
        let old: Vec<u64> = t.record.partitions.clone();
        cat.delete_topic("orders").await.unwrap();
        assert!(cat.get("orders").is_none());
        let again = cat
            .create_topic("orders", 1, 1, &[], &BTreeMap::new(), false)
            .await
            .unwrap();
        assert!(!old.contains(&again.record.partitions[0]));
    }

    #[tokio::test]
    async fn a_deleted_topic_takes_its_failover_verdict_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat = Catalog::open(
            store.clone(),
            TopicDefaults::default(),
            RegionSettings::single(1),
        )
        .unwrap();
        let t = cat
            .create_topic("orders", 1, 1, &[], &BTreeMap::new(), false)
            .await
            .unwrap();
        let verdict = home_move::Settlement {
            epoch: 2,
            plan: Default::default(),
        };
        let mut wb = WriteBatch::default();
        wb.put_cf(
            store.cf(CF_META),
            format!("settle/{}", t.id()),
            serde_json::to_vec(&verdict).unwrap(),
        );
        store.write(wb).await.unwrap();
        assert!(cat.settlement(&t.id(), 2).is_some());
        cat.delete_topic("orders").await.unwrap();
        assert!(cat.settlement(&t.id(), 2).is_none());
    }

    #[tokio::test]
    async fn topics_enter_the_global_meta_and_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let digest;
        {
            let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
            let cat =
                Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
            let t = cat
                .create_topic("orders", 2, 1, &[], &BTreeMap::new(), false)
                .await
                .unwrap();
            cat.create_topic("gone", 1, 1, &[], &BTreeMap::new(), false)
                .await
                .unwrap();
            cat.alter_configs(
                "orders",
                vec![ConfigOp::Set("retention.ms".into(), "5000".into())],
                false,
            )
            .await
            .unwrap();
            cat.delete_topic("gone").await.unwrap();
            let rep = cat.global.read();
            let id = rep.topic_by_name("orders").expect("global entry");
            assert_eq!(id.0, *t.id().as_bytes());
            let home = rep.home(&id).unwrap();
            assert_eq!((home.home.as_str(), home.epoch), ("local", 1));
            let def = rep.topics().find(|(i, _, _)| *i == id).unwrap().2;
            assert_eq!(def.partitions, 2);
            assert_eq!(
                def.configs.get("retention.ms").map(String::as_str),
                Some("5000")
            );
            assert!(rep.topic_by_name("gone").is_none());
            // No other region to wait for: the tombstone is gone at once.
            assert_eq!(rep.tombstones(), 0);
            digest = rep.digest();
            drop(rep);
            // The name is global: another topic cannot take it.
            let err = cat
                .check_global_name("orders", &BTreeMap::new())
                .unwrap_err();
            assert!(matches!(err, TopicError::AlreadyExists(_)), "{err}");
        }
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat =
            Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
        assert_eq!(cat.global.read().digest(), digest);
    }

    #[tokio::test]
    async fn config_changes_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat =
            Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
        cat.create_topic("t", 1, 1, &[], &BTreeMap::new(), false)
            .await
            .unwrap();
        cat.alter_configs(
            "t",
            vec![ConfigOp::Set("retention.ms".into(), "5".into())],
            false,
        )
        .await
        .unwrap();
        assert_eq!(cat.get("t").unwrap().effective.retention_ms, 5);
        assert!(cat
            .alter_configs(
                "t",
                vec![ConfigOp::Set(
                    "cleanup.policy".into(),
                    "compact,shred".into()
                )],
                false
            )
            .await
            .is_err());
        assert!(cat
            .alter_configs("t", vec![ConfigOp::Set("bogus".into(), "1".into())], false)
            .await
            .is_err());
        cat.alter_configs("t", vec![ConfigOp::Delete("retention.ms".into())], false)
            .await
            .unwrap();
        assert_eq!(
            cat.get("t").unwrap().effective.retention_ms,
            TopicDefaults::default().retention_ms
        );
    }
}
