"""The schema registry client against a real registry over loopback (the dev tools' own).

An id is asked once for the life of the process, whoever asks; an id the registry does not know is
the record's fault; a registry that is down, slow, failing or refusing us is an outage.
"""

from __future__ import annotations

import asyncio
import io
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import fastavro
import orjson
import pytest
from aiohttp import web

from pipeline.dev.schema_registry import Registry, running
from pipeline.errors import InvalidRecordError, RegistryError
from pipeline.gate import ApiGate, GateLimits
from pipeline.http11 import LeanClient
from pipeline.http_client import Timeouts
from pipeline.schema_registry import SchemaRegistry
from tests.fakes import FakeClock
from tests.faultproxy import FaultProxy
from tests.test_gate import attempt, sample

PLAIN = {"type": "record", "name": "Plain", "fields": [{"name": "n", "type": "int"}]}
PASSWORD = "sr-pa55word-1234"


def client(read: float = 5.0) -> LeanClient:
    return LeanClient(Timeouts(connect=1.0, read=read), max_connections=2)


def registered(*schemas: dict[str, Any]) -> Registry:
    registry = Registry()
    for number, schema in enumerate(schemas):
        registry.register(f"topic-{number}-value", orjson.dumps(schema).decode())
    return registry


@asynccontextmanager
async def failing(status: int, times: int, registry: Registry) -> AsyncIterator[str]:
    """A registry whose first ``times`` answers are ``status``, the real ones after that."""
    answered = 0

    async def by_id(request: web.Request) -> web.Response:
        nonlocal answered
        answered += 1
        if answered <= times:
            return web.json_response({"error_code": 50001, "message": "store down"}, status=status)
        schema_id = int(request.match_info["id"])
        registry.looked_up.append(schema_id)
        return web.json_response({"schema": registry.schemas[schema_id]})

    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", by_id)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}"
    finally:
        await runner.cleanup()


async def test_a_schema_is_fetched_by_id_once_for_the_life_of_the_process() -> None:
    registry = registered(PLAIN)
    async with running(registry) as url, SchemaRegistry(url, client()) as schemas:
        first = await schemas.schema(1)
        for _ in range(100):
            assert first is await schemas.schema(1)

    assert ("Plain", [1]) == (first["name"], registry.looked_up)


async def test_concurrent_first_lookups_of_one_id_make_one_request() -> None:
    registry = registered(PLAIN)
    async with running(registry) as url, SchemaRegistry(url, client()) as schemas:
        found = await asyncio.gather(*(schemas.schema(1) for _ in range(20)))

    assert [1] == registry.looked_up
    assert all(schema is found[0] for schema in found)


async def test_an_unknown_id_is_a_rejection_and_is_asked_again_next_time() -> None:
    """A 404 is no outage: the record that named the id is at fault. It is not kept either: a
    registry that lags behind its producer may know the id a moment later."""
    registry = registered(PLAIN)
    async with running(registry) as url, SchemaRegistry(url, client()) as schemas:
        for _ in range(2):
            with pytest.raises(InvalidRecordError, match="schema id 42 is unknown"):
                await schemas.schema(42)

    assert [42, 42] == registry.looked_up


@pytest.mark.parametrize("status", [500, 503, 401, 403, 429])
async def test_a_registry_answering_an_error_is_an_outage_until_it_answers(status: int) -> None:
    registry = registered(PLAIN)
    async with failing(status, 1, registry) as url, SchemaRegistry(url, client()) as schemas:
        with pytest.raises(RegistryError, match=f"answered {status}") as raised:
            await schemas.schema(1)
        assert ("registry", True, status) == (
            raised.value.outage,
            raised.value.retryable,
            raised.value.status,
        )
        assert "Plain" == (await schemas.schema(1))["name"]


async def test_concurrent_lookups_during_an_outage_share_one_failed_request() -> None:
    registry = registered(PLAIN)
    async with failing(503, 1, registry) as url, SchemaRegistry(url, client()) as schemas:
        outcomes = await asyncio.gather(
            *(schemas.schema(1) for _ in range(10)), return_exceptions=True
        )
        assert all(isinstance(outcome, RegistryError) for outcome in outcomes)
        assert "Plain" == (await schemas.schema(1))["name"]

    assert [1] == registry.looked_up  # the failed request, and one more after it


async def test_a_registry_that_is_down_is_an_outage_then_recovers() -> None:
    registry = registered(PLAIN)
    async with running(registry) as url:
        port = int(url.rsplit(":", 1)[1])
        proxy = FaultProxy("127.0.0.1", port)
        async with proxy, SchemaRegistry(f"http://{proxy.address}", client()) as schemas:
            proxy.cut()
            with pytest.raises(RegistryError) as raised:
                await schemas.schema(1)
            cause = raised.value.__cause__
            assert ("registry", "registry") == (raised.value.outage, raised.value.reason)
            assert "connection" == getattr(cause, "reason", None)
            await proxy.restore()
            assert "Plain" == (await schemas.schema(1))["name"]


