//! What the simulated hosts share with the harness: the trace (a digest of
//! every delivered byte and observed event, in order), the client's
//! acknowledgements, the checker's online observations, and the nemesis'
//! connection resets. Nothing here feeds back into the brokers' logic
//! except a reset, which only fails sockets.

use std::collections::BTreeMap;
use std::hash::{DefaultHasher, Hasher};
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::Duration;

use super::checker::History;

pub struct Shared {
    inner: Mutex<Inner>,
}

struct Inner {
    /// SipHash with fixed keys: the same input gives the same digest in
    /// every process.
    digest: DefaultHasher,
    events: u64,
    delivered_bytes: u64,
    /// Kept only when replaying one seed.
    lines: Option<Vec<String>>,
    links: BTreeMap<(IpAddr, IpAddr), u64>,
    history: History,
}

/// Simulated time, when called from inside the simulation.
pub fn sim_ms() -> u64 {
    turmoil::sim_elapsed().unwrap_or(Duration::ZERO).as_millis() as u64
}

impl Shared {
    pub fn new(verbose: bool) -> Shared {
        Shared {
            inner: Mutex::new(Inner {
                digest: DefaultHasher::new(),
                events: 0,
                delivered_bytes: 0,
                lines: verbose.then(Vec::new),
                links: BTreeMap::new(),
                history: History::default(),
            }),
        }
    }

    /// Bytes that `node` read from `peer`'s connection.
    pub fn delivered(&self, node: u64, peer: IpAddr, bytes: &[u8]) {
        let t = sim_ms();
        let mut g = self.inner.lock().unwrap();
        g.digest.write_u64(t);
        g.digest.write_u64(node);
        g.digest.write(peer.to_string().as_bytes());
        g.digest.write(bytes);
        g.events += 1;
        g.delivered_bytes += bytes.len() as u64;
    }

    /// An event of the run (fault, start, leader change, ack): in the
    /// digest, and in the printed trace when replaying.
    pub fn event(&self, t_ms: u64, what: String) {
        let mut g = self.inner.lock().unwrap();
        g.digest.write_u64(t_ms);
        g.digest.write(what.as_bytes());
        g.events += 1;
        if let Some(lines) = &mut g.lines {
            lines.push(format!("{:>7}.{:03}s  {what}", t_ms / 1000, t_ms % 1000));
        }
    }

    /// A diagnostic line for the printed trace only: never in the digest,
    /// so a replay prints more without changing what it replays.
    pub fn note(&self, t_ms: u64, what: impl FnOnce() -> String) {
        let mut g = self.inner.lock().unwrap();
        if let Some(lines) = &mut g.lines {
            lines.push(format!(
                "{:>7}.{:03}s  . {}",
                t_ms / 1000,
                t_ms % 1000,
                what()
            ));
        }
    }

    pub fn verbose(&self) -> bool {
        self.inner.lock().unwrap().lines.is_some()
    }

    pub fn link_generation(&self, link: (IpAddr, IpAddr)) -> u64 {
        *self.inner.lock().unwrap().links.get(&link).unwrap_or(&0)
    }

    /// Fails every open connection on `link` (both ends).
    pub fn reset_link(&self, a: IpAddr, b: IpAddr) {
        let link = if a < b { (a, b) } else { (b, a) };
        *self.inner.lock().unwrap().links.entry(link).or_insert(0) += 1;
    }

    pub fn with_history<R>(&self, f: impl FnOnce(&mut History) -> R) -> R {
        f(&mut self.inner.lock().unwrap().history)
    }

    pub fn finish(&self) -> (u64, u64, u64, Vec<String>, History) {
        let mut g = self.inner.lock().unwrap();
        let history = std::mem::take(&mut g.history);
        (
            g.digest.finish(),
            g.events,
            g.delivered_bytes,
            g.lines.take().unwrap_or_default(),
            history,
        )
    }
}
