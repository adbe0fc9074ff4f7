#!/usr/bin/env python3
"""Switchover benchmark: the write pause of `chronik ctl switchover` under load, over a
simulated WAN.

Deployment: two Chronik regions (us-east, eu-west), --brokers each, one dc-link per
region, every cross-region byte through `chronik wan-sim` with --delay-ms each way
(RTT = 2 x delay). One topic with --partitions partitions, created in us-east.

Each of --moves switchovers alternates the home (us-east -> eu-west -> us-east ...).
During each, an idempotent producer writes --rate records per second to the current
home, and a probe producer sends one record every 10 ms to the target region (1 s
message timeout, so its failures before the move do not pile up). Measured per move:

  tool pause    what `chronik ctl switchover --json` reports: from the fence being
                recorded to every partition promoted in the target.
  client pause  from the last record the old home acknowledged to the first record
                the new home acknowledged (the probe): the time no region took writes,
                as clients saw it, including their metadata refreshes.

Target (docs/benchmarks.md): p99 < 5 s, aiming at < 1 s, at 100 ms RTT.

    bench/switchover.sh [--delay-ms 50] [--moves 10] [--rate 500] [--partitions 3] [--brokers 3]

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

from confluent_kafka import Producer  # noqa: E402

from cluster import create_topic  # noqa: E402
from harness import chronik_bin, wait_until  # noqa: E402
from meta_sync import pct  # noqa: E402  (bench/ is the script's directory)
from regions import Regions  # noqa: E402

US, EU = "us-east", "eu-west"


class Writer:
    """Sends to `bootstrap` at `rate` per second (or one every `every` s) until stopped;
    keeps the monotonic time of every acknowledgement."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float, conf: dict) -> None:
        self.topic, self.partitions, self.every = topic, partitions, 1.0 / rate
        self.acks: list[float] = []
        self.errors = 0
        self.stop = threading.Event()
        self.p = Producer({"bootstrap.servers": bootstrap, "linger.ms": 0, "compression.type": "none", **conf})
        self.t = threading.Thread(target=self.run, daemon=True)

    def cb(self, err, msg):
        if err is None:
            self.acks.append(time.monotonic())
        else:
            self.errors += 1

    def run(self):
        i, nxt = 0, time.monotonic()
        while not self.stop.is_set() and i < 10_000_000:
            try:
                self.p.produce(self.topic, b"x%d" % i, partition=i % self.partitions, on_delivery=self.cb)
                i += 1
            except BufferError:
                pass
            self.p.poll(0)
            nxt += self.every
            time.sleep(max(0.0, nxt - time.monotonic()))
        self.p.flush(30)

    def start(self) -> "Writer":
        self.t.start()
        return self

    def close(self) -> None:
        self.stop.set()
        self.t.join(60)


def switchover(regions: Regions, to: str, topic: str) -> dict:
    args = []
    for r in regions.names:
        c = regions.cluster(r)
        for i in c.live_ids():
            args += ["--broker", c.admin_url(i).removeprefix("http://")]
    out = subprocess.run([str(regions.binary), "ctl", "switchover", "--to", to, "--topic", topic, "--json", *args],
                         capture_output=True, text=True, timeout=300)
    if out.returncode != 0:
        raise RuntimeError(f"switchover to {to} failed: {out.stderr}")
    return json.loads(out.stdout)["topics"][0]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--moves", type=int, default=10)
    ap.add_argument("--rate", type=int, default=500)
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--brokers", type=int, default=3)
    ap.add_argument("--binary", type=Path, default=None)
    ap.add_argument("--json", type=Path,
                    default=Path(f"/tmp/chronik-switchover-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"))
    args = ap.parse_args()
    binary = args.binary or chronik_bin()
    rtt = 2 * args.delay_ms
    out: dict = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "rtt_ms": rtt,
                 "args": vars(args) | {"json": str(args.json), "binary": str(binary)}, "moves": []}
    with tempfile.TemporaryDirectory(prefix="switchover-bench-") as tmp:
        regions = Regions(Path(tmp) / "chronik", names=(US, EU), brokers=args.brokers, binary=binary,
                          wan={"delay_ms": args.delay_ms})
        regions.start()
        try:
            topic = "bench-switchover"
            create_topic(regions.cluster(US), topic, partitions=args.partitions,
                         replication_factor=min(3, args.brokers))
            regions.wait_mirrored(topic, args.partitions, home=US, timeout=120)
            home = US
            for n in range(args.moves):
                to = EU if home == US else US
                load = Writer(regions.bootstrap(home), topic, args.partitions, args.rate,
                              {"enable.idempotence": True, "acks": "all", "message.timeout.ms": 20000}).start()
                probe = Writer(regions.bootstrap(to), topic, args.partitions, 100,
                               {"acks": "all", "message.timeout.ms": 1000, "retry.backoff.ms": 20}).start()
                wait_until(lambda: len(load.acks) >= args.rate, 60, what=f"load acknowledged in {home}")
                res = switchover(regions, to, topic)
                wait_until(lambda: probe.acks, 60, what=f"a probe acknowledged in {to}")
                load.close()
                probe.close()
                last_old = max(load.acks)
                first_new = min(probe.acks)
                move = {"from": home, "to": to, "tool_pause_ms": res["write_pause_ms"],
                        "client_pause_ms": round((first_new - last_old) * 1000, 1),
                        "old_home_acks": len(load.acks)}
                out["moves"].append(move)
                print(f"move {n + 1}: {home} -> {to}: tool {move['tool_pause_ms']} ms, "
                      f"client {move['client_pause_ms']} ms", file=sys.stderr)
                home = to
        finally:
            regions.stop()
    tool = [m["tool_pause_ms"] for m in out["moves"]]
    client = [m["client_pause_ms"] for m in out["moves"]]
    out["tool_pause_ms"] = {"p50": pct(tool, 50), "p99": pct(tool, 99), "max": max(tool)}
    out["client_pause_ms"] = {"p50": pct(client, 50), "p99": pct(client, 99), "max": max(client)}
    args.json.write_text(json.dumps(out, indent=2))
    print(f"\nswitchover write pause, RTT {rtt} ms, {args.moves} moves under {args.rate} records/s "
          f"(target p99 < 5000 ms, aim < 1000 ms)\n")
    print("| pause | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for k, name in (("tool_pause_ms", "fence to promotion (ctl)"), ("client_pause_ms", "last old-home ack to first new-home ack (clients)")):
        s = out[k]
        print(f"| {name} | {s['p50']:.0f} | {s['p99']:.0f} | {s['max']:.0f} |")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
