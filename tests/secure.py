"""Secured brokers for tests/test_security.py: Apache Kafka and Chronik with the same
listeners, certificates and SASL mechanisms, so one scenario runs against both.

Each broker has four Kafka listeners:

  PLAINTEXT       the operator's internal listener (creates SCRAM users, topics)
  SASL_SSL        TLS + SASL (PLAIN, SCRAM-SHA-256, SCRAM-SHA-512)
  SASL_PLAINTEXT  SASL without TLS
  MTLS            TLS with client certificates required
  TLS             TLS, no client certificates (the benchmark's encrypted path)

Certificates come from `chronik certs` (a dev CA, a broker certificate for 127.0.0.1, a
client certificate for alice); `expired_client_cert` and a second CA make the bad ones.
"""

from __future__ import annotations

import datetime
import subprocess
import time
from pathlib import Path

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition

from harness import KAFKA_LIBS, LOOPBACK, ApacheKafka, Chronik, free_port

CONFIG_COMMAND = "kafka.admin.ConfigCommand"
MECHANISMS = ("SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN")
LISTENERS = ("PLAINTEXT", "SASL_SSL", "SASL_PLAINTEXT", "MTLS", "TLS")
# With an authorizer: the operator's PLAINTEXT listener authenticates no one.
SUPER_USERS = ("User:ANONYMOUS",)
ACL_COMMAND = "org.apache.kafka.tools.AclCommand"


