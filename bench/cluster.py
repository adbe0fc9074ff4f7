#!/usr/bin/env python3
"""Three-broker benchmark: a Chronik region against an Apache Kafka 4.1.1
KRaft cluster, on this machine, in the same run.

Both systems run three brokers on loopback, replication factor 3,
min.insync.replicas=2, acks=all:

  Kafka    3 combined broker+controller nodes (KRaft, static quorum) on
           127.0.0.1; default.replication.factor=3, min.insync.replicas=2,
           every other setting a Kafka default, stock JVM flags
           (kafka-server-start.sh: -Xmx1G -Xms1G, G1).
  Chronik  3 brokers, node i on 127.0.0.i, durability="replicated",
           [cluster] replication_factor=3, min_insync_replicas=2
           (no fsync on either side: Kafka's default is the page cache).

Scenarios (--scenarios, default both):

  throughput  per round and system a fresh cluster; Kafka's own
              ProducerPerformance (kafka-tools jar), 1 KiB records,
              acks=all, linger.ms=5, batch.size=65536, one producer:
              a 20,000-record warm-up, then --records into a 1-partition
              and an 8-partition RF=3 topic as fast as possible, and
              --rate-records at a fixed 5,000 msg/s for p50/p99 latency
              (target p99 < 100 ms). Systems alternate across --rounds;
              the tables show medians and Chronik/Kafka ratios.
  partitions  once per system, on a fresh cluster: time to create a
              --partitions (1,000) partition RF=3 topic, until every
              broker's Metadata shows a leader for every partition; then
              the idle CPU of the three broker processes together over
              --idle-seconds (60), from /proc/<pid>/stat utime+stime (all
              threads), as % of one core; then two passes of
              ProducerPerformance round-robin over all partitions
              (RoundRobinPartitioner, the default batch.size of 16 KiB:
              1,000 x 64 KiB batches would overflow the producer's 32 MiB
              buffer): --spread-warmup (20,000) records into the fresh
              partitions, then the measured --spread-records (200,000).
              After each pass ListOffsets must show every partition's high
              watermark grown, by as many records in all as were
              acknowledged.

Prints Markdown tables for docs/benchmarks.md, with the command and the
machine, and writes every figure to --json (default
/tmp/chronik-cluster-bench-<UTC time>.json).

    bench/cluster.py [--records 200000] [--rate-records 50000] [--rounds 3]
                     [--partitions 1000] [--idle-seconds 60]
                     [--systems kafka,chronik] [--scenarios throughput,partitions]

Every wait is bounded. Every broker started here is killed when the script
exits (normally, by an exception, Ctrl-C or SIGTERM). If the Chronik binary
cannot form a three-broker region within --chronik-start-timeout, the run
stops with the brokers' states and log tails and exit status 2.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import uuid
import base64
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH_DIR.parent / "tests"))
import harness  # noqa: E402

LOOPBACK = "127.0.0.1"
RF = 3
MIN_ISR = 2
CLK_TCK = os.sysconf("SC_CLK_TCK")

SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th"
)

# kafka-run-class.sh / kafka-server-start.sh defaults (Kafka 4.1).
KAFKA_STOCK_JVM = [
    "-Xmx1G", "-Xms1G", "-server", "-XX:+UseG1GC", "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35", "-XX:+ExplicitGCInvokesConcurrent", "-XX:MaxInlineLevel=15",
    "-Djava.awt.headless=true",
]

KAFKA_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
"""


_T0 = time.monotonic()


def log(msg: str) -> None:
    print(f"[{time.monotonic() - _T0:7.1f}s] {msg}", flush=True)


class BenchError(RuntimeError):
    """A failure that ends the run with a clear message (exit status 2)."""


# ---------------------------------------------------------------------------
# /proc helpers
# ---------------------------------------------------------------------------


def _stat_fields(pid: int) -> list[str]:
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    return s[s.rindex(")") + 2:].split()  # fields from 3 (state) on


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (a broker normally has none)."""
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                ppid = int(_stat_fields(int(d))[1])
            except (OSError, ValueError, IndexError):
                continue
            children.setdefault(ppid, []).append(int(d))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(children.get(p, []))
    return out


def cpu_seconds(pid: int) -> float:
    """utime+stime of the process and its descendants: /proc/<pid>/stat sums all of
    a process's threads (live and exited)."""
    total = 0
    for p in _descendants(pid):
        try:
            f = _stat_fields(p)
            total += int(f[11]) + int(f[12])  # fields 14 and 15
        except (OSError, ValueError, IndexError):
            pass
    return total / CLK_TCK


def rss_mib(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return float("nan")


# ---------------------------------------------------------------------------
# Raw Metadata v4 (one broker at a time, never auto-creates)
# ---------------------------------------------------------------------------


class _Reader:
    def __init__(self, b: bytes):
        self.b, self.pos = b, 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.b):
            raise ValueError("short Metadata response")
        v = self.b[self.pos:self.pos + n]
        self.pos += n
        return v

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def string(self) -> str | None:
        n = self.i16()
        return None if n < 0 else self.take(n).decode()


