"""Sinks: where records go. The HTTP sink by default; a user's own function when configured.

A sink has one job: take a record (or, when batching, a list of consecutive records of one lane)
and return once the far side accepted it, or raise a :class:`~pipeline.errors.SendError` saying
whether to retry, to wait out an outage, or to give the record up. Order, retries, the gate and the
rules live around it, so every sink gets them the same way.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Protocol
from urllib.parse import urlsplit
from urllib.request import proxy_bypass_environment  # type: ignore[attr-defined]

import structlog

from pipeline.checks import import_exceptions, import_function
from pipeline.config import Settings
from pipeline.function_sink import FunctionSink
from pipeline.http11 import LeanClient
from pipeline.http_client import AiohttpClient, HttpClient, Timeouts
from pipeline.http_sink import HttpSink, HttpSinkConfig
from pipeline.oauth2 import ClientCredentials, TokenSource
from pipeline.policy import Classification
from pipeline.records import KafkaRecord
from pipeline.tls import ssl_context

log = structlog.get_logger("pipeline.sink")


class Sink(Protocol):
    """Delivers a record, or a batch of them, and says how it went by returning or raising."""

    async def send(self, payload: KafkaRecord | Sequence[KafkaRecord]) -> None:
        """Return on acceptance; raise a SendError (or any exception) otherwise."""
        ...


def batched(settings: Settings) -> bool:
    """Whether records go in batches (``PIPELINE_BATCH_MAX_RECORDS`` above 1)."""
    return settings.batch_max_records > 1


def http_sink_config(settings: Settings) -> HttpSinkConfig:
    """The HTTP sink's configuration from the settings."""
    s = settings
    assert s.space_api_url is not None  # noqa: S101 - checked by the settings
    return HttpSinkConfig(
        url=s.space_api_url,
        method=s.space_api_method,
        content_type=s.space_api_content_type,
        token=s.space_api_token.get_secret_value() if s.space_api_token else None,
        headers=s.space_api_headers,
        forward_headers=s.forward_headers,
        tombstones=s.tombstones,
        batch_format=s.batch_format if batched(s) else None,
        classification=Classification(retry=s.retry_statuses, auth=s.auth_statuses),
        compression=s.space_api_compression,
    )


def build_sink(settings: Settings) -> HttpSink | FunctionSink:
    """The sink the settings ask for, to be entered as an async context manager."""
    s = settings
    if s.sink_function is not None:
        return FunctionSink(
            import_function(s.sink_function),
            s.sink_argument,
            reject=import_exceptions(s.sink_reject_exceptions),
            batched=batched(s),
        )
    timeouts = Timeouts(connect=s.space_api_connect_timeout_s, read=s.space_api_timeout_s)
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
    auth = None
    if s.oauth2_token_url is not None and s.oauth2_client_id is not None:
        credentials = ClientCredentials(
            s.oauth2_token_url,
            s.oauth2_client_id,
            s.oauth2_secret or "",
            s.oauth2_scope,
            s.oauth2_extra_params,
        )
        auth = TokenSource(credentials, client)
    return HttpSink(http_sink_config(s), client, auth=auth)


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
