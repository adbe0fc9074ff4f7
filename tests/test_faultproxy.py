"""Unit tests of the fault-injecting proxy (tests/faultproxy.py) with plain sockets.

No broker involved; the whole module runs in a few seconds.
"""

from __future__ import annotations

import os
import socket
import threading
import time

import pytest

from faultproxy import Mesh, Proxy
from harness import free_port


class EchoServer:
    """Threaded TCP server: greets each connection with `greeting`, then echoes.

    Records the peer address of every accepted connection."""

    def __init__(self, host: str = "127.0.0.1", greeting: bytes = b""):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, 0))
        self.sock.listen(64)
        self.addr = self.sock.getsockname()
        self.greeting = greeting
        self.peers: list[tuple[str, int]] = []
        self._stop = False
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while not self._stop:
            try:
                c, peer = self.sock.accept()
            except OSError:
                return
            self.peers.append(peer)
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()

    def _serve(self, c: socket.socket):
        with c:
            try:
                if self.greeting:
                    c.sendall(self.greeting)
                while True:
                    d = c.recv(65536)
                    if not d:
                        c.shutdown(socket.SHUT_WR)
                        return
                    c.sendall(d)
            except OSError:
                return

    def close(self):
        self._stop = True
        self.sock.close()


@pytest.fixture
def echo():
    s = EchoServer()
    yield s
    s.close()


