//! Request parsing, version negotiation and response framing. Message bodies
//! are decoded and encoded by the `kafka-protocol` crate; which APIs and
//! versions we accept, and what happens when a client steps outside them, is
//! decided here.

use bytes::{BufMut, Bytes, BytesMut};
use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{
    ApiKey, ApiVersionsResponse, RequestHeader, RequestKind, ResponseHeader,
};
use kafka_protocol::protocol::{Decodable, Encodable};

/// Every API Chronik serves, with the version range that truly works.
/// ApiVersions advertises exactly this table.
pub const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 11),
    (ApiKey::Fetch, 4, 16),
    (ApiKey::ListOffsets, 1, 8),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 4),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::InitProducerId, 0, 5),
    // Transactions as Kafka's transaction.version 1 serves them: the
    // versions past these belong to KIP-890's second part (the
    // coordinator bumping the epoch on every commit), not offered, so
    // clients use these.
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::EndTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::DescribeTransactions, 0, 0),
    (ApiKey::ListTransactions, 0, 1),
    // Kafka 4 serves v1 only (v0 went with KIP-896).
    (ApiKey::WriteTxnMarkers, 1, 1),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::CreatePartitions, 0, 3),
    (ApiKey::AlterConfigs, 0, 2),
    (ApiKey::IncrementalAlterConfigs, 0, 1),
    (ApiKey::DescribeCluster, 0, 1),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 6),
    (ApiKey::ListGroups, 0, 5),
    (ApiKey::DeleteGroups, 0, 2),
    (ApiKey::OffsetDelete, 0, 0),
    (ApiKey::OffsetForLeaderEpoch, 2, 4),
    (ApiKey::DeleteRecords, 0, 2),
    (ApiKey::DescribeLogDirs, 1, 4),
    (ApiKey::ElectLeaders, 0, 2),
    (ApiKey::DescribeProducers, 0, 0),
    (ApiKey::AlterPartitionReassignments, 0, 1),
    (ApiKey::ListPartitionReassignments, 0, 0),
    // v0 of SaslHandshake is followed by raw SASL tokens, each in a
    // length-prefixed frame with no request header (no SaslAuthenticate);
    // Kafka 4 still serves it and old librdkafka builds require it listed.
    (ApiKey::SaslHandshake, 0, 1),
    (ApiKey::SaslAuthenticate, 0, 2),
    (ApiKey::DescribeUserScramCredentials, 0, 0),
    (ApiKey::AlterUserScramCredentials, 0, 0),
    (ApiKey::DescribeClientQuotas, 0, 1),
    (ApiKey::DescribeAcls, 1, 3),
    (ApiKey::CreateAcls, 1, 3),
    (ApiKey::DeleteAcls, 1, 3),
];

/// The client id of a produce that a home region's dc-link makes on behalf
/// of a client in another region (write forwarding). A broker never
/// forwards such a produce again: if the topic is no longer homed in its
/// region, it answers with a retriable error and the client's region
/// re-routes the retry.
pub const FORWARDED_PRODUCE_CLIENT_ID: &str = "chronik-forwarded";

/// The client id a home dc-link produces with for clients of region
/// `origin`: [`FORWARDED_PRODUCE_CLIENT_ID`], a slash, the region.
pub fn forwarded_client_id(origin: &str) -> String {
    format!("{FORWARDED_PRODUCE_CLIENT_ID}/{origin}")
}

/// Whether a produce's client id marks it forwarded, and from which region
/// when it says: `None` for an ordinary client, `Some(None)` for a
/// forwarded produce of unknown origin, `Some(Some(region))` otherwise.
pub fn forwarded_origin(client_id: Option<&str>) -> Option<Option<&str>> {
    let rest = client_id?.strip_prefix(FORWARDED_PRODUCE_CLIENT_ID)?;
    match rest {
        "" => Some(None),
        r => {
            let origin = r.strip_prefix('/')?;
            Some((!origin.is_empty()).then_some(origin))
        }
    }
}

