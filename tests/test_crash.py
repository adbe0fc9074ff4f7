"""Crash safety: every record acknowledged with acks=all survives kill -9.

Chronik-only. The same scenario also runs once against Apache Kafka with
flush.messages=1 (fsync before every ack), which validates the scenario itself:
a test that Kafka-with-fsync fails would be a broken test, not a finding.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import TopicPartition

from kclient import consumer, create_topic, producer, unique_topic, wait_topic, watermarks

PARTITIONS = 3
MAX_MESSAGES = 200_000
KILL_AFTER_S = 2.0
RATE_PER_S = 25_000  # paced so that records are still flowing when the kill lands


def _consume_partition(bootstrap: str, topic: str, partition: int, end: int, timeout: float = 120.0) -> dict:
    """offset -> value for [0, end) of one partition."""
    out: dict[int, bytes] = {}
    if end == 0:
        return out
    c = consumer(bootstrap, **{"fetch.wait.max.ms": 50})
    try:
        c.assign([TopicPartition(topic, partition, 0)])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=5000, timeout=0.5):
                assert m.error() is None, m.error()
                out[m.offset()] = m.value()
            if out and max(out) >= end - 1:
                break
    finally:
        c.close()
    return out


def run_crash_scenario(broker) -> dict:
    """Produce acks=all, kill -9 the broker mid-stream, restart, verify every ack survived.

    `broker` is a harness process (Chronik or ApacheKafka) with .bootstrap, .kill9(), .restart()."""
    bs = broker.bootstrap
    topic = unique_topic("crash")
    create_topic(bs, topic, partitions=PARTITIONS)

    acked: list[tuple[int, int, bytes]] = []
    failed: list = []
    lock = threading.Lock()
    killed_at: list[float] = []

    def on_delivery(err, msg):
        with lock:
            if err is None:
                acked.append((msg.partition(), msg.offset(), msg.value()))
            else:
                failed.append(err)

    p = producer(bs, **{
        "acks": "all",
        "linger.ms": 2,
        "batch.num.messages": 1000,
        "message.timeout.ms": 60000,
        "retry.backoff.ms": 100,
        "reconnect.backoff.max.ms": 500,
        "queue.buffering.max.messages": 50000,
    })

    def killer():
        time.sleep(KILL_AFTER_S)
        broker.kill9()
        killed_at.append(time.monotonic())

    kt = threading.Thread(target=killer, daemon=True)
    kt.start()
    produced = 0
    start = time.monotonic()
    # Produce until shortly after the kill, bounded in count and time.
    while produced < MAX_MESSAGES and time.monotonic() - start < 30:
        if killed_at and time.monotonic() - killed_at[0] > 0.3:
            break
        if produced > (time.monotonic() - start) * RATE_PER_S:
            p.poll(0.001)
            continue
        value = f"{produced:09d}".encode() + b"." * 91
        try:
            p.produce(topic, value=value, partition=produced % PARTITIONS, on_delivery=on_delivery)
            produced += 1
        except BufferError:
            p.poll(0.05)
        p.poll(0)
    kt.join(30)
    assert killed_at, "broker was not killed"
    with lock:
        acked_before_kill = len(acked)
    assert acked_before_kill >= 100, f"only {acked_before_kill} acks before the kill: scenario too weak"

    # Restart on the same data; the producer reconnects and finishes (or fails) the rest.
    broker.restart()
    remaining = p.flush(90)
    assert remaining == 0, f"{remaining} messages neither delivered nor failed"

    wait_topic(bs, topic, PARTITIONS, timeout=60)
    by_partition: dict[int, dict[int, bytes]] = {i: {} for i in range(PARTITIONS)}
    for part, off, val in acked:
        assert off >= 0
        prev = by_partition[part].setdefault(off, val)
        assert prev == val, f"two different records acked at {part}/{off}"

    for part in range(PARTITIONS):
        lo, hi = watermarks(bs, topic, part)
        acks = by_partition[part]
        assert lo == 0
        if acks:
            assert hi >= max(acks) + 1, f"partition {part}: high watermark {hi} < last acked offset {max(acks)} + 1"
        log = _consume_partition(bs, topic, part, hi)
        assert sorted(log) == list(range(hi)), f"partition {part}: offsets are not contiguous 0..{hi - 1}"
        lost = [(o, v) for o, v in acks.items() if log.get(o) != v]
        assert not lost, (f"partition {part}: {len(lost)} acknowledged records lost or changed, e.g. "
                          f"{[(o, v[:9], log.get(o, b'<missing>')[:9]) for o, v in sorted(lost)[:5]]}")
    return {"produced": produced, "acked": len(acked), "acked_before_kill": acked_before_kill,
            "failed": len(failed)}


@pytest.mark.chronik
def test_kill9_preserves_acked_records(chronik_factory):
    c = chronik_factory(durability="fsync")
    stats = run_crash_scenario(c)
    print("crash scenario:", stats)


@pytest.mark.oracle_only
def test_kill9_scenario_holds_on_kafka_with_fsync(kafka_factory):
    k = kafka_factory(**{"flush.messages": 1})
    stats = run_crash_scenario(k)
    print("crash scenario (kafka, flush.messages=1):", stats)


@pytest.mark.chronik
def test_graceful_restart_preserves_everything(chronik_factory):
    c = chronik_factory(durability="fsync")
    bs = c.bootstrap
    topic = unique_topic("restart")
    create_topic(bs, topic, partitions=2)
    p = producer(bs, acks="all")
    values = [f"r{i}".encode() for i in range(2000)]
    for i, v in enumerate(values):
        p.produce(topic, value=v, partition=i % 2)
        p.poll(0)
    assert p.flush(30) == 0
    c.stop()
    c.restart()
    wait_topic(bs, topic, 2, timeout=60)
    for part in range(2):
        assert watermarks(bs, topic, part) == (0, 1000)
        log = _consume_partition(bs, topic, part, 1000)
        assert [log[o] for o in range(1000)] == values[part::2]
    # The restarted broker keeps accepting writes at the next offset.
    got = {}
    p.produce(topic, value=b"after", partition=0, on_delivery=lambda e, m: got.update(err=e, off=m.offset()))
    assert p.flush(30) == 0
    assert got == {"err": None, "off": 1000}
