"""Shared fixtures: an isolated store for every test, the core check, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests import fakecore

IS_ROOT = os.geteuid() == 0


def core_available() -> bool:
    """Whether the Rust extension is built (the integration tests need it)."""
    try:
        from layerdiff import _core  # noqa: F401
    except ImportError:
        return False
    return True


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Skip, with the reason shown, what this machine cannot run.

    ``LAYERDIFF_REQUIRE_CORE=1`` (set in CI) turns a missing extension into a failure instead.
    """
    require_core = os.environ.get("LAYERDIFF_REQUIRE_CORE") == "1"
    have_core = core_available()
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root (chown, device nodes, mounts)"))
        if "core" in item.keywords and not have_core and not require_core:
            item.add_marker(
                pytest.mark.skip(reason="layerdiff._core is not built (pip install -e .)")
            )


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "core: needs the Rust extension layerdiff._core")


@pytest.fixture(autouse=True)
def _isolated_store(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Every test gets its own default store and no SOURCE_DATE_EPOCH from the caller."""
    home = tmp_path_factory.mktemp("layerdiff-home")
    monkeypatch.setenv("LAYERDIFF_HOME", str(home))
    monkeypatch.delenv("SOURCE_DATE_EPOCH", raising=False)
    return home


@pytest.fixture
def store_home(_isolated_store: Path) -> Path:
    """The test's ``$LAYERDIFF_HOME``."""
    return _isolated_store


@pytest.fixture
def fake_core(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Replace the extension by the pure-Python stand-in (whole-tree layers only)."""
    import layerdiff

    monkeypatch.setitem(sys.modules, "layerdiff._core", fakecore)
    monkeypatch.setattr(layerdiff, "_core", fakecore, raising=False)
    yield


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real ``layerdiff`` command in a subprocess (``python -m layerdiff``)."""
    return subprocess.run(
        [sys.executable, "-m", "layerdiff", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        check=False,
        timeout=300,
    )
