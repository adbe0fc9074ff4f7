//! One simulation run: three brokers (controller group, partition groups,
//! peer transport, RocksDB stores kept across crashes) and one client host
//! on turmoil's simulated network and clocks, a nemesis driven by the
//! seed, and the checker at the end.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::time::{sleep, timeout, Instant};

use chronik_broker::batch::build;
use chronik_broker::catalog::{Catalog, RegionSettings, Topic, TopicError};
use chronik_broker::cluster::Cluster;
use chronik_broker::log::{PartitionLog, ReadError};
use chronik_broker::raft::types::{Command, CommandResult, ControllerCommand};
use chronik_broker::raft::ProposeError;
use chronik_broker::storage::Store;
use chronik_topology::{BrokerConfig, Durability, Peer, TopicDefaults};

use super::checker::{self, Ack, ReadBatch, Replica};
use super::net::SimIo;
use super::state::{sim_ms, Shared};

pub const BROKERS: u64 = 3;
const TOPIC: &str = "sim";
const PARTITIONS: i32 = 2;
const PRODUCERS: usize = 4;
const RAFT_PORT: u16 = 7000;
const CLIENT_PORT: u16 = 9000;

/// How long the nemesis is active; then every fault is healed.
const WORK: Duration = Duration::from_secs(30);
/// Producers keep writing this long after the faults heal. A partition
/// can turn unwritable after the heal (preferred-leader balancing, every
/// 10 s, hands leadership to a replica that just came back), and only a
/// write sent after that shows it.
const SETTLE: Duration = Duration::from_secs(15);
/// Every producer's last batch must be acknowledged within this after it
/// stops writing (liveness).
const RECOVER: Duration = Duration::from_secs(60);

/// SplitMix64: tiny, and the same sequence on every platform.
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed ^ 0x5EED_5EED_5EED_5EED)
    }
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    pub fn range_ms(&mut self, lo: u64, hi: u64) -> Duration {
        Duration::from_millis(lo + self.below(hi - lo + 1))
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

#[derive(Debug, Default, Clone, serde::Serialize, serde::Deserialize)]
pub struct Outcome {
    pub seed: u64,
    pub digest: u64,
    pub violations: Vec<String>,
    pub sim_ms: u64,
    pub events: u64,
    pub delivered_bytes: u64,
    pub acks: u64,
    pub faults: u64,
    /// (group, term) pairs that had a leader: elections won.
    pub elections: u64,
    pub snapshot_installs: u64,
    pub trace: Vec<String>,
}

fn name(n: u64) -> String {
    format!("b{n}")
}

// ---------------------------------------------------------------- brokers

fn region() -> RegionSettings {
    RegionSettings {
        name: "sim".to_string(),
        brokers: (1..=BROKERS as i32).collect(),
        default_replication_factor: 3,
        default_min_insync_replicas: 2,
    }
}

/// Per-seed settings shared by every broker of the run.
#[derive(Debug, Clone, Copy)]
struct Profile {
    /// Small values make followers that were down or cut off catch up by
    /// snapshot install (batches streamed from the leader's partition log)
    /// rather than by log replay.
    snapshot_every: u64,
    keep_behind_snapshot: u64,
}

fn broker_config(node: u64, dir: &Path, profile: Profile) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        node_id: node as i32,
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    cfg.listeners.kafka = "0.0.0.0:9092".parse().unwrap();
    cfg.listeners.advertised_kafka = Some(format!("{}:9092", name(node)));
    cfg.listeners.raft = Some(format!("0.0.0.0:{RAFT_PORT}").parse().unwrap());
    cfg.cluster.replication_factor = 3;
    cfg.cluster.min_insync_replicas = 2;
    cfg.cluster.raft_snapshot_entries = profile.snapshot_every;
    cfg.cluster.raft_log_keep_entries = profile.keep_behind_snapshot;
    cfg.cluster.peers = (1..=BROKERS)
        .filter(|p| *p != node)
        .map(|p| Peer {
            id: p as i32,
            raft: format!("{}:{RAFT_PORT}", name(p)),
        })
        .collect();
    cfg
}

fn open(dir: &Path) -> Result<(Arc<Store>, Arc<Catalog>), String> {
    let store = Arc::new(Store::open_inline(dir, Durability::Fsync).map_err(|e| e.to_string())?);
    let catalog = Arc::new(
        Catalog::open(store.clone(), TopicDefaults::default(), region())
            .map_err(|e| e.to_string())?,
    );
    Ok((store, catalog))
}

