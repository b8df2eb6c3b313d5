"""Each setting's values: what is accepted, and the usage error for the rest (no pytest run)."""

from __future__ import annotations

import pytest

from pytest_loopguard._plugin.settings import (
    parse_allow,
    parse_bool,
    parse_mode,
    parse_nplusone,
    parse_threshold,
    parse_timeout,
)


@pytest.mark.parametrize(
    ("raw", "value"), [("0.1", 0.1), (" 2 ", 2.0), (0.5, 0.5), ("1e-3", 0.001)]
)
def test_thresholds(raw: object, value: float) -> None:
    assert parse_threshold(raw, "ini loop_block_threshold") == value


@pytest.mark.parametrize("raw", ["abc", "0", "-1", "nan", "inf", True, ""])
def test_bad_thresholds_name_the_value_and_where_it_came_from(raw: object) -> None:
    with pytest.raises(pytest.UsageError) as error:
        parse_threshold(raw, "--loop-block-threshold")
    assert str(error.value) == (
        f"pytest-loopguard: {raw!r} from --loop-block-threshold is not a valid "
        "loop_block_threshold: expected a finite number of seconds > 0, such as 0.1"
    )


def test_booleans() -> None:
    assert parse_bool("Yes", "ini x") is True
    assert parse_bool(" off ", "ini x") is False
    with pytest.raises(pytest.UsageError, match=r"'sometimes' from ini x is not a valid boolean"):
        parse_bool("sometimes", "ini x")


def test_timeouts_are_above_the_threshold_or_off() -> None:
    assert parse_timeout("30", "ini t", 0.1) == 30.0
    assert parse_timeout("off", "ini t", 0.1) is None
    assert parse_timeout("0", "ini t", 0.1) is None
    with pytest.raises(pytest.UsageError, match="ini t"):
        parse_timeout("0.05", "ini t", 0.1)


def test_modes_and_nplusone() -> None:
    assert parse_mode("WARN", "ini m") == "warn"
    with pytest.raises(pytest.UsageError, match="'loud' from ini m"):
        parse_mode("loud", "ini m")
    assert parse_nplusone("off", "ini n") is None
    assert parse_nplusone("5", "ini n") == 5
    with pytest.raises(pytest.UsageError, match="expected a whole number >= 2"):
        parse_nplusone("1", "ini n")


def test_allow_rules() -> None:
    module = parse_allow("ddtrace")
    assert module.matches("ddtrace.writer", "flush", "/x/ddtrace/writer.py")
    assert not module.matches("ddtracer", "flush", "/x/ddtracer.py")
    function = parse_allow("jinja2.environment:Environment.__init__")
    assert function.matches("jinja2.environment", "__init__", "/x/env.py")
    assert not function.matches("jinja2.environment", "render", "/x/env.py")
    path = parse_allow("*/site-packages/botocore/*")
    assert path.matches("botocore.client", "f", "/v/site-packages/botocore/client.py")
