"""Every code sample in the docs and the README runs here, so the docs cannot rot.

A sample is a fenced block with a directive in the HTML comment on the line before it (invisible
on the rendered page): ``<!-- file: test_app.py -->`` writes the block into the page's sample
project; ``run: pytest ARGS`` then runs pytest there with the plugin (the other plugins pinned by
``plugins:``, asyncio by default) or ``run: python NAME``; ``outcomes: failed=1 passed=2`` checks
the counts; ``expect`` says the next block (directive ``<!-- output -->``) is what the run prints,
matched line by line in order (numbers may differ, ``...`` skips lines, ``...`` inside a line
matches anything); ``show: FILE`` matches that block against a file the run wrote instead;
``new`` starts a fresh project; ``env: NAME=value`` sets variables for the run. Blocks that
cannot run (an install command, a CI workflow) say ``<!-- not-run: why -->``, and every
``--loop...`` option and ini name they use must exist.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from xml.dom import minidom

import pytest
import yaml

from pytest_loopguard._plugin.options import OPTIONS, markdown_table

ROOT = Path(__file__).parent.parent
PAGES = [*sorted((ROOT / "docs").glob("*.md")), ROOT / "README.md"]
_FENCE = re.compile(r"^```(\w*)\s*$")
_DIRECTIVE = re.compile(r"^<!--\s*(.*?)\s*-->\s*$")
_NUMBER = re.compile(r"\d+(?:\.\d+)?")
_PLUGINS = {"asyncio": "asyncio", "anyio": "anyio", "trio": "trio", "xdist": "xdist"}


@dataclass
class Sample:
    page: Path
    line: int
    lang: str
    text: str
    directive: dict[str, str] = field(default_factory=dict)

    @property
    def where(self) -> str:
        return f"{self.page.name}:{self.line}"


def samples(page: Path) -> Iterator[Sample]:
    """The fenced blocks of ``page``, each with the directive on the line before it."""
    lines = page.read_text().splitlines()
    i = 0
    while i < len(lines):
        fence = _FENCE.match(lines[i])
        if fence is None:
            i += 1
            continue
        end = next(j for j in range(i + 1, len(lines)) if lines[j].rstrip() == "```")
        found = _DIRECTIVE.match(lines[i - 1]) if i else None
        directive = _parse(found.group(1)) if found else {}
        yield Sample(page, i + 1, fence.group(1), "\n".join(lines[i + 1 : end]) + "\n", directive)
        i = end + 1


def _parse(text: str) -> dict[str, str]:
    items = (part.strip() for part in text.split(";"))
    return dict((*item.split(":", 1), "")[:2] for item in items if item)


def _pattern(line: str) -> str:
    """A regex for one expected output line: numbers may differ, ``...`` matches anything, and
    pytest's ``===`` and ``___`` rules match at any terminal width."""
    rule = re.fullmatch(r"([=_-])\1+ (.*) \1+", line)
    if rule:
        char = re.escape(rule.group(1))
        return rf"{char}+ {_pattern(rule.group(2)).rstrip('$')} {char}+$"
    pieces = line.split("...")
    any_number = r"\d+(?:\.\d+)?"
    joined = ".*".join(any_number.join(map(re.escape, _NUMBER.split(p))) for p in pieces)
    return joined if line.endswith("...") else joined + "$"


def expected_patterns(text: str) -> list[str]:
    return [_pattern(line) for line in text.splitlines() if line.strip() not in ("", "...")]


def _known_names() -> set[str]:
    names = {o.ini for o in OPTIONS}
    flags = {o.flag for o in OPTIONS if o.flag} | {
        "--no-" + o.flag[2:] for o in OPTIONS if o.flag and o.metavar is None
    }
    return names | flags


def _check_names(sample: Sample) -> None:
    # Options and ini names, not file names (bench/loop_runs.py).
    used = set(re.findall(r"--(?:no-)?loop-[a-z-]+|(?<![\w/])loop_[a-z_]+(?!\.py)", sample.text))
    unknown = used - _known_names() - {"loop_block_threshold", "loop_lifecycle"}
    assert not unknown, f"{sample.where}: no such setting: {sorted(unknown)}"


def _run(pytester: pytest.Pytester, sample: Sample) -> pytest.RunResult:
    env = dict(item.split("=", 1) for item in sample.directive.get("env", "").split())
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    try:
        return _run_command(pytester, sample)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _run_command(pytester: pytest.Pytester, sample: Sample) -> pytest.RunResult:
    argv = shlex.split(sample.directive["run"])
    if argv[0] == "python":
        return pytester.run(sys.executable, *argv[1:], timeout=120)
    assert argv[0] == "pytest", f"{sample.where}: run: takes `pytest ...` or `python ...`"
    plugins = sample.directive.get("plugins", "asyncio").split()
    # In-process runs import the plugins once: pytest's notice that it cannot rewrite them again
    # is about this harness, not the sample.
    pinned = ["-p", "pytest_loopguard", "-p", "no:cacheprovider"]
    pinned += ["-W", "ignore::pytest.PytestAssertRewriteWarning"]
    for name in plugins:
        pinned += ["-p", _PLUGINS[name]]
    with warnings.catch_warnings():
        # As in a user's own process: not this suite's filterwarnings = error.
        warnings.resetwarnings()
        return pytester.runpytest(*pinned, *argv[1:])


def _outcomes(text: str) -> dict[str, int]:
    pairs = (item.split("=") for item in text.split())
    return {name: int(count) for name, count in pairs}


