"""Log compaction (cleanup.policy=compact), side by side with Apache Kafka: which offsets
remain after the cleaner runs, each key's latest value, tombstones, records without a key;
and on Chronik, that the cleaned replicas of a region stay byte-identical through a
leader kill. (Mirrors of a compacted topic: test_dclink.py.)"""

from __future__ import annotations

import time

import pytest
from confluent_kafka import KafkaError

import kwire
from conftest import CLUSTERED
from harness import wait_until
from kclient import (
    create_topic,
    produce_all,
    producer,
    records_to_high_watermark,
    unique_topic,
    watermarks,
)

# Kafka cleans only segments it has rolled: segment.ms makes the next batch with a later
# timestamp roll the segment. Chronik has no segments (the setting is accepted, no effect).
INVALID_RECORD, CORRUPT_MESSAGE = 87, 2
COMPACT = {"cleanup.policy": "compact", "min.cleanable.dirty.ratio": "0.01", "segment.ms": "100"}


def _now_ms() -> int:
    return int(time.time() * 1000)


def _produce_keyed(bootstrap: str, topic: str, pairs: list[tuple[bytes, bytes | None]], ts: int) -> list[int]:
    """Produce (key, value) pairs in order (one in flight, so offsets follow the list);
    returns their offsets."""
    reports = produce_all(bootstrap, topic, [{"key": k, "value": v, "timestamp": ts} for k, v in pairs],
                          acks="all", **{"enable.idempotence": True, "linger.ms": 20})
    assert all(r[0] is None for r in reports), [r[0] for r in reports if r[0]][:3]
    return [r[2] for r in reports]


def _sentinel(bootstrap: str, topic: str, ts: int, key: bytes = b"sentinel") -> int:
    """One record (`key`: b"end"), stamped well after `ts`: it rolls Kafka's segment (so
    everything before it is cleanable there), and it is the batch Chronik never cleans.
    Neither counts its key when cleaning, so a later sentinel takes a key of its own."""
    (off,) = _produce_keyed(bootstrap, topic, [(key, b"end")], ts + 10_000)
    return off


def _latest(pairs: list[tuple[bytes, bytes | None]], offsets: list[int]) -> dict[bytes, tuple[int, bytes | None]]:
    out = {}
    for (k, v), o in zip(pairs, offsets):
        out[k] = (o, v)
    return out


def _wait_compacted(bootstrap: str, topic: str, expected: dict[int, tuple[bytes, bytes | None]],
                    timeout: float = 90.0) -> list:
    """Wait until the partition holds exactly the records `expected` ({offset: (key, value)})."""
    seen: dict = {}

    def done():
        got = records_to_high_watermark(bootstrap, topic)
        seen["last"] = got
        return {o: (k, v) for o, k, v in got} == expected

    try:
        wait_until(done, timeout, interval=0.5, what="the cleaner to leave only each key's latest record")
    except TimeoutError as e:
        got = seen.get("last", [])
        extra = sorted(o for o, _, _ in got if o not in expected)
        missing = sorted(set(expected) - {o for o, _, _ in got})
        raise AssertionError(f"{len(got)} records left, {len(expected)} expected; extra offsets {extra[:20]}, "
                             f"missing {missing[:20]}") from e
    return seen["last"]


def test_cleaner_keeps_each_keys_latest_record_at_its_offset(broker):
    """20 keys written 15 times each, then tombstones for five of them: once the cleaner has
    run, exactly each key's latest record remains (the tombstones too, within
    delete.retention.ms), every one at the offset it was written at, and the log start has
    not moved."""
    topic = unique_topic("compact")
    create_topic(broker, topic, config=COMPACT)
    ts = _now_ms()
    pairs = [(b"k%d" % (i % 20), b"v%d" % i) for i in range(300)]
    pairs += [(b"k%d" % i, None) for i in range(5)]
    offsets = _produce_keyed(broker, topic, pairs, ts)
    assert offsets == list(range(len(pairs)))
    end = _sentinel(broker, topic, ts)
    latest = _latest(pairs, offsets)
    expected = {o: (k, v) for k, (o, v) in latest.items()}
    expected[end] = (b"sentinel", b"end")
    got = _wait_compacted(broker, topic, expected)
    assert [o for o, _, _ in got] == sorted(expected)
    # Offset 0 was cleaned away; the log still starts there, and a read from it starts
    # at the first record kept.
    assert 0 not in expected
    assert watermarks(broker, topic) == (0, end + 1)


