"""Which HTTP transport should an asyncio service use to POST small bodies, keeping httpx's API?

An aiohttp.web server runs in a separate process on 127.0.0.1 (so its CPU is not charged to the
client's event loop) and answers every POST with 204 after an optional ``asyncio.sleep``.
Each client variant then sends up to N requests (or for at most ``--seconds``) from C worker
coroutines, each awaiting its own requests in a loop, over a pool sized to C connections
(max_connections = max_keepalive = C), after a warm-up that opens the whole pool.

Reported per variant: requests/s, client CPU seconds per 1,000 requests (``time.process_time``
delta of this process), client CPU % of one core, p50/p99 latency, server CPU % of one core,
how many distinct TCP connections the server saw during the measured window (should be <= C:
no churn) and errors.

    python bench/transports.py [--requests N] [--quick]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import multiprocessing as mp
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from typing import Any

import aiohttp
import httpx
from aiohttp import web
from httpx_aiohttp import AiohttpTransport

from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, Timeouts

try:  # optional extra rows: `pip install httpx2`
    import httpx2
    from httpx_aiohttp.httpx2 import AiohttpTransport as Httpx2AiohttpTransport
except ImportError:  # pragma: no cover - depends on the environment
    httpx2 = None  # type: ignore[assignment]
    Httpx2AiohttpTransport = None  # type: ignore[assignment,misc]

HOST = "127.0.0.1"
# ~200-byte JSON body, like the service's API calls.
BODY = json.dumps(
    {
        "partition": 3,
        "offset": 1234567,
        "key": "order-000042",
        "ts": "2025-01-01T00:00:00.000Z",
        "payload": {"metric": "cpu.utilisation", "value": 0.4375, "host": "worker-17"},
        "pad": "x" * 40,
    },
    separators=(",", ":"),
).encode()
HEADERS = {"content-type": "application/json"}
TIMEOUT_S = 5.0
WARMUP_MIN_REQUESTS = 100

# --------------------------------------------------------------------------- server process


class _ServerState:
    def __init__(self) -> None:
        self.peers: set[Any] = set()
        self.requests = 0

    async def post(self, request: web.Request) -> web.Response:
        await request.read()
        transport = request.transport
        self.peers.add(transport.get_extra_info("peername") if transport else None)
        self.requests += 1
        latency_ms = int(request.match_info["ms"])
        if latency_ms:
            await asyncio.sleep(latency_ms / 1000)
        return web.Response(status=204)

    async def stats(self, _request: web.Request) -> web.Response:
        """Return server CPU, connections and requests since the last call, then reset."""
        body = {
            "cpu": time.process_time(),
            "conns": len(self.peers),
            "requests": self.requests,
        }
        self.peers.clear()
        self.requests = 0
        return web.json_response(body)


async def _serve_async(ready: Connection) -> None:
    state = _ServerState()
    app = web.Application()
    app.router.add_post("/post/{ms:\\d+}", state.post)
    app.router.add_get("/stats", state.stats)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, HOST, 0, backlog=1024)
    await site.start()
    ready.send(runner.addresses[0][1])
    ready.close()
    await asyncio.Event().wait()  # until terminated by the parent


def _serve(ready: Connection) -> None:
    asyncio.run(_serve_async(ready))


# --------------------------------------------------------------------------- client variants

SendFn = Callable[[], Awaitable[int]]
Opener = Callable[[int, str], AbstractAsyncContextManager[SendFn]]


def _httpx_limits(concurrency: int) -> httpx.Limits:
    return httpx.Limits(
        max_connections=concurrency,
        max_keepalive_connections=concurrency,
        keepalive_expiry=30.0,
    )


def _httpx_timeout() -> httpx.Timeout:
    return httpx.Timeout(connect=TIMEOUT_S, read=TIMEOUT_S, write=TIMEOUT_S, pool=TIMEOUT_S)


@asynccontextmanager
async def _httpx_client(
    url: str,
    *,
    limits: httpx.Limits = httpx.Limits(),  # noqa: B008 - immutable
    transport: httpx.AsyncBaseTransport | None = None,
) -> AsyncIterator[SendFn]:
    async with httpx.AsyncClient(
        timeout=_httpx_timeout(), trust_env=False, limits=limits, transport=transport
    ) as c:

        async def send() -> int:
            response = await c.post(url, content=BODY, headers=HEADERS)
            return response.status_code

        yield send


@asynccontextmanager
async def httpx_default(concurrency: int, url: str) -> AsyncIterator[SendFn]:
    async with _httpx_client(url, limits=_httpx_limits(concurrency)) as send:
        yield send


@asynccontextmanager
async def httpx_aiohttp_transport(concurrency: int, url: str) -> AsyncIterator[SendFn]:
    # Limits go on the transport: AsyncClient ignores its own `limits=` when `transport=` is set.
    transport = AiohttpTransport(limits=_httpx_limits(concurrency))
    async with _httpx_client(url, transport=transport) as send:
        yield send


@asynccontextmanager
async def aiohttp_bare(concurrency: int, url: str) -> AsyncIterator[SendFn]:
    connector = aiohttp.TCPConnector(limit=concurrency, keepalive_timeout=30.0)
    timeout = aiohttp.ClientTimeout(
        total=None, connect=TIMEOUT_S, sock_connect=TIMEOUT_S, sock_read=TIMEOUT_S
    )
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

        async def send() -> int:
            async with session.post(url, data=BODY, headers=HEADERS) as response:
                await response.read()
                return response.status

        yield send


@asynccontextmanager
async def httpx2_default(concurrency: int, url: str) -> AsyncIterator[SendFn]:
    assert httpx2 is not None
    limits = httpx2.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=30.0
    )
    timeout = httpx2.Timeout(connect=TIMEOUT_S, read=TIMEOUT_S, write=TIMEOUT_S, pool=TIMEOUT_S)
    async with httpx2.AsyncClient(limits=limits, timeout=timeout, trust_env=False) as client:

        async def send() -> int:
            response = await client.post(url, content=BODY, headers=HEADERS)
            return response.status_code

        yield send


@asynccontextmanager
async def httpx2_aiohttp_transport(concurrency: int, url: str) -> AsyncIterator[SendFn]:
    assert httpx2 is not None
    assert Httpx2AiohttpTransport is not None
    limits = httpx2.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=30.0
    )
    timeout = httpx2.Timeout(connect=TIMEOUT_S, read=TIMEOUT_S, write=TIMEOUT_S, pool=TIMEOUT_S)
    transport = Httpx2AiohttpTransport(limits=limits)
    async with httpx2.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as client:

        async def send() -> int:
            response = await client.post(url, content=BODY, headers=HEADERS)
            return response.status_code

        yield send


@asynccontextmanager
async def pipeline_client(client: LeanClient | AiohttpClient, url: str) -> AsyncIterator[SendFn]:
    async with client:

        async def send() -> int:
            answer = await client.request("POST", url, HEADERS, BODY)
            return answer.status

        yield send


def pipeline_lean(concurrency: int, url: str) -> AbstractAsyncContextManager[SendFn]:
    return pipeline_client(LeanClient(Timeouts(TIMEOUT_S, TIMEOUT_S), concurrency), url)


def pipeline_aiohttp(concurrency: int, url: str) -> AbstractAsyncContextManager[SendFn]:
    return pipeline_client(AiohttpClient(Timeouts(TIMEOUT_S, TIMEOUT_S), concurrency), url)


VARIANTS: list[tuple[str, Opener]] = [
    ("httpx default (httpcore)", httpx_default),
    ("httpx + AiohttpTransport", httpx_aiohttp_transport),
    ("aiohttp ClientSession", aiohttp_bare),
    ("pipeline LeanClient", pipeline_lean),
    ("pipeline AiohttpClient", pipeline_aiohttp),
]
if httpx2 is not None:
    VARIANTS += [
        (f"httpx2 {httpx2.__version__} default", httpx2_default),
        ("httpx2 + AiohttpTransport", httpx2_aiohttp_transport),
    ]


# --------------------------------------------------------------------------- measurement


@dataclass(frozen=True)
class Case:
    latency_ms: int
    concurrency: int

    @property
    def ceiling(self) -> float | None:
        """Theoretical max req/s when latency dominates."""
        return self.concurrency * 1000 / self.latency_ms if self.latency_ms else None


CASES = [Case(0, 10), Case(20, 8), Case(20, 64)]


@dataclass
class DriveResult:
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    latencies: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class RunResult:
    requests: int
    errors: int
    wall_s: float
    cpu_s: float
    server_cpu_s: float
    server_conns: int
    p50_ms: float
    p99_ms: float
    first_error: str

    @property
    def rps(self) -> float:
        return self.requests / self.wall_s

    @property
    def cpu_per_1k(self) -> float:
        return self.cpu_s / max(self.requests, 1) * 1000


async def _drive(send: SendFn, concurrency: int, limit: int, seconds: float) -> DriveResult:
    """Run up to `limit` requests (or until `seconds` pass) from `concurrency` workers."""
    result = DriveResult()
    issued = 0
    stop_at = time.perf_counter() + seconds

    async def worker() -> None:
        nonlocal issued
        while issued < limit and time.perf_counter() < stop_at:
            issued += 1
            started = time.perf_counter()
            try:
                status = await send()
            except Exception as exc:  # a benchmark counts failures, it does not stop
                result.errors += 1
                result.first_error = result.first_error or f"{type(exc).__name__}: {exc}"
                continue
            result.latencies.append(time.perf_counter() - started)
            if status == 204:
                result.ok += 1
            else:
                result.errors += 1
                result.first_error = result.first_error or f"HTTP {status}"

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return result


async def _server_stats(control: aiohttp.ClientSession, base: str) -> dict[str, float]:
    async with control.get(f"{base}/stats") as response:
        data: dict[str, float] = await response.json()
        return data


def _percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def _run_one(
    opener: Opener,
    case: Case,
    *,
    base: str,
    control: aiohttp.ClientSession,
    limit: int,
    seconds: float,
) -> RunResult:
    url = f"{base}/post/{case.latency_ms}"
    async with opener(case.concurrency, url) as send:
        # Warm-up: open the whole pool and let every code path get hot.
        warmup = max(WARMUP_MIN_REQUESTS, 5 * case.concurrency)
        await _drive(send, case.concurrency, warmup, 2.0)
        gc.collect()
        before = await _server_stats(control, base)
        wall0, cpu0 = time.perf_counter(), time.process_time()
        drive = await _drive(send, case.concurrency, limit, seconds)
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        after = await _server_stats(control, base)
    return RunResult(
        requests=drive.ok,
        errors=drive.errors,
        wall_s=wall,
        cpu_s=cpu,
        server_cpu_s=after["cpu"] - before["cpu"],
        server_conns=int(after["conns"]),
        p50_ms=_percentile(drive.latencies, 0.50),
        p99_ms=_percentile(drive.latencies, 0.99),
        first_error=drive.first_error,
    )


def _summarise(runs: list[RunResult]) -> RunResult:
    """Median of each metric over rounds (requests/errors summed, connections maxed)."""

    def med(values: list[float]) -> float:
        return statistics.median(values)

    wall = med([r.wall_s for r in runs])
    rps = med([r.rps for r in runs])
    return RunResult(
        requests=round(rps * wall),
        errors=sum(r.errors for r in runs),
        wall_s=wall,
        cpu_s=med([r.cpu_per_1k for r in runs]) * round(rps * wall) / 1000,
        server_cpu_s=med([r.server_cpu_s / r.wall_s for r in runs]) * wall,
        server_conns=max(r.server_conns for r in runs),
        p50_ms=med([r.p50_ms for r in runs]),
        p99_ms=med([r.p99_ms for r in runs]),
        first_error=next((r.first_error for r in runs if r.first_error), ""),
    )


def _print_table(case: Case, rows: list[tuple[str, list[RunResult]]]) -> None:
    ceiling = f", ceiling {case.ceiling:,.0f} req/s" if case.ceiling else ""
    print(f"\nlatency {case.latency_ms} ms, C={case.concurrency}{ceiling}")
    header = (
        f"{'variant':<28} {'req/s':>8} {'CPU s/1k':>9} {'cli CPU%':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'srv CPU%':>8} {'conns':>5} {'n':>6} {'err':>4}"
    )
    print(header)
    print("-" * len(header))
    for name, runs in rows:
        s = _summarise(runs)
        print(
            f"{name:<28} {s.rps:>8,.0f} {s.cpu_per_1k:>9.3f} {100 * s.cpu_s / s.wall_s:>8.0f} "
            f"{s.p50_ms:>7.2f} {s.p99_ms:>7.2f} {100 * s.server_cpu_s / s.wall_s:>8.0f} "
            f"{s.server_conns:>5} {sum(r.requests for r in runs):>6} {s.errors:>4}"
        )
        if s.first_error:
            print(f"    first error: {s.first_error}")
    sys.stdout.flush()


async def _bench(port: int, limit: int, seconds: float, rounds: int) -> None:
    base = f"http://{HOST}:{port}"
    async with aiohttp.ClientSession() as control:
        for case in CASES:
            results: dict[str, list[RunResult]] = {name: [] for name, _ in VARIANTS}
            for round_no in range(rounds):
                # Rotate the order each round so no variant always runs first or last.
                shift = round_no % len(VARIANTS)
                for name, opener in VARIANTS[shift:] + VARIANTS[:shift]:
                    run = await _run_one(
                        opener, case, base=base, control=control, limit=limit, seconds=seconds
                    )
                    results[name].append(run)
            _print_table(case, [(name, results[name]) for name, _ in VARIANTS])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--requests", type=int, default=3000, help="max requests per run")
    parser.add_argument("--seconds", type=float, default=3.0, help="max seconds per run")
    parser.add_argument("--rounds", type=int, default=2, help="runs per variant (median shown)")
    parser.add_argument("--quick", action="store_true", help="500 requests, 1 s, 1 round")
    args = parser.parse_args()
    limit, seconds, rounds = args.requests, args.seconds, args.rounds
    if args.quick:
        limit, seconds, rounds = min(limit, 500), min(seconds, 1.0), 1

    print(
        f"python {sys.version.split()[0]}, httpx {httpx.__version__}, aiohttp {aiohttp.__version__}"
        + (f", httpx2 {httpx2.__version__}" if httpx2 is not None else ", httpx2 not installed")
    )
    print(
        f"body {len(BODY)} B, up to {limit} requests or {seconds:g} s per run, "
        f"{rounds} round(s), median shown; CPU s/1k = client process_time per 1,000 requests"
    )
    print(
        "cli/srv CPU% = share of one core; conns = distinct TCP connections the server saw in"
        " a measured window (max over rounds); n = requests measured over all rounds"
    )

    ctx = mp.get_context("spawn")
    parent_end, child_end = ctx.Pipe(duplex=False)
    server = ctx.Process(target=_serve, args=(child_end,), daemon=True)
    server.start()
    child_end.close()
    try:
        if not parent_end.poll(30):
            raise RuntimeError("benchmark server did not start within 30 s")
        port = int(parent_end.recv())
        started = time.perf_counter()
        asyncio.run(_bench(port, limit, seconds, rounds))
        print(f"\ntotal {time.perf_counter() - started:.1f} s")
    finally:
        server.terminate()
        server.join(5)


if __name__ == "__main__":
    main()
