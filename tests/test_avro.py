"""Avro values in the schema registry's wire format become the JSON an API expects."""

from __future__ import annotations

import datetime
import io
import struct
import uuid
from decimal import Decimal
from typing import Any

import fastavro
import httpx
import orjson
import pytest

from pipeline.avro import AvroValues, as_json
from pipeline.errors import InvalidRecordError, RegistryError
from pipeline.function_sink import FunctionSink
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.shaping import BodyExpression
from tests.fakes import Record
from tests.test_http_sink import URL, FakeServer

ORDER = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "note", "type": ["null", "string"], "default": None},
        {
            "name": "total",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {"name": "signature", "type": "bytes"},
    ],
}
PLAIN = {
    "type": "record",
    "name": "Plain",
    "fields": [{"name": "n", "type": "int"}, {"name": "s", "type": ["null", "string"]}],
}


class FakeRegistry:
    """Schemas by id, counting the lookups; raises what it is told to."""

    def __init__(self, schemas: dict[int, Any], error: Exception | None = None) -> None:
        self.schemas = {i: fastavro.parse_schema(s) for i, s in schemas.items()}
        self.error = error
        self.lookups: list[int] = []

    async def schema(self, schema_id: int) -> Any:
        self.lookups.append(schema_id)
        if self.error is not None:
            raise self.error
        try:
            return self.schemas[schema_id]
        except KeyError:
            raise InvalidRecordError(f"schema id {schema_id} is unknown") from None


def wire(schema_id: int, schema: Any, value: dict[str, Any]) -> bytes:
    out = io.BytesIO()
    out.write(struct.pack(">bI", 0, schema_id))
    fastavro.schemaless_writer(out, fastavro.parse_schema(schema), value)
    return out.getvalue()


def order(**changes: Any) -> dict[str, Any]:
    value = {
        "id": 7,
        "customer": "Zoë Ångström ✓ 東京",
        "note": "leave at the door",
        "total": Decimal("1234567890.10"),
        "placed": datetime.datetime(2023, 11, 14, 22, 13, 20, 123000, tzinfo=datetime.UTC),
        "signature": b"\x00\xffsig",
    }
    return value | changes


async def decode(value: bytes | None, registry: FakeRegistry | None = None) -> Any:
    return await AvroValues(registry or FakeRegistry({3: ORDER})).decode(Record(value=value))


async def test_a_record_becomes_plain_json_with_the_chosen_mapping() -> None:
    decoded = await decode(wire(3, ORDER, order()))

    assert {
        "id": 7,
        "customer": "Zoë Ångström ✓ 東京",
        "note": "leave at the door",
        "total": "1234567890.10",
        "placed": "2023-11-14T22:13:20.123Z",
        "signature": "AP9zaWc=",
    } == decoded


async def test_a_union_is_its_value_alone_and_null_stays_null() -> None:
    assert "leave at the door" == (await decode(wire(3, ORDER, order())))["note"]
    assert None is (await decode(wire(3, ORDER, order(note=None))))["note"]


async def test_non_ascii_text_survives_to_the_json_sent() -> None:
    decoded = await decode(wire(3, ORDER, order()))

    assert "Zoë Ångström ✓ 東京" == orjson.loads(orjson.dumps(decoded))["customer"]


async def test_a_decimal_keeps_every_digit_and_its_scale() -> None:
    big = Decimal("9999999999.90")
    assert "9999999999.90" == (await decode(wire(3, ORDER, order(total=big))))["total"]
    small = Decimal("0.01")
    assert "0.01" == (await decode(wire(3, ORDER, order(total=small))))["total"]


def test_logical_types_become_iso_8601_and_strings() -> None:
    utc = datetime.UTC
    assert [
        "2023-11-14T22:13:20.123456Z",
        "2023-11-14T22:13:20.000Z",
        "2023-11-14T22:13:20.500",
        "2023-11-14",
        "01:02:03.004",
        "6f1c4a1e-0f43-4a9e-9a0e-2b7f8a3e2d11",
        None,
    ] == as_json(
        [
            datetime.datetime(2023, 11, 14, 22, 13, 20, 123456, tzinfo=utc),
            datetime.datetime(2023, 11, 14, 22, 13, 20, tzinfo=utc),
            datetime.datetime(2023, 11, 14, 22, 13, 20, 500000),  # local-timestamp: no zone
            datetime.date(2023, 11, 14),
            datetime.time(1, 2, 3, 4000),
            uuid.UUID("6f1c4a1e-0f43-4a9e-9a0e-2b7f8a3e2d11"),
            float("nan"),
        ]
    )


