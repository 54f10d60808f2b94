"""The rules: status classes as configured, and what a rejection leads to."""

from __future__ import annotations

import asyncio

import pytest

from pipeline.errors import RejectedError, RetryableSendError
from pipeline.policy import (
    DEAD_LETTERED,
    Classification,
    Outcome,
    RejectRules,
    Rules,
    Skips,
    format_statuses,
    parse_skip_list,
    parse_statuses,
)
from pipeline.retry import Backoff
from pipeline.sender import OrderedSender
from tests.fakes import FakeClock, Record


class FakeDeadLetters:
    """Keeps what would have gone to the dead-letter topic."""

    def __init__(self) -> None:
        self.written: list[tuple[int, str, int]] = []

    async def write(self, record: Record, error: RejectedError, attempts: int) -> None:
        self.written.append((record.offset, error.reason, attempts))


class Scripted:
    """A sink that raises the scripted errors for an offset, in turn, then accepts."""

    def __init__(self, script: dict[int, list[BaseException]]) -> None:
        self.script = script

    async def send(self, payload: object) -> None:
        record = payload[0] if isinstance(payload, list) else payload
        errors = self.script.get(record.offset)  # type: ignore[attr-defined]
        if errors:
            raise errors.pop(0)


def rejected() -> RejectedError:
    return RejectedError("no", reason="4xx", status=422, body="bad field")


# Statuses


@pytest.mark.parametrize(
    ("text", "codes"),
    [
        ("408,429", {408, 429}),
        ("500-503", {500, 501, 502, 503}),
        (" 409 , 500-501 ,", {409, 500, 501}),
        ("", set()),
    ],
)
def test_status_sets_take_lists_and_ranges(text: str, codes: set[int]) -> None:
    """Lists and ranges, spaces and empty entries tolerated."""
    assert frozenset(codes) == parse_statuses(text)


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("abc", "not a status code"),
        ("600", "within 100-599"),
        ("503-500", "backwards"),
        ("200-299", "2xx"),
        ("199-204", "2xx"),
    ],
)
def test_bad_status_sets_say_what_is_wrong(text: str, says: str) -> None:
    """A bad value is refused with the reason."""
    with pytest.raises(ValueError, match=says):
        parse_statuses(text)


def test_status_sets_print_back_in_their_short_form() -> None:
    """What ``space-pipeline config`` shows reads like what was written."""
    assert "408,409,425,429,500-599" == format_statuses(parse_statuses("408,409,425,429,500-599"))


def test_the_default_classification() -> None:
    """2xx accepted; 408, 409, 425, 429, 5xx retried; 401, 403, 407 auth; the rest rejected."""
    classes = Classification()

    assert [Outcome.ACCEPTED, Outcome.RETRY, Outcome.RETRY, Outcome.AUTH, Outcome.REJECTED] == [
        classes.outcome(status) for status in (204, 409, 503, 403, 404)
    ]


def test_the_skip_list_names_exact_records() -> None:
    """``topic/partition/offset`` entries, normalised; anything else is refused."""
    assert frozenset({"orders/3/42", "a.b/0/7"}) == parse_skip_list("orders/3/042, a.b/0/7")
    with pytest.raises(ValueError, match="topic/partition/offset"):
        parse_skip_list("orders/3")


# Rejections


async def test_halt_gives_the_rejection_back_to_the_sender() -> None:
    """``on_reject=halt``: the rejection is final for the record (its partition halts)."""
    sink = Scripted({1: [rejected()]})
    rules = Rules(sink.send, RejectRules("halt"), None)

    with pytest.raises(RejectedError):
        await rules(Record(offset=1))


async def test_dead_letter_stores_the_record_with_its_attempts_and_moves_on() -> None:
    """``on_reject=dead-letter``: the rejected record is written (after two retryable failures,
    three attempts in all) and its delivery ends, so the lane moves on."""
    sink = Scripted(
        {
            1: [
                RetryableSendError("busy", reason="5xx"),
                RetryableSendError("busy", reason="5xx"),
                rejected(),
            ]
        }
    )
    dead = FakeDeadLetters()
    rules = Rules(sink.send, RejectRules("dead-letter"), dead)

    async with OrderedSender(rules, backoff=Backoff(initial=0.001)) as sender:
        delivery = await sender.try_submit(Record(offset=1), "orders/3")

    assert [(1, "4xx", 3)] == dead.written
    assert DEAD_LETTERED == delivery.result


