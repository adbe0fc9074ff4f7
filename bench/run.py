#!/usr/bin/env python3
"""Produce benchmark: Chronik against Apache Kafka on this machine, same run.

Uses Kafka's own ProducerPerformance (kafka-tools jar): 1 KiB records,
acks=all, one partition, one producer. Compared at equal durability:

  fsync       Chronik durability=fsync       vs Kafka flush.messages=1
  replicated  Chronik durability=replicated  vs Kafka defaults (page cache)

plus a fixed-rate run at 5,000 msg/s for latency, and a consume pass over
the produced data with kcat. Prints a Markdown table;
`--json FILE` also writes the raw figures.

    bench/run.py [--records 200000] [--rate-records 50000] [--rounds 1]
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
import harness  # noqa: E402

SUMMARY = re.compile(
    r"(\d+) records sent, ([\d.]+) records/sec \(([\d.]+) MB/sec\), ([\d.]+) ms avg latency, "
    r"([\d.]+) ms max latency, (\d+) ms 50th, (\d+) ms 95th, (\d+) ms 99th, (\d+) ms 99.9th"
)


def producer_perf(bootstrap: str, topic: str, records: int, throughput: int, props: dict | None = None,
                  payload_file: Path | None = None) -> dict:
    """`props`: more producer properties (security settings, for bench/tls.py); `payload_file`:
    records are its lines (compressible data, for bench/recompress.py) instead of 1 KiB of
    random bytes."""
    libs = harness.ensure_kafka_libs()
    size = ["--payload-file", str(payload_file)] if payload_file else ["--record-size", "1024"]
    argv = [
        harness.java_bin(), "-Xmx512m", "-cp", f"{libs}/*",
        "org.apache.kafka.tools.ProducerPerformance",
        "--topic", topic, "--num-records", str(records), *size,
        "--throughput", str(throughput),
        "--producer-props", f"bootstrap.servers={bootstrap}", "acks=all", "linger.ms=5", "batch.size=65536",
        *(f"{k}={v}" for k, v in (props or {}).items()),
    ]
    out = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    m = None
    for line in out.stdout.splitlines():
        m = SUMMARY.search(line) or m
    if out.returncode != 0 or m is None:
        raise RuntimeError(f"ProducerPerformance failed ({out.returncode}):\n{out.stdout[-2000:]}\n{out.stderr[-2000:]}")
    return {
        "records": int(m.group(1)), "msg_s": float(m.group(2)), "mb_s": float(m.group(3)),
        "avg_ms": float(m.group(4)), "max_ms": float(m.group(5)),
        "p50_ms": int(m.group(6)), "p95_ms": int(m.group(7)), "p99_ms": int(m.group(8)), "p999_ms": int(m.group(9)),
    }


def consume_perf(bootstrap: str, topic: str, records: int, props: dict | None = None) -> dict:
    """Reads `records` from the start of partition 0 with kcat (librdkafka,
    manual assignment): Kafka's ConsumerPerformance needs consumer groups,
    which Chronik did not serve when this was written. `props`: more
    librdkafka properties (security settings, for bench/tls.py)."""
    argv = ["kcat", "-C", "-b", bootstrap, "-t", topic, "-p", "0", "-o", "beginning", "-c", str(records),
            "-q", "-f", "%o\n", "-X", "fetch.wait.max.ms=100"]
    for k, v in (props or {}).items():
        argv += ["-X", f"{k}={v}"]
    t0 = time.monotonic()
    out = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    elapsed = time.monotonic() - t0
    n = len(out.stdout.splitlines())
    if out.returncode != 0 or n != records:
        raise RuntimeError(f"kcat read {n}/{records} (rc {out.returncode}): {out.stderr[-2000:]}")
    return {"records": n, "seconds": elapsed, "msg_s": n / elapsed, "mb_s": n * 1024 / elapsed / 1e6}


def create_topic(bootstrap: str, topic: str, partitions: int = 1) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic

    a = AdminClient({"bootstrap.servers": bootstrap})
    fs = a.create_topics([NewTopic(topic, num_partitions=partitions, replication_factor=1)])
    for f in fs.values():
        f.result(timeout=60)


def run_target(kind: str, mode: str, work: Path, records: int, rate_records: int, partitions: int) -> dict:
    # A fresh data directory per run: no run inherits another's data or topics.
    data = Path(tempfile.mkdtemp(prefix=f"{kind}-{mode}-", dir=work))
    if kind == "kafka":
        props = {"flush.messages": "1"} if mode == "fsync" else {}
        proc = harness.ApacheKafka(None, data, extra_props=props, heap="1g").start()
    else:
        proc = harness.Chronik(None, data / "data", durability=mode).start()
    try:
        create_topic(proc.bootstrap, "bench-max")
        create_topic(proc.bootstrap, "bench-rate")
        create_topic(proc.bootstrap, "bench-parts", partitions)
        producer_perf(proc.bootstrap, "bench-max", min(records, 20000), -1)  # warm-up (JIT, caches)
        best = producer_perf(proc.bootstrap, "bench-max", records, -1)
        rate = producer_perf(proc.bootstrap, "bench-rate", rate_records, 5000)
        consume = consume_perf(proc.bootstrap, "bench-max", records)
        # Several partitions: Kafka appends (and with flush.messages=1,
        # fsyncs) each partition's file separately; Chronik commits the
        # whole request in one group.
        parts = producer_perf(proc.bootstrap, "bench-parts", records, -1)
        return {"max": best, "rate5k": rate, "consume": consume, "parts": parts}
    finally:
        proc.stop()
        shutil.rmtree(data, ignore_errors=True)


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def load_average() -> str:
    return open("/proc/loadavg").read().split()[0]


def alternating_rounds(rounds: int, run_system) -> dict:
    """`rounds` rounds of run_system(kind) for Kafka and Chronik, alternating which goes
    first (neither always gets the cooler machine), with the machine and its load."""
    nproc = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    res: dict = {"machine": f"{platform.node()}, {nproc} cores",
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                 "load_start": load_average(), "rounds": []}
    order = ["kafka", "chronik"]
    for _ in range(rounds):
        res["rounds"].append({k: run_system(k) for k in order})
        order.reverse()
    res["load_end"] = load_average()
    return res


def print_machine(res: dict, rounds: int, what: str) -> None:
    """The line every side-by-side benchmark starts its report with."""
    print(f"\nmachine: {res['machine']}; started {res['started']}; load {res['load_start']} -> {res['load_end']}; "
          f"median of {rounds} rounds, {what}\n")


def print_ratios(label: str, ratios: list[float]) -> None:
    """A Chronik / Kafka ratio: its median and each round's."""
    print(f"{label}: {median(ratios):.2f} (per round: {', '.join(f'{x:.2f}' for x in ratios)})")


