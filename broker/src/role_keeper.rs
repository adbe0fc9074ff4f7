//! Keeps every partition this broker leads at the home role its topic's
//! state asks for ([`crate::home_role::desired`]): the demotion that fences
//! a move away from this region, the promotion once the home moved here.
//! The role is written into the partition's own Raft log, so it is ordered
//! with the data on every replica.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use crate::home_role;
use crate::raft::types::{Command, CommandResult};
use crate::server::BrokerCtx;

/// How long one role entry may take to commit before the next round tries
/// again.
const SET_ROLE_TIMEOUT: Duration = Duration::from_secs(5);

pub async fn run(ctx: Arc<BrokerCtx>, mut shutdown: watch::Receiver<bool>) {
    loop {
        tokio::select! {
            _ = shutdown.changed() => return,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
        for (topic, log) in ctx.catalog.all_partitions() {
            if log.is_deleted() {
                continue;
            }
            let Some((home, epoch)) = ctx.catalog.home_of(&topic.id()) else {
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
            let done = group.submit(Command::SetRole { role: want });
            match tokio::time::timeout(SET_ROLE_TIMEOUT, done).await {
                Ok(Ok(Ok(CommandResult::Done))) => tracing::info!(
                    topic = topic.name(),
                    partition = log.partition,
                    home = want.home,
                    epoch = want.epoch,
                    "partition home role set"
                ),
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
