//! ACL bindings in the global `__meta`: written by the controller when it
//! applies `AlterAcls` (so every broker of the region stores the same
//! change), read by the authorizer. Other regions' bindings arrive through
//! the metadata-sync merge, so a principal has the same rights everywhere
//! once the change has synced.

use std::collections::BTreeSet;

use bytes::Bytes;
use chronik_metadata_sync::Key;
use rocksdb::WriteBatch;

use super::meta_apply::{update_error, wall};
use super::{Catalog, PostApply, TopicError};
use crate::acl::AclBinding;
use crate::raft::types::ControllerCommand;

impl Catalog {
    /// Every binding in force in this region.
    pub fn acl_bindings(&self) -> BTreeSet<AclBinding> {
        self.global
            .read()
            .entries()
            .filter(|e| !e.is_tombstone())
            .filter_map(|e| match &e.key {
                Key::Acl(k) => AclBinding::from_key(k),
                _ => None,
            })
            .collect()
    }

    /// Stores and deletes bindings through the region's controller. A
    /// binding that already exists, or is already gone, is left alone.
    pub async fn alter_acls(
        &self,
        create: Vec<AclBinding>,
        delete: Vec<AclBinding>,
    ) -> Result<(), TopicError> {
        self.submit(ControllerCommand::AlterAcls {
            create,
            delete,
            now_ms: crate::handlers::now_ms(),
        })
        .await
    }

    pub(super) fn apply_alter_acls(
        &self,
        create: &[AclBinding],
        delete: &[AclBinding],
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let mut rep = self.global.write();
        for b in create {
            let key = Key::Acl(b.to_key());
            if rep.get(&key).is_none_or(|e| e.is_tombstone()) {
                rep.local_update(key, Some(Bytes::new()), wall(now_ms))
                    .map_err(update_error)?;
            }
        }
        for b in delete {
            let key = Key::Acl(b.to_key());
            if rep.get(&key).is_some_and(|e| !e.is_tombstone()) {
                rep.local_update(key, None, wall(now_ms))
                    .map_err(update_error)?;
            }
        }
        self.global.save(&self.store, &mut rep, wb);
        Ok(PostApply::Nothing)
    }
}
