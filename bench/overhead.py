"""Overhead of pytest-loopguard on a callback-heavy async suite: plugin off vs on, interleaved.

    python bench/overhead.py [--rounds 5] [--tests 300] [--sleeps 3000] [--debug-rounds 1]
    python bench/overhead.py --extra "-n 2"                        # under pytest-xdist
    python bench/overhead.py --on-extra=--loop-block-report=r.json  # with the JSON report
    python bench/overhead.py --variant strict=--loop-block-strict   # strict mode, in the rotation
    python bench/overhead.py --uvloop                               # every test on uvloop

Generates a suite of async tests, each awaiting ``asyncio.sleep(0)`` many times and sending one
request to a small FastAPI app through ``httpx.ASGITransport``; runs it with the plugin off
(``-p no:pytest_loopguard``) and on, alternating, and prints the medians and the ratio next to the
target. ``--loop-debug`` (asyncio's debug mode) is timed the same way. Nothing is asserted: the
machine is shared and noisy, so read medians and ratios, never one absolute time.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

TARGET = 1.05

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

INI = """
[pytest]
asyncio_mode = auto
asyncio_default_fixture_loop_scope = function
"""

# pytest-asyncio's hook: each test runs on a loop from this factory instead of the stdlib's.
UVLOOP_CONFTEST = """
import uvloop


def pytest_asyncio_loop_factories(config, item):
    return {"uvloop": uvloop.new_event_loop}
"""

CONFIGS = {
    "off": ["-p", "no:pytest_loopguard"],
    "on": [],
}


def make_suite(root: Path, tests: int, sleeps: int, uvloop: bool = False) -> None:
    (root / "app.py").write_text(textwrap.dedent(APP))
    if uvloop:
        (root / "conftest.py").write_text(UVLOOP_CONFTEST)
    (root / "test_bench.py").write_text(textwrap.dedent(TESTS).format(tests=tests, sleeps=sleeps))
    (root / "pytest.ini").write_text(textwrap.dedent(INI))


def timed(root: Path, extra: list[str]) -> float:
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *extra]
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"benchmark suite failed ({' '.join(extra)}):\n{done.stdout[-3000:]}")
    return elapsed


def measure(root: Path, configs: dict[str, list[str]], rounds: int) -> dict[str, list[float]]:
    times: dict[str, list[float]] = {name: [] for name in configs}
    for r in range(rounds):
        order = list(configs) if r % 2 == 0 else list(reversed(configs))
        for name in order:
            times[name].append(timed(root, configs[name]))
            print(f"  round {r + 1} {name:>6}: {times[name][-1]:.2f} s", flush=True)
    return times


def report(times: dict[str, list[float]], base: str = "off") -> None:
    base_median = statistics.median(times[base])
    for name, values in times.items():
        median = statistics.median(values)
        pair_ratios = [v / b for v, b in zip(values, times[base], strict=True)]
        line = f"{name:>11}: median {median:.2f} s, ratio {median / base_median:.3f}x"
        if name != base:
            line += f" (median of paired ratios {statistics.median(pair_ratios):.3f}x)"
        if name == "on":
            line += f", target <= {TARGET:.2f}x"
        print(line)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--tests", type=int, default=300)
    parser.add_argument("--sleeps", type=int, default=3000)
    parser.add_argument("--debug-rounds", type=int, default=1, help="0 skips --loop-debug")
    parser.add_argument("--extra", default="", help="extra pytest args for every config")
    parser.add_argument("--on-extra", default="", help="extra pytest args with the plugin on")
    parser.add_argument("--uvloop", action="store_true", help="run every test on uvloop")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        metavar="NAME=ARGS",
        help="one more plugin-on configuration timed in the same rotation (repeatable)",
    )
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        make_suite(root, args.tests, args.sleeps, args.uvloop)
        extra = args.extra.split()
        configs = {name: [*flags, *extra] for name, flags in CONFIGS.items()}
        configs["on"] += args.on_extra.split()
        for variant in args.variant:
            name, _, flags = variant.partition("=")
            configs[name] = [*flags.split(), *extra]
        loop = "uvloop" if args.uvloop else "asyncio"
        print(
            f"{args.tests} tests x {args.sleeps} sleep(0) + 1 ASGI request on {loop}; "
            f"{args.rounds} rounds"
        )
        report(measure(root, configs, args.rounds))
        if args.debug_rounds:
            debug = {"off": configs["off"], "loop-debug": ["--loop-debug", *extra]}
            print(f"--loop-debug, {args.debug_rounds} round(s):")
            report(measure(root, debug, args.debug_rounds))
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} cpus")


if __name__ == "__main__":
    main()