def test_tombstones_go_after_delete_retention(broker):
    """With delete.retention.ms=0 a tombstone may go as soon as a pass has reached it:
    once a further pass has run (Kafka removes a tombstone in the pass after the one that
    first saw it, and runs one only for new dirty records), the deleted keys are gone
    entirely and the others keep their latest value."""
    topic = unique_topic("tomb")
    create_topic(broker, topic, config={**COMPACT, "delete.retention.ms": "0"})
    ts = _now_ms()
    pairs = [(b"k%d" % (i % 10), b"v%d" % i) for i in range(100)]
    pairs += [(b"k%d" % i, None) for i in range(0, 10, 2)]
    offsets = _produce_keyed(broker, topic, pairs, ts)
    end = _sentinel(broker, topic, ts)
    latest = _latest(pairs, offsets)
    with_tombstones = {o for o, _ in latest.values()} | {end}

    def first_pass_done():
        return {o for o, _, _ in records_to_high_watermark(broker, topic)} <= with_tombstones

    wait_until(first_pass_done, 90, interval=0.5, what="a first pass (only each key's latest record left)")
    end2 = _sentinel(broker, topic, ts + 10_000, key=b"sentinel-2")
    expected = {o: (k, v) for k, (o, v) in latest.items() if v is not None}
    expected[end] = (b"sentinel", b"end")
    expected[end2] = (b"sentinel-2", b"end")
    _wait_compacted(broker, topic, expected)


def test_compacted_topic_refuses_records_without_a_key(broker):
    """A record without a key cannot be compacted: the produce fails with INVALID_RECORD and
    nothing of the batch is written; keyed records still go in."""
    topic = unique_topic("nokey")
    create_topic(broker, topic, config=COMPACT)
    p = producer(broker, acks="all", **{"enable.idempotence": False, "retries": 0})
    results = []
    p.produce(topic, value=b"no key", on_delivery=lambda err, msg: results.append(err))
    assert p.flush(30) == 0
    (err,) = results
    assert err is not None and err.code() == KafkaError.INVALID_RECORD, err
    _produce_keyed(broker, topic, [(b"k", b"v")], _now_ms())
    assert [(k, v) for _, k, v in records_to_high_watermark(broker, topic)] == [(b"k", b"v")]


def test_compact_and_delete_applies_retention_too(broker):
    """cleanup.policy=compact,delete also deletes by retention.ms; a compact-only topic
    keeps its old records however old."""
    both, only = unique_topic("cd"), unique_topic("conly")
    create_topic(broker, both, config={**COMPACT, "cleanup.policy": "compact,delete", "retention.ms": "5000"})
    create_topic(broker, only, config={**COMPACT, "retention.ms": "5000"})
    old = _now_ms() - 3_600_000
    for t in (both, only):
        _produce_keyed(broker, t, [(b"a", b"old")], old)
        _sentinel(broker, t, _now_ms())
    wait_until(lambda: watermarks(broker, both)[0] > 0, 60, interval=0.5, what="retention to cut the compact,delete topic")
    # The compact-only topic keeps offset 0 ("a"'s only record) and its log start.
    assert [(o, k) for o, k, _ in records_to_high_watermark(broker, only)][0] == (0, b"a")
    assert watermarks(broker, only)[0] == 0


