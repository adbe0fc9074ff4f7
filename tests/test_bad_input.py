"""Raw-socket bad-input tests, run against Apache Kafka and Chronik alike.

Frames are built by hand (tests/kwire.py). Each assertion is what Apache Kafka
4.1 was observed to do; Chronik must behave the same way. "Closed" means the
broker closes the TCP connection without sending a response.
"""

from __future__ import annotations

import os
import struct
import time

import pytest

import harness
import kwire
from kwire import Conn, i16, i32, request_header, string
from kclient import create_topic, leader_of, topic_partitions, unique_topic

MAX_REQUEST_BYTES = 104857600  # socket.request.max.bytes on both brokers

# Error codes
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC_EXCEPTION = 17
INVALID_REQUIRED_ACKS = 21
UNSUPPORTED_VERSION = 35
INVALID_RECORD = 87


@pytest.fixture
def topic(broker):
    t = unique_topic("raw")
    create_topic(broker, t)
    return t


@pytest.fixture
def leader(broker, topic):
    """The address of `topic`-0's leader: partition requests go there."""
    return leader_of(broker, topic)


def assert_closed(conn: Conn, timeout: float = 5.0) -> None:
    assert conn.wait_closed(timeout), f"connection still open after {timeout}s (expected the broker to close it)"


def produce(conn: Conn, topic: str, batch: bytes, acks: int = -1, partition: int = 0, version: int = 8):
    res = conn.request(kwire.PRODUCE, version, kwire.produce_body(topic, partition, batch, acks=acks))
    assert res is not None, "broker closed the connection instead of answering Produce"
    return kwire.parse_produce_v8(res[1])[(topic, partition)]


def latest_offset(conn: Conn, topic: str, partition: int = 0) -> int:
    _, body = conn.request(kwire.LIST_OFFSETS, 1, kwire.list_offsets_v1_body(topic, partition, -1))
    r = kwire.parse_list_offsets_v1(body)[(topic, partition)]
    assert r["error"] == 0, r
    return r["offset"]


def still_usable(conn: Conn) -> bool:
    """The connection still answers an ApiVersions v0 request."""
    res = conn.request(kwire.API_VERSIONS, 0, b"")
    return res is not None and kwire.parse_api_versions_v0(res[1])[0] == 0


# ---------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("length", [-1, -5, -(2**31)], ids=["minus1", "minus5", "int-min"])
def test_negative_frame_length_closes(broker, length):
    with Conn(broker) as c:
        c.send_raw(i32(length) + b"\x00" * 16)
        assert_closed(c)


@pytest.mark.parametrize("length", [MAX_REQUEST_BYTES + 1, 2**31 - 1], ids=["max-plus-1", "int-max"])
def test_oversized_frame_length_closes(broker, length):
    # Only the 4-byte length is sent: the broker must refuse before reading a body.
    with Conn(broker) as c:
        c.send_raw(i32(length))
        assert_closed(c)


def test_zero_length_frame_closes(broker):
    with Conn(broker) as c:
        c.send_raw(i32(0))
        assert_closed(c)


@pytest.mark.parametrize(
    "payload",
    [
        b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n",
        i32(16) + bytes(range(0xF0, 0x100)),  # a frame of garbage (api key 0xf0f1)
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03" + os.urandom(32),  # a TLS ClientHello start
    ],
    ids=["http", "garbage-frame", "tls-hello"],
)
def test_garbage_bytes_close(broker, payload):
    with Conn(broker) as c:
        c.send_raw(payload)
        assert_closed(c)


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x12\x00",  # 3 bytes: not even api key + version
        i16(18) + i16(0) + b"\x00\x00",  # correlation id cut short
        i16(18) + i16(0) + i32(1) + i16(20) + b"abc",  # client id longer than the frame
    ],
    ids=["3-bytes", "short-correlation-id", "short-client-id"],
)
def test_truncated_header_closes(broker, frame):
    with Conn(broker) as c:
        c.send_frame(frame)
        assert_closed(c)


