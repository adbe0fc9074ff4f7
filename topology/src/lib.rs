//! Chronik's configuration model.
//!
//! A broker is described by one TOML file ([`BrokerConfig`]). Parsing is
//! strict: unknown keys are errors, so a typo never silently falls back to a
//! default. Every error names the file, the key and what is wrong.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

mod regions;
mod security;
pub use regions::{
    Compression, Congestion, CrossDc, DcLinkConfig, Faults, Lease, PolicyError, Region, Tls,
    TopicPolicy, Topology, Witness, WitnessConfig,
};
pub use security::{
    Authorization, ClientAuth, KafkaListener, ListenerTls, Sasl, SecurityProtocol, SASL_MECHANISMS,
};

/// Default Kafka listener when a broker is started without a config file.
pub const DEFAULT_KAFKA_ADDR: &str = "127.0.0.1:9092";
/// The admin (HTTP) port defaults to the Kafka port plus this offset.
pub const ADMIN_PORT_OFFSET: u16 = 4000;

/// How an acknowledged write is made durable on one broker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// Every acknowledged write is fsynced (group commit) before the ack.
    #[default]
    Fsync,
    /// Writes reach the OS (survive a process crash) but are not fsynced;
    /// meant for clusters where replication provides durability.
    Replicated,
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Durability::Fsync => "fsync",
            Durability::Replicated => "replicated",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Listeners {
    /// Address the Kafka protocol listener binds to.
    pub kafka: SocketAddr,
    /// Address advertised to clients in Metadata; defaults to `kafka`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advertised_kafka: Option<String>,
    /// HTTP admin listener (/metrics, /health/*); defaults to Kafka port + 4000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin: Option<SocketAddr>,
    /// A file holding the region's admin API token. When set, every admin
    /// HTTP request except `/metrics` and `/health/*` must carry
    /// `Authorization: Bearer <token>`: mirror appends, mirror acks,
    /// truncation and the metadata-sync merge are then closed to anyone
    /// without it. Relative paths are against the broker's working dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admin_token_file: Option<PathBuf>,
    /// Broker-to-broker (Raft) listener. Required when `cluster.peers` is not
    /// empty; defaults to Kafka port + 1 otherwise (a one-broker region
    /// opens no peer listener at all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<SocketAddr>,
    /// Name of the `kafka` listener; defaults to its security protocol's
    /// Kafka name (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Security of the `kafka` listener.
    #[serde(default)]
    pub security: SecurityProtocol,
    /// TLS of the `kafka` listener (for `ssl` and `sasl_ssl`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<ListenerTls>,
    /// More Kafka listeners, each with its own name, address and security.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub extra: Vec<KafkaListener>,
}

impl Default for Listeners {
    fn default() -> Self {
        Listeners {
            kafka: DEFAULT_KAFKA_ADDR.parse().expect("valid default address"),
            advertised_kafka: None,
            admin: None,
            admin_token_file: None,
            raft: None,
            name: None,
            security: SecurityProtocol::default(),
            tls: None,
            extra: Vec::new(),
        }
    }
}

impl Listeners {
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin.unwrap_or_else(|| {
            let mut a = self.kafka;
            a.set_port(self.kafka.port().wrapping_add(ADMIN_PORT_OFFSET));
            a
        })
    }

    /// Every Kafka listener, the `kafka` one first.
    pub fn kafka_listeners(&self) -> Vec<KafkaListener> {
        let first = KafkaListener {
            name: self.kafka_name(),
            address: self.kafka,
            advertised: self.advertised_kafka.clone(),
            security: self.security,
            tls: self.tls.clone(),
        };
        std::iter::once(first)
            .chain(self.extra.iter().cloned())
            .collect()
    }

    /// The `kafka` listener's name.
    pub fn kafka_name(&self) -> String {
        self.name
            .clone()
            .unwrap_or_else(|| self.security.kafka_name().to_string())
    }

    /// (host, port) that clients of listener `name` are told to connect to;
    /// `None` if this broker has no such listener.
    pub fn advertised_for(&self, name: &str) -> Option<(String, u16)> {
        if name == self.kafka_name() {
            return Some(self.advertised());
        }
        self.extra
            .iter()
            .find(|l| l.name == name)
            .map(KafkaListener::advertised)
    }

    /// (host, port) that clients of the `kafka` listener are told to connect to.
    pub fn advertised(&self) -> (String, u16) {
        security::advertised_host_port(self.advertised_kafka.as_deref(), self.kafka)
    }
}

