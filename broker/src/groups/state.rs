//! The classic group membership protocol as a pure state machine: no
//! clocks, no sockets, no storage. Every call takes `now_ms` and returns
//! what to answer; answers that must wait (a JoinGroup until the rebalance
//! completes, a SyncGroup until the leader's assignment arrives) come back
//! later as `Effects` from whichever call completes them. The async
//! coordinator owns the waiting and the persistence.

use std::collections::{BTreeMap, HashMap};

use super::record::{GroupRecord, MemberRecord};

/// Kafka error codes of the group coordinator (the state machine's and the
/// coordinator's own).
pub mod code {
    pub const NONE: i16 = 0;
    pub const UNKNOWN_TOPIC_OR_PARTITION: i16 = 3;
    pub const OFFSET_METADATA_TOO_LARGE: i16 = 12;
    pub const COORDINATOR_LOAD_IN_PROGRESS: i16 = 14;
    pub const NOT_COORDINATOR: i16 = 16;
    pub const INVALID_GROUP_ID: i16 = 24;
    pub const NON_EMPTY_GROUP: i16 = 68;
    pub const GROUP_ID_NOT_FOUND: i16 = 69;
    pub const GROUP_SUBSCRIBED_TO_TOPIC: i16 = 86;
    pub const ILLEGAL_GENERATION: i16 = 22;
    pub const INCONSISTENT_GROUP_PROTOCOL: i16 = 23;
    pub const UNKNOWN_MEMBER_ID: i16 = 25;
    pub const INVALID_SESSION_TIMEOUT: i16 = 26;
    pub const REBALANCE_IN_PROGRESS: i16 = 27;
    pub const GROUP_MAX_SIZE_REACHED: i16 = 81;
    pub const MEMBER_ID_REQUIRED: i16 = 79;
    pub const FENCED_INSTANCE_ID: i16 = 82;
    pub const COORDINATOR_NOT_AVAILABLE: i16 = 15;
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Empty,
    PreparingRebalance,
    CompletingRebalance,
    Stable,
    /// Deleted; kept only until waiters are answered.
    Dead,
}

impl State {
    /// The names Kafka's tools print and ListGroups filters on.
    pub fn name(self) -> &'static str {
        match self {
            State::Empty => "Empty",
            State::PreparingRebalance => "PreparingRebalance",
            State::CompletingRebalance => "CompletingRebalance",
            State::Stable => "Stable",
            State::Dead => "Dead",
        }
    }
}

/// Coordinator-wide limits (Kafka's group.* broker settings).
#[derive(Debug, Clone)]
pub struct Limits {
    pub min_session_timeout_ms: i32,
    pub max_session_timeout_ms: i32,
    pub initial_rebalance_delay_ms: u64,
    pub max_size: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            min_session_timeout_ms: 6_000,
            max_session_timeout_ms: 1_800_000,
            initial_rebalance_delay_ms: 3_000,
            max_size: usize::MAX,
        }
    }
}

#[derive(Debug, Clone)]
pub struct Member {
    pub rec: MemberRecord,
    /// Session expiry.
    pub deadline_ms: u64,
    /// A JoinGroup from this member is waiting for the rebalance.
    pub awaiting_join: bool,
    /// A SyncGroup from this member is waiting for the leader.
    pub awaiting_sync: bool,
}

#[derive(Debug, Clone)]
pub struct JoinRequest {
    pub member_id: String,
    pub instance_id: Option<String>,
    pub client_id: String,
    pub client_host: String,
    pub session_timeout_ms: i32,
    pub rebalance_timeout_ms: i32,
    pub protocol_type: String,
    pub protocols: Vec<(String, Vec<u8>)>,
    /// v4+ clients take a member id from MEMBER_ID_REQUIRED and rejoin.
    pub require_known_member_id: bool,
    /// v9+ clients understand `JoinResult::skip_assignment` (KIP-814).
    pub supports_skip_assignment: bool,
}

#[derive(Debug, Clone, PartialEq)]
pub struct JoinResult {
    pub error: i16,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: String,
    pub member_id: String,
    /// Filled for the leader only: (member id, instance id, metadata).
    pub members: Vec<(String, Option<String>, Vec<u8>)>,
    /// The leader is told who is in the group but must not compute an
    /// assignment: a static leader came back to a stable group (KIP-814).
    pub skip_assignment: bool,
}

