"""Fakes behind the pipeline's protocols, shared by the unit tests."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field


class FakeClock:
    """A :class:`pipeline.sender.Clock` on virtual time.

    ``sleep`` records the requested delay, advances virtual time by it and only yields to the
    event loop once, so backoff schedules can be checked exactly and instantly.
    """

    def __init__(self, start: float = 0.0) -> None:
        self.now = start
        self.sleeps: list[float] = []

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds
        await asyncio.sleep(0)


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
