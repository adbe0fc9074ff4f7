"""Kafka Connect in distributed mode, on a three-broker Chronik region and on a three-broker
Apache Kafka cluster: the worker creates its config, offset and status topics (compacted,
which it checks), joins its group (Connect's own protocol), and runs Kafka's
FileStreamSourceConnector; a broker is killed and restarted mid-run. Every line of the
source file must reach the topic exactly once, in order."""

from __future__ import annotations

import json
import urllib.request
import uuid
from pathlib import Path

import pytest

from harness import (_KAFKA_LOG4J, KAFKA_LIBS, LOOPBACK, ManagedProcess, ensure_kafka_libs, free_port, java_bin,
                     tail, wait_until)
from kclient import admin, records_to_high_watermark, unique_topic

pytestmark = pytest.mark.timeout(420)


class ConnectWorker(ManagedProcess):
    """One Kafka Connect worker (org.apache.kafka.connect.cli.ConnectDistributed)."""

    name = "connect"

    def __init__(self, work: Path, bootstrap: str, replication: int) -> None:
        super().__init__()
        self.work = work
        self.port = free_port(LOOPBACK)
        tag = uuid.uuid4().hex[:8]
        self.topics = {k: f"connect-{k}-{tag}" for k in ("configs", "offsets", "status")}
        self.props = {
            "bootstrap.servers": bootstrap,
            "group.id": f"connect-{tag}",
            "key.converter": "org.apache.kafka.connect.storage.StringConverter",
            "value.converter": "org.apache.kafka.connect.storage.StringConverter",
            "config.storage.topic": self.topics["configs"],
            "offset.storage.topic": self.topics["offsets"],
            "status.storage.topic": self.topics["status"],
            "config.storage.replication.factor": str(replication),
            "offset.storage.replication.factor": str(replication),
            "status.storage.replication.factor": str(replication),
            "offset.storage.partitions": "3",
            "status.storage.partitions": "2",
            "offset.flush.interval.ms": "1000",
            "listeners": f"http://{LOOPBACK}:{self.port}",
            "rest.advertised.host.name": LOOPBACK,
            "plugin.discovery": "only_scan",
        }

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def start(self, timeout: float = 120.0) -> "ConnectWorker":
        ensure_kafka_libs()
        self.work.mkdir(parents=True, exist_ok=True)
        props = self.work / "worker.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.props.items()))
        log4j = self.work / "log4j2.properties"
        log4j.write_text(_KAFKA_LOG4J.format(log=self.work / "connect.log"))
        self._spawn([java_bin(), "-Xmx512m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
                     f"-Dlog4j2.configurationFile={log4j}", "-cp", str(KAFKA_LIBS / "*"),
                     "org.apache.kafka.connect.cli.ConnectDistributed", str(props)],
                    cwd=self.work, log_path=self.work / "connect.stdout")

        def serving():
            self._check_alive("starting")
            try:
                with urllib.request.urlopen(f"{self.url}/connectors", timeout=2) as r:
                    return r.status == 200
            except OSError:
                return False

        wait_until(serving, timeout, interval=0.5, what="the Connect worker's REST API")
        return self

    def request(self, method: str, path: str, body: dict | None = None):
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(f"{self.url}{path}", data=data, method=method,
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as r:
            raw = r.read()
            return json.loads(raw) if raw else None

    def task_states(self, name: str) -> list[str]:
        try:
            st = self.request("GET", f"/connectors/{name}/status")
        except OSError:
            return []
        return [st["connector"]["state"]] + [t["state"] for t in st.get("tasks", [])]

    def connect_log(self, n: int = 40) -> str:
        return tail(self.work / "connect.log", n)


def _lines_in_topic(bootstrap: str, topic: str) -> list[str]:
    try:
        return [v.decode() for _, _, v in records_to_high_watermark(bootstrap, topic, timeout=30)]
    except Exception:  # the topic may not exist yet, or a leader is moving
        return []


def _cleanup_policies(bootstrap: str, topics) -> list[str | None]:
    from confluent_kafka import KafkaException
    from confluent_kafka.admin import ConfigResource

    res = admin(bootstrap).describe_configs([ConfigResource(ConfigResource.Type.TOPIC, t) for t in topics])
    out = []
    for fut in res.values():
        try:
            out.append(fut.result(timeout=30)["cleanup.policy"].value)
        except KafkaException:
            out.append(None)
    return out


def _committed_position(bootstrap: str, topic: str, partitions: int = 3) -> int | None:
    """The furthest file position the worker committed to its offset topic."""
    positions = []
    for p in range(partitions):
        try:
            records = records_to_high_watermark(bootstrap, topic, p, timeout=30)
        except Exception:  # a leader moving; asked again
            return None
        positions += [json.loads(v)["position"] for _, _, v in records if v]
    return max(positions, default=None)


def test_connect_distributed_file_source_survives_a_broker_restart(any_cluster, tmp_path):
    c = any_cluster
    bs = c.bootstrap_of(c.live_ids())
    worker = ConnectWorker(tmp_path / "worker", bs, replication=3).start()
    try:
        # Connect created its topics compacted (it refuses to run on any other policy).
        # A broker of the region may not have learnt a topic just created yet
        # (UNKNOWN_TOPIC_OR_PARTITION, as on Kafka): asked again until all answer.
        wait_until(lambda: _cleanup_policies(bs, worker.topics.values()) == ["compact"] * 3, 30, interval=0.5,
                   what="Connect's topics described as compacted")

        source = tmp_path / "input.txt"
        source.write_text("")
        topic = unique_topic("connect-out")
        lines = [f"line-{i}-{uuid.uuid4().hex[:6]}" for i in range(300)]
        worker.request("POST", "/connectors", {"name": "file-source", "config": {
            "connector.class": "org.apache.kafka.connect.file.FileStreamSourceConnector",
            "file": str(source), "topic": topic, "tasks.max": "1"}})
        wait_until(lambda: worker.task_states("file-source") == ["RUNNING", "RUNNING"], 60, interval=0.5,
                   what=f"the file source running (log: {worker.connect_log()})")

        def append(chunk):
            with source.open("a") as f:
                f.write("".join(x + "\n" for x in chunk))

        append(lines[:100])
        wait_until(lambda: len(_lines_in_topic(bs, topic)) >= 100, 60, interval=0.5,
                   what="the first 100 lines in the topic")
        # A broker goes down hard and comes back while lines keep arriving.
        victim = c.live_ids()[0]
        c.kill9(victim)
        append(lines[100:200])
        c.restart(victim)
        append(lines[200:])
        wait_until(lambda: len(_lines_in_topic(bs, topic)) >= len(lines), 120, interval=1,
                   what=f"all {len(lines)} lines in the topic (log: {worker.connect_log()})")
        assert _lines_in_topic(bs, topic) == lines
        assert worker.task_states("file-source") == ["RUNNING", "RUNNING"]
        # The source's position (bytes read of the file) reaches the compacted offset topic.
        size = source.stat().st_size
        wait_until(lambda: _committed_position(bs, worker.topics["offsets"]) == size, 60, interval=1,
                   what=f"the source's committed position at {size} bytes")
    finally:
        worker.stop()
