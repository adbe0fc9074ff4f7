"""The home role moves between regions: `chronik ctl switchover` (planned, zero loss).

Runs on the shared two-region deployment of test_dclink (us-east, eu-west, 3 brokers
each, wan-sim in front of each dc-link), healed before each test.
"""

from __future__ import annotations

import json
import subprocess
import threading
import time
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Consumer, KafkaError, Producer
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

from cluster import create_topic
from harness import wait_until
from ackcheck import records_from_dump
from kclient import admin, consume, produce_all, unique_topic
from regions import Regions
from test_dclink import leader_bootstrap, raw_produce, regions, two_regions  # noqa: F401
from test_metadata_sync import commit_offset, group_offsets, meta_status

pytestmark = pytest.mark.chronik

US, EU = "us-east", "eu-west"


def assert_acked(reports: list) -> None:
    errors = [r[0] for r in reports if r[0] is not None]
    assert not errors, f"{len(errors)} records not acknowledged: {errors[:3]}"


def http_post(url: str, timeout: float = 30.0) -> tuple[int, str]:
    req = urllib.request.Request(url, data=b"", method="POST")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def broker_args(regions: Regions) -> list[str]:
    """`--broker ADDR` for every live broker of the deployment (`chronik ctl` commands)."""
    args = []
    for r in regions.names:
        c = regions.cluster(r)
        for i in c.live_ids():
            args += ["--broker", c.admin_url(i).removeprefix("http://")]
    return args


def switchover_argv(regions: Regions, to: str, *topics: str, extra: tuple = ()) -> list[str]:
    args = broker_args(regions)
    for t in topics:
        args += ["--topic", t]
    return [str(regions.binary), "ctl", "switchover", "--to", to, "--json", *args, *extra]


def switchover(regions: Regions, to: str, *topics: str, extra: tuple = (), check: bool = True):
    """`chronik ctl switchover --to TO --topic T... --json` with every broker of the deployment."""
    out = subprocess.run(switchover_argv(regions, to, *topics, extra=extra), capture_output=True, text=True,
                         timeout=180)
    if check:
        assert out.returncode == 0, (out.stdout, out.stderr)
    return out


class TestSwitchover:

    def test_switchover_and_back_keeps_logs_identical(self, regions):
        topic = unique_topic("sw-basic")
        create_topic(regions.cluster(US), topic, partitions=2, replication_factor=3)
        records = [{"value": b"us-%d" % i, "partition": i % 2} for i in range(40)]
        assert_acked(produce_all(regions.bootstrap(US), topic, records, acks="all"))
        regions.wait_mirrored(topic, 2, home=US)
        out = switchover(regions, EU, topic)
        res = json.loads(out.stdout)["topics"][0]
        assert res["from"] == US and res["to"] == EU and res["epoch"] == 2, res
        records = [{"value": b"eu-%d" % i, "partition": i % 2} for i in range(40)]
        assert_acked(produce_all(regions.bootstrap(EU), topic, records, acks="all"))
        regions.wait_mirrored(topic, 2, home=EU)
        for p in range(2):
            regions.assert_identical(topic, p, home=EU)
        out = switchover(regions, US, topic)
        res = json.loads(out.stdout)["topics"][0]
        assert res["from"] == EU and res["epoch"] == 3, res
        records = [{"value": b"us2-%d" % i, "partition": i % 2} for i in range(40)]
        assert_acked(produce_all(regions.bootstrap(US), topic, records, acks="all"))
        regions.wait_mirrored(topic, 2, home=US)
        for p in range(2):
            regions.assert_identical(topic, p, home=US)


