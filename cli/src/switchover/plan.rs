//! What a switchover does next, decided from what every region reports
//! about the topic (no I/O). Each step is safe to repeat and the decision
//! starts from the observed state, so a switchover interrupted anywhere (a
//! crash of the CLI, a broker or a dc-link) is completed by running it
//! again.

use std::collections::BTreeMap;

/// One partition as its leader in a region reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionView {
    /// `Some((home, epoch))` once a role entry was applied.
    pub role: Option<(bool, u64)>,
    pub high_watermark: i64,
    pub log_end_offset: i64,
}

/// One region's view of the topic.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RegionView {
    /// The topic's global home and fencing epoch, as this region knows it.
    pub home: Option<(String, u64)>,
    /// A move away from this region under way: (target, epoch left).
    pub moving: Option<(String, u64)>,
    pub partition_count: i32,
    /// Partitions whose leader answered, by index.
    pub leaders: BTreeMap<i32, PartitionView>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Stop writes at `home` (at `epoch`).
    Fence { home: String, epoch: u64 },
    /// The fence is recorded; partitions still take writes until each
    /// leader applied its demotion.
    WaitDemoted { home: String, pending: Vec<i32> },
    /// The target's copy is behind the fenced log ends: (partition, home
    /// end, target high watermark).
    Drain {
        home: String,
        behind: Vec<(i32, i64, i64)>,
    },
    /// Everything is in the target: move the home there at `epoch`.
    Move {
        home: String,
        epoch: u64,
        ends: BTreeMap<i32, i64>,
    },
    /// The home moved; the target's partitions are being promoted.
    WaitPromoted { epoch: u64, pending: Vec<i32> },
    /// The target is the home and every partition took the role.
    Done { epoch: u64 },
}

/// Decides the next step of moving the topic's home to `to`. `regions`:
/// every region of the deployment, with `None` where the topic does not
/// exist or no broker answered.
pub fn next_step(
    topic: &str,
    regions: &BTreeMap<String, Option<RegionView>>,
    to: &str,
) -> Result<Step, String> {
    let Some(target) = regions.get(to) else {
        let known: Vec<&str> = regions.keys().map(String::as_str).collect();
        return Err(format!(
            "unknown region {to} (regions: {})",
            known.join(", ")
        ));
    };
    let views: Vec<&RegionView> = regions.values().flatten().collect();
    if views.is_empty() {
        return Err(format!("unknown topic {topic}"));
    }
    let Some(target) = target else {
        return Err(format!(
            "region {to} holds no copy of topic {topic} (or no broker of it answered)"
        ));
    };
    let Some((home, epoch)) = views
        .iter()
        .filter_map(|v| v.home.clone())
        .max_by_key(|h| h.1)
    else {
        return Err(format!(
            "topic {topic} has no global home entry (it was created outside metadata-sync)"
        ));
    };
    if home == to {
        let pending: Vec<i32> = (0..target.partition_count)
            .filter(|p| match target.leaders.get(p) {
                None => true,
                // Epoch 1: created here, never moved, no role entry needed.
                Some(v) => epoch > 1 && !v.role.is_some_and(|(h, e)| h && e >= epoch),
            })
            .collect();
        return Ok(if pending.is_empty() {
            Step::Done { epoch }
        } else {
            Step::WaitPromoted { epoch, pending }
        });
    }
    let Some(Some(current)) = regions.get(&home) else {
        return Err(format!(
            "the home region {home} of topic {topic} does not answer; a switchover needs it (use failover)"
        ));
    };
    match &current.moving {
        None => Ok(Step::Fence { home, epoch }),
        Some((other, _)) if other != to => Err(format!(
            "a move of topic {topic} from {home} to {other} is already under way; finish it, or abort it first"
        )),
        Some(_) => {
            let pending: Vec<i32> = (0..current.partition_count)
                .filter(|p| {
                    current
                        .leaders
                        .get(p)
                        .is_none_or(|v| v.role.is_none_or(|(h, e)| h || e < epoch))
                })
                .collect();
            if !pending.is_empty() {
                return Ok(Step::WaitDemoted { home, pending });
            }
            let ends: BTreeMap<i32, i64> = current
                .leaders
                .iter()
                .map(|(p, v)| (*p, v.log_end_offset))
                .collect();
            let behind: Vec<(i32, i64, i64)> = ends
                .iter()
                .filter_map(|(p, end)| {
                    let got = target.leaders.get(p).map_or(-1, |v| v.high_watermark);
                    (got < *end).then_some((*p, *end, got))
                })
                .collect();
            if behind.is_empty() {
                Ok(Step::Move {
                    home,
                    epoch: epoch + 1,
                    ends,
                })
            } else {
                Ok(Step::Drain { home, behind })
            }
        }
    }
}

