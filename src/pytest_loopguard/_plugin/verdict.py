"""A phase's blocks and the test's settings -> failing, warned or allowed: judged once.

The plugin judges each phase right after it ends and keeps the verdict on the test item; the
failure, the warnings, the report's data, the summary and the JSON report all read that one
verdict, so they cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from .._base.events import BlockEvent
from .settings import Settings


@dataclass(frozen=True)
class Verdict:
    """What the blocks of one phase of one test come to."""

    events: tuple[BlockEvent, ...] = ()  # all of them, in the order they ended
    failing: tuple[BlockEvent, ...] = ()
    warned: tuple[BlockEvent, ...] = ()
    allowed: tuple[BlockEvent, ...] = ()
    known: tuple[BlockEvent, ...] = ()  # in the baseline: reported, never failed

    def of(self, event: BlockEvent) -> str:
        """``failed``, ``warned``, ``allowed`` or ``known``: the JSON report's word for one."""
        if any(event is e for e in self.allowed):
            return "allowed"
        if any(event is e for e in self.known):
            return "known"
        return "warned" if any(event is e for e in self.warned) else "failed"


NOTHING = Verdict()


def allows(settings: Settings, event: BlockEvent) -> bool:
    """Whether a block is allowed: by a marker, by ``loopguard.allow()``, by the allowlist, or
    because a debugger held the loop (someone was reading a prompt)."""
    if settings.allow_blocking or event.allowed or event.debugger or settings.debugger:
        return True
    return any(rule.matches(*frame) for frame in event.through for rule in settings.allow)


def judge(
    events: Sequence[BlockEvent],
    settings: Settings,
    known: Callable[[BlockEvent], bool] | None = None,
) -> Verdict:
    """The verdict on ``events``, the blocks of one phase, under the test's ``settings``;
    ``known`` tells the blocks a baseline lists."""
    if not events:
        return NOTHING
    allowed = tuple(e for e in events if allows(settings, e))
    counted = tuple(e for e in events if not any(e is a for a in allowed))
    listed = () if known is None else tuple(e for e in counted if known(e))
    counted = tuple(e for e in counted if not any(e is k for k in listed))
    if settings.mode == "warn":
        return Verdict(tuple(events), warned=counted, allowed=allowed, known=listed)
    return Verdict(tuple(events), failing=counted, allowed=allowed, known=listed)
