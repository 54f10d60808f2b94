"""The API's answer: what sinks give back, and how it becomes a record of the result topic."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import httpx
import orjson
import pytest
from aiokafka.errors import (
    KafkaConnectionError,
    KafkaError,
    MessageSizeTooLargeError,
    RequestTimedOutError,
    TopicAuthorizationFailedError,
)
from aiokafka.record.default_records import DefaultRecordBatchBuilder
from prometheus_client import REGISTRY
from structlog.testing import capture_logs

from pipeline.consumer import KafkaSecurity
from pipeline.errors import ConfigError, LaneHaltedError, RejectedError, ResultError
from pipeline.function_sink import FunctionSink
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.policy import RejectRules, Rules
from pipeline.producer import RECORD_LIMIT, AckedTopic
from pipeline.results import ResultingSink, ResultOptions, Results, record_limit, result_record
from pipeline.retry import Backoff
from pipeline.sender import OrderedSender
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


# Writing the answer to the result topic


class FakeProducer:
    """What AckedTopic uses of AIOKafkaProducer: fails with the scripted errors, then keeps."""

    def __init__(self, *errors: KafkaError) -> None:
        self.errors = list(errors)
        self.attempts = 0
        self.kept: list[tuple[str, bytes | None, bytes | None, list[tuple[str, bytes]]]] = []

    async def send_and_wait(
        self,
        topic: str,
        value: bytes | None = None,
        key: bytes | None = None,
        headers: list[tuple[str, bytes]] | None = None,
    ) -> None:
        self.attempts += 1
        await asyncio.sleep(0)
        if self.errors:
            raise self.errors.pop(0)
        self.kept.append((topic, key, value, headers or []))


class Counting:
    """A sink that counts its calls and answers each with a receipt."""

    def __init__(self, answer: bytes | None = b'{"id": "r-1"}') -> None:
        self.calls = 0
        self.answer = answer

    async def send(self, payload: object) -> Result | None:
        self.calls += 1
        if self.answer is None:
            return None
        record: Record = payload  # type: ignore[assignment]
        return Result(record, "orders/3/42", self.answer, "application/json", status=201)


def results_with(producer: FakeProducer, max_bytes: int = 1024 * 1024) -> Results:
    options = ResultOptions("orders-results", "unused:9092", max_bytes=max_bytes)
    fast = Backoff(initial=0.001, maximum=0.001)
    return Results(options, backoff=fast, producer=producer)  # type: ignore[arg-type]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def test_the_answer_is_written_with_the_records_key_and_where_it_came_from() -> None:
    producer = FakeProducer()
    record = Record(topic="orders", partition=3, offset=42, key=b"customer-7")

    await ResultingSink(Counting(), results_with(producer)).send(record)  # type: ignore[arg-type]

    [(topic, key, value, headers)] = producer.kept
    assert ("orders-results", b"customer-7", b'{"id": "r-1"}') == (topic, key, value)
    assert [
        ("x-original-topic", b"orders"),
        ("x-original-partition", b"3"),
        ("x-original-offset", b"42"),
        ("x-http-status", b"201"),
        ("idempotency-key", b"orders/3/42"),
        ("content-type", b"application/json"),
    ] == headers


async def test_a_failing_write_is_retried_without_calling_the_api_again() -> None:
    """The broker is away for two attempts: the write is tried again until it lands, and the
    API, which accepted the record, is asked once."""
    api = Counting()
    producer = FakeProducer(KafkaConnectionError(), RequestTimedOutError())
    before = sample("space_pipeline_results_failed_total", **PART, final="false")

    with capture_logs() as logs:
        await ResultingSink(api, results_with(producer)).send(Record(topic="results-retry"))

    assert (1, 3, 1) == (api.calls, producer.attempts, len(producer.kept))
    retried = [line for line in logs if line["event"] == "result.produce_failed"]
    assert [1, 2] == [line["attempt"] for line in retried]
    assert {("results-retry", 3, 42)} == {
        (line["topic"], line["partition"], line["offset"]) for line in retried
    }
    after = sample("space_pipeline_results_failed_total", **PART, final="false")
    assert 2.0 == after - before
    assert 1.0 == sample("space_pipeline_results_produced_total", **PART)


PART = {"topic": "results-retry", "partition": "3"}


async def test_a_write_that_can_never_succeed_raises_a_result_error_once() -> None:
    """Too large for the topic: no retry can help; the API was asked once, and the error says
    the record was delivered (so a batch is not split and sent again)."""
    api = Counting()
    producer = FakeProducer(MessageSizeTooLargeError())

    with pytest.raises(ResultError) as raised:
        await ResultingSink(api, results_with(producer)).send(Record(topic="results-final"))

    assert (1, 1, []) == (api.calls, producer.attempts, producer.kept)
    assert raised.value.delivered is True
    labels = {"topic": "results-final", "partition": "3", "final": "true"}
    assert 1.0 == sample("space_pipeline_results_failed_total", **labels)


async def test_no_answer_means_no_result_record() -> None:
    producer = FakeProducer()

    await ResultingSink(Counting(answer=None), results_with(producer)).send(Record())

    assert [] == producer.kept


def test_a_truncated_answer_says_so_in_a_header() -> None:
    result = Result(Record(), "orders/3/42", b"x" * 10, "text/plain", status=200, truncated=True)

    _, value, headers = result_record(result)

    assert b"x" * 10 == value
    assert ("x-truncated", b"true") in headers


def test_a_batch_result_names_its_first_and_last_offset() -> None:
    first, last = Record(offset=10), Record(offset=12, key=b"other")
    result = Result(first, "orders/3/10-12", b"{}", "application/json", 200, last=last)

    key, _, headers = result_record(result)

    assert b"customer-7" == key  # the first record's
    assert ("x-original-offset", b"10") in headers
    assert ("x-original-last-offset", b"12") in headers
    assert ("x-truncated", b"true") not in headers


def test_an_answer_is_cut_further_to_fit_a_topic_as_kafka_makes_it() -> None:
    """A body of the whole default limit would not fit with its headers: it is cut so that the
    record does, and marked truncated."""
    result = Result(Record(), "orders/3/42", b"x" * 1024 * 1024, "text/plain", 200)

    key, value, headers = result_record(result, record_limit(1024 * 1024))

    size = DefaultRecordBatchBuilder.estimate_size_in_bytes(key, value, headers)
    assert size <= RECORD_LIMIT
    assert len(value) < len(result.body)
    assert ("x-truncated", b"true") in headers


async def test_a_result_never_written_halts_the_partition_and_is_not_dead_lettered() -> None:
    """Through the rules and the sender, as the stage runs them: with dead-lettering on, the
    record the API accepted is neither dead-lettered nor sent again; its lane halts at it."""
    api = Counting()
    dead: list[object] = []

    class DeadLetters:
        async def write(self, record: object, error: object, attempts: int) -> None:
            dead.append(record)

    sink = ResultingSink(api, results_with(FakeProducer(TopicAuthorizationFailedError())))
    rules = Rules(sink.send, RejectRules("dead-letter"), DeadLetters())
    async with OrderedSender(rules, halt_on_rejection=True) as sender:
        receipt = sender.try_submit(Record(), "orders/3")
        later = sender.try_submit(Record(offset=43), "orders/3")
        await sender.drain()
        halted_by = sender.halted("orders/3")
        sender.cancel(["orders/3"])

    assert isinstance(receipt.exception(), ResultError)
    assert isinstance(later.exception(), LaneHaltedError)
    assert halted_by is receipt.exception()
    assert ([], 1) == (dead, api.calls)


class NoTopicProducer(FakeProducer):
    """A producer that starts, and finds no partitions for the topic."""

    stopped = False

    async def start(self) -> None:
        pass

    async def stop(self) -> None:
        self.stopped = True

    async def partitions_for(self, topic: str) -> set[int]:
        return set()


async def test_a_missing_result_topic_is_a_config_error_at_start_naming_the_setting() -> None:
    """The setting names a topic Kafka does not have: exit 2 with the setting, as for any other
    setting that cannot work, not a Kafka error and exit 1."""
    producer = NoTopicProducer()

    with pytest.raises(ConfigError) as raised:
        async with results_with(producer):
            pass

    assert [
        "PIPELINE_RESULT_TOPIC: the topic 'orders-results' does not exist: create it, or name"
        " one that does"
    ] == raised.value.problems
    assert producer.stopped


async def test_a_missing_dead_letter_topic_is_a_config_error_at_start_naming_the_setting() -> None:
    producer = NoTopicProducer()
    topic = AckedTopic(
        "orders-dlq",
        "unused:9092",
        client_id="c",
        idempotence=False,
        security=KafkaSecurity(),
        backoff=Backoff(initial=0.001, maximum=0.001),
        what="dead-letter",
        idempotence_setting="dead_letter_idempotence",
        topic_setting="dead_letter_topic",
        producer=producer,  # type: ignore[arg-type]
    )

    with pytest.raises(ConfigError) as raised:
        await topic.start()

    assert [
        "PIPELINE_DEAD_LETTER_TOPIC: the topic 'orders-dlq' does not exist: create it, or name"
        " one that does"
    ] == raised.value.problems
    assert producer.stopped
