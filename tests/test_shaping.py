"""Shaping the request: a body expression, and URL and header templates, over the record."""

from __future__ import annotations

import base64
from pathlib import Path

import httpx
import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from pipeline.errors import InvalidRecordError
from pipeline.formats import JsonValues
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.shaping import BodyExpression, context
from tests.fakes import Record
from tests.test_http_sink import URL, FakeServer

EXAMPLE = "{item: value, source: join('/', [topic, to_string(partition), to_string(offset)])}"


def shaping_sink(
    server: FakeServer, expression: str | None = EXAMPLE, **config: object
) -> HttpSink:
    client = HttpxClient(httpx.MockTransport(server), Timeouts())
    body = BodyExpression(expression) if expression is not None else None
    return HttpSink(HttpSinkConfig(**({"url": URL} | config)), client, body=body)  # type: ignore[arg-type]


# The context an expression sees


def test_the_context_names_the_record_and_holds_its_decoded_value() -> None:
    record = Record(
        topic="orders",
        partition=3,
        offset=42,
        timestamp=1_700_000_000_000,
        key=b"customer-7",
        headers=[("tenant", b"acme")],
    )

    assert {
        "value": {"id": 7},
        "key": "customer-7",
        "headers": {"tenant": "acme"},
        "topic": "orders",
        "partition": 3,
        "offset": 42,
        "timestamp": 1_700_000_000_000,
    } == context(record, {"id": 7})


def test_a_key_or_header_that_is_not_utf8_is_base64_in_an_object_a_reader_can_tell_apart() -> None:
    """Text is always a JSON string; bytes that are not UTF-8 are ``{"base64": ...}``, so
    ``aGk=`` the text and ``hi`` the bytes never look the same."""
    record = Record(key=b"\xff\x00k", headers=[("raw", b"\xc3\x28"), ("text", b"aGk=")])

    shaped = context(record, None)

    assert {"base64": base64.b64encode(b"\xff\x00k").decode()} == shaped["key"]
    assert {"raw": {"base64": "wyg="}, "text": "aGk="} == shaped["headers"]


@given(st.binary(max_size=64))
def test_any_key_comes_back_whole_from_its_text_or_its_base64(key: bytes) -> None:
    shaped = context(Record(key=key), None)["key"]

    if isinstance(shaped, str):
        assert key == shaped.encode("utf-8")
    else:
        assert key == base64.b64decode(shaped["base64"])  # type: ignore[index]


def test_no_key_and_a_header_without_a_value_are_null() -> None:
    shaped = context(Record(key=None, headers=[("empty", None)]), None)  # type: ignore[list-item]

    assert shaped["key"] is None
    assert {"empty": None} == shaped["headers"]


def test_a_repeated_header_name_holds_its_last_value() -> None:
    """As Kafka Connect's ``lastWithName``: the latest word on a name wins."""
    record = Record(headers=[("attempt", b"1"), ("other", b"x"), ("attempt", b"2")])

    assert {"attempt": "2", "other": "x"} == context(record, None)["headers"]


# The body


async def test_the_issues_example_shapes_the_body_from_value_and_coordinates() -> None:
    server = FakeServer()
    async with shaping_sink(server) as sink:
        await sink.send(Record(topic="orders", partition=3, offset=42, value=b'{"id": 7}'))

    assert {"item": {"id": 7}, "source": "orders/3/42"} == orjson.loads(server.request.content)
    assert "application/json" == server.request.headers["content-type"]


async def test_an_expression_can_tell_text_from_bytes_and_reach_the_bytes() -> None:
    server = FakeServer()
    expression = "{binary: type(key) == 'object', key: key.base64 || key}"
    async with shaping_sink(server, expression) as sink:
        await sink.send(Record(key=b"\xff"))
        await sink.send(Record(key=b"text"))

    bodies = [orjson.loads(request.content) for request in server.requests]
    assert [{"binary": True, "key": "/w=="}, {"binary": False, "key": "text"}] == bodies


async def test_headers_and_key_can_be_read_by_the_expression() -> None:
    server = FakeServer()
    async with shaping_sink(server, '{tenant: headers."x-tenant", customer: key}') as sink:
        await sink.send(Record(key=b"c-7", headers=[("x-tenant", b"acme")]))

    assert {"tenant": "acme", "customer": "c-7"} == orjson.loads(server.request.content)


