#!/usr/bin/env python3
"""Cross-region mirroring benchmark: Chronik's dc-link against Apache Kafka
MirrorMaker 2, both through the same simulated WAN (`chronik wan-sim`), on
this machine, in the same run.

Topology (--brokers N per region, the same N for both systems):

  chronik  us-east (home): N brokers ── dc-link ══UDP══ wan-sim ══> dc-link ── N brokers: eu-west (mirror)
           Both dc-links are reached only through wan-sim UDP proxies (the
           topology's dc_link addresses are the proxies; each dc-link's
           `listen` is its real port), so every cross-region byte is delayed
           and counted. eu-west's mirror topic is created by its dc-link.
  mm2      src Kafka (home): N brokers ══TCP══ wan-sim ══> MirrorMaker 2 ── N brokers: dst Kafka (mirror)
           The source brokers have a second listener, WAN, advertised at one
           wan-sim TCP proxy per broker; MM2 (dedicated mode, --clusters dst,
           "next to" the target) bootstraps from the proxies, so it reaches
           the source only across the WAN. Producers and measuring clients use
           the local listeners. IdentityReplicationPolicy: same topic name;
           tasks.max = --partitions. Config: bench/mm2/mm2.properties.in;
           --mm2-profile stock (MM2 defaults) or wan (8 MiB partition fetches,
           target-side batching, offset syncs kept off the WAN). Jars:
           bench/mm2/fetch.sh (Maven Central, connect-mirror 4.1.1).

Both: Apache Kafka 4.1.1 (stock launch flags: -Xmx1G -Xms1G, G1) or Chronik
(durability = "replicated": no fsync, as Kafka's page cache), RF = min(3, N),
min.insync.replicas = min(2, N); one topic of --partitions partitions created
in the home region; load from Kafka's ProducerPerformance (--record-size byte
records of random A-Z, acks=all, linger.ms=5, batch.size=65536, one producer).

Scenarios (--scenarios, default both), after a --warmup-records warm-up that
must fully reach the mirror:

  max   --records as fast as the producer goes. A poller reads the home and
        the mirror high watermarks (sum over partitions) every 100 ms.
        Throughput of each side = records / (time from the first sample
        showing a new record to the first sample showing all of them), the
        same method for both sides; mirror/home is the target ratio (>= 0.9).
        Also: the producer's own rate, how long the mirror needed after the
        home had everything ("catch-up"), and offset lag in seconds (for each
        mirror sample, how long ago the home reached that offset).
  rate  --rate msg/s for --rate-seconds. Two consumers (confluent-kafka, one
        per region, assigned from the current end) compute, per record,
        arrival time minus the record's CreateTime (set by the producer, kept
        by both mirrors): "mirror e2e lag" in the target region, "home e2e"
        in the home region for reference. Percentiles over the records
        produced after --warmup-seconds. Target: mirror p99 < RTT + 250 ms.

WAN bytes per record: the wan-sim's byte counters (GET /v1/stats, payload
bytes: UDP datagram payloads / TCP stream bytes, both without IP/UDP/TCP
headers), both directions, over the scenario, divided by the records.
wan-sim applies --loss to UDP only (the TCP proxy terminates TCP, which hides
loss), so with --loss > 0 only Chronik's link sees loss.

    bench/dclink.sh [--system chronik|mm2|both] [--records 200000] [--rate 5000]
                    [--rate-seconds 60] [--delay-ms 50] [--loss 0] [--brokers 3]
                    [--partitions 8] [--mm2-profile stock|wan]

Prints a Markdown table and writes every figure to --json (default
/tmp/chronik-dclink-bench-<UTC time>.json). Every wait is bounded; every
process started here is killed when the script exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "tests"))
import harness  # noqa: E402

# bench/cluster.py (Kafka launch flags, Metadata probe, /proc CPU, machine info); loaded by
# path because tests/cluster.py has the same module name.
_spec = importlib.util.spec_from_file_location("bench_cluster", BENCH_DIR / "cluster.py")
bc = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bc)

LOOPBACK = "127.0.0.1"
MM2_LIBS = Path(os.environ.get("MM2_LIBS", REPO / "tests" / ".cache" / "mm2-libs"))
MM2_FETCH = BENCH_DIR / "mm2" / "fetch.sh"
MM2_TEMPLATE = BENCH_DIR / "mm2" / "mm2.properties.in"
TOPIC = "mirror-bench"
HOME, MIRROR = "us-east", "eu-west"

# connect-mirror-maker.sh: KAFKA_HEAP_OPTS="-Xms256M -Xmx2G", plus kafka-run-class.sh's G1 flags.
MM2_STOCK_JVM = ["-Xms256M", "-Xmx2G", *[f for f in bc.KAFKA_STOCK_JVM if not f.startswith("-Xm")]]

MM2_PROFILES = {
    "stock": "",
    # What one would tune for a 100 ms path: bigger fetches per round trip (the consumer has
    # one fetch in flight per broker, so throughput per partition <= max.partition.fetch.bytes
    # per RTT), batching on the target side, and offset syncs written next to MM2, not
    # across the WAN.
    "wan": "\n".join([
        "src.consumer.max.partition.fetch.bytes = 8388608",
        "src.consumer.fetch.max.bytes = 67108864",
        "src.consumer.max.poll.records = 2000",
        "dst.producer.linger.ms = 5",
        "dst.producer.batch.size = 262144",
        "offset-syncs.topic.location = target",
    ]),
}

log = bc.log
BenchError = bc.BenchError


def free_udp_port(host: str = LOOPBACK) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def http_json(url: str, timeout: float = 3.0):
    status, body = harness.http_get(url, timeout=timeout)
    if status != 200:
        raise RuntimeError(f"GET {url} -> {status}: {body[:300]}")
    return json.loads(body)


def wait_for(pred, timeout: float, what: str, interval: float = 0.25, check=None):
    deadline = time.monotonic() + timeout
    last = None
    while True:
        if check:
            check()
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last = e
        if time.monotonic() > deadline:
            raise BenchError(f"timed out after {timeout:.0f}s waiting for {what}" +
                             (f" (last error: {last!r})" if last else ""))
        time.sleep(interval)


def default_chronik_bin() -> Path:
    if os.environ.get("CHRONIK_BIN"):
        return Path(os.environ["CHRONIK_BIN"])
    b = harness.chronik_bin()
    if b.exists():
        return b
    cache = Path("/var/cache/chronik-target/release/chronik")
    return cache if cache.exists() else b


def binary_identity(path: Path) -> dict:
    import hashlib

    st = path.stat()
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"path": str(path), "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
            "size": st.st_size, "sha256": h.hexdigest()[:16]}


def rf_of(n: int) -> tuple[int, int]:
    return min(3, n), min(2, n)


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class WanSim(harness.ManagedProcess):
    """`chronik wan-sim` with UDP and TCP proxies and an HTTP control port."""

    def __init__(self, work: Path, binary: Path, udp: list[tuple[str, str]], tcp: list[tuple[str, str]],
                 args) -> None:
        super().__init__()
        self.name = "wan-sim"
        self.work, self.binary, self.udp, self.tcp = work, binary, udp, tcp
        self.control = f"{LOOPBACK}:{harness.free_port()}"
        self.imp = {"delay_ms": args.delay_ms, "jitter_ms": args.jitter_ms, "loss": args.loss,
                    "bandwidth_mbit": args.bandwidth_mbit}

    def start(self, timeout: float = 30.0) -> "WanSim":
        argv = [str(self.binary), "wan-sim", "--control", self.control,
                "--delay-ms", str(self.imp["delay_ms"]), "--jitter-ms", str(self.imp["jitter_ms"]),
                "--loss", str(self.imp["loss"]), "--bandwidth-mbit", str(self.imp["bandwidth_mbit"])]
        for listen, up in self.udp:
            argv += ["--udp", f"{listen}={up}"]
        for listen, up in self.tcp:
            argv += ["--tcp", f"{listen}={up}"]
        self._spawn(argv, cwd=self.work, log_path=self.work / "wan-sim.log")
        wait_for(lambda: "wan-sim ready" in self.log_path.read_text(errors="replace"), timeout,
                 "wan-sim ready", check=lambda: self._check_alive("starting"))
        got = http_json(f"http://{self.control}/v1/impairment")
        for k, v in self.imp.items():
            if abs(float(got.get(k, 0)) - float(v)) > 1e-9:
                raise BenchError(f"wan-sim impairment {k} is {got.get(k)}, asked for {v}")
        return self

    def stats(self) -> dict:
        return http_json(f"http://{self.control}/v1/stats")


def wan_delta(before: dict, after: dict) -> dict:
    """Bytes and packets over the interval, per proxy and direction and in total."""
    out = {"proxies": [], "bytes": 0, "packets": 0, "dropped": 0, "queue_drops": 0}
    for kind in ("udp", "tcp"):
        for b, a in zip(before.get(kind, []), after.get(kind, [])):
            row = {"kind": kind, "listen": a["listen"], "upstream": a["upstream"]}
            for d in ("up", "down"):
                for k in ("bytes", "packets", "dropped", "queue_drops"):
                    row[f"{d}_{k}"] = a[d].get(k, 0) - b[d].get(k, 0)
                out["bytes"] += row[f"{d}_bytes"]
                out["packets"] += row[f"{d}_packets"]
                out["dropped"] += row[f"{d}_dropped"]
                out["queue_drops"] += row[f"{d}_queue_drops"]
            out["proxies"].append(row)
    return out


class ChronikRegion:
    """N Chronik brokers forming one region (direct Raft links, no fault proxies)."""

    def __init__(self, name: str, n: int, work: Path, binary: Path, id_base: int) -> None:
        self.name, self.n = name, n
        rf, isr = rf_of(n)
        ids = [id_base + i for i in range(1, n + 1)]
        raft = {i: harness.free_port() for i in ids} if n > 1 else {}
        self.nodes: list[harness.Chronik] = []
        for i in ids:
            lines = ["[cluster]", f"replication_factor = {rf}", f"min_insync_replicas = {isr}"]
            for j in ids:
                if j != i:
                    lines += ["", "[[cluster.peers]]", f"id = {j}", f'raft = "{LOOPBACK}:{raft[j]}"']
            node = harness.Chronik(None, work / name / f"node{i}", raft_port=raft.get(i), extra_toml="\n".join(lines),
                                   binary=binary, node_id=i, region=name, durability="replicated",
                                   auto_create=False, default_partitions=1)
            node.name = f"chronik-{name}-{i}"
            self.nodes.append(node)

    @property
    def bootstrap(self) -> str:
        return ",".join(n.bootstrap for n in self.nodes)

    @property
    def admin_addrs(self) -> list[str]:
        return [f"{n.host}:{n.admin_port}" for n in self.nodes]

    def launch(self) -> None:
        for n in self.nodes:
            n.launch()

    def wait_formed(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout

        def formed():
            for n in self.nodes:
                n._check_alive(f"forming region {self.name}")
                if not n.ready():
                    return False
            if self.n > 1:
                for n in self.nodes:
                    view = http_json(n.admin_url + "/v1/cluster", timeout=2)
                    if view.get("controller_leader") in (None, -1, 0) or len(view.get("brokers", [])) != self.n:
                        return False
            return all(len(bc.metadata_of(n.bootstrap, [], timeout=3)["brokers"]) == self.n for n in self.nodes)

        wait_for(formed, max(1.0, deadline - time.monotonic()), f"Chronik region {self.name} ({self.n} brokers)",
                 interval=0.3)

    def check_alive(self, what: str) -> None:
        for n in self.nodes:
            n._check_alive(what)

    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid]

    def stop(self) -> None:
        harness.stop_all(self.nodes, timeout=20)


class DcLink(harness.ManagedProcess):
    def __init__(self, region: str, work: Path, binary: Path, topology: Path, listen: str) -> None:
        super().__init__()
        self.name = f"dc-link-{region}"
        self.region, self.work, self.binary, self.topology, self.listen = region, work, binary, topology, listen
        self.admin = f"{LOOPBACK}:{harness.free_port()}"
        self.config_path = work / f"dc-link-{region}.toml"

    def start(self, timeout: float = 60.0) -> "DcLink":
        self.config_path.write_text(f'region = "{self.region}"\ntopology = "{self.topology}"\n'
                                    f'listen = "{self.listen}"\nadmin = "{self.admin}"\n')
        env = dict(os.environ, RUST_BACKTRACE="1")
        self._spawn([str(self.binary), "dc-link", "--config", str(self.config_path)], cwd=self.work,
                    log_path=self.work / f"dc-link-{self.region}.log", env=env)
        wait_for(lambda: harness.http_get(f"http://{self.admin}/health/ready", timeout=1)[0] == 200, timeout,
                 f"{self.name} /health/ready", check=lambda: self._check_alive("starting"))
        return self

    def lag(self) -> dict:
        return http_json(f"http://{self.admin}/v1/lag")


class KafkaBroker(bc.KafkaNode):
    """bench/cluster.py's stock-flag KRaft node, sized for N brokers, optionally with a WAN
    listener advertised at a wan-sim TCP proxy."""

    def __init__(self, node_id: int, work: Path, n: int, wan: bool) -> None:
        super().__init__(node_id, work, harness.free_port(), harness.free_port())
        self.n = n
        self.wan_port = harness.free_port() if wan else None
        self.wan_proxy_port = harness.free_port() if wan else None

    @property
    def wan_proxy(self) -> str:
        return f"{LOOPBACK}:{self.wan_proxy_port}"

    def properties(self, voters: str) -> dict:
        p = super().properties(voters)
        rf, isr = rf_of(self.n)
        p.update({
            "default.replication.factor": str(rf), "min.insync.replicas": str(isr),
            "offsets.topic.replication.factor": str(rf), "transaction.state.log.replication.factor": str(rf),
            "transaction.state.log.min.isr": str(isr), "share.coordinator.state.topic.replication.factor": str(rf),
            "share.coordinator.state.topic.min.isr": str(isr), "auto.create.topics.enable": "false",
        })
        if self.wan_port:
            p["listeners"] += f",WAN://{self.host}:{self.wan_port}"
            p["advertised.listeners"] += f",WAN://{self.wan_proxy}"
            p["listener.security.protocol.map"] += ",WAN:PLAINTEXT"
        return p


class KafkaRegion:
    def __init__(self, name: str, n: int, work: Path, wan: bool) -> None:
        self.name, self.n = name, n
        base = work / name
        self.nodes = [KafkaBroker(i, base, n, wan) for i in range(1, n + 1)]
        import base64
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    @property
    def bootstrap(self) -> str:
        return ",".join(n.addr for n in self.nodes)

    def launch(self) -> None:
        harness.ensure_kafka_libs()
        voters = ",".join(f"{n.node_id}@{n.host}:{n.controller_port}" for n in self.nodes)
        errors: list = []
        threads = [threading.Thread(target=lambda n=n: harness._collect(errors, lambda: n.prepare(voters, self.cluster_id)))
                   for n in self.nodes]
        for t in threads:
            t.start()
        for t in threads:
            t.join(240)
        if errors:
            raise errors[0]
        for n in self.nodes:
            n.launch()

    def wait_formed(self, timeout: float) -> None:
        def formed():
            self.check_alive(f"starting Kafka {self.name}")
            return all(len(bc.metadata_of(n.addr, [], timeout=3)["brokers"]) == self.n for n in self.nodes)

        wait_for(formed, timeout, f"Kafka {self.name} ({self.n} brokers)", interval=0.5)

    def check_alive(self, what: str) -> None:
        for n in self.nodes:
            if n.proc is not None and n.proc.poll() is not None:
                raise BenchError(f"{n.name} of {self.name} exited with {n.proc.returncode} while {what}:\n{n.log_tail()}")

    def pids(self) -> list[int]:
        return [n.pid for n in self.nodes if n.pid]

    def stop(self) -> None:
        harness.stop_all(self.nodes, timeout=20)


class MirrorMaker2(harness.ManagedProcess):
    def __init__(self, work: Path, src_bootstrap: str, dst_bootstrap: str, topics: str, rf: int, tasks_max: int,
                 profile: str) -> None:
        super().__init__()
        self.name = "mirrormaker2"
        self.work = work / "mm2"
        self.work.mkdir(parents=True, exist_ok=True)
        props = string.Template(MM2_TEMPLATE.read_text()).substitute(
            src_bootstrap=src_bootstrap, dst_bootstrap=dst_bootstrap, topics=topics, rf=rf, tasks_max=tasks_max,
            profile=profile, profile_props=MM2_PROFILES[profile])
        self.props_path = self.work / "mm2.properties"
        self.props_path.write_text(props)
        (self.work / "log4j2.properties").write_text(bc.KAFKA_LOG4J.format(log=self.work / "mm2.log"))

    def start(self) -> "MirrorMaker2":
        if not (MM2_LIBS / ".complete-4.1.1").exists():
            r = subprocess.run(["bash", str(MM2_FETCH)], capture_output=True, text=True, timeout=900)
            if r.returncode != 0:
                raise BenchError(f"fetching the MirrorMaker 2 jars failed:\n{r.stdout}\n{r.stderr}")
        argv = [harness.java_bin(), *MM2_STOCK_JVM, f"-Dlog4j2.configurationFile={self.work / 'log4j2.properties'}",
                "-cp", f"{MM2_LIBS}/*", "org.apache.kafka.connect.mirror.MirrorMaker", str(self.props_path),
                "--clusters", "dst"]
        self._spawn(argv, cwd=self.work, log_path=self.work / "mm2.stdout")
        return self

    def log_tail(self, n: int = 60) -> str:
        return harness.tail(self.work / "mm2.log", n)


# ---------------------------------------------------------------------------
# The two systems
# ---------------------------------------------------------------------------


class ChronikSystem:
    kind = "chronik"
    label = "Chronik dc-link"
    topic_configs: dict = {}

    def __init__(self, work: Path, args) -> None:
        self.work, self.args = work / self.kind, args
        self.work.mkdir(parents=True, exist_ok=True)
        self.binary = args.chronik_bin
        self.home = ChronikRegion(HOME, args.brokers, self.work, self.binary, 0)
        self.mirror = ChronikRegion(MIRROR, args.brokers, self.work, self.binary, 100)
        # Real QUIC ports and the wan-sim proxies in front of them.
        self.quic = {HOME: f"{LOOPBACK}:{free_udp_port()}", MIRROR: f"{LOOPBACK}:{free_udp_port()}"}
        self.proxy = {HOME: f"{LOOPBACK}:{free_udp_port()}", MIRROR: f"{LOOPBACK}:{free_udp_port()}"}
        self.wansim = WanSim(self.work, self.binary, [(self.proxy[MIRROR], self.quic[MIRROR]),
                                                      (self.proxy[HOME], self.quic[HOME])], [], args)
        self.links: dict[str, DcLink] = {}

    @property
    def home_bootstrap(self) -> str:
        return self.home.bootstrap

    @property
    def mirror_bootstrap(self) -> str:
        return self.mirror.bootstrap

    def topology(self) -> Path:
        certs = self.work / "certs"
        r = subprocess.run([str(self.binary), "certs", "init", "--dir", str(certs), "--regions", f"{HOME},{MIRROR}"],
                           capture_output=True, text=True, timeout=60)
        if r.returncode != 0:
            raise BenchError(f"chronik certs init failed: {r.stdout}{r.stderr}")
        a = self.args
        lines = ["[cross_dc]", f"link_rtt_ms = {max(1, round(2 * a.delay_ms))}"]
        if a.bandwidth_mbit > 0:
            lines.append(f"link_bandwidth_mbit = {max(1, round(a.bandwidth_mbit))}")
        lines += ["", "[tls]", f'ca = "{certs / "ca.pem"}"']
        for region in (self.home, self.mirror):
            lines += ["", "[[regions]]", f'name = "{region.name}"',
                      "bootstrap = [" + ", ".join(f'"{n.bootstrap}"' for n in region.nodes) + "]",
                      "brokers_admin = [" + ", ".join(f'"{x}"' for x in region.admin_addrs) + "]",
                      f'dc_link = "{self.proxy[region.name]}"',
                      f'cert = "{certs / (region.name + ".pem")}"', f'key = "{certs / (region.name + ".key")}"']
        path = self.work / "topology.toml"
        path.write_text("\n".join(lines) + "\n")
        r = subprocess.run([str(self.binary), "config", "check-topology", str(path)], capture_output=True, text=True,
                           timeout=30)
        if r.returncode != 0:
            raise BenchError(f"chronik config check-topology {path} failed: {r.stdout}{r.stderr}")
        return path

    def start(self) -> None:
        self.wansim.start()
        self.home.launch()
        self.mirror.launch()
        self.home.wait_formed(self.args.chronik_start_timeout)
        self.mirror.wait_formed(self.args.chronik_start_timeout)
        topo = self.topology()
        for region in (HOME, MIRROR):
            self.links[region] = DcLink(region, self.work, self.binary, topo, self.quic[region]).start()

        def connected():
            links = {l["link"]: l for l in self.links[HOME].lag()["links"]}
            return links.get(f"{HOME}->{MIRROR}", {}).get("connected")

        wait_for(connected, 60, f"dc-link {HOME}->{MIRROR} connected through wan-sim", check=self.check_alive)

    def after_topic_created(self, topic: str) -> None:
        pass

    def check_alive(self) -> None:
        self.home.check_alive("benchmarking")
        self.mirror.check_alive("benchmarking")
        for l in self.links.values():
            l._check_alive("benchmarking")
        self.wansim._check_alive("benchmarking")

    def cpu(self) -> dict:
        out = {"home_brokers": sum(bc.cpu_seconds(p) for p in self.home.pids()),
               "mirror_brokers": sum(bc.cpu_seconds(p) for p in self.mirror.pids()),
               "wan_sim": bc.cpu_seconds(self.wansim.pid) if self.wansim.pid else 0.0}
        out["mirroring"] = sum(bc.cpu_seconds(l.pid) for l in self.links.values() if l.pid)
        return out

    def link_snapshot(self) -> dict:
        try:
            rep = self.links[HOME].lag()
        except Exception as e:  # noqa: BLE001
            return {"error": repr(e)}
        link = next((l for l in rep["links"] if l["link"] == f"{HOME}->{MIRROR}"), {})
        return {"link": link, "partitions": [p for p in rep["partitions"] if p["topic"] == TOPIC]}

    def reported_lag(self):
        """dc-link's own view (/v1/lag): the largest lag_seconds and lag_records over the topic's partitions."""
        rows = [p for p in self.links[HOME].lag()["partitions"] if p["topic"] == TOPIC]
        return (max((p["lag_seconds"] for p in rows), default=0.0), sum(p["lag_records"] for p in rows))

    def data_direction(self) -> tuple[str, str]:
        """(proxy listen address, direction) that carries the mirrored data."""
        return self.proxy[MIRROR], "up"

    def describe(self) -> dict:
        return {"home": HOME, "mirror": MIRROR, "brokers_per_region": self.args.brokers,
                "durability": "replicated", "wan_proxies": {"udp": self.wansim.udp},
                "topology": str(self.work / "topology.toml")}

    def logs(self) -> list[Path]:
        return [p for p in self.work.rglob("*") if p.is_file() and p.suffix in (".log", ".toml")]

    def stop(self) -> None:
        harness.stop_all(list(self.links.values()), timeout=10)
        for r in (self.home, self.mirror):
            r.stop()
        self.wansim.stop(timeout=5)


class ChronikRpoSystem(ChronikSystem):
    """The same, with the topic's RPO enforced (docs/rpo.md): what holding an RPO costs
    on a link that keeps up."""
    kind = "chronik-rpo"
    label = "Chronik dc-link, chronik.rpo.ms=5000 enforced"
    topic_configs = {"chronik.rpo.ms": "5000", "chronik.rpo.enforce": "true"}


class Mm2System:
    kind = "mm2"
    label = "Kafka + MirrorMaker 2"

    def __init__(self, work: Path, args) -> None:
        self.work, self.args = work / "mm2", args
        self.work.mkdir(parents=True, exist_ok=True)
        self.src = KafkaRegion("src", args.brokers, self.work, wan=True)
        self.dst = KafkaRegion("dst", args.brokers, self.work, wan=False)
        self.wansim = WanSim(self.work, args.chronik_bin, [],
                             [(n.wan_proxy, f"{LOOPBACK}:{n.wan_port}") for n in self.src.nodes], args)
        self.mm2: MirrorMaker2 | None = None

    @property
    def home_bootstrap(self) -> str:
        return self.src.bootstrap

    @property
    def mirror_bootstrap(self) -> str:
        return self.dst.bootstrap

    def start(self) -> None:
        self.wansim.start()
        self.src.launch()
        self.dst.launch()
        self.src.wait_formed(self.args.kafka_start_timeout)
        self.dst.wait_formed(self.args.kafka_start_timeout)
        # The WAN listener must hand out the proxies, or MM2 would bypass the simulator.
        md = bc.metadata_of(self.src.nodes[0].wan_proxy, [], timeout=10)
        advertised = sorted(f"{h}:{p}" for _, h, p in md["brokers"])
        if advertised != sorted(n.wan_proxy for n in self.src.nodes):
            raise BenchError(f"source brokers advertise {advertised} on the WAN listener, not the wan-sim proxies")

    def after_topic_created(self, topic: str) -> None:
        rf, _ = rf_of(self.args.brokers)
        self.mm2 = MirrorMaker2(self.work, ",".join(n.wan_proxy for n in self.src.nodes), self.dst.bootstrap,
                                topic, rf, self.args.partitions, self.args.mm2_profile).start()

    def check_alive(self) -> None:
        self.src.check_alive("benchmarking")
        self.dst.check_alive("benchmarking")
        self.wansim._check_alive("benchmarking")
        if self.mm2 and self.mm2.proc and self.mm2.proc.poll() is not None:
            raise BenchError(f"MirrorMaker 2 exited with {self.mm2.proc.returncode}:\n{self.mm2.log_tail()}\n"
                             f"{harness.tail(self.mm2.work / 'mm2.stdout', 20)}")

    def cpu(self) -> dict:
        return {"home_brokers": sum(bc.cpu_seconds(p) for p in self.src.pids()),
                "mirror_brokers": sum(bc.cpu_seconds(p) for p in self.dst.pids()),
                "wan_sim": bc.cpu_seconds(self.wansim.pid) if self.wansim.pid else 0.0,
                "mirroring": bc.cpu_seconds(self.mm2.pid) if self.mm2 and self.mm2.pid else 0.0}

    def link_snapshot(self) -> dict:
        return {}

    reported_lag = None

    def data_direction(self) -> tuple[str, str]:
        return "*", "down"  # fetch responses: source broker (upstream) -> MM2 (listener side)

    def effective_client_configs(self) -> dict:
        """Values MM2's clients logged at start (ConsumerConfig / ProducerConfig dumps), to show
        that the profile's settings took effect."""
        keys = ("max.partition.fetch.bytes", "fetch.max.bytes", "max.poll.records", "linger.ms", "batch.size",
                "acks", "max.in.flight.requests.per.connection", "compression.type")
        seen: dict = {k: set() for k in keys}
        try:
            text = (self.mm2.work / "mm2.log").read_text(errors="replace") if self.mm2 else ""
        except OSError:
            text = ""
        for line in text.splitlines():
            line = line.strip()
            for k in keys:
                if line.startswith(k + " = "):
                    seen[k].add(line.split(" = ", 1)[1])
        return {k: sorted(v) for k, v in seen.items() if v}

    def describe(self) -> dict:
        return {"home": "src", "mirror": "dst", "brokers_per_region": self.args.brokers,
                "mm2_client_configs_logged": self.effective_client_configs(),
                "mm2_profile": self.args.mm2_profile, "mm2_jvm": MM2_STOCK_JVM, "kafka_jvm": bc.KAFKA_STOCK_JVM,
                "mm2_properties": str(self.mm2.props_path) if self.mm2 else None,
                "wan_proxies": {"tcp": self.wansim.tcp}}

    def logs(self) -> list[Path]:
        return [p for p in self.work.rglob("*") if p.is_file() and
                (p.suffix in (".log", ".properties", ".stdout") and "logs" not in p.parts)]

    def stop(self) -> None:
        if self.mm2:
            self.mm2.stop(timeout=15)
        for r in (self.src, self.dst):
            r.stop()
        self.wansim.stop(timeout=5)


