use bytes::Bytes;
use prost::Message;

use crate::wire::{WireDelta, WireEntry, PROTOCOL_VERSION};
use crate::*;

fn r(s: &str) -> RegionId {
    RegionId::new(s).unwrap()
}

const REGIONS: [&str; 3] = ["ap-south", "eu-west", "us-east"];

fn replica(name: &str) -> Replica {
    replica_with(name, Limits::default())
}

fn replica_with(name: &str, limits: Limits) -> Replica {
    Replica::new(r(name), REGIONS.iter().map(|n| r(n)), limits)
}

/// `to` pulls from `from`: summary -> delta -> merge.
fn pull(to: &mut Replica, from: &mut Replica, wall: u64) -> MergeReport {
    let s = to.summary();
    let d = from.delta_since(&s).unwrap();
    to.apply_delta(d, wall).unwrap()
}

fn offset(o: i64) -> OffsetValue {
    OffsetValue {
        offset: o,
        leader_epoch: 3,
        metadata: Some("m".into()),
        commit_ms: 0,
        topic_id: Bytes::copy_from_slice(&[9; 16]),
        committed_in: String::new(),
    }
}

fn offset_of_side(side: &Side) -> i64 {
    OffsetValue::decode(side.value.clone().unwrap())
        .unwrap()
        .offset
}

fn offset_of(rep: &Replica, key: &Key) -> Option<i64> {
    rep.get(key)?.offset().map(|o| o.offset)
}

#[test]
fn anti_entropy_brings_a_region_up_to_date() {
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    a.commit_offset("g", "orders", 0, offset(42), 1_000)
        .unwrap();
    a.commit_offset("g", "orders", 1, offset(7), 1_001).unwrap();
    let rep = pull(&mut b, &mut a, 1_002);
    assert_eq!(rep.merged, 2);
    assert_eq!(rep.effects.len(), 2);
    assert_eq!(a.digest(), b.digest());
    // A second round has nothing to send.
    assert!(a.delta_since(&b.summary()).unwrap().entries.is_empty());
    let o = b
        .get(&Key::group_offset("g", "orders", 0))
        .unwrap()
        .offset()
        .unwrap();
    assert_eq!(o.committed_in, "us-east");
    assert_eq!(o.topic_id(), Some(TopicId([9; 16])));
    assert_eq!(o.leader_epoch, 3);
}

#[test]
fn concurrent_writes_resolve_by_hlc_then_region_and_are_recorded() {
    let key = Key::group_offset("g", "t", 0);
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    // Same wall time: the HLCs tie and the region name decides.
    a.commit_offset("g", "t", 0, offset(1), 5_000).unwrap();
    b.commit_offset("g", "t", 0, offset(2), 5_000).unwrap();
    let ra = pull(&mut a, &mut b, 5_001);
    let rb = pull(&mut b, &mut a, 5_001);
    assert_eq!(offset_of(&a, &key), Some(1), "us-east > eu-west");
    assert_eq!(offset_of(&b, &key), Some(1));
    assert_eq!(a.digest(), b.digest());
    // us-east resolved it; eu-west then received the resolved version,
    // which descends from both writes, so there was nothing left to resolve.
    assert_eq!(ra.conflicts.len(), 1);
    let conflict = &ra.conflicts[0];
    assert_eq!(conflict.kind, ConflictKind::Concurrent);
    assert_eq!(conflict.kept.origin, r("us-east"));
    assert_eq!(conflict.lost.origin, r("eu-west"));
    assert_eq!(offset_of_side(&conflict.lost), 2);
    assert_eq!(a.counters().concurrent_conflicts, 1);
    assert!(rb.conflicts.is_empty());
    assert_eq!(rb.changed, vec![key.clone()]);
    // The later wall clock wins when the HLCs differ.
    b.commit_offset("g", "t", 0, offset(3), 9_000).unwrap();
    a.commit_offset("g", "t", 0, offset(4), 8_000).unwrap();
    pull(&mut a, &mut b, 9_001);
    pull(&mut b, &mut a, 9_001);
    assert_eq!(offset_of(&a, &key), Some(3));
    assert_eq!(offset_of(&b, &key), Some(3));
}

