"""Masking secrets: by what the stage knows, and by what looks like one in a URL."""

from __future__ import annotations

import io
import json
import logging

import pytest
import structlog

from pipeline.logging import LogFormat, configure_logging
from pipeline.redaction import MASK, Redactor, header_secrets, mask_url, secret_name, url_secrets


@pytest.mark.parametrize(
    "name",
    ["api_key", "APIKEY", "api-key", "key", "token", "access_token", "sig", "Signature",
     "X-Amz-Signature", "X-Amz-Credential", "secret", "client_secret", "password", "pass", "auth",
     "Authorization", "X-Api-Key", "session_id"],
)  # fmt: skip
def test_credential_names_are_recognised_without_regard_to_case_or_separators(name: str) -> None:
    assert secret_name(name)


@pytest.mark.parametrize("name", ["tenant", "page", "monkey", "author", "passenger", "keyspace"])
def test_ordinary_names_are_left_alone(name: str) -> None:
    """A word that merely contains ``key`` or ``auth`` names no credential."""
    assert not secret_name(name)


@pytest.mark.parametrize(
    ("text", "masked"),
    [
        ("https://u:pa55@h.example/x", f"https://u:{MASK}@h.example/x"),
        ("https://u:p@ss@h.example/x", f"https://u:{MASK}@h.example/x"),
        ("https://h.example/x?api_key=k1&page=2", f"https://h.example/x?api_key={MASK}&page=2"),
        ("https://h.example/x?Token=t&sig=s#f", f"https://h.example/x?Token={MASK}&sig={MASK}#f"),
        ("not a url: https://u:pw@[bad?token=t", f"not a url: https://u:{MASK}@[bad?token={MASK}"),
        ("https://h.example/x?tenant=acme", "https://h.example/x?tenant=acme"),
        ("https://user@h.example/", "https://user@h.example/"),
    ],
)
def test_urls_in_any_text_lose_passwords_and_secret_query_values(text: str, masked: str) -> None:
    assert masked == mask_url(text)


def test_a_url_names_its_secrets_basic_credentials_included() -> None:
    """A password also travels as ``Basic base64(user:password)``; an API may echo that."""
    secrets = url_secrets("https://us%40r:pa%2055@h.example/x?api_key=k1&page=2")

    assert {"pa%2055", "pa 55", "dXNAcjpwYSA1NQ==", "k1"} == set(secrets)


def test_header_secrets_are_the_credential_values_and_their_credential_part() -> None:
    secrets = header_secrets({"Authorization": "Bearer t0k", "X-Api-Key": "k1", "X-Tenant": "a"})

    assert ["Bearer t0k", "t0k", "k1"] == secrets


def test_known_secrets_are_masked_longest_first() -> None:
    """``Bearer t0k`` goes whole, not as ``Bearer ********``; empty secrets mask nothing."""
    redact = Redactor.of(["t0k", "Bearer t0k", "", None])

    assert f"sent {MASK}, then {MASK}" == redact("sent Bearer t0k, then t0k")


def test_every_log_line_is_scrubbed_of_secrets_ours_and_foreign() -> None:
    """A structlog line and a standard-library line (aiokafka's) alike: known secrets and URL
    secrets are masked in every value, nested ones included."""
    stream = io.StringIO()
    configure_logging("INFO", "json", stream=stream, redact=Redactor.of(["s3cret"]))
    try:
        structlog.get_logger("test").warning(
            "test.event",
            error="token s3cret refused",
            url="https://u:pw@h.example/?sig=abc",
            nested={"urls": ["https://h.example/?access_token=at1"]},
        )
        logging.getLogger("aiokafka").warning("connecting with s3cret")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()

    text = stream.getvalue()
    for secret in ("s3cret", ":pw@", "abc", "at1"):
        assert secret not in text
    ours, foreign = (json.loads(line) for line in text.splitlines())
    assert f"token {MASK} refused" == ours["error"]
    assert f"connecting with {MASK}" == foreign["event"]


@pytest.mark.parametrize("log_format", ["json", "console"])
def test_a_logged_exception_is_scrubbed_of_secrets_in_every_format(log_format: LogFormat) -> None:
    """A traceback is text like any other: an error that quotes a token, logged with its
    exception by our code or by a library's, shows no secret in JSON or at a terminal."""
    stream = io.StringIO()
    configure_logging("INFO", log_format, stream=stream, redact=Redactor.of(["s3cret"]))
    try:
        try:
            raise RuntimeError("the API echoed Bearer s3cret from https://u:pw@h.example/")
        except RuntimeError:
            structlog.get_logger("test").exception("test.failed")
            logging.getLogger("aiokafka").exception("aiokafka failed")
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()

    text = stream.getvalue()
    assert "RuntimeError" in text
    assert "s3cret" not in text
    assert ":pw@" not in text
