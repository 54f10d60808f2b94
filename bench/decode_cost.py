"""CPU per record of decoding a value before it is sent: Avro through a (warm) registry vs JSON.

The same record, as the sink handles it with ``PIPELINE_VALUE_FORMAT=avro`` (wire format, schema
looked up in the process's cache, fastavro, the JSON mapping, ``orjson.dumps`` of the body) and
with ``json`` (``orjson.loads``, then ``orjson.dumps``). Run alone, in its own process, so its CPU
time is its own; prints one JSON object for ``bench.py``.

    python bench/decode_cost.py [RECORDS]
"""

from __future__ import annotations

import asyncio
import datetime
import io
import json
import sys
import time
from decimal import Decimal
from typing import Any

import fastavro
import orjson

from pipeline.avro import AvroValues
from pipeline.formats import JsonValues, ValueFormat
from pipeline.records import Record

SCHEMA = {
    "type": "record",
    "name": "Order",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "customer", "type": "string"},
        {"name": "email", "type": ["null", "string"]},
        {"name": "status", "type": {"type": "enum", "name": "Status", "symbols": ["NEW", "PAID"]}},
        {
            "name": "total",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 12, "scale": 2},
        },
        {"name": "placed", "type": {"type": "long", "logicalType": "timestamp-millis"}},
        {
            "name": "lines",
            "type": {
                "type": "array",
                "items": {
                    "type": "record",
                    "name": "Line",
                    "fields": [
                        {"name": "sku", "type": "string"},
                        {"name": "quantity", "type": "int"},
                        {"name": "price", "type": "double"},
                    ],
                },
            },
        },
        {"name": "tags", "type": {"type": "map", "values": "string"}},
    ],
}
VALUE = {
    "id": 123456789,
    "customer": "Zoë Ångström",
    "email": "zoe@example.com",
    "status": "PAID",
    "total": Decimal("149.90"),
    "placed": datetime.datetime(2026, 12, 5, 22, 13, 20, 123000, tzinfo=datetime.UTC),
    "lines": [
        {"sku": "A-1", "quantity": 2, "price": 19.95},
        {"sku": "B-22", "quantity": 1, "price": 60.0},
        {"sku": "C-333", "quantity": 5, "price": 10.0},
    ],
    "tags": {"channel": "web", "region": "eu-west"},
}


class WarmRegistry:
    """The registry after its first answer: every lookup is the process's cache."""

    def __init__(self) -> None:
        self.parsed = fastavro.parse_schema(SCHEMA)

    async def schema(self, schema_id: int) -> Any:  # noqa: ANN401 - fastavro's parsed schema
        return self.parsed


def records() -> tuple[Record, Record]:
    """The same order as an Avro wire-format record and as a JSON record (what avro yields)."""
    out = io.BytesIO(b"\x00" + (1).to_bytes(4, "big"))
    out.seek(5)
    fastavro.schemaless_writer(out, fastavro.parse_schema(SCHEMA), VALUE)
    avro = Record("orders", 0, 0, 0, None, out.getvalue())
    decoded = asyncio.run(AvroValues(WarmRegistry()).decode(avro))
    return avro, Record("orders", 0, 0, 0, None, orjson.dumps(decoded))


async def cost(values: ValueFormat, record: Record, count: int) -> float:
    """CPU seconds of decoding ``record`` and serialising the body, ``count`` times."""
    for _ in range(min(count, 1000)):  # warm up
        orjson.dumps(await values.decode(record))
    started = time.process_time()
    for _ in range(count):
        orjson.dumps(await values.decode(record))
    return time.process_time() - started


def main() -> None:
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 100_000
    avro, plain = records()
    avro_s = asyncio.run(cost(AvroValues(WarmRegistry()), avro, count))
    json_s = asyncio.run(cost(JsonValues(), plain, count))
    print(
        json.dumps(
            {
                "records": count,
                "avro": {"cpu": avro_s, "bytes": len(avro.value or b"")},
                "json": {"cpu": json_s, "bytes": len(plain.value or b"")},
            }
        )
    )


if __name__ == "__main__":
    main()
