//! The dc-link wire protocol, free of I/O: prost messages and the frame
//! codec that carries them on a QUIC stream.
//!
//! A frame is `len: u32 BE | crc32c: u32 BE | codec: u8 | payload[len]`, the
//! payload being one [`Envelope`], zstd-compressed when `codec` is 1. The
//! checksum covers the payload as sent, so a corrupt frame is rejected before
//! it is decompressed or decoded, and never reaches a log. QUIC's own packet
//! authentication already stops corruption on the wire; the checksum guards
//! everything between two dc-links' memory (buffers, proxies, bugs).
//!
//! Every envelope has an id and may answer another (`reply_to`), so one
//! stream carries one-way traffic (data, acks) and request/response pairs;
//! new message kinds (metadata-sync, forwarded produce) are new `oneof`
//! arms, which old peers skip as unknown fields.

use bytes::{Buf, BufMut, Bytes, BytesMut};
use prost::Message;

/// Bumped on incompatible changes; peers refuse a different version.
pub const PROTOCOL_VERSION: u32 = 1;
pub const HEADER_LEN: usize = 9;
/// Frames larger than this are refused outright: no peer sends them, so
/// a larger length means a corrupt or hostile stream.
pub const MAX_FRAME: usize = 128 << 20;

const CODEC_NONE: u8 = 0;
const CODEC_ZSTD: u8 = 1;

#[derive(Clone, PartialEq, Message)]
pub struct Envelope {
    #[prost(uint64, tag = "1")]
    pub id: u64,
    /// Non-zero: this answers the envelope with that id.
    #[prost(uint64, tag = "2")]
    pub reply_to: u64,
    #[prost(
        oneof = "Body",
        tags = "10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 30, 31, 32, 33, 34, 35, 36"
    )]
    pub body: Option<Body>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum Body {
    /// First message on a link, from the dialing (sending) region.
    #[prost(message, tag = "10")]
    Hello(Hello),
    #[prost(message, tag = "11")]
    HelloAck(Hello),
    /// Sender -> receiver: mirror this topic (create it if needed) and say
    /// where each partition's mirror ends.
    #[prost(message, tag = "12")]
    TopicOffer(TopicOffer),
    #[prost(message, tag = "13")]
    TopicReady(TopicReady),
    #[prost(message, tag = "14")]
    Data(Data),
    /// Receiver -> sender: the mirror's durable log end after a data frame.
    #[prost(message, tag = "15")]
    Ack(Ack),
    /// Receiver -> sender: a chunk did not start at the mirror's log end;
    /// resend from `offset`.
    #[prost(message, tag = "16")]
    Resync(Position),
    #[prost(message, tag = "17")]
    Error(ErrorMsg),
    /// Receiver -> sender, on every change: a mirror partition stopped
    /// taking appends (stop shipping it), or takes them again (resume from
    /// `offset`).
    #[prost(message, tag = "18")]
    PartitionStatus(PartitionStatus),
    /// Metadata stream only: a region's `__meta` summary
    /// (`chronik_metadata_sync::Summary`, encoded). The pushing side sends
    /// its own first; the merging side answers with its own after every
    /// merge, which tells the pusher what is still missing.
    #[prost(bytes = "bytes", tag = "19")]
    MetaSummary(Bytes),
    /// Metadata stream only, pusher -> merger: entries the merger lacks
    /// (`chronik_metadata_sync::Delta`, encoded).
    #[prost(bytes = "bytes", tag = "20")]
    MetaDelta(Bytes),
    /// Forward stream only, mirror region -> home region: produce these
    /// batches, as a client of the home region would.
    #[prost(message, tag = "21")]
    Forward(Forward),
    /// Forward stream only, home -> mirror region: each batch's outcome,
    /// in the order of the request's items.
    #[prost(message, tag = "22")]
    ForwardReply(ForwardReply),
    /// First message of a lease connection (a region's dc-link dialing a
    /// voter: another region's dc-link or the witness).
    #[prost(message, tag = "30")]
    LeaseHello(Hello),
    /// Holder -> voter: grant me round `round` for these topics.
    #[prost(message, tag = "31")]
    Renew(Renew),
    /// Voter -> holder: the grant, with the holder's topics it promoted
    /// away.
    #[prost(message, tag = "32")]
    Granted(Granted),
    /// A region -> voter: agree that this topic's home moves to me.
    #[prost(message, tag = "33")]
    Promote(Promote),
    #[prost(message, tag = "34")]
    PromoteReply(PromoteReply),
    /// Home -> mirror region, on the lease connection (which no data queues
    /// ahead of): the home high watermarks, so a mirror knows what it lacks
    /// even while the data link is backed up.
    #[prost(message, tag = "35")]
    Watermarks(Watermarks),
    /// Mirror region -> the other regions, on the lease connection: how
    /// much of each automatically failed-over topic its copy holds, so the
    /// most caught-up copy is the one promoted when the home is lost.
    #[prost(message, tag = "36")]
    MirrorEnds(MirrorEnds),
}

