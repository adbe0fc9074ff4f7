#!/usr/bin/env python3
"""client-check (Python): produce N deterministic records with a Python Kafka client,
consume them back with manual assign() (no consumer group) and verify every field.

Same contract, generated content and JSON summary as the Java and Go programs
(see ../README.md). The library is chosen with --client:

  --client confluent-kafka   confluent-kafka-python (librdkafka)   summary "client": "confluent-kafka"
  --client kafka-python      kafka-python (pure Python)            summary "client": "kafka-python"

  python3 client_check.py --client kafka-python --bootstrap 127.0.0.1:9092 \\
      --topic T --messages 100000 --compression zstd [--seed S] [--partitions P]
  python3 client_check.py --gen-digest --messages N [--seed S]   # same digest as Java/Go

Security (optional, the same flags as the other client checks, see ../README.md):
  --security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL   (default PLAINTEXT)
  --sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P
  --ssl-ca FILE  --ssl-cert FILE --ssl-key FILE
A failed login (or TLS handshake) ends the run with exit 1 and the library's error in
"errors", within ~30 s.

Library limits (documented, applied identically on produce and verify):
  * kafka-python's KafkaProducer.send() refuses null header values and records whose
    key and value are both null (its wire encoder could write them, its API refuses).
    With --client kafka-python a null header value is sent as b"" and a record with
    null key and null value gets the empty key b"". Everything else is unchanged.
  * confluent-kafka refuses to create a Consumer without group.id, so the check sets a
    unique throw-away group.id. It never subscribes or commits (only assign()), but
    librdkafka still sends FindCoordinator for that group in the background.
"""

from __future__ import annotations

import json
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import clientgen  # noqa: E402

MAX_ERRORS = 20
CONSUME_TIMEOUT_S = 120.0
TOPIC_READY_TIMEOUT_S = 60.0
CODECS = ("none", "gzip", "snappy", "lz4", "zstd")
CLIENTS = ("confluent-kafka", "kafka-python")
SECURITY_USAGE = ("[--security-protocol PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL] "
                  "[--sasl-mechanism PLAIN|SCRAM-SHA-256|SCRAM-SHA-512 --sasl-username U --sasl-password P] "
                  "[--ssl-ca FILE] [--ssl-cert FILE --ssl-key FILE]")
USAGE = ("usage: --client confluent-kafka|kafka-python --bootstrap HOST:PORT --topic T --messages N "
         "--compression none|gzip|snappy|lz4|zstd [--seed S] [--partitions P] " + SECURITY_USAGE)
# How long a secured admin client may try to log in before the run gives up (a failed
# login is reported sooner when the library says so).
SECURE_LOGIN_TIMEOUT_S = 25.0


def log(msg: str) -> None:
    print(f"[client-check-python] {msg}", file=sys.stderr, flush=True)


class Errors:
    def __init__(self) -> None:
        self.list: list[str] = []
        self.count = 0

    def add(self, msg: str) -> None:
        self.count += 1
        if len(self.list) < MAX_ERRORS:
            self.list.append(msg)


def show(b) -> str:
    if b is None:
        return "null"
    b = bytes(b)
    if len(b) > 32:
        return f"{len(b)} bytes {b[:32].hex()}..."
    return f"{len(b)} bytes {b.hex()}"


# ---------------------------------------------------------------------------
# Security flags (shared with kcat_check.py)
# ---------------------------------------------------------------------------

PROTOCOLS = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
MECHANISMS = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")


