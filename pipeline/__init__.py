"""space-pipeline: Kafka partitions to the Space API, in order, without blocking the consumer."""

from __future__ import annotations

__version__ = "0.1.0"

from pipeline.clock import Clock, SystemClock
from pipeline.config import Settings
from pipeline.errors import (
    BrokerError,
    ConfigError,
    LaneFullError,
    LaneHaltedError,
    PipelineError,
    RejectedError,
    RetryableSendError,
    SenderClosedError,
    SendError,
)
from pipeline.retry import Backoff, is_retryable, parse_retry_after
from pipeline.sender import (
    BatchLimits,
    Delivery,
    Gate,
    OrderedSender,
    Receipt,
    RetryPolicy,
)
from pipeline.space_api import SpaceApi, SpaceApiConfig
from pipeline.stage import Stage

__all__ = [
    "Backoff",
    "BatchLimits",
    "BrokerError",
    "Clock",
    "ConfigError",
    "Delivery",
    "Gate",
    "LaneFullError",
    "LaneHaltedError",
    "OrderedSender",
    "PipelineError",
    "Receipt",
    "RejectedError",
    "RetryPolicy",
    "RetryableSendError",
    "SendError",
    "SenderClosedError",
    "Settings",
    "SpaceApi",
    "SpaceApiConfig",
    "Stage",
    "SystemClock",
    "__version__",
    "is_retryable",
    "parse_retry_after",
]
