"""Your own function as the sink: what it gets, and what its answers mean."""

from __future__ import annotations

import asyncio
import threading

import pytest

from pipeline.checks import import_exceptions, import_function
from pipeline.errors import AuthError, InvalidRecordError, RejectedError, RetryableSendError
from pipeline.function_sink import FunctionSink
from pipeline.records import Record as PublicRecord
from pipeline.sender import OrderedSender
from tests.fakes import Record


class Keep:
    """A plain blocking function that keeps what it got and the thread it ran in."""

    def __init__(self) -> None:
        self.got: list[object] = []
        self.threads: set[str] = set()

    def __call__(self, item: object) -> None:
        self.got.append(item)
        self.threads.add(threading.current_thread().name)


@pytest.mark.parametrize(
    ("argument", "expected"),
    [
        ("record", PublicRecord("orders", 3, 42, 1_700_000_000_000, b"customer-7", b'{"id": 7}')),
        ("value", b'{"id": 7}'),
        ("json", {"id": 7}),
    ],
)
async def test_the_function_gets_the_record_its_value_or_its_json(
    argument: str, expected: object
) -> None:
    """``record`` is a frozen public Record; ``value`` the bytes; ``json`` the parsed value."""
    keep = Keep()

    await FunctionSink(keep, argument).send(Record())  # type: ignore[arg-type]

    assert [expected] == keep.got


async def test_a_blocking_function_runs_off_the_event_loop() -> None:
    """A plain function runs in a worker thread, never on the loop's own thread."""
    keep = Keep()

    async with OrderedSender(FunctionSink(keep).send) as sender:
        await sender.try_submit(Record(), lane="a")

    assert threading.main_thread().name not in keep.threads


async def test_an_async_function_is_awaited() -> None:
    """``async def`` functions are awaited on the loop."""
    got = []

    async def send(item: object) -> None:
        await asyncio.sleep(0)
        got.append(item)

    await FunctionSink(send, "value").send(Record())

    assert [b'{"id": 7}'] == got


async def test_a_value_that_is_not_json_is_a_rejection_of_that_record() -> None:
    """``json`` with a value that does not parse: the record is rejected, never retried."""
    with pytest.raises(InvalidRecordError):
        await FunctionSink(Keep(), "json").send(Record(value=b"{not json"))


async def test_a_batch_gives_the_function_a_list() -> None:
    """With batching the function gets the converted records of the batch as a list."""
    keep = Keep()

    await FunctionSink(keep, "json", batched=True).send([Record(), Record(value=b"[1]")])

    assert [[{"id": 7}, [1]]] == keep.got


class Refused(Exception):
    pass


class NotNow(Exception):
    retry_after = 3.0


class Final(Exception):
    retryable = False


class Locked(Exception):
    outage = "auth"


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (Refused("no"), RejectedError),
        (Final("never"), RejectedError),
        (NotNow("later"), RetryableSendError),
        (TypeError("a bug"), RetryableSendError),
        (Locked("401"), AuthError),
    ],
)
async def test_what_the_function_raises_says_what_happens_next(
    raised: Exception, expected: type[Exception]
) -> None:
    """A listed type or ``retryable = False`` rejects; ``outage = "auth"`` is an auth outage;
    anything else is retried under the policy, with its ``retry_after`` if it has one."""

    def send(item: object) -> None:
        raise raised

    with pytest.raises(expected) as caught:
        await FunctionSink(send, reject=(Refused,)).send(Record())

    assert raised is caught.value.__cause__
    if isinstance(raised, NotNow):
        assert 3.0 == caught.value.retry_after  # type: ignore[attr-defined]


def test_functions_and_exceptions_are_imported_by_name() -> None:
    """``module:function`` or dotted paths; builtins without a module."""
    assert import_function("json:dumps") is __import__("json").dumps
    assert import_function("os.path.join") is __import__("os").path.join
    assert (ValueError, KeyError) == import_exceptions(["ValueError", "builtins.KeyError"])


@pytest.mark.parametrize(
    ("path", "error"),
    [
        ("no_such_module_here:send", ImportError),
        ("json:no_such_function", AttributeError),
        ("json:__doc__", TypeError),
    ],
)
def test_a_name_that_is_no_function_fails_clearly(path: str, error: type[Exception]) -> None:
    """A missing module or attribute, or something not callable: an error that says so."""
    with pytest.raises(error):
        import_function(path)
