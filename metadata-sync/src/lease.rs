//! The home-role lease: which region may take writes for its topics, granted
//! and renewed by a majority of voters (every region, plus an optional
//! witness), so that a home cut off from the majority stops writing before
//! any other region can be promoted in its place.
//!
//! No I/O and no clock reads: every input carries the caller's monotonic
//! time in milliseconds, so the rules are tested deterministically, with
//! clocks that run at different rates and messages that are delayed, lost or
//! repeated (see the tests).
//!
//! **Holder** (the home region). Every `renew_every` it asks every voter for
//! a grant. Once a majority granted round `r`, sent at local time `s`, it may
//! write until `s + duration * (1 - max_drift)`, except for topics a granter
//! reports as promoted elsewhere: those it stops at once.
//!
//! **Acceptor** (each voter). A grant to holder `H` makes the acceptor treat
//! `H`'s lease as live for `duration * (1 + max_drift)` from when it granted.
//! It accepts a promotion of a topic away from `H` only once that has passed,
//! never twice for one epoch, never for an older epoch, and never in its
//! first `duration * (1 + max_drift)` after a restart (grants are not
//! durable; promotions are, and the caller stores them). Every grant lists
//! the promotions it accepted away from the holder, for the holder's topics.
//!
//! Why two majorities cannot overlap in time: a promotion needs a majority
//! of acceptors, and the round a holder relies on was granted by a majority;
//! some acceptor is in both. If it granted first, it refuses the promotion
//! until the holder's lease has ended by its own clock, which (with drift
//! within `max_drift`) is after the holder's own end. If it accepted the
//! promotion first, its grant of that round names the topic, and the holder
//! never counts the round as covering it.

use std::collections::{BTreeMap, BTreeSet};

use crate::{RegionId, TopicId};

/// Timing of the lease, shared by every holder and acceptor.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseConfig {
    pub duration_ms: u64,
    pub renew_every_ms: u64,
    /// The largest relative difference between two voters' clock rates
    /// (0.01: a clock may run up to 1% fast or slow).
    pub max_drift: f64,
}

impl Default for LeaseConfig {
    fn default() -> LeaseConfig {
        LeaseConfig {
            duration_ms: 6_000,
            renew_every_ms: 1_000,
            max_drift: 0.01,
        }
    }
}

impl LeaseConfig {
    /// How long the holder trusts a grant, from when it asked.
    fn holder_ms(&self) -> u64 {
        (self.duration_ms as f64 * (1.0 - self.max_drift)).floor() as u64
    }

    /// How long an acceptor treats a grant as live, from when it granted.
    fn acceptor_ms(&self) -> u64 {
        (self.duration_ms as f64 * (1.0 + self.max_drift)).ceil() as u64
    }
}

/// A topic's home moved from `from` to `to` at fencing epoch `epoch`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Promotion {
    pub topic: TopicId,
    pub from: RegionId,
    pub to: RegionId,
    pub epoch: u64,
}

/// An acceptor's answer to a renewal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub round: u64,
    /// Of the topics the holder named, those this acceptor promoted away
    /// from it: (topic, epoch).
    pub moved: Vec<(TopicId, u64)>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("{holder}'s lease is live here for another {remaining_ms} ms")]
    LeaseLive { holder: RegionId, remaining_ms: u64 },
    #[error("restarted {elapsed_ms} ms ago; leases granted before the restart may still be live")]
    Recovering { elapsed_ms: u64 },
    #[error("already promoted to {to} at epoch {epoch}")]
    Taken { to: RegionId, epoch: u64 },
    /// Not the voter's rule but its keeper's: the promotion could not be
    /// stored, or the process may not vote now (a standby dc-link).
    #[error("{0}")]
    Unavailable(String),
}

/// One voter's side of the lease.
#[derive(Debug, Clone)]
pub struct Acceptor {
    cfg: LeaseConfig,
    started_ms: u64,
    /// Holder -> local time its lease is live until.
    live_until: BTreeMap<RegionId, u64>,
    /// The newest promotion accepted per topic (durable, by the caller).
    promoted: BTreeMap<TopicId, Promotion>,
}

impl Acceptor {
    /// An acceptor starting at local time `now_ms` with the promotions it
    /// stored before.
    pub fn new(
        cfg: LeaseConfig,
        now_ms: u64,
        promoted: impl IntoIterator<Item = Promotion>,
    ) -> Self {
        Acceptor {
            cfg,
            started_ms: now_ms,
            live_until: BTreeMap::new(),
            promoted: promoted.into_iter().map(|p| (p.topic, p)).collect(),
        }
    }

