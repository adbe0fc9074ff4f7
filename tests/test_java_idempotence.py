"""The Java idempotent producer while the partition leader is killed: no duplicates, no gaps.

kafka-clients 4.1.1 (tests/clients/java, class chronik.clientcheck.IdempotentProduce in
client-check.jar) sends MESSAGES sequence-numbered records to partition 0 of a fresh RF 3
topic at RATE records/s with enable.idempotence=true, acks=all,
max.in.flight.requests.per.connection=5, unbounded retries and delivery.timeout.ms 120 s.
After a third of the records are acknowledged the partition leader is killed with SIGKILL;
the producer keeps going (batches in flight at the kill are retried against the new leader,
which must recognise the ones it already has by producer id and sequence). When the producer
is done the killed node is restarted and the partition read back.

Asserted:
  * the producer acknowledged every record exactly once and reported no failure;
  * the log is exactly the MESSAGES values in seq order at offsets 0..MESSAGES-1: every
    acked record present once, at its acknowledged offset, no duplicate, no gap, nothing
    foreign (ackcheck.verify_partition lists the problems; then an exact comparison);
  * on Chronik, every replica (the restarted one included) converges to a byte-identical
    log whose records are exactly what a consumer reads.

Printed: the failover gap (last ack before the kill -> first ack after it), the time from
the kill to the first ack of a record sent after the kill, and how many records were in
flight (sent before the kill, acked after it).

Runs on a 3-node Chronik region and on the 3-node Apache Kafka cluster (the oracle: a
failure there is a broken test, not a finding).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from ackcheck import _check_replicas_and_read, make_value, new_tag, partition_problems
from cluster import create_topic
from harness import ManagedProcess, java_bin, json_summary, wait_until
from kclient import unique_topic
from test_clients import java_jar  # noqa: F401 - fixture: builds the Java jar on demand

TESTS_DIR = Path(__file__).resolve().parent
JAVA_MAIN = "chronik.clientcheck.IdempotentProduce"

MESSAGES = 6000
RATE = 300  # records/s: a 20 s run
KILL_AFTER = MESSAGES // 3  # acks before the leader is killed
DELIVERY_TIMEOUT_MS = 120_000
# The producer must finish within its paced run plus one delivery timeout (and some slack).
RUN_LIMIT_S = MESSAGES / RATE + DELIVERY_TIMEOUT_MS / 1000 + 30

# ---------------------------------------------------------------------------
# The Java producer
# ---------------------------------------------------------------------------


class JavaIdempotentProducer(ManagedProcess):
    """One IdempotentProduce run; stdout+stderr go to <dir>/java-producer.log, outcomes to
    <dir>/java-producer.jsonl (one JSON object per line, see the Java source)."""

    name = "java-idempotent-producer"

    def __init__(self, jar: Path, bootstrap: str, topic: str, tag: str, out_dir: Path, messages: int,
                 rate: float) -> None:
        super().__init__()
        self.out = out_dir / "java-producer.jsonl"
        self.log = out_dir / "java-producer.log"
        self.argv = [java_bin(), "-Xmx256m", "-XX:+UseSerialGC", "-XX:TieredStopAtLevel=1", "-cp", str(jar),
                     JAVA_MAIN, "--bootstrap", bootstrap, "--topic", topic, "--tag", tag, "--out", str(self.out),
                     "--partition", "0", "--messages", str(messages), "--rate", str(rate),
                     "--delivery-timeout-ms", str(DELIVERY_TIMEOUT_MS), "--max-seconds", str(int(RUN_LIMIT_S))]
        self.rc: int | None = None
        self._pos = 0
        self._partial = b""
        self.acks: list[dict] = []    # {"seq", "offset", "partition", "t", "sent"}
        self.errors: list[dict] = []  # {"seq", "error", "t", "sent"}

    def start(self) -> "JavaIdempotentProducer":
        self._spawn(self.argv, cwd=TESTS_DIR, log_path=self.log)
        return self

    def poll_outcomes(self) -> int:
        """Read the outcome lines written since the last call; return the number of acks."""
        try:
            with open(self.out, "rb") as f:
                f.seek(self._pos)
                data = f.read()
        except FileNotFoundError:
            return len(self.acks)
        self._pos += len(data)
        data = self._partial + data
        *lines, self._partial = data.split(b"\n")
        for line in lines:
            if line.strip():
                o = json.loads(line)
                (self.errors if "error" in o else self.acks).append(o)
        return len(self.acks)

    def wait(self, timeout: float) -> int | None:
        if self.proc is not None:
            try:
                self.proc.wait(timeout)
            except Exception:  # noqa: BLE001 - TimeoutExpired: reported by the caller via rc None
                return None
            self.rc = self.proc.returncode
            self._reap()
        self.poll_outcomes()
        return self.rc

    def summary(self) -> dict | None:
        return json_summary(self.log)


@pytest.fixture
def java_producer(request, tmp_path):
    """java_producer(bootstrap, topic, tag, messages, rate) -> started JavaIdempotentProducer;
    killed at teardown if still running, its log tail printed (shown on failure)."""
    made: list[JavaIdempotentProducer] = []

    def make(bootstrap: str, topic: str, tag: str, messages: int, rate: float) -> JavaIdempotentProducer:
        jar = request.getfixturevalue("java_jar")
        p = JavaIdempotentProducer(jar, bootstrap, topic, tag, tmp_path, messages, rate)
        made.append(p)
        return p.start()

    yield make
    for p in made:
        if p.running:
            p._hard_kill()
        print(f"--- {p.name} (rc {p.rc}), log {p.log}:\n{p.log_tail(12)}")


# ---------------------------------------------------------------------------
# The scenario
# ---------------------------------------------------------------------------


def _producer_problems(prod: JavaIdempotentProducer, messages: int) -> list[str]:
    problems = []
    summary = prod.summary()
    if prod.rc != 0:
        problems.append(f"producer exit code {prod.rc}, summary {summary}")
    if prod.errors:
        problems.append(f"producer reported {len(prod.errors)} failures, e.g. "
                        + "; ".join(f"seq {e['seq']}: {e['error']}" for e in prod.errors[:5]))
    by_seq: dict[int, int] = {}
    for a in prod.acks:
        by_seq[a["seq"]] = by_seq.get(a["seq"], 0) + 1
    twice = sorted(s for s, n in by_seq.items() if n > 1)
    if twice:
        problems.append(f"{len(twice)} records acknowledged more than once, e.g. seq {twice[:5]}")
    unacked = sorted(set(range(messages)) - set(by_seq))
    if unacked:
        problems.append(f"{len(unacked)} records never acknowledged, e.g. seq {unacked[:10]}")
    return problems


def _log_problems(log: dict[int, bytes], lo: int, hi: int, prod: JavaIdempotentProducer, tag: str,
                  messages: int) -> list[str]:
    acked = {a["offset"]: make_value(tag, 0, a["seq"]) for a in prod.acks if a["offset"] >= 0}
    problems = partition_problems(0, log, acked, lo, hi)
    no_offset = [a["seq"] for a in prod.acks if a["offset"] < 0]
    stored = set(log.values())
    missing = [s for s in no_offset if make_value(tag, 0, s) not in stored]
    if missing:
        problems.append(f"{len(missing)} records acknowledged without an offset are not in the log: seq {missing[:10]}")
    # One idempotent producer on a fresh partition: the log must be exactly seq 0..N-1 at offsets 0..N-1.
    expected = {i: make_value(tag, 0, i) for i in range(messages)}
    if (lo, hi) != (0, messages) or log != expected:
        wrong = [(o, log.get(o, b"<none>")[:24], expected.get(o, b"<none>")[:24])
                 for o in sorted(set(log) | set(expected)) if log.get(o) != expected.get(o)]
        problems.append(f"log [{lo}, {hi}) with {len(log)} records is not seq 0..{messages - 1} at offsets "
                        f"0..{messages - 1}: {len(wrong)} offsets differ, first ones (offset, found, expected): "
                        f"{wrong[:8]}")
    return problems


def _timing(prod: JavaIdempotentProducer, t_kill: float, t_dead: float) -> dict:
    ts = sorted(a["t"] for a in prod.acks)
    before = [t for t in ts if t <= t_kill]
    after = [t for t in ts if t > t_dead]
    sent_after = [a["t"] for a in prod.acks if a["sent"] > t_dead]
    in_flight = sum(1 for a in prod.acks if a["sent"] <= t_kill and a["t"] > t_dead)
    return {
        "gap": (after[0] - before[-1]) if before and after else None,
        "first_new_send_ack": (min(sent_after) - t_kill) if sent_after else None,
        "in_flight_at_kill": in_flight,
        "acked_before_kill": len(before),
    }


@pytest.mark.timeout(int(RUN_LIMIT_S) + 240)
def test_java_idempotent_producer_survives_leader_kill9(any_cluster, java_producer):
    cluster = any_cluster
    topic = unique_topic("javaidem")
    create_topic(cluster, topic, partitions=1, replication_factor=3)
    tag = new_tag("j")
    prod = java_producer(cluster.bootstrap, topic, tag, MESSAGES, RATE)

    def acked_enough():
        n = prod.poll_outcomes()
        if not prod.running and n < KILL_AFTER:
            raise AssertionError(f"producer exited (rc {prod.proc.returncode}) after {n} acks:\n{prod.log_tail(30)}")
        return n >= KILL_AFTER

    wait_until(acked_enough, 60, interval=0.02, what=f"{KILL_AFTER} acks before the kill")
    old = cluster.leader_of(topic, 0)
    t_kill = time.time()
    cluster.kill9(old)
    t_dead = time.time()
    # Chronik: what the survivors hold right after the kill (before a new leader takes writes).
    survivors = {}
    if cluster.kind == "chronik":
        survivors = {i: (s or {}).get("log_end_offset") for i, s in cluster.states(topic, 0, timeout=0.5).items()}
    print(f"\n{cluster.kind}: killed leader node {old} of {topic}/0 after {len(prod.acks)} acks")

    rc = prod.wait(RUN_LIMIT_S)
    assert rc is not None, f"producer still running {RUN_LIMIT_S:.0f}s after start:\n{prod.log_tail(30)}"
    new = cluster.leader_of(topic, 0)
    timing = _timing(prod, t_kill, t_dead)
    print(f"{cluster.kind}: new leader node {new}; producer rc {rc}, {len(prod.acks)} acks, "
          f"{len(prod.errors)} failures; summary {prod.summary()}")
    gap = timing["gap"]
    first = timing["first_new_send_ack"]
    print(f"{cluster.kind}: failover gap (last ack before kill -> first ack after) "
          f"{'n/a' if gap is None else f'{gap:.3f}s'}; first ack of a record sent after the kill "
          f"{'n/a' if first is None else f'{first:.3f}s'} after the kill; "
          f"{timing['in_flight_at_kill']} records in flight at the kill were acked after it")
    if survivors:
        last = max((a["offset"] for a in prod.acks if a["t"] <= t_kill), default=-1)
        beyond = max((v for v in survivors.values() if v is not None), default=0) - (last + 1)
        print(f"{cluster.kind}: survivors' log end offsets right after the kill {survivors}, highest offset acked "
              f"before it {last}: {max(beyond, 0)} records stored but not yet acknowledged (retried by the producer)")

    cluster.restart(old)
    log, lo, hi = _check_replicas_and_read(cluster, topic, 0)
    problems = _producer_problems(prod, MESSAGES) + _log_problems(log, lo, hi, prod, tag, MESSAGES)
    if new == old:
        problems.append(f"node {old} was killed but is reported as the leader")
    assert not problems, "\n".join(problems)
    print(f"{cluster.kind}: {len(log)} records at offsets [{lo}, {hi}), every one acked once, in seq order")
