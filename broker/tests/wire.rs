//! In-process wire tests: a real broker on an ephemeral port, driven with
//! requests encoded by the `kafka-protocol` crate over a real socket.
//! Client-library and Apache-Kafka conformance tests live in `tests/`.

use std::time::{Duration, Instant};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::metadata_request::MetadataRequestTopic;
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::*;
use kafka_protocol::protocol::{Decodable, Encodable, StrBytes};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use chronik_broker::batch::build;
use chronik_broker::Broker;
use chronik_topology::{BrokerConfig, Listeners};

/// A one-broker config on ephemeral loopback ports, data in `dir`.
fn local_config(dir: &std::path::Path, node_id: i32) -> BrokerConfig {
    let mut cfg = BrokerConfig {
        node_id,
        data_dir: dir.to_path_buf(),
        ..BrokerConfig::default()
    };
    cfg.listeners = Listeners {
        kafka: "127.0.0.1:0".parse().unwrap(),
        admin: Some("127.0.0.1:0".parse().unwrap()),
        advertised_kafka: None,
        raft: None,
        ..Listeners::default()
    };
    // No 3 s wait for more members before a new group's first rebalance.
    cfg.groups.initial_rebalance_delay_ms = 0;
    cfg
}

async fn start() -> (Broker, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = local_config(dir.path(), 1);
    cfg.limits.socket_request_max_bytes = 1 << 20;
    (Broker::start(cfg).await.unwrap(), dir)
}

struct Conn {
    s: TcpStream,
    next_id: i32,
}

impl Conn {
    async fn open(b: &Broker) -> Conn {
        Conn {
            s: TcpStream::connect(b.kafka_addr).await.unwrap(),
            next_id: 1,
        }
    }

    async fn send_raw(&mut self, frame: &[u8]) {
        self.s.write_all(frame).await.unwrap();
    }

    async fn call<Req: Encodable, Resp: Decodable>(
        &mut self,
        key: ApiKey,
        version: i16,
        req: &Req,
    ) -> Resp {
        let mut body = BytesMut::new();
        RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(self.next_id)
            .with_client_id(Some(StrBytes::from_static_str("wire-test")))
            .encode(&mut body, key.request_header_version(version))
            .unwrap();
        req.encode(&mut body, version)
            .unwrap_or_else(|e| panic!("encoding {key:?} v{version}: {e}"));
        let mut frame = BytesMut::new();
        frame.put_i32(body.len() as i32);
        frame.extend_from_slice(&body);
        self.send_raw(&frame).await;
        let mut resp = self.read_frame().await.expect("response");
        let header =
            ResponseHeader::decode(&mut resp, key.response_header_version(version)).unwrap();
        assert_eq!(header.correlation_id, self.next_id);
        self.next_id += 1;
        Resp::decode(&mut resp, version).unwrap()
    }

    /// None when the broker closed the connection.
    async fn read_frame(&mut self) -> Option<Bytes> {
        let mut len = [0u8; 4];
        if self.s.read_exact(&mut len).await.is_err() {
            return None;
        }
        let mut buf = vec![0u8; i32::from_be_bytes(len) as usize];
        self.s.read_exact(&mut buf).await.ok()?;
        Some(Bytes::from(buf))
    }

    async fn is_closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(
            tokio::time::timeout(Duration::from_secs(5), self.s.read(&mut b)).await,
            Ok(Ok(0)) | Ok(Err(_))
        )
    }
}

fn topic_name(s: &str) -> TopicName {
    TopicName(StrBytes::from_string(s.to_string()))
}

async fn create_topic(c: &mut Conn, name: &str, partitions: i32) -> uuid::Uuid {
    let req = CreateTopicsRequest::default().with_topics(vec![
        create_topics_request::CreatableTopic::default()
            .with_name(topic_name(name))
            .with_num_partitions(partitions)
            .with_replication_factor(1),
    ]);
    let resp: CreateTopicsResponse = c.call(ApiKey::CreateTopics, 7, &req).await;
    assert_eq!(
        resp.topics[0].error_code, 0,
        "{:?}",
        resp.topics[0].error_message
    );
    resp.topics[0].topic_id
}

fn produce_req(topic: &str, partition: i32, records: Vec<u8>, acks: i16) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(acks)
        .with_timeout_ms(5000)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(Bytes::from(records)))])])
}

fn fetch_req(topic_id: uuid::Uuid, offset: i64, max_wait_ms: i32) -> FetchRequest {
    FetchRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_max_wait_ms(max_wait_ms)
        .with_min_bytes(1)
        .with_max_bytes(1 << 20)
        .with_session_epoch(-1)
        .with_topics(vec![FetchTopic::default()
            .with_topic_id(topic_id)
            .with_partitions(vec![FetchPartition::default()
                .with_partition(0)
                .with_fetch_offset(offset)
                .with_current_leader_epoch(-1)
                .with_partition_max_bytes(1 << 20)])])
}

#[tokio::test]
async fn produce_then_fetch_returns_the_stored_bytes() {
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    let id = create_topic(&mut c, "orders", 2).await;
    let batch = build::simple(5, 1_700_000_000_000, None);
    let resp: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("orders", 0, batch.clone(), -1),
        )
        .await;
    let p = &resp.responses[0].partition_responses[0];
    assert_eq!((p.error_code, p.base_offset), (0, 0));
    let resp: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("orders", 0, batch.clone(), 1),
        )
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].base_offset, 5);

    let f: FetchResponse = c.call(ApiKey::Fetch, 13, &fetch_req(id, 0, 0)).await;
    let pd = &f.responses[0].partitions[0];
    assert_eq!(pd.error_code, 0);
    assert_eq!(pd.high_watermark, 10);
    let recs = pd.records.clone().unwrap();
    assert_eq!(recs.len(), 2 * batch.len());
    // Bytes after the offset/epoch fields are exactly what was produced.
    assert_eq!(&recs[16..batch.len()], &batch[16..]);
    assert_eq!(
        i64::from_be_bytes(recs[batch.len()..batch.len() + 8].try_into().unwrap()),
        5
    );
    b.shutdown().await;
}

#[tokio::test]
async fn fetch_long_polls_until_data_arrives() {
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    let id = create_topic(&mut c, "lp", 1).await;
    let addr = b.kafka_addr;
    let producer = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let mut p = Conn {
            s: TcpStream::connect(addr).await.unwrap(),
            next_id: 1,
        };
        let _: ProduceResponse = p
            .call(
                ApiKey::Produce,
                9,
                &produce_req("lp", 0, build::simple(1, 0, None), -1),
            )
            .await;
    });
    let t = Instant::now();
    let f: FetchResponse = c.call(ApiKey::Fetch, 13, &fetch_req(id, 0, 5000)).await;
    let waited = t.elapsed();
    assert!(!f.responses[0].partitions[0]
        .records
        .as_ref()
        .unwrap()
        .is_empty());
    assert!(
        waited >= Duration::from_millis(300) && waited < Duration::from_millis(4000),
        "{waited:?}"
    );
    producer.await.unwrap();

    // Nothing arrives: the fetch returns empty after about max_wait.
    let t = Instant::now();
    let f: FetchResponse = c.call(ApiKey::Fetch, 13, &fetch_req(id, 1, 300)).await;
    assert!(f.responses[0].partitions[0]
        .records
        .as_ref()
        .unwrap()
        .is_empty());
    assert!(
        t.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t.elapsed()
    );
    b.shutdown().await;
}

