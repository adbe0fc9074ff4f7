//! Incremental fetch sessions (KIP-227), free of I/O: which partitions a
//! Fetch reads, and which of them its response carries.
//!
//! A consumer of many partitions sends its whole partition list once; the
//! broker keeps it (with each partition's fetch position) under a session
//! id, and later fetches name only what changed: partitions added or moved
//! to another position, and partitions forgotten. The response then names
//! only partitions with something new for the client: records, a changed
//! high watermark, log start offset or last stable offset, or an error.
//! Request and response shrink from every partition to the few that move.
//!
//! Sessions live in one broker's memory (a client reconnecting to another
//! broker starts a new one, as with Kafka). The cache is bounded: when it
//! is full, a new session takes the place of the least recently used one
//! idle for longer than `evict_after`, else the fetch is served without a
//! session (session id 0), which clients handle by sending full fetches.

use std::collections::HashMap;
use std::time::{Duration, Instant};

/// Kafka's FETCH_SESSION_ID_NOT_FOUND.
pub const FETCH_SESSION_ID_NOT_FOUND: i16 = 70;
/// Kafka's INVALID_FETCH_SESSION_EPOCH.
pub const INVALID_FETCH_SESSION_EPOCH: i16 = 71;

const INITIAL_EPOCH: i32 = 0;
const FINAL_EPOCH: i32 = -1;

/// A partition as the request names it: by topic id (Fetch v13+) or name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PartitionKey {
    pub topic_id: [u8; 16],
    /// Shared by a topic's partitions: sessions copy keys on every fetch.
    pub topic: std::sync::Arc<str>,
    pub partition: i32,
}

/// What a fetch asks of one partition.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub fetch_offset: i64,
    pub max_bytes: i32,
    pub current_leader_epoch: i32,
}

/// What the client was last told of a partition, to tell what changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Told {
    pub high_watermark: i64,
    pub last_stable_offset: i64,
    pub log_start_offset: i64,
}

const NOT_TOLD: Told = Told {
    high_watermark: -1,
    last_stable_offset: -1,
    log_start_offset: -1,
};

struct Session {
    /// The epoch the next request must carry (moved on when a request is
    /// accepted).
    next_epoch: i32,
    /// Sorted by key, one entry per partition: a topic's partitions are
    /// adjacent, and a fetch's answers line up with it by index (lookups
    /// by key happen only for the few partitions a request changes).
    partitions: Vec<(PartitionKey, Position, Told)>,
    used: Instant,
}

impl Session {
    fn find(&self, k: &PartitionKey) -> Result<usize, usize> {
        self.partitions.binary_search_by(|(e, _, _)| e.cmp(k))
    }
}

/// How a fetch relates to a session.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// No session (the client asked for none, or the cache is full): read
    /// and answer every requested partition.
    Sessionless,
    /// A full fetch that created session `id`: answer every partition.
    Full { id: i32 },
    /// Session `id`'s partitions, at their kept positions: answer only the
    /// ones with news.
    Incremental { id: i32 },
}

/// The request's session fields, and its partitions.
pub struct Request<'a> {
    pub session_id: i32,
    pub epoch: i32,
    pub partitions: &'a [(PartitionKey, Position)],
    pub forgotten: &'a [PartitionKey],
}

pub struct SessionCache {
    sessions: HashMap<i32, Session>,
    capacity: usize,
    evict_after: Duration,
    next_id: i32,
}

