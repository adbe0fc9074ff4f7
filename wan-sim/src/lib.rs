//! WAN simulator: UDP and TCP proxies that make a loopback hop behave like a long-haul
//! link.
//!
//! # Why
//!
//! The kernels the tests run on have no `sch_netem` (and the tests could not configure
//! it without privileges anyway), yet cross-region behaviour has to be exercised:
//! dc-link's QUIC transport (UDP) and MirrorMaker 2 between Kafka clusters (TCP). So the
//! impairment is done in user space, by a proxy placed between the two sides. It runs
//! in-process for Rust tests ([`WanSim`]) or as a process (`chronik wan-sim`, see
//! [`run`]) for the Python harness and by hand; either way the impairment can be changed
//! while traffic flows, from Rust ([`WanSim::set`]) or over HTTP
//! (`PUT /v1/impairment`).
//!
//! # Model
//!
//! Each proxy has two directions, *up* (listener side → upstream) and *down* (upstream →
//! listener side). Each is an independent one-way link with the same [`Impairment`]
//! settings and its own counters and serialization clock, shared by all clients or
//! connections of that proxy (separate proxies don't share bandwidth). A UDP datagram
//! arriving at time `t` is:
//!
//! 1. dropped if `blackhole`, else dropped with probability `loss`;
//! 2. dropped as a *queue drop* if its direction already holds 64 MiB;
//! 3. with probability `corrupt`, altered by flipping one bit of one random byte;
//! 4. serialized: the link sends one datagram at a time at `bandwidth_mbit` (payload bytes
//!    only), so its last bit leaves at `tx_end = max(t, link free) + len·8 / bandwidth`;
//! 5. propagated: delivered at `tx_end + delay ± jitter` (uniform, never before `tx_end`).
//!    Jitter is sampled per datagram and so can reorder datagrams, as on real paths;
//! 6. with probability `reorder`, held back a further `delay/2 + 1 ms` so that the
//!    datagrams right behind it overtake it.
//!
//! Datagrams wait in a per-direction timer heap and are sent when due; `blackhole` is
//! checked again at that moment, so once it is set nothing crosses, queued or not.
//! Other changes apply to datagrams arriving afterwards; queued ones keep their schedule.
//! Delays have the tokio timer's 1 ms granularity and round up.
//!
//! TCP is terminated by the proxy, which therefore forwards a byte stream, not
//! segments. Loss, corruption and reordering are what TCP hides from applications (they
//! show up as retransmission delay), so they are not applied; chunks get delay, jitter
//! and bandwidth as above but never overtake each other, and `blackhole` stalls them
//! (connections stay open, like a partition until the endpoints' timeouts fire). Because
//! the proxy acknowledges data locally, in-flight data per connection and direction is
//! capped at a 4 MiB window credited back one delay after delivery, so a single
//! connection tops out near window / RTT like real TCP over the same path.

mod cli;
mod control;
mod impairment;
mod stats;
mod tcp;
mod udp;

pub use cli::{run, ArgError, WanSimArgs};
pub use impairment::{Impairment, InvalidImpairment, MAX_DELAY_MS};
pub use stats::{DirStats, ProxyStats, Stats};

use stats::ProxyCounters;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// Bytes that may wait in one direction of a UDP proxy before datagrams are dropped.
pub const UDP_QUEUE_LIMIT: usize = udp::QUEUE_LIMIT;
/// In-flight bytes per TCP connection and direction (see the module docs).
pub const TCP_WINDOW: usize = tcp::TCP_WINDOW;

/// State shared by the handle, the forwarding tasks and the control API.
pub(crate) struct Shared {
    imp: watch::Sender<Impairment>,
    udp: Vec<Arc<ProxyCounters>>,
    tcp: Vec<Arc<ProxyCounters>>,
}

impl Shared {
    fn impairment(&self) -> Impairment {
        *self.imp.borrow()
    }

    fn try_set(&self, imp: Impairment) -> Result<(), InvalidImpairment> {
        imp.validate()?;
        self.imp.send_replace(imp);
        Ok(())
    }

    fn stats(&self) -> Stats {
        Stats {
            udp: self.udp.iter().map(|p| p.snapshot()).collect(),
            tcp: self.tcp.iter().map(|p| p.snapshot()).collect(),
        }
    }
}

/// A running simulator. Dropping it stops every proxy and closes their connections.
pub struct WanSim {
    shared: Arc<Shared>,
    control: Option<SocketAddr>,
    tasks: Vec<JoinHandle<()>>,
}

