#!/usr/bin/env python3
"""TLS cost: produce and consume throughput over TLS against plaintext, for
Chronik and Apache Kafka in the same run.

Each system runs one broker with a PLAINTEXT and a TLS listener (server
certificate from `chronik certs`, no client certificates; tests/secure.py
configures both systems the same way). Per listener: Kafka's
ProducerPerformance (1 KiB records, acks=all, linger 5 ms, 64 KiB batches,
one partition) as fast as it goes, then kcat (librdkafka) reading the
records back from partition 0. The figure of merit is each system's TLS
throughput as a share of its own plaintext throughput.

Durability as in bench/run.py's `replicated` pairing: Chronik
durability=replicated against Kafka's defaults (page cache). Kafka's JVM
runs with its full JIT (C2) and a 1 GiB heap: the tests' C1-only JVM lacks
the AES-GCM intrinsics and would make Kafka's TLS look far worse than it is.

    bench/tls.py [--records 200000] [--rounds 3] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))
sys.path.insert(0, str(HERE))
import harness  # noqa: E402
from run import alternating_rounds, consume_perf, create_topic, median, producer_perf  # noqa: E402
from secure import Certs, start_secure  # noqa: E402


def run_system(kind: str, work: Path, certs: Certs, records: int) -> dict:
    binary = harness.chronik_bin() if kind == "chronik" else None
    b = start_secure(kind, Path(tempfile.mkdtemp(prefix=f"{kind}-", dir=work)), certs, binary=binary,
                     chronik_config={"durability": "replicated"},
                     kafka_jvm={"heap": "1g", "full_jit": True})
    java_tls = {"security.protocol": "SSL", "ssl.truststore.type": "PEM", "ssl.truststore.location": str(certs.ca)}
    rdkafka_tls = {"security.protocol": "SSL", "ssl.ca.location": str(certs.ca)}
    try:
        out = {}
        # Plaintext and TLS alternate which goes first from round to round (the caller
        # reverses the system order); here plaintext first, warm-up on both.
        for name, listener, jprops, rprops in (("plaintext", "PLAINTEXT", {}, {}),
                                               ("tls", "TLS", java_tls, rdkafka_tls)):
            topic = f"bench-{name}"
            create_topic(b.bootstrap(), topic)
            producer_perf(b.bootstrap(listener), f"{topic}-warm", min(records, 20000), -1, jprops)
            out[name] = {"produce": producer_perf(b.bootstrap(listener), topic, records, -1, jprops),
                         "consume": consume_perf(b.bootstrap(listener), topic, records, rprops)}
        return out
    finally:
        b.proc.stop()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="chronik-tls-bench-") as tmp:
        work = Path(tmp)
        certs = Certs(harness.chronik_bin(), work)
        res = alternating_rounds(args.rounds, lambda k: run_system(k, work, certs, args.records))
    print(f"\nmachine: {res['machine']}; started {res['started']}; load {res['load_start']} -> {res['load_end']}; "
          f"median of {args.rounds} rounds, {args.records} records of 1 KiB\n")
    print("| system | produce plaintext msg/s | produce TLS msg/s | **TLS / plaintext** | consume plaintext msg/s "
          "| consume TLS msg/s | **TLS / plaintext** |")
    print("|---|---|---|---|---|---|---|")
    for kind in ("kafka", "chronik"):
        row = [kind]
        for phase in ("produce", "consume"):
            p = median([r[kind]["plaintext"][phase]["msg_s"] for r in res["rounds"]])
            t = median([r[kind]["tls"][phase]["msg_s"] for r in res["rounds"]])
            ratios = [r[kind]["tls"][phase]["msg_s"] / r[kind]["plaintext"][phase]["msg_s"] for r in res["rounds"]]
            row += [f"{p:,.0f}", f"{t:,.0f}", f"**{median(ratios):.2f}**"]
        print("| " + " | ".join(row) + " |")
    print("\nper round (TLS / plaintext, produce and consume):")
    for i, r in enumerate(res["rounds"], 1):
        print(f"  round {i}: " + ", ".join(
            f"{k} {r[k]['tls']['produce']['msg_s'] / r[k]['plaintext']['produce']['msg_s']:.2f} / "
            f"{r[k]['tls']['consume']['msg_s'] / r[k]['plaintext']['consume']['msg_s']:.2f}" for k in r))
    if args.json:
        args.json.write_text(json.dumps(res, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
