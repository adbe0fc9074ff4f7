"""Produce in any region: a produce to a mirror partition is forwarded to the topic's home.

Every topic here is homed in us-east; the producers write to eu-west's brokers, whose
mirror-partition leaders forward each batch over the dc-link's QUIC connection to
us-east, where the partition leader appends it as any produce. The client gets the
home's offset (or the home's Kafka error).

One two-region deployment (us-east, eu-west, 3 brokers each, a wan-sim in front of each
dc-link) is shared by the tests of the class and healed before each. Its topology sets
`cross_dc.forward_max_inflight_bytes` to 2 MiB so that the back-pressure test can reach
the bound with a few producers.

Paths, as tests/regions.py wires them: eu-west's dc-link dials us-east through us-east's
wan-sim, so `blackhole(US)` / `set_wan(US, ...)` impair forwarding (and mirroring of
eu-west topics), while `set_wan(EU, ...)` impairs only what us-east ships to eu-west
(mirroring of us-east topics, hence read-your-writes).

What every test checks in the end, record by record: each acknowledged record is in
us-east's log exactly once, at the offset the client was given, in each producer's order
(ackcheck.verify_partition), and eu-west's mirror reads the same {offset: value} and holds
the same bytes (Regions.assert_identical).
"""

from __future__ import annotations

import json
import subprocess
import threading
import time

import pytest
import kwire
from ackcheck import AckLog, ProducerThread, new_tag, produce_batch
from checkrun import execute
from harness import wait_until
from kclient import consume, unique_topic, watermarks
from regions import Regions, prometheus_value
from test_clients import RUN_TIMEOUT, client_cmd, go_bin, java_jar, kcat_bin  # noqa: F401
from test_dclink import (check_mirror_has_every_ack, delete_home_topic, init_producer_id, leader_bootstrap, make_topic, raw_produce,
                         raw_produce_batch, wait_topic_in)
from test_kafkajs import JS_CHECK, node_bin  # noqa: F401
from test_kafkajs import verify as verify_kafkajs_dump
from test_switchover import switchover

pytestmark = pytest.mark.chronik

US, EU = "us-east", "eu-west"
LINK = f"{EU}->{US}"  # the link eu-west forwards over
FORWARD_LIMIT = 2 * 1024 * 1024

CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
OUT_OF_ORDER_SEQUENCE_NUMBER = 45
# What a forwarding broker may answer while the home is out of reach; librdkafka retries
# every one of them (a non-retriable code fails the message at once).
RETRIABLE = {6, 7, 19, 20}  # NOT_LEADER_OR_FOLLOWER, REQUEST_TIMED_OUT, NOT_ENOUGH_REPLICAS(_AFTER_APPEND)

# An eu-west producer that outlasts a 20 s blackhole plus the link's reconnect.
PATIENT = {"message.timeout.ms": 120000, "request.timeout.ms": 10000}


@pytest.fixture(scope="class")
def fwd_regions(tmp_path_factory, chronik_cluster_binary):
    r = Regions(tmp_path_factory.mktemp("fwd-2r"), names=(US, EU), brokers=3, binary=chronik_cluster_binary,
                cross_dc={"forward_max_inflight_bytes": FORWARD_LIMIT})
    r.start()
    yield r
    r.stop()


@pytest.fixture
def regions(fwd_regions):
    fwd_regions.heal()
    yield fwd_regions


def us_topic(regions: Regions, prefix: str, partitions: int = 3, config: dict | None = None) -> str:
    """A new topic homed in us-east, mirrored (and led) in eu-west."""
    topic = unique_topic(prefix)
    make_topic(regions, US, topic, partitions, config)
    wait_topic_in(regions, EU, topic, partitions)
    return topic


def forwarded(regions: Regions, result: str | None = None) -> float:
    """chronik_forward_requests_total on eu-west's dc-link for the link to us-east."""
    labels = {"link": LINK} if result is None else {"link": LINK, "result": result}
    return prometheus_value(regions.metrics(EU), "chronik_forward_requests_total", **labels) or 0.0


def assert_logs_identical(regions: Regions, topic: str, partitions: int) -> None:
    regions.wait_mirrored(topic, partitions, home=US)
    for p in range(partitions):
        regions.assert_identical(topic, p, home=US)


def every_ack_in_both(regions: Regions, topic: str, partitions: int, acks: AckLog) -> dict[int, int]:
    """Once eu-west has mirrored everything: every ack exactly once at its offset, in producer
    order, in us-east's log, eu-west's reads the same and both hold the same bytes.
    Returns {p: records}."""
    regions.wait_mirrored(topic, partitions, home=US)
    counts = check_mirror_has_every_ack(regions, topic, partitions, acks, home=US, mirrors=[EU])
    assert_logs_identical(regions, topic, partitions)
    return counts