impl JoinResult {
    pub fn error(error: i16, member_id: &str) -> JoinResult {
        JoinResult {
            error,
            generation: -1,
            protocol_type: None,
            protocol: None,
            leader: String::new(),
            member_id: member_id.to_string(),
            members: Vec::new(),
            skip_assignment: false,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct SyncResult {
    pub error: i16,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub assignment: Vec<u8>,
}

impl SyncResult {
    fn error(error: i16) -> SyncResult {
        SyncResult {
            error,
            protocol_type: None,
            protocol: None,
            assignment: Vec::new(),
        }
    }
}

/// Answers that became ready, keyed by member id, and whether the group's
/// durable record changed.
#[derive(Debug, Default)]
pub struct Effects {
    pub joins: Vec<(String, JoinResult)>,
    pub syncs: Vec<(String, SyncResult)>,
    pub persist: bool,
}

impl Effects {
    fn merge(&mut self, other: Effects) {
        self.joins.extend(other.joins);
        self.syncs.extend(other.syncs);
        self.persist |= other.persist;
    }
}

pub enum Step<T> {
    /// Answer now.
    Now(T),
    /// The answer arrives later in some call's `Effects`, for this member id.
    Wait(String),
}

#[derive(Debug, Clone)]
pub struct Group {
    pub id: String,
    pub state: State,
    pub generation: i32,
    pub protocol_type: Option<String>,
    pub protocol: Option<String>,
    pub leader: Option<String>,
    pub members: BTreeMap<String, Member>,
    /// Member ids handed out with MEMBER_ID_REQUIRED, until their expiry.
    pub pending: HashMap<String, u64>,
    pub static_ids: HashMap<String, String>,
    pub rebalance_deadline_ms: u64,
    /// An empty group's first rebalance waits this long for more members.
    pub initial_delay_until: Option<u64>,
    pub empty_since_ms: Option<i64>,
    next_member: u64,
}

impl Group {
    pub fn new(id: &str) -> Group {
        Group {
            id: id.to_string(),
            state: State::Empty,
            generation: 0,
            protocol_type: None,
            protocol: None,
            leader: None,
            members: BTreeMap::new(),
            pending: HashMap::new(),
            static_ids: HashMap::new(),
            rebalance_deadline_ms: 0,
            initial_delay_until: None,
            empty_since_ms: None,
            next_member: 0,
        }
    }

    /// A group as a new coordinator loads it: members get fresh sessions,
    /// and a group caught mid-rebalance resumes from its last generation.
    pub fn load(id: &str, rec: GroupRecord, now_ms: u64) -> Group {
        let mut g = Group::new(id);
        g.generation = rec.generation;
        g.protocol_type = rec.protocol_type;
        g.protocol = rec.protocol;
        g.leader = rec.leader;
        g.empty_since_ms = rec.empty_since_ms;
        for m in rec.members {
            if let Some(i) = &m.instance_id {
                g.static_ids.insert(i.clone(), m.id.clone());
            }
            let deadline_ms = now_ms + m.session_timeout_ms.max(0) as u64;
            g.members.insert(
                m.id.clone(),
                Member {
                    rec: m,
                    deadline_ms,
                    awaiting_join: false,
                    awaiting_sync: false,
                },
            );
        }
        g.state = if g.members.is_empty() {
            State::Empty
        } else {
            State::Stable
        };
        g
    }

    pub fn record(&self) -> GroupRecord {
        GroupRecord {
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            generation: self.generation,
            leader: self.leader.clone(),
            members: self.members.values().map(|m| m.rec.clone()).collect(),
            empty_since_ms: self.empty_since_ms,
        }
    }

    fn new_member_id(&mut self, client_id: &str, now_ms: u64) -> String {
        self.next_member += 1;
        // Unique per coordinator incarnation: the time plus a counter.
        format!("{client_id}-{now_ms:x}-{:x}", self.next_member)
    }

    fn rebalance_timeout(&self) -> u64 {
        self.members
            .values()
            .map(|m| m.rec.rebalance_timeout_ms.max(0) as u64)
            .max()
            .unwrap_or(0)
    }

    /// The protocol every member supports that most members list first.
    fn select_protocol(&self) -> Option<String> {
        let mut candidates: Option<Vec<String>> = None;
        for m in self.members.values() {
            let names: Vec<String> = m.rec.protocols.iter().map(|p| p.0.clone()).collect();
            candidates = Some(match candidates {
                None => names,
                Some(c) => c.into_iter().filter(|n| names.contains(n)).collect(),
            });
        }
        let candidates = candidates?;
        let mut best: Option<(usize, String)> = None;
        for c in &candidates {
            let votes = self
                .members
                .values()
                .filter(|m| {
                    m.rec
                        .protocols
                        .iter()
                        .map(|p| &p.0)
                        .find(|n| candidates.contains(n))
                        == Some(c)
                })
                .count();
            if best.as_ref().is_none_or(|(v, _)| votes > *v) {
                best = Some((votes, c.clone()));
            }
        }
        best.map(|(_, n)| n)
    }

    /// Whether a new member with `protocols` can join this group.
    fn compatible(&self, protocol_type: &str, protocols: &[(String, Vec<u8>)]) -> bool {
        if protocol_type.is_empty() || protocols.is_empty() {
            return false;
        }
        if self.members.is_empty() {
            return true;
        }
        if self.protocol_type.as_deref() != Some(protocol_type) {
            return false;
        }
        // Some protocol every current member supports must be offered.
        protocols.iter().any(|(n, _)| {
            self.members
                .values()
                .all(|m| m.rec.protocols.iter().any(|(x, _)| x == n))
        })
    }

    fn current_join_result(&self, member_id: &str) -> JoinResult {
        let is_leader = self.leader.as_deref() == Some(member_id);
        JoinResult {
            error: code::NONE,
            generation: self.generation,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            leader: self.leader.clone().unwrap_or_default(),
            member_id: member_id.to_string(),
            members: if is_leader {
                self.member_list()
            } else {
                Vec::new()
            },
            skip_assignment: false,
        }
    }

    fn member_list(&self) -> Vec<(String, Option<String>, Vec<u8>)> {
        let proto = self.protocol.as_deref().unwrap_or("");
        self.members
            .values()
            .map(|m| {
                let meta = m
                    .rec
                    .protocols
                    .iter()
                    .find(|p| p.0 == proto)
                    .map(|p| p.1.clone())
                    .unwrap_or_default();
                (m.rec.id.clone(), m.rec.instance_id.clone(), meta)
            })
            .collect()
    }

    pub fn join(
        &mut self,
        req: JoinRequest,
        limits: &Limits,
        now_ms: u64,
    ) -> (Step<JoinResult>, Effects) {
        let mut fx = Effects::default();
        if req.session_timeout_ms < limits.min_session_timeout_ms
            || req.session_timeout_ms > limits.max_session_timeout_ms
        {
            return (
                Step::Now(JoinResult::error(
                    code::INVALID_SESSION_TIMEOUT,
                    &req.member_id,
                )),
                fx,
            );
        }
        if self.state == State::Dead {
            return (
                Step::Now(JoinResult::error(
                    code::COORDINATOR_NOT_AVAILABLE,
                    &req.member_id,
                )),
                fx,
            );
        }
        if !self.compatible(&req.protocol_type, &req.protocols) {
            return (
                Step::Now(JoinResult::error(
                    code::INCONSISTENT_GROUP_PROTOCOL,
                    &req.member_id,
                )),
                fx,
            );
        }

        // Resolve who this is.
        let member_id = if req.member_id.is_empty() {
            if let Some(inst) = req.instance_id.clone() {
                match self.static_ids.get(&inst).cloned() {
                    Some(old) => return self.replace_static(old, req, limits, now_ms),
                    None => {
                        let id = self.new_member_id(&req.client_id, now_ms);
                        self.static_ids.insert(inst, id.clone());
                        id
                    }
                }
            } else if req.require_known_member_id {
                let id = self.new_member_id(&req.client_id, now_ms);
                self.pending
                    .insert(id.clone(), now_ms + req.session_timeout_ms as u64);
                return (
                    Step::Now(JoinResult::error(code::MEMBER_ID_REQUIRED, &id)),
                    fx,
                );
            } else {
                self.new_member_id(&req.client_id, now_ms)
            }
        } else if self.pending.remove(&req.member_id).is_some() {
            req.member_id.clone()
        } else if let Some(m) = self.members.get(&req.member_id) {
            if m.rec.instance_id != req.instance_id {
                return (
                    Step::Now(JoinResult::error(code::FENCED_INSTANCE_ID, &req.member_id)),
                    fx,
                );
            }
            req.member_id.clone()
        } else {
            let fenced = req
                .instance_id
                .as_ref()
                .is_some_and(|i| self.static_ids.contains_key(i));
            let error = if fenced {
                code::FENCED_INSTANCE_ID
            } else {
                code::UNKNOWN_MEMBER_ID
            };
            return (Step::Now(JoinResult::error(error, &req.member_id)), fx);
        };

        let known = self.members.contains_key(&member_id);
        if !known && self.members.len() >= limits.max_size {
            return (
                Step::Now(JoinResult::error(code::GROUP_MAX_SIZE_REACHED, &member_id)),
                fx,
            );
        }
        let rec = MemberRecord {
            id: member_id.clone(),
            instance_id: req.instance_id.clone(),
            client_id: req.client_id.clone(),
            client_host: req.client_host.clone(),
            session_timeout_ms: req.session_timeout_ms,
            rebalance_timeout_ms: req.rebalance_timeout_ms,
            protocols: req.protocols.clone(),
            assignment: Vec::new(),
        };
        let deadline_ms = now_ms + req.session_timeout_ms as u64;
        if known {
            let m = self.members.get_mut(&member_id).unwrap();
            let same = m.rec.protocols == req.protocols;
            let assignment = std::mem::take(&mut m.rec.assignment);
            m.rec = MemberRecord { assignment, ..rec };
            m.deadline_ms = deadline_ms;
            let is_leader = self.leader.as_deref() == Some(member_id.as_str());
            match self.state {
                State::CompletingRebalance if same => {
                    return (Step::Now(self.current_join_result(&member_id)), fx)
                }
                State::Stable if same && !is_leader => {
                    return (Step::Now(self.current_join_result(&member_id)), fx)
                }
                _ => {}
            }
        } else {
            self.members.insert(
                member_id.clone(),
                Member {
                    rec,
                    deadline_ms,
                    awaiting_join: false,
                    awaiting_sync: false,
                },
            );
            if self.protocol_type.is_none() || self.members.len() == 1 {
                self.protocol_type = Some(req.protocol_type.clone());
            }
        }
        self.members.get_mut(&member_id).unwrap().awaiting_join = true;
        if self.state != State::PreparingRebalance {
            fx.merge(self.prepare_rebalance(limits, now_ms));
        }
        fx.merge(self.maybe_complete_join(now_ms));
        (Step::Wait(member_id), fx)
    }

    /// A static member came back with a new process (empty member id): it
    /// takes over the old member's place and assignment; the old member id
    /// is fenced from now on. As in Kafka, a stable group does not
    /// rebalance for it, leader or not, unless its protocols change the
    /// protocol the group would select; the other members hear nothing.
    fn replace_static(
        &mut self,
        old: String,
        req: JoinRequest,
        limits: &Limits,
        now_ms: u64,
    ) -> (Step<JoinResult>, Effects) {
        let mut fx = Effects::default();
        let new_id = self.new_member_id(&req.client_id, now_ms);
        let Some(mut m) = self.members.remove(&old) else {
            // Instance mapping without a member: start fresh.
            self.static_ids
                .remove(req.instance_id.as_deref().unwrap_or(""));
            let mut req = req;
            req.member_id.clear();
            return self.join(req, limits, now_ms);
        };
        // The replaced process's pending join/sync now answer fenced.
        if m.awaiting_join {
            fx.joins.push((
                old.clone(),
                JoinResult::error(code::FENCED_INSTANCE_ID, &old),
            ));
        }
        if m.awaiting_sync {
            fx.syncs
                .push((old.clone(), SyncResult::error(code::FENCED_INSTANCE_ID)));
        }
        // Kafka keeps the member's client id and host as they were (what
        // DescribeGroups shows); it takes the new timeouts and protocols.
        m.rec.id = new_id.clone();
        m.rec.session_timeout_ms = req.session_timeout_ms;
        m.rec.rebalance_timeout_ms = req.rebalance_timeout_ms;
        m.rec.protocols = req.protocols;
        m.deadline_ms = now_ms + req.session_timeout_ms as u64;
        m.awaiting_join = false;
        m.awaiting_sync = false;
        let old_leader = self.leader.clone();
        let was_leader = old_leader.as_deref() == Some(old.as_str());
        if was_leader {
            self.leader = Some(new_id.clone());
        }
        self.members.insert(new_id.clone(), m);
        self.static_ids
            .insert(req.instance_id.clone().unwrap_or_default(), new_id.clone());
        match self.state {
            State::Stable if self.select_protocol() == self.protocol => {
                // It resumes its assignment (SyncGroup in a stable group
                // answers the stored one).
                fx.persist = true;
                let mut r = self.current_join_result(&new_id);
                if was_leader && !req.supports_skip_assignment {
                    // A leader told it leads would compute an assignment
                    // that a stable group never hands out; answering with
                    // the old leader id makes it sync as a follower.
                    r.leader = old_leader.unwrap_or_default();
                    r.members.clear();
                } else {
                    r.skip_assignment = was_leader;
                }
                (Step::Now(r), fx)
            }
            _ => {
                self.members.get_mut(&new_id).unwrap().awaiting_join = true;
                if self.state != State::PreparingRebalance {
                    fx.merge(self.prepare_rebalance(limits, now_ms));
                }
                fx.merge(self.maybe_complete_join(now_ms));
                (Step::Wait(new_id), fx)
            }
        }
    }

    fn prepare_rebalance(&mut self, limits: &Limits, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        // Syncs waiting on the old generation can no longer complete.
        for m in self.members.values_mut() {
            if m.awaiting_sync {
                m.awaiting_sync = false;
                fx.syncs.push((
                    m.rec.id.clone(),
                    SyncResult::error(code::REBALANCE_IN_PROGRESS),
                ));
            }
        }
        if self.state == State::Empty && limits.initial_rebalance_delay_ms > 0 {
            self.initial_delay_until = Some(now_ms + limits.initial_rebalance_delay_ms);
        }
        self.state = State::PreparingRebalance;
        self.rebalance_deadline_ms = now_ms + self.rebalance_timeout();
        fx
    }

    fn maybe_complete_join(&mut self, now_ms: u64) -> Effects {
        if self.state != State::PreparingRebalance {
            return Effects::default();
        }
        if let Some(until) = self.initial_delay_until {
            if now_ms < until {
                return Effects::default();
            }
            self.initial_delay_until = None;
        }
        let all_joined = self.members.values().all(|m| m.awaiting_join) && self.pending.is_empty();
        if all_joined || now_ms >= self.rebalance_deadline_ms {
            self.complete_join(now_ms)
        } else {
            Effects::default()
        }
    }

    fn complete_join(&mut self, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        // Members that did not rejoin in time are out.
        let gone: Vec<String> = self
            .members
            .values()
            .filter(|m| !m.awaiting_join)
            .map(|m| m.rec.id.clone())
            .collect();
        for id in gone {
            self.remove_member(&id);
        }
        self.pending.clear();
        self.generation += 1;
        if self.members.is_empty() {
            self.to_empty(now_ms);
            fx.persist = true;
            return fx;
        }
        self.protocol = self.select_protocol();
        if !self
            .leader
            .as_ref()
            .is_some_and(|l| self.members.contains_key(l))
        {
            self.leader = self.members.keys().next().cloned();
        }
        self.state = State::CompletingRebalance;
        self.empty_since_ms = None;
        let ids: Vec<String> = self.members.keys().cloned().collect();
        for id in ids {
            let m = self.members.get_mut(&id).unwrap();
            m.awaiting_join = false;
            m.rec.assignment.clear();
            m.deadline_ms = now_ms + m.rec.session_timeout_ms as u64;
            fx.joins.push((id.clone(), self.current_join_result(&id)));
        }
        fx
    }

    fn to_empty(&mut self, now_ms: u64) {
        self.state = State::Empty;
        self.protocol = None;
        self.leader = None;
        self.initial_delay_until = None;
        self.empty_since_ms = Some(now_ms as i64);
    }

    fn remove_member(&mut self, id: &str) -> Option<Member> {
        let m = self.members.remove(id)?;
        if let Some(i) = &m.rec.instance_id {
            if self.static_ids.get(i).map(String::as_str) == Some(id) {
                self.static_ids.remove(i);
            }
        }
        if self.leader.as_deref() == Some(id) {
            self.leader = None;
        }
        Some(m)
    }

    /// Checks (member, generation, instance) as heartbeat, sync and commit do.
    pub fn validate_member(
        &self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
    ) -> i16 {
        if let Some(i) = instance_id {
            if let Some(owner) = self.static_ids.get(i) {
                if owner != member_id {
                    return code::FENCED_INSTANCE_ID;
                }
            }
        }
        match self.members.get(member_id) {
            None => code::UNKNOWN_MEMBER_ID,
            Some(m) if m.rec.instance_id.as_deref() != instance_id && instance_id.is_some() => {
                code::FENCED_INSTANCE_ID
            }
            Some(_) if generation != self.generation => code::ILLEGAL_GENERATION,
            Some(_) => code::NONE,
        }
    }

    pub fn sync(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        protocol_type: Option<&str>,
        protocol: Option<&str>,
        assignments: Vec<(String, Vec<u8>)>,
    ) -> (Step<SyncResult>, Effects) {
        let mut fx = Effects::default();
        let err = self.validate_member(member_id, instance_id, generation);
        if err != code::NONE {
            return (Step::Now(SyncResult::error(err)), fx);
        }
        if protocol_type.is_some_and(|p| Some(p) != self.protocol_type.as_deref())
            || protocol.is_some_and(|p| Some(p) != self.protocol.as_deref())
        {
            return (
                Step::Now(SyncResult::error(code::INCONSISTENT_GROUP_PROTOCOL)),
                fx,
            );
        }
        match self.state {
            State::PreparingRebalance => (
                Step::Now(SyncResult::error(code::REBALANCE_IN_PROGRESS)),
                fx,
            ),
            State::Stable => (Step::Now(self.sync_result(member_id)), fx),
            State::CompletingRebalance => {
                self.members.get_mut(member_id).unwrap().awaiting_sync = true;
                if self.leader.as_deref() == Some(member_id) {
                    let mut given: HashMap<String, Vec<u8>> = assignments.into_iter().collect();
                    for m in self.members.values_mut() {
                        m.rec.assignment = given.remove(&m.rec.id).unwrap_or_default();
                    }
                    self.state = State::Stable;
                    fx.persist = true;
                    let waiting: Vec<String> = self
                        .members
                        .values()
                        .filter(|m| m.awaiting_sync)
                        .map(|m| m.rec.id.clone())
                        .collect();
                    for id in waiting {
                        self.members.get_mut(&id).unwrap().awaiting_sync = false;
                        fx.syncs.push((id.clone(), self.sync_result(&id)));
                    }
                }
                (Step::Wait(member_id.to_string()), fx)
            }
            State::Empty | State::Dead => {
                (Step::Now(SyncResult::error(code::UNKNOWN_MEMBER_ID)), fx)
            }
        }
    }

    fn sync_result(&self, member_id: &str) -> SyncResult {
        SyncResult {
            error: code::NONE,
            protocol_type: self.protocol_type.clone(),
            protocol: self.protocol.clone(),
            assignment: self
                .members
                .get(member_id)
                .map(|m| m.rec.assignment.clone())
                .unwrap_or_default(),
        }
    }

    pub fn heartbeat(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        generation: i32,
        now_ms: u64,
    ) -> i16 {
        if self.state == State::Dead {
            return code::COORDINATOR_NOT_AVAILABLE;
        }
        let err = self.validate_member(member_id, instance_id, generation);
        if err != code::NONE {
            return err;
        }
        let m = self.members.get_mut(member_id).unwrap();
        m.deadline_ms = now_ms + m.rec.session_timeout_ms as u64;
        match self.state {
            State::PreparingRebalance => code::REBALANCE_IN_PROGRESS,
            _ => code::NONE,
        }
    }

    /// LeaveGroup for one member (by id, or by instance id with an empty
    /// member id as admin tools send).
    pub fn leave(
        &mut self,
        member_id: &str,
        instance_id: Option<&str>,
        limits: &Limits,
        now_ms: u64,
    ) -> (i16, Effects) {
        let id = match (member_id.is_empty(), instance_id) {
            (true, Some(i)) => match self.static_ids.get(i) {
                Some(id) => id.clone(),
                None => return (code::UNKNOWN_MEMBER_ID, Effects::default()),
            },
            _ => {
                if let Some(i) = instance_id {
                    if self.static_ids.get(i).is_some_and(|o| o != member_id) {
                        return (code::FENCED_INSTANCE_ID, Effects::default());
                    }
                }
                member_id.to_string()
            }
        };
        if self.pending.remove(&id).is_some() {
            return (code::NONE, self.maybe_complete_join(now_ms));
        }
        match self.evict(&id, limits, now_ms) {
            Some(fx) => (code::NONE, fx),
            None => (code::UNKNOWN_MEMBER_ID, Effects::default()),
        }
    }

    /// Removes a member (left or expired) and moves the group on.
    fn evict(&mut self, id: &str, limits: &Limits, now_ms: u64) -> Option<Effects> {
        let m = self.remove_member(id)?;
        let mut fx = Effects::default();
        if m.awaiting_join {
            fx.joins.push((
                id.to_string(),
                JoinResult::error(code::UNKNOWN_MEMBER_ID, id),
            ));
        }
        if m.awaiting_sync {
            fx.syncs
                .push((id.to_string(), SyncResult::error(code::UNKNOWN_MEMBER_ID)));
        }
        match self.state {
            State::Stable | State::CompletingRebalance => {
                if self.members.is_empty() {
                    // Kafka bumps the generation as the group empties.
                    fx.merge(self.prepare_rebalance(limits, now_ms));
                    fx.merge(self.complete_join(now_ms));
                } else {
                    fx.merge(self.prepare_rebalance(limits, now_ms));
                }
            }
            State::PreparingRebalance => fx.merge(self.maybe_complete_join(now_ms)),
            State::Empty | State::Dead => {}
        }
        Some(fx)
    }

    /// Expires sessions, pending member ids and rebalance deadlines.
    pub fn tick(&mut self, limits: &Limits, now_ms: u64) -> Effects {
        let mut fx = Effects::default();
        self.pending.retain(|_, exp| *exp > now_ms);
        let expired: Vec<String> = self
            .members
            .values()
            // A member waiting in JoinGroup is alive by definition.
            .filter(|m| !m.awaiting_join && m.deadline_ms <= now_ms)
            .map(|m| m.rec.id.clone())
            .collect();
        for id in expired {
            if let Some(f) = self.evict(&id, limits, now_ms) {
                fx.merge(f);
            }
        }
        fx.merge(self.maybe_complete_join(now_ms));
        fx
    }

    /// Marks the group deleted and answers everyone still waiting.
    pub fn kill(&mut self) -> Effects {
        let mut fx = Effects::default();
        for m in self.members.values() {
            if m.awaiting_join {
                fx.joins.push((
                    m.rec.id.clone(),
                    JoinResult::error(code::COORDINATOR_NOT_AVAILABLE, &m.rec.id),
                ));
            }
            if m.awaiting_sync {
                fx.syncs.push((
                    m.rec.id.clone(),
                    SyncResult::error(code::COORDINATOR_NOT_AVAILABLE),
                ));
            }
        }
        self.members.clear();
        self.state = State::Dead;
        fx
    }

    /// Topics the current members' assignments or subscriptions name, when
    /// the group uses the consumer protocol (for OffsetDelete's check).
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NO_DELAY: Limits = Limits {
        min_session_timeout_ms: 6_000,
        max_session_timeout_ms: 1_800_000,
        initial_rebalance_delay_ms: 0,
        max_size: usize::MAX,
    };

    fn req(member: &str, instance: Option<&str>, proto: &str) -> JoinRequest {
        JoinRequest {
            member_id: member.into(),
            instance_id: instance.map(Into::into),
            client_id: "c".into(),
            client_host: "/127.0.0.1".into(),
            session_timeout_ms: 10_000,
            rebalance_timeout_ms: 30_000,
            protocol_type: "consumer".into(),
            protocols: vec![(proto.into(), vec![1])],
            require_known_member_id: true,
            supports_skip_assignment: false,
        }
    }

    /// Joins a new dynamic member through MEMBER_ID_REQUIRED; returns its id.
    fn join_new(g: &mut Group, now: u64) -> (String, Effects) {
        let (step, _) = g.join(req("", None, "range"), &NO_DELAY, now);
        let Step::Now(r) = step else {
            panic!("expected MEMBER_ID_REQUIRED")
        };
        assert_eq!(r.error, code::MEMBER_ID_REQUIRED);
        let (step, fx) = g.join(req(&r.member_id, None, "range"), &NO_DELAY, now);
        assert!(matches!(step, Step::Wait(_)));
        (r.member_id, fx)
    }

    #[test]
    fn single_member_joins_syncs_and_heartbeats() {
        let mut g = Group::new("g");
        let (a, fx) = join_new(&mut g, 0);
        assert_eq!(fx.joins.len(), 1);
        let r = &fx.joins[0].1;
        assert_eq!(
            (r.error, r.generation, r.leader.as_str()),
            (0, 1, a.as_str())
        );
        assert_eq!(r.members.len(), 1, "the leader sees every member");
        assert_eq!(g.state, State::CompletingRebalance);
        let (step, fx) = g.sync(&a, None, 1, None, None, vec![(a.clone(), vec![9])]);
        assert!(matches!(step, Step::Wait(_)));
        assert_eq!(
            fx.syncs,
            vec![(
                a.clone(),
                SyncResult {
                    error: 0,
                    protocol_type: Some("consumer".into()),
                    protocol: Some("range".into()),
                    assignment: vec![9]
                }
            )]
        );
        assert!(fx.persist);
        assert_eq!(g.state, State::Stable);
        assert_eq!(g.heartbeat(&a, None, 1, 1_000), code::NONE);
        assert_eq!(g.heartbeat(&a, None, 0, 1_000), code::ILLEGAL_GENERATION);
        assert_eq!(
            g.heartbeat("nobody", None, 1, 1_000),
            code::UNKNOWN_MEMBER_ID
        );
    }

    #[test]
    fn second_member_triggers_rebalance_and_both_rejoin() {
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, 0);
        g.sync(&a, None, 1, None, None, vec![]);
        let (b, fx) = join_new(&mut g, 100);
        assert!(
            fx.joins.is_empty(),
            "waits for the existing member to rejoin"
        );
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(g.heartbeat(&a, None, 1, 200), code::REBALANCE_IN_PROGRESS);
        let (_, fx) = g.join(req(&a, None, "range"), &NO_DELAY, 300);
        assert_eq!(fx.joins.len(), 2);
        assert!(fx
            .joins
            .iter()
            .all(|(_, r)| r.generation == 2 && r.leader == a));
        let leader_view = fx.joins.iter().find(|(id, _)| *id == a).unwrap();
        assert_eq!(leader_view.1.members.len(), 2);
        let follower_view = fx.joins.iter().find(|(id, _)| *id == b).unwrap();
        assert!(follower_view.1.members.is_empty());
        // The follower's sync waits for the leader's.
        let (step, fx) = g.sync(&b, None, 2, None, None, vec![]);
        assert!(matches!(step, Step::Wait(_)) && fx.syncs.is_empty());
        let (_, fx) = g.sync(
            &a,
            None,
            2,
            None,
            None,
            vec![(a.clone(), vec![1]), (b.clone(), vec![2])],
        );
        let got: HashMap<_, _> = fx
            .syncs
            .into_iter()
            .map(|(id, r)| (id, r.assignment))
            .collect();
        assert_eq!(got[&b], vec![2]);
    }

    #[test]
    fn member_that_misses_the_rebalance_is_removed_at_the_deadline() {
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, 0);
        g.sync(&a, None, 1, None, None, vec![]);
        let (b, _) = join_new(&mut g, 1_000);
        // a keeps heartbeating but never rejoins: after the rebalance
        // timeout (30 s) b goes on alone.
        for t in [5_000, 14_000, 22_000] {
            assert_eq!(g.heartbeat(&a, None, 1, t), code::REBALANCE_IN_PROGRESS);
            assert!(g.tick(&NO_DELAY, t + 1).joins.is_empty());
        }
        let fx = g.tick(&NO_DELAY, 31_001);
        assert_eq!(fx.joins.len(), 1);
        assert_eq!(fx.joins[0].0, b);
        assert_eq!(fx.joins[0].1.leader, b);
        assert!(!g.members.contains_key(&a));
    }

    #[test]
    fn expired_session_rebalances_and_last_leave_empties() {
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, 0);
        g.sync(&a, None, 1, None, None, vec![]);
        let fx = g.tick(&NO_DELAY, 10_001);
        assert!(fx.persist);
        assert_eq!(g.state, State::Empty);
        assert_eq!(g.generation, 2);
        assert_eq!(g.empty_since_ms, Some(10_001));
        let (b, _) = join_new(&mut g, 20_000);
        assert_eq!(g.generation, 3);
        let (err, fx) = g.leave(&b, None, &NO_DELAY, 20_001);
        assert_eq!(err, 0);
        assert!(fx.persist && g.state == State::Empty);
        assert_eq!(
            g.leave(&b, None, &NO_DELAY, 20_002).0,
            code::UNKNOWN_MEMBER_ID
        );
    }

