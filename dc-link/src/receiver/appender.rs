//! What the receiving side decides for one mirror partition, free of I/O:
//! where incoming chunks stand against the mirror's log end (drop, trim,
//! append, ask for a resend), what each answer of the mirror's leader means,
//! and when the partition stops taking data and starts again. `receiver`
//! performs the requests this asks for and feeds the answers back.
//!
//! Positions always come from the mirror: the appender only ever appends at
//! a log end its leader reported, and the partition's state machine checks
//! the offset again, so a wrong guess here costs a refusal, never a gap or
//! a duplicate.
//!
//! A partition that cannot take data must not hold up the others of its
//! link: frames are acked per frame, so a chunk waiting here keeps its whole
//! frame, and with it a slot of the sender's window, unacked. So a
//! partition whose appends fail permanently (topic deleted or replaced, data
//! refused), or transiently for longer than [`STOP_AFTER`], is *stopped*:
//! its chunks are acked at once without a position, the sender is told to
//! stop shipping it, and the leader is probed now and then; when the mirror
//! partition takes data again, shipping resumes from its log end.

use std::time::{Duration, Instant};

use bytes::Bytes;

use crate::broker_http::HttpError;
use crate::lag::PartitionState;
use crate::proto::Chunk;

/// Transient failures (no leader, timeouts) lasting this long stop the
/// partition. Leader elections take a few seconds; much longer means the
/// mirror partition itself is in trouble, and waiting would stall the link.
pub(crate) const STOP_AFTER: Duration = Duration::from_secs(10);
/// How often a stopped partition's leader is asked whether it takes data.
pub(crate) const PROBE_RETRYING: Duration = Duration::from_secs(1);
pub(crate) const PROBE_FAILED: Duration = Duration::from_secs(5);
/// A gap at the same log end is asked about again after this long, in
/// case the first resend request crossed a reconnect of the sender's read.
const RESEND_AGAIN: Duration = Duration::from_secs(5);
/// Refusals in a row at the very log end the leader reported: the batches
/// do not start where their chunk says. A resend usually cures a bad
/// chunk; the same refusal this often means the home data cannot go here.
const REFUSALS_AT_END: u32 = 3;

/// Why reading the mirror's end, or an append, did not work.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Failure {
    /// The leader moved or is unknown: find it again.
    NotLeader(String),
    /// Timeouts, refused connections, an append not committed in time:
    /// the same request may work later.
    Transient(String),
    /// The broker has no replica of the partition (HTTP 404): transient
    /// after a move, permanent when the topic is gone; the caller asks the
    /// metadata which ([`Failure::resolve_no_replica`]).
    NoReplica(String),
    /// The mirror topic or partition does not exist in this region.
    Gone(String),
    /// A topic of that name exists here but is not a mirror of the home.
    NotAMirror(String),
    /// The mirror refuses the records themselves; resending cannot help.
    Refused(String),
}

/// Kafka's UNKNOWN_TOPIC_OR_PARTITION: the state machine found the
/// partition deleted.
const UNKNOWN_TOPIC_OR_PARTITION: i64 = 3;
/// KAFKA_STORAGE_ERROR: the leader's disk failed this write; another
/// leader, or a retry, may succeed.
const KAFKA_STORAGE_ERROR: i64 = 56;

impl Failure {
    pub(crate) fn is_permanent(&self) -> bool {
        matches!(
            self,
            Failure::Gone(_) | Failure::NotAMirror(_) | Failure::Refused(_)
        )
    }

    pub(crate) fn message(&self) -> &str {
        match self {
            Failure::NotLeader(m)
            | Failure::Transient(m)
            | Failure::NoReplica(m)
            | Failure::Gone(m)
            | Failure::NotAMirror(m)
            | Failure::Refused(m) => m,
        }
    }

    /// What a broker's answer on the mirror API means for this partition.
    pub(crate) fn from_http(e: &HttpError) -> Failure {
        let m = e.to_string();
        match e {
            HttpError::NotLeader { .. } => Failure::NotLeader(m),
            HttpError::Transport { .. } => Failure::Transient(m),
            HttpError::Status { status, body, .. } => match *status {
                404 => Failure::NoReplica(m),
                409 => Failure::NotAMirror(m),
                422 => {
                    let code = serde_json::from_str::<serde_json::Value>(body)
                        .ok()
                        .and_then(|v| v.get("code")?.as_i64());
                    match code {
                        Some(UNKNOWN_TOPIC_OR_PARTITION) => Failure::Gone(m),
                        Some(KAFKA_STORAGE_ERROR) => Failure::Transient(m),
                        _ => Failure::Refused(m),
                    }
                }
                408 | 429 | 500.. => Failure::Transient(m),
                _ => Failure::Refused(m),
            },
        }
    }

