"""The Prometheus catalogue: every metric the stage exports, in one place.

Names carry the ``space_pipeline_`` prefix and base units; labels are bounded (topic, partition, a
status class or a reason), never keys or offsets. These module-level objects are the only global
state in the package, as prometheus-client intends.

What is counted once per record or per request goes through :class:`Tallies` and
:class:`BufferedHistogram`: plain integers and lists on the hot path. A prometheus-client update
takes a lock and, for a histogram, walks the buckets: several microseconds per record that a fast
API would feel. Tallies are added to their counters by :func:`flush` on every scrape and once a
second; a buffered histogram is a collector of its own, read at scrape time. Only
prometheus-client's public API is used: its private attributes change without notice.
"""

from __future__ import annotations

import math
import os
import platform
import time
from bisect import bisect_left
from collections.abc import Hashable, Iterator, Sequence
from itertools import accumulate

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.utils import floatToGoString

from pipeline import __version__

# From a 1 ms loopback call to the longest request timeout anyone should configure.
# Dense around tens of milliseconds, where the Space API lives, so p95/p99 are not bucket edges.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.025, 0.03, 0.04, 0.05, 0.075, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
)  # fmt: skip
# End to end includes time spent in Kafka before the stage saw the record: reach further.
E2E_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 45.0, 60.0, 120.0,
    300.0, 900.0, 3600.0,
)  # fmt: skip

TP = ("topic", "partition")

