"""The API as one shared resource: every attempt of every lane passes this gate.

Partitions send concurrently, but they all talk to the same API, so what the API says to one of
them applies to all:

- **Throttling.** A 429 or 503 with ``Retry-After`` holds every request back until it elapses
  (plus a little jitter each, so lanes do not restart in lockstep), not only the partition that
  got it. ``Retry-After: 0`` holds nothing back: the lane's own backoff still applies.
- **Rate limit.** ``PIPELINE_RATE_LIMIT_PER_S`` with a burst: a token bucket shared by all lanes,
  so no second holds more than rate + burst requests. Waiters take slots in the order they
  came, and one cancelled in line (nothing sent) leaves its slot to the next.
- **Circuit breaker.** After ``PIPELINE_CIRCUIT_FAILURES`` consecutive connection errors,
  timeouts or 5xx, the circuit opens: no requests but one probe at a time, after an open time
  that doubles up to the maximum backoff. The first success closes it.
- **Refusals.** Answers that no record could pass block everything the same way, from the first
  one: only a probe at a time, until the API accepts again. An error's ``outage`` names the kind:
  ``auth`` (a 401/403/407, or no token to be had), ``config`` (the endpoint setting is wrong:
  a redirect, an untrusted certificate) or ``registry`` (the schema registry that values are
  decoded with is down or refuses us). What the error says is the outage's detail, shown by
  ``/readyz`` and logged once per change, so the operator reads the status and where a redirect
  points, or what is wrong with the certificate, without a line per probe.

While the gate holds requests back, lanes wait with their records, partitions fill up and pause,
and memory stays bounded. Nothing is the record's fault, so nothing is dead-lettered or lost.
"""

from __future__ import annotations

import asyncio
import enum
import random
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from pipeline import metrics
from pipeline.clock import Clock, SystemClock
from pipeline.redaction import mask_url

log = structlog.get_logger("pipeline.gate")

# A failed attempt of these kinds counts toward opening the circuit.
CIRCUIT_REASONS = frozenset({"connection", "timeout", "5xx"})
THROTTLE_JITTER = 0.1  # up to 10% of the pause, per waiting attempt


