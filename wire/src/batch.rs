//! Kafka RecordBatch (magic v2) handling on the hot path.
//!
//! Batches are stored exactly as the client sent them, except for the two
//! fields Kafka itself rewrites outside the CRC: the base offset and the
//! partition leader epoch. Compressed payloads are never decoded. This module
//! is pure: no I/O, so every rule here is unit-tested directly.

use bytes::{Bytes, BytesMut};

/// Bytes before the records in a v2 batch header.
pub const HEADER_LEN: usize = 61;
/// Bytes covered by neither the batch length nor the CRC: base offset + length.
const LOG_OVERHEAD: usize = 12;
const CRC_OFFSET: usize = 17;
pub(crate) const ATTRIBUTES_OFFSET: usize = 21;
const MAX_TIMESTAMP_OFFSET: usize = 35;

pub(crate) const TIMESTAMP_TYPE_BIT: i16 = 1 << 3;
const TRANSACTIONAL_BIT: i16 = 1 << 4;
const CONTROL_BIT: i16 = 1 << 5;

/// Why a produced batch was refused. Each maps to a Kafka error code in
/// `error.rs`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BatchError {
    #[error("record batch is truncated or its length field is inconsistent")]
    Corrupt,
    #[error("record batch CRC mismatch: stored {stored:#010x}, computed {computed:#010x}")]
    CrcMismatch { stored: u32, computed: u32 },
    #[error("record batch magic {0} is not supported; only magic 2 is accepted")]
    UnsupportedMagic(i8),
    #[error("invalid record batch: {0}")]
    Invalid(&'static str),
}

/// The fields of a v2 batch header that the broker acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchHeader {
    pub base_offset: i64,
    pub batch_length: i32,
    pub partition_leader_epoch: i32,
    pub magic: i8,
    pub crc: u32,
    pub attributes: i16,
    pub last_offset_delta: i32,
    pub base_timestamp: i64,
    pub max_timestamp: i64,
    pub producer_id: i64,
    pub producer_epoch: i16,
    pub base_sequence: i32,
    pub records_count: i32,
}

impl BatchHeader {
    /// Parses the header of the batch at the start of `b`, without checking
    /// the CRC. `b` must hold at least [`HEADER_LEN`] bytes.
    pub fn parse(b: &[u8]) -> Result<BatchHeader, BatchError> {
        if b.len() < HEADER_LEN {
            return Err(BatchError::Corrupt);
        }
        let i64_at = |o: usize| i64::from_be_bytes(b[o..o + 8].try_into().unwrap());
        let i32_at = |o: usize| i32::from_be_bytes(b[o..o + 4].try_into().unwrap());
        let i16_at = |o: usize| i16::from_be_bytes(b[o..o + 2].try_into().unwrap());
        Ok(BatchHeader {
            base_offset: i64_at(0),
            batch_length: i32_at(8),
            partition_leader_epoch: i32_at(12),
            magic: b[16] as i8,
            crc: u32::from_be_bytes(b[17..21].try_into().unwrap()),
            attributes: i16_at(21),
            last_offset_delta: i32_at(23),
            base_timestamp: i64_at(27),
            max_timestamp: i64_at(35),
            producer_id: i64_at(43),
            producer_epoch: i16_at(51),
            base_sequence: i32_at(53),
            records_count: i32_at(57),
        })
    }

    /// Total bytes of this batch including the offset and length fields.
    pub fn total_len(&self) -> usize {
        self.batch_length as usize + LOG_OVERHEAD
    }

    pub fn last_offset(&self) -> i64 {
        self.base_offset + self.last_offset_delta as i64
    }

    pub fn compression(&self) -> u8 {
        (self.attributes & 0x7) as u8
    }

    pub fn is_transactional(&self) -> bool {
        self.attributes & TRANSACTIONAL_BIT != 0
    }

    pub fn is_control(&self) -> bool {
        self.attributes & CONTROL_BIT != 0
    }

    pub fn has_producer_id(&self) -> bool {
        self.producer_id >= 0
    }

