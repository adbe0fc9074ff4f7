"""Failback: `chronik ctl failback` brings a region back in line after a failover moved its
topics' home away while it was still taking writes (docs/failover.md, "Failback").

us-east is cut off from eu-west and the witness (wan-sim) while its producers keep writing,
then killed; eu-west is failed over to and takes writes. us-east comes back holding records
eu-west never had. The failback copies them into the recovery topic, cuts us-east's copies
back (a replicated truncation on every replica), and us-east mirrors eu-west again.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest

from confluent_kafka import Consumer, TopicPartition

from ackcheck import ProducerThread, read_partition
from harness import wait_until
from cluster import create_topic
from kclient import produce_all, unique_topic, watermarks
from regions import Regions
from test_dclink import make_topic, wait_topic_in
from test_failover import LEASE, failover, kill_region
from test_switchover import broker_args, switchover

US, EU = "us-east", "eu-west"
PARTITIONS = 2


def failback(regions: Regions, region: str, *topics: str, extra: tuple = (),
             topology: bool = False) -> subprocess.CompletedProcess:
    """`chronik ctl failback --region R --topic T... --json`, with every live broker (or the
    topology file, which names dead brokers too)."""
    where = ["--topology", str(regions.topology_path)] if topology else broker_args(regions)
    args = [a for t in topics for a in ("--topic", t)]
    return subprocess.run([str(regions.binary), "ctl", "failback", "--region", region, "--json", "--timeout-s", "120",
                           *where, *args, *extra], capture_output=True, text=True, timeout=300)


def read_recovered(bootstrap: str, topic: str, partition: int) -> dict[int, tuple[bytes, dict]]:
    """{original offset: (value, headers)} of a recovery topic's partition, read to its end."""
    lo, hi = watermarks(bootstrap, topic, partition, timeout=30)
    out: dict[int, tuple[bytes, dict]] = {}
    if hi <= lo:
        return out
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("fb-read"), "enable.auto.commit": False,
                  "auto.offset.reset": "error"})
    try:
        c.assign([TopicPartition(topic, partition, lo)])
        last, deadline = -1, time.monotonic() + 60
        while last < hi - 1 and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    continue
                last = max(last, m.offset())
                h = {k: v for k, v in (m.headers() or [])}
                orig = int(h["chronik.original.offset"])
                assert orig not in out, f"{topic}/{partition}: offset {orig} recovered twice"
                out[orig] = (m.value(), h)
        assert last >= hi - 1, f"read {topic}/{partition} up to {last} of [{lo}, {hi})"
    finally:
        c.close()
    return out


def log_end(regions: Regions, region: str, topic: str, p: int) -> int:
    return watermarks(regions.bootstrap(region), topic, p, timeout=30)[1]


