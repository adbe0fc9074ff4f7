"""Kafka transactions side by side with Apache Kafka 4.1: each scenario runs on a fresh
three-broker Chronik region and on the module's three-broker Kafka cluster (`any_cluster`,
both looking for timed-out transactions every second instead of every 10 s).

  commit and abort       librdkafka's transactional producer commits some transactions and
                         aborts others over three partitions: read_committed reads exactly the
                         committed records in order, read_uncommitted every record, each
                         transaction leaves one control record per partition
  last stable offset     ListOffsets read_committed stops at an open transaction's first offset
                         (read_uncommitted at the high watermark), and so does a read_committed
                         consumer, even past a later committed transaction, until it commits
  zombie fencing         a second producer with the same transactional.id fences the first:
                         its open transaction is aborted, its next produce and commit fail fenced
  transaction timeout    a stalled transaction is aborted by the broker after
                         transaction.timeout.ms: the last stable offset passes it, its records
                         stay invisible, the stalled producer's commit fails fenced
  kafka-transactions     Kafka's CLI lists the transactional id and describes it Ongoing (with
                         its partitions), then CompleteCommit, and CompleteAbort; its
                         describe-producers shows where an open transaction began, and its
                         abort --start-offset (WriteTxnMarkers) ends it
  Java read-process-write  the Java client copies a topic with sendOffsetsToTransaction; kill -9
                         mid-run and a restart: every input record in the output exactly once
  Kafka Streams          a word count with a state store and exactly_once_v2; the Streams
                         instance and a broker each killed with -9 mid-run and restarted: the
                         final counts read with read_committed are the exact word counts of the
                         input (deterministic, so both brokers give the same result)
  librdkafka EOS         a transactional producer through kill -9 of a partition leader: every
                         committed transaction's records once, in order, no aborted one
  franz-go EOS           GroupTransactSession consume-transform-produce through kill -9 of a
                         partition leader: every input record in the output exactly once

Reads go to the high watermark (ListOffsets read_uncommitted), never to a count: a
read_committed reader gets there only once the last stable offset has. The Java programs
(tests/clients/txn: TxnCopy, WordCountStreams) are compiled by the `txn_java` fixture against
the oracle's jars (kafka-clients and kafka-streams 4.1.1, tests/kafka/pom.xml); the franz-go
program is `client-check txn-copy` (tests/clients/go/txn.go).
"""

from __future__ import annotations

import random
import shutil
import struct
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from confluent_kafka import (OFFSET_BEGINNING, IsolationLevel, KafkaError, KafkaException, Producer,
                             TopicPartition)
from confluent_kafka.admin import OffsetSpec

from cluster import create_topic
from conftest import CLUSTER_KINDS, _kafka_whole
from harness import (_KAFKA_LOG4J, CACHE_DIR, KAFKA_FETCH, KAFKA_LIBS, KafkaCluster, ManagedProcess,
                     ensure_kafka_libs, java_bin, json_summary, tail, wait_until)
from kclient import admin, consumer, forget_clients, unique_topic
from test_clients import go_bin  # noqa: F401 - fixture: builds the Go client-check on demand
from test_kafka_cli import TRANSACTIONS_COMMAND, kafka_cli

TESTS_DIR = Path(__file__).resolve().parent
TXN_JAVA_DIR = TESTS_DIR / "clients" / "txn"
TXN_CLASSES = CACHE_DIR / "txn-classes"

# How often both brokers look for timed-out transactions to abort (Kafka's
# transaction.abort.timed.out.transaction.cleanup.interval.ms, Chronik's
# [transactions] abort_timed_out_check_interval_ms; both default to 10 s).
TXN_ABORT_CHECK_MS = 1000
PARTITIONS = [0, 1, 2]


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory):
    """The module's 3-node Apache Kafka cluster (conftest's, with timed-out transactions
    aborted every TXN_ABORT_CHECK_MS)."""
    k = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), n=3,
                     extra_props={"transaction.abort.timed.out.transaction.cleanup.interval.ms": TXN_ABORT_CHECK_MS})
    k.start()
    yield k
    forget_clients(k.bootstrap)
    k.stop()


@pytest.fixture(params=CLUSTER_KINDS)
def any_cluster(request):
    """conftest's any_cluster, both kinds checking for timed-out transactions every
    TXN_ABORT_CHECK_MS: a fresh 3-node Chronik region, or the module's Kafka cluster above."""
    if request.param == "chronik":
        make = request.getfixturevalue("chronik_cluster_factory")
        yield make(3, abort_timed_out_check_interval_ms=TXN_ABORT_CHECK_MS)
        return
    yield from _kafka_whole(request)


# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def live_bootstrap(cluster) -> str:
    return cluster.bootstrap_of(cluster.live_ids())


def txn_producer(bootstrap: str, transactional_id: str, **conf) -> Producer:
    """A librdkafka transactional producer, initialised (InitProducerId done)."""
    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": transactional_id, "linger.ms": 5, **conf})
    p.init_transactions(60)
    return p


def produce_txn_records(p: Producer, topic: str, records: list[tuple[int, bytes]]) -> None:
    """Produce (partition, value) records inside the producer's open transaction and wait until
    each is written (flush), failing on any delivery error."""
    errors = []
    for part, value in records:
        p.produce(topic, value=value, partition=part, on_delivery=lambda err, msg: err and errors.append(err))
    assert p.flush(30) == 0, "records still unsent after 30 s"
    assert not errors, f"delivery failed: {errors[:3]}"


