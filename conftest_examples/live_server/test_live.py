"""The live server's routes, from sync and async tests. The broken ones fail on purpose."""

import httpx


def test_broken_blocking_route_sync_client(live_url: str) -> None:
    assert httpx.get(f"{live_url}/broken/orders/1").json() == {"status": "shipped"}


def test_fixed_blocking_route_sync_client(live_url: str) -> None:
    assert httpx.get(f"{live_url}/fixed/orders/1").json() == {"status": "shipped"}


async def test_broken_blocking_route_async_client(live_url: str) -> None:
    async with httpx.AsyncClient(base_url=live_url) as client:
        assert (await client.get("/broken/orders/2")).json() == {"status": "shipped"}


async def test_fixed_blocking_route_async_client(live_url: str) -> None:
    async with httpx.AsyncClient(base_url=live_url) as client:
        assert (await client.get("/fixed/orders/2")).json() == {"status": "shipped"}


def test_fixed_def_route_in_the_thread_pool(live_url: str) -> None:
    assert httpx.get(f"{live_url}/fixed/invoices/3").json() == {"status": "shipped"}


def test_health(live_url: str) -> None:
    assert httpx.get(f"{live_url}/health").json() == {"ok": True}
