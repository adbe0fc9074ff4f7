#!/usr/bin/env python3
"""Region-loss drill benchmark: the RPO, RTO and records recovered of `chronik ctl drill
region-loss` under load, against Apache Kafka + MirrorMaker 2 losing its source cluster,
measured in the same run on this machine.

Chronik (one deployment for every run): `chronik dev --nodes 1` (two regions, us-east and
eu-west, one broker and one dc-link each, no witness, all on loopback, no WAN delay). One
topic of --partitions partitions is created in us-east. An idempotent acks=all producer
(confluent-kafka, one record every 1/--rate s round-robin over the partitions, each record
a unique value and its producer timestamp, message.timeout.ms = --delivery-timeout-ms)
writes to us-east for the whole benchmark and keeps every acknowledged (partition, offset,
value). After --warmup-s seconds of acknowledged load and once eu-west's high watermarks
reach us-east's (waited for by condition), `chronik ctl drill region-loss --region us-east
--json` runs --runs times in a row on the same deployment (after each the home is back in
us-east; the next drill starts once the producer is acknowledged in us-east again and the
mirror has caught up). Per run, from the drill's JSON report:

  rto_ms                kill -> every partition homed in eu-west (forced failover: two
                        regions and no witness, so no majority without us-east)
  lost_at_failover      records us-east acknowledged before the kill that eu-west lacked
                        when it took over (kept by the failback in the recovery topic)
  rpo_ms                how long before the kill the oldest of them was written
  records_recovered     every record the failback moved to __chronik.divergent.<topic>
  taken_after_restart   of those, records us-east took after its restart and before it
                        learnt eu-west was home (two lease voters: nothing stops it)
  switch_back_pause_ms  the write pause of the switchover back to us-east
  steps                 took_ms of kill, failover, verify, restore, failback, switch back,
                        verify logs

The client's own view is computed alongside: the recovery topic's records (matched to a run
by their timestamps) split at the kill, and how many of them had been acknowledged.

No-loss check (after all drills of a deployment, before any figure is printed): the
producer is stopped and flushed; us-east's topic and eu-west's recovery topic are read to
their high watermarks; every value the producer got an acknowledgement for must be in one
of them. A missing record is put to the drill whose end first follows its timestamp (the
mirror catches up between drills, so older records are not at stake). If any is missing
the benchmark says so loudly (which drills, how many, how many written before the kill),
leaves those drills' figures out of the table, and exits with status 3. With --fresh each
drill gets its own deployment (and check), so an earlier drill's recovery topic cannot
interfere with a later one's.

Peer (--peer-runs times, a fresh setup each): two one-broker Apache Kafka clusters (src,
dst, KRaft, stock JVM flags; bench/dclink.py's KafkaRegion) and MirrorMaker 2 (dedicated
mode, IdentityReplicationPolicy, stock profile of bench/mm2/mm2.properties.in, src -> dst,
tasks.max = partitions), on loopback, no WAN delay. The same topic, the same producer at
the same rate into src; the same warm-up (dst's high watermarks reach src's). Then the src
broker is killed with -9 and the producer stopped; once dst's end offsets stop growing
(unchanged for --settle-s, at most --peer-wait-s after the kill), dst's topic is read to
its high watermark:

  lost       records src acknowledged that dst never received (the RPO in records)
  rpo_ms     kill time minus the producer timestamp of the oldest of them
  RTO        not comparable: MM2 has no failover command; clients are repointed to dst
             by hand (or by a tool outside Kafka), so there is no time to measure
  recovered  0 by construction: src's unmirrored records are reachable only by bringing
             src back and reading it by hand; MM2 has no failback

    bench/drill.sh [--runs 3] [--fresh] [--peer-runs 3] [--rate 500] [--partitions 3]
                   [--warmup-s 5] [--system chronik|mm2|both]

Prints a Markdown table and writes every figure to --json. Every wait is bounded; every
process started here is stopped when the script exits (`chronik dev` with SIGTERM: it stops
its children and the processes the drill restarted).
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent
REPO = BENCH_DIR.parent
sys.path.insert(0, str(REPO / "tests"))

from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition  # noqa: E402

import harness  # noqa: E402
from dclink import (KafkaRegion, MirrorMaker2, bc, create_topic, default_chronik_bin,  # noqa: E402
                    topic_ready, wait_for)
from meta_sync import pct  # noqa: E402

US, EU = "us-east", "eu-west"
TOPIC = "bench-drill"
RECOVERY = f"__chronik.divergent.{TOPIC}"
STEPS = ("kill", "failover", "verify", "restore", "failback", "switch back", "verify logs")
log = bc.log
BenchError = bc.BenchError


def now_ms() -> int:
    return int(time.time() * 1000)


# ---------------------------------------------------------------------------
# Load
# ---------------------------------------------------------------------------


class Load:
    """An idempotent acks=all producer at a fixed rate; keeps every acknowledged record.

    acked[value] = (partition, offset, timestamp_ms, ack_monotonic). Values are unique
    (b"<tag>-<n>"); each record carries the producer's wall-clock timestamp (ms), so its age
    at a kill is known on both systems. If the producer hits a fatal error (idempotence
    state it cannot recover), it is replaced by a new one and the event is counted."""

    def __init__(self, bootstrap: str, topic: str, partitions: int, rate: float, tag: str,
                 delivery_timeout_ms: int, log_path: Path) -> None:
        self.bootstrap, self.topic, self.partitions = bootstrap, topic, partitions
        self.every, self.tag = 1.0 / rate, tag
        self.conf = {"bootstrap.servers": bootstrap, "enable.idempotence": True, "acks": "all",
                     "linger.ms": 5, "compression.type": "none", "message.timeout.ms": delivery_timeout_ms}
        self.acked: dict[bytes, tuple[int, int, int, float]] = {}
        self.sent: dict[bytes, int] = {}  # value -> timestamp_ms, every record handed to the client
        self.errors: Counter = Counter()
        self.fatal: list[str] = []
        self.replaced = 0
        self._fatal_flag = threading.Event()
        self.stop_evt = threading.Event()
        self.unflushed: int | None = None
        self.error: BaseException | None = None
        self._log = open(log_path, "a")
        self.p = self._producer()
        self.t = threading.Thread(target=self._run, daemon=True, name=f"load-{tag}")

    def _producer(self) -> Producer:
        import logging

        lg = logging.getLogger(f"rdkafka-{self.tag}-{self.replaced}")
        lg.propagate = False
        h = logging.StreamHandler(self._log)
        h.setFormatter(logging.Formatter("%(asctime)s %(message)s"))
        lg.addHandler(h)
        lg.setLevel(logging.INFO)
        return Producer({**self.conf, "logger": lg})

    def _cb(self, err, msg) -> None:
        if err is None:
            self.acked[msg.value()] = (msg.partition(), msg.offset(), msg.timestamp()[1], time.monotonic())
        else:
            self.errors[err.name()] += 1
            if err.fatal():
                self.fatal.append(str(err))
                self._fatal_flag.set()

    def _run(self) -> None:
        try:
            i, nxt = 0, time.monotonic()
            while not self.stop_evt.is_set() and i < 50_000_000:
                if self._fatal_flag.is_set():
                    # A fatal producer fails everything it holds; start a new one.
                    self._fatal_flag.clear()
                    self.p.flush(5)
                    self.replaced += 1
                    self.p = self._producer()
                v = b"%s-%d" % (self.tag.encode(), i)
                ts = now_ms()
                try:
                    self.p.produce(self.topic, v, partition=i % self.partitions, timestamp=ts, on_delivery=self._cb)
                    self.sent[v] = ts
                    i += 1
                except BufferError:
                    self.errors["local queue full"] += 1
                except KafkaException as e:
                    self.errors[f"produce: {e}"] += 1
                self.p.poll(0)
                nxt += self.every
                delay = nxt - time.monotonic()
                if delay > 0:
                    self.p.poll(delay)  # serve callbacks while pacing
                elif delay < -1.0:
                    nxt = time.monotonic()  # fell behind (a stall): do not burst to catch up
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            self.error = e

    def start(self) -> "Load":
        self.t.start()
        return self

    def acks_after(self, t: float) -> int:
        return sum(1 for a in list(self.acked.values()) if a[3] > t)

    def stop(self, flush_s: float) -> None:
        """Stop producing; wait up to `flush_s` for outstanding reports."""
        self.stop_evt.set()
        self.t.join(30)
        self.unflushed = self.p.flush(flush_s)

    def abandon(self) -> None:
        """Stop producing and drop what is outstanding (its reports are errors, not acks)."""
        self.stop_evt.set()
        self.t.join(30)
        try:
            self.p.purge()
        except Exception:  # noqa: BLE001
            pass
        self.unflushed = self.p.flush(5)

    def close(self) -> None:
        try:
            self._log.close()
        except OSError:
            pass


def high_watermarks(bootstrap: str, topic: str, timeout: float = 10.0) -> dict[int, int]:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "drill-bench-hw", "enable.auto.commit": False,
                  "log_level": 0})
    try:
        md = c.list_topics(topic, timeout=timeout).topics.get(topic)
        if md is None or md.error is not None:
            raise BenchError(f"{topic} at {bootstrap}: {md.error if md else 'no metadata'}")
        return {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=timeout, cached=False)[1]
                for p in md.partitions}
    finally:
        c.close()


def read_all(bootstrap: str, topic: str, timeout: float) -> dict[bytes, list[tuple[int, int]]]:
    """Every record of `topic` from the start to the high watermark of each partition (read
    when this starts): {value: [(partition, offset), ...]}."""
    hw = wait_for(lambda: high_watermarks(bootstrap, topic), 60, f"high watermarks of {topic} at {bootstrap}")
    out: dict[bytes, list[tuple[int, int]]] = {}
    todo = {p: h for p, h in hw.items() if h > 0}
    if not todo:
        return out
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": "drill-bench-read", "enable.auto.commit": False,
                  "enable.partition.eof": False, "log_level": 0, "fetch.max.bytes": 16 << 20})
    try:
        c.assign([TopicPartition(topic, p, 0) for p in todo])
        pos = {p: -1 for p in todo}
        deadline = time.monotonic() + timeout
        while any(pos[p] < todo[p] - 1 for p in todo):
            if time.monotonic() > deadline:
                raise BenchError(f"reading {topic} at {bootstrap}: at {pos} of high watermarks {todo} "
                                 f"after {timeout:.0f}s")
            for m in c.consume(5000, 0.5):
                if m.error():
                    continue
                out.setdefault(m.value(), []).append((m.partition(), m.offset()))
                pos[m.partition()] = max(pos[m.partition()], m.offset())
    finally:
        c.close()
    return out


def wait_mirrored(src: str, dst: str, topic: str, timeout: float, what: str, check=None) -> None:
    """dst's high watermarks reach src's, as read once when this starts (the load goes on)."""
    target = wait_for(lambda: high_watermarks(src, topic), 60, f"high watermarks of {topic} at {src}")

    def caught_up():
        got = high_watermarks(dst, topic)
        return all(got.get(p, 0) >= h for p, h in target.items())

    wait_for(caught_up, timeout, f"the mirror to catch up ({what})", interval=0.2, check=check)


# ---------------------------------------------------------------------------
# Chronik: chronik dev and the drill
# ---------------------------------------------------------------------------


class Dev:
    """`chronik dev --nodes 1` in `work`, in its own session. Stopped with SIGTERM to the
    supervisor alone (it stops its children and the processes the drill restarted); any
    process dev.json names that still runs after that is killed by its pid."""

    def __init__(self, binary: Path, work: Path) -> None:
        self.binary, self.work = binary, work
        self.dir = work / "chronik-dev"
        self.base = harness.free_dev_base()
        self.log_path = work / "dev.log"
        self.proc: subprocess.Popen | None = None
        self.dev: dict = {}

    def start(self, timeout: float = 120) -> "Dev":
        self._log = open(self.log_path, "ab")
        self.proc = subprocess.Popen([str(self.binary), "dev", "--nodes", "1", "--base-port", str(self.base),
                                      "--data-dir", str(self.dir)], cwd=self.work, stdin=subprocess.DEVNULL,
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)

        def up():
            self.check_alive()
            return (self.dir / "dev.json").exists()

        wait_for(up, timeout, "chronik dev ready (dev.json written)", interval=0.3)
        self.dev = json.loads((self.dir / "dev.json").read_text())
        return self

    def bootstrap(self, region: str) -> str:
        return next(r["bootstrap"] for r in self.dev["regions"] if r["name"] == region)

    def check_alive(self) -> None:
        if self.proc and self.proc.poll() is not None:
            raise BenchError(f"chronik dev exited with {self.proc.returncode}:\n{harness.tail(self.log_path, 40)}")

    def _named(self) -> list[tuple[int, str]]:
        """(pid, config) of every process dev.json names now."""
        try:
            d = json.loads((self.dir / "dev.json").read_text())
        except (OSError, ValueError):
            d = self.dev
        out = []
        for r in d.get("regions", []):
            for b in r.get("brokers", []):
                out.append((b["pid"], b["config"]))
            if r.get("dc_link"):
                out.append((r["dc_link"]["pid"], r["dc_link"]["config"]))
        return out

    @staticmethod
    def _runs(pid: int, config: str) -> bool:
        try:
            return config.encode() in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            return False

    def stop(self) -> list[str]:
        """Returns what had to be killed by hand (nothing, normally)."""
        if self.proc is None:
            return []
        named = self._named()
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        leftovers = []
        for pid, config in named:
            if self._runs(pid, config):
                leftovers.append(f"{pid} ({config})")
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self._log.close()
        return leftovers


def run_drill(binary: Path, dev: Dev, out_dir: Path, n: int, timeout: float) -> tuple[dict, dict]:
    """Runs the drill; returns (its JSON report, {"started", "kill", "ended"}: wall ms, the
    kill's from the moment its progress line arrived)."""
    argv = [str(binary), "ctl", "drill", "region-loss", "--dev-dir", str(dev.dir), "--region", US,
            "--topic", TOPIC, "--json"]
    times = {"started": now_ms()}
    err_path = out_dir / f"drill-{n}.stderr"
    p = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL)
    lines: list[str] = []

    def read_err():
        for line in p.stderr:
            lines.append(line)
            if "kill: stopping" in line:
                times.setdefault("kill", now_ms())

    t = threading.Thread(target=read_err, daemon=True)
    t.start()
    try:
        out, _ = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait(10)
        raise BenchError(f"drill {n} still running after {timeout:.0f}s:\n{''.join(lines[-30:])}")
    t.join(10)
    times["ended"] = now_ms()
    err_path.write_text("".join(lines))
    if p.returncode != 0:
        raise BenchError(f"drill {n} failed ({p.returncode}):\n{''.join(lines[-40:])}")
    return json.loads(out), times


