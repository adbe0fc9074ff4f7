"""Real Kafka client libraries against the broker: the client-check programs.

Five clients run the same check (tests/clients/README.md): produce N deterministic
records with acks=all, explicit partitions, keys, headers and a codec; consume them
back with manual assignment (no consumer group); verify every field, the acked
offsets and the log end offsets; print one JSON summary line; exit 0 only if all is
well.

  client            program
  java              tests/clients/java  (kafka-clients 4.1.1, client-check.jar)
  franz-go          tests/clients/go    (franz-go kgo, client-check binary)
  confluent-kafka   tests/clients/python/client_check.py --client confluent-kafka (librdkafka)
  kafka-python      tests/clients/python/client_check.py --client kafka-python
  kcat              tests/clients/kcat_check.py (drives /usr/bin/kcat)

Tests
  test_client_100k      N=100000 per client, against Chronik only (the `broker`
                        fixture narrowed to "chronik"; CHRONIK_CLIENTS_BIG_ORACLE=1 adds
                        Apache Kafka too, for developing against the oracle).
  test_client_codec     every codec per client, N=20000, against both brokers.
  test_check_detects_mismatch
                        --verify-seed 2 must make every check fail (exit 1) with content
                        mismatches only: proves the checks can fail.
  test_gen_digest_agrees
                        the generators of all programs produce the same bytes.
  test_librdkafka_all_topics_metadata
                        confluent-kafka AdminClient.list_topics() (all topics). librdkafka
                        >= 2 encodes that Metadata v9+ request with 3 stray trailing bytes
                        (a 4-byte array-count placeholder left unshrunk); Apache Kafka
                        ignores trailing bytes. The client checks avoid this call.

The Java jar and the Go binary are built on demand (session fixtures) when missing
or older than their sources; tests/setup.sh builds them too.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from checkrun import CheckRun, execute
from harness import java_bin

TESTS_DIR = Path(__file__).resolve().parent
CLIENTS_DIR = TESTS_DIR / "clients"
JAVA_DIR = CLIENTS_DIR / "java"
JAVA_JAR = JAVA_DIR / "target" / "client-check.jar"
GO_DIR = CLIENTS_DIR / "go"
GO_BIN = GO_DIR / "client-check"
PY_CHECK = CLIENTS_DIR / "python" / "client_check.py"
KCAT_CHECK = CLIENTS_DIR / "kcat_check.py"

CLIENTS = ["java", "franz-go", "confluent-kafka", "kafka-python", "kcat"]
CODECS = ["none", "gzip", "snappy", "lz4", "zstd"]

BIG_N = 100_000
CODEC_N = 20_000
NEGATIVE_N = 2_000
# The 100k run's codec per client: "none" for the Java, librdkafka and kafka-python
# paths, a codec for the two clients whose uncompressed path the codec runs cover.
BIG_CODEC = {"java": "none", "franz-go": "zstd", "confluent-kafka": "none", "kafka-python": "none", "kcat": "lz4"}

BIG_KINDS = ["chronik"] + (["kafka"] if os.environ.get("CHRONIK_CLIENTS_BIG_ORACLE") == "1" else [])

RUN_TIMEOUT = 280  # below pytest's 300 s per-test limit; each check bounds its own waits too


# ---------------------------------------------------------------------------
# Building / locating the programs
# ---------------------------------------------------------------------------


def _newer_than(target: Path, *sources: Path) -> bool:
    """True if any file under `sources` is newer than `target`."""
    t = target.stat().st_mtime
    for s in sources:
        files = [s] if s.is_file() else [f for f in s.rglob("*") if f.is_file()]
        if any(f.stat().st_mtime > t for f in files):
            return True
    return False


def _build(argv: list[str], cwd: Path, what: str, timeout: float = 900) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(argv, cwd=str(cwd), capture_output=True, text=True, timeout=timeout,
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"building {what} timed out after {timeout}s: {' '.join(argv)}", pytrace=False)


@pytest.fixture(scope="session")
def java_jar() -> Path:
    if not JAVA_JAR.exists() or _newer_than(JAVA_JAR, JAVA_DIR / "src", JAVA_DIR / "pom.xml"):
        mvn = shutil.which("mvn")
        if mvn is None:
            pytest.fail("mvn not found: run tests/setup.sh (builds tests/clients/java)", pytrace=False)
        base = [mvn, "-q", "-B", "-f", str(JAVA_DIR / "pom.xml"), "package", "-DskipTests"]
        r = _build(base[:3] + ["-o"] + base[3:], JAVA_DIR, "the Java client check (offline)")
        if r.returncode != 0:
            r = _build(base, JAVA_DIR, "the Java client check")
        if r.returncode != 0 or not JAVA_JAR.exists():
            pytest.fail(f"building {JAVA_JAR} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}",
                        pytrace=False)
    return JAVA_JAR


@pytest.fixture(scope="session")
def go_bin() -> Path:
    if not GO_BIN.exists() or _newer_than(GO_BIN, *GO_DIR.glob("*.go"), GO_DIR / "go.mod", GO_DIR / "go.sum"):
        go = shutil.which("go")
        if go is None:
            pytest.fail("go not found: run tests/setup.sh (builds tests/clients/go)", pytrace=False)
        r = _build([go, "build", "-o", "client-check", "."], GO_DIR, "the Go client check")
        if r.returncode != 0 or not GO_BIN.exists():
            pytest.fail(f"building {GO_BIN} failed ({r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}",
                        pytrace=False)
    return GO_BIN


@pytest.fixture(scope="session")
def kcat_bin() -> str:
    k = shutil.which("kcat") or shutil.which("kafkacat")
    if k is None:
        pytest.fail("kcat not found: run tests/setup.sh (apt-get install kcat)", pytrace=False)
    return k


@pytest.fixture
def client_cmd(request):
    """client_cmd(name) -> argv prefix of that client's check program (built on demand)."""

    def cmd(name: str) -> list[str]:
        if name == "java":
            return [java_bin(), "-jar", str(request.getfixturevalue("java_jar"))]
        if name == "franz-go":
            return [str(request.getfixturevalue("go_bin"))]
        if name in ("confluent-kafka", "kafka-python"):
            return [sys.executable, str(PY_CHECK), "--client", name]
        if name == "kcat":
            return [sys.executable, str(KCAT_CHECK), "--kcat", request.getfixturevalue("kcat_bin")]
        raise ValueError(name)

    return cmd


