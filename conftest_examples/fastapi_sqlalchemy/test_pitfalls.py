"""Each pitfall of the lesson: the broken code fails with the fix, its fixed twin passes.

Run: pytest conftest_examples   (the broken tests fail on purpose)
"""

from __future__ import annotations

import asyncio
import time

import pytest
from shop import count_primes, load_user, load_user_name


async def test_broken_time_sleep_in_route(client):
    assert (await client.get("/broken/sleep")).status_code == 200


async def test_fixed_time_sleep_in_route(client):
    assert (await client.get("/fixed/sleep")).status_code == 200


async def test_broken_sync_http_in_route(client):
    assert (await client.get("/broken/weather")).json() == {"weather": "sunny"}


async def test_fixed_sync_http_in_route(client):
    assert (await client.get("/fixed/weather")).json() == {"weather": "sunny"}


@pytest.mark.allow_lazy_loads  # this one shows the loop-block detector on its own
async def test_broken_sync_session_in_async_def(client):
    assert (await client.get("/broken/report")).json() == {"users": 2}


async def test_fixed_sync_session_in_async_def(client):
    assert (await client.get("/fixed/report")).json() == {"users": 2}


async def test_broken_slow_file_read(client, export_path):
    client._transport.app.state.export_path = export_path
    assert (await client.get("/broken/export")).json() == {"bytes": 14}


async def test_fixed_slow_file_read(client, export_path):
    client._transport.app.state.export_path = export_path
    assert (await client.get("/fixed/export")).json() == {"bytes": 14}


async def test_broken_cpu_heavy_route(client):
    assert (await client.get("/broken/primes")).json() == {"primes": 13848}


async def test_fixed_cpu_heavy_route(client):
    assert (await client.get("/fixed/primes")).json() == {"primes": 13848}


async def test_broken_sync_engine_in_route(client):
    assert (await client.get("/broken/users")).json() == ["ada", "grace"]


async def test_fixed_sync_engine_in_route(client):
    assert (await client.get("/fixed/users")).json() == ["ada", "grace"]


async def test_broken_lazy_loaded_relationship(client):
    assert (await client.get("/broken/users/1/posts")).json() == ["Notes on the engine"]


async def test_fixed_lazy_loaded_relationship(client):
    assert (await client.get("/fixed/users/1/posts")).json() == ["Notes on the engine"]


async def test_broken_attribute_expired_by_commit(client):
    reply = await client.post("/broken/users/2/rename", params={"name": "hopper"})
    assert reply.json() == {"name": "hopper"}


async def test_fixed_attribute_expired_by_commit(client):
    reply = await client.post("/fixed/users/2/rename", params={"name": "hopper"})
    assert reply.json() == {"name": "hopper"}


async def test_broken_detached_instance(strict_sessionmaker):
    user = await load_user(strict_sessionmaker, 1)
    assert user.name == "ada"


async def test_fixed_detached_instance(strict_sessionmaker):
    assert await load_user_name(strict_sessionmaker, 1) == "ada"


async def test_broken_session_shared_by_two_tasks(client):
    assert (await client.get("/broken/dashboard")).status_code == 200


async def test_fixed_session_shared_by_two_tasks(client):
    assert (await client.get("/fixed/dashboard")).json()["users"] == ["ada", "grace"]


async def test_broken_session_never_closed(client):
    assert (await client.get("/broken/users/count")).json() == 2


async def test_fixed_session_never_closed(client):
    assert (await client.get("/fixed/users/count")).json() == 2


async def test_broken_n_plus_one_queries(client):
    # A warning by default (loop_block_strict makes it a failure): see the warnings summary.
    reply = await client.get("/broken/posts", params={"ids": list(range(1, 13))})
    assert reply.json() == ["Notes on the engine"]


async def test_fixed_n_plus_one_queries(client):
    reply = await client.get("/fixed/posts", params={"ids": list(range(1, 13))})
    assert reply.json() == ["Notes on the engine"]


# The lesson's profile_loop.py: a blocking coroutine in gather delays asyncio.sleep(0.1).
async def blocking_route_simulation():
    time.sleep(0.3)  # this blocks the entire event loop


async def async_route_simulation():
    await asyncio.sleep(0.3)


async def test_broken_profile_loop():
    start = asyncio.get_running_loop().time()
    await asyncio.gather(blocking_route_simulation(), asyncio.sleep(0.1))
    assert asyncio.get_running_loop().time() - start >= 0.3  # expected 0.1 s: the loop was held


async def test_fixed_profile_loop():
    start = asyncio.get_running_loop().time()
    await asyncio.gather(async_route_simulation(), asyncio.sleep(0.1))
    assert asyncio.get_running_loop().time() - start < 0.5


@pytest.mark.allow_blocking(reason="the vendor SDK warms its cache synchronously, once")
async def test_allowed_blocking_is_recorded_not_failed(loopguard):
    time.sleep(0.2)
    await asyncio.sleep(0)
    assert [round(e.duration, 1) for e in loopguard.events] == [0.2]


@pytest.mark.loop_block_threshold(0.5)  # a nightly report may hold the loop a little longer
async def test_per_test_threshold():
    count_primes(60_000)
