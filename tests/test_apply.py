"""apply, unpack and squash through the real command line and API, against peer tools.

Interop: layers written by GNU tar (plain, pigz multi-member gzip, zstd) and Python's tarfile
apply correctly; our unpack gives the same tree as ``umoci unpack`` of the same image. Safety:
a flipped byte in a blob is refused and the target stays marked incomplete; hostile archives
leave the files beside the target untouched to the nanosecond.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
from pathlib import Path

import pytest

import layerdiff
from layerdiff.layout import Layout
from tests import peers
from tests.conftest import run_cli
from tests.test_integration import change_rootfs, make_rootfs, umoci_unpack
from tests.treecmp import assert_same_tree, snapshot


@pytest.fixture
def image(tmp_path: Path) -> tuple[str, Path]:
    """A two-layer image in an OCI layout, and the tree its top layer leaves."""
    lower = make_rootfs(tmp_path / "lower")
    upper = tmp_path / "upper"
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    change_rootfs(upper)
    layout = tmp_path / "layout"
    layerdiff.commit(lower, image=f"oci:{layout}:base")
    layerdiff.commit(upper, image=f"oci:{layout}:top", lower=lower, base=f"oci:{layout}:base")
    return f"oci:{layout}:top", upper


def test_unpack_gives_the_image_tree(image: tuple[str, Path], tmp_path: Path) -> None:
    ref, upper = image
    proc = run_cli("unpack", ref, str(tmp_path / "out"), "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["layers"] == 2 and result["entries"] > 5
    assert result["manifest"] == result["manifest_digest"] == layerdiff.inspect(ref)["digest"]
    assert_same_tree(upper, tmp_path / "out")
    assert not layerdiff.incomplete_marker(tmp_path / "out").exists()


@pytest.mark.root
def test_unpack_matches_umoci_unpack(image: tuple[str, Path], tmp_path: Path) -> None:
    ref, _ = image
    layerdiff.unpack(ref, tmp_path / "ours")
    theirs = umoci_unpack(ref.removeprefix("oci:"), tmp_path / "bundle")
    assert_same_tree(theirs, tmp_path / "ours")


def test_unpack_refuses_a_corrupt_blob(image: tuple[str, Path], tmp_path: Path) -> None:
    ref, _ = image
    layout = Layout.open(ref.split(":")[1])
    top = layerdiff.inspect(ref)["manifest"]["layers"][-1]["digest"]
    blob = layout.blob_path(top)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    target = tmp_path / "out"
    proc = run_cli("unpack", ref, str(target))
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and "error:" in proc.stderr
    n = len(layerdiff.inspect(ref)["manifest"]["layers"])
    assert f"layer {n} of {n} ({top})" in proc.stderr  # which blob is bad
    assert layerdiff.incomplete_marker(target).exists()
    # Unpacking again into what is left says why it is refused.
    proc = run_cli("unpack", ref, str(target))
    assert proc.returncode == 1 and layerdiff.incomplete_marker(target).name in proc.stderr


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_apply_reads_a_layer_to_its_end_and_refuses_one_damaged_after_its_archive(
    tmp_path: Path, compression: str
) -> None:
    """The archive ends before the stream: a damaged gzip CRC or zstd checksum at the end is
    found, as docker and containerd find it, and named."""
    tree = make_rootfs(tmp_path / "tree")
    info = layerdiff.write_layer(tree, dest=tmp_path / "blobs", compression=compression)
    assert info.path is not None
    damaged = tmp_path / "damaged"
    data = bytearray(info.path.read_bytes())
    data[-2 if compression == "zstd" else -6] ^= 0x01  # the checksum; the CRC
    damaged.write_bytes(bytes(data))
    (tmp_path / "ok").mkdir()
    assert run_cli("apply", "--to", str(tmp_path / "ok"), str(info.path)).returncode == 0
    (tmp_path / "out").mkdir()
    done = run_cli("apply", "--to", str(tmp_path / "out"), str(damaged))
    assert done.returncode == 1
    assert done.stderr.startswith(f"layerdiff: error: layer {damaged}: ")
    assert "checksum" in done.stderr and len(done.stderr.splitlines()) == 1


def test_unpack_names_the_layer_whose_blob_is_longer_than_its_descriptor(tmp_path: Path) -> None:
    first = _tar([(_entry("a"), b"a")])
    ref = _image_of(tmp_path / "img", [first, _tar([(_entry("b"), b"b" * 5000)])])
    layout = Layout.open(tmp_path / "img")
    image = layerdiff.inspect(ref)
    manifest = dict(image["manifest"])
    top = manifest["layers"][1]["digest"]
    manifest["layers"] = [manifest["layers"][0], {**manifest["layers"][1], "size": 1024}]
    from layerdiff.image import MANIFEST_MEDIA_TYPE, canonical_json

    layout.set_tag("v1", layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE))
    proc = run_cli("unpack", ref, str(tmp_path / "out"))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert f"layer 2 of 2 ({top})" in proc.stderr, proc.stderr
    size = layout.blob_path(top).stat().st_size
    assert f"expected 1024 bytes, found {size} bytes" in proc.stderr
    assert not (tmp_path / "out" / "b").exists()  # refused before a byte of it was applied


@pytest.mark.parametrize("target", [".wh.etc", ".wh..wh..opq"])
def test_a_link_never_makes_a_directory_named_like_a_whiteout(tmp_path: Path, target: str) -> None:
    """``s -> .wh.etc`` then ``s/x``: apply would make a directory ``.wh.etc``, which squash
    would write as an entry that docker, containerd and umoci read as the whiteout of ``/etc``.
    Both refuse the layer, naming the rule."""
    base = _tar([(_entry("etc", tarfile.DIRTYPE), b""), (_entry("etc/passwd"), b"root")])
    top = _tar([(_entry("s", tarfile.SYMTYPE, target), b""), (_entry("s/x"), b"x")])
    ref = _image_of(tmp_path / "img", [base, top])
    for args in (["unpack", ref, str(tmp_path / "out")], ["squash", ref, f"oci:{tmp_path}/sq:1"]):
        done = run_cli(*args)
        assert done.returncode == 1, done.stderr
        assert "a whiteout name (.wh.) is used as a directory" in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1


def _dir_mode(name: str, mode: int) -> tarfile.TarInfo:
    info = _entry(name, tarfile.DIRTYPE)
    info.mode = mode
    return info


def test_a_directorys_mode_never_goes_through_a_link_put_later_on_a_very_long_path(
    tmp_path: Path,
) -> None:
    """``p/d`` (mode 6777), then ``p`` made a link to ``q``: the mode is for the ``d`` that
    went with ``p``, never for ``q/d``, also where the path is longer than the kernel can name
    (PATH_MAX), so that where the directory really is cannot be read back."""
    comps = [f"c{i:02d}" + "x" * 246 for i in range(17)]
    short = "x/" + "/".join(comps[:16])
    last = comps[16]
    lower = _tar(
        [
            (_entry("s", tarfile.SYMTYPE, short), b""),
            (_dir(f"s/{last}"), b""),
            (_dir(f"s/{last}/p"), b""),
            (_dir(f"s/{last}/q"), b""),
            (_dir(f"s/{last}/q/d"), b""),
        ],
        tarfile.PAX_FORMAT,
    )
    upper = _tar(
        [
            (_dir_mode(f"s/{last}/p/d", 0o6777), b""),
            (_entry(f"s/{last}/p", tarfile.SYMTYPE, "q"), b""),
        ],
        tarfile.PAX_FORMAT,
    )
    (tmp_path / "l1.tar").write_bytes(lower)
    (tmp_path / "l2.tar").write_bytes(upper)
    root = tmp_path / "root"
    done = run_cli("apply", "--to", str(root), str(tmp_path / "l1.tar"), str(tmp_path / "l2.tar"))
    assert done.returncode == 0, done.stderr
    fd = os.open(root / short, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert os.readlink(f"{last}/p", dir_fd=fd) == "q"
        assert stat.S_IMODE(os.stat(f"{last}/q/d", dir_fd=fd).st_mode) == 0o755
    finally:
        os.close(fd)


def test_overlay_form_sees_an_entry_replacing_a_lower_link_on_the_way(tmp_path: Path) -> None:
    """Over a lower ``b/c -> .``, the entry ``b/c/c`` is ``b/c`` itself (the link, replaced by
    a file); ``b/c/a`` then goes through a file, refused as a plain apply refuses it."""
    lower = _tar([(_dir("b"), b""), (_entry("b/c", tarfile.SYMTYPE, "."), b"")])
    upper = _tar([(_entry("b/c/c"), b"file"), (_entry("b/c/a"), b"a")])
    (tmp_path / "l0.tar").write_bytes(lower)
    (tmp_path / "l1.tar").write_bytes(upper)
    plain = run_cli(
        "apply", "--to", str(tmp_path / "p"), str(tmp_path / "l0.tar"), str(tmp_path / "l1.tar")
    )
    assert plain.returncode == 1 and "Not a directory" in plain.stderr, plain.stderr
    base = run_cli("apply", "--overlay", "--to", str(tmp_path / "o0"), str(tmp_path / "l0.tar"))
    assert base.returncode == 0, base.stderr
    over = run_cli(
        "apply", "--overlay", "--to", str(tmp_path / "o1"), "--lower", str(tmp_path / "o0"),
        str(tmp_path / "l1.tar"),
    )  # fmt: skip
    assert over.returncode == 1 and "Not a directory" in over.stderr, over.stderr
    assert not (tmp_path / "o1" / "b" / "a").exists()


def test_a_hardlink_to_what_the_layer_whited_out_is_refused_in_both_forms(tmp_path: Path) -> None:
    """The root's opaque marker, carried out for ``d/x``, hides the lower ``secret``: a
    hardlink to it then has nothing to link to, in the overlay form too (where the whiteout
    is a 0/0 device, which must not be linked in its place)."""
    lower = _tar([(_entry("secret"), b"S")])
    upper = _tar(
        [
            (_entry(".wh..wh..opq"), b""),
            (_entry("d/x"), b"x"),
            (_entry("h", tarfile.LNKTYPE, "secret"), b""),
        ]
    )
    (tmp_path / "l0.tar").write_bytes(lower)
    (tmp_path / "l1.tar").write_bytes(upper)
    layers = [str(tmp_path / "l0.tar"), str(tmp_path / "l1.tar")]
    plain = run_cli("apply", "--to", str(tmp_path / "p"), *layers)
    assert plain.returncode == 1, plain.stderr
    assert "hardlink target secret does not exist" in plain.stderr, plain.stderr
    base = run_cli("apply", "--overlay", "--to", str(tmp_path / "o0"), layers[0])
    assert base.returncode == 0, base.stderr
    over = run_cli(
        "apply", "--overlay", "--to", str(tmp_path / "o1"), "--lower", str(tmp_path / "o0"),
        layers[1],
    )  # fmt: skip
    assert over.returncode == 1, over.stderr
    assert "hardlink target secret does not exist" in over.stderr, over.stderr


@pytest.mark.parametrize("swapped", [0, 1])
def test_squash_refuses_a_blob_swapped_in_the_layout(tmp_path: Path, swapped: int) -> None:
    """A blob whose bytes are not those its digest names (another layer put in its place, of
    the same size) is refused by squash, as unpack refuses it, whether below the squashed range
    or in it; nothing is tagged."""
    layers = [_tar([(_entry("a"), b"a")]), _tar([(_entry("b"), b"b")])]
    ref = _image_of(tmp_path / "img", layers)
    layout = Layout.open(tmp_path / "img")
    digests = [str(d["digest"]) for d in layerdiff.inspect(ref)["manifest"]["layers"]]
    evil = _tar([(_entry("a" if swapped == 0 else "b"), b"x")])
    assert len(evil) == len(layers[swapped])
    layout.blob_path(digests[swapped]).write_bytes(evil)
    done = run_cli("squash", "--layers", "1", ref, f"oci:{tmp_path / 'sq'}:1")
    assert done.returncode == 1, done.stderr
    assert f"digest mismatch (expected {digests[swapped]}" in done.stderr, done.stderr
    assert done.stderr.count("\n") == 1
    # Nothing tagged (what it wrote is gc's to remove).
    if (tmp_path / "sq").exists():
        assert Layout.open(tmp_path / "sq").manifests() == []


def test_a_squash_refused_for_a_swapped_blob_keeps_the_blobs_other_images_use(
    tmp_path: Path,
) -> None:
    """The merged layer of a refused squash may be a blob the layout holds already (the top
    layer alone merges to itself): it stays, and so do the images that use it."""
    layers = [_tar([(_entry("a"), b"a")]), _tar([(_entry("b"), b"b")])]
    ref = _image_of(tmp_path / "img", layers)
    first = run_cli("squash", "--layers", "1", ref, f"oci:{tmp_path / 'img'}:sq1")
    assert first.returncode == 0, first.stderr
    layout = Layout.open(tmp_path / "img")
    lower = layout.blob_path(str(layerdiff.inspect(ref)["manifest"]["layers"][0]["digest"]))
    original = lower.read_bytes()
    lower.write_bytes(_tar([(_entry("a"), b"x")]))
    assert run_cli("squash", "--layers", "1", ref, f"oci:{tmp_path / 'img'}:sq2").returncode == 1
    lower.write_bytes(original)
    assert layerdiff.fsck(f"oci:{tmp_path / 'img'}").ok


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_unpack_and_squash_read_only_blobs_that_are_regular_files(
    tmp_path: Path, kind: str
) -> None:
    """A layout's blob that is a symbolic link (to a file of the caller's, say) or a FIFO is
    refused by unpack and squash: never followed, read, or waited on for ever."""
    ref = _image_of(tmp_path / "img", [_tar([(_entry("a"), b"a")]), _tar([(_entry("b"), b"b")])])
    layout = Layout.open(tmp_path / "img")
    top = layout.blob_path(str(layerdiff.inspect(ref)["manifest"]["layers"][1]["digest"]))
    private = tmp_path / "private.tar"
    private.write_bytes(top.read_bytes())
    top.unlink()
    if kind == "symlink":
        top.symlink_to(private)
    else:
        os.mkfifo(top)
    unpacked = run_cli("unpack", ref, str(tmp_path / "out"))
    assert unpacked.returncode == 1, unpacked.stderr
    assert "a symbolic link, not a blob" in unpacked.stderr or "not a regular file" in (
        unpacked.stderr
    )
    assert not (tmp_path / "out" / "b").exists()
    squashed = run_cli("squash", ref, f"oci:{tmp_path / 'sq'}:1")
    assert squashed.returncode == 1, squashed.stderr
    assert str(top) in squashed.stderr


def _sha256(data: bytes) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(data).hexdigest()


@pytest.mark.parametrize("compress", ["pigz", "zstd"])
def test_unpack_checks_each_layer_tar_against_the_configs_diff_id(
    tmp_path: Path, compress: str
) -> None:
    """The diff_id is the sha256 of the whole uncompressed stream, GNU tar's padding after the
    end of the archive included; a config whose diff_id is another layer's is refused, naming
    the layer, as docker and containerd refuse it."""
    tars = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        (tmp_path / name / name).write_text(name * 100)
        # GNU tar pads the archive to a 10240-byte record.
        tars.append(peers.gnu_tar(tmp_path / name, tmp_path / f"{name}.tar").read_bytes())
    assert all(len(t) % 10240 == 0 for t in tars)
    blobs = [
        subprocess.run([compress, "-c"], input=t, capture_output=True, check=True).stdout
        for t in tars
    ]
    kind = "gzip" if compress == "pigz" else "zstd"
    media_type = f"application/vnd.oci.image.layer.v1.tar+{kind}"
    good = _image_of(tmp_path / "good", blobs, media_type, [_sha256(t) for t in tars])
    done = run_cli("unpack", good, str(tmp_path / "ok"))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "ok" / "b").read_text() == "b" * 100

    # The archive without its padding: every entry the same, the stream not.
    with tarfile.open(fileobj=io.BytesIO(tars[1])) as tf:
        last = tf.getmembers()[-1]
    end = last.offset_data + -(-last.size // 512) * 512 + 1024
    assert end < len(tars[1])
    wrong = [_sha256(tars[0]), _sha256(tars[1][:end])]
    for name, diff_ids, layer in [
        ("swapped", [_sha256(tars[1]), _sha256(tars[0])], 1),
        ("unpadded", wrong, 2),
    ]:
        ref = _image_of(tmp_path / name, blobs, media_type, diff_ids)
        target = tmp_path / f"out-{name}"
        done = run_cli("unpack", ref, str(target))
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"layer {layer} of 2 (" in done.stderr, done.stderr
        assert "uncompressed (config diff_id): digest mismatch" in done.stderr
        assert f"expected {diff_ids[layer - 1]}" in done.stderr
        assert f"found {_sha256(tars[layer - 1])}" in done.stderr
        assert layerdiff.incomplete_marker(target).exists()
        with pytest.raises(layerdiff.DigestMismatchError):
            layerdiff.unpack(ref, tmp_path / f"api-{name}")


def test_unpack_refuses_a_non_empty_target(image: tuple[str, Path], tmp_path: Path) -> None:
    ref, _ = image
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep").write_text("mine")
    proc = run_cli("unpack", ref, str(tmp_path / "full"))
    assert proc.returncode == 1 and "not an empty directory" in proc.stderr
    assert (tmp_path / "full" / "keep").read_text() == "mine"


@pytest.mark.parametrize("compress", [None, "pigz", "multigzip", "zstd"])
def test_layers_by_gnu_tar_apply(tmp_path: Path, compress: str | None) -> None:
    src = make_rootfs(tmp_path / "src")
    layer = peers.gnu_tar(src, tmp_path / "layer", compress=compress)
    if compress == "multigzip":
        assert layer.read_bytes().count(b"\x1f\x8b\x08") > 1, "expected several gzip members"
    proc = run_cli("apply", "--to", str(tmp_path / "out"), str(layer))
    assert proc.returncode == 0, proc.stderr
    assert_same_tree(src, tmp_path / "out", mtimes=False)


def test_layers_by_python_tarfile_apply(tmp_path: Path) -> None:
    src = make_rootfs(tmp_path / "src")
    os.removexattr(src / "etc" / "os-release", "user.note")  # tarfile writes no xattrs
    (tmp_path / "layer.tar").write_bytes(peers.tar_tree(src))
    layerdiff.apply(tmp_path / "out", [tmp_path / "layer.tar"])
    # tarfile keeps whole seconds only.
    assert_same_tree(src, tmp_path / "out", mtimes=False)
    # One blob may be given by itself, as a str or a path.
    for one in (str(tmp_path / "layer.tar"), tmp_path / "layer.tar"):
        result = layerdiff.apply(tmp_path / "again", one)
        assert result.layers == 1
        assert_same_tree(src, tmp_path / "again", mtimes=False)


def _tar(members: list[tuple[tarfile.TarInfo, bytes]], fmt: int = tarfile.GNU_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            info.size = len(data) if info.isreg() else 0
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    info.mode = 0o777
    return info


HOSTILE = {
    "dot-dot": [(_entry("../outside/victim"), b"pwned")],
    "absolute": [(_entry("/outside/victim"), b"pwned")],
    "symlink then write": [
        (_entry("l", tarfile.SYMTYPE, "../outside"), b""),
        (_entry("l/victim"), b"pwned"),
    ],
    "absolute symlink chain": [
        (_entry("a", tarfile.SYMTYPE, "/b"), b""),
        (_entry("b", tarfile.SYMTYPE, "/../../outside"), b""),
        (_entry("a/victim"), b"pwned"),
    ],
    "hardlink out": [(_entry("h", tarfile.LNKTYPE, "../outside/victim"), b"")],
    "chmod through link": [
        (_entry("v", tarfile.SYMTYPE, "../outside/victim"), b""),
        (_entry("v", tarfile.DIRTYPE), b""),
    ],
    "long name": [(_entry("x/" * 2100 + "f"), b"deep")],
    "whiteout through link": [
        (_entry("l", tarfile.SYMTYPE, "../outside"), b""),
        (_entry("l/.wh.victim"), b""),
    ],
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_layers_touch_nothing_outside(tmp_path: Path, case: str) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "victim").write_text("keep")
    os.utime(outside / "victim", ns=(1_500_000_000_111_111_111, 1_500_000_000_111_111_111))
    before = snapshot(outside)
    before_stat = os.stat(outside / "victim")
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_tar(HOSTILE[case]))
    proc = run_cli("apply", "--to", str(tmp_path / "root"), str(layer))
    assert proc.returncode in (0, 1), proc.stderr
    assert "Traceback" not in proc.stderr and proc.stderr.count("\n") <= 1
    assert snapshot(outside) == before
    after_stat = os.stat(outside / "victim")
    assert (after_stat.st_mtime_ns, after_stat.st_mode, after_stat.st_uid) == (
        before_stat.st_mtime_ns,
        before_stat.st_mode,
        before_stat.st_uid,
    )
    # Nothing beside the target: a failed apply removes the directory it made, if empty.
    assert {p.name for p in tmp_path.iterdir()} - {"root"} == {"layer.tar", "outside"}


@pytest.mark.parametrize(
    "blob", [b"", b"garbage" * 100, b"\x1f\x8b\x08\x00broken", b"(\xb5/\xfdxx"]
)
def test_bad_streams_are_one_line_errors(tmp_path: Path, blob: bytes) -> None:
    good = tmp_path / "good"
    good.write_bytes(_tar([(_entry("f"), b"x")]))
    layer = tmp_path / "layer"
    layer.write_bytes(blob)
    proc = run_cli("apply", "--to", str(tmp_path / "out"), str(good), str(layer))
    if blob == b"":
        assert proc.returncode == 0  # an empty stream is an empty layer
        return
    assert proc.returncode == 1
    assert proc.stderr.startswith("layerdiff: error:") and proc.stderr.count("\n") == 1
    assert f"layer {layer}: " in proc.stderr  # of the two, the bad one


def test_a_warning_is_one_line_whatever_the_entry_name_holds(tmp_path: Path) -> None:
    layer = tmp_path / "layer.tar"
    layer.write_bytes(_tar([(_entry(".wh..wh.aufs\nlayerdiff: error: forged"), b"")]))
    proc = run_cli("apply", "--to", str(tmp_path / "out"), str(layer))
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert proc.stderr.startswith("layerdiff: warning:") and "forged" in proc.stderr


def test_max_size_stops_a_bomb(tmp_path: Path) -> None:
    data = _tar([(_entry("zeros"), bytes(4 << 20))])
    layer = tmp_path / "bomb.tar.zst"
    layer.write_bytes(subprocess.run(["zstd", "-19", "-c"], input=data, capture_output=True).stdout)
    assert layer.stat().st_size < 10_000
    proc = run_cli("apply", "--max-size", "1000000", "--to", str(tmp_path / "out"), str(layer))
    assert proc.returncode == 1 and "limit" in proc.stderr
    # Sizes as docker writes them: the layer holds 4 MiB and a little more.
    for size, code in (("4m", 1), ("5M", 0), ("1g", 0), ("4.5m", 0), ("4.0m", 1)):
        proc = run_cli("apply", "--max-size", size, "--to", str(tmp_path / size), str(layer))
        assert proc.returncode == code, (size, proc.stderr)
    for bad in ("0", "1x", "-5", str(2**64)):
        proc = run_cli("apply", "--max-size", bad, "--to", str(tmp_path / "bad"), str(layer))
        assert proc.returncode == 2 and "'--max-size'" in proc.stderr, (bad, proc.stderr)


def test_apply_usage_errors_name_what_is_missing(tmp_path: Path) -> None:
    """`apply DIR LAYER` (the target without --to), a directory as a layer, and --lower
    without --overlay are usage errors saying so."""
    layer = tmp_path / "l.tar"
    layer.write_bytes(_tar([(_entry("f"), b"x")]))
    (tmp_path / "out").mkdir()
    proc = run_cli("apply", str(tmp_path / "out"), str(layer))
    assert proc.returncode == 2 and f"give it as --to {tmp_path / 'out'}" in proc.stderr, proc
    proc = run_cli("apply", "--to", str(tmp_path / "out"), str(tmp_path))
    assert proc.returncode == 2 and "is a directory: a layer is a tar file" in proc.stderr, proc
    proc = run_cli("apply", "--to", str(tmp_path / "out"), "--lower", str(tmp_path), str(layer))
    assert proc.returncode == 2 and "--lower goes with --overlay" in proc.stderr, proc
    assert not (tmp_path / "out" / "f").exists()


@pytest.mark.root
def test_apply_overlay_form_serves_as_lower_dir(tmp_path: Path) -> None:
    """Layers applied in overlay form, mounted as overlay lowers, show the image's tree."""
    lower = make_rootfs(tmp_path / "lower")
    upper = tmp_path / "upper"
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    change_rootfs(upper)
    blobs = tmp_path / "blobs"
    l1 = layerdiff.write_layer(lower, dest=blobs)
    l2 = layerdiff.write_layer(upper, dest=blobs, lower=lower)
    layerdiff.apply(tmp_path / "d1", [l1.path], overlay=True)
    layerdiff.apply(tmp_path / "d2", [l2.path], overlay=True)
    merged = tmp_path / "merged"
    merged.mkdir()
    opts = f"lowerdir={tmp_path / 'd2'}:{tmp_path / 'd1'}"
    subprocess.run(["mount", "-t", "overlay", "overlay", "-o", opts, str(merged)], check=True)
    try:
        assert_same_tree(upper, merged)
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_squash_cli(image: tuple[str, Path], tmp_path: Path) -> None:
    ref, upper = image
    new = ref.rsplit(":", 1)[0] + ":squashed"
    proc = run_cli("squash", ref, new, "--json", "-m", "one layer")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["squashed"] == 2
    info = layerdiff.inspect(new)
    assert len(info["manifest"]["layers"]) == 1
    config = info["config"]
    assert config["rootfs"]["diff_ids"] == [out["diff_id"]]
    assert [h.get("comment") for h in config["history"]] == ["one layer"]
    layerdiff.unpack(new, tmp_path / "out")
    assert_same_tree(upper, tmp_path / "out")
    # --layers out of range is a one-line usage error naming the option.
    proc = run_cli("squash", ref, new, "--layers", "3")
    assert proc.returncode == 2 and "'--layers': must be between 1 and 2" in proc.stderr
    # Another level: other bytes for the same tar.
    proc = run_cli("squash", ref, new + "9", "--json", "--compression-level", "9")
    assert proc.returncode == 0, proc.stderr
    level9 = json.loads(proc.stdout)
    assert level9["diff_id"] == out["diff_id"] and level9["digest"] != out["digest"]


