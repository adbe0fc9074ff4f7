use std::time::{Duration, Instant};

use bytes::Bytes;
use chronik_wire::batch::{build, split_stored, stamp};
use proptest::prelude::*;

use super::*;

const HOME: &str = "us-east";
const HERE: &str = "eu-west";

/// One stored batch of `n` records at `base`, as the home log holds it.
fn batch(base: i64, n: usize) -> Bytes {
    stamp(&build::simple(n, 1_000 + base, None), base, 1, None)
}

/// A chunk of the given `(base, records)` batches, contiguous.
fn chunk(batches: &[(i64, usize)], from_log_start: bool) -> Chunk {
    let records: Vec<u8> = batches
        .iter()
        .flat_map(|(b, n)| batch(*b, *n).to_vec())
        .collect();
    let (first, _) = batches[0];
    let (last, n) = batches[batches.len() - 1];
    Chunk {
        topic: "t".into(),
        partition: 0,
        base_offset: first,
        next_offset: last + n as i64,
        records: Bytes::from(records),
        from_log_start,
        home_log_start: 0,
        home_high_watermark: 0,
    }
}

/// A mirror partition as its state machine keeps it: it takes an append
/// only where the log ends (or, for an empty log, where the home log
/// starts). The broker's rule, written again to judge the appender.
#[derive(Debug, Clone, Default)]
struct Mirror {
    start: i64,
    end: i64,
    bytes: Vec<u8>,
    appends: usize,
}

impl Mirror {
    fn at(end: i64) -> Mirror {
        // Holds [0, end) as batches of one record each.
        let mut m = Mirror::default();
        for o in 0..end {
            m.bytes.extend_from_slice(&batch(o, 1));
        }
        m.end = end;
        m
    }

    fn apply(&mut self, a: &Append) -> (bool, i64) {
        let Ok(batches) = split_stored(&a.records) else {
            return (false, self.end);
        };
        let first = batches.first().map(|(h, _)| h.base_offset);
        let empty = self.bytes.is_empty() && self.start == self.end;
        let starts_here = first == Some(a.base)
            && (a.base == self.end || (a.from_log_start && empty && a.base > self.end));
        if !starts_here {
            return (false, self.end);
        }
        if a.base > self.end {
            self.start = a.base;
        }
        self.bytes.extend_from_slice(&a.records);
        self.end = batches.last().expect("non-empty").0.last_offset() + 1;
        self.appends += 1;
        (true, self.end)
    }

    fn view(&self) -> MirrorView {
        MirrorView {
            log_start: self.start,
            log_end: self.end,
            mirror_of: Some(HOME.into()),
        }
    }
}

fn appender() -> Appender {
    Appender::new("t", 0, HOME, HERE)
}

/// Runs the appender on `chunks` against `m` with every request
/// answered: `(ack_end, resend_from)`.
fn run(
    app: &mut Appender,
    m: &mut Mirror,
    chunks: &[Chunk],
    now: Instant,
) -> (Option<i64>, Option<i64>) {
    for _ in 0..20 {
        match app.step(chunks, now) {
            Step::Locate => {
                assert_eq!(app.located(&m.view(), now), Change::None);
            }
            Step::Append(a) => {
                let (appended, end) = m.apply(&a);
                app.answered(&a, appended, end, now);
            }
            Step::Done {
                ack_end,
                resend_from,
            } => return (ack_end, resend_from),
        }
    }
    panic!("the appender did not finish these chunks in 20 steps");
}

#[test]
fn chunks_at_the_log_end_go_in_one_append() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(10));
    let chunks = [chunk(&[(10, 3)], false), chunk(&[(13, 2), (15, 5)], false)];
    assert_eq!(
        app.step(&chunks, now),
        Step::Locate,
        "the end comes from the leader, never assumed"
    );
    app.located(&m.view(), now);
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    assert_eq!((a.base, a.next, a.from_log_start), (10, 20, false));
    assert_eq!(app.answered(&a, m.apply(&a).0, m.end, now), Change::None);
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(20), None));
    assert_eq!(m.appends, 1);
}

#[test]
fn a_resend_already_in_the_mirror_is_dropped() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(20));
    let chunks = [chunk(&[(0, 10)], false), chunk(&[(10, 10)], false)];
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(20), None));
    assert_eq!(m.appends, 0);
}

