#!/usr/bin/env python3
"""kcat-check: drive Debian's `kcat` binary (librdkafka's command-line client) against a
broker, produce N records, consume them back and verify every field.

Same command line, JSON summary and exit code as the other client checks
(see README.md), with "client": "kcat":

  python3 tests/clients/kcat_check.py --bootstrap 127.0.0.1:9092 --topic T \\
      --messages 100000 --compression zstd [--seed S] [--partitions P] [--kcat /usr/bin/kcat]
      [--security-protocol ... --sasl-mechanism ... --ssl-ca ...]   (as the other checks; each
      kcat and the AdminClient get the librdkafka properties with -X)

What it does
  1. Creates T with P partitions (confluent-kafka AdminClient: kcat has no admin
     commands) and waits for every partition to have a leader.
  2. Produces with one `kcat -P -p <partition> -K '\\t' -z <codec> -H ... [-Z]` process per
     partition (they run in parallel), acks=all, idempotence on, linger 5 ms, reading
     "key<TAB>value" lines from stdin. Record i goes to partition i % P, so in each
     partition offset k holds record k*P + p. `-v -v` makes kcat print one delivery
     report per message; their offsets are the acked offsets.
  3. Consumes with `kcat -C -e -o beginning -f '%p\\t%o\\t%T\\t%K\\t%S\\t%h\\t%k\\t%s\\n'`
     (the simple consumer: no group) and checks partition, offset (contiguous from 0,
     equal to the acked offset), key and value (null vs empty), headers (count, order,
     names, values, null vs empty), and that timestamps lie in the produce window and
     never go backwards in a partition. `kcat -C -J -c 5` per partition checks that the
     timestamp type is CreateTime. Then `kcat -Q -t T:p:-1` (ListOffsets latest) must
     equal the per-partition counts.

Content (kcat reads text lines, so it is derived from the shared generator clientgen.py):
  * value: the lowercase hex of the generated value (mixed sizes, 0 to ~208 KiB of text);
  * key: the generated key (ASCII "key-<i>-<alnum>", null or empty);
  * kcat can send a null key/value only with -Z, which also turns every empty key/value
    into null, and cannot send a null value without it. So odd partitions are produced
    with -Z (empty -> null: null keys and null values) and even partitions without it
    (null value -> empty value; null key = line without TAB; empty key = line starting
    with TAB; a null key with an empty value, an empty line that kcat would skip, gets
    the empty key instead);
  * headers: -H applies the same list to every message: trace-id=kcat-check, dup=1,
    dup=2, empty= (empty value), nullh (null value), k\u00f8y=v\u00e6rdi (UTF-8).
Timestamps are set by librdkafka at produce time (kcat cannot set them).

--gen-digest prints the digest of the shared generator (same as the Java/Go programs);
--verify-seed S2 verifies against another seed and must exit 1.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "python"))

import clientgen  # noqa: E402
from client_check import CODECS, SECURITY_USAGE, ConfluentDriver, Errors, Security, reachable, show  # noqa: E402

CONSUME_TIMEOUT_S = 120.0
PRODUCE_TIMEOUT_S = 180.0
TOPIC_READY_TIMEOUT_S = 60.0
USAGE = ("usage: --bootstrap HOST:PORT --topic T --messages N --compression none|gzip|snappy|lz4|zstd "
         "[--seed S] [--partitions P] [--kcat PATH] " + SECURITY_USAGE)

# (name, value) in order; value None = null (kcat: -H name), b"" = empty (-H name=).
HEADERS = [
    ("trace-id", b"kcat-check"),
    ("dup", b"1"),
    ("dup", b"2"),
    ("empty", b""),
    ("nullh", None),
    ("k\u00f8y", "v\u00e6rdi".encode("utf-8")),
]

FORMAT = r"%p\t%o\t%T\t%K\t%S\t%h\t%k\t%s\n"
DELIVERY_RE = re.compile(rb"Message delivered to partition (-?\d+) \(offset (-?\d+)\)")
QUERY_RE = re.compile(r"\[(\d+)\]\s+offset\s+(-?\d+)")


def log(msg: str) -> None:
    print(f"[kcat-check] {msg}", file=sys.stderr, flush=True)


def null_mode(p: int) -> bool:
    """Odd partitions are produced with kcat -Z (empty key/value sent as null)."""
    return p % 2 == 1


def kcat_record(seed: int, i: int, P: int):
    """(line, key, value) of record i: the stdin line for kcat and the expected key/value."""
    key, value, _ = clientgen.gen(seed, i)
    hexv = value.hex().encode("ascii") if value else b""
    if null_mode(i % P):
        ekey = key if key else None
        evalue = hexv if hexv else None
        line = (key or b"") + b"\t" + hexv
    else:
        evalue = hexv  # null value cannot be sent without -Z: empty
        if key is None and not hexv:
            key = b""  # an empty line would be skipped by kcat
        ekey = key
        line = hexv if key is None else key + b"\t" + hexv
    return line, ekey, evalue


def headers_arg() -> list[str]:
    out = []
    for name, v in HEADERS:
        out += ["-H", name if v is None else f"{name}={v.decode('utf-8')}"]
    return out


def headers_text() -> bytes:
    """What kcat's %h prints for HEADERS: n=v comma-separated, NULL for a null value."""
    return b",".join(name.encode("utf-8") + b"=" + (b"NULL" if v is None else v) for name, v in HEADERS)