def eu_producer_through(regions: Regions, topic: str, scenario, what: str) -> AckLog:
    """An idempotent eu-west producer writes to every partition of `topic` while
    `scenario(more_acks)` runs (more_acks(n, why) waits for n more acks). Every record must
    end acknowledged (the client saw only retriable errors), exactly once at its offset in
    producer order in us-east, and eu-west must read and hold the same."""
    acks = AckLog()
    prod = ProducerThread(regions.bootstrap(EU), topic, [0, 1, 2], acks=acks, rate=200, max_messages=40_000,
                          max_seconds=240, flush_timeout=150, **PATIENT)

    def more_acks(n: int, why: str) -> None:
        at = acks.count()
        wait_until(lambda: acks.count() >= at + n, 150, interval=0.2, what=why)

    prod.start()
    try:
        scenario(more_acks)
        prod.stop()
    except BaseException:
        prod.abandon()
        raise
    assert not acks.failed, f"{len(acks.failed)} records failed ({what}), e.g. {acks.failed[:3]}"
    counts = every_ack_in_both(regions, topic, 3, acks)
    assert sum(counts.values()) == acks.count() == prod.produced, (counts, acks.count(), prod.produced)
    return acks


def produce_through_fault(regions: Regions, topic: str, inject, heal, what: str) -> AckLog:
    """300 acks, then `inject()` and `heal()`, then 300 more acks (eu_producer_through)."""

    def scenario(more_acks):
        more_acks(300, "300 forwarded acks before the fault")
        inject()
        heal()
        more_acks(300, f"300 more forwarded acks after {what} was healed")

    return eu_producer_through(regions, topic, scenario, what)


def list_offsets_latest(bootstrap: str, topic: str, p: int) -> int:
    """The high watermark as one ListOffsets v1 (latest) straight to `bootstrap` answers it."""
    with kwire.Conn(bootstrap, timeout=10) as c:
        res = c.request(kwire.LIST_OFFSETS, 1, kwire.list_offsets_v1_body(topic, p, -1))
    r = kwire.parse_list_offsets_v1(res[1])[(topic, p)]
    assert r["error"] == 0, r
    return r["offset"]


