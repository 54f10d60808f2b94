"""The stage's parts, built once from the settings; the stage runs them.

Two things live here, after uvicorn's ``Config.load()`` kept apart from its ``Server``:

* the *translations*, each setting becoming the typed value of the part it configures
  (:class:`~pipeline.gate.GateLimits`, :class:`~pipeline.retry.Backoff`, the consumer's
  :class:`~pipeline.consumer.KafkaOptions`, ...). The parts never see :class:`Settings`: a new
  setting touches its field, its check and one function here.
* :func:`wire`, which builds every part, connected, and returns them in one frozen
  :class:`Parts`. Building opens nothing: the stage enters what must be entered, in order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import structlog
from pydantic import SecretStr

from pipeline.admin import AdminApi, AdminPort
from pipeline.checks import import_exceptions, import_function
from pipeline.clock import Clock, SystemClock
from pipeline.commit import Commits
from pipeline.config import Settings, env_name, redactor
from pipeline.consumer import (
    ConsumerFactory,
    KafkaOptions,
    KafkaSecurity,
    KafkaSource,
    RebalanceListener,
    build_consumer,
)
from pipeline.dead_letter import DeadLetterOptions, DeadLetters
from pipeline.formats import JsonValues, SchemaJsonValues, ValueFormat
from pipeline.function_sink import FunctionSink
from pipeline.gate import ApiGate, GateLimits
from pipeline.health import OpsServer, Verdict
from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, HttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.oauth2 import ClientCredentials, TokenSource
from pipeline.partition import FlowLimits, Partitions
from pipeline.policy import Classification, Expiry, RejectRules, Rules, Skips
from pipeline.records import KafkaRecord
from pipeline.results import ResultingSink, ResultOptions, Results
from pipeline.retry import Backoff
from pipeline.sender import BatchLimits, Lane, OrderedSender, Receipt
from pipeline.shaping import BodyExpression
from pipeline.tls import ssl_context

if TYPE_CHECKING:  # imported only for Avro values: fastavro adds ~40 ms to every start
    from pipeline.schema_registry import SchemaRegistry

log = structlog.get_logger("pipeline.wiring")

# How long leaving the group may take when the source is left without an explicit close: the
# shutdown closes it within its own budget; this bounds every other way out.
LEAVE_SHARE = 1 / 4


# Translations: settings to the typed values of the parts


def batched(settings: Settings) -> bool:
    """Whether records go in batches (``PIPELINE_BATCH_MAX_RECORDS`` above 1)."""
    return settings.batch_max_records > 1


def _revealed(secret: SecretStr | None) -> str | None:
    """A secret setting's value, for the one part that must send it; an empty one is none."""
    return secret.get_secret_value() if secret else None


def kafka_security(settings: Settings) -> KafkaSecurity:
    """How every Kafka client of the stage authenticates."""
    s = settings
    return KafkaSecurity(
        protocol=s.kafka_security_protocol,
        sasl_mechanism=s.kafka_sasl_mechanism,
        sasl_username=s.kafka_sasl_username,
        sasl_password=_revealed(s.kafka_sasl_password),
        ssl_cafile=s.kafka_ssl_cafile,
        ssl_certfile=s.kafka_ssl_certfile,
        ssl_keyfile=s.kafka_ssl_keyfile,
        ssl_keyfile_password=_revealed(s.kafka_ssl_keyfile_password),
    )


def kafka_options(settings: Settings) -> KafkaOptions:
    """The consumer's configuration."""
    s = settings
    return KafkaOptions(
        bootstrap_servers=s.kafka_bootstrap_servers,
        topics=s.kafka_topics,
        group_id=s.kafka_group_id,
        client_id=s.kafka_client_id,
        auto_offset_reset=s.kafka_auto_offset_reset,
        isolation_level=s.kafka_isolation_level,
        session_timeout_ms=s.kafka_session_timeout_ms,
        heartbeat_interval_ms=s.kafka_heartbeat_interval_ms,
        rebalance_timeout_ms=s.kafka_rebalance_timeout_ms,
        max_poll_records=s.kafka_max_poll_records,
        fetch_max_bytes=s.kafka_fetch_max_bytes,
        max_partition_fetch_bytes=s.kafka_max_partition_fetch_bytes,
        fetch_max_wait_ms=s.kafka_fetch_max_wait_ms,
        fetch_min_bytes=s.kafka_fetch_min_bytes,
        security=kafka_security(s),
        group_instance_id=s.kafka_group_instance_id,
        startup_timeout_s=s.kafka_startup_timeout_s,
        leave_timeout_s=s.shutdown_timeout_s * LEAVE_SHARE,
    )


