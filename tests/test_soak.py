"""Cross-region chaos soak: two Chronik regions (us-east, eu-west; 3 brokers each, real
processes) mirrored by dc-link through one wan-sim per region (tests/regions.py), under
random faults from a seeded RNG.

  CHAOS_SEED=N        replay a fault schedule (default: random; printed at the start)
  CHAOS_MINUTES=F     length of the fault phase in minutes (float, default 2)
  SOAK_MAX_PAUSE_S=F  largest allowed pause between two acks of the async topic (default 60)

Workload, for the whole run:
  * `soak-async-*`: homed in us-east, mirrored to eu-west, chronik.replication.mode=async;
  * `soak-gq-*`:    homed in eu-west, mirrored to us-east, chronik.replication.mode=global_quorum
    (an acks=all produce is answered once the mirror region has it);
    both with chronik.home.region / chronik.mirror.regions / chronik.replication.mode set
    explicitly, 3 partitions, RF 3;
  * one idempotent acks=all producer per topic, writing in its home region;
  * one consumer group per region (one member, manual synchronous commits every second)
    subscribed to both topics: it reads the home partitions of one and the mirror
    partitions of the other.

Faults (one every 1.5-5 s, each undone after a random time):
  * kill -9 of a broker (half the time the leader of a soak partition), restart 3-20 s
    later; never more than one broker of a region (a minority) down at once;
  * kill -9 of a region's dc-link, restart 2-15 s later;
  * on one region's wan-sim (every link INTO that region): a blackhole (sometimes longer
    than the 10 s QUIC idle timeout), delay with jitter, reordering, a bandwidth cap, or
    packet loss on that region's links only (asymmetric: the other region's links stay
    clean unless impaired themselves); cleared 4-25 s later.

Checked:
  * during the run, before every fault and every loop turn: each global_quorum record
    acknowledged so far is within the mirror region's committed log (the mirror partition
    leader's high watermark covers it);
  * after healing and restarting everything (and more acks on both topics):
    - every acknowledged record is in its home partition exactly once, at its offset, in
      producer order, offsets contiguous (ackcheck.verify_partition);
    - each mirror partition's stored log is byte-identical to its home's up to the high
      watermark, same epoch history and log start, every replica in both regions
      converged (Regions.assert_identical), and a consumer in the mirror region reads
      exactly the home's records;
    - each consumer group: every record below its final committed offset was delivered
      at least once, with the value the home log holds; committed offsets (its own
      successful commits and the coordinator's answers, sampled every 2 s) never went
      backwards; librdkafka never reset a position it was fetching from (OFFSET_OUT_OF_RANGE
      for an offset the partition had already served, seen through the client's log), and
      never jumped forward past offsets it was not given; each member's client log is
      saved as client-<group>.log in the deployment directory;
  * the async topic (home always has a majority) never went SOAK_MAX_PAUSE_S without an ack.
Summary line (always printed, `-s` to see it): `SOAK SUMMARY seed=... faults={...}
acked=... largest_write_pause=...`.
"""

from __future__ import annotations

import collections
import logging
import os
import re
import random
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaException

from ackcheck import AckLog, ProducerThread, read_partition, verify_partition
from cluster import create_topic
from harness import wait_until
from kclient import topic_partitions
from regions import Regions

pytestmark = pytest.mark.chronik

US, EU = "us-east", "eu-west"
CHAOS_MINUTES = float(os.environ.get("CHAOS_MINUTES", "2"))
SOAK_MAX_PAUSE_S = float(os.environ.get("SOAK_MAX_PAUSE_S", "60"))
PARTITIONS = 3
ASYNC_RATE, GQ_RATE = 150, 40  # records/s (a 2-core machine runs 6 brokers, 2 dc-links, 2 wan-sims)
# Grace for a new mirror leader to apply what its predecessor had committed.
GQ_WITNESS_GRACE_S = 5.0


