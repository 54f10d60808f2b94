"""The dead letter's headers: where the record came from, why it was refused, and no secret."""

from __future__ import annotations

import httpx
import pytest

from pipeline.dead_letter import dead_letter_headers
from pipeline.errors import RejectedError
from pipeline.http_client import HttpxClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.redaction import Redactor
from tests.fakes import Record


def x_error_body(headers: list[tuple[str, bytes]]) -> str:
    return dict(headers)["x-error-body"].decode()


def test_the_headers_say_where_the_record_came_from_and_why_it_was_refused() -> None:
    """The record's own headers come first, then ``x-original-*`` and ``x-error-*``."""
    record = Record(topic="orders", partition=3, offset=42, headers=[("trace", b"t1")])
    error = RejectedError("no", reason="4xx", status=422, body='{"error": "id missing"}')

    headers = dead_letter_headers(record, error, 2)

    assert ("trace", b"t1") == headers[0]
    named = dict(headers)
    assert b"orders" == named["x-original-topic"]
    assert b"3" == named["x-original-partition"]
    assert b"42" == named["x-original-offset"]
    assert b"422" == named["x-error-status"]
    assert b"4xx" == named["x-error-reason"]
    assert b"2" == named["x-error-attempts"]
    assert '{"error": "id missing"}' == x_error_body(headers)


async def test_a_token_the_api_echoes_never_reaches_the_dead_letter_topic() -> None:
    """An API that echoes our ``Authorization`` in its 422: the dead letter's x-error-body has
    the body with the token masked."""

    def echo(request: httpx.Request) -> httpx.Response:
        return httpx.Response(422, text=f"bad record, sent with {request.headers['authorization']}")

    client = HttpxClient(httpx.MockTransport(echo), Timeouts())
    async with HttpSink(HttpSinkConfig("https://space.example/v1", token="t0k3n"), client) as api:
        with pytest.raises(RejectedError) as raised:
            await api.send(Record())

    body = x_error_body(dead_letter_headers(Record(), raised.value, 1))
    assert "t0k3n" not in body
    assert "bad record, sent with ********" == body


@pytest.mark.parametrize(
    ("body", "secret"),
    [
        ("retry at https://user:pa55@space.example/v1", "pa55"),
        ("see /v1/records?access_token=at1&page=2", "at1"),
        ("the key is s3cret-key", "s3cret-key"),
    ],
)
def test_any_error_body_is_scrubbed_of_urls_and_known_secrets(body: str, secret: str) -> None:
    """Whatever sink refused the record (a user's function too), URL passwords, secret query
    values and the secrets the settings hold are masked before the body goes to Kafka."""
    error = RejectedError("no", reason="4xx", status=400, body=body)

    headers = dead_letter_headers(Record(), error, 1, redact=Redactor.of(["s3cret-key"]))

    assert secret not in x_error_body(headers)
    assert "********" in x_error_body(headers)