def dead_letter_options(settings: Settings) -> DeadLetterOptions | None:
    """The dead-letter producer's configuration; ``None`` without a dead-letter topic."""
    s = settings
    if s.dead_letter_topic is None:
        return None
    return DeadLetterOptions(
        topic=s.dead_letter_topic,
        bootstrap_servers=s.kafka_bootstrap_servers,
        client_id=f"{s.kafka_client_id}-dead-letters",
        idempotence=s.dead_letter_idempotence,
        security=kafka_security(s),
        max_backoff_s=s.retry_max_backoff_s,
    )


def result_options(settings: Settings) -> ResultOptions | None:
    """The result producer's configuration; ``None`` without a result topic."""
    s = settings
    if s.result_topic is None:
        return None
    return ResultOptions(
        topic=s.result_topic,
        bootstrap_servers=s.kafka_bootstrap_servers,
        client_id=f"{s.kafka_client_id}-results",
        idempotence=s.result_idempotence,
        security=kafka_security(s),
        max_backoff_s=s.retry_max_backoff_s,
        max_bytes=s.result_max_bytes,
    )


def result_max_bytes(settings: Settings) -> int | None:
    """How much of an answer a sink keeps; ``None`` (nothing) without a result topic."""
    return settings.result_max_bytes if settings.result_topic is not None else None


def gate_limits(settings: Settings) -> GateLimits:
    """The shared gate's circuit breaker and rate limit."""
    s = settings
    return GateLimits(
        circuit_failures=s.circuit_failures,
        open_initial=min(1.0, s.retry_max_backoff_s),
        open_max=s.retry_max_backoff_s,
        rate_per_s=s.rate_limit_per_s,
        burst=s.rate_limit_burst,
        retry_after_max=s.retry_after_max_s,
    )


def backoff(settings: Settings) -> Backoff:
    """The retry policy of every lane."""
    s = settings
    return Backoff(
        initial=s.retry_initial_backoff_s,
        maximum=s.retry_max_backoff_s,
        retry_after_max=s.retry_after_max_s,
    )


def batch_limits(settings: Settings) -> BatchLimits | None:
    """How a lane batches; ``None`` when records go one per request."""
    s = settings
    if not batched(s):
        return None
    return BatchLimits(s.batch_max_records, s.batch_max_bytes, s.batch_linger_ms / 1000)


def flow_limits(settings: Settings) -> FlowLimits:
    """How much a partition holds before it is paused."""
    return FlowLimits(settings.partition_buffer_records, settings.partition_buffer_bytes)


def reject_rules(settings: Settings) -> RejectRules:
    """What a rejection leads to."""
    return RejectRules(settings.on_reject, settings.dead_letter_max_per_minute)


def expiry(
    settings: Settings, dead_letters: DeadLetters | None, clock: Clock | None = None
) -> Expiry | None:
    """Records too old to send, and where they go; ``None`` without an age limit.

    ``clock`` paces the log summary only: age is wall time, against Kafka's timestamps.
    """
    if settings.max_record_age_s is None:
        return None
    return Expiry(settings.max_record_age_s, dead_letters, clock=clock)


def http_timeouts(settings: Settings) -> Timeouts:
    """How long the HTTP client waits to connect and for an answer."""
    return Timeouts(connect=settings.space_api_connect_timeout_s, read=settings.space_api_timeout_s)


