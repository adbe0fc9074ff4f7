//! The running broker: start and shutdown, background retention, and the
//! admin HTTP endpoint. The request context it builds is in `context`,
//! Kafka listeners are in `listener`, and each client connection in
//! `connection`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rocksdb::WriteBatch;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use chronik_topology::BrokerConfig;

use crate::catalog::{Catalog, RegionSettings};
use crate::cluster::Cluster;
use crate::context::BrokerCtx;
use crate::handlers;
use crate::producer_ids::ProducerIdAllocator;
use crate::raft::transport::Probed;
use crate::raft::types::{Command, CommandResult};
use crate::storage::{Store, StoreError, CF_META};

const CLUSTER_ID_KEY: &str = "cluster_id";
/// The node id this data directory belongs to; a broker refuses to start
/// on another broker's data (Raft counts votes by node id).
const NODE_ID_KEY: &str = "node_id";
/// Set when the broker started on an empty data dir while its region ran:
/// it must never form a controller of its own.
const JOINING_KEY: &str = "joining";
/// A started broker. Dropping it does not stop it; call [`Broker::shutdown`].
pub struct Broker {
    pub ctx: Arc<BrokerCtx>,
    pub kafka_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
}

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("opening storage in {dir}: {source}")]
    Storage { dir: String, source: StoreError },
    #[error("binding {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Listener(crate::listener::ListenerError),
    #[error("installing the metrics recorder: {0}")]
    Metrics(String),
    #[error("{0}")]
    AdminToken(String),
    #[error("{0}")]
    Discovery(String),
    #[error("{dir} is empty, but broker(s) {known:?} of region {region} know broker {node} as a member: its data was lost. Starting it empty would let it vote in Raft elections with an empty log, which can lose committed records. Restore the data directory from a backup, or replace the broker: `chronik ctl broker remove {node}` moves its replicas to the other brokers, then start it empty and `chronik ctl broker add {node}`")]
    EmptyButKnown {
        dir: String,
        node: i32,
        region: String,
        known: Vec<i32>,
    },
    #[error("broker {node} was removed from region {region} (`chronik ctl broker remove`; broker(s) {removed_by:?} record it as removed): the data in {dir} is from before the removal, and no broker of the region talks to it any more. Delete {dir}; to bring this machine back, start it on an empty data directory and run `chronik ctl broker add {node} --raft <its raft address>`")]
    Removed {
        dir: String,
        node: i32,
        region: String,
        removed_by: Vec<i32>,
    },
    #[error("{0}")]
    PeerIo(String),
    #[error("starting replication: {0}")]
    Cluster(String),
    #[error("{dir} holds the data of node {stored}, but this broker is configured as node {configured}; node ids are never reused or changed")]
    WrongNode {
        dir: String,
        stored: String,
        configured: i32,
    },
}

/// What each configured peer that answers within `wait` knows of this
/// broker.
async fn ask_peers(
    config: &BrokerConfig,
    wait: Duration,
) -> Result<Vec<(i32, Result<Probed, String>)>, StartError> {
    let io = crate::cluster::Cluster::peer_io(config).map_err(StartError::PeerIo)?;
    let peers = config
        .cluster
        .peers
        .iter()
        .map(|p| (p.id as u64, p.raft.clone()))
        .collect();
    let me = config.node_id as u64;
    Ok(
        crate::raft::transport::probe_all(io.as_ref(), me, peers, wait)
            .await
            .into_iter()
            .map(|(peer, answer)| (peer as i32, answer))
            .collect(),
    )
}

/// A broker restarting on its data after `chronik ctl broker remove` would
/// knock on peers that no longer talk to it, forever: it stops here,
/// saying why, if a peer answers that the region removed it.
async fn refuse_if_removed(config: &BrokerConfig) -> Result<(), StartError> {
    if config.cluster.peers.is_empty() {
        return Ok(());
    }
    let removed_by: Vec<i32> = ask_peers(config, Duration::from_secs(2))
        .await?
        .into_iter()
        .filter(|(_, a)| a.as_ref().is_ok_and(|p| p.removed))
        .map(|(peer, _)| peer)
        .collect();
    if removed_by.is_empty() {
        return Ok(());
    }
    Err(StartError::Removed {
        dir: config.data_dir.display().to_string(),
        node: config.node_id,
        region: config.region.clone(),
        removed_by,
    })
}

