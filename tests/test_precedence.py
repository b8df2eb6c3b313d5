"""Precedence for every setting: marker > CLI > ini > default, in both directions.

The threshold's own table (with markers) is in test_settings.py; here every other setting that
has a command-line flag is checked against the ini both ways: the CLI turns on what the ini
left off, and turns off what the ini turned on.
"""

from __future__ import annotations

import pytest

from conftest import ASYNCIO, assert_usage_error, write_ini

BLOCKS = """
import time

async def test_blocks():
    time.sleep(0.2)
"""


@pytest.mark.parametrize(
    ("ini", "cli", "shown"),
    [
        ("", [], "loop-debug=off"),
        ("loop_debug = true", [], "loop-debug=on"),
        ("loop_debug = true", ["--no-loop-debug"], "loop-debug=off"),
        ("loop_debug = false", ["--loop-debug"], "loop-debug=on"),
        ("", [], "strict=off"),
        ("loop_block_strict = true", [], "strict=on"),
        ("loop_block_strict = true", ["--no-loop-block-strict"], "strict=off"),
        ("loop_block_strict = false", ["--loop-block-strict"], "strict=on"),
        ("", [], "timeout=off"),
        ("loop_block_timeout = 5", [], "timeout=5s"),
        ("loop_block_timeout = 5", ["--loop-block-timeout=off"], "timeout=off"),
        ("loop_block_timeout = off", ["--loop-block-timeout=2"], "timeout=2s"),
        ("loop_block_timeout = 5", ["--loop-block-timeout=2"], "timeout=2s"),
    ],
    ids=[
        "debug-default",
        "debug-ini",
        "debug-cli-off-beats-ini-on",
        "debug-cli-on-beats-ini-off",
        "strict-default",
        "strict-ini",
        "strict-cli-off-beats-ini-on",
        "strict-cli-on-beats-ini-off",
        "timeout-default",
        "timeout-ini",
        "timeout-cli-off-beats-ini-on",
        "timeout-cli-on-beats-ini-off",
        "timeout-cli-beats-ini-value",
    ],
)
def test_on_off_settings(pytester: pytest.Pytester, ini: str, cli: list[str], shown: str) -> None:
    """The header says what is in force; each of these shows there."""
    write_ini(pytester, "auto", ini)
    pytester.makepyfile("def test_x():\n    pass\n")
    result = pytester.runpytest(*ASYNCIO, *cli)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"loopguard: threshold=*{shown}*"])


@pytest.mark.parametrize(
    ("ini", "cli", "outcome"),
    [
        ("", [], {"failed": 1}),
        ("loop_block_mode = warn", [], {"passed": 1, "warnings": 1}),
        ("loop_block_mode = warn", ["--loop-block-mode=fail"], {"failed": 1}),
        ("loop_block_mode = fail", ["--loop-block-mode=warn"], {"passed": 1, "warnings": 1}),
    ],
    ids=["default-fails", "ini-warns", "cli-fail-beats-ini-warn", "cli-warn-beats-ini-fail"],
)
def test_mode(pytester: pytest.Pytester, ini: str, cli: list[str], outcome: dict[str, int]) -> None:
    write_ini(pytester, "auto", ini)
    pytester.makepyfile(BLOCKS)
    # A process of its own: this session turns warnings into errors, in-process runs inherit it.
    result = pytester.runpytest_subprocess(*ASYNCIO, *cli)
    result.assert_outcomes(**outcome)
    line = "LoopBlockedError: event loop blocked *" if "failed" in outcome else "*PytestWarning: *"
    result.stdout.fnmatch_lines([line])


@pytest.mark.parametrize(
    ("ini", "cli", "written"),
    [
        ("", [], []),
        ("loop_block_report = from-ini.json", [], ["from-ini.json"]),
        ("loop_block_report = from-ini.json", ["--loop-block-report="], []),
        ("loop_block_report = from-ini.json", ["--loop-block-report=cli.json"], ["cli.json"]),
        ("", ["--loop-block-report=cli.json"], ["cli.json"]),
    ],
    ids=["default-none", "ini", "empty-cli-turns-it-off", "cli-beats-ini", "cli"],
)
def test_report(pytester: pytest.Pytester, ini: str, cli: list[str], written: list[str]) -> None:
    write_ini(pytester, "auto", ini)
    pytester.makepyfile(BLOCKS)
    result = pytester.runpytest(*ASYNCIO, *cli)
    result.assert_outcomes(failed=1)
    assert sorted(p.name for p in pytester.path.glob("*.json")) == written


