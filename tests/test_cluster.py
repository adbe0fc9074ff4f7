"""A 3-broker Chronik region with Raft-replicated partitions, under faults.

Interface: the admin endpoints in README.md (/v1/cluster, /v1/partitions/...) and [cluster] in docs/configuration.md.
Raft links run through fault proxies (tests/faultproxy.py), so partitions are real for the
brokers; Kafka clients always reach every broker directly.

The scenarios that Apache Kafka can run too (leader loss, follower catch-up, min.insync)
also run once against a 3-node Kafka KRaft cluster (marked oracle_only): a scenario that
Kafka fails is a broken scenario, not a finding. Replica log dumps and Raft terms exist only
on Chronik; on Kafka those checks are skipped.

  CHAOS_SEED            seed of the chaos schedule (default: random, printed)
  CHAOS_MINUTES         length of the Chronik chaos phase (default 1: CI; set it for a soak)
  CHAOS_ORACLE_SECONDS  length of the chaos phase of the Kafka oracle run (default 45)
"""

from __future__ import annotations

import os
import random
import threading
import time
import uuid

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer, TopicPartition

import kwire
from ackcheck import (AckLog, ConsumerThread, ProducerThread, _check_replicas_and_read, consumer_mismatches,
                      make_value, new_tag, produce_batch, read_partition, records_from_dump, verify_partition)
from cluster import PartitionMonitor, create_topic
from harness import wait_until
from kclient import unique_topic

# Chronik must be back in service this soon after its partition leader is killed.
MAX_FAILOVER_S = 5.0
# Kafka's failover here is bounded by its session timeout (3 s) plus a controller election;
# the oracle run only proves the scenario recovers at all.
KAFKA_MAX_FAILOVER_S = 30.0

NOT_ENOUGH_REPLICAS = KafkaError.NOT_ENOUGH_REPLICAS  # 19
assert NOT_ENOUGH_REPLICAS == 19

def _term(cluster, topic, p, node):
    if cluster.kind != "chronik":
        return None
    return cluster.partition_state(node, topic, p)["term"]


# ---------------------------------------------------------------------------
# Leader loss
# ---------------------------------------------------------------------------


def test_leader_kill9_fails_over_and_keeps_every_ack(any_cluster):
    cluster = any_cluster
    topic = unique_topic("leaderloss")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    old = cluster.leader_of(topic, 0)
    old_term = _term(cluster, topic, 0, old)

    acks = AckLog()
    prod = ProducerThread(cluster.bootstrap, topic, [0], acks=acks, rate=400, max_messages=40_000, max_seconds=120)
    prod.start()
    try:
        wait_until(lambda: acks.count() >= 200, 30, what="200 acks before the kill")
        acked_before = acks.count()
        t_kill = time.monotonic()
        cluster.kill9(old)
        t_dead = time.monotonic()
        # First ack of a record handed to the client after the leader was dead: only a new
        # leader can have acknowledged it.
        first = wait_until(lambda: acks.first_ack_of_message_sent_after(t_dead), 60, interval=0.02,
                           what="an ack from a new leader")
        failover = first - t_kill
        print(f"\n{cluster.kind}: killed leader {old}; first ack from the new leader {failover:.3f}s later")
        # Keep producing for a bounded while on the new leader.
        target = acks.count() + 400
        wait_until(lambda: acks.count() >= target, 30, what="400 more acks after the failover")
    except BaseException:
        prod.abandon()
        raise
    prod.stop()
    assert not acks.failed, f"{len(acks.failed)} records failed, e.g. {acks.failed[:3]}"

    new = cluster.leader_of(topic, 0)
    assert new != old, "the killed node is reported as leader"
    if old_term is not None:
        assert _term(cluster, topic, 0, new) > old_term, "new leader did not take a higher term"

    cluster.restart(old)
    log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
    stats = verify_partition(0, log, acks, lo, hi)
    print(f"{cluster.kind}: {stats}, produced {prod.produced}, acked before kill {acked_before}")
    limit = MAX_FAILOVER_S if cluster.kind == "chronik" else KAFKA_MAX_FAILOVER_S
    assert failover < limit, f"first ack {failover:.2f}s after killing the leader (limit {limit}s)"


OFFSET_OUT_OF_RANGE = 1
# Answers a replica that does not lead may give: the client refreshes metadata and retries.
NOT_LEADING = {3, 5, 6, 74}  # UNKNOWN_TOPIC_OR_PARTITION, LEADER_NOT_AVAILABLE, NOT_LEADER, FENCED_LEADER_EPOCH


def _probe_replica(conn: kwire.Conn, topic: str, offset: int) -> tuple[int, int | None, int, int | None]:
    """ListOffsets(latest) and Fetch(offset) of partition 0 on one broker's connection:
    (list error, latest offset, fetch error, bytes fetched). Raises OSError if it does not answer."""
    lo = conn.request(kwire.LIST_OFFSETS, 1, kwire.list_offsets_v1_body(topic, 0, -1))
    fe = conn.request(kwire.FETCH, 4, kwire.fetch_v4_body(topic, 0, offset, max_wait_ms=0))
    if lo is None or fe is None:
        raise OSError("no answer")
    lrow = kwire.parse_list_offsets_v1(lo[1])[(topic, 0)]
    frow = kwire.parse_fetch_v4(fe[1])[(topic, 0)]
    return (lrow["error"], lrow["offset"] if lrow["error"] == 0 else None,
            frow["error"], len(frow["records"] or b"") if frow["error"] == 0 else None)


