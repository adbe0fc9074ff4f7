//! The command-line front end: argument checking and the process lifecycle.

use crate::{Impairment, InvalidImpairment, WanSim};
use std::io::Write;
use std::net::{SocketAddr, ToSocketAddrs};
use std::process::ExitCode;

/// Arguments of `chronik wan-sim`.
#[derive(clap::Args, Debug, Clone)]
pub struct WanSimArgs {
    /// UDP proxy: LISTEN=UPSTREAM, e.g. 127.0.0.1:7201=127.0.0.1:7101. Repeatable.
    #[arg(long = "udp", value_name = "LISTEN=UPSTREAM")]
    pub udp: Vec<String>,
    /// TCP proxy: LISTEN=UPSTREAM. Repeatable.
    #[arg(long = "tcp", value_name = "LISTEN=UPSTREAM")]
    pub tcp: Vec<String>,
    /// HTTP control address (GET/PUT /v1/impairment, GET /v1/stats).
    #[arg(long)]
    pub control: Option<SocketAddr>,
    /// One-way delay in ms, each direction (RTT = 2x).
    #[arg(long, default_value_t = 0.0)]
    pub delay_ms: f64,
    /// Uniform +- jitter in ms added to the delay.
    #[arg(long, default_value_t = 0.0)]
    pub jitter_ms: f64,
    /// Probability 0..1 that a UDP datagram is dropped.
    #[arg(long, default_value_t = 0.0)]
    pub loss: f64,
    /// Bandwidth per direction in Mbit/s; 0 = unlimited.
    #[arg(long, default_value_t = 0.0)]
    pub bandwidth_mbit: f64,
    /// Probability 0..1 that a UDP datagram is held back an extra delay/2 + 1 ms.
    #[arg(long, default_value_t = 0.0)]
    pub reorder: f64,
    /// Probability 0..1 that one bit of one random byte of a UDP datagram is flipped.
    #[arg(long, default_value_t = 0.0)]
    pub corrupt: f64,
}

