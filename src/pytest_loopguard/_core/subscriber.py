"""What the engine knows of a guard (``Subscriber``), and the guards subscribed now.

The engine, the ledger and the watchdog speak to guards only through this interface, so none of
them imports ``LoopGuard``: the guard sits above the engine, never beside it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from .._base.events import BlockEvent

DEFAULT_THRESHOLD = 0.1


class Subscriber(Protocol):
    """A guard, as the engine sees it: its settings, its label of now, and where blocks go."""

    threshold: float
    timeout: float | None
    debug: bool
    phase: str | None
    fixture: str | None

    def record(self, event: BlockEvent) -> None:
        """A block of this guard's is over (the engine holds the ledger's lock)."""

    def allowing(self, ident: int) -> bool:
        """Whether ``with guard.allow():`` is active on thread ``ident``."""

    def quiet(self, since: int | None = None) -> bool:
        """Whether reading its events now would add nothing."""

    def calls_pending(self) -> bool:
        """Whether strict mode recorded calls not yet made events."""

    def flush_calls(self) -> None:
        """Make strict mode's pending calls events."""

    def busy(self, since: float) -> None:
        """A unit of this guard's, begun at ``since``, has held its loop for half the
        threshold (called once a unit, on the watchdog's thread, holding the ledger's lock)."""

    def settled(self, counted: bool) -> None:
        """That unit is over; ``counted``: it is a block, recorded at the next flush."""


class Subscribers:
    """The guards subscribed now, and what the watchdog paces itself by: the smallest of their
    thresholds, and the threshold of asyncio's debug mode if one of them asks for it."""

    def __init__(self) -> None:
        self.guards: tuple[Subscriber, ...] = ()
        self.threshold = DEFAULT_THRESHOLD
        self.debug: float | None = None

    def add(self, guard: Subscriber) -> None:
        if self.guards:
            self.guards = (*self.guards, guard)
            self._tune()
        else:  # the plugin's case, at every test's start: kept to a few stores
            self.guards = (guard,)
            self.threshold = guard.threshold
            self.debug = guard.threshold if guard.debug else None

    def remove(self, guard: Subscriber) -> None:
        guards = self.guards
        if len(guards) == 1 and guards[0] is guard:  # and at its end
            self.guards, self.threshold, self.debug = (), DEFAULT_THRESHOLD, None
        else:
            self.guards = tuple(g for g in guards if g is not guard)
            self._tune()

    def retune(self) -> None:
        self._tune()

    def _tune(self) -> None:
        guards = self.guards
        if len(guards) == 1:  # the plugin's case: one test at a time
            self.threshold = guards[0].threshold
            self.debug = self.threshold if guards[0].debug else None
        elif not guards:  # and between two tests
            self.threshold, self.debug = DEFAULT_THRESHOLD, None
        else:
            self.threshold = min(g.threshold for g in guards)
            debug = [g.threshold for g in guards if g.debug]
            self.debug = min(debug) if debug else None
