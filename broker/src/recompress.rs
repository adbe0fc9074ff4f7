//! A topic's `compression.type` other than `producer`: the partition leader
//! rewrites a produced batch in the topic's codec before proposing it, so
//! the Raft log, every replica and every mirror region hold the same bytes
//! (replicas never recompress; they could not agree on the output of a
//! compressor library they may not share a version of).
//!
//! Pure: bytes in, bytes out. As in Kafka, a batch already in the topic's
//! codec is kept as produced, and the batch's producer id, epoch, base
//! sequence, offsets deltas, timestamps, attributes other than the codec,
//! and records are kept.

use std::io::Write;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::records::{
    Compression, RecordBatchDecoder, RecordBatchEncoder, RecordEncodeOptions,
};

/// The codec a topic stores its batches in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicCompression {
    /// As produced (the default).
    Producer,
    Uncompressed,
    /// gzip at a level of 1 to 9, or -1 for zlib's default.
    Gzip(i32),
    Snappy,
    /// lz4 at a level of 1 to 17.
    Lz4(i32),
    /// zstd at a level of -131072 to 22.
    Zstd(i32),
}

impl TopicCompression {
    /// From `compression.type` and the `compression.<codec>.level` configs
    /// (already validated).
    pub fn from_configs(kind: &str, gzip: i32, lz4: i32, zstd: i32) -> TopicCompression {
        match kind {
            "uncompressed" => TopicCompression::Uncompressed,
            "gzip" => TopicCompression::Gzip(gzip),
            "snappy" => TopicCompression::Snappy,
            "lz4" => TopicCompression::Lz4(lz4),
            "zstd" => TopicCompression::Zstd(zstd),
            _ => TopicCompression::Producer,
        }
    }

    fn codec(self) -> Option<Compression> {
        Some(match self {
            TopicCompression::Producer => return None,
            TopicCompression::Uncompressed => Compression::None,
            TopicCompression::Gzip(_) => Compression::Gzip,
            TopicCompression::Snappy => Compression::Snappy,
            TopicCompression::Lz4(_) => Compression::Lz4,
            TopicCompression::Zstd(_) => Compression::Zstd,
        })
    }
}

#[derive(Debug, thiserror::Error)]
#[error("cannot rewrite the batch in the topic's compression.type: {0}")]
pub struct RecompressError(String);

/// The codec bits of a v2 batch's attributes.
fn batch_codec(batch: &[u8]) -> Option<i16> {
    let a = batch.get(21..23)?;
    Some(i16::from_be_bytes([a[0], a[1]]) & 0x7)
}

/// `batch` (one validated v2 batch) in `target`'s codec; `None` when it is
/// stored as produced.
pub fn recompress(
    batch: &[u8],
    target: TopicCompression,
) -> Result<Option<Bytes>, RecompressError> {
    let Some(codec) = target.codec() else {
        return Ok(None);
    };
    if batch_codec(batch) == Some(codec as i16) {
        return Ok(None);
    }
    // Decompressed within a bound first: the decoder would expand a bomb
    // without one.
    let mut input = crate::decompress::uncompressed(batch, crate::decompress::MAX_DECOMPRESSED)
        .map_err(|e| RecompressError(e.to_string()))?;
    let set = RecordBatchDecoder::decode(&mut input).map_err(|e| RecompressError(e.to_string()))?;
    let mut out = BytesMut::with_capacity(batch.len());
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec,
    };
    RecordBatchEncoder::encode_with_custom_compression(
        &mut out,
        &set.records,
        &options,
        Some(|raw: &mut BytesMut, out: &mut BytesMut, c: Compression| {
            compress(raw, out, c, target)
        }),
    )
    .map_err(|e| RecompressError(e.to_string()))?;
    Ok(Some(out.freeze()))
}

/// `raw` records compressed into `out` as `target` says (the cleaner's
/// rewrite of a batch in its own codec, see `crate::compaction`).
pub(crate) fn compress_section(
    raw: &mut BytesMut,
    out: &mut BytesMut,
    target: TopicCompression,
) -> anyhow::Result<()> {
    let codec = target.codec().unwrap_or(Compression::None);
    compress(raw, out, codec, target)
}

