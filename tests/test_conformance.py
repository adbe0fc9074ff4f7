"""Client-level conformance scenarios, run against Apache Kafka and Chronik alike.

Every test takes the parametrized `broker` fixture (a bootstrap string with
.kind "kafka" or "chronik"), so each scenario runs against both brokers and
must observe the same behaviour. Consumers use manual assignment only (no
consumer groups).
"""

from __future__ import annotations

import json
import struct
import threading
import time
import uuid

import pytest
from confluent_kafka import (
    OFFSET_BEGINNING,
    TIMESTAMP_CREATE_TIME,
    KafkaError,
    KafkaException,
    Producer,
    TopicCollection,
    TopicPartition,
)
from confluent_kafka.admin import (
    AlterConfigOpType,
    ConfigEntry,
    ConfigResource,
    NewPartitions,
    NewTopic,
)

import kwire
from harness import wait_until
from kclient import (
    admin,
    consume,
    consumer,
    create_topic,
    future_error,
    produce_all,
    leader_of,
    topic_partitions,
    unique_topic,
    wait_topic,
    wait_topic_absent,
    watermarks,
)

# Kafka protocol error codes used below.
OFFSET_OUT_OF_RANGE = 1
UNKNOWN_TOPIC_OR_PARTITION = 3
UNKNOWN_LEADER_EPOCH = 75
UNKNOWN_TOPIC_ID = 100
INVALID_TOPIC_EXCEPTION = 17
TOPIC_ALREADY_EXISTS = 36
INVALID_PARTITIONS = 37
INVALID_CONFIG = 40
POLICY_VIOLATION = 44


def _recent_ts() -> int:
    """A base timestamp one minute ago: old enough to be distinct, well inside the
    default 7-day retention (fixed historic timestamps would be deleted by retention)."""
    return int(time.time() * 1000) - 60_000


def _msgs(n: int, base_ts: int, with_specials: bool = True) -> list[dict]:
    """n produce() kwarg dicts with keys, values, headers and explicit timestamps."""
    out = []
    for i in range(n):
        m = {
            "key": f"key-{i}".encode(),
            "value": f"value-{i}-".encode() * (1 + i % 7),
            "headers": [("idx", str(i).encode()), ("dup", b"a"), ("dup", b"b")],
            "timestamp": base_ts + i,
        }
        out.append(m)
    if with_specials and n >= 6:
        out[0]["key"] = None  # null key
        out[1]["value"] = None  # tombstone
        out[2]["value"] = b""  # empty value
        out[3]["value"] = bytes(range(256)) * 256  # 64 KiB binary
        out[4]["headers"] = []  # no headers
        out[5]["headers"] = [("nullh", None), ("utf8-ключ", "значение".encode())]
    return out


def _norm_headers(h):
    return [(k, v) for k, v in (h or [])]


def _check_consumed(consumed, sent, first_offset=0):
    assert [m.offset() for m in consumed] == list(range(first_offset, first_offset + len(sent)))
    for m, s in zip(consumed, sent):
        assert m.key() == s["key"], f"offset {m.offset()}: key"
        assert m.value() == s["value"], f"offset {m.offset()}: value"
        assert _norm_headers(m.headers()) == s["headers"], f"offset {m.offset()}: headers"
        assert m.timestamp() == (TIMESTAMP_CREATE_TIME, s["timestamp"]), f"offset {m.offset()}: timestamp"


# ---------------------------------------------------------------------------
# Produce / consume
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("acks", ["0", "1", "all"])
def test_produce_consume_roundtrip(broker, acks):
    topic = unique_topic(f"acks{acks}")
    create_topic(broker, topic)
    base_ts = int(time.time() * 1000) - 60_000
    sent = _msgs(50, base_ts)
    reports = produce_all(broker, topic, sent, acks=acks, **{"linger.ms": 20})
    assert [r[0] for r in reports] == [None] * 50, [r[0] for r in reports if r[0]]
    assert {r[1] for r in reports} == {0}
    if acks != "0":  # with acks=0 the client never learns offsets
        assert [r[2] for r in reports] == list(range(50))
    consumed = consume(broker, topic, 0, 0, 50)
    _check_consumed(consumed, sent)
    assert watermarks(broker, topic) == (0, 50)


def test_produce_consume_multi_partition(broker):
    topic = unique_topic("multi")
    create_topic(broker, topic, partitions=3)
    sent = {p: [] for p in range(3)}
    msgs = []
    t0 = _recent_ts()
    for i in range(90):
        p = i % 3
        m = {"key": f"k{i}".encode(), "value": f"v{i}".encode(), "partition": p, "headers": [],
             "timestamp": t0 + i}
        msgs.append(m)
        sent[p].append(m)
    reports = produce_all(broker, topic, msgs, acks="all")
    for m, r in zip(msgs, reports):
        assert r[0] is None and r[1] == m["partition"]
    for p in range(3):
        offs = [r[2] for m, r in zip(msgs, reports) if m["partition"] == p]
        assert offs == list(range(30))
        got = consume(broker, topic, p, 0, 30)
        assert [(x.key(), x.value()) for x in got] == [(m["key"], m["value"]) for m in sent[p]]
        assert watermarks(broker, topic, p) == (0, 30)


