"""The API gate: one shared resource for every lane (throttle, rate limit, circuit, auth)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from pipeline.clock import Clock, SystemClock
from pipeline.errors import AuthError, ConfigOutageError, RejectedError, RetryableSendError
from pipeline.gate import ApiGate, CircuitState, GateLimits
from pipeline.sender import OrderedSender
from tests.fakes import FakeClock


def no_jitter() -> float:
    return 0.0


def down() -> RetryableSendError:
    return RetryableSendError("unreachable", reason="connection")


def redirected(status: int = 307, location: str = "https://new.example/items") -> Exception:
    """What the HTTP sink raises for a redirect (the URL setting is wrong)."""
    return ConfigOutageError(
        f"Space API answered {status}, redirecting to {location}: fix the URL setting",
        reason="redirect",
        status=status,
        location=location,
    )


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def throttled(retry_after: float | None) -> RetryableSendError:
    """A 429, with its Retry-After in seconds (None: the answer gave none)."""
    return RetryableSendError("429", reason="429", status=429, retry_after=retry_after)


@asynccontextmanager
async def through(gate: ApiGate) -> AsyncIterator[None]:
    """One attempt through the gate as the sender makes it: admission, then its outcome."""
    probe = False if gate.clear else await gate.admit()
    try:
        yield
    except BaseException as error:
        gate.record(error, probe)
        raise
    gate.record(None, probe)


SYSTEM_CLOCK = SystemClock()


async def attempt(
    gate: ApiGate, error: BaseException | None = None, clock: Clock = SYSTEM_CLOCK
) -> float:
    """One attempt through the gate that ends with ``error``; returns when it was admitted, on
    ``clock`` (the gate's)."""
    admitted = 0.0
    try:
        async with through(gate):
            admitted = clock.monotonic()
            if error is not None:
                raise error
    except BaseException as raised:
        if raised is not error:
            raise
    return admitted


# Throttling


async def test_a_retry_after_holds_every_attempt_back_until_it_elapses() -> None:
    """A 429 with ``Retry-After: 0.3`` on one lane pauses the others too."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(), random_draw=no_jitter, clock=clock)

    await attempt(gate, throttled(0.3), clock)
    admitted = await asyncio.gather(*(attempt(gate, clock=clock) for _ in range(5)))

    assert [0.3] * 5 == admitted
    assert gate.blocked is False


async def test_lanes_leave_a_throttle_with_a_little_jitter() -> None:
    """Each waiting attempt adds up to 10% of the pause, so they do not restart in lockstep."""
    draws = iter([0.0, 0.5, 1.0])
    clock = FakeClock()
    gate = ApiGate(GateLimits(), random_draw=lambda: next(draws), clock=clock)

    await attempt(gate, throttled(0.5), clock)
    admitted = await asyncio.gather(*(attempt(gate, clock=clock) for _ in range(3)))

    assert pytest.approx([0.5, 0.525, 0.55]) == admitted


async def test_a_retry_after_of_zero_holds_nothing_back() -> None:
    """``Retry-After: 0`` pauses nobody (the lane's own backoff keeps it from looping)."""
    gate = ApiGate(GateLimits(), random_draw=no_jitter)

    await attempt(gate, throttled(0.0))

    assert gate.blocked is False


# Rate limit


async def test_the_rate_limit_lets_a_burst_through_then_spaces_attempts() -> None:
    """50/s with a burst of 5: five at once, then one every 20 ms, shared by all callers."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(rate_per_s=50, burst=5), clock=clock)

    admitted = await asyncio.gather(*(attempt(gate, clock=clock) for _ in range(25)))

    assert pytest.approx([0.0] * 5 + [0.02 * slot for slot in range(1, 21)]) == admitted


async def test_a_slot_booked_by_a_cancelled_waiter_is_given_back() -> None:
    """Ten attempts waiting for the rate limit are cancelled (their lanes were revoked): the next
    attempt waits for the next free slot, not behind ten slots nobody used."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(rate_per_s=10, burst=1), clock=clock)
    await attempt(gate, clock=clock)  # the bucket's one token: the next slot is at 0.1 s
    waiting = [asyncio.create_task(attempt(gate, clock=clock)) for _ in range(10)]
    await clock.sleep(0.01)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)

    admitted = await attempt(gate, clock=clock)

    assert pytest.approx(0.1) == admitted, "it waited for slots nobody used"


async def test_a_cancelled_waiter_leaves_no_hole_and_the_others_keep_their_order() -> None:
    """20/s: of five waiters the second is cancelled; the other four take the next four slots,
    in the order they came."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(rate_per_s=20, burst=1), clock=clock)
    await attempt(gate, clock=clock)
    order: list[int] = []

    async def waiter(number: int) -> float:
        admitted = await attempt(gate, clock=clock)
        order.append(number)
        return admitted

    waiting = [asyncio.create_task(waiter(number)) for number in range(5)]  # in this order
    await clock.sleep(0.01)
    waiting.pop(1).cancel()
    admitted = await asyncio.gather(*waiting)

    assert [0, 2, 3, 4] == order
    assert pytest.approx([0.05, 0.1, 0.15, 0.2]) == admitted


async def test_a_deadline_drain_does_not_wait_for_a_rate_slot() -> None:
    """A lane waiting 5 s for the rate limit has sent nothing: a drain with a 1 s deadline
    cancels it at once, like a lane sleeping before a retry, rather than sleep to the deadline."""
    sent: list[str] = []

    async def send(item: str) -> None:
        sent.append(item)

    gate = ApiGate(GateLimits(rate_per_s=0.2, burst=1))
    async with OrderedSender(send, gate=gate) as sender:
        sender.try_submit("first", "a")
        waiting = sender.try_submit("second", "b")
        await asyncio.sleep(0.05)  # "first" went; "second" waits for the next slot
        started = time.monotonic()
        drained = await sender.drain(timeout=1)
        took = time.monotonic() - started

    assert not drained
    assert took < 0.5
    assert waiting.cancelled()
    assert ["first"] == sent


async def test_a_lane_that_reaches_a_rate_wait_during_a_deadline_drain_is_cancelled_at_once() -> (
    None
):
    """A lane still waiting for a place in flight when the drain starts, and then for the rate
    limit (another lane took the last slot meanwhile), does not sleep to the deadline either."""
    release = asyncio.Event()
    sent: list[str] = []

    async def send(item: str) -> None:
        sent.append(item)
        if item == "slow":
            await release.wait()

    gate = ApiGate(GateLimits(rate_per_s=0.2, burst=2))
    async with OrderedSender(send, gate=gate, max_in_flight=1) as sender:
        sender.try_submit("slow", "a")  # on the wire, holding the one place in flight
        await asyncio.sleep(0.01)
        sender.try_submit("other", "z")  # next in line: takes the bucket's last token
        revoked = sender.try_submit("revoked", "b")
        await asyncio.sleep(0.01)
        draining = asyncio.create_task(sender.drain(["b"], timeout=1))
        await asyncio.sleep(0.01)
        started = time.monotonic()
        release.set()
        drained = await draining
        took = time.monotonic() - started

    assert not drained
    assert took < 0.5
    assert revoked.cancelled()
    assert ["slow", "other"] == sent


# Circuit breaker


async def test_consecutive_failures_open_the_circuit_and_one_probe_goes_at_a_time() -> None:
    """Three connection failures open it for the open time; then exactly one attempt probes
    while the others wait; the probe's success closes it and lets everyone through."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=3, open_initial=0.2, open_max=1.0), clock=clock)
    for _ in range(3):
        await attempt(gate, down(), clock)
    assert CircuitState.OPEN == gate.state
    assert gate.blocked

    spans: list[tuple[float, float]] = []

    async def probe_or_wait() -> None:
        async with through(gate):
            admitted = clock.monotonic()
            await clock.sleep(0.05)
            spans.append((admitted, clock.monotonic()))

    await asyncio.gather(*(probe_or_wait() for _ in range(4)))

    probe, *others = sorted(spans)
    assert pytest.approx((0.2, 0.25)) == probe, "nothing went before the open time"
    assert pytest.approx([0.25] * 3) == [admitted for admitted, _ in others], (
        "the others waited for the probe"
    )
    assert CircuitState.CLOSED == gate.state


async def test_a_failed_probe_doubles_the_open_time_up_to_the_maximum() -> None:
    """Each failed probe keeps the circuit open twice as long, capped."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=1, open_initial=0.1, open_max=0.25), clock=clock)
    await attempt(gate, down(), clock)
    probes = [await attempt(gate, down(), clock) for _ in range(3)]

    assert pytest.approx([0.1, 0.1 + 0.2, 0.1 + 0.2 + 0.25]) == probes


async def test_an_answer_that_rejects_the_record_resets_the_failure_count() -> None:
    """A 4xx means the API is up: it breaks a run of failures."""
    gate = ApiGate(GateLimits(circuit_failures=3))
    for error in (down(), down(), RejectedError("no", reason="4xx", status=422), down()):
        await attempt(gate, error)

    assert CircuitState.CLOSED == gate.state


async def test_a_cancelled_probe_lets_another_attempt_probe() -> None:
    """A probe that never finished (its lane was cancelled) frees the probe's place."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=1, open_initial=0.05), clock=clock)
    await attempt(gate, down(), clock)
    await clock.sleep(0.06)

    probe = asyncio.create_task(attempt(gate, asyncio.CancelledError(), clock))
    await clock.sleep(0.01)
    probe.cancel()
    admitted = await attempt(gate, clock=clock)

    assert pytest.approx(0.07) == admitted, "it went at once, as the next probe"
    assert CircuitState.CLOSED == gate.state


async def test_a_throttled_probe_closes_the_circuit() -> None:
    """A 429 to the probe shows the API up (if busy): the circuit closes, the pause applies."""
    clock = FakeClock()
    gate = ApiGate(
        GateLimits(circuit_failures=1, open_initial=0.05), random_draw=no_jitter, clock=clock
    )
    await attempt(gate, down(), clock)
    await clock.sleep(0.06)

    await attempt(gate, throttled(0.1), clock)

    assert CircuitState.CLOSED == gate.state
    assert gate.blocked  # the Retry-After


# Auth outage


async def test_an_auth_failure_blocks_everything_from_the_first_one_until_a_success() -> None:
    """One 401 is an outage of the whole API: a probe at a time, then all clear on success."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=5, open_initial=0.1), clock=clock)

    await attempt(gate, AuthError("401", reason="auth", status=401), clock)
    blocked = (gate.blocked, gate.auth_failing)
    admitted = await attempt(gate, clock=clock)

    assert (True, True) == blocked
    assert pytest.approx(0.1) == admitted
    assert (False, False) == (gate.blocked, gate.auth_failing)


async def test_an_answer_that_says_nothing_of_credentials_does_not_end_an_auth_outage() -> None:
    """A 429 to the auth probe leaves the outage in place; the next probe decides."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(open_initial=0.05), random_draw=no_jitter, clock=clock)
    await attempt(gate, AuthError("401", reason="auth", status=401), clock)
    await clock.sleep(0.06)

    await attempt(gate, throttled(None), clock)

    assert gate.auth_failing


# The endpoint is wrong (a redirect, an untrusted certificate)


async def test_a_redirect_blocks_everything_from_the_first_one_until_a_success() -> None:
    """A redirect is an outage of the configured URL like an auth failure: everything waits,
    a probe at a time, until the API accepts again."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=5, open_initial=0.1), clock=clock)

    await attempt(gate, redirected(), clock)
    blocked = gate.blocked
    admitted = await attempt(gate, clock=clock)

    assert blocked
    assert pytest.approx(0.1) == admitted
    assert (False, None) == (gate.blocked, gate.refusal)


async def test_only_one_probe_at_a_time_goes_while_the_endpoint_is_wrong() -> None:
    """Four lanes wait; one probes; the others go only once the probe was accepted."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(open_initial=0.05), clock=clock)
    await attempt(gate, redirected(), clock)
    spans: list[tuple[float, float]] = []

    async def probe_or_wait() -> None:
        async with through(gate):
            admitted = clock.monotonic()
            await clock.sleep(0.05)
            spans.append((admitted, clock.monotonic()))

    await asyncio.gather(*(probe_or_wait() for _ in range(4)))

    probe, *others = sorted(spans)
    assert pytest.approx((0.05, 0.1)) == probe
    assert pytest.approx([0.1] * 3) == [admitted for admitted, _ in others]


async def test_the_refusal_names_what_the_error_says_for_any_endpoint_fault() -> None:
    """``refusal`` (what ``/readyz`` shows) is the error's own words: the status and the
    Location of a redirect, the certificate problem of a TLS failure; credentials for auth."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(open_initial=0.01), clock=clock)

    await attempt(gate, redirected(308, "https://elsewhere.example/v2"), clock)
    redirect = gate.refusal
    await clock.sleep(0.02)
    tls = ConfigOutageError("certificate verify failed: self-signed certificate", reason="tls")
    await attempt(gate, tls, clock)
    untrusted = gate.refusal
    await clock.sleep(0.02)
    refused = AuthError("Space API refused our credentials with 401", reason="auth")
    await attempt(gate, refused, clock)
    auth = gate.refusal

    assert redirect is not None
    assert "308" in redirect
    assert "https://elsewhere.example/v2" in redirect
    assert untrusted is not None
    assert "self-signed certificate" in untrusted
    assert auth is not None
    assert "credentials" in auth
    assert "401" in auth


async def test_an_endpoint_outage_logs_one_line_per_change() -> None:
    """One line when it starts, one when what the API says changes (another Location), none
    for a probe that fails the same way, one when it recovers."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(open_initial=0.01), clock=clock)

    with capture_logs() as logs:
        await attempt(gate, redirected(307, "https://a.example/"), clock)
        for location in ("https://a.example/", "https://a.example/", "https://b.example/"):
            await clock.sleep(0.02)
            await attempt(gate, redirected(307, location), clock)
        await clock.sleep(0.02)
        await attempt(gate, clock=clock)

    lines = [entry for entry in logs if entry["event"].startswith("gate.")]
    assert ["gate.endpoint_wrong", "gate.outage_changed", "gate.recovered"] == [
        line["event"] for line in lines
    ]
    assert "https://a.example/" in lines[0]["error"]
    assert 307 == lines[0]["status"]
    assert "https://b.example/" in lines[1]["error"]
    assert "config" == lines[2]["outage"]


async def test_endpoint_faults_are_counted_by_reason_and_the_outage_is_a_gauge() -> None:
    """``space_pipeline_endpoint_faults_total{reason}`` counts each failed attempt (redirect or
    tls); ``space_pipeline_endpoint_outage`` is 1 while it lasts."""
    name = "space_pipeline_endpoint_faults_total"
    before = {reason: sample(name, reason=reason) for reason in ("redirect", "tls", "other")}
    clock = FakeClock()
    gate = ApiGate(GateLimits(open_initial=0.01), clock=clock)

    await attempt(gate, redirected(), clock)
    gate.refresh_metrics()
    during = sample("space_pipeline_endpoint_outage")
    await clock.sleep(0.02)
    await attempt(gate, ConfigOutageError("untrusted", reason="tls"), clock)
    await clock.sleep(0.02)
    await attempt(gate, ConfigOutageError("who knows", reason="made-up"), clock)
    await clock.sleep(0.02)
    await attempt(gate, clock=clock)
    gate.refresh_metrics()

    after = {reason: sample(name, reason=reason) - before[reason] for reason in before}
    assert {"redirect": 1, "tls": 1, "other": 1} == after
    assert (1, 0) == (during, sample("space_pipeline_endpoint_outage"))


async def test_the_refusal_never_shows_a_secret_of_a_url_it_names() -> None:
    """``/readyz`` is served to anyone who can reach the pod: a Location (or any URL) in the
    error shows no password and no secret query value."""
    gate = ApiGate(GateLimits())

    await attempt(gate, redirected(302, "https://u:pa55@idp.example/token?sig=s1g&realm=r"))

    refusal = gate.refusal
    assert refusal is not None
    assert "pa55" not in refusal
    assert "s1g" not in refusal
    assert "realm=r" in refusal
