//! Several regions write and delete at random while their messages are
//! interleaved, duplicated, reordered and dropped; anti-entropy repairs the
//! rest at the end, after which late copies of old messages arrive once
//! more. After every step and at the end, the invariants of
//! docs/metadata-sync.md are checked against a record of every write made.

use std::collections::BTreeMap;

use chronik_metadata_sync::*;
use proptest::prelude::*;

const REGIONS: [&str; 4] = ["ap-south", "eu-west", "sa-east", "us-east"];
const NAMES: [&str; 2] = ["orders", "pay"];

#[derive(Debug, Clone)]
enum Op {
    Commit {
        at: usize,
        key: u8,
        offset: i64,
    },
    DeleteOffset {
        at: usize,
        key: u8,
    },
    CreateTopic {
        at: usize,
        name: u8,
    },
    AlterTopic {
        at: usize,
        pick: u8,
        value: u8,
    },
    DeleteTopic {
        at: usize,
        pick: u8,
    },
    /// A new fencing decision (the oracle hands out each epoch once).
    Failover {
        at: usize,
        pick: u8,
        home: usize,
    },
    /// Retrying a decision already superseded: must be refused.
    StaleFailover {
        at: usize,
        pick: u8,
    },
    Deliver {
        pick: u16,
        duplicate: bool,
    },
    Drop {
        pick: u16,
    },
    Sync {
        to: usize,
        from: usize,
    },
    /// The region's process restarts: its replica is saved (what changed
    /// since its last save) and rebuilt from the store alone.
    Restart {
        at: usize,
    },
    Collect {
        at: usize,
    },
    Tick {
        at: usize,
        ms: u16,
    },
}

fn op(n: usize) -> impl Strategy<Value = Op> {
    let at = 0..n;
    prop_oneof![
        4 => (at.clone(), 0u8..6, 0i64..1000).prop_map(|(at, key, offset)| Op::Commit { at, key, offset }),
        2 => (at.clone(), 0u8..6).prop_map(|(at, key)| Op::DeleteOffset { at, key }),
        2 => (at.clone(), 0u8..2).prop_map(|(at, name)| Op::CreateTopic { at, name }),
        1 => (at.clone(), any::<u8>(), any::<u8>()).prop_map(|(at, pick, value)| Op::AlterTopic { at, pick, value }),
        1 => (at.clone(), any::<u8>()).prop_map(|(at, pick)| Op::DeleteTopic { at, pick }),
        1 => (at.clone(), any::<u8>(), 0..n).prop_map(|(at, pick, home)| Op::Failover { at, pick, home }),
        1 => (at.clone(), any::<u8>()).prop_map(|(at, pick)| Op::StaleFailover { at, pick }),
        8 => (any::<u16>(), prop::bool::weighted(0.2)).prop_map(|(pick, duplicate)| Op::Deliver { pick, duplicate }),
        2 => any::<u16>().prop_map(|pick| Op::Drop { pick }),
        2 => (at.clone(), 0..n).prop_map(|(to, from)| Op::Sync { to, from }),
        2 => at.clone().prop_map(|at| Op::Collect { at }),
        1 => at.clone().prop_map(|at| Op::Restart { at }),
        2 => (at, 0u16..3000).prop_map(|(at, ms)| Op::Tick { at, ms }),
    ]
}

struct Msg {
    from: usize,
    to: usize,
    entries: Vec<Entry>,
}

/// A region's store, written only through `Replica::take_changes`.
#[derive(Default)]
struct Saved {
    keys: BTreeMap<Vec<u8>, bytes::Bytes>,
    conflicts: BTreeMap<u64, bytes::Bytes>,
    state: Option<bytes::Bytes>,
}

struct World {
    names: Vec<RegionId>,
    reps: Vec<Replica>,
    saved: Vec<Saved>,
    wall: Vec<u64>,
    net: Vec<Msg>,
    /// Every entry any replica ever wrote itself, as written.
    writes: Vec<Entry>,
    /// The fencing oracle: the last epoch decided per topic.
    epochs: BTreeMap<TopicId, u64>,
    next_topic: u8,
    /// Per region and topic: the highest home rank it has shown.
    home_rank: Vec<BTreeMap<TopicId, (u8, u64)>>,
}

/// Clocks are skewed by up to 5 s and remote timestamps more than 1 s ahead
/// are not observed, so both the observed and the ignored path run, and a
/// write's order after what it replaces cannot lean on the clock.
fn limits() -> Limits {
    Limits {
        max_clock_skew_ms: 1_000,
        ..Limits::default()
    }
}