    /// A renewal from `holder` naming the topics it homes at their epochs.
    pub fn renew(
        &mut self,
        now_ms: u64,
        holder: &RegionId,
        round: u64,
        topics: &[(TopicId, u64)],
    ) -> Grant {
        let until = now_ms + self.cfg.acceptor_ms();
        let e = self.live_until.entry(holder.clone()).or_insert(until);
        *e = (*e).max(until);
        let moved = topics
            .iter()
            .filter_map(|(t, epoch)| {
                let p = self.promoted.get(t)?;
                (p.epoch > *epoch && p.to != *holder).then_some((*t, p.epoch))
            })
            .collect();
        Grant { round, moved }
    }

    /// Whether this acceptor agrees to `p`. On `Ok` the caller must store
    /// `p` durably before answering.
    pub fn promote(&mut self, now_ms: u64, p: &Promotion) -> Result<(), Refusal> {
        if let Some(have) = self.promoted.get(&p.topic) {
            if have.epoch == p.epoch && have.to == p.to {
                return Ok(());
            }
            if have.epoch >= p.epoch {
                return Err(Refusal::Taken {
                    to: have.to.clone(),
                    epoch: have.epoch,
                });
            }
        }
        let elapsed_ms = now_ms.saturating_sub(self.started_ms);
        if elapsed_ms < self.cfg.acceptor_ms() {
            return Err(Refusal::Recovering { elapsed_ms });
        }
        if let Some(until) = self.live_until.get(&p.from).filter(|u| **u > now_ms) {
            return Err(Refusal::LeaseLive {
                holder: p.from.clone(),
                remaining_ms: until - now_ms,
            });
        }
        self.promoted.insert(p.topic, p.clone());
        Ok(())
    }

    pub fn promotions(&self) -> impl Iterator<Item = &Promotion> {
        self.promoted.values()
    }

    /// For how much longer this acceptor treats `holder`'s lease as live
    /// (0: expired, or never granted since the restart).
    pub fn live_for_ms(&self, now_ms: u64, holder: &RegionId) -> u64 {
        self.live_until
            .get(holder)
            .map_or(0, |u| u.saturating_sub(now_ms))
    }

    /// Whether promotions are refused because of a recent restart.
    pub fn recovering(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.started_ms) < self.cfg.acceptor_ms()
    }
}

/// A round of renewals in flight.
#[derive(Debug, Clone)]
struct Round {
    sent_ms: u64,
    granted: BTreeSet<RegionId>,
    moved: BTreeMap<TopicId, u64>,
}

/// The home region's side of the lease.
#[derive(Debug, Clone)]
pub struct Holder {
    cfg: LeaseConfig,
    voters: BTreeSet<RegionId>,
    next_round: u64,
    last_sent_ms: Option<u64>,
    rounds: BTreeMap<u64, Round>,
    /// Local time the lease is good until (0: never held).
    valid_until_ms: u64,
    /// Topics a majority round reported as promoted elsewhere, with the
    /// epoch: never writable here again at an older epoch.
    moved: BTreeMap<TopicId, u64>,
}

impl Holder {
    pub fn new(cfg: LeaseConfig, voters: impl IntoIterator<Item = RegionId>) -> Holder {
        Holder {
            cfg,
            voters: voters.into_iter().collect(),
            next_round: 1,
            last_sent_ms: None,
            rounds: BTreeMap::new(),
            valid_until_ms: 0,
            moved: BTreeMap::new(),
        }
    }

    fn majority(&self) -> usize {
        self.voters.len() / 2 + 1
    }

    /// The round to send to every voter now, if one is due.
    pub fn tick(&mut self, now_ms: u64) -> Option<u64> {
        if self
            .last_sent_ms
            .is_some_and(|s| now_ms < s + self.cfg.renew_every_ms)
        {
            return None;
        }
        let round = self.next_round;
        self.next_round += 1;
        self.last_sent_ms = Some(now_ms);
        self.rounds.insert(
            round,
            Round {
                sent_ms: now_ms,
                granted: BTreeSet::new(),
                moved: BTreeMap::new(),
            },
        );
        // Rounds too old to extend the lease are dropped.
        let horizon = now_ms.saturating_sub(self.cfg.holder_ms());
        self.rounds.retain(|_, r| r.sent_ms >= horizon);
        Some(round)
    }