/// Cluster-wide defaults for topics, mirroring Kafka's broker-level
/// `num.partitions`, `log.retention.*` and `auto.create.topics.enable`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicDefaults {
    pub auto_create: bool,
    pub default_partitions: u32,
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i32,
    pub retention_check_interval_ms: u64,
    /// How often the cleaner looks for compacted partitions that are due
    /// (Kafka's `log.cleaner.backoff.ms`).
    pub cleaner_backoff_ms: u64,
    /// Memory one cleaning pass may use for its key map (Kafka's
    /// `log.cleaner.dedupe.buffer.size`); a partition with more keys is
    /// cleaned over several passes.
    pub cleaner_key_map_bytes: u64,
}

impl Default for TopicDefaults {
    fn default() -> Self {
        TopicDefaults {
            auto_create: true,
            default_partitions: 1,
            retention_ms: 7 * 24 * 3600 * 1000,
            retention_bytes: -1,
            max_message_bytes: 1_048_588,
            retention_check_interval_ms: 300_000,
            cleaner_backoff_ms: 15_000,
            cleaner_key_map_bytes: 64 << 20,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest request frame accepted (Kafka's `socket.request.max.bytes`).
    pub socket_request_max_bytes: u32,
    /// Requests one connection may have in flight before we stop reading it.
    pub max_in_flight_per_connection: u32,
    /// Produces this broker forwards to a topic's home region (through the
    /// region's dc-link): the most bytes awaiting the home's answer. Past
    /// it a forwarded produce gets a retriable error at once.
    pub forward_max_inflight_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            socket_request_max_bytes: 100 * 1024 * 1024,
            max_in_flight_per_connection: 32,
            forward_max_inflight_bytes: 64 << 20,
        }
    }
}

/// The consumer-group coordinator, mirroring Kafka's `group.*` and
/// `offsets.*` broker settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Groups {
    /// How long an empty group's first rebalance waits for more members
    /// (`group.initial.rebalance.delay.ms`).
    pub initial_rebalance_delay_ms: u64,
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    /// 0 = unlimited (`group.max.size`).
    pub max_size: u32,
    /// Committed offsets of an empty group expire this long after it
    /// emptied (`offsets.retention.minutes`).
    pub offsets_retention_minutes: u64,
    pub offsets_retention_check_interval_ms: u64,
    /// `offset.metadata.max.bytes`.
    pub offset_metadata_max_bytes: u32,
}

impl Default for Groups {
    fn default() -> Self {
        Groups {
            initial_rebalance_delay_ms: 3_000,
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            max_size: 0,
            offsets_retention_minutes: 10_080,
            offsets_retention_check_interval_ms: 600_000,
            offset_metadata_max_bytes: 4096,
        }
    }
}

/// The transaction coordinator, mirroring Kafka's `transaction.*` broker
/// settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Transactions {
    /// How often open transactions are checked against their
    /// `transaction.timeout.ms` and aborted past it
    /// (`transaction.abort.timed.out.transaction.cleanup.interval.ms`).
    pub abort_timed_out_check_interval_ms: u64,
    /// An idle transactional id (no transaction open, no request) is
    /// forgotten after this long (`transactional.id.expiration.ms`).
    pub transactional_id_expiration_ms: u64,
}

impl Default for Transactions {
    fn default() -> Self {
        Transactions {
            abort_timed_out_check_interval_ms: 10_000,
            transactional_id_expiration_ms: 604_800_000,
        }
    }
}

/// Another broker of the same region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Peer {
    pub id: i32,
    /// Where this broker connects to reach the peer's Raft listener (may be
    /// a proxy address; it need not equal the peer's own `listeners.raft`).
    pub raft: String,
}

