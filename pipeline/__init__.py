"""space-pipeline: Kafka partitions to the Space API, in order, without blocking the consumer."""

from __future__ import annotations

__version__ = "0.1.0"

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
