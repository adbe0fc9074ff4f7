//! The region's copy of the global `__meta` (crate `chronik-metadata-sync`),
//! held in the regional controller's state machine.
//!
//! Every broker of a region applies the same controller commands in the same
//! order, and every input of a `__meta` change comes from the command itself
//! (its wall time, the delta it carries), so every broker holds the same
//! replica: the same entries, counters and conflict log. Local changes
//! (topic created, configs altered, offsets committed) are written into the
//! replica when the controller applies them; remote ones enter through one
//! command, `MetaMerge`, that applies a peer region's delta.
//!
//! Stored in the meta column family, next to the catalog:
//!   `gmeta/k/<kind:08x>/<key hex>` -> one entry and its tombstone acks
//!   `gmeta/c/<seq:016x>`           -> one conflict record
//!   `gmeta/state`                  -> clock, write counter, knowledge
//!   `gmeta/regions`                -> the topology's regions (JSON list)
//! The whole `gmeta/` prefix travels in controller snapshots.

use std::sync::{RwLock, RwLockReadGuard, RwLockWriteGuard};

use chronik_metadata_sync::{Changes, Limits, RegionId, Replica};
use rocksdb::WriteBatch;

use crate::storage::{Store, StoreError, CF_META};

pub mod http;

pub const PREFIX: &str = "gmeta/";
const KEY_PREFIX: &str = "gmeta/k/";
const CONFLICT_PREFIX: &str = "gmeta/c/";
const STATE_KEY: &str = "gmeta/state";
const REGIONS_KEY: &str = "gmeta/regions";

pub struct GlobalMeta {
    region: RegionId,
    replica: RwLock<Replica>,
    /// Woken whenever an apply changed an entry (the dc-link's long poll).
    pub changed: tokio::sync::Notify,
    /// `/metrics`: when committed offsets beyond the log end were last
    /// counted, and how many there were.
    pub beyond_log_end: std::sync::Mutex<Option<(std::time::Instant, usize)>>,
    /// Bumped whenever an ACL entry changes (locally, by a merge, or by a
    /// snapshot), so the authorizer rebuilds its bindings only then, not
    /// on every request.
    acl_generation: std::sync::atomic::AtomicU64,
}

fn corrupt(key: &str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        key: key.to_string(),
        detail: detail.to_string(),
    }
}

fn key_name(key: &chronik_metadata_sync::Key) -> String {
    let mut s = format!("{KEY_PREFIX}{:08x}/", key.kind());
    for b in key.encode().iter() {
        s.push_str(&format!("{b:02x}"));
    }
    s
}

impl GlobalMeta {
    /// Loads the replica this broker last stored (an empty one at first).
    pub fn open(store: &Store, region: &str) -> Result<GlobalMeta, StoreError> {
        let region = RegionId::new(region).map_err(|e| corrupt("region", e))?;
        let replica = Self::load(store, &region)?;
        Ok(GlobalMeta {
            region,
            replica: RwLock::new(replica),
            changed: tokio::sync::Notify::new(),
            beyond_log_end: Default::default(),
            acl_generation: Default::default(),
        })
    }

    fn load(store: &Store, region: &RegionId) -> Result<Replica, StoreError> {
        let regions: Vec<String> = match store.get_meta(REGIONS_KEY)? {
            Some(v) => serde_json::from_slice(&v).map_err(|e| corrupt(REGIONS_KEY, e))?,
            None => Vec::new(),
        };
        let regions = regions
            .into_iter()
            .map(|r| RegionId::new(r).map_err(|e| corrupt(REGIONS_KEY, e)))
            .collect::<Result<Vec<_>, _>>()?;
        let state = store.get_meta(STATE_KEY)?;
        let keys = store.scan_meta(KEY_PREFIX)?;
        let conflicts = store.scan_meta(CONFLICT_PREFIX)?;
        Replica::restore(
            region.clone(),
            regions,
            Limits::default(),
            state.as_deref(),
            keys.iter().map(|(_, v)| v.as_slice()),
            conflicts.iter().map(|(_, v)| v.as_slice()),
        )
        .map_err(|e| corrupt(&e.what, e.detail))
    }

    /// Re-reads the replica from the store (after a snapshot install).
    pub fn reload(&self, store: &Store) -> Result<(), StoreError> {
        let r = Self::load(store, &self.region)?;
        *self.replica.write().unwrap() = r;
        self.bump_acls();
        self.changed.notify_waiters();
        Ok(())
    }

    fn bump_acls(&self) {
        self.acl_generation
            .fetch_add(1, std::sync::atomic::Ordering::Release);
    }

    /// Changes whenever any ACL binding may have changed.
    pub fn acl_generation(&self) -> u64 {
        self.acl_generation
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn region(&self) -> &RegionId {
        &self.region
    }

    pub fn read(&self) -> RwLockReadGuard<'_, Replica> {
        self.replica.read().unwrap()
    }

    /// For the controller's apply only: every change must be followed by
    /// [`GlobalMeta::save`] into the same write batch.
    pub fn write(&self) -> RwLockWriteGuard<'_, Replica> {
        self.replica.write().unwrap()
    }

    /// Sets the topology's regions; stored with the entries.
    pub fn set_regions(
        store: &Store,
        replica: &mut Replica,
        regions: &[String],
        wb: &mut WriteBatch,
    ) {
        replica.set_regions(regions.iter().filter_map(|r| RegionId::new(r.clone()).ok()));
        let list: Vec<String> = replica.regions().map(|r| r.to_string()).collect();
        wb.put_cf(
            store.cf(CF_META),
            REGIONS_KEY,
            serde_json::to_vec(&list).expect("serializes"),
        );
    }

    /// Writes what changed in `replica` since the last save into `wb`.
    pub fn save(&self, store: &Store, replica: &mut Replica, wb: &mut WriteBatch) {
        let Changes {
            keys,
            conflicts,
            conflicts_from,
            state,
        } = replica.take_changes();
        let meta = store.cf(CF_META);
        if !keys.is_empty() {
            self.changed.notify_waiters();
        }
        if keys
            .iter()
            .any(|(k, _)| matches!(k, chronik_metadata_sync::Key::Acl(_)))
        {
            self.bump_acls();
        }
        for (key, record) in keys {
            match record {
                Some(v) => wb.put_cf(meta, key_name(&key), v),
                None => wb.delete_cf(meta, key_name(&key)),
            }
        }
        for (seq, v) in conflicts {
            wb.put_cf(meta, format!("{CONFLICT_PREFIX}{seq:016x}"), v);
        }
        wb.delete_range_cf(
            meta,
            format!("{CONFLICT_PREFIX}{:016x}", 0),
            format!("{CONFLICT_PREFIX}{conflicts_from:016x}"),
        );
        wb.put_cf(meta, STATE_KEY, state);
    }
}