def chronik_side(args, binary: Path, work: Path, out_dir: Path) -> dict:
    """--runs drills on one deployment, or (--fresh) one drill on each of --runs deployments."""
    plan = [1] * args.runs if args.fresh else [args.runs]
    res: dict = {"deployments": [], "runs": []}
    n0 = 0
    for d, runs in enumerate(plan, 1):
        dep = chronik_deployment(args, binary, work / f"chronik-{d}", out_dir, n0, runs)
        res["deployments"].append(dep)
        for r in dep["runs"]:
            r["deployment"] = d
        res["runs"] += dep["runs"]
        n0 += runs
    res["no_loss_ok"] = all(dep["no_loss"]["ok"] for dep in res["deployments"])
    return res


def chronik_deployment(args, binary: Path, work: Path, out_dir: Path, n0: int, runs: int) -> dict:
    res: dict = {"runs": []}
    work.mkdir(parents=True, exist_ok=True)
    dev = Dev(binary, work)
    load = None
    try:
        t0 = time.monotonic()
        dev.start()
        us, eu = dev.bootstrap(US), dev.bootstrap(EU)
        log(f"chronik: dev up in {time.monotonic() - t0:.1f}s (us-east {us}, eu-west {eu}, base port {dev.base})")
        create_topic(us, TOPIC, args.partitions, 1)
        wait_for(lambda: topic_ready(eu, TOPIC, args.partitions), 120, f"{TOPIC} mirrored to eu-west",
                 interval=0.5, check=dev.check_alive)
        load = Load(us, TOPIC, args.partitions, args.rate, f"c{n0 + 1}", args.delivery_timeout_ms,
                    out_dir / f"chronik-{n0 + 1}-producer.log").start()
        wait_for(lambda: len(load.acked) >= args.warmup_s * args.rate, args.warmup_s + 60,
                 "warm-up load acknowledged in us-east", check=dev.check_alive)
        wait_mirrored(us, eu, TOPIC, 60, "warm-up", check=dev.check_alive)
        log(f"chronik: warm-up done ({len(load.acked)} acknowledged, mirror caught up)")
        for n in range(n0 + 1, n0 + runs + 1):
            time.sleep(args.steady_s)  # steady load, no backlog, then the drill (as before the MM2 kill)
            report, times = run_drill(binary, dev, out_dir, n, args.drill_timeout_s)
            (out_dir / f"drill-{n}.json").write_text(json.dumps(report, indent=2))
            run = {k: report.get(k) for k in ("rto_ms", "at_risk_records", "lost_at_failover", "rpo_ms",
                                              "records_recovered", "taken_after_restart", "switch_back_pause_ms")}
            run["steps_ms"] = {s["step"]: s["took_ms"] for s in report.get("steps", [])}
            run["copied_before"] = sum(f.get("records_recovered", 0) - f.get("copied_now", 0)
                                       for f in report.get("failback", []))
            run["times"] = times
            run["drill_wall_ms"] = times["ended"] - times["started"]
            run["n"] = n
            res["runs"].append(run)
            log(f"chronik: drill {n}: RTO {run['rto_ms']} ms, lost at failover {run['lost_at_failover']} "
                f"(RPO {run['rpo_ms']} ms), recovered {run['records_recovered']} (taken after restart "
                f"{run['taken_after_restart']}; counted as copied by an earlier failback {run['copied_before']}), "
                f"switch-back pause {run['switch_back_pause_ms']} ms; steps {run['steps_ms']}")
            # Back to the starting shape: the producer acknowledged in us-east again, the mirror caught up.
            after = time.monotonic()
            wait_for(lambda: load.acks_after(after) >= args.rate, args.delivery_timeout_ms / 1000 + 60,
                     f"the producer acknowledged in us-east after drill {n}", check=dev.check_alive)
            wait_mirrored(us, eu, TOPIC, 120, f"after drill {n}", check=dev.check_alive)
        load.stop(args.delivery_timeout_ms / 1000 + 10)
        log(f"chronik: producer stopped: {len(load.sent)} sent, {len(load.acked)} acknowledged, "
            f"{load.unflushed} unreported, errors {dict(load.errors)}, replaced after a fatal error {load.replaced}")
        res.update(check_no_loss(load, us, eu, res["runs"]))
        res["producer"] = {"sent": len(load.sent), "acked": len(load.acked), "unreported": load.unflushed,
                           "errors": dict(load.errors), "fatal": load.fatal, "replaced": load.replaced,
                           "thread_error": repr(load.error) if load.error else None}
        res["base_port"] = dev.base
    finally:
        if load:
            if not load.stop_evt.is_set():
                load.abandon()
            load.close()
        left = dev.stop()
        if left:
            res["killed_by_hand"] = left
            log(f"chronik: WARNING: still running after chronik dev stopped, killed: {left}")
    return res


