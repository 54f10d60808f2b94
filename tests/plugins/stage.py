"""The stage in the test's own event loop, and the seam that gives it a consumer of the test's."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from aiokafka import AIOKafkaConsumer

from pipeline.config import Settings
from pipeline.consumer import ConsumerFactory, KafkaOptions
from pipeline.stage import Stage


@contextlib.asynccontextmanager
async def running_stage(settings: Settings, **options: Any) -> AsyncIterator[Stage]:
    """Run the stage (``Stage(settings, **options)``) in this event loop for the duration of the
    block, then stop it gracefully."""
    stage = Stage(settings, **options)
    async with asyncio.TaskGroup() as tasks:
        tasks.create_task(stage.run())
        try:
            yield stage
        finally:
            stage.stop()


def consumer_class(cls: type[AIOKafkaConsumer]) -> ConsumerFactory:
    """A ``source`` for :class:`Stage`: the consumer it would build, as a ``cls``."""

    def build(options: KafkaOptions) -> AIOKafkaConsumer:
        return cls(**options.consumer_arguments())

    return build


async def healthz_answers(stage: Stage, times: int = 15, every: float = 0.2) -> list[int]:
    """The status of the stage's ``/healthz``, asked ``times`` times ``every`` seconds apart."""
    answers = []
    async with httpx.AsyncClient() as client:
        for _ in range(times):
            healthz = await client.get(f"http://127.0.0.1:{stage.ops_port}/healthz")
            answers.append(healthz.status_code)
            await asyncio.sleep(every)
    return answers
