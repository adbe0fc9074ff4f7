//! One connection's idempotent batches reach a partition in order, or wait.
//!
//! A Kafka client pipelines up to five produce requests on a connection.
//! When this broker refuses one of them before it reaches the log, with a
//! retriable error (a new Raft leader that has not applied its first entry
//! yet, an ISR below `min.insync.replicas`), the next one can arrive a
//! moment later, when the cause has passed. It would then reach the log
//! with a gap in its sequence numbers and be refused with
//! OUT_OF_ORDER_SEQUENCE_NUMBER. librdkafka answers such a gap by bumping
//! the producer's epoch for every partition and resending whatever it had
//! not seen acknowledged under new sequence numbers. A record whose
//! acknowledgement a killed leader never sent, though it had committed it,
//! is then written twice.
//!
//! So once a producer's batch has been refused here, its later batches for
//! the same partition on the same connection get the same retriable answer.
//! This lasts until the refused batch comes back, or until the log shows
//! that it reached the partition another way (through another broker that
//! led it meanwhile). The client then resends them in order.
//!
//! Pure: the produce handler asks it, and tells it what it refused.

use std::collections::HashMap;

use chronik_wire::producer::next_seq;

/// The idempotence fields of a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ids {
    pub producer_id: i64,
    pub epoch: i16,
    pub first_seq: i32,
}

impl Ids {
    fn idempotent(&self) -> bool {
        self.producer_id >= 0 && self.first_seq >= 0
    }
}

#[derive(Debug, Clone, Copy)]
struct Refused {
    epoch: i16,
    seq: i32,
    code: i16,
}

/// Bounds what one connection keeps: a connection sending for more
/// (partition, producer) pairs than this forgets the refusals instead.
const MAX_REMEMBERED: usize = 4096;

/// `a` comes at or after `b` in sequence order: sequences run from 0 to
/// `i32::MAX` and then start at 0 again, and the batches compared are at
/// most a few thousand records apart.
fn at_or_after(a: i32, b: i32) -> bool {
    const SPAN: i64 = 1 << 31;
    (a as i64 - b as i64).rem_euclid(SPAN) < SPAN / 2
}

#[derive(Debug, Default)]
pub struct HeldBack {
    refused: HashMap<(String, i32, i64), Refused>,
}

impl HeldBack {
    /// The error code to answer `ids` with, if an earlier batch of its
    /// producer was refused here and has not been written since.
    /// `written`: the (epoch, last sequence) the partition's log holds for
    /// the producer, asked only when a refusal is remembered.
    pub fn check(
        &mut self,
        topic: &str,
        partition: i32,
        ids: Ids,
        written: impl FnOnce() -> Option<(i16, i32)>,
    ) -> Option<i16> {
        if !ids.idempotent() || self.refused.is_empty() {
            return None;
        }
        let key = (topic.to_string(), partition, ids.producer_id);
        let r = *self.refused.get(&key)?;
        let resent = ids.epoch != r.epoch || !at_or_after(ids.first_seq, next_seq(r.seq));
        let arrived = written().is_some_and(|(epoch, last)| {
            epoch > r.epoch || (epoch == r.epoch && at_or_after(last, r.seq))
        });
        if resent || arrived {
            self.refused.remove(&key);
            return None;
        }
        Some(r.code)
    }

    /// This connection refused `ids` with retriable `code` before it
    /// reached the log.
    pub fn refused(&mut self, topic: &str, partition: i32, ids: Ids, code: i16) {
        if !ids.idempotent() {
            return;
        }
        if self.refused.len() >= MAX_REMEMBERED {
            self.refused.clear();
        }
        let key = (topic.to_string(), partition, ids.producer_id);
        match self.refused.get(&key) {
            // The earliest refused batch is the one the client must resend first.
            Some(r) if r.epoch == ids.epoch && at_or_after(ids.first_seq, r.seq) => {}
            _ => {
                self.refused.insert(
                    key,
                    Refused {
                        epoch: ids.epoch,
                        seq: ids.first_seq,
                        code,
                    },
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOT_LEADER: i16 = 6;
    const NOT_ENOUGH: i16 = 19;

    fn ids(epoch: i16, first_seq: i32) -> Ids {
        Ids {
            producer_id: 7,
            epoch,
            first_seq,
        }
    }

    #[test]
    fn later_batches_wait_for_the_refused_one_to_come_back() {
        let mut h = HeldBack::default();
        assert_eq!(h.check("t", 0, ids(0, 10), || None), None);
        h.refused("t", 0, ids(0, 10), NOT_LEADER);
        // Pipelined right behind it: same answer, even once the leader is ready.
        assert_eq!(
            h.check("t", 0, ids(0, 15), || Some((0, 9))),
            Some(NOT_LEADER)
        );
        assert_eq!(
            h.check("t", 0, ids(0, 20), || Some((0, 9))),
            Some(NOT_LEADER)
        );
        // Other partitions and producers are not held.
        assert_eq!(h.check("t", 1, ids(0, 15), || None), None);
        assert_eq!(h.check("u", 0, ids(0, 15), || None), None);
        // The refused batch again: it goes through, and so do the ones after.
        assert_eq!(h.check("t", 0, ids(0, 10), || Some((0, 9))), None);
        assert_eq!(h.check("t", 0, ids(0, 15), || Some((0, 14))), None);
    }

    #[test]
    fn the_earliest_refusal_is_the_one_kept() {
        let mut h = HeldBack::default();
        h.refused("t", 0, ids(0, 10), NOT_ENOUGH);
        h.refused("t", 0, ids(0, 15), NOT_LEADER);
        assert_eq!(h.check("t", 0, ids(0, 15), || None), Some(NOT_ENOUGH));
        // A refusal at a new epoch replaces the old one.
        h.refused("t", 0, ids(1, 0), NOT_LEADER);
        assert_eq!(h.check("t", 0, ids(1, 5), || None), Some(NOT_LEADER));
    }

    #[test]
    fn a_refused_batch_written_through_another_broker_releases_the_rest() {
        let mut h = HeldBack::default();
        h.refused("t", 0, ids(0, 10), NOT_LEADER);
        // The client moved to another leader, which wrote 10..49; the lead
        // came back here.
        assert_eq!(h.check("t", 0, ids(0, 50), || Some((0, 49))), None);
        assert_eq!(h.check("t", 0, ids(0, 55), || Some((0, 49))), None);
        // A newer epoch in the log also releases it.
        h.refused("t", 0, ids(0, 60), NOT_LEADER);
        assert_eq!(h.check("t", 0, ids(0, 65), || Some((1, 0))), None);
    }

    #[test]
    fn a_new_epoch_from_the_client_is_not_held() {
        let mut h = HeldBack::default();
        h.refused("t", 0, ids(0, 10), NOT_LEADER);
        assert_eq!(h.check("t", 0, ids(1, 0), || None), None);
        assert_eq!(h.check("t", 0, ids(0, 15), || None), None, "forgotten");
    }

    #[test]
    fn plain_batches_and_wrapped_sequences() {
        let mut h = HeldBack::default();
        let plain = Ids {
            producer_id: -1,
            epoch: -1,
            first_seq: -1,
        };
        h.refused("t", 0, plain, NOT_LEADER);
        assert_eq!(h.check("t", 0, plain, || None), None);
        h.refused("t", 0, ids(0, i32::MAX - 2), NOT_LEADER);
        assert_eq!(h.check("t", 0, ids(0, 2), || None), Some(NOT_LEADER));
        assert_eq!(h.check("t", 0, ids(0, i32::MAX - 2), || None), None);
    }
}