#[test]
fn a_dominating_write_wins_even_from_a_slow_clock() {
    let key = Key::group_offset("g", "t", 0);
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    a.commit_offset("g", "t", 0, offset(1), 1_000_000).unwrap();
    pull(&mut b, &mut a, 10);
    // eu-west's wall clock is far behind, but it has seen the first write.
    let w = b.commit_offset("g", "t", 0, offset(2), 10).unwrap();
    assert!(w.entries[0].hlc > a.get(&key).unwrap().hlc);
    let rep = pull(&mut a, &mut b, 1_000_001);
    assert!(rep.conflicts.is_empty());
    assert_eq!(offset_of(&a, &key), Some(2));
}

#[test]
fn a_late_older_version_never_resurrects_a_tombstone() {
    let key = Key::group_offset("g", "t", 0);
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    let mut c = replica("ap-south");
    let old = a
        .commit_offset("g", "t", 0, offset(1), 100)
        .unwrap()
        .entries;
    let tomb = a.delete_offset("g", "t", 0, 200).unwrap().entries;
    b.apply_remote(&r("us-east"), tomb.clone(), 300).unwrap();
    let rep = b.apply_remote(&r("us-east"), old.clone(), 300).unwrap();
    assert_eq!(rep.merged, 0);
    assert!(b.get(&key).unwrap().is_tombstone());

    // Collected everywhere, then the old write turns up once more.
    c.apply_remote(&r("us-east"), tomb, 300).unwrap();
    for _ in 0..2 {
        for (x, y) in [(0, 1), (0, 2), (1, 0), (1, 2), (2, 0), (2, 1)] {
            let reps = [&mut a, &mut b, &mut c];
            let s = reps[x].summary();
            let d = reps[y].delta_since(&s).unwrap();
            reps[x].apply_delta(d, 400).unwrap();
        }
    }
    for rep in [&mut a, &mut b, &mut c] {
        assert_eq!(rep.collect_garbage().len(), 1);
        assert!(rep.get(&key).is_none());
        let late = rep.apply_remote(&r("us-east"), old.clone(), 500);
        // us-east refuses its own entries; the others find them known.
        if rep.region() != &r("us-east") {
            assert_eq!(late.unwrap().already_known, 1);
        }
        assert!(rep.get(&key).is_none());
    }
    // A new write after collection is ordered after the tombstone.
    let w = b.commit_offset("g", "t", 0, offset(9), 1).unwrap();
    assert!(w.entries[0].hlc > old[0].hlc);
}

#[test]
fn a_tombstone_waits_for_every_region() {
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    let mut c = replica("ap-south");
    a.commit_offset("g", "t", 0, offset(1), 100).unwrap();
    a.delete_offset("g", "t", 0, 200).unwrap();
    pull(&mut b, &mut a, 300);
    assert!(
        a.collect_garbage().is_empty(),
        "eu-west's summary predates it"
    );
    a.record_summary(&b.summary()).unwrap();
    assert!(a.collect_garbage().is_empty(), "ap-south has not seen it");
    pull(&mut c, &mut a, 300);
    // c's summary reaches a only now.
    a.record_summary(&c.summary()).unwrap();
    assert_eq!(a.collect_garbage().len(), 1);
    assert_eq!(a.tombstones(), 0);
    assert_eq!(a.counters().tombstones_collected, 1);
}