    /// Sequence number of the last record, wrapping as Kafka does.
    pub fn last_sequence(&self) -> i32 {
        let s = self.base_sequence as i64 + self.last_offset_delta as i64;
        if s > i32::MAX as i64 {
            (s - i32::MAX as i64 - 1) as i32
        } else {
            s as i32
        }
    }
}

/// Validates the one batch a produce request carries for a partition.
///
/// Kafka requires exactly one v2 batch per partition in Produce v3+; we check
/// framing, magic, CRC-32C, the count/offset-delta agreement and, for
/// uncompressed batches, that the records themselves are well framed.
pub fn validate_produce_batch(records: &[u8]) -> Result<BatchHeader, BatchError> {
    if records.len() < LOG_OVERHEAD + 5 {
        return Err(BatchError::Corrupt);
    }
    let magic = records[16] as i8;
    if magic != 2 {
        return Err(BatchError::UnsupportedMagic(magic));
    }
    let h = BatchHeader::parse(records)?;
    if h.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 {
        return Err(BatchError::Corrupt);
    }
    match h.total_len().cmp(&records.len()) {
        std::cmp::Ordering::Greater => return Err(BatchError::Corrupt),
        std::cmp::Ordering::Less => {
            return Err(BatchError::Invalid(
                "produce requests must carry exactly one record batch per partition",
            ))
        }
        std::cmp::Ordering::Equal => {}
    }
    let computed = crc32c::crc32c(&records[ATTRIBUTES_OFFSET..]);
    if computed != h.crc {
        return Err(BatchError::CrcMismatch {
            stored: h.crc,
            computed,
        });
    }
    if h.is_control() {
        return Err(BatchError::Invalid(
            "clients may not produce control batches",
        ));
    }
    if h.records_count <= 0 {
        return Err(BatchError::Invalid("record batch has no records"));
    }
    if h.last_offset_delta != h.records_count - 1 {
        return Err(BatchError::Invalid(
            "record count does not match the batch's last offset delta",
        ));
    }
    if h.compression() > 4 {
        return Err(BatchError::Invalid("unknown compression codec"));
    }
    if h.compression() == 0 {
        check_uncompressed_records(&records[HEADER_LEN..], h.records_count)?;
    }
    Ok(h)
}

/// Splits a run of stored (offset-stamped) v2 batches, as a log or a Fetch
/// returns them, checking each one's framing, magic and CRC-32C, and that
/// offsets only increase: a compacted log has holes where the cleaner
/// removed whole batches, so a batch may start after the previous one's
/// end, never at or before it. A trailing partial batch (Fetch may cut one off
/// at its byte limit) is an error here: callers trim to whole batches first
/// with [`whole_batches_len`].
pub fn split_stored(buf: &[u8]) -> Result<Vec<(BatchHeader, std::ops::Range<usize>)>, BatchError> {
    let mut out = Vec::new();
    let mut at = 0;
    let mut next: Option<i64> = None;
    while at < buf.len() {
        let rest = &buf[at..];
        if rest.len() < HEADER_LEN {
            return Err(BatchError::Corrupt);
        }
        let h = BatchHeader::parse(rest)?;
        if h.magic != 2 {
            return Err(BatchError::UnsupportedMagic(h.magic));
        }
        if h.batch_length < (HEADER_LEN - LOG_OVERHEAD) as i32 || h.total_len() > rest.len() {
            return Err(BatchError::Corrupt);
        }
        let end = at + h.total_len();
        let computed = crc32c::crc32c(&buf[at + ATTRIBUTES_OFFSET..end]);
        if computed != h.crc {
            return Err(BatchError::CrcMismatch {
                stored: h.crc,
                computed,
            });
        }
        if h.last_offset_delta < 0 || next.is_some_and(|n| h.base_offset < n) {
            return Err(BatchError::Invalid("stored batches overlap"));
        }
        next = Some(h.last_offset() + 1);
        out.push((h, at..end));
        at = end;
    }
    Ok(out)
}