def test_consume_from_middle_offset(broker):
    topic = unique_topic("mid")
    create_topic(broker, topic)
    sent = _msgs(20, _recent_ts(), with_specials=False)
    produce_all(broker, topic, sent, acks="all")
    got = consume(broker, topic, 0, 13, 7)
    _check_consumed(got, sent[13:], first_offset=13)


@pytest.mark.parametrize("codec", ["gzip", "snappy", "lz4", "zstd"])
def test_compression_roundtrip(broker, codec):
    topic = unique_topic(f"comp-{codec}")
    create_topic(broker, topic)
    t0 = _recent_ts()
    sent = [{"key": f"k{i}".encode(), "value": (f"compressible payload {i % 10} " * 50).encode(),
             "headers": [("codec", codec.encode())], "timestamp": t0 + i} for i in range(500)]
    reports = produce_all(broker, topic, sent, acks="all",
                          **{"compression.type": codec, "linger.ms": 50, "batch.num.messages": 100})
    assert [r[2] for r in reports] == list(range(500))
    _check_consumed(consume(broker, topic, 0, 0, 500), sent)
    # And from the middle of a compressed batch.
    got = consume(broker, topic, 0, 250, 10)
    _check_consumed(got, sent[250:260], first_offset=250)


# ---------------------------------------------------------------------------
# ListOffsets
# ---------------------------------------------------------------------------


def test_list_offsets(broker):
    topic = unique_topic("lo")
    create_topic(broker, topic)
    assert watermarks(broker, topic) == (0, 0)
    t0 = int(time.time() * 1000) - 100_000
    sent = [{"value": f"v{i}".encode(), "timestamp": t0 + i * 1000} for i in range(10)]
    produce_all(broker, topic, sent, acks="all")
    assert watermarks(broker, topic) == (0, 10)

    c = consumer(broker)
    try:
        def lookup(ts):
            r = c.offsets_for_times([TopicPartition(topic, 0, ts)], timeout=10)
            assert r[0].error is None, r[0].error
            return r[0].offset

        assert lookup(t0 - 5000) == 0  # before everything -> first record
        assert lookup(t0) == 0
        assert lookup(t0 + 1) == 1  # first record with timestamp >= ts
        assert lookup(t0 + 3500) == 4
        assert lookup(t0 + 9000) == 9
        assert lookup(t0 + 9001) == -1  # nothing at/after ts -> -1 (OFFSET_END)
    finally:
        c.close()


def test_list_offsets_kafka_python(broker):
    from kafka import KafkaConsumer, TopicPartition as KTP

    topic = unique_topic("lo-kp")
    create_topic(broker, topic)
    t0 = _recent_ts()
    produce_all(broker, topic, [{"value": b"x", "timestamp": t0 + i * 10} for i in range(5)], acks="all")
    c = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False,
                      request_timeout_ms=15000)
    try:
        tp = KTP(topic, 0)
        assert c.beginning_offsets([tp]) == {tp: 0}
        assert c.end_offsets([tp]) == {tp: 5}
        r = c.offsets_for_times({tp: t0 + 15})
        assert r[tp].offset == 2 and r[tp].timestamp == t0 + 20
        assert c.offsets_for_times({tp: t0 + 1000}) == {tp: None}
    finally:
        c.close()


# ---------------------------------------------------------------------------
# Fetch long-poll
# ---------------------------------------------------------------------------


def test_fetch_long_poll_wakes_on_produce(broker):
    """A consumer parked in a long Fetch (max wait 10 s) gets a record produced 1 s later promptly."""
    topic = unique_topic("lp")
    create_topic(broker, topic)
    c = consumer(broker, **{"fetch.wait.max.ms": 10000})
    acked = {}

    def produce_later():
        time.sleep(1.0)
        r = produce_all(broker, topic, [{"value": b"wake-up"}], acks="all", **{"linger.ms": 0})
        acked["t"] = time.monotonic()
        acked["r"] = r

    try:
        c.assign([TopicPartition(topic, 0, 0)])
        # Let the consumer connect and park its first Fetch before producing.
        c.poll(0.5)
        start = time.monotonic()
        th = threading.Thread(target=produce_later, daemon=True)
        th.start()
        got = None
        while got is None and time.monotonic() - start < 15:
            m = c.poll(0.2)
            if m is not None:
                assert m.error() is None, m.error()
                got = m
                got_at = time.monotonic()
        th.join(20)
    finally:
        c.close()
    assert got is not None, "record never arrived"
    assert got.value() == b"wake-up" and got.offset() == 0
    assert "t" in acked and acked["r"][0][0] is None
    # Without long-poll wake-up the record would only show up when the 10 s wait expires.
    assert got_at - acked["t"] < 2.0, f"record delivered {got_at - acked['t']:.2f}s after it was acked"
    assert got_at - start < 5.0


