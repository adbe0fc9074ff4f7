//! A small Kafka client for the region's own brokers: dc-link reads
//! committed batches with Fetch (the brokers return them exactly as stored,
//! offsets and epochs stamped) and manages mirror topics with the admin
//! APIs, so it needs nothing from the brokers that a Kafka client would not.
//! Codecs are the `kafka-protocol` crate's.

use std::collections::BTreeMap;
use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::create_partitions_request::CreatePartitionsTopic;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::describe_configs_request::DescribeConfigsResource;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLIENT_ID: &str = "chronik-dc-link";
const RESOURCE_TOPIC: i8 = 2;
/// Source 1 in DescribeConfigs: set on the topic (not a default).
const SOURCE_TOPIC_CONFIG: i8 = 1;

#[derive(Debug, thiserror::Error)]
pub enum KafkaError {
    #[error("{addr}: {source}")]
    Io {
        addr: String,
        source: std::io::Error,
    },
    #[error("{addr}: no answer within {0:?}", Duration::from_secs(30))]
    Timeout { addr: String },
    #[error("{addr}: cannot decode the {api:?} response: {message}")]
    Decode {
        addr: String,
        api: ApiKey,
        message: String,
    },
    #[error("{0}")]
    Kafka(String),
}

pub type Result<T> = std::result::Result<T, KafkaError>;

/// One connection; requests are sent one at a time.
pub struct Conn {
    addr: String,
    s: TcpStream,
    next_id: i32,
}

impl Conn {
    pub async fn connect(addr: &str) -> Result<Conn> {
        let s = tokio::time::timeout(Duration::from_secs(5), TcpStream::connect(addr))
            .await
            .map_err(|_| KafkaError::Timeout { addr: addr.into() })?
            .map_err(|source| KafkaError::Io {
                addr: addr.into(),
                source,
            })?;
        let _ = s.set_nodelay(true);
        Ok(Conn {
            addr: addr.to_string(),
            s,
            next_id: 1,
        })
    }

    pub fn addr(&self) -> &str {
        &self.addr
    }

    pub async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Result<Resp> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        let io = |source| KafkaError::Io {
            addr: self.addr.clone(),
            source,
        };
        let mut body = BytesMut::with_capacity(256);
        body.put_i32(0);
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(id)
            .with_client_id(Some(StrBytes::from_static_str(CLIENT_ID)))
            .encode(&mut body, key.request_header_version(version))
            .and_then(|_| req.encode(&mut body, version))
            .map_err(|e| KafkaError::Kafka(format!("encoding {key:?}: {e}")))?;
        let len = (body.len() - 4) as i32;
        body[0..4].copy_from_slice(&len.to_be_bytes());
        let exchange = async {
            self.s.write_all(&body).await?;
            let mut len = [0u8; 4];
            self.s.read_exact(&mut len).await?;
            let n = i32::from_be_bytes(len).max(0) as usize;
            let mut buf = vec![0u8; n];
            self.s.read_exact(&mut buf).await?;
            Ok::<_, std::io::Error>(Bytes::from(buf))
        };
        let mut resp = tokio::time::timeout(Duration::from_secs(30), exchange)
            .await
            .map_err(|_| KafkaError::Timeout {
                addr: self.addr.clone(),
            })?
            .map_err(io)?;
        let decode_err = |message: String| KafkaError::Decode {
            addr: self.addr.clone(),
            api: key,
            message,
        };
        let header = ResponseHeader::decode(&mut resp, key.response_header_version(version))
            .map_err(|e| decode_err(e.to_string()))?;
        if header.correlation_id != id {
            return Err(decode_err(format!(
                "correlation id {} for request {id}",
                header.correlation_id
            )));
        }
        Resp::decode(&mut resp, version).map_err(|e| decode_err(e.to_string()))
    }
}

/// A partition's leader and the broker addresses, from Metadata.
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    pub brokers: BTreeMap<i32, String>,
    pub topics: BTreeMap<String, TopicView>,
}

