//! `chronik ctl drill region-loss --region R (--topic T… | --all)`: a
//! rehearsal of losing a region, run against a live deployment, doing what
//! runbooks/region-loss-drill.md describes:
//!
//! 1. kill every process of R (chronik dev: `kill -9`; elsewhere the
//!    operator's `--stop-cmd`);
//! 2. fail R's topics over to the other region (`ctl failover`, forced with
//!    the reported loss confirmed when there is no third lease voter);
//! 3. verify every partition there is led by a home copy;
//! 4. bring R back (`--start-cmd`) and wait until its brokers are ready;
//! 5. fail back (`ctl failback`): R's diverged records into the recovery
//!    topics, R a mirror again;
//! 6. switch the home back to R (`ctl switchover`);
//! 7. verify both regions hold the same committed log.
//!
//! Then it reports the RTO (kill to every partition homed in the other
//! region), the RPO (records acknowledged by R that the new home lacked,
//! and how long before the kill the oldest of them was written), the
//! records recovered and the switch-back pause. Steps 2, 5 and 6 are the
//! same code as the `ctl` commands, parsed from the same arguments.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use chronik_dc_link::broker_http::get_bytes;
use chronik_wire::epochs::divergence;
use serde_json::{json, Value};

use crate::failback::{batch_at, leader_copy};
use crate::switchover::{
    deployment_or_exit, observe_region, topics_in, usage_error, Deployment, DeploymentArgs,
};

#[derive(clap::Subcommand)]
pub enum Drill {
    /// Rehearse losing a region: kill it, fail its topics over, verify,
    /// bring it back, fail back, switch back; report the RPO and RTO
    /// achieved and the records recovered.
    RegionLoss(RegionLossArgs),
}

#[derive(clap::Args)]
pub struct RegionLossArgs {
    /// The region to lose: the home of the drilled topics.
    #[arg(long)]
    region: String,
    /// The region to fail over to. Default: the only other region.
    #[arg(long)]
    to: Option<String>,
    /// A topic homed in --region to drill (repeatable).
    #[arg(long = "topic", value_name = "TOPIC", required_unless_present = "all")]
    topics: Vec<String>,
    /// Every topic homed in --region.
    #[arg(long, conflicts_with = "topics")]
    all: bool,
    /// A shell command that stops every broker and the dc-link of
    /// --region (run with `sh -c`, CHRONIK_DRILL_REGION set). Default with
    /// chronik dev: kill -9 the region's processes.
    #[arg(long, value_name = "COMMAND", requires = "start_cmd")]
    stop_cmd: Option<String>,
    /// A shell command that starts them again.
    #[arg(long, value_name = "COMMAND", requires = "stop_cmd")]
    start_cmd: Option<String>,
    /// Give up on a step after this long (each step can be completed by
    /// hand with its `chronik ctl` command).
    #[arg(long, default_value_t = 300)]
    timeout_s: u64,
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// The admin address of the --to region's dc-link. Default: from
    /// DEV_DIR/dev.json.
    #[arg(long = "dc-link", value_name = "ADDR")]
    dc_link: Option<String>,
    /// Print the report as JSON (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// How the drill stops and starts a region's processes.
enum RegionControl {
    /// The processes dev.json names.
    Dev(PathBuf),
    /// The operator's commands.
    Hooks { stop: String, start: String },
}

impl RegionControl {
    async fn stop(&self, region: &str) -> Result<String, String> {
        match self {
            Self::Dev(dir) => crate::dev::regions::kill_region(dir, region)
                .await
                .map(|n| format!("killed {n} processes (kill -9)")),
            Self::Hooks { stop, .. } => hook(stop, region).await.map(|_| "stop command ran".into()),
        }
    }

