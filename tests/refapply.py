"""A slow, obviously-correct reference applier of OCI layers, the oracle of the round-trip tests.

It follows image-spec ``layer.md`` literally, in two phases so that entry order inside a layer
cannot matter: first every whiteout removes from the *lower* tree (``.wh.NAME`` the sibling
``NAME``, ``.wh..wh..opq`` every child of its directory), then every other entry is extracted
(an existing non-directory, or a directory replaced by a non-directory, is removed first; an
existing directory met by a directory keeps its children and takes the new metadata).
Trusted input only: this is test code, not the hardened applier.
"""

from __future__ import annotations

import os
import shutil
import stat
import tarfile
from decimal import Decimal
from pathlib import Path

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
_SKIPPED_XATTRS = ("trusted.overlay.", "user.overlay.")


def _clean(name: str) -> str:
    original = name
    while name.startswith(("./", "/")):
        name = name[2:] if name.startswith("./") else name[1:]
    name = name.rstrip("/")
    parts = name.split("/")
    assert ".." not in parts, f"refusing {original!r}"
    return name


def _name(member: tarfile.TarInfo) -> str:
    return _clean(member.name)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)


def _mtime_ns(member: tarfile.TarInfo) -> int:
    text = member.pax_headers.get("mtime")
    if text is not None:
        return int(Decimal(text) * 1_000_000_000)
    return int(member.mtime) * 1_000_000_000


def _xattrs(member: tarfile.TarInfo) -> dict[str, bytes]:
    prefix = "SCHILY.xattr."
    return {
        key[len(prefix) :]: value.encode("utf-8", "surrogateescape")
        for key, value in member.pax_headers.items()
        if key.startswith(prefix) and not key[len(prefix) :].startswith(_SKIPPED_XATTRS)
    }


def _set_metadata(path: Path, member: tarfile.TarInfo, *, existing_dir: bool) -> None:
    os.chown(path, member.uid, member.gid, follow_symlinks=False)
    if member.issym():
        return
    os.chmod(path, member.mode)  # after chown, which clears setuid/setgid
    wanted = _xattrs(member)
    if existing_dir:  # the entry replaces the directory's metadata, xattrs included
        for name in os.listxattr(path):
            if name.startswith("user.") and name not in wanted:
                os.removexattr(path, name)
    for name, value in wanted.items():
        os.setxattr(path, name, value)


def apply_layer(layer: str | os.PathLike[str], root: str | os.PathLike[str]) -> None:
    """Apply the (uncompressed or gzip) layer tar at ``layer`` onto the tree at ``root``."""
    base = Path(root)
    with tarfile.open(layer, "r:*") as tar:
        members = tar.getmembers()
        # Phase 1: whiteouts, against the lower tree only.
        for m in members:
            name = _name(m)
            parent, _, leaf = name.rpartition("/")
            if leaf == OPAQUE:
                directory = base / parent
                if directory.is_dir() and not directory.is_symlink():
                    for child in os.listdir(directory):
                        _remove(directory / child)
            elif leaf.startswith(WHITEOUT):
                _remove(base / parent / leaf[len(WHITEOUT) :])
        # Phase 2: everything else, in archive order (parents come first).
        dir_times: list[tuple[Path, int]] = []
        for m in members:
            name = _name(m)
            if not name or name.rpartition("/")[2].startswith(WHITEOUT):
                continue
            path = base / name
            existing_dir = m.isdir() and path.is_dir() and not path.is_symlink()
            if not existing_dir:
                _remove(path)
            if m.isdir():
                if not existing_dir:
                    os.mkdir(path)
            elif m.isreg():
                src = tar.extractfile(m)
                assert src is not None
                with src, open(path, "wb") as out:
                    shutil.copyfileobj(src, out)
            elif m.issym():
                os.symlink(m.linkname, path)
            elif m.islnk():
                # The target itself, also when it is a symlink (link(2), not following it).
                os.link(base / _clean(m.linkname), path, follow_symlinks=False)
                continue  # the link shares its target's inode and metadata
            elif m.isfifo():
                os.mkfifo(path)
            elif m.ischr() or m.isblk():
                kind = stat.S_IFCHR if m.ischr() else stat.S_IFBLK
                os.mknod(path, kind | 0o600, os.makedev(m.devmajor, m.devminor))
            else:
                raise AssertionError(f"{m.name}: unexpected tar entry type {m.type!r}")
            _set_metadata(path, m, existing_dir=existing_dir)
            if m.isdir():
                dir_times.append((path, _mtime_ns(m)))
            else:
                ns = _mtime_ns(m)
                os.utime(path, ns=(ns, ns), follow_symlinks=False)
        # Directory times last: creating their children changed them.
        for path, ns in reversed(dir_times):
            os.utime(path, ns=(ns, ns))
