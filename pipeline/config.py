"""Settings for ``space-pipeline run``, read once from ``PIPELINE_*`` environment variables.

Everything is checked at start, and every problem is reported at once, one line each, naming the
variable as the operator spells it: a typo fails the pod at once rather than hours later in the
middle of a rebalance. A ``PIPELINE_*`` variable that names no setting is a problem too (a
mistyped token would otherwise silently mean no authentication), with the closest real name.
"""

from __future__ import annotations

import difflib
import json
import os
import re
import socket
import ssl
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, get_args
from urllib.parse import urlsplit

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict, SettingsError

from pipeline import tls
from pipeline.checks import (
    check_forward_headers,
    check_scheme,
    check_static_headers,
    import_exceptions,
    import_function,
)
from pipeline.errors import ConfigError
from pipeline.policy import (
    DEFAULT_AUTH_STATUSES,
    DEFAULT_RETRY_STATUSES,
    format_statuses,
    parse_skip_list,
    parse_statuses,
)
from pipeline.redaction import MASK, Redactor, header_secrets, mask_url, secret_name, url_secrets
from pipeline.shaping import (
    OPERATOR_NAMES,
    BodyExpression,
    Template,
    header_templates,
    url_template,
)

ENV_PREFIX = "PIPELINE_"

# Settings whose values may hold credentials while their names do not (an API key in a static
# header, an assertion among the token request's fields): `space-pipeline config` shows the
# names and masks the values, and an error never echoes them. SecretStr settings are masked
# whole; URLs show everything but a password and secret-looking query values.
MASKED_VALUES = frozenset({"space_api_headers", "oauth2_extra_params"})
# An OAuth2 extra parameter's value is masked in logs when its name looks secret, or when it is
# this long: an assertion or a key is, while masking a short value (``audience=api``) would
# blank every word like it in every line.
EXTRA_PARAM_SECRET_CHARS = 8

NO_SINK = (
    "PIPELINE_SPACE_API_URL: required setting is not set (or PIPELINE_SINK_FUNCTION, to deliver"
    " through your own function)"
)

# What Kafka accepts as a group.instance.id (as for topic names).
_INSTANCE_ID = re.compile(r"[A-Za-z0-9._-]{1,249}")

# What a revoke needs besides its drain and its commit: cancelling lanes, forgetting partitions.
REVOKE_MARGIN_MS = 1_000

PositiveInt = Annotated[int, Field(gt=0)]
PositiveFloat = Annotated[float, Field(gt=0)]