def end_offsets(bootstrap: str, topic: str, committed: bool, partitions=PARTITIONS, timeout: float = 30) -> dict:
    """{partition: end offset} from ListOffsets (latest): with isolation read_committed the last
    stable offset, read_uncommitted the high watermark. Asked again while a leader moves."""
    iso = IsolationLevel.READ_COMMITTED if committed else IsolationLevel.READ_UNCOMMITTED

    def ask():
        futs = admin(bootstrap).list_offsets({TopicPartition(topic, p): OffsetSpec.latest() for p in partitions},
                                             isolation_level=iso, request_timeout=5)
        try:
            return {tp.partition: f.result(timeout=10).offset for tp, f in futs.items()}
        except KafkaException:
            # librdkafka's admin client keeps asking with the leader epoch it knew before a
            # leader change (FENCED_LEADER_EPOCH) instead of refreshing it: start a new one.
            forget_clients(bootstrap)
            raise

    return wait_until(ask, timeout, interval=0.3, what=f"ListOffsets ({iso}) of {topic}")


class Reader:
    """A consumer assigned to partitions of a topic from their start (no group), with the given
    isolation level, keeping every record it reads: {partition: [(offset, key, value)]}."""

    def __init__(self, bootstrap: str, topic: str, committed: bool, partitions=PARTITIONS) -> None:
        self.topic, self.partitions = topic, list(partitions)
        self.c = consumer(bootstrap, **{"isolation.level": "read_committed" if committed else "read_uncommitted"})
        self.c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in self.partitions])
        self.records: dict[int, list] = {p: [] for p in self.partitions}

    def poll(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while True:
            for m in self.c.consume(num_messages=1000, timeout=max(0.0, min(0.5, deadline - time.monotonic()))):
                if m.error():
                    raise AssertionError(f"consumer error: {m.error()}")
                self.records[m.partition()].append((m.offset(), m.key(), m.value()))
            if time.monotonic() >= deadline:
                return

    def positions(self) -> dict[int, int]:
        return {tp.partition: tp.offset
                for tp in self.c.position([TopicPartition(self.topic, p) for p in self.partitions])}

    def read_to(self, ends: dict[int, int], timeout: float = 60) -> dict[int, list]:
        """Poll until the position of every partition reaches its end offset (a read_committed
        consumer passes an open transaction only once it has ended); return what was read below."""
        deadline = time.monotonic() + timeout
        while True:
            pos = self.positions()
            if all(ends[p] == 0 or pos[p] >= ends[p] for p in ends):
                return {p: [r for r in self.records[p] if r[0] < ends[p]] for p in ends}
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: positions {pos} did not reach {ends} in {timeout}s "
                                     f"({ {p: len(r) for p, r in self.records.items()} } records read)")
            self.poll(0.5)

    def close(self) -> None:
        self.c.close()


def stable_end(bootstrap: str, topic: str, partitions=PARTITIONS, timeout: float = 60) -> dict[int, int]:
    """The high watermarks at a moment when they are also the last stable offsets: no transaction
    open, every marker of the ended ones written (they follow EndTxn)."""
    def stable():
        lso = end_offsets(bootstrap, topic, committed=True, partitions=partitions)
        hw = end_offsets(bootstrap, topic, committed=False, partitions=partitions)
        return hw if hw == lso else None

    return wait_until(stable, timeout, interval=0.2, what=f"{topic}'s last stable offsets at its high watermarks")


def read_all(bootstrap: str, topic: str, committed: bool, partitions=PARTITIONS, timeout: float = 60) -> dict:
    """Every record of the partitions up to their high watermark (taken when no transaction is
    open), read_committed or not."""
    hw = stable_end(bootstrap, topic, partitions, timeout)
    r = Reader(bootstrap, topic, committed, partitions)
    try:
        return r.read_to(hw, timeout)
    finally:
        r.close()


def values(records: dict[int, list]) -> dict[int, list[bytes]]:
    return {p: [v for _, _, v in rs] for p, rs in records.items()}


def fenced(excinfo) -> KafkaError:
    err = excinfo.value.args[0]
    assert err.code() == KafkaError._FENCED and err.fatal(), f"expected a fatal _FENCED error, got {err!r}"
    return err


# ---------------------------------------------------------------------------
# Commit, abort, the last stable offset
# ---------------------------------------------------------------------------

PER_PARTITION = 8  # records per partition per transaction


