"""Value formats: what a record's value bytes mean, before a body is shaped from them.

By default the stage never looks inside a value: its bytes are the request body as they are. When
the API wants something else (a value decoded from Avro, a body built by an expression), the value
is first decoded into plain JSON data (dicts, lists, strings, numbers, booleans, ``None``) by a
:class:`ValueFormat`. Decoding is per record and may need I/O (a schema registry), so it is async.

A value that cannot be decoded is the record's fault: :class:`~pipeline.errors.InvalidRecordError`,
a rejection (halt or dead letter), never a crash. A decoder whose own dependency is down raises a
retryable :class:`~pipeline.errors.SendError` instead, so the record waits like any other outage.
"""

from __future__ import annotations

from typing import Protocol

import orjson

from pipeline.errors import InvalidRecordError
from pipeline.records import KafkaRecord


class ValueFormat(Protocol):
    """Decodes a record's value into JSON data; a tombstone decodes to ``None``."""

    async def decode(self, record: KafkaRecord) -> object:
        """The value as JSON data, or raise a SendError saying whose fault it is."""
        ...


class JsonValues:
    """Values that are JSON text (UTF-8)."""

    async def decode(self, record: KafkaRecord) -> object:
        """The parsed value; text that is not JSON is the record's fault."""
        value = record.value
        if value is None:
            return None
        try:
            return orjson.loads(value)
        except orjson.JSONDecodeError as error:
            raise InvalidRecordError(f"the value is not JSON: {error}") from error


# Confluent's wire format: a magic byte 0, the schema id (4 bytes, big-endian), then the payload.
WIRE_MAGIC = 0
WIRE_HEADER_BYTES = 5


def wire_schema_id(value: bytes) -> int:
    """The schema id of a value in the schema registry's wire format, or the record's fault."""
    if len(value) < WIRE_HEADER_BYTES or value[0] != WIRE_MAGIC:
        first = f"a first byte of {value[0]}" if value else "no bytes"
        raise InvalidRecordError(
            f"the value is not in the schema registry's wire format ({first}, {len(value)}"
            " bytes; it must start with the magic byte 0 and a 4-byte schema id)"
        )
    return int.from_bytes(value[1:WIRE_HEADER_BYTES], "big")


class SchemaJsonValues:
    """JSON values behind the schema registry's wire format (Confluent's JSON Schema serializer).

    The payload is JSON text: reading it needs no schema, so the registry is not asked (the
    producer's serializer validated it against the schema already). The header is checked, then
    dropped.
    """

    async def decode(self, record: KafkaRecord) -> object:
        """The parsed JSON after the wire-format header."""
        value = record.value
        if value is None:
            return None
        schema_id = wire_schema_id(value)
        try:
            return orjson.loads(value[WIRE_HEADER_BYTES:])
        except orjson.JSONDecodeError as error:
            raise InvalidRecordError(
                f"the value after the header (schema id {schema_id}) is not JSON: {error}"
            ) from error