class Load:
    """One idempotent librdkafka producer writing `prefix-<i>` for i from `start`, partition
    i % partitions, in a thread, until stopped or `limit` sends. Delivery reports are kept:
    acked[i] = (partition, offset); failed = indexes that got an error."""

    def __init__(self, bootstrap: str, topic: str, prefix: str, partitions: int, indexes, limit: int = 100_000):
        self.topic, self.prefix, self.partitions = topic, prefix, partitions
        self.indexes = iter(indexes)
        self.limit = limit
        self.acked: dict[int, tuple[int, int]] = {}
        self.failed: dict[int, str] = {}
        self.sent = 0
        self.stop = threading.Event()
        self.p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                           "linger.ms": 5, "message.timeout.ms": 15000, "compression.type": "none"})
        self.thread = threading.Thread(target=self._run, daemon=True)

    def value(self, i: int) -> bytes:
        return b"%s-%d" % (self.prefix.encode(), i)

    def _cb(self, i):
        def cb(err, msg):
            if err is None:
                self.acked[i] = (msg.partition(), msg.offset())
            else:
                self.failed[i] = str(err)
        return cb

    def _run(self):
        for i in self.indexes:
            if self.stop.is_set() or self.sent >= self.limit:
                break
            while True:
                try:
                    self.p.produce(self.topic, self.value(i), partition=i % self.partitions, on_delivery=self._cb(i))
                    break
                except BufferError:
                    self.p.poll(0.05)
            self.sent += 1
            self.p.poll(0)
            if self.sent % 20 == 0:
                time.sleep(0.002)
        self.p.flush(60)

    def start(self) -> "Load":
        self.thread.start()
        return self

    def finish(self) -> "Load":
        self.stop.set()
        self.thread.join(90)
        assert not self.thread.is_alive(), "producer thread did not finish"
        return self


class Reader:
    """A consumer group member reading `topic` in one region in a thread, from the
    earliest offset, committing as it goes. Keeps every (partition, offset) -> value it
    was given, the ones given twice, and every error."""

    def __init__(self, bootstrap: str, topic: str, group: str):
        self.got: dict[tuple[int, int], bytes] = {}
        self.twice: list[tuple[int, int]] = []
        self.errors: list[str] = []
        self.stop = threading.Event()
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                           "enable.auto.commit": True, "auto.commit.interval.ms": 500})
        self.c.subscribe([topic])
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.stop.is_set():
            m = self.c.poll(0.2)
            if m is None:
                continue
            if m.error():
                self.errors.append(str(m.error()))
                continue
            k = (m.partition(), m.offset())
            if k in self.got:
                self.twice.append(k)
            self.got[k] = m.value()
        self.c.close()

    def finish(self, logs: dict) -> None:
        """Waits (bounded) until every record of `logs` was read, then stops; asserts each
        was given once, with the log's value, and no error was seen."""
        want = {(p, off): v for p, recs in logs.items() for off, _, v in recs}
        wait_until(lambda: want.keys() <= self.got.keys(), 90, what="the consumer read every record")
        self.stop.set()
        self.thread.join(30)
        assert not self.twice, f"records given twice: {self.twice[:10]}"
        assert not self.errors, f"consumer errors: {self.errors[:5]}"
        wrong = [k for k in want if self.got[k] != want[k]]
        assert not wrong, f"records read with other values than the log's: {wrong[:5]}"


def epochs_and_values(dump: bytes) -> list[tuple[int, int, bytes]]:
    """(offset, partition leader epoch, value) of every record of a log dump, in log order."""
    out, pos = [], 0
    recs = records_from_dump(dump)
    while pos < len(dump):
        base = int.from_bytes(dump[pos:pos + 8], "big", signed=True)
        length = int.from_bytes(dump[pos + 8:pos + 12], "big", signed=True)
        epoch = int.from_bytes(dump[pos + 12:pos + 16], "big", signed=True)
        last_delta = int.from_bytes(dump[pos + 23:pos + 27], "big", signed=True)
        for o in range(base, base + last_delta + 1):
            if o in recs:
                out.append((o, epoch, recs[o]))
        pos += 12 + length
    return out


