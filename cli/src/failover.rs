//! `chronik ctl failover --to REGION (--topic T… | --all) [--force]`: an
//! unplanned move of topics' home role, when the home region is down or cut
//! off. Per topic:
//!
//! 1. refuse if the home is reachable from the target (use switchover);
//! 2. report the data at risk per partition, as the target last heard it
//!    from the home (records the home had acknowledged that the target's
//!    copy lacks);
//! 3. ask the lease voters to agree to the promotion, which each does only
//!    once the old home's lease has expired by its own clock (with two
//!    regions and no witness there is no majority: `--force` takes the
//!    target's own vote, after `--confirm-at-risk` acknowledged the loss);
//! 4. take the home in the target region at the next fencing epoch, and
//!    wait until every partition there is promoted.
//!
//! Re-running completes an interrupted failover: every step is idempotent.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chronik_dc_link::broker_http::{encode_segment, get_json, post_json};
use serde_json::{json, Value};

use crate::switchover::{
    all_topics, chosen_topics, deployment_or_exit, each_topic, observe_region, post_region_body,
    reason, usage_error, Deployment, DeploymentArgs, Progress,
};

#[derive(clap::Args)]
pub struct Args {
    /// The region to move the home role to.
    #[arg(long)]
    to: String,
    /// A topic to move (repeatable).
    #[arg(long = "topic", value_name = "TOPIC", required_unless_present = "all")]
    topics: Vec<String>,
    /// Every topic with a copy in --to that is homed elsewhere.
    #[arg(long, conflicts_with = "topics")]
    all: bool,
    /// Move without a majority of the lease voters (two regions and no
    /// witness). The old home may still be writing: its records after the
    /// last mirrored one are lost, and the logs can diverge.
    #[arg(long)]
    force: bool,
    /// With --force: the number of records at risk you accept losing (at
    /// least the total reported; run once without it to see the report).
    #[arg(long, value_name = "RECORDS")]
    confirm_at_risk: Option<u64>,
    /// Give up after this long (re-run to complete).
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// The admin address of the target region's dc-link. Default: from
    /// DEV_DIR/dev.json.
    #[arg(long = "dc-link", value_name = "ADDR")]
    dc_link: Option<String>,
    /// Print the result as JSON (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// One partition's data at risk, as the target region last heard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AtRisk {
    pub partition: i32,
    pub home_high_watermark: i64,
    pub mirror_log_end: i64,
    pub records: u64,
    /// How long ago the target last heard from the home (None: never).
    pub heard_ms_ago: Option<u64>,
}

/// What the target region knows when a failover is asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Situation {
    pub topic: String,
    pub home: String,
    pub to: String,
    /// The home answers the target region's lease renewals.
    pub home_link_up: bool,
    /// How much longer the home must stay silent to count as gone (0 when
    /// it already does).
    pub silent_in_ms: u64,
    pub voters: usize,
    pub at_risk: Vec<AtRisk>,
}

/// Whether the failover may go ahead (no I/O: the decisions of step 1 and
/// the `--force` rules).
pub fn may_proceed(s: &Situation, force: bool, confirm: Option<u64>) -> Result<(), String> {
    if s.home == s.to {
        return Err(format!("topic {} is already homed in {}", s.topic, s.to));
    }
    if s.home_link_up {
        return Err(format!(
            "the home region {} of topic {} is up and reachable from {}: use `chronik ctl switchover`, which loses nothing",
            s.home, s.topic, s.to
        ));
    }
    let total: u64 = s.at_risk.iter().map(|a| a.records).sum();
    if s.voters < 3 && !force {
        return Err(format!(
            "only {} lease voters (two regions and no witness): no majority can agree that {} has stopped writing. \
             Re-run with --force --confirm-at-risk {total} to move anyway; records {} took after the last mirrored one are lost",
            s.voters, s.home, s.home
        ));
    }
    if force {
        match confirm {
            Some(n) if n >= total => {}
            Some(n) => {
                return Err(format!(
                    "--confirm-at-risk {n} is less than the {total} records at risk for topic {}",
                    s.topic
                ))
            }
            None => {
                return Err(format!(
                    "--force needs --confirm-at-risk {total}: the records of topic {} at risk, as last known",
                    s.topic
                ))
            }
        }
    }
    Ok(())
}