RECORDS_CONSUMED = Counter(
    "space_pipeline_records_consumed_total",
    "Records fetched from Kafka and handed to the sender.",
    TP,
)
RECORDS_DELIVERED = Counter(
    "space_pipeline_records_delivered_total", "Records the Space API accepted (2xx).", TP
)
REJECTIONS = Counter(
    "space_pipeline_rejections_total",
    "Records the Space API finally refused (a 4xx that is not retryable).",
    TP,
)
SEND_ATTEMPTS = Counter(
    "space_pipeline_send_attempts_total",
    "Attempts by outcome: 2xx, 4xx, 429, 5xx, timeout, connection, invalid_record, unexpected"
    " (HTTP), or ok, error (a user's send function).",
    ("status_class",),
)
RETRIES = Counter(
    "space_pipeline_retries_total",
    "Attempts that failed in a retryable way and were scheduled again, by reason.",
    (*TP, "reason"),
)
INFLIGHT = Gauge(
    "space_pipeline_inflight_records",
    "Records whose send (with its retries) has started and not yet finished.",
    TP,
)
BUFFERED = Gauge(
    "space_pipeline_buffered_records",
    "Records held by the stage for a partition: queued plus in flight.",
    TP,
)
BUFFERED_BYTES = Gauge(
    "space_pipeline_buffered_bytes", "Value bytes held by the stage for a partition.", TP
)
PAUSED = Gauge(
    "space_pipeline_partition_paused", "1 while fetching is paused because the buffer is full.", TP
)
OPERATOR_PAUSED = Gauge(
    "space_pipeline_partition_operator_paused",
    "1 while an operator paused the partition (space-pipeline pause), until resumed or moved.",
    TP,
)
HALTED = Gauge(
    "space_pipeline_partition_halted", "1 while a partition is halted on a rejected record.", TP
)
COMMITTED_OFFSET = Gauge(
    "space_pipeline_committed_offset", "Last offset committed: the next record to deliver.", TP
)
LAG_RECORDS = Gauge(
    "space_pipeline_consumer_lag_records",
    "Records in the partition after the committed offset (high watermark minus committed).",
    TP,
)
LAG_SECONDS = Gauge(
    "space_pipeline_consumer_lag_seconds",
    "Age, by its Kafka timestamp, of the oldest record held and not yet accepted; 0 when none.",
    TP,
)
OLDEST_UNACCEPTED_AGE = Gauge(
    "space_pipeline_oldest_unaccepted_age_seconds",
    "How long the stage has held its oldest not yet accepted record; 0 when none.",
    TP,
)
LAST_PROGRESS = Gauge(
    "space_pipeline_last_progress_timestamp_seconds",
    "Unix time the partition last had a record accepted, or was assigned.",
    TP,
)
COMMITS = Counter(
    "space_pipeline_commits_total", "Offset commits by result: ok or failed.", ("result",)
)
COMMIT_DURATION = Histogram(
    "space_pipeline_commit_duration_seconds",
    "Duration of one offset commit call.",
    buckets=LATENCY_BUCKETS,
)
ABANDONED_REQUESTS = Counter(
    "space_pipeline_abandoned_requests_total",
    "Requests still on the wire when their partition moved away or the stage stopped: the new"
    " owner may send the same record (same Idempotency-Key) while the API still processes it.",
    TP,
)
DEAD_LETTERS = Counter(
    "space_pipeline_dead_letters_total",
    "Rejected records written to the dead-letter topic (the lane moved on after Kafka had them).",
    TP,
)
RESULTS_PRODUCED = Counter(
    "space_pipeline_results_produced_total",
    "API answers written to the result topic and acknowledged (acks=all), by source partition.",
    TP,
)
RESULTS_FAILED = Counter(
    "space_pipeline_results_failed_total",
    "Failed attempts to write an answer to the result topic, by source partition; final=true"
    " when it can never succeed (the partition halted), false when it is retried.",
    (*TP, "final"),
)
DEAD_LETTER_GUARD_TRIPS = Counter(
    "space_pipeline_dead_letter_guard_trips_total",
    "Partitions halted because they dead-lettered more than allowed in a minute.",
    TP,
)
SKIPPED = Counter(
    "space_pipeline_skipped_records_total",
    "Records let past by PIPELINE_SKIP_RECORDS (dead-lettered when a DLQ is configured).",
    TP,
)
EXPIRED = Counter(
    "space_pipeline_expired_records_total",
    "Records older than PIPELINE_MAX_RECORD_AGE_S when their turn came: never sent, committed past"
    " (dead-lettered when a DLQ is configured).",
    TP,
)
AUTH_FAILURES = Counter(
    "space_pipeline_auth_failures_total",
    "Attempts the API refused for credentials (401/403/407), or without a token to be had.",
)
AUTH_OUTAGE = Gauge(
    "space_pipeline_auth_outage", "1 while the API refuses our credentials; nothing is sent."
)
ENDPOINT_FAULTS = Counter(
    "space_pipeline_endpoint_faults_total",
    "Attempts that showed the configured endpoint wrong, by reason: redirect (a 3xx, never"
    " followed), tls (the API's certificate is not trusted) or other.",
    ("reason",),
)
ENDPOINT_OUTAGE = Gauge(
    "space_pipeline_endpoint_outage",
    "1 while the configured endpoint is wrong (a redirect, an untrusted certificate); nothing is"
    " sent but a probe at a time.",
)
CIRCUIT_STATE = Gauge(
    "space_pipeline_circuit_state",
    "The API circuit breaker: 0 closed, 1 open (no requests), 2 half-open (one probe at a time).",
)
CIRCUIT_STATE_SECONDS = Gauge(
    "space_pipeline_circuit_state_seconds", "How long the circuit has been in its current state."
)
THROTTLED = Counter(
    "space_pipeline_throttled_total",
    "Answers with Retry-After (429, 503) that held every request to the API back.",
)
THROTTLE_WAIT_SECONDS = Counter(
    "space_pipeline_throttle_wait_seconds_total",
    "Time attempts spent waiting out a Retry-After, summed over attempts.",
)
RATE_LIMIT_WAIT_SECONDS = Counter(
    "space_pipeline_rate_limit_wait_seconds_total",
    "Time attempts spent waiting for the rate limit, summed over attempts.",
)
TOKEN_REQUESTS = Counter(
    "space_pipeline_token_requests_total",
    "OAuth2 client-credentials token requests, by result: ok or failed.",
    ("result",),
)
SCHEMA_REGISTRY_REQUESTS = Counter(
    "space_pipeline_schema_registry_requests_total",
    "Schema registry requests (once per schema id, never per record), by result: ok, not_found"
    " (the record is rejected) or failed (an outage: everything waits).",
    ("result",),
)
SCHEMA_REGISTRY_OUTAGE = Gauge(
    "space_pipeline_schema_registry_outage",
    "1 while the schema registry is down or refuses us; nothing is sent but a probe at a time.",
)
REBALANCES = Counter(
    "space_pipeline_rebalances_total",
    "Rebalance callbacks by event: assigned or revoked.",
    ("event",),
)
ASSIGNED_PARTITIONS = Gauge(
    "space_pipeline_assigned_partitions", "Partitions currently assigned to this process."
)
BUILD_INFO = Info("space_pipeline_build", "Version of space-pipeline and of Python.")
BUILD_INFO.info({"version": __version__, "python": platform.python_version()})

PER_PARTITION_GAUGES = (
    INFLIGHT, BUFFERED, BUFFERED_BYTES, PAUSED, OPERATOR_PAUSED, HALTED, COMMITTED_OFFSET,
    LAG_RECORDS, LAG_SECONDS, OLDEST_UNACCEPTED_AGE, LAST_PROGRESS,
)  # fmt: skip


