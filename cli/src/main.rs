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
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Validate a broker config file; errors name the file, the key and the problem.
    Check { file: PathBuf },
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
        Command::Dev(args) => {
            init_tracing();
            dev::run(args)
        }
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

/// Resolves on SIGINT (Ctrl-C) or SIGTERM.
pub async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}
