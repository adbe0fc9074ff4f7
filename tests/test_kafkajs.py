"""kafkajs (Node.js) against the broker: tests/clients/js/kafkajs_check.js.

The program (tests/clients/README.md, "kafkajs") creates the topic with the kafkajs
admin client, produces N deterministic records with acks=-1 and the idempotent
producer (keys, headers, explicit timestamps, explicit partitions i % P, optional
gzip), checks the acked offsets, the end offsets (admin.fetchTopicOffsets) and
timestamp lookups (admin.fetchTopicOffsetsByTimestamp), and writes every record
it produced to a JSON file (--dump). kafkajs consumers always join a consumer
group, so the records are read back here with confluent-kafka (manual assign, no
group) and compared field by field with the dump.

Tests
  test_kafkajs                 N=20000, compression none and gzip, both brokers.
  test_kafkajs_checks_can_fail proves both halves can fail: the program with
                               --expect-offset-skew 1 (wrong offset expectations)
                               must exit 1 with offset errors only, and the
                               confluent-kafka verification of a doctored dump must
                               report exactly the doctored records.

Needs node (>= 18) and npm; the fixture runs `npm ci` in tests/clients/js when
node_modules is missing or older than package-lock.json (tests/setup.sh does too).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import shutil
import subprocess
import time
import uuid
from pathlib import Path

import pytest

from checkrun import CheckRun, execute
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, TopicPartition

import kclient

TESTS_DIR = Path(__file__).resolve().parent
JS_DIR = TESTS_DIR / "clients" / "js"
JS_CHECK = JS_DIR / "kafkajs_check.js"

N = 20_000
NEGATIVE_N = 2_000
PARTITIONS = 3
RUN_TIMEOUT = 260  # the program's own watchdog is 240 s
CONSUME_TIMEOUT = 120

# What kafkajs 2.2.4 (pinned in package-lock.json) sends to Apache Kafka 4.1 and to
# Chronik: min(kafkajs max, broker max) for every API. kafkajs ignores the broker's
# minimum versions, so a broker that dropped these would break it.
EXPECTED_API_VERSIONS = {
    "ApiVersions": [2],
    "Metadata": [6],
    "CreateTopics": [3],
    "InitProducerId": [1],
    "Produce": [7],
    "ListOffsets": [3],
    "AlterConfigs": [1],
    "DescribeConfigs": [2],
}


# ---------------------------------------------------------------------------
# Setup
# ---------------------------------------------------------------------------


def _npm_ci_needed() -> bool:
    marker = JS_DIR / "node_modules" / ".package-lock.json"  # written by npm ci / install
    if not (JS_DIR / "node_modules" / "kafkajs" / "package.json").exists() or not marker.exists():
        return True
    return (JS_DIR / "package-lock.json").stat().st_mtime > marker.stat().st_mtime


@pytest.fixture(scope="session")
def node_bin() -> str:
    node, npm = shutil.which("node"), shutil.which("npm")
    if node is None or npm is None:
        pytest.fail("node/npm not found: install Node.js >= 18 (tests/setup.sh)", pytrace=False)
    if _npm_ci_needed():
        base = [npm, "ci", "--prefix", str(JS_DIR), "--no-audit", "--no-fund"]
        r = None
        for argv in (base + ["--offline"], base):  # the npm cache first, then the registry
            try:
                r = subprocess.run(argv, capture_output=True, text=True, timeout=300, stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                continue
            if r.returncode == 0:
                break
        if r is None or r.returncode != 0 or _npm_ci_needed():
            out = "" if r is None else f"{r.stdout[-2000:]}\n{r.stderr[-2000:]}"
            pytest.fail(f"npm ci in {JS_DIR} failed:\n{out}", pytrace=False)
    return node


# ---------------------------------------------------------------------------
# Running the program
# ---------------------------------------------------------------------------


def run_kafkajs(node: str, bootstrap: str, n: int, codec: str, dump: Path, *extra: str) -> tuple[CheckRun, str]:
    topic = f"kjs-{codec}-{uuid.uuid4().hex[:10]}"
    argv = [node, str(JS_CHECK), "--bootstrap", str(bootstrap), "--topic", topic, "--messages", str(n),
            "--partitions", str(PARTITIONS), "--compression", codec, "--dump", str(dump), *extra]
    run = execute(argv, RUN_TIMEOUT)
    s = run.summary or {}
    print(f"[kafkajs] {codec:<5} n={n:<6} exit={run.rc} wall={run.wall_s:.1f}s produce_ms={s.get('produce_ms')} "
          f"errors={s.get('error_count')} api_versions={s.get('api_versions')}")
    return run, topic


def _partition_count(n: int, p: int, parts: int = PARTITIONS) -> int:
    return (n - 1 - p) // parts + 1 if n > p else 0


# ---------------------------------------------------------------------------
# Reading back with confluent-kafka and comparing with the dump
# ---------------------------------------------------------------------------


def _b64(s):
    return None if s is None else base64.b64decode(s)


def consume_all(bootstrap: str, topic: str, partitions: int, n: int, timeout: float = CONSUME_TIMEOUT) -> list:
    """Every record of the topic from offset 0 (manual assign, no group), until n are read."""
    c = kclient.consumer(bootstrap)
    out = []
    try:
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(partitions)])
        deadline = time.monotonic() + timeout
        while len(out) < n and time.monotonic() < deadline:
            for m in c.consume(num_messages=1000, timeout=0.5):
                if m.error():
                    raise AssertionError(f"consumer error: {m.error()}")
                out.append(m)
        # Anything beyond n would be an extra record: give it a moment to show up.
        out.extend(m for m in c.consume(num_messages=100, timeout=0.5) if not m.error())
    finally:
        c.close()
    return out


def verify(bootstrap: str, dump: dict, messages: list | None = None) -> tuple[list[str], int]:
    """Compare the records in the topic with the dump. Returns (errors, consumed)."""
    topic, parts, recs = dump["topic"], dump["partitions"], dump["records"]
    if messages is None:
        messages = consume_all(bootstrap, topic, parts, len(recs))
    errors: list[str] = []
    want: dict[int, list[dict]] = {p: [] for p in range(parts)}
    for r in recs:
        want[r["p"]].append(r)
    got: dict[int, list] = {p: [] for p in range(parts)}
    for m in messages:
        if m.partition() not in got:
            errors.append(f"record from unexpected partition {m.partition()} offset {m.offset()}")
            continue
        got[m.partition()].append(m)
    for p in range(parts):
        w, g = want[p], got[p]
        if len(g) != len(w):
            errors.append(f"partition {p}: consumed {len(g)} records, want {len(w)}")
        for idx, (r, m) in enumerate(zip(w, g)):
            where = f"record {r['i']} partition {p} offset {m.offset()}"
            if m.offset() != idx:
                errors.append(f"{where}: offsets not contiguous from 0 (position {idx})")
            if m.offset() != r["o"]:
                errors.append(f"{where}: offset differs from the acked offset {r['o']}")
            if m.key() != _b64(r["k"]):
                errors.append(f"{where}: key {m.key()!r:.60}, want {_b64(r['k'])!r:.60}")
            if m.value() != _b64(r["v"]):
                errors.append(f"{where}: value differs ({None if m.value() is None else len(m.value())} bytes, "
                              f"want {None if r['v'] is None else len(_b64(r['v']))})")
            hdrs = m.headers() or []
            want_h = [(k, _b64(v)) for k, v in r["h"]]
            if hdrs != want_h:
                errors.append(f"{where}: headers {hdrs!r:.200}, want {want_h!r:.200}")
            ts_type, ts = m.timestamp()
            if ts_type != TIMESTAMP_CREATE_TIME or ts != r["ts"]:
                errors.append(f"{where}: timestamp {(ts_type, ts)}, want CreateTime {r['ts']}")
        for m in g[len(w):]:
            errors.append(f"partition {p}: extra record at offset {m.offset()}")
    for p in range(parts):
        lo, hi = kclient.watermarks(bootstrap, topic, p)
        if (lo, hi) != (0, len(want[p])):
            errors.append(f"partition {p}: watermarks ({lo}, {hi}), want (0, {len(want[p])})")
    return errors, len(messages)


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["none", "gzip"])
def test_kafkajs(broker, codec, node_bin, tmp_path):
    dump_path = tmp_path / "dump.json"
    run, topic = run_kafkajs(node_bin, broker, N, codec, dump_path)
    s = run.summary
    assert s is not None, f"no JSON summary line on stdout\n{run.describe()}"
    assert run.rc == 0 and s["error_count"] == 0 and not s["errors"], f"kafkajs check failed\n{run.describe()}"
    assert s["client"] == "kafkajs" and s["produced"] == N and s["idempotent"] is True, run.describe()
    assert s["offsets"] == {str(p): _partition_count(N, p) for p in range(PARTITIONS)}, run.describe()
    assert s["timestamp_checks"] > 0, run.describe()
    assert s["api_versions"] == EXPECTED_API_VERSIONS, \
        f"kafkajs used other API versions than expected:\n{run.describe()}"

    dump = json.loads(dump_path.read_text())
    assert dump["topic"] == topic and len(dump["records"]) == N and dump["partitions"] == PARTITIONS
    errors, consumed = verify(broker, dump)
    assert not errors and consumed == N, \
        f"confluent-kafka read back {consumed} of {N}; {len(errors)} problems:\n  " + "\n  ".join(errors[:30])


def test_kafkajs_checks_can_fail(broker, node_bin, tmp_path):
    """Both checks must be able to fail while the broker does everything right.

    1. kafkajs_check.js --expect-offset-skew 1 expects every offset one too high: it
       must exit 1 with exactly one error per offset it checks (every ack, the end
       and earliest offsets, every timestamp lookup) and no other kind of error.
    2. The dump of that run verifies cleanly; a doctored copy (key, value, header,
       timestamp, acked offset, one record dropped) must report exactly those."""
    dump_path = tmp_path / "dump.json"
    run, _ = run_kafkajs(node_bin, broker, NEGATIVE_N, "gzip", dump_path, "--expect-offset-skew", "1")
    s = run.summary
    assert s is not None, f"no JSON summary line on stdout\n{run.describe()}"
    assert run.rc == 1, f"--expect-offset-skew 1 must exit 1\n{run.describe()}"
    assert s["produced"] == NEGATIVE_N, run.describe()
    # Every check is off by one: the acks (one per record), end and earliest offsets
    # (two per partition) and the 5 timestamp lookups (one per partition each).
    assert s["error_count"] == NEGATIVE_N + 2 * PARTITIONS + 5 * PARTITIONS, run.describe()
    offset_error = re.compile(r"^record \d+ partition \d+: acked offset \d+, want \d+$"
                              r"|^partition \d+: (end|earliest) offset \d+, want \d+$"
                              r"|^timestamp \d+ \(record \d+\): partition \d+ offset \d+, want \d+$")
    others = [e for e in s["errors"] if not offset_error.match(e)]
    assert not others, f"errors other than offset mismatches: {others}\n{run.describe()}"

    dump = json.loads(dump_path.read_text())
    messages = consume_all(broker, dump["topic"], dump["partitions"], NEGATIVE_N)
    errors, consumed = verify(broker, dump, messages)
    assert not errors and consumed == NEGATIVE_N, f"control verification failed: {errors[:20]}"

    bad = copy.deepcopy(dump)
    recs = bad["records"]
    with_key = next(r for r in recs[100:] if r["k"])
    with_value = next(r for r in recs[200:] if r["v"])
    with_header = next(r for r in recs[300:] if r["h"])
    ts_rec, off_rec = recs[400], recs[500]
    with_key["k"] = base64.b64encode(b"not-" + _b64(with_key["k"])).decode()
    v = bytearray(_b64(with_value["v"]))
    v[-1] ^= 0x01
    with_value["v"] = base64.b64encode(bytes(v)).decode()
    with_header["h"][0][1] = base64.b64encode(_b64(with_header["h"][0][1]) + b"!").decode()
    ts_rec["ts"] += 1
    off_rec["o"] += 1
    dropped = recs.pop()  # the last record: its partition then has one record too many
    errors, _ = verify(broker, bad, messages)
    expect = [
        (with_key, ": key "), (with_value, ": value differs"), (with_header, ": headers "),
        (ts_rec, ": timestamp "), (off_rec, ": offset differs from the acked offset"),
    ]
    for r, what in expect:
        assert any(e.startswith(f"record {r['i']} partition {r['p']} ") and what in e for e in errors), \
            f"doctored record {r['i']} ({what.strip(': ')}) not reported:\n  " + "\n  ".join(errors)
    p = dropped["p"]
    extra = [e for e in errors if e.startswith(f"partition {p}: ")]
    assert any("extra record at offset" in e for e in extra) and any("watermarks" in e for e in extra) \
        and any(e.startswith(f"partition {p}: consumed ") for e in extra), \
        f"dropped record {dropped['i']} not reported:\n  " + "\n  ".join(errors)
    assert len(errors) == len(expect) + 3, "unexpected extra errors:\n  " + "\n  ".join(errors)
