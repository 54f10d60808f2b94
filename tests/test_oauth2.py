"""OAuth2 client credentials against a real token endpoint (the stub API's) over HTTP."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import httpx
import orjson
import pytest

from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import AuthError
from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, ClosingClient, HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.oauth2 import ClientCredentials, TokenSource
from tests.fakes import FakeClock, Record

pytestmark = pytest.mark.integration

CLIENTS: dict[str, Callable[[], ClosingClient]] = {
    "lean": lambda: LeanClient(Timeouts(), 4),
    "aiohttp": lambda: AiohttpClient(Timeouts(), 4),
    "httpx": lambda: HttpxClient(httpx.AsyncHTTPTransport(), Timeouts()),
}


def oauth_stub(**overrides: object) -> StubServer:
    values: dict[str, object] = {
        "latency_ms": 0,
        "oauth2_client_id": "stage",
        "oauth2_client_secret": "s3cret",
        "oauth2_expires_in_s": 60,
    }
    return StubServer(StubConfig(**(values | overrides)))  # type: ignore[arg-type]


def credentials(stub: StubServer, **overrides: object) -> ClientCredentials:
    values: dict[str, object] = {
        "token_url": stub.token_url,
        "client_id": "stage",
        "client_secret": "s3cret",
        "scope": "space.write",
        "extra_params": {"audience": "space-api"},
    }
    return ClientCredentials(**(values | overrides))  # type: ignore[arg-type]


async def test_one_token_fetch_serves_every_concurrent_caller() -> None:
    """Twenty lanes needing a token at once cause one fetch (single flight), with the scope and
    the extra parameters sent along, and the secret never among the logged parameters."""
    async with oauth_stub(token_latency_ms=100) as stub, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(credentials(stub), client)
        tokens = await asyncio.gather(*(source.token() for _ in range(20)))
        stats = stub.stats()
    assert 1 == len(set(tokens))
    assert 1 == stats.token_requests
    assert 1 == stats.max_concurrent_token_requests
    assert "space.write" == stats.last_token_params["scope"]
    assert "space-api" == stats.last_token_params["audience"]


async def test_a_token_is_refreshed_before_it_expires() -> None:
    """A token living 60 s is kept for most of its life, then replaced in its last few seconds,
    before the API would refuse it."""
    clock = FakeClock()
    async with oauth_stub(oauth2_expires_in_s=60) as stub, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(credentials(stub), client, clock=clock)
        first = await source.token()
        clock.now += 50
        kept = await source.token()
        clock.now += 5
        later = await source.token()
    assert first == kept
    assert first != later


async def test_a_short_lived_token_is_fetched_once_per_half_lifetime_not_per_request() -> None:
    """A token living 3 s, shorter than the refresh margin: 400 requests over 4 s cause a fetch
    every half-lifetime at most (there once were 4,000 fetches for 4,000 records)."""
    clock = FakeClock()
    async with oauth_stub(oauth2_expires_in_s=3) as stub, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(credentials(stub), client, clock=clock)
        for _ in range(400):
            await source.token()
            clock.now += 0.01
        fetches = stub.stats().token_requests
    assert 2 <= fetches <= 4 / 1.5 + 1


@dataclass
class TokenEndpoint:
    """A raw token endpoint on loopback: every request gets ``answer``; counts what it served."""

    url: str
    requests: int = 0
    body_bytes_sent: int = 0


@asynccontextmanager
async def token_endpoint(
    answer: dict[str, object] | None = None, *, body_size: int = 0
) -> AsyncIterator[TokenEndpoint]:
    """Answer ``answer`` as JSON, or (``body_size``) a 2xx whose body is that many bytes."""
    endpoint = TokenEndpoint("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while head := await reader.readuntil(b"\r\n\r\n"):
                length = next(
                    int(line.split(b":")[1])
                    for line in head.lower().split(b"\r\n")
                    if line.startswith(b"content-length:")
                )
                await reader.readexactly(length)
                endpoint.requests += 1
                if body_size:
                    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % body_size)
                    chunk = b" " * 65536
                    while endpoint.body_bytes_sent < body_size:
                        writer.write(chunk)
                        await writer.drain()
                        endpoint.body_bytes_sent += len(chunk)
                    continue
                body = orjson.dumps(answer)
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n")
                writer.write(b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    endpoint.url = f"http://127.0.0.1:{port}/oauth2/token"
    async with server:
        yield endpoint


@pytest.mark.parametrize("expires_in", [0, -30, 0.001])
async def test_a_token_endpoint_claiming_no_lifetime_is_asked_once_a_second_at_most(
    expires_in: float,
) -> None:
    """``expires_in`` of zero, negative or a millisecond: 400 requests over 4 s still cause a
    fetch a second at most, never one per request."""
    clock = FakeClock()
    answer = {"access_token": "t", "token_type": "Bearer", "expires_in": expires_in}
    async with token_endpoint(answer) as endpoint, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(
            ClientCredentials(endpoint.url, "stage", "s3cret"), client, clock=clock
        )
        for _ in range(400):
            await source.token()
            clock.now += 0.01
    assert 1 <= endpoint.requests <= 5


@pytest.mark.parametrize("client_name", list(CLIENTS))
async def test_a_huge_token_answer_is_an_auth_outage_without_reading_it_all(
    client_name: str,
) -> None:
    """A token endpoint answering 32 MiB (one answered 635 MiB): the fetch fails as an auth
    outage saying the answer is too large, long before the body has been read."""
    async with token_endpoint(body_size=32 << 20) as endpoint, CLIENTS[client_name]() as client:
        source = TokenSource(ClientCredentials(endpoint.url, "stage", "s3cret"), client)
        with pytest.raises(AuthError, match="larger than 65536 bytes"):
            await source.token()
    assert endpoint.body_bytes_sent < 16 << 20


async def test_a_refused_token_is_fetched_anew_and_the_request_replayed() -> None:
    """The API refuses a token it revoked: the sink fetches a new one and replays once."""
    async with oauth_stub() as stub, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(credentials(stub), client)
        sink = HttpSink(HttpSinkConfig(stub.url), client, auth=source)
        await sink.send(Record(offset=1))
        stub.revoke_tokens()
        await sink.send(Record(offset=2))
        stats = stub.stats()
    assert 2 == stats.unique
    assert 2 == stats.token_requests
    assert 1 == stats.auth_failures


async def test_a_failing_token_endpoint_is_an_auth_outage_not_a_bad_record() -> None:
    """Wrong client credentials: AuthError (the gate holds everything back), not a rejection."""
    async with oauth_stub() as stub, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(credentials(stub, client_secret="wrong"), client)
        sink = HttpSink(HttpSinkConfig(stub.url), client, auth=source)
        with pytest.raises(AuthError) as raised:
            await sink.send(Record())
    assert "401" in str(raised.value)
    assert raised.value.retryable is True


def test_the_client_secret_is_not_in_a_repr() -> None:
    """A logged configuration never shows the secret."""
    assert "s3cret" not in repr(ClientCredentials("https://t/token", "stage", "s3cret"))
