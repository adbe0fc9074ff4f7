//! Topic configuration: the Kafka topic config names we accept, how each is
//! validated, its default, and which ones Chronik acts on.
//!
//! Unknown names are rejected (Kafka's INVALID_CONFIG). Names in the
//! `chronik.` namespace are reserved for Chronik's own per-topic settings.

use std::collections::BTreeMap;

use chronik_topology::TopicDefaults;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    List,
}

impl ConfigType {
    /// Kafka's DescribeConfigs `config_type` code.
    pub fn code(self) -> i8 {
        match self {
            ConfigType::Boolean => 1,
            ConfigType::String => 2,
            ConfigType::Int => 3,
            ConfigType::Long => 5,
            ConfigType::Double => 6,
            ConfigType::List => 7,
        }
    }
}

pub struct ConfigDef {
    pub name: &'static str,
    pub ty: ConfigType,
    /// Kafka's default, used unless the broker config overrides it.
    pub default: &'static str,
    /// Smallest accepted numeric value.
    pub min: Option<i64>,
    pub doc: &'static str,
}

const fn def(
    name: &'static str,
    ty: ConfigType,
    default: &'static str,
    min: Option<i64>,
    doc: &'static str,
) -> ConfigDef {
    ConfigDef {
        name,
        ty,
        default,
        min,
        doc,
    }
}

use ConfigType as T;

