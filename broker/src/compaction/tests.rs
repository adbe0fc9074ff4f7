use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::records::{Compression, RecordBatchDecoder};

use super::*;
use crate::test_batches::T0;

fn policy(retention: i64) -> Policy {
    Policy {
        min_cleanable_dirty_ratio: 0.5,
        min_compaction_lag_ms: 0,
        max_compaction_lag_ms: i64::MAX,
        delete_retention_ms: retention,
    }
}

/// A stored batch at `base` holding `(key, value)` records, in `codec`.
fn batch(base: i64, codec: Compression, records: &[(Option<&str>, Option<&str>)]) -> Bytes {
    crate::test_batches::encode(base, codec, Some((9, 1, 100)), records)
}

/// (offset, key, value, sequence) of every record in `b`.
type Decoded = Vec<(i64, Option<Bytes>, Option<Bytes>, i32)>;

fn decoded(b: &Bytes) -> Decoded {
    RecordBatchDecoder::decode(&mut b.clone())
        .unwrap()
        .records
        .into_iter()
        .map(|r| (r.offset, r.key, r.value, r.sequence))
        .collect()
}

fn map_of(batches: &[Bytes]) -> KeyMap {
    let mut m = KeyMap::new(usize::MAX);
    for b in batches {
        m.add_batch(b).unwrap();
    }
    m
}

fn clean(
    batches: &[Bytes],
    cleaned: &Cleaned,
    policy: &Policy,
    now: i64,
    floor: i64,
) -> Vec<Cleaning> {
    let map = map_of(batches);
    let pass = Pass {
        map: &map,
        cleaned,
        policy,
        now_ms: now,
        tombstone_floor: floor,
    };
    batches
        .iter()
        .map(|b| pass.clean_batch(b).unwrap())
        .collect()
}

#[test]
fn each_codec_keeps_the_latest_record_per_key_at_its_offset() {
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let b0 = batch(
            0,
            codec,
            &[
                (Some("a"), Some("a0")),
                (Some("b"), Some("b0")),
                (Some("a"), Some("a1")),
            ],
        );
        let b1 = batch(
            3,
            codec,
            &[(Some("c"), Some("c0")), (Some("b"), Some("b1"))],
        );
        let out = clean(
            &[b0.clone(), b1.clone()],
            &Cleaned::default(),
            &policy(1000),
            T0,
            i64::MAX,
        );
        // b0 loses a0 and b0; b1 is all latest and stays as it is.
        assert!(out[1].rewrite.is_none(), "{codec:?}");
        let r = out[0].rewrite.as_ref().expect("rewritten");
        assert_eq!(r.base_offset, 0);
        assert_eq!(r.crc, BatchHeader::parse(&b0).unwrap().crc);
        assert_eq!(out[0].records_removed, 2);
        // The rewrite is a valid stored batch (CRC, framing) in the same
        // codec, with the same base offset, last offset delta and producer.
        let (h_old, h_new) = (
            BatchHeader::parse(&b0).unwrap(),
            crate::batch::split_stored(&r.bytes).unwrap()[0].0,
        );
        assert_eq!(h_new.compression(), h_old.compression(), "{codec:?}");
        assert_eq!(
            (
                h_new.base_offset,
                h_new.last_offset_delta,
                h_new.producer_id,
                h_new.base_sequence
            ),
            (
                h_old.base_offset,
                h_old.last_offset_delta,
                h_old.producer_id,
                h_old.base_sequence
            )
        );
        assert_eq!(h_new.records_count, 1);
        assert_eq!(
            decoded(&r.bytes),
            vec![(2, Some(Bytes::from("a")), Some(Bytes::from("a1")), 102)],
            "{codec:?}"
        );
    }
}

#[test]
fn a_batch_left_without_records_is_removed_and_keyless_records_go() {
    let b0 = batch(
        0,
        Compression::None,
        &[(Some("a"), Some("1")), (None, Some("x"))],
    );
    let b1 = batch(2, Compression::None, &[(Some("a"), Some("2"))]);
    let out = clean(&[b0, b1], &Cleaned::default(), &policy(1000), T0, i64::MAX);
    let r = out[0].rewrite.as_ref().unwrap();
    assert!(r.bytes.is_empty());
    assert_eq!(out[0].records_removed, 2);
    assert!(out[1].rewrite.is_none());
}

#[test]
fn keyless_records_are_found_in_every_codec() {
    for codec in [Compression::None, Compression::Lz4, Compression::Zstd] {
        let with = batch(0, codec, &[(Some("a"), Some("1")), (None, Some("x"))]);
        let without = batch(0, codec, &[(Some("a"), Some("1")), (Some("b"), None)]);
        assert!(has_keyless_record(&with).unwrap());
        assert!(!has_keyless_record(&without).unwrap());
    }
    assert!(has_keyless_record(&[0u8; 70]).is_err());
}

