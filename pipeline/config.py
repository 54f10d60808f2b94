"""Settings for ``space-pipeline run``, read once from ``PIPELINE_*`` environment variables.

Everything is validated at start, so a typo fails the pod at once with one line naming the setting
(see :func:`describe_error`), rather than hours later in the middle of a rebalance.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    AnyHttpUrl,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

ENV_PREFIX = "PIPELINE_"

# Values of these settings may hold credentials: an error names the setting, never echoes it.
SENSITIVE = ("password", "token", "headers")

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
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = "PLAINTEXT"
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = None
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = None
    kafka_ssl_cafile: Path | None = None
    kafka_ssl_certfile: Path | None = None
    kafka_ssl_keyfile: Path | None = None
    kafka_ssl_keyfile_password: SecretStr | None = None

    # The Space API
    space_api_url: AnyHttpUrl
    space_api_content_type: str = "application/json"
    space_api_token: SecretStr | None = None
    space_api_headers: Annotated[dict[str, str], NoDecode] = Field(default_factory=dict)
    space_api_timeout_s: PositiveFloat = 10.0
    space_api_connect_timeout_s: PositiveFloat = 5.0

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
    shutdown_timeout_s: PositiveFloat = 20.0
    stall_timeout_s: PositiveFloat = 300.0
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = "INFO"

    @field_validator("kafka_topics", mode="before")
    @classmethod
    def _split_topics(cls, value: object) -> object:
        if isinstance(value, str):
            value = tuple(t.strip() for t in value.split(",") if t.strip())
        if not value:
            msg = "must name at least one topic (comma-separated)"
            raise ValueError(msg)
        return value

    @field_validator("space_api_headers", mode="before")
    @classmethod
    def _parse_headers(cls, value: object) -> object:
        if isinstance(value, str):
            try:
                return json.loads(value) if value.strip() else {}
            except json.JSONDecodeError as error:
                msg = f'must be a JSON object such as {{"X-Tenant": "a"}} ({error.msg})'
                raise ValueError(msg) from None
        return value

    @field_validator("log_level", mode="before")
    @classmethod
    def _upper_level(cls, value: object) -> object:
        return value.upper() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _check_combinations(self) -> Settings:
        revoke_ms = self.rebalance_drain_timeout_ms + self.commit_timeout_ms + REVOKE_MARGIN_MS
        if revoke_ms > self.kafka_rebalance_timeout_ms:
            msg = (
                f"PIPELINE_REBALANCE_DRAIN_TIMEOUT_MS ({self.rebalance_drain_timeout_ms}) + "
                f"PIPELINE_COMMIT_TIMEOUT_MS ({self.commit_timeout_ms}) + {REVOKE_MARGIN_MS} ms "
                "must not exceed PIPELINE_KAFKA_REBALANCE_TIMEOUT_MS "
                f"({self.kafka_rebalance_timeout_ms}): a revoke drains, then commits, and the "
                "group evicts a member that takes longer"
            )
            raise ValueError(msg)
        if self.kafka_heartbeat_interval_ms * 3 > self.kafka_session_timeout_ms:
            msg = (
                "PIPELINE_KAFKA_HEARTBEAT_INTERVAL_MS must be at most a third of "
                "PIPELINE_KAFKA_SESSION_TIMEOUT_MS, or one late heartbeat evicts this member"
            )
            raise ValueError(msg)
        if self.kafka_security_protocol.startswith("SASL_") and not (
            self.kafka_sasl_mechanism and self.kafka_sasl_username and self.kafka_sasl_password
        ):
            msg = (
                "kafka_security_protocol SASL_* needs kafka_sasl_mechanism, "
                "kafka_sasl_username and kafka_sasl_password"
            )
            raise ValueError(msg)
        if bool(self.kafka_ssl_certfile) != bool(self.kafka_ssl_keyfile):
            msg = "kafka_ssl_certfile and kafka_ssl_keyfile go together (client certificate)"
            raise ValueError(msg)
        for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
            path = getattr(self, name)
            if path is not None and not path.is_file():
                msg = f"{name}: no such file: {path}"
                raise ValueError(msg)
        return self


def describe_error(error: ValidationError) -> str:
    """Name the first offending setting as the operator spells it, and say why, on one line."""
    first = error.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if isinstance(part, str)]
    message = first.get("msg", "invalid").removeprefix("Value error, ")
    if loc:
        name = ENV_PREFIX + loc[0].upper()
        if first.get("type") == "missing":
            return f"{name}: required setting is not set"
        if any(word in loc[0] for word in SENSITIVE):
            return f"{name}: {message}"
        return f"{name}: {message} (got {first.get('input')!r})"
    # A check across settings: the message names them.
    if message.startswith(ENV_PREFIX):
        return message
    setting, sep, rest = message.partition(" ")
    if sep and setting.islower():
        return f"{ENV_PREFIX}{setting.rstrip(':').upper()}: {rest}"
    return message
