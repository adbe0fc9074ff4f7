//! `chronik ctl failback --region A (--topic T… | --all)`: bring a region
//! back in line after a failover moved its topics' home away from it.
//! Per topic, once A is reachable and has learnt the new home (its copy
//! demoted to a mirror):
//!
//! 1. per partition, find where A's log leaves the new home's, from the
//!    two epoch histories ([`chronik_wire::epochs::divergence`]);
//! 2. copy A's records from there on into the recovery topic
//!    (`__chronik.divergent.<topic>`, homed in the new home), same
//!    partition, each record with its key, value, timestamp and headers
//!    and four more naming where it was (`chronik.original.*`);
//! 3. once every one of them is there, cut A's partition back to the
//!    divergence point (a replicated truncation);
//! 4. wait until the new home's dc-link has shipped A's copy up to date.
//!
//! Every step starts from what the regions hold now: the copy skips records
//! the recovery topic already has (by their original offset), and a cut
//! partition no longer diverges. A run interrupted anywhere is completed by
//! running it again.

use std::collections::{BTreeMap, BTreeSet};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chronik_dc_link::broker_http::{encode_segment, get_bytes, get_json, post_json, MirrorState};
use chronik_dc_link::kafka;
use chronik_wire::batch::build;
use chronik_wire::control::{fates, key_kind, Fate};
use chronik_wire::epochs::{divergence, LogShape};
use chronik_wire::records::{decode_all, Record};
use serde_json::{json, Value};

use crate::switchover::{
    chosen_topics, deployment_or_exit, each_topic, observe, reason, Deployment, DeploymentArgs,
    Progress,
};

/// The config that marks a topic as a failback's recovery topic, naming
/// the topic whose diverged records it holds.
pub const RECOVERY_OF: &str = "chronik.recovery.of";
/// Headers added to every recovered record.
pub const ORIGINAL_REGION: &str = "chronik.original.region";
pub const ORIGINAL_PARTITION: &str = "chronik.original.partition";
pub const ORIGINAL_OFFSET: &str = "chronik.original.offset";
pub const ORIGINAL_EPOCH: &str = "chronik.original.epoch";

/// Records per produced batch of the recovery topic (and at most this many
/// bytes of keys and values), well inside the default max.message.bytes.
const COPY_RECORDS: usize = 500;
const COPY_BYTES: usize = 256 << 10;

#[derive(clap::Args)]
pub struct Args {
    /// The region that comes back: its copies took writes the new home
    /// never received.
    #[arg(long)]
    region: String,
    /// A topic to bring back in line (repeatable).
    #[arg(long = "topic", value_name = "TOPIC", required_unless_present = "all")]
    topics: Vec<String>,
    /// Every topic with a copy in --region whose home moved away from it.
    #[arg(long, conflicts_with = "topics")]
    all: bool,
    /// The recovery topic of topic T is PREFIX + T.
    #[arg(long, value_name = "PREFIX", default_value = "__chronik.divergent.")]
    recovery_prefix: String,
    /// Give up after this long (re-run to complete).
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// Print the result as JSON (progress still goes to stderr).
    #[arg(long)]
    json: bool,
    /// Also count, per partition, the recovered records with a timestamp at
    /// or before this time (ms since the epoch): the region-loss drill's
    /// records lost at the failover, as opposed to those the region took
    /// after it came back.
    #[arg(long, value_name = "MS", hide = true)]
    written_before_ms: Option<i64>,
}

/// One partition's copy in a region, as its leader reports it.
#[derive(Debug)]
pub(crate) struct PartitionCopy {
    admin: String,
    pub(crate) state: MirrorState,
}

impl PartitionCopy {
    fn log_end(&self) -> i64 {
        self.state.log_end_offset
    }

    /// The committed log: a leader may hold a write its high watermark has
    /// not reached yet, and the batch comparison reads only below it.
    pub(crate) fn shape(&self) -> LogShape<'_> {
        LogShape {
            epochs: &self.state.epochs,
            log_start: self.state.log_start_offset,
            log_end: self.state.log_end_offset.min(self.state.high_watermark),
        }
    }
}