/// Why the target's `pending` partitions are not promoted yet, as its
/// brokers report it: what an operator needs when a move stays there.
pub fn promotion_holdup(target: Option<&RegionView>, epoch: u64, pending: &[i32]) -> String {
    let Some(t) = target else {
        return "no broker of the target answers".into();
    };
    let known = match &t.home {
        Some((h, e)) if *e >= epoch => format!("it knows the home is {h} at epoch {e}"),
        Some((h, e)) => format!(
            "it still knows the home as {h} at epoch {e} (metadata-sync has not brought epoch {epoch})"
        ),
        None => "it has no home entry for the topic".into(),
    };
    let parts: Vec<String> = pending
        .iter()
        .map(|p| match t.leaders.get(p) {
            None => format!("{p}: no leader"),
            Some(v) => match v.role {
                None => format!("{p}: no role entry"),
                Some((home, e)) => {
                    format!("{p}: {} at epoch {e}", if home { "home" } else { "mirror" })
                }
            },
        })
        .collect();
    format!("{known}; {}", parts.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn part(role: Option<(bool, u64)>, hw: i64) -> PartitionView {
        PartitionView {
            role,
            high_watermark: hw,
            log_end_offset: hw,
        }
    }

    fn view(home: &str, epoch: u64, moving: Option<&str>, parts: &[PartitionView]) -> RegionView {
        RegionView {
            home: Some((home.into(), epoch)),
            moving: moving.map(|m| (m.to_string(), epoch)),
            partition_count: parts.len() as i32,
            leaders: parts
                .iter()
                .enumerate()
                .map(|(i, p)| (i as i32, p.clone()))
                .collect(),
        }
    }

    fn regions(
        a: Option<RegionView>,
        b: Option<RegionView>,
    ) -> BTreeMap<String, Option<RegionView>> {
        [("a".to_string(), a), ("b".to_string(), b)].into()
    }

    #[test]
    fn a_switchover_goes_fence_demote_drain_move_promote() {
        let mirror = view("a", 1, None, &[part(None, 5), part(None, 7)]);
        let r = regions(
            Some(view("a", 1, None, &[part(None, 10), part(None, 7)])),
            Some(mirror.clone()),
        );
        assert_eq!(
            next_step("t", &r, "b"),
            Ok(Step::Fence {
                home: "a".into(),
                epoch: 1
            })
        );
        // Fenced, partition 1's leader has not demoted yet.
        let r = regions(
            Some(view(
                "a",
                1,
                Some("b"),
                &[part(Some((false, 1)), 10), part(None, 7)],
            )),
            Some(mirror.clone()),
        );
        assert_eq!(
            next_step("t", &r, "b"),
            Ok(Step::WaitDemoted {
                home: "a".into(),
                pending: vec![1]
            })
        );
        let fenced = view(
            "a",
            1,
            Some("b"),
            &[part(Some((false, 1)), 10), part(Some((false, 1)), 7)],
        );
        let r = regions(Some(fenced.clone()), Some(mirror));
        assert_eq!(
            next_step("t", &r, "b"),
            Ok(Step::Drain {
                home: "a".into(),
                behind: vec![(0, 10, 5)]
            })
        );
        let caught_up = view("a", 1, None, &[part(None, 10), part(None, 7)]);
        let r = regions(Some(fenced), Some(caught_up));
        assert_eq!(
            next_step("t", &r, "b"),
            Ok(Step::Move {
                home: "a".into(),
                epoch: 2,
                ends: [(0, 10), (1, 7)].into()
            })
        );
        // Moved: the target knows it is home at epoch 2, one partition promoted.
        let r = regions(
            Some(view(
                "b",
                2,
                None,
                &[part(Some((false, 2)), 10), part(Some((false, 2)), 7)],
            )),
            Some(view(
                "b",
                2,
                None,
                &[part(Some((true, 2)), 10), part(None, 7)],
            )),
        );
        assert_eq!(
            next_step("t", &r, "b"),
            Ok(Step::WaitPromoted {
                epoch: 2,
                pending: vec![1]
            })
        );
        let r = regions(
            None,
            Some(view(
                "b",
                2,
                None,
                &[part(Some((true, 2)), 10), part(Some((true, 2)), 7)],
            )),
        );
        assert_eq!(next_step("t", &r, "b"), Ok(Step::Done { epoch: 2 }));
    }

    #[test]
    fn a_stuck_promotion_says_what_the_target_reports() {
        let behind = view("a", 1, None, &[part(None, 3), part(Some((false, 1)), 3)]);
        let why = promotion_holdup(Some(&behind), 2, &[0, 1]);
        assert!(
            why.contains("still knows the home as a at epoch 1"),
            "{why}"
        );
        assert!(
            why.contains("0: no role entry, 1: mirror at epoch 1"),
            "{why}"
        );
        let mut heard = view("b", 2, None, &[part(Some((false, 2)), 3)]);
        heard.leaders.clear();
        let why = promotion_holdup(Some(&heard), 2, &[0]);
        assert!(
            why.contains("knows the home is b at epoch 2; 0: no leader"),
            "{why}"
        );
        assert_eq!(
            promotion_holdup(None, 2, &[0]),
            "no broker of the target answers"
        );
    }

    #[test]
    fn the_newest_epoch_any_region_knows_wins() {
        // The old home already moved; the target has not heard yet.
        let r = regions(
            Some(view("b", 2, None, &[part(Some((false, 2)), 3)])),
            Some(view("a", 1, None, &[part(None, 3)])),
        );
        assert_eq!(
            next_step("t", &r, "b"),
            Ok(Step::WaitPromoted {
                epoch: 2,
                pending: vec![0]
            })
        );
    }

    #[test]
    fn bad_moves_are_refused_with_the_reason() {
        let home = view("a", 1, None, &[part(None, 1)]);
        let r = regions(
            Some(home.clone()),
            Some(view("a", 1, None, &[part(None, 1)])),
        );
        assert!(next_step("t", &r, "c")
            .unwrap_err()
            .contains("unknown region c"));
        assert!(next_step("t", &regions(None, None), "b")
            .unwrap_err()
            .contains("unknown topic t"));
        assert!(next_step("t", &regions(Some(home.clone()), None), "b")
            .unwrap_err()
            .contains("holds no copy"));
        assert_eq!(next_step("t", &r, "a"), Ok(Step::Done { epoch: 1 }));
        let r = regions(
            Some(view("a", 1, Some("c"), &[part(None, 1)])),
            Some(view("a", 1, None, &[part(None, 1)])),
        );
        assert!(next_step("t", &r, "b")
            .unwrap_err()
            .contains("already under way"));
        // The home region does not answer: not a switchover.
        let r = regions(None, Some(view("a", 1, None, &[part(None, 1)])));
        assert!(next_step("t", &r, "b")
            .unwrap_err()
            .contains("use failover"));
    }
}
