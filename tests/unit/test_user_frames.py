"""Which file is the user's: decided from where it lives and what is installed, per file."""

from __future__ import annotations

from pathlib import Path

from pytest_loopguard._base import frames


def _package(root: Path, name: str, record: bool) -> Path:
    (root / name / "sub").mkdir(parents=True)
    for relative in ("__init__.py", "sub/__init__.py", "sub/io.py"):
        (root / name / relative).write_text("")
    if record:
        info = root / f"{name}-1.0.dist-info"
        info.mkdir()
        lines = [f"{name}/__init__.py,,", f"{name}/sub/__init__.py,,", f"{name}/sub/io.py,,"]
        (info / "RECORD").write_text("\n".join(lines) + "\n")
    return root / name


def test_a_package_a_dist_info_lists_is_a_library(tmp_path: Path) -> None:
    package = _package(tmp_path / "libs", "vendorlib", record=True)
    assert not frames._is_user(str(package / "sub" / "io.py"), "vendorlib.sub.io")
    assert not frames._is_user(str(package / "sub" / "__init__.py"), "vendorlib.sub")
    assert not frames._is_user(str(package / "__init__.py"), "vendorlib")


def test_the_project_s_own_package_is_the_user_s(tmp_path: Path) -> None:
    package = _package(tmp_path / "src", "myapp", record=False)
    assert frames._is_user(str(package / "sub" / "io.py"), "myapp.sub.io")
    assert frames._is_user(str(tmp_path / "test_x.py"), "test_x")
    assert frames._is_user(str(tmp_path / "script.py"), "__main__")


def test_any_site_packages_folder_is_a_library(tmp_path: Path) -> None:
    path = tmp_path / "bazel-out" / "site-packages" / "redis" / "client.py"
    assert not frames._is_user(str(path), "redis.client")
    assert not frames._is_user(str(tmp_path / "x" / "dist-packages" / "a.py"), "a")
