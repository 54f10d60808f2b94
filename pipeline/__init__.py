"""space-pipeline: Kafka partitions to the Space API, in order, without blocking the consumer.

The public names load on first use: ``from pipeline import OrderedSender`` brings the sender and
nothing else, no Kafka client, no HTTP stack, no metric in the default Prometheus registry. A
library import should cost what its user uses.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

__version__ = "0.1.0"

if TYPE_CHECKING:  # what the type checker sees; at run time `__getattr__` imports on demand
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
        call_blocking,
    )
    from pipeline.sink import Sink
    from pipeline.stage import Stage

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
    "call_blocking",
    "is_retryable",
    "load_settings",
    "parse_retry_after",
]

# The module each public name comes from (tests/test_public_api.py keeps it in step with the
# imports above).
_SOURCES = {
    "pipeline.clock": ("Clock", "SystemClock"),
    "pipeline.config": ("Settings", "load_settings"),
    "pipeline.errors": (
        "AuthError",
        "BrokerError",
        "ConfigError",
        "InvalidRecordError",
        "LaneFullError",
        "LaneHaltedError",
        "PipelineError",
        "RejectedError",
        "RetryableSendError",
        "SendError",
        "SenderClosedError",
        "UnexpectedSendError",
    ),
    "pipeline.gate": ("ApiGate", "GateLimits"),
    "pipeline.http_client": ("AiohttpClient", "HttpClient", "HttpxClient", "Timeouts"),
    "pipeline.http_sink": ("HttpSink", "HttpSinkConfig"),
    "pipeline.policy": ("Classification",),
    "pipeline.records": ("Record",),
    "pipeline.retry": ("Backoff", "is_retryable", "parse_retry_after"),
    "pipeline.sender": (
        "BatchLimits",
        "Delivery",
        "Gate",
        "OrderedSender",
        "Receipt",
        "RetryPolicy",
        "call_blocking",
    ),
    "pipeline.sink": ("Sink",),
    "pipeline.stage": ("Stage",),
}
_MODULE_OF = {name: module for module, names in _SOURCES.items() for name in names}


if not TYPE_CHECKING:  # the type checker sees the imports above, and flags a misspelt name

    def __getattr__(name: str) -> object:
        module = _MODULE_OF.get(name)
        if module is None:
            msg = f"module {__name__!r} has no attribute {name!r}"
            raise AttributeError(msg)
        value = getattr(importlib.import_module(module), name)
        globals()[name] = value  # from now on an ordinary attribute
        return value


def __dir__() -> list[str]:
    return sorted({*__all__, *(name for name in globals() if name.startswith("__"))})
