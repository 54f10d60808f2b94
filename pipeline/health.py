"""The operations endpoints on the metrics port: ``/metrics``, ``/healthz``, ``/readyz``.

The admin API (:mod:`pipeline.admin`) is served here too when it is enabled.

They are served from the stage's own event loop on purpose: if the loop is stuck, ``/healthz``
does not answer, the kubelet's probe times out, and the pod is restarted.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass

import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

from pipeline import metrics
from pipeline.admin import AdminApi
from pipeline.errors import ConfigError

log = structlog.get_logger("pipeline.health")


@dataclass(frozen=True, slots=True)
class Verdict:
    """A probe's answer: healthy or not, and why not.

    ``degraded`` names what is wrong without failing the probe: for ``/readyz`` a halted
    partition or an API outage. Those are for alerts and operators; a probe failing for them
    would block rollouts and node drains, and cure nothing. ``reason`` then says them too.
    """

    ok: bool
    reason: str = "ok"
    degraded: tuple[str, ...] = ()


class OpsServer:
    """Serve metrics and probes until closed.

    Args:
        host: Interface to bind.
        port: Port to bind; 0 picks a free one (see :attr:`port`).
        live: Asked on every ``/healthz``.
        ready: Asked on every ``/readyz``.
        admin: The admin API to serve too, if any.
        settings: The settings that chose ``host`` and ``port``, named when they cannot be
            bound (another process holds the port, the host is no address of this machine).
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        live: Callable[[], Verdict],
        ready: Callable[[], Verdict],
        admin: AdminApi | None = None,
        settings: tuple[str, str] = ("host", "port"),
    ) -> None:
        self._host = host
        self._settings = settings
        self._requested_port = port
        self._live = live
        self._ready = ready
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/readyz", self._readyz)
        if admin is not None:
            admin.mount(app)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        self.port = port
        self._closed = False

    async def __aenter__(self) -> OpsServer:
        await self._runner.setup()
        site = web.TCPSite(self._runner, self._host, self._requested_port)
        try:
            await site.start()
        except OSError as error:
            await self._runner.cleanup()
            raise self._unbindable(error) from None
        sockets = self._runner.addresses
        if sockets:
            self.port = int(sockets[0][1])
        log.info("ops.listening", host=self._host, port=self.port)
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def _unbindable(self, error: OSError) -> ConfigError:
        """What to change when the address cannot be bound: the port, or the host."""
        host_setting, port_setting = self._settings
        address = f"{self._host}:{self._requested_port}"
        # asyncio's message repeats the address; the errno's own words are the reason.
        code = error.errno or 0
        reason = os.strerror(code) if code > 0 else (error.strerror or str(error))
        if error.errno in (errno.EADDRINUSE, errno.EACCES):
            return ConfigError(
                [
                    f"{port_setting}={self._requested_port}: cannot listen on {address}"
                    f" ({reason.lower()}): choose a free port, or 0 for any"
                ]
            )
        return ConfigError(
            [
                f"{host_setting}={self._host}: cannot listen on {address} ({reason.lower()}):"
                " name an address of this machine (0.0.0.0 for all)"
            ]
        )

    async def close(self) -> None:
        """Stop serving; later calls do nothing."""
        if not self._closed:
            self._closed = True
            await self._runner.cleanup()

    async def _metrics(self, _: web.Request) -> web.Response:
        metrics.flush()  # what the hot path counted in plain integers since the last flush
        body = generate_latest(REGISTRY)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def _healthz(self, _: web.Request) -> web.Response:
        return self._answer(self._live())

    async def _readyz(self, _: web.Request) -> web.Response:
        return self._answer(self._ready())

    @staticmethod
    def _answer(verdict: Verdict) -> web.Response:
        return web.json_response(
            {"ok": verdict.ok, "reason": verdict.reason, "degraded": list(verdict.degraded)},
            status=200 if verdict.ok else 503,
        )
