#!/usr/bin/env python3
"""The broker CPU a topic's compression.type costs: Chronik and Apache Kafka in the same run.

One broker per system (Chronik durability=replicated; Kafka's defaults, its JVM with the full
JIT: both on the page cache). Kafka's ProducerPerformance writes the same compressible records (1 KiB JSON-like
lines from a payload file, so codecs have something to do) with lz4 to two topics: one with
compression.type=producer (stored as produced) and one with compression.type=zstd (the broker
decompresses every batch and compresses it again with zstd, level 3). The broker process's
CPU seconds (utime+stime from /proc) over each run, per 100,000 records, give the cost; the
figure of merit is each system's zstd/producer CPU ratio, and Chronik's CPU against Kafka's
for the same work. Throughput is reported too (the producer runs flat out).

    bench/recompress.py [--records 200000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from cluster import cpu_seconds  # noqa: E402
from run import alternating_rounds, median, print_machine, print_ratios, producer_perf  # noqa: E402


def payload_file(path: Path, lines: int = 2000) -> Path:
    """JSON-like 1 KiB lines: repetitive field names, varied values (compresses ~4-6x)."""
    rnd = random.Random(7)
    words = ["order", "created", "shipped", "cancelled", "eu-west", "us-east", "card", "invoice", "sku", "qty"]
    with path.open("w") as f:
        for i in range(lines):
            fields = []
            while sum(len(x) for x in fields) < 1000:
                k = rnd.choice(words)
                fields.append(f'"{k}_{rnd.randint(0, 99)}":"{rnd.choice(words)}-{rnd.randint(0, 10**6)}"')
            f.write(("{" + ",".join(fields))[:1022] + "}\n")
    return path


def create(bootstrap: str, topic: str, codec: str) -> None:
    from confluent_kafka.admin import AdminClient, NewTopic
    a = AdminClient({"bootstrap.servers": bootstrap})
    for f in a.create_topics([NewTopic(topic, 1, 1, config={"compression.type": codec})]).values():
        f.result(timeout=60)


def run_system(kind: str, work: Path, payload: Path, records: int) -> dict:
    data = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    if kind == "kafka":
        proc = harness.ApacheKafka(None, data, heap="1g", full_jit=True).start()
    else:
        proc = harness.Chronik(None, data / "data", durability="replicated").start()
    props = {"compression.type": "lz4"}
    try:
        out = {}
        for codec in ("producer", "zstd"):
            topic = f"bench-{codec}"
            create(proc.bootstrap, topic, codec)
            producer_perf(proc.bootstrap, topic, min(records, 20000), -1, props, payload)  # warm-up
            c0 = cpu_seconds(proc.pid)
            r = producer_perf(proc.bootstrap, topic, records, -1, props, payload)
            r["cpu_s_per_100k"] = (cpu_seconds(proc.pid) - c0) / records * 100_000
            out[codec] = r
        return out
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chronik-recompress-bench-") as tmp:
        work = Path(tmp)
        payload = payload_file(work / "payload.txt")
        res = alternating_rounds(args.rounds, lambda k: run_system(k, work, payload, args.records))
    print_machine(res, args.rounds, f"{args.records} records of ~1 KiB sent with lz4")
    print("| system | producer: msg/s | producer: CPU s / 100k | zstd: msg/s | zstd: CPU s / 100k "
          "| **zstd / producer CPU** |")
    print("|---|---|---|---|---|---|")
    for kind in ("kafka", "chronik"):
        rs = [r[kind] for r in res["rounds"]]
        row = [kind]
        for codec in ("producer", "zstd"):
            row += [f"{median([r[codec]['msg_s'] for r in rs]):,.0f}",
                    f"{median([r[codec]['cpu_s_per_100k'] for r in rs]):.2f}"]
        row.append(f"**{median([r['zstd']['cpu_s_per_100k'] / r['producer']['cpu_s_per_100k'] for r in rs]):.2f}**")
        print("| " + " | ".join(row) + " |")
    ratios = [r["chronik"]["zstd"]["cpu_s_per_100k"] / r["kafka"]["zstd"]["cpu_s_per_100k"] for r in res["rounds"]]
    print()
    print_ratios("Chronik / Kafka broker CPU with compression.type=zstd", ratios)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
