"""The reference Space API over real HTTP on loopback, plain or behind a fault proxy."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from pipeline.dev.stub_api import StubConfig, StubServer
from tests.faultproxy import FaultProxy


@pytest.fixture
async def stub() -> AsyncIterator[StubServer]:
    """The reference Space API over real HTTP on loopback, answering in about 2 ms."""
    async with StubServer(StubConfig(latency_ms=2.0)) as server:
        yield server


@dataclass
class ProxiedStub:
    """The stub API and the proxy in front of it; give the stage ``url``, ask ``stub`` for stats."""

    stub: StubServer
    proxy: FaultProxy

    @property
    def base_url(self) -> str:
        """The stub's root (``/stats``, ``/healthz``) through the proxy."""
        return f"http://{self.proxy.address}"

    @property
    def url(self) -> str:
        """The Space API URL through the proxy."""
        return f"{self.base_url}/items"


@pytest.fixture
async def proxied_stub() -> AsyncIterator[ProxiedStub]:
    """The stub API (answering in about 2 ms, like ``stub``) behind a plain (HTTP) fault proxy."""
    async with StubServer(StubConfig(latency_ms=2.0)) as server:
        upstream = httpx.URL(server.base_url)
        assert upstream.port is not None
        async with FaultProxy(upstream.host, upstream.port) as proxy:
            yield ProxiedStub(server, proxy)
