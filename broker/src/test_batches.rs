//! Record batches encoded with kafka-protocol, for unit tests of the modules
//! that rewrite batches (`recompress`, `compaction`).

use bytes::{Bytes, BytesMut};
use indexmap::IndexMap;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};

/// The first record's timestamp; each next record is a millisecond later.
pub const T0: i64 = 1_700_000_000_000;

/// One stored batch at `base` holding `(key, value)` records in `codec`;
/// `producer` is (id, epoch, base sequence), `None` for a plain producer.
pub fn encode(
    base: i64,
    codec: Compression,
    producer: Option<(i64, i16, i32)>,
    records: &[(Option<&str>, Option<&str>)],
) -> Bytes {
    let (id, epoch, seq) = producer.unwrap_or((-1, -1, -1));
    let records: Vec<Record> = records
        .iter()
        .enumerate()
        .map(|(i, (k, v))| Record {
            transactional: false,
            control: false,
            delete_horizon: false,
            partition_leader_epoch: -1,
            producer_id: id,
            producer_epoch: epoch,
            timestamp_type: TimestampType::Creation,
            offset: base + i as i64,
            sequence: if id < 0 { -1 } else { seq + i as i32 },
            timestamp: T0 + i as i64,
            key: k.map(|k| Bytes::from(k.to_string())),
            value: v.map(|v| Bytes::from(v.to_string())),
            headers: IndexMap::new(),
        })
        .collect();
    let mut out = BytesMut::new();
    RecordBatchEncoder::encode(
        &mut out,
        &records,
        &RecordEncodeOptions {
            version: 2,
            compression: codec,
        },
    )
    .unwrap();
    out.freeze()
}
