"""A topic's RPO (`chronik.rpo.ms`), held at home with `chronik.rpo.enforce=true`
(docs/rpo.md): while the link to the mirror is a trickle (wan-sim bandwidth), producers are
first throttled, then refused retriably, and the at-risk span sampled every 100 ms never
passes the RPO; with enforcement off the same trickle lets it grow without bound. Nothing
acknowledged is lost either way.

Own deployment: two regions of one broker each.
"""

from __future__ import annotations

import os
import re
import threading
import time

import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

from ackcheck import read_partition
from cluster import http_bytes
from harness import wait_until
from kclient import admin, future_error, unique_topic
from regions import Regions
from test_dclink import make_topic, wait_topic_in

US, EU = "us-east", "eu-west"
RPO_MS = 5000
VALUE = 2048  # random bytes: zstd cannot shrink them below the trickle


def at_risk(regions: Regions, topic: str) -> float | None:
    """chronik_rpo_at_risk_seconds of topic/0 on us-east's broker (None: not measured)."""
    c = regions.cluster(US)
    node = c.nodes[c.ids[0]]
    status, body = http_bytes(f"http://{node.host}:{node.admin_port}/metrics", 5)
    assert status == 200
    m = re.search(rf'^chronik_rpo_at_risk_seconds{{[^}}]*topic="{re.escape(topic)}"[^}}]*}} (\S+)$',
                  body.decode(), re.M)
    if not m or m.group(1) == "NaN":
        return None
    return float(m.group(1))


def broker_counter(regions: Regions, name: str, topic: str) -> float:
    c = regions.cluster(US)
    node = c.nodes[c.ids[0]]
    _, body = http_bytes(f"http://{node.host}:{node.admin_port}/metrics", 5)
    m = re.search(rf'^{name}{{[^}}]*topic="{re.escape(topic)}"[^}}]*}} (\S+)$', body.decode(), re.M)
    return float(m.group(1)) if m else 0.0


class Load(threading.Thread):
    """An idempotent acks=all producer offering `rate` records/s of random bytes to
    partition 0 for at most `seconds`; records acks {offset: value}, ack times, and the
    longest throttle the broker asked for (librdkafka statistics)."""

    def __init__(self, bootstrap: str, topic: str, rate: int, seconds: float) -> None:
        super().__init__(daemon=True)
        self.topic, self.rate, self.seconds = topic, rate, seconds
        self.acked: dict[int, bytes] = {}
        self.ack_times: list[float] = []
        self.errors: list[str] = []
        self.throttle_max_ms = 0
        self.stop_evt = threading.Event()
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                           "linger.ms": 5, "compression.type": "none", "message.timeout.ms": 120_000,
                           "queue.buffering.max.messages": 20_000, "statistics.interval.ms": 500,
                           "stats_cb": self._stats})

    def _stats(self, js: str) -> None:
        import json

        for b in json.loads(js).get("brokers", {}).values():
            self.throttle_max_ms = max(self.throttle_max_ms, int(b.get("throttle", {}).get("max", 0)))

    def _report(self, err, msg) -> None:
        if err is None:
            self.acked[msg.offset()] = msg.value()
            self.ack_times.append(time.monotonic())
        else:
            self.errors.append(str(err))

    def run(self) -> None:
        t0 = time.monotonic()
        sent = 0
        while not self.stop_evt.is_set() and time.monotonic() - t0 < self.seconds:
            due = t0 + sent / self.rate
            now = time.monotonic()
            if now < due:
                self.p.poll(min(due - now, 0.01))
                continue
            try:
                self.p.produce(self.topic, os.urandom(VALUE), partition=0, on_delivery=self._report)
                sent += 1
            except BufferError:
                self.p.poll(0.05)
        self.p.flush(130)

    def acks_between(self, a: float, b: float) -> int:
        return sum(1 for t in list(self.ack_times) if a <= t < b)


class Sampler(threading.Thread):
    """Samples the at-risk span every 100 ms."""

    def __init__(self, regions: Regions, topic: str) -> None:
        super().__init__(daemon=True)
        self.regions, self.topic = regions, topic
        self.samples: list[tuple[float, float]] = []
        self.stop_evt = threading.Event()

    def run(self) -> None:
        while not self.stop_evt.is_set():
            v = at_risk(self.regions, self.topic)
            if v is not None:
                self.samples.append((time.monotonic(), v))
            self.stop_evt.wait(0.1)

    def max_since(self, t: float) -> float:
        return max((v for at, v in self.samples if at >= t), default=0.0)


def set_configs(bootstrap: str, topic: str, **cfg) -> KafkaError | None:
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry(k.replace("_", "."), v, incremental_operation=AlterConfigOpType.SET) for k, v in cfg.items()])
    (fut,) = admin(bootstrap).incremental_alter_configs([res]).values()
    return future_error(fut, 30)


