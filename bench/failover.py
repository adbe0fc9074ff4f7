#!/usr/bin/env python3
"""Failover benchmark: the recovery time of `chronik ctl failover` when the home region is
killed under load, over a simulated WAN.

Deployment per run (fresh each time): two Chronik regions (us-east, eu-west), --brokers
each, one dc-link per region, the witness, every cross-region byte through `chronik
wan-sim` with --delay-ms each way (RTT = 2 x delay), the lease of --lease-ms renewed every
--renew-ms. One topic with --partitions partitions, created in us-east.

Each run: an idempotent producer writes --rate records per second in us-east, and a probe
producer sends one record every 10 ms to eu-west (1 s message timeout). Then every us-east
process is killed with -9, and `chronik ctl failover --to eu-west` is started at once (an
operator's or a watchdog's command issued the moment the loss is noticed; automatic
failover is not built yet). Measured per run, from the command's own progress lines:

  detection   kill -> the command has decided the home is gone (it reports the data at
              risk once two looks 1.6 s apart found the home silent)
  lease       that -> a majority of the voters agreed (the old lease ran out)
  promotion   that -> the first record acknowledged by eu-west (TakeHome, the partitions'
              promotions, the probe's metadata refresh)
  RTO         the last record acknowledged by us-east -> the first acknowledged by eu-west

With --auto the topic has chronik.failover.auto=true (timeout --auto-timeout-ms) and no
command runs: detection ends when eu-west's dc-link logs that the home is silent, the lease
part when it logs the voters' agreement (times from its log).

No peer is measured: neither Cluster Linking's nor MirrorMaker 2's failover decides on its
own that the source is gone or fences it (docs/failover.md compares them point by point);
their recovery time is the operator's.

    bench/failover.sh [--runs 5] [--delay-ms 50] [--rate 500] [--partitions 3] [--brokers 1] [--auto]

Prints a Markdown table and writes every figure to --json. Every wait is bounded; every
process started here is stopped when the script exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from cluster import create_topic  # noqa: E402
from harness import chronik_bin, wait_until  # noqa: E402
from meta_sync import pct  # noqa: E402
from regions import Regions  # noqa: E402
from switchover import Writer  # noqa: E402

US, EU = "us-east", "eu-west"


def failover_timed(regions: Regions, topic: str) -> tuple[dict, dict[str, float]]:
    """Runs `ctl failover`, timestamping its progress lines: (result, {event: time})."""
    args = ["--broker", regions.cluster(EU).admin_url(regions.cluster(EU).live_ids()[0]).removeprefix("http://")]
    p = subprocess.Popen([str(regions.binary), "ctl", "failover", "--to", EU, "--topic", topic, "--json",
                          "--dc-link", regions.dclink_url(EU), *args],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    events: dict[str, float] = {}
    lines: list[str] = []

    def read_err():
        for line in p.stderr:
            now = time.monotonic()
            lines.append(line)
            if "data at risk" in line:
                events.setdefault("decided", now)
            elif "lease voters agreed" in line:
                events.setdefault("agreed", now)
            elif "home taken" in line:
                events.setdefault("taken", now)

    t = threading.Thread(target=read_err, daemon=True)
    t.start()
    out = p.stdout.read()
    p.wait(timeout=300)
    t.join(10)
    if p.returncode != 0:
        raise RuntimeError(f"failover failed: {''.join(lines)}")
    events["done"] = time.monotonic()
    return json.loads(out)["topics"][0], events


def auto_events(log: str, wall0: float) -> dict[str, float]:
    """The monotonic times of the automatic failover's log lines in eu-west's dc-link log
    (UTC timestamps; `wall0` converts)."""
    import re
    from datetime import datetime

    out = {}
    for line in re.sub(r"\x1b\[[0-9;]*m", "", log).splitlines():
        m = re.match(r"(\S+Z)\s", line)
        if not m:
            continue
        t = datetime.strptime(m.group(1)[:26], "%Y-%m-%dT%H:%M:%S.%f").timestamp() - time.timezone - wall0
        if "the home is silent" in line:
            out.setdefault("decided", t)
        elif "promotion agreed" in line:
            out.setdefault("agreed", t)
    missing = {"decided", "agreed"} - set(out)
    if missing:
        raise RuntimeError(f"eu-west's dc-link log lacks {missing}")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--lease-ms", type=int, default=5000)
    ap.add_argument("--renew-ms", type=int, default=1000)
    ap.add_argument("--auto", action="store_true",
                    help="automatic failover (chronik.failover.auto) instead of the command")
    ap.add_argument("--auto-timeout-ms", type=int, default=3000)
    ap.add_argument("--binary", type=Path, default=None)
    ap.add_argument("--json", type=Path,
                    default=Path(f"/tmp/chronik-failover-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"))
    args = ap.parse_args()
    binary = args.binary or chronik_bin()
    out: dict = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "rtt_ms": 2 * args.delay_ms,
                 "args": vars(args) | {"json": str(args.json), "binary": str(binary)}, "runs": []}
    for n in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="failover-bench-") as tmp:
            regions = Regions(Path(tmp) / "chronik", names=(US, EU), brokers=args.brokers, binary=binary,
                              wan={"delay_ms": args.delay_ms}, witness=True,
                              lease={"duration_ms": args.lease_ms, "renew_every_ms": args.renew_ms})
            regions.start()
            load = probe = None
            try:
                topic = "bench-failover"
                create_topic(regions.cluster(US), topic, partitions=args.partitions,
                             replication_factor=min(3, args.brokers),
                             config={"chronik.failover.auto": "true",
                                     "chronik.failover.timeout.ms": str(args.auto_timeout_ms)} if args.auto else {})
                regions.wait_mirrored(topic, args.partitions, home=US, timeout=120)
                load = Writer(regions.bootstrap(US), topic, args.partitions, args.rate,
                              {"enable.idempotence": True, "acks": "all", "message.timeout.ms": 20000}).start()
                wait_until(lambda: len(load.acks) >= 2 * args.rate, 60, what="load acknowledged in us-east")
                probe = Writer(regions.bootstrap(EU), topic, args.partitions, 100,
                               {"acks": "all", "message.timeout.ms": 1000, "retry.backoff.ms": 20}).start()
                regions.kill9_dclink(US)
                for i in list(regions.cluster(US).live_ids()):
                    regions.kill9_broker(US, i)
                killed = time.monotonic()
                if args.auto:
                    wall0 = time.time() - time.monotonic()  # wall = monotonic + wall0
                    wait_until(lambda: probe.acks, 120, what="a probe acknowledged in eu-west")
                    ev = auto_events(regions.dclink(EU).log_text(), wall0)
                    res = {"elapsed_ms": None}
                else:
                    res, ev = failover_timed(regions, topic)
                wait_until(lambda: probe.acks, 60, what="a probe acknowledged in eu-west")
                last_old, first_new = max(load.acks), min(probe.acks)
                run = {
                    "detection_ms": round((ev["decided"] - killed) * 1000),
                    "lease_ms": round((ev["agreed"] - ev["decided"]) * 1000),
                    "promotion_ms": round((first_new - ev["agreed"]) * 1000),
                    "rto_ms": round((first_new - last_old) * 1000),
                    "tool_ms": res["elapsed_ms"],
                }
                out["runs"].append(run)
                print(f"run {n + 1}: {run}", file=sys.stderr)
            finally:
                for w in (load, probe):
                    if w:
                        w.stop.set()
                regions.stop()
    args.json.write_text(json.dumps(out, indent=2))
    runs = out["runs"]
    how = f"automatic (timeout {args.auto_timeout_ms} ms)" if args.auto else "by command"
    print(f"\nfailover {how}; machine {out['machine']}; RTT {out['rtt_ms']} ms; lease {args.lease_ms} ms renewed "
          f"every {args.renew_ms} ms; {args.runs} runs; {args.partitions} partitions; {args.rate} rec/s\n")
    print("| part | p50 (ms) | max (ms) |")
    print("|---|---|---|")
    for k in ("detection_ms", "lease_ms", "promotion_ms", "rto_ms"):
        xs = sorted(r[k] for r in runs)
        print(f"| {k.removesuffix('_ms')} | {pct(xs, 50):.0f} | {xs[-1]:.0f} |")
    print(f"\nfigures: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