def http_sink_config(settings: Settings) -> HttpSinkConfig:
    """The HTTP sink's configuration."""
    s = settings
    assert s.space_api_url is not None  # noqa: S101 - checked by the settings
    return HttpSinkConfig(
        url=s.space_api_url,
        method=s.space_api_method,
        content_type=s.space_api_content_type,
        token=_revealed(s.space_api_token),
        headers=s.space_api_headers,
        forward_headers=s.forward_headers,
        tombstones=s.tombstones,
        batch_format=s.batch_format if batched(s) else None,
        classification=Classification(retry=s.retry_statuses, auth=s.auth_statuses),
        compression=s.space_api_compression,
        result_max_bytes=result_max_bytes(s),
    )


def body_expression(settings: Settings) -> BodyExpression | None:
    """What each request's body is, when not the value as it is (checked by the settings)."""
    source = settings.space_api_body
    return BodyExpression(source) if source is not None else None


def client_credentials(settings: Settings) -> ClientCredentials | None:
    """OAuth2 client credentials, when configured."""
    s = settings
    if s.oauth2_token_url is None or s.oauth2_client_id is None:
        return None
    return ClientCredentials(
        s.oauth2_token_url,
        s.oauth2_client_id,
        s.oauth2_secret or "",
        s.oauth2_scope,
        s.oauth2_extra_params,
    )


# Building


def build_registry(settings: Settings) -> SchemaRegistry | None:
    """The schema registry Avro values are decoded with; ``None`` unless they are Avro."""
    s = settings
    if s.value_format != "avro":
        return None
    from pipeline.schema_registry import REGISTRY_TIMEOUTS, SchemaRegistry  # noqa: PLC0415

    assert s.schema_registry_url is not None  # noqa: S101 - checked by the settings
    context = ssl_context(s.schema_registry_ca_file)
    return SchemaRegistry(
        s.schema_registry_url,
        LeanClient(REGISTRY_TIMEOUTS, max_connections=2, ssl_context=context),
        username=s.schema_registry_username,
        password=_revealed(s.schema_registry_password),
    )


def value_format(settings: Settings, registry: SchemaRegistry | None) -> ValueFormat | None:
    """How values are decoded before they are sent or shaped.

    ``None`` sends their bytes as they are; a body expression or a ``{value...}`` placeholder
    then parses them as JSON itself (the sink's default decoder).
    """
    if settings.value_format == "json":
        return JsonValues()
    if settings.value_format == "json-schema":
        return SchemaJsonValues()
    if settings.value_format == "avro":
        from pipeline.avro import AvroValues  # noqa: PLC0415 - only for Avro values

        assert registry is not None  # noqa: S101 - built for this format
        return AvroValues(registry)
    return None


def build_sink(
    settings: Settings, clock: Clock | None = None, values: ValueFormat | None = None
) -> HttpSink | FunctionSink:
    """The sink the settings ask for, to be entered as an async context manager.

    ``values`` decodes each value first: the HTTP sink sends it as JSON, a function gets it as
    its ``json`` argument.
    """
    s = settings
    if s.sink_function is not None:
        return FunctionSink(
            import_function(s.sink_function),
            s.sink_argument,
            reject=import_exceptions(s.sink_reject_exceptions),
            batched=batched(s),
            result_max_bytes=result_max_bytes(s),
            values=values,
        )
    timeouts = http_timeouts(s)
    context = ssl_context(
        s.space_api_ca_file, s.space_api_client_cert_file, s.space_api_client_key_file
    )
    client: HttpClient
    if s.http_client == "lean":
        _warn_if_proxied(s.space_api_url or "")
        client = LeanClient(timeouts, max_connections=s.max_in_flight + 1, ssl_context=context)
    else:
        client = AiohttpClient(
            timeouts, s.max_in_flight + 1, ssl_context=context, proxy=s.http_proxy
        )
    credentials = client_credentials(s)
    auth = TokenSource(credentials, client, clock=clock) if credentials is not None else None
    return HttpSink(http_sink_config(s), client, auth=auth, values=values, body=body_expression(s))


def _warn_if_proxied(url: str) -> None:
    """The lean client goes straight to the API: say so when the environment names a proxy."""
    host = urlsplit(url).hostname or ""
    for name, value in os.environ.items():
        if name.lower() in ("https_proxy", "http_proxy") and value:
            if not proxy_bypass_environment(host):
                log.warning(
                    "http.proxy_ignored",
                    variable=name,
                    hint="the lean client does not speak to proxies: set"
                    " PIPELINE_HTTP_CLIENT=aiohttp to go through it",
                )
            return


