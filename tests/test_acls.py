"""ACLs, side by side with Apache Kafka's StandardAuthorizer.

Both brokers run the listeners of secure.py with an authorizer: the operator's PLAINTEXT
listener is User:ANONYMOUS, the only super user; alice and bob log in with SCRAM on
SASL_PLAINTEXT. ACLs are managed with Kafka's own kafka-acls tool. Every scenario asserts the
outcome Apache Kafka gives (the test runs once per broker kind), so passing on both means the
same error codes on both.
"""

from __future__ import annotations

import re
import time

import pytest
from confluent_kafka import Consumer, KafkaError, KafkaException, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from conftest import KINDS, _require_chronik_binary
from harness import free_port, wait_until
from kclient import unique_topic
from secure import Certs, add_scram_user, client_conf, kafka_acls, start_secure

PASSWORDS = {"alice": "alice-secret", "bob": "bob-secret"}


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    return Certs(_require_chronik_binary(), tmp_path_factory.mktemp("certs"))


@pytest.fixture(scope="module", params=KINDS)
def authorized(request, tmp_path_factory, certs):
    binary = _require_chronik_binary() if request.param == "chronik" else None
    b = start_secure(request.param, tmp_path_factory.mktemp(f"acl-{request.param}"), certs, binary=binary,
                     authorizer=True)
    for user, pw in PASSWORDS.items():
        add_scram_user(b.bootstrap(), user, pw, mechanisms=("SCRAM-SHA-512",))
    yield b
    b.proc.stop()


def as_user(b, certs, user: str) -> dict:
    return client_conf(b.bootstrap("SASL_PLAINTEXT"), "SASL_PLAINTEXT", certs, "SCRAM-SHA-512", user,
                       PASSWORDS[user])


def operator(b) -> dict:
    return {"bootstrap.servers": b.bootstrap()}


def acl(b, *args: str) -> str:
    p = kafka_acls(b.bootstrap(), *args)
    assert p.returncode == 0, f"kafka-acls {args}: {p.stdout}\n{p.stderr}"
    return p.stdout


def create_topic(conf: dict, topic: str, partitions: int = 1) -> str:
    """"ok", or the error name CreateTopics answered."""
    a = AdminClient({**conf, "log_level": 0})
    try:
        a.create_topics([NewTopic(topic, partitions, 1)], operation_timeout=20)[topic].result(30)
        return "ok"
    except KafkaException as e:
        return e.args[0].name()


def produce(conf: dict, topic: str, n: int = 5, timeout: float = 20.0) -> str:
    """"ok" once every record is acknowledged, else the first delivery error's name."""
    p = Producer({**conf, "log_level": 0, "message.timeout.ms": int(timeout * 1000), "linger.ms": 5})
    acked: list = []
    for i in range(n):
        p.produce(topic, f"{topic}-{i}".encode(), on_delivery=lambda err, _m: acked.append(err))
    p.flush(timeout + 10)
    errors = [e for e in acked if e is not None]
    if errors:
        return errors[0].name()
    return "ok" if len(acked) == n else f"{len(acked)} of {n} acknowledged"


def consume(conf: dict, topic: str, group: str, expect: list[bytes], timeout: float = 20.0) -> str:
    """Subscribes in `group` and reads `expect` back: "ok" when exactly those records came, else
    the first error's name."""
    c = Consumer({**conf, "log_level": 0, "group.id": group, "auto.offset.reset": "earliest",
                  "enable.auto.commit": False})
    got: list[bytes] = []
    try:
        c.subscribe([topic])
        deadline = time.monotonic() + timeout
        while len(got) < len(expect) and time.monotonic() < deadline:
            m = c.poll(0.5)
            if m is None:
                continue
            if m.error():
                if m.error().code() == KafkaError._PARTITION_EOF:
                    continue
                return m.error().name()
            got.append(m.value())
    finally:
        c.close()
    return "ok" if got == expect else f"read {len(got)} of {len(expect)}"


def values(topic: str, n: int = 5) -> list[bytes]:
    return [f"{topic}-{i}".encode() for i in range(n)]


def eventually(f, want: str, what: str, timeout: float = 30.0) -> None:
    """ACL changes take effect once committed; wait for the outcome, then it must hold."""
    wait_until(lambda: f() == want, timeout, interval=0.5, what=what)


