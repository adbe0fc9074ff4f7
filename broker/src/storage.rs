//! The broker's one RocksDB instance and its group-commit writer.
//!
//! Column families:
//! - `log`:       (log id, base offset) -> record batch bytes, as stored.
//! - `index`:     (log id, base offset) -> last offset, max timestamp, size.
//!   Small, so recovery and time lookups scan it instead of the data.
//! - `producers`: (log id, producer id) -> idempotent producer state.
//! - `meta`:      string keys -> JSON (topics, partition state, counters).
//!
//! Keys are big-endian so each partition's batches are one contiguous,
//! offset-ordered key range: appends are sequential and fetches are range
//! scans. A "log id" is allocated per partition at creation and never reused,
//! so deleting and re-creating a topic can never mix two logs.
//!
//! All writes go through [`Store::submit`], which hands them to a single
//! writer thread. That thread writes every queued job, then makes them
//! durable with one WAL sync, so many produce requests share one fdatasync.
//!
//! [`Store::open_inline`] has no writer thread: each write is done and
//! completed on the caller's thread before `submit` returns. The
//! deterministic simulation needs that: a completion arriving from another
//! thread would land at a point in simulated time that depends on the OS
//! scheduler, and a failing seed would not replay.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::time::Instant;

use rocksdb::{ColumnFamilyDescriptor, Options, ReadOptions, WriteBatch, WriteOptions, DB};

use chronik_topology::Durability;

pub const CF_LOG: &str = "log";
pub const CF_INDEX: &str = "index";
pub const CF_PRODUCERS: &str = "producers";
pub const CF_META: &str = "meta";
/// Raft logs of every group: (group id, index) -> entry (prost).
pub const CF_RAFT: &str = "raft";

#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    #[error("rocksdb: {0}")]
    Rocks(String),
    #[error("storage is unavailable after an earlier write failure: {0}")]
    Failed(String),
    #[error("corrupt stored value under {key}: {detail}")]
    Corrupt { key: String, detail: String },
}

impl From<rocksdb::Error> for StoreError {
    fn from(e: rocksdb::Error) -> Self {
        StoreError::Rocks(e.into_string())
    }
}

/// Called on the writer thread once a job is durable (or failed). Must be
/// cheap: it runs before the next group can start.
pub type Completion = Box<dyn FnOnce(Result<(), StoreError>) + Send>;

struct Job {
    batch: WriteBatch,
    /// Whether `done` must wait for a WAL sync (with `durability = fsync`).
    sync: bool,
    done: Completion,
}

pub struct Store {
    db: Arc<DB>,
    tx: Option<mpsc::Sender<Job>>,
    writer: Option<std::thread::JoinHandle<()>>,
    failed: Arc<AtomicBool>,
    /// Set for [`Store::open_inline`]: the durability, and the first write
    /// failure (after which every write fails, as on the writer thread).
    inline: Option<(Durability, std::sync::Mutex<Option<String>>)>,
}

impl Drop for Store {
    fn drop(&mut self) {
        // Closing the queue lets the writer finish what is queued; joining it
        // releases its handle on the DB so the directory can be reopened.
        self.tx.take();
        if let Some(w) = self.writer.take() {
            // Never join from the writer thread itself (it would deadlock);
            // there the thread ends on its own once the queue is closed.
            if w.thread().id() != std::thread::current().id() {
                let _ = w.join();
            }
        }
    }
}

pub fn log_key(log_id: u64, offset: i64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&log_id.to_be_bytes());
    k[8..].copy_from_slice(&(offset as u64).to_be_bytes());
    k
}

pub fn split_log_key(k: &[u8]) -> Option<(u64, i64)> {
    if k.len() != 16 {
        return None;
    }
    Some((
        u64::from_be_bytes(k[..8].try_into().ok()?),
        u64::from_be_bytes(k[8..].try_into().ok()?) as i64,
    ))
}

/// One entry of the `index` column family.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IndexEntry {
    pub base_offset: i64,
    pub last_offset: i64,
    pub max_timestamp: i64,
    pub size: u32,
}

