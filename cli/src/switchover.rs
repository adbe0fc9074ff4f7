//! `chronik ctl switchover --to REGION (--topic T… | --all)`: a planned move
//! of topics' home role, with zero loss. Per topic: fence writes at the
//! current home, wait until every partition applied the fence, drain the
//! target's copy to the fenced log ends, move the home (next fencing epoch),
//! wait until the target promoted every partition. The old home is then a
//! mirror of the new one; no data is copied.
//!
//! Each step is decided afresh from what the regions report
//! ([`plan::next_step`]), so a run interrupted anywhere is completed by
//! running the command again, and `--abort` lifts a fence that has not
//! moved the home yet.

pub(crate) mod plan;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use chronik_dc_link::broker_http::{
    encode_segment, get_json, post_json, post_json_body, HttpError,
};
use serde_json::{json, Value};

use plan::{next_step, PartitionView, RegionView, Step};

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
    /// Lift the fence of a move that has not moved the home yet.
    #[arg(long)]
    abort: bool,
    /// Give up (leaving the topic fenced; re-run to complete) after this long.
    #[arg(long, default_value_t = 120)]
    timeout_s: u64,
    #[command(flatten)]
    deployment: DeploymentArgs,
    /// Print the result as JSON (progress still goes to stderr).
    #[arg(long)]
    json: bool,
}

/// Broker admin addresses by region.
pub(crate) type Deployment = BTreeMap<String, Vec<String>>;

/// The deployment from explicit broker addresses, a topology file, or a
/// `chronik dev` directory, in that order.
pub(crate) async fn find_deployment(
    brokers: &[String],
    topology: Option<&std::path::Path>,
    dev_dir: &std::path::Path,
) -> Result<Deployment, String> {
    let mut out = Deployment::new();
    if !brokers.is_empty() {
        for b in brokers {
            let c: Value = get_json(b, "/v1/cluster")
                .await
                .map_err(|e| format!("broker {b}: {e}"))?;
            let region = c["region"]
                .as_str()
                .ok_or_else(|| format!("broker {b}: no region in /v1/cluster"))?;
            out.entry(region.to_string()).or_default().push(b.clone());
        }
        return Ok(out);
    }
    if let Some(path) = topology {
        let topo = chronik_topology::Topology::load(path).map_err(|e| e.to_string())?;
        for r in topo.regions {
            out.insert(r.name, r.brokers_admin);
        }
        return Ok(out);
    }
    let dev = crate::meta_cli::dev_json(dev_dir)?;
    for r in dev["regions"].as_array().into_iter().flatten() {
        let name = r["name"].as_str().unwrap_or_default().to_string();
        let brokers = r["brokers"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|b| b["admin"].as_str().map(str::to_string))
            .collect();
        out.insert(name, brokers);
    }
    Ok(out)
}

/// The message of a broker's JSON error answer, or the whole error.
pub(crate) fn reason(e: &HttpError) -> String {
    if let HttpError::Status { body, .. } = e {
        if let Some(m) = serde_json::from_str::<Value>(body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_string))
        {
            return m;
        }
    }
    e.to_string()
}

/// What the region's brokers report about the topic; `None` if it has no
/// copy there (or no broker answered).
pub(crate) async fn observe_region(brokers: &[String], topic: &str) -> Option<RegionView> {
    let path = format!("/v1/home/{}", encode_segment(topic));
    let mut view: Option<RegionView> = None;
    for b in brokers {
        let Ok(v) = get_json::<Value>(b, &path).await else {
            continue;
        };
        let rv = view.get_or_insert_with(RegionView::default);
        let home = v["home"]
            .as_str()
            .zip(v["epoch"].as_u64())
            .map(|(h, e)| (h.to_string(), e));
        if home.as_ref().map(|h| h.1) > rv.home.as_ref().map(|h| h.1) {
            rv.home = home;
        }
        if let Some(m) = v["moving"].as_object() {
            rv.moving = Some((
                m["to"].as_str().unwrap_or_default().to_string(),
                m["epoch"].as_u64().unwrap_or(0),
            ));
        }
        rv.partition_count = rv
            .partition_count
            .max(v["partition_count"].as_i64().unwrap_or(0) as i32);
        for p in v["partitions"].as_array().into_iter().flatten() {
            if p["leader"].as_bool() != Some(true) {
                continue;
            }
            let role = p["role"]
                .as_str()
                .zip(p["role_epoch"].as_u64())
                .map(|(r, e)| (r == "home", e));
            rv.leaders.insert(
                p["partition"].as_i64().unwrap_or(-1) as i32,
                PartitionView {
                    role,
                    high_watermark: p["high_watermark"].as_i64().unwrap_or(-1),
                    log_end_offset: p["log_end_offset"].as_i64().unwrap_or(-1),
                },
            );
        }
    }
    view
}

