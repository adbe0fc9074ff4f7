#!/usr/bin/env python3
"""metadata-sync benchmark: how fast a config change and an offset commit made in
one region become visible in another, over a simulated WAN, idle and under a
load of offset commits; and the brokers' CPU per commit against a region that
does not sync.

Deployment: two Chronik regions (us-east, eu-west), --brokers each, one dc-link
per region, every cross-region byte through `chronik wan-sim` with --delay-ms
each way (RTT = 2 x delay). One topic homed in us-east, mirrored to eu-west.

Propagation, --samples times each, one at a time:
  config  IncrementalAlterConfigs of retention.ms in us-east; from its
          acknowledgement until eu-west's DescribeConfigs shows the value
          (polled back to back, a few ms per poll).
  commit  OffsetCommit (confluent-kafka, synchronous) of a new offset in
          us-east; from its acknowledgement until eu-west's OffsetFetch
          (ListConsumerGroupOffsets) shows it.
Both are measured idle and while --load-groups other groups commit --load-rate
offsets per second between them in us-east (asynchronous commits, paced). Target: p99 < RTT + 200 ms.

CPU per commit: the us-east brokers' CPU time (utime + stime of the broker
processes, /proc) over --cpu-seconds of --load-rate commits per second,
divided by the commits acknowledged. The peer is a three-broker region of
--baseline-binary (a build without metadata-sync) under the same load, in
the same run; without --baseline-binary only Chronik's own figure is printed.

    bench/meta_sync.sh [--delay-ms 50] [--samples 60] [--load-rate 1000] [--load-groups 4]
                       [--cpu-seconds 20] [--brokers 3] [--baseline-binary PATH]

Prints a Markdown table and writes every figure to --json. Every wait is
bounded; every process started here is stopped when the script exits.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from confluent_kafka import Consumer, ConsumerGroupTopicPartitions, TopicPartition  # noqa: E402
from confluent_kafka.admin import AlterConfigOpType, ConfigEntry, ConfigResource  # noqa: E402

from cluster import ChronikCluster, create_topic  # noqa: E402
from harness import chronik_bin, wait_until  # noqa: E402
from kclient import admin  # noqa: E402
from regions import Regions  # noqa: E402

US, EU = "us-east", "eu-west"


def pct(xs: list[float], p: float) -> float:
    s = sorted(xs)
    return s[min(len(s) - 1, int(round(p / 100 * (len(s) - 1))))]


def describe_value(a, topic: str, name: str) -> str | None:
    (f,) = a.describe_configs([ConfigResource(ConfigResource.Type.TOPIC, topic)]).values()
    e = f.result(timeout=10).get(name)
    return e.value if e else None


def alter(a, topic: str, name: str, value: str) -> None:
    res = a.incremental_alter_configs([ConfigResource(
        ConfigResource.Type.TOPIC, topic,
        incremental_configs=[ConfigEntry(name, value, incremental_operation=AlterConfigOpType.SET)])])
    for f in res.values():
        f.result(timeout=30)


def fetched_offset(a, group: str, topic: str) -> int | None:
    f = a.list_consumer_group_offsets([ConsumerGroupTopicPartitions(group, [TopicPartition(topic, 0)])])[group]
    for tp in f.result(timeout=10).topic_partitions:
        if tp.topic == topic and tp.partition == 0:
            return tp.offset
    return None


def poll_until(pred, timeout: float = 30.0) -> float:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return time.monotonic()
    raise TimeoutError("not visible within %.0f s" % timeout)


def group_client(bootstrap: str, group: str) -> Consumer:
    return Consumer({"bootstrap.servers": bootstrap, "group.id": group, "enable.auto.commit": False})


class CommitLoad:
    """`rate` asynchronous commits per second of increasing offsets (partition 1), spread
    over `groups` groups, each its own client and thread. One librdkafka client has one
    OffsetCommit in flight per coordinator at a time, so a single group tops out at one
    commit per round trip to the controller's quorum (about 400 per second here)."""

    def __init__(self, bootstrap: str, topic: str, rate: int, groups: int = 4) -> None:
        self.topic, self.rate, self.groups = topic, rate, max(1, groups)
        self._acked = [0] * self.groups
        self._failed = [0] * self.groups
        self.stop = threading.Event()
        tag = "%d-%d" % (os.getpid(), time.time_ns())
        self.clients = [Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-load-{tag}-{i}",
                                  "enable.auto.commit": False, "on_commit": self._cb(i)})
                        for i in range(self.groups)]
        self.threads = [threading.Thread(target=self.run, args=(i,), daemon=True) for i in range(self.groups)]

    @property
    def acked(self) -> int:
        return sum(self._acked)

    @property
    def failed(self) -> int:
        return sum(self._failed)

    def _cb(self, i: int):
        def cb(err, _parts) -> None:
            if err:
                self._failed[i] += 1
            else:
                self._acked[i] += 1
        return cb

    def run(self, i: int) -> None:
        c, rate = self.clients[i], self.rate / self.groups
        k = 0
        start = time.monotonic()
        while not self.stop.is_set():
            due = start + k / rate
            now = time.monotonic()
            if now < due:
                c.poll(min(0.002, due - now))
                continue
            k += 1
            try:
                c.commit(offsets=[TopicPartition(self.topic, 1, k)], asynchronous=True)
            except Exception:
                self._failed[i] += 1
            c.poll(0)
        c.poll(1.0)

    def start(self) -> "CommitLoad":
        for t in self.threads:
            t.start()
        return self

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(timeout=30)
        for c in self.clients:
            c.close()


