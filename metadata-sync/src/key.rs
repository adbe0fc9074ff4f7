use std::fmt;

use bytes::Bytes;
use prost::Message;

/// A topic's id: 16 bytes, the broker's UUID. Never reused, so every
/// version and every tombstone of a topic is about one topic only.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct TopicId(pub [u8; 16]);

impl TopicId {
    pub fn from_slice(b: &[u8]) -> Option<TopicId> {
        Some(TopicId(b.try_into().ok()?))
    }
}

impl fmt::Display for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for TopicId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "TopicId({self})")
    }
}

/// Entry kinds on the wire. Numbers are forever: a region that does not
/// know a number keeps and forwards such entries unchanged.
pub mod kind {
    pub const TOPIC: u32 = 1;
    pub const TOPIC_HOME: u32 = 2;
    pub const GROUP_OFFSET: u32 = 3;
    pub const ACL: u32 = 4;
    pub const SCRAM_USER: u32 = 5;
    pub const QUOTA: u32 = 6;
}

/// What an entry is about.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Debug)]
pub enum Key {
    /// A topic's definition ([`crate::TopicDef`]); its tombstone is the
    /// topic's deletion. Keyed by id, not name: two topics created under
    /// one name in two cut-off regions are two entries, and the name clash
    /// is resolved in the name view (see [`crate::names`]), never by one
    /// definition overwriting the other.
    Topic(TopicId),
    /// A topic's home region and fencing epoch ([`crate::HomeValue`]).
    /// Never last-writer-wins: only a higher epoch replaces it.
    TopicHome(TopicId),
    /// A consumer group's committed offset ([`crate::OffsetValue`]).
    GroupOffset {
        group: String,
        topic: String,
        partition: i32,
    },
    /// One ACL binding, its fields encoded as [`crate::AclKey`]; the value
    /// is empty, and the tombstone is the binding's deletion. A binding is
    /// its own key, so the same ACL created in two regions is one entry.
    Acl(Bytes),
    /// One user's credential for one mechanism ([`crate::ScramValue`]).
    ScramUser(Bytes),
    /// Reserved for client quotas; opaque until they are built.
    Quota(Bytes),
    /// A kind this build does not know, from a newer region.
    Unknown { kind: u32, key: Bytes },
}

/// How a key's versions are merged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MergeRule {
    /// Dominating version wins; concurrent ones by HLC, then region.
    LastWriterWins,
    /// Highest epoch wins; a tombstone beats every epoch.
    Fenced,
}

#[derive(Clone, PartialEq, Message)]
struct OffsetKeyWire {
    #[prost(string, tag = "1")]
    group: String,
    #[prost(string, tag = "2")]
    topic: String,
    #[prost(int32, tag = "3")]
    partition: i32,
}

impl Key {
    pub fn kind(&self) -> u32 {
        match self {
            Key::Topic(_) => kind::TOPIC,
            Key::TopicHome(_) => kind::TOPIC_HOME,
            Key::GroupOffset { .. } => kind::GROUP_OFFSET,
            Key::Acl(_) => kind::ACL,
            Key::ScramUser(_) => kind::SCRAM_USER,
            Key::Quota(_) => kind::QUOTA,
            Key::Unknown { kind, .. } => *kind,
        }
    }

    pub fn rule(&self) -> MergeRule {
        match self {
            Key::TopicHome(_) => MergeRule::Fenced,
            _ => MergeRule::LastWriterWins,
        }
    }

    pub fn group_offset(group: &str, topic: &str, partition: i32) -> Key {
        Key::GroupOffset {
            group: group.to_string(),
            topic: topic.to_string(),
            partition,
        }
    }

    /// The key's bytes on the wire (its kind travels beside them).
    pub fn encode(&self) -> Bytes {
        match self {
            Key::Topic(id) | Key::TopicHome(id) => Bytes::copy_from_slice(&id.0),
            Key::GroupOffset {
                group,
                topic,
                partition,
            } => OffsetKeyWire {
                group: group.clone(),
                topic: topic.clone(),
                partition: *partition,
            }
            .encode_to_vec()
            .into(),
            Key::Acl(b) | Key::ScramUser(b) | Key::Quota(b) => b.clone(),
            Key::Unknown { key, .. } => key.clone(),
        }
    }

    pub fn decode(kind: u32, bytes: Bytes) -> Result<Key, String> {
        let topic_id = |b: &Bytes| {
            TopicId::from_slice(b).ok_or_else(|| format!("topic id of {} bytes, want 16", b.len()))
        };
        Ok(match kind {
            0 => return Err("entry kind 0".into()),
            kind::TOPIC => Key::Topic(topic_id(&bytes)?),
            kind::TOPIC_HOME => Key::TopicHome(topic_id(&bytes)?),
            kind::GROUP_OFFSET => {
                let k = OffsetKeyWire::decode(bytes).map_err(|e| format!("offset key: {e}"))?;
                if k.topic.is_empty() || k.partition < 0 {
                    return Err("offset key without topic or with a negative partition".into());
                }
                Key::GroupOffset {
                    group: k.group,
                    topic: k.topic,
                    partition: k.partition,
                }
            }
            kind::ACL => Key::Acl(bytes),
            kind::SCRAM_USER => Key::ScramUser(bytes),
            kind::QUOTA => Key::Quota(bytes),
            kind => Key::Unknown { kind, key: bytes },
        })
    }
}

impl fmt::Display for Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Key::Topic(id) => write!(f, "topic/{id}"),
            Key::TopicHome(id) => write!(f, "topic-home/{id}"),
            Key::GroupOffset {
                group,
                topic,
                partition,
            } => write!(f, "offset/{group}/{topic}/{partition}"),
            Key::Acl(b) => write!(f, "acl/{} bytes", b.len()),
            Key::ScramUser(b) => write!(f, "scram/{} bytes", b.len()),
            Key::Quota(b) => write!(f, "quota/{} bytes", b.len()),
            Key::Unknown { kind, key } => write!(f, "kind-{kind}/{} bytes", key.len()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_round_trip_and_unknown_kinds_survive() {
        let keys = [
            Key::Topic(TopicId([7; 16])),
            Key::TopicHome(TopicId([8; 16])),
            Key::group_offset("g", "orders", 3),
            Key::Acl(Bytes::from_static(b"x")),
            Key::Unknown {
                kind: 99,
                key: Bytes::from_static(b"\x01\x02"),
            },
        ];
        for k in keys {
            assert_eq!(Key::decode(k.kind(), k.encode()).unwrap(), k);
        }
        assert!(Key::decode(kind::TOPIC, Bytes::from_static(b"short")).is_err());
        assert!(Key::decode(0, Bytes::new()).is_err());
    }
}
