#!/usr/bin/env python3
"""group-consume (Python): consume a topic as a member of a consumer group (classic
protocol), log every processed record and every rebalance, commit synchronously after
each poll batch. Same interface as the Java, Go and kafkajs programs (described in
tests/test_group_clients.py):

  python3 group_consume.py --client confluent-kafka|kafka-python --bootstrap H:P[,H:P] \\
      --topic T --group G --out FILE [--max-seconds S] [--idle-exit-ms N] \\
      [--assignor range|cooperative-sticky] [--instance-id ID] \\
      [--session-timeout-ms N] [--heartbeat-interval-ms N] [--max-poll-records N]

FILE: one "partition offset value" line per processed record, flushed after every batch
(before the batch's commit). FILE.rebalance: "epoch_ms event partitions [detail]" lines
(events start, assigned, revoked, lost, commit-failed, error, closing, exit). One JSON
summary line on stdout. Exit 0 on SIGTERM, idle exit or max-seconds (after closing the
consumer, which leaves the group); 2 if the consumer failed; 1 on bad arguments.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import sys
import time

CLIENTS = ("confluent-kafka", "kafka-python")


class Run:
    def __init__(self, args) -> None:
        self.args = args
        self.records = open(args.out, "a", encoding="utf-8")
        self.events = open(args.out + ".rebalance", "a", encoding="utf-8")
        self.stopping = False
        self.consumed = 0
        self.batches = 0
        self.commits = 0
        self.commit_failures = 0
        self.exit_reason = ""
        self.error_class = None
        self.error_message = None

    def event(self, what: str, partitions=None, detail: str = "") -> None:
        ps = "-" if not partitions else ",".join(str(p) for p in sorted(set(partitions)))
        line = f"{int(time.time() * 1000)} {what} {ps}" + (f" {detail}".replace("\n", " ") if detail else "")
        self.events.write(line + "\n")
        self.events.flush()
        print(f"[group-consume {self.args.client}] {line}", file=sys.stderr, flush=True)

    def process(self, recs) -> dict:
        """recs: [(partition, offset, value bytes|None)] -> {partition: next offset}."""
        nxt = {}
        lines = []
        for p, o, v in recs:
            lines.append(f"{p} {o} {'null' if v is None else v.decode('utf-8', 'replace')}\n")
            nxt[p] = o + 1
        self.records.write("".join(lines))
        self.records.flush()
        self.consumed += len(recs)
        self.batches += 1
        return nxt

    def summary(self) -> None:
        print(json.dumps({"client": self.args.client, "consumed": self.consumed, "batches": self.batches,
                          "commits": self.commits, "commit_failures": self.commit_failures,
                          "exit": self.exit_reason, "error_class": self.error_class,
                          "error_message": self.error_message}), flush=True)

    def should_stop(self, start: float, last_record: float) -> bool:
        now = time.monotonic()
        if self.stopping:
            self.exit_reason = "sigterm"
        elif now - start >= self.args.max_seconds:
            self.exit_reason = "max-seconds"
        elif self.args.idle_exit_ms > 0 and self.consumed > 0 and (now - last_record) * 1000 >= self.args.idle_exit_ms:
            self.exit_reason = "idle"
        else:
            return False
        return True

    def fail(self, e: BaseException) -> None:
        self.error_class = type(e).__name__
        self.error_message = str(e)
        self.exit_reason = "error"
        self.event("error", None, f"{self.error_class}: {self.error_message}")

    def commit_failed(self, partitions, n: int, why) -> None:
        self.commit_failures += 1
        self.event("commit-failed", partitions, f"n={n} {why}")

    @contextlib.contextmanager
    def consuming(self, close):
        """The consumer's run: an exception ends it (fail(): reported in the summary); either way
        log "closing" and call close(), which leaves the group (dynamic member)."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - reported in the summary
            self.fail(e)
        finally:
            self.event("closing", None, self.exit_reason)
            close()


# ---------------------------------------------------------------------------
# confluent-kafka (librdkafka)
# ---------------------------------------------------------------------------


