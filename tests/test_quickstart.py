"""The README's first command runs the bundled example: it must keep working."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


def test_the_quickstart_example_runs(tmp_path: Path) -> None:
    bin_dir = str(Path(sys.executable).parent)
    path = f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"
    if shutil.which("layerdiff", path=path) is None:
        pytest.skip("the layerdiff command is not installed (pip install .)")
    done = subprocess.run(
        ["bash", str(REPO / "examples" / "quickstart.sh")],
        env={**os.environ, "PATH": path, "TMPDIR": str(tmp_path)},
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    assert "A /var/log/app.log" in done.stdout
    lines = done.stdout.splitlines()
    images = lines[lines.index("--- images") + 1 :]
    # Newest first, or in the index's order when both were made in the same second.
    assert sorted(line.split()[:2] for line in images[1:]) == [["example", "v1"], ["example", "v2"]]
