//! The multi-region topology: every region, where its brokers and its
//! dc-link are, the shared trust root, and how links ship data
//! (`[cross_dc]`, the seed roadmap's shape where it fits).
//!
//! One file describes all regions and every dc-link reads the same file, so
//! regions cannot disagree about each other. Per-topic policy (home region,
//! mirror regions, replication mode) is not here: it is topic config
//! (`chronik.home.region`, ...), because the broker's produce path must
//! decide it and the file is not the broker's.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::{describe_toml_error, region_tag, valid_region_name, ConfigError};

/// How dc-link compresses frames on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    None,
    #[default]
    Zstd,
}

/// QUIC congestion control of dc-link connections.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Congestion {
    /// Model-based: keeps the rate through random loss (WAN default).
    #[default]
    Bbr,
    /// Loss-based: backs off on every loss.
    Cubic,
}

/// Link tuning shared by every dc-link (`[cross_dc]`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CrossDc {
    pub compression: Compression,
    /// zstd level, 1..=22; 3 is zstd's own default and costs little CPU.
    pub compression_level: i32,
    /// Frames in flight per link before the sender waits for an ack.
    pub pipeline_depth: u32,
    /// Largest frame (before compression); a frame carries many batches.
    pub frame_max_bytes: u32,
    /// The link capacity and round trip the QUIC windows and socket buffers
    /// are sized for: window = 2 x bandwidth x RTT, so one link can fill the
    /// pipe across an ocean (quinn's defaults suit a LAN).
    pub link_bandwidth_mbit: u32,
    pub link_rtt_ms: u32,
    /// `global_quorum` topics: how many mirror regions must hold a write
    /// before acks=all is answered. 0 = all of the topic's mirror regions.
    pub global_quorum_regions: u32,
    pub congestion: Congestion,
    /// A link with no packet from its peer for this long is closed and
    /// redialed: how soon a blackholed peer is noticed. Keep-alives go out
    /// every second, so a live peer never reaches it.
    pub idle_timeout_ms: u32,
    /// Produces forwarded from this region to a home region: the most
    /// bytes of batches awaiting the home's answer per link. Beyond it a
    /// forwarded produce is refused with a retriable error at once, so a
    /// slow or cut link cannot grow the dc-link's memory.
    pub forward_max_inflight_bytes: u64,
    /// Congestion control of the QUIC connection that carries forwarded
    /// produces (its own, per link). A forwarded produce is a burst once per
    /// round trip on an otherwise quiet connection: BBR paces such bursts at
    /// the low rate it estimated and stalls them in ProbeRTT, so cubic is
    /// the default here.
    pub forward_congestion: Congestion,
}

impl Default for CrossDc {
    fn default() -> Self {
        CrossDc {
            compression: Compression::Zstd,
            compression_level: 3,
            pipeline_depth: 128,
            frame_max_bytes: 1 << 20,
            link_bandwidth_mbit: 1000,
            link_rtt_ms: 100,
            global_quorum_regions: 0,
            congestion: Congestion::Bbr,
            idle_timeout_ms: 10_000,
            forward_max_inflight_bytes: 64 << 20,
            forward_congestion: Congestion::Cubic,
        }
    }
}

impl CrossDc {
    /// The zstd level frames are compressed with, if they are.
    pub fn zstd_level(&self) -> Option<i32> {
        match self.compression {
            Compression::Zstd => Some(self.compression_level),
            Compression::None => None,
        }
    }