/// A broker process: what `Broker::start` does for replication, with the
/// sim's sockets and an inline store, plus a tiny request port for the
/// client (the same leadership check and proposal as `handlers::produce`).
async fn broker_main(
    node: u64,
    dir: PathBuf,
    profile: Profile,
    shared: Arc<Shared>,
) -> turmoil::Result {
    shared.event(sim_ms(), format!("{} starts", name(node)));
    let (store, catalog) = open(&dir)?;
    let cfg = broker_config(node, &dir, profile);
    let io = Arc::new(SimIo {
        node,
        shared: shared.clone(),
    });
    let cluster = Cluster::start_with_io(&cfg, store, catalog.clone(), io, true).await?;
    tokio::spawn(monitor(
        node,
        cluster.clone(),
        catalog.clone(),
        shared.clone(),
    ));
    let listener = turmoil::net::TcpListener::bind(("0.0.0.0", CLIENT_PORT)).await?;
    loop {
        let (mut sock, _) = listener.accept().await?;
        let (cluster, catalog) = (cluster.clone(), catalog.clone());
        tokio::spawn(async move {
            // Producers send one request per connection, the consumers
            // keep theirs open. An idle connection is closed: the client's
            // close may have been dropped (ClientLoss), and a socket held
            // forever would collide with its port's next use.
            while let Ok(Ok(req)) =
                timeout(Duration::from_secs(5), read_msg::<Request>(&mut sock)).await
            {
                let resp = serve(&cluster, &catalog, req).await;
                if write_msg(&mut sock, &resp).await.is_err() {
                    return;
                }
            }
        });
    }
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Request {
    CreateTopic {
        id: u128,
    },
    Produce {
        partition: i32,
        records: Vec<u8>,
        now_ms: i64,
    },
    /// What `handlers::fetch` serves: whole batches from the one holding
    /// `offset`, up to the high watermark, from a fresh leader only.
    Fetch {
        partition: i32,
        offset: i64,
    },
    /// What `handlers::partition_admin` does for DeleteRecords (and the
    /// retention task for an expired segment): a trim through the log.
    DeleteRecords {
        partition: i32,
        offset: i64,
    },
}

#[derive(Debug, serde::Serialize, serde::Deserialize)]
enum Response {
    Created,
    Produced {
        base_offset: i64,
    },
    Duplicate {
        base_offset: i64,
    },
    NotLeader(Option<i32>),
    Unavailable(String),
    Rejected {
        code: i16,
        message: String,
    },
    Fetched {
        records: Vec<u8>,
        high_watermark: i64,
    },
    OutOfRange {
        start: i64,
        end: i64,
    },
    Trimmed {
        low_watermark: i64,
    },
}

async fn serve(cluster: &Arc<Cluster>, catalog: &Catalog, req: Request) -> Response {
    match req {
        Request::CreateTopic { id } => {
            if catalog.get(TOPIC).is_some() {
                return Response::Created;
            }
            let cmd = ControllerCommand::CreateTopic {
                name: TOPIC.into(),
                id: uuid::Uuid::from_u128(id),
                partitions: PARTITIONS,
                replication_factor: 3,
                assignments: vec![],
                configs: BTreeMap::new(),
                now_ms: 0,
            };
            match cluster.controller_write(cmd).await {
                Ok(()) | Err(TopicError::AlreadyExists(_)) => Response::Created,
                Err(TopicError::Rejected { code: 36, .. }) => Response::Created,
                Err(e) => Response::Unavailable(e.to_string()),
            }
        }
        Request::Produce {
            partition,
            records,
            now_ms,
        } => match propose_on_leader(
            cluster,
            catalog,
            partition,
            produce_command(records, now_ms),
        )
        .await
        {
            Ok(CommandResult::Produced { base_offset, .. }) => Response::Produced { base_offset },
            Ok(CommandResult::Duplicate { base_offset }) => Response::Duplicate { base_offset },
            Ok(other) => unexpected(other),
            Err(r) => r,
        },
        Request::DeleteRecords { partition, offset } => {
            let cmd = Command::DeleteRecords { offset };
            match propose_on_leader(cluster, catalog, partition, cmd).await {
                Ok(CommandResult::Trimmed { low_watermark }) => Response::Trimmed { low_watermark },
                Ok(other) => unexpected(other),
                Err(r) => r,
            }
        }
        Request::Fetch { partition, offset } => {
            let (t, log) = match local_log(catalog, partition) {
                Ok(found) => found,
                Err(r) => return r,
            };
            if !cluster.leader_for_read(&log, offset).await {
                return Response::NotLeader(cluster.view(&t, &log).leader);
            }
            match log.read(offset, 16 * 1024, true) {
                Ok(r) => Response::Fetched {
                    records: r.records.to_vec(),
                    high_watermark: r.high_watermark,
                },
                Err(ReadError::OutOfRange { start, end, .. }) => {
                    Response::OutOfRange { start, end }
                }
                Err(e) => Response::Unavailable(e.to_string()),
            }
        }
    }
}

/// The partition's log here, or the answer a client gets without one.
fn local_log(
    catalog: &Catalog,
    partition: i32,
) -> Result<(Arc<Topic>, Arc<PartitionLog>), Response> {
    let t = catalog
        .get(TOPIC)
        .ok_or_else(|| Response::Unavailable("no topic here yet".into()))?;
    let log = t
        .partition(partition)
        .cloned()
        .ok_or_else(|| Response::Unavailable("no such partition".into()))?;
    Ok((t, log))
}

/// What the handlers do with a write: `Cluster::leader_group`, then
/// propose, bounded. Failures come back as the client's answer; rejections
/// too, since no request here expects one.
async fn propose_on_leader(
    cluster: &Arc<Cluster>,
    catalog: &Catalog,
    partition: i32,
    cmd: Command,
) -> Result<CommandResult, Response> {
    let (t, log) = local_log(catalog, partition)?;
    let Some((g, _)) = cluster.leader_group(&log) else {
        return Err(Response::NotLeader(cluster.view(&t, &log).leader));
    };
    match timeout(Duration::from_secs(5), g.propose(cmd)).await {
        Ok(Ok(CommandResult::Rejected { code, message })) => {
            Err(Response::Rejected { code, message })
        }
        Ok(Ok(r)) => Ok(r),
        Ok(Err(ProposeError::NotLeader(l))) => Err(Response::NotLeader(l.map(|l| l as i32))),
        Ok(Err(e)) => Err(Response::Unavailable(e.to_string())),
        Err(_) => Err(Response::Unavailable("timed out".into())),
    }
}

fn unexpected(r: CommandResult) -> Response {
    Response::Unavailable(format!("unexpected {r:?}"))
}

/// The entry `handlers::produce` proposes for a batch of a CreateTime
/// topic. Built through serde, not a struct literal, because the entry's
/// fields are changing (the leader now decides the timestamp type) and
/// serde ignores the field an older shape lacks.
fn produce_command(records: Vec<u8>, now_ms: i64) -> Command {
    serde_json::from_value(serde_json::json!({
        "Produce": { "records": records, "now_ms": now_ms, "log_append_time": false }
    }))
    .expect("a produce entry")
}

/// Samples what the checker watches while the run goes on: each replica's
/// high watermark and who leads which term.
async fn monitor(node: u64, cluster: Arc<Cluster>, catalog: Arc<Catalog>, shared: Arc<Shared>) {
    loop {
        sleep(Duration::from_millis(20)).await;
        let t = sim_ms();
        let mut parts = catalog.all_partitions();
        parts.sort_by_key(|(_, l)| l.partition);
        for (_, log) in parts {
            let hw = log.high_watermark();
            let changed = shared.with_history(|h| h.observe_hw(node, log.partition, hw, t));
            if changed {
                shared.event(t, format!("{} p{} hw {hw}", name(node), log.partition));
            }
            if let Some(st) = cluster.local_status(log.log_id) {
                let (snap, purged) = (st.snapshot_index, st.purged_index);
                if shared.with_history(|h| h.observe_snapshot(node, log.partition, snap, purged)) {
                    shared.event(
                        t,
                        format!(
                            "{} p{} installed a snapshot up to {snap:?}",
                            name(node),
                            log.partition
                        ),
                    );
                }
            }
            if let Some(g) = cluster.group(log.log_id) {
                let (_, term, leads) = g.brief();
                if leads && shared.with_history(|h| h.observe_leader(log.log_id, term, node, t)) {
                    shared.event(
                        t,
                        format!("{} leads p{} term {term}", name(node), log.partition),
                    );
                }
            }
        }
        // Once the faults have healed, a replay prints each replica's Raft
        // state every second: what a stuck partition is waiting for.
        if shared.verbose() && t >= WORK.as_millis() as u64 && t % 1000 < 20 {
            let mut parts = catalog.all_partitions();
            parts.sort_by_key(|(_, l)| l.partition);
            for (_, log) in parts {
                if let Some(d) = cluster.local_debug(log.log_id) {
                    shared.note(t, || {
                        format!(
                            "{} p{} {} vote {} leader {:?} log {:?} committed {:?} applied {:?} quorum_ack {:?} ms, replication {:?}, peers alive {:?}, submitter {:?}, transfer {:?}",
                            name(node), log.partition, d.state, d.vote, d.leader, d.last_log_index,
                            d.committed_index, d.applied_index, d.quorum_ack_age_ms, d.replication,
                            d.peers_alive, d.submitter, d.transfer
                        )
                    });
                }
            }
        }
        let st = cluster.controller_status();
        if st.is_leader && shared.with_history(|h| h.observe_leader(0, st.term, node, t)) {
            shared.event(
                t,
                format!("{} leads the controller, term {}", name(node), st.term),
            );
        }
    }
}

async fn write_msg<T: serde::Serialize>(
    s: &mut turmoil::net::TcpStream,
    m: &T,
) -> std::io::Result<()> {
    let body = serde_json::to_vec(m).expect("serializes");
    s.write_u32(body.len() as u32).await?;
    s.write_all(&body).await?;
    s.flush().await
}

async fn read_msg<T: serde::de::DeserializeOwned>(
    s: &mut turmoil::net::TcpStream,
) -> std::io::Result<T> {
    let n = s.read_u32().await? as usize;
    let mut body = vec![0; n];
    s.read_exact(&mut body).await?;
    serde_json::from_slice(&body).map_err(std::io::Error::other)
}

// ----------------------------------------------------------------- client

/// One request on a fresh connection, bounded: a lost packet (the nemesis
/// drops client traffic) costs a timeout, never a stuck client.
async fn call(broker: u64, req: &Request) -> Result<Response, String> {
    let addr = (name(broker), CLIENT_PORT);
    let mut s = timeout(
        Duration::from_secs(1),
        turmoil::net::TcpStream::connect(addr),
    )
    .await
    .map_err(|_| "connect timed out".to_string())?
    .map_err(|e| e.to_string())?;
    timeout(Duration::from_secs(8), async {
        write_msg(&mut s, req).await?;
        read_msg::<Response>(&mut s).await
    })
    .await
    .map_err(|_| "request timed out".to_string())?
    .map_err(|e| e.to_string())
}

/// [`call`] on a connection kept open between requests, as a Kafka
/// consumer keeps its own: opening one per poll would cycle through the
/// client's ephemeral ports and reuse a port whose old connection a
/// broker still holds. Any error drops the connection.
async fn call_kept(
    conn: &mut Option<(u64, turmoil::net::TcpStream)>,
    broker: u64,
    req: &Request,
) -> Result<Response, String> {
    if conn.as_ref().is_some_and(|(b, _)| *b != broker) {
        *conn = None;
    }
    if conn.is_none() {
        let s = timeout(
            Duration::from_secs(1),
            turmoil::net::TcpStream::connect((name(broker), CLIENT_PORT)),
        )
        .await
        .map_err(|_| "connect timed out".to_string())?
        .map_err(|e| e.to_string())?;
        *conn = Some((broker, s));
    }
    let (_, s) = conn.as_mut().expect("connected above");
    let r = timeout(Duration::from_secs(8), async {
        write_msg(s, req).await?;
        read_msg::<Response>(s).await
    })
    .await
    .map_err(|_| "request timed out".to_string())
    .and_then(|r| r.map_err(|e| e.to_string()));
    if r.is_err() {
        *conn = None;
    }
    r
}

fn next_broker(b: u64) -> u64 {
    b % BROKERS + 1
}

async fn client_main(seed: u64, shared: Arc<Shared>) -> turmoil::Result {
    let start = Instant::now();
    let mut b = 1 + seed % BROKERS;
    loop {
        match call(
            b,
            &Request::CreateTopic {
                id: seed as u128 | 1 << 100,
            },
        )
        .await
        {
            Ok(Response::Created) => break,
            _ => {
                b = next_broker(b);
                sleep(Duration::from_millis(200)).await;
            }
        }
        if start.elapsed() > WORK + RECOVER {
            shared.with_history(|h| {
                h.violations
                    .push("liveness: the topic could not be created".into())
            });
            return Ok(());
        }
    }
    shared.event(sim_ms(), "topic created".into());
    let producers = (0..PRODUCERS).map(|k| producer(seed, k, start, shared.clone()));
    let consumers = (0..PARTITIONS).map(|p| consumer(seed, p, start, shared.clone()));
    futures_util::future::join3(
        async {
            futures_util::future::join_all(producers).await;
            shared.with_history(|h| h.producers_done = true);
        },
        futures_util::future::join_all(consumers),
        trimmer(seed, start, shared.clone()),
    )
    .await;
    Ok(())
}

/// DeleteRecords now and then while the faults run, up to an offset some
/// time behind the producers: retention and DeleteRecords go through the
/// same log entry. The consumers may then find their position below the
/// log start, and every replica must trim alike.
async fn trimmer(seed: u64, start: Instant, shared: Arc<Shared>) {
    let mut rng = Rng::new(seed ^ 0x7472_696d);
    let mut broker = 1 + seed % BROKERS;
    while start.elapsed() < WORK {
        sleep(rng.range_ms(2000, 6000)).await;
        let partition = rng.below(PARTITIONS as u64) as i32;
        // Halfway into what this partition has acknowledged.
        let offset = shared.with_history(|h| {
            let acked: Vec<i64> = h
                .acks
                .iter()
                .filter(|a| a.partition == partition)
                .map(|a| a.base_offset)
                .collect();
            acked.get(acked.len() / 2).copied()
        });
        let Some(offset) = offset.filter(|o| *o > 0) else {
            continue;
        };
        shared.with_history(|h| h.trims.push((partition, offset)));
        for _ in 0..10 {
            let req = Request::DeleteRecords { partition, offset };
            match call(broker, &req).await {
                Ok(Response::Trimmed { low_watermark }) => {
                    shared.event(
                        sim_ms(),
                        format!("trimmed p{partition} to {offset}: low watermark {low_watermark}"),
                    );
                    break;
                }
                Ok(Response::NotLeader(Some(l))) if l as u64 != broker => broker = l as u64,
                _ => {
                    broker = next_broker(broker);
                    sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// A consumer reading one partition from its leader, as a Kafka consumer
/// does: from its position, following NOT_LEADER hints. Every answer must
/// start with the batch holding the position and continue densely (else a
/// record was skipped), and an offset it was already served must never be
/// out of range (a stale leader). What it read is compared with the final
/// log at the end. It stops once the producers are done and it has read
/// everything they were acknowledged for.
async fn consumer(seed: u64, partition: i32, start: Instant, shared: Arc<Shared>) {
    let mut broker = 1 + (seed + partition as u64 + 1) % BROKERS;
    let mut pos = 0i64;
    let mut conn = None;
    loop {
        let (done, acked_end) = shared.with_history(|h| {
            let end = h
                .acks
                .iter()
                .filter(|a| a.partition == partition)
                .map(|a| a.base_offset + a.records as i64)
                .max()
                .unwrap_or(0);
            (h.producers_done, end)
        });
        if done && pos >= acked_end {
            return;
        }
        if start.elapsed() > WORK + SETTLE + RECOVER {
            shared.with_history(|h| {
                h.violations.push(format!(
                    "liveness: the consumer of partition {partition} is at {pos}, acknowledged up to {acked_end}, {} s after the faults healed",
                    (SETTLE + RECOVER).as_secs()
                ))
            });
            return;
        }
        let req = Request::Fetch {
            partition,
            offset: pos,
        };
        match call_kept(&mut conn, broker, &req).await {
            Ok(Response::Fetched {
                records,
                high_watermark,
            }) => {
                let t = sim_ms();
                match checker::split_batches(&records) {
                    Ok(batches) if batches.is_empty() => {
                        sleep(Duration::from_millis(50)).await;
                    }
                    Ok(batches) => {
                        let (first, last) = (batches[0].0, batches[batches.len() - 1].1);
                        shared.event(
                            t,
                            format!("read p{partition} from b{broker} at {pos}: {first}..={last} (hw {high_watermark})"),
                        );
                        shared.with_history(|h| {
                            let mut next = pos;
                            for (base, last, bytes) in batches {
                                let skipped = if next == pos { base > pos || last < pos } else { base != next };
                                if skipped {
                                    h.violations.push(format!(
                                        "partition {partition}: a read at {pos} from broker {broker} answered a batch {base}..={last} where {next} was next (at {t} ms)"
                                    ));
                                }
                                next = last + 1;
                                h.reads.push(ReadBatch {
                                    partition,
                                    broker,
                                    base,
                                    bytes,
                                    at_ms: t,
                                });
                            }
                        });
                        pos = last + 1;
                    }
                    Err(e) => {
                        shared.with_history(|h| {
                            h.violations.push(format!(
                                "partition {partition}: broker {broker} answered a read at {pos} with {e}"
                            ))
                        });
                        return;
                    }
                }
            }
            Ok(Response::OutOfRange { start: lo, .. }) if pos < lo => {
                // Trimmed below the position: a consumer resets to the log
                // start (auto.offset.reset=earliest). Only a DeleteRecords
                // asked for may have moved the start that far.
                let t = sim_ms();
                shared.with_history(|h| {
                    let asked = h
                        .trims
                        .iter()
                        .filter(|(p, _)| *p == partition)
                        .map(|(_, o)| *o)
                        .max();
                    if asked.is_none_or(|a| a < lo) {
                        h.violations.push(format!(
                            "partition {partition}: broker {broker} starts its log at {lo}, above every DeleteRecords asked ({asked:?}), at {t} ms"
                        ));
                    }
                });
                shared.event(
                    t,
                    format!("consumer p{partition} reset from {pos} to the log start {lo}"),
                );
                pos = lo;
            }
            Ok(Response::OutOfRange { start: lo, end }) => {
                // Past the log end: only a leader whose log lacks records it
                // once served says this.
                shared.with_history(|h| {
                    h.violations.push(format!(
                        "partition {partition}: broker {broker} answered a read at {pos} with OFFSET_OUT_OF_RANGE [{lo}, {end}] (at {} ms)",
                        sim_ms()
                    ))
                });
                sleep(Duration::from_millis(100)).await;
            }
            Ok(Response::NotLeader(Some(l))) if l as u64 != broker => {
                broker = l as u64;
                sleep(Duration::from_millis(20)).await;
            }
            _ => {
                broker = next_broker(broker);
                sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// An idempotent producer with one batch in flight: retries the same bytes
/// (same producer id and sequence) until the batch is acknowledged.
async fn producer(seed: u64, k: usize, start: Instant, shared: Arc<Shared>) {
    let partition = (k % PARTITIONS as usize) as i32;
    let producer_id = 1000 + k as i64;
    let mut broker = 1 + (seed + k as u64) % BROKERS;
    // Kafka sequences count records: a batch's base sequence is the
    // previous batch's plus its record count.
    let (mut seq, mut batch) = (0i32, 0usize);
    while start.elapsed() < WORK + SETTLE {
        let n = 1 + batch % 3;
        let values: Vec<Vec<u8>> = (0..n)
            .map(|i| format!("s{seed}-p{producer_id}-q{seq}-r{i}").into_bytes())
            .collect();
        let recs: Vec<build::Record<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| build::Record {
                key: None,
                value: Some(v),
                headers: vec![],
                timestamp_delta: i as i64,
            })
            .collect();
        let records = build::batch(sim_ms() as i64, Some((producer_id, 0, seq)), &recs);
        loop {
            if start.elapsed() > WORK + SETTLE + RECOVER {
                shared.with_history(|h| {
                    h.violations.push(format!(
                        "liveness: producer {producer_id} (partition {partition}) sequence {seq} not acknowledged {} s after the faults healed",
                        (SETTLE + RECOVER).as_secs()
                    ))
                });
                return;
            }
            let req = Request::Produce {
                partition,
                records: records.clone(),
                now_ms: sim_ms() as i64,
            };
            let (base_offset, duplicate) = match call(broker, &req).await {
                Ok(Response::Produced { base_offset }) => (base_offset, false),
                Ok(Response::Duplicate { base_offset }) => (base_offset, true),
                Ok(Response::NotLeader(Some(l))) if l as u64 != broker => {
                    broker = l as u64;
                    sleep(Duration::from_millis(20)).await;
                    continue;
                }
                Ok(Response::Rejected { code, message }) => {
                    // Only an idempotence bug or a lost write makes the
                    // next sequence of a producer unacceptable.
                    shared.with_history(|h| {
                        h.violations.push(format!(
                            "producer {producer_id} (partition {partition}) sequence {seq} rejected with code {code}: {message}"
                        ))
                    });
                    return;
                }
                other => {
                    shared.note(sim_ms(), || {
                        format!(
                            "producer {producer_id} seq {seq} -> {}: {other:?}",
                            name(broker)
                        )
                    });
                    broker = next_broker(broker);
                    sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let t = sim_ms();
            shared.event(
                t,
                format!(
                    "ack p{partition} producer {producer_id} seq {seq} at {base_offset}{}",
                    if duplicate { " (duplicate)" } else { "" }
                ),
            );
            shared.with_history(|h| {
                h.acks.push(Ack {
                    partition,
                    producer_id,
                    sequence: seq,
                    base_offset,
                    records: n as i32,
                    duplicate,
                    at_ms: t,
                })
            });
            break;
        }
        seq += n as i32;
        batch += 1;
    }
}

// ---------------------------------------------------------------- nemesis

#[derive(Debug, Clone)]
enum Fault {
    /// The process dies (its disk stays); restarted when the fault ends.
    Crash(u64),
    /// Cut off from the other brokers (the client still reaches it).
    Isolate(u64),
    /// Cut off from everyone.
    IsolateAll(u64),
    /// One broker-to-broker link down (a non-transitive partition).
    Cut(u64, u64),
    /// One link slow, with random per-message delay (reorders across links).
    Slow(u64, u64, Duration),
    /// The client's packets to/from a broker are dropped.
    ClientLoss(u64),
}

enum Action {
    Lasting(Fault),
    /// Instant restart of a running broker (process crash and start).
    Bounce(u64),
    /// Every connection between two brokers fails; they redial.
    Reset(u64, u64),
}

struct Nemesis {
    rng: Rng,
    brokers: Vec<IpAddr>,
    client: IpAddr,
    held: BTreeMap<(IpAddr, IpAddr), u32>,
    down: BTreeSet<u64>,
    active: Vec<(Duration, Fault)>,
    next_at: Duration,
    base_latency: Duration,
    faults: u64,
}

impl Nemesis {
    fn ip(&self, b: u64) -> IpAddr {
        self.brokers[b as usize - 1]
    }

    fn hold(&mut self, sim: &turmoil::Sim<'_>, a: IpAddr, b: IpAddr) {
        let k = if a < b { (a, b) } else { (b, a) };
        let n = self.held.entry(k).or_insert(0);
        *n += 1;
        if *n == 1 {
            sim.hold(a, b);
        }
    }

    fn release(&mut self, sim: &turmoil::Sim<'_>, a: IpAddr, b: IpAddr) {
        let k = if a < b { (a, b) } else { (b, a) };
        let n = self.held.entry(k).or_insert(1);
        *n -= 1;
        if *n == 0 {
            sim.release(a, b);
        }
    }

    fn peers(&self, b: u64, with_client: bool) -> Vec<IpAddr> {
        let mut v: Vec<IpAddr> = (1..=BROKERS)
            .filter(|p| *p != b)
            .map(|p| self.ip(p))
            .collect();
        if with_client {
            v.push(self.client);
        }
        v
    }

    fn start(&mut self, sim: &mut turmoil::Sim<'_>, f: &Fault) {
        match *f {
            Fault::Crash(b) => {
                self.down.insert(b);
                sim.crash(name(b));
            }
            Fault::Isolate(b) | Fault::IsolateAll(b) => {
                let all = matches!(f, Fault::IsolateAll(_));
                for p in self.peers(b, all) {
                    self.hold(sim, self.ip(b), p);
                }
            }
            Fault::Cut(a, b) => self.hold(sim, self.ip(a), self.ip(b)),
            Fault::Slow(a, b, d) => sim.set_link_max_message_latency(self.ip(a), self.ip(b), d),
            Fault::ClientLoss(b) => sim.partition(self.client, self.ip(b)),
        }
    }

    fn end(&mut self, sim: &mut turmoil::Sim<'_>, f: &Fault) {
        match *f {
            Fault::Crash(b) => {
                self.down.remove(&b);
                sim.bounce(name(b));
            }
            Fault::Isolate(b) | Fault::IsolateAll(b) => {
                let all = matches!(f, Fault::IsolateAll(_));
                for p in self.peers(b, all) {
                    self.release(sim, self.ip(b), p);
                }
            }
            Fault::Cut(a, b) => self.release(sim, self.ip(a), self.ip(b)),
            Fault::Slow(a, b, _) => {
                sim.set_link_max_message_latency(self.ip(a), self.ip(b), self.base_latency)
            }
            Fault::ClientLoss(b) => sim.repair(self.client, self.ip(b)),
        }
    }

    fn pick(&mut self) -> Option<Action> {
        let b = 1 + self.rng.below(BROKERS);
        let other = {
            let o = 1 + self.rng.below(BROKERS - 1);
            if o >= b {
                o + 1
            } else {
                o
            }
        };
        let lasting = match self.rng.below(100) {
            0..=19 => {
                // Mostly one broker down at a time; sometimes two (no
                // quorum: nothing may be acknowledged, nothing lost).
                if self.down.contains(&b) || (!self.down.is_empty() && !self.rng.chance(25)) {
                    return None;
                }
                Fault::Crash(b)
            }
            20..=34 => Fault::Isolate(b),
            35..=44 => Fault::IsolateAll(b),
            45..=59 => Fault::Cut(b, other),
            60..=74 => Fault::Slow(b, other, self.rng.range_ms(50, 800)),
            75..=84 => Fault::ClientLoss(b),
            85..=92 if !self.down.contains(&b) => return Some(Action::Bounce(b)),
            85..=92 => return None,
            _ => return Some(Action::Reset(b, other)),
        };
        Some(Action::Lasting(lasting))
    }

    /// Called before every step with the simulated time.
    fn tick(&mut self, sim: &mut turmoil::Sim<'_>, now: Duration, shared: &Shared) {
        let t = now.as_millis() as u64;
        // End what is due, in the order started.
        let mut i = 0;
        while i < self.active.len() {
            if self.active[i].0 <= now || now >= WORK {
                let (_, f) = self.active.remove(i);
                shared.event(t, format!("nemesis: end {f:?}"));
                self.end(sim, &f);
            } else {
                i += 1;
            }
        }
        if now >= WORK || now < self.next_at {
            return;
        }
        self.next_at = now + self.rng.range_ms(200, 2500);
        let Some(action) = self.pick() else { return };
        self.faults += 1;
        match action {
            Action::Bounce(b) => {
                shared.event(t, format!("nemesis: bounce b{b}"));
                sim.bounce(name(b));
            }
            Action::Reset(a, b) => {
                shared.event(t, format!("nemesis: reset connections b{a}-b{b}"));
                shared.reset_link(self.ip(a), self.ip(b));
            }
            Action::Lasting(f) => {
                let until = now + self.rng.range_ms(300, 6000);
                shared.event(
                    t,
                    format!("nemesis: start {f:?} for {} ms", (until - now).as_millis()),
                );
                self.start(sim, &f);
                self.active.push((until, f));
            }
        }
    }
}

// -------------------------------------------------------------------- run

/// Runs one seed to the end and checks it. Must run on a thread of its own
/// whose randomness the test binary has seeded (see `sim.rs`).
pub fn run_seed(seed: u64, verbose: bool) -> Outcome {
    let root = tempfile::Builder::new()
        .prefix("chronik-sim-")
        .tempdir_in(if Path::new("/dev/shm").is_dir() {
            "/dev/shm"
        } else {
            "/tmp"
        })
        .expect("temp dir");
    let shared = Arc::new(Shared::new(verbose));
    let mut rng = Rng::new(seed);
    let base_latency = rng.range_ms(1, 25);
    let profile = Profile {
        snapshot_every: [64, 500, 50_000][rng.below(3) as usize],
        keep_behind_snapshot: [8, 200][rng.below(2) as usize],
    };
    let mut sim = turmoil::Builder::new()
        .rng_seed(rng.next())
        .tick_duration(Duration::from_millis(1))
        .min_message_latency(Duration::from_millis(1))
        .max_message_latency(base_latency)
        .simulation_duration(WORK + SETTLE + RECOVER + Duration::from_secs(60))
        .build();
    let dirs: Vec<PathBuf> = (1..=BROKERS).map(|n| root.path().join(name(n))).collect();
    for n in 1..=BROKERS {
        let (dir, sh) = (dirs[n as usize - 1].clone(), shared.clone());
        sim.host(name(n), move || {
            broker_main(n, dir.clone(), profile, sh.clone())
        });
    }
    sim.client("client", client_main(seed, shared.clone()));
    let brokers = (1..=BROKERS).map(|n| sim.lookup(name(n))).collect();
    let client = sim.lookup("client");
    let mut nemesis = Nemesis {
        rng: Rng::new(rng.next()),
        brokers,
        client,
        held: BTreeMap::new(),
        down: BTreeSet::new(),
        active: Vec::new(),
        next_at: Duration::from_millis(1000 + rng.below(3000)),
        base_latency,
        faults: 0,
    };
    shared.event(
        0,
        format!("{profile:?}, link latency up to {base_latency:?}"),
    );
    let mut sim_error = None;
    loop {
        let now = sim.elapsed();
        nemesis.tick(&mut sim, now, &shared);
        match sim.step() {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => {
                sim_error = Some(format!("simulation failed at {} ms: {e}", now.as_millis()));
                break;
            }
        }
    }
    let sim_ms = sim.elapsed().as_millis() as u64;
    // Ends every host: stores close, so they can be read below.
    drop(sim);
    let mut replicas = Vec::new();
    let mut read_errors = Vec::new();
    for (i, dir) in dirs.iter().enumerate() {
        let node = i as u64 + 1;
        match open(dir) {
            Ok((_store, catalog)) => {
                for (_, log) in catalog.all_partitions() {
                    match log.dump() {
                        Ok(bytes) => replicas.push(Replica {
                            node,
                            partition: log.partition,
                            log_start: log.log_start_offset(),
                            high_watermark: log.high_watermark(),
                            bytes,
                        }),
                        Err(e) => read_errors.push(format!("reading b{node}: {e}")),
                    }
                }
            }
            Err(e) => read_errors.push(format!("reopening b{node}: {e}")),
        }
    }
    replicas.sort_by_key(|r| (r.partition, r.node));
    for r in &replicas {
        shared.event(
            sim_ms,
            format!(
                "final b{} p{}: hw {} ({} bytes, hash {:016x})",
                r.node,
                r.partition,
                r.high_watermark,
                r.bytes.len(),
                {
                    use std::hash::{DefaultHasher, Hasher};
                    let mut h = DefaultHasher::new();
                    h.write(&r.bytes);
                    h.finish()
                }
            ),
        );
    }
    let (digest, events, delivered_bytes, trace, history) = shared.finish();
    let mut violations: Vec<String> = sim_error.into_iter().chain(read_errors).collect();
    violations.extend(checker::check(&history, &replicas));
    Outcome {
        seed,
        digest,
        violations,
        sim_ms,
        events,
        delivered_bytes,
        acks: history.acks.len() as u64,
        faults: nemesis.faults,
        elections: history.leaders.len() as u64,
        snapshot_installs: history.snapshot_installs,
        trace,
    }
}
