//! Moving a topic's home role to another region, as the current home's
//! controller applies it (`chronik ctl switchover`):
//!
//! 1. `FenceHome`: the topic stops taking writes here. The record keeps the
//!    move's target, and each partition's leader writes a demotion into its
//!    own log (see [`crate::home_role`]), after which no produce applies.
//! 2. The caller waits until the target's copy holds every partition up to
//!    the log end the fence left.
//! 3. `MoveHome`: the topic's global home entry gets the target and the next
//!    fencing epoch (the path reserved for it in metadata-sync: highest epoch
//!    wins, never last writer), and this region's copy becomes a mirror of
//!    the target. The target promotes its copy when the entry reaches it.
//!
//! Only the current home writes these entries, so a planned move has one
//! writer; every step is idempotent, so a move interrupted by a crash is
//! completed by running it again.

use std::sync::Arc;

use chronik_metadata_sync::{Entry, Key, RegionId};
use kafka_protocol::error::ResponseError as E;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::meta_apply::{mirror_configs, mirrored_in, topic_id, wall};
use super::{now_ms, Catalog, PostApply, Topic, TopicError};
use crate::groups::record::{self as groups, OffsetRecord};
use crate::raft::types::ControllerCommand;
use crate::storage::CF_META;

/// A committed offset that pointed at records the partition no longer has,
/// moved back to where they end. Kept under [`OFFSET_MOVED_PREFIX`] for
/// `/v1/meta/status`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OffsetMove {
    pub group: String,
    pub topic: String,
    pub partition: i32,
    pub from: i64,
    pub to: i64,
    #[serde(default)]
    pub at_ms: i64,
    #[serde(default)]
    pub reason: OffsetMoveReason,
}

/// Why a committed offset was moved.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OffsetMoveReason {
    /// Beyond the log end of a copy just promoted to home (after a forced
    /// failover the new home may hold less than the old one did): the group
    /// resumes at the first record written after the promotion rather than
    /// at `auto.offset.reset`.
    #[default]
    Promotion,
    /// Committed in a region, on records of its copy that diverged from the
    /// new home, and past the point where failback cuts that copy back: the
    /// group resumes at the divergence point, where the records it never
    /// read begin (the diverged ones it did read are in the recovery topic).
    Failback,
}

impl OffsetMoveReason {
    fn metric(self) -> &'static str {
        match self {
            OffsetMoveReason::Promotion => "chronik_offsets_moved_at_promotion_total",
            OffsetMoveReason::Failback => "chronik_offsets_moved_at_failback_total",
        }
    }
}

pub const OFFSET_MOVED_PREFIX: &str = "offset-moved/";
/// How many offset moves are kept for reporting (the oldest go first).
pub const OFFSET_MOVES_KEPT: usize = 1_000;

/// A move of the home role away from this region, under way: writes have
/// stopped here; the target's copy is draining.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HomeMove {
    pub to: String,
    /// The fencing epoch being left.
    pub epoch: u64,
    pub since_ms: i64,
}

fn refused(message: String) -> TopicError {
    TopicError::Rejected {
        code: E::InvalidRequest.code(),
        message,
    }
}

impl Catalog {
    /// Stops writes to a topic homed here before moving its home to `to`.
    /// `epoch`: the home epoch it is at.
    pub async fn fence_home(&self, name: &str, to: &str, epoch: u64) -> Result<(), TopicError> {
        self.change_topic(
            name,
            |id| ControllerCommand::FenceHome {
                name: name.to_string(),
                id,
                to: to.to_string(),
                epoch,
                now_ms: now_ms(),
            },
            |t| t.record.moving.is_some(),
        )
        .await
    }

    /// Lifts a fence whose move has not happened.
    pub async fn unfence_home(&self, name: &str) -> Result<(), TopicError> {
        self.change_topic(
            name,
            |id| ControllerCommand::UnfenceHome {
                name: name.to_string(),
                id,
            },
            |t| t.record.moving.is_none(),
        )
        .await
    }

