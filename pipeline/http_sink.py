"""The HTTP sink: records become requests to the Space API, answers become outcomes.

One record is one request: its value bytes unchanged as the body, ``Idempotency-Key:
topic/partition/offset`` (the same on every redelivery, so the API can drop the duplicates that
at-least-once delivery produces), ``X-Kafka-*`` headers naming it, the chosen Kafka headers
forwarded (W3C trace context by default). The URL and header values may name the record
(``{topic}``, ``{key}``, ``{value.space.id}``: see :mod:`pipeline.shaping`, which also shapes a
body by an expression); a tombstone is sent with an empty body or as a DELETE.

A batch is one request for consecutive records of a lane: a JSON array of the values (embedded as
they are) or newline-delimited values, with ``Idempotency-Key: topic/partition/first-last``.

A body may be compressed (``Content-Encoding: gzip`` or ``zstd``): a JSON batch shrinks several
fold, which a metered or distant API feels more than the CPU it costs. Levels are fast ones (gzip
1, as nginx, zstd 3, its own default); a big body is compressed off the event loop, so other
lanes go on meanwhile.

The answer is classified by :class:`~pipeline.policy.Classification`: accepted, retried, an auth
outage, or a rejection of the record. A redirect is none of these: the configured URL is wrong
whatever the record, an outage of the endpoint (:class:`~pipeline.errors.ConfigOutageError`) that
waits for the operator, never a rejection that would halt or dead-letter good records. A record
that cannot become a valid request (a header value that is ``None`` or holds a line break, a
``{key}`` URL without a key, a key or topic that would be a ``.`` or ``..`` path segment) is a
rejection too, never a crash or a retry loop.
"""

from __future__ import annotations

import asyncio
import functools
import gzip
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol
from urllib.parse import quote, unquote, urlsplit

import orjson

from pipeline import metrics
from pipeline.checks import check_forward_headers, check_static_headers
from pipeline.errors import (
    AuthError,
    ConfigOutageError,
    RejectedError,
    RetryableSendError,
    SendError,
)
from pipeline.formats import JsonValues, ValueFormat
from pipeline.http_client import BODY_EXCERPT_BYTES, Answer, HttpClient, failure
from pipeline.policy import Classification, Outcome
from pipeline.records import KafkaRecord, idempotency_key
from pipeline.redaction import Redactor, header_secrets, url_secrets
from pipeline.retry import parse_retry_after
from pipeline.shaping import (
    BodyExpression,
    Placeholder,
    Template,
    context,
    header_templates,
    url_template,
)
from pipeline.sink import Result

Compression = Literal["none", "gzip", "zstd"]
GZIP_LEVEL = 1  # most of level 6's gain on JSON for half its CPU; nginx's default too
# Compressing 128 KiB takes about a millisecond: above that a thread does it (zlib and zstd
# release the GIL), below it the hand-over to a thread would cost more than it saves.
COMPRESS_IN_THREAD_BYTES = 128 * 1024
BatchFormat = Literal["json-array", "ndjson"]
_BATCH_CONTENT_TYPES = {"json-array": "application/json", "ndjson": "application/x-ndjson"}


class BearerTokens(Protocol):
    """Where a bearer token comes from (OAuth2 client credentials); ``None`` means none."""

    async def token(self) -> str:
        """A token that is valid now (fetched or refreshed as needed)."""
        ...

    def invalidate(self, token: str) -> None:
        """The API refused ``token``: the next :meth:`token` fetches a new one."""
        ...


