"""``space-pipeline schema-registry``: a local schema registry, to try Avro topics end to end.

The subset of Confluent's REST API that producers and decoders use, kept in memory:

- ``POST /subjects/{subject}/versions`` registers a schema (``{"schema": "..."}``) and answers
  its id; the same schema registered again, under any subject, keeps its id;
- ``GET /schemas/ids/{id}`` answers ``{"schema": "..."}`` (404 with ``error_code`` 40403 when
  unknown);
- ``GET /subjects``, ``GET /subjects/{subject}/versions`` and
  ``GET /subjects/{subject}/versions/{version}`` (a number or ``latest``), for references and a
  look around.

Only Avro is accepted, and checked with fastavro as the stage parses it. With a username and
password, every request must bring them (basic auth), as a production registry would. No registry
server installs from a package index, so the tools carry this one; it is no production registry
(nothing is stored, no compatibility checks).
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hmac
import io
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import aiohttp
import orjson
from aiohttp import web
from fastavro import parse_schema, schemaless_writer
from fastavro.schema import SchemaParseException, UnknownType

CONTENT_TYPE = "application/vnd.schemaregistry.v1+json"


@dataclass(slots=True)
class Registry:
    """The registry's state: schemas by id, and each subject's versions (their ids)."""

    schemas: dict[int, str] = field(default_factory=dict)
    subjects: dict[str, list[int]] = field(default_factory=dict)
    looked_up: list[int] = field(default_factory=list)  # ids asked for, in order

    def register(self, subject: str, schema: str) -> int:
        """The id of ``schema`` (a new one if it is new) as the latest version of ``subject``."""
        parse_schema(orjson.loads(schema), named_schemas=self._named())
        canonical = orjson.dumps(orjson.loads(schema)).decode()
        schema_id = next((i for i, s in self.schemas.items() if s == canonical), None)
        if schema_id is None:
            schema_id = len(self.schemas) + 1
            self.schemas[schema_id] = canonical
        versions = self.subjects.setdefault(subject, [])
        if schema_id not in versions:
            versions.append(schema_id)
        return schema_id

    def _named(self) -> dict[str, Any]:
        """Every named type registered so far: a new schema may refer to them by name."""
        named: dict[str, Any] = {}
        for schema in self.schemas.values():
            parse_schema(orjson.loads(schema), named_schemas=named)
        return named


def _answer(payload: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(payload), status=status, content_type=CONTENT_TYPE)


def _error(status: int, code: int, message: str) -> web.Response:
    return _answer({"error_code": code, "message": message}, status)


def build_app(
    registry: Registry, *, username: str | None = None, password: str | None = None
) -> web.Application:
    """The registry's web application over ``registry``."""
    expected = None
    if username is not None:
        expected = "Basic " + base64.b64encode(f"{username}:{password or ''}".encode()).decode()

    @web.middleware
    async def basic_auth(
        request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        given = request.headers.get("Authorization", "")
        if expected is not None and not hmac.compare_digest(given, expected):
            return _error(401, 40101, "Unauthorized")
        return await handler(request)

    async def register(request: web.Request) -> web.Response:
        try:
            body = orjson.loads(await request.read())
            if body.get("schemaType", "AVRO") != "AVRO":
                return _error(422, 42201, "only Avro schemas are kept here")
            schema_id = registry.register(request.match_info["subject"], body["schema"])
        except (orjson.JSONDecodeError, KeyError, TypeError, AttributeError):
            return _error(422, 42201, 'the body must be {"schema": "<the schema as JSON>"}')
        except (SchemaParseException, UnknownType, ValueError) as error:
            return _error(422, 42201, f"Invalid schema: {error}")
        return _answer({"id": schema_id})

    async def by_id(request: web.Request) -> web.Response:
        try:
            schema_id = int(request.match_info["id"])
            registry.looked_up.append(schema_id)
            schema = registry.schemas[schema_id]
        except (KeyError, ValueError):
            return _error(404, 40403, "Schema not found")
        return _answer({"schema": schema})

    async def subjects(_: web.Request) -> web.Response:
        return _answer(sorted(registry.subjects))

    async def versions(request: web.Request) -> web.Response:
        ids = registry.subjects.get(request.match_info["subject"])
        if ids is None:
            return _error(404, 40401, "Subject not found")
        return _answer(list(range(1, len(ids) + 1)))

    async def version(request: web.Request) -> web.Response:
        subject = request.match_info["subject"]
        ids = registry.subjects.get(subject)
        if ids is None:
            return _error(404, 40401, "Subject not found")
        wanted = request.match_info["version"]
        number = len(ids) if wanted in ("latest", "-1") else int(wanted) if wanted.isdigit() else 0
        if not 1 <= number <= len(ids):
            return _error(404, 40402, "Version not found")
        schema_id = ids[number - 1]
        return _answer(
            {
                "subject": subject,
                "version": number,
                "id": schema_id,
                "schema": registry.schemas[schema_id],
            }
        )

    app = web.Application(middlewares=[basic_auth])
    app.router.add_post("/subjects/{subject}/versions", register)
    app.router.add_get("/schemas/ids/{id}", by_id)
    app.router.add_get("/subjects", subjects)
    app.router.add_get("/subjects/{subject}/versions", versions)
    app.router.add_get("/subjects/{subject}/versions/{version}", version)
    return app


@asynccontextmanager
async def running(
    registry: Registry | None = None,
    host: str = "127.0.0.1",
    port: int = 0,
    *,
    username: str | None = None,
    password: str | None = None,
) -> AsyncIterator[str]:
    """Serve a registry while inside; yields its URL (``port`` 0 picks a free one)."""
    app = build_app(registry or Registry(), username=username, password=password)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()


async def serve(host: str, port: int, username: str | None, password: str | None) -> None:
    """Serve until cancelled."""
    async with running(None, host, port, username=username, password=password) as url:
        print(f"schema registry on {url} (in memory; Ctrl-C stops it)", flush=True)
        await asyncio.Event().wait()


async def register(url: str, subject: str, schema: str) -> int:
    """Register ``schema`` under ``subject`` at the registry at ``url``; its id."""
    async with aiohttp.ClientSession() as session:
        response = await session.post(
            f"{url.rstrip('/')}/subjects/{quote(subject, safe='')}/versions",
            data=orjson.dumps({"schema": schema}),
            headers={"Content-Type": CONTENT_TYPE},
        )
        async with response:
            answer = orjson.loads(await response.read())
            if response.status != 200:
                raise ValueError(f"the registry refused the schema: {answer.get('message')}")
            return int(answer["id"])


def encoder(schema_id: int, schema: str) -> Callable[[bytes], bytes]:
    """Turns a JSON text into an Avro value in the wire format, for ``produce --avro``.

    Numbers with a fraction are read as exact decimals (a ``decimal`` field takes them as they
    are; fastavro writes a double from them too); timestamps are epoch milliseconds.
    """
    parsed = parse_schema(orjson.loads(schema))
    header = bytes([0]) + schema_id.to_bytes(4, "big")

    def encode(text: bytes) -> bytes:
        out = io.BytesIO()
        out.write(header)
        schemaless_writer(out, parsed, json.loads(text, parse_float=Decimal))
        return out.getvalue()

    return encode


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare ``space-pipeline schema-registry`` options."""
    add = parser.add_argument
    add("--host", default="127.0.0.1", help="address to listen on (%(default)s)")
    add("--port", type=int, default=8081, help="port to listen on (%(default)s)")
    add("--username", help="require basic auth with this user")
    add("--password", help="and this password")