/// A stable, allocation-free name for metric labels.
pub fn api_name(key: ApiKey) -> &'static str {
    match key {
        ApiKey::Produce => "Produce",
        ApiKey::Fetch => "Fetch",
        ApiKey::ListOffsets => "ListOffsets",
        ApiKey::Metadata => "Metadata",
        ApiKey::ApiVersions => "ApiVersions",
        ApiKey::CreateTopics => "CreateTopics",
        ApiKey::DeleteTopics => "DeleteTopics",
        ApiKey::InitProducerId => "InitProducerId",
        ApiKey::AddPartitionsToTxn => "AddPartitionsToTxn",
        ApiKey::AddOffsetsToTxn => "AddOffsetsToTxn",
        ApiKey::EndTxn => "EndTxn",
        ApiKey::TxnOffsetCommit => "TxnOffsetCommit",
        ApiKey::DescribeTransactions => "DescribeTransactions",
        ApiKey::ListTransactions => "ListTransactions",
        ApiKey::WriteTxnMarkers => "WriteTxnMarkers",
        ApiKey::DescribeConfigs => "DescribeConfigs",
        ApiKey::CreatePartitions => "CreatePartitions",
        ApiKey::AlterConfigs => "AlterConfigs",
        ApiKey::IncrementalAlterConfigs => "IncrementalAlterConfigs",
        ApiKey::DescribeCluster => "DescribeCluster",
        ApiKey::FindCoordinator => "FindCoordinator",
        ApiKey::JoinGroup => "JoinGroup",
        ApiKey::SyncGroup => "SyncGroup",
        ApiKey::Heartbeat => "Heartbeat",
        ApiKey::LeaveGroup => "LeaveGroup",
        ApiKey::OffsetCommit => "OffsetCommit",
        ApiKey::OffsetFetch => "OffsetFetch",
        ApiKey::DescribeGroups => "DescribeGroups",
        ApiKey::ListGroups => "ListGroups",
        ApiKey::DeleteGroups => "DeleteGroups",
        ApiKey::OffsetDelete => "OffsetDelete",
        ApiKey::OffsetForLeaderEpoch => "OffsetForLeaderEpoch",
        ApiKey::DeleteRecords => "DeleteRecords",
        ApiKey::DescribeLogDirs => "DescribeLogDirs",
        ApiKey::ElectLeaders => "ElectLeaders",
        ApiKey::DescribeProducers => "DescribeProducers",
        ApiKey::AlterPartitionReassignments => "AlterPartitionReassignments",
        ApiKey::ListPartitionReassignments => "ListPartitionReassignments",
        ApiKey::SaslHandshake => "SaslHandshake",
        ApiKey::SaslAuthenticate => "SaslAuthenticate",
        ApiKey::DescribeUserScramCredentials => "DescribeUserScramCredentials",
        ApiKey::AlterUserScramCredentials => "AlterUserScramCredentials",
        ApiKey::DescribeClientQuotas => "DescribeClientQuotas",
        ApiKey::DescribeAcls => "DescribeAcls",
        ApiKey::CreateAcls => "CreateAcls",
        ApiKey::DeleteAcls => "DeleteAcls",
        _ => "other",
    }
}

pub fn supported_range(key: ApiKey) -> Option<(i16, i16)> {
    SUPPORTED
        .iter()
        .find(|(k, _, _)| *k == key)
        .map(|(_, lo, hi)| (*lo, *hi))
}

pub fn api_versions_list() -> Vec<ApiVersion> {
    SUPPORTED
        .iter()
        .map(|(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*lo)
                .with_max_version(*hi)
        })
        .collect()
}

/// A request frame, decoded.
pub struct Request {
    pub header: RequestHeader,
    pub api_key: ApiKey,
    pub version: i16,
    pub body: RequestKind,
}

