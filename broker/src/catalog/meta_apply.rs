//! How the catalog's controller commands change the global `__meta`, and
//! how a merged peer delta changes the catalog: mirror topics are created,
//! grown, reconfigured and deleted here, from the topic's global entry, at
//! the same log position on every broker of the region.

use std::collections::BTreeMap;

use chronik_metadata_sync::{
    Delta, Effect, Entry, Key, OffsetValue, RegionId, Summary, TopicDef, TopicId, UpdateError,
};
use kafka_protocol::error::ResponseError as E;
use rocksdb::WriteBatch;
use uuid::Uuid;

use super::{Catalog, PostApply, Topic, TopicError, TopicRecord, TOPIC_PREFIX};
use crate::configs::{
    ConfigValueError, HOME_REGION, MIRROR_REGIONS, MIRROR_SOURCE_TOPIC_ID, RPO_ENFORCE,
};
use crate::global_meta::GlobalMeta;
use crate::groups::record::{self as groups, OffsetRecord};
use crate::log::PartitionLog;
use crate::storage::CF_META;

/// Configs that describe this region's copy, not the topic: they never
/// enter the global definition.
const REGIONAL_CONFIGS: [&str; 2] = [HOME_REGION, MIRROR_SOURCE_TOPIC_ID];

pub(super) fn topic_id(id: &Uuid) -> TopicId {
    TopicId(*id.as_bytes())
}

pub(super) fn wall(ms: i64) -> u64 {
    ms.max(0) as u64
}

/// The global definition of a local topic record.
pub(super) fn definition(record: &TopicRecord) -> TopicDef {
    let rf = record.replicas.first().map_or(1, |r| r.len().max(1)) as i32;
    let mut def = TopicDef::new(&record.name, record.partitions.len() as i32, rf);
    def.configs = record
        .configs
        .iter()
        .filter(|(k, _)| !REGIONAL_CONFIGS.contains(&k.as_str()))
        .map(|(k, v)| (k.clone(), v.clone()))
        .collect();
    def
}

pub(super) fn update_error(e: UpdateError) -> TopicError {
    let code = match &e {
        UpdateError::NameTaken { .. } => E::TopicAlreadyExists.code(),
        UpdateError::NotFound(_) => E::UnknownTopicOrPartition.code(),
        _ => E::PolicyViolation.code(),
    };
    TopicError::Rejected {
        code,
        message: format!("global metadata: {e}"),
    }
}

/// Does `region` keep a copy of a topic homed in `home`? The same rule as
/// the dc-link's policy: `chronik.mirror.regions` unset or `*` means every
/// other region of the topology.
pub(super) fn mirrored_in(
    def: &TopicDef,
    home: &str,
    region: &RegionId,
    regions: &[RegionId],
) -> bool {
    if home == region.as_str() {
        return false;
    }
    match def.configs.get(MIRROR_REGIONS).map(|s| s.trim()) {
        None | Some("*") => regions.contains(region),
        Some(list) => list.split(',').map(str::trim).any(|r| r == region.as_str()),
    }
}

/// A topic's configs as a mirror of `home` holds them: the home region,
/// and which home topic (by id) it copies.
pub(super) fn mirror_configs(
    mut configs: BTreeMap<String, String>,
    home: &str,
    id: &Uuid,
) -> BTreeMap<String, String> {
    configs.insert(HOME_REGION.to_string(), home.to_string());
    configs.insert(MIRROR_SOURCE_TOPIC_ID.to_string(), id.to_string());
    configs
}

impl Catalog {
    fn is_home_here(&self, record: &TopicRecord) -> bool {
        record
            .configs
            .get(HOME_REGION)
            .is_none_or(|h| h.is_empty() || *h == self.region.name)
    }

