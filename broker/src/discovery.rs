//! A region's brokers found through DNS (`[cluster.discovery]`).
//!
//! A Kubernetes headless Service publishes one SRV record per ready pod of
//! a StatefulSet, its target the pod's stable name (`chronik-2.chronik...`).
//! At start the broker waits until the SRV records list the whole region,
//! takes each target's ordinal (plus `id_offset`) as the broker id and the
//! target's address (its A/AAAA record, from the same DNS servers) and port
//! as where to dial, and writes them into `cluster.peers`; the rest of the
//! broker sees an ordinary static configuration. Afterwards the records are
//! read again every `refresh_ms`, and a peer that moved (a new port, or a
//! pod back with a new IP) gets its new address in the transport.
//!
//! Deciding what the records mean ([`peers_from_srv`]) is free of I/O.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use chronik_topology::{BrokerConfig, Discovery, Peer};
use hickory_resolver::config::{NameServerConfig, NameServerConfigGroup, ResolverConfig};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;

use crate::raft::transport::Transport;

/// One SRV answer: target host name (without the final dot) and port.
pub type SrvTarget = (String, u16);

/// What a set of SRV targets says about the region.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Found {
    /// Every broker but `me`, by id.
    pub peers: BTreeMap<i32, String>,
    /// Whether `me` was among the targets.
    pub saw_me: bool,
    /// Targets whose first label ends in no ordinal, or that name one id
    /// twice: left out, and reported.
    pub ignored: Vec<String>,
}

impl Found {
    /// Every broker of the region listed (this one included)?
    pub fn complete(&self, brokers: usize) -> bool {
        self.peers.len() + 1 >= brokers
    }
}

/// The broker id a target name gives: the number after the last `-` of its
/// first label, plus `offset` (`chronik-0.chronik.ns.svc` -> 0 + offset).
pub fn id_of(target: &str, offset: i32) -> Option<i32> {
    let label = target.split('.').next()?;
    let (_, n) = label.rsplit_once('-')?;
    if n.is_empty() || !n.bytes().all(|b| b.is_ascii_digit()) || (n.len() > 1 && n.starts_with('0'))
    {
        return None;
    }
    n.parse::<i32>().ok()?.checked_add(offset)
}

/// The peers a set of SRV targets names, for broker `me`.
pub fn peers_from_srv(targets: &[SrvTarget], offset: i32, me: i32) -> Found {
    let mut found = Found::default();
    let mut seen: BTreeMap<i32, String> = BTreeMap::new();
    for (host, port) in targets {
        let host = host.trim_end_matches('.');
        let Some(id) = id_of(host, offset) else {
            found.ignored.push(host.to_string());
            continue;
        };
        let addr = format!("{host}:{port}");
        if let Some(prev) = seen.get(&id) {
            if *prev != addr {
                found.ignored.push(host.to_string());
            }
            continue;
        }
        seen.insert(id, addr.clone());
        if id == me {
            found.saw_me = true;
        } else {
            found.peers.insert(id, addr);
        }
    }
    found
}

fn resolver(d: &Discovery) -> Result<TokioResolver, String> {
    let mut builder = if d.servers.is_empty() {
        TokioResolver::builder_tokio()
            .map_err(|e| format!("reading the system's DNS config: {e}"))?
    } else {
        let mut group = NameServerConfigGroup::new();
        for s in &d.servers {
            group.push(NameServerConfig::new(*s, Protocol::Udp));
        }
        TokioResolver::builder_with_config(
            ResolverConfig::from_parts(None, vec![], group),
            TokioConnectionProvider::default(),
        )
    };
    // Each refresh must see the records as they are now.
    builder.options_mut().cache_size = 0;
    builder.options_mut().timeout = Duration::from_secs(2);
    builder.options_mut().attempts = 2;
    Ok(builder.build())
}

async fn lookup(r: &TokioResolver, d: &Discovery) -> Result<Vec<SrvTarget>, String> {
    let srv = r
        .srv_lookup(d.srv.as_str())
        .await
        .map_err(|e| format!("SRV {}: {e}", d.srv))?;
    Ok(srv
        .iter()
        .map(|s| (s.target().to_utf8(), s.port()))
        .collect())
}

/// The peers with each target name replaced by its address (IPv4 first),
/// asked of the same servers as the SRV records; a target without one is
/// dropped (and so not yet listed).
async fn addresses(r: &TokioResolver, found: Found) -> Found {
    let mut peers = BTreeMap::new();
    for (id, hostport) in found.peers {
        let Some((host, port)) = hostport.rsplit_once(':') else {
            continue;
        };
        let Ok(ips) = r.lookup_ip(format!("{host}.")).await else {
            tracing::debug!(id, host, "DNS discovery: no address for the target yet");
            continue;
        };
        let mut ips: Vec<std::net::IpAddr> = ips.iter().collect();
        ips.sort_by_key(|ip| ip.is_ipv6());
        if let Some(ip) = ips.first() {
            peers.insert(
                id,
                std::net::SocketAddr::new(*ip, port.parse().unwrap_or(0)).to_string(),
            );
        }
    }
    Found { peers, ..found }
}

