//! One dc-link actor per region: which of a region's dc-link processes (an
//! active one and any standbys) votes for the region, holds its lease,
//! ships its data and runs its failovers.
//!
//! No I/O and no clock reads, like [`crate::lease`]. The record lives in the
//! region's controller (its Raft log orders every claim); the dc-links
//! compare-and-set it through their brokers.
//!
//! **The record** names the holder, a term (raised at every change of
//! holder, so a later term always means a later holder) and a renewal count.
//!
//! **A claim** carries the term and renewal count its sender last saw. The
//! holder's claim at its own term renews. Anyone else's claim succeeds only
//! if the record has not moved since the claimant saw it, so of two standbys
//! racing, one wins.
//!
//! **Timing.** The active renews every `renew_every_ms` and acts only until
//! `active_for_ms` after it *sent* the last renewal that succeeded. A standby
//! takes over only after seeing the record unchanged for `takeover_after_ms`
//! by its own clock, which starts no earlier than that renewal was applied,
//! so no earlier than it was sent. With `takeover_after_ms` above
//! `active_for_ms * (1 + drift)`, the old active has stopped acting by its
//! own clock before the new one starts.

use serde::{Deserialize, Serialize};

/// The controller's record of the region's dc-link actor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActorRecord {
    /// Who acts (a dc-link names itself by its QUIC listen address); empty
    /// before any claim.
    pub holder: String,
    pub term: u64,
    pub renewals: u64,
}

/// A compare-and-set on the record: `holder` wants the role and last saw
/// `term` and `renewals`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claim {
    pub holder: String,
    pub term: u64,
    pub renewals: u64,
}

/// Why a claim did not change the record; it carries the record as it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the dc-link actor is {} at term {} (renewal {}); the claim saw term {seen_term}", .current.holder, .current.term, .current.renewals)]
pub struct ClaimRefused {
    pub current: ActorRecord,
    pub seen_term: u64,
}

