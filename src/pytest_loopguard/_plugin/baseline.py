"""A baseline of known findings: matched blocks are *known* (reported, never failed), entries no
finding hit in a run that ran their test are *fixed*, and ``--loop-baseline-update`` rewrites
the file from the run.

An entry is what stays true when unrelated code moves: the test's node id, the kind, and the
user's blocking line by its file, function and source text — not its number, so a line added
above (or elsewhere in the function) leaves it known, while editing the blocking line itself,
renaming the test or moving the file makes a new finding (and the old entry fixed).

The file is text, one entry a line, tab-separated and sorted, so a diff review reads it:
``kind <TAB> node id <TAB> file <TAB> function <TAB> source``. ``#`` starts a comment.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from contextlib import suppress
from dataclasses import dataclass
from pathlib import Path

import pytest

from .._base.events import BlockEvent
from .._base.frames import FrameInfo
from .._base.report import relative

# block: a block of the event loop; nplusone, leak: the SQLAlchemy guards' N+1 queries and
# connections never given back, keyed by the line that ran the query or took the connection.
KINDS = ("block", "nplusone", "leak", "task", "exception", "coroutine", "thread")
FINDING = "loopguard.finding"  # the user property a guard's finding travels on (xdist too)
_FIELDS = ("kind", "node id", "file", "function", "source")
HEADER = (
    "# pytest-loopguard baseline: known findings, one a line, tab-separated:\n"
    "# kind, test node id, file, function, source line. Rewrite it with --loop-baseline-update;\n"
    "# a run lists the entries no finding hit any more (--loop-baseline-strict fails on them).\n"
)


@dataclass(frozen=True, order=True)
class Entry:
    """One known finding."""

    kind: str
    nodeid: str
    file: str
    function: str
    source: str

    def line(self) -> str:
        return "\t".join((self.kind, self.nodeid, self.file, self.function, self.source))

    def finding(self, lineno: int, verdict: str) -> dict[str, object]:
        """A guard's finding as the JSON report's ``findings`` hold it."""
        found: dict[str, object] = {"kind": self.kind, "nodeid": self.nodeid, "file": self.file}
        found.update(line=lineno, function=self.function, source=self.source, verdict=verdict)
        return found


def entry_of_finding(found: Mapping[str, object]) -> Entry:
    """The entry of a finding as ``Entry.finding`` wrote it."""
    fields = ("kind", "nodeid", "file", "function", "source")
    kind, nodeid, file, function, source = (str(found.get(f, "")) for f in fields)
    return Entry(kind, nodeid, file, function, source)


def findings_of(report: pytest.TestReport) -> list[dict[str, object]]:
    """The guards' findings a test report carries."""
    return [
        value
        for name, value in report.user_properties
        if name == FINDING and isinstance(value, dict)
    ]


def _clean(text: str) -> str:
    # One line, no tab: what the file's format can hold, the same on reading and writing.
    return " ".join(str(text).split())


def entry_of(block: Mapping[str, object]) -> Entry | None:
    """The entry a block (as the JSON report has it) matches; None without a user's line."""
    where = block.get("location")
    if not isinstance(where, Mapping):
        return None
    fields = (block.get("nodeid"), where.get("file"), where.get("function"), where.get("source"))
    nodeid, file, function, source = (_clean(str(f or "")) for f in fields)
    return Entry("block", nodeid, file, function, source)


def entry_of_event(event: BlockEvent, nodeid: str, root: Path) -> Entry | None:
    """The entry of a block as the engine reports it: the same as ``entry_of`` its report."""
    return entry_at("block", nodeid, event.frame, root)


def entry_at(kind: str, nodeid: str, where: FrameInfo | None, root: Path) -> Entry | None:
    """The entry of a guard's finding at the user's line ``where``."""
    if where is None:
        return None
    file = _clean(relative(where.filename, root))
    return Entry(kind, _clean(nodeid), file, _clean(where.function), _clean(where.line))


def parse(text: str, path: str) -> frozenset[Entry]:
    """The entries of a baseline file; a UsageError naming the file and line otherwise."""
    entries = set()
    for number, raw in enumerate(text.splitlines(), 1):
        if not raw.strip() or raw.lstrip().startswith("#"):
            continue
        fields = raw.split("\t")
        if len(fields) != len(_FIELDS):
            raise pytest.UsageError(
                f"pytest-loopguard: {path}:{number} is not a baseline entry: expected "
                f"{len(_FIELDS)} tab-separated fields ({', '.join(_FIELDS)}), got {len(fields)} "
                "(regenerate the file with --loop-baseline-update)"
            )
        if fields[0] not in KINDS:
            raise pytest.UsageError(
                f"pytest-loopguard: {path}:{number}: {fields[0]!r} is not a kind of finding: "
                f"expected one of {', '.join(KINDS)}"
            )
        entries.add(Entry(*(_clean(f) for f in fields)))
    return frozenset(entries)


