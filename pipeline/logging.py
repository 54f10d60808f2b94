"""JSON logs on stdout: ours through structlog, aiokafka's and httpx's through the same renderer.

One line per event, with a short dotted event name and key/value context, so a log pipeline can
filter on ``event`` and never has to parse prose.
"""

from __future__ import annotations

import logging
import sys

import orjson
import structlog
from structlog.typing import Processor


def _dumps(event: object, **_: object) -> str:
    return orjson.dumps(event, default=repr).decode()


def configure_logging(level: str = "INFO") -> None:
    """Send every log record to stdout as one JSON object per line."""
    numeric = logging.getLevelNamesMapping()[level.upper()]
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
    ]
    renderer = structlog.processors.JSONRenderer(serializer=orjson.dumps)
    structlog.configure(
        processors=[
            *shared,
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.BytesLoggerFactory(sys.stdout.buffer),
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                structlog.processors.format_exc_info,
                structlog.processors.JSONRenderer(serializer=_dumps),
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiokafka narrates every group join and httpx every request at INFO: keep their warnings.
    for chatty in ("aiokafka", "httpx"):
        logging.getLogger(chatty).setLevel(max(numeric, logging.WARNING))
