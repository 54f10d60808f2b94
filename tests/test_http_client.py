"""Every HTTP client on the wire: redirects, credentials in the URL, IPv6, encoding, proxies.

The lean client and the aiohttp client must be interchangeable: what one sends, the other sends
byte for byte, and what one reports of an answer, the other reports too.
"""

from __future__ import annotations

import asyncio
import base64
import socketserver
import ssl
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from urllib.parse import urlsplit

import httpx
import pytest
import trustme
from pydantic import ValidationError
from structlog.testing import capture_logs

from pipeline.config import Settings, describe_errors
from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, HttpxClient, Timeouts
from pipeline.wiring import build_sink
from tests.fakes import Record
from tests.test_http11 import OK, Handler, read_request, server

AnyClient = LeanClient | AiohttpClient | HttpxClient
Client = Callable[[], AnyClient]


def lean() -> AnyClient:
    return LeanClient(Timeouts(connect=2, read=2), 4)


def aiohttp_client(proxy: str | None = None) -> AnyClient:
    return AiohttpClient(Timeouts(connect=2, read=2), 4, proxy=proxy)


def httpx_client() -> AnyClient:
    return HttpxClient(httpx.AsyncHTTPTransport(), Timeouts(connect=2, read=2))


PROXY_VARIABLES = ("HTTPS_PROXY", "HTTP_PROXY", "NO_PROXY", "https_proxy", "http_proxy", "no_proxy")


@pytest.fixture(autouse=True)
def no_proxy_from_the_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """The specs set the proxy variables they need; the machine's own would reroute them."""
    for name in PROXY_VARIABLES:
        monkeypatch.delenv(name, raising=False)


BOTH = pytest.mark.parametrize("make", [lean, aiohttp_client], ids=["lean", "aiohttp"])
ALL = pytest.mark.parametrize(
    "make", [lean, aiohttp_client, httpx_client], ids=["lean", "aiohttp", "httpx"]
)


def recording(answer: bytes = OK) -> tuple[Handler, list[bytes]]:
    """A keep-alive server answering ``answer`` to every request; records each request head."""
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            heads.append((await read_request(reader))[0])
            writer.write(answer)

    return handler, heads


def header(head: bytes, name: bytes) -> bytes | None:
    for line in head.split(b"\r\n")[1:]:
        key, _, value = line.partition(b":")
        if key.strip().lower() == name.lower():
            return value.strip()
    return None


# Redirects


