//! `chronik ctl meta status|conflicts`: the global `__meta` of every region,
//! read from one broker of each region (`/v1/meta/status`,
//! `/v1/meta/conflicts`) and each region's dc-link (`/v1/meta`, the lag to
//! each peer).

use std::process::ExitCode;

use chronik_dc_link::broker_http::get_json;
use serde_json::{json, Value};

use crate::{MetaArgs, MetaCommand};

/// (region name if known, broker admin addresses, dc-link admin address).
type Target = (Option<String>, Vec<String>, Option<String>);

fn targets(args: &MetaArgs) -> Result<Vec<Target>, String> {
    if !args.brokers.is_empty() {
        let mut out: Vec<Target> = args
            .brokers
            .iter()
            .map(|b| (None, vec![b.clone()], None))
            .collect();
        for (i, d) in args.dc_links.iter().enumerate() {
            if let Some(t) = out.get_mut(i) {
                t.2 = Some(d.clone());
            }
        }
        return Ok(out);
    }
    let dev = dev_json(&args.dev_dir)?;
    Ok(dev["regions"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| {
            (
                r["name"].as_str().map(str::to_string),
                r["brokers"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|b| b["admin"].as_str().map(str::to_string))
                    .collect(),
                r["dc_link"]["admin"].as_str().map(str::to_string),
            )
        })
        .collect())
}

/// A `chronik dev` deployment's dev.json (`ctl` commands without explicit
/// addresses).
pub(crate) fn dev_json(dir: &std::path::Path) -> Result<Value, String> {
    let path = dir.join("dev.json");
    std::fs::read(&path)
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        .map_err(|e| {
            format!(
                "{}: {e} (pass --broker ADDR or --dev-dir DIR)",
                path.display()
            )
        })
}

/// The first broker of the region that answers.
async fn from_region(brokers: &[String], path: &str) -> Result<Value, String> {
    let mut last = String::from("no broker address");
    for b in brokers {
        match get_json::<Value>(b, path).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e.to_string(),
        }
    }
    Err(last)
}

pub fn run(cmd: MetaCommand) -> ExitCode {
    let (args, conflicts) = match &cmd {
        MetaCommand::Status(a) => (a, false),
        MetaCommand::Conflicts(a) => (a, true),
    };
    let targets = match targets(args) {
        Ok(t) if !t.is_empty() => t,
        Ok(_) => {
            eprintln!("error: no region to ask");
            return ExitCode::from(2);
        }
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let mut regions = Vec::new();
        let mut failed = false;
        for (name, brokers, dc_link) in &targets {
            let path = if conflicts {
                "/v1/meta/conflicts"
            } else {
                "/v1/meta/status"
            };
            let mut v = match from_region(brokers, path).await {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("error: region {}: {e}", name.as_deref().unwrap_or("?"));
                    failed = true;
                    continue;
                }
            };
            if !conflicts {
                v["peers"] = match dc_link {
                    Some(d) => match get_json::<Value>(d, "/v1/meta").await {
                        Ok(m) => m["peers"].clone(),
                        Err(e) => json!({"error": e.to_string()}),
                    },
                    None => Value::Null,
                };
            }
            regions.push(v);
        }
        if args.json {
            println!(
                "{}",
                serde_json::to_string_pretty(&json!({"regions": regions})).unwrap()
            );
        } else if conflicts {
            print_conflicts(&regions);
        } else {
            print_status(&regions);
        }
        if failed {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        }
    })
}

/// A JSON value as table text (strings unquoted, so widths apply).
fn cell(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "-".into(),
        v => v.to_string(),
    }
}

fn print_status(regions: &[Value]) {
    println!(
        "{:<12} {:<18} {:>8} {:>10} {:>10} {:>9}  KNOWLEDGE",
        "REGION", "DIGEST", "ENTRIES", "TOMBSTONES", "CONFLICTS", "BEYOND"
    );
    for r in regions {
        let c = &r["conflicts"];
        let total = c["concurrent"].as_u64().unwrap_or(0)
            + c["topic_name"].as_u64().unwrap_or(0)
            + c["fence"].as_u64().unwrap_or(0);
        let knowledge: Vec<String> = r["knowledge"]
            .as_object()
            .into_iter()
            .flatten()
            .map(|(k, v)| format!("{k}:{}", v["base"]))
            .collect();
        println!(
            "{:<12} {:<18} {:>8} {:>10} {:>10} {:>9}  {}",
            r["region"].as_str().unwrap_or("?"),
            r["digest"].as_str().unwrap_or("?"),
            cell(&r["entries"]),
            cell(&r["tombstones"]),
            total,
            r["offsets_beyond_log_end"].as_array().map_or(0, Vec::len),
            knowledge.join(" ")
        );
    }
    println!();
    println!(
        "{:<12} {:<12} {:>9} {:>8} {:>10} {:>10}  LAST ERROR",
        "REGION", "TO PEER", "CONNECTED", "PENDING", "LAG (s)", "SENT"
    );
    for r in regions {
        for (peer, p) in r["peers"].as_object().into_iter().flatten() {
            println!(
                "{:<12} {:<12} {:>9} {:>8} {:>10.1} {:>10}  {}",
                r["region"].as_str().unwrap_or("?"),
                peer,
                cell(&p["connected"]),
                cell(&p["pending_entries"]),
                p["lag_seconds"].as_f64().unwrap_or(0.0),
                cell(&p["entries_sent"]),
                p["last_error"].as_str().unwrap_or("-")
            );
        }
    }
}

fn print_conflicts(regions: &[Value]) {
    for r in regions {
        let list = r["conflicts"].as_array().cloned().unwrap_or_default();
        println!(
            "region {}: {} conflict record(s)",
            r["region"].as_str().unwrap_or("?"),
            list.len()
        );
        for c in list {
            println!(
                "  #{} {} {}\n    kept: {}\n    lost: {}",
                c["seq"],
                c["key"].as_str().unwrap_or("?"),
                c["kind"],
                c["kept"],
                c["lost"]
            );
        }
    }
}