def parse_headers(text: bytes):
    out = []
    if not text:
        return out
    for item in text.split(b","):
        name, sep, v = item.partition(b"=")
        out.append((name.decode("utf-8", errors="replace"), None if v == b"NULL" else v))
    return out


# ---------------------------------------------------------------------------


class Opts:
    bootstrap = None
    topic = None
    messages = -1
    compression = None
    seed = 1
    partitions = 3
    gen_digest = False
    verify_seed = None
    kcat = None

    def __init__(self) -> None:
        self.security = Security()


def parse(argv: list[str]) -> Opts:
    o = Opts()
    i = 0
    while i < len(argv):
        a = argv[i]
        v = None
        if a.startswith("--") and "=" in a:
            a, v = a.split("=", 1)
        if a == "--gen-digest":
            o.gen_digest = True
            i += 1
            continue
        if v is None:
            if i + 1 >= len(argv):
                raise ValueError(f"missing value for {a}")
            v = argv[i + 1]
            i += 1
        i += 1
        if a == "--bootstrap":
            o.bootstrap = v
        elif a == "--topic":
            o.topic = v
        elif a == "--messages":
            o.messages = int(v)
        elif a == "--compression":
            o.compression = v
        elif a == "--seed":
            o.seed = int(v)
        elif a == "--partitions":
            o.partitions = int(v)
        elif a == "--verify-seed":
            o.verify_seed = int(v)
        elif a == "--kcat":
            o.kcat = v
        elif not o.security.set(a, v):
            raise ValueError(f"unknown argument {a}")
    o.security.validate()
    return o


def create_topic(errs: Errors, bootstrap: str, topic: str, partitions: int, security: Security) -> int:
    """Create the topic and wait for leaders with the confluent-kafka AdminClient
    (kcat has no admin commands): the same code as client_check.py --client confluent-kafka.
    A failed login ends the run here, before any kcat runs."""
    return ConfluentDriver(bootstrap, client_id_prefix="kcat-check", security=security).create_topic(
        errs, topic, partitions)


# librdkafka's words for a failed login or TLS handshake (its FAIL log line, kcat's "% ERROR:").
LOGIN_FAILURE_RE = re.compile(rb"[^\n]*(?:SASL authentication error|Authentication failure|SSL handshake failed)[^\n]*")


class LoginWatch:
    """Scans kcat stderr files, as they grow, for a failed login: librdkafka retries it
    forever, so kcat would only give up at message.timeout.ms or the check's timeouts."""

    def __init__(self) -> None:
        self.paths: dict[str, int] = {}  # path -> bytes already scanned
        self.failure: str | None = None
        self.lock = threading.Lock()

    def add(self, path: str) -> None:
        with self.lock:
            self.paths.setdefault(path, 0)

    def check(self) -> str | None:
        """The first login-failure line seen in any file, or None."""
        with self.lock:
            for path, pos in list(self.paths.items()):
                if self.failure:
                    break
                try:
                    with open(path, "rb") as f:
                        f.seek(pos)
                        data = f.read()
                except OSError:
                    continue
                # Only whole lines; a partial last line is read again next time.
                end = data.rfind(b"\n") + 1
                self.paths[path] = pos + end
                m = LOGIN_FAILURE_RE.search(data[:end])
                if m:
                    self.failure = m.group(0).decode("utf-8", errors="replace").strip()
            return self.failure


