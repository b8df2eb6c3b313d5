"""What the children's startup hook costs a Python process's start-up, alternating.

    python bench/startup.py [--rounds 200]

Times ``python -c pass`` (and ``python -c "import asyncio"``) as a process starts:

- ``none``: no hook file in site-packages (no session running);
- ``inert``: the hook file in place, the environment not naming a channel: any Python process
  of that environment while a session runs elsewhere (the target: <= 1 ms added);
- ``watched``: a child of a session, which starts the engine once it imports asyncio.

Medians over ``--rounds`` runs of each, in turn; nothing is asserted (the machine is noisy).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time

from pytest_loopguard._procs.parent import Parent


def _once(code: str, env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=200)
    rounds = parser.parse_args().rounds
    plain = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_LOOPGUARD")}
    watched = dict(plain)
    parent = Parent({"threshold": 0.1}, lambda event, since: None)
    codes = {"pass": "pass", "import asyncio": "import asyncio"}
    times: dict[tuple[str, str], list[float]] = {}
    try:
        for _ in range(rounds):
            for name, code in codes.items():
                times.setdefault(("none", name), []).append(_once(code, plain))
            if not parent.start(watched):
                raise SystemExit("site-packages is not writable: nothing to measure")
            for name, code in codes.items():
                times.setdefault(("inert", name), []).append(_once(code, plain))
                times.setdefault(("watched", name), []).append(_once(code, watched))
            parent.stop()
            watched = dict(plain)
    finally:
        parent.stop()
    print(f"python {sys.version.split()[0]}, {rounds} rounds, medians of each start-up:")
    for name in codes:
        base = statistics.median(times[("none", name)])
        for kind in ("none", "inert", "watched"):
            took = statistics.median(times[(kind, name)])
            print(
                f"  {name:>14}  {kind:>7}: {took * 1000:7.2f} ms  ({(took - base) * 1000:+.2f} ms)"
            )


if __name__ == "__main__":
    main()
