//! `chronik ctl broker list|add|remove`: grow and shrink a running region
//! through any of its brokers' admin APIs (`/v1/brokers`).

use std::process::ExitCode;
use std::time::{Duration, Instant};

use chronik_dc_link::broker_http::{get_json, post_json, HttpError};
use clap::Subcommand;
use serde_json::Value;

#[derive(clap::Args)]
pub struct Region {
    /// Admin address (host:port) of a broker of the region (repeatable; the
    /// first that answers is used).
    #[arg(long = "broker", value_name = "ADDR", required = true)]
    brokers: Vec<String>,
}

#[derive(Subcommand)]
pub enum BrokerCommand {
    /// The region's brokers: state, controller role, replicas hosted.
    List {
        #[command(flatten)]
        region: Region,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Add a started broker to the region (or cancel its removal, or
    /// correct the address of one still joining); waits until it votes in
    /// the regional controller and takes replicas.
    Add {
        /// The new broker's node_id.
        id: i32,
        /// Its Raft peer address as the other brokers reach it (listeners.raft).
        #[arg(long, value_name = "HOST:PORT")]
        raft: String,
        #[command(flatten)]
        region: Region,
        /// Return once the controller recorded the broker, without waiting
        /// for it to catch up and vote.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 300)]
        timeout_secs: u64,
    },
    /// Remove a broker: its partition replicas move to the other brokers,
    /// then it leaves the controller. Waits until it is removed; stop it
    /// then.
    Remove {
        id: i32,
        #[command(flatten)]
        region: Region,
        /// Return once the removal started.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait, in seconds.
        #[arg(long, default_value_t = 1800)]
        timeout_secs: u64,
    },
}

pub fn run(cmd: BrokerCommand) -> ExitCode {
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    match rt.block_on(go(cmd)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

/// Asks each address in turn; a refusal (an HTTP status) is final, an
/// unreachable broker is not.
async fn ask(region: &Region, post: bool, path: &str) -> Result<Value, String> {
    let mut last = String::new();
    for b in &region.brokers {
        let r = if post {
            post_json::<Value>(b, path).await
        } else {
            get_json::<Value>(b, path).await
        };
        match r {
            Ok(v) => return Ok(v),
            Err(HttpError::Status { body, .. }) => {
                let message = serde_json::from_str::<Value>(&body)
                    .ok()
                    .and_then(|v| v["error"].as_str().map(str::to_string))
                    .unwrap_or(body);
                return Err(message);
            }
            Err(e) => last = e.to_string(),
        }
    }
    Err(format!("no broker of the region answers ({last})"))
}

fn find(list: &Value, id: i32) -> Option<&Value> {
    list["brokers"]
        .as_array()?
        .iter()
        .find(|b| b["id"].as_i64() == Some(id as i64))
}

/// Polls the list until `done` holds for broker `id`, printing `progress`
/// when it changes.
async fn wait_for(
    region: &Region,
    id: i32,
    timeout: Duration,
    done: impl Fn(&Value) -> bool,
    progress: impl Fn(&Value) -> String,
) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut said = String::new();
    loop {
        let list = ask(region, false, "/v1/brokers").await?;
        if let Some(b) = find(&list, id) {
            if done(b) {
                return Ok(());
            }
            let now = progress(b);
            if now != said {
                eprintln!("broker {id}: {now}");
                said = now;
            }
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "broker {id} did not get there within {}s (still: {said}); the change goes on, `chronik ctl broker list` follows it",
                timeout.as_secs()
            ));
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

async fn go(cmd: BrokerCommand) -> Result<(), String> {
    match cmd {
        BrokerCommand::List { region, json } => {
            let list = ask(&region, false, "/v1/brokers").await?;
            if json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&list).unwrap_or_default()
                );
                return Ok(());
            }
            println!(
                "region {} (controller leader {})",
                list["region"].as_str().unwrap_or("?"),
                list["controller_leader"]
            );
            println!(
                "{:>4}  {:<8}  {:<10}  {:>8}  {:<6}  {:<22}  RAFT",
                "ID", "STATE", "CONTROLLER", "REPLICAS", "ALIVE", "KAFKA"
            );
            for b in list["brokers"].as_array().into_iter().flatten() {
                println!(
                    "{:>4}  {:<8}  {:<10}  {:>8}  {:<6}  {:<22}  {}",
                    b["id"],
                    b["state"].as_str().unwrap_or("?"),
                    b["controller"].as_str().unwrap_or("-"),
                    b["replicas"],
                    b["alive"],
                    b["kafka"].as_str().unwrap_or("-"),
                    b["raft"].as_str().unwrap_or("(configured)"),
                );
            }
            Ok(())
        }
        BrokerCommand::Add {
            id,
            raft,
            region,
            no_wait,
            timeout_secs,
        } => {
            if raft.is_empty()
                || !raft
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || ".:-_[]".contains(c))
            {
                return Err(format!("--raft {raft:?} is not host:port"));
            }
            let path = format!("/v1/brokers/{id}/add?raft={raft}");
            ask(&region, true, &path).await?;
            eprintln!("broker {id}: added; peers reach it at {raft}");
            if no_wait {
                return Ok(());
            }
            wait_for(
                &region,
                id,
                Duration::from_secs(timeout_secs),
                |b| b["state"] == "active",
                |b| match b["controller"].as_str() {
                    Some("learner") => "catching up with the controller".into(),
                    Some("voter") => "votes; becoming active".into(),
                    _ if b["alive"] == false => "not heard from: is it started?".into(),
                    _ => "waiting for the controller".into(),
                },
            )
            .await?;
            println!("broker {id} is an active member of the region: it votes in its controller and takes replicas");
            Ok(())
        }
        BrokerCommand::Remove {
            id,
            region,
            no_wait,
            timeout_secs,
        } => {
            ask(&region, true, &format!("/v1/brokers/{id}/remove")).await?;
            eprintln!("broker {id}: leaving; its replicas move to the other brokers");
            if no_wait {
                return Ok(());
            }
            wait_for(
                &region,
                id,
                Duration::from_secs(timeout_secs),
                |b| b["state"] == "removed",
                |b| match b["replicas"].as_u64() {
                    Some(n) if n > 0 => format!("{n} partition replica(s) still to move"),
                    _ => "leaving the controller".into(),
                },
            )
            .await?;
            println!("broker {id} is removed from the region: stop it now, and delete its data directory before ever using its id again");
            Ok(())
        }
    }
}