@pytest.mark.chronik
def test_restarted_former_leader_never_serves_its_stale_log(chronik_cluster_factory):
    """A partition leader is killed, a new one commits more records, and the old one
    restarts on its disk, whose log ends where it was killed, cut off from the new leader
    (not from the third broker) for 6 s. From the moment it answers again it must not act
    as the leader of that stale log: a consumer still pointed at it
    would get OFFSET_OUT_OF_RANGE for records that exist and reset its position (skipping
    them), and ListOffsets would report an end that went backwards. Acceptable answers:
    NOT_LEADER (and the like, so the client refreshes metadata), or the current log, once
    it leads again."""
    cluster = chronik_cluster_factory(3)
    topic = unique_topic("staleleader")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    acks = AckLog()
    produce_batch(cluster.bootstrap, topic, 0, 20, acks, timeout=60)
    old = cluster.leader_of(topic, 0)
    cluster.kill9(old)
    others = [i for i in cluster.ids if i != old]
    new = cluster.leader_of(topic, 0, nodes=others, timeout=30)
    produce_batch(cluster.bootstrap_of(others), topic, 0, 50, acks, timeout=60)
    assert not acks.failed, acks.failed[:3]
    end = cluster.partition_state(new, topic, 0)["high_watermark"]
    assert end == 70, end

    # Probe the restarting broker from before it listens until well after it is back.
    seen: list[tuple[float, tuple]] = []
    stop = threading.Event()

    def probe():
        # One connection kept open while it works: the window in which a stale leader
        # answers may be a few tens of milliseconds.
        conn = None
        while not stop.is_set():
            try:
                conn = conn or kwire.Conn(cluster.nodes[old].bootstrap, timeout=3)
                seen.append((time.monotonic(), _probe_replica(conn, topic, 20)))
                stop.wait(0.002)
            except (OSError, TimeoutError, ValueError):
                if conn is not None:
                    conn.close()
                conn = None
                stop.wait(0.005)
        if conn is not None:
            conn.close()

    prober = threading.Thread(target=probe, daemon=True)
    prober.start()
    # The new leader cannot reach the restarted broker for a while (the third broker can):
    # nothing then tells a broker that restored its old leadership that it was replaced.
    cluster.mesh.partition([old], [new])
    try:
        cluster.restart(old)
        t_ready = time.monotonic()
        wait_until(lambda: time.monotonic() - t_ready >= 6, 60, interval=0.1,
                   what="6 s of probing the restarted broker, cut off from the new leader")
        cluster.mesh.heal()
        t_heal = time.monotonic()
        wait_until(lambda: time.monotonic() - t_heal >= 3, 60, interval=0.1,
                   what="3 s of probing after the heal")
    finally:
        cluster.mesh.heal()
        stop.set()
        prober.join(10)
    bad = [(round(t - t_ready, 2), r) for t, r in seen
           if r[0] not in NOT_LEADING | {0} or r[2] not in NOT_LEADING | {0}
           or (r[0] == 0 and r[1] < end) or (r[2] == 0 and not r[3])]
    answers = sorted({(r[0], r[2]) for _, r in seen})
    print(f"\nrestarted former leader {old} (new leader {new}, end {end}): {len(seen)} probes, "
          f"(ListOffsets error, Fetch error) pairs seen {answers}")
    assert not bad, (f"the restarted former leader served its stale log ({len(bad)} of {len(seen)} probes, "
                     f"seconds after ready, (list error, latest, fetch error, bytes)): {bad[:5]}")
    log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
    verify_partition(0, log, acks, lo, hi)


def test_idle_partitions_accept_writes_at_once(any_cluster):
    """Partitions left idle longer than a leader lease (Chronik's partition groups send no
    heartbeats while idle) must take writes again at once, on every partition."""
    from kclient import produce_all

    cluster = any_cluster
    topic = unique_topic("idle")
    create_topic(cluster, topic, partitions=6, replication_factor=3)
    produce_all(cluster.bootstrap, topic, [{"value": b"warm", "partition": p} for p in range(6)], acks="all")
    time.sleep(5)  # > election_timeout_max (2 s), the leader lease
    t0 = time.monotonic()
    reports = produce_all(cluster.bootstrap, topic, [{"value": f"v{p}".encode(), "partition": p} for p in range(6)],
                          acks="all", timeout=30)
    took = time.monotonic() - t0
    assert [r[0] for r in reports] == [None] * 6, reports
    assert [r[2] for r in reports] == [1] * 6, "each partition's second record is at offset 1"
    assert took < 5, f"writes to idle partitions took {took:.1f}s"


# ---------------------------------------------------------------------------
# Follower restart and catch-up
# ---------------------------------------------------------------------------


def test_killed_follower_catches_up_and_rejoins_isr(any_cluster):
    cluster = any_cluster
    topic = unique_topic("catchup")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    leader = cluster.leader_of(topic, 0)
    follower = min(i for i in cluster.ids if i != leader)
    acks = AckLog()
    produce_batch(cluster.bootstrap, topic, 0, 100, acks, timeout=60)

    cluster.kill9(follower)
    live = [i for i in cluster.ids if i != follower]
    n = 3000
    produce_batch(cluster.bootstrap_of(live), topic, 0, n, acks, timeout=90)
    assert not acks.failed and acks.count() == n + 100, f"{len(acks.failed)} failed: {acks.failed[:3]}"
    print(f"\n{cluster.kind}: ISR with node {follower} down: {cluster.isr_of(topic, 0)}")

    cluster.restart(follower)
    wait_until(lambda: follower in cluster.isr_of(topic, 0), 60, interval=0.25,
               what=f"node {follower} back in the ISR of {topic}/0")
    log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
    assert hi == n + 100
    if cluster.kind == "chronik":
        s = cluster.partition_state(follower, topic, 0)
        assert s["high_watermark"] == s["log_end_offset"] == hi, s
        assert records_from_dump(cluster.dump_log(follower, topic, 0)) == log
    verify_partition(0, log, acks, lo, hi)


