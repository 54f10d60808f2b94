"""Fakes behind the pipeline's protocols, shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


class FakeClock:
    """A :class:`pipeline.clock.Clock` on virtual time.

    Each wait (``sleep``, or ``wait`` until its timeout) ends at its own deadline, virtual time
    moving there at once: a schedule is checked exactly and instantly. Waits pending together
    end in the order of their deadlines (the later one yields until the earlier ones are over),
    and time never goes back. ``sleeps`` records every requested delay; tests may also move
    ``now`` themselves.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []
        self._pending: list[float] = []  # the deadlines of the waits not over yet

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        await self._until(self.now + max(seconds, 0.0), None)

    async def wait(self, future: asyncio.Future[Any], timeout: float | None) -> None:
        if timeout is None:
            await asyncio.wait([future])
        else:
            await self._until(self.now + max(timeout, 0.0), future)

    async def _until(self, deadline: float, future: asyncio.Future[Any] | None) -> None:
        self._pending.append(deadline)
        try:
            await asyncio.sleep(0)
            while not (future is not None and future.done()):
                if min(self._pending) >= deadline:
                    self.now = max(self.now, deadline)
                    return
                await asyncio.sleep(0)  # an earlier deadline is due first
        finally:
            self._pending.remove(deadline)


class Gate:
    """An async ``send`` that blocks every call until :meth:`open` and records what it got."""

    def __init__(self) -> None:
        self.calls: list[object] = []
        self.started = asyncio.Event()
        self._open = asyncio.Event()

    def open(self) -> None:
        self._open.set()

    async def send(self, item: object) -> None:
        self.calls.append(item)
        self.started.set()
        await self._open.wait()


class Flaky:
    """An async ``send`` that raises the scripted errors for an item, in turn, then accepts it."""

    def __init__(self, script: dict[object, Sequence[BaseException]] | None = None) -> None:
        self.script = {item: list(errors) for item, errors in (script or {}).items()}
        self.calls: list[object] = []
        self.accepted: list[object] = []

    async def send(self, item: object) -> None:
        self.calls.append(item)
        await asyncio.sleep(0)
        errors = self.script.get(item)
        if errors:
            raise errors.pop(0)
        self.accepted.append(item)


@dataclass(frozen=True, slots=True)
class Record:
    """A Kafka record as :class:`pipeline.space_api.KafkaRecord` describes it."""

    topic: str = "orders"
    partition: int = 3
    offset: int = 42
    timestamp: int = 1_700_000_000_000
    key: bytes | None = b"customer-7"
    value: bytes | None = b'{"id": 7}'
    headers: Sequence[tuple[str, bytes]] = field(default_factory=tuple)