class MetadataConn:
    """A Kafka connection to one broker that sends Metadata v4 requests."""

    def __init__(self, addr: str, timeout: float = 10.0):
        host, port = addr.rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self.corr = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def _recv(self, n: int, deadline: float) -> bytes:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError("Metadata response timed out")
            self.sock.settimeout(left)
            chunk = self.sock.recv(n - len(buf))
            if not chunk:
                raise ConnectionError("broker closed the connection")
            buf += chunk
        return bytes(buf)

    def metadata(self, topics: list[str] | None) -> dict:
        self.corr += 1
        cid = b"chronik-bench"
        body = struct.pack(">hhih", 3, 4, self.corr, len(cid)) + cid
        if topics is None:
            body += struct.pack(">i", -1)
        else:
            body += struct.pack(">i", len(topics))
            for t in topics:
                tb = t.encode()
                body += struct.pack(">h", len(tb)) + tb
        body += b"\x00"  # allow_auto_topic_creation = false
        self.sock.sendall(struct.pack(">i", len(body)) + body)
        deadline = time.monotonic() + self.timeout
        (n,) = struct.unpack(">i", self._recv(4, deadline))
        r = _Reader(self._recv(n, deadline))
        if r.i32() != self.corr:
            raise ValueError("Metadata correlation id mismatch")
        r.i32()  # throttle
        brokers = []
        for _ in range(r.i32()):
            node, host, port = r.i32(), r.string(), r.i32()
            r.string()  # rack
            brokers.append((node, host, port))
        r.string()  # cluster id
        r.i32()  # controller
        out: dict = {"brokers": brokers, "topics": {}}
        for _ in range(r.i32()):
            err, name = r.i16(), r.string()
            r.i8()  # is_internal
            parts = {}
            for _ in range(r.i32()):
                perr, idx, leader = r.i16(), r.i32(), r.i32()
                replicas = [r.i32() for _ in range(r.i32())]
                isr = [r.i32() for _ in range(r.i32())]
                parts[idx] = (perr, leader, replicas, isr)
            out["topics"][name] = (err, parts)
        return out


def metadata_of(addr: str, topics: list[str] | None, timeout: float = 10.0) -> dict:
    c = MetadataConn(addr, timeout)
    try:
        return c.metadata(topics)
    finally:
        c.close()


# ---------------------------------------------------------------------------
# Clusters
# ---------------------------------------------------------------------------


class KafkaNode(harness.ManagedProcess):
    name = "apache-kafka"

    def __init__(self, node_id: int, work: Path, port: int, controller_port: int) -> None:
        super().__init__()
        self.node_id, self.host, self.port, self.controller_port = node_id, LOOPBACK, port, controller_port
        self.work_dir = work / f"kafka-{node_id}"
        self.name = f"kafka-{node_id}"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    def properties(self, voters: str) -> dict:
        return {
            "process.roles": "broker,controller",
            "node.id": str(self.node_id),
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.voters": voters,
            "log.dirs": str(self.work_dir / "logs"),
            "default.replication.factor": str(RF),
            "min.insync.replicas": str(MIN_ISR),
        }

    def java_argv(self, main: str, *args: str) -> list[str]:
        return [harness.java_bin(), *KAFKA_STOCK_JVM,
                f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                f"-Dkafka.logs.dir={self.work_dir}", "-cp", f"{harness.KAFKA_LIBS}/*", main, *args]

    def prepare(self, voters: str, cluster_id: str) -> None:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        props = self.work_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.properties(voters).items()))
        (self.work_dir / "log4j2.properties").write_text(KAFKA_LOG4J.format(log=self.work_dir / "kafka.log"))
        # The format tool needs no G1 or a 1 GiB heap.
        argv = [harness.java_bin(), "-Xmx256m", f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
                "-cp", f"{harness.KAFKA_LIBS}/*", "kafka.tools.StorageTool", "format",
                f"--cluster-id={cluster_id}", "-c", str(props)]
        r = subprocess.run(argv, cwd=str(self.work_dir), capture_output=True, text=True, timeout=180)
        if r.returncode != 0:
            raise BenchError(f"kafka storage format ({self.name}) failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")

    def launch(self) -> None:
        self._spawn(self.java_argv("kafka.Kafka", str(self.work_dir / "server.properties")),
                    cwd=self.work_dir, log_path=self.work_dir / "kafka.stdout")

    def log_tail(self, n: int = 40) -> str:
        return harness.tail(self.work_dir / "kafka.log", n)


