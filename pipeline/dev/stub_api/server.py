"""A reference Space API receiver: a real HTTP server that checks what the stage promises.

The stage's guarantees (in order per partition, nothing lost, retries honoured) can only be seen
from the receiving side, so the demo, the benchmark and the integration tests all point the stage
at this stub and then ask it what it saw (``GET /stats`` or :meth:`StubServer.stats`). Faults are
injected here as well, because an outage is easiest to stage where the responses are made.

A request is judged (and, if accepted, recorded) when it *arrives*, like a real API that commits
before it answers; the latency is spent afterwards. So a response lost to a client timeout still
counts as accepted and its retry as a duplicate, and the stub's own jitter can never reorder what a
partition delivered. A batch is judged once its body is in, since its records are there; the fault
window that applies is still the one in force when it arrived.

Routes: ``StubConfig.path`` and every path below it is the Space API (``POST``, ``PUT``, ``PATCH``,
``DELETE``); ``POST /oauth2/token`` issues tokens when OAuth2 is configured; ``GET /healthz``,
``GET /stats`` and ``POST /reset`` serve tests and scripts; any other path answers 404.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Mapping
from http import HTTPStatus
from typing import Self

from aiohttp import web

from pipeline.dev.stub_api.config import REDIRECT_LOCATION, StubConfig, within
from pipeline.dev.stub_api.oauth2 import Tokens, grant
from pipeline.dev.stub_api.recorder import API_METHODS, Batch, Recorder, Verdict
from pipeline.dev.stub_api.stats import StubStats

_CHALLENGE_HEADERS = {401: "WWW-Authenticate", 407: "Proxy-Authenticate"}


class StubServer:
    """The stub on loopback inside the caller's event loop, so tests can read and steer it directly.

    ``url`` is the API path (``StubConfig.path``); see the module docstring for the other routes.
    """

    def __init__(
        self, config: StubConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config or StubConfig()
        self._host, self._port = host, port
        self._tokens = Tokens()
        self._rec = Recorder(self._config, self._tokens)
        self._overshoot = 0.001  # how late a sleep ends, learnt as the stub runs
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        app.router.add_post("/oauth2/token", self._token)
        app.router.add_route("*", "/{path:.*}", self._ingest)
        self._app = app

    async def start(self) -> Self:
        """Bind before returning, so ``url`` names the real port when ``port=0``."""
        runner = web.AppRunner(self._app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        self._runner = runner
        await web.TCPSite(runner, self._host, self._port).start()
        self._port = runner.addresses[0][1]
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop serving; safe to call twice, since tests close in both body and fixture."""
        runner, self._runner = self._runner, None
        if runner is not None:
            await runner.cleanup()

    @property
    def base_url(self) -> str:
        """Where ``/stats``, ``/reset``, ``/healthz`` and ``/oauth2/token`` live."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The Space API URL to give the stage."""
        return f"{self.base_url}{self._config.path}"

    @property
    def token_url(self) -> str:
        """The OAuth2 token endpoint to give the stage."""
        return f"{self.base_url}/oauth2/token"

    @property
    def config(self) -> StubConfig:
        """The faults now in force."""
        return self._config

    def stats(self, *, offsets: bool = False) -> StubStats:
        """Snapshot without HTTP; ``offsets=True`` also copies offsets, keys, paths and arrivals."""
        return self._rec.snapshot(offsets=offsets)

    def reset(self) -> None:
        """Forget everything seen so far and re-seed, so each scenario starts clean.

        Issued tokens stay valid (a client's cached token survives); see :meth:`revoke_tokens`.
        """
        self._rec = Recorder(self._config, self._tokens)

    def set_config(self, config: StubConfig) -> None:
        """Change faults mid-run, keeping the counts; bursts and fault windows count again."""
        self._config = config
        self._rec.faults.restart(config)

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far, so the next API call with one answers 401."""
        self._tokens.revoke_all()

    async def _ingest(self, request: web.Request) -> web.Response:
        rec = self._rec
        if not within(request.path, rec.config.path):
            rec.not_found()
            return _error(404, f"the Space API lives at {rec.config.path}")
        arrived_at = time.monotonic()
        arrival = rec.arrive(request.method, request.rel_url.raw_path, request.headers)
        try:
            body = await request.read()
            if isinstance(arrival, Batch):
                verdict = rec.settle(arrival, request.content_type, body)
            else:
                verdict = arrival
            cfg = rec.config
            delay_ms = cfg.latency_ms
            if cfg.jitter_ms:
                delay_ms = max(
                    0.0, delay_ms + rec.faults.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms)
                )
            if delay_ms > 0:
                await self._until(arrived_at + delay_ms / 1000)
            retry_after_s = math.ceil(cfg.retry_after_s)
            if verdict.status < 300 and cfg.answer_body == "id":
                rec.answer(Verdict(201, verdict.reason), retry_after_s)
                return web.json_response({"id": request.headers.get("Idempotency-Key")}, status=201)
            rec.answer(verdict, retry_after_s)
            return _response(verdict, retry_after_s)
        finally:
            rec.depart(arrival.partition)

    async def _until(self, deadline: float) -> None:
        """Sleep until ``deadline``, so an answer leaves ``latency`` after its request arrived.

        Reading the body counts, and the event loop wakes up late (epoll waits whole
        milliseconds): about a millisecond per sleep here, which an "API at 20 ms" must not
        add. The stub learns how late its sleeps end and starts them that much earlier.
        """
        started = time.monotonic()
        planned = max(deadline - started - self._overshoot, 0.0)
        await asyncio.sleep(planned)
        late = time.monotonic() - started - planned
        self._overshoot += 0.1 * (late - self._overshoot)

    async def _token(self, request: web.Request) -> web.Response:
        rec = self._rec
        cfg = rec.config
        if cfg.oauth2_client_id is None:
            rec.not_found()
            return _error(404, "OAuth2 is not configured (oauth2_client_id)")
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str) and k != "client_secret"}
        rec.token_arrive(params)
        try:
            if cfg.token_latency_ms > 0:
                await asyncio.sleep(cfg.token_latency_ms / 1000)
            return grant(cfg, self._tokens, request.headers, form)
        finally:
            rec.token_depart()

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, request: web.Request) -> web.Response:
        offsets = request.query.get("offsets", "0") not in ("", "0", "false")
        return web.json_response(self.stats(offsets=offsets).to_dict())

    async def _reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)


def _response(verdict: Verdict, retry_after_s: int) -> web.Response:
    status = verdict.status
    if status < 300:
        return web.Response(status=status)
    headers = {}
    if status == 429:
        headers["Retry-After"] = str(retry_after_s)
    elif status == 405:
        headers["Allow"] = ", ".join(API_METHODS)
    elif status in _CHALLENGE_HEADERS:
        headers[_CHALLENGE_HEADERS[status]] = "Bearer"
    elif 300 <= status < 400:
        headers["Location"] = REDIRECT_LOCATION
    return _error(status, verdict.reason, headers)


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": HTTPStatus(status).phrase, "reason": reason}
    return web.json_response(body, status=status, headers=headers)


async def serve(config: StubConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until cancelled; the one printed line is how scripts learn the URL (``--port 0``)."""
    async with StubServer(config, host, port) as stub:
        print(f"stub Space API listening on {stub.url} (stats: {stub.base_url}/stats)", flush=True)
        await asyncio.Event().wait()
