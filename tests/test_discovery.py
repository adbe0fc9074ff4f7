"""DNS discovery of a region's brokers (`[cluster.discovery] mode = "dns"`), against a real DNS
server on loopback (Debian's dnsmasq) serving SRV records the way a Kubernetes headless Service
does (`chronik-<ordinal>` targets, ordinal + 1 = broker id):

- three brokers with no static peers find each other and form a region that replicates;
- a broker that comes back on another Raft port is followed once DNS says so (refresh);
- with DNS down, a broker falls back to its static `cluster.peers`; without any, it refuses to
  start and says why.
"""

from __future__ import annotations

import random
import socket
import struct
import subprocess
import time
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster import http_json
from conftest import _require_chronik_binary
from harness import LOOPBACK, Chronik, free_port, stop_all, wait_until
from kclient import unique_topic

pytestmark = pytest.mark.chronik

SRV = "_raft._tcp.chronik.test"
IDS = (1, 2, 3)


class Dns:
    """dnsmasq on 127.0.0.1, answering only the records given (restart() to change them)."""

    def __init__(self, base: Path):
        self.port = free_port()
        self.base = base
        self.proc: subprocess.Popen | None = None

    def serve(self, raft_ports: dict[int, int]) -> None:
        self.stop()
        args = ["dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts", "--no-daemon",
                f"--port={self.port}", f"--listen-address={LOOPBACK}", "--bind-interfaces", "--user=root",
                f"--pid-file={self.base / 'dnsmasq.pid'}", "--log-facility=-"]
        for i, port in raft_ports.items():
            host = f"chronik-{i - 1}.chronik.test"
            args += [f"--srv-host={SRV},{host},{port}", f"--host-record={host},{LOOPBACK}"]
        self.proc = subprocess.Popen(args, stdout=open(self.base / "dnsmasq.log", "a"), stderr=subprocess.STDOUT)
        wait_until(lambda: self.srv_answers() == len(raft_ports), 10, what="dnsmasq answering")

    def srv_answers(self) -> int:
        """How many answers one SRV query for SRV gets (a bare RFC 1035 query)."""
        q = struct.pack(">HHHHHH", random.randint(0, 65535), 0x0100, 1, 0, 0, 0)
        q += b"".join(bytes([len(label)]) + label.encode() for label in SRV.split(".")) + b"\0"
        q += struct.pack(">HH", 33, 1)  # SRV, IN
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.settimeout(1)
            s.sendto(q, (LOOPBACK, self.port))
            data, _ = s.recvfrom(4096)
        return struct.unpack(">H", data[6:8])[0]

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(10)
        self.proc = None


def broker(base: Path, i: int, dns_port: int, raft_port: int, static_peers: dict[int, int] | None = None,
           wait_ms: int = 60000) -> Chronik:
    peers = "".join(f'\n[[cluster.peers]]\nid = {j}\nraft = "{LOOPBACK}:{p}"\n'
                    for j, p in (static_peers or {}).items())
    toml = ("[cluster]\nheartbeat_interval_ms = 250\nelection_timeout_min_ms = 1000\n"
            "election_timeout_max_ms = 2000\n\n[cluster.discovery]\nmode = \"dns\"\n"
            f'srv = "{SRV}"\nbrokers = {len(IDS)}\nservers = ["{LOOPBACK}:{dns_port}"]\n'
            f"refresh_ms = 1000\nstartup_wait_ms = {wait_ms}\n{peers}")
    return Chronik(None, base / f"node{i}", host=LOOPBACK, raft_port=raft_port, node_id=i,
                   binary=_require_chronik_binary(), extra_toml=toml, durability="replicated")


def region_whole(nodes: dict[int, Chronik]) -> bool:
    for n in nodes.values():
        status, info = http_json(n.admin_url + "/v1/cluster", 2)
        if status != 200 or sorted(b["id"] for b in info["brokers"]) != list(IDS):
            return False
    return True


def roundtrip(nodes: dict[int, Chronik], n: int = 50) -> None:
    """Creates a topic replicated on all three brokers, writes n records with acks=all and
    min.insync.replicas=3 (so every broker took them), and reads them all back."""
    from confluent_kafka.admin import AdminClient, NewTopic
    bs = ",".join(x.bootstrap for x in nodes.values())
    topic = unique_topic("disc")
    admin = AdminClient({"bootstrap.servers": bs})
    admin.create_topics([NewTopic(topic, 1, 3, config={"min.insync.replicas": "3"})])[topic].result(30)
    p = Producer({"bootstrap.servers": bs, "acks": "all", "message.timeout.ms": 60000})
    want = [f"{topic}-{i}".encode() for i in range(n)]
    for v in want:
        p.produce(topic, v)
    assert p.flush(70) == 0
    c = Consumer({"bootstrap.servers": bs, "group.id": topic, "enable.auto.commit": False})
    try:
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < n and time.monotonic() < deadline:
            got += [m.value() for m in c.consume(100, 0.5) if m.error() is None]
    finally:
        c.close()
    assert got == want


def test_brokers_find_each_other_in_dns_and_follow_a_move(tmp_path):
    dns = Dns(tmp_path)
    raft = {i: free_port() for i in IDS}
    dns.serve(raft)
    nodes = {i: broker(tmp_path, i, dns.port, raft[i]) for i in IDS}
    try:
        for n in nodes.values():
            n.launch()
        for n in nodes.values():
            n.wait_ready(90)
        wait_until(lambda: region_whole(nodes), 60, what="every broker lists all three")
        roundtrip(nodes)

        # Broker 3 comes back listening elsewhere; only DNS tells the others.
        nodes[3].stop()
        raft[3] = free_port()
        nodes[3] = broker(tmp_path, 3, dns.port, raft[3])
        dns.serve(raft)
        nodes[3].start(90)
        wait_until(lambda: region_whole(nodes), 60, what="the region whole with broker 3 at its new port")
        roundtrip(nodes)
    finally:
        stop_all(list(nodes.values()))
        dns.stop()


def test_without_dns_static_peers_are_the_fallback_and_none_is_an_error(tmp_path):
    dead_dns = free_port()  # nothing answers there
    raft = {i: free_port() for i in IDS}
    nodes = {i: broker(tmp_path, i, dead_dns, raft[i], static_peers={j: raft[j] for j in IDS if j != i},
                       wait_ms=3000) for i in IDS}
    try:
        for n in nodes.values():
            n.launch()
        for n in nodes.values():
            n.wait_ready(90)
        wait_until(lambda: region_whole(nodes), 60, what="the region formed from the static peers")
        assert "using the static cluster.peers" in nodes[1].stdout_path.read_text()
    finally:
        stop_all(list(nodes.values()))
    lone = broker(tmp_path / "lone", 1, dead_dns, free_port(), wait_ms=2000)
    lone.data_dir.mkdir(parents=True, exist_ok=True)
    lone.config_path.write_text(lone.toml())
    p = subprocess.run([str(lone.binary), "broker", "--config", str(lone.config_path)], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode != 0 and "cluster.discovery" in p.stderr and "cluster.peers is empty" in p.stderr, p.stderr
