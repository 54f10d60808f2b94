"""A schema registry client: what a schema id in a record's value means, asked once per id.

Confluent's wire format puts a schema id in front of each value; the schema itself lives in the
registry, behind ``GET /schemas/ids/{id}``. An id names one schema for ever (a registry never
reuses one), so an answer is kept for the life of the process: the registry is asked once per id,
never per record, and however many lanes meet a new id at once, one request goes out and they
all share its outcome.

Whose fault a failure is decides what happens to the record (see :mod:`pipeline.errors`):

- an id the registry does not know (404), or a schema that is no Avro or does not parse: the
  record's, an :class:`~pipeline.errors.InvalidRecordError` (halt or dead letter);
- anything else (the registry down, slow, answering 5xx, refusing our credentials, redirecting,
  an untrusted certificate): nobody's record, a :class:`~pipeline.errors.RegistryError`, an outage
  during which everything waits and a probe at a time asks again. Failures are not kept: the
  next probe asks the registry anew.

A schema may refer to named types of other subjects (Confluent's schema references): they are
fetched by subject and version, once, with the schema that names them.
"""

from __future__ import annotations

import asyncio
import base64
from collections.abc import Mapping
from typing import Any, Protocol
from urllib.parse import quote

import orjson
import structlog
from fastavro import parse_schema
from fastavro.schema import SchemaParseException, UnknownType

from pipeline import metrics
from pipeline.errors import ConfigOutageError, InvalidRecordError, RegistryError, SendError
from pipeline.http_client import HttpClient, Timeouts
from pipeline.redaction import Redactor, url_secrets

log = structlog.get_logger("pipeline.schema_registry")

# A schema is a few kilobytes; one of megabytes is a wrong endpoint, read no further.
MAX_SCHEMA_BYTES = 8 * 1024 * 1024
# References may refer on: a cycle, or an absurd depth, is a schema that cannot be used.
MAX_REFERENCE_DEPTH = 32
# A registry answers from memory: one that takes longer is failing, and everything waits anyway.
REGISTRY_TIMEOUTS = Timeouts(connect=5.0, read=10.0)
ACCEPT = "application/vnd.schemaregistry.v1+json, application/json"

Schema = Any  # fastavro's parsed schema: a dict, a list (a union) or a name


class Schemas(Protocol):
    """Where a decoder learns what a schema id means (the registry, or a fake in tests)."""

    async def schema(self, schema_id: int) -> Schema:
        """The parsed Avro schema of ``schema_id``, or raise a SendError saying whose fault."""
        ...


class _Abandoned(Exception):
    """The caller fetching an id was cancelled: a waiter asks again itself."""