@pytest.mark.parametrize("indexed", [True, False])
def test_squash_of_a_damaged_layer_names_its_blob(tmp_path: Path, indexed: bool) -> None:
    """The entry being written is not at fault when its source blob is damaged: the error
    names the blob, whether the layer is read first for its headers or, with its index, only
    for its contents."""
    lower = tmp_path / "lower"
    (lower / "etc").mkdir(parents=True)
    (lower / "etc" / "a").write_text("a")
    upper = tmp_path / "upper"
    subprocess.run(["cp", "-a", str(lower), str(upper)], check=True)
    (upper / "big").write_bytes(os.urandom(300_000))  # stored: a flipped byte still inflates
    layout = tmp_path / "l"
    layerdiff.commit(lower, image=f"oci:{layout}:1")
    layerdiff.commit(upper, image=f"oci:{layout}:2", lower=lower, base=f"oci:{layout}:1")
    top = layerdiff.inspect(f"oci:{layout}:2")["manifest"]["layers"][-1]["digest"]
    blob = Layout.open(layout).blob_path(top)
    if not indexed:
        shutil.rmtree(layerdiff.refs.layer_index_dir(), ignore_errors=True)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x01
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    done = run_cli("squash", f"oci:{layout}:2", f"oci:{layout}:s")
    assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
    assert f"{blob}: " in done.stderr
    assert done.stderr.endswith(": corrupt gzip stream does not have a matching checksum\n")


