"""A loaded CI runner: time the loop thread waits for a CPU is the machine's, not the test's.

Real load, no mocks: a process that spins on the same CPU as the loop thread (both pinned to
it), so the thread gets about half of that CPU and waits in the run queue for the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from conftest import blocked, hung, run
from pytest_loopguard import LoopGuard

pytestmark = pytest.mark.skipif(
    not (hasattr(os, "sched_setaffinity") and os.path.exists("/proc/self/schedstat")),
    reason="CPU affinity and /proc/<pid>/task/<tid>/schedstat are Linux's",
)

SPIN = "import os, sys\nos.sched_setaffinity(0, {%d})\nprint(flush=True)\nwhile True: pass\n"


@contextlib.contextmanager
def sharing_a_cpu() -> Iterator[None]:
    """This thread and a spinning process on one CPU, till the block is over."""
    before = os.sched_getaffinity(0)
    cpu = min(before)
    with subprocess.Popen([sys.executable, "-c", SPIN % cpu], stdout=subprocess.PIPE) as spinner:
        try:
            assert spinner.stdout is not None
            spinner.stdout.readline()  # pinned and about to spin
            os.sched_setaffinity(0, {cpu})  # Linux: this thread only, not the watchdog
            yield
        finally:
            os.sched_setaffinity(0, before)
            spinner.kill()


def test_a_call_that_keeps_the_gil_has_its_cpu_wait_left_out() -> None:
    """The watchdog cannot look while C code holds the GIL: the wait is counted from before the
    call began (it used to be lost, and a CPU-bound call read as 'waiting', twice as long)."""
    start = time.thread_time()
    sum(range(2_000_000))
    n = int(2_000_000 * 0.25 / max(time.thread_time() - start, 1e-4))  # about 0.25 s of CPU

    async def main() -> None:
        await asyncio.sleep(0)
        assert sum(range(n)) > 0

    with LoopGuard(threshold=0.1) as guard, sharing_a_cpu():
        began = time.perf_counter()
        asyncio.run(main())
        took = time.perf_counter() - began
    [event] = guard.events
    assert event.cpu_bound is True, event
    assert event.cpu_wait >= 0.25 * took, (event, took)
    assert event.duration <= 0.75 * took, (event, took)


LOADED = """
import time

import pytest

from test_busy_machine import sharing_a_cpu


def spin(cpu_seconds):
    end = time.thread_time() + cpu_seconds
    while time.thread_time() < end:
        pass


@pytest.fixture
def loaded():
    with sharing_a_cpu():
        yield


async def test_short_callback_stretched_by_the_load(loaded):
    spin(0.06)  # about 0.12 s of wall time on half a CPU: past the threshold, not the code's


async def test_long_callback(loaded):
    spin(0.25)
"""


def test_the_wait_for_a_cpu_is_no_false_alarm_and_is_said_apart(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_loaded_runner=LOADED)
    pytester.syspathinsert(os.path.dirname(__file__))
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(
        [
            "*_ test_long_callback _*",
            blocked("test_loaded_runner.py:10 in spin"),
            "wall * s, CPU * s: CPU-bound* (and 0.* s more waiting for a CPU: a busy "
            "machine, not counted)",
        ]
    )
    result.stdout.no_fnmatch_line("*test_short_callback_stretched_by_the_load - *")


def test_the_run_queue_clock_reads_the_thread_s_schedstat() -> None:
    import threading

    from pytest_loopguard._base import clocks as _clocks

    def waited() -> float:
        with open(f"/proc/self/task/{threading.get_native_id()}/schedstat", "rb") as f:
            return int(f.read().split()[1]) / 1e9

    clock = _clocks.RunQueueClock.open(threading.get_native_id())
    assert clock is not None
    try:
        before, read, after = waited(), clock.read(), waited()
    finally:
        clock.close()
    assert read is not None
    assert before <= read <= after


HANG = """
import pytest

from test_busy_machine import sharing_a_cpu


@pytest.fixture
def loaded():
    with sharing_a_cpu():
        yield


async def test_spins(loaded):
    while True: pass  # one line: 3.14 reports the body's line, earlier ones the while's
"""


def test_a_hang_on_a_loaded_runner_is_told_cpu_bound(pytester: pytest.Pytester) -> None:
    """On half a CPU a spin spends half its time waiting for one: it is still the code's CPU
    work (it read as "waiting" when told on wall time), and the headline gives the wall time
    the hang timeout is measured on."""
    pytester.makepyfile(test_loaded_hang=HANG)
    pytester.syspathinsert(os.path.dirname(__file__))
    result = run(pytester, "--loop-block-timeout=0.6")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            hung("test_loaded_hang.py:13 in test_spins"),
            "fix: CPU-bound work holds the loop*",
        ]
    )
