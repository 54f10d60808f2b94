"""The commit watermark of a partition: never past a record the API has not accepted."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.offsets import PartitionOffsets, Pending


def tracking(*offsets: int, committed: int | None = None, nbytes: int = 0) -> PartitionOffsets:
    """Offsets that track ``offsets``, each received at its own offset as a time and holding
    ``nbytes``."""
    tracker = PartitionOffsets(committed)
    for offset in offsets:
        tracker.track(offset, timestamp=1_000.0 + offset, received=offset / 10, nbytes=nbytes)
    return tracker


def test_nothing_tracked_has_no_watermark() -> None:
    """A fresh partition has nothing to commit."""
    tracker = PartitionOffsets()

    assert tracker.watermark is None
    assert tracker.oldest is None
    assert tracker.ready() is None
    assert 0 == len(tracker)


def test_the_watermark_waits_at_the_oldest_unaccepted_record() -> None:
    """Tracked but unaccepted records hold the watermark at the first of them."""
    tracker = tracking(10, 11, 12)

    assert 10 == tracker.watermark
    assert Pending(offset=10, timestamp=1_010.0, received=1.0) == tracker.oldest
    assert 3 == len(tracker)


def test_in_order_accepts_advance_the_watermark_one_by_one() -> None:
    """Accepting 10, 11, 12 in turn moves the watermark to 11, 12, 13."""
    tracker = tracking(10, 11, 12)
    marks = []

    for offset in (10, 11, 12):
        tracker.accept(offset)
        marks.append(tracker.watermark)

    assert [11, 12, 13] == marks
    assert 0 == len(tracker)
    assert tracker.oldest is None


def test_out_of_order_accepts_hold_the_watermark_at_the_oldest_unaccepted() -> None:
    """With key lanes, a later record accepted first does not move the watermark past an earlier.

    Once the earlier record is accepted the watermark jumps over everything accepted meanwhile.
    """
    tracker = tracking(10, 11, 12, 13)

    tracker.accept(12)
    tracker.accept(11)
    held = tracker.watermark
    tracker.accept(10)
    jumped = tracker.watermark

    assert 10 == held
    assert 13 == jumped
    assert Pending(offset=13, timestamp=1_013.0, received=1.3) == tracker.oldest


def test_gaps_between_offsets_do_not_hold_the_watermark_back() -> None:
    """Offsets skipped by compaction or transaction markers are never waited for."""
    tracker = tracking(10, 15, 40)

    tracker.accept(10)
    after_first = tracker.watermark
    tracker.accept(15)
    after_second = tracker.watermark
    tracker.accept(40)

    assert 15 == after_first
    assert 40 == after_second
    assert 41 == tracker.watermark


def test_ready_is_the_watermark_only_when_it_moves_past_the_committed_offset() -> None:
    """Committing is only worth it when the watermark is beyond ``committed``."""
    tracker = tracking(10, 11, committed=10)

    nothing_new = tracker.ready()
    tracker.accept(10)
    moved = tracker.ready()
    tracker.committed = 11
    already_committed = tracker.ready()

    assert nothing_new is None
    assert 11 == moved
    assert already_committed is None


def test_ready_without_a_committed_offset_is_the_watermark() -> None:
    """A partition with no committed offset may commit whatever the watermark is."""
    tracker = tracking(0, 1)

    tracker.accept(0)

    assert 1 == tracker.ready()


def test_forget_after_drops_that_offset_and_later_ones() -> None:
    """Records to be fetched again are no longer tracked, accepted or not."""
    tracker = tracking(10, 11, 12, 13)
    tracker.accept(12)

    tracker.forget_after(11)

    assert 1 == len(tracker)
    assert 10 == tracker.watermark
    tracker.accept(10)
    assert 11 == tracker.watermark


def test_forgotten_offsets_can_be_tracked_again() -> None:
    """After a seek back the same offsets are handed over anew, and count only when accepted."""
    tracker = tracking(10, 11, 12)
    tracker.accept(11)
    tracker.forget_after(11)

    tracker.track(11, timestamp=0.0, received=0.0)
    tracker.track(12, timestamp=0.0, received=0.0)
    tracker.accept(10)

    assert 11 == tracker.watermark


@pytest.mark.parametrize("offset", [12, 5])
def test_tracking_an_offset_that_does_not_grow_is_refused(offset: int) -> None:
    """Offsets must be tracked in increasing order."""
    tracker = tracking(10, 12)

    with pytest.raises(ValueError, match=f"offset {offset} tracked after 12"):
        tracker.track(offset, timestamp=0.0, received=0.0)


@st.composite
def tracked_and_accept_order(draw: st.DrawFn) -> tuple[list[int], list[int]]:
    """Increasing offsets with random gaps, and a random order accepting some or all of them."""
    start = draw(st.integers(0, 1_000))
    gaps = draw(st.lists(st.integers(1, 5), min_size=1, max_size=40))
    offsets = [start + sum(gaps[:i]) for i in range(len(gaps))]
    accepted = draw(st.permutations(offsets))
    return offsets, accepted[: draw(st.integers(0, len(accepted)))]


@settings(max_examples=200, deadline=None)
@given(case=tracked_and_accept_order())
def test_the_watermark_is_always_just_past_the_accepted_prefix(
    case: tuple[list[int], list[int]],
) -> None:
    """After any accepts, the watermark is the oldest unaccepted offset, or one past the last.

    Equivalently: nothing at or beyond the watermark is known to be accepted as a prefix, and
    every tracked offset below it is accepted.
    """
    offsets, accept_order = case
    tracker = tracking(*offsets)
    accepted: set[int] = set()
    assert offsets[0] == tracker.watermark

    for offset in accept_order:
        tracker.accept(offset)
        accepted.add(offset)
        unaccepted = [o for o in offsets if o not in accepted]
        expected = unaccepted[0] if unaccepted else offsets[-1] + 1
        assert expected == tracker.watermark
        assert all(o in accepted for o in offsets if o < tracker.watermark)
        assert len([o for o in offsets if o >= expected]) == len(tracker)


def test_the_tracked_span_counts_its_bytes_until_the_watermark_passes_them() -> None:
    """Bytes stay counted for every record from the oldest unaccepted one to the newest, also
    those accepted behind a slow key: that span, not unfinished sends, is what memory holds."""
    tracker = tracking(10, 11, 12, nbytes=100)

    tracker.accept(12)
    tracker.accept(11)
    held_behind_10 = (len(tracker), tracker.nbytes)
    tracker.accept(10)

    assert (3, 300) == held_behind_10
    assert (0, 0) == (len(tracker), tracker.nbytes)


def test_forgetting_records_releases_their_bytes() -> None:
    """A seek back forgets records and their bytes."""
    tracker = tracking(10, 11, 12, nbytes=7)

    tracker.forget_after(11)

    assert 7 == tracker.nbytes


def test_with_nothing_tracked_the_fetch_position_is_ready_to_commit() -> None:
    """Transaction markers are skipped by the consumer: once everything handed over is accepted,
    the fetch position past them may be committed, so such a partition shows no lag."""
    tracker = tracking(10, committed=10)
    tracker.accept(10)

    assert 13 == tracker.ready(position=13)
    assert 11 == tracker.ready(position=None)


def test_the_fetch_position_is_ignored_while_records_are_tracked() -> None:
    """While a record is unaccepted the watermark rules, wherever the consumer has fetched to."""
    tracker = tracking(10, 11, committed=5)
    tracker.accept(10)

    assert 11 == tracker.ready(position=50)
