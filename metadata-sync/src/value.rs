//! The typed values of the known kinds, as prost messages (the entry's
//! value bytes are one of these, encoded).

use std::collections::BTreeMap;

use bytes::Bytes;
use prost::Message;

use crate::{Hlc, RegionId, TopicId};

/// The topic config that names the home region. It is not part of a
/// topic's definition: the home moves only through the fenced
/// [`HomeValue`], never by a last-writer-wins config merge.
pub const HOME_REGION_CONFIG: &str = "chronik.home.region";

/// Kafka's longest legal topic name.
pub const MAX_TOPIC_NAME_LEN: usize = 249;

/// A topic as every region should define it. Partition log ids and replica
/// placement are regional and stay out.
#[derive(Clone, PartialEq, Message)]
pub struct TopicDef {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub partitions: i32,
    #[prost(int32, tag = "3")]
    pub replication_factor: i32,
    /// Explicit configs, replication policy (`chronik.mirror.regions`,
    /// `chronik.replication.mode`) included; never `chronik.home.region`.
    #[prost(btree_map = "string, string", tag = "4")]
    pub configs: BTreeMap<String, String>,
    /// When and where the topic was first created. Set by the replica on
    /// the first write of an id and never changed afterwards: it decides,
    /// identically everywhere, which of two same-named topics keeps the name.
    #[prost(uint64, tag = "5")]
    pub created_ms: u64,
    #[prost(uint32, tag = "6")]
    pub created_logical: u32,
    #[prost(string, tag = "7")]
    pub creator: String,
}

impl TopicDef {
    pub fn new(name: &str, partitions: i32, replication_factor: i32) -> TopicDef {
        TopicDef {
            name: name.to_string(),
            partitions,
            replication_factor,
            ..TopicDef::default()
        }
    }

    pub fn created(&self) -> Hlc {
        Hlc::new(self.created_ms, self.created_logical)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        valid_topic_name(&self.name)?;
        if self.partitions < 1 {
            return Err(format!(
                "topic {} with {} partitions",
                self.name, self.partitions
            ));
        }
        if self.configs.contains_key(HOME_REGION_CONFIG) {
            return Err(format!(
                "topic {} carries {HOME_REGION_CONFIG}; the home moves only by epoch",
                self.name
            ));
        }
        RegionId::new(self.creator.clone()).map_err(|e| e.to_string())?;
        Ok(())
    }
}

/// Kafka's topic-name rule.
pub fn valid_topic_name(name: &str) -> Result<(), String> {
    if name.is_empty() || name == "." || name == ".." || name.len() > MAX_TOPIC_NAME_LEN {
        return Err(format!("illegal topic name {name:?}"));
    }
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_' || c == '-')
    {
        return Err(format!("illegal topic name {name:?}"));
    }
    Ok(())
}

/// A topic's home region and the epoch that put it there. The epoch is
/// decided elsewhere (by consensus, in the failover work); this crate only
/// refuses to let anything but a higher epoch replace it.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct HomeValue {
    #[prost(string, tag = "1")]
    pub home: String,
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
}

impl HomeValue {
    pub(crate) fn validate(&self) -> Result<(), String> {
        RegionId::new(self.home.clone()).map_err(|e| e.to_string())?;
        if self.epoch == 0 {
            return Err("home epoch 0".into());
        }
        Ok(())
    }
}

/// A committed offset, with what a region needs to check it against its
/// own copy of the partition: the topic id (the name may have been reused
/// or renamed by a conflict) and the leader epoch of the committed record
/// (to compare with the local epoch history).
#[derive(Clone, PartialEq, Message)]
pub struct OffsetValue {
    #[prost(int64, tag = "1")]
    pub offset: i64,
    #[prost(int32, tag = "2")]
    pub leader_epoch: i32,
    #[prost(string, optional, tag = "3")]
    pub metadata: Option<String>,
    #[prost(int64, tag = "4")]
    pub commit_ms: i64,
    /// 16 bytes, or empty when the committing broker did not know it.
    #[prost(bytes = "bytes", tag = "5")]
    pub topic_id: Bytes,
    /// The region whose coordinator accepted the commit.
    #[prost(string, tag = "6")]
    pub committed_in: String,
}

impl OffsetValue {
    pub fn topic_id(&self) -> Option<TopicId> {
        TopicId::from_slice(&self.topic_id)
    }

    pub(crate) fn validate(&self) -> Result<(), String> {
        if self.offset < 0 {
            return Err(format!("negative committed offset {}", self.offset));
        }
        if !self.topic_id.is_empty() && self.topic_id.len() != 16 {
            return Err(format!("offset topic id of {} bytes", self.topic_id.len()));
        }
        Ok(())
    }
}

/// One user's SCRAM credential for one mechanism ([`crate::Key::ScramUser`],
/// whose bytes are the mechanism number, then the user name): what RFC 5802
/// lets a server keep, never the password. Last-writer-wins, like an ACL: a
/// credential changed in two cut-off regions ends as the later change.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct ScramValue {
    #[prost(bytes = "vec", tag = "1")]
    pub salt: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    pub stored_key: Vec<u8>,
    #[prost(bytes = "vec", tag = "3")]
    pub server_key: Vec<u8>,
    #[prost(uint32, tag = "4")]
    pub iterations: u32,
}

impl ScramValue {
    /// The key bytes of `user`'s credential for mechanism number `mechanism`
    /// (1: SCRAM-SHA-256, 2: SCRAM-SHA-512, as Kafka numbers them).
    pub fn key(mechanism: i8, user: &str) -> bytes::Bytes {
        let mut k = Vec::with_capacity(1 + user.len());
        k.push(mechanism as u8);
        k.extend_from_slice(user.as_bytes());
        k.into()
    }

    /// (mechanism number, user) of a key written by [`ScramValue::key`].
    pub fn parse_key(key: &[u8]) -> Option<(i8, &str)> {
        let (m, user) = key.split_first()?;
        Some((*m as i8, std::str::from_utf8(user).ok()?))
    }
}

/// The bytes of a [`crate::Key::Acl`]: one binding, with Kafka's codes for
/// resource type, pattern type, operation and permission. Prost encodes the
/// same fields to the same bytes, so every region derives the same key for
/// the same binding. Merged last-writer-wins: a binding deleted in one
/// cut-off region and re-created in another ends as the later change.
#[derive(Clone, PartialEq, Eq, Message)]
pub struct AclKey {
    #[prost(int32, tag = "1")]
    pub resource_type: i32,
    #[prost(string, tag = "2")]
    pub resource_name: String,
    #[prost(int32, tag = "3")]
    pub pattern_type: i32,
    #[prost(string, tag = "4")]
    pub principal: String,
    #[prost(string, tag = "5")]
    pub host: String,
    #[prost(int32, tag = "6")]
    pub operation: i32,
    #[prost(int32, tag = "7")]
    pub permission: i32,
}
