"""OCI image layout: files, blobs, tags; atomic index writes; no lost updates in parallel."""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
from pathlib import Path

import pytest

import layerdiff
from layerdiff.errors import DigestMismatchError, FormatError, ImageNotFoundError
from layerdiff.layout import INDEX_MEDIA_TYPE, REF_NAME, Layout
from tests.conftest import run_cli


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_create(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path / "new" / "layout")
    assert json.loads((layout.path / "oci-layout").read_text()) == {"imageLayoutVersion": "1.0.0"}
    index = json.loads((layout.path / "index.json").read_text())
    assert index == {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
    assert layout.blobs_dir.is_dir()
    assert layout.tags() == []


def test_create_keeps_existing(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    desc = layout.put_blob(b"{}", media_type="application/json")
    layout.set_tag("v1", desc)
    again = Layout.create(tmp_path)
    assert again.tags() == ["v1"]


def test_open_missing(tmp_path: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="no OCI image layout"):
        Layout.open(tmp_path)


def test_put_and_read_blob(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    desc = layout.put_blob(b"hello", media_type="text/plain", annotations={"k": "v"})
    assert desc == {
        "mediaType": "text/plain",
        "digest": _digest(b"hello"),
        "size": 5,
        "annotations": {"k": "v"},
    }
    path = layout.blob_path(desc["digest"])
    assert path.parent == layout.blobs_dir
    assert path.read_bytes() == b"hello"
    assert oct(path.stat().st_mode & 0o777) == oct(0o644)
    assert layout.read_blob(desc["digest"]) == b"hello"
    # Putting it again is a no-op; no temporary files are left behind.
    layout.put_blob(b"hello", media_type="text/plain")
    assert os.listdir(layout.blobs_dir) == [path.name]


def test_read_blob_checks_digest(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    desc = layout.put_blob(b"hello", media_type="text/plain")
    layout.blob_path(desc["digest"]).write_bytes(b"HELLO")
    with pytest.raises(DigestMismatchError, match="expected " + desc["digest"]):
        layout.read_blob(desc["digest"])
    with pytest.raises(ImageNotFoundError, match="missing"):
        layout.read_blob(_digest(b"absent"))


@pytest.mark.parametrize(
    "digest",
    ["sha256:../../etc/passwd", "sha512:" + "a" * 128, "sha256:" + "A" * 64, "sha256:abc", ""],
)
def test_blob_path_refuses_bad_digests(tmp_path: Path, digest: str) -> None:
    with pytest.raises(FormatError):
        Layout.create(tmp_path).blob_path(digest)


def test_set_tag_replaces(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    a = layout.put_blob(b"a", media_type="m")
    b = layout.put_blob(b"b", media_type="m")
    layout.set_tag("v1", a)
    layout.set_tag("v2", a)
    layout.set_tag("v1", b)
    assert sorted(layout.tags()) == ["v1", "v2"]
    assert layout.resolve("v1")["digest"] == b["digest"]
    assert layout.resolve("v2")["digest"] == a["digest"]
    entry = layout.resolve("v1")
    assert entry["annotations"] == {REF_NAME: "v1"}
    assert entry["mediaType"] == "m" and entry["size"] == 1
    index = json.loads((layout.path / "index.json").read_text())
    assert index["schemaVersion"] == 2 and len(index["manifests"]) == 2


def test_remove_tag(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    layout.set_tag("v1", layout.put_blob(b"a", media_type="m"))
    assert layout.remove_tag("v1") is True
    assert layout.remove_tag("v1") is False
    assert layout.tags() == []


def test_remove_tag_by_digest_spares_a_name_given_to_another_image_meanwhile(
    tmp_path: Path,
) -> None:
    """rmi reads the digest, then removes the name only where it still names that digest: a
    commit that tagged another image in between keeps its name."""
    layout = Layout.create(tmp_path)
    a = layout.put_blob(b"a", media_type="m")
    b = layout.put_blob(b"b", media_type="m")
    layout.set_tag("t", a)
    layout.set_tag("t", b)
    assert layout.remove_tag("t", digest=a["digest"]) is False
    assert layout.resolve("t")["digest"] == b["digest"]
    assert layout.remove_tag("t", digest=b["digest"]) is True
    assert layout.tags() == []


def test_put_blob_mends_a_damaged_copy(tmp_path: Path) -> None:
    """A config written again (a reproducible commit) over a copy cut short or changed in
    place is written whole, not taken as present."""
    layout = Layout.create(tmp_path)
    data = b'{"config": "x"}'
    desc = layout.put_blob(data, media_type="m")
    path = layout.blob_path(desc["digest"])
    for damaged in (data[:5], data.replace(b"x", b"y")):
        os.chmod(path, 0o644)
        path.write_bytes(damaged)
        assert layout.put_blob(data, media_type="m") == desc
        assert layout.read_blob(desc["digest"]) == data


def test_a_tag_two_images_share_in_a_foreign_layout_is_refused_as_ambiguous(
    tmp_path: Path,
) -> None:
    """A layout docker 25 saves names each image by its tag alone: `oci:PATH:latest` over two
    images cannot say which is meant (umoci refuses it too); the same entry twice is one."""
    layout = Layout.create(tmp_path)
    a = layout.put_blob(b"a", media_type="m")
    b = layout.put_blob(b"b", media_type="m")
    layout.update_index(lambda ms: [{**a, "annotations": {REF_NAME: "latest"}}] * 2)
    assert layout.resolve("latest")["digest"] == a["digest"]
    layout.update_index(lambda ms: [*ms, {**b, "annotations": {REF_NAME: "latest"}}])
    with pytest.raises(layerdiff.InvalidReferenceError, match="2 images are tagged 'latest'"):
        layout.resolve("latest")


def test_resolve_untagged(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    with pytest.raises(ImageNotFoundError, match="holds no image"):
        layout.resolve(None)
    a = layout.put_blob(b"a", media_type="m")
    # One untagged image (as `skopeo copy ... oci:DIR` writes it) is "the" image.
    layout.update_index(lambda ms: [*ms, a])
    assert layout.resolve(None)["digest"] == a["digest"]
    b = layout.put_blob(b"b", media_type="m")
    layout.set_tag("v1", b)
    with pytest.raises(ImageNotFoundError, match="holds 2 images"):
        layout.resolve(None)
    layout.set_tag("latest", b)
    assert layout.resolve(None)["digest"] == b["digest"]
    with pytest.raises(ImageNotFoundError, match="no image tagged 'nope'"):
        layout.resolve("nope")


def test_index_write_is_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    layout = Layout.create(tmp_path)
    layout.set_tag("v1", layout.put_blob(b"a", media_type="m"))
    before = (tmp_path / "index.json").read_bytes()

    def boom(src: str, dst: str) -> None:
        raise OSError(28, "No space left on device", dst)

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError, match="No space"):
        layout.set_tag("v2", {"mediaType": "m", "digest": _digest(b"b"), "size": 1})
    monkeypatch.undo()
    assert (tmp_path / "index.json").read_bytes() == before
    leftovers = [n for n in os.listdir(tmp_path) if n.endswith(".tmp")]
    assert leftovers == []


def test_corrupt_index(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    (tmp_path / "index.json").write_text("{not json")
    with pytest.raises(FormatError, match=r"index\.json: not JSON"):
        layout.tags()
    (tmp_path / "index.json").write_text('{"schemaVersion": 1}')
    with pytest.raises(FormatError, match="schemaVersion 2"):
        layout.tags()


def _tagger(path: str, worker: int, count: int) -> None:
    layout = Layout(path)
    for i in range(count):
        desc = layout.put_blob(f"{worker}-{i}".encode(), media_type="m")
        layout.set_tag(f"w{worker}-{i}", desc)
        layout.set_tag("shared", desc)


def test_parallel_tagging_loses_nothing(tmp_path: Path) -> None:
    layout = Layout.create(tmp_path)
    workers, count = 6, 15
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_tagger, args=(str(tmp_path), w, count)) for w in range(workers)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    tags = layout.tags()
    expected = {f"w{w}-{i}" for w in range(workers) for i in range(count)} | {"shared"}
    assert sorted(tags) == sorted(expected)  # every tag present, none twice
    assert len(tags) == len(set(tags))


def test_import_blob(tmp_path: Path) -> None:
    src = Layout.create(tmp_path / "src")
    dst = Layout.create(tmp_path / "dst")
    desc = src.put_blob(b"layer", media_type="m")
    dst.import_blob(src, desc["digest"])
    assert dst.read_blob(desc["digest"]) == b"layer"
    dst.import_blob(src, desc["digest"])  # already there: fine
    # A copy of its own: the layouts may have different owners, and one's blob changed (or
    # corrupted) must not change the other's.
    copied, original = dst.blob_path(desc["digest"]), src.blob_path(desc["digest"])
    assert not os.path.samefile(copied, original)


def test_import_blob_checks_the_digest(tmp_path: Path) -> None:
    src = Layout.create(tmp_path / "src")
    dst = Layout.create(tmp_path / "dst")
    desc = src.put_blob(b"layer", media_type="m")
    src.blob_path(desc["digest"]).write_bytes(b"LAYER")
    with pytest.raises(DigestMismatchError, match="digest mismatch"):
        dst.import_blob(src, desc["digest"])
    assert os.listdir(dst.blobs_dir) == []
    with pytest.raises(ImageNotFoundError, match="missing"):
        dst.import_blob(src, "sha256:" + "0" * 64)


def test_create_refuses_a_foreign_directory(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FormatError, match="not an OCI image layout"):
        Layout.create(tmp_path)
    assert sorted(os.listdir(tmp_path)) == ["notes.txt"]
    Layout.create(tmp_path / "empty-is-fine")


def test_create_accepts_a_layout_another_process_just_finished(tmp_path: Path) -> None:
    # What a second creator may list: a layout the first one completed (oci-layout written)
    # and then wrote another file into, between the second's look for the marker and its
    # listing of the directory.
    layout = Layout.create(tmp_path / "racing")
    (layout.path / "extra.json").write_text("{}")
    layout._refuse_foreign()
    (layout.path / "oci-layout").unlink()
    with pytest.raises(FormatError, match="not an OCI image layout"):
        layout._refuse_foreign()


def test_rmi_of_a_name_by_digest_removes_that_name_only(store_home: Path, tmp_path: Path) -> None:
    """`rmi NAME@DIGEST` never takes a tag that happens to hold the digest: docker's tags go
    by their own names."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("f")
    digest = layerdiff.commit(tmp_path / "t", image="app:1").manifest_digest
    assert run_cli("tag", "app:1", "app:2").returncode == 0
    out = run_cli("rmi", f"app@{digest}")
    assert out.returncode == 1 and "not found" in out.stderr, out.stderr
    assert sorted(i.tag for i in layerdiff.images()) == ["1", "2"]
    assert layerdiff.inspect(f"app@{digest}")["digest"] == digest  # found for reading


@pytest.mark.root
def test_a_blob_that_does_not_fit_names_its_file_and_leaves_nothing(tmp_path: Path) -> None:
    """A write or fsync error such as ENOSPC carries no file name of its own: the error names
    the file, and no temporary file is left."""
    import errno
    import subprocess

    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], check=True)
    try:
        layout = Layout.create(small / "layout")
        data = os.urandom(256 << 10)
        with pytest.raises(OSError) as raised:
            layout.put_blob(data, media_type="application/octet-stream")
        assert raised.value.errno == errno.ENOSPC
        assert raised.value.filename == str(layout.blob_path(_digest(data)))
        assert os.listdir(layout.path / "blobs" / "sha256") == []
    finally:
        subprocess.run(["umount", str(small)], check=True)
