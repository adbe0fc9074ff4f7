"""Consumer-group conformance scenarios, run against Apache Kafka and Chronik alike.

Every test takes the parametrized `broker` fixture, so each scenario runs on the
Kafka oracle and on Chronik and must observe the same behaviour (classic group
protocol, `group.protocol=classic`; KIP-848 is out of scope here). What it proves:

  * two consumers of one group split a 6-partition topic 3/3 (disjoint, complete),
    read every record exactly once, and their synchronous commits are what
    Consumer.committed() and AdminClient.list_consumer_group_offsets report;
  * a committed offset keeps its metadata string, and a new member resumes there;
  * rebalancing when a member joins and when it leaves, eager (`range`: everything
    is revoked) and incremental (`cooperative-sticky`: only moved partitions are);
  * static membership (`group.instance.id`): a second consumer with the same
    instance id fences the first (fatal FENCED_INSTANCE_ID), and a static member's
    close does not leave the group (it stays until its session times out); a static
    member replaced by a new process (leader or follower) gets its partitions back
    without rebalancing the group: the other member sees no callback;
  * the admin group APIs: ListGroups (with state filter), DescribeGroups,
    DeleteGroups (NON_EMPTY_GROUP, GROUP_ID_NOT_FOUND), OffsetFetch via the admin
    client, AlterConsumerGroupOffsets (UNKNOWN_MEMBER_ID while the group is in
    use), OffsetDelete (GROUP_SUBSCRIBED_TO_TOPIC while subscribed);
  * raw coordinator requests (tests/kwire.py): FindCoordinator, JoinGroup's
    MEMBER_ID_REQUIRED two-step join, SyncGroup, Heartbeat / OffsetCommit error
    codes (UNKNOWN_MEMBER_ID, ILLEGAL_GENERATION, REBALANCE_IN_PROGRESS),
    OffsetFetch of an unknown group, LeaveGroup;
  * kafka-python's group consumer joins, reads and commits, and a successor resumes.

Every wait is bounded. Group timings are short (session 6 s, the broker minimum;
heartbeat 500 ms), and the Kafka oracle runs with group.initial.rebalance.delay.ms=0
(harness.py), so a first join completes at once. With CHRONIK_TEST_BROKERS=3 the
bootstrap is a comma-separated list and the coordinator may be any broker: raw
requests go to the broker FindCoordinator names.
"""

from __future__ import annotations

import os
import time
import uuid

import pytest
from confluent_kafka import (
    Consumer,
    ConsumerGroupState,
    ConsumerGroupTopicPartitions,
    ConsumerGroupType,
    KafkaError,
    KafkaException,
    TopicPartition,
)

import kwire
from kclient import admin, create_topic, future_error, produce_all, unique_topic, watermarks

# Kafka protocol error codes asserted below.
UNKNOWN_TOPIC_OR_PARTITION = 3
COORDINATOR_NOT_AVAILABLE = 15
ILLEGAL_GENERATION = 22
UNKNOWN_MEMBER_ID = 25
REBALANCE_IN_PROGRESS = 27
NON_EMPTY_GROUP = 68
GROUP_ID_NOT_FOUND = 69
MEMBER_ID_REQUIRED = 79
GROUP_SUBSCRIBED_TO_TOPIC = 86

# librdkafka's OFFSET_INVALID: what the admin client shows for "no committed offset" (wire: -1).
NO_OFFSET = -1001

# Short group timings so rebalances and session expiry fit in a test (6 s is the
# broker's default group.min.session.timeout.ms).
SESSION_MS = 6000
HEARTBEAT_MS = 500

# ---------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------


def unique_group(prefix: str = "g") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


def group_consumer(broker, group: str, **conf) -> Consumer:
    """A confluent-kafka group consumer: manual commits, starts at the earliest offset
    when the group has no committed offset."""
    base = {
        "bootstrap.servers": str(broker),
        "group.id": group,
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": False,
        "session.timeout.ms": SESSION_MS,
        "heartbeat.interval.ms": HEARTBEAT_MS,
        "fetch.wait.max.ms": 100,
    }
    base.update(conf)
    return Consumer(base)


@pytest.fixture
def make_consumer(broker):
    """make_consumer(group, **conf) -> Consumer; every consumer made is closed at teardown
    (so a failing test does not leave a member heartbeating into the next one)."""
    made: list[Consumer] = []

    def make(group: str, **conf) -> Consumer:
        c = group_consumer(broker, group, **conf)
        made.append(c)
        return c

    yield make
    for c in made:
        close_quietly(c)


def close_quietly(c: Consumer) -> None:
    try:
        c.close()
    except RuntimeError:  # already closed
        pass


def assigned(c: Consumer) -> set[int]:
    """The partitions currently assigned to c (one topic per test)."""
    return {tp.partition for tp in c.assignment()}


