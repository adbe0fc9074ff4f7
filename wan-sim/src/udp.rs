//! The UDP proxy.
//!
//! One task reads the listening socket and maps each client address to its own
//! upstream socket; one task per client reads that socket. Everything read goes,
//! stamped with its arrival time, into one of two "lanes" (up, down): a task that owns
//! the direction's impairment state, timer heap and serialization clock. Keeping all
//! per-direction state in a single task means no locks on the per-datagram path, and a
//! lane drains its channel in batches so a burst costs one wake-up, not one per datagram.

use crate::impairment::{chance, Impairment, Shape};
use crate::stats::{add, DirCounters, ProxyCounters};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use std::cmp::Ordering;
use std::collections::hash_map::Entry;
use std::collections::{BinaryHeap, HashMap};
use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::UdpSocket;
use tokio::sync::{mpsc, watch};
use tokio::task::{AbortHandle, JoinSet};
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, warn};

const MAX_DATAGRAM: usize = 65_536;
/// Per-direction cap on bytes waiting in the heap; beyond it datagrams are dropped
/// like a router with a full buffer would.
pub(crate) const QUEUE_LIMIT: usize = 64 << 20;
/// Datagrams in flight between a reader and its lane. When full the reader stops
/// reading and the kernel drops instead, which is what an overloaded router does too.
const LANE_CAPACITY: usize = 8192;
const BATCH: usize = 512;
/// How long a client mapping survives without traffic either way, like a NAT binding.
const IDLE: Duration = Duration::from_secs(60);
const SWEEP_EVERY: Duration = Duration::from_secs(5);

enum Dest {
    /// Up: the client's dedicated socket, connected to the upstream.
    Upstream(Arc<UdpSocket>),
    /// Down: the client, reached through the listening socket.
    Client(SocketAddr),
}

struct Arrival {
    at: Instant,
    data: Box<[u8]>,
    dest: Dest,
}

struct Queued {
    at: Instant,
    /// Tie-breaker so that datagrams due in the same instant leave in arrival order.
    seq: u64,
    data: Box<[u8]>,
    dest: Dest,
}