def test_fetch_max_wait_when_idle(broker):
    """Raw Fetch v4 on an empty partition returns after ~max_wait with no records."""
    topic = unique_topic("mw")
    create_topic(broker, topic)
    with kwire.Conn(leader_of(broker, topic), timeout=15) as conn:
        t = time.monotonic()
        res = conn.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, 0, 0, max_wait_ms=1500))
        elapsed = time.monotonic() - t
        assert res is not None, "connection closed"
        parts = kwire.parse_fetch_v4(res[1])
        p = parts[(topic, 0)]
        assert p["error"] == 0 and p["high_watermark"] == 0
        assert not p["records"]
        assert 1.3 <= elapsed <= 4.0, f"idle fetch returned after {elapsed:.2f}s, expected ~1.5s"

        # With data available the same fetch returns immediately, with the batch.
        produce_all(broker, topic, [{"value": b"hello", "key": b"k"}], acks="all")
        t = time.monotonic()
        res = conn.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, 0, 0, max_wait_ms=5000))
        elapsed = time.monotonic() - t
        p = kwire.parse_fetch_v4(res[1])[(topic, 0)]
        assert p["error"] == 0 and p["high_watermark"] == 1
        batches = kwire.parse_record_batches(p["records"])
        assert len(batches) == 1 and batches[0]["crc_ok"] and batches[0]["magic"] == 2
        assert [(r[0], r[2], r[3]) for r in batches[0]["records"]] == [(0, b"k", b"hello")]
        assert elapsed < 1.0, f"fetch with data available took {elapsed:.2f}s"

        # Fetching at the log end waits again; fetching past it is OFFSET_OUT_OF_RANGE (1).
        res = conn.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, 0, 5, max_wait_ms=100))
        assert kwire.parse_fetch_v4(res[1])[(topic, 0)]["error"] == 1


def _topic_id(bootstrap, topic) -> bytes:
    """The topic's id as its 16 wire bytes (DescribeTopics via the admin client)."""
    d = admin(bootstrap).describe_topics(TopicCollection([topic]), request_timeout=15)[topic].result(timeout=30)
    u = d.topic_id
    mask = (1 << 64) - 1
    return struct.pack(">QQ", u.get_most_significant_bits() & mask, u.get_least_significant_bits() & mask)


def test_fetch_error_partitions_carry_empty_records(broker):
    """Raw Fetch v16 (topic ids) and v4 (names): a partition answered with an error
    (offset out of range, unknown leader epoch, unknown partition, unknown topic id)
    carries an empty records field, never a null one. librdkafka fails the whole Fetch
    response on a null one ("invalid MessageSetSize -1")."""
    topic = unique_topic("ferr")
    create_topic(broker, topic)
    produce_all(broker, topic, [{"value": f"v{i}".encode()} for i in range(3)], acks="all")
    tid = _topic_id(broker, topic)
    unknown_id = uuid.uuid4().bytes
    v16_cases = [
        ("past the log end", (tid, 0, 1000, -1), OFFSET_OUT_OF_RANGE),
        ("a leader epoch from the future", (tid, 0, 0, 1_000_000), UNKNOWN_LEADER_EPOCH),
        ("a partition the topic does not have", (tid, 7, 0, -1), UNKNOWN_TOPIC_OR_PARTITION),
        ("an unknown topic id", (unknown_id, 0, 0, -1), UNKNOWN_TOPIC_ID),
    ]
    with kwire.Conn(leader_of(broker, topic), timeout=15) as conn:
        for what, part, code in v16_cases:
            res = conn.request(kwire.FETCH, 16, kwire.fetch_v16_body([part], max_wait_ms=500), flexible=True)
            assert res is not None, f"connection closed on Fetch v16 for {what}"
            r = kwire.parse_fetch_v16(res[1])
            assert r["error"] == 0, (what, r)
            p = r["partitions"][(part[0], part[1])]
            assert p["error"] == code, (what, p)
            assert p["records"] is not None, f"Fetch v16 for {what}: null records"
            assert p["records"] == b"", (what, p)

        # An error partition next to one with data: both answered, the data intact.
        res = conn.request(kwire.FETCH, 16, kwire.fetch_v16_body([(tid, 0, 0, -1), (tid, 7, 0, -1)], max_wait_ms=500),
                           flexible=True)
        r = kwire.parse_fetch_v16(res[1])["partitions"]
        assert (r[(tid, 7)]["error"], r[(tid, 7)]["records"]) == (UNKNOWN_TOPIC_OR_PARTITION, b"")
        assert r[(tid, 0)]["error"] == 0 and r[(tid, 0)]["high_watermark"] == 3
        batches = kwire.parse_record_batches(r[(tid, 0)]["records"])
        assert [rec[3] for b in batches for rec in b["records"]] == [b"v0", b"v1", b"v2"]

        for what, partition, offset, code in [("past the log end", 0, 1000, OFFSET_OUT_OF_RANGE),
                                             ("a partition the topic does not have", 7, 0,
                                              UNKNOWN_TOPIC_OR_PARTITION)]:
            res = conn.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, partition, offset, max_wait_ms=500))
            assert res is not None, f"connection closed on Fetch v4 for {what}"
            p = kwire.parse_fetch_v4(res[1])[(topic, partition)]
            assert p["error"] == code, (what, p)
            assert p["records"] == b"", f"Fetch v4 for {what}: records {p['records']!r}"


def _partition_stats(stats_json: str, topic: str, partition: int) -> dict | None:
    t = json.loads(stats_json).get("topics", {}).get(topic)
    return None if t is None else t.get("partitions", {}).get(str(partition))