def tail_text(path: str, n: int = 5) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 16384))
            lines = [ln for ln in f.read().decode(errors="replace").splitlines()
                     if "Message delivered" not in ln]
        return " | ".join(lines[-n:])
    except OSError as e:
        return f"<{e}>"


SUMMARY: dict = {}
ERRS = Errors()


def run(argv: list[str]) -> int:
    summary = SUMMARY
    summary.update({"client": "kcat", "produced": 0, "consumed": 0, "errors": [], "error_count": 0, "topic": "",
                    "partitions": 0, "compression": "", "seed": 1, "produce_ms": 0, "consume_ms": 0})
    errs = ERRS
    messages = [-1]

    def finish() -> int:
        summary["errors"] = list(errs.list)
        summary["error_count"] = errs.count
        print(json.dumps(summary, ensure_ascii=False, separators=(",", ":")), flush=True)
        ok = not errs.list and summary["produced"] == messages[0] and summary["consumed"] == messages[0]
        return 0 if ok else 1

    try:
        o = parse(argv)
    except ValueError as e:
        errs.add(f"usage: {e}")
        return finish()
    summary.update(topic=o.topic or "", compression=o.compression or "", seed=o.seed)
    messages[0] = o.messages
    if o.gen_digest:
        if o.messages < 0:
            print("--gen-digest needs --messages", file=sys.stderr)
            return 1
        print(clientgen.digest(o.seed, o.messages))
        return 0
    if o.bootstrap is None or o.topic is None or o.messages < 0 or o.compression is None:
        errs.add(USAGE)
        return finish()
    if o.compression not in CODECS:
        errs.add(f"unknown compression \"{o.compression}\"")
        return finish()
    if o.partitions < 1:
        errs.add("--partitions must be >= 1")
        return finish()
    kcat = o.kcat or os.environ.get("KCAT") or shutil.which("kcat") or shutil.which("kafkacat")
    if not kcat or not os.path.exists(kcat):
        errs.add("kcat binary not found (apt-get install kcat, or pass --kcat PATH)")
        return finish()
    reach = reachable(o.bootstrap)
    if reach is not None:
        errs.add(f"broker {o.bootstrap} unreachable: {reach}")
        return finish()

    # ---- topic ----------------------------------------------------------------
    P = create_topic(errs, o.bootstrap, o.topic, o.partitions, o.security)
    if P < 0:
        return finish()
    if P != o.partitions:
        log(f"note: topic {o.topic} has {P} partitions (asked for {o.partitions}); using {P}")
    summary["partitions"] = P
    n = o.messages
    expected = [((n - 1 - p) // P + 1) if n > p else 0 for p in range(P)]

    with tempfile.TemporaryDirectory(prefix="kcat-check-") as tmp:
        # ---- produce: one kcat per partition, in parallel ------------------------
        inputs = [open(os.path.join(tmp, f"in-{p}"), "wb") for p in range(P)]
        for i in range(n):
            line, _, _ = kcat_record(o.seed, i, P)
            inputs[i % P].write(line + b"\n")
        for f in inputs:
            f.close()
        common = [kcat, "-b", o.bootstrap, "-X", "client.id=kcat-check", "-m", "30"]
        for k, v in o.security.librdkafka().items():
            common += ["-X", f"{k}={v}"]
        procs = []
        watch = LoginWatch()
        t0 = time.monotonic()
        t_start_ms = int(time.time() * 1000)
        for p in range(P):
            argv_p = common + ["-P", "-t", o.topic, "-p", str(p), "-K", r"\t", "-z", o.compression,
                               "-X", "acks=all", "-X", "enable.idempotence=true", "-X", "linger.ms=5",
                               "-X", "message.timeout.ms=120000", "-v", "-v"] + headers_arg()
            if null_mode(p):
                argv_p.append("-Z")
            errp = os.path.join(tmp, f"produce-{p}.err")
            watch.add(errp)
            with open(os.path.join(tmp, f"in-{p}"), "rb") as fin, open(errp, "wb") as ferr:
                procs.append((p, subprocess.Popen(argv_p, stdin=fin, stdout=subprocess.DEVNULL, stderr=ferr), errp))
        deadline = time.monotonic() + PRODUCE_TIMEOUT_S
        while any(proc.poll() is None for _, proc, _ in procs) and time.monotonic() < deadline:
            if watch.check():
                break
            time.sleep(0.2)
        for p, proc, errp in procs:
            rc = proc.poll()
            if rc is None:
                proc.kill()
                proc.wait(timeout=10)
                rc = "killed after a failed login" if watch.failure else "timeout"
            if rc != 0:
                errs.add(f"kcat producer for partition {p} exited {rc}: {tail_text(errp)}")
        if watch.check():
            errs.add(f"kcat producer: login failed: {watch.failure}")
            summary["produce_ms"] = int((time.monotonic() - t0) * 1000)
            return finish()
        t_end_ms = int(time.time() * 1000)
        summary["produce_ms"] = int((time.monotonic() - t0) * 1000)

        # Delivery reports, per partition in produce order.
        acked = [-1] * n
        produced = 0
        for p, _, errp in procs:
            with open(errp, "rb") as f:
                data = f.read()
            k = 0
            for m in DELIVERY_RE.finditer(data):
                dp, off = int(m.group(1)), int(m.group(2))
                if dp != p:
                    errs.add(f"delivery report for partition {dp} from the partition {p} producer")
                    continue
                i = k * P + p
                k += 1
                if i < n:
                    acked[i] = off
                produced += 1
            if k != expected[p]:
                errs.add(f"partition {p}: {k} delivery reports, want {expected[p]}")
            failed = data.count(b"Delivery failed")
            if failed:
                errs.add(f"partition {p}: {failed} delivery failures: {tail_text(errp)}")
        summary["produced"] = produced
        log(f"produced {produced}/{n} in {summary['produce_ms']} ms")
        for i in range(n):
            if acked[i] >= 0 and acked[i] != i // P:
                errs.add(f"acked offset: record {i} partition {i % P} got offset {acked[i]}, want {i // P}")

        # ---- consume ---------------------------------------------------------------
        vseed = o.verify_seed if o.verify_seed is not None else o.seed
        want_headers = parse_headers(headers_text())
        got = [0] * P
        last_ts = [None] * P
        consumed = 0
        cerr = os.path.join(tmp, "consume.err")
        argv_c = common + ["-C", "-t", o.topic, "-o", "beginning", "-e", "-q", "-f", FORMAT,
                           "-X", "fetch.message.max.bytes=8388608"]
        t1 = time.monotonic()
        with open(cerr, "wb") as ferr:
            proc = subprocess.Popen(argv_c, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=ferr,
                                    bufsize=1 << 20)
            timer = threading.Timer(CONSUME_TIMEOUT_S, proc.kill)
            timer.start()
            watch.add(cerr)
            stop_watch = threading.Event()

            def watch_consumer():
                while not stop_watch.wait(0.5):
                    if watch.check():
                        proc.kill()
                        return

            threading.Thread(target=watch_consumer, name="kcat-login-watch", daemon=True).start()
            try:
                for raw in proc.stdout:
                    consumed += 1
                    fields = raw.rstrip(b"\n").split(b"\t", 7)
                    if len(fields) != 8:
                        errs.add(f"unparseable kcat output line: {raw[:200]!r}")
                        continue
                    try:
                        p, off, ts, klen, vlen = (int(x) for x in fields[:5])
                    except ValueError:
                        errs.add(f"unparseable kcat output line: {raw[:200]!r}")
                        continue
                    hdrs, ktext, vtext = fields[5], fields[6], fields[7]
                    key = None if klen == -1 else ktext
                    value = None if vlen == -1 else vtext
                    if key is not None and len(key) != klen:
                        errs.add(f"partition {p} offset {off}: key length {klen} but {len(key)} bytes printed")
                    if value is not None and len(value) != vlen:
                        errs.add(f"partition {p} offset {off}: value length {vlen} but {len(value)} bytes printed")
                    if p < 0 or p >= P:
                        errs.add(f"record from unexpected partition {p}")
                        continue
                    k = got[p]
                    got[p] = k + 1
                    i = k * P + p
                    if i >= n:
                        errs.add(f"partition {p}: extra record at offset {off} (expected only {expected[p]} records)")
                        continue
                    if off != k:
                        errs.add(f"record {i} partition {p}: offset {off}, want {k} (contiguous from 0)")
                    if acked[i] >= 0 and off != acked[i]:
                        errs.add(f"record {i} partition {p}: consumed offset {off} != acked offset {acked[i]}")
                    _, ekey, evalue = kcat_record(vseed, i, P)
                    if (key is None) != (ekey is None) or (key is not None and key != ekey):
                        errs.add(f"record {i} partition {p} offset {off}: key {show(key)}, want {show(ekey)}")
                    if (value is None) != (evalue is None) or (value is not None and value != evalue):
                        errs.add(f"record {i} partition {p} offset {off}: value {show(value)}, want {show(evalue)}")
                    if not (t_start_ms - 1 <= ts <= t_end_ms + 1):
                        errs.add(f"record {i} partition {p} offset {off}: timestamp {ts} outside the produce "
                                 f"window [{t_start_ms}, {t_end_ms}]")
                    if last_ts[p] is not None and ts < last_ts[p]:
                        errs.add(f"record {i} partition {p} offset {off}: timestamp {ts} < previous {last_ts[p]}")
                    last_ts[p] = ts
                    hs = parse_headers(hdrs)
                    if hs != want_headers:
                        errs.add(f"record {i} partition {p} offset {off}: headers {hdrs[:200]!r}, "
                                 f"want {headers_text()!r}")
                rc = proc.wait(timeout=30)
            finally:
                timer.cancel()
                stop_watch.set()
                if proc.poll() is None:
                    proc.kill()
                    proc.wait(timeout=10)
        summary["consume_ms"] = int((time.monotonic() - t1) * 1000)
        summary["consumed"] = consumed
        log(f"consumed {consumed}/{n} in {summary['consume_ms']} ms")
        if watch.check():
            errs.add(f"kcat consumer: login failed: {watch.failure}")
            return finish()
        if rc != 0:
            errs.add(f"kcat consumer exited {rc}{' (killed after timeout)' if rc < 0 else ''}: {tail_text(cerr)}")
        for p in range(P):
            if got[p] < expected[p]:
                errs.add(f"partition {p} consumed {got[p]} of {expected[p]} records")

        # ---- timestamp type (only the JSON envelope shows it) -----------------------
        for p in range(P):
            if expected[p] == 0:
                continue
            r = subprocess.run(common + ["-C", "-t", o.topic, "-p", str(p), "-o", "beginning", "-e", "-q",
                                         "-c", "5", "-J"], capture_output=True, timeout=60)
            lines = [ln for ln in r.stdout.splitlines() if ln.strip()]
            if r.returncode != 0 or not lines:
                errs.add(f"kcat -J partition {p}: exit {r.returncode}: {r.stderr[-300:]!r}")
                continue
            for ln in lines:
                try:
                    env = json.loads(ln)
                except ValueError:
                    errs.add(f"kcat -J partition {p}: bad JSON {ln[:200]!r}")
                    continue
                if env.get("tstype") != "create":
                    errs.add(f"partition {p} offset {env.get('offset')}: timestamp type {env.get('tstype')!r}, "
                             f"want 'create' (CreateTime)")

        # ---- end offsets: no extra records ----------------------------------------
        qargs = []
        for p in range(P):
            qargs += ["-t", f"{o.topic}:{p}:-1"]
        r = subprocess.run(common + ["-Q"] + qargs, capture_output=True, text=True, timeout=60)
        ends = {int(m.group(1)): int(m.group(2)) for m in QUERY_RE.finditer(r.stdout)}
        if r.returncode != 0:
            errs.add(f"kcat -Q exited {r.returncode}: {r.stderr.strip()[-300:]}")
        for p in range(P):
            if p not in ends:
                if r.returncode == 0:
                    errs.add(f"end offsets: partition {p} missing in kcat -Q output {r.stdout.strip()[:300]!r}")
            elif ends[p] != expected[p]:
                errs.add(f"partition {p}: log end offset {ends[p]}, want {expected[p]}")
    return finish()


def main() -> None:
    try:
        rc = run(sys.argv[1:])
    except Exception as e:  # noqa: BLE001 - still print a JSON line
        ERRS.add(f"fatal: {e!r}")
        SUMMARY["errors"] = list(ERRS.list)
        SUMMARY["error_count"] = ERRS.count
        print(json.dumps(SUMMARY, ensure_ascii=False, separators=(",", ":")), flush=True)
        rc = 1
    sys.stdout.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
