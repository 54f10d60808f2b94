"""Logs on stdout: ours through structlog, aiokafka's and the sender's through the same renderer.

One line per event, with a short dotted event name and key/value context. JSON for machines (a
log pipeline filters on ``event`` and never parses prose), a readable console rendering for a
person at a terminal; ``auto`` picks by whether stdout is a terminal.

Every line passes a :class:`~pipeline.redaction.Redactor` before it is written: what an error,
an API's answer or a library says may hold a secret, and a log is read by many.
"""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import orjson
import structlog
from structlog.typing import EventDict, Processor, WrappedLogger

from pipeline.redaction import Redactor

LogFormat = Literal["json", "console", "auto"]


def _dumps(event: object, **_: object) -> str:
    return orjson.dumps(event, default=repr).decode()


class Redacting:
    """A processor that masks secrets in every text value of a log line."""

    def __init__(self, redact: Redactor) -> None:
        self._redact = redact

    def __call__(self, logger: WrappedLogger, method: str, event: EventDict) -> EventDict:
        """Mask each string value, and the strings of a list or dict value, in place."""
        redact = self._redact
        for name, value in event.items():
            if isinstance(value, str):
                event[name] = redact(value)
            elif isinstance(value, list | tuple | dict) and value:
                event[name] = _redacted(value, redact)
        return event


def _redacted(value: object, redact: Redactor) -> object:
    if isinstance(value, str):
        return redact(value)
    if isinstance(value, list | tuple):
        return [_redacted(item, redact) for item in value]
    if isinstance(value, dict):
        return {key: _redacted(item, redact) for key, item in value.items()}
    return value


def configure_logging(
    level: str = "INFO",
    log_format: LogFormat = "auto",
    stream: TextIO | None = None,
    redact: Redactor | None = None,
) -> None:
    """Send every log record to ``stream`` (stdout) as JSON lines or console lines.

    ``redact`` masks the secrets the settings hold; URL passwords and secret query values are
    masked without it too.
    """
    stream = stream or sys.stdout
    numeric = logging.getLevelNamesMapping()[level.upper()]
    console = log_format == "console" or (log_format == "auto" and stream.isatty())
    shared: list[Processor] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=not console),
    ]
    # A traceback becomes text before the redactor reads the line: the console renderer's own
    # (pretty) tracebacks would be drawn after it, secrets and all.
    tail: list[Processor] = [structlog.processors.format_exc_info]
    if console:
        ours: Processor = structlog.dev.ConsoleRenderer(
            colors=stream.isatty(), exception_formatter=structlog.dev.plain_traceback
        )
        foreign: Processor = ours
        factory: object = structlog.PrintLoggerFactory(stream)
    else:
        foreign = structlog.processors.JSONRenderer(serializer=_dumps)
        if hasattr(stream, "buffer"):  # bytes straight from orjson: no decode per line
            ours = structlog.processors.JSONRenderer(serializer=orjson.dumps)
            factory = structlog.BytesLoggerFactory(stream.buffer)
        else:
            ours, factory = foreign, structlog.PrintLoggerFactory(stream)
    tail.append(Redacting(redact or Redactor()))
    structlog.configure(
        processors=[*shared, *tail, ours],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=factory,  # type: ignore[arg-type]
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=[*shared, structlog.stdlib.add_logger_name],
            processors=[
                structlog.stdlib.ProcessorFormatter.remove_processors_meta,
                *tail,
                foreign,
            ],
        )
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(numeric)
    # aiokafka narrates every group join at INFO: keep its warnings.
    logging.getLogger("aiokafka").setLevel(max(numeric, logging.WARNING))
