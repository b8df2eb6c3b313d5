"""A FastAPI app the tests serve with uvicorn in a process of its own: each pitfall twice,
broken and fixed. pytest-loopguard watches the server process too."""

import asyncio
import time

from fastapi import FastAPI

app = FastAPI()


def slow_lookup() -> dict[str, str]:
    time.sleep(0.3)  # a sync client, a slow disk, a rate-limit wait
    return {"status": "shipped"}


@app.get("/broken/orders/{order_id}")
async def broken_order(order_id: int) -> dict[str, str]:
    return slow_lookup()  # sync work in an async route: every other request waits


@app.get("/fixed/orders/{order_id}")
async def fixed_order(order_id: int) -> dict[str, str]:
    return await asyncio.to_thread(slow_lookup)  # in a worker thread: the loop stays free


@app.get("/fixed/invoices/{invoice_id}")
def fixed_invoice(invoice_id: int) -> dict[str, str]:
    return slow_lookup()  # a `def` route: FastAPI runs it in its thread pool


@app.get("/health")
async def health() -> dict[str, bool]:
    await asyncio.sleep(0)
    return {"ok": True}
