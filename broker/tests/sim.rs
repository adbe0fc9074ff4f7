//! Deterministic simulation of the replication layer: three brokers'
//! controller and partition Raft groups, their peer transport and their
//! RocksDB stores run in one process on turmoil's simulated network and
//! clocks, under a seeded nemesis (crashes with disk kept, restarts,
//! partitions, one-way cuts, slow links, connection resets, client packet
//! loss), while idempotent producers write through whichever broker leads,
//! consumers read from it, and DeleteRecords trims the partitions.
//! `sim/checker.rs` then checks the invariants.
//!
//! ```sh
//! cargo test --release -p chronik-broker --test sim                 # default seeds
//! SIM_SEEDS=1000 cargo test --release -p chronik-broker --test sim seeds -- --nocapture
//! SIM_SEED=17 cargo test --release -p chronik-broker --test sim seeds -- --nocapture   # replay, prints the trace
//! SIM_SEED=17 SIM_LOG=openraft=info,chronik_broker=info cargo test ...   # plus the brokers' logs on stderr
//! ```
//!
//! Why a process per seed: everything random in the process (std's
//! `HashMap` keys, openraft's election timeouts via `rand`, uuid, tokio's
//! own seeds) is drawn from `getrandom`, which this binary overrides below
//! with a stream derived from the seed on the simulation thread. Tokio also
//! mixes a process-wide counter into its seeds, so two runs of one seed
//! match only if each starts in a fresh process.

#[path = "sim/checker.rs"]
mod checker;
#[path = "sim/net.rs"]
mod net;
#[path = "sim/state.rs"]
mod state;
#[path = "sim/world.rs"]
mod world;

use std::cell::Cell;
use std::process::Command;

use world::Outcome;

