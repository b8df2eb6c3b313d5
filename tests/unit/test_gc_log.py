"""The garbage-collection log's arithmetic: which collections a block may be excused."""

from __future__ import annotations

import pytest

from pytest_loopguard._base.clocks import GcLog


def _log(ident: int, *spans: tuple[float, float, int]) -> GcLog:
    log = GcLog()
    log._spans[ident] = spans
    return log


def test_collections_inside_the_block_and_the_longest_of_each_generation() -> None:
    log = _log(1, (0.0, 0.05, 2), (0.1, 0.12, 0), (0.2, 0.23, 0), (0.3, 0.31, 1))
    total, longest = log.collecting(1, 0.0, 1.0)
    assert total == pytest.approx(0.05 + 0.02 + 0.03 + 0.01)
    assert longest == pytest.approx(0.05 + 0.03 + 0.01)  # one of each generation


def test_only_the_part_inside_the_block_counts_and_only_the_thread_s_own() -> None:
    log = _log(1, (0.0, 0.2, 2))
    assert log.collecting(1, 0.1, 0.5) == pytest.approx((0.1, 0.1))
    assert log.collecting(2, 0.0, 1.0) == (0.0, 0.0)
    assert log.collecting(1, 0.3, 0.5) == (0.0, 0.0)


def test_nothing_is_recorded_while_no_guard_watches() -> None:
    log = GcLog()
    log.on_gc("start", {"generation": 0})
    log.on_gc("stop", {"generation": 0})
    assert log._spans == {}
