"""A throwaway PostgreSQL cluster for the test session (initdb + pg_ctl on a free port).

PostgreSQL refuses to run as root, so as root the cluster runs as the ``postgres`` user, in a
temporary directory that user owns. ``LOOPGUARD_POSTGRES_URL`` points the suite at a server of
your own instead (an ``postgresql+asyncpg://`` URL); ``LOOPGUARD_REQUIRE_POSTGRES=1`` (set by
.ci/run) turns "PostgreSQL is not installed" from a skip into a failure.
"""

from __future__ import annotations

import glob
import os
import shutil
import socket
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager


class Unavailable(Exception):
    """PostgreSQL is not installed or would not start here."""


def _binary(name: str) -> str:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not candidates:
        raise Unavailable(f"{name} not found (install PostgreSQL, e.g. apt-get install postgresql)")
    return candidates[-1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _as_postgres(args: list[str]) -> list[str]:
    if os.geteuid() != 0:
        return args
    return ["su", "postgres", "-s", "/bin/sh", "-c", " ".join(f"'{a}'" for a in args)]


def _run(args: list[str]) -> None:
    done = subprocess.run(_as_postgres(args), capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise Unavailable(f"{' '.join(args[:2])} failed: {done.stdout}{done.stderr}")


@contextmanager
def cluster() -> Iterator[str]:
    """Start a cluster and yield its asyncpg URL; stop and delete it afterwards."""
    own = os.environ.get("LOOPGUARD_POSTGRES_URL")
    if own:
        yield own
        return
    initdb, pg_ctl = _binary("initdb"), _binary("pg_ctl")
    data = tempfile.mkdtemp(prefix="loopguard-pg-")
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    port = _free_port()
    try:
        _run([initdb, "-D", data, "-A", "trust", "-U", "postgres", "--no-sync"])
        options = f"-p {port} -k {data} -c listen_addresses=127.0.0.1 -c fsync=off"
        _run([pg_ctl, "-D", data, "-o", options, "-l", f"{data}/log", "-w", "start"])
        try:
            yield f"postgresql+asyncpg://postgres@127.0.0.1:{port}/postgres"
        finally:
            _run([pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"])
    finally:
        shutil.rmtree(data, ignore_errors=True)
