//! The TCP proxy.
//!
//! Each connection is terminated here and re-originated to the upstream, so what
//! crosses the simulated link is a byte stream read in chunks. A chunk gets a
//! departure time from the same serialization + propagation model as a datagram, but
//! departure times are forced to be non-decreasing: the bytes of a TCP stream never
//! overtake each other. That makes each direction a FIFO, so a queue and one timer
//! replace the UDP lanes' heap.

use crate::impairment::{Impairment, Shape};
use crate::stats::{add, DirCounters, ProxyCounters};
use rand::rngs::SmallRng;
use rand::SeedableRng;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::task::JoinSet;
use tokio::time::{sleep, sleep_until, Instant};
use tracing::{debug, warn};

/// Most bytes one connection may have in flight per direction. The proxy acknowledges
/// data on the loopback side at once, so the endpoints' own TCP windows no longer
/// throttle them; this stands in for the window instead. It is credited back one
/// `delay` after delivery (the ACK's trip home), so one connection peaks at about
/// window / RTT, as over a real long path. 4 MiB is in the range Linux autotunes to
/// with default sysctls.
pub(crate) const TCP_WINDOW: usize = 4 << 20;
const CHUNK: usize = 64 << 10;

/// One direction of one TCP proxy, shared by all its connections: they share the
/// simulated link, so they share its serialization clock.
struct Link {
    counters: Arc<DirCounters>,
    link_free: Mutex<Instant>,
}

impl Link {
    fn new(counters: Arc<DirCounters>) -> Arc<Link> {
        Arc::new(Link {
            counters,
            link_free: Mutex::new(Instant::now()),
        })
    }
}

pub(crate) async fn serve(
    listener: TcpListener,
    upstream: SocketAddr,
    imp: watch::Receiver<Impairment>,
    stats: Arc<ProxyCounters>,
) {
    let up = Link::new(stats.up.clone());
    let down = Link::new(stats.down.clone());
    // Owned here so that aborting this task closes every proxied connection.
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((client, peer)) => {
                    conns.spawn(connection(
                        client,
                        peer,
                        upstream,
                        imp.clone(),
                        up.clone(),
                        down.clone(),
                        stats.clone(),
                    ));
                }
                Err(e) => {
                    // Typically EMFILE; back off instead of spinning on it.
                    warn!(listen = %stats.listen, "tcp accept: {e}");
                    sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// Keeps the open-connections gauge right even when the task is aborted.
struct Session(Arc<ProxyCounters>);

impl Drop for Session {
    fn drop(&mut self) {
        self.0.session_closed();
    }
}

async fn connection(
    client: TcpStream,
    peer: SocketAddr,
    upstream: SocketAddr,
    mut imp: watch::Receiver<Impairment>,
    up: Arc<Link>,
    down: Arc<Link>,
    stats: Arc<ProxyCounters>,
) {
    stats.session_opened();
    let _session = Session(stats);
    // The proxy must not add Nagle/delayed-ACK stalls of its own on top of the model.
    let _ = client.set_nodelay(true);
    // A blackholed link would swallow the SYN too; the client, already connected to
    // us, just sees no progress until it heals.
    wait_open(&mut imp).await;
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(e) => {
            debug!(%peer, %upstream, "tcp connect upstream: {e}");
            return;
        }
    };
    let _ = server.set_nodelay(true);
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    // Either direction failing (a reset, typically) ends both, as it would end the
    // real connection.
    let r = tokio::try_join!(
        pump(client_rd, server_wr, &up, imp.clone()),
        pump(server_rd, client_wr, &down, imp.clone()),
    );
    if let Err(e) = r {
        debug!(%peer, %upstream, "tcp connection ended: {e}");
    }
}

async fn wait_open(imp: &mut watch::Receiver<Impairment>) {
    // An error means the simulator is shutting down and this task is about to be
    // aborted; either way there is nothing left to wait for.
    let _ = imp.wait_for(|i| !i.blackhole).await;
}

/// This connection's share of the direction's queued-bytes gauge, handed back when
/// the connection ends however it ends, so resets don't leave the gauge inflated.
struct QueuedGauge<'a> {
    gauge: &'a DirCounters,
    mine: AtomicU64,
}