#[tokio::test]
async fn bad_crc_and_unknown_topic_get_kafka_error_codes() {
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    create_topic(&mut c, "t", 1).await;
    let mut batch = build::simple(2, 0, None);
    let n = batch.len();
    batch[n - 1] ^= 1;
    let resp: ProduceResponse = c
        .call(ApiKey::Produce, 9, &produce_req("t", 0, batch, -1))
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 2);
    let resp: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("nope", 0, build::simple(1, 0, None), -1),
        )
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].error_code, 3);
    // The log was not touched by the corrupt batch.
    let resp: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("t", 0, build::simple(1, 0, None), -1),
        )
        .await;
    assert_eq!(resp.responses[0].partition_responses[0].base_offset, 0);
    b.shutdown().await;
}

#[tokio::test]
async fn metadata_auto_creates_and_rejects_bad_names() {
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    let req = MetadataRequest::default()
        .with_allow_auto_topic_creation(true)
        .with_topics(Some(vec![
            MetadataRequestTopic::default().with_name(Some(topic_name("auto"))),
            MetadataRequestTopic::default().with_name(Some(topic_name("bad name!"))),
        ]));
    let resp: MetadataResponse = c.call(ApiKey::Metadata, 12, &req).await;
    assert_eq!(resp.topics[0].error_code, 0);
    assert_eq!(resp.topics[0].partitions.len(), 1);
    assert_eq!(resp.topics[0].partitions[0].leader_id, BrokerId(1));
    assert_eq!(resp.topics[1].error_code, 17);
    assert_eq!(resp.brokers[0].port as u16, b.kafka_addr.port());
    b.shutdown().await;
}

#[tokio::test]
async fn protocol_violations_close_the_connection() {
    let (b, _dir) = start().await;
    // Larger than socket_request_max_bytes (1 MiB here).
    let mut c = Conn::open(&b).await;
    c.send_raw(&(2i32 << 20).to_be_bytes()).await;
    assert!(c.is_closed().await);
    // Negative size.
    let mut c = Conn::open(&b).await;
    c.send_raw(&(-5i32).to_be_bytes()).await;
    assert!(c.is_closed().await);
    // Unknown API key.
    let mut c = Conn::open(&b).await;
    c.send_raw(&[0, 0, 0, 10, 0x27, 0x0f, 0, 0, 0, 0, 0, 1, 0xff, 0xff])
        .await;
    assert!(c.is_closed().await);
    // ApiVersions from the future: v0-format answer with UNSUPPORTED_VERSION.
    let mut c = Conn::open(&b).await;
    c.send_raw(&[0, 0, 0, 11, 0, 18, 0, 99, 0, 0, 0, 7, 0xff, 0xff, 0])
        .await;
    let mut resp = c.read_frame().await.expect("fallback response");
    assert_eq!(resp.get_i32(), 7);
    assert_eq!(resp.get_i16(), 35);
    assert!(resp.get_i32() > 0);
    // ...but only if its header parses as the newest ApiVersions header.
    let mut c = Conn::open(&b).await;
    c.send_raw(&[0, 0, 0, 10, 0, 18, 0, 99, 0, 0, 0, 7, 0xff, 0xff])
        .await;
    assert!(c.is_closed().await);
    // The broker is still healthy for everyone else.
    let mut c = Conn::open(&b).await;
    let v: ApiVersionsResponse = c
        .call(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())
        .await;
    assert_eq!(v.error_code, 0);
    assert!(v
        .api_keys
        .iter()
        .any(|k| k.api_key == ApiKey::Produce as i16 && k.max_version == 11));
    b.shutdown().await;
}

#[tokio::test]
async fn data_survives_restart() {
    let dir = tempfile::tempdir().unwrap();
    let mk = || {
        let mut cfg = BrokerConfig {
            data_dir: dir.path().to_path_buf(),
            ..BrokerConfig::default()
        };
        cfg.listeners = Listeners {
            kafka: "127.0.0.1:0".parse().unwrap(),
            admin: Some("127.0.0.1:0".parse().unwrap()),
            advertised_kafka: None,
            raft: None,
            ..Listeners::default()
        };
        cfg
    };
    let b = Broker::start(mk()).await.unwrap();
    let mut c = Conn::open(&b).await;
    let id = create_topic(&mut c, "keep", 1).await;
    for _ in 0..10 {
        let _: ProduceResponse = c
            .call(
                ApiKey::Produce,
                9,
                &produce_req("keep", 0, build::simple(3, 0, None), -1),
            )
            .await;
    }
    drop(c);
    b.shutdown().await;
    let b = Broker::start(mk()).await.unwrap();
    let mut c = Conn::open(&b).await;
    let f: FetchResponse = c.call(ApiKey::Fetch, 13, &fetch_req(id, 27, 0)).await;
    let pd = &f.responses[0].partitions[0];
    assert_eq!(pd.high_watermark, 30);
    assert_eq!(
        i64::from_be_bytes(pd.records.as_ref().unwrap()[0..8].try_into().unwrap()),
        27
    );
    b.shutdown().await;
}

/// A transactional id's producer id and epoch (InitProducerId v4).
async fn txn_init(c: &mut Conn, id: &str) -> (i64, i16) {
    let req = InitProducerIdRequest::default()
        .with_transactional_id(Some(TransactionalId(StrBytes::from_string(id.to_string()))))
        .with_transaction_timeout_ms(60_000)
        .with_producer_id(ProducerId(-1))
        .with_producer_epoch(-1);
    let r: InitProducerIdResponse = c.call(ApiKey::InitProducerId, 4, &req).await;
    assert_eq!(r.error_code, 0, "InitProducerId for {id}");
    (r.producer_id.0, r.producer_epoch)
}

/// Partition 0 of `topic` joins `id`'s open transaction (AddPartitionsToTxn v3).
async fn txn_add(c: &mut Conn, id: &str, (pid, epoch): (i64, i16), topic: &str) {
    let add = AddPartitionsToTxnRequest::default()
        .with_v3_and_below_transactional_id(TransactionalId(StrBytes::from_string(id.to_string())))
        .with_v3_and_below_producer_id(ProducerId(pid))
        .with_v3_and_below_producer_epoch(epoch)
        .with_v3_and_below_topics(vec![
            add_partitions_to_txn_request::AddPartitionsToTxnTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![0]),
        ]);
    let r: AddPartitionsToTxnResponse = c.call(ApiKey::AddPartitionsToTxn, 3, &add).await;
    assert_eq!(
        r.results_by_topic_v3_and_below[0].results_by_partition[0].partition_error_code, 0,
        "AddPartitionsToTxn {id} {topic}"
    );
}

