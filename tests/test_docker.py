"""The container image (deploy/docker) and the Compose deployment (deploy/compose), built
from the chronik binary under test and run with Docker:

- the image: built by deploy/docker/build.sh on the base image (deploy/docker/base-image.sh
  makes debian:bookworm-slim with debootstrap when no registry is reachable); `docker
  inspect` shows a non-root user, a HEALTHCHECK and /var/lib/chronik as a volume;
- one broker container (host network, its config on free ports): Docker reports it
  `healthy` through the image's HEALTHCHECK, it runs as that user, every record produced
  through it is read back to the high watermark, and `docker stop` (SIGTERM) ends it with
  status 0;
- deploy/compose/docker-compose.yml, under a project name of its own and the image under
  test: every broker and dc-link ready (their /health/ready, and Docker's health status);
  a topic created in us-east with replication factor 3 has three replicas per partition;
  every record produced there is in eu-west's mirror at its offset, read back to the
  mirror's high watermark and compared field by field with us-east's log and with what
  was acknowledged; Prometheus (the shipped deploy/prometheus config and rules) has all
  8 targets up and the alert rules loaded; `down` keeps every named volume, and `up`
  again on them serves the same records in both regions with the same dev CA; `down -v`
  removes the volumes (and runs again in a finally block).

The Compose deployment listens on fixed ports (deploy/compose/README.md), all below 20000
where no other test picks ports; the test fails at once if one is taken. Needs docker,
docker-compose (or `docker compose`), and for the first base image debootstrap, root and
the Debian mirror (tests/setup.sh installs them and starts dockerd). Images are kept:
chronik:test (rebuilt each run, cached layers), debian:bookworm-slim and
chronik-prometheus:latest (built by Compose the first time, from Debian's package).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import subprocess
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka.admin import NewTopic

from conftest import _require_chronik_binary
from harness import LOOPBACK, free_port, http_get, wait_until
from kclient import (admin, consume, create_topic, forget_clients, future_error, produce_all, unique_topic, wait_topic,
                     watermarks)

# The base image can take a few minutes the first time (debootstrap); pytest-timeout
# counts fixture setup in the first test's time.
pytestmark = [pytest.mark.chronik, pytest.mark.timeout(900)]

REPO = Path(__file__).resolve().parent.parent
DOCKER_DIR = REPO / "deploy" / "docker"
COMPOSE_FILE = REPO / "deploy" / "compose" / "docker-compose.yml"
IMAGE = os.environ.get("CHRONIK_TEST_IMAGE", "chronik:test")
US, EU = "us-east", "eu-west"

# What deploy/compose/ listens on (its README lists them).
BROKERS = {US: {1: 19092, 2: 19093, 3: 19094}, EU: {101: 19192, 102: 19193, 103: 19194}}
ADMIN_OFFSET, RAFT_OFFSET = 400, 50
DCLINK = {US: (19182, 19183), EU: (19282, 19283)}  # (QUIC/UDP, admin/TCP)
PROMETHEUS = 19090
VOLUMES = ["certs", "prometheus-data"] + [f"{r}-broker-{i}" for r in BROKERS for i in BROKERS[r]]


def run(argv, timeout: float = 120, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    p = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, argv))} exited {p.returncode}:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    return p


def docker(*args, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess:
    return run(["docker", *args], timeout=timeout, check=check)


def bootstrap(region: str) -> str:
    return ",".join(f"{LOOPBACK}:{p}" for p in BROKERS[region].values())


@pytest.fixture(scope="module")
def image() -> str:
    """The image under test, built from the chronik binary under test (and the base image
    first, if it is missing)."""
    binary = _require_chronik_binary()
    if shutil.which("docker") is None or run(["docker", "info"], timeout=30, check=False).returncode != 0:
        pytest.fail("docker is not installed or dockerd is not running (tests/setup.sh installs docker.io "
                    "and starts dockerd)", pytrace=False)
    if docker("image", "inspect", "debian:bookworm-slim", check=False).returncode != 0:
        sudo = ["sudo", "-n"] if os.geteuid() != 0 and shutil.which("sudo") else []
        t0 = time.monotonic()
        run([*sudo, str(DOCKER_DIR / "base-image.sh")], timeout=840)
        print(f"base image built in {time.monotonic() - t0:.0f} s")
    run([str(DOCKER_DIR / "build.sh"), IMAGE, str(binary)], timeout=300)
    return IMAGE


# -- the image -------------------------------------------------------------------------


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def test_image_runs_as_non_root_with_healthcheck_and_data_volume(image, tmp_path):
    cfg = json.loads(docker("image", "inspect", image).stdout)[0]["Config"]
    user = cfg.get("User") or ""
    assert user and user.split(":")[0] not in ("root", "0"), f"the image runs as root: User={user!r}"
    uid = docker("run", "--rm", "--network", "host", "--entrypoint", "id", image, "-u").stdout.strip()
    assert uid != "0", f"the image's user {user!r} is uid 0"
    hc = cfg.get("Healthcheck") or {}
    assert hc.get("Test") and hc["Test"][0] != "NONE", f"no HEALTHCHECK: {hc!r}"
    assert "health" in hc["Test"] and "/etc/chronik/broker.toml" in hc["Test"], hc
    assert "/var/lib/chronik" in (cfg.get("Volumes") or {}), f"volumes: {cfg.get('Volumes')!r}"
    assert cfg.get("Entrypoint") == ["chronik"], cfg.get("Entrypoint")
    assert cfg.get("Cmd") == ["broker", "--config", "/etc/chronik/broker.toml"], cfg.get("Cmd")
    # The binary in it is the one under test (as build.sh copies it: debug info stripped).
    binary = _require_chronik_binary()
    candidates = {sha256_file(binary)}
    if shutil.which("strip"):
        run(["strip", "--strip-debug", "-o", str(tmp_path / "chronik"), str(binary)])
        candidates.add(sha256_file(tmp_path / "chronik"))
    got = docker("run", "--rm", "--network", "host", "--entrypoint", "sha256sum", image,
                 "/usr/local/bin/chronik").stdout.split()[0]
    assert got in candidates, f"the image's chronik ({got}) is not the binary under test ({binary})"


def container_state(name: str) -> dict:
    return json.loads(docker("inspect", "--format", "{{json .State}}", name).stdout)


def logs_tail(name: str, n: int = 60) -> str:
    p = docker("logs", "--tail", str(n), name, check=False)
    return p.stdout + p.stderr


def wait_healthy(names: list[str], timeout: float) -> None:
    """Until Docker reports every container healthy; one that stopped or restarted fails at once."""
    deadline = time.monotonic() + timeout
    while True:
        states = {n: container_state(n) for n in names}
        for n, st in states.items():
            if not st["Running"] or st["Restarting"]:
                raise AssertionError(f"{n} is not running (exit {st['ExitCode']}):\n{logs_tail(n)}")
        unhealthy = {n: st["Health"] for n, st in states.items() if st["Health"]["Status"] != "healthy"}
        if not unhealthy:
            return
        if time.monotonic() >= deadline:
            raise AssertionError(f"not healthy after {timeout:.0f} s: " + "\n".join(
                f"{n}: {h['Status']}, last checks {h['Log'][-2:]}\n{logs_tail(n, 30)}" for n, h in unhealthy.items()))
        time.sleep(0.5)


def produce_acked(bs: str, topic: str, partitions: int, n: int) -> tuple[list, dict]:
    """Produce n records (acks=all) round-robin over the partitions; return the delivery
    reports and {partition: [(offset, key, value, headers)]} acknowledged."""
    msgs = [{"key": b"k%d" % i, "value": b"v%d-" % i + os.urandom(8).hex().encode(), "partition": i % partitions,
             "headers": [("seq", str(i).encode())]} for i in range(n)]
    reports = produce_all(bs, topic, msgs, acks="all", **{"enable.idempotence": True})
    errors = [(i, r[0]) for i, r in enumerate(reports) if r[0] is not None]
    assert not errors, f"produce errors: {errors[:5]}"
    acked: dict[int, list] = {p: [] for p in range(partitions)}
    for m, (_, p, off, _ts) in zip(msgs, reports):
        acked[p].append((off, m["key"], m["value"], m["headers"]))
    for p, rows in acked.items():
        assert [r[0] for r in rows] == list(range(len(rows))), f"partition {p}: acked offsets {[r[0] for r in rows][:20]}"
    return reports, acked


def read_partition(bs: str, topic: str, p: int) -> list[tuple]:
    """Every record of the partition, from offset 0 to its high watermark:
    (offset, key, value, headers, timestamp)."""
    low, high = watermarks(bs, topic, p)
    assert low == 0, f"{topic}[{p}] at {bs}: log start {low}"
    got = consume(bs, topic, p, start=0, count=high, timeout=60) if high else []
    return [(m.offset(), m.key(), m.value(), [(k, bytes(v)) for k, v in (m.headers() or [])], m.timestamp())
            for m in got]


def assert_same_as_acked(rows: list[tuple], acked: list[tuple], where: str) -> None:
    assert len(rows) == len(acked), f"{where}: {len(rows)} records to the high watermark, {len(acked)} acknowledged"
    for got, want in zip(rows, acked):
        assert got[:4] == want, f"{where}: at offset {want[0]} read {got[:4]!r}, acknowledged {want!r}"


def test_broker_container_healthy_serves_and_stops_on_sigterm(image, tmp_path):
    kafka, admin_port = free_port(), free_port()
    conf = tmp_path / "broker.toml"
    conf.write_text(f"""node_id = 1