fn offset_key(k: u8) -> (String, String, i32) {
    (
        format!("g{}", k % 2),
        "orders".to_string(),
        i32::from(k / 2),
    )
}

fn rank(e: &Entry) -> (u8, u64) {
    match e.home() {
        None => (1, 0),
        Some(h) => (0, h.epoch),
    }
}

impl World {
    fn new(n: usize, skew: &[u64]) -> World {
        let names: Vec<RegionId> = REGIONS[..n]
            .iter()
            .map(|s| RegionId::new(*s).unwrap())
            .collect();
        World {
            reps: names
                .iter()
                .map(|r| Replica::new(r.clone(), names.clone(), limits()))
                .collect(),
            saved: (0..n).map(|_| Saved::default()).collect(),
            names,
            wall: skew.iter().map(|s| 1_000_000 + s).collect(),
            net: Vec::new(),
            writes: Vec::new(),
            epochs: BTreeMap::new(),
            next_topic: 0,
            home_rank: vec![BTreeMap::new(); n],
        }
    }

    fn restart(&mut self, at: usize) {
        let c = self.reps[at].take_changes();
        let saved = &mut self.saved[at];
        for (key, rec) in c.keys {
            let mut k = key.kind().to_be_bytes().to_vec();
            k.extend_from_slice(&key.encode());
            match rec {
                Some(v) => saved.keys.insert(k, v),
                None => saved.keys.remove(&k),
            };
        }
        saved.conflicts.extend(c.conflicts);
        saved.conflicts = saved.conflicts.split_off(&c.conflicts_from);
        saved.state = Some(c.state);
        let before = self.reps[at].digest();
        self.reps[at] = Replica::restore(
            self.names[at].clone(),
            self.names.clone(),
            limits(),
            saved.state.as_deref(),
            saved.keys.values().map(|v| v.as_ref()),
            saved.conflicts.values().map(|v| v.as_ref()),
        )
        .unwrap();
        assert_eq!(
            self.reps[at].digest(),
            before,
            "restart changed {}",
            self.names[at]
        );
    }

    /// Records what region `at` wrote and sends it to every other region.
    fn wrote(&mut self, at: usize, entries: Vec<Entry>) {
        if entries.is_empty() {
            return;
        }
        self.writes.extend(entries.iter().cloned());
        for to in 0..self.reps.len() {
            if to != at {
                self.net.push(Msg {
                    from: at,
                    to,
                    entries: entries.clone(),
                });
            }
        }
    }

    fn local(&mut self, at: usize, r: Result<Written, UpdateError>) {
        self.wall[at] += 1;
        if let Ok(w) = r {
            self.wrote(at, w.entries);
        }
    }

    fn live_topic(&self, at: usize, pick: u8) -> Option<(TopicId, TopicDef)> {
        let live: Vec<(TopicId, TopicDef)> =
            self.reps[at].topics().map(|(id, _, d)| (id, d)).collect();
        (!live.is_empty()).then(|| live[usize::from(pick) % live.len()].clone())
    }

    fn pull(&mut self, to: usize, from: usize) {
        if to == from {
            return;
        }
        let s = self.reps[to].summary();
        // Through the wire both ways, as the dc-link would carry them.
        let s = Summary::decode(&s.encode(), &limits()).unwrap();
        let d = self.reps[from].delta_since(&s).unwrap();
        let d = Delta::decode(&d.encode(), &limits()).unwrap();
        let report = self.reps[to].apply_delta(d, self.wall[to]).unwrap();
        self.wrote(to, report.local_writes);
    }

    fn collect(&mut self, at: usize) {
        let gone = self.reps[at].collect_garbage();
        for t in gone {
            assert!(t.is_tombstone());
            assert!(self.reps[at].knowledge().base_covers(&t.vv));
            for (j, other) in self.reps.iter().enumerate() {
                assert!(
                    other.knowledge().covers(&t.vv),
                    "{} collected {} that {} has not seen",
                    self.names[at],
                    t.key,
                    self.names[j]
                );
            }
        }
    }

