//! Broker-to-broker transport: one TCP connection per pair of brokers
//! carries every group's Raft traffic, multiplexed by group id.
//!
//! The broker with the lower node id dials; both sides then send requests
//! and responses over that one connection. Each connection has one writer
//! task that drains everything queued and writes it with a single syscall,
//! so the heartbeats of many groups to the same peer share packets.
//!
//! Frames are a 4-byte big-endian length followed by a prost [`Frame`].
//!
//! Sockets come from a [`PeerIo`]: TCP in production, simulated sockets in
//! the deterministic simulation (`broker/tests/sim`), so the simulation
//! runs this very code, connection handling included.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::future::BoxFuture;
use prost::Message;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};

use super::codec::{kind, Frame};

const MAX_FRAME: usize = 512 << 20;

#[derive(Debug, Clone, thiserror::Error)]
pub enum TransportError {
    #[error("no connection to broker {0}")]
    NotConnected(u64),
    #[error("connection to broker {0} closed")]
    Closed(u64),
    #[error("broker {0} did not answer within {1:?}")]
    Timeout(u64, Duration),
    #[error("broker {peer} refused: {message}")]
    Remote { peer: u64, message: String },
}

/// Serves requests arriving from peers.
pub trait Inbound: Send + Sync + 'static {
    /// Returns the response body, or an error string sent back to the peer.
    fn request(&self, from: u64, frame: Frame) -> BoxFuture<'static, Result<Bytes, String>>;
    /// A one-way message.
    fn notify(&self, from: u64, frame: Frame);
    /// What this broker knows of broker `id`: asked by a broker starting
    /// on an empty data dir, or one that may have been removed.
    fn probe(&self, _id: u64) -> Probed {
        Probed::default()
    }
}

/// A peer's answer to a broker asking about itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Probed {
    /// The asker has been a member of the region (registered with its
    /// controller): its disk was wiped.
    pub known: bool,
    /// The region's controller has formed: the asker must not form one of
    /// its own, it joins (or, if it is one of the controller's voters that
    /// never started before, catches up with) the one that exists.
    pub running: bool,
    /// The asker is a voter or learner of that controller.
    pub member: bool,
    /// The region removed the asker (`chronik ctl broker remove`): whatever
    /// data it holds is from before, and it must not rejoin.
    pub removed: bool,
}

/// [`probe`] to every one of `peers` (id, address) at once.
pub async fn probe_all(
    io: &dyn PeerIo,
    me: u64,
    peers: Vec<(u64, String)>,
    wait: Duration,
) -> Vec<(u64, Result<Probed, String>)> {
    let asks = peers
        .into_iter()
        .map(|(peer, addr)| async move { (peer, probe(io, me, peer, addr, wait).await) });
    futures_util::future::join_all(asks).await
}

/// Asks broker `peer` at `addr`, over `io`, what it knows of broker `me`.
/// `Err` when it cannot be asked within `wait`.
pub async fn probe(
    io: &dyn PeerIo,
    me: u64,
    peer: u64,
    addr: String,
    wait: Duration,
) -> Result<Probed, String> {
    let exchange = async {
        let mut sock = io.connect(peer, addr).await.map_err(|e| e.to_string())?;
        let ask = Frame {
            kind: kind::PROBE,
            group: me,
            ..Default::default()
        };
        write_frame(&mut sock, &ask)
            .await
            .map_err(|e| e.to_string())?;
        let answer = read_frame(&mut sock).await.map_err(|e| e.to_string())?;
        if answer.kind != kind::PROBE || !answer.response {
            return Err(format!("unexpected answer kind {}", answer.kind));
        }
        // A broker that predates `running` answers one byte.
        Ok(Probed {
            known: answer.body.first() == Some(&1),
            running: answer.body.get(1) == Some(&1),
            member: answer.body.get(2) == Some(&1),
            removed: answer.body.get(3) == Some(&1),
        })
    };
    tokio::time::timeout(wait, exchange)
        .await
        .map_err(|_| format!("no answer within {wait:?}"))?
}

/// A connection's byte stream.
pub trait PeerStream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> PeerStream for T {}

/// Where the transport's sockets come from.
pub trait PeerIo: Send + Sync + 'static {
    /// Dials broker `peer` at `addr` (the id lets a secure transport check
    /// that the broker answering is that one).
    fn connect(
        &self,
        peer: u64,
        addr: String,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn PeerStream>>>;
    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn PeerListener>>>;
}

