"""The Kafka side: an aiokafka consumer configured for commit-after-delivery.

Auto-commit is off (aiokafka would commit the fetch position, i.e. records not yet delivered), new
groups start from the earliest record unless told otherwise, and rebalance callbacks are forwarded
to the stage, which drains and commits before partitions move.
"""

from __future__ import annotations

import ssl
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.helpers import create_ssl_context

from pipeline.config import Settings

PartitionsCallback = Callable[[frozenset[TopicPartition]], Awaitable[None]]


class RebalanceBridge(ConsumerRebalanceListener):  # type: ignore[misc]
    """Hand aiokafka's rebalance callbacks to the stage; aiokafka awaits them."""

    def __init__(self, *, revoked: PartitionsCallback, assigned: PartitionsCallback) -> None:
        self._revoked = revoked
        self._assigned = assigned

    async def on_partitions_revoked(self, revoked: Any) -> None:  # noqa: ANN401 - aiokafka's type
        """Drain and commit the revoked partitions before the group hands them on."""
        await self._revoked(frozenset(revoked))

    async def on_partitions_assigned(self, assigned: Any) -> None:  # noqa: ANN401
        """Start tracking the newly assigned partitions."""
        await self._assigned(frozenset(assigned))


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """Build the TLS context for SSL and SASL_SSL, from the CA and optional client certificate."""
    if not settings.kafka_security_protocol.endswith("SSL"):
        return None
    password = settings.kafka_ssl_keyfile_password
    context: ssl.SSLContext = create_ssl_context(
        cafile=str(settings.kafka_ssl_cafile) if settings.kafka_ssl_cafile else None,
        certfile=str(settings.kafka_ssl_certfile) if settings.kafka_ssl_certfile else None,
        keyfile=str(settings.kafka_ssl_keyfile) if settings.kafka_ssl_keyfile else None,
        password=password.get_secret_value() if password else None,
    )
    return context


def build_consumer(settings: Settings) -> AIOKafkaConsumer:
    """An unstarted consumer for the configured topics, with security settings passed through."""
    password = settings.kafka_sasl_password
    return AIOKafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap_servers,
        group_id=settings.kafka_group_id,
        client_id=settings.kafka_client_id,
        enable_auto_commit=False,
        auto_offset_reset=settings.kafka_auto_offset_reset,
        session_timeout_ms=settings.kafka_session_timeout_ms,
        rebalance_timeout_ms=settings.kafka_rebalance_timeout_ms,
        max_poll_records=settings.kafka_max_poll_records,
        security_protocol=settings.kafka_security_protocol,
        sasl_mechanism=settings.kafka_sasl_mechanism or "PLAIN",
        sasl_plain_username=settings.kafka_sasl_username,
        sasl_plain_password=password.get_secret_value() if password else None,
        ssl_context=ssl_context(settings),
    )
