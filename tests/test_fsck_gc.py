"""fsck finds what is wrong with a store and names it; gc removes only what nothing reaches."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from layerdiff.image import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, build_manifest, canonical_json
from layerdiff.layout import INDEX_MEDIA_TYPE, REF_NAME, Layout
from tests.conftest import run_cli


def tree(root: Path, marker: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "marker").write_text(marker)
    (root / "data").write_bytes(os.urandom(50_000))
    return root


@pytest.fixture
def store(tmp_path: Path) -> Layout:
    """The default store with two images sharing nothing."""
    layerdiff.commit(tree(tmp_path / "a", "a"), image="one:1")
    layerdiff.commit(tree(tmp_path / "b", "b"), image="two:1")
    return Layout.open(Path(os.environ["LAYERDIFF_HOME"]) / "images")


def layer_blob(image: str) -> Path:
    info = layerdiff.inspect(image)
    digest = str(info["manifest"]["layers"][-1]["digest"])
    return Path(os.environ["LAYERDIFF_HOME"]) / "images" / "blobs" / "sha256" / digest[7:]


def test_fsck_passes_on_a_healthy_store(store: Layout) -> None:
    proc = run_cli("fsck", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert report == {"ok": True, "images": 2, "blobs": 6, "problems": []}


def test_fsck_reports_an_unreadable_index_as_a_problem_and_in_json(
    store: Layout, tmp_path: Path
) -> None:
    """A damaged index.json is what fsck is run for: it is a problem in its report (JSON
    included), not an error without one; a path that is no layout stays an error."""
    (store.path / "index.json").write_text("{bad")
    for target in ([], [f"oci:{store.path}"]):
        proc = run_cli("fsck", "--json", *target)
        assert proc.returncode == 1, proc
        report = json.loads(proc.stdout)
        assert report["ok"] is False and report["images"] == 0
        [problem] = report["problems"]
        assert problem["where"] == str(store.path) and "index.json: not JSON" in problem["what"]
    proc = run_cli("fsck", f"oci:{store.path}")
    assert proc.returncode == 1 and "0 images, 0 blobs checked, 1 problem\n" in proc.stderr
    proc = run_cli("fsck", "--json", f"oci:{tmp_path}")
    assert proc.returncode == 1 and proc.stdout == "" and "no OCI image layout" in proc.stderr


def test_fsck_names_a_flipped_byte_and_unpack_refuses_it(store: Layout, tmp_path: Path) -> None:
    blob = layer_blob("one:1")
    data = bytearray(blob.read_bytes())
    data[-20] ^= 0x40
    os.chmod(blob, 0o644)
    blob.write_bytes(bytes(data))
    proc = run_cli("fsck")
    assert proc.returncode == 1
    assert f"one:1: blob sha256:{blob.name}" in proc.stdout
    assert "two:1" not in proc.stdout  # the healthy image is not blamed
    assert run_cli("fsck", "two:1").returncode == 0
    # An image by its ID, as the other commands take one.
    image_id = str(layerdiff.inspect("one:1")["digest"])
    for text in (image_id[7:19], image_id):
        by_id = run_cli("fsck", text)
        assert by_id.returncode == 1 and f"blob sha256:{blob.name}" in by_id.stdout, by_id
    assert run_cli("fsck", str(layerdiff.inspect("two:1")["digest"])[7:19]).returncode == 0
    proc = run_cli("unpack", "one:1", str(tmp_path / "out"))
    assert proc.returncode == 1 and "error:" in proc.stderr


def test_fsck_finds_a_missing_blob_and_a_wrong_diff_id(store: Layout) -> None:
    layer_blob("two:1").unlink()
    report = layerdiff.fsck()
    assert [str(p) for p in report.problems] == [
        f"two:1: blob {layerdiff.inspect('two:1')['manifest']['layers'][0]['digest']} is missing"
    ]
    # A config whose diff_id is not its layer's: whole blobs, but an image unpack refuses.
    info = layerdiff.inspect("one:1")
    config, manifest = info["config"], info["manifest"]
    real = config["rootfs"]["diff_ids"][0]
    fake = "sha256:" + "1" * 64
    config["rootfs"]["diff_ids"][0] = fake
    manifest["config"] = store.put_blob(
        json.dumps(config).encode(), media_type=manifest["config"]["mediaType"]
    )
    store.set_tag(
        "one:1", store.put_blob(json.dumps(manifest).encode(), media_type=manifest["mediaType"])
    )
    report = layerdiff.fsck("one:1")
    assert [str(p) for p in report.problems] == [
        f"one:1: layer 0 has diff_id {real}, config says {fake}"
    ]
    assert run_cli("fsck", "one:1").returncode == 1


def test_gc_removes_only_unreachable_blobs_and_temporary_files(store: Layout) -> None:
    gone = layer_blob("one:1")
    kept = layer_blob("two:1")
    stale = store.blobs_dir / ".tmp-layer-1-deadbeef"
    stale.write_bytes(b"half a blob")
    assert store.remove_tag("one:1")
    report = layerdiff.gc()
    assert report.blobs == 3 and report.temporary == 1
    assert not gone.exists() and not stale.exists() and kept.exists()
    assert layerdiff.fsck().ok
    # Nothing left to collect the second time.
    assert layerdiff.gc().blobs == 0


def test_gc_and_rmi_keep_every_blob_while_a_manifest_cannot_be_read(store: Layout) -> None:
    """A damaged manifest hides what it names: gc removes no blob then (the image is whole
    again once the manifest is put back), and says why."""
    digest = str(layerdiff.inspect("two:1")["digest"])
    manifest = store.blob_path(digest)
    original = manifest.read_bytes()
    manifest.write_bytes(original[:-5])
    done = run_cli("rmi", "one:1")  # the rmi of another image collects
    assert done.returncode == 0, done.stderr
    assert done.stdout.endswith(
        f"; every blob kept: {digest} cannot be read, and what it names with it (fsck says more)\n"
    ), done.stdout
    assert "removed 0 blobs" in done.stdout
    report = layerdiff.gc()
    assert (report.blobs, report.unreadable) == (0, (digest,))
    manifest.write_bytes(original)
    assert layerdiff.fsck().ok
    assert layerdiff.gc().blobs == 3  # one:1's, now that nothing is unreadable


def test_gc_keeps_every_blob_while_a_manifest_is_missing(store: Layout) -> None:
    """A manifest deleted from the layout hides what it names as a damaged one does: its
    config and layers stay (putting the manifest back makes the image whole), and gc says
    which; an index entry naming no digest too."""
    digest = str(layerdiff.inspect("two:1")["digest"])
    manifest = store.blob_path(digest)
    original = manifest.read_bytes()
    manifest.unlink()
    assert store.remove_tag("one:1")
    report = layerdiff.gc()
    assert (report.blobs, report.unreadable) == (0, (digest,))
    manifest.write_bytes(original)
    assert layerdiff.fsck().ok
    entry = {"mediaType": MANIFEST_MEDIA_TYPE, "size": 1, "annotations": {REF_NAME: "bad:1"}}
    store.update_index(lambda ms: [*ms, entry])
    done = run_cli("gc")
    assert done.returncode == 0 and "removed 0 blobs" in done.stdout, done.stdout
    assert "every blob kept: an entry without a digest" in done.stdout, done.stdout
    # rmi takes the damaged name, and its gc what nothing reaches now.
    done = run_cli("rmi", "bad:1")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("untagged bad:1 (no digest)\nremoved 3 blobs"), done.stdout


def test_gc_collects_a_layout_whose_index_lacks_platforms_by_design(tmp_path: Path) -> None:
    """A multi-platform index holding only this machine's platform (docker 25 saves so): the
    other platforms' manifests are absent by design, not damage, and gc still removes what
    nothing reaches."""
    path = tmp_path / "lay"
    layerdiff.commit(tree(tmp_path / "a", "a"), image=f"oci:{path}:amd")
    layout = Layout.open(path)
    amd = {k: v for k, v in layout.resolve("amd").items() if k != "annotations"}
    absent = {"mediaType": MANIFEST_MEDIA_TYPE, "digest": "sha256:" + "ab" * 32, "size": 100}
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX_MEDIA_TYPE,
        "manifests": [
            {**amd, "platform": {"os": "linux", "architecture": "amd64"}},
            {**absent, "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }
    layout.set_tag("multi", layout.put_blob(canonical_json(index), media_type=INDEX_MEDIA_TYPE))
    assert layout.remove_tag("amd")
    junk = layout.put_blob(os.urandom(100), media_type="x")
    report = layerdiff.gc(f"oci:{path}")
    assert (report.blobs, report.unreadable) == (1, ())
    assert not layout.blob_path(junk["digest"]).exists()
    assert layerdiff.inspect(f"oci:{path}:multi")["digest"] == amd["digest"]


def test_gc_while_commits_run_never_removes_what_they_tag(tmp_path: Path) -> None:
    """Commits in other processes and gc in a loop: every tag resolves to a whole image."""
    script = (
        "import sys, layerdiff\n"
        "for i in range(4):\n"
        "    layerdiff.commit(sys.argv[1], image=f'{sys.argv[2]}:{i}', compression='none')\n"
    )
    sources = [tree(tmp_path / f"src{n}", str(n)) for n in range(3)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(src), f"img{n}"])
        for n, src in enumerate(sources)
    ]
    while any(p.poll() is None for p in procs):
        layerdiff.gc()
    assert all(p.returncode == 0 for p in procs)
    layerdiff.gc()
    report = layerdiff.fsck()
    assert report.ok, report.problems
    tags = Layout.open(Path(os.environ["LAYERDIFF_HOME"]) / "images").tags()
    assert sorted(tags) == sorted(f"img{n}:{i}" for n in range(3) for i in range(4))
    assert report.images == 12


def test_fsck_names_every_image_that_reaches_a_broken_blob(tmp_path: Path) -> None:
    layout = tmp_path / "L"
    layerdiff.commit(tree(tmp_path / "base", "base"), image=f"oci:{layout}:base")
    for name in ("one", "two"):
        layerdiff.commit(
            tree(tmp_path / name, name), image=f"oci:{layout}:{name}", base=f"oci:{layout}:base"
        )
    shared = layerdiff.inspect(f"oci:{layout}:base")["layers"][0]["digest"]
    (layout / "blobs" / "sha256" / shared.removeprefix("sha256:")).unlink()
    proc = run_cli("fsck", f"oci:{layout}")
    assert proc.returncode == 1
    assert proc.stdout.splitlines() == [
        f"{name}: blob {shared} is missing" for name in ("base", "one", "two")
    ]
    # Named by itself, an image is told the same.
    assert [str(p) for p in layerdiff.fsck(f"oci:{layout}:two").problems] == [
        f"two: blob {shared} is missing"
    ]


def test_gc_takes_a_whole_layout_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """``oci:`` names no layout (it was the current directory), and ``oci:PATH:TAG`` one image:
    gc refuses both and removes nothing."""
    (tmp_path / "t").mkdir()
    layerdiff.commit(tmp_path / "t", image=f"oci:{tmp_path / 'l'}:1")
    monkeypatch.chdir(tmp_path / "l")
    blobs = sorted(os.listdir("blobs/sha256"))
    (tmp_path / "l" / "blobs/sha256" / ("0" * 64)).write_bytes(b"unreachable")
    for target in ("oci:", f"oci:{tmp_path / 'l'}:1"):
        with pytest.raises(layerdiff.InvalidReferenceError):
            layerdiff.gc(target)
        done = run_cli("gc", target)
        assert done.returncode == 1 and len(done.stderr.splitlines()) == 1, done.stderr
    assert len(os.listdir("blobs/sha256")) == len(blobs) + 1
    assert layerdiff.gc(f"oci:{tmp_path / 'l'}").blobs == 1
    (tmp_path / "l" / "blobs/sha256" / ("1" * 64)).write_bytes(b"unreachable")
    assert layerdiff.gc(str(tmp_path / "l")).blobs == 1  # the API takes a plain path too


def test_rmi_of_a_name_given_twice_removes_it_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "t").mkdir()
    layerdiff.commit(tmp_path / "t", image="twice")
    done = run_cli("rmi", "twice", "twice:latest", "twice")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("untagged") == 1 and "removed" in done.stdout
    assert layerdiff.images() == []
    monkeypatch.chdir(tmp_path)
    layerdiff.commit(tmp_path / "t", image="oci:lay:x")
    done = run_cli("rmi", "oci:lay:x", f"oci:{tmp_path / 'lay'}:x")
    assert done.returncode == 0 and done.stdout.count("untagged") == 1, done.stderr
    # NAME@DIGEST finds an image by its digest but is not one of its names: refused before
    # any name goes.
    layerdiff.commit(tmp_path / "t", image="zz:1")
    digest = layerdiff.inspect("zz:1")["digest"]
    done = run_cli("rmi", "zz:1", f"zz@{digest}")
    assert done.returncode == 1 and "image not found" in done.stderr
    assert [i.name for i in layerdiff.images()] == ["zz"]


def test_layerdiff_alone_prints_its_help(tmp_path: Path) -> None:
    done = run_cli()
    assert done.returncode == 2
    assert (
        done.stderr.startswith("Usage: layerdiff [OPTIONS] COMMAND") and "Commands:" in done.stderr
    )
    assert len(done.stderr.splitlines()) > 10


def test_fsck_of_a_store_never_used_makes_nothing(tmp_path: Path) -> None:
    home = tmp_path / "never-used"
    done = run_cli("fsck", env={"LAYERDIFF_HOME": str(home)})
    assert done.returncode == 0, done.stderr
    assert not home.exists()


def test_fsck_reports_config_fields_of_the_wrong_type(tmp_path: Path) -> None:
    """An image config whose fields are not of their OCI types (an Env that is a string, a
    history comment that is a number) is reported; a commit on it as a base is refused."""
    layout_path = tmp_path / "l"
    layerdiff.commit(tree(tmp_path / "a", "a"), image=f"oci:{layout_path}:good")
    layout = Layout.open(layout_path)
    manifest = layout.read_json(layout.resolve("good"))
    config = layout.read_json(manifest["config"])
    config["config"] = {"Env": "A=b", "Cmd": 7, "Labels": {"a": 1}, "Entrypoint": None}
    config["history"][0]["comment"] = 5
    config["author"] = ["x"]
    config_desc = layout.put_blob(canonical_json(config), media_type=CONFIG_MEDIA_TYPE)
    bad = build_manifest(config=config_desc, layers=manifest["layers"])
    layout.set_tag("bad", layout.put_blob(canonical_json(bad), media_type=MANIFEST_MEDIA_TYPE))

    assert layerdiff.fsck(f"oci:{layout_path}:good").ok
    report = layerdiff.fsck(f"oci:{layout_path}:bad")
    assert sorted(p.what for p in report.problems) == [
        'image config: author must be a string, not ["x"]',
        "image config: config.Cmd must be a list of strings, not 7",
        'image config: config.Env must be a list of strings, not "A=b"',
        'image config: config.Labels must be an object of strings, not {"a": 1}',
        "image config: history[0].comment must be a string, not 5",
    ]
    with pytest.raises(layerdiff.FormatError, match=r"author must be a string.*\(and 4 more\)"):
        layerdiff.commit(
            tmp_path / "a", image=f"oci:{layout_path}:next", base=f"oci:{layout_path}:bad"
        )
    assert {i.tag for i in layerdiff.images(layout_path)} == {"good", "bad"}


def test_an_image_copied_again_into_a_layout_mends_a_blob_damaged_there(
    store: Layout, tmp_path: Path
) -> None:
    """A blob the target layout holds damaged (its size kept) is copied again when an image
    that needs it is tagged there, not taken as it is."""
    other = tmp_path / "other"
    assert run_cli("tag", "one:1", f"oci:{other}:1").returncode == 0
    digest = str(layerdiff.inspect("one:1")["manifest"]["layers"][-1]["digest"])
    blob = Layout.open(other).blob_path(digest)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0xFF
    blob.write_bytes(bytes(data))
    assert not layerdiff.fsck(f"oci:{other}").ok
    done = run_cli("tag", "one:1", f"oci:{other}:2")
    assert done.returncode == 0, done.stderr
    assert layerdiff.fsck(f"oci:{other}").ok


def test_fsck_takes_no_image_removed_while_it_is_checked_for_damage(
    store: Layout, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An rmi (and its gc) running while fsck reads the image it removes takes its blobs from
    under fsck: that is no damage of the store, and fsck passes; the others are still checked."""
    checking = importlib.import_module("layerdiff.fsck")  # the module, not the function
    real = checking._Checker.manifest

    def removed_meanwhile(self: Any, name: str, desc: Any) -> None:
        if name == "one:1":
            assert store.remove_tag("one:1")
            assert layerdiff.gc().blobs == 3
        real(self, name, desc)

    monkeypatch.setattr(checking._Checker, "manifest", removed_meanwhile)
    assert layerdiff.fsck().ok
    layer_blob("two:1").write_bytes(b"damaged")
    assert [p.where for p in layerdiff.fsck().problems] == ["two:1"]