@dataclass(frozen=True, slots=True)
class HttpSinkConfig:
    """Where and how records are delivered.

    Args:
        url: The endpoint; may hold ``{path}`` placeholders over the record (URL-escaped), see
            :mod:`pipeline.shaping`: ``{topic}``, ``{key}``, ``{value.space.id}``.
        method: ``POST``, ``PUT`` or ``PATCH``.
        content_type: Used when a record carries no ``content-type`` header.
        token: Sent as ``Authorization: Bearer``; never logged.
        headers: Extra headers; a value may hold ``{path}`` placeholders, rendered per record.
        forward_headers: Kafka headers sent on as HTTP headers (case-insensitive names).
        tombstones: A record without a value: ``send`` (empty body) or ``delete`` (a DELETE).
        batch_format: How a batch is framed; ``None`` sends one record per request.
        classification: Which statuses are retried or an auth outage.
        compression: How request bodies are compressed (``Content-Encoding``); empty ones never.
        result_max_bytes: Keep this much of an accepted answer's body and return it as a
            :class:`~pipeline.sink.Result`; ``None`` (results off) keeps none of it.
    """

    url: str
    method: Literal["POST", "PUT", "PATCH"] = "POST"
    content_type: str = "application/json"
    token: str | None = field(default=None, repr=False)
    headers: Mapping[str, str] = field(default_factory=dict, repr=False)
    forward_headers: tuple[str, ...] = ("traceparent", "tracestate")
    tombstones: Literal["send", "delete"] = "send"
    batch_format: BatchFormat | None = None
    classification: Classification = field(default_factory=Classification)
    compression: Compression = "none"
    result_max_bytes: int | None = None


def _placeholder_segments(template: Template) -> tuple[frozenset[str], bool]:
    """The placeholders that are a whole path segment, and whether one shares its segment.

    A dot segment (``.`` or ``..``) from a record would make the URL name another resource
    (``/spaces/../items`` is ``/items`` to servers and to aiohttp). A whole-segment placeholder
    is checked by its value alone, cheaply; a shared one needs the built path checked.
    """
    path = template.text.split("?", 1)[0].split("#", 1)[0].partition("://")[2]
    segments = path.split("/")[1:]  # the first is the authority
    sources = {f"{{{placeholder.source}}}" for placeholder in template.placeholders}
    whole = frozenset(segment[1:-1] for segment in segments if segment in sources)
    shared = any("{" in segment and segment not in sources for segment in segments)
    return whole, shared


# Placeholders read straight from the record, with no context built: the URL's old names.
_RECORD_FIELDS = frozenset({"topic", "partition", "offset", "timestamp"})


_DOTS = (".", "..")


def _dot_segment(text: str) -> bool:
    """Whether ``text`` is a ``.`` or ``..`` segment to a server that decodes it first.

    Servers decode ``%2E`` before they resolve dot segments, some more than once: three
    rounds of decoding are checked.
    """
    for _ in range(3):
        if text in _DOTS:
            return True
        if "%" not in text:
            return False
        text = unquote(text)
    return text in _DOTS


def _dot_segment_in(url: str) -> str | None:
    for segment in urlsplit(url).path.split("/"):
        if ("." in segment or "%" in segment) and _dot_segment(segment):
            return segment
    return None


def _compressor(compression: Compression) -> Callable[[bytes], bytes] | None:
    if compression == "gzip":
        return functools.partial(gzip.compress, compresslevel=GZIP_LEVEL, mtime=0)
    if compression == "zstd":
        if sys.version_info >= (3, 14):
            from compression import zstd  # noqa: PLC0415 - only when asked for
        else:
            from backports import zstd  # noqa: PLC0415 - the same module, before 3.14
        return zstd.compress
    return None


def _merged(base: Mapping[str, str], more: Mapping[str, str]) -> dict[str, str]:
    """``base`` updated by ``more``, names compared without case: each header is sent once."""
    merged = dict(base)
    for name, value in more.items():
        for same in [known for known in merged if known.lower() == name.lower()]:
            del merged[same]
        merged[name] = value
    return merged


def header_value(name: str, value: str | bytes | None) -> str:
    """A value fit for an HTTP header, or ``ValueError`` naming what is wrong with it."""
    if value is None:
        raise ValueError(f"header {name!r} has no value")
    text = value.decode("latin-1") if isinstance(value, bytes) else value
    if "\r" in text or "\n" in text or "\0" in text:
        raise ValueError(f"header {name!r} holds a line break or NUL")
    return text