/// An accepted connection still to be set up (a TLS handshake, run in the
/// connection's own task), and the broker id its certificate proves, if the
/// transport has certificates.
pub type Handshake = BoxFuture<'static, std::io::Result<(Box<dyn PeerStream>, Option<u64>)>>;

pub trait PeerListener: Send + 'static {
    fn accept(&mut self) -> BoxFuture<'_, std::io::Result<Handshake>>;
}

/// A connection that needs no setup and proves no identity.
pub fn ready(stream: Box<dyn PeerStream>) -> Handshake {
    Box::pin(std::future::ready(Ok((stream, None))))
}

/// Production sockets: TCP without Nagle (Raft RPCs are small and latency
/// bound; the writer already coalesces).
pub struct TcpIo;

impl PeerIo for TcpIo {
    fn connect(
        &self,
        _peer: u64,
        addr: String,
    ) -> BoxFuture<'static, std::io::Result<Box<dyn PeerStream>>> {
        Box::pin(async move {
            let sock = TcpStream::connect(&addr).await?;
            let _ = sock.set_nodelay(true);
            Ok(Box::new(sock) as Box<dyn PeerStream>)
        })
    }

    fn bind(&self, addr: SocketAddr) -> BoxFuture<'static, std::io::Result<Box<dyn PeerListener>>> {
        Box::pin(
            async move { Ok(Box::new(TcpListener::bind(addr).await?) as Box<dyn PeerListener>) },
        )
    }
}

impl PeerListener for TcpListener {
    fn accept(&mut self) -> BoxFuture<'_, std::io::Result<Handshake>> {
        Box::pin(async move {
            let (sock, _) = TcpListener::accept(self).await?;
            let _ = sock.set_nodelay(true);
            Ok(ready(Box::new(sock)))
        })
    }
}

struct Conn {
    peer: u64,
    tx: mpsc::UnboundedSender<Frame>,
    pending: Mutex<HashMap<u64, oneshot::Sender<Frame>>>,
    closed: AtomicBool,
}

/// Between dials of a peer; up to the longer pause while every connection
/// to it closes at once.
const DIAL_PAUSE: Duration = Duration::from_millis(200);
const DIAL_PAUSE_MAX: Duration = Duration::from_secs(5);

pub struct Transport {
    node_id: u64,
    /// Peer id -> the address dialled; addresses change when DNS discovery
    /// finds a peer elsewhere, the set of peers does not.
    peers: Mutex<HashMap<u64, String>>,
    io: Arc<dyn PeerIo>,
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    inbound: std::sync::OnceLock<Arc<dyn Inbound>>,
    next_id: AtomicU64,
    /// When each peer last sent us anything: the node-level failure
    /// detector behind quiescent groups.
    last_seen: Mutex<HashMap<u64, tokio::time::Instant>>,
}

impl Transport {
    pub fn new(node_id: u64, peers: HashMap<u64, String>) -> Arc<Transport> {
        Self::with_io(node_id, peers, Arc::new(TcpIo))
    }

    pub fn with_io(
        node_id: u64,
        peers: HashMap<u64, String>,
        io: Arc<dyn PeerIo>,
    ) -> Arc<Transport> {
        Arc::new(Transport {
            node_id,
            peers: Mutex::new(peers),
            io,
            conns: Mutex::new(HashMap::new()),
            inbound: std::sync::OnceLock::new(),
            next_id: AtomicU64::new(1),
            last_seen: Mutex::new(HashMap::new()),
        })
    }

    pub fn node_id(&self) -> u64 {
        self.node_id
    }

    /// Opens the peer listener through this transport's [`PeerIo`].
    pub async fn bind(&self, addr: SocketAddr) -> std::io::Result<Box<dyn PeerListener>> {
        self.io.bind(addr).await
    }

    pub fn peer_ids(&self) -> Vec<u64> {
        let mut v: Vec<u64> = self.peers.lock().unwrap().keys().copied().collect();
        v.sort_unstable();
        v
    }

    /// Whether `peer` sent anything within `within` (this broker is alive).
    pub fn heard_from(&self, peer: u64, within: Duration) -> bool {
        peer == self.node_id
            || self
                .last_seen
                .lock()
                .unwrap()
                .get(&peer)
                .is_some_and(|t| t.elapsed() <= within)
    }

    pub fn is_connected(&self, peer: u64) -> bool {
        self.conns
            .lock()
            .unwrap()
            .get(&peer)
            .is_some_and(|c| !c.closed.load(Ordering::Acquire))
    }

