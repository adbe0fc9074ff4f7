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

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;

use crate::broker_http::{AdminConn, HttpError};
use crate::proto::{self, Ack, Body, Chunk, Envelope, Position, TopicOffer, TopicReady};
use crate::{kafka, FrameReader, ReadError, Shared};

/// Largest single append sent to a broker (several chunks concatenated).
const MAX_APPEND: usize = 8 << 20;

/// Serves one accepted connection until it fails.
pub async fn serve(shared: Arc<Shared>, conn: quinn::Connection) {
    let remote = conn.remote_address();
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
    // Hello, then the peer's identity check.
    let hello = match tokio::time::timeout(Duration::from_secs(10), frames.next()).await {
        Err(_) => return Err("no Hello within 10 s".into()),
        Ok(Err(e)) => return Err(e.to_string()),
        Ok(Ok((env, _))) => match env.body {
            Some(Body::Hello(h)) => h,
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
    tracing::info!(peer = %peer, remote = %conn.remote_address(), "incoming link from {peer} accepted");
    let (out_tx, mut out_rx) = mpsc::unbounded_channel::<Envelope>();
    out_tx
        .send(Envelope {
            id: 0,
            reply_to: 0,
            body: Some(Body::HelloAck(proto::Hello {
                region: shared.region.clone(),
                protocol_version: proto::PROTOCOL_VERSION,
            })),
        })
        .ok();
    let writer = async move {
        while let Some(env) = out_rx.recv().await {
            let (frame, _) = proto::encode(&env, None);
            send.write_all(&frame).await.map_err(|e| e.to_string())?;
        }
        Ok::<(), String>(())
    };
    let ctx = Arc::new(SessionCtx {
        shared: shared.clone(),
        peer: peer.clone(),
        out: out_tx,
        frames: Mutex::new(HashMap::new()),
    });
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
    tokio::select! {
        r = reader => r,
        r = writer => r,
    }
}

/// Chunks of a data frame not yet appended, and the log ends reached.
type PendingFrame = (usize, BTreeMap<(String, i32), i64>);

struct SessionCtx {
    shared: Arc<Shared>,
    peer: String,
    out: mpsc::UnboundedSender<Envelope>,
    /// Data frames not fully appended: chunks left, positions reached.
    frames: Mutex<HashMap<u64, PendingFrame>>,
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

    /// One chunk of frame `seq` is done (appended, or known present).
    fn chunk_done(&self, seq: u64, topic: &str, partition: i32, log_end: i64) {
        let mut frames = self.frames.lock().unwrap();
        let Some((left, pos)) = frames.get_mut(&seq) else {
            return;
        };
        *left -= 1;
        let e = pos.entry((topic.to_string(), partition)).or_insert(log_end);
        *e = (*e).max(log_end);
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
    let mut configs = offer.configs.clone();
    configs.insert("chronik.home.region".into(), offer.home_region.clone());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match prepare(shared, &local.bootstrap, offer, &configs).await {
            Ok(positions) => {
                return TopicReady {
                    name: offer.name.clone(),
                    positions,
                    error: String::new(),
                }
            }
            Err(e) if tokio::time::Instant::now() > deadline => return fail(e),
            Err(e) => {
                tracing::debug!(topic = %offer.name, error = %e, "mirror topic not ready yet");
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
        }
    }
}

async fn prepare(
    shared: &Shared,
    bootstrap: &[String],
    offer: &TopicOffer,
    configs: &BTreeMap<String, String>,
) -> Result<Vec<Position>, String> {
    let name = offer.name.clone();
    let view = kafka::metadata(bootstrap, Some(std::slice::from_ref(&name)))
        .await
        .map_err(|e| e.to_string())?;
    let existing = view.topics.get(&name).filter(|t| t.error == 0);
    let mut c = kafka::Conn::connect(&bootstrap[0])
        .await
        .map_err(|e| e.to_string())?;
    match existing {
        None => {
            // The mirror gets the home's replication factor when this
            // region has enough brokers, else as many as it has.
            let rf = offer
                .replication_factor
                .clamp(1, view.brokers.len().max(1) as i32) as i16;
            kafka::create_topic(&mut c, &name, offer.partitions, rf, configs)
                .await
                .map_err(|e| e.to_string())?;
            tracing::info!(topic = %name, partitions = offer.partitions, "created mirror topic");
            return Err("created; waiting for leaders".into());
        }
        Some(t) if (t.leaders.len() as i32) < offer.partitions => {
            kafka::create_partitions(&mut c, &name, offer.partitions)
                .await
                .map_err(|e| e.to_string())?;
            return Err("grown; waiting for leaders".into());
        }
        Some(_) => {}
    }
    let current = kafka::topic_configs(&mut c, std::slice::from_ref(&name))
        .await
        .map_err(|e| e.to_string())?;
    let home = current
        .get(&name)
        .and_then(|cfg| cfg.get("chronik.home.region").cloned());
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
        positions.push(Position {
            topic: name.clone(),
            partition: p,
            offset: state.log_end_offset,
        });
    }
    Ok(positions)
}

/// Appends one partition's chunks in order, forever (until the session's
/// channel closes).
async fn append_loop(
    ctx: Arc<SessionCtx>,
    topic: String,
    partition: i32,
    mut rx: mpsc::UnboundedReceiver<(u64, Chunk)>,
) {
    // Where the mirror ends, as far as this appender knows; learned from the
    // leader before the first append.
    let mut expected: Option<i64> = None;
    // A resend was asked for at this offset and not yet seen.
    let mut resync_sent: Option<i64> = None;
    let mut admin: Option<AdminConn> = None;
    let link = format!("{}->{}", ctx.peer, ctx.shared.region);
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
            if batch.iter().map(|(_, c)| c.records.len()).sum::<usize>() > MAX_APPEND {
                break;
            }
        }
        // Build one append of contiguous bytes starting at the log end.
        loop {
            let exp = match expected {
                Some(e) => e,
                None => match mirror_end(&ctx, &mut admin, &topic, partition).await {
                    Some(e) => {
                        expected = Some(e);
                        e
                    }
                    None => {
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if ctx.out.is_closed() {
                            return;
                        }
                        continue;
                    }
                },
            };
            let mut body: Vec<Bytes> = Vec::new();
            let mut base = None;
            let mut end = exp;
            let mut from_log_start = false;
            let mut gap = false;
            for (_, c) in &batch {
                if c.next_offset <= end {
                    continue; // already in the mirror
                }
                if c.base_offset > end {
                    if base.is_none() && c.from_log_start {
                        // The home log starts later (retention): an empty
                        // mirror may start there; the log decides.
                        base = Some(c.base_offset);
                        from_log_start = true;
                        body.push(c.records.clone());
                        end = c.next_offset;
                        continue;
                    }
                    gap = true; // everything from here waits for a resend
                    break;
                }
                let bytes = if c.base_offset < end {
                    match trim_to(&c.records, end) {
                        Some(b) => b,
                        None => {
                            gap = true;
                            break;
                        }
                    }
                } else {
                    c.records.clone()
                };
                base.get_or_insert(end);
                body.push(bytes);
                end = c.next_offset;
            }
            let seqs: Vec<u64> = batch.iter().map(|(s, _)| *s).collect();
            if let Some(b) = base {
                if from_log_start {
                    tracing::warn!(topic = %topic, partition, mirror_end = exp, home_start = b, "home log starts after the mirror's end (retention); starting the mirror there if it is empty");
                }
                let records = Bytes::from(body.concat());
                match append(
                    &ctx,
                    &mut admin,
                    &topic,
                    partition,
                    b,
                    records,
                    from_log_start,
                )
                .await
                {
                    Ok(a) => {
                        expected = Some(a.log_end_offset);
                        if !a.appended {
                            if a.log_end_offset != exp {
                                // The log ends elsewhere than this appender
                                // thought (an earlier append that timed out
                                // did commit, or another writer): weigh the
                                // same chunks against the real end.
                                continue;
                            }
                            // Refused at the log end itself: a start the
                            // log cannot take. Ask for a resend from there.
                            resync_sent = None;
                            gap = true;
                        } else {
                            metrics::counter!("chronik_dclink_appended_bytes_total", "link" => link.clone())
                            .increment(batch.iter().map(|(_, c)| c.records.len() as u64).sum());
                        }
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic, partition, error = %e, "mirror append failed; retrying");
                        admin = None;
                        if matches!(e, HttpError::NotLeader { .. }) {
                            expected = None;
                        }
                        tokio::time::sleep(Duration::from_millis(200)).await;
                        if ctx.out.is_closed() {
                            return;
                        }
                        continue;
                    }
                }
            }
            let now_end = expected.unwrap_or(end);
            if gap {
                request_resend(&ctx, &mut resync_sent, &topic, partition, now_end);
            } else if resync_sent.is_some_and(|r| r <= now_end) {
                resync_sent = None;
            }
            for seq in seqs {
                ctx.chunk_done(seq, &topic, partition, now_end);
            }
            break;
        }
    }
}