def check_exactly_once(regions: Regions, topic: str, partitions: int, home: str, loads: list[Load]) -> dict:
    """The home's log (identical in every region) holds every acknowledged record exactly once
    at its acknowledged offset, each producer's records in send order per partition, nothing
    that was not sent, and leader epochs that never go down. Returns {p: [(offset, epoch, value)]}."""
    logs = {}
    for p in range(partitions):
        _, dump = regions.assert_identical(topic, p, home=home)
        logs[p] = epochs_and_values(dump)
    sent = {}
    for load in loads:
        for i in list(load.acked) + list(load.failed):
            sent[load.value(i)] = load
    seen: dict[bytes, tuple[int, int]] = {}
    for p, recs in logs.items():
        epochs = [e for _, e, _ in recs]
        assert epochs == sorted(epochs), f"p{p}: leader epochs go down along the log"
        for off, _, v in recs:
            assert v in sent, f"p{p}@{off}: {v!r} was never sent"
            assert v not in seen, f"{v!r} written twice: {seen[v]} and {(p, off)}"
            seen[v] = (p, off)
    for load in loads:
        for i, (p, off) in load.acked.items():
            assert seen.get(load.value(i)) == (p, off), \
                f"acked {load.value(i)!r} at {(p, off)}, the log has it at {seen.get(load.value(i))}"
        by_p: dict[int, list[int]] = {}
        for i in sorted(load.acked):
            by_p.setdefault(load.acked[i][0], []).append(load.acked[i][1])
        for p, offs in by_p.items():
            assert offs == sorted(offs), f"{load.prefix}: p{p} acked out of send order"
    return logs


class TestSwitchoverUnderLoad:

    def test_switchover_under_load_loses_and_duplicates_nothing(self, regions):
        """An idempotent producer writes in us-east; the home moves to eu-west under it.
        Its unacknowledged records are sent again by a producer restarted against eu-west.
        Every acknowledged record is in both regions' (identical) logs once, at its offset;
        the eu-west records carry higher leader epochs than the us-east ones. A consumer
        group in each region reads throughout: every record once, no error."""
        topic = unique_topic("sw-load")
        parts = 3
        create_topic(regions.cluster(US), topic, partitions=parts, replication_factor=3)
        regions.wait_mirrored(topic, parts, home=US)
        # Consumer groups read in both regions throughout.
        readers = [Reader(regions.bootstrap(r), topic, unique_topic(f"sw-g-{r}")) for r in (US, EU)]
        first = Load(regions.bootstrap(US), topic, "a", parts, range(100_000)).start()
        wait_until(lambda: len(first.acked) >= 3000, 60, what="3000 acks in us-east")
        # Acked before the move began: written under us-east's epochs. (What the us-east
        # producer writes after the move is forwarded to eu-west and carries its epochs.)
        before_move = dict(first.acked)
        out = switchover(regions, EU, topic)
        res = json.loads(out.stdout)["topics"][0]
        first.finish()
        assert first.acked, "nothing acknowledged before the switchover"
        # Restarted against eu-west: first what was not acknowledged, then new records.
        retry = sorted(first.failed) + list(range(first.sent, first.sent + 3000))
        second = Load(regions.bootstrap(EU), topic, "a", parts, retry).start()
        wait_until(lambda: len(second.acked) + len(second.failed) >= len(retry), 120, what="eu-west producer done")
        second.finish()
        assert not second.failed, f"eu-west refused records: {list(second.failed.items())[:5]}"
        regions.wait_mirrored(topic, parts, home=EU)
        logs = check_exactly_once(regions, topic, parts, EU, [first, second])
        for reader in readers:
            reader.finish(logs)
        # The epochs at the move: eu-west's producer's records are above everything us-east
        # wrote before the move.
        us_values = {first.value(i) for i in before_move}
        eu_values = {second.value(i) for i in second.acked}
        for p, recs in logs.items():
            us = [e for _, e, v in recs if v in us_values]
            eu = [e for _, e, v in recs if v in eu_values]
            if us and eu:
                assert min(eu) > max(us), f"p{p}: eu-west epoch {min(eu)} not above us-east's {max(us)}"
        print(f"switchover: write pause {res['write_pause_ms']} ms (fence to promotion); "
              f"{len(first.acked)} + {len(second.acked)} acked, {len(first.failed)} resent")

    def test_repeated_moves_under_load_keep_logs_identical(self, regions):
        """us-east -> eu-west -> us-east -> eu-west, a producer restarted in each new home."""
        topic = unique_topic("sw-repeat")
        parts = 2
        create_topic(regions.cluster(US), topic, partitions=parts, replication_factor=3)
        regions.wait_mirrored(topic, parts, home=US)
        loads, home, next_index, pending = [], US, 0, []
        for to in (EU, US, EU):
            indexes = pending + list(range(next_index, next_index + 100_000))
            load = Load(regions.bootstrap(home), topic, "r", parts, indexes).start()
            loads.append(load)
            wait_until(lambda: len(load.acked) >= 1000, 60, what=f"1000 acks in {home}")
            switchover(regions, to, topic)
            load.finish()
            pending = sorted(load.failed) + [i for i in indexes[:load.sent] if i not in load.acked
                                              and i not in load.failed]
            next_index = max(next_index, max(indexes[:load.sent]) + 1)
            home = to
        last = Load(regions.bootstrap(home), topic, "r", parts, pending).start()
        wait_until(lambda: len(last.acked) + len(last.failed) >= len(pending), 60, what="resent records acked")
        last.finish()
        assert not last.failed
        loads.append(last)
        regions.wait_mirrored(topic, parts, home=home)
        check_exactly_once(regions, topic, parts, home, loads)


    def test_global_quorum_topic_switches_over_and_back(self, regions):
        """A global_quorum topic: after the move, eu-west's acks=all produce is acknowledged
        once us-east (now the mirror) holds it, and consumers in eu-west see every record."""
        topic = unique_topic("sw-gq")
        create_topic(regions.cluster(US), topic, partitions=1, replication_factor=3,
                     config={"chronik.replication.mode": "global_quorum"})
        regions.wait_mirrored(topic, 1, home=US)
        records = [{"value": b"us-%d" % i} for i in range(20)]
        assert_acked(produce_all(regions.bootstrap(US), topic, records, acks="all"))
        switchover(regions, EU, topic)
        records = [{"value": b"eu-%d" % i} for i in range(20)]
        assert_acked(produce_all(regions.bootstrap(EU), topic, records, acks="all"))
        got = consume(regions.bootstrap(EU), topic, count=40, timeout=30)
        assert [m.value() for m in got] == [b"us-%d" % i for i in range(20)] + [b"eu-%d" % i for i in range(20)]
        regions.wait_mirrored(topic, 1, home=EU)
        regions.assert_identical(topic, 0, home=EU)
        switchover(regions, US, topic)
        assert_acked(produce_all(regions.bootstrap(US), topic, [{"value": b"back"}], acks="all"))
        regions.wait_mirrored(topic, 1, home=US)
        regions.assert_identical(topic, 0, home=US)


