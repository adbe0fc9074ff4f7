#!/usr/bin/env python3
"""Transactional throughput: Chronik and Apache Kafka in the same run.

One broker per system (Chronik durability=replicated; Kafka's defaults, transaction state
log replication 1, its JVM with the full JIT). A librdkafka transactional producer runs
transactions of 100 records of 100 bytes each over 4 partitions of one topic, committing
each, for `--transactions` transactions after a warm-up of 20. Reported: commits per
second, records per second, and the broker's CPU seconds per 1,000 commits. A
read_committed consumer then reads the topic to its last stable offset and the count is
checked, so a broker that loses or half-applies a transaction does not get a figure.

    bench/transactions.py [--transactions 500] [--producers 1] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from cluster import cpu_seconds  # noqa: E402
from run import alternating_rounds, median, print_machine, print_ratios  # noqa: E402

TOPIC = "bench-txn"
PARTITIONS = 4
PER_TXN = 100
WARMUP = 20


def producer_loop(bootstrap: str, tid: str, transactions: int, started: threading.Barrier,
                  out: dict) -> None:
    from confluent_kafka import Producer

    p = Producer({"bootstrap.servers": bootstrap, "transactional.id": tid, "linger.ms": 0,
                  "acks": "all"})
    p.init_transactions(60)
    value = b"x" * 100

    def one(n: int) -> None:
        p.begin_transaction()
        for i in range(PER_TXN):
            p.produce(TOPIC, value, partition=(n + i) % PARTITIONS)
        p.commit_transaction(60)

    for n in range(WARMUP):
        one(n)
    started.wait()
    t0 = time.monotonic()
    for n in range(transactions):
        one(n)
    out[tid] = time.monotonic() - t0


def committed_count(bootstrap: str) -> int:
    from confluent_kafka import Consumer, TopicPartition

    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "bench-count", "isolation.level": "read_committed",
                  "enable.auto.commit": False})
    try:
        total = 0
        for p in range(PARTITIONS):
            low, high = c.get_watermark_offsets(TopicPartition(TOPIC, p), timeout=30, cached=False)
            c.assign([TopicPartition(TOPIC, p, low)])
            deadline = time.monotonic() + 120
            while True:
                for m in c.consume(num_messages=10000, timeout=0.5):
                    if not m.error() and m.offset() < high:
                        total += 1
                (pos,) = c.position([TopicPartition(TOPIC, p)])
                if pos.offset >= high:
                    break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"partition {p} not read to {high}")
        return total
    finally:
        c.close()


def run_system(kind: str, work: Path, transactions: int, producers: int) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    data = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    if kind == "kafka":
        proc = harness.ApacheKafka(None, data, heap="1g", full_jit=True, extra_props={
            "transaction.state.log.replication.factor": 1, "transaction.state.log.min.isr": 1}).start()
    else:
        proc = harness.Chronik(None, data / "data", durability="replicated").start()
    try:
        a = AdminClient({"bootstrap.servers": proc.bootstrap})
        for f in a.create_topics([NewTopic(TOPIC, PARTITIONS, 1)]).values():
            f.result(timeout=60)
        barrier = threading.Barrier(producers + 1)
        took: dict = {}
        threads = [threading.Thread(target=producer_loop, daemon=True,
                                    args=(proc.bootstrap, f"bench-{i}", transactions, barrier, took))
                   for i in range(producers)]
        for t in threads:
            t.start()
        barrier.wait(timeout=300)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        for t in threads:
            t.join(timeout=900)
        secs, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - c0
        if len(took) != producers:
            raise RuntimeError(f"{kind}: {producers - len(took)} producers did not finish")
        commits = transactions * producers
        expected = (transactions + WARMUP) * producers * PER_TXN
        got = committed_count(proc.bootstrap)
        if got != expected:
            raise RuntimeError(f"{kind}: read_committed sees {got} records, {expected} were committed")
        return {"seconds": secs, "commits_s": commits / secs, "records_s": commits * PER_TXN / secs,
                "cpu_s_per_1k_commits": cpu / (commits / 1000)}
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--transactions", type=int, default=500)
    ap.add_argument("--producers", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chronik-txn-bench-") as tmp:
        res = alternating_rounds(args.rounds, lambda k: run_system(k, Path(tmp), args.transactions,
                                                                   args.producers))
    print_machine(res, args.rounds, f"{args.producers} producer(s) x {args.transactions} transactions of "
                                    f"{PER_TXN} records over {PARTITIONS} partitions")
    print("| system | **commits/s** | records/s | CPU s / 1,000 commits |")
    print("|---|---|---|---|")
    for kind in ("kafka", "chronik"):
        rs = [r[kind] for r in res["rounds"]]
        print(f"| {kind} | **{median([r['commits_s'] for r in rs]):.0f}** | {median([r['records_s'] for r in rs]):.0f} "
              f"| {median([r['cpu_s_per_1k_commits'] for r in rs]):.2f} |")
    print()
    print_ratios("Chronik / Kafka commits per second",
                 [r["chronik"]["commits_s"] / r["kafka"]["commits_s"] for r in res["rounds"]])
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
