"""Blocks in the Python processes a session starts: servers in fixtures, their workers.

Real servers (uvicorn, gunicorn with uvicorn's worker, hypercorn) in processes of their own,
driven by a sync HTTP client; every run that expects nothing also has a block that proves the
watch was live in it.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from conftest import blocked, run, write_ini
from pytest_loopguard._procs import pth

APP = """
import asyncio
import time

from fastapi import FastAPI

app = FastAPI()


@app.get("/slow")
async def slow():
    time.sleep(0.3)
    return {"ok": True}


@app.get("/fast")
async def fast():
    await asyncio.sleep(0)
    return {"ok": True}
"""

# A session-scoped server, started as the suite's own fixture would: a command, a free port,
# polled until it answers.
SERVER = """
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest

COMMAND = {command!r}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def server():
    port = _free_port()
    args = [a.replace("PORT", str(port)) for a in COMMAND]
    proc = subprocess.Popen([sys.executable, *args])
    url = f"http://127.0.0.1:{{port}}"
    for _ in range(300):
        try:
            httpx.get(url + "/fast", timeout=1)
            break
        except httpx.HTTPError:
            time.sleep(0.05)
    yield url
    proc.terminate()
    proc.wait(timeout=30)
"""

TESTS = """
import httpx


def test_fast(server):
    assert httpx.get(server + "/fast").status_code == 200


def test_slow(server):
    assert httpx.get(server + "/slow").status_code == 200


def test_fast_again(server):
    assert httpx.get(server + "/fast").status_code == 200
"""

GUNICORN = ["-m", "gunicorn", "app:app", "-k", "uvicorn_worker.UvicornWorker", "-w", "2"]
UVICORN = ["-m", "uvicorn", "app:app", "--port", "PORT", "--log-level", "warning"]
SERVERS = {
    "uvicorn": (UVICORN, "python -m uvicorn app:app*"),
    "uvicorn-asyncio-loop": ([*UVICORN, "--loop", "asyncio"], "python -m uvicorn app:app*"),
    "uvicorn-workers": ([*UVICORN, "--workers", "2"], "a worker of pid * (python -m uvicorn*)"),
    "gunicorn": (
        [*GUNICORN, "-b", "127.0.0.1:PORT", "--log-level", "warning"],
        "a worker of pid * (python -m gunicorn app:app*)",
    ),
    "hypercorn": (
        ["-m", "hypercorn", "app:app", "--bind", "127.0.0.1:PORT"],
        "a worker of pid * (python -m hypercorn app:app*)",
    ),
}


def _project(pytester: pytest.Pytester, command: list[str]) -> None:
    pytester.makepyfile(app=APP, conftest=SERVER.format(command=command), test_app=TESTS)


@pytest.mark.parametrize("server", sorted(SERVERS))
def test_a_block_in_a_server_process_fails_the_test_whose_request_it_served(
    pytester: pytest.Pytester, server: str
) -> None:
    command, process = SERVERS[server]
    _project(pytester, command)
    result = run(pytester, subprocess=True)
    # The two fast requests to the same server pass: no false alarm from its start-up.
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(
        [
            "*_ test_slow _*",
            blocked(f"app.py:11 in slow (in process pid *: {process})", seconds="0.*"),
            "    time.sleep(0.3)",
            "fix: time.sleep blocks every request*",
            "stack while blocked (most recent call last):",
            "  app.py:11 in slow",
        ]
    )
    result.stdout.fnmatch_lines(["FAILED test_app.py::test_slow - LoopBlockedError*"])


def test_warn_mode_the_report_and_junit_name_the_process(pytester: pytest.Pytester) -> None:
    _project(pytester, UVICORN)
    result = run(
        pytester,
        "--loop-block-mode=warn",
        "--loop-block-report=blocks.json",
        "--junitxml=junit.xml",
        subprocess=True,
    )
    result.assert_outcomes(passed=3, warnings=1)
    result.stdout.fnmatch_lines(["*app.py:11 in slow (in process pid *: python -m uvicorn*"])
    blocks = json.loads((pytester.path / "blocks.json").read_text())["blocks"]
    assert [b["location"]["line"] for b in blocks] == [11]
    assert blocks[0]["process"].startswith("pid ")
    assert "uvicorn app:app" in blocks[0]["process"]
    assert blocks[0]["nodeid"] == "test_app.py::test_slow"
    assert 'name="loopguard.process"' in (pytester.path / "junit.xml").read_text()


def test_turned_off_the_children_run_unwatched(pytester: pytest.Pytester) -> None:
    _project(pytester, UVICORN)
    # The same project, watched: the block is there to be missed.
    run(pytester, subprocess=True).assert_outcomes(failed=1, passed=2)
    off = run(pytester, "--no-loop-block-subprocesses", subprocess=True)
    off.assert_outcomes(passed=3)
    off.stdout.no_fnmatch_line("*LoopBlockedError*")
    write_ini(pytester, mode="auto", extra="loop_block_subprocesses = false")
    run(pytester, subprocess=True).assert_outcomes(passed=3)


# A child running a script of the project's (a file under the rootdir): its blocks are the
# project's code's. ``python -c`` code would not be (see the test of code not the project's).
CHILD = """
import asyncio
import pathlib
import subprocess
import sys
import time