/// A broker starting on an empty data directory asks its peers about
/// itself. If one knows it, its disk was wiped and it must not vote. If
/// one runs the region's controller, it must not form one of its own
/// (returns false): it is caught up by that controller, or, if the region
/// formed without it, waits for `chronik ctl broker add`. Peers that do
/// not answer within a few seconds (a new region, all starting) are taken
/// as knowing nothing.
async fn probe_peers(config: &BrokerConfig) -> Result<bool, StartError> {
    if config.cluster.peers.is_empty() {
        return Ok(true);
    }
    let (mut known, mut running, mut member) = (Vec::new(), false, false);
    for (peer, answer) in ask_peers(config, Duration::from_secs(5)).await? {
        match answer {
            Ok(p) => {
                if p.known {
                    known.push(peer);
                }
                running |= p.running;
                member |= p.member;
            }
            Err(e) => tracing::info!(peer, error = %e, "empty data dir: peer not asked"),
        }
    }
    if !known.is_empty() {
        return Err(StartError::EmptyButKnown {
            dir: config.data_dir.display().to_string(),
            node: config.node_id,
            region: config.region.clone(),
            known,
        });
    }
    if running && !member {
        tracing::warn!(
            node = config.node_id,
            region = %config.region,
            "region {} runs without broker {}: it waits to be added with `chronik ctl broker add {} --raft <its listeners.raft address as peers reach it>`",
            config.region,
            config.node_id,
            config.node_id
        );
    }
    Ok(!running)
}