def test_squash_keeps_layer_indexes_and_gives_the_same_layer_with_or_without(
    image: tuple[str, Path], store_home: Path, tmp_path: Path
) -> None:
    ref, upper = image
    layout = Layout.open(ref.removeprefix("oci:").rsplit(":", 1)[0])
    layers = [d["digest"] for d in layerdiff.inspect(ref)["manifest"]["layers"]]
    indexes = [store_home / "layer-index" / "sha256" / d.removeprefix("sha256:") for d in layers]

    def squash(tag: str) -> dict[str, object]:
        proc = run_cli("squash", ref, f"{ref.rsplit(':', 1)[0]}:{tag}", "--json")
        assert proc.returncode == 0, proc.stderr
        return dict(json.loads(proc.stdout))

    # commit left an index for each layer it made; squash uses them as they are, and leaves
    # one for the layer it makes.
    stamps = [p.stat().st_mtime_ns for p in indexes]
    first = squash("s1")
    second = squash("s2")
    assert [p.stat().st_mtime_ns for p in indexes] == stamps
    made = store_home / "layer-index" / "sha256" / str(first["digest"]).removeprefix("sha256:")
    assert made.is_file()
    # A damaged index and one of another layer change nothing but the time taken.
    indexes[0].write_bytes(indexes[0].read_bytes()[:-40])
    indexes[1].write_bytes(indexes[0].read_bytes())
    third = squash("s3")
    for out in (second, third):
        assert (out["digest"], out["diff_id"]) == (first["digest"], first["diff_id"])
    layerdiff.unpack(f"{ref.rsplit(':', 1)[0]}:s3", tmp_path / "out")
    assert_same_tree(upper, tmp_path / "out")
    assert layout.has_blob(str(first["digest"]))
    # gc of the store drops the indexes of blobs it does not hold (these are in another layout).
    assert run_cli("gc").returncode == 0
    assert not any(p.exists() for p in [*indexes, made])