    /// A voter's grant arrived.
    pub fn granted(&mut self, from: &RegionId, grant: &Grant) {
        if !self.voters.contains(from) {
            return;
        }
        let majority = self.majority();
        let Some(r) = self.rounds.get_mut(&grant.round) else {
            return;
        };
        r.granted.insert(from.clone());
        for (t, e) in &grant.moved {
            let m = r.moved.entry(*t).or_insert(*e);
            *m = (*m).max(*e);
        }
        if r.granted.len() >= majority {
            // Every topic any granter of this round reported moved stays
            // moved, whatever later rounds say.
            for (t, e) in &r.moved {
                let m = self.moved.entry(*t).or_insert(*e);
                *m = (*m).max(*e);
            }
            let until = r.sent_ms + self.cfg.holder_ms();
            self.valid_until_ms = self.valid_until_ms.max(until);
        }
    }

    /// Whether this region may take writes for `topic` (homed here at
    /// `epoch`) at local time `now_ms`.
    pub fn may_write(&self, now_ms: u64, topic: &TopicId, epoch: u64) -> bool {
        now_ms < self.valid_until_ms && self.moved.get(topic).is_none_or(|e| *e <= epoch)
    }

    /// Local time the lease is good until (for topics not moved).
    pub fn valid_until_ms(&self) -> u64 {
        self.valid_until_ms
    }

