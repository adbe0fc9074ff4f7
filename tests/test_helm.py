"""deploy/helm/chronik, checked with the tools that consume it:

- `helm lint` and `helm template` (helm v4 from the Go module proxy; tests/setup.sh installs it)
  with each example region's values;
- every rendered manifest decoded strictly into Kubernetes' own API types (k8s.io/api via the Go
  module proxy: tests/clients/k8s-validate), which refuses unknown fields, wrong types and
  unknown kinds — the schema source available here;
- the broker config and topology the chart renders are accepted by the chronik binary itself
  (`chronik config check`, `chronik config check-topology`), and the pieces that must agree do:
  the discovery SRV name and the headless Service's `raft` port, the region size and the
  StatefulSet's replicas, non-root pods, a PodDisruptionBudget of one.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from conftest import _require_chronik_binary

REPO = Path(__file__).resolve().parent.parent
CHART = REPO / "deploy" / "helm" / "chronik"
VALIDATOR_SRC = REPO / "tests" / "clients" / "k8s-validate"
CACHE = REPO / "tests" / ".cache"
REGIONS = ("us-east", "eu-west")


def run(*argv, stdin: str | None = None, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, input=stdin, cwd=cwd)


@pytest.fixture(scope="module")
def helm() -> str:
    tool = shutil.which("helm") or str(Path.home() / "go" / "bin" / "helm")
    if not os.access(tool, os.X_OK):
        pytest.fail("helm not installed (tests/setup.sh: go install helm.sh/helm/v4/cmd/helm)")
    return tool


@pytest.fixture(scope="module")
def validator() -> str:
    out = CACHE / "k8s-validate"
    newest = max(p.stat().st_mtime for p in VALIDATOR_SRC.iterdir())
    if not out.exists() or out.stat().st_mtime < newest:
        go = shutil.which("go") or "/usr/local/go/bin/go"
        p = run(go, "build", "-o", str(out), ".", cwd=VALIDATOR_SRC)
        assert p.returncode == 0, p.stderr
    return str(out)


def render(helm: str, region: str, *extra: str) -> subprocess.CompletedProcess:
    return run(helm, "template", f"chronik-{region}", str(CHART), "-n", "streaming",
               "-f", str(CHART / "examples" / f"{region}.yaml"), *extra)


def docs(text: str) -> dict[str, dict]:
    """Rendered manifests by kind/name."""
    return {f"{d['kind']}/{d['metadata']['name']}": d for d in yaml.safe_load_all(text) if d}


@pytest.mark.parametrize("region", REGIONS)
def test_lint_and_template_render_valid_kubernetes_objects(helm, validator, region):
    lint = run(helm, "lint", str(CHART), "-f", str(CHART / "examples" / f"{region}.yaml"))
    assert lint.returncode == 0 and "0 chart(s) failed" in lint.stdout, lint.stdout + lint.stderr
    out = render(helm, region)
    assert out.returncode == 0, out.stderr
    checked = run(validator, stdin=out.stdout)
    assert checked.returncode == 0, checked.stderr
    kinds = sorted(line.split()[-1] for line in checked.stdout.splitlines())
    assert kinds == ["ConfigMap", "ConfigMap", "Deployment", "PodDisruptionBudget", "Service", "Service",
                     "Service", "ServiceAccount", "StatefulSet"], kinds


def test_the_validator_refuses_what_kubernetes_would(validator):
    bad = ("apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: x}\n"
           "spec: {replicas: three, serviceName: x, selector: {}, template: {}}\n")
    assert run(validator, stdin=bad).returncode != 0
    unknown = "apiVersion: v1\nkind: Service\nmetadata: {name: x}\nspec: {clusterIPz: None}\n"
    assert run(validator, stdin=unknown).returncode != 0


@pytest.mark.parametrize("region", REGIONS)
def test_the_rendered_configs_are_ones_chronik_accepts_and_agree(helm, region, tmp_path):
    binary = _require_chronik_binary()
    m = docs(render(helm, region).stdout)
    name = f"chronik-{region}"
    sts = m[f"StatefulSet/{name}"]
    headless = m[f"Service/{name}-brokers"]
    broker_toml = m[f"ConfigMap/{name}-broker"]["data"]["broker.toml"]
    # What the container's command does at start, for the pod of ordinal 1.
    host = f"{name}-1.{name}-brokers.streaming.svc.cluster.local"
    cfg = tmp_path / "broker.toml"
    cfg.write_text(broker_toml.replace("@NODE_ID@", "2").replace("@HOST@", host))
    p = run(binary, "config", "check", str(cfg))
    assert p.returncode == 0, p.stdout + p.stderr + cfg.read_text()
    start = sts["spec"]["template"]["spec"]["containers"][0]["args"][0]
    assert 's/@NODE_ID@/$id/g' in start and "s/@HOST@/$HOSTNAME." in start and "${HOSTNAME##*-} + 1" in start
    topo = tmp_path / "topology.toml"
    topo.write_text(m[f"ConfigMap/{name}-dc-link"]["data"]["topology.toml"])
    p = run(binary, "config", "check-topology", str(topo))
    assert p.returncode == 0, p.stdout + p.stderr

    # Discovery asks for the SRV records the headless Service publishes: _<port name>._tcp.<svc>.
    srv = re.search(r'^srv = "(.+)"$', broker_toml, re.M).group(1)
    raft_port = next(pt for pt in headless["spec"]["ports"] if pt["name"] == "raft")
    assert srv == f"_{raft_port['name']}._tcp.{name}-brokers.streaming.svc.cluster.local"
    assert headless["spec"]["clusterIP"] == "None" and headless["spec"]["publishNotReadyAddresses"] is True
    assert int(re.search(r"^brokers = (\d+)$", broker_toml, re.M).group(1)) == sts["spec"]["replicas"] == 3
    assert sts["spec"]["serviceName"] == headless["metadata"]["name"]
    assert sts["spec"]["podManagementPolicy"] == "Parallel"
    pod = sts["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True and pod["securityContext"]["runAsUser"] != 0
    assert sts["spec"]["volumeClaimTemplates"][0]["metadata"]["name"] == "data"
    assert m[f"PodDisruptionBudget/{name}"]["spec"]["maxUnavailable"] == 1
    assert pod["containers"][0]["readinessProbe"]["httpGet"]["path"] == "/health/ready"


def test_a_release_without_a_topology_is_refused_with_the_reason(helm):
    out = run(helm, "template", "x", str(CHART), "--set", "dcLink.topology=")
    assert out.returncode != 0 and "dcLink.topology" in out.stderr, out.stderr
    # Without the dc-link (a one-region install) the topology is not needed.
    assert run(helm, "template", "x", str(CHART), "--set", "dcLink.enabled=false").returncode == 0
