//! The receiving side of a link: accepts a home region's dc-link, creates
//! mirror topics, and appends shipped batches to the mirror partitions
//! through this region's brokers (Raft, local quorum), acking the durable
//! log end.
//!
//! Exactly-once comes from one rule applied twice: a chunk is appended only
//! where the mirror's log ends. The appender checks it against what it knows
//! (dropping resends, trimming overlaps, asking for a resend after a gap),
//! and the partition's state machine checks it again against the log itself,
//! so even two receivers racing (a restart, a standby) cannot write a gap or
//! a duplicate.

mod appender;
mod incarnation;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::broker_http::AdminConn;
use crate::kafka::ClusterView;
use crate::lag::PartitionState;
use crate::proto::{self, Ack, Body, Chunk, Envelope, Position, TopicOffer, TopicReady};
use crate::{kafka, FrameReader, LogEvery, ReadError, Shared};
use appender::{Appender, Change, Failure, MirrorView, Step};

/// Largest single append sent to a broker (several chunks concatenated).
const MAX_APPEND: usize = 8 << 20;
/// One append or log-end request may take this long. The broker gives up
/// on a commit after 30 s; a partition whose leader hangs must be stopped
/// (see `appender::STOP_AFTER`) well before that, or it stalls the link.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(8);
/// Pause between retries of a transiently failing request.
const RETRY_PAUSE: Duration = Duration::from_millis(200);

/// The QUIC close code of a dc-link that does not act for its region.
pub const STANDBY: u32 = 3;

/// Serves one accepted connection until it fails.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
    if shared.lease.get().is_none() {
        // A standby (or a process still taking the role): the peer's dialer
        // moves on to the region's next dc-link address.
        conn.close(STANDBY.into(), shared.not_acting().as_bytes());
        return;
    }
    match session(shared, &conn).await {
        Ok(()) => tracing::info!(%remote, "link closed"),
        Err(e) => {
            tracing::warn!(%remote, error = %e, "incoming link failed");
            conn.close(1u32.into(), e.to_string().as_bytes());
        }
    }
}