@pytest.mark.chronik
def test_follower_behind_purged_log_catches_up_by_snapshot(chronik_cluster_factory):
    """A follower that was down while the leader snapshotted and purged its Raft log can
    only catch up by snapshot install: the descriptor snapshot, then the partition data
    pulled from the leader. Its replica must end byte-identical."""
    cluster = chronik_cluster_factory(3, raft_snapshot_entries=50, raft_log_keep_entries=10)
    topic = unique_topic("snap")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    leader = cluster.leader_of(topic, 0)
    follower = min(i for i in cluster.ids if i != leader)
    acks = AckLog()
    produce_batch(cluster.bootstrap, topic, 0, 50, acks, timeout=60)
    cluster.wait_replicas_converged(topic, 0, cluster.ids, 30)
    behind = cluster.partition_state(follower, topic, 0)["last_log_index"]

    cluster.kill9(follower)
    live = [i for i in cluster.ids if i != follower]
    # Small client batches: each is one Raft entry, so the log passes the snapshot threshold.
    produce_batch(cluster.bootstrap_of(live), topic, 0, 1500, acks, timeout=120, **{"batch.num.messages": 5})
    assert not acks.failed, f"{len(acks.failed)} failed: {acks.failed[:3]}"

    def purged_past_follower():
        s = cluster.partition_state(cluster.leader_of(topic, 0, nodes=live), topic, 0)
        return (s.get("purged_index") or 0) > behind and s
    state = wait_until(purged_past_follower, 30, interval=0.25,
                       what=f"the leader's Raft log purged past the follower's last entry {behind}")
    print(f"\nfollower {follower} stopped at Raft index {behind}; leader purged to {state['purged_index']}, "
          f"snapshot at {state['snapshot_index']}, last entry {state['last_log_index']}")

    cluster.restart(follower)
    wait_until(lambda: follower in cluster.isr_of(topic, 0), 60, interval=0.25,
               what=f"node {follower} back in the ISR of {topic}/0")
    log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
    assert hi == 1550
    s = cluster.partition_state(follower, topic, 0)
    assert s["high_watermark"] == s["log_end_offset"] == hi, s
    assert records_from_dump(cluster.dump_log(follower, topic, 0)) == log
    assert "installed snapshot" in cluster.nodes[follower].log_tail(100000), \
        "the follower caught up without installing a snapshot"
    verify_partition(0, log, acks, lo, hi)


# ---------------------------------------------------------------------------
# Group coordinator loss
# ---------------------------------------------------------------------------


class _GroupConsumer(threading.Thread):
    """A confluent-kafka group member that commits synchronously after every
    processed batch and records what it processed."""

    def __init__(self, bootstrap: str, topic: str, group: str, max_seconds: float = 180) -> None:
        super().__init__(daemon=True, name=f"consumer-{group}")
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "auto.offset.reset": "earliest",
                           "enable.auto.commit": False, "session.timeout.ms": 6000,
                           "heartbeat.interval.ms": 500})
        self.c.subscribe([topic])
        self.processed: list[tuple[int, int, bytes]] = []
        self.commit_errors = 0
        self.max_seconds = max_seconds
        self._stop_evt = threading.Event()

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop_evt.is_set() and time.monotonic() < deadline:
            msgs = self.c.consume(200, timeout=0.2)
            msgs = [m for m in msgs if m.error() is None]
            if not msgs:
                continue
            self.processed.extend((m.partition(), m.offset(), m.value()) for m in msgs)
            try:
                self.c.commit(asynchronous=False)
            except KafkaException:
                # During a coordinator change commits fail; the next batch's
                # commit covers these records.
                self.commit_errors += 1
        self.c.close()

    def stop(self) -> None:
        self._stop_evt.set()
        self.join(30)


class _CommittedReader:
    """Reads a group's committed offsets through a consumer handle that never
    joins the group (an AdminClient was seen to trip a librdkafka assertion
    while its coordinator was down)."""

    def __init__(self, bootstrap: str, group: str, topic: str, partitions: int) -> None:
        self.c = Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})
        self.tps = [TopicPartition(topic, p) for p in range(partitions)]

    def __call__(self) -> dict[int, int] | None:
        try:
            res = self.c.committed(self.tps, timeout=3)
        except KafkaException:
            return None
        if any(tp.error is not None for tp in res):
            return None
        return {tp.partition: tp.offset for tp in res}

    def close(self) -> None:
        self.c.close()


def test_group_coordinator_kill9_keeps_committed_offsets(any_cluster):
    """kill -9 the group coordinator while consumers commit under load: the group
    recovers on a new coordinator within seconds and no committed offset goes back."""
    from confluent_kafka.admin import AdminClient

    cluster = any_cluster
    topic, group, parts = unique_topic("coord"), "g-" + uuid.uuid4().hex[:8], 4
    create_topic(cluster, topic, partitions=parts, replication_factor=3)
    acks = AckLog()
    prod = ProducerThread(cluster.bootstrap, topic, list(range(parts)), acks=acks, rate=300, max_messages=12_000,
                          max_seconds=40)
    consumers = [_GroupConsumer(cluster.bootstrap, topic, group) for _ in range(2)]
    for c in consumers:
        c.start()
    prod.start()
    history: list[tuple[float, dict[int, int]]] = []
    try:
        committed = _CommittedReader(cluster.bootstrap, group, topic, parts)
        wait_until(lambda: sum(v for v in (committed() or {}).values() if v > 0) > 300, 60,
                   what="the group committing offsets")
        admin = AdminClient({"bootstrap.servers": cluster.bootstrap})
        coord = admin.describe_consumer_groups([group])[group].result(timeout=10).coordinator.id
        del admin
        t_kill = time.monotonic()
        cluster.kill9(coord)
        before = None
        recovered = None
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and prod.is_alive():
            seen = committed()
            if seen:
                history.append((time.monotonic(), seen))
                before = before or seen
                if recovered is None and sum(seen.values()) > sum(before.values()):
                    recovered = time.monotonic() - t_kill
            time.sleep(0.2)
        assert recovered is not None, f"no commit advanced after killing coordinator {coord}"
        print(f"\n{cluster.kind}: killed coordinator {coord}; commits advanced again after {recovered:.2f}s")
    except BaseException:
        prod.abandon()
        for c in consumers:
            c.stop()
        raise
    prod.stop()
    assert not acks.failed, f"{len(acks.failed)} produce failures, e.g. {acks.failed[:3]}"
    ends = {}
    for p in range(parts):
        ends[p] = max([o for (pp, o) in acks.acked if pp == p], default=-1) + 1
    # Drain: the group commits up to every partition's end.
    wait_until(lambda: committed() == ends, 60, interval=0.5,
               what=f"committed offsets reaching the log ends {ends}")
    history.append((time.monotonic(), committed()))
    committed.close()
    for c in consumers:
        c.stop()
    processed = {v for c in consumers for (_, _, v) in c.processed}
    missing = [v for v in acks.acked.values() if v not in processed]
    assert not missing, f"{len(missing)} acked records never processed, e.g. {missing[:3]}"
    regressions = [(p, a[1][p], b[1][p]) for a, b in zip(history, history[1:]) for p in a[1]
                   if p in b[1] and b[1][p] < a[1][p]]
    assert not regressions, f"committed offsets went backwards (partition, before, after): {regressions[:5]}"
    limit = 10.0 if cluster.kind == "chronik" else KAFKA_MAX_FAILOVER_S
    assert recovered < limit, f"commits resumed {recovered:.1f}s after the kill (limit {limit}s)"


