"""The reference applier and tree comparison are themselves right (the oracle is tested)."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path

import pytest

from tests import peers
from tests.refapply import apply_layer
from tests.treecmp import assert_same_tree, differences


def _tar(path: Path, entries: list[tuple[str, bytes | None, dict[str, str]]]) -> None:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for name, data, pax in entries:
            info = tarfile.TarInfo(name)
            info.pax_headers = pax
            info.mtime = 1_000_000
            if data is None:
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            else:
                info.size, info.mode = len(data), 0o644
                tar.addfile(info, io.BytesIO(data))


def make_tree(root: Path) -> None:
    (root / "d" / "e").mkdir(parents=True)
    (root / "d" / "f").write_bytes(b"hello")
    os.chmod(root / "d" / "f", 0o4755)
    (root / "g").write_bytes(b"x" * 3000)
    os.link(root / "g", root / "d" / "e" / "g2")
    os.symlink("../g", root / "d" / "link")
    os.mkfifo(root / "fifo")
    # Python's tarfile writes mtimes as floats: keep them exact in a float for this self-test.
    for rel in ["d/f", "g", "d/link", "fifo"]:
        os.utime(root / rel, ns=(0, 1_500_000_000_250_000_000), follow_symlinks=False)


def test_whole_tree_round_trip(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()
    make_tree(src)
    layer = tmp_path / "layer.tar"
    layer.write_bytes(peers.tar_tree(src))
    apply_layer(layer, dst)
    assert_same_tree(src, dst)


def test_differences_are_reported(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    make_tree(a)
    make_tree(b)
    assert differences(a, b, mtimes=False) == []
    os.chmod(b / "d" / "f", 0o755)
    (b / "new").write_bytes(b"")
    os.unlink(b / "d" / "e" / "g2")
    out = differences(a, b, mtimes=False)
    assert any(d.startswith("differs: /d/f: mode") for d in out)
    assert any(d.startswith("extra: /new") for d in out)
    assert any(d.startswith("missing: /d/e/g2") for d in out)
    assert any(d.startswith("differs: /g: linked_to") for d in out)


def test_whiteouts_and_opaque(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "gone").mkdir(parents=True)
    (root / "gone" / "child").write_bytes(b"")
    (root / "opq").mkdir()
    (root / "opq" / "old").write_bytes(b"")
    (root / "file").write_bytes(b"")
    layer = tmp_path / "layer.tar"
    # The new entry in opq comes *before* the opaque marker: order must not matter.
    _tar(
        layer,
        [
            (".wh.file", b"", {}),
            (".wh.gone", b"", {}),
            ("opq", None, {}),
            ("opq/new", b"n", {"SCHILY.xattr.user.k": "v"}),
            ("opq/.wh..wh..opq", b"", {}),
        ],
    )
    apply_layer(layer, root)
    assert sorted(os.listdir(root)) == ["opq"]
    assert os.listdir(root / "opq") == ["new"]
    assert os.getxattr(root / "opq" / "new", "user.k") == b"v"


@pytest.mark.parametrize("name", ["../evil", "a/../../evil"])
def test_refuses_escape(tmp_path: Path, name: str) -> None:
    layer = tmp_path / "layer.tar"
    _tar(layer, [(name, b"x", {})])
    with pytest.raises(AssertionError, match="refusing"):
        apply_layer(layer, tmp_path)
