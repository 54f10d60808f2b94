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

import argparse
import asyncio
import json
import math
import random
import secrets
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from http import HTTPStatus
from typing import Any, Literal, Self, cast, get_args
from urllib.parse import unquote_plus

from aiohttp import BasicAuth, web

FaultKind = Literal["outage", "throttle", "auth", "redirect"]

_RATE_FIELDS = ("error_rate", "throttle_rate", "reject_rate")
_NON_NEGATIVE_FIELDS = (
    "latency_ms",
    "jitter_ms",
    "retry_after_s",
    "error_burst",
    "throttle_burst",
    "token_latency_ms",
)
_API_METHODS = ("DELETE", "PATCH", "POST", "PUT")
_AUTH_STATUSES = (401, 403, 407)
_CHALLENGE_HEADERS = {401: "WWW-Authenticate", 407: "Proxy-Authenticate"}
_CONTROL_PATHS = ("/healthz", "/stats", "/reset", "/oauth2/token")
_RETRY_AFTER_TOLERANCE_S = 0.05
# Where a redirect fault window sends the client: a place that is not the API, so a client that
# followed it would be answered 404 for every record.
REDIRECT_LOCATION = "/relocated"


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A timed fault, ``start_s`` seconds into the fault clock, for ``duration_s`` seconds.

    ``outage`` answers 503 (no ``Retry-After``), ``throttle`` 429 with ``Retry-After``, ``auth``
    the config's ``auth_status``, ``redirect`` 307 to ``REDIRECT_LOCATION`` (an API that moved).
    The clock starts at the first API request after start, reset or
    ``set_config``, so a stub may be up long before traffic flows. ``duration_s`` may be ``inf``.
    """

    kind: FaultKind
    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        """Fail at construction, like :class:`StubConfig`."""
        if self.kind not in get_args(FaultKind):
            kinds = ", ".join(get_args(FaultKind))
            raise ValueError(f"fault kind must be one of {kinds}, got {self.kind!r}")
        if not self.start_s >= 0:
            raise ValueError(f"fault start_s must not be negative, got {self.start_s!r}")
        if not self.duration_s > 0:
            raise ValueError(f"fault duration_s must be positive, got {self.duration_s!r}")

    @classmethod
    def parse(cls, text: str) -> FaultWindow:
        """Read the CLI form ``KIND@START+DURATION``, e.g. ``outage@5+10``."""
        kind, at, rest = text.partition("@")
        start, plus, duration = rest.partition("+")
        if not (at and plus):
            raise ValueError(f"expected KIND@START+DURATION (e.g. outage@5+10), got {text!r}")
        # __post_init__ checks the kind, so the cast only tells mypy what it will verify
        return cls(cast(FaultKind, kind), float(start), float(duration))

    def covers(self, elapsed_s: float) -> bool:
        """Whether the window is open ``elapsed_s`` seconds into the fault clock."""
        return self.start_s <= elapsed_s < self.start_s + self.duration_s


@dataclass(frozen=True, slots=True)
class StubConfig:
    """How the stub misbehaves; one frozen value, so an outage starts and ends by swapping it.

    Rates are fractions of requests drawn from one uniform number, so they add up exactly (their
    sum may not exceed 1). Bursts hit the first requests after start, reset or ``set_config``
    (errors first, then throttles), whatever their partition. ``jitter_ms`` spreads the latency
    uniformly over ``latency_ms ± jitter_ms``, never below zero. ``Retry-After`` is sent as whole
    seconds rounded up (RFC 9110 allows no fractions, and the stage ignores what it cannot parse).

    ``path`` is the API; requests below it (``/items/orders/3``) are the API too. ``token`` asks
    for ``Authorization: Bearer <token>``; the ``oauth2_*`` settings instead serve
    ``POST /oauth2/token`` and ask for a live token it issued (one or the other). Failing auth
    answers ``auth_status``. ``faults`` are timed windows (:class:`FaultWindow`).

    An API request is judged in this order: method (405), auth, headers (400; a batch's body
    too), fault windows, bursts, ``reject_keys`` (422), rates.
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
    unavailable_keys: frozenset[str] = frozenset()
    seed: int | None = None
    path: str = "/items"
    token: str | None = None
    auth_status: int = 401
    oauth2_client_id: str | None = None
    oauth2_client_secret: str | None = None
    oauth2_expires_in_s: float = 3600.0
    token_latency_ms: float = 0.0
    faults: tuple[FaultWindow, ...] = ()

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
        _check_path(self.path)
        _check_auth(self)


