"""A phase's blocks and the test's settings -> failing, warned or allowed."""

from __future__ import annotations

from dataclasses import replace

from pytest_loopguard._base.events import BlockEvent, Hint
from pytest_loopguard._plugin.settings import Settings, parse_allow
from pytest_loopguard._plugin.verdict import NOTHING, judge

EVENT = BlockEvent(0.3, 0.1, 0.0, None, (), Hint("sleep", "time.sleep blocks", "await"))


def test_no_blocks_is_nothing() -> None:
    assert judge([], Settings()) is NOTHING


def test_a_block_fails_and_an_allowed_one_does_not() -> None:
    allowed = replace(EVENT, allowed=True)
    verdict = judge([EVENT, allowed], Settings())
    assert verdict.failing == (EVENT,)
    assert verdict.allowed == (allowed,)
    assert verdict.of(EVENT) == "failed"
    assert verdict.of(allowed) == "allowed"


def test_warn_mode_warns() -> None:
    verdict = judge([EVENT], Settings(mode="warn"))
    assert verdict.failing == ()
    assert verdict.of(EVENT) == "warned"


def test_the_marker_the_allowlist_and_a_debugger_allow() -> None:
    assert judge([EVENT], Settings(allow_blocking=True)).failing == ()
    assert judge([replace(EVENT, debugger=True)], Settings()).failing == ()
    assert judge([EVENT], Settings(debugger="pdb")).failing == ()
    through = replace(EVENT, through=(("vendor.sdk", "flush", "/x/vendor/sdk.py"),))
    assert judge([through], Settings(allow=(parse_allow("vendor"),))).failing == ()
    assert judge([through], Settings(allow=(parse_allow("other"),))).failing == (through,)
