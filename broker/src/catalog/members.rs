//! The region's brokers as the controller records them, so that a region
//! grows and shrinks while it runs (`chronik ctl broker add|remove`).
//!
//! Every replica applies the same controller log, so the membership it
//! places replicas with must come from that log, never from a broker's own
//! configuration: a broker added later lists more peers than the ones that
//! formed the region, and would otherwise place the region's first topics
//! differently when it replays them. The first controller membership entry
//! (the voters the region formed with) seeds the record; `AddBroker`,
//! `RemoveBroker` and `ForgetBroker` change it.
//!
//! A removal is a drain: the broker turns `Leaving`, the controller leader
//! moves its partition replicas away with the ordinary reassignment, then
//! takes it out of the controller's voters and forgets it (`Removed`, kept
//! so that every broker stops talking to it even if its own configuration
//! still names it).

use serde::{Deserialize, Serialize};

use super::{Catalog, PostApply, TopicError, WriteBatch, CF_META};
use crate::raft::types::ControllerCommand;

pub const MEMBER_PREFIX: &str = "member/";

/// Kafka's INVALID_REQUEST, for membership changes the region cannot make.
const INVALID_REQUEST: i16 = 42;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MemberState {
    /// Added, not yet a controller voter (it has to start and catch up):
    /// no replicas are placed on it yet.
    Joining,
    /// Hosts replicas and votes in the controller.
    Active,
    /// Being removed: its replicas move away; no new ones are placed on it.
    Leaving,
    /// Gone: out of the controller, no replicas, not dialled.
    Removed,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub id: i32,
    pub state: MemberState,
    /// Its Raft peer address, for brokers added while the region ran (the
    /// others' configurations do not name it). `None` for the brokers the
    /// region formed with: every configuration names those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft: Option<String>,
}

fn member_key(id: i32) -> String {
    format!("{MEMBER_PREFIX}{id:08}")
}

fn refused(message: String) -> TopicError {
    TopicError::Rejected {
        code: INVALID_REQUEST,
        message,
    }
}

/// A Raft address the transport can dial: `host:port`.
fn check_raft_addr(addr: &str) -> Result<(), TopicError> {
    let ok = addr
        .rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0));
    if ok {
        Ok(())
    } else {
        Err(refused(format!(
            "raft address {addr:?} is not host:port (the broker's listeners.raft as its peers reach it)"
        )))
    }
}

impl Catalog {
    /// Every broker the region has recorded, removed ones included, by id.
    /// Before the controller recorded any (a data directory from a version
    /// without membership), the configured brokers.
    pub fn members(&self) -> Vec<Member> {
        let m = self.members.read().unwrap();
        if !m.is_empty() {
            return m.values().cloned().collect();
        }
        self.region
            .brokers
            .iter()
            .map(|id| Member {
                id: *id,
                state: MemberState::Active,
                raft: None,
            })
            .collect()
    }

    /// The brokers new replicas may be placed on, ascending.
    pub fn active_brokers(&self) -> Vec<i32> {
        self.members()
            .into_iter()
            .filter(|m| m.state == MemberState::Active)
            .map(|m| m.id)
            .collect()
    }

    /// Whether broker `id` hosts, or is about to host, a replica.
    pub fn hosts_replicas(&self, id: i32) -> bool {
        self.replicas_on(id) > 0
    }

    /// Partitions whose replicas, or reassignment target, include `id`.
    pub fn replicas_on(&self, id: i32) -> usize {
        self.list()
            .iter()
            .map(|t| {
                (0..t.partitions.len() as i32)
                    .filter(|p| {
                        t.replicas(*p).contains(&id)
                            || t.reassigning(*p).is_some_and(|r| r.contains(&id))
                    })
                    .count()
            })
            .sum()
    }

    pub(super) fn load_members(&self) -> Result<(), crate::storage::StoreError> {
        let mut members = std::collections::BTreeMap::new();
        for (key, value) in self.store.scan_meta(MEMBER_PREFIX)? {
            let m: Member = serde_json::from_slice(&value).map_err(|e| {
                crate::storage::StoreError::Corrupt {
                    key: key.clone(),
                    detail: e.to_string(),
                }
            })?;
            members.insert(m.id, m);
        }
        *self.members.write().unwrap() = members;
        Ok(())
    }

