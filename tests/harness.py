"""Process harness for the Chronik test-suite.

Starts and stops, on loopback only:
  * ApacheKafka -- the conformance oracle (Apache Kafka 4.1 in KRaft single-node
    mode, jars fetched by tests/kafka/fetch.sh into tests/.cache/kafka-libs/);
  * Chronik     -- the broker under test (binary at $CHRONIK_BIN, default
    ${CARGO_TARGET_DIR:-<repo>/target}/release/chronik).

Every wait is bounded, and every process started here is killed at interpreter
exit (atexit) even if a test forgets to stop it.
"""

from __future__ import annotations

import atexit
import base64
import json
import os
import random
import signal
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from pathlib import Path

TESTS_DIR = Path(__file__).resolve().parent
REPO_ROOT = TESTS_DIR.parent
CACHE_DIR = TESTS_DIR / ".cache"
KAFKA_LIBS = Path(os.environ.get("KAFKA_LIBS", CACHE_DIR / "kafka-libs"))
KAFKA_FETCH = TESTS_DIR / "kafka" / "fetch.sh"

LOOPBACK = "127.0.0.1"

# ---------------------------------------------------------------------------
# Utilities
# ---------------------------------------------------------------------------

_port_lock = threading.Lock()


def _test_ports() -> range:
    """The ports free_port hands out: CHRONIK_TEST_PORTS ("LO-HI"), 10000-20999 by default.
    Below the kernel's ephemeral range (32768-60999 on Linux), because any process's outbound
    connection takes its local port from there: one could take a port between its handing
    out and its binding, or while the process holding it is down for a restart. Runs at once
    get ranges of their own (run-lanes.sh gives each lane one)."""
    lo, hi = (int(x) for x in os.environ.get("CHRONIK_TEST_PORTS", "10000-20999").split("-"))
    return range(lo, hi + 1)


_PORTS = _test_ports()
# Handed out in turn from a random start: a port comes round again only after the whole
# range has (so never twice within a test), and two runs sharing a range rarely meet.
_port_cursor = random.randrange(len(_PORTS))


def free_port(host: str = LOOPBACK, kind: int = socket.SOCK_STREAM) -> int:
    """A port (TCP, or UDP with kind=SOCK_DGRAM) free right now on `host`, from the test
    range (see _test_ports)."""
    global _port_cursor
    with _port_lock:
        for _ in range(len(_PORTS)):
            port = _PORTS[_port_cursor % len(_PORTS)]
            _port_cursor += 1
            with socket.socket(socket.AF_INET, kind) as s:
                try:
                    s.bind((host, port))
                except OSError:
                    continue
            return port
    raise RuntimeError(f"no free port in {_PORTS.start}-{_PORTS.stop - 1} on {host}")


def free_dev_base() -> int:
    """A base port for `chronik dev --nodes 1` whose ports (Kafka, admin, dc-link, both
    regions) are all free."""
    offsets = (0, 100, 90, 91, 190, 191, 4000, 4100)
    for base in range(21000, 29000, 250):
        ok = True
        for off in offsets:
            with socket.socket() as s:
                try:
                    s.bind((LOOPBACK, base + off))
                except OSError:
                    ok = False
                    break
        if ok:
            return base
    raise RuntimeError("no free port range for chronik dev")


