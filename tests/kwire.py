"""Minimal hand-rolled Kafka wire protocol helpers for raw-socket tests.

Only what the raw-socket tests need: framing, request headers, ApiVersions,
Metadata, Produce (non-flexible versions), ListOffsets, Fetch (v4, and v16 with
topic ids), a RecordBatch v2 encoder with CRC-32C, and the consumer-group
coordinator APIs (FindCoordinator, JoinGroup, SyncGroup, Heartbeat, LeaveGroup,
OffsetCommit, OffsetFetch; for test_groups.py). Everything is big-endian, as on
the wire.
"""

from __future__ import annotations

import errno
import socket
import struct
import time

# ---------------------------------------------------------------------------
# CRC-32C (Castagnoli). Use the `crc32c` package if installed, else a table.
# ---------------------------------------------------------------------------
try:  # pragma: no cover - depends on environment
    import crc32c as _crc32c_mod

    def crc32c(data: bytes) -> int:
        return _crc32c_mod.crc32c(data) & 0xFFFFFFFF

except Exception:  # pragma: no cover
    _POLY = 0x82F63B78
    _TABLE = []
    for _i in range(256):
        _c = _i
        for _ in range(8):
            _c = (_c >> 1) ^ _POLY if _c & 1 else _c >> 1
        _TABLE.append(_c)

    def crc32c(data: bytes) -> int:
        crc = 0xFFFFFFFF
        for b in data:
            crc = _TABLE[(crc ^ b) & 0xFF] ^ (crc >> 8)
        return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283, "crc32c self-test failed"

# ---------------------------------------------------------------------------
# Primitive encoders / decoders
# ---------------------------------------------------------------------------


def i8(v: int) -> bytes:
    return struct.pack(">b", v)


def i16(v: int) -> bytes:
    return struct.pack(">h", v)


def i32(v: int) -> bytes:
    return struct.pack(">i", v)


def u32(v: int) -> bytes:
    return struct.pack(">I", v)


def i64(v: int) -> bytes:
    return struct.pack(">q", v)


def string(s: str | None) -> bytes:
    if s is None:
        return i16(-1)
    b = s.encode()
    return i16(len(b)) + b


def bytes_(b: bytes | None) -> bytes:
    if b is None:
        return i32(-1)
    return i32(len(b)) + b


def array(items: list[bytes]) -> bytes:
    return i32(len(items)) + b"".join(items)


def uvarint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def varint(v: int) -> bytes:
    return uvarint((v << 1) ^ (v >> 63))  # zigzag (64-bit)


def compact_string(s: str | None) -> bytes:
    if s is None:
        return uvarint(0)
    b = s.encode()
    return uvarint(len(b) + 1) + b


def compact_array(items: list[bytes]) -> bytes:
    return uvarint(len(items) + 1) + b"".join(items)


EMPTY_TAGS = b"\x00"


class Reader:
    """Sequential big-endian reader over a response body."""

    def __init__(self, data: bytes):
        self.data = data
        self.pos = 0

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise ValueError(f"short read: need {n} at {self.pos}, have {len(self.data)}")
        b = self.data[self.pos : self.pos + n]
        self.pos += n
        return b

    def i8(self) -> int:
        return struct.unpack(">b", self.take(1))[0]

    def i16(self) -> int:
        return struct.unpack(">h", self.take(2))[0]

    def i32(self) -> int:
        return struct.unpack(">i", self.take(4))[0]

    def i64(self) -> int:
        return struct.unpack(">q", self.take(8))[0]

    def string(self) -> str | None:
        n = self.i16()
        if n < 0:
            return None
        return self.take(n).decode()

    def uvarint(self) -> int:
        shift = 0
        out = 0
        while True:
            b = self.take(1)[0]
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7

    def compact_string(self) -> str | None:
        n = self.uvarint()
        if n == 0:
            return None
        return self.take(n - 1).decode()

    def skip_tags(self) -> None:
        for _ in range(self.uvarint()):
            self.uvarint()
            self.take(self.uvarint())

    def remaining(self) -> int:
        return len(self.data) - self.pos


# ---------------------------------------------------------------------------
# API keys used here
# ---------------------------------------------------------------------------
PRODUCE = 0
FETCH = 1
LIST_OFFSETS = 2
METADATA = 3
API_VERSIONS = 18
CREATE_TOPICS = 19
INIT_PRODUCER_ID = 22