/// Why a topic cannot be failed back into `region` yet, decided from what
/// the regions report (no I/O). `home`: the topic's home as the region
/// with the newest fencing epoch knows it; `region_home`: as `region`
/// knows it; `roles`: the role of each partition leader's copy in
/// `region` (`Some(true)`: home, `Some(false)`: mirror, `None`: never
/// given one); `learnt_ms`: how long `region` has known the new home.
pub fn readiness(
    topic: &str,
    region: &str,
    home: Option<&(String, u64)>,
    region_home: Option<&(String, u64)>,
    roles: &BTreeMap<i32, Option<bool>>,
    partitions: i32,
    learnt_ms: u64,
) -> Result<Ready, String> {
    let Some((home, epoch)) = home else {
        return Err(format!("no region reports a home for topic {topic}"));
    };
    if home == region {
        return Err(format!(
            "topic {topic} is homed in {region} (epoch {epoch}): nothing to fail back (it never failed over, \
             or a switchover already brought the home back)"
        ));
    }
    if region_home.map(|h| h.1) < Some(*epoch) {
        return Ok(Ready::Wait(format!(
            "{region} has not learnt yet that {topic} is homed in {home} (epoch {epoch}); waiting for metadata-sync"
        )));
    }
    if roles.len() < partitions.max(0) as usize {
        return Ok(Ready::Wait(format!(
            "{} of {partitions} partitions of {topic} have a leader in {region}; waiting",
            roles.len()
        )));
    }
    // A copy that never moved has no role either until its demotion is
    // applied, just after the region learnt the new home.
    if roles.values().all(|r| r.is_none()) && learnt_ms < DEMOTION_GRACE_MS {
        return Ok(Ready::Wait(format!(
            "{region} knows that {topic} is homed in {home}; waiting for its copies to be demoted"
        )));
    }
    if roles.values().all(|r| r.is_none()) {
        return Err(format!(
            "{region}'s copy of {topic} was never demoted: the home of {topic} never moved away from {region}, \
             so there is nothing to fail back"
        ));
    }
    let still_home: Vec<i32> = roles
        .iter()
        .filter(|(_, r)| **r != Some(false))
        .map(|(p, _)| *p)
        .collect();
    if !still_home.is_empty() {
        return Ok(Ready::Wait(format!(
            "partitions {still_home:?} of {topic} in {region} are not demoted to mirrors yet; waiting"
        )));
    }
    Ok(Ready::Go {
        home: home.clone(),
        epoch: *epoch,
    })
}

/// How long a region's copies may stay without a role once it knows the new
/// home, before failback concludes they were never the home's.
const DEMOTION_GRACE_MS: u64 = 10_000;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ready {
    Go { home: String, epoch: u64 },
    Wait(String),
}

/// The recovery topic's name, checked against Kafka's limits.
pub fn recovery_topic(prefix: &str, topic: &str) -> Result<String, String> {
    let name = format!("{prefix}{topic}");
    if name.len() > 249 {
        return Err(format!(
            "recovery topic name {name} is longer than Kafka's 249 characters: pass a shorter --recovery-prefix"
        ));
    }
    if !name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
    {
        return Err(format!(
            "recovery topic name {name} has characters Kafka does not allow in a topic name"
        ));
    }
    Ok(name)
}

/// Which record of a diverged log a recovered record is: its original offset
/// and leader epoch. The offset alone is not enough: after a failback cut
/// the region's log reuses the offsets, and a later failback of the same
/// topic recovers other records at them (with the later epochs that each
/// home tenure stamps).
type Origin = (i64, i32);

/// The origins (of `region`/`partition`) that recovered records in `dump`
/// (a recovery partition's log) carry.
fn recovered_origins(
    dump: &[u8],
    region: &str,
    partition: i32,
) -> Result<BTreeSet<Origin>, String> {
    let mut out = BTreeSet::new();
    let batches = decode_all(dump).map_err(|e| format!("recovery topic log: {e}"))?;
    for r in batches.into_iter().flat_map(|(_, records)| records) {
        let h = |k: &str| {
            r.headers
                .iter()
                .rev()
                .find(|(n, _)| n == k)
                .and_then(|(_, v)| v.as_ref())
                .map(|v| String::from_utf8_lossy(v).into_owned())
        };
        if h(ORIGINAL_REGION).as_deref() == Some(region)
            && h(ORIGINAL_PARTITION) == Some(partition.to_string())
        {
            let offset = h(ORIGINAL_OFFSET).and_then(|o| o.parse().ok());
            let epoch = h(ORIGINAL_EPOCH).and_then(|e| e.parse().ok());
            if let (Some(o), Some(e)) = (offset, epoch) {
                out.insert((o, e));
            }
        }
    }
    Ok(out)
}

/// The recovery topic's batches for one partition's diverged records.
struct RecoveryCopy {
    batches: Vec<Vec<u8>>,
    count: u64,
    /// Every record of the diverged range, copied now or before.
    origins: BTreeSet<Origin>,
    /// The records' timestamps, in log order.
    timestamps: Vec<i64>,
    skipped: Skipped,
}