def test_squash_keeps_empty_layer_history(tmp_path: Path) -> None:
    from layerdiff.squash import squash_config

    config = {
        "rootfs": {"type": "layers", "diff_ids": ["sha256:a", "sha256:b", "sha256:c"]},
        "history": [
            {"created_by": "base"},
            {"created_by": "ENV X=1", "empty_layer": True},
            {"created_by": "step b"},
            {"created_by": "CMD x", "empty_layer": True},
            {"created_by": "step c"},
        ],
    }
    out = squash_config(config, count=2, diff_id="sha256:n", created="T", comment=None)
    assert out["rootfs"]["diff_ids"] == ["sha256:a", "sha256:n"]
    assert [h["created_by"] for h in out["history"]] == [
        "base",
        "ENV X=1",
        "CMD x",
        "layerdiff squash",
    ]
    assert "step b && step c" in out["history"][-1]["comment"]


def _image_of(
    layout_dir: Path,
    layers: list[bytes],
    media_type: str = "application/vnd.oci.image.layer.v1.tar",
    diff_ids: list[str] | None = None,
) -> str:
    """An image of the layer blobs ``layers`` (bottom first, each of ``media_type``), as
    oci:PATH:v1; its config's diff_ids are ``diff_ids``, else the blobs' digests."""
    import hashlib

    from layerdiff.image import (
        CONFIG_MEDIA_TYPE,
        MANIFEST_MEDIA_TYPE,
        add_layer,
        build_manifest,
        canonical_json,
        new_config,
    )

    layout = Layout.create(layout_dir)
    config = new_config(created="2024-01-01T00:00:00Z")
    descs = []
    for i, blob in enumerate(layers):
        descs.append(layout.put_blob(blob, media_type=media_type))
        diff_id = diff_ids[i] if diff_ids else "sha256:" + hashlib.sha256(blob).hexdigest()
        config = add_layer(config, diff_id=diff_id, created="2024-01-01T00:00:00Z", created_by="t")
    config_desc = layout.put_blob(canonical_json(config), media_type=CONFIG_MEDIA_TYPE)
    manifest = build_manifest(config=config_desc, layers=descs)
    layout.set_tag("v1", layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE))
    return f"oci:{layout_dir}:v1"