    /// Bytes in flight that keep the configured link full.
    pub fn bdp_bytes(&self) -> u64 {
        self.link_bandwidth_mbit as u64 * 1_000_000 / 8 * self.link_rtt_ms as u64 / 1000
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Region {
    pub name: String,
    /// Kafka bootstrap addresses of the region's brokers.
    pub bootstrap: Vec<String>,
    /// Admin (HTTP) addresses of the region's brokers; dc-link appends to
    /// mirror partitions through them.
    pub brokers_admin: Vec<String>,
    /// The address other regions' dc-links dial (QUIC).
    pub dc_link: String,
    /// Standby dc-link processes of this region (their `listen` addresses):
    /// peers dial them in turn when `dc_link` does not answer or is a
    /// standby. One process acts at a time (see docs/dc-link.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dc_link_standby: Vec<String>,
    /// This region's dc-link certificate and key (PEM), signed by `tls.ca`.
    pub cert: PathBuf,
    pub key: PathBuf,
}

impl Region {
    /// Every address a dc-link of this region may listen on, the primary
    /// first.
    pub fn dc_link_addrs(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.dc_link.as_str())
            .chain(self.dc_link_standby.iter().map(String::as_str))
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Tls {
    /// The CA every dc-link trusts (PEM).
    pub ca: PathBuf,
}

/// The optional witness (`chronik witness`): a voter of the home-role
/// lease that holds no data, so that two data regions still have a
/// majority when one of them is lost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Witness {
    /// Its voter name (and certificate name, like a region's).
    pub name: String,
    /// Where dc-links dial it (QUIC).
    pub address: String,
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// Timing of the home-role lease (`[lease]`).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Lease {
    /// How long a majority's grant lets a home take writes.
    pub duration_ms: u64,
    /// How often the home asks the voters again.
    pub renew_every_ms: u64,
    /// The largest relative difference between two voters' clock rates.
    pub max_drift: f64,
}

impl Default for Lease {
    fn default() -> Self {
        Lease {
            duration_ms: 5_000,
            renew_every_ms: 1_000,
            max_drift: 0.01,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Topology {
    #[serde(default)]
    pub cross_dc: CrossDc,
    #[serde(default)]
    pub lease: Lease,
    pub tls: Tls,
    #[serde(rename = "regions")]
    pub regions: Vec<Region>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub witness: Option<Witness>,
}

/// A topic's replication policy, resolved from its `chronik.*` configs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicPolicy {
    pub home: String,
    pub mirrors: BTreeSet<String>,
    pub global_quorum: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("home region {0} is not in the topology")]
    UnknownHome(String),
    #[error("mirror region {0} is not in the topology")]
    UnknownMirror(String),
    #[error("region {0} cannot mirror a topic from itself (it is the topic's home)")]
    MirrorsItself(String),
    #[error("chronik.replication.mode {0:?}: must be async or global_quorum")]
    BadMode(String),
}

impl Topology {
    pub fn load(path: &Path) -> Result<Topology, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates; relative certificate paths are resolved
    /// against the file's directory.
    pub fn parse(text: &str, path: &Path) -> Result<Topology, ConfigError> {
        let mut t: Topology = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: describe_toml_error(&e),
        })?;
        t.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: path.to_path_buf(),
                key,
                message,
            })?;
        let base = path.parent().unwrap_or(Path::new("."));
        let abs = |p: &mut PathBuf| {
            if p.is_relative() {
                *p = base.join(&*p);
            }
        };
        abs(&mut t.tls.ca);
        for r in &mut t.regions {
            abs(&mut r.cert);
            abs(&mut r.key);
        }
        if let Some(w) = &mut t.witness {
            abs(&mut w.cert);
            abs(&mut w.key);
        }
        Ok(t)
    }

    /// Checks values that parse but make no sense. Returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: String, m: String| Err((k, m));
        let c = &self.cross_dc;
        if !(1..=22).contains(&c.compression_level) {
            return bad(
                "cross_dc.compression_level".into(),
                format!("must be 1..=22, got {}", c.compression_level),
            );
        }
        if c.pipeline_depth == 0 || c.pipeline_depth > 4096 {
            return bad(
                "cross_dc.pipeline_depth".into(),
                format!("must be 1..=4096, got {}", c.pipeline_depth),
            );
        }
        if !(16 * 1024..=64 << 20).contains(&c.frame_max_bytes) {
            return bad(
                "cross_dc.frame_max_bytes".into(),
                format!("must be 16 KiB..=64 MiB, got {}", c.frame_max_bytes),
            );
        }
        if c.link_bandwidth_mbit == 0 || c.link_rtt_ms == 0 {
            return bad(
                "cross_dc.link_bandwidth_mbit".into(),
                "link_bandwidth_mbit and link_rtt_ms must be > 0".into(),
            );
        }
        if !(1 << 20..=4 << 30).contains(&c.forward_max_inflight_bytes) {
            return bad(
                "cross_dc.forward_max_inflight_bytes".into(),
                format!(
                    "must be 1 MiB..=4 GiB, got {}",
                    c.forward_max_inflight_bytes
                ),
            );
        }
        if !(3_000..=600_000).contains(&c.idle_timeout_ms) {
            // Below 3 s a keep-alive lost twice in a row would drop a live link.
            return bad(
                "cross_dc.idle_timeout_ms".into(),
                format!("must be 3000..=600000, got {}", c.idle_timeout_ms),
            );
        }
        if self.regions.is_empty() {
            return bad("regions".into(), "at least one region is required".into());
        }
        let l = &self.lease;
        if !(1_000..=600_000).contains(&l.duration_ms) {
            return bad(
                "lease.duration_ms".into(),
                format!("must be 1000..=600000, got {}", l.duration_ms),
            );
        }
        if l.renew_every_ms == 0 || l.renew_every_ms * 2 > l.duration_ms {
            return bad(
                "lease.renew_every_ms".into(),
                format!(
                    "must be > 0 and at most half of lease.duration_ms ({}), got {}",
                    l.duration_ms, l.renew_every_ms
                ),
            );
        }
        if !(0.0..0.5).contains(&l.max_drift) {
            return bad(
                "lease.max_drift".into(),
                format!("must be 0 <= max_drift < 0.5, got {}", l.max_drift),
            );
        }
        if let Some(w) = &self.witness {
            if !valid_region_name(&w.name) {
                return bad(
                    "witness.name".into(),
                    format!(
                        "{:?}: lowercase letters, digits and '-', starting with a letter",
                        w.name
                    ),
                );
            }
            if self.regions.iter().any(|r| r.name == w.name) {
                return bad(
                    "witness.name".into(),
                    format!("{} is also a region's name", w.name),
                );
            }
            if w.address.parse::<SocketAddr>().is_err()
                || self
                    .regions
                    .iter()
                    .any(|r| r.dc_link_addrs().any(|a| a == w.address))
            {
                return bad(
                    "witness.address".into(),
                    format!(
                        "{:?} must be host:port (an IP address) that no dc-link uses",
                        w.address
                    ),
                );
            }
        }
        let mut names = BTreeSet::new();
        let mut tags: BTreeMap<u16, &str> = BTreeMap::new();
        let mut addrs: BTreeMap<String, String> = BTreeMap::new();
        for (i, r) in self.regions.iter().enumerate() {
            let key = |k: &str| format!("regions[{i}].{k}");
            if !valid_region_name(&r.name) {
                return bad(
                    key("name"),
                    format!(
                        "{:?}: lowercase letters, digits and '-', starting with a letter",
                        r.name
                    ),
                );
            }
            if !names.insert(r.name.as_str()) {
                return bad(key("name"), format!("region {} is defined twice", r.name));
            }
            if let Some(other) = tags.insert(region_tag(&r.name), r.name.as_str()) {
                return bad(
                    key("name"),
                    format!(
                        "regions {other} and {} would hand out the same producer ids (their names hash alike); rename one",
                        r.name
                    ),
                );
            }
            if r.bootstrap.is_empty() {
                return bad(key("bootstrap"), "at least one broker address".into());
            }
            if r.brokers_admin.is_empty() {
                return bad(
                    key("brokers_admin"),
                    "at least one broker admin address".into(),
                );
            }
            for (k, a) in std::iter::once(("dc_link", &r.dc_link))
                .chain(r.dc_link_standby.iter().map(|a| ("dc_link_standby", a)))
            {
                if a.parse::<SocketAddr>().is_err() {
                    return bad(key(k), format!("{a:?} is not host:port (an IP address)"));
                }
            }
            let listed = r
                .bootstrap
                .iter()
                .map(|a| ("bootstrap", a))
                .chain(r.brokers_admin.iter().map(|a| ("brokers_admin", a)))
                .chain(std::iter::once(("dc_link", &r.dc_link)))
                .chain(r.dc_link_standby.iter().map(|a| ("dc_link_standby", a)));
            for (k, a) in listed {
                let owner = format!("{}.{k}", r.name);
                if let Some(prev) = addrs.insert(a.clone(), owner.clone()) {
                    return bad(
                        key(k),
                        format!("address {a} is used twice ({prev} and {owner})"),
                    );
                }
            }
        }
        Ok(())
    }

    pub fn region(&self, name: &str) -> Option<&Region> {
        self.regions.iter().find(|r| r.name == name)
    }

    /// The voters of the home-role lease: every region, and the witness.
    pub fn voters(&self) -> Vec<String> {
        let mut v: Vec<String> = self.regions.iter().map(|r| r.name.clone()).collect();
        v.extend(self.witness.iter().map(|w| w.name.clone()));
        v
    }

    /// Whether the lease binds: a majority exists only with three voters
    /// or more. With two regions and no witness a home cut off from the
    /// other keeps writing, and moving it needs `--force`.
    pub fn lease_enforced(&self) -> bool {
        self.voters().len() >= 3
    }

    /// Where a voter's lease service is dialled, in order (a region's
    /// dc-link and its standbys, or the witness).
    pub fn voter_addrs(&self, name: &str) -> Vec<&str> {
        if let Some(r) = self.region(name) {
            return r.dc_link_addrs().collect();
        }
        self.witness
            .iter()
            .filter(|w| w.name == name)
            .map(|w| w.address.as_str())
            .collect()
    }

    /// Resolves a topic's policy from its configs (`None` values: unset)
    /// for a topic that lives in `local` (where it was created).
    pub fn policy(
        &self,
        local: &str,
        home: Option<&str>,
        mirrors: Option<&str>,
        mode: Option<&str>,
    ) -> Result<TopicPolicy, PolicyError> {
        let home = home.filter(|h| !h.is_empty()).unwrap_or(local).to_string();
        if self.region(&home).is_none() {
            return Err(PolicyError::UnknownHome(home));
        }
        let mirrors: BTreeSet<String> = match mirrors.map(str::trim) {
            None | Some("*") => self
                .regions
                .iter()
                .map(|r| r.name.clone())
                .filter(|r| *r != home)
                .collect(),
            Some(list) => {
                let mut out = BTreeSet::new();
                for r in list.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                    if r == home {
                        return Err(PolicyError::MirrorsItself(r.to_string()));
                    }
                    if self.region(r).is_none() {
                        return Err(PolicyError::UnknownMirror(r.to_string()));
                    }
                    out.insert(r.to_string());
                }
                out
            }
        };
        let global_quorum = match mode.unwrap_or("async") {
            "async" => false,
            "global_quorum" => true,
            other => return Err(PolicyError::BadMode(other.to_string())),
        };
        Ok(TopicPolicy {
            home,
            mirrors,
            global_quorum,
        })
    }
}