class TestSwitchoverAll:

    def test_all_moves_every_topic_homed_elsewhere(self, regions):
        """`--all` moves every topic with a copy in the target that is homed elsewhere, and
        none that is homed there already."""
        mine = [unique_topic("sw-all") for _ in range(2)]
        theirs = unique_topic("sw-all-eu")
        for t in mine:
            create_topic(regions.cluster(US), t, partitions=1, replication_factor=3)
            regions.wait_mirrored(t, 1, home=US)
        create_topic(regions.cluster(EU), theirs, partitions=1, replication_factor=3)
        out = subprocess.run([str(regions.binary), "ctl", "switchover", "--to", EU, "--all", "--json",
                              *sum((["--broker", regions.cluster(r).admin_url(i).removeprefix("http://")]
                                    for r in regions.names for i in regions.cluster(r).live_ids()), [])],
                             capture_output=True, text=True, timeout=300)
        assert out.returncode == 0, out.stderr
        moved = {r["topic"]: r for r in json.loads(out.stdout)["topics"]}
        assert set(mine) <= set(moved) and theirs not in moved, sorted(moved)
        assert all(moved[t]["from"] == US and moved[t]["epoch"] == 2 for t in mine), moved
        for t in mine:
            assert_acked(produce_all(regions.bootstrap(EU), t, [{"value": b"after"}], acks="all"))