def _lookup(placeholder: Placeholder, record: KafkaRecord, shaped: dict[str, object] | None) -> str:
    """A placeholder's text: a coordinate straight from the record, else from its context."""
    source = placeholder.source
    if source in _RECORD_FIELDS:
        return str(getattr(record, source))
    assert shaped is not None  # noqa: S101 - built whenever a template reads it
    return placeholder.text(shaped)


class HttpSink:
    """Deliver records to the Space API through one shared, pooled client.

    Use as an async context manager; ``close()`` is idempotent.

    Args:
        config: What to send where.
        client: The HTTP client (see :mod:`pipeline.http_client`).
        auth: Where bearer tokens come from (OAuth2); a static ``config.token`` is used otherwise.
        values: How values are decoded into JSON data, which is then sent as JSON; ``None``
            sends each value's bytes as they are.
        body: What each record's body is, an expression over the record and its decoded value
            (JSON values unless ``values`` says otherwise).
    """

    def __init__(
        self,
        config: HttpSinkConfig,
        client: HttpClient,
        *,
        auth: BearerTokens | None = None,
        values: ValueFormat | None = None,
        body: BodyExpression | None = None,
    ) -> None:
        self._url_template = url_template(config.url)
        check_forward_headers(config.forward_headers)
        check_static_headers(config.headers)
        templates = header_templates(config.headers)
        if any(name.lower() == "authorization" for name in config.headers) and (
            config.token or auth is not None
        ):
            raise ValueError("a static Authorization header and a token: use one")
        self._config = config
        self._client = client
        self._auth = auth
        self._values = values
        self._body = body
        self._templated = bool(self._url_template.placeholders)
        self._whole_segments, self._shared_segment = _placeholder_segments(self._url_template)
        # Literal-only templates ("{{braces}}") are static headers, spelt out once.
        self._header_templates = {n: t for n, t in templates.items() if t.placeholders}
        fixed = {n: t.literal() for n, t in templates.items() if not t.placeholders}
        static = {n: v for n, v in config.headers.items() if n not in self._header_templates}
        templated = {name.lower() for name in self._header_templates}
        merged = _merged({"User-Agent": "space-pipeline"}, static | fixed)
        self._static = {n: v for n, v in merged.items() if n.lower() not in templated}
        if config.token and auth is None:
            self._static["Authorization"] = f"Bearer {config.token}"
        self._static_names = {name.lower(): name for name in (*self._static, *templates)}
        in_url = [p for p in self._url_template.placeholders if p.source != "key"]
        in_headers = [p for t in self._header_templates.values() for p in t.placeholders]
        read = [p for p in (*in_url, *in_headers) if p.source not in _RECORD_FIELDS]
        self._needs_context = body is not None or bool(read)
        # A {value...} path needs the value decoded even when the body goes as it is.
        needs_value = body is not None or any(p.root == "value" for p in read)
        self._decoder = values if values is not None or not needs_value else JsonValues()
        self._forward = {name.lower() for name in config.forward_headers}
        self._compress = _compressor(config.compression)
        self._redact = Redactor.of([*header_secrets(self._static), *url_secrets(config.url)])
        self._closed = False

    async def __aenter__(self) -> HttpSink:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client; later calls do nothing."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    async def send(self, payload: KafkaRecord | Sequence[KafkaRecord]) -> Result | None:
        """Deliver a record (or a batch); return on acceptance, raise a SendError otherwise.

        The API's answer comes back when results are on (``result_max_bytes``).
        """
        records: Sequence[KafkaRecord] = (
            payload if self._config.batch_format is not None else (payload,)  # type: ignore[assignment]
        )
        bodies, shaped = await self._shape(records)
        try:
            if self._config.batch_format is None:
                method, url, headers, body = self._single(records[0], bodies, shaped)
            else:
                method, url, headers, body = self._batch(records, bodies, shaped)
                metrics.BATCH_SIZES.observe(len(payload))  # type: ignore[arg-type]
        except (ValueError, TypeError) as error:  # UnicodeError is a ValueError
            raise failure(error) from error
        if self._compress is not None and body:
            body = await self._compressed(body)
            headers["Content-Encoding"] = self._config.compression
        auth = self._auth
        token = await auth.token() if auth is not None else None
        classification = self._config.classification
        keep = self._config.result_max_bytes
        replayed = False
        while True:  # once; twice when the API refuses a token that was stale
            if token is not None:
                headers["Authorization"] = f"Bearer {token}"
            started = time.perf_counter()
            try:
                if keep is None:  # nothing of an accepted answer is kept
                    answer = await self._client.request(method, url, headers, body)
                else:
                    answer = await self._client.request(method, url, headers, body, keep_body=keep)
            except SendError as error:
                self._count(error.reason, started)
                raise
            self._count(metrics.status_class(answer.status), started)
            outcome = classification.outcome(answer.status)
            if auth is None or token is None or outcome is not Outcome.AUTH or replayed:
                break
            auth.invalidate(token)
            token, replayed = await auth.token(), True
        if outcome is not Outcome.ACCEPTED:
            raise self._failure(outcome, answer, token)
        if keep is None:
            return None
        return Result(
            records[0],
            headers["Idempotency-Key"],
            answer.body,
            answer.content_type,
            answer.status,
            answer.truncated,
            last=records[-1] if self._config.batch_format is not None else None,
        )

    async def _compressed(self, body: bytes) -> bytes:
        compress = self._compress
        assert compress is not None  # noqa: S101 - only called when compressing
        if len(body) < COMPRESS_IN_THREAD_BYTES:
            return compress(body)
        return await asyncio.to_thread(compress, body)

    def _count(self, outcome: str, started: float) -> None:
        metrics.ATTEMPTS.labels(outcome).count += 1
        metrics.SEND_SECONDS.observe(time.perf_counter() - started)

    # Mapping records to requests

    async def _shape(
        self, records: Sequence[KafkaRecord]
    ) -> tuple[list[bytes] | None, dict[str, object] | None]:
        """Each record's body, and the first record's context for the URL and headers.

        Bodies are ``None`` when the value bytes go as they are; the context is ``None`` when
        no template reads one. Each value is decoded once, whoever reads it.
        """
        decoder, expression = self._decoder, self._body
        if decoder is None and not self._needs_context:
            return None, None
        bodies: list[bytes] | None = None
        if self._values is not None or expression is not None:
            bodies = []
        first: dict[str, object] | None = None
        for record in records:
            deleted = record.value is None and self._config.tombstones == "delete"
            value = None if decoder is None or deleted else await decoder.decode(record)
            shaped = None
            if expression is not None or (first is None and self._needs_context):
                shaped = context(record, value)
                if first is None:
                    first = shaped
            if bodies is None:
                break  # only the first record's context was wanted
            if deleted:
                bodies.append(b"")
            elif expression is not None:
                assert shaped is not None  # noqa: S101 - built for the expression above
                bodies.append(expression.body(shaped))
            else:
                bodies.append(orjson.dumps(value))
        return bodies, first

    def _url(self, record: KafkaRecord, shaped: dict[str, object] | None) -> str:
        if not self._templated:
            return self._config.url
        whole = self._whole_segments
        parts = []
        for part in self._url_template.parts:
            if isinstance(part, str):
                parts.append(part)
                continue
            source = part.source
            if source == "key":  # the key's own bytes, escaped, as a URL always had them
                key = record.key
                if key is None:
                    raise ValueError("the URL names {key} and the record has none")
                if source in whole and _dot_segment(key.decode("latin-1")):
                    raise ValueError(f"the key {key!r} would be a dot segment of the path")
                parts.append(quote(key, safe=""))
                continue
            text = _lookup(part, record, shaped)
            if source in whole and _dot_segment(text):
                name = source if source in _RECORD_FIELDS else f"{{{source}}}"
                raise ValueError(f"the {name} {text!r} would be a dot segment of the path")
            parts.append(quote(text, safe=""))
        url = "".join(parts)
        if self._shared_segment and (segment := _dot_segment_in(url)) is not None:
            raise ValueError(f"the record makes {segment!r} a dot segment of the path")
        return url

    def _headers(self, record: KafkaRecord, shaped: dict[str, object] | None) -> dict[str, str]:
        headers = dict(self._static)
        for name, template in self._header_templates.items():
            text = "".join(
                part if isinstance(part, str) else _lookup(part, record, shaped)
                for part in template.parts
            )
            headers[name] = header_value(name, text)
        content_type = self._config.content_type
        for name, value in record.headers:
            lower = name.lower()
            if lower == "content-type":
                content_type = header_value(name, value)
            elif lower in self._forward:
                if (same := self._static_names.get(lower)) is not None:
                    headers.pop(same, None)  # the record's own replaces the static one
                headers[name] = header_value(name, value)
        headers["Content-Type"] = content_type
        headers["X-Kafka-Topic"] = header_value("topic", record.topic)
        headers["X-Kafka-Partition"] = str(record.partition)
        return headers

    def _single(
        self, record: KafkaRecord, bodies: list[bytes] | None, shaped: dict[str, object] | None
    ) -> tuple[str, str, dict[str, str], bytes | None]:
        headers = self._headers(record, shaped)
        headers["Idempotency-Key"] = idempotency_key(record)
        headers["X-Kafka-Offset"] = str(record.offset)
        if record.value is None and self._config.tombstones == "delete":
            del headers["Content-Type"]
            return "DELETE", self._url(record, shaped), headers, None
        body = bodies[0] if bodies is not None else record.value or b""
        return self._config.method, self._url(record, shaped), headers, body

    def _batch(
        self,
        records: Sequence[KafkaRecord],
        bodies: list[bytes] | None,
        shaped: dict[str, object] | None,
    ) -> tuple[str, str, dict[str, str], bytes | None]:
        """One request for ``records``; its URL and headers are rendered from the first."""
        first, last = records[0], records[-1]
        fmt = self._config.batch_format
        assert fmt is not None  # noqa: S101 - only called in batch mode
        headers = self._headers(first, shaped)
        headers["Content-Type"] = _BATCH_CONTENT_TYPES[fmt]
        headers["Idempotency-Key"] = f"{idempotency_key(first)}-{last.offset}"
        headers["X-Kafka-Offset"] = str(first.offset)
        headers["X-Kafka-Last-Offset"] = str(last.offset)
        headers["X-Batch-Size"] = str(len(records))
        values = bodies if bodies is not None else [record.value or b"null" for record in records]
        if fmt == "json-array":
            body = b"[" + b",".join(values) + b"]"
        else:
            if any(b"\n" in value for value in values):
                raise ValueError("a value holds a line break, which NDJSON cannot frame")
            body = b"\n".join(values) + b"\n"
        return self._config.method, self._url(first, shaped), headers, body

    # Answers to errors

    def _failure(self, outcome: Outcome, answer: Answer, token: str | None) -> SendError:
        status = answer.status
        if outcome is Outcome.RETRY:
            reason = "429" if status == 429 else "5xx" if status >= 500 else str(status)
            return RetryableSendError(
                f"Space API answered {status}",
                reason=reason,
                status=status,
                retry_after=parse_retry_after(answer.retry_after),
            )
        if outcome is Outcome.AUTH:
            return AuthError(
                f"Space API refused our credentials with {status}", reason="auth", status=status
            )
        if 300 <= status < 400:
            return self._redirected(answer)
        body = answer.body.decode("utf-8", "replace")
        cut = len(answer.body) >= BODY_EXCERPT_BYTES
        return RejectedError(
            f"Space API rejected the record with {status}",
            reason=metrics.status_class(status),
            status=status,
            body=self._redact(body, more=(token,), cut=cut),
        )

    def _redirected(self, answer: Answer) -> ConfigOutageError:
        """A redirect is never followed: a POST would turn into a GET whose 2xx accepts nothing."""
        status = answer.status
        if answer.location is None:
            message = f"Space API answered {status}, a redirect without a Location"
        else:
            location = self._redact(answer.location)
            message = f"Space API answered {status}, redirecting to {location}"
        return ConfigOutageError(
            f"{message}: requests are never redirected, so the URL setting must name the API",
            reason="redirect",
            status=status,
            location=None if answer.location is None else self._redact(answer.location),
        )
