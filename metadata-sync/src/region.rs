use std::fmt;

/// A region's name, as the topology file spells it. Kept to the topology's
/// DNS-label rule because it ends up in topic names (`<topic>.conflict-<region>`)
/// and must stay a legal Kafka topic name there.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RegionId(String);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("`{0}` is not a valid region name (1-63 of [a-z0-9-], starting with a letter)")]
pub struct InvalidRegion(pub String);

impl RegionId {
    pub fn new(name: impl Into<String>) -> Result<RegionId, InvalidRegion> {
        let name = name.into();
        if chronik_topology::valid_region_name(&name) {
            Ok(RegionId(name))
        } else {
            Err(InvalidRegion(name))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl fmt::Debug for RegionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_names_follow_the_topology_rule() {
        assert!(RegionId::new("us-east").is_ok());
        assert!(RegionId::new("").is_err());
        assert!(RegionId::new("US").is_err());
        assert!(RegionId::new("eu.west").is_err());
        assert!(RegionId::new("a".repeat(64)).is_err());
    }
}