#[derive(Debug, Clone, Default)]
pub struct TopicView {
    pub error: i16,
    /// The topic's id: which incarnation of the name this is.
    pub id: uuid::Uuid,
    /// Leader id per partition (-1: none known).
    pub leaders: Vec<i32>,
    pub replication_factor: i32,
}

impl ClusterView {
    pub fn leader_addr(&self, topic: &str, partition: i32) -> Option<&str> {
        let t = self.topics.get(topic)?;
        let id = *t.leaders.get(partition as usize)?;
        self.brokers.get(&id).map(String::as_str)
    }
}

/// A connection to the first broker of `bootstrap` that accepts one.
pub async fn connect_any(bootstrap: &[String]) -> Result<Conn> {
    let mut last = KafkaError::Kafka("no bootstrap address".into());
    for addr in bootstrap {
        match Conn::connect(addr).await {
            Ok(c) => return Ok(c),
            Err(e) => last = e,
        }
    }
    Err(last)
}

/// Asks one broker of `bootstrap` for the whole cluster's metadata.
pub async fn metadata(bootstrap: &[String], topics: Option<&[String]>) -> Result<ClusterView> {
    let mut last = KafkaError::Kafka("no bootstrap address".into());
    for addr in bootstrap {
        match metadata_from(addr, topics).await {
            Ok(v) => return Ok(v),
            Err(e) => last = e,
        }
    }
    Err(last)
}

async fn metadata_from(addr: &str, topics: Option<&[String]>) -> Result<ClusterView> {
    let mut c = Conn::connect(addr).await?;
    let req = MetadataRequest::default()
        .with_topics(topics.map(|ts| {
            ts.iter()
                .map(|t| {
                    metadata_request::MetadataRequestTopic::default()
                        .with_name(Some(TopicName(StrBytes::from_string(t.clone()))))
                })
                .collect()
        }))
        .with_allow_auto_topic_creation(false);
    let resp: MetadataResponse = c.call(ApiKey::Metadata, 12, &req).await?;
    let mut v = ClusterView::default();
    for b in resp.brokers {
        v.brokers
            .insert(b.node_id.0, format!("{}:{}", b.host, b.port));
    }
    for t in resp.topics {
        let Some(name) = t.name else { continue };
        let mut parts: Vec<_> = t.partitions.iter().collect();
        parts.sort_by_key(|p| p.partition_index);
        v.topics.insert(
            name.to_string(),
            TopicView {
                error: t.error_code,
                id: t.topic_id,
                leaders: parts.iter().map(|p| p.leader_id.0).collect(),
                replication_factor: parts.first().map_or(0, |p| p.replica_nodes.len() as i32),
            },
        );
    }
    Ok(v)
}

/// The explicitly set configs of `topics` (defaults left out).
pub async fn topic_configs(
    c: &mut Conn,
    topics: &[String],
) -> Result<BTreeMap<String, BTreeMap<String, String>>> {
    let req = DescribeConfigsRequest::default().with_resources(
        topics
            .iter()
            .map(|t| {
                DescribeConfigsResource::default()
                    .with_resource_type(RESOURCE_TOPIC)
                    .with_resource_name(StrBytes::from_string(t.clone()))
                    // None = every config; the default (an empty list) means none.
                    .with_configuration_keys(None)
            })
            .collect(),
    );
    let resp: DescribeConfigsResponse = c.call(ApiKey::DescribeConfigs, 4, &req).await?;
    let mut out = BTreeMap::new();
    for r in resp.results {
        if r.error_code != 0 {
            continue;
        }
        let set: BTreeMap<String, String> = r
            .configs
            .into_iter()
            .filter(|c| c.config_source == SOURCE_TOPIC_CONFIG)
            .filter_map(|c| Some((c.name.to_string(), c.value?.to_string())))
            .collect();
        out.insert(r.resource_name.to_string(), set);
    }
    Ok(out)
}