    /// Applied with each controller membership entry: the first one (the
    /// voters the region formed with) records the region's brokers, if
    /// nothing did yet. The same entry comes first on every replica.
    pub fn seed_members_into(&self, voters: &[u64], wb: &mut WriteBatch) -> Option<PostApply> {
        if !self.members.read().unwrap().is_empty() {
            return None;
        }
        let members: Vec<Member> = voters
            .iter()
            .map(|id| Member {
                id: *id as i32,
                state: MemberState::Active,
                raft: None,
            })
            .collect();
        for m in &members {
            self.put_member(wb, m);
        }
        Some(PostApply::Members(members))
    }

    fn put_member(&self, wb: &mut WriteBatch, m: &Member) {
        wb.put_cf(
            self.store.cf(CF_META),
            member_key(m.id),
            serde_json::to_vec(m).expect("serializes"),
        );
    }

    /// Writes `m` and returns the in-memory step that follows the write.
    fn record_member(&self, wb: &mut WriteBatch, m: Member) -> PostApply {
        self.put_member(wb, &m);
        PostApply::Members(vec![m])
    }

    fn member(&self, id: i32) -> Option<Member> {
        self.members().into_iter().find(|m| m.id == id)
    }

    pub(super) fn apply_add_broker(
        &self,
        id: i32,
        raft: &str,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        if id < 0 {
            return Err(refused(format!("broker id {id} is negative")));
        }
        check_raft_addr(raft)?;
        let next = match self.member(id) {
            Some(m) if m.state == MemberState::Active => {
                return match &m.raft {
                    Some(a) if a != raft => Err(refused(format!(
                        "broker {id} is already a member of the region, at {a}"
                    ))),
                    _ => Ok(PostApply::Nothing),
                };
            }
            // Not caught up yet: the address may be what kept it from
            // joining, so a second add corrects it.
            Some(m) if m.state == MemberState::Joining => {
                if m.raft.as_deref() == Some(raft) {
                    return Ok(PostApply::Nothing);
                }
                Member {
                    raft: Some(raft.to_string()),
                    ..m
                }
            }
            // Adding a broker that is being removed cancels the removal;
            // the replicas already moved stay where they went.
            Some(m) if m.state == MemberState::Leaving => Member {
                state: MemberState::Active,
                ..m
            },
            _ => Member {
                id,
                state: MemberState::Joining,
                raft: Some(raft.to_string()),
            },
        };
        Ok(self.record_member(wb, next))
    }

    pub(super) fn apply_remove_broker(
        &self,
        id: i32,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let m = match self.member(id) {
            Some(m) if m.state == MemberState::Joining => {
                return Ok(self.record_member(
                    wb,
                    Member {
                        state: MemberState::Leaving,
                        ..m
                    },
                ))
            }
            Some(m) if m.state == MemberState::Active => m,
            Some(m) if m.state == MemberState::Leaving => return Ok(PostApply::Nothing),
            _ => {
                return Err(refused(format!(
                    "broker {id} is not a member of the region"
                )))
            }
        };
        let remaining = self.active_brokers().len() - 1;
        if remaining == 0 {
            return Err(refused(format!("broker {id} is the region's last broker")));
        }
        // Every partition must still find as many distinct brokers as it
        // has replicas, or the drain could never finish.
        if let Some((topic, rf)) = self
            .list()
            .iter()
            .flat_map(|t| {
                (0..t.partitions.len() as i32)
                    .map(move |p| (t.name().to_string(), t.replicas(p).len()))
            })
            .max_by_key(|(_, rf)| *rf)
            .filter(|(_, rf)| *rf > remaining)
        {
            return Err(refused(format!(
                "removing broker {id} would leave {remaining} broker(s), fewer than the {rf} replicas of topic {topic}; add a broker first or lower the topic's replication"
            )));
        }
        let next = Member {
            state: MemberState::Leaving,
            ..m
        };
        Ok(self.record_member(wb, next))
    }

