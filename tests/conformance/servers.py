"""The servers the conformance suite puts the HTTP clients through, all on loopback.

Real ones, as the Space API may sit behind them: nginx as a reverse proxy (closing keep-alive
connections early, as proxies do), uvicorn (on httptools and on h11), hypercorn and aiohttp.web,
each answering through one :class:`Ledger` that counts what arrived. And :class:`RawServer`, a
scripted HTTP/1.1 server that misbehaves on cue: the cases no well-made server produces on
purpose, but networks, proxies and broken deployments do.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import socket
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import hypercorn.asyncio
import hypercorn.config
import uvicorn
from aiohttp import web

from pipeline.dev.broker import free_port

PATH = "/v1/records"

# Servers closing keep-alive connections early: idle ones after this long, and every one after
# KEEPALIVE_REQUESTS answers. A pause longer than KEEPALIVE_IDLE_S meets the idle close.
KEEPALIVE_IDLE_S = 0.3
KEEPALIVE_REQUESTS = 3


# The real servers


class Ledger:
    """What the real servers received, and how they answer.

    A request's ``X-Answer`` header (forwarded from the record) picks the status, 201 when it has
    none; the body names the status and the record, so an answer read for the wrong request shows.
    """

    def __init__(self) -> None:
        self.keys: list[str] = []

    def answer(self, headers: Mapping[str, str]) -> tuple[int, bytes]:
        key = headers.get("idempotency-key", "")
        self.keys.append(key)
        status = int(headers.get("x-answer", "201"))
        return status, f"{status} for {key}".encode()


def asgi_app(ledger: Ledger) -> Callable[..., Awaitable[None]]:
    """The ledger as an ASGI application (with lifespan, which hypercorn always runs)."""

    async def app(
        scope: dict[str, Any], receive: Callable[..., Any], send: Callable[..., Any]
    ) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        more = True
        while more:
            message = await receive()
            more = message.get("more_body", False)
        headers = {
            name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]
        }
        status, body = ledger.answer(headers)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [
                    (b"content-type", b"text/plain"),
                    (b"content-length", b"%d" % len(body)),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    return app


@contextlib.asynccontextmanager
async def aiohttp_web(
    ledger: Ledger, *, keepalive_timeout: float = KEEPALIVE_IDLE_S
) -> AsyncIterator[str]:
    """aiohttp.web answering through ``ledger``; yields the records URL."""

    async def handle(request: web.Request) -> web.Response:
        await request.read()
        status, body = ledger.answer({k.lower(): v for k, v in request.headers.items()})
        return web.Response(status=status, body=body, content_type="text/plain")

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handle)
    runner = web.AppRunner(app, access_log=None, keepalive_timeout=keepalive_timeout)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        await runner.cleanup()


@contextlib.asynccontextmanager
async def uvicorn_server(ledger: Ledger, http: str) -> AsyncIterator[str]:
    """uvicorn (``http``: its ``httptools`` or ``h11`` protocol) serving the ledger's ASGI app."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    config = uvicorn.Config(
        asgi_app(ledger),
        http=http,
        ws="none",
        lifespan="off",
        log_level="warning",
        access_log=False,
        timeout_keep_alive=KEEPALIVE_IDLE_S,
        timeout_graceful_shutdown=1,
    )
    server = uvicorn.Server(config)
    with sock:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(server.serve(sockets=[sock]))
            try:
                await until_listening(port)
                yield f"http://127.0.0.1:{port}{PATH}"
            finally:
                server.should_exit = True


@contextlib.asynccontextmanager
async def hypercorn_server(ledger: Ledger) -> AsyncIterator[str]:
    """hypercorn serving the ledger's ASGI app, closing keep-alive connections early too."""
    port = free_port()
    config = hypercorn.config.Config()
    config.bind = [f"127.0.0.1:{port}"]
    config.keep_alive_timeout = KEEPALIVE_IDLE_S
    config.keep_alive_max_requests = KEEPALIVE_REQUESTS
    config.graceful_timeout = 1
    config.accesslog = None
    config.loglevel = "WARNING"
    stop = asyncio.Event()
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(
            hypercorn.asyncio.serve(asgi_app(ledger), config, shutdown_trigger=stop.wait)
        )
        try:
            await until_listening(port)
            yield f"http://127.0.0.1:{port}{PATH}"
        finally:
            stop.set()


def nginx_binary() -> str | None:
    """Debian's nginx (``make tools`` installs nginx-light), or ``None`` when it is not there."""
    # /usr/sbin is on root's PATH, not always on a user's.
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")


NGINX_CONF = """\
daemon off;
master_process off;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 64; }}
http {{
    access_log off;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    keepalive_timeout {idle_ms}ms;
    keepalive_requests {requests};
    server {{
        listen 127.0.0.1:{port};
        location / {{ proxy_pass {upstream}; }}
    }}
}}
"""


@contextlib.asynccontextmanager
async def nginx_proxy(upstream: str, directory: Path) -> AsyncIterator[str]:
    """nginx in the foreground, proxying to ``upstream`` (an origin); yields the records URL.

    It closes idle client connections after ``KEEPALIVE_IDLE_S`` without a word, and every
    connection after ``KEEPALIVE_REQUESTS`` answers (the last one saying ``Connection: close``).
    """
    binary = nginx_binary()
    assert binary is not None
    port = free_port()
    conf = directory / "nginx.conf"
    conf.write_text(
        NGINX_CONF.format(
            dir=directory,
            idle_ms=int(KEEPALIVE_IDLE_S * 1000),
            requests=KEEPALIVE_REQUESTS,
            port=port,
            upstream=upstream,
        )
    )
    log = directory / "error.log"
    process = await asyncio.create_subprocess_exec(
        binary, "-p", str(directory), "-c", str(conf), "-e", str(log)
    )
    try:
        try:
            await until_listening(port, process)
        except (TimeoutError, ChildProcessError) as error:
            text = log.read_text() if log.exists() else ""
            raise RuntimeError(f"nginx did not start: {text}") from error
        yield f"http://127.0.0.1:{port}{PATH}"
    finally:
        if process.returncode is None:
            process.terminate()
        await process.wait()