class StageHooks(RebalanceListener, AdminPort, Protocol):
    """What the parts call back into the stage for (the admin API's calls among them)."""

    def live(self) -> Verdict:
        """``/healthz``."""
        ...

    def ready(self) -> Verdict:
        """``/readyz``."""
        ...

    def on_retry(
        self, record: KafkaRecord, lane: Lane, error: BaseException, attempt: int, delay: float
    ) -> None:
        """A record's attempt failed and will be retried after ``delay`` seconds."""
        ...

    def spawn(self, work: Coroutine[Any, Any, None]) -> None:
        """Run side work (a skipped record's dead letter) in the stage's task group."""
        ...


@dataclass(frozen=True, slots=True)
class Parts:
    """Every part of a stage, built and connected; what must be entered is not entered yet.

    ``dead_letters`` is ``None`` when no dead-letter topic is configured, ``results`` when no
    result topic is, ``registry`` when values are not Avro: that is a setting, not a part missing.
    """

    dead_letters: DeadLetters | None
    results: Results | None
    registry: SchemaRegistry | None
    sink: HttpSink | FunctionSink
    gate: ApiGate
    source: KafkaSource
    commits: Commits
    partitions: Partitions
    sender: OrderedSender[KafkaRecord]
    ops: OpsServer


def wire(
    settings: Settings,
    stage: StageHooks,
    *,
    source: ConsumerFactory = build_consumer,
    clock: Clock | None = None,
) -> Parts:
    """Build every part of the stage from the settings, connected to each other and to ``stage``.

    ``source`` builds the unstarted Kafka consumer (tests pass their own subclass of it, as one
    passes httpx a ``transport=``). ``clock`` is the one clock every timed part reads: the
    sender, the gate, the rules and the token source.

    The Kafka clients come last, the consumer first: an aiokafka client must be closed once
    built, and what can fail to build (the sink's import, a TLS context) fails before any is.
    """
    s = settings
    clock = clock or SystemClock()
    registry = build_registry(s)
    sink = build_sink(s, clock, value_format(s, registry))
    gate = ApiGate(gate_limits(s), clock=clock)
    kafka = KafkaSource(kafka_options(s), stage, consumer=source)
    options = dead_letter_options(s)
    dead_letters = DeadLetters(options, redact=redactor(s)) if options is not None else None
    answers = result_options(s)
    results = Results(answers) if answers is not None else None
    rules = Rules(
        sink.send if results is None else ResultingSink(sink, results).send,
        reject_rules(s),
        dead_letters,
        batched=batched(s),
        clock=clock,
        expiry=expiry(s, dead_letters, clock),
    )

    def build_sender(
        on_done: Callable[[Receipt[KafkaRecord]], None],
    ) -> OrderedSender[KafkaRecord]:
        return OrderedSender(
            rules,
            max_in_flight=s.max_in_flight,
            lane_capacity=s.partition_buffer_records,
            lane_bytes=s.partition_buffer_bytes,
            backoff=backoff(s),
            batch=batch_limits(s),
            gate=gate,
            halt_on_rejection=True,
            on_retry=stage.on_retry,
            on_done=on_done,
            retry_log_interval=None,  # the stage logs retries itself, per partition
            clock=clock,
        )

    partitions = Partitions(
        flow_limits(s),
        s.ordering,
        kafka,
        sender=build_sender,
        spawn=stage.spawn,
        skips=Skips(s.skip_records, dead_letters),
    )
    admin_token = _revealed(s.admin_token)
    return Parts(
        dead_letters=dead_letters,
        results=results,
        registry=registry,
        sink=sink,
        gate=gate,
        source=kafka,
        commits=Commits(kafka, kafka.position),
        partitions=partitions,
        sender=partitions.sender,
        ops=OpsServer(
            s.metrics_host,
            s.metrics_port,
            live=stage.live,
            ready=stage.ready,
            admin=AdminApi(stage, admin_token) if admin_token else None,
            settings=(env_name("metrics_host"), env_name("metrics_port")),
        ),
    )
