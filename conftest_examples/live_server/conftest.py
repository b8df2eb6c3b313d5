"""The app served by uvicorn in a process of its own, for the whole session, as integration
suites do. Nothing here mentions pytest-loopguard: the server process is watched because the
session started it."""

import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def live_url() -> Iterator[str]:
    port = _free_port()
    command = [sys.executable, "-m", "uvicorn", "live_app:app", "--port", str(port)]
    server = subprocess.Popen([*command, "--log-level", "warning"], cwd=Path(__file__).parent)
    for _ in range(300):  # until it accepts connections
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    server.terminate()
    server.wait(timeout=30)
