"""Settings: precedence marker > CLI > ini > default, the header, and clear usage errors."""

from __future__ import annotations

import pytest

from conftest import ASYNCIO, assert_usage_error, run, write_ini

BLOCK_03 = """
import time, pytest

async def test_blocks_for_0_3():
    time.sleep(0.2)
"""


@pytest.mark.parametrize(
    ("ini", "cli", "marker", "outcome", "source"),
    [
        (None, None, None, "failed", "default"),
        ("0.5", None, None, "passed", "ini"),
        (None, "0.5", None, "passed", "--loop-block-threshold"),
        ("0.05", "0.5", None, "passed", "--loop-block-threshold"),
        ("0.5", "0.05", None, "failed", "--loop-block-threshold"),
        ("0.05", "0.05", "0.5", "passed", "--loop-block-threshold"),
        ("0.5", "0.5", "0.05", "failed", "--loop-block-threshold"),
    ],
    ids=[
        "default",
        "ini",
        "cli",
        "cli-beats-ini-up",
        "cli-beats-ini-down",
        "marker-beats-cli-up",
        "marker-beats-cli-down",
    ],
)
def test_threshold_precedence(
    pytester: pytest.Pytester,
    ini: str | None,
    cli: str | None,
    marker: str | None,
    outcome: str,
    source: str,
) -> None:
    write_ini(pytester, "auto", f"loop_block_threshold = {ini}" if ini else "")
    body = BLOCK_03
    if marker:
        body = body.replace("async def", f"@pytest.mark.loop_block_threshold({marker})\nasync def")
    pytester.makepyfile(body)
    args = [f"--loop-block-threshold={cli}"] if cli else []
    result = run(pytester, *args)
    result.assert_outcomes(**{outcome: 1})
    expected = float(marker or cli or ini or 0.1)
    shown = float(cli or ini or 0.1)
    result.stdout.fnmatch_lines(
        [f"loopguard: threshold={shown:g}s ({source}), loop-debug=off, timeout=off, strict=off"]
    )
    if outcome == "failed":
        result.stdout.fnmatch_lines([f"*(threshold {expected:.2f} s) at *"])


def test_marker_on_class_and_module(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import time, pytest

        pytestmark = pytest.mark.loop_block_threshold(0.5)

        async def test_module_level():
            time.sleep(0.2)

        @pytest.mark.loop_block_threshold(0.05)
        class TestTight:
            async def test_class_level(self):
                time.sleep(0.2)
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*(threshold 0.05 s) at *in test_class_level"])


def test_the_nearest_marker_wins(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_nearest="""
        import time, pytest

        pytestmark = pytest.mark.loop_block_threshold(0.05)

        @pytest.mark.loop_block_threshold(0.5)
        class TestLoose:
            async def test_class_over_module(self):
                time.sleep(0.2)

            @pytest.mark.loop_block_threshold(0.1)
            async def test_own_over_class(self):
                time.sleep(0.2)

            @pytest.mark.parametrize(
                "n", [1, pytest.param(2, marks=pytest.mark.loop_block_threshold(0.15))]
            )
            async def test_param_over_all(self, n):
                time.sleep(0.2)

        async def test_module_level():
            time.sleep(0.2)
        """
    )
    result = run(pytester, "-p", "no:randomly")
    result.assert_outcomes(passed=2, failed=3)
    result.stdout.fnmatch_lines(
        [
            "*(threshold 0.10* s) at *in test_own_over_class",
            "*(threshold 0.15 s) at *in test_param_over_all",
            "*(threshold 0.05 s) at *in test_module_level",
        ]
    )


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", ""])
def test_bad_cli_threshold_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester)
    result = pytester.runpytest(*ASYNCIO, f"--loop-block-threshold={value}")
    assert_usage_error(
        result,
        f"{value!r} from --loop-block-threshold is not a valid "
        "loop_block_threshold: expected a finite number of seconds > 0, such as 0.1",
    )


@pytest.mark.parametrize("value", ["abc", "-1", "0", "nan", "inf", "-inf"])
def test_bad_ini_threshold_is_a_usage_error(pytester: pytest.Pytester, value: str) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester, extra=f"loop_block_threshold = {value}")
    result = pytester.runpytest(*ASYNCIO)
    assert_usage_error(
        result,
        f"{value!r} from ini loop_block_threshold is not a valid *",
    )