# ---------------------------------------------------------------------------
# Topics, offsets, load
# ---------------------------------------------------------------------------


def admin_client(bootstrap: str):
    from confluent_kafka.admin import AdminClient

    return AdminClient({"bootstrap.servers": bootstrap, "socket.timeout.ms": 10000})


def topic_ready(bootstrap: str, topic: str, partitions: int) -> bool:
    for addr in bootstrap.split(","):
        err, parts = bc.metadata_of(addr, [topic], timeout=5)["topics"].get(topic, (-1, {}))
        if err != 0 or len(parts) != partitions or any(pe != 0 or leader < 0 for pe, leader, _, _ in parts.values()):
            return False
    return True


def create_topic(bootstrap: str, topic: str, partitions: int, rf: int, timeout: float = 120,
                 configs: dict | None = None) -> None:
    from confluent_kafka.admin import NewTopic

    admin = admin_client(bootstrap)  # must outlive the future
    fs = admin.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=rf,
                                       config=configs or {})],
                             operation_timeout=60, request_timeout=90)
    try:
        fs[topic].result(timeout=timeout)
    except Exception as e:  # noqa: BLE001
        raise BenchError(f"creating {topic} ({partitions} partitions, RF={rf}) at {bootstrap} failed: {e}") from e
    wait_for(lambda: topic_ready(bootstrap, topic, partitions), timeout, f"{topic} leaders at {bootstrap}")