def test_a_waiting_gc_goes_before_the_writers_that_come_after_it(store: Layout) -> None:
    """gc waits for the commands writing when it starts, not for every one that starts after
    it: under a steady stream of commits it would wait for ever."""
    from layerdiff.layout import writing

    stale = store.blobs_dir / ".tmp-layer-1-deadbeef"
    stale.write_bytes(b"what gc removes")
    seen: list[bool] = []
    release = threading.Event()
    holding = threading.Event()

    def first_writer() -> None:
        with writing(store):
            holding.set()
            release.wait(30)

    def later_writer() -> None:
        with writing(store):
            seen.append(stale.exists())

    threads = [threading.Thread(target=first_writer)]
    threads[0].start()
    assert holding.wait(30)
    threads.append(threading.Thread(target=layerdiff.gc))
    threads[1].start()
    time.sleep(0.5)  # gc is waiting for the first writer
    threads.append(threading.Thread(target=later_writer))
    threads[2].start()
    time.sleep(0.5)
    assert seen == []  # the later writer waits behind gc
    release.set()
    for t in threads:
        t.join(30)
    assert seen == [False]  # gc had run when it went on


def test_gc_reads_as_manifests_only_what_stands_where_manifests_do(tmp_path: Path) -> None:
    """A layer listed without a media type is not a manifest that cannot be read: gc still
    removes what nothing reaches."""
    layout = Layout.create(tmp_path / "lay")
    layer = layout.put_blob(os.urandom(4096), media_type="x")
    config = layout.put_blob(
        canonical_json({"rootfs": {"type": "layers", "diff_ids": [layer["digest"]]}}),
        media_type=CONFIG_MEDIA_TYPE,
    )
    bare = {"digest": layer["digest"], "size": layer["size"]}  # no mediaType
    manifest = {"schemaVersion": 2, "config": config, "layers": [bare]}
    layout.set_tag("1", layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE))
    junk = layout.put_blob(os.urandom(100), media_type="x")
    report = layerdiff.gc(f"oci:{tmp_path / 'lay'}")
    assert (report.blobs, report.unreadable) == (1, ())
    assert not layout.blob_path(junk["digest"]).exists()
    assert layout.blob_path(layer["digest"]).exists()
