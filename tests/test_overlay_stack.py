"""Layers applied one by one in overlay form, each over the ones below (`apply --overlay
--lower`, as the layer cache keeps them for `run`), mount as the tree that applying them in
order onto one directory gives: on the hand-made corner cases of squash, on cases where a
layer reaches into an earlier one (through its symbolic links, to its files by hardlink), and
on random stacks. Real overlayfs mounts; every test needs root."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerdiff
from tests.overlays import lowers_mounted
from tests.stacks import OPQ, WH, D, Entry, F, H, S, layer_tar
from tests.test_squash_cases import CASES as SQUASH_CASES
from tests.treecmp import differences

pytestmark = pytest.mark.root

CASES: dict[str, list[list[Entry]]] = {
    # A layer made by tar over a base whose /lib is a link into /usr (merged /usr): its
    # files go where the link leads, and the link stays.
    "entry through a lower symlink": [
        [D("usr", mode=0o750), D("usr/lib", mode=0o711), F("usr/lib/a", b"a"), S("lib", "usr/lib")],
        [F("lib/b", b"b")],
    ],
    "entry through a lower absolute symlink, two layers down": [
        [D("usr"), D("usr/lib"), F("usr/lib/a", b"a")],
        [S("lib", "/usr/lib")],
        [F("lib/sub/c", b"c")],
    ],
    "entry through a chain of lower links": [
        [D("real"), F("real/x"), S("l1", "l2")],
        [S("l2", "real")],
        [F("l1/y", b"y")],
    ],
    "entry through a lower link stepping back out of a missing directory": [
        [D("usr", mode=0o750), D("usr/lib", mode=0o711), S("l", "nothing/../usr/lib")],
        [F("l/x")],
    ],
    "entry through a lower link stepping back out of a missing directory to a link": [
        [D("usr"), D("usr/lib"), S("lib2", "usr/lib"), S("l", "nothing/../lib2")],
        [F("l/x")],
    ],
    "entry through a lower link to nothing": [
        [S("lib", "usr/lib")],
        [F("lib/b", b"b")],
    ],
    "directory entry through a lower symlink keeps the link": [
        [D("usr"), D("usr/lib"), F("usr/lib/a"), S("lib", "usr/lib")],
        [D("lib/new", mode=0o700), F("lib/new/f")],
    ],
    "a lower directory above an entry keeps its mode, owner and xattrs": [
        [D("home", mode=0o755), D("home/u", mode=0o700, xattrs={"user.k": "v"}), F("home/u/a")],
        [F("home/u/b", b"b")],
    ],
    "a directory made below a lower setgid directory takes its group": [
        [D("d", mode=0o2775, gid=50)],
        [F("d/sub/x")],
    ],
    "a copied-up directory the layer removes and makes again": [
        [D("d"), D("d/s", mode=0o711), F("d/s/a")],
        [F("d/s/x"), F("d", b"f"), D("d"), F("d/s/y")],
    ],
    "opaque marker of what the layer made a file": [
        [D("a"), F("a/x")],
        [F("a"), OPQ("a")],
    ],
    "hardlink to a lower file": [
        [D("bin"), F("bin/busybox", b"bb", mode=0o755)],
        [H("bin/sh", "bin/busybox")],
    ],
    "hardlink to a lower file through a lower link": [
        [D("usr"), D("usr/bin"), F("usr/bin/tool", b"t"), S("bin", "usr/bin")],
        [H("tool2", "bin/tool")],
    ],
    "hardlink to a lower file, then a whiteout of the target": [
        [F("a", b"1")],
        [H("b", "a"), WH("a")],
    ],
    "hardlink to a lower symlink": [
        [D("d"), S("s", "d")],
        [H("h", "s")],
    ],
    "whiteout through a lower symlink": [
        [D("usr"), D("usr/lib"), F("usr/lib/a"), F("usr/lib/b"), S("lib", "usr/lib")],
        [WH("lib/a")],
    ],
    "whiteout through a lower link to nothing": [
        [S("lib", "usr/lib"), F("keep")],
        [WH("lib/a")],
    ],
    "whiteout of something nowhere below": [
        [D("d"), F("d/x")],
        [WH("d/none"), WH("gone/x")],
    ],
    "opaque marker through a lower symlink": [
        [D("usr"), D("usr/lib"), F("usr/lib/a"), S("lib", "usr/lib")],
        [OPQ("lib"), F("lib/b")],
    ],
    "opaque marker of a lower directory the layer has no entry for": [
        [D("d", mode=0o710), F("d/x")],
        [OPQ("d")],
    ],
    "opaque marker of a directory nowhere below": [
        [F("f")],
        [OPQ("nothing")],
    ],
    "entry below an opaque lower directory does not see what it hides": [
        [D("d"), D("d/sub", mode=0o700), F("d/sub/x")],
        [D("d"), OPQ("d"), F("d/y")],
        [F("d/sub/z")],
    ],
    "entry below a lower whiteout": [
        [D("d", mode=0o700), F("d/x")],
        [WH("d")],
        [F("d/y")],
    ],
    "entry through a link a later layer replaced with a directory": [
        [D("t"), F("t/x"), S("l", "t")],
        [D("l", mode=0o700)],
        [F("l/y")],
    ],
}

ALL_CASES = {**SQUASH_CASES, **CASES}


def _blobs(tmp: Path, layers: list[list[Entry]]) -> list[Path]:
    paths = []
    for i, entries in enumerate(layers):
        path = tmp / f"layer{i}.tar"
        path.write_bytes(layer_tar(entries))
        paths.append(path)
    return paths


def _in_order(tmp: Path, blobs: list[Path]) -> Path | Exception:
    """The layers applied in order onto one directory, or apply's error."""
    target = tmp / "applied"
    try:
        layerdiff.apply(target, blobs)
    except layerdiff.LayerdiffError as e:
        return e
    return target