def test_produce_needs_write_on_the_topic(authorized, certs):
    topic = unique_topic("acl-w")
    assert create_topic(operator(authorized), topic) == "ok"
    alice = as_user(authorized, certs, "alice")
    assert produce(alice, topic) == "TOPIC_AUTHORIZATION_FAILED"
    acl(authorized, "--add", "--allow-principal", "User:alice", "--operation", "Write", "--topic", topic)
    eventually(lambda: produce(alice, topic), "ok", "alice may write")
    # bob was given nothing.
    assert produce(as_user(authorized, certs, "bob"), topic) == "TOPIC_AUTHORIZATION_FAILED"


def test_consuming_needs_read_on_the_topic_and_the_group(authorized, certs):
    topic, group = unique_topic("acl-r"), unique_topic("acl-g")
    assert create_topic(operator(authorized), topic) == "ok"
    assert produce(operator(authorized), topic) == "ok"
    alice = as_user(authorized, certs, "alice")
    # No ACL at all: FindCoordinator is refused for the group first.
    assert consume(alice, topic, group, values(topic)) == "GROUP_AUTHORIZATION_FAILED"
    acl(authorized, "--add", "--allow-principal", "User:alice", "--operation", "Read", "--group", group)
    eventually(lambda: consume(alice, topic, group, values(topic)), "TOPIC_AUTHORIZATION_FAILED",
               "the group is allowed, the topic is not")
    acl(authorized, "--add", "--allow-principal", "User:alice", "--operation", "Read", "--topic", topic)
    eventually(lambda: consume(alice, topic, group, values(topic)), "ok", "alice reads every record")


def test_creating_a_topic_needs_create(authorized, certs):
    prefix = unique_topic("acl-c")
    alice = as_user(authorized, certs, "alice")
    assert create_topic(alice, f"{prefix}-a") == "TOPIC_AUTHORIZATION_FAILED"
    acl(authorized, "--add", "--allow-principal", "User:alice", "--operation", "Create", "--topic", prefix,
        "--resource-pattern-type", "prefixed")
    eventually(lambda: create_topic(alice, f"{prefix}-b"), "ok", "alice creates under her prefix")
    assert create_topic(alice, unique_topic("elsewhere")) == "TOPIC_AUTHORIZATION_FAILED"


def test_prefixed_allow_and_deny_over_allow(authorized, certs):
    prefix = unique_topic("acl-p")
    open_topic, secret = f"{prefix}-open", f"{prefix}-secret"
    for t in (open_topic, secret):
        assert create_topic(operator(authorized), t) == "ok"
    acl(authorized, "--add", "--allow-principal", "User:*", "--operation", "Write", "--topic", prefix,
        "--resource-pattern-type", "prefixed")
    acl(authorized, "--add", "--deny-principal", "User:alice", "--operation", "Write", "--topic", secret)
    alice, bob = as_user(authorized, certs, "alice"), as_user(authorized, certs, "bob")
    eventually(lambda: produce(alice, open_topic), "ok", "the prefixed allow covers alice")
    assert produce(bob, secret) == "ok"
    assert produce(alice, secret) == "TOPIC_AUTHORIZATION_FAILED"


def test_metadata_lists_only_topics_the_principal_may_describe(authorized, certs):
    prefix = unique_topic("acl-m")
    names = [f"{prefix}-{i}" for i in range(3)]
    for t in names:
        assert create_topic(operator(authorized), t) == "ok"
    acl(authorized, "--add", "--allow-principal", "User:bob", "--operation", "Describe", "--topic", names[0])
    acl(authorized, "--add", "--allow-principal", "User:bob", "--operation", "Read", "--topic", names[1])

    def listed() -> list[str]:
        md = AdminClient({**as_user(authorized, certs, "bob"), "log_level": 0}).list_topics(timeout=15)
        return sorted(t for t in md.topics if t.startswith(prefix))

    eventually(lambda: ",".join(listed()), ",".join(names[:2]), "bob sees the two topics he may describe")
    ops = sorted(t for t in AdminClient(operator(authorized)).list_topics(timeout=15).topics
                 if t.startswith(prefix))
    assert ops == names


LISTED = re.compile(r"\(principal=(\S+), host=(\S+), operation=(\w+), permissionType=(\w+)\)")