/// The region's brokers and replication settings. Every broker of a region
/// lists every other broker as a peer; all of them are voters of the
/// region's controller group.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Cluster {
    /// Replicas per partition for new topics; 0 means min(3, brokers).
    pub replication_factor: u16,
    /// Default `min.insync.replicas` for topics that do not set it.
    pub min_insync_replicas: u16,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// A follower that has not acknowledged the leader for this long leaves
    /// the ISR (Kafka's `replica.lag.time.max.ms`).
    pub replica_lag_time_max_ms: u64,
    /// A group snapshots its state (and purges its Raft log behind it)
    /// after this many applied entries.
    pub raft_snapshot_entries: u64,
    /// Raft log entries kept behind a snapshot for followers that lag a
    /// little; one further behind receives the snapshot instead.
    pub raft_log_keep_entries: u64,
    /// Move leadership back to each partition's preferred replica once it
    /// is in sync (Kafka's `auto.leader.rebalance.enable`).
    pub auto_leader_rebalance: bool,
    /// Mutual TLS on the Raft peer transport: each broker's certificate
    /// must name it (`broker-<id>.<region>.raft.chronik`, see
    /// [`raft_peer_dns_name`]), so a broker cannot speak for another.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<PeerTls>,
    /// Find the peers through DNS instead of (or before falling back to)
    /// `peers`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub discovery: Option<Discovery>,
    pub peers: Vec<Peer>,
}

/// `[cluster.discovery]`: the region's brokers from DNS SRV records, as a
/// Kubernetes headless Service publishes them
/// (`_<port>._tcp.<service>.<namespace>.svc.cluster.local`). Each SRV target
/// names one broker; its address is resolved (A/AAAA) whenever it is
/// dialled, and the SRV records are read again every `refresh_ms`, so a
/// broker that moves is followed. The set of brokers is fixed at start:
/// a broker found later is reported, not added.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Discovery {
    pub mode: DiscoveryMode,
    /// The SRV name to query.
    pub srv: String,
    /// How many brokers the region has, this one included: startup waits
    /// until DNS lists them all (pods of a StatefulSet appear one by one).
    pub brokers: usize,
    /// A broker's id is the number ending the first label of its SRV target
    /// plus this offset: pod `chronik-0` of a StatefulSet is broker 1.
    #[serde(default = "default_id_offset")]
    pub id_offset: i32,
    #[serde(default = "default_refresh_ms")]
    pub refresh_ms: u64,
    /// How long startup waits for DNS to list every broker before falling
    /// back to `peers` (or failing when there are none).
    #[serde(default = "default_discovery_wait_ms")]
    pub startup_wait_ms: u64,
    /// DNS servers to ask (ip:port); default: the system's (resolv.conf).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<SocketAddr>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DiscoveryMode {
    /// SRV records (their targets resolved through A/AAAA records).
    Dns,
}

fn default_id_offset() -> i32 {
    1
}

fn default_refresh_ms() -> u64 {
    30_000
}

fn default_discovery_wait_ms() -> u64 {
    120_000
}

/// `[cluster.tls]`: this broker's certificate and key, and the CA that
/// signed every broker of the region.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerTls {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub ca: PathBuf,
}

/// The DNS name a broker's certificate carries to prove, on the Raft peer
/// transport, that it is broker `id` of `region`.
pub fn raft_peer_dns_name(region: &str, id: i32) -> String {
    format!("broker-{id}.{region}.raft.chronik")
}

/// The broker id a certificate's DNS name proves in `region`, if it is a
/// [`raft_peer_dns_name`] of that region.
pub fn raft_peer_id(region: &str, dns_name: &str) -> Option<i32> {
    let id = dns_name
        .strip_prefix("broker-")?
        .strip_suffix(&format!(".{region}.raft.chronik"))?;
    // Only the canonical spelling: "07" would name broker 7 twice.
    let n: i32 = id.parse().ok()?;
    (n.to_string() == id).then_some(n)
}

impl Default for Cluster {
    fn default() -> Self {
        Cluster {
            replication_factor: 0,
            min_insync_replicas: 1,
            heartbeat_interval_ms: 250,
            election_timeout_min_ms: 1000,
            election_timeout_max_ms: 2000,
            replica_lag_time_max_ms: 10_000,
            raft_snapshot_entries: 50_000,
            raft_log_keep_entries: 20_000,
            auto_leader_rebalance: true,
            tls: None,
            discovery: None,
            peers: Vec::new(),
        }
    }
}

impl Cluster {
    /// Ids of every broker in the region, this one included, ascending.
    pub fn broker_ids(&self, me: i32) -> Vec<i32> {
        let mut ids: Vec<i32> = self.peers.iter().map(|p| p.id).collect();
        ids.push(me);
        ids.sort_unstable();
        ids.dedup();
        ids
    }

    pub fn effective_replication_factor(&self, me: i32) -> u16 {
        if self.replication_factor > 0 {
            self.replication_factor
        } else {
            self.broker_ids(me).len().min(3) as u16
        }
    }
}

