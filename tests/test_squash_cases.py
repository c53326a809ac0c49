"""Squash gives what applying the layers in order gives, on hand-made layers whose entries
meet in the corners of the whiteout, symlink and hardlink rules (or both refuse them).

Each case is a stack of layers; every split of it is squashed (`--layers n` for each n) and
unpacked, and compared with the unpacked image."""

from __future__ import annotations

import io
import os
import tarfile
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from tests.test_archive import _load_legacy
from tests.treecmp import differences

_T = 1_600_000_000


def _entry(name: str, kind: str = "file", data: bytes = b"x", **kw: Any) -> tuple[Any, ...]:
    return (name, kind, data, kw)


def F(name: str, data: bytes = b"x", **kw: Any) -> tuple[Any, ...]:
    return _entry(name, "file", data, **kw)


def D(name: str, **kw: Any) -> tuple[Any, ...]:
    return _entry(name, "dir", b"", **kw)


def S(name: str, target: str) -> tuple[Any, ...]:
    return _entry(name, "symlink", b"", link=target)


def H(name: str, target: str) -> tuple[Any, ...]:
    return _entry(name, "hardlink", b"", link=target)


def WH(path: str) -> tuple[Any, ...]:
    parent, _, base = path.rpartition("/")
    return F(f"{parent}/.wh.{base}" if parent else f".wh.{base}", b"")


def OPQ(d: str) -> tuple[Any, ...]:
    return F(f"{d}/.wh..wh..opq" if d else ".wh..wh..opq", b"")


def _tar(entries: list[tuple[Any, ...]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, kind, data, kw in entries:
            info = tarfile.TarInfo(name)
            info.mtime = _T
            info.mode = kw.get("mode", 0o755 if kind == "dir" else 0o644)
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


CASES = {
    # A layer whites out a lower directory it also writes into: the directory stays, with its
    # own metadata, and only its lower children go.
    "whiteout of a dir written into": [
        [D("c", mode=0o711, xattrs={"user.k": "1"}), F("c/old")],
        [F("c/new"), WH("c")],
        [F("c/x")],
    ],
    "whiteout of a dir written into, then of the new file": [
        [D("c"), F("c/old")],
        [F("c/new"), WH("c")],
        [WH("c/new")],
    ],
    "root opaque in a layer writing into a lower dir": [
        [D("c"), F("c/old")],
        [F("c/new"), OPQ("")],
        [WH("c/new")],
    ],
    "whiteout of a dir written into, then the dir again": [
        [D("c"), F("c/old")],
        [F("c/new"), WH("c")],
        [D("c")],
    ],
    # Every whiteout of a layer comes before its opaque markers, as apply carries them out.
    "opaque marker, then a whiteout through a link it does not remove": [
        [D("d"), S("d/l", "../e"), D("e"), F("e/f", b"1"), F("e/g")],
        [OPQ("d"), WH("d/l/f")],
    ],
    "opaque marker through a link, then a whiteout of the link": [
        [D("e"), F("e/f", b"1"), S("d", "e")],
        [OPQ("d"), WH("d")],
    ],
    "the same below the range": [
        [D("e"), F("e/f", b"1"), F("e/g", b"1"), S("d", "e")],
        [OPQ("d"), WH("d")],
        [WH("e/f")],
    ],
    "a link to itself on the way": [
        [S("c", "c"), D("a"), F("a/f")],
        [OPQ(""), WH("c/a/a")],
    ],
    # A hardlink to a symbolic link is a symbolic link.
    "path through a hardlink to a symlink": [
        [D("d"), S("s", "d"), H("h", "s")],
        [F("h/x", b"2")],
    ],
    "path through a hardlink to a lower symlink": [
        [D("d")],
        [S("s", "d"), H("h", "s")],
        [F("h/x", b"2")],
    ],
    # `..` in a link's target steps out of a directory, which must be there (as the kernel
    # walks it): apply makes a missing one for an entry, and a whiteout through it hides
    # nothing, as one through a file does.
    "entry through a link stepping out of a missing directory": [
        [S("l", "x/../y")],
        [F("l/f", b"1")],
    ],
    "whiteout through a link stepping out of a file": [
        [F("f", b"1"), D("y"), F("y/x", b"2"), S("l", "f/../y")],
        [WH("l/x")],
    ],
    "whiteout through a link stepping out of a missing directory": [
        [D("y"), F("y/x", b"2"), S("l", "nonexist/../y")],
        [WH("l/x")],
    ],
    "entry through a link stepping out of a file": [
        [F("f", b"1"), D("y"), S("l", "f/../y")],
        [F("l/z", b"3")],
    ],
    "opaque marker through a looping link that starts in a missing directory": [
        [OPQ("a/c"), S("a/c", "b/../c"), WH("a/c")],
        [D("a/c"), F("a/c", b"3")],
    ],
    # Hardlinks apply refuses, squash refuses; one to itself is left as it is.
    "hardlink to itself": [[F("t", b"1")], [H("t", "t")]],
    "hardlink to itself, then its whiteout in the same layer": [
        [F("t", b"1")],
        [H("t", "t"), WH("t")],
    ],
    "hardlink to a lower directory": [[D("d")], [H("h", "d")]],
    "hardlink in place of the directory holding its target": [
        [F("b/c", b"2")],
        [H("b", "b/c")],
    ],
    "hardlink to nothing": [[D("c"), H("c/h", "missing")], [F("c", b"1")]],
}


@pytest.mark.parametrize("name", list(CASES))
def test_squash_gives_what_the_layers_applied_in_order_give(tmp_path: Path, name: str) -> None:
    layers = CASES[name]
    _load_legacy(tmp_path, "case/x:1", [_tar(layer) for layer in layers])
    try:
        layerdiff.unpack("case/x:1", tmp_path / "applied")
        applied: BaseException | None = None
    except layerdiff.LayerdiffError as e:
        applied = e
    for n in range(1, len(layers) + 1):
        target = f"case/x:squashed-{n}"
        try:
            layerdiff.squash("case/x:1", target, layers=n)
            out = tmp_path / f"squashed-{n}"
            layerdiff.unpack(target, out)
        except layerdiff.LayerdiffError as e:
            assert applied is not None, f"--layers {n}: squash failed where apply did not: {e}"
            continue
        assert applied is None, f"--layers {n}: squash succeeded where apply failed: {applied}"
        assert differences(tmp_path / "applied", out) == [], f"--layers {n}"


def test_implied_directories_are_0755_whatever_the_umask(tmp_path: Path) -> None:
    """A directory a layer implies (its entries name it, it has none) is made 0755, as squash
    writes it: the tree does not depend on the caller's umask."""
    _load_legacy(tmp_path, "case/umask:1", [_tar([F("a/b/c", b"1")]), _tar([F("x/y", b"2")])])
    old = os.umask(0o077)
    try:
        layerdiff.unpack("case/umask:1", tmp_path / "applied")
        layerdiff.squash("case/umask:1", "case/umask:squashed")
        layerdiff.unpack("case/umask:squashed", tmp_path / "squashed")
    finally:
        os.umask(old)
    for d in ("a", "a/b", "x"):
        assert (tmp_path / "applied" / d).stat().st_mode & 0o7777 == 0o755, d
    assert differences(tmp_path / "applied", tmp_path / "squashed") == []