impl ActorRecord {
    /// The record after `c`, or why not. Deterministic: every broker of the
    /// region applies the same claims in the same order.
    pub fn claim(&self, c: &Claim) -> Result<ActorRecord, ClaimRefused> {
        let refused = || ClaimRefused {
            current: self.clone(),
            seen_term: c.term,
        };
        if c.holder.is_empty() || c.term != self.term {
            return Err(refused());
        }
        if c.holder == self.holder {
            return Ok(ActorRecord {
                renewals: self.renewals + 1,
                ..self.clone()
            });
        }
        if c.renewals != self.renewals {
            return Err(refused());
        }
        Ok(ActorRecord {
            holder: c.holder.clone(),
            term: self.term + 1,
            renewals: 0,
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ActorTimings {
    pub renew_every_ms: u64,
    /// How long after sending its last successful renewal the active acts.
    pub active_for_ms: u64,
    /// How long a standby must see the record unchanged before claiming.
    pub takeover_after_ms: u64,
}

impl Default for ActorTimings {
    fn default() -> ActorTimings {
        ActorTimings {
            renew_every_ms: 1_000,
            active_for_ms: 3_000,
            takeover_after_ms: 5_000,
        }
    }
}

impl ActorTimings {
    /// Whether a standby cannot start before the active it replaces has
    /// stopped, with clock rates differing by up to `max_drift`.
    pub fn safe(&self, max_drift: f64) -> bool {
        self.renew_every_ms > 0
            && self.renew_every_ms < self.active_for_ms
            && (self.takeover_after_ms as f64) > self.active_for_ms as f64 * (1.0 + max_drift)
    }
}

/// What a dc-link should do next about the role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Nothing until `at_ms` (or until an answer comes).
    Wait { at_ms: u64 },
    /// Read the record (a standby watching the active).
    Read,
    /// Send this claim; report the answer with [`Candidate::answered`]
    /// together with the time it was sent.
    Claim(Claim),
}

/// What an answer changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    None,
    /// This process now acts, at this term.
    Became {
        term: u64,
    },
    /// Another process took the role; this one must stop for good (its
    /// in-memory lease grants and tasks belong to a superseded term).
    Superseded {
        by: String,
        term: u64,
    },
}

/// One dc-link process's side of the role.
#[derive(Debug, Clone)]
pub struct Candidate {
    me: String,
    t: ActorTimings,
    /// The record as last seen, and since when (local ms) it was unchanged.
    seen: Option<(ActorRecord, u64)>,
    /// Active: our term and when the last successful renewal was sent.
    active: Option<(u64, u64)>,
    in_flight: bool,
    next_ms: u64,
}

impl Candidate {
    pub fn new(me: impl Into<String>, t: ActorTimings) -> Candidate {
        Candidate {
            me: me.into(),
            t,
            seen: None,
            active: None,
            in_flight: false,
            next_ms: 0,
        }
    }

    pub fn me(&self) -> &str {
        &self.me
    }

    pub fn term(&self) -> Option<u64> {
        self.active.map(|(t, _)| t)
    }

    /// Whether this process may act at `now_ms`: it holds the role and its
    /// last successful renewal is recent enough that no standby can have
    /// taken over.
    pub fn may_act(&self, now_ms: u64) -> bool {
        self.active
            .is_some_and(|(_, sent)| now_ms < sent + self.t.active_for_ms)
    }

    pub fn seen(&self) -> Option<&ActorRecord> {
        self.seen.as_ref().map(|(r, _)| r)
    }

    pub fn next(&mut self, now_ms: u64) -> Step {
        if self.in_flight || now_ms < self.next_ms {
            return Step::Wait {
                at_ms: self.next_ms.max(now_ms + 1),
            };
        }
        if let Some((term, _)) = self.active {
            self.in_flight = true;
            return Step::Claim(Claim {
                holder: self.me.clone(),
                term,
                renewals: 0,
            });
        }
        let Some((rec, since)) = &self.seen else {
            self.in_flight = true;
            return Step::Read;
        };
        // Nobody ever held it, or it is this process's own name from
        // before a restart (two processes cannot listen on one address).
        let free = rec.term == 0 || rec.holder == self.me;
        if free || now_ms >= since + self.t.takeover_after_ms {
            self.in_flight = true;
            return Step::Claim(Claim {
                holder: self.me.clone(),
                term: rec.term,
                renewals: rec.renewals,
            });
        }
        self.in_flight = true;
        Step::Read
    }

    /// A read or a refused claim came back with the record as it is.
    pub fn observed(&mut self, now_ms: u64, rec: ActorRecord) -> Change {
        self.in_flight = false;
        self.next_ms = now_ms + self.poll_ms();
        if let Some((term, _)) = self.active {
            if rec.term > term || (rec.term == term && rec.holder != self.me) {
                self.active = None;
                self.seen = Some((rec.clone(), now_ms));
                return Change::Superseded {
                    by: rec.holder,
                    term: rec.term,
                };
            }
            if rec.term == 0 {
                // The controller holds no record (its state was rebuilt):
                // claim it afresh instead of renewing a term it forgot.
                self.active = None;
                self.seen = Some((rec, now_ms));
                self.next_ms = now_ms;
            }
            // Otherwise an older term: a broker that has not applied our
            // claim yet answered. Not a reason to stop.
            return Change::None;
        }
        if rec.term == 0 || rec.holder == self.me {
            self.next_ms = now_ms; // free to claim: no need to wait a poll
        }
        match &self.seen {
            Some((old, _)) if *old == rec => {}
            _ => self.seen = Some((rec, now_ms)),
        }
        Change::None
    }

    /// A claim sent at `sent_ms` succeeded, answered at `now_ms`.
    pub fn granted(&mut self, sent_ms: u64, now_ms: u64, rec: ActorRecord) -> Change {
        if rec.holder != self.me {
            return self.observed(now_ms, rec);
        }
        self.in_flight = false;
        // Paced from the send, so a slow answer does not push the next
        // renewal past the end of this one.
        self.next_ms = (sent_ms + self.t.renew_every_ms).max(now_ms);
        let became = self.active.map(|(t, _)| t) != Some(rec.term);
        self.active = Some((rec.term, sent_ms));
        self.seen = Some((rec.clone(), now_ms));
        if became {
            Change::Became { term: rec.term }
        } else {
            Change::None
        }
    }

    /// The read or claim got no answer (brokers unreachable): try again
    /// soon. An active keeps acting only until its last renewal runs out.
    pub fn failed(&mut self, now_ms: u64) {
        self.in_flight = false;
        self.next_ms = now_ms + self.poll_ms().min(500);
    }

    fn poll_ms(&self) -> u64 {
        if self.active.is_some() {
            self.t.renew_every_ms
        } else {
            (self.t.renew_every_ms / 2).max(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: &str, term: u64, renewals: u64) -> ActorRecord {
        ActorRecord {
            holder: holder.into(),
            term,
            renewals,
        }
    }

    fn claim(holder: &str, term: u64, renewals: u64) -> Claim {
        Claim {
            holder: holder.into(),
            term,
            renewals,
        }
    }

    #[test]
    fn the_holder_renews_and_others_take_over_only_an_unchanged_record() {
        let r0 = ActorRecord::default();
        let r1 = r0.claim(&claim("a", 0, 0)).unwrap();
        assert_eq!(r1, rec("a", 1, 0));
        let r2 = r1.claim(&claim("a", 1, 0)).unwrap();
        assert_eq!(r2, rec("a", 1, 1), "a renewal counts, same term");
        // b saw renewal 0 but a renewed since: a is alive.
        assert!(r2.claim(&claim("b", 1, 0)).is_err());
        let r3 = r2.claim(&claim("b", 1, 1)).unwrap();
        assert_eq!(r3, rec("b", 2, 0));
        // a's renewal at its old term is refused, and says who holds it.
        let e = r3.claim(&claim("a", 1, 0)).unwrap_err();
        assert_eq!(e.current, rec("b", 2, 0));
        // Of two standbys that saw the same record, only the first wins.
        let c = r3.claim(&claim("c", 2, 0));
        assert!(c.is_ok());
        assert!(c.unwrap().claim(&claim("d", 2, 0)).is_err());
        assert!(r0.claim(&claim("", 0, 0)).is_err(), "a nameless claim");
    }

    #[test]
    fn a_standby_waits_for_an_unchanged_record_then_claims() {
        let t = ActorTimings::default();
        let mut s = Candidate::new("b", t);
        assert_eq!(s.next(0), Step::Read);
        assert_eq!(s.observed(10, rec("a", 1, 5)), Change::None);
        // The active keeps renewing: the standby keeps reading.
        let mut now = 10;
        for n in 6..12 {
            now += 1_000;
            assert_eq!(s.next(now), Step::Read);
            s.observed(now, rec("a", 1, n));
        }
        // Renewals stop at `now`; the standby claims only after the wait.
        let stopped = now;
        loop {
            now += 100;
            match s.next(now) {
                Step::Read => {
                    s.observed(now, rec("a", 1, 11));
                }
                Step::Wait { .. } => {}
                Step::Claim(c) => {
                    assert!(now >= stopped + t.takeover_after_ms);
                    assert_eq!(c, claim("b", 1, 11));
                    break;
                }
            }
        }
        assert!(!s.may_act(now));
        assert_eq!(
            s.granted(now, now + 5, rec("b", 2, 0)),
            Change::Became { term: 2 }
        );
        assert!(s.may_act(now + 5));
        assert!(!s.may_act(now + t.active_for_ms));
    }

    #[test]
    fn a_restarted_holder_and_a_first_claim_do_not_wait() {
        let mut s = Candidate::new("a", ActorTimings::default());
        assert_eq!(s.next(0), Step::Read);
        s.observed(1, rec("a", 3, 9));
        assert_eq!(s.next(1), Step::Claim(claim("a", 3, 9)));
        let mut f = Candidate::new("z", ActorTimings::default());
        f.next(0);
        f.observed(0, ActorRecord::default());
        assert_eq!(f.next(0), Step::Claim(claim("z", 0, 0)));
    }

    #[test]
    fn an_active_that_cannot_renew_stops_acting_and_a_superseded_one_knows() {
        let t = ActorTimings::default();
        let mut a = Candidate::new("a", t);
        a.next(0);
        a.observed(0, ActorRecord::default());
        let Step::Claim(c) = a.next(0) else { panic!() };
        assert_eq!(c.term, 0);
        assert_eq!(
            a.granted(500, 520, rec("a", 1, 0)),
            Change::Became { term: 1 }
        );
        // Renewals fail from here on.
        let mut now = 520;
        while a.may_act(now) {
            if let Step::Claim(_) = a.next(now) {
                a.failed(now);
            }
            now += 50;
        }
        assert!(now >= 500 + t.active_for_ms && now < 500 + t.active_for_ms + 100);
        // A broker behind the controller answers with an older record of
        // this term: no reason to stop.
        let Step::Claim(_) = a.next(now) else {
            panic!()
        };
        assert_eq!(a.observed(now, rec("a", 1, 0)), Change::None);
        assert_eq!(a.term(), Some(1));
        // The claim that finally gets through finds b at a later term.
        now += 1_000;
        let Step::Claim(c) = a.next(now) else {
            panic!()
        };
        assert_eq!(c, claim("a", 1, 0));
        assert_eq!(
            a.observed(now, rec("b", 2, 0)),
            Change::Superseded {
                by: "b".into(),
                term: 2
            }
        );
        assert!(!a.may_act(now));
    }

    #[test]
    fn an_active_whose_controller_forgot_the_record_claims_it_again() {
        let mut a = Candidate::new("a", ActorTimings::default());
        a.next(0);
        a.observed(0, rec("a", 4, 2));
        let Step::Claim(c) = a.next(0) else { panic!() };
        assert_eq!(c, claim("a", 4, 2));
        assert_eq!(a.granted(0, 5, rec("a", 4, 3)), Change::Became { term: 4 });
        let Step::Claim(_) = a.next(1_000) else {
            panic!()
        };
        assert_eq!(a.observed(1_010, ActorRecord::default()), Change::None);
        assert_eq!(a.next(1_010), Step::Claim(claim("a", 0, 0)));
        assert_eq!(
            a.granted(1_010, 1_020, rec("a", 1, 0)),
            Change::Became { term: 1 }
        );
    }

    #[test]
    fn default_timings_are_safe() {
        assert!(ActorTimings::default().safe(0.01));
        let unsafe_t = ActorTimings {
            takeover_after_ms: 3_000,
            ..ActorTimings::default()
        };
        assert!(!unsafe_t.safe(0.01));
    }
}