@pytest.mark.parametrize(
    ("media_type", "applied"),
    [
        ("application/vnd.oci.image.layer.v1.tar+gzip", True),  # named gzip, read as it is
        ("application/vnd.docker.image.rootfs.diff.tar.gzip", True),
        ("application/vnd.oci.image.layer.nondistributable.v1.tar+zstd", True),
        ("application/vnd.oci.image.layer.v1.tar+bzip2", False),
        ("application/vnd.example.not-a-layer", False),
    ],
)
def test_a_layer_of_an_unknown_media_type_is_never_applied(
    tmp_path: Path, media_type: str, applied: bool
) -> None:
    """The layer's media type must name a tar layer (its compression is read from its bytes,
    as containerd does); unpack, squash, save and run refuse anything else before writing."""
    ref = _image_of(tmp_path / "img", [_tar([(_entry("f"), b"x")])], media_type)
    proc = run_cli("unpack", ref, str(tmp_path / "out"))
    if applied:
        assert proc.returncode == 0, proc.stderr
        assert (tmp_path / "out" / "f").read_bytes() == b"x"
        return
    for args in (
        ["unpack", ref, str(tmp_path / "out")],
        ["squash", ref, f"oci:{tmp_path}/img:sq"],
        ["save", ref, f"docker-archive:{tmp_path}/s.tar"],
    ):
        proc = run_cli(*args)
        assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
        assert f"has media type {media_type!r}, not a tar layer" in proc.stderr
    assert not (tmp_path / "out").exists()
    assert not (tmp_path / "s.tar").exists()
    assert Layout(tmp_path / "img").tags() == ["v1"]