@pytest.mark.parametrize("reset", ["earliest", "latest"])
def test_fetch_out_of_range_applies_auto_offset_reset(broker, reset):
    """A librdkafka consumer assigned an offset past the log end gets OFFSET_OUT_OF_RANGE
    from Fetch and applies auto.offset.reset: `earliest` reads from the log start,
    `latest` moves to the log end and reads what is produced next. Nothing is reported
    as an error on the way (a null records field in the error partition made librdkafka
    fail the whole response with a parse error and never reset)."""
    topic = unique_topic(f"oor-{reset}")
    create_topic(broker, topic)
    produce_all(broker, topic, [{"value": f"v{i}".encode()} for i in range(10)], acks="all")
    errors: list = []
    stats: dict = {}

    def on_stats(js):
        p = _partition_stats(js, topic, 0)
        if p is not None:
            stats["p"] = p

    c = consumer(broker, **{"auto.offset.reset": reset, "error_cb": errors.append,
                            "statistics.interval.ms": 100, "stats_cb": on_stats})
    got = []

    def poll_once():
        m = c.poll(0.1)
        if m is not None:
            assert m.error() is None, m.error()
            got.append((m.offset(), m.value()))

    try:
        c.assign([TopicPartition(topic, 0, 1000)])
        deadline = time.monotonic() + 30
        if reset == "earliest":
            while len(got) < 10:
                assert time.monotonic() < deadline, f"got {got} (stats {stats.get('p')}, errors {errors})"
                poll_once()
            assert got == [(i, f"v{i}".encode()) for i in range(10)]
        else:
            # The reset is visible in the statistics: fetching again, from the log end.
            def reset_done():
                p = stats.get("p") or {}
                return p.get("next_offset") == 10 and p.get("fetch_state") == "active"

            while not reset_done():
                assert time.monotonic() < deadline, f"no reset to the log end: stats {stats.get('p')}, errors {errors}"
                poll_once()
            assert got == [], "latest must not deliver records from before the reset"
            produce_all(broker, topic, [{"value": b"after-reset"}], acks="all")
            while not got:
                assert time.monotonic() < deadline, f"nothing consumed after the reset (stats {stats.get('p')})"
                poll_once()
            assert got == [(10, b"after-reset")]
    finally:
        c.close()
    assert errors == [], errors


# ---------------------------------------------------------------------------
# Admin
# ---------------------------------------------------------------------------


def test_create_topic_and_already_exists(broker):
    topic = unique_topic("adm")
    a = admin(broker)
    assert future_error(a.create_topics([NewTopic(topic, 2)])[topic]) is None
    assert sorted(wait_topic(broker, topic, 2)) == [0, 1]
    err = future_error(a.create_topics([NewTopic(topic, 2)])[topic])
    assert err is not None and err.code() == TOPIC_ALREADY_EXISTS, err


@pytest.mark.parametrize("name", ["bad topic!", ".", "..", "x" * 250, "slash/topic", "tab\ttopic"],
                         ids=["space-bang", "dot", "dotdot", "250chars", "slash", "tab"])
def test_create_invalid_topic_name(broker, name):
    err = future_error(admin(broker).create_topics([NewTopic(name, 1)])[name])
    assert err is not None and err.code() == INVALID_TOPIC_EXCEPTION, err


def test_create_topic_max_length_name_ok(broker):
    name = unique_topic("long")
    name = name + "x" * (249 - len(name))
    assert len(name) == 249
    create_topic(broker, name)
    assert future_error(admin(broker).delete_topics([name])[name]) is None


def test_create_topic_invalid_partitions(broker):
    topic = unique_topic("zero")
    err = future_error(admin(broker).create_topics([NewTopic(topic, 0)])[topic])
    assert err is not None and err.code() == INVALID_PARTITIONS, err


def test_delete_topic(broker):
    topic = unique_topic("del")
    create_topic(broker, topic)
    produce_all(broker, topic, [{"value": b"x"}], acks="all")
    a = admin(broker)
    assert future_error(a.delete_topics([topic])[topic]) is None
    wait_topic_absent(broker, topic)
    err = future_error(a.delete_topics([topic])[topic])
    assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION, err


def test_create_partitions(broker):
    topic = unique_topic("cp")
    create_topic(broker, topic)
    a = admin(broker)
    assert future_error(a.create_partitions([NewPartitions(topic, 3)])[topic]) is None
    assert sorted(wait_topic(broker, topic, 3)) == [0, 1, 2]
    err = future_error(a.create_partitions([NewPartitions(topic, 2)])[topic])
    assert err is not None and err.code() == INVALID_PARTITIONS, err
    err = future_error(a.create_partitions([NewPartitions(topic, 3)])[topic])
    assert err is not None and err.code() == INVALID_PARTITIONS, err
    missing = unique_topic("cp-missing")
    err = future_error(a.create_partitions([NewPartitions(missing, 3)])[missing])
    assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION, err
    # The new partitions are usable.
    r = produce_all(broker, topic, [{"value": b"p2", "partition": 2}], acks="all")
    assert r[0][:3] == (None, 2, 0)


