"""A shaped body end to end: records from a real broker, requests over real HTTP."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import orjson
import pytest

from tests.plugins.broker import new_dlq
from tests.plugins.stage import running_stage
from tests.plugins.waiting import eventually, eventually_async
from tests.test_outcomes import DLQ, dead_letters

pytestmark = pytest.mark.integration

EXAMPLE = "{item: value, source: join('/', [topic, to_string(partition), to_string(offset)])}"


@dataclass
class Seen:
    """What the API received: path, one header and the body, request by request."""

    requests: list[tuple[str, str | None, object]] = field(default_factory=list)


@contextlib.asynccontextmanager
async def recording_api() -> AsyncIterator[tuple[str, Seen]]:
    from aiohttp import web  # noqa: PLC0415

    seen = Seen()

    async def answer(request: web.Request) -> web.Response:
        body = orjson.loads(await request.read())
        seen.requests.append((request.path, request.headers.get("X-Tenant"), body))
        return web.Response(status=204)

    app = web.Application()
    app.router.add_route("*", "/{path:.*}", answer)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        yield f"http://127.0.0.1:{runner.addresses[0][1]}", seen
    finally:
        await runner.cleanup()


async def test_the_api_receives_each_record_shaped_and_a_record_that_cannot_be_is_dead_lettered(
    new_topic,
):
    """The issue's example expression, a URL naming a path into the value and a header naming
    a Kafka header: each request is the record shaped. A record without the path is rejected
    (dead-lettered here), and the rest flows on, in order, and commits."""
    topic = await new_topic(1)
    dlq = await new_dlq(topic)
    await topic.send(
        {"value": b'{"space": "moon", "n": 1}', "headers": [("tenant", b"acme")]},
        {"value": b'{"n": 2}', "headers": [("tenant", b"acme")]},  # no space: cannot be sent
        {"value": b'{"space": "mars", "n": 3}', "headers": [("tenant", b"\xff")]},
        {"value": b'{"space": "mars", "n": 4}', "headers": [("tenant", b"beta")]},
    )
    async with recording_api() as (url, seen):
        settings = topic.settings(
            url + "/spaces/{value.space}/items",
            space_api_body=EXAMPLE,
            space_api_headers={"X-Tenant": "{headers.tenant}"},
            dead_letter_topic=dlq,
            **DLQ,
        )
        async with running_stage(settings):
            await eventually(lambda: len(seen.requests) == 2, what="the two sendable records")

            async def all_committed() -> bool:
                return topic.expected_end(4) == await topic.committed()

            await eventually_async(all_committed, what="every offset committed")
        letters = await dead_letters(topic.bootstrap, dlq)

    name = topic.name
    assert [
        (
            "/spaces/moon/items",
            "acme",
            {"item": {"space": "moon", "n": 1}, "source": f"{name}/0/0"},
        ),
        (
            "/spaces/mars/items",
            "beta",
            {"item": {"space": "mars", "n": 4}, "source": f"{name}/0/3"},
        ),
    ] == seen.requests
    assert [b'{"n": 2}', b'{"space": "mars", "n": 3}'] == [letter.value for letter in letters]
    assert {b"invalid_record"} == {dict(letter.headers)["x-error-reason"] for letter in letters}