    /// A 404 made definite by the metadata: `topic_gone` is what it says
    /// about the topic (absent, or fewer partitions).
    pub(crate) fn resolve_no_replica(self, topic_gone: Option<String>) -> Failure {
        match (self, topic_gone) {
            (Failure::NoReplica(_), Some(why)) => Failure::Gone(why),
            (Failure::NoReplica(m), None) => Failure::Transient(m),
            (f, _) => f,
        }
    }
}

/// Whole stored batches to append at `base`, contiguous from the log end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Append {
    pub base: i64,
    pub records: Bytes,
    /// The log end once appended.
    pub next: i64,
    /// The chunk starts the home log (retention removed what came before):
    /// an empty mirror may start there.
    pub from_log_start: bool,
}

/// What to do next with the chunks at hand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// Ask the partition's leader where the mirror ends
    /// ([`Appender::located`], or [`Appender::failed`]).
    Locate,
    /// Send this append ([`Appender::answered`] or [`Appender::failed`]).
    Append(Append),
    /// Done with these chunks: ack them, with the log end when known, and
    /// ask the sender to resend from `resend_from` if set.
    Done {
        ack_end: Option<i64>,
        resend_from: Option<i64>,
    },
}

/// A change the sender and the reports must hear about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    None,
    /// The partition stopped taking data (or stopped for another reason).
    Stopped {
        state: PartitionState,
        error: String,
    },
    /// It takes data again, from `offset` (the mirror's log end).
    Resumed {
        offset: i64,
    },
}

/// The mirror partition as its leader describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MirrorView {
    pub log_start: i64,
    pub log_end: i64,
    /// The topic's home region, if it is a mirror.
    pub mirror_of: Option<String>,
}

/// The mirror's log end when its leader refused the data itself: the same
/// records will be refused until the mirror changes there.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stuck {
    end: i64,
    /// A retention gap: an emptied mirror (start = end) may start anew.
    unless_empty: bool,
}

#[derive(Debug, Clone)]
struct Stopped {
    state: PartitionState,
    error: String,
    next_probe: Instant,
    stuck: Option<Stuck>,
}

/// One mirror partition's appender state.
#[derive(Debug)]
pub(crate) struct Appender {
    topic: String,
    partition: i32,
    /// The region the data comes from: the only acceptable `mirror_of`.
    home: String,
    /// This region, for messages.
    region: String,
    /// Where the mirror ends, as its leader last said; `None`: ask.
    expected: Option<i64>,
    /// A resend was asked for from this offset, at this time.
    resync_sent: Option<(i64, Instant)>,
    /// The leader refused an append at its own log end: ask for a resend.
    resend_now: bool,
    refusals_at_end: u32,
    /// Since when requests have been failing transiently.
    failing_since: Option<Instant>,
    stopped: Option<Stopped>,
}

impl Appender {
    pub(crate) fn new(topic: &str, partition: i32, home: &str, region: &str) -> Appender {
        Appender {
            topic: topic.to_string(),
            partition,
            home: home.to_string(),
            region: region.to_string(),
            expected: None,
            resync_sent: None,
            resend_now: false,
            refusals_at_end: 0,
            failing_since: None,
            stopped: None,
        }
    }

    #[cfg(test)]
    pub(crate) fn state(&self) -> PartitionState {
        self.stopped
            .as_ref()
            .map_or(PartitionState::Ok, |s| s.state)
    }

    /// When a stopped partition's leader should be probed next.
    pub(crate) fn probe_at(&self) -> Option<Instant> {
        self.stopped.as_ref().map(|s| s.next_probe)
    }

    /// The next step for `chunks` (one partition's, in arrival order).
    /// Called again after each answer until it says `Done`.
    pub(crate) fn step(&mut self, chunks: &[Chunk], now: Instant) -> Step {
        if self.stopped.is_some() {
            // Acked without a position: the frame moves on, and the sender
            // learns where to resume when the partition takes data again.
            return Step::Done {
                ack_end: None,
                resend_from: None,
            };
        }
        let Some(end) = self.expected else {
            return Step::Locate;
        };
        if std::mem::take(&mut self.resend_now) {
            self.resync_sent = Some((end, now));
            return Step::Done {
                ack_end: Some(end),
                resend_from: Some(end),
            };
        }
        let plan = plan(end, chunks);
        if let Some(a) = plan.append {
            return Step::Append(a);
        }
        let resend_from = if plan.gap {
            // One request per gap: later chunks of the same gap were
            // already on their way and are dropped quietly.
            match self.resync_sent {
                Some((at, when)) if at == end && now.duration_since(when) < RESEND_AGAIN => None,
                _ => {
                    self.resync_sent = Some((end, now));
                    Some(end)
                }
            }
        } else {
            if self.resync_sent.is_some_and(|(at, _)| at <= end) {
                self.resync_sent = None;
            }
            None
        };
        Step::Done {
            ack_end: Some(end),
            resend_from,
        }
    }

