"""Instructions the SQLAlchemy guards add to a query, counted by valgrind's callgrind.

    python bench/sqlalchemy_instructions.py [--url postgresql+asyncpg://...] [--small 500]
                                            [--large 2500]

Wall time cannot settle a few percent on a shared machine (asyncpg's rounds of one configuration
vary by ±10%); instruction counts can. Runs ``bench/sqlalchemy_overhead.py``'s workload under
callgrind with the guards off and on, ``--small`` and ``--large`` queries each, and prints the
instructions a query (the difference over the extra queries: start-up and set-up cancel out)
and the ratio. Needs ``valgrind`` on PATH; each run takes a minute or two.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import gc
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent


def child(url: str, mode: str, queries: int) -> None:
    """One measured run (under callgrind): the workload with the guards ``mode``."""
    sys.path.insert(0, str(HERE))
    import sqlalchemy_overhead as workload

    from pytest_loopguard.sqlalchemy import SQLAlchemyGuard

    factory = asyncio.run(workload.setup(url))
    asyncio.run(workload.workload(factory, 100))  # caches warm in both modes
    gc.disable()
    guard = SQLAlchemyGuard(nplusone=10) if mode == "on" else contextlib.nullcontext()
    with guard:
        asyncio.run(workload.workload(factory, queries))


def counted(url: str, mode: str, queries: int) -> int:
    command = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        sys.executable,
        __file__,
        "--child",
        mode,
        str(queries),
        "--url",
        url,
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if found is None:
        raise SystemExit(f"no instruction count from callgrind:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--url", help="a database URL (default: SQLite in a temporary directory)")
    parser.add_argument("--small", type=int, default=500)
    parser.add_argument("--large", type=int, default=2500)
    parser.add_argument("--child", nargs=2, metavar=("MODE", "QUERIES"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.url, args.child[0], int(args.child[1]))
        return
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not on PATH (apt-get install valgrind)")
    with tempfile.TemporaryDirectory(prefix="loopguard-bench-") as tmp:
        url = args.url or f"sqlite+aiosqlite:///{tmp}/bench.db"
        extra = args.large - args.small
        per = {}
        for mode in ("off", "on"):  # one after the other: two runs on one database interfere
            small, large = counted(url, mode, args.small), counted(url, mode, args.large)
            per[mode] = (large - small) / extra
            print(f"{mode:>3}: {per[mode]:,.0f} instructions a query", flush=True)
    print(f"ratio {per['on'] / per['off']:.3f}x on {url.split(':')[0]}, target <= 1.03x")


if __name__ == "__main__":
    main()
