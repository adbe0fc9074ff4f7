//! Deleting a mirrored topic at its home. The home brokers mark it and stop
//! taking writes, but keep its data until this dc-link has shipped all of it
//! to every mirror region it can reach; then the dc-link tells them to
//! delete it, and the deletion reaches the mirrors through metadata-sync.
//! A mirror region whose link is down, or whose copy refuses appends, is
//! not waited for: it would never catch up, and its copy goes anyway.
//!
//! The decision is pure; `Shared::drain_deleted` does the I/O.

use std::collections::BTreeMap;

use serde::Deserialize;

use crate::lag::PartitionState;

/// A home topic waiting to be drained, as `GET /v1/deleting` lists it.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct Deleting {
    pub name: String,
    pub id: uuid::Uuid,
}

#[derive(Debug, Deserialize)]
pub struct DeletingList {
    pub topics: Vec<Deleting>,
}

/// One mirror partition as the sender sees it.
#[derive(Debug, Clone, Copy)]
pub struct Shipped {
    /// The home high watermark last observed.
    pub home_end: i64,
    /// The mirror's durable log end.
    pub acked: i64,
    pub state: PartitionState,
}

/// Whether a deleting topic may go: every partition is held up to the home
/// end by each mirror region whose link is up and whose copy takes data.
/// `shipped(mirror, partition)` is `None` when nothing was observed yet
/// (wait for it).
pub fn drained<'a>(
    partitions: i32,
    mirrors: impl IntoIterator<Item = &'a String>,
    link_up: impl Fn(&str) -> bool,
    shipped: impl Fn(&str, i32) -> Option<Shipped>,
) -> bool {
    mirrors.into_iter().filter(|m| link_up(m)).all(|m| {
        (0..partitions).all(|p| match shipped(m, p) {
            None => false,
            Some(s) if s.state == PartitionState::Failed => true,
            Some(s) => s.acked >= s.home_end,
        })
    })
}

/// When each deleting topic was first seen, in discovery rounds: the home
/// high watermarks observed in a later round were read after writes
/// stopped, so they are final.
#[derive(Debug, Default)]
pub struct Tracker {
    first_seen: BTreeMap<(String, uuid::Uuid), u64>,
}

impl Tracker {
    /// Records the current list; returns the topics whose observed high
    /// watermarks are final (seen in a round before `round`).
    pub fn settled(&mut self, listed: &[Deleting], round: u64) -> Vec<Deleting> {
        self.first_seen
            .retain(|(n, id), _| listed.iter().any(|d| d.name == *n && d.id == *id));
        listed
            .iter()
            .filter(|d| {
                let seen = *self
                    .first_seen
                    .entry((d.name.clone(), d.id))
                    .or_insert(round);
                seen < round
            })
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(home_end: i64, acked: i64) -> Option<Shipped> {
        Some(Shipped {
            home_end,
            acked,
            state: PartitionState::Ok,
        })
    }

    #[test]
    fn drained_only_when_every_reachable_mirror_holds_every_partition() {
        let mirrors = vec!["eu".to_string(), "ap".to_string()];
        let up = |_: &str| true;
        assert!(drained(2, &mirrors, up, |_, _| at(10, 10)));
        assert!(!drained(2, &mirrors, up, |m, p| if m == "ap" && p == 1 {
            at(10, 9)
        } else {
            at(10, 10)
        }));
        // Nothing observed yet: wait.
        assert!(!drained(2, &mirrors, up, |m, _| if m == "eu" {
            None
        } else {
            at(10, 10)
        }));
        // A region whose link is down is not waited for.
        assert!(drained(
            2,
            &mirrors,
            |m| m != "ap",
            |m, _| if m == "ap" { at(10, 0) } else { at(10, 10) }
        ));
        // Nor a copy that refuses appends.
        assert!(drained(1, &mirrors, up, |m, _| if m == "ap" {
            Some(Shipped {
                home_end: 10,
                acked: 0,
                state: PartitionState::Failed,
            })
        } else {
            at(10, 10)
        }));
        // A copy that is only retrying is waited for.
        assert!(!drained(1, &mirrors, up, |m, _| if m == "ap" {
            Some(Shipped {
                home_end: 10,
                acked: 0,
                state: PartitionState::Retrying,
            })
        } else {
            at(10, 10)
        }));
    }

    #[test]
    fn a_topic_settles_one_round_after_it_is_first_seen() {
        let a = Deleting {
            name: "a".into(),
            id: uuid::Uuid::from_u128(1),
        };
        let mut t = Tracker::default();
        assert!(t.settled(std::slice::from_ref(&a), 5).is_empty());
        assert!(t.settled(std::slice::from_ref(&a), 5).is_empty());
        assert_eq!(t.settled(std::slice::from_ref(&a), 6), vec![a.clone()]);
        // Gone from the list, then back (a new deletion): starts over.
        assert!(t.settled(&[], 7).is_empty());
        assert!(t.settled(std::slice::from_ref(&a), 8).is_empty());
    }
}
