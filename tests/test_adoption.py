"""Adopting the plugin on a big suite: warn mode and the end-of-run summary of blocks."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import ASYNCIO, assert_usage_error, run, write_ini

SUITE = """
import time, pytest

async def test_blocks_long():
    time.sleep(0.35)

async def test_blocks_short():
    time.sleep(0.15)

@pytest.mark.allow_blocking
async def test_allowed():
    time.sleep(0.15)

async def test_clean():
    pass
"""


# The long block as warn mode shows it: in pytest's warnings summary, at the user's line.
WARNED_LONG = [
    "*warnings summary*",
    "test_suite.py::test_blocks_long",
    "  test_suite.py:4: PytestWarning: event loop blocked for * s (threshold 0.10* s) "
    "at test_suite.py:4 in test_blocks_long",
]


@pytest.mark.parametrize("how", ["cli", "ini"])
def test_warn_mode_keeps_outcomes_and_warns_at_the_line(
    pytester: pytest.Pytester, how: str
) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto", "loop_block_mode = warn" if how == "ini" else "")
    # In a subprocess: this session turns warnings into errors, and in-process runs inherit that.
    args = ["--loop-block-mode=warn"] if how == "cli" else []
    result = pytester.runpytest_subprocess(*ASYNCIO, *args)
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines(
        [
            *WARNED_LONG,
            "    time.sleep(0.35)",
            "  fix: time.sleep blocks every request — use `await asyncio.sleep(...)`",
        ]
    )


def test_warn_mode_keeps_every_outcome_when_warnings_are_errors(pytester: pytest.Pytester) -> None:
    """``filterwarnings = error`` (FastAPI's, Litestar's, httpx's) must not turn a warned block
    into a failure: the warning still reaches the summary, at the user's line, with no
    traceback of ours; the JSON report agrees."""
    pytester.makepyfile(test_suite=SUITE)
    pytester.makefile(
        ".ini",
        pytest="[pytest]\nasyncio_mode = auto\nasyncio_default_fixture_loop_scope = function\n"
        "filterwarnings =\n    error\n    ignore::pytest.PytestAssertRewriteWarning\n"
        "loop_block_mode = warn\nloop_block_report = blocks.json\n",
    )
    result = pytester.runpytest_subprocess(*ASYNCIO)
    result.assert_outcomes(passed=4, warnings=2)
    result.stdout.fnmatch_lines(WARNED_LONG)
    result.stdout.no_fnmatch_line("*phases.py*")
    verdicts = [block["verdict"] for block in _report(pytester.path / "blocks.json")["blocks"]]  # type: ignore[index]
    assert sorted(verdicts) == ["allowed", "warned", "warned"]


@pytest.mark.parametrize(
    ("source", "args", "extra"),
    [
        ("--loop-block-mode", ["--loop-block-mode=loud"], ""),
        ("ini loop_block_mode", [], "loop_block_mode = loud"),
    ],
)
def test_bad_mode_is_a_usage_error(
    pytester: pytest.Pytester, source: str, args: list[str], extra: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester, "auto", extra)
    result = pytester.runpytest(*ASYNCIO, *args)
    assert_usage_error(
        result,
        f"'loud' from {source} is not a valid loop_block_mode: expected one of fail, warn",
    )


def test_summary_lists_worst_first_and_counts_allowed_apart(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    result = run(pytester, "-q")
    result.assert_outcomes(failed=2, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*= pytest-loopguard: event loop blocks =*",
            "2 block(s) in 2 test(s); 1 allowed block(s) not counted",
            "  * s  test_suite.py:4 in test_blocks_long  [[]call[]]  *::test_blocks_long",
            "  * s  test_suite.py:7 in test_blocks_short  [[]call[]]  *::test_blocks_short",
        ]
    )


def test_summary_is_silent_without_blocks_and_with_qq(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE.replace("time.sleep", "float"))
    result = run(pytester)
    result.assert_outcomes(passed=4)
    result.stdout.no_fnmatch_line("*pytest-loopguard: event loop blocks*")
    pytester.makepyfile(test_suite=SUITE)
    result = run(pytester, "-qq")
    result.stdout.no_fnmatch_line("*event loop blocks*")


def _schema() -> dict[str, object]:
    import importlib.resources
    import json

    text = (importlib.resources.files("pytest_loopguard") / "report.schema.json").read_text()
    return dict(json.loads(text))


def _report(path: Path) -> dict[str, object]:
    import json

    import jsonschema

    document = json.loads(path.read_text())
    jsonschema.validate(document, _schema())
    return dict(document)


def test_json_report_matches_its_schema(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(test_suite=SUITE)
    write_ini(pytester, "auto", "loop_block_report = blocks.json")
    result = pytester.runpytest(*ASYNCIO)
    result.assert_outcomes(failed=2, passed=2)
    document = _report(pytester.path / "blocks.json")
    assert (document["schema"], document["version"], document["mode"]) == (
        "pytest-loopguard/report",
        6,
        "fail",
    )
    blocks = document["blocks"]
    assert isinstance(blocks, list)
    rows = {(b["nodeid"], b["phase"], b["verdict"], b["location"]["line"]) for b in blocks}
    assert rows == {
        ("test_suite.py::test_allowed", "call", "allowed", 11),
        ("test_suite.py::test_blocks_long", "call", "failed", 4),
        ("test_suite.py::test_blocks_short", "call", "failed", 7),
    }
    [long] = [b for b in blocks if b["nodeid"].endswith("long")]
    assert long["hint"]["key"] == "sleep"
    assert long["stack"][-1]["source"] == "time.sleep(0.35)"


@pytest.mark.parametrize(
    ("args", "extra", "source"),
    [
        (["--loop-block-report=missing/dir/blocks.json"], "", "--loop-block-report"),
        ([], "loop_block_report = missing/dir/blocks.json", "ini loop_block_report"),
    ],
)
def test_unwritable_report_path_fails_at_start(
    pytester: pytest.Pytester, args: list[str], extra: str, source: str
) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester, "auto", extra)
    result = pytester.runpytest(*ASYNCIO, *args)
    assert_usage_error(
        result,
        f"cannot write the block report to 'missing/dir/blocks.json' "
        f"from {source}: expected a file path in an existing, writable folder",
    )
    result.stdout.no_fnmatch_line("*collected*")


def _comparable(document: dict[str, object]) -> list[tuple[object, ...]]:
    blocks = document["blocks"]
    assert isinstance(blocks, list)
    return sorted((b["nodeid"], b["phase"], b["verdict"], str(b["location"])) for b in blocks)


def test_xdist_run_equals_serial_run(pytester: pytest.Pytester) -> None:
    pytest.importorskip("xdist")
    pytester.makepyfile(test_suite=SUITE, test_more=SUITE.replace("0.35", "0.25"))
    write_ini(pytester)
    runs = {}
    # ``--dist`` with no ``-n`` (Litestar's addopts) runs serially: every block counted once.
    variants = {
        "serial": [],
        "xdist": ["-p", "xdist", "-n", "2"],
        "dist-only": ["-p", "xdist", "--dist=loadgroup"],
    }
    for name, extra in variants.items():
        result = pytester.runpytest_subprocess(
            *ASYNCIO, "--asyncio-mode=auto", f"--loop-block-report={name}.json", *extra
        )
        result.assert_outcomes(failed=4, passed=4)
        summary = [line for line in result.outlines if " s  test_" in line]
        runs[name] = (sorted(s.split(" s  ", 1)[1] for s in summary), result.outlines)
        result.stdout.fnmatch_lines(["4 block(s) in 4 test(s); 2 allowed block(s) not counted"])
    assert runs["serial"][0] == runs["xdist"][0] == runs["dist-only"][0]
    serial = _comparable(_report(pytester.path / "serial.json"))
    assert serial == _comparable(_report(pytester.path / "xdist.json"))
    assert serial == _comparable(_report(pytester.path / "dist-only.json"))
    assert len(serial) == 6


VENDOR = """
import time

def warm_up():
    time.sleep(0.2)

def fetch():
    time.sleep(0.2)
"""

USES_VENDOR = """
import vendor_sdk

async def test_warm_up():
    vendor_sdk.warm_up()

async def test_fetch():
    vendor_sdk.fetch()
"""


@pytest.mark.parametrize(
    ("entry", "passed"),
    [
        ("vendor_sdk", ["test_warm_up", "test_fetch"]),
        ("vendor_sdk:warm_up", ["test_warm_up"]),
        ("*/vendor_sdk.py", ["test_warm_up", "test_fetch"]),
        ("other_module", []),
    ],
)
def test_allowlist_entries(pytester: pytest.Pytester, entry: str, passed: list[str]) -> None:
    pytester.makepyfile(vendor_sdk=VENDOR, test_vendor=USES_VENDOR)
    pytester.syspathinsert()
    write_ini(pytester, "auto", f"loop_block_allow =\n    {entry}")
    result = pytester.runpytest(*ASYNCIO, "-v")
    result.assert_outcomes(passed=len(passed), failed=2 - len(passed))
    for name in ("test_warm_up", "test_fetch"):
        verdict = "PASSED" if name in passed else "FAILED"
        result.stdout.fnmatch_lines([f"test_vendor.py::{name} {verdict}*"])
    if passed:
        result.stdout.fnmatch_lines([f"* {len(passed)} allowed block(s) not counted"])


@pytest.mark.parametrize("line", ["not a module", "pkg:", "pkg:fn:x", "1pkg"])
def test_malformed_allowlist_line_is_a_usage_error(pytester: pytest.Pytester, line: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester, "auto", f"loop_block_allow =\n    {line}")
    result = pytester.runpytest(*ASYNCIO)
    assert_usage_error(
        result,
        f"{line!r} in ini loop_block_allow is not a valid entry: "
        "expected a module (pkg.mod), a module:function (pkg.mod:func) or a path glob (*/pkg/*)",
    )
