"""Client-level helpers (confluent-kafka / kafka-python) shared by the tests.

All waits are bounded; failures raise AssertionError with what was seen so far.
"""

from __future__ import annotations

import time
import uuid

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

DEFAULT_TIMEOUT = 30.0


def unique_topic(prefix: str = "t") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


_admins: dict = {}


def admin(bootstrap: str, **conf) -> AdminClient:
    """A cached AdminClient per (bootstrap, conf).

    Cached because a librdkafka handle destroyed while a request is in flight fails
    its futures with _DESTROY, which `admin(bs).create_topics(...)` would otherwise do."""
    key = (str(bootstrap), tuple(sorted(conf.items())))
    a = _admins.get(key)
    if a is None:
        a = _admins[key] = AdminClient({"bootstrap.servers": str(bootstrap), "socket.timeout.ms": 10000,
                                        "allow.auto.create.topics": False, **conf})
    return a


def future_error(fut, timeout: float = DEFAULT_TIMEOUT) -> KafkaError | None:
    """Wait for an admin future; return None on success or the KafkaError."""
    try:
        fut.result(timeout=timeout)
        return None
    except KafkaException as e:
        return e.args[0]


def topic_metadata(bootstrap: str, topic: str, timeout: float = 10.0) -> tuple[dict, dict] | None:
    """({partition: leader}, {broker id: "host:port"}) from a raw Metadata v4 request
    that never auto-creates, or None if the topic is unknown.

    (Deliberately not AdminClient.list_topics(topic=...): librdkafka sends that with
    allow_auto_topic_creation=true and keeps refreshing the topic, which re-creates
    a deleted topic on a broker with auto-creation enabled.)"""
    import kwire

    with kwire.Conn(bootstrap, timeout=timeout) as c:
        res = c.request(kwire.METADATA, 4, kwire.metadata_v4_body([topic], allow_auto_create=False))
    if res is None:
        raise ConnectionError("broker closed the connection on a Metadata request")
    md = kwire.parse_metadata_v4(res[1])
    t = md["topics"].get(topic)
    if t is None or t["error"] in (kwire.UNKNOWN_TOPIC_OR_PARTITION, kwire.INVALID_TOPIC_EXCEPTION):
        return None
    if t["error"] != 0:
        raise AssertionError(f"metadata for {topic!r}: error {t['error']}")
    brokers = {node: f"{host}:{port}" for node, host, port, _rack in md["brokers"]}
    return {p: v["leader"] for p, v in t["partitions"].items()}, brokers


def topic_partitions(bootstrap: str, topic: str, timeout: float = 10.0) -> dict | None:
    """{partition: leader}, or None if the topic is unknown (see topic_metadata)."""
    md = topic_metadata(bootstrap, topic, timeout)
    return None if md is None else md[0]


def leader_of(bootstrap: str, topic: str, partition: int = 0) -> str:
    """The "host:port" of the partition's current leader (raw requests that touch
    partition data must go there once a region has more than one broker)."""
    md = topic_metadata(bootstrap, topic)
    assert md is not None, f"topic {topic!r} unknown"
    leaders, brokers = md
    assert leaders.get(partition, -1) in brokers, f"{topic}-{partition} has no leader: {md!r}"
    return brokers[leaders[partition]]


