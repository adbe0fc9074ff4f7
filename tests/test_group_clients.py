"""Consumer groups with real client programs, against Apache Kafka and Chronik alike.

The group-consume programs (one per client library, same interface):

  client            program
  java              tests/clients/java  GroupConsume (kafka-clients 4.1.1, in client-check.jar:
                    java -cp client-check.jar chronik.clientcheck.GroupConsume ...)
  franz-go          tests/clients/go    client-check group-consume ...
  kafkajs           tests/clients/js/group_consume.js
  confluent-kafka   tests/clients/python/group_consume.py --client confluent-kafka (librdkafka)
  kafka-python      tests/clients/python/group_consume.py --client kafka-python

  --bootstrap H:P[,H:P] --topic T --group G --out FILE [--max-seconds S] [--idle-exit-ms N]
  [--assignor range|cooperative-sticky] [--instance-id ID] [--session-timeout-ms N]
  [--heartbeat-interval-ms N] [--max-poll-records N]
  Java only: [--group-protocol classic|consumer] [--commit-delay-ms N (sleep between
  processing a batch and committing it)]

Each subscribes to T in group G (classic protocol, auto.offset.reset=earliest, no
auto-commit), appends "partition offset value" to FILE for every record it processes
(written before the batch's commit), commits the batch's next offsets synchronously
after each poll batch, and logs "epoch_ms event partitions [detail]" lines to
FILE.rebalance (events: start, assigned, revoked, lost, commit-failed n=<records in the
batch>, client-error, error, closing, exit). It exits 0, after closing the consumer
(a dynamic member leaves the group), on SIGTERM, when idle for --idle-exit-ms after
having consumed something, or at --max-seconds; 2 when the consumer fails (the JSON
summary on stdout names the exception); 1 on bad arguments. kafkajs has no cooperative
protocol and no static membership; the program brings a "range" assignor (Java's
algorithm and protocol name) since kafkajs only has its own round robin.

Tests
  test_group_churn          12 partitions, 30k records produced at a steady rate (confluent-kafka,
                            idempotent, acks=all) while 3 Java + 3 librdkafka members consume;
                            a Java member is killed -9 mid-way, later a new Java member joins.
                            Every record is processed, duplicates are bounded by what the
                            commits show was processed-but-uncommitted, the committed offsets
                            are the log end offsets, and every rebalance completed.
  test_group_consumers_other_clients
                            franz-go, kafkajs and kafka-python each consume a 3-partition topic
                            in a group, commit the log end, leave; a second run resumes there.
  test_static_leader_return_does_not_rebalance
                            KIP-345: a static group leader's process is replaced within its session
                            (Java: JoinGroup v9 with skipAssignment; librdkafka: v5); it gets its
                            partitions back and the other member sees no rebalance.
  test_java_consumer_protocol_is_refused_like_kafka
                            KIP-848: the Java consumer with group.protocol=consumer must fail
                            on Chronik exactly as on Apache Kafka 4.1 with
                            group.coordinator.rebalance.protocols=classic.

Every wait is bounded. Group timings: session 6 s (the broker minimum), heartbeat 1 s.
The client programs are built on demand by the fixtures of test_clients.py (Java jar,
Go binary) and test_kafkajs.py (npm ci); tests/setup.sh builds them too.
"""

from __future__ import annotations

import signal
import sys
import time
from collections import Counter, defaultdict
from pathlib import Path

import pytest
from confluent_kafka import ConsumerGroupState, ConsumerGroupTopicPartitions, TopicPartition

import kwire
from ackcheck import AckLog, ProducerThread
from harness import ManagedProcess, java_bin, json_summary, wait_until
from kclient import admin, create_topic, produce_all, unique_topic, watermarks
from test_clients import go_bin, java_jar  # noqa: F401 - fixtures: build the Java jar / Go binary on demand
from test_kafkajs import node_bin  # noqa: F401 - fixture: npm ci for tests/clients/js

