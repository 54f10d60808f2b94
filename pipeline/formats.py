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