/// Diverged records of transactions that did not commit, which the
/// recovery topic does not take.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Skipped {
    /// Of transactions the region's log shows aborted.
    aborted: u64,
    /// Of transactions still open in the region's log: their coordinator,
    /// in the region, lost the home before it could end them, and the new
    /// home never had them committed.
    open: u64,
}

/// Recovery batches for the records of `suffix` (stored batches of the
/// diverged copy) at offsets in `[from, to)` whose origin is not in `done`:
/// each record as it was, plus the `chronik.original.*` headers.
fn recovery_batches(
    suffix: &[u8],
    from: i64,
    to: i64,
    done: &BTreeSet<Origin>,
    region: &str,
    partition: i32,
) -> Result<RecoveryCopy, String> {
    let mut pending: Vec<Record> = Vec::new();
    let mut out = Vec::new();
    let mut count = 0u64;
    let mut timestamps = Vec::new();
    let mut origins = BTreeSet::new();
    let flush = |pending: &mut Vec<Record>, out: &mut Vec<Vec<u8>>| {
        if pending.is_empty() {
            return;
        }
        let base_ts = pending.iter().map(|r| r.timestamp).min().unwrap_or(0);
        let recs: Vec<build::Record<'_>> = pending
            .iter()
            .map(|r| build::Record {
                key: r.key.as_deref(),
                value: r.value.as_deref(),
                headers: r
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_str(), v.as_deref()))
                    .collect(),
                timestamp_delta: r.timestamp - base_ts,
            })
            .collect();
        out.push(build::batch(base_ts, None, &recs));
        pending.clear();
    };
    let mut bytes = 0usize;
    let mut skipped = Skipped::default();
    let batches = decode_all(suffix).map_err(|e| format!("diverged log: {e}"))?;
    let marks: Vec<_> = batches
        .iter()
        .map(|(h, records)| {
            let key = records.first().and_then(|r| r.key.as_deref());
            (*h, key.filter(|_| h.is_control()).and_then(key_kind))
        })
        .collect();
    for ((h, records), fate) in batches.into_iter().zip(fates(&marks)) {
        let in_range = || {
            records
                .iter()
                .filter(|r| r.offset >= from && r.offset < to)
                .count() as u64
        };
        match fate {
            Fate::Plain | Fate::Committed => {}
            Fate::Control => continue, // transaction markers are not records
            // Never visible to a read_committed consumer of the region, and
            // no producer was told they were committed.
            Fate::Aborted => {
                skipped.aborted += in_range();
                continue;
            }
            Fate::Open => {
                skipped.open += in_range();
                continue;
            }
        }
        for r in records {
            let origin = (r.offset, h.partition_leader_epoch);
            if r.offset < from || r.offset >= to {
                continue;
            }
            origins.insert(origin);
            if done.contains(&origin) {
                continue;
            }
            let mut r = r;
            let origin = [
                (ORIGINAL_REGION, region.to_string()),
                (ORIGINAL_PARTITION, partition.to_string()),
                (ORIGINAL_OFFSET, r.offset.to_string()),
                (ORIGINAL_EPOCH, h.partition_leader_epoch.to_string()),
            ];
            r.headers
                .extend(origin.map(|(k, v)| (k.to_string(), Some(Bytes::from(v)))));
            bytes +=
                r.key.as_ref().map_or(0, |k| k.len()) + r.value.as_ref().map_or(0, |v| v.len());
            timestamps.push(r.timestamp);
            pending.push(r);
            count += 1;
            if pending.len() >= COPY_RECORDS || bytes >= COPY_BYTES {
                flush(&mut pending, &mut out);
                bytes = 0;
            }
        }
    }
    flush(&mut pending, &mut out);
    Ok(RecoveryCopy {
        batches: out,
        count,
        origins,
        timestamps,
        skipped,
    })
}

/// The leader's copy of topic/p among `brokers`, if one answers as leader.
pub(crate) async fn leader_copy(brokers: &[String], topic: &str, p: i32) -> Option<PartitionCopy> {
    let path = format!("/v1/mirror/{}/{p}", encode_segment(topic));
    for b in brokers {
        match get_json::<MirrorState>(b, &path).await {
            Ok(state) if state.is_leader => {
                return Some(PartitionCopy {
                    admin: b.clone(),
                    state,
                })
            }
            _ => {}
        }
    }
    None
}