class Offsets:
    """High watermarks of one topic in one region, through a Kafka consumer handle."""

    def __init__(self, bootstrap: str, topic: str, partitions: int) -> None:
        from confluent_kafka import Consumer

        self.topic, self.partitions = topic, partitions
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"dclink-bench-hw-{uuid.uuid4().hex[:8]}",
                           "enable.auto.commit": False, "socket.timeout.ms": 10000, "log_level": 0})

    def per_partition(self, timeout: float = 5.0) -> dict[int, int]:
        from confluent_kafka import TopicPartition

        return {p: self.c.get_watermark_offsets(TopicPartition(self.topic, p), timeout=timeout, cached=False)[1]
                for p in range(self.partitions)}

    def total(self) -> int:
        return sum(self.per_partition().values())

    def close(self) -> None:
        try:
            self.c.close()
        except Exception:  # noqa: BLE001
            pass


class Poller(threading.Thread):
    """Samples (t_home, home_hw, t_mirror, mirror_hw) every `interval` seconds."""

    def __init__(self, home: Offsets, mirror: Offsets, interval: float = 0.1, extra=None) -> None:
        super().__init__(daemon=True)
        self.home, self.mirror, self.interval = home, mirror, interval
        self.samples: list[tuple[float, int, float, int]] = []
        self.extra, self.extra_samples, self._extra_at = extra, [], 0.0
        self.errors = 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.is_set():
            t0 = time.monotonic()
            try:
                # Each value is stamped at the middle of its query (queries slow down under load).
                h = self.home.total()
                t1 = time.monotonic()
                th = (t0 + t1) / 2
                m = self.mirror.total()
                tm = (t1 + time.monotonic()) / 2
                self.samples.append((th, h, tm, m))
                if self.extra and tm - self._extra_at >= 0.5:
                    self._extra_at = tm
                    v = self.extra()
                    if v is not None:
                        self.extra_samples.append((tm, v))
            except Exception:  # noqa: BLE001 - counted; a few failed samples only coarsen the series
                self.errors += 1
            self._halt.wait(max(0.0, self.interval - (time.monotonic() - t0)))

    def stop(self) -> None:
        self._halt.set()
        self.join(10)

    def latest(self) -> tuple[int, int]:
        s = self.samples[-1] if self.samples else (0, 0, 0, 0)
        return s[1], s[3]