def test_read_committed_sees_exactly_the_committed_transactions(any_cluster):
    """Six transactions over three partitions, the 2nd and 5th aborted (after their records were
    written): read_committed reads exactly the committed records in produce order, read_uncommitted
    every record; every transaction leaves exactly one control record in each partition."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("txn")
    create_topic(c, topic, partitions=3)
    p = txn_producer(bs, unique_topic("txid"))
    plan = ["commit", "abort", "commit", "commit", "abort", "commit"]
    sent: dict[int, list] = {q: [] for q in PARTITIONS}
    committed: dict[int, list] = {q: [] for q in PARTITIONS}
    for n, outcome in enumerate(plan):
        p.begin_transaction()
        batch = [(q, f"t{n}-{outcome}-p{q}-{i}".encode()) for i in range(PER_PARTITION) for q in PARTITIONS]
        produce_txn_records(p, topic, batch)
        for q, v in batch:
            sent[q].append(v)
            if outcome == "commit":
                committed[q].append(v)
        if outcome == "commit":
            p.commit_transaction(30)
        else:
            p.abort_transaction(30)

    assert values(read_all(bs, topic, committed=True)) == committed
    everything = read_all(bs, topic, committed=False)
    assert values(everything) == sent
    # One control record per transaction and partition, after the transaction's records.
    for q in PARTITIONS:
        expected = [n * (PER_PARTITION + 1) + i for n in range(len(plan)) for i in range(PER_PARTITION)]
        assert [o for o, _, _ in everything[q]] == expected, f"partition {q}: offsets of the data records"
    assert end_offsets(bs, topic, committed=False) == {q: len(plan) * (PER_PARTITION + 1) for q in PARTITIONS}
    assert end_offsets(bs, topic, committed=True) == end_offsets(bs, topic, committed=False)


def test_last_stable_offset_holds_at_an_open_transaction(any_cluster):
    """A committed transaction (offsets 0-4 and its marker at 5), then transaction A opened and
    written (6-10), then transaction B written and committed (11-15, marker 16): ListOffsets
    read_committed gives 6 while A is open, read_uncommitted 17; a read_committed consumer
    stops at 6, B's committed records included; once A commits (marker 17) it reads A's and B's
    records in offset order up to the high watermark 18."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("lso")
    create_topic(c, topic, partitions=3)
    n = 5
    first = txn_producer(bs, unique_topic("txid-first"))
    first.begin_transaction()
    first_batch = [(q, f"first-p{q}-{i}".encode()) for i in range(n) for q in PARTITIONS]
    produce_txn_records(first, topic, first_batch)
    first.commit_transaction(30)
    # Its markers written (they follow EndTxn) before the next transaction's records.
    assert stable_end(bs, topic) == {q: n + 1 for q in PARTITIONS}

    a = txn_producer(bs, unique_topic("txid-a"))
    a.begin_transaction()
    a_batch = [(q, f"a-p{q}-{i}".encode()) for i in range(n) for q in PARTITIONS]
    produce_txn_records(a, topic, a_batch)
    b = txn_producer(bs, unique_topic("txid-b"))
    b.begin_transaction()
    b_batch = [(q, f"b-p{q}-{i}".encode()) for i in range(n) for q in PARTITIONS]
    produce_txn_records(b, topic, b_batch)
    b.commit_transaction(30)

    lso_open = n + 1
    hw_open = 3 * (n + 1) - 1
    wait_until(lambda: end_offsets(bs, topic, committed=False) == {q: hw_open for q in PARTITIONS}, 30,
               interval=0.2, what=f"B's markers written (high watermarks {hw_open})")
    assert end_offsets(bs, topic, committed=True) == {q: lso_open for q in PARTITIONS}

    reader = Reader(bs, topic, committed=True)
    try:
        got = reader.read_to({q: lso_open for q in PARTITIONS}, timeout=30)
        assert values(got) == {q: [v for p, v in first_batch if p == q] for q in PARTITIONS}
        # It stays there while A is open (2 s of polling), and so does the last stable offset.
        reader.poll(2.0)
        assert reader.positions() == {q: lso_open for q in PARTITIONS}
        assert all(r[0] < lso_open for rs in reader.records.values() for r in rs), reader.records
        assert end_offsets(bs, topic, committed=True) == {q: lso_open for q in PARTITIONS}

        a.commit_transaction(30)
        # The commit markers follow EndTxn (Kafka writes them once the commit is decided).
        hw = {q: hw_open + 1 for q in PARTITIONS}
        wait_until(lambda: end_offsets(bs, topic, committed=True) == hw, 30, interval=0.2,
                   what=f"the last stable offset at the high watermark {hw} after the commit")
        assert end_offsets(bs, topic, committed=False) == hw
        got = reader.read_to(hw, timeout=30)
    finally:
        reader.close()
    for q in PARTITIONS:
        mine = lambda batch: [v for p, v in batch if p == q]  # noqa: E731
        assert [v for _, _, v in got[q]] == mine(first_batch) + mine(a_batch) + mine(b_batch), f"partition {q}"
        assert [o for o, _, _ in got[q]] == list(range(n)) + list(range(n + 1, 2 * n + 1)) + \
            list(range(2 * n + 1, 3 * n + 1)), f"partition {q}: offsets"


# ---------------------------------------------------------------------------
# Fencing and the transaction timeout
# ---------------------------------------------------------------------------