@pytest.fixture
def soak_regions(tmp_path, chronik_cluster_binary):
    r = Regions(tmp_path / "soak", names=(US, EU), brokers=3, binary=chronik_cluster_binary)
    try:
        r.start()
        yield r
    finally:
        r.stop()


# ---------------------------------------------------------------------------
# Consumer groups
# ---------------------------------------------------------------------------


class GroupMember(threading.Thread):
    """One member of a consumer group (subscribe, manual synchronous commit every second).

    delivered:  (topic, p, offset) -> value, every record the group handed out
    committed:  (topic, p) -> largest committed offset ever observed (own successful
                commits, and the coordinator's answer to OffsetFetch every 2 s)
    regressions: a committed offset observed lower than one observed before
    """

    def __init__(self, region: str, bootstrap: str, topics: list[str], max_seconds: float) -> None:
        super().__init__(daemon=True, name=f"group-{region}")
        self.region, self.bootstrap, self.topics = region, bootstrap, topics
        self.group = f"soak-{region}-{uuid.uuid4().hex[:6]}"
        self.max_seconds = max_seconds
        self.delivered: dict[tuple[str, int, int], bytes] = {}
        self.conflicts: list[str] = []
        self.committed: dict[tuple[str, int], int] = {}
        self.server_committed: dict[tuple[str, int], int] = {}
        self.regressions: list[str] = []
        self.errors: collections.Counter = collections.Counter()
        self.commits = 0
        self.error: BaseException | None = None
        self.lock = threading.Lock()
        self._stop_evt = threading.Event()
        # librdkafka's own log lines (e.g. "offset reset (at offset N ...)"), kept, not printed.
        self.client_log: list[str] = []
        self.last_offset: dict[tuple[str, int], int] = {}
        self.jumps: list[str] = []
        self.logger = logging.getLogger(f"soak.{self.group}")
        self.logger.propagate = False
        self.logger.setLevel(logging.INFO)
        member = self

        class _Keep(logging.Handler):
            def emit(self, record):
                if len(member.client_log) < 5000:
                    member.client_log.append(f"{time.strftime('%H:%M:%S')} {record.getMessage()}")

        self.logger.addHandler(_Keep())

    def offset_resets(self) -> list[str]:
        """librdkafka resetting a position it had been fetching from (OFFSET_OUT_OF_RANGE for
        an offset > 0 that this group was served up to): the broker answered out of range
        for an offset below its high watermark."""
        return [l for l in self.client_log if re.search(r"offset reset \(at offset [1-9]", l)]

    def describe(self, ends: dict[tuple[str, int], int]) -> str:
        with self.lock:
            delivered_max: dict[tuple[str, int], int] = {}
            for (t, p, o) in list(self.delivered):
                delivered_max[(t, p)] = max(delivered_max.get((t, p), -1), o)
            rows = [f"{t}/{p}: end {end}, coordinator {self.server_committed.get((t, p))}, own max "
                    f"{self.committed.get((t, p))}, delivered up to {delivered_max.get((t, p))}"
                    for (t, p), end in sorted(ends.items())]
        return (f"{self.group} ({self.region}): " + "; ".join(rows) + f"; errors {dict(self.errors)}; "
                f"commit regressions: {self.regressions[:5]}; last client log lines: {self.client_log[-8:]}")

    def start(self) -> "GroupMember":
        super().start()
        return self

    def _observe(self, tp, source: str) -> None:
        key = (tp.topic, tp.partition)
        with self.lock:
            if source == "coordinator":
                self.server_committed[key] = tp.offset
            prev = self.committed.get(key)
            if tp.offset < 0:
                if prev is not None and source == "coordinator":
                    self.regressions.append(f"{self.group} {key}: committed {prev}, later {source} reports none "
                                            f"({tp.offset})")
                return
            if prev is not None and tp.offset < prev:
                self.regressions.append(f"{self.group} {key}: committed {prev}, later {source} {tp.offset}")
            self.committed[key] = max(tp.offset, prev if prev is not None else tp.offset)

    def run(self) -> None:
        try:
            c = Consumer({
                "bootstrap.servers": self.bootstrap, "group.id": self.group, "auto.offset.reset": "earliest",
                "enable.auto.commit": False, "session.timeout.ms": 10000, "heartbeat.interval.ms": 1000,
                "fetch.wait.max.ms": 100, "reconnect.backoff.max.ms": 500, "socket.connection.setup.timeout.ms": 3000,
                "topic.metadata.refresh.interval.ms": 2000, "enable.partition.eof": False,
            }, logger=self.logger)
            try:
                c.subscribe(self.topics)
                deadline = time.monotonic() + self.max_seconds
                last_commit = last_check = time.monotonic()
                while not self._stop_evt.is_set() and time.monotonic() < deadline:
                    for m in c.consume(num_messages=500, timeout=0.2):
                        if m.error():
                            self.errors[str(m.error().code())] += 1
                            continue
                        key = (m.topic(), m.partition(), m.offset())
                        last = self.last_offset.get(key[:2])
                        if last is not None and m.offset() > last + 1:
                            # Forward past records never delivered (a fetch that answered
                            # from a later offset than asked); backwards is a rebalance.
                            self.jumps.append(f"{time.strftime('%H:%M:%S')} {key[0]}/{key[1]}: offset {last} "
                                              f"then {m.offset()} (leader epoch {m.leader_epoch()})")
                        self.last_offset[key[:2]] = m.offset()
                        prev = self.delivered.get(key)
                        if prev is not None and prev != m.value():
                            self.conflicts.append(f"{key}: {prev[:24]!r} then {m.value()[:24]!r}")
                        self.delivered[key] = m.value()
                    now = time.monotonic()
                    if now - last_commit >= 1.0:
                        last_commit = now
                        try:
                            for tp in c.commit(asynchronous=False) or []:
                                if tp.error is None:
                                    self._observe(tp, "own commit")
                            self.commits += 1
                        except KafkaException as e:
                            self.errors[f"commit:{e.args[0].name()}"] += 1
                    if now - last_check >= 2.0:
                        last_check = now
                        assigned = c.assignment()
                        if assigned:
                            try:
                                for tp in c.committed(assigned, timeout=5):
                                    if tp.error is None:
                                        self._observe(tp, "coordinator")
                            except KafkaException as e:
                                self.errors[f"committed:{e.args[0].name()}"] += 1
            finally:
                c.close()
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def caught_up(self, ends: dict[tuple[str, int], int]) -> bool:
        """The coordinator holds committed offset == ends[(topic, p)] for every partition."""
        with self.lock:
            return all(end == 0 or self.server_committed.get(k) == end for k, end in ends.items())

    def abandon(self) -> None:
        self._stop_evt.set()
        self.join(15)

    def stop(self) -> "GroupMember":
        self._stop_evt.set()
        self.join(30)
        if self.is_alive():
            raise AssertionError(f"group member {self.group} did not finish")
        if self.error:
            raise AssertionError(f"group member {self.group} failed: {self.error!r}")
        return self


