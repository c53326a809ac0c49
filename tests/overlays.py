"""Read-only overlayfs mounts of layer directories, for tests that check against the kernel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest


@contextmanager
def lowers_mounted(lowers: Sequence[Path], merged: Path) -> Iterator[Path]:
    """``lowers`` (top first) mounted read-only at ``merged``, made here, and unmounted after;
    the test is skipped where overlayfs cannot be mounted."""
    merged.mkdir()
    opts = "lowerdir=" + ":".join(str(d) for d in lowers)
    mount = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here: {mount.stderr.strip()}")
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)
