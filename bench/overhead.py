"""Overhead of pytest-loopguard: plugin off vs on, interleaved, on three kinds of suite.

    python bench/overhead.py [--rounds 5] [--tests 300] [--sleeps 3000] [--debug-rounds 1]
    python bench/overhead.py --suite tiny-async --suite tiny-sync  # 2,000 tiny tests each
    python bench/overhead.py --extra "-n 2"                        # under pytest-xdist
    python bench/overhead.py --on-extra=--loop-block-report=r.json  # with the JSON report
    python bench/overhead.py --variant strict=--loop-block-strict   # strict mode, in the rotation
    python bench/overhead.py --uvloop                               # every test on uvloop
    python bench/overhead.py --uvloop --floor                       # and plugin off + idle thread
    python bench/overhead.py --suite trio-callbacks --suite tiny-trio  # pytest-trio suites

``callbacks`` (the default): async tests, each awaiting ``asyncio.sleep(0)`` many times and
sending one request to a small FastAPI app through ``httpx.ASGITransport``. ``tiny-async``: 2,000
async tests that each await ``asyncio.sleep(0)`` once; ``tiny-sync``: 2,000 sync tests that do
nothing — there the plugin's cost per test is all there is, so it must be close to nothing.
``trio-callbacks`` and ``tiny-trio``: the same shapes on pytest-trio (``trio.sleep(0)``).
Each suite runs with the plugin off (``-p no:pytest_loopguard``) and on, alternating; the
medians, the median of paired ratios, the target and the cost per test are printed.
``--loop-debug`` (asyncio's debug mode) is timed the same way on the callback suite. Nothing is
asserted: the machine is shared and noisy, so read medians and ratios, never one absolute time.
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TARGETS = {
    "callbacks": 1.03,
    "tiny-async": 1.05,
    "tiny-sync": 1.02,
    "uvloop": 1.05,
    "trio-callbacks": 1.05,
    "tiny-trio": 1.05,
}

APP = """
from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def read_item(item_id: int):
    return {"id": item_id}
"""

TESTS = """
import asyncio

import httpx
import pytest

from app import app


@pytest.mark.parametrize("i", range({tests}))
async def test_callbacks(i):
    for _ in range({sleeps}):
        await asyncio.sleep(0)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
        assert (await client.get(f"/items/{{i}}")).json() == {{"id": i}}
"""

TINY_ASYNC = """
import asyncio

import pytest


@pytest.mark.parametrize("i", range({tests}))
async def test_tiny(i):
    await asyncio.sleep(0)
"""

TINY_SYNC = """
import pytest


@pytest.mark.parametrize("i", range({tests}))
def test_tiny(i):
    assert i >= 0
"""

TRIO_CALLBACKS = """
import pytest
import trio


@pytest.mark.parametrize("i", range({tests}))
async def test_callbacks(i):
    for _ in range({sleeps}):
        await trio.sleep(0)
"""

TINY_TRIO = """
import pytest
import trio


@pytest.mark.parametrize("i", range({tests}))
async def test_tiny(i):
    await trio.sleep(0)
"""

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

# pytest-trio runs every async test (trio mode); pytest-asyncio must then not claim them.
TRIO_INI = """
[pytest]
asyncio_mode = strict
asyncio_default_fixture_loop_scope = function
trio_mode = true
"""

BODIES = {"tiny-async": TINY_ASYNC, "tiny-sync": TINY_SYNC, "tiny-trio": TINY_TRIO}

# Every configuration starts its tests with the collector just run. Without it, the plugin's
# import-time objects shift when the collector's full collections fall: one (60 ms on the
# callbacks suite, 2% of a run) fell inside the run with the plugin on and after it with the
# plugin off, every time, for a reason that has nothing to do with the cost per test.
CONFTEST = """
import gc
{imports}

def pytest_sessionstart(session):
    gc.collect()
"""

# pytest-asyncio's hook: each test runs on a loop from this factory instead of the stdlib's.
UVLOOP_CONFTEST = """

def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
"""

CONFIGS = {
    "off": ["-p", "no:pytest_loopguard"],
    "on": [],
}

# ``--floor``: the plugin off, and one thread that only waits for the whole session. Any second
# thread that shares the process's file table makes every descriptor the loop's thread uses in
# a system call dearer (Linux then takes a reference on the file for each ``epoll_wait``); a loop
# that polls on every iteration runs measurably slower for it. The watchdog keeps a table of its
# own (``_filetable``) and so does not pay this, until a trio run starts.
IDLE_THREAD = """
import threading

_stop = threading.Event()
_thread = threading.Thread(target=_stop.wait, name="idle", daemon=True)


def pytest_configure(config):
    _thread.start()


def pytest_unconfigure(config):
    _stop.set()
    _thread.join()