def check_no_loss(load: Load, us: str, eu: str, runs: list[dict]) -> dict:
    """Every acknowledged value is in us-east's topic or in eu-west's recovery topic. Each
    record (recovered or missing) is put to the drill whose end is the first after its
    timestamp (the mirror has caught up between drills, so nothing older is at stake): the
    client's view of each run, and which runs lost acknowledged records."""
    topic = read_all(us, TOPIC, 300)
    try:
        recovery = read_all(eu, RECOVERY, 120)
    except BenchError as e:
        if "UNKNOWN_TOPIC" not in str(e) and "no metadata" not in str(e):
            raise
        recovery = {}
    missing = [v for v in load.acked if v not in topic and v not in recovery]
    in_both = sum(1 for v in recovery if v in topic)
    dup_topic = sum(1 for locs in topic.values() if len(locs) > 1)
    moved = sum(1 for v, a in load.acked.items() if v in topic and (a[0], a[1]) not in topic[v])
    foreign = sum(1 for v in recovery if v not in load.sent)
    ends = [r["times"]["ended"] for r in runs]
    for r in runs:
        r["client"] = {"recovered": 0, "recovered_acked": 0, "before_kill": 0, "before_kill_acked": 0,
                       "before_kill_oldest_age_ms": 0, "missing": 0, "missing_before_kill": 0,
                       "missing_oldest_age_ms": 0}
    after_last = 0

    def run_of(ts):
        return next((i for i, e in enumerate(ends) if ts <= e), None)

    for v in recovery:
        ts = load.sent.get(v)
        k = run_of(ts) if ts is not None else None
        if k is None:
            continue
        c, kill = runs[k]["client"], runs[k]["times"].get("kill")
        acked = v in load.acked
        c["recovered"] += 1
        c["recovered_acked"] += acked
        if kill is not None and ts <= kill:
            c["before_kill"] += 1
            c["before_kill_acked"] += acked
            c["before_kill_oldest_age_ms"] = max(c["before_kill_oldest_age_ms"], kill - ts)
    for v in missing:
        ts = load.sent[v]
        k = run_of(ts)
        if k is None:
            after_last += 1
            continue
        c, kill = runs[k]["client"], runs[k]["times"].get("kill")
        c["missing"] += 1
        if kill is not None and ts <= kill:
            c["missing_before_kill"] += 1
            c["missing_oldest_age_ms"] = max(c["missing_oldest_age_ms"], kill - ts)
    for r in runs:
        r["lost_data"] = r["client"]["missing"] > 0
    reported = sum(r["records_recovered"] or 0 for r in runs)
    out = {"no_loss": {"acked": len(load.acked), "in_topic": len(topic), "in_recovery": len(recovery),
                       "missing": len(missing), "missing_sample": [v.decode() for v in missing[:20]],
                       "missing_after_last_drill": after_last,
                       "runs_that_lost": [r["n"] for r in runs if r["lost_data"]],
                       "in_topic_and_recovery": in_both, "duplicated_in_topic": dup_topic,
                       "acked_at_other_offset": moved, "recovery_not_from_producer": foreign,
                       "recovery_records": sum(len(x) for x in recovery.values()),
                       "reported_recovered_total": reported, "ok": not missing}}
    nl = out["no_loss"]
    if missing:
        per = ", ".join(f"drill {r['n']}: {r['client']['missing']} ({r['client']['missing_before_kill']} written "
                        f"before its kill)" for r in runs if r["lost_data"])
        log(f"chronik: NO-LOSS CHECK FAILED: {len(missing)} acknowledged records are neither in {TOPIC} "
            f"(us-east) nor in {RECOVERY} (eu-west), e.g. {nl['missing_sample'][:5]}; by drill: {per}"
            f"{f'; after the last drill: {after_last}' if after_last else ''}")
    else:
        log(f"chronik: no-loss check passed: all {len(load.acked)} acknowledged records are in {TOPIC} "
            f"({len(topic)} distinct values) or {RECOVERY} ({len(recovery)})")
    if nl["recovery_records"] != reported:
        log(f"chronik: NOTE: the recovery topic holds {nl['recovery_records']} records, the drills reported "
            f"{reported} recovered")
    return out