#[test]
fn only_a_higher_epoch_replaces_a_home() {
    let id = TopicId([1; 16]);
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    a.set_home(id, &r("us-east"), 2, 100).unwrap();
    // eu-west records an older decision later by wall clock.
    b.set_home(id, &r("eu-west"), 1, 900).unwrap();
    let rb = pull(&mut b, &mut a, 1_000);
    let ra = pull(&mut a, &mut b, 1_000);
    for rep in [&a, &b] {
        assert_eq!(
            rep.home(&id),
            Some(HomeValue {
                home: "us-east".into(),
                epoch: 2
            })
        );
    }
    assert_eq!(ra.stale_epochs, 0);
    assert!(ra.changed.is_empty());
    assert!(matches!(rb.effects[..], [Effect::HomeChanged { .. }]));
    assert_eq!(
        a.set_home(id, &r("eu-west"), 2, 2_000),
        Err(UpdateError::StaleEpoch {
            current: 2,
            proposed: 2
        })
    );
    assert!(a.local_update(Key::TopicHome(id), None, 2_000).is_err());
    assert!(a.set_home(id, &r("eu-west"), 3, 2_000).is_ok());
    pull(&mut b, &mut a, 2_001);
    assert_eq!(b.home(&id).unwrap().epoch, 3);
}

#[test]
fn two_homes_with_one_epoch_are_refused_and_reported_every_time() {
    let id = TopicId([1; 16]);
    let mut a = replica("us-east");
    let mut b = replica("eu-west");
    a.set_home(id, &r("us-east"), 5, 100).unwrap();
    b.set_home(id, &r("eu-west"), 5, 100).unwrap();
    for round in 1..=2 {
        let rep = pull(&mut a, &mut b, 200);
        assert_eq!(rep.conflicts.len(), 1);
        assert_eq!(rep.conflicts[0].kind, ConflictKind::Fence);
        assert_eq!(a.home(&id).unwrap().home, "us-east");
        assert_eq!(a.counters().fence_conflicts, round);
    }
}

fn topic(rep: &mut Replica, id: u8, name: &str, wall: u64) -> Written {
    rep.put_topic(TopicId([id; 16]), TopicDef::new(name, 3, 3), wall)
        .unwrap()
}

#[test]
fn the_same_name_created_in_two_cut_off_regions() {
    // The worked example of docs/metadata-sync.md.
    let mut us = replica("us-east");
    let mut eu = replica("eu-west");
    let (a, b) = (TopicId([0xa; 16]), TopicId([0xb; 16]));
    topic(&mut us, 0xa, "orders", 1_000);
    topic(&mut eu, 0xb, "orders", 2_000);

    let at_eu = pull(&mut eu, &mut us, 3_000);
    assert_eq!(eu.topic_name(&a), Some("orders"));
    assert_eq!(eu.topic_name(&b), Some("orders.conflict-eu-west"));
    assert_eq!(
        at_eu.effects,
        vec![Effect::RenameTopic {
            id: b,
            from: "orders".into(),
            to: "orders.conflict-eu-west".into()
        }]
    );
    // eu-west writes the new name into its own topic's definition.
    assert_eq!(at_eu.local_writes.len(), 1);
    assert_eq!(
        at_eu.local_writes[0].topic_def().unwrap().name,
        "orders.conflict-eu-west"
    );
    let c = &at_eu.conflicts[0];
    assert_eq!(c.key, Key::Topic(b));
    assert!(
        matches!(&c.kind, ConflictKind::TopicName { name, winner, renamed_to }
        if name == "orders" && *winner == a && renamed_to == "orders.conflict-eu-west")
    );

    let at_us = pull(&mut us, &mut eu, 3_000);
    assert!(
        at_us.effects.is_empty(),
        "us-east never held b under another name"
    );
    assert_eq!(us.topic_name(&b), Some("orders.conflict-eu-west"));
    assert_eq!(us.digest(), eu.digest());

    // The rename sticks when the winner goes away.
    us.delete_topic(a, 4_000).unwrap();
    pull(&mut eu, &mut us, 4_001);
    assert_eq!(eu.topic_name(&b), Some("orders.conflict-eu-west"));
    assert_eq!(eu.topic_by_name("orders"), None);
}

