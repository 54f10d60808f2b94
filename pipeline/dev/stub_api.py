"""A reference Space API receiver: a real HTTP server that checks what the stage promises.

The stage's guarantees (in order per partition, nothing lost, retries honoured) can only be seen
from the receiving side, so the demo, the benchmark and the integration tests all point the stage
at this stub and then ask it what it saw (``GET /stats`` or :meth:`StubServer.stats`). Faults are
injected here as well, because an outage is easiest to stage where the responses are made.

A request is judged (and, if accepted, recorded) when it *arrives*, like a real API that commits
before it answers; the latency is spent afterwards. So a response lost to a client timeout still
counts as accepted and its retry as a duplicate, and the stub's own jitter can never reorder what a
partition delivered.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import random
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Self

from aiohttp import web

_RATE_FIELDS = ("error_rate", "throttle_rate", "reject_rate")
_NON_NEGATIVE_FIELDS = ("latency_ms", "jitter_ms", "retry_after_s", "error_burst", "throttle_burst")


@dataclass(frozen=True, slots=True)
class StubConfig:
    """How the stub misbehaves; one frozen value, so an outage starts and ends by swapping it.

    Rates are fractions of requests drawn from one uniform number, so they add up exactly (their
    sum may not exceed 1). Bursts hit the first requests after start, reset or ``set_config``
    (errors first, then throttles), whatever their partition. ``jitter_ms`` spreads the latency
    uniformly over ``latency_ms ± jitter_ms``, never below zero. ``Retry-After`` is sent as whole
    seconds rounded up (RFC 9110 allows no fractions, and the stage ignores what it cannot parse).
    """

    latency_ms: float = 20.0
    jitter_ms: float = 0.0
    error_rate: float = 0.0
    throttle_rate: float = 0.0
    retry_after_s: float = 1.0
    error_burst: int = 0
    throttle_burst: int = 0
    reject_rate: float = 0.0
    reject_keys: frozenset[str] = frozenset()
    seed: int | None = None

    def __post_init__(self) -> None:
        """Fail at construction, so a bad fault setting never reaches a running benchmark."""
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        total = self.error_rate + self.throttle_rate + self.reject_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"error_rate + throttle_rate + reject_rate must be <= 1, got {total:g}"
            )
        for name in _NON_NEGATIVE_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")


@dataclass(frozen=True, slots=True)
class PartitionStats:
    """One partition as the API saw it; ``offsets`` only on request, since it grows with the run."""

    count: int
    unique: int
    last_offset: int | None
    max_offset: int | None
    order_violations: int
    max_concurrent: int
    throttled: int
    min_retry_after_gap_s: float | None
    offsets: tuple[int, ...] | None = None


@dataclass(frozen=True, slots=True)
class StubStats:
    """A snapshot, identical in-process and over ``GET /stats``, so checks run the same either way.

    ``*_at`` times are ``time.monotonic()`` (system-wide on Linux, so comparable across processes
    on one host) and ``*_unix`` their wall-clock twins; throughput is ``unique`` over
    ``last_accept_at - first_request_at``.
    """

    requests: int
    accepted: int
    unique: int
    duplicates: int
    order_violations: int
    header_mismatches: int
    max_concurrent_total: int
    in_flight: int
    statuses: Mapping[int, int]
    first_request_at: float | None
    first_request_unix: float | None
    last_accept_at: float | None
    last_accept_unix: float | None
    min_retry_after_gap_s: float | None
    partitions: Mapping[str, PartitionStats]
    keys: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON shape, leaving out the long lists unless they were asked for."""
        data = asdict(self)
        data["statuses"] = {str(status): n for status, n in self.statuses.items()}
        if self.keys is None:
            del data["keys"]
        for part in data["partitions"].values():
            if part["offsets"] is None:
                del part["offsets"]
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StubStats:
        """Rebuild a snapshot from ``GET /stats``, for callers in another process (bench, demo)."""
        parts = {
            key: PartitionStats(**{**part, "offsets": _opt_tuple(part.get("offsets"))})
            for key, part in data["partitions"].items()
        }
        statuses = {int(status): n for status, n in data["statuses"].items()}
        return cls(
            **{
                **data,
                "statuses": statuses,
                "partitions": parts,
                "keys": _opt_tuple(data.get("keys")),
            }
        )