async def test_a_registry_that_does_not_answer_in_time_is_an_outage() -> None:
    registry = registered(PLAIN)
    async with running(registry) as url:
        port = int(url.rsplit(":", 1)[1])
        async with FaultProxy("127.0.0.1", port) as proxy:
            proxy.latency_down = 1.0
            async with SchemaRegistry(f"http://{proxy.address}", client(read=0.2)) as schemas:
                with pytest.raises(RegistryError) as raised:
                    await schemas.schema(1)
    assert ("registry", "registry") == (raised.value.outage, raised.value.reason)
    assert "timeout" == getattr(raised.value.__cause__, "reason", None)


async def test_a_lookup_whose_asker_is_cancelled_is_made_by_the_next_waiter() -> None:
    registry = registered(PLAIN)
    async with running(registry) as url:
        port = int(url.rsplit(":", 1)[1])
        async with FaultProxy("127.0.0.1", port) as proxy:
            proxy.latency_down = 0.3
            async with SchemaRegistry(f"http://{proxy.address}", client()) as schemas:
                asker = asyncio.create_task(schemas.schema(1))
                await asyncio.sleep(0.05)
                waiter = asyncio.create_task(schemas.schema(1))
                await asyncio.sleep(0.05)
                asker.cancel()
                assert "Plain" == (await waiter)["name"]
                assert asker.cancelled()


async def test_basic_auth_is_sent_and_a_refusal_never_shows_the_password() -> None:
    registry = registered(PLAIN)
    async with running(registry, username="stage", password=PASSWORD) as url:
        async with SchemaRegistry(url, client(), username="stage", password=PASSWORD) as schemas:
            assert "Plain" == (await schemas.schema(1))["name"]
        async with SchemaRegistry(url, client(), username="stage", password="wrong") as schemas:
            with pytest.raises(RegistryError, match="answered 401") as raised:
                await schemas.schema(1)
    assert "wrong" not in str(raised.value)


async def test_a_password_in_the_url_is_masked_in_the_error() -> None:
    async with FaultProxy("127.0.0.1", 9) as proxy:
        proxy.cut()
        url = f"http://stage:{PASSWORD}@{proxy.address}"
        async with SchemaRegistry(url, client()) as schemas:
            with pytest.raises(RegistryError) as raised:
                await schemas.schema(1)
    assert PASSWORD not in str(raised.value)


async def test_named_types_of_referenced_subjects_are_resolved() -> None:
    registry = Registry()
    registry.register("money", orjson.dumps(MONEY).decode())
    with_reference = {
        "type": "record",
        "name": "Payment",
        "fields": [{"name": "amount", "type": "shop.Money"}],
    }
    registry.schemas[2] = orjson.dumps(with_reference).decode()
    reference = {"name": "shop.Money", "subject": "money", "version": 1}

    async def by_id(request: web.Request) -> web.Response:
        schema_id = int(request.match_info["id"])
        answer: dict[str, Any] = {"schema": registry.schemas[schema_id]}
        if schema_id == 2:
            answer["references"] = [reference]
        return web.json_response(answer)

    async def version(request: web.Request) -> web.Response:
        return web.json_response({"schema": registry.schemas[1], "version": 1, "id": 1})

    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", by_id)
    app.router.add_get("/subjects/{subject}/versions/{version}", version)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with SchemaRegistry(url, client()) as schemas:
            schema = await schemas.schema(2)
    finally:
        await runner.cleanup()
    written = io.BytesIO()
    fastavro.schemaless_writer(written, schema, {"amount": {"cents": 1250}})
    written.seek(0)
    assert {"amount": {"cents": 1250}} == fastavro.schemaless_reader(written, schema, None)


async def test_a_schema_that_is_not_avro_is_a_rejection() -> None:
    async def by_id(_: web.Request) -> web.Response:
        return web.json_response({"schema": "syntax = 'proto3';", "schemaType": "PROTOBUF"})

    app = web.Application()
    app.router.add_get("/schemas/ids/{id}", by_id)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    try:
        url = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with SchemaRegistry(url, client()) as schemas:
            with pytest.raises(InvalidRecordError, match="PROTOBUF schema, not Avro"):
                await schemas.schema(5)
    finally:
        await runner.cleanup()


MONEY = {
    "type": "record",
    "name": "Money",
    "namespace": "shop",
    "fields": [{"name": "cents", "type": "long"}],
}


async def test_a_registry_failure_holds_the_gate_from_the_first_one_and_names_the_registry() -> (
    None
):
    """What /readyz, the log and the alert read: the registry, not the Space API, is down."""
    clock = FakeClock()
    gate = ApiGate(GateLimits(circuit_failures=5, open_initial=0.1), clock=clock)
    down = RegistryError("the schema registry failed for schema id 1: refused", reason="registry")

    await attempt(gate, down, clock)
    gate.refresh_metrics()
    held = (
        gate.blocked,
        gate.outage,
        gate.refusal,
        sample("space_pipeline_schema_registry_outage"),
    )
    admitted = await attempt(gate, clock=clock)  # the probe gets its schema
    gate.refresh_metrics()

    assert (
        True,
        "registry",
        "the schema registry does not answer: the schema registry failed for schema id 1: refused",
        1.0,
    ) == held
    assert pytest.approx(0.1) == admitted
    assert (False, None, 0.0) == (
        gate.blocked,
        gate.outage,
        sample("space_pipeline_schema_registry_outage"),
    )
