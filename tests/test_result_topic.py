"""The API's answer on the result topic, end to end: a real broker, real HTTP, the stub API."""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from pipeline.dev.broker import create_topic
from pipeline.dev.stub_api import StubConfig, StubServer
from pipeline.errors import ConfigError
from pipeline.records import Record
from tests.plugins.broker import Topic
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually

pytestmark = pytest.mark.integration

# tansu has no idempotent producer (InitProducerId): results go with acks=all only here.
RESULTS = {"result_idempotence": False}


async def new_result_topic(topic: Topic, partitions: int) -> str:
    name = f"{topic.name}-results"
    await create_topic(topic.bootstrap, name, partitions)
    return name


async def read_all(
    bootstrap: str, topic: str, partitions: int, *, at_least: int, timeout: float = 30.0
) -> list[ConsumerRecord[Any, Any]]:
    """Every record of ``topic``, sorted by partition and offset, once ``at_least`` arrived.

    Records are counted as they are read, never from end offsets: tansu reports a partition's end
    too low after a multi-record batch (the result producer batches when lanes write at once),
    which left a wait on end offsets hanging now and then. A last short read catches any record
    beyond ``at_least`` (a duplicate would show there)."""
    consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    await consumer.start()
    try:
        tps = [TopicPartition(topic, p) for p in range(partitions)]
        consumer.assign(tps)
        for tp in tps:
            consumer.seek(tp, 0)
        records: list[ConsumerRecord[Any, Any]] = []
        deadline = asyncio.get_running_loop().time() + timeout
        while len(records) < at_least:
            if asyncio.get_running_loop().time() > deadline:
                pytest.fail(f"{len(records)} of {at_least} records on {topic} after {timeout}s")
            batch = await consumer.getmany(timeout_ms=200)
            records += [r for part in batch.values() for r in part]
        batch = await consumer.getmany(timeout_ms=300)
        records += [r for part in batch.values() for r in part]
        return sorted(records, key=lambda r: (r.partition, r.offset))
    finally:
        await consumer.stop()


def headers_of(record: ConsumerRecord[Any, Any]) -> dict[str, bytes]:
    return dict(record.headers)


async def test_each_accepted_record_has_its_answer_on_the_result_topic_in_source_order(
    new_topic,
):
    """The stub answers each record with its own id: every record has exactly one result, and
    each result carries its record's id, key and origin. Results are keyed by the source key, so
    within each result partition the results of one source partition keep the source order."""
    topic = await new_topic(3)
    results = await new_result_topic(topic, 2)
    await topic.produce(60)
    async with StubServer(StubConfig(latency_ms=1, answer_body="id")) as api:
        settings = topic.settings(api.url, result_topic=results, **RESULTS)
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 60, what="all delivered")
            written = await read_all(topic.bootstrap, results, 2, at_least=60)
        stats = api.stats()

    assert 0 == stats.order_violations
    assert topic.expected_end(60) == await topic.committed()
    assert 60 == len(written)
    seen = set()
    order: dict[tuple[int, int], list[int]] = defaultdict(list)
    for result in written:
        headers = headers_of(result)
        partition = int(headers["x-original-partition"])
        offset = int(headers["x-original-offset"])
        name = f"{topic.name}/{partition}/{offset}"
        assert {"id": name} == json.loads(result.value)
        assert name.encode() == headers["idempotency-key"]
        assert topic.name.encode() == headers["x-original-topic"]
        assert b"201" == headers["x-http-status"]
        assert headers["content-type"].startswith(b"application/json")
        assert f"item-{offset * 3 + partition}".encode() == result.key
        assert "x-original-last-offset" not in headers
        seen.add(name)
        order[result.partition, partition].append(offset)
    assert 60 == len(seen)
    assert all(offsets == sorted(offsets) for offsets in order.values())


async def test_a_batch_gets_one_result_per_request_naming_its_first_and_last_offset(new_topic):
    """With batching each request has one result, whose id is the batch's Idempotency-Key; the
    results of a partition cover its offsets once each, in order."""
    topic = await new_topic(2)
    results = await new_result_topic(topic, 1)
    await topic.produce(40)
    async with StubServer(StubConfig(latency_ms=1, answer_body="id")) as api:
        settings = topic.settings(
            api.url,
            result_topic=results,
            batch_max_records=7,
            batch_linger_ms=50,
            **RESULTS,
        )
        async with running_stage(settings):
            await eventually(lambda: api.stats().unique == 40, what="all delivered")
            written = await read_all(topic.bootstrap, results, 1, at_least=api.stats().accepted)
        stats = api.stats()

    assert stats.accepted == len(written)
    covered: dict[int, list[int]] = defaultdict(list)
    for result in written:
        headers = headers_of(result)
        partition = int(headers["x-original-partition"])
        first = int(headers["x-original-offset"])
        last = int(headers["x-original-last-offset"])
        name = f"{topic.name}/{partition}/{first}-{last}"
        assert {"id": name} == json.loads(result.value)
        assert name.encode() == headers["idempotency-key"]
        assert f"item-{first * 2 + partition}".encode() == result.key  # the first record's
        covered[partition] += range(first, last + 1)
    assert {p: list(range(n)) for p, n in topic.expected_end(40).items()} == covered


def receipt(record: Record) -> dict[str, object]:
    """A function sink's answer: the value it got back from its client library."""
    return {"receipt": record.offset, "seq": json.loads(record.value or b"null")["seq"]}


async def test_a_function_sinks_return_value_is_its_records_result(new_topic):
    topic = await new_topic(1)
    results = await new_result_topic(topic, 1)
    await topic.produce(5)
    settings = topic.settings(
        None, sink_function="tests.test_result_topic:receipt", result_topic=results, **RESULTS
    )
    async with running_stage(settings):
        written = await read_all(topic.bootstrap, results, 1, at_least=5)

    assert [{"receipt": n, "seq": n} for n in range(5)] == [json.loads(r.value) for r in written]
    assert all(b"application/json" == headers_of(r)["content-type"] for r in written)
    assert all("x-http-status" not in headers_of(r) for r in written)


async def test_an_idempotent_result_producer_on_a_broker_without_it_names_the_setting(new_topic):
    """tansu has no InitProducerId: with the default ``PIPELINE_RESULT_IDEMPOTENCE=true`` no
    result can be written, so the stage stops at start with the setting to change."""
    topic = await new_topic(1)
    results = await new_result_topic(topic, 1)
    settings = topic.settings("http://127.0.0.1:1/items", result_topic=results)

    with pytest.raises(ExceptionGroup) as raised:
        async with running_stage(settings):
            await asyncio.sleep(30)  # the stage fails long before

    error: BaseException = raised.value
    while isinstance(error, BaseExceptionGroup):  # the stage's task groups, nested
        error = error.exceptions[0]
    assert isinstance(error, ConfigError)
    assert "PIPELINE_RESULT_IDEMPOTENCE=false" in error.problems[0]
