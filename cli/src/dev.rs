//! `chronik dev`: a local deployment for newcomers and tests. Every broker is
//! its own OS process with a generated config file, so `kill -9` and
//! `chronik broker --config <file>` behave exactly as in production.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::Args;
use serde::Serialize;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, Command};

use chronik_topology::{BrokerConfig, Durability, Listeners, TopicDefaults};

pub(crate) mod regions;
mod secure;

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true)]
pub struct DevArgs {
    #[command(subcommand)]
    action: Option<DevAction>,
    /// Where configs, data and dev.json live.
    #[arg(long, default_value = "./chronik-dev")]
    data_dir: PathBuf,
    /// Number of regions (each gets its brokers and a dc-link).
    #[arg(long, default_value_t = 2)]
    regions: u32,
    /// Brokers per region.
    #[arg(long, default_value_t = 3)]
    nodes: u32,
    /// Kafka port of the first broker; others follow it.
    #[arg(long, default_value_t = 9092)]
    base_port: u16,
    /// Also run a witness (a home-lease voter holding no data), so that two
    /// regions still have a majority when one of them is lost. Its QUIC and
    /// admin ports sit 80 and 81 above --base-port.
    #[arg(long)]
    witness: bool,
    /// Seconds to wait for every broker to become ready.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
    /// Lock the deployment down: a SASL_SSL listener per broker (SCRAM, 20
    /// ports above its Kafka port), ACLs with a super user `admin`, mutual
    /// TLS between brokers, admin API tokens. The admin password and client
    /// properties files are written next to dev.json.
    #[arg(long)]
    secure: bool,
}

/// Rehearsing the loss of a region of a running `chronik dev`.
#[derive(clap::Subcommand, Debug)]
enum DevAction {
    /// kill -9 every process of one region (its brokers and dc-link), as a
    /// power cut would.
    KillRegion(RegionArgs),
    /// Start the stopped processes of a region again, and wait until they
    /// are ready.
    StartRegion(RegionArgs),
}

#[derive(Args, Debug)]
struct RegionArgs {
    /// The region, as dev.json names it (us-east, eu-west, ap-south).
    #[arg(long)]
    region: String,
    /// The running deployment's data directory (with dev.json).
    #[arg(long, default_value = "./chronik-dev")]
    data_dir: PathBuf,
    /// start-region: seconds to wait for the restarted processes to become
    /// ready.
    #[arg(long, default_value_t = 60)]
    ready_timeout: u64,
}

/// Region names used by `chronik dev`, in order.
const REGION_NAMES: &[&str] = &["us-east", "eu-west", "ap-south"];

#[derive(Serialize)]
struct DevBroker {
    id: i32,
    kafka: String,
    admin: String,
    pid: u32,
    config: PathBuf,
    data_dir: PathBuf,
}

#[derive(Serialize)]
struct DevDcLink {
    quic: String,
    admin: String,
    pid: u32,
    config: PathBuf,
}

#[derive(Serialize)]
struct DevRegion {
    name: String,
    bootstrap: String,
    /// `--secure`: the SASL_SSL listeners, and the admin API token file.
    #[serde(skip_serializing_if = "Option::is_none")]
    sasl_ssl_bootstrap: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    admin_token_file: Option<PathBuf>,
    admin: String,
    brokers: Vec<DevBroker>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dc_link: Option<DevDcLink>,
}

#[derive(Serialize)]
struct DevWitness {
    name: String,
    quic: String,
    admin: String,
    pid: u32,
    config: PathBuf,
}

#[derive(Serialize)]
struct DevJson {
    #[serde(skip_serializing_if = "Option::is_none")]
    secure: Option<secure::SecureJson>,
    regions: Vec<DevRegion>,
    #[serde(skip_serializing_if = "Option::is_none")]
    witness: Option<DevWitness>,
}

/// The witness `chronik dev --witness` runs.
struct PlannedWitness {
    quic: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
}

const WITNESS_NAME: &str = "witness";

struct Planned {
    region: usize,
    config: BrokerConfig,
    config_path: PathBuf,
}

struct PlannedLink {
    region: String,
    quic: SocketAddr,
    admin: SocketAddr,
    config_path: PathBuf,
}