class TestForwarding:

    # -- every client ---------------------------------------------------------------

    @pytest.mark.parametrize("client,codec", [("java", "zstd"), ("franz-go", "snappy"), ("confluent-kafka", "lz4"),
                                              ("kafka-python", "gzip")])
    def test_client_in_eu_west_writes_a_us_east_topic(self, regions, client, codec, client_cmd):
        """The client-check program (acks=all, idempotence on) produces 3,000 records in
        eu-west to a us-east topic, checks each acked offset (record i at i / 3 of partition
        i % 3), reads them back from the eu-west mirror and checks every field and the log end
        offsets. us-east's log holds the same bytes."""
        n = 3000
        topic = us_topic(regions, f"fwd-{client}")
        before = forwarded(regions, "ok")
        run = execute(client_cmd(client) + ["--bootstrap", regions.bootstrap(EU), "--topic", topic,
                                            "--messages", str(n), "--compression", codec], RUN_TIMEOUT)
        s = run.summary
        assert s is not None and run.rc == 0 and s["error_count"] == 0, f"check failed\n{run.describe()}"
        assert s["produced"] == n and s["consumed"] == n and s["partitions"] == 3, run.describe()
        assert forwarded(regions, "ok") > before, "the produce was not forwarded over the dc-link"
        for p in range(3):
            assert watermarks(regions.bootstrap(US), topic, p) == (0, n // 3)
        assert_logs_identical(regions, topic, 3)

    def test_kafkajs_in_eu_west_writes_a_us_east_topic(self, regions, node_bin, tmp_path):
        """kafkajs (idempotent, acks=-1) produces 2,000 records in eu-west; every record is
        read back at its acked offset from both regions, nothing extra. The program checks
        end offsets and timestamp lookups in eu-west right after its produce, so the topic
        asks for read-your-writes (`chronik.forward.ack=mirrored`); its AlterConfigs step is
        left out (a mirror's configs change at its home)."""
        n = 2000
        topic = us_topic(regions, "fwd-kafkajs", config={"chronik.forward.ack": "mirrored"})
        dump_path = tmp_path / "dump.json"
        run = execute([node_bin, str(JS_CHECK), "--bootstrap", regions.bootstrap(EU), "--topic", topic,
                       "--messages", str(n), "--partitions", "3", "--compression", "gzip", "--dump", str(dump_path),
                       "--no-alter-configs"],
                      RUN_TIMEOUT)
        s = run.summary
        assert s is not None and run.rc == 0 and s["error_count"] == 0, f"kafkajs check failed\n{run.describe()}"
        assert s["produced"] == n and s["idempotent"] is True, run.describe()
        dump = json.loads(dump_path.read_text())
        for region in (US, EU):
            errors, consumed = verify_kafkajs_dump(regions.bootstrap(region), dump)
            assert not errors and consumed == n, f"{region}: read back {consumed} of {n}: {errors[:20]}"
        assert_logs_identical(regions, topic, 3)

    # -- faults ---------------------------------------------------------------------

    def test_kill9_eu_west_dclink(self, regions):
        topic = us_topic(regions, "fwd-kill-eu")
        produce_through_fault(regions, topic, lambda: regions.kill9_dclink(EU),
                              lambda: regions.restart_dclink(EU), "kill -9 of eu-west's dc-link")

    def test_kill9_us_east_dclink(self, regions):
        topic = us_topic(regions, "fwd-kill-us")
        produce_through_fault(regions, topic, lambda: regions.kill9_dclink(US),
                              lambda: regions.restart_dclink(US), "kill -9 of us-east's dc-link")

    def test_kill9_us_east_partition_leader(self, regions):
        topic = us_topic(regions, "fwd-kill-leader")
        c = regions.cluster(US)
        victim = c.leader_of(topic, 0)

        def inject():
            c.kill9(victim)
            # Writes reach the partition's new leader before the old one comes back.
            wait_until(lambda: c.quorum_leader(topic, 0, nodes=c.live_ids()) is not None, 60,
                       what=f"a new us-east leader of {topic}/0")

        produce_through_fault(regions, topic, inject, lambda: c.restart(victim),
                              f"kill -9 of us-east broker {victim} (leader of {topic}/0)")

    def test_blackhole_20s(self, regions):
        topic = us_topic(regions, "fwd-blackhole")
        stalled = {}

        def inject():
            regions.isolate(EU)
            before = forwarded(regions, "ok")
            time.sleep(20)  # the fault's length is what this test is about, not a wait
            stalled["ok_during"] = forwarded(regions, "ok") - before

        produce_through_fault(regions, topic, inject, lambda: regions.isolate(EU, on=False), "a 20 s blackhole")
        # At most what was already in flight when the link went dark got through.
        assert stalled["ok_during"] <= 10, f"{stalled['ok_during']} forwards succeeded through the blackhole"
        assert forwarded(regions) > forwarded(regions, "ok"), "no forward failed during the blackhole"

    # -- writers in both regions ----------------------------------------------------------

    def test_writers_in_both_regions_keep_their_order_and_identical_logs(self, regions):
        topic = us_topic(regions, "fwd-mixed", partitions=2)
        acks = AckLog()
        prods = [ProducerThread(regions.bootstrap(r), topic, [0, 1], acks=acks, rate=250, max_messages=3000,
                                max_seconds=120, tag=new_tag(r[:2])) for r in (US, EU)]
        for p in prods:
            p.start()
        try:
            for p in prods:
                p.join(150)
                p.stop(timeout=60)
        except BaseException:
            for p in prods:
                p.abandon()
            raise
        assert not acks.failed, acks.failed[:3]
        counts = every_ack_in_both(regions, topic, 2, acks)
        assert sum(counts.values()) == 6000, counts
        # Both producers' records are interleaved in the log, not one after the other.
        log = {m.offset(): m.value() for m in consume(regions.bootstrap(EU), topic, 0, count=counts[0])}
        tags = [v.split(b":")[0] for _, v in sorted(log.items())]
        switches = sum(1 for a, b in zip(tags, tags[1:]) if a != b)
        assert switches >= 10, f"the two regions' writes hardly interleave ({switches} switches)"

    # -- the home moves under an eu-west producer -------------------------------------------

    def test_eu_west_producer_through_switchover_to_eu_west_and_back(self, regions):
        """The same eu-west producer (no change, no restart) keeps writing while the home
        moves to eu-west (it then appends locally: no forwards) and back to us-east (it
        forwards again). Every record is acknowledged once, in order, at its offset."""
        topic = us_topic(regions, "fwd-switch")
        def scenario(more_acks):
            more_acks(300, "forwarded acks before the switchover")
            switchover(regions, EU, topic)
            more_acks(100, "acks once eu-west is the home")
            fwd, fwd_ok = forwarded(regions), forwarded(regions, "ok")
            more_acks(300, "local acks in eu-west")
            assert forwarded(regions) == fwd, "eu-west still forwards writes to a topic it is the home of"
            switchover(regions, US, topic)
            more_acks(300, "forwarded acks after the switchover back to us-east")
            assert forwarded(regions, "ok") > fwd_ok, "eu-west did not forward again after the move back"

        eu_producer_through(regions, topic, scenario, "a switchover there and back")

    # -- acks and read-your-writes --------------------------------------------------------

    def test_forward_ack_mirrored_gives_read_your_writes(self, regions):
        """With the mirroring us-east -> eu-west delayed by 500 ms, an eu-west producer's ack
        for a `chronik.forward.ack=mirrored` topic arrives only once eu-west's mirror serves
        the record; for a default (`home`) topic it arrives before (the negative control)."""
        plain = us_topic(regions, "fwd-ack-home", partitions=1)
        ryw = us_topic(regions, "fwd-ack-mirrored", partitions=1, config={"chronik.forward.ack": "mirrored"})
        regions.set_wan(EU, delay_ms=500)
        seen = {}
        for topic in (plain, ryw):
            leader = leader_bootstrap(regions, EU, topic, 0)
            visible = []
            for i in range(5):
                err, base, msg, _ = raw_produce(leader, topic, 0, [b"ryw-%d" % i])
                assert err == 0, f"{topic}: error {err} ({msg})"
                visible.append(list_offsets_latest(leader, topic, 0) > base)
            seen[topic] = visible
        assert all(seen[ryw]), f"mirrored acks came before eu-west served the record: {seen[ryw]}"
        assert not all(seen[plain]), f"home acks waited for the mirror although it was 500 ms behind: {seen[plain]}"
        regions.set_wan(EU)
        assert_logs_identical(regions, plain, 1)
        assert_logs_identical(regions, ryw, 1)

    # -- bad input ------------------------------------------------------------------------

    def test_bad_input_gets_the_homes_error_and_garbage_never_crosses(self, regions):
        topic = us_topic(regions, "fwd-bad", partitions=1)
        eu_leader = leader_bootstrap(regions, EU, topic, 0)
        us_leader = leader_bootstrap(regions, US, topic, 0)

        # A corrupt batch is refused by the forwarding broker: nothing is forwarded.
        before = forwarded(regions)
        batch = bytearray(kwire.record_batch([(None, b"garbage")]))
        batch[kwire.BATCH_CRC_OFFSET] ^= 0xFF
        err, *_ = raw_produce_batch(eu_leader, topic, 0, bytes(batch), 10000)
        assert err == CORRUPT_MESSAGE, err
        # A transactional batch is never forwarded: no transaction of this region holds a
        # mirror partition (AddPartitionsToTxn refuses it), so the leader refuses the batch.
        txn = kwire.record_batch([(None, b"txn")], producer_id=1, producer_epoch=0, base_sequence=0,
                                 attributes=0x10)
        err, _, msg, _ = raw_produce_batch(eu_leader, topic, 0, txn, 10000)
        assert err == 19 and msg and "transaction" in msg, (err, msg)  # NOT_ENOUGH_REPLICAS
        assert forwarded(regions) == before, "a batch the forwarding broker refused crossed the WAN"

        # A batch the home refuses (a sequence gap) gets the error a local producer gets.
        def gap_error(bootstrap):
            pid, epoch = init_producer_id(bootstrap)
            first = kwire.record_batch([(None, b"s0")], producer_id=pid, producer_epoch=epoch, base_sequence=0)
            gap = kwire.record_batch([(None, b"s5")], producer_id=pid, producer_epoch=epoch, base_sequence=5)
            assert raw_produce_batch(bootstrap, topic, 0, first, 10000)[0] == 0
            return raw_produce_batch(bootstrap, topic, 0, gap, 10000)[0]

        assert gap_error(us_leader) == OUT_OF_ORDER_SEQUENCE_NUMBER
        before = forwarded(regions)
        assert gap_error(eu_leader) == OUT_OF_ORDER_SEQUENCE_NUMBER
        assert forwarded(regions) >= before + 2, "the sequence-gap batch was not forwarded"

        # Deleted at the home: every later produce in eu-west is UNKNOWN_TOPIC_OR_PARTITION,
        # forwarded (home answers) or local (the mirror is gone too); never a success.
        assert_logs_identical(regions, topic, 1)
        delete_home_topic(regions, US, topic)
        answers = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            err, *_ = raw_produce(eu_leader, topic, 0, [b"after-delete"])
            answers.append(err)
            if err == UNKNOWN_TOPIC_OR_PARTITION and len(answers) >= 5:
                break
        assert answers and set(answers) == {UNKNOWN_TOPIC_OR_PARTITION}, answers

    # -- limits -----------------------------------------------------------------------------

    def test_a_dark_link_bounds_what_waits_and_answers_retriably(self, regions):
        """Forwarding is blackholed while eight 700 KB produces arrive at once in eu-west: the
        bytes awaiting the home's answer never pass the 2 MiB bound, the produces past it are
        refused at once with a retriable error, the rest time out retriably; once the link
        heals, forwarding works again and the logs are identical."""
        topic = us_topic(regions, "fwd-limit")
        samples, answers = [], []
        stop = threading.Event()

        def sample():
            while not stop.is_set():
                v = prometheus_value(regions.metrics(EU), "chronik_forward_inflight_bytes", link=LINK)
                if v is not None:
                    samples.append(v)
                stop.wait(0.05)

        def push(i):
            p = i % 3
            batch = kwire.record_batch([(None, bytes([65 + i]) * 700_000)])
            answers.append(raw_produce_batch(leader_bootstrap(regions, EU, topic, p), topic, p, batch, 10000)[0])

        threads = [threading.Thread(target=sample, daemon=True)] + \
            [threading.Thread(target=push, args=(i,), daemon=True) for i in range(8)]
        regions.blackhole(US)
        try:
            for t in threads:
                t.start()
            wait_until(lambda: forwarded(regions, "backpressure") > 0, 30, what="a produce refused for back-pressure")
            for t in threads[1:]:
                t.join(60)
        finally:
            regions.blackhole(US, on=False)
            stop.set()
            threads[0].join(10)
        assert len(answers) == 8 and set(answers) <= RETRIABLE, answers
        assert 19 in answers, f"no produce was refused with NOT_ENOUGH_REPLICAS: {answers}"
        assert samples and max(samples) <= FORWARD_LIMIT, \
            f"{max(samples)} bytes awaited the home's answer (limit {FORWARD_LIMIT})"
        acks = AckLog()
        wait_until(lambda: regions.links_connected().get(LINK), 60, what=f"{LINK} connected again")
        produce_batch(regions.bootstrap(EU), topic, 0, 50, acks, timeout=60)
        assert_logs_identical(regions, topic, 3)

    # -- observability ------------------------------------------------------------------------

    def test_metrics_and_ctl_lag_show_the_forwarding(self, regions):
        topic = us_topic(regions, "fwd-obs")
        acks = AckLog()
        prod = ProducerThread(regions.bootstrap(EU), topic, [0, 1, 2], acks=acks, rate=300, max_messages=30_000,
                              max_seconds=120)
        prod.start()
        url = regions.dclink_url(EU)

        def ctl(*args):
            r = subprocess.run([str(regions.binary), "ctl", "lag", "--dc-link", url, *args], capture_output=True,
                               text=True, timeout=30)
            assert r.returncode == 0, f"chronik ctl lag {args} exited {r.returncode}: {r.stderr}"
            return r.stdout

        def link_forwarding():
            (rep,) = json.loads(ctl("--json"))
            row = {l["link"]: l for l in rep["links"]}.get(LINK)
            return row if row and row["forwarded_batches_per_sec"] > 0 else None

        try:
            row = wait_until(link_forwarding, 30, interval=0.5, what=f"ctl lag --json showing {LINK} forwarding")
            table = ctl()
        finally:
            prod.stop()
        # Cumulative over the deployment's life (earlier tests' faults count errors).
        assert row["forwarded_batches"] > 0 and row["forwarded_bytes"] > 0 and "forward_errors" in row, row
        header = next(l for l in table.splitlines() if l.startswith("LINK"))
        line = next(l for l in table.splitlines() if l.startswith(LINK))
        assert header.split()[-1] == "FORWARD/S" and float(line.split()[-1]) > 0, table
        metrics = regions.metrics(EU)
        assert prometheus_value(metrics, "chronik_forward_requests_total", link=LINK, result="ok") > 0
        count = prometheus_value(metrics, "chronik_forward_latency_seconds_count", link=LINK)
        assert count is not None and count > 0, "chronik_forward_latency_seconds has no samples"
        assert prometheus_value(metrics, "chronik_forward_inflight_bytes", link=LINK) is not None
        assert not acks.failed
        every_ack_in_both(regions, topic, 3, acks)
