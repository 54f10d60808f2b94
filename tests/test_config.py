"""Settings from ``PIPELINE_*`` variables: checked at start, every problem named on a line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from pydantic import ValidationError

from pipeline.config import Settings, describe, load_settings
from pipeline.errors import ConfigError
from tests.plugins.environment import only_settings

REQUIRED = {
    "PIPELINE_KAFKA_BOOTSTRAP_SERVERS": "kafka-0:9092,kafka-1:9092",
    "PIPELINE_KAFKA_TOPICS": "orders",
    "PIPELINE_SPACE_API_URL": "https://space.example/v1/records",
}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """An environment holding only the required settings, in a directory without a .env."""
    return only_settings(monkeypatch, tmp_path, REQUIRED)


def load() -> Settings:
    return load_settings(env_file=None)


def problems() -> list[str]:
    """Every problem the current environment has, one line each."""
    with pytest.raises(ConfigError) as raised:
        load()
    assert all("\n" not in line for line in raised.value.problems)
    return raised.value.problems


def error_line() -> str:
    """The one problem of the current environment."""
    found = problems()
    assert 1 == len(found), found
    return found[0]


# Valid settings


def test_the_required_settings_are_enough(env: pytest.MonkeyPatch) -> None:
    """Bootstrap servers, topics and the API URL; everything else has a default."""
    settings = load()

    assert "kafka-0:9092,kafka-1:9092" == settings.kafka_bootstrap_servers
    assert ("orders",) == settings.kafka_topics
    assert "https://space.example/v1/records" == str(settings.space_api_url)
    assert "partition" == settings.ordering
    assert 64 == settings.max_in_flight


def test_topics_are_a_comma_separated_list(env: pytest.MonkeyPatch) -> None:
    """Spaces around names and empty entries are ignored."""
    env.setenv("PIPELINE_KAFKA_TOPICS", " orders, payments ,,refunds ")

    assert ("orders", "payments", "refunds") == load().kafka_topics


def test_settings_are_read_case_insensitively_where_it_helps(env: pytest.MonkeyPatch) -> None:
    """``log_level=debug`` means DEBUG."""
    env.setenv("PIPELINE_LOG_LEVEL", "debug")

    assert "DEBUG" == load().log_level


def test_static_headers_are_json(env: pytest.MonkeyPatch) -> None:
    """``PIPELINE_SPACE_API_HEADERS`` is a JSON object of strings."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"X-Tenant": "acme"}')

    assert {"X-Tenant": "acme"} == load().space_api_headers


