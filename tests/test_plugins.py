"""The suite's own helpers (tests/plugins) read what the stage exposes as its readers would."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from tests.plugins.metrics import metric_value

EXPOSITION = """\
# HELP space_pipeline_rejections_total Records the API refused.
# TYPE space_pipeline_rejections_total counter
space_pipeline_rejections_total{partition="0",topic="a,b"} 1.0
space_pipeline_rejections_total{partition="1",topic="say \\"hi\\""} 2.0
space_pipeline_rejections_total{partition="2",topic="a b"} 3.0
"""


@asynccontextmanager
async def metrics_endpoint(text: str) -> AsyncIterator[str]:
    """A raw HTTP server on loopback answering every request with ``text`` as /metrics would."""
    body = text.encode()

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain; version=0.0.4\r\n"
            b"content-length: %d\r\nconnection: close\r\n\r\n%s" % (len(body), body)
        )
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    async with server:
        port = server.sockets[0].getsockname()[1]
        yield f"http://127.0.0.1:{port}/metrics"


async def test_metric_value_reads_label_values_holding_commas_quotes_and_spaces() -> None:
    """A topic may be named anything Kafka allows in a label: the sample is found by its labels
    as Prometheus parses them, not by splitting the line."""
    name = "space_pipeline_rejections_total"
    async with metrics_endpoint(EXPOSITION) as url:
        assert 1.0 == await metric_value(url, name, topic="a,b", partition="0")
        assert 2.0 == await metric_value(url, name, topic='say "hi"', partition="1")
        assert 3.0 == await metric_value(url, name, topic="a b", partition="2")
        assert None is await metric_value(url, name, topic="a", partition="0")


def test_no_test_swaps_the_class_of_a_built_consumer() -> None:
    """A test gives the stage its own consumer through ``Stage(source=...)``: assigning
    ``__class__`` would bypass the seam the stage is built around."""
    swap = "__class__" + " ="
    tests = Path(__file__).parent
    assert [] == [str(p) for p in tests.rglob("*.py") if swap in p.read_text()]
