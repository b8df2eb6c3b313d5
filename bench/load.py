"""A small, bounded HTTP load: N requests, C at a time, then the latencies.

    python bench/load.py URL [--requests 200] [--concurrency 20] [--timeout 30]

Run the app under ``python -m pytest_loopguard run -- uvicorn app:app`` and point this at a
route: a route that blocks the loop shows as latencies far above its own time (each client
waits for the others' blocks), and the runner prints the line that blocked.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time

import httpx


async def load(url: str, requests: int, concurrency: int, timeout: float) -> list[float]:
    latencies: list[float] = []
    left = iter(range(requests))

    async def client(http: httpx.AsyncClient) -> None:
        for _ in left:  # shared: the clients take the next request until none is left
            start = time.perf_counter()
            response = await http.get(url)
            response.raise_for_status()
            latencies.append(time.perf_counter() - start)

    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(timeout=timeout, limits=limits) as http:
        await asyncio.gather(*(client(http) for _ in range(concurrency)))
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("url")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--timeout", type=float, default=30.0)
    args = parser.parse_args()
    start = time.perf_counter()
    latencies = asyncio.run(load(args.url, args.requests, args.concurrency, args.timeout))
    took = time.perf_counter() - start
    ordered = sorted(latencies)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    print(
        f"{len(latencies)} requests, {args.concurrency} at a time: {took:.1f} s; median "
        f"{statistics.median(ordered):.3f} s, p95 {p95:.3f} s, slowest {ordered[-1]:.3f} s"
    )


if __name__ == "__main__":
    main()