@contextlib.asynccontextmanager
async def behind_nginx(ledger: Ledger, directory: Path) -> AsyncIterator[str]:
    """aiohttp.web (patient with nginx's connections) behind nginx."""
    async with aiohttp_web(ledger, keepalive_timeout=75) as upstream:
        origin = upstream.removesuffix(PATH)
        async with nginx_proxy(origin, directory) as url:
            yield url


async def until_listening(
    port: int, process: asyncio.subprocess.Process | None = None, timeout: float = 10
) -> None:
    """Return once something accepts connections on ``port``."""
    async with asyncio.timeout(timeout):
        while True:
            if process is not None and process.returncode is not None:
                raise ChildProcessError(process.returncode)
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                await asyncio.sleep(0.02)
                continue
            writer.close()
            return


# The raw server


@dataclass(frozen=True, slots=True)
class Seen:
    """A request as the raw server read it: on which connection, for which record."""

    connection: int
    key: str


# What the server does with one request: write to the connection, and say whether to go on
# reading requests from it (False closes it).
Reply = Callable[[asyncio.StreamWriter], Awaitable[bool]]

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 2\r\n\r\n{}"


def answer(*raw: bytes) -> Reply:
    """Write ``raw`` (one write per part) and keep the connection."""

    async def reply(writer: asyncio.StreamWriter) -> bool:
        for part in raw:
            writer.write(part)
            await writer.drain()
        return True

    return reply


def answer_and_close(raw: bytes) -> Reply:
    """Write ``raw``, then close the connection at once, without having said so."""

    async def reply(writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        return False

    return reply


def close_without_answer() -> Reply:
    """The request was read in full; close the connection without a byte of answer."""

    async def reply(writer: asyncio.StreamWriter) -> bool:
        return False

    return reply


def answer_then(raw: bytes, later: bytes, delay: float = 0.02) -> Reply:
    """Answer, then ``delay`` seconds on, while the connection is idle, write ``later`` too."""

    async def reply(writer: asyncio.StreamWriter) -> bool:
        writer.write(raw)
        await writer.drain()
        await asyncio.sleep(delay)
        writer.write(later)
        await writer.drain()
        return True

    return reply


def huge(status: bytes, size: int) -> Reply:
    """An answer with a body of ``size`` bytes, written 1 MiB at a time."""
    block = memoryview(b"x" * (1 << 20))

    async def reply(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 %s\r\nContent-Length: %d\r\n\r\n" % (status, size))
        left = size
        while left:
            part = block[: min(left, len(block))]
            writer.write(part)
            await writer.drain()
            left -= len(part)
        return True

    return reply


def endless(status: bytes) -> Reply:
    """A chunked answer whose body never ends: a 1 KiB chunk every 10 ms until the client leaves."""
    chunk = b"400\r\n" + b"." * 1024 + b"\r\n"

    async def reply(writer: asyncio.StreamWriter) -> bool:
        writer.write(b"HTTP/1.1 %s\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
        while not writer.is_closing():
            writer.write(chunk)
            await writer.drain()
            await asyncio.sleep(0.01)
        return False

    return reply


class RawServer:
    """A scripted HTTP/1.1 server: the n-th request it reads, on whatever connection, gets the
    n-th reply of the script, and every request after the script a plain ``201``.

    ``seen`` lists every request read, so a test can say what the server saw: each record once,
    and on which connection.
    """

    def __init__(self, *script: Reply) -> None:
        self.seen: list[Seen] = []
        self.connections = 0
        self.url = ""
        self._script = deque(script)
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []
        self._server: asyncio.Server | None = None

    @property
    def keys(self) -> list[str]:
        """The Idempotency-Key of every request read, in order."""
        return [seen.key for seen in self.seen]

    def connection_of(self, key: str) -> int:
        """The connection that carried the one request for ``key``."""
        (connection,) = (seen.connection for seen in self.seen if seen.key == key)
        return connection

    async def __aenter__(self) -> RawServer:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}{PATH}"
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()
        await self._server.wait_closed()

    def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        # A plain callback, not a coroutine: asyncio would start an untracked task for that.
        self.connections += 1
        self._writers.append(writer)
        task = asyncio.get_running_loop().create_task(self._serve(self.connections, reader, writer))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(
        self, number: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while True:
                try:
                    head = await read_request(reader)
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                self.seen.append(Seen(number, header(head, b"idempotency-key")))
                reply = self._script.popleft() if self._script else answer(CREATED)
                if not await reply(writer):
                    return
        except ConnectionError:
            pass
        finally:
            writer.close()


async def read_request(reader: asyncio.StreamReader) -> bytes:
    """One request off the wire (Content-Length framed, as the clients send them); its head."""
    head = await reader.readuntil(b"\r\n\r\n")
    length = header(head, b"content-length")
    await reader.readexactly(int(length or 0))
    return head


def header(head: bytes, name: bytes) -> str:
    """The value of header ``name`` (lower case) in a request head, "" when absent."""
    for line in head.split(b"\r\n")[1:]:
        field, _, value = line.partition(b":")
        if field.strip().lower() == name:
            return value.strip().decode("latin-1")
    return ""