#[test]
fn the_name_decision_does_not_depend_on_who_sees_what_first() {
    let mut us = replica("us-east");
    let mut eu = replica("eu-west");
    let mut ap = replica("ap-south");
    let wa = topic(&mut us, 1, "orders", 1_000).entries;
    let wb = topic(&mut eu, 2, "orders", 2_000).entries;
    let wc = topic(&mut ap, 3, "orders", 1_500).entries;
    us.apply_remote(&r("eu-west"), wb.clone(), 3_000).unwrap();
    us.apply_remote(&r("ap-south"), wc.clone(), 3_000).unwrap();
    eu.apply_remote(&r("ap-south"), wc, 3_000).unwrap();
    eu.apply_remote(&r("us-east"), wa.clone(), 3_000).unwrap();
    ap.apply_remote(&r("us-east"), wa, 3_000).unwrap();
    ap.apply_remote(&r("eu-west"), wb, 3_000).unwrap();
    for _ in 0..2 {
        pull(&mut us, &mut eu, 4_000);
        pull(&mut us, &mut ap, 4_000);
        pull(&mut eu, &mut us, 4_000);
        pull(&mut ap, &mut us, 4_000);
    }
    for rep in [&us, &eu, &ap] {
        assert_eq!(rep.topic_name(&TopicId([1; 16])), Some("orders"));
        assert_eq!(
            rep.topic_name(&TopicId([3; 16])),
            Some("orders.conflict-ap-south")
        );
        assert_eq!(
            rep.topic_name(&TopicId([2; 16])),
            Some("orders.conflict-eu-west")
        );
        assert_eq!(rep.digest(), us.digest());
    }
}

#[test]
fn deleting_and_recreating_a_name_is_not_a_conflict() {
    let mut us = replica("us-east");
    let mut eu = replica("eu-west");
    topic(&mut us, 1, "orders", 1_000);
    pull(&mut eu, &mut us, 1_001);
    eu.delete_topic(TopicId([1; 16]), 1_002).unwrap();
    topic(&mut eu, 2, "orders", 1_003);
    let rep = pull(&mut us, &mut eu, 1_004);
    assert!(rep.conflicts.is_empty());
    assert_eq!(us.topic_by_name("orders"), Some(TopicId([2; 16])));
    assert_eq!(
        us.put_topic(TopicId([3; 16]), TopicDef::new("orders", 1, 1), 1_005),
        Err(UpdateError::NameTaken {
            name: "orders".into(),
            id: TopicId([2; 16])
        })
    );
}

#[test]
fn a_topic_definition_cannot_carry_its_home() {
    let mut us = replica("us-east");
    let mut def = TopicDef::new("orders", 1, 1);
    def.configs
        .insert(HOME_REGION_CONFIG.into(), "eu-west".into());
    assert!(matches!(
        us.put_topic(TopicId([1; 16]), def.clone(), 1),
        Err(UpdateError::Invalid(_))
    ));
    def.creator = "eu-west".into();
    let e = Entry {
        key: Key::Topic(TopicId([1; 16])),
        value: Some(def.encode_to_vec().into()),
        vv: [(r("eu-west"), 1)].into_iter().collect(),
        hlc: Hlc::new(1, 0),
        origin: r("eu-west"),
    };
    assert!(matches!(
        us.apply_remote(&r("eu-west"), vec![e], 2),
        Err(MergeError::BadEntry { index: 0, .. })
    ));
}

fn unknown_entry(origin: &str, counter: u64) -> Entry {
    Entry {
        key: Key::Unknown {
            kind: 99,
            key: Bytes::from_static(b"future"),
        },
        value: Some(Bytes::from_static(b"\x00opaque\xff")),
        vv: [(r(origin), counter)].into_iter().collect(),
        hlc: Hlc::new(10, 0),
        origin: r(origin),
    }
}

