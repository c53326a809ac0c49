"""Ctrl-C, SIGTERM and SIGHUP stop long work promptly, with exit code 128 plus the signal's
number and nothing half-written left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import layerdiff


def big_tree(root: Path) -> Path:
    """Enough data that a commit takes seconds: 48 files of 16 MiB of incompressible bytes."""
    root.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(48):
        with open(root / f"f{i:02}", "wb") as f:
            for j in range(16):
                f.write(chunk[j:] + chunk[:j])
    return root


@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "terminated by SIGTERM"),
        (signal.SIGHUP, 129, "terminated by SIGHUP"),
    ],
)
def test_a_signal_stops_a_commit_and_leaves_the_store_as_it_was(
    tmp_path: Path, sig: signal.Signals, code: int, message: str
) -> None:
    tree = big_tree(tmp_path / "tree")
    layout = tmp_path / "layout"
    layerdiff.commit(tmp_path / "tree", image=f"oci:{layout}:first", compression="none")
    before = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    index_before = (layout / "index.json").read_bytes()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerdiff",
            "commit",
            "--progress",
            "none",
            "--threads",
            "1",
            "--compression",
            "zstd",
            "--upper",
            str(tree),
            f"oci:{layout}:second",
        ],
        stderr=subprocess.PIPE,
        text=True,
    )
    # Interrupt once the layer is being written (its temporary blob exists), not after a fixed
    # delay that a fast machine may outrun.
    blobs = layout / "blobs" / "sha256"
    deadline = time.monotonic() + 20
    while not any(p.name.startswith(".tmp-") for p in blobs.iterdir()):
        assert proc.poll() is None, "the commit finished before it could be interrupted"
        assert time.monotonic() < deadline, "the commit never started writing its layer"
        time.sleep(0.01)
    assert proc.poll() is None, "the commit finished before it could be interrupted"
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 5, f"{sig.name} was not seen promptly"
    assert proc.returncode == code, err
    assert err.strip() == f"layerdiff: error: {message}"
    after = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    assert after == before, "a temporary or partial blob was left behind"
    assert (layout / "index.json").read_bytes() == index_before
