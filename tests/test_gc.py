"""Garbage collection: what the code under test causes counts, what merely lands in it does not."""

from __future__ import annotations

import json

import pytest

from conftest import blocked, run

HEAP = """
import gc, pytest


@pytest.fixture
def big_heap():
    # About 0.2 s of full collection: 100,000 lists of 200 references each.
    node = []
    heap = [[node] * 200 for _ in range(100_000)]
    yield heap
    del heap


@pytest.fixture
def pending_heap(big_heap):
    # The big heap, made old by a full collection, then half as much again promoted to the old
    # generation: a full collection is due, and walks all of it (about 0.3 s). With these
    # thresholds the next young collection becomes it: one collection, none of the test's.
    gc.collect()
    node = []
    more = [[node] * 200 for _ in range(50_000)]
    gc.collect(1)
    old = gc.get_threshold()
    gc.set_threshold(700, 0, 0)
    yield
    gc.set_threshold(*old)
    del more
"""

TESTS = """
import gc


async def test_explicit_collect(big_heap):
    gc.collect()  # in a route, say; the route goes on to build its response
    return {"ok": sum(i for i in range(10))}


async def test_a_collection_lands_in_a_short_callback(pending_heap):
    small = [[] for _ in range(800)]  # sets off the one collection that was due
    assert len(small) == 800
"""


def test_explicit_collect_is_a_block_and_a_landing_collection_is_not(
    pytester: pytest.Pytester,
) -> None:
    pytester.makeconftest(HEAP)
    pytester.makepyfile(test_gc_cases=TESTS)
    result = run(pytester, "-p", "no:randomly", "--loop-block-threshold=0.08")
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_explicit_collect _*",
            blocked("test_gc_cases.py:5 in test_explicit_collect", threshold="0.08"),
            "    gc.collect()  # in a route*",
        ]
    )
    result.stdout.no_fnmatch_line("*test_a_collection_lands_in_a_short_callback - *")
    result.stdout.fnmatch_lines(["*1 failed, 1 passed*"])


def test_collections_a_callback_causes_count_in_its_duration(pytester: pytest.Pytester) -> None:
    """Bulk validation of a big payload in a service with a heap of its own: the collections its
    allocations set off are part of its cost, and its reported duration is its wall time."""
    pytester.makepyfile(
        test_bulk="""
        import asyncio, json, time

        APP_HEAP = [{"id": i, "tags": [i]} for i in range(300_000)]  # the service's own objects


        def validate(payload):
            return [{"id": item["id"], "tags": list(item["tags"]), "ok": True} for item in payload]


        async def test_bulk_validation():
            payload = [{"id": i, "tags": [i, str(i)]} for i in range(2000)]
            await asyncio.sleep(0)
            start, kept = time.perf_counter(), []
            while time.perf_counter() < start + 0.5:  # a loaded runner leaves it 0.15 s of CPU
                kept.append(validate(payload))
            with open("took.json", "w") as f:
                json.dump(time.perf_counter() - start, f)
        """
    )
    result = run(pytester, "--loop-block-report=blocks.json", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([blocked("test_bulk.py:7 in *")])  # <listcomp> before 3.12
    took = json.loads((pytester.path / "took.json").read_text())
    [block] = json.loads((pytester.path / "blocks.json").read_text())["blocks"]
    # A busy machine's CPU wait is left out of the duration and reported on its own.
    held = block["duration"] + block["cpu_wait"]
    assert abs(held - took) <= 0.1 * took, (block["duration"], block["cpu_wait"], took)


VENDOR = """
import gc, time


def _on_gc(phase, info):  # a metrics package's collection hook, slow on purpose
    end = time.perf_counter() + 0.002
    while time.perf_counter() < end:
        pass


gc.callbacks.append(_on_gc)
"""


def test_the_blocking_line_is_never_a_frame_that_ran_only_for_a_collection(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        gc_vendor=VENDOR,
        test_vendor="""
        import gc, time
        import gc_vendor


        def validate(payload):
            return [{"id": item, "ok": [item]} for item in payload]


        async def test_bulk_validation():
            old = gc.get_threshold()
            gc.set_threshold(100, 5, 5)
            try:
                end = time.perf_counter() + 0.3
                while time.perf_counter() < end:
                    validate(range(1000))
            finally:
                gc.set_threshold(*old)
        """,
    )
    pytester.syspathinsert()
    result = run(pytester, subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([blocked("test_vendor.py:* in *")])
    result.stdout.no_fnmatch_line("LoopBlockedError: * in _on_gc")