impl IndexEntry {
    pub fn encode(&self) -> [u8; 20] {
        let mut v = [0u8; 20];
        v[..8].copy_from_slice(&self.last_offset.to_be_bytes());
        v[8..16].copy_from_slice(&self.max_timestamp.to_be_bytes());
        v[16..].copy_from_slice(&self.size.to_be_bytes());
        v
    }

    pub fn decode(key: &[u8], v: &[u8]) -> Option<IndexEntry> {
        let (_, base_offset) = split_log_key(key)?;
        if v.len() != 20 {
            return None;
        }
        Some(IndexEntry {
            base_offset,
            last_offset: i64::from_be_bytes(v[..8].try_into().ok()?),
            max_timestamp: i64::from_be_bytes(v[8..16].try_into().ok()?),
            size: u32::from_be_bytes(v[16..].try_into().ok()?),
        })
    }
}

impl Store {
    pub fn open(dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        let db = Self::open_db(dir)?;
        let (tx, rx) = mpsc::channel::<Job>();
        let failed = Arc::new(AtomicBool::new(false));
        let writer_db = db.clone();
        let writer_failed = failed.clone();
        let writer = std::thread::Builder::new()
            .name("chronik-commit".into())
            .spawn(move || writer_loop(writer_db, rx, durability, writer_failed))
            .map_err(|e| StoreError::Rocks(format!("spawning writer thread: {e}")))?;
        Ok(Store {
            db,
            tx: Some(tx),
            writer: Some(writer),
            failed,
            inline: None,
        })
    }

    /// A store that writes on the caller's thread, one job at a time (see
    /// the module docs). Same ordering and failure rules, no group commit.
    pub fn open_inline(dir: &Path, durability: Durability) -> Result<Store, StoreError> {
        Ok(Store {
            db: Self::open_db(dir)?,
            tx: None,
            writer: None,
            failed: Arc::new(AtomicBool::new(false)),
            inline: Some((durability, std::sync::Mutex::new(None))),
        })
    }

