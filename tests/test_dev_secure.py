"""`chronik dev --secure`, driven as a user would: two regions of two brokers, then Kafka's
tools and librdkafka connect with the properties files dev.json names."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import stat
import subprocess
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

import harness
from kclient import unique_topic
from secure import first_failure, kafka_acls

pytestmark = pytest.mark.chronik

REGIONS, NODES = 2, 2


def _free_base() -> int:
    """A base port whose every derived port (Kafka, SASL_SSL +20, Raft +50, dc-link +90/+91,
    admin +4000, per region +100) is free."""
    for _ in range(200):
        base = random.randint(20000, 26000)
        ports = [base + r * 100 + off for r in range(REGIONS)
                 for off in [*range(NODES), *(20 + n for n in range(NODES)), *(50 + n for n in range(NODES)),
                             90, 91, *(4000 + n for n in range(NODES))]]
        socks = []
        try:
            for p in ports:
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", p))
            return base
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def properties(path: str) -> dict:
    out = {}
    for line in open(path).read().splitlines():
        if line and not line.startswith("#"):
            k, v = line.split("=", 1)
            out[k] = v
    return out


@pytest.fixture(scope="module")
def dev(tmp_path_factory):
    data = tmp_path_factory.mktemp("dev-secure") / "dev"
    proc = subprocess.Popen(
        [str(harness.chronik_bin()), "dev", "--secure", "--data-dir", str(data), "--base-port", str(_free_base()),
         "--regions", str(REGIONS), "--nodes", str(NODES), "--ready-timeout", "90"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)

    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"chronik dev exited with {proc.returncode}: {proc.stdout.read()}")
        path = data / "dev.json"
        return path.exists() and json.loads(path.read_text())

    try:
        yield harness.wait_until(ready, timeout=150, what="dev.json")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


def test_dev_json_names_the_secrets_and_they_are_private(dev):
    s = dev["secure"]
    assert s["user"] == "admin"
    for key in ("password_file", "ca", "java_properties", "librdkafka_properties"):
        assert os.path.isabs(s[key]) and os.path.isfile(s[key]), key
    assert stat.S_IMODE(os.stat(s["password_file"]).st_mode) == 0o600
    for r in dev["regions"]:
        assert len(r["sasl_ssl_bootstrap"].split(",")) == NODES
        assert stat.S_IMODE(os.stat(r["admin_token_file"]).st_mode) == 0o600


def test_librdkafka_writes_in_one_region_and_reads_the_mirror_in_the_other(dev):
    conf = properties(dev["secure"]["librdkafka_properties"])
    us, eu = dev["regions"]
    topic = unique_topic("devsec")
    p = Producer({**conf, "bootstrap.servers": us["sasl_ssl_bootstrap"], "acks": "all", "log_level": 0})
    want = [f"v{i}".encode() for i in range(30)]
    for v in want:
        p.produce(topic, v, partition=0)
    assert p.flush(60) == 0

    def mirrored():
        c = Consumer({**conf, "bootstrap.servers": eu["sasl_ssl_bootstrap"], "group.id": topic,
                      "enable.auto.commit": False, "log_level": 0})
        try:
            _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
            if high < len(want):
                return False
            c.assign([TopicPartition(topic, 0, 0)])
            got: list[bytes] = []
            deadline = time.monotonic() + 20
            while len(got) < high and time.monotonic() < deadline:
                got += [m.value() for m in c.consume(100, 0.5) if m.error() is None]
            return got == want
        finally:
            c.close()

    harness.wait_until(mirrored, 90, interval=1, what="eu-west mirrors every record")


def test_a_wrong_password_is_refused(dev):
    conf = properties(dev["secure"]["librdkafka_properties"])
    conf["sasl.password"] = "not-the-password"
    conf["bootstrap.servers"] = dev["regions"][0]["sasl_ssl_bootstrap"]
    assert first_failure(conf).startswith("sasl: ")


def test_kafka_tools_use_the_java_properties_and_acls_are_on(dev):
    props = dev["secure"]["java_properties"]
    bs = dev["regions"][0]["sasl_ssl_bootstrap"].split(",")[0]
    p = kafka_acls(bs, "--command-config", props, "--add", "--allow-principal", "User:carol",
                   "--operation", "Read", "--topic", "devsec-acl")
    assert p.returncode == 0, p.stdout + p.stderr
    p = kafka_acls(bs, "--command-config", props, "--list", "--topic", "devsec-acl")
    assert p.returncode == 0 and "User:carol" in p.stdout, p.stdout + p.stderr


def test_the_admin_api_needs_the_region_token(dev):
    r = dev["regions"][0]
    url = r["brokers"][0]["admin"] + "/v1/cluster"
    token = open(r["admin_token_file"]).read().strip()

    def status(headers: dict) -> int:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers=headers), timeout=10) as resp:
                return resp.status
        except urllib.error.HTTPError as e:
            return e.code

    assert status({}) == 401
    assert status({"Authorization": f"Bearer {token}"}) == 200
    assert status({"Authorization": "Bearer " + "0" * len(token)}) == 401
