"""Settings, resolved once per session (marker > CLI > ini > default) and validated."""

from __future__ import annotations

import fnmatch
import math
import os
import re
from dataclasses import dataclass

import pytest

from .options import DEFAULT_THRESHOLD, LIFECYCLE_MODES, MODES

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


_MODULE = re.compile(r"[A-Za-z_][\w]*(\.[A-Za-z_][\w]*)*")
_FUNCTION = re.compile(r"[A-Za-z_<][\w<>]*(\.[A-Za-z_<][\w<>]*)*")


@dataclass(frozen=True)
class AllowRule:
    """One line of ``loop_block_allow``: a module, a module:function, or a path glob."""

    module: str | None = None
    function: str | None = None
    glob: str | None = None

    def matches(self, module: str, function: str, filename: str) -> bool:
        if self.glob is not None:
            return fnmatch.fnmatch(filename, self.glob)
        assert self.module is not None
        if module != self.module and not module.startswith(self.module + "."):
            return False
        return self.function is None or _function_matches(self.function, function)


def _function_matches(rule: str, function: str) -> bool:
    # Frames know a function's name, not its class: "Cls.method" matches a frame named "method".
    return function == rule.rsplit(".", 1)[-1]


def parse_allow(line: str) -> AllowRule:
    """One allowlist line, or a UsageError naming it and the three valid forms."""
    text = line.strip()
    if "/" in text or "*" in text or text.endswith(".py"):
        return AllowRule(glob=text)
    module, colon, function = text.partition(":")
    if _MODULE.fullmatch(module) and (not colon or _FUNCTION.fullmatch(function)):
        return AllowRule(module=module, function=function or None)
    raise pytest.UsageError(
        f"pytest-loopguard: {line!r} in ini loop_block_allow is not a valid entry: expected a "
        "module (pkg.mod), a module:function (pkg.mod:func) or a path glob (*/pkg/*)"
    )


@dataclass(frozen=True)
class Settings:
    """What the plugin does for one session, or (after for_item) for one test."""

    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = "default"
    debug: bool = False
    guard_sqlalchemy: bool = False
    mode: str = "fail"
    report: str | None = None
    allow: tuple[AllowRule, ...] = ()
    timeout: float | None = None
    strict: bool = False
    allow_blocking: bool = False
    allow_reason: str | None = None
    # A debugger drives this session (--pdb, --trace, an IDE's): blocks are recorded, not failed,
    # and the hang guard is off. Named here for the header.
    debugger: str | None = None
    tracer: str | None = None  # a tracer (coverage) slows the code down: said in the header
    # GitHub Actions workflow commands, where GITHUB_ACTIONS=true; None: auto (see _annotations)
    annotations: bool | None = None
    # The SQLAlchemy guards report the same SELECT run this many times from one line (None: off).
    nplusone: int | None = 10
    baseline: str | None = None  # the known findings' file, absolute
    baseline_update: bool = False
    baseline_strict: bool = False
    subprocesses: bool = True  # watch the Python processes the session starts
    lifecycle: str = "warn"  # tasks, coroutines and threads a test leaves: fail, warn or off
    allow_leaks: bool = False  # @pytest.mark.allow_leaks: recorded, never failed


SETTINGS_KEY = pytest.StashKey[Settings]()


def parse_threshold(raw: object, source: str) -> float:
    """A threshold in seconds, or a UsageError naming the value, its source and what is valid."""
    try:
        value = float(str(raw).strip()) if not isinstance(raw, (int, float)) else float(raw)
    except ValueError:
        value = math.nan
    if isinstance(raw, bool) or not (math.isfinite(value) and value > 0):
        raise pytest.UsageError(
            f"pytest-loopguard: {raw!r} from {source} is not a valid loop_block_threshold: "
            "expected a finite number of seconds > 0, such as 0.1"
        )
    return value


def parse_bool(raw: object, source: str, also: tuple[str, ...] = ()) -> bool:
    """An ini boolean, or a UsageError naming the value, its source and the valid spellings
    (with ``also``: the other words the caller took before asking)."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise pytest.UsageError(
        f"pytest-loopguard: {raw!r} from {source} is not a valid boolean: "
        f"expected one of {', '.join(also + _TRUE + _FALSE[:-1])}"
    )


def _threshold(config: pytest.Config) -> tuple[float, str]:
    cli = config.getoption("loop_block_threshold")
    if cli is not None:
        return parse_threshold(cli, "--loop-block-threshold"), "--loop-block-threshold"
    ini = config.getini("loop_block_threshold")
    if ini not in ("", None):
        return parse_threshold(ini, "ini loop_block_threshold"), "ini"
    return DEFAULT_THRESHOLD, "default"


def _flag(config: pytest.Config, name: str) -> bool:
    # --flag / --no-flag on the command line beat the ini either way; absent (None), the ini rules.
    cli = config.getoption(name)
    if cli is not None:
        return bool(cli)
    return parse_bool(config.getini(name), f"ini {name}")


def parse_nplusone(raw: object, source: str) -> int | None:
    """The N+1 threshold: a whole number >= 2, None for 0/off, else a UsageError."""
    text = str(raw).strip().lower()
    if text in ("0", "off", "false", "no"):
        return None
    if text.isdigit() and int(text) >= 2:
        return int(text)
    raise pytest.UsageError(
        f"pytest-loopguard: {raw!r} from {source} is not a valid loop_sqlalchemy_nplusone: "
        "expected a whole number >= 2 (how many times the same SELECT may run from one line), "
        "or 0/off"
    )


def _annotations(config: pytest.Config) -> bool | None:
    # None is auto (the default): on, unless pytest-github-actions-annotate-failures is
    # active, which annotates the same failures and warnings at the same lines.
    cli = config.getoption("loop_block_annotations")
    if cli is not None:
        return bool(cli)
    raw = config.getini("loop_block_annotations")
    if str(raw).strip().lower() == "auto":
        return None
    return parse_bool(raw, "ini loop_block_annotations", also=("auto",))


def resolve(config: pytest.Config) -> Settings:
    """The session's settings: CLI over ini over default (markers come in for_item)."""
    threshold, source = _threshold(config)
    guard_sqlalchemy = parse_bool(
        config.getini("loop_guard_sqlalchemy"), "ini loop_guard_sqlalchemy"
    )
    mode, report = _mode(config), _report(config)
    allow = tuple(parse_allow(line) for line in config.getini("loop_block_allow") if line.strip())
    debugger, timeout = _debugger_of(config), _timeout(config, threshold)
    return Settings(
        debugger=debugger,
        tracer=None if debugger else _tracer_of(),
        annotations=_annotations(config),
        threshold=threshold,
        threshold_source=source,
        debug=_flag(config, "loop_debug"),
        guard_sqlalchemy=guard_sqlalchemy,
        mode=mode,
        report=report,
        allow=allow,
        timeout=None if debugger else timeout,
        strict=_flag(config, "loop_block_strict"),
        nplusone=parse_nplusone(
            config.getini("loop_sqlalchemy_nplusone"), "ini loop_sqlalchemy_nplusone"
        ),
        baseline=_baseline(config),
        baseline_update=_flag(config, "loop_baseline_update"),
        baseline_strict=_flag(config, "loop_baseline_strict"),
        subprocesses=_flag(config, "loop_block_subprocesses"),
        lifecycle=_lifecycle(config),
    )