def diverge(regions: Regions, topic: str, check_refusals: bool = False,
            empty_mirror: bool = False) -> tuple[dict, dict]:
    """us-east writes while cut off, is killed, eu-west is failed over to and written, us-east
    comes back and heals. With `empty_mirror`, eu-west's dc-link is down while us-east writes,
    so eu-west is promoted holding nothing of the topic (and may stamp the very epoch us-east
    stamped, from the same offset 0). Returns (us-east's acks {(p, offset): value}, us-east's logs
    {p: (log, lo, hi)} before the failback)."""
    make_topic(regions, US, topic, PARTITIONS)
    wait_topic_in(regions, EU, topic, PARTITIONS)
    if check_refusals:
        # Bad input, nothing changed: the home never moved away from us-east; eu-west was
        # never the home.
        out = failback(regions, US, topic)
        assert out.returncode != 0 and "nothing to fail back" in out.stderr, out.stderr
        out = failback(regions, EU, topic)
        assert out.returncode != 0 and "never demoted" in out.stderr, out.stderr

    if empty_mirror:
        regions.kill9_dclink(EU)
    load = ProducerThread(regions.bootstrap(US), topic, list(range(PARTITIONS)), rate=150, max_messages=20_000,
                          max_seconds=120, flush_timeout=5, **{"message.timeout.ms": 60_000})
    load.start()
    try:
        wait_until(lambda: load.acks.count() >= 400, 60, what="400 acks in us-east")
        # Cut off: us-east keeps acknowledging until its lease runs out, records eu-west
        # never receives. Then it is lost altogether.
        regions.isolate(US)
        cut = time.monotonic()
        wait_until(lambda: time.monotonic() > cut + LEASE["duration_ms"] / 1000
                   and time.monotonic() - max(load.acks.times.values()) > 2, 30,
                   what="us-east no longer acknowledging")
    finally:
        load.abandon()
    kill_region(regions, US)
    us_acked = dict(load.acks.acked)
    if empty_mirror:
        regions.restart_dclink(EU, timeout=60, ready=False)

    out = failover(regions, EU, topic)
    assert out.returncode == 0, (out.stdout, out.stderr)
    eu_written = produce_all(regions.bootstrap(EU), topic,
                             [{"value": b"eu-%d" % i, "partition": i % PARTITIONS} for i in range(40)],
                             acks="all")
    assert all(r[0] is None for r in eu_written), eu_written

    if check_refusals:
        # us-east is still down: refused.
        out = failback(regions, US, topic, topology=True)
        assert out.returncode != 0 and "unreachable" in out.stderr, out.stderr

    for i in regions.cluster(US).ids:
        regions.restart_broker(US, i, timeout=120)
    regions.restart_dclink(US, timeout=60, ready=False)
    regions.isolate(US, on=False)
    us_before = {p: read_partition(regions.bootstrap(US), topic, p, timeout=60) for p in range(PARTITIONS)}
    return us_acked, us_before


def check_recovered(regions: Regions, topic: str, res: dict, us_acked: dict, us_before: dict) -> None:
    """Every record us-east acknowledged is in eu-west's log at its offset, or in the
    recovery topic (same partition, same value, saying where it was); the recovery topic
    holds exactly us-east's records past each divergence point, once; both regions end
    byte-identical on every replica."""
    recovery = res["recovery_topic"]
    assert recovery == f"__chronik.divergent.{topic}" and res["home"] == EU, res
    total = 0
    for p in range(PARTITIONS):
        us_log, _, end = us_before[p]
        eu_log, _, _ = read_partition(regions.bootstrap(EU), topic, p, timeout=60)
        # Where the logs part, by content: the recovery topic must hold exactly what follows.
        fork = next((o for o in sorted(us_log) if eu_log.get(o) != us_log[o]), end)
        rec = read_recovered(regions.bootstrap(EU), recovery, p)
        assert sorted(rec) == list(range(fork, end)), f"{recovery}/{p}: {sorted(rec)[:5]}… vs [{fork}, {end})"
        for off, (v, h) in rec.items():
            assert v == us_log[off], f"{recovery}/{p}: original offset {off} holds {v!r}, us-east had {us_log[off]!r}"
            assert h["chronik.original.region"] == US.encode() and h["chronik.original.partition"] == b"%d" % p, h
            assert int(h["chronik.original.epoch"]) > 0, h
        for (pp, off), v in us_acked.items():
            if pp == p:
                assert eu_log.get(off) == v or rec.get(off, (None,))[0] == v, \
                    f"{topic}/{p}: us-east acked {v!r} at {off}; neither eu-west nor {recovery} holds it"
        total += len(rec)
    assert total == res["records_recovered"], (total, res)
    assert total > 0, "the scenario produced no divergence"
    for p in range(PARTITIONS):
        regions.assert_identical(topic, p, EU, timeout=120)


