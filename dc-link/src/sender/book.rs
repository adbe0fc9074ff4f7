//! The sending side's bookkeeping, free of I/O: which data frames are
//! unacknowledged (each holds a slot of the pipeline window), and where
//! each partition is read from.
//!
//! Positions only ever come from the receiver: the mirror's log end when a
//! topic is offered, on a resend request, and when a stopped partition
//! resumes. A read started before one of those is stale and is discarded
//! (each cursor has a generation that they bump), so nothing shipped ever
//! depends on what this process remembered.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// Data frames sent and not yet acked, each with what it holds (a window
/// permit) until its ack.
#[derive(Debug)]
pub(crate) struct Unacked<P> {
    frames: BTreeMap<u64, (Instant, P)>,
}

impl<P> Default for Unacked<P> {
    fn default() -> Self {
        Unacked {
            frames: BTreeMap::new(),
        }
    }
}

impl<P> Unacked<P> {
    pub(crate) fn sent(&mut self, seq: u64, at: Instant, held: P) {
        self.frames.insert(seq, (at, held));
    }

    /// Frame `seq` was acked: what it held, to release. An unknown or
    /// repeated ack releases nothing, so the window never grows past its
    /// size.
    pub(crate) fn acked(&mut self, seq: u64) -> Option<P> {
        self.frames.remove(&seq).map(|(_, p)| p)
    }

    pub(crate) fn len(&self) -> usize {
        self.frames.len()
    }

    /// The oldest frame unacked for `limit` or more, with its age. The
    /// receiver acks every frame, even one whose partitions cannot take
    /// data; one that never comes means the session is broken.
    pub(crate) fn overdue(&self, now: Instant, limit: Duration) -> Option<(u64, Duration)> {
        // Sequence numbers grow with time: the first entry is the oldest.
        let (seq, (at, _)) = self.frames.first_key_value()?;
        let age = now.duration_since(*at);
        (age >= limit).then_some((*seq, age))
    }
}

/// Where one partition is read from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Cursor {
    offset: i64,
    gen: u64,
    /// The next read starts the home log (retention removed the mirror's
    /// next records at home): the chunk says so, so an empty mirror can
    /// start there.
    from_log_start: bool,
    /// The receiver stopped the partition: read nothing until it resumes.
    paused: bool,
}

/// One read: where it started and under which generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Ticket {
    pub offset: i64,
    pub gen: u64,
    pub from_log_start: bool,
}

impl Cursor {
    /// At the mirror's log end, as the receiver reported it.
    pub(crate) fn new(offset: i64) -> Cursor {
        Cursor {
            offset,
            gen: 0,
            from_log_start: false,
            paused: false,
        }
    }

    pub(crate) fn offset(&self) -> i64 {
        self.offset
    }

    /// Where to read next; `None` while paused.
    pub(crate) fn ticket(&self) -> Option<Ticket> {
        (!self.paused).then_some(Ticket {
            offset: self.offset,
            gen: self.gen,
            from_log_start: self.from_log_start,
        })
    }

    /// A read under `t` returned batches up to `next`: true if they are to
    /// be shipped (the cursor moves past them), false if the read is stale.
    pub(crate) fn advance(&mut self, t: &Ticket, next: i64) -> bool {
        if t.gen != self.gen || self.paused {
            return false;
        }
        self.offset = next;
        self.from_log_start = false;
        true
    }

    /// Home retention removed the records at `t.offset`; the home log now
    /// starts at `log_start`. False if the read is stale.
    pub(crate) fn restart_at_log_start(&mut self, t: &Ticket, log_start: i64) -> bool {
        if t.gen != self.gen || self.paused {
            return false;
        }
        self.offset = log_start;
        self.from_log_start = true;
        true
    }

    /// The receiver asked for a resend from `offset`: reads in flight are
    /// stale.
    pub(crate) fn resend_from(&mut self, offset: i64) {
        self.offset = offset;
        self.gen += 1;
        self.from_log_start = false;
    }

    /// The receiver stopped the partition.
    pub(crate) fn pause(&mut self) {
        self.paused = true;
        self.gen += 1;
    }

    /// The receiver takes the partition's data again from `offset`.
    pub(crate) fn resume(&mut self, offset: i64) {
        self.paused = false;
        self.resend_from(offset);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn out_of_order_acks_release_each_frame_once() {
        let t0 = Instant::now();
        let mut u: Unacked<u64> = Unacked::default();
        for seq in 1..=3 {
            u.sent(seq, t0, seq * 10);
        }
        assert_eq!(u.acked(2), Some(20), "frames finish in any order");
        assert_eq!(
            u.acked(2),
            None,
            "a repeated ack must not release a second permit"
        );
        assert_eq!(
            u.acked(9),
            None,
            "an ack for a frame never sent releases nothing"
        );
        assert_eq!(u.len(), 2);
        assert_eq!(u.acked(1), Some(10));
        assert_eq!(u.acked(3), Some(30));
        assert_eq!(u.len(), 0);
    }

    #[test]
    fn a_lost_ack_is_noticed_by_age() {
        let t0 = Instant::now();
        let limit = Duration::from_secs(60);
        let mut u: Unacked<()> = Unacked::default();
        u.sent(1, t0, ());
        u.sent(2, t0 + Duration::from_secs(30), ());
        // Frame 2's ack arrived; frame 1's never does.
        u.acked(2);
        assert_eq!(u.overdue(t0 + Duration::from_secs(59), limit), None);
        assert_eq!(
            u.overdue(t0 + Duration::from_secs(61), limit),
            Some((1, Duration::from_secs(61)))
        );
        u.acked(1);
        assert_eq!(u.overdue(t0 + Duration::from_secs(600), limit), None);
    }

    #[test]
    fn a_resend_request_discards_reads_in_flight() {
        let mut c = Cursor::new(100);
        let t = c.ticket().unwrap();
        assert_eq!(t.offset, 100);
        // The mirror asks for 90 while the read of 100.. is in flight.
        c.resend_from(90);
        assert!(
            !c.advance(&t, 150),
            "a read from before the resend request must not ship"
        );
        assert_eq!(c.offset(), 90);
        let t = c.ticket().unwrap();
        assert_eq!(t.offset, 90);
        assert!(c.advance(&t, 120));
        assert_eq!(c.ticket().unwrap().offset, 120);
    }

    #[test]
    fn retention_restart_marks_only_the_next_read() {
        let mut c = Cursor::new(10);
        let t = c.ticket().unwrap();
        assert!(c.restart_at_log_start(&t, 500));
        let t = c.ticket().unwrap();
        assert_eq!((t.offset, t.from_log_start), (500, true));
        assert!(c.advance(&t, 600));
        assert!(
            !c.ticket().unwrap().from_log_start,
            "only the chunk starting the home log says so"
        );
        // A stale out-of-range answer does not move the cursor.
        let stale = Ticket {
            offset: 10,
            gen: 99,
            from_log_start: false,
        };
        assert!(!c.restart_at_log_start(&stale, 700));
        assert_eq!(c.offset(), 600);
    }

    #[test]
    fn a_stopped_partition_reads_nothing_until_resumed_at_the_mirror_end() {
        let mut c = Cursor::new(40);
        let t = c.ticket().unwrap();
        c.pause();
        assert_eq!(c.ticket(), None);
        assert!(
            !c.advance(&t, 80),
            "a read from before the pause must not ship"
        );
        // A resend request that crossed the pause does not unpause it.
        c.resend_from(45);
        assert_eq!(c.ticket(), None);
        c.resume(42);
        let t = c.ticket().unwrap();
        assert_eq!((t.offset, t.from_log_start), (42, false));
    }
}
