"""Read-only overlayfs mounts of layer directories, for tests that check against the kernel."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import pytest


def mount_or_skip(opts: str, merged: Path) -> None:
    """Mount overlayfs with ``opts`` at ``merged``; skip the test where it cannot be."""
    mount = subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mount.returncode != 0:
        pytest.skip(f"cannot mount overlayfs here ({opts}): {mount.stderr.strip()}")


@contextmanager
def lowers_mounted(lowers: Sequence[Path], merged: Path) -> Iterator[Path]:
    """``lowers`` (top first) mounted read-only at ``merged``, made here, and unmounted after;
    the test is skipped where overlayfs cannot be mounted."""
    merged.mkdir()
    mount_or_skip("lowerdir=" + ":".join(str(d) for d in lowers), merged)
    try:
        yield merged
    finally:
        subprocess.run(["umount", str(merged)], check=True)