#[test]
fn an_overlap_is_trimmed_to_the_batches_from_the_end() {
    let now = Instant::now();
    let mut app = appender();
    app.located(&Mirror::at(10).view(), now);
    let chunks = [chunk(&[(5, 5), (10, 4)], false)];
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    assert_eq!((a.base, a.next), (10, 14));
    assert_eq!(
        a.records,
        batch(10, 4),
        "exactly the batch at the log end, not the one before"
    );
}

#[test]
fn a_log_end_inside_a_batch_is_a_gap_not_a_split() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(7));
    let chunks = [chunk(&[(5, 5)], false)];
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(7), Some(7)));
    assert_eq!(m.appends, 0);
}

#[test]
fn a_gap_asks_for_one_resend_then_again_only_after_a_while() {
    let t0 = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(10));
    assert_eq!(
        run(&mut app, &mut m, &[chunk(&[(20, 10)], false)], t0),
        (Some(10), Some(10))
    );
    // The rest of the gap was already on its way: quiet.
    let t1 = t0 + Duration::from_millis(100);
    assert_eq!(
        run(&mut app, &mut m, &[chunk(&[(30, 10)], false)], t1),
        (Some(10), None)
    );
    // Still nothing from 10 much later: ask again.
    let t2 = t0 + RESEND_AGAIN;
    assert_eq!(
        run(&mut app, &mut m, &[chunk(&[(40, 1)], false)], t2),
        (Some(10), Some(10))
    );
    // The resend arrives and fills the gap.
    assert_eq!(
        run(&mut app, &mut m, &[chunk(&[(10, 10), (20, 10)], false)], t2),
        (Some(30), None)
    );
    assert_eq!(m.end, 30);
}

#[test]
fn the_contiguous_part_is_appended_before_asking_for_the_rest() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(0));
    let chunks = [chunk(&[(0, 10)], false), chunk(&[(20, 5)], false)];
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(10), Some(10)));
    assert_eq!(m.end, 10);
}

#[test]
fn an_append_whose_answer_was_lost_is_not_written_twice() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(10));
    let chunks = [chunk(&[(10, 10)], false)];
    app.located(&m.view(), now);
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    // It commits, but the answer never arrives.
    assert!(m.apply(&a).0);
    assert_eq!(
        app.failed(Failure::Transient("timed out".into()), now, now),
        Change::None
    );
    // The retry is refused (the log moved) and the chunk turns out present.
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(20), None));
    assert_eq!((m.appends, m.end), (1, 20));
}

#[test]
fn racing_receivers_never_write_twice_or_leave_a_gap() {
    let now = Instant::now();
    // Another receiver wrote the same chunk first.
    let (mut app, mut m) = (appender(), Mirror::at(10));
    let chunks = [chunk(&[(10, 5), (15, 5)], false)];
    app.located(&m.view(), now);
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    m.apply(&a);
    let refused = m.apply(&a);
    assert_eq!(
        refused,
        (false, 20),
        "the state machine refuses the second copy"
    );
    assert_eq!(app.answered(&a, refused.0, refused.1, now), Change::None);
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(20), None));
    assert_eq!(m.appends, 1);

    // The other one got only part of the way: the rest is trimmed and appended.
    let (mut app, mut m) = (appender(), Mirror::at(10));
    app.located(&m.view(), now);
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    m.apply(&Append {
        base: 10,
        records: batch(10, 5),
        next: 15,
        from_log_start: false,
    });
    let (ok, end) = m.apply(&a);
    app.answered(&a, ok, end, now);
    let Step::Append(rest) = app.step(&chunks, now) else {
        panic!("expected the rest")
    };
    assert_eq!((rest.base, rest.records.clone()), (15, batch(15, 5)));
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(20), None));

    // The other one is ahead of these chunks: nothing to do but ack its end.
    let (mut app, mut m) = (appender(), Mirror::at(10));
    app.located(&m.view(), now);
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    m.apply(&Append {
        base: 10,
        records: Bytes::from([batch(10, 5), batch(15, 5), batch(20, 5)].concat()),
        next: 25,
        from_log_start: false,
    });
    let (ok, end) = m.apply(&a);
    app.answered(&a, ok, end, now);
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(25), None));
}