class Security:
    """--security-protocol, --sasl-*, --ssl-*: TLS and SASL for every client of a run.
    Hostname verification stays on in every library."""

    FLAGS = {"--security-protocol": "protocol", "--sasl-mechanism": "mechanism", "--sasl-username": "username",
             "--sasl-password": "password", "--ssl-ca": "ca", "--ssl-cert": "cert", "--ssl-key": "key"}

    def __init__(self) -> None:
        self.protocol = "PLAINTEXT"
        self.mechanism = self.username = self.password = None
        self.ca = self.cert = self.key = None

    def set(self, name: str, value: str) -> bool:
        """Takes the option if it is a security flag; False otherwise."""
        attr = self.FLAGS.get(name)
        if attr is None:
            return False
        setattr(self, attr, value)
        return True

    @property
    def sasl(self) -> bool:
        return self.protocol in ("SASL_PLAINTEXT", "SASL_SSL")

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def secure(self) -> bool:
        return self.protocol != "PLAINTEXT"

    def validate(self) -> None:
        """ValueError for an inconsistent combination of flags."""
        if self.protocol not in PROTOCOLS:
            raise ValueError(f"unknown --security-protocol \"{self.protocol}\" ({'|'.join(PROTOCOLS)})")
        if self.sasl:
            if None in (self.mechanism, self.username, self.password):
                raise ValueError(f"{self.protocol} needs --sasl-mechanism, --sasl-username and --sasl-password")
            if self.mechanism not in MECHANISMS:
                raise ValueError(f"unknown --sasl-mechanism \"{self.mechanism}\" ({'|'.join(MECHANISMS)})")
        elif (self.mechanism, self.username, self.password) != (None, None, None):
            raise ValueError("--sasl-* flags need --security-protocol SASL_PLAINTEXT or SASL_SSL")
        if not self.tls and (self.ca, self.cert, self.key) != (None, None, None):
            raise ValueError("--ssl-* flags need --security-protocol SSL or SASL_SSL")
        if (self.cert is None) != (self.key is None):
            raise ValueError("--ssl-cert and --ssl-key go together")
        for f in (self.ca, self.cert, self.key):
            if f is not None and not os.access(f, os.R_OK):
                raise ValueError(f"cannot read {f}")

    def librdkafka(self) -> dict:
        """librdkafka properties (confluent-kafka, kcat -X)."""
        if not self.secure:
            return {}
        c = {"security.protocol": self.protocol}
        if self.sasl:
            c.update({"sasl.mechanisms": self.mechanism, "sasl.username": self.username,
                      "sasl.password": self.password})
        if self.tls:
            # librdkafka >= 2.0 verifies the host name by default; say so for older ones.
            c["ssl.endpoint.identification.algorithm"] = "https"
            if self.ca:
                c["ssl.ca.location"] = self.ca
            if self.cert:
                c.update({"ssl.certificate.location": self.cert, "ssl.key.location": self.key})
        return c

    def kafka_python(self) -> dict:
        """kafka-python keyword arguments."""
        if not self.secure:
            return {}
        c = {"security_protocol": self.protocol}
        if self.sasl:
            c.update(sasl_mechanism=self.mechanism, sasl_plain_username=self.username,
                     sasl_plain_password=self.password)
        if self.tls:
            c["ssl_check_hostname"] = True
            if self.ca:
                c["ssl_cafile"] = self.ca
            if self.cert:
                c.update(ssl_certfile=self.cert, ssl_keyfile=self.key)
        return c


# ---------------------------------------------------------------------------
# Argument parsing (JSON summary even for bad arguments, like Java/Go)
# ---------------------------------------------------------------------------


class Opts:
    client = "confluent-kafka"
    bootstrap = None
    topic = None
    messages = -1
    compression = None
    seed = 1
    partitions = 3
    gen_digest = False
    verify_seed = None

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
        if a == "--client":
            o.client = v
        elif a == "--bootstrap":
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
        elif not o.security.set(a, v):
            raise ValueError(f"unknown argument {a}")
    o.security.validate()
    return o


# ---------------------------------------------------------------------------
# Expected content
# ---------------------------------------------------------------------------


def adapt_for_client(client: str, rec):
    """The record as this client library can send it (see the module docstring)."""
    if client != "kafka-python":
        return rec
    key, value, headers = rec
    if key is None and value is None:
        key = b""
    if any(hv is None for _, hv in headers):
        headers = [(hk, b"" if hv is None else hv) for hk, hv in headers]
    return key, value, headers


class Expected:
    """Generated records, cached for the produce seed (verification reuses them)."""

    def __init__(self, client: str, seed: int, n: int) -> None:
        self.client = client
        self.seed = seed
        self.cache = [None] * n

    def get(self, seed: int, i: int):
        if seed == self.seed:
            r = self.cache[i]
            if r is None:
                r = self.cache[i] = adapt_for_client(self.client, clientgen.gen(seed, i))
            return r
        return adapt_for_client(self.client, clientgen.gen(seed, i))


