//! The transaction coordinator's rules (KIP-98, with KIP-360's epoch bumps):
//! what InitProducerId, AddPartitionsToTxn, AddOffsetsToTxn, EndTxn and the
//! transaction timeout do to one transactional id's state. Pure: the state,
//! the request and the clock in, the next state (or the Kafka error) out,
//! so every rule is unit-tested without a broker.
//!
//! The coordinator (`super`) keeps these states in the regional controller
//! and writes the markers.

use std::collections::BTreeSet;

use kafka_protocol::error::ResponseError as E;
use serde::{Deserialize, Serialize};

/// Kafka's `transaction.max.timeout.ms` default: a producer asking for a
/// longer `transaction.timeout.ms` is refused.
pub const MAX_TIMEOUT_MS: i32 = 900_000;

/// Past this epoch a producer id is retired and a new one handed out.
const LAST_EPOCH: i16 = i16::MAX - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Status {
    /// A producer id, no transaction open.
    Empty,
    Ongoing,
    /// EndTxn was decided; the markers are being written.
    PrepareCommit,
    PrepareAbort,
    CompleteCommit,
    CompleteAbort,
}

impl Status {
    /// Kafka's name, as DescribeTransactions and ListTransactions answer it.
    pub fn kafka_name(self) -> &'static str {
        match self {
            Status::Empty => "Empty",
            Status::Ongoing => "Ongoing",
            Status::PrepareCommit => "PrepareCommit",
            Status::PrepareAbort => "PrepareAbort",
            Status::CompleteCommit => "CompleteCommit",
            Status::CompleteAbort => "CompleteAbort",
        }
    }

    fn settled(self) -> bool {
        matches!(
            self,
            Status::Empty | Status::CompleteCommit | Status::CompleteAbort
        )
    }
}

/// An offset committed inside a transaction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TxnOffset {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub offset: crate::groups::record::OffsetRecord,
}

/// One transactional id's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Txn {
    pub producer_id: i64,
    pub producer_epoch: i16,
    /// The epoch before the last bump by InitProducerId, so a producer that
    /// retries it (KIP-360) gets the same answer, not a second bump.
    pub last_epoch: i16,
    pub timeout_ms: i32,
    pub status: Status,
    /// The partitions written in the open (or ending) transaction.
    pub partitions: BTreeSet<(String, i32)>,
    /// Consumer groups whose offsets it commits (AddOffsetsToTxn).
    pub groups: BTreeSet<String>,
    /// Offsets committed in the transaction (TxnOffsetCommit), made the
    /// groups' committed offsets when it commits.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub offsets: Vec<TxnOffset>,
    /// When the open transaction began (its first AddPartitionsToTxn).
    pub started_ms: i64,
    pub updated_ms: i64,
    /// How many transactions this id has ended: the number of the one
    /// ending now, noted in its commit markers.
    #[serde(default)]
    pub ended: i64,
}

