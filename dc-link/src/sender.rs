//! The sending side: one link per mirror region. It offers the topics homed
//! here, fetches their committed batches from this region's brokers from
//! where each mirror ends, and ships them in zstd-compressed frames with up
//! to `pipeline_depth` frames unacknowledged.
//!
//! Positions always come from the receiver (its mirror's durable log end,
//! on every new connection and on every resend request), never from local
//! memory, so a restart of either side resumes exactly where the mirror is.

mod book;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, Semaphore};

use crate::lag::PartitionState;
use crate::proto::{self, Body, Chunk, Data, Envelope, Hello, TopicOffer};
use crate::{kafka, FrameReader, HomedTopic, LogEvery, Shared};
use book::{Cursor, Unacked};

/// Data frames sent and not yet acked: the window permit each holds.
type InFlight = Arc<Mutex<Unacked<tokio::sync::OwnedSemaphorePermit>>>;

/// The receiver acks every frame within a few attempt timeouts, even when
/// a partition in it cannot take data; a frame unacked this long means the
/// session is broken, and a new one resumes from the mirror's log ends.
const ACK_TIMEOUT: Duration = Duration::from_secs(120);

struct Session {
    shared: Arc<Shared>,
    peer: String,
    link: String,
    out: mpsc::Sender<Chunk>,
    control: mpsc::UnboundedSender<Envelope>,
    positions: Mutex<HashMap<(String, i32), Cursor>>,
    /// Per partition: failure reports from the receiver, rate-limited.
    failure_log: Mutex<HashMap<(String, i32), LogEvery>>,
    pending: Mutex<HashMap<u64, oneshot::Sender<proto::TopicReady>>>,
    next_id: AtomicU64,
    closed: tokio::sync::watch::Sender<bool>,
}

impl Session {
    fn is_closed(&self) -> bool {
        *self.closed.borrow()
    }
}

/// Opens the first stream of a connection to `peer` at `addr`, says Hello
/// (`forward_only` for a forward connection) and waits for the peer's
/// HelloAck naming the region dialed. Returns that stream.
pub(crate) async fn handshake(
    shared: &Shared,
    conn: &quinn::Connection,
    peer: &str,
    addr: std::net::SocketAddr,
    forward_only: bool,
) -> Result<(quinn::SendStream, FrameReader), String> {
    let (mut send, recv) = conn.open_bi().await.map_err(|e| e.to_string())?;
    let hello = Envelope {
        id: 0,
        reply_to: 0,
        body: Some(Body::Hello(Hello {
            region: shared.region.clone(),
            protocol_version: proto::PROTOCOL_VERSION,
            forward_only,
        })),
    };
    crate::write_envelope(&mut send, &hello).await?;
    let mut frames = FrameReader::new(recv);
    match tokio::time::timeout(Duration::from_secs(10), frames.next()).await {
        Err(_) => Err("no HelloAck within 10 s".into()),
        Ok(Err(e)) => Err(format!("during the handshake: {e}")),
        Ok(Ok((env, _))) => match env.body {
            Some(Body::HelloAck(h)) if h.region == peer => Ok((send, frames)),
            Some(Body::HelloAck(h)) => Err(format!(
                "{addr} answered as region {}, expected {peer}",
                h.region
            )),
            _ => Err("expected HelloAck".to_string()),
        },
    }
}

/// Keeps the link to `peer` up for as long as the process runs.
pub async fn run_link(shared: Arc<Shared>, peer: String) {
    let link = format!("{}->{peer}", shared.region);
    shared.link_stats(&link, |_| {}); // listed (as down) before the first connection
    let mut backoff = Duration::from_millis(200);
    // Which of the peer's dc-link addresses to dial (the next one after a
    // failure: its primary may be down and a standby acting).
    let mut which = 0usize;
    let peer_back = shared.peer_back(&peer);
    loop {
        let started = Instant::now();
        match connect_and_run(&shared, &peer, &link, which).await {
            Ok(()) => {}
            Err(e) => {
                which += 1;
                tracing::warn!(link = %link, error = %e, "link down; reconnecting");
                shared.link_stats(&link, |s| {
                    if s.connected {
                        s.down_since = Some(Instant::now());
                    }
                    s.connected = false;
                    s.reconnects += 1;
                    s.last_error = Some(e.clone());
                });
            }
        }
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(200);
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => backoff = (backoff * 2).min(Duration::from_secs(5)),
            // The peer just dialed us: it is back, so dial it now.
            _ = peer_back.notified() => backoff = Duration::from_millis(200),
        }
    }
}

