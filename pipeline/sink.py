"""Sinks: where records go. The HTTP sink by default; a user's own function when configured.

A sink has one job: take a record (or, when batching, a list of consecutive records of one lane)
and return once the far side accepted it, or raise a :class:`~pipeline.errors.SendError` saying
whether to retry, to wait out an outage, or to give the record up. What the far side answered
comes back as a :class:`Result` when the result topic wants it (``None`` otherwise): one send
is one request, so one result at most. Order, retries, the gate and the
rules live around it, so every sink gets them the same way. Which sink the settings ask for is
built in :mod:`pipeline.wiring`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from pipeline.records import KafkaRecord


@dataclass(frozen=True, slots=True)
class Result:
    """What the far side answered to one accepted request, for the result topic.

    Args:
        first: The request's record, or the first of its batch.
        idempotency_key: The ``Idempotency-Key`` the request carried (the same on redelivery).
        body: The answer's body, at most ``PIPELINE_RESULT_MAX_BYTES`` of it.
        content_type: The answer's ``Content-Type``, when it named one.
        status: The HTTP status; ``None`` from a function sink.
        truncated: Whether ``body`` was cut at the limit.
        last: The last record of a batch request; ``None`` when the request was one record's.
    """

    first: KafkaRecord
    idempotency_key: str
    body: bytes
    content_type: str | None = None
    status: int | None = None
    truncated: bool = False
    last: KafkaRecord | None = None


class Sink(Protocol):
    """Delivers a record, or a batch of them, and says how it went by returning or raising."""

    async def send(self, payload: KafkaRecord | Sequence[KafkaRecord]) -> Result | None:
        """Return on acceptance (with the answer, when asked); raise a SendError otherwise."""
        ...
