"""Records that are too old (``PIPELINE_MAX_RECORD_AGE_S``): judged when their turn comes, never
sent, dead-lettered or skipped, counted and committed past; nothing else changes order."""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from pipeline import wiring
from pipeline.config import load_settings
from pipeline.dev.broker import numbered_record
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import ConfigError, DeadLetterError, RejectedError, RetryableSendError
from pipeline.gate import ApiGate, CircuitState, GateLimits
from pipeline.health import Verdict
from pipeline.policy import DEAD_LETTERED, Expiry, RejectRules, Rules, Withheld, reached_api
from pipeline.retry import Backoff
from pipeline.sender import BatchLimits, OrderedSender
from tests.fakes import FakeClock, Record
from tests.plugins.broker import Topic, new_dlq
from tests.plugins.environment import only_settings
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually, eventually_async
from tests.test_outcomes import dead_letters

NOW = 1_800_000_000.0  # the wall clock of these specs, in seconds
LIMIT = 600.0


def aged(offset: int, age_s: float, partition: int = 0) -> Record:
    """A record whose Kafka timestamp (milliseconds) lies ``age_s`` before :data:`NOW`."""
    return Record(
        topic="telemetry",
        partition=partition,
        offset=offset,
        timestamp=round((NOW - age_s) * 1000),
        value=f"{offset}".encode(),
    )


class FakeDeadLetters:
    def __init__(self, *, fail: bool = False) -> None:
        self.written: list[tuple[int, str]] = []
        self.fail = fail

    async def write(self, record: Record, error: RejectedError, attempts: int) -> None:
        if self.fail:
            raise DeadLetterError("the dead-letter topic is gone", cause=RuntimeError("gone"))
        self.written.append((record.offset, error.reason))


class Api:
    """A sink that keeps the offsets of every payload it is sent, and fails as scripted."""

    def __init__(self, failures: list[BaseException] | None = None) -> None:
        self.sent: list[list[int] | int] = []
        self.failures = failures or []
        self.before_failing: list[object] = []

    async def send(self, payload: object) -> None:
        if self.failures:
            raise self.failures.pop(0)
        if isinstance(payload, list):
            self.sent.append([r.offset for r in payload])
        else:
            self.sent.append(payload.offset)  # type: ignore[attr-defined]


class Wall:
    """The wall clock, as the specs move it."""

    def __init__(self) -> None:
        self.now = NOW

    def __call__(self) -> float:
        return self.now


def expired_count(partition: str = "0") -> float:
    labels = {"topic": "telemetry", "partition": partition}
    return REGISTRY.get_sample_value("space_pipeline_expired_records_total", labels) or 0.0


def expiry(dead_letters: FakeDeadLetters | None = None, wall: Wall | None = None) -> Expiry:
    return Expiry(LIMIT, dead_letters, now=wall or Wall())


def sender(rules: Rules, *, batch: int = 0, clock: FakeClock | None = None, gate=None):
    return OrderedSender(
        rules,
        max_in_flight=4,
        backoff=Backoff(initial=0.1, maximum=1.0),
        batch=BatchLimits(batch, 1 << 20, 0.0) if batch else None,
        halt_on_rejection=True,
        clock=clock or FakeClock(),
        gate=gate,
    )


# Age at the boundary


def test_a_record_exactly_as_old_as_the_limit_is_fresh_and_a_millisecond_older_is_expired():
    """ "Older than" the limit: the limit itself still goes."""
    rule = expiry()
    assert not rule.expired(aged(0, LIMIT))
    assert rule.expired(aged(1, LIMIT + 0.001))
    assert not rule.expired(aged(2, 0.0))


def test_a_record_without_a_timestamp_is_never_expired():
    """Kafka says -1 for "no timestamp" (old message formats): no age, so nothing to judge."""
    assert not expiry().expired(Record(timestamp=-1))


def test_a_timestamp_in_the_future_is_fresh():
    """A producer's clock ahead of ours makes a negative age: fresh, not an error."""
    assert not expiry().expired(aged(0, -3600.0))


# One record per request


async def test_expired_records_are_dead_lettered_as_expired_and_the_rest_go_in_order():
    """With a dead-letter topic, old records go there with reason ``expired``, never to the API;
    fresh ones are delivered in their order; each expired one is counted."""
    api, letters = Api(), FakeDeadLetters()
    rules = Rules(api.send, RejectRules(), letters, expiry=expiry(letters))
    before = expired_count()
    records = [aged(0, 10), aged(1, 900), aged(2, 5), aged(3, 601), aged(4, 1)]
    async with sender(rules) as s:
        receipts = [s.try_submit(r, 0) for r in records]
        await s.drain()
    assert [0, 2, 4] == api.sent
    assert [(1, "expired"), (3, "expired")] == letters.written
    assert all(r.done() and r.error is None for r in receipts)  # all committed past
    assert [True, False, True, False, True] == [reached_api(r.returned, r.item) for r in receipts]
    assert 2.0 == expired_count() - before