@pytest.fixture
def make_proxy():
    made = []

    def make(target, **kw):
        p = Proxy(("127.0.0.1", 0), target, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def connect(addr, timeout=2.0) -> socket.socket:
    s = socket.create_connection(addr, timeout=timeout)
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return s


def recv_exact(s: socket.socket, n: int, timeout: float = 5.0) -> bytes:
    buf = bytearray()
    deadline = time.monotonic() + timeout
    while len(buf) < n:
        s.settimeout(max(0.01, deadline - time.monotonic()))
        d = s.recv(n - len(buf))
        if not d:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += d
    return bytes(buf)


def closed_by_peer(s: socket.socket, timeout: float) -> bool:
    """True if the connection ends (EOF or RST) within timeout without delivering data."""
    s.settimeout(timeout)
    try:
        d = s.recv(4096)
    except ConnectionResetError:
        return True
    except socket.timeout:
        return False
    assert not d, f"got data {d!r} on a connection that should be dead"
    return True


def silent(s: socket.socket, timeout: float) -> bool:
    """True if nothing at all (no data, no EOF, no reset) arrives within timeout."""
    s.settimeout(timeout)
    try:
        s.recv(4096)
    except socket.timeout:
        return True
    except OSError:
        return False
    return False


def rtt(s: socket.socket, payload: bytes = b"ping") -> float:
    t0 = time.monotonic()
    s.sendall(payload)
    assert recv_exact(s, len(payload)) == payload
    return time.monotonic() - t0


def test_pass_through_both_directions_half_close_and_source_address(echo, make_proxy):
    p = make_proxy(echo.addr, source_host="127.0.0.7")
    assert p.listen[1] != 0 and p.listen != echo.addr
    data = os.urandom(2 * 1024 * 1024)
    with connect(p.listen) as s:
        sender = threading.Thread(target=lambda: (s.sendall(data), s.shutdown(socket.SHUT_WR)), daemon=True)
        sender.start()
        got = recv_exact(s, len(data), timeout=10)
        sender.join(5)
        assert got == data
        # Our half-close reached the server, whose close came back through the proxy.
        assert closed_by_peer(s, 2.0), "EOF was not propagated through the proxy"
    assert echo.peers and echo.peers[-1][0] == "127.0.0.7", echo.peers
    assert p.stats["bytes_up"] == p.stats["bytes_down"] == len(data)


def test_block_resets_existing_blackholes_new_and_unblock_heals(echo, make_proxy):
    p = make_proxy(echo.addr)
    old = connect(p.listen)
    assert rtt(old) < 1.0
    accepted_before = len(echo.peers)

    p.block()
    assert p.blocked
    assert closed_by_peer(old, 2.0), "an existing connection survived block()"
    old.close()

    # New connection: the handshake completes (the proxy accepts) but nothing gets through,
    # and no connection reaches the target.
    held = connect(p.listen)
    held.sendall(b"hello?")
    assert silent(held, 0.4), "a connection made while blocked got an answer or was closed"
    assert len(echo.peers) == accepted_before
    assert p.stats["dropped"] >= 1

    p.unblock()
    assert not p.blocked
    assert closed_by_peer(held, 2.0), "held connection was not reset on unblock()"
    held.close()
    with connect(p.listen) as s:
        assert rtt(s, b"after heal") < 1.0
    assert len(echo.peers) == accepted_before + 1


def test_block_in_reset_mode_refuses_new_connections(echo, make_proxy):
    p = make_proxy(echo.addr, block_mode="reset")
    p.block()
    try:
        s = connect(p.listen)
    except ConnectionError:
        return  # refused outright is fine too
    with s:
        try:
            s.sendall(b"x")
        except ConnectionError:
            return
        assert closed_by_peer(s, 1.0), "new connection was not reset while blocked"
    assert echo.peers == []


def test_delay_one_way_and_both_ways(echo, make_proxy):
    p = make_proxy(echo.addr)
    with connect(p.listen) as s:
        base = min(rtt(s) for _ in range(3))
        assert base < 0.1
        p.set_delay_ms(150, "up")
        assert p.delay_ms == {"up": 150, "down": 0}
        t = rtt(s)
        assert 0.15 <= t < 0.15 + 0.2, f"rtt {t:.3f}s with 150 ms one-way delay"
        p.set_delay_ms(100)  # both directions
        t = rtt(s)
        assert 0.2 <= t < 0.2 + 0.2, f"rtt {t:.3f}s with 100 ms each way"
        p.set_delay_ms(0)
        assert rtt(s) < 0.1


def test_delay_changes_never_reorder_bytes(echo, make_proxy):
    p = make_proxy(echo.addr)
    chunks = [f"<{i:05d}>".encode() for i in range(300)]
    with connect(p.listen) as s:
        got = bytearray()
        total = sum(map(len, chunks))

        def reader():
            nonlocal got
            got += recv_exact(s, total, timeout=10)

        rt = threading.Thread(target=reader, daemon=True)
        rt.start()
        for i, c in enumerate(chunks):
            if i == 50:
                p.set_delay_ms(120)  # chunks 50.. are held back ...
            if i == 100:
                p.set_delay_ms(0)  # ... and 100.. would be due earlier: they must still come after
            s.sendall(c)
            time.sleep(0.001)
        rt.join(10)
        assert bytes(got) == b"".join(chunks)


def test_mesh_partition_isolate_slow_heal():
    hosts = {1: "127.0.0.1", 2: "127.0.0.2", 3: "127.0.0.3"}
    servers = {i: EchoServer(h, greeting=str(i).encode()) for i, h in hosts.items()}
    mesh = Mesh({i: s.addr for i, s in servers.items()}, hosts, port_for=free_port)
    try:
        def reaches(i, j, timeout=0.25):
            """Does a connection node i opens to its peer j reach j's server?"""
            with connect(mesh.address(i, j)) as s:
                s.settimeout(timeout)
                try:
                    return s.recv(1) == str(j).encode()
                except (socket.timeout, ConnectionError):
                    return False

        pairs = [(i, j) for i in hosts for j in hosts if i != j]
        assert len(mesh.proxies) == 6
        for i, j in pairs:
            assert mesh.address(i, j)[0] == hosts[j]
            assert reaches(i, j, 2.0), (i, j)
            assert servers[j].peers[-1][0] == hosts[i], "target must see the connection from the source node's host"

        mesh.partition([1], [2, 3])
        assert mesh.blocked_links() == [(1, 2), (1, 3), (2, 1), (3, 1)]
        assert mesh.isolated() == [1]
        assert not reaches(1, 2) and not reaches(3, 1)
        assert reaches(2, 3) and reaches(3, 2)
        mesh.heal()
        assert mesh.blocked_links() == []
        assert all(reaches(i, j) for i, j in pairs)

        mesh.isolate(3)
        assert mesh.isolated() == [3]
        assert not reaches(2, 3) and not reaches(3, 1) and reaches(1, 2)
        mesh.heal()

        mesh.slow(1, 2, 150)
        # Data from 1 to 2 is late whichever node opened the connection; other links are not.
        with connect(mesh.address(1, 2)) as a, connect(mesh.address(2, 1)) as b, connect(mesh.address(1, 3)) as c:
            for s in (a, b, c):
                recv_exact(s, 1)
            ta, tb, tc = rtt(a), rtt(b), rtt(c)
        assert 0.15 <= ta < 0.35, ta  # request 1 -> 2 delayed
        assert 0.15 <= tb < 0.35, tb  # reply 1 -> 2 delayed
        assert tc < 0.1, tc
        mesh.heal()
        with connect(mesh.address(1, 2)) as a:
            recv_exact(a, 1)
            assert rtt(a) < 0.1
        assert mesh.bytes_between(1, 2) > 0
    finally:
        mesh.close()
        for s in servers.values():
            s.close()
