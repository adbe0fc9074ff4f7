//! The records inside a stored v2 batch, decompressed and decoded, for the
//! few tools that must look inside one (failback copies a diverged
//! suffix record by record). The broker's hot path never does this.
//! Decompression is the `kafka-protocol` crate's; the record layout is
//! decoded here because that crate keeps headers in a map, and Kafka
//! allows one key several times in a record.

use bytes::Bytes;
use kafka_protocol::compression::{Decompressor, Gzip, Lz4, Snappy, Zstd};

use crate::batch::{
    read_varint, split_stored, BatchError, BatchHeader, HEADER_LEN, TIMESTAMP_TYPE_BIT,
};

/// One record with its absolute offset and timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub offset: i64,
    pub timestamp: i64,
    pub key: Option<Bytes>,
    pub value: Option<Bytes>,
    /// In the order stored; a key may repeat.
    pub headers: Vec<(String, Option<Bytes>)>,
}

/// The header and records of the one batch `batch` holds.
pub fn decode(batch: &[u8]) -> Result<(BatchHeader, Vec<Record>), BatchError> {
    let h = BatchHeader::parse(batch)?;
    if h.magic != 2 {
        return Err(BatchError::UnsupportedMagic(h.magic));
    }
    if batch.len() < h.total_len() || h.total_len() < HEADER_LEN {
        return Err(BatchError::Corrupt);
    }
    let mut body = Bytes::copy_from_slice(&batch[HEADER_LEN..h.total_len()]);
    let keep = |b: &mut Bytes| Ok(b.clone());
    let plain = match h.compression() {
        0 => Ok(body),
        1 => Gzip::decompress(&mut body, keep),
        2 => Snappy::decompress(&mut body, keep),
        3 => Lz4::decompress(&mut body, keep),
        4 => Zstd::decompress(&mut body, keep),
        _ => return Err(BatchError::Invalid("unknown compression codec")),
    }
    .map_err(|_| BatchError::Invalid("records do not decompress"))?;
    let log_append_time = h.attributes & TIMESTAMP_TYPE_BIT != 0;
    let mut out = Vec::with_capacity(h.records_count.max(0) as usize);
    let mut at = 0usize;
    for _ in 0..h.records_count {
        let (len, n) = varint(&plain, at)?;
        at += n;
        let end = at
            .checked_add(usize::try_from(len).map_err(|_| BatchError::Corrupt)?)
            .filter(|e| *e <= plain.len())
            .ok_or(BatchError::Corrupt)?;
        let rec = plain.slice(at..end);
        out.push(record(&rec, &h, log_append_time)?);
        at = end;
    }
    if at != plain.len() {
        return Err(BatchError::Invalid("bytes after the batch's last record"));
    }
    Ok((h, out))
}

/// Every batch of `buf` (stored batches, concatenated, as a log dump holds
/// them), decoded.
pub fn decode_all(buf: &[u8]) -> Result<Vec<(BatchHeader, Vec<Record>)>, BatchError> {
    split_stored(buf)?
        .into_iter()
        .map(|(_, range)| decode(&buf[range]))
        .collect()
}

fn varint(b: &[u8], at: usize) -> Result<(i64, usize), BatchError> {
    read_varint(b.get(at..).ok_or(BatchError::Corrupt)?).ok_or(BatchError::Corrupt)
}

fn record(r: &Bytes, h: &BatchHeader, log_append_time: bool) -> Result<Record, BatchError> {
    let mut at = 1; // attributes: unused in v2 records
    let next = |at: &mut usize| -> Result<i64, BatchError> {
        let (v, n) = varint(r, *at)?;
        *at += n;
        Ok(v)
    };
    let ts_delta = next(&mut at)?;
    let offset_delta = next(&mut at)?;
    let bytes = |at: &mut usize, len: i64| -> Result<Option<Bytes>, BatchError> {
        if len < 0 {
            return Ok(None);
        }
        let end = at
            .checked_add(len as usize)
            .filter(|e| *e <= r.len())
            .ok_or(BatchError::Corrupt)?;
        let b = r.slice(*at..end);
        *at = end;
        Ok(Some(b))
    };
    let key_len = next(&mut at)?;
    let key = bytes(&mut at, key_len)?;
    let value_len = next(&mut at)?;
    let value = bytes(&mut at, value_len)?;
    let count = next(&mut at)?;
    let mut headers = Vec::with_capacity(count.clamp(0, 64) as usize);
    for _ in 0..count.max(0) {
        let klen = next(&mut at)?;
        let k = bytes(&mut at, klen)?.ok_or(BatchError::Invalid("null header key"))?;
        let k = String::from_utf8(k.to_vec())
            .map_err(|_| BatchError::Invalid("header key is not UTF-8"))?;
        let vlen = next(&mut at)?;
        headers.push((k, bytes(&mut at, vlen)?));
    }
    if at != r.len() {
        return Err(BatchError::Corrupt);
    }
    Ok(Record {
        offset: h.base_offset + offset_delta,
        timestamp: if log_append_time {
            h.max_timestamp
        } else {
            h.base_timestamp + ts_delta
        },
        key,
        value,
        headers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::batch::{build, stamp};

    #[test]
    fn records_come_back_with_offsets_timestamps_and_repeated_headers() {
        let recs = [
            build::Record {
                key: Some(b"k"),
                value: Some(b"v1"),
                headers: vec![("h", Some(b"1".as_slice())), ("h", None)],
                timestamp_delta: 0,
            },
            build::Record {
                key: None,
                value: None,
                headers: vec![],
                timestamp_delta: 7,
            },
        ];
        let b = stamp(&build::batch(1_000, None, &recs), 40, 3, None);
        let (h, got) = decode(&b).unwrap();
        assert_eq!((h.base_offset, h.partition_leader_epoch), (40, 3));
        assert_eq!(got.len(), 2);
        assert_eq!(got[0].offset, 40);
        assert_eq!(got[0].key.as_deref(), Some(b"k".as_slice()));
        assert_eq!(
            got[0].headers,
            vec![
                ("h".to_string(), Some(Bytes::from_static(b"1"))),
                ("h".to_string(), None)
            ]
        );
        assert_eq!(
            (got[1].offset, got[1].timestamp, got[1].value.clone()),
            (41, 1_007, None)
        );
        // LogAppendTime: every record carries the batch's time.
        let lat = stamp(&build::batch(1_000, None, &recs), 40, 3, Some(5_000));
        assert!(decode(&lat).unwrap().1.iter().all(|r| r.timestamp == 5_000));
        // A cut batch is refused, not half read.
        assert!(decode(&b[..b.len() - 3]).is_err());
    }
}