"""
FLOOR = ["-p", "no:pytest_loopguard", "-p", "idle_thread"]


def make_suite(root: Path, suite: str, tests: int, sleeps: int, uvloop: bool = False) -> int:
    """Write one suite into ``root``; returns how many tests it has."""
    trio = suite in ("trio-callbacks", "tiny-trio")
    (root / "pytest.ini").write_text(textwrap.dedent(TRIO_INI if trio else INI))
    conftest = CONFTEST.format(imports="import uvloop\n" if uvloop else "")
    (root / "conftest.py").write_text(conftest + (UVLOOP_CONFTEST if uvloop else ""))
    if suite == "callbacks":
        (root / "app.py").write_text(textwrap.dedent(APP))
        body = textwrap.dedent(TESTS).format(tests=tests, sleeps=sleeps)
    elif suite == "trio-callbacks":
        body = textwrap.dedent(TRIO_CALLBACKS).format(tests=tests, sleeps=sleeps)
    else:
        tests = 2000 if tests == 300 else tests  # --tests left at its default: 2,000 tiny tests
        body = BODIES[suite].format(tests=tests)
    (root / "test_bench.py").write_text(body)
    (root / "idle_thread.py").write_text(IDLE_THREAD)  # importable: ``python -m`` adds the cwd
    return tests


# Python's default: modules compiled once and cached. A PYTHONDONTWRITEBYTECODE=1 left in the
# environment (some CI images set it) recompiles pytest and every plugin on each run, which
# doubles a tiny suite's start-up time and would measure the compiler rather than the plugin.
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def timed(root: Path, extra: list[str]) -> tuple[float, float]:
    """One run's wall time and CPU time (user + system, every thread of it)."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True, env=ENV)
    elapsed = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if done.returncode != 0:
        sys.exit(f"benchmark suite failed ({' '.join(extra)}):\n{done.stdout[-3000:]}")
    cpu = after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime
    return elapsed, cpu


Times = dict[str, list[float]]


def measure(
    root: Path, configs: dict[str, list[str]], rounds: int, warm_up: bool = True
) -> tuple[Times, Times]:
    """Wall and CPU times of each configuration, alternating, after a warm-up run of each."""
    for flags in configs.values() if warm_up else ():
        timed(root, flags)  # a warm-up run of each: caches compiled, files in the page cache
    walls: Times = {name: [] for name in configs}
    cpus: Times = {name: [] for name in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            wall, cpu = timed(root, configs[name])
            walls[name].append(wall)
            cpus[name].append(cpu)
            print(f"  round {r + 1} {name:>6}: {wall:.2f} s ({cpu:.2f} s CPU)", flush=True)
    return walls, cpus


def report(
    times: dict[str, list[float]], tests: int, target: float | None = None, base: str = "off"
) -> None:
    base_median = statistics.median(times[base])
    for name, values in times.items():
        median = statistics.median(values)
        pair_ratios = [v / b for v, b in zip(values, times[base], strict=True)]
        line = f"{name:>11}: median {median:.2f} s, ratio {median / base_median:.3f}x"
        if name != base:
            line += f" (median of paired ratios {statistics.median(pair_ratios):.3f}x"
            line += f", {(median - base_median) / tests * 1000:+.3f} ms a test)"
        if name == "on" and target is not None:
            line += f", target <= {target:.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--suite",
        action="append",
        choices=["callbacks", "tiny-async", "tiny-sync", "trio-callbacks", "tiny-trio"],
        help="which suite(s) to time (repeatable; default: callbacks)",
    )
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--sleeps", type=int, default=3000)
    parser.add_argument("--debug-rounds", type=int, default=1, help="0 skips --loop-debug")
    parser.add_argument(
        "--no-warm-up",
        action="store_true",
        help="skip the warm-up runs (a smoke test of the script)",
    )
    parser.add_argument("--extra", default="", help="extra pytest args for every config")
    parser.add_argument("--on-extra", default="", help="extra pytest args with the plugin on")
    parser.add_argument("--uvloop", action="store_true", help="run every test on uvloop")
    parser.add_argument(
        "--floor",
        action="store_true",
        help="also time the plugin off with one idle thread, and the plugin on against that",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="one more plugin-on configuration timed in the same rotation (repeatable)",
    )
    args = parser.parse_args()
    extra = args.extra.split()
    configs = {name: [*flags, *extra] for name, flags in CONFIGS.items()}
    configs["on"] += args.on_extra.split()
    for variant in args.variant:
        name, _, flags = variant.partition("=")
        configs[name] = [*flags.split(), *extra]
    if args.floor:
        configs["thread"] = [*FLOOR, *extra]
    for suite in args.suite or ["callbacks"]:
        run_suite(suite, args, configs)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")


def run_suite(suite: str, args: argparse.Namespace, configs: dict[str, list[str]]) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        tests = make_suite(root, suite, args.tests, args.sleeps, args.uvloop)
        loop = "uvloop" if args.uvloop else "trio" if "trio" in suite else "asyncio"
        what = {
            "callbacks": f"x {args.sleeps} sleep(0) + 1 ASGI request ",
            "trio-callbacks": f"x {args.sleeps} trio.sleep(0) ",
        }.get(suite, "")
        print(f"{suite}: {tests} tests {what}on {loop}; {args.rounds} rounds")
        target = TARGETS["uvloop" if args.uvloop else suite]
        walls, cpus = measure(root, configs, args.rounds, warm_up=not args.no_warm_up)
        report(walls, tests, target)
        # Less disturbed by the machine's other load than wall time; the watchdog's included.
        print("  CPU time (user + system):")
        report(cpus, tests)
        if "thread" in walls:
            print("  against one idle thread (a thread on the shared file table), wall, then CPU:")
            report({k: walls[k] for k in ("thread", "on")}, tests, base="thread")
            report({k: cpus[k] for k in ("thread", "on")}, tests, base="thread")
        if args.debug_rounds and suite == "callbacks":
            debug = {"off": configs["off"], "loop-debug": ["--loop-debug", *configs["off"][2:]]}
            print(f"--loop-debug, {args.debug_rounds} round(s):")
            report(measure(root, debug, args.debug_rounds)[0], tests)


if __name__ == "__main__":
    main()
