//! A topic's recovery point objective (`chronik.rpo.ms`), measured and, with
//! `chronik.rpo.enforce=true`, held at its home.
//!
//! What a failover loses is the records acknowledged at home that no
//! required mirror region holds yet. The **at-risk span** is how much write
//! time that covers: from the commit of the oldest such record to the
//! newest commit, both by the home broker's own clock (never a producer's
//! timestamp, which a client sets as it likes). Enforcing the RPO keeps the
//! span below it: producers are slowed down through Kafka's
//! `throttle_time_ms` once accepting a write would make the span pass half
//! the RPO, and refused with a retriable error once it would pass the RPO.
//! Refusing stops the span from growing while a link is slow or down; it
//! shrinks again as the mirrors catch up.
//!
//! No I/O, and no clock reads besides [`clock_ms`] for the callers: every
//! rule takes the time as an argument.

use std::collections::VecDeque;

/// Entries kept per partition: one per high watermark advance. Past this the
/// newest advances are not recorded (the oldest, which the span is measured
/// from, are the ones that matter), so a span can only be overstated.
const MAX_ENTRIES: usize = 100_000;

/// When each offset was committed on this broker: `(end, at_ms)` means
/// offsets below `end` were committed by `at_ms`.
#[derive(Debug, Default)]
pub struct CommitTimes {
    entries: VecDeque<(i64, i64)>,
}

/// The at-risk span of a partition, in ms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// From the oldest unmirrored commit to the newest commit.
    pub at_risk_ms: i64,
    /// What it would be if a record were committed now.
    pub if_written_now_ms: i64,
}

impl CommitTimes {
    /// The high watermark moved to `end` at `at_ms`.
    pub fn committed(&mut self, end: i64, at_ms: i64) {
        if self.entries.back().is_some_and(|(e, _)| *e >= end) {
            return;
        }
        if self.entries.len() < MAX_ENTRIES {
            self.entries.push_back((end, at_ms));
        }
    }

    /// Forgets what is below `mirrored` (held by the required mirrors).
    pub fn mirrored(&mut self, mirrored: i64) {
        while self.entries.front().is_some_and(|(e, _)| *e <= mirrored) {
            self.entries.pop_front();
        }
    }

    /// The span, with the required mirrors holding everything below
    /// `mirrored`, the log holding `floor..hw` (`floor`: where this home's
    /// own writes start). `None` when nothing says when the oldest
    /// unmirrored record was committed (no advance seen since start).
    pub fn span(&self, mirrored: i64, floor: i64, hw: i64, now_ms: i64) -> Option<Span> {
        let oldest = mirrored.max(floor);
        if oldest >= hw {
            return Some(Span {
                at_risk_ms: 0,
                if_written_now_ms: 0,
            });
        }
        // The first advance past `oldest` committed it.
        let i = self.entries.partition_point(|(e, _)| *e <= oldest);
        let (_, first) = *self.entries.get(i).or(self.entries.front())?;
        let (_, last) = *self.entries.back()?;
        Some(Span {
            at_risk_ms: (last - first).max(0),
            if_written_now_ms: (now_ms - first).max(0),
        })
    }
}

/// Milliseconds on this process's monotonic clock: a span compares this
/// broker's own readings only, so a wall-clock step must not move it.
pub fn clock_ms() -> i64 {
    static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
    START
        .get_or_init(std::time::Instant::now)
        .elapsed()
        .as_millis() as i64
}

/// What produce does about a write to a topic whose RPO is enforced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Accept,
    /// Accept, and ask the client to wait this long before its next
    /// request (`throttle_time_ms`).
    Throttle {
        ms: i32,
    },
    /// Refuse (retriable): the span would pass the RPO.
    Refuse,
}

/// Margin below the RPO at which writes are refused: a write accepted now
/// commits a little later (a Raft round), and its acknowledgement must not
/// be what passes the RPO.
pub fn margin_ms(rpo_ms: i64) -> i64 {
    (rpo_ms / 10).min(250)
}

/// The decision for a write given the span if it were written now.
pub fn decide(rpo_ms: i64, if_written_now_ms: i64) -> Decision {
    let limit = rpo_ms - margin_ms(rpo_ms);
    // Nothing at risk yet: a write is always allowed to become the first.
    if if_written_now_ms > 0 && if_written_now_ms >= limit {
        return Decision::Refuse;
    }
    let half = rpo_ms / 2;
    if if_written_now_ms <= half || limit <= half {
        return Decision::Accept;
    }
    // Linear from nothing at half the RPO to the longest wait at the
    // refusal point: a slow link slows producers down smoothly before
    // anything is refused.
    let longest = (rpo_ms / 4).clamp(1, 1_000);
    let f = (if_written_now_ms - half) as f64 / (limit - half) as f64;
    Decision::Throttle {
        ms: ((f * longest as f64).ceil() as i32).max(1),
    }
}

/// Refused batches of idempotent producers, by (producer id, epoch): the
/// lowest base sequence refused.
///
/// A producer pipelines several batches. If the RPO refuses one and the
/// mirrors catch up before the next arrives, accepting the next would leave
/// a gap in the producer's sequence: it would fail at apply with
/// OUT_OF_ORDER_SEQUENCE, which clients do not all retry. So once a batch is
/// refused, the producer's later batches are refused the same (retriable)
/// way until the refused one comes back.
#[derive(Debug, Default)]
pub struct RefusedOrder {
    refused: std::collections::HashMap<(i64, i16), i32>,
}

