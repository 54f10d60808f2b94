"""The local tools for Avro topics: ``space-pipeline schema-registry`` and ``produce --avro``."""

from __future__ import annotations

import asyncio
import os
import re

import orjson
from aiokafka import AIOKafkaConsumer

from pipeline.avro import AvroValues
from pipeline.http11 import LeanClient
from pipeline.http_client import Timeouts
from pipeline.schema_registry import SchemaRegistry
from tests.plugins.processes import command
from tests.test_cli import Tool

ORDER = {
    "type": "record",
    "name": "Order",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "note", "type": ["null", "string"]},
        {
            "name": "total",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 9, "scale": 2},
        },
        {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
    ],
}
LINES = (
    '{"id": 1, "customer": "Zoë", "note": "at the door", "total": 12.5, "placed": 1700000000123}\n'
    '{"id": 2, "customer": "東京", "note": null, "total": 0.01, "placed": 0}\n'
)


async def test_produce_avro_registers_the_schema_and_writes_what_the_stage_decodes(
    kafka_bootstrap, tmp_path
):
    """JSON lines in, the registry's wire format out: the stage's decoder reads back the same
    documents (decimals with their scale, timestamps in ISO-8601), and the tool stops on Ctrl-C."""
    schema = tmp_path / "order.avsc"
    schema.write_bytes(orjson.dumps(ORDER))
    topic = f"avro-{os.getpid()}"
    registry = Tool("schema-registry", "--port", "0")
    try:
        found = re.search(r"(http://\S+)", await asyncio.to_thread(registry.first_line))
        assert found is not None
        url = found.group(1)
        args = ["produce", "--bootstrap", kafka_bootstrap, "--topic", topic, "--partitions", "1"]
        args += ["--stdin", "--avro", str(schema), "--registry", url]
        produced = await asyncio.to_thread(command, tmp_path, *args, stdin=LINES)
        assert 0 == produced.returncode, produced.stderr
        assert f"wrote 2 records to {topic}" in produced.stdout

        values = await read_values(kafka_bootstrap, topic, 2)
        client = LeanClient(Timeouts(), max_connections=1)
        async with SchemaRegistry(url, client) as schemas:
            decoder = AvroValues(schemas)
            decoded = [await decoder.decode(record) for record in values]
    finally:
        code = registry.stop()

    assert [
        {
            "id": 1,
            "customer": "Zoë",
            "note": "at the door",
            "total": "12.50",
            "placed": "2023-11-14T22:13:20.123Z",
        },
        {
            "id": 2,
            "customer": "東京",
            "note": None,
            "total": "0.01",
            "placed": "1970-01-01T00:00:00.000Z",
        },
    ] == decoded
    assert all(record.value[:5] == b"\x00\x00\x00\x00\x01" for record in values)
    assert 0 == code


async def read_values(bootstrap: str, topic: str, count: int) -> list:
    consumer = AIOKafkaConsumer(
        topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    try:
        records: list = []
        while len(records) < count:
            batch = await consumer.getmany(timeout_ms=1000)
            records += [record for part in batch.values() for record in part]
        return records
    finally:
        await consumer.stop()