    async fn start(&self, region: &str, ready_in: Duration) -> Result<String, String> {
        match self {
            Self::Dev(dir) => crate::dev::regions::start_region(dir, region, ready_in)
                .await
                .map(|n| format!("started {n} processes")),
            Self::Hooks { start, .. } => hook(start, region)
                .await
                .map(|_| "start command ran".into()),
        }
    }
}

async fn hook(command: &str, region: &str) -> Result<(), String> {
    let status = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(command)
        .env("CHRONIK_DRILL_REGION", region)
        .status()
        .await
        .map_err(|e| format!("running `{command}`: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`{command}` exited with {status}"))
    }
}

/// A `ctl` command's arguments, parsed as on its command line.
fn ctl_args<A: clap::Args>(name: &'static str, argv: Vec<String>) -> Result<A, String> {
    let cmd = A::augment_args(clap::Command::new(name));
    let m = cmd
        .try_get_matches_from(std::iter::once(name.to_string()).chain(argv))
        .map_err(|e| format!("{name} arguments: {e}"))?;
    A::from_arg_matches(&m).map_err(|e| format!("{name} arguments: {e}"))
}

/// The deployment arguments the drill passes on to each `ctl` step.
fn deployment_argv(a: &RegionLossArgs) -> Vec<String> {
    let mut out = Vec::new();
    for b in &a.deployment.brokers {
        out.extend(["--broker".to_string(), b.clone()]);
    }
    if let Some(t) = &a.deployment.topology {
        out.extend(["--topology".to_string(), t.display().to_string()]);
    }
    out.extend([
        "--dev-dir".to_string(),
        a.deployment.dev_dir.display().to_string(),
    ]);
    out.extend(["--timeout-s".to_string(), a.timeout_s.to_string()]);
    out
}

fn topic_argv(topics: &[String]) -> Vec<String> {
    topics
        .iter()
        .flat_map(|t| ["--topic".to_string(), t.clone()])
        .collect()
}

/// The region to fail over to: the one named, or the only other one.
pub fn target(region: &str, to: Option<&str>, regions: &[&str]) -> Result<String, String> {
    if !regions.contains(&region) {
        return Err(format!(
            "unknown region {region} (regions: {})",
            regions.join(", ")
        ));
    }
    match to {
        Some(t) if t == region => Err(format!("--to {t} is the region being lost")),
        Some(t) if regions.contains(&t) => Ok(t.to_string()),
        Some(t) => Err(format!(
            "unknown region {t} (regions: {})",
            regions.join(", ")
        )),
        None => {
            let others: Vec<&str> = regions.iter().copied().filter(|r| *r != region).collect();
            match others[..] {
                [one] => Ok(one.to_string()),
                [] => Err("the deployment has one region: there is nowhere to fail over to".into()),
                _ => Err(format!(
                    "more than one region could take over ({}): choose with --to",
                    others.join(", ")
                )),
            }
        }
    }
}

/// What the failback recovered, split by when the lost region took it.
#[derive(Debug, PartialEq, Eq, Default)]
pub struct Recovered {
    /// Records the region had acknowledged before it went down that the new
    /// home lacked: the loss the failover took.
    pub lost_at_failover: u64,
    /// Records the region took after it came back, before it learnt that
    /// its topics were homed elsewhere (two lease voters: nothing stops it).
    pub taken_after_restart: u64,
    /// How long before the kill the oldest lost record was written (0 when
    /// none was).
    pub rpo_ms: i64,
}

/// Splits the failback's report by the records' timestamps: at or before
/// the kill (`written_before`, counted by the failback) or after it.
pub fn split_recovered(killed_at_ms: i64, failbacks: &[Value]) -> Recovered {
    let mut out = Recovered::default();
    for p in failbacks
        .iter()
        .flat_map(|f| f["partitions"].as_array().into_iter().flatten())
    {
        let copied = p["copied"].as_u64().unwrap_or(0);
        let before = p["written_before"].as_u64().unwrap_or(0).min(copied);
        out.lost_at_failover += before;
        out.taken_after_restart += copied - before;
        if before > 0 {
            if let Some(t) = p["oldest_timestamp_ms"].as_i64() {
                out.rpo_ms = out.rpo_ms.max(killed_at_ms - t);
            }
        }
    }
    out
}

