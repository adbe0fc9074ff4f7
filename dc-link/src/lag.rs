//! Replication lag, per link and partition, as the sending dc-link sees it:
//! how far the mirror's durable log end (acked) is behind the home high
//! watermark, in records, bytes and seconds (the age of the oldest record
//! not yet acked), plus link totals. Pure bookkeeping, no I/O.

use std::collections::{BTreeMap, VecDeque};
use std::time::Instant;

use serde::{Deserialize, Serialize};

/// Whether a mirror partition is being appended to. Decided by the
/// receiving dc-link, which sees the mirror region's answers, and reported
/// back to the sender; one partition's state never holds up another's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PartitionState {
    #[default]
    Ok,
    /// Appends have failed transiently (no leader, timeouts) for a while;
    /// nothing is shipped until the mirror partition answers again.
    Retrying,
    /// Appends cannot succeed until something changes in the mirror region
    /// (the mirror topic was deleted or replaced, or it refuses the data).
    Failed,
}

/// A shipped-but-unacked chunk: where it ends, its first record's
/// timestamp, and its size.
#[derive(Debug, Clone, Copy)]
struct Pending {
    next_offset: i64,
    first_ts_ms: i64,
    bytes: u64,
    records: i64,
}

#[derive(Debug, Default)]
pub struct PartitionLag {
    pub source_high_watermark: i64,
    pub acked: i64,
    pending: VecDeque<Pending>,
    /// While the mirror is behind: when it last advanced (or was first seen
    /// behind). With nothing shipped (a link that is down) this bounds the
    /// age of the oldest unreplicated record from below.
    behind_since: Option<Instant>,
    /// Bytes per record of what was shipped, for the unshipped estimate.
    bytes_per_record: f64,
    pub state: PartitionState,
    /// Why the state is not `Ok`.
    pub error: Option<String>,
}

impl PartitionLag {
    pub fn observe_high_watermark(&mut self, hw: i64, now: Instant) {
        self.source_high_watermark = self.source_high_watermark.max(hw);
        self.update_behind(now);
    }

    pub fn shipped(&mut self, base: i64, next: i64, first_ts_ms: i64, bytes: u64) {
        if self.pending.back().is_some_and(|p| base < p.next_offset) {
            return; // a resend: its first shipment is still pending
        }
        let records = (next - base).max(1);
        let rate = bytes as f64 / records as f64;
        self.bytes_per_record = if self.bytes_per_record == 0.0 {
            rate
        } else {
            self.bytes_per_record * 0.9 + rate * 0.1
        };
        self.pending.push_back(Pending {
            next_offset: next,
            first_ts_ms,
            bytes,
            records,
        });
    }

    pub fn acked(&mut self, offset: i64, now: Instant) {
        if offset > self.acked {
            // Progress: the clock of the unshipped tail restarts here.
            self.behind_since = None;
        }
        self.acked = self.acked.max(offset);
        while self
            .pending
            .front()
            .is_some_and(|p| p.next_offset <= self.acked)
        {
            self.pending.pop_front();
        }
        self.update_behind(now);
    }

    fn update_behind(&mut self, now: Instant) {
        if self.acked >= self.source_high_watermark {
            self.behind_since = None;
        } else if self.behind_since.is_none() {
            self.behind_since = Some(now);
        }
    }

    pub fn set_state(&mut self, state: PartitionState, error: Option<String>) {
        self.state = state;
        self.error = error;
    }

    pub fn records(&self) -> i64 {
        (self.source_high_watermark - self.acked).max(0)
    }

    pub fn bytes(&self) -> u64 {
        let shipped: u64 = self.pending.iter().map(|p| p.bytes).sum();
        let shipped_records: i64 = self.pending.iter().map(|p| p.records).sum();
        let unshipped = (self.records() - shipped_records).max(0);
        shipped + (unshipped as f64 * self.bytes_per_record) as u64
    }

    pub fn seconds(&self, now: Instant, now_ms: i64) -> f64 {
        if self.records() == 0 {
            return 0.0;
        }
        let by_record = self
            .pending
            .front()
            .map(|p| (now_ms - p.first_ts_ms).max(0) as f64 / 1000.0);
        let by_clock = self
            .behind_since
            .map(|t| now.duration_since(t).as_secs_f64());
        // Shipped records know their age; with nothing shipped (a link that
        // is down), the time since the mirror last advanced bounds it.
        by_record.or(by_clock).unwrap_or(0.0)
    }
}

