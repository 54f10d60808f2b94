"""One run's observations: each request judged on arrival and tallied in a :class:`StubStats`.

Judging happens here, without HTTP or sleeps, so the server only reads requests, waits out the
latency and answers (the module docstring of :mod:`pipeline.dev.stub_api.server` says why
arrival is the moment that counts).
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from pipeline.dev.stub_api.config import AUTH_STATUSES, StubConfig
from pipeline.dev.stub_api.delivery import Target, batch_items, parse_target, seq_violations
from pipeline.dev.stub_api.faults import Faults
from pipeline.dev.stub_api.oauth2 import Tokens
from pipeline.dev.stub_api.stats import PartitionStats, StubStats

API_METHODS = ("DELETE", "PATCH", "POST", "PUT")
_RETRY_AFTER_TOLERANCE_S = 0.05


@dataclass(slots=True)
class Partition:
    """A partition's tallied stats, and what the tally needs besides: offsets, flights, a 429."""

    stats: PartitionStats
    offsets: list[int] = field(default_factory=list)
    in_flight: int = 0
    throttled_at: float | None = None


@dataclass(frozen=True, slots=True)
class Verdict:
    """A request's answer, fixed on arrival; ``partition`` is charged a 429 once it is sent."""

    status: int
    reason: str
    partition: Partition | None = None


@dataclass(frozen=True, slots=True)
class Batch:
    """A batch whose headers passed, waiting for its body to be judged."""

    partition: Partition
    target: Target
    fault_s: float  # the fault clock at its arrival


class _Arrivals:
    """The arrival times of API requests, and the two checks a rate limit needs."""

    def __init__(self, stats: StubStats) -> None:
        self.times: list[float] = []
        self._stats = stats
        self._window_start = 0  # index of the oldest arrival less than 1 s before the newest
        self._quiet_until = -math.inf  # a Retry-After in force forbids requests until then

    def arrive(self, now: float) -> None:
        stats = self._stats
        if now < self._quiet_until:
            stats.retry_after_violations += 1
        times = self.times
        times.append(now)
        start = self._window_start
        while times[start] <= now - 1.0:
            start += 1
        self._window_start = start
        stats.max_requests_in_any_1s_window = max(
            stats.max_requests_in_any_1s_window, len(times) - start
        )

    def throttled(self, now: float, retry_after_s: int) -> None:
        self._quiet_until = max(self._quiet_until, now + retry_after_s - _RETRY_AFTER_TOLERANCE_S)