impl SessionCache {
    /// `capacity`: Kafka's max.incremental.fetch.session.cache.slots;
    /// `evict_after`: its min.incremental.fetch.session.eviction.ms.
    pub fn new(capacity: usize, evict_after: Duration, seed: i32) -> SessionCache {
        SessionCache {
            sessions: HashMap::new(),
            capacity,
            evict_after,
            next_id: seed.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.sessions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.sessions.is_empty()
    }

    /// Starts serving a fetch: the plan, or the error code of a whole
    /// response the request cannot be served with.
    pub fn begin(&mut self, req: &Request, now: Instant) -> Result<Plan, i16> {
        match (req.session_id, req.epoch) {
            (0, FINAL_EPOCH) => Ok(Plan::Sessionless),
            (0, INITIAL_EPOCH) => Ok(self.create(req.partitions, now)),
            (0, _) => Err(INVALID_FETCH_SESSION_EPOCH),
            (id, FINAL_EPOCH) => {
                self.sessions.remove(&id);
                Ok(Plan::Sessionless)
            }
            (id, INITIAL_EPOCH) => {
                self.sessions.remove(&id);
                Ok(self.create(req.partitions, now))
            }
            (id, epoch) => {
                let s = self
                    .sessions
                    .get_mut(&id)
                    .ok_or(FETCH_SESSION_ID_NOT_FOUND)?;
                if s.next_epoch != epoch {
                    return Err(INVALID_FETCH_SESSION_EPOCH);
                }
                s.next_epoch = if epoch == i32::MAX { 1 } else { epoch + 1 };
                for k in req.forgotten {
                    if let Ok(i) = s.find(k) {
                        s.partitions.remove(i);
                    }
                }
                for (k, pos) in req.partitions {
                    // A changed position keeps what was told: the client
                    // knows the watermarks it was sent.
                    match s.find(k) {
                        Ok(i) => s.partitions[i].1 = *pos,
                        Err(i) => s.partitions.insert(i, (k.clone(), *pos, NOT_TOLD)),
                    }
                }
                s.used = now;
                Ok(Plan::Incremental { id })
            }
        }
    }

    fn create(&mut self, partitions: &[(PartitionKey, Position)], now: Instant) -> Plan {
        if self.sessions.len() >= self.capacity {
            let oldest = self
                .sessions
                .iter()
                .filter(|(_, s)| now.saturating_duration_since(s.used) >= self.evict_after)
                .min_by_key(|(_, s)| s.used)
                .map(|(id, _)| *id);
            match oldest {
                Some(id) => {
                    self.sessions.remove(&id);
                }
                None => return Plan::Sessionless,
            }
        }
        let id = self.fresh_id();
        self.sessions.insert(
            id,
            Session {
                next_epoch: 1,
                partitions: {
                    let mut v: Vec<_> = partitions
                        .iter()
                        .map(|(k, p)| (k.clone(), *p, NOT_TOLD))
                        .collect();
                    // A partition named twice keeps its first position.
                    v.sort_by(|a, b| a.0.cmp(&b.0));
                    v.dedup_by(|b, a| a.0 == b.0);
                    v
                },
                used: now,
            },
        );
        Plan::Full { id }
    }

    fn fresh_id(&mut self) -> i32 {
        loop {
            let id = self.next_id;
            // Ids wrap within the positive range; 0 means "no session".
            self.next_id = if id == i32::MAX { 1 } else { id + 1 };
            if !self.sessions.contains_key(&id) {
                return id;
            }
        }
    }

    /// The partitions a fetch of session `id` reads, in the session's
    /// order, which [`SessionCache::finish`]'s answers follow.
    pub fn partitions(&self, id: i32) -> Vec<(PartitionKey, Position)> {
        self.sessions
            .get(&id)
            .map(|s| {
                s.partitions
                    .iter()
                    .map(|(k, p, _)| (k.clone(), *p))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Ends serving a fetch of session `id`: `answered[i]` is what the
    /// response holds for the session's i-th partition (as
    /// [`SessionCache::partitions`] listed them); records what it told the
    /// client. Returns which partitions go in the response: all of them for
    /// a full fetch, the ones with news for an incremental one.
    pub fn finish(&mut self, id: i32, answered: &[(Told, Answer)], incremental: bool) -> Vec<bool> {
        let Some(s) = self.sessions.get_mut(&id) else {
            return vec![true; answered.len()];
        };
        if s.partitions.len() != answered.len() {
            // Changed under us (closed and recreated by the same id): answer
            // everything, remember nothing.
            return vec![true; answered.len()];
        }
        s.partitions
            .iter_mut()
            .zip(answered)
            .map(|((_, _, told), (now, a))| {
                let news = *told != *now || a.records || a.error;
                *told = *now;
                !incremental || news
            })
            .collect()
    }
}

/// Besides the watermarks, what makes a partition news.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Answer {
    pub records: bool,
    pub error: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(p: i32) -> PartitionKey {
        PartitionKey {
            topic_id: [1; 16],
            topic: "t".into(),
            partition: p,
        }
    }

    fn answers(v: &[(PartitionKey, Told, Answer)]) -> Vec<(Told, Answer)> {
        v.iter().map(|(_, t, a)| (*t, *a)).collect()
    }

    fn pos(offset: i64) -> Position {
        Position {
            fetch_offset: offset,
            max_bytes: 1 << 20,
            current_leader_epoch: -1,
        }
    }

    fn told(hw: i64) -> Told {
        Told {
            high_watermark: hw,
            last_stable_offset: hw,
            log_start_offset: 0,
        }
    }

    const QUIET: Answer = Answer {
        records: false,
        error: false,
    };

    fn req<'a>(
        id: i32,
        epoch: i32,
        parts: &'a [(PartitionKey, Position)],
        forgotten: &'a [PartitionKey],
    ) -> Request<'a> {
        Request {
            session_id: id,
            epoch,
            partitions: parts,
            forgotten,
        }
    }

    #[test]
    fn a_session_answers_only_what_changed() {
        let mut c = SessionCache::new(10, Duration::from_secs(120), 1);
        let now = Instant::now();
        let all: Vec<_> = (0..3).map(|p| (key(p), pos(0))).collect();
        let Plan::Full { id } = c.begin(&req(0, 0, &all, &[]), now).unwrap() else {
            panic!()
        };
        let first: Vec<_> = (0..3).map(|p| (key(p), told(5), QUIET)).collect();
        assert_eq!(c.finish(id, &answers(&first), false), vec![true; 3]);
        // Nothing moved: an empty incremental response.
        assert_eq!(
            c.begin(&req(id, 1, &[], &[]), now),
            Ok(Plan::Incremental { id })
        );
        assert_eq!(c.partitions(id).len(), 3);
        assert_eq!(c.finish(id, &answers(&first), true), vec![false; 3]);
        // Partition 1's high watermark moved; partition 2 has records.
        assert_eq!(
            c.begin(&req(id, 2, &[], &[]), now),
            Ok(Plan::Incremental { id })
        );
        let next = vec![
            (key(0), told(5), QUIET),
            (key(1), told(6), QUIET),
            (
                key(2),
                told(5),
                Answer {
                    records: true,
                    error: false,
                },
            ),
        ];
        assert_eq!(c.finish(id, &answers(&next), true), vec![false, true, true]);
        // The client moves partition 2 on and forgets partition 0.
        let moved = [(key(2), pos(5))];
        c.begin(&req(id, 3, &moved, &[key(0)]), now).unwrap();
        assert_eq!(c.partitions(id), vec![(key(1), pos(0)), (key(2), pos(5))]);
    }

    #[test]
    fn a_full_fetch_naming_a_partition_twice_keeps_one_in_key_order() {
        let mut c = SessionCache::new(10, Duration::from_secs(120), 1);
        let asked = [(key(2), pos(7)), (key(0), pos(1)), (key(2), pos(9))];
        let Plan::Full { id } = c.begin(&req(0, 0, &asked, &[]), Instant::now()).unwrap() else {
            panic!()
        };
        assert_eq!(c.partitions(id), vec![(key(0), pos(1)), (key(2), pos(7))]);
        // Answers that do not line up with the session are all answered.
        assert_eq!(c.finish(id, &[(told(1), QUIET)], true), vec![true]);
    }

    #[test]
    fn stale_epochs_and_unknown_sessions_are_refused() {
        let mut c = SessionCache::new(10, Duration::from_secs(120), 1);
        let now = Instant::now();
        let Plan::Full { id } = c.begin(&req(0, 0, &[], &[]), now).unwrap() else {
            panic!()
        };
        c.finish(id, &[], false);
        assert_eq!(
            c.begin(&req(id, 5, &[], &[]), now),
            Err(INVALID_FETCH_SESSION_EPOCH)
        );
        assert_eq!(
            c.begin(&req(id + 1, 1, &[], &[]), now),
            Err(FETCH_SESSION_ID_NOT_FOUND)
        );
        assert_eq!(
            c.begin(&req(0, 3, &[], &[]), now),
            Err(INVALID_FETCH_SESSION_EPOCH)
        );
        // Closing: a sessionless fetch, and the id is gone.
        assert_eq!(c.begin(&req(id, -1, &[], &[]), now), Ok(Plan::Sessionless));
        assert!(c.is_empty());
    }

    #[test]
    fn a_full_cache_evicts_only_idle_sessions() {
        let mut c = SessionCache::new(2, Duration::from_secs(120), 1);
        let t0 = Instant::now();
        let a = c.begin(&req(0, 0, &[], &[]), t0).unwrap();
        let b = c.begin(&req(0, 0, &[], &[]), t0).unwrap();
        assert_ne!(a, b);
        assert_eq!(c.begin(&req(0, 0, &[], &[]), t0), Ok(Plan::Sessionless));
        let later = t0 + Duration::from_secs(121);
        assert!(matches!(
            c.begin(&req(0, 0, &[], &[]), later),
            Ok(Plan::Full { .. })
        ));
        assert_eq!(c.len(), 2);
    }
}
