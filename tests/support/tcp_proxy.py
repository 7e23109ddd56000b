"""A loopback TCP proxy for fault tests: pass traffic through, delay it, hold it, or cut it, on demand.

Runs its own asyncio loop in a thread, so a test drives it with plain calls:

- ``cut()`` resets every open connection and refuses new ones; ``restore()`` lets them through again;
- ``latency_s`` (plus a seeded ``jitter_s``) delays each chunk, in order;
- ``blackhole()`` holds every byte (new connections are accepted but never reach the server), as a
  silent network partition would; ``blackhole(direction="down")`` holds only the server's replies, so a
  COMMIT reaches the server while its answer does not (an in-doubt commit once the link is then cut);
  ``restore()`` releases what was held, as TCP retransmission would after the partition heals;
- ``arm_in_doubt(n)``: each of the next ``n`` PostgreSQL ``COMMIT``s reaches the server, but its reply is
  swallowed and the client's connection reset: the client cannot know whether it committed.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import socket
import threading
from collections.abc import Iterator

UP, DOWN = "up", "down"  # client -> server, server -> client


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, seed: int = 0) -> None:
        self.target = (target_host, target_port)
        self.latency_s = 0.0
        self.jitter_s = 0.0
        self._rng = random.Random(seed)
        self._open = threading.Event()
        self._open.set()
        self._flowing = {UP: asyncio.Event(), DOWN: asyncio.Event()}  # cleared while held
        for event in self._flowing.values():
            event.set()
        self._writers: set[asyncio.StreamWriter] = set()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self.port = 0
        self.cuts = 0
        self._in_doubt_armed = 0
        self.in_doubt = 0
        self._thread = threading.Thread(target=self._serve, name="tcp-proxy", daemon=True)

    def start(self) -> TcpProxy:
        self._thread.start()
        self._ready.wait(10)
        return self

    def _serve(self) -> None:
        asyncio.set_event_loop(self._loop)
        server = self._loop.run_until_complete(asyncio.start_server(self._handle, "127.0.0.1", 0))
        self.port = server.sockets[0].getsockname()[1]
        self._ready.set()
        self._loop.run_forever()
        server.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if not self._open.is_set():
            _reset(writer)
            return
        await self._while_held(UP)
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            _reset(writer)
            return
        self._writers.update((writer, up_writer))
        link = _Link(writer)
        await asyncio.gather(
            self._pipe(reader, up_writer, UP, link), self._pipe(up_reader, writer, DOWN, link), return_exceptions=True
        )
        self._writers.difference_update((writer, up_writer))

    async def _pipe(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, direction: str, link: _Link
    ) -> None:
        try:
            while data := await reader.read(65536):
                delay = self.latency_s + (self._rng.uniform(-self.jitter_s, self.jitter_s) if self.jitter_s else 0.0)
                if delay > 0:
                    await asyncio.sleep(delay)
                await self._while_held(direction)
                if link.swallowing and direction == DOWN:
                    continue
                writer.write(data)
                await writer.drain()
                if direction == UP and self._in_doubt_armed and b"COMMIT" in data:
                    self._in_doubt_armed -= 1
                    self.in_doubt += 1
                    await link.leave_in_doubt()
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _while_held(self, direction: str) -> None:
        await self._flowing[direction].wait()

    def arm_in_doubt(self, commits: int) -> None:
        """Swallow the replies to the next ``commits`` COMMITs and reset those clients (see the docstring)."""
        self._in_doubt_armed += commits

    def cut(self) -> None:
        """Reset every open connection and refuse new ones until :meth:`restore`."""
        self._open.clear()
        self.cuts += 1

        def reset_all() -> None:
            for writer in list(self._writers):
                _reset(writer)

        self._loop.call_soon_threadsafe(reset_all)

    def blackhole(self, direction: str | None = None) -> None:
        """Hold traffic in ``direction`` (``"up"``, ``"down"``; both by default) until :meth:`restore`."""
        for held in [direction] if direction else [UP, DOWN]:
            self._loop.call_soon_threadsafe(self._flowing[held].clear)

    def restore(self) -> None:
        """Let connections and held traffic through again."""
        for event in self._flowing.values():
            self._loop.call_soon_threadsafe(event.set)
        self._open.set()

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)


class _Link:
    """One proxied connection's state: whether the server's replies are being swallowed."""

    def __init__(self, client: asyncio.StreamWriter) -> None:
        self._client = client
        self.swallowing = False

    async def leave_in_doubt(self) -> None:
        """Drop every reply from now on, give the server time to commit, then reset the client."""
        self.swallowing = True
        await asyncio.sleep(0.3)
        _reset(self._client)


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with RST (SO_LINGER 0), as a crashed peer or a cut network would."""
    sock = writer.get_extra_info("socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    writer.close()


@contextlib.contextmanager
def proxy(host: str, port: int, seed: int = 0) -> Iterator[TcpProxy]:
    running = TcpProxy(host, port, seed).start()
    try:
        yield running
    finally:
        running.stop()
