"""What a second thread costs a busy loop, in one process: runs of ``sleep(0)``, alternating.

    python bench/loop_runs.py [--sleeps 3000] [--rounds 80] [--uvloop]

Each round times one loop run of ``--sleeps`` ``await asyncio.sleep(0)`` in each configuration:
``none`` (nothing of ours), ``guard`` (a ``LoopGuard`` around the run: the machinery and an
active watchdog), ``shared`` (a thread that only waits, on the process's file table) and
``own-table`` (the same thread after ``unshare(CLONE_FILES)``, as the watchdog does). The
medians and their ratios to ``none`` are printed; nothing is asserted (the machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext

from pytest_loopguard import LoopGuard
from pytest_loopguard._core.filetable import detach, unshare_call


async def _sleeps(count: int) -> None:
    for _ in range(count):
        await asyncio.sleep(0)


def _timed(new_loop: Callable[[], asyncio.AbstractEventLoop], count: int) -> float:
    loop = new_loop()
    try:
        start = time.perf_counter()
        loop.run_until_complete(_sleeps(count))
        return time.perf_counter() - start
    finally:
        loop.close()


@contextmanager
def _idle_thread(own_table: bool) -> Iterator[None]:
    stop, ready = threading.Event(), threading.Event()
    unshare = unshare_call() if own_table else None

    def wait() -> None:
        detach(unshare)
        ready.set()
        stop.wait()

    thread = threading.Thread(target=wait, daemon=True)
    thread.start()
    ready.wait()
    try:
        yield
    finally:
        stop.set()
        thread.join()


CONFIGS: dict[str, Callable[[], AbstractContextManager[object]]] = {
    "none": nullcontext,
    "guard": lambda: LoopGuard(threshold=0.1),
    "shared": lambda: _idle_thread(own_table=False),
    "own-table": lambda: _idle_thread(own_table=True),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sleeps", type=int, default=3000)
    parser.add_argument("--rounds", type=int, default=80)
    parser.add_argument("--uvloop", action="store_true")
    args = parser.parse_args()
    new_loop = asyncio.new_event_loop
    if args.uvloop:
        import uvloop

        new_loop = uvloop.new_event_loop
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    for r in range(args.rounds):
        for name in list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS)):
            with CONFIGS[name]():
                times[name].append(_timed(new_loop, args.sleeps))
    base = statistics.median(times["none"])
    for name, values in times.items():
        median = statistics.median(values)
        print(f"{name:>10}: median {median * 1000:.3f} ms, {median / base:.3f}x")


if __name__ == "__main__":
    main()