def _opt_tuple(items: list[Any] | None) -> tuple[Any, ...] | None:
    return None if items is None else tuple(items)


@dataclass(slots=True)
class _Partition:
    offsets: list[int] = field(default_factory=list)
    unique: int = 0
    max_offset: int | None = None
    order_violations: int = 0
    in_flight: int = 0
    max_concurrent: int = 0
    throttled: int = 0
    throttled_at: float | None = None
    min_retry_after_gap_s: float | None = None

    def snapshot(self, *, offsets: bool) -> PartitionStats:
        return PartitionStats(
            count=len(self.offsets),
            unique=self.unique,
            last_offset=self.offsets[-1] if self.offsets else None,
            max_offset=self.max_offset,
            order_violations=self.order_violations,
            max_concurrent=self.max_concurrent,
            throttled=self.throttled,
            min_retry_after_gap_s=self.min_retry_after_gap_s,
            offsets=tuple(self.offsets) if offsets else None,
        )


@dataclass(slots=True)
class _Verdict:
    status: int
    reason: str
    partition: _Partition | None


class _Recorder:
    """One run's observations; replaced whole on reset, so requests in flight settle in the old."""

    def __init__(self, config: StubConfig) -> None:
        self.config = config
        self.rng = random.Random(config.seed)
        self.burst_seq = 0
        self.requests = self.accepted = self.duplicates = 0
        self.order_violations = self.header_mismatches = 0
        self.in_flight = self.max_concurrent_total = 0
        self.statuses: dict[int, int] = {}
        self.first_request_at: float | None = None
        self.first_request_unix: float | None = None
        self.last_accept_at: float | None = None
        self.last_accept_unix: float | None = None
        self.keys: dict[str, None] = {}  # insertion-ordered set of accepted idempotency keys
        self.partitions: dict[str, _Partition] = {}

    def arrive(self, headers: Mapping[str, str]) -> _Verdict:
        """Judge a request on arrival, and record it at once if it is accepted."""
        now = time.monotonic()
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at, self.first_request_unix = now, time.time()
        self.in_flight += 1
        self.max_concurrent_total = max(self.max_concurrent_total, self.in_flight)
        topic = headers.get("X-Kafka-Topic")
        partition = headers.get("X-Kafka-Partition", "")
        offset = headers.get("X-Kafka-Offset", "")
        key = headers.get("Idempotency-Key")
        if (
            topic is None
            or key != f"{topic}/{partition}/{offset}"
            or not partition.isdecimal()
            or not offset.isdecimal()
        ):
            self.header_mismatches += 1
            return _Verdict(
                400, f"Idempotency-Key {key!r} does not match the X-Kafka-* headers", None
            )
        part = self.partitions.get(f"{topic}/{partition}")
        if part is None:
            part = self.partitions[f"{topic}/{partition}"] = _Partition()
        part.in_flight += 1
        part.max_concurrent = max(part.max_concurrent, part.in_flight)
        if part.throttled_at is not None:
            gap = now - part.throttled_at
            part.throttled_at = None
            if part.min_retry_after_gap_s is None or gap < part.min_retry_after_gap_s:
                part.min_retry_after_gap_s = gap
        status, reason = self._decide(key)
        if status < 300:
            self._accept(part, key, int(offset))
        return _Verdict(status, reason, part)

    def _decide(self, key: str) -> tuple[int, str]:
        cfg, seq = self.config, self.burst_seq
        self.burst_seq += 1
        if seq < cfg.error_burst:
            return 500, f"error burst ({seq + 1} of {cfg.error_burst})"
        if seq < cfg.error_burst + cfg.throttle_burst:
            return 429, f"throttle burst ({seq + 1 - cfg.error_burst} of {cfg.throttle_burst})"
        if key in cfg.reject_keys:
            return 422, f"idempotency key {key} is on the stub's reject list"
        if cfg.error_rate or cfg.throttle_rate or cfg.reject_rate:
            return self._draw(cfg)
        return 204, ""

    def _draw(self, cfg: StubConfig) -> tuple[int, str]:
        draw = self.rng.random()
        if draw < cfg.error_rate:
            return self.rng.choice((500, 503)), f"random error (error_rate={cfg.error_rate})"
        if draw < cfg.error_rate + cfg.throttle_rate:
            return 429, f"random throttle (throttle_rate={cfg.throttle_rate})"
        if draw < cfg.error_rate + cfg.throttle_rate + cfg.reject_rate:
            return 422, f"random rejection (reject_rate={cfg.reject_rate})"
        return 204, ""

    def _accept(self, part: _Partition, key: str, offset: int) -> None:
        self.accepted += 1
        part.offsets.append(offset)
        if key in self.keys:
            self.duplicates += 1
            return
        self.keys[key] = None
        part.unique += 1
        if part.max_offset is not None and offset < part.max_offset:
            part.order_violations += 1
            self.order_violations += 1
        else:
            part.max_offset = offset

    def answer(self, verdict: _Verdict) -> None:
        """Stamp the moment the client is told, which is when Retry-After starts to count."""
        now = time.monotonic()
        self.statuses[verdict.status] = self.statuses.get(verdict.status, 0) + 1
        if verdict.status < 300:
            self.last_accept_at, self.last_accept_unix = now, time.time()
        elif verdict.status == 429 and verdict.partition is not None:
            verdict.partition.throttled += 1
            verdict.partition.throttled_at = now

    def depart(self, verdict: _Verdict) -> None:
        self.in_flight -= 1
        if verdict.partition is not None:
            verdict.partition.in_flight -= 1

    def snapshot(self, *, offsets: bool) -> StubStats:
        gaps = [p.min_retry_after_gap_s for p in self.partitions.values()]
        return StubStats(
            requests=self.requests,
            accepted=self.accepted,
            unique=len(self.keys),
            duplicates=self.duplicates,
            order_violations=self.order_violations,
            header_mismatches=self.header_mismatches,
            max_concurrent_total=self.max_concurrent_total,
            in_flight=self.in_flight,
            statuses=dict(self.statuses),
            first_request_at=self.first_request_at,
            first_request_unix=self.first_request_unix,
            last_accept_at=self.last_accept_at,
            last_accept_unix=self.last_accept_unix,
            min_retry_after_gap_s=min((g for g in gaps if g is not None), default=None),
            partitions={k: p.snapshot(offsets=offsets) for k, p in self.partitions.items()},
            keys=tuple(self.keys) if offsets else None,
        )