/// Producers remembered per partition; the oldest entries are dropped past
/// it (a producer that never retries must not hold memory forever).
const MAX_REFUSED_PRODUCERS: usize = 10_000;

impl RefusedOrder {
    /// The decision for a batch of producer `(pid, epoch)` starting at
    /// `base_seq`, given what the RPO alone decided. Non-idempotent batches
    /// (`pid < 0`) have no order to keep.
    pub fn decide(&mut self, pid: i64, epoch: i16, base_seq: i32, alone: Decision) -> Decision {
        if pid < 0 {
            return alone;
        }
        let key = (pid, epoch);
        if alone == Decision::Refuse {
            if self.refused.len() >= MAX_REFUSED_PRODUCERS && !self.refused.contains_key(&key) {
                self.refused.clear();
            }
            let e = self.refused.entry(key).or_insert(base_seq);
            *e = (*e).min(base_seq);
            return Decision::Refuse;
        }
        match self.refused.get(&key) {
            Some(first) if base_seq > *first => Decision::Refuse,
            Some(_) => {
                self.refused.remove(&key);
                alone
            }
            None => alone,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_span_runs_from_the_oldest_unmirrored_commit_to_the_newest() {
        let mut c = CommitTimes::default();
        c.committed(10, 1_000);
        c.committed(20, 2_000);
        c.committed(20, 2_500); // no advance
        c.committed(35, 4_000);
        // Mirrors hold below 15: offset 15 was committed by 2_000.
        assert_eq!(
            c.span(15, 0, 35, 5_000),
            Some(Span {
                at_risk_ms: 2_000,
                if_written_now_ms: 3_000
            })
        );
        // Mirrors hold below 10 exactly: offset 10 came with the 2nd advance.
        assert_eq!(c.span(10, 0, 35, 5_000).unwrap().at_risk_ms, 2_000);
        assert_eq!(c.span(9, 0, 35, 5_000).unwrap().at_risk_ms, 3_000);
        // Everything mirrored, or below this home's floor.
        assert_eq!(c.span(35, 0, 35, 9_000).unwrap().if_written_now_ms, 0);
        assert_eq!(c.span(0, 35, 35, 9_000).unwrap().at_risk_ms, 0);
        c.mirrored(20);
        assert_eq!(c.span(20, 0, 35, 5_000).unwrap().at_risk_ms, 0);
        assert_eq!(
            c.span(5, 0, 35, 5_000).unwrap().if_written_now_ms,
            1_000,
            "older than what is kept: the oldest kept is the best bound left"
        );
        assert_eq!(CommitTimes::default().span(0, 0, 5, 1), None);
    }

    #[test]
    fn a_producers_later_batches_wait_for_its_refused_one() {
        let mut o = RefusedOrder::default();
        assert_eq!(o.decide(7, 0, 100, Decision::Refuse), Decision::Refuse);
        // The mirrors caught up, but 120 and 140 were in flight behind 100.
        assert_eq!(o.decide(7, 0, 120, Decision::Accept), Decision::Refuse);
        assert_eq!(o.decide(7, 0, 140, Decision::Accept), Decision::Refuse);
        // Another producer, or another epoch of this one, is not held.
        assert_eq!(o.decide(8, 0, 5, Decision::Accept), Decision::Accept);
        assert_eq!(o.decide(7, 1, 0, Decision::Accept), Decision::Accept);
        // The refused batch comes back: accepted, and the ones after it too.
        assert_eq!(o.decide(7, 0, 100, Decision::Accept), Decision::Accept);
        assert_eq!(o.decide(7, 0, 120, Decision::Accept), Decision::Accept);
        let t = Decision::Throttle { ms: 5 };
        assert_eq!(o.decide(7, 0, 160, t), t);
        assert_eq!(o.decide(-1, -1, -1, Decision::Accept), Decision::Accept);
    }

    #[test]
    fn writes_are_throttled_past_half_the_rpo_and_refused_before_it() {
        let rpo = 5_000;
        assert_eq!(decide(rpo, 0), Decision::Accept);
        assert_eq!(decide(rpo, 2_500), Decision::Accept);
        let Decision::Throttle { ms: a } = decide(rpo, 3_000) else {
            panic!()
        };
        let Decision::Throttle { ms: b } = decide(rpo, 4_500) else {
            panic!()
        };
        assert!(0 < a && a < b && b <= 1_000, "{a} {b}");
        assert_eq!(decide(rpo, 4_750), Decision::Refuse);
        assert_eq!(decide(rpo, 60_000), Decision::Refuse);
        // An RPO of 0: nothing may be at risk, every unmirrored write waits.
        assert_eq!(decide(0, 0), Decision::Accept);
        assert_eq!(decide(0, 1), Decision::Refuse);
        assert_eq!(decide(100, 50), Decision::Accept);
        assert_eq!(decide(100, 90), Decision::Refuse);
    }
}
