"""Small helpers for tests that build images and damage their layouts."""

from __future__ import annotations

from pathlib import Path


def tree(root: Path, marker: str) -> Path:
    """A tiny root filesystem whose ``etc/marker`` holds ``marker``."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "marker").write_text(marker)
    return root


def blob(layout: Path, digest: str) -> Path:
    """Where the OCI layout at ``layout`` keeps the blob ``digest``."""
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")