#[test]
fn an_unknown_kind_is_kept_and_forwarded_unchanged() {
    let mut us = replica("us-east");
    let mut ap = replica("ap-south");
    // Through the wire, as a newer eu-west would send it.
    let delta = Delta {
        from: r("eu-west"),
        entries: vec![unknown_entry("eu-west", 1)],
        context: None,
    };
    let decoded = Delta::decode(&delta.encode(), us.limits()).unwrap();
    us.apply_delta(decoded, 20).unwrap();
    pull(&mut ap, &mut us, 30);
    assert_eq!(
        ap.get(&unknown_entry("eu-west", 1).key),
        Some(&unknown_entry("eu-west", 1))
    );
    assert!(matches!(
        us.local_update(unknown_entry("eu-west", 1).key, None, 40),
        Err(UpdateError::NotWritable { .. })
    ));
}

#[test]
fn a_bad_message_is_refused_whole() {
    let limits = Limits {
        max_message_bytes: 4_096,
        ..Limits::default()
    };
    let mut us = replica_with("us-east", limits.clone());
    let before = us.digest();
    let good = Entry {
        key: Key::group_offset("g", "t", 0),
        value: Some(offset(1).encode_to_vec().into()),
        vv: [(r("eu-west"), 1)].into_iter().collect(),
        hlc: Hlc::new(10, 0),
        origin: r("eu-west"),
    };
    let mut no_origin = good.clone();
    no_origin.key = Key::group_offset("g", "t", 1);
    no_origin.vv = [(r("ap-south"), 1)].into_iter().collect();
    let mut stranger = good.clone();
    stranger.key = Key::group_offset("g", "t", 2);
    stranger.origin = r("mars");
    stranger.vv = [(r("mars"), 1)].into_iter().collect();
    let mut bad_value = good.clone();
    bad_value.key = Key::group_offset("g", "t", 3);
    bad_value.value = Some(Bytes::from_static(b"\xff\xff\xff"));
    for (bad, want) in [
        (no_origin, "BadEntry"),
        (stranger, "UnknownRegion"),
        (bad_value, "BadEntry"),
    ] {
        let err = us
            .apply_remote(&r("eu-west"), vec![good.clone(), bad], 20)
            .unwrap_err();
        assert!(format!("{err:?}").starts_with(want), "{err:?}");
        assert_eq!(us.digest(), before);
    }
    assert_eq!(
        us.apply_remote(&r("us-east"), vec![good.clone()], 20),
        Err(MergeError::FromSelf)
    );

    // On the wire: too large, undecodable, another version, a zero counter.
    assert!(matches!(
        Delta::decode(&vec![0u8; 5_000], &limits),
        Err(MergeError::TooLarge { bytes: 5_000, .. })
    ));
    assert!(matches!(
        Delta::decode(b"\xff\xff\xff", &limits),
        Err(MergeError::Malformed(_))
    ));
    let mut w = Delta {
        from: r("eu-west"),
        entries: vec![good.clone()],
        context: None,
    }
    .to_wire();
    w.protocol_version = PROTOCOL_VERSION + 1;
    assert!(matches!(
        Delta::decode(&w.encode_to_vec(), &limits),
        Err(MergeError::Version { .. })
    ));
    w.protocol_version = PROTOCOL_VERSION;
    w.entries[0].vv[0].counter = 0;
    assert!(matches!(
        Delta::decode(&w.encode_to_vec(), &limits),
        Err(MergeError::BadEntry { index: 0, .. })
    ));
    let tomb_with_value = WireDelta {
        entries: vec![WireEntry {
            tombstone: true,
            ..good.to_wire()
        }],
        ..w.clone()
    };
    assert!(Delta::decode(&tomb_with_value.encode_to_vec(), &limits).is_err());
    assert_eq!(us.digest(), before);
    assert!(us.counters().rejected_messages >= 4);
}

#[test]
fn a_version_that_contradicts_its_timestamp_is_refused_whole() {
    let mut us = replica("us-east");
    let mut eu = replica("eu-west");
    eu.commit_offset("g", "t", 0, offset(1), 5_000).unwrap();
    pull(&mut us, &mut eu, 5_001);
    let before = us.digest();
    // A "newer" version (dominating vector) stamped before the one it replaces.
    let mut forged = eu.get(&Key::group_offset("g", "t", 0)).unwrap().clone();
    forged.vv.advance(&r("eu-west"), 2);
    forged.hlc = Hlc::new(1, 0);
    let fresh = Entry {
        key: Key::group_offset("g", "t", 9),
        ..forged.clone()
    };
    let err = us
        .apply_remote(&r("eu-west"), vec![fresh, forged], 5_002)
        .unwrap_err();
    assert!(
        matches!(err, MergeError::OutOfOrder { index: 1, .. }),
        "{err:?}"
    );
    assert_eq!(us.digest(), before);
}

