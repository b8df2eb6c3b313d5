"""Known blocking calls -> the fix a user should apply: one table, read by the engine."""

from __future__ import annotations

import re
from collections.abc import Sequence

from .events import Hint, LoopguardError

SLEEP = Hint("sleep", "time.sleep blocks every request", "use `await asyncio.sleep(...)`")
HTTP = Hint(
    "http",
    "sync HTTP (requests/urllib/http.client) blocks every request",
    # Not ``httpx.AsyncClient().get``: making a client loads the CA bundle, 0.05-0.1 s of CPU
    # on the loop (more under coverage) -- the fix would be a block of its own.
    "use `await client.get(url)` on one `httpx.AsyncClient` made once (making one loads the "
    "CA bundle)",
)
SQL = Hint(
    "sqlalchemy",
    "a sync SQLAlchemy engine/session blocks the loop on every query",
    'use `AsyncSession` with `create_async_engine("postgresql+asyncpg://...")`',
)
FILE = Hint(
    "file",
    "file I/O blocks the loop",
    "use `await asyncio.to_thread(path.read_text)` or aiofiles",
)
CPU = Hint(
    "cpu",
    "CPU-bound work holds the loop",
    "use `await asyncio.to_thread(compute)` or a `ProcessPoolExecutor` via `loop.run_in_executor`",
)
SUBPROCESS = Hint(
    "subprocess",
    "subprocess waits for the child on the loop thread",
    "use `await asyncio.create_subprocess_exec(...)`",
)
SOCKET = Hint(
    "socket",
    "a blocking socket call holds the loop",
    "use asyncio streams: `await asyncio.open_connection(host, port)`",
)
DNS = Hint("dns", "a sync DNS lookup holds the loop", "use `await loop.getaddrinfo(host, port)`")
LOCK = Hint(
    "lock",
    "a threading lock/event/queue wait holds the loop",
    "use `asyncio.Lock`/`asyncio.Event`/`asyncio.Queue`, or `await asyncio.to_thread(...)`",
)
FUTURE = Hint(
    "future",
    "`concurrent.futures.Future.result()` waits on the loop thread",
    "use `await asyncio.wrap_future(future)`",
)
WAITING = Hint(
    "blocking",
    "a blocking call holds the loop",
    "move it off the loop: `await asyncio.to_thread(func, ...)`",
)
PASSWORD = Hint(
    "password-hash",
    "password hashing is slow on purpose (that is its security), and it holds the loop",
    "use `await asyncio.to_thread(password_hash.verify, password, hashed)` "
    "(and the same for `.hash(...)`)",
)
TESTCLIENT = Hint(
    "testclient",
    "the sync `TestClient` inside an `async def` test blocks this loop while the app runs",
    "use `httpx.AsyncClient(transport=httpx.ASGITransport(app=app))` in async tests",
)

_ASGI_CLIENT = "`httpx.AsyncClient(transport=httpx.ASGITransport(app=app))`"
LITESTAR_SYNC = Hint(
    "testclient",
    "Litestar's sync `TestClient` inside an `async def` test blocks this loop while the app runs",
    f"use {_ASGI_CLIENT} in async tests (Litestar's `AsyncTestClient` blocks it too: it runs "
    "each request through a blocking portal)",
)
LITESTAR_ASYNC = Hint(
    "testclient",
    "Litestar's `AsyncTestClient` runs each request through a blocking portal in another "
    "thread: it holds the test's loop for the whole request",
    f"use {_ASGI_CLIENT}: the app then runs on the test's own loop",
)

# The first library module the user's code called into decides the hint.
# Decisive wherever they are among the callees: TestClient's methods are httpx's (the first
# callee), and only further in does starlette's transport show who is calling.
_ANYWHERE: tuple[tuple[str, Hint], ...] = (("starlette.testclient", TESTCLIENT),)

_BY_MODULE: tuple[tuple[str, Hint], ...] = (
    ("argon2", PASSWORD),
    ("bcrypt", PASSWORD),
    ("passlib", PASSWORD),
    ("pwdlib", PASSWORD),
    ("requests", HTTP),
    ("urllib3", HTTP),
    ("urllib.request", HTTP),
    ("http.client", HTTP),
    ("httpx", HTTP),
    ("sqlalchemy", SQL),
    ("sqlite3", SQL),
    ("psycopg2", SQL),
    ("psycopg", SQL),
    ("pymysql", SQL),
    ("subprocess", SUBPROCESS),
    ("socket", SOCKET),
    ("ssl", SOCKET),
    ("selectors", SOCKET),
    ("concurrent.futures", FUTURE),
    ("threading", LOCK),
    ("queue", LOCK),
    ("pathlib", FILE),
    ("shutil", FILE),
)