def test_truncated_body_closes(broker):
    with Conn(broker) as c:
        # Metadata v4 whose topic array claims 3 entries but has none.
        c.send_frame(request_header(kwire.METADATA, 4, 1) + i32(3))
        assert_closed(c)


# Array counts far beyond the frame: a decoder that trusts the count and
# reserves memory for it first can be crashed by one tiny request (found by
# fuzzing wire/fuzz). The broker must close the connection and keep serving.
HOSTILE_COUNTS = [
    ("IncrementalAlterConfigs v0 resources", 44, 0, i32(0x7FFFFFFF)),
    ("CreateTopics v2 topics", 19, 2, i32(0x7FFFFFFF)),
    ("Metadata v4 topics", kwire.METADATA, 4, i32(0x7FFFFFFF)),
    ("Produce v8 topics", kwire.PRODUCE, 8, i16(-1) + i16(1) + i32(1000) + i32(0x7FFFFFFF)),
]


@pytest.mark.parametrize("name,api_key,version,body", HOSTILE_COUNTS, ids=[h[0] for h in HOSTILE_COUNTS])
def test_huge_array_count_closes_and_broker_survives(broker, name, api_key, version, body):
    with Conn(broker) as c:
        c.send_frame(request_header(api_key, version, 1) + body)
        assert_closed(c)
    with Conn(broker) as c:
        assert still_usable(c), "broker stopped answering after a request with a huge array count"


@pytest.mark.parametrize("api_key", [9999, 100, -1])
def test_unknown_api_key_closes(broker, api_key):
    with Conn(broker) as c:
        c.send_frame(i16(api_key) + i16(0) + i32(1) + string("x"))
        assert_closed(c)


# ---------------------------------------------------------------------------
# Versions
# ---------------------------------------------------------------------------


def test_api_versions_v0_and_v3(broker):
    with Conn(broker) as c:
        corr, body = c.request(kwire.API_VERSIONS, 0, b"")
        err, apis0 = kwire.parse_api_versions_v0(body)
        assert corr == 1 and err == 0
        corr, body = c.request(kwire.API_VERSIONS, 3, kwire.api_versions_v3_body(), flexible=True)
        err, apis3 = kwire.parse_api_versions_v3(body)
        assert corr == 2 and err == 0
    assert apis0 == apis3
    for key in (kwire.PRODUCE, kwire.FETCH, kwire.LIST_OFFSETS, kwire.METADATA, kwire.API_VERSIONS):
        assert key in apis0, f"api {key} not advertised"
        lo, hi = apis0[key]
        assert 0 <= lo <= hi
    assert apis0[kwire.API_VERSIONS][0] == 0 and apis0[kwire.API_VERSIONS][1] >= 3
    # What these tests send must be inside the advertised ranges.
    for key, v in ((kwire.PRODUCE, 8), (kwire.FETCH, 4), (kwire.LIST_OFFSETS, 1), (kwire.METADATA, 4)):
        assert apis0[key][0] <= v <= apis0[key][1], (key, v, apis0[key])


@pytest.mark.parametrize("version", [127, 5, 32767, -1])
def test_api_versions_unsupported_version(broker, version):
    """Kafka answers in the v0 format: error 35 and (at least) its ApiVersions range,
    echoing the correlation id; the connection stays usable. The request header is
    parsed as v2 (flexible, as for ApiVersions >= 3) and the body is ignored."""
    with Conn(broker) as c:
        c.send_frame(request_header(kwire.API_VERSIONS, version, 4242, "probe", flexible=True) + b"\xff\xfe")
        frame = c.recv_frame()
        assert frame is not None, "broker closed the connection"
        (corr,) = struct.unpack(">i", frame[:4])
        assert corr == 4242
        err, apis = kwire.parse_api_versions_v0(frame[4:])  # raises on trailing bytes
        assert err == UNSUPPORTED_VERSION
        assert apis, "api list must not be empty"
        assert kwire.API_VERSIONS in apis
        lo, hi = apis[kwire.API_VERSIONS]
        assert lo == 0 and hi >= 3
        # The client can retry with a supported version on the same connection.
        corr2, body = c.request(kwire.API_VERSIONS, 3, kwire.api_versions_v3_body(), flexible=True)
        assert kwire.parse_api_versions_v3(body)[0] == 0


