"""Transactions across regions: markers travel with the data, so a read_committed consumer
in a mirror region sees exactly the home's committed transactions; after a failover, the
transaction the lost home left open is aborted in the new home, never half applied
(docs/transactions.md).

Two regions of one broker each and the witness, as in test_failover.py.
"""

from __future__ import annotations

import threading
import time

import pytest
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

from harness import wait_until
from kclient import produce_all, unique_topic
from test_dclink import make_topic, wait_topic_in
from test_failover import EU, US, failover, kill_region, witness_pair, witness_regions  # noqa: F401 (fixture)

PARTITIONS = 2


def produce_each(p: Producer, topic: str, values: dict[int, list[str]]) -> None:
    """Each partition's values, produced in the producer's open transaction and flushed."""
    for i, vals in values.items():
        for v in vals:
            p.produce(topic, v.encode(), partition=i)
    p.flush(30)


def read(bootstrap: str, topic: str, isolation: str, timeout: float = 60.0) -> dict[int, list[str]]:
    """Every value each partition shows a consumer at `isolation`, read until the consumer's
    position reaches the end that isolation level sees (the last stable offset for
    read_committed, the high watermark otherwise), so nothing stops early on a count."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("txn-reader"),
                  "isolation.level": isolation, "enable.auto.commit": False,
                  "auto.offset.reset": "earliest"})
    out: dict[int, list[str]] = {}
    try:
        for p in range(PARTITIONS):
            tp = TopicPartition(topic, p)
            _low, end = c.get_watermark_offsets(tp, timeout=10, cached=False)
            c.assign([TopicPartition(topic, p, 0)])
            vals: list[str] = []
            deadline = time.monotonic() + timeout
            while True:
                for m in c.consume(num_messages=500, timeout=0.5):
                    assert not m.error(), m.error()
                    if m.offset() < end:
                        vals.append(m.value().decode())
                (pos,) = c.position([tp])
                if pos.offset >= end:
                    break
                assert time.monotonic() < deadline, f"{topic}[{p}] not read to {end} at {isolation}"
            out[p] = vals
    finally:
        c.close()
    return out


def ends(bootstrap: str, topic: str, isolation: str) -> list[int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": unique_topic("txn-ends"),
                  "isolation.level": isolation})
    try:
        return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=10, cached=False)[1]
                for p in range(PARTITIONS)]
    finally:
        c.close()


def test_a_mirror_shows_only_committed_transactions_and_a_failover_aborts_the_open_one(witness_regions):
    regions = witness_regions
    topic = unique_topic("txn-geo")
    make_topic(regions, US, topic, PARTITIONS)
    wait_topic_in(regions, EU, topic, PARTITIONS)

    p = Producer({"bootstrap.servers": regions.bootstrap(US), "transactional.id": unique_topic("geo-tid"),
                  "transaction.timeout.ms": 600_000})
    p.init_transactions(30)
    committed: dict[int, list[str]] = {i: [] for i in range(PARTITIONS)}
    everything: dict[int, list[str]] = {i: [] for i in range(PARTITIONS)}
    for n in range(6):
        p.begin_transaction()
        batch = {i: [f"t{n}-p{i}-{j}" for j in range(5)] for i in range(PARTITIONS)}
        produce_each(p, topic, batch)
        for i, vals in batch.items():
            everything[i] += vals
        if n % 3 == 2:
            p.abort_transaction(30)
        else:
            p.commit_transaction(30)
            for i, vals in batch.items():
                committed[i] += vals
    # A transaction left open when the home is lost.
    p.begin_transaction()
    for i in range(PARTITIONS):
        for j in range(7):
            v = f"open-p{i}-{j}"
            p.produce(topic, v.encode(), partition=i)
            everything[i].append(v)
    p.flush(30)

    # eu-west holds every record (markers included) once its read_uncommitted view is the
    # home's; its read_committed view is exactly the committed transactions.
    wait_until(lambda: read(regions.bootstrap(EU), topic, "read_uncommitted") == everything, 60,
               what="eu-west mirrors every record, the open transaction's too")
    # A commit shows in eu-west once its dc-link has counted all its markers there.
    wait_until(lambda: read(regions.bootstrap(EU), topic, "read_committed") == committed, 30,
               what="eu-west's read_committed view is the committed transactions")
    # The open transaction holds eu-west's last stable offset below its high watermark.
    lso, hw = ends(regions.bootstrap(EU), topic, "read_committed"), ends(regions.bootstrap(EU), topic,
                                                                       "read_uncommitted")
    assert all(a < b for a, b in zip(lso, hw)), (lso, hw)

    kill_region(regions, US)
    out = failover(regions, EU, topic)
    assert out.returncode == 0, (out.stdout, out.stderr)

    # The new home aborted the open transaction: its records stay in the log but
    # read_committed never shows them, and nothing holds the last stable offset back.
    wait_until(lambda: ends(regions.bootstrap(EU), topic, "read_committed")
               == ends(regions.bootstrap(EU), topic, "read_uncommitted"), 60,
               what="eu-west's last stable offset reaches its high watermark")
    assert read(regions.bootstrap(EU), topic, "read_committed") == committed
    assert read(regions.bootstrap(EU), topic, "read_uncommitted") == everything

    # eu-west, the home now, takes writes that read_committed consumers see.
    reports = produce_all(regions.bootstrap(EU), topic, [{"value": b"after", "partition": 0}], acks="all")
    assert all(r[0] is None for r in reports), reports
    committed[0].append("after")
    assert read(regions.bootstrap(EU), topic, "read_committed") == committed


def test_failback_recovers_only_what_transactions_committed(witness_regions):
    """us-east writes committed, aborted and open transactions and plain records that eu-west
    never receives, is lost, and eu-west is failed over to holding nothing of the topic. The
    failback's recovery topic holds exactly the records a read_committed consumer of us-east
    could have read: the committed transactions' and the plain ones, not the aborted nor the
    never-ended transactions' (counted in its result)."""
    from test_failback import failback_done, read_recovered

    regions = witness_regions
    topic = unique_topic("txn-fb")
    make_topic(regions, US, topic, PARTITIONS)
    wait_topic_in(regions, EU, topic, PARTITIONS)
    regions.kill9_dclink(EU)  # eu-west receives nothing of what follows

    p = Producer({"bootstrap.servers": regions.bootstrap(US), "transactional.id": unique_topic("fb-tid"),
                  "transaction.timeout.ms": 600_000})
    p.init_transactions(30)
    expected: dict[int, list[str]] = {i: [] for i in range(PARTITIONS)}
    for n, commit in enumerate([True, False, True]):
        p.begin_transaction()
        for i in range(PARTITIONS):
            vals = [f"t{n}-p{i}-{j}" for j in range(5)]
            for v in vals:
                p.produce(topic, v.encode(), partition=i)
            if commit:
                expected[i] += vals
        p.flush(30)
        p.commit_transaction(30) if commit else p.abort_transaction(30)
    plain = [{"value": f"plain-p{i}-{j}".encode(), "partition": i} for i in range(PARTITIONS) for j in range(4)]
    assert all(r[0] is None for r in produce_all(regions.bootstrap(US), topic, plain, acks="all"))
    for rec in plain:
        expected[rec["partition"]].append(rec["value"].decode())
    p.begin_transaction()
    for i in range(PARTITIONS):
        for j in range(7):
            p.produce(topic, f"open-p{i}-{j}".encode(), partition=i)
    p.flush(30)

    kill_region(regions, US)
    regions.restart_dclink(EU, timeout=60, ready=False)
    out = failover(regions, EU, topic)
    assert out.returncode == 0, (out.stdout, out.stderr)
    for node in regions.cluster(US).ids:
        regions.restart_broker(US, node, timeout=120)
    regions.restart_dclink(US, timeout=60, ready=False)

    res = failback_done(regions, US, topic)
    for i in range(PARTITIONS):
        rec = read_recovered(regions.bootstrap(EU), res["recovery_topic"], i)
        got = [rec[o][0].decode() for o in sorted(rec)]
        assert got == expected[i], f"{res['recovery_topic']}/{i}: {got}"
    assert (res["skipped_aborted"], res["skipped_open"]) == (5 * PARTITIONS, 7 * PARTITIONS), res
    assert res["records_recovered"] == sum(len(v) for v in expected.values()), res