# Error codes
NONE = 0
CORRUPT_MESSAGE = 2
UNKNOWN_TOPIC_OR_PARTITION = 3
INVALID_TOPIC_EXCEPTION = 17
UNSUPPORTED_VERSION = 35

# ---------------------------------------------------------------------------
# Connection
# ---------------------------------------------------------------------------


def parse_bootstrap(bootstrap: str) -> tuple[str, int]:
    host, port = bootstrap.split(",")[0].rsplit(":", 1)
    return host, int(port)


class Conn:
    """A blocking socket with Kafka framing and closed-connection detection."""

    def __init__(self, bootstrap: str, timeout: float = 10.0):
        host, port = parse_bootstrap(bootstrap)
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.timeout = timeout
        self._corr = 0

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def next_corr(self) -> int:
        self._corr += 1
        return self._corr

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send_frame(self, payload: bytes) -> None:
        self.sock.sendall(i32(len(payload)) + payload)

    def _recv_exact(self, n: int, deadline: float) -> bytes | None:
        buf = bytearray()
        while len(buf) < n:
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"timed out reading {n} bytes (got {len(buf)})")
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(n - len(buf))
            except ConnectionResetError:
                return None
            if not chunk:
                return None
            buf += chunk
        return bytes(buf)

    def recv_frame(self, timeout: float | None = None) -> bytes | None:
        """Return one response frame (without the length), or None if the peer closed."""
        deadline = time.monotonic() + (timeout if timeout is not None else self.timeout)
        head = self._recv_exact(4, deadline)
        if head is None:
            return None
        (n,) = struct.unpack(">i", head)
        if n < 0:
            raise ValueError(f"negative response length {n}")
        return self._recv_exact(n, deadline)

    def wait_closed(self, timeout: float = 10.0) -> bool:
        """True if the peer closes the connection (EOF/RST) within timeout and sends
        no bytes first. Raises AssertionError if it sends data, returns False on timeout."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(65536)
            except socket.timeout:
                return False
            except ConnectionResetError:
                return True
            except OSError as e:  # pragma: no cover
                if e.errno in (errno.ECONNRESET, errno.EPIPE):
                    return True
                raise
            if not chunk:
                return True
            raise AssertionError(f"expected the connection to be closed, got {len(chunk)} bytes: {chunk[:64]!r}")

    # -- request helpers ------------------------------------------------------

    def request(self, api_key: int, api_version: int, body: bytes, *, flexible: bool = False,
                client_id: str | None = "chronik-tests", timeout: float | None = None) -> tuple[int, bytes] | None:
        """Send a request, return (correlation_id, response body after the header) or None if closed.

        flexible=True uses request header v2 and strips response header v1 tagged fields
        (except for ApiVersions, whose response header is always v0)."""
        corr = self.next_corr()
        self.send_frame(request_header(api_key, api_version, corr, client_id, flexible) + body)
        resp = self.recv_frame(timeout)
        if resp is None:
            return None
        r = Reader(resp)
        got_corr = r.i32()
        if flexible and api_key != API_VERSIONS:
            r.skip_tags()
        return got_corr, resp[r.pos :]


def request_header(api_key: int, api_version: int, corr: int, client_id: str | None = "chronik-tests",
                   flexible: bool = False) -> bytes:
    h = i16(api_key) + i16(api_version) + i32(corr) + string(client_id)
    if flexible:
        h += EMPTY_TAGS
    return h


# ---------------------------------------------------------------------------
# ApiVersions
# ---------------------------------------------------------------------------


def parse_api_versions_v0(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    """ApiVersions response v0: error_code, [api_key min max]. Exactly consumed."""
    r = Reader(body)
    err = r.i16()
    n = r.i32()
    apis = {}
    for _ in range(max(n, 0)):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        apis[k] = (lo, hi)
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in ApiVersions v0 response")
    return err, apis


def parse_api_versions_v3(body: bytes) -> tuple[int, dict[int, tuple[int, int]]]:
    r = Reader(body)
    err = r.i16()
    n = r.uvarint() - 1
    apis = {}
    for _ in range(max(n, 0)):
        k, lo, hi = r.i16(), r.i16(), r.i16()
        r.skip_tags()
        apis[k] = (lo, hi)
    r.i32()  # throttle
    r.skip_tags()
    return err, apis


def api_versions_v3_body() -> bytes:
    return compact_string("chronik-tests") + compact_string("0.1") + EMPTY_TAGS


# ---------------------------------------------------------------------------
# Metadata v4 (non-flexible, has allow_auto_topic_creation)
# ---------------------------------------------------------------------------


def metadata_v4_body(topics: list[str] | None, allow_auto_create: bool = False) -> bytes:
    t = i32(-1) if topics is None else array([string(x) for x in topics])
    return t + i8(1 if allow_auto_create else 0)


def parse_metadata_v4(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    brokers = []
    for _ in range(r.i32()):
        node, host, port, rack = r.i32(), r.string(), r.i32(), r.string()
        brokers.append((node, host, port, rack))
    cluster_id = r.string()
    controller = r.i32()
    topics = {}
    for _ in range(r.i32()):
        err = r.i16()
        name = r.string()
        internal = r.i8()
        parts = {}
        for _ in range(r.i32()):
            perr, pidx, leader = r.i16(), r.i32(), r.i32()
            replicas = [r.i32() for _ in range(r.i32())]
            isr = [r.i32() for _ in range(r.i32())]
            parts[pidx] = {"error": perr, "leader": leader, "replicas": replicas, "isr": isr}
        topics[name] = {"error": err, "internal": internal, "partitions": parts}
    return {"brokers": brokers, "cluster_id": cluster_id, "controller": controller, "topics": topics}


# ---------------------------------------------------------------------------
# RecordBatch v2
# ---------------------------------------------------------------------------


def encode_record(offset_delta: int, ts_delta: int, key: bytes | None, value: bytes | None,
                  headers: list[tuple[str, bytes | None]] = ()) -> bytes:
    body = bytearray()
    body += i8(0)  # attributes
    body += varint(ts_delta)
    body += varint(offset_delta)
    if key is None:
        body += varint(-1)
    else:
        body += varint(len(key)) + key
    if value is None:
        body += varint(-1)
    else:
        body += varint(len(value)) + value
    body += varint(len(headers))
    for hk, hv in headers:
        kb = hk.encode()
        body += varint(len(kb)) + kb
        if hv is None:
            body += varint(-1)
        else:
            body += varint(len(hv)) + hv
    return varint(len(body)) + bytes(body)


def record_batch(records: list[tuple[bytes | None, bytes | None]], base_offset: int = 0,
                 base_timestamp: int | None = None, producer_id: int = -1, producer_epoch: int = -1,
                 base_sequence: int = -1, attributes: int = 0) -> bytes:
    """Encode an uncompressed RecordBatch (magic 2) with a correct CRC-32C."""
    if base_timestamp is None:
        base_timestamp = int(time.time() * 1000)
    recs = b"".join(encode_record(i, 0, k, v) for i, (k, v) in enumerate(records))
    # Fields covered by the CRC: attributes .. end.
    after_crc = (
        i16(attributes)
        + i32(len(records) - 1)  # last offset delta
        + i64(base_timestamp)  # base timestamp
        + i64(base_timestamp)  # max timestamp
        + i64(producer_id)
        + i16(producer_epoch)
        + i32(base_sequence)
        + i32(len(records))
        + recs
    )
    crc = crc32c(after_crc)
    partition_leader_epoch = i32(-1)
    magic = i8(2)
    rest = partition_leader_epoch + magic + u32(crc) + after_crc
    batch_length = len(rest)
    return i64(base_offset) + i32(batch_length) + rest


# Byte offsets inside a RecordBatch v2
BATCH_CRC_OFFSET = 8 + 4 + 4 + 1  # baseOffset, batchLength, partitionLeaderEpoch, magic
BATCH_RECORDS_OFFSET = 61  # first record starts here


# ---------------------------------------------------------------------------
# Produce v3..v8 (non-flexible): transactional_id, acks, timeout, [topic [partition records]]
# ---------------------------------------------------------------------------


def produce_body(topic: str, partition: int, records: bytes, acks: int = -1, timeout_ms: int = 10000) -> bytes:
    return (
        string(None)
        + i16(acks)
        + i32(timeout_ms)
        + array([string(topic) + array([i32(partition) + bytes_(records)])])
    )


def parse_produce_v8(body: bytes) -> dict:
    """Produce response v8: [topic [partition error base_offset log_append_time log_start_offset
    [record_errors] error_message]] throttle. Returns {(topic, partition): {...}}."""
    r = Reader(body)
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx, err, base, lat, lso = r.i32(), r.i16(), r.i64(), r.i64(), r.i64()
            rec_errs = []
            for _ in range(r.i32()):
                rec_errs.append((r.i32(), r.string()))
            msg = r.string()
            out[(name, idx)] = {"error": err, "base_offset": base, "log_append_time": lat,
                                "log_start_offset": lso, "record_errors": rec_errs, "error_message": msg}
    r.i32()  # throttle
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in Produce v8 response")
    return out


# ---------------------------------------------------------------------------
# ListOffsets v1: replica_id, [topic [partition timestamp]] -> offset
# ---------------------------------------------------------------------------


def list_offsets_v1_body(topic: str, partition: int, timestamp: int) -> bytes:
    return i32(-1) + array([string(topic) + array([i32(partition) + i64(timestamp)])])


def parse_list_offsets_v1(body: bytes) -> dict:
    r = Reader(body)
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx, err, ts, off = r.i32(), r.i16(), r.i64(), r.i64()
            out[(name, idx)] = {"error": err, "timestamp": ts, "offset": off}
    return out


# ---------------------------------------------------------------------------
# Fetch v4 (non-flexible): replica_id max_wait min_bytes max_bytes isolation
#   [topic [partition fetch_offset partition_max_bytes]]
# ---------------------------------------------------------------------------


def fetch_v4_body(topic: str, partition: int, offset: int, max_wait_ms: int, min_bytes: int = 1,
                  max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20) -> bytes:
    return (
        i32(-1) + i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0)
        + array([string(topic) + array([i32(partition) + i64(offset) + i32(partition_max_bytes)])])
    )


def parse_fetch_v4(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            idx, err, hw, lso = r.i32(), r.i16(), r.i64(), r.i64()
            n_aborted = r.i32()
            for _ in range(max(n_aborted, 0)):
                r.i64(), r.i64()
            n = r.i32()
            records = None if n < 0 else r.take(n)
            out[(name, idx)] = {"error": err, "high_watermark": hw, "last_stable_offset": lso, "records": records}
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in Fetch v4 response")
    return out


# ---------------------------------------------------------------------------
# Fetch v16 (flexible, topics by id): max_wait min_bytes max_bytes isolation
#   session_id session_epoch [topic_id [partition current_leader_epoch fetch_offset
#   last_fetched_epoch log_start_offset partition_max_bytes]] [forgotten] rack_id
# ---------------------------------------------------------------------------


def fetch_v16_body(partitions: list[tuple[bytes, int, int, int]], max_wait_ms: int, min_bytes: int = 1,
                   max_bytes: int = 1 << 20, partition_max_bytes: int = 1 << 20, session_id: int = 0,
                   session_epoch: int = -1, forgotten: list[tuple[bytes, int]] = ()) -> bytes:
    """partitions: (topic id (16 bytes), partition, fetch offset, current leader epoch or -1);
    session_id/session_epoch: KIP-227 (0/-1: no session); forgotten: (topic id, partition)."""
    by_topic: dict[bytes, list[bytes]] = {}
    for topic_id, partition, offset, epoch in partitions:
        assert len(topic_id) == 16, topic_id
        by_topic.setdefault(topic_id, []).append(
            i32(partition) + i32(epoch) + i64(offset) + i32(-1) + i64(-1) + i32(partition_max_bytes) + EMPTY_TAGS)
    topics = [tid + compact_array(parts) + EMPTY_TAGS for tid, parts in by_topic.items()]
    gone: dict[bytes, list[int]] = {}
    for topic_id, partition in forgotten:
        gone.setdefault(topic_id, []).append(partition)
    forgotten_topics = [tid + compact_array([i32(p) for p in parts]) + EMPTY_TAGS for tid, parts in gone.items()]
    return (
        i32(max_wait_ms) + i32(min_bytes) + i32(max_bytes) + i8(0) + i32(session_id) + i32(session_epoch)
        + compact_array(topics) + compact_array(forgotten_topics) + compact_string("") + EMPTY_TAGS
    )


def parse_fetch_v16(body: bytes) -> dict:
    """{"error", "session_id", "partitions": {(topic id, partition): {...}}}; a partition's
    "records" is None when the wire carries a null records field. Exactly consumed."""
    r = Reader(body)
    r.i32()  # throttle
    out = {"error": r.i16(), "session_id": r.i32(), "partitions": {}}
    for _ in range(r.uvarint() - 1):
        tid = r.take(16)
        for _ in range(r.uvarint() - 1):
            idx, err, hw, lso, start = r.i32(), r.i16(), r.i64(), r.i64(), r.i64()
            n_aborted = r.uvarint() - 1  # -1: null
            for _ in range(max(n_aborted, 0)):
                r.i64(), r.i64()
                r.skip_tags()
            preferred = r.i32()
            n = r.uvarint()
            records = None if n == 0 else r.take(n - 1)
            r.skip_tags()
            out["partitions"][(tid, idx)] = {"error": err, "high_watermark": hw, "last_stable_offset": lso,
                                             "log_start_offset": start, "preferred_read_replica": preferred,
                                             "records": records}
        r.skip_tags()
    r.skip_tags()
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in Fetch v16 response")
    return out


def parse_record_batches(data: bytes) -> list[dict]:
    """Split a records blob into batch headers (uncompressed records are decoded too)."""
    out = []
    pos = 0
    while pos + 12 <= len(data):
        base_offset, length = struct.unpack(">qi", data[pos : pos + 12])
        end = pos + 12 + length
        if end > len(data):
            break  # partial trailing batch is allowed by the protocol
        b = data[pos:end]
        r = Reader(b)
        r.i64(), r.i32()
        r.i32()  # partition leader epoch
        magic, crc = r.i8(), struct.unpack(">I", r.take(4))[0]
        attrs, last_delta = r.i16(), r.i32()
        base_ts, max_ts = r.i64(), r.i64()
        pid = r.i64()
        r.i16(), r.i32()  # producer epoch, base sequence
        count = r.i32()
        batch = {"base_offset": base_offset, "magic": magic, "crc_ok": crc == crc32c(b[21:]),
                 "attributes": attrs, "last_offset_delta": last_delta, "base_timestamp": base_ts,
                 "max_timestamp": max_ts, "producer_id": pid, "count": count, "records": []}
        if attrs & 0x7 == 0:
            rr = Reader(b[BATCH_RECORDS_OFFSET:])
            for _ in range(count):
                rr.uvarint()  # record length
                rr.i8()
                ts_delta = _zz(rr.uvarint())
                off_delta = _zz(rr.uvarint())
                kl = _zz(rr.uvarint())
                key = None if kl < 0 else rr.take(kl)
                vl = _zz(rr.uvarint())
                val = None if vl < 0 else rr.take(vl)
                for _ in range(_zz(rr.uvarint())):
                    rr.take(_zz(rr.uvarint()))
                    hl = _zz(rr.uvarint())
                    if hl > 0:
                        rr.take(hl)
                batch["records"].append((base_offset + off_delta, base_ts + ts_delta, key, val))
        out.append(batch)
        pos = end
    return out


def _zz(v: int) -> int:
    return (v >> 1) ^ -(v & 1)


# ---------------------------------------------------------------------------
# Consumer-group coordinator APIs (non-flexible versions), for test_groups.py
# ---------------------------------------------------------------------------
OFFSET_COMMIT = 8
OFFSET_FETCH = 9
FIND_COORDINATOR = 10
JOIN_GROUP = 11
HEARTBEAT = 12
LEAVE_GROUP = 13
SYNC_GROUP = 14


def find_coordinator_v1_body(key: str, key_type: int = 0) -> bytes:
    """FindCoordinator v1: key, key_type (0 = group, 1 = transaction)."""
    return string(key) + i8(key_type)


def parse_find_coordinator_v1(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    out = {"error": r.i16(), "error_message": r.string(), "node_id": r.i32(), "host": r.string(), "port": r.i32()}
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in FindCoordinator v1 response")
    return out


def consumer_subscription_v0(topics: list[str]) -> bytes:
    """ConsumerProtocolSubscription v0 (JoinGroup protocol metadata of protocol type "consumer")."""
    return i16(0) + array([string(t) for t in topics]) + bytes_(None)


def consumer_assignment_v0(assignment: dict[str, list[int]]) -> bytes:
    """ConsumerProtocolAssignment v0 (SyncGroup assignment of protocol type "consumer")."""
    return i16(0) + array([string(t) + array([i32(p) for p in ps]) for t, ps in assignment.items()]) + bytes_(None)


def join_group_v5_body(group: str, member_id: str, protocols: list[tuple[str, bytes]],
                       session_timeout_ms: int = 6000, rebalance_timeout_ms: int = 10000,
                       group_instance_id: str | None = None, protocol_type: str = "consumer") -> bytes:
    return (string(group) + i32(session_timeout_ms) + i32(rebalance_timeout_ms) + string(member_id)
            + string(group_instance_id) + string(protocol_type)
            + array([string(name) + bytes_(meta) for name, meta in protocols]))


def parse_join_group_v5(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    out = {"error": r.i16(), "generation_id": r.i32(), "protocol_name": r.string(), "leader": r.string(),
           "member_id": r.string(), "members": []}
    for _ in range(r.i32()):
        mid, inst = r.string(), r.string()
        n = r.i32()
        out["members"].append({"member_id": mid, "group_instance_id": inst,
                               "metadata": None if n < 0 else r.take(n)})
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in JoinGroup v5 response")
    return out


def sync_group_v3_body(group: str, generation_id: int, member_id: str, assignments: list[tuple[str, bytes]],
                       group_instance_id: str | None = None) -> bytes:
    return (string(group) + i32(generation_id) + string(member_id) + string(group_instance_id)
            + array([string(m) + bytes_(a) for m, a in assignments]))


def parse_sync_group_v3(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    err = r.i16()
    n = r.i32()
    out = {"error": err, "assignment": None if n < 0 else r.take(n)}
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in SyncGroup v3 response")
    return out


def heartbeat_v3_body(group: str, generation_id: int, member_id: str, group_instance_id: str | None = None) -> bytes:
    return string(group) + i32(generation_id) + string(member_id) + string(group_instance_id)


def parse_heartbeat_v3(body: bytes) -> int:
    """Heartbeat response v1..v3: throttle, error_code. Returns the error code."""
    r = Reader(body)
    r.i32()  # throttle
    err = r.i16()
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in Heartbeat v3 response")
    return err


def leave_group_v3_body(group: str, members: list[tuple[str, str | None]]) -> bytes:
    """LeaveGroup v3: group_id, [member_id group_instance_id]."""
    return string(group) + array([string(m) + string(inst) for m, inst in members])


def parse_leave_group_v3(body: bytes) -> dict:
    r = Reader(body)
    r.i32()  # throttle
    out = {"error": r.i16(), "members": []}
    for _ in range(r.i32()):
        out["members"].append({"member_id": r.string(), "group_instance_id": r.string(), "error": r.i16()})
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in LeaveGroup v3 response")
    return out


def offset_commit_v7_body(group: str, generation_id: int, member_id: str,
                          offsets: dict[tuple[str, int], tuple[int, str | None]],
                          group_instance_id: str | None = None) -> bytes:
    """OffsetCommit v7: offsets maps (topic, partition) -> (offset, metadata); leader epoch -1."""
    topics: dict[str, list[bytes]] = {}
    for (t, p), (off, meta) in offsets.items():
        topics.setdefault(t, []).append(i32(p) + i64(off) + i32(-1) + string(meta))
    return (string(group) + i32(generation_id) + string(member_id) + string(group_instance_id)
            + array([string(t) + array(ps) for t, ps in topics.items()]))


def parse_offset_commit_v7(body: bytes) -> dict:
    """Returns {(topic, partition): error_code}."""
    r = Reader(body)
    r.i32()  # throttle
    out = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p = r.i32()
            out[(name, p)] = r.i16()
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in OffsetCommit v7 response")
    return out


def offset_fetch_v3_body(group: str, partitions: dict[str, list[int]] | None) -> bytes:
    """OffsetFetch v3: group_id, topics (null = every committed offset of the group)."""
    if partitions is None:
        return string(group) + i32(-1)
    return string(group) + array([string(t) + array([i32(p) for p in ps]) for t, ps in partitions.items()])


def parse_offset_fetch_v3(body: bytes) -> dict:
    """{"error": top-level code, "partitions": {(topic, partition): {"offset", "metadata", "error"}}}."""
    r = Reader(body)
    r.i32()  # throttle
    parts = {}
    for _ in range(r.i32()):
        name = r.string()
        for _ in range(r.i32()):
            p, off, meta, err = r.i32(), r.i64(), r.string(), r.i16()
            parts[(name, p)] = {"offset": off, "metadata": meta, "error": err}
    out = {"partitions": parts, "error": r.i16()}
    if r.remaining() != 0:
        raise ValueError(f"{r.remaining()} trailing bytes in OffsetFetch v3 response")
    return out