class Settings(BaseSettings):
    """The stage's whole configuration; frozen, and passed down explicitly."""

    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        frozen=True,
    )

    # Kafka
    kafka_bootstrap_servers: str
    kafka_topics: Annotated[tuple[str, ...], NoDecode]
    kafka_group_id: str = "space-pipeline"
    kafka_client_id: str = "space-pipeline"
    kafka_auto_offset_reset: Literal["earliest", "latest"] = "earliest"
    kafka_isolation_level: Literal["read_committed", "read_uncommitted"] = "read_committed"
    kafka_session_timeout_ms: PositiveInt = 10_000
    kafka_heartbeat_interval_ms: PositiveInt = 3_000
    kafka_rebalance_timeout_ms: PositiveInt = 30_000
    kafka_max_poll_records: PositiveInt = 500
    kafka_fetch_max_bytes: PositiveInt = 1024 * 1024
    kafka_max_partition_fetch_bytes: PositiveInt = 1024 * 1024
    # aiokafka's defaults. At a low rate the wait is most of the latency: a broker holds a fetch
    # that has fewer than the minimum bytes that long. Never 0 (the consumer would spin on empty
    # fetches), and well below aiokafka's 40 s request timeout (idle fetches would time out).
    kafka_fetch_max_wait_ms: Annotated[int, Field(gt=0, le=30_000)] = 500
    kafka_fetch_min_bytes: PositiveInt = 1
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_keyfile_password: SecretStr | None = None
    # KIP-345 static membership; `{hostname}` is the pod's name under a StatefulSet.
    kafka_group_instance_id: str | None = None
    kafka_startup_timeout_s: PositiveFloat = 300.0

    # The Space API (or your own function instead)
    space_api_url: str | None = None
    space_api_method: Literal["POST", "PUT", "PATCH"] = "POST"
    space_api_content_type: str = "application/json"
    space_api_token: SecretStr | None = None
    space_api_headers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    space_api_timeout_s: PositiveFloat = 10.0
    space_api_connect_timeout_s: PositiveFloat = 5.0
    space_api_ca_file: Path | None = None
    space_api_client_cert_file: Path | None = None
    space_api_client_key_file: Path | None = None
    space_api_compression: Literal["none", "gzip", "zstd"] = "none"
    # Shaping the body: a JMESPath expression over the record (pipeline/shaping.py).
    space_api_body: str | None = None
    http_client: Literal["lean", "aiohttp"] = "lean"
    http_proxy: str | None = None
    forward_headers: Annotated[tuple[str, ...], NoDecode] = ("traceparent", "tracestate")
    tombstones: Literal["send", "delete"] = "send"
    oauth2_token_url: str | None = None
    oauth2_client_id: str | None = None
    oauth2_client_secret: SecretStr | None = None
    oauth2_client_secret_file: Path | None = None
    oauth2_scope: str | None = None
    oauth2_extra_params: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    sink_function: str | None = None
    sink_argument: Literal["record", "value", "json"] = "record"
    sink_reject_exceptions: Annotated[tuple[str, ...], NoDecode] = ()

    # Value formats: what a value's bytes mean (a schema registry for Avro)
    value_format: Literal["bytes", "json", "avro", "json-schema"] = "bytes"
    schema_registry_url: str | None = None
    schema_registry_username: str | None = None
    schema_registry_password: SecretStr | None = None
    schema_registry_ca_file: Path | None = None

    # Ordered batching: consecutive records of one lane per request
    batch_max_records: PositiveInt = 1
    batch_max_bytes: PositiveInt = 1024 * 1024
    batch_linger_ms: Annotated[float, Field(ge=0)] = 5.0
    batch_format: Literal["json-array", "ndjson"] = "json-array"

    # Outcomes: what each answer means, and what a rejection leads to
    retry_statuses: Annotated[frozenset[int], NoDecode] = parse_statuses(DEFAULT_RETRY_STATUSES)
    auth_statuses: Annotated[frozenset[int], NoDecode] = parse_statuses(DEFAULT_AUTH_STATUSES)
    on_reject: Literal["halt", "dead-letter"] = "halt"
    dead_letter_topic: str | None = None
    dead_letter_max_per_minute: PositiveInt = 60
    dead_letter_idempotence: bool = True
    skip_records: Annotated[frozenset[str], NoDecode] = frozenset()

    # The API's answer: each accepted request's answer produced to a topic
    result_topic: str | None = None
    result_max_bytes: PositiveInt = 1024 * 1024
    result_idempotence: bool = True
    max_record_age_s: Annotated[float | None, Field(gt=0)] = None  # off: any age is sent

    # The API as one shared resource
    circuit_failures: PositiveInt = 5
    rate_limit_per_s: Annotated[float, Field(ge=0)] = 0.0
    rate_limit_burst: PositiveInt = 10

    # Delivery
    ordering: Literal["partition", "key"] = "partition"
    max_in_flight: PositiveInt = 64
    partition_buffer_records: PositiveInt = 1_000
    partition_buffer_bytes: PositiveInt = 16 * 1024 * 1024
    retry_initial_backoff_s: PositiveFloat = 0.1
    retry_max_backoff_s: PositiveFloat = 30.0
    retry_after_max_s: PositiveFloat = 300.0
    commit_interval_ms: PositiveInt = 1_000
    commit_timeout_ms: PositiveInt = 10_000
    rebalance_drain_timeout_ms: PositiveInt = 10_000

    # Operating
    metrics_host: str = "0.0.0.0"  # noqa: S104 - a pod must be scraped from outside
    metrics_port: Annotated[int, Field(ge=0, le=65535)] = 9400
    admin_token: SecretStr | None = None
    shutdown_timeout_s: PositiveFloat = 20.0
    stall_timeout_s: PositiveFloat = 300.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"
    log_format: Literal["json", "console", "auto"] = "auto"
    progress_interval_s: Annotated[float, Field(ge=0)] = 30.0

    @field_validator("kafka_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        if not value:
            msg = "must name at least one topic (comma-separated)"
            raise ValueError(msg)
        return value

    @field_validator("kafka_group_instance_id")
    @classmethod
    def _expand_instance_id(cls, value: str | None) -> str | None:
        return None if value is None else expand_instance_id(value)

    @field_validator("space_api_url", "oauth2_token_url")
    @classmethod
    def _check_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        sample = url_template(value).sample()
        check_scheme(sample)
        AnyHttpUrl(sample)  # raises with pydantic's own words when it is no http(s) URL
        return value

    @field_validator("space_api_body")
    @classmethod
    def _compile_body(cls, value: str | None) -> str | None:
        if value is not None:
            BodyExpression(value)  # a ValueError in one line saying what is wrong
        return value

    @field_validator("sink_function")
    @classmethod
    def _import_function(cls, value: str | None) -> str | None:
        if value is not None:
            try:
                import_function(value)
            except (ImportError, AttributeError, TypeError, ValueError) as error:
                msg = f"cannot use {value!r}: {type(error).__name__}: {error}"
                raise ValueError(msg) from None
        return value

    @field_validator("sink_reject_exceptions")
    @classmethod
    def _import_exceptions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        try:
            import_exceptions(value)
        except (ImportError, AttributeError, TypeError, ValueError) as error:
            msg = f"{type(error).__name__}: {error}"
            raise ValueError(msg) from None
        return value

    @field_validator("forward_headers", "sink_reject_exceptions", mode="before")
    @classmethod
    def _split_names(cls, value: object) -> object:
        if isinstance(value, str):
            return tuple(name.strip() for name in value.split(",") if name.strip())
        return value

    @field_validator("forward_headers")
    @classmethod
    def _check_forwarded(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        check_forward_headers(value)
        return value

    @field_validator("space_api_headers")
    @classmethod
    def _check_static(cls, value: dict[str, str]) -> dict[str, str]:
        check_static_headers(value)
        for name, text in value.items():  # the value may be a secret: named, never shown
            if "\r" in text or "\n" in text or "\0" in text:
                msg = f"the value of {name!r} holds a line break or NUL"
                raise ValueError(msg)
        header_templates(value)
        return value

    @field_validator("retry_statuses", "auth_statuses", mode="before")
    @classmethod
    def _parse_statuses(cls, value: object) -> object:
        return parse_statuses(value) if isinstance(value, str) else value

    @field_validator("skip_records", mode="before")
    @classmethod
    def _parse_skip(cls, value: object) -> object:
        return parse_skip_list(value) if isinstance(value, str) else value

    @field_validator("space_api_headers", "oauth2_extra_params", mode="before")
    @classmethod
    def _parse_headers(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                msg = f'must be a JSON object such as {{"name": "value"}} ({error.msg})'
                raise ValueError(msg) from None
        return value

    @field_validator("space_api_method", "log_level", mode="before")
    @classmethod
    def _upper(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @field_validator("log_format", mode="before")
    @classmethod
    def _lower_format(cls, value: object) -> object:
        return value.lower() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        problems = list(self._conflicts())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _conflicts(self) -> Iterator[str]:
        """Problems that no single setting has alone, each naming the variables involved."""
        revoke_ms = self.rebalance_drain_timeout_ms + self.commit_timeout_ms + REVOKE_MARGIN_MS
        if revoke_ms > self.kafka_rebalance_timeout_ms:
            yield (
                f"PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS ({self.rebalance_drain_timeout_ms}) + "
                f"PIPELINE_COMMIT_TIMEOUT_MS ({self.commit_timeout_ms}) + {REVOKE_MARGIN_MS} ms "
                "must not exceed PIPELINE_KAFKA_REBALANCE_TIMEOUT_MS "
                f"({self.kafka_rebalance_timeout_ms}): a revoke drains, then commits, and the "
                "group evicts a member that takes longer"
            )
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            yield (
                "PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "PIPELINE_KAFKA_SESSION_TIMEOUT_MS, or one late heartbeat evicts this member"
            )
        if self.kafka_fetch_min_bytes > self.kafka_fetch_max_bytes:
            yield (
                f"PIPELINE_KAFKA_FETCH_MIN_BYTES ({self.kafka_fetch_min_bytes}) must not exceed "
                f"PIPELINE_KAFKA_FETCH_MAX_BYTES ({self.kafka_fetch_max_bytes}): no fetch could "
                "gather that much, so every one would wait PIPELINE_KAFKA_FETCH_MAX_WAIT_MS"
            )
        if self.kafka_security_protocol.startswith("SASL_"):
            missing = [
                env_name(name)
                for name in ("kafka_sasl_mechanism", "kafka_sasl_username", "kafka_sasl_password")
                if not getattr(self, name)
            ]
            if missing:
                yield (
                    f"PIPELINE_KAFKA_SECURITY_PROTOCOL={self.kafka_security_protocol} needs "
                    + ", ".join(missing)
                )
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            yield (
                "PIPELINE_KAFKA_SSL_CERTFILE and PIPELINE_KAFKA_SSL_KEYFILE go together "
                "(a client certificate and its key)"
            )
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                yield f"{env_name(name)}: no such file: {path}"
        if both := self.retry_statuses & self.auth_statuses:
            yield (
                "PIPELINE_RETRY_STATUSES and PIPELINE_AUTH_STATUSES both hold "
                + ",".join(str(code) for code in sorted(both))
            )
        if self.on_reject == "dead-letter" and not self.dead_letter_topic:
            yield "PIPELINE_ON_REJECT=dead-letter needs PIPELINE_DEAD_LETTER_TOPIC"
        if self.admin_token is not None and not self.admin_token.get_secret_value().strip():
            yield (
                "PIPELINE_ADMIN_TOKEN is empty: unset it to turn the admin API off, or set a"
                " token (an empty one would let anybody in)"
            )
        yield from self._sink_conflicts()
        yield from self._header_conflicts()
        yield from self._format_conflicts()
        yield from self._shaping_conflicts()
        yield from self._written_topic_conflicts()

    def _written_topic_conflicts(self) -> Iterator[str]:
        """A topic the stage writes must not be one it reads: what it writes would come back."""
        if self.dead_letter_topic in self.kafka_topics:
            yield (
                "PIPELINE_DEAD_LETTER_TOPIC must not be one of PIPELINE_KAFKA_TOPICS: rejected "
                "records would come round again"
            )
        if self.result_topic in self.kafka_topics:
            yield (
                "PIPELINE_RESULT_TOPIC must not be one of PIPELINE_KAFKA_TOPICS: results would"
                " come round again as records"
            )

    def _sink_conflicts(self) -> Iterator[str]:
        if self.space_api_url is None and self.sink_function is None:
            yield NO_SINK
        if self.space_api_url is not None and self.sink_function is not None:
            yield (
                "PIPELINE_SPACE_API_URL and PIPELINE_SINK_FUNCTION: set one (records go to the"
                " HTTP API, or through your own function)"
            )
        oauth = {name: getattr(self, name) for name in ("oauth2_token_url", "oauth2_client_id")}
        secret_given = (
            self.oauth2_client_secret is not None or self.oauth2_client_secret_file is not None
        )
        if self.oauth2_client_secret is not None and self.oauth2_client_secret_file is not None:
            yield "PIPELINE_OAUTH2_CLIENT_SECRET and PIPELINE_OAUTH2_CLIENT_SECRET_FILE: set one"
        if secret_given or any(value is not None for value in oauth.values()):
            missing = [env_name(name) for name, value in oauth.items() if value is None]
            if not secret_given:
                missing.append("PIPELINE_OAUTH2_CLIENT_SECRET (or _FILE)")
            if missing:
                yield "OAuth2 client credentials also need " + ", ".join(missing)
            if self.space_api_token is not None:
                yield "PIPELINE_SPACE_API_TOKEN and PIPELINE_OAUTH2_*: use one way to authenticate"
        secret_file = self.oauth2_client_secret_file
        if secret_file is not None and not secret_file.is_file():
            yield f"PIPELINE_OAUTH2_CLIENT_SECRET_FILE: no such file: {secret_file}"
        yield from self._http_edge_conflicts()
        if self.batch_max_records > 1:
            if self.ordering == "partition" and "{key}" in (self.space_api_url or ""):
                yield (
                    "PIPELINE_SPACE_API_URL names {key}, but with PIPELINE_BATCH_MAX_RECORDS > 1"
                    " a batch holds many keys unless PIPELINE_ORDERING=key"
                )
            if self.tombstones == "delete":
                yield (
                    "PIPELINE_TOMBSTONES=delete cannot be batched: set PIPELINE_BATCH_MAX_RECORDS=1"
                )
            if self.batch_max_records > self.partition_buffer_records:
                yield (
                    "PIPELINE_BATCH_MAX_RECORDS must not exceed PIPELINE_PARTITION_BUFFER_RECORDS,"
                    " or no batch ever fills"
                )

    def _format_conflicts(self) -> Iterator[str]:
        """A value format without what it needs, or registry settings nothing would use."""
        registry = self.schema_registry_url
        if self.value_format == "avro" and registry is None:
            yield "PIPELINE_VALUE_FORMAT=avro needs PIPELINE_SCHEMA_REGISTRY_URL"
        if self.value_format != "avro":
            given = [
                env_name(name)
                for name in (
                    "schema_registry_url",
                    "schema_registry_username",
                    "schema_registry_password",
                    "schema_registry_ca_file",
                )
                if getattr(self, name) is not None
            ]
            if given:
                yield ", ".join(given) + " only serve PIPELINE_VALUE_FORMAT=avro"
        if registry is not None:
            parts = urlsplit(registry)
            if "://" not in registry:
                yield "PIPELINE_SCHEMA_REGISTRY_URL: no scheme: add http:// or https://"
            elif parts.scheme not in ("http", "https") or not parts.hostname:
                yield (
                    "PIPELINE_SCHEMA_REGISTRY_URL: must be an http(s) URL such as"
                    " https://registry.example:8081"
                )
        if (self.schema_registry_username is None) != (self.schema_registry_password is None):
            yield (
                "PIPELINE_SCHEMA_REGISTRY_USERNAME and PIPELINE_SCHEMA_REGISTRY_PASSWORD go"
                " together (basic auth)"
            )
        ca_file = self.schema_registry_ca_file
        if ca_file is not None:
            if not ca_file.is_file():
                yield f"PIPELINE_SCHEMA_REGISTRY_CA_FILE: no such file: {ca_file}"
            else:
                try:
                    tls.ssl_context(ca_file)
                except (OSError, ssl.SSLError) as error:
                    yield (
                        "PIPELINE_SCHEMA_REGISTRY_CA_FILE: cannot be loaded as PEM certificates"
                        f" ({error})"
                    )
        function = self.sink_function is not None
        if function and self.value_format != "bytes" and self.sink_argument != "json":
            yield (
                f"PIPELINE_VALUE_FORMAT={self.value_format} with PIPELINE_SINK_FUNCTION needs"
                " PIPELINE_SINK_ARGUMENT=json: the function gets the decoded value"
            )

    def _shaping_conflicts(self) -> Iterator[str]:
        """A body expression without the API, templates that a batch cannot fill."""
        if self.space_api_body is not None and self.sink_function is not None:
            yield (
                "PIPELINE_SPACE_API_BODY shapes requests to the API, and PIPELINE_SINK_FUNCTION"
                " gets the records themselves: set one"
            )
        if self.batch_max_records > 1 and (placeholders := self._record_placeholders()):
            yield (
                f"{placeholders} in PIPELINE_SPACE_API_URL or _HEADERS name one record, but"
                " with PIPELINE_BATCH_MAX_RECORDS > 1 a request carries many"
            )

    def _record_placeholders(self) -> str:
        """The URL and header placeholders a batch cannot fill: those of one record's own.

        ``{key}`` is checked on its own: a batch of one key (``PIPELINE_ORDERING=key``) has one.
        """
        url = Template(self.space_api_url or "").placeholders
        headers = header_templates(self.space_api_headers).values()
        keyed = self.ordering == "key"
        found = {
            f"{{{placeholder.source}}}"
            for placeholder in (*url, *(p for t in headers for p in t.placeholders))
            if placeholder.root not in OPERATOR_NAMES
            and not (placeholder.source == "key" and (keyed or placeholder in url))
        }
        return ", ".join(sorted(found))

    def _header_conflicts(self) -> Iterator[str]:
        static_authorization = any(
            name.lower() == "authorization" for name in self.space_api_headers
        )
        token = self.space_api_token is not None or self.oauth2_token_url is not None
        if static_authorization and token:
            yield (
                "PIPELINE_SPACE_API_HEADERS holds Authorization, and PIPELINE_SPACE_API_TOKEN"
                " or PIPELINE_OAUTH2_* sets it too: use one way to authenticate"
            )

    def _http_edge_conflicts(self) -> Iterator[str]:
        """TLS files that do not load, a proxy the client cannot use."""
        yield from tls.problems(
            self.space_api_ca_file, self.space_api_client_cert_file, self.space_api_client_key_file
        )
        if self.http_proxy is not None:
            proxy = urlsplit(self.http_proxy)
            if "://" not in self.http_proxy:
                yield "PIPELINE_HTTP_PROXY: no scheme: add http:// or https://"
            elif proxy.scheme not in ("http", "https") or not proxy.hostname:
                yield "PIPELINE_HTTP_PROXY: must be a URL such as http://proxy.example:3128"
            if self.http_client == "lean":
                yield (
                    "PIPELINE_HTTP_PROXY needs PIPELINE_HTTP_CLIENT=aiohttp (the lean client does"
                    " not speak to proxies)"
                )

    @property
    def oauth2_secret(self) -> str | None:
        """The OAuth2 client secret, from its variable or its file."""
        if self.oauth2_client_secret is not None:
            return self.oauth2_client_secret.get_secret_value()
        if self.oauth2_client_secret_file is not None:
            return self.oauth2_client_secret_file.read_text(encoding="utf-8").strip()
        return None


def expand_instance_id(template: str) -> str:
    """The group instance id ``template`` names on this host: ``{hostname}`` is replaced.

    The broker refuses an id with other characters, or longer, only at the join: checked here,
    the pod fails at once with the variable named instead.
    """
    value = template.replace("{hostname}", socket.gethostname())
    if "{" in value or "}" in value:
        msg = "the only placeholder is {hostname}"
        raise ValueError(msg)
    if not _INSTANCE_ID.fullmatch(value):
        msg = (
            f"{value!r} is not a group instance id: 1 to 249 characters, letters, digits, '.',"
            " '_' or '-'"
        )
        raise ValueError(msg)
    return value


def env_name(field: str) -> str:
    """The environment variable of a setting: ``kafka_topics`` is ``PIPELINE_KAFKA_TOPICS``."""
    return ENV_PREFIX + field.upper()


def load_settings(env_file: Path | None = Path(".env")) -> Settings:
    """Read the settings from the environment (and ``env_file`` when it exists), checked.

    Raises :class:`~pipeline.errors.ConfigError` listing every problem, one line each.
    """
    env_file = env_file if env_file is not None and env_file.is_file() else None
    from_file = _read_env_file(env_file)
    problems = list(_unknown_variables(os.environ, from_file))
    given = {name.upper() for name in (*os.environ, *from_file)}
    if not given & {"PIPELINE_SPACE_API_URL", "PIPELINE_SINK_FUNCTION"}:
        problems.append(NO_SINK)  # said here too: checks across settings need valid fields
    try:
        settings = Settings(_env_file=env_file)  # type: ignore[call-arg]
    except ValidationError as error:
        problems += describe_errors(error)
        problems += _conflicts_among_the_rest(error, env_file)
    except SettingsError as error:  # a value pydantic-settings could not even decode
        problems.append(f"{error}")
    else:
        if not problems:
            return settings
    raise ConfigError(list(dict.fromkeys(problems)))


# What a required setting that failed stands in with while the others are checked together.
_STAND_INS: dict[str, object] = {
    "kafka_bootstrap_servers": "stand-in:9092",
    "kafka_topics": ("stand-in",),
}


def _conflicts_among_the_rest(error: ValidationError, env_file: Path | None) -> list[str]:
    """The checks across settings, run on the settings that did parse.

    pydantic runs a model validator only when every field passed, so a bad integer would hide a
    missing dead-letter topic until the next run. The failed settings are loaded again with
    their defaults standing in; a conflict naming one of them is dropped, as it would be about a
    value the operator did not write.
    """
    failed = {str(e["loc"][0]) for e in error.errors() if e.get("loc")}
    stand_ins: dict[str, Any] = {}
    for name in failed:
        field = Settings.model_fields.get(name)
        if field is None:
            return []
        if field.is_required():
            if name not in _STAND_INS:
                return []
            stand_ins[name] = _STAND_INS[name]
        else:
            stand_ins[name] = field.get_default(call_default_factory=True)
    try:
        Settings(_env_file=env_file, **stand_ins)  # type: ignore[call-arg]
    except ValidationError as again:
        named = tuple(env_name(name) for name in failed)
        return [
            line
            for e in again.errors()
            if not e.get("loc")
            for line in e.get("msg", "").removeprefix("Value error, ").splitlines()
            if not any(name in line for name in named)
        ]
    except SettingsError:
        return []
    return []


def _read_env_file(path: Path | None) -> dict[str, str]:
    if path is None:
        return {}
    from dotenv import dotenv_values  # noqa: PLC0415 - pydantic-settings' own dependency

    return {k: v or "" for k, v in dotenv_values(path).items()}


def _unknown_variables(environ: Mapping[str, str], env_file: Mapping[str, str]) -> Iterator[str]:
    """``PIPELINE_*`` variables that name no setting, with the closest real name."""
    known = [env_name(field) for field in Settings.model_fields]
    for source, names in (("", environ), (" (in .env)", env_file)):
        for name in sorted(names):
            upper = name.upper()
            if not upper.startswith(ENV_PREFIX) or upper in known:
                continue
            close = difflib.get_close_matches(upper, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]}?)" if close else ""
            yield f"{name}{source}: unknown setting{hint}"


def describe_errors(error: ValidationError) -> list[str]:
    """One line per problem, naming the variable as the operator spells it, and saying why.

    The value is echoed so the operator sees what is wrong with it, unless it may be a secret;
    a URL is echoed with its password and secret query values masked.
    """
    lines = []
    for problem in error.errors():
        loc = [str(part) for part in problem.get("loc", ()) if isinstance(part, str)]
        message = problem.get("msg", "invalid").removeprefix("Value error, ")
        if not loc:  # checks across settings: each line names its variables
            lines += message.splitlines()
            continue
        name = env_name(loc[0])
        given = problem.get("input")
        if problem.get("type") == "missing":
            lines.append(f"{name}: required setting is not set")
        elif _secret_field(loc[0]):
            lines.append(f"{name}: {message}")
        else:
            shown = mask_url(given) if isinstance(given, str) else given
            lines.append(f"{name}: {message} (got {shown!r})")
    return lines


def _secret_field(field: str) -> bool:
    info = Settings.model_fields.get(field)
    secret = info is not None and SecretStr in (info.annotation, *get_args(info.annotation))
    return secret or field in MASKED_VALUES


def describe(settings: Settings) -> list[str]:
    """The effective configuration as ``PIPELINE_NAME=value`` lines, secrets masked.

    Settings left at their default say so, so an operator sees at once what was set.
    """
    lines = []
    explicit = settings.model_fields_set
    for field in Settings.model_fields:
        value = getattr(settings, field)
        if field in MASKED_VALUES and value:
            value = dict.fromkeys(value, MASK)
        note = "" if field in explicit else "  # default"
        lines.append(f"{env_name(field)}={as_text(value)}{note}")
    return lines


def redactor(settings: Settings) -> Redactor:
    """Masks every secret the settings hold, wherever it shows up (a log line, an echo)."""
    s = settings
    secrets: list[str | None] = [
        secret.get_secret_value()
        for secret in (
            s.space_api_token,
            s.kafka_sasl_password,
            s.kafka_ssl_keyfile_password,
            s.admin_token,
            s.schema_registry_password,
        )
        if secret is not None
    ]
    secrets.append(s.oauth2_secret)
    secrets += header_secrets(s.space_api_headers)
    secrets += [
        value
        for name, value in s.oauth2_extra_params.items()
        if secret_name(name) or len(value) >= EXTRA_PARAM_SECRET_CHARS
    ]
    for url in (s.space_api_url, s.oauth2_token_url, s.http_proxy, s.schema_registry_url):
        secrets += url_secrets(url) if url else []
    return Redactor.of(secrets)


def as_text(value: Any) -> str:  # noqa: ANN401 - any setting's type
    """A setting's value as its environment variable would spell it (secrets masked)."""
    if isinstance(value, SecretStr):
        value = MASK if value.get_secret_value() else None
    elif isinstance(value, str) and "://" in value:
        value = mask_url(value)
    elif isinstance(value, frozenset):
        ints = all(isinstance(item, int) for item in value)
        value = format_statuses(value) if ints else ",".join(sorted(map(str, value)))
    elif isinstance(value, tuple):
        value = ",".join(str(item) for item in value)
    elif isinstance(value, dict):
        value = json.dumps(value)
    return "" if value is None else str(value)
