"""Compare two directory trees by everything a layer must carry.

Type, permission bits (setuid/setgid/sticky included), owner, content, symlink target, device
numbers, xattrs (overlayfs' own and security.* left out), hardlink structure, and the mtime of
everything that is not a directory. The root directory itself is not compared.
"""

from __future__ import annotations

import hashlib
import os
import stat
from collections import defaultdict
from pathlib import Path
from typing import Any

_IGNORED_XATTR_PREFIXES = ("trusted.overlay.", "user.overlay.", "security.", "system.")


def xattrs(path: str | os.PathLike[str]) -> dict[str, bytes]:
    """The comparable xattrs of ``path`` (not following symlinks)."""
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in sorted(names)
        if not n.startswith(_IGNORED_XATTR_PREFIXES)
    }


def _walk(root: Path) -> list[str]:
    out: list[str] = []

    def visit(rel: str) -> None:
        with os.scandir(root / rel if rel else root) as it:
            names = sorted(e.name for e in it)
        for name in names:
            child = f"{rel}/{name}" if rel else name
            out.append(child)
            if stat.S_ISDIR(os.lstat(root / child).st_mode):
                visit(child)

    visit("")
    return out


def snapshot(root: str | os.PathLike[str], *, mtimes: bool = True) -> dict[str, Any]:
    """Everything comparable about the tree at ``root``: {relative path: attributes}."""
    base = Path(root)
    entries: dict[str, Any] = {}
    inodes: dict[tuple[int, int], list[str]] = defaultdict(list)
    for rel in _walk(base):
        path = base / rel
        st = os.lstat(path)
        kind = stat.S_IFMT(st.st_mode)
        attrs: dict[str, Any] = {
            "type": {
                stat.S_IFREG: "file",
                stat.S_IFDIR: "dir",
                stat.S_IFLNK: "symlink",
                stat.S_IFIFO: "fifo",
                stat.S_IFCHR: "char",
                stat.S_IFBLK: "block",
                stat.S_IFSOCK: "socket",
            }[kind],
            "uid": st.st_uid,
            "gid": st.st_gid,
        }
        if kind != stat.S_IFLNK:  # a symlink's mode is always 0777 and not carried
            attrs["mode"] = oct(stat.S_IMODE(st.st_mode))
            attrs["xattrs"] = xattrs(path)
        if kind not in (stat.S_IFDIR, stat.S_IFSOCK) and st.st_nlink > 1:
            inodes[(st.st_dev, st.st_ino)].append(rel)
        if kind == stat.S_IFREG:
            attrs["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif kind == stat.S_IFLNK:
            attrs["target"] = os.readlink(path)
        elif kind in (stat.S_IFCHR, stat.S_IFBLK):
            attrs["rdev"] = (os.major(st.st_rdev), os.minor(st.st_rdev))
        if mtimes and kind != stat.S_IFDIR:
            attrs["mtime_ns"] = st.st_mtime_ns
        entries[rel] = attrs
    # Hardlink structure: each path names the first path (in sort order) of its link group.
    for group in inodes.values():
        if len(group) > 1:
            first = min(group, key=os.fsencode)
            for rel in group:
                entries[rel]["linked_to"] = first
    return entries


def differences(
    expected: str | os.PathLike[str], actual: str | os.PathLike[str], *, mtimes: bool = True
) -> list[str]:
    """Human-readable differences between two trees; empty when they match."""
    a, b = snapshot(expected, mtimes=mtimes), snapshot(actual, mtimes=mtimes)
    out = []
    for rel in sorted(a.keys() | b.keys(), key=os.fsencode):
        if rel not in b:
            out.append(f"missing: /{rel} {a[rel]}")
        elif rel not in a:
            out.append(f"extra: /{rel} {b[rel]}")
        elif a[rel] != b[rel]:
            keys = sorted(
                k for k in a[rel].keys() | b[rel].keys() if a[rel].get(k) != b[rel].get(k)
            )
            detail = ", ".join(f"{k}: {a[rel].get(k)!r} != {b[rel].get(k)!r}" for k in keys)
            out.append(f"differs: /{rel}: {detail}")
    return out


def assert_same_tree(
    expected: str | os.PathLike[str], actual: str | os.PathLike[str], *, mtimes: bool = True
) -> None:
    """Fail listing every difference when the trees do not match."""
    diffs = differences(expected, actual, mtimes=mtimes)
    assert not diffs, "trees differ:\n  " + "\n  ".join(diffs)
