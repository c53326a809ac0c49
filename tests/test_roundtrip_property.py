"""Round trip over random trees and random changes: lower + our layer == upper.

A random lower tree is built, copied to upper, and changed at random (add, modify in place with
the same size, delete, type change, chmod, chown, xattrs, hardlinks, symlinks, rename, delete and
recreate a directory). Then ``write_layer(upper, lower=lower)`` is applied onto a copy of lower
by an independent applier (tests/refapply.py, and umoci for a few examples) and the result must
be the upper tree: content, type, mode, owner, symlink target, xattrs, hardlink structure and the
mtime of every non-directory. Names include one that is not UTF-8 and one beyond ASCII.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import subprocess
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerdiff
from tests.overlays import lowers_mounted
from tests.refapply import apply_layer
from tests.treecmp import assert_same_tree

IS_ROOT = os.geteuid() == 0
# One name is not UTF-8 (0xff), one is UTF-8 beyond ASCII: both must round-trip byte for byte.
# Two start with another name ("ab", "a-b"): a change to "a" must not reach them, and "a-b"
# sorts before "a/…" by bytes but after "a" and its children as paths.
NAMES = ("a", "\u00e9", os.fsdecode(b"c\xff"), "ab", "a-b")
PATHS = ["/".join(parts) for depth in (1, 2, 3) for parts in itertools.product(NAMES, repeat=depth)]
MODES = (0o644, 0o600, 0o755, 0o700, 0o444, 0o4755, 0o2755, 0o1777, 0o6711, 0o000)
OWNERS = (0, 1, 1000, 65534)
TARGETS = ("a", "../b", "/c", "a/b/c", "missing", "../../../../etc/passwd")
XATTRS = ("user.one", "user.two")

path_st = st.sampled_from(PATHS)
# Not empty: POSIX says a PAX record with an empty value deletes the keyword, and Go's tar
# reader (umoci's) drops such a SCHILY.xattr record, so an empty xattr cannot round-trip.
xattr_value_st = st.binary(min_size=1, max_size=20)
data_st = st.binary(max_size=300) | st.binary(min_size=4000, max_size=9000)

# Ops that build a tree (for lower) ...
file_op = st.tuples(st.just("file"), path_st, data_st, st.sampled_from(MODES))
dir_op = st.tuples(st.just("dir"), path_st, st.sampled_from(MODES))
build_ops = st.one_of(
    file_op,
    file_op,  # listed again: files are what most trees hold
    dir_op,
    st.tuples(st.just("symlink"), path_st, st.sampled_from(TARGETS)),
    st.tuples(st.just("hardlink"), path_st, path_st),
    st.tuples(st.just("fifo"), path_st),
    st.tuples(st.just("chown"), path_st, st.sampled_from(OWNERS), st.sampled_from(OWNERS)),
    st.tuples(st.just("xattr"), path_st, st.sampled_from(XATTRS), xattr_value_st),
)


# ... and everything that can change one (for upper), aimed at paths that exist right now.
def change_ops(existing: list[str]) -> st.SearchStrategy[tuple[Any, ...]]:
    """Ops changing the tree; ``existing`` (its current paths) makes most of them hit."""
    p = st.sampled_from(existing) if existing else path_st
    return st.one_of(
        build_ops,
        st.tuples(st.just("modify"), p, st.integers(0, 255)),
        st.tuples(st.just("append"), p, st.binary(min_size=1, max_size=50)),
        st.tuples(st.just("delete"), p),
        st.tuples(st.just("chmod"), p, st.sampled_from(MODES)),
        st.tuples(st.just("chown"), p, st.sampled_from(OWNERS), st.sampled_from(OWNERS)),
        st.tuples(st.just("xattr"), p, st.sampled_from(XATTRS), xattr_value_st),
        st.tuples(st.just("rmxattr"), p, st.sampled_from(XATTRS)),
        st.tuples(st.just("hardlink"), path_st, p),
        st.tuples(st.just("rename"), p, path_st),
        st.tuples(st.just("recreate"), p),
        st.tuples(st.just("typechange"), p, data_st),
    )


class Clock:
    """Hands out distinct mtimes (with nanoseconds) so every change is visible by mtime."""

    def __init__(self, start: int) -> None:
        self.now = start

    def stamp(self, path: Path) -> None:
        self.now += 1_000_000_007
        os.utime(path, ns=(self.now, self.now), follow_symlinks=False)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


_CREATING = frozenset({"file", "dir", "symlink", "hardlink", "fifo"})


def _ensure_parents(root: Path, rel: str) -> bool:
    """Create the missing parent directories of ``rel``; False if a non-directory is in the way."""
    current = root
    for name in rel.split("/")[:-1]:
        current = current / name
        if not os.path.lexists(current):
            current.mkdir()
        elif current.is_symlink() or not current.is_dir():
            return False
    return True


def apply_op(root: Path, op: tuple[Any, ...], clock: Clock) -> None:
    """Apply one random op to the tree; ops that do not fit the tree are skipped."""
    kind, rel = op[0], op[1]
    path = root / rel
    if kind in _CREATING and not _ensure_parents(root, rel):
        return
    parent = path.parent
    if not (parent.is_dir() and not parent.is_symlink()):
        return
    exists = os.path.lexists(path)
    lst = os.lstat(path) if exists else None
    is_reg = lst is not None and stat.S_ISREG(lst.st_mode)
    is_dir = lst is not None and stat.S_ISDIR(lst.st_mode)
    is_link = lst is not None and stat.S_ISLNK(lst.st_mode)
    try:
        if kind == "file" and not exists:
            path.write_bytes(op[2])
            os.chmod(path, op[3])
            clock.stamp(path)
        elif kind == "dir" and not exists:
            path.mkdir()
            os.chmod(path, op[2])
        elif kind == "symlink" and not exists:
            os.symlink(op[2], path)
            clock.stamp(path)
        elif kind == "hardlink" and not exists:
            # Anything but a directory can be hardlinked: files, symlinks (the link itself,
            # not its target), FIFOs.
            source = root / op[2]
            if os.path.lexists(source) and not stat.S_ISDIR(os.lstat(source).st_mode):
                os.link(source, path, follow_symlinks=False)
        elif kind == "fifo" and not exists:
            os.mkfifo(path)
            clock.stamp(path)
        elif kind == "chown" and exists and IS_ROOT:
            os.chown(path, op[2], op[3], follow_symlinks=False)
        elif kind == "xattr" and (is_reg or is_dir):
            os.setxattr(path, op[2], op[3])
        elif kind == "rmxattr" and (is_reg or is_dir) and op[2] in os.listxattr(path):
            os.removexattr(path, op[2])
        elif kind == "modify" and is_reg and lst is not None and lst.st_size > 0:
            # In place, same size: only the bytes (and the mtime) tell the change.
            with open(path, "r+b") as f:
                data = bytearray(f.read())
                data[op[2] % len(data)] ^= 0xFF
                f.seek(0)
                f.write(data)
            clock.stamp(path)
        elif kind == "append" and is_reg:
            with open(path, "ab") as f:
                f.write(op[2])
            clock.stamp(path)
        elif kind == "delete" and exists:
            _remove(path)
        elif kind == "chmod" and exists and not is_link:
            os.chmod(path, op[2])
        elif kind == "rename" and exists:
            target = root / op[2]
            if (
                not os.path.lexists(target)
                and not str(op[2]).startswith(rel + "/")  # not into itself
                and target.parent.is_dir()
                and not target.parent.is_symlink()
            ):
                os.rename(path, target)
        elif kind == "recreate" and is_dir:
            shutil.rmtree(path)
            path.mkdir()
            (path / "new").write_bytes(b"recreated")
            clock.stamp(path / "new")
        elif kind == "typechange" and exists:
            _remove(path)
            if is_dir:
                path.write_bytes(op[2])
                clock.stamp(path)
            elif is_reg:
                path.mkdir()
            else:
                os.symlink("typechanged", path)
                clock.stamp(path)
    except OSError:
        pass  # e.g. a chmod 000 directory in the way: skip, the tree stays valid


def copy_tree(src: Path, dst: Path) -> None:
    """An exact copy: owners, modes, times, xattrs and hardlinks kept (GNU cp -a)."""
    subprocess.run(["cp", "-a", "--", str(src), str(dst)], check=True)


def existing_paths(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@contextmanager
def trees(
    build: list[tuple[Any, ...]],
    data: st.DataObject,
    n_changes: int,
    dir_mode: int | None = None,
) -> Iterator[Path]:
    """A temp dir holding ``lower`` built by ``build`` and ``upper`` = lower + random changes;
    with ``dir_mode``, every directory of lower gets that mode (and owner 1000) first."""
    with tempfile.TemporaryDirectory(prefix="layerdiff-prop-") as tmp:
        base = Path(tmp)
        lower, upper = base / "lower", base / "upper"
        lower.mkdir()
        clock = Clock(1_600_000_000_000_000_000)
        for op in build:
            apply_op(lower, op, clock)
        if dir_mode is not None:
            for d in [lower, *(p for p in lower.rglob("*") if p.is_dir() and not p.is_symlink())]:
                os.chmod(d, dir_mode)
                if IS_ROOT:
                    os.chown(d, 1000, 1000)
        copy_tree(lower, upper)
        clock = Clock(1_700_000_000_000_000_000)
        for _ in range(n_changes):
            op = data.draw(change_ops(existing_paths(upper)), label="change")
            apply_op(upper, op, clock)
        yield base


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    build=st.lists(build_ops, min_size=4, max_size=25),
    data=st.data(),
    n_changes=st.integers(1, 15),
    compression=st.sampled_from(["none", "gzip"]),
)
def test_layer_applied_on_lower_gives_upper(
    build: list[tuple[Any, ...]], data: st.DataObject, n_changes: int, compression: str
) -> None:
    with trees(build, data, n_changes) as base:
        lower, upper = base / "lower", base / "upper"
        info = layerdiff.write_layer(
            upper, dest=base / "blobs", lower=lower, compression=compression
        )
        applied = base / "applied"
        copy_tree(lower, applied)
        apply_layer(info.path, applied)
        assert_same_tree(upper, applied)


@pytest.mark.root
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@settings(
    max_examples=8,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    build=st.lists(build_ops, min_size=4, max_size=20),
    data=st.data(),
    n_changes=st.integers(1, 12),
    compression=st.sampled_from(["none", "gzip"]),
)
def test_umoci_unpack_of_committed_image_gives_upper(
    build: list[tuple[Any, ...]], data: st.DataObject, n_changes: int, compression: str
) -> None:
    with trees(build, data, n_changes) as base:
        lower, upper = base / "lower", base / "upper"
        layout = base / "layout"
        layerdiff.commit(lower, image=f"oci:{layout}:base", compression=compression)
        layerdiff.commit(
            upper,
            image=f"oci:{layout}:new",
            lower=lower,
            base=f"oci:{layout}:base",
            compression=compression,
        )
        bundle = base / "bundle"
        proc = subprocess.run(
            ["umoci", "unpack", "--image", f"{layout}:new", str(bundle)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        assert_same_tree(upper, bundle / "rootfs")


@pytest.mark.root
@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    build=st.lists(build_ops, min_size=4, max_size=20),
    data=st.data(),
    n_changes=st.integers(1, 12),
    dir_mode=st.sampled_from([0o755, 0o750, 0o1777, 0o2775]),
)
def test_layers_applied_as_overlay_layers_give_upper(
    build: list[tuple[Any, ...]], data: st.DataObject, n_changes: int, dir_mode: int
) -> None:
    """The lower's layer and the diff's, each applied in overlay form into a directory of its
    own (as docker, containerd and the layer cache keep layers), mounted as overlayfs lower
    layers: the merged tree is the upper one, directories above in-place changes included
    (their mode and owner, which a made-up directory would hide, are mostly not the default)."""
    with trees(build, data, n_changes, dir_mode) as base:
        lower, upper = base / "lower", base / "upper"
        blobs = base / "blobs"
        layers = [
            layerdiff.write_layer(lower, dest=blobs, compression="none"),
            layerdiff.write_layer(upper, dest=blobs, lower=lower, compression="none"),
        ]
        dirs = []
        for i, layer in enumerate(layers):
            dirs.append(base / f"layer{i}")
            layerdiff.apply(dirs[-1], [layer.path], overlay=True)
        with lowers_mounted(dirs[::-1], base / "merged") as merged:
            assert_same_tree(upper, merged)