def test_a_zombie_producer_is_fenced(any_cluster):
    """Producer A (transactional.id X) opens a transaction and writes to every partition; producer
    B with the same id calls init_transactions: A's transaction is aborted (the last stable offset
    passes its records at once), A's next produce and commit fail with a fatal fenced error and
    write nothing, B's committed transaction is read, A's records never are."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("zombie")
    create_topic(c, topic, partitions=3)
    txid = unique_topic("txid-zombie")
    a = txn_producer(bs, txid)
    a.begin_transaction()
    a_batch = [(q, f"zombie-p{q}-{i}".encode()) for i in range(5) for q in PARTITIONS]
    produce_txn_records(a, topic, a_batch)
    hw_before = end_offsets(bs, topic, committed=False)
    assert end_offsets(bs, topic, committed=True) == {q: 0 for q in PARTITIONS}

    b = txn_producer(bs, txid)  # fences A and aborts its open transaction
    # init_transactions returns once A's transaction is complete: an abort marker in each partition.
    assert end_offsets(bs, topic, committed=False) == {q: hw_before[q] + 1 for q in PARTITIONS}
    assert end_offsets(bs, topic, committed=True) == end_offsets(bs, topic, committed=False)

    late = []
    a.produce(topic, value=b"zombie-late", partition=0, on_delivery=lambda err, msg: late.append(err))
    with pytest.raises(KafkaException) as excinfo:
        a.commit_transaction(30)
    fenced(excinfo)
    a.flush(10)
    assert late and late[0] is not None, f"the zombie's late record was acknowledged: {late}"

    b.begin_transaction()
    b_batch = [(q, f"b-p{q}-{i}".encode()) for i in range(5) for q in PARTITIONS]
    produce_txn_records(b, topic, b_batch)
    b.commit_transaction(30)

    assert values(read_all(bs, topic, committed=True)) == {q: [v for p, v in b_batch if p == q] for q in PARTITIONS}
    uncommitted = values(read_all(bs, topic, committed=False))
    assert uncommitted == {q: [v for p, v in a_batch + b_batch if p == q] for q in PARTITIONS}


TXN_TIMEOUT_MS = 3000


def test_a_stalled_transaction_is_aborted_after_its_timeout(any_cluster):
    """A producer with transaction.timeout.ms=3000 writes to every partition and stalls; another
    producer commits a transaction after it. The broker aborts the stalled one no sooner than its
    timeout: a read_committed consumer held at its first offset then reads on to the high
    watermark, seeing only the other producer's records; the stalled producer's commit then fails
    with a fatal fenced error (the abort bumped its epoch)."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("timeout")
    create_topic(c, topic, partitions=3)
    stalled = txn_producer(bs, unique_topic("txid-stalled"), **{"transaction.timeout.ms": TXN_TIMEOUT_MS})
    other = txn_producer(bs, unique_topic("txid-other"))
    reader = Reader(bs, topic, committed=True)
    try:
        t0 = time.monotonic()
        stalled.begin_transaction()
        s_batch = [(q, f"stalled-p{q}-{i}".encode()) for i in range(5) for q in PARTITIONS]
        produce_txn_records(stalled, topic, s_batch)
        other.begin_transaction()
        o_batch = [(q, f"other-p{q}-{i}".encode()) for i in range(5) for q in PARTITIONS]
        produce_txn_records(other, topic, o_batch)
        other.commit_transaction(30)

        reader.poll(1.0)
        assert end_offsets(bs, topic, committed=True) == {q: 0 for q in PARTITIONS}, \
            "the last stable offset passed the stalled transaction before its timeout"
        assert all(not rs for rs in reader.records.values()), reader.records

        def aborted():
            lso, hw = end_offsets(bs, topic, committed=True), end_offsets(bs, topic, committed=False)
            return lso == hw and hw
        hw = wait_until(aborted, TXN_TIMEOUT_MS / 1000 + 30, interval=0.2,
                        what="the broker to abort the stalled transaction (last stable offset = high watermark)")
        took = time.monotonic() - t0
        assert took >= TXN_TIMEOUT_MS / 1000, f"aborted {took:.1f}s after it began, before its timeout"
        # The stalled records, the other producer's, its marker, the abort marker.
        assert hw == {q: 5 + 5 + 1 + 1 for q in PARTITIONS}
        got = reader.read_to(hw, timeout=30)
    finally:
        reader.close()
    print(f"\n{c.kind}: the stalled transaction was aborted {took:.1f}s after it began "
          f"(timeout {TXN_TIMEOUT_MS} ms)")
    assert values(got) == {q: [v for p, v in o_batch if p == q] for q in PARTITIONS}
    with pytest.raises(KafkaException) as excinfo:
        stalled.commit_transaction(30)
    fenced(excinfo)
    assert values(read_all(bs, topic, committed=True)) == {q: [v for p, v in o_batch if p == q] for q in PARTITIONS}
    assert values(read_all(bs, topic, committed=False)) == {q: [v for p, v in s_batch + o_batch if p == q]
                                                             for q in PARTITIONS}


# ---------------------------------------------------------------------------
# kafka-transactions.sh
# ---------------------------------------------------------------------------


def _table(out: str) -> list[dict[str, str]]:
    """Rows of a kafka-transactions table: tab-separated columns, each padded with spaces."""
    lines = [ln for ln in out.splitlines() if ln.strip()]
    header = [h.strip() for h in lines[0].split("\t")]
    return [dict(zip(header, (v.strip() for v in ln.split("\t")))) for ln in lines[1:]]


