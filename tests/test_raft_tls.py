"""Mutual TLS on the Raft peer transport (`[cluster.tls]`), Chronik only.

Three brokers, each with a `chronik certs broker --raft-id` certificate naming it
(broker-<id>.us-east.raft.chronik), form a region and replicate through the usual fault
mesh. At a broker's Raft port, a client without a certificate, with a certificate of another
CA, or with a real broker's certificate claiming another broker's id in its Hello, is refused;
the region keeps serving and `chronik_raft_peer_refused_total` counts each refusal.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import time

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from cluster import ChronikCluster, create_topic
from conftest import _require_chronik_binary
from harness import wait_until
from kclient import unique_topic
from regions import certs_init, prometheus_value

pytestmark = pytest.mark.chronik

REGION = "us-east"


def issue(binary, d, name: str, raft_id: int | None = None) -> tuple[str, str]:
    args = [str(binary), "certs", "broker", "--dir", str(d), "--name", name]
    if raft_id is not None:
        args += ["--raft-id", str(raft_id), "--region", REGION]
    p = subprocess.run(args, capture_output=True, text=True, timeout=30)
    assert p.returncode == 0, p.stderr
    return str(d / f"{name}.pem"), str(d / f"{name}.key")


@pytest.fixture(scope="module")
def secured(tmp_path_factory):
    binary = _require_chronik_binary()
    base = tmp_path_factory.mktemp("raft-tls")
    ca_dir = certs_init(binary, base / "certs", [REGION])
    foreign_dir = certs_init(binary, base / "foreign", [REGION])
    c = ChronikCluster(3, base / "region", binary=binary)
    for i, node in c.nodes.items():
        cert, key = issue(binary, ca_dir, f"broker-{i}", raft_id=i)
        node.extra_toml = node.extra_toml.replace(
            "[cluster]\n", f'[cluster]\ntls = {{ cert = "{cert}", key = "{key}", ca = "{ca_dir / "ca.pem"}" }}\n', 1)
    c.start()
    yield c, ca_dir, foreign_dir, binary
    c.stop()


def refusals(node, reason: str) -> float:
    return prometheus_value(node.metrics(), "chronik_raft_peer_refused_total", reason=reason) or 0.0


def hello(broker_id: int) -> bytes:
    """The transport's Hello frame: prost Frame{kind: HELLO (1), group: id}, length-prefixed."""
    body = bytes([0x18, 0x01, 0x20]) + varint(broker_id)
    return len(body).to_bytes(4, "big") + body


def varint(v: int) -> bytes:
    out = b""
    while True:
        b = v & 0x7F
        v >>= 7
        out += bytes([b | (0x80 if v else 0)])
        if not v:
            return out


def closed_by_server(s, timeout: float = 10.0) -> bool:
    """Whether the server closes the connection (after at most a TLS alert) within `timeout`."""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            s.settimeout(max(0.1, deadline - time.monotonic()))
            data = s.recv(4096)
            if data == b"":
                return True
            if len(data) > 64:
                return False  # a real answer, not an alert
    except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
        return True
    except socket.timeout:
        return False
    return False


def test_the_region_replicates_over_mutual_tls(secured):
    c, *_ = secured
    topic = unique_topic("rafttls")
    create_topic(c, topic, partitions=2, replication_factor=3)
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all", "enable.idempotence": True})
    want = [f"v{i}".encode() for i in range(200)]
    for v in want:
        p.produce(topic, v, partition=0)
    assert p.flush(30) == 0
    leader = c.leader_of(topic, 0)
    wait_until(lambda: all((c.partition_state(i, topic, 0) or {}).get("high_watermark") == len(want)
                           for i in c.ids), 30, what="every replica holds every record")
    cons = Consumer({"bootstrap.servers": c.bootstrap, "group.id": topic, "enable.auto.commit": False})
    try:
        cons.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        deadline = time.monotonic() + 30
        while len(got) < len(want) and time.monotonic() < deadline:
            got += [m.value() for m in cons.consume(100, 0.5) if m.error() is None]
    finally:
        cons.close()
    assert got == want, f"leader {leader}"
    assert all(refusals(c.nodes[i], "identity") == 0 for i in c.ids)


