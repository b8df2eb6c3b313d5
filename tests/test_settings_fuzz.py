"""Hypothesis: every setting's parser accepts each valid value and turns anything else into a
UsageError naming the setting — never another exception (which would be a traceback)."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pytest_loopguard._plugin import settings as _settings

ANY = st.one_of(st.text(), st.floats(), st.integers(), st.booleans(), st.none())


def _usage_or(func: object, *args: object) -> object:
    message = None
    try:
        return func(*args)  # type: ignore[operator]
    except pytest.UsageError as exc:
        message = exc
    assert "pytest-loopguard:" in str(message)
    assert "from src" in str(message)
    return message


@settings(max_examples=300, deadline=None)
@given(ANY)
def test_threshold(raw: object) -> None:
    value = _usage_or(_settings.parse_threshold, raw, "src")
    if not isinstance(value, pytest.UsageError):
        assert isinstance(value, float)
        assert math.isfinite(value)
        assert value > 0


@given(st.floats(min_value=1e-6, max_value=1e6))
def test_threshold_valid_numbers_accepted(value: float) -> None:
    assert _settings.parse_threshold(str(value), "src") == value


@settings(max_examples=300, deadline=None)
@given(ANY, st.floats(min_value=0.001, max_value=10))
def test_timeout(raw: object, threshold: float) -> None:
    value = _usage_or(_settings.parse_timeout, raw, "src", threshold)
    if not isinstance(value, pytest.UsageError):
        assert value is None or value > threshold


@settings(max_examples=300, deadline=None)
@given(ANY)
def test_bool(raw: object) -> None:
    assert isinstance(_usage_or(_settings.parse_bool, raw, "src"), (bool, pytest.UsageError))


@given(st.sampled_from(["1", "true", "YES", " on ", "0", "false", "No", "off", ""]))
def test_bool_spellings_accepted(raw: str) -> None:
    assert isinstance(_settings.parse_bool(raw, "src"), bool)


@settings(max_examples=300, deadline=None)
@given(ANY)
def test_mode(raw: object) -> None:
    value = _usage_or(_settings.parse_mode, raw, "src")
    assert value in _settings.MODES or isinstance(value, pytest.UsageError)


@settings(max_examples=300, deadline=None)
@given(st.text())
def test_allow_lines(line: str) -> None:
    message = None
    try:
        rule = _settings.parse_allow(line)
    except pytest.UsageError as exc:
        message = str(exc)
    if message is not None:
        assert "loop_block_allow" in message
        return
    assert rule.matches("mod", "func", "/x/mod.py") in (True, False)