async fn session(shared: Arc<Shared>, conn: &quinn::Connection) -> Result<(), String> {
    let (mut send, recv) = tokio::time::timeout(Duration::from_secs(10), conn.accept_bi())
        .await
        .map_err(|_| "no stream within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    let mut frames = FrameReader::new(recv);
    // Hello (a data link) or LeaseHello (a holder renewing its lease), then
    // the peer's identity check.
    let hello = match tokio::time::timeout(Duration::from_secs(10), frames.next()).await {
        Err(_) => return Err("no Hello within 10 s".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok((env, _))) => match env.body {
            Some(Body::Hello(h)) => h,
            Some(Body::LeaseHello(h)) => {
                let voter = shared.voter.get().cloned().ok_or("starting")?;
                let topo = shared.topology.clone();
                return crate::lease_link::serve(voter, &topo, Some(shared), conn, send, frames, h)
                    .await;
            }
            _ => return Err("first message was not Hello".into()),
        },
    };
    let peer = hello.region.clone();
    if hello.protocol_version != proto::PROTOCOL_VERSION {
        return Err(format!(
            "peer {peer} speaks dc-link protocol {}, this build {}",
            hello.protocol_version,
            proto::PROTOCOL_VERSION
        ));
    }
    if shared.topology.region(&peer).is_none() || peer == shared.region {
        tracing::error!(peer = %peer, "refusing dc-link: region {peer} is not another region of the topology");
        return Err(format!(
            "region {peer} is not another region of the topology"
        ));
    }
    if let Err(e) = crate::tls::check_peer_region(conn, &peer) {
        tracing::error!(peer = %peer, error = %e, "refusing dc-link: certificate does not match the claimed region");
        return Err(e.to_string());
    }
    if hello.forward_only {
        tracing::info!(peer = %peer, remote = %conn.remote_address(), "incoming forward connection from {peer} accepted");
        let ack = Envelope {
            id: 0,
            reply_to: 0,
            body: Some(Body::HelloAck(proto::Hello {
                region: shared.region.clone(),
                protocol_version: proto::PROTOCOL_VERSION,
                forward_only: true,
            })),
        };
        crate::write_envelope(&mut send, &ack).await?;
        let r = accept_streams(shared, conn, peer).await;
        drop((send, frames));
        return r;
    }
    tracing::info!(peer = %peer, remote = %conn.remote_address(), "incoming link from {peer} accepted");
    shared.peer_back(&peer).notify_one();
    let (out_tx, out_rx) = mpsc::unbounded_channel::<Envelope>();
    out_tx
        .send(Envelope {
            id: 0,
            reply_to: 0,
            body: Some(Body::HelloAck(proto::Hello {
                region: shared.region.clone(),
                protocol_version: proto::PROTOCOL_VERSION,
                forward_only: false,
            })),
        })
        .ok();
    let writer = crate::write_frames(send, out_rx, None);
    let ctx = Arc::new(SessionCtx {
        shared: shared.clone(),
        peer: peer.clone(),
        link: format!("{peer}->{}", shared.region),
        out: out_tx,
        frames: Mutex::new(HashMap::new()),
        home_starts: Mutex::new(HashMap::new()),
    });
    // Partitions stopped in this session are reported until it ends; the
    // next session starts them afresh from the mirror's log end.
    let _clear = ClearIncoming(ctx.clone());
    let reader = async {
        let mut appenders: HashMap<(String, i32), mpsc::UnboundedSender<(u64, Chunk)>> =
            HashMap::new();
        loop {
            let (env, size) = match frames.next().await {
                Ok(x) => x,
                Err(ReadError::Stream(e)) => return Err(e),
                Err(ReadError::Frame(e)) => {
                    metrics::counter!("chronik_dclink_frames_corrupt_total", "link" => format!("{peer}->{}", shared.region)).increment(1);
                    tracing::error!(peer = %peer, error = %e, "corrupt frame: resetting the link; nothing from it was appended");
                    return Err(format!("corrupt frame: {e}"));
                }
            };
            metrics::counter!("chronik_dclink_received_bytes_total", "link" => format!("{peer}->{}", shared.region)).increment(size as u64);
            match env.body {
                Some(Body::TopicOffer(offer)) => {
                    let ctx = ctx.clone();
                    let id = env.id;
                    tokio::spawn(async move {
                        let ready = ensure_mirror(&ctx, &offer).await;
                        ctx.send(Envelope {
                            id: 0,
                            reply_to: id,
                            body: Some(Body::TopicReady(ready)),
                        });
                    });
                }
                Some(Body::Data(data)) => {
                    if data.chunks.is_empty() {
                        ctx.send_ack(data.seq, Vec::new());
                        continue;
                    }
                    ctx.frames
                        .lock()
                        .unwrap()
                        .insert(data.seq, (data.chunks.len(), BTreeMap::new()));
                    for c in data.chunks {
                        let key = (c.topic.clone(), c.partition);
                        if c.home_high_watermark > 0 {
                            ctx.shared.home_seen(
                                &ctx.link,
                                &c.topic,
                                c.partition,
                                c.home_high_watermark,
                            );
                        }
                        if c.home_log_start > 0 {
                            let mut starts = ctx.home_starts.lock().unwrap();
                            let s = starts.entry(key.clone()).or_insert(0);
                            *s = (*s).max(c.home_log_start);
                        }
                        let tx = appenders.entry(key.clone()).or_insert_with(|| {
                            let (tx, rx) = mpsc::unbounded_channel();
                            tokio::spawn(append_loop(ctx.clone(), key.0, key.1, rx));
                            tx
                        });
                        let _ = tx.send((data.seq, c));
                    }
                }
                _ => {}
            }
        }
    };
    // Every further stream the peer opens carries metadata-sync or
    // forwarded produces; its first message tells which.
    let meta = accept_streams(shared.clone(), conn, peer.clone());
    tokio::select! {
        r = meta => r,
        r = reader => r,
        r = writer => r,
    }
}

/// Chunks of a data frame not yet appended, and the log ends reached.
type PendingFrame = (usize, BTreeMap<(String, i32), i64>);

struct SessionCtx {
    shared: Arc<Shared>,
    peer: String,
    /// "home->here", as the sending side names the link.
    link: String,
    out: mpsc::UnboundedSender<Envelope>,
    /// Data frames not fully appended: chunks left, positions reached.
    frames: Mutex<HashMap<u64, PendingFrame>>,
    /// The newest home log start each partition's chunks carried.
    home_starts: Mutex<HashMap<(String, i32), i64>>,
}

impl SessionCtx {
    fn send(&self, env: Envelope) {
        let _ = self.out.send(env);
    }

    fn send_ack(&self, seq: u64, positions: Vec<Position>) {
        self.send(Envelope {
            id: 0,
            reply_to: 0,
            body: Some(Body::Ack(Ack { seq, positions })),
        });
    }

    /// One chunk of frame `seq` is done: appended, known present, or
    /// dropped (a gap, a stopped partition). `log_end`: the mirror's durable
    /// end, when known.
    fn chunk_done(&self, seq: u64, topic: &str, partition: i32, log_end: Option<i64>) {
        let mut frames = self.frames.lock().unwrap();
        let Some((left, pos)) = frames.get_mut(&seq) else {
            return;
        };
        *left -= 1;
        if let Some(log_end) = log_end {
            self.shared
                .mirror_end(&self.link, topic, partition, log_end);
            let e = pos.entry((topic.to_string(), partition)).or_insert(log_end);
            *e = (*e).max(log_end);
        }
        if *left == 0 {
            let (_, pos) = frames.remove(&seq).expect("present");
            drop(frames);
            self.send_ack(
                seq,
                pos.into_iter()
                    .map(|((topic, partition), offset)| Position {
                        topic,
                        partition,
                        offset,
                        last_epoch: None,
                    })
                    .collect(),
            );
        }
    }
}

/// Creates (or grows) the mirror topic and reports where each partition's
/// mirror ends.
async fn ensure_mirror(ctx: &SessionCtx, offer: &TopicOffer) -> TopicReady {
    let fail = |error: String| {
        tracing::error!(topic = %offer.name, peer = %ctx.peer, error = %error, "cannot prepare mirror topic");
        TopicReady {
            name: offer.name.clone(),
            positions: Vec::new(),
            error,
        }
    };
    if offer.home_region != ctx.peer {
        return fail(format!(
            "topic is homed in {}, not in the offering region {}",
            offer.home_region, ctx.peer
        ));
    }
    let shared = &ctx.shared;
    let local = shared.local_region();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match prepare(shared, &local.bootstrap, offer).await {
            Ok(Ok(positions)) => {
                return TopicReady {
                    name: offer.name.clone(),
                    positions,
                    error: String::new(),
                }
            }
            // Waiting does not change these.
            Ok(Err(refused)) => return fail(refused),
            Err(e) if tokio::time::Instant::now() > deadline => return fail(e),
            Err(e) => {
                tracing::debug!(topic = %offer.name, error = %e, "mirror topic not ready yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

async fn prepare(
    shared: &Arc<Shared>,
    bootstrap: &[String],
    offer: &TopicOffer,
) -> Result<Result<Vec<Position>, String>, String> {
    let name = offer.name.clone();
    let view = kafka::metadata(bootstrap, Some(std::slice::from_ref(&name)))
        .await
        .map_err(|e| e.to_string())?;
    let existing = view.topics.get(&name).filter(|t| t.error == 0);
    let mut c = kafka::connect_any(bootstrap)
        .await
        .map_err(|e| e.to_string())?;
    // Mirror topics are created and grown by metadata-sync, from the
    // topic's global entry, in the controller of this region; the offer
    // only waits for that to have happened.
    match existing {
        None => {
            // Deleted here, or not created yet: the global entry decides.
            if !offer.topic_id.is_empty() {
                let mut local = crate::meta_sync::LocalMeta::new(shared.clone());
                if let Err(e) = local.reconcile(&offer.topic_id).await {
                    tracing::debug!(topic = %name, error = %e, "mirror topic not re-created yet");
                }
            }
            return Err("waiting for metadata-sync to create the mirror topic".into());
        }
        Some(t) if (t.leaders.len() as i32) < offer.partitions => {
            return Err("waiting for metadata-sync to add the new partitions".into());
        }
        Some(_) => {}
    }
    let current = kafka::topic_configs(&mut c, std::slice::from_ref(&name))
        .await
        .map_err(|e| e.to_string())?;
    let home = current
        .get(&name)
        .and_then(|cfg| cfg.get("chronik.home.region").cloned());
    let recorded = current
        .get(&name)
        .and_then(|cfg| cfg.get(incarnation::SOURCE_TOPIC_ID).cloned());
    if let Err(refused) = incarnation::check(&name, recorded.as_deref(), &offer.topic_id) {
        return Ok(Err(refused));
    }
    if home.as_deref() != Some(offer.home_region.as_str()) {
        return Err(format!(
            "a topic named {name} already exists in this region and is not a mirror of {} (its home: {}); refusing to mirror into it",
            offer.home_region,
            home.unwrap_or_else(|| shared.region.clone())
        ));
    }
    let mut positions = Vec::new();
    for p in 0..offer.partitions {
        let mut a = shared
            .leader_admin(&view, &name, p)
            .await
            .map_err(|e| e.to_string())?;
        let state = a.mirror_state(&name, p).await.map_err(|e| e.to_string())?;
        shared.mirror_end_is(
            &format!("{}->{}", offer.home_region, shared.region),
            &name,
            p,
            state.log_end_offset,
        );
        positions.push(Position {
            topic: name.clone(),
            partition: p,
            offset: state.log_end_offset,
            last_epoch: state.last_epoch(),
        });
    }
    Ok(Ok(positions))
}

/// Removes a session's stopped partitions from the reports when it ends.
struct ClearIncoming(Arc<SessionCtx>);

impl Drop for ClearIncoming {
    fn drop(&mut self) {
        for (topic, partition) in self.0.shared.clear_incoming(&self.0.link) {
            set_incoming_gauges(&self.0.link, &topic, partition, PartitionState::Ok);
        }
    }
}

fn set_incoming_gauges(link: &str, topic: &str, partition: i32, state: PartitionState) {
    let labels = [
        ("link", link.to_string()),
        ("topic", topic.to_string()),
        ("partition", partition.to_string()),
    ];
    metrics::gauge!("chronik_dclink_incoming_failed", &labels)
        .set((state == PartitionState::Failed) as u8 as f64);
    metrics::gauge!("chronik_dclink_incoming_retrying", &labels)
        .set((state == PartitionState::Retrying) as u8 as f64);
}

/// Appends one partition's chunks in order (see `appender` for every
/// decision), until the session's channel closes.
async fn append_loop(
    ctx: Arc<SessionCtx>,
    topic: String,
    partition: i32,
    mut rx: mpsc::UnboundedReceiver<(u64, Chunk)>,
) {
    let mut app = Appender::new(&topic, partition, &ctx.peer, &ctx.shared.region);
    let mut admin: Option<AdminConn> = None;
    // A failing partition is logged when it fails, then at most this often.
    let mut retry_log = LogEvery::new(Duration::from_secs(30));
    let mut stop_log = LogEvery::new(Duration::from_secs(60));
    loop {
        let probe_at = app.probe_at();
        let first = tokio::select! {
            m = rx.recv() => match m {
                Some(m) => m,
                None => return,
            },
            _ = tokio::time::sleep_until(probe_at.unwrap_or_else(Instant::now).into()), if probe_at.is_some() => {
                let r = locate(&ctx, &mut admin, &topic, partition).await;
                let change = app.probed(r, Instant::now());
                report(&ctx, &topic, partition, change, &mut stop_log);
                continue;
            }
        };
        if first.1.records.is_empty() {
            // Only a new home log start, from an idle partition: nothing
            // to order against the log end.
            trim_idle(&ctx, &mut admin, &topic, partition, first.1.base_offset).await;
            ctx.chunk_done(first.0, &topic, partition, None);
            continue;
        }
        let mut seqs = vec![first.0];
        let mut chunks = vec![first.1];
        let mut size = chunks[0].records.len();
        while size <= MAX_APPEND {
            let Ok((seq, c)) = rx.try_recv() else { break };
            if c.records.is_empty() {
                // The data appended now carries the newest home log start.
                ctx.chunk_done(seq, &topic, partition, None);
                continue;
            }
            size += c.records.len();
            seqs.push(seq);
            chunks.push(c);
        }
        loop {
            if ctx.out.is_closed() {
                return;
            }
            let started = Instant::now();
            let failure = match app.step(&chunks, started) {
                Step::Done {
                    ack_end,
                    resend_from,
                } => {
                    if let Some(offset) = resend_from {
                        request_resend(&ctx, &topic, partition, offset);
                    }
                    for seq in &seqs {
                        ctx.chunk_done(*seq, &topic, partition, ack_end);
                    }
                    break;
                }
                Step::Locate => match locate(&ctx, &mut admin, &topic, partition).await {
                    Ok(view) => {
                        let change = app.located(&view, Instant::now());
                        report(&ctx, &topic, partition, change, &mut stop_log);
                        continue;
                    }
                    Err(f) => f,
                },
                Step::Append(a) => {
                    let answer = tokio::time::timeout(
                        ATTEMPT_TIMEOUT,
                        append(&ctx, &mut admin, &topic, partition, &a),
                    )
                    .await
                    .unwrap_or_else(|_| {
                        Err(Failure::Transient(format!(
                            "no answer to an append within {} s",
                            ATTEMPT_TIMEOUT.as_secs()
                        )))
                    });
                    match answer {
                        Ok(done) => {
                            if done.appended {
                                metrics::counter!("chronik_dclink_appended_bytes_total", "link" => ctx.link.clone())
                                    .increment(a.records.len() as u64);
                            }
                            let change = app.answered(
                                &a,
                                done.appended,
                                done.log_end_offset,
                                Instant::now(),
                            );
                            report(&ctx, &topic, partition, change, &mut stop_log);
                            continue;
                        }
                        Err(f) => f,
                    }
                }
            };
            // A request failed; the connection may be the reason.
            admin = None;
            let class = if failure.is_permanent() {
                "permanent"
            } else {
                "transient"
            };
            metrics::counter!("chronik_dclink_append_errors_total", "link" => ctx.link.clone(), "class" => class)
                .increment(1);
            if !failure.is_permanent() {
                if let Some(held) = retry_log.check(Instant::now()) {
                    tracing::warn!(topic = %topic, partition, error = failure.message(), similar_since_last = held, "mirror append failed; retrying");
                }
            }
            let change = app.failed(failure, started, Instant::now());
            let stopped = !matches!(change, Change::None);
            report(&ctx, &topic, partition, change, &mut stop_log);
            if !stopped {
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
}

/// Tells the sender, the reports and the log about a stopped or resumed
/// partition.
fn report(ctx: &SessionCtx, topic: &str, partition: i32, change: Change, log: &mut LogEvery) {
    if ctx.out.is_closed() {
        return; // the session is over; the next one starts afresh
    }
    let (health, error, offset, state) = match change {
        Change::None => return,
        Change::Stopped { state, error } => {
            if let Some(held) = log.check(Instant::now()) {
                match state {
                    PartitionState::Failed => {
                        tracing::error!(link = %ctx.link, topic, partition, error = %error, similar_since_last = held, "mirror partition failed: not appending to it (the link's other partitions go on); probing it every {} s", appender::PROBE_FAILED.as_secs())
                    }
                    _ => {
                        tracing::warn!(link = %ctx.link, topic, partition, error = %error, similar_since_last = held, "mirror partition not answering: pausing it (the link's other partitions go on)")
                    }
                }
            }
            ctx.shared
                .set_incoming(&ctx.link, topic, partition, Some((state, error.clone())));
            let health = match state {
                PartitionState::Failed => proto::Health::Failed,
                _ => proto::Health::Retrying,
            };
            (health, error, 0, state)
        }
        Change::Resumed { offset } => {
            tracing::info!(link = %ctx.link, topic, partition, from = offset, "mirror partition takes data again; resuming");
            ctx.shared.set_incoming(&ctx.link, topic, partition, None);
            (proto::Health::Ok, String::new(), offset, PartitionState::Ok)
        }
    };
    set_incoming_gauges(&ctx.link, topic, partition, state);
    ctx.send(Envelope {
        id: 0,
        reply_to: 0,
        body: Some(Body::PartitionStatus(proto::PartitionStatus {
            topic: topic.to_string(),
            partition,
            health: health as i32,
            error,
            offset,
        })),
    });
}

fn request_resend(ctx: &SessionCtx, topic: &str, partition: i32, offset: i64) {
    tracing::debug!(topic, partition, offset, "asking for a resend");
    ctx.send(Envelope {
        id: 0,
        reply_to: 0,
        body: Some(Body::Resync(Position {
            topic: topic.to_string(),
            partition,
            offset,
            last_epoch: None,
        })),
    });
}

/// Why the metadata says `topic`/`partition` does not exist here, if it
/// does not.
fn topic_gone(view: &ClusterView, topic: &str, partition: i32, region: &str) -> Option<String> {
    match view.topics.get(topic) {
        None => Some(format!(
            "mirror topic {topic} does not exist in {region} (deleted there?); it is recreated when the link reconnects"
        )),
        Some(t) if t.error == UNKNOWN_TOPIC_OR_PARTITION => Some(format!(
            "mirror topic {topic} does not exist in {region} (deleted there?); it is recreated when the link reconnects"
        )),
        Some(t) if t.error == 0 && partition as usize >= t.leaders.len() => Some(format!(
            "mirror topic {topic} in {region} has {} partitions, not {}",
            t.leaders.len(),
            partition + 1
        )),
        Some(_) => None,
    }
}

const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;

/// A connection to the admin listener of the partition's leader here.
async fn connect_leader(
    ctx: &SessionCtx,
    topic: &str,
    partition: i32,
) -> Result<AdminConn, Failure> {
    let bootstrap = &ctx.shared.local_region().bootstrap;
    let view = kafka::metadata(bootstrap, Some(&[topic.to_string()]))
        .await
        .map_err(|e| Failure::Transient(format!("metadata: {e}")))?;
    if let Some(why) = topic_gone(&view, topic, partition, &ctx.shared.region) {
        return Err(Failure::Gone(why));
    }
    ctx.shared
        .leader_admin(&view, topic, partition)
        .await
        .map_err(|e| Failure::from_http(&e))
}

/// A 404 from a broker: gone if the metadata no longer has the partition.
async fn resolve(ctx: &SessionCtx, topic: &str, partition: i32, f: Failure) -> Failure {
    if !matches!(f, Failure::NoReplica(_)) {
        return f;
    }
    let gone = match kafka::metadata(
        &ctx.shared.local_region().bootstrap,
        Some(&[topic.to_string()]),
    )
    .await
    {
        Ok(view) => topic_gone(&view, topic, partition, &ctx.shared.region),
        Err(_) => None,
    };
    f.resolve_no_replica(gone)
}

/// Asks the partition's leader where the mirror ends.
async fn locate(
    ctx: &SessionCtx,
    admin: &mut Option<AdminConn>,
    topic: &str,
    partition: i32,
) -> Result<MirrorView, Failure> {
    let attempt = async {
        let mut a = connect_leader(ctx, topic, partition).await?;
        let st = match a.mirror_state(topic, partition).await {
            Ok(st) => st,
            Err(e) => return Err(resolve(ctx, topic, partition, Failure::from_http(&e)).await),
        };
        *admin = Some(a);
        Ok(MirrorView {
            log_start: st.log_start_offset,
            log_end: st.log_end_offset,
            mirror_of: st.mirror_of,
        })
    };
    tokio::time::timeout(ATTEMPT_TIMEOUT, attempt)
        .await
        .unwrap_or_else(|_| {
            Err(Failure::Transient(format!(
                "the mirror's leader did not say where it ends within {} s",
                ATTEMPT_TIMEOUT.as_secs()
            )))
        })
}

/// Trims an idle mirror partition to the home log start: an append of
/// nothing at `at`, on the partition's own connection, which the broker
/// answers by trimming within the mirror's records. Best effort: the
/// sender says it again later.
async fn trim_idle(
    ctx: &SessionCtx,
    admin: &mut Option<AdminConn>,
    topic: &str,
    partition: i32,
    at: i64,
) {
    let nothing = appender::Append {
        base: at,
        records: bytes::Bytes::new(),
        next: at,
        from_log_start: false,
    };
    let answer = tokio::time::timeout(
        ATTEMPT_TIMEOUT,
        append(ctx, admin, topic, partition, &nothing),
    )
    .await;
    if !matches!(answer, Ok(Ok(_))) {
        tracing::debug!(
            topic,
            partition,
            "mirror not trimmed to the home log start yet"
        );
    }
}

async fn append(
    ctx: &SessionCtx,
    admin: &mut Option<AdminConn>,
    topic: &str,
    partition: i32,
    a: &appender::Append,
) -> Result<crate::broker_http::Appended, Failure> {
    if admin.as_ref().is_none_or(|c| !c.is_open()) {
        *admin = Some(connect_leader(ctx, topic, partition).await?);
    }
    let home_start = ctx
        .home_starts
        .lock()
        .unwrap()
        .get(&(topic.to_string(), partition))
        .copied()
        .unwrap_or(0);
    let r = admin
        .as_mut()
        .expect("connected above")
        .mirror_append(
            topic,
            partition,
            a.base,
            a.records.clone(),
            a.from_log_start,
            home_start,
        )
        .await;
    match r {
        Ok(done) => Ok(done),
        Err(e) => Err(resolve(ctx, topic, partition, Failure::from_http(&e)).await),
    }
}

/// Serves the further streams a peer opens on a connection: each carries
/// metadata-sync or forwarded produces, and its first message tells which.
/// Ends when the connection does.
async fn accept_streams(
    shared: Arc<Shared>,
    conn: &quinn::Connection,
    peer: String,
) -> Result<(), String> {
    loop {
        let (send, recv) = conn.accept_bi().await.map_err(|e| e.to_string())?;
        let (shared, peer) = (shared.clone(), peer.clone());
        let conn = conn.clone();
        tokio::spawn(async move {
            let mut frames = FrameReader::new(recv);
            let first = match frames.next().await {
                Ok((env, _)) => env,
                Err(e) => {
                    tracing::info!(peer = %peer, error = %e, "stream from {peer} ended before its first message");
                    return;
                }
            };
            if let Some(Body::Forward(_)) = first.body {
                if let Err(e) =
                    crate::forward::home::serve(shared, peer.clone(), first, frames, send).await
                {
                    tracing::info!(peer = %peer, error = %e, "forward stream from {peer} ended");
                    if e.starts_with("unexpected") {
                        conn.close(2u32.into(), e.as_bytes());
                    }
                }
                return;
            }
            if let Err(e) = crate::meta_sync::serve(shared, peer.clone(), first, frames, send).await
            {
                if e.starts_with("malformed")
                    || e.contains("refused")
                    || e.starts_with("unexpected")
                {
                    conn.close(2u32.into(), e.as_bytes());
                } else {
                    tracing::info!(peer = %peer, error = %e, "metadata-sync stream ended");
                }
            }
        });
    }
}