impl PartitionState {
    pub fn as_str(self) -> &'static str {
        match self {
            PartitionState::Ok => "ok",
            PartitionState::Retrying => "retrying",
            PartitionState::Failed => "failed",
        }
    }
}

/// Per-link totals.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
pub struct LinkStats {
    pub connected: bool,
    pub rtt_ms: f64,
    pub frames_sent: u64,
    pub records_sent: u64,
    /// Batches as stored, before compression.
    pub raw_bytes_sent: u64,
    /// What crossed the WAN (frames, compressed).
    pub wire_bytes_sent: u64,
    pub frames_in_flight: u64,
    pub reconnects: u64,
    /// Produces forwarded over this link to the home region and written
    /// there (batches), their bytes, and those that failed.
    #[serde(default)]
    pub forwarded_batches: u64,
    #[serde(default)]
    pub forwarded_bytes: u64,
    #[serde(default)]
    pub forward_errors: u64,
    pub last_error: Option<String>,
    /// When the link last went down; `None` while up or before it ever was.
    #[serde(skip)]
    pub down_since: Option<Instant>,
}

impl LinkStats {
    pub fn compression_ratio(&self) -> f64 {
        if self.wire_bytes_sent == 0 {
            1.0
        } else {
            self.raw_bytes_sent as f64 / self.wire_bytes_sent as f64
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct PartitionRow {
    pub link: String,
    pub topic: String,
    pub partition: i32,
    pub source_high_watermark: i64,
    pub mirror_log_end: i64,
    pub lag_records: i64,
    pub lag_bytes: u64,
    pub lag_seconds: f64,
    #[serde(default)]
    pub state: PartitionState,
    #[serde(default)]
    pub error: Option<String>,
}

/// A mirror partition this dc-link appends to (receiving side) that is not
/// `Ok`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct IncomingRow {
    pub link: String,
    pub topic: String,
    pub partition: i32,
    pub state: PartitionState,
    pub error: String,
}

/// Receiving side: how far a mirror partition here is behind its home, as
/// the home's chunks last told (what a failover to this region would lose,
/// as last known; the home's writes since are unknown here).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReceivedRow {
    pub link: String,
    pub topic: String,
    pub partition: i32,
    pub home_high_watermark: i64,
    pub mirror_log_end: i64,
    pub at_risk_records: i64,
    /// How long ago the home's high watermark was heard.
    pub home_seen_ms_ago: u64,
}

impl ReceivedRow {
    pub fn new(
        (link, topic, partition): (String, String, i32),
        home_high_watermark: i64,
        mirror_log_end: i64,
        home_seen_ms_ago: u64,
    ) -> ReceivedRow {
        ReceivedRow {
            link,
            topic,
            partition,
            home_high_watermark,
            mirror_log_end,
            at_risk_records: (home_high_watermark - mirror_log_end).max(0),
            home_seen_ms_ago,
        }
    }
}

#[derive(Debug, Serialize, Deserialize)]
pub struct LinkRow {
    pub link: String,
    pub from: String,
    pub to: String,
    #[serde(flatten)]
    pub stats: LinkStats,
    pub compression_ratio: f64,
    /// Records per second over the last sampling interval.
    pub throughput_records_per_sec: f64,
    pub throughput_bytes_per_sec: f64,
    /// Forwarded produces written at the home, batches per second.
    #[serde(default)]
    pub forwarded_batches_per_sec: f64,
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Report {
    pub region: String,
    pub links: Vec<LinkRow>,
    pub partitions: Vec<PartitionRow>,
    /// Topics whose replication policy is invalid, with the reason.
    pub policy_errors: BTreeMap<String, String>,
    /// Receiving side: mirror partitions here that cannot be appended to.
    #[serde(default)]
    pub incoming: Vec<IncomingRow>,
    /// Receiving side: every mirror partition here that chunks arrived for.
    #[serde(default)]
    pub received: Vec<ReceivedRow>,
}

impl Report {
    /// The human-readable form of `chronik ctl lag`.
    pub fn table(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<22} {:>9} {:>9} {:>9} {:>14} {:>10} {:>10} {:>11}",
            "LINK", "CONNECTED", "RTT_MS", "REC/S", "BYTES/S", "RATIO", "IN_FLIGHT", "FORWARD/S"
        );
        for l in &self.links {
            let _ = writeln!(
                out,
                "{:<22} {:>9} {:>9.1} {:>9.0} {:>14.0} {:>10.2} {:>10} {:>11.0}",
                l.link,
                if l.stats.connected { "yes" } else { "no" },
                l.stats.rtt_ms,
                l.throughput_records_per_sec,
                l.throughput_bytes_per_sec,
                l.compression_ratio,
                l.stats.frames_in_flight,
                l.forwarded_batches_per_sec
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "{:<22} {:<24} {:>4} {:>12} {:>12} {:>10} {:>12} {:>9} {:>8}",
            "LINK",
            "TOPIC",
            "PART",
            "HOME_HW",
            "MIRROR_END",
            "LAG",
            "LAG_BYTES",
            "LAG_SEC",
            "STATE"
        );
        for p in &self.partitions {
            let _ = writeln!(
                out,
                "{:<22} {:<24} {:>4} {:>12} {:>12} {:>10} {:>12} {:>9.3} {:>8}",
                p.link,
                p.topic,
                p.partition,
                p.source_high_watermark,
                p.mirror_log_end,
                p.lag_records,
                p.lag_bytes,
                p.lag_seconds,
                p.state.as_str()
            );
        }
        for p in self.partitions.iter().filter(|p| p.error.is_some()) {
            let _ = writeln!(
                out,
                "{} {}/{}: {}: {}",
                p.link,
                p.topic,
                p.partition,
                p.state.as_str(),
                p.error.as_deref().unwrap_or_default()
            );
        }
        for p in &self.incoming {
            let _ = writeln!(
                out,
                "incoming {} {}/{}: {}: {}",
                p.link,
                p.topic,
                p.partition,
                p.state.as_str(),
                p.error
            );
        }
        for (t, e) in &self.policy_errors {
            let _ = writeln!(out, "policy error: topic {t}: {e}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn at_risk_is_what_the_home_had_beyond_the_mirror_never_negative() {
        let key = || ("a->b".to_string(), "t".to_string(), 0);
        assert_eq!(ReceivedRow::new(key(), 120, 100, 5).at_risk_records, 20);
        assert_eq!(ReceivedRow::new(key(), 120, 120, 5).at_risk_records, 0);
        // Acked ahead of the last chunk's watermark (a later chunk's ack).
        assert_eq!(ReceivedRow::new(key(), 100, 130, 5).at_risk_records, 0);
    }
    use std::time::Duration;

    #[test]
    fn lag_follows_shipping_and_acks() {
        let t0 = Instant::now();
        let mut l = PartitionLag::default();
        l.observe_high_watermark(100, t0);
        assert_eq!(l.records(), 100);
        l.shipped(0, 50, 1_000, 5_000);
        assert_eq!(l.bytes(), 5_000 + 50 * 100);
        // The oldest unacked record is 3 s old.
        assert_eq!(l.seconds(t0, 4_000), 3.0);
        l.shipped(0, 50, 1_000, 5_000); // a resend is not counted twice
        l.acked(50, t0);
        assert_eq!(l.records(), 50);
        l.shipped(50, 100, 2_000, 5_000);
        l.acked(100, t0);
        assert_eq!((l.records(), l.bytes()), (0, 0));
        assert_eq!(l.seconds(t0, 9_000), 0.0);
    }

    #[test]
    fn steady_progress_keeps_lag_seconds_small() {
        let t0 = Instant::now();
        let mut l = PartitionLag::default();
        for i in 0..100i64 {
            let now = t0 + Duration::from_secs(i as u64);
            l.observe_high_watermark((i + 1) * 10, now);
            l.acked(i * 10, now);
        }
        // Always 10 records behind, but advancing every second.
        assert!(l.seconds(t0 + Duration::from_secs(100), 0) <= 1.5);
    }

    #[test]
    fn a_link_that_never_shipped_still_ages() {
        let t0 = Instant::now();
        let mut l = PartitionLag::default();
        l.observe_high_watermark(10, t0);
        let later = t0 + Duration::from_secs(30);
        assert!(l.seconds(later, 0) >= 30.0);
    }
}
