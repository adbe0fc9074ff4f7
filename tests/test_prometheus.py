"""A real Prometheus (Debian's package) with Chronik's own scrape config and alert rules,
deploy/prometheus/, against two regions: every broker and dc-link target is up; a link
blackholed with wan-sim fires ChronikReplicationLagHigh, which resolves once the link heals;
and the mirror then holds every record the home took (compared record by record).

The deployment is the regions harness (wan-sim sits on each link, which `chronik dev` lacks);
the config is the shipped prometheus.yml and alerts.yml, with the per-region target files an
operator writes (targets/<region>-brokers.json, targets/<region>-dc-links.json).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest
from confluent_kafka import Producer

from conftest import _require_chronik_binary
from harness import LOOPBACK, free_port, wait_until
from kclient import unique_topic, values_to_high_watermark
from regions import Regions
from test_dclink import make_topic, wait_topic_in

pytestmark = pytest.mark.chronik

REPO = Path(__file__).resolve().parent.parent
US, EU = "us-east", "eu-west"
ALERT = "ChronikReplicationLagHigh"


def api(base: str, path: str):
    with urllib.request.urlopen(base + path, timeout=10) as r:
        body = json.loads(r.read())
    assert body["status"] == "success", body
    return body["data"]




def test_prometheus_scrapes_every_target_and_alerts_on_a_blackholed_link(tmp_path):
    if shutil.which("prometheus") is None:
        pytest.fail("prometheus not installed (Debian's prometheus package; tests/setup.sh installs it)")
    regs = Regions(tmp_path / "regions", names=(US, EU), brokers=3, binary=_require_chronik_binary())
    with regs:
        conf = tmp_path / "prometheus"
        shutil.copytree(REPO / "deploy" / "prometheus", conf)
        (conf / "targets" / "chronik-dev.json").unlink()  # chronik dev's addresses, not this deployment's
        for r in (US, EU):
            c = regs.cluster(r)
            brokers = [f"{c.nodes[i].host}:{c.nodes[i].admin_port}" for i in c.ids]
            (conf / "targets" / f"{r}-brokers.json").write_text(
                json.dumps([{"targets": brokers, "labels": {"region": r}}]))
            (conf / "targets" / f"{r}-dc-links.json").write_text(
                json.dumps([{"targets": [f"{LOOPBACK}:{regs.dclink(r).admin_port}"], "labels": {"region": r}}]))
        port = free_port()
        base = f"http://{LOOPBACK}:{port}"
        log = open(tmp_path / "prometheus.log", "w")
        prom = subprocess.Popen(["prometheus", f"--config.file={conf / 'prometheus.yml'}",
                                 f"--storage.tsdb.path={tmp_path / 'tsdb'}",
                                 f"--web.listen-address={LOOPBACK}:{port}"],
                                stdout=log, stderr=subprocess.STDOUT)
        stop = threading.Event()
        try:
            def all_up():
                targets = api(base, "/api/v1/targets")["activeTargets"]
                return len(targets) == 8 and all(t["health"] == "up" for t in targets)

            wait_until(all_up, 60, interval=1, what="all 6 brokers and 2 dc-links up in Prometheus")

            topic = unique_topic("prom")
            make_topic(regs, US, topic, partitions=1)
            wait_topic_in(regs, EU, topic, 1)
            sent: list[bytes] = []

            def produce():
                p = Producer({"bootstrap.servers": regs.bootstrap(US), "acks": "all", "linger.ms": 5})
                # Bounded: at most 400 s of 20 records a second.
                for i in range(8000):
                    if stop.is_set():
                        break
                    v = f"{topic}-{i}".encode()
                    p.produce(topic, v)
                    sent.append(v)
                    p.poll(0)
                    time.sleep(0.05)
                assert p.flush(60) == 0

            producer = threading.Thread(target=produce, daemon=True)
            producer.start()
            regs.blackhole(EU)
            t0 = time.monotonic()

            def firing():
                return [a for a in api(base, "/api/v1/alerts")["alerts"]
                        if a["labels"]["alertname"] == ALERT and a["state"] == "firing"
                        and a["labels"].get("topic") == topic]

            fired = wait_until(firing, 300, interval=2, what=f"{ALERT} firing for {topic}")
            took = time.monotonic() - t0
            assert fired[0]["labels"]["link"] == f"{US}->{EU}" and fired[0]["labels"]["region"] == US
            regs.blackhole(EU, on=False)
            t1 = time.monotonic()
            wait_until(lambda: not any(a["labels"]["alertname"] == ALERT and a["labels"].get("topic") == topic
                                       for a in api(base, "/api/v1/alerts")["alerts"]),
                       180, interval=2, what=f"{ALERT} resolved")
            resolved = time.monotonic() - t1
            stop.set()
            producer.join(120)
            assert not producer.is_alive()
            wait_until(lambda: values_to_high_watermark(regs.bootstrap(EU), topic) == sent, 120, interval=2,
                       what="eu-west holds every record us-east took")
            print(f"{ALERT} fired {took:.0f}s after the blackhole and resolved {resolved:.0f}s after the heal; "
                  f"{len(sent)} records mirrored")
        finally:
            stop.set()
            prom.terminate()
            try:
                prom.wait(30)
            except subprocess.TimeoutExpired:
                prom.kill()
            log.close()