/// Produced batches of any partitions, forwarded from the region where a
/// client produced them to the topics' home region.
#[derive(Clone, PartialEq, Message)]
pub struct Forward {
    #[prost(message, repeated, tag = "1")]
    pub items: Vec<ForwardItem>,
    /// The client's produce timeout: the home answers within it.
    #[prost(int32, tag = "2")]
    pub timeout_ms: i32,
}

#[derive(Clone, PartialEq, Message)]
pub struct ForwardItem {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    /// The client's record batch(es), unchanged (producer id, epoch and
    /// sequence included, so the home deduplicates retries).
    #[prost(bytes = "bytes", tag = "3")]
    pub records: Bytes,
}

#[derive(Clone, PartialEq, Message)]
pub struct ForwardReply {
    #[prost(message, repeated, tag = "1")]
    pub results: Vec<ForwardResult>,
    /// The longest throttle the home's leaders asked for (an enforced RPO
    /// slowing producers down), passed on to the client.
    #[prost(int32, tag = "2")]
    pub throttle_time_ms: i32,
}

/// The home's answer for one batch: what its Produce answered.
#[derive(Clone, PartialEq, Message)]
pub struct ForwardResult {
    /// A Kafka error code; 0: written.
    #[prost(int32, tag = "1")]
    pub error_code: i32,
    #[prost(string, tag = "2")]
    pub error_message: String,
    #[prost(int64, tag = "3")]
    pub base_offset: i64,
    #[prost(int64, tag = "4")]
    pub log_append_time_ms: i64,
    #[prost(int64, tag = "5")]
    pub log_start_offset: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct MirrorEnds {
    #[prost(message, repeated, tag = "1")]
    pub topics: Vec<TopicEnd>,
}

#[derive(Clone, PartialEq, Message)]
pub struct TopicEnd {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    /// The sum of the copy's partition log ends.
    #[prost(int64, tag = "2")]
    pub end: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct TopicEpoch {
    /// The topic id (16 bytes).
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(uint64, tag = "2")]
    pub epoch: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Renew {
    #[prost(uint64, tag = "1")]
    pub round: u64,
    #[prost(message, repeated, tag = "2")]
    pub topics: Vec<TopicEpoch>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Granted {
    #[prost(uint64, tag = "1")]
    pub round: u64,
    #[prost(message, repeated, tag = "2")]
    pub moved: Vec<TopicEpoch>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Promote {
    #[prost(bytes = "vec", tag = "1")]
    pub topic_id: Vec<u8>,
    #[prost(string, tag = "2")]
    pub from: String,
    #[prost(uint64, tag = "3")]
    pub epoch: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct PromoteReply {
    #[prost(bool, tag = "1")]
    pub accepted: bool,
    /// Why not, when refused.
    #[prost(string, tag = "2")]
    pub refusal: String,
    /// When refused because the old home's lease is live: for how long.
    #[prost(uint64, tag = "3")]
    pub retry_after_ms: u64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Watermarks {
    #[prost(message, repeated, tag = "1")]
    pub partitions: Vec<Watermark>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Watermark {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int64, tag = "3")]
    pub high_watermark: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Hello {
    #[prost(string, tag = "1")]
    pub region: String,
    #[prost(uint32, tag = "2")]
    pub protocol_version: u32,
    /// The connection carries forwarded produces only (no mirroring): see
    /// `forward::run_link`.
    #[prost(bool, tag = "3")]
    pub forward_only: bool,
}

#[derive(Clone, PartialEq, Message)]
pub struct TopicOffer {
    #[prost(string, tag = "1")]
    pub name: String,
    #[prost(int32, tag = "2")]
    pub partitions: i32,
    #[prost(int32, tag = "3")]
    pub replication_factor: i32,
    /// The topic's explicit configs in the home region, `chronik.*` included.
    #[prost(btree_map = "string, string", tag = "4")]
    pub configs: std::collections::BTreeMap<String, String>,
    #[prost(string, tag = "5")]
    pub home_region: String,
    /// The home topic's id (hyphenated UUID), telling incarnations of one
    /// name apart; empty from a peer that predates it.
    #[prost(string, tag = "6")]
    pub topic_id: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct TopicReady {
    #[prost(string, tag = "1")]
    pub name: String,
    /// Where each partition's mirror log ends (durably).
    #[prost(message, repeated, tag = "2")]
    pub positions: Vec<Position>,
    /// Set when the mirror topic could not be made ready.
    #[prost(string, tag = "3")]
    pub error: String,
}

#[derive(Clone, PartialEq, Message)]
pub struct Position {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int64, tag = "3")]
    pub offset: i64,
    /// In `TopicReady`: the leader epoch of the mirror's last record, so
    /// the home can tell whether the mirror's log is a prefix of its own
    /// (after a failover the old home's may not be).
    #[prost(int32, optional, tag = "4")]
    pub last_epoch: Option<i32>,
}

#[derive(Clone, PartialEq, Message)]
pub struct Data {
    /// Per-link sequence number; acks name it.
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    #[prost(message, repeated, tag = "2")]
    pub chunks: Vec<Chunk>,
}

/// Whole stored batches of one partition, `[base_offset, next_offset)`.
#[derive(Clone, PartialEq, Message)]
pub struct Chunk {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(int64, tag = "3")]
    pub base_offset: i64,
    #[prost(int64, tag = "4")]
    pub next_offset: i64,
    #[prost(bytes = "bytes", tag = "5")]
    pub records: Bytes,
    /// The home log starts at `base_offset` (retention removed what came
    /// before): an empty mirror may start there.
    #[prost(bool, tag = "6")]
    pub from_log_start: bool,
    /// Where the home log starts when the chunk was read (0: unknown, from
    /// an older peer). The mirror is trimmed to it, so records deleted at
    /// home (DeleteRecords, retention) are not served from the mirror.
    #[prost(int64, tag = "7")]
    pub home_log_start: i64,
    /// The home high watermark when the chunk was read (0: unknown, from an
    /// older peer): with the mirror's end, what a failover would lose as
    /// last known here.
    #[prost(int64, tag = "8")]
    pub home_high_watermark: i64,
}

#[derive(Clone, PartialEq, Message)]
pub struct Ack {
    #[prost(uint64, tag = "1")]
    pub seq: u64,
    /// Durable mirror log end of every partition the frame touched.
    #[prost(message, repeated, tag = "2")]
    pub positions: Vec<Position>,
}

#[derive(Clone, PartialEq, Message)]
pub struct PartitionStatus {
    #[prost(string, tag = "1")]
    pub topic: String,
    #[prost(int32, tag = "2")]
    pub partition: i32,
    #[prost(enumeration = "Health", tag = "3")]
    pub health: i32,
    /// Why, when not `Ok`.
    #[prost(string, tag = "4")]
    pub error: String,
    /// With `Ok`: the mirror's durable log end, where shipping resumes.
    #[prost(int64, tag = "5")]
    pub offset: i64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, prost::Enumeration)]
#[repr(i32)]
pub enum Health {
    Ok = 0,
    Retrying = 1,
    Failed = 2,
}

#[derive(Clone, PartialEq, Message)]
pub struct ErrorMsg {
    #[prost(string, tag = "1")]
    pub message: String,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    #[error("frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLarge(usize),
    #[error("frame checksum mismatch (sent {sent:08x}, computed {computed:08x})")]
    Checksum { sent: u32, computed: u32 },
    #[error("unknown frame codec {0}")]
    Codec(u8),
    #[error("frame does not decompress: {0}")]
    Decompress(String),
    #[error("frame does not decode: {0}")]
    Decode(String),
}

/// Encodes one envelope as a frame; `zstd_level` compresses it (`None`:
/// sent as is). Returns the frame and the uncompressed payload size.
pub fn encode(env: &Envelope, zstd_level: Option<i32>) -> (Bytes, usize) {
    let plain = env.encode_to_vec();
    let raw_len = plain.len();
    let (codec, payload) = match zstd_level {
        // A frame that does not shrink goes uncompressed.
        Some(level) => match zstd::bulk::compress(&plain, level) {
            Ok(c) if c.len() < plain.len() => (CODEC_ZSTD, c),
            _ => (CODEC_NONE, plain),
        },
        None => (CODEC_NONE, plain),
    };
    let mut out = BytesMut::with_capacity(HEADER_LEN + payload.len());
    out.put_u32(payload.len() as u32);
    out.put_u32(crc32c::crc32c(&payload));
    out.put_u8(codec);
    out.extend_from_slice(&payload);
    (out.freeze(), raw_len)
}

/// Incremental frame decoder: feed it stream bytes, take envelopes out.
#[derive(Default)]
pub struct Decoder {
    buf: BytesMut,
}

impl Decoder {
    pub fn push(&mut self, data: &[u8]) {
        self.buf.extend_from_slice(data);
    }

    /// The next whole frame, if buffered: the envelope and its wire size.
    /// An error is final: the stream is not trustworthy after it.
    pub fn next_frame(&mut self) -> Result<Option<(Envelope, usize)>, FrameError> {
        if self.buf.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_be_bytes(self.buf[0..4].try_into().unwrap()) as usize;
        if len > MAX_FRAME {
            return Err(FrameError::TooLarge(len));
        }
        if self.buf.len() < HEADER_LEN + len {
            self.buf.reserve(HEADER_LEN + len - self.buf.len());
            return Ok(None);
        }
        let mut frame = self.buf.split_to(HEADER_LEN + len);
        frame.advance(4);
        let sent = frame.get_u32();
        let codec = frame.get_u8();
        let computed = crc32c::crc32c(&frame);
        if sent != computed {
            return Err(FrameError::Checksum { sent, computed });
        }
        let env = match codec {
            CODEC_NONE => Envelope::decode(frame.freeze()),
            CODEC_ZSTD => {
                let plain = zstd::stream::decode_all(&frame[..])
                    .map_err(|e| FrameError::Decompress(e.to_string()))?;
                Envelope::decode(Bytes::from(plain))
            }
            other => return Err(FrameError::Codec(other)),
        }
        .map_err(|e| FrameError::Decode(e.to_string()))?;
        Ok(Some((env, HEADER_LEN + len)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data_env(n: usize) -> Envelope {
        Envelope {
            id: 7,
            reply_to: 0,
            body: Some(Body::Data(Data {
                seq: 3,
                chunks: vec![Chunk {
                    topic: "orders".into(),
                    partition: 2,
                    base_offset: 100,
                    next_offset: 110,
                    records: Bytes::from(b"key=value;".repeat(n)),
                    from_log_start: false,
                    home_log_start: 0,
                    home_high_watermark: 120,
                }],
            })),
        }
    }

    #[test]
    fn frames_round_trip_in_pieces_and_compress() {
        let env = data_env(1000);
        let (frame, raw) = encode(&env, Some(3));
        assert!(frame.len() < raw / 4, "{} vs {raw}", frame.len());
        let (plain, _) = encode(&env, None);
        let mut d = Decoder::default();
        let both = [frame.clone(), plain].concat();
        for piece in both.chunks(7) {
            d.push(piece);
        }
        assert_eq!(d.next_frame().unwrap().unwrap().0, env);
        assert_eq!(d.next_frame().unwrap().unwrap().0, env);
        assert_eq!(d.next_frame().unwrap(), None);
    }

    #[test]
    fn any_flipped_byte_is_caught() {
        let (frame, _) = encode(&data_env(50), Some(3));
        for i in 0..frame.len() {
            let mut bad = frame.to_vec();
            bad[i] ^= 0x20;
            let mut d = Decoder::default();
            d.push(&bad);
            match d.next_frame() {
                // A flipped length byte may only make the frame look
                // longer (waiting for more) or too large.
                Ok(None) if i < 4 => {}
                Err(_) => {}
                other => panic!("byte {i}: corruption not detected: {other:?}"),
            }
        }
    }

    #[test]
    fn oversized_lengths_are_refused_before_buffering() {
        let mut d = Decoder::default();
        d.push(&[0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0]);
        assert_eq!(d.next_frame(), Err(FrameError::TooLarge(0xffff_ffff)));
    }
}
