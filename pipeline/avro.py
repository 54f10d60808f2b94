"""Avro values in Confluent's wire format, decoded into the JSON an HTTP API expects.

The wire format is a magic byte ``0``, the writer's schema id (4 bytes, big-endian), then the
value in Avro's binary encoding. The schema comes from the registry (once per id, see
:mod:`pipeline.schema_registry`); fastavro decodes the rest.

Avro's own JSON encoding is made for Avro readers, not for web APIs: it wraps every union value
as ``{"type": value}``, writes bytes and decimals as strings of latin-1 code points and leaves
logical types as their raw numbers. An API wants the plain document, so the mapping is:

===========================  ==================================================================
Avro                         JSON
===========================  ==================================================================
record, map                  object (field names as the schema spells them)
array                        array
union                        the value alone, unwrapped: ``"a"``, never ``{"string": "a"}``
string, enum                 string (UTF-8 throughout: non-ASCII text arrives as it was)
int, long, float, double     number (NaN and infinities, which JSON has not, become ``null``)
boolean, null                ``true``/``false``, ``null``
bytes, fixed                 base64 string (RFC 4648, padded)
decimal                      string of the exact number, scale kept: ``"12.30"``
timestamp-millis/-micros     ISO-8601 in UTC: ``"2023-11-14T22:13:20.123Z"``
local-timestamp-*            ISO-8601 without a zone: ``"2023-11-14T22:13:20.123"``
date, time-millis/-micros    ``"2023-11-14"``, ``"22:13:20.123"``
uuid                         string
===========================  ==================================================================

Why: a union's branch name is Avro's bookkeeping, which no API asks for; a decimal as a JSON number
would be read as a double and lose cents; base64 is how JSON carries binary everywhere else.

Failures are the record's (an :class:`~pipeline.errors.InvalidRecordError`): a value not in the
wire format, an id the registry does not know, bytes the schema does not decode (bytes left over
included: they mean the writer used another schema). The registry's own failures are an outage
(:class:`~pipeline.errors.RegistryError`), raised by the registry.
"""

from __future__ import annotations

import base64
import datetime
import functools
import io
import math
import uuid
from collections.abc import Callable
from decimal import Decimal
from typing import Any

from fastavro import schemaless_reader

from pipeline.errors import InvalidRecordError
from pipeline.formats import WIRE_HEADER_BYTES, wire_schema_id
from pipeline.records import KafkaRecord
from pipeline.schema_registry import Schema, Schemas

# What fastavro may raise on bytes that do not fit the schema: a short read, a union index or an
# enum symbol out of range, a length that is negative or absurd, invalid UTF-8, a date out of
# range.
Converter = Callable[[Any], Any]

_UNDECODABLE = (EOFError, StopIteration, ValueError, IndexError, KeyError, OverflowError, TypeError)


class AvroValues:
    """Values in Confluent's Avro wire format (:class:`~pipeline.formats.ValueFormat`).

    Args:
        schemas: Where schema ids are looked up: the :class:`~pipeline.schema_registry
            .SchemaRegistry`.
    """

    def __init__(self, schemas: Schemas) -> None:
        self._schemas = schemas
        self._converters: dict[int, Converter | None] = {}  # by schema id

    async def decode(self, record: KafkaRecord) -> object:
        """The value as JSON data (see the module docstring); ``None`` for a tombstone."""
        value = record.value
        if value is None:
            return None
        schema_id = wire_schema_id(value)
        schema = await self._schemas.schema(schema_id)
        return self.read(schema_id, schema, value)

    def read(self, schema_id: int, schema: Schema, value: bytes) -> object:
        """Decode a wire-format ``value`` whose schema is known (the CPU part, for the bench)."""
        stream = io.BytesIO(value)
        stream.seek(WIRE_HEADER_BYTES)
        try:
            data = schemaless_reader(stream, schema, None)
        except _UNDECODABLE as error:
            raise InvalidRecordError(
                f"the value does not decode with schema id {schema_id}: {error!r}"
            ) from error
        left = len(value) - stream.tell()
        if left:
            raise InvalidRecordError(
                f"the value does not decode with schema id {schema_id}: {left} bytes left over"
            )
        try:
            convert = self._converters[schema_id]
        except KeyError:
            convert = self._converters[schema_id] = converter(schema)
        return data if convert is None else convert(data)


PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "string"})


def converter(schema: Schema) -> Converter | None:  # noqa: PLR0911 - one case per kind
    """What turns a decoded value of ``schema`` into JSON data; ``None`` when it already is.

    Built once per schema id, so a record pays only for the fields that need mapping (bytes,
    decimals, logical types): the rest, most of a typical record, is left as fastavro made it.
    A named type used again by name (a recursive one, one from a reference) and a union whose
    branches need mapping are mapped by the value's Python type instead (:func:`as_json`).
    (A NaN needs nothing: orjson writes it as ``null``.)
    """
    if isinstance(schema, list):
        return as_json if any(converter(branch) is not None for branch in schema) else None
    if isinstance(schema, str):
        if schema == "bytes":
            return _base64
        return None if schema in PRIMITIVES else as_json
    if not isinstance(schema, dict):
        return as_json
    if "logicalType" in schema:
        return as_json
    kind = schema.get("type")
    if kind in ("record", "error"):
        fields = [
            (field["name"], convert)
            for field in schema.get("fields", ())
            if (convert := converter(field["type"])) is not None
        ]
        return functools.partial(_record, fields) if fields else None
    if kind == "array":
        items = converter(schema["items"])
        return None if items is None else functools.partial(_array, items)
    if kind == "map":
        values = converter(schema["values"])
        return None if values is None else functools.partial(_map, values)
    if kind == "fixed":
        return _base64
    if kind == "enum":
        return None
    return converter(kind)


def _record(fields: list[tuple[str, Converter]], value: dict[str, Any]) -> dict[str, Any]:
    for name, convert in fields:  # fastavro's fresh dict: changed in place
        value[name] = convert(value[name])
    return value


def _array(convert: Converter, value: list[Any]) -> list[Any]:
    return [convert(item) for item in value]


def _map(convert: Converter, value: dict[str, Any]) -> dict[str, Any]:
    return {name: convert(item) for name, item in value.items()}


def _base64(value: bytes) -> str:
    return base64.b64encode(value).decode("ascii")


def as_json(value: Any) -> Any:  # noqa: ANN401, PLR0911 - one case per Python type fastavro yields
    """A value fastavro decoded, as JSON data (the mapping of the module docstring)."""
    if isinstance(value, dict):
        return {name: as_json(item) for name, item in value.items()}
    if isinstance(value, list):
        return [as_json(item) for item in value]
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if value is None or isinstance(value, str | int):  # bool is an int
        return value
    if isinstance(value, bytes):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, Decimal):
        return format(value, "f")
    if isinstance(value, datetime.datetime):
        return _instant(value)
    if isinstance(value, datetime.time):
        return value.isoformat(timespec=_precision(value.microsecond))
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, uuid.UUID):
        return str(value)
    return value  # nothing else comes out of fastavro


def _instant(value: datetime.datetime) -> str:
    """ISO-8601 to the millisecond (or microsecond, when it has one), UTC written ``Z``."""
    spec = _precision(value.microsecond)
    if value.tzinfo is None:
        return value.isoformat(timespec=spec)
    utc = value.astimezone(datetime.UTC).replace(tzinfo=None)
    return utc.isoformat(timespec=spec) + "Z"


def _precision(microsecond: int) -> str:
    return "milliseconds" if microsecond % 1000 == 0 else "microseconds"