def _dir(name: str) -> tarfile.TarInfo:
    info = _entry(name, tarfile.DIRTYPE)
    info.mode = 0o755
    return info


SYMLINKED_DIRS = {
    # Merged /usr: a later layer writes bin/tool through the symlink bin -> usr/bin.
    "merged usr": [
        [(_dir("usr"), b""), (_dir("usr/bin"), b""), (_entry("usr/bin/sh"), b"sh")],
        [(_entry("bin", tarfile.SYMTYPE, "usr/bin"), b"")],
        [(_entry("bin/tool"), b"tool")],
    ],
    # A whiteout and an opaque marker under a symlinked directory hide what is behind it.
    "whiteout through a symlink": [
        [(_dir("real"), b""), (_entry("real/x"), b"x"), (_entry("real/y"), b"y")],
        [(_entry("lnk", tarfile.SYMTYPE, "/real"), b"")],
        [(_entry("lnk/.wh.x"), b"")],
    ],
    "opaque through a symlink": [
        [(_dir("real"), b""), (_entry("real/x"), b"x")],
        [(_entry("lnk", tarfile.SYMTYPE, "real"), b"")],
        [(_entry("lnk/.wh..wh..opq"), b""), (_entry("real/new"), b"n")],
    ],
    # A write through a symbolic link to a directory nobody made yet makes it (0755, as a
    # missing parent is made), as umoci does: relative and absolute targets, several levels,
    # the link in an earlier layer or in the same one.
    "dangling symlinks": [
        [(_dir("d"), b"")],
        [(_entry("d/lnk", tarfile.SYMTYPE, "../new/deeper"), b"")],
        [
            (_entry("d/lnk/f"), b"f"),
            (_entry("same", tarfile.SYMTYPE, "/samedir"), b""),
            (_entry("same/g"), b"g"),
        ],
    ],
    # `l -> .` makes `l/l` name `l`: the directory entry replaces the link it was reached
    # through, and what follows goes into that directory (as umoci and GNU tar have it).
    "a link replaced through itself": [
        [(_entry("l", tarfile.SYMTYPE, "."), b"")],
        [(_dir("l/l"), b"")],
        [(_entry("l/secret"), b"s")],
    ],
}


