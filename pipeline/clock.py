"""Time, as a seam: the sender, the gate, the rules and OAuth2 read it here; tests pass a fake."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Protocol


class Clock(Protocol):
    """Monotonic time and waiting; a fake lets tests check schedules exactly, without waiting."""

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds``."""
        ...

    async def wait(self, future: asyncio.Future[Any], timeout: float | None) -> None:
        """Wait until ``future`` is done or ``timeout`` seconds pass (``None``: no limit).

        ``future`` is left as it is: it may be shared by several waiters.
        """
        ...


class SystemClock:
    """The real clock."""

    def monotonic(self) -> float:
        """Seconds since an arbitrary point, never going back (``time.monotonic``)."""
        return time.monotonic()

    async def sleep(self, seconds: float) -> None:
        """Wait on the event loop."""
        await asyncio.sleep(seconds)

    async def wait(self, future: asyncio.Future[Any], timeout: float | None) -> None:
        """Wait on the event loop; ``asyncio.wait`` never cancels what it waits for."""
        await asyncio.wait([future], timeout=timeout)