def _check_path(path: str) -> None:
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"path must start with '/' and not end with one, got {path!r}")
    for route in _CONTROL_PATHS:
        if _within(route, path) or _within(path, route):
            raise ValueError(f"path {path!r} would overlap the stub's own {route}")


def _check_auth(config: StubConfig) -> None:
    if config.auth_status not in _AUTH_STATUSES:
        raise ValueError(f"auth_status must be 401, 403 or 407, got {config.auth_status!r}")
    if config.token == "":
        raise ValueError("token must not be empty (None turns it off)")
    client = (config.oauth2_client_id, config.oauth2_client_secret)
    if "" in client or (client[0] is None) != (client[1] is None):
        raise ValueError("oauth2_client_id and oauth2_client_secret must both be set, or neither")
    if config.token is not None and client[0] is not None:
        raise ValueError("token and oauth2_client_id are alternatives: set one of them")
    if not 0 < config.oauth2_expires_in_s < math.inf:
        raise ValueError(
            f"oauth2_expires_in_s must be positive and finite, got {config.oauth2_expires_in_s!r}"
        )


def _within(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or below it (``/items/x`` is, ``/itemsx`` is not)."""
    return path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/")


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

    ``requests`` counts every request to the API path, whatever its fate (``methods`` splits it by
    method); ``not_found`` those to any other path, which count nowhere else. ``accepted`` counts
    accepted requests (a batch is one), ``records`` the records in them, ``unique`` and
    ``duplicates`` record offsets (``<topic>/<partition>/<offset>``). A batch whose offsets are not
    consecutive (compaction) records only its first and last offset and counts in
    ``gapped_batches``. ``header_mismatches`` counts 400s: headers that disagree, or a batch body
    that is unreadable or holds other than ``X-Batch-Size`` records. ``auth_failures`` counts
    answers with ``auth_status`` (bad token or an ``auth`` fault window). After a 429 with
    ``Retry-After: N`` answered at ``t``, each API request arriving before ``t + N - 0.05 s``,
    from any partition, counts in ``retry_after_violations``. ``max_requests_in_any_1s_window``
    is the most API requests that arrived within any one second. ``paths`` (requests per path,
    as sent, without the query) and ``arrivals`` (monotonic arrival times of API requests) come
    only on request, like ``keys``.
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
    records: int
    batches: int
    gapped_batches: int
    max_batch_size: int
    methods: Mapping[str, int]
    not_found: int
    auth_failures: int
    token_requests: int
    max_concurrent_token_requests: int
    last_token_params: Mapping[str, str]
    retry_after_violations: int
    max_requests_in_any_1s_window: int
    keys: tuple[str, ...] | None = None
    paths: Mapping[str, int] | None = None
    arrivals: tuple[float, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON shape, leaving out the long lists unless they were asked for."""
        data = asdict(self)
        data["statuses"] = {str(status): n for status, n in self.statuses.items()}
        for name in ("keys", "paths", "arrivals"):
            if data[name] is None:
                del data[name]
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
                "arrivals": _opt_tuple(data.get("arrivals")),
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
class _Target:
    """What a request's headers say it delivers: one record, or a batch of ``size`` records."""

    partition: str  # <topic>/<partition>
    key: str  # the Idempotency-Key
    first: int
    last: int
    size: int | None = None  # X-Batch-Size; None for a single record


def _parse_target(headers: Mapping[str, str]) -> _Target | str:
    """The target, or why the headers disagree (a stage bug, answered 400)."""
    topic = headers.get("X-Kafka-Topic")
    partition = headers.get("X-Kafka-Partition", "")
    first = headers.get("X-Kafka-Offset", "")
    key = headers.get("Idempotency-Key")
    if topic is not None and partition.isdecimal() and first.isdecimal():
        prefix = f"{topic}/{partition}"
        size = headers.get("X-Batch-Size")
        if size is not None:
            return _batch_target(headers, prefix, key, first, size)
        if key == f"{prefix}/{first}":
            offset = int(first)
            return _Target(prefix, key, offset, offset)
    return _mismatch(key)


def _batch_target(
    headers: Mapping[str, str], prefix: str, key: str | None, first: str, size: str
) -> _Target | str:
    last = headers.get("X-Kafka-Last-Offset", "")
    if not (size.isdecimal() and last.isdecimal()) or key != f"{prefix}/{first}-{last}":
        return _mismatch(key)
    n, lo, hi = int(size), int(first), int(last)
    if n < 1 or hi - lo + 1 < n or (n == 1 and hi != lo):
        return f"X-Batch-Size {n} cannot hold offsets {lo} to {hi}"
    return _Target(prefix, key, lo, hi, n)


def _mismatch(key: str | None) -> str:
    return f"Idempotency-Key {key!r} does not match the X-Kafka-* headers"


def _batch_items(content_type: str, body: bytes) -> list[Any]:
    """The record values in a batch body; ``ValueError`` if it cannot be read."""
    if content_type == "application/json":
        items = json.loads(body)
        if not isinstance(items, list):
            raise ValueError("a JSON batch must be an array of record values")
        return items
    if content_type == "application/x-ndjson":
        return [json.loads(line) for line in body.splitlines() if line.strip()]
    raise ValueError(
        f"a batch must be application/json or application/x-ndjson, not {content_type}"
    )


def _seq_violations(items: list[Any]) -> int:
    """Items whose integer ``seq`` does not exceed every earlier one in the batch."""
    violations, top = 0, None
    for item in items:
        seq = item.get("seq") if isinstance(item, dict) else None
        if not isinstance(seq, int) or isinstance(seq, bool):
            continue
        if top is not None and seq <= top:
            violations += 1
        else:
            top = seq
    return violations


@dataclass(slots=True)
class _Verdict:
    status: int
    reason: str
    partition: _Partition | None = None


@dataclass(slots=True)
class _Batch:
    """A batch whose headers passed, waiting for its body to be judged."""

    partition: _Partition
    target: _Target
    fault_s: float  # the fault clock at its arrival


class _Tokens:
    """Access tokens issued by ``/oauth2/token``; kept across resets, like a real server's."""

    def __init__(self) -> None:
        self._expiry: dict[str, float] = {}

    def issue(self, lifetime_s: float) -> str:
        now = time.monotonic()
        for token in [t for t, expiry in self._expiry.items() if expiry <= now]:
            del self._expiry[token]
        token = secrets.token_urlsafe(24)
        self._expiry[token] = now + lifetime_s
        return token

    def valid(self, token: str, now: float) -> bool:
        expiry = self._expiry.get(token)
        return expiry is not None and now < expiry

    def revoke_all(self) -> None:
        self._expiry.clear()


class _Arrivals:
    """The arrival times of API requests, and the two checks a rate limit needs."""

    def __init__(self) -> None:
        self.times: list[float] = []
        self.max_in_1s = 0
        self.retry_after_violations = 0
        self._window_start = 0  # index of the oldest arrival less than 1 s before the newest
        self._quiet_until = -math.inf  # a Retry-After in force forbids requests until then

    def arrive(self, now: float) -> None:
        if now < self._quiet_until:
            self.retry_after_violations += 1
        times = self.times
        times.append(now)
        start = self._window_start
        while times[start] <= now - 1.0:
            start += 1
        self._window_start = start
        self.max_in_1s = max(self.max_in_1s, len(times) - start)

    def throttled(self, now: float, retry_after_s: int) -> None:
        self._quiet_until = max(self._quiet_until, now + retry_after_s - _RETRY_AFTER_TOLERANCE_S)


class _Recorder:
    """One run's observations; replaced whole on reset, so requests in flight settle in the old."""

    def __init__(self, config: StubConfig, tokens: _Tokens) -> None:
        self.config = config
        self.tokens = tokens
        self.rng = random.Random(config.seed)
        self.burst_seq = 0
        self.fault_clock: float | None = None  # first API request since start/reset/set_config
        self.requests = self.accepted = self.records = self.duplicates = 0
        self.batches = self.gapped_batches = self.max_batch_size = 0
        self.order_violations = self.header_mismatches = 0
        self.not_found = self.auth_failures = 0
        self.in_flight = self.max_concurrent_total = 0
        self.token_requests = self.tokens_in_flight = self.max_concurrent_token_requests = 0
        self.last_token_params: dict[str, str] = {}
        self.statuses: dict[int, int] = {}
        self.methods: dict[str, int] = {}
        self.paths: dict[str, int] = {}
        self.arrivals = _Arrivals()
        self.first_request_at: float | None = None
        self.first_request_unix: float | None = None
        self.last_accept_at: float | None = None
        self.last_accept_unix: float | None = None
        self.keys: dict[str, None] = {}  # insertion-ordered set of accepted record keys
        self.partitions: dict[str, _Partition] = {}

    def arrive(self, method: str, path: str, headers: Mapping[str, str]) -> _Verdict | _Batch:
        """Judge a request on arrival, and record it at once if it is accepted.

        A batch whose headers pass is returned for :meth:`settle`, which needs its body.
        """
        now = time.monotonic()
        fault_s = self._count(now, method, path)
        if method not in _API_METHODS:
            return _Verdict(405, f"{method} is not one of {', '.join(_API_METHODS)}")
        if not self._authorized(headers, now):
            self.auth_failures += 1
            return _Verdict(self.config.auth_status, "missing, unknown or expired bearer token")
        target = _parse_target(headers)
        if isinstance(target, str):
            self.header_mismatches += 1
            return _Verdict(400, target)
        part = self._partition(target.partition, now)
        if target.size is not None:
            return _Batch(part, target, fault_s)
        return self._judge(part, target, fault_s, None)

    def settle(self, batch: _Batch, content_type: str, body: bytes) -> _Verdict:
        """Judge a batch by its body: the count must match, then it is judged like a record."""
        target = batch.target
        try:
            items = _batch_items(content_type, body)
        except ValueError as error:
            self.header_mismatches += 1
            return _Verdict(400, f"unreadable batch: {error}", batch.partition)
        if len(items) != target.size:
            self.header_mismatches += 1
            reason = f"X-Batch-Size is {target.size} but the body holds {len(items)} records"
            return _Verdict(400, reason, batch.partition)
        return self._judge(batch.partition, target, batch.fault_s, items)

    def _count(self, now: float, method: str, path: str) -> float:
        """Count an API request's arrival; returns its time on the fault clock."""
        self.requests += 1
        if self.first_request_at is None:
            self.first_request_at, self.first_request_unix = now, time.time()
        clock = self.fault_clock
        if clock is None:
            clock = self.fault_clock = now
        self.in_flight += 1
        self.max_concurrent_total = max(self.max_concurrent_total, self.in_flight)
        self.arrivals.arrive(now)
        self.methods[method] = self.methods.get(method, 0) + 1
        self.paths[path] = self.paths.get(path, 0) + 1
        return now - clock

    def _authorized(self, headers: Mapping[str, str], now: float) -> bool:
        cfg = self.config
        if cfg.token is None and cfg.oauth2_client_id is None:
            return True
        scheme, _, credential = headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            return False
        if cfg.token is not None:
            return credential == cfg.token
        return self.tokens.valid(credential, now)

    def _partition(self, name: str, now: float) -> _Partition:
        part = self.partitions.get(name)
        if part is None:
            part = self.partitions[name] = _Partition()
        part.in_flight += 1
        part.max_concurrent = max(part.max_concurrent, part.in_flight)
        if part.throttled_at is not None:
            gap = now - part.throttled_at
            part.throttled_at = None
            if part.min_retry_after_gap_s is None or gap < part.min_retry_after_gap_s:
                part.min_retry_after_gap_s = gap
        return part

    def _judge(
        self, part: _Partition, target: _Target, fault_s: float, items: list[Any] | None
    ) -> _Verdict:
        status, reason = self._decide(target, fault_s)
        if status < 300:
            self._accept(part, target, items)
        return _Verdict(status, reason, part)

    def _decide(self, target: _Target, fault_s: float) -> tuple[int, str]:
        cfg = self.config
        if cfg.faults:
            window = next((w for w in cfg.faults if w.covers(fault_s)), None)
            if window is not None:
                return self._window_status(window), f"{window.kind} fault window"
        seq = self.burst_seq
        self.burst_seq += 1
        if seq < cfg.error_burst:
            return 500, f"error burst ({seq + 1} of {cfg.error_burst})"
        if seq < cfg.error_burst + cfg.throttle_burst:
            return 429, f"throttle burst ({seq + 1 - cfg.error_burst} of {cfg.throttle_burst})"
        if (listed := self._by_key(target)) is not None:
            return listed
        if cfg.error_rate or cfg.throttle_rate or cfg.reject_rate:
            return self._draw(cfg)
        return 204, ""

    def _window_status(self, window: FaultWindow) -> int:
        if window.kind == "outage":
            return 503
        if window.kind == "throttle":
            return 429
        if window.kind == "redirect":
            return 307
        self.auth_failures += 1
        return self.config.auth_status

    def _by_key(self, target: _Target) -> tuple[int, str] | None:
        """422 for a key on the reject list, 503 for one on the unavailable list."""
        cfg = self.config
        if cfg.reject_keys and (rejected := self._listed(target, cfg.reject_keys)) is not None:
            return 422, f"idempotency key {rejected} is on the stub's reject list"
        if cfg.unavailable_keys and (down := self._listed(target, cfg.unavailable_keys)):
            return 503, f"idempotency key {down} is on the stub's unavailable list"
        return None

    def _listed(self, target: _Target, keys: frozenset[str]) -> str | None:
        """The listed key in the target; for a batch, any of its partition from first to last."""
        if target.size is None:
            return target.key if target.key in keys else None
        for key in keys:
            partition, _, offset = key.rpartition("/")
            if (
                partition == target.partition
                and offset.isdecimal()
                and target.first <= int(offset) <= target.last
            ):
                return key
        return None

    def _draw(self, cfg: StubConfig) -> tuple[int, str]:
        draw = self.rng.random()
        if draw < cfg.error_rate:
            return self.rng.choice((500, 503)), f"random error (error_rate={cfg.error_rate})"
        if draw < cfg.error_rate + cfg.throttle_rate:
            return 429, f"random throttle (throttle_rate={cfg.throttle_rate})"
        if draw < cfg.error_rate + cfg.throttle_rate + cfg.reject_rate:
            return 422, f"random rejection (reject_rate={cfg.reject_rate})"
        return 204, ""

    def _accept(self, part: _Partition, target: _Target, items: list[Any] | None) -> None:
        self.accepted += 1
        if items is None:
            self.records += 1
            self._record(part, target.key, target.first)
            return
        size = len(items)
        self.batches += 1
        self.records += size
        self.max_batch_size = max(self.max_batch_size, size)
        if seq_violations := _seq_violations(items):
            part.order_violations += seq_violations
            self.order_violations += seq_violations
        if target.last - target.first + 1 == size:
            offsets: range | tuple[int, int] = range(target.first, target.last + 1)
        else:
            self.gapped_batches += 1
            offsets = (target.first, target.last)
        for offset in offsets:
            self._record(part, f"{target.partition}/{offset}", offset)

    def _record(self, part: _Partition, key: str, offset: int) -> None:
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

    def answer(self, verdict: _Verdict, retry_after_s: int) -> None:
        """Stamp the moment the client is told, which is when Retry-After starts to count."""
        now = time.monotonic()
        self.statuses[verdict.status] = self.statuses.get(verdict.status, 0) + 1
        if verdict.status < 300:
            self.last_accept_at, self.last_accept_unix = now, time.time()
        elif verdict.status == 429:
            self.arrivals.throttled(now, retry_after_s)
            if verdict.partition is not None:
                verdict.partition.throttled += 1
                verdict.partition.throttled_at = now

    def depart(self, partition: _Partition | None) -> None:
        self.in_flight -= 1
        if partition is not None:
            partition.in_flight -= 1

    def token_arrive(self, params: dict[str, str]) -> None:
        self.token_requests += 1
        self.tokens_in_flight += 1
        self.max_concurrent_token_requests = max(
            self.max_concurrent_token_requests, self.tokens_in_flight
        )
        self.last_token_params = params

    def token_depart(self) -> None:
        self.tokens_in_flight -= 1

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
            records=self.records,
            batches=self.batches,
            gapped_batches=self.gapped_batches,
            max_batch_size=self.max_batch_size,
            methods=dict(self.methods),
            not_found=self.not_found,
            auth_failures=self.auth_failures,
            token_requests=self.token_requests,
            max_concurrent_token_requests=self.max_concurrent_token_requests,
            last_token_params=dict(self.last_token_params),
            retry_after_violations=self.arrivals.retry_after_violations,
            max_requests_in_any_1s_window=self.arrivals.max_in_1s,
            keys=tuple(self.keys) if offsets else None,
            paths=dict(self.paths) if offsets else None,
            arrivals=tuple(self.arrivals.times) if offsets else None,
        )