def port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def wait_until(pred, timeout: float, interval: float = 0.2, what: str = "condition"):
    """Poll pred() until it returns a truthy value; return it, or raise TimeoutError."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            v = pred()
            if v:
                return v
        except Exception as e:  # noqa: BLE001 - reported on timeout
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc!r})" if last_exc else ""))
        time.sleep(interval)


# openraft logs a warning for every heartbeat to a node that is cut off or dead, many a
# second: in a failure tail they hide the lines that explain the failure.
NOISE = ("HeartbeatWorker", "heartbeat stream returned no response")


def tail(path: Path, n: int = 60) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 1024 * 1024))
            lines = f.read().decode(errors="replace").splitlines()
        kept = [line for line in lines if not any(w in line for w in NOISE)]
        dropped = len(lines) - len(kept)
        note = [f"({dropped} openraft heartbeat warnings left out)"] if dropped else []
        return "\n".join(note + kept[-n:])
    except OSError as e:
        return f"<no log: {e}>"


def json_summary(path: Path) -> dict | None:
    """The last '{"client"...' line of a client program's log (its one-line JSON summary on
    stdout), parsed; None if there is none or it does not parse."""
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        if line.startswith('{"client"'):
            try:
                return json.loads(line)
            except ValueError:
                return None
    return None


def api_versions_ok(host: str, port: int, timeout: float = 2.0) -> bool:
    """True if host:port answers an ApiVersions v0 request with error_code 0."""
    import struct

    try:
        with socket.create_connection((host, port), timeout=timeout) as s:
            s.settimeout(timeout)
            client_id = b"harness"
            hdr = struct.pack(">hhih", 18, 0, 1, len(client_id)) + client_id
            s.sendall(struct.pack(">i", len(hdr)) + hdr)
            buf = b""
            while len(buf) < 4:
                chunk = s.recv(4 - len(buf))
                if not chunk:
                    return False
                buf += chunk
            (n,) = struct.unpack(">i", buf)
            body = b""
            while len(body) < n:
                chunk = s.recv(n - len(body))
                if not chunk:
                    return False
                body += chunk
            corr, err = struct.unpack(">ih", body[:6])
            return corr == 1 and err == 0
    except OSError:
        return False


# Admin API tokens by "host:port" (brokers' listeners.admin_token_file, a dc-link's
# broker_admin_token_file): admin_urlopen sends the one registered for the address it calls.
ADMIN_TOKENS: dict[str, str] = {}


def admin_urlopen(req, timeout: float):
    """urllib.request.urlopen, with the target's admin token when one is registered."""
    if isinstance(req, str):
        req = urllib.request.Request(req)
    token = ADMIN_TOKENS.get(urllib.parse.urlsplit(req.full_url).netloc)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    return urllib.request.urlopen(req, timeout=timeout)


def http_get(url: str, timeout: float = 2.0) -> tuple[int, str]:
    try:
        with admin_urlopen(url, timeout=timeout) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


# ---------------------------------------------------------------------------
# Process tracking: everything started is killed at exit.
# ---------------------------------------------------------------------------

_live: set["ManagedProcess"] = set()
_live_lock = threading.Lock()


def _kill_all_at_exit() -> None:
    with _live_lock:
        procs = list(_live)
    for p in procs:
        try:
            p._hard_kill()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_kill_all_at_exit)


