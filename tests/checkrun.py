"""The outcome of running one client-check program, shared by the client tests."""

from __future__ import annotations


class CheckRun:
    """argv, exit code, parsed JSON summary and output of one check run."""

    def __init__(self, argv, rc, summary, stdout, stderr, wall_s):
        self.argv, self.rc, self.summary, self.stdout, self.stderr, self.wall_s = argv, rc, summary, stdout, stderr, wall_s

    def describe(self) -> str:
        s = self.summary or {}
        errs = "\n  ".join(s.get("errors", [])) or "(none)"
        extra = "".join(f" {k} {s[k]}" for k in ("consumed", "api_versions") if k in s)
        tail = "\n".join(self.stderr.splitlines()[-30:])
        return (f"{' '.join(map(str, self.argv))}\n"
                f"exit {self.rc} after {self.wall_s:.1f}s; produced {s.get('produced')}{extra} "
                f"error_count {s.get('error_count')}\n"
                f"errors:\n  {errs}\n"
                f"stdout tail:\n{self.stdout[-1500:]}\n"
                f"stderr tail:\n{tail}")


def execute(argv: list, timeout: float) -> CheckRun:
    """Runs a check program to completion (bounded by `timeout`) and parses the
    last JSON line of its stdout as the summary."""
    import json
    import subprocess
    import time

    t0 = time.monotonic()
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, stdin=subprocess.DEVNULL,
                           errors="replace")
        rc, out, err = r.returncode, r.stdout, r.stderr
    except subprocess.TimeoutExpired as e:
        rc = "timeout"
        out = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else (e.stdout or "")
        err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else (e.stderr or "")
    summary = None
    for line in reversed(out.splitlines()):
        if line.strip().startswith("{"):
            try:
                summary = json.loads(line)
                break
            except ValueError:
                pass
    return CheckRun(argv, rc, summary, out, err, time.monotonic() - t0)