/// One broker's configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    pub node_id: i32,
    #[serde(default = "default_region")]
    pub region: String,
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    #[serde(default)]
    pub durability: Durability,
    #[serde(default)]
    pub listeners: Listeners,
    #[serde(default)]
    pub topics: TopicDefaults,
    #[serde(default)]
    pub limits: Limits,
    #[serde(default)]
    pub cluster: Cluster,
    #[serde(default)]
    pub groups: Groups,
    #[serde(default)]
    pub transactions: Transactions,
    #[serde(default)]
    pub sasl: Sasl,
    #[serde(default)]
    pub authorization: Authorization,
}

fn default_region() -> String {
    "local".to_string()
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("./chronik-data")
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            node_id: 1,
            region: default_region(),
            data_dir: default_data_dir(),
            durability: Durability::default(),
            listeners: Listeners::default(),
            topics: TopicDefaults::default(),
            limits: Limits::default(),
            cluster: Cluster::default(),
            groups: Groups::default(),
            transactions: Transactions::default(),
            sasl: Sasl::default(),
            authorization: Authorization::default(),
        }
    }
}

impl BrokerConfig {
    fn validate_listeners(&self) -> Result<(), (String, String)> {
        let bad = |k: String, m: String| Err((k, m));
        let host_port = |key: String, adv: &str| match adv.rsplit_once(':') {
            Some((h, p)) if !h.is_empty() && p.parse::<u16>().is_ok() => Ok(()),
            _ => Err((key, format!("`{adv}` must be host:port"))),
        };
        let l = &self.listeners;
        if let Some(adv) = &l.advertised_kafka {
            host_port("listeners.advertised_kafka".into(), adv)?;
        }
        security::check_listener("listeners", l.security, l.tls.as_ref())?;
        let admin = l.admin_addr();
        let mut names = std::collections::BTreeSet::new();
        let mut addrs = std::collections::BTreeSet::new();
        for (i, k) in l.kafka_listeners().iter().enumerate() {
            let key = if i == 0 {
                "listeners".to_string()
            } else {
                format!("listeners.extra[{}]", i - 1)
            };
            if !security::valid_listener_name(&k.name) {
                return bad(
                    format!("{key}.name"),
                    format!("`{}` is not a listener name (use [A-Z0-9_]+)", k.name),
                );
            }
            if !names.insert(k.name.clone()) {
                return bad(
                    format!("{key}.name"),
                    format!("listener name {} is used twice", k.name),
                );
            }
            if k.address == admin || !addrs.insert(k.address) {
                return bad(
                    format!("{key}.address"),
                    format!("{} is already used by another listener", k.address),
                );
            }
            if i > 0 {
                if let Some(adv) = &k.advertised {
                    host_port(format!("{key}.advertised"), adv)?;
                }
                security::check_listener(&key, k.security, k.tls.as_ref())?;
            }
        }
        // Checked even without a SASL listener: a typo should not wait
        // until one is added.
        security::check_sasl(&self.sasl)?;
        security::check_authorization(&self.authorization)?;
        Ok(())
    }
}

/// Reads an admin API token file: its first line, trimmed. A token shorter
/// than 16 characters is refused, so a placeholder never guards anything.
pub fn read_token_file(path: &Path) -> Result<String, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("reading the admin token file {}: {e}", path.display()))?;
    let token = text.lines().next().unwrap_or("").trim().to_string();
    if token.len() < 16 {
        return Err(format!(
            "the admin token in {} must be at least 16 characters",
            path.display()
        ));
    }
    Ok(token)
}

/// A configuration problem, located by file and key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Io {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("{file}: key `{key}`: {message}")]
    Invalid {
        file: PathBuf,
        key: String,
        message: String,
    },
}

impl BrokerConfig {
    /// Reads, parses and validates a broker config file.
    pub fn load(path: &Path) -> Result<BrokerConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Io {
            file: path.to_path_buf(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates config text; `path` is only used in errors.
    pub fn parse(text: &str, path: &Path) -> Result<BrokerConfig, ConfigError> {
        let cfg: BrokerConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: path.to_path_buf(),
            message: describe_toml_error(&e),
        })?;
        cfg.validate()
            .map_err(|(key, message)| ConfigError::Invalid {
                file: path.to_path_buf(),
                key,
                message,
            })?;
        Ok(cfg)
    }

