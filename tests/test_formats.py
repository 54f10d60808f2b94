"""Value formats: a value decoded into JSON data is what the HTTP sink sends, as JSON."""

from __future__ import annotations

import httpx
import orjson
import pytest

from pipeline.errors import InvalidRecordError
from pipeline.formats import JsonValues
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from tests.fakes import Record
from tests.test_http_sink import URL, FakeServer


def decoding_sink(server: FakeServer, **config: object) -> HttpSink:
    client = HttpxClient(httpx.MockTransport(server), Timeouts())
    return HttpSink(HttpSinkConfig(url=URL, **config), client, values=JsonValues())  # type: ignore[arg-type]


async def test_a_json_value_is_parsed_and_sent_as_json() -> None:
    server = FakeServer()
    async with decoding_sink(server) as sink:
        await sink.send(Record(value=b'{ "a" : [1, 2] }'))

    assert {"a": [1, 2]} == orjson.loads(server.request.content)


async def test_a_batch_of_decoded_values_stays_a_json_array() -> None:
    server = FakeServer()
    async with decoding_sink(server, batch_format="json-array") as sink:
        await sink.send([Record(offset=0, value=b"1"), Record(offset=1, value=None)])

    assert [1, None] == orjson.loads(server.request.content)


async def test_a_value_that_is_not_json_is_a_rejection_of_the_record() -> None:
    server = FakeServer()
    async with decoding_sink(server) as sink:
        with pytest.raises(InvalidRecordError, match="not JSON"):
            await sink.send(Record(value=b"\xff not json"))

    assert [] == server.requests