def median_run(runs: list[dict]) -> dict:
    """Per scenario, the run with the median throughput (and, for the fixed
    rate scenario, the median p99), so one noisy run cannot decide."""
    out = {}
    for scenario in runs[0]:
        key = "p99_ms" if scenario == "rate5k" else "msg_s"
        ordered = sorted((r[scenario] for r in runs), key=lambda x: x[key])
        out[scenario] = ordered[len(ordered) // 2]
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rate-records", type=int, default=50_000)
    ap.add_argument("--partitions", type=int, default=8, help="partitions of the multi-partition run")
    ap.add_argument("--modes", default="fsync,replicated")
    ap.add_argument("--systems", default="kafka,chronik", help="for quick iterations, e.g. --systems chronik")
    ap.add_argument("--rounds", type=int, default=3, help="interleaved repetitions; the table shows medians")
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    results: dict = {"machine": f"{platform.node()} {platform.processor() or platform.machine()}, "
                                f"{subprocess.run(['nproc'], capture_output=True, text=True).stdout.strip()} cores",
                     "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "modes": {}}
    with tempfile.TemporaryDirectory(prefix="chronik-bench-") as tmp:
        work = Path(tmp)
        for mode in args.modes.split(","):
            # Alternate who goes first so neither always gets the cooler machine.
            order = ["kafka", "chronik"] if mode == "fsync" else ["chronik", "kafka"]
            order = [k for k in order if k in args.systems.split(",")]
            rounds: dict = {k: [] for k in order}
            for _ in range(args.rounds):
                for k in order:
                    rounds[k].append(run_target(k, mode, work, args.records, args.rate_records, args.partitions))
                order.reverse()
            results["rounds"] = results.get("rounds", {})
            results["rounds"][mode] = rounds
            results["modes"][mode] = {k: median_run(v) for k, v in rounds.items()}

    print(f"\nmachine: {results['machine']}; started {results['started']}; median of {args.rounds} rounds\n")
    print("| durability | system | produce msg/s | MB/s | p50 ms | p99 ms | produce vs Kafka | p50 @5k/s | p99 @5k/s "
          "| consume msg/s | consume vs Kafka |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for mode, r in results["modes"].items():
        k = r["kafka"]["max"]["msg_s"] if "kafka" in r else float("nan")
        kc = r["kafka"]["consume"]["msg_s"] if "kafka" in r else float("nan")
        for kind in r:
            m, s, c = r[kind]["max"], r[kind]["rate5k"], r[kind]["consume"]
            print(f"| {mode} | {kind} | {m['msg_s']:.0f} | {m['mb_s']:.1f} | {m['p50_ms']} | {m['p99_ms']} | "
                  f"{m['msg_s'] / k:.2f} | {s['p50_ms']} | {s['p99_ms']} | {c['msg_s']:.0f} | {c['msg_s'] / kc:.2f} |")
    print(f"\n{args.partitions} partitions, one producer:\n")
    print("| durability | system | produce msg/s | MB/s | p50 ms | p99 ms | produce vs Kafka |")
    print("|---|---|---|---|---|---|---|")
    for mode, r in results["modes"].items():
        k = r["kafka"]["parts"]["msg_s"] if "kafka" in r else float("nan")
        for kind in r:
            m = r[kind]["parts"]
            print(f"| {mode} | {kind} | {m['msg_s']:.0f} | {m['mb_s']:.1f} | {m['p50_ms']} | {m['p99_ms']} | {m['msg_s'] / k:.2f} |")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