    /// A joining broker became a controller voter: replicas may go there.
    pub(super) fn apply_activate_broker(
        &self,
        id: i32,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        match self.member(id) {
            Some(m) if m.state == MemberState::Joining => Ok(self.record_member(
                wb,
                Member {
                    state: MemberState::Active,
                    ..m
                },
            )),
            Some(m) if m.state == MemberState::Active => Ok(PostApply::Nothing),
            _ => Err(refused(format!("broker {id} is not joining the region"))),
        }
    }

    pub(super) fn apply_forget_broker(
        &self,
        id: i32,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let m = match self.member(id) {
            Some(m) if m.state == MemberState::Leaving => m,
            _ => return Err(refused(format!("broker {id} is not being removed"))),
        };
        if self.hosts_replicas(id) {
            return Err(refused(format!(
                "broker {id} still hosts partition replicas"
            )));
        }
        let next = Member {
            state: MemberState::Removed,
            ..m
        };
        // Clients stop seeing it in Metadata.
        wb.delete_cf(self.store.cf(CF_META), super::broker_key(id));
        Ok(PostApply::Many(vec![
            self.record_member(wb, next),
            PostApply::Unregister(id),
        ]))
    }

    /// `chronik ctl broker add`: `id` joins the region, its peers reach it
    /// at `raft`. The controller leader then makes it a controller voter
    /// once it has caught up, and active.
    pub async fn add_broker(&self, id: i32, raft: String) -> Result<(), TopicError> {
        check_raft_addr(&raft)?;
        self.submit(ControllerCommand::AddBroker {
            id,
            raft: raft.clone(),
        })
        .await?;
        self.await_local(|| {
            self.member(id)
                .filter(|m| matches!(m.state, MemberState::Joining | MemberState::Active))
                .map(|_| ())
        })
        .await
    }

