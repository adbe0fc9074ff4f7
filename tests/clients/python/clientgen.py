"""Deterministic record generator shared by the Python client checks.

MUST stay byte-for-byte identical to Gen.java (../java) and gen() in ../go/main.go:
`client_check.py --gen-digest --messages N --seed S` prints the same SHA-256 as
`client-check --gen-digest ...` (Go) and `java -jar client-check.jar --gen-digest ...`.

A record is (key, value, headers): key and value are bytes or None (null);
headers is a list of (key: str, value: bytes | None).
"""

from __future__ import annotations

import hashlib
import struct

M64 = 0xFFFFFFFFFFFFFFFF
GOLDEN = 0x9E3779B97F4A7C15
PER_INDEX = 0xD1B54A32D192ED03
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB

WORDS = [w.encode("utf-8") for w in (
    "kafka", "chronik", "broker", "partition", "offset", "record", "batch",
    "leader", "replica", "segment", "index", "topic", "consumer", "producer",
    "compression", "zstd", "lz4", "snappy", "gzip", "header", "timestamp",
    "the", "a", "of", "and", "to", "in", "is", "0", "42", "1337", "\u00e9t\u00e9")]
NWORDS = len(WORDS)
WORDS_SP = [w + b" " for w in WORDS]
WORD_LENS = [len(w) for w in WORDS]

HEADER_KEYS = ["trace-id", "content-type", "x-seq", "dup", "h", "", "k\u00f8y"]
NHKEYS = len(HEADER_KEYS)

KEY_ALPHABET = b"abcdefghijklmnopqrstuvwxyz0123456789"

_PACK_WORDS: dict[int, struct.Struct] = {}


class Rng:
    """SplitMix64, seeded per record index exactly like the Java/Go generators."""

    __slots__ = ("s",)

    def __init__(self, seed: int, i: int) -> None:
        self.s = (seed & M64) ^ (((i + 1) * PER_INDEX) & M64)

    def next(self) -> int:
        s = (self.s + GOLDEN) & M64
        self.s = s
        z = ((s ^ (s >> 30)) * MIX1) & M64
        z = ((z ^ (z >> 27)) * MIX2) & M64
        return z ^ (z >> 31)

    def n(self, bound: int) -> int:
        return self.next() % bound

    def fill_random(self, size: int) -> bytes:
        """`size` bytes: ceil(size/8) next() values, each written little-endian."""
        words = (size + 7) >> 3
        if words == 0:
            return b""
        s = self.s
        out = []
        append = out.append
        for _ in range(words):
            s = (s + GOLDEN) & M64
            z = ((s ^ (s >> 30)) * MIX1) & M64
            z = ((z ^ (z >> 27)) * MIX2) & M64
            append(z ^ (z >> 31))
        self.s = s
        st = _PACK_WORDS.get(words)
        if st is None:
            st = struct.Struct(f"<{words}Q")
            if len(_PACK_WORDS) < 4096:
                _PACK_WORDS[words] = st
        return st.pack(*out)[:size]


def _value(r: Rng, size: int) -> bytes:
    kind = r.n(3)
    if kind == 0:
        return r.fill_random(size)
    if kind == 1:
        # Words separated by single spaces, the last one cut at `size` (next() inlined).
        parts = []
        append = parts.append
        j = 0
        s = r.s
        while j < size:
            s = (s + GOLDEN) & M64
            z = ((s ^ (s >> 30)) * MIX1) & M64
            z = ((z ^ (z >> 27)) * MIX2) & M64
            w = (z ^ (z >> 31)) % NWORDS
            lw = WORD_LENS[w]
            if j + lw < size:
                append(WORDS_SP[w])
                j += lw + 1
            else:
                append(WORDS[w][: size - j])
                j = size
        r.s = s
        return b"".join(parts)
    b = r.n(256)
    pattern = bytes((b + j) & 0xFF for j in range(17))
    reps = size // 17 + 1
    return (pattern * reps)[:size]


def gen(seed: int, i: int):
    """(key, value, headers) of record i for `seed`."""
    r = Rng(seed, i)

    k = r.n(100)
    if k < 5:
        key = None
    elif k < 7:
        key = b""
    else:
        prefix = b"key-%d-" % i
        extra = r.n(24)
        nxt = r.next
        key = prefix + bytes(KEY_ALPHABET[nxt() % 36] for _ in range(extra))

    v = r.n(1000)
    if v < 10:
        value = None
    elif v < 40:
        value = b""
    elif v < 42:
        value = _value(r, 96 * 1024 + r.n(8 * 1024 + 1))
    elif v < 100:
        value = _value(r, 1024 + r.n(9 * 1024 + 1))
    else:
        value = _value(r, 10 + r.n(191))

    headers = []
    for _ in range(r.n(4)):
        hk = HEADER_KEYS[r.n(NHKEYS)]
        t = r.n(10)
        if t < 2:
            hv = None
        elif t < 3:
            hv = b""
        else:
            hv = r.fill_random(r.n(65))
        headers.append((hk, hv))
    return key, value, headers


_NULL = struct.pack(">i", -1)


def _digest_bytes(h, b) -> None:
    if b is None:
        h.update(_NULL)
    else:
        h.update(struct.pack(">I", len(b)))
        h.update(b)


def digest(seed: int, n: int) -> str:
    """SHA-256 over the generated content, as Gen.digest (Java) / genDigest (Go)."""
    h = hashlib.sha256()
    for i in range(n):
        key, value, headers = gen(seed, i)
        _digest_bytes(h, key)
        _digest_bytes(h, value)
        h.update(struct.pack(">I", len(headers)))
        for hk, hv in headers:
            _digest_bytes(h, hk.encode("utf-8"))
            _digest_bytes(h, hv)
    return h.hexdigest()


if __name__ == "__main__":
    import sys

    print(digest(int(sys.argv[2]) if len(sys.argv) > 2 else 1, int(sys.argv[1])))