class StubServer:
    """The stub on loopback inside the caller's event loop, so tests can read and steer it directly.

    Any ``POST`` path except ``/reset`` is the Space API; ``url`` merely names one (``/items``).
    """

    def __init__(
        self, config: StubConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config or StubConfig()
        self._host, self._port = host, port
        self._rec = _Recorder(self._config)
        self._runner: web.AppRunner | None = None
        app = web.Application(client_max_size=16 * 1024 * 1024)
        app.router.add_get("/healthz", self._healthz)
        app.router.add_get("/stats", self._stats)
        app.router.add_post("/reset", self._reset)
        app.router.add_post("/{path:.*}", self._ingest)
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
        """Where ``/stats``, ``/reset`` and ``/healthz`` live."""
        host = f"[{self._host}]" if ":" in self._host else self._host
        return f"http://{host}:{self._port}"

    @property
    def url(self) -> str:
        """The Space API URL to give the stage."""
        return f"{self.base_url}/items"

    @property
    def config(self) -> StubConfig:
        """The faults now in force."""
        return self._config

    def stats(self, *, offsets: bool = False) -> StubStats:
        """Snapshot without HTTP; ``offsets=True`` copies every offset and key, so poll without."""
        return self._rec.snapshot(offsets=offsets)

    def reset(self) -> None:
        """Forget everything seen so far and re-seed, so each scenario starts clean."""
        self._rec = _Recorder(self._config)

    def set_config(self, config: StubConfig) -> None:
        """Change faults mid-run, keeping the counts; bursts count again from this call."""
        rec = self._rec
        if config.seed != rec.config.seed:
            rec.rng = random.Random(config.seed)
        rec.config = self._config = config
        rec.burst_seq = 0

    async def _ingest(self, request: web.Request) -> web.Response:
        rec = self._rec
        verdict = rec.arrive(request.headers)
        try:
            await request.read()
            cfg = rec.config
            delay_ms = cfg.latency_ms
            if cfg.jitter_ms:
                delay_ms = max(0.0, delay_ms + rec.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms))
            if delay_ms > 0:
                await asyncio.sleep(delay_ms / 1000)
            rec.answer(verdict)
            return _response(verdict, cfg.retry_after_s)
        finally:
            rec.depart(verdict)

    async def _healthz(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _stats(self, request: web.Request) -> web.Response:
        offsets = request.query.get("offsets", "0") not in ("", "0", "false")
        return web.json_response(self.stats(offsets=offsets).to_dict())

    async def _reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.Response(status=204)


def _response(verdict: _Verdict, retry_after_s: float) -> web.Response:
    if verdict.status < 300:
        return web.Response(status=verdict.status)
    headers = {"Retry-After": str(math.ceil(retry_after_s))} if verdict.status == 429 else None
    body = {"error": HTTPStatus(verdict.status).phrase, "reason": verdict.reason}
    return web.json_response(body, status=verdict.status, headers=headers)


def _rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a number between 0 and 1, got {text!r}"
        ) from None
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"expected a number between 0 and 1, got {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline stub-api`` options here, next to the settings they feed."""
    d = StubConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    add("--port", type=int, default=8080, help="port to bind, 0 for any (default: %(default)s)")
    add("--latency-ms", type=float, default=d.latency_ms, help="response delay (%(default)s)")
    add("--jitter-ms", type=float, default=d.jitter_ms, help="± spread of the delay (%(default)s)")
    add("--error-rate", type=_rate, default=d.error_rate, help="fraction answered 500/503")
    add("--throttle-rate", type=_rate, default=d.throttle_rate, help="fraction answered 429")
    add("--retry-after-s", type=float, default=d.retry_after_s, help="Retry-After on 429s")
    add("--error-burst", type=int, default=d.error_burst, help="first N requests get 500")
    add("--throttle-burst", type=int, default=d.throttle_burst, help="next N requests get 429")
    add("--reject-rate", type=_rate, default=d.reject_rate, help="fraction answered 422")
    add("--reject-key", action="append", default=[], help="always 422 this key (repeatable)")
    add("--seed", type=int, default=None, help="seed the fault draws for a repeatable run")


def config_from_args(ns: argparse.Namespace) -> StubConfig:
    """Build the config; raises ``ValueError`` for combinations argparse cannot see (rate sum)."""
    return StubConfig(
        latency_ms=ns.latency_ms,
        jitter_ms=ns.jitter_ms,
        error_rate=ns.error_rate,
        throttle_rate=ns.throttle_rate,
        retry_after_s=ns.retry_after_s,
        error_burst=ns.error_burst,
        throttle_burst=ns.throttle_burst,
        reject_rate=ns.reject_rate,
        reject_keys=frozenset(ns.reject_key),
        seed=ns.seed,
    )


async def serve(config: StubConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until cancelled; the one printed line is how scripts learn the URL (``--port 0``)."""
    async with StubServer(config, host, port) as stub:
        print(f"stub Space API listening on {stub.url} (stats: {stub.base_url}/stats)", flush=True)
        await asyncio.Event().wait()