/// Something wrong with the command line; each names the flag at fault.
#[derive(Debug, thiserror::Error)]
pub enum ArgError {
    #[error("--{flag} {value:?}: expected LISTEN=UPSTREAM, two HOST:PORT addresses, e.g. 127.0.0.1:7201=127.0.0.1:7101")]
    Mapping { flag: &'static str, value: String },
    #[error("--{flag} {value:?}: cannot resolve {addr:?}: {reason}")]
    Resolve {
        flag: &'static str,
        value: String,
        addr: String,
        reason: String,
    },
    #[error("--{flag} {value}: {reason}")]
    Value {
        flag: String,
        value: f64,
        reason: &'static str,
    },
    #[error("nothing to proxy: give at least one --udp or --tcp LISTEN=UPSTREAM")]
    NoProxies,
}

impl From<InvalidImpairment> for ArgError {
    fn from(e: InvalidImpairment) -> ArgError {
        ArgError::Value {
            flag: e.field.replace('_', "-"),
            value: e.value,
            reason: e.reason,
        }
    }
}

/// Checked arguments, ready for [`WanSim::start`].
#[derive(Debug)]
pub(crate) struct Plan {
    pub udp: Vec<(SocketAddr, SocketAddr)>,
    pub tcp: Vec<(SocketAddr, SocketAddr)>,
    pub control: Option<SocketAddr>,
    pub imp: Impairment,
}

impl Plan {
    pub fn from_args(args: &WanSimArgs) -> Result<Plan, ArgError> {
        let imp = Impairment {
            delay_ms: args.delay_ms,
            jitter_ms: args.jitter_ms,
            loss: args.loss,
            bandwidth_mbit: args.bandwidth_mbit,
            reorder: args.reorder,
            corrupt: args.corrupt,
            blackhole: false,
        };
        imp.validate()?;
        let parse_all = |flag, values: &[String]| {
            values
                .iter()
                .map(|v| parse_mapping(flag, v))
                .collect::<Result<Vec<_>, _>>()
        };
        let plan = Plan {
            udp: parse_all("udp", &args.udp)?,
            tcp: parse_all("tcp", &args.tcp)?,
            control: args.control,
            imp,
        };
        if plan.udp.is_empty() && plan.tcp.is_empty() {
            return Err(ArgError::NoProxies);
        }
        Ok(plan)
    }
}

fn parse_mapping(flag: &'static str, value: &str) -> Result<(SocketAddr, SocketAddr), ArgError> {
    let bad = || ArgError::Mapping {
        flag,
        value: value.to_owned(),
    };
    let (listen, upstream) = value.split_once('=').ok_or_else(bad)?;
    let (listen, upstream) = (listen.trim(), upstream.trim());
    if listen.is_empty() || upstream.is_empty() || upstream.contains('=') {
        return Err(bad());
    }
    let resolve = |addr: &str| -> Result<SocketAddr, ArgError> {
        if let Ok(a) = addr.parse() {
            return Ok(a);
        }
        // Host names are allowed (handy in containers) but a port is not optional.
        if !addr.contains(':') {
            return Err(bad());
        }
        let failed = |reason: String| ArgError::Resolve {
            flag,
            value: value.to_owned(),
            addr: addr.to_owned(),
            reason,
        };
        let addrs: Vec<SocketAddr> = addr
            .to_socket_addrs()
            .map_err(|e| failed(e.to_string()))?
            .collect();
        // Prefer IPv4: "localhost" often resolves to ::1 first, while the other
        // processes on the box mostly bind 127.0.0.1.
        addrs
            .iter()
            .find(|a| a.is_ipv4())
            .or(addrs.first())
            .copied()
            .ok_or_else(|| failed("no addresses".into()))
    };
    Ok((resolve(listen)?, resolve(upstream)?))
}

/// Runs the simulator until SIGINT or SIGTERM.
///
/// Prints `wan-sim ready` on stdout once every listener is bound (the line test
/// harnesses wait for) and the address mappings on stderr. Returns 2 for bad
/// arguments, 1 if a listener can't be bound, 0 after a signal.
pub fn run(args: WanSimArgs) -> ExitCode {
    let plan = match Plan::from_args(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("wan-sim: {e}");
            return ExitCode::from(2);
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("wan-sim")
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("wan-sim: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    rt.block_on(async {
        let sim = match WanSim::start(plan.udp, plan.tcp, plan.control, plan.imp).await {
            Ok(sim) => sim,
            Err(e) => {
                eprintln!("wan-sim: {e}");
                return ExitCode::FAILURE;
            }
        };
        let stats = sim.stats();
        for (kind, proxies) in [("udp", &stats.udp), ("tcp", &stats.tcp)] {
            for p in proxies {
                eprintln!("wan-sim: {kind} {} -> {}", p.listen, p.upstream);
            }
        }
        if let Some(addr) = sim.control_addr() {
            eprintln!("wan-sim: control http://{addr}/v1/impairment");
        }
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "wan-sim ready");
        let _ = out.flush();
        drop(out);
        shutdown_signal().await;
        drop(sim);
        ExitCode::SUCCESS
    })
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    let _ = tokio::signal::ctrl_c().await;
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: WanSimArgs,
    }

    fn plan(argv: &[&str]) -> Result<Plan, ArgError> {
        let cli = Cli::try_parse_from(std::iter::once("wan-sim").chain(argv.iter().copied()))
            .expect("clap accepts it");
        Plan::from_args(&cli.args)
    }

    #[test]
    fn parses_mappings_and_impairment() {
        let p = plan(&[
            "--udp",
            "127.0.0.1:7201=127.0.0.1:7101",
            "--tcp",
            "127.0.0.1:0=localhost:9092",
            "--delay-ms",
            "25",
            "--loss",
            "0.01",
        ])
        .unwrap();
        assert_eq!(
            p.udp,
            vec![(
                "127.0.0.1:7201".parse().unwrap(),
                "127.0.0.1:7101".parse().unwrap()
            )]
        );
        assert_eq!(p.tcp[0].1.port(), 9092);
        assert_eq!(p.imp.delay_ms, 25.0);
        assert_eq!(p.imp.loss, 0.01);
    }

    #[test]
    fn errors_name_the_flag() {
        for (argv, expect) in [
            (&["--udp", "127.0.0.1:7201"][..], "--udp \"127.0.0.1:7201\""),
            (&["--tcp", "127.0.0.1:1=nonsense"][..], "--tcp"),
            (&["--udp", "1.2.3.4:5=6.7.8.9:10=x"][..], "--udp"),
            (
                &["--udp", "127.0.0.1:1=127.0.0.1:2", "--loss", "1.5"][..],
                "--loss 1.5",
            ),
            (
                &["--udp", "127.0.0.1:1=127.0.0.1:2", "--delay-ms=-3"][..],
                "--delay-ms -3",
            ),
            (
                &["--udp", "127.0.0.1:1=127.0.0.1:2", "--bandwidth-mbit=-1"][..],
                "--bandwidth-mbit",
            ),
            (&[][..], "nothing to proxy"),
        ] {
            let msg = plan(argv).unwrap_err().to_string();
            assert!(msg.contains(expect), "{argv:?}: {msg}");
        }
    }

    #[test]
    fn bad_arguments_exit_with_2() {
        let cli = Cli::try_parse_from(["wan-sim", "--udp", "nope"]).unwrap();
        assert_eq!(run(cli.args), ExitCode::from(2));
    }
}
