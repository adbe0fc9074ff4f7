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
import threading
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
from test_metadata_sync import group_offsets
from test_switchover import CliRun, broker_args, switchover, topic_homes

US, EU = "us-east", "eu-west"
PARTITIONS = 2
MIRRORED_FIRST = 100


def failback_argv(regions: Regions, region: str, *topics: str, extra: tuple = (), topology: bool = False) -> list[str]:
    where = ["--topology", str(regions.topology_path)] if topology else broker_args(regions)
    args = [a for t in topics for a in ("--topic", t)]
    return [str(regions.binary), "ctl", "failback", "--region", region, "--json", "--timeout-s", "120",
            *where, *args, *extra]


def failback(regions: Regions, region: str, *topics: str, extra: tuple = (),
             topology: bool = False) -> subprocess.CompletedProcess:
    """`chronik ctl failback --region R --topic T... --json`, with every live broker (or the
    topology file, which names dead brokers too)."""
    return subprocess.run(failback_argv(regions, region, *topics, extra=extra, topology=topology),
                          capture_output=True, text=True, timeout=300)


def failback_done(regions: Regions, region: str, topic: str) -> dict:
    """A failback of one topic that must succeed: its `--json` result row."""
    out = failback(regions, region, topic)
    assert out.returncode == 0, (out.stdout, out.stderr)
    (res,) = json.loads(out.stdout)["topics"]
    return res


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