class Tally:
    """A count kept in a plain int until :func:`flush` adds it to its Prometheus counter."""

    __slots__ = ("_child", "count")

    def __init__(self, child: Counter) -> None:
        self._child = child
        self.count = 0

    def flush(self) -> None:
        """Add what was counted since the last flush."""
        if self.count:
            count, self.count = self.count, 0
            self._child.inc(count)


class Tallies:
    """The :class:`Tally` of each label set of a counter, made on first use."""

    def __init__(self, counter: Counter) -> None:
        self._counter = counter
        self._tallies: dict[Hashable, Tally] = {}
        _BUFFERED.append(self)

    def labels(self, *values: str) -> Tally:
        """The tally for these label values."""
        tally = self._tallies.get(values)
        if tally is None:
            tally = self._tallies[values] = Tally(self._counter.labels(*values))
        return tally

    def flush(self) -> None:
        """Add every tally's count to the counter."""
        for tally in list(self._tallies.values()):
            tally.flush()


class BufferedHistogram:
    """A histogram without labels, counted in plain lists and exposed by a collector of its own.

    It reads, scrape after scrape, exactly as a prometheus-client ``Histogram`` of the same name,
    help and buckets would: the same samples (``_bucket``, ``_count``, ``_sum``, ``_created``
    unless ``PROMETHEUS_DISABLE_CREATED_SERIES`` says otherwise), the sum added in the same order.

    Args:
        name: The metric's name.
        documentation: Its help text.
        buckets: The upper bounds, ascending; ``+Inf`` is added.
        registry: Where it is exposed.
    """

    def __init__(
        self,
        name: str,
        documentation: str,
        buckets: Sequence[float],
        registry: CollectorRegistry = REGISTRY,
    ) -> None:
        self._name = name
        self._documentation = documentation
        self._bounds = [float(bound) for bound in buckets]
        if self._bounds[-1] != math.inf:
            self._bounds.append(math.inf)
        # The label text prometheus-client writes for a bound (the function has no annotations).
        self._les = [floatToGoString(bound) for bound in self._bounds]  # type: ignore[no-untyped-call]
        self._counts = [0] * len(self._bounds)  # per bucket, not cumulative: one add to observe
        self._sum = 0.0
        self._created = time.time()
        registry.register(self)

    def observe(self, value: float) -> None:
        """Count one observation in its bucket (the first whose bound is at least ``value``)."""
        self._counts[bisect_left(self._bounds, value)] += 1
        self._sum += value

    def describe(self) -> list[Metric]:
        """The family's name, for the registry to refuse a second metric by that name."""
        return [HistogramMetricFamily(self._name, self._documentation)]

    def collect(self) -> Iterator[Metric]:
        """The histogram as counted so far (called by the registry at every scrape)."""
        total = self._sum
        cumulative = accumulate(float(count) for count in list(self._counts))
        family = HistogramMetricFamily(self._name, self._documentation)
        family.add_metric([], list(zip(self._les, cumulative, strict=True)), total)
        if _created_series():
            family.add_sample(f"{self._name}_created", {}, self._created)
        yield family


def _created_series() -> bool:
    """Whether ``_created`` samples are exposed, as prometheus-client decides it."""
    setting = os.environ.get("PROMETHEUS_DISABLE_CREATED_SERIES", "False")
    return setting.lower() not in ("true", "1", "t")


_BUFFERED: list[Tallies] = []


def flush() -> None:
    """Bring every tallied count into its counter (before a scrape, once a second)."""
    for buffered in _BUFFERED:
        buffered.flush()


DELIVERED = Tallies(RECORDS_DELIVERED)
ATTEMPTS = Tallies(SEND_ATTEMPTS)
SEND_SECONDS = BufferedHistogram(
    "space_pipeline_send_duration_seconds",
    "Duration of one HTTP attempt to the Space API.",
    LATENCY_BUCKETS,
)
END_TO_END = BufferedHistogram(
    "space_pipeline_end_to_end_latency_seconds",
    "From the Kafka record timestamp to its acceptance by the Space API.",
    E2E_BUCKETS,
)
BATCH_SIZES = BufferedHistogram(
    "space_pipeline_batch_records",
    "Records per request when batching (a request of one record when not).",
    (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000),
)


def status_class(status: int) -> str:
    """A bounded label for a status code: ``429`` stands apart from other 4xx."""
    return "429" if status == 429 else f"{status // 100}xx"


def forget_partition(topic: str, partition: str) -> None:
    """Drop a revoked partition's gauges: the pod that owns it now reports them."""
    labels = (topic, partition)
    for gauge in PER_PARTITION_GAUGES:
        try:
            gauge.remove(*labels)
        except KeyError:
            continue
