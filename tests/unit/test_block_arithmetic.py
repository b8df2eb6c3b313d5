"""A block's arithmetic, from looks to a duration: no loop, no thread, no clock."""

from __future__ import annotations

import pytest

from pytest_loopguard._core.block import Block, Measured, _cpu_time, _run_queue_wait


def _block(start: float = 10.0, **fields: object) -> Block:
    block = Block(
        unit=object(),
        start=start,
        last_seen=start,
        cpu_first=None,
        cpu_since=start,
        opened=start,
        labels=[],
    )
    for name, value in fields.items():
        setattr(block, name, value)
    return block


def _no_gc(start: float, end: float) -> tuple[float, float]:
    return 0.0, 0.0


def test_a_block_is_armed_at_half_the_threshold() -> None:
    block = _block()
    assert not block.seen(10.04, threshold=0.1)
    assert block.seen(10.05, threshold=0.1)
    assert block.last_seen == 10.05


def test_the_end_is_halfway_between_the_last_look_and_the_one_that_found_it_gone() -> None:
    block = _block(last_seen=10.30)
    took = block.measure(now=10.34, ended_by=None, collecting=_no_gc)
    assert took.end == pytest.approx(10.32)
    assert took.queued == 0.0


def test_a_beat_that_ran_right_after_the_unit_bounds_its_end() -> None:
    block = _block(last_seen=10.30)
    # The looks were kept away for 0.2 s (C code held the GIL); the beat ran at 10.45.
    took = block.measure(now=10.50, ended_by=10.45, collecting=_no_gc)
    assert took.end == pytest.approx(10.45)
    # A beat close to the last look: halfway, as without one.
    took = block.measure(now=10.50, ended_by=10.31, collecting=_no_gc)
    assert took.end == pytest.approx(10.305)


def test_first_imports_are_left_out() -> None:
    block = _block(last_seen=10.30, importing=0.2)
    took = block.measure(now=10.30, ended_by=None, collecting=_no_gc)
    assert took.end == pytest.approx(10.10)


def test_the_wait_for_a_cpu_is_left_out_and_scaled_to_the_block() -> None:
    # Observed over 0.2 s: 0.1 s of waiting; the block lasted 0.3 s, so 0.15 s of it waited.
    block = _block(last_seen=10.30, queued_first=1.0, queued_last=1.1, queued_since=10.10)
    assert _run_queue_wait(block, 0.3) == pytest.approx(0.15)
    took = block.measure(now=10.30, ended_by=None, collecting=_no_gc)
    assert took.queued == pytest.approx(0.15)
    assert took.end == pytest.approx(10.15)


def test_the_wait_never_exceeds_the_block() -> None:
    block = _block(last_seen=10.30, queued_first=1.0, queued_last=5.0, queued_since=10.29)
    assert _run_queue_wait(block, 0.3) == 0.3


def test_collections_count_but_the_longest_of_each_generation_may_have_landed() -> None:
    def collecting(start: float, end: float) -> tuple[float, float]:
        return 0.08, 0.05  # all of them, the longest of each generation

    block = _block(last_seen=10.14)
    took = block.measure(now=10.14, ended_by=None, collecting=collecting)
    assert took.collected == pytest.approx(0.08)
    assert not took.counts(10.0, threshold=0.1)  # 0.14 s, but 0.09 s without what landed
    assert Measured(10.2, 0.0, 0.08, 0.05).counts(10.0, threshold=0.1)


def test_on_a_loaded_machine_collections_are_excused_at_the_block_s_own_rate() -> None:
    def collecting(start: float, end: float) -> tuple[float, float]:
        return 0.1, 0.1

    # Half of the block waited for a CPU: half of the collection's wall time was its own.
    block = _block(last_seen=10.4, queued_first=0.0, queued_last=0.2, queued_since=10.0)
    took = block.measure(now=10.4, ended_by=None, collecting=collecting)
    assert took.queued == pytest.approx(0.2)
    assert took.landed == pytest.approx(0.05)


def test_cpu_time_is_scaled_from_what_the_looks_observed() -> None:
    block = _block(cpu_first=1.0, cpu_last=1.1, cpu_since=10.1, last_seen=10.3)
    assert _cpu_time(block, 0.3) == pytest.approx(0.15)
    assert _cpu_time(_block(), 0.3) is None  # no CPU clock on this platform


def test_a_beat_ends_a_block_only_once_and_only_when_posted_behind_it() -> None:
    block = _block()
    block.beaten(10.1)
    assert block.ended_by is None  # no beat posted, not a C loop: a beat before the block
    block.beat = 10.2
    block.beaten(10.3)
    block.beaten(10.4)
    assert block.ended_by == 10.3


def test_a_block_with_no_sample_no_arming_or_no_guard_is_not_reportable() -> None:
    assert not _block().reportable