def _describe(a, topic) -> dict:
    """The topic's configs. A cluster's brokers learn a new topic one after another (Kafka's
    as Chronik's), and DescribeConfigs goes to any of them: UNKNOWN_TOPIC_OR_PARTITION from
    one that has not yet is retried, as the Java admin client does, for up to 30 s."""
    deadline = time.monotonic() + 30
    while True:
        (fut,) = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
        try:
            return fut.result(timeout=30)
        except KafkaException as e:
            if e.args[0].code() != KafkaError.UNKNOWN_TOPIC_OR_PART or time.monotonic() > deadline:
                raise
            time.sleep(0.2)


def test_describe_configs(broker):
    topic = unique_topic("dc")
    create_topic(broker, topic)
    a = admin(broker)
    cfg = _describe(a, topic)
    assert "retention.ms" in cfg
    assert int(cfg["retention.ms"].value) > 0
    assert cfg["cleanup.policy"].value == "delete"
    missing = unique_topic("dc-missing")
    (fut,) = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, missing)]).values()
    err = future_error(fut)
    assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION, err


def test_create_topic_with_config(broker):
    topic = unique_topic("cfg")
    create_topic(broker, topic, config={"retention.ms": "3600000"})
    assert _describe(admin(broker), topic)["retention.ms"].value == "3600000"
    bad = unique_topic("cfg-bad")
    err = future_error(admin(broker).create_topics([NewTopic(bad, 1, config={"no.such.config": "1"})])[bad])
    assert err is not None and err.code() == INVALID_CONFIG, err
    assert topic_partitions(broker, bad) is None


def _alter(a, topic, name, value, op=AlterConfigOpType.SET):
    r = ConfigResource(ConfigResource.Type.TOPIC, topic,
                       incremental_configs=[ConfigEntry(name, value, incremental_operation=op)])
    (fut,) = a.incremental_alter_configs([r]).values()
    return future_error(fut)


def test_incremental_alter_configs(broker):
    topic = unique_topic("iac")
    create_topic(broker, topic)
    a = admin(broker)
    default = _describe(a, topic)["retention.ms"].value
    assert _alter(a, topic, "retention.ms", "12345") is None
    # A multi-broker Kafka applies config changes on each broker asynchronously,
    # so a describe answered by another broker may briefly show the old value.
    wait_until(lambda: _describe(a, topic)["retention.ms"].value == "12345", timeout=15,
               what="retention.ms=12345 described")

    err = _alter(a, topic, "no.such.config", "1")
    assert err is not None and err.code() == INVALID_CONFIG, err
    err = _alter(a, topic, "retention.ms", "not-a-number")
    assert err is not None and err.code() == INVALID_CONFIG, err
    assert _describe(a, topic)["retention.ms"].value == "12345"  # failed alters change nothing

    missing = unique_topic("iac-missing")
    err = _alter(a, missing, "retention.ms", "1000")
    assert err is not None and err.code() == UNKNOWN_TOPIC_OR_PARTITION, err

    assert _alter(a, topic, "retention.ms", None, AlterConfigOpType.DELETE) is None
    wait_until(lambda: _describe(a, topic)["retention.ms"].value == default, timeout=15,
               what="retention.ms back to its default")


def test_cleanup_policy_compact_accepted(broker):
    """cleanup.policy=compact (and compact,delete) is accepted at creation and by
    IncrementalAlterConfigs, and described back; an unknown policy is INVALID_CONFIG.
    (What the cleaner does: test_compaction.py.)"""
    a = admin(broker)
    topic = unique_topic("compact")
    create_topic(broker, topic, config={"cleanup.policy": "compact"})
    assert _describe(a, topic)["cleanup.policy"].value == "compact"
    t2 = unique_topic("compact-alter")
    create_topic(broker, t2)
    assert _alter(a, t2, "cleanup.policy", "compact,delete") is None
    wait_until(lambda: _describe(a, t2)["cleanup.policy"].value == "compact,delete", timeout=15,
               what="cleanup.policy=compact,delete described")
    err = _alter(a, t2, "cleanup.policy", "shred")
    assert err is not None and err.code() == INVALID_CONFIG, err


def test_describe_cluster(broker):
    d = admin(broker).describe_cluster(request_timeout=15).result(timeout=30)
    listed = sorted((h, int(p)) for h, p in (a.rsplit(":", 1) for a in str(broker).split(",")))
    assert sorted((n.host, n.port) for n in d.nodes) == listed
    assert sorted(n.id for n in d.nodes) == list(range(1, len(listed) + 1))
    # A KRaft broker reports some live broker as the controller (KIP-919), so with
    # several brokers only membership is comparable.
    assert d.controller is not None and d.controller.id in {n.id for n in d.nodes}
    assert isinstance(d.cluster_id, str) and d.cluster_id


