"""The same blocking and clean cases under each detector, and each one's cost on pure callbacks.

    pip install blockbuster pyleak   # the competitors, not dependencies of this project
    python bench/compare.py

Each case runs in a fresh ``asyncio.run``. "caught" means the tool reported the case (raised,
logged or recorded); a clean case that is caught is a false alarm. Tools that are not installed
are skipped. Nothing is asserted: this prints a table for the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

from pytest_loopguard import LoopGuard

THRESHOLD = 0.1
Case = Callable[[], Coroutine[Any, Any, None]]


def _busy(seconds: float) -> None:
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def _slow_fifo() -> str:
    path = os.path.join(tempfile.mkdtemp(), "fifo")
    os.mkfifo(path)

    def feed() -> None:
        time.sleep(0.3)
        with open(path, "w") as f:
            f.write("x")

    threading.Thread(target=feed, daemon=True).start()
    return path


async def sleep_block() -> None:
    time.sleep(0.3)


async def cpu_block() -> None:
    _busy(0.3)


async def slow_file_read() -> None:
    with open(_slow_fifo()) as f:
        f.read()


async def socket_recv() -> None:
    a, b = socket.socketpair()
    threading.Timer(0.3, b.send, (b"x",)).start()
    a.recv(1)
    a.close()
    b.close()


async def many_short_sleeps() -> None:
    for _ in range(30):
        time.sleep(0.01)


async def clean_async_sleep() -> None:
    await asyncio.sleep(0.3)


async def clean_to_thread() -> None:
    await asyncio.to_thread(time.sleep, 0.3)


async def clean_short_sleep() -> None:
    time.sleep(0.01)


async def clean_tiny_file_read() -> None:
    with open(__file__) as f:
        f.read(10)


BLOCKING = [sleep_block, cpu_block, slow_file_read, socket_recv, many_short_sleeps]
CLEAN = [clean_async_sleep, clean_to_thread, clean_short_sleep, clean_tiny_file_read]


def with_loopguard(case: Case) -> bool:
    with LoopGuard(threshold=THRESHOLD) as guard:
        asyncio.run(case())
    return bool(guard.events)


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.messages.append(record.getMessage())


def with_asyncio_debug(case: Case) -> bool:
    records = _Records()
    logger = logging.getLogger("asyncio")
    logger.addHandler(records)
    logger.propagate = False  # keep the warnings off the terminal; we only count them

    async def main() -> None:
        asyncio.get_running_loop().slow_callback_duration = THRESHOLD
        await case()

    try:
        asyncio.run(main(), debug=True)
    finally:
        logger.removeHandler(records)
        logger.propagate = True
    return any("took" in m for m in records.messages)


def with_blockbuster(case: Case) -> bool:
    from blockbuster import BlockingError, blockbuster_ctx

    try:
        with blockbuster_ctx():
            asyncio.run(case())
    except BlockingError:
        return True
    return False


def with_pyleak(case: Case) -> bool:
    from pyleak import no_event_loop_blocking
    from pyleak.eventloop import EventLoopBlockError

    async def main() -> None:
        async with no_event_loop_blocking(action="raise", threshold=THRESHOLD):
            await case()

    try:
        asyncio.run(main())
    except Exception as exc:  # pyleak raises its error, possibly inside an ExceptionGroup
        group = getattr(exc, "exceptions", (exc,))
        if any(isinstance(e, EventLoopBlockError) for e in group):
            return True
        raise
    return False


TOOLS: dict[str, Callable[[Case], bool]] = {
    "pytest-loopguard": with_loopguard,
    "asyncio debug mode": with_asyncio_debug,
    "blockbuster": with_blockbuster,
    "pyleak": with_pyleak,
}


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    logging.disable(logging.CRITICAL)
    try:
        yield
    finally:
        logging.disable(logging.NOTSET)


async def _callbacks() -> None:
    for _ in range(200_000):
        await asyncio.sleep(0)


def cost(tool: str, rounds: int = 5) -> float:
    """Median ratio of 200,000 ``sleep(0)`` callbacks with the tool on vs nothing, interleaved."""
    ratios = []
    for _ in range(rounds):
        start = time.perf_counter()
        asyncio.run(_callbacks())
        base = time.perf_counter() - start
        start = time.perf_counter()
        with _quiet():
            TOOLS[tool](_callbacks)
        ratios.append((time.perf_counter() - start) / base)
    return statistics.median(ratios)


def available(tool: str) -> bool:
    module = {"blockbuster": "blockbuster", "pyleak": "pyleak"}.get(tool)
    if module is None:
        return True
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def main() -> None:
    tools = [t for t in TOOLS if available(t)]
    print(f"| case | {' | '.join(tools)} |")
    print(f"|---|{'---|' * len(tools)}")
    for case in BLOCKING + CLEAN:
        row = ["caught" if TOOLS[t](case) else "—" for t in tools]
        kind = "block" if case in BLOCKING else "clean"
        print(f"| {case.__name__} ({kind}) | {' | '.join(row)} |", flush=True)
    print(f"| cost on 200k callbacks | {' | '.join(f'{cost(t):.2f}x' for t in tools)} |")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
