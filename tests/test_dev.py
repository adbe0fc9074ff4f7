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
        [str(harness.chronik_bin()), "dev", "--data-dir", str(data), "--base-port", str(base),
         "--regions", "1", "--nodes", "1"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        dev = _wait_dev_json(data / "dev.json", proc)
        (region,) = dev["regions"]
        assert "dc_link" not in region, "one region has no dc-link"
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
    out = subprocess.run([str(harness.chronik_bin()), "dev", "--data-dir", str(tmp_path), "--regions", "4"],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "--regions 4" in out.stderr and "between 1 and 3" in out.stderr


def _port_block(n: int) -> int:
    """A base port with n Kafka ports, their +4000 admin and +50 raft twins free."""
    return _region_port_block(1, n)


def test_dev_three_node_region_replicates(tmp_path):
    base = _port_block(3)
    data = tmp_path / "dev3"
    proc = subprocess.Popen(
        [str(harness.chronik_bin()), "dev", "--data-dir", str(data), "--base-port", str(base),
         "--regions", "1", "--nodes", "3"],
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


def _region_port_block(regions: int, nodes: int) -> int:
    """A base port with everything `chronik dev` uses for `regions` x `nodes` free:
    Kafka ports, their +4000 admin and +50 raft twins, and dc-link ports +90/+91."""
    import random
    import socket

    for _ in range(200):
        p = random.randint(20000, 26000)
        socks = []
        try:
            for r in range(regions):
                first = p + 100 * r
                ports = [first + n + d for n in range(nodes) for d in (0, 4000, 50)] + [first + 90, first + 91]
                for q in ports:
                    s = socket.socket()
                    socks.append(s)
                    s.bind(("127.0.0.1", q))
                u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                socks.append(u)
                u.bind(("127.0.0.1", first + 90))
            return p
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port block")


def test_dev_default_is_two_mirrored_regions(tmp_path):
    """Plain `chronik dev`: 2 regions x 3 brokers with a dc-link each; a topic produced in
    us-east is readable in eu-west at the same offsets, and `chronik ctl lag` reports it."""
    base = _region_port_block(2, 3)
    data = tmp_path / "dev"
    proc = subprocess.Popen(
        [str(harness.chronik_bin()), "dev", "--data-dir", str(data), "--base-port", str(base)],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )
    try:
        dev = _wait_dev_json(data / "dev.json", proc, timeout=120)
        names = [r["name"] for r in dev["regions"]]
        assert names == ["us-east", "eu-west"]
        for r in dev["regions"]:
            assert len(r["brokers"]) == 3
            link = r["dc_link"]
            assert set(link) == {"quic", "admin", "pid", "config"}
            assert _alive(link["pid"]) and os.path.isabs(link["config"])
            assert harness.http_get(link["admin"] + "/health/ready")[0] == 200
        home, mirror = dev["regions"]
        values = [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(300)]
        reports = produce_all(home["bootstrap"], "dev-mirrored", values, acks="all")
        assert [r[0] for r in reports] == [None] * 300

        def readable(region, n):
            """All `n` records of dev-mirrored in `region`, or None while they are not."""
            try:
                got = consume(region["bootstrap"], "dev-mirrored", count=n, timeout=5)
            except Exception:
                return None
            return got if len(got) == n else None

        got = harness.wait_until(lambda: readable(mirror, 300), timeout=60, what="the topic mirrored to eu-west")
        assert [(m.offset(), m.key(), m.value()) for m in got] == \
            [(i, f"k{i}".encode(), f"v{i}".encode()) for i in range(300)]
        out = subprocess.run([str(harness.chronik_bin()), "ctl", "lag", "--dev-dir", str(data), "--json"],
                             capture_output=True, text=True, timeout=30)
        assert out.returncode == 0, out.stderr
        reports = json.loads(out.stdout)
        rows = [p for rep in reports for p in rep["partitions"] if p["topic"] == "dev-mirrored"]
        assert rows and all(p["link"] == "us-east->eu-west" for p in rows)
        harness.wait_until(
            lambda: all(p["lag_records"] == 0 and p["mirror_log_end"] == 300 for p in json.loads(
                subprocess.run([str(harness.chronik_bin()), "ctl", "lag", "--dev-dir", str(data), "--json"],
                               capture_output=True, text=True, timeout=30).stdout)[0]["partitions"]
                if p["topic"] == "dev-mirrored"),
            timeout=30, what="ctl lag showing the mirror caught up")
        table = subprocess.run([str(harness.chronik_bin()), "ctl", "lag", "--dev-dir", str(data)],
                               capture_output=True, text=True, timeout=30)
        assert table.returncode == 0 and "us-east->eu-west" in table.stdout and "dev-mirrored" in table.stdout
        # The home moves to eu-west with `chronik ctl switchover`, finding the brokers in dev.json.
        out = subprocess.run([str(harness.chronik_bin()), "ctl", "switchover", "--to", "eu-west",
                              "--topic", "dev-mirrored", "--dev-dir", str(data), "--json"],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        (res,) = json.loads(out.stdout)["topics"]
        assert (res["from"], res["to"], res["epoch"]) == ("us-east", "eu-west", 2), res
        more = [{"key": f"k{i}".encode(), "value": f"v{i}".encode()} for i in range(300, 310)]
        assert [r[0] for r in produce_all(mirror["bootstrap"], "dev-mirrored", more, acks="all")] == [None] * 10

        got = harness.wait_until(lambda: readable(home, 310), timeout=60,
                                 what="eu-west's records mirrored to us-east")
        assert [(m.offset(), m.value()) for m in got][300:] == [(i, f"v{i}".encode()) for i in range(300, 310)]
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
        rc = proc.wait(timeout=60)
    assert rc == 0