# ---------------------------------------------------------------------------
# Peer: Kafka + MirrorMaker 2
# ---------------------------------------------------------------------------


def mm2_side(args, n: int, work: Path, out_dir: Path) -> dict:
    w = work / f"mm2-{n}"
    w.mkdir(parents=True, exist_ok=True)
    src, dst = KafkaRegion("src", 1, w, wan=False), KafkaRegion("dst", 1, w, wan=False)
    mm2 = load = None
    try:
        t0 = time.monotonic()
        src.launch()
        dst.launch()
        src.wait_formed(args.kafka_start_timeout)
        dst.wait_formed(args.kafka_start_timeout)
        create_topic(src.bootstrap, TOPIC, args.partitions, 1)
        mm2 = MirrorMaker2(w, src.bootstrap, dst.bootstrap, TOPIC, 1, args.partitions, "stock").start()

        def check():
            src.check_alive("benchmarking")
            dst.check_alive("benchmarking")
            if mm2.proc and mm2.proc.poll() is not None:
                raise BenchError(f"MirrorMaker 2 exited with {mm2.proc.returncode}:\n{mm2.log_tail()}")

        wait_for(lambda: topic_ready(dst.bootstrap, TOPIC, args.partitions), 180, f"{TOPIC} created in dst by MM2",
                 interval=0.5, check=check)
        log(f"mm2 {n}: src, dst and MM2 up in {time.monotonic() - t0:.1f}s")
        load = Load(src.bootstrap, TOPIC, args.partitions, args.rate, f"k{n}", args.delivery_timeout_ms,
                    out_dir / f"mm2-{n}-producer.log").start()
        wait_for(lambda: len(load.acked) >= args.warmup_s * args.rate, args.warmup_s + 60,
                 "warm-up load acknowledged in src", check=check)
        wait_mirrored(src.bootstrap, dst.bootstrap, TOPIC, 120, "warm-up", check=check)
        log(f"mm2 {n}: warm-up done ({len(load.acked)} acknowledged, mirror caught up)")
        time.sleep(args.steady_s)  # steady load, no backlog, then the kill (as before each drill)
        kill_ms, kill_mono = now_ms(), time.monotonic()
        for node in src.nodes:
            node.kill9()
        load.abandon()
        log(f"mm2 {n}: src killed (-9); waiting for dst's end offsets to stop growing")
        # dst's end offsets: unchanged for --settle-s, at most --peer-wait-s after the kill.
        last, since, stable = None, time.monotonic(), False
        while time.monotonic() < kill_mono + args.peer_wait_s:
            dst.check_alive("after the kill")
            try:
                cur = sum(high_watermarks(dst.bootstrap, TOPIC, timeout=5).values())
            except Exception:  # noqa: BLE001
                cur = None
            if cur is not None and cur == last:
                if time.monotonic() - since >= args.settle_s:
                    stable = True
                    break
            else:
                last, since = cur, time.monotonic()
            time.sleep(0.25)
        got = read_all(dst.bootstrap, TOPIC, 120)
        lost = [v for v in load.acked if v not in got]
        acked_before_kill = sum(1 for a in load.acked.values() if a[3] <= kill_mono)
        oldest = min((load.acked[v][2] for v in lost), default=None)
        run = {"acked": len(load.acked), "acked_before_kill": acked_before_kill, "in_dst": len(got),
               "lost": len(lost), "rpo_ms": (kill_ms - oldest) if oldest is not None else 0,
               "settled": stable, "settle_wait_ms": round((time.monotonic() - kill_mono) * 1000),
               "dst_end_offsets_total": last, "producer_errors": dict(load.errors)}
        log(f"mm2 {n}: {run['lost']} acknowledged records never reached dst (RPO {run['rpo_ms']} ms); "
            f"end offsets {'settled' if stable else 'NOT settled'} after {run['settle_wait_ms']} ms")
        return run
    finally:
        if load:
            if not load.stop_evt.is_set():
                load.abandon()
            load.close()
        if mm2:
            mm2.stop(timeout=15)
        src.stop()
        dst.stop()


