"""A running region grows and shrinks without a restart and without losing a record.

Three brokers form the region and take a replicated topic. A fourth broker starts on an empty
data directory, finds the region running without it and waits; `chronik ctl broker add` makes it
a controller voter, and new topics place replicas on it. Then `chronik ctl broker remove` takes
one of the original brokers out while an idempotent producer writes: its replicas move to the
others by reassignment, it leaves the controller, Metadata stops naming it, it logs that it was
removed, and it is stopped; restarted on its old data, it refuses to start and says why.
Every acknowledged record is read back from every partition, to the high watermark, and the
region still takes writes with acks=all. A removal that would leave fewer brokers than a topic's
replicas, and an add with a malformed address, are refused with the reason.
"""

from __future__ import annotations

import json
import subprocess
import threading

import pytest
from confluent_kafka import Producer
from confluent_kafka.admin import NewTopic

from cluster import ChronikCluster, create_topic, http_json
from conftest import _require_chronik_binary
from harness import Chronik, free_port, wait_until
from kclient import admin, future_error, unique_topic, values_to_high_watermark, wait_topic

pytestmark = pytest.mark.chronik


def ctl(binary, *args, timeout=300):
    return subprocess.run([str(binary), "ctl", "broker", *args], capture_output=True, text=True,
                          timeout=timeout)


def brokers(c, via: int) -> dict:
    status, body = http_json(c.admin_url(via) + "/v1/brokers")
    assert status == 200, status
    return {b["id"]: b for b in body["brokers"]}


def replicas(bootstrap: str, topic: str) -> dict[int, list[int]]:
    md = admin(bootstrap).list_topics(topic, timeout=10).topics[topic]
    return {p: list(m.replicas) for p, m in md.partitions.items()}


def produce(bootstrap: str, topic: str, values: list[bytes], partitions: int) -> None:
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": True})
    for i, v in enumerate(values):
        p.produce(topic, v, partition=i % partitions)
    assert p.flush(60) == 0


def read_all(bootstrap: str, topic: str, partitions: int) -> list[bytes]:
    out = []
    for p in range(partitions):
        out += values_to_high_watermark(bootstrap, topic, p)
    return sorted(out)