    /// Topics a majority round reported as promoted elsewhere, with the
    /// newest epoch reported.
    pub fn moved(&self) -> impl Iterator<Item = (&TopicId, u64)> {
        self.moved.iter().map(|(t, e)| (t, *e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(name: &str) -> RegionId {
        RegionId::new(name).unwrap()
    }

    const T: TopicId = TopicId([7; 16]);

    fn cfg() -> LeaseConfig {
        LeaseConfig {
            duration_ms: 1_000,
            renew_every_ms: 200,
            max_drift: 0.05,
        }
    }

    #[test]
    fn a_majority_grant_extends_the_lease_from_when_it_was_asked() {
        let mut h = Holder::new(cfg(), [r("a"), r("b"), r("w")]);
        let mut b = Acceptor::new(cfg(), 0, []);
        let mut w = Acceptor::new(cfg(), 0, []);
        let round = h.tick(100).unwrap();
        assert!(h.tick(150).is_none(), "not due yet");
        h.granted(&r("b"), &b.renew(130, &r("a"), round, &[(T, 1)]));
        assert!(
            !h.may_write(140, &T, 1),
            "one grant of three is no majority"
        );
        h.granted(&r("w"), &w.renew(160, &r("a"), round, &[(T, 1)]));
        assert!(h.may_write(170, &T, 1));
        // Sent at 100: good for duration * (1 - drift) from then.
        assert_eq!(h.valid_until_ms(), 100 + 950);
        assert!(!h.may_write(1_050, &T, 1));
        // A stranger's grant counts for nothing.
        let mut h2 = Holder::new(cfg(), [r("a"), r("b"), r("w")]);
        let round = h2.tick(0).unwrap();
        h2.granted(
            &r("x"),
            &Grant {
                round,
                moved: vec![],
            },
        );
        h2.granted(
            &r("y"),
            &Grant {
                round,
                moved: vec![],
            },
        );
        assert!(!h2.may_write(1, &T, 1));
    }

    #[test]
    fn an_acceptor_promotes_only_once_the_lease_it_granted_ran_out() {
        let mut b = Acceptor::new(cfg(), 0, []);
        let p = Promotion {
            topic: T,
            from: r("a"),
            to: r("b"),
            epoch: 2,
        };
        // Freshly started: it may have granted before a restart.
        assert!(matches!(
            b.promote(500, &p),
            Err(Refusal::Recovering { .. })
        ));
        b.renew(2_000, &r("a"), 1, &[(T, 1)]);
        assert!(matches!(
            b.promote(2_500, &p),
            Err(Refusal::LeaseLive {
                remaining_ms: 550,
                ..
            })
        ));
        assert_eq!(b.promote(3_050, &p), Ok(()));
        assert_eq!(b.promote(3_060, &p), Ok(()), "the same promotion again");
        let rival = Promotion {
            to: r("c"),
            ..p.clone()
        };
        assert_eq!(
            b.promote(3_070, &rival),
            Err(Refusal::Taken {
                to: r("b"),
                epoch: 2
            })
        );
        // The old holder hears of it in its next grant.
        let g = b.renew(3_100, &r("a"), 9, &[(T, 1)]);
        assert_eq!(g.moved, vec![(T, 2)]);
        // Not reported to the new home, nor for a newer epoch it holds.
        assert!(b.renew(3_100, &r("b"), 1, &[(T, 2)]).moved.is_empty());
        assert!(b.renew(3_100, &r("a"), 10, &[(T, 3)]).moved.is_empty());
    }

    #[test]
    fn a_round_naming_a_moved_topic_never_covers_it() {
        let mut h = Holder::new(cfg(), [r("a"), r("b"), r("c")]);
        let round = h.tick(0).unwrap();
        h.granted(
            &r("b"),
            &Grant {
                round,
                moved: vec![(T, 2)],
            },
        );
        h.granted(
            &r("c"),
            &Grant {
                round,
                moved: vec![],
            },
        );
        let other = TopicId([8; 16]);
        assert!(h.may_write(10, &other, 1));
        assert!(!h.may_write(10, &T, 1));
        // Unless it holds the topic again, at the newer epoch or later.
        assert!(h.may_write(10, &T, 2));
    }

    /// Deterministic random numbers for the simulation.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self, n: u64) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0 % n.max(1)
        }
    }

    /// Three voters (the home `a`, `b`, a witness `w`) whose clocks run at
    /// rates within `max_drift` of each other; renewals and promotion
    /// requests delayed, lost and repeated at random; `b` asks for the topic
    /// over and over. At no real instant may `a` write the topic after `b`'s
    /// promotion reached a majority.
    #[test]
    fn the_home_never_writes_after_a_majority_promoted_another_region() {
        for seed in 1..400u64 {
            let mut rng = Rng(seed * 0x9e37_79b9_7f4a_7c15);
            let c = cfg();
            // Clock rate per voter, in parts per thousand around 1.0, kept
            // within half the drift bound either way.
            let half = (c.max_drift * 1000.0 / 2.0) as u64;
            let rate: Vec<f64> = (0..3)
                .map(|_| 1.0 + (rng.next(2 * half + 1) as f64 - half as f64) / 1000.0)
                .collect();
            let local = |v: usize, t: u64| (t as f64 * rate[v]) as u64 + 1_000;
            let names = [r("a"), r("b"), r("w")];
            let mut holder = Holder::new(c, names.clone());
            let mut acc: Vec<Acceptor> =
                (0..3).map(|v| Acceptor::new(c, local(v, 0), [])).collect();
            // (deliver at real time, to voter, what)
            enum Msg {
                Renew(u64),
                Grant(usize, Grant),
                Promote,
            }
            let mut queue: Vec<(u64, usize, Msg)> = Vec::new();
            let mut promoted_at: Option<u64> = None;
            let mut accepted: BTreeSet<usize> = BTreeSet::new();
            let cut_at = 500 + rng.next(4_000);
            for t in 0..12_000u64 {
                let a_cut = t >= cut_at;
                if let Some(round) = holder.tick(local(0, t)) {
                    for v in 0..3 {
                        if rng.next(10) < 8 {
                            queue.push((t + rng.next(150), v, Msg::Renew(round)));
                        }
                    }
                }
                if t % 37 == 0 && promoted_at.is_none() {
                    for v in 0..3 {
                        if rng.next(10) < 8 {
                            queue.push((t + rng.next(150), v, Msg::Promote));
                        }
                    }
                }
                let (due, rest): (Vec<_>, Vec<_>) = queue.into_iter().partition(|m| m.0 <= t);
                queue = rest;
                for (_, v, m) in due {
                    match m {
                        // Cut off: nothing from `a` reaches the others after the cut.
                        Msg::Renew(round) => {
                            if a_cut && v != 0 {
                                continue;
                            }
                            let g = acc[v].renew(local(v, t), &names[0], round, &[(T, 1)]);
                            queue.push((t + rng.next(150), v, Msg::Grant(v, g)));
                        }
                        Msg::Grant(from, g) => {
                            if a_cut && from != 0 {
                                continue;
                            }
                            holder.granted(&names[from], &g);
                        }
                        Msg::Promote => {
                            if a_cut && v == 0 {
                                continue;
                            }
                            let p = Promotion {
                                topic: T,
                                from: names[0].clone(),
                                to: names[1].clone(),
                                epoch: 2,
                            };
                            if acc[v].promote(local(v, t), &p).is_ok() {
                                accepted.insert(v);
                                if accepted.len() >= 2 && promoted_at.is_none() {
                                    promoted_at = Some(t);
                                }
                            }
                        }
                    }
                }
                if let Some(p) = promoted_at {
                    assert!(
                        !holder.may_write(local(0, t), &T, 1),
                        "seed {seed}: a writes at real {t} after b was promoted at {p} (cut at {cut_at}, rates {rate:?})"
                    );
                }
            }
            assert!(
                promoted_at.is_some(),
                "seed {seed}: b was never promoted after a was cut off at {cut_at}"
            );
        }
    }
}
