"""Squash gives what applying the layers in order gives, on hand-made layers whose entries
meet in the corners of the whiteout, symlink and hardlink rules (or both refuse them).

Each case is a stack of layers; every split of it is squashed (`--layers n` for each n) and
unpacked, and compared with the unpacked image."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import layerdiff
from tests.stacks import OPQ, WH, D, Entry, F, H, S, layer_tar, load_layers
from tests.treecmp import differences

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
    # A whiteout read before the entries below it is carried out first (as docker and umoci
    # read the layer): they go into a directory made for them, not through what it hides.
    **{
        f"whiteout, then an entry below it, over {what}": [base, [WH("l"), F("l/passwd", b"n")]]
        for what, base in {
            "a lower link": [D("etc"), F("etc/passwd", b"root"), S("l", "/etc")],
            "a lower dir of another owner": [D("l", mode=0o700, uid=7), F("l/old")],
            "a lower file": [F("l", b"f")],
        }.items()
    },
    "whiteout, then an entry below it, the link two layers down": [
        [D("etc"), F("etc/passwd", b"root"), S("l", "/etc")],
        [F("other")],
        [WH("l"), F("l/passwd", b"n"), F("l/more/x")],
    ],
    # A parent removed with its subtree (replaced by a file, then a directory again) is
    # marked again for the entries below it: the folds below the range keep it.
    "a parent replaced twice in a layer below the range, then made opaque": [
        [F("a/b/f"), F("a"), D("a"), F("a/b/g")],
        [OPQ("a")],
        [F("z")],
    ],
    "a parent replaced by a link then a directory, then a whiteout below it": [
        [F("a/b/f"), S("a", "x"), D("a"), F("a/b/g")],
        [WH("a/b/g")],
        [F("z")],
    ],
    "an opaque marker, then an entry through a lower link it hides": [
        [D("etc"), F("etc/passwd", b"root"), D("x"), S("x/l", "/etc")],
        [OPQ("x"), F("x/l/passwd", b"n")],
    ],
    "a whiteout of a link, then an entry through another link to it": [
        [D("etc"), F("etc/passwd", b"root"), S("l", "/etc"), S("m", "l")],
        [WH("l"), F("m/passwd", b"n")],
    ],
    "an entry through a link, then its whiteout, then another entry": [
        [D("etc"), F("etc/passwd", b"root"), S("l", "etc")],
        [F("l/a"), WH("l"), F("l/b")],
    ],
    # A whiteout or opaque marker below a path the layer then makes a link: carried out
    # before the link is made, it never reaches through it.
    "a whiteout below a path the layer then makes a link": [
        [D("t"), F("t/x")],
        [WH("d/x"), S("d", "t")],
    ],
    "an opaque marker of a path the layer then makes a link": [
        [D("t"), F("t/x"), F("t/y")],
        [OPQ("d"), S("d", "t")],
    ],
    "a whiteout below a lower directory the layer makes a link into itself": [
        [D("d"), F("d/x")],
        [WH("d/x"), S("d", "d/c")],
    ],
    "a whiteout below a lower directory the layer makes a link elsewhere": [
        [D("d"), F("d/x"), D("t"), F("t/x")],
        [WH("d/x"), S("d", "t")],
    ],
    "an opaque marker below a link to the root, then a file in the link's place": [
        [F("x"), F("y"), D("b")],
        [S("b", "/"), OPQ("b"), F("b")],
    ],
    "a whiteout below a link, then a file in its place": [
        [D("t"), F("t/x")],
        [S("d", "t"), WH("d/x"), F("d")],
    ],
    # The other order: a marker read below what its layer made a link, a file or a hardlink
    # has nothing of the layers below left to hide.
    "a link, then a whiteout below it": [
        [D("t"), F("t/x")],
        [S("d", "t"), WH("d/x")],
    ],
    "a link to the root, then an opaque marker of it": [
        [F("x"), F("y"), D("b")],
        [S("b", "/"), OPQ("b")],
    ],
    "a link into itself, then a whiteout below it": [
        [D("d"), F("d/x")],
        [S("d", "d/c"), WH("d/x")],
    ],
    "a hardlink to a link, then a whiteout below it": [
        [D("t"), F("t/x"), S("s", "t")],
        [H("d", "s"), WH("d/x")],
    ],
    # A set-group-ID directory gives a directory made in it its group and bit; one a layer
    # implies is 0755 and the caller's all the same, as squash writes it.
    "a directory implied under a set-group-ID directory": [
        [D("s", mode=0o2775, gid=1234), F("s/f")],
        [F("s/new/deeper/x")],
    ],
}


def unpacked_squashes(tmp_path: Path, image: str, layers: list[list[Entry]]) -> dict[str, Path]:
    """``image`` loaded from ``layers``, squashed whole (``REPO:all``) and its top layer alone
    (``REPO:top``): each of the three unpacked, by name."""
    load_layers(tmp_path, image, [layer_tar(layer) for layer in layers])
    repo = image.partition(":")[0]
    layerdiff.squash(image, f"{repo}:all")
    layerdiff.squash(image, f"{repo}:top", layers=1)
    trees = {}
    for name in (image, f"{repo}:all", f"{repo}:top"):
        trees[name] = tmp_path / name.replace(":", "-").replace("/", "-")
        layerdiff.unpack(name, trees[name])
    return trees


@pytest.mark.parametrize("name", list(CASES))
def test_squash_gives_what_the_layers_applied_in_order_give(tmp_path: Path, name: str) -> None:
    layers = CASES[name]
    load_layers(tmp_path, "case/x:1", [layer_tar(layer) for layer in layers])
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
    load_layers(
        tmp_path, "case/umask:1", [layer_tar([F("a/b/c", b"1")]), layer_tar([F("x/y", b"2")])]
    )
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


def test_an_opaque_marker_read_first_keeps_the_entries_below_it_off_what_it_hides(
    tmp_path: Path,
) -> None:
    """`x/.wh..wh..opq` then `x/l/passwd`, over a lower `x/l -> /etc`: `x/l` is a new
    directory, and /etc/passwd is left as it was (as umoci reads it)."""
    base = [D("etc"), F("etc/passwd", b"root"), D("x"), S("x/l", "/etc")]
    top = [OPQ("x"), F("x/l/passwd", b"n")]
    load_layers(tmp_path, "opq/x:1", [layer_tar(base), layer_tar(top)])
    layerdiff.squash("opq/x:1", "opq/x:all")
    for image in ("opq/x:1", "opq/x:all"):
        out = tmp_path / image.replace(":", "-").replace("/", "-")
        layerdiff.unpack(image, out)
        assert (out / "etc" / "passwd").read_bytes() == b"root", image
        assert (out / "x" / "l" / "passwd").read_bytes() == b"n", image


def test_a_whiteout_read_first_keeps_the_entries_below_it_off_what_it_hides(
    tmp_path: Path,
) -> None:
    """`.wh.l` then `l/passwd`, over a lower `l -> /etc`: unpack and squash make `l` a
    directory holding the new file, and leave /etc/passwd as it was (as umoci does)."""
    base = [D("etc"), F("etc/passwd", b"root"), S("l", "/etc")]
    top = [WH("l"), F("l/passwd", b"n")]
    for image, out in unpacked_squashes(tmp_path, "wh/x:1", [base, top]).items():
        assert (out / "etc" / "passwd").read_bytes() == b"root", image
        assert (out / "l").is_dir() and not (out / "l").is_symlink(), image
        assert (out / "l" / "passwd").read_bytes() == b"n", image


def test_a_partial_squash_into_another_layout_takes_the_layers_it_keeps(tmp_path: Path) -> None:
    """`squash --layers 1` into another layout copies the layers below the squashed one there
    too: the new image is whole where it is, and unpacks as the source does."""
    load_layers(tmp_path, "part/x:1", [layer_tar([F("a", b"1")]), layer_tar([F("b", b"2")])])
    target = f"oci:{tmp_path / 'out'}:flat"
    layerdiff.squash("part/x:1", target, layers=1)
    assert layerdiff.fsck(f"oci:{tmp_path / 'out'}").ok
    source = layerdiff.inspect("part/x:1")["manifest"]["layers"]
    made = layerdiff.inspect(target)["manifest"]["layers"]
    assert len(made) == 2 and made[0] == source[0]
    layerdiff.unpack("part/x:1", tmp_path / "from-source")
    layerdiff.unpack(target, tmp_path / "from-squash")
    assert differences(tmp_path / "from-source", tmp_path / "from-squash") == []


@pytest.mark.parametrize("marker", [WH("d/x"), OPQ("d")])
def test_a_marker_below_a_path_the_layer_then_makes_a_link_hides_nothing_through_it(
    tmp_path: Path, marker: Entry
) -> None:
    """`d/.wh.x` (or `d/.wh..wh..opq`) then `d -> t`, with nothing at `d` below: the marker
    hides what lay below the layer at `d`, which is nothing; `t/x` stays (as umoci and docker,
    applying in order, leave it), in unpack, squash and the overlay form."""
    base = [D("t"), F("t/x", b"kept")]
    for image, out in unpacked_squashes(
        tmp_path, "link/x:1", [base, [marker, S("d", "t")]]
    ).items():
        assert (out / "t" / "x").read_bytes() == b"kept", image
        assert os.readlink(out / "d") == "t", image


def test_a_marker_below_what_its_layer_then_replaces_by_a_file_hides_nothing(
    tmp_path: Path,
) -> None:
    """`b -> /`, `b/.wh..wh..opq`, then a file `b`: the file replaces the link, and the
    marker below it has nothing left to hide; the lower root keeps its files."""
    base = [F("x", b"1"), F("y", b"2"), D("b")]
    top = [S("b", "/"), OPQ("b"), F("b", b"f")]
    for image, out in unpacked_squashes(tmp_path, "root/x:1", [base, top]).items():
        assert sorted(p.name for p in out.iterdir()) == ["b", "x", "y"], image
        assert (out / "b").read_bytes() == b"f", image


@pytest.mark.parametrize(
    "top",
    [[S("d", "t"), WH("d/x")], [S("d", "t"), OPQ("d")], [S("d", "t"), WH("d/x"), D("d")]],
)
def test_a_marker_read_below_what_its_layer_made_a_link_hides_nothing(
    tmp_path: Path, top: list[Entry]
) -> None:
    """`d -> t`, then `d/.wh.x` (or `d/.wh..wh..opq`): whatever lay at `d` below the layer went
    with the link, so the marker has nothing left to hide, and `t/x` stays."""
    base = [D("t"), F("t/x", b"kept")]
    for image, out in unpacked_squashes(tmp_path, "after/x:1", [base, top]).items():
        assert (out / "t" / "x").read_bytes() == b"kept", image
