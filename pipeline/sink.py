"""Sinks: where records go. The HTTP sink by default; a user's own function when configured.

A sink has one job: take a record (or, when batching, a list of consecutive records of one lane)
and return once the far side accepted it, or raise a :class:`~pipeline.errors.SendError` saying
whether to retry, to wait out an outage, or to give the record up. Order, retries, the gate and the
rules live around it, so every sink gets them the same way. Which sink the settings ask for is
built in :mod:`pipeline.wiring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from pipeline.records import KafkaRecord


class Sink(Protocol):
    """Delivers a record, or a batch of them, and says how it went by returning or raising."""

    async def send(self, payload: KafkaRecord | Sequence[KafkaRecord]) -> None:
        """Return on acceptance; raise a SendError (or any exception) otherwise."""
        ...