region = "us-east"
data_dir = "/var/lib/chronik"

[listeners]
kafka = "{LOOPBACK}:{kafka}"
admin = "{LOOPBACK}:{admin_port}"
""")
    conf.chmod(0o644)
    name = f"chronik-test-{uuid.uuid4().hex[:8]}"
    docker("run", "-d", "--name", name, "--network", "host",
           "-v", f"{conf}:/etc/chronik/broker.toml:ro", image)
    try:
        wait_healthy([name], 90)
        uid = docker("exec", name, "id", "-u").stdout.strip()
        assert uid != "0", "the broker runs as root"
        status, body = http_get(f"http://{LOOPBACK}:{admin_port}/health/ready")
        assert status == 200, (status, body)

        bs = f"{LOOPBACK}:{kafka}"
        topic = unique_topic("docker")
        create_topic(bs, topic, partitions=2)
        _, acked = produce_acked(bs, topic, 2, 200)
        for p in (0, 1):
            assert_same_as_acked(read_partition(bs, topic, p), acked[p], f"{topic}[{p}]")

        forget_clients(bs)
        t0 = time.monotonic()
        docker("stop", "--time", "30", name, timeout=60)
        took = time.monotonic() - t0
        st = container_state(name)
        assert st["ExitCode"] == 0 and took < 25, \
            f"docker stop: exit {st['ExitCode']} after {took:.1f} s (SIGTERM not handled?)\n{logs_tail(name)}"
    finally:
        docker("rm", "-f", "-v", name, check=False)


# -- the Compose deployment ------------------------------------------------------------


def compose_cmd() -> list[str]:
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    if run(["docker", "compose", "version"], check=False).returncode == 0:
        return ["docker", "compose"]
    pytest.fail("neither docker-compose nor `docker compose` is installed (tests/setup.sh installs docker-compose)",
                pytrace=False)


class Compose:
    def __init__(self, image: str) -> None:
        self.project = f"chronik-test-{uuid.uuid4().hex[:8]}"
        self.cmd = [*compose_cmd(), "-p", self.project, "-f", str(COMPOSE_FILE)]
        self.env = {**os.environ, "CHRONIK_IMAGE": image}

    def __call__(self, *args, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
        return run([*self.cmd, *args], timeout=timeout, check=check, env=self.env)

    def containers(self) -> dict[str, str]:
        """{service: container name} of the project's containers, stopped ones too."""
        out = docker("ps", "-a", "--filter", f"label=com.docker.compose.project={self.project}",
                     "--format", '{{.Label "com.docker.compose.service"}} {{.Names}}').stdout
        return dict(line.split() for line in out.splitlines() if line.strip())

    def volumes(self) -> set[str]:
        out = docker("volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={self.project}").stdout
        return set(out.split())

    def diagnostics(self) -> str:
        ps = self("ps", check=False, timeout=60)
        logs = self("logs", "--tail", "40", "--no-color", check=False, timeout=60)
        return f"{ps.stdout}\n{logs.stdout[-20000:]}"