# ---------------------------------------------------------------------------
# The fault schedule
# ---------------------------------------------------------------------------


class Chaos:
    """Random faults from `rng`; each scheduled to be undone after a random time."""

    WAN_KINDS = ("blackhole", "jitter", "reorder", "bandwidth", "asym_loss")

    def __init__(self, regions: Regions, rng: random.Random, topics: dict[str, str], t0: float) -> None:
        self.regions, self.rng, self.topics, self.t0 = regions, rng, topics, t0  # topics: name -> home
        self.broker_down: dict[str, dict[int, float]] = {r: {} for r in regions.names}  # region -> node -> restart at
        self.dclink_down: dict[str, float] = {}  # region -> restart at
        self.wan: dict[str, tuple[str, float]] = {}  # region -> (kind, clear at)
        self.counts: collections.Counter = collections.Counter()
        self.events: list[str] = []
        self.blackhole_s: list[float] = []

    def note(self, what: str) -> None:
        self.events.append(f"{time.monotonic() - self.t0:7.1f}s {what}")

    def undo_due(self, now: float, everything: bool = False) -> None:
        for r in self.regions.names:
            for node, at in sorted(self.broker_down[r].items()):
                if everything or at <= now:
                    self.regions.restart_broker(r, node, timeout=120)
                    del self.broker_down[r][node]
                    self.counts["broker_restart"] += 1
                    self.note(f"restart broker {r}/{node}")
            if r in self.dclink_down and (everything or self.dclink_down[r] <= now):
                self.regions.restart_dclink(r, timeout=60, ready=False)
                del self.dclink_down[r]
                self.counts["dclink_restart"] += 1
                self.note(f"restart dc-link {r}")
            if r in self.wan and (everything or self.wan[r][1] <= now):
                self.regions.wansim(r).set()
                self.note(f"clear wan {r} ({self.wan[r][0]})")
                del self.wan[r]

    def step(self) -> str | None:
        rng, now = self.rng, time.monotonic()
        choices: list[str] = []
        for r in self.regions.names:
            if not self.broker_down[r]:  # 3 brokers: at most one (a minority) down
                choices += [f"kill_broker:{r}"] * 2
            if r not in self.dclink_down:
                choices.append(f"kill_dclink:{r}")
            if r not in self.wan:
                choices += [f"wan:{r}"] * 2
        if not choices:
            return None
        action, region = rng.choice(choices).split(":")
        if action == "kill_broker":
            c = self.regions.cluster(region)
            node = rng.choice(c.ids)
            if rng.random() < 0.5:
                topic = rng.choice(sorted(self.topics))
                q = c.quorum_leader(topic, rng.randrange(PARTITIONS))
                if q is not None:
                    node = q[0]
            c.kill9(node)
            self.broker_down[region][node] = now + rng.uniform(3, 20)
            self.counts["broker_kill"] += 1
            what = f"kill -9 broker {region}/{node}"
        elif action == "kill_dclink":
            self.regions.kill9_dclink(region)
            self.dclink_down[region] = now + rng.uniform(2, 15)
            self.counts["dclink_kill"] += 1
            what = f"kill -9 dc-link {region}"
        else:
            kind = rng.choice(self.WAN_KINDS)
            hold = rng.uniform(4, 25)
            if kind == "blackhole":
                imp = {"blackhole": True}
                self.blackhole_s.append(hold)
            elif kind == "jitter":
                imp = {"delay_ms": round(rng.uniform(10, 60), 1), "jitter_ms": round(rng.uniform(5, 40), 1)}
            elif kind == "reorder":
                imp = {"delay_ms": round(rng.uniform(10, 40), 1), "reorder": round(rng.uniform(0.02, 0.2), 3)}
            elif kind == "bandwidth":
                imp = {"bandwidth_mbit": round(rng.uniform(0.5, 10), 2), "delay_ms": round(rng.uniform(5, 30), 1)}
            else:
                imp = {"loss": round(rng.uniform(0.01, 0.1), 3)}
            self.regions.wansim(region).set(**imp)
            self.wan[region] = (kind, now + hold)
            self.counts[kind] += 1
            what = f"wan {region} {imp} for {hold:.0f}s"
        self.note(what)
        return what