/// One dc-link process: which region it serves and where it listens.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DcLinkConfig {
    pub region: String,
    /// The topology file (relative paths: against this file's directory).
    pub topology: PathBuf,
    /// Where to accept QUIC from other regions; default: this region's
    /// `dc_link` address in the topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// HTTP: /metrics, /v1/lag, /health/*.
    pub admin: SocketAddr,
    /// TCP: where this region's brokers hand over produces to forward to
    /// a topic's home region. Default: the admin address's IP, any free
    /// port (the dc-link tells its brokers the address it bound).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_listen: Option<SocketAddr>,
    /// Fault injection for tests and drills; all off by default.
    #[serde(default)]
    pub faults: Faults,
    /// Where this region's lease votes (promotions it agreed to) are kept;
    /// default: `lease-state/` next to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
    /// The file holding this region's broker admin token (the brokers'
    /// `listeners.admin_token_file`); sent with every admin HTTP request.
    /// Relative paths: against this file's directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub broker_admin_token_file: Option<PathBuf>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Faults {
    /// Flip one byte in every Nth data frame after its checksum is
    /// computed, to exercise the receiver's corruption handling. 0 = never.
    pub corrupt_frame_every: u64,
}

impl DcLinkConfig {
    /// Loads the dc-link config and the topology it names, and checks that
    /// this region is in it.
    pub fn load(path: &Path) -> Result<(DcLinkConfig, Topology), ConfigError> {
        let mut cfg: DcLinkConfig = read_toml(path)?;
        (cfg.topology, cfg.state_dir) = resolve_paths(path, &cfg.topology, cfg.state_dir.take());
        if let Some(t) = cfg.broker_admin_token_file.take() {
            cfg.broker_admin_token_file = Some(path.parent().unwrap_or(Path::new(".")).join(t));
        }
        let topo = Topology::load(&cfg.topology)?;
        if topo.region(&cfg.region).is_none() {
            return Err(ConfigError::Invalid {
                file: path.to_path_buf(),
                key: "region".into(),
                message: format!(
                    "region {} is not in the topology {} (regions: {})",
                    cfg.region,
                    cfg.topology.display(),
                    topo.regions
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Ok((cfg, topo))
    }

    pub fn listen_addr(&self, topo: &Topology) -> SocketAddr {
        self.listen.unwrap_or_else(|| {
            topo.region(&self.region)
                .and_then(|r| r.dc_link.parse().ok())
                .expect("validated: the region exists and its dc_link parses")
        })
    }
}

fn read_toml<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
        file: path.to_path_buf(),
        source,
    })?;
    toml::from_str(&text).map_err(|e| ConfigError::Parse {
        file: path.to_path_buf(),
        message: describe_toml_error(&e),
    })
}

/// A process config's topology and lease state directory, relative to the
/// config file (the state directory defaults to `lease-state/` there).
fn resolve_paths(
    config: &Path,
    topology: &Path,
    state_dir: Option<PathBuf>,
) -> (PathBuf, Option<PathBuf>) {
    let base = config.parent().unwrap_or(Path::new("."));
    let state = match state_dir {
        Some(d) if d.is_relative() => base.join(d),
        Some(d) => d,
        None => base.join("lease-state"),
    };
    (base.join(topology), Some(state))
}

/// One `chronik witness` process (`--config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WitnessConfig {
    /// The topology file; its `[witness]` section names this witness.
    pub topology: PathBuf,
    /// HTTP: /health/live, /v1/lease.
    pub admin: SocketAddr,
    /// Where to accept QUIC; default: the witness address in the topology.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub listen: Option<SocketAddr>,
    /// Where the promotions it agreed to are kept; default: `lease-state/`
    /// next to this file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state_dir: Option<PathBuf>,
}