    fn open_db(dir: &Path) -> Result<Arc<DB>, StoreError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Rocks(format!("creating {}: {e}", dir.display())))?;
        let mut opts = Options::default();
        opts.create_if_missing(true);
        opts.create_missing_column_families(true);
        opts.set_max_background_jobs(2);
        opts.set_bytes_per_sync(1 << 20);
        let mut log_opts = Options::default();
        // Batches arrive already compressed by clients; RocksDB compression
        // would only burn CPU.
        log_opts.set_compression_type(rocksdb::DBCompressionType::None);
        log_opts.set_write_buffer_size(64 << 20);
        log_opts.set_max_write_buffer_number(4);
        log_opts.set_target_file_size_base(64 << 20);
        log_opts.set_level_compaction_dynamic_level_bytes(true);
        // BlobDB (values in blob files) was measured here: no produce gain,
        // and catch-up reads 2.5x slower, so batches stay inline.
        let small = Options::default();
        // Raft entries are written once, read by lagging followers, and
        // deleted in ranges once applied and snapshotted.
        let mut raft_opts = Options::default();
        raft_opts.set_compression_type(rocksdb::DBCompressionType::None);
        raft_opts.set_write_buffer_size(64 << 20);
        raft_opts.set_max_write_buffer_number(4);
        let cfs = vec![
            ColumnFamilyDescriptor::new(CF_LOG, log_opts),
            ColumnFamilyDescriptor::new(CF_INDEX, small.clone()),
            ColumnFamilyDescriptor::new(CF_PRODUCERS, small.clone()),
            ColumnFamilyDescriptor::new(CF_META, small),
            ColumnFamilyDescriptor::new(CF_RAFT, raft_opts),
        ];
        Ok(Arc::new(DB::open_cf_descriptors(&opts, dir, cfs)?))
    }

    pub fn db(&self) -> &DB {
        &self.db
    }

    pub fn cf(&self, name: &str) -> &rocksdb::ColumnFamily {
        self.db
            .cf_handle(name)
            .expect("column family created at open")
    }

    pub fn is_failed(&self) -> bool {
        self.failed.load(Ordering::Acquire)
    }

    /// Queues a write; `done` runs once it is durable per the configured
    /// durability, in submission order.
    pub fn submit(&self, batch: WriteBatch, done: Completion) {
        self.enqueue(Job {
            batch,
            sync: true,
            done,
        })
    }

    /// Like [`Store::submit`], but never waits for a sync of its own: for
    /// state that can be rebuilt from something already durable (a Raft
    /// state machine re-applies from its log). It is still written in
    /// order, and a later sync covers it.
    pub fn submit_unsynced(&self, batch: WriteBatch, done: Completion) {
        self.enqueue(Job {
            batch,
            sync: false,
            done,
        })
    }

    fn enqueue(&self, job: Job) {
        if let Some((durability, broken)) = &self.inline {
            let mut group = vec![job];
            // The lock only orders writers; completions run after it is
            // released, since they may submit again.
            let (result, dones) = {
                let mut broken = broken.lock().unwrap();
                write_group(&self.db, &mut group, *durability, &mut broken, &self.failed)
            };
            for done in dones {
                done(result.clone());
            }
            return;
        }
        let unsent = match &self.tx {
            Some(tx) => tx.send(job).err().map(|e| e.0),
            None => Some(job),
        };
        if let Some(job) = unsent {
            (job.done)(Err(StoreError::Failed("writer thread stopped".into())));
        }
    }

    /// Resolves once everything written to the DB before this call is
    /// durable per the configured durability (a WAL sync with `fsync`).
    pub fn flush(&self, done: Completion) {
        self.submit(WriteBatch::default(), done);
    }

    /// Submits and waits; for rare metadata writes off the hot path.
    pub async fn write(&self, batch: WriteBatch) -> Result<(), StoreError> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.submit(
            batch,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.await
            .unwrap_or_else(|_| Err(StoreError::Failed("writer thread stopped".into())))
    }

    pub fn get_cf(&self, cf: &str, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(cf), key)?)
    }

    pub fn get_meta(&self, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        Ok(self.db.get_cf(self.cf(CF_META), key.as_bytes())?)
    }

    /// All `meta` entries whose key starts with `prefix`.
    pub fn scan_meta(&self, prefix: &str) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut it = self.db.raw_iterator_cf(self.cf(CF_META));
        it.seek(prefix.as_bytes());
        let mut out = Vec::new();
        while it.valid() {
            let k = it.key().unwrap_or_default();
            if !k.starts_with(prefix.as_bytes()) {
                break;
            }
            out.push((
                String::from_utf8_lossy(k).into_owned(),
                it.value().unwrap_or_default().to_vec(),
            ));
            it.next();
        }
        it.status()?;
        Ok(out)
    }

    /// Iterator bounded to one log id in `cf`.
    pub fn log_iter(&self, cf: &str, log_id: u64) -> rocksdb::DBRawIterator<'_> {
        let mut ro = ReadOptions::default();
        ro.set_iterate_lower_bound(log_key(log_id, 0).to_vec());
        ro.set_iterate_upper_bound(log_key(log_id + 1, 0).to_vec());
        self.db.raw_iterator_cf_opt(self.cf(cf), ro)
    }

    /// Every index entry of a log, in offset order.
    pub fn index_entries(&self, log_id: u64) -> Result<Vec<IndexEntry>, StoreError> {
        let mut it = self.log_iter(CF_INDEX, log_id);
        it.seek_to_first();
        let mut out = Vec::new();
        while it.valid() {
            let (k, v) = (it.key().unwrap_or_default(), it.value().unwrap_or_default());
            out.push(IndexEntry::decode(k, v).ok_or_else(|| StoreError::Corrupt {
                key: format!("index {k:?}"),
                detail: "bad index entry".into(),
            })?);
            it.next();
        }
        it.status()?;
        Ok(out)
    }
}

fn writer_loop(
    db: Arc<DB>,
    rx: mpsc::Receiver<Job>,
    durability: Durability,
    failed: Arc<AtomicBool>,
) {
    const MAX_GROUP: usize = 4096;
    let mut group: Vec<Job> = Vec::with_capacity(64);
    let mut broken: Option<String> = None;
    while let Ok(first) = rx.recv() {
        group.push(first);
        while group.len() < MAX_GROUP {
            match rx.try_recv() {
                Ok(j) => group.push(j),
                Err(_) => break,
            }
        }
        let (result, dones) = write_group(&db, &mut group, durability, &mut broken, &failed);
        for done in dones {
            done(result.clone());
        }
    }
}

