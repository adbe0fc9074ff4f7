"""pytest fixtures: the Apache Kafka oracle and the Chronik broker under test.

Conformance tests take the parametrized `broker` fixture (params "kafka" and
"chronik"), a bootstrap string, so every scenario runs against both brokers.

  CHRONIK_ONLY_ORACLE=1  deselect every test that needs Chronik (for developing
                         the tests against Apache Kafka alone). Without it, a
                         missing Chronik binary FAILS those tests.
  CHRONIK_SKIP_ORACLE=1  the opposite: deselect every test that needs Apache
                         Kafka (quick iteration on Chronik without the JVM).
  CHRONIK_BIN            path of the chronik binary (default
                         ${CARGO_TARGET_DIR:-target}/release/chronik).
  CHRONIK_TEST_BROKERS=3 run the `broker`-parametrized tests (conformance,
                         bad input, clients) against a three-broker Chronik
                         region and a three-broker Apache Kafka cluster
                         instead of single brokers. Work in progress: some
                         helpers still assume a single broker.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from harness import ApacheKafka, Chronik, KafkaCluster, chronik_bin  # noqa: E402
from kclient import forget_clients  # noqa: E402

ONLY_ORACLE = os.environ.get("CHRONIK_ONLY_ORACLE") == "1"
CLUSTERED = os.environ.get("CHRONIK_TEST_BROKERS", "1") != "1"
if CLUSTERED and os.environ.get("CHRONIK_TEST_BROKERS") != "3":
    raise SystemExit("CHRONIK_TEST_BROKERS must be 1 or 3")
SKIP_ORACLE = os.environ.get("CHRONIK_SKIP_ORACLE") == "1"

# Fixtures whose "chronik" param means the test needs a Chronik broker.
BROKER_FIXTURES = ("broker", "broker_noauto", "secured")
KINDS = ["kafka", "chronik"]

# Broker-wide settings shared by both brokers where they have an equivalent.
RETENTION_CHECK_MS = 1000
# How often both brokers' log cleaners look for due partitions (Kafka's default is 15 s).
CLEANER_BACKOFF_MS = 500


class BrokerTarget(str):
    """A bootstrap string ("host:port") that also knows which broker it points at."""

    kind: str
    proc: object

    def __new__(cls, bootstrap: str, kind: str, proc):
        s = super().__new__(cls, bootstrap)
        s.kind = kind
        s.proc = proc
        return s

    @property
    def is_kafka(self) -> bool:
        return self.kind == "kafka"

    @property
    def is_chronik(self) -> bool:
        return self.kind == "chronik"


def _sigterm_as_interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def pytest_configure(config):
    # A SIGTERM'd pytest unwinds like Ctrl-C, so fixtures and atexit stop the brokers.
    if signal.getsignal(signal.SIGTERM) == signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _sigterm_as_interrupt)
    config.addinivalue_line("markers", "chronik: runs only against Chronik (deselected by CHRONIK_ONLY_ORACLE=1)")
    config.addinivalue_line("markers", "oracle_only: documents Apache Kafka behaviour Chronik deliberately differs from")


def _needs_chronik(item) -> bool:
    if item.get_closest_marker("chronik"):
        return True
    cs = getattr(item, "callspec", None)
    if cs is not None:
        return any(cs.params.get(f) == "chronik" for f in BROKER_FIXTURES)
    return False


def _needs_kafka(item) -> bool:
    if item.get_closest_marker("oracle_only"):
        return True
    cs = getattr(item, "callspec", None)
    if cs is not None:
        return any(cs.params.get(f) == "kafka" for f in BROKER_FIXTURES)
    return False


def pytest_collection_modifyitems(config, items):
    if not (ONLY_ORACLE or SKIP_ORACLE):
        return
    keep, drop = [], []
    for it in items:
        deselect = (ONLY_ORACLE and _needs_chronik(it)) or (SKIP_ORACLE and _needs_kafka(it))
        (drop if deselect else keep).append(it)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On failure, attach the tail of the involved brokers' logs to the report."""
    outcome = yield
    rep = outcome.get_result()
    if rep.failed:
        seen = set()
        procs = []
        for v in getattr(item, "funcargs", {}).values():
            procs.append(getattr(v, "proc", v))
            procs.extend(getattr(v, "started", ()))  # factory fixtures
        for proc in procs:
            procs.extend(getattr(proc, "started", ()) if isinstance(proc, WholeCluster) else ())
            if isinstance(proc, (ApacheKafka, Chronik)) and id(proc) not in seen:
                seen.add(id(proc))
                rep.sections.append((f"{proc.name} log tail ({getattr(proc, 'bootstrap', '')})", proc.log_tail(150)))