async def test_records_abandoned_by_a_revoke_leave_nothing_behind() -> None:
    """A record failing when its partition is revoked is never tried again by this member:
    fifty such revokes leave the rules holding nothing for those records."""
    failed = asyncio.Event()

    async def down(record: Record) -> None:
        failed.set()
        raise RetryableSendError("busy", reason="5xx")

    rules = Rules(down, RejectRules("dead-letter"), FakeDeadLetters())
    async with OrderedSender(rules, backoff=Backoff(initial=30.0)) as sender:
        for offset in range(50):
            failed.clear()
            sender.try_submit(Record(offset=offset), "orders/3")
            await failed.wait()
            sender.cancel(["orders/3"])  # the revoke
            await asyncio.sleep(0)

    assert kept(rules) <= 1


def kept(rules: Rules) -> int:
    """Entries in every map the rules hold."""
    return sum(len(value) for value in vars(rules).values() if isinstance(value, dict))


async def test_a_rejected_batch_goes_back_to_the_sender_to_be_split() -> None:
    """A batch is never dead-lettered whole: the sender splits it down to the culprit."""
    sink = Scripted({1: [rejected()]})
    dead = FakeDeadLetters()
    rules = Rules(sink.send, RejectRules("dead-letter"), dead, batched=True)

    with pytest.raises(RejectedError):
        await rules([Record(offset=1), Record(offset=2)])
    assert [] == dead.written


async def test_the_dead_letter_guard_halts_a_partition_that_rejects_too_much() -> None:
    """More dead letters on a partition within a minute than allowed: the next rejection halts
    instead (a misconfigured API must not drain a topic into the DLQ); other partitions are
    counted apart."""
    sink = Scripted({o: [rejected()] for o in range(5)})
    dead = FakeDeadLetters()
    rules = Rules(sink.send, RejectRules("dead-letter", dead_letter_max_per_minute=3), dead)

    for offset in range(3):
        await rules(Record(partition=0, offset=offset))
    with pytest.raises(RejectedError):
        await rules(Record(partition=0, offset=3))
    await rules(Record(partition=1, offset=4))

    assert [0, 1, 2, 4] == [offset for offset, _, _ in dead.written]


async def test_the_dead_letter_guard_counts_the_last_minute_only() -> None:
    """Two per minute allowed: a rejection sixty seconds after the first dead letter still meets
    it in the window and halts; just after, the first has left and the record goes to the DLQ,
    and the window moves on with it."""
    clock = FakeClock()
    sink = Scripted({o: [rejected()] for o in range(5)})
    dead = FakeDeadLetters()
    rules = Rules(
        sink.send, RejectRules("dead-letter", dead_letter_max_per_minute=2), dead, clock=clock
    )
    halted = []

    for offset, at in enumerate([0.0, 30.0, 60.0, 60.5, 61.0]):
        clock.now = at
        try:
            await rules(Record(offset=offset))
        except RejectedError:
            halted.append(at)

    assert [60.0, 61.0] == halted
    assert [0, 1, 3] == [offset for offset, _, _ in dead.written]


def test_dead_lettering_without_a_dead_letter_sink_is_refused() -> None:
    """A setup that would drop records is an error at once."""
    with pytest.raises(ValueError, match="dead-letter sink"):
        Rules(Scripted({}).send, RejectRules("dead-letter"), None)


async def test_skipped_records_are_dead_lettered_when_there_is_a_dlq() -> None:
    """An operator's skip goes to the DLQ (reason ``skipped``) when one is configured."""
    dead = FakeDeadLetters()
    skips = Skips(frozenset({"orders/3/42"}), dead)

    assert Record(offset=42) in skips
    assert Record(offset=43) not in skips
    await skips.let_past(Record(offset=42))

    assert [(42, "skipped", 0)] == dead.written
