"""Async lifecycle bugs in a FastAPI app: each broken route has a fixed twin.

Each broken test passes on its own: the email is never sent, the failure is only logged, the
audit entry is never written, the thread outlives the test. pytest-loopguard fails each at the
line that created what was left behind (``loop_lifecycle = fail`` in conftest_examples/pytest.ini;
the default, ``warn``, makes each a warning at that line).
"""

import asyncio
import logging
import threading
import time

import httpx
from fastapi import BackgroundTasks, FastAPI

app = FastAPI()
sent: list[str] = []
log = logging.getLogger("shop")
background: set[asyncio.Task[None]] = set()


async def send_welcome_email(user: str) -> None:
    await asyncio.sleep(0.2)  # the mail server
    sent.append(user)


async def notify_sales(user: str) -> None:
    raise ConnectionError(f"CRM unreachable while adding {user}")


async def audit(event: str) -> None:
    await asyncio.sleep(0)


def warm_cache() -> None:
    time.sleep(0.5)  # a slow report the first request would otherwise build


def _logged(task: asyncio.Task[None]) -> None:
    background.discard(task)
    if not task.cancelled() and task.exception() is not None:
        log.error("background task failed", exc_info=task.exception())


@app.post("/broken/signup/{user}")
async def broken_signup(user: str) -> dict[str, str]:
    asyncio.create_task(send_welcome_email(user))  # nobody awaits it: cancelled with the loop
    return {"user": user}


@app.post("/fixed/signup/{user}")
async def fixed_signup(user: str, tasks: BackgroundTasks) -> dict[str, str]:
    tasks.add_task(send_welcome_email, user)  # runs after the response, awaited by Starlette
    return {"user": user}


@app.post("/broken/lead/{user}")
async def broken_lead(user: str) -> dict[str, str]:
    asyncio.create_task(notify_sales(user))  # its exception is only logged by the loop
    await asyncio.sleep(0.01)
    return {"user": user}


@app.post("/fixed/lead/{user}")
async def fixed_lead(user: str) -> dict[str, str]:
    task = asyncio.create_task(notify_sales(user))
    background.add(task)  # a reference, and a callback that logs its failure
    task.add_done_callback(_logged)
    await asyncio.sleep(0.01)
    return {"user": user}


@app.post("/broken/audit")
async def broken_audit() -> dict[str, bool]:
    audit("login")  # no await: it never runs
    return {"ok": True}


@app.post("/fixed/audit")
async def fixed_audit() -> dict[str, bool]:
    await audit("login")
    return {"ok": True}


@app.post("/broken/warm")
async def broken_warm() -> dict[str, bool]:
    threading.Thread(target=warm_cache).start()  # runs on after the request, and the test
    return {"ok": True}


@app.post("/fixed/warm")
async def fixed_warm() -> dict[str, bool]:
    await asyncio.to_thread(warm_cache)
    return {"ok": True}


async def _post(path: str) -> int:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return (await client.post(path)).status_code


async def test_broken_signup_task_left_pending() -> None:
    assert await _post("/broken/signup/ada") == 200


async def test_fixed_signup_background_task() -> None:
    assert await _post("/fixed/signup/ada") == 200
    assert "ada" in sent


async def test_broken_lead_exception_never_retrieved() -> None:
    assert await _post("/broken/lead/ada") == 200


async def test_fixed_lead_logged_by_a_callback() -> None:
    assert await _post("/fixed/lead/ada") == 200


async def test_broken_audit_never_awaited() -> None:
    assert await _post("/broken/audit") == 200


async def test_fixed_audit_awaited() -> None:
    assert await _post("/fixed/audit") == 200


async def test_broken_warm_thread_left_running() -> None:
    assert await _post("/broken/warm") == 200


async def test_fixed_warm_in_a_worker_thread() -> None:
    assert await _post("/fixed/warm") == 200