class WholeCluster:
    """A cluster behind the one-process interface the `broker` targets use:
    running = every node runs; restart = restart the nodes that died."""

    def __init__(self, cluster) -> None:
        self.cluster = cluster
        self.name = f"{cluster.kind}-cluster"

    @property
    def bootstrap(self) -> str:
        return self.cluster.bootstrap

    @property
    def running(self) -> bool:
        return all(self.cluster.running(i) for i in self.cluster.ids)

    @property
    def started(self) -> list:
        return list(self.cluster.nodes.values())

    def restart(self) -> None:
        for i in self.cluster.ids:
            if not self.cluster.running(i):
                self.cluster.restart(i)

    def log_tail(self, n: int = 60) -> str:
        return self.cluster.log_tail(n)

    def stop(self) -> None:
        self.cluster.stop()


def _kafka_cluster_target(tmp_path_factory, name: str, props: dict) -> WholeCluster:
    k = KafkaCluster(tmp_path_factory.mktemp(name), n=3, extra_props=props)
    k.start()
    return WholeCluster(k)


def _chronik_cluster_target(tmp_path_factory, name: str, **config) -> WholeCluster:
    from cluster import ChronikCluster

    _require_chronik_binary()
    c = ChronikCluster(3, tmp_path_factory.mktemp(name), durability="fsync", **config)
    c.start()
    return WholeCluster(c)


# ---------------------------------------------------------------------------
# Apache Kafka oracle
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def kafka_oracle(tmp_path_factory):
    """Session-wide Apache Kafka (auto-create on, retention checked every second)."""
    props = {"log.retention.check.interval.ms": RETENTION_CHECK_MS, "log.initial.task.delay.ms": 0,
             "log.cleaner.backoff.ms": CLEANER_BACKOFF_MS}
    if CLUSTERED:
        k = _kafka_cluster_target(tmp_path_factory, "kafka3", props)
        yield k
        forget_clients(k.bootstrap)
        k.stop()
        return
    k = ApacheKafka(None, tmp_path_factory.mktemp("kafka"), extra_props=props)
    k.start()
    yield k
    forget_clients(k.bootstrap)
    k.stop()


@pytest.fixture(scope="session")
def kafka_oracle_noauto(tmp_path_factory):
    """A second Apache Kafka with auto.create.topics.enable=false (started only if used)."""
    if CLUSTERED:
        k = _kafka_cluster_target(tmp_path_factory, "kafka3-noauto", {"auto.create.topics.enable": "false"})
        yield k
        forget_clients(k.bootstrap)
        k.stop()
        return
    k = ApacheKafka(None, tmp_path_factory.mktemp("kafka-noauto"),
                    extra_props={"auto.create.topics.enable": "false"})
    k.start()
    yield k
    forget_clients(k.bootstrap)
    k.stop()


@pytest.fixture
def kafka_factory(tmp_path):
    """Start extra Apache Kafka brokers for one test: kafka_factory(**extra_props)."""
    started = []

    def make(**props):
        k = ApacheKafka(None, tmp_path / f"kafka{len(started)}", extra_props=props)
        started.append(k)
        return k.start()

    make.started = started
    yield make
    for k in started:
        forget_clients(k.bootstrap)
        k.stop()


# ---------------------------------------------------------------------------
# Chronik
# ---------------------------------------------------------------------------


def _require_chronik_binary() -> Path:
    b = chronik_bin()
    if not b.exists():
        pytest.fail(f"chronik binary not found at {b} (build it, set CHRONIK_BIN, "
                    f"or set CHRONIK_ONLY_ORACLE=1 to run against Apache Kafka only)", pytrace=False)
    return b


@pytest.fixture(scope="module")
def chronik(tmp_path_factory):
    """A fresh Chronik broker per test module (auto-create on, retention checked every second)."""
    if CLUSTERED:
        c = _chronik_cluster_target(tmp_path_factory, "chronik3", retention_check_interval_ms=RETENTION_CHECK_MS,
                                    cleaner_backoff_ms=CLEANER_BACKOFF_MS)
        yield c
        forget_clients(c.bootstrap)
        c.stop()
        return
    _require_chronik_binary()
    c = Chronik(None, tmp_path_factory.mktemp("chronik") / "data", retention_check_interval_ms=RETENTION_CHECK_MS,
                cleaner_backoff_ms=CLEANER_BACKOFF_MS)
    c.start()
    yield c
    forget_clients(c.bootstrap)
    c.stop()


@pytest.fixture(scope="module")
def chronik_noauto(tmp_path_factory):
    if CLUSTERED:
        c = _chronik_cluster_target(tmp_path_factory, "chronik3-noauto", auto_create=False)
        yield c
        forget_clients(c.bootstrap)
        c.stop()
        return
    _require_chronik_binary()
    c = Chronik(None, tmp_path_factory.mktemp("chronik-noauto") / "data", auto_create=False)
    c.start()
    yield c
    forget_clients(c.bootstrap)
    c.stop()


