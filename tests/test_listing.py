"""layerdiff images lists every image of a store or layout, also those it cannot read."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest

import layerdiff
from layerdiff.layout import Layout
from tests.conftest import run_cli
from tests.layouts import blob, tree
from tests.peers import skopeo_copy


def test_images_lists_the_healthy_and_warns_of_the_broken(tmp_path: Path) -> None:
    layout = tmp_path / "L"
    for name in ("one", "two"):
        layerdiff.commit(tree(tmp_path / name, name), image=f"oci:{layout}:{name}")
    broken = layerdiff.inspect(f"oci:{layout}:one")["digest"]
    healthy = layerdiff.inspect(f"oci:{layout}:two")["digest"]
    blob(layout, broken).unlink()

    proc = run_cli("images", f"oci:{layout}")
    assert proc.returncode == 0, proc.stderr
    header, *rows = proc.stdout.splitlines()
    assert header.split() == ["REPOSITORY", "TAG", "DIGEST", "CREATED", "LAYERS", "SIZE"]
    cells = {row.split()[1]: row.split() for row in rows}
    assert cells["one"] == [str(layout), "one", broken[7:19], "N/A", "N/A"]
    assert cells["two"][:3] == [str(layout), "two", healthy[7:19]]
    [warning] = proc.stderr.splitlines()
    assert warning.startswith(f"layerdiff: warning: oci:{layout}:one cannot be read (")
    assert warning.endswith(f"see layerdiff fsck oci:{layout}:one")

    proc = run_cli("images", "--json", f"oci:{layout}")
    assert proc.returncode == 0, proc.stderr
    listed = {i["tag"]: i for i in json.loads(proc.stdout)}
    assert listed["one"]["digest"] == broken
    assert listed["one"]["layers"] is None and listed["one"]["size"] is None
    assert "missing" in listed["one"]["error"]
    assert listed["two"]["error"] is None and listed["two"]["layers"] == 1


def test_images_of_the_store_lists_an_image_whose_config_is_gone(tmp_path: Path) -> None:
    layerdiff.commit(tree(tmp_path / "a", "a"), image="app:1")
    layerdiff.commit(tree(tmp_path / "b", "b"), image="app:2")
    config = layerdiff.inspect("app:1")["manifest"]["config"]["digest"]
    blob(Path(os.environ["LAYERDIFF_HOME"]) / "images", config).unlink()
    [one, two] = sorted(layerdiff.images(), key=lambda i: i.tag)
    assert (one.name, one.tag, one.created, one.layers, one.size) == ("app", "1", None, None, None)
    assert one.error is not None and config in one.error
    assert (two.tag, two.layers, two.error) == ("2", 1, None)
    proc = run_cli("images")
    assert proc.returncode == 0
    assert len(proc.stdout.splitlines()) == 3
    assert proc.stderr.splitlines()[0].endswith("see layerdiff fsck app:1")


needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")


@needs_skopeo
def test_images_shows_untagged_images(tmp_path: Path) -> None:
    """What `skopeo copy oci:A:2 oci:U` writes has no name; it is listed as <none>."""
    layerdiff.commit(tree(tmp_path / "a", "a"), image=f"oci:{tmp_path / 'A'}:2")
    skopeo_copy(f"oci:{tmp_path / 'A'}:2", f"oci:{tmp_path / 'U'}")
    layout = tmp_path / "U"
    digest = layerdiff.inspect(f"oci:{layout}")["digest"]
    [image] = layerdiff.images(layout)
    assert (image.name, image.tag, image.digest, image.layers) == (str(layout), "<none>", digest, 1)
    proc = run_cli("images", f"oci:{layout}")
    assert proc.returncode == 0, proc.stderr
    [_, row] = proc.stdout.splitlines()
    assert row.split()[:3] == [str(layout), "<none>", digest[7:19]]
    proc = run_cli("images", "--json", f"oci:{layout}")
    [entry] = json.loads(proc.stdout)
    assert entry["tag"] == "<none>" and entry["digest"] == digest


def test_images_of_the_store_shows_untagged_images(tmp_path: Path) -> None:
    layerdiff.commit(tree(tmp_path / "a", "a"), image="app:1")
    layerdiff.commit(tree(tmp_path / "b", "b"), image="app:2")
    store = Layout.open(Path(os.environ["LAYERDIFF_HOME"]) / "images")
    kept = store.resolve("app:1")
    store.remove_tag("app:1")
    store.update_index(lambda ms: [{k: v for k, v in kept.items() if k != "annotations"}, *ms])
    untagged, tagged = layerdiff.images()
    assert (untagged.name, untagged.tag) == ("<none>", "<none>")
    assert untagged.digest == kept["digest"] and untagged.layers == 1
    assert (tagged.name, tagged.tag) == ("app", "2")
    proc = run_cli("images")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1].split()[:3] == ["<none>", "<none>", kept["digest"][7:19]]
    # One that cannot be read is listed too, and the warning says which it is.
    blob(store.path, kept["digest"]).unlink()
    proc = run_cli("images")
    assert proc.returncode == 0 and len(proc.stdout.splitlines()) == 3
    [warning] = proc.stderr.splitlines()
    assert f"untagged image {kept['digest']} cannot be read" in warning
    assert warning.endswith("see layerdiff fsck")


def test_an_image_id_names_a_store_image_where_no_name_does(tmp_path: Path) -> None:
    """As docker takes an image ID (the digest ``images`` shows, 12 hex digits or more,
    ``sha256:`` optional) where an image name is expected: untagged images too."""
    layerdiff.commit(tree(tmp_path / "a", "a"), image="app:1")
    store = Layout.open(Path(os.environ["LAYERDIFF_HOME"]) / "images")
    kept = store.resolve("app:1")
    store.remove_tag("app:1")
    store.update_index(lambda ms: [{k: v for k, v in kept.items() if k != "annotations"}, *ms])
    digest = kept["digest"]
    for text in (digest[7:19], digest, digest[7:]):
        assert layerdiff.inspect(text)["digest"] == digest
        done = run_cli("history", text)
        assert done.returncode == 0 and "layerdiff commit" in done.stdout, done.stderr
    # tag names it again; unpack and squash take it as any image.
    done = run_cli("tag", digest[7:19], "named:1")
    assert done.returncode == 0, done.stderr
    assert layerdiff.inspect("named:1")["digest"] == digest
    layerdiff.unpack(digest[7:19], tmp_path / "out")
    assert (tmp_path / "out" / "etc" / "marker").read_text() == "a"
    # Too short, or nothing of that digest: not found, as before.
    for text in (digest[7:18], "0" * 12):
        done = run_cli("inspect", text)
        assert done.returncode == 1 and "image not found" in done.stderr
    # A name wins over an image ID that reads the same.
    layerdiff.commit(tree(tmp_path / "b", "b"), image=f"{digest[7:19]}:latest")
    assert layerdiff.inspect(digest[7:19])["digest"] != digest


def test_images_of_one_repository_or_tag_as_docker_lists_them(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`images REPOSITORY[:TAG]`: every tag of that repository (its name in any spelling), or
    one; `oci:PATH` stays a layout."""
    layerdiff.commit(tree(tmp_path / "a", "a"), image="team/app:1")
    layerdiff.tag("team/app:1", "team/app:2")
    layerdiff.tag("team/app:1", "other:1")

    def listed(*args: str) -> list[tuple[str, str]]:
        done = run_cli("images", "--json", *args)
        assert done.returncode == 0, done.stderr
        return [(i["name"], i["tag"]) for i in json.loads(done.stdout)]

    assert listed("team/app") == [("team/app", "1"), ("team/app", "2")]
    assert listed("docker.io/team/app:2") == [("team/app", "2")]
    assert listed("nothing") == []
    digest = layerdiff.inspect("team/app:1")["digest"]
    assert listed(f"team/app@{digest}") == [("team/app", "1"), ("team/app", "2")]
    (tmp_path / "export").mkdir()
    layerdiff.commit(tree(tmp_path / "b", "b"), image=f"oci:{tmp_path / 'export'}:1")
    monkeypatch.chdir(tmp_path)
    hinted = run_cli("images", "export")
    assert hinted.returncode == 2 and "oci:export" in hinted.stderr, hinted.stderr
    assert ("other", "1") in listed()
    bad = run_cli("images", "Not/Valid!")
    assert bad.returncode == 1 and "not a valid image name" in bad.stderr


def test_images_lists_the_newest_first_as_docker_does(tmp_path: Path) -> None:
    """Newest first, whatever the index order; images made at the same time keep it, and one
    that cannot be read comes last."""
    for name, epoch in (
        ("old:1", 1_000_000_000),
        ("new:1", 1_700_000_000),
        ("mid:1", 1_500_000_000),
    ):
        layerdiff.commit(tree(tmp_path / name, name), image=name, source_date_epoch=epoch)
    layerdiff.tag("old:1", "old:2")
    layerdiff.tag("new:1", "new:2")
    done = run_cli("images", "--json")
    assert done.returncode == 0, done.stderr
    order = [f"{i['name']}:{i['tag']}" for i in json.loads(done.stdout)]
    assert order == ["new:1", "new:2", "mid:1", "old:1", "old:2"]
    config = layerdiff.inspect("mid:1")["manifest"]["config"]["digest"]
    (Path(os.environ["LAYERDIFF_HOME"]) / "images" / "blobs" / "sha256" / config[7:]).unlink()
    done = run_cli("images")
    assert [line.split()[0] for line in done.stdout.splitlines()[1:]] == [
        "new",
        "new",
        "old",
        "old",
        "mid",
    ]