def _baseline(config: pytest.Config) -> str | None:
    # Relative to where pytest was started, as the JSON report's path; an empty
    # --loop-baseline= turns off what the ini set.
    cli = config.getoption("loop_baseline")
    raw = cli if cli is not None else config.getini("loop_baseline")
    if not raw:
        return None
    return os.path.abspath(os.path.join(config.invocation_params.dir, str(raw)))


def _debugger_of(config: pytest.Config) -> str | None:
    from .._base.debugger import attached

    for flag, name in (("usepdb", "--pdb"), ("trace", "--trace")):
        if config.getoption(flag, False):
            return name
    return attached()


def _tracer_of() -> str | None:
    from .._base.debugger import tracer

    return tracer()


def parse_timeout(raw: object, source: str, threshold: float) -> float | None:
    """Seconds > threshold, or off (0, off, empty); else a UsageError naming the value."""
    text = str(raw).strip().lower()
    if text in ("", "0", "off", "none"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if isinstance(raw, bool) or not (math.isfinite(value) and value > threshold):
        raise pytest.UsageError(
            f"pytest-loopguard: {raw!r} from {source} is not a valid loop_block_timeout: "
            f"expected a number of seconds greater than the threshold ({threshold:g}), "
            "or 0/off to turn the hang guard off"
        )
    return value


def _timeout(config: pytest.Config, threshold: float) -> float | None:
    cli = config.getoption("loop_block_timeout")
    if cli is not None:
        return parse_timeout(cli, "--loop-block-timeout", threshold)
    return parse_timeout(config.getini("loop_block_timeout"), "ini loop_block_timeout", threshold)


def _report(config: pytest.Config) -> str | None:
    """The JSON report's path, checked now: an unwritable one must not cost a whole run."""
    # An empty --loop-block-report= turns off a report the ini asked for.
    cli = config.getoption("loop_block_report")
    raw, source = (
        (cli, "--loop-block-report")
        if cli is not None
        else (config.getini("loop_block_report"), "ini loop_block_report")
    )
    if not raw:
        return None
    path = os.path.abspath(os.path.join(config.invocation_params.dir, str(raw)))
    folder = os.path.dirname(path)
    writable = os.access(path, os.W_OK) if os.path.exists(path) else os.access(folder, os.W_OK)
    if not os.path.isdir(folder) or os.path.isdir(path) or not writable:
        raise pytest.UsageError(
            f"pytest-loopguard: cannot write the block report to {raw!r} from {source}: "
            "expected a file path in an existing, writable folder"
        )
    return path


def parse_mode(raw: object, source: str) -> str:
    """fail or warn, or a UsageError naming the value, its source and the valid values."""
    return _choice(raw, source, "loop_block_mode", MODES)


def _mode(config: pytest.Config) -> str:
    return _chosen(config, "loop_block_mode", "--loop-block-mode", MODES, "fail")


def parse_lifecycle(raw: object, source: str) -> str:
    """fail, warn or off, or a UsageError naming the value, its source and the valid values."""
    return _choice(raw, source, "loop_lifecycle", LIFECYCLE_MODES)


def _lifecycle(config: pytest.Config) -> str:
    return _chosen(config, "loop_lifecycle", "--loop-lifecycle", LIFECYCLE_MODES, "warn")


def _choice(raw: object, source: str, name: str, choices: tuple[str, ...]) -> str:
    value = str(raw).strip().lower()
    if value not in choices:
        raise pytest.UsageError(
            f"pytest-loopguard: {raw!r} from {source} is not a valid {name}: "
            f"expected one of {', '.join(choices)}"
        )
    return value


def _chosen(
    config: pytest.Config, name: str, flag: str, choices: tuple[str, ...], default: str
) -> str:
    """One of ``choices``: the command line's, else the ini's, else ``default``."""
    cli = config.getoption(name)
    if cli is not None:
        return _choice(cli, flag, name, choices)
    return _choice(config.getini(name) or default, f"ini {name}", name, choices)