@pytest.mark.parametrize(
    ("ini", "marker", "guarded"),
    [
        ("", "", False),
        ("loop_guard_sqlalchemy = true", "", True),
        ("loop_guard_sqlalchemy = true", "@pytest.mark.allow_lazy_loads", False),
    ],
    ids=["default-off", "ini-on", "marker-opts-out"],
)
def test_sqlalchemy_guards(pytester: pytest.Pytester, ini: str, marker: str, guarded: bool) -> None:
    """Ini only (no flag): the ini turns the guards on for every test, a marker opts one out."""
    pytest.importorskip("sqlalchemy")
    write_ini(pytester, "auto", ini)
    pytester.makepyfile(
        f"""
        import pytest

        {marker}
        def test_x(request):
            used = "loopguard_sqlalchemy" in request.fixturenames
            guard = request.getfixturevalue("loopguard_sqlalchemy") if used else None
            print("GUARDED", guard is not None)
        """
    )
    result = pytester.runpytest(*ASYNCIO, "-s")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"*GUARDED {guarded}"])


OTHER_ANNOTATOR = ("-p", "pytest_github_actions_annotate_failures")


@pytest.mark.parametrize(
    ("ini", "cli", "ours"),
    [
        ("", [], True),
        ("", [*OTHER_ANNOTATOR], False),
        ("", [*OTHER_ANNOTATOR, "--loop-block-annotations"], True),
        ("loop_block_annotations = true", [*OTHER_ANNOTATOR], True),
        ("loop_block_annotations = false", [], False),
        ("loop_block_annotations = false", ["--loop-block-annotations"], True),
        ("loop_block_annotations = true", ["--no-loop-block-annotations"], False),
        ("loop_block_annotations = auto", [], True),
    ],
    ids=[
        "default-on",
        "default-off-beside-the-other-annotator",
        "cli-on-beats-auto",
        "ini-on-beats-auto",
        "ini-off",
        "cli-on-beats-ini-off",
        "cli-off-beats-ini-on",
        "ini-auto",
    ],
)
def test_annotations(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, ini: str, cli: list[str], ours: bool
) -> None:
    """Auto (the default) stands down only beside pytest-github-actions-annotate-failures, which
    annotates the same block at the same line; a value set anywhere beats auto."""
    pytest.importorskip("pytest_github_actions_annotate_failures")
    monkeypatch.setenv("GITHUB_ACTIONS", "true")
    write_ini(pytester, "auto", ini)
    pytester.makepyfile(BLOCKS)
    result = pytester.runpytest_subprocess(*ASYNCIO, *cli)
    result.assert_outcomes(failed=1)
    found = [line for line in result.outlines if "title=pytest-loopguard::" in line]
    assert len(found) == int(ours), result.outlines


def test_a_bad_annotations_value_names_auto_among_the_valid_ones(pytester: pytest.Pytester) -> None:
    write_ini(pytester, "auto", "loop_block_annotations = sometimes")
    pytester.makepyfile(BLOCKS)
    result = pytester.runpytest(*ASYNCIO)
    assert_usage_error(
        result,
        "'sometimes' from ini loop_block_annotations is not a valid boolean: "
        "expected one of auto, 1, true, *",
    )


@pytest.mark.parametrize(
    ("ini", "cli", "outcome"),
    [
        ("", [], {"failed": 1}),
        ("loop_baseline = from-ini.txt", [], {"passed": 1}),
        ("loop_baseline = from-ini.txt", ["--loop-baseline="], {"failed": 1}),
        ("loop_baseline = missing.txt", ["--loop-baseline=from-cli.txt"], {"passed": 1}),
        ("loop_baseline_update = true\nloop_baseline = empty.txt", [], {"passed": 1}),
        (
            "loop_baseline_update = true\nloop_baseline = empty.txt",
            ["--no-loop-baseline-update"],
            {"failed": 1},
        ),
    ],
    ids=[
        "default-none",
        "ini",
        "empty-cli-turns-it-off",
        "cli-beats-ini",
        "ini-update",
        "no-update",
    ],
)
def test_baseline(
    pytester: pytest.Pytester, ini: str, cli: list[str], outcome: dict[str, int]
) -> None:
    write_ini(pytester, "auto", ini)
    pytester.makepyfile(test_blocks=BLOCKS)
    entry = "block\ttest_blocks.py::test_blocks\ttest_blocks.py\ttest_blocks\ttime.sleep(0.2)\n"
    for name in ("from-ini.txt", "from-cli.txt"):
        (pytester.path / name).write_text(entry)
    (pytester.path / "empty.txt").write_text("")
    result = pytester.runpytest_subprocess(*ASYNCIO, *cli)
    result.assert_outcomes(**outcome)
    if "passed" in outcome:
        result.stdout.fnmatch_lines(["*1 known block(s) in the baseline not counted"])