/// The topic's level where it has one; snappy and no compression through
/// the library's own writers (snappy in the xerial framing Kafka's clients
/// expect).
fn compress(
    raw: &mut BytesMut,
    out: &mut BytesMut,
    codec: Compression,
    target: TopicCompression,
) -> anyhow::Result<()> {
    use kafka_protocol::compression::{Compressor, Snappy};
    match (codec, target) {
        (Compression::None, _) => out.put_slice(raw),
        (Compression::Gzip, TopicCompression::Gzip(level)) => {
            let level = if level < 0 {
                flate2::Compression::default()
            } else {
                flate2::Compression::new(level as u32)
            };
            let mut w = flate2::write::GzEncoder::new(out.writer(), level);
            w.write_all(raw)?;
            w.finish()?;
        }
        (Compression::Lz4, TopicCompression::Lz4(level)) => {
            let mut w = lz4::EncoderBuilder::new()
                .level(level as u32)
                .block_mode(lz4::BlockMode::Independent)
                .build(out.writer())?;
            w.write_all(raw)?;
            let (_, r) = w.finish();
            r?;
        }
        (Compression::Zstd, TopicCompression::Zstd(level)) => {
            out.put_slice(&zstd::bulk::compress(raw, level)?);
        }
        (Compression::Snappy, _) => {
            <Snappy as Compressor<BytesMut>>::compress(out, |tmp: &mut BytesMut| {
                tmp.put_slice(raw);
                Ok(())
            })?;
        }
        (c, t) => anyhow::bail!("codec {c:?} does not match {t:?}"),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    fn batch(codec: Compression, producer: i64, n: i32) -> Bytes {
        let records: Vec<(String, String)> = (0..n)
            .map(|i| (format!("k{i}"), format!("value {i} ").repeat(20)))
            .collect();
        let refs: Vec<(Option<&str>, Option<&str>)> = records
            .iter()
            .map(|(k, v)| (Some(k.as_str()), Some(v.as_str())))
            .collect();
        let producer = (producer >= 0).then_some((producer, 3, 40));
        crate::test_batches::encode(0, codec, producer, &refs)
    }

    fn decoded(b: &Bytes) -> kafka_protocol::records::RecordSet {
        RecordBatchDecoder::decode(&mut b.clone()).unwrap()
    }

    #[test]
    fn every_codec_pair_keeps_the_records_and_the_producer_state() {
        let codecs = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ];
        let targets = [
            TopicCompression::Uncompressed,
            TopicCompression::Gzip(-1),
            TopicCompression::Gzip(9),
            TopicCompression::Snappy,
            TopicCompression::Lz4(9),
            TopicCompression::Zstd(3),
            TopicCompression::Zstd(-5),
        ];
        for from in codecs {
            let input = batch(from, 77, 25);
            for to in targets {
                let out = recompress(&input, to).unwrap();
                let want = to.codec().unwrap();
                if from == want {
                    assert!(out.is_none(), "{from:?} -> {to:?} rewritten");
                    continue;
                }
                let out = out.unwrap();
                assert_eq!(batch_codec(&out), Some(want as i16), "{from:?} -> {to:?}");
                crate::log::PartitionLog::validate(&out).expect("a valid batch");
                let (a, b) = (decoded(&input), decoded(&out));
                assert_eq!(a.records, b.records, "{from:?} -> {to:?}");
            }
        }
    }

    #[test]
    fn producer_keeps_the_batch_and_the_header_survives() {
        let input = batch(Compression::Lz4, 5, 3);
        assert!(recompress(&input, TopicCompression::Producer)
            .unwrap()
            .is_none());
        let out = recompress(&input, TopicCompression::Zstd(3))
            .unwrap()
            .unwrap();
        let (h_in, h_out) = (
            crate::log::PartitionLog::validate(&input).unwrap(),
            crate::log::PartitionLog::validate(&out).unwrap(),
        );
        assert_eq!(
            (
                h_in.producer_id,
                h_in.producer_epoch,
                h_in.base_sequence,
                h_in.last_offset_delta
            ),
            (
                h_out.producer_id,
                h_out.producer_epoch,
                h_out.base_sequence,
                h_out.last_offset_delta
            )
        );
    }

    #[test]
    fn a_batch_that_is_not_what_its_codec_says_is_an_error_not_a_panic() {
        // Records stored plainly under a header that claims gzip: a client
        // can send that with a valid CRC, and the leader must refuse it.
        let mut b = batch(Compression::None, -1, 4).to_vec();
        b[22] |= Compression::Gzip as u8;
        assert!(recompress(&b, TopicCompression::Zstd(3)).is_err());
    }
}