    /// Gives the topic's home to `to` at fencing epoch `epoch` (the fenced
    /// epoch + 1); this region's copy becomes its mirror.
    pub async fn move_home(&self, name: &str, to: &str, epoch: u64) -> Result<(), TopicError> {
        self.change_topic(
            name,
            |id| ControllerCommand::MoveHome {
                name: name.to_string(),
                id,
                to: to.to_string(),
                epoch,
                now_ms: now_ms(),
            },
            |t| t.mirror_of(&self.region.name) == Some(to),
        )
        .await
    }

    /// Takes the home of a topic from the lost region `from` at fencing
    /// epoch `epoch` (failover; the voters have agreed).
    /// `settle`: the verdict on the lost home's commits, which the
    /// promoted partitions apply (see `chronik_wire::settle`).
    pub async fn take_home(
        &self,
        name: &str,
        from: &str,
        epoch: u64,
        settle: Option<chronik_wire::settle::Plan>,
    ) -> Result<(), TopicError> {
        let here = self.region.name.clone();
        self.change_topic(
            name,
            |id| ControllerCommand::TakeHome {
                name: name.to_string(),
                id,
                from: from.to_string(),
                epoch,
                now_ms: now_ms(),
                settle: settle.clone(),
            },
            |t| t.mirror_of(&here).is_none() && self.home_of(&t.id()).is_some_and(|h| h.1 >= epoch),
        )
        .await
    }

    /// The committed offsets of `topic`/`partition` past `end`, as moves to
    /// `end`. `origin`: only commits whose winning write was made in that
    /// region (a commit another region made is about its own log).
    pub fn offsets_beyond(
        &self,
        topic: &str,
        partition: i32,
        end: i64,
        origin: Option<&str>,
        reason: OffsetMoveReason,
    ) -> Vec<OffsetMove> {
        self.global
            .read()
            .entries()
            .filter_map(|e| match &e.key {
                Key::GroupOffset {
                    group,
                    topic: t,
                    partition: p,
                } if t == topic
                    && *p == partition
                    && origin.is_none_or(|o| e.origin.as_str() == o) =>
                {
                    let v = e.offset()?;
                    (v.offset > end).then(|| OffsetMove {
                        group: group.clone(),
                        topic: topic.to_string(),
                        partition,
                        from: v.offset,
                        to: end,
                        at_ms: 0,
                        reason,
                    })
                }
                _ => None,
            })
            .collect()
    }

    /// Moves committed offsets back (each only if it is still what was
    /// committed: a newer commit stands).
    pub async fn move_offsets(&self, moves: Vec<OffsetMove>) -> Result<(), TopicError> {
        self.submit(ControllerCommand::MoveOffsets {
            moves,
            now_ms: now_ms(),
        })
        .await
    }

    /// Offsets moved at promotions, oldest first.
    pub fn offsets_moved(&self) -> Result<Vec<OffsetMove>, TopicError> {
        Ok(self
            .store
            .scan_meta(OFFSET_MOVED_PREFIX)?
            .iter()
            .filter_map(|(_, v)| serde_json::from_slice(v).ok())
            .collect())
    }

    pub(super) fn apply_move_offsets(
        &self,
        moves: &[OffsetMove],
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let meta = self.store.cf(CF_META);
        let mut rep = self.global.write();
        let mut keys = Vec::new();
        for (i, m) in moves.iter().enumerate() {
            let Some(mut record) = self
                .store
                .get_meta(&groups::offset_key(&m.group, &m.topic, m.partition))?
                .and_then(|v| serde_json::from_slice::<OffsetRecord>(&v).ok())
                .filter(|r| r.offset == m.from)
            else {
                continue; // committed again since: the new commit stands
            };
            record.offset = m.to;
            record.leader_epoch = -1;
            record.commit_ms = now_ms;
            self.put_offset_record(wb, (&m.group, &m.topic, m.partition), Some(&record));
            let value = self.offset_value(&m.topic, &record);
            if let Err(e) = rep.commit_offset(&m.group, &m.topic, m.partition, value, wall(now_ms))
            {
                tracing::warn!(group = m.group, topic = m.topic, partition = m.partition, error = %e, "moved offset not made global");
            }
            let moved = OffsetMove {
                at_ms: now_ms,
                ..m.clone()
            };
            wb.put_cf(
                meta,
                format!("{OFFSET_MOVED_PREFIX}{now_ms:016x}/{i:08x}"),
                serde_json::to_vec(&moved).expect("serializes"),
            );
            tracing::warn!(
                group = m.group,
                topic = m.topic,
                partition = m.partition,
                from = m.from,
                to = m.to,
                reason = ?m.reason,
                "committed offset moved back to where the partition's records end"
            );
            metrics::counter!(m.reason.metric()).increment(1);
            keys.push((m.group.clone(), m.topic.clone(), m.partition));
        }
        self.global.save(&self.store, &mut rep, wb);
        // Bounded: the oldest records beyond the newest OFFSET_MOVES_KEPT go
        // (the moves themselves stay in the offsets).
        let stored = self.store.scan_meta(OFFSET_MOVED_PREFIX)?;
        let excess = (stored.len() + keys.len()).saturating_sub(OFFSET_MOVES_KEPT);
        for (k, _) in stored.iter().take(excess) {
            wb.delete_cf(meta, k);
        }
        Ok(PostApply::RemoteOffsets(keys))
    }