    /// A join request offering `protocols` as (name, metadata).
    fn preq(member: &str, instance: Option<&str>, protocols: &[(&str, &[u8])]) -> JoinRequest {
        JoinRequest {
            protocols: protocols
                .iter()
                .map(|(n, m)| (n.to_string(), m.to_vec()))
                .collect(),
            ..req(member, instance, "unused")
        }
    }

    /// A stable generation-1 group of these members, who joined together
    /// within the initial delay; the first is the leader and member i is
    /// assigned `[i]`. Returns the member ids in join order.
    fn stable_group(reqs: Vec<JoinRequest>) -> (Group, Vec<String>) {
        let limits = Limits {
            initial_rebalance_delay_ms: 1_000,
            ..NO_DELAY
        };
        let mut g = Group::new("g");
        let mut ids = Vec::new();
        for mut r in reqs {
            r.require_known_member_id = false;
            let (Step::Wait(id), _) = g.join(r, &limits, 0) else {
                panic!("joins wait for the initial delay")
            };
            ids.push(id);
        }
        let fx = g.tick(&limits, 1_000);
        assert_eq!(fx.joins.len(), ids.len());
        assert_eq!(g.leader.as_ref(), Some(&ids[0]));
        let assignments = ids
            .iter()
            .enumerate()
            .map(|(i, id)| (id.clone(), vec![i as u8]))
            .collect();
        let inst = g.members[&ids[0]].rec.instance_id.clone();
        g.sync(&ids[0], inst.as_deref(), 1, None, None, assignments);
        assert_eq!((g.state, g.generation), (State::Stable, 1));
        (g, ids)
    }