/// Fills `cfg.cluster.peers` from DNS, waiting (up to `startup_wait_ms`)
/// until the records list the whole region. If DNS never does, the static
/// `peers` are kept when there are any; otherwise the broker cannot start.
pub async fn resolve_peers(cfg: &mut BrokerConfig) -> Result<(), String> {
    let Some(d) = cfg.cluster.discovery.clone() else {
        return Ok(());
    };
    let r = resolver(&d)?;
    let deadline = tokio::time::Instant::now() + Duration::from_millis(d.startup_wait_ms);
    let mut last;
    loop {
        match lookup(&r, &d).await {
            Ok(targets) => {
                let found = addresses(&r, peers_from_srv(&targets, d.id_offset, cfg.node_id)).await;
                if !found.ignored.is_empty() {
                    tracing::warn!(srv = %d.srv, ignored = ?found.ignored, "SRV targets that name no broker id (or one id twice)");
                }
                if found.complete(d.brokers) {
                    tracing::info!(srv = %d.srv, peers = ?found.peers, "found the region's brokers in DNS");
                    metrics::counter!("chronik_discovery_refreshes_total", "result" => "ok")
                        .increment(1);
                    cfg.cluster.peers = found
                        .peers
                        .into_iter()
                        .map(|(id, raft)| Peer { id, raft })
                        .collect();
                    return Ok(());
                }
                last = format!(
                    "DNS lists {} of {} brokers",
                    found.peers.len() + usize::from(found.saw_me),
                    d.brokers
                );
            }
            Err(e) => last = e,
        }
        metrics::counter!("chronik_discovery_refreshes_total", "result" => "failed").increment(1);
        if tokio::time::Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    if cfg.cluster.peers.is_empty() {
        return Err(format!(
            "cluster.discovery: {last} after {} ms, and cluster.peers is empty",
            d.startup_wait_ms
        ));
    }
    tracing::warn!(srv = %d.srv, reason = %last, "DNS discovery failed; using the static cluster.peers");
    Ok(())
}

/// Reads the SRV records every `refresh_ms` and moves the transport to each
/// peer's current address. A failed lookup keeps the addresses it has.
pub async fn refresh_loop(d: Discovery, me: i32, transport: Arc<Transport>) {
    let r = match resolver(&d) {
        Ok(r) => r,
        Err(e) => {
            tracing::warn!(error = %e, "DNS discovery: no resolver; peers stay where they are");
            return;
        }
    };
    let mut reported: std::collections::BTreeSet<i32> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_millis(d.refresh_ms)).await;
        match lookup(&r, &d).await {
            Ok(targets) => {
                metrics::counter!("chronik_discovery_refreshes_total", "result" => "ok")
                    .increment(1);
                let found = addresses(&r, peers_from_srv(&targets, d.id_offset, me)).await;
                for (id, addr) in found.peers {
                    if !transport.set_peer_addr(id as u64, addr) && reported.insert(id) {
                        tracing::warn!(id, "DNS lists a broker that is not a member of this region; adding brokers needs a membership change");
                    }
                }
            }
            Err(e) => {
                metrics::counter!("chronik_discovery_refreshes_total", "result" => "failed")
                    .increment(1);
                tracing::warn!(error = %e, "DNS discovery refresh failed; keeping the last addresses");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(host: &str, port: u16) -> SrvTarget {
        (host.to_string(), port)
    }

    #[test]
    fn a_statefulset_ordinal_plus_the_offset_is_the_broker_id() {
        assert_eq!(id_of("chronik-0.chronik.ns.svc.cluster.local", 1), Some(1));
        assert_eq!(id_of("chronik-us-east-12.svc", 1), Some(13));
        assert_eq!(id_of("broker-3", 0), Some(3));
        assert_eq!(id_of("chronik.ns.svc", 1), None);
        assert_eq!(id_of("chronik-.ns", 1), None);
        assert_eq!(id_of("chronik-07.ns", 1), None);
        assert_eq!(id_of("chronik-x1.ns", 1), None);
    }

    #[test]
    fn the_records_give_every_other_broker_and_report_what_they_cannot_place() {
        let f = peers_from_srv(
            &[
                t("chronik-0.chronik.ns.", 9093),
                t("chronik-1.chronik.ns.", 9093),
                t("chronik-2.chronik.ns", 9093),
                t("chronik-2.other.ns", 9093),
                t("stray.chronik.ns", 9093),
            ],
            1,
            2,
        );
        assert!(f.saw_me);
        assert_eq!(
            f.peers.into_iter().collect::<Vec<_>>(),
            vec![
                (1, "chronik-0.chronik.ns:9093".to_string()),
                (3, "chronik-2.chronik.ns:9093".to_string())
            ]
        );
        assert_eq!(f.ignored, vec!["chronik-2.other.ns", "stray.chronik.ns"]);
    }

    #[test]
    fn complete_once_every_broker_is_listed() {
        let two = peers_from_srv(&[t("b-1", 1), t("b-2", 1)], 0, 1);
        assert!(!two.complete(3));
        let three = peers_from_srv(&[t("b-1", 1), t("b-2", 1), t("b-3", 1)], 0, 1);
        assert!(three.complete(3));
        // This broker need not be listed yet (a pod is in DNS once ready).
        let others = peers_from_srv(&[t("b-2", 1), t("b-3", 1)], 0, 1);
        assert!(others.complete(3) && !others.saw_me);
    }
}