    /// Starts accepting peers on `listener` and dialing every peer with a
    /// higher id than ours.
    pub fn start(
        self: &Arc<Self>,
        listener: Option<Box<dyn PeerListener>>,
        inbound: Arc<dyn Inbound>,
    ) {
        let _ = self.inbound.set(inbound);
        if let Some(mut listener) = listener {
            let me = self.clone();
            tokio::spawn(async move {
                loop {
                    match listener.accept().await {
                        Ok(handshake) => {
                            let me = me.clone();
                            tokio::spawn(async move {
                                match tokio::time::timeout(Duration::from_secs(10), handshake).await
                                {
                                    Ok(Ok((sock, proven))) => me.accepted(sock, proven).await,
                                    Ok(Err(e)) => {
                                        tracing::warn!(error = %e, "peer connection refused")
                                    }
                                    Err(_) => tracing::warn!("peer handshake timed out"),
                                }
                            });
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "peer accept failed");
                            tokio::time::sleep(Duration::from_millis(100)).await;
                        }
                    }
                }
            });
        }
        // In id order, so that a simulation run replays exactly.
        for peer in self.peer_ids() {
            if peer > self.node_id {
                let me = self.clone();
                tokio::spawn(async move { me.dial_loop(peer).await });
            }
        }
    }

    /// Points `peer` at a new address (DNS discovery found it there); the
    /// next dial uses it. False for an id that is not a peer.
    pub fn set_peer_addr(&self, peer: u64, addr: String) -> bool {
        match self.peers.lock().unwrap().get_mut(&peer) {
            Some(a) => {
                if *a != addr {
                    tracing::info!(peer, from = %a, to = %addr, "peer address changed");
                    *a = addr;
                }
                true
            }
            None => false,
        }
    }

    /// A broker added to the region (`chronik ctl broker add`): dialled
    /// from here if its id is higher, as configured peers are.
    pub fn add_peer(self: &Arc<Self>, peer: u64, addr: String) {
        if peer == self.node_id {
            return;
        }
        // A configured (or DNS-found) address stays: it is this broker's
        // own view of where the peer is.
        match self.peers.lock().unwrap().entry(peer) {
            std::collections::hash_map::Entry::Occupied(_) => return,
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(addr.clone());
            }
        }
        tracing::info!(peer, %addr, "peer added to the region");
        if peer > self.node_id && self.inbound.get().is_some() {
            let me = self.clone();
            tokio::spawn(async move { me.dial_loop(peer).await });
        }
    }

    /// A broker removed from the region: no longer dialled, accepted or
    /// counted among the peers whose silence cuts this broker off.
    pub fn remove_peer(&self, peer: u64) {
        if self.peers.lock().unwrap().remove(&peer).is_none() {
            return;
        }
        tracing::info!(peer, "peer removed from the region");
        if let Some(c) = self.conns.lock().unwrap().remove(&peer) {
            c.close();
        }
        self.last_seen.lock().unwrap().remove(&peer);
    }

    pub fn peer_addr(&self, peer: u64) -> Option<String> {
        self.peers.lock().unwrap().get(&peer).cloned()
    }

    /// Asks every peer, at once, what it knows of this broker; the peers
    /// that answer within `wait`, with their answers.
    pub async fn probe_peers(&self, wait: Duration) -> Vec<(u64, Probed)> {
        let peers: Vec<(u64, String)> = self
            .peers
            .lock()
            .unwrap()
            .iter()
            .map(|(id, addr)| (*id, addr.clone()))
            .collect();
        probe_all(self.io.as_ref(), self.node_id, peers, wait)
            .await
            .into_iter()
            .filter_map(|(peer, answer)| Some((peer, answer.ok()?)))
            .collect()
    }

    async fn dial_loop(self: Arc<Self>, peer: u64) {
        let mut logged = false;
        // A peer that closes every connection at once (it no longer counts
        // this broker as a member) is redialled ever more slowly.
        let mut pause = DIAL_PAUSE;
        loop {
            let Some(addr) = self.peer_addr(peer) else {
                return;
            };
            match tokio::time::timeout(Duration::from_secs(2), self.io.connect(peer, addr.clone()))
                .await
            {
                Ok(Ok(mut sock)) => {
                    let hello = Frame {
                        kind: kind::HELLO,
                        group: self.node_id,
                        ..Default::default()
                    };
                    if write_frame(&mut sock, &hello).await.is_ok() {
                        let refusing = pause > DIAL_PAUSE;
                        if !refusing {
                            tracing::info!(peer, %addr, "connected to peer");
                        }
                        logged = false;
                        match self.run(peer, sock).await {
                            Some(why) => {
                                if !refusing {
                                    tracing::warn!(peer, reason = %why, "the peer refuses this broker's connections; dialling it again ever more slowly");
                                }
                                pause = (pause * 2).min(DIAL_PAUSE_MAX);
                            }
                            None => {
                                pause = DIAL_PAUSE;
                                tracing::info!(peer, "peer connection closed");
                            }
                        }
                    }
                }
                Ok(Err(e)) if !logged => {
                    tracing::info!(peer, %addr, error = %e, "cannot reach peer yet");
                    logged = true;
                }
                _ => {}
            }
            tokio::time::sleep(pause).await;
        }
    }

    /// `proven`: the broker id the connection's certificate proves, when
    /// the transport has certificates; the Hello must claim that id.
    async fn accepted(self: Arc<Self>, mut sock: Box<dyn PeerStream>, proven: Option<u64>) {
        let hello = match tokio::time::timeout(Duration::from_secs(5), read_frame(&mut sock)).await
        {
            Ok(Ok(f)) if f.kind == kind::HELLO => f,
            Ok(Ok(f)) if f.kind == kind::PROBE => {
                // Only the broker itself may ask about itself.
                if proven.is_none_or(|id| id == f.group) {
                    let p = self
                        .inbound
                        .get()
                        .map(|i| i.probe(f.group))
                        .unwrap_or_default();
                    let answer = Frame {
                        kind: kind::PROBE,
                        response: true,
                        body: Bytes::from(vec![
                            u8::from(p.known),
                            u8::from(p.running),
                            u8::from(p.member),
                            u8::from(p.removed),
                        ]),
                        ..Default::default()
                    };
                    let _ = write_frame(&mut sock, &answer).await;
                    let _ = sock.flush().await;
                }
                return;
            }
            _ => return,
        };
        let peer = hello.group;
        if proven.is_some_and(|id| id != peer) {
            metrics::counter!("chronik_raft_peer_refused_total", "reason" => "identity")
                .increment(1);
            tracing::warn!(
                claimed = peer,
                certificate = proven,
                "peer claims another broker's id than its certificate names; closing"
            );
            return;
        }
        if !self.peers.lock().unwrap().contains_key(&peer) {
            tracing::warn!(
                peer,
                "connection from a broker that is not a configured peer; closing"
            );
            // Said, so that the broker dials less often (a removed one).
            let refusal = Frame {
                kind: kind::HELLO,
                response: true,
                error: format!(
                    "broker {} does not count broker {peer} as a member of its region",
                    self.node_id
                ),
                ..Default::default()
            };
            let _ = write_frame(&mut sock, &refusal).await;
            let _ = sock.flush().await;
            return;
        }
        tracing::info!(peer, "peer connected");
        let _ = self.run(peer, sock).await;
        tracing::info!(peer, "peer connection closed");
    }

    /// Serves one connection until it fails; returns the peer's refusal,
    /// if that is why.
    async fn run(self: &Arc<Self>, peer: u64, sock: Box<dyn PeerStream>) -> Option<String> {
        let (mut rd, mut wr) = tokio::io::split(sock);
        let (tx, mut rx) = mpsc::unbounded_channel::<Frame>();
        let conn = Arc::new(Conn {
            peer,
            tx,
            pending: Mutex::new(HashMap::new()),
            closed: AtomicBool::new(false),
        });
        if let Some(old) = self.conns.lock().unwrap().insert(peer, conn.clone()) {
            old.close();
        }
        let writer = tokio::spawn(async move {
            let mut buf = BytesMut::with_capacity(64 << 10);
            while let Some(f) = rx.recv().await {
                put_frame(&mut buf, &f);
                // Coalesce: everything already queued goes out in one write.
                while buf.len() < (1 << 20) {
                    match rx.try_recv() {
                        Ok(f) => put_frame(&mut buf, &f),
                        Err(_) => break,
                    }
                }
                if wr.write_all(&buf).await.is_err() {
                    break;
                }
                buf.clear();
            }
            // Tell the peer we stopped writing, as dropping a TCP write
            // half would.
            let _ = wr.shutdown().await;
        });
        let inbound = self.inbound.get().cloned();
        let mut refused = None;
        loop {
            let frame = match read_frame(&mut rd).await {
                Ok(f) => f,
                Err(_) => break,
            };
            // A connection closed here (replaced, or its peer removed from
            // the region) still reads; a removed peer's stops being served,
            // or that broker would go on talking to the region.
            if conn.closed.load(Ordering::Acquire)
                && !self.peers.lock().unwrap().contains_key(&peer)
            {
                break;
            }
            if frame.kind == kind::HELLO && frame.response {
                refused = Some(frame.error);
                break;
            }
            self.last_seen
                .lock()
                .unwrap()
                .insert(peer, tokio::time::Instant::now());
            if frame.response {
                let waiter = conn.pending.lock().unwrap().remove(&frame.id);
                if let Some(w) = waiter {
                    let _ = w.send(frame);
                }
                continue;
            }
            let Some(inbound) = inbound.clone() else {
                continue;
            };
            if frame.id == 0 {
                inbound.notify(peer, frame);
                continue;
            }
            let conn = conn.clone();
            tokio::spawn(async move {
                let (id, k, group) = (frame.id, frame.kind, frame.group);
                let reply = match inbound.request(peer, frame).await {
                    Ok(body) => Frame {
                        id,
                        response: true,
                        kind: k,
                        group,
                        body,
                        error: String::new(),
                    },
                    Err(error) => Frame {
                        id,
                        response: true,
                        kind: k,
                        group,
                        body: Bytes::new(),
                        error,
                    },
                };
                let _ = conn.tx.send(reply);
            });
        }
        conn.close();
        writer.abort();
        let mut conns = self.conns.lock().unwrap();
        if conns.get(&peer).is_some_and(|c| Arc::ptr_eq(c, &conn)) {
            conns.remove(&peer);
        }
        refused
    }

    fn conn(&self, peer: u64) -> Result<Arc<Conn>, TransportError> {
        self.conns
            .lock()
            .unwrap()
            .get(&peer)
            .filter(|c| !c.closed.load(Ordering::Acquire))
            .cloned()
            .ok_or(TransportError::NotConnected(peer))
    }

    /// Sends a request and waits for its response body.
    pub async fn request(
        &self,
        peer: u64,
        kind: i32,
        group: u64,
        body: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, TransportError> {
        let conn = self.conn(peer)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        conn.pending.lock().unwrap().insert(id, tx);
        if conn.closed.load(Ordering::Acquire) {
            conn.pending.lock().unwrap().remove(&id);
            return Err(TransportError::Closed(peer));
        }
        let frame = Frame {
            id,
            response: false,
            kind,
            group,
            body,
            error: String::new(),
        };
        if conn.tx.send(frame).is_err() {
            conn.pending.lock().unwrap().remove(&id);
            return Err(TransportError::Closed(peer));
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(f)) if f.error.is_empty() => Ok(f.body),
            Ok(Ok(f)) => Err(TransportError::Remote {
                peer,
                message: f.error,
            }),
            Ok(Err(_)) => Err(TransportError::Closed(peer)),
            Err(_) => {
                conn.pending.lock().unwrap().remove(&id);
                Err(TransportError::Timeout(peer, timeout))
            }
        }
    }

    /// Sends a one-way message; dropped if the peer is not connected.
    pub fn notify(&self, peer: u64, kind: i32, body: Bytes) {
        if let Ok(conn) = self.conn(peer) {
            let _ = conn.tx.send(Frame {
                id: 0,
                response: false,
                kind,
                group: 0,
                body,
                error: String::new(),
            });
        }
    }

    /// Drops every connection (the harness's "network partition" is a
    /// proxy; this is for shutdown).
    pub fn close_all(&self) {
        for (_, c) in self.conns.lock().unwrap().drain() {
            c.close();
        }
    }
}