def test_kafka_transactions_cli_lists_and_describes(any_cluster):
    """kafka-transactions.sh `list` shows the transactional id with its producer id and state;
    `describe --transactional-id` shows it Ongoing with the partitions written, then
    CompleteCommit, and after an aborted transaction CompleteAbort."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("cli-txn")
    create_topic(c, topic, partitions=3)
    txid = unique_topic("txid-cli")
    p = txn_producer(bs, txid, **{"transaction.timeout.ms": 120000})
    p.begin_transaction()
    produce_txn_records(p, topic, [(0, b"x"), (2, b"y")])

    def list_txns() -> dict[str, dict[str, str]]:
        out = kafka_cli(TRANSACTIONS_COMMAND, "--bootstrap-server", bs, "list")
        return {r["TransactionalId"]: r for r in _table(out)}

    listed = list_txns()
    assert txid in listed, listed
    assert listed[txid]["TransactionState"] == "Ongoing", listed[txid]
    assert int(listed[txid]["Coordinator"]) in c.ids and int(listed[txid]["ProducerId"]) >= 0, listed[txid]

    def describe() -> dict[str, str]:
        out = kafka_cli(TRANSACTIONS_COMMAND, "--bootstrap-server", bs, "describe", "--transactional-id", txid)
        (row,) = _table(out)
        assert row["TransactionalId"] == txid and row["ProducerId"] == listed[txid]["ProducerId"], out
        return row

    row = describe()
    assert row["TransactionState"] == "Ongoing", row
    assert set(row["TopicPartitions"].split(",")) == {f"{topic}-0", f"{topic}-2"}, row
    assert row["TransactionTimeoutMs"] == "120000", row
    assert int(row["CoordinatorId"]) == int(listed[txid]["Coordinator"]), row

    p.commit_transaction(30)
    # PrepareCommit until the markers are written (they follow EndTxn), then CompleteCommit.
    row = wait_until(lambda: (r := describe())["TransactionState"] != "PrepareCommit" and r, 60, interval=0.5,
                     what="the transaction past PrepareCommit")
    assert row["TransactionState"] == "CompleteCommit" and row["TopicPartitions"] == "", row
    assert list_txns()[txid]["TransactionState"] == "CompleteCommit"

    p.begin_transaction()
    produce_txn_records(p, topic, [(1, b"z")])
    p.abort_transaction(30)
    row = wait_until(lambda: (r := describe())["TransactionState"] != "PrepareAbort" and r, 60, interval=0.5,
                     what="the transaction past PrepareAbort")
    assert row["TransactionState"] == "CompleteAbort" and row["TopicPartitions"] == "", row


def test_kafka_transactions_cli_aborts_an_open_transaction(any_cluster):
    """An open transaction holds partition 0's last stable offset at its first record (3, after
    three plain records). `kafka-transactions.sh describe-producers` shows where it began;
    `abort --start-offset 3` (DescribeProducers, then WriteTxnMarkers to the partition leader)
    ends it: the last stable offset reaches the high watermark, read_committed reads the plain
    records only, and the producer's describe-producers row no longer has a transaction open."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("cli-abort")
    create_topic(c, topic, partitions=3)
    plain = Producer({"bootstrap.servers": bs, "acks": "all"})
    for i in range(3):
        plain.produce(topic, value=b"plain-%d" % i, partition=0)
    assert plain.flush(30) == 0
    p = txn_producer(bs, unique_topic("txid-abort"), **{"transaction.timeout.ms": 600000})
    p.begin_transaction()
    produce_txn_records(p, topic, [(0, b"t0"), (0, b"t1")])
    assert end_offsets(bs, topic, committed=True, partitions=[0]) == {0: 3}

    def producers() -> list[dict[str, str]]:
        out = kafka_cli(TRANSACTIONS_COMMAND, "--bootstrap-server", bs, "describe-producers",
                        "--topic", topic, "--partition", "0")
        return _table(out)

    def open_starts() -> list[str]:
        """The start offsets of open transactions (the tool prints None, or -1, for none)."""
        return [r["CurrentTransactionStartOffset"] for r in producers()
                if r["CurrentTransactionStartOffset"] not in ("None", "-1")]

    assert open_starts() == ["3"], producers()

    kafka_cli(TRANSACTIONS_COMMAND, "--bootstrap-server", bs, "abort", "--topic", topic, "--partition", "0",
              "--start-offset", "3")
    wait_until(lambda: end_offsets(bs, topic, committed=True, partitions=[0])
               == end_offsets(bs, topic, committed=False, partitions=[0]), 30, interval=0.2,
               what="the last stable offset at the high watermark after the abort")
    assert end_offsets(bs, topic, committed=False, partitions=[0]) == {0: 6}, "plain, t0, t1, the abort marker"
    assert open_starts() == [], producers()
    def committed_values(end: int) -> list[bytes]:
        reader = Reader(bs, topic, committed=True, partitions=[0])
        try:
            return values(reader.read_to({0: end}, timeout=30))[0]
        finally:
            reader.close()

    assert committed_values(6) == [b"plain-0", b"plain-1", b"plain-2"]
    # The producer's own abort afterwards hides nothing more and shows nothing.
    p.abort_transaction(30)
    end = wait_until(lambda: (e := end_offsets(bs, topic, committed=True, partitions=[0]))
                     == end_offsets(bs, topic, committed=False, partitions=[0]) and e[0], 30, interval=0.2,
                     what="stable after the producer's abort")
    assert committed_values(end) == [b"plain-0", b"plain-1", b"plain-2"]


# ---------------------------------------------------------------------------
# Client programs
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def txn_java() -> str:
    """Classpath of tests/clients/txn compiled against the oracle's jars (kafka-streams among them)."""
    ensure_kafka_libs()
    if not list(KAFKA_LIBS.glob("kafka-streams-[0-9]*.jar")):  # a cache from before kafka-streams
        r = subprocess.run(["bash", str(KAFKA_FETCH)], capture_output=True, text=True, timeout=900)
        assert r.returncode == 0, f"fetching the Kafka jars failed:\n{r.stdout}\n{r.stderr}"
    sources = sorted(TXN_JAVA_DIR.glob("*.java"))
    stamp = TXN_CLASSES / ".built"
    if not stamp.exists() or any(s.stat().st_mtime > stamp.stat().st_mtime for s in sources):
        shutil.rmtree(TXN_CLASSES, ignore_errors=True)
        TXN_CLASSES.mkdir(parents=True)
        r = subprocess.run(["javac", "-d", str(TXN_CLASSES), "-cp", f"{KAFKA_LIBS}/*", *map(str, sources)],
                           capture_output=True, text=True, timeout=300)
        if r.returncode != 0:
            pytest.fail(f"javac {TXN_JAVA_DIR} failed:\n{r.stdout}\n{r.stderr}", pytrace=False)
        stamp.touch()
    return f"{TXN_CLASSES}:{KAFKA_LIBS}/*"


class Program(ManagedProcess):
    """A client program; stdout and stderr go to <work>/<name>.log."""

    def __init__(self, name: str, argv: list[str], work: Path) -> None:
        super().__init__()
        self.name, self.argv, self.work = name, argv, work
        self.log = work / f"{name}.log"

    def start(self) -> "Program":
        self.work.mkdir(parents=True, exist_ok=True)
        self._spawn(self.argv, cwd=self.work, log_path=self.log)
        return self

    def wait(self, timeout: float) -> int:
        try:
            self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self._hard_kill()
            raise AssertionError(f"{self.name} still running after {timeout}s:\n{self.log_tail(40)}")
        return self._reap()

    def log_tail(self, n: int = 40) -> str:
        return tail(self.log, n)

    def summary(self) -> dict | None:
        return json_summary(self.log)


@pytest.fixture
def programs():
    """Programs started by a test: killed at teardown if still running, their log tails printed."""
    made: list[Program] = []
    yield made
    for p in made:
        if p.running:
            p._hard_kill()
        print(f"--- {p.name}, log {p.log}:\n{p.log_tail(15)}")