/// The length of the longest prefix of `buf` made of whole batches.
pub fn whole_batches_len(buf: &[u8]) -> usize {
    let mut at = 0;
    while buf.len() - at >= LOG_OVERHEAD {
        let len = i32::from_be_bytes(buf[at + 8..at + 12].try_into().unwrap());
        if len <= 0 {
            break;
        }
        let total = len as usize + LOG_OVERHEAD;
        if total > buf.len() - at {
            break;
        }
        at += total;
    }
    at
}

/// Walks uncompressed records just far enough to prove each is framed by its
/// length varint and that the count is right; contents are not decoded.
fn check_uncompressed_records(mut rest: &[u8], count: i32) -> Result<(), BatchError> {
    const BAD: BatchError = BatchError::Invalid("malformed record inside the batch");
    for _ in 0..count {
        let (len, used) = read_varint(rest).ok_or(BAD)?;
        if len < 0 {
            return Err(BAD);
        }
        let end = used.checked_add(len as usize).ok_or(BAD)?;
        if end > rest.len() {
            return Err(BAD);
        }
        rest = &rest[end..];
    }
    if !rest.is_empty() {
        return Err(BatchError::Invalid(
            "record batch has trailing bytes after its last record",
        ));
    }
    Ok(())
}

/// Zig-zag varint as used inside Kafka records. Returns (value, bytes used).
pub fn read_varint(b: &[u8]) -> Option<(i64, usize)> {
    let mut raw: u64 = 0;
    for (i, byte) in b.iter().take(10).enumerate() {
        raw |= ((byte & 0x7f) as u64) << (7 * i);
        if byte & 0x80 == 0 {
            let v = ((raw >> 1) as i64) ^ -((raw & 1) as i64);
            return Some((v, i + 1));
        }
    }
    None
}

/// Copies a validated batch and stamps the broker-assigned base offset and
/// leader epoch. Both live before the CRC'd region, so the CRC stays valid.
/// With `log_append_time` set, the max timestamp and timestamp-type bit are
/// rewritten as Kafka does for `message.timestamp.type=LogAppendTime`, and
/// the CRC is recomputed.
pub fn stamp(
    records: &[u8],
    base_offset: i64,
    leader_epoch: i32,
    log_append_time: Option<i64>,
) -> Bytes {
    let mut b = BytesMut::from(records);
    b[0..8].copy_from_slice(&base_offset.to_be_bytes());
    b[12..16].copy_from_slice(&leader_epoch.to_be_bytes());
    if let Some(now) = log_append_time {
        let attrs = i16::from_be_bytes([b[ATTRIBUTES_OFFSET], b[ATTRIBUTES_OFFSET + 1]])
            | TIMESTAMP_TYPE_BIT;
        b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
        b[MAX_TIMESTAMP_OFFSET..MAX_TIMESTAMP_OFFSET + 8].copy_from_slice(&now.to_be_bytes());
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }
    b.freeze()
}

/// Recomputes the CRC-32C of a v2 batch whose CRC-covered bytes (from the
/// attributes on) were changed.
pub fn reseal(b: &mut [u8]) {
    let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
    b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
}

/// Builds uncompressed v2 batches. Used by tests and tools; the broker never
/// builds batches on its own hot path.
pub mod build {
    use super::*;