/// Certificates (once), the topology file and one dc-link config per
/// region. dc-link ports sit 90 and 91 above the region's first Kafka port.
fn plan_dc_links(
    args: &DevArgs,
    root: &Path,
    brokers: &[Planned],
) -> Result<(Vec<PlannedLink>, Option<PlannedWitness>), String> {
    use chronik_topology::{
        CrossDc, DcLinkConfig, Faults, Lease, Region, Tls, Topology, Witness, WitnessConfig,
    };
    let names: Vec<String> = REGION_NAMES[..args.regions as usize]
        .iter()
        .map(|s| s.to_string())
        .collect();
    let certs = dev_certs(args, root)?;
    let mut regions = Vec::new();
    let mut links = Vec::new();
    for (r, name) in names.iter().enumerate() {
        let first = args.base_port as usize + r * 100;
        let port = |off: usize| {
            u16::try_from(first + off).map_err(|_| format!("port {} out of range", first + off))
        };
        let quic: SocketAddr = format!("127.0.0.1:{}", port(90)?).parse().expect("valid");
        let admin: SocketAddr = format!("127.0.0.1:{}", port(91)?).parse().expect("valid");
        let mine: Vec<&Planned> = brokers.iter().filter(|p| p.region == r).collect();
        regions.push(Region {
            name: name.clone(),
            bootstrap: mine
                .iter()
                .map(|p| {
                    let (h, port) = p.config.listeners.advertised();
                    format!("{h}:{port}")
                })
                .collect(),
            brokers_admin: mine
                .iter()
                .map(|p| p.config.listeners.admin_addr().to_string())
                .collect(),
            dc_link: quic.to_string(),
            dc_link_standby: Vec::new(),
            cert: certs.join(format!("{name}.pem")),
            key: certs.join(format!("{name}.key")),
        });
        let config_path = root.join(name).join("dc-link.toml");
        let cfg = DcLinkConfig {
            region: name.clone(),
            topology: root.join("topology.toml"),
            listen: None,
            admin,
            forward_listen: None,
            faults: Faults::default(),
            state_dir: None,
            broker_admin_token_file: if args.secure {
                Some(secure::admin_token_file(root, name)?)
            } else {
                None
            },
        };
        std::fs::write(&config_path, toml::to_string(&cfg).expect("serializes"))
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        links.push(PlannedLink {
            region: name.clone(),
            quic,
            admin,
            config_path,
        });
    }
    let mut witness = None;
    let mut witness_section = None;
    if args.witness {
        let at = |off: u16| -> Result<SocketAddr, String> {
            let port = args
                .base_port
                .checked_add(off)
                .ok_or_else(|| format!("port {} + {off} out of range", args.base_port))?;
            Ok(format!("127.0.0.1:{port}").parse().expect("valid"))
        };
        let (quic, admin) = (at(80)?, at(81)?);
        let dir = root.join(WITNESS_NAME);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let config_path = dir.join("witness.toml");
        let cfg = WitnessConfig {
            topology: root.join("topology.toml"),
            admin,
            listen: None,
            state_dir: None,
        };
        std::fs::write(&config_path, toml::to_string(&cfg).expect("serializes"))
            .map_err(|e| format!("{}: {e}", config_path.display()))?;
        witness_section = Some(Witness {
            name: WITNESS_NAME.to_string(),
            address: quic.to_string(),
            cert: certs.join(format!("{WITNESS_NAME}.pem")),
            key: certs.join(format!("{WITNESS_NAME}.key")),
        });
        witness = Some(PlannedWitness {
            quic,
            admin,
            config_path,
        });
    }
    let topo = Topology {
        cross_dc: CrossDc::default(),
        lease: Lease::default(),
        tls: Tls {
            ca: certs.join("ca.pem"),
        },
        regions,
        witness: witness_section,
    };
    let path = root.join("topology.toml");
    std::fs::write(&path, toml::to_string(&topo).expect("serializes"))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok((links, witness))
}

/// The dev CA and the region (and witness) certificates, made once.
fn dev_certs(args: &DevArgs, root: &Path) -> Result<PathBuf, String> {
    let certs = root.join("certs");
    let mut names: Vec<String> = REGION_NAMES[..args.regions as usize]
        .iter()
        .map(|s| s.to_string())
        .collect();
    names.push(WITNESS_NAME.to_string());
    if !certs.join("ca.pem").exists() || !certs.join(format!("{WITNESS_NAME}.pem")).exists() {
        chronik_dc_link::tls::init_dev_certs(&certs, &names).map_err(|e| e.to_string())?;
    }
    Ok(certs)
}