class TestPromotion:

    def test_committed_offsets_beyond_the_new_home_log_end_move_to_it(self, regions):
        """A group's committed offset past the partition's log end (as after a failover that
        lost records) is moved to the log end when the new home promotes the partition, so
        the group resumes at the first record written after the move; the move is listed in
        /v1/meta/status and reaches every region."""
        topic = unique_topic("sw-beyond")
        create_topic(regions.cluster(US), topic, partitions=1, replication_factor=3)
        assert_acked(produce_all(regions.bootstrap(US), topic, [{"value": b"x%d" % i} for i in range(5)],
                                 acks="all"))
        regions.wait_mirrored(topic, 1, home=US)
        group, fine = unique_topic("g-beyond"), unique_topic("g-fine")
        commit_offset(regions.bootstrap(US), group, topic, 0, 50)
        commit_offset(regions.bootstrap(US), fine, topic, 0, 3)
        wait_until(lambda: group_offsets(regions.bootstrap(EU), group, topic).get(0) == 50, 30,
                   what="the offset in eu-west")
        switchover(regions, EU, topic)
        for r in (EU, US):
            wait_until(lambda: group_offsets(regions.bootstrap(r), group, topic).get(0) == 5, 30,
                       what=f"{group}'s offset moved to the log end in {r}")
            assert group_offsets(regions.bootstrap(r), fine, topic).get(0) == 3, "an offset within the log moved"
        moved = [m for m in meta_status(regions, EU)["offsets_moved"]
                 if m["group"] == group and m["reason"] == "promotion"]
        assert [(m["topic"], m["partition"], m["from"], m["to"]) for m in moved] == [(topic, 0, 50, 5)], moved


class TestSwitchoverBadInput:

    def test_bad_moves_are_refused_and_change_nothing(self, regions):
        topic = unique_topic("sw-bad")
        create_topic(regions.cluster(US), topic, partitions=1, replication_factor=3)
        regions.wait_mirrored(topic, 1, home=US)
        for to, topics, want in ((EU, ("no-such-topic-x",), "unknown topic"),
                                 ("mars", (topic,), "unknown region mars"),
                                 (US, (topic,), "already homed in us-east")):
            out = switchover(regions, to, *topics, check=False)
            assert out.returncode != 0 and want in out.stderr, (to, topics, out.stderr)
        # A fence left behind (a crashed run), then a move elsewhere: refused.
        c = regions.cluster(US)
        status, body = http_post(f"{c.admin_url(c.live_ids()[0])}/v1/home/{topic}/fence?to={EU}&epoch=1")
        assert status == 200, body
        status, body = http_post(f"{c.admin_url(c.live_ids()[0])}/v1/home/{topic}/fence?to={US}&epoch=1")
        assert status == 409 and "already homed" in str(body), (status, body)
        # Writes are fenced, with a retriable error.
        p = Producer({"bootstrap.servers": regions.bootstrap(US), "message.timeout.ms": 3000})
        errs = []
        p.produce(topic, b"x", on_delivery=lambda err, msg: errs.append(err))
        p.flush(10)
        # librdkafka retries a retriable error until message.timeout.ms; a non-retriable one
        # (INVALID_TXN_STATE, say) would fail the message at once with that code.
        assert errs and errs[0] is not None and errs[0].code() == KafkaError._MSG_TIMED_OUT, errs
        # --abort lifts it; writes resume.
        switchover(regions, EU, topic, extra=("--abort",))
        ((err, *_),) = produce_all(regions.bootstrap(US), topic, [{"value": b"after-abort"}], acks="all")
        assert err is None, f"produce after --abort: {err}"
        # Fence again and re-run the command: it completes the move.
        status, body = http_post(f"{c.admin_url(c.live_ids()[0])}/v1/home/{topic}/fence?to={EU}&epoch=1")
        assert status == 200, body
        res = json.loads(switchover(regions, EU, topic).stdout)["topics"][0]
        assert res["to"] == EU and res["epoch"] == 2, res
        # chronik.home.region cannot be changed by a config write.
        res = ConfigResource("topic", topic, incremental_configs=[
            ConfigEntry("chronik.home.region", US, incremental_operation=AlterConfigOpType.SET)])
        with pytest.raises(Exception) as e:
            for f in admin(regions.bootstrap(EU)).incremental_alter_configs([res]).values():
                f.result(timeout=30)
        assert "switchover" in str(e.value), e.value