def test_bad_ini_loop_debug_is_a_usage_error(pytester: pytest.Pytester) -> None:
    pytester.makepyfile("def test_x(): pass")
    write_ini(pytester, extra="loop_debug = maybe")
    result = pytester.runpytest(*ASYNCIO)
    assert_usage_error(
        result,
        "'maybe' from ini loop_debug is not a valid boolean: "
        "expected one of 1, true, yes, on, 0, false, no, off",
    )


@pytest.mark.parametrize(
    ("marker", "message"),
    [
        (
            "loop_block_threshold()",
            "bad @pytest.mark.loop_block_threshold() on *::test_x: loop_block_threshold() "
            "missing 1 required positional argument: 'seconds'; expected loop_block_threshold(0.5)",
        ),
        (
            "loop_block_threshold(0.1, 2)",
            "bad @pytest.mark.loop_block_threshold(0.1, 2) on *::test_x: *takes 1 positional*",
        ),
        (
            "loop_block_threshold(seconds=0.1, x=1)",
            "bad @pytest.mark.loop_block_threshold(seconds=0.1, x=1) on *unexpected keyword*",
        ),
        (
            "loop_block_threshold('abc')",
            "'abc' from @pytest.mark.loop_block_threshold on *::test_x is not a valid "
            "loop_block_threshold: expected a finite number of seconds > 0, such as 0.1",
        ),
        (
            "loop_block_threshold(0)",
            "0 from @pytest.mark.loop_block_threshold on *::test_x is not a valid *",
        ),
        (
            "loop_block_threshold(True)",
            "True from @pytest.mark.loop_block_threshold on *::test_x is not a valid *",
        ),
        (
            "allow_blocking(3)",
            "bad @pytest.mark.allow_blocking on *::test_x: reason must be a string, got 3",
        ),
        (
            "allow_blocking(why='x')",
            "bad @pytest.mark.allow_blocking(why='x') on *::test_x: *unexpected keyword*",
        ),
    ],
)
def test_bad_marker_is_a_usage_error(pytester: pytest.Pytester, marker: str, message: str) -> None:
    pytester.makepyfile(f"import pytest\n\n@pytest.mark.{marker}\nasync def test_x():\n    pass\n")
    write_ini(pytester, "auto")
    result = pytester.runpytest(*ASYNCIO)
    assert_usage_error(result, message)


def test_markers_are_registered(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    result = pytester.runpytest(*ASYNCIO, "--markers")
    result.stdout.fnmatch_lines(
        [
            "@pytest.mark.loop_block_threshold(seconds): this test's own threshold*",
            "@pytest.mark.allow_blocking(reason=None): this test may block the event loop*",
        ]
    )


def test_help_shares_one_text_for_cli_and_ini(pytester: pytest.Pytester) -> None:
    write_ini(pytester)
    result = pytester.runpytest(*ASYNCIO, "--help")
    result.stdout.fnmatch_lines(
        [
            "  --loop-block-threshold=SECONDS",
            "*Fail a test whose code holds the asyncio event loop*",
            "  --loop-debug, --no-loop-debug",
            "*Also turn on asyncio's debug mode*",
            "  loop_block_threshold (string):",
            "*Fail a test whose code holds the asyncio event loop*",
            "  loop_debug (string):*Also turn on asyncio's debug mode*",
        ]
    )


@pytest.mark.parametrize("how", ["cli", "ini"])
def test_loop_debug_turns_on_asyncio_debug_for_the_test_only(
    pytester: pytest.Pytester, how: str
) -> None:
    pytester.makepyfile(
        """
        import asyncio, pytest

        LOOPS = []

        @pytest.mark.asyncio(loop_scope="module")
        @pytest.mark.loop_block_threshold(0.25)
        async def test_debug_is_on():
            loop = asyncio.get_running_loop()
            LOOPS.append(loop)
            assert loop.get_debug() is True
            assert loop.slow_callback_duration == 0.25

        def test_restored_after():
            assert LOOPS[0].get_debug() is False
            assert LOOPS[0].slow_callback_duration == 0.1
        """
    )
    write_ini(pytester, "strict", "loop_debug = true" if how == "ini" else "")
    result = pytester.runpytest(*ASYNCIO, *(["--loop-debug"] if how == "cli" else []))
    result.assert_outcomes(passed=2)
    result.stdout.fnmatch_lines(
        ["loopguard: threshold=0.1s (default), loop-debug=on, timeout=off, strict=off"]
    )


def test_loop_debug_is_off_by_default(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        """
        import asyncio

        async def test_debug_is_off():
            assert asyncio.get_running_loop().get_debug() is False
        """
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