def test_metadata_lists_created_topics(broker):
    topics = [unique_topic("md") for _ in range(3)]
    for i, t in enumerate(topics):
        create_topic(broker, t, partitions=i + 1)
    # Metadata is eventually consistent across brokers (a non-leader learns the ISR
    # from the leader), so every replica must join the ISR within a few seconds.
    deadline = time.monotonic() + 10
    while True:
        md = admin(broker).list_topics(timeout=10)
        ids = sorted(b.id for b in md.brokers.values())
        assert ids == list(range(1, len(str(broker).split(",")) + 1))
        lagging = []
        for i, t in enumerate(topics):
            assert t in md.topics
            parts = md.topics[t].partitions
            assert sorted(parts) == list(range(i + 1))
            for p in parts.values():
                # Replication factor defaults to min(3, brokers).
                assert len(p.replicas) == min(3, len(ids)) and set(p.replicas) <= set(ids)
                assert p.leader in p.replicas and set(p.isrs) <= set(p.replicas)
                if sorted(p.isrs) != sorted(p.replicas):
                    lagging.append((t, p.id, p.isrs, p.replicas))
        if not lagging:
            break
        assert time.monotonic() < deadline, f"replicas missing from the ISR: {lagging}"
        time.sleep(0.2)


# ---------------------------------------------------------------------------
# Auto-creation
# ---------------------------------------------------------------------------


def _raw_metadata(bootstrap, topic, allow_auto_create):
    with kwire.Conn(bootstrap) as c:
        _, body = c.request(kwire.METADATA, 4, kwire.metadata_v4_body([topic], allow_auto_create))
        return kwire.parse_metadata_v4(body)["topics"][topic]


def test_auto_create_on_metadata(broker):
    topic = unique_topic("auto")
    # allow_auto_topic_creation=false never creates.
    assert _raw_metadata(broker, topic, False)["error"] == UNKNOWN_TOPIC_OR_PARTITION
    time.sleep(0.5)
    assert topic_partitions(broker, topic) is None
    # allow_auto_topic_creation=true creates it with the default partition count (1).
    # (Kafka answers the first request with UNKNOWN_TOPIC_OR_PARTITION while creating.)
    _raw_metadata(broker, topic, True)
    assert list(wait_topic(broker, topic, 1, timeout=15)) == [0]


def test_produce_to_new_topic_auto_creates(broker):
    topic = unique_topic("auto-produce")
    r = produce_all(broker, topic, [{"value": b"first"}], acks="all")
    assert r[0][:3] == (None, 0, 0)
    assert consume(broker, topic, 0, 0, 1)[0].value() == b"first"


def test_produce_unknown_topic_autocreate_off(broker_noauto):
    bs = broker_noauto
    topic = unique_topic("noauto")
    # Metadata never creates it, even when the client allows auto-creation.
    assert _raw_metadata(bs, topic, True)["error"] == UNKNOWN_TOPIC_OR_PARTITION
    time.sleep(1.0)
    assert _raw_metadata(bs, topic, True)["error"] == UNKNOWN_TOPIC_OR_PARTITION
    # A raw Produce is refused per partition.
    with kwire.Conn(bs) as c:
        _, body = c.request(kwire.PRODUCE, 8, kwire.produce_body(topic, 0, kwire.record_batch([(b"k", b"v")])))
    assert kwire.parse_produce_v8(body)[(topic, 0)]["error"] == UNKNOWN_TOPIC_OR_PARTITION
    # And the client's delivery fails with "unknown topic".
    reports = produce_all(bs, topic, [{"value": b"x"}], acks="all",
                          **{"topic.metadata.propagation.max.ms": 1000, "message.timeout.ms": 10000})
    err = reports[0][0]
    assert err is not None and err.code() in (KafkaError._UNKNOWN_TOPIC, KafkaError.UNKNOWN_TOPIC_OR_PART), err
    assert topic_partitions(bs, topic) is None


# ---------------------------------------------------------------------------
# Idempotent producer
# ---------------------------------------------------------------------------


def test_idempotent_producer_10k(broker):
    topic = unique_topic("idem")
    create_topic(broker, topic)
    n = 10_000
    sent = [{"key": str(i % 17).encode(), "value": f"idem-{i:05d}".encode()} for i in range(n)]
    reports = produce_all(broker, topic, sent, timeout=60,
                          **{"enable.idempotence": True, "acks": "all", "linger.ms": 5,
                             "max.in.flight.requests.per.connection": 5, "batch.num.messages": 500})
    assert all(r[0] is None for r in reports), [r[0] for r in reports if r[0]][:5]
    assert [r[2] for r in reports] == list(range(n))
    got = consume(broker, topic, 0, 0, n, timeout=60)
    values = [m.value() for m in got]
    assert values == [s["value"] for s in sent]
    assert len(set(values)) == n
    assert watermarks(broker, topic) == (0, n)


# ---------------------------------------------------------------------------
# Retention
# ---------------------------------------------------------------------------