pub(crate) async fn observe(dep: &Deployment, topic: &str) -> BTreeMap<String, Option<RegionView>> {
    let mut out = BTreeMap::new();
    for (region, brokers) in dep {
        out.insert(region.clone(), observe_region(brokers, topic).await);
    }
    out
}

/// POSTs to the first broker of `region` that answers.
pub(crate) async fn post_region(dep: &Deployment, region: &str, path: &str) -> Result<(), String> {
    post_region_body(dep, region, path, None).await
}

/// [`post_region`] with a JSON body.
pub(crate) async fn post_region_body(
    dep: &Deployment,
    region: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(), String> {
    let mut last = format!("no broker address for region {region}");
    for b in dep.get(region).into_iter().flatten() {
        let answer = match body {
            None => post_json::<Value>(b, path).await,
            Some(body) => post_json_body::<Value>(b, path, body).await,
        };
        match answer {
            Ok(_) => return Ok(()),
            Err(e @ HttpError::Transport { .. }) => last = e.to_string(),
            Err(e) => return Err(reason(&e)),
        }
    }
    Err(last)
}

/// Progress lines on stderr, each step once (and a drain's lag now and then).
pub(crate) struct Progress {
    topic: String,
    last: String,
    printed: Instant,
}

impl Progress {
    pub(crate) fn new(topic: &str) -> Progress {
        Progress {
            topic: topic.to_string(),
            last: String::new(),
            printed: Instant::now(),
        }
    }

    pub(crate) fn say(&mut self, line: String, repeat_every: Option<Duration>) {
        let again = repeat_every.is_some_and(|d| self.printed.elapsed() >= d);
        if line != self.last || again {
            self.print(line);
        }
    }

    /// "`what`: `detail`", for a detail that changes on every call: the
    /// first, then one every `every`.
    pub(crate) fn say_at_most_every(&mut self, what: &str, detail: String, every: Duration) {
        if !self.last.starts_with(what) || self.printed.elapsed() >= every {
            self.print(format!("{what}: {detail}"));
        }
    }

    fn print(&mut self, line: String) {
        eprintln!("{}: {line}", self.topic);
        self.last = line;
        self.printed = Instant::now();
    }
}

pub(crate) async fn switch_one(
    dep: &Deployment,
    topic: &str,
    args: &Args,
) -> Result<Value, String> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(args.timeout_s);
    let enc = encode_segment(topic);
    let mut progress = Progress::new(topic);
    let mut first = true;
    let mut from: Option<String> = None;
    let mut fenced_at: Option<Instant> = None;
    let mut ends: BTreeMap<i32, i64> = BTreeMap::new();
    loop {
        let regions = observe(dep, topic).await;
        let step = next_step(topic, &regions, &args.to)?;
        if std::mem::take(&mut first) {
            if let Step::Done { epoch } = step {
                return Err(format!(
                    "topic {topic} is already homed in {} (epoch {epoch})",
                    args.to
                ));
            }
        }
        match &step {
            Step::Fence { home, epoch } => {
                post_region(
                    dep,
                    home,
                    &format!("/v1/home/{enc}/fence?to={}&epoch={epoch}", args.to),
                )
                .await?;
                from = Some(home.clone());
                fenced_at = Some(Instant::now());
                progress.say(format!("writes fenced in {home} (epoch {epoch})"), None);
            }
            Step::WaitDemoted { home, pending } => {
                from.get_or_insert_with(|| home.clone());
                fenced_at.get_or_insert_with(Instant::now);
                progress.say(
                    format!(
                        "waiting for {} partition(s) in {home} to apply the fence",
                        pending.len()
                    ),
                    None,
                );
            }
            Step::Drain { home, behind } => {
                from.get_or_insert_with(|| home.clone());
                let lag: i64 = behind.iter().map(|(_, end, got)| end - got.max(&0)).sum();
                progress.say(
                    format!(
                        "draining to {}: {lag} record(s) behind in {} partition(s)",
                        args.to,
                        behind.len()
                    ),
                    Some(Duration::from_secs(1)),
                );
            }
            Step::Move {
                home,
                epoch,
                ends: e,
            } => {
                ends = e.clone();
                post_region(
                    dep,
                    home,
                    &format!("/v1/home/{enc}/move?to={}&epoch={epoch}", args.to),
                )
                .await?;
                from = Some(home.clone());
                progress.say(format!("home moved to {} (epoch {epoch})", args.to), None);
            }
            Step::WaitPromoted { pending, epoch } => {
                let target = regions.get(&args.to).and_then(Option::as_ref);
                progress.say(
                    format!(
                        "waiting for {} partition(s) in {} to be promoted ({})",
                        pending.len(),
                        args.to,
                        plan::promotion_holdup(target, *epoch, pending)
                    ),
                    None,
                );
            }
            Step::Done { epoch } => {
                let pause = fenced_at.map(|f| f.elapsed());
                let parts: Vec<Value> = match regions.get(&args.to) {
                    Some(Some(v)) => v
                        .leaders
                        .iter()
                        .map(|(p, pv)| {
                            json!({
                                "partition": p,
                                "log_end_offset": pv.log_end_offset,
                                "fenced_end_offset": ends.get(p),
                            })
                        })
                        .collect(),
                    _ => Vec::new(),
                };
                return Ok(json!({
                    "topic": topic,
                    "from": from,
                    "to": args.to,
                    "epoch": epoch,
                    "write_pause_ms": pause.map(|p| p.as_millis() as u64),
                    "elapsed_ms": started.elapsed().as_millis() as u64,
                    "partitions": parts,
                }));
            }
        }
        if Instant::now() > deadline {
            return Err(format!(
                "no progress past \"{}\" within {} s; the topic stays fenced where it was: \
                 run the command again to complete the move, or with --abort to lift the fence",
                progress.last, args.timeout_s
            ));
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

async fn abort_one(dep: &Deployment, topic: &str) -> Result<Value, String> {
    let regions = observe(dep, topic).await;
    let fenced = regions.iter().find_map(|(r, v)| {
        v.as_ref()?
            .moving
            .as_ref()
            .map(|m| (r.clone(), m.0.clone()))
    });
    let Some((home, to)) = fenced else {
        return Err(format!("no move of topic {topic} is under way"));
    };
    post_region(
        dep,
        &home,
        &format!("/v1/home/{}/unfence", encode_segment(topic)),
    )
    .await?;
    eprintln!("{topic}: fence lifted in {home} (the move to {to} is abandoned)");
    Ok(json!({"topic": topic, "home": home, "aborted_move_to": to}))
}

/// `--all`: the topics with a copy in `to` that are homed elsewhere.
pub(crate) async fn all_topics(dep: &Deployment, to: &str) -> Result<Vec<String>, String> {
    topics_in(dep, to, |home| home != to).await
}

/// The topics with a copy in `region` whose home (as the region's brokers
/// report it) passes `keep`.
pub(crate) async fn topics_in(
    dep: &Deployment,
    region: &str,
    keep: impl Fn(&str) -> bool,
) -> Result<Vec<String>, String> {
    let brokers = dep
        .get(region)
        .ok_or_else(|| format!("unknown region {region}"))?;
    let mut last = String::from("no broker address");
    for b in brokers {
        match get_json::<Value>(b, "/v1/meta/status").await {
            Ok(v) => {
                return Ok(v["topics"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|t| t["home"].as_str().is_some_and(&keep))
                    .filter_map(|t| t["name"].as_str().map(str::to_string))
                    .collect())
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

/// A `chronik ctl` topic command's usage error: printed, exit code 2.
pub(crate) fn usage_error(e: impl std::fmt::Display) -> ExitCode {
    eprintln!("error: {e}");
    ExitCode::from(2)
}

/// Where a `chronik ctl` topic command finds the deployment's brokers.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct DeploymentArgs {
    /// A broker admin address of the deployment (repeatable, any region;
    /// each broker says its region). Default: every broker in DEV_DIR/dev.json.
    #[arg(long = "broker", value_name = "ADDR")]
    pub brokers: Vec<String>,
    /// The deployment's topology file: every region's `brokers_admin`.
    #[arg(long, value_name = "FILE", conflicts_with = "brokers")]
    pub topology: Option<PathBuf>,
    /// The `chronik dev` data directory whose dev.json names the brokers.
    #[arg(long, default_value = "./chronik-dev")]
    pub dev_dir: PathBuf,
}

/// The deployment a topic command acts on, or its usage error.
pub(crate) async fn deployment_or_exit(d: &DeploymentArgs) -> Result<Deployment, ExitCode> {
    match find_deployment(&d.brokers, d.topology.as_deref(), &d.dev_dir).await {
        Ok(d) if !d.is_empty() => Ok(d),
        Ok(_) => Err(usage_error("no region to ask")),
        Err(e) => Err(usage_error(e)),
    }
}

/// The topics a command acts on: the ones named, or with `--all` what
/// `list` finds.
pub(crate) async fn chosen_topics<Fut>(
    all: bool,
    named: &[String],
    list: impl FnOnce() -> Fut,
) -> Result<Vec<String>, ExitCode>
where
    Fut: std::future::Future<Output = Result<Vec<String>, String>>,
{
    if all {
        list().await.map_err(usage_error)
    } else {
        Ok(named.to_vec())
    }
}

/// Runs `one` for each topic in turn (a failure does not stop the others),
/// then prints the results, as JSON or with `print`; fails if any failed.
pub(crate) async fn each_topic<F, Fut>(
    topics: &[String],
    json_out: bool,
    print: impl Fn(&[Value]),
    mut one: F,
) -> ExitCode
where
    F: FnMut(String) -> Fut,
    Fut: std::future::Future<Output = Result<Value, String>>,
{
    let mut results = Vec::new();
    let mut failed = false;
    for t in topics {
        match one(t.clone()).await {
            Ok(v) => results.push(v),
            Err(e) => {
                eprintln!("error: {t}: {e}");
                results.push(json!({"topic": t, "error": e}));
                failed = true;
            }
        }
    }
    if json_out {
        println!(
            "{}",
            serde_json::to_string_pretty(&json!({"topics": results})).unwrap()
        );
    } else {
        print(&results);
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

pub fn run(args: Args) -> ExitCode {
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let dep = match deployment_or_exit(&args.deployment).await {
            Ok(d) => d,
            Err(code) => return code,
        };
        let topics =
            match chosen_topics(args.all, &args.topics, || all_topics(&dep, &args.to)).await {
                Ok(t) => t,
                Err(code) => return code,
            };
        let (dep, args) = (&dep, &args);
        let print = |r: &[Value]| {
            if !args.abort {
                print_results(r)
            }
        };
        each_topic(&topics, args.json, print, |t| async move {
            if args.abort {
                abort_one(dep, &t).await
            } else {
                switch_one(dep, &t, args).await
            }
        })
        .await
    })
}

fn print_results(results: &[Value]) {
    print_moves(results, "PAUSE (ms)", "write_pause_ms");
}

/// The per-topic result table of a home move: TOPIC, FROM, TO, EPOCH, one
/// timing column (`header`, from the result's `key`), the log ends.
pub(crate) fn print_moves(results: &[Value], header: &str, key: &str) {
    let w = header.len().max(8);
    println!(
        "{:<32} {:<10} {:<10} {:>6} {:>w$}  PARTITIONS (log end)",
        "TOPIC", "FROM", "TO", "EPOCH", header
    );
    for r in results {
        if let Some(e) = r["error"].as_str() {
            println!("{:<32} error: {e}", r["topic"].as_str().unwrap_or("?"));
            continue;
        }
        let parts: Vec<String> = r["partitions"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|p| format!("{}:{}", p["partition"], p["log_end_offset"]))
            .collect();
        println!(
            "{:<32} {:<10} {:<10} {:>6} {:>w$}  {}",
            r["topic"].as_str().unwrap_or("?"),
            r["from"].as_str().unwrap_or("-"),
            r["to"].as_str().unwrap_or("?"),
            r["epoch"],
            r[key].as_u64().map_or("-".to_string(), |p| p.to_string()),
            parts.join(" ")
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_that_changes_every_call_is_printed_at_most_every_period() {
        let mut p = Progress::new("t");
        p.say("waiting for the dc-link".into(), None);
        let every = Duration::from_secs(3600);
        p.say_at_most_every("waiting for the voters", "a: 1 ms ago".into(), every);
        assert_eq!(
            p.last, "waiting for the voters: a: 1 ms ago",
            "a new kind of line prints at once"
        );
        p.say_at_most_every("waiting for the voters", "a: 2 ms ago".into(), every);
        assert_eq!(
            p.last, "waiting for the voters: a: 1 ms ago",
            "not again within the period"
        );
        p.say_at_most_every(
            "waiting for the voters",
            "a: 3 ms ago".into(),
            Duration::ZERO,
        );
        assert_eq!(p.last, "waiting for the voters: a: 3 ms ago");
    }
}