def test_a_broker_joins_and_another_leaves_a_running_region(tmp_path):
    binary = _require_chronik_binary()
    c = ChronikCluster(3, tmp_path / "region", binary=binary)
    c.start()
    new = None
    try:
        first = unique_topic("members")
        create_topic(c, first, partitions=3, replication_factor=3)
        want_first = [f"{first}-{i}".encode() for i in range(300)]
        produce(c.bootstrap, first, want_first, 3)

        # Broker 4: its configuration names the three running brokers.
        peers = "\n".join(f'[[cluster.peers]]\nid = {i}\nraft = "{c.nodes[i].host}:{c.nodes[i].raft_port}"\n'
                          for i in c.ids)
        raft_port = free_port("127.0.0.4")
        new = Chronik(None, tmp_path / "region" / "node4", host="127.0.0.4", raft_port=raft_port,
                      binary=binary, node_id=4, durability="replicated",
                      extra_toml="[cluster]\n\n" + peers)
        new.launch()
        wait_until(lambda: "waits to be added" in new.stdout_path.read_text(errors="replace"), 60,
                   what="broker 4 noticing the region runs without it")
        assert 4 not in brokers(c, 1)

        bad = ctl(binary, "add", "4", "--raft", "127.0.0.4", "--broker", c.admin_url(1))
        assert bad.returncode != 0 and "host:port" in bad.stderr, bad.stderr

        added = ctl(binary, "add", "4", "--raft", f"127.0.0.4:{raft_port}", "--broker", c.admin_url(1))
        assert added.returncode == 0, added.stderr
        assert "active member" in added.stdout
        for via in (1, 2, 3):
            wait_until(lambda via=via: brokers(c, via).get(4, {}).get("controller") == "voter"
                       and brokers(c, via)[4]["state"] == "active", 30,
                       what=f"broker {via} listing broker 4 as an active controller voter")
        new.wait_ready(60)
        wait_until(lambda: 4 in {b.id for b in admin(new.bootstrap).list_topics(timeout=10).brokers.values()},
                   30, what="broker 4 in Metadata")

        # Broker 5 is added but never started: it stays joining and takes no replica; removing
        # it takes it out again.
        ghost = ctl(binary, "add", "5", "--raft", "127.0.0.5:9", "--no-wait", "--broker", c.admin_url(1))
        assert ghost.returncode == 0, ghost.stderr
        assert brokers(c, 1)[5]["state"] == "joining"

        # New topics use broker 4 (never the joining 5); it serves what it hosts.
        second = unique_topic("members")
        everyone = c.bootstrap + "," + new.bootstrap
        err = future_error(admin(everyone).create_topics([NewTopic(second, 4, 3)])[second])
        assert err is None, err
        wait_topic(everyone, second, 4)
        placed = replicas(c.bootstrap, second)
        assert any(4 in r for r in placed.values()) and not any(5 in r for r in placed.values()), placed
        gone = ctl(binary, "remove", "5", "--broker", c.admin_url(1), timeout=120)
        assert gone.returncode == 0, gone.stderr
        want_second = [f"{second}-{i}".encode() for i in range(200)]
        produce(new.bootstrap, second, want_second, 4)

        # Remove broker 2 while a producer writes to the first topic.
        acked: list[bytes] = []
        stop = threading.Event()

        def write():
            p = Producer({"bootstrap.servers": c.bootstrap_of([1, 3]) + "," + new.bootstrap, "acks": "all",
                          "enable.idempotence": True})

            def done(err, msg):
                if err is None:
                    acked.append(msg.value())
            for i in range(3000):  # bounded: stops early once the removal finished
                if stop.is_set():
                    break
                p.produce(first, f"during-{i}".encode(), partition=i % 3, on_delivery=done)
                p.poll(0.002)
            assert p.flush(60) == 0

        writer = threading.Thread(target=write)
        writer.start()
        removed = ctl(binary, "remove", "2", "--broker", c.admin_url(1), timeout=600)
        stop.set()
        writer.join(120)
        assert removed.returncode == 0, removed.stderr
        assert "removed from the region" in removed.stdout

        for via in (1, 3):
            b = brokers(c, via)
            assert b[2]["state"] == "removed" and b[2]["controller"] is None, b[2]
            assert b[2]["replicas"] == 0
        rest = c.bootstrap_of([1, 3]) + "," + new.bootstrap
        for t in (first, second):
            assert all(2 not in r for r in replicas(rest, t).values()), replicas(rest, t)
        wait_until(lambda: {b.id for b in admin(rest).list_topics(timeout=10).brokers.values()} == {1, 3, 4},
                   30, what="Metadata naming brokers 1, 3 and 4 only")
        # Left running, the removed broker hears from no one, asks, and says it was removed.
        wait_until(lambda: "this broker was removed from region" in c.nodes[2].log_path.read_text(errors="replace"), 90,
                   what="broker 2 logging that it was removed")
        c.nodes[2].stop()
        # Restarted on its old data, it refuses to start and says why.
        c.nodes[2].launch()
        wait_until(lambda: not c.nodes[2].running, 60, what="broker 2 refusing to start")
        assert c.nodes[2].proc.returncode != 0
        assert "broker 2 was removed from region" in c.nodes[2].log_tail(), c.nodes[2].log_tail()

        assert len(acked) > 0
        assert read_all(rest, first, 3) == sorted(want_first + acked)
        assert read_all(rest, second, 4) == sorted(want_second)
        after = [f"after-{i}".encode() for i in range(30)]
        produce(rest, first, after, 3)
        assert read_all(rest, first, 3) == sorted(want_first + acked + after)

        # Three brokers left and a topic of three replicas: nowhere to drain to.
        refused = ctl(binary, "remove", "3", "--broker", c.admin_url(1))
        assert refused.returncode != 0
        assert "fewer than the 3 replicas" in refused.stderr, refused.stderr
        listing = ctl(binary, "list", "--json", "--broker", c.admin_url(3))
        assert listing.returncode == 0, listing.stderr
        states = {b["id"]: b["state"] for b in json.loads(listing.stdout)["brokers"]}
        assert states == {1: "active", 2: "removed", 3: "active", 4: "active", 5: "removed"}
    finally:
        if new is not None:
            new.stop()
        c.stop()

