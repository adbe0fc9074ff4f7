//! SCRAM credentials in the global `__meta`: written by the controller when
//! it applies `AlterScram` (so every broker of the region stores the same
//! change), read by SASL logins and DescribeUserScramCredentials. Remote
//! regions' changes arrive through the ordinary metadata-sync merge, so a
//! user created in one region logs in everywhere once it has synced.

use std::collections::BTreeMap;

use bytes::Bytes;
use chronik_metadata_sync::{Key, ScramValue};
use chronik_wire::sasl::{ScramCredential, ScramHash};
use prost::Message;
use rocksdb::WriteBatch;
use serde::{Deserialize, Serialize};

use super::meta_apply::{update_error, wall};
use super::{Catalog, PostApply, TopicError};
use crate::raft::types::ControllerCommand;

/// One credential to store: the keys derived from the salted password the
/// client sent, never the password.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScramUpsert {
    pub user: String,
    pub mechanism: i8,
    #[serde(with = "crate::raft::json_bytes")]
    pub salt: Vec<u8>,
    #[serde(with = "crate::raft::json_bytes")]
    pub stored_key: Vec<u8>,
    #[serde(with = "crate::raft::json_bytes")]
    pub server_key: Vec<u8>,
    pub iterations: u32,
}

impl ScramUpsert {
    pub fn new(user: &str, c: &ScramCredential) -> ScramUpsert {
        ScramUpsert {
            user: user.to_string(),
            mechanism: c.hash.type_id(),
            salt: c.salt.clone(),
            stored_key: c.stored_key.clone(),
            server_key: c.server_key.clone(),
            iterations: c.iterations,
        }
    }
}

fn credential(hash: ScramHash, v: &[u8]) -> Option<ScramCredential> {
    let v = ScramValue::decode(v).ok()?;
    Some(ScramCredential {
        hash,
        salt: v.salt,
        stored_key: v.stored_key,
        server_key: v.server_key,
        iterations: v.iterations,
    })
}

impl Catalog {
    /// `user`'s credentials: for one mechanism, or (`None`, for PLAIN) all.
    pub fn scram_credentials(&self, user: &str, hash: Option<ScramHash>) -> Vec<ScramCredential> {
        let rep = self.global.read();
        let hashes = match hash {
            Some(h) => vec![h],
            None => vec![ScramHash::Sha512, ScramHash::Sha256],
        };
        hashes
            .into_iter()
            .filter_map(|h| {
                let e = rep.get(&Key::ScramUser(ScramValue::key(h.type_id(), user)))?;
                credential(h, e.value.as_deref()?)
            })
            .collect()
    }

    /// Every user with a credential, and (mechanism, iterations) of each.
    pub fn scram_users(&self) -> BTreeMap<String, Vec<(ScramHash, u32)>> {
        let rep = self.global.read();
        let mut out: BTreeMap<String, Vec<(ScramHash, u32)>> = BTreeMap::new();
        for e in rep.entries() {
            let (Key::ScramUser(k), Some(v)) = (&e.key, &e.value) else {
                continue;
            };
            let Some((m, user)) = ScramValue::parse_key(k) else {
                continue;
            };
            let Some(hash) = ScramHash::from_type(m) else {
                continue;
            };
            if let Some(c) = credential(hash, v) {
                out.entry(user.to_string())
                    .or_default()
                    .push((hash, c.iterations));
            }
        }
        out
    }

    /// Stores and deletes credentials through the region's controller.
    pub async fn alter_scram(
        &self,
        upserts: Vec<ScramUpsert>,
        deletions: Vec<(String, i8)>,
    ) -> Result<(), TopicError> {
        self.submit(ControllerCommand::AlterScram {
            upserts,
            deletions,
            now_ms: crate::handlers::now_ms(),
        })
        .await
    }

    pub(super) fn apply_alter_scram(
        &self,
        upserts: &[ScramUpsert],
        deletions: &[(String, i8)],
        now_ms: i64,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let mut rep = self.global.write();
        for u in upserts {
            let v = ScramValue {
                salt: u.salt.clone(),
                stored_key: u.stored_key.clone(),
                server_key: u.server_key.clone(),
                iterations: u.iterations,
            };
            rep.local_update(
                Key::ScramUser(ScramValue::key(u.mechanism, &u.user)),
                Some(Bytes::from(v.encode_to_vec())),
                wall(now_ms),
            )
            .map_err(update_error)?;
        }
        for (user, mechanism) in deletions {
            let key = Key::ScramUser(ScramValue::key(*mechanism, user));
            if rep.get(&key).is_some_and(|e| !e.is_tombstone()) {
                rep.local_update(key, None, wall(now_ms))
                    .map_err(update_error)?;
            }
        }
        self.global.save(&self.store, &mut rep, wb);
        Ok(PostApply::Nothing)
    }
}