    fn step(&mut self, op: &Op) {
        match *op {
            Op::Commit { at, key, offset } => {
                let (g, t, p) = offset_key(key);
                let v = OffsetValue {
                    offset,
                    leader_epoch: 1,
                    metadata: None,
                    commit_ms: self.wall[at] as i64,
                    topic_id: Default::default(),
                    committed_in: String::new(),
                };
                let r = self.reps[at].commit_offset(&g, &t, p, v, self.wall[at]);
                assert!(r.is_ok(), "{r:?}");
                self.local(at, r);
            }
            Op::DeleteOffset { at, key } => {
                let (g, t, p) = offset_key(key);
                let r = self.reps[at].delete_offset(&g, &t, p, self.wall[at]);
                self.local(at, r);
            }
            Op::CreateTopic { at, name } => {
                let name = NAMES[usize::from(name)];
                if self.reps[at].topic_by_name(name).is_some() {
                    return; // the broker answers TOPIC_ALREADY_EXISTS
                }
                self.next_topic += 1;
                let id = TopicId([self.next_topic; 16]);
                let r = self.reps[at].put_topic(id, TopicDef::new(name, 3, 3), self.wall[at]);
                assert!(r.is_ok(), "{r:?}");
                self.local(at, r);
            }
            Op::AlterTopic { at, pick, value } => {
                let Some((id, mut def)) = self.live_topic(at, pick) else {
                    return;
                };
                def.configs.insert("retention.ms".into(), value.to_string());
                let r = self.reps[at].put_topic(id, def, self.wall[at]);
                assert!(r.is_ok(), "{r:?}");
                self.local(at, r);
            }
            Op::DeleteTopic { at, pick } => {
                let Some((id, _)) = self.live_topic(at, pick) else {
                    return;
                };
                let r = self.reps[at].delete_topic(id, self.wall[at]);
                assert!(r.is_ok(), "{r:?}");
                self.local(at, r);
            }
            Op::Failover { at, pick, home } => {
                let Some((id, _)) = self.live_topic(at, pick) else {
                    return;
                };
                let epoch = self.epochs.get(&id).copied().unwrap_or(0) + 1;
                let r = self.reps[at].set_home(id, &self.names[home], epoch, self.wall[at]);
                if r.is_ok() {
                    self.epochs.insert(id, epoch);
                }
                self.local(at, r);
            }
            Op::StaleFailover { at, pick } => {
                let Some((id, _)) = self.live_topic(at, pick) else {
                    return;
                };
                let Some(h) = self.reps[at].home(&id) else {
                    return;
                };
                let r = self.reps[at].set_home(id, &self.names[at], h.epoch, self.wall[at]);
                assert!(matches!(r, Err(UpdateError::StaleEpoch { .. })), "{r:?}");
            }
            Op::Deliver { pick, duplicate } => {
                if self.net.is_empty() {
                    return;
                }
                let i = usize::from(pick) % self.net.len();
                let (from, to, entries) = if duplicate {
                    let m = &self.net[i];
                    (m.from, m.to, m.entries.clone())
                } else {
                    let m = self.net.swap_remove(i);
                    (m.from, m.to, m.entries)
                };
                let report = self.reps[to]
                    .apply_remote(&self.names[from], entries, self.wall[to])
                    .unwrap();
                self.wrote(to, report.local_writes);
            }
            Op::Drop { pick } => {
                if !self.net.is_empty() {
                    let i = usize::from(pick) % self.net.len();
                    self.net.swap_remove(i);
                }
            }
            Op::Sync { to, from } => self.pull(to, from),
            Op::Restart { at } => self.restart(at),
            Op::Collect { at } => self.collect(at),
            Op::Tick { at, ms } => self.wall[at] += u64::from(ms),
        }
    }

    /// What every region shows must be exactly what the writes it has seen
    /// imply: the highest-stamped one for last-writer-wins keys, the highest
    /// rank for homes. This is where a lost dominating update, a resurrected
    /// tombstone or a home overwritten by a lower epoch would show.
    fn check_seen(&mut self) {
        for (i, rep) in self.reps.iter().enumerate() {
            let k = rep.knowledge();
            let mut seen: BTreeMap<&Key, Vec<&Entry>> = BTreeMap::new();
            for w in &self.writes {
                if k.contains(&w.origin, w.vv.get(&w.origin)) {
                    seen.entry(&w.key).or_default().push(w);
                }
            }
            for e in rep.entries() {
                assert!(
                    seen.contains_key(&e.key),
                    "{}: {} from nowhere",
                    self.names[i],
                    e.key
                );
            }
            for (key, ws) in seen {
                let want = match key.rule() {
                    MergeRule::LastWriterWins => ws.iter().max_by(|a, b| a.stamp().cmp(&b.stamp())),
                    MergeRule::Fenced => ws.iter().max_by_key(|w| rank(w)),
                }
                .unwrap();
                match rep.get(key) {
                    Some(e) => {
                        assert_eq!(e.value, want.value, "{}: {key}", self.names[i]);
                        if key.rule() == MergeRule::LastWriterWins {
                            assert_eq!(e.stamp(), want.stamp(), "{}: {key}", self.names[i]);
                        }
                    }
                    None => assert!(want.is_tombstone(), "{}: {key} vanished", self.names[i]),
                }
                if let Key::TopicHome(id) = key {
                    let now = rep.get(key).map_or((1, 0), rank);
                    let before = self.home_rank[i].insert(*id, now).unwrap_or((0, 0));
                    assert!(
                        now >= before,
                        "{}: home of {id} went from {before:?} to {now:?}",
                        self.names[i]
                    );
                }
            }
        }
    }

