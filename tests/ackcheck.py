"""Acknowledged-write bookkeeping and verification, shared by the cluster tests.

  acks = AckLog()
  prod = ProducerThread(bootstrap, topic, partitions=[0, 1], acks=acks, rate=500, max_seconds=60).start()
  cons = ConsumerThread(bootstrap, topic, partitions=[0, 1], max_seconds=120).start()
  ...                                    # faults
  prod.stop(); cons.stop()
  log = read_partition(bootstrap, topic, 0)            # {offset: value}, from a fresh consumer
  verify_partition(0, log, acks)                       # raises AssertionError listing every problem
  assert not consumer_mismatches(cons.seen, {0: log})  # nothing a consumer saw was lost or changed

Every value produced here is unique and self-describing: b"<tag>:<partition>:<seq>:" padded to
VALUE_SIZE bytes, seq counting up per (tag, partition). So a duplicate is any value at two
offsets, order is seq order, and foreign records are values that do not parse.

Every loop is bounded in time and count.
"""

from __future__ import annotations

import collections
import threading
import time
import uuid
from collections import defaultdict

from confluent_kafka import OFFSET_BEGINNING, KafkaError, Producer, TopicPartition

import kwire
from kclient import consumer, watermarks

VALUE_SIZE = 64

# An idempotent acks=all producer that rides out leader changes quickly.
IDEMPOTENT = {
    "enable.idempotence": True,
    "acks": "all",
    "max.in.flight.requests.per.connection": 5,
    "linger.ms": 5,
    "compression.type": "none",  # dumps are compared record by record: keep batches decodable
    "message.timeout.ms": 30000,
    "request.timeout.ms": 5000,
    "retry.backoff.ms": 50,
    "retry.backoff.max.ms": 500,
    "reconnect.backoff.ms": 50,
    "reconnect.backoff.max.ms": 500,
    "socket.connection.setup.timeout.ms": 3000,
    "topic.metadata.refresh.interval.ms": 5000,
}


def make_value(tag: str, partition: int, seq: int) -> bytes:
    v = f"{tag}:{partition}:{seq:08d}:".encode()
    return v + b"." * max(0, VALUE_SIZE - len(v))


def parse_value(v: bytes | None) -> tuple[str, int, int] | None:
    """(tag, partition, seq) of a value made by make_value, else None."""
    try:
        tag, part, seq, _ = v.decode().split(":", 3)
        return tag, int(part), int(seq)
    except (AttributeError, ValueError, UnicodeDecodeError):
        return None


def new_tag(prefix: str = "w") -> str:
    return f"{prefix}{uuid.uuid4().hex[:6]}"


