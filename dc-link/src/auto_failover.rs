//! Automatic failover (`chronik.failover.auto=true` on a topic): a mirror
//! region takes the home role of a topic whose home region has been silent
//! for `chronik.failover.timeout.ms`, if its copy is the most caught-up of
//! the regions still heard, and once a majority of the lease voters agree
//! that the home's lease has expired (the same promotion as `chronik ctl
//! failover`; the voters make it safe, the choice below only keeps two
//! survivors from competing for one epoch).

use std::sync::Arc;
use std::time::Duration;

use crate::lease_link::LeaseClient;
use crate::{AutoTopic, Shared};

/// Whether the home has been silent long enough: it has not answered this
/// region's renewals for `timeout_ms` (or never, in a process up that long).
pub fn home_silent(heard_ms_ago: Option<u64>, started_ms_ago: u64, timeout_ms: u64) -> bool {
    heard_ms_ago.unwrap_or(started_ms_ago) >= timeout_ms
}

/// Whether `me`, whose copy holds `mine`, is the one to take the topic:
/// no other region still heard holds more, and none holding as much has a
/// smaller name. `others`: (region, its copy's total, heard from lately).
pub fn is_candidate(me: &str, mine: i64, others: &[(String, i64)]) -> bool {
    others
        .iter()
        .all(|(r, end)| *end < mine || (*end == mine && r.as_str() > me))
}

/// Reports of other regions' copies older than this are not counted: the
/// region is gone too, or does not mirror the topic.
const FRESH: Duration = Duration::from_secs(3);

pub async fn run(shared: Arc<Shared>, lease: Arc<LeaseClient>) {
    let mut warned_no_majority = false;
    // Topics whose home was found silent (announced once per silence).
    let mut silent: std::collections::HashSet<uuid::Uuid> = Default::default();
    loop {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let topics: Vec<AutoTopic> = shared.auto_topics.lock().unwrap().clone();
        if topics.is_empty() || !shared.actor.may_act() {
            continue;
        }
        if lease.voter_count() < 3 {
            if !warned_no_majority {
                tracing::warn!("chronik.failover.auto is set on mirror topics here, but with fewer than three lease voters no majority can agree: automatic failover is off (add a witness)");
                warned_no_majority = true;
            }
            continue;
        }
        for t in topics {
            if !home_silent(
                lease.heard_ms_ago(&t.home),
                lease.started_ms_ago(),
                t.timeout_ms,
            ) {
                silent.remove(&t.id);
                continue;
            }
            if silent.insert(t.id) {
                tracing::warn!(topic = %t.name, home = %t.home, timeout_ms = t.timeout_ms, "automatic failover: the home is silent; asking the lease voters once its lease has expired");
            }
            let mine = shared.mirror_total(&t.home, &t.name);
            let others: Vec<(String, i64)> = shared
                .peer_ends
                .lock()
                .unwrap()
                .iter()
                .filter(|((r, id), (_, at))| *id == t.id && *r != t.home && at.elapsed() < FRESH)
                .map(|((r, _), (end, _))| (r.clone(), *end))
                .collect();
            if !is_candidate(&shared.region, mine, &others) {
                continue;
            }
            if let Err(e) = take(&shared, &lease, &t).await {
                tracing::debug!(topic = %t.name, error = %e, "automatic failover not yet");
            }
        }
    }
}

/// One attempt: the voters' agreement, then the home taken here.
async fn take(shared: &Shared, lease: &LeaseClient, t: &AutoTopic) -> Result<(), String> {
    use crate::broker_http::{encode_segment, get_json, post_json_body};
    let enc = encode_segment(&t.name);
    let mut last = String::from("no broker admin address");
    let mut found = None;
    for a in &shared.local_region().brokers_admin {
        match get_json::<serde_json::Value>(a, &format!("/v1/home/{enc}")).await {
            Ok(v) => {
                found = Some((a.clone(), v));
                break;
            }
            Err(e) => last = e.to_string(),
        }
    }
    let (admin, state) = found.ok_or(last)?;
    let (Some(home), Some(epoch)) = (state["home"].as_str(), state["epoch"].as_u64()) else {
        return Err("no global home entry".into());
    };
    if home != t.home {
        return Ok(()); // moved already (here, or elsewhere)
    }
    let replies = lease.promote(t.id, &t.home, epoch + 1).await?;
    let agreed = replies.values().filter(|r| r.accepted).count();
    if agreed <= lease.voter_count() / 2 {
        let why: Vec<String> = replies
            .iter()
            .filter(|(_, r)| !r.accepted)
            .map(|(v, r)| format!("{v}: {}", r.refusal))
            .collect();
        return Err(why.join("; "));
    }
    // Which of the lost home's commits reached this region whole.
    let settle = crate::settle_view(&shared.local_region().brokers_admin, &t.home).await?;
    post_json_body::<serde_json::Value>(
        &admin,
        &format!("/v1/home/{enc}/take?from={}&epoch={}", t.home, epoch + 1),
        &settle,
    )
    .await
    .map_err(|e| e.to_string())?;
    tracing::warn!(topic = %t.name, from = %t.home, to = %shared.region, epoch = epoch + 1, "automatic failover: home role taken");
    metrics::counter!("chronik_failover_auto_total", "topic" => t.name.clone()).increment(1);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn silence_counts_from_the_last_answer_or_the_start() {
        assert!(!home_silent(Some(900), 60_000, 1_000));
        assert!(home_silent(Some(1_000), 60_000, 1_000));
        assert!(!home_silent(None, 500, 1_000));
        assert!(home_silent(None, 1_500, 1_000));
    }

    #[test]
    fn the_most_caught_up_copy_takes_it_ties_by_name() {
        assert!(is_candidate("eu-west", 100, &[]));
        assert!(is_candidate("eu-west", 100, &[("ap-south".into(), 90)]));
        assert!(!is_candidate("eu-west", 100, &[("ap-south".into(), 110)]));
        assert!(!is_candidate("eu-west", 100, &[("ap-south".into(), 100)]));
        assert!(is_candidate("ap-south", 100, &[("eu-west".into(), 100)]));
    }
}