/// What to do with one incoming frame.
pub enum Parsed {
    Request(Box<Request>),
    /// ApiVersions at a version we do not know: answer in the v0 format
    /// with UNSUPPORTED_VERSION so the client can retry at a version we list.
    ApiVersionsFallback {
        correlation_id: i32,
    },
}

/// Why a frame closes the connection (Kafka closes rather than answers
/// for all of these).
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    #[error("request frame of {0} bytes is too short for a header")]
    Truncated(usize),
    #[error("unknown API key {0}")]
    UnknownApi(i16),
    #[error("API {0:?} is not served by Chronik")]
    Unsupported(ApiKey),
    #[error("API {key:?} version {version} is not supported (supported: {lo}..={hi})")]
    UnsupportedVersion {
        key: ApiKey,
        version: i16,
        lo: i16,
        hi: i16,
    },
    #[error("malformed {key:?} v{version} request: {detail}")]
    Malformed {
        key: ApiKey,
        version: i16,
        detail: String,
    },
}

pub fn parse(mut frame: Bytes) -> Result<Parsed, ProtocolError> {
    if frame.len() < 8 {
        return Err(ProtocolError::Truncated(frame.len()));
    }
    let raw_key = i16::from_be_bytes([frame[0], frame[1]]);
    let version = i16::from_be_bytes([frame[2], frame[3]]);
    let key = ApiKey::try_from(raw_key).map_err(|_| ProtocolError::UnknownApi(raw_key))?;
    let (lo, hi) = supported_range(key).ok_or(ProtocolError::Unsupported(key))?;
    if version < lo || version > hi {
        if key == ApiKey::ApiVersions {
            // Like Kafka, read the header as the newest ApiVersions header
            // (only the body format is unknown to us); a header that does
            // not even parse that way closes the connection.
            let header = RequestHeader::decode(&mut frame, key.request_header_version(hi))
                .map_err(|e| ProtocolError::Malformed {
                    key,
                    version,
                    detail: e.to_string(),
                })?;
            return Ok(Parsed::ApiVersionsFallback {
                correlation_id: header.correlation_id,
            });
        }
        return Err(ProtocolError::UnsupportedVersion {
            key,
            version,
            lo,
            hi,
        });
    }
    let malformed = |e: anyhow::Error| ProtocolError::Malformed {
        key,
        version,
        detail: e.to_string(),
    };
    let header = RequestHeader::decode(&mut frame, key.request_header_version(version))
        .map_err(malformed)?;
    let body = RequestKind::decode(key, &mut frame, version).map_err(malformed)?;
    // Trailing bytes are ignored, as Kafka does: librdkafka, for one, sends
    // Metadata v12 with a field that version no longer has.
    Ok(Parsed::Request(Box::new(Request {
        header,
        api_key: key,
        version,
        body,
    })))
}

/// Encodes a response with its header, length-prefixed and ready to write.
pub fn encode_response<M: Encodable>(
    correlation_id: i32,
    key: ApiKey,
    version: i16,
    body: &M,
) -> Bytes {
    let mut buf = BytesMut::with_capacity(256);
    buf.put_i32(0);
    let header = ResponseHeader::default().with_correlation_id(correlation_id);
    // Encoding fails only when a handler set a field the negotiated version
    // does not have: a bug. Rather than panic, log it and return nothing,
    // which closes the connection so the client reconnects and retries.
    let encoded = header
        .encode(&mut buf, key.response_header_version(version))
        .and_then(|_| body.encode(&mut buf, version));
    if let Err(e) = encoded {
        tracing::error!(api = ?key, version, error = %e, "could not encode response; closing connection");
        metrics::counter!("chronik_response_encode_errors_total").increment(1);
        return Bytes::new();
    }
    let len = (buf.len() - 4) as i32;
    buf[0..4].copy_from_slice(&len.to_be_bytes());
    buf.freeze()
}

pub fn api_versions_fallback(correlation_id: i32) -> Bytes {
    let body = ApiVersionsResponse::default()
        .with_error_code(kafka_protocol::error::ResponseError::UnsupportedVersion.code())
        .with_api_keys(api_versions_list());
    encode_response(correlation_id, ApiKey::ApiVersions, 0, &body)
}

