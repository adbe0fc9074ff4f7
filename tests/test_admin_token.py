"""The internal write paths are closed: with `listeners.admin_token_file`, a broker's admin API
(mirror appends, mirror acks, truncation, metadata merges, home moves) and the dc-link's
(`/v1/promote`) refuse callers without the region's token, and nothing is written; the
dc-link, given the same token, still mirrors every record. `/metrics` and `/health/*` stay open.
"""

from __future__ import annotations

import subprocess
import urllib.error
import urllib.request

import pytest
from confluent_kafka import Producer

import kwire
from conftest import _require_chronik_binary
from cluster import create_topic
from harness import Chronik, wait_until
from kclient import unique_topic, values_to_high_watermark

pytestmark = pytest.mark.chronik

US, EU = "us-east", "eu-west"
TOKENS = {US: "us-east-token-7c1f9a0e55d2", EU: "eu-west-token-3b8e64d0a917"}


def call(url: str, method: str = "GET", body: bytes | None = None, token: str | None = None) -> int:
    """The HTTP status of one request, sent with exactly the token given (none by default)."""
    req = urllib.request.Request(url, data=body, method=method)
    if token:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code




@pytest.fixture(scope="module")
def regions(tmp_path_factory):
    from regions import Regions
    regs = Regions(tmp_path_factory.mktemp("admin-token"), brokers=1, binary=_require_chronik_binary())
    for r, t in TOKENS.items():
        regs.set_admin_token(r, t)
    with regs:
        yield regs


def test_the_dc_link_still_mirrors_with_the_token(regions):
    topic = unique_topic("tok")
    create_topic(regions.cluster(US), topic, replication_factor=1)
    p = Producer({"bootstrap.servers": regions.bootstrap(US)})
    want = [f"r{i}".encode() for i in range(50)]
    for v in want:
        p.produce(topic, v)
    assert p.flush(30) == 0
    wait_until(lambda: values_to_high_watermark(regions.bootstrap(EU), topic) == want, 60,
               what="eu-west mirrors every record")


def test_mirror_appends_without_the_region_token_are_refused_and_write_nothing(regions):
    topic = unique_topic("tok-forge")
    create_topic(regions.cluster(US), topic, replication_factor=1)
    p = Producer({"bootstrap.servers": regions.bootstrap(US)})
    for i in range(5):
        p.produce(topic, f"home-{i}".encode())
    assert p.flush(30) == 0
    home = [f"home-{i}".encode() for i in range(5)]
    wait_until(lambda: values_to_high_watermark(regions.bootstrap(EU), topic) == home, 60,
               what="the mirror caught up")
    eu = regions.cluster(EU)
    url = f"{eu.admin_url(eu.leader_of(topic, 0))}/v1/mirror/{topic}/0/5"
    batch = kwire.record_batch([(None, b"forged")], base_offset=5)
    # A leader epoch no home has reached yet (it is outside the batch's CRC), so the only
    # thing between this batch and the mirror is the token.
    forged = batch[:12] + kwire.i32(1 << 30) + batch[16:]
    for token in (None, TOKENS[US], "eu-west-token-guess0000000"):
        assert call(url, "POST", forged, token) == 401, token
    assert values_to_high_watermark(regions.bootstrap(EU), topic) == home
    # Control: the very same request with eu-west's token is a write.
    assert call(url, "POST", forged, TOKENS[EU]) == 200
    assert values_to_high_watermark(regions.bootstrap(EU), topic) == home + [b"forged"]


def test_acks_truncation_merges_and_promotion_need_the_token(regions):
    topic = unique_topic("tok-acks")
    us = regions.cluster(US)
    create_topic(us, topic, replication_factor=1)
    p = Producer({"bootstrap.servers": regions.bootstrap(US)})
    for i in range(3):
        p.produce(topic, f"v{i}".encode())
    assert p.flush(30) == 0
    base = us.admin_url(us.leader_of(topic, 0))
    refused = {
        "mirror ack": (f"{base}/v1/mirror-acks/{topic}/0", b'{"region":"eu-west","offset":3}'),
        "truncate": (f"{base}/v1/partitions/{topic}/0/truncate?end=0", b""),
        "meta merge": (f"{base}/v1/meta/merge", b"{}"),
        "home move": (f"{base}/v1/home/{topic}/move?to=eu-west", b""),
        "promote": (f"{regions.dclink_url(US)}/v1/promote?topic={topic}", b""),
    }
    for what, (url, body) in refused.items():
        assert call(url, "POST", body) == 401, what
        assert call(url, "POST", body, TOKENS[EU]) == 401, f"{what} with the other region's token"
    assert values_to_high_watermark(regions.bootstrap(US), topic) == [f"v{i}".encode() for i in range(3)]
    assert call(f"{base}/v1/cluster") == 401
    assert call(f"{base}/v1/cluster", token=TOKENS[US]) == 200
    for open_path in ("/metrics", "/health/ready", "/health/live"):
        assert call(base + open_path) == 200, open_path
        assert call(regions.dclink_url(US) + open_path) == 200, open_path


def test_a_short_or_missing_token_file_stops_the_broker(tmp_path):
    short = tmp_path / "short"
    short.write_text("tiny\n")
    for path, why in ((short, "at least 16 characters"), (tmp_path / "absent", "reading the admin token file")):
        b = Chronik(0, tmp_path / f"data-{path.name}", binary=_require_chronik_binary(),
                    admin_token_file=str(path))
        b.data_dir.mkdir(parents=True, exist_ok=True)
        b.config_path.write_text(b.toml())
        p = subprocess.run([str(b.binary), "broker", "--config", str(b.config_path)], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode != 0 and why in p.stderr, p.stderr