def java_argv(classpath: str, main: str, work: Path, *args: str) -> list[str]:
    log4j = work / "log4j2.properties"
    work.mkdir(parents=True, exist_ok=True)
    log4j.write_text(_KAFKA_LOG4J.format(log=work / "client.log"))
    return [java_bin(), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1",
            f"-Dlog4j2.configurationFile={log4j}", "-cp", classpath, main, *args]


def copy_topics(c, prefix: str) -> tuple[str, str, str]:
    """(bootstrap, input topic, output topic): two fresh three-partition topics on `c`."""
    src, dst = unique_topic(f"{prefix}-in"), unique_topic(f"{prefix}-out")
    create_topic(c, src, partitions=3)
    create_topic(c, dst, partitions=3)
    return live_bootstrap(c), src, dst


def produce_input(bootstrap: str, topic: str, n: int) -> dict[int, list[bytes]]:
    """n records round-robin over the partitions (idempotent, acks=all), values unique;
    returns each partition's values in offset order."""
    p = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True, "linger.ms": 5})
    errors: list = []
    by_part: dict[int, list[bytes]] = {q: [] for q in PARTITIONS}
    for i in range(n):
        q = i % len(PARTITIONS)
        v = f"in-{q}-{i}".encode()
        by_part[q].append(v)
        p.produce(topic, key=f"k{i}".encode(), value=v, partition=q,
                  on_delivery=lambda err, msg: err and errors.append(err))
        p.poll(0)
    assert p.flush(60) == 0 and not errors, f"producing the input failed: {errors[:3]}"
    return by_part


def committed_group_offsets(bootstrap: str, group: str, topic: str) -> dict[int, int]:
    from confluent_kafka import ConsumerGroupTopicPartitions

    fut = admin(bootstrap).list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, q) for q in PARTITIONS])])[group]
    return {tp.partition: tp.offset for tp in fut.result(timeout=30).topic_partitions}


def output_of_copy(bootstrap: str, output: str, inputs: dict[int, list[bytes]]) -> None:
    """The copy's output read with read_committed to the high watermark is the input: each
    partition the same values in the same order (so every input record exactly once)."""
    got = values(read_all(bootstrap, output, committed=True))
    counts = Counter(v for vs in got.values() for v in vs)
    dups = sorted(v for v, k in counts.items() if k > 1)
    missing = sorted(set(v for vs in inputs.values() for v in vs) - set(counts))
    assert not dups and not missing, (f"{len(dups)} input records copied more than once (e.g. {dups[:5]}), "
                                      f"{len(missing)} never (e.g. {missing[:5]})")
    assert got == inputs


COPY_RECORDS = 3000


@pytest.mark.timeout(360)
def test_java_consume_transform_produce_through_kill9(any_cluster, txn_java, programs, tmp_path):
    """The Java client copies a topic in transactions that also commit the group's offsets
    (sendOffsetsToTransaction), 50 records and 100 ms each; it is killed with -9 a third of the
    way, while a transaction is open (its records written), and started again with the same transactional.id and group:
    the output read with read_committed holds every input record exactly once, in order."""
    c = any_cluster
    bs, src, dst = copy_topics(c, "copy")
    inputs = produce_input(bs, src, COPY_RECORDS)
    group, txid = unique_topic("copy-group"), unique_topic("copy-txid")
    args = ["--bootstrap", bs, "--input", src, "--output", dst, "--group", group, "--transactional-id", txid,
            "--max-poll-records", "50", "--txn-delay-ms", "100", "--max-seconds", "200"]

    def run(name):
        p = Program(name, java_argv(txn_java, "chronik.txn.TxnCopy", tmp_path / name, *args), tmp_path / name)
        programs.append(p)
        return p.start()

    first = run("txn-copy-1")

    def a_third_copied_and_a_transaction_open():
        assert first.running, f"TxnCopy exited early (rc {first.proc.returncode}):\n{first.log_tail()}"
        lso, hw = end_offsets(bs, dst, committed=True), end_offsets(bs, dst, committed=False)
        return sum(lso.values()) >= COPY_RECORDS // 3 and lso != hw and (lso, hw)
    lso, hw = wait_until(a_third_copied_and_a_transaction_open, 120, interval=0.05,
                         what="a third of the input copied and a transaction open")
    first.kill9()
    print(f"\n{c.kind}: TxnCopy killed with a transaction open: output last stable offsets {lso}, "
          f"high watermarks {hw}")

    second = run("txn-copy-2")
    rc = second.wait(200)
    assert rc == 0, f"TxnCopy exited {rc}, summary {second.summary()}:\n{second.log_tail()}"
    output_of_copy(bs, dst, inputs)
    assert committed_group_offsets(bs, group, src) == {q: len(v) for q, v in inputs.items()}


# ---------------------------------------------------------------------------
# Kafka Streams, exactly_once_v2
# ---------------------------------------------------------------------------

WORDS = ["kafka", "chronik", "stream", "table", "state", "store", "exactly", "once", "commit", "abort",
         "fence", "epoch", "marker", "offset", "leader", "replica", "broker", "topic", "group", "member",
         "alpha", "beta", "gamma", "delta", "zeta", "eta", "theta", "iota", "kappa", "lambda"]
LINES = 2400
LINE_RATE = 150.0  # lines a second: the input takes 16 s


def word_lines(seed: int = 7) -> list[str]:
    rng = random.Random(seed)
    return [" ".join(rng.choice(WORDS) for _ in range(rng.randint(1, 8))) for _ in range(LINES)]


