"""Failover: `chronik ctl failover` moves topics' home role away from a region that is lost,
through the home-role lease (docs/failover.md).

Each test runs its own deployment (it destroys a region): two regions of one broker each,
with the witness (`chronik witness`) as the third lease voter, or without it.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from confluent_kafka import Consumer

import kwire
from ackcheck import ProducerThread, read_partition
from harness import wait_until
from kclient import produce_all, unique_topic
from regions import Regions
from test_dclink import leader_bootstrap, make_topic, wait_topic_in
from test_metadata_sync import commit_offset, group_offsets
from test_switchover import broker_args

US, EU = "us-east", "eu-west"
# The lease every test deployment uses: short, so a region loss is detected quickly.
LEASE = {"duration_ms": 4000, "renew_every_ms": 500}


def failover(regions: Regions, to: str, *topics: str, extra: tuple = ()) -> subprocess.CompletedProcess:
    """`chronik ctl failover --to TO --topic T... --json`, with the live brokers of every
    region and the target region's dc-link."""
    args = broker_args(regions)
    for t in topics:
        args += ["--topic", t]
    link = regions.dclink_url(to if to in regions.names else EU)
    return subprocess.run([str(regions.binary), "ctl", "failover", "--to", to, "--json",
                           "--dc-link", link, *args, *extra],
                          capture_output=True, text=True, timeout=180)


def kill_region(regions: Regions, region: str) -> float:
    """kill -9 every process of `region` (its brokers and its dc-link); the time it was done."""
    regions.kill9_dclink(region)
    for i in list(regions.cluster(region).live_ids()):
        regions.kill9_broker(region, i)
    return time.monotonic()


def at_risk_report(stderr: str, topic: str) -> dict[int, tuple[int, int, int]]:
    """{partition: (home high watermark, copy end, records at risk)} from failover's report."""
    out = {}
    for m in re.finditer(rf"^{re.escape(topic)}:\s+partition\s+(\d+): home high watermark\s+(\d+), "
                         r"copy ends at\s+(\d+),\s+(\d+) records at risk", stderr, re.M):
        out[int(m.group(1))] = (int(m.group(2)), int(m.group(3)), int(m.group(4)))
    return out


def epoch_end(bootstrap: str, topic: str, partition: int, epoch: int) -> tuple[int, int, int]:
    """OffsetForLeaderEpoch v3 (what a KIP-320 consumer sends after a leader change): (error,
    leader epoch, end offset) of `epoch` in the partition's log at `bootstrap`."""
    body = kwire.i32(-1) + kwire.array([kwire.string(topic) + kwire.array([
        kwire.i32(partition) + kwire.i32(-1) + kwire.i32(epoch)])])
    with kwire.Conn(bootstrap, timeout=10) as c:
        res = c.request(23, 3, body)
    r = kwire.Reader(res[1])
    r.i32()  # throttle
    assert r.i32() == 1 and r.string() == topic and r.i32() == 1
    err, _p, e, end = r.i16(), r.i32(), r.i32(), r.i64()
    return err, e, end


def last_epoch(regions: Regions, region: str, topic: str, p: int) -> int:
    """The leader epoch of the newest record of `region`'s copy (its epoch history)."""
    return regions.leader_state(region, topic, p)[1]["epochs"][-1][0]


def witness_pair(base_dir, binary, brokers: int = 1) -> Regions:
    """us-east and eu-west with `brokers` brokers each, and the witness."""
    return Regions(base_dir, names=(US, EU), brokers=brokers, binary=binary, witness=True, lease=LEASE)


@pytest.fixture
def witness_regions(tmp_path, chronik_cluster_binary):
    with witness_pair(tmp_path / "failover", chronik_cluster_binary) as r:
        yield r