    /// Rejoins `instance` as a new process (empty member id) at `now`.
    fn rejoin_static(
        g: &mut Group,
        instance: &str,
        protocols: &[(&str, &[u8])],
        skip_support: bool,
        now: u64,
    ) -> (Step<JoinResult>, Effects) {
        let r = JoinRequest {
            supports_skip_assignment: skip_support,
            ..preq("", Some(instance), protocols)
        };
        g.join(r, &NO_DELAY, now)
    }

    #[test]
    fn static_leader_returns_to_a_stable_group_without_rebalance() {
        // librdkafka (JoinGroup v5): the new process's subscription metadata
        // differs from its predecessor's (no owned partitions yet).
        let (mut g, ids) = stable_group(vec![
            preq("", Some("s"), &[("range", b"owned:0")]),
            preq("", None, &[("range", b"")]),
        ]);
        let (old, b) = (ids[0].clone(), ids[1].clone());
        let (step, fx) = rejoin_static(&mut g, "s", &[("range", b"")], false, 2_000);
        let Step::Now(r) = step else {
            panic!("a returning static leader must not rebalance a stable group")
        };
        assert!(
            fx.persist,
            "the new member id is made durable before the answer"
        );
        assert!(fx.joins.is_empty() && fx.syncs.is_empty());
        assert_ne!(r.member_id, old);
        // Told the old leader id, the new process syncs as a follower
        // instead of computing an assignment nobody would receive.
        assert_eq!(
            (r.error, r.generation, r.leader.as_str(), r.members.len()),
            (code::NONE, 1, old.as_str(), 0)
        );
        assert!(!r.skip_assignment);
        assert_eq!((g.state, g.generation), (State::Stable, 1));
        assert_eq!(g.leader.as_ref(), Some(&r.member_id), "it still leads");
        // The other member carries on in its generation.
        assert_eq!(g.heartbeat(&b, None, 1, 2_100), code::NONE);
        assert_eq!(
            g.heartbeat(&old, Some("s"), 1, 2_100),
            code::FENCED_INSTANCE_ID
        );
        let Step::Now(sr) = g.sync(&r.member_id, Some("s"), 1, None, None, vec![]).0 else {
            panic!("a stable group answers SyncGroup at once")
        };
        assert_eq!(sr.assignment, vec![0], "it resumes its assignment");
        assert_eq!(g.heartbeat(&r.member_id, Some("s"), 1, 2_200), code::NONE);
        let rec = g.record();
        assert!(rec
            .members
            .iter()
            .any(|m| m.id == r.member_id && m.assignment == vec![0]));
        assert!(!rec.members.iter().any(|m| m.id == old));
    }

