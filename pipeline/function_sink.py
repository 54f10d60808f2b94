"""Your own function as the sink: ``PIPELINE_SINK_FUNCTION=package.module:function``.

For teams whose Space API comes as a client library they cannot change, say a blocking
``send_to_space(item)``: the stage calls it instead of making HTTP requests itself, with everything
else unchanged (order, retries, the gate, the rules, commit after acceptance). A blocking function
runs in the sender's thread pool, never on the event loop, as its lane's call; an ``async def``
function is awaited.

It gets the record as a frozen :class:`~pipeline.records.Record`, its value bytes, or the value
parsed as JSON (a value that is not JSON is a rejection of that record); with batching, a list.
With a value format (``PIPELINE_VALUE_FORMAT=avro``), the ``json`` argument is the value decoded
by it, as the HTTP sink would send it.
Returning is acceptance, and what it returns is the result (``PIPELINE_RESULT_TOPIC``): bytes as
they are, a ``str`` as UTF-8 text, anything else as JSON; ``None`` is no result. An exception
whose ``retryable`` attribute is false, or of a type named in ``PIPELINE_SINK_REJECT_EXCEPTIONS``,
rejects the record; any other is retried under the policy (``retry_after`` and ``outage =
"auth"`` attributes are honoured, as for HTTP answers).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any, Literal

import orjson

from pipeline import metrics
from pipeline.errors import (
    AuthError,
    InvalidRecordError,
    RejectedError,
    ResultError,
    RetryableSendError,
)
from pipeline.formats import ValueFormat
from pipeline.records import KafkaRecord, Record, idempotency_key
from pipeline.sender import call_blocking, is_async_callable
from pipeline.sink import Result

Argument = Literal["record", "value", "json"]


class FunctionSink:
    """Deliver through a user's function (async or plain blocking).

    Args:
        function: Called with one converted record, or a list of them when ``batched``.
        argument: What the function gets of a record: ``record``, ``value`` or ``json``.
        reject: Exception types that reject the record rather than retry it.
        batched: Whether payloads are lists of records.
        result_max_bytes: Return what the function returns as a :class:`~pipeline.sink.Result`
            cut at this many bytes; ``None`` (results off) returns nothing.
        values: Decodes values for the ``json`` argument (Avro, say) instead of JSON parsing.
    """

    def __init__(
        self,
        function: Callable[..., Any],
        argument: Argument = "record",
        *,
        reject: tuple[type[BaseException], ...] = (),
        batched: bool = False,
        result_max_bytes: int | None = None,
        values: ValueFormat | None = None,
    ) -> None:
        self._function = function
        self._decode = values.decode if values is not None and argument == "json" else None
        self._is_async = is_async_callable(function)
        self._convert = {"record": Record.of, "value": _value, "json": _json}[argument]
        self._reject = reject
        self._batched = batched
        self._result_max_bytes = result_max_bytes
        self._ok = metrics.ATTEMPTS.labels("ok")
        self._error = metrics.ATTEMPTS.labels("error")

    async def __aenter__(self) -> FunctionSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        return None

    async def send(self, payload: KafkaRecord | Sequence[KafkaRecord]) -> Result | None:
        """Call the function; classify what it raises, and return what it returns."""
        convert, decode = self._convert, self._decode
        if self._batched:
            records: Sequence[KafkaRecord] = payload  # type: ignore[assignment]
            if decode is not None:
                argument: object = [await decode(record) for record in records]
            else:
                argument = [convert(record) for record in records]
            metrics.BATCH_SIZES.observe(len(records))
        elif decode is not None:
            argument = await decode(payload)  # type: ignore[arg-type]
        else:
            argument = convert(payload)  # type: ignore[arg-type]
        started = time.perf_counter()
        try:
            if self._is_async:
                returned = await self._function(argument)
            else:
                returned = await call_blocking(self._function, argument)
        except Exception as error:
            self._error.count += 1
            metrics.SEND_SECONDS.observe(time.perf_counter() - started)
            raise self._classify(error) from error
        self._ok.count += 1
        metrics.SEND_SECONDS.observe(time.perf_counter() - started)
        if self._result_max_bytes is None or returned is None:
            return None
        return self._result(payload, returned, self._result_max_bytes)

    def _result(
        self, payload: KafkaRecord | Sequence[KafkaRecord], returned: object, limit: int
    ) -> Result:
        if self._batched:
            records: Sequence[KafkaRecord] = payload  # type: ignore[assignment]
            first, last = records[0], records[-1]
            key = f"{idempotency_key(first)}-{last.offset}"
        else:
            first, last = payload, None  # type: ignore[assignment]
            key = idempotency_key(first)
        if isinstance(returned, bytes | bytearray | memoryview):
            body, content_type = bytes(returned), "application/octet-stream"
        elif isinstance(returned, str):
            body, content_type = returned.encode(), "text/plain; charset=utf-8"
        else:
            try:
                body = orjson.dumps(returned)
            except TypeError as error:
                msg = f"the sink function accepted the record but returned {error}"
                raise ResultError(msg, reason="unencodable") from error
            content_type = "application/json"
        return Result(
            first, key, body[:limit], content_type, truncated=len(body) > limit, last=last
        )

    def _classify(self, error: Exception) -> Exception:
        message = f"the sink function raised {error!r}"
        if isinstance(error, self._reject) or getattr(error, "retryable", None) is False:
            return RejectedError(message, reason="rejected", body=repr(error))
        if getattr(error, "outage", None) == "auth":
            return AuthError(message, reason="auth")
        return RetryableSendError(
            message, reason="error", retry_after=getattr(error, "retry_after", None)
        )


def _value(record: KafkaRecord) -> bytes | None:
    return record.value


def _json(record: KafkaRecord) -> Any:  # noqa: ANN401 - whatever the JSON holds
    if record.value is None:
        return None
    try:
        return orjson.loads(record.value)
    except orjson.JSONDecodeError as error:
        msg = f"the value is not JSON ({error})"
        raise InvalidRecordError(msg) from None