class AckLog:
    """Thread-safe record of delivery reports.

    acked:  (partition, offset) -> value      every ack the client got
    times:  value -> monotonic time of its ack
    sent:   value -> monotonic time it was handed to the client
    failed: [(value, KafkaError)]             definite errors and timeouts (outcome unknown
                                              unless the error says the write was rejected)
    acked_no_offset: partition -> [value]     acks without an offset (librdkafka reports a
                                              retried batch the broker already had as success
                                              with offset unknown): must be stored exactly once
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.acked: dict[tuple[int, int], bytes] = {}
        self.times: dict[bytes, float] = {}
        self.sent: dict[bytes, float] = {}
        self.failed: list[tuple[bytes, KafkaError]] = []
        self.conflicts: list[str] = []
        self.acked_no_offset: dict[int, list[bytes]] = defaultdict(list)

    def on_sent(self, value: bytes) -> None:
        with self.lock:
            self.sent[value] = time.monotonic()

    def on_delivery(self, err, msg) -> None:
        now = time.monotonic()
        with self.lock:
            if err is not None:
                self.failed.append((msg.value(), err))
                return
            self.times[msg.value()] = now
            if msg.offset() is None or msg.offset() < 0:
                self.acked_no_offset[msg.partition()].append(msg.value())
                return
            key = (msg.partition(), msg.offset())
            prev = self.acked.get(key)
            if prev is not None and prev != msg.value():
                self.conflicts.append(f"partition {key[0]} offset {key[1]} acked for {prev[:24]!r} "
                                      f"and for {msg.value()[:24]!r}")
            self.acked[key] = msg.value()

    def record_ack(self, partition: int, offset: int, value: bytes) -> None:
        """Record an ack obtained outside on_delivery (e.g. from a synchronous probe)."""
        with self.lock:
            self.acked[(partition, offset)] = value
            self.times[value] = time.monotonic()

    def count(self) -> int:
        """Acknowledged records (with or without a known offset)."""
        with self.lock:
            return len(self.acked) + sum(map(len, self.acked_no_offset.values()))

    def for_partition(self, p: int) -> dict[int, bytes]:
        with self.lock:
            return {o: v for (pp, o), v in self.acked.items() if pp == p}

    def first_ack_of_message_sent_after(self, t: float) -> float | None:
        """Ack time of the earliest-acked message that was handed to the client after t."""
        with self.lock:
            ts = [self.times[v] for v in self.times if self.sent.get(v, -1.0) > t]
        return min(ts) if ts else None

    def failed_values(self, codes: set[int] | None = None) -> list[bytes]:
        with self.lock:
            return [v for v, e in self.failed if codes is None or e.code() in codes]


def _drive(p: Producer, topic: str, partition: int, value: bytes, acks: AckLog, deadline: float) -> bool:
    """Hand one record to the client (waiting out a full queue until deadline)."""
    while True:
        try:
            acks.on_sent(value)
            p.produce(topic, value=value, partition=partition, on_delivery=acks.on_delivery)
            return True
        except BufferError:
            if time.monotonic() > deadline:
                return False
            p.poll(0.05)


def produce_batch(bootstrap: str, topic: str, partition: int, count: int, acks: AckLog, tag: str | None = None,
                  timeout: float = 60.0, start_seq: int = 0, **conf) -> list[bytes]:
    """Produce `count` records to one partition (idempotent, acks=all unless conf says otherwise)
    and wait, bounded, for every delivery report. Returns the values."""
    tag = tag or new_tag("b")
    p = Producer({"bootstrap.servers": bootstrap, **IDEMPOTENT, **conf})
    deadline = time.monotonic() + timeout
    values = [make_value(tag, partition, start_seq + i) for i in range(count)]
    for v in values:
        if not _drive(p, topic, partition, v, acks, deadline):
            raise AssertionError(f"producer queue stayed full for {timeout}s")
        p.poll(0)
    left = p.flush(max(1.0, deadline - time.monotonic()))
    assert left == 0, f"{left} of {count} records neither acked nor failed after {timeout}s"
    return values


class _EosLogger:
    """A logging.Logger stand-in for confluent_kafka's `logger`: keeps librdkafka's lines about
    producer ids, epochs and sequence errors."""

    KEEP = ("epoch", "Epoch", "bump", "PID", "sequence", "SEQUENCE", "UNKNOWN_PRODUCER", "fatal", "persisted")

    def __init__(self, out: "collections.deque[str]") -> None:
        self.out = out

    def log(self, level: int, fmt: str, *args) -> None:
        line = fmt % args if args else fmt
        if any(k in line for k in self.KEEP):
            self.out.append(f"{time.strftime('%H:%M:%S')} {line}")


class ProducerThread(threading.Thread):
    """Produce continuously (round-robin over `partitions`, paced at `rate` records/s) until
    stop(), max_messages or max_seconds; records every report in `acks`."""

    def __init__(self, bootstrap: str, topic: str, partitions=(0,), acks: AckLog | None = None, rate: float = 500,
                 max_messages: int = 200_000, max_seconds: float = 120, tag: str | None = None,
                 flush_timeout: float = 60, **conf) -> None:
        super().__init__(daemon=True, name=f"producer-{topic}")
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, list(partitions)
        self.acks = acks or AckLog()
        self.rate, self.max_messages, self.max_seconds = rate, max_messages, max_seconds
        self.tag = tag or new_tag("c")
        self.flush_timeout = flush_timeout
        # librdkafka's idempotence log (debug=eos): an epoch bump resends what it could not
        # confirm with new sequence numbers, so a duplicate in the log is explained by these lines.
        self.eos_events: collections.deque[str] = collections.deque(maxlen=200)
        self.conf = {"bootstrap.servers": bootstrap, **IDEMPOTENT, "debug": "eos",
                     "logger": _EosLogger(self.eos_events), **conf}
        self.produced = 0
        self.unflushed: int | None = None
        self.error: BaseException | None = None
        self._stop_evt = threading.Event()

    def start(self) -> "ProducerThread":
        super().start()
        return self

    def run(self) -> None:
        try:
            p = Producer(self.conf)
            seq = defaultdict(int)
            t0 = time.monotonic()
            hard_deadline = t0 + self.max_seconds
            while not self._stop_evt.is_set() and self.produced < self.max_messages:
                now = time.monotonic()
                if now > hard_deadline:
                    break
                due = t0 + self.produced / self.rate
                if now < due:
                    p.poll(min(due - now, 0.01))
                    continue
                part = self.partitions[self.produced % len(self.partitions)]
                v = make_value(self.tag, part, seq[part])
                if not _drive(p, self.topic, part, v, self.acks, hard_deadline):
                    break
                seq[part] += 1
                self.produced += 1
                p.poll(0)
            self.unflushed = p.flush(self.flush_timeout)
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def abandon(self, timeout: float = 20) -> None:
        """Stop without checking anything (for error paths: never masks the real failure)."""
        self._stop_evt.set()
        self.flush_timeout = min(self.flush_timeout, 5)
        self.join(timeout)

    def stop(self, timeout: float | None = None) -> "ProducerThread":
        """Stop producing, wait (bounded) for outstanding reports; raise if that fails."""
        self._stop_evt.set()
        self.join(timeout if timeout is not None else self.flush_timeout + 15)
        if self.is_alive():
            raise AssertionError("producer thread did not finish")
        if self.error:
            raise AssertionError(f"producer thread failed: {self.error!r}")
        assert self.unflushed == 0, f"{self.unflushed} records neither acked nor failed at the end"
        return self


class ConsumerThread(threading.Thread):
    """Consume `partitions` from the beginning until stop() or max_seconds, recording
    (partition, offset) -> value. Two different values at one position are recorded
    in `conflicts`; client errors (transient during faults) in `errors`."""

    def __init__(self, bootstrap: str, topic: str, partitions=(0,), max_seconds: float = 180, **conf) -> None:
        super().__init__(daemon=True, name=f"consumer-{topic}")
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, list(partitions)
        self.max_seconds = max_seconds
        self.conf = {"auto.offset.reset": "earliest", "reconnect.backoff.max.ms": 500,
                     "socket.connection.setup.timeout.ms": 3000, "topic.metadata.refresh.interval.ms": 5000, **conf}
        self.seen: dict[tuple[int, int], bytes] = {}
        self.conflicts: list[str] = []
        self.errors: list[str] = []
        self.error: BaseException | None = None
        self._stop_evt = threading.Event()

    def start(self) -> "ConsumerThread":
        super().start()
        return self

    def run(self) -> None:
        try:
            c = consumer(self.bootstrap, **self.conf)
            try:
                c.assign([TopicPartition(self.topic, p, OFFSET_BEGINNING) for p in self.partitions])
                deadline = time.monotonic() + self.max_seconds
                while not self._stop_evt.is_set() and time.monotonic() < deadline:
                    for m in c.consume(num_messages=1000, timeout=0.2):
                        if m.error():
                            if len(self.errors) < 1000:
                                self.errors.append(str(m.error()))
                            continue
                        key = (m.partition(), m.offset())
                        prev = self.seen.get(key)
                        if prev is not None and prev != m.value():
                            self.conflicts.append(f"{key}: {prev[:24]!r} then {m.value()[:24]!r}")
                        self.seen[key] = m.value()
            finally:
                c.close()
        except BaseException as e:  # noqa: BLE001
            self.error = e

    def caught_up(self, ends: dict[int, int]) -> bool:
        """True once every partition p has been read up to offset ends[p] - 1."""
        have = defaultdict(lambda: -1)
        for (p, o) in list(self.seen):
            have[p] = max(have[p], o)
        return all(end == 0 or have[p] >= end - 1 for p, end in ends.items())

    def abandon(self, timeout: float = 15) -> None:
        self._stop_evt.set()
        self.join(timeout)

    def stop(self, timeout: float = 15) -> "ConsumerThread":
        self._stop_evt.set()
        self.join(timeout)
        if self.is_alive():
            raise AssertionError("consumer thread did not finish")
        if self.error:
            raise AssertionError(f"consumer thread failed: {self.error!r}")
        return self


# ---------------------------------------------------------------------------
# Reading a partition back
# ---------------------------------------------------------------------------


def read_partition(bootstrap: str, topic: str, partition: int,
                   timeout: float = 60.0) -> tuple[dict[int, bytes], int, int]:
    """({offset: value}, log_start, high_watermark) read by a fresh consumer from the beginning."""
    lo, hi = watermarks(bootstrap, topic, partition, timeout=min(timeout, 15))
    out: dict[int, bytes] = {}
    if hi <= lo:
        return out, lo, hi
    c = consumer(bootstrap, **{"fetch.wait.max.ms": 50, "auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, partition, lo)])
        deadline = time.monotonic() + timeout
        last = -1
        while time.monotonic() < deadline and last < hi - 1:
            for m in c.consume(num_messages=5000, timeout=0.5):
                if m.error():
                    if m.error().code() in (KafkaError._TRANSPORT, KafkaError._ALL_BROKERS_DOWN,
                                            KafkaError.NOT_LEADER_OR_FOLLOWER, KafkaError.LEADER_NOT_AVAILABLE):
                        continue
                    raise AssertionError(f"reading {topic}/{partition}: {m.error()}")
                prev = out.setdefault(m.offset(), m.value())
                assert prev == m.value(), f"{topic}/{partition} offset {m.offset()} read twice with different values"
                last = max(last, m.offset())
    finally:
        c.close()
    assert last >= hi - 1, f"read {topic}/{partition} up to offset {last} of [{lo}, {hi}) in {timeout}s"
    return {o: v for o, v in out.items() if o < hi}, lo, hi


def records_from_dump(dump: bytes) -> dict[int, bytes]:
    """{offset: value} of a concatenation of RecordBatch v2 (a replica's log dump).

    Asserts the bytes are whole, magic-2, CRC-valid, uncompressed batches, no offset twice."""
    out: dict[int, bytes] = {}
    pos = 0
    while pos < len(dump):
        assert pos + 17 <= len(dump), f"log dump: {len(dump) - pos} trailing bytes that are not a whole batch"
        base = int.from_bytes(dump[pos:pos + 8], "big", signed=True)
        length = int.from_bytes(dump[pos + 8:pos + 12], "big", signed=True)
        end = pos + 12 + length
        assert length >= 49 and end <= len(dump), \
            f"log dump: {len(dump) - pos} trailing bytes that are not a whole batch"
        batch = dump[pos:end]
        assert batch[16] == 2, f"batch at {base}: magic {batch[16]}"
        assert int.from_bytes(batch[17:21], "big") == kwire.crc32c(batch[21:]), f"batch at {base}: bad CRC"
        try:
            (b,) = kwire.parse_record_batches(batch)
        except ValueError as e:
            raise AssertionError(f"batch at {base}: undecodable ({e})") from e
        assert b["attributes"] & 0x7 == 0, f"batch at {base}: compressed (attributes {b['attributes']})"
        assert len(b["records"]) == b["count"], f"batch at {base}: {b['count']} records declared"
        for off, _ts, _key, val in b["records"]:
            assert off not in out, f"offset {off} appears twice in the dump"
            out[off] = val
        pos = end
    return out


def _check_replicas_and_read(cluster, topic: str, p: int, timeout: float = 90.0):
    """Read topic/p of a 3-node cluster (cluster.ChronikCluster or harness.KafkaCluster, e.g.
    the any_cluster fixture) back through a client; on Chronik also wait until every replica has
    converged and check the dump holds exactly what the client reads.
    Returns (log {offset: value}, log_start, high_watermark)."""
    hw = dump = None
    if cluster.kind == "chronik":
        hw, dump = cluster.wait_replicas_converged(topic, p, cluster.ids, timeout)
    log, lo, hi = read_partition(cluster.bootstrap_of(cluster.live_ids()), topic, p)
    if dump is not None:
        assert hi == hw, f"clients see high watermark {hi}, replicas report {hw}"
        from_dump = records_from_dump(dump)
        assert from_dump == log, (f"replica dump ({len(from_dump)} records) differs from what a consumer reads "
                                  f"({len(log)} records)")
    return log, lo, hi


# ---------------------------------------------------------------------------
# Verification
# ---------------------------------------------------------------------------


def partition_problems(partition: int, log: dict[int, bytes], acked: dict[int, bytes], log_start: int = 0,
                       high_watermark: int | None = None, foreign_ok: bool = False) -> list[str]:
    """Everything wrong with one partition's final log given what was acknowledged:
      * offsets not contiguous from log_start to high_watermark - 1;
      * an acknowledged record missing or different at its acknowledged offset (lost);
      * a value stored at two offsets (duplicate);
      * acknowledged records of one producer stored out of produce order;
      * (unless foreign_ok) a record this test did not produce."""
    problems: list[str] = []
    hw = high_watermark if high_watermark is not None else (max(log) + 1 if log else log_start)
    offsets = sorted(log)
    if offsets != list(range(log_start, hw)):
        missing = sorted(set(range(log_start, hw)) - set(offsets))
        extra = sorted(set(offsets) - set(range(log_start, hw)))
        problems.append(f"offsets not contiguous in [{log_start}, {hw}): {len(missing)} missing "
                        f"(e.g. {missing[:5]}), {len(extra)} outside (e.g. {extra[:5]})")
    lost = [(o, v) for o, v in sorted(acked.items()) if log.get(o) != v]
    if lost:
        problems.append(f"{len(lost)} acknowledged records lost or changed, e.g. "
                        + ", ".join(f"@{o}: acked {v[:20]!r} found {log.get(o, b'<none>')[:20]!r}"
                                    for o, v in lost[:5]))
    where: dict[bytes, list[int]] = defaultdict(list)
    for o, v in log.items():
        where[v].append(o)
    dups = {v: os_ for v, os_ in where.items() if len(os_) > 1}
    if dups:
        problems.append(f"{len(dups)} values stored more than once, e.g. "
                        + ", ".join(f"{v[:20]!r} at {sorted(os_)}" for v, os_ in list(dups.items())[:5]))
    by_producer: dict[tuple[str, int], list[tuple[int, int]]] = defaultdict(list)
    for o, v in sorted(acked.items()):
        pv = parse_value(v)
        if pv:
            by_producer[(pv[0], pv[1])].append((o, pv[2]))
    for (tag, part), seq in by_producer.items():
        bad = [(a, b) for a, b in zip(seq, seq[1:]) if b[1] <= a[1]]
        if bad:
            problems.append(f"producer {tag}: acknowledged records out of order, e.g. offset {bad[0][0][0]} has seq "
                            f"{bad[0][0][1]} but offset {bad[0][1][0]} has seq {bad[0][1][1]}")
        if part != partition:
            problems.append(f"producer {tag}: a record for partition {part} was acked on partition {partition}")
    if not foreign_ok:
        foreign = [o for o, v in log.items() if parse_value(v) is None]
        if foreign:
            problems.append(f"{len(foreign)} records this test never produced, e.g. at {sorted(foreign)[:5]}")
    return [f"partition {partition}: {p}" for p in problems]


def verify_partition(partition: int, log: dict[int, bytes], acks: AckLog | dict[int, bytes], log_start: int = 0,
                     high_watermark: int | None = None, foreign_ok: bool = False) -> dict:
    """Assert partition_problems() is empty; return a small summary."""
    acked = acks.for_partition(partition) if isinstance(acks, AckLog) else acks
    problems = partition_problems(partition, log, acked, log_start, high_watermark, foreign_ok)
    if isinstance(acks, AckLog):
        if acks.conflicts:
            problems += [f"client saw two acks for one offset: {c}" for c in acks.conflicts[:5]]
        with acks.lock:
            unplaced = list(acks.acked_no_offset.get(partition, ()))
        stored = set(log.values())
        lost = [v for v in unplaced if v not in stored]
        if lost:
            problems.append(f"partition {partition}: {len(lost)} records acknowledged without an offset are not "
                            f"in the log, e.g. {[v[:20] for v in lost[:5]]}")
    assert not problems, "\n".join(problems)
    return {"partition": partition, "records": len(log), "acked": len(acked)}


def consumer_mismatches(seen: dict[tuple[int, int], bytes], logs: dict[int, dict[int, bytes]]) -> list[str]:
    """Records a live consumer read that the final log does not hold at the same offset:
    the cluster exposed data it later lost (read above the real high watermark)."""
    out = []
    for (p, o), v in sorted(seen.items()):
        if logs.get(p, {}).get(o) != v:
            out.append(f"partition {p} offset {o}: consumer read {v[:24]!r}, final log has "
                       f"{logs.get(p, {}).get(o, b'<none>')[:24]!r}")
    return out