def test_region_loss_with_witness_failover_by_command(witness_regions):
    """kill -9 every us-east process under load; `ctl failover` waits out us-east's lease,
    the witness and eu-west agree, eu-west takes both topics at epoch 2. Every acknowledged
    record of the global_quorum topic is in eu-west at its offset; of the async topic,
    what is missing is a suffix of each partition; the group resumes where it committed."""
    regions = witness_regions
    gq, asy = unique_topic("fo-gq"), unique_topic("fo-async")
    make_topic(regions, US, gq, 2, {"chronik.replication.mode": "global_quorum"})
    make_topic(regions, US, asy, 2)
    for t in (gq, asy):
        wait_topic_in(regions, EU, t, 2)

    # While us-east is healthy, a failover is refused and changes nothing.
    out = failover(regions, EU, asy)
    assert out.returncode != 0 and "switchover" in out.stderr, (out.stdout, out.stderr)
    out = failover(regions, "nowhere", asy)
    assert out.returncode != 0 and "unknown region nowhere" in out.stderr, out.stderr

    loads = [ProducerThread(regions.bootstrap(US), t, [0, 1], rate=150, max_messages=20_000, max_seconds=120,
                            flush_timeout=5) for t in (gq, asy)]
    for p in loads:
        p.start()
    try:
        wait_until(lambda: all(p.acks.count() >= 400 for p in loads), 60, what="400 acks per topic")
        group = unique_topic("fo-group")
        commit_offset(regions.bootstrap(US), group, asy, 0, 100)
        wait_until(lambda: group_offsets(regions.bootstrap(EU), group, asy).get(0) == 100, 30,
                   what="the group's commit synced to eu-west")
        wait_until(lambda: all(p.acks.count() >= 800 for p in loads), 60, what="800 acks per topic")
        killed = kill_region(regions, US)
    finally:
        for p in loads:
            p.abandon()
    acked = {t: dict(p.acks.acked) for t, p in zip((gq, asy), loads)}

    out = failover(regions, EU, gq, asy)
    done = time.monotonic()
    assert out.returncode == 0, (out.stdout, out.stderr)
    result = {r["topic"]: r for r in json.loads(out.stdout)["topics"]}
    for t in (gq, asy):
        assert result[t]["from"] == US and result[t]["to"] == EU and result[t]["epoch"] == 2, result[t]
    # us-east's last grant was at most one renewal before the kill; no voter agreed before
    # the lease it granted then had run out.
    assert done - killed >= (LEASE["duration_ms"] - LEASE["renew_every_ms"]) / 1000, done - killed

    # global_quorum: every acknowledged record, at its offset.
    for p in range(2):
        log, _, hi = read_partition(regions.bootstrap(EU), gq, p, timeout=60)
        for (pp, off), v in acked[gq].items():
            if pp == p:
                assert log.get(off) == v, f"{gq}/{p}: acked offset {off} is {log.get(off)!r} in eu-west"
    # async: what eu-west lacks of the acknowledged records is a suffix, and reported.
    report = at_risk_report(out.stderr, asy)
    assert sorted(report) == [0, 1], out.stderr
    for p in range(2):
        log, _, hi = read_partition(regions.bootstrap(EU), asy, p, timeout=60)
        mine = {off: v for (pp, off), v in acked[asy].items() if pp == p}
        for off, v in mine.items():
            if off < hi:
                assert log.get(off) == v, f"{asy}/{p}: acked offset {off} below eu-west's end {hi} differs"
        hw, end, risk = report[p]
        assert end <= hi and risk == max(hw - end, 0), report[p]
        print(f"\n{asy}/{p}: eu-west ends at {hi}; {sum(1 for o in mine if o >= hi)} acked records lost; "
              f"reported at risk {risk}")

    # eu-west is the home now: it takes writes, and the group resumes where it committed.
    reports = produce_all(regions.bootstrap(EU), asy, [{"value": b"after-%d" % i, "partition": 0}
                                                       for i in range(10)], acks="all")
    assert all(r[0] is None for r in reports), reports
    assert group_offsets(regions.bootstrap(EU), group, asy).get(0) == 100
    c = Consumer({"bootstrap.servers": regions.bootstrap(EU), "group.id": group, "enable.auto.commit": False,
                  "auto.offset.reset": "error"})
    try:
        c.subscribe([asy])
        first = {}
        deadline = time.monotonic() + 60
        while len(first) < 1 and time.monotonic() < deadline:
            for m in c.consume(num_messages=100, timeout=1.0):
                if not m.error():
                    first.setdefault(m.partition(), m.offset())
        assert first.get(0, 100) == 100, first
    finally:
        c.close()

    # Again: the topic is homed in eu-west already.
    out = failover(regions, EU, asy)
    assert out.returncode != 0 and "already homed" in out.stderr, out.stderr