#[test]
fn an_empty_mirror_starts_where_retention_left_the_home_log() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(0));
    let chunks = [chunk(&[(100, 10)], true), chunk(&[(110, 10)], false)];
    assert_eq!(run(&mut app, &mut m, &chunks, now), (Some(120), None));
    assert_eq!((m.start, m.end, m.appends), (100, 120, 1));
}

#[test]
fn a_frame_spanning_a_retention_gap_fails_a_mirror_with_records() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(0));
    // Read before and after home retention removed [10, 100).
    let chunks = [chunk(&[(0, 10)], false), chunk(&[(100, 10)], true)];
    app.located(&m.view(), now);
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected an append")
    };
    assert_eq!(
        (a.base, a.next, a.from_log_start),
        (0, 10, false),
        "what connects goes first, alone"
    );
    let (ok, end) = m.apply(&a);
    assert_eq!(app.answered(&a, ok, end, now), Change::None);
    // Now holding records, the mirror cannot start over at the home log start.
    let Step::Append(a) = app.step(&chunks, now) else {
        panic!("expected the second chunk")
    };
    assert_eq!((a.base, a.from_log_start), (100, true));
    let (ok, end) = m.apply(&a);
    assert!(!ok, "the state machine refuses to skip [10, 100)");
    let Change::Stopped { state, error } = app.answered(&a, ok, end, now) else {
        panic!("expected a stop")
    };
    assert_eq!(state, PartitionState::Failed);
    assert!(
        error.contains("retention") && error.contains("starts at 100") && error.contains("end 10"),
        "{error}"
    );
    // Further chunks are acked without a position; nothing is appended.
    assert_eq!(
        run(&mut app, &mut m, &[chunk(&[(100, 10)], true)], now),
        (None, None)
    );
    assert_eq!((m.end, m.appends), (10, 1));
    // Probing the unchanged mirror keeps it failed; an emptied one restarts.
    let later = now + PROBE_FAILED;
    assert_eq!(app.probe_at(), Some(later));
    assert_eq!(app.probed(Ok(m.view()), later), Change::None);
    let emptied = MirrorView {
        log_start: 10,
        log_end: 10,
        mirror_of: Some(HOME.into()),
    };
    assert_eq!(
        app.probed(Ok(emptied), later),
        Change::Resumed { offset: 10 }
    );
}

#[test]
fn batches_refused_at_the_log_end_are_resent_then_given_up() {
    let now = Instant::now();
    let (mut app, mut m) = (appender(), Mirror::at(10));
    // The chunk claims offset 10 but its batch starts at 12.
    let mut bad = chunk(&[(12, 3)], false);
    bad.base_offset = 10;
    for _ in 0..REFUSALS_AT_END - 1 {
        assert_eq!(
            run(&mut app, &mut m, std::slice::from_ref(&bad), now),
            (Some(10), Some(10))
        );
    }
    let Step::Append(a) = app.step(std::slice::from_ref(&bad), now) else {
        panic!("expected an append")
    };
    let (ok, end) = m.apply(&a);
    assert!(matches!(
        app.answered(&a, ok, end, now),
        Change::Stopped {
            state: PartitionState::Failed,
            ..
        }
    ));
    // A good chunk after a refusal resets the count.
    let (mut app, mut m) = (appender(), Mirror::at(10));
    assert_eq!(
        run(&mut app, &mut m, std::slice::from_ref(&bad), now),
        (Some(10), Some(10))
    );
    assert_eq!(
        run(&mut app, &mut m, &[chunk(&[(10, 2)], false)], now),
        (Some(12), None)
    );
    assert_eq!(app.refusals_at_end, 0);
}

