//! What a consumer group leaves behind in the regional controller's keyed
//! state: one record per group and one per committed partition offset.
//!
//! Keys live in the meta column family next to topics and brokers, so the
//! controller snapshot carries them and metadata-sync can later version
//! them entry by entry:
//!   `cgroup/<group>`                          -> GroupRecord (JSON)
//!   `coffset/<group>\0<topic>\0<partition:08>` -> OffsetRecord (JSON)

use serde::{Deserialize, Serialize};

pub const GROUP_PREFIX: &str = "cgroup/";
pub const OFFSET_PREFIX: &str = "coffset/";

pub fn group_key(group: &str) -> String {
    format!("{GROUP_PREFIX}{group}")
}

/// Prefix of every offset key of `group`. NUL never appears in a group id
/// Chronik accepts, so one group's prefix never matches another's keys.
pub fn group_offsets_prefix(group: &str) -> String {
    format!("{OFFSET_PREFIX}{group}\0")
}

/// [from, to) covering every offset key of `group`.
pub fn group_offsets_range(group: &str) -> (String, String) {
    (
        format!("{OFFSET_PREFIX}{group}\0"),
        format!("{OFFSET_PREFIX}{group}\u{1}"),
    )
}

pub fn offset_key(group: &str, topic: &str, partition: i32) -> String {
    format!("{OFFSET_PREFIX}{group}\0{topic}\0{partition:08}")
}

/// (group, topic, partition) from an offset key.
pub fn parse_offset_key(key: &str) -> Option<(String, String, i32)> {
    let rest = key.strip_prefix(OFFSET_PREFIX)?;
    let mut it = rest.splitn(3, '\0');
    let (g, t, p) = (it.next()?, it.next()?, it.next()?);
    Some((g.to_string(), t.to_string(), p.parse().ok()?))
}

/// A group as of its last completed generation (or as it went empty).
/// Heartbeat deadlines and in-flight joins are not kept: a new coordinator
/// gives every member a fresh session.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GroupRecord {
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub generation: i32,
    pub leader: Option<String>,
    pub members: Vec<MemberRecord>,
    /// When the group last became empty (offset retention counts from
    /// here), or None while it has members.
    pub empty_since_ms: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberRecord {
    pub id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocols: Vec<(String, Vec<u8>)>,
    pub assignment: Vec<u8>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetRecord {
    pub offset: i64,
    pub leader_epoch: i32,
    pub metadata: Option<String>,
    pub commit_ms: i64,
}

impl From<&chronik_metadata_sync::OffsetValue> for OffsetRecord {
    /// A global committed offset as this region's record of it.
    fn from(v: &chronik_metadata_sync::OffsetValue) -> OffsetRecord {
        OffsetRecord {
            offset: v.offset,
            leader_epoch: v.leader_epoch,
            metadata: v.metadata.clone(),
            commit_ms: v.commit_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offset_keys_round_trip_and_stay_within_their_group() {
        let k = offset_key("g", "orders", 7);
        assert_eq!(parse_offset_key(&k), Some(("g".into(), "orders".into(), 7)));
        assert!(k.starts_with(&group_offsets_prefix("g")));
        assert!(!k.starts_with(&group_offsets_prefix("g2")));
        assert!(!offset_key("g2", "orders", 7).starts_with(&group_offsets_prefix("g")));
    }
}
