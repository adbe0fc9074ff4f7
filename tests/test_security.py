"""TLS, mutual TLS and SASL on the Kafka listeners, side by side with Apache Kafka.

Both brokers run the same four listeners (see secure.py): PLAINTEXT for the operator,
SASL_SSL, SASL_PLAINTEXT and MTLS (client certificates required), with the same dev
certificates, and SCRAM users made with Kafka's own kafka-configs tool. Every scenario asserts
what the client sees on Apache Kafka, then that Chronik gives the same outcome.

Chronik checks PLAIN passwords against the user's SCRAM credential; Kafka's PLAIN reads
static JAAS users, so the Kafka oracle is given alice with the same password.
"""

from __future__ import annotations

import re
import time

import pytest

import kwire
from conftest import KINDS, _require_chronik_binary
from harness import LOOPBACK, free_port, wait_until
from kclient import unique_topic
from secure import (Certs, add_scram_user, client_conf, first_failure, kafka_configs, roundtrip,
                    scram_login, start_secure)

ALICE_PW = "alice-secret"


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(_require_chronik_binary(), tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module", params=KINDS)
def secured(request, tmp_path_factory, certs):
    binary = _require_chronik_binary() if request.param == "chronik" else None
    b = start_secure(request.param, tmp_path_factory.mktemp(f"secure-{request.param}"), certs, binary=binary,
                     plain_users={"alice": ALICE_PW})
    add_scram_user(b.bootstrap(), "alice", ALICE_PW)
    yield b
    b.proc.stop()


@pytest.mark.parametrize("listener", ["SASL_SSL", "SASL_PLAINTEXT"])
@pytest.mark.parametrize("mechanism", ["SCRAM-SHA-512", "SCRAM-SHA-256", "PLAIN"])
def test_sasl_login_then_produce_and_fetch(secured, certs, listener, mechanism):
    topic = unique_topic("sasl")
    conf = client_conf(secured.bootstrap(listener), listener, certs, mechanism, "alice", ALICE_PW)
    assert roundtrip(conf, topic) == "ok"


# What librdkafka reports for each bad login, on Apache Kafka 4.1 (and so on Chronik).
BAD_LOGINS = {
    "wrong-password-scram": ("SCRAM-SHA-512", "alice", "not-her-password",
                             "sasl: Authentication failed during authentication due to invalid credentials "
                             "with SASL mechanism SCRAM-SHA-512"),
    "unknown-user-scram": ("SCRAM-SHA-256", "nobody", "whatever",
                           "sasl: Authentication failed during authentication due to invalid credentials "
                           "with SASL mechanism SCRAM-SHA-256"),
    "wrong-password-plain": ("PLAIN", "alice", "not-her-password",
                             "sasl: Authentication failed: Invalid username or password"),
    "unknown-user-plain": ("PLAIN", "nobody", "whatever", "sasl: Authentication failed: Invalid username or password"),
}


@pytest.mark.parametrize("case", sorted(BAD_LOGINS))
def test_bad_logins_fail_as_on_kafka(secured, certs, case):
    mechanism, user, password, expected = BAD_LOGINS[case]
    conf = client_conf(secured.bootstrap("SASL_SSL"), "SASL_SSL", certs, mechanism, user, password)
    assert first_failure(conf) == expected


def test_unsupported_mechanism_is_refused(secured, certs):
    """librdkafka asks for a mechanism the broker does not enable: the handshake lists the
    enabled ones and the client gives up."""
    conf = client_conf(secured.bootstrap("SASL_SSL"), "SASL_SSL", certs, "OAUTHBEARER", "alice", ALICE_PW)
    conf.pop("sasl.username"), conf.pop("sasl.password")
    conf["enable.sasl.oauthbearer.unsecure.jwt"] = True
    conf["sasl.oauthbearer.config"] = "principal=alice"
    got = first_failure(conf)
    assert got.startswith("sasl: "), got
    assert "OAUTHBEARER" in got and "SCRAM-SHA-512" in got, got


@pytest.mark.parametrize("who,expected", [
    ("alice", "ok"),
    (None, "tls"),  # no certificate
    ("mallory", "tls"),  # signed by a CA the broker does not trust
    ("expired", "tls"),
])
def test_mutual_tls(secured, certs, who, expected):
    conf = client_conf(secured.bootstrap("MTLS"), "SSL", certs, client_cert=who)
    got = roundtrip(conf, unique_topic("mtls")) if expected == "ok" else first_failure(conf)
    assert got == expected


def test_a_client_that_does_not_trust_the_broker_refuses_it(secured, certs):
    conf = client_conf(secured.bootstrap("SASL_SSL"), "SASL_SSL", certs, "SCRAM-SHA-512", "alice", ALICE_PW,
                       ca=certs.other / "ca.pem")
    assert first_failure(conf) == "tls"


def test_requests_before_authentication_close_the_connection(secured):
    """On a SASL listener only ApiVersions and the SASL exchange come before login; Kafka
    closes a connection that sends anything else, and so must Chronik. ApiVersions itself
    is answered."""
    bs = secured.bootstrap("SASL_PLAINTEXT")
    with kwire.Conn(bs) as c:
        corr = c.next_corr()
        c.send_frame(kwire.request_header(18, 3, corr, flexible=True) + kwire.api_versions_v3_body())
        assert c.recv_frame() is not None, "ApiVersions before login was not answered"
        c.send_frame(kwire.request_header(3, 4, c.next_corr()) + kwire.metadata_v4_body(None))
        assert c.wait_closed(10), "a Metadata request before login did not close the connection"
    # The same request on the plaintext listener is served: the listener, not the request, is refused.
    with kwire.Conn(secured.bootstrap()) as c:
        c.send_frame(kwire.request_header(3, 4, c.next_corr()) + kwire.metadata_v4_body(None))
        assert c.recv_frame() is not None


def test_scram_users_with_kafka_configs(secured, certs):
    """kafka-configs --entity-type users: add with iterations, describe, log in, delete."""
    bs = secured.bootstrap()
    user = unique_topic("bob")
    add_scram_user(bs, user, "bob-pw-1", mechanisms=("SCRAM-SHA-256",), iterations=8192)
    add_scram_user(bs, user, "bob-pw-1", mechanisms=("SCRAM-SHA-512",))
    p = kafka_configs(bs, "--describe", "--entity-type", "users", "--entity-name", user)
    assert p.returncode == 0, p.stderr
    assert re.search(r"SCRAM-SHA-256=iterations=8192", p.stdout), p.stdout
    assert re.search(r"SCRAM-SHA-512=iterations=4096", p.stdout), p.stdout
    login = client_conf(secured.bootstrap("SASL_SSL"), "SASL_SSL", certs, "SCRAM-SHA-256", user, "bob-pw-1")
    assert first_failure(login) == "ok"
    # A new password replaces the old one at once for new logins.
    add_scram_user(bs, user, "bob-pw-2", mechanisms=("SCRAM-SHA-256",))
    assert first_failure(login).startswith("sasl: ")
    assert first_failure({**login, "sasl.password": "bob-pw-2"}) == "ok"
    p = kafka_configs(bs, "--alter", "--delete-config", "SCRAM-SHA-256", "--entity-type", "users",
                      "--entity-name", user)
    assert p.returncode == 0, p.stderr
    assert first_failure({**login, "sasl.password": "bob-pw-2"}).startswith("sasl: ")
    p = kafka_configs(bs, "--describe", "--entity-type", "users", "--entity-name", user)
    assert "SCRAM-SHA-256" not in p.stdout and "SCRAM-SHA-512=iterations=4096" in p.stdout, p.stdout


@pytest.mark.parametrize("bad,error", [
    ("SCRAM-SHA-256=[iterations=1000,password=x]", "Iterations 1000 is less than the minimum 4096"),
    ("SCRAM-SHA-256=[iterations=20000,password=x]", "UnacceptableCredentialException: Too many iterations"),
])
def test_bad_scram_settings_are_refused_like_kafka(secured, bad, error):
    p = kafka_configs(secured.bootstrap(), "--alter", "--add-config", bad, "--entity-type", "users",
                      "--entity-name", "carol")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and error in out, out


def test_deleting_a_credential_that_does_not_exist_is_an_error(secured):
    p = kafka_configs(secured.bootstrap(), "--alter", "--delete-config", "SCRAM-SHA-512", "--entity-type",
                      "users", "--entity-name", "nobody-at-all")
    out = p.stdout + p.stderr
    assert p.returncode != 0 and "does not exist" in out, out


def test_reauthentication_kip368(tmp_path, certs):
    """connections.max.reauth.ms (KIP-368): SaslAuthenticate reports the session lifetime; a
    client that logs in again on the same connection keeps it, at most once a second (a
    sooner handshake is answered ILLEGAL_SASL_STATE and the connection stays); one that does
    not re-authenticate is cut off at its first request after the session expired. Same on
    Kafka and Chronik."""
    reauth_ms = 4000
    for kind in KINDS:
        binary = _require_chronik_binary() if kind == "chronik" else None
        b = start_secure(kind, tmp_path / kind, certs, binary=binary, plain_users={"alice": ALICE_PW},
                         reauth_ms=reauth_ms)
        try:
            add_scram_user(b.bootstrap(), "alice", ALICE_PW)
            metadata = kwire.metadata_v4_body(None)

            def served(c) -> bool:
                return c.request(3, 4, metadata) is not None

            with kwire.Conn(b.bootstrap("SASL_PLAINTEXT")) as c:
                code, msg, lifetime = scram_login(c, "alice", ALICE_PW)
                assert code == 0, (kind, msg)
                assert 0 < lifetime <= reauth_ms, (kind, lifetime)
                code, msg, lifetime = scram_login(c, "alice", ALICE_PW)
                assert code == 0 and lifetime > 0, (kind, "first re-authentication", msg)
                started = time.monotonic()
                assert served(c), kind
                code, _, _ = scram_login(c, "alice", ALICE_PW)
                assert code == 34, (kind, "a second re-authentication within a second", code)
                assert served(c), kind
                wait_until(lambda: time.monotonic() > started + 1.1, 5, what="a second to pass")
                code, msg, lifetime = scram_login(c, "alice", ALICE_PW)
                assert code == 0 and lifetime > 0, (kind, "re-authentication a second later", msg)
                assert served(c), kind
            with kwire.Conn(b.bootstrap("SASL_PLAINTEXT")) as c:
                code, msg, lifetime = scram_login(c, "alice", ALICE_PW)
                assert code == 0, (kind, msg)
                expired = time.monotonic() + lifetime / 1000
                wait_until(lambda: time.monotonic() > expired + 0.2, 10, what="the session to expire")
                c.send_frame(kwire.request_header(3, 4, c.next_corr()) + metadata)
                assert c.wait_closed(10), f"{kind}: a request after the session expired was served"
        finally:
            b.proc.stop()


def test_listeners_advertise_their_own_addresses(secured, certs):
    """A client is told the brokers' addresses on the listener it connected through."""
    from confluent_kafka.admin import AdminClient
    for listener, security, mech in (("SASL_SSL", "SASL_SSL", "SCRAM-SHA-512"), ("MTLS", "SSL", None),
                                     ("PLAINTEXT", "PLAINTEXT", None)):
        conf = client_conf(secured.bootstrap(listener), security, certs, mech, "alice" if mech else None,
                           ALICE_PW if mech else None, client_cert="alice" if listener == "MTLS" else None)
        md = AdminClient({**conf, "log_level": 0}).list_topics(timeout=15)
        ports = sorted(b.port for b in md.brokers.values())
        assert ports == [secured.ports[listener]], (listener, ports)


@pytest.mark.chronik
def test_scram_users_reach_every_region(tmp_path, certs):
    """A SCRAM user made in us-east logs in in eu-west once metadata-sync has carried it; a
    password change and a deletion made in eu-west reach us-east the same way."""
    from regions import Regions
    us, eu = "us-east", "eu-west"
    regs = Regions(tmp_path / "regions", brokers=1, binary=_require_chronik_binary())
    sasl = {}
    for r in regs.names:
        node = regs.cluster(r).nodes[1]
        port = free_port(node.host)
        sasl[r] = f"{node.host}:{port}"
        node.extra_toml += (f'\n[[listeners.extra]]\nname = "SASL_PLAINTEXT"\naddress = "{sasl[r]}"\n'
                            f'security = "sasl_plaintext"\n')
    with regs:
        def login(region: str, password: str) -> str:
            return first_failure(client_conf(sasl[region], "SASL_PLAINTEXT", certs, "SCRAM-SHA-512", "dora",
                                             password), timeout=5)

        assert login(eu, "pw-1").startswith("sasl: ")
        add_scram_user(regs.bootstrap(us), "dora", "pw-1", mechanisms=("SCRAM-SHA-512",))
        t0 = time.monotonic()
        wait_until(lambda: login(eu, "pw-1") == "ok", 60, what="dora logs in in eu-west")
        reached = time.monotonic() - t0
        add_scram_user(regs.bootstrap(eu), "dora", "pw-2", mechanisms=("SCRAM-SHA-512",))
        wait_until(lambda: login(us, "pw-2") == "ok", 60, what="dora's new password works in us-east")
        assert login(us, "pw-1").startswith("sasl: ")
        p = kafka_configs(regs.bootstrap(eu), "--alter", "--delete-config", "SCRAM-SHA-512", "--entity-type",
                          "users", "--entity-name", "dora")
        assert p.returncode == 0, p.stderr
        wait_until(lambda: login(us, "pw-2").startswith("sasl: "), 60, what="dora is refused in us-east")
        print(f"a new SCRAM user logged in in the other region after {reached:.1f}s")


def closes(c, timeout: float) -> bool:
    """True if the peer closes the connection within `timeout`; what it sends first (a TLS
    alert, an error response) is read and dropped."""
    import socket
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        c.sock.settimeout(left)
        try:
            if not c.sock.recv(65536):
                return True
        except socket.timeout:
            return False
        except (ConnectionResetError, BrokenPipeError):
            return True
    return False


@pytest.mark.parametrize("case", ["garbage-tls", "truncated-client-hello", "oversized-sasl-frame",
                                  "authenticate-before-handshake", "truncated-sasl-frame"])
def test_bad_handshake_input_closes_the_connection(secured, certs, case):
    """Bad bytes where a TLS or SASL handshake is expected close the connection, and the
    broker keeps serving everyone else (same on Kafka and Chronik)."""
    import os
    import socket
    import struct
    listener = "MTLS" if case in ("garbage-tls", "truncated-client-hello") else "SASL_PLAINTEXT"
    with kwire.Conn(secured.bootstrap(listener)) as c:
        if case == "garbage-tls":
            c.send_raw(os.urandom(4096))
        elif case == "truncated-client-hello":
            # A TLS record header promising a 16 KiB handshake message, then silence.
            c.send_raw(bytes([0x16, 0x03, 0x01, 0x40, 0x00, 0x01, 0x00, 0x3f, 0xfc]) + os.urandom(100))
            c.sock.shutdown(socket.SHUT_WR)
        elif case == "oversized-sasl-frame":
            # Before login a frame may be at most 512 KiB (Kafka's sasl.server.max.receive.size).
            c.send_raw(struct.pack(">i", 0x7fffffff) + b"\x00" * 64)
        elif case == "authenticate-before-handshake":
            c.send_frame(kwire.request_header(36, 0, c.next_corr()) + kwire.bytes_(b"\x00alice\x00pw"))
        elif case == "truncated-sasl-frame":
            c.send_raw(struct.pack(">i", 100) + kwire.request_header(17, 1, 1)[:6])
            c.sock.shutdown(socket.SHUT_WR)
        assert closes(c, 15), f"{case}: the connection stayed open"
    conf = client_conf(secured.bootstrap("SASL_SSL"), "SASL_SSL", certs, "SCRAM-SHA-512", "alice", ALICE_PW)
    assert first_failure(conf) == "ok"


@pytest.mark.parametrize("who", [None, "alice"])
def test_tls_without_client_authentication(secured, certs, who):
    """An SSL listener that asks for no certificate serves clients with or without one."""
    conf = client_conf(secured.bootstrap("TLS"), "SSL", certs, client_cert=who)
    assert roundtrip(conf, unique_topic("tls")) == "ok"


# ---------------------------------------------------------------------------
# Every client library logs in: the Java client (Kafka's ProducerPerformance),
# kafka-python, kafkajs and franz-go, besides librdkafka above. Each produces over SASL,
# and the records are read back to the high watermark over the PLAINTEXT listener.
# ---------------------------------------------------------------------------

CLIENT_LOGINS = [("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "SCRAM-SHA-256"), ("SASL_SSL", "PLAIN")]


def _java_produce(bootstrap: str, security: str, mechanism: str, password: str, topic: str, n: int,
                  ca) -> tuple[bool, str]:
    import subprocess
    from harness import KAFKA_LIBS, java_bin
    module = "plain.PlainLoginModule" if mechanism == "PLAIN" else "scram.ScramLoginModule"
    props = [f"bootstrap.servers={bootstrap}", f"security.protocol={security}", f"sasl.mechanism={mechanism}",
             f'sasl.jaas.config=org.apache.kafka.common.security.{module} required username="alice" '
             f'password="{password}";', "acks=all", "max.block.ms=20000", "request.timeout.ms=15000", "delivery.timeout.ms=30000"]
    if "SSL" in security:
        props += ["ssl.truststore.type=PEM", f"ssl.truststore.location={ca}"]
    # A file, not --producer-props: the JAAS value holds '=' signs.
    import tempfile
    with tempfile.NamedTemporaryFile("w", suffix=".properties", delete=False) as f:
        f.write("".join(f"{p}\n" for p in props))
    p = subprocess.run([java_bin(), "-Xmx256m", "-cp", f"{KAFKA_LIBS}/*", "org.apache.kafka.tools.ProducerPerformance",
                        "--topic", topic, "--num-records", str(n), "--record-size", "100", "--throughput", "-1",
                        "--producer.config", f.name], capture_output=True, text=True, timeout=120)
    return p.returncode == 0 and f"{n} records sent" in p.stdout, p.stdout[-1500:] + p.stderr[-1500:]


def _kafka_python_produce(bootstrap, security, mechanism, password, topic, n, ca) -> tuple[bool, str]:
    from kafka import KafkaProducer
    try:
        prod = KafkaProducer(bootstrap_servers=bootstrap, security_protocol=security, sasl_mechanism=mechanism,
                             sasl_plain_username="alice", sasl_plain_password=password,
                             ssl_cafile=str(ca) if "SSL" in security else None, acks="all",
                             request_timeout_ms=15000, max_block_ms=20000,
                             # A refused login is retried until this runs out, then reported
                             # ("Unable to bootstrap"); a good one takes well under a second.
                             bootstrap_timeout_ms=10000)
        futs = [prod.send(topic, f"{topic}-{i}".encode(), partition=0) for i in range(n)]
        offsets = [f.get(timeout=30).offset for f in futs]
        prod.close(5)
        return offsets == list(range(n)), f"offsets {offsets[:5]}..."
    except Exception as e:  # noqa: BLE001 - the failure is the outcome
        return False, f"{type(e).__name__}: {e}"


def _kafkajs_produce(bootstrap, security, mechanism, password, topic, n, ca) -> tuple[bool, str]:
    import json
    import subprocess
    from pathlib import Path
    script = Path(__file__).resolve().parent / "clients" / "js" / "sasl_produce.js"
    argv = ["node", str(script), "--bootstrap", bootstrap, "--topic", topic, "--messages", str(n),
            "--mechanism", mechanism.lower(), "--username", "alice", "--password", password]
    if "SSL" in security:
        argv += ["--ca", str(ca)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {"ok": False, "error": p.stderr}
    return p.returncode == 0 and out.get("ok"), str(out)


def _franz_go_produce(bootstrap, security, mechanism, password, topic, n, ca) -> tuple[bool, str]:
    import json
    import subprocess
    from pathlib import Path
    binary = Path(__file__).resolve().parent / "clients" / "go" / "sasl-produce"  # built by tests/setup.sh
    argv = [str(binary), "--bootstrap", bootstrap, "--topic", topic, "--messages", str(n), "--mechanism", mechanism,
            "--username", "alice", "--password", password]
    if "SSL" in security:
        argv += ["--ca", str(ca)]
    p = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    out = json.loads(p.stdout.strip().splitlines()[-1]) if p.stdout.strip() else {"ok": False, "error": p.stderr}
    return p.returncode == 0 and out.get("offsets") == list(range(n)), str(out)


CLIENTS = {"java": _java_produce, "kafka-python": _kafka_python_produce, "kafkajs": _kafkajs_produce,
           "franz-go": _franz_go_produce}


@pytest.mark.parametrize("listener,mechanism", CLIENT_LOGINS)
@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_client_libraries_log_in(secured, certs, client, listener, mechanism):
    from kclient import consume, watermarks
    topic = unique_topic(f"{client}-{mechanism}".lower())
    n = 50
    ok, detail = CLIENTS[client](secured.bootstrap(listener), listener, mechanism, ALICE_PW, topic, n, certs.ca)
    assert ok, detail
    assert watermarks(secured.bootstrap(), topic) == (0, n)
    got = [m.value() for m in consume(secured.bootstrap(), topic, count=n)]
    if client != "java":  # ProducerPerformance sends random payloads
        assert got == [f"{topic}-{i}".encode() for i in range(n)]
    # And with the wrong password the same client is refused.
    ok, detail = CLIENTS[client](secured.bootstrap(listener), listener, mechanism, "wrong", topic + "-x", 1,
                                 certs.ca)
    # kafka-python reports a failed login at bootstrap as "Unable to bootstrap" (on both brokers).
    refused = "Unable to bootstrap" if client == "kafka-python" else "uthentication"
    assert not ok and refused in detail, detail


def test_kcat_logs_in_with_sasl_handshake_v0(secured, certs):
    """Debian's kcat (librdkafka 2.0.2) logs in only if SaslHandshake v0 is listed, and then
    sends bare SASL tokens after the handshake instead of SaslAuthenticate requests. PLAIN
    only: that librdkafka's SCRAM client nonce is refused by Kafka 4 (fixed in 2.6.1)."""
    import shutil
    import subprocess
    if shutil.which("kcat") is None:
        pytest.fail("kcat not installed (tests/setup.sh installs it)")
    topic = unique_topic("kcat-v0")
    base = ["kcat", "-b", secured.bootstrap("SASL_SSL"), "-X", "security.protocol=SASL_SSL",
            "-X", "sasl.mechanisms=PLAIN", "-X", "sasl.username=alice", "-X", f"ssl.ca.location={certs.ca}",
            "-X", "topic.metadata.refresh.interval.ms=1000"]
    values = [f"{topic}-{i}" for i in range(20)]
    p = subprocess.run([*base, "-X", f"sasl.password={ALICE_PW}", "-P", "-t", topic, "-p", "0"],
                       input="\n".join(values) + "\n", capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr[-2000:]
    from kclient import consume
    assert [m.value().decode() for m in consume(secured.bootstrap(), topic, count=20)] == values
    p = subprocess.run([*base, "-X", "sasl.password=wrong", "-L"], capture_output=True, text=True, timeout=60)
    assert p.returncode != 0 and "uthentication" in p.stderr, p.stderr[-2000:]