#[test]
fn tombstones_are_bounded() {
    let limits = Limits {
        max_tombstones: 1,
        ..Limits::default()
    };
    let mut us = replica_with("us-east", limits.clone());
    let mut eu = replica_with("eu-west", limits);
    for p in 0..2 {
        us.commit_offset("g", "t", p, offset(1), 10).unwrap();
        eu.commit_offset("g", "u", p, offset(1), 10).unwrap();
    }
    us.delete_offset("g", "t", 0, 20).unwrap();
    assert_eq!(
        us.delete_offset("g", "t", 1, 20),
        Err(UpdateError::TombstoneLimit(1))
    );
    eu.delete_offset("g", "u", 0, 20).unwrap();
    let before = us.digest();
    let d = eu.delta_since(&us.summary()).unwrap();
    assert!(matches!(
        us.apply_delta(d, 30),
        Err(MergeError::TombstoneLimit { would: 2, limit: 1 })
    ));
    assert_eq!(us.digest(), before);
}

#[test]
fn the_conflict_log_is_a_bounded_ring() {
    let limits = Limits {
        max_conflict_log: 2,
        ..Limits::default()
    };
    let mut us = replica_with("us-east", limits);
    let mut eu = replica("eu-west");
    for p in 0..3 {
        us.commit_offset("g", "t", p, offset(1), 10).unwrap();
        eu.commit_offset("g", "t", p, offset(2), 10).unwrap();
    }
    pull(&mut us, &mut eu, 20);
    let seqs: Vec<u64> = us.conflicts().map(|c| c.seq).collect();
    assert_eq!(seqs, vec![2, 3]);
    assert_eq!(us.counters().concurrent_conflicts, 3);
    assert_eq!(us.counters().conflicts_evicted, 1);
}

#[test]
fn a_delta_cut_at_the_limit_converges_over_rounds() {
    let limits = Limits {
        max_delta_entries: 2,
        ..Limits::default()
    };
    let mut us = replica_with("us-east", limits.clone());
    let mut eu = replica_with("eu-west", limits);
    for p in 0..5 {
        us.commit_offset("g", "t", p, offset(1), 10).unwrap();
    }
    let d = us.delta_since(&eu.summary()).unwrap();
    assert_eq!(d.entries.len(), 2);
    assert!(d.context.is_none());
    eu.apply_delta(d, 20).unwrap();
    for _ in 0..3 {
        pull(&mut eu, &mut us, 20);
    }
    assert_eq!(us.digest(), eu.digest());
    assert_eq!(us.knowledge(), eu.knowledge());
}

#[test]
fn summaries_and_deltas_round_trip_on_the_wire() {
    let mut us = replica("us-east");
    let eu = replica("eu-west");
    topic(&mut us, 1, "orders", 10);
    us.set_home(TopicId([1; 16]), &r("us-east"), 1, 11).unwrap();
    us.commit_offset("g", "orders", 0, offset(5), 12).unwrap();
    us.put_opaque_for_test();
    us.delete_offset("g", "orders", 0, 13).unwrap();
    let s = eu.summary();
    assert_eq!(Summary::decode(&s.encode(), us.limits()).unwrap(), s);
    let d = us.delta_since(&s).unwrap();
    assert_eq!(Delta::decode(&d.encode(), us.limits()).unwrap(), d);
    assert_eq!(d.entries.len(), 4);
}

impl Replica {
    fn put_opaque_for_test(&mut self) {
        self.local_update(
            Key::Acl(Bytes::from_static(b"acl-1")),
            Some(Bytes::from_static(b"allow")),
            12,
        )
        .unwrap();
    }
}