/// Writes `group` in order and makes it durable with at most one WAL sync.
/// Returns the outcome and the completions, for the caller to run.
fn write_group(
    db: &DB,
    group: &mut Vec<Job>,
    durability: Durability,
    broken: &mut Option<String>,
    failed: &AtomicBool,
) -> (Result<(), StoreError>, Vec<Completion>) {
    let mut wo = WriteOptions::default();
    wo.set_sync(false);
    let n = group.len();
    let start = Instant::now();
    let mut result: Result<(), StoreError> = match &*broken {
        Some(e) => Err(StoreError::Failed(e.clone())),
        None => Ok(()),
    };
    let needs_sync = group.iter().any(|j| j.sync);
    let mut dones = Vec::with_capacity(n);
    for job in group.drain(..) {
        if result.is_ok() {
            if let Err(e) = db.write_opt(job.batch, &wo) {
                result = Err(e.into());
            }
        }
        dones.push(job.done);
    }
    if result.is_ok() && durability == Durability::Fsync && needs_sync {
        let sync_start = Instant::now();
        if let Err(e) = db.flush_wal(true) {
            result = Err(e.into());
        }
        metrics::histogram!("chronik_wal_sync_seconds").record(sync_start.elapsed().as_secs_f64());
    }
    if let Err(e) = &result {
        if broken.is_none() {
            // After a failed write the log may have a hole; refuse every
            // later write rather than acknowledge data past it.
            tracing::error!(error = %e, "storage write failed; broker stops accepting writes");
            failed.store(true, Ordering::Release);
            *broken = Some(e.to_string());
        }
    }
    metrics::histogram!("chronik_commit_group_size").record(n as f64);
    metrics::histogram!("chronik_commit_seconds").record(start.elapsed().as_secs_f64());
    (result, dones)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sort_by_log_then_offset() {
        let mut keys = [
            log_key(2, 0),
            log_key(1, 300),
            log_key(1, 2),
            log_key(1, 256),
        ];
        keys.sort();
        let decoded: Vec<_> = keys.iter().map(|k| split_log_key(k).unwrap()).collect();
        assert_eq!(decoded, vec![(1, 2), (1, 256), (1, 300), (2, 0)]);
    }

    #[test]
    fn index_entry_round_trips() {
        let e = IndexEntry {
            base_offset: 10,
            last_offset: 19,
            max_timestamp: 1_700_000_000_000,
            size: 4096,
        };
        assert_eq!(IndexEntry::decode(&log_key(5, 10), &e.encode()), Some(e));
        assert_eq!(IndexEntry::decode(&log_key(5, 10), &[0; 3]), None);
    }

    #[test]
    fn inline_store_completes_before_submit_returns() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_inline(dir.path(), Durability::Fsync).unwrap();
        let done = Arc::new(AtomicBool::new(false));
        let mut b = WriteBatch::default();
        b.put_cf(store.cf(CF_LOG), log_key(1, 0), b"x");
        let d = done.clone();
        store.submit(b, Box::new(move |r| d.store(r.is_ok(), Ordering::Release)));
        assert!(done.load(Ordering::Acquire));
        assert!(store
            .db()
            .get_cf(store.cf(CF_LOG), log_key(1, 0))
            .unwrap()
            .is_some());
    }

    #[test]
    fn writes_complete_in_order_and_persist() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Store::open(dir.path(), Durability::Fsync).unwrap();
            let (tx, rx) = mpsc::channel();
            for i in 0..100u64 {
                let mut b = WriteBatch::default();
                b.put_cf(store.cf(CF_LOG), log_key(1, i as i64), i.to_be_bytes());
                let tx = tx.clone();
                store.submit(b, Box::new(move |r| tx.send((i, r.is_ok())).unwrap()));
            }
            let got: Vec<_> = (0..100).map(|_| rx.recv().unwrap()).collect();
            assert_eq!(got, (0..100).map(|i| (i, true)).collect::<Vec<_>>());
        }
        let store = Store::open(dir.path(), Durability::Fsync).unwrap();
        let mut it = store.log_iter(CF_LOG, 1);
        it.seek_to_first();
        let mut n = 0;
        while it.valid() {
            n += 1;
            it.next();
        }
        assert_eq!(n, 100);
    }
}