def producer_perf(bootstrap: str, records: int, rate: int, args) -> dict:
    libs = harness.ensure_kafka_libs()
    argv = [harness.java_bin(), "-Xmx512m", "-cp", f"{libs}/*", "org.apache.kafka.tools.ProducerPerformance",
            "--topic", TOPIC, "--num-records", str(records), "--record-size", str(args.record_size),
            "--throughput", str(rate), "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all",
            "linger.ms=5", "batch.size=65536", f"compression.type={args.compression}"]
    timeout = 180 + records / (min(rate, 500) if rate > 0 else 500)
    t0 = time.monotonic()
    try:
        out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        raise BenchError(f"ProducerPerformance still running after {timeout:.0f}s") from e
    m = None
    for line in out.stdout.splitlines():
        m = bc.SUMMARY.search(line) or m
    if out.returncode != 0 or m is None:
        raise BenchError(f"ProducerPerformance failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return {"records": int(m.group(1)), "msg_s": float(m.group(2)), "mb_s": float(m.group(3)),
            "avg_ms": float(m.group(4)), "max_ms": float(m.group(5)), "p50_ms": int(m.group(6)),
            "p99_ms": int(m.group(8)), "wall_s": time.monotonic() - t0}


# ---------------------------------------------------------------------------
# The end-to-end consumer (runs as a subprocess: python3 dclink.py _consume ...)
# ---------------------------------------------------------------------------


