"""A baseline of known findings: known ones reported and never failed, new ones failed, fixed
entries listed (and failed under strict), the file written from a run, entries that survive
unrelated edits, and every bad input a usage error."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import ASYNCIO, assert_usage_error, blocked, write_ini

SUITE = """
import time


async def test_a():
    time.sleep(0.2)


async def test_b():
    time.sleep(0.15)


async def test_clean():
    pass
"""


def _run(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    # In a subprocess: the baseline and the report are files the run writes at its end.
    return pytester.runpytest_subprocess(*ASYNCIO, "--loop-block-report=blocks.json", *args)


def _verdicts(pytester: pytest.Pytester) -> dict[str, str]:
    document = json.loads((pytester.path / "blocks.json").read_text())
    assert document["version"] == 6
    return {block["nodeid"].split("::")[1]: block["verdict"] for block in document["blocks"]}


def _entries(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if not line.startswith("#")]


def _baseline(pytester: pytest.Pytester) -> pytest.RunResult:
    """Write the baseline from the suite as it is: every finding known, nothing fails."""
    result = _run(pytester, "--loop-baseline=known.txt", "--loop-baseline-update")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["pytest-loopguard: baseline */known.txt written: 2 entries"])
    return result


def test_update_writes_a_sorted_readable_file_and_the_next_run_knows_it(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    assert _entries(pytester.path / "known.txt") == [
        "block\ttest_suite.py::test_a\ttest_suite.py\ttest_a\ttime.sleep(0.2)",
        "block\ttest_suite.py::test_b\ttest_suite.py\ttest_b\ttime.sleep(0.15)",
    ]
    assert not list(pytester.path.glob(".loopguard-*"))  # written whole, by a rename
    result = _run(pytester, "--loop-baseline=known.txt")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*; 2 known block(s) in the baseline not counted"])
    assert _verdicts(pytester) == {"test_a": "known", "test_b": "known"}
    # The same file, written again from the same run: stable.
    before = (pytester.path / "known.txt").read_text()
    _baseline(pytester)
    assert (pytester.path / "known.txt").read_text() == before


def test_new_findings_fail_and_fixed_entries_are_listed(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    # test_b no longer blocks; a new test does.
    pytester.makepyfile(
        test_suite=SUITE.replace("    time.sleep(0.15)", "    pass")
        + "\n\nasync def test_new():\n    time.sleep(0.2)\n"
    )
    result = _run(pytester, "--loop-baseline=known.txt")
    result.assert_outcomes(passed=3, failed=1)
    result.stdout.fnmatch_lines([blocked("test_suite.py:17 in test_new")])
    result.stdout.fnmatch_lines(
        [
            "*pytest-loopguard: baseline entries fixed — remove them*",
            "test_suite.py::test_b: test_suite.py in test_b: time.sleep(0.15)",
            "1 entry of */known.txt no finding hit: remove them, or run with "
            "--loop-baseline-update",
        ]
    )
    assert _verdicts(pytester) == {"test_a": "known", "test_new": "failed"}
    assert result.ret == pytest.ExitCode.TESTS_FAILED


def test_strict_fails_a_run_whose_only_news_is_a_fixed_entry(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    pytester.makepyfile(test_suite=SUITE.replace("    time.sleep(0.15)", "    pass"))
    result = _run(pytester, "--loop-baseline=known.txt")
    result.assert_outcomes(passed=3)
    assert result.ret == pytest.ExitCode.OK  # listed, not failed, without strict
    result = _run(pytester, "--loop-baseline=known.txt", "--loop-baseline-strict")
    result.assert_outcomes(passed=3)
    result.stdout.fnmatch_lines(["*(--loop-baseline-strict fails the run on them)"])
    assert result.ret == pytest.ExitCode.TESTS_FAILED


@pytest.mark.parametrize(
    ("edit", "verdict"),
    [
        # A line added above the test, above the blocking call inside it, below it: known.
        (lambda s: "import os\n" + s, "known"),
        (lambda s: s.replace("async def test_a():\n", "async def test_a():\n    x = 1\n"), "known"),
        (lambda s: s.replace("    time.sleep(0.2)\n", "    time.sleep(0.2)\n    x = 2\n"), "known"),
        # The blocking line itself changed: a new finding.
        (lambda s: s.replace("time.sleep(0.2)", "time.sleep(0.25)"), "failed"),
        # The test renamed: a new finding, and its old entry fixed.
        (lambda s: s.replace("def test_a(", "def test_renamed("), "failed"),
    ],
    ids=["line-above", "inside-above-the-call", "below-the-call", "the-line-itself", "renamed"],
)
def test_entries_survive_unrelated_edits(
    pytester: pytest.Pytester, edit: object, verdict: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    assert callable(edit)
    pytester.makepyfile(test_suite=edit(SUITE))
    result = _run(pytester, "--loop-baseline=known.txt")
    verdicts = _verdicts(pytester)
    blocked_a = [v for name, v in verdicts.items() if name in ("test_a", "test_renamed")]
    assert blocked_a == [verdict]
    assert verdicts["test_b"] == "known"  # the other entry, untouched, stays known
    if verdict == "failed":
        result.stdout.fnmatch_lines(["*baseline entries fixed — remove them*"])


def test_a_moved_file_is_new(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    (pytester.path / "test_suite.py").rename(pytester.path / "test_moved.py")
    result = _run(pytester, "--loop-baseline=known.txt")
    result.assert_outcomes(passed=1, failed=2)
    result.stdout.fnmatch_lines(["2 entries of */known.txt no finding hit*"])


def test_update_keeps_the_entries_of_tests_it_did_not_run(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    pytester.makepyfile(test_suite=SUITE.replace("time.sleep(0.2)", "time.sleep(0.21)"))
    result = _run(pytester, "--loop-baseline=known.txt", "--loop-baseline-update", "-k", "test_a")
    result.assert_outcomes(passed=1, deselected=2)
    assert _entries(pytester.path / "known.txt") == [
        "block\ttest_suite.py::test_a\ttest_suite.py\ttest_a\ttime.sleep(0.21)",
        "block\ttest_suite.py::test_b\ttest_suite.py\ttest_b\ttime.sleep(0.15)",
    ]


def test_under_xdist_the_controller_lists_and_writes_once(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    xdist = ("-p", "xdist", "-n", "2")
    result = _run(pytester, "--loop-baseline=known.txt", "--loop-baseline-update", *xdist)
    result.assert_outcomes(passed=3)
    assert len(_entries(pytester.path / "known.txt")) == 2
    pytester.makepyfile(test_suite=SUITE.replace("    time.sleep(0.15)", "    pass"))
    result = _run(pytester, "--loop-baseline=known.txt", *xdist)
    result.assert_outcomes(passed=3)
    assert _verdicts(pytester) == {"test_a": "known"}
    assert result.stdout.str().count("test_suite.py::test_b: test_suite.py in test_b") == 1


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (
            None,
            "the baseline */missing.txt (loop_baseline) does not exist: create it with "
            "--loop-baseline-update",
        ),
        (
            "block\tonly two\n",
            "*/known.txt:1 is not a baseline entry: expected 5 tab-separated "
            "fields (kind, node id, file, function, source), got 2*",
        ),
        (
            "# a comment\n\ntypo\ta\tb\tc\td\n",
            "*/known.txt:3: 'typo' is not a kind of finding: expected one of block, nplusone, "
            "leak, task, exception, coroutine, thread",
        ),
        (b"\xff\xfe", "the baseline */known.txt (loop_baseline) cannot be read: *"),
    ],
    ids=["missing", "malformed", "unknown-kind", "not-text"],
)
def test_a_bad_baseline_is_a_usage_error(
    pytester: pytest.Pytester, content: str | bytes | None, message: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    name = "missing.txt" if content is None else "known.txt"
    if isinstance(content, bytes):
        (pytester.path / name).write_bytes(content)
    elif content is not None:
        (pytester.path / name).write_text(content)
    result = _run(pytester, f"--loop-baseline={name}")
    assert_usage_error(result, message)


# -- merging the reports of CI shards ----------------------------------------------------------


def _merge(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    import sys

    return pytester.run(sys.executable, "-m", "pytest_loopguard", "report", "merge", *args)


def _shards(pytester: pytest.Pytester) -> None:
    """Two shards of the suite, as two CI machines would run them: each its own report."""
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    _baseline(pytester)
    pytester.makepyfile(test_suite=SUITE.replace("    time.sleep(0.15)", "    pass"))
    for shard, selection in (("1", "test_a"), ("2", "test_b or test_clean")):
        result = pytester.runpytest_subprocess(
            *ASYNCIO,
            "--loop-baseline=known.txt",
            f"--loop-block-report=shard-{shard}.json",
            "-k",
            selection,
        )
        assert result.ret == pytest.ExitCode.OK


def test_merge_makes_one_report_and_checks_the_baseline_across_shards(
    pytester: pytest.Pytester,
) -> None:
    _shards(pytester)
    result = _merge(
        pytester,
        "shard-1.json",
        "shard-2.json",
        "-o",
        "all.json",
        "--baseline",
        "known.txt",
        "--baseline-strict",
    )
    # test_b's entry is fixed: shard 2 ran it and no shard hit it; test_a's is known.
    result.stdout.fnmatch_lines(
        [
            "*pytest-loopguard: event loop blocks*",
            "0 block(s) in 0 test(s); 0 allowed block(s) not counted; 1 known block(s) in the "
            "baseline not counted",
            "fixed — remove it: test_suite.py::test_b: test_suite.py in test_b: time.sleep(0.15)",
        ]
    )
    assert result.ret == 1  # strict
    merged = json.loads((pytester.path / "all.json").read_text())
    assert merged["tests"] == [
        "test_suite.py::test_a",
        "test_suite.py::test_b",
        "test_suite.py::test_clean",
    ]
    assert [b["verdict"] for b in merged["blocks"]] == ["known"]
    # Shard 1 alone did not run test_b: nothing is fixed there.
    alone = _merge(pytester, "shard-1.json", "--baseline", "known.txt", "--baseline-strict")
    alone.stdout.no_fnmatch_line("fixed*")
    assert alone.ret == 0


def test_merge_prints_annotations_when_asked(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    pytester.runpytest_subprocess(*ASYNCIO, "--loop-block-report=shard.json")
    result = _merge(pytester, "shard.json", "--github-annotations")
    result.stdout.fnmatch_lines(
        ["::error file=test_suite.py,line=5,title=pytest-loopguard::event loop blocked for *"]
    )
    assert result.ret == 1  # a block failed its test


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda d: {**d, "version": 3},
            "pytest-loopguard: shard-2.json: report version 3, this "
            "pytest-loopguard reads version 6*",
        ),
        (
            lambda d: {**d, "threshold": 0.25},
            "pytest-loopguard: shard-2.json: threshold 0.25 s, "
            "but shard-1.json has 0.1 s: shards must run with the same loop_block_threshold",
        ),
        (
            lambda d: {"schema": "other"},
            "pytest-loopguard: shard-2.json: not a pytest-loopguard report*",
        ),
        (None, "pytest-loopguard: shard-2.json:1: not JSON: *"),
    ],
    ids=["version", "threshold", "not-ours", "not-json"],
)
def test_merge_refuses_reports_that_do_not_agree(
    pytester: pytest.Pytester, edit: object, message: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto")
    pytester.runpytest_subprocess(*ASYNCIO, "--loop-block-report=shard-1.json")
    document = json.loads((pytester.path / "shard-1.json").read_text())
    text = "{oops" if edit is None else json.dumps(edit(document))  # type: ignore[operator]
    (pytester.path / "shard-2.json").write_text(text)
    result = _merge(pytester, "shard-1.json", "shard-2.json", "-o", "all.json")
    assert result.ret == 2
    result.stderr.fnmatch_lines([message])
    assert "Traceback" not in result.stderr.str()
    assert not (pytester.path / "all.json").exists()  # nothing half-written


# -- the SQLAlchemy guards' findings -----------------------------------------------------------

GUARDED = """
from sqlalchemy import select
from conftest import Post, User


