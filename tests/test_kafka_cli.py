"""Apache Kafka's own command-line tools (from the Kafka 4.1 jars) against Kafka and Chronik.

Each scenario runs the tool's main class exactly as bin/kafka-*.sh would and checks its
output, so a tool that works against Apache Kafka must work unchanged against Chronik:

  kafka-topics           create, list, describe, add partitions, delete
  kafka-configs          alter and describe a topic config
  kafka-consumer-groups  list, describe with lag, reset offsets to earliest (dry run and
                         execute, after which the group re-reads from the start), delete
  kafka-delete-records   moves the log start; consumers then start there
  kafka-transactions     describe-producers lists the idempotent producer and its last sequence
  kafka-leader-election  preferred election (already-elected case; the failover case is in
                         test_cluster.py)
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from confluent_kafka import Consumer

from harness import KAFKA_LIBS
from kclient import consume, produce_all, unique_topic, wait_topic, watermarks

TOPIC_COMMAND = "org.apache.kafka.tools.TopicCommand"
CONFIG_COMMAND = "kafka.admin.ConfigCommand"
GROUP_COMMAND = "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand"
DELETE_RECORDS_COMMAND = "org.apache.kafka.tools.DeleteRecordsCommand"
LEADER_ELECTION_COMMAND = "org.apache.kafka.tools.LeaderElectionCommand"
TRANSACTIONS_COMMAND = "org.apache.kafka.tools.TransactionsCommand"
REASSIGN_COMMAND = "org.apache.kafka.tools.reassign.ReassignPartitionsCommand"


def kafka_cli(main_class: str, *args: str, timeout: float = 90) -> str:
    """Runs one Kafka tool; returns stdout, failing the test with its output if it exits non-zero."""
    cmd = ["java", "-Xmx256m", "-cp", f"{KAFKA_LIBS}/*", main_class, *args]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, (f"{main_class} {' '.join(args)} exited {p.returncode}\n"
                               f"stdout:\n{p.stdout[-3000:]}\nstderr:\n{p.stderr[-3000:]}")
    return p.stdout


def consume_and_commit(bootstrap: str, topic: str, group: str, expect: int, timeout: float = 30) -> list[bytes]:
    """A group member reads `expect` records, commits them and leaves."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False, "session.timeout.ms": 6000})
    c.subscribe([topic])
    got: list[bytes] = []
    deadline = time.monotonic() + timeout
    try:
        while len(got) < expect and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is not None and m.error() is None:
                got.append(m.value())
        assert len(got) == expect, f"read {len(got)} of {expect} records"
        c.commit(asynchronous=False)
    finally:
        c.close()
    return got


def group_rows(out: str, topic: str) -> dict[int, dict]:
    """Parses `kafka-consumer-groups --describe` rows for `topic` into {partition: columns}."""
    lines = [ln.split() for ln in out.splitlines() if ln.strip()]
    header = next(ln for ln in lines if "CURRENT-OFFSET" in ln)
    rows = {}
    for ln in lines:
        if len(ln) >= len(header) - 3 and topic in ln and ln is not header:
            row = dict(zip(header, ln))
            rows[int(row["PARTITION"])] = row
    return rows


def test_kafka_topics_cli(broker):
    bs = str(broker)
    topic = unique_topic("cli")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--create", "--topic", topic, "--partitions", "3",
              "--config", "retention.ms=3600000")
    wait_topic(bs, topic, 3)
    assert topic in kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--list").split()
    out = kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--describe", "--topic", topic)
    assert re.search(rf"Topic: {re.escape(topic)}\s.*PartitionCount: 3", out), out
    assert "retention.ms=3600000" in out, out
    assert len(re.findall(r"Partition: \d+\s+Leader: \d+", out)) == 3, out

    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--alter", "--topic", topic, "--partitions", "5")
    wait_topic(bs, topic, 5)
    out = kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--describe", "--topic", topic)
    assert "PartitionCount: 5" in out, out

    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--delete", "--topic", topic)
    deadline = time.monotonic() + 30
    while topic in kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--list").split():
        assert time.monotonic() < deadline, f"{topic} still listed 30 s after --delete"
        time.sleep(1)


def test_kafka_configs_cli(broker):
    bs = str(broker)
    topic = unique_topic("cfg")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--create", "--topic", topic, "--partitions", "1")
    wait_topic(bs, topic, 1)
    kafka_cli(CONFIG_COMMAND, "--bootstrap-server", bs, "--alter", "--entity-type", "topics",
              "--entity-name", topic, "--add-config", "retention.ms=120000,max.message.bytes=200000")
    out = kafka_cli(CONFIG_COMMAND, "--bootstrap-server", bs, "--describe", "--entity-type", "topics",
                    "--entity-name", topic)
    assert "retention.ms=120000" in out and "max.message.bytes=200000" in out, out
    kafka_cli(CONFIG_COMMAND, "--bootstrap-server", bs, "--alter", "--entity-type", "topics",
              "--entity-name", topic, "--delete-config", "retention.ms")
    out = kafka_cli(CONFIG_COMMAND, "--bootstrap-server", bs, "--describe", "--entity-type", "topics",
                    "--entity-name", topic)
    assert "retention.ms=120000" not in out and "max.message.bytes=200000" in out, out


