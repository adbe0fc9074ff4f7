"""Unit tests of the acked-write verification (tests/ackcheck.py): it must catch every
kind of violation the cluster tests rely on it for. No broker involved."""

from __future__ import annotations

import time

import pytest

import kwire
from ackcheck import (AckLog, consumer_mismatches, make_value, parse_value, partition_problems, records_from_dump,
                      verify_partition)


def _log(n: int, tag: str = "t", part: int = 0) -> dict[int, bytes]:
    return {o: make_value(tag, part, o) for o in range(n)}


def test_values_round_trip():
    v = make_value("abc", 2, 17)
    assert len(v) == 64 and parse_value(v) == ("abc", 2, 17)
    assert parse_value(b"foreign") is None and parse_value(None) is None


def test_clean_log_has_no_problems():
    log = _log(10)
    acked = {o: v for o, v in log.items() if o % 2 == 0}
    assert partition_problems(0, log, acked, 0, 10) == []
    assert verify_partition(0, log, acked, 0, 10) == {"partition": 0, "records": 10, "acked": 5}


@pytest.mark.parametrize("mutate,expect", [
    (lambda log, acked: log.pop(3), "lost or changed"),
    (lambda log, acked: log.__setitem__(3, make_value("t", 0, 99)), "lost or changed"),
    (lambda log, acked: log.__setitem__(10, log[9]), "more than once"),
    (lambda log, acked: (log.pop(9), log.__setitem__(11, make_value("t", 0, 11))), "not contiguous"),
    (lambda log, acked: log.__setitem__(4, b"someone else"), "never produced"),
    # Acked at offsets 5 and 6 but with seq 6 before seq 5: order broken.
    (lambda log, acked: (log.__setitem__(5, make_value("t", 0, 6)), log.__setitem__(6, make_value("t", 0, 5)),
                         acked.__setitem__(5, log[5]), acked.__setitem__(6, log[6])), "out of order"),
])
def test_each_violation_is_reported(mutate, expect):
    log = _log(10)
    acked = {o: v for o, v in log.items() if o not in (5, 6)}
    mutate(log, acked)
    hw = max(log) + 1
    problems = partition_problems(0, log, acked, 0, hw)
    assert any(expect in p for p in problems), problems
    with pytest.raises(AssertionError, match=expect):
        verify_partition(0, log, acked, 0, hw)


def test_high_watermark_beyond_log_is_a_gap():
    assert any("not contiguous" in p for p in partition_problems(0, _log(5), {}, 0, 7))


def test_foreign_records_can_be_allowed():
    log = _log(3)
    log[3] = b"other writer"
    assert partition_problems(0, log, {}, 0, 4, foreign_ok=True) == []


def test_records_from_dump_reads_and_validates_batches():
    b0 = kwire.record_batch([(None, b"a"), (b"k", b"b")], base_offset=0)
    b1 = kwire.record_batch([(None, b"c")], base_offset=2)
    assert records_from_dump(b0 + b1) == {0: b"a", 1: b"b", 2: b"c"}
    assert records_from_dump(b"") == {}
    corrupt = bytearray(b0 + b1)
    corrupt[-1] ^= 0xFF
    with pytest.raises(AssertionError, match="CRC"):
        records_from_dump(bytes(corrupt))
    with pytest.raises(AssertionError, match="trailing"):
        records_from_dump(b0 + b1[:-3])
    with pytest.raises(AssertionError, match="twice"):
        records_from_dump(b0 + b0)
    gz = kwire.record_batch([(None, b"x")], attributes=1)
    with pytest.raises(AssertionError, match="compressed"):
        records_from_dump(gz)


def test_consumer_mismatches():
    log = _log(4)
    assert consumer_mismatches({(0, 1): log[1]}, {0: log}) == []
    assert len(consumer_mismatches({(0, 1): b"x", (0, 7): log[0], (1, 0): log[0]}, {0: log})) == 3


class _Msg:
    def __init__(self, p, o, v):
        self._p, self._o, self._v = p, o, v

    def partition(self):
        return self._p

    def offset(self):
        return self._o

    def value(self):
        return self._v


def test_acklog_times_and_conflicts():
    a = AckLog()
    v1, v2 = make_value("t", 0, 0), make_value("t", 0, 1)
    a.on_sent(v1)
    a.on_delivery(None, _Msg(0, 0, v1))
    t = time.monotonic()
    assert a.first_ack_of_message_sent_after(t) is None
    a.on_sent(v2)
    a.on_delivery(None, _Msg(0, 1, v2))
    assert a.first_ack_of_message_sent_after(t) >= t
    assert a.for_partition(0) == {0: v1, 1: v2} and a.count() == 2
    a.on_delivery(None, _Msg(0, 1, v1))
    assert a.conflicts
    with pytest.raises(AssertionError, match="two acks"):
        verify_partition(0, {0: v1, 1: v1}, a, 0, 2, foreign_ok=True)


def test_ack_without_offset_must_be_stored():
    a = AckLog()
    v = make_value("t", 0, 0)
    a.on_delivery(None, _Msg(0, None, v))
    assert a.count() == 1 and a.for_partition(0) == {}
    verify_partition(0, {0: v}, a, 0, 1)
    with pytest.raises(AssertionError, match="without an offset"):
        verify_partition(0, {0: make_value("t", 0, 1)}, a, 0, 1)
