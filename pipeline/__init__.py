"""space-pipeline: Kafka partitions to the Space API, in order, without blocking the consumer."""

from __future__ import annotations

__version__ = "0.1.0"