async def test_without_a_dead_letter_topic_expired_records_are_skipped_with_a_count():
    """No dead-letter topic: the old record is let past unsent, counted, and committed past."""
    api = Api()
    rules = Rules(api.send, RejectRules(), None, expiry=expiry(None))
    before = expired_count()
    async with sender(rules) as s:
        old, new = s.try_submit(aged(0, 3600), 0), s.try_submit(aged(1, 1), 0)
        await s.drain()
    assert [1] == api.sent
    assert old.error is None
    assert not reached_api(old.returned, old.item)
    assert new.error is None
    assert reached_api(new.returned, new.item)
    assert 1.0 == expired_count() - before


async def test_a_record_is_judged_when_its_turn_comes_not_when_it_was_fetched():
    """Fresh when handed over, it waits out an outage (retried); by the next attempt it is older
    than the limit, so that attempt lets it past instead of sending it."""
    wall, letters = Wall(), FakeDeadLetters()

    class Outage(Api):
        async def send(self, payload: object) -> None:
            if not self.sent and len(self.before_failing) < 3:
                self.before_failing.append(payload)
                wall.now += 300.0  # the outage lasts; the wall clock moves on
                raise RetryableSendError("503", reason="5xx", status=503)
            await super().send(payload)

    api = Outage()
    rules = Rules(api.send, RejectRules(), letters, expiry=expiry(letters, wall))
    async with sender(rules) as s:
        first = s.try_submit(aged(0, 0), 0)
        await s.drain()
    assert 3 == len(api.before_failing)  # tried while it was fresh
    assert [] == api.sent
    assert [(0, "expired")] == letters.written
    assert first.error is None
    assert not reached_api(first.returned, first.item)


async def test_a_dead_letter_that_can_never_be_written_halts_at_the_expired_record():
    """An expired record may be let past only once its dead letter is stored: otherwise the
    partition halts there, as for any dead letter."""
    api = Api()
    letters = FakeDeadLetters(fail=True)
    rules = Rules(api.send, RejectRules(), letters, expiry=expiry(letters))
    async with sender(rules) as s:
        old, new = s.try_submit(aged(0, 3600), 0), s.try_submit(aged(1, 1), 0)
        await s.drain()
    assert isinstance(old.error, DeadLetterError)
    assert new.error is not None  # halted behind it
    assert [] == api.sent


# Batches


async def test_expired_records_inside_a_batch_are_taken_out_and_the_rest_goes_as_one_batch():
    """The batch is formed as usual; the old records are let past and the fresh ones go in one
    request, in their order: nothing else changes."""
    api, letters = Api(), FakeDeadLetters()
    rules = Rules(api.send, RejectRules(), letters, batched=True, expiry=expiry(letters))
    records = [aged(0, 1), aged(1, 700), aged(2, 2), aged(3, 800), aged(4, 3)]
    async with sender(rules, batch=10) as s:
        receipts = [s.try_submit(r, 0) for r in records]
        await s.drain()
    assert [[0, 2, 4]] == api.sent
    assert [(1, "expired"), (3, "expired")] == letters.written
    assert [True, False, True, False, True] == [reached_api(r.returned, r.item) for r in receipts]
    assert all(r.error is None for r in receipts)


async def test_a_batch_of_only_expired_records_sends_nothing():
    api, letters = Api(), FakeDeadLetters()
    rules = Rules(api.send, RejectRules(), letters, batched=True, expiry=expiry(letters))
    async with sender(rules, batch=10) as s:
        receipts = [s.try_submit(aged(i, 1000 + i), 0) for i in range(3)]
        await s.drain()
    assert [] == api.sent
    assert [(0, "expired"), (1, "expired"), (2, "expired")] == letters.written
    assert not any(reached_api(r.returned, r.item) for r in receipts)


async def test_a_retried_batch_lets_its_expired_records_past_once():
    """The fresh rest fails and is retried: the expired records already went to the dead-letter
    topic and are neither written nor counted again."""
    api = Api([RetryableSendError("503", reason="5xx", status=503)] * 2)
    letters = FakeDeadLetters()
    rules = Rules(api.send, RejectRules(), letters, batched=True, expiry=expiry(letters))
    before = expired_count()
    async with sender(rules, batch=10) as s:
        for record in [aged(0, 1), aged(1, 700), aged(2, 2)]:
            s.try_submit(record, 0)
        await s.drain()
    assert [[0, 2]] == api.sent
    assert [(1, "expired")] == letters.written
    assert 1.0 == expired_count() - before


