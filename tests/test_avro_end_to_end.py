"""An Avro topic end to end: a real broker, the local schema registry, real HTTP to the API."""

from __future__ import annotations

import contextlib
import io
from collections.abc import AsyncIterator
from decimal import Decimal
from typing import Any

import fastavro
import httpx
import orjson
import pytest
from aiohttp import web

from pipeline.dev.schema_registry import Registry, running
from pipeline.dev.stub_api import StubConfig, StubServer
from tests.faultproxy import FaultProxy
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually, eventually_async

pytestmark = pytest.mark.integration

PAYMENT = {
    "type": "record",
    "name": "Payment",
    "namespace": "shop",
    "fields": [
        {"name": "id", "type": "long"},
        {"name": "payer", "type": "string"},
        {"name": "reference", "type": ["null", "string", "long"], "default": None},
        {
            "name": "amount",
            "type": {"type": "bytes", "logicalType": "decimal", "precision": 18, "scale": 2},
        },
    ],
}


def avro(schema_id: int, value: dict[str, Any]) -> bytes:
    out = io.BytesIO(b"\x00" + schema_id.to_bytes(4, "big"))
    out.seek(5)
    fastavro.schemaless_writer(out, fastavro.parse_schema(PAYMENT), value)
    return out.getvalue()


def payment(i: int, **changes: Any) -> dict[str, Any]:
    return {"id": i, "payer": f"payer {i}", "reference": None, "amount": Decimal(i)} | changes


@contextlib.asynccontextmanager
async def recording_api() -> AsyncIterator[tuple[str, list[tuple[str, bytes]]]]:
    """An API that accepts everything and keeps each request's content type and body."""
    received: list[tuple[str, bytes]] = []

    async def accept(request: web.Request) -> web.Response:
        received.append((request.headers["Content-Type"], await request.read()))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_post("/items", accept)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}/items", received
    finally:
        await runner.cleanup()


async def test_an_avro_topic_arrives_as_json_decoded_through_the_registry(new_topic):
    """A union (null, string, long), a non-ASCII string and a decimal with cents: the API gets
    each record as plain JSON, and the registry was asked once for the schema."""
    topic = await new_topic(1)
    registry = Registry()
    schema_id = registry.register(f"{topic.name}-value", orjson.dumps(PAYMENT).decode())
    values = [
        payment(1, payer="Zoë Ångström ✓ 東京", reference="inv-7", amount=Decimal("1234.50")),
        payment(2, reference=99, amount=Decimal("0.01")),
        payment(3),
    ]
    await topic.send(*({"value": avro(schema_id, value), "partition": 0} for value in values))

    async with running(registry) as registry_url, recording_api() as (url, received):
        settings = topic.settings(url, value_format="avro", schema_registry_url=registry_url)
        async with running_stage(settings):
            await eventually(lambda: len(received) == 3, what="three requests")
            await eventually_async(
                lambda: _committed(topic, 3), what="offsets committed to the end"
            )

    assert [
        {"id": 1, "payer": "Zoë Ångström ✓ 東京", "reference": "inv-7", "amount": "1234.50"},
        {"id": 2, "payer": "payer 2", "reference": 99, "amount": "0.01"},
        {"id": 3, "payer": "payer 3", "reference": None, "amount": "3.00"},
    ] == [orjson.loads(body) for _, body in received]
    assert {"application/json"} == {content_type for content_type, _ in received}
    assert "Zoë Ångström ✓ 東京".encode() in received[0][1]
    assert [schema_id] == registry.looked_up


async def test_a_registry_outage_holds_everything_then_nothing_is_lost(new_topic):
    """The registry is down from the start: nothing is sent, nothing is rejected or committed,
    /readyz names the registry (under degraded). It comes back: every record is delivered, in
    order, once."""
    topic = await new_topic(2)
    registry = Registry()
    schema_id = registry.register(f"{topic.name}-value", orjson.dumps(PAYMENT).decode())
    await topic.send(
        *({"value": avro(schema_id, payment(i)), "partition": i % 2} for i in range(40))
    )

    async with (
        running(registry) as registry_url,
        StubServer(StubConfig(latency_ms=2.0)) as stub,
    ):
        port = httpx.URL(registry_url).port
        assert port is not None
        async with FaultProxy("127.0.0.1", port) as proxy:
            proxy.cut()
            settings = topic.settings(
                f"{stub.base_url}/items",
                value_format="avro",
                schema_registry_url=f"http://{proxy.address}",
            )
            async with running_stage(settings) as stage:
                await eventually(
                    lambda: stage._parts.gate.outage == "registry", what="a registry outage"
                )
                async with httpx.AsyncClient() as client:
                    ready = await client.get(f"http://127.0.0.1:{stage.ops_port}/readyz")
                assert 200 == ready.status_code  # every pod's outage: named, not unready
                assert "schema registry does not answer" in ready.text
                assert 0 == stub.stats().requests
                assert {0: 0, 1: 0} == {p: o or 0 for p, o in (await topic.committed()).items()}

                await proxy.restore()
                await eventually(lambda: stub.stats().unique == 40, what="all 40 delivered")
                await eventually_async(
                    lambda: _committed(topic, 40), what="offsets committed to the end"
                )

    stats = stub.stats()
    assert (40, 0, 0) == (stats.unique, stats.duplicates, stats.order_violations)
    assert [schema_id] == registry.looked_up  # failed probes never reached it


async def _committed(topic: Any, count: int) -> bool:
    return await topic.committed() == topic.expected_end(count)