def pct(sorted_vals: list[float], q: float) -> float | None:
    if not sorted_vals:
        return None
    i = min(len(sorted_vals) - 1, max(0, math.ceil(q * len(sorted_vals)) - 1))
    return sorted_vals[i]


def consume_main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="dclink.py _consume")
    ap.add_argument("--bootstrap", required=True)
    ap.add_argument("--topic", required=True)
    ap.add_argument("--offsets", required=True, help="JSON {partition: start offset}")
    ap.add_argument("--expect", type=int, required=True)
    ap.add_argument("--timeout", type=float, required=True)
    ap.add_argument("--warmup-s", type=float, default=10.0)
    ap.add_argument("--out", required=True)
    a = ap.parse_args(argv)
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": a.bootstrap, "group.id": f"dclink-bench-e2e-{uuid.uuid4().hex[:8]}",
                  "enable.auto.commit": False, "auto.offset.reset": "earliest", "enable.partition.eof": False})
    c.assign([TopicPartition(a.topic, int(p), int(o)) for p, o in json.loads(a.offsets).items()])
    lat: list[float] = []
    tss: list[int] = []
    arrivals: list[float] = []
    errors = 0
    deadline = time.monotonic() + a.timeout
    Path(a.out + ".ready").write_text("ready")
    while len(lat) < a.expect and time.monotonic() < deadline:
        # poll() returns as soon as one message is there; then take what is already queued
        # without waiting (consume(n, timeout) would block until n messages or the timeout).
        first = c.poll(0.1)
        if first is None:
            continue
        msgs = [first] + c.consume(10000, 0)
        now = time.time() * 1000.0
        for m in msgs:
            if m.error():
                errors += 1
                continue
            ts = m.timestamp()[1]
            lat.append(now - ts)
            tss.append(ts)
            arrivals.append(now)
    c.close()
    res: dict = {"received": len(lat), "expected": a.expect, "errors": errors, "timed_out": len(lat) < a.expect}
    if lat:
        t_first = min(tss)
        steady = sorted(l for l, ts in zip(lat, tss) if ts >= t_first + a.warmup_s * 1000)
        res.update({
            "steady_records": len(steady),
            "p50_ms": pct(steady, 0.50), "p90_ms": pct(steady, 0.90), "p99_ms": pct(steady, 0.99),
            "p999_ms": pct(steady, 0.999), "max_ms": steady[-1] if steady else None,
            "mean_ms": sum(steady) / len(steady) if steady else None,
            "all_p99_ms": pct(sorted(lat), 0.99), "all_max_ms": max(lat),
            "arrival_span_s": (max(arrivals) - min(arrivals)) / 1000.0,
            "produce_span_s": (max(tss) - t_first) / 1000.0,
        })
    Path(a.out).write_text(json.dumps(res))
    return 0