impl PartialEq for Queued {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Queued {}
impl PartialOrd for Queued {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Queued {
    /// Reversed: `BinaryHeap` is a max-heap and the earliest departure must come out first.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

struct Client {
    sock: Arc<UdpSocket>,
    /// Milliseconds since the proxy started, updated by traffic in either direction.
    last_active: Arc<AtomicU64>,
    reader: AbortHandle,
}

pub(crate) async fn serve(
    listener: UdpSocket,
    upstream: SocketAddr,
    imp: watch::Receiver<Impairment>,
    stats: Arc<ProxyCounters>,
) {
    let listener = Arc::new(listener);
    // Owning every child task here means aborting this task tears the whole proxy down.
    let mut tasks = JoinSet::new();
    let (up_tx, up_rx) = mpsc::channel(LANE_CAPACITY);
    let (down_tx, down_rx) = mpsc::channel(LANE_CAPACITY);
    tasks.spawn(lane(up_rx, listener.clone(), imp.clone(), stats.up.clone()));
    tasks.spawn(lane(
        down_rx,
        listener.clone(),
        imp.clone(),
        stats.down.clone(),
    ));

    let epoch = Instant::now();
    let mut clients: HashMap<SocketAddr, Client> = HashMap::new();
    let mut sweep = tokio::time::interval(SWEEP_EVERY);
    sweep.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        tokio::select! {
            r = listener.recv_from(&mut buf) => {
                let (n, from) = match r {
                    Ok(r) => r,
                    Err(e) => {
                        debug!(listen = %stats.listen, "udp recv: {e}");
                        // Don't spin if the error is persistent.
                        sleep(Duration::from_millis(10)).await;
                        continue;
                    }
                };
                let at = Instant::now();
                let client = match clients.entry(from) {
                    Entry::Occupied(e) => e.into_mut(),
                    Entry::Vacant(e) => match open_client(upstream).await {
                        Ok(sock) => {
                            let last_active = Arc::new(AtomicU64::new(0));
                            let reader = tasks.spawn(client_reader(
                                sock.clone(),
                                from,
                                down_tx.clone(),
                                last_active.clone(),
                                epoch,
                            ));
                            stats.session_opened();
                            e.insert(Client { sock, last_active, reader })
                        }
                        Err(err) => {
                            warn!(%from, %upstream, "cannot open upstream socket, dropping datagram: {err}");
                            continue;
                        }
                    },
                };
                client.last_active.store(since(epoch, at), Relaxed);
                let arrival = Arrival {
                    at,
                    data: buf[..n].into(),
                    dest: Dest::Upstream(client.sock.clone()),
                };
                if up_tx.send(arrival).await.is_err() {
                    return;
                }
            }
            _ = sweep.tick() => {
                let now = since(epoch, Instant::now());
                let idle = IDLE.as_millis() as u64;
                clients.retain(|_, c| {
                    let keep = now.saturating_sub(c.last_active.load(Relaxed)) < idle;
                    if !keep {
                        c.reader.abort();
                        stats.session_closed();
                    }
                    keep
                });
                while tasks.try_join_next().is_some() {}
            }
        }
    }
}

async fn open_client(upstream: SocketAddr) -> io::Result<Arc<UdpSocket>> {
    let local: SocketAddr = if upstream.is_ipv4() {
        (Ipv4Addr::UNSPECIFIED, 0).into()
    } else {
        (Ipv6Addr::UNSPECIFIED, 0).into()
    };
    let sock = UdpSocket::bind(local).await?;
    // Connected, so the kernel filters out strangers and replies need no lookup.
    sock.connect(upstream).await?;
    Ok(Arc::new(sock))
}

async fn client_reader(
    sock: Arc<UdpSocket>,
    client: SocketAddr,
    down: mpsc::Sender<Arrival>,
    last_active: Arc<AtomicU64>,
    epoch: Instant,
) {
    let mut buf = vec![0u8; MAX_DATAGRAM];
    loop {
        match sock.recv(&mut buf).await {
            Ok(n) => {
                let at = Instant::now();
                last_active.store(since(epoch, at), Relaxed);
                let arrival = Arrival {
                    at,
                    data: buf[..n].into(),
                    dest: Dest::Client(client),
                };
                if down.send(arrival).await.is_err() {
                    return;
                }
            }
            // ICMP port-unreachable from an upstream that isn't listening (yet). Over a
            // real WAN the client would just see silence, so carry on.
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {}
            Err(e) => {
                debug!(%client, "udp upstream recv: {e}");
                sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

fn since(epoch: Instant, t: Instant) -> u64 {
    t.saturating_duration_since(epoch).as_millis() as u64
}

/// One direction of the simulated link: admits arrivals (loss, corruption, schedule)
/// and delivers them when due.
async fn lane(
    mut rx: mpsc::Receiver<Arrival>,
    listener: Arc<UdpSocket>,
    mut imp: watch::Receiver<Impairment>,
    c: Arc<DirCounters>,
) {
    let mut rng = SmallRng::from_rng(&mut rand::rng());
    let mut shape = Shape::new(&imp.borrow_and_update());
    let mut heap: BinaryHeap<Queued> = BinaryHeap::new();
    let mut queued = 0usize;
    // When the simulated wire finishes sending what it has already accepted.
    let mut link_free = Instant::now();
    let mut seq = 0u64;
    let mut batch = Vec::with_capacity(BATCH);
    // One timer, re-armed, rather than a new one per wait: re-arming to the same
    // deadline (the common case under load) is free.
    let timer = sleep_until(Instant::now());
    tokio::pin!(timer);
    loop {
        // Checked before delivering so that a blackhole also catches queued datagrams.
        if imp.has_changed().unwrap_or(false) {
            shape = Shape::new(&imp.borrow_and_update());
        }
        let now = Instant::now();
        while heap.peek().is_some_and(|q| q.at <= now) {
            let q = heap.pop().expect("peeked");
            queued -= q.data.len();
            if shape.blackhole {
                add(&c.blackholed, 1);
                continue;
            }
            let sent = match &q.dest {
                Dest::Upstream(sock) => sock.send(&q.data).await,
                Dest::Client(addr) => listener.send_to(&q.data, *addr).await,
            };
            match sent {
                Ok(_) => c.delivered(q.data.len()),
                Err(e) => {
                    add(&c.send_errors, 1);
                    debug!("udp send: {e}");
                }
            }
        }
        c.queued_bytes.store(queued as u64, Relaxed);
        if let Some(q) = heap.peek() {
            if timer.deadline() != q.at {
                timer.as_mut().reset(q.at);
            }
        }
        tokio::select! {
            biased;
            () = &mut timer, if !heap.is_empty() => {}
            n = rx.recv_many(&mut batch, BATCH) => {
                if n == 0 {
                    return;
                }
                // Settings changed while these were waiting in the channel apply to them:
                // they count as arriving after the change only microseconds early.
                if imp.has_changed().unwrap_or(false) {
                    shape = Shape::new(&imp.borrow_and_update());
                }
                for a in batch.drain(..) {
                    let len = a.data.len();
                    if shape.blackhole {
                        add(&c.blackholed, 1);
                        continue;
                    }
                    if chance(shape.loss, &mut rng) {
                        add(&c.dropped, 1);
                        continue;
                    }
                    if queued + len > QUEUE_LIMIT {
                        add(&c.queue_drops, 1);
                        continue;
                    }
                    let mut data = a.data;
                    if len > 0 && chance(shape.corrupt, &mut rng) {
                        let i = rng.random_range(0..len);
                        data[i] ^= 1u8 << rng.random_range(0..8u32);
                        add(&c.corrupted, 1);
                    }
                    // Serialization then propagation: a datagram is fully received one
                    // delay after its last bit was put on the wire.
                    let tx_end = if shape.unlimited() {
                        a.at
                    } else {
                        link_free.max(a.at) + shape.serialization(len)
                    };
                    link_free = tx_end;
                    let mut at = tx_end + shape.propagation(&mut rng);
                    if chance(shape.reorder, &mut rng) {
                        at += shape.reorder_extra;
                        add(&c.reordered, 1);
                    }
                    queued += len;
                    heap.push(Queued { at, seq, data, dest: a.dest });
                    seq += 1;
                }
            }
        }
    }
}