# What applying them gives: writes go through the links; a whiteout or an opaque marker
# reached through one hides what the layers below put there, never what its own layer wrote.
SYMLINKED_RESULT = {
    "merged usr": {"bin", "usr", "usr/bin", "usr/bin/sh", "usr/bin/tool"},
    "whiteout through a symlink": {"lnk", "real", "real/y"},
    "opaque through a symlink": {"lnk", "real", "real/new"},
    "dangling symlinks": {
        "d",
        "d/lnk",
        "new",
        "new/deeper",
        "new/deeper/f",
        "same",
        "samedir",
        "samedir/g",
    },
    "a link replaced through itself": {"l", "l/secret"},
}


@pytest.mark.parametrize("case", sorted(SYMLINKED_DIRS))
@pytest.mark.parametrize("layers", ["all", "2", "1"])
def test_squash_follows_symlinked_directories_as_apply_does(
    tmp_path: Path, case: str, layers: str
) -> None:
    """Squashed or not, an image unpacks to the same tree (mtimes aside: implied directories
    get the time of the apply)."""
    ref = _image_of(tmp_path / "img", [_tar(m) for m in SYMLINKED_DIRS[case]])
    args = [] if layers == "all" else ["--layers", layers]
    proc = run_cli("squash", ref, f"oci:{tmp_path}/img:sq", *args)
    assert proc.returncode == 0, proc.stderr
    layerdiff.unpack(ref, tmp_path / "seq")
    layerdiff.unpack(f"oci:{tmp_path}/img:sq", tmp_path / "sq")
    assert_same_tree(tmp_path / "seq", tmp_path / "sq", mtimes=False)
    files = {str(p.relative_to(tmp_path / "seq")) for p in (tmp_path / "seq").rglob("*")}
    assert files == SYMLINKED_RESULT[case]


@pytest.mark.root
@pytest.mark.parametrize("case", ["dangling symlinks", "a link replaced through itself"])
def test_writes_through_symlinks_unpack_as_umoci_unpacks_them(tmp_path: Path, case: str) -> None:
    ref = _image_of(tmp_path / "img", [_tar(m) for m in SYMLINKED_DIRS[case]])
    layerdiff.unpack(ref, tmp_path / "ours")
    theirs = umoci_unpack(ref.removeprefix("oci:"), tmp_path / "bundle")
    assert_same_tree(theirs, tmp_path / "ours", mtimes=False)


def test_squash_refuses_a_hardlink_whose_lower_target_the_range_replaces(tmp_path: Path) -> None:
    layers = [
        [(_entry("a"), b"A")],
        [(_entry("b", tarfile.LNKTYPE, "a"), b"")],
        [(_entry("a"), b"B")],
    ]
    ref = _image_of(tmp_path / "img", [_tar(m) for m in layers])
    proc = run_cli("squash", ref, f"oci:{tmp_path}/img:sq", "--layers", "2")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "b is a hardlink to a" in proc.stderr and "squash more layers" in proc.stderr
    assert Layout(tmp_path / "img").tags() == ["v1"]
    # Squashing all of them has the content at hand: b keeps "A", as applied in order.
    assert run_cli("squash", ref, f"oci:{tmp_path}/img:all").returncode == 0
    layerdiff.unpack(f"oci:{tmp_path}/img:all", tmp_path / "all")
    assert (tmp_path / "all" / "b").read_bytes() == b"A"
    assert (tmp_path / "all" / "a").read_bytes() == b"B"


def test_an_aufs_layer_with_more_link_files_than_the_soft_open_file_limit_applies(
    tmp_path: Path,
) -> None:
    """Each file of the aufs link directory is held open while the layer applies; more of
    them than the soft limit on open files allows still apply (the limit is raised to the hard
    one, as Go programs do)."""
    import resource
    import sys

    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard < 1024:
        pytest.skip("the hard limit on open files is too low to test this")
    n = 400
    members = [(_entry(f".wh..wh.plnk/{i}.1"), f"{i}".encode()) for i in range(n)]
    members += [(_entry(f"f{i}", tarfile.LNKTYPE, f".wh..wh.plnk/{i}.1"), b"") for i in range(n)]
    layer = tmp_path / "aufs.tar"
    layer.write_bytes(_tar(members))
    (tmp_path / "t").mkdir()
    out = subprocess.run(
        [sys.executable, "-m", "layerdiff", "apply", "--to", str(tmp_path / "t"), str(layer)],
        capture_output=True,
        text=True,
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard)),
        check=False,
    )
    assert out.returncode == 0, out.stderr
    assert sorted(p.name for p in (tmp_path / "t").iterdir()) == sorted(f"f{i}" for i in range(n))
    assert (tmp_path / "t/f399").read_bytes() == b"399"


