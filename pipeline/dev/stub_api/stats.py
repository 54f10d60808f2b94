"""What the stub saw, declared once: the dataclasses below are both the live tally and its snapshot.

The recorder bumps the fields of one :class:`StubStats` by name as requests come and go and hands
out deep copies of it, and :meth:`StubStats.to_dict` is
:func:`dataclasses.asdict`, so a new stat is one new field and shows everywhere at once. The long
lists (fields marked :data:`ON_REQUEST`) stay ``None`` in the tally and are filled in, and sent,
only when asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

ON_REQUEST = {"on_request": True}


@dataclass(slots=True)
class PartitionStats:
    """One partition as the API saw it; ``offsets`` only on request, since it grows with the run."""

    count: int = 0
    unique: int = 0
    last_offset: int | None = None
    max_offset: int | None = None
    order_violations: int = 0
    max_concurrent: int = 0
    throttled: int = 0
    min_retry_after_gap_s: float | None = None
    offsets: tuple[int, ...] | None = field(default=None, metadata=ON_REQUEST)


@dataclass(slots=True)
class StubStats:
    """The tally, and its copies: the same in-process and over ``GET /stats``, so checks agree.

    ``*_at`` times are ``time.monotonic()`` (system-wide on Linux, so comparable across processes
    on one host) and ``*_unix`` their wall-clock twins; throughput is ``unique`` over
    ``last_accept_at - first_request_at``.

    ``requests`` counts every request to the API path, whatever its fate (``methods`` splits it by
    method); ``not_found`` those to any other path, which count nowhere else. ``accepted`` counts
    accepted requests (a batch is one), ``records`` the records in them, ``unique`` and
    ``duplicates`` record offsets (``<topic>/<partition>/<offset>``). A batch whose offsets are not
    consecutive (compaction) records only its first and last offset and counts in
    ``gapped_batches``. ``header_mismatches`` counts 400s: headers that disagree, or a batch body
    that is unreadable or holds other than ``X-Batch-Size`` records. ``auth_failures`` counts
    answers with ``auth_status`` (bad token or an ``auth`` fault window). After a 429 with
    ``Retry-After: N`` answered at ``t``, each API request arriving before ``t + N - 0.05 s``,
    from any partition, counts in ``retry_after_violations``. ``max_requests_in_any_1s_window``
    is the most API requests that arrived within any one second. ``paths`` (requests per path,
    as sent, without the query) and ``arrivals`` (monotonic arrival times of API requests) come
    only on request, like ``keys``.
    """

    requests: int = 0
    accepted: int = 0
    unique: int = 0
    duplicates: int = 0
    order_violations: int = 0
    header_mismatches: int = 0
    max_concurrent_total: int = 0
    in_flight: int = 0
    statuses: dict[int, int] = field(default_factory=dict)
    first_request_at: float | None = None
    first_request_unix: float | None = None
    last_accept_at: float | None = None
    last_accept_unix: float | None = None
    min_retry_after_gap_s: float | None = None
    partitions: dict[str, PartitionStats] = field(default_factory=dict)
    records: int = 0
    batches: int = 0
    gapped_batches: int = 0
    max_batch_size: int = 0
    methods: dict[str, int] = field(default_factory=dict)
    not_found: int = 0
    auth_failures: int = 0
    token_requests: int = 0
    max_concurrent_token_requests: int = 0
    last_token_params: dict[str, str] = field(default_factory=dict)
    retry_after_violations: int = 0
    max_requests_in_any_1s_window: int = 0
    keys: tuple[str, ...] | None = field(default=None, metadata=ON_REQUEST)
    paths: dict[str, int] | None = field(default=None, metadata=ON_REQUEST)
    arrivals: tuple[float, ...] | None = field(default=None, metadata=ON_REQUEST)

    def to_dict(self) -> dict[str, Any]:
        """Give the JSON shape, leaving out the long lists unless they were asked for."""
        data = asdict(self, dict_factory=_unasked_left_out)
        data["statuses"] = {str(status): n for status, n in self.statuses.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> StubStats:
        """Rebuild a snapshot from ``GET /stats``, for callers in another process (bench, demo)."""
        parts = {
            key: PartitionStats(**{**part, "offsets": _opt_tuple(part.get("offsets"))})
            for key, part in data["partitions"].items()
        }
        statuses = {int(status): n for status, n in data["statuses"].items()}
        return cls(
            **{
                **data,
                "statuses": statuses,
                "partitions": parts,
                "keys": _opt_tuple(data.get("keys")),
                "arrivals": _opt_tuple(data.get("arrivals")),
            }
        )


_ON_REQUEST_NAMES = frozenset(
    f.name for cls in (StubStats, PartitionStats) for f in fields(cls) if f.metadata == ON_REQUEST
)


def _unasked_left_out(items: Iterable[tuple[str, Any]]) -> dict[str, Any]:
    return {k: v for k, v in items if not (v is None and k in _ON_REQUEST_NAMES)}


def _opt_tuple(items: list[Any] | None) -> tuple[Any, ...] | None:
    return None if items is None else tuple(items)