class ChronikNode(harness.ManagedProcess):
    name = "chronik"

    def __init__(self, node_id: int, work: Path, binary: Path) -> None:
        super().__init__()
        self.node_id = node_id
        self.host = f"127.0.0.{node_id}"
        self.port = harness.free_port(self.host)
        self.raft_port = harness.free_port(self.host)
        self.admin_port = harness.free_port(self.host)
        self.data_dir = work / f"chronik-{node_id}"
        self.config_path = work / f"chronik-{node_id}.toml"
        self.binary = binary
        self.name = f"chronik-{node_id}"

    @property
    def addr(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def raft_addr(self) -> str:
        return f"{self.host}:{self.raft_port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def toml(self, peers: list["ChronikNode"]) -> str:
        out = [
            f"node_id = {self.node_id}",
            'region = "us-east"',
            f"data_dir = {json.dumps(str(self.data_dir))}",
            'durability = "replicated"',
            "",
            "[listeners]",
            f'kafka = "{self.addr}"',
            f'raft = "{self.raft_addr}"',
            f'admin = "{self.host}:{self.admin_port}"',
            "",
            "[topics]",
            "default_partitions = 1",
            "",
            "[limits]",
            "socket_request_max_bytes = 104857600",  # Kafka's socket.request.max.bytes default
            "",
            "[cluster]",
            f"replication_factor = {RF}",
            f"min_insync_replicas = {MIN_ISR}",
        ]
        for p in peers:
            if p is not self:
                out += ["", "[[cluster.peers]]", f"id = {p.node_id}", f'raft = "{p.raft_addr}"']
        return "\n".join(out) + "\n"

    def launch(self, peers: list["ChronikNode"]) -> None:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.toml(peers))
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        self._spawn([str(self.binary), "broker", "--config", str(self.config_path)],
                    cwd=self.data_dir.parent, log_path=self.data_dir.parent / f"chronik-{self.node_id}.log", env=env)

    def http(self, path: str) -> tuple[int, str]:
        try:
            return harness.http_get(self.admin_url + path, timeout=1.0)
        except OSError as e:
            return -1, repr(e)