thread_local! {
    /// The simulation thread's randomness: `Some` once seeded.
    static SIM_RANDOM: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Every `getrandom` in the process resolves here (std, the `getrandom`
/// crate and libstdc++ look the symbol up dynamically, and an executable's
/// definition comes first). On the simulation thread it returns a stream
/// derived from the seed; elsewhere (RocksDB's threads, the test harness)
/// it asks the kernel.
///
/// # Safety
/// Same contract as getrandom(2): `buf` is valid for `len` bytes.
#[no_mangle]
pub unsafe extern "C" fn getrandom(buf: *mut u8, len: usize, flags: u32) -> isize {
    if let Some(mut s) = SIM_RANDOM.with(|c| c.get()) {
        let mut i = 0;
        while i < len {
            s = s.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = s;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^= z >> 31;
            for b in z.to_le_bytes() {
                if i < len {
                    *buf.add(i) = b;
                    i += 1;
                }
            }
        }
        SIM_RANDOM.with(|c| c.set(Some(s)));
        return len as isize;
    }
    libc::syscall(libc::SYS_getrandom, buf, len, flags) as isize
}

/// Runs `seed` on a fresh thread whose randomness is the seed's, so the
/// thread-local state std and rand keep is seeded from it too.
fn run_here(seed: u64, verbose: bool) -> Outcome {
    std::thread::Builder::new()
        .name(format!("sim-{seed}"))
        .stack_size(16 << 20)
        .spawn(move || {
            SIM_RANDOM.with(|c| c.set(Some(seed.wrapping_mul(0x2545_f491_4f6c_dd1d) | 1)));
            world::run_seed(seed, verbose)
        })
        .expect("spawn")
        .join()
        .unwrap_or_else(|p| {
            let msg = p
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                .unwrap_or_default();
            Outcome {
                seed,
                violations: vec![format!("the simulation panicked: {msg}")],
                ..Default::default()
            }
        })
}

fn cpu_ms() -> u64 {
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let ms = |t: libc::timeval| t.tv_sec as u64 * 1000 + t.tv_usec as u64 / 1000;
    ms(ru.ru_utime) + ms(ru.ru_stime)
}

#[derive(serde::Serialize, serde::Deserialize)]
struct ChildResult {
    outcome: Outcome,
    cpu_ms: u64,
}

/// The per-seed process (see the module docs); the parent tests start it.
#[test]
#[ignore = "started by the other tests, one process per seed"]
fn child() {
    let (Ok(seed), Ok(out)) = (
        std::env::var("SIM_CHILD_SEED"),
        std::env::var("SIM_CHILD_OUT"),
    ) else {
        return;
    };
    let verbose = std::env::var("SIM_CHILD_VERBOSE").is_ok();
    // The brokers' and openraft's own logs, for digging into a replayed
    // seed (no timestamps: the wall clock means nothing here).
    if let Ok(filter) = std::env::var("SIM_LOG") {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_writer(std::io::stderr)
            .without_time()
            .init();
    }
    let outcome = run_here(seed.parse().expect("seed"), verbose);
    let r = ChildResult {
        outcome,
        cpu_ms: cpu_ms(),
    };
    std::fs::write(out, serde_json::to_vec(&r).unwrap()).expect("writing the result");
}

fn replay_hint(seed: u64) -> String {
    format!(
        "replay: SIM_SEED={seed} cargo test --release -p chronik-broker --test sim seeds -- --nocapture"
    )
}

/// Runs `seed` in a child process and returns its result.
fn run_child(seed: u64, verbose: bool) -> ChildResult {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("result.json");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.args([
        "--exact",
        "child",
        "--ignored",
        "--nocapture",
        "--test-threads=1",
        "-q",
    ])
    .env("SIM_CHILD_SEED", seed.to_string())
    .env("SIM_CHILD_OUT", &out);
    if verbose {
        cmd.env("SIM_CHILD_VERBOSE", "1");
    }
    if std::env::var("SIM_LOG").is_ok() {
        cmd.stderr(std::process::Stdio::inherit());
    }
    let o = cmd.output().expect("starting the seed's process");
    match std::fs::read(&out)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
    {
        Some(r) => r,
        None => {
            let err = String::from_utf8_lossy(&o.stderr);
            let tail: Vec<&str> = err.lines().rev().take(30).collect();
            ChildResult {
                outcome: Outcome {
                    seed,
                    violations: vec![format!(
                        "the seed's process died ({}):\n{}",
                        o.status,
                        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                    )],
                    ..Default::default()
                },
                cpu_ms: 0,
            }
        }
    }
}

fn report(r: &ChildResult) -> String {
    let o = &r.outcome;
    format!(
        "seed {}: {} ms simulated, {} faults, {} elections, {} snapshot installs, {} acks, {} events, {} bytes delivered, digest {:016x}, {} ms CPU",
        o.seed, o.sim_ms, o.faults, o.elections, o.snapshot_installs, o.acks, o.events, o.delivered_bytes, o.digest, r.cpu_ms
    )
}

/// The default run: `SIM_SEEDS` seeds (default 24) from `SIM_SEED_BASE`
/// (default 1), two processes at a time; or, with `SIM_SEED`, that one
/// seed with its trace printed.
#[test]
fn seeds() {
    if let Ok(s) = std::env::var("SIM_SEED") {
        let seed: u64 = s.parse().expect("SIM_SEED is a number");
        let r = run_child(seed, true);
        for line in &r.outcome.trace {
            println!("{line}");
        }
        println!("{}", report(&r));
        assert!(
            r.outcome.violations.is_empty(),
            "seed {seed} violated:\n  {}\n{}",
            r.outcome.violations.join("\n  "),
            replay_hint(seed)
        );
        return;
    }
    let n: u64 = std::env::var("SIM_SEEDS").map_or(24, |v| v.parse().expect("SIM_SEEDS"));
    let base: u64 = std::env::var("SIM_SEED_BASE").map_or(1, |v| v.parse().expect("SIM_SEED_BASE"));
    let workers: u64 = std::env::var("SIM_JOBS").map_or(2, |v| v.parse().expect("SIM_JOBS"));
    let next = std::sync::atomic::AtomicU64::new(base);
    let results = std::sync::Mutex::new(Vec::new());
    let started = std::time::Instant::now();
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| loop {
                let seed = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if seed >= base + n {
                    return;
                }
                let r = run_child(seed, false);
                println!(
                    "{}{}",
                    report(&r),
                    if r.outcome.violations.is_empty() {
                        ""
                    } else {
                        "  VIOLATED"
                    }
                );
                results.lock().unwrap().push(r);
            });
        }
    });
    let results = results.into_inner().unwrap();
    let cpu: u64 = results.iter().map(|r| r.cpu_ms).sum();
    let acks: u64 = results.iter().map(|r| r.outcome.acks).sum();
    let elections: u64 = results.iter().map(|r| r.outcome.elections).sum();
    let installs: u64 = results.iter().map(|r| r.outcome.snapshot_installs).sum();
    let failed: Vec<&ChildResult> = results
        .iter()
        .filter(|r| !r.outcome.violations.is_empty())
        .collect();
    println!(
        "{n} seeds from {base}: {} violated; {acks} acknowledged batches checked; {elections} elections; {installs} snapshot installs; CPU {:.1} s total, {:.2} s per seed; wall {:.1} s",
        failed.len(),
        cpu as f64 / 1000.0,
        cpu as f64 / 1000.0 / n.max(1) as f64,
        started.elapsed().as_secs_f64()
    );
    assert!(
        acks > 0,
        "no seed acknowledged a single write: the workload is not running"
    );
    if !failed.is_empty() {
        let mut msg = String::new();
        for r in failed {
            msg.push_str(&format!(
                "seed {} violated:\n  {}\n  {}\n",
                r.outcome.seed,
                r.outcome.violations.join("\n  "),
                replay_hint(r.outcome.seed)
            ));
        }
        panic!("{msg}");
    }
}

/// A seed replays exactly: the same digest of every delivered byte and
/// event, twice; and another seed gives another history.
#[test]
fn same_seed_same_trace() {
    let seed = std::env::var("SIM_DETERMINISM_SEED").map_or(424242, |v| v.parse().unwrap());
    let (a, b, c) = std::thread::scope(|s| {
        let a = s.spawn(|| run_child(seed, true));
        let b = s.spawn(|| run_child(seed, true));
        let (a, b) = (a.join().unwrap(), b.join().unwrap());
        (a, b, run_child(seed + 1, false))
    });
    assert!(a.outcome.acks > 0, "{}", report(&a));
    if a.outcome.digest != b.outcome.digest {
        let first = a
            .outcome
            .trace
            .iter()
            .zip(&b.outcome.trace)
            .position(|(x, y)| x != y);
        let show = |t: &Vec<String>, i: Option<usize>| {
            i.and_then(|i| t.get(i.saturating_sub(2)..(i + 3).min(t.len())))
                .map(|l| l.join("\n"))
                .unwrap_or_default()
        };
        panic!(
            "seed {seed} did not replay: {} vs {}\nfirst differing trace line {first:?}:\n--- run 1\n{}\n--- run 2\n{}",
            report(&a),
            report(&b),
            show(&a.outcome.trace, first),
            show(&b.outcome.trace, first)
        );
    }
    assert_eq!(a.outcome.trace, b.outcome.trace);
    assert_ne!(
        a.outcome.digest, c.outcome.digest,
        "the digest ignores the history"
    );
}
