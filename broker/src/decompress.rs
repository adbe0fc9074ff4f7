//! A batch's records section decompressed within a bound. A few KiB of
//! zstd or gzip can expand to gigabytes, and the leader decodes produced
//! batches for topics that ask it to (`compression.type`, and the key check
//! of compacted topics): a batch whose records expand past the bound is
//! refused instead of exhausting the broker's memory.
//!
//! Pure: bytes in, bytes out. The codecs are the crates kafka-protocol
//! itself decodes with (flate2, lz4, zstd, snap), read through a limit.

use std::io::Read;

use bytes::{BufMut, Bytes, BytesMut};

use crate::batch::{BatchHeader, HEADER_LEN};

/// The most bytes one batch's records may decompress to: 128 times the
/// default `max.message.bytes`, far beyond what a producer's batch holds.
pub const MAX_DECOMPRESSED: usize = 128 << 20;

#[derive(Debug, thiserror::Error)]
pub enum DecompressError {
    #[error("the batch's records decompress to more than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("the batch's records do not decompress as {codec}: {detail}")]
    Corrupt { codec: &'static str, detail: String },
    #[error("unknown compression codec {0}")]
    UnknownCodec(u8),
}

fn corrupt(codec: &'static str, e: impl std::fmt::Display) -> DecompressError {
    DecompressError::Corrupt {
        codec,
        detail: e.to_string(),
    }
}

fn read_bounded(
    mut r: impl Read,
    codec: &'static str,
    limit: usize,
) -> Result<Bytes, DecompressError> {
    let mut out = Vec::new();
    (&mut r)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| corrupt(codec, e))?;
    if out.len() > limit {
        return Err(DecompressError::TooLarge { limit });
    }
    Ok(out.into())
}

/// The xerial framing Kafka's Java producer writes snappy in.
const XERIAL_MAGIC: &[u8] = b"\x82SNAPPY\x00";
const XERIAL_HEADER_LEN: usize = 16;

fn snappy(body: &[u8], limit: usize) -> Result<Bytes, DecompressError> {
    let mut blocks: Vec<&[u8]> = Vec::new();
    if body.starts_with(XERIAL_MAGIC) && body.len() >= XERIAL_HEADER_LEN {
        let mut rest = &body[XERIAL_HEADER_LEN..];
        while !rest.is_empty() {
            let len = rest
                .get(..4)
                .map(|l| u32::from_be_bytes(l.try_into().expect("4 bytes")) as usize)
                .ok_or_else(|| corrupt("snappy", "truncated block length"))?;
            let block = rest
                .get(4..4 + len)
                .ok_or_else(|| corrupt("snappy", "truncated block"))?;
            blocks.push(block);
            rest = &rest[4 + len..];
        }
    } else {
        // Raw snappy, as librdkafka and Java's own reader accept.
        blocks.push(body);
    }
    let mut total = 0usize;
    for b in &blocks {
        total = total
            .checked_add(snap::raw::decompress_len(b).map_err(|e| corrupt("snappy", e))?)
            .filter(|t| *t <= limit)
            .ok_or(DecompressError::TooLarge { limit })?;
    }
    let mut out = BytesMut::zeroed(total);
    let mut at = 0;
    let mut d = snap::raw::Decoder::new();
    for b in blocks {
        at += d
            .decompress(b, &mut out[at..])
            .map_err(|e| corrupt("snappy", e))?;
    }
    out.truncate(at);
    Ok(out.freeze())
}

/// The records section of `batch` (one v2 batch), decompressed.
pub fn records_section(batch: &[u8], limit: usize) -> Result<Bytes, DecompressError> {
    let h = BatchHeader::parse(batch).map_err(|e| corrupt("a batch", e))?;
    let body = batch
        .get(HEADER_LEN..h.total_len())
        .ok_or_else(|| corrupt("a batch", "shorter than its length"))?;
    match h.compression() {
        0 => Ok(Bytes::copy_from_slice(body)),
        1 => read_bounded(flate2::read::MultiGzDecoder::new(body), "gzip", limit),
        2 => snappy(body, limit),
        3 => read_bounded(
            lz4::Decoder::new(body).map_err(|e| corrupt("lz4", e))?,
            "lz4",
            limit,
        ),
        4 => read_bounded(
            zstd::stream::read::Decoder::new(body).map_err(|e| corrupt("zstd", e))?,
            "zstd",
            limit,
        ),
        c => Err(DecompressError::UnknownCodec(c)),
    }
}

/// `batch` as an uncompressed batch (same header but for the codec, the
/// length and the CRC), for decoders that would otherwise decompress it
/// without a bound.
pub fn uncompressed(batch: &[u8], limit: usize) -> Result<Bytes, DecompressError> {
    let section = records_section(batch, limit)?;
    let mut out = BytesMut::with_capacity(HEADER_LEN + section.len());
    out.put_slice(&batch[..HEADER_LEN]);
    out.put_slice(&section);
    let len = (out.len() - 12) as i32;
    out[8..12].copy_from_slice(&len.to_be_bytes());
    out[22] &= !0x07;
    crate::batch::reseal(&mut out);
    Ok(out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{Compression, RecordBatchDecoder};

    fn records(b: &Bytes) -> Vec<kafka_protocol::records::Record> {
        RecordBatchDecoder::decode(&mut b.clone()).unwrap().records
    }

    #[test]
    fn every_codec_decompresses_to_the_same_records() {
        let pairs: Vec<(String, String)> = (0..50)
            .map(|i| (format!("k{i}"), format!("v{i}-").repeat(30)))
            .collect();
        let refs: Vec<(Option<&str>, Option<&str>)> = pairs
            .iter()
            .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
            .collect();
        let plain = crate::test_batches::encode(7, Compression::None, None, &refs);
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = crate::test_batches::encode(7, codec, None, &refs);
            let u = uncompressed(&b, MAX_DECOMPRESSED).unwrap();
            crate::batch::split_stored(&u).expect("a valid batch");
            assert_eq!(records(&u), records(&plain), "{codec:?}");
            assert_eq!(
                records_section(&b, MAX_DECOMPRESSED).unwrap(),
                records_section(&plain, MAX_DECOMPRESSED).unwrap()
            );
        }
    }

    #[test]
    fn a_bomb_is_refused_at_the_limit() {
        let big = "x".repeat(1 << 20);
        for codec in [
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ] {
            let b = crate::test_batches::encode(0, codec, None, &[(Some("k"), Some(&big))]);
            assert!(b.len() < 1 << 16, "{codec:?} compresses {} bytes", b.len());
            assert!(matches!(
                records_section(&b, 1 << 19),
                Err(DecompressError::TooLarge { .. })
            ));
            assert!(records_section(&b, 2 << 20).is_ok());
        }
    }

    #[test]
    fn garbage_is_an_error() {
        let mut b =
            crate::test_batches::encode(0, Compression::None, None, &[(Some("k"), None)]).to_vec();
        b[22] |= 4; // claims zstd
        crate::batch::reseal(&mut b);
        assert!(records_section(&b, MAX_DECOMPRESSED).is_err());
        assert!(records_section(&[0u8; 10], MAX_DECOMPRESSED).is_err());
    }
}
