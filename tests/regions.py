"""Several Chronik regions on loopback, mirrored by dc-link through WAN simulators.

    with Regions(tmp_path, names=("us-east", "eu-west"), brokers=3) as r:
        r.bootstrap("us-east")               # Kafka bootstrap of a region
        r.cluster("eu-west")                 # its cluster.ChronikCluster
        r.set_wan("eu-west", delay_ms=50, loss=0.01)   # traffic INTO eu-west's dc-link
        r.blackhole("eu-west"); r.blackhole("eu-west", on=False)
        r.kill9_dclink("us-east"); r.restart_dclink("us-east")
        r.lag("us-east")                     # GET /v1/lag of us-east's dc-link (JSON)
        r.wait_mirrored(topic, 3, home="us-east")
        r.assert_identical(topic, 0, home="us-east")

Layout, per region R:
  * a cluster.ChronikCluster of `brokers` brokers with `region = R` (hosts 127.0.0.1..n,
    free ports: two regions share the hosts but never a port);
  * one `chronik wan-sim` whose UDP proxy listens on the address the topology gives as
    R's `dc_link` and forwards to the UDP port R's dc-link really binds (`listen`). Every
    other region dials R through it, so its impairment (set_wan, blackhole) applies to
    every connection INTO R, in both directions of those connections: the link
    "us-east->eu-west" (dialed by us-east, carrying us-east's topics) crosses eu-west's
    wan-sim only;
  * one `chronik dc-link` (config dclink-R.toml, admin HTTP on its own port).
All regions share one topology file (topology.toml) and one dev CA (`chronik certs init`).

Every process is a harness.ManagedProcess (killed at interpreter exit), logs to a file in
the base directory, and is listed in `.started`, so conftest attaches its log tail to a
failure report. (DcLink and WanSim subclass harness.Chronik, the class conftest attaches
logs for: they are the same binary with the same admin-HTTP readiness protocol.)
Every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import re
import socket
import subprocess
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

import harness
from cluster import ChronikCluster, http_json
from harness import (LOOPBACK, Chronik, ManagedProcess, admin_urlopen, chronik_bin, free_port, stop_all, tail,
                     wait_until)

DEFAULT_NAMES = ("us-east", "eu-west")
IMPAIRMENT_FIELDS = ("delay_ms", "jitter_ms", "loss", "bandwidth_mbit", "reorder", "corrupt", "blackhole")


def free_udp_port(host: str = LOOPBACK) -> int:
    """A UDP port free right now on `host`, from the test range (harness.free_port)."""
    return free_port(host, socket.SOCK_DGRAM)


def toml_value(v) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return harness._toml_value(v)


def http_put_json(url: str, body: dict, timeout: float = 5.0) -> tuple[int, dict | str]:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="PUT",
                                 headers={"Content-Type": "application/json"})
    try:
        with admin_urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace")


def prometheus_value(text: str, name: str, **labels) -> float | None:
    """Sum of the samples of metric `name` whose labels include `labels` (None if none)."""
    total, found = 0.0, False
    for line in text.splitlines():
        if not line.startswith(name) or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)", line)
        if not m or m.group(1) != name:
            continue
        got = dict(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', m.group(2) or ""))
        if all(got.get(k) == str(v) for k, v in labels.items()):
            total += float(m.group(3))
            found = True
    return total if found else None


# ---------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------


class DcLink(Chronik):
    """One `chronik dc-link --config FILE` process. Ready when GET /health/ready is 200
    (Chronik.ready/wait_ready, same protocol). `bootstrap` is its admin address."""

    def __init__(self, region: str, config_path: Path, admin_port: int, log_path: Path,
                 binary: Path | None = None, name: str | None = None) -> None:
        ManagedProcess.__init__(self)
        self.name = name or f"dc-link-{region}"
        self.region = region
        self.host = LOOPBACK
        self.admin_port = admin_port
        self.port = admin_port  # shown as "bootstrap" in conftest's report header
        self.config_path = Path(config_path)
        self.stdout_path = Path(log_path)
        self.binary = Path(binary) if binary else chronik_bin()
        self.env = None
        self.command = "dc-link"

    def toml(self) -> str:  # the config is written by Regions
        return self.config_path.read_text()

    def launch(self) -> "DcLink":
        if not self.binary.exists():
            raise FileNotFoundError(f"chronik binary not found at {self.binary}")
        import os

        env = dict(os.environ)
        env.setdefault("RUST_BACKTRACE", "1")
        if self.env:
            env.update(self.env)
        self._spawn([str(self.binary), self.command, "--config", str(self.config_path)],
                    cwd=self.config_path.parent, log_path=self.stdout_path, env=env)
        return self

    def wait_live(self, timeout: float = 60.0) -> "DcLink":
        """Wait until /health/live is 200 (the process serves its admin API); on failure
        (timeout, exit) the process is killed."""
        try:
            deadline = time.monotonic() + timeout
            while True:
                try:
                    if harness.http_get(self.admin_url + "/health/live", 1.0)[0] == 200:
                        return self
                except (OSError, ValueError):
                    pass
                self._check_alive("starting")
                if time.monotonic() > deadline:
                    raise TimeoutError(f"{self.name} not live after {timeout}s; log:\n{self.log_tail()}")
                time.sleep(0.1)
        except BaseException:
            self._hard_kill()
            raise

    def lag(self, timeout: float = 5.0) -> dict:
        status, body = http_json(self.admin_url + "/v1/lag", timeout)
        if status != 200 or body is None:
            raise RuntimeError(f"{self.name}: GET /v1/lag returned {status}")
        return body

    def log_text(self) -> str:
        try:
            return self.stdout_path.read_text(errors="replace")
        except OSError:
            return ""


class WanSim(Chronik):
    """One `chronik wan-sim` process: UDP proxies LISTEN=UPSTREAM plus an HTTP control port.
    Ready when it has printed "wan-sim ready" (after binding every listener)."""

    def __init__(self, name: str, udp: list[tuple[tuple[str, int], tuple[str, int]]], control_port: int,
                 log_path: Path, binary: Path | None = None) -> None:
        ManagedProcess.__init__(self)
        self.name = name
        self.udp = udp
        self.host = LOOPBACK
        self.admin_port = control_port
        self.port = control_port
        self.stdout_path = Path(log_path)
        self.binary = Path(binary) if binary else chronik_bin()
        self.env = None
        self._log_start = 0
        self.impairment: dict = {}

    def launch(self) -> "WanSim":
        if not self.binary.exists():
            raise FileNotFoundError(f"chronik binary not found at {self.binary}")
        argv = [str(self.binary), "wan-sim"]
        for (lh, lp), (uh, up) in self.udp:
            argv += ["--udp", f"{lh}:{lp}={uh}:{up}"]
        argv += ["--control", f"{self.host}:{self.admin_port}"]
        try:
            self._log_start = self.stdout_path.stat().st_size
        except OSError:
            self._log_start = 0
        self._spawn(argv, cwd=self.stdout_path.parent, log_path=self.stdout_path)
        return self

    def ready(self) -> bool:
        try:
            with open(self.stdout_path, "rb") as f:
                f.seek(self._log_start)
                return b"wan-sim ready" in f.read()
        except OSError:
            return False

    def set(self, **imp) -> dict:
        """PUT /v1/impairment with exactly these fields (missing ones = 0 / false)."""
        unknown = set(imp) - set(IMPAIRMENT_FIELDS)
        if unknown:
            raise TypeError(f"unknown impairment fields {sorted(unknown)}")
        status, body = http_put_json(self.admin_url + "/v1/impairment", imp)
        if status != 200:
            raise RuntimeError(f"{self.name}: PUT /v1/impairment {imp} returned {status}: {body}")
        self.impairment = dict(imp)
        return body

    def get(self) -> dict:
        status, body = http_json(self.admin_url + "/v1/impairment", 5.0)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET /v1/impairment returned {status}")
        return body

    def stats(self) -> dict:
        status, body = http_json(self.admin_url + "/v1/stats", 5.0)
        if status != 200:
            raise RuntimeError(f"{self.name}: GET /v1/stats returned {status}")
        return body


# ---------------------------------------------------------------------------
# Regions
# ---------------------------------------------------------------------------


def _run_cli(binary: Path, *args: str, timeout: float = 60.0) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=timeout)


def certs_init(binary: Path, directory: Path, regions) -> Path:
    """`chronik certs init --dir DIR --regions a,b,...`; returns DIR."""
    r = _run_cli(binary, "certs", "init", "--dir", str(directory), "--regions", ",".join(regions))
    if r.returncode != 0:
        raise RuntimeError(f"chronik certs init failed ({r.returncode}):\n{r.stdout}\n{r.stderr}")
    for name in ["ca.pem", "ca.key"] + [f"{x}.{e}" for x in regions for e in ("pem", "key")]:
        if not (directory / name).is_file():
            raise RuntimeError(f"chronik certs init did not write {directory / name}:\n{r.stdout}\n{r.stderr}")
    return directory


def _dump_diff(a: bytes, b: bytes) -> str:
    """Where two log dumps first differ, batch by batch."""
    def batches(d: bytes):
        out, pos = [], 0
        while pos + 12 <= len(d):
            base = int.from_bytes(d[pos:pos + 8], "big", signed=True)
            length = int.from_bytes(d[pos + 8:pos + 12], "big", signed=True)
            epoch = int.from_bytes(d[pos + 12:pos + 16], "big", signed=True) if pos + 16 <= len(d) else None
            end = pos + 12 + max(length, 0)
            out.append((base, epoch, d[pos:end]))
            if length <= 0:
                break
            pos = end
        return out

    ba, bb = batches(a), batches(b)
    for i, (x, y) in enumerate(zip(ba, bb)):
        if x != y:
            return (f"batch #{i}: home base_offset {x[0]} epoch {x[1]} ({len(x[2])} bytes), "
                    f"mirror base_offset {y[0]} epoch {y[1]} ({len(y[2])} bytes)")
    if len(ba) != len(bb):
        extra = ba[len(bb):] or bb[len(ba):]
        return (f"home has {len(ba)} batches, mirror {len(bb)}; first extra batch at offset "
                f"{extra[0][0] if extra else '?'}")
    first = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
    return f"first differing byte at {first}"


class Regions:
    """Regions(base_dir, names=("us-east", "eu-west"), brokers=3, wan=None, cross_dc=None,
    faults=None, cluster_opts=None, witness=False, lease=None).

    wan:      initial impairment of every region's wan-sim (dict of IMPAIRMENT_FIELDS).
    cross_dc: keys of the topology's [cross_dc] section.
    faults:   {region: {"corrupt_frame_every": N}}, that region's dc-link [faults].
    witness:  also run `chronik witness` (a lease voter holding no data), dialled directly.
    lease:    keys of the topology's [lease] section.
    witness_paths: each region dials the witness through a wan-sim of its own (the region's
              dc-link reads topology-R.toml, which differs only in the witness address), so
              isolate() can cut one region off the witness while the others still reach it.
    standby:  regions that also run a standby dc-link (listed in the topology's
              dc_link_standby, dialled directly, not through the wan-sim); see standby().
    """

    WITNESS = "witness"

    def __init__(self, base_dir, names=DEFAULT_NAMES, brokers: int = 3, wan: dict | None = None,
                 cross_dc: dict | None = None, faults: dict | None = None, cluster_opts: dict | None = None,
                 binary: Path | None = None, witness: bool = False, lease: dict | None = None,
                 witness_paths: bool = False, standby: tuple | list = ()) -> None:
        self.base_dir = Path(base_dir).resolve()
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.names = list(names)
        if len(set(self.names)) != len(self.names) or len(self.names) < 2:
            raise ValueError(f"need at least two distinct regions, got {self.names}")
        self.binary = Path(binary) if binary else chronik_bin()
        self.wan_initial = dict(wan or {})
        self.cross_dc = dict(cross_dc or {})
        self.faults = {r: dict(f) for r, f in (faults or {}).items()}
        self.certs_dir = self.base_dir / "certs"
        self.topology_path = self.base_dir / "topology.toml"
        self.clusters: dict[str, ChronikCluster] = {
            r: ChronikCluster(brokers, self.base_dir / r, binary=self.binary, region=r, **(cluster_opts or {}))
            for r in self.names
        }
        for r, c in self.clusters.items():
            for i, node in c.nodes.items():
                node.name = f"chronik-{r}-{i}"
        # Addresses: the proxy (what others dial), the real dc-link UDP port, admin/control HTTP.
        self.proxy_addr = {r: (LOOPBACK, free_udp_port()) for r in self.names}
        self.listen_addr = {r: (LOOPBACK, free_udp_port()) for r in self.names}
        self.wansims: dict[str, WanSim] = {
            r: WanSim(f"wan-sim-{r}", [(self.proxy_addr[r], self.listen_addr[r])], free_port(),
                      self.base_dir / f"wan-sim-{r}.log", self.binary)
            for r in self.names
        }
        self.dclinks: dict[str, DcLink] = {
            r: DcLink(r, self.base_dir / f"dclink-{r}.toml", free_port(), self.base_dir / f"dclink-{r}.log",
                      self.binary)
            for r in self.names
        }
        self.lease = dict(lease or {})
        self.witness: DcLink | None = None
        self.witness_addr = (LOOPBACK, free_udp_port())
        if witness:
            self.witness = DcLink(self.WITNESS, self.base_dir / "witness.toml", free_port(),
                                  self.base_dir / "witness.log", self.binary, name="witness")
            self.witness.command = "witness"
        # Region -> the wan-sim on its path to the witness (witness_paths only).
        self.witness_sims: dict[str, WanSim] = {}
        self.witness_proxy: dict[str, tuple[str, int]] = {}
        if witness and witness_paths:
            for r in self.names:
                self.witness_proxy[r] = (LOOPBACK, free_udp_port())
                self.witness_sims[r] = WanSim(f"wan-sim-witness-{r}", [(self.witness_proxy[r], self.witness_addr)],
                                              free_port(), self.base_dir / f"wan-sim-witness-{r}.log", self.binary)
        self.standby_addr = {r: (LOOPBACK, free_udp_port()) for r in standby}
        self.standbys: dict[str, DcLink] = {
            r: DcLink(r, self.base_dir / f"dclink-{r}-standby.toml", free_port(),
                      self.base_dir / f"dclink-{r}-standby.log", self.binary, name=f"dc-link-{r}-standby")
            for r in standby
        }
        self.extra: list[ManagedProcess] = []  # processes a test adds (listed in .started, stopped by stop())
        self.admin_tokens: dict[str, Path] = {}  # region -> its admin token file (set_admin_token)
        self._started = False

    def set_admin_token(self, region: str, token: str) -> Path:
        """Before start(): closes `region`'s broker and dc-link admin APIs to callers without
        `token`. The harness's own HTTP helpers send it (harness.ADMIN_TOKENS)."""
        path = self.base_dir / f"admin-token-{region}"
        path.write_text(token + "\n")
        self.admin_tokens[region] = path
        for node in self.clusters[region].nodes.values():
            node.config["admin_token_file"] = str(path)
            harness.ADMIN_TOKENS[f"{node.host}:{node.admin_port}"] = token
        harness.ADMIN_TOKENS[f"{LOOPBACK}:{self.dclinks[region].admin_port}"] = token
        return path

    # -- context manager -----------------------------------------------------

    def __enter__(self) -> "Regions":
        if not self._started:
            self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- addresses -------------------------------------------------------------

    @property
    def started(self) -> list:
        """Every process of the deployment (conftest attaches their logs to a failure report)."""
        procs: list = []
        for r in self.names:
            procs.extend(self.clusters[r].nodes.values())
        procs.extend(self.wansims.values())
        procs.extend(self.witness_sims.values())
        procs.extend(self.dclinks.values())
        procs.extend(self.standbys.values())
        if self.witness:
            procs.append(self.witness)
        procs.extend(self.extra)
        return procs

    def cluster(self, region: str) -> ChronikCluster:
        return self.clusters[region]

    def bootstrap(self, region: str) -> str:
        c = self.clusters[region]
        return c.bootstrap_of(c.live_ids())

    def dclink(self, region: str) -> DcLink:
        return self.dclinks[region]

    def standby(self, region: str) -> DcLink:
        """The region's standby dc-link process (Regions(standby=[...]))."""
        return self.standbys[region]

    def wansim(self, region: str) -> WanSim:
        return self.wansims[region]

    def dclink_url(self, region: str) -> str:
        return self.dclinks[region].admin_url

    def mirrors_of(self, home: str) -> list[str]:
        return [r for r in self.names if r != home]

    # -- configuration files ---------------------------------------------------

    def region_entry(self, r: str, certs_dir: Path | None = None, dc_link: tuple[str, int] | None = None) -> str:
        c = self.clusters[r]
        certs = certs_dir or self.certs_dir
        host, port = dc_link or self.proxy_addr[r]
        lines = [
            "[[regions]]",
            f"name = {toml_value(r)}",
            f"bootstrap = {toml_value([c.nodes[i].bootstrap for i in c.ids])}",
            f"brokers_admin = {toml_value([f'{c.nodes[i].host}:{c.nodes[i].admin_port}' for i in c.ids])}",
            f"dc_link = {toml_value(f'{host}:{port}')}",
        ]
        if r in self.standby_addr:
            sh, sp = self.standby_addr[r]
            lines.append(f"dc_link_standby = {toml_value([f'{sh}:{sp}'])}")
        lines += [
            f"cert = {toml_value(str(certs / f'{r}.pem'))}",
            f"key = {toml_value(str(certs / f'{r}.key'))}",
        ]
        return "\n".join(lines) + "\n"

    def topology_toml(self, regions: list[str] | None = None, ca: Path | None = None,
                      entries: dict[str, str] | None = None, witness_addr: tuple[str, int] | None = None) -> str:
        out = ""
        if self.cross_dc:
            out += "[cross_dc]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in self.cross_dc.items()) + "\n"
        if self.lease:
            out += "[lease]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in self.lease.items()) + "\n"
        out += f"[tls]\nca = {toml_value(str(ca or self.certs_dir / 'ca.pem'))}\n\n"
        for r in regions or self.names:
            out += ((entries or {}).get(r) or self.region_entry(r)) + "\n"
        if self.witness:
            certs = self.certs_dir
            host, port = witness_addr or self.witness_addr
            out += ("[witness]\n"
                    f"name = {toml_value(self.WITNESS)}\n"
                    f"address = {toml_value(f'{host}:{port}')}\n"
                    f"cert = {toml_value(str(certs / f'{self.WITNESS}.pem'))}\n"
                    f"key = {toml_value(str(certs / f'{self.WITNESS}.key'))}\n")
        return out

    def dclink_toml(self, region: str, topology: Path | None = None, listen: tuple[str, int] | None = None,
                    admin_port: int | None = None, faults: dict | None = None) -> str:
        host, port = listen or self.listen_addr[region]
        if topology is None and region in self.witness_sims:
            topology = self.base_dir / f"topology-{region}.toml"
        lines = [
            f"region = {toml_value(region)}",
            f"topology = {toml_value(str(topology or self.topology_path))}",
            f"listen = {toml_value(f'{host}:{port}')}",
            f"admin = {toml_value(f'{LOOPBACK}:{admin_port or self.dclinks[region].admin_port}')}",
        ]
        if region in self.admin_tokens:
            lines.append(f"broker_admin_token_file = {toml_value(str(self.admin_tokens[region]))}")
        f = self.faults.get(region) if faults is None else faults
        if f:
            lines += ["", "[faults]"] + [f"{k} = {toml_value(v)}" for k, v in f.items()]
        return "\n".join(lines) + "\n"

    def check_topology(self, path: Path) -> str:
        r = _run_cli(self.binary, "config", "check-topology", str(path), timeout=30)
        if r.returncode != 0:
            raise RuntimeError(f"chronik config check-topology {path} failed ({r.returncode}):\n"
                               f"{r.stdout}\n{r.stderr}\n--- file:\n{path.read_text()}")
        return r.stdout

    # -- lifecycle ---------------------------------------------------------------

    def start(self, timeout: float = 120.0) -> "Regions":
        deadline = time.monotonic() + timeout
        self._started = True
        try:
            if not (self.certs_dir / "ca.pem").exists():
                certs_init(self.binary, self.certs_dir, self.names + ([self.WITNESS] if self.witness else []))
            # Start the regions side by side: each waits for its own Raft quorum.
            errors: list = []

            def start_cluster(c):
                try:
                    c.start(timeout=max(10.0, deadline - time.monotonic()))
                except BaseException as e:  # noqa: BLE001 - re-raised below
                    errors.append(e)

            threads = [threading.Thread(target=start_cluster, args=(c,), daemon=True) for c in self.clusters.values()]
            for t in threads:
                t.start()
            for t in threads:
                t.join(max(10.0, deadline - time.monotonic() + 10))
            if errors:
                raise errors[0]
            if any(t.is_alive() for t in threads):
                raise TimeoutError("a region did not start in time")
            self.topology_path.write_text(self.topology_toml())
            self.check_topology(self.topology_path)
            for r in self.names:
                w = self.wansims[r]
                w.launch()
            for r in self.names:
                self.wansims[r].wait_ready(max(1.0, deadline - time.monotonic()))
                self.wansims[r].set(**self.wan_initial)
            for r, w in self.witness_sims.items():
                w.launch()
                w.wait_ready(max(1.0, deadline - time.monotonic()))
                path = self.base_dir / f"topology-{r}.toml"
                path.write_text(self.topology_toml(witness_addr=self.witness_proxy[r]))
                self.check_topology(path)
            if self.witness:
                host, port = self.witness_addr
                self.witness.config_path.write_text(
                    f"topology = {toml_value(str(self.topology_path))}\n"
                    f"admin = {toml_value(f'{LOOPBACK}:{self.witness.admin_port}')}\n"
                    f"listen = {toml_value(f'{host}:{port}')}\n")
                self.witness.launch()
            for r in self.names:
                self.dclinks[r].config_path.write_text(self.dclink_toml(r))
                self.dclinks[r].launch()
            for r in self.names:
                self.dclinks[r].wait_ready(max(1.0, deadline - time.monotonic()))
            for r, s in self.standbys.items():
                s.config_path.write_text(self.dclink_toml(r, listen=self.standby_addr[r], admin_port=s.admin_port))
                s.launch()
                s.wait_live(max(1.0, deadline - time.monotonic()))
            if self.witness:
                self.witness.wait_ready(max(1.0, deadline - time.monotonic()))
            if not self.wan_initial.get("blackhole"):
                self.wait_links_connected(max(5.0, deadline - time.monotonic()))
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self) -> None:
        try:
            stop_all(list(self.dclinks.values()) + list(self.standbys.values()) + list(self.wansims.values())
                     + list(self.extra)
                     + list(self.witness_sims.values()) + ([self.witness] if self.witness else []), timeout=10)
        finally:
            nodes = [n for c in self.clusters.values() for n in c.nodes.values()]
            try:
                stop_all(nodes, timeout=30)
            finally:
                for c in self.clusters.values():
                    c.mesh.close()
                try:
                    from kclient import forget_clients

                    for c in self.clusters.values():
                        forget_clients(c.bootstrap)
                except Exception:  # noqa: BLE001
                    pass

    def links_connected(self) -> dict[str, bool]:
        """{"a->b": connected} for every ordered pair of regions, from each sender's /v1/lag."""
        out = {}
        for r in self.names:
            try:
                rep = self.lag(r)
            except (OSError, RuntimeError, ValueError):
                rep = {"links": []}
            by_name = {l["link"]: l for l in rep.get("links", [])}
            for o in self.mirrors_of(r):
                out[f"{r}->{o}"] = bool(by_name.get(f"{r}->{o}", {}).get("connected"))
        return out

    def wait_links_connected(self, timeout: float = 60.0, links: list[str] | None = None) -> None:
        def ok():
            st = self.links_connected()
            return all(st[l] for l in (links or st))
        try:
            wait_until(ok, timeout, interval=0.25, what="every dc-link link connected")
        except TimeoutError as e:
            raise AssertionError(f"dc-link links not all connected after {timeout}s: {self.links_connected()}\n"
                                 + "\n".join(f"--- {d.name}\n{d.log_tail(15)}" for d in self.dclinks.values())) from e

    def kill9_dclink(self, region: str) -> None:
        self.dclinks[region].kill9()

    def stop_dclink(self, region: str) -> None:
        self.dclinks[region].stop()

    def restart_dclink(self, region: str, faults: dict | None = None, timeout: float = 60.0,
                       ready: bool = True) -> DcLink:
        """(Re)start a region's dc-link. faults: new [faults] for it ({} clears them);
        None keeps the current ones. ready=False waits for /health/live only: /health/ready
        also needs every peer region it ships to reachable (down dc-link, blackhole)."""
        d = self.dclinks[region]
        if d.running:
            d.stop()
        if faults is not None:
            self.faults[region] = dict(faults)
        d.config_path.write_text(self.dclink_toml(region))
        d.launch()
        if ready:
            d.wait_ready(timeout)
        else:
            d.wait_live(timeout)
        return d

    def kill9_broker(self, region: str, node: int) -> None:
        self.clusters[region].kill9(node)

    def restart_broker(self, region: str, node: int, timeout: float = 60.0) -> None:
        self.clusters[region].restart(node, timeout)

    def heal(self, timeout: float = 90.0) -> None:
        """Back to a healthy deployment: every broker, wan-sim and dc-link running, no
        impairment, no fault injection; then every link connected."""
        for r in self.names:
            c = self.clusters[r]
            for i in c.ids:
                if not c.running(i):
                    c.restart(i)
            c.mesh.heal()
        for r in self.names:
            w = self.wansims[r]
            if not w.running:
                w.launch()
                w.wait_ready(30)
            w.set()
        # Launch every dc-link that needs it before waiting for any to be ready: a dc-link
        # is ready only once its peers are reachable.
        restarted = []
        for r in self.names:
            if self.faults.get(r):
                restarted.append(self.restart_dclink(r, faults={}, ready=False))
            elif not self.dclinks[r].running:
                restarted.append(self.restart_dclink(r, ready=False))
        for d in restarted:
            d.wait_ready(timeout)
        self.wait_links_connected(timeout)

    # -- WAN -----------------------------------------------------------------------

    def set_wan(self, region: str, **imp) -> dict:
        """Impair traffic INTO `region`'s dc-link (every link another region dials to it, both
        directions). Replaces the impairment; `blackhole` is kept unless given."""
        w = self.wansims[region]
        imp.setdefault("blackhole", bool(w.impairment.get("blackhole")))
        return w.set(**imp)

    def blackhole(self, region: str, on: bool = True) -> dict:
        w = self.wansims[region]
        return w.set(**{**w.impairment, "blackhole": on})

    def isolate(self, region: str, on: bool = True) -> None:
        """Cut `region` off every other region and the witness (or reconnect it), both
        directions: the wan-sims into every region, and `region`'s path to the witness
        (two regions only: blackholing the other region's wan-sim cuts nothing else)."""
        assert len(self.names) == 2, "isolate() needs exactly two regions"
        for r in self.names:
            self.blackhole(r, on)
        if region in self.witness_sims:
            w = self.witness_sims[region]
            w.set(**{**w.impairment, "blackhole": on})

    def wan_stats(self, region: str) -> dict:
        return self.wansims[region].stats()

    # -- dc-link observations --------------------------------------------------------

    def lag(self, region: str) -> dict:
        return self.dclinks[region].lag()

    def metrics(self, region: str) -> str:
        return self.dclinks[region].metrics()

    def lag_rows(self, home: str, topic: str) -> list[dict]:
        """The home dc-link's /v1/lag partition rows for `topic`."""
        return [p for p in self.lag(home).get("partitions", []) if p["topic"] == topic]

    # -- partitions ------------------------------------------------------------------

    def leader_state(self, region: str, topic: str, p: int, timeout: float = 30.0) -> tuple[int, dict]:
        """(leader node, its /v1/partitions state) of topic/p in `region`."""
        c = self.clusters[region]
        leader = c.leader_of(topic, p, timeout=timeout)
        s = c.partition_state(leader, topic, p)
        if s is None:
            raise RuntimeError(f"{region}: leader {leader} of {topic}/{p} hosts no replica")
        return leader, s

    def mirror_state(self, region: str, topic: str, p: int) -> dict | None:
        """GET /v1/mirror/{t}/{p} on the partition's leader in `region`."""
        c = self.clusters[region]
        leader = c.leader_of(topic, p)
        status, body = http_json(f"{c.admin_url(leader)}/v1/mirror/{topic}/{p}", 5.0)
        return body if status == 200 else None

    def _partitions(self, partitions) -> list[int]:
        return list(range(partitions)) if isinstance(partitions, int) else list(partitions)

    def mirror_progress(self, topic: str, partitions, home: str, mirrors=None) -> dict:
        """{(region, p): (home hw, mirror leader leo, mirror hw)} right now (None where unknown)."""
        out = {}
        for p in self._partitions(partitions):
            try:
                _, hs = self.leader_state(home, topic, p, timeout=5)
                hw = hs["high_watermark"]
            except (OSError, RuntimeError, TimeoutError, ValueError):
                hw = None
            for m in mirrors or self.mirrors_of(home):
                try:
                    _, ms = self.leader_state(m, topic, p, timeout=5)
                    out[(m, p)] = (hw, ms["log_end_offset"], ms["high_watermark"])
                except (OSError, RuntimeError, TimeoutError, ValueError):
                    out[(m, p)] = (hw, None, None)
        return out

    def wait_mirrored(self, topic: str, partitions, home: str | None = None, timeout: float = 60.0,
                      mirrors=None) -> dict:
        """Wait until, for every partition, every mirror region's leader has log_end_offset ==
        high_watermark == the home leader's high watermark. Returns {p: home hw}."""
        home = home or self.names[0]
        deadline = time.monotonic() + timeout
        last = None
        while True:
            last = self.mirror_progress(topic, partitions, home, mirrors)
            if all(hw is not None and leo == hw and mhw == hw for hw, leo, mhw in last.values()):
                return {p: hw for (_, p), (hw, _, _) in last.items()}
            if time.monotonic() > deadline:
                lag = {}
                try:
                    lag = self.lag_rows(home, topic)
                except Exception as e:  # noqa: BLE001
                    lag = repr(e)
                raise AssertionError(
                    f"{topic} not mirrored from {home} within {timeout}s: "
                    + ", ".join(f"{m}/{p}: home hw {hw}, mirror leo {leo} hw {mhw}"
                                for (m, p), (hw, leo, mhw) in sorted(last.items()))
                    + f"; home dc-link lag rows: {lag}; links: {self.links_connected()}")
            time.sleep(0.25)

    def assert_identical(self, topic: str, p: int, home: str | None = None, mirrors=None, timeout: float = 60.0,
                         replicas: bool = True) -> tuple[int, bytes]:
        """The home leader's log (GET /v1/partitions/t/p/log, up to its high watermark) is
        byte-identical to each mirror region's leader's, with the same epoch history and log
        start. Waits (bounded) for mirrors to catch up; once a mirror reports the home's high
        watermark, any difference fails at once. With replicas=True, every replica inside
        each region must also converge to those bytes. Returns (high watermark, dump)."""
        home = home or self.names[0]
        mirrors = list(mirrors or self.mirrors_of(home))
        deadline = time.monotonic() + timeout
        last = "nothing read yet"
        while True:
            try:
                hc = self.clusters[home]
                hl, hs = self.leader_state(home, topic, p)
                hdump = hc.dump_log(hl, topic, p)
                hs2 = hc.partition_state(hl, topic, p)
                if hs2 is None or hs2["high_watermark"] != hs["high_watermark"]:
                    last = "home high watermark moved while reading"
                    raise _Retry()
                hw = hs["high_watermark"]
                for m in mirrors:
                    mc = self.clusters[m]
                    ml, ms = self.leader_state(m, topic, p)
                    if ms["log_end_offset"] != hw or ms["high_watermark"] != hw:
                        last = (f"{m}: mirror leader {ml} at leo {ms['log_end_offset']} hw {ms['high_watermark']}, "
                                f"home hw {hw}")
                        raise _Retry()
                    mdump = mc.dump_log(ml, topic, p)
                    ms2 = mc.partition_state(ml, topic, p)
                    if ms2 is None or ms2["high_watermark"] != hw:
                        last = f"{m}: mirror moved while reading"
                        raise _Retry()
                    assert mdump == hdump, (
                        f"{topic}/{p}: {m} (leader {ml}) log differs from {home} (leader {hl}) at high watermark "
                        f"{hw}: {len(mdump)} vs {len(hdump)} bytes, sha256 {hashlib.sha256(mdump).hexdigest()[:12]} vs "
                        f"{hashlib.sha256(hdump).hexdigest()[:12]}; {_dump_diff(hdump, mdump)}")
                    assert ms2.get("epochs") == hs.get("epochs"), (
                        f"{topic}/{p}: epoch history in {m} {ms2.get('epochs')} != in {home} {hs.get('epochs')}")
                    assert ms2["log_start_offset"] == hs["log_start_offset"], (
                        f"{topic}/{p}: log start {ms2['log_start_offset']} in {m} != {hs['log_start_offset']} in {home}")
                if replicas:
                    for r in [home] + mirrors:
                        c = self.clusters[r]
                        leader, s = self.leader_state(r, topic, p)
                        nodes = [i for i in s.get("replicas", [leader]) if c.running(i)]
                        rhw, rdump = c.wait_replicas_converged(topic, p, nodes, max(5.0, deadline - time.monotonic()))
                        assert rhw == hw and rdump == hdump, (
                            f"{topic}/{p}: the replicas in {r} {nodes} converged to hw {rhw} "
                            f"({len(rdump)} bytes), home leader has hw {hw} ({len(hdump)} bytes)")
                return hw, hdump
            except _Retry:
                pass
            except (OSError, RuntimeError, TimeoutError, KeyError, ValueError) as e:
                last = f"error: {e!r}"
            if time.monotonic() > deadline:
                raise AssertionError(f"{topic}/{p}: mirrors {mirrors} never caught up with {home} in {timeout}s: {last}")
            time.sleep(0.25)


class _Retry(Exception):
    pass


def grep_log(proc: ManagedProcess, pattern: str, since: int = 0) -> list[str]:
    """Lines of a process's log (from byte `since`) matching regex `pattern` (case-insensitive)."""
    try:
        with open(proc.log_path or proc.stdout_path, "rb") as f:
            f.seek(since)
            text = f.read().decode(errors="replace")
    except OSError:
        return []
    rx = re.compile(pattern, re.IGNORECASE)
    return [line for line in text.splitlines() if rx.search(line)]


def log_size(proc) -> int:
    try:
        return Path(proc.log_path or proc.stdout_path).stat().st_size
    except (OSError, TypeError):
        return 0


__all__ = ["Regions", "DcLink", "WanSim", "certs_init", "free_udp_port", "prometheus_value", "grep_log", "log_size",
           "tail"]
