"""`chronik dev` and `chronik config check`, driven as a user would."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time

import pytest

import harness
from kclient import consume, produce_all

pytestmark = pytest.mark.chronik


def _wait_dev_json(path, proc, timeout=60):
    def ready():
        if proc.poll() is not None:
            raise AssertionError(f"chronik dev exited early with {proc.returncode}: {proc.stdout.read()}")
        return path.exists() and json.loads(path.read_text())

    return harness.wait_until(ready, timeout=timeout, what="dev.json")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie is dead for our purposes.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def _port_pair() -> int:
    """A free port whose +4000 admin twin is free too (ephemeral ports + 4000 may not exist)."""
    import random
    import socket

    for _ in range(200):
        p = random.randint(20000, 28000)
        try:
            with socket.socket() as a, socket.socket() as b:
                a.bind(("127.0.0.1", p))
                b.bind(("127.0.0.1", p + 4000))
            return p
        except OSError:
            continue
    raise RuntimeError("no free port pair")


def test_dev_starts_writes_dev_json_restarts_and_stops(tmp_path):
    base = _port_pair()
    data = tmp_path / "dev"
    proc = subprocess.Popen(
        [str(harness.chronik_bin()), "dev", "--data-dir", str(data), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        dev = _wait_dev_json(data / "dev.json", proc)
        (region,) = dev["regions"]
        assert region["name"] == "us-east"
        assert region["bootstrap"] == f"127.0.0.1:{base}"
        (b,) = region["brokers"]
        assert b["id"] == 1 and b["kafka"] == region["bootstrap"]
        assert b["admin"] == f"http://127.0.0.1:{base + 4000}" == region["admin"]
        assert os.path.isabs(b["config"]) and os.path.isabs(b["data_dir"])
        assert _alive(b["pid"])
        status, body = harness.http_get(b["admin"] + "/health/ready")
        assert status == 200
        status, body = harness.http_get(b["admin"] + "/metrics")
        assert status == 200 and "# TYPE" in body

        # The broker works, dies with kill -9, and `chronik broker --config`
        # brings it back with its data while `chronik dev` keeps running.
        reports = produce_all(region["bootstrap"], "dev-topic", [{"value": f"v{i}".encode()} for i in range(500)], acks="all")
        assert [r[0] for r in reports] == [None] * 500
        os.kill(b["pid"], signal.SIGKILL)
        harness.wait_until(lambda: not _alive(b["pid"]), timeout=10, what="broker death")
        restarted = subprocess.Popen([str(harness.chronik_bin()), "broker", "--config", b["config"]],
                                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            harness.wait_until(lambda: harness.http_get(b["admin"] + "/health/ready")[0] == 200, timeout=30,
                               what="restarted broker ready")
            got = consume(region["bootstrap"], "dev-topic", count=500)
            assert [m.value() for m in got] == [f"v{i}".encode() for i in range(500)]
            assert [m.offset() for m in got] == list(range(500))
        finally:
            restarted.terminate()
            restarted.wait(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=30)
    assert rc == 0
    assert not (data / "dev.json").exists(), "dev.json is removed on a clean stop"


def test_dev_refuses_what_it_cannot_run(tmp_path):
    out = subprocess.run([str(harness.chronik_bin()), "dev", "--data-dir", str(tmp_path), "--regions", "2"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--regions 2" in out.stderr and "not implemented" in out.stderr


def _port_block(n: int) -> int:
    """A base port with n Kafka ports, their +4000 admin twins and +50 raft ports free."""
    import random
    import socket

    for _ in range(200):
        p = random.randint(20000, 27000)
        socks = []
        try:
            for i in range(n):
                for q in (p + i, p + i + 4000, p + i + 50):
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", q))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def test_dev_three_node_region_replicates(tmp_path):
    base = _port_block(3)
    data = tmp_path / "dev3"
    proc = subprocess.Popen(
        [str(harness.chronik_bin()), "dev", "--data-dir", str(data), "--base-port", str(base), "--nodes", "3"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        dev = _wait_dev_json(data / "dev.json", proc, timeout=90)
        (region,) = dev["regions"]
        brokers = region["brokers"]
        assert [b["id"] for b in brokers] == [1, 2, 3]
        assert all(_alive(b["pid"]) and os.path.isabs(b["config"]) for b in brokers)
        status, body = harness.http_get(brokers[0]["admin"] + "/v1/cluster")
        assert status == 200
        assert sorted(b["id"] for b in json.loads(body)["brokers"]) == [1, 2, 3]
        bootstrap = ",".join(b["kafka"] for b in brokers)
        reports = produce_all(bootstrap, "dev3-topic", [{"value": f"v{i}".encode()} for i in range(300)], acks="all")
        assert [r[0] for r in reports] == [None] * 300
        # Every broker holds a replica with the same bytes.
        def dumps():
            out = []
            for b in brokers:
                st, _ = harness.http_get(b["admin"] + "/v1/partitions/dev3-topic/0")
                if st != 200:
                    return None
                import urllib.request
                with urllib.request.urlopen(b["admin"] + "/v1/partitions/dev3-topic/0/log", timeout=5) as r:
                    out.append(r.read())
            return out if len(set(out)) == 1 and out[0] else None
        harness.wait_until(dumps, timeout=30, what="identical replicas")
        got = consume(bootstrap, "dev3-topic", count=300)
        assert [m.value() for m in got] == [f"v{i}".encode() for i in range(300)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0


@pytest.mark.parametrize("text,key", [
    ("node_id = 1\n[listeners]\nkafak = \"127.0.0.1:1\"\n", "kafak"),
    ("node_id = 1\n[topics]\ndefault_partitions = 0\n", "topics.default_partitions"),
    ("node_id = 1\ndurability = \"maybe\"\n", "durability"),
    ("node_id = 1\nregion = \"Not A Region\"\n", "region"),
])
def test_config_check_names_file_and_key(tmp_path, text, key):
    f = tmp_path / "broker.toml"
    f.write_text(text)
    out = subprocess.run([str(harness.chronik_bin()), "config", "check", str(f)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert str(f) in out.stderr and key in out.stderr, out.stderr


def test_config_check_accepts_a_valid_file(tmp_path):
    f = tmp_path / "broker.toml"
    f.write_text('node_id = 4\nregion = "eu-west"\ndurability = "replicated"\n[listeners]\nkafka = "127.0.0.1:9500"\n')
    out = subprocess.run([str(harness.chronik_bin()), "config", "check", str(f)], capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout and "127.0.0.1:13500" in out.stdout
