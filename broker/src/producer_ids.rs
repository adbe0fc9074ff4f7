//! Producer ids (InitProducerId): unique across every broker of every
//! region, reserved durably in blocks.

use rocksdb::WriteBatch;

use crate::storage::{Store, StoreError, CF_META};

const PRODUCER_ID_KEY: &str = "counter/producer_id_limit";
/// Producer ids are reserved durably in blocks so InitProducerId rarely waits
/// for a sync; a crash skips at most one block, never reuses an id.
const PRODUCER_ID_BLOCK: i64 = 1000;

pub struct ProducerIdAllocator {
    state: tokio::sync::Mutex<(i64, i64)>, // (next, durable limit)
}

impl ProducerIdAllocator {
    pub(crate) fn open(store: &Store) -> Result<Self, StoreError> {
        let limit = match store.get_meta(PRODUCER_ID_KEY)? {
            Some(v) if v.len() == 8 => i64::from_be_bytes(v[..8].try_into().unwrap()),
            _ => 0,
        };
        Ok(ProducerIdAllocator {
            state: tokio::sync::Mutex::new((limit, limit)),
        })
    }

    /// A producer id unique across regions: the low 10 bits are this
    /// broker's node id and the next 16 its region's tag, so no two brokers
    /// of any regions hand out the same id. Mirrors carry the home's
    /// producer state; an id from another region matching one there would
    /// make a promoted mirror drop a new producer's batches as duplicates.
    ///
    /// The counter above them only grows, and ids minted before the region
    /// tag existed (`counter << 10 | node`) stay below every new one with
    /// the same low bits, so none is reused.
    pub async fn next(
        &self,
        store: &Store,
        node_id: i32,
        region_tag: u16,
    ) -> Result<i64, StoreError> {
        let mut st = self.state.lock().await;
        if st.0 >= st.1 {
            let new_limit = st.1 + PRODUCER_ID_BLOCK;
            let mut wb = WriteBatch::default();
            wb.put_cf(store.cf(CF_META), PRODUCER_ID_KEY, new_limit.to_be_bytes());
            store.write(wb).await?;
            st.1 = new_limit;
        }
        let seq = st.0;
        st.0 += 1;
        Ok(producer_id(seq, region_tag, node_id))
    }
}

fn producer_id(seq: i64, region_tag: u16, node_id: i32) -> i64 {
    (seq << 26) | ((region_tag as i64) << 10) | (node_id as i64 & 0x3ff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn producer_ids_differ_across_regions_and_from_ids_minted_before_tags() {
        let (us, eu) = (
            chronik_topology::region_tag("us-east"),
            chronik_topology::region_tag("eu-west"),
        );
        // Both regions number brokers from 1 and count from the same place.
        assert_ne!(producer_id(7, us, 1), producer_id(7, eu, 1));
        assert_ne!(producer_id(7, us, 1), producer_id(7, us, 2));
        // Before the tag, ids were `counter << 10 | node`, below the
        // counter the allocator resumes from.
        let resumed = 5_000;
        let new: Vec<i64> = (resumed..resumed + 100)
            .flat_map(|seq| [us, eu, 0, u16::MAX].map(|t| producer_id(seq, t, 1)))
            .collect();
        for old in (0..resumed).map(|c| (c << 10) | 1) {
            assert!(!new.contains(&old), "old id {old} minted again");
        }
        assert!(new.iter().all(|id| *id > 0));
    }
}