    /// Whether a topic homed here has a copy in another region (its
    /// deletion then waits for the dc-link to drain it).
    pub(crate) fn mirrored_elsewhere(&self, record: &TopicRecord) -> bool {
        if !self.is_home_here(record) {
            return false;
        }
        let rep = self.global.read();
        let Some(def) = rep
            .get(&Key::Topic(topic_id(&record.id)))
            .and_then(Entry::topic_def)
        else {
            return false;
        };
        let here = self.global.region();
        let regions: Vec<RegionId> = rep.regions().cloned().collect();
        regions
            .iter()
            .any(|r| mirrored_in(&def, here.as_str(), r, &regions))
    }

    /// `chronik.rpo.enforce=true` holds the RPO against the mirror regions:
    /// a topic with none is refused (there is nothing to wait for).
    pub(super) fn check_rpo(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        if !configs
            .get(RPO_ENFORCE)
            .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        {
            return Ok(());
        }
        let here = self.global.region();
        let home = configs
            .get(HOME_REGION)
            .map(|h| h.trim())
            .filter(|h| !h.is_empty())
            .unwrap_or(here.as_str())
            .to_string();
        let regions: Vec<String> = self
            .global
            .read()
            .regions()
            .map(|r| r.to_string())
            .collect();
        let mirrors: Vec<String> = match configs.get(MIRROR_REGIONS).map(|s| s.trim()) {
            None | Some("*") => regions.iter().filter(|r| **r != home).cloned().collect(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|r| !r.is_empty() && *r != home)
                .map(String::from)
                .collect(),
        };
        if mirrors.is_empty() {
            return Err(ConfigValueError::Invalid {
                name: RPO_ENFORCE.into(),
                value: "true".into(),
                reason: format!(
                    "topic {name} has no mirror region to hold its RPO against (chronik.mirror.regions={:?}; regions of the topology: {})",
                    configs.get(MIRROR_REGIONS).map(String::as_str).unwrap_or("*"),
                    if regions.is_empty() { "none known: is the dc-link running?".to_string() } else { regions.join(", ") }
                ),
            }
            .into());
        }
        Ok(())
    }

    /// CreateTopics: refuses a name another region's topic already holds
    /// (topic names are global), before anything is proposed.
    pub(super) fn check_global_name(
        &self,
        name: &str,
        configs: &BTreeMap<String, String>,
    ) -> Result<(), TopicError> {
        if configs
            .get(HOME_REGION)
            .is_some_and(|h| !h.is_empty() && *h != self.region.name)
        {
            return Ok(());
        }
        let rep = self.global.read();
        match rep.topic_by_name(name) {
            Some(id) => {
                let home = rep
                    .home(&id)
                    .map(|h| h.home)
                    .unwrap_or_else(|| "another region".into());
                Err(TopicError::AlreadyExists(format!(
                    "{name} (it exists in the global metadata, homed in {home})"
                )))
            }
            None => Ok(()),
        }
    }

