"""Committing watermarks: the last room a record passes, after the API accepted it.

A commit only ever names explicit offsets, each partition's watermark (see
:mod:`pipeline.offsets`), and is made under a deadline: aiokafka retries some commit errors
without end, and a stuck commit must not hold up a rebalance or a shutdown. A failed commit is
logged, counted and left to the next round; what it would have covered is redelivered after a
crash, with the same ``Idempotency-Key``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Protocol

import structlog
from aiokafka import TopicPartition
from aiokafka.errors import KafkaError

from pipeline import metrics
from pipeline.consumer import Committed
from pipeline.partition import Partition

log = structlog.get_logger("pipeline.commit")


class Committer(Protocol):
    """Where offsets go: the consumer group, or a fake in tests."""

    async def commit(self, offsets: Mapping[TopicPartition, Committed]) -> None:
        """Commit ``offsets`` (the next offset to read of each partition, and its note)."""
        ...


class Commits:
    """Commit the watermarks of partitions, one commit at a time.

    Args:
        committer: Where offsets go.
        position: The consumer's fetch position of a partition (see
            :meth:`pipeline.offsets.PartitionOffsets.ready`), or ``None`` when unknown.
    """

    def __init__(
        self, committer: Committer, position: Callable[[TopicPartition], int | None]
    ) -> None:
        self._committer = committer
        self._position = position
        self._lock = asyncio.Lock()

    async def commit(self, parts: Iterable[Partition], *, timeout: float) -> bool:
        """Commit every partition whose watermark moved; ``False`` when the commit failed.

        ``timeout`` covers waiting for a commit already under way and this one together, so a
        revoke's commit stays within its share of the rebalance budget.
        """
        parts = list(parts)
        started = time.perf_counter()
        ready: dict[Partition, Committed] = {}
        try:
            async with asyncio.timeout(timeout), self._lock:
                for part in parts:
                    point = part.commit_point(self._position(part.tp))
                    if point is not None and not part.revoked:
                        ready[part] = point
                if not ready:
                    return True
                await self._committer.commit({part.tp: point for part, point in ready.items()})
        except (KafkaError, TimeoutError) as error:
            metrics.COMMITS.labels("failed").inc()
            log.warning("commit.failed", error=repr(error), partitions=len(ready))
            return False
        finally:
            if ready:
                metrics.COMMIT_DURATION.observe(time.perf_counter() - started)
        metrics.COMMITS.labels("ok").inc()
        for part, point in ready.items():
            part.note_committed(point)
            if not part.revoked:  # a revoked partition's gauges are gone; keep them gone
                metrics.COMMITTED_OFFSET.labels(*part.labels).set(point.offset or 0)
        return True