def verify(errs: Errors, exp: Expected, vseed: int, i: int, k: int, base: int, acked_off: int, p: int, off: int,
           key, value, headers, ts: int, ts_is_create: bool, ts_type_desc) -> None:
    if off != k:
        errs.add(f"record {i} partition {p}: offset {off}, want {k} (contiguous from 0)")
    if acked_off >= 0 and off != acked_off:
        errs.add(f"record {i} partition {p}: consumed offset {off} != acked offset {acked_off}")
    gkey, gvalue, gheaders = exp.get(vseed, i)
    if (key is None) != (gkey is None) or (key is not None and key != gkey):
        errs.add(f"record {i} partition {p} offset {off}: key {show(key)}, want {show(gkey)}")
    if (value is None) != (gvalue is None) or (value is not None and value != gvalue):
        errs.add(f"record {i} partition {p} offset {off}: value {show(value)}, want {show(gvalue)}")
    if ts != base + i:
        errs.add(f"record {i} partition {p} offset {off}: timestamp {ts}, want {base + i}")
    if not ts_is_create:
        errs.add(f"record {i} partition {p} offset {off}: timestamp type {ts_type_desc}, want CreateTime")
    headers = headers or []
    if len(headers) != len(gheaders):
        errs.add(f"record {i} partition {p} offset {off}: {len(headers)} headers, want {len(gheaders)}")
        return
    for j, ((hk, hv), (wk, wv)) in enumerate(zip(headers, gheaders)):
        if isinstance(hk, (bytes, bytearray)):
            hk = bytes(hk).decode("utf-8", errors="replace")
        if hk != wk or (hv is None) != (wv is None) or (hv is not None and hv != wv):
            errs.add(f"record {i} partition {p} offset {off}: header {j} = ({hk!r}, {show(hv)}), "
                     f"want ({wk!r}, {show(wv)})")


# ---------------------------------------------------------------------------
# confluent-kafka (librdkafka)
# ---------------------------------------------------------------------------