CODE = '''
import asyncio, sys, time
async def main():
    sys.stdout.write("blocking\\\\n"); sys.stdout.flush()
    time.sleep({seconds})
asyncio.run(main())
'''


def child(seconds, **kwargs):
    script = pathlib.Path(f"blocker_{int(seconds * 1000)}.py")
    script.write_text(CODE.format(seconds=seconds))
    return subprocess.Popen(
        [sys.executable, str(script)], stdout=subprocess.PIPE, text=True, **kwargs
    )
"""


KILLABLE = """
import os
import signal
import socket
import subprocess
import sys
import time

import pytest


@pytest.fixture
def server():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    command = [sys.executable, "-m", "uvicorn", "app:app", "--port", str(port)]
    proc = subprocess.Popen(command)
    for _ in range(300):
        try:
            socket.create_connection(("127.0.0.1", port)).close()
            break
        except OSError:
            time.sleep(0.05)
    yield f"http://127.0.0.1:{port}", proc
    proc.kill()
    proc.wait(timeout=30)
"""


def test_a_server_killed_mid_block_neither_hangs_the_session_nor_loses_the_rest(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        app=APP + "\n\n@app.get('/stuck')\nasync def stuck():\n    time.sleep(30)\n",
        conftest=KILLABLE,
        test_app="""
        import signal
        import threading
        import time

        import httpx


        def test_server_killed_mid_request(server):
            url, proc = server

            def ask():
                try:
                    httpx.get(url + "/stuck", timeout=60)
                except httpx.HTTPError:
                    pass  # the server is gone: what this test expects

            asking = threading.Thread(target=ask)
            asking.start()
            time.sleep(0.5)  # past half the threshold: the server said it is busy
            proc.send_signal(signal.SIGKILL)
            asking.join(60)


        def test_the_next_block_is_still_reported(server):
            url, _ = server
            assert httpx.get(url + "/slow").status_code == 200
        """,
    )
    result = run(pytester, "--durations=0", subprocess=True)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["FAILED test_app.py::test_the_next_block_is_still_reported - *"])
    result.stdout.fnmatch_lines(["*app.py:11 in slow (in process pid *: python -m uvicorn*"])
    # The killed server's verdict never comes: the phase did not wait for the 10 s limit.
    took = [line for line in result.outlines if " call " in line and "killed_mid" in line]
    assert took, result.outlines
    assert float(took[0].split("s", 1)[0]) < 5, took


def test_a_block_outside_any_test_goes_to_the_summary(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        helpers=CHILD,
        conftest="""
        from helpers import child


        def pytest_collection_finish(session):
            child(0.3).communicate(timeout=30)  # between collection and the first test
        """,
        test_one="def test_one():\n    pass\n",
    )
    result = run(pytester)
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines(
        ["*0.3* s  blocker_300.py:5 in main  (outside any test)  (in process pid *: blocker_3*"]
    )


def test_a_child_that_cannot_reach_the_channel_runs_unwatched_and_says_so(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        helpers=CHILD,
        test_gone="""
        import os

        from helpers import child


        def test_gone():
            env = dict(os.environ, PYTEST_LOOPGUARD_CHANNEL="/nonexistent/socket")
            proc = child(0.3, env=env, stderr=__import__("subprocess").PIPE)
            out, err = proc.communicate(timeout=30)
            assert proc.returncode == 0 and out == "blocking\\n"
            print("CHILD SAID", err)


        def test_watched():
            child(0.3).communicate(timeout=30)
        """,
    )
    result = run(pytester, "-s")
    result.assert_outcomes(failed=1, passed=1)  # the watched one proves the watch was live
    result.stdout.fnmatch_lines(
        ["*CHILD SAID pytest-loopguard (pid *): cannot reach the session's channel*not watched"]
    )
    result.stdout.fnmatch_lines(["FAILED test_gone.py::test_watched - LoopBlockedError*"])


def test_a_flood_of_blocks_arrives_whole(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(
        test_flood="""
        import subprocess
        import sys

        CODE = "\\n".join([
            "import asyncio, time",
            "async def main():",
            "    for _ in range(150):",
            "        time.sleep(0.03)",
            "        await asyncio.sleep(0)",
            "asyncio.run(main())",
        ])


        def test_flood():
            open("flood.py", "w").write(CODE)
            subprocess.run([sys.executable, "flood.py"], check=True)
        """
    )
    result = run(pytester, "--loop-block-threshold=0.01")
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines(["149 more block(s) of the event loop in this phase:"])


def test_inner_sessions_watch_themselves(pytester: pytest.Pytester) -> None:
    """A pytest session started by a watched one (a plugin's own suite, pytester): its blocks
    are its own, never its parent's — with the plugin (it watches itself) or without it."""
    pytester.makepyfile(
        helpers=CHILD,
        test_outer="""
        import pathlib
        import subprocess
        import sys

        import pytest

        from helpers import child


        @pytest.mark.parametrize("plugin", ["pytest_loopguard", "no:pytest_loopguard"])
        def test_runs_an_inner_session(plugin):
            inner_dir = pathlib.Path.cwd() / plugin.replace(":", "_")  # the project's code
            inner_dir.mkdir()
            (inner_dir / "test_inner.py").write_text(
                "import asyncio, time\\n"
                "def test_inner():\\n"
                "    async def main():\\n"
                "        time.sleep(0.3)\\n"
                "    asyncio.run(main())\\n"
            )
            inner = subprocess.run(
                [sys.executable, "-m", "pytest", "-p", plugin, "-p", "no:cacheprovider",
                 str(inner_dir)], capture_output=True, text=True, timeout=120,
            )
            watched = plugin == "pytest_loopguard"
            assert inner.returncode == (1 if watched else 0), inner.stdout
            assert ("LoopBlockedError" in inner.stdout) == watched


        def test_the_watch_was_live():
            child(0.3).communicate(timeout=30)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(passed=2, failed=1)
    result.stdout.fnmatch_lines(["FAILED test_outer.py::test_the_watch_was_live - *"])
    # Nothing of the inner sessions reached this one, not even as allowed.
    result.stdout.fnmatch_lines(["1 block(s) in 1 test(s); 0 allowed block(s) not counted"])


def test_nothing_remains_after_the_session(pytester: pytest.Pytester) -> None:
    pytester.makepyfile(helpers=CHILD, test_one="def test_one():\n    pass\n")
    before = {k: v for k, v in os.environ.items() if k.startswith("PYTEST_LOOPGUARD")}
    run(pytester).assert_outcomes(passed=1)
    assert {k: v for k, v in os.environ.items() if k.startswith("PYTEST_LOOPGUARD")} == before
    assert not list(pth.site_dir().glob(f"{pth.PREFIX}{os.getpid()}.pth"))
    # A session run in a process of its own, and killed: its file is inert, and swept.
    proc = subprocess.Popen(
        [sys.executable, "-c", "from pytest_loopguard._procs import pth; pth.install(); "
         "import time; print('in place', flush=True); time.sleep(60)"],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None
    assert proc.stdout.readline() == "in place\n"
    left = pth.site_dir() / f"{pth.PREFIX}{proc.pid}.pth"
    assert left.exists()
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    inert = subprocess.run(
        [sys.executable, "-c", "import sys; print('asyncio' in sys.modules)"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    assert inert.stdout == "False\n"
    assert inert.stderr == ""
    run(pytester).assert_outcomes(passed=1)
    assert not left.exists()


def test_the_runner_prints_each_block_and_a_summary_and_exits_as_the_command(
    tmp_path: Path,
) -> None:
    script = tmp_path / "serve.py"
    script.write_text(
        textwrap.dedent(
            """
            import asyncio, time

            async def main():
                time.sleep(0.3)

            asyncio.run(main())
            raise SystemExit(3)
            """
        )
    )
    report = tmp_path / "blocks.json"
    runner = [sys.executable, "-m", "pytest_loopguard", "run", "--report", str(report)]
    done = subprocess.run(
        [*runner, "--", "python", str(script)],
        capture_output=True, text=True, cwd=tmp_path, timeout=120,
    )  # fmt: skip
    assert done.returncode == 3, done.stderr
    lines = done.stderr.splitlines()
    assert any(
        line.startswith("pytest-loopguard: event loop blocked for 0.")
        and "at serve.py:5 in main (in process pid " in line
        for line in lines
    ), done.stderr
    assert "pytest-loopguard: 1 block(s) in 1 process(es)" in lines, done.stderr
    data = json.loads(report.read_text())
    assert data["schema"] == "pytest-loopguard/run"
    assert [(b["location"]["file"], b["location"]["line"]) for b in data["blocks"]] == [
        ("serve.py", 5)
    ]


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (["--threshold", "zero", "--", "true"], "--threshold 'zero': expected a number"),
        (["--threshold", "0.1", "--timeout", "0.05", "--", "true"], "--timeout '0.05': must be"),
        (["--report", "/nonexistent/dir/r.json", "--", "true"], "--report '/nonexistent/dir"),
        ([], "no command"),
    ],
)
def test_the_runner_refuses_bad_options_with_a_line(args: list[str], said: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_loopguard", "run", *args],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("pytest-loopguard run: ")
    assert said in done.stderr
    assert "Traceback" not in done.stderr


def test_the_runner_says_when_the_command_cannot_start(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pytest_loopguard", "run", "--", "no-such-command-here"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 127
    assert "cannot start 'no-such-command-here'" in done.stderr


def test_under_xdist_each_worker_watches_its_own_children(pytester: pytest.Pytester) -> None:
    _project(pytester, UVICORN)
    result = run(
        pytester, "-p", "xdist", "-n", "2", "--loop-block-report=blocks.json", subprocess=True
    )
    result.assert_outcomes(failed=1, passed=2)
    result.stdout.fnmatch_lines(["*app.py:11 in slow (in process pid *: python -m uvicorn*"])
    blocks = json.loads((pytester.path / "blocks.json").read_text())["blocks"]
    assert [(b["nodeid"], b["location"]["line"]) for b in blocks] == [
        ("test_app.py::test_slow", 11)
    ]
    assert "uvicorn app:app" in blocks[0]["process"]


def test_a_child_that_outlives_the_session_neither_holds_it_nor_fails(
    pytester: pytest.Pytester, tmp_path: Path
) -> None:
    done = tmp_path / "done"
    pytester.makepyfile(
        test_leave=f"""
        import subprocess
        import sys

        CODE = "\\n".join([
            "import asyncio, time",
            "async def main():",
            "    await asyncio.sleep(1.5)",  # the session has ended by then
            "    time.sleep(0.3)",
            "asyncio.run(main())",
            "open({str(done)!r}, 'w').write('done')",
        ])


        def test_leaves_a_child_running():
            open("leaving.py", "w").write(CODE)
            subprocess.Popen([sys.executable, "leaving.py"], stderr=subprocess.DEVNULL)
        """
    )
    started = time.monotonic()
    result = run(pytester, subprocess=True)
    result.assert_outcomes(passed=1)
    assert time.monotonic() - started < 60
    for _ in range(200):  # the child blocks after the session, sends to nobody, and ends well
        if done.exists():
            break
        time.sleep(0.05)
    assert done.read_text() == "done"


def test_the_allowlist_the_marker_and_the_hang_guard_apply_to_children(
    pytester: pytest.Pytester,
) -> None:
    _project(pytester, UVICORN)
    pytester.makepyfile(
        app=APP + "\n\n@app.get('/stuck')\nasync def stuck():\n    while True:\n        pass\n",
        test_more="""
        import httpx
        import pytest


        @pytest.mark.allow_blocking(reason="a known slow route")
        def test_allowed_by_marker(server):
            assert httpx.get(server + "/slow").status_code == 200


        def test_stuck(server):
            assert httpx.get(server + "/stuck", timeout=30).status_code == 500
        """,
    )
    result = run(pytester, "--loop-block-timeout=1", "test_more.py", subprocess=True)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(
        [
            "*past the hang timeout, and was interrupted at app.py:* in stuck (in process pid *",
            "FAILED test_more.py::test_stuck - LoopBlockedError: event loop hung*",
        ]
    )
    write_ini(pytester, mode="auto", extra="loop_block_allow = app:slow")
    allowed = run(pytester, "test_app.py", subprocess=True)
    allowed.assert_outcomes(passed=3)
    allowed.stdout.fnmatch_lines(["0 block(s) in 0 test(s); 1 allowed block(s) not counted"])


def test_a_server_forked_from_the_session_by_multiprocessing_is_watched(
    pytester: pytest.Pytester,
) -> None:
    pytester.makepyfile(
        app=APP,
        conftest="""
        import multiprocessing
        import socket
        import time

        import pytest
        import uvicorn


        def _serve(port):
            uvicorn.run("app:app", port=port, log_level="warning")


        @pytest.fixture(scope="session")
        def server():
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
            proc = multiprocessing.get_context("fork").Process(target=_serve, args=(port,))
            proc.start()
            for _ in range(300):
                try:
                    socket.create_connection(("127.0.0.1", port)).close()
                    break
                except OSError:
                    time.sleep(0.05)
            yield f"http://127.0.0.1:{port}"
            proc.terminate()
            proc.join(30)
        """,
        test_app=TESTS,
    )
    result = run(pytester, "-W", "ignore::DeprecationWarning", subprocess=True)
    result.assert_outcomes(failed=1, passed=2)
    process = "in process pid *: a fork of the pytest session (pid *)"
    result.stdout.fnmatch_lines([blocked(f"app.py:11 in slow ({process})")])


def test_the_runner_names_the_line_behind_a_server_slow_under_load(tmp_path: Path) -> None:
    """The recipe of the docs: uvicorn under the runner, the load script against it, Ctrl-C."""
    (tmp_path / "app.py").write_text(APP)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = [sys.executable, "-m", "pytest_loopguard", "run", "--"]
    server = subprocess.Popen(
        [*runner, "python", "-m", "uvicorn", "app:app", "--port", str(port)],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        for _ in range(300):
            try:
                socket.create_connection(("127.0.0.1", port)).close()
                break
            except OSError:
                time.sleep(0.05)
        load = Path(__file__).parent.parent / "bench" / "load.py"
        url = f"http://127.0.0.1:{port}/slow"
        loaded = subprocess.run(
            [sys.executable, str(load), url, "--requests", "6", "--concurrency", "3"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert loaded.returncode == 0, loaded.stderr
        assert loaded.stdout.startswith("6 requests, 3 at a time: ")
    finally:
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=60)
    lines = err.splitlines()
    blocks = [line for line in lines if line.startswith("pytest-loopguard: event loop blocked")]
    assert len(blocks) == 6, err
    assert all("at app.py:12 in slow (in process pid " in line for line in blocks), err
    assert "pytest-loopguard: 6 block(s) in 1 process(es)" in lines, err


def test_a_child_run_with_warnings_as_errors_is_watched_and_hears_nothing_of_it(
    pytester: pytest.Pytester,
) -> None:
    """Development mode and -W error in a child: the hook and the engine warn of nothing (one
    warning would stop the engine there, or print in the child's output)."""
    pytester.makepyfile(
        test_strict_child="""
        import subprocess
        import sys

        CODE = "\\n".join([
            "import asyncio, time",
            "async def main():",
            "    time.sleep(0.3)",
            "asyncio.run(main())",
        ])


        def test_child():
            open("child.py", "w").write(CODE)
            done = subprocess.run(
                [sys.executable, "-X", "dev", "-W", "error", "child.py"],
                capture_output=True, text=True, timeout=60,
            )
            assert done.returncode == 0
            assert "Warning" not in done.stderr, done.stderr
            assert "pytest-loopguard" not in done.stderr, done.stderr
        """
    )
    result = run(pytester)
    result.assert_outcomes(failed=1)  # its block, caught: the hook ran in it
    result.stdout.fnmatch_lines([blocked("child.py:3 in main (in process pid *: child.py)")])


def test_a_child_s_block_outside_the_project_s_code_is_shown_never_failed(
    pytester: pytest.Pytester,
) -> None:
    """A notebook kernel running a cell, a tool the tests run, a library's worker: their loops
    run code that is not the project's (here ``python -c``), and blocks there are not the
    project's bugs. Allowed, beside the project's own script's block in the same run."""
    pytester.makepyfile(
        helpers=CHILD,
        test_other="""
        import subprocess
        import sys

        from helpers import child

        CODE = "import asyncio, time\\nasync def main():\\n    time.sleep(0.3)\\n"
        CODE += "asyncio.run(main())"


        def test_not_the_project_s():
            subprocess.run([sys.executable, "-c", CODE], check=True, timeout=60)


        def test_the_project_s():
            child(0.3).communicate(timeout=30)
        """,
    )
    result = run(pytester)
    result.assert_outcomes(failed=1, passed=1)
    result.stdout.fnmatch_lines(["FAILED test_other.py::test_the_project_s - LoopBlockedError*"])
    result.stdout.fnmatch_lines(["1 block(s) in 1 test(s); 1 allowed block(s) not counted"])
