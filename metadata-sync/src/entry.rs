use bytes::Bytes;
use prost::Message;

use crate::value::{HomeValue, OffsetValue, TopicDef};
use crate::{Hlc, Key, Limits, RegionId, VersionVector};

/// One versioned entry of `__meta`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    pub key: Key,
    /// The value's encoding (a [`TopicDef`], [`HomeValue`], [`OffsetValue`],
    /// or opaque bytes); `None` is a tombstone.
    pub value: Option<Bytes>,
    /// The key's causal history.
    pub vv: VersionVector,
    /// When the winning value was written; orders concurrent versions.
    pub hlc: Hlc,
    /// The region that wrote the winning value.
    pub origin: RegionId,
}

impl Entry {
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The order of concurrent versions: HLC, then region name.
    pub fn stamp(&self) -> (Hlc, &RegionId) {
        (self.hlc, &self.origin)
    }

    pub fn topic_def(&self) -> Option<TopicDef> {
        match self.key {
            Key::Topic(_) => TopicDef::decode(self.value.clone()?).ok(),
            _ => None,
        }
    }

    pub fn home(&self) -> Option<HomeValue> {
        match self.key {
            Key::TopicHome(_) => HomeValue::decode(self.value.clone()?).ok(),
            _ => None,
        }
    }

    pub fn offset(&self) -> Option<OffsetValue> {
        self.group_offset().map(|(_, _, _, v)| v)
    }

    /// (group, topic, partition, offset) of a live committed offset.
    pub fn group_offset(&self) -> Option<(&str, &str, i32, OffsetValue)> {
        match &self.key {
            Key::GroupOffset {
                group,
                topic,
                partition,
            } => Some((
                group,
                topic,
                *partition,
                OffsetValue::decode(self.value.clone()?).ok()?,
            )),
            _ => None,
        }
    }

    /// Structural checks every entry from a peer must pass before anything
    /// of its message is merged.
    pub(crate) fn check(&self, limits: &Limits) -> Result<(), String> {
        let key_len = self.key.encode().len();
        if key_len > limits.max_key_bytes {
            return Err(format!(
                "key of {key_len} bytes exceeds {}",
                limits.max_key_bytes
            ));
        }
        if let Some(v) = &self.value {
            if v.len() > limits.max_value_bytes {
                return Err(format!(
                    "value of {} bytes exceeds {}",
                    v.len(),
                    limits.max_value_bytes
                ));
            }
        }
        if self.vv.len() > limits.max_regions {
            return Err(format!("version vector of {} regions", self.vv.len()));
        }
        // The writer stamps its own component on every write.
        if self.vv.get(&self.origin) == 0 {
            return Err(format!(
                "version vector {:?} lacks its origin {}",
                self.vv, self.origin
            ));
        }
        let Some(value) = self.value.clone() else {
            return Ok(());
        };
        match &self.key {
            Key::Topic(_) => TopicDef::decode(value)
                .map_err(|e| format!("topic definition: {e}"))?
                .validate(),
            Key::TopicHome(_) => HomeValue::decode(value)
                .map_err(|e| format!("topic home: {e}"))?
                .validate(),
            Key::GroupOffset { .. } => OffsetValue::decode(value)
                .map_err(|e| format!("committed offset: {e}"))?
                .validate(),
            Key::Acl(_) | Key::ScramUser(_) | Key::Quota(_) | Key::Unknown { .. } => Ok(()),
        }
    }
}