class CliRun:
    """A `chronik ctl` command running in the background, its stderr (the progress lines)
    and stdout read by threads as they come, so a test can act at a given step."""

    def __init__(self, argv: list[str]):
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.err: list[str] = []
        self.out: list[str] = []
        self.cond = threading.Condition()
        self.readers = [threading.Thread(target=self._read, args=(f, buf), daemon=True)
                        for f, buf in ((self.proc.stderr, self.err), (self.proc.stdout, self.out))]
        for t in self.readers:
            t.start()

    def _read(self, f, buf: list[str]) -> None:
        for line in f:
            with self.cond:
                buf.append(line)
                self.cond.notify_all()
        with self.cond:
            self.cond.notify_all()

    @property
    def stderr(self) -> str:
        with self.cond:
            return "".join(self.err)

    def wait_for(self, marker: str, timeout: float) -> str:
        """Blocks until a progress line contains `marker`; returns it. Fails if the command
        ends first or `timeout` passes."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                hit = next((line for line in self.err if marker in line), None)
                if hit is not None:
                    return hit
                done = self.proc.poll() is not None and not any(t.is_alive() for t in self.readers[:1])
                left = deadline - time.monotonic()
                if done or left <= 0:
                    self.proc.kill()
                    raise AssertionError(f"{' '.join(self.argv[:4])}: never printed {marker!r} "
                                         f"({'exited ' + str(self.proc.poll()) if done else f'{timeout}s'}); "
                                         f"stderr:\n{''.join(self.err)}\nstdout:\n{''.join(self.out)}")
                self.cond.wait(min(left, 0.5))

    def kill9(self) -> None:
        self.proc.kill()

    def wait(self, timeout: float) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once the command ended (bounded; killed past `timeout`)."""
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"{' '.join(self.argv[:4])} still running after {timeout}s; "
                                 f"stderr:\n{self.stderr}")
        for t in self.readers:
            t.join(10)
        return rc, "".join(self.out), self.stderr


def relaunch_brokers(regions: Regions, region: str, timeout: float = 120.0) -> None:
    """Start every stopped broker of `region` at once (on its data), then wait until each is ready."""
    c = regions.cluster(region)
    down = [i for i in c.ids if not c.running(i)]
    for i in down:
        c.nodes[i].launch()
    for i in down:
        c.nodes[i].wait_ready(timeout)


def topic_homes(regions: Regions, topic: str) -> dict[str, tuple]:
    """Region -> (home, epoch, the move under way or None, {partition: (role, role epoch)} of its
    leaders), as its brokers report it (GET /v1/home/T); regions no broker answers for are left out."""
    out = {}
    for r in regions.names:
        st = regions.cluster(r).home_state(topic)
        if st is None:
            continue
        moving = (st.get("moving") or {}).get("to")
        out[r] = (st["home"], st["epoch"], moving,
                  {p["partition"]: (p["role"], p["role_epoch"]) for p in st["partitions"]})
    return out


# (what is killed with -9, the progress line of the first run it is killed at). "draining to":
# fenced in us-east, the drain held up (eu-west's link blackholed), the home not moved;
# "home moved to": us-east moved the home, eu-west hears it 1 s later (WAN delay) and is not
# promoted yet. Brokers and dc-links are restarted; a dc-link crash does not end the run, which
# gives up at its --timeout-s (as it would with a dc-link down for longer). "home-leaders": only
# the us-east brokers leading the topic's partitions die; the run goes on with the others (it
# may even complete after the move), or gives up at its --timeout-s.
def answered_produce(regions: Regions, topic: str, p: int):
    """One raw produce to us-east's current leader of `topic`/`p`, or None if the broker closed
    the connection (it drops its clients while it is cut off from the region's majority)."""
    try:
        return raw_produce(leader_bootstrap(regions, US, topic, p), topic, p, [b"fenced"])
    except (AssertionError, OSError):
        return None


