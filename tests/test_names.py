"""Names of images: rmi removes a name whatever state its image is in."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

import layerdiff
from layerdiff.layout import Layout
from tests.conftest import run_cli


def tree(root: Path, marker: str) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "marker").write_text(marker)
    return root


def blob(layout: Path, digest: str) -> Path:
    return layout / "blobs" / "sha256" / digest.removeprefix("sha256:")


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