@pytest.mark.timeout(420)
def test_an_enforced_rpo_holds_on_a_trickle_and_without_enforcement_the_span_grows(tmp_path,
                                                                                  chronik_cluster_binary):
    with Regions(tmp_path / "rpo", names=(US, EU), brokers=1, binary=chronik_cluster_binary) as regions:
        bs = regions.bootstrap(US)
        # Bad input changes nothing and says why.
        bad = unique_topic("rpo-bad")
        for cfg, words in (({"chronik.rpo.ms": "-1"}, "at least 0"),
                           ({"chronik.rpo.ms": "5s"}, "not a duration"),
                           ({"chronik.rpo.enforce": "true", "chronik.mirror.regions": ""}, "no mirror region")):
            err = future_error(admin(bs).create_topics([NewTopic(bad, 1, 1, config=cfg)])[bad], 30)
            assert err is not None and err.code() == KafkaError.INVALID_CONFIG and words in err.str(), (cfg, err)
        lonely = unique_topic("rpo-lonely")
        make_topic(regions, US, lonely, 1, {"chronik.mirror.regions": ""})
        err = set_configs(bs, lonely, chronik_rpo_enforce="true")
        assert err is not None and "no mirror region" in err.str(), err

        topic = unique_topic("rpo")
        make_topic(regions, US, topic, 1, {"chronik.rpo.ms": str(RPO_MS), "chronik.rpo.enforce": "true"})
        wait_topic_in(regions, EU, topic, 1)
        sampler = Sampler(regions, topic)
        sampler.start()
        loads = []
        try:
            # Healthy link: full speed, nothing throttled.
            wait_until(lambda: at_risk(regions, topic) is not None, 30, what="the RPO measured at home")
            healthy = Load(bs, topic, rate=400, seconds=6)
            loads.append(healthy)
            healthy.start()
            healthy.join(140)
            assert broker_counter(regions, "chronik_rpo_throttled_total", topic) == 0
            assert len(healthy.acked) >= 0.9 * 400 * 6 and not healthy.errors, (len(healthy.acked), healthy.errors)

            # A trickle: 2 Mbit/s against ~6.5 Mbit/s offered.
            regions.wansim(EU).set(bandwidth_mbit=2.0)
            trickle_at = time.monotonic()
            slow = Load(bs, topic, rate=400, seconds=20)
            loads.append(slow)
            slow.start()
            wait_until(lambda: broker_counter(regions, "chronik_rpo_throttled_total", topic) > 0, 30,
                       what="producers throttled")
            wait_until(lambda: broker_counter(regions, "chronik_rpo_refused_total", topic) > 0, 30,
                       what="writes refused at the RPO")
            slow.join(160)
            assert not slow.errors, slow.errors[:3]  # refusals are retried, never failed
            held = sampler.max_since(trickle_at)
            assert held < RPO_MS / 1000, f"at-risk span reached {held:.2f}s with an enforced RPO of {RPO_MS} ms"
            assert slow.throttle_max_ms > 0, "the producer never saw throttle_time_ms"
            offered = 400 * 20
            print(f"\nenforced: at-risk span at most {held:.2f}s; {len(slow.acked)}/{offered} acked on the trickle; "
                  f"throttled {broker_counter(regions, 'chronik_rpo_throttled_total', topic):.0f}, refused "
                  f"{broker_counter(regions, 'chronik_rpo_refused_total', topic):.0f} times; client throttle max "
                  f"{slow.throttle_max_ms} ms")

            # The link recovers: the mirror catches up and producers get full speed back.
            regions.wansim(EU).set()
            wait_until(lambda: (at_risk(regions, topic) or 0) < 0.5, 60, what="the mirror caught up")
            again = Load(bs, topic, rate=400, seconds=6)
            loads.append(again)
            again.start()
            again.join(140)
            assert len(again.acked) >= 0.9 * 400 * 6 and not again.errors, (len(again.acked), again.errors)

            # Enforcement off, the same trickle: the span grows past the RPO and keeps growing.
            assert set_configs(bs, topic, chronik_rpo_enforce="false") is None
            regions.wansim(EU).set(bandwidth_mbit=2.0)
            off_at = time.monotonic()
            free = Load(bs, topic, rate=400, seconds=16)
            loads.append(free)
            free.start()
            free.join(160)
            mid = max((v for at, v in sampler.samples if off_at + 6 <= at < off_at + 8), default=0.0)
            end = sampler.max_since(off_at)
            print(f"not enforced: at-risk span {mid:.1f}s after ~7 s, {end:.1f}s at most")
            assert end > RPO_MS / 1000 + 2 and end > mid + 3, (mid, end)
            regions.wansim(EU).set()
        finally:
            sampler.stop_evt.set()
            for ld in loads:
                ld.stop_evt.set()
            regions.wansim(EU).set()

        # Nothing acknowledged is lost: every ack is in eu-west at its offset.
        hws = regions.wait_mirrored(topic, [0], home=US, timeout=180)
        log, _, hi = read_partition(regions.bootstrap(EU), topic, 0, timeout=120)
        assert hi == hws[0]
        for ld in loads:
            for off, v in ld.acked.items():
                assert log.get(off) == v, f"acked offset {off} differs in eu-west"
