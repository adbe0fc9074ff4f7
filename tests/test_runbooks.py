"""The runbooks in runbooks/ are drills that run: every `sh` block of a runbook, in order, in
one bash process (`set -euo pipefail`), against a `chronik dev` deployment; each `text` block
that follows a `sh` block must match what that block printed (line by line, in any order,
whitespace-insensitive, `<...>` matching anything). So a runbook that drifts from the product
fails here.

Each runbook gets its own `chronik dev --nodes 1` (2 regions), with the runbook's variables
pointed at it, `chronik` and Kafka's command-line tools on PATH. A runbook that carries the
comment `<!-- tested after X.md, on the same deployment -->` (failback after failover) runs right
after X, on X's deployment and in X's working directory.
"""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

from harness import KAFKA_LIBS, chronik_bin, free_dev_base, wait_until

RUNBOOKS = Path(__file__).resolve().parent.parent / "runbooks"
KAFKA_TOOLS = {
    "kafka-topics.sh": "org.apache.kafka.tools.TopicCommand",
    "kafka-configs.sh": "kafka.admin.ConfigCommand",
    "kafka-console-producer.sh": "org.apache.kafka.tools.ConsoleProducer",
    "kafka-get-offsets.sh": "org.apache.kafka.tools.GetOffsetShell",
    "kafka-console-consumer.sh": "org.apache.kafka.tools.consumer.ConsoleConsumer",
}
AFTER = re.compile(r"<!-- tested after (\S+\.md), on the same deployment -->")
MARK = "@@runbook-block"


def blocks(text: str) -> list[tuple[str, str]]:
    """(language, body) of every fenced block, in order."""
    return [(m.group(1), m.group(2)) for m in re.finditer(r"^```(\w*)\n(.*?)^```", text, re.M | re.S)]


def expectation(line: str) -> re.Pattern:
    """A `text` line as a pattern: whitespace runs match any whitespace, `<...>` anything."""
    parts = re.split(r"(<[^>]*>)", " ".join(line.split()))
    rx = "".join(".*" if p.startswith("<") and p.endswith(">") else re.escape(p).replace(r"\ ", r"\s+")
                 for p in parts)
    return re.compile(rx)


@pytest.fixture
def dev(tmp_path):
    """A running `chronik dev --nodes 1`: yields (work dir, env for the runbook)."""
    binary = chronik_bin()
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "chronik").symlink_to(binary)
    for name, main in KAFKA_TOOLS.items():
        tool = bindir / name
        tool.write_text(f'#!/bin/sh\nexec java -Xmx256m -cp "{KAFKA_LIBS}/*" {main} "$@"\n')
        tool.chmod(0o755)
    base = free_dev_base()
    log = open(tmp_path / "dev.log", "w")
    proc = subprocess.Popen([str(binary), "dev", "--nodes", "1", "--base-port", str(base)], cwd=tmp_path,
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        wait_until(lambda: (tmp_path / "chronik-dev" / "dev.json").exists() or proc.poll() is not None, 120,
                   what="chronik dev ready")
        assert proc.poll() is None, (tmp_path / "dev.log").read_text()[-3000:]
        env = {**os.environ, "PATH": f"{bindir}:{os.environ['PATH']}", "DEV": "./chronik-dev",
               "FROM_BS": f"127.0.0.1:{base}", "TO_BS": f"127.0.0.1:{base + 100}",
               "HOME_BS": f"127.0.0.1:{base}", "HOME_ADMINS": f"http://127.0.0.1:{base + 4000}"}
        yield tmp_path, env
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def run_runbook(path: Path, cwd: Path, env: dict) -> None:
    parts = blocks(path.read_text())
    script = ["set -euo pipefail", "exec 2>&1"]
    steps: list[tuple[int, str, str | None]] = []  # (block number, sh body, expected text)
    for i, (lang, body) in enumerate(parts):
        if lang != "sh":
            continue
        nxt = parts[i + 1] if i + 1 < len(parts) else None
        expected = nxt[1] if nxt and nxt[0] == "text" else None
        steps.append((i, body, expected))
        script += [f"echo '{MARK} {len(steps) - 1}'", body]
    assert steps, f"{path.name} has no sh blocks"
    started = time.monotonic()
    p = subprocess.run(["bash", "-c", "\n".join(script)], cwd=cwd, env=env, capture_output=True, text=True,
                       timeout=600)
    outputs = re.split(rf"^{MARK} (\d+)\n", p.stdout, flags=re.M)
    by_step = {int(outputs[k]): outputs[k + 1] for k in range(1, len(outputs) - 1, 2)}
    last = max(by_step, default=-1)
    if p.returncode != 0:
        pytest.fail(f"{path.name}: step {last + 1} of {len(steps)} failed (exit {p.returncode}):\n"
                    f"--- commands\n{steps[last][1]}\n--- output\n{by_step.get(last, '')[-4000:]}")
    for n, (_, body, expected) in enumerate(steps):
        if expected is None:
            continue
        got = [" ".join(line.split()) for line in by_step.get(n, "").splitlines()]
        for line in filter(str.strip, expected.splitlines()):
            rx = expectation(line)
            assert any(rx.search(g) for g in got), (
                f"{path.name}, step {n + 1}: expected a line like {line!r}\n--- commands\n{body}\n"
                f"--- output\n{by_step.get(n, '')[-4000:]}")
    print(f"\n{path.name}: {len(steps)} steps in {time.monotonic() - started:.1f}s")


def chains() -> list[list[str]]:
    """The runbooks in test order: each chain on one deployment, a runbook after the one it names."""
    names = sorted(p.name for p in RUNBOOKS.glob("*.md") if p.name != "README.md")
    after = {n: m.group(1) for n in names if (m := AFTER.search((RUNBOOKS / n).read_text()))}
    out = []
    for n in names:
        if n in after:
            continue
        chain = [n]
        while nxt := [m for m, prev in after.items() if prev == chain[-1]]:
            chain += sorted(nxt)[:1]
        out.append(chain)
    return out


def test_every_runbook_is_listed_in_the_index_and_tested():
    tested = [n for c in chains() for n in c]
    index = (RUNBOOKS / "README.md").read_text()
    for rb in sorted(RUNBOOKS.glob("*.md")):
        if rb.name != "README.md":
            assert f"({rb.name})" in index, f"runbooks/README.md does not list {rb.name}"
            assert tested.count(rb.name) == 1, f"{rb.name} is not run exactly once: {chains()}"


@pytest.mark.timeout(600)
@pytest.mark.parametrize("chain", chains(), ids=lambda c: "+".join(c))
def test_runbook_runs_against_chronik_dev(chain, dev):
    cwd, env = dev
    for name in chain:
        run_runbook(RUNBOOKS / name, cwd, env)
