import time

import httpx
from fastapi import FastAPI

app = FastAPI()


@app.get("/users")
async def list_users():
    time.sleep(0.3)  # a sync call in an async route: every other request waits
    return [{"name": "ada"}]


async def test_list_users():
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        assert (await client.get("/users")).status_code == 200
