"""The benchmark scripts still run and print what the README quotes (no timing is asserted:
figures from a shared machine belong in the README, not in a test)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).parent.parent / "bench" / "overhead.py"
LOOP_RUNS = BENCH.with_name("loop_runs.py")


def _overhead(*args: str) -> str:
    # As a user runs it: this session's PYTEST_* (plugin autoload off, the current test) not
    # passed down to the suites the script times.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    done = subprocess.run(
        [sys.executable, str(BENCH), "--rounds", "1", "--debug-rounds", "0", "--no-warm-up", *args],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_callbacks_with_the_idle_thread_floor() -> None:
    # On uvloop: the stdlib loop's suite is the same script without --uvloop (tiny-async below).
    out = _overhead("--tests", "3", "--sleeps", "10", "--floor", "--uvloop").splitlines()
    assert any(line.strip().startswith("on: median") and "target <=" in line for line in out)
    assert "  CPU time (user + system):" in out
    header = "  against one idle thread (a thread on the shared file table), wall, then CPU:"
    floor = out.index(header)
    assert [line.split(":")[0].strip() for line in out[floor + 1 : floor + 5]] == [
        "thread",
        "on",
        "thread",
        "on",
    ]


def test_tiny_suites_run() -> None:
    out = _overhead("--suite", "tiny-sync", "--suite", "tiny-async", "--tests", "5")
    assert "tiny-sync: 5 tests on asyncio; 1 rounds" in out
    assert "tiny-async: 5 tests on asyncio; 1 rounds" in out


@pytest.mark.parametrize("loop", [[], ["--uvloop"]], ids=["asyncio", "uvloop"])
def test_loop_runs_prints_each_configuration(loop: list[str]) -> None:
    done = subprocess.run(
        [sys.executable, str(LOOP_RUNS), "--sleeps", "10", "--rounds", "2", *loop],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    names = [line.split(":")[0].strip() for line in done.stdout.splitlines()]
    assert names == ["none", "guard", "shared", "own-table"]
    assert done.stdout.splitlines()[0].endswith(", 1.000x")


def test_startup_prints_each_kind_of_start() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name("startup.py")), "--rounds", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    kinds = [line.split(":")[0].split()[-1] for line in done.stdout.splitlines()[1:]]
    assert kinds == ["none", "inert", "watched"] * 2


SMALL_LOAD = ("--requests", "40", "--concurrency", "4")


def test_server_load_prints_both_rates() -> None:
    done = subprocess.run(
        [sys.executable, str(BENCH.with_name("server_load.py")), "--rounds", "1", *SMALL_LOAD],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout.splitlines()
    assert out[-3].startswith("off: median "), out
    assert out[-2].startswith(" on: median "), out
    assert "target <= 1.03x" in out[-2]


def test_sqlalchemy_instructions_child_runs_the_workload(tmp_path: Path) -> None:
    """The callgrind script's measured run, without callgrind (a whole count takes minutes)."""
    pytest.importorskip("aiosqlite")
    script = BENCH.with_name("sqlalchemy_instructions.py")
    url = f"sqlite+aiosqlite:///{tmp_path}/bench.db"
    for mode in ("off", "on"):
        done = subprocess.run(
            [sys.executable, str(script), "--child", mode, "20", "--url", url],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
