//! The `chronik` command.

mod dev;

/// See `chronik_wire::alloc`: hostile array counts in requests must not be
/// able to abort the broker.
#[global_allocator]
static ALLOC: chronik_wire::alloc::LazyLargeAlloc = chronik_wire::alloc::LazyLargeAlloc;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use chronik_topology::BrokerConfig;

#[derive(Parser)]
#[command(
    name = "chronik",
    version,
    about = "Kafka-compatible streaming for applications that span datacenters"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one broker. Without --config: a single node on 127.0.0.1:9092 with data in ./chronik-data.
    Broker {
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Start a local deployment, each broker its own process, and write DIR/dev.json.
    Dev(dev::DevArgs),
    /// Exit 0 if a broker or dc-link answers /health/ready within 2 s, else 1
    /// (for container HEALTHCHECKs, systemd and scripts).
    Health {
        /// A broker config: asks its admin address (`listeners.admin`).
        #[arg(long, value_name = "FILE", conflicts_with = "admin")]
        config: Option<PathBuf>,
        /// An admin address, host:port (a dc-link's `admin`, say).
        #[arg(long, value_name = "HOST:PORT")]
        admin: Option<String>,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
    /// Run this region's dc-link: mirrors topics to and from the other regions over QUIC.
    DcLink {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Run the witness: a home-lease voter that holds no data, so that two
    /// regions still have a majority when one is lost.
    Witness {
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
    },
    /// Certificates for dc-link mutual TLS.
    Certs {
        #[command(subcommand)]
        command: CertsCommand,
    },
    /// Operate a running deployment.
    Ctl {
        #[command(subcommand)]
        command: CtlCommand,
    },
    /// WAN simulator: UDP/TCP proxies adding latency, jitter, loss, bandwidth limits, reordering, corruption and blackholes.
    WanSim(chronik_wan_sim::WanSimArgs),
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a broker config file; errors name the file, the key and the problem.
    Check { file: PathBuf },
    /// Validate a topology file (regions, dc-link addresses, certificates).
    CheckTopology { file: PathBuf },
}

#[derive(Subcommand)]
enum CertsCommand {
    /// Generate a dev CA and one certificate per region (not for production).
    Init {
        /// Where to write ca.pem, ca.key, <region>.pem and <region>.key.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// Comma-separated region names.
        #[arg(long, value_delimiter = ',', default_value = "us-east,eu-west")]
        regions: Vec<String>,
    },
    /// Issue a broker certificate for TLS Kafka listeners, signed by the dev CA in --dir.
    Broker {
        /// Where ca.pem and ca.key are; <name>.pem and <name>.key are written there.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// The certificate's common name and file name.
        #[arg(long)]
        name: String,
        /// Host names and IP addresses clients connect to (repeatable or comma-separated).
        #[arg(
            long = "host",
            value_delimiter = ',',
            default_value = "localhost,127.0.0.1"
        )]
        hosts: Vec<String>,
        /// Also prove this broker id on the Raft peer transport ([cluster.tls]):
        /// adds the name broker-<id>.<region>.raft.chronik. Needs --region.
        #[arg(long, requires = "region")]
        raft_id: Option<i32>,
        /// The broker's region, for --raft-id.
        #[arg(long, requires = "raft_id")]
        region: Option<String>,
    },
    /// Issue a client certificate for mutual TLS; the principal is User:CN=<name>.
    Client {
        /// Where ca.pem and ca.key are; <name>.pem and <name>.key are written there.
        #[arg(long, default_value = "./certs")]
        dir: PathBuf,
        /// The client's common name and file name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand)]
enum CtlCommand {
    /// Cross-region replication lag per link and partition.
    Lag {
        /// A dc-link admin address (repeatable). Default: every dc-link in DEV_DIR/dev.json.
        #[arg(long = "dc-link", value_name = "URL")]
        dc_link: Vec<String>,
        /// The `chronik dev` data directory to read dev.json from.
        #[arg(long, default_value = "./chronik-dev")]
        dev_dir: PathBuf,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// The global `__meta` (metadata-sync) of every region.
    Meta {
        #[command(subcommand)]
        what: MetaCommand,
    },
    /// Planned move of topics' home role to another region, with zero loss:
    /// fence writes, drain the mirror, move the fencing epoch, promote.
    Switchover(switchover::Args),
    /// Unplanned move of topics' home role when the home region is down or
    /// cut off: report the data at risk, wait for the home's lease to
    /// expire, promote.
    Failover(failover::Args),
    /// After a failover, bring the old home region back in line: copy the
    /// records only it holds into a recovery topic, cut its copies back,
    /// and let them mirror the new home.
    Failback(failback::Args),
    /// Grow or shrink a running region: list, add and remove brokers.
    Broker {
        #[command(subcommand)]
        command: broker_cli::BrokerCommand,
    },
    /// Rehearsals against a running deployment.
    Drill {
        #[command(subcommand)]
        drill: drill::Drill,
    },
}

#[derive(Subcommand)]
enum MetaCommand {
    /// Per region: digest, entries, tombstones, conflicts, and the lag to
    /// each peer region in entries and seconds.
    Status(MetaArgs),
    /// Every resolved conflict each region has recorded, with both sides.
    Conflicts(MetaArgs),
}

#[derive(clap::Args)]
struct MetaArgs {
    /// A broker admin address of a region (repeatable; one per region).
    /// Default: every region in DEV_DIR/dev.json.
    #[arg(long = "broker", value_name = "ADDR")]
    brokers: Vec<String>,
    /// A dc-link admin address (repeatable), for the per-peer lag.
    #[arg(long = "dc-link", value_name = "ADDR")]
    dc_links: Vec<String>,
    #[arg(long, default_value = "./chronik-dev")]
    dev_dir: PathBuf,
    #[arg(long)]
    json: bool,
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .init();
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `chronik ctl` and the switchover commands reach brokers' admin APIs.
    if let Some(path) = std::env::var_os("CHRONIK_ADMIN_TOKEN_FILE") {
        match chronik_topology::read_token_file(std::path::Path::new(&path)) {
            Ok(t) => chronik_dc_link::broker_http::set_admin_token(t),
            Err(e) => {
                eprintln!("error: CHRONIK_ADMIN_TOKEN_FILE: {e}");
                return ExitCode::from(2);
            }
        }
    }
    match cli.command {
        Command::Broker { config } => {
            init_tracing();
            let cfg = match config {
                Some(path) => match BrokerConfig::load(&path) {
                    Ok(c) => c,
                    Err(e) => {
                        eprintln!("error: {e}");
                        return ExitCode::from(2);
                    }
                },
                None => BrokerConfig::default(),
            };
            run_broker(cfg)
        }
        Command::Health { config, admin } => health(config, admin),
        Command::Dev(args) => {
            init_tracing();
            dev::run(args)
        }
        Command::Witness { config } => {
            init_tracing();
            run_witness(&config)
        }
        Command::DcLink { config } => {
            init_tracing();
            run_dc_link(&config)
        }
        Command::Certs {
            command: CertsCommand::Init { dir, regions },
        } => {
            if let Some(bad) = regions
                .iter()
                .find(|r| !chronik_topology::valid_region_name(r))
            {
                eprintln!("error: --regions: {bad:?} is not a region name (lowercase letters, digits and '-', starting with a letter)");
                return ExitCode::from(2);
            }
            match chronik_dc_link::tls::init_dev_certs(&dir, &regions) {
                Ok(()) => {
                    println!(
                        "wrote a dev CA and certificates for {} to {}",
                        regions.join(", "),
                        dir.display()
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: {e}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Certs {
            command:
                CertsCommand::Broker {
                    dir,
                    name,
                    mut hosts,
                    raft_id,
                    region,
                },
        } => {
            if let (Some(id), Some(region)) = (raft_id, &region) {
                hosts.push(chronik_topology::raft_peer_dns_name(region, id));
            }
            issue_cert(
                &dir,
                &name,
                chronik_dc_link::tls::DevCertKind::Broker,
                &hosts,
            )
        }
        Command::Certs {
            command: CertsCommand::Client { dir, name },
        } => issue_cert(&dir, &name, chronik_dc_link::tls::DevCertKind::Client, &[]),
        Command::Ctl {
            command:
                CtlCommand::Lag {
                    dc_link,
                    dev_dir,
                    json,
                },
        } => ctl_lag(dc_link, &dev_dir, json),
        Command::Ctl {
            command: CtlCommand::Meta { what },
        } => meta_cli::run(what),
        Command::Ctl {
            command: CtlCommand::Switchover(args),
        } => switchover::run(args),
        Command::Ctl {
            command: CtlCommand::Failover(args),
        } => failover::run(args),
        Command::Ctl {
            command: CtlCommand::Failback(args),
        } => failback::run(args),
        Command::Ctl {
            command: CtlCommand::Drill { drill },
        } => drill::run(drill),
        Command::Ctl {
            command: CtlCommand::Broker { command },
        } => broker_cli::run(command),
        Command::WanSim(args) => {
            init_tracing();
            chronik_wan_sim::run(args)
        }
        Command::Config {
            command: ConfigCommand::CheckTopology { file },
        } => match chronik_topology::Topology::load(&file) {
            Ok(t) => {
                println!(
                    "{}: ok ({} regions: {})",
                    file.display(),
                    t.regions.len(),
                    t.regions
                        .iter()
                        .map(|r| r.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
        Command::Config {
            command: ConfigCommand::Check { file },
        } => match BrokerConfig::load(&file) {
            Ok(c) => {
                println!(
                    "{}: ok (node {} in region {}, kafka {}, admin {}, durability {})",
                    file.display(),
                    c.node_id,
                    c.region,
                    c.listeners.kafka,
                    c.listeners.admin_addr(),
                    c.durability
                );
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(2)
            }
        },
    }
}

fn run_broker(cfg: BrokerConfig) -> ExitCode {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: starting the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async move {
        let broker = match chronik_broker::Broker::start(cfg).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "broker failed to start");
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        };
        wait_for_signal().await;
        tracing::info!("shutting down");
        broker.shutdown().await;
        ExitCode::SUCCESS
    })
}

fn runtime() -> Result<tokio::runtime::Runtime, ExitCode> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| {
            eprintln!("error: starting the async runtime: {e}");
            ExitCode::FAILURE
        })
}

fn health(config: Option<PathBuf>, admin: Option<String>) -> ExitCode {
    let target = match (config, admin) {
        (Some(path), _) => match BrokerConfig::load(&path) {
            Ok(c) => c.listeners.admin_addr().to_string(),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        },
        (None, Some(a)) => a,
        (None, None) => BrokerConfig::default().listeners.admin_addr().to_string(),
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        let addr = match tokio::net::lookup_host(&target).await.map(|mut a| a.next()) {
            Ok(Some(a)) => a,
            _ => {
                eprintln!("error: cannot resolve {target}");
                return ExitCode::from(2);
            }
        };
        let ready = tokio::time::timeout(std::time::Duration::from_secs(2), dev::probe_ready(addr))
            .await
            .unwrap_or(false);
        if ready {
            println!("ready: {target}");
            ExitCode::SUCCESS
        } else {
            eprintln!("not ready: {target}");
            ExitCode::FAILURE
        }
    })
}

fn run_dc_link(config: &std::path::Path) -> ExitCode {
    let (cfg, topo) = match chronik_topology::DcLinkConfig::load(config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Some(path) = &cfg.broker_admin_token_file {
        match chronik_topology::read_token_file(path) {
            Ok(t) => chronik_dc_link::broker_http::set_admin_token(t),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::from(2);
            }
        }
    }
    let metrics = match metrics_exporter_prometheus::PrometheusBuilder::new().install_recorder() {
        Ok(h) => h,
        Err(e) => {
            eprintln!("error: metrics: {e}");
            return ExitCode::FAILURE;
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match chronik_dc_link::run(cfg, topo, metrics, wait_for_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "dc-link failed");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

fn run_witness(config: &std::path::Path) -> ExitCode {
    let (cfg, topo) = match chronik_topology::WitnessConfig::load(config) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        match chronik_dc_link::witness::run(cfg, topo, wait_for_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                tracing::error!(error = %e, "witness failed");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    })
}

mod broker_cli;
mod drill;
mod failback;
mod failover;
mod meta_cli;
mod switchover;

fn ctl_lag(mut addrs: Vec<String>, dev_dir: &std::path::Path, json: bool) -> ExitCode {
    if addrs.is_empty() {
        let path = dev_dir.join("dev.json");
        let dev: serde_json::Value = match std::fs::read(&path)
            .map_err(|e| e.to_string())
            .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
        {
            Ok(v) => v,
            Err(e) => {
                eprintln!(
                    "error: {}: {e} (pass --dc-link URL or --dev-dir DIR)",
                    path.display()
                );
                return ExitCode::from(2);
            }
        };
        for r in dev["regions"].as_array().into_iter().flatten() {
            if let Some(a) = r["dc_link"]["admin"].as_str() {
                addrs.push(a.to_string());
            }
        }
        if addrs.is_empty() {
            eprintln!(
                "error: {} lists no dc-link (a one-region deployment has none)",
                path.display()
            );
            return ExitCode::from(2);
        }
    }
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(code) => return code,
    };
    rt.block_on(async move {
        // Asked side by side, each bounded: during an incident one region's
        // dc-link may be down or hung, and the others' view is what is needed.
        let asks: Vec<_> =
            addrs
                .iter()
                .cloned()
                .map(|a| {
                    tokio::spawn(async move {
                        let ask = chronik_dc_link::broker_http::get_json::<
                            chronik_dc_link::lag::Report,
                        >(&a, "/v1/lag");
                        match tokio::time::timeout(std::time::Duration::from_secs(5), ask).await {
                            Ok(r) => r.map_err(|e| e.to_string()),
                            Err(_) => Err("no answer within 5 s".to_string()),
                        }
                    })
                })
                .collect();
        let mut reports = Vec::new();
        for (a, ask) in addrs.iter().zip(asks) {
            let r = ask.await.unwrap_or_else(|e| Err(e.to_string()));
            match r {
                Ok(r) => reports.push(r),
                Err(e) => eprintln!("error: dc-link at {a} unreachable: {e}"),
            }
        }
        if reports.is_empty() {
            return ExitCode::FAILURE;
        }
        if json {
            println!(
                "{}",
                serde_json::to_string_pretty(&reports).expect("serializes")
            );
        } else {
            for r in &reports {
                println!("== dc-link of region {}", r.region);
                print!("{}", r.table());
            }
        }
        ExitCode::SUCCESS
    })
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn issue_cert(
    dir: &std::path::Path,
    name: &str,
    kind: chronik_dc_link::tls::DevCertKind,
    hosts: &[String],
) -> ExitCode {
    // The name is a file name too: no path separators, nothing hidden.
    if name.is_empty()
        || name.starts_with('.')
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        eprintln!("error: --name: {name:?} must be letters, digits, '-', '_' or '.', not starting with '.'");
        return ExitCode::from(2);
    }
    match chronik_dc_link::tls::issue_dev_cert(dir, name, kind, hosts) {
        Ok(()) => {
            println!("wrote {0}.pem and {0}.key to {1}", name, dir.display());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