    /// Checks values that parse but make no sense. Returns (key, problem).
    pub fn validate(&self) -> Result<(), (String, String)> {
        let bad = |k: &str, m: String| Err((k.to_string(), m));
        if !(0..=MAX_NODE_ID).contains(&self.node_id) {
            return bad(
                "node_id",
                format!(
                    "must be 0..={MAX_NODE_ID} (producer ids hold it in 10 bits), got {}",
                    self.node_id
                ),
            );
        }
        if !valid_region_name(&self.region) {
            return bad(
                "region",
                format!(
                    "`{}` is not a valid region name (use 1-63 of [a-z0-9-], starting with a letter)",
                    self.region
                ),
            );
        }
        if self.data_dir.as_os_str().is_empty() {
            return bad("data_dir", "must not be empty".into());
        }
        let admin = self.listeners.admin_addr();
        if admin == self.listeners.kafka {
            return bad(
                "listeners.admin",
                format!("{admin} is the same address as listeners.kafka"),
            );
        }
        self.validate_listeners()?;
        let g = &self.groups;
        if g.min_session_timeout_ms <= 0 || g.min_session_timeout_ms > g.max_session_timeout_ms {
            return bad(
                "groups.min_session_timeout_ms",
                format!(
                    "must be > 0 and <= groups.max_session_timeout_ms ({}), got {}",
                    g.max_session_timeout_ms, g.min_session_timeout_ms
                ),
            );
        }
        if g.offsets_retention_minutes == 0 {
            return bad("groups.offsets_retention_minutes", "must be > 0".into());
        }
        if g.offsets_retention_check_interval_ms == 0 {
            return bad(
                "groups.offsets_retention_check_interval_ms",
                "must be > 0".into(),
            );
        }
        let c = &self.cluster;
        let mut seen = std::collections::BTreeSet::new();
        for (i, p) in c.peers.iter().enumerate() {
            if p.id < 0 {
                return bad(
                    &format!("cluster.peers[{i}].id"),
                    format!("must be >= 0, got {}", p.id),
                );
            }
            if p.id == self.node_id {
                return bad(
                    &format!("cluster.peers[{i}].id"),
                    format!(
                        "{} is this broker's own node_id; list only the other brokers",
                        p.id
                    ),
                );
            }
            if !seen.insert(p.id) {
                return bad(
                    &format!("cluster.peers[{i}].id"),
                    format!("node id {} is listed twice", p.id),
                );
            }
            match p.raft.rsplit_once(':') {
                Some((h, port)) if !h.is_empty() && port.parse::<u16>().is_ok() => {}
                _ => {
                    return bad(
                        &format!("cluster.peers[{i}].raft"),
                        format!("`{}` must be host:port", p.raft),
                    )
                }
            }
        }
        if !c.peers.is_empty() && self.listeners.raft.is_none() {
            return bad(
                "listeners.raft",
                "required when cluster.peers is set (the address peers connect to)".into(),
            );
        }
        if let Some(d) = &c.discovery {
            if self.listeners.raft.is_none() {
                return bad(
                    "listeners.raft",
                    "required with cluster.discovery (the address peers connect to)".into(),
                );
            }
            if d.srv.trim().is_empty() {
                return bad("cluster.discovery.srv", "must name an SRV record".into());
            }
            if d.brokers < 1 {
                return bad(
                    "cluster.discovery.brokers",
                    "must count at least this broker".into(),
                );
            }
            if d.refresh_ms < 1000 {
                return bad(
                    "cluster.discovery.refresh_ms",
                    "must be at least 1000".into(),
                );
            }
        }
        let brokers = c
            .broker_ids(self.node_id)
            .len()
            .max(c.discovery.as_ref().map_or(0, |d| d.brokers));
        if c.replication_factor as usize > brokers {
            return bad(
                "cluster.replication_factor",
                format!(
                    "{} exceeds the {brokers} broker(s) of the region",
                    c.replication_factor
                ),
            );
        }
        if c.raft_snapshot_entries == 0 {
            return bad("cluster.raft_snapshot_entries", "must be at least 1".into());
        }
        if c.min_insync_replicas == 0 {
            return bad("cluster.min_insync_replicas", "must be at least 1".into());
        }
        if c.heartbeat_interval_ms == 0 {
            return bad("cluster.heartbeat_interval_ms", "must be positive".into());
        }
        if c.election_timeout_min_ms <= c.heartbeat_interval_ms {
            return bad(
                "cluster.election_timeout_min_ms",
                "must be greater than cluster.heartbeat_interval_ms".into(),
            );
        }
        if c.election_timeout_max_ms <= c.election_timeout_min_ms {
            return bad(
                "cluster.election_timeout_max_ms",
                "must be greater than cluster.election_timeout_min_ms".into(),
            );
        }
        if let Some(raft) = self.listeners.raft {
            if self
                .listeners
                .kafka_listeners()
                .iter()
                .any(|l| l.address == raft)
                || raft == admin
            {
                return bad(
                    "listeners.raft",
                    format!("{raft} is already used by another listener"),
                );
            }
        }
        let t = &self.topics;
        if t.default_partitions == 0 {
            return bad("topics.default_partitions", "must be at least 1".into());
        }
        if t.retention_ms < -1 {
            return bad(
                "topics.retention_ms",
                "must be -1 (infinite) or >= 0".into(),
            );
        }
        if t.retention_bytes < -1 {
            return bad(
                "topics.retention_bytes",
                "must be -1 (infinite) or >= 0".into(),
            );
        }
        if t.max_message_bytes <= 0 {
            return bad("topics.max_message_bytes", "must be positive".into());
        }
        if t.retention_check_interval_ms == 0 {
            return bad(
                "topics.retention_check_interval_ms",
                "must be positive".into(),
            );
        }
        if t.cleaner_backoff_ms == 0 {
            return bad("topics.cleaner_backoff_ms", "must be positive".into());
        }
        if t.cleaner_key_map_bytes < 1 << 20 {
            return bad(
                "topics.cleaner_key_map_bytes",
                "must be at least 1 MiB (1048576)".into(),
            );
        }
        let l = &self.limits;
        if l.socket_request_max_bytes < 1024 {
            return bad(
                "limits.socket_request_max_bytes",
                format!("{} is too small (minimum 1024)", l.socket_request_max_bytes),
            );
        }
        if l.max_in_flight_per_connection == 0 {
            return bad(
                "limits.max_in_flight_per_connection",
                "must be at least 1".into(),
            );
        }
        if l.forward_max_inflight_bytes < 1 << 20 {
            return bad(
                "limits.forward_max_inflight_bytes",
                format!(
                    "{} is too small (minimum 1 MiB)",
                    l.forward_max_inflight_bytes
                ),
            );
        }
        Ok(())
    }

    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("config serializes")
    }
}