/// The stored batch of `copy` that holds `offset` (empty if none).
pub(crate) async fn batch_at(
    copy: &PartitionCopy,
    topic: &str,
    p: i32,
    offset: i64,
) -> Result<Bytes, String> {
    let path = format!(
        "/v1/partitions/{}/{p}/log?from={offset}&to={}",
        encode_segment(topic),
        offset + 1
    );
    get_bytes(&copy.admin, &path)
        .await
        .map_err(|e| format!("reading {topic}/{p} at {offset}: {}", reason(&e)))
}

/// Where the two copies really part. The epoch histories say it when no
/// two regions stamped the same epoch from the same offset; a home cut off
/// from the others and the mirror promoted in its place can (see
/// docs/failover.md), so the stored batches are compared too: the one
/// before `fork` must be identical in both, else the first batch that
/// differs is found by bisection (copies agree on a prefix, then never
/// again). Returns the offset of this copy's first differing batch.
async fn verified_fork(
    ours: &PartitionCopy,
    theirs: &PartitionCopy,
    topic: &str,
    p: i32,
    fork: i64,
) -> Result<i64, String> {
    let start = ours.shape().log_start.max(theirs.shape().log_start);
    let same = |o: i64| async move {
        let (a, b) = (
            batch_at(ours, topic, p, o).await?,
            batch_at(theirs, topic, p, o).await?,
        );
        Ok::<bool, String>(!a.is_empty() && a == b)
    };
    if fork <= start || same(fork - 1).await? {
        return Ok(fork);
    }
    let (mut lo, mut hi) = (start, fork - 1);
    while lo < hi {
        let mid = lo + (hi - lo) / 2;
        if same(mid).await? {
            lo = mid + 1;
        } else {
            hi = mid;
        }
    }
    let b = batch_at(ours, topic, p, lo).await?;
    let h = chronik_wire::batch::BatchHeader::parse(&b)
        .map_err(|e| format!("{topic}/{p} at {lo}: {e}"))?;
    Ok(h.base_offset.max(start))
}

/// The Kafka listeners of a region's brokers, from their admin API.
async fn kafka_bootstrap(brokers: &[String]) -> Vec<String> {
    for b in brokers {
        if let Ok(v) = get_json::<Value>(b, "/v1/cluster").await {
            let out: Vec<String> = v["brokers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|x| x["kafka"].as_str().map(str::to_string))
                .collect();
            if !out.is_empty() {
                return out;
            }
        }
    }
    Vec::new()
}

/// What the home region holds under the recovery topic's name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RecoveryTopic {
    Absent,
    /// It names the topic it recovers (`chronik.recovery.of`).
    Ours,
    /// An ordinary topic, or another topic's recovery topic.
    Foreign,
}

async fn recovery_topic_state(
    bootstrap: &[String],
    name: &str,
    topic: &str,
) -> Result<RecoveryTopic, String> {
    let mut c = kafka::connect_any(bootstrap)
        .await
        .map_err(|e| e.to_string())?;
    let have = kafka::topic_configs(&mut c, &[name.to_string()])
        .await
        .map_err(|e| e.to_string())?;
    Ok(match have.get(name) {
        None => RecoveryTopic::Absent,
        Some(cfg) if cfg.get(RECOVERY_OF).map(String::as_str) == Some(topic) => RecoveryTopic::Ours,
        Some(_) => RecoveryTopic::Foreign,
    })
}

/// Makes `name` the recovery topic of `topic` in the home region, with
/// `partitions` partitions, unless it is already.
async fn ensure_recovery_topic(
    state: RecoveryTopic,
    bootstrap: &[String],
    name: &str,
    topic: &str,
    home: &str,
    partitions: i32,
) -> Result<(), String> {
    match state {
        RecoveryTopic::Ours => Ok(()),
        RecoveryTopic::Foreign => Err(format!(
            "topic {name} exists and is not the recovery topic of {topic} (it has no {RECOVERY_OF}={topic}); \
             nothing was changed. Pass another --recovery-prefix"
        )),
        RecoveryTopic::Absent => {
            let configs = BTreeMap::from([
                (RECOVERY_OF.to_string(), topic.to_string()),
                ("chronik.home.region".to_string(), home.to_string()),
            ]);
            let mut c = kafka::connect_any(bootstrap)
                .await
                .map_err(|e| e.to_string())?;
            kafka::create_topic(&mut c, name, partitions, -1, &configs)
                .await
                .map_err(|e| format!("creating recovery topic {name}: {e}"))
        }
    }
}