#[cfg(test)]
mod tests {

    use super::*;
    use kafka_protocol::messages::{ApiVersionsRequest, MetadataRequest};
    use kafka_protocol::protocol::StrBytes;

    fn frame_for<M: Encodable>(key: ApiKey, version: i16, body: &M) -> Bytes {
        let mut buf = BytesMut::new();
        let header = RequestHeader::default()
            .with_request_api_key(key as i16)
            .with_request_api_version(version)
            .with_correlation_id(42)
            .with_client_id(Some(StrBytes::from_static_str("test")));
        header
            .encode(&mut buf, key.request_header_version(version))
            .unwrap();
        body.encode(&mut buf, version).unwrap();
        buf.freeze()
    }

    #[test]
    fn supported_ranges_are_within_the_codec() {
        for (k, lo, hi) in SUPPORTED {
            let v = k.valid_versions();
            assert!(
                v.min <= *lo && *hi <= v.max,
                "{k:?} {lo}..{hi} outside codec {v}"
            );
        }
    }

    #[test]
    fn parses_a_flexible_request() {
        let f = frame_for(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default());
        match parse(f).unwrap() {
            Parsed::Request(r) => {
                assert_eq!(r.header.correlation_id, 42);
                assert!(matches!(r.body, RequestKind::ApiVersions(_)));
            }
            _ => panic!("expected a request"),
        }
    }

    #[test]
    fn too_new_api_versions_gets_the_fallback() {
        let mut f =
            BytesMut::from(&frame_for(ApiKey::ApiVersions, 3, &ApiVersionsRequest::default())[..]);
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            parse(f.freeze()).unwrap(),
            Parsed::ApiVersionsFallback { correlation_id: 42 }
        ));
        let resp = api_versions_fallback(42);
        assert_eq!(
            i32::from_be_bytes(resp[0..4].try_into().unwrap()) as usize,
            resp.len() - 4
        );
        assert_eq!(i32::from_be_bytes(resp[4..8].try_into().unwrap()), 42);
        assert_eq!(i16::from_be_bytes(resp[8..10].try_into().unwrap()), 35);
    }

    #[test]
    fn unknown_keys_versions_and_garbage_are_errors() {
        let mut f =
            BytesMut::from(&frame_for(ApiKey::Metadata, 9, &MetadataRequest::default())[..]);
        f[0..2].copy_from_slice(&9999i16.to_be_bytes());
        assert!(matches!(
            parse(f.clone().freeze()),
            Err(ProtocolError::UnknownApi(9999))
        ));
        f[0..2].copy_from_slice(&(ApiKey::Metadata as i16).to_be_bytes());
        f[2..4].copy_from_slice(&99i16.to_be_bytes());
        assert!(matches!(
            parse(f.clone().freeze()),
            Err(ProtocolError::UnsupportedVersion { .. })
        ));
        assert!(matches!(
            parse(Bytes::from_static(&[0, 3])),
            Err(ProtocolError::Truncated(2))
        ));
        let mut truncated =
            BytesMut::from(&frame_for(ApiKey::Metadata, 9, &MetadataRequest::default())[..]);
        truncated.truncate(truncated.len() - 1);
        assert!(parse(truncated.freeze()).is_err());
    }

    #[test]
    fn a_forwarded_produce_names_its_region() {
        let id = forwarded_client_id("eu-west");
        assert_eq!(forwarded_origin(Some(&id)), Some(Some("eu-west")));
        assert_eq!(forwarded_origin(Some("chronik-forwarded")), Some(None));
        assert_eq!(forwarded_origin(Some("chronik-forwarded/")), Some(None));
        assert_eq!(forwarded_origin(Some("chronik-forwardedX")), None);
        assert_eq!(forwarded_origin(Some("rdkafka")), None);
        assert_eq!(forwarded_origin(None), None);
    }
}