#[test]
fn a_tombstone_lives_for_delete_retention_after_the_first_pass_reaches_it() {
    let b0 = batch(0, Compression::None, &[(Some("a"), Some("1"))]);
    let b1 = batch(1, Compression::None, &[(Some("a"), None)]);
    let b2 = batch(2, Compression::None, &[(Some("z"), Some("1"))]);
    let batches = [b0, b1.clone(), b2];
    let p = policy(1000);
    // First pass: the old value goes, the tombstone stays until now + 1000.
    let first = clean(&batches, &Cleaned::default(), &p, T0, i64::MAX);
    assert!(first[0].rewrite.as_ref().unwrap().bytes.is_empty());
    assert!(first[1].rewrite.is_none());
    assert_eq!(first[1].tombstone_horizon, Some(T0 + 1000));
    let after = Cleaned::default().after_pass(3, T0, Some(T0 + 1000), 0);
    let left = [b1.clone(), batches[2].clone()];
    // Before the horizon: kept.
    let early = clean(&left, &after, &p, T0 + 999, i64::MAX);
    assert!(early[0].rewrite.is_none());
    // At the horizon: removed.
    let late = clean(&left, &after, &p, T0 + 1000, i64::MAX);
    assert!(late[0].rewrite.as_ref().unwrap().bytes.is_empty());
    assert_eq!(late[0].tombstone_horizon, None);
    // Unless a mirror region does not hold it yet.
    let held = clean(&left, &after, &p, T0 + 5000, 1);
    assert!(held[0].rewrite.is_none());
    assert_eq!(
        held[0].tombstone_horizon,
        Some(T0 + 5000 + FLOOR_RECHECK_MS)
    );
}

#[test]
fn control_batches_are_kept_whole() {
    let mut b = batch(0, Compression::None, &[(Some("a"), Some("1"))]).to_vec();
    b[22] |= 1 << 5; // control
    crate::batch::reseal(&mut b);
    let later = batch(1, Compression::None, &[(Some("a"), Some("2"))]);
    let out = clean(
        &[Bytes::from(b), later],
        &Cleaned::default(),
        &policy(0),
        T0,
        i64::MAX,
    );
    assert!(out[0].rewrite.is_none());
}

fn entry(base: i64, last: i64, ts: i64, size: u32) -> IndexEntry {
    IndexEntry {
        base_offset: base,
        last_offset: last,
        max_timestamp: ts,
        size,
    }
}

#[test]
fn due_weighs_dirty_bytes_lag_and_never_takes_the_last_batch() {
    let p = Policy {
        min_cleanable_dirty_ratio: 0.5,
        min_compaction_lag_ms: 100,
        max_compaction_lag_ms: 10_000,
        delete_retention_ms: 1000,
    };
    let entries = [
        entry(0, 9, T0, 100),
        entry(10, 19, T0, 100),
        entry(20, 29, T0 + 500, 100),
        entry(30, 39, T0 + 900, 100),
    ];
    let fresh = Cleaned::default();
    // Everything but the last batch is cleanable at T0 + 1000.
    assert_eq!(due(&entries, 40, &fresh, &p, T0 + 1000), Some(30));
    // min.compaction.lag.ms holds back batches younger than 100 ms.
    assert_eq!(due(&entries, 40, &fresh, &p, T0 + 550), Some(20));
    // Only below the high watermark.
    assert_eq!(due(&entries, 15, &fresh, &p, T0 + 1000), Some(10));
    // A third dirty: below the ratio, not due...
    let mostly_clean = Cleaned {
        to: 20,
        ..Cleaned::default()
    };
    assert_eq!(due(&entries, 40, &mostly_clean, &p, T0 + 1000), None);
    // ...until the oldest dirty record passes max.compaction.lag.ms.
    assert_eq!(due(&entries, 40, &mostly_clean, &p, T0 + 10_500), Some(30));
    // Nothing dirty: due only when a kept tombstone's time comes.
    let clean = Cleaned {
        to: 30,
        tombstone_horizon: Some(T0 + 2000),
        ..Cleaned::default()
    };
    assert_eq!(due(&entries, 40, &clean, &p, T0 + 1999), None);
    assert_eq!(due(&entries, 40, &clean, &p, T0 + 2000), Some(30));
    // One batch: never.
    assert_eq!(due(&entries[..1], 40, &fresh, &p, T0 + 1000), None);
}

#[test]
fn pass_history_answers_first_cleaning_and_stays_bounded() {
    let mut c = Cleaned::default();
    for i in 1..=100 {
        c = c.after_pass(i * 10, T0 + i, None, 0);
        assert!(c.passes.len() <= MAX_PASSES);
        assert!(c
            .passes
            .windows(2)
            .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1));
    }
    assert_eq!(c.to, 1000);
    // The newest passes are exact; merged old ones only answer later.
    assert_eq!(c.first_cleaned(995), Some(T0 + 100));
    assert_eq!(c.first_cleaned(985), Some(T0 + 99));
    assert!(c.first_cleaned(5).unwrap() > T0);
    assert_eq!(c.first_cleaned(1000), None);
    // Passes below the log start are forgotten.
    let trimmed = c.after_pass(1010, T0 + 101, None, 990);
    assert_eq!(trimmed.passes.first().map(|p| p.0), Some(1000));
}