    #[test]
    fn static_replacement_keeps_client_id_and_takes_new_timeouts() {
        let (mut g, ids) = stable_group(vec![
            preq("", Some("s"), &[("range", b"")]),
            preq("", None, &[("range", b"")]),
        ]);
        let mut r = preq("", Some("s"), &[("range", b"")]);
        r.client_id = "new-process".into();
        r.client_host = "/10.0.0.9".into();
        r.session_timeout_ms = 20_000;
        let (Step::Now(res), _) = g.join(r, &NO_DELAY, 2_000) else {
            panic!()
        };
        assert_ne!(res.member_id, ids[0]);
        let m = &g.members[&res.member_id].rec;
        assert_eq!(
            (m.client_id.as_str(), m.client_host.as_str()),
            ("c", "/127.0.0.1")
        );
        assert_eq!(m.session_timeout_ms, 20_000);
        assert_eq!(g.members[&res.member_id].deadline_ms, 22_000);
    }

    #[test]
    fn static_leader_that_can_skip_assignment_is_told_it_leads() {
        // JoinGroup v9+ (KIP-814): the leader learns the members but skips
        // the assignment; its SyncGroup gets the stored assignment back.
        let (mut g, ids) = stable_group(vec![
            preq("", Some("s"), &[("range", b"")]),
            preq("", None, &[("range", b"")]),
        ]);
        let (step, _) = rejoin_static(&mut g, "s", &[("range", b"")], true, 2_000);
        let Step::Now(r) = step else { panic!() };
        assert_eq!(r.leader, r.member_id);
        assert!(r.skip_assignment);
        let mut listed: Vec<&String> = r.members.iter().map(|m| &m.0).collect();
        listed.sort();
        let mut expect = vec![&r.member_id, &ids[1]];
        expect.sort();
        assert_eq!(listed, expect);
        let bogus = vec![(ids[1].clone(), vec![9])];
        let Step::Now(sr) = g.sync(&r.member_id, Some("s"), 1, None, None, bogus).0 else {
            panic!()
        };
        assert_eq!(sr.assignment, vec![0]);
        assert_eq!(
            g.members[&ids[1]].rec.assignment,
            vec![1],
            "a stable group keeps its assignment"
        );
        assert_eq!(g.heartbeat(&ids[1], None, 1, 2_100), code::NONE);
    }