def test_kafka_consumer_groups_cli_describe_reset_delete(broker):
    bs = str(broker)
    topic, group = unique_topic("cg"), unique_topic("grp")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--create", "--topic", topic, "--partitions", "2")
    wait_topic(bs, topic, 2)
    produce_all(bs, topic, [{"value": f"a{i}".encode(), "partition": i % 2} for i in range(10)], acks="all")
    first = consume_and_commit(bs, topic, group, 10)

    assert group in kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--list").split()
    # Five more records: the group lags by them.
    produce_all(bs, topic, [{"value": f"b{i}".encode(), "partition": 0} for i in range(5)], acks="all")
    out = kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--describe", "--group", group)
    rows = group_rows(out, topic)
    assert {p: (r["CURRENT-OFFSET"], r["LOG-END-OFFSET"], r["LAG"]) for p, r in rows.items()} == {
        0: ("5", "10", "5"), 1: ("5", "5", "0")}, out

    # Dry run first: shows the plan and changes nothing.
    out = kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--reset-offsets", "--group", group, "--topic", topic,
                    "--to-earliest", "--dry-run")
    assert re.search(rf"{re.escape(topic)}\s+0\s+0", out), out
    rows = group_rows(kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--describe", "--group", group), topic)
    assert rows[0]["CURRENT-OFFSET"] == "5", rows

    kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--reset-offsets", "--group", group, "--topic", topic,
              "--to-earliest", "--execute")
    rows = group_rows(kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--describe", "--group", group), topic)
    assert {p: r["CURRENT-OFFSET"] for p, r in rows.items()} == {0: "0", 1: "0"}, rows
    # The group now re-reads everything from the start.
    again = consume_and_commit(bs, topic, group, 15)
    assert sorted(again) == sorted(first + [f"b{i}".encode() for i in range(5)])

    out = kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--delete", "--group", group)
    assert "successful" in out.lower(), out
    assert group not in kafka_cli(GROUP_COMMAND, "--bootstrap-server", bs, "--list").split()


def test_kafka_delete_records_cli(broker, tmp_path):
    bs = str(broker)
    topic = unique_topic("delrec")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--create", "--topic", topic, "--partitions", "1")
    wait_topic(bs, topic, 1)
    # Three batches, so the new log start falls inside the second one.
    for batch in range(3):
        produce_all(bs, topic, [{"value": f"r{batch * 3 + i}".encode(), "partition": 0} for i in range(3)],
                    acks="all")
    spec = tmp_path / "offsets.json"
    spec.write_text(json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": 0, "offset": 4}]}))
    out = kafka_cli(DELETE_RECORDS_COMMAND, "--bootstrap-server", bs, "--offset-json-file", str(spec))
    assert re.search(rf"partition: {re.escape(topic)}-0\s+low_watermark: 4", out), out
    assert watermarks(bs, topic, 0) == (4, 9)
    msgs = consume(bs, topic, 0, count=5)  # from the beginning: starts at the new log start
    assert [(m.offset(), m.value()) for m in msgs] == [(o, f"r{o}".encode()) for o in range(4, 9)]


def test_kafka_leader_election_cli_already_preferred(broker):
    bs = str(broker)
    topic = unique_topic("elect")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--create", "--topic", topic, "--partitions", "2")
    wait_topic(bs, topic, 2)
    out = kafka_cli(LEADER_ELECTION_COMMAND, "--bootstrap-server", bs, "--election-type", "preferred",
                    "--topic", topic, "--partition", "0")
    assert f"Valid replica already elected for partitions {topic}-0" in out, out


def test_kafka_transactions_describe_producers_cli(broker):
    bs = str(broker)
    topic = unique_topic("producers")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", bs, "--create", "--topic", topic, "--partitions", "1")
    wait_topic(bs, topic, 1)
    produce_all(bs, topic, [{"value": f"v{i}".encode(), "partition": 0} for i in range(10)], acks="all",
                **{"enable.idempotence": True})
    out = kafka_cli(TRANSACTIONS_COMMAND, "--bootstrap-server", bs, "describe-producers", "--topic", topic,
                    "--partition", "0")
    lines = [ln.split() for ln in out.splitlines() if ln.strip()]
    header = lines[0]
    assert header[:4] == ["ProducerId", "ProducerEpoch", "LatestCoordinatorEpoch", "LastSequence"], out
    rows = [dict(zip(header, ln)) for ln in lines[1:]]
    assert len(rows) == 1 and rows[0]["LastSequence"] == "9" and int(rows[0]["ProducerId"]) >= 0, out
