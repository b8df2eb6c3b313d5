"""Every text a user reads, from plain events: the headline, the CPU line, the stack, the
summary and the GitHub annotation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from pytest_loopguard._base.events import BlockEvent, Hint
from pytest_loopguard._base.frames import FrameInfo
from pytest_loopguard._base.report import annotation, headline, render, summary_lines

ROOT = Path("/srv/app")
SLEEP = Hint("sleep", "time.sleep blocks every request", "use `await asyncio.sleep(...)`")
TEST = FrameInfo(
    "/srv/app/tests/test_users.py", 9, "test_list", "tests.test_users", "await client.get('/users')"
)
ROUTE = FrameInfo("/srv/app/app/users.py", 42, "list_users", "app.users", "time.sleep(0.3)")
EVENT = BlockEvent(
    duration=0.3012,
    threshold=0.1,
    cpu_time=0.0009,
    frame=ROUTE,
    stack=(TEST, ROUTE),
    hint=SLEEP,
    phase="call",
    thread="MainThread",
)


def test_the_failure_reads_top_down() -> None:
    assert render([EVENT], ROOT).splitlines() == [
        "LoopBlockedError: event loop blocked for 0.30 s (threshold 0.10 s) at app/users.py:42 "
        "in list_users",
        "    time.sleep(0.3)",
        "fix: time.sleep blocks every request — use `await asyncio.sleep(...)`",
        "wall 0.30 s, CPU 0.00 s: waiting (not on the CPU)",
        "stack while blocked (most recent call last):",
        "  tests/test_users.py:9 in test_list",
        "    await client.get('/users')",
        "  app/users.py:42 in list_users",
        "    time.sleep(0.3)",
    ]


def test_the_worst_block_first_and_the_others_after() -> None:
    worse = replace(EVENT, duration=0.9)
    lines = render([EVENT, worse], ROOT).splitlines()
    assert lines[0].startswith("LoopBlockedError: event loop blocked for 0.90 s")
    assert "1 more block(s) of the event loop in this phase:" in lines
    assert any(line.startswith("event loop blocked for 0.30 s") for line in lines)


def test_cpu_bound_a_busy_machine_and_native_work() -> None:
    cpu = render([replace(EVENT, cpu_time=0.29, cpu_wait=0.14)], ROOT).splitlines()[3]
    assert cpu == (
        "wall 0.30 s, CPU 0.29 s: CPU-bound (and 0.14 s more waiting for a CPU: a busy "
        "machine, not counted)"
    )
    native = render([replace(EVENT, other_cpu=0.41)], ROOT).splitlines()[3]
    assert native.endswith("waiting on native work (0.41 s of CPU in other threads)")
    unknown = render([replace(EVENT, cpu_time=None)], ROOT).splitlines()[3]
    assert unknown == "wall 0.30 s; thread CPU time unknown on this platform"


def test_where_it_happened() -> None:
    in_fixture = replace(EVENT, phase="setup", fixture="db", thread="server-loop")
    assert headline(in_fixture, ROOT).endswith(
        "in list_users (during setup of fixture 'db') (loop in thread 'server-loop')"
    )
    hang = replace(EVENT, timed_out=True, duration=0.9, cpu_wait=0.1)
    assert headline(hang, ROOT).startswith("event loop hung: a callback held it for 1.00 s")
    strict = replace(EVENT, call="time.sleep()", samples=5)
    assert headline(strict, ROOT) == (
        "blocking call time.sleep() on the event loop at app/users.py:42 in list_users "
        "(strict mode: fails however short, 5 times)"
    )


BLOCK = {
    "nodeid": "tests/test_users.py::test_list",
    "phase": "call",
    "fixture": None,
    "duration": 0.3012,
    "threshold": 0.1,
    "location": {"file": "app/users.py", "line": 42, "function": "list_users"},
    "hint": {"key": "sleep", "cause": SLEEP.cause, "fix": SLEEP.fix},
    "verdict": "failed",
    "call": None,
}


def test_the_summary_lines() -> None:
    slower = {**BLOCK, "duration": 0.5, "fixture": "db", "phase": "setup"}
    assert summary_lines([BLOCK, slower], allowed=1) == [
        "2 block(s) in 1 test(s); 1 allowed block(s) not counted",
        "  0.50 s  app/users.py:42 in list_users  [setup of db]  tests/test_users.py::test_list",
        "  0.30 s  app/users.py:42 in list_users  [call]  tests/test_users.py::test_list",
    ]


def test_the_github_annotation_escapes_what_workflow_commands_need() -> None:
    assert annotation(BLOCK) == (
        "::error file=app/users.py,line=42,title=pytest-loopguard::event loop blocked for 0.30 s "
        "(threshold 0.10 s) in tests/test_users.py::test_list (call)%0Afix: time.sleep blocks "
        "every request — use `await asyncio.sleep(...)`"
    )
    odd = {**BLOCK, "verdict": "warned", "location": {**BLOCK["location"], "file": "a,b:c.py"}}
    assert annotation(odd).startswith("::warning file=a%2Cb%3Ac.py,line=42,")


def test_a_duration_just_past_the_threshold_reads_as_more() -> None:
    from pytest_loopguard._base.report import over

    assert over(0.35, 0.1) == "0.35 s (threshold 0.10 s)"
    assert over(0.1004, 0.1) == "0.1004 s (threshold 0.1000 s)"
    assert over(0.1031, 0.1) == "0.103 s (threshold 0.100 s)"
    assert over(0.1049, 0.1) == "0.105 s (threshold 0.100 s)"
    headline_text = headline(replace(EVENT, duration=0.1004, threshold=0.1), ROOT)
    assert headline_text.startswith("event loop blocked for 0.1004 s (threshold 0.1000 s)")
