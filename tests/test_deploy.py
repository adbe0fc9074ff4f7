"""What `deploy/` ships, checked with the tools that consume it, and the metrics list
(docs/metrics.md) checked against what a running deployment exports:

- deploy/prometheus: `promtool check config`, `promtool check rules`, and the rules' unit
  tests (`promtool test rules alerts_test.yml`); every metric an alert uses is one Chronik
  documents;
- deploy/systemd: `systemd-analyze verify` of each unit (its binary pointed at the one under
  test), and the commands it runs are ones the binary takes;
- docs/metrics.md: two regions of three brokers with mirrored, RPO-watched traffic; every
  metric and label that any broker or dc-link exports is listed, every metric listed as
  always exported is there, and a conditional one is still emitted by the code;
  `chronik_partitions_leaderless` and `chronik_partitions_under_replicated` are 0 while the
  region is whole, and after a kill -9 of a broker the partitions it held count as
  under-replicated (and none as leaderless: the majority elects).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from harness import wait_until
from kclient import produce_all, unique_topic
from regions import Regions, prometheus_value
from test_dclink import make_topic, wait_topic_in
from test_metadata_sync import commit_offset

REPO = Path(__file__).resolve().parent.parent
DEPLOY = REPO / "deploy"
US, EU = "us-east", "eu-west"


def run(*argv, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, cwd=cwd)


# -- docs/metrics.md -------------------------------------------------------------------

ROW = re.compile(r"^\| `([a-z_]+)` \| (counter|gauge|histogram) \|([^|]*)\|([^|]+)\|")


def documented() -> dict[str, dict]:
    """{metric: {type, labels, always}} from docs/metrics.md's tables."""
    out = {}
    for line in (REPO / "docs" / "metrics.md").read_text().splitlines():
        m = ROW.match(line)
        if m:
            name, kind, labels, when = m.groups()
            assert name not in out, f"{name} listed twice in docs/metrics.md"
            out[name] = {"type": kind, "labels": set(re.findall(r"`([a-z_]+)`", labels)),
                         "always": when.strip() == "always"}
    assert len(out) > 40, "docs/metrics.md: the tables did not parse"
    return out


def exported(text: str) -> dict[str, dict]:
    """{metric: {type, labels}} of one /metrics page; histogram series folded into their name."""
    types = dict(re.findall(r"^# TYPE (\S+) (\S+)$", text, re.M))
    out: dict[str, dict] = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{([^}]*)\})? ", line)
        assert m, f"unparseable /metrics line: {line!r}"
        name, labels = m.group(1), m.group(2) or ""
        keys = set(re.findall(r'([a-zA-Z_][a-zA-Z0-9_]*)="', labels))
        for suffix in ("_bucket", "_sum", "_count"):
            base = name[: -len(suffix)]
            if name.endswith(suffix) and types.get(base) in ("histogram", "summary"):
                name = base
                keys -= {"le", "quantile"}
        e = out.setdefault(name, {"type": types.get(name), "labels": set()})
        e["labels"] |= keys
    return out


def rust_source() -> str:
    return "\n".join(f.read_text() for root in ("broker/src", "dc-link/src", "wire/src")
                     for f in (REPO / root).rglob("*.rs"))


def test_every_documented_metric_is_emitted_by_the_code():
    """The cheap half, without a deployment: a listed metric that no code emits any more is
    a stale line."""
    source = rust_source()
    missing = [n for n in documented() if f'"{n}"' not in source]
    assert not missing, f"docs/metrics.md lists metrics no code emits: {missing}"


def metrics_pages(regions: Regions) -> dict[str, str]:
    pages = {}
    for r in (US, EU):
        c = regions.cluster(r)
        for i in c.live_ids():
            pages[f"{r} broker {i}"] = c.nodes[i].metrics()
        pages[f"{r} dc-link"] = regions.metrics(r)
    return pages


def gauge(text: str, name: str) -> float:
    m = re.search(rf"^{name} (\S+)$", text, re.M)
    assert m, f"{name} not exported"
    return float(m.group(1))


@pytest.fixture(scope="module")
def regions(tmp_path_factory, chronik_cluster_binary):
    with Regions(tmp_path_factory.mktemp("deploy"), names=(US, EU), brokers=3,
                 binary=chronik_cluster_binary) as r:
        yield r