def chronik_cli(binary: Path, *args: str) -> str:
    p = subprocess.run([str(binary), *args], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, f"chronik {' '.join(args)} exited {p.returncode}: {p.stderr}"
    return p.stdout


class Certs:
    """A dev CA with a broker and a client certificate, and an unrelated CA with its own client."""

    def __init__(self, binary: Path, base: Path) -> None:
        self.dir = base / "certs"
        self.other = base / "other-ca"
        chronik_cli(binary, "certs", "init", "--dir", str(self.dir), "--regions", "us-east")
        chronik_cli(binary, "certs", "broker", "--dir", str(self.dir), "--name", "broker",
                    "--host", f"{LOOPBACK},localhost")
        chronik_cli(binary, "certs", "client", "--dir", str(self.dir), "--name", "alice")
        chronik_cli(binary, "certs", "init", "--dir", str(self.other), "--regions", "us-east")
        chronik_cli(binary, "certs", "client", "--dir", str(self.other), "--name", "mallory")
        # Kafka reads its PEM key store as one file: the key, then the chain.
        self.broker_keystore = self.dir / "broker-keystore.pem"
        self.broker_keystore.write_text((self.dir / "broker.key").read_text() + (self.dir / "broker.pem").read_text())
        self.expired = expired_client_cert(self.dir, "alice-expired")

    @property
    def ca(self) -> Path:
        return self.dir / "ca.pem"

    def client(self, name: str) -> tuple[Path, Path]:
        d = self.other if name == "mallory" else self.dir
        return d / f"{name}.pem", d / f"{name}.key"


def expired_client_cert(d: Path, name: str) -> tuple[Path, Path]:
    """A client certificate the dev CA signed that expired yesterday."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    ca_cert = x509.load_pem_x509_certificate((d / "ca.pem").read_bytes())
    ca_key = serialization.load_pem_private_key((d / "ca.key").read_bytes(), password=None)
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(days=30))
            .not_valid_after(now - datetime.timedelta(days=1))
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    pem, key_path = d / f"{name}.pem", d / f"{name}.key"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return pem, key_path


class SecureBroker:
    """A started broker (`kind` "kafka" or "chronik") with the four listeners."""

    def __init__(self, kind: str, base: Path, certs: Certs, binary: Path | None = None,
                 plain_users: dict[str, str] | None = None, reauth_ms: int = 0,
                 kafka_props: dict | None = None, chronik_config: dict | None = None,
                 kafka_jvm: dict | None = None, authorizer: bool = False) -> None:
        self.kind = kind
        self.authorizer = authorizer
        self.certs = certs
        self.ports = {name: free_port() for name in LISTENERS}
        if kind == "kafka":
            self.proc = ApacheKafka(self.ports["PLAINTEXT"], base / "kafka", extra_props={**self._kafka_props(
                plain_users or {}, reauth_ms), **(kafka_props or {})}, **(kafka_jvm or {}))
            self.proc.extra_props["listeners"] = (
                self.proc.extra_props["advertised.listeners"]
                + f",CONTROLLER://{LOOPBACK}:{self.proc.controller_port}")
        else:
            self.proc = Chronik(self.ports["PLAINTEXT"], base / "chronik" / "data", binary=binary,
                                extra_toml=self._chronik_toml(reauth_ms), **(chronik_config or {}))

    def start(self) -> "SecureBroker":
        self.proc.start()
        return self

    def bootstrap(self, listener: str = "PLAINTEXT") -> str:
        return f"{LOOPBACK}:{self.ports[listener]}"

    def _kafka_props(self, plain_users: dict[str, str], reauth_ms: int) -> dict:
        listeners = ",".join(f"{n}://{LOOPBACK}:{self.ports[n]}" for n in LISTENERS)
        props = {
            "listener.security.protocol.map": ("PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT,SASL_SSL:SASL_SSL,"
                                               "SASL_PLAINTEXT:SASL_PLAINTEXT,MTLS:SSL,TLS:SSL"),
            "advertised.listeners": listeners,
            "sasl.enabled.mechanisms": ",".join(MECHANISMS),
            "ssl.keystore.type": "PEM",
            "ssl.keystore.location": str(self.certs.broker_keystore),
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.certs.ca),
            "listener.name.mtls.ssl.client.auth": "required",
            "connections.max.reauth.ms": str(reauth_ms),
        }
        if self.authorizer:
            # The operator's PLAINTEXT listener (and the KRaft controller on it) is ANONYMOUS.
            props["authorizer.class.name"] = "org.apache.kafka.metadata.authorizer.StandardAuthorizer"
            props["super.users"] = SUPER_USERS[0]
        users = "".join(f' user_{u}="{pw}"' for u, pw in plain_users.items())
        for listener in ("sasl_ssl", "sasl_plaintext"):
            props[f"listener.name.{listener}.plain.sasl.jaas.config"] = (
                f"org.apache.kafka.common.security.plain.PlainLoginModule required{users};")
            for m in ("scram-sha-256", "scram-sha-512"):
                props[f"listener.name.{listener}.{m}.sasl.jaas.config"] = (
                    "org.apache.kafka.common.security.scram.ScramLoginModule required;")
        return props

    def _chronik_toml(self, reauth_ms: int) -> str:
        c = self.certs
        tls = f'tls = {{ cert = "{c.dir / "broker.pem"}", key = "{c.dir / "broker.key"}" }}'
        mtls = (f'tls = {{ cert = "{c.dir / "broker.pem"}", key = "{c.dir / "broker.key"}", '
                f'client_ca = "{c.ca}", client_auth = "required" }}')
        out = ""
        for name, security, t in (("SASL_SSL", "sasl_ssl", tls), ("SASL_PLAINTEXT", "sasl_plaintext", ""),
                                  ("MTLS", "ssl", mtls), ("TLS", "ssl", tls)):
            out += (f'[[listeners.extra]]\nname = "{name}"\naddress = "{LOOPBACK}:{self.ports[name]}"\n'
                    f'security = "{security}"\n{t}\n\n')
        mechs = ", ".join(f'"{m}"' for m in MECHANISMS)
        out += f"[sasl]\nmechanisms = [{mechs}]\nconnections_max_reauth_ms = {reauth_ms}\n"
        if self.authorizer:
            users = ", ".join(f'"{u}"' for u in SUPER_USERS)
            out += f"\n[authorization]\nenabled = true\nsuper_users = [{users}]\n"
        return out


def start_secure(kind: str, base: Path, certs: Certs, binary: Path | None = None, **kw) -> SecureBroker:
    return SecureBroker(kind, base, certs, binary=binary, **kw).start()


def kafka_configs(bootstrap: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    cmd = ["java", "-Xmx256m", "-cp", f"{KAFKA_LIBS}/*", CONFIG_COMMAND, "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def kafka_acls(bootstrap: str, *args: str, timeout: float = 90) -> subprocess.CompletedProcess:
    """Kafka's kafka-acls.sh."""
    cmd = ["java", "-Xmx256m", "-cp", f"{KAFKA_LIBS}/*", ACL_COMMAND, "--bootstrap-server", bootstrap, *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)


def add_scram_user(bootstrap: str, user: str, password: str, mechanisms=("SCRAM-SHA-512", "SCRAM-SHA-256"),
                   iterations: int | None = None) -> None:
    # One mechanism per call: Kafka's controller refuses two changes to one user in a
    # request (DUPLICATE_RESOURCE), and so does Chronik.
    it = f"iterations={iterations}," if iterations else ""
    for m in mechanisms:
        p = kafka_configs(bootstrap, "--alter", "--add-config", f"{m}=[{it}password={password}]",
                          "--entity-type", "users", "--entity-name", user)
        assert p.returncode == 0, f"kafka-configs --add-config {m} for {user}: {p.stdout}\n{p.stderr}"


def client_conf(bootstrap: str, security: str, certs: Certs, mechanism: str | None = None,
                user: str | None = None, password: str | None = None, client_cert: str | None = None,
                ca: Path | None = None) -> dict:
    conf = {"bootstrap.servers": bootstrap, "security.protocol": security}
    if "SSL" in security:
        conf["ssl.ca.location"] = str(ca or certs.ca)
    if mechanism:
        conf.update({"sasl.mechanisms": mechanism, "sasl.username": user, "sasl.password": password})
    if client_cert:
        pem, key = certs.expired if client_cert == "expired" else certs.client(client_cert)
        conf.update({"ssl.certificate.location": str(pem), "ssl.key.location": str(key)})
    return conf


class Outcome(str):
    """"ok", or the failure class: "sasl: <broker's message>", "tls" or "timeout"."""


def _classify(errors: list[KafkaError]) -> str | None:
    for e in errors:
        if e.code() == KafkaError._AUTHENTICATION:
            text = e.str()
            # librdkafka prefixes the broker address and suffixes its own timing.
            msg = text.split("SASL authentication error: ", 1)[-1].split(" (after ", 1)[0]
            if "SSL handshake failed" in text or "certificate" in text.lower():
                return "tls"
            return f"sasl: {msg}"
        if e.code() in (KafkaError._SSL, KafkaError._TRANSPORT) and (
                "SSL" in e.str() or "certificate" in e.str() or "alert" in e.str()):
            return "tls"
    return None


def roundtrip(conf: dict, topic: str, n: int = 20, timeout: float = 30.0) -> str:
    """Produces n records and reads them back to the high watermark over `conf`.

    Returns "ok" when every record came back in order, else the failure class of the first
    error the client reported (authentication or TLS), or "timeout"."""
    errors: list[KafkaError] = []
    common = {**conf, "error_cb": errors.append, "log_level": 0, "socket.connection.setup.timeout.ms": 10000}
    p = Producer({**common, "linger.ms": 5, "message.timeout.ms": int(timeout * 1000)})
    acked: list = []
    values = [f"{topic}-{i}".encode() for i in range(n)]
    for v in values:
        p.produce(topic, v, on_delivery=lambda err, msg: acked.append((err, msg.offset())))
    deadline = time.monotonic() + timeout
    while len(acked) < n and time.monotonic() < deadline:
        p.poll(0.2)
        failed = _classify(errors)
        if failed:
            p.purge()
            p.flush(1)
            return failed
    p.flush(1)
    if len(acked) < n or any(err is not None for err, _ in acked):
        return _classify(errors) or f"produce failed: {[str(e) for e, _ in acked if e][:2]} {len(acked)}/{n}"
    c = Consumer({**common, "group.id": f"read-{topic}", "enable.auto.commit": False})
    try:
        _, high = c.get_watermark_offsets(TopicPartition(topic, 0), timeout=10)
        c.assign([TopicPartition(topic, 0, 0)])
        got: list[bytes] = []
        while len(got) < high and time.monotonic() < deadline:
            for m in c.consume(num_messages=100, timeout=0.5):
                if m.error() is None:
                    got.append(m.value())
    finally:
        c.close()
    if got != values:
        return f"read back {len(got)} of {n} records, {'in order' if got == values[:len(got)] else 'out of order'}"
    return "ok"


def first_failure(conf: dict, timeout: float = 20.0) -> str:
    """Connects a client and returns its first authentication/TLS failure, or "ok" if it can
    list the cluster's topics."""
    errors: list[KafkaError] = []
    from confluent_kafka.admin import AdminClient
    a = AdminClient({**conf, "error_cb": errors.append, "log_level": 0})
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            a.list_topics(timeout=2)
            return "ok"
        except Exception:  # noqa: BLE001 - the error_cb carries the reason
            a.poll(0.2)  # error_cb runs only from poll()
            failed = _classify(errors)
            if failed:
                return failed
    return _classify(errors) or "timeout"


# ---------------------------------------------------------------------------
# A raw SCRAM login (RFC 5802) over kwire, for what client libraries hide:
# the session lifetime SaslAuthenticate reports, and re-authentication (KIP-368)
# on one connection.
# ---------------------------------------------------------------------------

def _compact_bytes(b: bytes) -> bytes:
    import kwire
    return kwire.uvarint(len(b) + 1) + b


def _sasl_authenticate(conn, token: bytes) -> tuple[int, str | None, bytes, int]:
    """One SaslAuthenticate v2: (error_code, error_message, auth_bytes, session_lifetime_ms)."""
    import kwire
    got = conn.request(36, 2, _compact_bytes(token) + kwire.EMPTY_TAGS, flexible=True)
    assert got is not None, "the broker closed the connection during SaslAuthenticate"
    r = kwire.Reader(got[1])
    code = r.i16()
    msg = r.compact_string()
    n = r.uvarint() - 1
    auth = r.take(n) if n > 0 else b""
    return code, msg, auth, r.i64()


def scram_login(conn, user: str, password: str, mechanism: str = "SCRAM-SHA-512") -> tuple[int, str | None, int]:
    """SaslHandshake + a full SCRAM exchange on `conn`: (error_code, message, session_lifetime_ms)."""
    import base64
    import hashlib
    import hmac
    import os
    import kwire
    got = conn.request(17, 1, kwire.string(mechanism))
    assert got is not None, "the broker closed the connection during SaslHandshake"
    code = kwire.Reader(got[1]).i16()
    if code:
        return code, "handshake refused", 0
    h = hashlib.sha512 if mechanism.endswith("512") else hashlib.sha256
    nonce = base64.b64encode(os.urandom(18)).decode()
    bare = f"n={user},r={nonce}"
    code, msg, server_first, _ = _sasl_authenticate(conn, f"n,,{bare}".encode())
    if code:
        return code, msg, 0
    attrs = dict(kv.split("=", 1) for kv in server_first.decode().split(","))
    salted = hashlib.pbkdf2_hmac(h().name, password.encode(), base64.b64decode(attrs["s"]), int(attrs["i"]))
    client_key = hmac.new(salted, b"Client Key", h).digest()
    without_proof = f"c=biws,r={attrs['r']}"
    auth_message = f"{bare},{server_first.decode()},{without_proof}".encode()
    signature = hmac.new(h(client_key).digest(), auth_message, h).digest()
    proof = base64.b64encode(bytes(a ^ b for a, b in zip(client_key, signature))).decode()
    code, msg, _, lifetime = _sasl_authenticate(conn, f"{without_proof},p={proof}".encode())
    return code, msg, lifetime