# ---------------------------------------------------------------------------
# Preferred leader election (kafka-leader-election)
# ---------------------------------------------------------------------------


def test_preferred_leader_election_after_failover(cluster_no_auto_rebalance):
    from test_kafka_cli import LEADER_ELECTION_COMMAND, kafka_cli

    cluster = cluster_no_auto_rebalance
    topic = unique_topic("prefer")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    md = kwire_metadata(cluster.bootstrap, topic)
    preferred = md["replicas"][0]
    wait_until(lambda: cluster.leader_of(topic, 0) == preferred, 30, what=f"preferred replica {preferred} leading")
    cluster.kill9(preferred)
    others = [i for i in cluster.ids if i != preferred]
    moved = cluster.leader_of(topic, 0, nodes=others, timeout=60)
    assert moved != preferred
    cluster.restart(preferred)
    wait_until(lambda: preferred in cluster.isr_of(topic, 0), 60, interval=0.25,
               what=f"node {preferred} back in the ISR")
    assert cluster.leader_of(topic, 0) == moved, "leadership moved back before the election was asked for"
    out = kafka_cli(LEADER_ELECTION_COMMAND, "--bootstrap-server", cluster.bootstrap, "--election-type",
                    "preferred", "--topic", topic, "--partition", "0")
    assert f"Successfully completed leader election (PREFERRED) for partitions {topic}-0" in out, out
    wait_until(lambda: cluster.leader_of(topic, 0) == preferred, 10, what=f"node {preferred} leading again")


def test_reassign_partitions_moves_a_replica(any_cluster, tmp_path):
    """kafka-reassign-partitions moves a replica from broker 1 to broker 3: the new
    replica catches up through Raft (learner, then voter), the old one drops out, no
    record is lost, and the partition keeps taking writes afterwards."""
    import json

    from test_kafka_cli import REASSIGN_COMMAND, TOPIC_COMMAND, kafka_cli

    cluster = any_cluster
    topic = unique_topic("move")
    kafka_cli(TOPIC_COMMAND, "--bootstrap-server", cluster.bootstrap, "--create", "--topic", topic,
              "--replica-assignment", "1:2")
    wait_until(lambda: (kwire_metadata(cluster.bootstrap, topic) or {}).get("leader", -1) in (1, 2), 30,
               what=f"{topic} led")
    acks = AckLog()
    produce_batch(cluster.bootstrap, topic, 0, 300, acks, timeout=60)
    spec = tmp_path / "move.json"
    spec.write_text(json.dumps({"version": 1, "partitions": [{"topic": topic, "partition": 0, "replicas": [2, 3]}]}))
    kafka_cli(REASSIGN_COMMAND, "--bootstrap-server", cluster.bootstrap, "--reassignment-json-file", str(spec),
              "--execute")
    produce_batch(cluster.bootstrap, topic, 0, 100, acks, timeout=60)

    def completed():
        out = kafka_cli(REASSIGN_COMMAND, "--bootstrap-server", cluster.bootstrap, "--reassignment-json-file",
                        str(spec), "--verify", "--preserve-throttles")
        return f"Reassignment of partition {topic}-0 is completed" in out
    wait_until(completed, 90, interval=1, what="the reassignment completing")
    md = kwire_metadata(cluster.bootstrap, topic)
    assert sorted(md["replicas"]) == [2, 3] and md["leader"] in (2, 3), md
    produce_batch(cluster.bootstrap, topic, 0, 100, acks, timeout=60)
    assert not acks.failed, f"{len(acks.failed)} failed: {acks.failed[:3]}"
    if cluster.kind == "chronik":
        hw, dump = cluster.wait_replicas_converged(topic, 0, [2, 3], 60)
        assert hw == 500
        wait_until(lambda: cluster.partition_state(1, topic, 0) is None, 30,
                   what="broker 1 dropping its replica")
    log, lo, hi = read_partition(cluster.bootstrap, topic, 0)
    assert hi == 500
    verify_partition(0, log, acks, lo, hi)


def kwire_metadata(bootstrap: str, topic: str) -> dict:
    with kwire.Conn(bootstrap.split(",")[0]) as c:
        _, body = c.request(kwire.METADATA, 4, kwire.metadata_v4_body([topic], allow_auto_create=False))
    return kwire.parse_metadata_v4(body)["topics"][topic]["partitions"][0]


# ---------------------------------------------------------------------------
# min.insync.replicas
# ---------------------------------------------------------------------------


def _send_one(p: Producer, topic: str, value: bytes, timeout: float):
    """Produce one record and wait for its report: (error or None, offset)."""
    out = {}
    p.produce(topic, value=value, partition=0, on_delivery=lambda e, m: out.update(err=e, off=m.offset()))
    p.flush(timeout)
    assert out, f"no delivery report within {timeout}s"
    return out["err"], out["off"]