def test_failback_keeps_every_diverged_record_and_lines_the_region_up(tmp_path, chronik_cluster_binary):
    with Regions(tmp_path / "failback", names=(US, EU), brokers=3, binary=chronik_cluster_binary,
                 witness=True, witness_paths=True, lease=LEASE) as regions:
        topic = unique_topic("fb")
        us_acked, us_before = diverge(regions, topic, check_refusals=True)

        # A recovery topic name taken by an ordinary topic: refused, nothing changed.
        create_topic(regions.cluster(EU), f"taken.{topic}", partitions=PARTITIONS, replication_factor=3)
        out = failback(regions, US, topic, extra=("--recovery-prefix", "taken."))
        assert out.returncode != 0 and "is not the recovery topic" in out.stderr, out.stderr
        for p in range(PARTITIONS):
            assert log_end(regions, US, topic, p) == us_before[p][2], "a refused failback changed us-east's log"

        out = failback(regions, US, topic)
        assert out.returncode == 0, (out.stdout, out.stderr)
        (res,) = json.loads(out.stdout)["topics"]
        print(f"\nfailback: {res['records_recovered']} records recovered in {res['elapsed_ms']} ms; "
              f"{[(p['partition'], p['divergence'], p['log_end']) for p in res['partitions']]}")

        check_recovered(regions, topic, res, us_acked, us_before)

        # Again: nothing left to do, nothing copied twice.
        out = failback(regions, US, topic)
        assert out.returncode == 0, (out.stdout, out.stderr)
        (again,) = json.loads(out.stdout)["topics"]
        assert again["copied_now"] == 0 and again["records_recovered"] == res["records_recovered"], again

        # And the home moves back with zero loss.
        switchover(regions, US, topic)
        back = produce_all(regions.bootstrap(US), topic, [{"value": b"back-%d" % i, "partition": 0} for i in range(10)],
                           acks="all")
        assert all(r[0] is None for r in back), back
        regions.wait_mirrored(topic, PARTITIONS, US, timeout=60)
        for p in range(PARTITIONS):
            regions.assert_identical(topic, p, US, timeout=60)

        # eu-west's dc-link keeps nothing of its time as the home, nor the high watermarks us-east
        # announced for its diverged log before the failback: its data-at-risk figures are true again.
        def eu_settled():
            lag = regions.lag(EU)
            shipping = [r for r in lag.get("partitions", []) if r["topic"] == topic]
            heard = [r for r in lag.get("received", []) if r["topic"] == topic]
            return not shipping and len(heard) == PARTITIONS and all(
                r["link"] == f"{US}->{EU}" and r["at_risk_records"] == 0 for r in heard)
        wait_until(eu_settled, 30, what=f"eu-west's lag rows for {topic} back to a mirror's, nothing at risk")


@pytest.mark.parametrize("step", ["copying them to", "cut back to", "catching up"])
def test_failback_interrupted_anywhere_completes_when_run_again(tmp_path, chronik_cluster_binary, step):
    """eu-west promoted holding nothing of the topic; kill -9 the CLI at a step (while it
    copies the diverged records, once a partition has been cut back, while a cut partition
    catches up), then kill -9 us-east's partition leaders while the next run copies and
    cuts; a third run completes, with the same outcome as an uninterrupted failback:
    nothing copied twice, nothing lost, logs identical."""
    with Regions(tmp_path / "failback-crash", names=(US, EU), brokers=3, binary=chronik_cluster_binary,
                 witness=True, witness_paths=True, lease=LEASE) as regions:
        topic = unique_topic("fb-crash")
        us_acked, us_before = diverge(regions, topic, empty_mirror=True)
        cmd = [str(regions.binary), "ctl", "failback", "--region", US, "--topic", topic, "--json",
               "--timeout-s", "120", *broker_args(regions)]

        def run_until(marker: str) -> str:
            """Runs the CLI until its stderr shows `marker`; returns what it printed."""
            proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
            seen = []
            try:
                for line in proc.stderr:
                    seen.append(line)
                    if marker in line:
                        break
            finally:
                proc.kill()
                proc.wait(timeout=10)
            return "".join(seen)

        seen = run_until(step)
        assert step in seen, seen
        # Next run: the leaders of us-east's partitions die while it copies and cuts.
        leaders = {regions.cluster(US).quorum_leader(topic, p)[0] for p in range(PARTITIONS)}
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for node in leaders:
            regions.cluster(US).kill9(node)
        proc.communicate(timeout=300)
        for node in leaders:
            regions.restart_broker(US, node, timeout=120)

        out = failback(regions, US, topic)
        assert out.returncode == 0, (out.stdout, out.stderr)
        (res,) = json.loads(out.stdout)["topics"]
        check_recovered(regions, topic, res, us_acked, us_before)