class StubServer:
    """The stub on loopback inside the caller's event loop, so tests can read and steer it directly.

    ``url`` is the API path (``StubConfig.path``); see the module docstring for the other routes.
    """

    def __init__(
        self, config: StubConfig | None = None, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self._config = config or StubConfig()
        self._host, self._port = host, port
        self._tokens = _Tokens()
        self._rec = _Recorder(self._config, self._tokens)
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
        self._rec = _Recorder(self._config, self._tokens)

    def set_config(self, config: StubConfig) -> None:
        """Change faults mid-run, keeping the counts; bursts and fault windows count again."""
        rec = self._rec
        if config.seed != rec.config.seed:
            rec.rng = random.Random(config.seed)
        rec.config = self._config = config
        rec.burst_seq = 0
        rec.fault_clock = None

    def revoke_tokens(self) -> None:
        """Invalidate every token issued so far, so the next API call with one answers 401."""
        self._tokens.revoke_all()

    async def _ingest(self, request: web.Request) -> web.Response:
        rec = self._rec
        if not _within(request.path, rec.config.path):
            rec.not_found += 1
            return _error(404, f"the Space API lives at {rec.config.path}")
        arrived_at = time.monotonic()
        arrival = rec.arrive(request.method, request.rel_url.raw_path, request.headers)
        try:
            body = await request.read()
            if isinstance(arrival, _Batch):
                verdict = rec.settle(arrival, request.content_type, body)
            else:
                verdict = arrival
            cfg = rec.config
            delay_ms = cfg.latency_ms
            if cfg.jitter_ms:
                delay_ms = max(0.0, delay_ms + rec.rng.uniform(-cfg.jitter_ms, cfg.jitter_ms))
            if delay_ms > 0:
                await self._until(arrived_at + delay_ms / 1000)
            retry_after_s = math.ceil(cfg.retry_after_s)
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
            rec.not_found += 1
            return _error(404, "OAuth2 is not configured (oauth2_client_id)")
        form = await request.post()
        params = {k: v for k, v in form.items() if isinstance(v, str) and k != "client_secret"}
        rec.token_arrive(params)
        try:
            if cfg.token_latency_ms > 0:
                await asyncio.sleep(cfg.token_latency_ms / 1000)
            return _grant(cfg, self._tokens, request.headers, form)
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


def _grant(
    cfg: StubConfig, tokens: _Tokens, headers: Mapping[str, str], form: Mapping[str, object]
) -> web.Response:
    """Answer a client-credentials token request (RFC 6749 4.4), errors as in its 5.2."""
    if not _client_authenticated(cfg, headers, form):
        return web.json_response({"error": "invalid_client"}, status=401)
    grant_type = form.get("grant_type")
    if grant_type != "client_credentials":
        error = "invalid_request" if grant_type is None else "unsupported_grant_type"
        return web.json_response({"error": error}, status=400)
    lifetime = cfg.oauth2_expires_in_s
    body = {
        "access_token": tokens.issue(lifetime),
        "token_type": "Bearer",
        "expires_in": int(lifetime) if lifetime == int(lifetime) else lifetime,
    }
    return web.json_response(body, headers={"Cache-Control": "no-store"})


def _client_authenticated(
    cfg: StubConfig, headers: Mapping[str, str], form: Mapping[str, object]
) -> bool:
    """Check the client's id and secret, given as HTTP Basic auth or else as form fields."""
    expected = (cfg.oauth2_client_id, cfg.oauth2_client_secret)
    authorization = headers.get("Authorization", "")
    if authorization[:6].lower() != "basic ":
        return expected == (form.get("client_id"), form.get("client_secret"))
    try:
        basic = BasicAuth.decode(authorization)
    except ValueError:
        return False
    given = (basic.login, basic.password)
    # RFC 6749 2.3.1 form-encodes both before Basic; many clients skip that, so take either
    return expected in (given, (unquote_plus(basic.login), unquote_plus(basic.password)))


def _response(verdict: _Verdict, retry_after_s: int) -> web.Response:
    status = verdict.status
    if status < 300:
        return web.Response(status=status)
    headers = {}
    if status == 429:
        headers["Retry-After"] = str(retry_after_s)
    elif status == 405:
        headers["Allow"] = ", ".join(_API_METHODS)
    elif status in _CHALLENGE_HEADERS:
        headers[_CHALLENGE_HEADERS[status]] = "Bearer"
    elif 300 <= status < 400:
        headers["Location"] = REDIRECT_LOCATION
    return _error(status, verdict.reason, headers)


def _error(status: int, reason: str, headers: Mapping[str, str] | None = None) -> web.Response:
    body = {"error": HTTPStatus(status).phrase, "reason": reason}
    return web.json_response(body, status=status, headers=headers)


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


def _fault(text: str) -> FaultWindow:
    try:
        return FaultWindow.parse(text)
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline stub-api`` options here, next to the settings they feed."""
    d = StubConfig()
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="interface to bind (default: %(default)s)")
    add("--port", type=int, default=8080, help="port to bind, 0 for any (default: %(default)s)")
    add("--path", default=d.path, help="API path; paths below it count too (%(default)s)")
    add("--latency-ms", type=float, default=d.latency_ms, help="response delay (%(default)s)")
    add("--jitter-ms", type=float, default=d.jitter_ms, help="± spread of the delay (%(default)s)")
    add("--error-rate", type=_rate, default=d.error_rate, help="fraction answered 500/503")
    add("--throttle-rate", type=_rate, default=d.throttle_rate, help="fraction answered 429")
    add("--retry-after-s", type=float, default=d.retry_after_s, help="Retry-After on 429s")
    add("--error-burst", type=int, default=d.error_burst, help="first N requests get 500")
    add("--throttle-burst", type=int, default=d.throttle_burst, help="next N requests get 429")
    add("--reject-rate", type=_rate, default=d.reject_rate, help="fraction answered 422")
    add("--reject-key", action="append", default=[], help="always 422 this key (repeatable)")
    add(
        "--unavailable-key",
        action="append",
        default=[],
        help="always 503 this key, a record the API never takes (repeatable)",
    )
    add("--seed", type=int, default=None, help="seed the fault draws for a repeatable run")
    add(
        "--fault",
        action="append",
        type=_fault,
        default=[],
        metavar="KIND@START+DURATION",
        help="a fault window: outage (503), throttle (429), auth (--auth-status) or redirect"
        f" (307 to {REDIRECT_LOCATION}), seconds "
        "from the first API request, e.g. outage@5+10 (repeatable)",
    )
    add("--token", default=None, help="require 'Authorization: Bearer TOKEN' on the API")
    add(
        "--auth-status",
        type=int,
        choices=_AUTH_STATUSES,
        default=d.auth_status,
        help="answer to a missing or bad token (%(default)s)",
    )
    add("--oauth2-client-id", default=None, help="serve POST /oauth2/token, require its tokens")
    add("--oauth2-client-secret", default=None, help="the client secret /oauth2/token expects")
    add(
        "--oauth2-expires-in-s",
        type=float,
        default=d.oauth2_expires_in_s,
        help="lifetime of issued tokens (%(default)s)",
    )
    add(
        "--token-latency-ms",
        type=float,
        default=d.token_latency_ms,
        help="delay of /oauth2/token answers (%(default)s)",
    )


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
        unavailable_keys=frozenset(ns.unavailable_key),
        seed=ns.seed,
        path=ns.path,
        token=ns.token,
        auth_status=ns.auth_status,
        oauth2_client_id=ns.oauth2_client_id,
        oauth2_client_secret=ns.oauth2_client_secret,
        oauth2_expires_in_s=ns.oauth2_expires_in_s,
        token_latency_ms=ns.token_latency_ms,
        faults=tuple(ns.fault),
    )


async def serve(config: StubConfig, host: str = "127.0.0.1", port: int = 8080) -> None:
    """Run until cancelled; the one printed line is how scripts learn the URL (``--port 0``)."""
    async with StubServer(config, host, port) as stub:
        print(f"stub Space API listening on {stub.url} (stats: {stub.base_url}/stats)", flush=True)
        await asyncio.Event().wait()