/// Kafka 4.x topic configs. Those marked "no effect" are stored and described
/// so tools that set them keep working, but Chronik's storage makes them moot.
pub static TOPIC_CONFIGS: &[ConfigDef] = &[
    def(
        "cleanup.policy",
        T::List,
        "delete",
        None,
        "`delete` removes old records (retention), `compact` keeps each key's latest record (the cleaner), `compact,delete` does both.",
    ),
    def(
        "compression.type",
        T::String,
        "producer",
        None,
        "`producer` stores batches as produced; `uncompressed`, `gzip`, `snappy`, `lz4` or `zstd` has the partition leader rewrite every batch in another codec in that codec before it is replicated.",
    ),
    def(
        "compression.gzip.level",
        T::Int,
        "-1",
        Some(-1),
        "The gzip level (1 to 9, -1 for the default) batches are rewritten at.",
    ),
    def(
        "compression.lz4.level",
        T::Int,
        "9",
        Some(1),
        "The lz4 level (1 to 17) batches are rewritten at.",
    ),
    def(
        "compression.zstd.level",
        T::Int,
        "3",
        Some(-131072),
        "The zstd level (-131072 to 22) batches are rewritten at.",
    ),
    def(
        "delete.retention.ms",
        T::Long,
        "86400000",
        Some(0),
        "How long a compacted topic keeps a tombstone (null value) after the cleaner first reached it.",
    ),
    def(
        "file.delete.delay.ms",
        T::Long,
        "60000",
        Some(0),
        "No effect: there are no segment files.",
    ),
    def(
        "flush.messages",
        T::Long,
        "9223372036854775807",
        Some(1),
        "No effect: durability is the broker's `durability` setting.",
    ),
    def(
        "flush.ms",
        T::Long,
        "9223372036854775807",
        Some(0),
        "No effect: durability is the broker's `durability` setting.",
    ),
    def(
        "follower.replication.throttled.replicas",
        T::List,
        "",
        None,
        "No effect.",
    ),
    def(
        "index.interval.bytes",
        T::Int,
        "4096",
        Some(0),
        "No effect: every batch is indexed.",
    ),
    def(
        "leader.replication.throttled.replicas",
        T::List,
        "",
        None,
        "No effect.",
    ),
    def(
        "local.retention.bytes",
        T::Long,
        "-2",
        Some(-2),
        "No effect: no tiered storage.",
    ),
    def(
        "local.retention.ms",
        T::Long,
        "-2",
        Some(-2),
        "No effect: no tiered storage.",
    ),
    def(
        "max.compaction.lag.ms",
        T::Long,
        "9223372036854775807",
        Some(1),
        "A dirty record older than this makes a compacted partition due for cleaning whatever its dirty ratio.",
    ),
    def(
        "max.message.bytes",
        T::Int,
        "1048588",
        Some(0),
        "Largest record batch accepted.",
    ),
    def(
        "message.timestamp.after.max.ms",
        T::Long,
        "3600000",
        Some(0),
        "No effect.",
    ),
    def(
        "message.timestamp.before.max.ms",
        T::Long,
        "9223372036854775807",
        Some(0),
        "No effect.",
    ),
    def(
        "message.timestamp.type",
        T::String,
        "CreateTime",
        None,
        "CreateTime or LogAppendTime.",
    ),
    def(
        "min.cleanable.dirty.ratio",
        T::Double,
        "0.5",
        None,
        "Share of a compacted partition's bytes not cleaned yet at which the cleaner runs (0 to 1).",
    ),
    def(
        "min.compaction.lag.ms",
        T::Long,
        "0",
        Some(0),
        "Records younger than this are not compacted.",
    ),
    def(
        "min.insync.replicas",
        T::Int,
        "1",
        Some(1),
        "Replicas that must have a write for acks=all.",
    ),
    def("preallocate", T::Boolean, "false", None, "No effect."),
    def(
        "remote.storage.enable",
        T::Boolean,
        "false",
        None,
        "Tiered storage is not supported; only false.",
    ),
    def(
        "retention.bytes",
        T::Long,
        "-1",
        Some(-1),
        "Delete the oldest batches once a partition is larger than this.",
    ),
    def(
        "retention.ms",
        T::Long,
        "604800000",
        Some(-1),
        "Delete batches whose newest timestamp is older than this.",
    ),
    def(
        "segment.bytes",
        T::Int,
        "1073741824",
        Some(14),
        "No effect: there are no segment files; the cleaner may clean every batch but the log's last.",
    ),
    def(
        "segment.index.bytes",
        T::Int,
        "10485760",
        Some(4),
        "No effect.",
    ),
    def("segment.jitter.ms", T::Long, "0", Some(0), "No effect."),
    def(
        "segment.ms",
        T::Long,
        "604800000",
        Some(1),
        "No effect: retention applies per batch, and the cleaner may clean every batch but the log's last.",
    ),
    def(
        "unclean.leader.election.enable",
        T::Boolean,
        "false",
        None,
        "No effect.",
    ),
    // Chronik's own (the `chronik.` namespace): where the topic lives and how
    // it is mirrored across regions (dc-link).
    def(
        HOME_REGION,
        T::String,
        "",
        None,
        "The region where clients produce to this topic; every other region holds a read-only mirror. Default: the region where the topic was created.",
    ),
    def(
        MIRROR_REGIONS,
        T::List,
        "*",
        None,
        "Comma list of regions that mirror this topic. `*` (the default): every other region; empty: none.",
    ),
    def(
        REPLICATION_MODE,
        T::String,
        "async",
        None,
        "`async`: acks=all waits for the local quorum only. `global_quorum`: acks=all also waits until the mirror regions hold the write durably (RPO 0).",
    ),
    def(
        RPO_MS,
        T::Long,
        "60000",
        Some(0),
        "The recovery point objective in ms: the most write time whose acknowledged records may be missing from the mirror regions (the at-risk span). Measured at home by the broker's own clock; held only with chronik.rpo.enforce=true. global_quorum topics lose nothing (0).",
    ),
    def(
        RPO_ENFORCE,
        T::Boolean,
        "false",
        None,
        "Hold chronik.rpo.ms at home: once a write would make the at-risk span pass half of it, producers are slowed (throttle_time_ms); once it would pass it, writes are refused (NOT_ENOUGH_REPLICAS, retriable) until the mirrors catch up. Trades availability for bounded loss; needs at least one mirror region.",
    ),
    def(
        FORWARD_ACK,
        T::String,
        "home",
        None,
        "A produce in a mirror region is forwarded to the home region. `home`: it is answered once the home has written it (acks=all: committed by the home's quorum, and by the mirrors for global_quorum). `mirrored`: also waits until this region's mirror holds it, so a consumer here sees the record by the time its producer's ack arrives (read-your-writes), at the cost of the mirroring delay.",
    ),
    def(
        FAILOVER_AUTO,
        T::Boolean,
        "false",
        None,
        "Automatic failover: when the home region has been silent for chronik.failover.timeout.ms and a majority of the lease voters agree its lease has expired, the most caught-up mirror region takes the home role.",
    ),
    def(
        FAILOVER_TIMEOUT_MS,
        T::Long,
        "10000",
        Some(1000),
        "How long the home region must be silent (no answer to the mirror region's lease renewals) before an automatic failover.",
    ),
    def(
        RECOVERY_OF,
        T::String,
        "",
        None,
        "Set by `chronik ctl failback` on the recovery topic it creates: the topic whose diverged records (written in a region after the home moved away from it) this topic holds. Failback writes only into a topic that names the topic it recovers.",
    ),
    def(
        MIRROR_SOURCE_TOPIC_ID,
        T::String,
        "",
        None,
        "Set by the dc-link on the mirror topics it creates: the topic id of the home topic the mirror copies. A home topic deleted and re-created under the same name has a new id, and the dc-link refuses to append it to this mirror.",
    ),
];