impl Txn {
    /// A producer id and epoch with no transaction open.
    fn idle(producer_id: i64, epoch: i16, last_epoch: i16, timeout_ms: i32, now_ms: i64) -> Txn {
        Txn {
            producer_id,
            producer_epoch: epoch,
            last_epoch,
            timeout_ms,
            status: Status::Empty,
            partitions: BTreeSet::new(),
            groups: BTreeSet::new(),
            offsets: Vec::new(),
            started_ms: -1,
            updated_ms: now_ms,
            ended: 0,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TxnError {
    #[error("the transaction is still completing; retry")]
    ConcurrentTransactions,
    #[error("the producer id does not belong to this transactional id")]
    InvalidProducerIdMapping,
    #[error("a newer producer with the same transactional id has been started")]
    ProducerFenced,
    #[error("the request is not valid in the transaction's state")]
    InvalidTxnState,
    #[error("transaction.timeout.ms must be between 1 and {MAX_TIMEOUT_MS}")]
    InvalidTransactionTimeout,
}

impl crate::error::KafkaCode for TxnError {
    fn kafka_code(&self) -> i16 {
        match self {
            TxnError::ConcurrentTransactions => E::ConcurrentTransactions.code(),
            TxnError::InvalidProducerIdMapping => E::InvalidProducerIdMapping.code(),
            TxnError::ProducerFenced => E::ProducerFenced.code(),
            TxnError::InvalidTxnState => E::InvalidTxnState.code(),
            TxnError::InvalidTransactionTimeout => E::InvalidTransactionTimeout.code(),
        }
    }
}

/// What InitProducerId does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Init {
    /// Answer the new state's producer id and epoch.
    Ready(Txn),
    /// A transaction was open: it is aborted under a bumped epoch (fencing
    /// the producer that opened it) and the caller answers
    /// CONCURRENT_TRANSACTIONS; the client retries once the markers are in.
    AbortFirst(Txn),
}

/// InitProducerId for a transactional id. `expected` is the producer id and
/// epoch a producer already holds (KIP-360), `fresh_id` mints a producer id.
pub fn init_producer_id(
    current: Option<&Txn>,
    timeout_ms: i32,
    expected: Option<(i64, i16)>,
    now_ms: i64,
    fresh_id: impl FnOnce() -> i64,
) -> Result<Init, TxnError> {
    if !(1..=MAX_TIMEOUT_MS).contains(&timeout_ms) {
        return Err(TxnError::InvalidTransactionTimeout);
    }
    let Some(cur) = current else {
        return Ok(Init::Ready(Txn::idle(
            fresh_id(),
            0,
            -1,
            timeout_ms,
            now_ms,
        )));
    };
    if let Some((pid, epoch)) = expected {
        let retried = pid == cur.producer_id && epoch == cur.last_epoch && cur.status.settled();
        if retried {
            return Ok(Init::Ready(cur.clone()));
        }
        if pid != cur.producer_id || epoch != cur.producer_epoch {
            return Err(TxnError::ProducerFenced);
        }
    }
    match cur.status {
        Status::PrepareCommit | Status::PrepareAbort => Err(TxnError::ConcurrentTransactions),
        Status::Ongoing => Ok(Init::AbortFirst(Txn {
            producer_epoch: bump(cur.producer_epoch),
            status: Status::PrepareAbort,
            updated_ms: now_ms,
            ..cur.clone()
        })),
        Status::Empty | Status::CompleteCommit | Status::CompleteAbort => {
            let (producer_id, producer_epoch) = if cur.producer_epoch >= LAST_EPOCH {
                (fresh_id(), 0)
            } else {
                (cur.producer_id, cur.producer_epoch + 1)
            };
            // The count goes on: commit numbers stay unique per producer id.
            Ok(Init::Ready(Txn {
                ended: cur.ended,
                ..Txn::idle(
                    producer_id,
                    producer_epoch,
                    cur.producer_epoch,
                    timeout_ms,
                    now_ms,
                )
            }))
        }
    }
}

fn bump(epoch: i16) -> i16 {
    epoch.saturating_add(1)
}

/// The producer id and epoch of a request must be the transaction's own.
fn check_producer(cur: Option<&Txn>, pid: i64, epoch: i16) -> Result<&Txn, TxnError> {
    let cur = cur.ok_or(TxnError::InvalidProducerIdMapping)?;
    if pid != cur.producer_id {
        return Err(TxnError::InvalidProducerIdMapping);
    }
    if epoch != cur.producer_epoch {
        return Err(TxnError::ProducerFenced);
    }
    Ok(cur)
}

/// AddPartitionsToTxn (client versions) and AddOffsetsToTxn (whose group
/// is added with `groups`): the transaction is open from now on, holding
/// these. A request adding nothing new returns the state unchanged.
pub fn add(
    current: Option<&Txn>,
    pid: i64,
    epoch: i16,
    partitions: &[(String, i32)],
    groups: &[String],
    now_ms: i64,
) -> Result<Txn, TxnError> {
    let cur = check_producer(current, pid, epoch)?;
    match cur.status {
        Status::PrepareCommit | Status::PrepareAbort => {
            return Err(TxnError::ConcurrentTransactions)
        }
        Status::Ongoing
            if partitions.iter().all(|p| cur.partitions.contains(p))
                && groups.iter().all(|g| cur.groups.contains(g)) =>
        {
            return Ok(cur.clone());
        }
        _ => {}
    }
    let mut next = cur.clone();
    if cur.status != Status::Ongoing {
        next.partitions.clear();
        next.groups.clear();
        next.offsets.clear();
        next.started_ms = now_ms;
    }
    next.status = Status::Ongoing;
    next.partitions.extend(partitions.iter().cloned());
    next.groups.extend(groups.iter().cloned());
    next.updated_ms = now_ms;
    Ok(next)
}

/// TxnOffsetCommit: the offsets join the open transaction, which must
/// hold the group (AddOffsetsToTxn came first). A later commit of the same
/// partition replaces the earlier one.
pub fn commit_offsets(
    current: Option<&Txn>,
    pid: i64,
    epoch: i16,
    offsets: Vec<TxnOffset>,
    now_ms: i64,
) -> Result<Txn, TxnError> {
    let cur = check_producer(current, pid, epoch)?;
    if cur.status != Status::Ongoing || offsets.iter().any(|o| !cur.groups.contains(&o.group)) {
        return Err(TxnError::InvalidTxnState);
    }
    let mut next = cur.clone();
    for o in offsets {
        next.offsets
            .retain(|e| (&e.group, &e.topic, e.partition) != (&o.group, &o.topic, o.partition));
        next.offsets.push(o);
    }
    next.updated_ms = now_ms;
    Ok(next)
}

/// What EndTxn does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Answer success once this state (PrepareCommit or PrepareAbort) is
    /// stored; then write the markers and [`complete`] it.
    Prepare(Txn),
    /// A retry of an EndTxn already done: answer success.
    AlreadyDone,
}

pub fn end_txn(
    current: Option<&Txn>,
    pid: i64,
    epoch: i16,
    commit: bool,
    now_ms: i64,
) -> Result<End, TxnError> {
    let cur = check_producer(current, pid, epoch)?;
    match (cur.status, commit) {
        (Status::Ongoing, _) => Ok(End::Prepare(Txn {
            status: if commit {
                Status::PrepareCommit
            } else {
                Status::PrepareAbort
            },
            updated_ms: now_ms,
            ..cur.clone()
        })),
        (Status::CompleteCommit, true) | (Status::CompleteAbort, false) => Ok(End::AlreadyDone),
        (Status::PrepareCommit, true) | (Status::PrepareAbort, false) => {
            Err(TxnError::ConcurrentTransactions)
        }
        _ => Err(TxnError::InvalidTxnState),
    }
}

/// Every marker of a prepared transaction is written: it is complete.
pub fn complete(cur: &Txn, now_ms: i64) -> Option<Txn> {
    let status = match cur.status {
        Status::PrepareCommit => Status::CompleteCommit,
        Status::PrepareAbort => Status::CompleteAbort,
        _ => return None,
    };
    Some(Txn {
        status,
        partitions: BTreeSet::new(),
        groups: BTreeSet::new(),
        offsets: Vec::new(),
        started_ms: -1,
        updated_ms: now_ms,
        ended: cur.ended + 1,
        ..cur.clone()
    })
}

/// Whether an idle transactional id is forgotten: no transaction open or
/// ending, and no request for `expiration_ms` (Kafka's
/// `transactional.id.expiration.ms`). A producer that comes back later
/// starts over with a new producer id.
pub fn id_expired(cur: &Txn, now_ms: i64, expiration_ms: i64) -> bool {
    cur.status.settled() && now_ms.saturating_sub(cur.updated_ms) >= expiration_ms
}

/// An open transaction past its timeout is aborted under a bumped epoch, so
/// the producer that opened it is fenced (its next request gets
/// PRODUCER_FENCED) and cannot commit what was aborted.
pub fn expire(cur: &Txn, now_ms: i64) -> Option<Txn> {
    (cur.status == Status::Ongoing
        && now_ms >= cur.started_ms.saturating_add(cur.timeout_ms as i64))
    .then(|| Txn {
        producer_epoch: bump(cur.producer_epoch),
        status: Status::PrepareAbort,
        updated_ms: now_ms,
        ..cur.clone()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_000_000;

    fn ready(i: Result<Init, TxnError>) -> Txn {
        match i.unwrap() {
            Init::Ready(t) => t,
            other => panic!("expected Ready, got {other:?}"),
        }
    }

    fn new_txn() -> Txn {
        ready(init_producer_id(None, 60_000, None, NOW, || 77))
    }

    fn p(t: &str, i: i32) -> (String, i32) {
        (t.to_string(), i)
    }

    #[test]
    fn a_new_id_gets_a_producer_then_each_init_bumps_the_epoch() {
        let t = new_txn();
        assert_eq!(
            (t.producer_id, t.producer_epoch, t.status),
            (77, 0, Status::Empty)
        );
        let t2 = ready(init_producer_id(Some(&t), 60_000, None, NOW + 1, || 99));
        assert_eq!(
            (t2.producer_id, t2.producer_epoch, t2.last_epoch),
            (77, 1, 0)
        );
        // The older producer is fenced from here on.
        assert_eq!(
            add(Some(&t2), 77, 0, &[p("a", 0)], &[], NOW),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(
            init_producer_id(Some(&t), 900_001, None, NOW, || 1),
            Err(TxnError::InvalidTransactionTimeout)
        );
        assert_eq!(
            init_producer_id(Some(&t), 0, None, NOW, || 1),
            Err(TxnError::InvalidTransactionTimeout)
        );
    }

    #[test]
    fn a_retried_init_with_the_epoch_held_before_is_answered_again() {
        let t = new_txn();
        let t2 = ready(init_producer_id(Some(&t), 60_000, Some((77, 0)), NOW, || 1));
        assert_eq!(t2.producer_epoch, 1);
        // The answer was lost; the producer asks again with what it held.
        let again = ready(init_producer_id(
            Some(&t2),
            60_000,
            Some((77, 0)),
            NOW,
            || 1,
        ));
        assert_eq!(again, t2);
        // A producer holding neither the current nor the previous epoch is fenced.
        let t3 = ready(init_producer_id(Some(&t2), 60_000, None, NOW, || 1));
        assert_eq!(
            init_producer_id(Some(&t3), 60_000, Some((77, 0)), NOW, || 1),
            Err(TxnError::ProducerFenced)
        );
    }

    #[test]
    fn an_exhausted_epoch_moves_to_a_new_producer_id() {
        let mut t = new_txn();
        t.producer_epoch = LAST_EPOCH;
        let t2 = ready(init_producer_id(Some(&t), 60_000, None, NOW, || 500));
        assert_eq!((t2.producer_id, t2.producer_epoch), (500, 0));
    }

    #[test]
    fn commit_and_abort_go_through_prepare_and_complete() {
        for commit in [true, false] {
            let t = new_txn();
            let t = add(Some(&t), 77, 0, &[p("a", 0)], &[], NOW + 5).unwrap();
            assert_eq!((t.status, t.started_ms), (Status::Ongoing, NOW + 5));
            let t = add(Some(&t), 77, 0, &[p("b", 1)], &["g".into()], NOW + 6).unwrap();
            assert_eq!(t.partitions.len(), 2);
            assert_eq!(t.started_ms, NOW + 5, "a transaction starts once");
            let End::Prepare(prepared) = end_txn(Some(&t), 77, 0, commit, NOW + 7).unwrap() else {
                panic!("prepare expected");
            };
            // While the markers are written, the producer waits.
            let refused = [
                add(Some(&prepared), 77, 0, &[p("a", 0)], &[], NOW).err(),
                end_txn(Some(&prepared), 77, 0, commit, NOW).err(),
                end_txn(Some(&prepared), 77, 0, !commit, NOW).err(),
                init_producer_id(Some(&prepared), 60_000, None, NOW, || 1).err(),
            ];
            use TxnError::{ConcurrentTransactions as Retry, InvalidTxnState as Invalid};
            assert_eq!(
                refused,
                [Some(Retry), Some(Retry), Some(Invalid), Some(Retry)]
            );
            let done = complete(&prepared, NOW + 8).unwrap();
            assert!(done.partitions.is_empty() && done.groups.is_empty());
            // A retried EndTxn of the same kind succeeds; the other kind does not.
            assert_eq!(
                end_txn(Some(&done), 77, 0, commit, NOW),
                Ok(End::AlreadyDone)
            );
            assert_eq!(
                end_txn(Some(&done), 77, 0, !commit, NOW),
                Err(TxnError::InvalidTxnState)
            );
            // The next transaction starts afresh.
            let next = add(Some(&done), 77, 0, &[p("c", 0)], &[], NOW + 9).unwrap();
            assert_eq!(next.partitions, [p("c", 0)].into_iter().collect());
            assert_eq!(next.started_ms, NOW + 9);
        }
    }

    #[test]
    fn requests_from_the_wrong_producer_are_refused() {
        let t = add(Some(&new_txn()), 77, 0, &[p("a", 0)], &[], NOW).unwrap();
        let refused = [
            add(None, 77, 0, &[p("a", 0)], &[], NOW).err(),
            add(Some(&t), 78, 0, &[p("a", 0)], &[], NOW).err(),
            end_txn(Some(&t), 77, 1, true, NOW).err(),
            // Nothing to end.
            end_txn(Some(&new_txn()), 77, 0, true, NOW).err(),
        ];
        use TxnError::*;
        assert_eq!(
            refused,
            [
                Some(InvalidProducerIdMapping),
                Some(InvalidProducerIdMapping),
                Some(ProducerFenced),
                Some(InvalidTxnState)
            ]
        );
        // Adding what is already in the transaction changes nothing.
        assert_eq!(
            add(Some(&t), 77, 0, &[p("a", 0)], &[], NOW + 50),
            Ok(t.clone())
        );
    }

    #[test]
    fn a_new_producer_aborts_the_open_transaction_and_fences_the_old_one() {
        let t = add(Some(&new_txn()), 77, 0, &[p("a", 0)], &[], NOW).unwrap();
        let Init::AbortFirst(aborting) =
            init_producer_id(Some(&t), 60_000, None, NOW + 1, || 1).unwrap()
        else {
            panic!("abort expected");
        };
        assert_eq!(
            (aborting.status, aborting.producer_epoch),
            (Status::PrepareAbort, 1)
        );
        assert_eq!(
            aborting.partitions, t.partitions,
            "the markers go where it wrote"
        );
        assert_eq!(
            end_txn(Some(&aborting), 77, 0, true, NOW),
            Err(TxnError::ProducerFenced)
        );
        let done = complete(&aborting, NOW + 2).unwrap();
        let fresh = ready(init_producer_id(Some(&done), 60_000, None, NOW + 3, || 1));
        assert_eq!((fresh.producer_epoch, fresh.status), (2, Status::Empty));
    }

    #[test]
    fn an_open_transaction_past_its_timeout_is_aborted_and_its_producer_fenced() {
        let t = add(Some(&new_txn()), 77, 0, &[p("a", 0)], &[], NOW).unwrap();
        assert_eq!(expire(&t, NOW + 59_999), None);
        let aborting = expire(&t, NOW + 60_000).unwrap();
        assert_eq!(
            (aborting.status, aborting.producer_epoch),
            (Status::PrepareAbort, 1)
        );
        assert_eq!(
            end_txn(Some(&aborting), 77, 0, true, NOW),
            Err(TxnError::ProducerFenced)
        );
        assert_eq!(expire(&new_txn(), NOW + 10_000_000), None, "nothing open");
        assert_eq!(expire(&aborting, NOW + 10_000_000), None, "already ending");
    }

    #[test]
    fn offsets_join_only_an_open_transaction_that_holds_their_group() {
        let t = new_txn();
        let o = |g: &str, off: i64| TxnOffset {
            group: g.into(),
            topic: "in".into(),
            partition: 0,
            offset: crate::groups::record::OffsetRecord {
                offset: off,
                leader_epoch: -1,
                metadata: None,
                commit_ms: NOW,
            },
        };
        let (pid, ep) = (t.producer_id, t.producer_epoch);
        assert_eq!(
            commit_offsets(Some(&t), pid, ep, vec![o("g", 1)], NOW),
            Err(TxnError::InvalidTxnState),
            "no transaction open"
        );
        let open = add(Some(&t), pid, ep, &[], &["g".to_string()], NOW).unwrap();
        assert_eq!(
            commit_offsets(Some(&open), pid, ep, vec![o("h", 1)], NOW),
            Err(TxnError::InvalidTxnState),
            "group not added"
        );
        let one = commit_offsets(Some(&open), pid, ep, vec![o("g", 1)], NOW).unwrap();
        let two = commit_offsets(Some(&one), pid, ep, vec![o("g", 5)], NOW).unwrap();
        assert_eq!(two.offsets, vec![o("g", 5)], "the later commit replaces");
        let Ok(End::Prepare(ending)) = end_txn(Some(&two), pid, ep, true, NOW) else {
            panic!("prepare")
        };
        assert_eq!(
            ending.offsets.len(),
            1,
            "kept until the markers are written"
        );
        assert!(complete(&ending, NOW).unwrap().offsets.is_empty());
    }

    #[test]
    fn only_an_idle_settled_id_expires() {
        let t = new_txn();
        assert!(!id_expired(&t, NOW + 999, 1000));
        assert!(id_expired(&t, NOW + 1000, 1000));
        let open = add(
            Some(&t),
            t.producer_id,
            t.producer_epoch,
            &[p("a", 0)],
            &[],
            NOW,
        )
        .unwrap();
        assert!(
            !id_expired(&open, NOW + 10_000_000, 1000),
            "an open transaction times out instead"
        );
        let Ok(End::Prepare(ending)) =
            end_txn(Some(&open), t.producer_id, t.producer_epoch, true, NOW)
        else {
            panic!("prepare")
        };
        assert!(
            !id_expired(&ending, NOW + 10_000_000, 1000),
            "an ending one is finished first"
        );
        let done = complete(&ending, NOW).unwrap();
        assert!(id_expired(&done, NOW + 1000, 1000));
    }
}