class E2eConsumer:
    def __init__(self, work: Path, label: str, bootstrap: str, offsets: dict[int, int], expect: int, timeout: float,
                 warmup_s: float) -> None:
        self.out = work / f"e2e-{label}-{uuid.uuid4().hex[:6]}.json"
        argv = [sys.executable, str(Path(__file__).resolve()), "_consume", "--bootstrap", bootstrap, "--topic", TOPIC,
                "--offsets", json.dumps(offsets), "--expect", str(expect), "--timeout", str(timeout),
                "--warmup-s", str(warmup_s), "--out", str(self.out)]
        self.log = open(work / f"e2e-{label}.log", "ab")
        self.proc = subprocess.Popen(argv, stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.label = label

    def wait_ready(self, timeout: float = 30) -> None:
        wait_for(lambda: Path(str(self.out) + ".ready").exists(), timeout, f"{self.label} consumer started")

    def result(self, timeout: float) -> dict:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)
            raise BenchError(f"{self.label} consumer did not finish within {timeout:.0f}s")
        finally:
            self.log.close()
        if not self.out.exists():
            raise BenchError(f"{self.label} consumer exited {self.proc.returncode} without a result")
        return json.loads(self.out.read_text())

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def wait_caught_up(system, home: Offsets, mirror: Offsets, timeout: float, what: str) -> None:
    def caught_up():
        h, m = home.per_partition(), mirror.per_partition()
        return all(m[p] >= h[p] for p in h)

    wait_for(caught_up, timeout, f"the mirror to catch up ({what})", interval=0.2, check=system.check_alive)


def cpu_delta(c0: dict, c1: dict, records: int) -> dict:
    d = {k: c1[k] - c0.get(k, 0.0) for k in c1}
    d["total"] = sum(d.values())
    d["total_per_100k"] = d["total"] / max(records, 1) * 100_000
    d["mirroring_per_100k"] = d.get("mirroring", 0.0) / max(records, 1) * 100_000
    return d


def wan_summary(system, w0: dict, w1: dict, records: int) -> dict:
    d = wan_delta(w0, w1)
    listen, direction = system.data_direction()
    data = sum(r[f"{direction}_bytes"] for r in d["proxies"] if listen in ("*", r["listen"]))
    d.update({"records": records, "bytes_per_record": d["bytes"] / max(records, 1),
              "data_dir_bytes": data, "data_dir_bytes_per_record": data / max(records, 1),
              "reverse_bytes_per_record": (d["bytes"] - data) / max(records, 1)})
    return d


def link_delta(l0: dict, l1: dict, records: int) -> dict | None:
    """Chronik only: what the home dc-link says it sent over the interval."""
    a, b = l0.get("link"), l1.get("link")
    if not a or not b:
        return None
    d = {k: b.get(k, 0) - a.get(k, 0) for k in ("frames_sent", "records_sent", "raw_bytes_sent", "wire_bytes_sent",
                                                  "reconnects")}
    d["wire_bytes_per_record"] = d["wire_bytes_sent"] / max(d["records_sent"], 1)
    d["raw_bytes_per_record"] = d["raw_bytes_sent"] / max(d["records_sent"], 1)
    d["compression_ratio"] = d["raw_bytes_sent"] / max(d["wire_bytes_sent"], 1)
    d["records_per_frame"] = d["records_sent"] / max(d["frames_sent"], 1)
    d["records_expected"] = records
    return d


def _first(samples, ti, vi, pred):
    return next((s[ti] for s in samples if pred(s[vi])), None)


def analyse_series(samples: list, base_h: int, base_m: int, n: int) -> dict:
    """Throughput of each side from its own window, and offset lag in seconds."""
    th0 = _first(samples, 0, 1, lambda v: v > base_h)
    th1 = _first(samples, 0, 1, lambda v: v >= base_h + n)
    tm0 = _first(samples, 2, 3, lambda v: v > base_m)
    tm1 = _first(samples, 2, 3, lambda v: v >= base_m + n)
    out: dict = {"samples": len(samples)}
    if None in (th0, th1, tm0, tm1):
        out["incomplete"] = True
        return out
    out.update({"home_window_s": th1 - th0, "mirror_window_s": tm1 - tm0,
                "home_msg_s": n / max(th1 - th0, 1e-3), "mirror_msg_s": n / max(tm1 - tm0, 1e-3),
                "catch_up_s": tm1 - th1, "mirror_start_delay_s": tm0 - th0})
    out["ratio"] = out["mirror_msg_s"] / out["home_msg_s"]
    # Offset lag: for each mirror sample inside the run, how long ago the home reached it.
    home_pts = [(s[0], s[1] - base_h) for s in samples]
    lags = []
    for _, _, tm, m in samples:
        mm = m - base_m
        if 0 < mm < n:
            th = next((t for t, h in home_pts if h >= mm), None)
            if th is not None:
                lags.append(max(0.0, tm - th))
    lags.sort()
    out["offset_lag_s"] = {"p50": pct(lags, 0.5), "p99": pct(lags, 0.99), "max": lags[-1] if lags else None,
                           "n": len(lags)}
    return out


def scenario_max(system, home: Offsets, mirror: Offsets, args) -> dict:
    n = args.records
    base_h, base_m = home.total(), mirror.total()
    poller = Poller(home_offsets_clone(system, args), mirror_offsets_clone(system, args))
    w0, c0, l0 = system.wansim.stats(), system.cpu(), system.link_snapshot()
    poller.start()
    try:
        time.sleep(0.5)
        pp = producer_perf(system.home_bootstrap, n, -1, args)
        log(f"  {system.kind}: produced {pp['records']:,} at {pp['msg_s']:,.0f} msg/s (producer's own figure)")
        timeout = args.catch_up_timeout
        deadline = time.monotonic() + timeout
        while poller.latest()[1] < base_m + n:
            system.check_alive()
            if time.monotonic() > deadline:
                h, m = poller.latest()
                raise BenchError(f"{system.kind}: mirror has {m - base_m:,} of {n:,} records {timeout:.0f}s after "
                                 f"the producer finished (home {h - base_h:,})")
            time.sleep(0.1)
        time.sleep(0.3)
    finally:
        poller.stop()
        poller.home.close()
        poller.mirror.close()
    w1, c1, l1 = system.wansim.stats(), system.cpu(), system.link_snapshot()
    res = {"records": n, "producer": pp, "series": analyse_series(poller.samples, base_h, base_m, n),
           "poll_errors": poller.errors, "wan": wan_summary(system, w0, w1, n), "cpu_s": cpu_delta(c0, c1, n),
           "dclink": link_delta(l0, l1, n), "link_after": l1, "loadavg": os.getloadavg()}
    if args.keep_series:
        res["raw_series"] = poller.samples
    return res


def home_offsets_clone(system, args) -> Offsets:
    return Offsets(system.home_bootstrap, TOPIC, args.partitions)


def mirror_offsets_clone(system, args) -> Offsets:
    return Offsets(system.mirror_bootstrap, TOPIC, args.partitions)


