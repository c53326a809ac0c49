"""Layers written by other tools, for interop tests: Python's tarfile and GNU tar."""

from __future__ import annotations

import io
import os
import subprocess
import tarfile
from pathlib import Path


def tar_tree(root: str | os.PathLike[str]) -> bytes:
    """A PAX tar of the tree at ``root`` written by Python's tarfile: sorted, numeric owners."""
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


def gnu_tar(root: Path, out: Path, *, compress: str | None = None) -> Path:
    """A tar of ``root`` written by GNU tar (``--xattrs``, numeric owners), optionally
    compressed: ``pigz`` (independent blocks), ``multigzip`` (two gzip members, as
    concatenated gzip files are) or ``zstd``."""
    cmd = [
        "tar",
        "-C",
        str(root),
        "--numeric-owner",
        "--xattrs",
        "--xattrs-include=*",
        "-cf",
        "-",
        ".",
    ]
    tar = subprocess.run(cmd, check=True, capture_output=True).stdout
    if compress == "pigz":
        # Small blocks so even a small layer becomes several gzip members.
        tar = subprocess.run(
            ["pigz", "-c", "-b", "32", "-i"], input=tar, check=True, capture_output=True
        ).stdout
    elif compress == "multigzip":
        half = len(tar) // 2
        tar = b"".join(
            subprocess.run(["gzip", "-c"], input=part, check=True, capture_output=True).stdout
            for part in (tar[:half], tar[half:])
        )
    elif compress == "zstd":
        tar = subprocess.run(
            ["zstd", "-q", "-c"], input=tar, check=True, capture_output=True
        ).stdout
    out.write_bytes(tar)
    return out


def skopeo_copy(source: str, destination: str) -> None:
    """``skopeo copy SOURCE DESTINATION``, failing the test with skopeo's words if it fails."""
    done = subprocess.run(
        ["skopeo", "copy", source, destination], capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, done.stderr