def test_api_versions_unsupported_version_v1_header_without_tags_closes(broker):
    """Header strictness: ApiVersions v127 implies request header v2, which ends with
    a tagged-field section. A v1-style header with nothing after the client id is a
    truncated header, and Kafka closes the connection."""
    with Conn(broker) as c:
        c.send_frame(request_header(kwire.API_VERSIONS, 127, 7, "x", flexible=False))
        assert_closed(c)


def test_api_versions_unsupported_version_v1_header_with_empty_tags(broker):
    with Conn(broker) as c:
        c.send_frame(request_header(kwire.API_VERSIONS, 127, 7, "x", flexible=False) + b"\x00")
        frame = c.recv_frame()
        assert frame is not None, "broker closed the connection"
        assert kwire.parse_api_versions_v0(frame[4:])[0] == UNSUPPORTED_VERSION


@pytest.mark.parametrize("version", [999, 2, -1], ids=["v999", "v2-removed-in-kafka4", "v-1"])
def test_produce_unsupported_version_closes(leader, topic, version):
    with Conn(leader) as c:
        c.send_frame(request_header(kwire.PRODUCE, version, 1)
                     + kwire.produce_body(topic, 0, kwire.record_batch([(b"k", b"v")])))
        assert_closed(c)
    with Conn(leader) as c:
        assert latest_offset(c, topic) == 0


def test_metadata_unsupported_version_closes(broker):
    with Conn(broker) as c:
        c.send_frame(request_header(kwire.METADATA, 999, 1) + kwire.metadata_v4_body(None))
        assert_closed(c)


# ---------------------------------------------------------------------------
# Produce payload validation
# ---------------------------------------------------------------------------


def test_produce_valid_batch_baseline(leader, topic):
    """Sanity for the hand-built RecordBatch: accepted and readable back."""
    with Conn(leader) as c:
        r = produce(c, topic, kwire.record_batch([(b"k1", b"v1"), (None, b"v2")]))
        assert (r["error"], r["base_offset"]) == (0, 0)
        r = produce(c, topic, kwire.record_batch([(b"k3", b"v3")]))
        assert (r["error"], r["base_offset"]) == (0, 2)
        assert latest_offset(c, topic) == 3
        _, body = c.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, 0, 0, max_wait_ms=100))
        p = kwire.parse_fetch_v4(body)[(topic, 0)]
        recs = [rec for b in kwire.parse_record_batches(p["records"]) for rec in b["records"]]
        assert [(o, k, v) for o, _, k, v in recs] == [(0, b"k1", b"v1"), (1, None, b"v2"), (2, b"k3", b"v3")]


@pytest.mark.parametrize("where", ["value-byte", "crc-field", "attributes"])
def test_produce_corrupt_crc(leader, topic, where):
    batch = bytearray(kwire.record_batch([(b"key-1", b"value-1"), (b"key-2", b"value-2")]))
    if where == "value-byte":
        batch[-3] ^= 0xFF
    elif where == "crc-field":
        batch[kwire.BATCH_CRC_OFFSET] ^= 0x01
    else:  # timestamp-type bit, covered by the CRC
        batch[kwire.BATCH_CRC_OFFSET + 5] ^= 0x08
    with Conn(leader) as c:
        r = produce(c, topic, bytes(batch))
        assert r["error"] == CORRUPT_MESSAGE, r
        assert r["base_offset"] == -1
        # Nothing was appended, and the connection is still usable.
        assert latest_offset(c, topic) == 0
        assert still_usable(c)
        r = produce(c, topic, kwire.record_batch([(b"k", b"ok")]))
        assert (r["error"], r["base_offset"]) == (0, 0)


