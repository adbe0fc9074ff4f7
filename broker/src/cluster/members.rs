//! Carrying out membership changes (`chronik ctl broker add|remove`): the
//! controller leader takes the steps `crate::membership::plan` decides,
//! and every broker keeps its peer transport in line with the recorded
//! members.

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::Duration;

use super::Cluster;
use crate::catalog::MemberState;
use crate::membership::{plan, Placement, Step};
use crate::raft::types::ControllerCommand;

/// How long a broker hears from no peer before it asks whether the region
/// removed it, and how often it asks again while that lasts.
const REMOVAL_SILENCE: Duration = Duration::from_secs(10);
const REMOVAL_PROBE_EVERY: Duration = Duration::from_secs(30);

#[derive(Default)]
struct RemovalCheck {
    last: Option<std::time::Instant>,
}

impl Cluster {
    /// Dials brokers added while the region ran (no configuration names
    /// them) and drops removed ones (configurations still may).
    pub(super) fn sync_peers(&self) {
        for m in self.catalog.members() {
            if m.id == self.node_id {
                continue;
            }
            match (m.state, m.raft) {
                (MemberState::Removed, _) => self.transport.remove_peer(m.id as u64),
                (_, Some(addr)) => self.transport.add_peer(m.id as u64, addr),
                (_, None) => {}
            }
        }
    }

    pub(super) async fn membership_loop(me: Weak<Cluster>) {
        let mut removal = RemovalCheck::default();
        loop {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let Some(c) = me.upgrade() else { return };
            if c.stopping.load(std::sync::atomic::Ordering::Acquire) {
                return;
            }
            c.sync_peers();
            if c.controller.status().is_leader {
                c.membership_round().await;
            } else {
                c.check_removed(&mut removal).await;
            }
        }
    }

    /// A broker removed from the region while it ran never learns it from
    /// its own log (it left the controller first), and its peers close
    /// every connection it opens. Once it has heard from no peer for a
    /// while, it asks them about itself, and says so if it was removed.
    async fn check_removed(&self, check: &mut RemovalCheck) {
        let peers = self.transport.peer_ids();
        let deaf = !peers.is_empty()
            && peers
                .iter()
                .all(|p| !self.transport.heard_from(*p, REMOVAL_SILENCE));
        if !deaf
            || check
                .last
                .is_some_and(|t| t.elapsed() < REMOVAL_PROBE_EVERY)
        {
            return;
        }
        check.last = Some(std::time::Instant::now());
        let removed_by: Vec<u64> = self
            .transport
            .probe_peers(Duration::from_secs(2))
            .await
            .into_iter()
            .filter(|(_, p)| p.removed)
            .map(|(peer, _)| peer)
            .collect();
        metrics::gauge!("chronik_broker_removed").set(if removed_by.is_empty() {
            0.0
        } else {
            1.0
        });
        if !removed_by.is_empty() {
            tracing::error!(
                node = self.node_id,
                ?removed_by,
                "this broker was removed from region (`chronik ctl broker remove`): no broker of the region talks to it any more. Stop it and delete its data directory; to bring it back, start it empty and `chronik ctl broker add` it"
            );
        }
    }

    fn placements(&self) -> Vec<Placement> {
        self.catalog
            .all_partitions()
            .into_iter()
            .map(|(t, p)| Placement {
                topic: t.name().to_string(),
                partition: p.partition,
                replicas: self.replicas_of(&t, p.partition),
                reassigning: t.reassigning(p.partition).cloned(),
            })
            .collect()
    }

    async fn membership_round(self: &Arc<Self>) {
        let st = self.controller.status();
        let voters: BTreeSet<u64> = st.voters.iter().copied().collect();
        let learners: BTreeSet<u64> = st.learners.iter().copied().collect();
        let members = self.catalog.members();
        // A settled region (the usual case) needs no plan: skip listing
        // every partition twice a second.
        let settled = learners.is_empty()
            && members
                .iter()
                .all(|m| m.state != MemberState::Joining && m.state != MemberState::Leaving)
            && members
                .iter()
                .filter(|m| m.state == MemberState::Active)
                .map(|m| m.id as u64)
                .eq(voters.iter().copied());
        if settled {
            return;
        }
        for step in plan(&members, &self.placements(), &voters, &learners) {
            match step {
                Step::Reassign {
                    topic,
                    partition,
                    target,
                } => {
                    tracing::info!(%topic, partition, ?target, "moving a replica off a leaving broker");
                    if let Err(e) = self.catalog.reassign(&topic, partition, Some(target)).await {
                        tracing::warn!(%topic, partition, error = %e, "cannot move a replica off a leaving broker yet");
                    }
                }
                Step::ControllerVoters(want) => {
                    match self
                        .controller
                        .change_voters(want.iter().copied().collect())
                        .await
                    {
                        Ok(true) => {
                            tracing::info!(voters = ?want, "controller voters changed")
                        }
                        Ok(false) => {}
                        Err(e) => {
                            tracing::debug!(error = %e, "controller voter change pending")
                        }
                    }
                }
                Step::Activate(id) => {
                    match self
                        .controller_write(ControllerCommand::ActivateBroker { id })
                        .await
                    {
                        Ok(()) => tracing::info!(
                            broker = id,
                            "broker joined the region: it takes replicas from now on"
                        ),
                        Err(e) => {
                            tracing::warn!(broker = id, error = %e, "broker activation not recorded yet")
                        }
                    }
                }
                Step::Forget(id) => {
                    match self
                        .controller_write(ControllerCommand::ForgetBroker { id })
                        .await
                    {
                        Ok(()) => tracing::info!(broker = id, "broker removed from the region"),
                        Err(e) => {
                            tracing::warn!(broker = id, error = %e, "broker removal not recorded yet")
                        }
                    }
                }
            }
        }
    }
}
