"""How ``diff --overlay`` tells added from changed against a stack of lower directories, checked
against the kernel: a path is changed (``C``) exactly when a read-only overlayfs mount of the
lower directories shows it, whatever whiteouts, opaque directories and files over directories
the lower layers hold."""

from __future__ import annotations

import itertools
import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerdiff
from tests.overlays import lowers_mounted

PATHS = ["/".join(p) for n in (1, 2, 3) for p in itertools.product("ab", repeat=n)]

layer_op = st.tuples(st.sampled_from(["file", "dir", "whiteout", "opaque"]), st.sampled_from(PATHS))


def build_lower(root: Path, ops: list[tuple[str, str]]) -> None:
    """A lower layer in overlay form; an op whose path cannot be made as asked is skipped."""
    root.mkdir()
    for kind, rel in ops:
        path = root / rel
        if os.path.lexists(path):
            continue
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            continue  # a parent is a file or a whiteout here
        if kind == "file":
            path.write_text("x")
        elif kind == "whiteout":
            os.mknod(path, 0o600 | 0o020000, os.makedev(0, 0))
        else:
            path.mkdir()
            if kind == "opaque":
                os.setxattr(path, "trusted.overlay.opaque", b"y")


@pytest.mark.root
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    lowers=st.lists(st.lists(layer_op, max_size=8), min_size=2, max_size=3),
    upper=st.lists(st.sampled_from(PATHS), min_size=1, max_size=6),
)
def test_changed_means_the_lower_directories_show_the_path(
    lowers: list[list[tuple[str, str]]], upper: list[str]
) -> None:
    with tempfile.TemporaryDirectory(prefix="layerdiff-lowers-") as tmp:
        base = Path(tmp)
        dirs = []
        for i, ops in enumerate(lowers):
            dirs.append(base / f"l{i}")
            build_lower(dirs[-1], ops)
        up = base / "upper"
        up.mkdir()
        for rel in upper:
            path = up / rel
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                if not os.path.lexists(path):
                    path.write_text("u")
            except (FileExistsError, NotADirectoryError):
                continue
        with lowers_mounted(dirs, base / "merged") as merged:
            changes = layerdiff.diff_overlay(up, lowers=dirs)
            seen = {c.path.lstrip("/"): c.kind for c in changes if c.kind in ("A", "C")}
            shown = {rel: os.path.lexists(merged / rel) for rel in seen}
        expected = {rel: ("C" if shown[rel] else "A") for rel in seen}
        assert seen == expected