def ports_in_use() -> list[str]:
    taken = []
    tcp = [p for r in BROKERS for k in BROKERS[r].values() for p in (k, k + ADMIN_OFFSET, k + RAFT_OFFSET)]
    tcp += [a for _, a in DCLINK.values()] + [PROMETHEUS]
    for kind, ports in ((socket.SOCK_STREAM, tcp), (socket.SOCK_DGRAM, [q for q, _ in DCLINK.values()])):
        for port in ports:
            with socket.socket(socket.AF_INET, kind) as s:
                # As the servers do: a port whose old connections linger in TIME_WAIT is free.
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                try:
                    s.bind((LOOPBACK, port))
                except OSError:
                    taken.append(f"{port}/{'tcp' if kind == socket.SOCK_STREAM else 'udp'}")
    return taken


def ready(admin_addr: str) -> bool:
    status, _ = http_get(f"http://{admin_addr}/health/ready", timeout=2)
    return status == 200


def wait_deployment_ready(compose: Compose, timeout: float) -> None:
    """Every broker and dc-link answers /health/ready, and Docker reports each healthy."""
    admins = {f"{r}-broker-{i}": f"{LOOPBACK}:{k + ADMIN_OFFSET}" for r in BROKERS for i, k in BROKERS[r].items()}
    admins |= {f"{r}-dc-link": f"{LOOPBACK}:{a}" for r, (_, a) in DCLINK.items()}
    deadline = time.monotonic() + timeout
    wait_until(lambda: all(ready(a) for a in admins.values()), timeout, interval=0.5,
               what="every broker and dc-link ready: " + ", ".join(admins))
    names = compose.containers()
    missing = set(admins) - set(names)
    assert not missing, f"no container for {missing}: {names}"
    wait_healthy([names[s] for s in admins], max(10.0, deadline - time.monotonic()))
    certs = container_state(names["chronik-certs"])
    assert not certs["Running"] and certs["ExitCode"] == 0, f"chronik-certs: {certs}"


