"""Fault-injecting TCP proxy for the cluster tests (the test kernel has no netem).

    p = Proxy(listen=("127.0.0.2", 0), target=("127.0.0.2", 19093), source_host="127.0.0.1")
    p.listen            # the address actually bound: connect here instead of `target`
    p.block()           # network partition: existing connections are reset, new ones black-holed
    p.unblock()         # heal
    p.set_delay_ms(50)  # every chunk is held 50 ms in each direction (order preserved)
    p.close()

    mesh = Mesh(targets={1: ("127.0.0.1", r1), 2: ("127.0.0.2", r2), 3: ("127.0.0.3", r3)},
                hosts={1: "127.0.0.1", 2: "127.0.0.2", 3: "127.0.0.3"})
    mesh.address(1, 2)  # what node 1's config lists as peer 2
    mesh.partition([1], [2, 3]); mesh.isolate(3); mesh.slow(1, 2, 100); mesh.heal()

Everything runs on one asyncio event loop in a daemon thread; the public methods
are thread-safe and block (boundedly) until the change is in effect, so a test can
rely on "after block() returns, no byte crosses this proxy".

Semantics, precisely:
  * A Proxy forwards each accepted connection to `target`, bytes in both directions,
    with half-close propagated. Its outgoing socket is bound to `source_host` (if
    given), so the target sees the connection coming from the proxied node's address.
  * block(): from now on nothing crosses. Every forwarded connection is aborted with
    RST on both sides, and a chunk that was already read but not yet written is
    dropped. New connections are, with mode "drop" (default), accepted and held open
    while everything they send is discarded -- like a partition, where packets vanish
    and the peer must notice by timing out; with mode "reset" they are reset right away
    (fast failure, like a crashed host). Held connections are reset by unblock().
  * Delays are per direction: "up" is client -> target, "down" is target -> client. A
    chunk read at time t is written no earlier than t + delay; chunks are never
    reordered (a chunk waits for the one before it), and throughput is not limited
    by the delay (chunks are pipelined).

Standard library only. All proxies are closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import socket
import struct
import threading
from typing import Iterable

__all__ = ["Proxy", "Mesh"]

_OP_TIMEOUT = 10.0  # bound on every cross-thread operation
_CHUNK = 65536
_QUEUE_CHUNKS = 256  # per-direction buffering before the reader is back-pressured

# ---------------------------------------------------------------------------
# The shared event loop
# ---------------------------------------------------------------------------

_loop_lock = threading.Lock()
_loop: asyncio.AbstractEventLoop | None = None
_proxies: "set[Proxy]" = set()


def _get_loop() -> asyncio.AbstractEventLoop:
    global _loop
    with _loop_lock:
        if _loop is None or _loop.is_closed():
            loop = asyncio.new_event_loop()
            ready = threading.Event()

            def quiet(lp, ctx):
                # Aborted connections leave OSErrors in finished tasks; that is expected here.
                if not isinstance(ctx.get("exception"), (OSError, asyncio.CancelledError)):
                    lp.default_exception_handler(ctx)

            def run():
                asyncio.set_event_loop(loop)
                loop.set_exception_handler(quiet)
                loop.call_soon(ready.set)
                loop.run_forever()

            threading.Thread(target=run, name="faultproxy-loop", daemon=True).start()
            if not ready.wait(_OP_TIMEOUT):
                raise RuntimeError("faultproxy event loop did not start")
            _loop = loop
        return _loop


def _run(coro, timeout: float = _OP_TIMEOUT):
    """Run a coroutine on the proxy loop and wait (bounded) for its result."""
    return asyncio.run_coroutine_threadsafe(coro, _get_loop()).result(timeout)


def _call(fn, *args, timeout: float = _OP_TIMEOUT):
    """Run a plain function on the proxy loop thread and wait (bounded) for its result."""
    loop = _get_loop()
    fut: concurrent.futures.Future = concurrent.futures.Future()

    def cb():
        try:
            fut.set_result(fn(*args))
        except BaseException as e:  # noqa: BLE001 - handed to the caller
            fut.set_exception(e)

    loop.call_soon_threadsafe(cb)
    return fut.result(timeout)


def _close_all_at_exit() -> None:
    for p in list(_proxies):
        try:
            p.close()
        except Exception:  # noqa: BLE001
            pass


atexit.register(_close_all_at_exit)


def _reset(writer: asyncio.StreamWriter | None) -> None:
    """Close a connection with RST (SO_LINGER 0), not FIN. Loop thread only."""
    if writer is None:
        return
    sock = writer.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    writer.transport.abort()


# ---------------------------------------------------------------------------
# Proxy
# ---------------------------------------------------------------------------


class _Pipe:
    """One forwarded connection: client <-> upstream."""

    def __init__(self, proxy: "Proxy", cr, cw, ur, uw):
        self.proxy = proxy
        self.cr, self.cw, self.ur, self.uw = cr, cw, ur, uw
        self.tasks: list[asyncio.Task] = []

    async def run(self) -> None:
        self.tasks = [asyncio.ensure_future(self._direction(self.cr, self.uw, "up")),
                      asyncio.ensure_future(self._direction(self.ur, self.cw, "down"))]
        try:
            done, _ = await asyncio.wait(self.tasks, return_when=asyncio.FIRST_EXCEPTION)
            failed = any(t.cancelled() or t.exception() is not None for t in done) or len(done) < 2
        except asyncio.CancelledError:
            failed = True
        if failed:
            self.abort()
        else:
            for w in (self.cw, self.uw):
                try:
                    w.close()
                except OSError:
                    pass

    def abort(self) -> None:
        for t in self.tasks:
            t.cancel()
        _reset(self.cw)
        _reset(self.uw)

    async def _direction(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, direction: str) -> None:
        loop = asyncio.get_running_loop()
        q: asyncio.Queue = asyncio.Queue(maxsize=_QUEUE_CHUNKS)
        proxy = self.proxy

        async def sender():
            while True:
                due, data = await q.get()
                wait = due - loop.time()
                if wait > 0:
                    await asyncio.sleep(wait)
                if proxy._blocked:
                    raise ConnectionAbortedError("blocked")
                if data is None:
                    if dst.can_write_eof():
                        dst.write_eof()
                    return
                dst.write(data)
                await dst.drain()
                proxy.stats["bytes_" + direction] += len(data)

        st = asyncio.ensure_future(sender())

        async def alongside_sender(aw):
            """Await aw, unless the sender dies first (then raise)."""
            fut = asyncio.ensure_future(aw)
            done, _ = await asyncio.wait({fut, st}, return_when=asyncio.FIRST_COMPLETED)
            if fut not in done:
                fut.cancel()
                if st.cancelled():
                    raise asyncio.CancelledError()
                exc = st.exception()
                raise exc if exc is not None else ConnectionAbortedError("sender finished early")
            return fut.result()

        try:
            while True:
                data = await alongside_sender(src.read(_CHUNK))
                if proxy._blocked:
                    raise ConnectionAbortedError("blocked")
                await alongside_sender(q.put((loop.time() + proxy._delay[direction], data or None)))
                if not data:
                    break
            await st
        finally:
            if not st.done():
                st.cancel()


class Proxy:
    """A TCP proxy listen -> target that can partition (block) and delay traffic."""

    def __init__(self, listen: tuple[str, int], target: tuple[str, int], source_host: str | None = None,
                 name: str | None = None, block_mode: str = "drop") -> None:
        if block_mode not in ("drop", "reset"):
            raise ValueError(f"block_mode must be 'drop' or 'reset', not {block_mode!r}")
        self.target = (target[0], int(target[1]))
        self.source_host = source_host
        self.block_mode = block_mode
        self._blocked = False
        self._delay = {"up": 0.0, "down": 0.0}  # seconds
        self._pipes: set[_Pipe] = set()
        self._held: set[asyncio.StreamWriter] = set()
        self._closed = False
        self.stats = {"accepted": 0, "forwarded": 0, "dropped": 0, "reset": 0, "upstream_failed": 0,
                      "bytes_up": 0, "bytes_down": 0}
        self._server = _run(self._start(listen))
        self.listen: tuple[str, int] = self._server.sockets[0].getsockname()[:2]
        self.name = name or f"{self.listen[0]}:{self.listen[1]}->{self.target[0]}:{self.target[1]}"
        _proxies.add(self)

    def __repr__(self) -> str:
        state = "blocked" if self._blocked else "open"
        return f"<Proxy {self.name} {state} delay={self.delay_ms}>"

    async def _start(self, listen):
        return await asyncio.start_server(self._on_client, listen[0], int(listen[1]), reuse_address=True,
                                          backlog=128)

    # -- connection handling (loop thread) ------------------------------------

    async def _on_client(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.stats["accepted"] += 1
        if self._blocked or self._closed:
            await self._blackhole(reader, writer)
            return
        local = (self.source_host, 0) if self.source_host else None
        try:
            ur, uw = await asyncio.wait_for(asyncio.open_connection(*self.target, local_addr=local), timeout=5.0)
        except (OSError, asyncio.TimeoutError):
            self.stats["upstream_failed"] += 1
            _reset(writer)
            return
        if self._blocked or self._closed:  # blocked while connecting
            _reset(uw)
            await self._blackhole(reader, writer)
            return
        for w in (writer, uw):
            s = w.get_extra_info("socket")
            if s is not None:
                s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.stats["forwarded"] += 1
        pipe = _Pipe(self, reader, writer, ur, uw)
        self._pipes.add(pipe)
        try:
            await pipe.run()
        finally:
            self._pipes.discard(pipe)

    async def _blackhole(self, reader, writer) -> None:
        if self.block_mode == "reset" or self._closed:
            self.stats["reset"] += 1
            _reset(writer)
            return
        self.stats["dropped"] += 1
        self._held.add(writer)
        try:
            while await reader.read(_CHUNK):
                pass
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._held.discard(writer)
            _reset(writer)

    def _set_blocked(self, blocked: bool) -> None:
        self._blocked = blocked
        if blocked:
            for p in list(self._pipes):
                p.abort()
        else:
            for w in list(self._held):
                _reset(w)

    # -- public API (any thread) ----------------------------------------------

    @property
    def blocked(self) -> bool:
        return self._blocked

    @property
    def delay_ms(self) -> dict:
        return {k: round(v * 1000) for k, v in self._delay.items()}

    @property
    def active_connections(self) -> int:
        return len(self._pipes)

    def block(self) -> None:
        """Partition: reset forwarded connections; hold (mode "drop") or reset new ones."""
        _call(self._set_blocked, True)

    def unblock(self) -> None:
        """Heal: forward new connections again (held ones are reset)."""
        _call(self._set_blocked, False)

    def set_delay_ms(self, ms: float, direction: str = "both") -> None:
        """Hold each chunk `ms` milliseconds before writing it on ("up" = client->target,
        "down" = target->client, or "both")."""
        if ms < 0:
            raise ValueError("delay must be >= 0")
        dirs = {"both": ("up", "down"), "up": ("up",), "down": ("down",)}[direction]

        def apply():
            for d in dirs:
                self._delay[d] = ms / 1000.0

        _call(apply)

    def close(self) -> None:
        if self._closed:
            return

        async def shutdown():
            self._closed = True
            self._server.close()
            for p in list(self._pipes):
                p.abort()
            for w in list(self._held):
                _reset(w)
            try:
                await asyncio.wait_for(self._server.wait_closed(), timeout=5.0)
            except asyncio.TimeoutError:
                pass

        try:
            _run(shutdown())
        finally:
            _proxies.discard(self)


# ---------------------------------------------------------------------------
# Mesh: one proxy per ordered pair of nodes
# ---------------------------------------------------------------------------


class Mesh:
    """Proxies for every ordered pair (i, j), i != j, of a set of nodes.

    targets:  node id -> (host, port) of that node's real listener (e.g. Raft).
    hosts:    node id -> the node's own host; proxy (i, j) listens on hosts[j] and
              connects out from hosts[i]. Default "127.0.0.1" for every node.
    port_for: callable(host) -> port for each proxy's listener (default: the OS picks).

    Node i must be configured to reach peer j at mesh.address(i, j). Proxy (i, j)
    carries every connection node i opens to node j, in both directions.
    """

    def __init__(self, targets: dict[int, tuple[str, int]], hosts: dict[int, str] | None = None,
                 port_for=None, block_mode: str = "drop") -> None:
        self.ids = sorted(targets)
        self.hosts = {i: (hosts or {}).get(i, "127.0.0.1") for i in self.ids}
        self.proxies: dict[tuple[int, int], Proxy] = {}
        try:
            for i in self.ids:
                for j in self.ids:
                    if i == j:
                        continue
                    host = self.hosts[j]
                    port = port_for(host) if port_for else 0
                    self.proxies[(i, j)] = Proxy((host, port), targets[j], source_host=self.hosts[i],
                                                 name=f"{i}->{j}", block_mode=block_mode)
        except BaseException:
            self.close()
            raise

    def proxy(self, i: int, j: int) -> Proxy:
        return self.proxies[(i, j)]

    def address(self, i: int, j: int) -> tuple[str, int]:
        """Where node i must connect to reach node j."""
        return self.proxies[(i, j)].listen

    def block_link(self, i: int, j: int) -> None:
        """Block the connections node i opens to node j (both directions of those
        connections); connections j opens to i are untouched (asymmetric fault)."""
        self.proxies[(i, j)].block()

    def partition(self, group_a: Iterable[int], group_b: Iterable[int]) -> None:
        """No traffic between any node of group_a and any node of group_b."""
        a, b = set(group_a), set(group_b)
        if a & b:
            raise ValueError(f"groups overlap: {sorted(a & b)}")
        for i in a:
            for j in b:
                self.proxies[(i, j)].block()
                self.proxies[(j, i)].block()

    def isolate(self, i: int) -> None:
        """Cut node i off from every other node."""
        self.partition([i], [j for j in self.ids if j != i])

    def slow(self, i: int, j: int, ms: float) -> None:
        """Add `ms` one-way latency to everything node i sends to node j (on the
        connections i opened to j and on the replies over connections j opened to i)."""
        self.proxies[(i, j)].set_delay_ms(ms, "up")
        self.proxies[(j, i)].set_delay_ms(ms, "down")

    def heal(self) -> None:
        """Unblock every link and remove every delay."""
        for p in self.proxies.values():
            p.unblock()
            p.set_delay_ms(0)

    def blocked_links(self) -> list[tuple[int, int]]:
        return sorted(k for k, p in self.proxies.items() if p.blocked)

    def isolated(self) -> list[int]:
        """Nodes with every link (both ways) blocked."""
        return [i for i in self.ids
                if all(self.proxies[(i, j)].blocked and self.proxies[(j, i)].blocked for j in self.ids if j != i)]

    def bytes_between(self, i: int, j: int) -> int:
        """Bytes forwarded, both directions, over connections either node opened to the other."""
        return sum(self.proxies[k].stats["bytes_up"] + self.proxies[k].stats["bytes_down"] for k in ((i, j), (j, i)))

    def close(self) -> None:
        for p in self.proxies.values():
            try:
                p.close()
            except Exception:  # noqa: BLE001
                pass
