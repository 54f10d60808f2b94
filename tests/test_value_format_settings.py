"""PIPELINE_VALUE_FORMAT and the schema registry settings: checked at start, wired as parts."""

from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.avro import AvroValues
from pipeline.config import describe, redactor
from pipeline.formats import JsonValues
from pipeline.wiring import build_registry, value_format
from tests.plugins.environment import only_settings
from tests.test_config import REQUIRED, error_line, load

REGISTRY = {"PIPELINE_VALUE_FORMAT": "avro", "PIPELINE_SCHEMA_REGISTRY_URL": "http://sr:8081"}
PASSWORD = "sr-s3cret-password"


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    return only_settings(monkeypatch, tmp_path, REQUIRED)


def test_values_go_as_bytes_by_default(env: pytest.MonkeyPatch) -> None:
    settings = load()

    assert ("bytes", None, None) == (
        settings.value_format,
        build_registry(settings),
        value_format(settings, None),
    )


def test_json_values_are_parsed_without_a_registry(env: pytest.MonkeyPatch) -> None:
    env.setenv("PIPELINE_VALUE_FORMAT", "json")
    settings = load()

    assert build_registry(settings) is None
    assert isinstance(value_format(settings, None), JsonValues)


def test_avro_values_are_decoded_through_the_registry(env: pytest.MonkeyPatch) -> None:
    for name, value in REGISTRY.items():
        env.setenv(name, value)
    settings = load()
    registry = build_registry(settings)

    assert registry is not None
    assert isinstance(value_format(settings, registry), AvroValues)


def test_avro_without_a_registry_names_the_missing_setting(env: pytest.MonkeyPatch) -> None:
    env.setenv("PIPELINE_VALUE_FORMAT", "avro")

    assert "PIPELINE_VALUE_FORMAT=avro needs PIPELINE_SCHEMA_REGISTRY_URL" == error_line()


def test_an_unknown_format_is_named(env: pytest.MonkeyPatch) -> None:
    env.setenv("PIPELINE_VALUE_FORMAT", "protobuf")

    assert error_line().startswith("PIPELINE_VALUE_FORMAT: Input should be 'bytes', 'json'")


def test_registry_settings_without_avro_are_a_problem(env: pytest.MonkeyPatch) -> None:
    """A registry set up for nothing is most likely a format forgotten: said, not ignored."""
    env.setenv("PIPELINE_SCHEMA_REGISTRY_URL", "http://sr:8081")

    assert "PIPELINE_SCHEMA_REGISTRY_URL only serve PIPELINE_VALUE_FORMAT=avro" == error_line()


def test_a_registry_url_must_be_http(env: pytest.MonkeyPatch) -> None:
    env.setenv("PIPELINE_VALUE_FORMAT", "avro")
    env.setenv("PIPELINE_SCHEMA_REGISTRY_URL", "ftp://sr:8081")

    assert error_line().startswith("PIPELINE_SCHEMA_REGISTRY_URL: must be an http(s) URL")


def test_a_registry_url_without_a_scheme_is_told_to_add_one(env: pytest.MonkeyPatch) -> None:
    env.setenv("PIPELINE_VALUE_FORMAT", "avro")
    env.setenv("PIPELINE_SCHEMA_REGISTRY_URL", "sr:8081")

    assert "PIPELINE_SCHEMA_REGISTRY_URL: no scheme: add http:// or https://" == error_line()


def test_a_username_needs_its_password(env: pytest.MonkeyPatch) -> None:
    for name, value in REGISTRY.items():
        env.setenv(name, value)
    env.setenv("PIPELINE_SCHEMA_REGISTRY_USERNAME", "stage")

    assert error_line().startswith(
        "PIPELINE_SCHEMA_REGISTRY_USERNAME and PIPELINE_SCHEMA_REGISTRY_PASSWORD go together"
    )


def test_a_ca_file_that_is_missing_or_no_pem_is_named(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for name, value in REGISTRY.items():
        env.setenv(name, value)
    env.setenv("PIPELINE_SCHEMA_REGISTRY_CA_FILE", str(tmp_path / "missing.pem"))
    assert error_line().startswith("PIPELINE_SCHEMA_REGISTRY_CA_FILE: no such file")

    (tmp_path / "junk.pem").write_text("not a certificate")
    env.setenv("PIPELINE_SCHEMA_REGISTRY_CA_FILE", str(tmp_path / "junk.pem"))
    assert error_line().startswith("PIPELINE_SCHEMA_REGISTRY_CA_FILE: cannot be loaded as PEM")


def test_a_function_gets_decoded_values_only_as_its_json_argument(
    env: pytest.MonkeyPatch,
) -> None:
    env.delenv("PIPELINE_SPACE_API_URL")
    env.setenv("PIPELINE_SINK_FUNCTION", "json:dumps")
    for name, value in REGISTRY.items():
        env.setenv(name, value)

    assert (
        "PIPELINE_VALUE_FORMAT=avro with PIPELINE_SINK_FUNCTION needs"
        " PIPELINE_SINK_ARGUMENT=json: the function gets the decoded value"
    ) == error_line()
    env.setenv("PIPELINE_SINK_ARGUMENT", "json")
    assert "avro" == load().value_format


def test_the_registry_password_is_masked_everywhere(env: pytest.MonkeyPatch) -> None:
    for name, value in REGISTRY.items():
        env.setenv(name, value)
    env.setenv("PIPELINE_SCHEMA_REGISTRY_USERNAME", "stage")
    env.setenv("PIPELINE_SCHEMA_REGISTRY_PASSWORD", PASSWORD)
    settings = load()

    assert PASSWORD not in "\n".join(describe(settings))
    assert PASSWORD not in redactor(settings)(f"registry said: bad password {PASSWORD}")
