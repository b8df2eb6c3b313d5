"""The whole run's view of blocks: the terminal section and the JSON report.

Blocks arrive as plain dicts on test reports (``report.loopguard_blocks``), so the controller of a
pytest-xdist run sees the same blocks as a serial run does.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ._frames import FrameInfo
from ._monitor import BlockEvent
from ._report import relative
from ._settings import Settings, allows

SCHEMA = "pytest-loopguard/report"
VERSION = 1
Block = dict[str, object]


def _frame(frame: FrameInfo, root: Path) -> Block:
    file = relative(frame.filename, root)
    return {"file": file, "line": frame.lineno, "function": frame.function, "source": frame.line}


def as_dict(event: BlockEvent, nodeid: str, settings: Settings, root: Path) -> Block:
    """One block as the summary and the JSON report (schema version 1) describe it."""
    allowed = allows(settings, event)
    verdict = "allowed" if allowed else ("warned" if settings.mode == "warn" else "failed")
    return {
        "nodeid": nodeid,
        "phase": event.phase,
        "fixture": event.fixture,
        "duration": round(event.duration, 4),
        "cpu_time": None if event.cpu_time is None else round(event.cpu_time, 4),
        "threshold": event.threshold,
        "location": None if event.frame is None else _frame(event.frame, root),
        "stack": [_frame(f, root) for f in event.stack],
        "hint": {"key": event.hint.key, "cause": event.hint.cause, "fix": event.hint.fix},
        "allowed": allowed,
        "verdict": verdict,
        "call": event.call,
    }


def _where(block: Block) -> str:
    location = block["location"]
    if not isinstance(location, dict):
        return "an unknown location"
    return f"{location['file']}:{location['line']} in {location['function']}"


def _line(block: Block) -> str:
    phase = str(block["phase"])
    if block["fixture"]:
        phase += f" of {block['fixture']}"
    duration = float(str(block["duration"]))
    return f"{duration:6.2f} s  {_where(block)}  [{phase}]  {block['nodeid']}"


class Collector:
    """Gathers the blocks of every test report; prints the section and writes the report."""

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config, self.settings = config, settings
        self.blocks: list[Block] = []

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect the blocks each test phase reported (from xdist workers too)."""
        self.blocks.extend(getattr(report, "loopguard_blocks", ()))

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """After the run: how many blocks in how many tests, and the worst ten."""
        if not self.blocks or self.config.get_verbosity() < -1:
            return  # like pytest's own sections: shown with -q, not with -qq
        counted = [b for b in self.blocks if not b["allowed"]]
        tests = len({b["nodeid"] for b in counted})
        terminalreporter.write_sep("=", "pytest-loopguard: event loop blocks")
        allowed = len(self.blocks) - len(counted)
        terminalreporter.write_line(
            f"{len(counted)} block(s) in {tests} test(s); {allowed} allowed block(s) not counted"
        )
        for block in sorted(counted, key=lambda b: -float(str(b["duration"])))[:10]:
            terminalreporter.write_line(_line(block))

    def pytest_sessionfinish(self, session: pytest.Session) -> None:
        """Write the JSON report once, on the controller (an xdist worker has workerinput)."""
        if self.settings.report is None or hasattr(self.config, "workerinput"):
            return
        blocks = sorted(self.blocks, key=lambda b: (str(b["nodeid"]), str(b["phase"])))
        document = {
            "schema": SCHEMA,
            "version": VERSION,
            "threshold": self.settings.threshold,
            "mode": self.settings.mode,
            "blocks": blocks,
        }
        Path(self.settings.report).write_text(json.dumps(document, indent=2) + "\n")
