"""Settings, resolved once per session (marker > CLI > ini > default) and validated."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Any

import pytest

DEFAULT_THRESHOLD = 0.1

THRESHOLD_HELP = (
    "Fail a test whose code holds the asyncio event loop for this many seconds or more "
    f"(a number > 0; default {DEFAULT_THRESHOLD})."
)
DEBUG_HELP = (
    "Also turn on asyncio's debug mode on every loop under test, with slow_callback_duration "
    "set to the threshold (slow: about 7x on a callback-heavy suite; default off)."
)
MODES = ("fail", "warn")
MODE_HELP = (
    "What a block does to its test: 'fail' it (default), or 'warn' — the test keeps its own "
    "outcome and each block becomes a PytestWarning, for adopting the plugin gradually."
)
SQLALCHEMY_HELP = (
    "Make the loopguard_sqlalchemy fixture active for every test: lazy loads and sync engines "
    "on the event loop fail early with the fix (true/false; default false)."
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

_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off", "")


@dataclass(frozen=True)
class Settings:
    """What the plugin does for one session, or (after for_item) for one test."""

    threshold: float = DEFAULT_THRESHOLD
    threshold_source: str = "default"
    debug: bool = False
    guard_sqlalchemy: bool = False
    mode: str = "fail"
    allow_blocking: bool = False
    allow_reason: str | None = None


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


def parse_bool(raw: object, source: str) -> bool:
    """An ini boolean, or a UsageError naming the value, its source and the valid spellings."""
    if isinstance(raw, bool):
        return raw
    text = str(raw).strip().lower()
    if text in _TRUE or text in _FALSE:
        return text in _TRUE
    raise pytest.UsageError(
        f"pytest-loopguard: {raw!r} from {source} is not a valid boolean: "
        f"expected one of {', '.join(_TRUE + _FALSE[:-1])}"
    )


def _threshold(config: pytest.Config) -> tuple[float, str]:
    cli = config.getoption("loop_block_threshold")
    if cli is not None:
        return parse_threshold(cli, "--loop-block-threshold"), "--loop-block-threshold"
    ini = config.getini("loop_block_threshold")
    if ini not in ("", None):
        return parse_threshold(ini, "ini loop_block_threshold"), "ini"
    return DEFAULT_THRESHOLD, "default"


def _debug(config: pytest.Config) -> bool:
    if config.getoption("loop_debug"):
        return True
    return parse_bool(config.getini("loop_debug"), "ini loop_debug")


def resolve(config: pytest.Config) -> Settings:
    """The session's settings: CLI over ini over default (markers come in for_item)."""
    threshold, source = _threshold(config)
    guard_sqlalchemy = parse_bool(
        config.getini("loop_guard_sqlalchemy"), "ini loop_guard_sqlalchemy"
    )
    return Settings(threshold, source, _debug(config), guard_sqlalchemy, _mode(config))


def parse_mode(raw: object, source: str) -> str:
    """fail or warn, or a UsageError naming the value, its source and the valid values."""
    value = str(raw).strip().lower()
    if value not in MODES:
        raise pytest.UsageError(
            f"pytest-loopguard: {raw!r} from {source} is not a valid loop_block_mode: "
            f"expected one of {', '.join(MODES)}"
        )
    return value


def _mode(config: pytest.Config) -> str:
    cli = config.getoption("loop_block_mode")
    if cli is not None:
        return parse_mode(cli, "--loop-block-mode")
    return parse_mode(config.getini("loop_block_mode") or "fail", "ini loop_block_mode")


def _threshold_marker(seconds: Any) -> Any:
    return seconds


def _allow_marker(reason: Any = None) -> Any:
    return reason


# Python names the function in a bad call's TypeError: make that the marker's name.
_threshold_marker.__qualname__ = "loop_block_threshold"
_allow_marker.__qualname__ = "allow_blocking"


def _call_marker(item: pytest.Item, marker: pytest.Mark, func: Any, example: str) -> Any:
    # Calling a function with the marker's signature validates its arguments like Python would.
    try:
        return func(*marker.args, **marker.kwargs)
    except TypeError as exc:
        raise pytest.UsageError(
            f"pytest-loopguard: bad @pytest.mark.{marker.name}{_args(marker)} on {item.nodeid}: "
            f"{exc}; expected {example}"
        ) from None


def _args(marker: pytest.Mark) -> str:
    parts = [repr(a) for a in marker.args] + [f"{k}={v!r}" for k, v in marker.kwargs.items()]
    return f"({', '.join(parts)})"


def for_item(item: pytest.Item, settings: Settings) -> Settings:
    """The settings for one test: its markers override the session's."""
    marker = item.get_closest_marker("loop_block_threshold")
    if marker is not None:
        seconds = _call_marker(item, marker, _threshold_marker, "loop_block_threshold(0.5)")
        where = f"@pytest.mark.loop_block_threshold on {item.nodeid}"
        threshold = parse_threshold(seconds, where)
        settings = replace(settings, threshold=threshold, threshold_source="marker")
    marker = item.get_closest_marker("allow_blocking")
    if marker is not None:
        reason = _call_marker(item, marker, _allow_marker, 'allow_blocking(reason="...")')
        if reason is not None and not isinstance(reason, str):
            raise pytest.UsageError(
                f"pytest-loopguard: bad @pytest.mark.allow_blocking on {item.nodeid}: "
                f"reason must be a string, got {reason!r}"
            )
        settings = replace(settings, allow_blocking=True, allow_reason=reason)
    return settings