/// Every API at every advertised version, including error paths, must get a
/// decodable answer: a field set outside its version would otherwise close
/// the connection.
#[tokio::test]
async fn every_advertised_version_answers() {
    use chronik_broker::protocol::SUPPORTED;
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    let id = create_topic(&mut c, "all-versions", 1).await;
    let mut n = 0;
    for &(key, lo, hi) in SUPPORTED {
        for v in lo..=hi {
            let fresh = format!("t-{}-{v}", key as i16);
            match key {
                ApiKey::Produce => {
                    for topic in ["all-versions", "missing-topic"] {
                        let r: ProduceResponse = c
                            .call(
                                key,
                                v,
                                &produce_req(topic, 0, build::simple(2, 0, None), -1),
                            )
                            .await;
                        assert_eq!(r.responses.len(), 1, "Produce v{v}");
                    }
                }
                ApiKey::Fetch => {
                    let mut req = fetch_req(id, 0, 0);
                    if v < 13 {
                        req.topics[0].topic = topic_name("all-versions");
                    }
                    let r: FetchResponse = c.call(key, v, &req).await;
                    assert_eq!(r.responses[0].partitions[0].error_code, 0, "Fetch v{v}");
                    req.topics[0].partitions[0].fetch_offset = 1 << 40;
                    let r: FetchResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        r.responses[0].partitions[0].error_code, 1,
                        "Fetch v{v} out of range"
                    );
                }
                ApiKey::ListOffsets => {
                    use list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
                    for ts in [-2, -1, 0] {
                        let req = ListOffsetsRequest::default()
                            .with_replica_id(BrokerId(-1))
                            .with_topics(vec![ListOffsetsTopic::default()
                                .with_name(topic_name("all-versions"))
                                .with_partitions(vec![ListOffsetsPartition::default()
                                    .with_partition_index(0)
                                    .with_timestamp(ts)])]);
                        let r: ListOffsetsResponse = c.call(key, v, &req).await;
                        assert_eq!(
                            r.topics[0].partitions[0].error_code, 0,
                            "ListOffsets v{v} ts {ts}"
                        );
                    }
                }
                ApiKey::Metadata => {
                    let all = if v == 0 { Some(vec![]) } else { None };
                    let r: MetadataResponse = c
                        .call(key, v, &MetadataRequest::default().with_topics(all))
                        .await;
                    assert!(!r.topics.is_empty(), "Metadata v{v}");
                    let named = MetadataRequest::default().with_topics(Some(vec![
                        MetadataRequestTopic::default().with_name(Some(topic_name(&fresh))),
                    ]));
                    let _: MetadataResponse = c.call(key, v, &named).await;
                }
                ApiKey::ApiVersions => {
                    let r: ApiVersionsResponse =
                        c.call(key, v, &ApiVersionsRequest::default()).await;
                    assert_eq!(r.error_code, 0);
                }
                ApiKey::CreateTopics => {
                    let t = create_topics_request::CreatableTopic::default()
                        .with_name(topic_name(&fresh))
                        .with_num_partitions(1)
                        .with_replication_factor(1);
                    let bad = t.clone().with_name(topic_name("bad name"));
                    let r: CreateTopicsResponse = c
                        .call(
                            key,
                            v,
                            &CreateTopicsRequest::default().with_topics(vec![t, bad]),
                        )
                        .await;
                    assert_eq!(
                        (r.topics[0].error_code, r.topics[1].error_code),
                        (0, 17),
                        "CreateTopics v{v}"
                    );
                }
                ApiKey::DeleteTopics => {
                    create_topic(&mut c, &fresh, 1).await;
                    let req = if v >= 6 {
                        DeleteTopicsRequest::default().with_topics(vec![
                            delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(topic_name(&fresh))),
                            delete_topics_request::DeleteTopicState::default()
                                .with_name(Some(topic_name("never-was"))),
                        ])
                    } else {
                        DeleteTopicsRequest::default()
                            .with_topic_names(vec![topic_name(&fresh), topic_name("never-was")])
                    };
                    let r: DeleteTopicsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.responses[0].error_code, r.responses[1].error_code),
                        (0, 3),
                        "DeleteTopics v{v}"
                    );
                }
                ApiKey::InitProducerId => {
                    let idempotent = InitProducerIdRequest::default().with_transactional_id(None);
                    let r: InitProducerIdResponse = c.call(key, v, &idempotent).await;
                    assert_eq!(r.error_code, 0);
                    let r2: InitProducerIdResponse = c.call(key, v, &idempotent).await;
                    assert!(
                        r2.producer_id.0 > r.producer_id.0,
                        "fresh producer id each time"
                    );
                    let txn = InitProducerIdRequest::default()
                        .with_transactional_id(Some(TransactionalId(StrBytes::from_static_str(
                            "txn",
                        ))))
                        .with_transaction_timeout_ms(60_000);
                    let r: InitProducerIdResponse = c.call(key, v, &txn).await;
                    assert_eq!(r.error_code, 0, "InitProducerId v{v} transactional");
                    let again: InitProducerIdResponse = c.call(key, v, &txn).await;
                    assert_eq!(
                        (again.producer_id, again.producer_epoch),
                        (r.producer_id, r.producer_epoch + 1),
                        "a second init bumps the epoch"
                    );
                }
                ApiKey::AddPartitionsToTxn => {
                    use add_partitions_to_txn_request::AddPartitionsToTxnTopic;
                    let (pid, epoch) = txn_init(&mut c, &fresh).await;
                    let add = |topics: Vec<&str>| {
                        AddPartitionsToTxnRequest::default()
                            .with_v3_and_below_transactional_id(TransactionalId(
                                StrBytes::from_string(fresh.clone()),
                            ))
                            .with_v3_and_below_producer_id(ProducerId(pid))
                            .with_v3_and_below_producer_epoch(epoch)
                            .with_v3_and_below_topics(
                                topics
                                    .into_iter()
                                    .map(|t| {
                                        AddPartitionsToTxnTopic::default()
                                            .with_name(topic_name(t))
                                            .with_partitions(vec![0])
                                    })
                                    .collect(),
                            )
                    };
                    let r: AddPartitionsToTxnResponse = c
                        .call(key, v, &add(vec!["all-versions", "missing-topic"]))
                        .await;
                    let codes: Vec<i16> = r
                        .results_by_topic_v3_and_below
                        .iter()
                        .map(|t| t.results_by_partition[0].partition_error_code)
                        .collect();
                    assert_eq!(
                        codes,
                        vec![55, 3],
                        "AddPartitionsToTxn v{v}: not attempted, unknown"
                    );
                    let r: AddPartitionsToTxnResponse =
                        c.call(key, v, &add(vec!["all-versions"])).await;
                    assert_eq!(
                        r.results_by_topic_v3_and_below[0].results_by_partition[0]
                            .partition_error_code,
                        0
                    );
                }
                ApiKey::AddOffsetsToTxn => {
                    let (pid, epoch) = txn_init(&mut c, &fresh).await;
                    let req = |pid: i64| {
                        AddOffsetsToTxnRequest::default()
                            .with_transactional_id(TransactionalId(StrBytes::from_string(
                                fresh.clone(),
                            )))
                            .with_producer_id(ProducerId(pid))
                            .with_producer_epoch(epoch)
                            .with_group_id(GroupId(StrBytes::from_static_str("txn-group")))
                    };
                    let r: AddOffsetsToTxnResponse = c.call(key, v, &req(pid + 1)).await;
                    assert_eq!(
                        r.error_code, 49,
                        "AddOffsetsToTxn v{v}: INVALID_PRODUCER_ID_MAPPING"
                    );
                    let r: AddOffsetsToTxnResponse = c.call(key, v, &req(pid)).await;
                    assert_eq!(r.error_code, 0, "AddOffsetsToTxn v{v}");
                }
                ApiKey::EndTxn => {
                    let (pid, epoch) = txn_init(&mut c, &fresh).await;
                    let req = EndTxnRequest::default()
                        .with_transactional_id(TransactionalId(StrBytes::from_string(
                            fresh.clone(),
                        )))
                        .with_producer_id(ProducerId(pid))
                        .with_producer_epoch(epoch)
                        .with_committed(true);
                    let r: EndTxnResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        r.error_code, 48,
                        "EndTxn v{v} with nothing open: INVALID_TXN_STATE"
                    );
                    let stale = req.clone().with_producer_epoch(epoch - 1);
                    let r: EndTxnResponse = c.call(key, v, &stale).await;
                    assert_eq!(
                        r.error_code, 90,
                        "EndTxn v{v} at an old epoch: PRODUCER_FENCED"
                    );
                }
                ApiKey::TxnOffsetCommit => {
                    use txn_offset_commit_request::{
                        TxnOffsetCommitRequestPartition, TxnOffsetCommitRequestTopic,
                    };
                    let (pid, epoch) = txn_init(&mut c, &fresh).await;
                    let req = TxnOffsetCommitRequest::default()
                        .with_transactional_id(TransactionalId(StrBytes::from_string(
                            fresh.clone(),
                        )))
                        .with_group_id(GroupId(StrBytes::from_static_str("txn-group")))
                        .with_producer_id(ProducerId(pid))
                        .with_producer_epoch(epoch)
                        .with_generation_id(-1)
                        .with_topics(vec![TxnOffsetCommitRequestTopic::default()
                            .with_name(topic_name("all-versions"))
                            .with_partitions(vec![TxnOffsetCommitRequestPartition::default()
                                .with_partition_index(0)
                                .with_committed_offset(1)])]);
                    let r: TxnOffsetCommitResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        r.topics[0].partitions[0].error_code, 48,
                        "TxnOffsetCommit v{v} before AddOffsetsToTxn: INVALID_TXN_STATE"
                    );
                }
                ApiKey::DescribeTransactions => {
                    txn_init(&mut c, &fresh).await;
                    let req = DescribeTransactionsRequest::default().with_transactional_ids(vec![
                        TransactionalId(StrBytes::from_string(fresh.clone())),
                        TransactionalId(StrBytes::from_static_str("never-was")),
                    ]);
                    let r: DescribeTransactionsResponse = c.call(key, v, &req).await;
                    let s = &r.transaction_states;
                    assert_eq!(
                        (
                            s[0].error_code,
                            s[0].transaction_state.as_str(),
                            s[1].error_code
                        ),
                        (0, "Empty", 105),
                        "DescribeTransactions v{v}"
                    );
                }
                ApiKey::ListTransactions => {
                    txn_init(&mut c, &fresh).await;
                    let req = ListTransactionsRequest::default().with_state_filters(vec![
                        StrBytes::from_static_str("Empty"),
                        StrBytes::from_static_str("Bogus"),
                    ]);
                    let r: ListTransactionsResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 0);
                    assert!(r
                        .transaction_states
                        .iter()
                        .any(|t| t.transactional_id.0.as_str() == fresh));
                    assert_eq!(
                        r.unknown_state_filters,
                        vec![StrBytes::from_static_str("Bogus")]
                    );
                }
                ApiKey::DescribeConfigs => {
                    use describe_configs_request::DescribeConfigsResource;
                    let req = DescribeConfigsRequest::default()
                        .with_include_documentation(v >= 3)
                        .with_resources(vec![
                            DescribeConfigsResource::default()
                                .with_configuration_keys(None)
                                .with_resource_type(2)
                                .with_resource_name(StrBytes::from_static_str("all-versions")),
                            DescribeConfigsResource::default()
                                .with_configuration_keys(None)
                                .with_resource_type(2)
                                .with_resource_name(StrBytes::from_static_str("never-was")),
                            DescribeConfigsResource::default()
                                .with_configuration_keys(None)
                                .with_resource_type(4)
                                .with_resource_name(StrBytes::from_static_str("1")),
                        ]);
                    let r: DescribeConfigsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        r.results.iter().map(|x| x.error_code).collect::<Vec<_>>(),
                        vec![0, 3, 0],
                        "DescribeConfigs v{v}"
                    );
                    assert!(r.results[0]
                        .configs
                        .iter()
                        .any(|e| e.name.as_str() == "retention.ms"));
                }
                ApiKey::CreatePartitions => {
                    create_topic(&mut c, &fresh, 1).await;
                    let req = CreatePartitionsRequest::default().with_topics(vec![
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(topic_name(&fresh))
                            .with_count(2),
                        create_partitions_request::CreatePartitionsTopic::default()
                            .with_name(topic_name(&fresh))
                            .with_count(1),
                    ]);
                    let r: CreatePartitionsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.results[0].error_code, r.results[1].error_code),
                        (0, 37),
                        "CreatePartitions v{v}"
                    );
                }
                ApiKey::IncrementalAlterConfigs => {
                    use incremental_alter_configs_request::{
                        AlterConfigsResource, AlterableConfig,
                    };
                    let set = |name: &'static str, value: &'static str| {
                        AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("all-versions"))
                            .with_configs(vec![AlterableConfig::default()
                                .with_name(StrBytes::from_static_str(name))
                                .with_value(Some(StrBytes::from_static_str(value)))])
                    };
                    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
                        set("retention.ms", "86400000"),
                        set("cleanup.policy", "shred"),
                    ]);
                    let r: IncrementalAlterConfigsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.responses[0].error_code, r.responses[1].error_code),
                        (0, 40),
                        "IncrementalAlterConfigs v{v}"
                    );
                }
                ApiKey::AlterConfigs => {
                    use alter_configs_request::{AlterConfigsResource, AlterableConfig};
                    let set = |name: &'static str, value: &'static str| {
                        AlterConfigsResource::default()
                            .with_resource_type(2)
                            .with_resource_name(StrBytes::from_static_str("all-versions"))
                            .with_configs(vec![AlterableConfig::default()
                                .with_name(StrBytes::from_static_str(name))
                                .with_value(Some(StrBytes::from_static_str(value)))])
                    };
                    let req = AlterConfigsRequest::default().with_resources(vec![
                        set("retention.ms", "3600000"),
                        set("cleanup.policy", "shred"),
                    ]);
                    let r: AlterConfigsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.responses[0].error_code, r.responses[1].error_code),
                        (0, 40),
                        "AlterConfigs v{v}"
                    );
                }
                ApiKey::DescribeCluster => {
                    let r: DescribeClusterResponse =
                        c.call(key, v, &DescribeClusterRequest::default()).await;
                    assert_eq!(r.brokers.len(), 1);
                }
                ApiKey::FindCoordinator => {
                    let mut req = FindCoordinatorRequest::default();
                    if v >= 4 {
                        req.coordinator_keys = vec![StrBytes::from_static_str("g")];
                    } else {
                        req.key = StrBytes::from_static_str("g");
                    }
                    let r: FindCoordinatorResponse = c.call(key, v, &req).await;
                    let (err, node) = if v >= 4 {
                        (r.coordinators[0].error_code, r.coordinators[0].node_id.0)
                    } else {
                        (r.error_code, r.node_id.0)
                    };
                    assert_eq!((err, node), (0, 1), "FindCoordinator v{v}");
                }
                ApiKey::JoinGroup => {
                    let group = GroupId(StrBytes::from_string(fresh.clone()));
                    let join = |member: StrBytes| {
                        JoinGroupRequest::default()
                            .with_group_id(group.clone())
                            .with_session_timeout_ms(10_000)
                            .with_rebalance_timeout_ms(10_000)
                            .with_member_id(member)
                            .with_protocol_type(StrBytes::from_static_str("consumer"))
                            .with_protocols(vec![
                                join_group_request::JoinGroupRequestProtocol::default()
                                    .with_name(StrBytes::from_static_str("range"))
                                    .with_metadata(Bytes::from_static(b"m")),
                            ])
                    };
                    let mut r: JoinGroupResponse = c.call(key, v, &join(StrBytes::default())).await;
                    if v >= 4 {
                        // v4+: the first join only hands out a member id.
                        assert_eq!(r.error_code, 79, "JoinGroup v{v}");
                        assert!(!r.member_id.is_empty());
                        r = c.call(key, v, &join(r.member_id.clone())).await;
                    }
                    assert_eq!((r.error_code, r.generation_id), (0, 1), "JoinGroup v{v}");
                    assert_eq!(r.leader, r.member_id, "JoinGroup v{v}: a lone member leads");
                    assert_eq!(r.members.len(), 1, "JoinGroup v{v}");
                }
                ApiKey::SyncGroup => {
                    let req = SyncGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(fresh.clone())))
                        .with_generation_id(1)
                        .with_member_id(StrBytes::from_static_str("nobody"));
                    let r: SyncGroupResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 25, "SyncGroup v{v}");
                }
                ApiKey::Heartbeat => {
                    let req = HeartbeatRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(fresh.clone())))
                        .with_generation_id(1)
                        .with_member_id(StrBytes::from_static_str("nobody"));
                    let r: HeartbeatResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 25, "Heartbeat v{v}");
                }
                ApiKey::LeaveGroup => {
                    let mut req = LeaveGroupRequest::default()
                        .with_group_id(GroupId(StrBytes::from_string(fresh.clone())));
                    if v >= 3 {
                        req.members = vec![leave_group_request::MemberIdentity::default()
                            .with_member_id(StrBytes::from_static_str("nobody"))];
                    } else {
                        req.member_id = StrBytes::from_static_str("nobody");
                    }
                    let r: LeaveGroupResponse = c.call(key, v, &req).await;
                    let code = if v >= 3 {
                        r.members[0].error_code
                    } else {
                        r.error_code
                    };
                    assert_eq!(code, 25, "LeaveGroup v{v}");
                }
                ApiKey::OffsetCommit => {
                    use offset_commit_request::{
                        OffsetCommitRequestPartition, OffsetCommitRequestTopic,
                    };
                    let commit = |topic: &'static str| {
                        OffsetCommitRequest::default()
                            .with_group_id(GroupId(StrBytes::from_string(fresh.clone())))
                            .with_generation_id_or_member_epoch(-1)
                            .with_retention_time_ms(-1)
                            .with_topics(vec![OffsetCommitRequestTopic::default()
                                .with_name(topic_name(topic))
                                .with_partitions(vec![OffsetCommitRequestPartition::default()
                                    .with_partition_index(0)
                                    .with_committed_offset(1)])])
                    };
                    for (topic, want) in [("all-versions", 0), ("missing-topic", 3)] {
                        let r: OffsetCommitResponse = c.call(key, v, &commit(topic)).await;
                        assert_eq!(
                            r.topics[0].partitions[0].error_code, want,
                            "OffsetCommit v{v} {topic}"
                        );
                    }
                }
                ApiKey::OffsetFetch => {
                    // The group committed offset 1 at OffsetCommit v2 above.
                    let group = GroupId(StrBytes::from_string(format!(
                        "t-{}-2",
                        ApiKey::OffsetCommit as i16
                    )));
                    let offset = if v >= 8 {
                        use offset_fetch_request::{
                            OffsetFetchRequestGroup, OffsetFetchRequestTopics,
                        };
                        let req = OffsetFetchRequest::default().with_groups(vec![
                            OffsetFetchRequestGroup::default()
                                .with_group_id(group)
                                .with_topics(Some(vec![OffsetFetchRequestTopics::default()
                                    .with_name(topic_name("all-versions"))
                                    .with_partition_indexes(vec![0])])),
                        ]);
                        let r: OffsetFetchResponse = c.call(key, v, &req).await;
                        r.groups[0].topics[0].partitions[0].committed_offset
                    } else {
                        use offset_fetch_request::OffsetFetchRequestTopic;
                        let req = OffsetFetchRequest::default()
                            .with_group_id(group)
                            .with_topics(Some(vec![OffsetFetchRequestTopic::default()
                                .with_name(topic_name("all-versions"))
                                .with_partition_indexes(vec![0])]));
                        let r: OffsetFetchResponse = c.call(key, v, &req).await;
                        r.topics[0].partitions[0].committed_offset
                    };
                    assert_eq!(offset, 1, "OffsetFetch v{v}");
                }
                ApiKey::DescribeGroups => {
                    let req = DescribeGroupsRequest::default()
                        .with_groups(vec![GroupId(StrBytes::from_static_str("never-existed"))]);
                    let r: DescribeGroupsResponse = c.call(key, v, &req).await;
                    let g = &r.groups[0];
                    let want = if v >= 6 { 69 } else { 0 };
                    assert_eq!(
                        (g.error_code, g.group_state.as_str()),
                        (want, "Dead"),
                        "DescribeGroups v{v}"
                    );
                }
                ApiKey::ListGroups => {
                    let r: ListGroupsResponse = c.call(key, v, &ListGroupsRequest::default()).await;
                    assert_eq!(r.error_code, 0, "ListGroups v{v}");
                    let joined = format!("t-{}-4", ApiKey::JoinGroup as i16);
                    assert!(
                        r.groups.iter().any(|g| g.group_id.0.as_str() == joined),
                        "ListGroups v{v}"
                    );
                }
                ApiKey::DeleteGroups => {
                    let req = DeleteGroupsRequest::default().with_groups_names(vec![GroupId(
                        StrBytes::from_static_str("never-existed"),
                    )]);
                    let r: DeleteGroupsResponse = c.call(key, v, &req).await;
                    assert_eq!(r.results[0].error_code, 69, "DeleteGroups v{v}");
                }
                ApiKey::OffsetDelete => {
                    let req = OffsetDeleteRequest::default()
                        .with_group_id(GroupId(StrBytes::from_static_str("never-existed")));
                    let r: OffsetDeleteResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 69, "OffsetDelete v{v}");
                }
                ApiKey::OffsetForLeaderEpoch => {
                    use offset_for_leader_epoch_request::{
                        OffsetForLeaderPartition, OffsetForLeaderTopic,
                    };
                    let ask = |epoch: i32| {
                        OffsetForLeaderEpochRequest::default()
                            .with_replica_id(BrokerId(-1))
                            .with_topics(vec![OffsetForLeaderTopic::default()
                                .with_topic(topic_name("all-versions"))
                                .with_partitions(vec![OffsetForLeaderPartition::default()
                                    .with_partition(0)
                                    .with_current_leader_epoch(-1)
                                    .with_leader_epoch(epoch)])])
                    };
                    let r: OffsetForLeaderEpochResponse = c.call(key, v, &ask(1000)).await;
                    let p = &r.topics[0].partitions[0];
                    assert_eq!(
                        (p.error_code, p.leader_epoch, p.end_offset),
                        (0, -1, -1),
                        "OffsetForLeaderEpoch v{v}"
                    );
                    let r: OffsetForLeaderEpochResponse = c.call(key, v, &ask(0)).await;
                    let p = &r.topics[0].partitions[0];
                    assert_eq!(
                        (p.error_code, p.end_offset),
                        (0, 0),
                        "OffsetForLeaderEpoch v{v}: before epoch 1"
                    );
                }
                ApiKey::DeleteRecords => {
                    use delete_records_request::{DeleteRecordsPartition, DeleteRecordsTopic};
                    let req = DeleteRecordsRequest::default()
                        .with_timeout_ms(5000)
                        .with_topics(
                            ["all-versions", "missing-topic"]
                                .iter()
                                .map(|t| {
                                    DeleteRecordsTopic::default()
                                        .with_name(topic_name(t))
                                        .with_partitions(vec![DeleteRecordsPartition::default()
                                            .with_partition_index(0)
                                            .with_offset(0)])
                                })
                                .collect(),
                        );
                    let r: DeleteRecordsResponse = c.call(key, v, &req).await;
                    let (a, b) = (&r.topics[0].partitions[0], &r.topics[1].partitions[0]);
                    assert_eq!(
                        (a.error_code, a.low_watermark, b.error_code),
                        (0, 0, 3),
                        "DeleteRecords v{v}"
                    );
                }
                ApiKey::DescribeLogDirs => {
                    // topics = null asks for every partition.
                    let all = DescribeLogDirsRequest::default().with_topics(None);
                    let r: DescribeLogDirsResponse = c.call(key, v, &all).await;
                    assert_eq!(r.results.len(), 1, "DescribeLogDirs v{v}");
                    assert!(
                        r.results[0]
                            .topics
                            .iter()
                            .any(|t| t.name.0.as_str() == "all-versions"),
                        "DescribeLogDirs v{v}"
                    );
                }
                ApiKey::ElectLeaders => {
                    use elect_leaders_request::TopicPartitions;
                    let req = ElectLeadersRequest::default()
                        .with_timeout_ms(5000)
                        .with_topic_partitions(Some(vec![TopicPartitions::default()
                            .with_topic(topic_name("all-versions"))
                            .with_partitions(vec![0])]));
                    let r: ElectLeadersResponse = c.call(key, v, &req).await;
                    // One broker: the preferred replica already leads.
                    assert_eq!(
                        r.replica_election_results[0].partition_result[0].error_code, 84,
                        "ElectLeaders v{v}"
                    );
                }
                ApiKey::DescribeProducers => {
                    use describe_producers_request::TopicRequest;
                    let req = DescribeProducersRequest::default().with_topics(vec![
                        TopicRequest::default()
                            .with_name(topic_name("all-versions"))
                            .with_partition_indexes(vec![0, 7]),
                    ]);
                    let r: DescribeProducersResponse = c.call(key, v, &req).await;
                    let ps = &r.topics[0].partitions;
                    assert_eq!(
                        (ps[0].error_code, ps[1].error_code),
                        (0, 3),
                        "DescribeProducers v{v}"
                    );
                }
                ApiKey::AlterPartitionReassignments => {
                    use alter_partition_reassignments_request::{
                        ReassignablePartition, ReassignableTopic,
                    };
                    let req = |replicas: Option<Vec<BrokerId>>| {
                        AlterPartitionReassignmentsRequest::default()
                            .with_timeout_ms(5000)
                            .with_topics(vec![ReassignableTopic::default()
                                .with_name(topic_name("all-versions"))
                                .with_partitions(vec![ReassignablePartition::default()
                                    .with_partition_index(0)
                                    .with_replicas(replicas)])])
                    };
                    // Broker 2 is not in this region; there is nothing to cancel.
                    let r: AlterPartitionReassignmentsResponse =
                        c.call(key, v, &req(Some(vec![BrokerId(2)]))).await;
                    assert_eq!(
                        r.responses[0].partitions[0].error_code, 39,
                        "AlterPartitionReassignments v{v}"
                    );
                    let r: AlterPartitionReassignmentsResponse = c.call(key, v, &req(None)).await;
                    assert_eq!(
                        r.responses[0].partitions[0].error_code, 85,
                        "AlterPartitionReassignments v{v}"
                    );
                }
                ApiKey::ListPartitionReassignments => {
                    let req = ListPartitionReassignmentsRequest::default().with_topics(None);
                    let r: ListPartitionReassignmentsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.error_code, r.topics.len()),
                        (0, 0),
                        "ListPartitionReassignments v{v}"
                    );
                }
                // A plaintext listener has no SASL: Kafka answers
                // ILLEGAL_SASL_STATE and keeps the connection.
                ApiKey::SaslHandshake => {
                    let req = SaslHandshakeRequest::default()
                        .with_mechanism(StrBytes::from_static_str("PLAIN"));
                    let r: SaslHandshakeResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 34, "SaslHandshake v{v}");
                }
                ApiKey::SaslAuthenticate => {
                    let req = SaslAuthenticateRequest::default()
                        .with_auth_bytes(Bytes::from_static(b"\0u\0p"));
                    let r: SaslAuthenticateResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 34, "SaslAuthenticate v{v}");
                }
                ApiKey::DescribeUserScramCredentials => {
                    let req = DescribeUserScramCredentialsRequest::default().with_users(None);
                    let r: DescribeUserScramCredentialsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.error_code, r.results.len()),
                        (0, 0),
                        "DescribeUserScramCredentials v{v}"
                    );
                }
                ApiKey::AlterUserScramCredentials => {
                    use alter_user_scram_credentials_request::ScramCredentialDeletion;
                    let req = AlterUserScramCredentialsRequest::default().with_deletions(vec![
                        ScramCredentialDeletion::default()
                            .with_name(StrBytes::from_static_str("nobody"))
                            .with_mechanism(1),
                    ]);
                    let r: AlterUserScramCredentialsResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        r.results[0].error_code, 91,
                        "AlterUserScramCredentials v{v}"
                    );
                }
                ApiKey::DescribeClientQuotas => {
                    let req = DescribeClientQuotasRequest::default();
                    let r: DescribeClientQuotasResponse = c.call(key, v, &req).await;
                    assert_eq!(
                        (r.error_code, r.entries.map(|e| e.len())),
                        (0, Some(0)),
                        "DescribeClientQuotas v{v}"
                    );
                }
                // Authorization is off: the ACL APIs answer SECURITY_DISABLED (54), as
                // Kafka does without an authorizer.
                ApiKey::DescribeAcls => {
                    let req = DescribeAclsRequest::default()
                        .with_resource_type_filter(1)
                        .with_pattern_type_filter(1)
                        .with_operation(1)
                        .with_permission_type(1);
                    let r: DescribeAclsResponse = c.call(key, v, &req).await;
                    assert_eq!(r.error_code, 54, "DescribeAcls v{v}");
                }
                ApiKey::CreateAcls => {
                    use create_acls_request::AclCreation;
                    let req =
                        CreateAclsRequest::default().with_creations(vec![AclCreation::default()]);
                    let r: CreateAclsResponse = c.call(key, v, &req).await;
                    assert_eq!(r.results[0].error_code, 54, "CreateAcls v{v}");
                }
                ApiKey::DeleteAcls => {
                    use delete_acls_request::DeleteAclsFilter;
                    let req = DeleteAclsRequest::default()
                        .with_filters(vec![DeleteAclsFilter::default()]);
                    let r: DeleteAclsResponse = c.call(key, v, &req).await;
                    assert_eq!(r.filter_results[0].error_code, 54, "DeleteAcls v{v}");
                }
                ApiKey::WriteTxnMarkers => {
                    let r: WriteTxnMarkersResponse = c
                        .call(
                            key,
                            v,
                            &txn_markers(7, 0, &["all-versions", "missing-topic"]),
                        )
                        .await;
                    let codes: Vec<i16> = r.markers[0]
                        .topics
                        .iter()
                        .map(|t| t.partitions[0].error_code)
                        .collect();
                    assert_eq!(
                        codes,
                        vec![0, 3],
                        "WriteTxnMarkers v{v}: nothing open, unknown"
                    );
                }
                other => panic!("no case for {other:?}: add one"),
            }
            n += 1;
        }
    }
    assert!(n > 60, "covered {n} api/version pairs");
    b.shutdown().await;
}