impl QueuedGauge<'_> {
    fn add(&self, n: usize) {
        self.mine.fetch_add(n as u64, Relaxed);
        add(&self.gauge.queued_bytes, n as u64);
    }

    fn sub(&self, n: usize) {
        self.mine.fetch_sub(n as u64, Relaxed);
        self.gauge.queued_bytes.fetch_sub(n as u64, Relaxed);
    }
}

impl Drop for QueuedGauge<'_> {
    fn drop(&mut self) {
        let left = *self.mine.get_mut();
        self.gauge.queued_bytes.fetch_sub(left, Relaxed);
    }
}

enum Chunk {
    Data {
        at: Instant,
        release_at: Instant,
        data: Box<[u8]>,
    },
    /// The sender half-closed; forwarded as a shutdown once the data before it is out.
    Eof { at: Instant },
}

/// One direction of one connection: a reader that stamps chunks, a writer that
/// delivers them on time, and a releaser that returns window credit, all in one task
/// so they can share the window by reference.
async fn pump(
    mut src: OwnedReadHalf,
    mut dst: OwnedWriteHalf,
    link: &Link,
    mut imp: watch::Receiver<Impairment>,
) -> io::Result<()> {
    let window = Semaphore::new(TCP_WINDOW);
    // Unbounded is fine: the window bounds what can be in these queues.
    let (tx, mut rx) = mpsc::unbounded_channel::<Chunk>();
    let (release_tx, mut release_rx) = mpsc::unbounded_channel::<(Instant, usize)>();
    let c = &link.counters;
    let unsent = QueuedGauge {
        gauge: c,
        mine: AtomicU64::new(0),
    };

    let mut writer_imp = imp.clone();
    let reader = async {
        let mut rng = SmallRng::from_rng(&mut rand::rng());
        let mut buf = vec![0u8; CHUNK];
        let mut shape = Shape::new(&imp.borrow_and_update());
        let mut last = Instant::now();
        loop {
            window
                .acquire_many(CHUNK as u32)
                .await
                .expect("the window semaphore is never closed")
                .forget();
            let n = src.read(&mut buf).await?;
            window.add_permits(CHUNK - n);
            if imp.has_changed().unwrap_or(false) {
                shape = Shape::new(&imp.borrow_and_update());
            }
            let now = Instant::now();
            if n == 0 {
                let at = (now + shape.delay).max(last);
                let _ = tx.send(Chunk::Eof { at });
                return Ok::<(), io::Error>(());
            }
            let tx_end = if shape.unlimited() {
                now
            } else {
                let mut free = link.link_free.lock().unwrap_or_else(|p| p.into_inner());
                *free = (*free).max(now) + shape.serialization(n);
                *free
            };
            // Jitter may delay a chunk but never lets it overtake the one before.
            let at = (tx_end + shape.propagation(&mut rng)).max(last);
            last = at;
            unsent.add(n);
            let chunk = Chunk::Data {
                at,
                release_at: at + shape.delay,
                data: buf[..n].into(),
            };
            if tx.send(chunk).is_err() {
                // The writer failed; try_join! is already returning its error.
                return Ok(());
            }
        }
    };

    let writer = async {
        while let Some(chunk) = rx.recv().await {
            match chunk {
                Chunk::Data {
                    at,
                    release_at,
                    data,
                } => {
                    sleep_until(at).await;
                    wait_open(&mut writer_imp).await;
                    dst.write_all(&data).await?;
                    c.delivered(data.len());
                    unsent.sub(data.len());
                    let _ = release_tx.send((release_at, data.len()));
                }
                Chunk::Eof { at } => {
                    sleep_until(at).await;
                    wait_open(&mut writer_imp).await;
                    dst.shutdown().await?;
                    break;
                }
            }
        }
        // Dropping the sender lets the releaser finish.
        drop(release_tx);
        Ok::<(), io::Error>(())
    };

    let releaser = async {
        while let Some((at, n)) = release_rx.recv().await {
            if at > Instant::now() {
                sleep_until(at).await;
            }
            window.add_permits(n);
        }
        Ok::<(), io::Error>(())
    };

    tokio::try_join!(reader, writer, releaser)?;
    Ok(())
}
