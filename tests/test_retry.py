"""Retry delays: capped exponential backoff with full jitter, and the server's Retry-After."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.retry import Backoff, parse_retry_after

NOW = datetime(2015, 10, 21, 7, 28, 0, tzinfo=UTC)


def http_date(when: datetime) -> str:
    return format_datetime(when, usegmt=True)


# parse_retry_after


@pytest.mark.parametrize(
    ("header", "expected"),
    [("120", 120.0), ("0", 0.0), (" 5 ", 5.0), ("007", 7.0)],
)
def test_delta_seconds_are_read_as_seconds(header: str, expected: float) -> None:
    """``Retry-After: 120`` means 120 seconds."""
    assert expected == parse_retry_after(header)


def test_an_http_date_in_the_future_is_the_seconds_until_then() -> None:
    """``Retry-After: <HTTP-date>`` means the time left until that date."""
    header = http_date(NOW + timedelta(seconds=30))

    assert 30.0 == parse_retry_after(header, now=NOW)


def test_an_http_date_is_measured_from_the_current_time_by_default() -> None:
    """Without ``now``, the date is compared with the wall clock."""
    header = http_date(datetime.now(UTC) + timedelta(seconds=60))

    delay = parse_retry_after(header)

    assert delay is not None
    assert 55.0 < delay <= 60.0


def test_an_http_date_in_the_past_means_no_wait() -> None:
    """A date already gone is a zero delay, never a negative one."""
    header = http_date(NOW - timedelta(hours=1))

    assert 0.0 == parse_retry_after(header, now=NOW)


def test_an_http_date_without_a_zone_is_read_as_utc() -> None:
    """An obsolete ``-0000`` date (no zone information) counts as UTC."""
    assert 30.0 == parse_retry_after("Wed, 21 Oct 2015 07:28:30 -0000", now=NOW)


@pytest.mark.parametrize("header", ["soon", "", "   ", "-5", "1.5", "5s", "Wed, 99 Oct 2015"])
def test_an_unreadable_header_is_none(header: str) -> None:
    """Garbage is ignored rather than turned into a crash."""
    assert parse_retry_after(header, now=NOW) is None


def test_an_absent_header_is_none() -> None:
    """No header, no server-requested delay."""
    assert parse_retry_after(None) is None


@pytest.mark.parametrize("header", ["²", "1²"], ids=["superscript-2", "1-superscript-2"])
def test_a_header_of_non_decimal_digits_is_none(header: str) -> None:
    """Characters that are digits to Unicode but not numbers are garbage too."""
    assert parse_retry_after(header) is None


@settings(max_examples=200, deadline=None)
@given(header=st.text(alphabet=st.characters(codec="ascii"), max_size=40))
def test_any_ascii_header_parses_to_none_or_a_non_negative_delay(header: str) -> None:
    """Whatever the server sends (as ASCII), the answer is None or a delay of at least zero."""
    delay = parse_retry_after(header, now=NOW)

    assert delay is None or delay >= 0.0


# Backoff.delay


@pytest.mark.parametrize(
    ("attempt", "expected"),
    [(1, 0.1), (2, 0.2), (3, 0.4), (4, 0.8), (5, 1.6), (9, 25.6), (10, 30.0), (60, 30.0)],
)
def test_the_delay_cap_doubles_per_attempt_up_to_the_maximum(attempt: int, expected: float) -> None:
    """With the top jitter draw the delay is ``initial * multiplier ** (attempt - 1)``, capped."""
    backoff = Backoff(initial=0.1, maximum=30.0, multiplier=2.0, random=lambda: 1.0)

    assert pytest.approx(expected) == backoff.delay(attempt)


def test_full_jitter_scales_the_cap_by_the_draw() -> None:
    """The delay is the random draw times the cap: a draw of 0 means retry at once."""
    assert 0.0 == Backoff(random=lambda: 0.0).delay(5)
    assert pytest.approx(0.8) == Backoff(random=lambda: 0.5).delay(5)


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(1, 500),
    initial=st.floats(0.001, 10.0),
    maximum=st.floats(0.001, 600.0),
    multiplier=st.floats(1.0, 4.0),
    draw=st.floats(0.0, 1.0, exclude_max=True),
)
def test_a_jittered_delay_is_between_zero_and_the_cap(
    attempt: int, initial: float, maximum: float, multiplier: float, draw: float
) -> None:
    """Full jitter: ``0 <= delay <= min(maximum, initial * multiplier ** (attempt - 1))``."""
    backoff = Backoff(initial=initial, maximum=maximum, multiplier=multiplier, random=lambda: draw)
    cap = min(maximum, initial * multiplier ** (attempt - 1))

    delay = backoff.delay(attempt)

    assert 0.0 <= delay <= cap


@settings(max_examples=50, deadline=None)
@given(attempt=st.integers(1, 100))
def test_the_default_random_draw_stays_within_the_cap(attempt: int) -> None:
    """The real jitter source never exceeds the cap either."""
    backoff = Backoff(initial=0.1, maximum=30.0)

    assert 0.0 <= backoff.delay(attempt) <= min(30.0, 0.1 * 2.0 ** (attempt - 1))


def test_a_very_late_attempt_waits_the_maximum() -> None:
    """However many attempts failed, the delay stays capped at ``maximum``."""
    backoff = Backoff(maximum=30.0, random=lambda: 1.0)

    assert 30.0 == backoff.delay(1_100)


@pytest.mark.parametrize(
    ("retry_after", "expected"),
    [(7.0, 7.0), (300.0, 300.0), (86_400.0, 300.0), (-3.0, 0.0)],
)
def test_retry_after_is_used_as_given_but_capped(retry_after: float, expected: float) -> None:
    """A server's Retry-After replaces the formula, within ``[0, retry_after_max]``."""
    backoff = Backoff(retry_after_max=300.0, random=lambda: 1.0)

    assert expected == backoff.delay(1, retry_after)


def test_a_retry_after_of_zero_backs_off_as_usual() -> None:
    """``Retry-After: 0`` gives no useful delay: taken as given it would retry at once, for
    ever, a hot loop; the formula's growing delay applies instead."""
    backoff = Backoff(initial=0.1, random=lambda: 1.0)

    assert [0.1, 0.2, 0.4] == [backoff.delay(attempt, 0.0) for attempt in (1, 2, 3)]


@settings(max_examples=100, deadline=None)
@given(
    attempt=st.integers(1, 1_000),
    retry_after=st.floats(0.0, 1e9),
    retry_after_max=st.floats(0.0, 3_600.0),
)
def test_retry_after_ignores_the_jitter_and_the_attempt(
    attempt: int, retry_after: float, retry_after_max: float
) -> None:
    """The delay is ``min(retry_after, retry_after_max)``, whatever the attempt or draw."""
    backoff = Backoff(retry_after_max=retry_after_max, random=lambda: 0.0)

    assert min(retry_after, retry_after_max) == backoff.delay(attempt, retry_after)


def test_without_max_attempts_the_budget_is_never_exhausted() -> None:
    """By default a record is retried for ever: a dropped record is worse than a late one."""
    assert not Backoff().exhausted(1_000_000)


def test_max_attempts_is_exhausted_at_that_many_failed_attempts() -> None:
    """``max_attempts=3`` allows attempts 1 and 2 to be retried, not attempt 3."""
    backoff = Backoff(max_attempts=3)

    assert [False, False, True, True] == [backoff.exhausted(n) for n in (1, 2, 3, 4)]