#[tokio::test]
async fn a_data_dir_belongs_to_one_node_id() {
    let dir = tempfile::tempdir().unwrap();
    let mk = |node_id: i32| local_config(dir.path(), node_id);
    Broker::start(mk(1)).await.unwrap().shutdown().await;
    let err = match Broker::start(mk(2)).await {
        Ok(_) => panic!("a broker started on another node's data"),
        Err(e) => e.to_string(),
    };
    assert!(err.contains("node 1") && err.contains("node 2"), "{err}");
    Broker::start(mk(1)).await.unwrap().shutdown().await;
}

/// A null and an empty key list both mean every config (Kafka 4.1 answers
/// both with the full list); a named key means just that one.
#[tokio::test]
async fn describe_configs_empty_key_list_means_all() {
    use describe_configs_request::DescribeConfigsResource;
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    create_topic(&mut c, "cfg", 1).await;
    let mut counts = Vec::new();
    for keys in [
        None,
        Some(vec![]),
        Some(vec![StrBytes::from_static_str("retention.ms")]),
    ] {
        let req = DescribeConfigsRequest::default().with_resources(vec![
            DescribeConfigsResource::default()
                .with_resource_type(2)
                .with_resource_name(StrBytes::from_static_str("cfg"))
                .with_configuration_keys(keys),
        ]);
        let resp: DescribeConfigsResponse = c.call(ApiKey::DescribeConfigs, 4, &req).await;
        assert_eq!(resp.results[0].error_code, 0);
        counts.push(resp.results[0].configs.len());
    }
    assert!(counts[0] > 20, "{counts:?}");
    assert_eq!(counts[1], counts[0], "empty list = all");
    assert_eq!(counts[2], 1);
    b.shutdown().await;
}