# When the blocking call is C code called straight from the user's line, the line names it.
_BY_CALL: dict[str, Hint] = {
    "sleep": SLEEP,
    "hashpw": PASSWORD,  # bcrypt's, called straight from the user's line (C code)
    "checkpw": PASSWORD,
    "urlopen": HTTP,
    "getaddrinfo": DNS,
    "gethostbyname": DNS,
    "check_output": SUBPROCESS,
    "check_call": SUBPROCESS,
    "Popen": SUBPROCESS,
    "communicate": SUBPROCESS,
    "recv": SOCKET,
    "recv_into": SOCKET,
    "recvfrom": SOCKET,
    "accept": SOCKET,
    "connect": SOCKET,
    "sendall": SOCKET,
    "create_connection": SOCKET,
    "acquire": LOCK,
    "join": LOCK,
    "result": FUTURE,
    "open": FILE,
    "read": FILE,
    "readline": FILE,
    "readlines": FILE,
    "read_text": FILE,
    "read_bytes": FILE,
    "write": FILE,
    "write_text": FILE,
    "fsync": FILE,
}
_CALLED = re.compile(r"([A-Za-z_]\w*)\s*\(")
_CPU_BOUND_RATIO = 0.5


def for_module(module: str) -> Hint | None:
    """The hint for blocking inside ``module`` (a dotted name), if it is a known blocker."""
    for prefix, hint in _BY_MODULE:
        if module == prefix or module.startswith(prefix + "."):
            return hint
    return None


def for_line(line: str) -> Hint | None:
    """The hint for the last known blocking call named on a source line."""
    if "subprocess." in line:
        return SUBPROCESS
    found = [_BY_CALL[name] for name in _CALLED.findall(line) if name in _BY_CALL]
    return found[-1] if found else None


def classify(
    line: str, callees: Sequence[str], cpu_ratio: float | None, *, bridged: bool = False
) -> Hint:
    """Pick the hint for a block seen at ``line`` that was running inside ``callees``.

    ``callees`` are the modules the user's line called into, outermost first; ``cpu_ratio`` is
    the share of the block's wall time the loop thread spent on the CPU (None: unknown);
    ``bridged``: it ran inside AsyncSession's sync bridge (see ``in_bridge``).
    """
    if bridged:
        kept = [m for m in callees if not m.startswith(("sqlalchemy", "greenlet"))]
        return in_bridge(classify(line, kept, cpu_ratio))
    for prefix, decisive in _ANYWHERE:
        if any(m == prefix or m.startswith(prefix + ".") for m in callees):
            return decisive
    if any(m.startswith("litestar.testing.") for m in callees):
        # Both clients reach the app through the same transport; the line tells them apart.
        return LITESTAR_ASYNC if "await " in line else LITESTAR_SYNC
    for module in callees:
        hint = for_module(module)
        if hint is not None:
            return hint
    cpu_bound = cpu_ratio is not None and cpu_ratio >= _CPU_BOUND_RATIO
    hint = for_line(line)
    if hint is not None and not (cpu_bound and hint is FILE):
        return hint
    return CPU if cpu_bound else WAITING


# The same mistakes on trio (pytest-trio, anyio's trio backend): trio's and anyio's own fixes.
_TRIO_FIXES: dict[str, str] = {
    "sleep": "use `await trio.sleep(...)` (anyio: `await anyio.sleep(...)`)",
    "http": "use `await client.get(url)` on one `httpx.AsyncClient` made once (httpx runs on "
    "trio too)",
    "sqlalchemy": "SQLAlchemy's asyncio layer does not run on trio: "
    "`await trio.to_thread.run_sync(query)` (anyio: `anyio.to_thread.run_sync`)",
    "file": "use `await trio.Path(path).read_text()` or `await anyio.Path(path).read_text()`",
    "cpu": "use `await trio.to_thread.run_sync(compute)` (anyio: "
    "`await anyio.to_thread.run_sync(compute)`), or a process pool: "
    "`await anyio.to_process.run_sync(compute)`",
    "subprocess": "use `await trio.run_process([...])` (anyio: `await anyio.run_process([...])`)",
    "socket": "use trio's streams: `await trio.open_tcp_stream(host, port)` (anyio: "
    "`await anyio.connect_tcp(host, port)`)",
    "dns": "use `await trio.socket.getaddrinfo(host, port)` (anyio: "
    "`await anyio.getaddrinfo(...)`)",
    "lock": "use `trio.Lock`/`trio.Event`/`trio.open_memory_channel`, or "
    "`await trio.to_thread.run_sync(...)`",
    "future": "use `await trio.to_thread.run_sync(future.result)`",
    "blocking": "move it off the loop: `await trio.to_thread.run_sync(func, ...)` (anyio: "
    "`await anyio.to_thread.run_sync(func, ...)`)",
    "password-hash": "use `await trio.to_thread.run_sync(password_hash.verify, password, hashed)` "
    "(and the same for `.hash(...)`)",
}