def _zstd_bomb(size: int) -> bytes:
    """A zstd batch of one record whose value is `size` zero bytes: a few KiB on the wire."""
    import zstandard

    record = kwire.encode_record(0, 0, b"k", bytes(size))
    section = zstandard.ZstdCompressor().compress(record)
    ts = _now_ms()
    after_crc = (kwire.i16(4) + kwire.i32(0) + kwire.i64(ts) + kwire.i64(ts) + kwire.i64(-1) + kwire.i16(-1)
                 + kwire.i32(-1) + kwire.i32(1) + section)
    rest = kwire.i32(-1) + kwire.i8(2) + kwire.u32(kwire.crc32c(after_crc)) + after_crc
    return kwire.i64(0) + kwire.i32(len(rest)) + rest


@pytest.mark.chronik
@pytest.mark.skipif(CLUSTERED, reason="one broker is enough")
def test_a_decompression_bomb_is_refused_and_the_broker_lives(chronik):
    """When the leader must read a batch's records (a compacted topic's keys, another
    compression.type), a batch that decompresses past 128 MiB is refused without being
    expanded: INVALID_RECORD on a compacted topic, CORRUPT_MESSAGE for recompression."""
    bs = chronik.bootstrap
    bomb = _zstd_bomb(160 << 20)
    assert len(bomb) < 64 << 10
    compacted, recompressed = unique_topic("bomb-compact"), unique_topic("bomb-lz4")
    create_topic(bs, compacted, config=COMPACT)
    create_topic(bs, recompressed, config={"compression.type": "lz4"})
    for topic, code in ((compacted, INVALID_RECORD), (recompressed, CORRUPT_MESSAGE)):
        with kwire.Conn(bs) as c:
            _, body = c.request(kwire.PRODUCE, 8, kwire.produce_body(topic, 0, bomb))
        assert kwire.parse_produce_v8(body)[(topic, 0)]["error"] == code, topic
    # Still serving, and a sane batch goes in.
    _produce_keyed(bs, compacted, [(b"k", b"v")], _now_ms())
    assert [(k, v) for _, k, v in records_to_high_watermark(bs, compacted)] == [(b"k", b"v")]


@pytest.mark.chronik
@pytest.mark.skipif(CLUSTERED, reason="starts its own three-broker region; the one-broker pass runs it")
def test_compacted_replicas_stay_identical_through_a_leader_kill(chronik_cluster_factory):
    """Three replicas of a compacted partition hold byte-identical logs after each pass (the
    leader's rewrite goes through the Raft log), also when the leader is killed and its
    successor cleans the next round; the killed broker catches up to the same bytes."""
    from cluster import create_topic as create_cluster_topic

    c = chronik_cluster_factory(3, cleaner_backoff_ms=300)
    topic = unique_topic("compact-rf3")
    create_cluster_topic(c, topic, partitions=1, replication_factor=3, config=COMPACT)
    bs = c.bootstrap
    ts = _now_ms()
    pairs = [(b"k%d" % (i % 8), b"a%d" % i) for i in range(200)]
    offsets = _produce_keyed(bs, topic, pairs, ts)
    end = _sentinel(bs, topic, ts)
    expected = {o: (k, v) for k, (o, v) in _latest(pairs, offsets).items()}
    expected[end] = (b"sentinel", b"end")
    _wait_compacted(bs, topic, expected)
    c.wait_replicas_converged(topic, 0)

    leader = c.leader_of(topic, 0)
    c.kill9(leader)
    rest = [i for i in c.ids if i != leader]
    bs2 = c.bootstrap_of(rest)
    more = [(b"k%d" % (i % 8), b"b%d" % i) for i in range(40)]
    more_offsets = _produce_keyed(bs2, topic, more, ts + 20_000)
    end2 = _sentinel(bs2, topic, ts + 20_000, key=b"sentinel-2")
    everything = pairs + [(b"sentinel", b"end")] + more + [(b"sentinel-2", b"end")]
    expected = {o: (k, v) for k, (o, v) in _latest(everything, offsets + [end] + more_offsets + [end2]).items()}
    _wait_compacted(bs2, topic, expected)
    c.restart(leader)
    c.wait_replicas_converged(topic, 0)
    assert {o: (k, v) for o, k, v in records_to_high_watermark(c.bootstrap, topic)} == expected
