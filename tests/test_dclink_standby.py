"""One dc-link actor per region: a standby dc-link process watches the active one through
the region's controller and takes over when it dies (docs/dc-link.md, "A standby dc-link").

Two regions of one broker each and the witness; us-east runs a second, standby dc-link that
the topology lists in `dc_link_standby`.
"""

from __future__ import annotations

import time

from ackcheck import ProducerThread, read_partition
from cluster import http_json
from harness import http_get, wait_until
from kclient import unique_topic
from regions import Regions
from test_dclink import make_topic, wait_topic_in
from test_failover import LEASE, failover

US, EU = "us-east", "eu-west"


def actor(link) -> dict:
    status, body = http_json(link.admin_url + "/v1/actor", 5)
    assert status == 200 and body, (status, body)
    return body


def ready(link) -> tuple[int, str]:
    return http_get(link.admin_url + "/health/ready", 5)


def promotions(link) -> list[dict]:
    status, body = http_json(link.admin_url + "/v1/lease", 5)
    assert status == 200 and body and "vote" in body, (status, body)
    return body["vote"]["promotions"]


def test_a_standby_dc_link_takes_over_with_the_votes_of_the_one_it_replaces(tmp_path, chronik_cluster_binary):
    """The standby stays out (not ready, refuses peers) while the active renews. The active's
    lease vote agrees to a failover promotion (kept in us-east's controller). kill -9 the
    active under load: the standby takes the role at a higher term, remembers that
    promotion, holds us-east's lease and ships on; every acknowledged record is in eu-west
    at its offset. The killed process, restarted, comes back as the standby."""
    with Regions(tmp_path / "standby", names=(US, EU), brokers=1, binary=chronik_cluster_binary,
                 witness=True, witness_paths=True, lease=LEASE, standby=[US]) as regions:
        primary, standby = regions.dclink(US), regions.standby(US)
        first = actor(primary)
        assert first["role"] == "active" and first["may_act"], first
        seen = wait_until(lambda: actor(standby)["seen"], 15, what="the standby reading the role")
        assert seen["holder"] == first["me"] and seen["term"] == first["term"], seen
        assert actor(standby)["role"] == "standby"
        status, why = ready(standby)
        assert status == 503 and "standby" in why and first["me"] in why, (status, why)

        # A promotion agreed by the active's vote: a topic homed in eu-west fails over to
        # us-east while eu-west is cut off.
        moved = unique_topic("sb-moved")
        make_topic(regions, EU, moved, 1)
        wait_topic_in(regions, US, moved, 1)
        regions.isolate(EU)
        out = failover(regions, US, moved)
        assert out.returncode == 0, (out.stdout, out.stderr)
        regions.isolate(EU, on=False)
        agreed = [p for p in promotions(primary) if p["to"] == US and p["from"] == EU]
        assert len(agreed) == 1 and agreed[0]["epoch"] == 2, promotions(primary)

        topic = unique_topic("sb-data")
        make_topic(regions, US, topic, 2)
        wait_topic_in(regions, EU, topic, 2)
        load = ProducerThread(regions.bootstrap(US), topic, [0, 1], rate=150, max_messages=6_000,
                              max_seconds=120, flush_timeout=60, **{"message.timeout.ms": 60_000})
        load.start()
        try:
            wait_until(lambda: load.acks.count() >= 300, 60, what="300 acks")
            primary.kill9()
            killed = time.monotonic()
            took = wait_until(lambda: actor(standby)["role"] == "active" and actor(standby), 30,
                              what="the standby taking the role")
            took_s = time.monotonic() - killed
            assert took["term"] > first["term"], took
            wait_until(lambda: ready(standby)[0] == 200, 60, what="the new active ready (links up)")
            # Its vote is the region's vote: the promotion the dead process agreed to.
            assert [p for p in promotions(standby) if p["to"] == US and p["from"] == EU] == agreed
            acked_at_takeover = load.acks.count()
            wait_until(lambda: load.acks.count() >= acked_at_takeover + 300, 90,
                       what="us-east taking writes again under the new active's lease")
        finally:
            load.stop()
            load.join(90)
        assert not load.is_alive()
        print(f"\nstandby took the role {took_s:.1f}s after the kill (term {first['term']} -> {took['term']})")

        # Nothing acknowledged is missing in eu-west, at its offset.
        acked = dict(load.acks.acked)
        hws = regions.wait_mirrored(topic, [0, 1], home=US, timeout=90)
        for p in (0, 1):
            log, _, hi = read_partition(regions.bootstrap(EU), topic, p, timeout=60)
            assert hi == hws[p], (p, hi, hws)
            for (pp, off), v in acked.items():
                if pp == p:
                    assert log.get(off) == v, f"{topic}/{p}: acked offset {off} is {log.get(off)!r} in eu-west"
            regions.assert_identical(topic, p, home=US)

        # The killed process comes back as the standby; the role stays where it is.
        primary.launch()
        primary.wait_live(30)
        wait_until(lambda: actor(primary)["seen"] and actor(primary)["seen"]["holder"] == took["me"], 15,
                   what="the restarted process seeing the new active")
        assert actor(primary)["role"] == "standby"
        assert ready(primary)[0] == 503
        assert actor(standby)["role"] == "active" and actor(standby)["term"] == took["term"]
