"""OAuth2 client credentials against a real token endpoint (the stub API's) over HTTP."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import AuthError
from pipeline.http_client import AiohttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.oauth2 import ClientCredentials, TokenSource
from tests.fakes import Record

pytestmark = pytest.mark.integration


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
    """A token living 6 s is replaced in its last few seconds, before the API would refuse it."""
    async with oauth_stub(oauth2_expires_in_s=6) as stub, AiohttpClient(Timeouts(), 4) as client:
        source = TokenSource(credentials(stub), client)
        first = await source.token()
        soon = await source.token()
        await asyncio.sleep(1.2)
        later = await source.token()
    assert first == soon
    assert first != later


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