def test_retention_advances_log_start(broker):
    """Records older than retention.ms are deleted: the earliest offset moves past them."""
    topic = unique_topic("ret")
    config = {"retention.ms": "10000"}
    if broker.is_kafka:
        # Kafka only deletes whole, non-active segments: roll segments quickly.
        config.update({"segment.ms": "1000"})
    create_topic(broker, topic, config=config)
    now = int(time.time() * 1000)
    old = [{"value": f"old-{i}".encode(), "timestamp": now - 3_600_000 + i} for i in range(100)]
    produce_all(broker, topic, old, acks="all")
    # The old batch is past retention by record timestamp right away, and by append
    # time ~10 s from now; the new batch stays within retention for >= 10 s.
    time.sleep(3.0)
    new = [{"value": f"new-{i}".encode()} for i in range(10)]
    reports = produce_all(broker, topic, new, acks="all")
    assert [r[2] for r in reports] == list(range(100, 110))

    deadline = time.monotonic() + 60
    lo, hi = watermarks(broker, topic)
    while lo == 0 and time.monotonic() < deadline:
        time.sleep(0.5)
        lo, hi = watermarks(broker, topic)
    assert lo > 0, "log start offset never advanced"
    assert lo <= 100, f"log start offset {lo} is past the records that had not expired"
    assert hi == 110
    # Everything from the new log start is still readable, and offsets are unchanged.
    got = consume(broker, topic, 0, OFFSET_BEGINNING, hi - lo)
    assert [m.offset() for m in got] == list(range(lo, hi))
    assert [m.value() for m in got][-10:] == [m["value"] for m in new]


# ---------------------------------------------------------------------------
# kafka-python
# ---------------------------------------------------------------------------


def test_kafka_python_roundtrip(broker):
    from kafka import KafkaConsumer, KafkaProducer, TopicPartition as KTP

    topic = unique_topic("kp")
    create_topic(broker, topic)
    t0 = _recent_ts()
    p = KafkaProducer(bootstrap_servers=broker, acks="all", linger_ms=5, request_timeout_ms=15000)
    try:
        futs = [p.send(topic, key=f"k{i}".encode(), value=f"v{i}".encode(),
                       headers=[("i", str(i).encode())], timestamp_ms=t0 + i) for i in range(20)]
        p.flush(30)
        metas = [f.get(timeout=30) for f in futs]
    finally:
        p.close(10)
    assert [m.offset for m in metas] == list(range(20))
    assert {m.partition for m in metas} == {0}

    c = KafkaConsumer(bootstrap_servers=broker, group_id=None, enable_auto_commit=False,
                      request_timeout_ms=15000, fetch_max_wait_ms=100)
    try:
        tp = KTP(topic, 0)
        c.assign([tp])
        c.seek(tp, 0)
        recs = []
        deadline = time.monotonic() + 30
        while len(recs) < 20 and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=500).values():
                recs.extend(batch)
    finally:
        c.close()
    assert [(r.offset, r.key, r.value, list(r.headers), r.timestamp) for r in recs] == [
        (i, f"k{i}".encode(), f"v{i}".encode(), [("i", str(i).encode())], t0 + i) for i in range(20)
    ]


def test_kafka_python_admin(broker):
    from kafka.admin import KafkaAdminClient, NewTopic as KNewTopic
    from kafka.errors import InvalidTopicError, TopicAlreadyExistsError, UnknownTopicOrPartitionError

    a = KafkaAdminClient(bootstrap_servers=broker, request_timeout_ms=15000)
    try:
        topic = unique_topic("kpa")
        a.create_topics([KNewTopic(topic, 2, 1)])
        wait_topic(broker, topic, 2)
        with pytest.raises(TopicAlreadyExistsError):
            a.create_topics([KNewTopic(topic, 2, 1)])
        with pytest.raises(InvalidTopicError):
            a.create_topics([KNewTopic("bad topic!", 1, 1)])
        a.delete_topics([topic])
        wait_topic_absent(broker, topic)
        with pytest.raises(UnknownTopicOrPartitionError):
            a.delete_topics([topic])
    finally:
        a.close()


# ---------------------------------------------------------------------------
# Topic compression.type: the broker rewrites batches in the topic's codec
# ---------------------------------------------------------------------------

CODEC_BITS = {"uncompressed": 0, "gzip": 1, "snappy": 2, "lz4": 3, "zstd": 4}


def _stored_codecs(bootstrap: str, topic: str, high: int) -> list[int]:
    """The codec bits of every batch the partition's leader serves, read raw to `high`."""
    codecs, offset = [], 0
    leader = leader_of(bootstrap, topic, 0)
    while offset < high:
        with kwire.Conn(leader, timeout=10) as c:
            res = c.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, 0, offset, 500))
        part = kwire.parse_fetch_v4(res[1])[(topic, 0)]
        assert part["error"] == 0, part
        batches = kwire.parse_record_batches(part["records"] or b"")
        assert batches, f"no batch at offset {offset}"
        for b in batches:
            assert b["crc_ok"], b
            codecs.append(b["attributes"] & 0x7)
            offset = b["base_offset"] + b["last_offset_delta"] + 1
    return codecs