def test_two_regions_without_witness_need_force_and_a_confirmation(tmp_path, chronik_cluster_binary):
    """No witness: two voters, no majority. With us-east's dc-link gone (the link is down),
    a failover needs --force, and --force needs the data at risk confirmed; then eu-west
    takes the home on its own vote."""
    with Regions(tmp_path / "failover-2", names=(US, EU), brokers=1, binary=chronik_cluster_binary,
                 lease=LEASE) as regions:
        topic = unique_topic("fo-force")
        make_topic(regions, US, topic, 1)
        wait_topic_in(regions, EU, topic, 1)
        produce_all(regions.bootstrap(US), topic, [{"value": b"v%d" % i} for i in range(50)], acks="all")
        regions.wait_mirrored(topic, 1, US, timeout=30)
        kill_region(regions, US)
        wait_until(lambda: not regions.links_connected().get(f"{US}->{EU}", True), 30, what="link down")

        out = failover(regions, EU, topic)
        assert out.returncode != 0 and "--force" in out.stderr, out.stderr
        out = failover(regions, EU, topic, extra=("--force",))
        assert out.returncode != 0 and "--confirm-at-risk 0" in out.stderr, out.stderr
        out = failover(regions, EU, topic, extra=("--force", "--confirm-at-risk", "0"))
        assert out.returncode == 0, (out.stdout, out.stderr)
        (r,) = json.loads(out.stdout)["topics"]
        assert (r["from"], r["to"], r["epoch"], r["forced"]) == (US, EU, 2, True), r
        reports = produce_all(regions.bootstrap(EU), topic, [{"value": b"new"}], acks="all")
        assert reports[0][0] is None and reports[0][2] == 50, reports