async def test_a_decoded_value_from_any_value_format_is_what_the_expression_reads() -> None:
    """The expression sits on the ValueFormat seam: whatever decoded the value, ``value`` is it."""

    class Doubled:
        async def decode(self, record: object) -> object:
            return {"n": 2}

    server = FakeServer()
    client = HttpxClient(httpx.MockTransport(server), Timeouts())
    body = BodyExpression("value.n")
    async with HttpSink(HttpSinkConfig(url=URL), client, values=Doubled(), body=body) as sink:
        await sink.send(Record(value=b"\x00 not json at all"))

    assert b"2" == server.request.content


@pytest.mark.parametrize("batch_format", ["json-array", "ndjson"])
async def test_a_batch_is_an_array_or_ndjson_of_each_records_result(batch_format: str) -> None:
    server = FakeServer()
    records = [Record(offset=offset, value=b'{"id": %d}' % offset) for offset in (5, 6, 7)]
    async with shaping_sink(
        server, "{id: value.id, at: offset}", batch_format=batch_format
    ) as sink:
        await sink.send(records)

    content = server.request.content
    if batch_format == "json-array":
        shaped = orjson.loads(content)
    else:
        shaped = [orjson.loads(line) for line in content.splitlines()]
    assert [{"id": 5, "at": 5}, {"id": 6, "at": 6}, {"id": 7, "at": 7}] == shaped


@pytest.mark.parametrize(
    ("expression", "value", "why"),
    [
        ("value.id", b'{"name": "x"}', "null"),
        ("to_number(value.id)", b'{"id": "seven"}', "null"),
        ("join('/', [topic, value.id])", b'{"id": 7}', "failed"),
        ("abs(value)", b'"text"', "failed"),
        ("value", b"not json", "not JSON"),
    ],
    ids=["null-body", "not-a-number", "join-a-number", "abs-of-text", "value-not-json"],
)
async def test_a_record_the_expression_fails_on_or_yields_null_for_is_rejected_unsent(
    expression: str, value: bytes, why: str
) -> None:
    """The whole body null is a rejection (halt or dead letter); ``null`` inside a body is a
    value like any other."""
    server = FakeServer()
    async with shaping_sink(server, expression) as sink:
        with pytest.raises(InvalidRecordError, match=why) as raised:
            await sink.send(Record(value=value))

    assert raised.value.retryable is False
    assert [] == server.requests


async def test_null_inside_the_body_is_sent() -> None:
    server = FakeServer()
    async with shaping_sink(server, "{id: value.id}") as sink:
        await sink.send(Record(value=b"{}"))

    assert {"id": None} == orjson.loads(server.request.content)


async def test_one_failing_record_rejects_its_whole_batch_unsent() -> None:
    server = FakeServer()
    records = [Record(offset=0, value=b'{"id": 1}'), Record(offset=1, value=b"{}")]
    async with shaping_sink(server, "value.id", batch_format="json-array") as sink:
        with pytest.raises(InvalidRecordError, match="null"):
            await sink.send(records)

    assert [] == server.requests


async def test_a_tombstone_deleted_never_evaluates_the_expression() -> None:
    """``PIPELINE_TOMBSTONES=delete`` sends no body: a ``value.id`` that would be null for it is
    never asked."""
    server = FakeServer()
    async with shaping_sink(server, "value.id", tombstones="delete") as sink:
        await sink.send(Record(value=None))

    assert "DELETE" == server.request.method
    assert b"" == server.request.content


@pytest.mark.parametrize(
    "source",
    [
        "{item: value",
        "value.[",
        "",
        "value + `1`",
        "unknown_fn(value)",
        "abs(value, offset)",
        "join(',')",
    ],
)
def test_a_malformed_expression_is_a_value_error_saying_so(source: str) -> None:
    """Functions too: jmespath would find a misspelt one, or a wrong count of arguments, only
    when the first record calls it."""
    with pytest.raises(ValueError, match=r"not a JMESPath expression|unknown function|arguments"):
        BodyExpression(source)


# URL and header templates: the same context, as {path} placeholders


async def test_the_url_may_name_paths_into_the_value_headers_offset_and_key() -> None:
    url = "https://space.example/v1/{value.space.id}/{headers.kind}/{offset}?customer={key}"
    server = FakeServer()
    async with shaping_sink(server, None, url=url) as sink:
        record = Record(
            offset=42, key=b"c 7", value=b'{"space": {"id": "a/b"}}', headers=[("kind", b"x")]
        )
        await sink.send(record)

    assert "/v1/a%2Fb/x/42?customer=c%207" == server.request.url.raw_path.decode()
    assert record.value == server.request.content  # the body stays the bytes as they are


async def test_a_quoted_name_reaches_a_header_with_a_dash() -> None:
    url = 'https://space.example/{headers."x-tenant"}/items'
    server = FakeServer()
    async with shaping_sink(server, None, url=url) as sink:
        await sink.send(Record(headers=[("x-tenant", b"acme")]))

    assert "/acme/items" == server.request.url.raw_path.decode()