def test_min_insync_rejects_with_not_enough_replicas(any_cluster):
    cluster = any_cluster
    topic = unique_topic("minisr")
    create_topic(cluster, topic, partitions=1, replication_factor=3, config={"min.insync.replicas": "3"})
    cons = ConsumerThread(cluster.bootstrap, topic, [0], max_seconds=240).start()
    acks = AckLog()
    rejected: list[bytes] = []
    try:
        produce_batch(cluster.bootstrap, topic, 0, 50, acks, timeout=60)
        assert acks.count() == 50 and not acks.failed, "acks=all must succeed while all 3 replicas are in sync"

        leader = cluster.leader_of(topic, 0)
        follower = min(i for i in cluster.ids if i != leader)
        cluster.kill9(follower)
        live_bs = cluster.bootstrap_of([i for i in cluster.ids if i != follower])
        # No retries: the broker's answer is the delivery report.
        p = Producer({"bootstrap.servers": live_bs, "acks": "all", "enable.idempotence": False, "retries": 0,
                      "linger.ms": 0, "compression.type": "none", "request.timeout.ms": 5000,
                      "message.timeout.ms": 8000})
        tag = new_tag("probe")
        seq = 0
        uncertain = []  # timeouts, NOT_ENOUGH_REPLICAS_AFTER_APPEND...: outcome unknown
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            v = make_value(tag, 0, seq)
            seq += 1
            err, off = _send_one(p, topic, v, 15)
            if err is None:
                acks.record_ack(0, off, v)  # accepted while the ISR still had 3 members
            elif err.code() == NOT_ENOUGH_REPLICAS:
                rejected.append(v)
                break
            else:
                uncertain.append((v, err))
                time.sleep(0.2)
        assert rejected, (f"no NOT_ENOUGH_REPLICAS within 60s of killing follower {follower}; "
                          f"errors seen: {[str(e) for _, e in uncertain[-5:]]}")
        print(f"\n{cluster.kind}: rejected after {seq} probes ({len(uncertain)} uncertain)")
        # Once the ISR is too small every acks=all write is refused up front.
        others = []
        for _ in range(20):
            v = make_value(tag, 0, seq)
            seq += 1
            err, _off = _send_one(p, topic, v, 15)
            if err is not None and err.code() == NOT_ENOUGH_REPLICAS:
                rejected.append(v)
            else:
                others.append(err)
        assert not others, f"expected NOT_ENOUGH_REPLICAS for all 20 writes, got {others}"

        cluster.restart(follower)
        wait_until(lambda: len(cluster.isr_of(topic, 0)) == 3, 60, interval=0.25, what="ISR back to 3 replicas")
        produce_batch(cluster.bootstrap, topic, 0, 50, acks, timeout=60)
        assert not acks.failed, f"writes failed after the ISR recovered: {acks.failed[:3]}"

        log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
        wait_until(lambda: cons.caught_up({0: hi}), 30, what="the live consumer reading to the end")
    except BaseException:
        cons.abandon()
        raise
    cons.stop()
    in_log = set(log.values())
    assert not [v for v in rejected if v in in_log], "records rejected with NOT_ENOUGH_REPLICAS are in the log"
    assert not [v for v in rejected if v in set(cons.seen.values())], "a consumer saw a rejected record"
    verify_partition(0, log, acks, lo, hi)
    assert not consumer_mismatches(cons.seen, {0: log})


# ---------------------------------------------------------------------------
# Network partition (Chronik only: needs the fault proxies between brokers)
# ---------------------------------------------------------------------------


def _raw_produce(bootstrap: str, topic: str, value: bytes, timeout_ms: int = 3000) -> int | None:
    """One acks=all Produce v8 request, no retries: the error code, or None if no answer."""
    batch = kwire.record_batch([(None, value)])
    try:
        with kwire.Conn(bootstrap, timeout=timeout_ms / 1000 + 5) as c:
            res = c.request(kwire.PRODUCE, 8, kwire.produce_body(topic, 0, batch, acks=-1, timeout_ms=timeout_ms))
    except (OSError, TimeoutError):
        return None
    if res is None:
        return None
    return kwire.parse_produce_v8(res[1])[(topic, 0)]["error"]


@pytest.mark.chronik
def test_partitioned_leader_is_replaced_and_cannot_commit(chronik_cluster_factory):
    cluster = chronik_cluster_factory(3)
    topic = unique_topic("partition")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    acks = AckLog()
    produce_batch(cluster.bootstrap, topic, 0, 200, acks, timeout=60)

    old = cluster.leader_of(topic, 0)
    old_term = _term(cluster, topic, 0, old)
    majority = [i for i in cluster.ids if i != old]
    monitor = PartitionMonitor(cluster, [(topic, 0)]).start()
    minority_value = b"minority-" + uuid.uuid4().hex.encode()
    try:
        cluster.mesh.isolate(old)
        t_isolated = time.monotonic()
        new = cluster.leader_of(topic, 0, nodes=majority, timeout=20)
        elected = time.monotonic() - t_isolated
        assert new != old
        new_state = cluster.partition_state(new, topic, 0)
        assert new_state["term"] > old_term
        print(f"\nisolated leader {old}; node {new} leads term {new_state['term']} after {elected:.2f}s")
        time.sleep(0.5)  # let anything already in flight to the isolated node land
        t_settled = time.monotonic()
        hw_minority = cluster.partition_state(old, topic, 0)["high_watermark"]

        # A write sent straight to the isolated node must not be acknowledged.
        err = _raw_produce(cluster.nodes[old].bootstrap, topic, minority_value)
        assert err != 0, "the isolated former leader acknowledged an acks=all write"

        # The majority commits, through clients that bootstrap from it.
        produce_batch(cluster.bootstrap_of(majority), topic, 0, 500, acks, timeout=60)
        assert not acks.failed, f"majority writes failed: {acks.failed[:3]}"
        hw_majority = cluster.partition_state(new, topic, 0)["high_watermark"]
        assert hw_majority >= 700
        assert hw_minority <= hw_majority
        minority_hws = set(monitor.hw_seen(old, topic, 0, since=t_settled)) | {
            cluster.partition_state(old, topic, 0)["high_watermark"]}
        assert minority_hws == {hw_minority}, f"isolated node's high watermark moved: {sorted(minority_hws)}"
    finally:
        cluster.mesh.heal()

    hw, dump = cluster.wait_replicas_converged(topic, 0, cluster.ids, 60)
    monitor.stop()
    assert not monitor.split_brain(), monitor.split_brain()
    assert not monitor.hw_regressions(), monitor.hw_regressions()
    log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
    assert minority_value not in log.values(), "the write sent to the isolated node survived the heal"
    verify_partition(0, log, acks, lo, hi)