# ---------------------------------------------------------------------------
# Checks
# ---------------------------------------------------------------------------


class GqWitness:
    """Each global_quorum record acknowledged so far must be in the mirror region's committed
    log: read after taking the ack snapshot, the mirror partition leader's high watermark
    must cover the highest acked offset (a new leader gets GQ_WITNESS_GRACE_S to apply)."""

    def __init__(self, regions: Regions, topic: str, mirror: str, acks: AckLog) -> None:
        self.regions, self.topic, self.mirror, self.acks = regions, topic, mirror, acks
        self.checked = 0
        self.unreadable = 0
        self.violations: list[str] = []

    def _mirror_hw(self, p: int) -> tuple[int, int] | None:
        c = self.regions.cluster(self.mirror)
        q = c.quorum_leader(self.topic, p)
        if q is None:
            return None
        try:
            s = c.partition_state(q[0], self.topic, p, timeout=1.0)
        except (OSError, RuntimeError, ValueError):
            return None
        return (q[0], s["high_watermark"]) if s else None

    def check(self, when: str) -> None:
        with self.acks.lock:
            snapshot: dict[int, int] = {}
            for (p, o) in self.acks.acked:
                snapshot[p] = max(snapshot.get(p, 0), o + 1)
        for p, end in sorted(snapshot.items()):
            deadline = time.monotonic() + GQ_WITNESS_GRACE_S
            seen = []
            while True:
                got = self._mirror_hw(p)
                if got is not None:
                    seen.append(got)
                    if got[1] >= end:
                        self.checked += 1
                        break
                if time.monotonic() > deadline:
                    if seen:
                        self.violations.append(
                            f"{when}: {self.topic}/{p} acked up to offset {end - 1} (global_quorum), but the "
                            f"{self.mirror} leader's high watermark stayed below for {GQ_WITNESS_GRACE_S}s: "
                            f"(leader, hw) readings {seen[:3]}...{seen[-1:]}")
                    else:
                        self.unreadable += 1
                    break
                time.sleep(0.2)


