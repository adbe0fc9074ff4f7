//! Readiness (`/health/ready`), decided from what the dc-link last
//! observed, with no I/O: a dc-link is ready while it reaches its own
//! region's brokers and every peer region it must ship to.
//!
//! Both conditions have some slack: discovery runs every second, and a
//! QUIC link that drops reconnects within a few seconds; neither blip
//! should flip a load balancer's or an orchestrator's view of the process.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

/// The region's brokers count as unreachable once discovery has not
/// succeeded for this long.
pub const BROKERS_STALE: Duration = Duration::from_secs(10);
/// A link that was up counts as down once it has been down this long.
pub const LINK_GRACE: Duration = Duration::from_secs(5);

/// The outgoing link to one peer region, as last seen.
#[derive(Debug, Clone, Default)]
pub struct LinkHealth {
    pub connected: bool,
    /// When it went down; `None` if it never was up.
    pub down_since: Option<Instant>,
    pub last_error: Option<String>,
}

/// What readiness is decided from.
#[derive(Debug, Clone)]
pub struct Observed {
    pub now: Instant,
    /// The last discovery of this region's topics that succeeded.
    pub discovered: Option<Instant>,
    pub discovery_error: Option<String>,
    /// Peer regions some topic homed here mirrors to.
    pub must_ship_to: BTreeSet<String>,
    /// Outgoing links, by peer region.
    pub links: BTreeMap<String, LinkHealth>,
}

/// `Ok` when ready; otherwise every reason it is not, for the 503 body.
pub fn readiness(o: &Observed) -> Result<(), Vec<String>> {
    let mut why = Vec::new();
    let error = |e: &Option<String>| e.as_deref().map(|e| format!(": {e}")).unwrap_or_default();
    match o.discovered {
        None => why.push(format!(
            "this region's brokers not reached yet{}",
            error(&o.discovery_error)
        )),
        Some(t) if o.now.duration_since(t) >= BROKERS_STALE => why.push(format!(
            "this region's brokers not reached for {} s{}",
            o.now.duration_since(t).as_secs(),
            error(&o.discovery_error)
        )),
        Some(_) => {}
    }
    for peer in &o.must_ship_to {
        let link = o.links.get(peer).cloned().unwrap_or_default();
        if link.connected {
            continue;
        }
        match link.down_since {
            None => why.push(format!(
                "link to {peer} not connected yet{}",
                error(&link.last_error)
            )),
            Some(t) if o.now.duration_since(t) >= LINK_GRACE => why.push(format!(
                "link to {peer} down for {} s{}",
                o.now.duration_since(t).as_secs(),
                error(&link.last_error)
            )),
            Some(_) => {}
        }
    }
    if why.is_empty() {
        Ok(())
    } else {
        Err(why)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn observed(now: Instant) -> Observed {
        Observed {
            now,
            discovered: Some(now),
            discovery_error: None,
            must_ship_to: BTreeSet::new(),
            links: BTreeMap::new(),
        }
    }

    fn up() -> LinkHealth {
        LinkHealth {
            connected: true,
            down_since: None,
            last_error: None,
        }
    }

    #[test]
    fn ready_only_after_the_brokers_answered() {
        let now = Instant::now();
        let mut o = observed(now);
        o.discovered = None;
        o.discovery_error = Some("127.0.0.1:9092: connection refused".into());
        let why = readiness(&o).unwrap_err();
        assert_eq!(why.len(), 1);
        assert!(
            why[0].contains("not reached yet") && why[0].contains("connection refused"),
            "{why:?}"
        );
        o.discovered = Some(now);
        assert_eq!(readiness(&o), Ok(()));
    }

    #[test]
    fn brokers_lost_later_make_it_unready_after_the_slack() {
        let t0 = Instant::now();
        let mut o = observed(t0 + BROKERS_STALE - Duration::from_millis(1));
        o.discovered = Some(t0);
        assert_eq!(
            readiness(&o),
            Ok(()),
            "one missed discovery is not an outage"
        );
        o.now = t0 + BROKERS_STALE;
        o.discovery_error = Some("no bootstrap broker answered".into());
        let why = readiness(&o).unwrap_err();
        assert!(
            why[0].contains("not reached for 10 s") && why[0].contains("no bootstrap"),
            "{why:?}"
        );
    }

    #[test]
    fn only_peers_it_must_ship_to_count() {
        let now = Instant::now();
        let mut o = observed(now);
        // A down link to a region no topic mirrors to is not our concern.
        o.links.insert("ap-south".into(), LinkHealth::default());
        assert_eq!(readiness(&o), Ok(()));
        o.must_ship_to.insert("ap-south".into());
        let why = readiness(&o).unwrap_err();
        assert!(
            why[0].contains("link to ap-south not connected yet"),
            "{why:?}"
        );
        // A peer without any link state yet (its task not started) is not connected either.
        o.must_ship_to.insert("eu-west".into());
        assert_eq!(readiness(&o).unwrap_err().len(), 2);
        o.links.insert("ap-south".into(), up());
        o.links.insert("eu-west".into(), up());
        assert_eq!(readiness(&o), Ok(()));
    }

    #[test]
    fn a_dropped_link_gets_a_grace_period_then_counts() {
        let t0 = Instant::now();
        let mut o = observed(t0);
        o.must_ship_to.insert("eu-west".into());
        o.links.insert(
            "eu-west".into(),
            LinkHealth {
                connected: false,
                down_since: Some(t0),
                last_error: Some("timed out".into()),
            },
        );
        o.now = t0 + LINK_GRACE - Duration::from_millis(1);
        o.discovered = Some(o.now);
        assert_eq!(
            readiness(&o),
            Ok(()),
            "a reconnect blip must not flip readiness"
        );
        o.now = t0 + LINK_GRACE + Duration::from_secs(2);
        o.discovered = Some(o.now);
        let why = readiness(&o).unwrap_err();
        assert_eq!(
            why,
            vec!["link to eu-west down for 7 s: timed out".to_string()]
        );
    }

    #[test]
    fn every_reason_is_listed() {
        let t0 = Instant::now();
        let mut o = observed(t0 + Duration::from_secs(60));
        o.discovered = Some(t0);
        o.must_ship_to = ["ap-south".to_string(), "eu-west".to_string()].into();
        o.links.insert("eu-west".into(), up());
        let why = readiness(&o).unwrap_err();
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(
            why[0].contains("brokers") && why[1].contains("ap-south"),
            "{why:?}"
        );
    }
}