def test_produce_corrupt_crc_acks0_closes(leader, topic):
    """With acks=0 there is no response to carry the error: Kafka closes the connection."""
    batch = bytearray(kwire.record_batch([(b"k", b"v")]))
    batch[-2] ^= 0xFF
    with Conn(leader) as c:
        c.send_frame(request_header(kwire.PRODUCE, 8, 1) + kwire.produce_body(topic, 0, bytes(batch), acks=0))
        assert_closed(c)
    with Conn(leader) as c:
        assert latest_offset(c, topic) == 0


def test_produce_acks0_success_sends_no_response(leader, topic):
    with Conn(leader) as c:
        c.send_frame(request_header(kwire.PRODUCE, 8, c.next_corr())
                     + kwire.produce_body(topic, 0, kwire.record_batch([(b"k", b"v")]), acks=0))
        # The next response on the connection answers the *next* request.
        corr, body = c.request(kwire.API_VERSIONS, 0, b"")
        assert corr == 2 and kwire.parse_api_versions_v0(body)[0] == 0
        # Visible once durable: immediately on Kafka (page cache), after the
        # group commit's fsync on Chronik.
        harness.wait_until(lambda: latest_offset(c, topic) == 1, timeout=5, what="acks=0 record visible")


def _fix_crc(b: bytearray) -> bytes:
    b[17:21] = struct.pack(">I", kwire.crc32c(bytes(b[21:])))
    return bytes(b)


def _malformed(kind: str) -> bytes:
    good = kwire.record_batch([(b"k1", b"v1"), (b"k2", b"v2")])
    b = bytearray(good)
    if kind == "truncated":
        return good[:-5]
    if kind == "length-too-big":
        return good[:8] + i32(len(good) - 12 + 100) + good[12:]
    if kind == "empty":
        return b""
    if kind == "magic-1":
        b[16] = 1
        return bytes(b)
    if kind == "count-mismatch":
        b[57:61] = i32(3)
        return _fix_crc(b)
    if kind == "last-offset-delta-mismatch":
        b[23:27] = i32(5)
        return _fix_crc(b)
    if kind == "two-batches":
        return good + good
    raise ValueError(kind)


@pytest.mark.parametrize("kind", ["truncated", "length-too-big", "empty", "magic-1", "count-mismatch",
                                  "last-offset-delta-mismatch", "two-batches"])
def test_produce_malformed_batch_invalid_record(leader, topic, kind):
    with Conn(leader) as c:
        r = produce(c, topic, _malformed(kind))
        assert r["error"] == INVALID_RECORD, r
        assert latest_offset(c, topic) == 0
        assert still_usable(c)


@pytest.mark.parametrize("name", ["bad topic!", "..", "x" * 250])
def test_produce_to_invalid_topic_name(broker, name):
    """Kafka answers Produce for an invalid name with UNKNOWN_TOPIC_OR_PARTITION (Produce
    never auto-creates); Metadata with auto-creation allowed answers INVALID_TOPIC_EXCEPTION."""
    with Conn(broker) as c:
        r = produce(c, name, kwire.record_batch([(b"k", b"v")]))
        assert r["error"] == UNKNOWN_TOPIC_OR_PARTITION, r
        _, body = c.request(kwire.METADATA, 4, kwire.metadata_v4_body([name], allow_auto_create=True))
        assert kwire.parse_metadata_v4(body)["topics"][name]["error"] == INVALID_TOPIC_EXCEPTION
        assert still_usable(c)
    assert topic_partitions(broker, name) is None


def test_produce_to_unknown_topic_raw(broker):
    """A raw Produce never auto-creates, even on a broker with auto-creation on."""
    name = unique_topic("raw-unknown")
    with Conn(broker) as c:
        r = produce(c, name, kwire.record_batch([(b"k", b"v")]))
        assert r["error"] == UNKNOWN_TOPIC_OR_PARTITION, r
    assert topic_partitions(broker, name) is None


@pytest.mark.parametrize("partition", [1, 5, -1])
def test_produce_unknown_partition(leader, topic, partition):
    with Conn(leader) as c:
        r = produce(c, topic, kwire.record_batch([(b"k", b"v")]), partition=partition)
        assert r["error"] == UNKNOWN_TOPIC_OR_PARTITION, r
        assert still_usable(c)