/// Prints what the drill is doing (stderr) and keeps each step's timing.
struct Steps {
    started: Instant,
    done: Vec<Value>,
}

impl Steps {
    fn begin(&self, step: &str, what: &str) -> Instant {
        eprintln!(
            "drill: [{:>6.1} s] {step}: {what}",
            self.started.elapsed().as_secs_f64()
        );
        Instant::now()
    }

    fn end(&mut self, step: &str, began: Instant, note: String) {
        eprintln!(
            "drill: [{:>6.1} s] {step}: {note}",
            self.started.elapsed().as_secs_f64()
        );
        self.done.push(json!({
            "step": step,
            "at_ms": (began - self.started).as_millis() as u64,
            "took_ms": began.elapsed().as_millis() as u64,
            "result": note,
        }));
    }
}

/// Waits until every broker of `region` answers ready (`up`) or none
/// answers at all (`!up`).
async fn await_region(
    dep: &Deployment,
    region: &str,
    up: bool,
    deadline: Instant,
) -> Result<(), String> {
    let brokers = dep.get(region).cloned().unwrap_or_default();
    loop {
        let mut ready = 0;
        for b in &brokers {
            if get_bytes(b, "/health/ready").await.is_ok() {
                ready += 1;
            }
        }
        if (up && ready == brokers.len()) || (!up && ready == 0) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{ready} of {} brokers of {region} answer ready; expected {}",
                brokers.len(),
                if up { "all" } else { "none" }
            ));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Both regions hold the same committed log of topic/p up to the home's
