#!/usr/bin/env python3
"""Broker CPU per Fetch over 1,000 partitions, with and without an incremental fetch
session (KIP-227): Chronik and Apache Kafka in the same run.

One broker per system (Chronik durability=replicated; Kafka's defaults, its JVM with the full
JIT). A topic of 1,000
partitions holds one record in each. A raw Fetch v16 client (tests/kwire.py, one
connection, max_wait 0, min_bytes 0, so nothing waits) sends `--fetches` requests for every
partition at its log end, in two modes:

- full: no session (session id 0, epoch -1): every request lists the 1,000 partitions and
  every response answers all of them;
- incremental: one full request creates a session, then each request lists nothing and the
  response names only partitions with news (here: none).

The broker process's CPU seconds (utime+stime from /proc) over each mode, per 1,000
fetches, are the figure; the ratio incremental/full shows what sessions save, and Chronik
against Kafka what each costs.

    bench/fetch_sessions.py [--partitions 1000] [--fetches 3000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
import kwire  # noqa: E402
from cluster import cpu_seconds  # noqa: E402
from run import alternating_rounds, median, print_machine, print_ratios  # noqa: E402


def prepare(bootstrap: str, topic: str, partitions: int) -> bytes:
    from confluent_kafka import Producer, TopicCollection
    from confluent_kafka.admin import AdminClient, NewTopic
    a = AdminClient({"bootstrap.servers": bootstrap})
    for f in a.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=120).values():
        f.result(timeout=180)
    p = Producer({"bootstrap.servers": bootstrap, "acks": "all", "linger.ms": 20})
    deadline = time.monotonic() + 180
    for q in range(partitions):
        p.produce(topic, b"x" * 100, partition=q)
    while p.flush(5) and time.monotonic() < deadline:
        pass
    assert p.flush(30) == 0, "not every partition took its record"
    d = a.describe_topics(TopicCollection([topic]))[topic].result(timeout=60)
    mask = (1 << 64) - 1
    return struct.pack(">QQ", d.topic_id.get_most_significant_bits() & mask,
                       d.topic_id.get_least_significant_bits() & mask)


def fetch(conn, parts, session_id: int, epoch: int) -> dict:
    body = kwire.fetch_v16_body(parts, max_wait_ms=0, min_bytes=0, session_id=session_id, session_epoch=epoch)
    res = conn.request(kwire.FETCH, 16, body, flexible=True)
    r = kwire.parse_fetch_v16(res[1])
    assert r["error"] == 0, r["error"]
    return r


def run_system(kind: str, work: Path, partitions: int, fetches: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    if kind == "kafka":
        proc = harness.ApacheKafka(None, data, heap="1g", full_jit=True).start()
    else:
        proc = harness.Chronik(None, data / "data", durability="replicated").start()
    try:
        tid = prepare(proc.bootstrap, "bench-fetch", partitions)
        parts = [(tid, q, 1, -1) for q in range(partitions)]
        out = {}
        with kwire.Conn(proc.bootstrap, timeout=60) as conn:
            for _ in range(50):  # warm-up (JIT, caches)
                fetch(conn, parts, 0, -1)
            # Full fetches: the request body is built once; the client's cost is its parse.
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            for _ in range(fetches):
                r = fetch(conn, parts, 0, -1)
            assert len(r["partitions"]) == partitions
            out["full"] = {"cpu_ms_per_fetch": (cpu_seconds(proc.pid) - c0) / fetches * 1000,
                           "fetches_s": fetches / (time.monotonic() - t0)}
            sid = fetch(conn, parts, 0, 0)["session_id"]
            assert sid != 0, f"{kind} gave no fetch session"
            c0, t0 = cpu_seconds(proc.pid), time.monotonic()
            for epoch in range(1, fetches + 1):
                r = fetch(conn, [], sid, epoch)
            assert r["partitions"] == {} and r["session_id"] == sid
            out["incremental"] = {"cpu_ms_per_fetch": (cpu_seconds(proc.pid) - c0) / fetches * 1000,
                                  "fetches_s": fetches / (time.monotonic() - t0)}
        return out
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--partitions", type=int, default=1000)
    ap.add_argument("--fetches", type=int, default=3000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chronik-fetch-bench-") as tmp:
        res = alternating_rounds(args.rounds, lambda k: run_system(k, Path(tmp), args.partitions, args.fetches))
    print_machine(res, args.rounds, f"{args.fetches} fetches over {args.partitions} partitions")
    print("| system | full: broker CPU ms / fetch | full: fetches/s | incremental: broker CPU ms / fetch "
          "| incremental: fetches/s | **incremental / full CPU** |")
    print("|---|---|---|---|---|---|")
    for kind in ("kafka", "chronik"):
        rs = [r[kind] for r in res["rounds"]]
        row = [kind]
        for mode in ("full", "incremental"):
            row += [f"{median([r[mode]['cpu_ms_per_fetch'] for r in rs]):.3f}",
                    f"{median([r[mode]['fetches_s'] for r in rs]):,.0f}"]
        row.append(f"**{median([r['incremental']['cpu_ms_per_fetch'] / r['full']['cpu_ms_per_fetch'] for r in rs]):.2f}**")
        print("| " + " | ".join(row) + " |")
    for mode in ("full", "incremental"):
        ratios = [r["chronik"][mode]["cpu_ms_per_fetch"] / r["kafka"][mode]["cpu_ms_per_fetch"] for r in res["rounds"]]
        print_ratios(f"Chronik / Kafka broker CPU per {mode} fetch", ratios)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