/// The admin address of `region`'s dc-link: `explicit`, or from
/// DEV_DIR/dev.json.
pub(crate) fn dc_link_of(
    explicit: Option<&str>,
    dev_dir: &std::path::Path,
    region: &str,
) -> Result<String, String> {
    if let Some(a) = explicit {
        return Ok(a.to_string());
    }
    let dev = crate::meta_cli::dev_json(dev_dir)?;
    dev["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|r| r["name"].as_str() == Some(region))
        .and_then(|r| r["dc_link"]["admin"].as_str().map(str::to_string))
        .ok_or_else(|| {
            format!(
                "no dc-link for region {region} in {}/dev.json; give --dc-link",
                dev_dir.display()
            )
        })
}

/// What the dc-link at `link` knows of `home`, once it acts for `to`: a
/// dc-link that has just (re)started, or whose region's brokers are still
/// electing, answers its lease state only after it holds its role, and a
/// failover is often asked for in exactly that minute. Waits until
/// `deadline`, saying why.
pub(crate) async fn situation(
    link: &str,
    topic: &str,
    home: &str,
    to: &str,
    deadline: Instant,
    progress: &mut Progress,
) -> Result<Situation, String> {
    let at = |e: &dyn std::fmt::Display| format!("the dc-link of {to} at {link}: {e}");
    let lease: Value = loop {
        let lease: Value = get_json(link, "/v1/lease").await.map_err(|e| at(&e))?;
        let Some(not_acting) = lease["error"].as_str() else {
            break lease;
        };
        if Instant::now() > deadline {
            return Err(at(&format!("not acting for {to}: {not_acting}")));
        }
        progress.say(
            format!("waiting for the dc-link of {to} to act: {not_acting}"),
            Some(Duration::from_secs(5)),
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let lag: Value = get_json(link, "/v1/lag").await.map_err(|e| at(&e))?;
    let link_name = format!("{home}->{to}");
    // The home answers the target's lease renewals while it is up and
    // reachable (every renew_every_ms); a silence of a few renewals means
    // it is gone or cut off.
    let renew = lease["renew_every_ms"].as_u64().unwrap_or(1_000);
    let silence_ms = (3 * renew).max(1_500);
    let heard_ms_ago = lease["voters_heard_ms_ago"][home].as_u64();
    let home_link_up = heard_ms_ago.is_some_and(|ms| ms < silence_ms);
    let at_risk = lag["received"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["link"].as_str() == Some(link_name.as_str()) && r["topic"] == topic)
        .map(|r| AtRisk {
            partition: r["partition"].as_i64().unwrap_or(-1) as i32,
            home_high_watermark: r["home_high_watermark"].as_i64().unwrap_or(0),
            mirror_log_end: r["mirror_log_end"].as_i64().unwrap_or(0),
            records: r["at_risk_records"].as_u64().unwrap_or(0),
            heard_ms_ago: r["home_seen_ms_ago"].as_u64(),
        })
        .collect();
    Ok(Situation {
        topic: topic.to_string(),
        home: home.to_string(),
        to: to.to_string(),
        home_link_up,
        silent_in_ms: heard_ms_ago.map_or(0, |ms| silence_ms.saturating_sub(ms)),
        voters: lease["voters"].as_u64().unwrap_or(0) as usize,
        at_risk,
    })
}

fn report_at_risk(s: &Situation) {
    let total: u64 = s.at_risk.iter().map(|a| a.records).sum();
    eprintln!(
        "{}: data at risk (as {} last heard from {}): {total} records",
        s.topic, s.to, s.home
    );
    for a in &s.at_risk {
        eprintln!(
            "{}:   partition {:>3}: home high watermark {:>10}, copy ends at {:>10}, {:>8} records at risk, last heard {}",
            s.topic,
            a.partition,
            a.home_high_watermark,
            a.mirror_log_end,
            a.records,
            a.heard_ms_ago
                .map_or("never".to_string(), |ms| format!("{:.1} s ago", ms as f64 / 1000.0))
        );
    }
}

pub(crate) async fn fail_over_one(
    dep: &Deployment,
    link: &str,
    topic: &str,
    args: &Args,
) -> Result<Value, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let to = args.to.as_str();
    let mut progress = Progress::new(topic);
    let brokers = dep.get(to).ok_or_else(|| format!("unknown region {to}"))?;
    let enc = encode_segment(topic);
    let state: Value = {
        let mut last = format!("no broker of {to} answered");
        let mut found = None;
        for b in brokers {
            match get_json::<Value>(b, &format!("/v1/home/{enc}")).await {
                Ok(v) => {
                    found = Some(v);
                    break;
                }
                Err(e) => last = reason(&e),
            }
        }
        found.ok_or_else(|| match last.as_str() {
            "unknown topic" => format!("topic {topic} has no copy in region {to}"),
            _ => last,
        })?
    };
    let id = state["id"].as_str().unwrap_or_default().to_string();
    let (home, epoch) = match (state["home"].as_str(), state["epoch"].as_u64()) {
        (Some(h), Some(e)) => (h.to_string(), e),
        _ => return Err(format!("topic {topic} has no global home entry in {to}")),
    };
    if home == to {
        // Done before (a re-run), or never needed: say which.
        let view = observe_region(brokers, topic).await;
        let promoted = view.as_ref().is_some_and(|v| {
            v.partition_count > 0
                && (0..v.partition_count).all(|p| {
                    v.leaders
                        .get(&p)
                        .is_some_and(|l| l.role.is_some_and(|(h, _)| h))
                })
        });
        if promoted {
            return Err(format!(
                "topic {topic} is already homed in {to} (epoch {epoch})"
            ));
        }
    }
    let new_epoch = if home == to { epoch } else { epoch + 1 };
    if home != to {
        let mut s = situation(link, topic, &home, to, deadline, &mut progress).await?;
        if s.home_link_up {
            // Answered a moment ago, but may just have died: ask again once
            // a few renewals would have been answered.
            tokio::time::sleep(Duration::from_millis(s.silent_in_ms + 200)).await;
            s = situation(link, topic, &home, to, deadline, &mut progress).await?;
        }
        report_at_risk(&s);
        may_proceed(&s, args.force, args.confirm_at_risk)?;
        // The voters agree once the old home's lease has expired.
        loop {
            let path = format!("/v1/promote?topic_id={id}&from={home}&epoch={new_epoch}");
            let answer: Value = post_json(link, &path).await.map_err(|e| reason(&e))?;
            let own = answer["answers"][to]["accepted"] == true;
            if answer["majority"] == true || (args.force && own) {
                progress.say(
                    format!(
                        "{} of {} lease voters agreed to the promotion to {to} at epoch {new_epoch}",
                        answer["accepted"], answer["voters"]
                    ),
                    None,
                );
                break;
            }
            let refusals: Vec<String> = answer["answers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter(|(_, a)| a["accepted"] != true)
                .map(|(v, a)| format!("{v}: {}", a["refusal"].as_str().unwrap_or("?")))
                .collect();
            if refusals.iter().any(|r| r.contains("already promoted")) {
                return Err(format!(
                    "the voters already agreed to another promotion: {}",
                    refusals.join("; ")
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "no majority of the lease voters agreed within {} s: {}",
                    args.timeout_s,
                    refusals.join("; ")
                ));
            }
            // The refusals name times ("restarted 104 ms ago"), so each
            // answer reads differently: at most a line every 2 s.
            progress.say_at_most_every(
                "waiting for the voters",
                refusals.join("; "),
                Duration::from_secs(2),
            );
            let wait = answer["answers"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(_, a)| a["retry_after_ms"].as_u64().filter(|ms| *ms > 0))
                .min()
                .unwrap_or(500)
                .clamp(100, 2_000);
            tokio::time::sleep(Duration::from_millis(wait)).await;
        }
        // Which of the lost home's commits reached this region whole: the
        // promoted partitions keep or retract each commit as one. Retried
        // while a partition of the lost region's topics has no leader here.
        let settle = loop {
            match chronik_dc_link::settle_view(brokers, &home).await {
                Ok(p) => break p,
                Err(e) if Instant::now() > deadline => {
                    return Err(format!("the lost region's commits cannot be counted: {e}"))
                }
                Err(e) => {
                    progress.say(
                        format!("counting the lost region's commits: {e}"),
                        Some(Duration::from_secs(2)),
                    );
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        };
        if !settle.retract_from.is_empty() {
            progress.say(
                format!(
                    "{} producer(s) have commits that did not reach {to} whole; they are retracted",
                    settle.retract_from.len()
                ),
                None,
            );
        }
        post_region_body(
            dep,
            to,
            &format!("/v1/home/{enc}/take?from={home}&epoch={new_epoch}"),
            Some(&serde_json::to_value(&settle).expect("serializes")),
        )
        .await?;
        progress.say(format!("home taken in {to} at epoch {new_epoch}"), None);
    }
    // Every partition of the new home promoted.
    loop {
        if let Some(v) = observe_region(brokers, topic).await {
            let done = v.partition_count > 0
                && (0..v.partition_count).all(|p| {
                    v.leaders
                        .get(&p)
                        .is_some_and(|l| l.role == Some((true, new_epoch)))
                });
            if done {
                let partitions: Vec<Value> = v
                    .leaders
                    .iter()
                    .map(|(p, l)| json!({"partition": p, "log_end_offset": l.log_end_offset}))
                    .collect();
                return Ok(json!({
                    "topic": topic,
                    "from": home,
                    "to": to,
                    "epoch": new_epoch,
                    "forced": args.force,
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                    "partitions": partitions,
                }));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "the home was taken but not every partition of {topic} in {to} was promoted within {} s; re-run to wait again",
                args.timeout_s
            ));
        }
        progress.say("waiting for every partition to be promoted".into(), None);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

pub fn run(args: Args) -> ExitCode {
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let fail = usage_error;
        let dep = match deployment_or_exit(&args.deployment).await {
            Ok(d) => d,
            Err(code) => return code,
        };
        if !dep.contains_key(&args.to) {
            return fail(format!(
                "unknown region {} (regions: {})",
                args.to,
                dep.keys().cloned().collect::<Vec<_>>().join(", ")
            ));
        }
        let link = match dc_link_of(args.dc_link.as_deref(), &args.deployment.dev_dir, &args.to) {
            Ok(l) => l,
            Err(e) => return fail(e),
        };
        let topics =
            match chosen_topics(args.all, &args.topics, || all_topics(&dep, &args.to)).await {
                Ok(t) => t,
                Err(code) => return code,
            };
        let (dep, link, args) = (&dep, &link, &args);
        let print = |r: &[Value]| crate::switchover::print_moves(r, "MS", "elapsed_ms");
        each_topic(&topics, args.json, print, |t| async move {
            fail_over_one(dep, link, &t, args).await
        })
        .await
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn situation(voters: usize, link_up: bool, at_risk: u64) -> Situation {
        Situation {
            topic: "t".into(),
            home: "us-east".into(),
            to: "eu-west".into(),
            home_link_up: link_up,
            silent_in_ms: 0,
            voters,
            at_risk: vec![AtRisk {
                partition: 0,
                home_high_watermark: 10 + at_risk as i64,
                mirror_log_end: 10,
                records: at_risk,
                heard_ms_ago: Some(100),
            }],
        }
    }

    #[test]
    fn a_reachable_home_is_switched_over_not_failed_over() {
        let e = may_proceed(&situation(3, true, 0), true, Some(0)).unwrap_err();
        assert!(e.contains("switchover"), "{e}");
    }

    #[test]
    fn two_voters_need_force_and_a_confirmation_covering_the_loss() {
        let s = situation(2, false, 7);
        assert!(may_proceed(&s, false, None)
            .unwrap_err()
            .contains("--force"));
        assert!(may_proceed(&s, true, None)
            .unwrap_err()
            .contains("--confirm-at-risk 7"));
        assert!(may_proceed(&s, true, Some(6)).is_err());
        assert_eq!(may_proceed(&s, true, Some(7)), Ok(()));
    }

    #[test]
    fn with_a_majority_the_loss_is_reported_not_confirmed() {
        assert_eq!(may_proceed(&situation(3, false, 7), false, None), Ok(()));
    }

    #[test]
    fn the_home_itself_is_refused() {
        let mut s = situation(3, false, 0);
        s.to = s.home.clone();
        assert!(may_proceed(&s, false, None)
            .unwrap_err()
            .contains("already homed"));
    }
}