TESTS_DIR = Path(__file__).resolve().parent
CLIENTS_DIR = TESTS_DIR / "clients"
PY_GROUP = CLIENTS_DIR / "python" / "group_consume.py"
JS_GROUP = CLIENTS_DIR / "js" / "group_consume.js"
JAVA_MAIN = "chronik.clientcheck.GroupConsume"

SESSION_MS = 6000
HEARTBEAT_MS = 1000
MAX_POLL_RECORDS = 500

# What the Java client 4.1.1 reports (to the application, from poll()) when the broker
# does not support the KIP-848 consumer group protocol. Observed on Apache Kafka 4.1.1
# with group.coordinator.rebalance.protocols=classic.
UNSUPPORTED_VERSION_CLASS = "org.apache.kafka.common.errors.UnsupportedVersionException"
CONSUMER_PROTOCOL_REFUSED = ("The cluster does not support the new CONSUMER group protocol. Set group.protocol=classic "
                             "on the consumer configs to revert to the CLASSIC protocol until the cluster is upgraded.")
CONSUMER_GROUP_HEARTBEAT = 68  # api key


# ---------------------------------------------------------------------------
# A group-consume program run
# ---------------------------------------------------------------------------


class GroupMember(ManagedProcess):
    """One group-consume program; stdout and stderr go to <out_dir>/<name>.log."""

    def __init__(self, name: str, client: str, cmd: list[str], bootstrap: str, topic: str, group: str,
                 out_dir: Path, max_seconds: float = 150, session_ms: int = SESSION_MS, extra: tuple = ()) -> None:
        super().__init__()
        self.name, self.client = name, client
        self.out = out_dir / f"{name}.records"
        self.log = out_dir / f"{name}.log"
        self.argv = cmd + ["--bootstrap", str(bootstrap), "--topic", topic, "--group", group, "--out", str(self.out),
                           "--max-seconds", str(max_seconds), "--session-timeout-ms", str(session_ms),
                           "--heartbeat-interval-ms", str(HEARTBEAT_MS), *extra]
        if client != "kafkajs":
            self.argv += ["--max-poll-records", str(MAX_POLL_RECORDS)]
        self.rc: int | None = None
        self.started_at: float | None = None

    def start(self) -> "GroupMember":
        self.started_at = time.time()
        self._spawn(self.argv, cwd=TESTS_DIR, log_path=self.log)
        return self

    @property
    def client_id(self) -> str:
        """The client.id the program sets (its pid is the Popen pid: each program execs directly)."""
        prefix = {"java": "java", "confluent-kafka": "confluent", "kafka-python": "kafka-python",
                  "franz-go": "franz-go", "kafkajs": "kafkajs"}[self.client]
        return f"group-consume-{prefix}-{self.pid}"

    def kill9(self) -> None:
        super().kill9()
        self.rc = -9

    def stop(self, timeout: float = 30.0) -> int | None:
        self.rc = super().stop(timeout)
        return self.rc

    def wait(self, timeout: float) -> int | None:
        """Wait (bounded) for the program to exit by itself; kill it on timeout."""
        try:
            self.proc.wait(timeout=timeout)
        except Exception:  # noqa: BLE001 - subprocess.TimeoutExpired
            self._hard_kill()
            raise AssertionError(f"{self.name} did not exit within {timeout}s\n{self.log_tail(30)}")
        self.rc = self._reap()
        return self.rc

    def log_tail(self, n: int = 40) -> str:
        from harness import tail

        return tail(self.log, n)

    def summary(self) -> dict | None:
        return json_summary(self.log)

    def records(self) -> tuple[list[tuple[int, int, str]], int]:
        """([(partition, offset, value)], malformed lines). A kill -9 can cut the last line."""
        out, bad = [], 0
        if not self.out.exists():
            return out, bad
        for line in self.out.read_text(errors="replace").splitlines():
            parts = line.split(" ", 2)
            try:
                out.append((int(parts[0]), int(parts[1]), parts[2]))
            except (IndexError, ValueError):
                bad += 1
        return out, bad

    def events(self) -> list[tuple[int, str, set[int], str]]:
        """[(epoch_ms, event, partitions, detail)] from FILE.rebalance."""
        path = Path(str(self.out) + ".rebalance")
        out = []
        if not path.exists():
            return out
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            if len(parts) < 3 or not parts[0].isdigit():
                continue
            ps = set() if parts[2] == "-" else {int(p) for p in parts[2].split(",") if p.isdigit()}
            out.append((int(parts[0]), parts[1], ps, parts[3] if len(parts) > 3 else ""))
        return out

    def assignment(self) -> set[int]:
        """The current assignment replayed from the rebalance log (revoked/lost, then assigned:
        works for eager and incremental protocols alike)."""
        cur: set[int] = set()
        for _, ev, ps, _ in self.events():
            if ev in ("revoked", "lost"):
                cur -= ps
            elif ev == "assigned":
                cur |= ps
        return cur

    def assigned_count(self) -> int:
        return sum(1 for _, ev, _, _ in self.events() if ev == "assigned")

    def commit_failures(self) -> list[tuple[set[int], int, str]]:
        """[(partitions, records in the batch, detail)] of every refused commit."""
        out = []
        for _, ev, ps, detail in self.events():
            if ev == "commit-failed":
                n = int(detail.split()[0][2:]) if detail.startswith("n=") else MAX_POLL_RECORDS
                out.append((ps, n, detail))
        return out

    def describe(self) -> str:
        return f"{self.name} ({self.client}, pid {self.pid}, rc {self.rc}): {self.summary()}"