class GroupReader:
    """A consumer group member reading `topic` in one region in a thread from the earliest
    offset, committing what it read (synchronously, after each poll that returned records).
    got[(p, offset)] = value of every record it was given; errors: every error it saw."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.topic, self.group = topic, group
        self.got: dict[tuple[int, int], bytes] = {}
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                           "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        self.c.subscribe([topic])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            while not self.stop.is_set():
                msgs = self.c.consume(num_messages=500, timeout=0.2)
                read = False
                for m in msgs:
                    if m.error():
                        self.errors.append(str(m.error()))
                        continue
                    self.got[(m.partition(), m.offset())] = m.value()
                    read = True
                if read:
                    try:
                        self.c.commit(asynchronous=False)
                    except Exception as e:  # noqa: BLE001 - kept; a missing commit shows in the checks
                        self.errors.append(f"commit: {e}")
        finally:
            self.c.close()

    def ends(self) -> dict[int, int]:
        """{p: 1 + the highest offset read}."""
        out: dict[int, int] = {}
        for p, o in list(self.got):
            out[p] = max(out.get(p, 0), o + 1)
        return out

    def wait_committed_everywhere(self, regions: Regions, partitions: int, timeout: float = 60.0) -> None:
        """Until the group has a commit for every partition, seen in every region."""
        wait_until(lambda: all(all(group_offsets(regions.bootstrap(r), self.group, self.topic).get(p, -1) > 0
                                   for p in range(partitions)) for r in regions.names), timeout,
                   what=f"{self.group}'s commits in every region")

    def finish(self, regions: Regions, region: str, partitions: int, timeout: float = 60.0) -> None:
        """Once it read every partition to `region`'s high watermark: stop, and check its
        last commit there is that high watermark."""
        hws = {p: regions.leader_state(region, self.topic, p)[1]["high_watermark"] for p in range(partitions)}
        wait_until(lambda: all(self.ends().get(p, 0) >= hw for p, hw in hws.items()), timeout,
                   what=f"{self.group} read {region}'s {self.topic} to {hws}")
        self.close()
        assert not self.errors, f"{self.group}: {self.errors[:5]}"
        wait_until(lambda: group_offsets(regions.bootstrap(region), self.group, self.topic) == hws, 30,
                   what=f"{self.group}'s commits in {region} at {hws}")

    def close(self) -> None:
        self.stop.set()
        self.thread.join(30)
        assert not self.thread.is_alive(), f"{self.group}: consumer thread did not stop"


def log_end(regions: Regions, region: str, topic: str, p: int) -> int:
    return watermarks(regions.bootstrap(region), topic, p, timeout=30)[1]


def diverge(regions: Regions, topic: str, check_refusals: bool = False,
            empty_mirror: bool = False, groups: dict | None = None) -> tuple[dict, dict]:
    """us-east writes while cut off, is killed, eu-west is failed over to and written, us-east
    comes back and heals. Unless `empty_mirror`, eu-west holds at least MIRRORED_FIRST records
    of each partition before the cut. With `empty_mirror`, eu-west's dc-link is down while
    us-east writes, so eu-west is promoted holding nothing of the topic (and may stamp the very
    epoch us-east stamped, from the same offset 0). With `groups` (a dict), a consumer group
    reads and commits in each region (groups[region] = its GroupReader): both groups' commits
    are seen in both regions before the cut; us-east's reads on while cut off (the records
    eu-west never gets) and each is stopped once it read everything its region holds, its last
    commit made there, before us-east is killed. Returns (us-east's acks {(p, offset): value},
    us-east's logs {p: (log, lo, hi)} before the failback)."""
    make_topic(regions, US, topic, PARTITIONS)
    wait_topic_in(regions, EU, topic, PARTITIONS)
    if groups is not None:
        for r in (US, EU):
            groups[r] = GroupReader(regions.bootstrap(r), topic, unique_topic(f"fb-g-{r}"))
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
        if not empty_mirror:
            # eu-west holds a prefix of each partition (a new topic's mirroring starts a few
            # seconds after its creation): the logs part after it, not at 0.
            wait_until(lambda: all(regions.leader_state(EU, topic, p, timeout=5)[1]["high_watermark"]
                                   >= MIRRORED_FIRST for p in range(PARTITIONS)), 60,
                       what=f"{MIRRORED_FIRST} records of each partition mirrored to eu-west")
        for g in (groups or {}).values():
            g.wait_committed_everywhere(regions, PARTITIONS)
        # Cut off: us-east keeps acknowledging until its lease runs out, records eu-west
        # never receives. Then it is lost altogether.
        regions.isolate(US)
        cut = time.monotonic()
        wait_until(lambda: time.monotonic() > cut + LEASE["duration_ms"] / 1000
                   and time.monotonic() - max(load.acks.times.values()) > 2, 30,
                   what="us-east no longer acknowledging")
        for r, g in (groups or {}).items():
            g.finish(regions, r, PARTITIONS)
    finally:
        load.abandon()
        for g in (groups or {}).values():
            g.close()
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


def forks(regions: Regions, topic: str, us_before: dict) -> dict[int, tuple[int, int]]:
    """{p: (where us-east's log (as it was before the failback) leaves eu-west's, by content,
    us-east's log end then)}."""
    out = {}
    for p in range(PARTITIONS):
        us_log, _, end = us_before[p]
        eu_log, _, _ = read_partition(regions.bootstrap(EU), topic, p, timeout=60)
        out[p] = (next((o for o in sorted(us_log) if eu_log.get(o) != us_log[o]), end), end)
    return out


def assert_homed_in_eu(regions: Regions, topic: str, timeout: float = 30.0) -> None:
    """Both regions know eu-west as the home at epoch 2, no move under way; every partition's
    leader in eu-west holds the home role, every one in us-east a mirror's."""
    def settled():
        h = topic_homes(regions, topic)
        return (set(h) == {US, EU} and all(v[:3] == (EU, 2, None) for v in h.values())
                and h[EU][3] == {p: ("home", 2) for p in range(PARTITIONS)}
                and sorted(h[US][3]) == list(range(PARTITIONS))
                and all(role == "mirror" for role, _ in h[US][3].values()))
    try:
        wait_until(settled, timeout, what=f"{topic} homed in eu-west (epoch 2), us-east's copies mirrors")
    except TimeoutError as e:
        raise AssertionError(f"{e}: {topic_homes(regions, topic)}") from None


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

        res = failback_done(regions, US, topic)
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

        res = failback_done(regions, US, topic)
        check_recovered(regions, topic, res, us_acked, us_before)


@pytest.mark.parametrize("marker", ["cut back to", "catching up"], ids=["at-the-cut", "while-catching-up"])
def test_failback_cli_killed_at_a_step_completes_when_run_again(tmp_path, chronik_cluster_binary, marker):
    """kill -9 of the failback CLI once it printed that it cut partition 0 back (partition 1
    maybe copied, maybe not), or while us-east catches up (every partition cut; eu-west's link
    into us-east blackholed so that it cannot be done yet); then the command again. The step the
    first run finished holds (partition 0's diverged records all in the recovery topic before
    its cut; every cut partition no longer diverges) and the second run ends where an
    uninterrupted failback does: every diverged record in the recovery topic once, none missing;
    every us-east ack in eu-west at its offset or recovered; logs byte-identical to the high
    watermark across regions and replicas; eu-west the home (epoch 2), us-east's copies mirrors."""
    with Regions(tmp_path / "failback-step", names=(US, EU), brokers=3, binary=chronik_cluster_binary,
                 witness=True, witness_paths=True, lease=LEASE) as regions:
        topic = unique_topic("fb-step")
        us_acked, us_before = diverge(regions, topic)
        fork = forks(regions, topic, us_before)
        assert all(f < end for f, end in fork.values()), f"a partition did not diverge: {fork}"
        recovery = f"__chronik.divergent.{topic}"
        catching_up = marker == "catching up"
        if catching_up:
            # us-east demoted first (the failback waits for that, over the link), then nothing
            # reaches us-east's dc-link: the catch-up cannot finish.
            wait_until(lambda: (h := topic_homes(regions, topic).get(US)) and h[:2] == (EU, 2)
                       and len(h[3]) == PARTITIONS and all(r == "mirror" for r, _ in h[3].values()), 60,
                       what="us-east's copies demoted to mirrors of eu-west")
            regions.blackhole(US)
        run = CliRun(failback_argv(regions, US, topic))
        line = run.wait_for(marker, 180)
        run.kill9()
        rc, _, err = run.wait(30)
        assert rc == -9, (rc, err)
        assert ("partition 0: cut back to" in line) if not catching_up else ("catching up" in line), line

        # What the killed run did is whole: a partition it cut holds no diverged record any
        # more, and all of them are in the recovery topic.
        cut = [p for p in range(PARTITIONS) if f"partition {p}: cut back to" in err]
        assert cut == list(range(PARTITIONS)) if catching_up else cut[:1] == [0], err
        for p in cut:
            f, end = fork[p]
            rec = read_recovered(regions.bootstrap(EU), recovery, p)
            assert sorted(rec) == list(range(f, end)), f"{recovery}/{p} before the cut: {sorted(rec)[:5]}… vs [{f}, {end})"
            _, us = regions.leader_state(US, topic, p)
            if catching_up:
                assert us["log_end_offset"] == f, f"{topic}/{p} in us-east: log end {us['log_end_offset']}, cut at {f}"
            us_log, _, _ = read_partition(regions.bootstrap(US), topic, p, timeout=60)
            eu_log, _, _ = read_partition(regions.bootstrap(EU), topic, p, timeout=60)
            assert all(eu_log.get(o) == v for o, v in us_log.items()), f"{topic}/{p}: us-east still diverges after its cut"
        if catching_up:
            regions.blackhole(US, on=False)

        res = failback_done(regions, US, topic)
        print(f"\nkilled at {marker!r}; the second run: {res['copied_now']} copied now, "
              f"{res['records_recovered']} recovered in all; {fork}")
        check_recovered(regions, topic, res, us_acked, us_before)
        if catching_up:
            assert res["copied_now"] == 0, res
        assert_homed_in_eu(regions, topic)


def resume_group(bootstrap: str, topic: str, group: str, ends: dict[int, int],
                 timeout: float = 60.0) -> tuple[dict[tuple[int, int], bytes], list[str]]:
    """A member of `group` subscribing in a region (no offset reset: a position outside the
    log is an error, not silently moved) reads until each partition's offset `ends[p]`;
    returns ({(p, offset): value} read, errors). It commits nothing."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "error",
                  "enable.auto.commit": False, "fetch.wait.max.ms": 100})
    got: dict[tuple[int, int], bytes] = {}
    errors: list[str] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        nxt = {}
        while time.monotonic() < deadline and not all(nxt.get(p, -1) >= end for p, end in ends.items()):
            for m in c.consume(num_messages=500, timeout=0.5):
                if m.error():
                    errors.append(str(m.error()))
                    continue
                got[(m.partition(), m.offset())] = m.value()
                nxt[m.partition()] = max(nxt.get(m.partition(), 0), m.offset() + 1)
            if len(errors) > 20:
                break
    finally:
        c.close()
    return got, errors


class GroupOffsetsInvalid(AssertionError):
    """A group's committed offsets after a failback are outside the log, or skip records."""


def test_failback_leaves_consumer_group_offsets_valid(tmp_path, chronik_cluster_binary):
    """A consumer group reads and commits in each region before the failover (us-east's also while
    cut off, on the records that diverge); after the failback, each group's committed offsets are
    the same in both regions, within the log (<= the high watermark), and resuming from them
    skips nothing: every record of eu-west's log below a committed offset is one the group read
    (same offset, same value), so every record acknowledged before the failover that eu-west holds
    is read or still ahead; a member resuming in eu-west starts at the committed offset, without
    an offset-out-of-range error, and reads to the end."""
    with Regions(tmp_path / "failback-groups", names=(US, EU), brokers=3, binary=chronik_cluster_binary,
                 witness=True, witness_paths=True, lease=LEASE) as regions:
        topic = unique_topic("fb-groups")
        groups: dict = {}
        us_acked, us_before = diverge(regions, topic, groups=groups)
        res = failback_done(regions, US, topic)
        check_recovered(regions, topic, res, us_acked, us_before)
        fork = forks(regions, topic, us_before)
        logs = {p: read_partition(regions.bootstrap(EU), topic, p, timeout=60) for p in range(PARTITIONS)}
        hws = {p: hi for p, (_, _, hi) in logs.items()}
        problems = []
        # eu-west's group first (it never read anything that diverged), then us-east's.
        for r in (EU, US):
            g = groups[r]
            try:
                wait_until(lambda: group_offsets(regions.bootstrap(US), g.group, topic)
                           == group_offsets(regions.bootstrap(EU), g.group, topic), 30,
                           what=f"{g.group}'s commits the same in both regions")
            except TimeoutError:
                problems.append(f"{g.group} (read in {r}): commits differ: us-east "
                                f"{group_offsets(regions.bootstrap(US), g.group, topic)}, eu-west "
                                f"{group_offsets(regions.bootstrap(EU), g.group, topic)}")
                continue
            committed = group_offsets(regions.bootstrap(EU), g.group, topic)
            for p in range(PARTITIONS):
                log, lo, hi = logs[p]
                c = committed.get(p, -1)
                if not lo <= c <= hi:
                    problems.append(f"{g.group} (read in {r}): {topic}/{p} committed at {c}, outside eu-west's "
                                    f"log [{lo}, {hi}] (divergence at {fork[p][0]}, us-east ended at {fork[p][1]})")
                    continue
                # Acknowledged before the failover, in eu-west at its offset, behind the commit, never read.
                lost = sorted(off for (pp, off), v in us_acked.items()
                              if pp == p and log.get(off) == v and off < c and g.got.get((p, off)) != v)
                if lost:
                    problems.append(f"{g.group} (read in {r}): {topic}/{p} committed at {c}: {len(lost)} records "
                                    f"acknowledged before the failover never read, from offset {lost[0]}")
                skipped = [o for o in range(lo, c) if g.got.get((p, o)) != log[o]]
                if skipped:
                    problems.append(f"{g.group} (read in {r}): {topic}/{p} committed at {c} skips {len(skipped)} "
                                    f"records it never read, from offset {skipped[0]} (divergence at {fork[p][0]})")
            # A member resumes in eu-west: at the committed offset, reading to the end.
            bad = any(g.group in x for x in problems)
            ends = {p: hws[p] for p in range(PARTITIONS) if committed.get(p) != hws[p]}
            got, errors = resume_group(regions.bootstrap(EU), topic, g.group, ends, timeout=10 if bad else 60)
            first = {p: min((o for pp, o in got if pp == p), default=None) for p in ends}
            if bad:
                problems.append(f"{g.group}: a member resuming in eu-west read from {first}, errors {errors[:2]}")
                continue
            if errors or first != {p: committed[p] for p in ends} or any(
                    got.get((p, o)) != logs[p][0][o] for p in ends for o in range(committed[p], hws[p])):
                problems.append(f"{g.group} (read in {r}): resumed in eu-west at {first}, committed {committed}, "
                                f"high watermarks {hws}; errors {errors[:3]}")
        if problems:
            raise GroupOffsetsInvalid("\n".join(problems))