def test_strangers_at_the_raft_port_are_refused(secured):
    c, ca_dir, foreign_dir, binary = secured
    node = c.nodes[1]
    addr = (node.host, node.raft_port)
    before = refusals(node, "certificate")

    # No TLS at all: the Hello is not a TLS ClientHello. (Read as a TLS record header it
    # announces 1304 bytes; the padding completes it, so rustls judges it at once.)
    with socket.create_connection(addr, timeout=5) as s:
        s.sendall(hello(2) + bytes(1400))
        assert closed_by_server(s)

    def tls_client(cert: tuple[str, str] | None, ca) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.load_verify_locations(str(ca))
        if cert:
            ctx.load_cert_chain(*cert)
        return ctx

    server_name = f"broker-1.{REGION}.raft.chronik"
    # TLS without a client certificate, then with one of another CA (that CA's broker-2).
    foreign = issue(binary, foreign_dir, "broker-2", raft_id=2)
    for cert in (None, foreign):
        with socket.create_connection(addr, timeout=5) as raw:
            try:
                with tls_client(cert, ca_dir / "ca.pem").wrap_socket(raw, server_hostname=server_name) as s:
                    s.sendall(hello(2))
                    assert closed_by_server(s), cert
            except (ssl.SSLError, ConnectionResetError, BrokenPipeError):
                pass  # refused during the handshake itself
    wait_until(lambda: refusals(node, "certificate") >= before + 3, 10, what="three certificate refusals")

    # A real certificate of the region's CA, for broker 2, claiming to be broker 3.
    impostor = issue(binary, ca_dir, "impostor-2", raft_id=2)
    identity_before = refusals(node, "identity")
    with socket.create_connection(addr, timeout=5) as raw:
        with tls_client(impostor, ca_dir / "ca.pem").wrap_socket(raw, server_hostname=server_name) as s:
            s.sendall(hello(3))
            assert closed_by_server(s)
    wait_until(lambda: refusals(node, "identity") == identity_before + 1, 10, what="the identity refusal")

    # The region still serves writes through all of it.
    topic = unique_topic("rafttls-after")
    create_topic(c, topic, partitions=1, replication_factor=3)
    p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
    p.produce(topic, b"still-here")
    assert p.flush(30) == 0


def test_a_broker_without_its_name_in_the_certificate_cannot_join(tmp_path):
    """A certificate of the right CA that does not name broker 2 (no --raft-id): broker 1
    refuses broker 2's connection and broker 2 refuses broker 1's, so no quorum forms."""
    binary = _require_chronik_binary()
    ca_dir = certs_init(binary, tmp_path / "certs", [REGION])
    c = ChronikCluster(2, tmp_path / "region", binary=binary)
    for i, node in c.nodes.items():
        cert, key = issue(binary, ca_dir, f"b{i}", raft_id=i if i == 1 else None)
        node.extra_toml = node.extra_toml.replace(
            "[cluster]\n", f'[cluster]\ntls = {{ cert = "{cert}", key = "{key}", ca = "{ca_dir / "ca.pem"}" }}\n', 1)
    try:
        for node in c.nodes.values():
            node.launch()
        # Broker 1 dials broker 2 (the lower id dials) and refuses its certificate.
        wait_until(lambda: refusals_or_none(c.nodes[1]) >= 1, 30,
                   what="broker 1 refuses broker 2's certificate")
        assert not c.nodes[1].ready() and not c.nodes[2].ready()
    finally:
        c.stop()


def refusals_or_none(node) -> float:
    try:
        return refusals(node, "certificate")
    except (OSError, RuntimeError):
        return 0.0
