""" "The user's line" is decided the same way wherever a library lives: one installed outside
site-packages (``pip install --target`` on PYTHONPATH, another environment's or Bazel's
``site-packages``) is not the user's code, while the project's own modules are, installed
editable or not."""

from __future__ import annotations

import pytest

from conftest import blocked, run

LIBRARY = """
import time


def wait_for_reply():
    time.sleep(0.2)
"""

TEST = """
import slowlib


async def test_calls_the_library():
    slowlib.wait_for_reply()
"""


def _library(pytester: pytest.Pytester, folder: str, record: bool) -> None:
    """``slowlib`` in ``folder``, as ``pip install --target folder slowlib`` lays it out (with
    its .dist-info) or as the project's own code (without)."""
    package = pytester.path / folder / "slowlib"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text(LIBRARY)
    if record:
        info = pytester.path / folder / "slowlib-1.0.dist-info"
        info.mkdir()
        (info / "METADATA").write_text("Metadata-Version: 2.1\nName: slowlib\nVersion: 1.0\n")
        (info / "RECORD").write_text(
            "slowlib/__init__.py,,\nslowlib-1.0.dist-info/METADATA,,\n"
            "slowlib-1.0.dist-info/RECORD,,\n"
        )


@pytest.mark.parametrize(
    "folder", ["libs", "third_party/site-packages"], ids=["pip-target", "site-packages-folder"]
)
def test_a_library_outside_site_packages_is_not_the_user_s_line(
    pytester: pytest.Pytester, folder: str
) -> None:
    _library(pytester, folder, record=folder == "libs")
    pytester.makepyfile(test_lib=TEST)
    result = run(pytester, extra=f"pythonpath = {folder}", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([blocked("test_lib.py:5 in test_calls_the_library")])


def test_the_project_s_own_package_is_the_user_s_line(pytester: pytest.Pytester) -> None:
    """The same package without a .dist-info listing it: the project's code, blamed itself
    (the same proof that the watcher was live, with the other answer)."""
    _library(pytester, "src", record=False)
    pytester.makepyfile(test_lib=TEST)
    result = run(pytester, extra="pythonpath = src", subprocess=True)
    result.assert_outcomes(failed=1)
    result.stdout.fnmatch_lines([blocked("src/slowlib/__init__.py:6 in wait_for_reply")])
