"""JSON Schema topics: JSON behind the schema registry's wire format, the header dropped."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.errors import InvalidRecordError
from pipeline.formats import SchemaJsonValues
from pipeline.wiring import build_registry, value_format
from tests.fakes import Record
from tests.plugins.environment import only_settings
from tests.test_config import REQUIRED, load

HEADER = b"\x00\x00\x00\x00\x07"


async def test_the_json_after_the_header_is_the_value() -> None:
    decoded = await SchemaJsonValues().decode(Record(value=HEADER + '{"a": "Zoë"}'.encode()))

    assert {"a": "Zoë"} == decoded


async def test_a_tombstone_is_null() -> None:
    assert None is await SchemaJsonValues().decode(Record(value=None))


@pytest.mark.parametrize(
    ("value", "reason"),
    [
        (b'{"a": 1}', "not in the schema registry's wire format"),
        (HEADER + b"{not json", "schema id 7\\) is not JSON"),
    ],
)
async def test_a_value_without_the_header_or_without_json_is_a_rejection(
    value: bytes, reason: str
) -> None:
    with pytest.raises(InvalidRecordError, match=reason):
        await SchemaJsonValues().decode(Record(value=value))


def test_json_schema_values_need_no_registry(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    only_settings(monkeypatch, tmp_path, REQUIRED | {"PIPELINE_VALUE_FORMAT": "json-schema"})
    settings = load()

    assert build_registry(settings) is None
    assert isinstance(value_format(settings, None), SchemaJsonValues)