def cpu_seconds(pids: list[int]) -> float:
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / tick


def cpu_per_commit(bootstrap: str, pids: list[int], topic: str, rate: int, seconds: float,
                   groups: int) -> dict:
    load = CommitLoad(bootstrap, topic, rate, groups).start()
    try:
        time.sleep(2.0)  # warm-up: connections, coordinator
        a0, c0, t0 = load.acked, cpu_seconds(pids), time.monotonic()
        time.sleep(seconds)
        a1, c1, t1 = load.acked, cpu_seconds(pids), time.monotonic()
    finally:
        load.close()
    commits = a1 - a0
    return {"commits": commits, "commits_per_s": commits / (t1 - t0), "cpu_s": c1 - c0,
            "cpu_us_per_commit": (c1 - c0) / max(commits, 1) * 1e6, "failed": load.failed}


def measure(regions: Regions, topic: str, samples: int, label: str) -> dict:
    us_admin, eu_admin = admin(regions.bootstrap(US)), admin(regions.bootstrap(EU))
    cfg, com = [], []
    for i in range(samples):
        value = str(10_000_000 + int(time.time_ns() % 1_000_000_000) + i)
        alter(us_admin, topic, "retention.ms", value)
        t_ack = time.monotonic()
        t_vis = poll_until(lambda: describe_value(eu_admin, topic, "retention.ms") == value)
        cfg.append((t_vis - t_ack) * 1000)
    group = "bench-move-%s-%d" % (label, time.time_ns())
    c = group_client(regions.bootstrap(US), group)
    try:
        for i in range(samples):
            off = i + 1
            c.commit(offsets=[TopicPartition(topic, 0, off)], asynchronous=False)
            t_ack = time.monotonic()
            t_vis = poll_until(lambda: fetched_offset(eu_admin, group, topic) == off)
            com.append((t_vis - t_ack) * 1000)
    finally:
        c.close()
    return {"config_ms": cfg, "commit_ms": com}


