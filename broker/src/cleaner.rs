//! The log cleaner: every `topics.cleaner_backoff_ms`, each compacted
//! partition this broker leads is checked, and a due one gets a cleaning
//! pass (planned in `crate::compaction`, read from the store off the async
//! runtime) proposed through its Raft group. One pass at a time, as Kafka's
//! single default cleaner thread: cleaning competes with produce for the
//! same disks and cores.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

use crate::compaction::Limits;
use crate::context::BrokerCtx;
use crate::raft::types::{Command, CommandResult};

/// A pass that is not applied within this long is given up; the next round
/// plans it again.
const APPLY_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) async fn cleaner_loop(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    let every = Duration::from_millis(ctx.config.topics.cleaner_backoff_ms);
    let limits = Limits {
        key_map_bytes: ctx.config.topics.cleaner_key_map_bytes as usize,
        ..Limits::default()
    };
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(every) => {}
        }
        for (topic, log) in ctx.catalog.all_partitions() {
            if *shutdown.borrow() {
                return;
            }
            let Some(policy) = topic.effective.compaction else {
                continue;
            };
            if log.is_deleted() {
                continue;
            }
            let Some((group, _)) = ctx.cluster.leader_group(&log) else {
                continue;
            };
            let now = crate::handlers::now_ms();
            // Tombstones stay until every mirror region holds them.
            let floor = log.slowest_mirror_end().unwrap_or(i64::MAX);
            let started = Instant::now();
            let planning = log.clone();
            let planned = tokio::task::spawn_blocking(move || {
                planning.plan_compaction(&policy, now, floor, limits)
            })
            .await;
            let (plan, stats) = match planned {
                Ok(Ok(Some(planned))) => planned,
                Ok(Ok(None)) => continue,
                Ok(Err(e)) => {
                    tracing::warn!(topic = topic.name(), partition = log.partition, error = %e, "cleaning pass failed");
                    metrics::counter!("chronik_cleaner_errors_total").increment(1);
                    continue;
                }
                Err(e) => {
                    tracing::error!(topic = topic.name(), partition = log.partition, error = %e, "cleaning pass panicked");
                    metrics::counter!("chronik_cleaner_errors_total").increment(1);
                    continue;
                }
            };
            let (end, rewrites, removed) = (plan.end, plan.rewrites.len(), stats.records_removed);
            metrics::counter!("chronik_cleaner_read_bytes_total").increment(stats.bytes_read);
            let done = group.submit(Command::Compact(plan));
            match tokio::time::timeout(APPLY_TIMEOUT, done).await {
                Ok(Ok(Ok(CommandResult::Compacted { applied: true }))) => {
                    metrics::counter!("chronik_cleaner_passes_total").increment(1);
                    metrics::counter!("chronik_cleaner_removed_records_total").increment(removed);
                    metrics::histogram!("chronik_cleaner_pass_seconds")
                        .record(started.elapsed().as_secs_f64());
                    tracing::debug!(
                        topic = topic.name(),
                        partition = log.partition,
                        clean_to = end,
                        rewrites,
                        removed,
                        "cleaning pass applied"
                    );
                }
                Ok(Ok(Ok(CommandResult::Compacted { applied: false }))) => tracing::debug!(
                    topic = topic.name(),
                    partition = log.partition,
                    "cleaning pass overtaken by a change to the log; planning again"
                ),
                other => tracing::debug!(
                    topic = topic.name(),
                    partition = log.partition,
                    outcome = ?other,
                    "cleaning pass not applied"
                ),
            }
        }
    }
}
