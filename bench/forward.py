#!/usr/bin/env python3
"""Write-forwarding benchmark: a producer in eu-west writing a us-east topic through
eu-west's brokers (forwarded over dc-link), against the same producer writing straight to
the us-east brokers across the same simulated WAN, on this machine, in the same run.

Topology (--brokers N per region):

  forward  producer ── eu-west brokers ── eu-west dc-link ══QUIC/UDP══ wan-sim ══> us-east dc-link ── us-east brokers
  direct   producer ══TCP══ wan-sim (one TCP proxy per us-east broker) ══> us-east brokers

Both regions, dc-links and the wan-sim come from bench/dclink.py's Chronik setup (every
dc-link reached only through a wan-sim UDP proxy). The same wan-sim process also holds one
TCP proxy per us-east broker, so both paths cross the same --delay-ms each way. The brokers
advertise their own addresses; the producer (bench/forward-producer, franz-go, built on
demand) is told with --dial-map to dial each us-east broker's proxy instead, so only its
own connections cross the WAN, and the dc-links' connections to their brokers do not.

The producer is the same program on both paths: franz-go's defaults (idempotent,
acks=all, one produce request in flight per broker, batches up to 1 MB), linger 5 ms,
--record-size byte values, round-robin over the topic's --partitions partitions.
--inflight N (> 1) turns idempotence off to allow N requests in flight per broker.

Scenarios, each run on both paths, alternating which goes first, --runs times:

  max    --records records as fast as the producer goes: acknowledged msg/s. CPU seconds
         of the eu-west brokers and dc-link over the run, per record ("the cost of
         forwarding at the forwarding side"), and of the us-east brokers.
  rate   --rate msg/s for --rate-seconds: send-to-ack latency p50 / p99 of every record
         sent after --warmup-seconds.
  local  (once per run) the same max and rate runs to an eu-west topic in eu-west: the
         eu-west brokers' CPU per locally appended record, the yardstick for the forwarding
         cost, and the produce latency without any WAN.

After every run the home's high watermarks must have grown by exactly the acknowledged
count (no record lost or duplicated); the benchmark stops otherwise.

    bench/forward.sh [--runs 3] [--records 200000] [--rate 5000] [--rate-seconds 30]
                     [--delay-ms 50] [--brokers 1] [--partitions 8] [--record-size 1024] [--inflight 1]

Prints a Markdown table and writes every figure to --json (default
/tmp/chronik-forward-bench-<UTC time>.json). Every wait is bounded; every process started
here is stopped when the script exits.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_dclink", BENCH_DIR / "dclink.py")
dl = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(dl)
harness, bc, log, BenchError = dl.harness, dl.bc, dl.log, dl.BenchError

PRODUCER_DIR = BENCH_DIR / "forward-producer"
PRODUCER = PRODUCER_DIR / "forward-producer"
TOPIC, LOCAL_TOPIC = "forward-bench", "local-bench"
HOME, MIRROR = dl.HOME, dl.MIRROR  # the topic's home (us-east) and the producer's region (eu-west)


class ForwardSystem(dl.ChronikSystem):
    kind = "chronik-forward"
    label = "Chronik, forwarding through eu-west"

    def __init__(self, work: Path, args) -> None:
        super().__init__(work, args)
        # us-east broker address -> the wan-sim TCP proxy in front of it (the direct path).
        self.direct = {n.bootstrap: f"{dl.LOOPBACK}:{harness.free_port()}" for n in self.home.nodes}
        self.wansim = dl.WanSim(self.work, self.binary, self.wansim.udp,
                                [(proxy, broker) for broker, proxy in self.direct.items()], args)

    def topology(self) -> Path:
        path = super().topology()
        if self.args.congestion:
            text = path.read_text().replace("[cross_dc]\n", f'[cross_dc]\ncongestion = "{self.args.congestion}"\n', 1)
            path.write_text(text)
        return path

    def start(self) -> None:
        super().start()

        def forwarding_link():
            links = {l["link"]: l for l in self.links[MIRROR].lag()["links"]}
            return links.get(f"{MIRROR}->{HOME}", {}).get("connected")

        dl.wait_for(forwarding_link, 60, f"dc-link {MIRROR}->{HOME} connected through wan-sim", check=self.check_alive)

    def direct_path(self) -> tuple[str, str]:
        """(bootstrap, dial map) of a producer that reaches us-east only through the WAN."""
        return ",".join(self.direct.values()), ",".join(f"{b}={p}" for b, p in self.direct.items())

    def cpu_by_role(self) -> dict[str, float]:
        return {"eu_brokers": sum(bc.cpu_seconds(p) for p in self.mirror.pids()),
                "eu_dclink": bc.cpu_seconds(self.links[MIRROR].pid),
                "us_brokers": sum(bc.cpu_seconds(p) for p in self.home.pids()),
                "us_dclink": bc.cpu_seconds(self.links[HOME].pid),
                "wan_sim": bc.cpu_seconds(self.wansim.pid)}


def build_producer() -> Path:
    sources = [*PRODUCER_DIR.glob("*.go"), PRODUCER_DIR / "go.mod", PRODUCER_DIR / "go.sum"]
    if PRODUCER.exists() and all(s.stat().st_mtime <= PRODUCER.stat().st_mtime for s in sources):
        return PRODUCER
    go = shutil.which("go")
    if go is None:
        raise BenchError("go not found: it builds bench/forward-producer (tests/setup.sh installs it)")
    r = subprocess.run([go, "build", "-o", PRODUCER.name, "."], cwd=PRODUCER_DIR, capture_output=True, text=True,
                       timeout=900)
    if r.returncode != 0:
        raise BenchError(f"building bench/forward-producer failed:\n{r.stdout}{r.stderr}")
    return PRODUCER


def produce(bootstrap: str, topic: str, args, dial_map: str = "", records: int = 0, rate: float = 0,
            seconds: float = 0) -> dict:
    argv = [str(PRODUCER), "--bootstrap", bootstrap, "--topic", topic, "--partitions", str(args.partitions),
            "--record-size", str(args.record_size), "--dial-map", dial_map,
            "--warmup-seconds", str(args.warmup_seconds), "--inflight", str(args.inflight)]
    argv += ["--records", str(records)] if records else ["--rate", str(rate), "--seconds", str(seconds)]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=900)
    line = next((l for l in reversed(r.stdout.splitlines()) if l.startswith("{")), None)
    if r.returncode != 0 or line is None:
        raise BenchError(f"{' '.join(argv)} exited {r.returncode}:\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}")
    return json.loads(line)


def measured(system: ForwardSystem, offsets: dl.Offsets, run) -> dict:
    """Runs `run()` (a producer run), with the CPU each role spent and the check that the
    home log grew by exactly what was acknowledged."""
    hw0, cpu0 = offsets.total(), system.cpu_by_role()
    out = run()
    cpu1 = system.cpu_by_role()
    hw1 = dl.wait_for(lambda: (lambda t: t if t >= hw0 + out["acked"] else None)(offsets.total()), 60,
                      "the home high watermarks to take every acknowledged record", check=system.check_alive)
    if hw1 != hw0 + out["acked"]:
        raise BenchError(f"the home log grew by {hw1 - hw0} records, {out['acked']} were acknowledged")
    out["cpu_us_per_record"] = {k: (cpu1[k] - cpu0[k]) * 1e6 / max(1, out["acked"]) for k in cpu0}
    return out


def run_bench(args) -> dict:
    build_producer()
    work = Path(tempfile.mkdtemp(prefix="chronik-forward-bench-"))
    system = ForwardSystem(work, args)
    res: dict = {"runs": []}
    offsets = {}
    try:
        system.start()
        rf, _ = dl.rf_of(args.brokers)
        dl.create_topic(system.home_bootstrap, TOPIC, args.partitions, rf)
        dl.wait_for(lambda: dl.topic_ready(system.mirror_bootstrap, TOPIC, args.partitions), 60,
                    f"{TOPIC} mirrored in {MIRROR}", interval=0.5, check=system.check_alive)
        dl.create_topic(system.mirror_bootstrap, LOCAL_TOPIC, args.partitions, rf)
        offsets = {TOPIC: dl.Offsets(system.home_bootstrap, TOPIC, args.partitions),
                   LOCAL_TOPIC: dl.Offsets(system.mirror_bootstrap, LOCAL_TOPIC, args.partitions)}
        direct_bs, dial_map = system.direct_path()
        paths = {"forward": (system.mirror_bootstrap, ""), "direct": (direct_bs, dial_map)}
        # Warm-up: connections, metadata, the forward stream.
        for name, (bs, dm) in paths.items():
            produce(bs, TOPIC, args, dm, records=args.warmup_records)
        for i in range(args.runs):
            order = ["forward", "direct"] if i % 2 == 0 else ["direct", "forward"]
            run: dict = {"order": order, "max": {}, "rate": {}}
            for name in order:
                bs, dm = paths[name]
                run["max"][name] = measured(system, offsets[TOPIC],
                                            lambda: produce(bs, TOPIC, args, dm, records=args.records))
                log(f"run {i + 1} max {name}: {run['max'][name]['msgs_per_sec']:,.0f} msg/s")
            run["local"] = measured(system, offsets[LOCAL_TOPIC],
                                    lambda: produce(system.mirror_bootstrap, LOCAL_TOPIC, args, records=args.records))
            log(f"run {i + 1} max local (eu-west topic): {run['local']['msgs_per_sec']:,.0f} msg/s")
            for name in order:
                bs, dm = paths[name]
                run["rate"][name] = measured(system, offsets[TOPIC],
                                             lambda: produce(bs, TOPIC, args, dm, rate=args.rate,
                                                             seconds=args.rate_seconds))
                lat = run["rate"][name]["latency_ms"]
                log(f"run {i + 1} {args.rate} msg/s {name}: p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms")
            run["rate_local"] = measured(system, offsets[LOCAL_TOPIC],
                                         lambda: produce(system.mirror_bootstrap, LOCAL_TOPIC, args, rate=args.rate,
                                                         seconds=args.rate_seconds))
            lat = run["rate_local"]["latency_ms"]
            log(f"run {i + 1} {args.rate} msg/s local (eu-west topic, no WAN): p50 {lat['p50']:.1f} ms "
                f"p99 {lat['p99']:.1f} ms")
            run["loadavg"] = os.getloadavg()
            res["runs"].append(run)
        res["link"] = system.links[MIRROR].lag()
        return res
    finally:
        for o in offsets.values():
            o.close()
        system.stop()
        if not args.keep_work:
            shutil.rmtree(work, ignore_errors=True)


def med(xs):
    return statistics.median(xs) if xs else None


def report(results: dict) -> str:
    a, m, runs = results["args"], results["machine"], results["runs"]
    rtt = 2 * a["delay_ms"]
    lines = [f"**Command** `{results['command']}`", "",
             f"**Machine** {m['nproc']} CPUs ({m['cpu_model']}), {m['mem_gib']} GiB, Linux {m['kernel']}; Chronik "
             f"{m['git']}; load average at start {' '.join(m['loadavg_at_start'])}, at end "
             f"{' '.join(f'{x:.2f}' for x in results['loadavg_at_end'])}", "",
             f"WAN: wan-sim {a['delay_ms']} ms each way (RTT {rtt:g} ms) on both paths; {a['brokers']} broker(s) per "
             f"region, {a['partitions']} partitions, {a['record_size']} B records; producer franz-go, "
             f"acks=all, linger 5 ms, " + ("idempotent (one request in flight per broker)." if a.get("inflight", 1) <= 1
                                           else f"{a['inflight']} requests in flight per broker, idempotence off."), "",
             "| run | forward msg/s | direct msg/s | **forward / direct** | forward p50 / p99 ms | "
             "direct p50 / p99 ms | local p50 / p99 ms | eu-west broker µs/rec forward / local | "
             "eu-west dc-link µs/rec |",
             "|---|---|---|---|---|---|---|---|---|"]
    for i, r in enumerate(runs, 1):
        f, d, fr, dr = r["max"]["forward"], r["max"]["direct"], r["rate"]["forward"], r["rate"]["direct"]
        lines.append(
            f"| {i} | {f['msgs_per_sec']:,.0f} | {d['msgs_per_sec']:,.0f} | **{f['msgs_per_sec'] / d['msgs_per_sec']:.2f}** | "
            f"{fr['latency_ms']['p50']:.1f} / {fr['latency_ms']['p99']:.1f} | "
            f"{dr['latency_ms']['p50']:.1f} / {dr['latency_ms']['p99']:.1f} | "
            + (f"{r['rate_local']['latency_ms']['p50']:.1f} / {r['rate_local']['latency_ms']['p99']:.1f} | "
               if "rate_local" in r else "– | ")
            + f"{f['cpu_us_per_record']['eu_brokers']:.1f} / {r['local']['cpu_us_per_record']['eu_brokers']:.1f} | "
            f"{f['cpu_us_per_record']['eu_dclink']:.1f} |")
    tput = med([r["max"]["forward"]["msgs_per_sec"] / r["max"]["direct"]["msgs_per_sec"] for r in runs])
    p50f = med([r["rate"]["forward"]["latency_ms"]["p50"] for r in runs])
    p50d = med([r["rate"]["direct"]["latency_ms"]["p50"] for r in runs])
    p99f = med([r["rate"]["forward"]["latency_ms"]["p99"] for r in runs])
    lines += ["", f"Medians: throughput forward / direct **{tput:.2f}** (target >= 1.5); p50 forward {p50f:.1f} ms vs "
              f"direct {p50d:.1f} ms (target <=); p99 forward {p99f:.1f} ms (target <= RTT + 50 = {rtt + 50:g} ms)."]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--warmup-records", type=int, default=20_000)
    ap.add_argument("--rate", type=float, default=5000)
    ap.add_argument("--rate-seconds", type=float, default=30)
    ap.add_argument("--warmup-seconds", type=float, default=5)
    ap.add_argument("--delay-ms", type=float, default=50)
    ap.add_argument("--jitter-ms", type=float, default=0)
    ap.add_argument("--loss", type=float, default=0)
    ap.add_argument("--bandwidth-mbit", type=float, default=0)
    ap.add_argument("--brokers", type=int, default=1)
    ap.add_argument("--partitions", type=int, default=8)
    ap.add_argument("--record-size", type=int, default=1024)
    ap.add_argument("--inflight", type=int, default=1,
                    help="produce requests in flight per broker (1: franz-go's idempotent producer; more: "
                         "idempotence off, as franz-go allows one in flight with it)")
    ap.add_argument("--congestion", choices=["bbr", "cubic"], help="cross_dc.congestion (default: the topology's)")
    ap.add_argument("--chronik-bin", type=Path, default=dl.default_chronik_bin())
    ap.add_argument("--chronik-start-timeout", type=float, default=120)
    ap.add_argument("--keep-work", action="store_true", help="keep the processes' logs and data")
    ap.add_argument("--json", type=Path,
                    default=Path(f"/tmp/chronik-forward-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"))
    ap.add_argument("--report", type=Path, help="print the table of an earlier --json file and exit")
    args = ap.parse_args(argv)
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    if not args.chronik_bin.exists():
        raise SystemExit(f"chronik binary not found at {args.chronik_bin} (build it or set CHRONIK_BIN)")
    results = {"command": " ".join([os.environ.get("CHRONIK_BENCH_ENTRY", "bench/forward.py"), *(argv or sys.argv[1:])]),
               "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
               "machine": bc.machine_info(), "binary": dl.binary_identity(args.chronik_bin)}
    results.update(run_bench(args))
    results["loadavg_at_end"] = os.getloadavg()
    args.json.write_text(json.dumps(results, indent=1))
    print(report(results))
    log(f"results: {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