class Cluster:
    kind = "?"
    nodes: list

    @property
    def bootstrap(self) -> str:
        return ",".join(n.addr for n in self.nodes)

    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes]

    def admin(self):
        """One AdminClient per cluster, dropped by stop() (a librdkafka handle left
        alive after the brokers are gone keeps reconnecting and logging)."""
        from confluent_kafka.admin import AdminClient

        if not hasattr(self, "_admin"):
            self._admin: dict = {}
        if "a" not in self._admin:
            self._admin["a"] = AdminClient({"bootstrap.servers": self.bootstrap, "socket.timeout.ms": 10000})
        return self._admin["a"]

    def cpu_seconds(self) -> float:
        return sum(cpu_seconds(p) for p in self.pids())

    def check_alive(self, what: str) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise BenchError(f"{n.name} (pid {n.pid}) exited with code {n.proc.returncode} while {what}; "
                                 f"log {n.log_path}:\n{n.log_tail()}")

    def metadata_brokers_ok(self) -> bool:
        for n in self.nodes:
            if len(metadata_of(n.addr, [], timeout=3.0)["brokers"]) != len(self.nodes):
                return False
        return True

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM every broker at once, SIGKILL whatever is left after `timeout`.
        (Stopping one by one can leave the last ones waiting for a lost quorum.)
        Idempotent."""
        getattr(self, "_admin", {}).clear()
        for n in self.nodes:
            if n.running:
                n._signal_group(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for n in self.nodes:
            if n.proc is None:
                continue
            try:
                n.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            n._hard_kill()


class KafkaCluster(Cluster):
    kind = "kafka"

    def __init__(self, work: Path) -> None:
        self.nodes = [KafkaNode(i, work, harness.free_port(), harness.free_port()) for i in (1, 2, 3)]
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def start(self, timeout: float) -> "KafkaCluster":
        harness.ensure_kafka_libs()
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)
        try:
            for n in self.nodes:
                n.prepare(voters, self.cluster_id)
            for n in self.nodes:
                n.launch()
            deadline = time.monotonic() + timeout
            while True:
                self.check_alive("starting")
                try:
                    if all(harness.api_versions_ok(n.host, n.port) for n in self.nodes) and self.metadata_brokers_ok():
                        return self
                except (OSError, ValueError):
                    pass
                if time.monotonic() > deadline:
                    raise BenchError(f"Kafka cluster not up after {timeout}s:\n" +
                                     "\n".join(f"--- {n.name}\n{n.log_tail(15)}" for n in self.nodes))
                time.sleep(0.5)
        except BaseException:
            self.stop(timeout=5)
            raise


class ChronikCluster(Cluster):
    kind = "chronik"

    def __init__(self, work: Path, binary: Path) -> None:
        self.nodes = [ChronikNode(i, work, binary) for i in (1, 2, 3)]

    def _state(self) -> str:
        lines = []
        for n in self.nodes:
            alive = "running" if n.running else f"exited {n.proc.returncode if n.proc else '?'}"
            ready = n.http("/health/ready")
            cl = n.http("/v1/cluster")
            lines.append(f"--- {n.name} ({alive}, kafka {n.addr}, raft {n.raft_addr}, admin {n.admin_url}): "
                         f"/health/ready -> {ready[0]}; /v1/cluster -> {cl[0]} {cl[1][:300]}\n{n.log_tail(15)}")
        return "\n".join(lines)

    def _formed(self) -> bool:
        for n in self.nodes:
            if n.http("/health/ready")[0] != 200:
                return False
        for n in self.nodes:
            status, body = n.http("/v1/cluster")
            if status != 200:
                return False
            try:
                view = json.loads(body)
            except ValueError:
                return False
            if view.get("controller_leader") in (None, -1, 0) or len(view.get("brokers", [])) != len(self.nodes):
                return False
        try:
            return self.metadata_brokers_ok()
        except (OSError, ValueError):
            return False

    def start(self, timeout: float) -> "ChronikCluster":
        binary = self.nodes[0].binary
        if not binary.is_file() or not os.access(binary, os.X_OK):
            raise BenchError(f"chronik binary not found or not executable at {binary} "
                             f"(set CHRONIK_BIN or --chronik-bin)")
        try:
            for n in self.nodes:
                n.launch(self.nodes)
            deadline = time.monotonic() + timeout
            while True:
                self.check_alive("forming the region")
                if self._formed():
                    return self
                if time.monotonic() > deadline:
                    raise BenchError(f"Chronik did not form a {len(self.nodes)}-broker region within {timeout}s "
                                     "(every broker /health/ready 200, /v1/cluster listing every broker with a "
                                     "controller leader, Metadata listing every broker):\n" + self._state())
                time.sleep(0.25)
        except BaseException:
            self.stop(timeout=5)
            raise


def make_cluster(kind: str, work: Path, args) -> Cluster:
    t0 = time.monotonic()
    if kind == "kafka":
        c = KafkaCluster(work).start(args.kafka_start_timeout)
    else:
        c = ChronikCluster(work, args.chronik_bin).start(args.chronik_start_timeout)
    c.start_s = time.monotonic() - t0
    log(f"  {kind}: 3 brokers up in {c.start_s:.1f}s ({c.bootstrap}; pids {' '.join(map(str, c.pids()))})")
    return c


def save_logs(work: Path, dest: Path | None) -> None:
    """Keeps the brokers' logs and configs (not their data) of a failed run."""
    if dest is None:
        return
    n = 0
    for f in work.rglob("*"):
        rel = f.relative_to(work)
        if f.is_file() and len(rel.parts) <= 2 and (f.suffix in (".log", ".toml", ".properties", ".stdout")):
            (dest / work.name / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(f, dest / work.name / rel)
            n += 1
    if n:
        log(f"  broker logs and configs of the failed run kept in {dest / work.name}")


def stop_cluster(c: Cluster) -> None:
    running = any(n.running for n in c.nodes)
    t0 = time.monotonic()
    c.stop()
    if running:
        log(f"  {c.kind}: stopped in {time.monotonic() - t0:.1f}s")


# ---------------------------------------------------------------------------
# Topics
# ---------------------------------------------------------------------------


def _partitions_state(cluster: Cluster, topic: str, partitions: int) -> tuple[bool, bool]:
    """(every broker's Metadata shows a leader for every partition,
        ... and a full ISR too)."""
    leaders = isr = True
    for n in cluster.nodes:
        err, parts = metadata_of(n.addr, [topic], timeout=10.0)["topics"].get(topic, (-1, {}))
        if err != 0 or len(parts) != partitions:
            return False, False
        for perr, leader, replicas, in_sync in parts.values():
            if perr != 0 or leader < 0:
                return False, False
            if len(in_sync) < RF:
                isr = False
    return leaders, isr


def create_topic(cluster: Cluster, topic: str, partitions: int, timeout: float = 300.0,
                 isr_timeout: float = 60.0) -> dict:
    """Creates an RF=3 topic. Returns seconds from the CreateTopics call until
    the response, until every broker's Metadata shows a leader for every
    partition, and until every partition's ISR is full (None if not within
    isr_timeout more)."""
    from confluent_kafka.admin import NewTopic

    t0 = time.monotonic()
    fs = cluster.admin().create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=RF)],
                             operation_timeout=min(timeout, 120), request_timeout=min(timeout, 150))
    try:
        fs[topic].result(timeout=timeout)
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"{cluster.kind}: creating {topic} ({partitions} partitions, RF={RF}) failed: {e}") from e
    response_s = time.monotonic() - t0
    deadline = t0 + timeout
    leaders_s = isr_s = None
    last = None
    while True:
        cluster.check_alive(f"creating {topic}")
        try:
            leaders, full = _partitions_state(cluster, topic, partitions)
        except (OSError, ValueError) as e:
            leaders, full, last = False, False, e
        now = time.monotonic()
        if leaders and leaders_s is None:
            leaders_s = now - t0
            deadline = now + isr_timeout
        if full:
            isr_s = now - t0
            break
        if now > deadline:
            if leaders_s is None:
                raise BenchError(f"{cluster.kind}: {topic} has not got a leader for all {partitions} partitions on "
                                 f"every broker after {timeout}s (last error: {last!r})")
            print(f"  warning: {cluster.kind} {topic}: ISR not full {isr_timeout}s after all leaders", flush=True)
            break
        time.sleep(0.05)
    return {"partitions": partitions, "response_s": response_s, "leaders_s": leaders_s, "full_isr_s": isr_s}


