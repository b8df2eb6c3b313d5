"""A uvicorn server under a bounded local load, watched (as a session's child) vs not.

    python bench/server_load.py [--rounds 7] [--requests 2000] [--concurrency 20]

Each round starts the same app with uvicorn in a process of its own, once plainly and once with
the environment a pytest session gives its children (the startup hook on, the engine in the
server), in alternating order, and sends it ``--requests`` requests, ``--concurrency`` at a
time (``bench/load.py``). Prints the medians of requests per second and the ratio to the
target; nothing is asserted (the machine is noisy).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from load import load

from pytest_loopguard._procs.parent import Parent

TARGET = 1.03
APP = """
import asyncio

from fastapi import FastAPI

app = FastAPI()


@app.get("/items/{item_id}")
async def item(item_id: int):
    await asyncio.sleep(0)
    return {"id": item_id, "name": f"item {item_id}", "tags": ["a", "b", "c"]}
"""


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _serve(folder: Path, env: dict[str, str]) -> tuple[subprocess.Popen[bytes], str]:
    port = _port()
    command = [sys.executable, "-m", "uvicorn", "bench_app:app", "--port", str(port)]
    server = subprocess.Popen([*command, "--log-level", "warning"], cwd=folder, env=env)
    for _ in range(400):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            return server, f"http://127.0.0.1:{port}/items/7"
        except OSError:
            time.sleep(0.025)
    server.kill()
    raise SystemExit("the server did not start")


def _round(folder: Path, env: dict[str, str], requests: int, concurrency: int) -> float:
    server, url = _serve(folder, env)
    try:
        asyncio.run(load(url, 50, concurrency, 30.0))  # warm: imports, first connections
        start = time.perf_counter()
        asyncio.run(load(url, requests, concurrency, 30.0))
        return requests / (time.perf_counter() - start)
    finally:
        server.terminate()
        server.wait(timeout=30)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=20)
    args = parser.parse_args()
    plain = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_LOOPGUARD")}
    watched = dict(plain)
    parent = Parent({"threshold": 0.1}, lambda event, since: None)
    if not parent.start(watched):
        raise SystemExit("site-packages is not writable: nothing to measure")
    rates: dict[str, list[float]] = {"off": [], "on": []}
    try:
        with tempfile.TemporaryDirectory() as folder:
            (Path(folder) / "bench_app.py").write_text(APP)
            for i in range(args.rounds):
                order = [("off", plain), ("on", watched)]
                for name, env in order if i % 2 == 0 else reversed(order):
                    rate = _round(Path(folder), env, args.requests, args.concurrency)
                    rates[name].append(rate)
                    print(f"  round {i + 1} {name:>3}: {rate:8.1f} requests/s", flush=True)
    finally:
        parent.stop()
    off, on = statistics.median(rates["off"]), statistics.median(rates["on"])
    paired = statistics.median(a / b for a, b in zip(rates["off"], rates["on"], strict=True))
    print(f"{args.requests} requests, {args.concurrency} at a time, {args.rounds} rounds")
    print(f"off: median {off:.1f} requests/s")
    print(f" on: median {on:.1f} requests/s, cost {off / on:.3f}x (paired {paired:.3f}x), ", end="")
    print(f"target <= {TARGET}x")
    print(f"python {sys.version.split()[0]}")


if __name__ == "__main__":
    main()