/// Produces `batches` to name/p at its leader in the home region.
async fn produce_all(
    bootstrap: &[String],
    name: &str,
    p: i32,
    batches: Vec<Vec<u8>>,
    deadline: Instant,
) -> Result<(), String> {
    let mut conn: Option<kafka::Conn> = None;
    let mut i = 0;
    while i < batches.len() {
        if Instant::now() > deadline {
            return Err(format!(
                "copying into {name}/{p} did not finish in time (re-run to complete)"
            ));
        }
        if conn.is_none() {
            let view = kafka::metadata(bootstrap, Some(&[name.to_string()])).await;
            let addr = view
                .ok()
                .and_then(|v| v.leader_addr(name, p).map(str::to_string));
            if let Some(a) = addr {
                conn = kafka::Conn::connect(&a).await.ok()
            }
            if conn.is_none() {
                tokio::time::sleep(Duration::from_millis(300)).await;
                continue;
            }
        }
        let c = conn.as_mut().expect("connected above");
        match kafka::produce(c, name, p, Bytes::from(batches[i].clone())).await {
            Ok(_) => i += 1,
            Err(e) => {
                tracing::debug!(error = %e, "recovery produce; retrying");
                conn = None;
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
    Ok(())
}

pub(crate) async fn failback_one(
    dep: &Deployment,
    topic: &str,
    args: &Args,
) -> Result<Value, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let region = args.region.as_str();
    let region_brokers = dep.get(region).ok_or_else(|| {
        format!(
            "no region {region} in the deployment (regions: {:?})",
            dep.keys().collect::<Vec<_>>()
        )
    })?;
    let mut progress = Progress::new(topic);
    // 0. The region answers, knows the new home, and its copies are mirrors.
    let mut learnt_at: Option<Instant> = None;
    let (home, epoch, partitions) = loop {
        let views = observe(dep, topic).await;
        let mut reachable = false;
        for b in region_brokers {
            if get_json::<Value>(b, "/v1/cluster").await.is_ok() {
                reachable = true;
                break;
            }
        }
        if !reachable {
            return Err(format!(
                "region {region} is unreachable (none of its brokers {region_brokers:?} answers): run failback once it is back"
            ));
        }
        let home = views
            .values()
            .flatten()
            .filter_map(|v| v.home.clone())
            .max_by_key(|h| h.1);
        let rv = views.get(region).cloned().flatten().unwrap_or_default();
        let partitions = views
            .values()
            .flatten()
            .map(|v| v.partition_count)
            .max()
            .unwrap_or(0);
        if partitions == 0 {
            return Err(format!("no region holds topic {topic}"));
        }
        let roles: BTreeMap<i32, Option<bool>> = rv
            .leaders
            .iter()
            .map(|(p, v)| (*p, v.role.map(|r| r.0)))
            .collect();
        if rv.home.as_ref().map(|h| h.1) < home.as_ref().map(|h| h.1) {
            learnt_at = None;
        } else {
            learnt_at.get_or_insert_with(Instant::now);
        }
        match readiness(
            topic,
            region,
            home.as_ref(),
            rv.home.as_ref(),
            &roles,
            partitions,
            learnt_at.map_or(0, |t| t.elapsed().as_millis() as u64),
        )? {
            Ready::Go { home, epoch } => break (home, epoch, partitions),
            Ready::Wait(why) => {
                if Instant::now() > deadline {
                    return Err(format!("{why} (gave up after {} s)", args.timeout_s));
                }
                progress.say(why, Some(Duration::from_secs(5)));
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    };
    let home_brokers = dep
        .get(&home)
        .ok_or_else(|| format!("the home region {home} of {topic} is not in the deployment"))?;
    let recovery = recovery_topic(&args.recovery_prefix, topic)?;
    let bootstrap = kafka_bootstrap(home_brokers).await;
    let mut rows = Vec::new();
    // Looked up once: a re-run after a completed cut still reports what
    // was recovered, and a name taken by another topic is refused.
    let mut recovery_state = recovery_topic_state(&bootstrap, &recovery, topic).await?;
    for p in 0..partitions {
        // 1. Where the region's copy leaves the home's.
        let (ours, theirs) = loop {
            let ours = leader_copy(region_brokers, topic, p).await;
            let theirs = leader_copy(home_brokers, topic, p).await;
            if let (Some(a), Some(b)) = (ours, theirs) {
                break (a, b);
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no leader of {topic}/{p} answers in {region} or {home}"
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        };
        let read_recovered = || async {
            loop {
                if let Some(r) = leader_copy(home_brokers, &recovery, p).await {
                    let path = format!("/v1/partitions/{}/{p}/log", encode_segment(&recovery));
                    match get_bytes(&r.admin, &path).await {
                        Ok(d) => return recovered_origins(&d, region, p),
                        Err(e) => tracing::debug!(error = %e, "reading the recovery topic"),
                    }
                }
                if Instant::now() > deadline {
                    return Err(format!("cannot read {recovery}/{p} in {home}"));
                }
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        };
        let fork = verified_fork(
            &ours,
            &theirs,
            topic,
            p,
            divergence(ours.shape(), theirs.shape()),
        )
        .await?;
        let mut row = json!({
            "partition": p, "divergence": fork, "log_end": ours.log_end(),
            "home_log_end": theirs.state.high_watermark, "copied": 0, "copied_before": 0, "offsets_moved": 0,
            "skipped_aborted": 0, "skipped_open": 0,
        });
        if fork < ours.log_end() {
            progress.say(
                format!("partition {p}: {region} holds {} records from offset {fork} that {home} lacks; copying them to {recovery}", ours.log_end() - fork),
                None,
            );
            ensure_recovery_topic(
                recovery_state,
                &bootstrap,
                &recovery,
                topic,
                &home,
                partitions,
            )
            .await?;
            recovery_state = RecoveryTopic::Ours;
            // 2. Copy what the recovery topic does not hold yet.
            let before = read_recovered().await?;
            let path = format!(
                "/v1/partitions/{}/{p}/log?from={fork}",
                encode_segment(topic)
            );
            let suffix = get_bytes(&ours.admin, &path)
                .await
                .map_err(|e| format!("reading {topic}/{p} in {region}: {}", reason(&e)))?;
            let copy = recovery_batches(&suffix, fork, ours.log_end(), &before, region, p)?;
            let count = copy.count;
            if copy.skipped != Skipped::default() {
                progress.say(
                    format!(
                        "partition {p}: left out of {recovery}: {} record(s) of aborted transactions, {} of transactions {region} never ended",
                        copy.skipped.aborted, copy.skipped.open
                    ),
                    None,
                );
            }
            row["oldest_timestamp_ms"] = json!(copy.timestamps.iter().min());
            if let Some(t) = args.written_before_ms {
                row["written_before"] =
                    json!(copy.timestamps.iter().filter(|ts| **ts <= t).count());
            }
            produce_all(&bootstrap, &recovery, p, copy.batches, deadline).await?;
            // 3. Cut only once every diverged record is in the recovery topic.
            let after = read_recovered().await?;
            let missing: Vec<i64> = copy
                .origins
                .difference(&after)
                .map(|(o, _)| *o)
                .take(5)
                .collect();
            if !missing.is_empty() {
                return Err(format!(
                    "{topic}/{p}: records of {region} at offsets {missing:?}… are not in {recovery} after the copy; not cutting (re-run)"
                ));
            }
            let before_here = copy.origins.intersection(&before).count();
            row["copied"] = json!(count);
            row["skipped_aborted"] = json!(copy.skipped.aborted);
            row["skipped_open"] = json!(copy.skipped.open);
            row["copied_before"] = json!(before_here);
            let cut: Value = post_json(
                &ours.admin,
                &format!(
                    "/v1/partitions/{}/{p}/truncate?offset={fork}",
                    encode_segment(topic)
                ),
            )
            .await
            .map_err(|e| {
                format!(
                    "cutting {topic}/{p} in {region} back to {fork}: {}",
                    reason(&e)
                )
            })?;
            row["offsets_moved"] = cut["offsets_moved"].clone();
            progress.say(
                format!(
                    "partition {p}: cut back to {} in {region}; {} committed offset(s) past the cut moved back to it",
                    cut["log_end_offset"],
                    cut["offsets_moved"].as_u64().unwrap_or(0)
                ),
                None,
            );
        } else if recovery_state == RecoveryTopic::Ours {
            row["copied_before"] = json!(read_recovered().await?.len());
        }
        rows.push(row);
    }
    // 4. The region is a mirror again: wait until it holds the home's log.
    for p in 0..partitions {
        loop {
            let ours = leader_copy(region_brokers, topic, p).await;
            let theirs = leader_copy(home_brokers, topic, p).await;
            if let (Some(a), Some(b)) = (&ours, &theirs) {
                if divergence(a.shape(), b.shape()) == a.log_end()
                    && a.log_end() >= b.state.high_watermark
                {
                    break;
                }
                progress.say(
                    format!(
                        "partition {p}: {region} at {} of {home}'s {}; catching up",
                        a.log_end(),
                        b.state.high_watermark
                    ),
                    Some(Duration::from_secs(5)),
                );
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{topic}/{p} in {region} has not caught up with {home} within {} s; its diverged records are safe \
                     in {recovery}; re-run to wait again",
                    args.timeout_s
                ));
            }
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let copied: u64 = rows.iter().map(|r| r["copied"].as_u64().unwrap_or(0)).sum();
    let copied_before: u64 = rows
        .iter()
        .map(|r| r["copied_before"].as_u64().unwrap_or(0))
        .sum();
    let sum = |k: &str| rows.iter().map(|r| r[k].as_u64().unwrap_or(0)).sum::<u64>();
    Ok(json!({
        "topic": topic, "region": region, "home": home, "epoch": epoch,
        "recovery_topic": recovery, "records_recovered": copied + copied_before,
        "copied_now": copied, "elapsed_ms": started.elapsed().as_millis() as u64,
        "skipped_aborted": sum("skipped_aborted"), "skipped_open": sum("skipped_open"),
        "partitions": rows,
    }))
}

/// Topics with a copy in `region` whose home is elsewhere.
async fn moved_topics(dep: &Deployment, region: &str) -> Result<Vec<String>, String> {
    crate::switchover::all_topics(dep, region).await.map(|ts| {
        ts.into_iter()
            .filter(|t| !t.starts_with("__chronik."))
            .collect()
    })
}

pub fn run(args: Args) -> ExitCode {
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let dep = match deployment_or_exit(&args.deployment).await {
            Ok(d) => d,
            Err(code) => return code,
        };
        let topics = match chosen_topics(args.all, &args.topics, || {
            moved_topics(&dep, &args.region)
        })
        .await
        {
            Ok(t) => t,
            Err(code) => return code,
        };
        let (dep, args) = (&dep, &args);
        each_topic(&topics, args.json, print_results, |t| async move {
            failback_one(dep, &t, args).await
        })
        .await
    })
}

fn print_results(results: &[Value]) {
    println!(
        "{:<32} {:<10} {:<10} {:>9}  {:<40} PARTITIONS (divergence: recovered)",
        "TOPIC", "REGION", "HOME", "RECOVERED", "RECOVERY TOPIC"
    );
    for r in results {
        if let Some(e) = r["error"].as_str() {
            println!("{:<32} error: {e}", r["topic"].as_str().unwrap_or("?"));
            continue;
        }
        let parts: Vec<String> = r["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| {
                let n =
                    p["copied"].as_u64().unwrap_or(0) + p["copied_before"].as_u64().unwrap_or(0);
                let skipped = p["skipped_aborted"].as_u64().unwrap_or(0)
                    + p["skipped_open"].as_u64().unwrap_or(0);
                if skipped > 0 {
                    format!(
                        "{}@{}: {n} ({skipped} of uncommitted transactions left out)",
                        p["partition"], p["divergence"]
                    )
                } else {
                    format!("{}@{}: {n}", p["partition"], p["divergence"])
                }
            })
            .collect();
        println!(
            "{:<32} {:<10} {:<10} {:>9}  {:<40} {}",
            r["topic"].as_str().unwrap_or("?"),
            r["region"].as_str().unwrap_or("?"),
            r["home"].as_str().unwrap_or("?"),
            r["records_recovered"],
            r["recovery_topic"].as_str().unwrap_or("?"),
            parts.join(", ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roles(v: &[Option<bool>]) -> BTreeMap<i32, Option<bool>> {
        v.iter().enumerate().map(|(i, r)| (i as i32, *r)).collect()
    }

    #[test]
    fn failback_needs_a_moved_home_that_the_region_has_learnt() {
        const LATER: u64 = DEMOTION_GRACE_MS;
        let home = ("eu-west".to_string(), 2);
        let check = |region_home: &(String, u64), r: &[Option<bool>], parts: i32, learnt: u64| {
            readiness(
                "t",
                "us-east",
                Some(&home),
                Some(region_home),
                &roles(r),
                parts,
                learnt,
            )
        };
        assert_eq!(
            check(&home, &[Some(false), Some(false)], 2, 0),
            Ok(Ready::Go {
                home: "eu-west".into(),
                epoch: 2
            })
        );
        // Never moved: the region is the home.
        let here = ("us-east".to_string(), 1);
        let e = readiness(
            "t",
            "us-east",
            Some(&here),
            Some(&here),
            &roles(&[Some(true)]),
            1,
            LATER,
        )
        .unwrap_err();
        assert!(e.contains("nothing to fail back"), "{e}");
        // A mirror region that was never the home: its copy never got a role,
        // which the region's copies of a home that never moved share until
        // their demotion is applied.
        assert!(matches!(
            check(&home, &[None, None], 2, 0),
            Ok(Ready::Wait(_))
        ));
        let e = check(&home, &[None, None], 2, LATER).unwrap_err();
        assert!(e.contains("never demoted"), "{e}");
        // Not learnt yet, or not demoted yet: wait.
        let old = ("us-east".to_string(), 1);
        assert!(matches!(
            check(&old, &[Some(true)], 1, LATER),
            Ok(Ready::Wait(_))
        ));
        assert!(matches!(
            check(&home, &[Some(false), Some(true)], 2, LATER),
            Ok(Ready::Wait(_))
        ));
        assert!(matches!(
            check(&home, &[Some(false)], 2, LATER),
            Ok(Ready::Wait(_))
        ));
    }

    #[test]
    fn recovered_records_keep_everything_and_say_where_they_were() {
        let recs = [
            build::Record {
                key: Some(b"k1"),
                value: Some(b"v1"),
                headers: vec![("app", Some(b"x".as_slice()))],
                timestamp_delta: 0,
            },
            build::Record {
                key: None,
                value: Some(b"v2"),
                headers: vec![],
                timestamp_delta: 5,
            },
            build::Record {
                key: None,
                value: Some(b"v3"),
                headers: vec![],
                timestamp_delta: 9,
            },
        ];
        let stored = chronik_wire::batch::stamp(&build::batch(1_000, None, &recs), 10, 4, None);
        // Offset 11 was copied by an earlier, interrupted run; the record at
        // offset 12 of epoch 3 is another one, from an earlier failback
        // (a cut log reuses offsets).
        let done = BTreeSet::from([(11, 4), (12, 3)]);
        let copy = recovery_batches(&stored, 10, 13, &done, "us-east", 2).unwrap();
        assert_eq!(copy.count, 2);
        assert_eq!(copy.origins, BTreeSet::from([(10, 4), (11, 4), (12, 4)]));
        assert_eq!(copy.timestamps, [1_000, 1_009]);
        let batches = copy.batches;
        let (_, got) = chronik_wire::records::decode(&batches.concat()).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(
            (
                got[0].key.as_deref(),
                got[0].value.as_deref(),
                got[0].timestamp
            ),
            (Some(b"k1".as_slice()), Some(b"v1".as_slice()), 1_000)
        );
        assert_eq!(
            got[0].headers[0],
            ("app".to_string(), Some(Bytes::from_static(b"x")))
        );
        assert_eq!(got[1].timestamp, 1_009);
        let dump = chronik_wire::batch::stamp(&batches.concat(), 0, 1, None);
        assert_eq!(
            recovered_origins(&dump, "us-east", 2).unwrap(),
            BTreeSet::from([(10, 4), (12, 4)])
        );
        assert!(recovered_origins(&dump, "us-east", 1).unwrap().is_empty());
        assert!(recovered_origins(&dump, "eu-west", 2).unwrap().is_empty());
    }

    #[test]
    fn recovery_leaves_out_what_no_transaction_committed() {
        use chronik_wire::batch::{build::transactional, stamp};
        use chronik_wire::control::marker_batch;
        let data = |pid: i64, n: usize| transactional(build::simple(n, 0, Some((pid, 0, 0))));
        // Offsets: 20-21 pid 5's (committed at 24), 22 pid 6's (aborted at
        // 25), 23 plain, 26-28 pid 7's (never ended).
        let log = [
            stamp(&data(5, 2), 20, 4, None),
            stamp(&data(6, 1), 22, 4, None),
            stamp(&build::simple(1, 0, None), 23, 4, None),
            stamp(&marker_batch(5, 0, true, 0, 0, None), 24, 4, None),
            stamp(&marker_batch(6, 0, false, 0, 0, None), 25, 4, None),
            stamp(&data(7, 3), 26, 4, None),
        ]
        .concat();
        // The region's log left the home's at 21: pid 5's first record is
        // not diverged, its second is, and the commit covers it.
        let copy = recovery_batches(&log, 21, 29, &BTreeSet::new(), "us-east", 0).unwrap();
        assert_eq!(copy.origins, BTreeSet::from([(21, 4), (23, 4)]));
        assert_eq!(copy.count, 2);
        assert_eq!(
            copy.skipped,
            Skipped {
                aborted: 1,
                open: 3
            }
        );
    }

    #[test]
    fn recovery_topic_names_are_valid_kafka_names() {
        assert_eq!(
            recovery_topic("__chronik.divergent.", "orders").unwrap(),
            "__chronik.divergent.orders"
        );
        assert!(recovery_topic("bad prefix ", "t").is_err());
        assert!(recovery_topic("__chronik.divergent.", &"x".repeat(240)).is_err());
    }
}