@pytest.mark.parametrize("value", [b'{"id": ".."}', b'{"id": "%2e"}', b'{"id": "%252E"}'])
async def test_a_value_that_would_be_a_dot_segment_rejects_the_record(value: bytes) -> None:
    server = FakeServer()
    async with shaping_sink(server, None, url="https://space.example/s/{value.id}/x") as sink:
        with pytest.raises(InvalidRecordError, match="dot segment"):
            await sink.send(Record(value=value))

    assert [] == server.requests


async def test_a_value_completing_a_dot_segment_with_the_template_rejects_the_record() -> None:
    server = FakeServer()
    async with shaping_sink(server, None, url="https://space.example/s/.{value.id}/x") as sink:
        with pytest.raises(InvalidRecordError, match="dot segment"):
            await sink.send(Record(value=b'{"id": "."}'))


@pytest.mark.parametrize(
    "value",
    [b'{"other": 1}', b'{"id": null}', b'{"id": {"a": 1}}', b'{"id": [1]}', b"not json"],
    ids=["missing", "null", "object", "array", "not-json"],
)
async def test_a_path_missing_or_not_a_scalar_in_a_record_rejects_it(value: bytes) -> None:
    server = FakeServer()
    async with shaping_sink(server, None, url="https://space.example/{value.id}") as sink:
        with pytest.raises(InvalidRecordError):
            await sink.send(Record(value=value))

    assert [] == server.requests


async def test_numbers_and_booleans_are_spelt_as_in_json() -> None:
    server = FakeServer()
    url = "https://space.example/{value.n}/{value.f}/{value.b}"
    async with shaping_sink(server, None, url=url) as sink:
        await sink.send(Record(value=b'{"n": 7, "f": 1.5, "b": true}'))

    assert "/7/1.5/true" == server.request.url.raw_path.decode()


async def test_a_header_value_may_be_a_template_rendered_per_record() -> None:
    server = FakeServer()
    headers = {"X-Space": "space-{value.space}", "X-Static": "fixed", "X-Braces": "{{literal}}"}
    async with shaping_sink(server, None, headers=headers) as sink:
        await sink.send(Record(value=b'{"space": 9}'))
        await sink.send(Record(value=b'{"space": "moon"}'))

    assert ["space-9", "space-moon"] == [r.headers["x-space"] for r in server.requests]
    assert {"fixed"} == {r.headers["x-static"] for r in server.requests}
    assert {"{literal}"} == {r.headers["x-braces"] for r in server.requests}


async def test_a_templated_header_replaces_a_default_of_any_case() -> None:
    server = FakeServer()
    async with shaping_sink(server, None, headers={"user-agent": "feeder/{value.v}"}) as sink:
        await sink.send(Record(value=b'{"v": 2}'))

    assert ["feeder/2"] == server.request.headers.get_list("user-agent")


@pytest.mark.parametrize(
    "value", [b'{"space": "a\\r\\nX-Evil: 1"}', b'{"space": "a\\nb"}', b"{}"], ids=str
)
async def test_a_templated_header_with_a_line_break_or_no_value_rejects_the_record(
    value: bytes,
) -> None:
    server = FakeServer()
    async with shaping_sink(server, None, headers={"X-Space": "{value.space}"}) as sink:
        with pytest.raises(InvalidRecordError):
            await sink.send(Record(value=value))

    assert [] == server.requests


async def test_a_shaped_body_and_templates_read_the_value_decoded_once() -> None:
    class Counting(JsonValues):
        calls = 0

        async def decode(self, record: object) -> object:
            Counting.calls += 1
            return await super().decode(record)  # type: ignore[arg-type]

    server = FakeServer()
    client = HttpxClient(httpx.MockTransport(server), Timeouts())
    config = HttpSinkConfig(url="https://space.example/{value.id}", headers={"X-Id": "{value.id}"})
    async with HttpSink(config, client, values=Counting(), body=BodyExpression("value")) as sink:
        await sink.send(Record(value=b'{"id": 3}'))

    assert 1 == Counting.calls
    assert "/3" == server.request.url.raw_path.decode()