class ConfluentDriver:
    name = "confluent-kafka"

    def __init__(self, bootstrap: str, client_id_prefix: str = "client-check-confluent",
                 security: Security | None = None) -> None:
        import confluent_kafka  # noqa: F401

        self.bootstrap = bootstrap
        self.prefix = client_id_prefix
        debug = {"debug": "protocol"} if os.environ.get("CLIENT_CHECK_DEBUG") else {}
        # TLS / SASL properties (none for PLAINTEXT), and an error_cb on every client that
        # keeps the login failures: librdkafka retries a failed login forever, so the run
        # has to stop on the first one itself.
        self.common = {**(security or Security()).librdkafka(), **debug, "error_cb": self._on_error}
        self.login_failures: list = []
        v = confluent_kafka.version()
        log(f"confluent-kafka {v[0] if isinstance(v, tuple) else v}, librdkafka {confluent_kafka.libversion()[0]}")

    def _on_error(self, err) -> None:
        from confluent_kafka import KafkaError

        # _AUTHENTICATION: SASL refused (or a TLS handshake that failed on a certificate);
        # _SSL: any other TLS handshake failure. Either repeats on every reconnect.
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL):
            self.login_failures.append(err)
        log(f"librdkafka error: {err}")

    def login_failure(self) -> str | None:
        return f"login failed: {self.login_failures[0].str()}" if self.login_failures else None

    def create_topic(self, errs: Errors, topic: str, partitions: int) -> int:
        import concurrent.futures

        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import AdminClient, NewTopic

        adm = AdminClient({"bootstrap.servers": self.bootstrap, "client.id": f"{self.prefix}-admin",
                           **self.common})
        fut = adm.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=30, request_timeout=60)[topic]
        deadline = time.monotonic() + 90
        while True:
            try:
                fut.result(timeout=0.2)
                break
            except concurrent.futures.TimeoutError:
                adm.poll(0)  # serves error_cb
                if self.login_failure():
                    errs.add(f"create topic {topic}: {self.login_failure()}")
                    return -1
                if time.monotonic() > deadline:
                    errs.add(f"create topic {topic}: no answer after 90s")
                    return -1
            except KafkaException as e:
                ke = e.args[0]
                if ke.code() != KafkaError.TOPIC_ALREADY_EXISTS:
                    adm.poll(0)
                    why = f" ({self.login_failure()})" if self.login_failure() else ""
                    errs.add(f"create topic {topic}: {ke}{why}")
                    return -1
                break
        # Metadata for this topic only (it exists now, so auto-creation is moot). Not the
        # all-topics form list_topics(): librdkafka >= 2 encodes that Metadata v9+ request
        # with 3 stray trailing bytes, which Apache Kafka ignores; other brokers may not.
        deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
        last = None
        while True:
            try:
                md = adm.list_topics(topic=topic, timeout=10)
                t = md.topics.get(topic)
                if t is not None and t.error is None and t.partitions and all(
                        pm.error is None and pm.leader >= 0 for pm in t.partitions.values()):
                    return len(t.partitions)
                last = t.error if t is not None else "topic not in metadata"
            except KafkaException as e:
                last = e
            adm.poll(0)
            if self.login_failure():
                errs.add(f"topic {topic}: {self.login_failure()}")
                return -1
            if time.monotonic() > deadline:
                errs.add(f"topic {topic} not ready after {TOPIC_READY_TIMEOUT_S:.0f}s (last error: {last})")
                return -1
            time.sleep(0.1)

    def produce(self, errs: Errors, topic: str, P: int, n: int, exp: Expected, seed: int, base: int,
                compression: str, acked: list) -> int:
        from confluent_kafka import Producer

        prod = Producer({
            "bootstrap.servers": self.bootstrap,
            "client.id": f"{self.prefix}-producer",
            "acks": "all",
            "enable.idempotence": True,
            "compression.type": compression,
            "linger.ms": 5,
            "message.timeout.ms": 120000,
            "queue.buffering.max.messages": 200000,
            "queue.buffering.max.kbytes": 256 * 1024,
            **self.common,
        })
        ok = [0]

        def on_delivery(err, msg, idx):
            if err is not None:
                errs.add(f"produce record {idx} (partition {idx % P}): {err}")
            else:
                acked[idx] = msg.offset()
                ok[0] += 1

        def cb_for(idx):
            return lambda err, msg: on_delivery(err, msg, idx)

        for i in range(n):
            key, value, headers = exp.get(seed, i)
            kw = {"partition": i % P, "timestamp": base + i, "on_delivery": cb_for(i)}
            if headers:
                kw["headers"] = headers
            for _ in range(100000):
                try:
                    prod.produce(topic, value, key, **kw)
                    break
                except BufferError:
                    prod.poll(0.05)
            else:
                errs.add(f"produce record {i}: local queue stayed full")
            if i % 1000 == 999:
                prod.poll(0)
        left = prod.flush(150)
        if left:
            errs.add(f"{left} records still undelivered after flush(150s)")
        if self.login_failure():
            errs.add(f"producer: {self.login_failure()}")
        return ok[0]

    def consume(self, topic: str, P: int, on_record, done, deadline: float, errs: Errors) -> None:
        from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_CREATE_TIME, Consumer, TopicPartition

        c = Consumer({
            "bootstrap.servers": self.bootstrap,
            "client.id": f"{self.prefix}-consumer",
            # Required by confluent-kafka; never used (no subscribe(), no commits).
            "group.id": "client-check-unused-" + uuid.uuid4().hex[:12],
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": "earliest",
            "enable.partition.eof": False,
            "fetch.max.bytes": 64 << 20,
            "max.partition.fetch.bytes": 8 << 20,
            "receive.message.max.bytes": (64 << 20) + 1024 * 1024,
            **self.common,
        })
        self._consumer = c
        c.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in range(P)])
        while not done() and time.monotonic() < deadline:
            if self.login_failure():
                errs.add(f"consumer: {self.login_failure()}")
                return
            for m in c.consume(num_messages=5000, timeout=0.5):
                e = m.error()
                if e is not None:
                    errs.add(f"fetch error {m.topic()}[{m.partition()}]: {e}")
                    continue
                tstype, ts = m.timestamp()
                on_record(m.partition(), m.offset(), m.key(), m.value(), m.headers(), ts,
                          tstype == TIMESTAMP_CREATE_TIME, tstype)

    def end_offsets(self, topic: str, P: int) -> list:
        from confluent_kafka import TopicPartition

        c = self._consumer
        try:
            return [c.get_watermark_offsets(TopicPartition(topic, p), timeout=30, cached=False)[1] for p in range(P)]
        finally:
            c.close()


