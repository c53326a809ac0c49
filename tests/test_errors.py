"""Errors from the core: one base class, the stdlib class a caller would catch, errno and
filename kept for I/O errors."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

import layerdiff


def test_missing_tree_is_an_oserror_with_errno_and_filename(tmp_path: Path) -> None:
    (tmp_path / "upper").mkdir()
    missing = tmp_path / "missing"
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        layerdiff.diff(missing, tmp_path / "upper")
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, layerdiff.LayerdiffError)
    assert err.errno == errno.ENOENT
    assert Path(err.filename) == missing


def test_reserved_name_is_a_value_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    (tmp_path / "tree" / "etc" / ".wh.sneaky").write_text("x")
    with pytest.raises(layerdiff.ReservedNameError) as info:
        layerdiff.write_layer(tmp_path / "tree", dest=tmp_path / "blobs")
    assert isinstance(info.value, ValueError)
    assert "etc/.wh.sneaky" in str(info.value)


def test_corrupt_layer_is_a_format_error_naming_the_entry(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(b"\x00" * 100 + b"not a tar" * 200)
    with pytest.raises(layerdiff.FormatError) as info:
        layerdiff.apply(tmp_path / "out", [blob])
    assert isinstance(info.value, ValueError)
    assert "checksum" in str(info.value)