@pytest.fixture
def members(request, tmp_path):
    """members(name, client, bootstrap, topic, group, **kw) -> started GroupMember. Every member
    still running at teardown is killed; on failure their log tails are printed."""
    made: list[GroupMember] = []

    def cmd(client: str) -> list[str]:
        if client == "java":
            jar = request.getfixturevalue("java_jar")
            return [java_bin(), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", str(jar), JAVA_MAIN]
        if client == "franz-go":
            return [str(request.getfixturevalue("go_bin")), "group-consume"]
        if client == "kafkajs":
            return [request.getfixturevalue("node_bin"), str(JS_GROUP)]
        if client in ("confluent-kafka", "kafka-python"):
            return [sys.executable, str(PY_GROUP), "--client", client]
        raise ValueError(client)

    def make(name: str, client: str, bootstrap, topic: str, group: str, **kw) -> GroupMember:
        m = GroupMember(name, client, cmd(client), bootstrap, topic, group, tmp_path, **kw)
        made.append(m)
        return m.start()

    make.made = made
    yield make
    for m in made:
        if m.running:
            m._hard_kill()
    # Shown by pytest with the report of a failing test ("Captured stdout teardown").
    for m in made:
        print(f"--- {m.describe()}\n{m.log_tail(25)}")


# ---------------------------------------------------------------------------
# Group helpers (confluent-kafka AdminClient)
# ---------------------------------------------------------------------------


def committed_offsets(broker, group: str, topic: str, partitions: int) -> dict[int, int]:
    """{partition: committed offset} per OffsetFetch (list_consumer_group_offsets); -1001 = none."""
    req = [TopicPartition(topic, p) for p in range(partitions)]
    res = admin(broker).list_consumer_group_offsets(
        [ConsumerGroupTopicPartitions(group, req)], request_timeout=15)[group].result(timeout=30)
    out = {}
    for tp in res.topic_partitions:
        assert tp.error is None, f"offset fetch {tp}: {tp.error}"
        out[tp.partition] = tp.offset
    return out


def log_end_offsets(broker, topic: str, partitions: int) -> dict[int, int]:
    return {p: watermarks(str(broker), topic, p)[1] for p in range(partitions)}


def wait_committed_at_end(broker, group: str, topic: str, partitions: int, timeout: float) -> dict[int, int]:
    """Wait until the group's committed offset of every partition is its log end offset."""
    ends = log_end_offsets(broker, topic, partitions)
    last: dict = {}

    def done():
        nonlocal last
        last = committed_offsets(broker, group, topic, partitions)
        return last == ends

    try:
        wait_until(done, timeout, interval=0.5, what="committed offsets == log end offsets")
    except TimeoutError:
        raise AssertionError(f"after {timeout}s the committed offsets are {last}, the log end offsets {ends}")
    return ends


def group_report(broker, group: str, topic: str, partitions: int) -> str:
    """Committed offsets, log end offsets and group state, for failure messages."""
    try:
        d = describe_group(broker, group)
        return (f"committed {committed_offsets(broker, group, topic, partitions)}, log end "
                f"{log_end_offsets(broker, topic, partitions)}, group {d.state} with {len(d.members)} members")
    except Exception as e:  # noqa: BLE001 - only decorates a failure
        return f"(group report failed: {e!r})"


def describe_group(broker, group: str):
    return admin(broker).describe_consumer_groups([group], request_timeout=15)[group].result(timeout=30)


def wait_group_empty(broker, group: str, timeout: float) -> None:
    """Wait until DescribeGroups says Empty, without members."""
    last = None

    def empty():
        nonlocal last
        last = describe_group(broker, group)
        return last.state == ConsumerGroupState.EMPTY and not last.members

    try:
        wait_until(empty, timeout, interval=0.2, what="an Empty group")
    except TimeoutError:
        raise AssertionError(f"group {group} is {last and last.state} with {last and len(last.members)} members "
                             f"after {timeout}s, expected Empty")


def group_assignments(broker, group: str):
    """(state, {client_id: set(partitions)}) per DescribeGroups."""
    d = describe_group(broker, group)
    return d.state, {m.client_id: {tp.partition for tp in m.assignment.topic_partitions} for m in d.members}


def wait_group_settled(broker, group: str, live: list[GroupMember], partitions: int, timeout: float,
                       what: str) -> dict[str, set[int]]:
    """Wait until the group is Stable with exactly the live members, their assignments are
    disjoint, non-empty and cover every partition, and each member's own rebalance log agrees
    with what the coordinator says it owns (so its rebalance callbacks have run)."""
    last = None

    def settled():
        nonlocal last
        state, by_client = group_assignments(broker, group)
        mine = {m.client_id: m.assignment() for m in live}
        last = (state, by_client, mine)
        if state != ConsumerGroupState.STABLE or set(by_client) != set(mine):
            return False
        owned = [p for ps in by_client.values() for p in ps]
        return (len(owned) == len(set(owned)) and set(owned) == set(range(partitions))
                and all(by_client.values()) and by_client == mine)

    for m in live:
        assert m.running, f"{m.describe()} exited while waiting for {what}\n{m.log_tail(30)}"
    try:
        wait_until(settled, timeout, interval=0.5, what=what)
    except TimeoutError:
        state, by_client, mine = last or (None, None, None)
        raise AssertionError(f"{what}: not settled after {timeout}s: group state {state}, coordinator's "
                             f"assignment {by_client}, members' own view {mine}")
    return last[1]


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------

CHURN_PARTITIONS = 12
CHURN_RECORDS = 30_000
CHURN_RATE = 1_200  # records/s: ~25 s of production


def test_group_churn(broker, members):
    """3 Java + 3 librdkafka members share 12 partitions while 30k records arrive; a Java member
    (committing each batch 300 ms after processing it) is killed -9 at ~30% of production, a new
    Java member joins at ~60%. Every produced record is processed at least once, at the position
    it was acked at; duplicates are at most the records processed but not committed (refused
    commits + the killed member's last poll batch) and occur only where a partition changed hands
    or a commit was refused; the committed offsets end at the log end offsets; every rebalance
    completed: after the last membership change each live member got a new assignment and the
    coordinator's assignment is the members' own, covering all 12."""
    topic, group = unique_topic("gcc-churn"), f"gcc-churn-{unique_topic('g')}"
    P = CHURN_PARTITIONS
    create_topic(broker, topic, partitions=P)

    names = [("java-1", "java"), ("rdk-1", "confluent-kafka"), ("java-2", "java"), ("rdk-2", "confluent-kafka"),
             ("java-3", "java"), ("rdk-3", "confluent-kafka")]
    # java-1, the one to be killed, "processes" each batch for 300 ms before committing it, so
    # the kill most likely leaves a processed-but-uncommitted batch behind (duplicates to count).
    live = [members(name, client, broker, topic, group,
                    extra=("--commit-delay-ms", "300") if name == "java-1" else ())
            for name, client in names]
    t0 = time.monotonic()
    wait_group_settled(broker, group, live, P, 120, "6 members settled")
    print(f"[churn] 6 members settled after {time.monotonic() - t0:.1f}s")

    acks = AckLog()
    prod = ProducerThread(str(broker), topic, partitions=range(P), acks=acks, rate=CHURN_RATE,
                          max_messages=CHURN_RECORDS, max_seconds=120).start()
    try:
        wait_until(lambda: acks.count() >= CHURN_RECORDS * 0.3 or not prod.is_alive(), 60,
                   what="30% of the records acked")
        victim = live.pop(0)  # java-1
        victim.kill9()
        killed_at = time.time()
        print(f"[churn] killed {victim.name} at {acks.count()} acks")
        wait_group_settled(broker, group, live, P, SESSION_MS / 1000 + 60,
                           f"5 members settled after {victim.name} died")
        print(f"[churn] rebalanced {time.time() - killed_at:.1f}s after the kill")

        wait_until(lambda: acks.count() >= CHURN_RECORDS * 0.6 or not prod.is_alive(), 60,
                   what="60% of the records acked")
        before_join = {m.name: m.assigned_count() for m in live}
        newcomer = members("java-4", "java", broker, topic, group)
        live.append(newcomer)
        print(f"[churn] started {newcomer.name} at {acks.count()} acks")
        final = wait_group_settled(broker, group, live, P, 90, f"6 members settled after {newcomer.name} joined")

        wait_until(lambda: prod.produced >= CHURN_RECORDS or not prod.is_alive(), 120, what="all records produced")
    except BaseException:
        prod.abandon()
        raise
    prod.stop()
    assert prod.produced == CHURN_RECORDS and not acks.failed, (prod.produced, acks.failed[:5])
    assert acks.count() == CHURN_RECORDS and not acks.conflicts, (acks.count(), acks.conflicts[:5])

    # Consumers drain; their commits reach every partition's log end.
    ends = wait_committed_at_end(broker, group, topic, P, 90)
    assert sum(ends.values()) == CHURN_RECORDS, ends
    # Still settled, with the assignment made when the newcomer joined.
    assert wait_group_settled(broker, group, live, P, 30, "6 members still settled") == final
    for m in live:
        if m is not newcomer:
            assert m.assigned_count() > before_join[m.name], (
                f"{m.name} got no assignment after {newcomer.name} joined:\n{m.events()}")

    for m in live:
        m._signal_group(signal.SIGTERM)  # all at once: each commits nothing more and leaves
    for m in live:
        m.wait(45)
    for m in live:
        s = m.summary() or {}
        assert m.rc == 0 and s.get("exit") == "sigterm" and s.get("error_class") is None, (
            f"{m.describe()}\n{m.log_tail(30)}")
    # Leaving commits nothing: the offsets stay at the log end; the group is empty.
    assert committed_offsets(broker, group, topic, P) == ends
    wait_group_empty(broker, group, 15)

    # ---- what was processed ----------------------------------------------------------------
    everyone = [victim] + live
    acked = dict(acks.acked)  # (partition, offset) -> value bytes
    acked_values = set(acked.values()) | {v for vs in acks.acked_no_offset.values() for v in vs}
    assert len(acked_values) == CHURN_RECORDS
    deliveries: dict[tuple[int, int], list[str]] = defaultdict(list)  # (p, o) -> members that processed it
    wrong, bad_lines = [], {}
    seen_values = set()
    for m in everyone:
        recs, bad = m.records()
        if bad:
            bad_lines[m.name] = bad
        for p, o, v in recs:
            deliveries[(p, o)].append(m.name)
            seen_values.add(v.encode())
            want = acked.get((p, o))
            if want is not None and want != v.encode():
                wrong.append((m.name, p, o, v[:40], want[:40]))
    # Only the killed member may have a cut last line.
    assert set(bad_lines) <= {victim.name} and bad_lines.get(victim.name, 0) <= 1, bad_lines
    assert not wrong, f"records processed at a position other than their ack: {wrong[:10]}"
    missing = acked_values - seen_values
    assert not missing, f"{len(missing)} acked records never processed, e.g. {sorted(missing)[:5]}"
    assert set(deliveries) == {(p, o) for p in range(P) for o in range(ends[p])}, "processed offsets != the log"

    dups = {po: who for po, who in deliveries.items() if len(who) > 1}
    n_dups = sum(len(who) - 1 for who in dups.values())
    failures = {m.name: m.commit_failures() for m in everyone}
    refused = sum(n for fs in failures.values() for _, n, _ in fs)
    # The killed member commits after each batch, so at most its last poll batch was processed but
    # not committed. Every other re-delivery follows a refused commit (counted with its batch size).
    bound = refused + MAX_POLL_RECORDS
    by_who = Counter(tuple(sorted(who)) for who in dups.values())
    print(f"[churn] {len(deliveries)} records, {n_dups} duplicate deliveries (bound {bound}: refused commits "
          f"{refused} records in {sum(map(len, failures.values()))} commits + {MAX_POLL_RECORDS}); by members "
          f"{dict(by_who)}; rebalances (assigned events) {({m.name: m.assigned_count() for m in everyone})}")
    assert n_dups <= bound, f"{n_dups} duplicate deliveries exceed the bound {bound}; by members {dict(by_who)}"
    # A member that processed a record twice itself must have had a commit refused on that partition.
    for (p, o), who in dups.items():
        for name, k in Counter(who).items():
            if k > 1:
                assert any(p in ps for ps, _, _ in failures[name]), (
                    f"{name} processed {p}/{o} {k} times without a refused commit on partition {p}")


@pytest.mark.parametrize("client", ["java", "confluent-kafka"])
def test_static_leader_return_does_not_rebalance(broker, members, client):
    """KIP-345 through each client's own group code: two static members share 4 partitions; the
    first (it created the group, so it leads) is stopped (a static member's close sends no
    LeaveGroup) and a new process with its instance id starts well within the 30 s session. It
    gets the same partitions back, the other member logs no revoke, lost or assign, and both
    keep consuming. Java joins with JoinGroup v9, where the coordinator tells the returning
    leader to skip the assignment (KIP-814); librdkafka with v5, where it is told the old
    leader id and syncs as a follower."""
    topic, group = unique_topic("gcc-static"), f"gcc-static-{unique_topic('g')}"
    P = 4
    create_topic(broker, topic, partitions=P)

    def member(name: str, instance: str) -> GroupMember:
        return members(name, client, broker, topic, group, session_ms=30000, extra=("--instance-id", instance))

    def processed(m: GroupMember, tag: str) -> set[int]:
        return {p for p, _o, v in m.records()[0] if v == f"{tag}-{p}"}

    def consumes(pairs, tag: str, what: str) -> None:
        produce_all(broker, topic, [{"value": f"{tag}-{p}".encode(), "partition": p} for p in range(P)], acks="all")
        last = {}

        def done():
            last.update({m.name: (processed(m, tag), want) for m, want in pairs})
            return all(got == want for got, want in last.values())

        try:
            wait_until(done, 60, interval=0.2, what=what)
        except TimeoutError:
            raise AssertionError(f"{what}: (processed, owned) {last}")

    a = member("a", "static-a")
    wait_group_settled(broker, group, [a], P, 60, "a alone owns every partition")
    b = member("b", "static-b")
    owned = wait_group_settled(broker, group, [a, b], P, 60, "a and b split the partitions")
    kept, others = owned[a.client_id], owned[b.client_id]
    consumes([(a, kept), (b, others)], "before", "both consume")
    b_events = b.events()

    assert a.stop() == 0, a.describe()
    a2 = member("a2", "static-a")
    # The coordinator keeps the replaced member's client id (Kafka: only the member id changes).
    want = {"static-a": (a.client_id, kept), "static-b": (b.client_id, others)}
    last = None

    def returned():
        nonlocal last
        d = describe_group(broker, group)
        last = (d.state, {m.group_instance_id: (m.client_id, {tp.partition for tp in m.assignment.topic_partitions})
                          for m in d.members}, a2.assignment())
        return last == (ConsumerGroupState.STABLE, want, kept)

    try:
        wait_until(returned, 60, interval=0.2, what="a2 takes a's place")
    except TimeoutError:
        raise AssertionError(f"a2 did not take a's place: (state, members, a2's own view) {last}, want {want}")
    consumes([(a2, kept), (b, others)], "after", "both consume after the return")

    assert b.events() == b_events, f"b saw a rebalance: {b.events()[len(b_events):]}"
    assert [(ev, ps) for _, ev, ps, _ in a2.events() if ev in ("assigned", "revoked", "lost")] == [("assigned", kept)]
    for m in (a2, b):
        assert m.running and not [e for e in m.events() if e[1] in ("error", "client-error")], m.describe()


OTHER_CLIENTS = ["franz-go", "kafkajs", "kafka-python"]


@pytest.mark.parametrize("client", OTHER_CLIENTS)
def test_group_consumers_other_clients(broker, members, client):
    """A franz-go / kafkajs / kafka-python group member gets all 3 partitions, processes every
    record exactly once at its acked position, commits the log end offsets, leaves the group on
    exit (Empty at once, not after the session timeout); a second run of the same client in the
    same group processes exactly the records produced after that commit."""
    P = 3
    topic, group = unique_topic(f"gcc-{client}"), unique_topic(f"gcc-{client}-g")
    create_topic(broker, topic, partitions=P)
    session_ms = 10_000

    def produce(tag: str, n: int) -> dict[tuple[int, int], str]:
        reps = produce_all(str(broker), topic, [{"value": f"{tag}-{i}".encode(), "partition": i % P}
                                               for i in range(n)], acks="all")
        assert all(r[0] is None for r in reps), [r for r in reps if r[0] is not None][:3]
        return {(r[1], r[2]): f"{tag}-{i}" for i, r in enumerate(reps)}

    def run(name: str, expect: dict[tuple[int, int], str]) -> GroupMember:
        m = members(name, client, broker, topic, group, max_seconds=90, session_ms=session_ms,
                    extra=("--idle-exit-ms", "3000"))
        m.wait(120)
        exited = time.monotonic()
        s = m.summary() or {}
        assert m.rc == 0 and s.get("exit") == "idle" and s.get("error_class") is None, (
            f"{m.describe()}\n{m.log_tail(30)}\n{group_report(broker, group, topic, P)}")
        recs, bad = m.records()
        assert bad == 0
        got = Counter((p, o) for p, o, _ in recs)
        assert [po for po, k in got.items() if k > 1] == [], "records processed twice"
        assert {(p, o): v for p, o, v in recs} == expect
        assert s.get("commit_failures") == 0 and s.get("consumed") == len(expect), s
        assert m.assignment() == set(), "the member still owns partitions after closing"
        assert any(ev == "assigned" and ps == set(range(P)) for _, ev, ps, _ in m.events()), m.events()
        # Leaving on close: the group is Empty well before the 10 s session would expire.
        wait_group_empty(broker, group, 15)
        assert time.monotonic() - exited < session_ms / 1000 - 2, "the member did not leave the group on close"
        return m

    first = produce("a", 1500)
    run(f"{client}-1", first)
    ends = log_end_offsets(broker, topic, P)
    assert ends == {p: 500 for p in range(P)}
    assert committed_offsets(broker, group, topic, P) == ends

    later = produce("b", 300)
    run(f"{client}-2", later)
    ends = log_end_offsets(broker, topic, P)
    assert ends == {p: 600 for p in range(P)}
    assert committed_offsets(broker, group, topic, P) == ends


def _advertises(bootstrap: str, api_key: int) -> bool:
    with kwire.Conn(str(bootstrap).split(",")[0]) as c:
        res = c.request(kwire.API_VERSIONS, 0, b"")
    assert res is not None
    err, apis = kwire.parse_api_versions_v0(res[1])
    assert err == 0
    return api_key in apis


def test_java_consumer_protocol_is_refused_like_kafka(broker, members, kafka_factory):
    """KIP-848: a Java consumer with group.protocol=consumer fails at once, from poll(), with
    UnsupportedVersionException and the client's "does not support the new CONSUMER group
    protocol" message, and consumes nothing. On Apache Kafka 4.1 (a dedicated broker with
    group.coordinator.rebalance.protocols=classic) ConsumerGroupHeartbeat is advertised and
    answered UNSUPPORTED_VERSION; Chronik does not advertise it, so the client fails before
    sending. The application sees the same exception and message either way."""
    target = broker
    if broker.is_kafka:
        target = kafka_factory(**{"group.coordinator.rebalance.protocols": "classic"}).bootstrap
    advertised = _advertises(target, CONSUMER_GROUP_HEARTBEAT)
    print(f"[kip-848] {broker.kind}: ConsumerGroupHeartbeat advertised: {advertised}")

    topic, group = unique_topic("gcc-848"), unique_topic("gcc-848-g")
    create_topic(target, topic, partitions=1)
    produce_all(str(target), topic, [{"value": b"x"}], acks="all")
    m = members("java-848", "java", target, topic, group, max_seconds=60, extra=("--group-protocol", "consumer"))
    m.wait(90)
    s = m.summary() or {}
    print(f"[kip-848] {broker.kind}: {s}")
    assert m.rc == 2 and s.get("exit") == "error", f"{m.describe()}\n{m.log_tail(30)}"
    assert s.get("error_class") == UNSUPPORTED_VERSION_CLASS, s
    assert s.get("error_message") == CONSUMER_PROTOCOL_REFUSED, s
    assert s.get("consumed") == 0 and m.records() == ([], 0)
    # The client's log names the API it could not use.
    log = m.log.read_text(errors="replace")
    assert "ConsumerGroupHeartbeatRequest failed due to unsupported version" in log, m.log_tail(30)

    # The refusal leaves no group behind, and a classic member of the same group works.
    c = members("java-classic", "java", target, topic, group, max_seconds=60, extra=("--idle-exit-ms", "2000"))
    c.wait(90)
    s = c.summary() or {}
    assert c.rc == 0 and s.get("consumed") == 1 and s.get("exit") == "idle", f"{c.describe()}\n{c.log_tail(30)}"
    assert committed_offsets(target, group, topic, 1) == {0: 1}