    pub struct Record<'a> {
        pub key: Option<&'a [u8]>,
        pub value: Option<&'a [u8]>,
        pub headers: Vec<(&'a str, Option<&'a [u8]>)>,
        pub timestamp_delta: i64,
    }

    fn put_varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)) as u64;
        loop {
            let byte = (z & 0x7f) as u8;
            z >>= 7;
            if z == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }

    fn put_bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => put_varint(out, -1),
            Some(b) => {
                put_varint(out, b.len() as i64);
                out.extend_from_slice(b);
            }
        }
    }

    /// An uncompressed batch with a correct CRC.
    pub fn batch(
        base_timestamp: i64,
        producer: Option<(i64, i16, i32)>,
        records: &[Record<'_>],
    ) -> Vec<u8> {
        let mut body = Vec::new();
        for (i, r) in records.iter().enumerate() {
            let mut rec = vec![0u8]; // attributes
            put_varint(&mut rec, r.timestamp_delta);
            put_varint(&mut rec, i as i64);
            put_bytes(&mut rec, r.key);
            put_bytes(&mut rec, r.value);
            put_varint(&mut rec, r.headers.len() as i64);
            for (k, v) in &r.headers {
                put_bytes(&mut rec, Some(k.as_bytes()));
                put_bytes(&mut rec, *v);
            }
            put_varint(&mut body, rec.len() as i64);
            body.extend_from_slice(&rec);
        }
        let max_ts = base_timestamp + records.iter().map(|r| r.timestamp_delta).max().unwrap_or(0);
        let (pid, epoch, seq) = producer.unwrap_or((-1, -1, -1));
        let mut b = Vec::with_capacity(HEADER_LEN + body.len());
        b.extend_from_slice(&0i64.to_be_bytes());
        b.extend_from_slice(&((HEADER_LEN - LOG_OVERHEAD + body.len()) as i32).to_be_bytes());
        b.extend_from_slice(&(-1i32).to_be_bytes());
        b.push(2);
        b.extend_from_slice(&[0; 4]); // crc, filled below
        b.extend_from_slice(&0i16.to_be_bytes());
        b.extend_from_slice(&((records.len() as i32) - 1).to_be_bytes());
        b.extend_from_slice(&base_timestamp.to_be_bytes());
        b.extend_from_slice(&max_ts.to_be_bytes());
        b.extend_from_slice(&pid.to_be_bytes());
        b.extend_from_slice(&epoch.to_be_bytes());
        b.extend_from_slice(&seq.to_be_bytes());
        b.extend_from_slice(&(records.len() as i32).to_be_bytes());
        b.extend_from_slice(&body);
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
        b
    }

    /// `n` records with small distinct values, for tests.
    pub fn simple(n: usize, base_timestamp: i64, producer: Option<(i64, i16, i32)>) -> Vec<u8> {
        let values: Vec<Vec<u8>> = (0..n).map(|i| format!("value-{i}").into_bytes()).collect();
        let recs: Vec<Record<'_>> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                key: None,
                value: Some(v),
                headers: vec![],
                timestamp_delta: i as i64,
            })
            .collect();
        batch(base_timestamp, producer, &recs)
    }

    /// `b` (built here, with a producer) made transactional: records of its
    /// producer's open transaction.
    pub fn transactional(mut b: Vec<u8>) -> Vec<u8> {
        let attrs = i16::from_be_bytes([b[ATTRIBUTES_OFFSET], b[ATTRIBUTES_OFFSET + 1]])
            | TRANSACTIONAL_BIT;
        b[ATTRIBUTES_OFFSET..ATTRIBUTES_OFFSET + 2].copy_from_slice(&attrs.to_be_bytes());
        super::reseal(&mut b);
        b
    }
}

#[cfg(test)]
mod tests {
    use super::build::*;
    use super::*;

    /// Makes a tampered batch checksum-valid again, to test the checks after the CRC.
    fn fix_crc(b: &mut [u8]) {
        let crc = crc32c::crc32c(&b[ATTRIBUTES_OFFSET..]);
        b[CRC_OFFSET..CRC_OFFSET + 4].copy_from_slice(&crc.to_be_bytes());
    }

    #[test]
    fn valid_batch_parses() {
        let b = batch(
            1000,
            Some((42, 3, 7)),
            &[
                Record {
                    key: Some(b"k"),
                    value: Some(b"v"),
                    headers: vec![("h", Some(b"x"))],
                    timestamp_delta: 0,
                },
                Record {
                    key: None,
                    value: None,
                    headers: vec![("n", None)],
                    timestamp_delta: 5,
                },
            ],
        );
        let h = validate_produce_batch(&b).unwrap();
        assert_eq!(h.records_count, 2);
        assert_eq!(h.last_offset_delta, 1);
        assert_eq!(h.max_timestamp, 1005);
        assert_eq!(
            (h.producer_id, h.producer_epoch, h.base_sequence),
            (42, 3, 7)
        );
        assert_eq!(h.last_sequence(), 8);
        assert_eq!(h.total_len(), b.len());
    }

