"""The example projects, run as a user runs them: each broken test fails with its fix, each fixed
twin passes. Keeps conftest_examples/ (and the README output taken from it) from rotting."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from pytest_loopguard._base import hints as _hints

EXAMPLES = Path(__file__).parent.parent / "conftest_examples"
SLEEP_FIX = "fix: time.sleep blocks every request — use `await asyncio.sleep(...)`"
BLOCKED = "LoopBlockedError: event loop blocked for * s (threshold 0.10* s) at "
SHOP = "conftest_examples/fastapi_sqlalchemy/shop.py"
PITS = "conftest_examples/fastapi_sqlalchemy/test_pitfalls.py"

# (test name, key lines of its failure) in file order; a None entry is a fixed twin that passes.
PITFALLS = [
    (
        "test_broken_time_sleep_in_route",
        [f"{BLOCKED}{SHOP}:66 in broken_sleep", "    time.sleep(0.3)*", SLEEP_FIX],
    ),
    ("test_fixed_time_sleep_in_route", None),
    (
        "test_broken_sync_http_in_route",
        [
            f"{BLOCKED}{SHOP}:79 in broken_weather",
            "    reply = requests.get(request.app.state.weather_url, timeout=5)",
            f"fix: {_hints.HTTP.render()}",
        ],
    ),
    ("test_fixed_sync_http_in_route", None),
    (
        "test_broken_sync_session_in_async_def",
        [
            f"{BLOCKED}{SHOP}:101 in broken_report",
            f"fix: {_hints.SQL.render()}",
        ],
    ),
    ("test_fixed_sync_session_in_async_def", None),
    (
        "test_broken_slow_file_read",
        [
            f"{BLOCKED}{SHOP}:114 in broken_export",
            f"fix: {_hints.FILE.render()}",
        ],
    ),
    ("test_fixed_slow_file_read", None),
    (
        "test_broken_cpu_heavy_route",
        [
            f"{BLOCKED}{SHOP}:60 in <genexpr>",
            "fix: CPU-bound work holds the loop — use `await asyncio.to_thread(compute)`*",
            "wall * s, CPU * s: CPU-bound*",
        ],
    ),
    ("test_fixed_cpu_heavy_route", None),
    (
        "test_broken_sync_engine_in_route",
        [
            "SyncEngineOnLoopError: sync Engine * used on the event-loop thread at "
            f"{SHOP}:142 in broken_users: its connect and every query block the loop",
            'fix: `create_async_engine("postgresql+asyncpg://...")`*',
        ],
    ),
    ("test_fixed_sync_engine_in_route", None),
    (
        "test_broken_lazy_loaded_relationship",
        [
            f"LazyLoadError: lazy load of User.posts on User(id=1) at {SHOP}:156 in broken_posts*",
            "fix: load it in the query — `select(User).options(selectinload(User.posts))`*",
        ],
    ),
    ("test_fixed_lazy_loaded_relationship", None),
    (
        "test_broken_attribute_expired_by_commit",
        [
            "LazyLoadError: User.name on User(id=2) was expired (by `await session.commit()` or "
            f"`session.expire()`) and reading it at {SHOP}:173 in broken_rename*",
            "fix: `async_sessionmaker(..., expire_on_commit=False)`, or "
            "`await session.refresh(user)` before reading it",
        ],
    ),
    ("test_fixed_attribute_expired_by_commit", None),
    (
        "test_broken_detached_instance",
        [
            f"DetachedAccessError: User.name read at {PITS}:86 in "
            "test_broken_detached_instance after its session closed or expunged it*",
            "fix: use it inside `async with session:`*",
        ],
    ),
    ("test_fixed_detached_instance", None),
    (
        "test_broken_session_shared_by_two_tasks",
        [
            # The failure itself is SQLAlchemy's (closing the session while the other task's
            # query is in flight) or ours, depending on timing; ours is named either way.
            "*ConcurrentSessionError: one AsyncSession used by two tasks at once: task '*' "
            f"started an operation at {SHOP}:207 in post_titles while the one task '*' "
            f"started at {SHOP}:203 in user_names was still in flight*",
            "fix: a session per task*",
        ],
    ),
    ("test_fixed_session_shared_by_two_tasks", None),
    (
        "test_broken_session_never_closed",
        [
            "1 database connection(s) taken by this test and never given back:",
            f"  an AsyncSession created at {SHOP}:231 in broken_count took a connection at "
            f"{SHOP}:203 in user_names",
            "fix: close what you open*",
        ],
    ),
    ("test_fixed_session_never_closed", None),
    ("test_broken_n_plus_one_queries", None),  # passes with a warning: see NPLUSONE_WARNING
    ("test_fixed_n_plus_one_queries", None),
    (
        "test_broken_profile_loop",
        [
            f"{BLOCKED}{PITS}:122 in blocking_route_simulation",
            "    time.sleep(0.3)  # this blocks the entire event loop",
            SLEEP_FIX,
        ],
    ),
    ("test_fixed_profile_loop", None),
    ("test_allowed_blocking_is_recorded_not_failed", None),
    ("test_per_test_threshold", None),
]


@pytest.fixture
def examples(pytester: pytest.Pytester, db_url: str, monkeypatch: pytest.MonkeyPatch) -> Path:
    shutil.copytree(EXAMPLES, pytester.path / "conftest_examples")
    if "postgresql" in db_url:
        monkeypatch.setenv("DATABASE_URL", db_url)
    monkeypatch.setenv("COLUMNS", "300")
    return pytester.path / "conftest_examples"


def run_examples(pytester: pytest.Pytester, *args: str) -> pytest.RunResult:
    plugins = ("-p", "pytest_loopguard", "-p", "asyncio", "-p", "no:cacheprovider")
    return pytester.runpytest_subprocess(*plugins, "-v", *args)


NPLUSONE_WARNING = [
    f"*{SHOP}:246: PytestWarning: N+1 queries: the same SELECT ran 12 times from "
    f"{SHOP}:246 in broken_titles (loads of Post): one round trip to the database per item",
    "  fix: one query for all of them: `select(Post).where(Post.id.in_(ids))`*",
]
# Broken twins that pass but fail at teardown (the leak check runs once the test is over).
AT_TEARDOWN = {"test_broken_session_never_closed"}


# The pitfalls that go through the database: the ones the PostgreSQL run repeats (the rest are
# the same whatever the database, and run on aiosqlite).
DATABASE = ("sync_session", "sync_engine", "lazy", "expired", "detached", "two_tasks", "closed")
DATABASE += ("n_plus_one",)


def test_fastapi_sqlalchemy_example(pytester: pytest.Pytester, examples: Path, db_url: str) -> None:
    pitfalls = PITFALLS
    args: tuple[str, ...] = ()
    if "postgresql" in db_url:
        pitfalls = [(name, lines) for name, lines in PITFALLS if any(w in name for w in DATABASE)]
        args = ("-k", " or ".join(DATABASE))
    result = run_examples(pytester, "conftest_examples/fastapi_sqlalchemy", *args)
    broken = [name for name, lines in pitfalls if lines and name not in AT_TEARDOWN]
    passed = len(pitfalls) - len(broken)
    outcomes = result.parseoutcomes()
    assert (outcomes["failed"], outcomes["passed"]) == (len(broken), passed)
    # The shared session's other query is still in flight when the route fails: depending on
    # timing its connection is never given back either (reported as a leak too).
    assert outcomes.get("errors", 0) in (len(AT_TEARDOWN), len(AT_TEARDOWN) + 1)
    for name, lines in pitfalls:
        verdict = "FAILED" if lines and name not in AT_TEARDOWN else "PASSED"
        result.stdout.fnmatch_lines([f"*test_pitfalls.py::{name} {verdict}*"])
    # pytest prints teardown errors (ERRORS) before failures (FAILURES): matched apart.
    for part in (broken, sorted(AT_TEARDOWN)):
        expected = [line for name, lines in pitfalls if name in part for line in lines or ()]
        result.stdout.fnmatch_lines(expected)
    result.stdout.fnmatch_lines(NPLUSONE_WARNING)


def test_quickstart_example(pytester: pytest.Pytester, examples: Path) -> None:
    result = run_examples(pytester, "conftest_examples/quickstart")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(
        [
            f"{BLOCKED}conftest_examples/quickstart/test_users.py:11 in list_users",
            "    time.sleep(0.3)  # a sync call in an async route: every other request waits",
            SLEEP_FIX,
            "wall * s, CPU * s: waiting (not on the CPU)*",
            "stack while blocked (most recent call last):",
            "  conftest_examples/quickstart/test_users.py:18 in test_list_users",
        ]
    )


LIVE = "conftest_examples/live_server/live_app.py"


def test_live_server_example(pytester: pytest.Pytester, examples: Path) -> None:
    """The app served by uvicorn in a process of its own: the broken route fails the sync and
    the async test that called it, at the route's line, naming the server process."""
    result = run_examples(pytester, "conftest_examples/live_server")
    result.assert_outcomes(failed=2, passed=4)
    for name in ("sync_client", "async_client"):
        result.stdout.fnmatch_lines([f"*test_live.py::test_broken_blocking_route_{name} FAILED*"])
    result.stdout.fnmatch_lines(
        [
            f"{BLOCKED}{LIVE}:13 in slow_lookup (in process pid *: python -m uvicorn live_app:app*",
            "    time.sleep(0.3)  # a sync client, a slow disk, a rate-limit wait",
            SLEEP_FIX,
            "stack while blocked (most recent call last):",
            f"  {LIVE}:19 in broken_order",
        ]
    )


