"""Every setting's names, help and markers: one table, read by ``pytest --help``, the ini
and the docs' settings table (``markdown_table``; a test checks the page holds it), so the
surfaces cannot drift apart."""

from __future__ import annotations

from dataclasses import dataclass

DEFAULT_THRESHOLD = 0.1
MODES = ("fail", "warn")
LIFECYCLE_MODES = ("fail", "warn", "off")

THRESHOLD_HELP = (
    "Fail a test whose code holds the asyncio event loop for this many seconds or more "
    f"(a number > 0; default {DEFAULT_THRESHOLD})."
)
DEBUG_HELP = (
    "Also turn on asyncio's debug mode on every loop under test, with slow_callback_duration "
    "set to the threshold (slow: about 7x on a callback-heavy suite; default off; "
    "--no-loop-debug turns off what the ini turned on)."
)
MODE_HELP = (
    "What a block does to its test: 'fail' it (default), or 'warn' — the test keeps its own "
    "outcome and each block becomes a PytestWarning, for adopting the plugin gradually."
)
REPORT_HELP = (
    "Write every block of the run to this JSON file (schema pytest-loopguard/report, version 6; "
    "see report.schema.json in the package; an empty value on the command line turns it off)."
)
ALLOW_HELP = (
    "Blocks whose stack runs through one of these are allowed (recorded, never failed): one per "
    "line, a module ('ddtrace'), a module:function ('jinja2.environment:Environment.__init__' "
    "or 'mylib.setup:warm_up'), or a path glob ('*/site-packages/botocore/*')."
)
TIMEOUT_HELP = (
    "Hang guard: when one callback holds the loop this many seconds, dump its stack, interrupt "
    "it and fail the test, so a deadlock cannot hang the run (seconds > the threshold; "
    "default off)."
)
STRICT_HELP = (
    "Also fail tests whose code makes a known blocking call on the loop thread (time.sleep, "
    "blocking sockets, DNS, file open, subprocess, thread waits), however short "
    "(true/false; default false; --no-loop-block-strict turns off what the ini turned on)."
)
SQLALCHEMY_HELP = (
    "Make the loopguard_sqlalchemy fixture active for every test: lazy loads and sync engines "
    "on the event loop fail early with the fix (true/false; default false)."
)
ANNOTATIONS_HELP = (
    "On GitHub Actions (GITHUB_ACTIONS=true), print one ::error (fail mode) or ::warning (warn "
    "mode) workflow command per block, at its file and line (auto/true/false; default auto: "
    "on unless pytest-github-actions-annotate-failures annotates them already)."
)
NPLUSONE_HELP = (
    "With the SQLAlchemy guards on: report the same SELECT (same statement, other parameters) "
    "run this many times from one line of a test's code, an N+1 through awaits — a warning at "
    "the line, a failure under loop_block_strict (a whole number >= 2, or 0/off; default 10)."
)
BASELINE_HELP = (
    "A file of known findings: blocks that match an entry are reported as known, never failed; "
    "new ones fail (or warn) as ever, and entries no finding hit in a run of their test are "
    "listed as fixed (the file's format and key: docs, CI and reports)."
)
BASELINE_UPDATE_HELP = (
    "Rewrite the loop_baseline file from this run: its findings, plus the entries of tests it "
    "did not run; every finding of the run counts as known (true/false; default false)."
)
BASELINE_STRICT_HELP = (
    "Fail the run when a loop_baseline entry is fixed (its test ran, nothing hit it), so the "
    "file can only shrink (true/false; default false)."
)
SUBPROCESSES_HELP = (
    "Watch the Python processes the session starts (servers in a fixture, uvicorn's and "
    "gunicorn's workers) with the same settings: their blocks fail the test running when they "
    "began (true/false; default true; --no-loop-block-subprocesses turns it off)."
)
LIFECYCLE_HELP = (
    "Async lifecycle bugs a test leaves: tasks still pending, task exceptions nobody "
    "retrieved, coroutines never awaited, threads still running — each at the line that "
    "created it. 'fail' the test, 'warn' (default: a PytestWarning, the outcome unchanged), "
    "or 'off'."
)
LEAKS_MARKER = (
    "allow_leaks(reason=None): this test may leave tasks, coroutines or threads behind; they "
    "are recorded, never failed (pytest-loopguard)."
)
NPLUSONE_MARKER = (
    "allow_nplusone: this test may run the same SELECT many times from one line (pytest-loopguard)."
)
LAZY_MARKER = (
    "allow_lazy_loads: this test opts out of the loopguard_sqlalchemy guards (pytest-loopguard)."
)
THRESHOLD_MARKER = (
    "loop_block_threshold(seconds): this test's own threshold for blocking the event loop "
    "(pytest-loopguard)."
)
ALLOW_MARKER = (
    "allow_blocking(reason=None): this test may block the event loop; blocks are recorded, "
    "never failed (pytest-loopguard)."
)


