//! Transactional ids' states as the controller applied them, on every
//! broker: the coordinator (the controller leader) keeps its own live copy,
//! and partition leaders read this one to check that a transactional batch
//! belongs to an open transaction that holds the partition (KIP-890).

use std::collections::HashMap;
use std::sync::RwLock;

use rocksdb::WriteBatch;

use crate::storage::{Store, StoreError, CF_META};
use crate::txn::state::Txn;
use crate::txn::{txn_key, TXN_PREFIX};

#[derive(Default)]
pub struct Txns {
    /// Producer id -> (transactional id, state).
    by_producer: RwLock<HashMap<i64, (String, Txn)>>,
}

impl Txns {
    pub fn load(&self, store: &Store) -> Result<(), StoreError> {
        let mut m = HashMap::new();
        for (k, v) in store.scan_meta(TXN_PREFIX)? {
            let t: Txn = serde_json::from_slice(&v).map_err(|e| StoreError::Corrupt {
                key: k.clone(),
                detail: e.to_string(),
            })?;
            m.insert(t.producer_id, (k[TXN_PREFIX.len()..].to_string(), t));
        }
        *self.by_producer.write().unwrap() = m;
        Ok(())
    }

    pub fn put_into(store: &Store, wb: &mut WriteBatch, id: &str, txn: Option<&Txn>) {
        match txn {
            Some(t) => wb.put_cf(
                store.cf(CF_META),
                txn_key(id),
                serde_json::to_vec(t).expect("serializes"),
            ),
            None => wb.delete_cf(store.cf(CF_META), txn_key(id)),
        }
    }

    /// After the write: the in-memory view follows.
    pub fn applied(&self, id: &str, txn: Option<Txn>) {
        let mut m = self.by_producer.write().unwrap();
        // A new producer id (epoch exhausted) replaces the id's old one.
        m.retain(|_, (i, _)| i != id);
        if let Some(t) = txn {
            m.insert(t.producer_id, (id.to_string(), t));
        }
    }

    pub fn by_producer(&self, producer_id: i64) -> Option<Txn> {
        self.by_producer
            .read()
            .unwrap()
            .get(&producer_id)
            .map(|(_, t)| t.clone())
    }
}

impl Txns {
    /// Whether an open or ending transaction holds an offset of `group`
    /// for `topic`/`partition` that is not committed yet.
    pub fn offset_pending(&self, group: &str, topic: &str, partition: i32) -> bool {
        use crate::txn::state::Status;
        self.by_producer.read().unwrap().values().any(|(_, t)| {
            matches!(
                t.status,
                Status::Ongoing | Status::PrepareCommit | Status::PrepareAbort
            ) && t
                .offsets
                .iter()
                .any(|o| o.group == group && o.topic == topic && o.partition == partition)
        })
    }
}
