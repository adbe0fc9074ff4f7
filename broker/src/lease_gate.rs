//! The home-role lease as a broker enforces it: the region's dc-link holds
//! the lease (see `chronik_dc_link::lease_link`) and tells every broker how
//! much longer the region may take writes; the produce path asks [`check`]
//! for every partition of a mirrored topic homed here.
//!
//! The push cannot make the broker's deadline later than the holder's: the
//! dc-link first reads this broker's clock (`GET /v1/lease/clock`), then
//! computes what is left, and the deadline counts from that earlier
//! reading. A push carrying another process's clock (the broker restarted
//! in between) is refused.
//!
//! Whether the lease binds at all depends on the number of voters: with two
//! regions and no witness there is no majority to lose, and a cut-off home
//! keeps writing. The count is kept in `lease-voters` in the data directory,
//! so a restarted broker enforces the lease before its dc-link is back.
//!
//! [`check`]: LeaseGate::check

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Instant;

use serde::Deserialize;
use uuid::Uuid;

/// Writes stop this long before the deadline: a produce accepted just
/// before it still has to commit in the region.
pub const STOP_EARLY_MS: u64 = 300;

#[derive(Debug, Deserialize)]
pub struct MovedTopic {
    pub topic_id: Uuid,
    pub epoch: u64,
}

