//! Counters, shared between the forwarding tasks and whoever asks for a snapshot.

use serde::{Deserialize, Serialize};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

/// Counters for one direction of one proxy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct DirStats {
    /// Datagrams (UDP) or chunks (TCP) delivered.
    pub packets: u64,
    /// Bytes delivered.
    pub bytes: u64,
    /// UDP datagrams dropped by `loss`.
    pub dropped: u64,
    /// UDP datagrams dropped by `blackhole`, on arrival or while queued.
    pub blackholed: u64,
    /// UDP datagrams with a flipped bit.
    pub corrupted: u64,
    /// UDP datagrams held back by `reorder`.
    pub reordered: u64,
    /// UDP datagrams dropped because the direction already had 64 MiB queued.
    pub queue_drops: u64,
    /// Deliveries the OS refused (e.g. the upstream port is closed).
    pub send_errors: u64,
    /// Bytes accepted but not yet delivered, right now.
    pub queued_bytes: u64,
}

/// Counters for one proxy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProxyStats {
    /// Where the proxy listens (the bound address, so port 0 is resolved).
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    /// Listener side → upstream.
    pub up: DirStats,
    /// Upstream → listener side.
    pub down: DirStats,
    /// Live UDP client mappings or open TCP connections.
    pub sessions: u64,
    /// UDP client mappings or TCP connections ever created.
    pub sessions_total: u64,
}

/// Counters for every proxy, in the order they were given.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub udp: Vec<ProxyStats>,
    pub tcp: Vec<ProxyStats>,
}

#[derive(Debug, Default)]
pub(crate) struct DirCounters {
    pub packets: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
    pub blackholed: AtomicU64,
    pub corrupted: AtomicU64,
    pub reordered: AtomicU64,
    pub queue_drops: AtomicU64,
    pub send_errors: AtomicU64,
    pub queued_bytes: AtomicU64,
}

/// Counters are monotonic tallies read by humans and tests; nothing synchronises on
/// them, so relaxed ordering is enough.
pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Relaxed);
}

impl DirCounters {
    pub fn delivered(&self, bytes: usize) {
        add(&self.packets, 1);
        add(&self.bytes, bytes as u64);
    }

    fn snapshot(&self) -> DirStats {
        DirStats {
            packets: self.packets.load(Relaxed),
            bytes: self.bytes.load(Relaxed),
            dropped: self.dropped.load(Relaxed),
            blackholed: self.blackholed.load(Relaxed),
            corrupted: self.corrupted.load(Relaxed),
            reordered: self.reordered.load(Relaxed),
            queue_drops: self.queue_drops.load(Relaxed),
            send_errors: self.send_errors.load(Relaxed),
            queued_bytes: self.queued_bytes.load(Relaxed),
        }
    }
}

#[derive(Debug)]
pub(crate) struct ProxyCounters {
    pub listen: SocketAddr,
    pub upstream: SocketAddr,
    pub up: Arc<DirCounters>,
    pub down: Arc<DirCounters>,
    pub sessions: AtomicU64,
    pub sessions_total: AtomicU64,
}

impl ProxyCounters {
    pub fn new(listen: SocketAddr, upstream: SocketAddr) -> Arc<ProxyCounters> {
        Arc::new(ProxyCounters {
            listen,
            upstream,
            up: Arc::default(),
            down: Arc::default(),
            sessions: AtomicU64::new(0),
            sessions_total: AtomicU64::new(0),
        })
    }

    pub fn snapshot(&self) -> ProxyStats {
        ProxyStats {
            listen: self.listen,
            upstream: self.upstream,
            up: self.up.snapshot(),
            down: self.down.snapshot(),
            sessions: self.sessions.load(Relaxed),
            sessions_total: self.sessions_total.load(Relaxed),
        }
    }

    pub fn session_opened(&self) {
        add(&self.sessions, 1);
        add(&self.sessions_total, 1);
    }

    pub fn session_closed(&self) {
        self.sessions.fetch_sub(1, Relaxed);
    }
}
