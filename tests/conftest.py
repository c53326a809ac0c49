"""Shared fixtures: an isolated store for every test, the core check, the CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

IS_ROOT = os.geteuid() == 0


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Root-only tests are skipped, with the reason shown, when not running as root.

    CI runs as root, so there they always run.
    """
    for item in items:
        if "root" in item.keywords and not IS_ROOT:
            item.add_marker(pytest.mark.skip(reason="needs root (chown, device nodes, mounts)"))


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