def read_kafka_python(bootstrap: str, topic: str, timeout: float = 60.0) -> dict[int, list[str]]:
    """read_committed values per partition as kafka-python reads them (Java's rule for aborted
    transactions: a producer's records are dropped from an aborted range's first offset until
    any abort marker of it; librdkafka, in `read`, pairs each abort marker with one range)."""
    from kafka import KafkaConsumer
    from kafka import TopicPartition as KTP

    c = KafkaConsumer(bootstrap_servers=bootstrap, isolation_level="read_committed",
                      enable_auto_commit=False)
    tps = [KTP(topic, p) for p in range(PARTITIONS)]
    try:
        c.assign(tps)
        c.seek_to_beginning(*tps)
        ends = c.end_offsets(tps)
        out: dict[int, list[str]] = {p: [] for p in range(PARTITIONS)}
        deadline = time.monotonic() + timeout
        while any(c.position(tp) < ends[tp] for tp in tps):
            assert time.monotonic() < deadline, f"{topic} not read to {ends} by kafka-python"
            for tp, msgs in c.poll(timeout_ms=500).items():
                out[tp.partition] += [m.value.decode() for m in msgs if m.offset < ends[tp]]
        return out
    finally:
        c.close()


@pytest.fixture
def three_broker_regions(tmp_path, chronik_cluster_binary):
    with witness_pair(tmp_path / "txn-split", chronik_cluster_binary, brokers=3) as r:
        yield r