async def test_a_rejected_record_beside_expired_ones_in_a_batch_is_dead_lettered_alone():
    """The rest of the batch is one record, and the API refuses it: it is dead-lettered under
    the rejection rules; the expired one went as expired; the batch counts neither as sent."""
    api = Api([RejectedError("no", reason="4xx", status=422)])
    letters = FakeDeadLetters()
    rules = Rules(
        api.send,
        RejectRules(on_reject="dead-letter"),
        letters,
        batched=True,
        expiry=expiry(letters),
    )
    async with sender(rules, batch=10) as s:
        receipts = [s.try_submit(r, 0) for r in [aged(0, 700), aged(1, 1)]]
        await s.drain()
    assert [(0, "expired"), (1, "4xx")] == letters.written
    assert not any(reached_api(r.returned, r.item) for r in receipts)
    assert all(r.error is None for r in receipts)


async def test_a_rejected_batch_beside_expired_records_is_split_without_a_second_dead_letter():
    """The fresh rest is refused as a whole: the sender splits the original batch until the
    culprit is alone (halting there); the expired record is not written twice."""
    api = Api([RejectedError("no", reason="4xx", status=422)] * 3)
    letters = FakeDeadLetters()
    rules = Rules(api.send, RejectRules(), letters, batched=True, expiry=expiry(letters))
    async with sender(rules, batch=10) as s:
        receipts = [s.try_submit(r, 0) for r in [aged(0, 700), aged(1, 1), aged(2, 2)]]
        await s.drain()
    assert [(0, "expired")] == letters.written
    assert receipts[0].error is None
    assert not reached_api(receipts[0].returned, receipts[0].item)
    assert isinstance(receipts[1].error, RejectedError)  # alone, refused: the lane halts there


# Around the rules


def test_what_a_delivery_returned_says_which_records_reached_the_api():
    record = aged(5, 1)
    assert reached_api(None, record)
    assert not reached_api(DEAD_LETTERED, record)
    assert not reached_api(Withheld(frozenset({5}), answered=True), record)
    assert reached_api(Withheld(frozenset({4}), answered=True), record)