#[test]
fn transient_failures_stop_the_partition_only_after_a_while_and_it_resumes() {
    let t0 = Instant::now();
    let mut app = appender();
    let chunks = [chunk(&[(0, 1)], false)];
    let busy = || Failure::Transient("no answer within 8 s".into());
    assert_eq!(app.step(&chunks, t0), Step::Locate);
    assert_eq!(
        app.failed(busy(), t0, t0 + Duration::from_secs(8)),
        Change::None
    );
    let Change::Stopped { state, error } =
        app.failed(busy(), t0 + Duration::from_secs(8), t0 + STOP_AFTER)
    else {
        panic!("expected a stop after {STOP_AFTER:?} of failures")
    };
    assert_eq!(state, PartitionState::Retrying);
    assert!(
        error.contains("failed for 10 s") && error.contains("no answer"),
        "{error}"
    );
    assert_eq!(app.state(), PartitionState::Retrying);
    assert_eq!(
        app.step(&chunks, t0 + STOP_AFTER),
        Step::Done {
            ack_end: None,
            resend_from: None
        }
    );
    let probe = t0 + STOP_AFTER + PROBE_RETRYING;
    assert_eq!(app.probe_at(), Some(probe));
    assert_eq!(app.probed(Err(busy()), probe), Change::None);
    assert_eq!(app.probe_at(), Some(probe + PROBE_RETRYING));
    assert_eq!(
        app.probed(Ok(Mirror::at(3).view()), probe),
        Change::Resumed { offset: 3 }
    );
    assert_eq!(app.state(), PartitionState::Ok);
    // It appends again from the mirror's end, not from any remembered position.
    assert_eq!(
        app.step(&[chunk(&[(3, 1)], false)], probe).clone(),
        Step::Append(Append {
            base: 3,
            records: batch(3, 1),
            next: 4,
            from_log_start: false,
        })
    );
}

#[test]
fn a_success_resets_the_transient_clock() {
    let t0 = Instant::now();
    let (mut app, m) = (appender(), Mirror::at(0));
    app.failed(
        Failure::Transient("x".into()),
        t0,
        t0 + Duration::from_secs(6),
    );
    app.located(&m.view(), t0 + Duration::from_secs(6));
    let t1 = t0 + Duration::from_secs(12);
    assert_eq!(
        app.failed(Failure::Transient("x".into()), t1, t1),
        Change::None
    );
}

#[test]
fn not_leader_asks_the_new_leader_where_the_log_ends() {
    let now = Instant::now();
    let mut app = appender();
    app.located(&Mirror::at(5).view(), now);
    app.failed(Failure::NotLeader("moved".into()), now, now);
    assert_eq!(app.step(&[chunk(&[(5, 1)], false)], now), Step::Locate);
}

#[test]
fn a_deleted_mirror_topic_fails_until_it_reappears() {
    let now = Instant::now();
    let mut app = appender();
    app.located(&Mirror::at(50).view(), now);
    let gone = || Failure::Gone("mirror topic t does not exist in eu-west".into());
    let Change::Stopped { state, error } = app.failed(gone(), now, now) else {
        panic!("expected a stop")
    };
    assert_eq!(
        (state, error.as_str()),
        (
            PartitionState::Failed,
            "mirror topic t does not exist in eu-west"
        )
    );
    // Permanent: no retry clock; the next chunks are acked without a position.
    assert_eq!(
        app.step(&[chunk(&[(50, 1)], false)], now),
        Step::Done {
            ack_end: None,
            resend_from: None
        }
    );
    let p1 = now + PROBE_FAILED;
    assert_eq!(
        app.probed(Err(gone()), p1),
        Change::None,
        "the same failure is not reported twice"
    );
    assert_eq!(
        app.probed(Err(Failure::Transient("metadata: refused".into())), p1),
        Change::None
    );
    assert_eq!(
        app.state(),
        PartitionState::Failed,
        "a transient error does not make it look better"
    );
    // Recreated (empty): resume from its end, 0, so the sender resends everything.
    assert_eq!(
        app.probed(Ok(Mirror::at(0).view()), p1 + PROBE_FAILED),
        Change::Resumed { offset: 0 }
    );
}

#[test]
fn a_topic_that_is_not_a_mirror_of_the_home_is_never_written() {
    let now = Instant::now();
    let mut app = appender();
    let local = MirrorView {
        log_start: 0,
        log_end: 7,
        mirror_of: None,
    };
    let Change::Stopped { state, error } = app.located(&local, now) else {
        panic!("expected a stop")
    };
    assert_eq!(state, PartitionState::Failed);
    assert!(
        error.contains("not a mirror of us-east") && error.contains("its home: eu-west"),
        "{error}"
    );
    assert_eq!(app.probed(Ok(local), now + PROBE_FAILED), Change::None);
    let other = MirrorView {
        log_start: 0,
        log_end: 7,
        mirror_of: Some("ap-south".into()),
    };
    assert!(
        matches!(
            app.probed(Ok(other), now + PROBE_FAILED),
            Change::Stopped { .. }
        ),
        "a new reason is reported"
    );
    assert_eq!(
        app.probed(Ok(Mirror::at(7).view()), now + PROBE_FAILED),
        Change::Resumed { offset: 7 }
    );
}