def load(path: str, update: bool) -> frozenset[Entry]:
    """The baseline at ``path`` (made absolute by the caller); missing is fine when updating."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        if update:
            return frozenset()
        raise pytest.UsageError(
            f"pytest-loopguard: the baseline {path} (loop_baseline) does not exist: create it "
            "with --loop-baseline-update"
        ) from None
    except (OSError, UnicodeDecodeError) as exc:
        raise pytest.UsageError(
            f"pytest-loopguard: the baseline {path} (loop_baseline) cannot be read: {exc}"
        ) from None
    return parse(text, path)


def write(path: str, entries: Iterable[Entry]) -> None:
    """The baseline file of ``entries``: sorted, one a line, under the header."""
    write_text(path, HEADER + "".join(e.line() + "\n" for e in sorted(set(entries))))


def write_text(path: str, text: str) -> None:
    """Write the file whole or not at all: a temporary file beside it, then renamed over it."""
    folder = os.path.dirname(path) or "."
    fd, temporary = tempfile.mkstemp(prefix=".loopguard-", dir=folder, text=True)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.write(text)
        os.replace(temporary, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(temporary)
        raise


class Tracker:
    """Registered only when a baseline is set (a hook call for every report costs every test),
    on the process that sees every report (a serial run, or an xdist controller): which tests
    ran and which entries their findings hit; at the end, the fixed entries and the rewrite."""

    def __init__(self, path: str, entries: frozenset[Entry], update: bool, strict: bool) -> None:
        self.path, self.entries, self.update, self.strict = path, entries, update, strict
        self.ran: set[str] = set()
        self.found: set[Entry] = set()  # every counted finding's entry: known or new
        # The tests this process collected (deselected ones too) and their modules: an entry
        # of a collected module whose test is gone (renamed, removed) is fixed too. None on an
        # xdist controller, which collects nothing: there only tests that ran count.
        self.collected: set[str] | None = None
        self.deselected: set[str] = set()
        self.rootpath: Path | None = None
        self._collected_modules: set[str] | None = None

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.ran.add(report.nodeid)
        for block in getattr(report, "loopguard_blocks", ()):
            entry = entry_of(block) if block.get("verdict") != "allowed" else None
            if entry is not None:
                self.found.add(entry)
        for found in findings_of(report):
            if found.get("verdict") != "allowed":
                self.found.add(entry_of_finding(found))

    def pytest_deselected(self, items: list[pytest.Item]) -> None:
        self.deselected.update(item.nodeid for item in items)

    @pytest.hookimpl(trylast=True)
    def pytest_collection_finish(self, session: pytest.Session) -> None:
        self.collected = {item.nodeid for item in session.items} | self.deselected

    def _gone(self, entry: Entry) -> bool:
        """Its file is gone (moved, removed), or was collected without its test (renamed)."""
        module = entry.nodeid.partition("::")[0]
        if self.rootpath is not None and not (self.rootpath / module).exists():
            return True
        collected = self.collected
        if collected is None or entry.nodeid in collected:
            return False
        return module in self._modules()

    def _modules(self) -> set[str]:
        # Once, not once an entry: a big suite collects thousands of tests.
        if self._collected_modules is None:
            self._collected_modules = {n.partition("::")[0] for n in self.collected or ()}
        return self._collected_modules

    def fixed(self) -> list[Entry]:
        """Entries no finding hit though their test ran (or is gone): to be removed."""
        return sorted(
            e
            for e in self.entries
            if e not in self.found and (e.nodeid in self.ran or self._gone(e))
        )

    def updated(self) -> set[Entry]:
        """The new file: this run's findings, and the entries of tests this run did not run
        (and that still exist)."""
        kept = {e for e in self.entries if e.nodeid not in self.ran and not self._gone(e)}
        return self.found | kept

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        if self.update:
            count = len(self.updated())
            terminalreporter.write_line(
                f"pytest-loopguard: baseline {self.path} written: {count} entr"
                f"{'y' if count == 1 else 'ies'}"
            )
            return
        guards = sum(e.kind != "block" for e in self.found & self.entries)
        if guards:
            terminalreporter.write_line(
                f"pytest-loopguard: {guards} known finding(s) of the SQLAlchemy guards "
                "(N+1, leaks) in the baseline not reported"
            )
        fixed = self.fixed()
        if not fixed:
            return
        terminalreporter.write_sep("=", "pytest-loopguard: baseline entries fixed — remove them")
        for entry in fixed:
            terminalreporter.write_line(
                f"{entry.nodeid}: {entry.file} in {entry.function}: {entry.source}"
            )
        terminalreporter.write_line(
            f"{len(fixed)} entr{'y' if len(fixed) == 1 else 'ies'} of {self.path} no finding hit: "
            "remove them, or run with --loop-baseline-update"
            + (" (--loop-baseline-strict fails the run on them)" if self.strict else "")
        )

    @pytest.hookimpl(trylast=True)
    def pytest_sessionfinish(self, session: pytest.Session, exitstatus: int) -> None:
        if self.update:
            write(self.path, self.updated())
        elif self.strict and self.fixed() and exitstatus == pytest.ExitCode.OK:
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
