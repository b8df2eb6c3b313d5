"""The verdict for an ORM attribute a response model could not read, from pydantic's own
errors: which attribute, who read it, why, and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

pydantic = pytest.importorskip("pydantic")

from pytest_loopguard._base.serialization import unloaded_attribute  # noqa: E402


class DetachedInstanceError(Exception):
    """Named as SQLAlchemy's: the verdict goes by the name pydantic keeps."""


class Order:
    status = "paid"

    @property
    def lines(self) -> list[object]:
        raise DetachedInstanceError(
            "Parent instance <Order at 0x1> is not bound to a Session; lazy load operation of "
            "attribute 'lines' cannot proceed"
        )


class Expired:
    @property
    def status(self) -> str:
        raise DetachedInstanceError(
            "Instance <Order at 0x2> is not bound to a Session; attribute refresh operation "
            "cannot proceed"
        )


class OrderOut(pydantic.BaseModel):
    model_config = pydantic.ConfigDict(from_attributes=True)
    status: str
    lines: list[int] = pydantic.Field(default_factory=list)


def _error(obj: object) -> BaseException:
    with pytest.raises(pydantic.ValidationError) as caught:
        OrderOut.model_validate(obj, from_attributes=True)
    return caught.value


def test_an_unloaded_relationship_is_named_with_the_user_line_and_the_fix() -> None:
    verdict = unloaded_attribute(_error(Order()), Path(__file__).parent)
    assert verdict is not None
    first, fix, said = verdict.splitlines()
    assert first.startswith("Order.lines was not loaded when OrderOut.model_validate read it at ")
    assert "test_serialization_unit.py:" in first
    assert first.endswith("in _error: the session that loaded it was closed before it was read")
    assert fix.startswith("fix: load it in the query — `select(Order).options(selectinload(")
    assert "`await order.awaitable_attrs.lines`" in fix
    assert said.startswith("(SQLAlchemy said: DetachedInstanceError: Parent instance <Order")


def test_an_expired_attribute_gets_the_commit_fix() -> None:
    verdict = unloaded_attribute(_error(Expired()), None)
    assert verdict is not None
    assert verdict.startswith("Expired.status was not loaded when ")
    assert "expired (by a commit) and its session closed" in verdict
    assert "expire_on_commit=False" in verdict


def test_other_validation_errors_and_other_exceptions_get_none() -> None:
    with pytest.raises(pydantic.ValidationError) as caught:
        OrderOut.model_validate({"status": 3})
    assert unloaded_attribute(caught.value, None) is None
    assert unloaded_attribute(ValueError("lines"), None) is None


def test_wrapped_it_is_still_found() -> None:
    outer = RuntimeError("the app's 500")
    outer.__cause__ = _error(Order())
    assert unloaded_attribute(outer, None) is not None