LIFE = "conftest_examples/lifecycle/test_background.py"


def test_lifecycle_example(pytester: pytest.Pytester, examples: Path) -> None:
    """Each broken route fails its test at the line that left something behind; each fixed
    twin passes (``loop_lifecycle = fail`` in the examples' ini)."""
    result = run_examples(pytester, "conftest_examples/lifecycle", "-W", "ignore::RuntimeWarning")
    result.assert_outcomes(failed=3, errors=1, passed=5)
    result.stdout.fnmatch_lines(["*test_fixed_* PASSED*"] * 4)
    result.stdout.fnmatch_lines(
        [
            f"*pytest-loopguard: task send_welcome_email() created at {LIFE}:48 in "
            "broken_signup was still pending when the test ended*",
        ]
    )
    result.stdout.fnmatch_lines(
        [
            f"*task notify_sales() (ConnectionError: CRM unreachable while adding ada) created "
            f"at {LIFE}:60 in broken_lead failed, and nobody retrieved its exception*",
        ]
    )
    result.stdout.fnmatch_lines([f"*coroutine audit() called at {LIFE}:76 in broken_audit*"])
    result.stdout.fnmatch_lines(
        [f"*thread 'Thread-* (warm_cache)' (target warm_cache) started at {LIFE}:88 in broken*"]
    )