# ---------------------------------------------------------------------------
# Topic config changes under produce
# ---------------------------------------------------------------------------

# Below the large records' batches, far above the steady producer's (batch.size 1000).
SMALL_MAX_MESSAGE_BYTES = 2048
LARGE_RECORD_PAD = 3000
LOG_APPEND_TIME_BIT = 0x08


class _OneByOne(threading.Thread):
    """Produces one large record at a time (acks=all, no retries, so each report is the
    broker's verdict on exactly that batch) round-robin over `partitions`, until stop()."""

    def __init__(self, bootstrap: str, topic: str, partitions: list[int], acks: AckLog) -> None:
        super().__init__(daemon=True, name=f"large-{topic}")
        self.p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "enable.idempotence": False,
                           "retries": 0, "linger.ms": 0, "compression.type": "none",
                           "max.in.flight.requests.per.connection": 1, "request.timeout.ms": 15000,
                           "message.timeout.ms": 30000})
        self.topic, self.partitions, self.acks = topic, partitions, acks
        self.tag = new_tag("L")
        self.error: BaseException | None = None
        self._stop_evt = threading.Event()

    def run(self) -> None:
        try:
            seq = 0
            while not self._stop_evt.is_set():
                part = self.partitions[seq % len(self.partitions)]
                v = make_value(self.tag, part, seq) + b"L" * LARGE_RECORD_PAD
                self.acks.on_sent(v)
                self.p.produce(self.topic, value=v, partition=part, on_delivery=self.acks.on_delivery)
                if self.p.flush(45) != 0:
                    raise AssertionError(f"no delivery report for large record {seq} within 45s")
                seq += 1
        except BaseException as e:  # noqa: BLE001 - reported by stop()
            self.error = e

    def abandon(self) -> None:
        self._stop_evt.set()
        self.join(60)

    def stop(self) -> None:
        self.abandon()
        assert not self.is_alive(), "large-record producer did not finish"
        assert self.error is None, f"large-record producer failed: {self.error!r}"