@pytest.mark.parametrize(
    ("url", "why"),
    [
        ("https://space.example/{nothing}", "unknown placeholder"),
        ("https://space.example/{value.a[}", "not a valid template"),
        ("https://space.example/{value.a | b}", "not a path"),
        ("https://space.example/{value!r}", "not a path"),
        ("https://{value.host}/x", "host"),
        ("https://space.example/{}", "empty"),
    ],
)
def test_a_wrong_url_template_is_refused_at_start(url: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        shaping_sink(FakeServer(), None, url=url)


def test_a_wrong_header_template_is_refused_at_start() -> None:
    with pytest.raises(ValueError, match=r"X-Space.*unknown placeholder"):
        shaping_sink(FakeServer(), None, headers={"X-Space": "{space}"})


# At start: the settings


def _run_config(tmp_path: Path, **settings: str) -> tuple[int, str]:
    import os  # noqa: PLC0415
    import subprocess  # noqa: PLC0415
    import sys  # noqa: PLC0415

    env = {k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")}
    env |= {
        "PYTHONPATH": str(Path(__file__).resolve().parents[1]),
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": "localhost:9092",
        "PIPELINE_KAFKA_TOPICS": "orders",
        "PIPELINE_SPACE_API_URL": "https://space.example/v1",
    } | settings
    done = subprocess.run(
        [sys.executable, "-m", "pipeline", "config"],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=60,
        check=False,
    )
    return done.returncode, done.stderr + done.stdout


def test_a_malformed_body_expression_exits_2_with_one_line_naming_the_setting(
    tmp_path: Path,
) -> None:
    code, output = _run_config(tmp_path, PIPELINE_SPACE_API_BODY="{item: value")

    assert 2 == code
    lines = [line for line in output.splitlines() if "PIPELINE_SPACE_API_BODY" in line]
    assert 1 == len(lines), output
    assert "not a JMESPath expression" in lines[0]


def test_a_valid_body_expression_is_shown_by_config(tmp_path: Path) -> None:
    code, output = _run_config(tmp_path, PIPELINE_SPACE_API_BODY=EXAMPLE)

    assert 0 == code, output
    assert f"PIPELINE_SPACE_API_BODY={EXAMPLE}" in output


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    from tests.plugins.environment import only_settings  # noqa: PLC0415
    from tests.test_config import REQUIRED  # noqa: PLC0415

    return only_settings(monkeypatch, tmp_path, REQUIRED)


def _problems() -> list[str]:
    from pipeline.config import load_settings  # noqa: PLC0415
    from pipeline.errors import ConfigError  # noqa: PLC0415

    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=None)
    return raised.value.problems


def test_value_paths_in_the_url_and_a_header_are_valid_settings(env: pytest.MonkeyPatch) -> None:
    from pipeline.config import load_settings  # noqa: PLC0415

    env.setenv("PIPELINE_SPACE_API_URL", "https://space.example/v1/{value.space.id}?at={offset}")
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"X-Tenant": "{headers.\\"x-tenant\\"}"}')

    settings = load_settings(env_file=None)

    assert "https://space.example/v1/{value.space.id}?at={offset}" == settings.space_api_url


@pytest.mark.parametrize(
    ("variable", "value", "why"),
    [
        ("PIPELINE_SPACE_API_URL", "https://space.example/{valeu.id}", "unknown placeholder"),
        ("PIPELINE_SPACE_API_URL", "https://{value.host}/x", "host"),
        ("PIPELINE_SPACE_API_HEADERS", '{"X-Space": "s3cret-{space"}', "X-Space"),
        ("PIPELINE_SPACE_API_HEADERS", '{"X-Api-Key": "{s3cret}"}', "X-Api-Key"),
    ],
)
def test_a_wrong_template_in_a_setting_is_one_line_naming_it(
    env: pytest.MonkeyPatch, variable: str, value: str, why: str
) -> None:
    env.setenv(variable, value)

    [line] = _problems()

    assert line.startswith(f"{variable}: ")
    assert why in line
    assert "s3cret" not in line  # a header value may be a secret: never echoed


def test_a_placeholder_of_one_record_cannot_name_a_batch(env: pytest.MonkeyPatch) -> None:
    env.setenv("PIPELINE_SPACE_API_URL", "https://space.example/{topic}/{value.id}")
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"X-At": "{offset}"}')
    env.setenv("PIPELINE_BATCH_MAX_RECORDS", "10")

    [line] = _problems()

    assert "{offset}, {value.id} in PIPELINE_SPACE_API_URL or _HEADERS" in line
    assert "PIPELINE_BATCH_MAX_RECORDS" in line


def test_a_body_expression_with_a_sink_function_is_refused(env: pytest.MonkeyPatch) -> None:
    env.delenv("PIPELINE_SPACE_API_URL")
    env.setenv("PIPELINE_SINK_FUNCTION", "builtins:print")
    env.setenv("PIPELINE_SPACE_API_BODY", "value")

    [line] = _problems()

    assert line.startswith("PIPELINE_SPACE_API_BODY shapes requests to the API")
