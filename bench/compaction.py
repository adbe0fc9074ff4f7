#!/usr/bin/env python3
"""The log cleaner's throughput: Chronik and Apache Kafka in the same run.

One broker per system (Chronik durability=replicated; Kafka's defaults with a 4 MiB
segment.bytes, since Kafka cleans only rolled segments, and its JVM with the full JIT).
A topic with cleanup.policy=compact and min.compaction.lag.ms of an hour (so nothing is
cleaned while it fills) gets N records of 100-byte values over K keys, sent with lz4 (the
cleaner must decompress and recompress). Then min.compaction.lag.ms is set to 0 and the
clock starts: the cleaning is done when the partition's size (DescribeLogDirs) has fallen
below a quarter of what it was. Both cleaners look every 500 ms (log.cleaner.backoff.ms,
topics.cleaner_backoff_ms). Reported: MB of log cleaned per second (the size before over the
time to clean it), and the broker's CPU seconds over that time per 100 MB cleaned.

    bench/compaction.py [--records 1000000] [--keys 10000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from cluster import cpu_seconds  # noqa: E402
from run import alternating_rounds, median, print_machine, print_ratios  # noqa: E402

TOPIC = "bench-compact"


def partition_size(bootstrap: str) -> int:
    from kafka.admin import KafkaAdminClient

    a = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=10000)
    try:
        total = 0
        for broker in a.describe_log_dirs(topic_partitions=[TOPIC]):
            for d in broker["log_dirs"]:
                for t in d["topics"]:
                    if t["name"] == TOPIC:
                        total += sum(p["partition_size"] for p in t["partitions"])
        return total
    finally:
        a.close()


def fill(bootstrap: str, records: int, keys: int) -> None:
    from confluent_kafka import Producer

    rnd = random.Random(11)
    # Random bytes: lz4 cannot shrink them, so the log is as large as what was sent.
    values = [rnd.randbytes(100) for _ in range(1000)]
    p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 20, "batch.size": 262144,
                  "compression.type": "lz4", "acks": "all", "enable.idempotence": True})
    for i in range(records):
        while True:
            try:
                p.produce(TOPIC, key=b"key-%d" % rnd.randrange(keys), value=values[i % len(values)])
                break
            except BufferError:
                p.poll(0.05)
    assert p.flush(120) == 0


def set_config(bootstrap: str, name: str, value: str) -> None:
    from confluent_kafka.admin import AdminClient, AlterConfigOpType, ConfigEntry, ConfigResource

    a = AdminClient({"bootstrap.servers": bootstrap})
    r = ConfigResource(ConfigResource.Type.TOPIC, TOPIC,
                       incremental_configs=[ConfigEntry(name, value,
                                                        incremental_operation=AlterConfigOpType.SET)])
    for f in a.incremental_alter_configs([r]).values():
        f.result(timeout=60)


def run_system(kind: str, work: Path, records: int, keys: int) -> dict:
    from confluent_kafka.admin import AdminClient, NewTopic

    data = Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work))
    if kind == "kafka":
        proc = harness.ApacheKafka(None, data, heap="1g", full_jit=True,
                                   extra_props={"log.cleaner.backoff.ms": 500}).start()
    else:
        proc = harness.Chronik(None, data / "data", durability="replicated", cleaner_backoff_ms=500).start()
    try:
        a = AdminClient({"bootstrap.servers": proc.bootstrap})
        config = {"cleanup.policy": "compact", "min.compaction.lag.ms": "3600000",
                  "min.cleanable.dirty.ratio": "0.5", "segment.bytes": str(4 << 20)}
        for f in a.create_topics([NewTopic(TOPIC, 1, 1, config=config)]).values():
            f.result(timeout=60)
        fill(proc.bootstrap, records, keys)
        before = partition_size(proc.bootstrap)
        c0, t0 = cpu_seconds(proc.pid), time.monotonic()
        set_config(proc.bootstrap, "min.compaction.lag.ms", "0")
        deadline = t0 + 600
        size = before
        while size > before / 4:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{kind}: not cleaned in 600 s ({size} of {before} bytes left)")
            time.sleep(0.1)
            size = partition_size(proc.bootstrap)
        secs, cpu = time.monotonic() - t0, cpu_seconds(proc.pid) - c0
        return {"bytes_before": before, "bytes_after": size, "seconds": secs,
                "mb_s": before / 1e6 / secs, "cpu_s_per_100mb": cpu / (before / 1e8)}
    finally:
        proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--keys", type=int, default=10_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chronik-compaction-bench-") as tmp:
        res = alternating_rounds(args.rounds, lambda k: run_system(k, Path(tmp), args.records, args.keys))
    print_machine(res, args.rounds, f"{args.records} records of 100 B over {args.keys} keys, lz4")
    print("| system | log before (MB) | after (MB) | seconds to clean | **cleaned MB/s** | CPU s / 100 MB |")
    print("|---|---|---|---|---|---|")
    for kind in ("kafka", "chronik"):
        rs = [r[kind] for r in res["rounds"]]
        print(f"| {kind} | {median([r['bytes_before'] for r in rs]) / 1e6:.1f} "
              f"| {median([r['bytes_after'] for r in rs]) / 1e6:.1f} | {median([r['seconds'] for r in rs]):.2f} "
              f"| **{median([r['mb_s'] for r in rs]):.1f}** | {median([r['cpu_s_per_100mb'] for r in rs]):.2f} |")
    ratios = [r["chronik"]["mb_s"] / r["kafka"]["mb_s"] for r in res["rounds"]]
    print()
    print_ratios("Chronik / Kafka cleaner throughput", ratios)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
