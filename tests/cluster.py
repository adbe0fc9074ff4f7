"""A multi-broker Chronik region on loopback, with every Raft link through a fault proxy.

    c = ChronikCluster(3, tmp_path, min_insync_replicas=2).start()
    c.bootstrap                      # "127.0.0.1:p1,127.0.0.2:p2,127.0.0.3:p3"
    c.leader_of("t", 0)              # node id of the quorum-acknowledged leader
    c.partition_state(2, "t", 0)     # GET /v1/partitions/t/0 on node 2 (None if 404)
    c.kill9(1); c.restart(1)
    c.mesh.isolate(2); c.mesh.heal()
    c.wait_replicas_converged("t", 0)
    c.stop()

Node i (1-based, = node_id) listens on 127.0.0.i (kafka, raft and admin ports from
harness.free_port) and reaches peer j at c.mesh.address(i, j): a faultproxy.Proxy in
front of j's Raft listener. Keywords that are broker settings (harness._CHRONIK_KEYS, e.g.
default_partitions) go to the broker config; every other keyword goes to [cluster].

Also: create_topic(cluster, ...) and wait_topic_ready(cluster, ...) for ChronikCluster and
harness.KafkaCluster alike, and PartitionMonitor, which polls every node's view of some
partitions in the background to catch two leaders in one term.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import harness
from faultproxy import Mesh
from harness import Chronik, _CHRONIK_KEYS, _toml_value, free_port, stop_all, wait_until

# Timing used unless a test overrides it (the contract's defaults, stated explicitly).
CLUSTER_DEFAULTS = {
    "heartbeat_interval_ms": 250,
    "election_timeout_min_ms": 1000,
    "election_timeout_max_ms": 2000,
}


def http_json(url: str, timeout: float = 2.0):
    """(status, parsed JSON or None). Connection errors propagate (OSError)."""
    try:
        with harness.admin_urlopen(url, timeout=timeout) as r:
            body = r.read()
            return r.status, json.loads(body) if body else None
    except urllib.error.HTTPError as e:
        return e.code, None


def http_bytes(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    try:
        with harness.admin_urlopen(url, timeout=timeout) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


class ChronikCluster:
    """n Chronik brokers forming one region; Raft traffic goes through a faultproxy.Mesh."""

    kind = "chronik"

    def __init__(self, n: int, base_dir, durability: str = "replicated", block_mode: str = "drop",
                 binary: Path | None = None, env: dict | None = None, **opts) -> None:
        if not 1 <= n <= 254:
            raise ValueError("n must be 1..254")
        self.n = n
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        broker_opts = {k: v for k, v in opts.items() if k in _CHRONIK_KEYS}
        self.cluster_opts = {**CLUSTER_DEFAULTS, **{k: v for k, v in opts.items() if k not in _CHRONIK_KEYS}}
        self.hosts = {i: f"127.0.0.{i}" for i in range(1, n + 1)}
        raft_ports = {i: free_port(h) for i, h in self.hosts.items()}
        self.mesh = Mesh({i: (self.hosts[i], raft_ports[i]) for i in self.hosts}, self.hosts,
                         port_for=free_port, block_mode=block_mode)
        self.nodes: dict[int, Chronik] = {}
        for i, h in self.hosts.items():
            node = Chronik(None, self.base_dir / f"node{i}", host=h, raft_port=raft_ports[i],
                           extra_toml=self._cluster_toml(i), env=env, binary=binary,
                           node_id=i, durability=durability, **broker_opts)
            node.name = f"chronik-{i}"
            self.nodes[i] = node

    def _cluster_toml(self, i: int) -> str:
        lines = ["[cluster]"] + [f"{k} = {_toml_value(v)}" for k, v in self.cluster_opts.items()]
        for j in self.ids:
            if j != i:
                host, port = self.mesh.address(i, j)
                lines += ["", "[[cluster.peers]]", f"id = {j}", f'raft = "{host}:{port}"']
        return "\n".join(lines) + "\n"

    # -- addresses ---------------------------------------------------------

    @property
    def ids(self) -> list[int]:
        return sorted(self.hosts)

    @property
    def started(self) -> list:  # conftest attaches these processes' logs to a failure report
        return list(self.nodes.values())

    @property
    def bootstrap(self) -> str:
        return self.bootstrap_of(self.ids)

    def bootstrap_of(self, ids) -> str:
        return ",".join(self.nodes[i].bootstrap for i in ids)

    def admin_url(self, i: int) -> str:
        return self.nodes[i].admin_url

    def running(self, i: int) -> bool:
        return self.nodes[i].running

    def live_ids(self) -> list[int]:
        return [i for i in self.ids if self.nodes[i].running]

    # -- lifecycle -----------------------------------------------------------

    def start(self, timeout: float = 90.0) -> "ChronikCluster":
        """Launch every broker, then wait until each is ready, lists all n brokers in
        /v1/cluster (with the Kafka addresses configured here), and has exchanged Raft
        traffic through the mesh."""
        deadline = time.monotonic() + timeout
        for node in self.nodes.values():
            node.launch()
        for node in self.nodes.values():
            node.wait_ready(max(1.0, deadline - time.monotonic()))
        expected = {i: self.nodes[i].bootstrap for i in self.ids}
        for i in self.ids:
            wait_until(lambda i=i: self._brokers_seen(i) == expected, max(1.0, deadline - time.monotonic()),
                       what=f"node {i}'s /v1/cluster listing brokers {expected}")
        wait_until(self._controllers_agree, max(1.0, deadline - time.monotonic()),
                   what="every node naming the same controller_leader")
        if self.n > 1:
            def mesh_used():
                return all(any(self.mesh.bytes_between(i, j) > 0 for j in self.ids if j != i) for i in self.ids)
            try:
                wait_until(mesh_used, 10, what="Raft traffic through the mesh")
            except TimeoutError as e:
                quiet = [i for i in self.ids if not any(self.mesh.bytes_between(i, j) for j in self.ids if j != i)]
                raise AssertionError(f"nodes {quiet} exchanged no bytes through the fault proxies: do they connect "
                                     f"to [[cluster.peers]].raft? (partitions would not partition them)") from e
        return self

    def cluster_info(self, i: int, timeout: float = 2.0) -> dict | None:
        status, body = http_json(self.admin_url(i) + "/v1/cluster", timeout)
        return body if status == 200 else None

    def _brokers_seen(self, i: int) -> dict | None:
        info = self.cluster_info(i)
        return info and {b["id"]: b["kafka"] for b in info.get("brokers", [])}

    def _controllers_agree(self) -> bool:
        leaders = {(self.cluster_info(i) or {}).get("controller_leader") for i in self.live_ids()}
        return len(leaders) == 1 and None not in leaders and -1 not in leaders

    def kill9(self, i: int) -> None:
        self.nodes[i].kill9()

    def restart(self, i: int, timeout: float = 60.0) -> None:
        """(Re)start node i on its data and wait until it is ready."""
        node = self.nodes[i]
        if node.running:
            node.stop()
        node.start(timeout)

    def stop(self, timeout: float = 30.0) -> None:
        try:
            stop_all(self.nodes.values(), timeout=timeout)
        finally:
            self.mesh.close()

    def log_tail(self, n: int = 60) -> str:
        return "\n".join(f"--- node {i}\n{node.log_tail(n)}" for i, node in self.nodes.items())

    # -- partition introspection -------------------------------------------

    def partition_state(self, i: int, topic: str, p: int, timeout: float = 2.0) -> dict | None:
        """Node i's local replica of topic/p (GET /v1/partitions/...), None if it hosts none.
        Raises OSError if the node does not answer."""
        status, body = http_json(f"{self.admin_url(i)}/v1/partitions/{topic}/{p}", timeout)
        if status == 404:
            return None
        if status != 200:
            raise RuntimeError(f"node {i}: GET /v1/partitions/{topic}/{p} returned {status}")
        return body

    def home_state(self, topic: str, timeout: float = 2.0) -> dict | None:
        """The topic's home role as the region's brokers report it (GET /v1/home/...): the
        first answer's home, epoch and id, with `partitions` holding every leader's entry
        from every answering broker. None if no broker knows the topic."""
        out = None
        for i in self.live_ids():
            try:
                status, body = http_json(f"{self.admin_url(i)}/v1/home/{topic}", timeout)
            except (OSError, ValueError):
                continue
            if status != 200 or not body:
                continue
            if out is None:
                out = {**body, "partitions": []}
            out["partitions"] += [p for p in body["partitions"] if p["leader"]]
        return out

    def states(self, topic: str, p: int, nodes=None, timeout: float = 1.0) -> dict[int, dict | None]:
        """partition_state of every answering node among `nodes` (default: running ones)."""
        out = {}
        for i in nodes or self.live_ids():
            try:
                out[i] = self.partition_state(i, topic, p, timeout)
            except (OSError, RuntimeError, ValueError):
                pass
        return out

    def dump_log(self, i: int, topic: str, p: int, timeout: float = 30.0) -> bytes:
        status, body = http_bytes(f"{self.admin_url(i)}/v1/partitions/{topic}/{p}/log", timeout)
        if status != 200:
            raise RuntimeError(f"node {i}: GET /v1/partitions/{topic}/{p}/log returned {status}: {body[:200]!r}")
        return body

    def quorum_leader(self, topic: str, p: int, nodes=None) -> tuple[int, int] | None:
        """(leader id, term) if a node among `nodes` claims leadership and a majority of the
        whole cluster reports that node as leader in that term; else None.

        Requiring a majority ignores a stale leader cut off from the others, and a lone node
        whose term grew while it campaigned in isolation."""
        states = {i: s for i, s in self.states(topic, p, nodes).items() if s}
        claims = [(s["term"], i) for i, s in states.items() if s.get("is_leader")]
        if not claims:
            return None
        term, leader = max(claims)
        votes = sum(1 for s in states.values() if s.get("leader") == leader and s.get("term") == term)
        return (leader, term) if votes >= self.n // 2 + 1 else None

    def leader_of(self, topic: str, p: int, nodes=None, timeout: float = 30.0) -> int:
        """Poll until some live node is the quorum-acknowledged leader of topic/p."""
        return wait_until(lambda: (self.quorum_leader(topic, p, nodes) or (None,))[0], timeout, interval=0.1,
                          what=f"a leader of {topic}/{p} acknowledged by a majority")

    def isr_of(self, topic: str, p: int) -> list[int]:
        leader, _ = self.quorum_leader(topic, p) or (None, None)
        if leader is None:
            return []
        s = self.partition_state(leader, topic, p)
        return sorted(s["isr"]) if s else []

    def wait_replicas_converged(self, topic: str, p: int, nodes=None, timeout: float = 60.0) -> tuple[int, bytes]:
        """Wait until every node in `nodes` (default: all running) reports the same high
        watermark, unchanged across reading the dumps, and byte-identical log dumps.
        Returns (high_watermark, dump)."""
        nodes = list(nodes or self.live_ids())
        deadline = time.monotonic() + timeout
        last = "nothing read yet"
        while True:
            try:
                before = {i: self.partition_state(i, topic, p) for i in nodes}
                missing = [i for i, s in before.items() if s is None]
                hws = {s["high_watermark"] for s in before.values() if s}
                if missing:
                    last = f"nodes {missing} host no replica"
                elif len(hws) != 1:
                    last = "high watermarks " + ", ".join(
                        f"{i}: hw {s['high_watermark']} leo {s['log_end_offset']}" for i, s in before.items())
                else:
                    dumps = {i: self.dump_log(i, topic, p) for i in nodes}
                    after = {i: self.partition_state(i, topic, p) for i in nodes}
                    digests = {i: (len(d), hashlib.sha256(d).hexdigest()[:12]) for i, d in dumps.items()}
                    if len(set(digests.values())) != 1:
                        last = f"hw {hws} everywhere but dumps differ: {digests}"
                    elif {s["high_watermark"] for s in after.values() if s} != hws:
                        last = "high watermark moved while reading the dumps"
                    else:
                        return hws.pop(), dumps[nodes[0]]
            except (OSError, RuntimeError, KeyError, TypeError, ValueError) as e:
                last = f"error: {e!r}"
            if time.monotonic() > deadline:
                raise AssertionError(f"replicas {nodes} of {topic}/{p} did not converge in {timeout}s: {last}")
            time.sleep(0.25)


# ---------------------------------------------------------------------------
# Helpers for ChronikCluster and harness.KafkaCluster alike
# ---------------------------------------------------------------------------


def create_topic(cluster, topic: str, partitions: int = 1, replication_factor: int = 3, config: dict | None = None,
                 timeout: float = 60.0) -> None:
    """CreateTopics through the cluster bootstrap (confluent-kafka AdminClient), then
    wait_topic_ready."""
    from confluent_kafka.admin import NewTopic

    from kclient import admin, future_error

    bs = cluster.bootstrap_of(cluster.live_ids())
    fut = admin(bs).create_topics([NewTopic(topic, partitions, replication_factor, config=config or {})],
                                  operation_timeout=timeout)[topic]
    err = future_error(fut, timeout)
    assert err is None, f"create_topics({topic}, {partitions} partitions, RF {replication_factor}) failed: {err}"
    wait_topic_ready(cluster, topic, partitions, replication_factor, timeout)


def wait_topic_ready(cluster, topic: str, partitions: int, replication_factor: int, timeout: float = 60.0) -> None:
    """Every partition has a leader with a full replica set that answers ListOffsets."""
    import kwire

    deadline = time.monotonic() + timeout
    for p in range(partitions):
        leader = cluster.leader_of(topic, p, timeout=max(1.0, deadline - time.monotonic()))

        def serving():
            if cluster.kind == "chronik":
                s = cluster.partition_state(leader, topic, p)
                if not s or len(s["replicas"]) != replication_factor:
                    return False
            else:
                m = cluster.partition_metadata(topic, p)
                if not m or len(m["replicas"]) != replication_factor:
                    return False
            with kwire.Conn(cluster.nodes[leader].bootstrap, timeout=5) as c:
                res = c.request(kwire.LIST_OFFSETS, 1, kwire.list_offsets_v1_body(topic, p, -1))
            return res is not None and kwire.parse_list_offsets_v1(res[1])[(topic, p)]["error"] == 0

        wait_until(serving, max(1.0, deadline - time.monotonic()), interval=0.2,
                   what=f"{topic}/{p} served by its leader (node {leader}) with {replication_factor} replicas")


class PartitionMonitor(threading.Thread):
    """Polls every node's partition_state for some partitions every `interval` seconds.

    split_brain():   two different nodes ever reported is_leader in the same term.
    hw_regressions(): a node's high watermark went down within one process lifetime.
    observations:    (monotonic time, node, pid, topic, partition, state dict)."""

    def __init__(self, cluster: ChronikCluster, partitions: list[tuple[str, int]], interval: float = 0.1,
                 max_seconds: float = 900) -> None:
        super().__init__(daemon=True, name="partition-monitor")
        self.cluster, self.partitions, self.interval, self.max_seconds = cluster, partitions, interval, max_seconds
        self.observations: list[tuple[float, int, int, str, int, dict]] = []
        self.lock = threading.Lock()
        self._stop_evt = threading.Event()

    def start(self) -> "PartitionMonitor":
        super().start()
        return self

    def run(self) -> None:
        deadline = time.monotonic() + self.max_seconds
        while not self._stop_evt.is_set() and time.monotonic() < deadline:
            for i in self.cluster.ids:
                node = self.cluster.nodes[i]
                pid = node.pid
                if not node.running:
                    continue
                for topic, p in self.partitions:
                    try:
                        s = self.cluster.partition_state(i, topic, p, timeout=0.5)
                    except (OSError, RuntimeError, ValueError):
                        continue
                    if s:
                        with self.lock:
                            self.observations.append((time.monotonic(), i, pid, topic, p, s))
            self._stop_evt.wait(self.interval)

    def stop(self) -> "PartitionMonitor":
        self._stop_evt.set()
        self.join(10)
        return self

    def leaders_by_term(self) -> dict[tuple[str, int, int], set[int]]:
        out: dict[tuple[str, int, int], set[int]] = {}
        with self.lock:
            for _t, i, _pid, topic, p, s in self.observations:
                if s.get("is_leader"):
                    out.setdefault((topic, p, s["term"]), set()).add(i)
        return out

    def split_brain(self) -> list[str]:
        return [f"{t}/{p} term {term}: nodes {sorted(ns)} all reported is_leader"
                for (t, p, term), ns in sorted(self.leaders_by_term().items()) if len(ns) > 1]

    def hw_regressions(self) -> list[str]:
        last: dict[tuple[int, int, str, int], int] = {}
        out = []
        with self.lock:
            for _t, i, pid, topic, p, s in self.observations:
                key = (i, pid, topic, p)
                hw = s["high_watermark"]
                if key in last and hw < last[key]:
                    out.append(f"node {i} (pid {pid}) {topic}/{p}: high watermark {last[key]} -> {hw}")
                last[key] = max(hw, last.get(key, hw))
        return out

    def hw_seen(self, node: int, topic: str, p: int, since: float, until: float | None = None) -> list[int]:
        with self.lock:
            return [s["high_watermark"] for t, i, _pid, tt, pp, s in self.observations
                    if i == node and tt == topic and pp == p and t >= since and (until is None or t <= until)]
