"""Shutdown keeps one deadline: a hanging sink or a vanished broker never holds the stage up."""

from __future__ import annotations

import asyncio
import signal
import threading
import time
from pathlib import Path

import pytest
from prometheus_client import REGISTRY

from pipeline.dead_letter import DeadLetters
from pipeline.errors import RejectedError
from pipeline.records import Record
from pipeline.stage import Stage
from pipeline.wiring import dead_letter_options
from tests.plugins.broker import ProxiedKafka, Topic, new_dlq
from tests.plugins.waiting import eventually

pytestmark = pytest.mark.integration

DEADLINE_S = 2.0
# What may pass between the deadline and run()'s return, or the process's exit, on a busy machine.
MARGIN_S = 0.75


class Hanging:
    """A blocking sink function that hangs until released (8 s at most), like a stuck client."""

    def __init__(self) -> None:
        self.called = threading.Event()
        self.release = threading.Event()

    def __call__(self, record: object) -> None:
        self.called.set()
        self.release.wait(8)


hanging = Hanging()


class Refused(Exception):
    """What the sink raises when it refuses a record for good."""

    retryable = False


class RefuseWhenTold:
    """An async sink function that refuses its record once the test says so."""

    def __init__(self) -> None:
        self.called = asyncio.Event()
        self.go = asyncio.Event()

    async def __call__(self, record: object) -> None:
        self.called.set()
        await self.go.wait()
        raise Refused


refuse_when_told = RefuseWhenTold()


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def stop_and_time(stage: Stage, run: asyncio.Task[None]) -> float:
    """Ask ``stage`` to stop; seconds until its ``run()`` returned."""
    started = time.monotonic()
    stage.stop()
    await run
    return time.monotonic() - started


async def test_a_blocking_sink_hanging_past_the_deadline_does_not_hold_run(new_topic):
    """``run()`` returns within the shutdown timeout while the sink's call still hangs in its
    thread: the call is abandoned, its record stays uncommitted, counted and logged."""
    global hanging  # noqa: PLW0603 - each test gets a fresh one
    hanging = Hanging()
    topic = await new_topic(1)
    await topic.produce(3)
    settings = topic.settings(
        None, sink_function="tests.test_shutdown:hanging", shutdown_timeout_s=DEADLINE_S
    )
    stage = Stage(settings)
    try:
        async with asyncio.TaskGroup() as tasks:
            run = tasks.create_task(stage.run())
            assert await asyncio.to_thread(hanging.called.wait, 30), "the sink was never called"
            took = await stop_and_time(stage, run)
    finally:
        hanging.release.set()

    assert took < DEADLINE_S + MARGIN_S, f"run() returned {took:.2f}s after the stop"
    assert (await topic.committed())[0] in (None, 0), "committed past the hanging record"
    abandoned = "space_pipeline_abandoned_requests_total"
    assert 1 == sample(abandoned, topic=topic.name, partition="0")


HANGING_MODULE = """
import pathlib, time

def hang(record):
    pathlib.Path("called").touch()
    time.sleep(8)
"""


async def test_space_pipeline_run_exits_within_the_deadline_while_its_sink_hangs(
    new_topic, stage_process, tmp_path: Path
):
    """The real process: SIGTERM while the blocking sink hangs for 8 s, and the process has
    exited, code 0, within the shutdown timeout and a small margin; the abandoned call holds
    neither ``run()`` nor the interpreter's exit."""
    (tmp_path / "hanging.py").write_text(HANGING_MODULE)
    topic = await new_topic(1)
    await topic.produce(3)
    env = topic.env(None, sink_function="hanging:hang", shutdown_timeout_s=str(DEADLINE_S))
    proc = stage_process(env, cwd=tmp_path)
    await eventually((tmp_path / "called").exists, what="the sink's call")
    started = time.monotonic()
    assert proc.process is not None
    proc.process.send_signal(signal.SIGTERM)
    code = await asyncio.to_thread(proc.wait, 30)
    took = time.monotonic() - started

    assert 0 == code, proc.logs()
    assert took < DEADLINE_S + 1.5, f"the process exited {took:.2f}s after SIGTERM"
    assert '"stage.request_abandoned"' in proc.logs()
    assert (await topic.committed())[0] in (None, 0), "committed past the hanging record"


async def test_a_stage_whose_broker_is_gone_still_stops_within_the_deadline(
    proxied_kafka: ProxiedKafka,
):
    """The broker vanishes while a dead letter is being written: the drain, the commit, the
    dead-letter producer's close and leaving the group all fail, each within its share of the
    one shutdown deadline, and the record stays uncommitted."""
    global refuse_when_told  # noqa: PLW0603 - each test gets a fresh one
    refuse_when_told = RefuseWhenTold()
    topic = await proxied_kafka.new_topic(1)
    dlq = await new_dlq(topic)
    await topic.produce(1)
    settings = topic.settings(
        None,
        sink_function="tests.test_shutdown:refuse_when_told",
        on_reject="dead-letter",
        dead_letter_topic=dlq,
        dead_letter_idempotence=False,
        shutdown_timeout_s=DEADLINE_S,
    )
    stage = Stage(settings)
    async with asyncio.TaskGroup() as tasks:
        run = tasks.create_task(stage.run())
        async with asyncio.timeout(30):
            await refuse_when_told.called.wait()
        proxied_kafka.proxy.cut()
        refuse_when_told.go.set()
        await asyncio.sleep(0.5)  # the dead letter waits in the producer for a broker
        took = await stop_and_time(stage, run)

    assert took < DEADLINE_S + MARGIN_S, f"run() returned {took:.2f}s after the stop"
    await proxied_kafka.proxy.restore()
    assert (await topic.committed())[0] in (None, 0), "committed past the refused record"


async def test_the_dead_letter_producer_closes_within_its_timeout_when_the_broker_is_gone(
    proxied_kafka: ProxiedKafka,
):
    """A dead letter still waits in the producer for a broker that is gone: ``close(timeout)``
    gives up on it at the timeout and releases every task and connection (no "Unclosed"
    warning: the suite turns warnings into errors)."""
    topic: Topic = await proxied_kafka.new_topic(1)
    dlq = await new_dlq(topic)
    settings = topic.settings(
        "http://unused/items", dead_letter_topic=dlq, dead_letter_idempotence=False
    )
    record = Record(topic.name, 0, 7, 0, b"k", b"v")
    options = dead_letter_options(settings)
    assert options is not None
    letters = DeadLetters(options)
    async with letters:
        proxied_kafka.proxy.cut()
        write = asyncio.create_task(letters.write(record, RejectedError("no", reason="400"), 1))
        await asyncio.sleep(0.5)
        write.cancel()
        started = time.monotonic()
        await letters.close(timeout=1.0)
        took = time.monotonic() - started

    assert took < 1.0 + MARGIN_S, f"close took {took:.2f}s"
    assert write.cancelled()