impl WanSim {
    /// Binds every listener, then starts forwarding. `udp` and `tcp` are
    /// `(listen, upstream)` pairs; listen ports may be 0, see [`WanSim::udp_addrs`].
    /// Must be called within a tokio runtime; the proxies run as tasks on it.
    ///
    /// Fails if `imp` is out of range (`InvalidInput`) or an address can't be bound;
    /// the error names the address.
    pub async fn start(
        udp: Vec<(SocketAddr, SocketAddr)>,
        tcp: Vec<(SocketAddr, SocketAddr)>,
        control: Option<SocketAddr>,
        imp: Impairment,
    ) -> io::Result<WanSim> {
        imp.validate()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let context = |what: &str, addr: SocketAddr, e: io::Error| {
            io::Error::new(e.kind(), format!("{what} {addr}: {e}"))
        };

        // Bind everything before spawning anything, so a failure leaves nothing running.
        let mut udp_socks = Vec::new();
        for (listen, upstream) in udp {
            let sock = UdpSocket::bind(listen)
                .await
                .map_err(|e| context("udp listen", listen, e))?;
            let bound = sock.local_addr()?;
            udp_socks.push((sock, upstream, ProxyCounters::new(bound, upstream)));
        }
        let mut tcp_listeners = Vec::new();
        for (listen, upstream) in tcp {
            let l = TcpListener::bind(listen)
                .await
                .map_err(|e| context("tcp listen", listen, e))?;
            let bound = l.local_addr()?;
            tcp_listeners.push((l, upstream, ProxyCounters::new(bound, upstream)));
        }
        let control_listener = match control {
            Some(addr) => Some(
                TcpListener::bind(addr)
                    .await
                    .map_err(|e| context("control", addr, e))?,
            ),
            None => None,
        };
        let control = match &control_listener {
            Some(l) => Some(l.local_addr()?),
            None => None,
        };

        let (imp_tx, imp_rx) = watch::channel(imp);
        let shared = Arc::new(Shared {
            imp: imp_tx,
            udp: udp_socks.iter().map(|(_, _, c)| c.clone()).collect(),
            tcp: tcp_listeners.iter().map(|(_, _, c)| c.clone()).collect(),
        });
        let mut tasks = Vec::new();
        for (sock, upstream, counters) in udp_socks {
            tasks.push(tokio::spawn(udp::serve(
                sock,
                upstream,
                imp_rx.clone(),
                counters,
            )));
        }
        for (l, upstream, counters) in tcp_listeners {
            tasks.push(tokio::spawn(tcp::serve(
                l,
                upstream,
                imp_rx.clone(),
                counters,
            )));
        }
        if let Some(l) = control_listener {
            tasks.push(tokio::spawn(control::serve(l, shared.clone())));
        }
        Ok(WanSim {
            shared,
            control,
            tasks,
        })
    }

    /// Replaces the impairment for everything arriving from now on (and makes a
    /// blackhole hold back what is already queued).
    ///
    /// # Panics
    /// If `imp` is out of range; use [`WanSim::try_set`] for unchecked input.
    pub fn set(&self, imp: Impairment) {
        if let Err(e) = self.try_set(imp) {
            panic!("WanSim::set: {e}");
        }
    }

    /// Like [`WanSim::set`], but reports an out-of-range field instead of panicking.
    pub fn try_set(&self, imp: Impairment) -> Result<(), InvalidImpairment> {
        self.shared.try_set(imp)
    }

    /// The impairment currently in force.
    pub fn impairment(&self) -> Impairment {
        self.shared.impairment()
    }

    /// A snapshot of every proxy's counters.
    pub fn stats(&self) -> Stats {
        self.shared.stats()
    }

    /// Bound listen addresses of the UDP proxies, in the order given to `start`.
    pub fn udp_addrs(&self) -> Vec<SocketAddr> {
        self.shared.udp.iter().map(|p| p.listen).collect()
    }

    /// Bound listen addresses of the TCP proxies, in the order given to `start`.
    pub fn tcp_addrs(&self) -> Vec<SocketAddr> {
        self.shared.tcp.iter().map(|p| p.listen).collect()
    }

    /// Bound address of the HTTP control API, if one was requested.
    pub fn control_addr(&self) -> Option<SocketAddr> {
        self.control
    }
}

impl Drop for WanSim {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}
