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
use crate::log::PartitionLog;
use crate::storage::{Store, StoreError, CF_META};

const TOPIC_PREFIX: &str = "topic/";
const NEXT_LOG_ID_KEY: &str = "counter/next_log_id";

/// Kafka's longest legal topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TopicRecord {
    pub name: String,
    pub id: Uuid,
    /// Log id of each partition, by partition index.
    pub partitions: Vec<u64>,
    pub configs: BTreeMap<String, String>,
    pub created_ms: i64,
    /// Bumped on every change to this entry.
    pub version: u64,
}

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
    node_id: i32,
    topics: RwLock<HashMap<String, Arc<Topic>>>,
    by_id: RwLock<HashMap<Uuid, Arc<Topic>>>,
    next_log_id: AtomicU64,
    /// Serializes catalog changes so two creates of one name cannot race.
    admin: tokio::sync::Mutex<()>,
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
        node_id: i32,
    ) -> Result<Catalog, StoreError> {
        let next = match store.get_meta(NEXT_LOG_ID_KEY)? {
            Some(v) if v.len() == 8 => u64::from_be_bytes(v[..8].try_into().unwrap()),
            _ => 1,
        };
        let cat = Catalog {
            store: store.clone(),
            defaults,
            node_id,
            topics: RwLock::new(HashMap::new()),
            by_id: RwLock::new(HashMap::new()),
            next_log_id: AtomicU64::new(next),
            admin: tokio::sync::Mutex::new(()),
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

    fn check_replication(&self, replication_factor: i16) -> Result<(), TopicError> {
        // One broker per region until replication lands, so the only legal
        // factor is 1 (or -1, "use the default").
        if replication_factor == 0 || replication_factor < -1 {
            return Err(TopicError::InvalidReplicationFactor(
                "Replication factor must be larger than 0, or -1 to use the default value.".into(),
            ));
        }
        if replication_factor > 1 {
            return Err(TopicError::InvalidReplicationFactor(format!(
                "Unable to replicate the partition {replication_factor} time(s): The target replication factor of {replication_factor} cannot be reached because only 1 broker(s) are registered."
            )));
        }
        Ok(())
    }

    fn check_assignments(&self, assignments: &[Vec<i32>]) -> Result<(), TopicError> {
        for (i, brokers) in assignments.iter().enumerate() {
            if brokers.is_empty() || brokers.iter().any(|b| *b != self.node_id) || brokers.len() > 1
            {
                return Err(TopicError::InvalidReplicaAssignment(format!(
                    "Replica assignment for partition {i} must list only broker {} (got {brokers:?})",
                    self.node_id
                )));
            }
        }
        Ok(())
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
        validate_topic_name(name)?;
        let _g = self.admin.lock().await;
        if self.get(name).is_some() {
            return Err(TopicError::AlreadyExists(name.to_string()));
        }
        let count = if !assignments.is_empty() {
            if partitions != -1 || replication_factor != -1 {
                return Err(TopicError::InvalidReplicaAssignment(
                    "Both numPartitions or replicationFactor and replicasAssignments were set. Both cannot be used at the same time.".into(),
                ));
            }
            self.check_assignments(assignments)?;
            assignments.len() as i32
        } else {
            self.check_replication(replication_factor)?;
            match partitions {
                -1 => self.defaults.default_partitions as i32,
                n if n <= 0 => {
                    return Err(TopicError::InvalidPartitions(
                        "Number of partitions must be larger than 0.".into(),
                    ))
                }
                n => n,
            }
        };
        let configs = Self::validate_configs(configs)?;
        let record = TopicRecord {
            name: name.to_string(),
            id: Uuid::new_v4(),
            partitions: vec![],
            configs,
            created_ms: now_ms(),
            version: 1,
        };
        if validate_only {
            return Ok(self.with_partitions(
                TopicRecord {
                    partitions: vec![0; count as usize],
                    ..record
                },
                vec![],
            ));
        }
        let mut wb = WriteBatch::default();
        let log_ids = self.alloc_log_ids(count as usize, &mut wb);
        for id in &log_ids {
            PartitionLog::init_record(&self.store, &mut wb, *id);
        }
        let record = TopicRecord {
            partitions: log_ids,
            ..record
        };
        self.put_record(&mut wb, &record);
        self.store.write(wb).await?;
        let topic = self.materialize(record)?;
        self.install(topic.clone());
        tracing::info!(topic = name, partitions = count, "created topic");
        Ok(topic)
    }

    fn put_record(&self, wb: &mut WriteBatch, record: &TopicRecord) {
        wb.put_cf(
            self.store.cf(CF_META),
            format!("{TOPIC_PREFIX}{}", record.name),
            serde_json::to_vec(record).expect("serializes"),
        );
    }

    pub async fn delete_topic(&self, name: &str) -> Result<Arc<Topic>, TopicError> {
        let _g = self.admin.lock().await;
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let mut wb = WriteBatch::default();
        wb.delete_cf(self.store.cf(CF_META), format!("{TOPIC_PREFIX}{name}"));
        for p in &topic.partitions {
            p.delete_into(&mut wb);
        }
        self.topics.write().unwrap().remove(name);
        self.by_id.write().unwrap().remove(&topic.id());
        self.store.write(wb).await?;
        tracing::info!(topic = name, "deleted topic");
        Ok(topic)
    }

    pub async fn create_partitions(
        &self,
        name: &str,
        count: i32,
        assignments: Option<&[Vec<i32>]>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _g = self.admin.lock().await;
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
        if let Some(a) = assignments {
            if a.len() as i32 != count - current {
                return Err(TopicError::InvalidReplicaAssignment(format!(
                    "Increasing the number of partitions by {} but {} assignments provided.",
                    count - current,
                    a.len()
                )));
            }
            self.check_assignments(a)?;
        }
        if validate_only {
            return Ok(());
        }
        let mut wb = WriteBatch::default();
        let new_ids = self.alloc_log_ids((count - current) as usize, &mut wb);
        for id in &new_ids {
            PartitionLog::init_record(&self.store, &mut wb, *id);
        }
        let mut record = topic.record.clone();
        record.partitions.extend(new_ids.iter().copied());
        record.version += 1;
        self.put_record(&mut wb, &record);
        self.store.write(wb).await?;
        let mut partitions = topic.partitions.clone();
        let tname: Arc<str> = name.into();
        for (i, id) in new_ids.iter().enumerate() {
            partitions.push(PartitionLog::open(
                self.store.clone(),
                *id,
                tname.clone(),
                current + i as i32,
            )?);
        }
        self.install(self.with_partitions(record, partitions));
        Ok(())
    }

    pub async fn alter_configs(
        &self,
        name: &str,
        ops: Vec<ConfigOp>,
        validate_only: bool,
    ) -> Result<(), TopicError> {
        let _g = self.admin.lock().await;
        let topic = self.get(name).ok_or(TopicError::Unknown)?;
        let mut configs = topic.record.configs.clone();
        for op in ops {
            match op {
                ConfigOp::Set(k, v) => {
                    let v = configs::validate(&k, &v)?;
                    configs.insert(k, v);
                }
                ConfigOp::Delete(k) => {
                    if configs::find(&k).is_none() {
                        return Err(ConfigValueError::Unknown(k).into());
                    }
                    configs.remove(&k);
                }
            }
        }
        if validate_only {
            return Ok(());
        }
        let mut record = topic.record.clone();
        record.configs = configs;
        record.version += 1;
        let mut wb = WriteBatch::default();
        self.put_record(&mut wb, &record);
        self.store.write(wb).await?;
        self.install(self.with_partitions(record, topic.partitions.clone()));
        Ok(())
    }
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
            let cat = Catalog::open(store, TopicDefaults::default(), 1).unwrap();
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
        let cat = Catalog::open(store, TopicDefaults::default(), 1).unwrap();
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
    async fn config_changes_are_validated() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat = Catalog::open(store, TopicDefaults::default(), 1).unwrap();
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
                vec![ConfigOp::Set("cleanup.policy".into(), "compact".into())],
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