class Recorder:
    """One run's observations; replaced whole on reset, so requests in flight settle in the old."""

    def __init__(self, config: StubConfig, tokens: Tokens) -> None:
        self.faults = Faults(config)
        self.tokens = tokens
        self.stats = StubStats()
        self._arrivals = _Arrivals(self.stats)
        self._partitions: dict[str, Partition] = {}
        self._keys: dict[str, None] = {}  # insertion-ordered set of accepted record keys
        self._paths: dict[str, int] = {}
        self._tokens_in_flight = 0

    @property
    def config(self) -> StubConfig:
        """The config in force, which ``set_config`` swaps in :class:`Faults`."""
        return self.faults.config

    def snapshot(self, *, offsets: bool) -> StubStats:
        """A copy of the tally; ``offsets`` adds the long lists, which only grow."""
        snap = copy.deepcopy(self.stats)
        if offsets:
            snap.keys = tuple(self._keys)
            snap.paths = dict(self._paths)
            snap.arrivals = tuple(self._arrivals.times)
            for name, part in self._partitions.items():
                snap.partitions[name].offsets = tuple(part.offsets)
        return snap

    def not_found(self) -> None:
        """Count a request outside the API, which counts nowhere else."""
        self.stats.not_found += 1

    def arrive(self, method: str, path: str, headers: Mapping[str, str]) -> Verdict | Batch:
        """Judge a request on arrival, and record it at once if it is accepted.

        A batch whose headers pass is returned for :meth:`settle`, which needs its body.
        """
        now = time.monotonic()
        fault_s = self._count(now, method, path)
        if method not in API_METHODS:
            return Verdict(405, f"{method} is not one of {', '.join(API_METHODS)}")
        if not self._authorized(headers, now):
            self.stats.auth_failures += 1
            return Verdict(self.config.auth_status, "missing, unknown or expired bearer token")
        target = parse_target(headers)
        if isinstance(target, str):
            self.stats.header_mismatches += 1
            return Verdict(400, target)
        part = self._partition(target.partition, now)
        if target.size is not None:
            return Batch(part, target, fault_s)
        return self._judge(part, target, fault_s, None)

    def settle(self, batch: Batch, content_type: str, body: bytes) -> Verdict:
        """Judge a batch by its body: the count must match, then it is judged like a record."""
        target = batch.target
        try:
            items = batch_items(content_type, body)
        except ValueError as error:
            self.stats.header_mismatches += 1
            return Verdict(400, f"unreadable batch: {error}", batch.partition)
        if len(items) != target.size:
            self.stats.header_mismatches += 1
            reason = f"X-Batch-Size is {target.size} but the body holds {len(items)} records"
            return Verdict(400, reason, batch.partition)
        return self._judge(batch.partition, target, batch.fault_s, items)

    def answer(self, verdict: Verdict, retry_after_s: int) -> None:
        """Stamp the moment the client is told, which is when Retry-After starts to count."""
        now = time.monotonic()
        stats = self.stats
        stats.statuses[verdict.status] = stats.statuses.get(verdict.status, 0) + 1
        if verdict.status < 300:
            stats.last_accept_at, stats.last_accept_unix = now, time.time()
        elif verdict.status == 429:
            self._arrivals.throttled(now, retry_after_s)
            if verdict.partition is not None:
                verdict.partition.stats.throttled += 1
                verdict.partition.throttled_at = now

    def depart(self, partition: Partition | None) -> None:
        """The answer is out (or the client gone): the request stops counting as in flight."""
        self.stats.in_flight -= 1
        if partition is not None:
            partition.in_flight -= 1

    def token_arrive(self, params: dict[str, str]) -> None:
        """Count a token request; ``params`` (the form, without the secret) is kept for tests."""
        stats = self.stats
        stats.token_requests += 1
        self._tokens_in_flight += 1
        stats.max_concurrent_token_requests = max(
            stats.max_concurrent_token_requests, self._tokens_in_flight
        )
        stats.last_token_params = params

    def token_depart(self) -> None:
        """The token answer is out, so concurrent token requests can be told apart."""
        self._tokens_in_flight -= 1

    def _count(self, now: float, method: str, path: str) -> float:
        """Count an API request's arrival; returns its time on the fault clock."""
        stats = self.stats
        stats.requests += 1
        if stats.first_request_at is None:
            stats.first_request_at, stats.first_request_unix = now, time.time()
        stats.in_flight += 1
        stats.max_concurrent_total = max(stats.max_concurrent_total, stats.in_flight)
        self._arrivals.arrive(now)
        stats.methods[method] = stats.methods.get(method, 0) + 1
        self._paths[path] = self._paths.get(path, 0) + 1
        return self.faults.clock(now)

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

    def _partition(self, name: str, now: float) -> Partition:
        part = self._partitions.get(name)
        if part is None:
            part = self._partitions[name] = Partition(PartitionStats())
            self.stats.partitions[name] = part.stats
        part.in_flight += 1
        part.stats.max_concurrent = max(part.stats.max_concurrent, part.in_flight)
        if part.throttled_at is not None:
            gap = now - part.throttled_at
            part.throttled_at = None
            part.stats.min_retry_after_gap_s = _lower(part.stats.min_retry_after_gap_s, gap)
            self.stats.min_retry_after_gap_s = _lower(self.stats.min_retry_after_gap_s, gap)
        return part

    def _judge(
        self, part: Partition, target: Target, fault_s: float, items: list[Any] | None
    ) -> Verdict:
        status, reason = self.faults.decide(target, fault_s)
        if status in AUTH_STATUSES:  # only an auth fault window answers one here
            self.stats.auth_failures += 1
        elif status < 300:
            self._accept(part, target, items)
        return Verdict(status, reason, part)

    def _accept(self, part: Partition, target: Target, items: list[Any] | None) -> None:
        stats = self.stats
        stats.accepted += 1
        if items is None:
            stats.records += 1
            self._record(part, target.key, target.first)
            return
        size = len(items)
        stats.batches += 1
        stats.records += size
        stats.max_batch_size = max(stats.max_batch_size, size)
        if violations := seq_violations(items):
            part.stats.order_violations += violations
            stats.order_violations += violations
        if target.last - target.first + 1 == size:
            offsets: range | tuple[int, int] = range(target.first, target.last + 1)
        else:
            stats.gapped_batches += 1
            offsets = (target.first, target.last)
        for offset in offsets:
            self._record(part, f"{target.partition}/{offset}", offset)

    def _record(self, part: Partition, key: str, offset: int) -> None:
        part.offsets.append(offset)
        part.stats.count += 1
        part.stats.last_offset = offset
        if key in self._keys:
            self.stats.duplicates += 1
            return
        self._keys[key] = None
        self.stats.unique += 1
        part.stats.unique += 1
        if part.stats.max_offset is not None and offset < part.stats.max_offset:
            part.stats.order_violations += 1
            self.stats.order_violations += 1
        else:
            part.stats.max_offset = offset


def _lower(current: float | None, value: float) -> float:
    return value if current is None or value < current else current
