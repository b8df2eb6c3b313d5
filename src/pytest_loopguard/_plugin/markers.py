"""A test's own settings: the session's, with its markers' (the nearest of each) over them."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest

from .settings import Settings, parse_threshold


def _threshold_marker(seconds: Any) -> Any:
    return seconds


def _allow_marker(reason: Any = None) -> Any:
    return reason


def _leaks_marker(reason: Any = None) -> Any:
    return reason


# Python names the function in a bad call's TypeError: make that the marker's name.
_threshold_marker.__qualname__ = "loop_block_threshold"
_allow_marker.__qualname__ = "allow_blocking"
_leaks_marker.__qualname__ = "allow_leaks"


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


_OUR_MARKERS = frozenset({"loop_block_threshold", "allow_blocking", "allow_leaks"})
Inherited = dict[int, dict[str, pytest.Mark]]  # id(node) -> our markers nearest it


def _closest_markers(node: Any, inherited: Inherited) -> dict[str, pytest.Mark]:
    """Our markers nearest ``node``: its own, then its parent's (each parent walked once for
    all of its tests, where ``iter_markers`` would walk every test's whole chain)."""
    found = {m.name: m for m in reversed(node.own_markers) if m.name in _OUR_MARKERS}
    parent = node.parent
    if parent is not None:
        above = inherited.get(id(parent))
        if above is None:
            above = inherited[id(parent)] = _closest_markers(parent, inherited)
        for name, marker in above.items():
            found.setdefault(name, marker)
    return found


def for_item(item: pytest.Item, settings: Settings, inherited: Inherited | None = None) -> Settings:
    """The settings for one test: its markers override the session's. ``inherited``: what
    the other tests of this collection found on their parents."""
    closest = _closest_markers(item, {} if inherited is None else inherited)
    if not closest:
        return settings  # most tests
    marker = closest.get("loop_block_threshold")
    if marker is not None:
        settings = _threshold_from(item, marker, settings)
    marker = closest.get("allow_blocking")
    if marker is not None:
        settings = _allowed_by(item, marker, settings)
    marker = closest.get("allow_leaks")
    if marker is not None:
        _reason(item, marker, _leaks_marker, 'allow_leaks(reason="...")')
        settings = replace(settings, allow_leaks=True)
    return settings


def _threshold_from(item: pytest.Item, marker: pytest.Mark, settings: Settings) -> Settings:
    seconds = _call_marker(item, marker, _threshold_marker, "loop_block_threshold(0.5)")
    where = f"@pytest.mark.loop_block_threshold on {item.nodeid}"
    threshold = parse_threshold(seconds, where)
    if settings.timeout is not None and settings.timeout <= threshold:
        raise pytest.UsageError(
            f"pytest-loopguard: {where} sets {threshold:g} s, not below "
            f"loop_block_timeout ({settings.timeout:g} s): raise the timeout or lower it"
        )
    return replace(settings, threshold=threshold, threshold_source="marker")


def _allowed_by(item: pytest.Item, marker: pytest.Mark, settings: Settings) -> Settings:
    reason = _reason(item, marker, _allow_marker, 'allow_blocking(reason="...")')
    return replace(settings, allow_blocking=True, allow_reason=reason)


def _reason(item: pytest.Item, marker: pytest.Mark, func: Any, example: str) -> str | None:
    reason = _call_marker(item, marker, func, example)
    if reason is not None and not isinstance(reason, str):
        raise pytest.UsageError(
            f"pytest-loopguard: bad @pytest.mark.{marker.name} on {item.nodeid}: "
            f"reason must be a string, got {reason!r}"
        )
    return reason
