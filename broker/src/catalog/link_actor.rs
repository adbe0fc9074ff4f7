//! The region's dc-link actor role and the promotions its lease vote agreed
//! to, kept by the controller so that every dc-link process of the region
//! (the active one and its standbys) sees the same of both.
//!
//! The role is a compare-and-set record (`chronik_metadata_sync::actor`);
//! the promotions are opaque to the broker (the dc-link's JSON), written
//! only by the holder at its current term, so a dc-link that lost the role
//! cannot change them after its successor read them.

use chronik_metadata_sync::actor::{ActorRecord, Claim};
use kafka_protocol::error::ResponseError as E;
use rocksdb::WriteBatch;

use super::{Catalog, PostApply, TopicError};
use crate::raft::types::ControllerCommand;
use crate::storage::CF_META;

pub const LINK_PREFIX: &str = "link/";
const ACTOR_KEY: &str = "link/actor";
const PROMOTIONS_KEY: &str = "link/promotions";

/// A claim or write the record refused: 409, with the record as it is.
fn refused(message: String) -> TopicError {
    TopicError::Rejected {
        code: E::InvalidRequest.code(),
        message,
    }
}

impl Catalog {
    /// The actor record as this broker has applied it.
    pub fn link_actor(&self) -> Result<ActorRecord, TopicError> {
        match self.store.get_meta(ACTOR_KEY)? {
            None => Ok(ActorRecord::default()),
            Some(v) => serde_json::from_slice(&v)
                .map_err(|e| TopicError::Unavailable(format!("{ACTOR_KEY}: {e}"))),
        }
    }

    /// The promotions the region's vote agreed to (JSON; `[]` before any).
    pub fn link_promotions(&self) -> Result<Vec<u8>, TopicError> {
        Ok(self
            .store
            .get_meta(PROMOTIONS_KEY)?
            .unwrap_or_else(|| b"[]".to_vec()))
    }

    /// Claims or renews the role; the record after the claim, as applied
    /// here (so promotions read next are at least as new).
    pub async fn claim_link_actor(&self, claim: Claim) -> Result<ActorRecord, TopicError> {
        self.submit(ControllerCommand::ClaimLinkActor {
            claim: claim.clone(),
        })
        .await?;
        self.await_local(|| {
            self.link_actor()
                .ok()
                .filter(|r| r.holder == claim.holder && r.term >= claim.term)
        })
        .await
    }

    pub async fn keep_link_promotions(
        &self,
        holder: String,
        term: u64,
        promotions: Vec<u8>,
    ) -> Result<(), TopicError> {
        serde_json::from_slice::<serde_json::Value>(&promotions)
            .map_err(|e| refused(format!("promotions are not JSON: {e}")))?;
        self.submit(ControllerCommand::KeepLinkPromotions {
            holder,
            term,
            promotions: promotions.clone(),
        })
        .await?;
        self.await_local(|| {
            (self.link_promotions().ok().as_deref() == Some(promotions.as_slice())).then_some(())
        })
        .await
    }

    pub(super) fn apply_claim_link_actor(
        &self,
        claim: &Claim,
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let now = self.link_actor()?;
        let next = now.claim(claim).map_err(|e| refused(e.to_string()))?;
        if next.term != now.term {
            tracing::warn!(holder = %next.holder, term = next.term, previous = %now.holder, "dc-link actor role taken");
        }
        wb.put_cf(
            self.store.cf(CF_META),
            ACTOR_KEY,
            serde_json::to_vec(&next).expect("serializes"),
        );
        Ok(PostApply::Nothing)
    }

    pub(super) fn apply_keep_link_promotions(
        &self,
        holder: &str,
        term: u64,
        promotions: &[u8],
        wb: &mut WriteBatch,
    ) -> Result<PostApply, TopicError> {
        let now = self.link_actor()?;
        if now.holder != holder || now.term != term {
            return Err(refused(format!(
                "promotions written by {holder} at term {term}, but the dc-link actor is {} at term {}",
                now.holder, now.term
            )));
        }
        wb.put_cf(self.store.cf(CF_META), PROMOTIONS_KEY, promotions);
        Ok(PostApply::Nothing)
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use chronik_topology::{Durability, TopicDefaults};

    use super::*;
    use crate::catalog::RegionSettings;
    use crate::storage::Store;

    fn claim(holder: &str, term: u64, renewals: u64) -> Claim {
        Claim {
            holder: holder.into(),
            term,
            renewals,
        }
    }

    #[tokio::test]
    async fn only_the_current_holder_keeps_promotions_and_both_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
            let cat =
                Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
            assert_eq!(cat.link_promotions().unwrap(), b"[]");
            let a = cat.claim_link_actor(claim("a", 0, 0)).await.unwrap();
            assert_eq!((a.holder.as_str(), a.term), ("a", 1));
            cat.keep_link_promotions("a".into(), 1, b"[1]".to_vec())
                .await
                .unwrap();
            // b saw renewal 0, but a renewed since: refused, nothing changes.
            cat.claim_link_actor(claim("a", 1, 0)).await.unwrap();
            assert!(matches!(
                cat.claim_link_actor(claim("b", 1, 0)).await,
                Err(TopicError::Rejected { .. })
            ));
            let b = cat.claim_link_actor(claim("b", 1, 1)).await.unwrap();
            assert_eq!((b.holder.as_str(), b.term), ("b", 2));
            // a, superseded, can no longer write what b started from.
            assert!(matches!(
                cat.keep_link_promotions("a".into(), 1, b"[2]".to_vec())
                    .await,
                Err(TopicError::Rejected { .. })
            ));
            assert!(cat
                .keep_link_promotions("b".into(), 2, b"not json".to_vec())
                .await
                .is_err());
            assert_eq!(cat.link_promotions().unwrap(), b"[1]");
        }
        let store = Arc::new(Store::open(dir.path(), Durability::Fsync).unwrap());
        let cat =
            Catalog::open(store, TopicDefaults::default(), RegionSettings::single(1)).unwrap();
        assert_eq!(cat.link_actor().unwrap().holder, "b");
        assert_eq!(cat.link_promotions().unwrap(), b"[1]");
        assert!(cat
            .snapshot_entries()
            .unwrap()
            .iter()
            .any(|(k, _)| k == "link/promotions"));
    }
}