impl Broker {
    pub async fn start(mut config: BrokerConfig) -> Result<Broker, StartError> {
        let metrics_handle = crate::admin_http::install_metrics().map_err(StartError::Metrics)?;
        crate::discovery::resolve_peers(&mut config)
            .await
            .map_err(StartError::Discovery)?;
        let admin_token = config
            .listeners
            .admin_token_file
            .as_deref()
            .map(chronik_topology::read_token_file)
            .transpose()
            .map_err(StartError::AdminToken)?;
        let dir = config.data_dir.join("rocksdb");
        let storage_err = |source| StartError::Storage {
            dir: dir.display().to_string(),
            source,
        };
        let store = Arc::new(Store::open(&dir, config.durability).map_err(storage_err)?);
        let form = match store.get_meta(NODE_ID_KEY).map_err(storage_err)? {
            Some(v) if v != config.node_id.to_string().as_bytes() => {
                return Err(StartError::WrongNode {
                    dir: dir.display().to_string(),
                    stored: String::from_utf8_lossy(&v).into_owned(),
                    configured: config.node_id,
                })
            }
            // A broker that started as a joiner stays one until the
            // controller reaches it, across restarts.
            Some(_) => {
                refuse_if_removed(&config).await?;
                store.get_meta(JOINING_KEY).map_err(storage_err)?.is_none()
            }
            None => {
                let form = probe_peers(&config).await?;
                let mut wb = WriteBatch::default();
                wb.put_cf(store.cf(CF_META), NODE_ID_KEY, config.node_id.to_string());
                if !form {
                    wb.put_cf(store.cf(CF_META), JOINING_KEY, b"1");
                }
                store.write(wb).await.map_err(storage_err)?;
                form
            }
        };
        let cluster_id = match store.get_meta(CLUSTER_ID_KEY).map_err(storage_err)? {
            // Every broker of a region reports the same cluster id.
            _ if !config.cluster.peers.is_empty() => format!("chronik-{}", config.region),
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => {
                let id = uuid::Uuid::new_v4().simple().to_string();
                let mut wb = WriteBatch::default();
                wb.put_cf(store.cf(CF_META), CLUSTER_ID_KEY, id.as_bytes());
                store.write(wb).await.map_err(storage_err)?;
                id
            }
        };
        let recovery = std::time::Instant::now();
        let region = RegionSettings {
            name: config.region.clone(),
            brokers: config.cluster.broker_ids(config.node_id),
            default_replication_factor: config.cluster.effective_replication_factor(config.node_id)
                as i16,
            default_min_insync_replicas: config.cluster.min_insync_replicas as i32,
        };
        let catalog = Arc::new(
            Catalog::open(store.clone(), config.topics.clone(), region).map_err(storage_err)?,
        );
        let partitions = catalog.all_partitions().len();
        tracing::info!(
            partitions,
            elapsed_ms = recovery.elapsed().as_millis() as u64,
            "recovered partition logs"
        );
        let producer_ids = ProducerIdAllocator::open(&store).map_err(storage_err)?;

        let admin_addr = config.listeners.admin_addr();
        let kafka = crate::listener::bind_all(&config)
            .await
            .map_err(StartError::Listener)?;
        let admin = TcpListener::bind(admin_addr)
            .await
            .map_err(|source| StartError::Bind {
                what: "admin",
                addr: admin_addr,
                source,
            })?;
        let kafka_addr = kafka[0].addr;
        let admin_addr = admin.local_addr().unwrap_or(admin_addr);
        // With port 0 (tests), advertise the port actually bound.
        config.listeners.kafka = kafka_addr;
        for (extra, bound) in config.listeners.extra.iter_mut().zip(&kafka[1..]) {
            extra.address = bound.addr;
        }
        config.listeners.admin = Some(admin_addr);
        let cluster = Cluster::start(&config, store.clone(), catalog.clone(), form)
            .await
            .map_err(StartError::Cluster)?;
        if config.cluster.peers.is_empty() {
            // A one-broker region elects itself at once; serve only then.
            cluster.wait_controller(Duration::from_secs(10)).await;
        }

        let groups = crate::groups::Coordinator::start(
            cluster.clone(),
            catalog.clone(),
            store.clone(),
            crate::groups::GroupSettings::from_config(&config.groups),
        );
        let producer_ids = Arc::new(producer_ids);
        let txns = crate::txn::Coordinator::start(
            cluster.clone(),
            catalog.clone(),
            store.clone(),
            groups.clone(),
            producer_ids.clone(),
            config.node_id,
            config.region.clone(),
            &config.transactions,
        );
        let lease = crate::lease_gate::LeaseGate::open(&config.region, &config.data_dir);
        let config_forward_limit = config.limits.forward_max_inflight_bytes;
        let authorizer = crate::handlers::authorize::Authorizer::new(&config.authorization);
        let ctx = Arc::new(BrokerCtx {
            config,
            store,
            catalog,
            cluster,
            groups,
            txns,
            cluster_id,
            producer_ids,
            lease,
            forwarder: crate::forward::Forwarder::new(config_forward_limit),
            authorizer,
            // Kafka's max.incremental.fetch.session.cache.slots and
            // min.incremental.fetch.session.eviction.ms defaults; ids start
            // somewhere per process, so a client's old id after a restart
            // is unlikely to name another client's session.
            fetch_sessions: std::sync::Mutex::new(crate::fetch_session::SessionCache::new(
                1000,
                Duration::from_secs(120),
                (std::process::id() as i32).wrapping_mul(7919) & 0x3fff_ffff,
            )),
            ready: AtomicBool::new(false),
        });
        let listeners = kafka
            .iter()
            .map(|b| format!("{}={}", b.info.name, b.addr))
            .collect::<Vec<_>>()
            .join(",");
        let (shutdown, shutdown_rx) = watch::channel(false);
        let mut tasks: Vec<JoinHandle<()>> = kafka
            .into_iter()
            .map(|l| {
                tokio::spawn(crate::listener::accept_loop(
                    ctx.clone(),
                    l,
                    shutdown_rx.clone(),
                ))
            })
            .collect();
        tasks.extend([
            tokio::spawn(crate::admin_http::serve(
                ctx.clone(),
                admin,
                metrics_handle,
                admin_token,
                shutdown_rx.clone(),
            )),
            tokio::spawn(retention_loop(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::cleaner::cleaner_loop(
                ctx.clone(),
                shutdown_rx.clone(),
            )),
            tokio::spawn(drain_timeout_loop(ctx.clone(), shutdown_rx.clone())),
            tokio::spawn(crate::role_keeper::run(ctx.clone(), shutdown_rx)),
        ]);
        ctx.ready.store(true, Ordering::Release);
        tracing::info!(%kafka_addr, %listeners, %admin_addr, node_id = ctx.config.node_id, durability = %ctx.config.durability, "broker ready");
        Ok(Broker {
            ctx,
            kafka_addr,
            admin_addr,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting, lets in-flight writes finish, and closes storage.
    pub async fn shutdown(self) {
        self.ctx.ready.store(false, Ordering::Release);
        let _ = self.shutdown.send(true);
        self.ctx.cluster.shutdown().await;
        for t in self.tasks {
            let _ = t.await;
        }
        // Connections notice the shutdown signal and finish their in-flight
        // requests; once they release the context, storage closes cleanly.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while Arc::strong_count(&self.ctx) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let store = self.ctx.store.clone();
        drop(self.ctx);
        // Raft tasks wind down on their own after shutdown; wait for them
        // to drop their handles so the RocksDB closes (and unlocks) here.
        while Arc::strong_count(&store) > 1 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if Arc::strong_count(&store) > 1 {
            tracing::warn!("storage still referenced at shutdown; it closes with the process");
        }
        drop(store);
        tracing::info!("broker stopped");
    }
}

/// How long one round waits for its trims to apply.
const RETENTION_APPLY_TIMEOUT: Duration = Duration::from_secs(30);

/// A home topic deleted while mirrored waits for its dc-link to report it
/// drained; a dc-link that is down never will. The controller leader
/// deletes such topics once [`crate::catalog::DRAIN_TIMEOUT_MS`] passed.
async fn drain_timeout_loop(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_secs(1)) => {}
        }
        if ctx.cluster.controller_status().leader != Some(ctx.config.node_id as u64) {
            continue;
        }
        let now = handlers::now_ms();
        for t in ctx.catalog.deleting() {
            let since = t.record.deleting_since_ms.unwrap_or(now);
            if now - since < crate::catalog::DRAIN_TIMEOUT_MS {
                continue;
            }
            tracing::warn!(topic = t.name(), waited_ms = now - since, "deleted topic not reported drained by the dc-link in time; deleting it everywhere now");
            if let Err(e) = ctx.catalog.finish_delete(t.name(), Some(t.id())).await {
                tracing::warn!(topic = t.name(), error = %e, "deleting a drained topic failed; retrying");
            }
        }
    }
}

/// Retention is decided by each partition's leader (its clock, the topic's
/// configs as it sees them) and applied through the partition's Raft log as
/// a trim, like DeleteRecords. Every replica then cuts at the same log
/// position, and the partition record (log start, epoch history) is written
/// only by the apply path: a cut written from here could interleave with an
/// apply that records a new epoch, and one of the two updates would be lost.
async fn retention_loop(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.config.topics.retention_check_interval_ms);
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let now = handlers::now_ms();
        let mut trims = Vec::new();
        for (topic, log) in ctx.catalog.all_partitions() {
            // A compact-only topic keeps each key's latest record however old.
            if log.is_deleted() || !topic.effective.cleanup_delete {
                continue;
            }
            let Some((group, _)) = ctx.cluster.leader_group(&log) else {
                continue;
            };
            match log.retention_cutoff(&topic.effective, now) {
                Ok(Some(offset)) => {
                    let done = group.submit(Command::DeleteRecords { offset });
                    trims.push((topic, log, offset, done));
                }
                Ok(None) => {}
                Err(e) => {
                    tracing::warn!(topic = topic.name(), partition = log.partition, error = %e, "retention failed")
                }
            }
        }
        let waits = trims.into_iter().map(|(topic, log, offset, done)| async move {
            match tokio::time::timeout(RETENTION_APPLY_TIMEOUT, done).await {
                Ok(Ok(Ok(CommandResult::Trimmed { low_watermark }))) => tracing::info!(
                    topic = topic.name(),
                    partition = log.partition,
                    log_start_offset = low_watermark,
                    "retention advanced log start"
                ),
                // Leadership moved: the new leader decides again.
                Ok(Ok(Err(e))) => {
                    tracing::debug!(topic = topic.name(), partition = log.partition, error = %e, "retention not proposed")
                }
                other => tracing::warn!(
                    topic = topic.name(),
                    partition = log.partition,
                    offset,
                    outcome = ?other,
                    "retention trim failed"
                ),
            }
        });
        futures_util::future::join_all(waits).await;
    }
}