# ---------------------------------------------------------------------------
# kafka-python
# ---------------------------------------------------------------------------


class KafkaPythonDriver:
    name = "kafka-python"

    def __init__(self, bootstrap: str, security: Security | None = None) -> None:
        import logging

        import kafka

        self.bootstrap = bootstrap
        self.security = security or Security()
        self.sec = self.security.kafka_python()
        # kafka-python retries a failed login until bootstrap_timeout_ms and then says only
        # "Unable to bootstrap": its logged connection errors carry the reason.
        self.login_failures: list[str] = []
        driver = self

        class LoginFailures(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                try:
                    msg = record.getMessage()
                except Exception:  # noqa: BLE001
                    return
                if any(w in msg for w in ("SaslAuthenticationFailed", "uthentication failed", "Handshake failed",
                                          "UnsupportedSaslMechanism")):
                    driver.login_failures.append(msg)

        logging.getLogger("kafka").addHandler(LoginFailures(level=logging.WARNING))
        logging.basicConfig(stream=sys.stderr, level=logging.DEBUG if os.environ.get("CLIENT_CHECK_DEBUG")
                            else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        if not os.environ.get("CLIENT_CHECK_DEBUG"):
            # "Task ... ran for 0.2s (>0.100s threshold)": expected while this process verifies records.
            logging.getLogger("kafka.net.selector").setLevel(logging.ERROR)
        log(f"kafka-python {kafka.__version__}")
        self._consumer = None

    def login_failure(self) -> str | None:
        return f"login failed: {self.login_failures[0]}" if self.login_failures else None

    def _admin(self, errs: Errors, topic: str):
        """KafkaAdminClient (it bootstraps in its constructor), or None after adding the error.
        Built on a helper thread so that a failed login ends the run at once."""
        import threading

        from kafka.admin import KafkaAdminClient

        out: dict = {}

        def build():
            try:
                out["admin"] = KafkaAdminClient(
                    bootstrap_servers=self.bootstrap, client_id="client-check-kafka-python-admin",
                    request_timeout_ms=30000, **self.sec,
                    **({"bootstrap_timeout_ms": int(SECURE_LOGIN_TIMEOUT_S * 1000)} if self.sec else {}))
            except Exception as e:  # noqa: BLE001 - reported below
                out["error"] = e

        t = threading.Thread(target=build, name="kafka-python-admin", daemon=True)
        t.start()
        while t.is_alive():
            t.join(0.2)
            if t.is_alive() and self.login_failure():
                errs.add(f"create topic {topic}: {self.login_failure()}")
                return None  # the thread is left behind: main() ends with os._exit
        if "error" in out:
            why = f" ({self.login_failure()})" if self.login_failure() else ""
            errs.add(f"create topic {topic}: admin client: {out['error']!r}{why}")
            return None
        return out["admin"]

    def create_topic(self, errs: Errors, topic: str, partitions: int) -> int:
        adm = self._admin(errs, topic)
        if adm is None:
            return -1
        try:
            res = adm.create_topics({topic: {"num_partitions": partitions, "replication_factor": 1}},
                                    timeout_ms=30000, raise_errors=False)
            for t in res.get("topics", []):
                code = t.get("error_code", 0)
                if t.get("name") == topic and code not in (0, 36):  # 36 = TOPIC_ALREADY_EXISTS
                    errs.add(f"create topic {topic}: error {code} {t.get('error_message')}")
                    return -1
            deadline = time.monotonic() + TOPIC_READY_TIMEOUT_S
            last = None
            while True:
                try:
                    ds = adm.describe_topics([topic])
                    d = next((x for x in ds if x.get("name") == topic), None)
                    if d is not None and d.get("error_code", 0) == 0 and d.get("partitions") and all(
                            pp.get("error_code", 0) == 0 and pp.get("leader_id", pp.get("leader", -1)) >= 0
                            for pp in d["partitions"]):
                        return len(d["partitions"])
                    last = d
                except Exception as e:  # noqa: BLE001 - reported on timeout
                    last = e
                if time.monotonic() > deadline:
                    errs.add(f"topic {topic} not ready after {TOPIC_READY_TIMEOUT_S:.0f}s (last: {last!r})")
                    return -1
                time.sleep(0.1)
        finally:
            adm.close()

    def produce(self, errs: Errors, topic: str, P: int, n: int, exp: Expected, seed: int, base: int,
                compression: str, acked: list) -> int:
        from kafka import KafkaProducer

        prod = KafkaProducer(
            bootstrap_servers=self.bootstrap,
            client_id="client-check-kafka-python-producer",
            acks="all",
            enable_idempotence=True,
            compression_type=None if compression == "none" else compression,
            linger_ms=5,
            batch_size=256 * 1024,
            delivery_timeout_ms=120000,
            request_timeout_ms=30000,
            **self.sec,
        )
        futures = [None] * n
        try:
            for i in range(n):
                key, value, headers = exp.get(seed, i)
                try:
                    futures[i] = prod.send(topic, value=value, key=key, headers=headers, partition=i % P,
                                           timestamp_ms=base + i)
                except Exception as e:  # noqa: BLE001
                    errs.add(f"produce record {i} (partition {i % P}): send raised {e!r}")
            prod.flush(timeout=150)
        finally:
            prod.close(timeout=30)
        ok = 0
        for i, f in enumerate(futures):
            if f is None:
                continue
            if not f.is_done:
                errs.add(f"produce record {i} (partition {i % P}): not acknowledged")
            elif f.failed():
                errs.add(f"produce record {i} (partition {i % P}): {f.exception!r}")
            else:
                acked[i] = f.value.offset
                ok += 1
        return ok

    def consume(self, topic: str, P: int, on_record, done, deadline: float, errs: Errors) -> None:
        from kafka import KafkaConsumer, TopicPartition

        c = KafkaConsumer(
            bootstrap_servers=self.bootstrap,
            client_id="client-check-kafka-python-consumer",
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            fetch_max_bytes=64 << 20,
            max_partition_fetch_bytes=8 << 20,
            max_poll_records=5000,
            request_timeout_ms=30000,
            **self.sec,
        )
        self._consumer = c
        tps = [TopicPartition(topic, p) for p in range(P)]
        c.assign(tps)
        c.seek_to_beginning(*tps)
        while not done() and time.monotonic() < deadline:
            batches = c.poll(timeout_ms=500, max_records=5000)
            for tp, recs in batches.items():
                for r in recs:
                    on_record(r.partition, r.offset, r.key, r.value, r.headers, r.timestamp,
                              r.timestamp_type == 0, r.timestamp_type)

    def end_offsets(self, topic: str, P: int) -> list:
        from kafka import TopicPartition

        c = self._consumer
        try:
            tps = [TopicPartition(topic, p) for p in range(P)]
            ends = c.end_offsets(tps)
            return [ends.get(tp) for tp in tps]
        finally:
            c.close()


# ---------------------------------------------------------------------------
# Main flow
# ---------------------------------------------------------------------------


def reachable(bootstrap: str, timeout: float = 15.0):
    """None once a TCP connection to HOST:PORT (the first of a comma list) succeeds
    (within `timeout`), else the last error."""
    import socket

    host, _, port = bootstrap.split(",")[0].strip().rpartition(":")
    try:
        port_n = int(port)
    except ValueError:
        return f"bad HOST:PORT {bootstrap!r}"
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host.strip("[]") or "127.0.0.1", port_n), timeout=5):
                return None
        except OSError as e:
            if time.monotonic() > deadline:
                return repr(e)
        time.sleep(0.5)