def scenario_rate(system, home: Offsets, mirror: Offsets, args, work: Path) -> dict:
    n = int(args.rate * args.rate_seconds)
    start_h, start_m = home.per_partition(), mirror.per_partition()
    base_h, base_m = sum(start_h.values()), sum(start_m.values())
    timeout = args.rate_seconds + args.catch_up_timeout + 60
    cons = {"home": E2eConsumer(work, f"{system.kind}-home", system.home_bootstrap, start_h, n, timeout,
                                args.warmup_seconds),
            "mirror": E2eConsumer(work, f"{system.kind}-mirror", system.mirror_bootstrap, start_m, n, timeout,
                                  args.warmup_seconds)}
    poller = Poller(home_offsets_clone(system, args), mirror_offsets_clone(system, args), extra=system.reported_lag)
    try:
        for c in cons.values():
            c.wait_ready()
        time.sleep(2.0)  # assignment and first fetches in flight
        w0, c0, l0 = system.wansim.stats(), system.cpu(), system.link_snapshot()
        poller.start()
        pp = producer_perf(system.home_bootstrap, n, args.rate, args)
        log(f"  {system.kind}: produced {pp['records']:,} at {pp['msg_s']:,.0f} msg/s; waiting for the consumers")
        results = {k: c.result(timeout) for k, c in cons.items()}
    finally:
        for c in cons.values():
            c.kill()
        poller.stop()
        poller.home.close()
        poller.mirror.close()
    w1, c1, l1 = system.wansim.stats(), system.cpu(), system.link_snapshot()
    rl = sorted(v[0] for _, v in poller.extra_samples)
    reported = {"samples": len(rl), "lag_seconds_p50": pct(rl, 0.5), "lag_seconds_p99": pct(rl, 0.99),
                "lag_seconds_max": rl[-1] if rl else None,
                "lag_records_max": max((v[1] for _, v in poller.extra_samples), default=None)} if rl else None
    return {"records": n, "rate": args.rate, "producer": pp, "e2e": results, "reported_lag": reported,
            "series": analyse_series(poller.samples, base_h, base_m, n), "wan": wan_summary(system, w0, w1, n),
            "cpu_s": cpu_delta(c0, c1, n), "dclink": link_delta(l0, l1, n), "link_after": l1,
            "loadavg": os.getloadavg()}


def keep_logs(system, dest: Path) -> None:
    for p in system.logs():
        rel = p.relative_to(system.work)
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        try:
            shutil.copy2(p, dest / rel)
        except OSError:
            pass
    log(f"  {system.kind}: logs and configs kept in {dest}")


def run_system(kind: str, work: Path, args) -> dict:
    system = {"chronik": ChronikSystem, "chronik-rpo": ChronikRpoSystem, "mm2": Mm2System}[kind](work, args)
    out: dict = {"label": system.label}
    home = mirror = None
    t0 = time.monotonic()
    try:
        system.start()
        out["start_s"] = time.monotonic() - t0
        log(f"{kind}: up in {out['start_s']:.1f}s (home {system.home_bootstrap}, mirror {system.mirror_bootstrap}, "
            f"wan-sim control {system.wansim.control})")
        rf, _ = rf_of(args.brokers)
        create_topic(system.home_bootstrap, TOPIC, args.partitions, rf,
                     configs=getattr(system, "topic_configs", None))
        system.after_topic_created(TOPIC)
        t1 = time.monotonic()
        wait_for(lambda: topic_ready(system.mirror_bootstrap, TOPIC, args.partitions), args.mirror_topic_timeout,
                 f"{TOPIC} to appear in the mirror region", interval=0.5, check=system.check_alive)
        out["mirror_topic_s"] = time.monotonic() - t1
        log(f"  {kind}: mirror topic ready {out['mirror_topic_s']:.1f}s after creation")
        home, mirror = Offsets(system.home_bootstrap, TOPIC, args.partitions), \
            Offsets(system.mirror_bootstrap, TOPIC, args.partitions)
        t1 = time.monotonic()
        out["warmup"] = producer_perf(system.home_bootstrap, args.warmup_records, -1, args)
        wait_caught_up(system, home, mirror, args.catch_up_timeout + 120, "warm-up")
        out["warmup_caught_up_s"] = time.monotonic() - t1
        log(f"  {kind}: warm-up of {args.warmup_records:,} records mirrored ({out['warmup_caught_up_s']:.1f}s)")
        out["describe"] = system.describe()
        if "max" in args.scenarios:
            log(f"  {kind}: max-throughput run, {args.records:,} records")
            out["max"] = scenario_max(system, home, mirror, args)
            s = out["max"]["series"]
            log(f"  {kind}: home {fmt(s.get('home_msg_s'))} msg/s, mirror {fmt(s.get('mirror_msg_s'))} msg/s "
                f"(ratio {fmt(s.get('ratio'), '.3f')}), catch-up {fmt(s.get('catch_up_s'), '.2f')}s, "
                f"WAN {out['max']['wan']['bytes_per_record']:.0f} B/record")
            wait_caught_up(system, home, mirror, args.catch_up_timeout, "after the max run")
            time.sleep(args.settle_seconds)
        if "rate" in args.scenarios:
            log(f"  {kind}: {args.rate:,} msg/s for {args.rate_seconds:.0f}s")
            out["rate"] = scenario_rate(system, home, mirror, args, system.work)
            e = out["rate"]["e2e"]
            log(f"  {kind}: mirror e2e p50 {fmt(e['mirror'].get('p50_ms'))} ms p99 {fmt(e['mirror'].get('p99_ms'))} ms; "
                f"home e2e p50 {fmt(e['home'].get('p50_ms'))} ms p99 {fmt(e['home'].get('p99_ms'))} ms; "
                f"WAN {out['rate']['wan']['bytes_per_record']:.0f} B/record")
        if args.keep_logs:
            keep_logs(system, args.failed_logs.with_name(args.failed_logs.name.replace("-logs", "-kept-logs")) / kind)
        return out
    except BaseException:
        if args.failed_logs:
            keep_logs(system, args.failed_logs / kind)
        raise
    finally:
        for o in (home, mirror):
            if o:
                o.close()
        t = time.monotonic()
        system.stop()
        log(f"  {kind}: stopped in {time.monotonic() - t:.1f}s")


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def fmt(v, spec: str = ",.0f") -> str:
    return "–" if v is None else format(v, spec)