    /// The leader said where the mirror ends.
    pub(crate) fn located(&mut self, view: &MirrorView, now: Instant) -> Change {
        self.failing_since = None;
        if let Some(f) = self.not_a_mirror(view) {
            return self.stop(PartitionState::Failed, f, None, now);
        }
        self.expected = Some(view.log_end);
        Change::None
    }

    /// The leader answered append `a`: the log now ends at `log_end`, with
    /// `a` appended or not.
    pub(crate) fn answered(
        &mut self,
        a: &Append,
        appended: bool,
        log_end: i64,
        now: Instant,
    ) -> Change {
        self.failing_since = None;
        let expected = self.expected.replace(log_end);
        if appended {
            self.refusals_at_end = 0;
            return Change::None;
        }
        if expected != Some(log_end) {
            // The log ends elsewhere than this appender thought: an append
            // whose answer was lost did commit, or another receiver wrote.
            // The same chunks are weighed again against the real end.
            return Change::None;
        }
        if a.from_log_start && a.base > log_end {
            let error = format!(
                "the home log of {}/{} starts at {}, after the mirror's end {log_end} in {}: retention removed records the mirror lacks, and a mirror holding records cannot skip them (empty or recreate the mirror topic to restart it)",
                self.topic, self.partition, a.base, self.region
            );
            let stuck = Stuck {
                end: log_end,
                unless_empty: true,
            };
            return self.stop(PartitionState::Failed, error, Some(stuck), now);
        }
        self.refusals_at_end += 1;
        if self.refusals_at_end >= REFUSALS_AT_END {
            let error = format!(
                "the mirror of {}/{} in {} refused the batches at its log end {log_end} {} times in a row (their offsets do not start there)",
                self.topic, self.partition, self.region, self.refusals_at_end
            );
            let stuck = Stuck {
                end: log_end,
                unless_empty: false,
            };
            return self.stop(PartitionState::Failed, error, Some(stuck), now);
        }
        // Refused at the log end itself: the chunk's batches do not start
        // where it says. A fresh read from the log end usually cures that.
        self.resend_now = true;
        Change::None
    }

    /// A request begun at `started` failed.
    pub(crate) fn failed(&mut self, f: Failure, started: Instant, now: Instant) -> Change {
        if f.is_permanent() {
            let stuck = matches!(f, Failure::Refused(_))
                .then_some(self.expected)
                .flatten()
                .map(|end| Stuck {
                    end,
                    unless_empty: false,
                });
            return self.stop(PartitionState::Failed, f.message().to_string(), stuck, now);
        }
        if matches!(f, Failure::NotLeader(_)) {
            self.expected = None;
        }
        let since = *self.failing_since.get_or_insert(started);
        if now.duration_since(since) >= STOP_AFTER {
            let error = format!(
                "appends to the mirror of {}/{} in {} have failed for {} s: {}",
                self.topic,
                self.partition,
                self.region,
                now.duration_since(since).as_secs(),
                f.message()
            );
            return self.stop(PartitionState::Retrying, error, None, now);
        }
        Change::None
    }