fn plan(args: &DevArgs, root: &Path) -> Result<Vec<Planned>, String> {
    if args.regions == 0 || args.regions as usize > REGION_NAMES.len() {
        return Err(format!(
            "--regions {}: must be between 1 and {}",
            args.regions,
            REGION_NAMES.len()
        ));
    }
    if args.nodes == 0 || args.nodes > 9 {
        return Err(format!("--nodes {}: must be between 1 and 9", args.nodes));
    }
    let mut out = Vec::new();
    for (r, region) in REGION_NAMES.iter().take(args.regions as usize).enumerate() {
        for n in 0..args.nodes as usize {
            let node_id = (r * 100 + n + 1) as i32;
            let port = args.base_port as usize + r * 100 + n;
            let port = u16::try_from(port).map_err(|_| format!("port {port} out of range"))?;
            // Raft listeners sit 50 ports above the Kafka listeners.
            let raft_port = |n: usize| args.base_port as usize + r * 100 + n + 50;
            let config_path = root.join(region).join(format!("broker-{node_id}.toml"));
            // Reuse an existing config so a restart keeps node ids and data.
            let config = if config_path.exists() {
                BrokerConfig::load(&config_path).map_err(|e| e.to_string())?
            } else {
                let kafka: SocketAddr = format!("127.0.0.1:{port}").parse().expect("valid address");
                let mut config = BrokerConfig {
                    node_id,
                    region: region.to_string(),
                    data_dir: root.join(region).join(format!("broker-{node_id}")),
                    durability: Durability::Fsync,
                    listeners: Listeners {
                        kafka,
                        advertised_kafka: None,
                        admin: None,
                        raft: (args.nodes > 1).then(|| {
                            format!("127.0.0.1:{}", raft_port(n))
                                .parse()
                                .expect("valid address")
                        }),
                        ..Listeners::default()
                    },
                    cluster: chronik_topology::Cluster {
                        peers: (0..args.nodes as usize)
                            .filter(|m| *m != n)
                            .map(|m| chronik_topology::Peer {
                                id: (r * 100 + m + 1) as i32,
                                raft: format!("127.0.0.1:{}", raft_port(m)),
                            })
                            .collect(),
                        ..Default::default()
                    },
                    topics: TopicDefaults {
                        auto_create: true,
                        ..TopicDefaults::default()
                    },
                    limits: Default::default(),
                    groups: Default::default(),
                    transactions: Default::default(),
                    sasl: Default::default(),
                    authorization: Default::default(),
                };
                if args.secure {
                    secure::harden(
                        &mut config,
                        root,
                        &dev_certs(args, root)?,
                        &REGION_NAMES[..args.regions as usize],
                    )?;
                }
                config
            };
            out.push(Planned {
                region: r,
                config,
                config_path,
            });
        }
    }
    Ok(out)
}