def write_pauses(acks: AckLog, t0: float) -> tuple[float, float]:
    """(largest time between two consecutive acks, when it ended, seconds after t0)."""
    with acks.lock:
        times = sorted(acks.times.values())
    worst, at = 0.0, 0.0
    for a, b in zip(times, times[1:]):
        if b - a > worst:
            worst, at = b - a, b - t0
    return worst, at


def verify_topic(regions: Regions, topic: str, home: str, acks: AckLog) -> dict[int, dict[int, bytes]]:
    """Home log holds every ack exactly once; mirror byte-identical (dumps, epochs, log
    start, every replica); a mirror-region consumer reads the same records. Returns the
    home logs {p: {offset: value}}."""
    mirror = regions.mirrors_of(home)[0]
    logs = {}
    for p in range(PARTITIONS):
        regions.assert_identical(topic, p, home, timeout=180)
        log, lo, hi = read_partition(regions.bootstrap(home), topic, p, timeout=120)
        verify_partition(p, log, acks, lo, hi)
        mlog, mlo, mhi = read_partition(regions.bootstrap(mirror), topic, p, timeout=120)
        assert (mlo, mhi) == (lo, hi), f"{topic}/{p}: {mirror} reads [{mlo}, {mhi}), {home} [{lo}, {hi})"
        if mlog != log:
            diff = sorted(o for o in set(mlog) | set(log) if mlog.get(o) != log.get(o))
            raise AssertionError(f"{topic}/{p}: {mirror} reads other records than {home} at {len(diff)} offsets, "
                                 f"e.g. {diff[:10]}")
        logs[p] = log
    return logs


def group_problems(g: GroupMember, logs: dict[str, dict[int, dict[int, bytes]]]) -> list[str]:
    out = list(g.regressions[:10]) + [f"{g.group}: conflicting deliveries {c}" for c in g.conflicts[:5]]
    out += [f"{g.group} ({g.region}): OFFSET_OUT_OF_RANGE for an offset already served: {x}"
            for x in g.offset_resets()[:5]]
    out += [f"{g.group} ({g.region}): consumer skipped records: {x}" for x in g.jumps[:5]]
    for (t, p, o), v in sorted(g.delivered.items()):
        if logs[t][p].get(o) != v:
            out.append(f"{g.group}: delivered {t}/{p}@{o} = {v[:24]!r}, the home log has "
                       f"{logs[t][p].get(o, b'<none>')[:24]!r}")
            break
    for t, parts in logs.items():
        for p, log in parts.items():
            committed = g.committed.get((t, p), 0)
            missing = [o for o in sorted(log) if o < committed and (t, p, o) not in g.delivered]
            if missing:
                out.append(f"{g.group}: {len(missing)} records of {t}/{p} below committed offset {committed} were "
                           f"never delivered, e.g. {missing[:5]}")
    return out