/// An idle transactional id is forgotten after
/// `transactions.transactional_id_expiration_ms`; one with a transaction
/// open is not (it times out instead).
#[tokio::test]
async fn idle_transactional_ids_expire() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = local_config(dir.path(), 1);
    cfg.transactions.abort_timed_out_check_interval_ms = 50;
    cfg.transactions.transactional_id_expiration_ms = 300;
    let b = Broker::start(cfg).await.unwrap();
    let mut c = Conn::open(&b).await;
    create_topic(&mut c, "txn-expiry", 1).await;
    let (pid, epoch) = txn_init(&mut c, "idle").await;
    let (busy_pid, busy_epoch) = txn_init(&mut c, "busy").await;
    txn_add(&mut c, "busy", (busy_pid, busy_epoch), "txn-expiry").await;
    let describe = DescribeTransactionsRequest::default().with_transactional_ids(vec![
        TransactionalId(StrBytes::from_static_str("idle")),
        TransactionalId(StrBytes::from_static_str("busy")),
    ]);
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let r: DescribeTransactionsResponse =
            c.call(ApiKey::DescribeTransactions, 0, &describe).await;
        let s = &r.transaction_states;
        if s[0].error_code == 105 {
            // TRANSACTIONAL_ID_NOT_FOUND; the open one is still there.
            assert_eq!(
                (s[1].error_code, s[1].transaction_state.as_str()),
                (0, "Ongoing")
            );
            break;
        }
        assert_eq!((s[0].producer_id.0, s[0].producer_epoch), (pid, epoch));
        assert!(Instant::now() < deadline, "the idle id never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // Back after expiry: a new producer id, epoch 0.
    let (again, again_epoch) = txn_init(&mut c, "idle").await;
    assert_eq!(again_epoch, 0);
    assert_ne!(again, pid);
    b.shutdown().await;
}

