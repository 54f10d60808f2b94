"""The Space API client: one POST per record, its answer turned into accept, retry or reject.

The record's value goes out byte for byte; the stage never parses it. ``Idempotency-Key`` is
``<topic>/<partition>/<offset>``, the same on every redelivery, so the API can drop the duplicates
that at-least-once delivery produces after a crash or a rebalance.

The client speaks httpx's transport interface (tests plug in ``httpx.MockTransport``), and by
default does the I/O through aiohttp's transport, which measured about three times httpx's own.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from pipeline import metrics
from pipeline.errors import (
    InvalidRecordError,
    RejectedError,
    RetryableSendError,
    SendError,
    UnexpectedSendError,
)
from pipeline.records import KafkaRecord, idempotency_key
from pipeline.retry import parse_retry_after

# RFC 9110 says these may succeed later; every other 4xx is the record's fault.
RETRYABLE_4XX = frozenset({408, 425, 429})
BODY_EXCERPT_CHARS = 300


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


def header_value(name: str, value: str | bytes | None) -> str:
    """A value fit for an HTTP header, or ``ValueError`` naming what is wrong with it."""
    if value is None:
        raise ValueError(f"header {name!r} has no value")
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"header {name!r} holds a line break or NUL")
    return text


def _transport_failure(error: Exception) -> SendError:
    """What a failed exchange means: retry later, or give up on a request that cannot be sent."""
    cause = error.__cause__ or error
    if isinstance(cause, aiohttp.ClientConnectorError | ConnectionError) or isinstance(
        error, httpx.ConnectError
    ):
        # httpx-aiohttp maps a refused connection to ConnectTimeout: it is not a timeout.
        return RetryableSendError(f"Space API unreachable: {cause!r}", reason="connection")
    if isinstance(error, httpx.TimeoutException | TimeoutError):
        return RetryableSendError(f"Space API timed out: {error!r}", reason="timeout")
    if isinstance(error, httpx.TransportError | aiohttp.ClientError | OSError):
        return RetryableSendError(f"Space API unreachable: {error!r}", reason="connection")
    if isinstance(cause, ValueError | TypeError):  # the client refused to send what it was given
        return InvalidRecordError(f"the record cannot become a request: {cause}")
    return UnexpectedSendError(
        f"unexpected failure sending to the Space API: {error!r}", reason="unexpected"
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
        request = self._request(record)
        started = time.perf_counter()
        try:
            response = await self._transport.handle_async_request(request)
            try:
                await response.aread()
            finally:
                await response.aclose()
        except Exception as error:
            failure = _transport_failure(error)
            self._observe(failure.reason, started)
            raise failure from error
        self._observe(status_class(response.status_code), started)
        answer = classify(response)
        if answer is not None:
            raise answer  # whoever handles it logs it, with status and body, once

    def _request(self, record: KafkaRecord) -> httpx.Request:
        """The request for ``record``, or :class:`InvalidRecordError` if there can be none."""
        try:
            content_type = self._config.content_type
            for name, value in record.headers:
                if name.lower() == "content-type":
                    content_type = header_value(name, value)
                    break
            headers = {
                **self._headers,
                "Content-Type": content_type,
                "Idempotency-Key": idempotency_key(record),
                "X-Kafka-Topic": header_value("topic", record.topic),
                "X-Kafka-Partition": str(record.partition),
                "X-Kafka-Offset": str(record.offset),
            }
            return httpx.Request(
                "POST",
                self._url,
                content=record.value or b"",
                headers=headers,
                extensions=self._extensions,
            )
        except (ValueError, TypeError, UnicodeError) as error:
            raise InvalidRecordError(f"the record cannot become a request: {error}") from error

    @staticmethod
    def _observe(outcome: str, started: float) -> None:
        metrics.SEND_ATTEMPTS.labels(outcome).inc()
        metrics.SEND_DURATION.observe(time.perf_counter() - started)