/// A store as the broker keeps one: key records, conflict records and the
/// state record, updated only through `take_changes`.
#[derive(Default)]
struct SavedReplica {
    keys: std::collections::BTreeMap<Vec<u8>, Bytes>,
    conflicts: std::collections::BTreeMap<u64, Bytes>,
    state: Option<Bytes>,
}

impl SavedReplica {
    fn save(&mut self, rep: &mut Replica) {
        let c = rep.take_changes();
        for (key, rec) in c.keys {
            let mut k = key.kind().to_be_bytes().to_vec();
            k.extend_from_slice(&key.encode());
            match rec {
                Some(v) => self.keys.insert(k, v),
                None => self.keys.remove(&k),
            };
        }
        for (seq, v) in c.conflicts {
            self.conflicts.insert(seq, v);
        }
        self.conflicts = self.conflicts.split_off(&c.conflicts_from);
        self.state = Some(c.state);
    }

    fn load(&self, name: &str, limits: Limits) -> Replica {
        Replica::restore(
            r(name),
            REGIONS.iter().map(|n| r(n)),
            limits,
            self.state.as_deref(),
            self.keys.values().map(|v| v.as_ref()),
            self.conflicts.values().map(|v| v.as_ref()),
        )
        .unwrap()
    }
}

#[test]
fn a_replica_restored_from_its_saved_changes_is_the_same_replica() {
    // Small logs, so eviction of conflict records is saved too.
    let limits = Limits {
        max_conflict_log: 3,
        ..Limits::default()
    };
    let mut a = replica_with("us-east", limits.clone());
    let mut b = replica_with("eu-west", limits.clone());
    let mut c = replica_with("ap-south", limits.clone());
    let mut saved = SavedReplica::default();
    assert!(saved
        .load("us-east", limits.clone())
        .same_state(&replica_with("us-east", limits.clone())));
    let mut wall = 1_000;
    for round in 0..6i64 {
        wall += 10;
        // Concurrent commits: conflicts in every round.
        a.commit_offset("g", "t", 0, offset(round), wall).unwrap();
        b.commit_offset("g", "t", 0, offset(100 + round), wall)
            .unwrap();
        let id = TopicId([round as u8 + 1; 16]);
        a.put_topic(id, TopicDef::new("orders", 2, 1), wall)
            .unwrap();
        let other = TopicId([round as u8 + 101; 16]);
        b.put_topic(other, TopicDef::new("orders", 2, 1), wall + 1)
            .unwrap();
        pull(&mut a, &mut b, wall + 2);
        pull(&mut b, &mut a, wall + 3);
        pull(&mut c, &mut a, wall + 4);
        a.delete_topic(id, wall + 5).unwrap();
        b.delete_topic(other, wall + 5).unwrap();
        pull(&mut a, &mut b, wall + 6);
        pull(&mut b, &mut a, wall + 6);
        pull(&mut c, &mut a, wall + 7);
        // Acknowledgements and collection.
        a.record_summary(&b.summary()).unwrap();
        a.record_summary(&c.summary()).unwrap();
        a.collect_garbage();
        saved.save(&mut a);
        let back = saved.load("us-east", limits.clone());
        assert!(back.same_state(&a), "round {round}: {back:#?}\nvs\n{a:#?}");
    }
    assert!(a.counters().tombstones_collected > 0, "{:?}", a.counters());
    assert!(a.counters().conflicts_evicted > 0, "{:?}", a.counters());
    // The restored replica goes on exactly like the original.
    let mut back = saved.load("us-east", limits);
    let wa = a.commit_offset("g", "t", 1, offset(5), wall + 100).unwrap();
    let wb = back
        .commit_offset("g", "t", 1, offset(5), wall + 100)
        .unwrap();
    assert_eq!(wa, wb);
    assert!(back.same_state(&a));
    assert_eq!(back.digest(), a.digest());
}