def high_watermarks(cluster: Cluster, topic: str, partitions: int, timeout: float = 120.0) -> dict[int, int]:
    from confluent_kafka import TopicPartition
    from confluent_kafka.admin import OffsetSpec

    fs = cluster.admin().list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in range(partitions)},
                            request_timeout=timeout)
    return {tp.partition: f.result(timeout=timeout).offset for tp, f in fs.items()}


# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------


def producer_perf(cluster: Cluster, topic: str, records: int, throughput: int, extra: tuple = ()) -> dict:
    libs = harness.ensure_kafka_libs()
    argv = [
        harness.java_bin(), "-Xmx512m", "-cp", f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic", topic, "--num-records", str(records), "--record-size", "1024",
        "--throughput", str(throughput),
        "--producer-props", f"bootstrap.servers={cluster.bootstrap}", "acks=all", "linger.ms=5", "batch.size=65536",
        *extra,
    ]
    # Bounded: at least 500 msg/s (or the fixed rate), plus start-up.
    timeout = 180 + records / (min(throughput, 500) if throughput > 0 else 500)
    cpu0, t0 = cluster.cpu_seconds(), time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"{cluster.kind}: ProducerPerformance into {topic} still running after {timeout:.0f}s") from e
    wall, cpu = time.monotonic() - t0, cluster.cpu_seconds() - cpu0
    cluster.check_alive(f"producing into {topic}")
    m = None
    for line in out.stdout.splitlines():
        m = SUMMARY.search(line) or m
    errors = sum(1 for line in (out.stdout + out.stderr).splitlines() if "Exception" in line)
    if out.returncode != 0 or m is None:
        raise BenchError(f"{cluster.kind}: ProducerPerformance into {topic} failed ({out.returncode}):\n"
                         f"{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return {
        "records": int(m.group(1)), "msg_s": float(m.group(2)), "mb_s": float(m.group(3)),
        "avg_ms": float(m.group(4)), "max_ms": float(m.group(5)),
        "p50_ms": int(m.group(6)), "p95_ms": int(m.group(7)), "p99_ms": int(m.group(8)), "p999_ms": int(m.group(9)),
        "broker_cpu_s": cpu, "broker_cpu_s_per_100k": cpu / max(int(m.group(1)), 1) * 100_000, "wall_s": wall,
        "exception_lines": errors,
    }


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def throughput_run(kind: str, work_root: Path, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-tp-", dir=work_root))
    cluster = None
    try:
        cluster = make_cluster(kind, work, args)
        topics = {t: create_topic(cluster, t, p) for t, p in
                  (("bench-1p", 1), ("bench-rate", 1), ("bench-8p", 8))}
        producer_perf(cluster, "bench-1p", min(args.records, 20_000), -1)  # warm-up (JIT, caches, connections)
        one = producer_perf(cluster, "bench-1p", args.records, -1)
        rate = producer_perf(cluster, "bench-rate", args.rate_records, 5000)
        eight = producer_perf(cluster, "bench-8p", args.records, -1)
        return {"start_s": cluster.start_s, "topics": topics, "p1": one, "rate5k": rate, "p8": eight}
    except BaseException:
        if cluster:
            stop_cluster(cluster)
        save_logs(work, args.failed_logs)
        raise
    finally:
        if cluster:
            stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


def idle_cpu(cluster: Cluster, seconds: float, step: float = 5.0) -> dict:
    """CPU of the broker processes over `seconds`, as % of one core; also sampled
    every `step` seconds (in the JSON) to show whether the brokers had settled."""
    pids = cluster.pids()
    per0 = {p: cpu_seconds(p) for p in pids}
    t0 = time.monotonic()
    series, last_c, last_t = [], sum(per0.values()), t0
    while (left := t0 + seconds - time.monotonic()) > 0:
        time.sleep(min(step, left))
        c, t = cluster.cpu_seconds(), time.monotonic()
        series.append(round((c - last_c) / (t - last_t) * 100, 1))
        last_c, last_t = c, t
    elapsed = time.monotonic() - t0
    per1 = {p: cpu_seconds(p) for p in pids}
    cluster.check_alive("idle")
    per = [(per1[p] - per0[p]) / elapsed * 100 for p in pids]
    half = series[len(series) // 2:]
    return {"seconds": elapsed, "pct_of_one_core": sum(per), "per_broker_pct": per,
            "second_half_pct": sum(half) / max(len(half), 1), "series_pct": series, "step_s": step,
            "rss_mib": [rss_mib(p) for p in pids]}


def partitions_run(kind: str, work_root: Path, args) -> dict:
    work = Path(tempfile.mkdtemp(prefix=f"{kind}-parts-", dir=work_root))
    cluster = None
    try:
        cluster = make_cluster(kind, work, args)
        out: dict = {}
        if args.idle_baseline:
            time.sleep(args.settle_seconds)
            out["idle_before"] = idle_cpu(cluster, args.idle_seconds)
        topic = "bench-many"
        out["create"] = create_topic(cluster, topic, args.partitions, timeout=args.create_timeout)
        log(f"  {kind}: {args.partitions} partitions: leaders on every broker after "
            f"{out['create']['leaders_s']:.2f}s, full ISR after {fmt(out['create']['full_isr_s'], '.2f')}s")
        time.sleep(args.settle_seconds)
        out["idle"] = idle_cpu(cluster, args.idle_seconds)
        log(f"  {kind}: idle CPU {out['idle']['pct_of_one_core']:.1f}% of one core over {args.idle_seconds:.0f}s "
            f"(per {out['idle']['step_s']:.0f}s: {' '.join(map(str, out['idle']['series_pct']))})")
        # Two round-robin passes over every partition, each checked against the high watermarks:
        # "first" writes into the freshly created partitions (cold: first append everywhere, JIT),
        # "produce" is the measured one. batch.size is the producer default: 1,000 partitions x
        # 64 KiB batches would not fit the 32 MiB buffer.memory and the producer would stall.
        rr = ("partitioner.class=org.apache.kafka.clients.producer.RoundRobinPartitioner", "batch.size=16384")
        hw: dict[int, int] = {p: 0 for p in range(args.partitions)}
        for phase, records in (("first", max(args.spread_warmup, args.partitions)),
                               ("produce", max(args.spread_records, args.partitions))):
            res = producer_perf(cluster, topic, records, -1, extra=rr)
            now = high_watermarks(cluster, topic, args.partitions)
            delta = {p: now.get(p, 0) - hw[p] for p in hw}
            hw = now
            empty = sorted(p for p, d in delta.items() if d <= 0)
            stored = sum(delta.values())
            res["verify"] = {"partitions_with_records": args.partitions - len(empty), "empty_partitions": empty[:50],
                             "records_stored": stored, "min_per_partition": min(delta.values()),
                             "max_per_partition": max(delta.values()),
                             "ok": not empty and stored == res["records"]}
            out[phase] = res
            log(f"  {kind}: {phase} pass {res['msg_s']:,.0f} msg/s (p99 {res['p99_ms']} ms) over {args.partitions} "
                f"partitions; {args.partitions - len(empty)} got records, {stored} stored of {res['records']} sent")
            if not res["verify"]["ok"]:
                raise BenchError(f"{kind}: {phase} pass over {args.partitions} partitions: {len(empty)} partitions got "
                                 f"no records (first {empty[:10]}); {stored} stored of {res['records']} acknowledged")
        return out
    except BaseException:
        if cluster:
            stop_cluster(cluster)
        save_logs(work, args.failed_logs)
        raise
    finally:
        if cluster:
            stop_cluster(cluster)
        shutil.rmtree(work, ignore_errors=True)


def median_of(runs: list[dict], scenario: str, key: str) -> dict:
    ordered = sorted((r[scenario] for r in runs), key=lambda x: x[key])
    return ordered[len(ordered) // 2]


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def machine_info() -> dict:
    model = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                  if line.startswith("model name")), platform.processor() or platform.machine())
    mem_kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines()
                   if line.startswith("MemTotal:"))
    java = subprocess.run([harness.java_bin(), "-version"], capture_output=True, text=True).stderr.splitlines()
    git = subprocess.run(["git", "-C", str(BENCH_DIR.parent), "describe", "--always", "--dirty"],
                         capture_output=True, text=True).stdout.strip()
    jars = sorted(p.name for p in harness.KAFKA_LIBS.glob("kafka_2.13-*.jar"))
    return {"host": platform.node(), "nproc": len(os.sched_getaffinity(0)), "cpu_model": model,
            "mem_gib": round(mem_kib / 1024 / 1024, 1), "kernel": platform.release(),
            "java": java[0] if java else "?", "kafka": jars[0].removeprefix("kafka_2.13-").removesuffix(".jar")
            if jars else "?", "git": git, "loadavg_at_start": Path("/proc/loadavg").read_text().split()[:3]}


