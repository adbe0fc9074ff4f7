//! Keeps every partition this broker leads at the home role its topic's
//! state asks for ([`crate::home_role::desired`]): the demotion that fences
//! a move away from this region, the promotion once the home moved here.
//! The role is written into the partition's own Raft log, so it is ordered
//! with the data on every replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::catalog::OffsetMoveReason;
use crate::context::BrokerCtx;
use crate::home_role;
use crate::raft::types::{Command, CommandResult, Retraction};

/// How long one role entry may take to commit before the next round tries
/// again.
const SET_ROLE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        // One global lookup per topic a round, not one per partition.
        let mut homes: std::collections::HashMap<uuid::Uuid, Option<(String, u64)>> =
            std::collections::HashMap::new();
        for (topic, log) in ctx.catalog.all_partitions() {
            if log.is_deleted() {
                continue;
            }
            let home = homes
                .entry(topic.id())
                .or_insert_with(|| ctx.catalog.home_of(&topic.id()));
            let Some((home, epoch)) = home.clone() else {
                continue;
            };
            let fenced = topic.record.moving.is_some();
            let have = log.role();
            let Some(want) =
                home_role::desired(home == ctx.config.region, epoch, fenced, have.is_some())
            else {
                continue;
            };
            if have == Some(want) {
                continue;
            }
            let Some((group, _)) = ctx.cluster.leader_group(&log) else {
                continue;
            };
            // A promotion after a failover retracts the lost home's
            // commits that did not reach this region whole.
            let promoting = want.home && !have.is_some_and(|r| r.home);
            let plan = promoting
                .then(|| ctx.catalog.settlement(&topic.id(), want.epoch))
                .flatten();
            let retract_from: Vec<Retraction> = plan
                .as_ref()
                .map(|p| {
                    p.retract_from
                        .iter()
                        .map(|(producer_id, seq)| Retraction {
                            producer_id: *producer_id,
                            seq: *seq,
                        })
                        .collect()
                })
                .unwrap_or_default();
            let view_end = plan.as_ref().and_then(|p| {
                p.view_end
                    .get(&chronik_wire::settle::partition_key(
                        topic.name(),
                        log.partition,
                    ))
                    .copied()
            });
            let done = group.submit(Command::SetRole {
                role: want,
                retract_from,
                view_end,
            });
            match tokio::time::timeout(SET_ROLE_TIMEOUT, done).await {
                Ok(Ok(Ok(CommandResult::Done))) => {
                    tracing::info!(
                        topic = topic.name(),
                        partition = log.partition,
                        home = want.home,
                        epoch = want.epoch,
                        "partition home role set"
                    );
                    if want.home && have.is_none_or(|h| !h.home) {
                        move_offsets_beyond(
                            &ctx,
                            topic.name(),
                            log.partition,
                            log.log_end_offset(),
                        )
                        .await;
                    }
                }
                other => tracing::warn!(
                    topic = topic.name(),
                    partition = log.partition,
                    home = want.home,
                    epoch = want.epoch,
                    outcome = ?other,
                    "partition home role not set; retrying"
                ),
            }
        }
    }
}

/// Committed offsets of a just-promoted partition that lie beyond its log
/// end (a forced failover lost records the group had consumed) move to the
/// log end, so the group resumes at the first record written after the
/// promotion instead of at its `auto.offset.reset`.
async fn move_offsets_beyond(ctx: &BrokerCtx, topic: &str, partition: i32, end: i64) {
    let moves =
        ctx.catalog
            .offsets_beyond(topic, partition, end, None, OffsetMoveReason::Promotion);
    if moves.is_empty() {
        return;
    }
    if let Err(e) = ctx.catalog.move_offsets(moves).await {
        tracing::warn!(topic, partition, error = %e, "committed offsets beyond the promoted log end not moved");
    }
}