async def test_an_expired_record_on_the_outage_probe_does_not_end_the_outage():
    """After an outage the gate lets one probe through; if its record has expired, the API was
    never asked, so the gate must not take that for an answer: the next record probes again."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=1), clock=clock, random_draw=lambda: 0.0)
    gate.record(RetryableSendError("refused", reason="connection"), probe=False)
    assert CircuitState.CLOSED != gate.state  # the circuit is open
    states: list[CircuitState] = []

    async def api(record: Record) -> None:
        states.append(gate.state)

    rules = Rules(api, RejectRules(), None, expiry=expiry(None), clock=clock)
    async with sender(rules, clock=clock, gate=gate) as s:
        old, new = s.try_submit(aged(0, 3600), 0), s.try_submit(aged(1, 1), 0)
        await s.drain()
    assert old.error is None
    assert new.error is None
    assert [CircuitState.HALF_OPEN] == states, "the expired record closed the circuit"
    assert CircuitState.CLOSED == gate.state  # the fresh record's answer closed it


async def test_expired_records_are_logged_once_then_summarised():
    """After an outage thousands expire at once: one warning, then a summary per interval,
    not a line each."""
    clock = FakeClock()
    rule = Expiry(LIMIT, None, now=Wall(), clock=clock, log_interval=10.0)
    with capture_logs() as logs:
        for offset in range(500):
            await rule.let_past(aged(offset, 3600))
        clock.now += 11.0
        await rule.let_past(aged(500, 3600))
    lines = [e for e in logs if e["event"] == "policy.record_expired"]
    assert 2 == len(lines)
    assert 0 == lines[0]["offset"]
    assert 0 == lines[0]["held_back"]
    assert 499 == lines[1]["held_back"]
    assert 500 == lines[1]["offset"]
    assert lines[0]["max_age_s"] == LIMIT
    assert lines[0]["age_s"] >= 3600


# The setting


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path) -> pytest.MonkeyPatch:
    """Only the required settings, in a directory without a .env."""
    return only_settings(
        monkeypatch,
        tmp_path,
        {
            "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": "kafka:9092",
            "PIPELINE_KAFKA_TOPICS": "telemetry",
            "PIPELINE_SPACE_API_URL": "https://space.example/v1/records",
        },
    )


def test_the_age_limit_is_off_by_default_and_a_bad_one_is_named(env):
    """Off unless set; zero or a negative age is a mistake, named in one line."""
    assert load_settings(env_file=None).max_record_age_s is None
    env.setenv("PIPELINE_MAX_RECORD_AGE_S", "900")
    assert 900.0 == load_settings(env_file=None).max_record_age_s
    env.setenv("PIPELINE_MAX_RECORD_AGE_S", "0")
    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=None)
    assert 1 == len(raised.value.problems)
    assert "PIPELINE_MAX_RECORD_AGE_S" in raised.value.problems[0]


def test_the_wall_clock_not_the_monotonic_one_judges_age():
    """Kafka timestamps are wall time: the default ``now`` is ``time.time``."""
    rule = Expiry(LIMIT, None)
    assert not rule.expired(Record(timestamp=round(time.time() * 1000)))
    assert rule.expired(Record(timestamp=round((time.time() - LIMIT - 1) * 1000)))


# End to end: a real broker, the stub API


def produce_aged(topic: Topic, old: set[int], count: int) -> list[dict[str, Any]]:
    """``count`` numbered records, record ``i`` to partition ``i % 2``; those in ``old`` an hour
    old by their Kafka timestamp, the rest produced now."""
    now_ms = round(time.time() * 1000)
    records = []
    for i in range(count):
        key, value = numbered_record(i)
        stamp = now_ms - 3_600_000 if i in old else now_ms
        records.append({"value": value, "key": key, "partition": i % 2, "timestamp_ms": stamp})
    return records


def key_of(topic: Topic, i: int) -> str:
    return f"{topic.name}/{i % 2}/{i // 2}"


@pytest.mark.integration
@pytest.mark.parametrize("batch", [1, 10])
async def test_old_records_are_never_sent_but_dead_lettered_as_expired_and_committed_past(
    new_topic, batch
):
    """Records produced an hour ago (some first, some between fresh ones) never reach the API:
    they are on the dead-letter topic with ``x-error-reason: expired``, counted, and the group's
    offsets pass them; the fresh ones are delivered once each, in order, batched or not."""
    topic = await new_topic(2)
    dlq = await new_dlq(topic)
    old = {0, 1, 2, 3, 8, 13, 20}
    count = 40
    await topic.send(*produce_aged(topic, old, count))
    fresh = [i for i in range(count) if i not in old]
    before = [expired_sample(topic, p) for p in (0, 1)]
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(
            api.url,
            max_record_age_s=600,
            dead_letter_topic=dlq,
            dead_letter_idempotence=False,  # tansu has no InitProducerId
            batch_max_records=batch,
            batch_linger_ms=20,
        )
        async with running_stage(settings) as stage:
            await eventually(lambda: api.stats().records == len(fresh), what="the fresh records")
            await eventually_async(
                lambda: committed_is(topic, count), what="offsets past every record"
            )
            assert Verdict(ok=True) == stage.ready()
        stats = api.stats(offsets=True)
    letters = await dead_letters(topic.bootstrap, dlq)
    assert 0 == stats.order_violations
    assert 0 == stats.duplicates
    assert len(fresh) == stats.records
    if batch == 1:
        assert sorted(key_of(topic, i) for i in fresh) == sorted(stats.keys or ())
    assert sorted(key_of(topic, i) for i in old) == sorted(
        "/".join(
            dict(r.headers)[h].decode()
            for h in ("x-original-topic", "x-original-partition", "x-original-offset")
        )
        for r in letters
    )
    assert {b"expired"} == {dict(r.headers)["x-error-reason"] for r in letters}
    after = [expired_sample(topic, p) for p in (0, 1)]
    assert len(old) == sum(after) - sum(before)


@pytest.mark.integration
async def test_without_a_dead_letter_topic_old_records_are_skipped_and_committed_past(new_topic):
    topic = await new_topic(2)
    old = {0, 5, 6}
    count = 12
    await topic.send(*produce_aged(topic, old, count))
    async with StubServer(StubConfig(latency_ms=1)) as api:
        settings = topic.settings(api.url, max_record_age_s=600)
        async with running_stage(settings):
            await eventually(lambda: api.stats().records == count - len(old), what="the fresh")
            await eventually_async(lambda: committed_is(topic, count), what="offsets past all")
        stats = api.stats(offsets=True)
    assert sorted(key_of(topic, i) for i in range(count) if i not in old) == sorted(
        stats.keys or ()
    )
    assert 0 == stats.order_violations


def expired_sample(topic: Topic, partition: int) -> float:
    labels = {"topic": topic.name, "partition": str(partition)}
    return REGISTRY.get_sample_value("space_pipeline_expired_records_total", labels) or 0.0


async def committed_is(topic: Topic, count: int) -> bool:
    return topic.expected_end(count) == await topic.committed()


def test_the_setting_becomes_the_rules_expiry_only_when_set(env):
    """Unset, the rules have no expiry at all: nothing is judged, nothing costs."""
    assert wiring.expiry(load_settings(env_file=None), None) is None
    env.setenv("PIPELINE_MAX_RECORD_AGE_S", "900")
    rule = wiring.expiry(load_settings(env_file=None), None)
    assert rule is not None
    assert rule.expired(Record(timestamp=round((time.time() - 901) * 1000)))
    assert not rule.expired(Record(timestamp=round((time.time() - 899) * 1000)))