def ratio(a, b) -> str:
    try:
        return f"{a / b:.2f}"
    except (TypeError, ZeroDivisionError):
        return "–"


def fmt(v, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


NAMES = {"kafka": "Kafka", "chronik": "Chronik"}


def report(results: dict) -> str:
    m, a = results["machine"], results["args"]
    lines = [f"**Command** `{results['command']}`", "",
             "Ratios are Chronik / Kafka: above 1 is better for msg/s, below 1 is better for latency, "
             "time and CPU.", "",
             f"**Machine** {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB RAM, Linux {m['kernel']}, "
             f"{m['java']}, Apache Kafka {m['kafka']}; Chronik {m['git']}; load average at start "
             f"{' '.join(m['loadavg_at_start'])}; run started {results['started']}", ""]
    tp = results.get("throughput")
    if tp and tp.get("median"):
        med = tp["median"]
        k = med.get("kafka")
        lines += [f"Three brokers, RF=3, min.insync.replicas=2, acks=all, 1 KiB records, one producer; "
                  f"median of {a['rounds']} round(s) ({a['records']:,} records per max run, "
                  f"{a['rate_records']:,} at 5,000 msg/s):", "",
                  "| scenario | system | msg/s | MB/s | p50 ms | p99 ms | **vs Kafka** | broker CPU-s per 100k |",
                  "|---|---|---|---|---|---|---|---|"]
        for sc, label in (("p1", "1 partition, max"), ("p8", "8 partitions, max")):
            for kind in med:
                r = med[kind][sc]
                vs = ratio(r["msg_s"], k[sc]["msg_s"]) if k else "–"
                lines.append(f"| {label} | {NAMES[kind]} | {r['msg_s']:,.0f} | {r['mb_s']:.1f} | {r['p50_ms']} | "
                             f"{r['p99_ms']} | **{vs}** | {r['broker_cpu_s_per_100k']:.2f} |")
        for kind in med:
            r = med[kind]["rate5k"]
            vs = ratio(r["p99_ms"], k["rate5k"]["p99_ms"]) if k else "–"
            lines.append(f"| 5,000 msg/s (p99 target < 100 ms) | {NAMES[kind]} | {r['msg_s']:,.0f} | {r['mb_s']:.1f} "
                         f"| {r['p50_ms']} | **{r['p99_ms']}** | {vs} (p99) | {r['broker_cpu_s_per_100k']:.2f} |")
        lines += ["", "All rounds (msg/s; p99 ms at 5,000 msg/s):", "",
                  "| system | 1 partition | 8 partitions | p99 @5k/s |", "|---|---|---|---|"]
        for kind, runs in tp["rounds"].items():
            p1 = " · ".join(format(r["p1"]["msg_s"], ",.0f") for r in runs)
            p8 = " · ".join(format(r["p8"]["msg_s"], ",.0f") for r in runs)
            p99 = " · ".join(str(r["rate5k"]["p99_ms"]) for r in runs)
            lines.append(f"| {NAMES[kind]} | {p1} | {p8} | {p99} |")
        lines.append("")
    pr = results.get("partitions")
    if pr:
        k = pr.get("kafka")

        def vs(kind: str, *path: str) -> str:
            if not k:
                return "–"
            a_, b_ = pr[kind], k
            for key in path:
                a_, b_ = a_[key], b_[key]
            return ratio(a_, b_)

        lines += [f"{a['partitions']:,} partitions, RF=3, one system at a time. Creation: from the CreateTopics "
                  f"call until every broker's Metadata shows a leader for every partition. Idle: CPU of the three "
                  f"broker processes (utime+stime, all threads) over {a['idle_seconds']:.0f} s, after "
                  f"{a['settle_seconds']:.0f} s settling, as % of one core; RSS at the end of it.", "",
                  "| system | create → all leaders s | **vs Kafka** | CreateTopics response s | full ISR s "
                  "| idle CPU % of one core | **vs Kafka** | 2nd half only | RSS MiB (3 brokers) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for kind, r in pr.items():
            c, i = r["create"], r["idle"]
            lines.append(f"| {NAMES[kind]} | {c['leaders_s']:.2f} | **{vs(kind, 'create', 'leaders_s')}** | "
                         f"{c['response_s']:.2f} | {fmt(c['full_isr_s'], '.2f')} | {i['pct_of_one_core']:.1f} | "
                         f"**{vs(kind, 'idle', 'pct_of_one_core')}** | {i['second_half_pct']:.1f} | {sum(i['rss_mib']):,.0f} |")
        first_n = max(a['spread_warmup'], a['partitions'])
        n = max(a['spread_records'], a['partitions'])
        lines += ["", f"Then ProducerPerformance round-robin over all {a['partitions']:,} partitions (acks=all, "
                  f"linger.ms=5, batch.size 16 KiB): a first pass of {first_n:,} records into the fresh partitions, "
                  f"then the measured pass of {n:,}; after each, every partition's high watermark must have grown "
                  f"and the growth must add up to the records acknowledged.", "",
                  "| system | first pass msg/s | p99 ms | measured msg/s | p50 ms | p99 ms | **vs Kafka** "
                  "| broker CPU-s per 100k | partitions with records |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for kind, r in pr.items():
            f_, m_ = r["first"], r["produce"]
            lines.append(f"| {NAMES[kind]} | {f_['msg_s']:,.0f} | {f_['p99_ms']} | {m_['msg_s']:,.0f} | "
                         f"{m_['p50_ms']} | {m_['p99_ms']} | **{vs(kind, 'produce', 'msg_s')}** | "
                         f"{m_['broker_cpu_s_per_100k']:.2f} | "
                         f"{min(f_['verify']['partitions_with_records'], m_['verify']['partitions_with_records']):,}"
                         f"/{a['partitions']:,} |")
        lines.append("")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000, help="records per max-throughput run")
    ap.add_argument("--rate-records", type=int, default=50_000, help="records of the 5,000 msg/s run")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved throughput rounds; tables show medians")
    ap.add_argument("--partitions", type=int, default=1000, help="partitions of the many-partition scenario")
    ap.add_argument("--idle-seconds", type=float, default=60.0)
    ap.add_argument("--settle-seconds", type=float, default=30.0, help="wait after creation before measuring idle")
    ap.add_argument("--idle-baseline", action="store_true", help="also measure idle CPU before creating the topic")
    ap.add_argument("--spread-records", type=int, default=200_000, help="records of the measured pass over all partitions")
    ap.add_argument("--spread-warmup", type=int, default=20_000, help="records of the first (cold) pass over all partitions")
    ap.add_argument("--create-timeout", type=float, default=300.0)
    ap.add_argument("--systems", default="kafka,chronik")
    ap.add_argument("--scenarios", default="throughput,partitions")
    ap.add_argument("--chronik-bin", type=Path, default=harness.chronik_bin())
    ap.add_argument("--chronik-start-timeout", type=float, default=60.0)
    ap.add_argument("--kafka-start-timeout", type=float, default=180.0)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    systems = [s for s in args.systems.split(",") if s]
    scenarios = [s for s in args.scenarios.split(",") if s]
    if set(systems) - {"kafka", "chronik"} or set(scenarios) - {"throughput", "partitions"} or args.rounds < 1:
        ap.error("--systems is a subset of kafka,chronik; --scenarios of throughput,partitions; --rounds >= 1")
    args.chronik_bin = args.chronik_bin.resolve()
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    json_path = args.json or Path(tempfile.gettempdir()) / f"chronik-cluster-bench-{started.replace(':', '')}.json"
    args.failed_logs = json_path.with_name(json_path.stem + "-logs")

    # SIGTERM ends the run like Ctrl-C: finally blocks stop the clusters, atexit kills leftovers.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))

    entry = os.environ.get("CHRONIK_BENCH_ENTRY", "bench/cluster.py")
    results: dict = {
        "command": " ".join([entry, *map(shlex.quote, sys.argv[1:])]),
        "started": started, "machine": machine_info(),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "config": {"kafka": {"jvm": KAFKA_STOCK_JVM, "default.replication.factor": RF, "min.insync.replicas": MIN_ISR},
                   "chronik": {"durability": "replicated", "replication_factor": RF, "min_insync_replicas": MIN_ISR},
                   "producer": {"acks": "all", "linger.ms": 5, "batch.size": 65536, "record_size": 1024}},
    }
    status = 0
    try:
        if "chronik" in systems and not (args.chronik_bin.is_file() and os.access(args.chronik_bin, os.X_OK)):
            raise BenchError(f"chronik binary not found or not executable at {args.chronik_bin} "
                             "(set CHRONIK_BIN or --chronik-bin, or --systems kafka)")
        with tempfile.TemporaryDirectory(prefix="chronik-cluster-bench-") as tmp:
            work = Path(tmp)
            if "throughput" in scenarios:
                # Chronik first in round 1 (a region that cannot form fails before Kafka's runs),
                # then alternate so neither always gets the cooler machine.
                order = [k for k in ("chronik", "kafka") if k in systems]
                rounds: dict = {k: [] for k in systems}
                results["throughput"] = {"rounds": rounds}
                for i in range(args.rounds):
                    for kind in order:
                        log(f"throughput round {i + 1}/{args.rounds}: {kind}")
                        r = throughput_run(kind, work, args)
                        rounds[kind].append(r)
                        log(f"  {kind}: 1p {r['p1']['msg_s']:,.0f} msg/s, 8p {r['p8']['msg_s']:,.0f} msg/s, "
                            f"@5k p50 {r['rate5k']['p50_ms']} ms p99 {r['rate5k']['p99_ms']} ms")
                    order.reverse()
                results["throughput"]["median"] = {
                    k: {"p1": median_of(v, "p1", "msg_s"), "p8": median_of(v, "p8", "msg_s"),
                        "rate5k": median_of(v, "rate5k", "p99_ms")} for k, v in rounds.items()}
                if "kafka" in rounds and "chronik" in rounds:
                    med = results["throughput"]["median"]
                    results["throughput"]["ratios"] = {
                        "p1_msg_s": med["chronik"]["p1"]["msg_s"] / med["kafka"]["p1"]["msg_s"],
                        "p8_msg_s": med["chronik"]["p8"]["msg_s"] / med["kafka"]["p8"]["msg_s"],
                        "rate5k_p99": med["chronik"]["rate5k"]["p99_ms"] / max(med["kafka"]["rate5k"]["p99_ms"], 1)}
            if "partitions" in scenarios and args.partitions > 0:
                results["partitions"] = {}
                for kind in [k for k in ("chronik", "kafka") if k in systems]:
                    log(f"{args.partitions} partitions: {kind}")
                    results["partitions"][kind] = partitions_run(kind, work, args)
    except BenchError as e:
        results["error"] = str(e)
        print(f"\nERROR: {e}", file=sys.stderr, flush=True)
        status = 2
    except KeyboardInterrupt:
        results["error"] = "interrupted"
        status = 130
    finally:
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        json_path.write_text(json.dumps(results, indent=2))
    if status == 0:
        print("\n" + report(results))
    print(f"results: {json_path}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