def run_confluent(r: Run) -> None:
    from confluent_kafka import Consumer, KafkaException, TopicPartition

    a = r.args
    conf = {
        "bootstrap.servers": a.bootstrap,
        "group.id": a.group,
        "client.id": f"group-consume-confluent-{os.getpid()}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": a.session_timeout_ms,
        "heartbeat.interval.ms": a.heartbeat_interval_ms,
        "partition.assignment.strategy": a.assignor,
        "fetch.wait.max.ms": 100,
        "error_cb": lambda e: r.event("client-error", None, str(e)),
    }
    if a.instance_id:
        conf["group.instance.id"] = a.instance_id
    c = Consumer(conf)
    with r.consuming(c.close):
        c.subscribe([a.topic],
                    on_assign=lambda _c, tps: r.event("assigned", [tp.partition for tp in tps]),
                    on_revoke=lambda _c, tps: r.event("revoked", [tp.partition for tp in tps]),
                    on_lost=lambda _c, tps: r.event("lost", [tp.partition for tp in tps]))
        start = last = time.monotonic()
        while not r.should_stop(start, last):
            msgs = c.consume(num_messages=a.max_poll_records, timeout=0.2)
            recs = []
            for m in msgs:
                err = m.error()
                if err is not None:
                    if err.fatal():
                        raise KafkaException(err)
                    r.event("client-error", None, str(err))
                    continue
                recs.append((m.partition(), m.offset(), m.value()))
            if not recs:
                continue
            last = time.monotonic()
            nxt = r.process(recs)
            offsets = [TopicPartition(a.topic, p, o) for p, o in nxt.items()]
            try:
                res = c.commit(offsets=offsets, asynchronous=False)
                bad = [tp for tp in res or [] if tp.error is not None]
                if bad:
                    r.commit_failed([tp.partition for tp in bad], len(recs), bad[0].error)
                else:
                    r.commits += 1
            except KafkaException as e:
                r.commit_failed(list(nxt), len(recs), e.args[0] if e.args else e)


# ---------------------------------------------------------------------------
# kafka-python
# ---------------------------------------------------------------------------


def run_kafka_python(r: Run) -> None:
    from kafka import ConsumerRebalanceListener, KafkaConsumer, TopicPartition
    from kafka.coordinator.assignors.cooperative_sticky import CooperativeStickyAssignor
    from kafka.coordinator.assignors.range import RangePartitionAssignor
    from kafka.errors import KafkaError
    from kafka.structs import OffsetAndMetadata

    a = r.args

    class Listener(ConsumerRebalanceListener):
        def on_partitions_revoked(self, revoked):
            r.event("revoked", [tp.partition for tp in revoked])

        def on_partitions_assigned(self, assigned):
            r.event("assigned", [tp.partition for tp in assigned])

        def on_partitions_lost(self, lost):
            r.event("lost", [tp.partition for tp in lost])

    kw = dict(bootstrap_servers=a.bootstrap.split(","), group_id=a.group,
              client_id=f"group-consume-kafka-python-{os.getpid()}", enable_auto_commit=False,
              auto_offset_reset="earliest", session_timeout_ms=a.session_timeout_ms,
              heartbeat_interval_ms=a.heartbeat_interval_ms, max_poll_records=a.max_poll_records,
              request_timeout_ms=15000, fetch_max_wait_ms=100,
              partition_assignment_strategy=[RangePartitionAssignor if a.assignor == "range"
                                             else CooperativeStickyAssignor])
    if a.instance_id:
        kw["group_instance_id"] = a.instance_id
    c = KafkaConsumer(**kw)
    with r.consuming(lambda: c.close(autocommit=False)):
        c.subscribe([a.topic], listener=Listener())
        start = last = time.monotonic()
        while not r.should_stop(start, last):
            polled = c.poll(timeout_ms=200, max_records=a.max_poll_records)
            recs = [(m.partition, m.offset, m.value) for batch in polled.values() for m in batch]
            if not recs:
                continue
            last = time.monotonic()
            nxt = r.process(recs)
            try:
                c.commit({TopicPartition(a.topic, p): OffsetAndMetadata(o, "", -1) for p, o in nxt.items()})
                r.commits += 1
            except KafkaError as e:
                r.commit_failed(list(nxt), len(recs), f"{type(e).__name__}: {e}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--client", choices=CLIENTS, default="confluent-kafka")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--group", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--max-seconds", type=float, default=120)
    ap.add_argument("--idle-exit-ms", type=int, default=0)
    ap.add_argument("--assignor", choices=("range", "cooperative-sticky"), default="range")
    ap.add_argument("--instance-id")
    ap.add_argument("--session-timeout-ms", type=int, default=6000)
    ap.add_argument("--heartbeat-interval-ms", type=int, default=1000)
    ap.add_argument("--max-poll-records", type=int, default=500)
    try:
        args = ap.parse_args()
    except SystemExit as e:
        return 1 if e.code else 0

    r = Run(args)

    def on_term(signum, frame):
        r.stopping = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGINT, on_term)
    r.event("start", None, f"client={args.client} assignor={args.assignor} pid={os.getpid()}")
    try:
        (run_confluent if args.client == "confluent-kafka" else run_kafka_python)(r)
    except Exception as e:  # noqa: BLE001 - constructor failures etc.
        r.fail(e)
    r.event("exit", None, r.exit_reason)
    r.records.close()
    r.events.close()
    r.summary()
    return 0 if r.error_class is None else 2


if __name__ == "__main__":
    sys.exit(main())
