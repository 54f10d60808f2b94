"""space-pipeline: Kafka partitions to the Space API, in order, without blocking the consumer."""

from __future__ import annotations

__version__ = "0.1.0"

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
from pipeline.retry import Backoff, parse_retry_after
from pipeline.sender import Clock, Delivery, OrderedSender, Receipt, SystemClock
from pipeline.space_api import SpaceApi, SpaceApiConfig
from pipeline.stage import Stage

__all__ = [
    "Backoff",
    "BrokerError",
    "Clock",
    "ConfigError",
    "Delivery",
    "LaneFullError",
    "LaneHaltedError",
    "OrderedSender",
    "PipelineError",
    "Receipt",
    "RejectedError",
    "RetryableSendError",
    "SendError",
    "SenderClosedError",
    "Settings",
    "SpaceApi",
    "SpaceApiConfig",
    "Stage",
    "SystemClock",
    "__version__",
    "parse_retry_after",
]
