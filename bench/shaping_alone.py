"""The HTTP sink building requests alone: plain JSON values as they are, decoded, and shaped.

For each way, ``HttpSink`` turns the same records into requests (body, URL, headers: what
``send`` does before the network) over and over; no request is sent. Prints one JSON object:
records, and the CPU seconds of each way.

    python bench/shaping_alone.py [RECORDS]
"""

import asyncio
import json
import sys
import time

from pipeline.formats import JsonValues
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.records import Record
from pipeline.shaping import BodyExpression

# The example, and a body that only picks fields.
EXPRESSION = "{item: value, source: join('/', [topic, to_string(partition), to_string(offset)])}"
FIELDS = "{id: value.id, space: value.space, t: value.reading.t}"
VALUE = json.dumps(
    {"id": 7, "space": "moon", "reading": {"t": 21.5, "unit": "C"}, "tags": ["a", "b", "c"]}
).encode()


class NoClient:
    """Nothing is sent: only the building of requests is measured."""

    async def aclose(self) -> None:
        return None


async def cpu_seconds(sink: HttpSink, records: list[Record]) -> float:
    started = time.process_time()
    for record in records:
        bodies, shaped = await sink._shape((record,))
        sink._single(record, bodies, shaped)
    return time.process_time() - started


async def main(count: int) -> dict:
    records = [
        Record("telemetry", offset % 8, offset, 1_700_000_000_000, b"sensor-7", VALUE)
        for offset in range(count)
    ]
    config = HttpSinkConfig(url="http://127.0.0.1:8080/v1/records")
    ways = {
        "bytes": HttpSink(config, NoClient()),  # type: ignore[arg-type]
        "decoded": HttpSink(config, NoClient(), values=JsonValues()),  # type: ignore[arg-type]
        "expression": HttpSink(config, NoClient(), body=BodyExpression(EXPRESSION)),  # type: ignore[arg-type]
        "fields": HttpSink(config, NoClient(), body=BodyExpression(FIELDS)),  # type: ignore[arg-type]
    }
    for sink in ways.values():  # warm up
        await cpu_seconds(sink, records[:1000])
    cpu = {
        name: min([await cpu_seconds(sink, records) for _ in range(3)])
        for name, sink in ways.items()
    }
    return {"records": count, "cpu": cpu}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(main(int(sys.argv[1]) if len(sys.argv) > 1 else 50_000))))
