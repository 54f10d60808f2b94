"""The API gate: one shared resource for every lane (throttle, rate limit, circuit, auth)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from pipeline.errors import AuthError, ConfigOutageError, RejectedError, RetryableSendError
from pipeline.gate import ApiGate, CircuitState, GateLimits
from pipeline.sender import OrderedSender


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


async def attempt(gate: ApiGate, error: BaseException | None = None) -> float:
    """One attempt through the gate that ends with ``error``; returns when it was admitted."""
    admitted = 0.0
    try:
        async with through(gate):
            admitted = time.monotonic()
            if error is not None:
                raise error
    except BaseException as raised:
        if raised is not error:
            raise
    return admitted


# Throttling


async def test_a_retry_after_holds_every_attempt_back_until_it_elapses() -> None:
    """A 429 with ``Retry-After: 0.3`` on one lane pauses the others too."""
    gate = ApiGate(GateLimits(), random_draw=no_jitter)

    await attempt(gate, throttled(0.3))
    started = time.monotonic()
    admitted = await asyncio.gather(*(attempt(gate) for _ in range(5)))

    assert all(t - started >= 0.29 for t in admitted)
    assert gate.blocked is False


async def test_lanes_leave_a_throttle_with_a_little_jitter() -> None:
    """Each waiting attempt adds up to 10% of the pause, so they do not restart in lockstep."""
    draws = iter([0.0, 0.5, 1.0])
    gate = ApiGate(GateLimits(), random_draw=lambda: next(draws))

    await attempt(gate, throttled(0.5))
    started = time.monotonic()
    admitted = sorted(await asyncio.gather(*(attempt(gate) for _ in range(3))))

    offsets = [t - started for t in admitted]
    assert offsets[0] == pytest.approx(0.5, abs=0.05)
    assert offsets[2] == pytest.approx(0.55, abs=0.05)


async def test_a_retry_after_of_zero_holds_nothing_back() -> None:
    """``Retry-After: 0`` pauses nobody (the lane's own backoff keeps it from looping)."""
    gate = ApiGate(GateLimits(), random_draw=no_jitter)

    await attempt(gate, throttled(0.0))

    assert gate.blocked is False


# Rate limit


async def test_the_rate_limit_lets_a_burst_through_then_spaces_attempts() -> None:
    """50/s with a burst of 5: five at once, then one every 20 ms, shared by all callers."""
    gate = ApiGate(GateLimits(rate_per_s=50, burst=5))
    started = time.monotonic()

    admitted = sorted(await asyncio.gather(*(attempt(gate) for _ in range(25))))

    offsets = [t - started for t in admitted]
    assert all(offset < 0.02 for offset in offsets[:5])
    assert offsets[-1] == pytest.approx(20 * 0.02, abs=0.05)
    per_second = max(sum(1 for t in admitted if s <= t < s + 1) for s in admitted)
    assert per_second <= 50 + 5


async def test_a_slot_booked_by_a_cancelled_waiter_is_given_back() -> None:
    """Ten attempts waiting for the rate limit are cancelled (their lanes were revoked): the next
    attempt waits for the next free slot, not behind ten slots nobody used."""
    gate = ApiGate(GateLimits(rate_per_s=10, burst=1))
    await attempt(gate)  # the bucket's one token: the next slot is 0.1 s away
    waiting = [asyncio.create_task(attempt(gate)) for _ in range(10)]
    await asyncio.sleep(0.01)
    for task in waiting:
        task.cancel()
    await asyncio.gather(*waiting, return_exceptions=True)

    started = time.monotonic()
    admitted = await attempt(gate)

    assert admitted - started < 0.3, "it waited for slots nobody used"


async def test_a_cancelled_waiter_leaves_no_hole_and_the_others_keep_their_order() -> None:
    """20/s: of five waiters the second is cancelled; the other four take the next four slots,
    in the order they came."""
    gate = ApiGate(GateLimits(rate_per_s=20, burst=1))
    await attempt(gate)
    started = time.monotonic()
    order: list[int] = []

    async def waiter(number: int) -> float:
        admitted = await attempt(gate)
        order.append(number)
        return admitted

    waiting = []
    for number in range(5):
        waiting.append(asyncio.create_task(waiter(number)))
        await asyncio.sleep(0)  # they come one after the other
    await asyncio.sleep(0.01)
    waiting.pop(1).cancel()
    admitted = await asyncio.gather(*waiting)

    assert [0, 2, 3, 4] == order
    assert admitted[-1] - started == pytest.approx(4 * 0.05, abs=0.04)


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
    gate = ApiGate(GateLimits(circuit_failures=3, open_initial=0.2, open_max=1.0))
    for _ in range(3):
        await attempt(gate, down())
    assert CircuitState.OPEN == gate.state
    assert gate.blocked

    spans: list[tuple[float, float]] = []

    async def probe_or_wait() -> None:
        async with through(gate):
            admitted = time.monotonic()
            await asyncio.sleep(0.05)
            spans.append((admitted, time.monotonic()))

    started = time.monotonic()
    await asyncio.gather(*(probe_or_wait() for _ in range(4)))

    probe, *others = sorted(spans)
    assert probe[0] - started >= 0.19, "nothing went before the open time"
    assert all(admitted >= probe[1] for admitted, _ in others), "the others waited for the probe"
    assert CircuitState.CLOSED == gate.state


async def test_a_failed_probe_doubles_the_open_time_up_to_the_maximum() -> None:
    """Each failed probe keeps the circuit open twice as long, capped."""
    gate = ApiGate(GateLimits(circuit_failures=1, open_initial=0.1, open_max=0.25))
    await attempt(gate, down())
    times = []
    for _ in range(3):
        started = time.monotonic()
        await attempt(gate, down())
        times.append(time.monotonic() - started)

    assert times[0] == pytest.approx(0.1, abs=0.04)
    assert times[1] == pytest.approx(0.2, abs=0.04)
    assert times[2] == pytest.approx(0.25, abs=0.04)


async def test_an_answer_that_rejects_the_record_resets_the_failure_count() -> None:
    """A 4xx means the API is up: it breaks a run of failures."""
    gate = ApiGate(GateLimits(circuit_failures=3))
    for error in (down(), down(), RejectedError("no", reason="4xx", status=422), down()):
        await attempt(gate, error)

    assert CircuitState.CLOSED == gate.state


async def test_a_cancelled_probe_lets_another_attempt_probe() -> None:
    """A probe that never finished (its lane was cancelled) frees the probe's place."""
    gate = ApiGate(GateLimits(circuit_failures=1, open_initial=0.05))
    await attempt(gate, down())
    await asyncio.sleep(0.06)

    probe = asyncio.create_task(attempt(gate, asyncio.CancelledError()))
    await asyncio.sleep(0.01)
    probe.cancel()
    started = time.monotonic()
    await attempt(gate)

    assert time.monotonic() - started < 0.05
    assert CircuitState.CLOSED == gate.state


async def test_a_throttled_probe_closes_the_circuit() -> None:
    """A 429 to the probe shows the API up (if busy): the circuit closes, the pause applies."""
    gate = ApiGate(GateLimits(circuit_failures=1, open_initial=0.05), random_draw=no_jitter)
    await attempt(gate, down())
    await asyncio.sleep(0.06)

    await attempt(gate, throttled(0.1))

    assert CircuitState.CLOSED == gate.state
    assert gate.blocked  # the Retry-After


# Auth outage


async def test_an_auth_failure_blocks_everything_from_the_first_one_until_a_success() -> None:
    """One 401 is an outage of the whole API: a probe at a time, then all clear on success."""
    gate = ApiGate(GateLimits(circuit_failures=5, open_initial=0.1))

    await attempt(gate, AuthError("401", reason="auth", status=401))
    blocked = (gate.blocked, gate.auth_failing)
    started = time.monotonic()
    await attempt(gate)

    assert (True, True) == blocked
    assert time.monotonic() - started >= 0.09
    assert (False, False) == (gate.blocked, gate.auth_failing)


async def test_an_answer_that_says_nothing_of_credentials_does_not_end_an_auth_outage() -> None:
    """A 429 to the auth probe leaves the outage in place; the next probe decides."""
    gate = ApiGate(GateLimits(open_initial=0.05), random_draw=no_jitter)
    await attempt(gate, AuthError("401", reason="auth", status=401))
    await asyncio.sleep(0.06)

    await attempt(gate, throttled(None))

    assert gate.auth_failing


# The endpoint is wrong (a redirect, an untrusted certificate)


async def test_a_redirect_blocks_everything_from_the_first_one_until_a_success() -> None:
    """A redirect is an outage of the configured URL like an auth failure: everything waits,
    a probe at a time, until the API accepts again."""
    gate = ApiGate(GateLimits(circuit_failures=5, open_initial=0.1))

    await attempt(gate, redirected())
    blocked = gate.blocked
    started = time.monotonic()
    await attempt(gate)

    assert blocked
    assert time.monotonic() - started >= 0.09
    assert (False, None) == (gate.blocked, gate.refusal)


async def test_only_one_probe_at_a_time_goes_while_the_endpoint_is_wrong() -> None:
    """Four lanes wait; one probes; the others go only once the probe was accepted."""
    gate = ApiGate(GateLimits(open_initial=0.05))
    await attempt(gate, redirected())
    spans: list[tuple[float, float]] = []

    async def probe_or_wait() -> None:
        async with through(gate):
            admitted = time.monotonic()
            await asyncio.sleep(0.05)
            spans.append((admitted, time.monotonic()))

    await asyncio.gather(*(probe_or_wait() for _ in range(4)))

    probe, *others = sorted(spans)
    assert all(admitted >= probe[1] for admitted, _ in others)


async def test_the_refusal_names_what_the_error_says_for_any_endpoint_fault() -> None:
    """``refusal`` (what ``/readyz`` shows) is the error's own words: the status and the
    Location of a redirect, the certificate problem of a TLS failure; credentials for auth."""
    gate = ApiGate(GateLimits(open_initial=0.01))

    await attempt(gate, redirected(308, "https://elsewhere.example/v2"))
    redirect = gate.refusal
    await asyncio.sleep(0.02)
    tls = ConfigOutageError("certificate verify failed: self-signed certificate", reason="tls")
    await attempt(gate, tls)
    untrusted = gate.refusal
    await asyncio.sleep(0.02)
    await attempt(gate, AuthError("Space API refused our credentials with 401", reason="auth"))
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
    gate = ApiGate(GateLimits(open_initial=0.01))

    with capture_logs() as logs:
        await attempt(gate, redirected(307, "https://a.example/"))
        for location in ("https://a.example/", "https://a.example/", "https://b.example/"):
            await asyncio.sleep(0.02)
            await attempt(gate, redirected(307, location))
        await asyncio.sleep(0.02)
        await attempt(gate)

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
    gate = ApiGate(GateLimits(open_initial=0.01))

    await attempt(gate, redirected())
    gate.refresh_metrics()
    during = sample("space_pipeline_endpoint_outage")
    await asyncio.sleep(0.02)
    await attempt(gate, ConfigOutageError("untrusted", reason="tls"))
    await asyncio.sleep(0.02)
    await attempt(gate, ConfigOutageError("who knows", reason="made-up"))
    await asyncio.sleep(0.02)
    await attempt(gate)
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