async fn connect_and_run(
    shared: &Arc<Shared>,
    peer: &str,
    link: &str,
    which: usize,
) -> Result<(), String> {
    let (conn, addr) = shared.dial(peer, which).await?;
    let (send, frames) = handshake(shared, &conn, peer, addr, false).await?;
    tracing::info!(link = %link, peer = %peer, remote = %addr, "link up");
    shared.link_stats(link, |s| {
        s.connected = true;
        s.down_since = None;
        s.last_error = None;
    });

    let cross = &shared.topology.cross_dc;
    let (chunk_tx, chunk_rx) = mpsc::channel::<Chunk>(cross.pipeline_depth as usize * 4);
    let (control_tx, control_rx) = mpsc::unbounded_channel::<Envelope>();
    let (closed, _) = tokio::sync::watch::channel(false);
    let session = Arc::new(Session {
        shared: shared.clone(),
        peer: peer.to_string(),
        link: link.to_string(),
        out: chunk_tx,
        control: control_tx,
        positions: Mutex::new(HashMap::new()),
        failure_log: Mutex::new(HashMap::new()),
        pending: Mutex::new(HashMap::new()),
        next_id: AtomicU64::new(1),
        closed,
    });
    let window = Arc::new(Semaphore::new(cross.pipeline_depth as usize));
    let inflight: InFlight = Arc::new(Mutex::new(Unacked::default()));

    let writer = write_frames(
        session.clone(),
        send,
        chunk_rx,
        control_rx,
        window.clone(),
        inflight.clone(),
    );
    let reader = read_replies(session.clone(), frames, inflight.clone());
    let offers = offer_topics(session.clone());
    let stats = {
        let conn = conn.clone();
        let shared = shared.clone();
        let link = link.to_string();
        let inflight = inflight.clone();
        async move {
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let rtt = conn.rtt().as_secs_f64() * 1000.0;
                let (n, overdue) = {
                    let u = inflight.lock().unwrap();
                    (u.len() as u64, u.overdue(Instant::now(), ACK_TIMEOUT))
                };
                shared.link_stats(&link, |s| {
                    s.rtt_ms = rtt;
                    s.frames_in_flight = n;
                });
                if let Some((seq, age)) = overdue {
                    return Err::<(), String>(format!(
                        "frame {seq} unacked for {} s; resetting the link",
                        age.as_secs()
                    ));
                }
            }
        }
    };
    let meta = {
        let shared = shared.clone();
        let conn = conn.clone();
        let peer = peer.to_string();
        async move {
            // A metadata failure never takes the data link down with it.
            loop {
                if let Err(e) =
                    crate::meta_sync::push(shared.clone(), conn.clone(), peer.clone()).await
                {
                    tracing::warn!(peer = %peer, error = %e, "metadata-sync: stream to {peer} ended; restarting it");
                    shared.meta_peer(&peer, |p| {
                        p.connected = false;
                        p.last_error = Some(e);
                    });
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    };
    // The peer dialing us again means it may have restarted; then this
    // connection is dead, but would only notice at the idle timeout. A live
    // peer acknowledges our keep-alives (every second) within the wait.
    let peer_restarted = {
        let conn = conn.clone();
        let back = shared.peer_back(peer);
        async move {
            loop {
                back.notified().await;
                let heard = conn.stats().udp_rx.datagrams;
                tokio::time::sleep(Duration::from_secs(2)).await;
                if conn.stats().udp_rx.datagrams == heard {
                    return Err::<(), String>(
                        "the peer dialed us anew and this connection hears nothing from it: reconnecting"
                            .into(),
                    );
                }
            }
        }
    };
    let result = tokio::select! {
        r = writer => r,
        r = peer_restarted => r,
        r = reader => r,
        r = offers => r,
        r = stats => r,
        r = meta => r,
        e = conn.closed() => Err(e.to_string()),
    };
    let _ = session.closed.send(true);
    conn.close(0u32.into(), b"link reset");
    result
}

/// Packs chunks into frames and writes them, at most `pipeline_depth`
/// unacknowledged; control messages go first, uncompressed.
async fn write_frames(
    s: Arc<Session>,
    mut send: quinn::SendStream,
    mut chunks: mpsc::Receiver<Chunk>,
    mut control: mpsc::UnboundedReceiver<Envelope>,
    window: Arc<Semaphore>,
    inflight: InFlight,
) -> Result<(), String> {
    let cross = s.shared.topology.cross_dc.clone();
    let level = cross.zstd_level();
    let corrupt_every = s.shared.faults.corrupt_frame_every;
    let mut seq: u64 = 0;
    loop {
        let first = tokio::select! {
            biased;
            c = control.recv() => {
                let Some(env) = c else { return Ok(()) };
                send.write_all(&proto::encode(&env, None).0).await.map_err(|e| e.to_string())?;
                continue;
            }
            c = chunks.recv() => match c { Some(c) => c, None => return Ok(()) },
        };
        let permit = window
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| e.to_string())?;
        let mut size = first.records.len();
        let mut frame_chunks = vec![first];
        while size < cross.frame_max_bytes as usize {
            match chunks.try_recv() {
                Ok(c) => {
                    size += c.records.len();
                    frame_chunks.push(c);
                }
                Err(_) => break,
            }
        }
        seq += 1;
        let records: u64 = frame_chunks
            .iter()
            .map(|c| (c.next_offset - c.base_offset) as u64)
            .sum();
        let raw: u64 = frame_chunks.iter().map(|c| c.records.len() as u64).sum();
        let env = Envelope {
            id: 0,
            reply_to: 0,
            body: Some(Body::Data(Data {
                seq,
                chunks: frame_chunks,
            })),
        };
        // Compression is CPU work; keep it off the I/O threads.
        let (frame, _) = tokio::task::spawn_blocking(move || proto::encode(&env, level))
            .await
            .map_err(|e| e.to_string())?;
        let frame = if corrupt_every > 0 && seq.is_multiple_of(corrupt_every) {
            let mut bad = frame.to_vec();
            let i = proto::HEADER_LEN + (seq as usize * 7919) % (bad.len() - proto::HEADER_LEN);
            bad[i] ^= 0x01;
            tracing::warn!(link = %s.link, seq, "fault injection: corrupting data frame");
            Bytes::from(bad)
        } else {
            frame
        };
        inflight.lock().unwrap().sent(seq, Instant::now(), permit);
        send.write_all(&frame).await.map_err(|e| e.to_string())?;
        let wire = frame.len() as u64;
        s.shared.link_stats(&s.link, |st| {
            st.frames_sent += 1;
            st.records_sent += records;
            st.raw_bytes_sent += raw;
            st.wire_bytes_sent += wire;
        });
        let labels = [("link", s.link.clone())];
        metrics::counter!("chronik_dclink_sent_bytes_total", &labels).increment(wire);
        metrics::counter!("chronik_dclink_sent_raw_bytes_total", &labels).increment(raw);
        metrics::counter!("chronik_dclink_sent_records_total", &labels).increment(records);
        metrics::counter!("chronik_dclink_sent_frames_total", &labels).increment(1);
    }
}

async fn read_replies(
    s: Arc<Session>,
    mut frames: FrameReader,
    inflight: InFlight,
) -> Result<(), String> {
    loop {
        let (env, _) = frames.next().await.map_err(|e| e.to_string())?;
        match env.body {
            Some(Body::TopicReady(r)) => {
                if let Some(tx) = s.pending.lock().unwrap().remove(&env.reply_to) {
                    let _ = tx.send(r);
                }
            }
            Some(Body::Ack(a)) => {
                drop(inflight.lock().unwrap().acked(a.seq));
                let now = Instant::now();
                for p in a.positions {
                    s.shared
                        .acked(&s.link, &p.topic, p.partition, p.offset, now);
                }
            }
            Some(Body::Resync(p)) => {
                let mut pos = s.positions.lock().unwrap();
                if let Some(c) = pos.get_mut(&(p.topic.clone(), p.partition)) {
                    tracing::info!(link = %s.link, topic = %p.topic, partition = p.partition, from = c.offset(), to = p.offset, "mirror asked for a resend");
                    c.resend_from(p.offset);
                }
            }
            Some(Body::PartitionStatus(st)) => partition_status(&s, st),
            Some(Body::Error(e)) => return Err(format!("peer error: {}", e.message)),
            _ => {}
        }
    }
}

/// How long a topic the peer refused waits before it is offered again.
const REOFFER_REFUSED: Duration = Duration::from_secs(30);

/// Offers every topic homed here that mirrors to this peer, once per
/// session (again when its partition count grows), and starts reading it.
async fn offer_topics(s: Arc<Session>) -> Result<(), String> {
    // Partitions offered so far and the incarnation (topic id) offered.
    let mut offered: HashMap<String, (i32, uuid::Uuid)> = HashMap::new();
    // Offers the peer refused, and when: offered again now and then, so the
    // link picks the topic up once an operator fixed the cause (deleted a
    // mirror of an older incarnation, say) without a restart.
    let mut refused: HashMap<String, (Instant, uuid::Uuid)> = HashMap::new();
    // Partitions whose copy took writes this home never had (logged once).
    let mut diverged: std::collections::HashSet<(String, i32)> = Default::default();
    // Offers sent and not answered yet, with the topic and when.
    let mut in_flight: HashMap<
        String,
        (oneshot::Receiver<proto::TopicReady>, HomedTopic, Instant),
    > = HashMap::new();
    loop {
        let topics: Vec<HomedTopic> = s.shared.homed_topics();
        // Topics no longer shipped from here to this peer (their home moved
        // away, or the peer was dropped from their mirrors): their readers
        // stop. Offered again from the mirror's end if they come back.
        let gone: Vec<String> = offered
            .keys()
            .filter(|n| {
                !topics
                    .iter()
                    .any(|t| t.name == **n && t.policy.mirrors.contains(&s.peer))
            })
            .cloned()
            .collect();
        for name in gone {
            tracing::info!(link = %s.link, topic = %name, "topic no longer homed here for this peer; stopped shipping it");
            s.positions
                .lock()
                .unwrap()
                .retain(|(topic, _), _| *topic != name);
            offered.remove(&name);
            in_flight.remove(&name);
        }
        for t in topics {
            if !t.policy.mirrors.contains(&s.peer) {
                continue;
            }
            match offered.get(&t.name) {
                Some((_, id)) if *id != t.id => {
                    // Deleted and re-created at home: the readers of the old
                    // incarnation stop (they fetch by id and would find
                    // nothing anyway), and the new one is offered afresh.
                    tracing::warn!(link = %s.link, topic = %t.name, old_id = %id, new_id = %t.id, "home topic re-created; offering the new incarnation");
                    s.positions
                        .lock()
                        .unwrap()
                        .retain(|(topic, _), _| *topic != t.name);
                    offered.remove(&t.name);
                    in_flight.remove(&t.name);
                }
                Some((n, _)) if *n >= t.partitions => continue,
                _ => {}
            }
            if in_flight.contains_key(&t.name)
                || refused
                    .get(&t.name)
                    .is_some_and(|(at, id)| *id == t.id && at.elapsed() < REOFFER_REFUSED)
            {
                continue;
            }
            let id = s.next_id.fetch_add(1, Ordering::Relaxed);
            let (tx, rx) = oneshot::channel();
            s.pending.lock().unwrap().insert(id, tx);
            let _ = s.control.send(Envelope {
                id,
                reply_to: 0,
                body: Some(Body::TopicOffer(TopicOffer {
                    name: t.name.clone(),
                    partitions: t.partitions,
                    replication_factor: t.replication_factor,
                    configs: t.configs.clone(),
                    home_region: s.shared.region.clone(),
                    topic_id: if t.id.is_nil() {
                        String::new()
                    } else {
                        t.id.to_string()
                    },
                })),
            });
            in_flight.insert(t.name.clone(), (rx, t.clone(), Instant::now()));
        }
        // Answers are taken as they come: a peer waiting for metadata-sync
        // to create one mirror (up to a minute) holds up no other topic.
        let waiting: Vec<String> = in_flight.keys().cloned().collect();
        for name in waiting {
            let ready = {
                let (rx, _, at) = in_flight.get_mut(&name).expect("listed above");
                match rx.try_recv() {
                    Ok(r) => r,
                    Err(oneshot::error::TryRecvError::Empty) => {
                        if at.elapsed() > Duration::from_secs(90) {
                            return Err(format!("no answer to the offer of topic {name}"));
                        }
                        continue;
                    }
                    Err(oneshot::error::TryRecvError::Closed) => {
                        return Err("session closed".to_string())
                    }
                }
            };
            let (_, t, _) = in_flight.remove(&name).expect("listed above");
            if !ready.error.is_empty() {
                tracing::error!(link = %s.link, topic = %t.name, error = %ready.error, "peer cannot mirror topic");
                s.shared
                    .policy_error(&t.name, format!("{}: {}", s.peer, ready.error));
                for p in 0..t.partitions {
                    s.shared.set_partition_state(
                        &s.link,
                        &t.name,
                        p,
                        PartitionState::Failed,
                        Some(ready.error.clone()),
                    );
                }
                refused.insert(t.name.clone(), (Instant::now(), t.id));
                continue;
            }
            refused.remove(&t.name);
            let now = Instant::now();
            let already = offered.get(&t.name).map_or(0, |(n, _)| *n);
            let mut retry_offer = false;
            for p in ready.positions {
                if s.positions
                    .lock()
                    .unwrap()
                    .contains_key(&(p.topic.clone(), p.partition))
                {
                    continue; // shipping already (offered again for another partition)
                }
                if p.partition < already && !diverged.contains(&(p.topic.clone(), p.partition)) {
                    s.shared
                        .acked(&s.link, &p.topic, p.partition, p.offset, now);
                    continue;
                }
                if let Err(e) = check_fork(&s, &p).await {
                    if e.starts_with("diverged") {
                        // A diverged copy's end is no ack of this home's
                        // log (a global_quorum or RPO count must not use
                        // it). Offered again each round: a failback cuts
                        // the copy, and shipping then resumes.
                        retry_offer = true;
                        if diverged.insert((p.topic.clone(), p.partition)) {
                            tracing::error!(link = %s.link, topic = %p.topic, partition = p.partition, error = %e, "mirror diverged from the home");
                            metrics::counter!("chronik_dclink_diverged_partitions_total", "link" => s.link.clone()).increment(1);
                        }
                        s.shared.set_partition_state(
                            &s.link,
                            &p.topic,
                            p.partition,
                            PartitionState::Failed,
                            Some(e),
                        );
                    } else {
                        // Cannot tell yet: offered again next round.
                        tracing::debug!(link = %s.link, topic = %p.topic, partition = p.partition, error = %e, "cannot check the mirror's history yet");
                        retry_offer = true;
                    }
                    continue;
                }
                if diverged.remove(&(p.topic.clone(), p.partition)) {
                    tracing::info!(link = %s.link, topic = %p.topic, partition = p.partition, from = p.offset, "the diverged copy was cut back (failback); shipping resumes");
                }
                s.shared
                    .acked(&s.link, &p.topic, p.partition, p.offset, now);
                // A new session starts every partition afresh: the mirror
                // topic was just checked (and recreated if it was gone).
                s.shared.set_partition_state(
                    &s.link,
                    &p.topic,
                    p.partition,
                    PartitionState::Ok,
                    None,
                );
                s.positions
                    .lock()
                    .unwrap()
                    .insert((p.topic.clone(), p.partition), Cursor::new(p.offset));
                tracing::info!(link = %s.link, topic = %p.topic, partition = p.partition, from = p.offset, "mirroring");
                tokio::spawn(read_partition(
                    s.clone(),
                    p.topic.clone(),
                    t.id,
                    p.partition,
                ));
            }
            if !retry_offer {
                offered.insert(t.name.clone(), (t.partitions, t.id));
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// Where a mirror's log left the home's, if it did: the mirror ends at
/// `mirror_end` with a record of epoch `mirror_epoch`, and the home's log
/// says that epoch (or the largest one it knows below it) is `home_epoch`
/// and ends at `home_end`. A copy that took writes as the home after the
/// others lost it (a failover) holds records no later home has; shipping
/// after them would splice two histories into one log.
pub(crate) fn fork_point(
    mirror_end: i64,
    mirror_epoch: i32,
    home_epoch: i32,
    home_end: i64,
) -> Option<i64> {
    if mirror_end <= 0 {
        return None;
    }
    if home_epoch < 0 || home_end < 0 {
        return Some(0); // the home never had that epoch nor any below it
    }
    // The home's log holds epoch `mirror_epoch` up to `home_end`: a mirror
    // ending later has records the home does not. A smaller epoch answered
    // means the home never wrote `mirror_epoch` at all: everything of it in
    // the mirror is foreign, from where the home's smaller epoch ends.
    (home_end < mirror_end || home_epoch < mirror_epoch).then_some(home_end.min(mirror_end))
}

/// Checks, before shipping, that the mirror's log is a prefix of the home's.
async fn check_fork(s: &Session, p: &proto::Position) -> Result<(), String> {
    let Some(epoch) = p.last_epoch else {
        return Ok(());
    };
    if p.offset <= 0 {
        return Ok(());
    }
    let addr = s
        .shared
        .leader_addr(&p.topic, p.partition)
        .ok_or_else(|| "no home leader known yet".to_string())?;
    let mut c = kafka::Conn::connect(&addr)
        .await
        .map_err(|e| e.to_string())?;
    let (home_epoch, home_end) = kafka::epoch_end(&mut c, &p.topic, p.partition, epoch)
        .await
        .map_err(|e| e.to_string())?;
    match fork_point(p.offset, epoch, home_epoch, home_end) {
        None => Ok(()),
        Some(fork) => Err(format!(
            "diverged: the copy in {} ends at {} with epoch {epoch}, but this home's log leaves that history at offset {fork} (epoch {home_epoch} ends at {home_end} here); it took writes this home never had (a failover). Not shipping: its log must be truncated to {fork} first",
            s.peer, p.offset
        )),
    }
}

/// How often an idle partition's home log start is told to the mirror
/// again (a lost one would otherwise wait for the next records).
const LOG_START_AGAIN: Duration = Duration::from_secs(30);

/// Whether an idle partition's home log start `start` is worth a chunk of
/// its own: it moved past what the mirror was last told (`sent`), or that
/// was long enough ago to say it again. Only within what was shipped (`at`,
/// the read position): further is a retention gap, handled with data.
fn log_start_news(start: i64, at: i64, sent: i64, since_sent: Duration) -> bool {
    start > 0 && start <= at && (start > sent || since_sent >= LOG_START_AGAIN)
}

/// Reads one partition's committed batches from its leader here and hands
/// them to the frame writer, until the session ends.
async fn read_partition(s: Arc<Session>, topic: String, topic_id: uuid::Uuid, partition: i32) {
    let max_bytes = (s.shared.topology.cross_dc.frame_max_bytes as i32).max(1 << 20);
    let mut conn: Option<kafka::Conn> = None;
    let key = (topic.clone(), partition);
    // The home log start last told to the mirror, and when.
    let mut start_sent: (i64, Instant) = (0, Instant::now());
    while !s.is_closed() {
        let ticket = match s.positions.lock().unwrap().get(&key).map(Cursor::ticket) {
            None => return,
            Some(t) => t,
        };
        let Some(pos) = ticket else {
            // Stopped by the receiver: nothing to read until it resumes.
            conn = None;
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        if conn.is_none() {
            let Some(addr) = s.shared.leader_addr(&topic, partition) else {
                s.shared.refresh_soon();
                tokio::time::sleep(Duration::from_millis(250)).await;
                continue;
            };
            match kafka::Conn::connect(&addr).await {
                Ok(c) => conn = Some(c),
                Err(e) => {
                    tracing::debug!(topic = %topic, partition, error = %e, "cannot reach the leader");
                    s.shared.refresh_soon();
                    tokio::time::sleep(Duration::from_millis(250)).await;
                    continue;
                }
            }
        }
        let c = conn.as_mut().expect("connected above");
        let f = match kafka::fetch(c, &topic, topic_id, partition, pos.offset, max_bytes, 500).await
        {
            Ok(f) => f,
            Err(e) => {
                tracing::debug!(topic = %topic, partition, error = %e, "fetch failed");
                conn = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        match f.error {
            0 => {}
            // OFFSET_OUT_OF_RANGE below the log start: retention removed
            // what the mirror lacks; start from what the home still has.
            1 if f.log_start_offset > pos.offset => {
                let mut positions = s.positions.lock().unwrap();
                if let Some(c) = positions.get_mut(&key) {
                    if c.restart_at_log_start(&pos, f.log_start_offset) {
                        tracing::warn!(topic = %topic, partition, mirror_end = pos.offset, home_start = f.log_start_offset, "home log no longer holds the mirror's next records (retention); continuing from the home log start");
                    }
                }
                continue;
            }
            code => {
                if code == 1 {
                    tracing::error!(topic = %topic, partition, mirror_end = pos.offset, "the mirror is ahead of its home log; not shipping");
                    tokio::time::sleep(Duration::from_secs(5)).await;
                } else {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                conn = None;
                s.shared.refresh_soon();
                continue;
            }
        }
        s.shared
            .observe_high_watermark(&s.link, &topic, partition, f.high_watermark);
        let whole = chronik_wire::batch::whole_batches_len(&f.records);
        if whole == 0 {
            // Idle here: a DeleteRecords (or retention) at home would reach
            // the mirror only with the next records, so the new log start
            // travels alone, and again now and then in case it was lost.
            let start = f.log_start_offset;
            if log_start_news(start, pos.offset, start_sent.0, start_sent.1.elapsed()) {
                start_sent = (start, Instant::now());
                let trim = Chunk {
                    topic: topic.clone(),
                    partition,
                    base_offset: pos.offset,
                    next_offset: pos.offset,
                    records: Bytes::new(),
                    from_log_start: false,
                    home_log_start: start,
                    home_high_watermark: f.high_watermark.max(0),
                };
                if s.out.send(trim).await.is_err() {
                    return;
                }
            }
            continue;
        }
        let records = f.records.slice(..whole);
        let batches = match chronik_wire::batch::split_stored(&records) {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(topic = %topic, partition, offset = pos.offset, error = %e, "home returned batches that do not check out; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
        };
        // Fetch returns the batch containing the offset; the mirror wants
        // whole batches from its end, which is always a batch boundary.
        let Some(start) = batches
            .iter()
            .position(|(h, _)| h.last_offset() >= pos.offset)
        else {
            continue;
        };
        let (first_h, first_r) = &batches[start];
        let (last_h, _) = batches.last().expect("non-empty");
        // A compacted home log has holes: the first batch after the mirror's
        // end may start later. The chunk still starts at the end, so the
        // mirror sees it connect.
        let base = first_h.base_offset.min(pos.offset);
        let next = last_h.last_offset() + 1;
        start_sent = (f.log_start_offset.max(0), Instant::now());
        let chunk = Chunk {
            topic: topic.clone(),
            partition,
            base_offset: base,
            next_offset: next,
            records: records.slice(first_r.start..),
            from_log_start: pos.from_log_start,
            home_log_start: f.log_start_offset.max(0),
            home_high_watermark: f.high_watermark.max(0),
        };
        let current = s
            .positions
            .lock()
            .unwrap()
            .get_mut(&key)
            .is_some_and(|c| c.advance(&pos, next));
        if !current {
            continue; // a resend was asked for, or the partition stopped, meanwhile
        }
        s.shared.shipped(
            &s.link,
            &topic,
            partition,
            base,
            next,
            first_h.base_timestamp,
            chunk.records.len() as u64,
        );
        if s.out.send(chunk).await.is_err() {
            return;
        }
    }
}

/// The receiver stopped a partition, or resumed it.
fn partition_status(s: &Session, st: proto::PartitionStatus) {
    let key = (st.topic.clone(), st.partition);
    let health = proto::Health::try_from(st.health).unwrap_or(proto::Health::Failed);
    let state = match health {
        proto::Health::Ok => PartitionState::Ok,
        proto::Health::Retrying => PartitionState::Retrying,
        proto::Health::Failed => PartitionState::Failed,
    };
    {
        let mut positions = s.positions.lock().unwrap();
        let Some(c) = positions.get_mut(&key) else {
            return;
        };
        match state {
            PartitionState::Ok => c.resume(st.offset),
            _ => c.pause(),
        }
    }
    if state == PartitionState::Ok {
        tracing::info!(link = %s.link, topic = %st.topic, partition = st.partition, from = st.offset, "mirror partition takes data again; resuming");
        s.shared
            .set_partition_state(&s.link, &st.topic, st.partition, state, None);
        return;
    }
    let held = s
        .failure_log
        .lock()
        .unwrap()
        .entry(key)
        .or_insert_with(|| LogEvery::new(Duration::from_secs(60)))
        .check(Instant::now());
    if let Some(held) = held {
        tracing::error!(link = %s.link, topic = %st.topic, partition = st.partition, state = state.as_str(), error = %st.error, similar_since_last = held, "mirror region cannot take this partition; not shipping it (the link's other partitions go on)");
    }
    s.shared
        .set_partition_state(&s.link, &st.topic, st.partition, state, Some(st.error));
}

/// For `global_quorum` topics: the mirrors' acks, pushed to the home
/// partition leaders so acks=all produce can complete.
pub async fn report_quorum_acks(shared: Arc<Shared>) {
    let mut last_sent: BTreeMap<(String, i32), BTreeMap<String, i64>> = BTreeMap::new();
    let mut refreshed = Instant::now();
    loop {
        tokio::select! {
            _ = shared.quorum_changed.notified() => {}
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        // A new home leader knows nothing: report everything again now and
        // then, not only changes.
        if refreshed.elapsed() > Duration::from_secs(1) {
            last_sent.clear();
            refreshed = Instant::now();
        }
        let wanted = shared.quorum_positions();
        for ((topic, p), (acks, required)) in wanted {
            if last_sent.get(&(topic.clone(), p)) == Some(&acks) {
                continue;
            }
            let Some(view) = shared.view() else { continue };
            match shared.leader_admin(&view, &topic, p).await {
                Ok(mut a) => match a.mirror_acks(&topic, p, &acks, required).await {
                    Ok(()) => {
                        last_sent.insert((topic, p), acks);
                    }
                    Err(e) => {
                        tracing::warn!(topic = %topic, partition = p, error = %e, "reporting mirror acks failed; retrying");
                        shared.refresh_soon();
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        shared.quorum_changed.notify_one();
                    }
                },
                Err(e) => {
                    tracing::debug!(topic = %topic, partition = p, error = %e, "no leader to report mirror acks to");
                    shared.refresh_soon();
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    shared.quorum_changed.notify_one();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_idle_partition_tells_a_new_home_log_start_and_repeats_it_rarely() {
        let now = Duration::ZERO;
        assert!(
            !log_start_news(0, 10, 0, LOG_START_AGAIN),
            "log start 0 is no news"
        );
        assert!(log_start_news(4, 10, 0, now));
        assert!(!log_start_news(4, 10, 4, now));
        assert!(log_start_news(4, 10, 4, LOG_START_AGAIN));
        assert!(log_start_news(6, 10, 4, now));
        assert!(log_start_news(10, 10, 4, now));
        // Past what was shipped: a gap, not a trim.
        assert!(!log_start_news(11, 10, 4, LOG_START_AGAIN));
    }
}

#[cfg(test)]
mod fork_tests {
    use super::fork_point;

    #[test]
    fn a_prefix_of_the_home_log_is_not_a_fork() {
        assert_eq!(fork_point(0, 0, -1, -1), None);
        // Epoch 3 goes on past the mirror's end at home, or ends exactly there.
        assert_eq!(fork_point(100, 3, 3, 150), None);
        assert_eq!(fork_point(100, 3, 3, 100), None);
    }

    #[test]
    fn records_the_home_never_had_are_a_fork() {
        // The old home wrote epoch 3 up to 100; the new home's epoch 3
        // ends at 80, where its own epoch 5 begins.
        assert_eq!(fork_point(100, 3, 3, 80), Some(80));
        // The mirror's last epoch is unknown at home: its epoch 2 ends at 60.
        assert_eq!(fork_point(100, 4, 2, 60), Some(60));
        // Nothing in common at all.
        assert_eq!(fork_point(100, 4, -1, -1), Some(0));
    }
}
