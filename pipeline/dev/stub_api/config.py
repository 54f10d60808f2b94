"""How the stub misbehaves: :class:`StubConfig` and its timed :class:`FaultWindow`.

Each setting is declared once, here: its field metadata (:func:`option`) carries the help text and
flag that ``space-pipeline stub-api`` offers for it, so a new setting cannot reach the dataclass
without reaching the command line too (:mod:`pipeline.dev.stub_api.cli` reads the fields).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar, cast, get_args

FaultKind = Literal["outage", "throttle", "auth", "redirect"]

AUTH_STATUSES = (401, 403, 407)
CONTROL_PATHS = ("/healthz", "/stats", "/reset", "/oauth2/token")
# Where a redirect fault window sends the client: a place that is not the API, so a client that
# followed it would be answered 404 for every record.
REDIRECT_LOCATION = "/relocated"

_RATE_FIELDS = ("error_rate", "throttle_rate", "reject_rate")
_NON_NEGATIVE_FIELDS = (
    "latency_ms",
    "jitter_ms",
    "retry_after_s",
    "error_burst",
    "throttle_burst",
    "token_latency_ms",
)

T = TypeVar("T")


@dataclass(frozen=True, slots=True, kw_only=True)
class Option:
    """How one :class:`StubConfig` field appears on the command line.

    ``parse`` reads one value (the type of the default if not given). A ``collect`` option is
    repeatable: its flag may be given many times, and ``collect`` turns the list into the value.
    """

    help: str
    flag: str | None = None  # --<field-name> with dashes if not given
    aliases: tuple[str, ...] = ()  # older spellings of the flag, still accepted
    parse: Callable[[str], object] | None = None
    collect: Callable[[list[Any]], object] | None = None
    metavar: str | None = None
    choices: tuple[object, ...] | None = None


def option(
    default: T,
    help: str,
    *,
    flag: str | None = None,
    aliases: tuple[str, ...] = (),
    parse: Callable[[str], object] | None = None,
    collect: Callable[[list[Any]], object] | None = None,
    metavar: str | None = None,
    choices: tuple[object, ...] | None = None,
) -> T:
    """A dataclass field with its command-line form in the metadata (see :class:`Option`)."""
    cli = Option(
        help=help,
        flag=flag,
        aliases=aliases,
        parse=parse,
        collect=collect,
        metavar=metavar,
        choices=choices,
    )
    return field(default=default, metadata={"cli": cli})


@dataclass(frozen=True, slots=True)
class FaultWindow:
    """A timed fault, ``start_s`` seconds into the fault clock, for ``duration_s`` seconds.

    ``outage`` answers 503 (no ``Retry-After``), ``throttle`` 429 with ``Retry-After``, ``auth``
    the config's ``auth_status``, ``redirect`` 307 to ``REDIRECT_LOCATION`` (an API that moved).
    The clock starts at the first API request after start, reset or
    ``set_config``, so a stub may be up long before traffic flows. ``duration_s`` may be ``inf``.
    """

    kind: FaultKind
    start_s: float
    duration_s: float

    def __post_init__(self) -> None:
        """Fail at construction, like :class:`StubConfig`."""
        if self.kind not in get_args(FaultKind):
            kinds = ", ".join(get_args(FaultKind))
            raise ValueError(f"fault kind must be one of {kinds}, got {self.kind!r}")
        if not self.start_s >= 0:
            raise ValueError(f"fault start_s must not be negative, got {self.start_s!r}")
        if not self.duration_s > 0:
            raise ValueError(f"fault duration_s must be positive, got {self.duration_s!r}")

    @classmethod
    def parse(cls, text: str) -> FaultWindow:
        """Read the CLI form ``KIND@START+DURATION``, e.g. ``outage@5+10``."""
        kind, at, rest = text.partition("@")
        start, plus, duration = rest.partition("+")
        if not (at and plus):
            raise ValueError(f"expected KIND@START+DURATION (e.g. outage@5+10), got {text!r}")
        # __post_init__ checks the kind, so the cast only tells mypy what it will verify
        return cls(cast(FaultKind, kind), float(start), float(duration))

    def covers(self, elapsed_s: float) -> bool:
        """Whether the window is open ``elapsed_s`` seconds into the fault clock."""
        return self.start_s <= elapsed_s < self.start_s + self.duration_s


def rate(text: str) -> float:
    """Read a fraction of requests; the ``ValueError`` is worded for the command line."""
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"expected a number between 0 and 1, got {text!r}")
    return value


def idempotency_key(text: str) -> str:
    """Read a record's Idempotency-Key, ``topic/partition/offset``: where it is in Kafka.

    The stub never sees a record's Kafka key (unless the URL names it), so a Kafka key given
    here would match nothing, silently: it is refused, saying what the flag takes.
    """
    topic, _, rest = text.rpartition("/")
    topic, _, partition = topic.rpartition("/")
    if not (topic and partition.isdecimal() and rest.isdecimal()):
        raise ValueError(
            f"expected TOPIC/PARTITION/OFFSET, the record's Idempotency-Key (not its Kafka key),"
            f" e.g. telemetry/0/5; got {text!r}"
        )
    return text


# The fields are in the order ``stub-api --help`` lists them; keyword-only, so that order is free.
@dataclass(frozen=True, slots=True, kw_only=True)
class StubConfig:
    """How the stub misbehaves; one frozen value, so an outage starts and ends by swapping it.

    Rates are fractions of requests drawn from one uniform number, so they add up exactly (their
    sum may not exceed 1). Bursts hit the first requests after start, reset or ``set_config``
    (errors first, then throttles), whatever their partition. ``jitter_ms`` spreads the latency
    uniformly over ``latency_ms ± jitter_ms``, never below zero. ``Retry-After`` is sent as whole
    seconds rounded up (RFC 9110 allows no fractions, and the stage ignores what it cannot parse).

    ``path`` is the API; requests below it (``/items/orders/3``) are the API too. ``token`` asks
    for ``Authorization: Bearer <token>``; the ``oauth2_*`` settings instead serve
    ``POST /oauth2/token`` and ask for a live token it issued (one or the other). Failing auth
    answers ``auth_status``. ``faults`` are timed windows (:class:`FaultWindow`).

    An API request is judged in this order: method (405), auth, headers (400; a batch's body
    too), fault windows, bursts, ``reject_keys`` (422), rates. An accepted one is answered 204,
    or, with ``answer_body="id"``, 201 with ``{"id": <its Idempotency-Key>}``.
    """

    path: str = option("/items", "API path; paths below it count too (%(default)s)")
    latency_ms: float = option(20.0, "response delay (%(default)s)")
    jitter_ms: float = option(0.0, "± spread of the delay (%(default)s)")
    error_rate: float = option(0.0, "fraction answered 500/503", parse=rate)
    throttle_rate: float = option(0.0, "fraction answered 429", parse=rate)
    retry_after_s: float = option(1.0, "Retry-After on 429s")
    error_burst: int = option(0, "first N requests get 500")
    throttle_burst: int = option(0, "next N requests get 429")
    reject_rate: float = option(0.0, "fraction answered 422", parse=rate)
    reject_keys: frozenset[str] = option(
        frozenset(),
        "always 422 the record with this Idempotency-Key: its place in Kafka, not its Kafka"
        " key (repeatable; --reject-key is the old spelling)",
        flag="--reject-idempotency-key",
        aliases=("--reject-key",),
        parse=idempotency_key,
        collect=frozenset,
        metavar="TOPIC/PARTITION/OFFSET",
    )
    unavailable_keys: frozenset[str] = option(
        frozenset(),
        "always 503 the record with this Idempotency-Key, one the API never takes"
        " (repeatable; --unavailable-key is the old spelling)",
        flag="--unavailable-idempotency-key",
        aliases=("--unavailable-key",),
        parse=idempotency_key,
        collect=frozenset,
        metavar="TOPIC/PARTITION/OFFSET",
    )
    answer_body: Literal["none", "id"] = option(
        "none",
        'an accepted request\'s answer: none (204), or id (201 with {"id": its Idempotency-Key},'
        " so a result names its record)",
        parse=str,
        choices=("none", "id"),
    )
    seed: int | None = option(None, "seed the fault draws for a repeatable run", parse=int)
    faults: tuple[FaultWindow, ...] = option(
        (),
        "a fault window: outage (503), throttle (429), auth (--auth-status) or redirect"
        f" (307 to {REDIRECT_LOCATION}), seconds "
        "from the first API request, e.g. outage@5+10 (repeatable)",
        flag="--fault",
        parse=FaultWindow.parse,
        collect=tuple,
        metavar="KIND@START+DURATION",
    )
    token: str | None = option(None, "require 'Authorization: Bearer TOKEN' on the API", parse=str)
    auth_status: int = option(
        401, "answer to a missing or bad token (%(default)s)", choices=AUTH_STATUSES
    )
    oauth2_client_id: str | None = option(
        None, "serve POST /oauth2/token, require its tokens", parse=str
    )
    oauth2_client_secret: str | None = option(
        None, "the client secret /oauth2/token expects", parse=str
    )
    oauth2_expires_in_s: float = option(3600.0, "lifetime of issued tokens (%(default)s)")
    token_latency_ms: float = option(0.0, "delay of /oauth2/token answers (%(default)s)")

    def __post_init__(self) -> None:
        """Fail at construction, so a bad fault setting never reaches a running benchmark."""
        for name in _RATE_FIELDS:
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, got {value!r}")
        total = self.error_rate + self.throttle_rate + self.reject_rate
        if total > 1.0 + 1e-9:
            raise ValueError(
                f"error_rate + throttle_rate + reject_rate must be <= 1, got {total:g}"
            )
        for name in _NON_NEGATIVE_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)!r}")
        _check_path(self.path)
        _check_auth(self)


def _check_path(path: str) -> None:
    if not path.startswith("/") or path.endswith("/"):
        raise ValueError(f"path must start with '/' and not end with one, got {path!r}")
    for route in CONTROL_PATHS:
        if within(route, path) or within(path, route):
            raise ValueError(f"path {path!r} would overlap the stub's own {route}")


def _check_auth(config: StubConfig) -> None:
    if config.auth_status not in AUTH_STATUSES:
        raise ValueError(f"auth_status must be 401, 403 or 407, got {config.auth_status!r}")
    if config.token == "":
        raise ValueError("token must not be empty (None turns it off)")
    client = (config.oauth2_client_id, config.oauth2_client_secret)
    if "" in client or (client[0] is None) != (client[1] is None):
        raise ValueError("oauth2_client_id and oauth2_client_secret must both be set, or neither")
    if config.token is not None and client[0] is not None:
        raise ValueError("token and oauth2_client_id are alternatives: set one of them")
    if not 0 < config.oauth2_expires_in_s < math.inf:
        raise ValueError(
            f"oauth2_expires_in_s must be positive and finite, got {config.oauth2_expires_in_s!r}"
        )


def within(path: str, base: str) -> bool:
    """Whether ``path`` is ``base`` or below it (``/items/x`` is, ``/itemsx`` is not)."""
    return path.startswith(base) and (len(path) == len(base) or path[len(base)] == "/")
