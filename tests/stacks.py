"""Hand-made layers and images for tests: entries spelt F/D/S/H/WH/OPQ, a PAX layer tar of
them, and a docker-archive of such layers loaded into the store."""

from __future__ import annotations

import hashlib
import io
import json
import tarfile
from pathlib import Path
from typing import Any

import layerdiff

#: The mtime of every entry.
MTIME = 1_500_000_000
#: aufs' link directory at a layer's root.
PLNK = ".wh..wh.plnk"

Entry = tuple[Any, ...]


def _entry(name: str, kind: str, data: bytes, **kw: Any) -> Entry:
    return (name, kind, data, kw)


def F(name: str, data: bytes = b"x", **kw: Any) -> Entry:
    """A regular file (``mode``, ``uid``, ``gid``, ``xattrs`` as keywords)."""
    return _entry(name, "file", data, **kw)


def D(name: str, **kw: Any) -> Entry:
    """A directory (``mode``, ``uid``, ``gid``, ``xattrs`` as keywords)."""
    return _entry(name, "dir", b"", **kw)


def S(name: str, target: str) -> Entry:
    """A symbolic link."""
    return _entry(name, "symlink", b"", link=target)


def H(name: str, target: str) -> Entry:
    """A hardlink."""
    return _entry(name, "hardlink", b"", link=target)


def WH(path: str) -> Entry:
    """The whiteout of ``path``."""
    parent, _, base = path.rpartition("/")
    return F(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")


def OPQ(d: str) -> Entry:
    """The opaque marker of the directory ``d`` ("" : the root)."""
    return F(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq", b"")


def layer_tar(entries: list[Entry]) -> bytes:
    """A PAX layer of ``entries``, in the order given."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, kw in entries:
            info = tarfile.TarInfo(name)
            info.mtime = MTIME
            info.mode = kw.get("mode", 0o755 if kind == "dir" else 0o644)
            info.uid, info.gid = kw.get("uid", 0), kw.get("gid", 0)
            info.type = {
                "file": tarfile.REGTYPE,
                "dir": tarfile.DIRTYPE,
                "symlink": tarfile.SYMTYPE,
                "hardlink": tarfile.LNKTYPE,
            }[kind]
            info.linkname = kw.get("link", "")
            info.pax_headers = {f"SCHILY.xattr.{k}": v for k, v in kw.get("xattrs", {}).items()}
            info.size = len(data) if kind == "file" else 0
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return buf.getvalue()


def load_layers(tmp_path: Path, name: str, layers: list[bytes]) -> None:
    """Load the docker-archive (legacy form) of an image of ``layers`` as ``name``."""
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {
            "type": "layers",
            "diff_ids": ["sha256:" + hashlib.sha256(t).hexdigest() for t in layers],
        },
        "history": [{"created_by": f"layer {i}"} for i in range(len(layers))],
    }
    files = {f"{i}/layer.tar": t for i, t in enumerate(layers)}
    manifest = [{"Config": "config.json", "RepoTags": [name], "Layers": list(files)}]
    files |= {
        "config.json": json.dumps(config).encode(),
        "manifest.json": json.dumps(manifest).encode(),
    }
    archive = tmp_path / "archive.tar"
    with tarfile.open(archive, "w") as tar:
        for member, data in files.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    assert layerdiff.load(archive).images == (name,)