/// Creates a topic; an existing topic is not an error.
pub async fn create_topic(
    c: &mut Conn,
    name: &str,
    partitions: i32,
    replication_factor: i16,
    configs: &BTreeMap<String, String>,
) -> Result<()> {
    let topic = CreatableTopic::default()
        .with_name(TopicName(StrBytes::from_string(name.into())))
        .with_num_partitions(partitions)
        .with_replication_factor(replication_factor)
        .with_configs(
            configs
                .iter()
                .map(|(k, v)| {
                    CreatableTopicConfig::default()
                        .with_name(StrBytes::from_string(k.clone()))
                        .with_value(Some(StrBytes::from_string(v.clone())))
                })
                .collect(),
        );
    let req = CreateTopicsRequest::default()
        .with_topics(vec![topic])
        .with_timeout_ms(30_000);
    let resp: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 7, &req).await?;
    for t in resp.topics {
        // 36: TOPIC_ALREADY_EXISTS.
        if t.error_code != 0 && t.error_code != 36 {
            return Err(KafkaError::Kafka(format!(
                "creating mirror topic {name}: error {} {}",
                t.error_code,
                t.error_message.as_deref().unwrap_or("")
            )));
        }
    }
    Ok(())
}

/// Produces one batch to a partition with acks=all; returns its base offset.
pub async fn produce(c: &mut Conn, topic: &str, partition: i32, batch: Bytes) -> Result<i64> {
    use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
    let req = ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(30_000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(TopicName(StrBytes::from_string(topic.into())))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])]);
    let resp: ProduceResponse = c.call(ApiKey::Produce, 8, &req).await?;
    let p = resp
        .responses
        .first()
        .and_then(|t| t.partition_responses.first())
        .ok_or_else(|| KafkaError::Kafka(format!("no answer for {topic}/{partition}")))?;
    if p.error_code != 0 {
        return Err(KafkaError::Kafka(format!(
            "producing to {topic}/{partition}: error {} {}",
            p.error_code,
            p.error_message.as_deref().unwrap_or("")
        )));
    }
    Ok(p.base_offset)
}

pub async fn create_partitions(c: &mut Conn, name: &str, count: i32) -> Result<()> {
    let req = CreatePartitionsRequest::default()
        .with_topics(vec![CreatePartitionsTopic::default()
            .with_name(TopicName(StrBytes::from_string(name.into())))
            .with_count(count)])
        .with_timeout_ms(30_000);
    let resp: CreatePartitionsResponse = c.call(ApiKey::CreatePartitions, 3, &req).await?;
    for r in resp.results {
        if r.error_code != 0 {
            return Err(KafkaError::Kafka(format!(
                "growing mirror topic {name} to {count} partitions: error {} {}",
                r.error_code,
                r.error_message.as_deref().unwrap_or("")
            )));
        }
    }
    Ok(())
}

/// What one Fetch of one partition returned.
#[derive(Debug)]
pub struct Fetched {
    pub error: i16,
    pub high_watermark: i64,
    pub log_start_offset: i64,
    pub records: Bytes,
}

/// Kafka's debugging replica id: the home broker then serves the records of
/// a `global_quorum` topic that its consumers cannot see yet, because no
/// mirror region holds them; shipping them is how the mirrors come to.
const DEBUGGING_REPLICA_ID: i32 = -2;