INTERRUPTIONS = [
    pytest.param("cli", "draining to", id="cli-while-draining"),
    pytest.param("cli", "home moved to", id="cli-after-the-move"),
    pytest.param("home-brokers", "draining to", id="home-brokers-while-draining"),
    pytest.param("home-leaders", "draining to", id="home-leaders-while-draining"),
    pytest.param("home-leaders", "home moved to", id="home-leaders-after-the-move"),
    pytest.param("target-brokers", "home moved to", id="target-brokers-after-the-move"),
    pytest.param("home-dclink", "draining to", id="home-dclink-while-draining"),
    pytest.param("target-dclink", "home moved to", id="target-dclink-after-the-move"),
]
MOVE_DELAY_MS = 1000


class TestSwitchoverInterrupted:

    @pytest.mark.parametrize("crash, marker", INTERRUPTIONS)
    def test_interrupted_switchover_completes_when_run_again(self, regions, crash, marker):
        """A switchover is interrupted by a kill -9 of the CLI, of every broker of the old or the
        new home (restarted), or of either dc-link (restarted): the topic keeps exactly one home
        (while fenced, us-east refuses writes with the retriable fencing error), and running the
        same command again completes the move: eu-west is the home at epoch 2 with every partition
        promoted, us-east's demoted to mirrors; a write in eu-west is appended there, one in us-east
        is forwarded there (us-east appends nothing of its own); both regions' logs are
        byte-identical up to the high watermark and hold, record by record, every record
        acknowledged before the move at its offset, then the two written after it."""
        topic, parts = unique_topic("sw-crash"), 2
        create_topic(regions.cluster(US), topic, partitions=parts, replication_factor=3)
        regions.wait_mirrored(topic, parts, home=US)
        expected: dict[int, dict[int, bytes]] = {p: {} for p in range(parts)}

        def write(bootstrap: str, prefix: str, n: int) -> None:
            reports = produce_all(bootstrap, topic, [{"value": b"%s-%d" % (prefix.encode(), i), "partition": i % parts}
                                                     for i in range(n)], acks="all", **{"enable.idempotence": True})
            assert_acked(reports)
            for i, (_, p, off, _) in enumerate(reports):
                assert off not in expected[p], f"{topic}/{p}: offset {off} acknowledged twice"
                expected[p][off] = b"%s-%d" % (prefix.encode(), i)

        write(regions.bootstrap(US), "mirrored", 80)
        regions.wait_mirrored(topic, parts, home=US)
        draining = marker == "draining to"
        if draining:
            regions.blackhole(EU)  # us-east -> eu-west carries nothing: the drain cannot finish
        else:
            regions.set_wan(EU, delay_ms=MOVE_DELAY_MS)
        write(regions.bootstrap(US), "unmirrored", 80)  # acknowledged in us-east only, for now
        fenced_ends = {p: max(expected[p]) + 1 for p in range(parts)}

        dclink_crash = crash.endswith("dclink")
        gives_up = dclink_crash or crash == "home-leaders"
        leaders = {regions.cluster(US).leader_of(topic, p) for p in range(parts)}
        run = CliRun(switchover_argv(regions, EU, topic, extra=("--timeout-s", "8" if gives_up else "120")))
        run.wait_for(marker, 60)
        victim = US if crash.startswith("home") else EU
        if crash == "cli":
            run.kill9()
        elif crash.endswith("brokers"):
            for i in regions.cluster(victim).live_ids():
                regions.kill9_broker(victim, i)
        elif crash == "home-leaders":
            for i in leaders:
                regions.kill9_broker(US, i)
        else:
            regions.kill9_dclink(victim)
        rc, out, err = run.wait(60)
        # The first run did not complete the move: killed, or failed saying why.
        if crash == "cli":
            assert rc == -9, (rc, err)
        elif crash == "home-brokers":
            assert rc != 0 and "home region us-east of topic" in err and "does not answer" in err, (rc, err)
        elif crash == "target-brokers":
            assert rc != 0 and "region eu-west holds no copy" in err, (rc, err)
        elif crash == "home-leaders" and not draining:
            assert rc == 0 or "run the command again to complete the move" in err, (rc, err)
        else:
            assert rc != 0 and "run the command again to complete the move" in err, (rc, err)
        if crash.endswith("brokers") or crash == "home-leaders":
            relaunch_brokers(regions, victim)
        elif dclink_crash:
            regions.restart_dclink(victim, ready=False)

        # Interrupted: one home, and the old home's copies are demoted (they append nothing of
        # their own). Fenced and not moved, or moved (the new home may not have heard yet).
        homes = wait_until(lambda: (h := topic_homes(regions, topic)).keys() == {US, EU}
                           and len(h[US][3]) == parts and h, 60,
                           what="both regions reporting the topic's home, every us-east partition led")
        top = max(e for _, e, _, _ in homes.values())
        assert len({h for h, e, _, _ in homes.values() if e == top}) == 1, homes
        assert all(role == "mirror" for role, _ in homes[US][3].values()), f"us-east not demoted: {homes}"
        if draining:
            assert homes[US][:3] == (US, 1, EU), f"us-east should still be the home, fenced for eu-west: {homes}"
            for p in range(parts):
                # A broker just restarted, or one that lost its peers with the leaders, drops its
                # clients until it hears from the region's majority again: ask until the leader
                # answers, as a client would, and judge the answer.
                err_code, _, msg, _ = wait_until(lambda: answered_produce(regions, topic, p), 30,
                                                 what=f"us-east's leader of {topic}/{p} answering a produce")
                assert err_code == 6 and "moving its home" in (msg or ""), (p, err_code, msg)
            regions.heal()  # the drain needs the link
            out = switchover(regions, EU, topic)
        else:
            assert homes[US][:2] == (EU, 2), f"us-east should have moved the home to eu-west: {homes}"
            # Run again at once (the WAN delay only slows it down). Only the promotion is left:
            # eu-west takes it when it hears of the move, maybe before this run looks, and then
            # the run finds the topic homed there already.
            out = switchover(regions, EU, topic, check=False)
            regions.heal()
        (res,) = json.loads(out.stdout)["topics"]
        if out.returncode == 0:
            assert res["to"] == EU and res["epoch"] == 2 and res["from"] in (US, None), res
            print(f"\n{crash} at {marker!r}: the second run completed the move: {out.stderr}")
        else:
            assert not draining and res["error"] == f"topic {topic} is already homed in {EU} (epoch 2)", \
                (out.returncode, out.stderr)
            print(f"\n{crash} at {marker!r}: promoted before the second run looked: {out.stderr}")

        def settled():
            h = topic_homes(regions, topic)
            return (set(h) == {US, EU} and all(v[:3] == (EU, 2, None) for v in h.values())
                    and h[EU][3] == {p: ("home", 2) for p in range(parts)}
                    and sorted(h[US][3]) == list(range(parts))
                    and all(role == "mirror" for role, _ in h[US][3].values()))
        try:
            wait_until(settled, 30, what="eu-west home at epoch 2 everywhere, its copies promoted, us-east's mirrors")
        except TimeoutError as e:
            raise AssertionError(f"{e}: {topic_homes(regions, topic)}") from None

        # Writes: eu-west appends at the end of what us-east had acknowledged; us-east's go there too.
        write(regions.bootstrap(EU), "eu-after", parts)
        assert {p: min(o for o in expected[p] if o >= fenced_ends[p]) for p in range(parts)} == fenced_ends
        write(regions.bootstrap(US), "us-after", parts)
        regions.wait_mirrored(topic, parts, home=EU)
        for p in range(parts):
            hw, dump = regions.assert_identical(topic, p, home=EU)
            log = records_from_dump(dump)
            assert hw == fenced_ends[p] + 2 and sorted(expected[p]) == list(range(hw)), (hw, sorted(expected[p]))
            wrong = [(o, log.get(o), v) for o, v in sorted(expected[p].items()) if log.get(o) != v]
            assert not wrong and len(log) == hw, f"{topic}/{p}: (offset, log, acknowledged) differ: {wrong[:5]}"