class LineProducer(threading.Thread):
    """Produces the lines at LINE_RATE (idempotent, acks=all), keyed by line number."""

    def __init__(self, bootstrap: str, topic: str, lines: list[str]) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.lines = bootstrap, topic, lines
        self.sent = 0
        self.errors: list = []
        self.done = threading.Event()

    def run(self) -> None:
        p = Producer({"bootstrap.servers": self.bootstrap, "enable.idempotence": True, "linger.ms": 5,
                      "message.timeout.ms": 120000})
        try:
            t0 = time.monotonic()
            for i, line in enumerate(self.lines):
                while time.monotonic() - t0 < i / LINE_RATE:
                    p.poll(0.01)
                p.produce(self.topic, key=str(i).encode(), value=line.encode(),
                          on_delivery=lambda err, msg: err and self.errors.append(err))
                self.sent = i + 1
            if p.flush(150) != 0:
                self.errors.append("records unsent after 150 s")
        except Exception as e:  # noqa: BLE001 - reported by the test
            self.errors.append(e)
        finally:
            self.done.set()


def word_counts(bootstrap: str, topic: str) -> tuple[dict[str, int], list[str]]:
    """The output read with read_committed to the high watermark: each word's last count, and
    the words whose counts ever went down (a count update replayed after a crash)."""
    last: dict[str, int] = {}
    down = []
    for recs in read_all(bootstrap, topic, committed=True, timeout=90).values():
        for _, k, v in recs:
            word, (count,) = k.decode(), struct.unpack(">q", v)
            if count < last.get(word, 0):
                down.append(f"{word}: {last[word]} -> {count}")
            last[word] = count
    return last, down


