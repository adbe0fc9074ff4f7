//! What a replica has seen, as a set of write names ("dots": region and
//! that region's counter at the write).
//!
//! Deliveries arrive out of order and some are lost, so "the highest
//! counter seen from each region" would claim writes that never arrived.
//! Each region's row is therefore a contiguous prefix `1..=base` plus the
//! dots seen above it. Rows fill up from two sources: entries merged (their
//! version vector's components are dots of writes to that key) and, after a
//! complete anti-entropy delta, the sender's whole knowledge.
//!
//! Invariant the replica keeps: a dot in its knowledge is a write whose
//! effect its store reflects (the key's entry descends from it, or the key
//! was collected after a tombstone that did). Forgetting dots is always
//! safe (peers just send more); claiming unseen ones is not.

use std::collections::{BTreeMap, BTreeSet};

use crate::{RegionId, VersionVector};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Row {
    pub base: u64,
    pub extra: BTreeSet<u64>,
}

impl Row {
    fn contains(&self, n: u64) -> bool {
        n <= self.base || self.extra.contains(&n)
    }

    fn compact(&mut self) {
        // Dots at or below the base are implied by it.
        self.extra = self.extra.split_off(&(self.base + 1));
        while self.extra.remove(&(self.base + 1)) {
            self.base += 1;
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Knowledge {
    rows: BTreeMap<RegionId, Row>,
}

impl Knowledge {
    pub fn new() -> Knowledge {
        Knowledge::default()
    }

    pub fn rows(&self) -> impl Iterator<Item = (&RegionId, &Row)> + '_ {
        self.rows.iter()
    }

    pub fn contains(&self, region: &RegionId, n: u64) -> bool {
        n == 0 || self.rows.get(region).is_some_and(|r| r.contains(n))
    }

    pub fn insert(&mut self, region: &RegionId, n: u64) {
        if n == 0 || self.contains(region, n) {
            return;
        }
        let row = self.rows.entry(region.clone()).or_default();
        row.extra.insert(n);
        row.compact();
    }

    /// Adds a whole row, as decoded from a peer.
    pub fn insert_row(
        &mut self,
        region: &RegionId,
        base: u64,
        extra: impl IntoIterator<Item = u64>,
    ) {
        let row = self.rows.entry(region.clone()).or_default();
        row.base = row.base.max(base);
        row.extra.extend(extra);
        row.compact();
    }

    pub fn base(&self, region: &RegionId) -> u64 {
        self.rows.get(region).map_or(0, |r| r.base)
    }

    /// Every component of `vv` is a known dot. Since each component names a
    /// write to the entry's key whose own history the entry contains, this
    /// means the whole entry is already reflected here.
    pub fn covers(&self, vv: &VersionVector) -> bool {
        vv.iter().all(|(r, c)| self.contains(r, c))
    }

    /// `vv` lies entirely inside the contiguous prefixes: every write in its
    /// history, named or not, has been seen.
    pub fn base_covers(&self, vv: &VersionVector) -> bool {
        vv.iter().all(|(r, c)| self.base(r) >= c)
    }

    pub fn join(&mut self, other: &Knowledge) {
        for (r, row) in &other.rows {
            self.insert_row(r, row.base, row.extra.iter().copied());
        }
    }

    /// Dots held above the contiguous prefixes.
    pub fn extra_len(&self) -> usize {
        self.rows.values().map(|r| r.extra.len()).sum()
    }

    /// Forgets the highest out-of-order dots until at most `max` remain;
    /// returns how many were forgotten. Safe by the invariant above: a
    /// forgotten dot is only re-sent, and merging it again changes nothing.
    pub fn trim(&mut self, max: usize) -> usize {
        let mut dropped = 0;
        while self.extra_len() > max {
            let Some(row) = self
                .rows
                .values_mut()
                .filter(|r| !r.extra.is_empty())
                .max_by_key(|r| r.extra.len())
            else {
                break;
            };
            row.extra.pop_last();
            dropped += 1;
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(s: &str) -> RegionId {
        RegionId::new(s).unwrap()
    }

    #[test]
    fn out_of_order_dots_fill_the_prefix() {
        let mut k = Knowledge::new();
        k.insert(&r("a"), 3);
        k.insert(&r("a"), 1);
        assert_eq!(k.base(&r("a")), 1);
        assert!(k.contains(&r("a"), 3) && !k.contains(&r("a"), 2));
        k.insert(&r("a"), 2);
        assert_eq!(k.base(&r("a")), 3);
        assert_eq!(k.extra_len(), 0);
    }

    #[test]
    fn covers_checks_components_and_base_covers_the_history() {
        let mut k = Knowledge::new();
        k.insert(&r("a"), 5);
        let vv: VersionVector = [(r("a"), 5)].into_iter().collect();
        assert!(k.covers(&vv));
        assert!(!k.base_covers(&vv));
        k.insert_row(&r("a"), 4, []);
        assert!(k.base_covers(&vv));
    }

    #[test]
    fn join_and_trim() {
        let mut k = Knowledge::new();
        k.insert(&r("a"), 10);
        k.insert(&r("a"), 12);
        let mut other = Knowledge::new();
        other.insert_row(&r("a"), 9, [11]);
        k.join(&other);
        assert_eq!(k.base(&r("a")), 12);
        k.insert(&r("b"), 5);
        k.insert(&r("b"), 7);
        assert_eq!(k.trim(1), 1);
        assert!(k.contains(&r("b"), 5) && !k.contains(&r("b"), 7));
    }
}
