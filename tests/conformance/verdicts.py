"""What each send through the sink came to, in the words the cases are written in.

``delivered``, ``rejected 422``, ``retried 503`` (an answer to try again later), ``retried
connection`` or ``retried timeout`` (no answer at all), ``outage config`` or ``outage auth``.
"""

from __future__ import annotations

from collections.abc import Callable

from pipeline.errors import RejectedError
from pipeline.http_sink import HttpSink
from tests.fakes import Record

# ``sink_to(url, read=..., **HttpSinkConfig options)``, the fixture every case sends through.
SinkTo = Callable[..., HttpSink]


def record(offset: int, answer: int | None = None) -> Record:
    """Record ``orders/3/<offset>``; ``answer`` asks the real servers for that status."""
    headers = () if answer is None else (("x-answer", b"%d" % answer),)
    return Record(offset=offset, headers=headers)


def key(offset: int) -> str:
    return f"orders/3/{offset}"


async def attempt(sink: HttpSink, offset: int, answer: int | None = None) -> Exception | None:
    """Send one record; the error it raised, or ``None`` when it was delivered."""
    try:
        await sink.send(record(offset, answer))
    except Exception as error:
        return error
    return None


def verdict(error: Exception | None) -> str:
    """What the pipeline makes of a send, in the words of the cases."""
    if error is None:
        return "delivered"
    outage = getattr(error, "outage", None)
    if outage is not None:
        return f"outage {outage}"
    status = getattr(error, "status", None)
    if isinstance(error, RejectedError) and not error.retryable:
        return f"rejected {status}"
    if getattr(error, "retryable", False):
        return f"retried {status or getattr(error, 'reason', '?')}"
    return f"crashed: {error!r}"


async def verdicts(sink: HttpSink, *offsets: int) -> list[str]:
    """The verdicts of sending ``offsets`` one after the other on one sink."""
    return [verdict(await attempt(sink, offset)) for offset in offsets]