@pytest.mark.parametrize("acks", [2, -2, 5])
def test_produce_invalid_required_acks(leader, topic, acks):
    with Conn(leader) as c:
        r = produce(c, topic, kwire.record_batch([(b"k", b"v")]), acks=acks)
        assert r["error"] == INVALID_REQUIRED_ACKS, r
        assert latest_offset(c, topic) == 0


# ---------------------------------------------------------------------------
# Other wire behaviour
# ---------------------------------------------------------------------------


def test_pipelined_requests_answered_in_order(leader, topic):
    with Conn(leader) as c:
        data = b""
        for i in range(10):
            if i % 2:
                frame = request_header(kwire.API_VERSIONS, 0, 100 + i)
            else:
                frame = request_header(kwire.METADATA, 4, 100 + i) + kwire.metadata_v4_body([topic])
            data += i32(len(frame)) + frame
        c.send_raw(data)
        corrs = [struct.unpack(">i", c.recv_frame()[:4])[0] for _ in range(10)]
    assert corrs == list(range(100, 110))


def test_null_client_id_and_negative_correlation_id(broker):
    with Conn(broker) as c:
        c.send_frame(request_header(kwire.API_VERSIONS, 0, -42, client_id=None))
        frame = c.recv_frame()
        assert frame is not None
        assert struct.unpack(">i", frame[:4])[0] == -42
        assert kwire.parse_api_versions_v0(frame[4:])[0] == 0


def test_unknown_topic_list_offsets_and_fetch(broker):
    name = unique_topic("raw-nope")
    with Conn(broker) as c:
        _, body = c.request(kwire.LIST_OFFSETS, 1, kwire.list_offsets_v1_body(name, 0, -1))
        assert kwire.parse_list_offsets_v1(body)[(name, 0)]["error"] == UNKNOWN_TOPIC_OR_PARTITION
        _, body = c.request(kwire.FETCH, 4, kwire.fetch_v4_body(name, 0, 0, max_wait_ms=100))
        assert kwire.parse_fetch_v4(body)[(name, 0)]["error"] == UNKNOWN_TOPIC_OR_PARTITION
        assert still_usable(c)


# ---------------------------------------------------------------------------
# Idempotent producer sequence rules
# ---------------------------------------------------------------------------

OUT_OF_ORDER_SEQUENCE_NUMBER = 45


def test_idempotent_duplicate_and_sequence_gap(broker, leader, topic):
    """A retried batch is acknowledged at its original offset and not written again; a
    batch that skips sequence numbers gets OUT_OF_ORDER_SEQUENCE_NUMBER."""
    deadline = time.monotonic() + 30
    while True:
        with Conn(str(broker).split(",")[0]) as c:
            _, body = c.request(kwire.INIT_PRODUCER_ID, 0, string(None) + i32(60000))
        r = kwire.Reader(body)
        r.i32()
        err, pid, epoch = r.i16(), r.i64(), r.i16()
        # Kafka answers COORDINATOR_LOAD_IN_PROGRESS (14) until its id block is ready.
        if err not in (14, 15) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert err == 0 and pid >= 0, (err, pid)

    def batch(seq: int, n: int) -> bytes:
        return kwire.record_batch([(b"k", f"s{seq + i}".encode()) for i in range(n)],
                                  producer_id=pid, producer_epoch=epoch, base_sequence=seq)

    with Conn(leader) as c:
        first = produce(c, topic, batch(0, 3))
        assert (first["error"], first["base_offset"]) == (0, 0), first
        again = produce(c, topic, batch(0, 3))
        assert (again["error"], again["base_offset"]) == (0, 0), again
        assert latest_offset(c, topic) == 3, "the retried batch was written twice"
        gap = produce(c, topic, batch(5, 1))
        assert gap["error"] == OUT_OF_ORDER_SEQUENCE_NUMBER, gap
        nxt = produce(c, topic, batch(3, 2))
        assert (nxt["error"], nxt["base_offset"]) == (0, 3), nxt
        assert latest_offset(c, topic) == 5
