"""A broker whose data directory was wiped, restarted with the same id, is refused: it must
never vote with an empty log. Three brokers, one topic written with acks=all; broker 3 is
killed, its data directory deleted, and started again on the same config: it exits with a
message naming the broker ids that know it and what to do, the region keeps serving with the
other two, and every acknowledged record is still there. A brand-new region (every data
directory empty) still starts, as every test of a cluster shows; this one checks that too.
"""

from __future__ import annotations

import shutil
import subprocess

import pytest
from confluent_kafka import Producer

from cluster import ChronikCluster, create_topic
from conftest import _require_chronik_binary
from kclient import unique_topic, values_to_high_watermark

pytestmark = pytest.mark.chronik




def test_a_broker_back_with_an_empty_data_dir_is_refused(tmp_path):
    c = ChronikCluster(3, tmp_path / "region", binary=_require_chronik_binary())
    c.start()  # three empty data directories: a new region forms
    try:
        topic = unique_topic("wiped")
        create_topic(c, topic, partitions=1, replication_factor=3)
        p = Producer({"bootstrap.servers": c.bootstrap, "acks": "all"})
        want = [f"{topic}-{i}".encode() for i in range(100)]
        for v in want:
            p.produce(topic, v)
        assert p.flush(30) == 0

        victim = c.nodes[3]
        victim.kill9()
        shutil.rmtree(victim.data_dir)
        victim.data_dir.mkdir(parents=True)
        out = subprocess.run([str(victim.binary), "broker", "--config", str(victim.config_path)],
                             capture_output=True, text=True, timeout=60)
        assert out.returncode != 0, out.stderr
        assert "know broker 3 as a member" in out.stderr and "Restore the data directory" in out.stderr, \
            out.stderr
        assert "[1, 2]" in out.stderr, out.stderr

        survivors = c.bootstrap_of([1, 2])
        assert values_to_high_watermark(survivors, topic) == want
        p = Producer({"bootstrap.servers": survivors, "acks": "all"})
        p.produce(topic, b"after")
        assert p.flush(30) == 0
        assert values_to_high_watermark(survivors, topic) == want + [b"after"]
    finally:
        c.stop()
