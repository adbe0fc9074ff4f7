//! openraft's log storage on the broker's one RocksDB: every group's Raft
//! log in the `raft` column family under (group id, index), and its vote,
//! committed and purged log ids in `meta` under `raft/<group>/...`.
//!
//! Appends are written to RocksDB at once (so they are readable when
//! `append` returns, as openraft requires) and made durable through the
//! store's group-commit writer, so one WAL sync covers many groups' appends.

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use rocksdb::{ReadOptions, WriteBatch, WriteOptions};

use super::codec;
use super::types::{Entry, LogId, TypeConfig, Vote};
use crate::storage::{log_key, Store, CF_META, CF_RAFT};

pub fn io_err(e: impl std::fmt::Display) -> io::Error {
    io::Error::other(e.to_string())
}

#[derive(Clone)]
pub struct LogStore {
    store: Arc<Store>,
    group: u64,
}

/// `meta` key of a group's Raft bookkeeping (vote, applied, snapshot, ...).
pub fn meta_key(group: u64, what: &str) -> String {
    format!("raft/{group:016x}/{what}")
}

pub fn get_group_json<T: serde::de::DeserializeOwned>(
    store: &Store,
    group: u64,
    what: &str,
) -> io::Result<Option<T>> {
    match store.get_meta(&meta_key(group, what)).map_err(io_err)? {
        None => Ok(None),
        Some(v) => serde_json::from_slice(&v).map(Some).map_err(io_err),
    }
}

pub fn put_group_json<T: serde::Serialize>(
    store: &Store,
    wb: &mut WriteBatch,
    group: u64,
    what: &str,
    v: &T,
) {
    wb.put_cf(
        store.cf(CF_META),
        meta_key(group, what),
        serde_json::to_vec(v).expect("serializes"),
    );
}

impl LogStore {
    pub fn new(store: Arc<Store>, group: u64) -> LogStore {
        LogStore { store, group }
    }

    fn get_json<T: serde::de::DeserializeOwned>(&self, what: &str) -> io::Result<Option<T>> {
        get_group_json(&self.store, self.group, what)
    }

    fn put_json<T: serde::Serialize>(&self, wb: &mut WriteBatch, what: &str, v: &T) {
        put_group_json(&self.store, wb, self.group, what, v)
    }

    fn write_now(&self, wb: WriteBatch) -> io::Result<()> {
        let mut wo = WriteOptions::default();
        wo.set_sync(false);
        self.store.db().write_opt(wb, &wo).map_err(io_err)
    }

    async fn durable(&self) -> io::Result<()> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.store.flush(Box::new(move |r| {
            let _ = tx.send(r);
        }));
        rx.await
            .map_err(|_| io_err("writer stopped"))?
            .map_err(io_err)
    }

    fn iter(&self) -> rocksdb::DBRawIterator<'_> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(self.group, 0).to_vec());
        ro.set_iterate_upper_bound(log_key(self.group + 1, 0).to_vec());
        self.store
            .db()
            .raw_iterator_cf_opt(self.store.cf(CF_RAFT), ro)
    }

    fn key(&self, index: u64) -> [u8; 16] {
        let mut k = [0u8; 16];
        k[..8].copy_from_slice(&self.group.to_be_bytes());
        k[8..].copy_from_slice(&index.to_be_bytes());
        k
    }

    /// Removes every trace of the group (its topic was deleted).
    pub fn destroy_into(&self, wb: &mut WriteBatch) {
        wb.delete_range_cf(
            self.store.cf(CF_RAFT),
            self.key(0),
            log_key(self.group + 1, 0),
        );
        for what in ["vote", "committed", "purged"] {
            wb.delete_cf(self.store.cf(CF_META), meta_key(self.group, what));
        }
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x + 1,
            Bound::Unbounded => 0,
        };
        let mut it = self.iter();
        it.seek(self.key(start));
        let mut out = Vec::new();
        while it.valid() {
            let k = it.key().unwrap_or_default();
            let idx = u64::from_be_bytes(k[8..16].try_into().map_err(io_err)?);
            if !range.contains(&idx) {
                break;
            }
            let e = codec::decode_entry(it.value().unwrap_or_default()).map_err(io_err)?;
            out.push(e);
            it.next();
        }
        it.status().map_err(io_err)?;
        Ok(out)
    }

    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        self.get_json("vote")
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let mut it = self.iter();
        it.seek_to_last();
        let last = if it.valid() {
            Some(
                codec::decode_entry(it.value().unwrap_or_default())
                    .map_err(io_err)?
                    .log_id,
            )
        } else {
            None
        };
        it.status().map_err(io_err)?;
        let purged: Option<LogId> = self.get_json("purged")?;
        Ok(LogState {
            last_log_id: last.or(purged),
            last_purged_log_id: purged,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let mut wb = WriteBatch::default();
        self.put_json(&mut wb, "vote", vote);
        self.write_now(wb)?;
        self.durable().await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Not synced: a lost committed id is re-learned from the leader.
        let mut wb = WriteBatch::default();
        self.put_json(&mut wb, "committed", &committed);
        self.write_now(wb)
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        Ok(self.get_json::<Option<LogId>>("committed")?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
    {
        let mut wb = WriteBatch::default();
        let cf = self.store.cf(CF_RAFT);
        let mut bytes = 0usize;
        for e in entries {
            let v = codec::encode_entry(&e);
            bytes += v.len();
            wb.put_cf(cf, self.key(e.log_id.index()), v);
        }
        self.write_now(wb)?;
        metrics::counter!("chronik_raft_appended_bytes_total").increment(bytes as u64);
        self.store.flush(Box::new(move |r| {
            callback.io_completed(r.map_err(io_err));
        }));
        Ok(())
    }

    async fn truncate_after(&mut self, last: Option<LogId>) -> io::Result<()> {
        let from = last.map(|l| l.index() + 1).unwrap_or(0);
        let mut wb = WriteBatch::default();
        wb.delete_range_cf(
            self.store.cf(CF_RAFT),
            self.key(from),
            log_key(self.group + 1, 0),
        );
        self.write_now(wb)
    }

    async fn purge(&mut self, upto: LogId) -> io::Result<()> {
        let mut wb = WriteBatch::default();
        self.put_json(&mut wb, "purged", &upto);
        wb.delete_range_cf(
            self.store.cf(CF_RAFT),
            self.key(0),
            self.key(upto.index() + 1),
        );
        self.write_now(wb)
    }
}