@pytest.mark.timeout(420)
def test_kafka_streams_word_count_exactly_once_through_kill9(any_cluster, txn_java, programs, tmp_path):
    """A Kafka Streams word count (state store, repartition and changelog topics,
    exactly_once_v2) reads lines produced at a steady rate; the Streams instance is killed with -9
    a third of the way and started again on the same state directory, and at two thirds the
    leader of the output's partition 0 is killed with -9, and restarted once the output moved on.
    The last count of each word read with read_committed is the exact count of the input, and no
    word's count ever goes down."""
    c = any_cluster
    bs, src, dst = copy_topics(c, "wc")
    lines = word_lines()
    expected = dict(Counter(w for line in lines for w in line.split(" ")))
    app = unique_topic("wordcount")
    state = tmp_path / "streams-state"
    args = ["--bootstrap", bs, "--application-id", app, "--input", src, "--output", dst,
            "--state-dir", str(state), "--replication-factor", "3"]

    def run(name):
        p = Program(name, java_argv(txn_java, "chronik.txn.WordCountStreams", tmp_path / name, *args), tmp_path / name)
        programs.append(p)
        return p.start()

    def running(p):
        assert p.running, f"{p.name} exited (rc {p.proc.returncode}):\n{p.log_tail()}"
        return "-> RUNNING" in p.log.read_text(errors="replace")

    def output_committed() -> int:
        return sum(end_offsets(live_bootstrap(c), dst, committed=True).values())

    streams = run("streams-1")
    wait_until(lambda: running(streams), 120, interval=0.5, what="Streams RUNNING")
    producer = LineProducer(bs, src, lines)
    producer.start()
    wait_until(lambda: producer.sent >= LINES // 3 and output_committed() > 0, 90, interval=0.2,
               what="a third of the lines produced and counts committed")
    streams.kill9()
    print(f"\n{c.kind}: Streams killed with -9 after {producer.sent} lines")
    streams = run("streams-2")

    wait_until(lambda: producer.sent >= 2 * LINES // 3, 90, interval=0.2, what="two thirds of the lines produced")
    victim = c.leader_of(dst, 0)
    c.kill9(victim)
    print(f"{c.kind}: broker {victim} (leader of {dst}/0) killed with -9 after {producer.sent} lines")
    at_kill = output_committed()
    wait_until(lambda: running(streams) and output_committed() > at_kill, 120, interval=0.5,
               what="the output committed further with the broker down")
    c.restart(victim)
    assert producer.done.wait(150) and not producer.errors, f"producing the lines failed: {producer.errors[:3]}"

    state_seen: dict = {}

    def counts_complete():
        assert streams.running, f"Streams exited (rc {streams.proc.returncode}):\n{streams.log_tail()}"
        state_seen["counts"], state_seen["down"] = word_counts(live_bootstrap(c), dst)
        return state_seen["counts"] == expected

    try:
        wait_until(counts_complete, 150, interval=1.0, what="the final word counts in the output")
    except TimeoutError as e:
        got = state_seen.get("counts", {})
        diff = {w: (got.get(w), n) for w, n in expected.items() if got.get(w) != n}
        raise AssertionError(f"word counts (got, expected) that differ: {diff}\n{e}\n{streams.log_tail()}") from None
    assert not state_seen["down"], f"counts went down: {state_seen['down'][:10]}"
    streams.stop()
    # Still the same once the instance closed (nothing further committed).
    final, down = word_counts(live_bootstrap(c), dst)
    assert final == expected and not down
    replaced = streams.log.read_text(errors="replace").count("stream thread failed")
    print(f"{c.kind}: {len(expected)} words, {sum(expected.values())} occurrences counted exactly once "
          f"({replaced} stream threads replaced after an exception)")


# ---------------------------------------------------------------------------
# librdkafka and franz-go exactly once through a broker kill
# ---------------------------------------------------------------------------

EOS_TXNS = 60
EOS_PER_PARTITION = 10


def test_librdkafka_transactions_through_leader_kill9(any_cluster):
    """A librdkafka transactional producer runs 60 transactions of 10 records per partition,
    every 7th aborted on purpose; in the 21st, right after its records were handed to the client,
    the leader of partition 0 is killed with -9 (it is restarted, in the background, at two
    thirds). A transaction failing with an abortable error
    is aborted and sent again (new values); a retriable commit is retried. read_committed then
    reads exactly the committed attempts' records, each once, in transaction order, and none of an
    aborted attempt's (which read_uncommitted shows were written)."""
    c = any_cluster
    bs = live_bootstrap(c)
    topic = unique_topic("eos")
    create_topic(c, topic, partitions=3)
    p = txn_producer(bs, unique_topic("txid-eos"), **{"transaction.timeout.ms": 30000, "message.timeout.ms": 30000})
    committed: dict[int, list] = {q: [] for q in PARTITIONS}
    aborted: list[bytes] = []
    deliberate: list[bytes] = []
    failures: list[str] = []
    victim = restarter = None
    for n in range(EOS_TXNS):
        if n == 2 * EOS_TXNS // 3:
            restarter = threading.Thread(target=c.restart, args=(victim,), daemon=True)
            restarter.start()
        for attempt in range(10):
            batch = [(q, f"t{n}.a{attempt}.p{q}.{i}".encode()) for i in range(EOS_PER_PARTITION) for q in PARTITIONS]
            p.begin_transaction()
            errors: list = []
            for q, v in batch:
                p.produce(topic, value=v, partition=q, on_delivery=lambda err, msg: err and errors.append(err))
            if n == EOS_TXNS // 3 and victim is None:
                # Inside the transaction, its records (partly) in flight.
                victim = c.leader_of(topic, 0)
                c.kill9(victim)
                print(f"\n{c.kind}: killed broker {victim} (leader of {topic}/0) in transaction {n}")
            if n % 7 == 3:
                assert p.flush(60) == 0 and not errors, f"transaction {n}: {errors[:3]}"
                p.abort_transaction(60)
                deliberate += [v for _, v in batch]
                break
            try:
                while True:
                    try:
                        p.commit_transaction(60)
                        break
                    except KafkaException as e:
                        if not e.args[0].retriable():
                            raise
                        failures.append(f"t{n}.a{attempt} commit retried: {e.args[0]}")
                for q, v in batch:
                    committed[q].append(v)
                break
            except KafkaException as e:
                err = e.args[0]
                assert err.txn_requires_abort() and not err.fatal(), f"transaction {n}: fatal {err!r}"
                failures.append(f"t{n}.a{attempt} aborted: {err}")
                p.abort_transaction(60)
                aborted += [v for _, v in batch]
        else:
            raise AssertionError(f"transaction {n} failed 10 times: {failures[-3:]}")
    if restarter is not None:
        restarter.join(150)
        assert c.running(victim), f"broker {victim} did not restart"
    print(f"{c.kind}: {len(failures)} retried or aborted attempts: {failures[:5]}")

    bs = live_bootstrap(c)
    got = values(read_all(bs, topic, committed=True))
    seen = Counter(v for vs in got.values() for v in vs)
    assert not [v for v, k in seen.items() if k > 1], "records read twice"
    assert not set(seen) & set(aborted + deliberate), "aborted records read with read_committed"
    assert got == committed
    everything = Counter(v for vs in values(read_all(bs, topic, committed=False)).values() for v in vs)
    assert set(deliberate) <= set(everything), "the deliberately aborted records were never written"


@pytest.mark.timeout(360)
def test_franz_go_group_transact_session_through_leader_kill9(any_cluster, go_bin, programs, tmp_path):
    """franz-go's GroupTransactSession copies a topic (50 records and 100 ms a transaction, offsets
    committed in the transaction); a third of the way the output's partition 0 leader is killed
    with -9, and restarted at two thirds. The program ends once the group committed every input
    record; the output read with read_committed holds every input record exactly once, in order.
    franz-go says no error End returns is retryable and the application should stop (as when its
    offset commit keeps finding the killed broker, on Kafka too): the program then exits 2, and is
    started again as a supervisor would, at most twice, with the same transactional id."""
    c = any_cluster
    bs, src, dst = copy_topics(c, "go")
    inputs = produce_input(bs, src, COPY_RECORDS)
    group = unique_topic("go-group")
    prog = Program("franz-go-txn-copy", [str(go_bin), "txn-copy", "--bootstrap", bs, "--input", src, "--output", dst,
                                         "--group", group, "--transactional-id", unique_topic("go-txid"),
                                         "--input-records", str(COPY_RECORDS), "--max-poll-records", "50",
                                         "--txn-delay-ms", "100", "--max-seconds", "240"], tmp_path / "go")
    programs.append(prog.start())

    def copied() -> int:
        return sum(end_offsets(live_bootstrap(c), dst, committed=True).values())

    def a_third_copied():
        assert prog.running, f"txn-copy exited early (rc {prog.proc.returncode}):\n{prog.log_tail()}"
        return copied() >= COPY_RECORDS // 3

    wait_until(a_third_copied, 120, interval=0.2, what="a third of the input copied")
    victim = c.leader_of(dst, 0)
    c.kill9(victim)
    print(f"\n{c.kind}: killed broker {victim} (leader of {dst}/0)")
    wait_until(lambda: not prog.running or copied() >= 2 * COPY_RECORDS // 3, 120, interval=0.5,
               what="two thirds of the input copied with the broker down")
    c.restart(victim)
    rc = prog.wait(200)
    for _ in range(2):
        if rc != 2:
            break
        print(f"{c.kind}: franz-go txn-copy stopped on {prog.summary()}; starting it again")
        rc = prog.start().wait(200)
    s = prog.summary()
    assert rc == 0, f"txn-copy exited {rc}, summary {s}:\n{prog.log_tail()}"
    print(f"{c.kind}: franz-go txn-copy {s}")
    output_of_copy(bs, dst, inputs)
    assert committed_group_offsets(bs, group, src) == {q: len(v) for q, v in inputs.items()}