    /// `chronik ctl broker remove`: starts draining `id`.
    pub async fn remove_broker(&self, id: i32) -> Result<(), TopicError> {
        self.submit(ControllerCommand::RemoveBroker { id }).await?;
        self.await_local(|| {
            self.member(id)
                .filter(|m| m.state != MemberState::Active)
                .map(|_| ())
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;

    use chronik_topology::{Durability, TopicDefaults};

    use super::*;
    use crate::catalog::RegionSettings;
    use crate::storage::Store;

    fn catalog(dir: &std::path::Path, configured: Vec<i32>) -> Catalog {
        let store = Arc::new(Store::open(dir, Durability::Fsync).unwrap());
        let region = RegionSettings {
            name: "us-east".into(),
            brokers: configured,
            default_replication_factor: 3,
            default_min_insync_replicas: 2,
        };
        Catalog::open(store, TopicDefaults::default(), region).unwrap()
    }

    async fn apply(cat: &Catalog, cmd: &ControllerCommand) -> Result<(), TopicError> {
        let mut wb = WriteBatch::default();
        let post = cat.apply(cmd, &mut wb)?;
        cat.store.write(wb).await.unwrap();
        post.run(cat).unwrap();
        Ok(())
    }

    async fn seed(cat: &Catalog, voters: &[u64]) {
        let mut wb = WriteBatch::default();
        let post = cat.seed_members_into(voters, &mut wb).unwrap();
        cat.store.write(wb).await.unwrap();
        post.run(cat).unwrap();
        // Later membership entries change nothing.
        assert!(cat
            .seed_members_into(&[9], &mut WriteBatch::default())
            .is_none());
    }

    /// Topic `t`, one partition on brokers 1, 2 and 3.
    fn topic_on_1_2_3(id: u128) -> ControllerCommand {
        ControllerCommand::CreateTopic {
            name: "t".into(),
            id: uuid::Uuid::from_u128(id),
            partitions: -1,
            replication_factor: -1,
            assignments: vec![vec![1, 2, 3]],
            configs: BTreeMap::new(),
            now_ms: 0,
        }
    }

    /// A broker added later names more brokers in its configuration than
    /// the region formed with; replaying the region's log it must still
    /// place every partition as the others did.
    #[tokio::test]
    async fn a_joiner_replays_the_log_into_the_same_placement() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let original = catalog(a.path(), vec![1, 2, 3]);
        let joiner = catalog(b.path(), vec![1, 2, 3, 4]);
        let log = [
            ControllerCommand::CreatePartitions {
                name: "t".into(),
                count: 6,
                assignments: None,
                now_ms: 0,
            },
            ControllerCommand::AddBroker {
                id: 4,
                raft: "127.0.0.4:9093".into(),
            },
            ControllerCommand::ActivateBroker { id: 4 },
            ControllerCommand::CreatePartitions {
                name: "t".into(),
                count: 12,
                assignments: None,
                now_ms: 0,
            },
            ControllerCommand::RemoveBroker { id: 2 },
        ];
        for cat in [&original, &joiner] {
            seed(cat, &[1, 2, 3]).await;
            apply(cat, &topic_on_1_2_3(7)).await.unwrap();
            for cmd in &log {
                apply(cat, cmd).await.unwrap();
            }
        }
        let placed = |c: &Catalog| {
            let t = c.get("t").unwrap();
            (0..12).map(|p| t.replicas(p)).collect::<Vec<_>>()
        };
        assert_eq!(placed(&original), placed(&joiner));
        assert!(placed(&original)[6..].iter().any(|r| r.contains(&4)));
        assert_eq!(original.members(), joiner.members());
        assert_eq!(original.active_brokers(), vec![1, 3, 4]);
    }

    #[tokio::test]
    async fn removals_that_cannot_drain_are_refused_and_forgetting_waits_for_the_drain() {
        let dir = tempfile::tempdir().unwrap();
        let cat = catalog(dir.path(), vec![1, 2, 3]);
        seed(&cat, &[1, 2, 3]).await;
        apply(&cat, &topic_on_1_2_3(8)).await.unwrap();
        let err = apply(&cat, &ControllerCommand::RemoveBroker { id: 3 })
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("fewer than the 3 replicas"),
            "{err}"
        );
        let err = apply(
            &cat,
            &ControllerCommand::AddBroker {
                id: 4,
                raft: "127.0.0.4".into(),
            },
        )
        .await
        .unwrap_err();
        assert!(err.to_string().contains("host:port"), "{err}");
        apply(
            &cat,
            &ControllerCommand::AddBroker {
                id: 4,
                raft: "127.0.0.4:9093".into(),
            },
        )
        .await
        .unwrap();
        // Joining: not yet a place for replicas, so 3 still cannot go.
        assert!(apply(&cat, &ControllerCommand::RemoveBroker { id: 3 })
            .await
            .is_err());
        apply(&cat, &ControllerCommand::ActivateBroker { id: 4 })
            .await
            .unwrap();
        apply(&cat, &ControllerCommand::RemoveBroker { id: 3 })
            .await
            .unwrap();
        // Still a replica of t-0: it cannot be forgotten yet.
        assert!(apply(&cat, &ControllerCommand::ForgetBroker { id: 3 })
            .await
            .is_err());
        apply(
            &cat,
            &ControllerCommand::Reassign {
                name: "t".into(),
                partition: 0,
                target: Some(vec![1, 2, 4]),
            },
        )
        .await
        .unwrap();
        assert!(apply(&cat, &ControllerCommand::ForgetBroker { id: 3 })
            .await
            .is_err());
        apply(
            &cat,
            &ControllerCommand::CompleteReassignment {
                name: "t".into(),
                partition: 0,
                replicas: vec![1, 2, 4],
            },
        )
        .await
        .unwrap();
        apply(&cat, &ControllerCommand::ForgetBroker { id: 3 })
            .await
            .unwrap();
        assert_eq!(cat.active_brokers(), vec![1, 2, 4]);
        assert_eq!(
            cat.members().iter().find(|m| m.id == 3).unwrap().state,
            MemberState::Removed
        );
    }
}