async def test_nplusone(sessionmaker):
    async with sessionmaker() as session:
        for i in (1, 2) * 6:
            await session.get(Post, i, populate_existing=True)


async def test_leak(sessionmaker):
    session = sessionmaker()
    await session.scalars(select(User))
"""


def test_nplusone_and_leaks_are_in_the_baseline_too(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("sqlalchemy")
    from sa_src import CONFTEST

    monkeypatch.setenv("LOOPGUARD_TEST_DB_URL", f"sqlite+aiosqlite:///{pytester.path / 't.db'}")
    pytester.makeconftest(CONFTEST)
    pytester.makepyfile(test_guarded=GUARDED)
    write_ini(pytester, "auto", "loop_guard_sqlalchemy = true\nloop_block_strict = true")
    result = _run(pytester, "--loop-baseline=known.txt")  # no file yet: a usage error
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result = _run(pytester, "--loop-baseline=known.txt", "--loop-baseline-update")
    result.assert_outcomes(passed=2)
    entries = _entries(pytester.path / "known.txt")
    assert [line.split("\t")[:2] for line in entries] == [
        ["leak", "test_guarded.py::test_leak"],
        ["nplusone", "test_guarded.py::test_nplusone"],
    ]
    result = _run(pytester, "--loop-baseline=known.txt")
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        [
            "pytest-loopguard: 2 known finding(s) of the SQLAlchemy guards (N+1, leaks) in the "
            "baseline not reported"
        ]
    )
    document = json.loads((pytester.path / "blocks.json").read_text())
    assert [(f["kind"], f["verdict"]) for f in document["findings"]] == [
        ("leak", "known"),
        ("nplusone", "known"),
    ]
    # Without the baseline both fail (strict): the guards were live in this very project.
    result = _run(pytester)
    result.assert_outcomes(passed=2, errors=2)
    document = json.loads((pytester.path / "blocks.json").read_text())
    assert [(f["kind"], f["verdict"], f["function"]) for f in document["findings"]] == [
        ("leak", "failed", "test_leak"),
        ("nplusone", "failed", "test_nplusone"),
    ]
    # The leak fixed: its entry is listed.
    closed = "    await session.scalars(select(User))\n    await session.close()\n"
    pytester.makepyfile(
        test_guarded=GUARDED.replace("    await session.scalars(select(User))\n", closed)
    )
    result = _run(pytester, "--loop-baseline=known.txt")
    result.stdout.fnmatch_lines(["test_guarded.py::test_leak: test_guarded.py in test_leak: *"])