def test_a_commit_lost_half_way_is_retracted_whole_at_failover(three_broker_regions):
    """A transaction over two partitions commits in us-east while the only replica of one of
    them is down: the other's commit marker is written and mirrored to eu-west, this one's
    never is. eu-west's read_committed consumers do not see the half that arrived (its
    dc-link never counts the commit whole), not even once eu-west's brokers restart while its
    dc-link is down, forgetting the count. us-east is then lost. The failover counts the
    commit's markers (each says into how many partitions it was written), finds one missing,
    and the promotion retracts the part that arrived, so read_committed consumers see the
    transaction in neither partition, and the commit before it in both."""
    regions = three_broker_regions
    topic = unique_topic("txn-split")
    a, _, c = sorted(regions.cluster(US).ids)
    admin = AdminClient({"bootstrap.servers": regions.bootstrap(US)})
    (fut,) = admin.create_topics([NewTopic(topic, num_partitions=PARTITIONS, replica_assignment=[[a], [c]])]).values()
    fut.result(30)
    wait_topic_in(regions, EU, topic, PARTITIONS, timeout=60)

    p = Producer({"bootstrap.servers": regions.bootstrap(US), "transactional.id": unique_topic("split-tid"),
                  "transaction.timeout.ms": 600_000})
    p.init_transactions(30)
    committed = {i: [f"t1-p{i}-{j}" for j in range(5)] for i in range(PARTITIONS)}
    p.begin_transaction()
    produce_each(p, topic, committed)
    p.commit_transaction(30)
    wait_until(lambda: read(regions.bootstrap(EU), topic, "read_committed") == committed, 60,
               what="eu-west shows the first commit in both partitions")

    p.begin_transaction()
    split = {i: [f"t2-p{i}-{j}" for j in range(6)] for i in range(PARTITIONS)}
    produce_each(p, topic, split)
    everything = {i: committed[i] + split[i] for i in range(PARTITIONS)}
    wait_until(lambda: read(regions.bootstrap(EU), topic, "read_uncommitted") == everything, 60,
               what="eu-west mirrors the second transaction's records")

    # Partition 1's only replica goes; the commit then reaches partition 0 alone.
    regions.kill9_broker(US, c)

    def commit():
        try:
            p.commit_transaction(60)
        except KafkaException:
            pass  # its outcome is what eu-west holds; the region is lost next

    committer = threading.Thread(target=commit, daemon=True)
    committer.start()
    # Partition 0's commit marker reaches eu-west (its log end passes it) ...
    marker_end = len(committed[0]) + 1 + len(split[0]) + 1
    wait_until(lambda: ends(regions.bootstrap(EU), topic, "read_uncommitted")[0] == marker_end, 60,
               what="partition 0's commit marker in eu-west")
    # ... but eu-west's dc-link never counts the commit whole, so read_committed consumers
    # there do not see it in partition 0 either (observed over several counting rounds).
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        lso = ends(regions.bootstrap(EU), topic, "read_committed")
        assert lso[0] == len(committed[0]) + 1, f"eu-west shows part of a commit: last stable offsets {lso}"
        time.sleep(0.2)
    assert read(regions.bootstrap(EU), topic, "read_committed") == committed

    # A broker keeps the count in memory. eu-west's brokers, all restarted while its dc-link is
    # down, hold every commit until the dc-link tells them a count again: the half that arrived
    # never shows (observed while nobody can tell them), and once the dc-link is back the first
    # commit shows again.
    regions.kill9_dclink(EU)
    eu = regions.cluster(EU)
    for i in sorted(eu.ids):
        eu.kill9(i)
    for i in sorted(eu.ids):
        eu.nodes[i].launch()
    for i in sorted(eu.ids):
        eu.nodes[i].wait_ready(60)
    seen = []
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline or not seen:
        try:
            seen.append(ends(regions.bootstrap(EU), topic, "read_committed")[0])
        except KafkaException:
            pass  # partitions still electing leaders
        assert time.monotonic() < deadline + 60, "eu-west's restarted brokers answer no ListOffsets"
        time.sleep(0.2)
    assert max(seen) <= len(committed[0]) + 1, f"restarted eu-west showed part of a commit: {seen}"
    regions.restart_dclink(EU)
    wait_until(lambda: ends(regions.bootstrap(EU), topic, "read_committed")[0] == len(committed[0]) + 1, 60,
               what="eu-west's brokers told the count again")
    assert read(regions.bootstrap(EU), topic, "read_committed") == committed

    kill_region(regions, US)
    out = failover(regions, EU, topic)
    assert out.returncode == 0, (out.stdout, out.stderr)
    assert "did not reach eu-west whole" in out.stderr, out.stderr

    wait_until(lambda: ends(regions.bootstrap(EU), topic, "read_committed")
               == ends(regions.bootstrap(EU), topic, "read_uncommitted"), 60,
               what="eu-west's last stable offset reaches its high watermark")
    assert read(regions.bootstrap(EU), topic, "read_committed") == committed
    assert read_kafka_python(regions.bootstrap(EU), topic) == committed
    assert read(regions.bootstrap(EU), topic, "read_uncommitted") == everything
    # What the new home takes after the retraction is visible.
    after = Producer({"bootstrap.servers": regions.bootstrap(EU), "transactional.id": unique_topic("after-tid")})
    after.init_transactions(30)
    after.begin_transaction()
    for i in range(PARTITIONS):
        after.produce(topic, f"after-p{i}".encode(), partition=i)
    after.commit_transaction(30)
    for i in range(PARTITIONS):
        committed[i].append(f"after-p{i}")
    assert read(regions.bootstrap(EU), topic, "read_committed") == committed
    assert read_kafka_python(regions.bootstrap(EU), topic) == committed
    committer.join(5)