/// Fetches committed batches of one partition from its leader, waiting up
/// to `max_wait_ms` for data. With a topic id (not nil) the fetch names
/// the topic by id (Fetch v13), so it reads that incarnation of the name
/// only: a topic deleted and re-created since answers UNKNOWN_TOPIC_ID.
pub async fn fetch(
    c: &mut Conn,
    topic: &str,
    topic_id: uuid::Uuid,
    partition: i32,
    offset: i64,
    max_bytes: i32,
    max_wait_ms: i32,
) -> Result<Fetched> {
    let req = FetchRequest::default()
        .with_replica_id(BrokerId(DEBUGGING_REPLICA_ID))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(max_bytes)
        .with_isolation_level(0)
        .with_session_id(0)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_fetch_offset(offset)
                .with_last_fetched_epoch(-1)
                .with_log_start_offset(-1)
                .with_partition_max_bytes(max_bytes)])]);
    let version = if topic_id.is_nil() { 12 } else { 13 };
    let resp: FetchResponse = c.call(ApiKey::Fetch, version, &req).await?;
    if resp.error_code != 0 {
        return Ok(Fetched {
            error: resp.error_code,
            high_watermark: -1,
            log_start_offset: -1,
            records: Bytes::new(),
        });
    }
    let p = resp
        .responses
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition_index == partition)
        .ok_or_else(|| KafkaError::Kafka(format!("fetch answered without {topic}-{partition}")))?;
    Ok(Fetched {
        error: p.error_code,
        high_watermark: p.high_watermark,
        log_start_offset: p.log_start_offset,
        records: p.records.unwrap_or_default(),
    })
}

/// OffsetForLeaderEpoch: where `epoch` ends in the partition's log at its
/// leader (the first offset of the next epoch, or the log end): (the
/// largest epoch <= `epoch` the log knows, that end offset; -1 if none).
pub async fn epoch_end(
    c: &mut Conn,
    topic: &str,
    partition: i32,
    epoch: i32,
) -> Result<(i32, i64)> {
    use kafka_protocol::messages::offset_for_leader_epoch_request::{
        OffsetForLeaderPartition, OffsetForLeaderTopic,
    };
    let req = OffsetForLeaderEpochRequest::default()
        .with_replica_id(BrokerId(DEBUGGING_REPLICA_ID))
        .with_topics(vec![OffsetForLeaderTopic::default()
            .with_topic(TopicName(StrBytes::from_string(topic.into())))
            .with_partitions(vec![OffsetForLeaderPartition::default()
                .with_partition(partition)
                .with_current_leader_epoch(-1)
                .with_leader_epoch(epoch)])]);
    let resp: OffsetForLeaderEpochResponse = c.call(ApiKey::OffsetForLeaderEpoch, 4, &req).await?;
    let p = resp
        .topics
        .into_iter()
        .flat_map(|t| t.partitions)
        .find(|p| p.partition == partition)
        .ok_or_else(|| {
            KafkaError::Kafka(format!(
                "OffsetForLeaderEpoch answered without {topic}-{partition}"
            ))
        })?;
    if p.error_code != 0 {
        return Err(KafkaError::Kafka(format!(
            "OffsetForLeaderEpoch {topic}-{partition}: error {}",
            p.error_code
        )));
    }
    Ok((p.leader_epoch, p.end_offset))
}

/// The high watermark (ListOffsets latest) of `partitions`, all led by the
/// broker at the other end of `c`; partitions that error are left out.
pub async fn high_watermarks(
    c: &mut Conn,
    partitions: &[(String, i32)],
) -> Result<BTreeMap<(String, i32), i64>> {
    use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
    let mut by_topic: BTreeMap<&str, Vec<i32>> = BTreeMap::new();
    for (t, p) in partitions {
        by_topic.entry(t.as_str()).or_default().push(*p);
    }
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(DEBUGGING_REPLICA_ID))
        .with_topics(
            by_topic
                .into_iter()
                .map(|(t, ps)| {
                    ListOffsetsTopic::default()
                        .with_name(TopicName(StrBytes::from_string(t.to_string())))
                        .with_partitions(
                            ps.into_iter()
                                .map(|p| {
                                    ListOffsetsPartition::default()
                                        .with_partition_index(p)
                                        .with_current_leader_epoch(-1)
                                        .with_timestamp(-1)
                                })
                                .collect(),
                        )
                })
                .collect(),
        );
    let resp: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 7, &req).await?;
    let mut out = BTreeMap::new();
    for t in resp.topics {
        for p in t.partitions {
            if p.error_code == 0 {
                out.insert((t.name.to_string(), p.partition_index), p.offset);
            }
        }
    }
    Ok(out)
}
