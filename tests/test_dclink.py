"""Cross-region mirroring (dc-link) between Chronik regions, through WAN simulators.

Deployments come from tests/regions.py: one ChronikCluster per region, one `chronik
wan-sim` in front of each region's dc-link (so set_wan/blackhole of region R impairs every
link INTO R, e.g. the link us-east->eu-west that carries us-east's topics to eu-west), one
`chronik dc-link` per region, one topology file and one dev CA.

Most tests share one two-region deployment (us-east, eu-west, 3 brokers each; class
fixture, healed before every test: processes restarted, impairments cleared, fault
injection off, links connected) and use their own topics. The three-region test starts
its own deployment after the shared one is gone.

What "identical" means everywhere: the home partition leader's stored log (GET
/v1/partitions/t/p/log, every batch up to the high watermark) is byte-for-byte the mirror
leader's, with the same epoch history and log start, and every replica in each region
converges to those bytes (Regions.assert_identical). Acknowledged records are checked
record by record on top (ackcheck.verify_partition: each acked record at its offset, no
gap, no duplicate, producer order).

Numbers the tests measure are printed (run with -s to see them): mirror-topic creation
time, max lag while producing over a bad WAN and the catch-up time, global_quorum produce
latency.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource, NewTopic

import kwire
from ackcheck import (IDEMPOTENT, AckLog, ProducerThread, _drive, make_value, produce_batch, read_partition,
                      records_from_dump, verify_partition)
from cluster import create_topic
from harness import Chronik, http_get, wait_until
from kclient import (admin, consume, future_error, produce_all, records_to_high_watermark, topic_partitions,
                     unique_topic)
from regions import DcLink, Regions, certs_init, grep_log, log_size, prometheus_value

pytestmark = pytest.mark.chronik

US, EU, AP = "us-east", "eu-west", "ap-south"
INVALID_CONFIG = 40
POLICY_VIOLATION = 44
NOT_ENOUGH_REPLICAS_AFTER_APPEND = 20
NOT_LEADER_OR_FOLLOWER = 6
assert KafkaError.POLICY_VIOLATION == POLICY_VIOLATION
assert KafkaError.INVALID_CONFIG == INVALID_CONFIG
assert KafkaError.NOT_ENOUGH_REPLICAS_AFTER_APPEND == NOT_ENOUGH_REPLICAS_AFTER_APPEND

# A mirror topic must exist this soon after its home topic was created (contract: ~1-3 s).
MIRROR_CREATE_LIMIT_S = 5.0
# After producing stops over the bad WAN, lag must be 0 again this soon ("a few seconds").
CATCH_UP_LIMIT_S = 10.0
# lag_seconds may exceed the replication delay measured from broker offsets by this much
# (sampling granularity, polling of /v1/lag).
LAG_SECONDS_SLACK = 2.0


# ---------------------------------------------------------------------------
# Fixtures and helpers
# ---------------------------------------------------------------------------


@pytest.fixture(scope="class")
def two_regions(tmp_path_factory, chronik_cluster_binary):
    r = Regions(tmp_path_factory.mktemp("dclink-2r"), names=(US, EU), brokers=3, binary=chronik_cluster_binary)
    r.start()
    yield r
    r.stop()


@pytest.fixture
def regions(two_regions):
    """The shared two-region deployment, healed (everything running, no impairment)."""
    two_regions.heal()
    yield two_regions


@pytest.fixture
def regions_factory(tmp_path, chronik_cluster_binary):
    """Start deployments owned by one test: regions_factory(names=..., brokers=..., ...) -> started
    Regions (stopped at teardown; their processes' logs are attached to a failure report)."""
    made: list[Regions] = []
    started: list = []

    def make(**kw) -> Regions:
        r = Regions(tmp_path / f"regions{len(made)}", binary=chronik_cluster_binary, **kw)
        made.append(r)
        started.extend(r.started)
        return r.start()

    make.started = started
    yield make
    for r in made:
        r.stop()


def make_topic(regions: Regions, region: str, topic: str, partitions: int = 3, config: dict | None = None) -> None:
    c = regions.cluster(region)
    create_topic(c, topic, partitions=partitions, replication_factor=min(3, c.n), config=config or {})


def wait_topic_in(regions: Regions, region: str, topic: str, partitions: int, timeout: float = 30.0) -> float:
    """Wait until `region` lists `topic` with `partitions` led partitions; return the seconds it took."""
    t0 = time.monotonic()
    bs = regions.bootstrap(region)

    def present():
        ps = topic_partitions(bs, topic)
        return ps is not None and len(ps) == partitions and all(v >= 0 for v in ps.values())

    wait_until(present, timeout, interval=0.05, what=f"topic {topic} with {partitions} partitions in {region}")
    return time.monotonic() - t0


def describe(bootstrap: str, topic: str) -> dict[str, str]:
    res = admin(bootstrap).describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)])
    (fut,) = res.values()
    return {k: v.value for k, v in fut.result(timeout=30).items()}


def create_error(bootstrap: str, topic: str, config: dict) -> KafkaError | None:
    fut = admin(bootstrap).create_topics([NewTopic(topic, 1, config=config)], operation_timeout=30)[topic]
    return future_error(fut, 30)


def alter_error(bootstrap: str, topic: str, name: str, value: str) -> KafkaError | None:
    r = ConfigResource(ConfigResource.Type.TOPIC, topic,
                       incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])
    (fut,) = admin(bootstrap).incremental_alter_configs([r]).values()
    return future_error(fut, 30)


def leader_bootstrap(regions: Regions, region: str, topic: str, p: int) -> str:
    c = regions.cluster(region)
    return c.nodes[c.leader_of(topic, p)].bootstrap


def raw_produce(bootstrap: str, topic: str, p: int, values: list[bytes], acks: int = -1, timeout_ms: int = 10000,
                sock_timeout: float = 60.0) -> tuple[int, int, str | None, float]:
    """One Produce v8 request to the broker at `bootstrap`: (error, base_offset, error_message, seconds)."""
    batch = kwire.record_batch([(None, v) for v in values])
    t0 = time.monotonic()
    with kwire.Conn(bootstrap, timeout=sock_timeout) as c:
        res = c.request(kwire.PRODUCE, 8, kwire.produce_body(topic, p, batch, acks=acks, timeout_ms=timeout_ms))
    took = time.monotonic() - t0
    assert res is not None, f"broker {bootstrap} closed the connection on Produce"
    r = kwire.parse_produce_v8(res[1])[(topic, p)]
    return r["error"], r["base_offset"], r["error_message"], took


def check_mirror_has_every_ack(regions: Regions, topic: str, partitions: int, acks: AckLog, home: str = US,
                               mirrors=None) -> dict[int, int]:
    """Read every partition back from the home region and from each mirror region through
    a client: the home log holds every ack exactly once, in order, without gaps, and each
    mirror reads exactly the same {offset: value}. Returns {p: record count}."""
    out = {}
    for p in range(partitions):
        home_log, lo, hi = read_partition(regions.bootstrap(home), topic, p, timeout=90)
        verify_partition(p, home_log, acks, lo, hi)
        for m in mirrors or regions.mirrors_of(home):
            try:
                m_log, mlo, mhi = read_partition(regions.bootstrap(m), topic, p, timeout=60)
            except AssertionError as e:
                raise AssertionError(f"a consumer in mirror region {m} cannot read {topic}/{p}: {e}; mirror "
                                     f"leader state: {regions.leader_state(m, topic, p)[1]}") from e
            assert (mlo, mhi) == (lo, hi), f"{topic}/{p}: {m} reads offsets [{mlo}, {mhi}), {home} [{lo}, {hi})"
            if m_log != home_log:
                diff = sorted(o for o in set(m_log) | set(home_log) if m_log.get(o) != home_log.get(o))
                raise AssertionError(f"{topic}/{p}: {m} differs from {home} at {len(diff)} offsets, e.g. {diff[:10]}")
            verify_partition(p, m_log, acks, mlo, mhi)
        out[p] = len(home_log)
    return out


class DelaySampler:
    """Samples, per partition, the home leader's high watermark and the mirror leader's log
    end (admin HTTP on the leaders found at the start). max_delay(): the largest t - t' such
    that at sample time t the mirror did not yet hold what the home held at sample time t'
    (an upper bound of the replication delay, at sampling granularity)."""

    def __init__(self, regions: Regions, topic: str, partitions: int, home: str, mirror: str) -> None:
        self.regions, self.topic, self.partitions = regions, topic, partitions
        self.home, self.mirror = home, mirror
        self.leaders = {(r, p): regions.cluster(r).leader_of(topic, p) for r in (home, mirror)
                        for p in range(partitions)}
        self.home_hw: list[tuple[float, dict[int, int]]] = []
        self.mirror_end: list[tuple[float, dict[int, int]]] = []

    def _read(self, region: str, key: str) -> dict[int, int] | None:
        c = self.regions.cluster(region)
        out = {}
        for p in range(self.partitions):
            try:
                s = c.partition_state(self.leaders[(region, p)], self.topic, p, timeout=1.0)
            except (OSError, RuntimeError, ValueError):
                return None
            if not s:
                return None
            out[p] = s[key]
        return out

    def sample(self) -> None:
        t = time.monotonic()
        hw = self._read(self.home, "high_watermark")
        end = self._read(self.mirror, "log_end_offset")
        if hw is not None:
            self.home_hw.append((t, hw))
        if end is not None:
            self.mirror_end.append((time.monotonic(), end))

    def max_delay(self) -> float:
        worst = 0.0
        for t, end in self.mirror_end:
            # The first home sample holding records the mirror lacks at time t: the oldest of
            # them was written after the home sample before it.
            lacking = [th for th, hw in self.home_hw if th <= t and any(hw[p] > end[p] for p in hw)]
            if lacking:
                prev = [th for th, _ in self.home_hw if th < lacking[0]]
                worst = max(worst, t - (prev[-1] if prev else lacking[0]))
        return worst


def run_out(prod: ProducerThread, timeout: float) -> ProducerThread:
    """Let a ProducerThread reach its max_messages (or max_seconds), then check its outcome."""
    prod.join(timeout)
    return prod.stop(timeout=60)


def corrupt_frames_total(regions: Regions, receiver: str, link: str) -> float:
    v = prometheus_value(regions.metrics(receiver), "chronik_dclink_frames_corrupt_total", link=link)
    return v or 0.0


def wan_corrupted(regions: Regions, region: str) -> int:
    st = regions.wan_stats(region)
    return sum(p["up"]["corrupted"] + p["down"]["corrupted"] for p in st["udp"])


# ---------------------------------------------------------------------------
# The shared two-region deployment
# ---------------------------------------------------------------------------