    #[test]
    fn flipped_byte_fails_crc() {
        let mut b = simple(3, 0, None);
        let n = b.len();
        b[n - 2] ^= 0x40;
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::CrcMismatch { .. })
        ));
    }

    #[test]
    fn truncated_and_trailing_batches_are_rejected() {
        let b = simple(3, 0, None);
        assert_eq!(
            validate_produce_batch(&b[..b.len() - 1]),
            Err(BatchError::Corrupt)
        );
        assert_eq!(validate_produce_batch(&b[..10]), Err(BatchError::Corrupt));
        let mut two = b.clone();
        two.extend_from_slice(&b);
        assert!(matches!(
            validate_produce_batch(&two),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn old_magic_is_rejected() {
        let mut b = simple(1, 0, None);
        b[16] = 1;
        assert_eq!(
            validate_produce_batch(&b),
            Err(BatchError::UnsupportedMagic(1))
        );
    }

    #[test]
    fn count_mismatch_is_rejected_even_with_good_crc() {
        let mut b = simple(3, 0, None);
        b[57..61].copy_from_slice(&4i32.to_be_bytes());
        fix_crc(&mut b);
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn garbage_records_with_good_crc_are_rejected() {
        let mut b = simple(2, 0, None);
        // Claim an enormous first record length.
        b[HEADER_LEN] = 0xfe;
        fix_crc(&mut b);
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn control_batches_from_clients_are_rejected() {
        let mut b = simple(1, 0, None);
        b[22] |= CONTROL_BIT as u8;
        fix_crc(&mut b);
        assert!(matches!(
            validate_produce_batch(&b),
            Err(BatchError::Invalid(_))
        ));
    }

    #[test]
    fn stamping_assigns_offset_and_keeps_crc() {
        let b = simple(5, 77, None);
        let s = stamp(&b, 1234, 9, None);
        let h = validate_produce_batch(&s).unwrap();
        assert_eq!(h.base_offset, 1234);
        assert_eq!(h.last_offset(), 1238);
        assert_eq!(h.partition_leader_epoch, 9);
        // Everything after the epoch is byte-identical to what the client sent.
        assert_eq!(&s[16..], &b[16..]);
    }

    #[test]
    fn log_append_time_rewrites_timestamp_and_crc() {
        let b = simple(2, 77, None);
        let s = stamp(&b, 0, 0, Some(5_000));
        let h = validate_produce_batch(&s).unwrap();
        assert_eq!(h.max_timestamp, 5_000);
        assert!(h.attributes & TIMESTAMP_TYPE_BIT != 0);
    }

    #[test]
    fn sequence_wraps_like_kafka() {
        let mut b = simple(3, 0, Some((1, 0, i32::MAX - 1)));
        let h = BatchHeader::parse(&b).unwrap();
        assert_eq!(h.last_sequence(), 0);
        b.clear();
    }

    #[test]
    fn varints_round_trip() {
        for v in [
            0i64,
            1,
            -1,
            63,
            -64,
            64,
            300,
            -300,
            i32::MAX as i64,
            i64::MIN / 2,
        ] {
            let mut out = Vec::new();
            let mut z = ((v << 1) ^ (v >> 63)) as u64;
            loop {
                let byte = (z & 0x7f) as u8;
                z >>= 7;
                if z == 0 {
                    out.push(byte);
                    break;
                }
                out.push(byte | 0x80);
            }
            assert_eq!(read_varint(&out), Some((v, out.len())));
        }
        assert_eq!(read_varint(&[0x80, 0x80]), None);
    }
}