def summarize(xs: list[float]) -> dict:
    return {"p50": pct(xs, 50), "p99": pct(xs, 99), "max": max(xs), "n": len(xs)}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=int, default=50)
    ap.add_argument("--samples", type=int, default=60)
    ap.add_argument("--load-rate", type=int, default=1000)
    ap.add_argument("--load-groups", type=int, default=4, help="groups the load's commits are spread over")
    ap.add_argument("--cpu-seconds", type=float, default=20.0)
    ap.add_argument("--brokers", type=int, default=3)
    ap.add_argument("--binary", type=Path, default=None)
    ap.add_argument("--baseline-binary", type=Path, default=None)
    ap.add_argument("--json", type=Path, default=Path(f"/tmp/chronik-meta-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"))
    args = ap.parse_args()
    binary = args.binary or chronik_bin()
    rtt = 2 * args.delay_ms
    out: dict = {"machine": f"{platform.node()} {os.cpu_count()} cpus", "rtt_ms": rtt, "args": vars(args) | {
        "json": str(args.json), "binary": str(binary), "baseline_binary": str(args.baseline_binary)}}
    with tempfile.TemporaryDirectory(prefix="meta-bench-") as tmp:
        regions = Regions(Path(tmp) / "chronik", names=(US, EU), brokers=args.brokers, binary=binary,
                          wan={"delay_ms": args.delay_ms})
        regions.start()
        try:
            topic = "bench-meta"
            create_topic(regions.cluster(US), topic, partitions=2, replication_factor=min(3, args.brokers))
            wait_until(lambda: describe_value(admin(regions.bootstrap(EU)), topic, "retention.ms"), 60,
                       what="the mirror topic in eu-west")
            measure(regions, topic, 5, "warmup")
            idle = measure(regions, topic, args.samples, "idle")
            load = CommitLoad(regions.bootstrap(US), topic, args.load_rate, args.load_groups).start()
            try:
                time.sleep(2.0)
                a0 = load.acked
                t0 = time.monotonic()
                loaded = measure(regions, topic, args.samples, "load")
                loaded["load_commits_per_s"] = (load.acked - a0) / (time.monotonic() - t0)
            finally:
                load.close()
            us = regions.cluster(US)
            pids = [us.nodes[i].pid for i in us.live_ids()]
            out["cpu_sync"] = cpu_per_commit(regions.bootstrap(US), pids, topic, args.load_rate, args.cpu_seconds,
                                             args.load_groups)
        finally:
            regions.stop()
        if args.baseline_binary:
            c = ChronikCluster(args.brokers, Path(tmp) / "baseline", binary=args.baseline_binary)
            c.start()
            try:
                create_topic(c, "bench-meta", partitions=2, replication_factor=min(3, args.brokers))
                pids = [c.nodes[i].pid for i in c.live_ids()]
                out["cpu_baseline"] = cpu_per_commit(c.bootstrap_of(c.live_ids()), pids, "bench-meta",
                                                     args.load_rate, args.cpu_seconds, args.load_groups)
            finally:
                c.stop()
    out["idle"] = {k: summarize(v) for k, v in idle.items()}
    out["load"] = {k: summarize(v) for k, v in loaded.items() if k.endswith("_ms")}
    out["load"]["commits_per_s"] = loaded["load_commits_per_s"]
    out["raw"] = {"idle": idle, "load": loaded}
    args.json.write_text(json.dumps(out, indent=2))
    target = rtt + 200
    print(f"\nmetadata-sync propagation, RTT {rtt} ms (target p99 < {target} ms); {args.samples} samples each\n")
    print("| what | p50 ms | p99 ms | max ms |")
    print("|---|---|---|---|")
    for phase in ("idle", "load"):
        for k, name in (("config_ms", "config change"), ("commit_ms", "offset commit")):
            s = out[phase][k]
            extra = f" (load {out['load']['commits_per_s']:.0f} commits/s)" if phase == "load" else ""
            print(f"| {name}, {phase}{extra} | {s['p50']:.0f} | {s['p99']:.0f} | {s['max']:.0f} |")
    print("\n| region | commits/s | CPU µs per commit |")
    print("|---|---|---|")
    for k, name in (("cpu_sync", "with metadata-sync (this build)"), ("cpu_baseline", "without (baseline build)")):
        if k in out:
            print(f"| {name} | {out[k]['commits_per_s']:.0f} | {out[k]['cpu_us_per_commit']:.0f} |")
    if "cpu_baseline" in out:
        print(f"\nratio: {out['cpu_sync']['cpu_us_per_commit'] / out['cpu_baseline']['cpu_us_per_commit']:.2f}x "
              "CPU per commit")
    print(f"\nJSON: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