@pytest.fixture
def chronik_factory(tmp_path):
    """Start Chronik brokers owned by one test: chronik_factory(**config). Stopped at teardown."""
    started = []

    def make(**config):
        _require_chronik_binary()
        c = Chronik(None, tmp_path / f"chronik{len(started)}" / "data", **config)
        started.append(c)
        return c.start()

    make.started = started
    yield make
    for c in started:
        forget_clients(c.bootstrap)
        c.stop()


# ---------------------------------------------------------------------------
# Clusters (tests/cluster.py, harness.KafkaCluster)
# ---------------------------------------------------------------------------


@pytest.fixture(scope="session")
def chronik_cluster_binary():
    """The chronik binary; a missing one fails, as for every Chronik test."""
    return _require_chronik_binary()


@pytest.fixture
def chronik_cluster_factory(tmp_path, chronik_cluster_binary):
    """Start Chronik regions owned by one test: chronik_cluster_factory(n=3, **opts) -> started
    cluster.ChronikCluster (opts: broker settings or [cluster] keys). Stopped at teardown."""
    from cluster import ChronikCluster

    clusters = []
    started = []  # every node, for the failure report

    def make(n: int = 3, **opts):
        c = ChronikCluster(n, tmp_path / f"cluster{len(clusters)}", binary=chronik_cluster_binary, **opts)
        clusters.append(c)
        started.extend(c.nodes.values())
        return c.start()

    make.started = started
    yield make
    for c in clusters:
        forget_clients(c.bootstrap)
        c.stop()


@pytest.fixture(scope="module")
def kafka_cluster(tmp_path_factory):
    """A 3-node Apache Kafka KRaft cluster per module (RF 3, min.insync.replicas 2).
    Tests may kill nodes; the next user gets them restarted (see any_cluster)."""
    k = KafkaCluster(tmp_path_factory.mktemp("kafka-cluster"), n=3)
    k.start()
    yield k
    forget_clients(k.bootstrap)
    k.stop()


# ---------------------------------------------------------------------------
# Parametrized targets
# ---------------------------------------------------------------------------


def _target(request, kind: str, kafka_fixture: str, chronik_fixture: str):
    proc = request.getfixturevalue(kafka_fixture if kind == "kafka" else chronik_fixture)
    if not proc.running:
        log = proc.log_tail()
        proc.restart()
        pytest.fail(f"{kind} broker was found dead before the test (restarted it); log tail:\n{log}", pytrace=False)
    yield BrokerTarget(proc.bootstrap, kind, proc)
    if not proc.running:
        log = proc.log_tail()
        proc.restart()
        pytest.fail(f"{kind} broker died during the test (restarted it); log tail:\n{log}", pytrace=False)


@pytest.fixture(params=KINDS)
def broker(request):
    """Bootstrap string (a BrokerTarget: .kind, .proc) of Apache Kafka or Chronik, auto-create on."""
    yield from _target(request, request.param, "kafka_oracle", "chronik")


@pytest.fixture(params=KINDS)
def broker_noauto(request):
    """Like `broker`, but with topic auto-creation disabled."""
    yield from _target(request, request.param, "kafka_oracle_noauto", "chronik_noauto")


# Parametrized 3-node clusters: a Chronik region or the Apache Kafka cluster (tests/cluster.py).
CLUSTER_KINDS = [pytest.param("chronik", marks=pytest.mark.chronik),
                 pytest.param("kafka", marks=pytest.mark.oracle_only)]


def _kafka_whole(request):
    """The module's Apache Kafka cluster (kafka_cluster) with every node up, left whole afterwards."""
    k = request.getfixturevalue("kafka_cluster")
    for i in k.ids:
        if not k.running(i):
            k.restart(i)
    yield k
    for i in k.ids:  # leave it whole for the next test
        if not k.running(i):
            k.restart(i)
    forget_clients(k.bootstrap)


@pytest.fixture(params=CLUSTER_KINDS)
def any_cluster(request):
    """A fresh 3-node Chronik region, or the module's Apache Kafka cluster with every node up."""
    if request.param == "chronik":
        yield request.getfixturevalue("chronik_cluster_factory")(3)
        return
    yield from _kafka_whole(request)


@pytest.fixture(params=CLUSTER_KINDS)
def cluster_no_auto_rebalance(request):
    """Like any_cluster, but Chronik does not hand leadership back on its own, so an
    election is the tool's doing (Kafka's own check runs only every 300 s)."""
    if request.param == "chronik":
        yield request.getfixturevalue("chronik_cluster_factory")(3, auto_leader_rebalance=False)
        return
    yield from _kafka_whole(request)