#[test]
fn a_cut_back_log_is_dirty_from_the_cut() {
    let c = Cleaned {
        to: 300,
        passes: vec![(100, T0), (200, T0 + 5), (300, T0 + 9)],
        tombstone_horizon: None,
    };
    let cut = c.cut_back(150);
    assert_eq!(cut.to, 150);
    assert_eq!(cut.passes, vec![(100, T0), (150, T0 + 5)]);
    assert_eq!(cut.first_cleaned(120), Some(T0 + 5));
    assert_eq!(cut.first_cleaned(150), None);
    assert_eq!(c.cut_back(100).passes, vec![(100, T0)]);
    assert_eq!(c.cut_back(400), c);
}

#[test]
fn a_small_key_map_fills_and_ends_the_pass_early() {
    let mut m = KeyMap::new(3 * (1 + ENTRY_OVERHEAD));
    let b0 = batch(
        0,
        Compression::None,
        &[(Some("a"), Some("1")), (Some("b"), Some("1"))],
    );
    let b1 = batch(2, Compression::None, &[(Some("c"), Some("1"))]);
    m.add_batch(&b0).unwrap();
    assert!(!m.full());
    m.add_batch(&b1).unwrap();
    assert!(m.full());
    assert_eq!(m.end, 3);
}

/// Random logs cleaned in random steps: whatever the passes, each key's
/// latest record stays at its offset, everything else below the pass ends
/// goes, and what remains reads back in offset order.
#[test]
fn random_logs_keep_exactly_each_keys_latest_record() {
    for seed in 1..=200u64 {
        use rand::{Rng, SeedableRng};
        let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
        let codec =
            [Compression::None, Compression::Lz4, Compression::Zstd][rng.random_range(0..3usize)];
        let mut log: BTreeMap<i64, Bytes> = BTreeMap::new();
        let mut latest: BTreeMap<String, (i64, String)> = BTreeMap::new();
        let mut next = 0i64;
        for _ in 0..(2 + rng.random_range(0..12)) {
            let n = 1 + rng.random_range(0..5) as usize;
            let recs: Vec<(String, String)> = (0..n)
                .map(|i| {
                    (
                        format!("k{}", rng.random_range(0..6)),
                        format!("v{}", next + i as i64),
                    )
                })
                .collect();
            for (i, (k, v)) in recs.iter().enumerate() {
                latest.insert(k.clone(), (next + i as i64, v.clone()));
            }
            let refs: Vec<(Option<&str>, Option<&str>)> = recs
                .iter()
                .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
                .collect();
            log.insert(next, batch(next, codec, &refs));
            next += n as i64;
        }
        // Passes over growing prefixes of the log.
        let mut cleaned = Cleaned::default();
        let bases: Vec<i64> = log.keys().copied().collect();
        let mut ends: Vec<i64> = (0..1 + rng.random_range(0..3))
            .map(|_| bases[rng.random_range(0..bases.len())])
            .chain([next])
            .collect();
        ends.sort_unstable();
        for end in ends {
            let below: Vec<Bytes> = log.range(..end).map(|(_, b)| b.clone()).collect();
            let p = policy(1000);
            for (b, c) in below.iter().zip(clean(&below, &cleaned, &p, T0, i64::MAX)) {
                if let Some(r) = c.rewrite {
                    let base = BatchHeader::parse(b).unwrap().base_offset;
                    if r.bytes.is_empty() {
                        log.remove(&base);
                    } else {
                        log.insert(base, r.bytes);
                    }
                }
            }
            cleaned = cleaned.after_pass(end, T0, None, 0);
        }
        let stored: Vec<u8> = log.values().flat_map(|b| b.to_vec()).collect();
        crate::batch::split_stored(&stored).expect("batches still split, in order");
        let mut seen: BTreeMap<String, (i64, String)> = BTreeMap::new();
        let mut offsets = BTreeSet::new();
        for b in log.values() {
            for (o, k, v, _) in decoded(b) {
                let k = String::from_utf8(k.unwrap().to_vec()).unwrap();
                assert!(offsets.insert(o), "seed {seed}: offset {o} twice");
                assert!(
                    seen.insert(
                        k.clone(),
                        (o, String::from_utf8(v.unwrap().to_vec()).unwrap())
                    )
                    .is_none(),
                    "seed {seed}: key {k} kept twice after a full pass"
                );
            }
        }
        assert_eq!(seen, latest, "seed {seed}");
    }
}
