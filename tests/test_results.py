"""The API's answer: what sinks give back, and how it becomes a record of the result topic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import orjson
import pytest

from pipeline.errors import RejectedError, ResultError
from pipeline.function_sink import FunctionSink
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.sink import Result
from tests.fakes import Record

URL = "https://space.example/v1/records"


def echoing(status: int = 201) -> httpx.MockTransport:
    """An API answering each request with the Idempotency-Key it carried, as JSON."""

    def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(status, json={"id": request.headers["Idempotency-Key"]})

    return httpx.MockTransport(answer)


def http_sink(transport: httpx.MockTransport, **config: object) -> HttpSink:
    settings = HttpSinkConfig(**({"url": URL} | config))  # type: ignore[arg-type]
    return HttpSink(settings, HttpxClient(transport, Timeouts()))


# What the HTTP sink gives back


async def test_the_http_sink_returns_the_answer_to_an_accepted_record_when_results_are_on() -> None:
    record = Record(offset=7)
    async with http_sink(echoing(), result_max_bytes=1024) as sink:
        result = await sink.send(record)

    assert (
        Result(
            first=record,
            idempotency_key="orders/3/7",
            body=b'{"id":"orders/3/7"}',
            content_type="application/json",
            status=201,
        )
        == result
    )


async def test_the_http_sink_returns_nothing_when_results_are_off() -> None:
    async with http_sink(echoing()) as sink:
        assert await sink.send(Record()) is None


async def test_a_batch_gets_one_result_naming_its_first_and_last_record() -> None:
    batch = [Record(offset=offset) for offset in (10, 11, 12)]
    async with http_sink(echoing(), result_max_bytes=1024, batch_format="json-array") as sink:
        result = await sink.send(batch)

    assert result is not None
    assert (batch[0], batch[-1], "orders/3/10-12") == (
        result.first,
        result.last,
        result.idempotency_key,
    )
    assert {"id": "orders/3/10-12"} == orjson.loads(result.body)


async def test_an_answer_longer_than_the_limit_is_cut_and_marked_truncated() -> None:
    async with http_sink(echoing(), result_max_bytes=5) as sink:
        result = await sink.send(Record())

    assert result is not None
    assert (b'{"id"', True) == (result.body, result.truncated)


# What a function sink gives back


@pytest.mark.parametrize(
    ("returned", "body", "content_type"),
    [
        (b"\x00receipt", b"\x00receipt", "application/octet-stream"),
        ("prix: 12 €", "prix: 12 €".encode(), "text/plain; charset=utf-8"),
        ({"id": 7, "ok": True}, b'{"id":7,"ok":true}', "application/json"),
        ([1, 2], b"[1,2]", "application/json"),
    ],
)
async def test_a_function_sinks_return_value_is_its_result(
    returned: object, body: bytes, content_type: str
) -> None:
    record = Record()
    sink = FunctionSink(lambda _: returned, result_max_bytes=1024)

    result = await sink.send(record)

    assert Result(record, "orders/3/42", body, content_type) == result


async def test_a_function_returning_none_gives_no_result() -> None:
    sink = FunctionSink(lambda _: None, result_max_bytes=1024)

    assert await sink.send(Record()) is None


async def test_a_function_sinks_result_is_cut_at_the_limit_too() -> None:
    sink = FunctionSink(lambda _: b"x" * 100, result_max_bytes=10)

    result = await sink.send(Record())

    assert result is not None
    assert (b"x" * 10, True) == (result.body, result.truncated)


async def test_a_batched_function_sink_gives_one_result_for_the_batch() -> None:
    batch = [Record(offset=offset) for offset in (5, 6)]

    async def receipt(records: Sequence[object]) -> dict[str, int]:
        await asyncio.sleep(0)
        return {"count": len(records)}

    sink = FunctionSink(receipt, batched=True, result_max_bytes=1024)

    result = await sink.send(batch)

    assert Result(batch[0], "orders/3/5-6", b'{"count":2}', "application/json", last=batch[1]) == (
        result
    )


async def test_a_function_sink_without_results_returns_nothing_whatever_the_function_does() -> None:
    assert await FunctionSink(lambda _: {"id": 1}).send(Record()) is None


async def test_a_function_result_that_is_not_json_halts_without_a_rejection() -> None:
    """The function accepted the record: a return value that cannot be written is a ResultError
    (final, and never dead-lettered as a rejection would be)."""
    sink = FunctionSink(lambda _: object(), result_max_bytes=1024)

    with pytest.raises(ResultError) as raised:
        await sink.send(Record())

    assert (False, True) == (raised.value.retryable, raised.value.delivered)
    assert not isinstance(raised.value, RejectedError)