def test_kafka_acls_adds_lists_and_removes(authorized, certs):
    topic = unique_topic("acl-l")
    args = ("--allow-principal", "User:alice", "--operation", "Read", "--operation", "Describe",
            "--topic", topic)
    acl(authorized, "--add", *args)

    def listed() -> set:
        return set(LISTED.findall(acl(authorized, "--list", "--topic", topic)))

    want = {("User:alice", "*", "READ", "ALLOW"), ("User:alice", "*", "DESCRIBE", "ALLOW")}
    eventually(lambda: "match" if listed() == want else "differ", "match", "both bindings listed")
    # A principal filter lists across resources (DescribeAcls with a principal).
    assert want <= set(LISTED.findall(acl(authorized, "--list", "--principal", "User:alice")))
    acl(authorized, "--remove", "--force", *args)
    eventually(lambda: "gone" if not listed() else "left", "gone", "both bindings removed")


def test_acl_changes_need_alter_on_the_cluster(authorized, certs, tmp_path):
    """kafka-acls run by alice, with her SCRAM login, is refused: only a principal with ALTER on
    the cluster changes ACLs."""
    cfg = tmp_path / "alice-client.properties"
    cfg.write_text("security.protocol=SASL_PLAINTEXT\nsasl.mechanism=SCRAM-SHA-512\n"
                   "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                   f'username="alice" password="{PASSWORDS["alice"]}";\n')
    p = kafka_acls(authorized.bootstrap("SASL_PLAINTEXT"), "--command-config", str(cfg), "--add",
                   "--allow-principal", "User:alice", "--operation", "All", "--topic", "*")
    assert "ClusterAuthorizationException" in p.stdout + p.stderr, p.stdout + p.stderr


@pytest.mark.chronik
def test_acls_reach_every_region(tmp_path, certs):
    """An ACL made in us-east takes effect in eu-west once metadata-sync has carried it, and its
    removal in eu-west takes effect in us-east the same way."""
    from regions import Regions
    us, eu = "us-east", "eu-west"
    regs = Regions(tmp_path / "regions", brokers=1, binary=_require_chronik_binary())
    sasl = {}
    for r in regs.names:
        node = regs.cluster(r).nodes[1]
        sasl[r] = f"{node.host}:{free_port(node.host)}"
        node.extra_toml += (f'\n[[listeners.extra]]\nname = "SASL_PLAINTEXT"\naddress = "{sasl[r]}"\n'
                            f'security = "sasl_plaintext"\n\n[authorization]\nenabled = true\n'
                            f'super_users = ["User:ANONYMOUS"]\n')
    with regs:
        add_scram_user(regs.bootstrap(us), "alice", PASSWORDS["alice"], mechanisms=("SCRAM-SHA-512",))
        topic = unique_topic("acl-x")
        assert create_topic({"bootstrap.servers": regs.bootstrap(eu)}, topic) == "ok"

        def alice_in(region: str) -> dict:
            return client_conf(sasl[region], "SASL_PLAINTEXT", certs, "SCRAM-SHA-512", "alice",
                               PASSWORDS["alice"])

        wait_until(lambda: produce(alice_in(eu), topic, timeout=5) == "TOPIC_AUTHORIZATION_FAILED", 60,
                   what="alice's login has reached eu-west, without the ACL")
        p = kafka_acls(regs.bootstrap(us), "--add", "--allow-principal", "User:alice", "--operation", "Write",
                       "--topic", topic)
        assert p.returncode == 0, p.stderr
        t0 = time.monotonic()
        eventually(lambda: produce(alice_in(eu), topic, timeout=5), "ok", "the ACL works in eu-west", 60)
        reached = time.monotonic() - t0
        # In us-east the topic is a mirror: alice is authorized there, then forwarded, and the
        # home authorizes the produce again as the region it comes from.
        eventually(lambda: "listed" if "User:alice" in kafka_acls(regs.bootstrap(us), "--list", "--topic",
                                                                  topic).stdout else "not yet",
                   "listed", "alice's ACL reached us-east", 60)
        assert produce(alice_in(us), topic, timeout=10) == "TOPIC_AUTHORIZATION_FAILED"
        p = kafka_acls(regs.bootstrap(eu), "--add", "--allow-principal", "User:region:us-east", "--operation",
                       "Write", "--topic", topic)
        assert p.returncode == 0, p.stderr
        eventually(lambda: produce(alice_in(us), topic, timeout=5), "ok", "alice writes from us-east", 60)
        p = kafka_acls(regs.bootstrap(eu), "--remove", "--force", "--allow-principal", "User:alice",
                       "--operation", "Write", "--topic", topic)
        assert p.returncode == 0, p.stderr
        eventually(lambda: produce(alice_in(us), topic, timeout=5), "TOPIC_AUTHORIZATION_FAILED",
                   "the removal reached us-east", 60)
        print(f"an ACL made in us-east took effect in eu-west after {reached:.1f}s")
