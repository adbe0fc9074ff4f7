use std::collections::BTreeMap;
use std::fmt;

use crate::RegionId;

/// How two version vectors relate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Causality {
    Equal,
    /// `self` happened before the other: the other has seen everything
    /// `self` has, and more.
    Before,
    /// `self` dominates the other.
    After,
    /// Neither has seen the other's newest write.
    Concurrent,
}

/// Region -> counter. Zero counters are never stored, so two vectors that
/// mean the same thing compare and encode the same.
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct VersionVector(BTreeMap<RegionId, u64>);

impl VersionVector {
    pub fn new() -> VersionVector {
        VersionVector::default()
    }

    pub fn get(&self, region: &RegionId) -> u64 {
        self.0.get(region).copied().unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = (&RegionId, u64)> + '_ {
        self.0.iter().map(|(r, c)| (r, *c))
    }

    /// Bumps `region`'s own counter by one and returns it.
    pub fn increment(&mut self, region: &RegionId) -> u64 {
        let c = self.0.entry(region.clone()).or_insert(0);
        *c += 1;
        *c
    }

    /// Raises `region`'s counter to `counter` (never lowers it). A replica
    /// stamps each write with its region-wide counter rather than a per-key
    /// one, so a write is named by `(region, counter)` across all keys; that
    /// is what lets anti-entropy summaries be one vector per region.
    pub fn advance(&mut self, region: &RegionId, counter: u64) {
        if counter == 0 {
            return;
        }
        let c = self.0.entry(region.clone()).or_insert(0);
        *c = (*c).max(counter);
    }

    /// Pointwise maximum: the history of both.
    pub fn merge(&mut self, other: &VersionVector) {
        for (r, c) in &other.0 {
            self.advance(r, *c);
        }
    }

    pub fn merged(&self, other: &VersionVector) -> VersionVector {
        let mut v = self.clone();
        v.merge(other);
        v
    }

    /// `self` has seen everything `other` has (equal included).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other.0.iter().all(|(r, c)| self.get(r) >= *c)
    }

    /// `self` has seen everything `other` has, and more.
    pub fn dominates(&self, other: &VersionVector) -> bool {
        self.descends(other) && self != other
    }

    pub fn concurrent(&self, other: &VersionVector) -> bool {
        self.compare(other) == Causality::Concurrent
    }

    pub fn compare(&self, other: &VersionVector) -> Causality {
        match (self.descends(other), other.descends(self)) {
            (true, true) => Causality::Equal,
            (true, false) => Causality::After,
            (false, true) => Causality::Before,
            (false, false) => Causality::Concurrent,
        }
    }
}

impl FromIterator<(RegionId, u64)> for VersionVector {
    fn from_iter<I: IntoIterator<Item = (RegionId, u64)>>(iter: I) -> Self {
        let mut v = VersionVector::new();
        for (r, c) in iter {
            v.advance(&r, c);
        }
        v
    }
}

impl fmt::Debug for VersionVector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("{")?;
        for (i, (r, c)) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(f, "{r}:{c}")?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    fn vv(items: &[(&str, u64)]) -> VersionVector {
        items.iter().map(|(n, c)| (r(n), *c)).collect()
    }

    #[test]
    fn compare_covers_all_four_cases() {
        let a = vv(&[("a", 2), ("b", 1)]);
        assert_eq!(a.compare(&a.clone()), Causality::Equal);
        assert_eq!(a.compare(&vv(&[("a", 1)])), Causality::After);
        assert_eq!(vv(&[("a", 1)]).compare(&a), Causality::Before);
        assert_eq!(a.compare(&vv(&[("c", 1)])), Causality::Concurrent);
        assert!(a.dominates(&VersionVector::new()));
        assert!(!a.dominates(&a));
        assert!(a.concurrent(&vv(&[("a", 1), ("b", 2)])));
    }

    #[test]
    fn merge_is_the_pointwise_maximum_and_zero_is_absent() {
        let mut a = vv(&[("a", 2), ("b", 1)]);
        a.merge(&vv(&[("b", 3), ("c", 0)]));
        assert_eq!(a, vv(&[("a", 2), ("b", 3)]));
        assert_eq!(a.len(), 2);
        assert_eq!(a.increment(&r("c")), 1);
        a.advance(&r("a"), 1);
        assert_eq!(a.get(&r("a")), 2);
    }
}