class TestTwoRegions:

    def test_policy_configs_validated_described_and_reported(self, regions):
        us, eu = regions.bootstrap(US), regions.bootstrap(EU)

        # Unknown chronik.* config and a bad replication mode: INVALID_CONFIG, nothing created.
        for cfg in ({"chronik.nope": "1"}, {"chronik.replication.mode": "bogus"}):
            t = unique_topic("badcfg")
            err = create_error(us, t, cfg)
            assert err is not None and err.code() == INVALID_CONFIG, f"{cfg}: {err}"
            assert topic_partitions(us, t) is None, f"{cfg}: topic created anyway"

        # Described: explicit values, and the defaults of a plain topic.
        t = unique_topic("cfg")
        make_topic(regions, US, t, 1, {"chronik.mirror.regions": EU, "chronik.replication.mode": "async"})
        cfg = describe(us, t)
        assert cfg.get("chronik.mirror.regions") == EU, cfg
        assert cfg.get("chronik.replication.mode") == "async", cfg
        assert "chronik.home.region" in cfg, f"chronik.home.region not described: {sorted(cfg)}"
        plain = unique_topic("plain")
        make_topic(regions, US, plain, 1)
        pc = describe(us, plain)
        for k in ("chronik.home.region", "chronik.mirror.regions", "chronik.replication.mode"):
            assert k in pc, f"{k} not described for a plain topic: {sorted(pc)}"
        assert pc["chronik.mirror.regions"] == "*", pc
        assert pc["chronik.replication.mode"] == "async", pc

        # IncrementalAlterConfigs checks the same way and a failed alter changes nothing.
        err = alter_error(us, t, "chronik.nope", "x")
        assert err is not None and err.code() == INVALID_CONFIG, err
        err = alter_error(us, t, "chronik.replication.mode", "bogus")
        assert err is not None and err.code() == INVALID_CONFIG, err
        assert describe(us, t)["chronik.replication.mode"] == "async"

        # A topic that mirrors itself: valid syntax for the broker, a policy error for dc-link.
        selfish = unique_topic("selfmirror")
        make_topic(regions, US, selfish, 1, {"chronik.mirror.regions": US})
        assert describe(us, selfish)["chronik.mirror.regions"] == US

        def reported():
            return regions.lag(US).get("policy_errors", {}).get(selfish)

        msg = wait_until(reported, 15, interval=0.2, what=f"{US} dc-link reporting a policy error for {selfish}")
        print(f"\npolicy error reported for {selfish}: {msg!r}")
        assert US in msg, f"the policy error should name the region: {msg!r}"
        assert selfish not in regions.lag(EU).get("policy_errors", {}), "eu-west reports us-east's topic"
        # Nothing is mirrored anywhere (the valid topic `t` is, for contrast).
        wait_topic_in(regions, EU, t, 1, timeout=15)
        time.sleep(2)
        assert topic_partitions(eu, selfish) is None, f"{selfish} was mirrored to {EU} despite its policy error"

    def test_mirror_topic_created_with_same_partitions_and_configs_and_forwards_writes(self, regions):
        us, eu = regions.bootstrap(US), regions.bootstrap(EU)
        topic = unique_topic("mirror")
        configs = {"retention.ms": "7200000", "max.message.bytes": "500000"}
        make_topic(regions, US, topic, 3, configs)
        took = wait_topic_in(regions, EU, topic, 3, timeout=30)
        print(f"\nmirror topic {topic} present in {EU} {took:.2f}s after CreateTopics returned in {US}")
        assert took < MIRROR_CREATE_LIMIT_S, f"mirror topic appeared only after {took:.1f}s"

        home_cfg, mirror_cfg = describe(us, topic), describe(eu, topic)
        for k, v in configs.items():
            assert home_cfg[k] == v, home_cfg
            assert mirror_cfg[k] == v, f"{k}: mirror has {mirror_cfg.get(k)!r}, home {v!r}"
        assert mirror_cfg.get("chronik.home.region") == US, mirror_cfg
        for k in ("chronik.mirror.regions", "chronik.replication.mode"):
            assert mirror_cfg.get(k) == home_cfg.get(k), f"{k}: mirror {mirror_cfg.get(k)!r}, home {home_cfg.get(k)!r}"

        acks = AckLog()
        for p in range(3):
            produce_batch(us, topic, p, 50, acks, timeout=60)
        hws = regions.wait_mirrored(topic, 3, US, timeout=30)
        assert hws == {0: 50, 1: 50, 2: 50}, hws
        ms = regions.mirror_state(EU, topic, 0)
        assert ms is not None and ms.get("mirror_of") == US, ms
        assert (regions.mirror_state(US, topic, 0) or {}).get("mirror_of") is None

        # A produce to the mirror is forwarded to the home: answered with the home's offset,
        # written once in us-east and mirrored back to the same offset; the mirror is never
        # written locally (its log stays byte-identical to the home's).
        err, base, message, _ = raw_produce(leader_bootstrap(regions, EU, topic, 0), topic, 0, [b"fwd-raw"])
        assert (err, base) == (0, 50), f"produce to the mirror: error {err} ({message!r}) base offset {base}"
        reports = produce_all(eu, topic, [{"value": b"fwd-client", "partition": 1}], acks="all",
                              **{"message.timeout.ms": 15000})
        assert reports[0][0] is None and reports[0][1:3] == (1, 50), reports
        want = {0: 51, 1: 51, 2: 50}
        assert regions.wait_mirrored(topic, 3, US, timeout=30) == want
        assert regions.mirror_progress(topic, 3, US) == {(EU, p): (want[p],) * 3 for p in range(3)}
        for p in range(3):
            regions.assert_identical(topic, p, US)
        assert consume(us, topic, 0, start=50, count=1)[0].value() == b"fwd-raw"
        assert consume(eu, topic, 1, start=50, count=1)[0].value() == b"fwd-client"

    @pytest.mark.timeout(600)
    def test_identical_logs_under_kills_and_blackhole(self, regions):
        topic = unique_topic("chaos")
        us_c, eu_c = regions.cluster(US), regions.cluster(EU)
        make_topic(regions, US, topic, 3)
        wait_topic_in(regions, EU, topic, 3)
        acks = AckLog()
        prod = ProducerThread(us_c.bootstrap, topic, [0, 1, 2], acks=acks, rate=250, max_messages=20_000,
                              max_seconds=240)
        timeline = []
        t_start = time.monotonic()

        def note(what):
            timeline.append(f"{time.monotonic() - t_start:6.1f}s acks {acks.count():6d}  {what}")

        def after_more(n):
            target = acks.count() + n
            wait_until(lambda: acks.count() >= target, 90, interval=0.1, what=f"{target} acks")

        prod.start()
        try:
            after_more(800)
            note(f"kill -9 dc-link {US} (home)")
            regions.kill9_dclink(US)
            time.sleep(2)
            regions.restart_dclink(US)
            note(f"dc-link {US} restarted")

            after_more(800)
            note(f"kill -9 dc-link {EU} (mirror)")
            regions.kill9_dclink(EU)
            time.sleep(2)
            regions.restart_dclink(EU)
            note(f"dc-link {EU} restarted")

            after_more(800)
            victim = us_c.leader_of(topic, 0)
            note(f"kill -9 {US} broker {victim} (leader of {topic}/0)")
            us_c.kill9(victim)
            time.sleep(3)
            us_c.restart(victim)
            note(f"{US} broker {victim} restarted")

            after_more(800)
            victim = eu_c.leader_of(topic, 1)
            note(f"kill -9 {EU} broker {victim} (leader of mirror {topic}/1)")
            eu_c.kill9(victim)
            time.sleep(3)
            eu_c.restart(victim)
            note(f"{EU} broker {victim} restarted")

            after_more(800)
            note(f"blackhole {US}->{EU} for 30 s")
            regions.blackhole(EU)
            time.sleep(5)
            frozen = regions.mirror_progress(topic, 3, US)
            time.sleep(24)
            later = regions.mirror_progress(topic, 3, US)
            lag_rows = regions.lag_rows(US, topic)
            time.sleep(1)
            regions.blackhole(EU, on=False)
            note("blackhole lifted; lag rows then: "
                 + ", ".join(f"p{r['partition']} lag {r['lag_records']} rec {r['lag_seconds']:.1f}s" for r in lag_rows))
            mirror_ends = lambda prog: sum(leo or 0 for (_, _), (_, leo, _) in prog.items())  # noqa: E731
            home_hws = lambda prog: max(hw or 0 for (_, _), (hw, _, _) in prog.items())  # noqa: E731
            assert mirror_ends(later) == mirror_ends(frozen), \
                f"the mirror advanced during the blackhole: {frozen} -> {later}"
            assert home_hws(later) > home_hws(frozen), "the home did not advance during the blackhole (no produce?)"
            assert sum(r["lag_records"] for r in lag_rows) > 0, f"no lag reported during the blackhole: {lag_rows}"
        except BaseException:
            prod.abandon()
            print("\n" + "\n".join(timeline))
            raise
        run_out(prod, 240)
        note(f"producer done: {prod.produced} produced")
        print("\n" + "\n".join(timeline))
        assert not acks.failed, f"{len(acks.failed)} records failed, e.g. {acks.failed[:3]}"
        assert acks.count() == prod.produced == 20_000, (acks.count(), prod.produced)

        t0 = time.monotonic()
        hws = regions.wait_mirrored(topic, 3, US, timeout=120)
        print(f"mirrored {hws} {time.monotonic() - t0:.1f}s after the last ack")
        for p in range(3):
            regions.assert_identical(topic, p, US)
        counts = check_mirror_has_every_ack(regions, topic, 3, acks)
        assert sum(counts.values()) == 20_000, counts

    def test_mirror_consumer_group_reads_home_records_and_commits(self, regions):
        us, eu = regions.bootstrap(US), regions.bootstrap(EU)
        topic = unique_topic("local")
        make_topic(regions, US, topic, 2)
        wait_topic_in(regions, EU, topic, 2)
        # A home leader failover first, so partition 1's home leader epoch is ahead of the
        # mirror partition's own (Raft) term: mirror readers must not care.
        us_c = regions.cluster(US)
        old = us_c.leader_of(topic, 1)
        us_c.kill9(old)
        us_c.leader_of(topic, 1, nodes=[i for i in us_c.ids if i != old])
        us_c.restart(old)
        base_ts = int(time.time() * 1000) - 60_000
        msgs = [{"partition": i % 2, "key": f"k{i}".encode() if i % 5 else None, "value": f"v{i}".encode() * (1 + i % 7),
                 "headers": [("h", f"{i}".encode()), ("empty", b"")] if i % 3 else None, "timestamp": base_ts + i}
                for i in range(300)]
        reports = produce_all(us, topic, msgs, acks="all", **{"enable.idempotence": True})
        assert all(r[0] is None for r in reports), [r for r in reports if r[0] is not None][:3]
        hws = regions.wait_mirrored(topic, 2, US, timeout=30)
        for p in range(2):
            regions.assert_identical(topic, p, US)
        epochs = {(r, p): regions.leader_state(r, topic, p)[1] for r in (US, EU) for p in range(2)}
        print("\n" + "; ".join(f"{r}/{p}: term {s['term']} epochs {s['epochs']}" for (r, p), s in epochs.items()))

        def tuples(m):
            return (m.partition(), m.offset(), m.key(), m.value(), tuple(m.headers() or ()), m.timestamp())

        home = sorted(tuples(m) for p in range(2) for m in consume(us, topic, p, count=hws[p], timeout=30))
        assert len(home) == 300

        group = "g-" + uuid.uuid4().hex[:8]

        def group_consumer():
            return Consumer({"bootstrap.servers": eu, "group.id": group, "auto.offset.reset": "earliest",
                             "enable.auto.commit": False, "session.timeout.ms": 10000, "fetch.wait.max.ms": 100})

        c = group_consumer()
        seen = []
        try:
            c.subscribe([topic])
            deadline = time.monotonic() + 60
            while len(seen) < 300 and time.monotonic() < deadline:
                for m in c.consume(num_messages=500, timeout=0.5):
                    assert not m.error(), m.error()
                    seen.append(tuples(m))
            per_partition = {p: sum(1 for t in seen if t[0] == p) for p in range(2)}
            assert len(seen) == 300, (f"the {EU} group read {len(seen)} of 300 records in 60 s: per partition "
                                      f"{per_partition}, mirror holds {hws}")
            c.commit(asynchronous=False)
            committed = c.committed([TopicPartition(topic, p) for p in range(2)], timeout=15)
            assert {tp.partition: tp.offset for tp in committed} == hws, committed
        finally:
            c.close()
        assert sorted(seen) == home, "the mirror region's group read other records than the home holds: " + \
            str(next((a, b) for a, b in zip(sorted(seen), home) if a != b))

        # The commit lives in the mirror region: a new member resumes after it.
        more = [{"partition": i % 2, "value": f"more{i}".encode(), "timestamp": base_ts + 1000 + i} for i in range(20)]
        produce_all(us, topic, more, acks="all")
        hws2 = regions.wait_mirrored(topic, 2, US, timeout=30)
        c = group_consumer()
        got = []
        try:
            c.subscribe([topic])
            deadline = time.monotonic() + 40
            while len(got) < 20 and time.monotonic() < deadline:
                for m in c.consume(num_messages=100, timeout=0.5):
                    assert not m.error(), m.error()
                    got.append(tuples(m))
            time.sleep(1)
            got += [tuples(m) for m in c.consume(num_messages=100, timeout=0.5) if not m.error()]
        finally:
            c.close()
        assert sorted((p, o) for p, o, *_ in got) == sorted(
            (p, o) for p in range(2) for o in range(hws[p], hws2[p])), f"resumed group read {sorted(got)[:5]}..."
        assert sorted(g[3] for g in got) == sorted(m["value"] for m in more)

    def test_ctl_lag_json_and_table(self, regions):
        topic = unique_topic("ctl")
        make_topic(regions, US, topic, 2)
        acks = AckLog()
        for p in range(2):
            produce_batch(regions.bootstrap(US), topic, p, 100 + p, acks, timeout=60)
        hws = regions.wait_mirrored(topic, 2, US, timeout=30)
        url = regions.dclink_url(US)
        binary = str(regions.binary)

        def ctl(*args):
            r = subprocess.run([binary, "ctl", "lag", "--dc-link", url, *args], capture_output=True, text=True,
                               timeout=30)
            assert r.returncode == 0, f"chronik ctl lag {args} exited {r.returncode}: {r.stderr}"
            return r.stdout

        def rows_caught_up():
            reports = json.loads(ctl("--json"))
            assert isinstance(reports, list) and len(reports) == 1, reports
            rep = reports[0]
            assert rep["region"] == US, rep
            rows = {r["partition"]: r for r in rep["partitions"] if r["topic"] == topic}
            ok = sorted(rows) == [0, 1] and all(
                r["link"] == f"{US}->{EU}" and r["source_high_watermark"] == hws[p] and r["mirror_log_end"] == hws[p]
                and r["lag_records"] == 0 and r["lag_bytes"] == 0 for p, r in rows.items())
            return (rep, rows) if ok else None

        rep, rows = wait_until(rows_caught_up, 20, interval=0.5, what=f"ctl lag --json showing {topic} caught up")
        link = {l["link"]: l for l in rep["links"]}.get(f"{US}->{EU}")
        assert link and link["connected"] and link["from"] == US and link["to"] == EU, rep["links"]
        assert link["records_sent"] >= sum(hws.values()) and link["frames_sent"] > 0, link
        for k in ("rtt_ms", "raw_bytes_sent", "wire_bytes_sent", "frames_in_flight", "reconnects", "compression_ratio",
                  "throughput_records_per_sec", "throughput_bytes_per_sec"):
            assert k in link, f"{k} missing from {link}"
        table = ctl()
        assert f"{US}->{EU}" in table and topic in table, table
        print(f"\n{table}")

    def test_mirror_reports_what_a_failover_would_lose_as_last_known(self, regions):
        """The receiving dc-link's /v1/lag `received` rows: the home high watermark its chunks
        last carried and the mirror's durable end. On a thin link the mirror is behind and
        reports the difference as at risk; once caught up, nothing is."""
        topic = unique_topic("at-risk")
        make_topic(regions, US, topic, 1)
        regions.wait_mirrored(topic, 1, US, timeout=30)
        # 1.2 MB of incompressible records over 1 Mbit/s take ~10 s to ship, however long the
        # home takes to acknowledge them (the home's producer does not cross the WAN).
        regions.set_wan(EU, bandwidth_mbit=1)
        values = [{"value": os.urandom(800)} for _ in range(1500)]
        t0 = time.monotonic()
        assert [r[0] for r in produce_all(regions.bootstrap(US), topic, values, acks="all")] == [None] * 1500
        assert time.monotonic() - t0 < 8, "producing took so long the mirror may have kept up"

        def row():
            rows = [r for r in regions.lag(EU).get("received", []) if r["topic"] == topic and r["partition"] == 0]
            return rows[0] if rows else None

        try:
            behind = wait_until(lambda: (r := row()) and r["at_risk_records"] > 0 and r, 30,
                                what="the mirror reporting records at risk")
        except TimeoutError:
            raise AssertionError(f"row {row()}; received {regions.lag(EU).get('received')}; "
                                 f"sender {regions.lag_rows(US, topic)}")
        assert behind["link"] == f"{US}->{EU}", behind
        assert behind["at_risk_records"] == behind["home_high_watermark"] - behind["mirror_log_end"], behind
        assert behind["home_high_watermark"] <= 1500, behind
        regions.set_wan(EU)
        done = wait_until(lambda: (r := row()) and r["mirror_log_end"] == 1500 and r, 120,
                          what="the mirror caught up")
        assert (done["home_high_watermark"], done["at_risk_records"]) == (1500, 0), done

    @pytest.mark.timeout(420)
    def test_bad_wan_lag_recovers(self, regions):
        topic = unique_topic("wan")
        make_topic(regions, US, topic, 3)
        wait_topic_in(regions, EU, topic, 3)
        for r in (US, EU):
            regions.set_wan(r, delay_ms=50, loss=0.01)

        def rtt():
            link = {l["link"]: l for l in regions.lag(US)["links"]}[f"{US}->{EU}"]
            return link["connected"] and link["rtt_ms"] >= 90 and link["rtt_ms"]

        rtt_ms = wait_until(rtt, 30, interval=0.5, what=f"{US}->{EU} RTT >= 90 ms with 50 ms each way")
        print(f"\nlink RTT with 50 ms each way + 1% loss: {rtt_ms:.1f} ms")

        acks = AckLog()
        rate, seconds = 2000, 20
        prod = ProducerThread(regions.cluster(US).bootstrap, topic, [0, 1, 2], acks=acks, rate=rate,
                              max_messages=rate * seconds, max_seconds=seconds + 10)
        # Independently of dc-link's own report: the home leaders' high watermarks and the mirror
        # leaders' log ends, sampled; the mirror at time t holds what the home had at t' =>
        # the replication delay at t is at most t - t'.
        sampler = DelaySampler(regions, topic, 3, US, EU)
        max_lag_s, max_lag_rec = 0.0, 0
        t0 = time.monotonic()
        prod.start()
        try:
            while prod.is_alive() and time.monotonic() - t0 < seconds + 60:
                rows = regions.lag_rows(US, topic)
                if rows:
                    max_lag_s = max(max_lag_s, max(r["lag_seconds"] for r in rows))
                    max_lag_rec = max(max_lag_rec, sum(r["lag_records"] for r in rows))
                sampler.sample()
                time.sleep(0.25)
        except BaseException:
            prod.abandon()
            raise
        prod.stop(timeout=90)
        produce_s = time.monotonic() - t0
        t_stop = time.monotonic()
        hws = {p: regions.leader_state(US, topic, p)[1]["high_watermark"] for p in range(3)}

        def caught_up():
            rows = {r["partition"]: r for r in regions.lag_rows(US, topic)}
            return sorted(rows) == [0, 1, 2] and all(
                rows[p]["lag_records"] == 0 and rows[p]["mirror_log_end"] == hws[p] for p in range(3))

        wait_until(caught_up, 60, interval=0.1, what="lag back to 0 after producing stopped")
        catch_up = time.monotonic() - t_stop
        delay = sampler.max_delay()
        print(f"produced {prod.produced} records in {produce_s:.1f}s ({prod.produced / produce_s:.0f}/s) over "
              f"50 ms each way + 1% loss; max lag reported by dc-link while producing: {max_lag_s:.3f} s, "
              f"{max_lag_rec} records; replication delay measured from broker offsets: <= {delay:.2f} s; "
              f"lag 0 again {catch_up:.2f}s after the last ack")
        assert not acks.failed, f"{len(acks.failed)} records failed, e.g. {acks.failed[:3]}"
        assert prod.produced == rate * seconds, f"produced only {prod.produced} of {rate * seconds}"
        assert catch_up <= CATCH_UP_LIMIT_S, f"lag took {catch_up:.1f}s to return to 0 (limit {CATCH_UP_LIMIT_S}s)"
        assert max_lag_s <= delay + LAG_SECONDS_SLACK, (
            f"dc-link reported lag_seconds up to {max_lag_s:.2f} s while the mirror was never more than "
            f"{delay:.2f} s behind the home (broker offsets sampled every ~0.3 s; {max_lag_rec} records max)")
        regions.wait_mirrored(topic, 3, US, timeout=30)
        for r in (US, EU):
            regions.set_wan(r)
        for p in range(3):
            regions.assert_identical(topic, p, US)
        check_mirror_has_every_ack(regions, topic, 3, acks)

    def test_udp_corruption_dropped_by_quic(self, regions):
        topic = unique_topic("udpcorrupt")
        make_topic(regions, US, topic, 2)
        wait_topic_in(regions, EU, topic, 2)
        link = f"{US}->{EU}"
        before_frames = corrupt_frames_total(regions, EU, link)
        before_wan = wan_corrupted(regions, EU)
        for r in (US, EU):
            regions.set_wan(r, corrupt=0.01)
        acks = AckLog()
        prod = ProducerThread(regions.cluster(US).bootstrap, topic, [0, 1], acks=acks, rate=1000, max_messages=8000,
                              max_seconds=40)
        run_out(prod.start(), 90)
        assert not acks.failed, acks.failed[:3]
        regions.wait_mirrored(topic, 2, US, timeout=60)
        corrupted = wan_corrupted(regions, EU) - before_wan
        print(f"\nwan-sim corrupted {corrupted} datagrams into {EU}; mirror complete")
        assert corrupted > 0, "wan-sim corrupted nothing: the link did not go through it?"
        for r in (US, EU):
            regions.set_wan(r)
        for p in range(2):
            regions.assert_identical(topic, p, US)
        check_mirror_has_every_ack(regions, topic, 2, acks)
        # QUIC's AEAD drops corrupted packets: no corrupt frame ever reaches dc-link's framing.
        assert corrupt_frames_total(regions, EU, link) == before_frames

    @pytest.mark.timeout(420)
    def test_corrupt_frames_detected_and_link_resumes(self, regions):
        link = f"{US}->{EU}"
        before = corrupt_frames_total(regions, EU, link)
        us_log, eu_log = log_size(regions.dclink(US)), log_size(regions.dclink(EU))
        regions.restart_dclink(US, faults={"corrupt_frame_every": 5})
        try:
            topic = unique_topic("framecorrupt")
            make_topic(regions, US, topic, 2)
            wait_topic_in(regions, EU, topic, 2)
            acks = AckLog()
            # Many small produce rounds: many data frames, so every 5th is corrupted repeatedly.
            for i in range(30):
                for p in range(2):
                    produce_batch(regions.bootstrap(US), topic, p, 50, acks, timeout=60, start_seq=i * 50,
                                  tag=f"fc{p}")
                time.sleep(0.1)
            assert not acks.failed and acks.count() == 3000, (acks.count(), acks.failed[:3])
            t0 = time.monotonic()
            regions.wait_mirrored(topic, 2, US, timeout=180)
            after = corrupt_frames_total(regions, EU, link)
            print(f"\nmirrored {time.monotonic() - t0:.1f}s after the last ack; receiver counted "
                  f"{after - before:.0f} corrupt frames on {link}")
            assert after > before, f"chronik_dclink_frames_corrupt_total{{link={link}}} did not grow ({before} -> {after})"
            injected = grep_log(regions.dclink(US), r"corrupting data frame", us_log)
            detected = grep_log(regions.dclink(EU), r"corrupt frame", eu_log)
            assert injected, "the home dc-link logged no fault injection"
            assert detected, "the receiving dc-link logged no corrupt frame"
            for p in range(2):
                hw, dump = regions.assert_identical(topic, p, US)
                assert hw == 1500, hw
            check_mirror_has_every_ack(regions, topic, 2, acks)
        finally:
            regions.restart_dclink(US, faults={})

    @pytest.mark.timeout(400)
    def test_global_quorum(self, regions):
        topic = unique_topic("gq")
        make_topic(regions, US, topic, 1, {"chronik.replication.mode": "global_quorum"})
        wait_topic_in(regions, EU, topic, 1)
        plain = unique_topic("gq-async")
        make_topic(regions, US, plain, 1)
        wait_topic_in(regions, EU, plain, 1)

        def leader():
            return leader_bootstrap(regions, US, topic, 0)

        # Healthy link: acks=all succeeds (first one may wait for the link to offer the topic).
        err, off, msg, took = raw_produce(leader(), topic, 0, [b"warm"], timeout_ms=20000)
        assert err == 0, f"global_quorum produce on a healthy link: error {err} {msg!r} after {took:.2f}s"
        healthy = []
        for i in range(10):
            err, _, msg, took = raw_produce(leader(), topic, 0, [f"h{i}".encode()], timeout_ms=10000)
            assert err == 0, (err, msg)
            healthy.append(took)

        # 50 ms each way on the link into the mirror region: every ack needs a round trip.
        regions.set_wan(EU, delay_ms=50)
        wait_until(lambda: {l["link"]: l for l in regions.lag(US)["links"]}[f"{US}->{EU}"]["rtt_ms"] >= 90, 30,
                   interval=0.5, what="RTT >= 90 ms")
        slow, fast = [], []
        for i in range(10):
            err, _, msg, took = raw_produce(leader(), topic, 0, [f"d{i}".encode()], timeout_ms=10000)
            assert err == 0, (err, msg)
            slow.append(took)
            err, _, msg, took = raw_produce(leader_bootstrap(regions, US, plain, 0), plain, 0, [f"a{i}".encode()])
            assert err == 0, (err, msg)
            fast.append(took)
        print(f"\nglobal_quorum acks=all latency, healthy link: median {statistics.median(healthy) * 1000:.1f} ms; "
              f"with 50 ms each way: min {min(slow) * 1000:.1f} ms, median {statistics.median(slow) * 1000:.1f} ms, "
              f"max {max(slow) * 1000:.1f} ms; async topic over the same link: median "
              f"{statistics.median(fast) * 1000:.1f} ms")
        assert min(slow) >= 0.100, f"global_quorum produce returned in {min(slow) * 1000:.1f} ms < one 100 ms RTT"
        assert statistics.median(fast) < 0.100, \
            f"async produce took {statistics.median(fast) * 1000:.1f} ms: it must not wait for the mirror"
        regions.set_wan(EU)

        # Mirror unreachable: the produce fails after its timeout, retriably.
        regions.blackhole(EU)
        try:
            err, _, msg, took = raw_produce(leader(), topic, 0, [b"blackholed"], timeout_ms=3000, sock_timeout=30)
            print(f"blackholed: error {err} {msg!r} after {took:.2f}s")
            assert err == NOT_ENOUGH_REPLICAS_AFTER_APPEND, f"error {err} ({msg!r}) after {took:.2f}s"
            assert 2.5 <= took <= 10, f"answered after {took:.2f}s with a 3 s request timeout"
            # The async topic is not held up by the blackhole.
            err, _, msg, took = raw_produce(leader_bootstrap(regions, US, plain, 0), plain, 0, [b"async-ok"])
            assert err == 0 and took < 2, (err, msg, took)
        finally:
            regions.blackhole(EU, on=False)
        t0 = time.monotonic()
        deadline = t0 + 60
        attempts = []
        while True:
            err, _, msg, took = raw_produce(leader(), topic, 0, [b"after"], timeout_ms=5000, sock_timeout=30)
            attempts.append(err)
            if err == 0 or time.monotonic() > deadline:
                break
            assert err == NOT_ENOUGH_REPLICAS_AFTER_APPEND, (err, msg)
        print(f"after un-blackholing: produce succeeded {time.monotonic() - t0:.1f}s later (attempts: {attempts})")
        assert err == 0, f"global_quorum produce still failing 60 s after un-blackholing: {attempts}"
        hws = regions.wait_mirrored(topic, 1, US, timeout=30)
        regions.assert_identical(topic, 0, US)
        assert hws[0] == 1 + 10 + 10 + 1 + len(attempts), hws

    @pytest.mark.timeout(300)
    def test_global_quorum_consumers_see_only_what_the_mirror_holds(self, regions):
        """A global_quorum record committed in the home region but not yet held by the mirror
        (blackholed) is invisible to home consumers: ListOffsets latest and the Fetch high
        watermark stop below it, and a consumer at that offset gets nothing. Once the link heals,
        the dc-link (which reads as Kafka's debugging replica, -2) ships it and consumers see it.
        An async topic over the same link is not held back."""
        topic, plain = unique_topic("gq-vis"), unique_topic("gq-vis-async")
        make_topic(regions, US, topic, 1, {"chronik.replication.mode": "global_quorum"})
        make_topic(regions, US, plain, 1)
        wait_topic_in(regions, EU, topic, 1)
        wait_topic_in(regions, EU, plain, 1)
        for i in range(3):
            err, _, msg, _ = raw_produce(leader_bootstrap(regions, US, topic, 0), topic, 0, [f"w{i}".encode()],
                                         timeout_ms=20000)
            assert err == 0, (err, msg)
        tp = TopicPartition(topic, 0)
        c = Consumer({"bootstrap.servers": regions.bootstrap(US), "group.id": f"g-{topic}",
                      "enable.auto.commit": False, "fetch.wait.max.ms": 100})
        try:
            assert c.get_watermark_offsets(tp, timeout=10, cached=False)[1] == 3
            regions.blackhole(EU)
            try:
                # acks=1: committed in us-east at once, never waiting for the mirror.
                err, off, msg, _ = raw_produce(leader_bootstrap(regions, US, topic, 0), topic, 0, [b"only-home"],
                                               acks=1)
                assert (err, off) == (0, 3), (err, off, msg)
                err, _, msg, _ = raw_produce(leader_bootstrap(regions, US, plain, 0), plain, 0, [b"async"], acks=1)
                assert err == 0, (err, msg)
                _, st = regions.leader_state(US, topic, 0)
                assert st["high_watermark"] == 4, st
                assert c.get_watermark_offsets(tp, timeout=10, cached=False)[1] == 3, \
                    "a global_quorum record no mirror holds is visible to home consumers"
                assert c.get_watermark_offsets(TopicPartition(plain, 0), timeout=10, cached=False)[1] == 1
                c.assign([TopicPartition(topic, 0, 3)])
                got = c.consume(num_messages=10, timeout=3)
                assert [m.value() for m in got if not m.error()] == [], \
                    "a home consumer read a global_quorum record no mirror holds"
            finally:
                regions.blackhole(EU, on=False)
            got = []
            deadline = time.monotonic() + 60
            while not got and time.monotonic() < deadline:
                got = [m for m in c.consume(num_messages=10, timeout=1) if not m.error()]
            assert [(m.offset(), m.value()) for m in got] == [(3, b"only-home")], got
            assert c.get_watermark_offsets(tp, timeout=10, cached=False)[1] == 4
        finally:
            c.close()
        regions.wait_mirrored(topic, 1, US, timeout=30)
        regions.assert_identical(topic, 0, US)

    def test_mtls_certificate_from_another_ca_refused(self, regions, tmp_path):
        """A dc-link presenting a certificate from another CA (but trusting the real one, so
        only the accepting side can refuse it) dials us-east's real dc-link: refused, logged,
        and nothing of what it offers reaches us-east."""
        rogue_certs = certs_init(regions.binary, tmp_path / "rogue-certs", [EU])
        fake = Chronik(None, tmp_path / "fake-eu" / "data", region=EU, binary=regions.binary)
        fake.name = "chronik-fake-eu-west"
        regions.extra.append(fake)
        rogue = None
        try:
            fake.start()
            rogue_topic = unique_topic("rogue")
            from kclient import create_topic as create_single

            create_single(fake.bootstrap, rogue_topic, 1)
            produce_all(fake.bootstrap, rogue_topic, [{"value": b"rogue%d" % i} for i in range(10)], acks="all")

            from regions import free_udp_port
            from harness import free_port

            rogue_udp = ("127.0.0.1", free_udp_port())
            us_entry = regions.region_entry(US, dc_link=regions.listen_addr[US])  # straight to the real dc-link
            eu_entry = "\n".join([
                "[[regions]]",
                f'name = "{EU}"',
                f'bootstrap = ["{fake.bootstrap}"]',
                f'brokers_admin = ["{fake.host}:{fake.admin_port}"]',
                f'dc_link = "{rogue_udp[0]}:{rogue_udp[1]}"',
                f'cert = "{rogue_certs / (EU + ".pem")}"',
                f'key = "{rogue_certs / (EU + ".key")}"',
            ]) + "\n"
            topo = tmp_path / "rogue-topology.toml"
            topo.write_text(regions.topology_toml([US, EU], ca=regions.certs_dir / "ca.pem",
                                                  entries={US: us_entry, EU: eu_entry}))
            regions.check_topology(topo)
            admin_port = free_port()
            cfg = tmp_path / "rogue-dclink.toml"
            cfg.write_text(regions.dclink_toml(EU, topology=topo, listen=rogue_udp, admin_port=admin_port, faults={}))
            rogue = DcLink(EU, cfg, admin_port, tmp_path / "rogue-dclink.log", regions.binary, name="dc-link-rogue")
            regions.extra.append(rogue)
            us_log = log_size(regions.dclink(US))
            rogue.launch()
            # It reaches its broker and must ship rogue_topic to us-east, which refuses it:
            # never ready, and /health/ready says why.
            status, why = wait_until(lambda: (lambda r: r if f"link to {US}" in r[1] else None)(
                http_get(rogue.admin_url + "/health/ready")), 30, interval=0.25,
                what="the rogue dc-link reporting its link to us-east as the reason it is not ready")
            assert status == 503, (status, why)

            pattern = r"untrusted|certificate|refusing"
            lines = wait_until(lambda: grep_log(regions.dclink(US), pattern, us_log), 30, interval=0.25,
                               what=f"{US} dc-link logging the refused certificate")
            print(f"\n{US} dc-link: {lines[0]}")
            link = {l["link"]: l for l in rogue.lag()["links"]}.get(f"{EU}->{US}", {})
            print(f"rogue's view of its link: {link}")
            time.sleep(5)
            assert not any(l.get("connected") for l in rogue.lag()["links"]), rogue.lag()["links"]
            assert topic_partitions(regions.bootstrap(US), rogue_topic) is None, \
                f"{rogue_topic}, offered by the rogue dc-link, exists in {US}"
            assert not grep_log(regions.dclink(US), rogue_topic, us_log), \
                f"{US} dc-link handled {rogue_topic}: " + "; ".join(grep_log(regions.dclink(US), rogue_topic, us_log))[:500]
            # The legitimate links are unaffected.
            regions.wait_links_connected(15)
        finally:
            if rogue is not None:
                rogue.stop()
            fake.stop()


    @pytest.mark.timeout(360)
    def test_deleted_mirror_topic_fails_alone_and_the_link_keeps_mirroring(self, regions):
        """Poison pill: one of two mirrored topics is deleted in the mirror region. Its partition
        is reported failed (the sender's /v1/lag and /metrics, the receiver's /v1/lag incoming
        rows and /metrics, each side's log once), and it never stalls the link: the other topic
        keeps mirroring, byte-identical up to the high watermark, while more data frames than
        the pipeline window holds (pipeline_depth 128) are produced for both topics. A new
        session (dc-link restart) recreates the mirror topic and refills it from offset 0."""
        us, eu = regions.bootstrap(US), regions.bootstrap(EU)
        victim, other = unique_topic("poison"), unique_topic("healthy")
        for t in (victim, other):
            make_topic(regions, US, t, 1)
        for t in (victim, other):
            wait_topic_in(regions, EU, t, 1)
        # One AckLog per topic: it keys acks by (partition, offset).
        acks = {victim: AckLog(), other: AckLog()}
        producers = {t: Producer({"bootstrap.servers": us, **IDEMPOTENT}) for t in (victim, other)}
        seq = {victim: 0, other: 0}

        def produce_round(n: int = 2) -> None:
            # One flush per topic and round: one batch, so (usually) one chunk per data frame.
            deadline = time.monotonic() + 60
            for t, p in producers.items():
                for _ in range(n):
                    assert _drive(p, t, 0, make_value(t, 0, seq[t]), acks[t], deadline), "producer queue full"
                    seq[t] += 1
                assert p.flush(max(1.0, deadline - time.monotonic())) == 0, f"{t}: records neither acked nor failed"

        for _ in range(5):
            produce_round()
        regions.wait_mirrored(victim, 1, US, timeout=60)
        regions.wait_mirrored(other, 1, US, timeout=60)
        link = f"{US}->{EU}"
        us_log, eu_log = log_size(regions.dclink(US)), log_size(regions.dclink(EU))

        err = future_error(admin(eu).delete_topics([victim], operation_timeout=30)[victim], 30)
        assert err is None, f"DeleteTopics {victim} in {EU}: {err}"
        wait_until(lambda: topic_partitions(eu, victim) is None, 30, interval=0.2, what=f"{victim} gone from {EU}")
        t_deleted = time.monotonic()

        def row(t: str) -> dict:
            rows = regions.lag_rows(US, t)
            return rows[0] if rows else {}

        # Well past the window: with a stalled partition, frames holding its chunks stay unacked.
        rounds = 200
        for _ in range(rounds):
            produce_round()
        assert not acks[victim].failed and not acks[other].failed, (acks[victim].failed[:3], acks[other].failed[:3])

        # The healthy topic went on: complete and identical, through all of it.
        hws = regions.wait_mirrored(other, 1, US, timeout=60)
        assert hws[0] == 2 * (5 + rounds), hws
        regions.assert_identical(other, 0, US)
        check_mirror_has_every_ack(regions, other, 1, acks[other])
        wait_until(lambda: row(other).get("lag_records") == 0, 15, interval=0.25, what=f"{other} lag 0")
        assert row(other).get("state") == "ok", row(other)

        failed = wait_until(lambda: row(victim) if row(victim).get("state") == "failed" else None, 30, interval=0.25,
                            what=f"{US} dc-link reporting {victim}/0 as failed")
        print(f"\n{victim}/0 on {link}: {failed}")
        assert victim in failed["error"] and "does not exist" in failed["error"] and EU in failed["error"], failed
        home_hw = regions.leader_state(US, victim, 0)[1]["high_watermark"]
        wait_until(lambda: row(victim).get("source_high_watermark") == home_hw, 15, interval=0.25,
                   what="the failed partition's home high watermark in the lag report")
        r = row(victim)
        assert r["mirror_log_end"] == 10 and r["lag_records"] == home_hw - 10, r
        incoming = [x for x in regions.lag(EU).get("incoming", []) if x["topic"] == victim]
        assert [(x["link"], x["partition"], x["state"]) for x in incoming] == [(link, 0, "failed")], incoming

        us_metrics, eu_metrics = regions.metrics(US), regions.metrics(EU)
        assert prometheus_value(us_metrics, "chronik_dclink_partition_failed", link=link, topic=victim,
                                partition=0) == 1, "the sender's failed gauge"
        assert prometheus_value(us_metrics, "chronik_dclink_partition_failed", link=link, topic=other,
                                partition=0) == 0
        assert prometheus_value(eu_metrics, "chronik_dclink_incoming_failed", link=link, topic=victim,
                                partition=0) == 1, "the receiver's failed gauge"

        # Logged when it failed, not once per retry (at most once a minute after that).
        allowed = 1 + int((time.monotonic() - t_deleted) // 60)
        eu_lines = grep_log(regions.dclink(EU), rf"(?=.*mirror partition failed)(?=.*{victim})", eu_log)
        us_lines = grep_log(regions.dclink(US), rf"(?=.*cannot take this partition)(?=.*{victim})", us_log)
        print(f"{EU}: {eu_lines[:1]}\n{US}: {us_lines[:1]}")
        assert 1 <= len(eu_lines) <= allowed, eu_lines
        assert 1 <= len(us_lines) <= allowed, us_lines

        # A new session offers the topic again: the mirror is recreated and refilled, exactly once.
        regions.restart_dclink(US)
        regions.wait_mirrored(victim, 1, US, timeout=90)
        hw, dump = regions.assert_identical(victim, 0, US)
        assert hw == 2 * (5 + rounds) and len(records_from_dump(dump)) == hw, hw
        wait_until(lambda: row(victim).get("state") == "ok", 15, interval=0.25, what=f"{victim}/0 reported ok again")
        check_mirror_has_every_ack(regions, victim, 1, acks[victim])


@pytest.mark.timeout(300)
def test_dclink_ready_only_while_it_reaches_its_brokers_and_peers(regions_factory):
    """/health/ready is 503 with the reason while the dc-link cannot reach its region's brokers
    or a peer region it must ship to, and 200 again once it can. A peer it ships nothing to
    does not count."""
    regions = regions_factory(names=(US, EU), brokers=1)

    def ready(region: str) -> tuple[int, str]:
        return http_get(regions.dclink(region).admin_url + "/health/ready")

    def wait_ready(region: str, ok: bool, reason: str = "", timeout: float = 60) -> tuple[float, str]:
        t0 = time.monotonic()
        status, body = wait_until(lambda: (lambda r: r if (r[0] == 200) == ok and reason in r[1] else None)(
            ready(region)), timeout, interval=0.25,
            what=f"{region} dc-link {'ready' if ok else 'not ready: ' + reason}")
        return time.monotonic() - t0, body

    topic = unique_topic("ready")
    make_topic(regions, US, topic, 1)
    wait_topic_in(regions, EU, topic, 1)
    assert ready(US) == (200, "ready\n") and ready(EU)[0] == 200

    # The link us-east->eu-west (carrying the topic) cut: us-east not ready once QUIC gives up.
    regions.blackhole(EU)
    try:
        took, body = wait_ready(US, False, f"link to {EU}", timeout=40)
        print(f"\n{US} not ready {took:.1f}s after the blackhole: {body.strip()}")
        # eu-west ships nothing to us-east: its readiness does not depend on that link.
        assert ready(EU)[0] == 200, ready(EU)
    finally:
        regions.blackhole(EU, on=False)
    took, _ = wait_ready(US, True)
    print(f"{US} ready again {took:.1f}s after the heal")

    # Its own region's only broker killed: not ready, naming the brokers; back after a restart.
    c = regions.cluster(US)
    node = c.ids[0]
    c.kill9(node)
    try:
        took, body = wait_ready(US, False, "brokers not reached", timeout=40)
        print(f"{US} not ready {took:.1f}s after its broker was killed: {body.strip()}")
    finally:
        c.restart(node)
    took, _ = wait_ready(US, True)
    print(f"{US} ready again {took:.1f}s after the broker restart")
    regions.wait_mirrored(topic, 1, US, timeout=60)


# ---------------------------------------------------------------------------
# Three regions (own deployment, after the shared one is stopped)
# ---------------------------------------------------------------------------


@pytest.mark.timeout(420)
def test_three_regions_identical_after_dclink_kill(regions_factory):
    regions = regions_factory(names=(US, EU, AP), brokers=1)
    topic = unique_topic("three")
    make_topic(regions, US, topic, 3)
    for m in (EU, AP):
        wait_topic_in(regions, m, topic, 3)
    acks = AckLog()
    prod = ProducerThread(regions.bootstrap(US), topic, [0, 1, 2], acks=acks, rate=500, max_messages=6000,
                          max_seconds=90)
    prod.start()
    try:
        wait_until(lambda: acks.count() >= 2000, 60, what="2000 acks")
        regions.kill9_dclink(US)
        time.sleep(2)
        regions.restart_dclink(US)
    except BaseException:
        prod.abandon()
        raise
    run_out(prod, 120)
    assert not acks.failed and acks.count() == 6000, (acks.count(), acks.failed[:3])
    hws = regions.wait_mirrored(topic, 3, US, timeout=90)
    assert sum(hws.values()) == 6000, hws
    for p in range(3):
        regions.assert_identical(topic, p, US, mirrors=[EU, AP])
    check_mirror_has_every_ack(regions, topic, 3, acks, mirrors=[EU, AP])


# ---------------------------------------------------------------------------
# Known gaps (own two-region deployment: 3 brokers per region, retention checked every
# second; healed before every test). Each test states the documented behaviour it holds
# the product to (docs/dc-link.md).
# ---------------------------------------------------------------------------

import re  # noqa: E402

from kclient import wait_topic_absent  # noqa: E402

# The known-gaps deployment's QUIC idle timeout ([cross_dc] idle_timeout_ms; the default is
# 10 s; keep-alives go out every second).
QUIC_IDLE_TIMEOUT_S = 5.0


@pytest.fixture(scope="class")
def gaps_deployment(tmp_path_factory, chronik_cluster_binary):
    r = Regions(tmp_path_factory.mktemp("dclink-gaps"), names=(US, EU), brokers=3, binary=chronik_cluster_binary,
                cluster_opts={"retention_check_interval_ms": 1000},
                cross_dc={"idle_timeout_ms": int(QUIC_IDLE_TIMEOUT_S * 1000)})
    r.start()
    yield r
    r.stop()


@pytest.fixture
def gap_regions(gaps_deployment):
    gaps_deployment.heal()
    yield gaps_deployment


def init_producer_id(bootstrap: str, timeout: float = 30.0) -> tuple[int, int]:
    """InitProducerId v0 (no transactional id): (producer id, epoch)."""
    deadline = time.monotonic() + timeout
    while True:
        with kwire.Conn(bootstrap.split(",")[0], timeout=10) as c:
            res = c.request(kwire.INIT_PRODUCER_ID, 0, kwire.string(None) + kwire.i32(60000))
        r = kwire.Reader(res[1])
        r.i32()
        err, pid, epoch = r.i16(), r.i64(), r.i16()
        if err == 0 and pid >= 0:
            return pid, epoch
        if time.monotonic() > deadline:
            raise AssertionError(f"InitProducerId: error {err}")
        time.sleep(0.5)


def raw_produce_batch(bootstrap: str, topic: str, p: int, batch: bytes, timeout_ms: int,
                      sock_timeout: float = 60.0) -> tuple[int, int, str | None, float]:
    """One Produce v8 of a prepared batch: (error, base_offset, error_message, seconds)."""
    t0 = time.monotonic()
    with kwire.Conn(bootstrap, timeout=sock_timeout) as c:
        res = c.request(kwire.PRODUCE, 8, kwire.produce_body(topic, p, batch, acks=-1, timeout_ms=timeout_ms))
    assert res is not None, f"broker {bootstrap} closed the connection on Produce"
    r = kwire.parse_produce_v8(res[1])[(topic, p)]
    return r["error"], r["base_offset"], r["error_message"], time.monotonic() - t0


def link_row(regions: Regions, home: str, mirror: str) -> dict:
    return {l["link"]: l for l in regions.lag(home).get("links", [])}.get(f"{home}->{mirror}", {})


def delete_home_topic(regions: Regions, region: str, topic: str) -> None:
    bs = regions.bootstrap(region)
    err = future_error(admin(bs).delete_topics([topic], operation_timeout=30)[topic], 30)
    assert err is None, f"DeleteTopics {topic} in {region}: {err}"
    wait_topic_absent(bs, topic, 30)


def home_log_start(regions: Regions, region: str, topic: str, p: int) -> int:
    """The log start every replica of topic/p in `region` agrees on (None while they differ)."""
    c = regions.cluster(region)
    starts = {i: (s or {}).get("log_start_offset") for i, s in c.states(topic, p, c.ids).items()}
    vals = set(starts.values())
    return vals.pop() if len(starts) == c.n and len(vals) == 1 else None


def produce_old_then_new(bootstrap: str, topic: str, tag: str, n_old: int, n_new: int, start_seq: int = 0) -> None:
    """Produce (partition 0, idempotent, acks=all) n_old records stamped an hour ago, then, in a
    separate batch, n_new stamped now; values make_value(tag, 0, start_seq + i)."""
    old_ts = int(time.time() * 1000) - 3_600_000
    batches = ([{"partition": 0, "value": make_value(tag, 0, start_seq + i), "timestamp": old_ts}
                for i in range(n_old)],
               [{"partition": 0, "value": make_value(tag, 0, start_seq + n_old + i)} for i in range(n_new)])
    for msgs in batches:
        if msgs:
            r = produce_all(bootstrap, topic, msgs, acks="all", **{"enable.idempotence": True})
            assert all(x[0] is None for x in r), [x for x in r if x[0] is not None][:3]


class TestKnownGaps:

    @pytest.mark.timeout(300)
    def test_global_quorum_retry_at_new_home_leader_learns_mirror_acks_from_rereport(self, gap_regions):
        """The mirror acked a global_quorum batch to the old home leader only; the old leader
        dies; the producer's idempotent retry reaches the new leader, which has never heard
        from the dc-link about it and gets no new ack (the mirror is complete, nothing new to
        ship). Only the dc-link's once-a-second re-report of mirror acks can complete it:
        the retry must succeed at the batch's original offset, within a few seconds."""
        regions = gap_regions
        topic = unique_topic("gqrereport")
        make_topic(regions, US, topic, 1, {"chronik.replication.mode": "global_quorum"})
        wait_topic_in(regions, EU, topic, 1)
        us_c = regions.cluster(US)
        # Healthy first: the link has offered the topic and acks flow.
        err, _, msg, took = raw_produce(leader_bootstrap(regions, US, topic, 0), topic, 0, [b"warm"], timeout_ms=20000)
        assert err == 0, f"warm-up global_quorum produce: error {err} {msg!r} after {took:.1f}s"

        pid, epoch = init_producer_id(regions.bootstrap(US))
        values = [f"gq-rereport-{i}".encode() for i in range(10)]
        batch = kwire.record_batch([(None, v) for v in values], producer_id=pid, producer_epoch=epoch,
                                   base_sequence=0)
        old = us_c.leader_of(topic, 0)
        regions.blackhole(EU)
        try:
            err, _, msg, took = raw_produce_batch(us_c.nodes[old].bootstrap, topic, 0, batch, timeout_ms=3000)
            assert err == NOT_ENOUGH_REPLICAS_AFTER_APPEND, \
                f"global_quorum produce with the mirror blackholed: error {err} ({msg!r}) after {took:.1f}s"
        finally:
            regions.blackhole(EU, on=False)
        # The mirror catches up; the dc-link reports its acks to the old leader.
        hws = regions.wait_mirrored(topic, 1, US, timeout=90)
        assert hws[0] == 11, hws
        us_c.kill9(old)
        new = us_c.leader_of(topic, 0, nodes=[i for i in us_c.ids if i != old], timeout=30)
        t0 = time.monotonic()
        err, base, msg, took = raw_produce_batch(us_c.nodes[new].bootstrap, topic, 0, batch, timeout_ms=10000)
        print(f"\nretry at the new leader {new} (old {old} killed): error {err} base_offset {base} after {took:.2f}s")
        assert err == 0, (f"idempotent retry at the new home leader: error {err} ({msg!r}) after {took:.1f}s; "
                          f"the new leader did not learn the mirror's acks (the dc-link re-reports them every second)")
        assert base == 1, f"the retry was acknowledged at offset {base}, the batch is stored at 1"
        assert time.monotonic() - t0 < 8, f"the retry took {time.monotonic() - t0:.1f}s"
        us_c.restart(old)
        hw, dump = regions.assert_identical(topic, 0, US)
        assert hw == 11, f"high watermark {hw}: the retry was written again"
        log = records_from_dump(dump)
        assert [log[o] for o in range(1, 11)] == values, "the batch is not stored exactly once at offsets 1..10"

    @pytest.mark.timeout(360)
    def test_global_quorum_producer_across_home_leader_kill(self, gap_regions):
        """An idempotent acks=all producer (librdkafka) waits for mirror acks (the mirror region
        is blackholed) when its home partition leader is killed: once the mirror is reachable
        again every record is acknowledged, stored once at one offset, home and mirror
        identical."""
        regions = gap_regions
        topic = unique_topic("gqfailover")
        make_topic(regions, US, topic, 1, {"chronik.replication.mode": "global_quorum"})
        wait_topic_in(regions, EU, topic, 1)
        us_c = regions.cluster(US)
        acks = AckLog()
        produce_batch(regions.bootstrap(US), topic, 0, 5, acks, tag="gqwarm", timeout=60)
        assert not acks.failed and acks.count() == 5, acks.failed[:3]
        base = regions.wait_mirrored(topic, 1, US, timeout=60)[0]
        old = us_c.leader_of(topic, 0)
        regions.blackhole(EU)
        prod = ProducerThread(us_c.bootstrap, topic, [0], acks=acks, rate=1000, max_messages=50, max_seconds=200,
                              tag="gqkill", flush_timeout=180, **{"message.timeout.ms": 150000})
        prod.start()
        try:
            # Written and committed at home, none acknowledged: they wait for the mirror.
            wait_until(lambda: (us_c.partition_state(old, topic, 0) or {}).get("high_watermark", 0) >= base + 50, 60,
                       interval=0.1, what="the 50 records committed in the home region")
            assert acks.count() == 5, f"{acks.count() - 5} global_quorum records acknowledged while the mirror was cut off"
            us_c.kill9(old)
            new = us_c.leader_of(topic, 0, nodes=[i for i in us_c.ids if i != old], timeout=30)
            assert acks.count() == 5
            t_heal = time.monotonic()
            regions.blackhole(EU, on=False)
            wait_until(lambda: acks.count() >= 55 or acks.failed, 120, interval=0.1,
                       what="the 50 records acknowledged after the failover and heal")
            took = time.monotonic() - t_heal
        except BaseException:
            prod.abandon()
            regions.blackhole(EU, on=False)
            raise
        prod.stop(timeout=60)
        print(f"\nhome leader {old} killed while 50 global_quorum records waited for {EU}; new leader {new}; "
              f"all acknowledged {took:.1f}s after the mirror became reachable")
        assert not acks.failed, f"{len(acks.failed)} records failed: {acks.failed[:3]}"
        us_c.restart(old)
        regions.wait_mirrored(topic, 1, US, timeout=60)
        hw, _ = regions.assert_identical(topic, 0, US)
        assert hw == base + 50, f"high watermark {hw}, expected {base + 50}: a retry was written twice"
        check_mirror_has_every_ack(regions, topic, 1, acks)

    @pytest.mark.timeout(360)
    def test_mirror_region_down_longer_than_quic_idle_timeout(self, gap_regions):
        """The mirror region's dc-link is blackholed for 2.5x the QUIC idle timeout while the
        home keeps producing: the link is declared down (idle timeout), reconnects after the
        heal, and the mirror catches up to byte-identical logs with every ack."""
        regions = gap_regions
        topic = unique_topic("idle")
        make_topic(regions, US, topic, 3)
        wait_topic_in(regions, EU, topic, 3)
        acks = AckLog()
        prod = ProducerThread(regions.cluster(US).bootstrap, topic, [0, 1, 2], acks=acks, rate=200,
                              max_messages=200 * 60, max_seconds=90)
        accepted = r"incoming link from us-east accepted"
        eu_log = log_size(regions.dclink(EU))
        prod.start()
        try:
            wait_until(lambda: acks.count() >= 500, 60, what="500 acks")
            reconnects = link_row(regions, US, EU).get("reconnects", 0)
            t_bh = time.monotonic()
            regions.blackhole(EU)
            wait_until(lambda: not link_row(regions, US, EU).get("connected"), QUIC_IDLE_TIMEOUT_S + 20, interval=0.2,
                       what=f"{US}->{EU} declared down while blackholed")
            down_after = time.monotonic() - t_bh
            frozen = regions.mirror_progress(topic, 3, US)
            wait_until(lambda: time.monotonic() - t_bh >= 2.5 * QUIC_IDLE_TIMEOUT_S, 60, interval=0.5,
                       what="the blackhole lasting 2.5x the idle timeout")
            later = regions.mirror_progress(topic, 3, US)
            regions.blackhole(EU, on=False)
            t_heal = time.monotonic()
            regions.wait_links_connected(60, links=[f"{US}->{EU}"])
            up_after = time.monotonic() - t_heal
        except BaseException:
            prod.abandon()
            raise
        run_out(prod, 120)
        assert not acks.failed and acks.count() == prod.produced, (acks.count(), prod.produced, acks.failed[:3])
        print(f"\nblackholed {2.5 * QUIC_IDLE_TIMEOUT_S:.0f}s: link down after {down_after:.1f}s, up again "
              f"{up_after:.1f}s after the heal; reconnects {reconnects} -> {link_row(regions, US, EU).get('reconnects')}")
        # Tight enough that the default (10 s) would fail it: the configured timeout is used.
        assert down_after <= QUIC_IDLE_TIMEOUT_S + 4, f"the link was declared down only after {down_after:.1f}s"
        assert sum(v[1] or 0 for v in later.values()) == sum(v[1] or 0 for v in frozen.values()), \
            f"the mirror advanced while blackholed: {frozen} -> {later}"
        assert link_row(regions, US, EU).get("reconnects", 0) > reconnects, "the link never reconnected"
        assert grep_log(regions.dclink(EU), accepted, eu_log), f"{EU} dc-link logged no new incoming link"
        regions.wait_mirrored(topic, 3, US, timeout=90)
        for p in range(3):
            regions.assert_identical(topic, p, US)
        check_mirror_has_every_ack(regions, topic, 3, acks)

    @pytest.mark.timeout(300)
    def test_home_topic_recreated_while_mirror_ahead_never_mixes_incarnations(self, gap_regions):
        """A home topic is deleted and re-created under the same name while its mirror holds
        100 records. metadata-sync deletes the mirror with its home topic, so usually the new
        incarnation simply gets a new mirror; if the offer of the new one arrives first, the
        refusal path below holds. The new
        incarnation gets a batch boundary exactly at the mirror's end (offset 100) and grows
        past it. Acceptable: the mirror keeps the old incarnation untouched and says so
        (a non-`ok` partition state in /v1/lag, or a logged error), or it follows the new
        incarnation exactly. Not acceptable: a mirror holding the deleted incarnation's
        records below 100 and the new one's from 100 on, reported caught up (lag 0), which
        is what happened before offers carried topic ids."""
        regions = gap_regions
        us = regions.bootstrap(US)
        topic = unique_topic("recreate")
        make_topic(regions, US, topic, 1)
        wait_topic_in(regions, EU, topic, 1)
        produce_batch(us, topic, 0, 100, AckLog(), tag="old", timeout=60)
        regions.wait_mirrored(topic, 1, US, timeout=60)
        _, old_dump = regions.assert_identical(topic, 0, US)
        us_log = log_size(regions.dclink(US))
        eu_c = regions.cluster(EU)

        def mirror():
            ml, ms = regions.leader_state(EU, topic, 0)
            return ms, eu_c.dump_log(ml, topic, 0)

        old_id = describe(regions.bootstrap(EU), topic)["chronik.mirror.source.topic.id"]
        delete_home_topic(regions, US, topic)
        make_topic(regions, US, topic, 1)
        acks = AckLog()
        produce_batch(us, topic, 0, 30, acks, tag="new", timeout=60)
        ahead = r"mirror is ahead of its home log"

        def replaced():
            """metadata-sync deleted the old mirror with its home topic (and may have created
            the new incarnation's)."""
            try:
                return describe(regions.bootstrap(EU), topic).get("chronik.mirror.source.topic.id") != old_id
            except Exception:
                return True

        def noticed():
            rows = regions.lag_rows(US, topic)
            return (rows and rows[0].get("state", "ok") != "ok") or grep_log(regions.dclink(US), ahead, us_log) \
                or replaced()

        wait_until(noticed, 30, interval=0.25,
                   what=f"{US} dc-link noticing the re-created home topic (failed state), the mirror ahead of it, "
                        f"or the mirror replaced")
        if not replaced():
            ms, dump = mirror()
            assert ms["log_end_offset"] == 100 and dump == old_dump, \
                f"the mirror changed while the new home log was behind it: {ms}"
        # Up to exactly 100, then a separate batch from 100 on: the mirror's end is a batch
        # boundary of the new log.
        produce_batch(us, topic, 0, 70, acks, tag="new", start_seq=30, timeout=60)
        assert regions.leader_state(US, topic, 0)[1]["high_watermark"] == 100
        produce_batch(us, topic, 0, 30, acks, tag="new", start_seq=100, timeout=60)
        home_hw = regions.leader_state(US, topic, 0)[1]["high_watermark"]
        assert home_hw == 130, home_hw

        def settled():
            rows = regions.lag_rows(US, topic)
            ms, dump = mirror()
            if rows and rows[0].get("state", "ok") != "ok":
                return "reported", ms, dump, rows
            if ms["log_end_offset"] == ms["high_watermark"] == home_hw:
                return "caught up", ms, dump, rows
            return None

        try:
            outcome, ms, dump, rows = wait_until(settled, 30, interval=0.5,
                                                 what="the mirror reaching the new home end or reporting why not")
        except TimeoutError:
            outcome, (ms, dump), rows = "no change", mirror(), regions.lag_rows(US, topic)
        home_dump = regions.cluster(US).dump_log(regions.cluster(US).leader_of(topic, 0), topic, 0)
        home, got = records_from_dump(home_dump), records_from_dump(dump)
        mixed = sorted(o for o in got if got[o] != home.get(o))
        print(f"\nre-created {topic}: home hw {home_hw}; outcome '{outcome}'; mirror leo {ms['log_end_offset']} "
              f"hw {ms['high_watermark']}, {len(mixed)} offsets differ from the home; lag rows {rows}")
        try:
            if outcome == "caught up":
                assert not mixed, (
                    f"silent divergence: the mirror of the re-created topic reports caught up (end {home_hw}, lag "
                    f"rows {rows}) but holds the deleted incarnation at offsets {mixed[0]}..{mixed[-1]} "
                    f"({got[mixed[0]][:12]!r}...) and the new one's from {mixed[-1] + 1} "
                    f"({got.get(mixed[-1] + 1, b'')[:12]!r}...): the dc-link shipped the new log from the old "
                    f"mirror end")
                assert dump == home_dump
            else:
                assert dump == old_dump, f"the mirror moved ({outcome}) but did not follow the new home log: {ms}"
                assert outcome == "reported" or grep_log(regions.dclink(US), ahead, us_log), \
                    "the mirror kept the old incarnation without reporting it"
                # The documented way out: delete the mirror topic in the mirror region; the
                # dc-link offers the refused topic again within 30 s and refills a new mirror.
                delete_home_topic(regions, EU, topic)
                t_del = time.monotonic()
                regions.wait_mirrored(topic, 1, US, timeout=90)
                _, dump = regions.assert_identical(topic, 0, US)
                assert records_from_dump(dump) == home, "the refilled mirror is not the new incarnation"
                wait_until(lambda: (regions.lag_rows(US, topic) or [{}])[0].get("state") == "ok", 30,
                           interval=0.5, what=f"{topic}/0 back to ok")
                print(f"mirror deleted and refilled with the new incarnation in {time.monotonic() - t_del:.1f}s")
        finally:
            delete_home_topic(regions, US, topic)

    @pytest.mark.timeout(300)
    def test_retention_at_home_empty_mirror_starts_at_home_log_start(self, gap_regions):
        """docs/dc-link.md, Retention: if the home log no longer holds the mirror's next offset,
        the sender continues from the home log start, and an empty mirror partition starts
        there: same log start, records and epoch history as the home."""
        regions = gap_regions
        us = regions.bootstrap(US)
        topic = unique_topic("ret-empty")
        make_topic(regions, US, topic, 1, {"retention.ms": "60000"})
        wait_topic_in(regions, EU, topic, 1)
        # With the home dc-link down, the home log loses its head to retention.
        regions.kill9_dclink(US)
        produce_old_then_new(us, topic, "e", 30, 20)
        wait_until(lambda: home_log_start(regions, US, topic, 0) == 30, 60, interval=0.5,
                   what=f"retention moving {topic}'s log start to 30 on every home replica")
        us_log = log_size(regions.dclink(US))
        regions.restart_dclink(US)
        regions.wait_links_connected(60)
        hws = regions.wait_mirrored(topic, 1, US, timeout=60)
        assert hws[0] == 50, hws
        assert grep_log(regions.dclink(US), rf"(?=.*{topic})(?=.*retention)", us_log), \
            "the sender did not log continuing from the home log start"
        _, hs = regions.leader_state(US, topic, 0)
        _, ms = regions.leader_state(EU, topic, 0)
        print(f"\nhome: log start {hs['log_start_offset']} epochs {hs['epochs']}; mirror: log start "
              f"{ms['log_start_offset']} epochs {ms['epochs']}")
        hw, dump = regions.assert_identical(topic, 0, US)
        assert sorted(records_from_dump(dump)) == list(range(30, 50))

    @pytest.mark.timeout(360)
    def test_retention_gap_fails_the_partition_alone_until_the_mirror_is_emptied(self, gap_regions):
        """docs/dc-link.md, Retention: a NON-EMPTY mirror cannot skip records retention removed
        at home: the partition is `failed` ("retention removed records the mirror lacks") in
        /v1/lag with its lag visible, the mirror is untouched, the rest of the link goes on,
        the failure is logged once (then at most once a minute); emptying the mirror
        partition (DeleteRecords up to its end) restarts it from the home log start."""
        regions = gap_regions
        us = regions.bootstrap(US)
        gap_t, control_t = unique_topic("ret-gap"), unique_topic("ret-ctl")
        make_topic(regions, US, gap_t, 1)
        make_topic(regions, US, control_t, 1)
        for t in (gap_t, control_t):
            wait_topic_in(regions, EU, t, 1)
        # 20 old records, mirrored.
        produce_old_then_new(us, gap_t, "g", 20, 0)
        regions.wait_mirrored(gap_t, 1, US, timeout=60)
        eu_c = regions.cluster(EU)
        ml, _ = regions.leader_state(EU, gap_t, 0)
        mirror_before = eu_c.dump_log(ml, gap_t, 0)

        regions.kill9_dclink(US)
        produce_old_then_new(us, gap_t, "g", 30, 10, start_seq=20)
        # DeleteRecords at home, not retention: a retention config reaches the mirror too
        # (metadata-sync) and would empty it the same way, leaving no gap.
        (f,) = admin(us).delete_records([TopicPartition(gap_t, 0, 50)], operation_timeout=30).values()
        assert f.result(timeout=60).low_watermark == 50
        wait_until(lambda: home_log_start(regions, US, gap_t, 0) == 50, 60, interval=0.5,
                   what=f"{gap_t}'s log start at 50 on every home replica")
        us_log, eu_log = log_size(regions.dclink(US)), log_size(regions.dclink(EU))
        regions.restart_dclink(US)
        regions.wait_links_connected(60)

        def failed_row():
            rows = regions.lag_rows(US, gap_t)
            return rows and rows[0].get("state") == "failed" and rows[0]

        row = wait_until(failed_row, 30, interval=0.5, what=f"{gap_t}/0 reported failed in {US}'s /v1/lag")
        print(f"\n{gap_t}: lag row {row}")
        assert "retention" in (row.get("error") or ""), row
        assert (row["source_high_watermark"], row["mirror_log_end"], row["lag_records"]) == (60, 20, 40), row
        incoming = [r for r in regions.lag(EU).get("incoming", []) if r.get("topic") == gap_t]
        assert incoming and incoming[0].get("state") == "failed", f"{EU} incoming rows: {regions.lag(EU).get('incoming')}"

        # The rest of the link goes on.
        acks = AckLog()
        produce_batch(us, control_t, 0, 50, acks, timeout=60)
        regions.wait_mirrored(control_t, 1, US, timeout=60)
        regions.assert_identical(control_t, 0, US)

        # Untouched, and not retried hot: a few log lines, not one per attempt.
        t1 = time.monotonic()
        wait_until(lambda: time.monotonic() - t1 >= 6, 10, interval=0.5, what="6 s of a failed partition")
        ml, ms = regions.leader_state(EU, gap_t, 0)
        assert (ms["log_start_offset"], ms["log_end_offset"], ms["high_watermark"]) == (0, 20, 20), ms
        assert eu_c.dump_log(ml, gap_t, 0) == mirror_before, "the non-empty mirror changed across the gap"
        us_lines = grep_log(regions.dclink(US), gap_t, us_log)
        eu_lines = grep_log(regions.dclink(EU), gap_t, eu_log)
        errors = [l for l in us_lines + eu_lines if re.search(r"\bERROR\b", re.sub(r"\x1b\[[0-9;]*m", "", l))]
        print(f"{US} dc-link logged {len(us_lines)} lines about {gap_t}, {EU} {len(eu_lines)}; "
              f"{len(errors)} at ERROR")
        assert errors, f"no ERROR line about {gap_t} on either side"
        assert len(us_lines) + len(eu_lines) <= 20, \
            f"{len(us_lines) + len(eu_lines)} log lines about {gap_t} in a few seconds: retried hot?"

        # Emptied (DeleteRecords up to its end, in the mirror region): restarts from the home log start.
        fut = admin(regions.bootstrap(EU)).delete_records([TopicPartition(gap_t, 0, 20)],
                                                          operation_timeout=30)
        (f,) = fut.values()
        lw = f.result(timeout=60)
        assert lw.low_watermark == 20, lw
        hws = regions.wait_mirrored(gap_t, 1, US, timeout=60)
        assert hws[0] == 60, hws
        wait_until(lambda: (regions.lag_rows(US, gap_t) or [{}])[0].get("state") == "ok", 30, interval=0.5,
                   what=f"{gap_t}/0 back to ok")
        hl, hs = regions.leader_state(US, gap_t, 0)
        ml, ms = regions.leader_state(EU, gap_t, 0)
        home_dump, mirror_dump = regions.cluster(US).dump_log(hl, gap_t, 0), eu_c.dump_log(ml, gap_t, 0)
        print(f"restarted: home log start {hs['log_start_offset']} epochs {hs['epochs']}; mirror log start "
              f"{ms['log_start_offset']} epochs {ms['epochs']}")
        assert mirror_dump == home_dump, "the restarted mirror differs from the home log"
        assert sorted(records_from_dump(mirror_dump)) == list(range(50, 60))
        assert ms["log_start_offset"] == hs["log_start_offset"] == 50, (ms, hs)
        assert ms["epochs"] == hs["epochs"], (ms["epochs"], hs["epochs"])
        delete_home_topic(regions, US, gap_t)


@pytest.mark.timeout(420)
def test_global_quorum_three_regions_waits_for_both_mirrors(regions_factory):
    """global_quorum with two mirror regions (global_quorum_regions = 0: all of them): an
    acknowledged record is in BOTH mirrors when the ack arrives; with either mirror region
    blackholed, acks=all fails with NOT_ENOUGH_REPLICAS_AFTER_APPEND after the request
    timeout (the other mirror has the record); after the heal the retry succeeds and all
    three logs are identical."""
    regions = regions_factory(names=(US, EU, AP), brokers=1)
    topic = unique_topic("gq3")
    make_topic(regions, US, topic, 1, {"chronik.replication.mode": "global_quorum"})
    for m in (EU, AP):
        wait_topic_in(regions, m, topic, 1)

    def mirror_ends() -> dict[str, int]:
        return {m: regions.leader_state(m, topic, 0)[1]["high_watermark"] for m in (EU, AP)}

    def produce(value: bytes, timeout_ms: int) -> tuple[int, int, str | None, float]:
        return raw_produce(leader_bootstrap(regions, US, topic, 0), topic, 0, [value], timeout_ms=timeout_ms,
                           sock_timeout=timeout_ms / 1000 + 30)

    # With three regions the home lease binds: writes start once a majority granted it.
    deadline = time.monotonic() + 30
    while True:
        err, off, msg, took = produce(b"warm", 20000)
        if err != NOT_LEADER_OR_FOLLOWER or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert err == 0, f"warm-up: error {err} {msg!r} after {took:.1f}s"
    for i in range(5):
        err, off, msg, _ = produce(f"both{i}".encode(), 10000)
        assert err == 0, (err, msg)
        ends = mirror_ends()  # read right after the ack, no waiting
        assert all(e >= off + 1 for e in ends.values()), \
            f"offset {off} acknowledged but the mirrors' committed ends are {ends}"
    written = 6
    for cut, other in ((AP, EU), (EU, AP)):
        regions.blackhole(cut)
        try:
            err, _, msg, took = produce(f"cut-{cut}".encode(), 3000)
            written += 1
            print(f"\n{cut} blackholed: error {err} {msg!r} after {took:.2f}s; mirror ends {mirror_ends()}")
            assert err == NOT_ENOUGH_REPLICAS_AFTER_APPEND, \
                f"with {cut} blackholed: error {err} ({msg!r}) after {took:.2f}s; mirror ends {mirror_ends()}"
            assert 2.5 <= took <= 10, f"answered after {took:.2f}s with a 3 s request timeout"
            wait_until(lambda: mirror_ends()[other] >= written, 30, interval=0.2,
                       what=f"{other} (not blackholed) holding the record")
            assert mirror_ends()[cut] < written, f"{cut} has the record although blackholed: {mirror_ends()}"
        finally:
            regions.blackhole(cut, on=False)
        deadline = time.monotonic() + 90
        attempts = []
        while True:
            err, off, msg, took = produce(f"healed-{cut}".encode(), 5000)
            attempts.append(err)
            written += 1
            if err == 0 or time.monotonic() > deadline:
                break
            assert err == NOT_ENOUGH_REPLICAS_AFTER_APPEND, (err, msg)
        assert err == 0, f"still failing 90 s after the heal of {cut}: {attempts}"
        ends = mirror_ends()
        assert all(e >= off + 1 for e in ends.values()), f"offset {off} acknowledged, mirror ends {ends}"
    hws = regions.wait_mirrored(topic, 1, US, timeout=60)
    assert hws[0] == written, (hws, written)
    regions.assert_identical(topic, 0, US, mirrors=[EU, AP])


def test_delete_records_at_home_reaches_the_mirror(regions_factory):
    """DeleteRecords at home moves the mirror's log start too (with the next records
    shipped, or on its own when the partition is idle), so a mirror never serves records
    deleted at home."""
    regions = regions_factory()
    us = regions.bootstrap(US)
    topic = unique_topic("delrec")
    make_topic(regions, US, topic, 1)
    wait_topic_in(regions, EU, topic, 1)
    produce_all(us, topic, [{"value": b"a%d" % i, "partition": 0} for i in range(20)], acks="all")
    regions.wait_mirrored(topic, 1, US, timeout=60)
    (f,) = admin(us).delete_records([TopicPartition(topic, 0, 12)], operation_timeout=30).values()
    assert f.result(timeout=60).low_watermark == 12
    produce_all(us, topic, [{"value": b"b%d" % i, "partition": 0} for i in range(5)], acks="all")
    regions.wait_mirrored(topic, 1, US, timeout=60)
    wait_until(lambda: regions.leader_state(EU, topic, 0)[1]["log_start_offset"] == 12, 30, interval=0.25,
               what="the mirror's log start at 12")
    regions.assert_identical(topic, 0, US)
    got = consume(regions.bootstrap(EU), topic, 0, count=13, timeout=30)
    assert [m.offset() for m in got][0] == 12 and len(got) == 13, [m.offset() for m in got]
    # Idle: nothing is produced after this DeleteRecords.
    (f,) = admin(us).delete_records([TopicPartition(topic, 0, 22)], operation_timeout=30).values()
    assert f.result(timeout=60).low_watermark == 22
    wait_until(lambda: regions.leader_state(EU, topic, 0)[1]["log_start_offset"] == 22, 30, interval=0.25,
               what="the idle mirror's log start at 22")
    regions.assert_identical(topic, 0, US)
    got = consume(regions.bootstrap(EU), topic, 0, count=3, timeout=30)
    assert [m.offset() for m in got] == [22, 23, 24], [m.offset() for m in got]


def test_compacted_topic_mirrors_across_the_home_cleaners_holes(regions_factory):
    """A compacted topic cleaned at home while its dc-link is down: the mirror then takes the
    cleaned batches across the holes the home's cleaner left (offsets unchanged), and later
    cleans what it receives itself. Both regions end with exactly each key's latest record,
    tombstones included, at the same offsets."""
    from test_compaction import COMPACT, _latest, _now_ms, _produce_keyed, _sentinel, _wait_compacted

    regions = regions_factory(names=(US, EU), brokers=1, cluster_opts={"cleaner_backoff_ms": 300})
    us, eu = regions.bootstrap(US), regions.bootstrap(EU)
    topic = unique_topic("compact-mirror")
    make_topic(regions, US, topic, 1, config=COMPACT)
    wait_topic_in(regions, EU, topic, 1)
    regions.stop_dclink(US)
    ts = _now_ms()
    pairs = [(b"k%d" % (i % 10), b"a%d" % i) for i in range(120)] + [(b"k0", None)]
    offsets = _produce_keyed(us, topic, pairs, ts)
    offsets.append(_sentinel(us, topic, ts))
    pairs.append((b"sentinel", b"end"))
    expected = {o: (k, v) for k, (o, v) in _latest(pairs, offsets).items()}
    _wait_compacted(us, topic, expected)
    regions.restart_dclink(US)
    regions.wait_mirrored(topic, 1, US, timeout=60)
    assert {o: (k, v) for o, k, v in records_to_high_watermark(eu, topic)} == expected
    # Now the mirror receives superseded records before the home cleans them, and its own
    # cleaner removes them.
    more = [(b"k%d" % (i % 10), b"b%d" % i) for i in range(60)]
    offsets += _produce_keyed(us, topic, more, ts + 20_000)
    pairs += more
    offsets.append(_sentinel(us, topic, ts + 20_000, key=b"sentinel-2"))
    pairs.append((b"sentinel-2", b"end"))
    expected = {o: (k, v) for k, (o, v) in _latest(pairs, offsets).items()}
    for bs in (us, eu):
        _wait_compacted(bs, topic, expected)
    regions.wait_mirrored(topic, 1, US, timeout=60)
    # eu-west's leader ran passes of its own (the record of them is its copy's).
    assert regions.leader_state(EU, topic, 0)[1]["cleaned"], "the mirror never cleaned its copy"