class CircuitState(enum.IntEnum):
    """The value of ``space_pipeline_circuit_state``."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


@dataclass(frozen=True, slots=True)
class GateLimits:
    """How the gate behaves; see the module docstring.

    Args:
        circuit_failures: Consecutive failures that open the circuit.
        open_initial: The first open time, in seconds.
        open_max: The longest open time (doubling stops here).
        rate_per_s: Requests per second across all lanes; 0 for no limit.
        burst: Requests a quiet limiter lets through at once.
        retry_after_max: The longest ``Retry-After`` honoured.
    """

    circuit_failures: int = 5
    open_initial: float = 1.0
    open_max: float = 30.0
    rate_per_s: float = 0.0
    burst: int = 1
    retry_after_max: float = 300.0


# The line that says a refusal started, and what it means, by kind. A change of its detail is
# "gate.outage_changed"; its end "gate.recovered".
_REFUSALS = {
    "auth": ("gate.auth_failing", "the Space API refuses our credentials"),
    "config": ("gate.endpoint_wrong", "the configured Space API endpoint is wrong"),
    "registry": ("gate.registry_failing", "the schema registry does not answer"),
}
ENDPOINT_FAULTS = ("redirect", "tls")  # the reasons counted by name; any other is "other"


@dataclass(slots=True)
class _Outage:
    kind: str  # "circuit", or a refusal: the error's ``outage`` ("auth", "config")
    since: float
    open_for: float
    retry_at: float
    detail: str = ""
    probing: bool = False


class ApiGate:
    """Admission to the API for every attempt; the sender's :class:`~pipeline.sender.Gate`.

    Args:
        limits: Thresholds and limits.
        random_draw: A draw in ``[0, 1)`` for jitter; injectable for tests.
        clock: Time source: the sender's, so pauses, open times and rate slots are one schedule.
    """

    def __init__(
        self,
        limits: GateLimits,
        *,
        random_draw: Callable[[], float] = random.random,
        clock: Clock | None = None,
    ) -> None:
        self._limits = limits
        self._random = random_draw
        self._clock = clock or SystemClock()
        self._failures = 0  # consecutive, of the circuit's kinds
        self._outage: _Outage | None = None
        self._pause_until = 0.0
        self._interval = 1.0 / limits.rate_per_s if limits.rate_per_s > 0 else 0.0
        self._tolerance = (max(limits.burst, 1) - 1) * self._interval
        self._theoretical_arrival = 0.0
        self._rate_turn = asyncio.Lock()  # FIFO: waiters for a rate slot queue in order
        self._rate_waiters = 0
        self._changed: asyncio.Future[None] | None = None
        self._state_since = self._clock.monotonic()
        self._set_state(CircuitState.CLOSED)

    # What the stage and the probes read

    @property
    def clear(self) -> bool:
        """Nothing to wait for or count: no outage, no throttle, no rate limit."""
        return self._outage is None and not self._pause_until and not self._interval

    @property
    def blocked(self) -> bool:
        """Whether admission now waits: for an outage or a throttle to end, or for a rate slot."""
        now = self._clock.monotonic()
        return (
            self._outage is not None
            or self._pause_until > now
            or self._rate_waiters > 0
            or (self._interval > 0 and self._theoretical_arrival - self._tolerance > now)
        )

    @property
    def auth_failing(self) -> bool:
        """Whether the API refuses our credentials right now."""
        return self._outage is not None and self._outage.kind == "auth"

    @property
    def refusal(self) -> str | None:
        """Why the API refuses every request whatever the record, in the error's words.

        ``None`` while it does not; an open circuit is no refusal (the API is down, and no
        setting of ours is wrong).
        """
        outage = self._outage
        if outage is None or outage.kind == "circuit":
            return None
        meaning = _REFUSALS.get(outage.kind, ("", "the Space API refuses every request"))[1]
        return f"{meaning}: {outage.detail}" if outage.detail else meaning

    @property
    def outage(self) -> str | None:
        """The kind of outage under way: ``circuit``, ``auth`` or ``config``; ``None`` if none."""
        return self._outage.kind if self._outage is not None else None

    @property
    def throttled_for(self) -> float:
        """Seconds a ``Retry-After`` still holds every request back; 0 when none does."""
        return max(self._pause_until - self._clock.monotonic(), 0.0) if self._pause_until else 0.0

    @property
    def state(self) -> CircuitState:
        """Closed; open (waiting out its open time); half-open (a probe may go)."""
        outage = self._outage
        if outage is None:
            return CircuitState.CLOSED
        if outage.probing or self._clock.monotonic() >= outage.retry_at:
            return CircuitState.HALF_OPEN
        return CircuitState.OPEN

    def refresh_metrics(self) -> None:
        """Keep the state gauges current (called once a second)."""
        state = self.state
        metrics.CIRCUIT_STATE.set(int(state))
        metrics.CIRCUIT_STATE_SECONDS.set(self._clock.monotonic() - self._state_since)
        metrics.AUTH_OUTAGE.set(int(self.auth_failing))
        metrics.ENDPOINT_OUTAGE.set(int(self._outage is not None and self._outage.kind == "config"))
        metrics.SCHEMA_REGISTRY_OUTAGE.set(self.outage == "registry")

    # Admission

    async def admit(self) -> bool:
        """Wait until an attempt may go; ``True`` when it goes as the outage's probe."""
        while True:
            now = self._clock.monotonic()
            outage = self._outage
            if outage is not None:
                if not outage.probing and now >= outage.retry_at:
                    outage.probing = True
                    self._set_state(CircuitState.HALF_OPEN)
                    return True
                await self._wait(None if outage.probing else outage.retry_at - now)
                continue
            if self._pause_until:
                if self._pause_until <= now:
                    self._pause_until = 0.0  # over: back to the fast path
                    continue
                pause = self._pause_until - now
                waited = pause + self._random() * THROTTLE_JITTER * pause
                metrics.THROTTLE_WAIT_SECONDS.inc(waited)
                await self._clock.sleep(waited)
                continue
            if self._interval:
                await self._take_rate_slot(now)
            return False

    async def _take_rate_slot(self, now: float) -> None:
        """Take the next slot of the token bucket (GCRA), waiting in line for it if need be.

        A slot is booked only by the waiter that gets it: one cancelled in line (its lane was
        revoked, or cancelled by a deadline drain) books nothing, so nobody after it waits for a
        slot nobody used. Only the head of the line sleeps, until its slot; the others wait
        their turn in order, so each admission stays O(1) and the burst is never exceeded.
        """
        if not self._rate_waiters and self._theoretical_arrival - self._tolerance <= now:
            self._theoretical_arrival = max(self._theoretical_arrival, now) + self._interval
            return
        self._rate_waiters += 1
        try:
            async with self._rate_turn:
                # Nobody else books while the head waits: its slot cannot move meanwhile.
                start = max(self._clock.monotonic(), self._theoretical_arrival - self._tolerance)
                await self._clock.sleep(start - self._clock.monotonic())
                self._theoretical_arrival = max(self._theoretical_arrival, start) + self._interval
        finally:
            self._rate_waiters -= 1
            metrics.RATE_LIMIT_WAIT_SECONDS.inc(self._clock.monotonic() - now)

    async def _wait(self, timeout: float | None) -> None:
        """Sleep until the gate changes, or ``timeout`` passes."""
        if self._changed is None or self._changed.done():
            self._changed = asyncio.get_running_loop().create_future()
        await self._clock.wait(self._changed, timeout)

    def _wake(self) -> None:
        if self._changed is not None and not self._changed.done():
            self._changed.set_result(None)

    # Outcomes

    def record(self, error: BaseException | None, probe: bool) -> None:
        """Learn how an admitted attempt ended: accepted, failed (its error) or cancelled."""
        if error is None or _answered(error):
            self._succeeded()
            return
        if isinstance(error, asyncio.CancelledError):
            if probe and self._outage is not None:
                self._outage.probing = False  # another attempt may probe
                self._wake()
            return
        retry_after = getattr(error, "retry_after", None)
        if retry_after:
            pause = min(retry_after, self._limits.retry_after_max)
            self._pause_until = max(self._pause_until, self._clock.monotonic() + pause)
            metrics.THROTTLED.inc()
        if outage := getattr(error, "outage", None):
            _count_refusal(outage, error)
            # What the error says reaches /readyz: no URL in it may show a secret.
            self._fail(outage, probe, mask_url(str(error)), getattr(error, "status", None))
        elif getattr(error, "reason", None) in CIRCUIT_REASONS:
            self._failures += 1
            if probe or self._failures >= self._limits.circuit_failures:
                self._fail("circuit", probe)
        elif self._outage is not None and self._outage.kind == "circuit":
            self._succeeded()  # answered (a 429, a 408): up, if busy; the pause handles that
        elif probe and self._outage is not None:
            self._outage.probing = False  # says nothing about credentials: probe again
            self._wake()

    def _succeeded(self) -> None:
        self._failures = 0
        outage = self._outage
        if outage is not None:
            self._outage = None
            self._set_state(CircuitState.CLOSED)
            log.warning(
                "gate.recovered",
                outage=outage.kind,
                after_s=round(self._clock.monotonic() - outage.since, 3),
            )
            self._wake()

    def _fail(self, kind: str, probe: bool, detail: str = "", status: int | None = None) -> None:
        now = self._clock.monotonic()
        outage = self._outage
        limits = self._limits
        if outage is None or outage.kind != kind:
            open_for = limits.open_initial
            self._outage = _Outage(kind, now, open_for, now + open_for, detail)
            if kind == "circuit":
                log.warning(
                    "gate.opened",
                    outage=kind,
                    open_s=open_for,
                    consecutive_failures=self._failures,
                )
            else:
                event = _REFUSALS.get(kind, ("gate.refused", ""))[0]
                log.warning(event, outage=kind, status=status, error=detail, open_s=open_for)
        elif probe:
            if detail != outage.detail:
                outage.detail = detail
                log.warning("gate.outage_changed", outage=kind, status=status, error=detail)
            outage.open_for = min(outage.open_for * 2, limits.open_max)
            outage.retry_at = now + outage.open_for
            outage.probing = False
        else:
            return
        self._set_state(CircuitState.OPEN)
        self._wake()

    def _set_state(self, state: CircuitState) -> None:
        self._state_since = self._clock.monotonic()
        metrics.CIRCUIT_STATE.set(int(state))


def _count_refusal(kind: str, error: BaseException) -> None:
    if kind == "auth":
        metrics.AUTH_FAILURES.inc()
    elif kind == "config":
        reason = getattr(error, "reason", None)
        metrics.ENDPOINT_FAULTS.labels(reason if reason in ENDPOINT_FAULTS else "other").inc()


def _answered(error: BaseException) -> bool:
    """A failure that still shows the API up and judging: a rejection of the record."""
    return getattr(error, "retryable", True) is False