def test_exported_metrics_are_exactly_the_documented_ones(regions):
    docs = documented()
    topic = unique_topic("metrics")
    # RPO-watched at home, mirrored to eu-west: per-partition, RPO, lag and shipping series.
    make_topic(regions, US, topic, partitions=2, config={"chronik.rpo.ms": "60000"})
    wait_topic_in(regions, EU, topic, 2)
    produce_all(regions.bootstrap(US), topic, [{"value": b"m%d" % i, "partition": i % 2} for i in range(50)],
                acks="all")
    wait_until(lambda: all(row["lag_records"] == 0 and row["source_high_watermark"] == 25
                           for row in regions.lag_rows(US, topic)) and len(regions.lag_rows(US, topic)) == 2,
               60, what=f"{topic} mirrored to eu-west")
    # A consumer group's offset, committed in eu-west: its lag shows on the us-east leader.
    group = unique_topic("lag-group")
    commit_offset(regions.bootstrap(EU), group, topic, 0, 10)
    leader = regions.cluster(US).leader_of(topic, 0)

    def group_lag():
        return prometheus_value(regions.cluster(US).nodes[leader].metrics(), "chronik_consumer_group_lag",
                                group=group, topic=topic, partition="0")

    wait_until(lambda: group_lag() == 15, 60, what="the group's lag (25 - 10) on the home leader")
    pages = metrics_pages(regions)
    problems = []
    seen: set[str] = set()
    for where, text in pages.items():
        for name, e in exported(text).items():
            seen.add(name)
            d = docs.get(name)
            if d is None:
                problems.append(f"{where} exports {name} ({e['type']}, labels {sorted(e['labels'])}), "
                                f"not in docs/metrics.md")
                continue
            if e["type"] != d["type"]:
                problems.append(f"{where}: {name} is a {e['type']}, docs/metrics.md says {d['type']}")
            if e["labels"] != d["labels"]:
                problems.append(f"{where}: {name} has labels {sorted(e['labels'])}, docs/metrics.md says "
                                f"{sorted(d['labels'])}")
    for name, d in docs.items():
        if d["always"] and name not in seen:
            problems.append(f"{name} is listed as always exported and no process exports it")
    for name in ("chronik_rpo_headroom_seconds", "chronik_dclink_lag_seconds", "chronik_partition_high_watermark",
                 "chronik_requests_total", "chronik_dclink_sent_records_total", "chronik_consumer_group_lag",
                 "raft_leadership_changes_total", "raft_follower_lag_seconds"):
        if name not in seen:
            problems.append(f"{name} missing although its condition occurred")
    assert not problems, "\n".join(problems)


def test_leaderless_and_under_replicated_partitions_follow_the_region(regions):
    topic = unique_topic("urp")
    make_topic(regions, US, topic, partitions=3)
    wait_topic_in(regions, US, topic, 3)
    c = regions.cluster(US)

    def counts():
        pages = {i: c.nodes[i].metrics() for i in c.live_ids()}
        return (max(gauge(t, "chronik_partitions_leaderless") for t in pages.values()),
                sum(gauge(t, "chronik_partitions_under_replicated") for t in pages.values()))

    wait_until(lambda: counts() == (0, 0), 30, what="a whole region: no leaderless, no under-replicated partition")
    # The leader of a partition: its death must cost an election.
    victim = c.leader_of(topic, 0)

    def lag_of_victim() -> float:
        return max(prometheus_value(c.nodes[i].metrics(), "raft_follower_lag_seconds", peer=str(victim)) or 0.0
                   for i in c.live_ids() if i != victim)

    assert lag_of_victim() < 2, "a live follower already counts as lagging"
    survivors = [i for i in c.live_ids() if i != victim]

    def elections() -> float:
        return sum(prometheus_value(c.nodes[i].metrics(), "raft_leadership_changes_total") or 0.0
                   for i in survivors)

    before = elections()
    regions.kill9_broker(US, victim)
    try:
        # Every partition of the region has a replica on every broker (RF 3): all of them lose one.
        wait_until(lambda: (lc := counts())[0] == 0 and lc[1] >= 3, 60,
                   what=f"partitions under-replicated (and none leaderless) after broker {victim} died")
        # The groups the victim led elect new leaders elsewhere, and every leader waits for it.
        wait_until(lambda: lag_of_victim() >= 3, 30, what=f"raft_follower_lag_seconds of broker {victim} grows")
        wait_until(lambda: elections() > before, 30, what="the survivors count the elections they won")
    finally:
        regions.restart_broker(US, victim)
    wait_until(lambda: counts() == (0, 0), 60, what="the region whole again after the restart")


# -- deploy/prometheus -----------------------------------------------------------------

@pytest.fixture(scope="module")
def promtool():
    tool = shutil.which("promtool")
    if tool is None:
        pytest.fail("promtool not installed (Debian's prometheus package; tests/setup.sh installs it)")
    return tool