def test_sasl_with_all_credentials_is_accepted(env: pytest.MonkeyPatch) -> None:
    """SASL_SSL with mechanism, user and password is a complete setup."""
    env.setenv("PIPELINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("PIPELINE_KAFKA_SASL_MECHANISM", "SCRAM-SHA-512")
    env.setenv("PIPELINE_KAFKA_SASL_USERNAME", "stage")
    env.setenv("PIPELINE_KAFKA_SASL_PASSWORD", "hunter2")

    settings = load()

    assert settings.kafka_sasl_password is not None
    assert "hunter2" == settings.kafka_sasl_password.get_secret_value()
    assert "hunter2" not in repr(settings)


def test_settings_are_frozen(env: pytest.MonkeyPatch) -> None:
    """Settings are read once; nobody changes them afterwards."""
    settings = load()

    with pytest.raises(ValidationError):
        settings.max_in_flight = 1  # type: ignore[misc]


# Missing settings


@pytest.mark.parametrize("name", sorted(REQUIRED))
def test_a_missing_required_setting_is_named_and_said_to_be_required(
    env: pytest.MonkeyPatch, name: str
) -> None:
    """The line names the variable the operator must set (for the API URL, or the function
    that replaces it)."""
    env.delenv(name)

    assert error_line().startswith(f"{name}: required setting is not set")


def test_the_api_url_and_a_sink_function_are_one_or_the_other(env: pytest.MonkeyPatch) -> None:
    """Records go to the HTTP API or through a function: naming both is refused."""
    env.setenv("PIPELINE_SINK_FUNCTION", "json:dumps")

    assert error_line().startswith("PIPELINE_SPACE_API_URL and PIPELINE_SINK_FUNCTION: set one")


# Invalid settings


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PIPELINE_METRICS_PORT", "70000", "less than or equal to 65535"),
        ("PIPELINE_METRICS_PORT", "nine", "valid integer"),
        ("PIPELINE_SPACE_API_URL", "not a url", "URL"),
        ("PIPELINE_SPACE_API_URL", "ftp://space.example/", "URL scheme"),
        ("PIPELINE_ORDERING", "random", "'partition' or 'key'"),
        ("PIPELINE_KAFKA_TOPICS", " , ,", "at least one topic"),
        ("PIPELINE_KAFKA_TOPICS", "", "at least one topic"),
        ("PIPELINE_MAX_IN_FLIGHT", "0", "greater than 0"),
        ("PIPELINE_RETRY_MAX_BACKOFF_S", "-1", "greater than 0"),
        ("PIPELINE_KAFKA_AUTO_OFFSET_RESET", "middle", "'earliest' or 'latest'"),
        ("PIPELINE_LOG_LEVEL", "chatty", "'DEBUG'"),
    ],
)
def test_an_invalid_value_is_named_with_the_reason_and_the_value(
    env: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    """``PIPELINE_X: <why> (got <value>)``, on one line."""
    env.setenv(name, value)

    line = error_line()

    assert line.startswith(f"{name}: ")
    assert says in line
    assert repr(value) in line or repr(value.upper()) in line


@pytest.mark.parametrize(("drain_ms", "commit_ms"), [("20000", "10000"), ("10000", "19001")])
def test_a_revoke_budget_beyond_the_rebalance_timeout_is_refused(
    env: pytest.MonkeyPatch, drain_ms: str, commit_ms: str
) -> None:
    """A revoke drains, then commits (waiting for a commit under way included): both, and a
    margin, must finish before the group evicts the member. The line names all three."""
    env.setenv("PIPELINE_KAFKA_REBALANCE_TIMEOUT_MS", "30000")
    env.setenv("PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS", drain_ms)
    env.setenv("PIPELINE_COMMIT_TIMEOUT_MS", commit_ms)

    line = error_line()

    assert line.startswith("PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS ")
    assert "PIPELINE_COMMIT_TIMEOUT_MS" in line
    assert "PIPELINE_KAFKA_REBALANCE_TIMEOUT_MS (30000)" in line


def test_the_default_revoke_budget_fits_the_default_rebalance_timeout() -> None:
    """Drain 10 s + commit 10 s + 1 s stays within the 30 s rebalance timeout."""
    defaults = Settings.model_fields
    budget = (
        defaults["rebalance_drain_timeout_ms"].default
        + defaults["commit_timeout_ms"].default
        + 1_000
    )
    assert budget <= defaults["kafka_rebalance_timeout_ms"].default


def test_a_revoke_budget_exactly_at_the_rebalance_timeout_is_fine(
    env: pytest.MonkeyPatch,
) -> None:
    """Drain 19 s + commit 10 s + 1 s = 30 s is allowed."""
    env.setenv("PIPELINE_KAFKA_REBALANCE_TIMEOUT_MS", "30000")
    env.setenv("PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS", "19000")

    assert 19_000 == load().rebalance_drain_timeout_ms


@pytest.mark.parametrize(
    "credentials",
    [
        {},
        {"PIPELINE_KAFKA_SASL_MECHANISM": "PLAIN", "PIPELINE_KAFKA_SASL_USERNAME": "stage"},
        {"PIPELINE_KAFKA_SASL_USERNAME": "stage", "PIPELINE_KAFKA_SASL_PASSWORD": "pw"},
    ],
    ids=["none", "no-password", "no-mechanism"],
)
@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_complete_credentials_is_refused(
    env: pytest.MonkeyPatch, protocol: str, credentials: dict[str, str]
) -> None:
    """SASL_* needs a mechanism, a user name and a password."""
    env.setenv("PIPELINE_KAFKA_SECURITY_PROTOCOL", protocol)
    for name, value in credentials.items():
        env.setenv(name, value)

    line = error_line()

    assert line.startswith(f"PIPELINE_KAFKA_SECURITY_PROTOCOL={protocol} needs ")
    assert "pw" not in line


def test_a_client_certificate_without_its_key_is_refused(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Certificate and key files go together."""
    certificate = tmp_path / "client.pem"
    certificate.write_text("cert")
    env.setenv("PIPELINE_KAFKA_SSL_CERTFILE", str(certificate))

    assert error_line().startswith("PIPELINE_KAFKA_SSL_CERTFILE and PIPELINE_KAFKA_SSL_KEYFILE go")


def test_a_missing_ca_file_is_named(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A CA file that does not exist fails at start, naming the setting."""
    env.setenv("PIPELINE_KAFKA_SSL_CAFILE", str(tmp_path / "nowhere.pem"))

    assert error_line().startswith("PIPELINE_KAFKA_SSL_CAFILE: no such file: ")


def test_every_problem_is_reported_at_once_one_line_each(env: pytest.MonkeyPatch) -> None:
    """Fixing one setting should not reveal the next: all of them come at once."""
    env.delenv("PIPELINE_KAFKA_TOPICS")
    env.setenv("PIPELINE_METRICS_PORT", "70000")
    env.setenv("PIPELINE_ORDERING", "random")

    found = problems()

    assert [
        "PIPELINE_KAFKA_TOPICS",
        "PIPELINE_ORDERING",
        "PIPELINE_METRICS_PORT",
    ] == [line.split(":")[0] for line in found]
    assert "PIPELINE_KAFKA_TOPICS: required setting is not set" == found[0]


def test_every_conflict_between_settings_is_reported_naming_the_variables(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Checks across settings are listed together, each with the variables it concerns."""
    env.setenv("PIPELINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("PIPELINE_KAFKA_SASL_USERNAME", "stage")
    env.setenv("PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS", "9000")
    env.setenv("PIPELINE_KAFKA_SSL_CAFILE", str(tmp_path / "nowhere.pem"))

    found = problems()

    assert 3 == len(found), found
    assert (
        "PIPELINE_KAFKA_SECURITY_PROTOCOL=SASL_SSL needs PIPELINE_KAFKA_SASL_MECHANISM,"
        " PIPELINE_KAFKA_SASL_PASSWORD"
    ) in found
    assert any(line.startswith("PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS ") for line in found)
    assert any(line.startswith("PIPELINE_KAFKA_SSL_CAFILE: no such file") for line in found)


def test_an_unknown_variable_is_an_error_with_the_closest_setting(
    env: pytest.MonkeyPatch,
) -> None:
    """A typo must not silently mean "not set": ``PIPELINE_KAFKA_TOPIC`` is refused, and the
    line says which setting was probably meant."""
    env.setenv("PIPELINE_KAFKA_TOPIC", "orders")
    env.setenv("PIPELINE_SPACE_API_TOKN", "s3cret")

    found = problems()

    assert [
        "PIPELINE_KAFKA_TOPIC: unknown setting (did you mean PIPELINE_KAFKA_TOPICS?)",
        "PIPELINE_SPACE_API_TOKN: unknown setting (did you mean PIPELINE_SPACE_API_TOKEN?)",
    ] == found


def test_an_unknown_variable_in_the_env_file_is_an_error_too(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``.env`` is checked like the environment, and the line says where the name came from."""
    dotenv = tmp_path / ".env"
    dotenv.write_text("PIPELINE_LOG_LEVL=debug\nOTHER_TOOL_SETTING=1\n")

    with pytest.raises(ConfigError) as raised:
        load_settings(env_file=dotenv)

    assert [
        "PIPELINE_LOG_LEVL (in .env): unknown setting (did you mean PIPELINE_LOG_LEVEL?)"
    ] == raised.value.problems


def test_variables_of_other_programs_are_left_alone(env: pytest.MonkeyPatch) -> None:
    """Only the PIPELINE_ prefix is ours."""
    env.setenv("PIPELINES_ARE_FUN", "yes")
    env.setenv("KAFKA_TOPICS", "other")

    assert ("orders",) == load().kafka_topics


def test_the_effective_configuration_lists_every_setting_with_secrets_masked(
    env: pytest.MonkeyPatch,
) -> None:
    """``space-pipeline config`` shows each setting once, marks defaults, and never prints a
    secret: tokens, passwords and a password inside the URL are masked."""
    env.setenv("PIPELINE_SPACE_API_URL", "https://user:pa55@space.example/v1/records")
    env.setenv("PIPELINE_SPACE_API_TOKEN", "s3cret")
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"X-Api-Key": "k3y"}')

    lines = describe(load())
    text = "\n".join(lines)

    assert len(Settings.model_fields) == len(lines)
    assert "PIPELINE_KAFKA_TOPICS=orders" in lines
    assert "PIPELINE_KAFKA_GROUP_ID=space-pipeline  # default" in lines
    assert "PIPELINE_SPACE_API_TOKEN=********" in lines
    assert "PIPELINE_SPACE_API_URL=https://user:********@space.example/v1/records" in lines
    for secret in ("pa55", "s3cret", "k3y"):
        assert secret not in text


def test_malformed_json_headers_are_an_error_naming_the_setting(env: pytest.MonkeyPatch) -> None:
    """``PIPELINE_SPACE_API_HEADERS={oops`` is reported like any other invalid value."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", "{oops")

    assert error_line().startswith("PIPELINE_SPACE_API_HEADERS: ")


def test_an_error_in_a_setting_that_may_hold_credentials_does_not_echo_it(
    env: pytest.MonkeyPatch,
) -> None:
    """Bad JSON in ``PIPELINE_SPACE_API_HEADERS`` is named, but its value is never printed."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"Authorization": "Bearer s3cret"')

    line = error_line()

    assert line.startswith("PIPELINE_SPACE_API_HEADERS: must be a JSON object")
    assert "s3cret" not in line


# Headers that must not come from settings or records


@pytest.mark.parametrize(
    "name",
    [
        "host",
        "Content-Length",
        "transfer-encoding",
        "Connection",
        "keep-alive",
        "TE",
        "trailer",
        "upgrade",
        "Proxy-Authorization",
        "authorization",
        "idempotency-key",
        "X-Kafka-Offset",
    ],
)
def test_forwarding_a_framing_hop_by_hop_or_own_header_is_refused(
    env: pytest.MonkeyPatch, name: str
) -> None:
    """A Kafka header forwarded as ``Host`` or ``Content-Length`` would give a request two of
    them (a request-smuggling shape); hop-by-hop headers, credentials and the headers the
    sink writes itself are refused too, at start, naming the setting and the header."""
    env.setenv("PIPELINE_FORWARD_HEADERS", f"traceparent,{name}")

    line = error_line()

    assert line.startswith("PIPELINE_FORWARD_HEADERS: ")
    assert repr(name) in line or name in line


@pytest.mark.parametrize(
    "name",
    ["Host", "content-length", "Transfer-Encoding", "connection", "Upgrade", "Proxy-Authorization"],
)
def test_a_static_framing_or_hop_by_hop_header_is_refused(
    env: pytest.MonkeyPatch, name: str
) -> None:
    """``PIPELINE_SPACE_API_HEADERS`` may not set what frames the request or belongs to one
    connection either; the line names the header but never echoes the values."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", f'{{"{name}": "s3cret"}}')

    line = error_line()

    assert line.startswith("PIPELINE_SPACE_API_HEADERS: ")
    assert name in line
    assert "s3cret" not in line


def test_a_static_authorization_header_is_allowed_alone(env: pytest.MonkeyPatch) -> None:
    """An API key scheme of the API's own (``Authorization: ApiKey ...``) is a static header."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"Authorization": "ApiKey k3y"}')

    assert {"Authorization": "ApiKey k3y"} == load().space_api_headers


def test_a_static_authorization_header_and_a_token_are_one_or_the_other(
    env: pytest.MonkeyPatch,
) -> None:
    """Both would send two Authorization headers: refused, naming both settings."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"authorization": "ApiKey k3y"}')
    env.setenv("PIPELINE_SPACE_API_TOKEN", "s3cret")

    line = error_line()

    assert "PIPELINE_SPACE_API_HEADERS" in line
    assert "PIPELINE_SPACE_API_TOKEN" in line
    assert "k3y" not in line
    assert "s3cret" not in line


# Secrets are masked precisely: never shown, and nothing else hidden


def test_the_configuration_masks_exactly_the_secrets(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """``space-pipeline config`` masks SecretStr values, static header values, OAuth2 extra
    parameter values, URL passwords and secret-looking query values (the token URL's too),
    and shows everything else as it is: header names, forwarded headers, an empty ``{}``, the
    path of a secret file."""
    secret_file = tmp_path / "client-secret"
    secret_file.write_text("file-s3cret")
    env.setenv("PIPELINE_SPACE_API_URL", "https://space.example/v1/{key}?api_key=ak1&tenant=acme")
    env.setenv("PIPELINE_FORWARD_HEADERS", "traceparent,x-tenant")
    env.setenv("PIPELINE_OAUTH2_TOKEN_URL", "https://idp.example/token?client_secret=cs1&realm=r")
    env.setenv("PIPELINE_OAUTH2_CLIENT_ID", "stage")
    env.setenv("PIPELINE_OAUTH2_CLIENT_SECRET_FILE", str(secret_file))
    env.setenv("PIPELINE_OAUTH2_EXTRA_PARAMS", '{"audience": "aud1", "assertion": "as1"}')

    lines = describe(load())
    text = "\n".join(lines)

    for secret in ("ak1", "cs1", "aud1", "as1", "file-s3cret"):
        assert secret not in text
    assert "PIPELINE_FORWARD_HEADERS=traceparent,x-tenant" in lines
    assert "PIPELINE_SPACE_API_HEADERS={}  # default" in lines
    assert (
        "PIPELINE_SPACE_API_URL=https://space.example/v1/{key}?api_key=********&tenant=acme"
        in lines
    )
    assert (
        "PIPELINE_OAUTH2_TOKEN_URL=https://idp.example/token?client_secret=********&realm=r"
        in lines
    )
    assert f"PIPELINE_OAUTH2_CLIENT_SECRET_FILE={secret_file}" in lines
    assert 'PIPELINE_OAUTH2_EXTRA_PARAMS={"audience": "********", "assertion": "********"}' in lines


def test_static_header_names_are_shown_and_their_values_masked(env: pytest.MonkeyPatch) -> None:
    """A static header may hold an API key: its value is masked, its name is not."""
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"X-Api-Key": "k3y", "X-Tenant": "acme"}')

    lines = describe(load())

    assert 'PIPELINE_SPACE_API_HEADERS={"X-Api-Key": "********", "X-Tenant": "********"}' in lines


@pytest.mark.parametrize(
    ("name", "value", "secret"),
    [
        ("PIPELINE_SPACE_API_URL", "https://user:pa55@/v1/records", "pa55"),
        ("PIPELINE_SPACE_API_URL", "ftp://space.example/?token=t0k", "t0k"),
        ("PIPELINE_OAUTH2_TOKEN_URL", "https://idp:[bad/token?client_secret=cs1", "cs1"),
    ],
)
def test_an_invalid_url_is_echoed_with_its_secrets_masked(
    env: pytest.MonkeyPatch, name: str, value: str, secret: str
) -> None:
    """The error names the setting and shows the URL, so the operator sees what is wrong with
    it, but never its password or a secret query value."""
    env.setenv(name, value)
    if name == "PIPELINE_OAUTH2_TOKEN_URL":
        env.setenv("PIPELINE_OAUTH2_CLIENT_ID", "stage")
        env.setenv("PIPELINE_OAUTH2_CLIENT_SECRET", "s3cret")

    found = "\n".join(problems())

    assert name in found
    assert secret not in found


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_the_compression_setting_reaches_the_sink(env: pytest.MonkeyPatch, encoding: str) -> None:
    """``PIPELINE_SPACE_API_COMPRESSION`` is what the HTTP sink compresses with."""
    from pipeline.wiring import http_sink_config  # noqa: PLC0415

    env.setenv("PIPELINE_SPACE_API_COMPRESSION", encoding)

    assert encoding == http_sink_config(load()).compression


def test_the_log_redactor_knows_every_secret_the_settings_hold(
    env: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """Tokens, passwords, the OAuth2 secret (from its file too), credential-named static
    headers, long OAuth2 extra values and URL secrets; not a tenant name or a short value."""
    from pipeline.config import redactor  # noqa: PLC0415

    secret_file = tmp_path / "client-secret"
    secret_file.write_text("file-s3cret\n")
    env.setenv("PIPELINE_SPACE_API_URL", "https://u:url-pa55@space.example/v1?sig=sig-123")
    env.setenv("PIPELINE_SPACE_API_HEADERS", '{"X-Api-Key": "hdr-k3y", "X-Tenant": "acme"}')
    env.setenv("PIPELINE_OAUTH2_TOKEN_URL", "https://idp.example/token")
    env.setenv("PIPELINE_OAUTH2_CLIENT_ID", "stage")
    env.setenv("PIPELINE_OAUTH2_CLIENT_SECRET_FILE", str(secret_file))
    env.setenv("PIPELINE_OAUTH2_EXTRA_PARAMS", '{"assertion": "eyJhbGciOi.xyz", "aud": "api"}')
    env.setenv("PIPELINE_KAFKA_SECURITY_PROTOCOL", "SASL_SSL")
    env.setenv("PIPELINE_KAFKA_SASL_MECHANISM", "PLAIN")
    env.setenv("PIPELINE_KAFKA_SASL_USERNAME", "stage")
    env.setenv("PIPELINE_KAFKA_SASL_PASSWORD", "sasl-pa55")

    redact = redactor(load())
    line = redact("url-pa55 sig-123 hdr-k3y file-s3cret eyJhbGciOi.xyz sasl-pa55 | acme api stage")

    assert "******** " * 6 + "| acme api stage" == line


# Fetch latency


async def fetch_settings_of_the_consumer() -> tuple[int, int]:
    """The fetch wait and minimum of the consumer the stage would build (never started)."""
    from pipeline.consumer import build_consumer  # noqa: PLC0415
    from pipeline.wiring import kafka_options  # noqa: PLC0415

    consumer = build_consumer(kafka_options(load()))
    try:
        return consumer._fetch_max_wait_ms, consumer._fetch_min_bytes
    finally:
        await consumer.stop()


async def test_the_fetch_wait_and_minimum_default_to_aiokafkas_own(
    env: pytest.MonkeyPatch,
) -> None:
    """500 ms and 1 byte: unset, the stage fetches exactly as a bare aiokafka consumer would
    (async: aiokafka builds its consumer inside a running loop)."""
    assert (500, 1) == await fetch_settings_of_the_consumer()


async def test_the_fetch_wait_and_minimum_reach_the_consumer(env: pytest.MonkeyPatch) -> None:
    """``PIPELINE_KAFKA_FETCH_MAX_WAIT_MS`` bounds how long a broker holds an empty fetch, which
    is most of the end-to-end latency at a low rate: it must reach aiokafka, not just parse."""
    env.setenv("PIPELINE_KAFKA_FETCH_MAX_WAIT_MS", "10")
    env.setenv("PIPELINE_KAFKA_FETCH_MIN_BYTES", "4096")

    assert (10, 4096) == await fetch_settings_of_the_consumer()


@pytest.mark.parametrize(
    ("name", "value", "says"),
    [
        ("PIPELINE_KAFKA_FETCH_MAX_WAIT_MS", "0", "greater than 0"),
        ("PIPELINE_KAFKA_FETCH_MAX_WAIT_MS", "30001", "less than or equal to 30000"),
        ("PIPELINE_KAFKA_FETCH_MAX_WAIT_MS", "soon", "valid integer"),
        ("PIPELINE_KAFKA_FETCH_MIN_BYTES", "0", "greater than 0"),
    ],
)
def test_a_fetch_wait_or_minimum_out_of_range_is_named_with_the_reason(
    env: pytest.MonkeyPatch, name: str, value: str, says: str
) -> None:
    """No wait would have the consumer spin on empty fetches; a wait near aiokafka's 40 s request
    timeout would have every idle fetch time out."""
    env.setenv(name, value)

    line = error_line()

    assert line.startswith(f"{name}: ")
    assert says in line
    assert repr(value) in line


def test_a_fetch_minimum_above_the_fetch_maximum_is_refused(env: pytest.MonkeyPatch) -> None:
    """A broker could never gather that much into one fetch, so every fetch would wait the whole
    wait: the line names both variables."""
    env.setenv("PIPELINE_KAFKA_FETCH_MAX_BYTES", "65536")
    env.setenv("PIPELINE_KAFKA_FETCH_MIN_BYTES", "65537")

    line = error_line()

    assert line.startswith("PIPELINE_KAFKA_FETCH_MIN_BYTES ")
    assert "PIPELINE_KAFKA_FETCH_MAX_BYTES (65536)" in line


def test_reading_the_settings_loads_no_http_or_kafka_client() -> None:
    """``pipeline.config`` checks what it must without the clients: checking the configuration
    (``space-pipeline config``, a bad variable's exit 2) stays fast, and the settings do not
    depend on the parts they configure."""
    code = (
        "import sys, pipeline.config; "
        "print(sorted(m for m in ('aiohttp', 'httpx', 'aiokafka') if m in sys.modules))"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True
    )

    assert "[]" == done.stdout.strip()


def test_a_result_topic_that_is_a_source_topic_is_refused_naming_both(
    env: pytest.MonkeyPatch,
) -> None:
    """Results written to a topic the stage reads would come round again as records."""
    env.setenv("PIPELINE_RESULT_TOPIC", "orders")

    line = error_line()

    assert "PIPELINE_RESULT_TOPIC" in line
    assert "PIPELINE_KAFKA_TOPICS" in line


# Every problem at once, even when a field fails (issue 18)


def test_a_conflict_is_reported_alongside_a_value_that_does_not_parse(
    env: pytest.MonkeyPatch,
) -> None:
    """A setting that does not parse must not hide a conflict between the others: the missing
    dead-letter topic comes with the bad integer, not on the next run."""
    env.setenv("PIPELINE_ON_REJECT", "dead-letter")
    env.setenv("PIPELINE_MAX_IN_FLIGHT", "abc")

    found = problems()

    assert 2 == len(found), found
    assert found[0].startswith("PIPELINE_MAX_IN_FLIGHT: ")
    assert "PIPELINE_ON_REJECT=dead-letter needs PIPELINE_DEAD_LETTER_TOPIC" == found[1]


def test_a_conflict_involving_a_setting_that_does_not_parse_is_not_guessed_at(
    env: pytest.MonkeyPatch,
) -> None:
    """The checks across settings run on what parsed: a bad value is reported once, for itself,
    and never stood in for by its default in a conflict the operator did not write."""
    env.setenv("PIPELINE_KAFKA_SESSION_TIMEOUT_MS", "ten seconds")
    env.setenv("PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS", "5000")  # > a third of the default 10 s

    found = problems()

    assert ["PIPELINE_KAFKA_SESSION_TIMEOUT_MS"] == [line.split(":")[0] for line in found]


def test_conflicts_are_reported_when_a_required_setting_is_missing(
    env: pytest.MonkeyPatch,
) -> None:
    """A missing required setting does not stop the checks across the others either."""
    env.delenv("PIPELINE_KAFKA_BOOTSTRAP_SERVERS")
    env.setenv("PIPELINE_ON_REJECT", "dead-letter")

    found = problems()

    assert [
        "PIPELINE_KAFKA_BOOTSTRAP_SERVERS: required setting is not set",
        "PIPELINE_ON_REJECT=dead-letter needs PIPELINE_DEAD_LETTER_TOPIC",
    ] == found


# A URL without a scheme (issue 18)


@pytest.mark.parametrize("name", ["PIPELINE_SPACE_API_URL", "PIPELINE_OAUTH2_TOKEN_URL"])
def test_a_url_without_a_scheme_says_to_add_one(env: pytest.MonkeyPatch, name: str) -> None:
    """``127.0.0.1:8080/items`` is a URL to a person: the line says what to add, not that it is
    "a relative URL without a base"."""
    env.setenv(name, "127.0.0.1:8080/items")
    if name == "PIPELINE_OAUTH2_TOKEN_URL":
        env.setenv("PIPELINE_OAUTH2_CLIENT_ID", "stage")
        env.setenv("PIPELINE_OAUTH2_CLIENT_SECRET", "s3cret")

    line = error_line()

    assert line.startswith(f"{name}: ")
    assert "add http:// or https://" in line
    assert "relative URL" not in line


def test_a_proxy_without_a_scheme_says_to_add_one(env: pytest.MonkeyPatch) -> None:
    """The proxy's address too."""
    env.setenv("PIPELINE_HTTP_CLIENT", "aiohttp")
    env.setenv("PIPELINE_HTTP_PROXY", "proxy.example:3128")

    line = error_line()

    assert line.startswith("PIPELINE_HTTP_PROXY: ")
    assert "add http:// or https://" in line


def test_a_schema_registry_without_a_scheme_says_to_add_one(env: pytest.MonkeyPatch) -> None:
    """The schema registry's address too."""
    env.setenv("PIPELINE_VALUE_FORMAT", "avro")
    env.setenv("PIPELINE_SCHEMA_REGISTRY_URL", "registry.example:8081")

    line = error_line()

    assert line.startswith("PIPELINE_SCHEMA_REGISTRY_URL: ")
    assert "add http:// or https://" in line