    /// A topic created here is homed here: its definition and its home
    /// (epoch 1) become global entries. Mirrors created by hand (home set to
    /// another region) stay regional.
    pub(super) fn global_created(
        &self,
        record: &TopicRecord,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<(), TopicError> {
        if !self.is_home_here(record) {
            return Ok(());
        }
        let id = topic_id(&record.id);
        let mut rep = self.global.write();
        rep.put_topic(id, definition(record), wall(now_ms))
            .map_err(update_error)?;
        let home = self.global.region().clone();
        rep.set_home(id, &home, 1, wall(now_ms))
            .map_err(update_error)?;
        self.global.save(&self.store, &mut rep, wb);
        Ok(())
    }

    /// A topic's definition changed here (configs from any region; the
    /// partition count only at home, where the data is written).
    pub(super) fn global_changed(
        &self,
        record: &TopicRecord,
        partitions_changed: bool,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<(), TopicError> {
        let id = topic_id(&record.id);
        let mut rep = self.global.write();
        let Some(old) = rep.get(&Key::Topic(id)).and_then(Entry::topic_def) else {
            return Ok(());
        };
        let mut def = definition(record);
        // The global entry keeps asking for the name it asks for; a rename
        // is the merge's business, never a config change's.
        def.name = old.name.clone();
        if partitions_changed && !self.is_home_here(record) {
            def.partitions = old.partitions;
        }
        if def.configs == old.configs && def.partitions == old.partitions {
            return Ok(());
        }
        rep.put_topic(id, def, wall(now_ms)).map_err(update_error)?;
        self.global.save(&self.store, &mut rep, wb);
        Ok(())
    }

    /// DeleteTopics at home deletes the topic everywhere; deleting a mirror
    /// removes only this region's copy.
    pub(super) fn global_deleted(
        &self,
        topic: &Topic,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<(), TopicError> {
        if !self.is_home_here(&topic.record) {
            return Ok(());
        }
        let id = topic_id(&topic.record.id);
        let mut rep = self.global.write();
        if rep.get(&Key::Topic(id)).is_none_or(Entry::is_tombstone) {
            return Ok(());
        }
        rep.delete_topic(id, wall(now_ms)).map_err(update_error)?;
        collect_if_alone(&mut rep);
        self.global.save(&self.store, &mut rep, wb);
        Ok(())
    }

    /// Committed offsets become global entries (a failed global write never
    /// fails the commit: the regional record is what the coordinator serves).
    pub(super) fn global_offsets(
        &self,
        group: &str,
        offsets: &[(String, i32, OffsetRecord)],
        wb: &mut WriteBatch,
    ) {
        let mut rep = self.global.write();
        for (t, p, r) in offsets {
            if r.offset < 0 {
                continue;
            }
            let v = self.offset_value(t, r);
            if let Err(e) = rep.commit_offset(group, t, *p, v, wall(r.commit_ms)) {
                tracing::warn!(group, topic = %t, partition = p, error = %e, "committed offset not made global");
            }
        }
        self.global.save(&self.store, &mut rep, wb);
    }

    /// A regional offset record as a global entry's value, naming the
    /// topic's id (so a renamed topic's offsets can be told apart).
    pub(super) fn offset_value(&self, topic: &str, r: &OffsetRecord) -> OffsetValue {
        OffsetValue {
            offset: r.offset,
            leader_epoch: r.leader_epoch,
            metadata: r.metadata.clone(),
            commit_ms: r.commit_ms,
            topic_id: self
                .get(topic)
                .map(|t| bytes::Bytes::copy_from_slice(t.id().as_bytes()))
                .unwrap_or_default(),
            committed_in: String::new(),
        }
    }

    /// Writes (or with `None` deletes) a group's regional offset record.
    pub(super) fn put_offset_record(
        &self,
        wb: &mut WriteBatch,
        (group, topic, partition): (&str, &str, i32),
        record: Option<&OffsetRecord>,
    ) {
        let key = groups::offset_key(group, topic, partition);
        let meta = self.store.cf(CF_META);
        match record {
            Some(r) => wb.put_cf(meta, key, serde_json::to_vec(r).expect("serializes")),
            None => wb.delete_cf(meta, key),
        }
    }

    /// OffsetDelete and DeleteGroups: the offsets go everywhere.
    pub(super) fn global_offsets_deleted(
        &self,
        group: &str,
        partitions: Option<&[(String, i32)]>,
        now_ms: i64,
        wb: &mut WriteBatch,
    ) {
        let mut rep = self.global.write();
        let keys: Vec<Key> = match partitions {
            Some(ps) => ps
                .iter()
                .map(|(t, p)| Key::group_offset(group, t, *p))
                .collect(),
            None => rep
                .entries()
                .filter(|e| matches!(&e.key, Key::GroupOffset { group: g, .. } if g == group))
                .map(|e| e.key.clone())
                .collect(),
        };
        for key in keys {
            if rep.get(&key).is_none_or(Entry::is_tombstone) {
                continue;
            }
            if let Key::GroupOffset {
                group,
                topic,
                partition,
            } = &key
            {
                if let Err(e) = rep.delete_offset(group, topic, *partition, wall(now_ms)) {
                    tracing::warn!(group, topic, partition, error = %e, "offset deletion not made global");
                }
            }
        }
        collect_if_alone(&mut rep);
        self.global.save(&self.store, &mut rep, wb);
    }

    pub(super) fn apply_meta_regions(&self, regions: &[String], wb: &mut WriteBatch) {
        let mut rep = self.global.write();
        GlobalMeta::set_regions(&self.store, &mut rep, regions, wb);
        self.global.save(&self.store, &mut rep, wb);
    }

    pub(super) fn apply_peer_summary(
        &self,
        summary: &[u8],
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let mut rep = self.global.write();
        let s = Summary::decode(summary, rep.limits()).map_err(merge_error)?;
        rep.record_summary(&s).map_err(merge_error)?;
        let gone = rep.collect_garbage();
        if !gone.is_empty() {
            tracing::info!(tombstones = gone.len(), peer = %s.region, "global metadata: tombstones collected");
        }
        self.global.save(&self.store, &mut rep, wb);
        Ok(PostApply::Nothing)
    }

    pub(super) fn apply_meta_reconcile(
        &self,
        id: &Uuid,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let rep = self.global.read();
        Ok(self
            .reconcile_one(&rep, topic_id(id), wb)?
            .unwrap_or(PostApply::Nothing))
    }

    /// Merges a peer's delta, then brings this region's catalog and group
    /// offsets in line with every entry that changed.
    pub(super) fn apply_meta_merge(
        &self,
        delta: &[u8],
        wall_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let mut rep = self.global.write();
        let merged = Delta::decode(delta, rep.limits())
            .map_err(merge_error)
            .and_then(|d| rep.apply_delta(d, wall(wall_ms)).map_err(merge_error));
        let report = match merged {
            Ok(r) => r,
            Err(e) => {
                // The refusal is counted; nothing of the delta is kept.
                self.global.save(&self.store, &mut rep, wb);
                return Err(e);
            }
        };
        self.global.save(&self.store, &mut rep, wb);
        for c in &report.conflicts {
            tracing::warn!(key = %c.key, kind = ?c.kind, kept = %c.kept.origin, lost = %c.lost.origin, "global metadata conflict resolved");
        }
        let mut topics: Vec<TopicId> = Vec::new();
        let mut offsets = Vec::new();
        for key in &report.changed {
            match key {
                Key::Topic(id) | Key::TopicHome(id) if !topics.contains(id) => topics.push(*id),
                _ => {}
            }
        }
        for fx in &report.effects {
            match fx {
                Effect::RenameTopic { id, .. } if !topics.contains(id) => topics.push(*id),
                Effect::HomeChanged { id, .. } if !topics.contains(id) => topics.push(*id),
                Effect::OffsetCommitted {
                    group,
                    topic,
                    partition,
                    value,
                } => {
                    self.put_offset_record(
                        wb,
                        (group, topic, *partition),
                        value.as_ref().map(OffsetRecord::from).as_ref(),
                    );
                    offsets.push((group.clone(), topic.clone(), *partition));
                }
                _ => {}
            }
        }
        // Topics this region already holds first: a rename frees a name
        // that a mirror created in the same step may take.
        let (held, new): (Vec<TopicId>, Vec<TopicId>) = topics
            .into_iter()
            .partition(|id| self.get_by_id(&Uuid::from_bytes(id.0)).is_some());
        // Topics homed here that a name conflict renames: their committed
        // offsets move with them (below).
        let here = self.global.region().as_str();
        let renaming: Vec<(String, String, Uuid)> = held
            .iter()
            .filter_map(|id| {
                let uuid = Uuid::from_bytes(id.0);
                let local = self.get_by_id(&uuid)?;
                let name = rep.topic_name(id)?;
                (local.name() != name && rep.home(id)?.home == here)
                    .then(|| (local.name().to_string(), name.to_string(), uuid))
            })
            .collect();
        let mut posts = Vec::new();
        let mut freed = Vec::new();
        for id in held.into_iter().chain(new) {
            if let Some(p) = self.reconcile(&rep, id, &mut freed, wb)? {
                posts.push(p);
            }
        }
        for (from, to, id) in renaming.iter().filter(|(from, ..)| freed.contains(from)) {
            self.rename_offsets(&mut rep, from, to, id, wall(wall_ms), wb, &mut offsets);
        }
        if !offsets.is_empty() {
            posts.push(PostApply::RemoteOffsets(offsets));
        }
        Ok(PostApply::Many(posts))
    }

    /// A topic homed here was renamed by a name conflict: the offsets its
    /// groups committed (those that name its topic id) move to the new
    /// name, globally and in this region, so the groups resume where they
    /// were instead of inside the other topic's records under the old name.
    #[allow(clippy::too_many_arguments)]
    fn rename_offsets(
        &self,
        rep: &mut chronik_metadata_sync::Replica,
        from: &str,
        to: &str,
        id: &Uuid,
        wall_ms: u64,
        wb: &mut WriteBatch,
        touched: &mut Vec<(String, String, i32)>,
    ) {
        let moving: Vec<(String, i32, OffsetValue)> = rep
            .entries()
            .filter_map(|e| match &e.key {
                Key::GroupOffset {
                    group,
                    topic,
                    partition,
                } if topic == from => Some((group.clone(), *partition, e.offset()?)),
                _ => None,
            })
            .filter(|(.., v)| v.topic_id.as_ref() == id.as_bytes())
            .collect();
        for (group, partition, v) in moving {
            let record = OffsetRecord::from(&v);
            let moved = rep
                .commit_offset(&group, to, partition, v, wall_ms)
                .and_then(|_| rep.delete_offset(&group, from, partition, wall_ms));
            if let Err(e) = moved {
                tracing::warn!(group, topic = from, to, partition, error = %e, "committed offset not moved with its renamed topic");
                continue;
            }
            tracing::info!(
                group,
                topic = from,
                to,
                partition,
                offset = record.offset,
                "committed offset moved with its renamed topic"
            );
            self.put_offset_record(wb, (&group, to, partition), Some(&record));
            self.put_offset_record(wb, (&group, from, partition), None);
            touched.push((group.clone(), to.to_string(), partition));
            touched.push((group, from.to_string(), partition));
        }
        self.global.save(&self.store, rep, wb);
    }

    /// [`Self::reconcile`] of one topic on its own.
    pub(super) fn reconcile_one(
        &self,
        rep: &chronik_metadata_sync::Replica,
        id: TopicId,
        wb: &mut WriteBatch,
    ) -> Result<Option<PostApply>, TopicError> {
        self.reconcile(rep, id, &mut Vec::new(), wb)
    }

    /// Makes this region's copy of topic `id` match its global entry.
    /// `freed`: names that topics reconciled earlier in this step gave up.
    fn reconcile(
        &self,
        rep: &chronik_metadata_sync::Replica,
        id: TopicId,
        freed: &mut Vec<String>,
        wb: &mut WriteBatch,
    ) -> Result<Option<PostApply>, TopicError> {
        let uuid = Uuid::from_bytes(id.0);
        let local = self.get_by_id(&uuid);
        let def = rep.get(&Key::Topic(id)).and_then(Entry::topic_def);
        let deleted = rep.get(&Key::Topic(id)).is_some_and(Entry::is_tombstone);
        if deleted {
            let Some(topic) = local else { return Ok(None) };
            // What this broker held of each partition when it went: after a
            // drained deletion, the home's final log ends.
            let log_ends: Vec<i64> = topic
                .partitions
                .iter()
                .map(|p| p.log_end_offset())
                .collect();
            tracing::info!(
                topic = topic.name(),
                ?log_ends,
                "global metadata: topic deleted at home; deleting this region's copy"
            );
            wb.delete_cf(
                self.store.cf(CF_META),
                format!("{TOPIC_PREFIX}{}", topic.name()),
            );
            self.forget_settlement(&topic.id(), wb);
            for p in &topic.partitions {
                p.delete_into(wb);
            }
            return Ok(Some(PostApply::Remove(topic)));
        }
        let (Some(def), Some(name), Some(home)) = (def, rep.topic_name(&id), rep.home(&id)) else {
            // The rest of the topic's entries have not arrived yet.
            return Ok(None);
        };
        let here = self.global.region();
        let regions: Vec<RegionId> = rep.regions().cloned().collect();
        let is_home = home.home == here.as_str();
        let configs = if is_home {
            def.configs.clone()
        } else {
            mirror_configs(def.configs.clone(), &home.home, &uuid)
        };
        let configs = Self::validate_configs(&configs)?;
        let Some(topic) = local else {
            if !mirrored_in(&def, &home.home, here, &regions) {
                return Ok(None);
            }
            if let Some(other) = self.get(name).filter(|_| !freed.iter().any(|f| f == name)) {
                tracing::warn!(topic = name, local_id = %other.id(), global_id = %uuid, "global metadata: a regional topic holds this name; the mirror is not created");
                return Ok(None);
            }
            let n = self.active_brokers().len() as i32;
            let rf = def.replication_factor.clamp(1, n.max(1)) as i16;
            let replicas = self.assign(&uuid, 0, def.partitions as usize, rf);
            let log_ids = self.alloc_log_ids(replicas.len(), wb);
            for lid in &log_ids {
                PartitionLog::init_record(&self.store, wb, *lid);
            }
            let record = TopicRecord {
                name: name.to_string(),
                id: uuid,
                partitions: log_ids,
                replicas,
                configs,
                created_ms: def.created_ms as i64,
                version: 1,
                reassigning: BTreeMap::new(),
                deleting_since_ms: None,
                moving: None,
            };
            tracing::info!(topic = name, home = %home.home, partitions = def.partitions, "global metadata: creating the mirror topic");
            self.put_record(wb, &record);
            return Ok(Some(PostApply::Install(record)));
        };
        let mut record = topic.record.clone();
        let mut changed = false;
        if record.name != name {
            // A name conflict was resolved against this topic: renamed in
            // place (a catalog change; the partition logs stay as they are).
            if self.get(name).is_some_and(|t| t.id() != uuid) && !freed.iter().any(|f| f == name) {
                tracing::warn!(
                    topic = record.name,
                    to = name,
                    "global metadata: cannot rename, a regional topic holds the new name"
                );
            } else {
                tracing::warn!(from = record.name, to = name, id = %uuid, "global metadata: topic renamed by a name conflict");
                wb.delete_cf(
                    self.store.cf(CF_META),
                    format!("{TOPIC_PREFIX}{}", record.name),
                );
                freed.push(record.name.clone());
                record.name = name.to_string();
                changed = true;
            }
        }
        if record.configs != configs {
            record.configs = configs;
            changed = true;
        }
        let have = record.partitions.len() as i32;
        if def.partitions > have {
            let rf = topic.replicas(0).len().max(1) as i16;
            let more = self.assign(&uuid, have as usize, (def.partitions - have) as usize, rf);
            let ids = self.alloc_log_ids(more.len(), wb);
            for lid in &ids {
                PartitionLog::init_record(&self.store, wb, *lid);
            }
            if record.replicas.is_empty() {
                record.replicas = (0..have).map(|i| topic.replicas(i)).collect();
            }
            record.partitions.extend(ids);
            record.replicas.extend(more);
            changed = true;
        }
        if !changed {
            return Ok(None);
        }
        tracing::info!(
            topic = record.name,
            partitions = record.partitions.len(),
            "global metadata: topic definition changed"
        );
        record.version += 1;
        self.put_record(wb, &record);
        Ok(Some(PostApply::Install(record)))
    }
}

/// A region with no peers (no dc-link told it of any) has nobody to wait
/// for: its tombstones go at once, or they would pile up to the bound and
/// then refuse deletes.
fn collect_if_alone(rep: &mut chronik_metadata_sync::Replica) {
    if rep.regions().count() == 1 {
        rep.collect_garbage();
    }
}

fn merge_error(e: chronik_metadata_sync::MergeError) -> TopicError {
    TopicError::Rejected {
        code: E::InvalidRequest.code(),
        message: format!("global metadata refused: {e}"),
    }
}