/// Region names end up in metric labels, file names and certificates, so
/// they are kept to DNS-label characters.
pub fn valid_region_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
}

/// A region's 16-bit tag in the producer ids its brokers hand out (FNV-1a
/// of the name, folded). Mirrors carry the home's producer state, so after
/// a home move a producer id from another region must never match a live
/// one here; the topology refuses regions whose tags collide.
pub fn region_tag(name: &str) -> u16 {
    let mut h: u32 = 0x811c_9dc5;
    for b in name.bytes() {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    ((h >> 16) ^ (h & 0xffff)) as u16
}

/// Node ids are the low bits of a producer id (see [`region_tag`]).
pub const MAX_NODE_ID: i32 = 1023;

fn describe_toml_error(e: &toml::de::Error) -> String {
    // toml's message already names the offending key and line; keep it on one line.
    e.to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" | ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<BrokerConfig, ConfigError> {
        BrokerConfig::parse(s, Path::new("/etc/chronik/broker.toml"))
    }

    fn invalid_key(text: &str) -> String {
        match parse(&format!("node_id = 1\n{text}")).unwrap_err() {
            ConfigError::Invalid { key, .. } => key,
            other => panic!("expected an invalid key, got {other}"),
        }
    }

    const TLS: &str = r#"tls = { cert = "b.pem", key = "b.key" }"#;

    #[test]
    fn several_listeners_each_with_its_security() {
        let c = parse(&format!(
            r#"
node_id = 1
[listeners]
kafka = "10.0.0.1:9092"
[[listeners.extra]]
name = "EXTERNAL"
address = "0.0.0.0:9094"
advertised = "kafka-1.example.com:19094"
security = "sasl_ssl"
{TLS}
[[listeners.extra]]
name = "MTLS"
address = "0.0.0.0:9095"
security = "ssl"
tls = {{ cert = "b.pem", key = "b.key", client_ca = "ca.pem", client_auth = "required" }}
[sasl]
mechanisms = ["SCRAM-SHA-256", "PLAIN"]
connections_max_reauth_ms = 3600000
"#
        ))
        .unwrap();
        let ls = c.listeners.kafka_listeners();
        let names: Vec<_> = ls.iter().map(|l| l.name.as_str()).collect();
        assert_eq!(names, ["PLAINTEXT", "EXTERNAL", "MTLS"]);
        assert_eq!(
            ls[1].advertised(),
            ("kafka-1.example.com".to_string(), 19094)
        );
        assert_eq!(ls[2].advertised(), ("0.0.0.0".to_string(), 9095));
        assert_eq!(
            ls[2].tls.as_ref().unwrap().client_auth,
            security::ClientAuth::Required
        );
        assert_eq!(c.sasl.connections_max_reauth_ms, 3_600_000);
    }

    #[test]
    fn listener_mistakes_name_the_key() {
        let extra = |body: &str| {
            format!("[listeners]\nkafka = \"127.0.0.1:9092\"\n[[listeners.extra]]\n{body}\n")
        };
        // TLS material is required exactly on TLS listeners.
        assert_eq!(
            invalid_key(&extra(
                "name = \"S\"\naddress = \"127.0.0.1:9094\"\nsecurity = \"ssl\""
            )),
            "listeners.extra[0].tls"
        );
        assert_eq!(
            invalid_key(&extra(&format!(
                "name = \"S\"\naddress = \"127.0.0.1:9094\"\nsecurity = \"sasl_plaintext\"\n{TLS}"
            ))),
            "listeners.extra[0].tls"
        );
        assert_eq!(
            invalid_key(&extra(
                "name = \"S\"\naddress = \"127.0.0.1:9094\"\nsecurity = \"ssl\"\ntls = { cert = \"b.pem\", key = \"b.key\", client_auth = \"required\" }"
            )),
            "listeners.extra[0].tls.client_ca"
        );
        // Names are Kafka's: upper case, unique; addresses are unique.
        assert_eq!(
            invalid_key(&extra("name = \"external\"\naddress = \"127.0.0.1:9094\"")),
            "listeners.extra[0].name"
        );
        assert_eq!(
            invalid_key(&extra("name = \"PLAINTEXT\"\naddress = \"127.0.0.1:9094\"")),
            "listeners.extra[0].name"
        );
        assert_eq!(
            invalid_key(&extra("name = \"B\"\naddress = \"127.0.0.1:9092\"")),
            "listeners.extra[0].address"
        );
        assert_eq!(
            invalid_key(&extra(
                "name = \"B\"\naddress = \"127.0.0.1:9094\"\nadvertised = \"nohost\""
            )),
            "listeners.extra[0].advertised"
        );
        assert_eq!(
            invalid_key("[listeners]\nkafka = \"127.0.0.1:9092\"\nsecurity = \"sasl_ssl\"\n"),
            "listeners.tls"
        );
        assert_eq!(
            invalid_key("[sasl]\nmechanisms = [\"GSSAPI\"]\n"),
            "sasl.mechanisms"
        );
        assert_eq!(invalid_key("[sasl]\nmechanisms = []\n"), "sasl.mechanisms");
        assert_eq!(
            invalid_key("[authorization]\nenabled = true\nsuper_users = [\"admin\"]\n"),
            "authorization.super_users"
        );
    }

    #[test]
    fn a_raft_peer_name_proves_one_broker_of_one_region() {
        let name = raft_peer_dns_name("us-east", 3);
        assert_eq!(name, "broker-3.us-east.raft.chronik");
        assert_eq!(raft_peer_id("us-east", &name), Some(3));
        assert_eq!(raft_peer_id("eu-west", &name), None);
        assert_eq!(raft_peer_id("east", &name), None);
        assert_eq!(
            raft_peer_id("us-east", "broker-03.us-east.raft.chronik"),
            None
        );
        assert_eq!(
            raft_peer_id("us-east", "broker-x.us-east.raft.chronik"),
            None
        );
        assert_eq!(raft_peer_id("us-east", "us-east.dc-link.chronik"), None);
    }

    #[test]
    fn minimal_config_gets_defaults() {
        let c = parse("node_id = 3\n").unwrap();
        assert_eq!(c.node_id, 3);
        assert_eq!(c.durability, Durability::Fsync);
        assert_eq!(c.listeners.kafka.port(), 9092);
        assert_eq!(c.listeners.admin_addr().port(), 13092);
        assert_eq!(c.limits.socket_request_max_bytes, 100 * 1024 * 1024);
    }

    #[test]
    fn full_config_round_trips() {
        let text = r#"
node_id = 7
region = "eu-west"
data_dir = "/var/lib/chronik"
durability = "replicated"
[listeners]
kafka = "127.0.0.2:9093"
admin = "127.0.0.2:14000"
advertised_kafka = "broker7.example:9093"
[topics]
auto_create = false
default_partitions = 6
"#;
        let c = parse(text).unwrap();
        assert_eq!(c.durability, Durability::Replicated);
        assert_eq!(c.listeners.advertised(), ("broker7.example".into(), 9093));
        assert!(!c.topics.auto_create);
        let again = parse(&c.to_toml()).unwrap();
        assert_eq!(c, again);
    }

    #[test]
    fn unknown_key_names_file_and_key() {
        let err = parse("node_id = 1\n[listeners]\nkafak = \"127.0.0.1:1\"\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("/etc/chronik/broker.toml"), "{err}");
        assert!(err.contains("kafak"), "{err}");
    }

    #[test]
    fn bad_durability_is_rejected() {
        let err = parse("node_id = 1\ndurability = \"sometimes\"\n")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("durability") || err.contains("sometimes"),
            "{err}"
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("node_id = -1\n", "node_id"),
            ("node_id = 1\nregion = \"US East\"\n", "region"),
            ("node_id = 1\n[topics]\ndefault_partitions = 0\n", "topics.default_partitions"),
            ("node_id = 1\n[topics]\nretention_ms = -5\n", "topics.retention_ms"),
            (
                "node_id = 1\n[listeners]\nkafka = \"127.0.0.1:9092\"\nadmin = \"127.0.0.1:9092\"\n",
                "listeners.admin",
            ),
            (
                "node_id = 1\n[limits]\nsocket_request_max_bytes = 10\n",
                "limits.socket_request_max_bytes",
            ),
        ];
        for (text, key) in cases {
            match parse(text) {
                Err(ConfigError::Invalid { key: k, file, .. }) => {
                    assert_eq!(k, key, "for {text:?}");
                    assert_eq!(file, Path::new("/etc/chronik/broker.toml"));
                }
                other => panic!("{text:?}: expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn cluster_config_is_validated() {
        let ok = "node_id = 1\n[listeners]\nkafka = \"127.0.0.1:9092\"\nraft = \"127.0.0.1:9093\"\n[cluster]\nmin_insync_replicas = 2\n[[cluster.peers]]\nid = 2\nraft = \"127.0.0.2:9093\"\n[[cluster.peers]]\nid = 3\nraft = \"127.0.0.3:9093\"\n";
        let c = parse(ok).unwrap();
        assert_eq!(c.cluster.broker_ids(1), vec![1, 2, 3]);
        assert_eq!(c.cluster.effective_replication_factor(1), 3);
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
        let cases = [
            (ok.replace("id = 2", "id = 1"), "cluster.peers[0].id"),
            (ok.replace("id = 3", "id = 2"), "cluster.peers[1].id"),
            (
                ok.replace("\"127.0.0.2:9093\"", "\"nohost\""),
                "cluster.peers[0].raft",
            ),
            (
                ok.replace("raft = \"127.0.0.1:9093\"\n", ""),
                "listeners.raft",
            ),
            (
                ok.replace("min_insync_replicas = 2", "replication_factor = 4"),
                "cluster.replication_factor",
            ),
        ];
        for (text, key) in cases {
            match parse(&text) {
                Err(ConfigError::Invalid { key: k, .. }) => assert_eq!(k, key, "for {text:?}"),
                other => panic!("{text:?}: expected invalid {key}, got {other:?}"),
            }
        }
    }

    #[test]
    fn missing_file_is_an_io_error() {
        let err = BrokerConfig::load(Path::new("/nonexistent/chronik.toml")).unwrap_err();
        assert!(matches!(err, ConfigError::Io { .. }));
        assert!(err.to_string().contains("/nonexistent/chronik.toml"));
    }

    #[test]
    fn region_names() {
        assert!(valid_region_name("us-east"));
        assert!(valid_region_name("eu-west-1"));
        assert!(!valid_region_name(""));
        assert!(!valid_region_name("1abc"));
        assert!(!valid_region_name("Us"));
    }
}
