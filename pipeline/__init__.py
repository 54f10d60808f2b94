"""space-pipeline: Kafka partitions to the Space API, in order, without blocking the consumer."""

from __future__ import annotations

import typing as _typing

__version__ = "0.1.0"

if _typing.TYPE_CHECKING:
    from pipeline.clock import Clock, SystemClock
    from pipeline.config import Settings, load_settings
    from pipeline.errors import (
        AuthError,
        BrokerError,
        ConfigError,
        InvalidRecordError,
        LaneFullError,
        LaneHaltedError,
        PipelineError,
        RejectedError,
        RetryableSendError,
        SenderClosedError,
        SendError,
        UnexpectedSendError,
    )
    from pipeline.gate import ApiGate, GateLimits
    from pipeline.http_client import AiohttpClient, HttpClient, HttpxClient, Timeouts
    from pipeline.http_sink import HttpSink, HttpSinkConfig
    from pipeline.policy import Classification
    from pipeline.records import Record
    from pipeline.retry import Backoff, is_retryable, parse_retry_after
    from pipeline.sender import (
        BatchLimits,
        Delivery,
        Gate,
        OrderedSender,
        Receipt,
        RetryPolicy,
    )
    from pipeline.sink import Sink
    from pipeline.stage import Stage

# Where each public name lives. They load on first use (PEP 562): reading the settings must not
# load the HTTP and Kafka clients they configure (see :mod:`pipeline.checks`).
_HOMES = {
    "Clock": "pipeline.clock",
    "SystemClock": "pipeline.clock",
    "Settings": "pipeline.config",
    "load_settings": "pipeline.config",
    "AuthError": "pipeline.errors",
    "BrokerError": "pipeline.errors",
    "ConfigError": "pipeline.errors",
    "InvalidRecordError": "pipeline.errors",
    "LaneFullError": "pipeline.errors",
    "LaneHaltedError": "pipeline.errors",
    "PipelineError": "pipeline.errors",
    "RejectedError": "pipeline.errors",
    "RetryableSendError": "pipeline.errors",
    "SenderClosedError": "pipeline.errors",
    "SendError": "pipeline.errors",
    "UnexpectedSendError": "pipeline.errors",
    "ApiGate": "pipeline.gate",
    "GateLimits": "pipeline.gate",
    "AiohttpClient": "pipeline.http_client",
    "HttpClient": "pipeline.http_client",
    "HttpxClient": "pipeline.http_client",
    "Timeouts": "pipeline.http_client",
    "HttpSink": "pipeline.http_sink",
    "HttpSinkConfig": "pipeline.http_sink",
    "Classification": "pipeline.policy",
    "Record": "pipeline.records",
    "Backoff": "pipeline.retry",
    "is_retryable": "pipeline.retry",
    "parse_retry_after": "pipeline.retry",
    "BatchLimits": "pipeline.sender",
    "Delivery": "pipeline.sender",
    "Gate": "pipeline.sender",
    "OrderedSender": "pipeline.sender",
    "Receipt": "pipeline.sender",
    "RetryPolicy": "pipeline.sender",
    "Sink": "pipeline.sink",
    "Stage": "pipeline.stage",
}


def __getattr__(name: str) -> object:
    import importlib  # noqa: PLC0415 - kept out of the package's namespace

    home = _HOMES.get(name)
    if home is None:
        msg = f"module 'pipeline' has no attribute {name!r}"
        raise AttributeError(msg)
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted({*globals(), *_HOMES})


__all__ = [
    "AiohttpClient",
    "ApiGate",
    "AuthError",
    "Backoff",
    "BatchLimits",
    "BrokerError",
    "Classification",
    "Clock",
    "ConfigError",
    "Delivery",
    "Gate",
    "GateLimits",
    "HttpClient",
    "HttpSink",
    "HttpSinkConfig",
    "HttpxClient",
    "InvalidRecordError",
    "LaneFullError",
    "LaneHaltedError",
    "OrderedSender",
    "PipelineError",
    "Receipt",
    "Record",
    "RejectedError",
    "RetryPolicy",
    "RetryableSendError",
    "SendError",
    "SenderClosedError",
    "Settings",
    "Sink",
    "Stage",
    "SystemClock",
    "Timeouts",
    "UnexpectedSendError",
    "__version__",
    "is_retryable",
    "load_settings",
    "parse_retry_after",
]