# ---------------------------------------------------------------------------
# Running a check
# ---------------------------------------------------------------------------


def run_check(cmd: list[str], bootstrap: str, client: str, n: int, codec: str, *extra: str) -> CheckRun:
    topic = f"cc-{client}-{codec}-{uuid.uuid4().hex[:10]}"
    argv = cmd + ["--bootstrap", str(bootstrap), "--topic", topic, "--messages", str(n),
                  "--compression", codec, *extra]
    run = execute(argv, RUN_TIMEOUT)
    s = run.summary or {}
    print(f"[client-check] {client:<16} {codec:<6} n={n:<6} exit={run.rc} wall={run.wall_s:.1f}s "
          f"produce_ms={s.get('produce_ms')} consume_ms={s.get('consume_ms')} errors={s.get('error_count')}")
    return run


def assert_ok(run: CheckRun, client: str, n: int, codec: str) -> None:
    s = run.summary
    assert s is not None, f"no JSON summary line on stdout\n{run.describe()}"
    assert run.rc == 0 and s.get("error_count") == 0 and not s.get("errors"), f"check failed\n{run.describe()}"
    assert s.get("produced") == n and s.get("consumed") == n, f"counts wrong\n{run.describe()}"
    assert s.get("client") == client, f"summary names client {s.get('client')!r}\n{run.describe()}"
    assert s.get("compression") == codec and s.get("partitions") == 3, run.describe()


# ---------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------


