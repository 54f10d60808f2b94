"""Every conformance case runs once per HTTP client, through the sink: ``lean`` and ``aiohttp``."""

from __future__ import annotations

import pytest

from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, HttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from tests.conformance.verdicts import SinkTo

# Read timeout of an answer: short, so a client that hangs fails the case quickly.
READ_S = 2.0


@pytest.fixture(params=["lean", "aiohttp"])
def client_name(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def sink_to(client_name: str) -> SinkTo:
    """``sink_to(url, read=..., **HttpSinkConfig options)``: a sink on the client under test."""

    def sink_to(url: str, *, read: float = READ_S, **options: object) -> HttpSink:
        timeouts = Timeouts(connect=2.0, read=read)
        client: HttpClient = (
            LeanClient(timeouts, 8) if client_name == "lean" else AiohttpClient(timeouts, 8)
        )
        return HttpSink(HttpSinkConfig(url=url, **options), client)

    return sink_to


OUTCOMES = ("delivered", "rejected ", "retried ", "outage ", "crashed: ")


def pytest_assertrepr_compare(op: str, left: object, right: object) -> list[str] | None:
    """Expected and actual outcomes of a case side by side, on one line each, never cut short."""
    if op == "==" and _outcomes(left) and _outcomes(right):
        return [f"outcomes {right} were expected to be {left}"]
    return None


def _outcomes(value: object) -> bool:
    return isinstance(value, list) and all(
        isinstance(item, str) and item.startswith(OUTCOMES) for item in value
    )