def poll_until(consumers: dict[str, Consumer], done, timeout: float, what: str,
               records: dict[str, list] | None = None) -> None:
    """Poll every consumer in turn (a consumer only takes part in a rebalance while it
    polls) until done() is true. Records go to records[name] as (partition, offset, value);
    any consumer error fails the test."""
    deadline = time.monotonic() + timeout
    while True:
        for name, c in consumers.items():
            m = c.poll(0.05)
            if m is None:
                continue
            if m.error():
                raise AssertionError(f"consumer {name}: {m.error()} while waiting for {what}")
            if records is not None:
                records.setdefault(name, []).append((m.partition(), m.offset(), m.value()))
        if done():
            return
        if time.monotonic() >= deadline:
            state = {name: sorted(assigned(c)) for name, c in consumers.items()}
            got = {name: len(v) for name, v in (records or {}).items()}
            raise AssertionError(f"timed out after {timeout}s waiting for {what}; assignments {state}, records {got}")


def split_between(a: Consumer, b: Consumer, partitions: int) -> bool:
    """Both own partitions, disjointly, and together all of them: the group is balanced."""
    pa, pb = assigned(a), assigned(b)
    return bool(pa) and bool(pb) and not (pa & pb) and pa | pb == set(range(partitions))


def describe_group(broker, group: str):
    return admin(broker).describe_consumer_groups([group], request_timeout=15)[group].result(timeout=30)


def listed_groups(broker, states=None) -> dict:
    """{group_id: ConsumerGroupListing} from ListGroups (optionally filtered by state)."""
    kw = {"states": set(states)} if states else {}
    res = admin(broker).list_consumer_groups(request_timeout=15, **kw).result(timeout=30)
    assert not res.errors, res.errors
    return {g.group_id: g for g in res.valid}


def admin_offsets(broker, group: str, topic: str | None = None, partitions=None) -> dict:
    """Committed offsets per the admin client (OffsetFetch): {partition: (offset, metadata)}.
    Without `partitions`, every offset the group has committed (the wire's null topic list)."""
    req = [TopicPartition(topic, p) for p in partitions] if partitions is not None else None
    res = admin(broker).list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, req)], request_timeout=15)[group].result(timeout=30)
    out = {}
    for tp in res.topic_partitions:
        assert tp.error is None, f"{tp}: {tp.error}"
        assert topic is None or tp.topic == topic, tp
        out[tp.partition] = (tp.offset, tp.metadata)
    return out


def wait_group_state(broker, group: str, state, timeout: float = 20.0):
    """Describe the group until it is in `state`; return that description."""
    deadline = time.monotonic() + timeout
    while True:
        d = describe_group(broker, group)
        if d.state == state:
            return d
        if time.monotonic() >= deadline:
            raise AssertionError(f"group {group} is {d.state} with {len(d.members)} members after {timeout}s, "
                                 f"expected {state}")
        time.sleep(0.2)


def find_coordinator(broker, group: str, timeout: float = 30.0) -> tuple[int, str]:
    """(node id, "host:port") of the group's coordinator via FindCoordinator v1. Retries
    COORDINATOR_NOT_AVAILABLE: Kafka answers that while it creates __consumer_offsets."""
    deadline = time.monotonic() + timeout
    with kwire.Conn(str(broker)) as c:
        while True:
            res = c.request(kwire.FIND_COORDINATOR, 1, kwire.find_coordinator_v1_body(group))
            assert res is not None, "connection closed on FindCoordinator"
            fc = kwire.parse_find_coordinator_v1(res[1])
            if fc["error"] == 0:
                return fc["node_id"], f"{fc['host']}:{fc['port']}"
            assert fc["error"] == COORDINATOR_NOT_AVAILABLE, fc
            assert time.monotonic() < deadline, f"no coordinator for {group} after {timeout}s: {fc}"
            time.sleep(0.2)


# ---------------------------------------------------------------------------
# Scenarios
# ---------------------------------------------------------------------------