async def test_a_schema_of_json_types_only_is_decoded_as_fastavro_reads_it() -> None:
    registry = FakeRegistry({1: PLAIN})
    assert {"n": 1, "s": "é"} == await decode(wire(1, PLAIN, {"n": 1, "s": "é"}), registry)


async def test_the_schema_is_looked_up_by_the_id_in_the_value() -> None:
    registry = FakeRegistry({1: PLAIN, 3: ORDER})
    await decode(wire(3, ORDER, order()), registry)
    await decode(wire(1, PLAIN, {"n": 1, "s": None}), registry)

    assert [3, 1] == registry.lookups


async def test_a_tombstone_decodes_to_null_without_a_lookup() -> None:
    registry = FakeRegistry({3: ORDER})
    assert None is await decode(None, registry)
    assert [] == registry.lookups


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"id": 7}', "first byte of 123"),
        (b"\x01\x00\x00\x00\x03\x0e", "first byte of 1"),
        (b"\x00\x00\x00", "3 bytes"),
        (b"", "no bytes"),
    ],
)
async def test_a_value_not_in_the_wire_format_is_a_rejection(value: bytes, reason: str) -> None:
    with pytest.raises(InvalidRecordError, match=f"wire format.*{reason}"):
        await decode(value)


async def test_an_unknown_schema_id_is_a_rejection() -> None:
    with pytest.raises(InvalidRecordError, match="schema id 9 is unknown"):
        await decode(wire(9, ORDER, order()))


@pytest.mark.parametrize(
    "damage",
    [
        lambda value: value[:-3],  # cut short
        lambda value: value + b"\x02",  # bytes left over: another schema wrote it
        lambda value: value[:5] + b"\x0e\x7f" + value[7:],  # a string longer than the value
        lambda value: value[:5] + b"\x0e\x08\xff\xfe\xfd\xfc" + value[11:],  # no UTF-8
    ],
)
async def test_bytes_that_do_not_decode_are_a_rejection(damage: Any) -> None:
    with pytest.raises(InvalidRecordError, match="does not decode with schema id 3"):
        await decode(damage(wire(3, ORDER, order())))


async def test_a_registry_outage_is_raised_as_it_is_not_as_a_rejection() -> None:
    down = RegistryError("the schema registry failed", reason="registry")
    with pytest.raises(RegistryError) as raised:
        await decode(wire(3, ORDER, order()), FakeRegistry({3: ORDER}, error=down))

    assert (True, "registry") == (raised.value.retryable, raised.value.outage)


async def test_a_sink_function_gets_the_decoded_value_as_its_json_argument() -> None:
    got: list[Any] = []

    async def send(value: Any) -> None:
        got.append(value)

    values = AvroValues(FakeRegistry({1: PLAIN}))
    async with FunctionSink(send, "json", values=values) as sink:
        await sink.send(Record(value=wire(1, PLAIN, {"n": 1, "s": "ü"})))
    async with FunctionSink(send, "json", batched=True, values=values) as sink:
        await sink.send([Record(value=wire(1, PLAIN, {"n": 2, "s": None})), Record(value=None)])

    assert [{"n": 1, "s": "ü"}, [{"n": 2, "s": None}, None]] == got


async def test_a_sink_function_with_a_value_format_rejects_what_does_not_decode() -> None:
    async def send(value: Any) -> None:
        raise AssertionError("never called")

    values = AvroValues(FakeRegistry({1: PLAIN}))
    async with FunctionSink(send, "json", values=values) as sink:
        with pytest.raises(InvalidRecordError, match="wire format"):
            await sink.send(Record(value=b'{"n": 1}'))


async def test_a_body_expression_reads_the_avro_decoded_value() -> None:
    """``value`` in PIPELINE_SPACE_API_BODY is the value as the mapping made it: a decimal is
    its exact text, the union its plain value."""
    server = FakeServer()
    client = HttpxClient(httpx.MockTransport(server), Timeouts())
    body = BodyExpression("{who: value.customer, total: value.total, note: value.note}")
    values = AvroValues(FakeRegistry({3: ORDER}))
    async with HttpSink(HttpSinkConfig(url=URL), client, values=values, body=body) as sink:
        await sink.send(Record(value=wire(3, ORDER, order())))

    assert {
        "who": "Zoë Ångström ✓ 東京",
        "total": "1234567890.10",
        "note": "leave at the door",
    } == orjson.loads(server.request.content)
