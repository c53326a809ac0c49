"""A pure-Python stand-in for ``layerdiff._core``, enough to test the Python layers alone.

It writes whole-tree layers only (no diff), with Python's tarfile: correct OCI layers, but not
the core's deterministic bytes.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import subprocess
import tarfile
from collections.abc import Sequence
from typing import Any

_MEDIA = {
    "none": "application/vnd.oci.image.layer.v1.tar",
    "gzip": "application/vnd.oci.image.layer.v1.tar+gzip",
    "zstd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


def tar_tree(root: str | os.PathLike[str]) -> bytes:
    """A PAX tar of the tree at ``root``, sorted, numeric owners."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        paths = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for name in dirnames + filenames:
                paths.append(os.path.join(dirpath, name))
        for path in sorted(paths, key=lambda p: os.fsencode(os.path.relpath(p, root))):
            info = tar.gettarinfo(path, arcname=os.path.relpath(path, root))
            info.uname = info.gname = ""
            if info.isreg():
                with open(path, "rb") as f:
                    tar.addfile(info, f)
            else:
                tar.addfile(info)
    return buf.getvalue()


def compress(data: bytes, compression: str) -> bytes:
    """Compress a tar the way the named layer media type says."""
    if compression == "gzip":
        return gzip.compress(data, mtime=0)
    if compression == "zstd":
        return subprocess.run(
            ["zstd", "-q", "-c"], input=data, capture_output=True, check=True
        ).stdout
    return data


def write_layer(
    upper: Any,
    blobs_dir: Any,
    *,
    lower: Any = None,
    overlay: bool = False,
    lowers: Sequence[Any] = (),
    content: bool = False,
    compression: str = "gzip",
    level: int | None = None,
    threads: int = 0,
    source_date_epoch: int | None = None,
) -> tuple[str, str, int, int, str, str, list[str]]:
    """Whole-tree layer of ``upper`` into ``blobs_dir`` (the core's signature)."""
    if lower is not None or overlay:
        raise NotImplementedError("the stand-in core writes whole-tree layers only")
    tar = tar_tree(upper)
    blob = compress(tar, compression)
    hexdigest = hashlib.sha256(blob).hexdigest()
    path = os.path.join(blobs_dir, hexdigest)
    with open(path, "wb") as f:
        f.write(blob)
    return (
        "sha256:" + hexdigest,
        "sha256:" + hashlib.sha256(tar).hexdigest(),
        len(blob),
        len(tar),
        _MEDIA[compression],
        path,
        [],
    )


def diff(lower: Any, upper: Any, *, content: bool = False) -> list[tuple[str, bytes]]:
    """Not provided by the stand-in."""
    raise NotImplementedError("the stand-in core does not diff")


def diff_overlay(
    upper: Any, *, lowers: Sequence[Any] = (), content: bool = False
) -> list[tuple[str, bytes]]:
    """Not provided by the stand-in."""
    raise NotImplementedError("the stand-in core does not diff")