    /// The topic `name` of incarnation `id`, this region's name, and the
    /// topic's global (home, epoch).
    fn topic_at_home(
        &self,
        name: &str,
        id: &Uuid,
    ) -> Result<(Arc<Topic>, String, (String, u64)), TopicError> {
        let topic = self.incarnation(name, id)?;
        let home = self
            .home_of(id)
            .ok_or_else(|| refused(format!("topic {name} has no global home entry")))?;
        Ok((topic, self.global.region().to_string(), home))
    }

    /// The topic's global home and fencing epoch, if it has one.
    pub fn home_of(&self, id: &Uuid) -> Option<(String, u64)> {
        self.global
            .read()
            .home(&topic_id(id))
            .map(|h| (h.home, h.epoch))
    }

    pub(super) fn apply_fence_home(
        &self,
        name: &str,
        id: &Uuid,
        to: &str,
        epoch: u64,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let (topic, here, (home, current)) = self.topic_at_home(name, id)?;
        if home != here {
            return Err(refused(format!(
                "topic {name} is homed in {home}, not in {here}: only its home can move it"
            )));
        }
        if current != epoch {
            return Err(refused(format!(
                "topic {name} is at home epoch {current}, not {epoch}"
            )));
        }
        if to == here {
            return Err(refused(format!("topic {name} is already homed in {to}")));
        }
        if let Some(m) = &topic.record.moving {
            if m.to == to {
                return Ok(PostApply::Nothing);
            }
            return Err(refused(format!(
                "a move of topic {name} to {} is already under way",
                m.to
            )));
        }
        {
            let rep = self.global.read();
            let regions: Vec<RegionId> = rep.regions().cloned().collect();
            let target = RegionId::new(to.to_string())
                .ok()
                .filter(|r| regions.contains(r))
                .ok_or_else(|| refused(format!("unknown region {to}")))?;
            let def = rep
                .get(&Key::Topic(topic_id(id)))
                .and_then(Entry::topic_def)
                .ok_or_else(|| refused(format!("topic {name} has no global definition")))?;
            if !mirrored_in(&def, &here, &target, &regions) {
                return Err(refused(format!(
                    "region {to} holds no mirror of topic {name} (chronik.mirror.regions)"
                )));
            }
        }
        Ok(self.put_changed(&topic, wb, |r| {
            r.moving = Some(HomeMove {
                to: to.to_string(),
                epoch,
                since_ms: now_ms,
            })
        }))
    }

    /// Lifts a fence that has not moved the home yet (`--abort`).
    pub(super) fn apply_unfence_home(
        &self,
        name: &str,
        id: &Uuid,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let topic = self.incarnation(name, id)?;
        if topic.record.moving.is_none() {
            return Ok(PostApply::Nothing);
        }
        Ok(self.put_changed(&topic, wb, |r| r.moving = None))
    }