    /// The answer to a probe of a stopped partition.
    pub(crate) fn probed(&mut self, r: Result<MirrorView, Failure>, now: Instant) -> Change {
        let Some(s) = self.stopped.as_mut() else {
            return Change::None;
        };
        let view = match r {
            Ok(v) => v,
            Err(f) if f.is_permanent() => {
                let (changed, error) = (
                    s.state != PartitionState::Failed || s.error != f.message(),
                    f.message().to_string(),
                );
                *s = Stopped {
                    state: PartitionState::Failed,
                    error: error.clone(),
                    next_probe: now + PROBE_FAILED,
                    stuck: None,
                };
                return if changed {
                    Change::Stopped {
                        state: PartitionState::Failed,
                        error,
                    }
                } else {
                    Change::None
                };
            }
            Err(_) => {
                // A failed partition stays failed until the mirror answers;
                // a transient error says nothing about what failed it.
                s.next_probe = now + probe_interval(s.state);
                return Change::None;
            }
        };
        if let Some(error) = self.not_a_mirror(&view) {
            let s = self.stopped.as_mut().expect("checked above");
            let changed = s.state != PartitionState::Failed || s.error != error;
            *s = Stopped {
                state: PartitionState::Failed,
                error: error.clone(),
                next_probe: now + PROBE_FAILED,
                stuck: None,
            };
            return if changed {
                Change::Stopped {
                    state: PartitionState::Failed,
                    error,
                }
            } else {
                Change::None
            };
        }
        let s = self.stopped.as_mut().expect("checked above");
        if let Some(st) = s.stuck {
            let emptied = st.unless_empty && view.log_start == view.log_end;
            if view.log_end == st.end && !emptied {
                s.next_probe = now + PROBE_FAILED;
                return Change::None;
            }
        }
        self.stopped = None;
        self.failing_since = None;
        self.refusals_at_end = 0;
        self.resync_sent = None;
        self.resend_now = false;
        self.expected = Some(view.log_end);
        Change::Resumed {
            offset: view.log_end,
        }
    }

    fn not_a_mirror(&self, view: &MirrorView) -> Option<String> {
        (view.mirror_of.as_deref() != Some(self.home.as_str())).then(|| {
            format!(
                "topic {} in {} is not a mirror of {} (its home: {}); not appending to it",
                self.topic,
                self.region,
                self.home,
                view.mirror_of.as_deref().unwrap_or(&self.region)
            )
        })
    }

    fn stop(
        &mut self,
        state: PartitionState,
        error: String,
        stuck: Option<Stuck>,
        now: Instant,
    ) -> Change {
        self.stopped = Some(Stopped {
            state,
            error: error.clone(),
            next_probe: now + probe_interval(state),
            stuck,
        });
        self.expected = None;
        self.resync_sent = None;
        self.resend_now = false;
        self.failing_since = None;
        self.refusals_at_end = 0;
        Change::Stopped { state, error }
    }
}

fn probe_interval(state: PartitionState) -> Duration {
    match state {
        PartitionState::Failed => PROBE_FAILED,
        _ => PROBE_RETRYING,
    }
}

/// Where `chunks` stand against a mirror ending at `end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Plan {
    /// The contiguous bytes from the log end, if any chunk reaches past it.
    pub append: Option<Append>,
    /// A chunk after those does not connect: everything from there needs
    /// a resend.
    pub gap: bool,
}

/// Weighs chunks against the log end: a chunk wholly below it is already
/// in the mirror (dropped), one straddling it is trimmed to its batches
/// from the end on, one starting past it is a gap, except the first chunk
/// of a home log that starts later (retention), which an empty mirror may
/// start with.
pub(crate) fn plan(end: i64, chunks: &[Chunk]) -> Plan {
    let mut parts: Vec<Bytes> = Vec::new();
    let mut base = None;
    let mut at = end;
    let mut from_log_start = false;
    let mut gap = false;
    for c in chunks {
        if c.next_offset <= at {
            continue;
        }
        if c.base_offset > at {
            if base.is_none() && c.from_log_start {
                base = Some(c.base_offset);
                from_log_start = true;
                parts.push(c.records.clone());
                at = c.next_offset;
                continue;
            }
            gap = true;
            break;
        }
        let bytes = if c.base_offset < at {
            match trim_to(&c.records, at) {
                Some(b) => b,
                None => {
                    gap = true;
                    break;
                }
            }
        } else {
            c.records.clone()
        };
        base.get_or_insert(at);
        parts.push(bytes);
        at = c.next_offset;
    }
    Plan {
        append: base.map(|base| Append {
            base,
            records: if parts.len() == 1 {
                parts.pop().expect("one")
            } else {
                Bytes::from(parts.concat())
            },
            next: at,
            from_log_start,
        }),
        gap,
    }
}

/// The batches of `records` from the one starting at `offset` on; `None`
/// if `offset` falls inside a batch (a batch cannot be split) or they do
/// not parse.
fn trim_to(records: &Bytes, offset: i64) -> Option<Bytes> {
    let batches = chronik_wire::batch::split_stored(records).ok()?;
    let (_, range) = batches.iter().find(|(h, _)| h.base_offset >= offset)?;
    if batches
        .iter()
        .any(|(h, _)| h.base_offset < offset && h.last_offset() >= offset)
    {
        return None;
    }
    Some(records.slice(range.start..))
}

#[cfg(test)]
mod tests;
