"""A TCP proxy that puts a bad network between a test and the servers it talks to.

Loopback has no latency and never drops a connection, which hides the races a real network shows:
a commit that lands after a rebalance, a fetch still in flight when the broker goes away. Put a
:class:`FaultProxy` in front of the broker or the API and steer it from the test: latency per
direction, a reset of every connection (:meth:`FaultProxy.cut`), or, for Kafka, extra delay on
the requests of chosen API keys.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import struct
from collections.abc import Callable
from typing import Self

log = logging.getLogger(__name__)

_READ_SIZE = 64 * 1024
# SO_LINGER on, zero seconds: close() then sends RST instead of FIN, as a dropped link would.
_LINGER_RESET = struct.pack("ii", 1, 0)
# What a Kafka request starts with: its length (of what follows) and its int16 api_key.
_KAFKA_HEAD = struct.Struct(">ih")

# One direction's delay line: (when to release it, the bytes; None for the peer's EOF).
_Line = asyncio.Queue[tuple[float, bytes | None]]


def kafka_request(
    api_key: int, api_version: int, correlation_id: int, payload: bytes = b""
) -> bytes:
    """One length-prefixed Kafka request frame; ``payload`` is what follows the header fields."""
    body = struct.pack(">hhi", api_key, api_version, correlation_id) + payload
    return struct.pack(">i", len(body)) + body


class _KafkaFramer:
    """Tag a client's bytes with the api_key of the request they belong to, across chunk bounds.

    The first six bytes of a request (length and api_key) are held back until all have arrived,
    so a request's delay is known before any of its bytes move on. Holding them costs nothing: the
    broker cannot act on a request before it has all of it anyway.
    """

    def __init__(self, seen: collections.Counter[int]) -> None:
        self._seen = seen
        self._head = bytearray()
        self._left = 0  # bytes of the current request still to come after its head
        self._api_key = -1

    def feed(self, chunk: bytes) -> list[tuple[int, bytes]]:
        """Split ``chunk`` at request starts; each piece comes with its request's api_key."""
        pieces: list[tuple[int, bytes]] = []
        rest = memoryview(chunk)
        while rest:
            if self._left:
                piece, rest = rest[: self._left], rest[self._left :]
                self._left -= len(piece)
                pieces.append((self._api_key, bytes(piece)))
                continue
            need = _KAFKA_HEAD.size - len(self._head)
            self._head += rest[:need]
            rest = rest[need:]
            if len(self._head) < _KAFKA_HEAD.size:
                break
            length, self._api_key = _KAFKA_HEAD.unpack(self._head)
            self._seen[self._api_key] += 1
            pieces.append((self._api_key, bytes(self._head)))
            self._head.clear()
            self._left = max(length - 2, 0)
        return pieces


class _Connection(list[asyncio.StreamWriter]):
    """The sockets of one proxied connection (client, then upstream), so a cut resets the pair."""

    def reset(self) -> None:
        """Drop every socket with RST, unsent bytes and all, as a broken link would."""
        for writer in self:
            with contextlib.suppress(OSError, AttributeError):  # closed: nothing left to reset
                sock = writer.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
            writer.transport.abort()

    def close(self) -> None:
        """Close every socket after its buffered bytes (a no-op after :meth:`reset`)."""
        for writer in self:
            writer.close()