/// One HTTP/1.0 GET against a broker's admin listener; true on 200.
pub(crate) async fn probe_ready(admin: SocketAddr) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(
        Duration::from_secs(1),
        tokio::net::TcpStream::connect(admin),
    )
    .await
    else {
        return false;
    };
    if s.write_all(b"GET /health/ready HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .await
        .is_err()
    {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(1), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.0 200") || buf.starts_with(b"HTTP/1.1 200")
}

/// Waits until the process answers ready on `admin`; fails if it exits
/// first or `deadline` passes.
async fn await_ready(
    admin: SocketAddr,
    child: &mut Child,
    what: &str,
    log: &Path,
    deadline: Instant,
) -> Result<(), String> {
    while !probe_ready(admin).await {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!(
                "{what} exited with {status} during startup; see {}",
                log.display()
            ));
        }
        if Instant::now() > deadline {
            return Err(format!("{what} not ready in time; see {}", log.display()));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// The log of the process run with `config` (its path with a `.log`
/// extension), opened for appending: once for stdout, once for stderr.
fn open_log(config: &Path) -> Result<(std::fs::File, std::fs::File), String> {
    let log_path = config.with_extension("log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| format!("{}: {e}", log_path.display()))?;
    let log2 = log.try_clone().map_err(|e| e.to_string())?;
    Ok((log, log2))
}

/// Starts `chronik <command> --config <config>`, its output appended to its
/// log ([`open_log`]).
fn spawn_logged(exe: &Path, command: &str, config: &Path) -> Result<Child, String> {
    let (log, log2) = open_log(config)?;
    Command::new(exe)
        .arg(command)
        .arg("--config")
        .arg(config)
        .stdout(log)
        .stderr(log2)
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| e.to_string())
}

fn write_atomically(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("json.tmp");
    std::fs::write(&tmp, data)?;
    std::fs::rename(&tmp, path)
}

pub fn run(args: DevArgs) -> ExitCode {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    rt.block_on(async move {
        let done = match args.action {
            Some(DevAction::KillRegion(a)) => regions::kill_region(&a.data_dir, &a.region)
                .await
                .map(|n| println!("region {}: killed {n} processes", a.region)),
            Some(DevAction::StartRegion(a)) => {
                regions::start_region(&a.data_dir, &a.region, Duration::from_secs(a.ready_timeout))
                    .await
                    .map(|n| println!("region {}: started {n} processes; ready", a.region))
            }
            None => run_async(args).await,
        };
        match done {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

async fn stop_all(children: &mut [(Child, String)]) {
    for (c, _) in children.iter() {
        if let Some(pid) = c.id() {
            // SIGTERM lets each broker finish in-flight writes.
            unsafe {
                libc::kill(pid as i32, libc::SIGTERM);
            }
        }
    }
    for (c, name) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), c.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(broker = %name, "did not stop in 15 s; killing");
                let _ = c.kill().await;
            }
        }
    }
}

async fn run_async(args: DevArgs) -> Result<(), String> {
    std::fs::create_dir_all(&args.data_dir)
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;
    let root = args
        .data_dir
        .canonicalize()
        .map_err(|e| format!("{}: {e}", args.data_dir.display()))?;
    let planned = plan(&args, &root)?;
    let exe = std::env::current_exe().map_err(|e| format!("locating the chronik binary: {e}"))?;
    let mut children: Vec<(Child, String)> = Vec::new();
    for p in &planned {
        if let Some(dir) = p.config_path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
        std::fs::write(&p.config_path, p.config.to_toml())
            .map_err(|e| format!("{}: {e}", p.config_path.display()))?;
        let child = spawn_logged(&exe, "broker", &p.config_path)
            .map_err(|e| format!("starting broker {}: {e}", p.config.node_id))?;
        children.push((child, format!("broker-{}", p.config.node_id)));
    }

    if args.witness && args.regions < 2 {
        stop_all(&mut children).await;
        return Err("--witness needs --regions 2 or more".into());
    }
    let (links, witness) = if args.regions > 1 {
        plan_dc_links(&args, &root, &planned)?
    } else {
        (Vec::new(), None)
    };
    let brokers_started = children.len();
    for l in &links {
        let child = spawn_logged(&exe, "dc-link", &l.config_path)
            .map_err(|e| format!("starting the dc-link of {}: {e}", l.region))?;
        children.push((child, format!("dc-link-{}", l.region)));
    }
    if let Some(w) = &witness {
        let child = spawn_logged(&exe, "witness", &w.config_path)
            .map_err(|e| format!("starting the witness: {e}"))?;
        children.push((child, "witness".to_string()));
    }

    // Brokers first (a dc-link is ready only once it reached its brokers).
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout);
    let waits = planned
        .iter()
        .map(|p| {
            (
                p.config.listeners.admin_addr(),
                format!("broker {}", p.config.node_id),
                p.config_path.with_extension("log"),
            )
        })
        .chain(links.iter().map(|l| {
            (
                l.admin,
                format!("the dc-link of {}", l.region),
                l.config_path.with_extension("log"),
            )
        }))
        .chain(witness.iter().map(|w| {
            (
                w.admin,
                "the witness".to_string(),
                w.config_path.with_extension("log"),
            )
        }));
    for (i, (admin, what, log)) in waits.enumerate() {
        if let Err(e) = await_ready(admin, &mut children[i].0, &what, &log, deadline).await {
            stop_all(&mut children).await;
            return Err(e);
        }
    }

    let secure = match args.secure {
        false => None,
        true => {
            let (password, json) = secure::client_files(&root, &root.join("certs"))?;
            let firsts = planned.iter().filter(|p| p.config.node_id % 100 == 1);
            for p in firsts {
                let (host, port) = p.config.listeners.advertised();
                if let Err(e) = secure::create_admin(&format!("{host}:{port}"), &password).await {
                    stop_all(&mut children).await;
                    return Err(e);
                }
            }
            Some(json)
        }
    };
    let mut regions: Vec<DevRegion> = Vec::new();
    for (i, p) in planned.iter().enumerate() {
        let (host, port) = p.config.listeners.advertised();
        let kafka = format!("{host}:{port}");
        let admin = format!("http://{}", p.config.listeners.admin_addr());
        let broker = DevBroker {
            id: p.config.node_id,
            kafka: kafka.clone(),
            admin: admin.clone(),
            pid: children[i].0.id().unwrap_or(0),
            config: p.config_path.clone(),
            data_dir: p.config.data_dir.clone(),
        };
        let sasl = p
            .config
            .listeners
            .advertised_for("SASL_SSL")
            .map(|(h, port)| format!("{h}:{port}"));
        match regions.get_mut(p.region) {
            Some(r) => {
                r.bootstrap.push(',');
                r.bootstrap.push_str(&kafka);
                if let (Some(all), Some(s)) = (&mut r.sasl_ssl_bootstrap, sasl) {
                    all.push(',');
                    all.push_str(&s);
                }
                r.brokers.push(broker);
            }
            None => regions.push(DevRegion {
                name: REGION_NAMES[p.region].to_string(),
                bootstrap: kafka,
                sasl_ssl_bootstrap: sasl,
                admin_token_file: p.config.listeners.admin_token_file.clone(),
                admin,
                brokers: vec![broker],
                dc_link: None,
            }),
        }
    }
    for (i, l) in links.iter().enumerate() {
        if let Some(r) = regions.iter_mut().find(|r| r.name == l.region) {
            r.dc_link = Some(DevDcLink {
                quic: l.quic.to_string(),
                admin: format!("http://{}", l.admin),
                pid: children[brokers_started + i].0.id().unwrap_or(0),
                config: l.config_path.clone(),
            });
        }
    }
    let witness = witness.map(|w| DevWitness {
        name: WITNESS_NAME.to_string(),
        quic: w.quic.to_string(),
        admin: format!("http://{}", w.admin),
        pid: children[brokers_started + links.len()].0.id().unwrap_or(0),
        config: w.config_path,
    });
    let dev = DevJson {
        secure,
        regions,
        witness,
    };
    let json = serde_json::to_vec_pretty(&dev).expect("dev.json serializes");
    let dev_path = root.join("dev.json");
    write_atomically(&dev_path, &json).map_err(|e| format!("{}: {e}", dev_path.display()))?;
    for r in &dev.regions {
        println!("region {}: bootstrap servers {}", r.name, r.bootstrap);
        if let Some(s) = &r.sasl_ssl_bootstrap {
            println!("region {}: SASL_SSL bootstrap servers {s}", r.name);
        }
        if let Some(l) = &r.dc_link {
            println!(
                "region {}: dc-link quic {} admin {}",
                r.name, l.quic, l.admin
            );
        }
    }
    if let Some(w) = &dev.witness {
        println!("witness {}: quic {} admin {}", w.name, w.quic, w.admin);
    }
    if let Some(s) = &dev.secure {
        println!(
            "secure: user {} (password in {}); client properties: {} (Kafka tools, Java), {} (librdkafka); admin API tokens: <region>/admin-token",
            s.user,
            s.password_file.display(),
            s.java_properties.display(),
            s.librdkafka_properties.display()
        );
    }
    println!("wrote {}; press Ctrl-C to stop", dev_path.display());

    // Run until a signal. A broker that dies is only reported: tests kill
    // brokers on purpose and restart them with `chronik broker --config`.
    let watch = async {
        let mut reported = vec![false; children.len()];
        loop {
            for (i, (c, name)) in children.iter_mut().enumerate() {
                if !reported[i] {
                    if let Ok(Some(status)) = c.try_wait() {
                        tracing::warn!(broker = %name, %status, "broker process exited");
                        reported[i] = true;
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    tokio::select! {
        _ = crate::wait_for_signal() => {}
        _ = watch => {}
    }
    // Processes restarted by `chronik dev start-region` are not our
    // children; dev.json names them.
    let ours: Vec<u32> = children.iter().filter_map(|(c, _)| c.id()).collect();
    let restarted: Vec<regions::DevProcess> = crate::meta_cli::dev_json(&root)
        .map(|d| regions::all_processes(&d))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| !ours.contains(&p.pid))
        .collect();
    stop_all(&mut children).await;
    regions::stop(&restarted).await;
    let _ = std::fs::remove_file(&dev_path);
    Ok(())
}