/// One push from the dc-link.
#[derive(Debug, Deserialize)]
pub struct Push {
    /// Which broker process's clock `from_ms` reads.
    pub boot: String,
    pub from_ms: u64,
    pub valid_for_ms: u64,
    pub voters: usize,
    #[serde(default)]
    pub moved: Vec<MovedTopic>,
    /// Where the pushing dc-link takes produces to forward to other
    /// regions (see `crate::forward`).
    #[serde(default)]
    pub forward: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LeaseRefusal {
    #[error("region {region} holds no home lease: a majority of the {voters} lease voters has not renewed it (for {lapsed_ms} ms); writes resume once it does")]
    Lapsed {
        region: String,
        voters: usize,
        lapsed_ms: u64,
    },
    #[error("the home role of this topic was given to another region (epoch {epoch}) while {region} was cut off")]
    Moved { region: String, epoch: u64 },
}

#[derive(Debug, Default)]
struct State {
    voters: usize,
    until_ms: u64,
    moved: HashMap<Uuid, u64>,
}

pub struct LeaseGate {
    boot: String,
    start: Instant,
    region: String,
    file: PathBuf,
    state: Mutex<State>,
}

impl LeaseGate {
    pub fn open(region: &str, data_dir: &std::path::Path) -> LeaseGate {
        let file = data_dir.join("lease-voters");
        let voters = std::fs::read_to_string(&file)
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        LeaseGate {
            boot: Uuid::new_v4().to_string(),
            start: Instant::now(),
            region: region.to_string(),
            file,
            state: Mutex::new(State {
                voters,
                ..State::default()
            }),
        }
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// This broker process (a new id at every start).
    pub fn boot(&self) -> &str {
        &self.boot
    }

    /// (this process, its clock) for `GET /v1/lease/clock`.
    pub fn clock(&self) -> (String, u64) {
        (self.boot.clone(), self.now_ms())
    }

    pub fn push(&self, p: Push) -> Result<(), String> {
        if p.boot != self.boot {
            return Err("the clock reading is from another broker process".into());
        }
        let mut s = self.state.lock().unwrap();
        if s.voters != p.voters {
            if let Err(e) = std::fs::write(&self.file, p.voters.to_string()) {
                tracing::warn!(file = %self.file.display(), error = %e, "cannot keep the lease voter count");
            }
            s.voters = p.voters;
        }
        s.until_ms = s.until_ms.max(p.from_ms + p.valid_for_ms);
        for m in p.moved {
            let e = s.moved.entry(m.topic_id).or_insert(m.epoch);
            *e = (*e).max(m.epoch);
        }
        Ok(())
    }

    /// Whether the lease binds at all (three voters or more).
    pub fn binds(&self) -> bool {
        self.state.lock().unwrap().voters >= 3
    }

    /// Whether a topic homed here at `epoch` may take a write now.
    pub fn check(&self, topic: &Uuid, epoch: u64) -> Result<(), LeaseRefusal> {
        let now = self.now_ms();
        let s = self.state.lock().unwrap();
        decide(&s, &self.region, now, topic, epoch)
    }

    pub fn report(&self) -> serde_json::Value {
        let now = self.now_ms();
        let s = self.state.lock().unwrap();
        serde_json::json!({
            "voters": s.voters,
            "enforced": s.voters >= 3,
            "valid_for_ms": s.until_ms.saturating_sub(now),
            "moved": s.moved.iter().map(|(t, e)| serde_json::json!({"topic_id": t, "epoch": e})).collect::<Vec<_>>(),
        })
    }
}

fn decide(s: &State, region: &str, now: u64, topic: &Uuid, epoch: u64) -> Result<(), LeaseRefusal> {
    if s.voters < 3 {
        return Ok(());
    }
    if let Some(moved) = s.moved.get(topic).filter(|m| **m > epoch) {
        return Err(LeaseRefusal::Moved {
            region: region.to_string(),
            epoch: *moved,
        });
    }
    if now + STOP_EARLY_MS >= s.until_ms {
        return Err(LeaseRefusal::Lapsed {
            region: region.to_string(),
            voters: s.voters,
            lapsed_ms: now.saturating_sub(s.until_ms.saturating_sub(STOP_EARLY_MS)),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(voters: usize, until_ms: u64) -> State {
        State {
            voters,
            until_ms,
            moved: HashMap::new(),
        }
    }

    #[test]
    fn two_voters_never_bind() {
        assert_eq!(decide(&state(2, 0), "a", 10_000, &Uuid::nil(), 1), Ok(()));
    }

    #[test]
    fn writes_stop_before_the_deadline() {
        let s = state(3, 5_000);
        assert_eq!(decide(&s, "a", 4_000, &Uuid::nil(), 1), Ok(()));
        assert!(matches!(
            decide(&s, "a", 5_000 - STOP_EARLY_MS, &Uuid::nil(), 1),
            Err(LeaseRefusal::Lapsed { .. })
        ));
    }

    #[test]
    fn a_topic_promoted_elsewhere_stops_even_with_a_live_lease() {
        let t = Uuid::from_u128(7);
        let mut s = state(3, 60_000);
        s.moved.insert(t, 3);
        assert_eq!(
            decide(&s, "a", 0, &t, 2),
            Err(LeaseRefusal::Moved {
                region: "a".into(),
                epoch: 3
            })
        );
        // Moved back here at a later epoch: writable again.
        assert_eq!(decide(&s, "a", 0, &t, 4), Ok(()));
    }

    #[test]
    fn a_push_from_before_a_restart_is_refused() {
        let dir = std::env::temp_dir().join(format!("lease-gate-{}", Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        // A restarted broker: the voter count is known before any push.
        std::fs::write(dir.join("lease-voters"), "3").unwrap();
        let g = LeaseGate::open("a", &dir);
        let push = |boot: String| Push {
            boot,
            from_ms: 0,
            valid_for_ms: 60_000,
            voters: 3,
            moved: vec![],
            forward: None,
        };
        assert!(g.push(push("other".into())).is_err());
        assert!(matches!(
            g.check(&Uuid::nil(), 1),
            Err(LeaseRefusal::Lapsed { .. })
        ));
        g.push(push(g.clock().0)).unwrap();
        assert_eq!(g.check(&Uuid::nil(), 1), Ok(()));
        let mut more = push(g.clock().0);
        more.voters = 5;
        g.push(more).unwrap();
        assert_eq!(LeaseGate::open("a", &dir).report()["voters"], 5);
        std::fs::remove_dir_all(dir).ok();
    }
}