@ALL
async def test_a_redirect_is_never_followed_and_comes_back_with_its_location(make: Client) -> None:
    """A 302 is the answer: the POST never becomes a GET elsewhere whose 200 would count as the
    record's acceptance. The Location comes back for the sink to report."""
    elsewhere, elsewhere_heads = recording(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    async with server(elsewhere) as other:
        moved = b"HTTP/1.1 302 Found\r\nLocation: %s/new\r\nContent-Length: 0\r\n\r\n"
        handler, _ = recording(moved % other.encode())
        async with server(handler) as base, make() as http:
            answer = await http.request("POST", f"{base}/v1", {}, b"x")

    assert (302, f"{other}/new") == (answer.status, answer.location)
    assert [] == elsewhere_heads


# What goes on the wire


@BOTH
async def test_credentials_in_the_url_become_basic_authorization(make: Client) -> None:
    """``user:password@`` in the URL is sent as ``Authorization: Basic``, percent-decoded first,
    the same by every client, and the credentials never appear in the request line."""
    handler, heads = recording()
    async with server(handler) as base, make() as http:
        url = base.replace("://", "://space%20user:p%40ss:w@") + "/v1"
        await http.request("POST", url, {}, b"x")

    expected = b"Basic " + base64.b64encode(b"space user:p@ss:w")
    assert expected == header(heads[0], b"authorization")
    assert heads[0].startswith(b"POST /v1 HTTP/1.1\r\n")


@BOTH
async def test_an_authorization_header_wins_over_credentials_in_the_url(make: Client) -> None:
    """A bearer token (or any Authorization header the sink sets) is sent alone: no client
    refuses the combination, and none sends two Authorization headers."""
    handler, heads = recording()
    async with server(handler) as base, make() as http:
        url = base.replace("://", "://user:pass@")
        answer = await http.request("POST", url, {"Authorization": "Bearer t"}, b"x")

    assert 204 == answer.status
    assert 1 == heads[0].lower().count(b"\r\nauthorization:")
    assert b"Bearer t" == header(heads[0], b"authorization")


@BOTH
async def test_a_non_ascii_path_is_percent_encoded_the_same_by_every_client(make: Client) -> None:
    """UTF-8, percent-encoded, as aiohttp (yarl) does: never raw Latin-1 bytes on the wire."""
    handler, heads = recording()
    async with server(handler) as base, make() as http:
        await http.request("POST", f"{base}/räume/ü items?q=é", {}, b"x")

    assert heads[0].startswith(b"POST /r%C3%A4ume/%C3%BC%20items?q=%C3%A9 HTTP/1.1\r\n")


@BOTH
async def test_an_ipv6_api_is_reached_and_named_in_brackets_in_the_host_header(
    make: Client,
) -> None:
    """``http://[::1]:port`` connects to ::1, and ``Host`` is ``[::1]:port`` as RFC 9110 says."""
    handler, heads = recording()
    async with server(handler, host="::1") as base, make() as http:
        answer = await http.request("POST", f"{base}/v1", {}, b"x")

    assert 204 == answer.status
    assert f"[::1]:{urlsplit(base).port}".encode() == header(heads[0], b"host")


# Proxies


@asynccontextmanager
async def forward_proxy() -> AsyncIterator[tuple[str, list[bytes]]]:
    """A tiny forward proxy: logs each connection's request line (absolute-form, or CONNECT),
    then relays bytes both ways to the origin it names."""
    lines: list[bytes] = []

    async def relay(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while chunk := await reader.read(65536):
            writer.write(chunk)
        writer.close()

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        line = await reader.readline()
        lines.append(line.rstrip())
        method, target, _ = line.split(b" ", 2)
        if method == b"CONNECT":
            host, _, port = target.decode().rpartition(":")
            await reader.readuntil(b"\r\n\r\n")
            upstream_reader, upstream = await asyncio.open_connection(host, int(port))
            writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
        else:
            origin = urlsplit(target.decode())
            upstream_reader, upstream = await asyncio.open_connection(origin.hostname, origin.port)
            upstream.write(line)  # servers must accept the absolute form (RFC 9112, 3.2.2)
        async with asyncio.TaskGroup() as group:
            group.create_task(relay(reader, upstream))
            group.create_task(relay(upstream_reader, writer))

    async with server(handler) as base:
        yield base, lines


async def test_the_aiohttp_client_reaches_the_api_through_the_configured_proxy() -> None:
    """``PIPELINE_HTTP_PROXY``: every request goes through it, in absolute form."""
    handler, heads = recording()
    async with (
        forward_proxy() as (proxy, lines),
        server(handler) as base,
        aiohttp_client(proxy=proxy) as http,
    ):
        answer = await http.request("POST", f"{base}/v1", {}, b"x")

    assert 204 == answer.status
    assert [f"POST {base}/v1 HTTP/1.1".encode()] == lines
    assert 1 == len(heads)


async def test_the_aiohttp_client_honours_http_proxy_and_no_proxy_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``HTTP_PROXY`` routes through the proxy; a host in ``NO_PROXY`` goes direct."""
    handler, heads = recording()
    async with forward_proxy() as (proxy, lines), server(handler) as base:
        monkeypatch.setenv("HTTP_PROXY", proxy)
        async with aiohttp_client() as http:
            await http.request("POST", f"{base}/v1", {}, b"x")
        monkeypatch.setenv("NO_PROXY", "127.0.0.1")
        async with aiohttp_client() as http:
            await http.request("POST", f"{base}/v1", {}, b"x")

    assert [f"POST {base}/v1 HTTP/1.1".encode()] == lines
    assert 2 == len(heads)


async def test_the_configured_proxy_wins_over_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With both, ``PIPELINE_HTTP_PROXY`` is the one used (the environment's may be for others)."""
    monkeypatch.setenv("HTTP_PROXY", "http://127.0.0.1:9")  # nobody there
    handler, _ = recording()
    async with (
        forward_proxy() as (proxy, lines),
        server(handler) as base,
        aiohttp_client(proxy=proxy) as http,
    ):
        answer = await http.request("POST", f"{base}/v1", {}, b"x")

    assert 204 == answer.status
    assert 1 == len(lines)


async def test_an_https_api_is_reached_through_the_proxy_with_connect(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``HTTPS_PROXY`` and an https API: a CONNECT tunnel, TLS to the API inside it, verified
    with the configured trust."""
    authority = trustme.CA()
    server_context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    authority.issue_cert("127.0.0.1").configure_cert(server_context)
    trust = ssl.create_default_context()
    authority.configure_trust(trust)
    handler, heads = recording()
    async with forward_proxy() as (proxy, lines), server(handler, server_context) as base:
        monkeypatch.setenv("HTTPS_PROXY", proxy)
        async with AiohttpClient(Timeouts(connect=2, read=2), 4, ssl_context=trust) as http:
            answer = await http.request("POST", f"{base}/v1", {}, b"x")

    assert 204 == answer.status
    assert [f"CONNECT {urlsplit(base).netloc} HTTP/1.1".encode()] == lines
    assert 1 == len(heads)


def settings(url: str, **overrides: object) -> Settings:
    return Settings(
        kafka_bootstrap_servers="localhost:9092",
        kafka_topics=("t",),  # type: ignore[arg-type]
        space_api_url=url,
        **overrides,  # type: ignore[arg-type]
    )


async def test_a_sink_built_from_the_settings_sends_through_pipeline_http_proxy() -> None:
    """``PIPELINE_HTTP_CLIENT=aiohttp`` with ``PIPELINE_HTTP_PROXY``: the sink uses the proxy."""
    handler, heads = recording()
    async with forward_proxy() as (proxy, lines), server(handler) as base:
        config = settings(f"{base}/v1", http_client="aiohttp", http_proxy=proxy)
        async with build_sink(config) as sink:
            await sink.send(Record())

    assert 1 == len(lines)
    assert 1 == len(heads)


@pytest.mark.parametrize(
    ("environment", "warned"),
    [
        ({"HTTPS_PROXY": "http://proxy:3128"}, "HTTPS_PROXY"),
        ({"http_proxy": "http://proxy:3128"}, "http_proxy"),
        ({"HTTPS_PROXY": "http://proxy:3128", "NO_PROXY": "api.example.com"}, None),
        ({}, None),
    ],
    ids=["https-proxy", "lower-case", "no-proxy-covers-the-api", "none"],
)
def test_the_lean_client_warns_that_it_ignores_a_proxy_in_the_environment(
    monkeypatch: pytest.MonkeyPatch, environment: dict[str, str], warned: str | None
) -> None:
    """One warning at start, naming the variable and the way out, when the lean client would
    go around a proxy the environment names for the API."""
    for name, value in environment.items():
        monkeypatch.setenv(name, value)
    with capture_logs() as logs:
        build_sink(settings("https://api.example.com/v1"))

    warnings = [entry for entry in logs if entry["event"] == "http.proxy_ignored"]
    if warned is None:
        assert [] == warnings
    else:
        assert [warned] == [entry["variable"] for entry in warnings]
        assert "PIPELINE_HTTP_CLIENT=aiohttp" in warnings[0]["hint"]


# Checked at start


def problems(**overrides: object) -> list[str]:
    try:
        settings(overrides.pop("url", "https://api.example/v1"), **overrides)  # type: ignore[arg-type]
    except ValidationError as error:
        return describe_errors(error)
    return []


def test_a_proxy_setting_needs_the_aiohttp_client_and_a_proxy_url() -> None:
    """The lean client does not speak CONNECT: refused at start (exit 2), never ignored."""
    assert [
        "PIPELINE_HTTP_PROXY needs PIPELINE_HTTP_CLIENT=aiohttp (the lean client does not speak"
        " to proxies)"
    ] == problems(http_proxy="http://proxy:3128")
    assert ["PIPELINE_HTTP_PROXY: no scheme: add http:// or https://"] == problems(
        http_proxy="proxy:3128", http_client="aiohttp"
    )
    assert ["PIPELINE_HTTP_PROXY: must be a URL such as http://proxy.example:3128"] == problems(
        http_proxy="http://", http_client="aiohttp"
    )
    assert [] == problems(http_proxy="http://user:pw@proxy:3128", http_client="aiohttp")


@pytest.mark.parametrize("kind", ["lean", "aiohttp"])
async def test_a_configured_token_wins_over_credentials_in_the_url(kind: str) -> None:
    """``PIPELINE_SPACE_API_TOKEN`` (or OAuth2) is what the API sees; the URL's
    ``user:password@`` is sent as Basic only when nothing else authenticates."""
    handler, heads = recording()
    async with server(handler) as base:
        url = base.replace("://", "://user:pw@") + "/v1"
        async with build_sink(settings(url, http_client=kind, space_api_token="t0k")) as sink:
            await sink.send(Record())

    assert b"Bearer t0k" == header(heads[0], b"authorization")


# Bytes nobody asked for (the conformance suite has the cases; these are the edges it misses)

CREATED = b"HTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n"
STALE = b"HTTP/1.1 422 Unprocessable Entity\r\nContent-Length: 5\r\n\r\nstale"


def answering_then(stray: bytes) -> tuple[Handler, list[int]]:
    """A keep-alive server answering 201; on its first connection, 20 ms after the first answer,
    it also sends ``stray``. Records which connection each request came on."""
    connections: list[int] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connection = len(set(connections)) + 1
        while True:
            await read_request(reader)
            connections.append(connection)
            writer.write(CREATED)
            if connection == 1 and connections.count(1) == 1:
                await writer.drain()
                await asyncio.sleep(0.02)
                writer.write(stray)

    return handler, connections


@BOTH
async def test_half_an_answer_sent_to_an_idle_connection_retires_it(make: Client) -> None:
    """The start of an answer nobody asked for: the server has lost count on that connection,
    so the next request goes out on a new one, and gets its own 201."""
    handler, connections = answering_then(b"HTTP/1.1 422 Unproc")
    async with server(handler) as base, make() as http:
        first = await http.request("POST", f"{base}/v1", {}, b"x")
        await asyncio.sleep(0.1)  # the stray bytes arrive meanwhile
        second = await http.request("POST", f"{base}/v1", {}, b"x")

    assert (201, 201) == (first.status, second.status)
    assert [1, 2] == connections, "used again after stray bytes"


class StrayAfterFirstAnswer(socketserver.StreamRequestHandler):
    """Answers 201 to every request; on the first connection, sends a stale 422 after the first."""

    connections: list[int]

    def handle(self) -> None:
        connections = self.connections
        connection = len(set(connections)) + 1
        while head := self.rfile.readline():
            length = 0
            while head not in (b"\r\n", b""):
                name, _, value = head.partition(b":")
                if name.strip().lower() == b"content-length":
                    length = int(value)
                head = self.rfile.readline()
            self.rfile.read(length)
            connections.append(connection)
            self.wfile.write(CREATED)
            if connection == 1 and connections.count(1) == 1:
                time.sleep(0.02)
                self.wfile.write(STALE)


@contextmanager
def server_in_a_thread() -> Iterator[tuple[str, list[int]]]:
    """A :class:`StrayAfterFirstAnswer` server the test's event loop cannot hold up."""
    connections: list[int] = []
    handler = type("Handler", (StrayAfterFirstAnswer,), {"connections": connections})
    with socketserver.ThreadingTCPServer(("127.0.0.1", 0), handler) as srv:
        srv.daemon_threads = True
        thread = threading.Thread(target=srv.serve_forever, daemon=True)
        thread.start()
        try:
            yield f"http://127.0.0.1:{srv.server_address[1]}", connections
        finally:
            srv.shutdown()


@BOTH
async def test_an_answer_the_loop_has_not_read_yet_still_retires_the_connection(
    make: Client,
) -> None:
    """The stray answer is in the socket, not yet read when the next request takes the
    connection (the loop was busy): the socket itself is asked, so the 422 is never taken for
    the next request's answer."""
    with server_in_a_thread() as (base, connections):
        async with make() as http:
            first = await http.request("POST", f"{base}/v1", {}, b"x")
            time.sleep(0.1)  # noqa: ASYNC251 - the loop must not read the stray answer
            second = await http.request("POST", f"{base}/v1", {}, b"x")

    assert (201, 201) == (first.status, second.status)
    assert [1, 2] == connections, "used again after stray bytes"


# The answer's body, for the result topic


def answering(*answers: bytes) -> tuple[Handler, list[int]]:
    """A keep-alive server giving ``answers`` in turn; records the connection of each request."""
    connections: list[int] = []
    turn = iter(answers)

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            await read_request(reader)
            connections.append(id(writer))
            writer.write(next(turn))

    return handler, connections


def json_answer(body: bytes) -> bytes:
    head = b"HTTP/1.1 201 Created\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n"
    return head % len(body) + body


@ALL
async def test_an_accepted_answer_keeps_its_body_and_content_type_when_asked(
    make: Client,
) -> None:
    handler, _ = answering(json_answer(b'{"id": "t/0/7"}'))
    async with server(handler) as base, make() as http:
        answer = await http.request("POST", f"{base}/v1", {}, b"x", keep_body=1024)

    assert (201, b'{"id": "t/0/7"}', "application/json", False) == (
        answer.status,
        answer.body,
        answer.content_type,
        answer.truncated,
    )


@ALL
async def test_a_kept_body_beyond_its_limit_is_cut_and_said_so_and_the_connection_serves_on(
    make: Client,
) -> None:
    """The rest of a long answer is read and dropped, never kept: the connection stays usable."""
    long = json_answer(b"a" * 100_000)
    handler, connections = answering(long, json_answer(b"next"))
    async with server(handler) as base, make() as http:
        first = await http.request("POST", f"{base}/v1", {}, b"x", keep_body=10)
        second = await http.request("POST", f"{base}/v1", {}, b"x", keep_body=10)

    assert (b"a" * 10, True) == (first.body, first.truncated)
    assert (b"next", False) == (second.body, second.truncated)
    assert connections[0] == connections[1]


@ALL
async def test_an_accepted_answer_keeps_no_body_unless_asked(make: Client) -> None:
    handler, _ = answering(json_answer(b'{"id": 1}'))
    async with server(handler) as base, make() as http:
        answer = await http.request("POST", f"{base}/v1", {}, b"x")

    assert (b"", False) == (answer.body, answer.truncated)