@dataclass(frozen=True)
class Option:
    """One setting: its ini name, its command-line flag (None: ini only; an on/off flag gets a
    ``--no-`` twin when ``metavar`` is None), the ini type and default, and one help text."""

    ini: str
    flag: str | None
    metavar: str | None
    kind: str
    default: object
    help: str
    shown_default: str = "off"  # the default as the docs say it
    marker: str | None = None  # the marker that sets or overrides it for one test


OPTIONS = (
    Option(
        "loop_block_threshold",
        "--loop-block-threshold",
        "SECONDS",
        "string",
        "",
        THRESHOLD_HELP,
        str(DEFAULT_THRESHOLD),
        "@pytest.mark.loop_block_threshold(0.5)",
    ),
    Option("loop_debug", "--loop-debug", None, "string", "false", DEBUG_HELP),
    Option(
        "loop_block_mode", "--loop-block-mode", "fail|warn", "string", "fail", MODE_HELP, "fail"
    ),
    Option("loop_block_report", "--loop-block-report", "PATH", "string", "", REPORT_HELP),
    Option("loop_block_timeout", "--loop-block-timeout", "SECONDS", "string", "", TIMEOUT_HELP),
    Option("loop_block_strict", "--loop-block-strict", None, "string", "false", STRICT_HELP),
    Option(
        "loop_block_annotations",
        "--loop-block-annotations",
        None,
        "string",
        "auto",
        ANNOTATIONS_HELP,
        "auto",
    ),
    Option(
        "loop_block_subprocesses",
        "--loop-block-subprocesses",
        None,
        "string",
        "true",
        SUBPROCESSES_HELP,
        "true",
    ),
    Option(
        "loop_lifecycle",
        "--loop-lifecycle",
        "|".join(LIFECYCLE_MODES),
        "string",
        "warn",
        LIFECYCLE_HELP,
        "warn",
        "@pytest.mark.allow_leaks(reason=...)",
    ),
    Option("loop_baseline", "--loop-baseline", "PATH", "string", "", BASELINE_HELP),
    Option(
        "loop_baseline_update",
        "--loop-baseline-update",
        None,
        "string",
        "false",
        BASELINE_UPDATE_HELP,
    ),
    Option(
        "loop_baseline_strict",
        "--loop-baseline-strict",
        None,
        "string",
        "false",
        BASELINE_STRICT_HELP,
    ),
    Option(
        "loop_block_allow",
        None,
        None,
        "linelist",
        [],
        ALLOW_HELP,
        "none",
        "@pytest.mark.allow_blocking(reason=...)",
    ),
    Option(
        "loop_guard_sqlalchemy",
        None,
        None,
        "string",
        "false",
        SQLALCHEMY_HELP,
        "off",
        "@pytest.mark.allow_lazy_loads (opts out)",
    ),
    Option(
        "loop_sqlalchemy_nplusone",
        None,
        None,
        "string",
        "10",
        NPLUSONE_HELP,
        "10",
        "@pytest.mark.allow_nplusone (opts out)",
    ),
)
MARKERS = (THRESHOLD_MARKER, ALLOW_MARKER, LEAKS_MARKER, LAZY_MARKER, NPLUSONE_MARKER)


def markdown_table() -> str:
    """The settings table of the docs' configuration page, made from ``OPTIONS``."""
    rows = ["| ini | command line | marker | default | what it does |", "|---|---|---|---|---|"]
    for o in OPTIONS:
        cells = (f"`{o.ini}`", _flag(o), _code(o.marker), f"`{o.shown_default}`", o.help)
        rows.append("| " + " | ".join(_cell(c) for c in cells) + " |")
    return "\n".join(rows) + "\n"


def _cell(text: str) -> str:
    # Markdown: a pipe ends a cell and a star starts emphasis, even in quoted values.
    return text.replace("|", "\\|").replace("*", "\\*")


def _flag(option: Option) -> str:
    if option.flag is None:
        return "—"
    if option.metavar is None:
        return f"`{option.flag}` / `--no-{option.flag[2:]}`"
    # A pipe cannot stand in a table's code span: one span per choice.
    return " / ".join(f"`{option.flag}={choice}`" for choice in option.metavar.split("|"))


def _code(text: str | None) -> str:
    if text is None:
        return "—"
    code, _, rest = text.partition(" (")
    return f"`{code}`" + (f" ({rest}" if rest else "")