def test_two_consumers_split_partitions_and_commit(broker, make_consumer):
    """Two members split 6 partitions 3/3 and read 600 records exactly once between them;
    their commits are the log end offsets, per the consumer and per the admin client."""
    topic, group = unique_topic("grp-split"), unique_group()
    create_topic(broker, topic, partitions=6)
    a = make_consumer(group)
    b = make_consumer(group)
    a.subscribe([topic])
    b.subscribe([topic])
    cs = {"a": a, "b": b}
    poll_until(cs, lambda: split_between(a, b, 6), 30, "a balanced group")
    owned = {"a": assigned(a), "b": assigned(b)}
    assert sorted(len(v) for v in owned.values()) == [3, 3], owned

    # Produce only once the group is stable, so no record is read before a rebalance
    # (which, uncommitted, would legitimately be read twice).
    n = 600
    sent = [{"value": f"r{i}".encode(), "partition": i % 6} for i in range(n)]
    reports = produce_all(broker, topic, sent, acks="all")
    assert all(r[0] is None for r in reports)

    records: dict[str, list] = {"a": [], "b": []}
    poll_until(cs, lambda: sum(map(len, records.values())) >= n, 60, f"{n} records", records)
    # Keep polling briefly: a duplicate delivery would show up here.
    end = time.monotonic() + 1.0
    poll_until(cs, lambda: time.monotonic() >= end, 10, "quiet period", records)

    assert {"a": assigned(a), "b": assigned(b)} == owned, "the group rebalanced mid-way"
    for name, recs in records.items():
        assert {p for p, _, _ in recs} == owned[name], f"{name} read partitions it does not own"
    pairs = [(p, o) for recs in records.values() for p, o, _ in recs]
    assert len(pairs) == n and len(set(pairs)) == n, f"{len(pairs)} deliveries, {len(set(pairs))} distinct"
    assert sorted(pairs) == sorted((p, o) for p in range(6) for o in range(n // 6))
    assert sorted(v for recs in records.values() for _, _, v in recs) == sorted(m["value"] for m in sent)

    # Commit each member's positions synchronously; every partition's commit is its log end.
    for name, c in cs.items():
        done = c.commit(asynchronous=False)
        assert {(tp.partition, tp.offset) for tp in done} == {(p, n // 6) for p in owned[name]}, done
    assert {p: watermarks(broker, topic, p)[1] for p in range(6)} == {p: n // 6 for p in range(6)}
    committed = a.committed([TopicPartition(topic, p) for p in range(6)], timeout=15)
    assert [(tp.partition, tp.offset, tp.error) for tp in committed] == [(p, n // 6, None) for p in range(6)]
    assert admin_offsets(broker, group, topic) == {p: (n // 6, None) for p in range(6)}


def test_commit_with_metadata_then_resume(broker, make_consumer):
    """A commit's metadata string is stored and returned; a new member resumes at the commit."""
    topic, group = unique_topic("grp-meta"), unique_group()
    create_topic(broker, topic)
    produce_all(broker, topic, [{"value": f"v{i}".encode()} for i in range(50)], acks="all")

    c1 = make_consumer(group)
    c1.subscribe([topic])
    poll_until({"c1": c1}, lambda: assigned(c1) == {0}, 30, "c1 assigned")
    done = c1.commit(offsets=[TopicPartition(topic, 0, 42, "m1")], asynchronous=False)
    assert [(tp.partition, tp.offset, tp.error) for tp in done] == [(0, 42, None)]
    (got,) = c1.committed([TopicPartition(topic, 0)], timeout=15)
    assert (got.offset, got.metadata, got.error) == (42, "m1", None)
    assert admin_offsets(broker, group, topic, [0]) == {0: (42, "m1")}
    c1.close()

    c2 = make_consumer(group)
    c2.subscribe([topic])
    records: dict[str, list] = {}
    poll_until({"c2": c2}, lambda: len(records.get("c2", [])) >= 8, 30, "records 42..49", records)
    assert records["c2"] == [(0, o, f"v{o}".encode()) for o in range(42, 50)]


@pytest.mark.parametrize("strategy", ["range", "cooperative-sticky"])
def test_rebalance_on_join_and_leave(broker, make_consumer, strategy):
    """A alone owns all 6 partitions; B joins and they split 3/3; A closes and B owns all.
    Eager (`range`) revokes A's whole assignment when B joins and B's when A leaves;
    incremental (`cooperative-sticky`) revokes only what moves to B and nothing of B's."""
    topic, group = unique_topic("grp-rebal"), unique_group()
    create_topic(broker, topic, partitions=6)
    everything = set(range(6))
    events: dict[str, list] = {"a": [], "b": []}

    def subscribe(c, name):
        c.subscribe([topic],
                    on_assign=lambda _c, tps: events[name].append(("assign", {tp.partition for tp in tps})),
                    on_revoke=lambda _c, tps: events[name].append(("revoke", {tp.partition for tp in tps})))

    a = make_consumer(group, **{"partition.assignment.strategy": strategy})
    subscribe(a, "a")
    poll_until({"a": a}, lambda: assigned(a) == everything, 30, "a owns every partition")
    assert events["a"] == [("assign", everything)]

    b = make_consumer(group, **{"partition.assignment.strategy": strategy})
    subscribe(b, "b")
    poll_until({"a": a, "b": b}, lambda: split_between(a, b, 6), 30, "a and b split the partitions")
    pa, pb = assigned(a), assigned(b)
    assert (len(pa), len(pb)) == (3, 3), (pa, pb)
    revoked_from_a = set().union(*(s for kind, s in events["a"] if kind == "revoke"))
    if strategy == "range":
        assert revoked_from_a == everything, events["a"]
    else:
        assert revoked_from_a == pb, events["a"]  # only what moved to b
    d = describe_group(broker, group)
    assert (d.state, d.partition_assignor, len(d.members)) == (ConsumerGroupState.STABLE, strategy, 2)

    events["b"].clear()
    a.close()  # a dynamic member leaves the group on close (LeaveGroup)
    poll_until({"b": b}, lambda: assigned(b) == everything, 30, "b owns every partition after a left")
    revoked_from_b = set().union(*(s for kind, s in events["b"] if kind == "revoke"))
    assert revoked_from_b == (pb if strategy == "range" else set()), events["b"]
    d = describe_group(broker, group)
    assert (d.state, len(d.members)) == (ConsumerGroupState.STABLE, 1)
    assert d.members[0].member_id == b.memberid()
    assert {tp.partition for tp in d.members[0].assignment.topic_partitions} == everything

    # And b fetches from all of them.
    produce_all(broker, topic, [{"value": f"p{p}".encode(), "partition": p} for p in range(6)], acks="all")
    records: dict[str, list] = {}
    poll_until({"b": b}, lambda: len(records.get("b", [])) >= 6, 30, "one record per partition", records)
    assert sorted(records["b"]) == [(p, 0, f"p{p}".encode()) for p in range(6)]


def test_static_membership_fencing_and_close(broker, make_consumer):
    """A second consumer with the same group.instance.id takes over the first's membership:
    the first is fenced (librdkafka: fatal error, FENCED_INSTANCE_ID) and the second gets its
    assignment. A static member's close() sends no LeaveGroup: the member stays until its
    session times out, then the group is Empty."""
    topic, group = unique_topic("grp-static"), unique_group()
    create_topic(broker, topic, partitions=3)
    everything = {0, 1, 2}
    cb_errors: dict[str, list] = {"a": [], "b": []}  # error_cb reports (b must see no fatal one)

    def static(name):
        return make_consumer(group, **{"group.instance.id": "inst-1",
                                       "error_cb": lambda e: cb_errors[name].append(e)})

    a = static("a")
    a.subscribe([topic])
    poll_until({"a": a}, lambda: assigned(a) == everything, 30, "a owns every partition")
    a_member = a.memberid()
    d = describe_group(broker, group)
    assert [(m.member_id, m.group_instance_id) for m in d.members] == [(a_member, "inst-1")]

    b = static("b")
    b.subscribe([topic])
    # a learns of the fencing on its next heartbeat; librdkafka turns FENCED_INSTANCE_ID into
    # a fatal consumer error, surfaced by poll() as _FATAL naming the broker error.
    a_errors = []
    deadline = time.monotonic() + 30
    while not (a_errors and assigned(b) == everything):
        assert time.monotonic() < deadline, f"a errors {a_errors}, b assignment {sorted(assigned(b))}"
        m = a.poll(0.05) if not a_errors else None
        if m is not None and m.error():
            a_errors.append(m.error())
        m = b.poll(0.05)
        assert m is None or not m.error(), m.error()
    err = a_errors[0]
    assert err.code() == KafkaError._FATAL, err
    assert KafkaError(KafkaError.FENCED_INSTANCE_ID).str() in err.str(), err.str()
    with pytest.raises(KafkaException) as exc:
        a.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
    assert exc.value.args[0].code() == KafkaError._FATAL
    assert not [e for e in cb_errors["b"] if e.fatal() or e.code() == KafkaError._FATAL], cb_errors["b"]

    d = describe_group(broker, group)
    assert d.state == ConsumerGroupState.STABLE
    assert [(m.member_id, m.group_instance_id) for m in d.members] == [(b.memberid(), "inst-1")]
    assert b.memberid() != a_member
    assert {tp.partition for tp in d.members[0].assignment.topic_partitions} == everything
    a.close()

    # b closes without leaving: still a member right after, gone once its session expires.
    b.close()
    closed = time.monotonic()
    d = describe_group(broker, group)
    assert (d.state, [m.group_instance_id for m in d.members]) == (ConsumerGroupState.STABLE, ["inst-1"])
    d = wait_group_state(broker, group, ConsumerGroupState.EMPTY, timeout=SESSION_MS / 1000 + 15)
    assert d.members == []
    assert time.monotonic() - closed >= SESSION_MS / 1000 - 1.5, "the static member left before its session expired"


@pytest.mark.parametrize("returning", ["leader", "follower"])
def test_static_member_return_does_not_rebalance(broker, make_consumer, returning):
    """KIP-345: a static member's process is replaced (close, then a new consumer with the
    same group.instance.id) well within its session timeout. The coordinator swaps in the
    new member id and keeps the assignment: the returning member gets its old partitions
    back, and the other member sees no rebalance at all (no revoke, no assign callback),
    keeps its member id and partitions, and keeps consuming. Both for the group's leader
    (the consumer that created the group) and a follower coming back."""
    topic, group = unique_topic("grp-return"), unique_group()
    partitions = 4
    create_topic(broker, topic, partitions=partitions)
    everything = set(range(partitions))
    events: dict[str, list] = {}

    def static(name: str, instance: str) -> Consumer:
        # A long session: the old member must still be in the group when its successor joins.
        c = make_consumer(group, **{"group.instance.id": instance, "session.timeout.ms": 30000,
                                    "partition.assignment.strategy": "range"})
        events[name] = []
        c.subscribe([topic],
                    on_assign=lambda _c, tps: events[name].append(("assign", {tp.partition for tp in tps})),
                    on_revoke=lambda _c, tps: events[name].append(("revoke", {tp.partition for tp in tps})))
        return c

    a = static("a", "inst-a")
    poll_until({"a": a}, lambda: assigned(a) == everything, 30, "a owns every partition")
    b = static("b", "inst-b")
    poll_until({"a": a, "b": b}, lambda: split_between(a, b, partitions), 30, "a and b split the partitions")
    # a created the group, so it leads; its rejoin in b's rebalance keeps it the leader.
    consumers = {"a": a, "b": b}
    gone, other = ("a", "b") if returning == "leader" else ("b", "a")
    instance = f"inst-{gone}"
    kept, others = assigned(consumers[gone]), assigned(consumers[other])
    other_member = consumers[other].memberid()

    def consumed(records, name, tag) -> set[int]:
        return {p for p, _o, v in records.get(name, []) if v == f"{tag}-{p}".encode()}

    # Both consume before the swap.
    records: dict[str, list] = {}
    produce_all(broker, topic, [{"value": f"before-{p}".encode(), "partition": p} for p in everything], acks="all")
    poll_until(consumers, lambda: consumed(records, gone, "before") == kept
               and consumed(records, other, "before") == others, 30, "both consume", records)
    other_events = list(events[other])

    consumers[gone].close()  # static: no LeaveGroup, the member stays for its session
    new = static("new", instance)
    consumers = {other: consumers[other], "new": new}
    poll_until(consumers, lambda: assigned(new) == kept, 30, "the returning member gets its partitions back", records)
    produce_all(broker, topic, [{"value": f"after-{p}".encode(), "partition": p} for p in everything], acks="all")
    poll_until(consumers, lambda: consumed(records, "new", "after") == kept
               and consumed(records, other, "after") == others, 30, "both consume after the return", records)

    assert events[other] == other_events, f"the other member saw a rebalance: {events[other][len(other_events):]}"
    assert events["new"] == [("assign", kept)], events["new"]
    assert assigned(consumers[other]) == others
    assert consumers[other].memberid() == other_member
    assert {p for p, _o, _v in records[other]} <= others, "the other member read partitions it does not own"
    d = describe_group(broker, group)
    assert d.state == ConsumerGroupState.STABLE
    got = {m.group_instance_id: (m.member_id, {tp.partition for tp in m.assignment.topic_partitions})
           for m in d.members}
    assert got == {instance: (new.memberid(), kept), f"inst-{other}": (other_member, others)}, got


def test_admin_list_describe_delete_group(broker, make_consumer):
    """ListGroups / DescribeGroups / DeleteGroups through a group's life: Stable with a
    member, Empty after it closed, gone (Dead) after deletion, offsets deleted with it."""
    topic, group = unique_topic("grp-admin"), unique_group()
    create_topic(broker, topic, partitions=2)
    produce_all(broker, topic, [{"value": b"x", "partition": i % 2} for i in range(20)], acks="all")
    c = make_consumer(group, **{"client.id": "groups-admin", "partition.assignment.strategy": "range"})
    c.subscribe([topic])
    records: dict[str, list] = {}
    poll_until({"c": c}, lambda: len(records.get("c", [])) >= 20, 30, "20 records", records)
    c.commit(asynchronous=False)

    listing = listed_groups(broker)
    assert group in listing, sorted(listing)
    g = listing[group]
    assert (g.state, g.type, g.is_simple_consumer_group) == (ConsumerGroupState.STABLE, ConsumerGroupType.CLASSIC,
                                                              False)
    assert group in listed_groups(broker, states=[ConsumerGroupState.STABLE])
    assert group not in listed_groups(broker, states=[ConsumerGroupState.EMPTY])

    d = describe_group(broker, group)
    assert (d.group_id, d.state, d.partition_assignor, d.is_simple_consumer_group) == (
        group, ConsumerGroupState.STABLE, "range", False)
    brokers = {n.id for n in admin(broker).describe_cluster(request_timeout=15).result(timeout=30).nodes}
    assert d.coordinator is not None and d.coordinator.id in brokers
    assert d.coordinator.id == find_coordinator(broker, group)[0]
    (m,) = d.members
    assert (m.member_id, m.client_id, m.host, m.group_instance_id) == (c.memberid(), "groups-admin", "/127.0.0.1",
                                                                        None)
    assert sorted((tp.topic, tp.partition) for tp in m.assignment.topic_partitions) == [(topic, 0), (topic, 1)]

    # A group with a member cannot be deleted.
    err = future_error(admin(broker).delete_consumer_groups([group], request_timeout=15)[group])
    assert err is not None and err.code() == NON_EMPTY_GROUP, err
    assert admin_offsets(broker, group, topic) == {0: (10, None), 1: (10, None)}

    c.close()  # LeaveGroup: the group is Empty at once
    listing = listed_groups(broker)
    assert listing[group].state == ConsumerGroupState.EMPTY
    assert group in listed_groups(broker, states=[ConsumerGroupState.EMPTY])
    d = describe_group(broker, group)
    assert (d.state, d.members) == (ConsumerGroupState.EMPTY, [])

    assert future_error(admin(broker).delete_consumer_groups([group], request_timeout=15)[group]) is None
    assert group not in listed_groups(broker)
    assert admin_offsets(broker, group) == {}  # all offsets: none
    assert admin_offsets(broker, group, topic, [0, 1]) == {0: (NO_OFFSET, None), 1: (NO_OFFSET, None)}
    d = describe_group(broker, group)
    assert (d.state, d.members) == (ConsumerGroupState.DEAD, [])
    err = future_error(admin(broker).delete_consumer_groups([group], request_timeout=15)[group])
    assert err is not None and err.code() == GROUP_ID_NOT_FOUND, err


def test_admin_alter_and_delete_offsets(broker, make_consumer):
    """AlterConsumerGroupOffsets and OffsetDelete are refused while a member consumes the
    topic and work once the group is empty; a new member resumes from what is left."""
    from kafka import TopicPartition as KTP
    from kafka.admin import KafkaAdminClient
    from kafka.errors import GroupSubscribedToTopicError, NoError, UnknownTopicOrPartitionError

    topic, group = unique_topic("grp-alter"), unique_group()
    create_topic(broker, topic, partitions=2)
    produce_all(broker, topic, [{"value": f"v{i // 2}".encode(), "partition": i % 2} for i in range(20)], acks="all")
    c = make_consumer(group)
    c.subscribe([topic])
    records: dict[str, list] = {}
    poll_until({"c": c}, lambda: len(records.get("c", [])) >= 20, 30, "20 records", records)
    c.commit(asynchronous=False)

    # confluent-kafka has no OffsetDelete; kafka-python's admin client does.
    ka = KafkaAdminClient(bootstrap_servers=str(broker), request_timeout_ms=15000)
    try:
        # While c is a member: the admin commit (generation -1, no member id) is refused per
        # partition, and OffsetDelete of a subscribed topic is too.
        res = admin(broker).alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])], request_timeout=15)[group]
        (tp,) = res.result(timeout=30).topic_partitions
        assert tp.error is not None and tp.error.code() == UNKNOWN_MEMBER_ID, tp
        assert ka.delete_group_offsets(group, [KTP(topic, 0)]) == {KTP(topic, 0): GroupSubscribedToTopicError}
        assert admin_offsets(broker, group, topic) == {0: (10, None), 1: (10, None)}

        c.close()
        wait_group_state(broker, group, ConsumerGroupState.EMPTY)
        res = admin(broker).alter_consumer_group_offsets(
            [ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0, 3)])], request_timeout=15)[group]
        assert [(tp.partition, tp.offset, tp.error) for tp in res.result(timeout=30).topic_partitions] == [(0, 3, None)]
        assert ka.delete_group_offsets(group, [KTP(topic, 1)]) == {KTP(topic, 1): NoError}
        missing = unique_topic("grp-alter-missing")
        assert ka.delete_group_offsets(group, [KTP(missing, 0)]) == {KTP(missing, 0): UnknownTopicOrPartitionError}
    finally:
        ka.close()
    assert admin_offsets(broker, group, topic) == {0: (3, None)}
    assert admin_offsets(broker, group, topic, [0, 1]) == {0: (3, None), 1: (NO_OFFSET, None)}

    # A new member resumes partition 0 at the altered offset and partition 1 from the start.
    c2 = make_consumer(group)
    c2.subscribe([topic])
    records = {}
    poll_until({"c2": c2}, lambda: len(records.get("c2", [])) >= 17, 30, "17 records", records)
    end = time.monotonic() + 0.5
    poll_until({"c2": c2}, lambda: time.monotonic() >= end, 10, "quiet period", records)
    assert sorted((p, o) for p, o, _ in records["c2"]) == [(0, o) for o in range(3, 10)] + [(1, o) for o in range(10)]


def test_raw_coordinator_requests(broker):
    """Coordinator APIs on the wire: FindCoordinator names a listed broker; OffsetFetch of an
    unknown group is offset -1 without error; a raw member joins (MEMBER_ID_REQUIRED first),
    syncs, heartbeats, commits and leaves; stale or unknown members get the exact errors."""
    topic, group = unique_topic("grp-raw"), unique_group("raw")
    create_topic(broker, topic, partitions=2)

    node, coordinator = find_coordinator(broker, group)
    with kwire.Conn(str(broker)) as c:
        md = kwire.parse_metadata_v4(c.request(kwire.METADATA, 4, kwire.metadata_v4_body([]))[1])
    assert (node, coordinator) in {(b[0], f"{b[1]}:{b[2]}") for b in md["brokers"]}, (node, coordinator, md)

    with kwire.Conn(coordinator) as c:
        def call(api, version, body, parse):
            res = c.request(api, version, body)
            assert res is not None, f"connection closed on api {api} v{version}"
            return parse(res[1])

        def heartbeat(generation, member):
            return call(kwire.HEARTBEAT, 3, kwire.heartbeat_v3_body(group, generation, member),
                        kwire.parse_heartbeat_v3)

        def commit(generation, member, offsets):
            return call(kwire.OFFSET_COMMIT, 7, kwire.offset_commit_v7_body(group, generation, member, offsets),
                        kwire.parse_offset_commit_v7)

        def fetch(partitions):
            return call(kwire.OFFSET_FETCH, 3, kwire.offset_fetch_v3_body(group, partitions),
                        kwire.parse_offset_fetch_v3)

        # The group does not exist yet.
        assert fetch({topic: [0, 1]}) == {"error": 0, "partitions": {
            (topic, 0): {"offset": -1, "metadata": "", "error": 0},
            (topic, 1): {"offset": -1, "metadata": "", "error": 0}}}
        assert fetch(None) == {"error": 0, "partitions": {}}
        assert heartbeat(1, "nobody") == UNKNOWN_MEMBER_ID

        # Join: a first JoinGroup without a member id (v4+) is answered MEMBER_ID_REQUIRED with
        # the id to use; joining again with it completes the join, with us as the leader.
        protocols = [("range", kwire.consumer_subscription_v0([topic]))]
        j = call(kwire.JOIN_GROUP, 5, kwire.join_group_v5_body(group, "", protocols), kwire.parse_join_group_v5)
        assert (j["error"], j["generation_id"], j["members"]) == (MEMBER_ID_REQUIRED, -1, [])
        member = j["member_id"]
        assert member
        j = call(kwire.JOIN_GROUP, 5, kwire.join_group_v5_body(group, member, protocols), kwire.parse_join_group_v5)
        assert (j["error"], j["generation_id"], j["protocol_name"], j["leader"], j["member_id"]) == (
            0, 1, "range", member, member)
        assert j["members"] == [{"member_id": member, "group_instance_id": None, "metadata": protocols[0][1]}]
        gen = j["generation_id"]

        assert heartbeat(gen, "nobody") == UNKNOWN_MEMBER_ID
        assert heartbeat(gen + 1, member) == ILLEGAL_GENERATION
        # Between JoinGroup and SyncGroup (CompletingRebalance) heartbeats are fine, commits are not.
        assert heartbeat(gen, member) == 0
        assert commit(gen, member, {(topic, 0): (5, None)}) == {(topic, 0): REBALANCE_IN_PROGRESS}

        sync_err = call(kwire.SYNC_GROUP, 3, kwire.sync_group_v3_body(group, gen + 1, member, []),
                        kwire.parse_sync_group_v3)
        assert sync_err["error"] == ILLEGAL_GENERATION
        assignment = kwire.consumer_assignment_v0({topic: [0, 1]})
        s = call(kwire.SYNC_GROUP, 3, kwire.sync_group_v3_body(group, gen, member, [(member, assignment)]),
                 kwire.parse_sync_group_v3)
        assert s == {"error": 0, "assignment": assignment}
        assert heartbeat(gen, member) == 0

        # Commits from the member; from strangers, stale generations and non-members (-1) refused.
        assert commit(gen, member, {(topic, 0): (7, "meta-7"), (topic, 1): (3, None)}) == {(topic, 0): 0, (topic, 1): 0}
        assert commit(gen, "nobody", {(topic, 0): (9, "")}) == {(topic, 0): UNKNOWN_MEMBER_ID}
        assert commit(gen + 1, member, {(topic, 0): (9, "")}) == {(topic, 0): ILLEGAL_GENERATION}
        assert commit(-1, "", {(topic, 0): (9, "")}) == {(topic, 0): UNKNOWN_MEMBER_ID}
        committed = {(topic, 0): {"offset": 7, "metadata": "meta-7", "error": 0},
                     (topic, 1): {"offset": 3, "metadata": "", "error": 0}}  # null metadata reads back as ""
        assert fetch({topic: [0, 1]}) == {"error": 0, "partitions": committed}
        assert fetch(None) == {"error": 0, "partitions": committed}

        # LeaveGroup: per-member results; afterwards the member is unknown and the (now Empty)
        # group takes commits from non-members only.
        lv = call(kwire.LEAVE_GROUP, 3, kwire.leave_group_v3_body(group, [("nobody", None)]),
                  kwire.parse_leave_group_v3)
        assert lv == {"error": 0, "members": [{"member_id": "nobody", "group_instance_id": None,
                                               "error": UNKNOWN_MEMBER_ID}]}
        lv = call(kwire.LEAVE_GROUP, 3, kwire.leave_group_v3_body(group, [(member, None)]),
                  kwire.parse_leave_group_v3)
        assert lv == {"error": 0, "members": [{"member_id": member, "group_instance_id": None, "error": 0}]}
        assert heartbeat(gen, member) == UNKNOWN_MEMBER_ID
        assert commit(gen, member, {(topic, 0): (12, "")}) == {(topic, 0): UNKNOWN_MEMBER_ID}
        assert commit(-1, "", {(topic, 0): (11, "s")}) == {(topic, 0): 0}
        assert fetch({topic: [0]})["partitions"] == {(topic, 0): {"offset": 11, "metadata": "s", "error": 0}}
    d = describe_group(broker, group)
    assert (d.state, d.members) == (ConsumerGroupState.EMPTY, [])


def test_kafka_python_group_consumer(broker):
    """kafka-python's KafkaConsumer(group_id=...) gets all 3 partitions, reads everything,
    commits; a successor in the group reads only what was produced after the commit."""
    from kafka import KafkaConsumer, TopicPartition as KTP

    topic, group = unique_topic("grp-kp"), unique_group("kp")
    create_topic(broker, topic, partitions=3)
    produce_all(broker, topic, [{"value": f"v{i}".encode(), "partition": i % 3} for i in range(30)], acks="all")

    def group_member():
        return KafkaConsumer(topic, bootstrap_servers=str(broker), group_id=group, auto_offset_reset="earliest",
                             enable_auto_commit=False, session_timeout_ms=SESSION_MS,
                             heartbeat_interval_ms=HEARTBEAT_MS, request_timeout_ms=15000, fetch_max_wait_ms=100)

    def read(c, n, timeout=30.0):
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for batch in c.poll(timeout_ms=200).values():
                out.extend((r.partition, r.offset, r.value) for r in batch)
        return out

    c = group_member()
    try:
        recs = read(c, 30)
        assert sorted(recs) == sorted((i % 3, i // 3, f"v{i}".encode()) for i in range(30))
        assert c.assignment() == {KTP(topic, p) for p in range(3)}
        c.commit()
        assert {p: c.committed(KTP(topic, p)) for p in range(3)} == {0: 10, 1: 10, 2: 10}
    finally:
        c.close()
    assert admin_offsets(broker, group, topic) == {p: (10, None) for p in range(3)}

    produce_all(broker, topic, [{"value": f"late{p}".encode(), "partition": p} for p in range(3)], acks="all")
    c = group_member()
    try:
        recs = read(c, 3)
        extra = read(c, 1, timeout=1.0)  # nothing before the commit is delivered again
    finally:
        c.close()
    assert sorted(recs) == [(p, 10, f"late{p}".encode()) for p in range(3)]
    assert extra == []


# ---------------------------------------------------------------------------
# Offset retention (offsets.retention.minutes)
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind", [pytest.param("kafka", marks=pytest.mark.oracle_only),
                                  pytest.param("chronik", marks=pytest.mark.chronik)])
@pytest.mark.timeout(240)
def test_offsets_of_an_empty_group_expire_after_retention(request, kind):
    """With a one-minute offsets retention, an empty group's committed offsets are gone
    soon after the minute passes, and the group with them; an active group keeps its own."""
    if os.environ.get("CHRONIK_TEST_BROKERS", "1") != "1":
        pytest.skip("one-broker scenario with its own brokers; it runs in the one-broker pass")
    if kind == "kafka":
        b = request.getfixturevalue("kafka_factory")(**{"offsets.retention.minutes": "1",
                                                         "offsets.retention.check.interval.ms": "1000"})
    else:
        b = request.getfixturevalue("chronik_factory")(offsets_retention_minutes=1,
                                                        offsets_retention_check_interval_ms=1000)
    bs = b.bootstrap
    topic = unique_topic("ret")
    create_topic(bs, topic, partitions=1)
    produce_all(bs, topic, [{"value": b"x", "partition": 0}])
    gone, kept = unique_topic("gone"), unique_topic("kept")
    for g in (gone, kept):
        c = Consumer({"bootstrap.servers": bs, "group.id": g, "enable.auto.commit": False})
        c.commit(offsets=[TopicPartition(topic, 0, 1)], asynchronous=False)
        c.close()
    # `kept` stays active, so its offsets must not expire.
    active = Consumer({"bootstrap.servers": bs, "group.id": kept, "auto.offset.reset": "earliest",
                       "enable.auto.commit": False, "session.timeout.ms": 10000})
    active.subscribe([topic])
    deadline = time.monotonic() + 150
    expired_at = None
    try:
        while time.monotonic() < deadline:
            active.poll(0.5)
            reader = Consumer({"bootstrap.servers": bs, "group.id": gone, "enable.auto.commit": False})
            got = reader.committed([TopicPartition(topic, 0)], timeout=10)[0].offset
            reader.close()
            if got < 0:
                expired_at = time.monotonic()
                break
            time.sleep(2)
        assert expired_at is not None, "the empty group's offset never expired"
        listed = {g.group_id for g in admin(bs).list_consumer_groups().result(timeout=15).valid}
        assert gone not in listed, f"{gone} still listed after its offsets expired"
        assert active.committed([TopicPartition(topic, 0)], timeout=10)[0].offset == 1, \
            "an active group's offset expired"
    finally:
        active.close()