def _stacked(tmp: Path, blobs: list[Path]) -> list[Path] | Exception:
    """Each layer applied in overlay form over the ones below; their directories, bottom
    first, or the error of the first that failed."""
    dirs: list[Path] = []
    for i, blob in enumerate(blobs):
        d = tmp / f"stack{i}"
        try:
            layerdiff.apply(d, [blob], overlay=True, lowers=dirs[::-1])
        except layerdiff.LayerdiffError as e:
            return e
        dirs.append(d)
    return dirs


def _check(tmp: Path, layers: list[list[Entry]]) -> None:
    blobs = _blobs(tmp, layers)
    expected, stacked = _in_order(tmp, blobs), _stacked(tmp, blobs)
    if isinstance(expected, Exception) or isinstance(stacked, Exception):
        assert isinstance(expected, Exception) and isinstance(stacked, Exception), (
            f"applied in order: {expected}; stacked: {stacked}"
        )
        return
    with lowers_mounted(stacked[::-1], tmp / "merged") as merged:
        assert differences(expected, merged) == []


@pytest.mark.parametrize("name", list(ALL_CASES))
def test_stacked_overlay_layers_mount_as_the_layers_applied_in_order(
    tmp_path: Path, name: str
) -> None:
    _check(tmp_path, ALL_CASES[name])


def test_a_directory_only_copied_up_keeps_its_mtime(tmp_path: Path) -> None:
    """Copying `a/b` up to write `a/b/g` is no change to `a`, as with overlayfs' own copy-up:
    in the mount `a` keeps the mtime applying in order gives it (the layer's own time). `b`,
    which the layer wrote into, has the time of that write in both."""
    blobs = _blobs(tmp_path, [[D("a"), D("a/b"), F("a/b/f")], [F("a/b/g", b"g")]])
    expected, stacked = _in_order(tmp_path, blobs), _stacked(tmp_path, blobs)
    assert isinstance(expected, Path) and isinstance(stacked, list)
    with lowers_mounted(stacked[::-1], tmp_path / "merged") as merged:
        assert (merged / "a").stat().st_mtime_ns == (expected / "a").stat().st_mtime_ns
        assert (merged / "a").stat().st_mtime_ns != (merged / "a" / "b").stat().st_mtime_ns


def test_without_lowers_an_entry_through_an_earlier_link_hides_it(tmp_path: Path) -> None:
    """The reason for ``lowers``: a layer applied by itself (docker's overlay2 form) turns an
    earlier layer's /lib link into a directory holding only the new file."""
    blobs = _blobs(tmp_path, CASES["entry through a lower symlink"])
    dirs = [tmp_path / "l0", tmp_path / "l1"]
    for d, blob in zip(dirs, blobs, strict=True):
        layerdiff.apply(d, [blob], overlay=True)
    with lowers_mounted(dirs[::-1], tmp_path / "merged") as merged:
        assert (merged / "lib").is_dir() and not (merged / "lib").is_symlink()
        assert sorted(os.listdir(merged / "lib")) == ["b"]


def test_later_blobs_of_one_overlay_apply_write_below_an_earlier_ones_whiteout(
    tmp_path: Path,
) -> None:
    """Several blobs applied in overlay form into one directory: an entry below a path an
    earlier blob whited out makes an opaque directory in the whiteout's place."""
    layers = [[D("x"), F("x/a")], [WH("x")], [F("x/b")]]
    blobs = _blobs(tmp_path, layers)
    expected = _in_order(tmp_path, blobs)
    assert isinstance(expected, Path)
    base, top = tmp_path / "base", tmp_path / "top"
    layerdiff.apply(base, blobs[0], overlay=True, lowers=[])
    layerdiff.apply(top, blobs[1:], overlay=True, lowers=[base])
    with lowers_mounted([top, base], tmp_path / "merged") as merged:
        assert differences(expected, merged) == []