def read_ca(project: str, image: str) -> str:
    return docker("run", "--rm", "--network", "host", "-v", f"{project}_certs:/c:ro", "--entrypoint", "cat",
                  image, "/c/ca.pem").stdout


def prometheus_targets() -> list[dict]:
    status, body = http_get(f"http://{LOOPBACK}:{PROMETHEUS}/api/v1/targets", timeout=5)
    assert status == 200, (status, body)
    return json.loads(body)["data"]["activeTargets"]


def test_compose_two_regions_mirror_every_record_and_keep_their_volumes(image):
    taken = ports_in_use()
    if taken:
        pytest.fail(f"deploy/compose's ports are in use: {taken} (another Compose deployment up? `docker ps`)",
                    pytrace=False)
    compose = Compose(image)
    partitions, n = 3, 600
    try:
        t0 = time.monotonic()
        compose("up", "-d", timeout=600)
        wait_deployment_ready(compose, 180)
        print(f"compose up and ready in {time.monotonic() - t0:.0f} s")

        # A topic homed in us-east, three replicas per partition (each region one Raft group).
        us, eu = bootstrap(US), bootstrap(EU)
        topic = unique_topic("compose")
        err = future_error(admin(us).create_topics([NewTopic(topic, partitions, 3)], operation_timeout=60)[topic], 60)
        assert err is None, f"create {topic} RF 3 in us-east: {err}"
        wait_topic(us, topic, partitions, timeout=60)
        md = admin(us).list_topics(topic, timeout=10).topics[topic].partitions
        assert {p: sorted(md[p].replicas) for p in md} == {p: [1, 2, 3] for p in range(partitions)}, \
            {p: md[p].replicas for p in md}

        _, acked = produce_acked(us, topic, partitions, n)
        home = {p: read_partition(us, topic, p) for p in range(partitions)}
        for p in range(partitions):
            assert_same_as_acked(home[p], acked[p], f"us-east {topic}[{p}]")

        # eu-west's mirror: the same records at the same offsets, to its high watermark.
        wait_topic(eu, topic, partitions, timeout=90)
        for p in range(partitions):
            want = len(acked[p])
            wait_until(lambda: watermarks(eu, topic, p)[1] >= want, 90, interval=0.5,
                       what=f"eu-west's mirror of {topic}[{p}] to reach {want}")
        mirror = {p: read_partition(eu, topic, p) for p in range(partitions)}
        for p in range(partitions):
            assert_same_as_acked(mirror[p], acked[p], f"eu-west mirror {topic}[{p}]")
            assert mirror[p] == home[p], f"{topic}[{p}]: eu-west's mirror differs from us-east's log (timestamps?)"

        # Prometheus: the shipped config with this deployment's target files, every target up.
        expected = {f"http://{LOOPBACK}:{k + ADMIN_OFFSET}/metrics" for r in BROKERS for k in BROKERS[r].values()}
        expected |= {f"http://{LOOPBACK}:{a}/metrics" for _, a in DCLINK.values()}

        def all_up():
            targets = prometheus_targets()
            return {t["scrapeUrl"] for t in targets} == expected and all(t["health"] == "up" for t in targets)

        try:
            wait_until(all_up, 90, interval=1, what="Prometheus to scrape all 8 targets")
        except TimeoutError as e:
            raise AssertionError(f"{e}: {[(t['scrapeUrl'], t['health'], t['lastError']) for t in prometheus_targets()]}")
        jobs = {(t["labels"]["job"], t["labels"]["region"]) for t in prometheus_targets()}
        assert jobs == {(j, r) for j in ("chronik-broker", "chronik-dc-link") for r in (US, EU)}, jobs
        status, body = http_get(f"http://{LOOPBACK}:{PROMETHEUS}/api/v1/rules", timeout=5)
        assert status == 200 and json.loads(body)["data"]["groups"], f"no alert rules loaded: {body[:500]}"

        # `down` keeps the named volumes; `up` on them serves the same records with the same CA.
        ca = read_ca(compose.project, image)
        forget_clients(us), forget_clients(eu)
        compose("down", timeout=300)
        assert not compose.containers(), f"containers left after down: {compose.containers()}"
        want_volumes = {f"{compose.project}_{v}" for v in VOLUMES}
        assert compose.volumes() == want_volumes, f"after down: {sorted(compose.volumes())}, want {sorted(want_volumes)}"

        t0 = time.monotonic()
        compose("up", "-d", timeout=300)
        wait_deployment_ready(compose, 180)
        print(f"compose up again and ready in {time.monotonic() - t0:.0f} s")
        assert read_ca(compose.project, image) == ca, "the dev CA was re-created although it was in the certs volume"
        wait_topic(us, topic, partitions, timeout=60)
        wait_topic(eu, topic, partitions, timeout=60)
        for p in range(partitions):
            assert read_partition(us, topic, p) == home[p], f"us-east {topic}[{p}] changed across down/up"
            assert read_partition(eu, topic, p) == home[p], f"eu-west {topic}[{p}] changed across down/up"

        forget_clients(us), forget_clients(eu)
        compose("down", "-v", timeout=300)
        assert not compose.volumes(), f"volumes left after down -v: {sorted(compose.volumes())}"
    except BaseException:
        print(compose.diagnostics())
        raise
    finally:
        compose("down", "-v", "--remove-orphans", timeout=300, check=False)