class SchemaRegistry:
    """Avro schemas by id from a Confluent-compatible registry; an async context manager.

    Args:
        url: The registry's base URL (``https://registry.example:8081``).
        client: The HTTP client to ask through; closed with the registry.
        username: Basic auth user, if the registry wants one.
        password: Basic auth password; never logged.
    """

    def __init__(
        self,
        url: str,
        client: HttpClient,
        *,
        username: str | None = None,
        password: str | None = None,
    ) -> None:
        self._url = url.rstrip("/")
        self._client = client
        self._headers = {"Accept": ACCEPT, "User-Agent": "space-pipeline"}
        secrets: list[str | None] = [password, *url_secrets(url)]
        if username is not None or password is not None:
            basic = base64.b64encode(f"{username or ''}:{password or ''}".encode()).decode()
            self._headers["Authorization"] = f"Basic {basic}"
            secrets.append(basic)
        self._redact = Redactor.of(secrets)
        self._schemas: dict[int, Schema] = {}
        self._fetching: dict[int, asyncio.Future[Schema]] = {}
        self._closed = False

    async def __aenter__(self) -> SchemaRegistry:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the client's connections; later calls do nothing."""
        if not self._closed:
            self._closed = True
            await self._client.aclose()

    @property
    def cached(self) -> int:
        """How many schemas are known."""
        return len(self._schemas)

    async def schema(self, schema_id: int) -> Schema:
        """The parsed schema of ``schema_id``: kept, or fetched by one caller for all."""
        while True:
            known = self._schemas.get(schema_id)
            if known is not None:
                return known
            fetching = self._fetching.get(schema_id)
            if fetching is None:
                break
            try:
                return await asyncio.shield(fetching)  # a waiter's cancellation is its own
            except _Abandoned:
                continue  # the fetching caller went away: ask again
        fetching = self._fetching[schema_id] = asyncio.get_running_loop().create_future()
        try:
            schema = await self._fetch(schema_id)
        except asyncio.CancelledError:
            _settle(fetching, _Abandoned())
            raise
        except Exception as error:
            _settle(fetching, error)
            raise
        else:
            self._schemas[schema_id] = schema
            fetching.set_result(schema)
            return schema
        finally:
            del self._fetching[schema_id]

    async def _fetch(self, schema_id: int) -> Schema:
        answer = await self._get(f"/schemas/ids/{schema_id}", f"schema id {schema_id}")
        if answer is None:
            metrics.SCHEMA_REGISTRY_REQUESTS.labels("not_found").inc()
            raise InvalidRecordError(f"schema id {schema_id} is unknown to the schema registry")
        kind = answer.get("schemaType", "AVRO")
        if kind != "AVRO":
            raise InvalidRecordError(f"schema id {schema_id} is a {kind} schema, not Avro")
        named: dict[str, Any] = {}
        await self._resolve(answer.get("references") or [], named, f"schema id {schema_id}", 0)
        schema = _parsed(answer, named, f"schema id {schema_id}")
        log.info("schema_registry.schema_fetched", schema_id=schema_id)
        return schema

    async def _resolve(
        self, references: list[Any], named: dict[str, Any], what: str, depth: int
    ) -> None:
        """Parse every referenced schema into ``named``, references of references first."""
        if depth > MAX_REFERENCE_DEPTH:
            raise InvalidRecordError(f"{what} has references deeper than {MAX_REFERENCE_DEPTH}")
        for reference in references:
            try:
                subject, version = str(reference["subject"]), int(reference["version"])
            except (KeyError, TypeError, ValueError):
                raise InvalidRecordError(f"{what} has a malformed reference") from None
            where = f"/subjects/{quote(subject, safe='')}/versions/{version}"
            label = f"{what}'s reference {subject} version {version}"
            answer = await self._get(where, label)
            if answer is None:
                raise InvalidRecordError(f"{label} is unknown to the schema registry")
            await self._resolve(answer.get("references") or [], named, label, depth + 1)
            _parsed(answer, named, label)

    async def _get(self, path: str, what: str) -> Mapping[str, Any] | None:
        """The registry's JSON answer; ``None`` for a 404; a RegistryError for anything else."""
        url = self._url + path
        try:
            answer = await self._client.request(
                "GET", url, self._headers, None, read_body=True, max_body=MAX_SCHEMA_BYTES
            )
        except ConfigOutageError as error:  # an untrusted certificate
            raise self._down(
                f"the schema registry's TLS certificate failed verification ({error}); fix"
                " PIPELINE_SCHEMA_REGISTRY_URL, or trust its CA with"
                " PIPELINE_SCHEMA_REGISTRY_CA_FILE"
            ) from error
        except SendError as error:  # refused, cut, timed out, too large
            raise self._down(f"the schema registry failed for {what}: {error}") from error
        status = answer.status
        if status == 404:
            return None
        if not 200 <= status < 300:
            excerpt = answer.body[:200].decode("utf-8", "replace")
            where = f" to {answer.location}" if answer.location else ""
            raise self._down(
                f"the schema registry answered {status}{where} for {what}: {excerpt}", status
            )
        try:
            payload = orjson.loads(answer.body)
        except orjson.JSONDecodeError:
            raise self._down(f"the schema registry's answer for {what} is not JSON") from None
        if not isinstance(payload, dict) or not isinstance(payload.get("schema"), str):
            raise self._down(f"the schema registry's answer for {what} holds no schema")
        metrics.SCHEMA_REGISTRY_REQUESTS.labels("ok").inc()
        return payload

    def _down(self, message: str, status: int | None = None) -> RegistryError:
        """An outage, with ``registry`` as its reason whatever failed.

        Retries and log lines then say where it failed; the client's own error (a
        ``connection``, a ``timeout``) is its cause.
        """
        metrics.SCHEMA_REGISTRY_REQUESTS.labels("failed").inc()
        return RegistryError(self._redact(message), reason="registry", status=status)


def _parsed(answer: Mapping[str, Any], named: dict[str, Any], what: str) -> Schema:
    """The answer's schema parsed (its named types added to ``named``), or the record's fault."""
    try:
        return parse_schema(orjson.loads(answer["schema"]), named_schemas=named)
    except (orjson.JSONDecodeError, SchemaParseException, UnknownType, ValueError) as error:
        raise InvalidRecordError(f"{what} is no valid Avro schema: {error}") from error
    except (KeyError, TypeError, AttributeError) as error:  # JSON of the wrong shape
        raise InvalidRecordError(f"{what} is no valid Avro schema: {error!r}") from error


def _settle(future: asyncio.Future[Schema], error: BaseException) -> None:
    """Hand a failure to the waiters; marked seen, so no waiter is no warning."""
    future.set_exception(error)
    future.exception()