/// WriteTxnMarkers aborting `producer_id`'s transaction on partition 0 of
/// each of `topics`.
fn txn_markers(producer_id: i64, epoch: i16, topics: &[&str]) -> WriteTxnMarkersRequest {
    use write_txn_markers_request::{WritableTxnMarker, WritableTxnMarkerTopic};
    WriteTxnMarkersRequest::default().with_markers(vec![WritableTxnMarker::default()
        .with_producer_id(ProducerId(producer_id))
        .with_producer_epoch(epoch)
        .with_transaction_result(false)
        .with_coordinator_epoch(-1)
        .with_topics(
            topics
                .iter()
                .map(|t| {
                    WritableTxnMarkerTopic::default()
                        .with_name(topic_name(t))
                        .with_partition_indexes(vec![0])
                })
                .collect(),
        )])
}

/// The first offset of each producer's open transaction on partition 0
/// (DescribeProducers; -1 when none is open).
async fn open_txn_starts(c: &mut Conn, topic: &str) -> Vec<(i64, i64)> {
    let req = DescribeProducersRequest::default().with_topics(vec![
        describe_producers_request::TopicRequest::default()
            .with_name(topic_name(topic))
            .with_partition_indexes(vec![0]),
    ]);
    let r: DescribeProducersResponse = c.call(ApiKey::DescribeProducers, 0, &req).await;
    let p = &r.topics[0].partitions[0];
    assert_eq!(p.error_code, 0);
    p.active_producers
        .iter()
        .map(|s| (s.producer_id.0, s.current_txn_start_offset))
        .collect()
}

