"""Every exception space-pipeline raises, under one base.

::

    PipelineError
    ├── ConfigError            a setting is missing or wrong (the CLI exits with code 2)
    ├── SendError              one attempt to deliver an item failed
    │   ├── RetryableSendError     try again later: 408, 409, 425, 429, 5xx, timeouts, connections
    │   ├── AuthError              401/403/407 or no token: an outage of the whole API, retried
    │   ├── ConfigOutageError      a redirect or an untrusted certificate: the URL setting is wrong
    │   ├── RegistryError          the schema registry is down, failing or refusing us: an outage
    │   ├── UnexpectedSendError    a failure nobody foresaw (a bug): retried a few times only
    │   ├── ResultError            accepted, but the answer can never be written to the result topic
    │   └── RejectedError          the API refused the item for good: any other non-2xx
    │       ├── InvalidRecordError     the record cannot become a valid request
    │       └── DeadLetterError        refused, and its dead letter can never be written either
    ├── LaneFullError          ``try_submit`` found the lane's buffer full
    ├── LaneHaltedError        the lane stopped after a rejection; the item was not sent
    ├── SenderClosedError      the sender no longer takes items
    ├── KafkaStartupError      Kafka not reached, or the group not joined, in the start-up time
    ├── GroupActiveError       ``offsets reset`` found members in the group: nothing committed
    ├── AdminRefusedError      an admin call cannot be done as asked (409, 404, 503)
    └── BrokerError            the embedded Kafka broker could not start

Retry decisions read the ``retryable``, ``retry_after``, ``max_attempts`` and ``delivered``
attributes, never messages; the API gate reads ``outage`` and ``reason`` the same way. Any
exception type may carry them, so a user's own send function can steer the sender and the gate
like the HTTP sink does.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import ClassVar


class PipelineError(Exception):
    """Base of every error space-pipeline raises."""


class ConfigError(PipelineError):
    """Settings are missing or invalid; the CLI prints each problem and exits with code 2.

    ``problems`` holds one line per problem, each naming the setting as the operator spells it.
    """

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


class SendError(PipelineError):
    """One attempt to deliver an item failed.

    Args:
        message: What happened, for logs.
        reason: A short, bounded label for metrics (``"5xx"``, ``"429"``, ``"timeout"``, ...).
        status: The HTTP status, when there was a response.
        retry_after: Seconds the server asked us to wait, when it said so.
    """

    retryable: ClassVar[bool] = True
    # An outage is the API's fault, not the record's: the gate holds every request back.
    outage: ClassVar[str | None] = None

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        status: int | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.status = status
        self.retry_after = retry_after


class RetryableSendError(SendError):
    """The item may succeed later: the sender keeps it at the head of its lane and retries."""

    retryable = True


class AuthError(SendError):
    """The API refused our credentials, or no token could be had.

    Nothing will pass until that is fixed, whatever the record: an outage to wait out, never a
    bad record.
    """

    retryable = True
    outage = "auth"


class ConfigOutageError(SendError):
    """The configured endpoint itself is wrong: the API redirects, or its certificate is untrusted.

    No record is at fault and no record would pass until the setting is fixed, so it is an
    outage like :class:`AuthError`: everything waits, one probe at a time, nothing is
    dead-lettered or halted.

    Args:
        location: Where a redirect pointed (its ``Location``), for the log line and ``/readyz``.
    """

    retryable = True
    outage = "config"

    def __init__(
        self,
        message: str,
        *,
        reason: str,
        status: int | None = None,
        location: str | None = None,
    ) -> None:
        super().__init__(message, reason=reason, status=status)
        self.location = location


class RegistryError(SendError):
    """The schema registry could not say what a schema id means: down, 5xx, slow, or refusing us.

    No record is at fault (its schema may be perfectly known to a registry that answers), so it
    is an outage like :class:`AuthError`: everything waits, one probe at a time, until the
    registry answers again. An id the registry does not know is the record's fault instead: an
    :class:`InvalidRecordError`.
    """

    retryable = True
    outage = "registry"


class RejectedError(SendError):
    """The API refused the item; sending it again would not change the answer."""

    retryable = False

    def __init__(
        self, message: str, *, reason: str, status: int | None = None, body: str = ""
    ) -> None:
        super().__init__(message, reason=reason, status=status)
        self.body = body


class UnexpectedSendError(SendError):
    """The send failed in a way nobody classified: most likely a bug, maybe a passing fault.

    Retried, but only ``max_attempts`` times in all: a bug would otherwise block its partition
    for ever, retrying many times a second without ever being counted as a rejection.
    """

    retryable = True
    max_attempts: ClassVar[int] = 5


class ResultError(SendError):
    """The API accepted the item, but its answer can never become a record of the result topic.

    The topic is gone, writing is not allowed, the function's return value is not JSON: the
    lane halts at the item, which is not committed, as when a dead letter cannot be written.
    It is no rejection (the item must not be dead-lettered: the API has it), and a batch is not
    split to find a culprit, which would deliver its records again: ``delivered`` says so.
    """

    retryable = False
    delivered: ClassVar[bool] = True


class InvalidRecordError(RejectedError):
    """The record cannot be turned into a valid request: sending it again could never work.

    For instance a header value that is ``None``, or one holding a line break.
    """

    def __init__(self, message: str, *, status: int | None = None) -> None:
        super().__init__(message, reason="invalid_record", status=status)


class DeadLetterError(RejectedError):
    """A refused record's dead letter can never be written: too large, no topic, not allowed.

    Retrying cannot help, and moving on would lose the record: its partition halts at it, with
    the rejection's status and body and, in the message, what Kafka said.

    Args:
        cause: Kafka's error for the dead letter.
    """

    def __init__(
        self, message: str, *, cause: BaseException, status: int | None = None, body: str = ""
    ) -> None:
        super().__init__(message, reason="dead_letter_failed", status=status, body=body)
        self.cause = cause


class LaneFullError(PipelineError):
    """The lane holds as many items (or bytes) as it may; wait, or pause the producer."""

    def __init__(self, lane: Hashable) -> None:
        super().__init__(f"lane {lane!r} is full")
        self.lane = lane


class LaneHaltedError(PipelineError):
    """The lane halted after an earlier item was rejected, so this one was never sent."""

    def __init__(self, lane: Hashable, cause: BaseException | None) -> None:
        super().__init__(f"lane {lane!r} is halted after a rejection: {cause!r}")
        self.lane = lane
        self.cause = cause


class SenderClosedError(PipelineError):
    """The sender is closing or closed and takes no new items."""


class KafkaStartupError(PipelineError):
    """Kafka was not reached, or the group not joined, within ``PIPELINE_KAFKA_STARTUP_TIMEOUT_S``.

    The stage exits 1: a pod then restarts with its back-off, and the log says what was tried.
    """


class GroupActiveError(PipelineError):
    """The consumer group has members, so its offsets are theirs to commit, not a tool's.

    A commit from outside would be overwritten by the members' next commit, or refused by the
    broker; ``members`` names them (client id, or member id, and host) so the operator knows
    what to stop first.
    """

    def __init__(self, group: str, state: str, members: tuple[str, ...]) -> None:
        named = ", ".join(members) if members else "none listed"
        super().__init__(f"group {group} is {state}, with members: {named}")
        self.group = group
        self.state = state
        self.members = members


class BrokerError(PipelineError):
    """The embedded Kafka-protocol broker could not be started."""


class AdminRefusedError(PipelineError):
    """An operator's call on the admin API that cannot be done as asked.

    ``status`` is the HTTP answer: 409 when the request contradicts the partition's state (a skip
    of a record it is not halted at), 404 when the partition is not assigned here, 503 when the
    stage is not running yet. The message is the reason the caller reads.
    """

    def __init__(self, message: str, *, status: int = 409) -> None:
        super().__init__(message)
        self.status = status
