#!/usr/bin/env python3
"""Sustained produce: several back-to-back ProducerPerformance runs into one
broker and one 1-partition topic, to see whether throughput holds as the log
grows. Apache Kafka (flush.messages=1) and Chronik (durability=fsync).

    bench/sustained.py [--runs 4] [--records 300000]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run  # noqa: E402  (bench/run.py: ProducerPerformance driver)
from run import harness  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=4)
    ap.add_argument("--records", type=int, default=300_000)
    args = ap.parse_args()
    results = {}
    for kind in ("chronik", "kafka"):
        work = Path(tempfile.mkdtemp(prefix=f"sustained-{kind}-"))
        try:
            if kind == "kafka":
                proc = harness.ApacheKafka(None, work, extra_props={"flush.messages": "1"}, heap="1g").start()
            else:
                proc = harness.Chronik(None, work / "data", durability="fsync").start()
            try:
                run.create_topic(proc.bootstrap, "sustained")
                results[kind] = [run.producer_perf(proc.bootstrap, "sustained", args.records, -1)["msg_s"]
                                 for _ in range(args.runs)]
            finally:
                proc.stop()
        finally:
            shutil.rmtree(work, ignore_errors=True)
    print("| run | Chronik msg/s | Kafka msg/s |\n|---|---|---|")
    for i in range(args.runs):
        print(f"| {i + 1} | {results['chronik'][i]:,.0f} | {results['kafka'][i]:,.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