impl WitnessConfig {
    pub fn load(path: &Path) -> Result<(WitnessConfig, Topology), ConfigError> {
        let mut cfg: WitnessConfig = read_toml(path)?;
        (cfg.topology, cfg.state_dir) = resolve_paths(path, &cfg.topology, cfg.state_dir.take());
        let topo = Topology::load(&cfg.topology)?;
        if topo.witness.is_none() {
            return Err(ConfigError::Invalid {
                file: cfg.topology.clone(),
                key: "witness".into(),
                message: "a witness needs a [witness] section in the topology".into(),
            });
        }
        Ok((cfg, topo))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn two() -> String {
        r#"
[tls]
ca = "certs/ca.pem"

[[regions]]
name = "us-east"
bootstrap = ["127.0.0.1:9092"]
brokers_admin = ["127.0.0.1:13092"]
dc_link = "127.0.0.1:7100"
cert = "certs/us-east.pem"
key = "certs/us-east.key"

[[regions]]
name = "eu-west"
bootstrap = ["127.0.0.2:9092"]
brokers_admin = ["127.0.0.2:13092"]
dc_link = "127.0.0.2:7100"
cert = "certs/eu-west.pem"
key = "certs/eu-west.key"
"#
        .to_string()
    }

    fn parse(t: &str) -> Result<Topology, ConfigError> {
        Topology::parse(t, Path::new("/etc/chronik/topology.toml"))
    }

    #[test]
    fn a_two_region_topology_parses_with_defaults() {
        let t = parse(&two()).unwrap();
        assert_eq!(t.regions.len(), 2);
        assert_eq!(t.cross_dc.pipeline_depth, 128);
        assert_eq!(t.cross_dc.compression, Compression::Zstd);
        assert_eq!(t.tls.ca, PathBuf::from("/etc/chronik/certs/ca.pem"));
        assert_eq!(t.cross_dc.bdp_bytes(), 12_500_000);
        assert_eq!(t.cross_dc.idle_timeout_ms, 10_000);
    }

    #[test]
    fn duplicate_regions_and_addresses_are_rejected() {
        let dup = two().replace("eu-west", "us-east");
        let e = parse(&dup).unwrap_err().to_string();
        assert!(e.contains("defined twice"), "{e}");
        let addr = two().replace("127.0.0.2:7100", "127.0.0.1:7100");
        let e = parse(&addr).unwrap_err().to_string();
        assert!(e.contains("used twice"), "{e}");
        assert!(e.contains("regions[1].dc_link"), "{e}");
    }

    #[test]
    fn standby_dc_links_are_dialled_after_the_primary_and_checked_like_it() {
        let with = |list: &str| {
            two().replace(
                "dc_link = \"127.0.0.2:7100\"\n",
                &format!("dc_link = \"127.0.0.2:7100\"\ndc_link_standby = {list}\n"),
            )
        };
        let t = parse(&with("[\"127.0.0.3:7100\"]")).unwrap();
        assert_eq!(
            t.voter_addrs("eu-west"),
            vec!["127.0.0.2:7100", "127.0.0.3:7100"]
        );
        assert_eq!(t.voter_addrs("us-east"), vec!["127.0.0.1:7100"]);
        let e = parse(&with("[\"127.0.0.1:7100\"]"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("used twice") && e.contains("regions[1].dc_link_standby"),
            "{e}"
        );
        let e = parse(&with("[\"standby:7100\"]")).unwrap_err().to_string();
        assert!(e.contains("regions[1].dc_link_standby"), "{e}");
    }

    #[test]
    fn regions_whose_producer_id_tags_collide_are_rejected() {
        assert_eq!(region_tag("r42"), region_tag("r410"));
        assert_ne!(region_tag("us-east"), region_tag("eu-west"));
        let clash = two().replace("us-east", "r42").replace("eu-west", "r410");
        let e = parse(&clash).unwrap_err().to_string();
        assert!(
            e.contains("same producer ids") && e.contains("regions[1].name"),
            "{e}"
        );
    }

    #[test]
    fn bad_values_name_their_key() {
        let e = parse(&format!("[cross_dc]\npipeline_depth = 0\n{}", two()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cross_dc.pipeline_depth"), "{e}");
        let e = parse(&format!("[cross_dc]\nidle_timeout_ms = 1000\n{}", two()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("cross_dc.idle_timeout_ms"), "{e}");
        let t = parse(&format!("[cross_dc]\nidle_timeout_ms = 30000\n{}", two())).unwrap();
        assert_eq!(t.cross_dc.idle_timeout_ms, 30_000);
        let e = parse(&format!("[cross_dc]\ncompresion = \"zstd\"\n{}", two()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("compresion"), "{e}");
        let e = parse(&two().replace("127.0.0.2:7100", "eu:7100"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("regions[1].dc_link"), "{e}");
    }

    #[test]
    fn topic_policies_resolve_and_are_checked() {
        let t = parse(&two()).unwrap();
        let p = t.policy("us-east", None, None, None).unwrap();
        assert_eq!(p.home, "us-east");
        assert_eq!(p.mirrors, BTreeSet::from(["eu-west".to_string()]));
        assert!(!p.global_quorum);
        let p = t
            .policy("eu-west", Some("us-east"), Some(""), Some("global_quorum"))
            .unwrap();
        assert!(p.mirrors.is_empty());
        assert!(p.global_quorum);
        assert_eq!(
            t.policy("us-east", Some("mars"), None, None),
            Err(PolicyError::UnknownHome("mars".into()))
        );
        assert_eq!(
            t.policy("us-east", None, Some("eu-west,ap-south"), None),
            Err(PolicyError::UnknownMirror("ap-south".into()))
        );
        assert_eq!(
            t.policy("us-east", None, Some("us-east"), None),
            Err(PolicyError::MirrorsItself("us-east".into()))
        );
    }
}
