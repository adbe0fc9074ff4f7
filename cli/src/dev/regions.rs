//! Losing and restoring one region of a running `chronik dev`, for
//! rehearsals: `chronik dev kill-region` / `start-region`, and the
//! region-loss drill. The processes and their configs are found in
//! dev.json; a restarted process is detached from whoever started it (it
//! outlives the command) and its new pid is written back to dev.json, where
//! the `chronik dev` supervisor finds it when it stops the deployment.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value;

/// One process of a region, as dev.json describes it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct DevProcess {
    /// What to call it in messages: `broker 1`, `the dc-link of us-east`.
    pub what: String,
    /// The `chronik` subcommand that runs it.
    pub command: &'static str,
    pub config: PathBuf,
    pub admin: Option<SocketAddr>,
    pub pid: u32,
}

/// The admin address of a dev.json entry (`http://127.0.0.1:13092`).
fn admin_addr(v: &Value) -> Option<SocketAddr> {
    v["admin"]
        .as_str()
        .map(|a| a.trim_start_matches("http://"))
        .and_then(|a| a.parse().ok())
}

fn process(v: &Value, what: String, command: &'static str) -> Option<DevProcess> {
    Some(DevProcess {
        what,
        command,
        config: PathBuf::from(v["config"].as_str()?),
        admin: admin_addr(v),
        pid: v["pid"].as_u64()? as u32,
    })
}

/// The processes of `region` in dev.json: its brokers, then its dc-link
/// (which is ready only once it reached its brokers).
pub(crate) fn region_processes(dev: &Value, region: &str) -> Result<Vec<DevProcess>, String> {
    let regions = dev["regions"].as_array().cloned().unwrap_or_default();
    let r = regions
        .iter()
        .find(|r| r["name"].as_str() == Some(region))
        .ok_or_else(|| {
            let names: Vec<&str> = regions.iter().filter_map(|r| r["name"].as_str()).collect();
            format!(
                "no region {region} in dev.json (regions: {})",
                names.join(", ")
            )
        })?;
    let mut out: Vec<DevProcess> = r["brokers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|b| process(b, format!("broker {}", b["id"]), "broker"))
        .collect();
    out.extend(process(
        &r["dc_link"],
        format!("the dc-link of {region}"),
        "dc-link",
    ));
    Ok(out)
}

/// Every process dev.json names (regions and witness).
pub(crate) fn all_processes(dev: &Value) -> Vec<DevProcess> {
    let mut out = Vec::new();
    for r in dev["regions"].as_array().into_iter().flatten() {
        if let Some(name) = r["name"].as_str() {
            out.extend(region_processes(dev, name).unwrap_or_default());
        }
    }
    out.extend(process(&dev["witness"], "the witness".into(), "witness"));
    out
}

/// Whether `pid` is a live process running `config` (a pid may have been
/// reused since dev.json was written, and a zombie is already dead).
pub(crate) fn running(p: &DevProcess) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", p.pid)) else {
        return false;
    };
    // The state follows the parenthesised command name.
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.split_whitespace().next());
    if matches!(state, Some("Z") | Some("X") | None) {
        return false;
    }
    std::fs::read(format!("/proc/{}/cmdline", p.pid)).is_ok_and(|c| {
        let config = p.config.to_string_lossy();
        c.split(|b| *b == 0).any(|arg| arg == config.as_bytes())
    })
}

fn signal(pid: u32, sig: i32) {
    // SAFETY: kill(2) has no memory effects; the pid was checked by `running`.
    unsafe {
        libc::kill(pid as i32, sig);
    }
}