@pytest.mark.chronik
def test_config_changes_under_produce_keep_replicas_identical(chronik_cluster_factory):
    """Topic configs live in the controller group, which each broker applies at its own pace.
    If a partition's apply read them (LogAppendTime stamping, the max.message.bytes check),
    a change would take effect at a different log position on each replica: different bytes,
    or a batch refused on one replica and stored on another. Toggle message.timestamp.type
    and max.message.bytes many times under continuous produce; the replicas must end
    byte-identical, keep every acked record and hold no refused one."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from kclient import admin, future_error

    cluster = chronik_cluster_factory(3)
    topic = unique_topic("cfgrace")
    # Partition leaders spread over the brokers, so most of them are not the controller leader.
    parts = list(range(3))
    create_topic(cluster, topic, partitions=len(parts), replication_factor=3)
    acks, large_acks = AckLog(), AckLog()
    prod = ProducerThread(cluster.bootstrap, topic, parts, acks=acks, rate=1500, max_seconds=300,
                          **{"batch.size": 1000})
    large = _OneByOne(cluster.bootstrap, topic, parts, large_acks)
    a = admin(cluster.bootstrap)
    rounds = 40
    prod.start(), large.start()
    try:
        for i in range(rounds):
            # All four combinations, each change landing among in-flight batches.
            ts_type = "LogAppendTime" if i % 2 == 0 else "CreateTime"
            max_bytes = SMALL_MAX_MESSAGE_BYTES if (i // 2) % 2 == 0 else 1048588
            res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
                ConfigEntry("message.timestamp.type", ts_type, incremental_operation=AlterConfigOpType.SET),
                ConfigEntry("max.message.bytes", str(max_bytes), incremental_operation=AlterConfigOpType.SET)])
            (fut,) = a.incremental_alter_configs([res]).values()
            err = future_error(fut, 30)
            assert err is None, f"round {i}: altering configs failed: {err}"
            goal = acks.count() + 100
            wait_until(lambda: acks.count() >= goal, 30, interval=0.01, what=f"100 more acks in round {i}")
    except BaseException:
        prod.abandon()
        large.abandon()
        raise
    prod.stop()
    large.stop()
    assert not acks.failed, f"{len(acks.failed)} small records failed, e.g. {acks.failed[:3]}"
    refused = set(large_acks.failed_values({KafkaError.MSG_SIZE_TOO_LARGE}))
    assert refused and large_acks.count(), (f"the large records were not both refused ({len(refused)}) and "
                                            f"accepted ({large_acks.count()}): the size toggles had no effect")

    stamped = {"LogAppendTime": 0, "CreateTime": 0}
    for p in parts:
        log, lo, hi = _check_replicas_and_read(cluster, topic, p, timeout=60)
        verify_partition(p, log, acks, lo, hi)
        verify_partition(p, log, large_acks, lo, hi)
        stored_refused = refused & set(log.values())
        assert not stored_refused, (f"partition {p}: {len(stored_refused)} records refused with "
                                    f"MESSAGE_TOO_LARGE are stored")
        for b in kwire.parse_record_batches(cluster.dump_log(cluster.leader_of(topic, p), topic, p)):
            stamped["LogAppendTime" if b["attributes"] & LOG_APPEND_TIME_BIT else "CreateTime"] += 1
    assert all(stamped.values()), f"batches per timestamp type {stamped}: the type toggles had no effect"
    print(f"\n{rounds} config rounds: {acks.count()} small and {large_acks.count()} large records acked, "
          f"{len(refused)} large refused, batches by timestamp type {stamped}")


@pytest.mark.chronik
def test_retention_trims_every_replica_at_the_same_offset(chronik_cluster_factory):
    """Retention is the leader's decision, replicated as a trim: followers do not trim on
    their own, so they must end with the leader's log start, bytes and epoch history,
    also when a new leader (a new epoch) makes the next trim."""
    from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource

    from kclient import admin, future_error, produce_all

    cluster = chronik_cluster_factory(3, retention_check_interval_ms=300)
    topic = unique_topic("ret")
    hour = 3_600_000
    create_topic(cluster, topic, partitions=1, replication_factor=3, config={"retention.ms": str(2 * hour)})

    def produce(tag: str, age_ms: int, n: int, bootstrap: str) -> int:
        """n records of one client batch, timestamped age_ms ago; the first one's offset."""
        now = int(time.time() * 1000)
        reports = produce_all(bootstrap, topic, [{"value": f"{tag}-{i}".encode(), "partition": 0,
                                                  "timestamp": now - age_ms + i} for i in range(n)], acks="all")
        assert all(r[0] is None for r in reports), [r for r in reports if r[0] is not None][:3]
        return reports[0][2]

    def trimmed_to(offset: int, nodes):
        starts = {i: (cluster.partition_state(i, topic, 0) or {}).get("log_start_offset") for i in nodes}
        return all(s == offset for s in starts.values()) and starts

    produce("expired", 3 * hour, 100, cluster.bootstrap)
    mid = produce("mid", hour, 10, cluster.bootstrap)
    wait_until(lambda: trimmed_to(mid, cluster.ids), 30, what=f"every replica's log start at {mid}")

    old = cluster.leader_of(topic, 0)
    cluster.kill9(old)
    live = [i for i in cluster.ids if i != old]
    recent = produce("recent", 0, 10, cluster.bootstrap_of(live))
    cluster.restart(old)
    # (Altered with every broker up: librdkafka's admin client waits for the controller it
    # last saw, which may be the killed broker.)
    res = ConfigResource(ConfigResource.Type.TOPIC, topic, incremental_configs=[
        ConfigEntry("retention.ms", str(hour // 2), incremental_operation=AlterConfigOpType.SET)])
    (fut,) = admin(cluster.bootstrap).incremental_alter_configs([res]).values()
    assert future_error(fut, 30) is None
    wait_until(lambda: trimmed_to(recent, cluster.ids), 60, what=f"every replica's log start at {recent}")
    hw, dump = cluster.wait_replicas_converged(topic, 0, cluster.ids, 60)
    states = {i: cluster.partition_state(i, topic, 0) for i in cluster.ids}
    histories = {i: (s["log_start_offset"], s["epochs"]) for i, s in states.items()}
    assert len({repr(h) for h in histories.values()}) == 1, f"replicas differ: {histories}"
    assert histories[old][1][-1][1] == recent, f"no epoch starting at the new leader's batch: {histories[old]}"
    kept = records_from_dump(dump)
    assert (sorted(kept), hw) == (list(range(recent, recent + 10)), recent + 10), (sorted(kept)[:5], hw)
    assert [v for _, v in sorted(kept.items())] == [f"recent-{i}".encode() for i in range(10)]


# ---------------------------------------------------------------------------
# Chaos
# ---------------------------------------------------------------------------

CHAOS_MINUTES = float(os.environ.get("CHAOS_MINUTES", "1"))
# The Kafka oracle run only validates the scenario (kill -9/restart; it has no fault proxies).
CHAOS_ORACLE_SECONDS = float(os.environ.get("CHAOS_ORACLE_SECONDS", "45"))
CHAOS_PARTITIONS = 3


def run_chaos(cluster, duration: float, seed: int) -> None:
    """Random kill -9 / restart / isolate / heal / slow-link events on a 3-partition RF=3
    topic for `duration` seconds while an idempotent producer and a consumer run; never
    more than a minority killed or isolated. Then heal, restart all, and check: no acked
    write lost, offsets contiguous, per-producer order kept, no duplicates, nothing a
    consumer read later vanished, (Chronik) one leader per term and replicas identical."""
    try:
        _run_chaos(cluster, duration, seed)
    except BaseException as e:
        e.add_note(f"CHAOS_SEED={seed} (rerun with this seed to replay the fault schedule)")
        raise


def _run_chaos(cluster, duration: float, seed: int) -> None:
    rng = random.Random(seed)
    has_mesh = hasattr(cluster, "mesh")
    n = len(cluster.ids)
    max_disrupted = (n - 1) // 2  # killed or isolated: always a majority left
    topic = unique_topic("chaos")
    parts = list(range(CHAOS_PARTITIONS))
    create_topic(cluster, topic, partitions=CHAOS_PARTITIONS, replication_factor=3)

    acks = AckLog()
    prod = ProducerThread(cluster.bootstrap, topic, parts, acks=acks, rate=300, max_seconds=duration + 150,
                          max_messages=int(300 * (duration + 150)), **{"message.timeout.ms": 60000})
    cons = ConsumerThread(cluster.bootstrap, topic, parts, max_seconds=duration + 200)
    monitor = PartitionMonitor(cluster, [(topic, p) for p in parts], interval=0.2) if has_mesh else None
    down: set[int] = set()
    isolated: set[int] = set()
    events: list[str] = []
    prod.start(), cons.start()
    if monitor:
        monitor.start()
    t0 = time.monotonic()
    try:
        while time.monotonic() - t0 < duration:
            time.sleep(min(rng.uniform(1.0, 4.0), max(0.0, duration - (time.monotonic() - t0))))
            disrupted = down | isolated
            choices = ["slow"] if has_mesh else []
            if len(disrupted) < max_disrupted:
                choices += ["kill", "kill"] + (["isolate"] if has_mesh else [])
            if down:
                choices += ["restart", "restart"]
            if isolated:
                choices += ["heal", "heal"]
            if not choices:
                continue
            action = rng.choice(choices)
            healthy = [i for i in cluster.ids if i not in disrupted]
            if action == "kill":
                # Half the time the leader of a random partition, else any healthy node.
                target = rng.choice(healthy)
                if rng.random() < 0.5:
                    try:
                        leader = cluster.leader_of(topic, rng.choice(parts), timeout=2)
                    except TimeoutError:
                        leader = None
                    if leader in healthy:
                        target = leader
                cluster.kill9(target)
                down.add(target)
            elif action == "restart":
                target = rng.choice(sorted(down))
                cluster.restart(target, timeout=90)
                down.discard(target)
            elif action == "isolate":
                target = rng.choice(healthy)
                cluster.mesh.isolate(target)
                isolated.add(target)
            elif action == "heal":
                target = None
                cluster.mesh.heal()
                isolated.clear()
            else:  # slow one direction of one link, 20-200 ms
                a, b = rng.sample(cluster.ids, 2)
                target = (a, b, rng.randint(20, 200))
                cluster.mesh.slow(*target)
            events.append(f"{time.monotonic() - t0:6.1f}s {action} {target} (acked {acks.count()})")

        # Recovery: heal, restart everything, and the cluster must take writes again.
        if has_mesh:
            cluster.mesh.heal()
        for i in sorted(down):
            cluster.restart(i, timeout=90)
        down.clear()
        events.append(f"{time.monotonic() - t0:6.1f}s healed and restarted all (acked {acks.count()})")
        goal = acks.count() + 300
        wait_until(lambda: acks.count() >= goal, 60, what="300 more acks after recovery")
    except BaseException:
        print("\n".join(events))
        prod.abandon()
        cons.abandon()
        if monitor:
            monitor.stop()
        raise
    print("\n".join(events))
    prod.stop()

    logs = {}
    for p in parts:
        log, lo, hi = _check_replicas_and_read(cluster, topic, p, timeout=120)
        logs[p] = log
        try:
            verify_partition(p, log, acks, lo, hi)
        except AssertionError as e:
            e.add_note("librdkafka's idempotence events:\n" + "\n".join(prod.eos_events))
            raise
    wait_until(lambda: cons.caught_up({p: max(logs[p], default=-1) + 1 for p in parts}), 60,
               what="the live consumer reading every partition to the end")
    cons.stop()
    problems = consumer_mismatches(cons.seen, logs)
    assert not problems, f"{len(problems)} records a consumer read were later lost or changed: {problems[:5]}"
    assert not cons.conflicts, cons.conflicts[:5]
    if monitor:
        monitor.stop()
        assert not monitor.split_brain(), monitor.split_brain()
        assert not monitor.hw_regressions(), monitor.hw_regressions()[:10]
    # With a majority always up the cluster must have served most of the time.
    assert acks.count() >= 0.5 * prod.produced, (f"only {acks.count()} of {prod.produced} records acknowledged "
                                                 f"although a majority was always up")
    print(f"chaos ({cluster.kind}): produced {prod.produced}, acked {acks.count()} "
          f"({sum(map(len, acks.acked_no_offset.values()))} without offset), failed {len(acks.failed)}, "
          f"consumer read {len(cons.seen)}, client errors {len(cons.errors)}")


def _chaos_seed() -> int:
    seed = int(os.environ.get("CHAOS_SEED") or random.randrange(2**32))
    print(f"\nCHAOS_SEED={seed}")
    return seed


@pytest.mark.chronik
@pytest.mark.timeout(int(CHAOS_MINUTES * 60) + 240)
def test_chaos_kill_isolate_slow_keeps_acked_writes(chronik_cluster_factory):
    run_chaos(chronik_cluster_factory(3), CHAOS_MINUTES * 60, _chaos_seed())


@pytest.mark.oracle_only
@pytest.mark.timeout(int(CHAOS_ORACLE_SECONDS) + 300)
def test_chaos_scenario_holds_on_kafka(kafka_cluster):
    k = kafka_cluster
    for i in k.ids:
        if not k.running(i):
            k.restart(i)
    try:
        run_chaos(k, CHAOS_ORACLE_SECONDS, _chaos_seed())
    finally:
        for i in k.ids:
            if not k.running(i):
                k.restart(i)


# ---------------------------------------------------------------------------
# The Kafka cluster harness itself
# ---------------------------------------------------------------------------


@pytest.mark.oracle_only
def test_kafka_cluster_replicates_rf3_topic(kafka_cluster):
    from kclient import admin
    from confluent_kafka.admin import ConfigResource

    k = kafka_cluster
    assert k.registered_brokers() == {1, 2, 3}
    topic = unique_topic("kcluster")
    create_topic(k, topic, partitions=3, replication_factor=3)
    for p in range(3):
        m = k.partition_metadata(topic, p)
        assert sorted(m["replicas"]) == [1, 2, 3] and sorted(m["isr"]) == [1, 2, 3], m
    res = ConfigResource(ConfigResource.Type.TOPIC, topic)
    cfg = admin(k.bootstrap).describe_configs([res])[res].result(30)
    assert cfg["min.insync.replicas"].value == "2"
    acks = AckLog()
    for p in range(3):
        produce_batch(k.bootstrap, topic, p, 100, acks, timeout=60)
    assert acks.count() == 300 and not acks.failed
    leaders = {k.leader_of(topic, p) for p in range(3)}
    print(f"\nleaders of the 3 partitions: {sorted(leaders)}")
    for p in range(3):
        log, lo, hi = read_partition(k.bootstrap, topic, p)
        verify_partition(p, log, acks, lo, hi)
        assert hi == 100
