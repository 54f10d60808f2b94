"""The Space API client: one POST per record, its answer turned into accept, retry or reject.

The record's value goes out byte for byte; the stage never parses it. ``Idempotency-Key`` is
``<topic>/<partition>/<offset>``, the same on every redelivery, so the API can drop the duplicates
that at-least-once delivery produces after a crash or a rebalance.

The client speaks httpx's transport interface (tests plug in ``httpx.MockTransport``), and by
default does the I/O through aiohttp's transport, which measured about three times httpx's own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from pipeline import metrics
from pipeline.errors import RejectedError, RetryableSendError, SendError
from pipeline.retry import parse_retry_after

# RFC 9110 says these may succeed later; every other 4xx is the record's fault.
RETRYABLE_4XX = frozenset({408, 425, 429})
BODY_EXCERPT_CHARS = 300


class KafkaRecord(Protocol):
    """What the stage reads from a record; aiokafka's ``ConsumerRecord`` fits."""

    topic: str
    partition: int
    offset: int
    timestamp: int
    key: bytes | None
    value: bytes | None
    headers: Sequence[tuple[str, bytes]]


@dataclass(frozen=True, slots=True)
class SpaceApiConfig:
    """Where and how to deliver.

    Args:
        url: The endpoint every record is POSTed to.
        content_type: Used when the record carries no ``content-type`` header.
        token: Sent as ``Authorization: Bearer``; never logged.
        headers: Static extra headers.
        timeout: Read and write timeout of one attempt, in seconds.
        connect_timeout: Connect and pool timeout, in seconds.
        max_connections: Pool size; match the sender's concurrency so nothing queues for a socket.
    """

    url: str
    content_type: str = "application/json"
    token: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    timeout: float = 10.0
    connect_timeout: float = 5.0
    max_connections: int = 64


def idempotency_key(record: KafkaRecord) -> str:
    """The key that names a record across redeliveries."""
    return f"{record.topic}/{record.partition}/{record.offset}"


def classify(response: httpx.Response) -> SendError | None:
    """Turn an answer into ``None`` (accepted) or the error that says what to do next."""
    status = response.status_code
    if 200 <= status < 300:
        return None
    if status in RETRYABLE_4XX or status >= 500:
        reason = "429" if status == 429 else ("5xx" if status >= 500 else str(status))
        return RetryableSendError(
            f"Space API answered {status}",
            reason=reason,
            status=status,
            retry_after=parse_retry_after(response.headers.get("retry-after")),
        )
    return RejectedError(
        f"Space API rejected the record with {status}",
        reason=f"{status // 100}xx",
        status=status,
        body=response.text[:BODY_EXCERPT_CHARS],
    )


def status_class(status: int) -> str:
    """A bounded metric label for a status code: ``429`` stands apart from other 4xx."""
    return "429" if status == 429 else f"{status // 100}xx"


class SpaceApi:
    """Deliver records to the Space API over one shared, pooled connection set.

    Use as an async context manager; ``close()`` is idempotent. Pass ``transport`` to test with
    ``httpx.MockTransport`` or to choose httpx's own transport.
    """

    def __init__(
        self, config: SpaceApiConfig, *, transport: httpx.AsyncBaseTransport | None = None
    ) -> None:
        self._config = config
        self._url = httpx.URL(config.url)
        limits = httpx.Limits(
            max_connections=config.max_connections,
            max_keepalive_connections=config.max_connections,
        )
        # The transport, not an AsyncClient: the client's per-request work (merging cookies,
        # auth, hooks, redirects we never follow) cost about 90 us of CPU per record here.
        self._transport = transport or AiohttpTransport(limits=limits)
        self._headers = {"User-Agent": "space-pipeline", **config.headers}
        if config.token:
            self._headers["Authorization"] = f"Bearer {config.token}"
        timeout = httpx.Timeout(
            config.timeout, connect=config.connect_timeout, pool=config.connect_timeout
        )
        self._extensions = {"timeout": timeout.as_dict()}
        self._closed = False

    async def __aenter__(self) -> SpaceApi:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the connection pool; later calls do nothing."""
        if not self._closed:
            self._closed = True
            await self._transport.aclose()

    async def send(self, record: KafkaRecord) -> None:
        """POST one record; return on acceptance, raise a :class:`SendError` otherwise."""
        content_type = self._config.content_type
        for name, value in record.headers:
            if name.lower() == "content-type":
                content_type = value.decode("latin-1")
                break
        headers = {
            **self._headers,
            "Content-Type": content_type,
            "Idempotency-Key": idempotency_key(record),
            "X-Kafka-Topic": record.topic,
            "X-Kafka-Partition": str(record.partition),
            "X-Kafka-Offset": str(record.offset),
        }
        started = time.perf_counter()
        try:
            request = httpx.Request(
                "POST",
                self._url,
                content=record.value or b"",
                headers=headers,
                extensions=self._extensions,
            )
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except (httpx.TimeoutException, TimeoutError) as error:
            self._observe("timeout", started)
            raise RetryableSendError(f"Space API timed out: {error!r}", reason="timeout") from error
        except (httpx.TransportError, aiohttp.ClientError, OSError) as error:
            self._observe("connection", started)
            raise RetryableSendError(
                f"Space API unreachable: {error!r}", reason="connection"
            ) from error
        self._observe(status_class(response.status_code), started)
        failure = classify(response)
        if failure is not None:
            raise failure  # whoever handles it logs it, with status and body, once

    @staticmethod
    def _observe(outcome: str, started: float) -> None:
        metrics.SEND_ATTEMPTS.labels(outcome).inc()
        metrics.SEND_DURATION.observe(time.perf_counter() - started)
