//! A failover's view of the lost home's commits in this region: every
//! broker's `/v1/txn/parts` answer, merged, checked complete, and judged
//! by `chronik_wire::settle`. `chronik ctl failover` and the automatic
//! failover both take a topic's home with this verdict, so the promoted
//! partitions keep or retract each commit of the lost home whole.

use std::collections::BTreeMap;

use chronik_wire::settle::{self, PartitionView, Plan};
use serde::Deserialize;

use crate::broker_http::{encode_segment, get_json, post_json_body};

#[derive(Debug, Deserialize)]
struct Answer {
    /// The mirror topics of the home region the broker knows, with their
    /// partition counts.
    topics: BTreeMap<String, usize>,
    /// The ones it leads.
    partitions: Vec<PartitionView>,
    /// Which broker process answered: it keeps a count in memory only.
    #[serde(default)]
    boot: Option<String>,
}

/// One round's count: the verdict, and the broker process that answered
/// at each address.
struct Count {
    plan: Plan,
    boots: BTreeMap<String, String>,
}

/// The verdict for commits of `home`, from the brokers at `brokers_admin`
/// (every broker of this region). Fails while a partition of one of
/// `home`'s topics has no leader that answers: a commit counted without it
/// would look unsettled, and the partitions promoted on that verdict would
/// disagree with the ones promoted later.
pub async fn view(brokers_admin: &[String], home: &str) -> Result<Plan, String> {
    count(brokers_admin, home).await.map(|c| c.plan)
}

async fn count(brokers_admin: &[String], home: &str) -> Result<Count, String> {
    let path = format!("/v1/txn/parts?home={}", encode_segment(home));
    let mut topics: BTreeMap<String, usize> = BTreeMap::new();
    let mut parts: BTreeMap<(String, i32), PartitionView> = BTreeMap::new();
    let mut boots = BTreeMap::new();
    let mut failed = Vec::new();
    for addr in brokers_admin {
        match get_json::<Answer>(addr, &path).await {
            Ok(a) => {
                if let Some(boot) = a.boot {
                    boots.insert(addr.clone(), boot);
                }
                for (t, n) in a.topics {
                    let e = topics.entry(t).or_insert(0);
                    *e = (*e).max(n);
                }
                for p in a.partitions {
                    // Two brokers answering for one partition (its lead
                    // moved meanwhile): the longer log is the newer view.
                    let key = (p.topic.clone(), p.partition);
                    match parts.get(&key) {
                        Some(have) if have.log_end >= p.log_end => {}
                        _ => {
                            parts.insert(key, p);
                        }
                    }
                }
            }
            Err(e) => failed.push(format!("{addr}: {e}")),
        }
    }
    complete(&topics, &parts, &failed)?;
    let view: Vec<PartitionView> = parts.into_values().collect();
    Ok(Count {
        plan: settle::plan(&view),
        boots,
    })
}

fn complete(
    topics: &BTreeMap<String, usize>,
    parts: &BTreeMap<(String, i32), PartitionView>,
    failed: &[String],
) -> Result<(), String> {
    let missing: Vec<String> = topics
        .iter()
        .flat_map(|(t, n)| (0..*n as i32).map(move |p| (t.clone(), p)))
        .filter(|k| !parts.contains_key(k))
        .map(|(t, p)| format!("{t}-{p}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let mut why = format!(
        "no leader answered for {} partition(s) of the lost region's topics ({}{})",
        missing.len(),
        missing
            .iter()
            .take(5)
            .cloned()
            .collect::<Vec<_>>()
            .join(", "),
        if missing.len() > 5 { ", ..." } else { "" }
    );
    if !failed.is_empty() {
        why.push_str(&format!("; unreachable brokers: {}", failed.join("; ")));
    }
    Err(why)
}

/// Keeps every broker of this region told which commits of `home` have
/// reached it whole, about once a second: a mirror partition's last stable
/// offset stays below a commit until all its markers are here, so a
/// read_committed consumer in this region never reads a commit that a
/// failover could still retract. A round whose view is incomplete (a
/// partition without a leader) changes nothing; commits that arrive after
/// the last view stay hidden until the next.
pub async fn keep_brokers_told(shared: std::sync::Arc<crate::Shared>, home: String) {
    let path = format!("/v1/txn/settled?home={}", encode_segment(&home));
    // Per broker address: the count it was last told, and which process
    // took it. A broker that restarted since has none (it keeps the count
    // in memory, and holds every commit until told), so it is told again
    // in the next round even when the count did not change.
    let mut told: BTreeMap<String, (Plan, String)> = BTreeMap::new();
    loop {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let brokers = shared.local_region().brokers_admin.clone();
        let round = match count(&brokers, &home).await {
            Ok(c) => c,
            Err(e) => {
                tracing::debug!(%home, error = %e, "commits of the home region not counted this round");
                continue;
            }
        };
        for b in &brokers {
            let boot = round.boots.get(b);
            let current = told
                .get(b)
                .is_some_and(|(plan, at)| *plan == round.plan && Some(at) == boot);
            if current {
                continue;
            }
            match post_json_body::<serde_json::Value>(b, &path, &round.plan).await {
                // A broker that does not say which process it is (an older
                // one) is never current: it is told every round.
                Ok(_) => {
                    if let Some(boot) = boot {
                        told.insert(b.clone(), (round.plan.clone(), boot.clone()));
                    }
                }
                Err(e) => tracing::debug!(broker = %b, error = %e, "settled commits not told"),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_partition_of_every_topic_must_answer() {
        let topics: BTreeMap<String, usize> = [("a".to_string(), 2)].into_iter().collect();
        let view = |p| PartitionView {
            topic: "a".into(),
            partition: p,
            log_end: 0,
            parts: Vec::new(),
        };
        let mut parts = BTreeMap::new();
        parts.insert(("a".to_string(), 0), view(0));
        let e = complete(&topics, &parts, &["b2: refused".into()]).unwrap_err();
        assert!(e.contains("a-1") && e.contains("b2: refused"), "{e}");
        parts.insert(("a".to_string(), 1), view(1));
        assert!(complete(&topics, &parts, &[]).is_ok());
    }
}