def test_split_brain_attempt_home_cut_off_stops_at_its_lease_end(tmp_path, chronik_cluster_binary):
    """us-east cut off from eu-west and the witness (wan-sim blackholes) while its local
    producers keep writing: it stops acknowledging when its lease runs out, and eu-west is
    promoted only after that. No offset of the global_quorum topic is acknowledged in two
    regions with different content; of the async topic, us-east's acks that eu-west lacks
    are a suffix, acknowledged before eu-west took over. After the heal us-east learns the
    new home and becomes a mirror, and eu-west's dc-link refuses to ship into its diverged
    copy instead of splicing the two histories."""
    with Regions(tmp_path / "split", names=(US, EU), brokers=1, binary=chronik_cluster_binary,
                 witness=True, witness_paths=True, lease=LEASE) as regions:
        gq, asy = unique_topic("sb-gq"), unique_topic("sb-async")
        make_topic(regions, US, gq, 1, {"chronik.replication.mode": "global_quorum"})
        make_topic(regions, US, asy, 1)
        for t in (gq, asy):
            wait_topic_in(regions, EU, t, 1)
        loads = {t: ProducerThread(regions.bootstrap(US), t, [0], rate=100, max_messages=20_000, max_seconds=120,
                                   flush_timeout=5, **{"message.timeout.ms": 60_000})
                 for t in (gq, asy)}
        for p in loads.values():
            p.start()
        try:
            wait_until(lambda: all(p.acks.count() >= 200 for p in loads.values()), 60, what="200 acks per topic")
            cut = time.monotonic()
            regions.isolate(US)
            lease_s = LEASE["duration_ms"] / 1000

            def us_stopped():
                # Two seconds without an ack, after the lease could have run out.
                last = max(loads[asy].acks.times.values())
                return time.monotonic() > cut + lease_s and time.monotonic() - last > 2
            wait_until(us_stopped, 30, what="us-east no longer acknowledging")
            last_us_ack = max(max(p.acks.times.values()) for p in loads.values())
            assert last_us_ack <= cut + lease_s + 0.5, \
                f"us-east acknowledged {last_us_ack - cut:.2f}s after it was cut off, with a {lease_s}s lease"
            assert loads[asy].acks.failed_values() or loads[asy].is_alive(), "the async producer saw no refusal"

            out = failover(regions, EU, gq, asy)
            assert out.returncode == 0, (out.stdout, out.stderr)
            promoted = time.monotonic()
            assert promoted > last_us_ack
            eu_acks = {}
            for t in (gq, asy):
                reports = produce_all(regions.bootstrap(EU), t, [{"value": b"eu-%d" % i, "partition": 0}
                                                                 for i in range(20)], acks="1")
                assert all(r[0] is None for r in reports), reports
                eu_acks[t] = {r[2]: b"eu-%d" % i for i, r in enumerate(reports)}
        finally:
            for p in loads.values():
                p.abandon()

        us_acks = {t: {off: v for (_, off), v in p.acks.acked.items()} for t, p in loads.items()}
        eu_gq, _, _ = read_partition(regions.bootstrap(EU), gq, 0, timeout=60)
        for off, v in us_acks[gq].items():
            assert eu_gq.get(off) == v, f"{gq}: offset {off} acked in us-east as {v!r}, eu-west holds {eu_gq.get(off)!r}"
        eu_asy, _, _ = read_partition(regions.bootstrap(EU), asy, 0, timeout=60)
        fork = min(eu_acks[asy])
        for off, v in us_acks[asy].items():
            if off < fork:
                assert eu_asy.get(off) == v, f"{asy}: offset {off} acked in us-east below the fork {fork} differs"
        lost = sorted(o for o in us_acks[asy] if o >= fork)
        print(f"\nasync: us-east acknowledged {len(lost)} records after eu-west last heard from it "
              f"(offsets {lost[:1]}..{lost[-1:]}), lost by the failover; eu-west continues at {fork}")

        # Epochs (KIP-320): a consumer that read us-east's records past the fork asks eu-west
        # where its epoch ends, and is told the fork: it truncates there, as after a Kafka
        # unclean leader change. us-east, asked the same, still has its own history.
        old_epoch = last_epoch(regions, US, asy, 0)
        err, _, end = epoch_end(leader_bootstrap(regions, EU, asy, 0), asy, 0, old_epoch)
        assert (err, end) == (0, fork), f"eu-west: epoch {old_epoch} ends at {end} (error {err}), fork {fork}"
        new_epoch = last_epoch(regions, EU, asy, 0)
        assert new_epoch > old_epoch, f"eu-west stamps epoch {new_epoch}, not above us-east's {old_epoch}"

        regions.isolate(US, on=False)
        # us-east learns its topics moved (metadata-sync) and refuses them; eu-west's dc-link
        # finds us-east's copy of the async topic diverged and ships nothing into it.
        def diverged():
            rows = [r for r in regions.lag_rows(EU, asy) if r["link"] == f"{EU}->{US}"]
            return rows and rows[0]["state"] != "ok" and "diverged" in (rows[0].get("error") or "") and rows[0]
        if lost:
            row = wait_until(diverged, 90, what="eu-west's dc-link reporting us-east's copy diverged")
            print(f"eu-west -> us-east: {row['error']}")
        us_asy = wait_until(lambda: read_partition(regions.bootstrap(US), asy, 0, timeout=30)[0], 60,
                            what="us-east's copy readable")
        for off, v in eu_acks[asy].items():
            if off in us_asy and lost:
                assert us_asy[off] != v or off not in us_acks[asy], \
                    f"{asy}: eu-west's record at {off} was spliced into us-east's diverged copy"
        assert all(us_asy.get(o) == us_acks[asy][o] for o in lost), "us-east's own records were overwritten"
        if lost:
            err, _, end = epoch_end(leader_bootstrap(regions, US, asy, 0), asy, 0, old_epoch)
            assert err == 0 and end > fork, f"us-east: epoch {old_epoch} ends at {end} (error {err})"
        # A write in us-east is forwarded to the home, eu-west: it is in eu-west's log at the
        # offset us-east's client was given, and never in us-east's diverged copy.
        r = produce_all(regions.bootstrap(US), asy, [{"value": b"late", "partition": 0}], acks="all",
                        **{"message.timeout.ms": 30000})
        assert r[0][0] is None, f"a produce in us-east to a topic homed in eu-west failed: {r}"
        late_at = r[0][2]
        assert read_partition(regions.bootstrap(EU), asy, 0, timeout=60)[0].get(late_at) == b"late", \
            f"the forwarded write is not at {late_at} in eu-west"
        assert b"late" not in read_partition(regions.bootstrap(US), asy, 0, timeout=60)[0].values(), \
            "the write went into us-east's diverged copy"