/// Waits until none of `procs` runs; false if some still do at `deadline`.
async fn await_gone(procs: &[DevProcess], deadline: Instant) -> bool {
    loop {
        if !procs.iter().any(running) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `kill -9` every process of `region`, as a power cut would; returns how
/// many were running.
pub(crate) async fn kill_region(dir: &Path, region: &str) -> Result<usize, String> {
    let dev = crate::meta_cli::dev_json(dir)?;
    let procs: Vec<DevProcess> = region_processes(&dev, region)?
        .into_iter()
        .filter(running)
        .collect();
    for p in &procs {
        signal(p.pid, libc::SIGKILL);
    }
    if !await_gone(&procs, Instant::now() + Duration::from_secs(10)).await {
        return Err(format!(
            "processes of {region} still run 10 s after SIGKILL"
        ));
    }
    Ok(procs.len())
}

/// SIGTERM, then SIGKILL after 15 s: what the supervisor does on exit to
/// the processes it did not start itself (restarted by `start-region`).
pub(crate) async fn stop(procs: &[DevProcess]) {
    let live: Vec<DevProcess> = procs.iter().filter(|p| running(p)).cloned().collect();
    for p in &live {
        signal(p.pid, libc::SIGTERM);
    }
    if !await_gone(&live, Instant::now() + Duration::from_secs(15)).await {
        for p in live.iter().filter(|p| running(p)) {
            tracing::warn!(process = %p.what, "did not stop in 15 s; killing");
            signal(p.pid, libc::SIGKILL);
        }
    }
}

/// Starts every process of `region` that is not running, detached, output
/// appended to its log; records the new pids in dev.json and waits until
/// each answers ready. Returns how many were started.
pub(crate) async fn start_region(
    dir: &Path,
    region: &str,
    ready_in: Duration,
) -> Result<usize, String> {
    use std::os::unix::process::CommandExt;
    let exe = std::env::current_exe().map_err(|e| format!("locating the chronik binary: {e}"))?;
    let mut dev = crate::meta_cli::dev_json(dir)?;
    let procs = region_processes(&dev, region)?;
    let mut started = Vec::new();
    for p in procs.iter().filter(|p| !running(p)) {
        let (log, log2) = super::open_log(&p.config)?;
        let child = std::process::Command::new(&exe)
            .arg(p.command)
            .arg("--config")
            .arg(&p.config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            // Its own process group: a Ctrl-C meant for the command that
            // started it does not reach it.
            .process_group(0)
            .spawn()
            .map_err(|e| format!("starting {}: {e}", p.what))?;
        set_pid(&mut dev, region, p, child.id());
        started.push((p.clone(), child, p.config.with_extension("log")));
    }
    let path = dir.join("dev.json");
    super::write_atomically(
        &path,
        &serde_json::to_vec_pretty(&dev).expect("dev.json serializes"),
    )
    .map_err(|e| format!("{}: {e}", path.display()))?;
    let deadline = Instant::now() + ready_in;
    for (p, child, log) in &mut started {
        let Some(admin) = p.admin else { continue };
        while !super::probe_ready(admin).await {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "{} exited with {status} during startup; see {}",
                    p.what,
                    log.display()
                ));
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{} not ready in {} s; see {}",
                    p.what,
                    ready_in.as_secs(),
                    log.display()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(started.len())
}

/// Writes `pid` as the new pid of `p` into the dev.json value.
fn set_pid(dev: &mut Value, region: &str, p: &DevProcess, pid: u32) {
    let Some(r) = dev["regions"]
        .as_array_mut()
        .and_then(|rs| rs.iter_mut().find(|r| r["name"].as_str() == Some(region)))
    else {
        return;
    };
    let config = p.config.to_string_lossy();
    let entries = r["brokers"]
        .as_array_mut()
        .map(|bs| bs.iter_mut().collect::<Vec<_>>())
        .unwrap_or_default();
    for e in entries {
        if e["config"].as_str() == Some(&config) {
            e["pid"] = pid.into();
            return;
        }
    }
    if r["dc_link"]["config"].as_str() == Some(&config) {
        r["dc_link"]["pid"] = pid.into();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn dev() -> Value {
        json!({"regions": [
            {"name": "us-east", "brokers": [
                {"id": 1, "admin": "http://127.0.0.1:13092", "pid": 11, "config": "/d/us-east/broker-1.toml"},
                {"id": 2, "admin": "http://127.0.0.1:13093", "pid": 12, "config": "/d/us-east/broker-2.toml"}],
             "dc_link": {"admin": "http://127.0.0.1:9183", "pid": 13, "config": "/d/us-east/dc-link.toml"}},
            {"name": "eu-west", "brokers": [
                {"id": 4, "admin": "http://127.0.0.1:13192", "pid": 21, "config": "/d/eu-west/broker-4.toml"}]}],
          "witness": {"admin": "http://127.0.0.1:9173", "pid": 31, "config": "/d/witness/witness.toml"}})
    }

    #[test]
    fn a_region_is_its_brokers_then_its_dc_link() {
        let ps = region_processes(&dev(), "us-east").unwrap();
        let names: Vec<&str> = ps.iter().map(|p| p.what.as_str()).collect();
        assert_eq!(names, ["broker 1", "broker 2", "the dc-link of us-east"]);
        assert_eq!(ps[2].command, "dc-link");
        assert_eq!(ps[0].admin, Some("127.0.0.1:13092".parse().unwrap()));
        assert!(region_processes(&dev(), "ap-south")
            .unwrap_err()
            .contains("regions: us-east, eu-west"));
        assert_eq!(all_processes(&dev()).len(), 5);
    }

    #[test]
    fn a_restarted_process_gets_its_new_pid_and_nothing_else_changes() {
        let mut d = dev();
        let ps = region_processes(&d, "us-east").unwrap();
        set_pid(&mut d, "us-east", &ps[1], 99);
        set_pid(&mut d, "us-east", &ps[2], 98);
        let after = region_processes(&d, "us-east").unwrap();
        assert_eq!(
            after.iter().map(|p| p.pid).collect::<Vec<_>>(),
            [11, 99, 98]
        );
        assert_eq!(region_processes(&d, "eu-west").unwrap()[0].pid, 21);
    }

    #[test]
    fn a_pid_running_something_else_is_not_ours() {
        let me = DevProcess {
            what: "x".into(),
            command: "broker",
            config: "/no/such/config.toml".into(),
            admin: None,
            pid: std::process::id(),
        };
        assert!(!running(&me));
    }
}