@pytest.mark.parametrize("broker", BIG_KINDS, indirect=True)
@pytest.mark.parametrize("client", CLIENTS)
def test_client_100k(broker, client, client_cmd):
    codec = BIG_CODEC[client]
    run = run_check(client_cmd(client), broker, client, BIG_N, codec)
    assert_ok(run, client, BIG_N, codec)


@pytest.mark.parametrize("codec", CODECS)
@pytest.mark.parametrize("client", CLIENTS)
def test_client_codec(broker, client, codec, client_cmd):
    run = run_check(client_cmd(client), broker, client, CODEC_N, codec)
    assert_ok(run, client, CODEC_N, codec)


# What a content mismatch looks like in every check's errors.
_MISMATCH = re.compile(r"^record \d+ partition \d+ offset \d+: (key |value |\d+ headers, want |header \d+ = |headers )")


@pytest.mark.parametrize("client", CLIENTS)
def test_check_detects_mismatch(broker, client, client_cmd):
    """--verify-seed 2 compares the records against other content: the check must fail
    (exit 1) although the broker did everything right, and only with content errors."""
    run = run_check(client_cmd(client), broker, client, NEGATIVE_N, "lz4", "--verify-seed", "2")
    s = run.summary
    assert s is not None, f"no JSON summary line on stdout\n{run.describe()}"
    assert run.rc == 1, f"--verify-seed 2 must exit 1\n{run.describe()}"
    assert s.get("produced") == NEGATIVE_N and s.get("consumed") == NEGATIVE_N, run.describe()
    # Nearly every record differs from its seed-2 counterpart (key suffix, value, headers).
    assert s.get("error_count", 0) >= NEGATIVE_N // 2, run.describe()
    others = [e for e in s.get("errors", []) if not _MISMATCH.match(e)]
    assert not others, f"errors other than content mismatches: {others}\n{run.describe()}"


def test_gen_digest_agrees(java_jar, go_bin):
    """All generators (Java, Go, Python; kcat_check reuses the Python one) make the same bytes."""
    args = ["--gen-digest", "--messages", "3000", "--seed", "7"]
    progs = {
        "java": [java_bin(), "-jar", str(java_jar)],
        "franz-go": [str(go_bin)],
        "python": [sys.executable, str(PY_CHECK)],
        "kcat": [sys.executable, str(KCAT_CHECK)],
    }
    digests = {}
    for name, cmd in progs.items():
        r = subprocess.run(cmd + args, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
        assert r.returncode == 0, f"{name} --gen-digest exited {r.returncode}: {r.stderr[-2000:]}"
        digests[name] = r.stdout.strip().splitlines()[-1]
    assert len(set(digests.values())) == 1, f"generators disagree: {digests}"
    assert re.fullmatch(r"[0-9a-f]{64}", digests["java"]), digests


def test_librdkafka_all_topics_metadata(broker):
    """AdminClient.list_topics() without a topic: librdkafka's all-topics Metadata request
    (v9+: topics = null written as 4 zero bytes, so 3 bytes trail the body) must be answered."""
    from confluent_kafka.admin import AdminClient, NewTopic

    topic = f"cc-alltopics-{uuid.uuid4().hex[:10]}"
    adm = AdminClient({"bootstrap.servers": str(broker), "client.id": "test-clients-all-topics"})
    fut = adm.create_topics([NewTopic(topic, 2, 1)], operation_timeout=30)[topic]
    fut.result(timeout=60)
    deadline = time.monotonic() + 30
    last = None
    while time.monotonic() < deadline:
        try:
            md = adm.list_topics(timeout=10)
            if topic in md.topics and len(md.topics[topic].partitions) == 2:
                return
            last = f"topic missing from {sorted(md.topics)[:20]}"
        except Exception as e:  # noqa: BLE001 - reported below
            last = repr(e)
        time.sleep(0.5)
    pytest.fail(f"list_topics() (all topics) did not list {topic} within 30s: {last}", pytrace=False)