def report(results: dict) -> str:
    a, m = results["args"], results["machine"]
    rtt = 2 * a["delay_ms"]
    lines = [f"**Command** `{results['command']}`", "",
             f"**Machine** {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Linux {m['kernel']}, {m['java']}, "
             f"Apache Kafka {m['kafka']}; Chronik {m['git']}; load average at start "
             f"{' '.join(m['loadavg_at_start'])}, at end {' '.join(m.get('loadavg_at_end', []))}", "",
             f"WAN: wan-sim delay {a['delay_ms']} ms each way (RTT {rtt:g} ms), jitter {a['jitter_ms']} ms, "
             f"loss {a['loss']} (UDP only), bandwidth {a['bandwidth_mbit'] or 'unlimited'} Mbit/s. "
             f"{a['brokers']} broker(s) per region, RF {rf_of(a['brokers'])[0]}, topic of {a['partitions']} "
             f"partition(s), {a['record_size']} B records, producer compression {a['compression']}; "
             f"MM2 profile {a['mm2_profile']}.", ""]
    systems = results.get("systems", {})
    if any("max" in r for r in systems.values()):
        lines += [f"Max throughput ({a['records']:,} records):", "",
                  "| system | producer msg/s | home msg/s (HW) | mirror msg/s (HW) | **mirror / home** | catch-up s "
                  "| offset lag p50 / p99 s | WAN B/record (data dir + reverse) | CPU-s per 100k (mirroring / all) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for kind, r in systems.items():
            if "max" not in r:
                continue
            x, s = r["max"], r["max"]["series"]
            ol = s.get("offset_lag_s", {})
            lines.append(
                f"| {r['label']} | {x['producer']['msg_s']:,.0f} | {fmt(s.get('home_msg_s'))} | "
                f"{fmt(s.get('mirror_msg_s'))} | **{fmt(s.get('ratio'), '.3f')}** | {fmt(s.get('catch_up_s'), '.2f')} | "
                f"{fmt(ol.get('p50'), '.2f')} / {fmt(ol.get('p99'), '.2f')} | {x['wan']['bytes_per_record']:,.0f} "
                f"({x['wan']['data_dir_bytes_per_record']:,.0f} + {x['wan']['reverse_bytes_per_record']:,.0f}) | "
                f"{x['cpu_s']['mirroring_per_100k']:.2f} / {x['cpu_s']['total_per_100k']:.2f} |")
        lines.append("")
    if any("rate" in r for r in systems.values()):
        lines += [f"Fixed rate {a['rate']:,} msg/s for {a['rate_seconds']:.0f} s (percentiles over records produced "
                  f"after the first {a['warmup_seconds']:.0f} s; target mirror p99 < RTT + 250 = {rtt + 250:g} ms):", "",
                  "| system | producer msg/s | **mirror e2e p50 / p99 / p99.9 / max ms** | home e2e p50 / p99 ms "
                  "| mirror records | WAN B/record | CPU-s per 100k (mirroring / all) |",
                  "|---|---|---|---|---|---|---|"]
        for kind, r in systems.items():
            if "rate" not in r:
                continue
            x = r["rate"]
            mi, ho = x["e2e"]["mirror"], x["e2e"]["home"]
            lines.append(
                f"| {r['label']} | {x['producer']['msg_s']:,.0f} | **{fmt(mi.get('p50_ms'))} / {fmt(mi.get('p99_ms'))} / "
                f"{fmt(mi.get('p999_ms'))} / {fmt(mi.get('max_ms'))}** | {fmt(ho.get('p50_ms'))} / {fmt(ho.get('p99_ms'))} | "
                f"{mi['received']:,}/{mi['expected']:,} | {x['wan']['bytes_per_record']:,.0f} | "
                f"{x['cpu_s']['mirroring_per_100k']:.2f} / {x['cpu_s']['total_per_100k']:.2f} |")
        lines.append("")
    for kind, r in systems.items():
        if "error" in r:
            lines.append(f"**{kind} failed**: {r['error']}")
    return "\n".join(lines)


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_consume":
        return consume_main(sys.argv[2:])
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=["chronik", "mm2", "both", "rpo"], default="both",
                    help="rpo: Chronik twice, plainly and with chronik.rpo.ms=5000 enforced on the topic")
    ap.add_argument("--scenarios", default="max,rate", help="comma list of max, rate")
    ap.add_argument("--records", type=int, default=200_000, help="records of the max-throughput run")
    ap.add_argument("--rate", type=int, default=5000, help="msg/s of the fixed-rate (lag) run")
    ap.add_argument("--rate-seconds", type=float, default=60.0, help="duration of the fixed-rate run")
    ap.add_argument("--warmup-seconds", type=float, default=10.0,
                    help="records produced in the first N seconds of the fixed-rate run are not in the percentiles")
    ap.add_argument("--warmup-records", type=int, default=20_000, help="records produced (and mirrored) first")
    ap.add_argument("--delay-ms", type=float, default=50.0, help="one-way delay, each direction (RTT = 2x)")
    ap.add_argument("--jitter-ms", type=float, default=0.0)
    ap.add_argument("--loss", type=float, default=0.0, help="UDP datagram loss probability (wan-sim: UDP only)")
    ap.add_argument("--bandwidth-mbit", type=float, default=0.0, help="per direction; 0 = unlimited")
    ap.add_argument("--brokers", type=int, default=3, choices=[1, 3], help="brokers per region, both systems")
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--compression", default="none", choices=["none", "gzip", "snappy", "lz4", "zstd"],
                    help="the producer's compression.type (both systems)")
    ap.add_argument("--mm2-profile", choices=sorted(MM2_PROFILES), default="stock")
    ap.add_argument("--settle-seconds", type=float, default=5.0)
    ap.add_argument("--catch-up-timeout", type=float, default=300.0)
    ap.add_argument("--mirror-topic-timeout", type=float, default=180.0)
    ap.add_argument("--chronik-bin", type=Path, default=default_chronik_bin())
    ap.add_argument("--chronik-start-timeout", type=float, default=120.0)
    ap.add_argument("--kafka-start-timeout", type=float, default=300.0)
    ap.add_argument("--keep-series", action="store_true", help="put the raw high-watermark samples in the JSON")
    ap.add_argument("--keep-logs", action="store_true", help="keep logs and configs of successful runs too")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    args.scenarios = [s for s in args.scenarios.split(",") if s]
    if set(args.scenarios) - {"max", "rate"}:
        ap.error("--scenarios is a comma list of max, rate")
    args.chronik_bin = args.chronik_bin.resolve()
    if not (args.chronik_bin.is_file() and os.access(args.chronik_bin, os.X_OK)):
        ap.error(f"chronik binary not found at {args.chronik_bin} (the wan-sim is in it, for both systems); "
                 "set CHRONIK_BIN or --chronik-bin")
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    json_path = args.json or Path(tempfile.gettempdir()) / f"chronik-dclink-bench-{started.replace(':', '')}.json"
    args.failed_logs = json_path.with_name(json_path.stem + "-logs")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    entry = os.environ.get("CHRONIK_BENCH_ENTRY", "bench/dclink.py")
    results: dict = {"command": " ".join([entry, *map(shlex.quote, sys.argv[1:])]), "started": started,
                     "machine": {**bc.machine_info(), "chronik_bin": binary_identity(args.chronik_bin)},
                     "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                     "systems": {}}
    kinds = {"both": ["chronik", "mm2"], "rpo": ["chronik", "chronik-rpo"]}.get(args.system, [args.system])
    status = 0
    try:
        with tempfile.TemporaryDirectory(prefix="chronik-dclink-bench-") as tmp:
            for kind in kinds:
                try:
                    results["systems"][kind] = run_system(kind, Path(tmp), args)
                except BenchError as e:
                    results["systems"][kind] = {"label": kind, "error": str(e)}
                    print(f"\nERROR ({kind}): {e}", file=sys.stderr, flush=True)
                    status = 2
                json_path.write_text(json.dumps(results, indent=2, default=str))
    except KeyboardInterrupt:
        results["error"] = "interrupted"
        status = 130
    finally:
        results["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        results["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        json_path.write_text(json.dumps(results, indent=2, default=str))
    print("\n" + report(results))
    print(f"results: {json_path}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