SUMMARY: dict = {}
ERRS = Errors()


def run(argv: list[str]) -> int:
    summary = SUMMARY
    summary.update({"client": "confluent-kafka", "produced": 0, "consumed": 0, "errors": [], "error_count": 0,
               "topic": "", "partitions": 0, "compression": "", "seed": 1, "produce_ms": 0, "consume_ms": 0})
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
    summary.update(client=o.client if o.client in CLIENTS else str(o.client), topic=o.topic or "",
                   compression=o.compression or "", seed=o.seed)
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
    if o.client not in CLIENTS:
        errs.add(f"unknown client \"{o.client}\" (confluent-kafka|kafka-python)")
        return finish()
    if o.compression not in CODECS:
        errs.add(f"unknown compression \"{o.compression}\"")
        return finish()
    if o.partitions < 1:
        errs.add("--partitions must be >= 1")
        return finish()

    reach = reachable(o.bootstrap)
    if reach is not None:
        errs.add(f"broker {o.bootstrap} unreachable: {reach}")
        return finish()
    driver = (ConfluentDriver(o.bootstrap, security=o.security) if o.client == "confluent-kafka"
              else KafkaPythonDriver(o.bootstrap, security=o.security))

    # ---- topic --------------------------------------------------------------
    P = driver.create_topic(errs, o.topic, o.partitions)
    if P < 0:
        return finish()
    if P != o.partitions:
        log(f"note: topic {o.topic} has {P} partitions (asked for {o.partitions}); using {P}")
    summary["partitions"] = P
    n = o.messages
    base = int(time.time() * 1000) - n - 1000  # timestamps base+i, all in the recent past
    exp = Expected(o.client, o.seed, n)

    # ---- produce ------------------------------------------------------------
    acked = [-1] * n
    t0 = time.monotonic()
    summary["produced"] = driver.produce(errs, o.topic, P, n, exp, o.seed, base, o.compression, acked)
    summary["produce_ms"] = int((time.monotonic() - t0) * 1000)
    log(f"produced {summary['produced']}/{n} in {summary['produce_ms']} ms")

    for i in range(n):
        if acked[i] >= 0 and acked[i] != i // P:
            errs.add(f"acked offset: record {i} partition {i % P} got offset {acked[i]}, want {i // P}")

    # ---- consume (manual assign, no group, no commits) ------------------------
    expected = [((n - 1 - p) // P + 1) if n > p else 0 for p in range(P)]
    got = [0] * P
    state = {"remaining": sum(expected), "consumed": 0}
    vseed = o.verify_seed if o.verify_seed is not None else o.seed

    def on_record(p, off, key, value, headers, ts, ts_is_create, ts_type_desc):
        state["consumed"] += 1
        if p < 0 or p >= P:
            errs.add(f"record from unexpected partition {p}")
            return
        k = got[p]
        got[p] = k + 1
        if k < expected[p]:
            state["remaining"] -= 1
        i = k * P + p
        if i >= n:
            errs.add(f"partition {p}: extra record at offset {off} (expected only {expected[p]} records)")
            return
        verify(errs, exp, vseed, i, k, base, acked[i], p, off, key, value, headers, ts, ts_is_create, ts_type_desc)

    t1 = time.monotonic()
    try:
        driver.consume(o.topic, P, on_record, lambda: state["remaining"] <= 0,
                       time.monotonic() + CONSUME_TIMEOUT_S, errs)
    except Exception as e:  # noqa: BLE001
        errs.add(f"consume: {e!r}")
    summary["consume_ms"] = int((time.monotonic() - t1) * 1000)
    summary["consumed"] = state["consumed"]
    log(f"consumed {state['consumed']}/{n} in {summary['consume_ms']} ms")
    if state["remaining"] > 0:
        for p in range(P):
            if got[p] < expected[p]:
                errs.add(f"timeout after {CONSUME_TIMEOUT_S:.0f}s: partition {p} consumed {got[p]} of "
                         f"{expected[p]} records")

    # ---- end offsets: no extra records ------------------------------------------
    try:
        ends = driver.end_offsets(o.topic, P)
        for p in range(P):
            if ends[p] is None:
                errs.add(f"end offsets: partition {p} missing")
            elif ends[p] != expected[p]:
                errs.add(f"partition {p}: log end offset {ends[p]}, want {expected[p]}")
    except Exception as e:  # noqa: BLE001
        errs.add(f"end offsets: {e!r}")
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
    # Exit without waiting on lingering client threads.
    os._exit(rc)


if __name__ == "__main__":
    main()