fn request_resend(
    ctx: &SessionCtx,
    sent: &mut Option<i64>,
    topic: &str,
    partition: i32,
    offset: i64,
) {
    // One request per gap: later chunks of the same gap were already on
    // their way and are dropped quietly.
    if *sent == Some(offset) {
        return;
    }
    *sent = Some(offset);
    tracing::debug!(topic, partition, offset, "asking for a resend");
    ctx.send(Envelope {
        id: 0,
        reply_to: 0,
        body: Some(Body::Resync(Position {
            topic: topic.to_string(),
            partition,
            offset,
        })),
    });
}

/// The batches of `records` from the one containing `offset` on; `None`
/// if `offset` falls inside a batch (cannot split one) or they do not parse.
fn trim_to(records: &Bytes, offset: i64) -> Option<Bytes> {
    let batches = chronik_wire::batch::split_stored(records).ok()?;
    let (_, range) = batches.iter().find(|(h, _)| h.base_offset >= offset)?;
    if batches
        .iter()
        .any(|(h, _)| h.base_offset < offset && h.last_offset() >= offset)
    {
        return None;
    }
    Some(records.slice(range.start..))
}

async fn mirror_end(
    ctx: &SessionCtx,
    admin: &mut Option<AdminConn>,
    topic: &str,
    partition: i32,
) -> Option<i64> {
    let view = kafka::metadata(
        &ctx.shared.local_region().bootstrap,
        Some(&[topic.to_string()]),
    )
    .await
    .ok()?;
    let mut a = ctx
        .shared
        .leader_admin(&view, topic, partition)
        .await
        .ok()?;
    let end = a.mirror_state(topic, partition).await.ok()?.log_end_offset;
    *admin = Some(a);
    Some(end)
}

async fn append(
    ctx: &SessionCtx,
    admin: &mut Option<AdminConn>,
    topic: &str,
    partition: i32,
    base: i64,
    records: Bytes,
    from_log_start: bool,
) -> Result<crate::broker_http::Appended, HttpError> {
    if admin.as_ref().is_none_or(|a| !a.is_open()) {
        let view = kafka::metadata(
            &ctx.shared.local_region().bootstrap,
            Some(&[topic.to_string()]),
        )
        .await
        .map_err(|e| HttpError::Transport {
            addr: "metadata".into(),
            message: e.to_string(),
        })?;
        *admin = Some(ctx.shared.leader_admin(&view, topic, partition).await?);
    }
    admin
        .as_mut()
        .expect("connected above")
        .mirror_append(topic, partition, base, records, from_log_start)
        .await
}