    #[test]
    fn static_member_whose_protocols_change_the_selection_rebalances() {
        let (mut g, ids) = stable_group(vec![
            preq("", None, &[("roundrobin", b""), ("range", b"")]),
            preq("", None, &[("range", b""), ("roundrobin", b"")]),
            preq("", Some("s"), &[("range", b""), ("roundrobin", b"")]),
        ]);
        assert_eq!(g.protocol.as_deref(), Some("range"));
        // Preferring roundrobin now tips the vote: the group must rebalance.
        let (step, _) = rejoin_static(
            &mut g,
            "s",
            &[("roundrobin", b""), ("range", b"")],
            false,
            2_000,
        );
        assert!(matches!(step, Step::Wait(_)));
        assert_eq!(g.state, State::PreparingRebalance);
        assert_eq!(
            g.heartbeat(&ids[1], None, 1, 2_100),
            code::REBALANCE_IN_PROGRESS
        );
    }

    #[test]
    fn static_member_replaced_while_completing_rebalance_rebalances_again() {
        let mut g = Group::new("g");
        let (step, fx) = g.join(req("", Some("s"), "range"), &NO_DELAY, 0);
        assert!(
            matches!(step, Step::Wait(_)),
            "static members skip MEMBER_ID_REQUIRED"
        );
        let old = fx.joins[0].0.clone();
        // The leader's assignment may already name the old id: rebalance.
        assert_eq!(g.state, State::CompletingRebalance);
        let (step, _) = g.join(req("", Some("s"), "range"), &NO_DELAY, 10);
        let Step::Wait(new) = step else { panic!() };
        assert_ne!(new, old);
        assert_eq!(
            g.generation, 2,
            "the only member rejoined: generation 2 completes"
        );
        assert_eq!(g.state, State::CompletingRebalance);
        let Step::Now(sr) = g.sync(&old, Some("s"), 2, None, None, vec![]).0 else {
            panic!()
        };
        assert_eq!(sr.error, code::FENCED_INSTANCE_ID);
    }