impl Conn {
    fn close(&self) {
        self.closed.store(true, Ordering::Release);
        // Dropping the senders fails every waiter at once.
        self.pending.lock().unwrap().clear();
        let _ = self.peer;
    }
}

fn put_frame(buf: &mut BytesMut, f: &Frame) {
    let len = f.encoded_len();
    buf.reserve(4 + len);
    buf.put_u32(len as u32);
    f.encode(buf).expect("reserved");
}

async fn write_frame<W: AsyncWrite + Unpin + ?Sized>(
    sock: &mut W,
    f: &Frame,
) -> std::io::Result<()> {
    let mut buf = BytesMut::new();
    put_frame(&mut buf, f);
    sock.write_all(&buf).await
}

async fn read_frame<R: AsyncRead + Unpin + ?Sized>(rd: &mut R) -> std::io::Result<Frame> {
    let len = rd.read_u32().await? as usize;
    if len > MAX_FRAME {
        return Err(std::io::Error::other(format!("peer frame of {len} bytes")));
    }
    let mut buf = vec![0u8; len];
    rd.read_exact(&mut buf).await?;
    let mut b = Bytes::from(buf);
    let f = Frame::decode(&mut b).map_err(std::io::Error::other)?;
    let _ = b.remaining();
    Ok(f)
}