def test_prometheus_config_and_alert_rules_pass_promtool(promtool, tmp_path):
    d = tmp_path / "prometheus"
    shutil.copytree(DEPLOY / "prometheus", d)
    (d / "targets" / "us-east-brokers.json").write_text(
        '[{"targets": ["b1.us-east:13092"], "labels": {"region": "us-east"}}]')
    (d / "targets" / "us-east-dc-links.json").write_text(
        '[{"targets": ["l.us-east:9183"], "labels": {"region": "us-east"}}]')
    for argv in (("check", "config", "prometheus.yml"), ("check", "rules", "alerts.yml"),
                 ("test", "rules", "alerts_test.yml")):
        out = run(promtool, *argv, cwd=d)
        assert out.returncode == 0 and "WARNING" not in out.stdout + out.stderr, (argv, out.stdout, out.stderr)


def test_alert_rules_use_only_documented_metrics():
    docs = documented()
    text = (DEPLOY / "prometheus" / "alerts.yml").read_text()
    exprs = re.findall(r"^\s*expr: (.+)$", text, re.M)
    assert len(exprs) >= 9
    used = {m for e in exprs for m in re.findall(r"\b(chronik_[a-z_]+)", e)}
    assert used and not used - set(docs), f"alerts.yml uses undocumented metrics: {sorted(used - set(docs))}"


# -- deploy/grafana ---------------------------------------------------------------------

def dashboard_queries() -> list[tuple[str, str]]:
    """(panel title, PromQL) of every query in deploy/grafana/chronik.json."""
    d = json.loads((DEPLOY / "grafana" / "chronik.json").read_text())
    return [(p["title"], t["expr"]) for p in d["panels"] for t in p["targets"]]


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (histogram series folded into their name)."""
    names = set(re.findall(r"\b((?:chronik|raft)_[a-z_]+)", expr))
    return {re.sub(r"_(bucket|sum|count)$", "", n) if n.endswith(("_bucket", "_sum", "_count")) else n
            for n in names}


def test_dashboard_queries_are_valid_promql_on_documented_metrics(promtool, tmp_path):
    queries = dashboard_queries()
    docs = documented()
    for want in ("chronik_produced_records_total", "chronik_request_seconds", "chronik_partitions_leaderless",
                 "chronik_dclink_lag_seconds", "chronik_rpo_headroom_seconds", "raft_leadership_changes_total",
                 "chronik_consumer_group_lag"):
        assert any(want in metric_names(e) for _, e in queries), f"the dashboard has no panel on {want}"
    for title, e in queries:
        names = metric_names(e)
        assert names, f"{title}: no Chronik metric in {e}"
        assert not names - set(docs), f"{title}: {sorted(names - set(docs))} not in docs/metrics.md"
    # promtool parses each query as a recording rule: a typo in PromQL fails here.
    rules = tmp_path / "dashboard-rules.yml"
    rules.write_text("groups:\n  - name: dashboard\n    rules:\n" + "".join(
        f"      - record: dashboard:q{i}\n        expr: {json.dumps(e)}\n" for i, (_, e) in enumerate(queries)))
    out = run(promtool, "check", "rules", str(rules))
    assert out.returncode == 0, out.stdout + out.stderr


# -- deploy/systemd --------------------------------------------------------------------

def test_systemd_units_verify_and_run_commands_the_binary_takes(chronik_cluster_binary, tmp_path):
    if shutil.which("systemd-analyze") is None:
        pytest.fail("systemd-analyze not installed (Debian's systemd package)")
    units = sorted((DEPLOY / "systemd").glob("*.service"))
    assert [u.name for u in units] == ["chronik-broker.service", "chronik-dc-link.service"]
    for u in units:
        text = u.read_text().replace("/usr/local/bin/chronik", str(chronik_cluster_binary))
        (tmp_path / u.name).write_text(text)
        out = run("systemd-analyze", "verify", str(tmp_path / u.name))
        assert out.returncode == 0 and not out.stderr.strip(), (u.name, out.stdout, out.stderr)
        for line in re.findall(r"^ExecStart(?:Pre)?=(.+)$", text, re.M):
            argv = line.split()
            # The subcommand and its flags exist: `--help` after them parses them first.
            flags = [a for a in argv[1:] if a.startswith("--")]
            sub = [a for a in argv[1:] if not a.startswith("/") and not a.startswith("--")]
            help_out = run(argv[0], *sub, "--help")
            assert help_out.returncode == 0, (u.name, line, help_out.stderr)
            for f in flags:
                assert f in help_out.stdout, (u.name, line, f"{f} not taken by `chronik {' '.join(sub)}`")