    pub(super) fn apply_move_home(
        &self,
        name: &str,
        id: &Uuid,
        to: &str,
        epoch: u64,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let (topic, here, (home, current)) = self.topic_at_home(name, id)?;
        if home == to && current >= epoch {
            // Done before (a re-run after a crash).
            if topic.record.moving.is_none() {
                return Ok(PostApply::Nothing);
            }
        } else {
            match &topic.record.moving {
                Some(m) if m.to == to && home == here && current + 1 == epoch => {}
                Some(m) if m.to != to => {
                    return Err(refused(format!(
                        "topic {name} is being moved to {}, not {to}",
                        m.to
                    )))
                }
                None => {
                    return Err(refused(format!(
                        "topic {name} is not fenced for a move; fence it first"
                    )))
                }
                Some(_) => {
                    return Err(refused(format!(
                        "topic {name} is at home epoch {current} in {home}; cannot move it to epoch {epoch}"
                    )))
                }
            }
            let target = RegionId::new(to.to_string()).map_err(|e| refused(e.to_string()))?;
            let mut rep = self.global.write();
            rep.set_home(topic_id(id), &target, epoch, wall(now_ms))
                .map_err(|e| refused(format!("global home not moved: {e}")))?;
            self.global.save(&self.store, &mut rep, wb);
            tracing::warn!(topic = name, from = here, to, epoch, "home role moved");
        }
        let configs =
            Self::validate_configs(&mirror_configs(topic.record.configs.clone(), to, id))?;
        Ok(self.put_changed(&topic, wb, |r| {
            r.moving = None;
            r.configs = configs;
        }))
    }

    pub(super) fn apply_take_home(
        &self,
        name: &str,
        id: &Uuid,
        (from, epoch): (&str, u64),
        settle: Option<&chronik_wire::settle::Plan>,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let (topic, here, (home, current)) = self.topic_at_home(name, id)?;
        if home == here {
            if current >= epoch {
                return Ok(PostApply::Nothing); // a re-run after a crash
            }
            return Err(refused(format!(
                "topic {name} is already homed in {here} (epoch {current})"
            )));
        }
        if home != from {
            return Err(refused(format!(
                "topic {name} is homed in {home}, not in {from}"
            )));
        }
        if current + 1 != epoch {
            return Err(refused(format!(
                "topic {name} is at home epoch {current}; taking it over is epoch {}, not {epoch}",
                current + 1
            )));
        }
        let target = RegionId::new(here.clone()).map_err(|e| refused(e.to_string()))?;
        {
            let mut rep = self.global.write();
            rep.set_home(topic_id(id), &target, epoch, wall(now_ms))
                .map_err(|e| refused(format!("global home not moved: {e}")))?;
            self.global.save(&self.store, &mut rep, wb);
        }
        if let Some(plan) = settle {
            wb.put_cf(
                self.store.cf(crate::storage::CF_META),
                settle_key(id),
                serde_json::to_vec(&Settlement {
                    epoch,
                    plan: plan.clone(),
                })
                .expect("serializes"),
            );
        }
        tracing::warn!(
            topic = name,
            from,
            to = here,
            epoch,
            retracting_producers = settle.map_or(0, |p| p.retract_from.len()),
            "home role taken over (failover)"
        );
        let rep = self.global.read();
        let _ = topic;
        Ok(self
            .reconcile_one(&rep, topic_id(id), wb)?
            .unwrap_or(PostApply::Nothing))
    }
}

/// The verdict a failover took a topic's home with, for its partitions'
/// promotions at `epoch` (see `chronik_wire::settle`).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Settlement {
    pub epoch: u64,
    pub plan: chronik_wire::settle::Plan,
}

fn settle_key(id: &Uuid) -> String {
    format!("settle/{id}")
}

impl Catalog {
    /// The verdict topic `id`'s home was taken with at `epoch`, if any.
    pub fn settlement(&self, id: &Uuid, epoch: u64) -> Option<chronik_wire::settle::Plan> {
        let raw = self.store.get_meta(&settle_key(id)).ok()??;
        let s: Settlement = serde_json::from_slice(&raw).ok()?;
        (s.epoch == epoch).then_some(s.plan)
    }

    /// Removes a deleted topic's verdict with the topic.
    pub(super) fn forget_settlement(&self, id: &Uuid, wb: &mut WriteBatch) {
        wb.delete_cf(self.store.cf(CF_META), settle_key(id));
    }
}