def test_targets_and_blobs_that_name_nothing_to_use_are_refused_in_one_line(
    image: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ref, _ = image
    monkeypatch.chdir(tmp_path)
    (tmp_path / "not-a-tar").write_text("hello, not a tar\n")
    (tmp_path / "a-file").write_text("")
    (tmp_path / "to-root").symlink_to("/")
    cases = [
        (["unpack", ref, ""], "the target directory is an empty string"),
        (["unpack", ref, "/"], "the target directory is / itself"),
        (["unpack", ref, "//"], "the target directory is / itself"),
        (["apply", "--to", "//", "not-a-tar"], "the target directory is / itself"),
        (["apply", "--to", "to-root", "not-a-tar"], "the target directory is / itself"),
        (["apply", "--to", "", "not-a-tar"], "the target directory is an empty string"),
        (["apply", "--to", "new", "/dev/null"], "/dev/null: not a regular file"),
        (["apply", "--to", "new", "not-a-tar"], "archive is truncated"),
        (["tag", ref, f"oci:{tmp_path / 'a-file'}"], "a-file: Not a directory"),
    ]
    for args, message in cases:
        done = run_cli(*args)
        assert done.returncode == 1, (args, done.stderr)
        [line] = done.stderr.splitlines()
        assert message in line, (args, line)
    # A failed apply into a directory it made leaves none behind.
    assert not (tmp_path / "new").exists()
    (tmp_path / "to-root").unlink()
    with pytest.raises(layerdiff.LayerdiffOSError, match="no such layer blob"):
        layerdiff.apply(tmp_path / "new", tmp_path / "missing")
    assert not (tmp_path / "new").exists()


def test_apply_checks_every_blob_before_it_applies_the_first(tmp_path: Path) -> None:
    good = tmp_path / "good.tar"
    good.write_bytes(_tar([(_entry("f"), b"x")]))
    root = tmp_path / "root"
    for bad, why in ((tmp_path / "missing.tgz", "no such layer blob"), (tmp_path, "not a regular")):
        with pytest.raises(layerdiff.LayerdiffOSError, match=why) as info:
            layerdiff.apply(root, [good, bad])
        assert info.value.filename == str(bad)
        assert not root.exists()
    root.mkdir()
    with pytest.raises(FileNotFoundError):
        layerdiff.apply(root, [good, good, tmp_path / "missing.tgz"])
    assert list(root.iterdir()) == []


def test_a_failed_apply_leaves_the_layers_before_the_failing_one_applied(tmp_path: Path) -> None:
    """As apply's documentation says: no marker, no rollback; only unpack marks its target."""
    good = tmp_path / "good.tar"
    good.write_bytes(_tar([(_entry("f"), b"x")]))
    damaged = tmp_path / "damaged.tar"
    damaged.write_bytes(b"\x00" * 100 + b"not a tar" * 200)
    root = tmp_path / "root"
    with pytest.raises(layerdiff.FormatError):
        layerdiff.apply(root, [good, damaged])
    assert (root / "f").read_bytes() == b"x"
    assert not layerdiff.incomplete_marker(root).exists()


# 1960-01-01 00:00:00 UTC, and a quarter of a second before 1970.
BEFORE_1970 = {"old": -315_619_200 * 10**9, "frac": -250_000_000}


def _gnu_tar_layer(tmp_path: Path, fmt: str) -> Path:
    """A layer GNU tar writes of files dated before 1970: ``--format=gnu`` (its default) puts
    a negative mtime in base-256 (whole seconds), ``--format=pax`` in a PAX record."""
    tree = tmp_path / "tree"
    tree.mkdir()
    for name, ns in BEFORE_1970.items():
        (tree / name).write_text(name)
        os.utime(tree / name, ns=(ns, ns))
    layer = tmp_path / f"{fmt}.tar"
    args = ["tar", "-C", str(tree), "--numeric-owner", f"--format={fmt}", "-cf", str(layer)]
    subprocess.run([*args, *BEFORE_1970], check=True)
    return layer


def _gnu_tar_mtimes(blob: Path, where: Path) -> dict[str, int]:
    """The mtimes (ns) GNU tar gives the files of ``blob`` when it extracts them."""
    where.mkdir()
    subprocess.run(["tar", "-xf", str(blob), "-C", str(where)], check=True, capture_output=True)
    return {name: (where / name).lstat().st_mtime_ns for name in BEFORE_1970}


def _top_blob(ref: str) -> Path:
    layout = ref.removeprefix("oci:").rsplit(":", 1)[0]
    return Layout.open(layout).blob_path(layerdiff.inspect(ref)["manifest"]["layers"][-1]["digest"])


def _tarfile_mtimes(blob: Path) -> dict[str, float]:
    with tarfile.open(blob) as t:
        return {m.name: m.mtime for m in t if m.name in BEFORE_1970}


@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_files_dated_before_1970_keep_their_mtimes(tmp_path: Path, fmt: str) -> None:
    """apply and unpack set a pre-1970 mtime as GNU tar extracts it; squash and commit write
    it (a PAX record) so that GNU tar and Python's tarfile read it back the same."""
    layer = _gnu_tar_layer(tmp_path, fmt)
    want = _gnu_tar_mtimes(layer, tmp_path / "gnu")
    assert all(ns < 0 for ns in want.values()), want

    done = run_cli("apply", "--to", str(tmp_path / "applied"), str(layer))
    assert done.returncode == 0, done.stderr
    applied = {n: (tmp_path / "applied" / n).lstat().st_mtime_ns for n in BEFORE_1970}
    assert applied == want

    # Squashed with a layer above it: the mtimes come through into the one layer written.
    ref = _image_of(tmp_path / "img", [layer.read_bytes(), _tar([(_entry("new"), b"n")])])
    layerdiff.unpack(ref, tmp_path / "unpacked")
    assert {n: (tmp_path / "unpacked" / n).lstat().st_mtime_ns for n in BEFORE_1970} == want
    done = run_cli("squash", ref, f"oci:{tmp_path}/img:sq")
    assert done.returncode == 0, done.stderr
    squashed = _top_blob(f"oci:{tmp_path}/img:sq")
    assert _gnu_tar_mtimes(squashed, tmp_path / "gnu-sq") == want
    assert _tarfile_mtimes(squashed) == {n: ns / 1e9 for n, ns in want.items()}

    # Committed from a tree, SOURCE_DATE_EPOCH or not (it only lowers later times).
    for epoch in ("", "1000"):
        ref = f"oci:{tmp_path}/c:{epoch or 'now'}"
        done = run_cli(
            "commit", "--upper", str(tmp_path / "tree"), ref, env={"SOURCE_DATE_EPOCH": epoch}
        )
        assert done.returncode == 0, done.stderr
        blob = _top_blob(ref)
        assert _gnu_tar_mtimes(blob, tmp_path / f"gnu-c{epoch}") == BEFORE_1970
        assert _tarfile_mtimes(blob) == {n: ns / 1e9 for n, ns in BEFORE_1970.items()}


@pytest.mark.root
@pytest.mark.parametrize("fmt", ["gnu", "pax"])
def test_files_dated_before_1970_unpack_as_umoci_unpacks_them(tmp_path: Path, fmt: str) -> None:
    ref = _image_of(tmp_path / "img", [_gnu_tar_layer(tmp_path, fmt).read_bytes()])
    layerdiff.unpack(ref, tmp_path / "ours")
    theirs = umoci_unpack(ref.removeprefix("oci:"), tmp_path / "bundle")
    for name in BEFORE_1970:
        assert (tmp_path / "ours" / name).lstat().st_mtime_ns == (theirs / name).lstat().st_mtime_ns