/// An admin's WriteTxnMarkers (`kafka-transactions.sh abort`) ends an open
/// transaction the coordinator still holds: DescribeProducers shows where
/// it began, then nothing open, and the last stable offset reaches the high
/// watermark. A stale producer epoch is refused.
#[tokio::test]
async fn write_txn_markers_abort_an_open_transaction() {
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    create_topic(&mut c, "hanging", 1).await;
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("hanging", 0, build::simple(2, 0, None), -1),
        )
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    let (pid, epoch) = txn_init(&mut c, "hanging-txn").await;
    txn_add(&mut c, "hanging-txn", (pid, epoch), "hanging").await;
    let batch = build::transactional(build::simple(3, 0, Some((pid, epoch, 0))));
    let r: ProduceResponse = c
        .call(ApiKey::Produce, 9, &produce_req("hanging", 0, batch, -1))
        .await;
    assert_eq!(r.responses[0].partition_responses[0].error_code, 0);
    assert_eq!(open_txn_starts(&mut c, "hanging").await, vec![(pid, 2)]);
    assert_eq!(
        last_stable(&mut c, "hanging").await,
        2,
        "held at the open transaction"
    );

    let r: WriteTxnMarkersResponse = c
        .call(
            ApiKey::WriteTxnMarkers,
            1,
            &txn_markers(pid, epoch - 1, &["hanging"]),
        )
        .await;
    assert_eq!(
        r.markers[0].topics[0].partitions[0].error_code, 47,
        "an older epoch than the producer's: INVALID_PRODUCER_EPOCH"
    );
    let r: WriteTxnMarkersResponse = c
        .call(
            ApiKey::WriteTxnMarkers,
            1,
            &txn_markers(pid, epoch, &["hanging"]),
        )
        .await;
    assert_eq!(r.markers[0].producer_id.0, pid);
    assert_eq!(r.markers[0].topics[0].partitions[0].error_code, 0);
    assert_eq!(open_txn_starts(&mut c, "hanging").await, vec![(pid, -1)]);
    assert_eq!(
        last_stable(&mut c, "hanging").await,
        6,
        "two records, three, the marker"
    );
    b.shutdown().await;
}

