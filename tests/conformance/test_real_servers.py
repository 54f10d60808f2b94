"""Real HTTP servers, as the Space API may sit behind them: nginx as a reverse proxy, uvicorn (on
httptools and on h11), hypercorn and aiohttp.web, all closing keep-alive connections early.

Every answer reaches the record it belongs to, and every record arrives once, in order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from pathlib import Path

import pytest

from pipeline.errors import RejectedError
from tests.conformance.servers import (
    KEEPALIVE_IDLE_S,
    Ledger,
    aiohttp_web,
    behind_nginx,
    hypercorn_server,
    nginx_binary,
    uvicorn_server,
)
from tests.conformance.verdicts import SinkTo, attempt, key, record, verdict

Serving = Callable[[Ledger], AbstractAsyncContextManager[str]]


def serving(name: str, directory: Path) -> Serving:
    if name == "nginx":
        if nginx_binary() is None:
            pytest.skip("nginx is not installed (`make tools` installs Debian's nginx-light)")
        return lambda ledger: behind_nginx(ledger, directory)
    if name == "uvicorn":
        return lambda ledger: uvicorn_server(ledger, "httptools")
    if name == "uvicorn-h11":
        return lambda ledger: uvicorn_server(ledger, "h11")
    if name == "hypercorn":
        return hypercorn_server
    return aiohttp_web


@pytest.fixture(params=["nginx", "uvicorn", "uvicorn-h11", "hypercorn", "aiohttp.web"])
def real_server(request: pytest.FixtureRequest, tmp_path: Path) -> Serving:
    return serving(request.param, tmp_path)


# The status each record asks for, and what the pipeline must make of it.
SCRIPT = [
    (201, "delivered"),
    (200, "delivered"),
    (202, "delivered"),
    (422, "rejected 422"),
    (201, "delivered"),
    (503, "retried 503"),
    (201, "delivered"),  # after an idle pause: the server has closed the connection meanwhile
    (401, "outage auth"),
    (200, "delivered"),
    (201, "delivered"),
    (201, "delivered"),
]
IDLE_BEFORE = 6


async def test_each_answer_reaches_its_own_record_and_each_record_arrives_once_in_order(
    real_server: Serving, sink_to: SinkTo
) -> None:
    """Eleven records one after another, asking for 2xx, 422, 503 and 401 answers, with a pause
    long enough for the server to close the idle connection: each send gets the outcome of its
    own answer (a 422's body names its record), and the server sees each record once."""
    ledger = Ledger()
    outcomes = []
    async with real_server(ledger) as url, sink_to(url, forward_headers=("x-answer",)) as sink:
        for offset, (status, _) in enumerate(SCRIPT):
            if offset == IDLE_BEFORE:
                await asyncio.sleep(2 * KEEPALIVE_IDLE_S)
            error = await attempt(sink, offset, status)
            outcomes.append(verdict(error))
            if isinstance(error, RejectedError):
                assert f"422 for {key(offset)}" == error.body

    assert [expected for _, expected in SCRIPT] == outcomes
    assert [key(offset) for offset in range(len(SCRIPT))] == ledger.keys


async def test_lanes_sending_at_once_each_deliver_every_record_once_in_order(
    real_server: Serving, sink_to: SinkTo
) -> None:
    """Four lanes share the client, six records each: all delivered, each arriving once, and
    each lane's records in the lane's order."""
    ledger = Ledger()
    lanes = [range(lane * 100, lane * 100 + 6) for lane in range(4)]
    async with real_server(ledger) as url, sink_to(url) as sink:

        async def lane(offsets: range) -> None:
            for offset in offsets:
                await sink.send(record(offset))

        async with asyncio.TaskGroup() as tasks:
            for offsets in lanes:
                tasks.create_task(lane(offsets))

    assert sorted(key(o) for offsets in lanes for o in offsets) == sorted(ledger.keys)
    for offsets in lanes:
        mine = {key(o) for o in offsets}
        assert [key(o) for o in offsets] == [k for k in ledger.keys if k in mine]