    #[test]
    fn static_follower_restart_keeps_its_assignment() {
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, 0);
        g.sync(&a, None, 1, None, None, vec![]);
        let (_, fx) = g.join(req("", Some("s"), "range"), &NO_DELAY, 10);
        assert!(fx.joins.is_empty());
        let (_, fx) = g.join(req(&a, None, "range"), &NO_DELAY, 20);
        let s = fx.joins.iter().find(|(id, _)| *id != a).unwrap().0.clone();
        g.sync(
            &a,
            None,
            2,
            None,
            None,
            vec![(a.clone(), vec![1]), (s.clone(), vec![2])],
        );
        // Its subscription metadata differs (no owned partitions yet); only
        // the selected protocol matters.
        let (step, fx) = rejoin_static(&mut g, "s", &[("range", b"fresh")], false, 30);
        let Step::Now(r) = step else {
            panic!("a returning static follower is answered at once")
        };
        assert_eq!(r.leader, a);
        assert_eq!(g.heartbeat(&a, None, 2, 40), code::NONE);
        assert_eq!((r.error, r.generation), (0, 2));
        assert!(fx.persist);
        let (step, _) = g.sync(&r.member_id, Some("s"), 2, None, None, vec![]);
        let Step::Now(sr) = step else { panic!() };
        assert_eq!(sr.assignment, vec![2]);
        assert_eq!(g.state, State::Stable);
    }

    #[test]
    fn inconsistent_protocols_and_bad_session_timeouts_are_refused() {
        let mut g = Group::new("g");
        join_new(&mut g, 0);
        let (step, _) = g.join(req("", None, "roundrobin"), &NO_DELAY, 1);
        let Step::Now(r) = step else { panic!() };
        assert_eq!(r.error, code::INCONSISTENT_GROUP_PROTOCOL);
        let mut bad = req("", None, "range");
        bad.session_timeout_ms = 10;
        let Step::Now(r) = g.join(bad, &NO_DELAY, 1).0 else {
            panic!()
        };
        assert_eq!(r.error, code::INVALID_SESSION_TIMEOUT);
    }

    #[test]
    fn protocol_is_the_common_one_most_members_prefer() {
        let mut g = Group::new("g");
        for (i, prefs) in [
            ["cooperative-sticky", "range"],
            ["range", "cooperative-sticky"],
            ["cooperative-sticky", "range"],
        ]
        .iter()
        .enumerate()
        {
            let mut r = req(&format!("m{i}"), None, "x");
            r.protocols = prefs.iter().map(|p| (p.to_string(), vec![])).collect();
            g.members.insert(
                r.member_id.clone(),
                Member {
                    rec: MemberRecord {
                        id: r.member_id.clone(),
                        instance_id: None,
                        client_id: String::new(),
                        client_host: String::new(),
                        session_timeout_ms: 10_000,
                        rebalance_timeout_ms: 10_000,
                        protocols: r.protocols,
                        assignment: vec![],
                    },
                    deadline_ms: 0,
                    awaiting_join: true,
                    awaiting_sync: false,
                },
            );
        }
        assert_eq!(g.select_protocol().as_deref(), Some("cooperative-sticky"));
        g.members.get_mut("m0").unwrap().rec.protocols.remove(0);
        assert_eq!(
            g.select_protocol().as_deref(),
            Some("range"),
            "only common protocols count"
        );
    }

    #[test]
    fn initial_delay_holds_the_first_rebalance() {
        let limits = Limits {
            initial_rebalance_delay_ms: 3_000,
            ..NO_DELAY
        };
        let mut g = Group::new("g");
        let mut r = req("", None, "range");
        r.require_known_member_id = false;
        let (_, fx) = g.join(r, &limits, 0);
        assert!(fx.joins.is_empty());
        assert!(g.tick(&limits, 2_999).joins.is_empty());
        assert_eq!(g.tick(&limits, 3_000).joins.len(), 1);
    }

    #[test]
    fn load_resumes_a_stable_group_with_fresh_sessions() {
        let mut g = Group::new("g");
        let (a, _) = join_new(&mut g, 0);
        g.sync(&a, None, 1, None, None, vec![(a.clone(), vec![5])]);
        let mut loaded = Group::load("g", g.record(), 1_000_000);
        assert_eq!(loaded.state, State::Stable);
        assert_eq!(loaded.heartbeat(&a, None, 1, 1_000_001), code::NONE);
        let Step::Now(s) = loaded.sync(&a, None, 1, None, None, vec![]).0 else {
            panic!()
        };
        assert_eq!(s.assignment, vec![5]);
    }
}