/// high watermark as first read (producers may keep writing): the epoch
/// histories agree to there, and the last batch below it is byte-identical.
async fn same_log(
    dep: &Deployment,
    home: &str,
    mirror: &str,
    topic: &str,
    p: i32,
    deadline: Instant,
) -> Result<i64, String> {
    let (hb, mb) = (
        dep.get(home).cloned().unwrap_or_default(),
        dep.get(mirror).cloned().unwrap_or_default(),
    );
    let mut upto: Option<i64> = None;
    loop {
        if let (Some(h), Some(m)) = (
            leader_copy(&hb, topic, p).await,
            leader_copy(&mb, topic, p).await,
        ) {
            let to = *upto.get_or_insert(h.state.high_watermark);
            let start = h.state.log_start_offset.max(m.state.log_start_offset);
            if divergence(h.shape(), m.shape()) >= to && m.shape().log_end >= to {
                if to > start {
                    let (a, b) = (
                        batch_at(&h, topic, p, to - 1).await?,
                        batch_at(&m, topic, p, to - 1).await?,
                    );
                    if a.is_empty() || a != b {
                        return Err(format!(
                            "{topic}/{p}: the batch holding offset {} differs between {home} and {mirror}",
                            to - 1
                        ));
                    }
                }
                return Ok(to);
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "{topic}/{p}: {mirror} does not hold {home}'s log up to {upto:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn region_loss(
    a: &RegionLossArgs,
    dep: &Deployment,
    control: RegionControl,
) -> Result<Value, String> {
    let region = a.region.as_str();
    let names: Vec<&str> = dep.keys().map(String::as_str).collect();
    let to = target(region, a.to.as_deref(), &names)?;
    let step_time = Duration::from_secs(a.timeout_s);
    let mut steps = Steps {
        started: Instant::now(),
        done: Vec::new(),
    };

    // 0. What is drilled: topics homed in the region, with a copy in `to`.
    let topics = if a.all {
        topics_in(dep, region, |home| home == region)
            .await?
            .into_iter()
            .filter(|t| !t.starts_with("__chronik."))
            .collect()
    } else {
        a.topics.clone()
    };
    if topics.is_empty() {
        return Err(format!("no topic is homed in {region}: nothing to drill"));
    }
    let region_brokers = dep.get(region).cloned().unwrap_or_default();
    let to_brokers = dep.get(&to).cloned().unwrap_or_default();
    for t in &topics {
        let home = observe_region(&region_brokers, t)
            .await
            .ok_or_else(|| {
                format!("topic {t} has no copy in {region} (or {region} does not answer)")
            })?
            .home;
        match home {
            Some((h, _)) if h == region => {}
            Some((h, _)) => return Err(format!("topic {t} is homed in {h}, not {region}")),
            None => return Err(format!("topic {t} has no global home entry in {region}")),
        }
        if observe_region(&to_brokers, t).await.is_none() {
            return Err(format!("topic {t} has no copy in {to}"));
        }
    }
    let link = crate::failover::dc_link_of(a.dc_link.as_deref(), &a.deployment.dev_dir, &to)?;

    // 1. Kill.
    let killed_at_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    let began = steps.begin("kill", &format!("stopping every process of {region}"));
    let killed = Instant::now();
    let note = control.stop(region).await?;
    await_region(dep, region, false, Instant::now() + step_time).await?;
    steps.end("kill", began, note);

    // 2. Fail over, once `to` has stopped hearing from the region.
    let began = steps.begin(
        "failover",
        &format!("moving the home of {} topics to {to}", topics.len()),
    );
    let mut at_risk = 0u64;
    let mut voters = 0usize;
    for t in &topics {
        let deadline = Instant::now() + step_time;
        let mut progress = crate::switchover::Progress::new(t);
        loop {
            let s =
                crate::failover::situation(&link, t, region, &to, deadline, &mut progress).await?;
            if !s.home_link_up {
                at_risk += s.at_risk.iter().map(|r| r.records).sum::<u64>();
                voters = s.voters;
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{to} still hears from {region} after the kill"));
            }
            tokio::time::sleep(Duration::from_millis(s.silent_in_ms.clamp(50, 1_000))).await;
        }
    }
    let mut argv = vec!["--to".to_string(), to.clone()];
    argv.extend(topic_argv(&topics));
    argv.extend(deployment_argv(a));
    if let Some(l) = &a.dc_link {
        argv.extend(["--dc-link".to_string(), l.clone()]);
    }
    if voters < 3 {
        // No majority without the lost region: the drill accepts the loss
        // it is there to measure.
        argv.extend([
            "--force".to_string(),
            "--confirm-at-risk".to_string(),
            at_risk.to_string(),
        ]);
    }
    let fo: crate::failover::Args = ctl_args("failover", argv)?;
    let mut failovers = Vec::new();
    for t in &topics {
        failovers.push(crate::failover::fail_over_one(dep, &link, t, &fo).await?);
    }
    let rto = killed.elapsed();
    steps.end(
        "failover",
        began,
        format!("{at_risk} records at risk as {to} last heard; every partition homed in {to}"),
    );

    // 3. Verify: each partition of `to` is led by a home copy at the new epoch.
    let began = steps.begin("verify", &format!("{to} leads every partition as home"));
    for (t, f) in topics.iter().zip(&failovers) {
        let epoch = f["epoch"].as_u64().unwrap_or(0);
        let v = observe_region(&to_brokers, t)
            .await
            .ok_or_else(|| format!("{to} does not answer for {t}"))?;
        let missing: Vec<i32> = (0..v.partition_count)
            .filter(|p| v.leaders.get(p).and_then(|l| l.role) != Some((true, epoch)))
            .collect();
        if v.partition_count == 0 || !missing.is_empty() {
            return Err(format!(
                "{t}: partitions {missing:?} in {to} are not led by a home copy at epoch {epoch}"
            ));
        }
    }
    steps.end(
        "verify",
        began,
        format!("{to} is home of every drilled partition"),
    );

    // 4. Bring the region back.
    let began = steps.begin("restore", &format!("starting {region} again"));
    let note = control.start(region, step_time).await?;
    await_region(dep, region, true, Instant::now() + step_time).await?;
    steps.end(
        "restore",
        began,
        format!("{note}; every broker of {region} ready"),
    );

    // 5. Fail back.
    let began = steps.begin("failback", &format!("bringing {region} in line with {to}"));
    let mut argv = vec!["--region".to_string(), region.to_string()];
    argv.extend(topic_argv(&topics));
    argv.extend(deployment_argv(a));
    argv.extend(["--written-before-ms".to_string(), killed_at_ms.to_string()]);
    let fb: crate::failback::Args = ctl_args("failback", argv)?;
    let mut failbacks = Vec::new();
    for t in &topics {
        failbacks.push(crate::failback::failback_one(dep, t, &fb).await?);
    }
    let recovered: u64 = failbacks
        .iter()
        .map(|f| f["records_recovered"].as_u64().unwrap_or(0))
        .sum();
    steps.end(
        "failback",
        began,
        format!(
            "{recovered} records of {region} kept in the recovery topics; {region} mirrors {to}"
        ),
    );

    // 6. Switch back.
    let began = steps.begin("switch back", &format!("moving the home back to {region}"));
    let mut argv = vec!["--to".to_string(), region.to_string()];
    argv.extend(topic_argv(&topics));
    argv.extend(deployment_argv(a));
    let sw: crate::switchover::Args = ctl_args("switchover", argv)?;
    let mut switches = Vec::new();
    for t in &topics {
        switches.push(crate::switchover::switch_one(dep, t, &sw).await?);
    }
    let pause = switches
        .iter()
        .filter_map(|s| s["write_pause_ms"].as_u64())
        .max();
    steps.end("switch back", began, format!("home back in {region}"));

    // 7. Verify: the same committed log in both regions.
    let began = steps.begin("verify logs", &format!("comparing {region} and {to}"));
    let mut compared = Vec::new();
    for (t, s) in topics.iter().zip(&switches) {
        let parts = s["partitions"].as_array().map_or(0, |p| p.len()) as i32;
        for p in 0..parts {
            let upto = same_log(dep, region, &to, t, p, Instant::now() + step_time).await?;
            compared.push(json!({"topic": t, "partition": p, "up_to": upto}));
        }
    }
    steps.end(
        "verify logs",
        began,
        format!("{} partitions identical in both regions", compared.len()),
    );

    let split = split_recovered(killed_at_ms, &failbacks);
    Ok(json!({
        "region": region,
        "to": to,
        "topics": topics,
        "rto_ms": rto.as_millis() as u64,
        "at_risk_records": at_risk,
        "records_recovered": recovered,
        "lost_at_failover": split.lost_at_failover,
        "taken_after_restart": split.taken_after_restart,
        "rpo_ms": split.rpo_ms,
        "switch_back_pause_ms": pause,
        "identical": compared,
        "steps": steps.done,
        "failover": failovers,
        "failback": failbacks,
        "switchover": switches,
    }))
}

fn print_report(r: &Value) {
    let (region, to) = (
        r["region"].as_str().unwrap_or("?"),
        r["to"].as_str().unwrap_or("?"),
    );
    println!("region-loss drill: {region} lost, {to} took over, {region} home again");
    println!("{:<12} {:>8} {:>10}  RESULT", "STEP", "AT (s)", "TOOK (ms)");
    for s in r["steps"].as_array().into_iter().flatten() {
        println!(
            "{:<12} {:>8.1} {:>10}  {}",
            s["step"].as_str().unwrap_or("?"),
            s["at_ms"].as_u64().unwrap_or(0) as f64 / 1000.0,
            s["took_ms"],
            s["result"].as_str().unwrap_or("")
        );
    }
    let recovery: Vec<&str> = r["failback"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|f| f["recovery_topic"].as_str())
        .collect();
    println!(
        "RTO                {:.1} s (kill to every partition homed in {to})",
        r["rto_ms"].as_u64().unwrap_or(0) as f64 / 1000.0
    );
    println!(
        "RPO                {} records lost at the failover, written up to {:.1} s before the kill ({} at risk as {to} last heard)",
        r["lost_at_failover"],
        r["rpo_ms"].as_i64().unwrap_or(0) as f64 / 1000.0,
        r["at_risk_records"]
    );
    println!(
        "records recovered  {} in {} ({} lost at the failover, {} taken by {region} after its restart)",
        r["records_recovered"],
        if recovery.is_empty() { "-".to_string() } else { recovery.join(", ") },
        r["lost_at_failover"],
        r["taken_after_restart"]
    );
    println!(
        "switch-back pause  {} ms",
        r["switch_back_pause_ms"]
            .as_u64()
            .map_or("-".to_string(), |p| p.to_string())
    );
    println!(
        "logs identical     {} partitions in {region} and {to}",
        r["identical"].as_array().map_or(0, |a| a.len())
    );
}

pub fn run(drill: Drill) -> ExitCode {
    let Drill::RegionLoss(a) = drill;
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let dep = match deployment_or_exit(&a.deployment).await {
            Ok(d) => d,
            Err(code) => return code,
        };
        let control = match (&a.stop_cmd, &a.start_cmd) {
            (Some(stop), Some(start)) => RegionControl::Hooks {
                stop: stop.clone(),
                start: start.clone(),
            },
            _ if !a.deployment.brokers.is_empty() || a.deployment.topology.is_some() => {
                return usage_error(
                    "outside chronik dev the drill cannot stop a region by itself: give --stop-cmd and --start-cmd",
                )
            }
            _ => RegionControl::Dev(a.deployment.dev_dir.clone()),
        };
        match region_loss(&a, &dep, control).await {
            Ok(report) => {
                if a.json {
                    println!("{}", serde_json::to_string_pretty(&report).unwrap());
                } else {
                    print_report(&report);
                }
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: drill stopped: {e}");
                eprintln!(
                    "error: the deployment is left as it is; finish by hand with the steps of runbooks/region-loss-drill.md"
                );
                ExitCode::FAILURE
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_target_is_named_or_the_only_other_region() {
        let two = ["eu-west", "us-east"];
        assert_eq!(target("us-east", None, &two).unwrap(), "eu-west");
        assert_eq!(target("us-east", Some("eu-west"), &two).unwrap(), "eu-west");
        assert!(target("us-east", Some("us-east"), &two)
            .unwrap_err()
            .contains("being lost"));
        assert!(target("ap-south", None, &two)
            .unwrap_err()
            .contains("unknown region ap-south"));
        let three = ["ap-south", "eu-west", "us-east"];
        assert!(target("us-east", None, &three)
            .unwrap_err()
            .contains("--to"));
        assert!(target("us-east", None, &["us-east"])
            .unwrap_err()
            .contains("nowhere"));
    }

    #[test]
    fn recovered_records_split_at_the_kill() {
        let fb = vec![
            json!({"topic": "t", "partitions": [
                {"partition": 0, "copied": 12, "written_before": 5, "oldest_timestamp_ms": 9_500},
                {"partition": 1, "copied": 2, "written_before": 0, "oldest_timestamp_ms": 10_100},
                {"partition": 2, "copied": 0}]}),
            json!({"topic": "u", "partitions": [
                {"partition": 0, "copied": 1, "written_before": 1, "oldest_timestamp_ms": 9_900}]}),
        ];
        assert_eq!(
            split_recovered(10_000, &fb),
            Recovered {
                lost_at_failover: 6,
                taken_after_restart: 9,
                rpo_ms: 500
            }
        );
        assert_eq!(split_recovered(10_000, &[]), Recovered::default());
    }

    #[test]
    fn each_step_parses_the_arguments_its_command_would() {
        let fo: Result<crate::failover::Args, _> = ctl_args(
            "failover",
            vec![
                "--to".into(),
                "eu-west".into(),
                "--topic".into(),
                "t".into(),
            ],
        );
        assert!(fo.is_ok());
        let bad: Result<crate::failover::Args, _> =
            ctl_args("failover", vec!["--topic".into(), "t".into()]);
        assert!(bad.err().unwrap().contains("--to"));
    }
}