class FaultProxy:
    """Forward TCP from ``host:port`` to ``upstream_host:upstream_port``, with faults on demand.

    ``latency_up`` (client to server) and ``latency_down`` (server to client) are seconds added to
    every chunk: each is released at its arrival time plus the latency then in force, in order, so
    latency never limits throughput. With ``kafka=True`` the client's bytes are also parsed as Kafka
    requests: ``kafka_requests`` counts them per api_key, and a request whose api_key is in
    ``kafka_request_delays`` waits that much longer, holding up what follows it on its connection.
    All of these may change while connections are open; they apply to bytes arriving afterwards.

    ``port`` may be chosen in advance (a broker must advertise the proxy's port before it starts)
    and is kept across :meth:`cut` and :meth:`restore`.
    """

    def __init__(
        self,
        upstream_host: str,
        upstream_port: int,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        kafka: bool = False,
    ) -> None:
        self.upstream_host, self.upstream_port = upstream_host, upstream_port
        self.host, self.port = host, port
        self.kafka = kafka
        self.latency_up = 0.0
        self.latency_down = 0.0
        self.kafka_request_delays: dict[int, float] = {}
        self.kafka_requests: collections.Counter[int] = collections.Counter()
        self.connections_accepted = 0
        self.connections_cut = 0
        self._server: asyncio.Server | None = None
        self._refusing = False  # cut: even a connect accepted just before it must not get in
        self._tasks: set[asyncio.Task[None]] = set()  # every connection's task until it ends
        self._open: dict[asyncio.Task[None], _Connection] = {}  # those not yet cut

    @property
    def address(self) -> str:
        """``host:port`` as clients should dial it."""
        return f"{self.host}:{self.port}"

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> Self:
        """Listen (binding before returning, so ``port`` is real when it was 0)."""
        if self._server is None:
            await self._listen()
        return self

    async def close(self) -> None:
        """Stop listening, drop every connection and wait for their tasks; safe to call twice."""
        self._drop_all()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        server, self._server = self._server, None
        if server is not None:
            await server.wait_closed()

    def cut(self) -> None:
        """Reset every open connection and refuse new ones (connects get ECONNREFUSED)."""
        self.connections_cut += self._drop_all()

    async def restore(self) -> None:
        """Listen again on the same port after :meth:`cut`."""
        if self._server is not None and self._server.is_serving():
            return
        if self._server is not None:
            await self._server.wait_closed()
        await self._listen()

    async def cut_for(self, seconds: float) -> None:
        """A network outage of ``seconds``: :meth:`cut`, wait, :meth:`restore`."""
        self.cut()
        await asyncio.sleep(seconds)
        await self.restore()

    async def _listen(self) -> None:
        self._refusing = False
        self._server = await asyncio.start_server(self._accept, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    def _drop_all(self) -> int:
        self._refusing = True
        if self._server is not None:
            self._server.close()  # closes the listening socket at once
        dropped = 0
        while self._open:
            task, connection = self._open.popitem()
            connection.reset()
            task.cancel()
            dropped += 1
        return dropped

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: asyncio would start an untracked task for that.
        connection = _Connection([writer])
        if self._refusing:
            connection.reset()
            return
        self.connections_accepted += 1
        task = asyncio.get_running_loop().create_task(self._serve(reader, connection))
        self._tasks.add(task)
        self._open[task] = connection
        task.add_done_callback(self._forget)

    def _forget(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._open.pop(task, None)
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("faultproxy: a connection failed", exc_info=error)

    async def _serve(self, client: asyncio.StreamReader, connection: _Connection) -> None:
        """Pump both directions until both ends closed; a reset on one side resets the other."""
        try:
            try:
                upstream, upstream_writer = await asyncio.open_connection(
                    self.upstream_host, self.upstream_port
                )
                connection.append(upstream_writer)
            except OSError:
                connection.reset()  # upstream refused: so does the proxy, as far as it can
                return
            framer = _KafkaFramer(self.kafka_requests) if self.kafka else None
            try:
                async with asyncio.TaskGroup() as tasks:
                    up: _Line = asyncio.Queue()
                    down: _Line = asyncio.Queue()
                    tasks.create_task(self._receive(client, up, lambda: self.latency_up, framer))
                    tasks.create_task(self._release(up, upstream_writer))
                    tasks.create_task(self._receive(upstream, down, lambda: self.latency_down))
                    tasks.create_task(self._release(down, connection[0]))
            except* OSError:
                connection.reset()
        finally:
            connection.close()

    async def _receive(
        self,
        reader: asyncio.StreamReader,
        line: _Line,
        latency: Callable[[], float],
        framer: _KafkaFramer | None = None,
    ) -> None:
        """Read as fast as the sender writes, stamping each chunk with when it may go on.

        The line is unbounded, so a slow receiver costs memory rather than stalling the sender:
        fine for test-sized traffic, and it keeps latency from ever throttling throughput.
        """
        loop = asyncio.get_running_loop()
        while chunk := await reader.read(_READ_SIZE):
            due = loop.time() + latency()
            if framer is None:
                line.put_nowait((due, chunk))
                continue
            for api_key, piece in framer.feed(chunk):
                line.put_nowait((due + self.kafka_request_delays.get(api_key, 0.0), piece))
        line.put_nowait((loop.time() + latency(), None))

    @staticmethod
    async def _release(line: _Line, writer: asyncio.StreamWriter) -> None:
        """Write each chunk once it is due, in arrival order; pass the EOF on as a half-close."""
        loop = asyncio.get_running_loop()
        while True:
            due, chunk = await line.get()
            if (wait := due - loop.time()) > 0:
                await asyncio.sleep(wait)
            if chunk is None:
                if writer.can_write_eof():
                    writer.write_eof()
                return
            writer.write(chunk)
            await writer.drain()