# ---------------------------------------------------------------------------
# The soak
# ---------------------------------------------------------------------------


def _seed() -> int:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
    print(f"\nCHAOS_SEED={seed} CHAOS_MINUTES={CHAOS_MINUTES}")
    return seed


@pytest.mark.timeout(int(CHAOS_MINUTES * 60) + 1200)
def test_cross_region_chaos_soak(soak_regions):
    seed = _seed()
    try:
        _soak(soak_regions, seed, CHAOS_MINUTES * 60)
    except BaseException as e:
        e.add_note(f"CHAOS_SEED={seed} CHAOS_MINUTES={CHAOS_MINUTES} (rerun with these to replay the schedule)")
        raise


def _soak(regions: Regions, seed: int, duration: float) -> None:
    rng = random.Random(seed)
    suffix = uuid.uuid4().hex[:6]
    async_t, gq_t = f"soak-async-{suffix}", f"soak-gq-{suffix}"
    homes = {async_t: US, gq_t: EU}
    for topic, mode in ((async_t, "async"), (gq_t, "global_quorum")):
        home = homes[topic]
        mirror = regions.mirrors_of(home)[0]
        create_topic(regions.cluster(home), topic, partitions=PARTITIONS, replication_factor=3,
                     config={"chronik.home.region": home, "chronik.mirror.regions": mirror,
                             "chronik.replication.mode": mode})
        wait_until(lambda: (topic_partitions(regions.bootstrap(mirror), topic) or {}).keys() == set(range(PARTITIONS)),
                   60, interval=0.25, what=f"mirror topic {topic} in {mirror}")

    parts = list(range(PARTITIONS))
    run_for = duration + 900  # hard bound of every thread; stopped explicitly long before
    acks = {async_t: AckLog(), gq_t: AckLog()}
    producers = {
        async_t: ProducerThread(regions.cluster(US).bootstrap, async_t, parts, acks=acks[async_t], rate=ASYNC_RATE,
                                max_messages=int(ASYNC_RATE * run_for), max_seconds=run_for, tag="sa",
                                **{"message.timeout.ms": 120000}),
        gq_t: ProducerThread(regions.cluster(EU).bootstrap, gq_t, parts, acks=acks[gq_t], rate=GQ_RATE,
                             max_messages=int(GQ_RATE * run_for), max_seconds=run_for, tag="sg",
                             **{"message.timeout.ms": 180000}),
    }
    groups = {r: GroupMember(r, regions.cluster(r).bootstrap, [async_t, gq_t], run_for) for r in (US, EU)}
    witness = GqWitness(regions, gq_t, US, acks[gq_t])
    t0 = time.monotonic()
    chaos = Chaos(regions, rng, homes, t0)
    summary: dict = {}

    def summarize(outcome: str) -> None:
        pauses = {t: write_pauses(a, t0) for t, a in acks.items()}
        worst_t = max(pauses, key=lambda t: pauses[t][0])
        summary.update(
            seed=seed, minutes=CHAOS_MINUTES, outcome=outcome, faults=dict(sorted(chaos.counts.items())),
            faults_total=sum(chaos.counts.values()),
            acked={t: acks[t].count() for t in acks}, failed={t: len(acks[t].failed) for t in acks},
            produced={t: producers[t].produced for t in producers},
            pauses={t: f"{w:.2f}s@{at:.0f}s" for t, (w, at) in pauses.items()},
            largest_write_pause=f"{pauses[worst_t][0]:.2f}s ({worst_t})",
            longest_blackhole=f"{max(chaos.blackhole_s, default=0):.1f}s",
            gq_witness=f"{witness.checked} ok / {len(witness.violations)} violations / {witness.unreadable} unread",
            groups={g.group: {"delivered": len(g.delivered), "commits": g.commits,
                              "errors": dict(g.errors), "offset_resets": len(g.offset_resets()),
                              "commit_regressions": len(g.regressions), "skips": len(g.jumps)}
                    for g in groups.values()},
        )
        for g in groups.values():  # librdkafka's log of each group member, for diagnosis
            (regions.base_dir / f"client-{g.group}.log").write_text("\n".join(g.client_log + g.jumps) + "\n")
        print("\n".join(chaos.events))
        print("SOAK SUMMARY " + " ".join(f"{k}={v}" for k, v in summary.items()))

    for p in producers.values():
        p.start()
    for g in groups.values():
        g.start()
    try:
        wait_until(lambda: all(a.count() >= 100 for a in acks.values()), 90, interval=0.2,
                   what="both producers acknowledged before the faults")
        while time.monotonic() - t0 < duration:
            time.sleep(min(rng.uniform(1.5, 5.0), max(0.0, duration - (time.monotonic() - t0))))
            chaos.undo_due(time.monotonic())
            witness.check(f"t={time.monotonic() - t0:.1f}s")
            if time.monotonic() - t0 < duration:
                chaos.step()
        # Recovery: undo every fault, then the whole deployment must work again.
        chaos.undo_due(time.monotonic(), everything=True)
        regions.heal(timeout=120)
        chaos.note(f"healed; acked {[a.count() for a in acks.values()]}")
        goal = {t: a.count() + 200 for t, a in acks.items()}
        wait_until(lambda: all(acks[t].count() >= goal[t] for t in acks), 180, interval=0.2,
                   what="200 more acks on both topics after healing")
        witness.check("after healing")
        for p in producers.values():
            p.stop(timeout=200)
        chaos.note("producers stopped")

        # Home: every ack exactly once at its offset; mirror identical.
        for topic, home in homes.items():
            regions.wait_mirrored(topic, PARTITIONS, home, timeout=180)
        logs = {topic: verify_topic(regions, topic, home, acks[topic]) for topic, home in homes.items()}
        assert not witness.violations, "global_quorum acks not in the mirror:\n" + "\n".join(witness.violations[:10])

        # Consumer groups: catch up, commit the end, and lost nothing.
        ends = {(t, p): max(logs[t][p], default=-1) + 1 for t in logs for p in parts}
        for g in groups.values():
            try:
                wait_until(lambda g=g: g.caught_up(ends), 180, interval=0.5,
                           what=f"group {g.group} ({g.region}) committing the log ends")
            except TimeoutError as e:
                resets = [x for m in groups.values() for x in m.offset_resets()]
                raise AssertionError(f"{e}: {g.describe(ends)}; offset resets seen by the groups: {resets[:5]}") from e
        for g in groups.values():
            g.stop()
        problems = [x for g in groups.values() for x in group_problems(g, logs)]
        assert not problems, "consumer groups:\n" + "\n".join(problems[:20])

        pause, _ = write_pauses(acks[async_t], t0)
        assert pause <= SOAK_MAX_PAUSE_S, (f"the async topic took no ack for {pause:.1f}s although its home region "
                                           f"always had a majority of brokers up (limit {SOAK_MAX_PAUSE_S}s)")
        assert acks[async_t].count() >= 0.5 * producers[async_t].produced, (
            f"only {acks[async_t].count()} of {producers[async_t].produced} async records acknowledged")
    except BaseException:
        for p in producers.values():
            p.abandon(timeout=10)
        for g in groups.values():
            g.abandon()
        summarize("FAIL")
        raise
    summarize("PASS")