# ---------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------


def stats(xs) -> tuple[str, str]:
    xs = [x for x in xs if x is not None]
    if not xs:
        return "–", "–"
    return f"{pct(xs, 50):,.0f}", f"{max(xs):,.0f}"


def ratio(a, b) -> str:
    try:
        return f"{a / b:.2f}" if b else "–"
    except TypeError:
        return "–"


def report(res: dict) -> str:
    a = res["args"]
    m = res["machine"]
    lines = [f"**Command** `{res['command']}`", "",
             f"**Machine** {m['nproc']} CPUs ({m['cpu_model']}), `nproc` {m['nproc']}, Linux {m['kernel']}, "
             f"{m['java']}, Apache Kafka {m['kafka']}; Chronik {m['git']} ({m['chronik_bin']['path']}, "
             f"sha256 {m['chronik_bin']['sha256']}); load average at start {' '.join(m['loadavg_at_start'])}, "
             f"at end {' '.join(m.get('loadavg_at_end', []))}", "",
             f"{a['partitions']} partitions, {a['rate']} rec/s idempotent acks=all producer, warm-up {a['warmup_s']} s; "
             "both on loopback, no WAN delay.", ""]
    ch, peer = res.get("chronik"), res.get("mm2")
    pr = [r for r in (peer or {}).get("runs", []) if "error" not in r]
    cr = [] if not ch or "error" in ch else [r for r in ch["runs"] if not r.get("lost_data")]
    if ch and "error" in ch:
        lines += [f"**CHRONIK FAILED, NO FIGURES:** {ch['error']}", ""]
    for dep in (ch or {}).get("deployments", []):
        nl = dep["no_loss"]
        if not nl["ok"]:
            per = "; ".join(f"drill {r['n']}: {r['client']['missing']} missing, {r['client']['missing_before_kill']} "
                            f"of them written before its kill (the drill reported {r['records_recovered']} recovered, "
                            f"{r['copied_before']} of them as copied by an earlier failback)"
                            for r in dep["runs"] if r["lost_data"])
            lines += [f"**NO-LOSS CHECK FAILED** (deployment of drills {[r['n'] for r in dep['runs']]}): "
                      f"{nl['missing']:,} of {nl['acked']:,} acknowledged records are neither in `{TOPIC}` (us-east) "
                      f"nor in `{RECOVERY}` (eu-west), e.g. {nl['missing_sample'][:3]}; {per}. The figures of "
                      f"these drills are left out of the table.", ""]
    mode = "one deployment per drill" if res["args"].get("fresh") else "all drills on one deployment"
    nr, np_ = len(cr), len(pr)
    lines += [f"Chronik: {mode}.", "",
              f"| figure | Chronik drill p50 | max ({nr} runs) | Kafka + MM2 p50 | max ({np_} runs) | MM2 / Chronik (p50) |",
              "|---|---|---|---|---|---|"]

    def row(name, cx, px, rat=True, pnote=None):
        c50, cmax = stats(cx) if cr else ("–", "–")
        if pnote is not None:
            lines.append(f"| {name} | {c50} | {cmax} | {pnote} | | |")
            return
        p50, pmax = stats(px) if pr else ("–", "–")
        rr = "–"
        if rat and cr and pr:
            cx_ = [x for x in cx if x is not None]
            px_ = [x for x in px if x is not None]
            # A ratio with a zero on either side says nothing: left out.
            rr = ratio(pct(px_, 50), pct(cx_, 50)) if cx_ and px_ and pct(px_, 50) and pct(cx_, 50) else "–"
        lines.append(f"| {name} | {c50} | {cmax} | {p50} | {pmax} | {rr} |")

    row("RPO: acknowledged records the new home lacked", [r["lost_at_failover"] for r in cr], [r["lost"] for r in pr])
    row("RPO: age at the kill of the oldest of them (ms)", [r["rpo_ms"] for r in cr], [r["rpo_ms"] for r in pr])
    row("acknowledged records not in the topic at the end (Chronik: all in the recovery topic)",
        [r["client"]["recovered_acked"] for r in cr], [r["lost"] for r in pr], rat=False)
    row("RTO: kill to every partition homed in the other region (ms)", [r["rto_ms"] for r in cr], [],
        pnote="not comparable: no failover command")
    row("records recovered: lost at failover, kept in the recovery topic", [r["lost_at_failover"] for r in cr], [],
        pnote="0 by construction: no failback")
    row("records recovered: all the failback moved (failback's records_recovered)",
        [r["records_recovered"] for r in cr], [], pnote="0")
    row("records taken by the old home after its restart (also recovered)", [r["taken_after_restart"] for r in cr],
        [], pnote="n/a (src not restarted)")
    row("switch-back pause (ms)", [r["switch_back_pause_ms"] for r in cr], [], pnote="n/a: no planned move")
    for s in STEPS:
        row(f"step `{s}` (ms)", [r["steps_ms"].get(s) for r in cr], [], pnote="")
    row("whole drill, wall (ms)", [r["drill_wall_ms"] for r in cr], [], pnote="")
    lines.append("")
    for dep in (ch or {}).get("deployments", []):
        nl = dep["no_loss"]
        if nl["ok"]:
            lines.append(f"No-loss check passed (drills {[r['n'] for r in dep['runs']]}): all {nl['acked']:,} "
                         f"acknowledged records are in `{TOPIC}` (us-east) or `{RECOVERY}` (eu-west); recovery "
                         f"topic {nl['recovery_records']} records (drills reported {nl['reported_recovered_total']}); "
                         f"{nl['in_topic_and_recovery']} values in both; producer errors {dep['producer']['errors']}, "
                         f"fatal {len(dep['producer']['fatal'])}.")
            lines.append("")
    if cr:
        lines.append("Per drill (Chronik): " + "; ".join(
            f"{r['n']}: lost {r['lost_at_failover']} / RPO {r['rpo_ms']} ms / RTO {r['rto_ms']} ms / recovered "
            f"{r['records_recovered']} (after restart {r['taken_after_restart']}); client view: "
            f"{r['client']['before_kill_acked']} acked before the kill in the recovery topic (oldest "
            f"{r['client']['before_kill_oldest_age_ms']} ms before it), {r['client']['recovered']} recovery records"
            for r in cr))
    if pr:
        lines.append("")
        lines.append("Per run (MM2): " + "; ".join(
            f"{i + 1}: lost {r['lost']} of {r['acked']:,} acked / RPO {r['rpo_ms']} ms / dst settled "
            f"{'yes' if r['settled'] else 'NO'} after {r['settle_wait_ms']} ms" for i, r in enumerate(pr)))
    for r in (peer or {}).get("runs", []):
        if "error" in r:
            lines.append(f"**MM2 run failed**: {r['error']}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--system", choices=["chronik", "mm2", "both"], default="both")
    ap.add_argument("--runs", type=int, default=3, help="drills on the one Chronik deployment")
    ap.add_argument("--fresh", action="store_true",
                    help="a fresh chronik dev deployment (and no-loss check) for each drill, instead of one for all")
    ap.add_argument("--peer-runs", type=int, default=3, help="kills of the Kafka source, a fresh setup each")
    ap.add_argument("--rate", type=int, default=500, help="records per second of the producer")
    ap.add_argument("--partitions", type=int, default=3)
    ap.add_argument("--warmup-s", type=float, default=5.0, help="acknowledged load before the first kill")
    ap.add_argument("--steady-s", type=float, default=1.0,
                    help="load after the mirror caught up, before each drill or kill (both systems)")
    ap.add_argument("--delivery-timeout-ms", type=int, default=300_000,
                    help="the producer's message.timeout.ms: records waiting out the drill are retried this long")
    ap.add_argument("--drill-timeout-s", type=float, default=600.0)
    ap.add_argument("--settle-s", type=float, default=5.0,
                    help="MM2: dst's end offsets unchanged this long after the kill count as final")
    ap.add_argument("--peer-wait-s", type=float, default=30.0, help="MM2: at most this long after the kill")
    ap.add_argument("--kafka-start-timeout", type=float, default=300.0)
    ap.add_argument("--binary", type=Path, default=None, help="chronik binary (default: $CHRONIK_BIN, then the build)")
    ap.add_argument("--keep", action="store_true", help="keep the work directory (logs, data) after a success")
    ap.add_argument("--json", type=Path,
                    default=Path(f"/tmp/chronik-drill-bench-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}.json"))
    ap.add_argument("--report", type=Path, default=None, help="print the table of an earlier run's JSON and exit")
    args = ap.parse_args()
    if args.report:
        print(report(json.loads(args.report.read_text())))
        return 0
    binary = (args.binary or default_chronik_bin()).resolve()
    if not (binary.is_file() and os.access(binary, os.X_OK)):
        ap.error(f"chronik binary not found at {binary}; set CHRONIK_BIN or --binary")
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    from dclink import binary_identity

    out_dir = args.json.with_name(args.json.stem + "-logs")
    out_dir.mkdir(parents=True, exist_ok=True)
    entry = os.environ.get("CHRONIK_BENCH_ENTRY", "bench/drill.py")
    machine = {**bc.machine_info(), "chronik_bin": binary_identity(binary)}
    machine["git"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", "--short", "HEAD"], capture_output=True,
                                    text=True).stdout.strip() + (
        " + uncommitted changes" if subprocess.run(["git", "-C", str(REPO), "status", "--porcelain"],
                                                   capture_output=True, text=True).stdout.strip() else "")
    res: dict = {"command": " ".join([entry, *map(shlex.quote, sys.argv[1:])]),
                 "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "machine": machine,
                 "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
                 "logs": str(out_dir)}
    status = 0
    work = Path(tempfile.mkdtemp(prefix="chronik-drill-bench-"))
    try:
        if args.system in ("chronik", "both"):
            try:
                res["chronik"] = chronik_side(args, binary, work, out_dir)
                if not res["chronik"]["no_loss_ok"]:
                    status = 3
            except (BenchError, TimeoutError, RuntimeError, KafkaException) as e:
                res["chronik"] = {"error": str(e)}
                log(f"chronik: ERROR: {e}")
                status = 2
            args.json.write_text(json.dumps(res, indent=2, default=str))
        if args.system in ("mm2", "both"):
            res["mm2"] = {"runs": []}
            for n in range(1, args.peer_runs + 1):
                try:
                    res["mm2"]["runs"].append(mm2_side(args, n, work, out_dir))
                except (BenchError, TimeoutError, RuntimeError, KafkaException) as e:
                    res["mm2"]["runs"].append({"error": str(e)})
                    log(f"mm2 {n}: ERROR: {e}")
                    status = status or 2
                args.json.write_text(json.dumps(res, indent=2, default=str))
    except KeyboardInterrupt:
        res["error"] = "interrupted"
        status = 130
    finally:
        res["finished"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        res["machine"]["loadavg_at_end"] = Path("/proc/loadavg").read_text().split()[:3]
        args.json.write_text(json.dumps(res, indent=2, default=str))
        if status == 0 and not args.keep:
            shutil.rmtree(work, ignore_errors=True)
        else:
            res["work_dir"] = str(work)
            log(f"work directory kept: {work}")
    print("\n" + report(res))
    print(f"\nfigures: {args.json}; logs: {out_dir}", flush=True)
    return status


if __name__ == "__main__":
    sys.exit(main())