def wait_topic(bootstrap: str, topic: str, partitions: int | None = None, timeout: float = DEFAULT_TIMEOUT) -> dict:
    """Wait until the topic exists with every partition led (and `partitions` of them),
    and each leader serves the partition."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            md = topic_metadata(bootstrap, topic)
            last = None if md is None else md[0]
        except (OSError, AssertionError, ValueError) as e:
            md, last = None, e
        if md is not None and last and all(v >= 0 for v in last.values()) and (
            partitions is None or len(last) == partitions
        ) and _partitions_serving(topic, *md):
            return last
        time.sleep(0.2)
    raise AssertionError(f"topic {topic!r} not ready after {timeout}s (last metadata: {last!r})")


def _partitions_serving(topic: str, leaders: dict, brokers: dict) -> bool:
    """True once each partition's leader answers ListOffsets without error
    (metadata can show a leader slightly before the partition serves requests)."""
    import kwire

    try:
        for p, leader in sorted(leaders.items()):
            if leader not in brokers:
                return False
            with kwire.Conn(brokers[leader], timeout=5) as c:
                res = c.request(kwire.LIST_OFFSETS, 1, kwire.list_offsets_v1_body(topic, p, -1))
                if res is None or kwire.parse_list_offsets_v1(res[1])[(topic, p)]["error"] != 0:
                    return False
        return True
    except (OSError, ValueError, KeyError, TimeoutError):
        return False


def wait_topic_absent(bootstrap: str, topic: str, timeout: float = DEFAULT_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        last = topic_partitions(bootstrap, topic)
        if last is None:
            return
        time.sleep(0.2)
    raise AssertionError(f"topic {topic!r} still present after {timeout}s: {last!r}")


def create_topic(bootstrap: str, topic: str, partitions: int = 1, config: dict | None = None,
                 timeout: float = DEFAULT_TIMEOUT) -> None:
    fut = admin(bootstrap).create_topics([NewTopic(topic, partitions, config=config or {})],
                                          operation_timeout=timeout)[topic]
    err = future_error(fut, timeout)
    assert err is None, f"create_topics({topic}) failed: {err}"
    wait_topic(bootstrap, topic, partitions, timeout)


def producer(bootstrap: str, **conf) -> Producer:
    base = {"bootstrap.servers": bootstrap, "linger.ms": 5, "message.timeout.ms": 30000}
    base.update(conf)
    return Producer(base)


def produce_all(bootstrap: str, topic: str, messages: list[dict], timeout: float = DEFAULT_TIMEOUT, **conf) -> list:
    """Produce `messages` (dicts of Producer.produce kwargs) and flush.

    Returns the delivery reports in produce order as (error, partition, offset, timestamp)."""
    p = producer(bootstrap, **conf)
    reports: list = [None] * len(messages)

    def cb_for(i):
        def cb(err, msg):
            reports[i] = (err, msg.partition(), msg.offset(), msg.timestamp())
        return cb

    for i, m in enumerate(messages):
        while True:
            try:
                p.produce(topic, on_delivery=cb_for(i), **m)
                break
            except BufferError:
                p.poll(0.1)
        p.poll(0)
    remaining = p.flush(timeout)
    assert remaining == 0, f"{remaining} messages still undelivered after {timeout}s"
    missing = [i for i, r in enumerate(reports) if r is None]
    assert not missing, f"no delivery report for messages {missing[:10]}"
    return reports


def consumer(bootstrap: str, **conf) -> Consumer:
    # confluent-kafka requires a group.id, but we never subscribe or commit: only assign().
    base = {
        "bootstrap.servers": bootstrap,
        "group.id": "chronik-tests-" + uuid.uuid4().hex[:8],
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": False,
        "fetch.wait.max.ms": 100,
    }
    base.update(conf)
    return Consumer(base)


def consume(bootstrap: str, topic: str, partition: int = 0, start: int = OFFSET_BEGINNING, count: int = 1,
            timeout: float = DEFAULT_TIMEOUT, **conf) -> list:
    """Read exactly `count` messages from one partition starting at `start` (manual assign)."""
    c = consumer(bootstrap, **conf)
    out = []
    try:
        c.assign([TopicPartition(topic, partition, start)])
        deadline = time.monotonic() + timeout
        while len(out) < count and time.monotonic() < deadline:
            batch = c.consume(num_messages=min(1000, count - len(out)), timeout=0.5)
            for m in batch:
                if m.error():
                    raise AssertionError(f"consumer error: {m.error()}")
                out.append(m)
    finally:
        c.close()
    assert len(out) == count, f"consumed {len(out)} of {count} messages from {topic}[{partition}] in {timeout}s"
    return out


def values_to_high_watermark(bootstrap: str, topic: str, partition: int = 0, timeout: float = 60.0) -> list:
    """Every record value of one partition, from its log start to its high watermark."""
    return [v for _, _, v in records_to_high_watermark(bootstrap, topic, partition, timeout)]


def records_to_high_watermark(bootstrap: str, topic: str, partition: int = 0, timeout: float = 60.0) -> list:
    """(offset, key, value) of every record of one partition from its log start to its high
    watermark. Offsets may have holes (a compacted topic), so this reads until the consumer's
    position reaches the high watermark rather than counting records."""
    low, high = watermarks(bootstrap, topic, partition)
    out: list = []
    if high <= low:
        return out
    c = consumer(bootstrap)
    try:
        tp = TopicPartition(topic, partition, low)
        c.assign([tp])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    raise AssertionError(f"consumer error: {m.error()}")
                if m.offset() < high:  # records produced since are not asked for
                    out.append((m.offset(), m.key(), m.value()))
            if out and out[-1][0] >= high - 1:
                return out
            (pos,) = c.position([TopicPartition(topic, partition)])
            if pos.offset >= high:
                return out
    finally:
        c.close()
    raise AssertionError(f"read {len(out)} records of {topic}[{partition}] but not up to its high watermark "
                         f"{high} in {timeout}s (last offset {out[-1][0] if out else None})")


# Errors a client retries after refreshing metadata: the partition's leader is moving, or
# the broker asked has not yet learnt of a topic another broker of the region already lists
# (metadata reaches a region's brokers one after another, as in Kafka; the Java client
# retries UNKNOWN_TOPIC_OR_PARTITION too), or a new leader of a global_quorum partition has
# not yet heard how far the mirrors hold it (OFFSET_NOT_AVAILABLE, as Kafka's KIP-207).
_LEADERSHIP_MOVING = {KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE,
                      KafkaError.FENCED_LEADER_EPOCH, KafkaError.UNKNOWN_LEADER_EPOCH,
                      KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError._UNKNOWN_PARTITION,
                      KafkaError.OFFSET_NOT_AVAILABLE}


def watermarks(bootstrap: str, topic: str, partition: int = 0, timeout: float = 10.0) -> tuple[int, int]:
    """(earliest, latest) offsets via ListOffsets (not cached).

    librdkafka gives up on the first retriable error (NOT_LEADER while leadership moves,
    e.g. preferred-leader balancing after a restart); the Java client retries those after a
    metadata refresh, and so does this until `timeout`. A leader that was just killed is still
    named by Metadata until its successor is elected (on Kafka as on Chronik), and librdkafka
    keeps dialling it for the whole call instead of asking again; so each attempt is short and
    a timed-out one starts over with a new client, which reads the metadata afresh."""
    deadline = time.monotonic() + timeout
    c = consumer(bootstrap)
    try:
        while True:
            left = deadline - time.monotonic()
            try:
                return c.get_watermark_offsets(TopicPartition(topic, partition), timeout=max(min(left, 3.0), 0.1),
                                               cached=False)
            except KafkaException as e:
                code = e.args[0].code()
                if code not in _LEADERSHIP_MOVING | {KafkaError._TIMED_OUT} or left <= 0.5:
                    raise
                if code == KafkaError._TIMED_OUT:
                    c.close()
                    c = consumer(bootstrap)
                else:
                    time.sleep(0.2)
    finally:
        c.close()


def forget_clients(bootstrap: str) -> None:
    """Drop cached clients for a broker that is going away (avoids reconnect spam at exit)."""
    for key in [k for k in _admins if k[0] == str(bootstrap)]:
        del _admins[key]