def for_backend(hint: Hint, backend: str) -> Hint:
    """``hint`` with the fix that fits the loop it blocked (asyncio's fixes are the default)."""
    fix = _TRIO_FIXES.get(hint.key) if backend == "trio" else None
    return hint if fix is None else Hint(hint.key, hint.cause, fix)


def in_bridge(hint: Hint) -> Hint:
    """``hint`` for a block in code that AsyncSession's sync bridge ran on the loop thread."""
    return Hint(
        hint.key,
        f"inside `AsyncSession`'s sync bridge: {hint.cause} (ORM event hooks, `run_sync` "
        "functions, type decorators and result processing all run on the loop thread)",
        f"{hint.fix} — outside the hook or `run_sync` function, e.g. before "
        "`await session.flush()`",
    )


MISSING_GREENLET = (
    "MissingGreenlet: async SQLAlchemy was asked for IO without `await` — a lazy-loaded "
    "relationship, an attribute expired by commit, or a sync engine/session in async code.\n"
    "fix: load in the query (`select(User).options(selectinload(User.posts))`), "
    "`await obj.awaitable_attrs.posts`, `async_sessionmaker(..., expire_on_commit=False)`, and "
    '`create_async_engine("postgresql+asyncpg://...")` with AsyncSession. The '
    "loopguard_sqlalchemy fixture names the attribute and line."
)
DETACHED = (
    "DetachedInstanceError: an ORM attribute was read after its session closed.\n"
    "fix: `async_sessionmaker(..., expire_on_commit=False)`, or read what you need inside "
    "`async with session:`; the loopguard_sessionmaker fixture catches loaded reads too."
)
CONCURRENT_SESSION = (
    "One AsyncSession used by two tasks at once (`asyncio.gather(a(session), b(session))`, a "
    "session shared by concurrent requests): SQLAlchemy fails like this, or not at all, "
    "depending on timing.\n"
    "fix: a session per task — `async with sessionmaker() as session:` inside each task — or "
    "run them one after the other. The loopguard_sqlalchemy fixture names both places."
)
# What SQLAlchemy and asyncpg say when two tasks share a session (the first two are
# InvalidRequestError's messages, the last asyncpg's InterfaceError).
_CONCURRENT_TEXTS = (
    "concurrent operations are not permitted",
    "another operation is in progress",
    "is already in progress",
)
NOT_AWAITED = (
    "A sync call where an async one was expected (or a coroutine never awaited): e.g. "
    "`requests` inside `async def`.\n"
    "fix: `await client.get(url)` on one `httpx.AsyncClient` made once, and `await` every "
    "coroutine."
)


def chain(error: BaseException | None) -> list[BaseException]:
    """``error`` and everything it wraps: causes, contexts, DBAPI ``orig``, group members."""
    found: list[BaseException] = []
    todo = [error]
    while todo:
        current = todo.pop()
        if current is None or any(current is seen for seen in found):
            continue
        found.append(current)
        todo.extend((current.__cause__, current.__context__, getattr(current, "orig", None)))
        todo.extend(getattr(current, "exceptions", ()))
    return [e for e in found if isinstance(e, BaseException)]


def for_error(error: BaseException) -> str | None:
    """The cause and fix for a known async mistake somewhere in ``error``'s chain."""
    errors = chain(error)
    ours = [e for e in errors if isinstance(e, LoopguardError)]
    if ours and ours[0] is error:
        return None  # our own error carries its fix
    if ours:
        # Ours came first and this one followed from it (two tasks on one session: the
        # session's close then fails too): say what started it.
        first = ours[0]
        return f"this failure followed from:\n{type(first).__name__}: {first}"
    names = {cls.__name__ for e in errors for cls in type(e).__mro__}
    if "MissingGreenlet" in names:
        return MISSING_GREENLET
    if "DetachedInstanceError" in names:
        return DETACHED
    if "IllegalStateChangeError" in names or any(
        text in str(e) for e in errors for text in _CONCURRENT_TEXTS
    ):
        return CONCURRENT_SESSION
    if any("cannot be awaited" in str(e) or "never awaited" in str(e) for e in errors):
        return NOT_AWAITED
    return None