class ManagedProcess:
    """A child process in its own process group, logging to a file."""

    name = "process"

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.log_path: Path | None = None
        self._log_file = None

    # -- lifecycle helpers --------------------------------------------------

    def _spawn(self, argv: list[str], cwd: Path, log_path: Path, env: dict | None = None) -> None:
        if self.running:
            raise RuntimeError(f"{self.name} already running (pid {self.proc.pid})")
        self.log_path = log_path
        self._log_file = open(log_path, "ab")
        self._log_file.write(f"\n===== {time.strftime('%H:%M:%S')} starting: {' '.join(argv)}\n".encode())
        self._log_file.flush()
        self.proc = subprocess.Popen(
            argv,
            cwd=str(cwd),
            stdin=subprocess.DEVNULL,
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,  # own process group: signals reach every child
        )
        with _live_lock:
            _live.add(self)

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def _signal_group(self, sig: int) -> None:
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, sig)
        except (ProcessLookupError, PermissionError):
            try:
                self.proc.send_signal(sig)
            except ProcessLookupError:
                pass

    def _reap(self) -> int | None:
        rc = self.proc.returncode if self.proc else None
        with _live_lock:
            _live.discard(self)
        if self._log_file is not None:
            try:
                self._log_file.close()
            except OSError:
                pass
            self._log_file = None
        return rc

    def _hard_kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                pass
        self._reap()

    def kill9(self) -> None:
        """SIGKILL the process (group) and wait for it to die."""
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self._signal_group(signal.SIGKILL)
            self.proc.wait(timeout=30)
        self._reap()

    def stop(self, timeout: float = 30.0) -> int | None:
        """SIGTERM, wait up to `timeout`, then SIGKILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self._signal_group(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self._signal_group(signal.SIGKILL)
                self.proc.wait(timeout=10)
        return self._reap()

    def _check_alive(self, what: str) -> None:
        if self.proc is not None and self.proc.poll() is not None:
            rc = self.proc.returncode
            self._reap()
            raise RuntimeError(f"{self.name} exited with code {rc} while {what}; log {self.log_path}:\n{tail(self.log_path)}")

    def log_tail(self, n: int = 60) -> str:
        return tail(self.log_path, n) if self.log_path else ""


# ---------------------------------------------------------------------------
# Apache Kafka (oracle)
# ---------------------------------------------------------------------------


def ensure_kafka_libs() -> Path:
    """Run tests/kafka/fetch.sh if the jars are missing (idempotent)."""
    jar = list(KAFKA_LIBS.glob("kafka_2.13-*.jar")) if KAFKA_LIBS.is_dir() else []
    if not jar:
        env = dict(os.environ, KAFKA_LIBS=str(KAFKA_LIBS))
        r = subprocess.run(["bash", str(KAFKA_FETCH)], env=env, capture_output=True, text=True, timeout=900)
        if r.returncode != 0:
            raise RuntimeError(f"fetching Kafka jars failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    return KAFKA_LIBS


def java_bin() -> str:
    jh = os.environ.get("JAVA_HOME")
    if jh and (Path(jh) / "bin" / "java").exists():
        return str(Path(jh) / "bin" / "java")
    return "java"


_KAFKA_LOG4J = """\
status = warn
appender.file.type = File
appender.file.name = FILE
appender.file.fileName = {log}
appender.file.layout.type = PatternLayout
appender.file.layout.pattern = [%d] %p %m (%c)%n
rootLogger.level = INFO
rootLogger.appenderRef.file.ref = FILE
logger.kafka.name = kafka
logger.kafka.level = INFO
logger.state.name = state.change.logger
logger.state.level = WARN
"""


class ApacheKafka(ManagedProcess):
    """Single-node KRaft Apache Kafka on loopback.

    ApacheKafka(port, data_dir, extra_props={"flush.messages": "1"}).start()
    """

    name = "apache-kafka"

    def __init__(self, port: int | None, data_dir, extra_props: dict | None = None, host: str = LOOPBACK,
                 heap: str = "512m", full_jit: bool = False) -> None:
        super().__init__()
        # Tests run the JVM with C1 only (-XX:TieredStopAtLevel=1): it starts faster. Benchmarks
        # must not: C2 compiles the hot paths, and AES-GCM's intrinsics are C2's.
        self.full_jit = full_jit
        self.host = host
        self.port = port or free_port(host)
        self.controller_port = free_port(host)
        self.work_dir = Path(data_dir).resolve()
        self.data_dir = self.work_dir / "kraft-logs"
        self.extra_props = {k: str(v) for k, v in (extra_props or {}).items()}
        self.heap = heap
        self.cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self._formatted = False

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    def properties(self) -> dict:
        p = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "listeners": f"PLAINTEXT://{self.host}:{self.port},CONTROLLER://{self.host}:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://{self.host}:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "controller.quorum.bootstrap.servers": f"{self.host}:{self.controller_port}",
            "log.dirs": str(self.data_dir),
            "num.partitions": "1",
            "default.replication.factor": "1",
            "min.insync.replicas": "1",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "1",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "transaction.state.log.num.partitions": "1",
            "share.coordinator.state.topic.replication.factor": "1",
            "share.coordinator.state.topic.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "socket.request.max.bytes": "104857600",
            "num.network.threads": "2",
            "num.io.threads": "4",
            # Fast re-registration after kill -9 (default session timeout is 9 s).
            "broker.heartbeat.interval.ms": "500",
            "broker.session.timeout.ms": "1500",
        }
        p.update(self.extra_props)
        return p

    def _write_config(self) -> Path:
        self.work_dir.mkdir(parents=True, exist_ok=True)
        props = self.work_dir / "server.properties"
        props.write_text("".join(f"{k}={v}\n" for k, v in self.properties().items()))
        (self.work_dir / "log4j2.properties").write_text(_KAFKA_LOG4J.format(log=self.work_dir / "kafka.log"))
        return props

    def _java_argv(self, main: str, *args: str) -> list[str]:
        return [
            java_bin(),
            f"-Xmx{self.heap}",
            "-Xms128m",
            "-XX:+UseSerialGC",
            *([] if getattr(self, "full_jit", False) else ["-XX:TieredStopAtLevel=1"]),
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.work_dir / 'log4j2.properties'}",
            f"-Dkafka.logs.dir={self.work_dir}",
            "-cp",
            str(KAFKA_LIBS / "*"),
            main,
            *args,
        ]

    def format(self) -> None:
        ensure_kafka_libs()
        props = self._write_config()
        argv = self._java_argv("kafka.tools.StorageTool", "format", "--standalone", f"--cluster-id={self.cluster_id}",
                               "-c", str(props), "--ignore-formatted")
        r = subprocess.run(argv, cwd=str(self.work_dir), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"kafka storage format failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
        self._formatted = True

    def start(self, timeout: float = 120.0) -> "ApacheKafka":
        self.launch()
        return self.wait_serving(timeout)

    def launch(self) -> "ApacheKafka":
        """Format (first time), write the config and spawn the JVM without waiting."""
        if not self._formatted:
            self.format()
        else:
            self._write_config()
        self._spawn(self._java_argv("kafka.Kafka", str(self.work_dir / "server.properties")),
                    cwd=self.work_dir, log_path=self.work_dir / "kafka.stdout")
        return self

    def wait_serving(self, timeout: float = 120.0) -> "ApacheKafka":
        """Wait until the broker answers ApiVersions; on failure the JVM is killed."""
        try:
            deadline = time.monotonic() + timeout
            while not api_versions_ok(self.host, self.port):
                self._check_alive("starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"Kafka on {self.bootstrap} not answering ApiVersions after {timeout}s;\n"
                                       f"{tail(self.work_dir / 'kafka.log')}")
                time.sleep(0.25)
        except BaseException:
            self._hard_kill()
            raise
        return self

    def restart(self, timeout: float = 120.0) -> "ApacheKafka":
        if self.running:
            self.stop()
        return self.start(timeout)

    def log_tail(self, n: int = 60) -> str:
        return tail(self.work_dir / "kafka.log", n)


# ---------------------------------------------------------------------------
# Chronik (broker under test)
# ---------------------------------------------------------------------------


def chronik_bin() -> Path:
    env = os.environ.get("CHRONIK_BIN")
    if env:
        return Path(env)
    target = Path(os.environ.get("CARGO_TARGET_DIR", "target"))
    if not target.is_absolute():
        target = REPO_ROOT / target
    return target / "release" / "chronik"


# Which TOML section each flat keyword lives in.
_CHRONIK_KEYS = {
    "node_id": None,
    "region": None,
    "durability": None,
    "auto_create": "topics",
    "default_partitions": "topics",
    "retention_check_interval_ms": "topics",
    "cleaner_backoff_ms": "topics",
    "socket_request_max_bytes": "limits",
    "initial_rebalance_delay_ms": "groups",
    "offsets_retention_minutes": "groups",
    "offsets_retention_check_interval_ms": "groups",
    "abort_timed_out_check_interval_ms": "transactions",
    "admin_token_file": "listeners",
}


def _toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    raise TypeError(f"unsupported TOML value {v!r}")


class Chronik(ManagedProcess):
    """One Chronik broker on loopback.

    Chronik(port, data_dir, durability="fsync", auto_create=False, retention_check_interval_ms=1000)
    Unknown keywords raise; raw TOML can be appended with extra_toml="..." (e.g. a [cluster]
    section); raft_port adds `raft = "host:port"` to [listeners].
    start() = launch() (write the config, spawn) + wait_ready(); a cluster launches every
    broker before waiting, since none is ready before a majority runs.
    """

    name = "chronik"

    def __init__(self, port: int | None, data_dir, host: str = LOOPBACK, admin_port: int | None = None,
                 extra_toml: str = "", env: dict | None = None, binary: Path | None = None,
                 raft_port: int | None = None, **config) -> None:
        super().__init__()
        unknown = set(config) - set(_CHRONIK_KEYS)
        if unknown:
            raise TypeError(f"unknown Chronik config keys: {sorted(unknown)}")
        self.host = host
        self.port = port or free_port(host)
        self.admin_port = admin_port or free_port(host)
        self.raft_port = raft_port
        self.data_dir = Path(data_dir).resolve()
        self.config_path = self.data_dir.parent / f"{self.data_dir.name}.toml"
        self.stdout_path = self.data_dir.parent / f"{self.data_dir.name}.log"
        self.binary = Path(binary) if binary else chronik_bin()
        self.extra_toml = extra_toml
        self.env = env
        self.config = {
            "node_id": 1,
            "region": "us-east",
            "durability": "fsync",
            "auto_create": True,
            "default_partitions": 1,
            "retention_check_interval_ms": 300000,
            "socket_request_max_bytes": 104857600,
            # As on the Kafka oracle: tests should not wait 3 s per new group.
            "initial_rebalance_delay_ms": 0,
        }
        self.config.update(config)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    def toml(self) -> str:
        sections: dict[str | None, list[str]] = {None: [], "listeners": [], "topics": [], "limits": [], "groups": [],
                                                  "transactions": []}
        for k, v in self.config.items():
            sections[_CHRONIK_KEYS[k]].append(f"{k} = {_toml_value(v)}")
        sections[None].insert(3, f"data_dir = {_toml_value(str(self.data_dir))}")
        sections["listeners"][:0] = [f'kafka = "{self.host}:{self.port}"', f'admin = "{self.host}:{self.admin_port}"']
        if self.raft_port:
            sections["listeners"].append(f'raft = "{self.host}:{self.raft_port}"')
        out = "\n".join(sections[None]) + "\n"
        for name in ("listeners", "topics", "limits", "groups", "transactions"):
            out += f"\n[{name}]\n" + "\n".join(sections[name]) + "\n"
        if self.extra_toml:
            out += "\n" + self.extra_toml.strip() + "\n"
        return out

    def ready(self) -> bool:
        try:
            status, _ = http_get(self.admin_url + "/health/ready", timeout=1.0)
            return status == 200
        except OSError:
            return False

    def metrics(self) -> str:
        status, body = http_get(self.admin_url + "/metrics", timeout=5.0)
        if status != 200:
            raise RuntimeError(f"/metrics returned {status}")
        return body

    def start(self, timeout: float = 60.0) -> "Chronik":
        self.launch()
        return self.wait_ready(timeout)

    def launch(self) -> "Chronik":
        """Write the config and spawn the broker without waiting for it."""
        if not self.binary.exists():
            raise FileNotFoundError(f"chronik binary not found at {self.binary}")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.config_path.write_text(self.toml())
        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        if self.env:
            env.update(self.env)
        self._spawn([str(self.binary), "broker", "--config", str(self.config_path)],
                    cwd=self.data_dir.parent, log_path=self.stdout_path, env=env)
        return self

    def wait_ready(self, timeout: float = 60.0) -> "Chronik":
        """Wait until /health/ready is 200; on failure (timeout, exit) the broker is killed."""
        try:
            deadline = time.monotonic() + timeout
            while not self.ready():
                self._check_alive("starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"chronik {self.bootstrap} not ready after {timeout}s; log:\n{self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self._hard_kill()
            raise
        return self

    def restart(self, timeout: float = 120.0) -> "Chronik":
        """Start again with the same config and data (stops it first if still running)."""
        if self.running:
            self.stop()
        return self.start(timeout)


# ---------------------------------------------------------------------------
# Apache Kafka: a multi-node KRaft cluster (the oracle for the cluster tests)
# ---------------------------------------------------------------------------


def stop_all(procs, timeout: float = 30.0) -> None:
    """SIGTERM every process at once, wait up to `timeout` in total, then SIGKILL the rest.

    (Stopping cluster members one by one can stall: the last ones wait for a quorum
    that the first ones took away.)"""
    procs = [p for p in procs if p is not None]
    for p in procs:
        if p.running:
            p._signal_group(signal.SIGTERM)
    deadline = time.monotonic() + timeout
    for p in procs:
        if p.proc is None:
            continue
        try:
            p.proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
        p._hard_kill()


class KafkaClusterNode(ApacheKafka):
    """One combined broker+controller of a KafkaCluster (static controller.quorum.voters)."""

    def __init__(self, node_id: int, data_dir, cluster_id: str, extra_props: dict | None = None,
                 host: str = LOOPBACK, heap: str = "384m") -> None:
        super().__init__(None, data_dir, extra_props=extra_props, host=host, heap=heap)
        self.name = f"apache-kafka-{node_id}"
        self.node_id = node_id
        self.cluster_id = cluster_id
        self.voters = ""  # set by KafkaCluster once every controller port is known

    def properties(self) -> dict:
        p = super().properties()
        p.pop("controller.quorum.bootstrap.servers", None)
        p.update({
            "node.id": str(self.node_id),
            "controller.quorum.voters": self.voters,
            "default.replication.factor": "3",
            "min.insync.replicas": "2",
            "offsets.topic.replication.factor": "3",
            "transaction.state.log.replication.factor": "3",
            "transaction.state.log.min.isr": "2",
            "share.coordinator.state.topic.replication.factor": "3",
            "share.coordinator.state.topic.min.isr": "2",
            # Three JVMs share two cores here: do not fence a broker for one slow heartbeat.
            "broker.session.timeout.ms": "3000",
        })
        p.update(self.extra_props)
        return p

    def format(self) -> None:
        ensure_kafka_libs()
        props = self._write_config()
        # Static quorum: no --standalone / --initial-controllers.
        argv = self._java_argv("kafka.tools.StorageTool", "format", f"--cluster-id={self.cluster_id}",
                               "-c", str(props), "--ignore-formatted")
        r = subprocess.run(argv, cwd=str(self.work_dir), capture_output=True, text=True, timeout=120)
        if r.returncode != 0:
            raise RuntimeError(f"kafka storage format (node {self.node_id}) failed ({r.returncode}):\n"
                               f"{r.stdout}\n{r.stderr}")
        self._formatted = True


class KafkaCluster:
    """An n-node Apache Kafka 4.1 KRaft cluster on 127.0.0.1, every node broker+controller.

    default.replication.factor=3, min.insync.replicas=2 (override with extra_props).
        k = KafkaCluster(tmp_path, n=3).start()
        k.bootstrap; k.kill9(2); k.restart(2); k.leader_of(topic, 0); k.stop()
    Node ids are 1..n. Same interface as cluster.ChronikCluster where Kafka has an
    equivalent (no admin HTTP: leaders and ISRs come from Metadata).
    """

    kind = "kafka"

    def __init__(self, base_dir, n: int = 3, extra_props: dict | None = None, heap: str = "384m") -> None:
        base = Path(base_dir).resolve()
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        self.nodes: dict[int, KafkaClusterNode] = {
            i: KafkaClusterNode(i, base / f"kafka{i}", cluster_id, extra_props=extra_props, heap=heap)
            for i in range(1, n + 1)
        }
        voters = ",".join(f"{i}@{k.host}:{k.controller_port}" for i, k in self.nodes.items())
        for k in self.nodes.values():
            k.voters = voters

    @property
    def ids(self) -> list[int]:
        return sorted(self.nodes)

    @property
    def started(self) -> list:  # conftest attaches these processes' logs to a failure report
        return list(self.nodes.values())

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_of(self.ids)

    def bootstrap_of(self, ids) -> str:
        return ",".join(self.nodes[i].bootstrap for i in ids)

    def running(self, i: int) -> bool:
        return self.nodes[i].running

    def live_ids(self) -> list[int]:
        return [i for i in self.ids if self.nodes[i].running]

    def start(self, timeout: float = 180.0) -> "KafkaCluster":
        try:
            # Format in parallel (each is a JVM start), then launch all: none serves before a quorum.
            errors: list = []
            threads = [threading.Thread(target=lambda k=k: _collect(errors, k.format), daemon=True)
                       for k in self.nodes.values() if not k._formatted]
            for t in threads:
                t.start()
            for t in threads:
                t.join(150)
            if errors:
                raise errors[0]
            for k in self.nodes.values():
                if not k.running:
                    k.launch()
            deadline = time.monotonic() + timeout
            for k in self.nodes.values():
                k.wait_serving(max(1.0, deadline - time.monotonic()))
            wait_until(lambda: self.registered_brokers() == set(self.ids), max(1.0, deadline - time.monotonic()),
                       interval=0.5, what=f"all {len(self.ids)} Kafka brokers registered")
        except BaseException:
            stop_all(self.nodes.values(), timeout=5)
            raise
        return self

    def _metadata(self, topics: list[str] | None, nodes=None) -> dict:
        import kwire

        last = None
        for i in nodes or self.live_ids():
            try:
                with kwire.Conn(self.nodes[i].bootstrap, timeout=5) as c:
                    res = c.request(kwire.METADATA, 4, kwire.metadata_v4_body(topics, allow_auto_create=False))
                if res is not None:
                    return kwire.parse_metadata_v4(res[1])
            except (OSError, ValueError, TimeoutError) as e:
                last = e
        raise ConnectionError(f"no live Kafka node answered Metadata (last error: {last!r})")

    def registered_brokers(self) -> set[int]:
        """Ids of the brokers Metadata lists (registered and not fenced)."""
        md = self._metadata([])
        return {b[0] for b in md["brokers"]}

    def kill9(self, i: int) -> None:
        self.nodes[i].kill9()

    def restart(self, i: int, timeout: float = 120.0) -> None:
        k = self.nodes[i]
        if k.running:
            k.stop()
        k.start(timeout)
        wait_until(lambda: i in self.registered_brokers(), timeout, interval=0.5, what=f"Kafka broker {i} registered")

    def stop(self, timeout: float = 20.0) -> None:
        stop_all(self.nodes.values(), timeout=timeout)

    def partition_metadata(self, topic: str, p: int, nodes=None) -> dict | None:
        """{"leader", "replicas", "isr", "error"} from Metadata, or None if unknown."""
        t = self._metadata([topic], nodes)["topics"].get(topic)
        return None if t is None else t["partitions"].get(p)

    def leader_of(self, topic: str, p: int, nodes=None, timeout: float = 30.0) -> int:
        """The leader of topic/p per Metadata from a live node (and alive itself)."""
        live = set(nodes or self.live_ids())

        def probe():
            m = self.partition_metadata(topic, p, sorted(live))
            return m["leader"] if m and m["error"] == 0 and m["leader"] in live else None

        return wait_until(probe, timeout, interval=0.2, what=f"a live leader of {topic}/{p}")

    def isr_of(self, topic: str, p: int) -> list[int]:
        m = self.partition_metadata(topic, p)
        return sorted(m["isr"]) if m else []

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(f"--- node {i}\n{k.log_tail(n)}" for i, k in self.nodes.items())


def _collect(errors: list, fn) -> None:
    try:
        fn()
    except BaseException as e:  # noqa: BLE001 - re-raised by the caller
        errors.append(e)