#[test]
fn a_retrying_partition_whose_topic_vanishes_becomes_failed() {
    let t0 = Instant::now();
    let mut app = appender();
    app.failed(Failure::Transient("x".into()), t0, t0 + STOP_AFTER);
    assert_eq!(app.state(), PartitionState::Retrying);
    let r = app.probed(Err(Failure::Gone("gone".into())), t0 + STOP_AFTER);
    assert_eq!(
        r,
        Change::Stopped {
            state: PartitionState::Failed,
            error: "gone".into()
        }
    );
    assert_eq!(app.probe_at(), Some(t0 + STOP_AFTER + PROBE_FAILED));
}

#[test]
fn broker_answers_are_classified() {
    let status = |status: u16, body: &str| HttpError::Status {
        addr: "b:1".into(),
        status,
        body: body.into(),
    };
    let class = |e: HttpError| Failure::from_http(&e);
    assert!(matches!(
        class(HttpError::NotLeader {
            addr: "b".into(),
            leader: Some(2)
        }),
        Failure::NotLeader(_)
    ));
    assert!(matches!(
        class(HttpError::Transport {
            addr: "b".into(),
            message: "reset".into()
        }),
        Failure::Transient(_)
    ));
    assert!(matches!(
        class(status(503, r#"{"error":"not committed within 30 s"}"#)),
        Failure::Transient(_)
    ));
    assert!(matches!(
        class(status(409, r#"{"error":"homed in this region"}"#)),
        Failure::NotAMirror(_)
    ));
    assert!(matches!(
        class(status(
            422,
            r#"{"error":"the partition was deleted","code":3}"#
        )),
        Failure::Gone(_)
    ));
    assert!(matches!(
        class(status(422, r#"{"error":"disk","code":56}"#)),
        Failure::Transient(_)
    ));
    assert!(matches!(
        class(status(422, r#"{"error":"crc","code":2}"#)),
        Failure::Refused(_)
    ));
    let f = class(status(
        404,
        r#"{"error":"no replica of this partition here"}"#,
    ));
    assert!(matches!(f, Failure::NoReplica(_)) && !f.is_permanent());
    assert!(
        matches!(f.clone().resolve_no_replica(None), Failure::Transient(_)),
        "moved, not gone"
    );
    assert_eq!(
        f.resolve_no_replica(Some("deleted".into())),
        Failure::Gone("deleted".into())
    );
}

// ---------------------------------------------------------------------------
// Properties: a home log, a sender that reads it from wherever the receiver
// says, a wire that delivers stale chunks too, and a mirror that other
// writers and lost answers disturb. The mirror must always be a prefix of
// the home log, byte for byte, and catch up once the disturbances stop.
// ---------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Event {
    /// The sender reads up to this many batches from its cursor.
    Read(usize),
    /// The receiver takes up to this many chunks off the wire.
    Deliver(usize),
    /// The next append commits but its answer is lost.
    LoseAnswer,
    /// Another receiver appends this many home batches at the mirror end.
    Race(usize),
    /// The leader moves.
    NotLeader,
}

fn event() -> impl Strategy<Value = Event> {
    prop_oneof![
        4 => (1usize..4).prop_map(Event::Read),
        4 => (1usize..4).prop_map(Event::Deliver),
        1 => Just(Event::LoseAnswer),
        1 => (1usize..3).prop_map(Event::Race),
        1 => Just(Event::NotLeader),
    ]
}

struct Sim {
    home: Vec<(i64, usize)>,
    cursor: i64,
    wire: std::collections::VecDeque<Chunk>,
    mirror: Mirror,
    app: Appender,
    lose_next: bool,
}

impl Sim {
    fn home_bytes_to(&self, end: i64) -> Vec<u8> {
        self.home
            .iter()
            .filter(|(b, _)| *b < end)
            .flat_map(|(b, n)| batch(*b, *n).to_vec())
            .collect()
    }

    fn read(&mut self, max: usize) {
        let from: Vec<(i64, usize)> = self
            .home
            .iter()
            .filter(|(b, _)| *b >= self.cursor)
            .take(max)
            .copied()
            .collect();
        if let Some((b, n)) = from.last() {
            self.cursor = b + *n as i64;
            self.wire.push_back(chunk(&from, false));
        }
    }

    fn race(&mut self, n: usize) {
        let next: Vec<(i64, usize)> = self
            .home
            .iter()
            .filter(|(b, _)| *b >= self.mirror.end)
            .take(n)
            .copied()
            .collect();
        if let Some((b, k)) = next.last() {
            let records = Bytes::from(
                next.iter()
                    .flat_map(|(b, n)| batch(*b, *n).to_vec())
                    .collect::<Vec<u8>>(),
            );
            let (ok, _) = self.mirror.apply(&Append {
                base: next[0].0,
                records,
                next: b + *k as i64,
                from_log_start: false,
            });
            assert!(ok, "the racing writer appends at the end");
        }
    }

    fn deliver(&mut self, max: usize, now: Instant) {
        let n = max.min(self.wire.len());
        if n == 0 {
            return;
        }
        let chunks: Vec<Chunk> = self.wire.drain(..n).collect();
        for _ in 0..50 {
            match self.app.step(&chunks, now) {
                Step::Locate => {
                    self.app.located(&self.mirror.view(), now);
                }
                Step::Append(a) => {
                    let (ok, end) = self.mirror.apply(&a);
                    if std::mem::take(&mut self.lose_next) {
                        self.app
                            .failed(Failure::Transient("answer lost".into()), now, now);
                    } else {
                        self.app.answered(&a, ok, end, now);
                    }
                }
                Step::Done {
                    ack_end,
                    resend_from,
                } => {
                    if let Some(end) = ack_end {
                        assert!(
                            end <= self.mirror.end,
                            "acked {end} beyond the durable end {}",
                            self.mirror.end
                        );
                    }
                    if let Some(o) = resend_from {
                        // The sender starts over there; what is on the wire is stale.
                        self.cursor = o;
                    }
                    return;
                }
            }
        }
        panic!("the appender looped on {chunks:?}");
    }

    fn check_prefix(&self) {
        assert_eq!(
            self.mirror.bytes,
            self.home_bytes_to(self.mirror.end),
            "the mirror is not a prefix of the home log"
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_mirror_is_always_a_prefix_of_the_home_log_and_catches_up(
        sizes in prop::collection::vec(1usize..5, 1..25),
        events in prop::collection::vec(event(), 0..60),
    ) {
        let mut home = Vec::new();
        let mut o = 0i64;
        for n in sizes {
            home.push((o, n));
            o += n as i64;
        }
        let home_end = o;
        let now = Instant::now();
        let mut sim = Sim { home, cursor: 0, wire: Default::default(), mirror: Mirror::default(), app: appender(), lose_next: false };
        for e in events {
            match e {
                Event::Read(n) => sim.read(n),
                Event::Deliver(n) => sim.deliver(n, now),
                Event::LoseAnswer => sim.lose_next = true,
                Event::Race(n) => sim.race(n),
                Event::NotLeader => { sim.app.failed(Failure::NotLeader("moved".into()), now, now); }
            }
            sim.check_prefix();
        }
        // Undisturbed from here on, the link must finish the job.
        sim.lose_next = false;
        let mut rounds = 0u32;
        while sim.mirror.end < home_end {
            rounds += 1;
            prop_assert!(rounds < 500, "no progress: mirror at {}, home at {home_end}", sim.mirror.end);
            if sim.wire.is_empty() {
                sim.read(3);
                // Every chunk dropped without a resend request was stale (a
                // request had already moved the cursor back), so the sender
                // can never have read past the mirror with nothing in flight.
                prop_assert!(!sim.wire.is_empty(), "stuck: sender at {}, mirror at {}, home at {home_end}", sim.cursor, sim.mirror.end);
            }
            sim.deliver(2, now + RESEND_AGAIN * rounds);
            sim.check_prefix();
        }
        prop_assert_eq!(sim.mirror.end, home_end);
        prop_assert!(sim.app.state() == PartitionState::Ok);
    }
}
