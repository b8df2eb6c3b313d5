"""``python -m pytest_loopguard run [options] -- COMMAND ...``: a server watched outside pytest.

Runs the command with its Python processes watched (the startup hook, as under a session),
prints each block to stderr as it ends, and a summary when the command exits or on Ctrl-C; the
exit code is the command's. How a developer finds the line behind "all requests slow under
load": start the app under the runner, load it (``bench/load.py``), read the blocks.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from .._base.events import BlockEvent
from .._base.report import as_data, describe, location, over
from .parent import Parent

SCHEMA = "pytest-loopguard/run"
VERSION = 1


class UsageError(Exception):
    """A bad option: the message names it and what is valid."""


def _seconds(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if not 0 < value < float("inf"):
        raise UsageError(f"{name} {raw!r}: expected a number of seconds > 0, such as 0.1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pytest_loopguard run",
        description="Run COMMAND with its Python processes watched for event-loop blocks.",
    )
    parser.add_argument("--threshold", default="0.1", help="seconds a block must last (0.1)")
    parser.add_argument("--timeout", default=None, help="hang guard: interrupt after SECONDS")
    parser.add_argument("--strict", action="store_true", help="also known blocking calls")
    parser.add_argument("--report", default=None, help="write the blocks to this JSON file")
    parser.add_argument("command", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    return parser


class Run:
    """The blocks of one command's processes, printed as they come."""

    def __init__(self, out: TextIO, root: Path) -> None:
        self.out, self.root = out, root
        self.blocks: list[BlockEvent] = []
        self._lock = threading.Lock()

    def block(self, event: BlockEvent, since: float | None) -> None:
        with self._lock:
            self.blocks.append(event)
            self.out.write("\n".join(describe(event, self.root, "pytest-loopguard: ")) + "\n\n")
            self.out.flush()

    def summary(self) -> str:
        blocks = sorted(self.blocks, key=lambda e: -e.duration)
        processes = len({e.process for e in blocks})
        lines = [f"pytest-loopguard: {len(blocks)} block(s) in {processes} process(es)"]
        for event in blocks[:10]:
            took = over(event.duration, event.threshold)
            lines.append(f"  {took}  {location(event.frame, self.root)}  ({event.process})")
        return "\n".join(lines)


def main(argv: Sequence[str]) -> int:
    try:
        options = _parser().parse_args(list(argv))
        command = options.command[1:] if options.command[:1] == ["--"] else options.command
        if not command:
            raise UsageError("no command: python -m pytest_loopguard run [options] -- COMMAND")
        threshold = _seconds("--threshold", options.threshold)
        timeout = None if options.timeout is None else _seconds("--timeout", options.timeout)
        if timeout is not None and timeout <= threshold:
            raise UsageError(f"--timeout {options.timeout!r}: must be more than the threshold")
        report = _report_path(options.report)
    except UsageError as error:
        print(f"pytest-loopguard run: {error}", file=sys.stderr)
        return 2
    settings = {"threshold": threshold, "timeout": timeout, "strict": options.strict}
    return _run(command, settings, report)


def _report_path(raw: str | None) -> Path | None:
    if raw is None:
        return None
    path = Path(raw).absolute()
    if not path.parent.is_dir() or path.is_dir():
        raise UsageError(f"--report {raw!r}: expected a file path in an existing folder")
    return path


def _run(command: list[str], settings: dict[str, object], report: Path | None) -> int:
    run = Run(sys.stderr, Path.cwd())
    parent = Parent(settings, run.block)
    env = dict(os.environ)
    if not parent.start(env):
        print("pytest-loopguard run: cannot write to site-packages; not watched", file=sys.stderr)
    try:
        code = _wait(command, env)
    finally:
        parent.wait(1.0)
        parent.stop()
    print(run.summary(), file=sys.stderr)
    if parent.lost:
        print(f"pytest-loopguard: {parent.lost} block(s) lost (channel full)", file=sys.stderr)
    if report is not None:
        data = {"schema": SCHEMA, "version": VERSION, "command": command}
        data["blocks"] = [as_data(e, Path.cwd()) for e in run.blocks]
        report.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return code


def _wait(command: list[str], env: dict[str, str]) -> int:
    if command[0] in ("python", "python3"):
        # This interpreter: its environment has the hook (another Python's would not).
        command = [sys.executable, *command[1:]]
    try:
        child = subprocess.Popen(command, env=env)
    except OSError as error:
        print(f"pytest-loopguard run: cannot start {command[0]!r}: {error}", file=sys.stderr)
        return 127
    while True:
        try:
            code = child.wait()
            break
        except KeyboardInterrupt:
            # The terminal sent SIGINT to the command too; pass it on in case it was not.
            if child.poll() is None:
                child.send_signal(signal.SIGINT)
    return 128 - code if code < 0 else code