    fn rounds(&mut self) {
        let n = self.reps.len();
        for _ in 0..4 {
            for to in 0..n {
                for from in 0..n {
                    self.pull(to, from);
                }
            }
            for at in 0..n {
                self.collect(at);
            }
        }
    }
}

fn run(n: usize, skew: Vec<u64>, ops: Vec<Op>) {
    let mut w = World::new(n, &skew);
    for op in &ops {
        w.step(op);
        w.check_seen();
    }
    // Heal: anti-entropy everywhere, then the messages still in flight
    // arrive late (old, duplicated), then anti-entropy again.
    w.rounds();
    w.check_seen();
    let late = std::mem::take(&mut w.net);
    for m in late {
        let report = w.reps[m.to]
            .apply_remote(&w.names[m.from], m.entries, w.wall[m.to])
            .unwrap();
        w.wrote(m.to, report.local_writes);
        w.check_seen();
    }
    w.net.clear();
    w.rounds();
    w.check_seen();

    // Converged, and nothing left to collect.
    let digest = w.reps[0].digest();
    for rep in &w.reps {
        assert_eq!(rep.digest(), digest, "{} differs", rep.region());
        assert_eq!(rep.tombstones(), 0, "{} holds tombstones", rep.region());
    }

    // The winner of every key is the highest-stamped write ever made to it,
    // and a write that dominates another always carries the higher stamp.
    let mut by_key: BTreeMap<&Key, Vec<&Entry>> = BTreeMap::new();
    for x in &w.writes {
        by_key.entry(&x.key).or_default().push(x);
    }
    for (key, ws) in &by_key {
        for a in ws {
            for b in ws {
                if a.vv.dominates(&b.vv) && key.rule() == MergeRule::LastWriterWins {
                    assert!(a.stamp() > b.stamp(), "{key}: {a:?} dominates {b:?}");
                }
            }
        }
    }

    // Every region names every topic the same way, and a topic that lost
    // its name carries its creating region's suffix.
    let names: Vec<(TopicId, String)> = w.reps[0]
        .topics()
        .map(|(id, n, _)| (id, n.to_string()))
        .collect();
    for rep in &w.reps {
        let mine: Vec<(TopicId, String)> =
            rep.topics().map(|(id, n, _)| (id, n.to_string())).collect();
        assert_eq!(mine, names);
        for c in rep.conflicts() {
            if let ConflictKind::TopicName {
                renamed_to, name, ..
            } = &c.kind
            {
                assert!(
                    renamed_to.starts_with(&format!("{name}.conflict-")),
                    "{renamed_to}"
                );
            }
        }
    }
    for (_, name, def) in w.reps[0].topics() {
        assert!(
            name == def.name,
            "{name} is not materialized as {}",
            def.name
        );
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, ..ProptestConfig::default() })]

    #[test]
    fn regions_converge_whatever_the_network_does(
        (n, skew, ops) in (3usize..=4).prop_flat_map(|n| (
            Just(n),
            prop::collection::vec(0u64..5_000, n),
            prop::collection::vec(op(n), 1..120),
        ))
    ) {
        run(n, skew, ops);
    }
}

/// The name decision of a three-way clash, delivered in every order.
#[test]
fn a_three_way_name_clash_resolves_the_same_in_every_delivery_order() {
    let ops = |order: [usize; 3]| {
        let mut v = vec![
            Op::CreateTopic { at: 0, name: 0 },
            Op::CreateTopic { at: 1, name: 0 },
            Op::CreateTopic { at: 2, name: 0 },
        ];
        for i in order {
            v.push(Op::Deliver {
                pick: i as u16,
                duplicate: false,
            });
        }
        v
    };
    let mut views = Vec::new();
    for order in [[0, 1, 2], [2, 1, 0], [1, 0, 2], [5, 0, 3]] {
        let mut w = World::new(3, &[0, 10, 20]);
        for op in ops(order) {
            w.step(&op);
            w.check_seen();
        }
        w.rounds();
        let view: Vec<(TopicId, String)> = w.reps[1]
            .topics()
            .map(|(id, n, _)| (id, n.to_string()))
            .collect();
        views.push(view);
    }
    assert!(views.windows(2).all(|p| p[0] == p[1]), "{views:?}");
    assert_eq!(views[0][0].1, "orders");
}