/// Chronik's own per-topic configs (reserved namespace).
pub const CHRONIK_PREFIX: &str = "chronik.";
pub const HOME_REGION: &str = "chronik.home.region";
pub const MIRROR_REGIONS: &str = "chronik.mirror.regions";
pub const REPLICATION_MODE: &str = "chronik.replication.mode";
pub const MIRROR_SOURCE_TOPIC_ID: &str = "chronik.mirror.source.topic.id";
pub const FAILOVER_AUTO: &str = "chronik.failover.auto";
pub const RPO_MS: &str = "chronik.rpo.ms";
pub const RPO_ENFORCE: &str = "chronik.rpo.enforce";
pub const FAILOVER_TIMEOUT_MS: &str = "chronik.failover.timeout.ms";
pub const RECOVERY_OF: &str = "chronik.recovery.of";
pub const FORWARD_ACK: &str = "chronik.forward.ack";

pub use chronik_topology::valid_region_name;

pub fn find(name: &str) -> Option<&'static ConfigDef> {
    TOPIC_CONFIGS.iter().find(|d| d.name == name)
}

/// The effective default of a config on this broker.
pub fn default_value(d: &ConfigDef, defaults: &TopicDefaults) -> String {
    match d.name {
        "retention.ms" => defaults.retention_ms.to_string(),
        "retention.bytes" => defaults.retention_bytes.to_string(),
        "max.message.bytes" => defaults.max_message_bytes.to_string(),
        _ => d.default.to_string(),
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigValueError {
    #[error("Unknown topic config name: {0}")]
    Unknown(String),
    #[error("Invalid value {value} for configuration {name}: {reason}")]
    Invalid {
        name: String,
        value: String,
        reason: String,
    },
    #[error("Configuration {0} is in Chronik's reserved `chronik.` namespace, and no such Chronik config exists")]
    UnknownChronik(String),
    #[error("Configuration {name} cannot be altered: {why}")]
    ReadOnly { name: String, why: &'static str },
}

/// Validates one `name = value` pair and returns the normalized value.
pub fn validate(name: &str, value: &str) -> Result<String, ConfigValueError> {
    let d = find(name).ok_or_else(|| {
        if name.starts_with(CHRONIK_PREFIX) {
            ConfigValueError::UnknownChronik(name.to_string())
        } else {
            ConfigValueError::Unknown(name.to_string())
        }
    })?;
    let invalid = |reason: String| ConfigValueError::Invalid {
        name: name.to_string(),
        value: value.to_string(),
        reason,
    };
    let v = value.trim();
    match d.ty {
        T::Int | T::Long => {
            let n: i64 = v.parse().map_err(|_| {
                invalid(if name == RPO_MS {
                    "not a duration in milliseconds (a whole number, such as 5000)".into()
                } else {
                    "not a number".into()
                })
            })?;
            if d.ty == T::Int && i32::try_from(n).is_err() {
                return Err(invalid("out of range for an int".into()));
            }
            if let Some(min) = d.min {
                if n < min {
                    return Err(invalid(format!("Value must be at least {min}")));
                }
            }
        }
        T::Double => {
            v.parse::<f64>()
                .map_err(|_| invalid("not a number".into()))?;
        }
        T::Boolean => {
            if !v.eq_ignore_ascii_case("true") && !v.eq_ignore_ascii_case("false") {
                return Err(invalid("Expected value to be either true or false".into()));
            }
        }
        T::String | T::List => {}
    }
    match name {
        "cleanup.policy" => {
            let items: Vec<&str> = v
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .collect();
            if items.iter().any(|i| *i != "delete" && *i != "compact") {
                return Err(invalid("String must be one of: compact, delete".into()));
            }
        }
        "compression.type"
            if !["uncompressed", "zstd", "lz4", "snappy", "gzip", "producer"].contains(&v) =>
        {
            return Err(invalid(
                "String must be one of: uncompressed, zstd, lz4, snappy, gzip, producer".into(),
            ));
        }
        "compression.gzip.level"
            if v != "-1" && !(1..=9).contains(&v.parse::<i64>().unwrap_or(0)) =>
        {
            return Err(invalid("Value must be between 1 and 9, or -1".into()));
        }
        "compression.lz4.level" if v.parse::<i64>().unwrap_or(0) > 17 => {
            return Err(invalid("Value must be no more than 17".into()));
        }
        "min.cleanable.dirty.ratio" if !(0.0..=1.0).contains(&v.parse::<f64>().unwrap_or(-1.0)) => {
            return Err(invalid("Value must be between 0 and 1".into()));
        }
        "compression.zstd.level" if v.parse::<i64>().unwrap_or(0) > 22 => {
            return Err(invalid("Value must be no more than 22".into()));
        }
        "message.timestamp.type" if v != "CreateTime" && v != "LogAppendTime" => {
            return Err(invalid(
                "String must be one of: CreateTime, LogAppendTime".into(),
            ));
        }
        HOME_REGION if !valid_region_name(v) => {
            return Err(invalid(
                "a region name: lowercase letters, digits and '-', starting with a letter".into(),
            ));
        }
        MIRROR_REGIONS if v != "*" => {
            let mut seen = std::collections::BTreeSet::new();
            for r in v.split(',').map(str::trim).filter(|r| !r.is_empty()) {
                if !valid_region_name(r) {
                    return Err(invalid(format!(
                        "{r:?} is not a region name (lowercase letters, digits and '-', starting with a letter); use `*` for every other region"
                    )));
                }
                if !seen.insert(r) {
                    return Err(invalid(format!("region {r} is listed twice")));
                }
            }
            return Ok(seen.into_iter().collect::<Vec<_>>().join(","));
        }
        REPLICATION_MODE if v != "async" && v != "global_quorum" => {
            return Err(invalid(
                "String must be one of: async, global_quorum".into(),
            ));
        }
        FORWARD_ACK if v != "home" && v != "mirrored" => {
            return Err(invalid("String must be one of: home, mirrored".into()));
        }
        "remote.storage.enable" if v.eq_ignore_ascii_case("true") => {
            return Err(invalid("tiered storage is not supported by Chronik".into()));
        }
        _ => {}
    }
    Ok(v.to_string())
}

/// Typed view of the configs Chronik acts on, resolved against defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EffectiveConfig {
    pub retention_ms: i64,
    pub retention_bytes: i64,
    pub max_message_bytes: i32,
    pub log_append_time: bool,
    pub min_insync_replicas: i32,
    /// `chronik.home.region`; `None`: the region where the topic was created.
    pub home_region: Option<String>,
    /// `chronik.replication.mode = global_quorum`.
    pub global_quorum: bool,
    /// `chronik.rpo.ms`.
    pub rpo_ms: i64,
    /// `chronik.rpo.enforce` (never for `global_quorum`, which loses nothing).
    pub rpo_enforce: bool,
    /// The RPO was set on this topic, or is enforced: the home dc-link
    /// reports the mirrors' ends for it, and its span is a metric.
    pub rpo_watched: bool,
    /// `chronik.forward.ack = mirrored`: a forwarded produce is answered
    /// once the local mirror holds it.
    pub forward_ack_mirrored: bool,
    /// `compression.type` with its level.
    pub compression: crate::recompress::TopicCompression,
    /// `cleanup.policy` holds `delete`: retention applies.
    pub cleanup_delete: bool,
    /// `cleanup.policy` holds `compact`: the cleaner runs, with these configs.
    pub compaction: Option<crate::compaction::Policy>,
}

/// Whether a `cleanup.policy` list names `policy`.
fn policy_has(list: &str, policy: &str) -> bool {
    list.split(',').any(|p| p.trim() == policy)
}

impl EffectiveConfig {
    pub fn resolve(
        explicit: &BTreeMap<String, String>,
        defaults: &TopicDefaults,
    ) -> EffectiveConfig {
        let get = |name: &str| -> String {
            explicit
                .get(name)
                .cloned()
                .unwrap_or_else(|| default_value(find(name).expect("known config"), defaults))
        };
        let cleanup = get("cleanup.policy");
        EffectiveConfig {
            retention_ms: get("retention.ms").parse().unwrap_or(defaults.retention_ms),
            retention_bytes: get("retention.bytes")
                .parse()
                .unwrap_or(defaults.retention_bytes),
            max_message_bytes: get("max.message.bytes")
                .parse()
                .unwrap_or(defaults.max_message_bytes),
            log_append_time: get("message.timestamp.type") == "LogAppendTime",
            min_insync_replicas: get("min.insync.replicas").parse().unwrap_or(1),
            home_region: explicit.get(HOME_REGION).filter(|r| !r.is_empty()).cloned(),
            global_quorum: get(REPLICATION_MODE) == "global_quorum",
            rpo_ms: get(RPO_MS).parse().unwrap_or(60_000),
            rpo_enforce: get(RPO_ENFORCE).eq_ignore_ascii_case("true")
                && get(REPLICATION_MODE) != "global_quorum",
            rpo_watched: explicit.contains_key(RPO_MS)
                || get(RPO_ENFORCE).eq_ignore_ascii_case("true"),
            forward_ack_mirrored: get(FORWARD_ACK) == "mirrored",
            compression: crate::recompress::TopicCompression::from_configs(
                &get("compression.type"),
                get("compression.gzip.level").parse().unwrap_or(-1),
                get("compression.lz4.level").parse().unwrap_or(9),
                get("compression.zstd.level").parse().unwrap_or(3),
            ),
            cleanup_delete: policy_has(&cleanup, "delete"),
            compaction: policy_has(&cleanup, "compact").then(|| crate::compaction::Policy {
                min_cleanable_dirty_ratio: get("min.cleanable.dirty.ratio").parse().unwrap_or(0.5),
                min_compaction_lag_ms: get("min.compaction.lag.ms").parse().unwrap_or(0),
                max_compaction_lag_ms: get("max.compaction.lag.ms").parse().unwrap_or(i64::MAX),
                delete_retention_ms: get("delete.retention.ms").parse().unwrap_or(86_400_000),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_configs_validate() {
        assert_eq!(validate("retention.ms", " 1000 ").unwrap(), "1000");
        assert!(validate("retention.ms", "-1").is_ok());
        assert!(validate("cleanup.policy", "delete").is_ok());
        assert!(validate("message.timestamp.type", "LogAppendTime").is_ok());
        assert!(validate("preallocate", "TRUE").is_ok());
    }

    #[test]
    fn bad_values_are_rejected_with_reasons() {
        assert!(matches!(
            validate("retention.ms", "soon"),
            Err(ConfigValueError::Invalid { .. })
        ));
        assert!(matches!(
            validate("retention.ms", "-2"),
            Err(ConfigValueError::Invalid { .. })
        ));
        assert!(matches!(
            validate("max.message.bytes", "99999999999"),
            Err(ConfigValueError::Invalid { .. })
        ));
        assert!(matches!(
            validate("preallocate", "yes"),
            Err(ConfigValueError::Invalid { .. })
        ));
        assert!(validate("cleanup.policy", "compact").is_ok());
        assert!(validate("cleanup.policy", "delete,compact").is_ok());
        assert!(validate("cleanup.policy", "compact,shred").is_err());
        assert!(validate("min.cleanable.dirty.ratio", "0.01").is_ok());
        assert!(validate("min.cleanable.dirty.ratio", "1.5").is_err());
        assert!(validate("compression.type", "zstd").is_ok());
        assert!(validate("compression.type", "brotli").is_err());
        assert!(validate("compression.gzip.level", "0").is_err());
        assert!(validate("compression.gzip.level", "-1").is_ok());
        assert!(validate("compression.lz4.level", "18").is_err());
        assert!(validate("compression.zstd.level", "23").is_err());
        assert!(validate("compression.zstd.level", "-7").is_ok());
    }

    #[test]
    fn chronik_policy_configs_validate() {
        assert_eq!(validate(HOME_REGION, " eu-west ").unwrap(), "eu-west");
        assert!(validate(HOME_REGION, "EU_West").is_err());
        assert_eq!(
            validate(MIRROR_REGIONS, "eu-west, ap-south").unwrap(),
            "ap-south,eu-west"
        );
        assert_eq!(validate(MIRROR_REGIONS, "*").unwrap(), "*");
        assert_eq!(validate(MIRROR_REGIONS, "").unwrap(), "");
        assert!(validate(MIRROR_REGIONS, "eu-west,eu-west").is_err());
        assert!(validate(MIRROR_REGIONS, "eu west").is_err());
        assert!(validate(REPLICATION_MODE, "global_quorum").is_ok());
        assert!(validate(REPLICATION_MODE, "sync").is_err());
        assert_eq!(validate(RPO_MS, "5000").unwrap(), "5000");
        let e = validate(RPO_MS, "-1").unwrap_err().to_string();
        assert!(e.contains("at least 0"), "{e}");
        let e = validate(RPO_MS, "5s").unwrap_err().to_string();
        assert!(e.contains("not a duration"), "{e}");
        assert!(validate(RPO_ENFORCE, "maybe").is_err());
        assert!(matches!(
            validate("chronik.home.regoin", "x"),
            Err(ConfigValueError::UnknownChronik(_))
        ));
        let mut explicit = BTreeMap::new();
        explicit.insert(HOME_REGION.to_string(), "eu-west".to_string());
        explicit.insert(REPLICATION_MODE.to_string(), "global_quorum".to_string());
        let e = EffectiveConfig::resolve(&explicit, &TopicDefaults::default());
        assert_eq!(e.home_region.as_deref(), Some("eu-west"));
        assert!(e.global_quorum);
    }

    #[test]
    fn unknown_names_are_rejected() {
        assert_eq!(
            validate("no.such.config", "1"),
            Err(ConfigValueError::Unknown("no.such.config".into()))
        );
        assert!(matches!(
            validate("chronik.nope", "1"),
            Err(ConfigValueError::UnknownChronik(_))
        ));
    }

    #[test]
    fn effective_config_uses_broker_defaults() {
        let defaults = TopicDefaults {
            retention_ms: 5000,
            ..TopicDefaults::default()
        };
        let mut explicit = BTreeMap::new();
        let e = EffectiveConfig::resolve(&explicit, &defaults);
        assert_eq!(e.retention_ms, 5000);
        assert!(!e.log_append_time);
        explicit.insert("retention.ms".into(), "10".into());
        explicit.insert("message.timestamp.type".into(), "LogAppendTime".into());
        let e = EffectiveConfig::resolve(&explicit, &defaults);
        assert_eq!(e.retention_ms, 10);
        assert!(e.log_append_time);
    }
}