/// ListOffsets latest at read_committed: partition 0's last stable offset.
async fn last_stable(c: &mut Conn, topic: &str) -> i64 {
    let req = ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_isolation_level(1)
        .with_topics(vec![list_offsets_request::ListOffsetsTopic::default()
            .with_name(topic_name(topic))
            .with_partitions(vec![
                list_offsets_request::ListOffsetsPartition::default()
                    .with_partition_index(0)
                    .with_timestamp(-1),
            ])]);
    let r: ListOffsetsResponse = c.call(ApiKey::ListOffsets, 7, &req).await;
    r.topics[0].partitions[0].offset
}

async fn set_topic_config(c: &mut Conn, topic: &str, name: &str, value: &str) {
    use incremental_alter_configs_request::{AlterConfigsResource, AlterableConfig};
    let req = IncrementalAlterConfigsRequest::default().with_resources(vec![
        AlterConfigsResource::default()
            .with_resource_type(2)
            .with_resource_name(StrBytes::from_string(topic.to_string()))
            .with_configs(vec![AlterableConfig::default()
                .with_name(StrBytes::from_string(name.to_string()))
                .with_value(Some(StrBytes::from_string(value.to_string())))]),
    ]);
    let r: IncrementalAlterConfigsResponse = c.call(ApiKey::IncrementalAlterConfigs, 1, &req).await;
    assert_eq!(
        r.responses[0].error_code, 0,
        "{:?}",
        r.responses[0].error_message
    );
}

/// A producer's batch refused before it reached the log holds back the
/// batches pipelined behind it on the same connection: they get the same
/// retriable error rather than OUT_OF_ORDER_SEQUENCE_NUMBER, which makes
/// librdkafka bump its epoch and resend unacknowledged records under new
/// sequence numbers (duplicating any a killed leader had written).
#[tokio::test]
async fn a_refused_batch_holds_back_its_producers_later_batches() {
    let (b, _dir) = start().await;
    let mut c = Conn::open(&b).await;
    let mut other = Conn::open(&b).await;
    create_topic(&mut c, "ordered", 1).await;
    let init: InitProducerIdResponse = c
        .call(
            ApiKey::InitProducerId,
            4,
            &InitProducerIdRequest::default()
                .with_transactional_id(None)
                .with_transaction_timeout_ms(60_000)
                .with_producer_id(ProducerId(-1))
                .with_producer_epoch(-1),
        )
        .await;
    assert_eq!(init.error_code, 0);
    let pid = (init.producer_id.0, init.producer_epoch);
    let batch = |seq| build::simple(5, 1_000, Some((pid.0, pid.1, seq)));
    let (first, second) = (batch(5), batch(10));
    let code = |r: &ProduceResponse| r.responses[0].partition_responses[0].error_code;
    let offset = |r: &ProduceResponse| r.responses[0].partition_responses[0].base_offset;
    let r: ProduceResponse = c
        .call(ApiKey::Produce, 9, &produce_req("ordered", 0, batch(0), -1))
        .await;
    assert_eq!((code(&r), offset(&r)), (0, 0));

    // One replica, min.insync.replicas=2: refused before the log.
    set_topic_config(&mut c, "ordered", "min.insync.replicas", "2").await;
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("ordered", 0, first.clone(), -1),
        )
        .await;
    assert_eq!(code(&r), 19, "NOT_ENOUGH_REPLICAS");
    set_topic_config(&mut c, "ordered", "min.insync.replicas", "1").await;

    // The cause has passed, but the next batch would leave a gap.
    let r: ProduceResponse = c
        .call(
            ApiKey::Produce,
            9,
            &produce_req("ordered", 0, second.clone(), -1),
        )
        .await;
    assert_eq!(code(&r), 19, "held back behind the refused batch");
    // Another connection has no refused batch to wait for: the gap is
    // answered as Kafka does.
    let r: ProduceResponse = other
        .call(
            ApiKey::Produce,
            9,
            &produce_req("ordered", 0, second.clone(), -1),
        )
        .await;
    assert_eq!(code(&r), 45, "OUT_OF_ORDER_SEQUENCE_NUMBER");

    // Resent in order, both are written once.
    for (records, at) in [(first, 5), (second, 10)] {
        let r: ProduceResponse = c
            .call(ApiKey::Produce, 9, &produce_req("ordered", 0, records, -1))
            .await;
        assert_eq!((code(&r), offset(&r)), (0, at));
    }
    b.shutdown().await;
}
