"""Names of images: rmi removes a name whatever state its image is in; the store knows a
Docker Hub name by all its spellings, as docker does."""

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


@pytest.mark.parametrize("lost", ["manifest", "config"])
def test_rmi_removes_the_name_of_a_broken_image(tmp_path: Path, lost: str) -> None:
    layout = tmp_path / "L"
    for name in ("one", "two"):
        layerdiff.commit(tree(tmp_path / name, name), image=f"oci:{layout}:{name}")
    info = layerdiff.inspect(f"oci:{layout}:one")
    digest = info["digest"] if lost == "manifest" else info["manifest"]["config"]["digest"]
    blob(layout, digest).unlink()
    # A name that does not exist is still an error, and nothing is removed then.
    proc = run_cli("rmi", f"oci:{layout}:one", f"oci:{layout}:ghost")
    assert proc.returncode == 1 and f"oci:{layout}:ghost" in proc.stderr
    assert "(no image was removed)" in proc.stderr
    assert sorted(Layout.open(layout).tags()) == ["one", "two"]

    proc = run_cli("rmi", f"oci:{layout}:one")
    assert proc.returncode == 0, proc.stderr
    assert f"untagged oci:{layout}:one ({info['digest']})" in proc.stdout
    assert Layout.open(layout).tags() == ["two"]
    assert layerdiff.fsck(f"oci:{layout}").ok  # gc took what only the broken image reached


def test_untag_of_a_broken_store_image(tmp_path: Path) -> None:
    layerdiff.commit(tree(tmp_path / "a", "a"), image="app:1")
    digest = layerdiff.inspect("app:1")["digest"]
    blob(Path(os.environ["LAYERDIFF_HOME"]) / "images", digest).unlink()
    assert layerdiff.untag("app:1") == digest
    assert layerdiff.images() == []
    with pytest.raises(layerdiff.ImageNotFoundError, match="app:1"):
        layerdiff.untag("app:1")


needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")


@needs_skopeo
def test_a_loaded_docker_hub_name_is_found_by_its_short_form(tmp_path: Path) -> None:
    """skopeo writes RepoTags fully qualified (docker.io/foo/bar:1); docker says foo/bar:1."""
    layerdiff.commit(tree(tmp_path / "a", "a"), image=f"oci:{tmp_path / 'A'}:2")
    archive = tmp_path / "s.tar"
    skopeo_copy(f"oci:{tmp_path / 'A'}:2", f"docker-archive:{archive}:foo/bar:1")
    proc = run_cli("load", str(archive))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split()[0] == "foo/bar:1"
    digest = layerdiff.inspect(f"oci:{tmp_path / 'A'}:2")["manifest"]["config"]["digest"]
    for name in ("foo/bar:1", "docker.io/foo/bar:1", "index.docker.io/foo/bar:1"):
        proc = run_cli("inspect", name)
        assert proc.returncode == 0, proc.stderr
        assert json.loads(proc.stdout)["manifest"]["config"]["digest"] == digest
    assert [(i.name, i.tag) for i in layerdiff.images()] == [("foo/bar", "1")]
    # The archive's image is named by either form too.
    for name in ("foo/bar:1", "docker.io/foo/bar:1"):
        assert layerdiff.load(f"docker-archive:{archive}:{name}").images == ("foo/bar:1",)


def test_docker_hub_names_are_one_name_in_the_store(tmp_path: Path) -> None:
    layerdiff.commit(tree(tmp_path / "a", "a"), image="docker.io/library/app:1")
    digest = layerdiff.inspect("app:1")["digest"]
    layerdiff.tag("library/app:1", "docker.io/team/app:2")
    assert [(i.name, i.tag) for i in layerdiff.images()] == [("app", "1"), ("team/app", "2")]
    for name in ("app:1", "library/app:1", "docker.io/app:1", "docker.io/library/app:1"):
        assert layerdiff.inspect(name)["digest"] == digest
    assert layerdiff.inspect("team/app:2")["digest"] == digest
    archive = tmp_path / "app.tar"
    assert layerdiff.save("docker.io/library/app:1", f"docker-archive:{archive}").repo_tags == (
        "app:1",
    )
    proc = run_cli("rmi", "docker.io/library/app:1", "docker.io/team/app:2")
    assert proc.returncode == 0, proc.stderr
    assert layerdiff.images() == []


def test_a_store_name_written_in_full_is_found_by_its_short_form(tmp_path: Path) -> None:
    """A store may hold names an earlier version wrote as given (docker.io/foo/bar:1)."""
    layerdiff.commit(tree(tmp_path / "a", "a"), image="foo/bar:1")
    store = Layout.open(Path(os.environ["LAYERDIFF_HOME"]) / "images")
    descriptor = store.resolve("foo/bar:1")
    store.remove_tag("foo/bar:1")
    store.set_tag("docker.io/foo/bar:1", descriptor)
    for name in ("foo/bar:1", "docker.io/foo/bar:1"):
        assert layerdiff.inspect(name)["digest"] == descriptor["digest"]
    assert layerdiff.fsck("foo/bar:1").images == 1
    assert run_cli("rmi", "foo/bar:1").returncode == 0
    assert store.tags() == []


def test_names_that_would_hide_an_image_id_are_refused(tmp_path: Path) -> None:
    """As docker tag refuses them: `sha256:<64 hex>` and a 64-hex name read as image IDs."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("x")
    layerdiff.commit(tmp_path / "t", image="a:1")
    digest = layerdiff.inspect("a:1")["digest"]
    hexa = "b" * 64
    for name in (f"sha256:{hexa}", hexa):
        done = run_cli("tag", "a:1", name)
        assert done.returncode == 1 and "would hide an image ID" in done.stderr, (name, done)
    assert [(i.name, i.tag) for i in layerdiff.images()] == [("a", "1")]
    # A longer name cannot be read as an ID: taken, as docker takes it (and pull stores it).
    assert run_cli("tag", "a:1", f"team/{hexa}:1").returncode == 0
    assert layerdiff.inspect(digest)["digest"] == digest