def test_hardlink_groups_of_a_wide_lower_layer_under_a_low_open_file_limit(
    tmp_path: Path,
) -> None:
    """Copying up a hardlinked file reads its layer's link groups one directory at a time:
    a lower layer with more directories side by side than the open-file limit is fine."""
    wide = [D("m"), *(D(f"m/d{i}") for i in range(300)), F("f", b"1"), H("g", "f")]
    blobs = _blobs(tmp_path, [wide, [H("h", "f")]])
    base = tmp_path / "base"
    layerdiff.apply(base, blobs[0], overlay=True, lowers=[])
    script = (
        "import resource, sys, layerdiff\n"
        "hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]\n"
        "resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))\n"
        "layerdiff.apply(sys.argv[1], sys.argv[2], overlay=True, lowers=[sys.argv[3]])\n"
    )
    top = tmp_path / "top"
    done = subprocess.run(
        [sys.executable, "-c", script, str(top), str(blobs[1]), str(base)],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert os.path.samefile(top / "f", top / "g") and os.path.samefile(top / "f", top / "h")


def test_without_lowers_an_opaque_marker_of_what_the_layer_made_a_file(tmp_path: Path) -> None:
    """The file hides whatever lies below it anyway: nothing to mark, as a plain apply has
    nothing to clear."""
    [blob] = _blobs(tmp_path, [[F("a"), OPQ("a")]])
    layerdiff.apply(tmp_path / "d", blob, overlay=True)
    assert (tmp_path / "d" / "a").read_bytes() == b"x"  # F's default content


def test_cli_apply_overlay_with_lowers(tmp_path: Path) -> None:
    blobs = _blobs(tmp_path, CASES["entry through a lower symlink"])
    l0, l1 = tmp_path / "l0", tmp_path / "l1"
    ld = [sys.executable, "-m", "layerdiff", "apply", "--overlay", "--progress", "none"]
    subprocess.run([*ld, "--to", str(l0), str(blobs[0])], check=True)
    subprocess.run([*ld, "--to", str(l1), "--lower", str(l0), str(blobs[1])], check=True)
    # The new file went where the link leads, the directories on the way copied up with
    # their modes; the link itself stays below, as overlayfs leaves a link it goes through.
    assert not os.path.lexists(l1 / "lib")
    assert (l1 / "usr/lib/b").read_bytes() == b"b"
    assert oct((l1 / "usr/lib").stat().st_mode & 0o7777) == "0o711"
    assert oct((l1 / "usr").stat().st_mode & 0o7777) == "0o750"
    with lowers_mounted([l1, l0], tmp_path / "merged") as merged:
        assert sorted(os.listdir(merged / "lib")) == ["a", "b"]
    # --lower needs --overlay; a lower that is no directory is refused.
    out = subprocess.run(
        [*ld[:4], "--to", str(tmp_path / "x"), "--lower", str(l0), str(blobs[1])],
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0 and "overlay" in out.stderr
    with pytest.raises(layerdiff.LayerdiffError, match="not a directory"):
        layerdiff.apply(tmp_path / "y", blobs[1], overlay=True, lowers=[blobs[0]])


# Random stacks over a small namespace, so that layers meet: entries, links and whiteouts of
# one layer land on, in and through those of the layers below.
_NAMES = ["a", "b", "a/c", "b/c", "a/c/d", "a/c/e", "l", "l/c", "l/c/d", "m", "m/e"]
_TARGETS = ["a", "b", "a/c", "a/c/d", "../a", "/b", "/l/c", "l", "nowhere", "m"]


def _entry(kind: str, name: str, target: str, mode: int) -> Entry:
    if kind == "F":
        return F(name, name.encode(), mode=mode)
    if kind == "D":
        return D(name, mode=mode | 0o700)
    if kind == "S":
        return S(name, target)
    if kind == "H":
        return H(name, target.lstrip("/").removeprefix("../"))
    if kind == "WH":
        return WH(name)
    return OPQ(name)


_entries = st.builds(
    _entry,
    st.sampled_from(["F", "D", "S", "H", "WH", "OPQ"]),
    st.sampled_from(_NAMES),
    st.sampled_from(_TARGETS),
    st.sampled_from([0o644, 0o600, 0o755, 0o4755]),
)


@settings(
    max_examples=200,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
@given(layers=st.lists(st.lists(_entries, min_size=1, max_size=6), min_size=2, max_size=4))
def test_random_stacks_mount_as_the_layers_applied_in_order(layers: list[list[Entry]]) -> None:
    with tempfile.TemporaryDirectory(prefix="layerdiff-stack-") as tmp:
        _check(Path(tmp), layers)
