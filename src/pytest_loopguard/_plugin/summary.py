"""The whole run's view of blocks: the terminal section and the JSON report.

Blocks arrive as plain dicts on test reports (``report.loopguard_blocks``), so the controller of a
pytest-xdist run sees the same blocks as a serial run does.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from .._base.events import BlockEvent
from .settings import Settings
from .verdict import Verdict

SCHEMA = "pytest-loopguard/report"
VERSION = 6
_OTHER_ANNOTATOR = "pytest_github_actions_annotate_failures"
Block = dict[str, object]


def as_dicts(verdict: Verdict, nodeid: str, root: Path) -> list[Block]:
    """A phase's blocks as the summary and the JSON report (schema version 5) describe them."""
    return [_as_dict(e, nodeid, verdict.of(e), root) for e in verdict.events]


def _as_dict(event: BlockEvent, nodeid: str, verdict: str, root: Path) -> Block:
    from .._base.report import as_data

    data = as_data(event, root)
    tail = {key: data.pop(key) for key in ("call", "backend", "process")}
    return {"nodeid": nodeid, **data, "allowed": verdict == "allowed", "verdict": verdict, **tail}


def junit_properties(blocks: list[Block]) -> list[tuple[str, object]]:
    """Each block as JUnit ``<property>`` entries, for CI dashboards to chart (the JSON report
    stays the full record)."""
    found: list[tuple[str, object]] = []
    for block in blocks:
        where = block["location"]
        place = f"{where['file']}:{where['line']}" if isinstance(where, dict) else ""
        hint = block["hint"]
        key = hint["key"] if isinstance(hint, dict) else ""
        found += [
            ("loopguard.duration", block["duration"]),
            ("loopguard.location", place),
            ("loopguard.phase", block["phase"]),
            ("loopguard.hint", key),
            ("loopguard.verdict", block["verdict"]),
        ]
        if block.get("process"):
            found.append(("loopguard.process", block["process"]))
    return found


class Collector:
    """Gathers the blocks of every test report; prints the section and writes the report.

    In a serial run the plugin hands it each report's blocks as it makes the report; on the
    controller of a pytest-xdist run, where no test runs, ``Relay`` reads them off the reports
    that the workers send (a hook call for every report, which a serial run need not pay).
    """

    def __init__(self, config: pytest.Config, settings: Settings) -> None:
        self.config, self.settings = config, settings
        self.blocks: list[Block] = []
        self.ran: set[str] = set()  # with a report: every test that ran (see Ran)
        self.findings: list[Block] = []  # with a report: the SQLAlchemy guards' (see Ran)
        self.lifecycle: list[Block] = []  # tasks, coroutines, threads left behind (see Checks)

    def add(self, blocks: list[Block]) -> None:
        self.blocks.extend(blocks)

    def pytest_terminal_summary(self, terminalreporter: pytest.TerminalReporter) -> None:
        """After the run: how many blocks in how many tests, and the worst ten; on GitHub
        Actions, a workflow command for each, which the run's page shows at its line."""
        if self._annotating():
            from .._base.report import annotation

            for block in self.blocks:
                if block["verdict"] in ("failed", "warned"):  # not allowed or known ones
                    terminalreporter.write_line(annotation(block))
        if self.lifecycle:
            self._lifecycle_section(terminalreporter)
        if not self.blocks or self.config.get_verbosity() < -1:
            return  # like pytest's own sections: shown with -q, not with -qq
        from .._base.report import summary_lines

        counted = [b for b in self.blocks if b["verdict"] in ("failed", "warned")]
        known = sum(b["verdict"] == "known" for b in self.blocks)
        allowed = len(self.blocks) - len(counted) - known
        terminalreporter.write_sep("=", "pytest-loopguard: event loop blocks")
        for line in summary_lines(counted, allowed, known=known):
            terminalreporter.write_line(line)

    def _lifecycle_section(self, terminalreporter: pytest.TerminalReporter) -> None:
        from . import lifecycle

        if self._annotating():
            for found in self.lifecycle:
                if found["verdict"] in ("failed", "warned"):
                    terminalreporter.write_line(lifecycle.annotation(found))
        if self.config.get_verbosity() < -1:
            return
        terminalreporter.write_sep("=", "pytest-loopguard: async lifecycle")
        for line in lifecycle.summary_lines(self.lifecycle):
            terminalreporter.write_line(line)

    def _annotating(self) -> bool:
        # Once per block: by the process that has them all (never an xdist worker).
        on_github = os.environ.get("GITHUB_ACTIONS") == "true"
        return on_github and self._wanted() and not hasattr(self.config, "workerinput")

    def _wanted(self) -> bool:
        if self.settings.annotations is not None:
            return self.settings.annotations
        # Auto: that plugin annotates failures and warnings at their crash location, which is
        # the blocking line: ours would be a second annotation of each block.
        plugins = self.config.pluginmanager.get_plugins()
        return not any(getattr(p, "__name__", "").startswith(_OTHER_ANNOTATOR) for p in plugins)

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
            "tests": sorted(self.ran),
            "blocks": blocks,
            "findings": sorted(self.findings, key=lambda f: (str(f["nodeid"]), str(f["kind"]))),
        }
        Path(self.settings.report).write_text(json.dumps(document, indent=2) + "\n")


class Ran:
    """With a JSON report: the node ids of the tests that ran, so that a baseline's "fixed"
    check can be made across the reports of CI shards, and the SQLAlchemy guards' findings.
    Registered only then: a hook call for every report costs every test."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.collector.ran.add(report.nodeid)
        if report.user_properties:
            from .baseline import findings_of

            self.collector.findings.extend(findings_of(report))


class Relay:
    """On an xdist controller: the blocks arrive on the reports the workers send."""

    def __init__(self, collector: Collector) -> None:
        self.collector = collector

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        """Collect the blocks and lifecycle findings each test phase reported on a worker."""
        self.collector.add(getattr(report, "loopguard_blocks", []))
        if report.user_properties and report.when == "teardown":  # a test's, once
            from .lifecycle import lifecycle_of

            self.collector.lifecycle.extend(lifecycle_of(report))


def distributed(config: pytest.Config) -> bool:
    """Whether this process is the controller of a pytest-xdist run (its workers run the tests)."""
    # As xdist decides it: a mode and somewhere to run. ``--dist`` alone (in addopts, with no
    # ``-n``) runs serially, and relaying then counted every block twice.
    dist = getattr(config.option, "dist", "no")
    where = getattr(config.option, "tx", None)
    return dist != "no" and bool(where) and not hasattr(config, "workerinput")


class HtmlRows:
    """pytest-html (when installed): the block's whole message in the test's row."""

    def pytest_html_results_table_html(self, report: pytest.TestReport, data: list[str]) -> None:
        """Add the message and the stack while blocked to the row's log, unless the log shows
        them already: the test failed on the block (a warned or allowed one has no traceback)."""
        import html

        text = getattr(report, "loopguard_text", None)
        if text and text.splitlines()[0] not in str(report.longrepr or ""):
            data.append(f'<pre class="loopguard">{html.escape(text)}</pre>')
