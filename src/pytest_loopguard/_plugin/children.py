"""The session's children: blocks in the Python processes its tests start, made its own.

A block a child sends is recorded on the session's guard, labelled with the phase and fixture
of the test running now, so it is judged with that phase's own blocks: the same verdict, the
same message, and the process it was in. ``Watch`` asks ``settle`` before it judges a phase:
a child in the middle of a unit that may be a block (a request still being served, or one whose
response has gone out but whose verdict has not come yet) is waited for. A block that arrives
while no test runs goes to the summary, as outside any test.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import replace
from typing import TYPE_CHECKING

import pytest

from .._base.events import BlockEvent
from .._base.frames import in_project
from .._core.engine import ENGINE
from .._procs.parent import Parent
from .summary import Collector, as_dicts
from .verdict import Verdict

if TYPE_CHECKING:
    from .._core.guard import LoopGuard
    from .settings import Settings

UNWATCHED = (
    "child processes are not watched: site-packages is not writable for the startup hook "
    "(--no-loop-block-subprocesses says it is meant)"
)
_ACTIVE: Children | None = None  # the session's, while it watches
_FORK_HANDLER = False
_WAIT = 10.0  # at most, for a child's verdict as a phase ends (its hang guard may be off)


class Children:
    """Watches the session's children from ``start`` to ``stop``."""

    def __init__(
        self,
        settings: Settings,
        guard: LoopGuard,
        running: Callable[[], bool],
        collector: Collector,
    ) -> None:
        self.guard, self.running, self.collector = guard, running, collector
        self.root = os.path.join(str(collector.config.rootpath), "")
        self.outside: list[BlockEvent] = []  # blocks while no test ran
        # Strict mode stays in this process: its calls are counted per test phase, which a
        # child cannot tell apart; a child's blocks are caught by the threshold.
        wanted = {"threshold": settings.threshold, "timeout": settings.timeout}
        self.parent = Parent(wanted, self._block)
        self.limit = _WAIT if settings.timeout is None else settings.timeout + 1.0

    def start(self) -> bool:
        global _ACTIVE, _FORK_HANDLER
        if not self.parent.start():
            return False
        _ACTIVE = self
        if not _FORK_HANDLER:
            # Once a process, and inert once no session watches: a handler cannot be removed.
            os.register_at_fork(after_in_child=_forked)
            _FORK_HANDLER = True
        return True

    def stop(self) -> None:
        global _ACTIVE
        _ACTIVE = None
        self.parent.stop()

    def settle(self) -> None:
        """As a phase ends: until no child is in the middle of a possible block."""
        if self.parent.busy:
            self.parent.wait(self.limit)

    def _block(self, event: BlockEvent, since: float | None) -> None:
        if not any(in_project(file, module, self.root) for module, _, file in event.through):
            # Not the project's code: a notebook kernel running a cell, a tool the tests run,
            # a worker of some library. Shown (allowed), never failed.
            event = replace(event, allowed=True)
        guard = self.guard
        with ENGINE.ledger.lock:  # the engine records under it; a phase reads under it
            phase = guard.phase if self.running() else None
            if phase is not None and event.duration >= guard.threshold:
                guard.record(replace(event, phase=phase, fixture=guard.fixture))
                return
        if phase is None:
            self.outside.append(event)

    def pytest_sessionfinish(self) -> None:
        """Blocks outside any test (a server's start-up before the first test, its shutdown
        after the last) go to the summary and the report, as warnings."""
        self.parent.wait(self.limit)
        outside, self.outside = self.outside, []
        if outside:
            root = self.collector.config.invocation_params.dir
            allowed = tuple(e for e in outside if e.allowed)
            warned = tuple(e for e in outside if not e.allowed)
            verdict = Verdict(tuple(outside), warned=warned, allowed=allowed)
            self.collector.add(as_dicts(verdict, "", root))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        lost = self.parent.lost
        if lost:
            terminalreporter.write_line(
                f"pytest-loopguard: {lost} block(s) in child processes were lost: the channel "
                "was full (a flood of blocks); the ones shown were received"
            )


def _forked() -> None:
    """A fork of this session (``multiprocessing.Process(target=uvicorn.run)`` with the fork
    start method): watched as a child of it, not as the session."""
    kids = _ACTIVE
    if kids is not None:
        from .._procs.child import forked_session

        forked_session(kids.guard)


def stop_inherited_hook() -> None:
    """A pytest session started by a watched process (pytester, a tox-like runner) watches
    itself: the startup hook it inherited stops, or its blocks would be the parent's too."""
    from .._procs.parent import stop_inherited

    stop_inherited()