def test_automatic_failover_promotes_the_mirror_when_the_home_is_lost(witness_regions):
    """chronik.failover.auto=true with a 2 s timeout: kill -9 every us-east process under
    load; with no command, eu-west takes the topic at epoch 2 once us-east has been silent
    for the timeout and its lease expired; a topic without the config stays homed in
    us-east; the acknowledged records eu-west lacks are a suffix."""
    regions = witness_regions
    auto, manual = unique_topic("fo-auto"), unique_topic("fo-manual")
    make_topic(regions, US, auto, 2, {"chronik.failover.auto": "true", "chronik.failover.timeout.ms": "2000"})
    make_topic(regions, US, manual, 1)
    for t, n in ((auto, 2), (manual, 1)):
        wait_topic_in(regions, EU, t, n)
    load = ProducerThread(regions.bootstrap(US), auto, [0, 1], rate=150, max_messages=20_000, max_seconds=120,
                          flush_timeout=5).start()
    try:
        wait_until(lambda: load.acks.count() >= 400, 60, what="400 acks")
        killed = kill_region(regions, US)
    finally:
        load.abandon()

    def home_in_eu(topic):
        s = regions.cluster(EU).home_state(topic)
        return s if s and s["home"] == EU and len(s["partitions"]) == s["partition_count"] \
            and all(p["role"] == "home" for p in s["partitions"]) else None
    state = wait_until(lambda: home_in_eu(auto), 60, interval=0.2, what="eu-west taking the home of the auto topic")
    took = time.monotonic() - killed
    assert state["epoch"] == 2, state
    assert took >= 2.0, f"taken {took:.1f}s after the kill, before the 2 s timeout"
    print(f"\nautomatic failover: eu-west took {auto} {took:.1f}s after us-east was killed")
    s = regions.cluster(EU).home_state(manual)
    assert s["home"] == US and s["epoch"] == 1, s
    for p in range(2):
        log, _, hi = read_partition(regions.bootstrap(EU), auto, p, timeout=60)
        for (pp, off), v in load.acks.acked.items():
            if pp == p and off < hi:
                assert log.get(off) == v, f"{auto}/{p}: acked offset {off} below eu-west's end {hi} differs"
    reports = produce_all(regions.bootstrap(EU), auto, [{"value": b"after", "partition": 0}], acks="all")
    assert reports[0][0] is None, reports
    assert "automatic failover: home role taken" in regions.dclink(EU).log_text()