class Player:
    """Plays one page's samples in order, in one sample project."""

    def __init__(self, pytester: pytest.Pytester) -> None:
        self.pytester = pytester
        self.result: pytest.RunResult | None = None
        self.expecting: str | None = None  # what the next block must be: the run's output
        self.shown: str | None = None
        self.ran = 0

    def play(self, page: Path) -> int:
        for sample in samples(page):
            assert sample.directive, f"{sample.where}: a code sample with no directive"
            if "output" in sample.directive:
                self._output(sample)
            elif "not-run" in sample.directive:
                self._not_run(sample)
            else:
                self._sample(sample)
        assert self.expecting is None, f"{page.name}: the last run expects its output"
        return self.ran

    def _output(self, sample: Sample) -> None:
        assert self.result is not None, f"{sample.where}: the output of no run"
        assert self.expecting is not None, f"{sample.where}: the run before expects none"
        got = _shown(self.pytester.path / self.shown) if self.shown else _text(self.result)
        _match(got, sample)
        self.expecting = None

    def _not_run(self, sample: Sample) -> None:
        assert self.expecting is None, f"{sample.where}: the run before expects its output"
        assert sample.directive["not-run"].strip(), f"{sample.where}: say why it cannot run"
        assert sample.lang in ("bash", "yaml"), f"{sample.where}: it can run: run it"
        if sample.lang == "yaml":
            yaml.safe_load(sample.text)
        _check_names(sample)

    def _sample(self, sample: Sample) -> None:
        d = sample.directive
        assert self.expecting is None, f"{sample.where}: the run before expects its output"
        if "new" in d:
            for child in self.pytester.path.iterdir():
                if child.is_file():
                    child.unlink()
        if "file" in d:
            (self.pytester.path / d["file"].strip()).write_text(sample.text)
            _check_names(sample)
        if "json" in d:
            json.loads(sample.text)
        if "run" in d:
            self.result = _run(self.pytester, sample)
            self.ran += 1
            if "outcomes" in d:
                self.result.assert_outcomes(**_outcomes(d["outcomes"]))
            self.expecting = sample.where if "expect" in d else None
            self.shown = d.get("show", "").strip() or None


def _shown(path: Path) -> str:
    """A file a run wrote, as the docs show it (XML indented, one element a line)."""
    text = path.read_text()
    return minidom.parseString(text).toprettyxml(indent="  ") if path.suffix == ".xml" else text


def _text(result: pytest.RunResult) -> str:
    return "\n".join(result.outlines + result.errlines)


def _match(got: str, sample: Sample) -> None:
    lines = got.splitlines()
    at = 0
    for pattern in expected_patterns(sample.text):
        regex = re.compile(pattern)
        while at < len(lines) and not regex.match(lines[at]):
            at += 1
        assert at < len(lines), f"{sample.where}: not in the output: {pattern}\n\n{got}"
        at += 1


@pytest.fixture
def docs_project(pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> pytest.Pytester:
    monkeypatch.delenv("GITHUB_ACTIONS", raising=False)
    return pytester


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_every_sample_runs(docs_project: pytest.Pytester, page: Path) -> None:
    Player(docs_project).play(page)


# -- the harness itself: it must be able to fail -------------------------------------------


def test_a_sample_without_a_directive_fails(tmp_path: Path, pytester: pytest.Pytester) -> None:
    page = tmp_path / "page.md"
    page.write_text("text\n\n```python\nprint(1)\n```\n")
    with pytest.raises(AssertionError, match="no directive"):
        Player(pytester).play(page)


def test_output_that_differs_fails(tmp_path: Path, pytester: pytest.Pytester) -> None:
    page = tmp_path / "page.md"
    page.write_text(
        "<!-- file: test_a.py -->\n```python\ndef test_a():\n    pass\n```\n"
        "<!-- run: pytest -q; plugins: ; expect -->\n```python\n```\n"
        "<!-- output -->\n```\n3 failed in 0.01s\n```\n"
    )
    with pytest.raises(AssertionError, match="not in the output"):
        Player(pytester).play(page)


def test_patterns() -> None:
    assert re.match(
        _pattern("blocked for 0.30 s at a.py:12 in f"), "blocked for 0.28 s at a.py:9 in f"
    )
    assert not re.match(_pattern("blocked for 0.30 s at a.py"), "blocked for 0.30 s at b.py")
    assert re.match(
        _pattern("  .../threading.py:327 in wait"), "  /usr/lib/threading.py:330 in wait"
    )
    assert re.match(_pattern("=== 1 failed in 0.3s ==="), "====== 1 failed in 12.5s ======")
    assert re.match(_pattern("[call] x"), "[call] x")


def test_every_page_has_run_samples() -> None:
    runnable = [p for p in PAGES if any("run" in s.directive for s in samples(p))]
    assert {p.name for p in runnable} >= {"README.md", "getting-started.md", "configuration.md"}


_TABLE = re.compile(r"(<!-- settings-table:start.*?-->\n)(.*?)(<!-- settings-table:end -->)", re.S)


def test_the_settings_table_is_the_code_s() -> None:
    """docs/configuration.md holds the table made from the one table in the code."""
    page = ROOT / "docs" / "configuration.md"
    if os.environ.get("LOOPGUARD_UPDATE_DOCS") == "1":
        page.write_text(_TABLE.sub(lambda m: m[1] + markdown_table() + m[3], page.read_text()))
    found = _TABLE.search(page.read_text())
    assert found is not None, "configuration.md lost its settings-table markers"
    assert found.group(2) == markdown_table(), (
        "the settings table is out of date: LOOPGUARD_UPDATE_DOCS=1 pytest tests/test_docs.py"
    )
    for option in OPTIONS:
        assert f"`{option.ini}`" in found.group(2)