@pytest.mark.parametrize("codec", ["uncompressed", "gzip", "snappy", "lz4", "zstd", "producer"])
def test_topic_compression_type_rewrites_batches(broker, codec):
    """An idempotent producer compresses with lz4 (gzip for an lz4 topic); the topic's
    codec is what the leader serves, every record (key, value, headers, timestamp) unchanged,
    offsets dense; the producer's sequences survive the rewrite, or its next batch would be
    refused as out of order."""
    topic = unique_topic(f"ct-{codec}")
    levels = {"gzip": {"compression.gzip.level": "9"}, "zstd": {"compression.zstd.level": "19"},
              "lz4": {"compression.lz4.level": "12"}}.get(codec, {})
    create_topic(broker, topic, config={"compression.type": codec, **levels})
    sent_with = "gzip" if codec == "lz4" else "lz4"
    t0 = _recent_ts()
    sent = [{"key": f"k{i}".encode(), "value": (f"payload {i % 13} " * 40).encode(),
             "headers": [("i", str(i).encode())], "timestamp": t0 + i} for i in range(400)]
    reports = produce_all(broker, topic, sent, acks="all",
                          **{"compression.type": sent_with, "linger.ms": 50, "batch.num.messages": 100,
                             "enable.idempotence": True})
    assert [r[2] for r in reports] == list(range(400))
    _check_consumed(consume(broker, topic, 0, 0, 400), sent)
    want = CODEC_BITS[sent_with] if codec == "producer" else CODEC_BITS[codec]
    assert set(_stored_codecs(broker, topic, 400)) == {want}
    assert _describe(admin(broker), topic)["compression.type"].value == codec


def test_topic_compression_levels_are_checked(broker):
    topic = unique_topic("ct-levels")
    a = admin(broker)
    for name, value in [("compression.type", "brotli"), ("compression.gzip.level", "10"),
                        ("compression.lz4.level", "18"), ("compression.zstd.level", "23")]:
        err = future_error(a.create_topics([NewTopic(topic, 1, config={name: value})])[topic])
        assert err is not None and err.code() == INVALID_CONFIG, (name, value, err)
    create_topic(broker, topic, config={"compression.type": "zstd"})
    assert _alter(a, topic, "compression.type", "gzip") is None
    assert _alter(a, topic, "compression.gzip.level", "0").code() == INVALID_CONFIG
    assert _describe(a, topic)["compression.type"].value == "gzip"


# ---------------------------------------------------------------------------
# Incremental fetch sessions (KIP-227), raw Fetch v16
# ---------------------------------------------------------------------------

FETCH_SESSION_ID_NOT_FOUND = 70
INVALID_FETCH_SESSION_EPOCH = 71


def test_fetch_sessions(broker):
    """A session answers only partitions with news: records, a moved high watermark, an
    error. Its epoch must follow on, an unknown id is refused, a forgotten partition is no
    longer answered, and epoch -1 closes it. With several brokers, only the partitions led
    by the broker asked are used."""
    topic = unique_topic("fsess")
    create_topic(broker, topic, partitions=6)
    tid = _topic_id(broker, topic)
    leader = leader_of(broker, topic, 0)
    led = [p for p in range(6) if leader_of(broker, topic, p) == leader]
    assert len(led) >= 2, led
    p = Producer({"bootstrap.servers": str(broker), "acks": "all"})
    for q in led:
        for i in range(3):
            p.produce(topic, f"{q}-{i}".encode(), partition=q)
    assert p.flush(30) == 0

    def fetch(conn, parts, session_id, epoch, forgotten=(), wait=0):
        body = kwire.fetch_v16_body(parts, max_wait_ms=wait, min_bytes=1 if wait else 0,
                                    session_id=session_id, session_epoch=epoch, forgotten=list(forgotten))
        res = conn.request(kwire.FETCH, 16, body, flexible=True)
        assert res is not None
        return kwire.parse_fetch_v16(res[1])

    with kwire.Conn(leader, timeout=15) as conn:
        full = fetch(conn, [(tid, q, 0, -1) for q in led], 0, 0)
        assert full["error"] == 0 and full["session_id"] != 0, full
        sid = full["session_id"]
        assert {k[1] for k in full["partitions"]} == set(led)
        assert all(full["partitions"][(tid, q)]["high_watermark"] == 3 for q in led)
        # The client moves every position to 3: nothing new, nothing answered.
        quiet = fetch(conn, [(tid, q, 3, -1) for q in led], sid, 1)
        assert (quiet["error"], quiet["session_id"], quiet["partitions"]) == (0, sid, {}), quiet
        # One record to one partition: only that partition comes back (a long poll).
        target, other = led[0], led[1]
        p.produce(topic, b"new", partition=target)
        assert p.flush(30) == 0
        news = fetch(conn, [], sid, 2, wait=5000)
        assert set(news["partitions"]) == {(tid, target)}, news
        got = kwire.parse_record_batches(news["partitions"][(tid, target)]["records"])
        assert [r[3] for b in got for r in b["records"]] == [b"new"]
        # Epoch 2 again: refused; an unknown session: refused.
        assert fetch(conn, [], sid, 2)["error"] == INVALID_FETCH_SESSION_EPOCH
        assert fetch(conn, [], sid + 1 if sid < 2**31 - 1 else 1, 1)["error"] == FETCH_SESSION_ID_NOT_FOUND
        # Forget `other`; its new record is then not answered, `target`'s position moves to 4.
        assert fetch(conn, [(tid, target, 4, -1)], sid, 3, forgotten=[(tid, other)])["partitions"] == {}
        p.produce(topic, b"unseen", partition=other)
        assert p.flush(30) == 0
        assert fetch(conn, [], sid, 4)["partitions"] == {}
        # Closing: a sessionless full answer.
        closed = fetch(conn, [(tid, other, 3, -1)], sid, -1)
        assert closed["session_id"] == 0
        assert closed["partitions"][(tid, other)]["high_watermark"] == 4
