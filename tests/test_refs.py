"""Image reference parsing: table-driven over every form and the malformed ones."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import layerdiff
from layerdiff.errors import InvalidReferenceError
from layerdiff.refs import (
    ArchiveRef,
    LayoutRef,
    RegistryRef,
    parse_layout_reference,
    parse_reference,
    store_home,
    store_layout_path,
)


@pytest.mark.parametrize(
    ("text", "layout", "tag"),
    [
        ("oci:out", "out", None),
        ("oci:out:v1", "out", "v1"),
        ("oci:/srv/images:latest", "/srv/images", "latest"),
        ("oci:./a/b", "./a/b", None),
        # A ':' followed by something that is not a tag belongs to the path.
        ("oci:/srv/a:b/c", "/srv/a:b/c", None),
        # The last ':' splits when a tag follows, so a path may hold ':' when tagged.
        ("oci:/srv/a:b:v2", "/srv/a:b", "v2"),
        ("oci:x:Tag_1.2-rc", "x", "Tag_1.2-rc"),
    ],
)
def test_oci(text: str, layout: str, tag: str | None) -> None:
    ref = parse_reference(text)
    assert ref == LayoutRef(text=text, layout=Path(layout), tag=tag, in_store=False)


def test_oci_write_tag_defaults_to_latest() -> None:
    assert parse_layout_reference("oci:out").write_tag == "latest"
    assert parse_layout_reference("oci:out:v1").write_tag == "v1"


@pytest.mark.parametrize(
    ("text", "tag"),
    [
        ("busybox", "busybox:latest"),
        ("busybox:1.36", "busybox:1.36"),
        # Docker Hub names in docker's familiar form, as docker shows and matches them.
        ("library/busybox", "busybox:latest"),
        ("docker.io/library/busybox:1.36", "busybox:1.36"),
        ("docker.io/busybox", "busybox:latest"),
        ("index.docker.io/library/busybox", "busybox:latest"),
        ("docker.io/foo/bar:1", "foo/bar:1"),
        ("docker.io/library/a/b", "library/a/b:latest"),
        ("quay.io/library/busybox", "quay.io/library/busybox:latest"),
        ("localhost/busybox", "localhost/busybox:latest"),
        ("my-app/web_server.v2:rc1", "my-app/web_server.v2:rc1"),
        ("localhost:5000/app", "localhost:5000/app:latest"),
        ("localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("registry.example.com/team/app:v1", "registry.example.com/team/app:v1"),
        ("a__b", "a__b:latest"),
        ("a---b", "a---b:latest"),
        # Pinned by digest: docker's NAME@DIGEST, a tag beside it not looked at.
        ("app@sha256:" + "a" * 64, "app@sha256:" + "a" * 64),
        ("docker.io/library/app:1@sha256:" + "a" * 64, "app@sha256:" + "a" * 64),
        ("localhost:5000/app@sha256:" + "a" * 64, "localhost:5000/app@sha256:" + "a" * 64),
    ],
)
def test_store(text: str, tag: str) -> None:
    ref = parse_reference(text)
    assert isinstance(ref, LayoutRef)
    assert ref.in_store
    assert ref.tag == tag
    assert ref.layout == store_layout_path()


@pytest.mark.parametrize(
    ("text", "host", "repository", "tag", "digest"),
    [
        ("docker://busybox", "docker.io", "library/busybox", "latest", None),
        ("docker://index.docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker://index.docker.io/user/app", "docker.io", "user/app", "latest", None),
        ("docker://docker.io/busybox", "docker.io", "library/busybox", "latest", None),
        ("docker://user/app:v1", "docker.io", "user/app", "v1", None),
        ("docker://localhost:5000/app", "localhost:5000", "app", "latest", None),
        ("docker://quay.io/org/app:v1", "quay.io", "org/app", "v1", None),
        ("docker://Host/app", "Host", "app", "latest", None),
        ("docker://r.example:443/a/b:c", "r.example:443", "a/b", "c", None),
        ("docker://quay.io/a@sha256:" + "a" * 64, "quay.io", "a", None, "sha256:" + "a" * 64),
        ("docker://quay.io/a:t@sha256:" + "b" * 64, "quay.io", "a", "t", "sha256:" + "b" * 64),
    ],
)
def test_docker(text: str, host: str, repository: str, tag: str | None, digest: str | None) -> None:
    assert parse_reference(text) == RegistryRef(
        text=text, host=host, repository=repository, tag=tag, digest=digest
    )


@pytest.mark.parametrize(
    ("text", "file", "name", "tag"),
    [
        ("docker-archive:img.tar", "img.tar", None, None),
        ("docker-archive:/tmp/img.tar:app:v1", "/tmp/img.tar", "app", "v1"),
        ("docker-archive:img.tar:app", "img.tar", "app", "latest"),
        ("docker-archive:img.tar:localhost:5000/app:v1", "img.tar", "localhost:5000/app", "v1"),
        ("docker-archive:img.tar:docker.io/library/app:v1", "img.tar", "app", "v1"),
    ],
)
def test_docker_archive(text: str, file: str, name: str | None, tag: str | None) -> None:
    assert parse_reference(text) == ArchiveRef(text=text, file=Path(file), name=name, tag=tag)


@pytest.mark.parametrize(
    "text",
    [
        "",
        " busybox",
        "busybox ",
        "Busybox",  # upper case is not allowed in repository names
        "bad name",
        "app:",  # empty tag
        "app:-x",  # a tag cannot start with '-'
        "app:" + "x" * 129,  # tags are at most 128 characters
        "a" * 256,
        "-app",
        "app/",
        "/app",
        "a//b",
        "app@sha256:zz",
        "docker://quay.io/a@sha256:" + "a" * 40,  # a sha256 has 64 hex digits
        "docker://quay.io/a@sha256:" + "A" * 64,  # in lower case
        "app@sha256:" + "A" * 64,  # the store's digests are lowercase sha256
        "app@sha512:" + "a" * 128,
        "oci:",
        "oci::v1",
        "oci:/srv/x:bad tag",  # after the last ':' and no '/' after it: a tag, and not valid
        "oci:/srv/x:",
        "oci:/srv/x:-v1",
        "oci:/srv/x:v1:",
        "app:t\u00e4g",  # tags are ASCII
        "oci:x:t\u00e4g",
        "docker://",
        "docker://app/UPPER",
        "docker://app:bad tag",
        "docker-archive:",
        "docker-archive::app:v1",
        "docker-archive:x.tar:Bad",
        "oci-archive:/tmp/x.tar",
        "containers-storage:foo/bar",
        "line\nbreak",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(InvalidReferenceError) as info:
        parse_reference(text)
    message = str(info.value)
    assert "\n" not in message
    assert repr(text) in message


def test_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        parse_reference("Bad")


def test_layout_reference_refuses_remote() -> None:
    with pytest.raises(InvalidReferenceError, match="only oci:PATH"):
        parse_layout_reference("docker://busybox")
    with pytest.raises(InvalidReferenceError, match="only oci:PATH"):
        parse_layout_reference("docker-archive:x.tar")


def test_transport_wins_over_store_name() -> None:
    assert isinstance(parse_reference("oci:latest"), LayoutRef)
    assert parse_layout_reference("oci:latest").in_store is False
    # Without a transport that exists, NAME:TAG is a store image even if NAME is a transport.
    ref = parse_layout_reference("dir:v1")
    assert ref.in_store and ref.tag == "dir:v1"


def test_store_home(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LAYERDIFF_HOME", str(tmp_path / "h"))
    assert store_home() == tmp_path / "h"
    assert store_layout_path() == tmp_path / "h" / "images"
    monkeypatch.delenv("LAYERDIFF_HOME")
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert store_home() == tmp_path / "xdg" / "layerdiff"
    monkeypatch.setenv("XDG_DATA_HOME", "relative/ignored")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert store_home() == tmp_path / "home" / ".local" / "share" / "layerdiff"
    monkeypatch.delenv("XDG_DATA_HOME")
    assert store_home() == tmp_path / "home" / ".local" / "share" / "layerdiff"


@pytest.mark.parametrize(
    ("source", "stored"),
    [
        ("docker://busybox:1", "busybox:1"),
        ("docker://docker.io/library/busybox:1", "busybox:1"),
        ("docker://index.docker.io/user/app:v2", "user/app:v2"),
        ("docker://localhost:5000/app:v1", "localhost:5000/app:v1"),
        ("docker://quay.io/org/app:v1", "quay.io/org/app:v1"),
    ],
)
def test_pull_stores_under_the_familiar_name(source: str, stored: str) -> None:
    """The name a pull without a target gives the image, and reports: docker's short form."""
    from layerdiff.remote import _default_name

    ref = parse_reference(source)
    assert isinstance(ref, RegistryRef)
    assert _default_name(ref) == stored
    local = parse_reference(stored)
    assert isinstance(local, LayoutRef) and local.tag == stored


def test_an_oci_tag_holding_a_colon_is_read_as_skopeo_reads_it(tmp_path: Path) -> None:
    """skopeo splits `oci:PATH:REF` at the first ':', and a reference name may hold ':' and
    '/': where a layout stands before a ':', the rest is its tag, so the store's own images
    (tagged NAME:TAG) are reached as `oci:STORE:NAME:TAG`, the same image skopeo finds."""
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / "f").write_text("x")
    layerdiff.commit(tmp_path / "t", image="app:2")
    store = store_layout_path()
    ref = parse_layout_reference(f"oci:{store}:app:2")
    assert (ref.layout, ref.tag) == (store, "app:2")
    digest = layerdiff.inspect(f"oci:{store}:app:2")["digest"]
    assert digest == layerdiff.inspect("app:2")["digest"]
    nested = parse_layout_reference(f"oci:{store}:team/app:2")
    assert (nested.layout, nested.tag) == (store, "team/app:2")
    # Without a layout before the first ':', the last one splits, as before.
    assert parse_layout_reference(f"oci:{tmp_path}/a:b:v1").layout == tmp_path / "a:b"
    # A reference that named a layout keeps naming it once a layout appears at a prefix.
    layerdiff.commit(tmp_path / "t", image=f"oci:{tmp_path}/out:app:2")
    first = layerdiff.inspect(f"oci:{tmp_path}/out:app:2")["digest"]
    (tmp_path / "t" / "g").write_text("y")
    layerdiff.commit(tmp_path / "t", image=f"oci:{tmp_path}/out:v1")
    assert layerdiff.inspect(f"oci:{tmp_path}/out:app:2")["digest"] == first
    # In the store's layout, the rest is a store name, with the store's rules.
    with pytest.raises(InvalidReferenceError):
        layerdiff.commit(tmp_path / "t", image=f"oci:{store}:sha256:{'a' * 64}")
    layerdiff.commit(tmp_path / "t", image=f"oci:{store}:docker.io/library/lib:1")
    assert ("lib", "1") in [(i.name, i.tag) for i in layerdiff.images()]
    if shutil.which("skopeo"):
        seen = subprocess.run(
            ["skopeo", "inspect", f"oci:{store}:app:2"], capture_output=True, text=True, check=True
        )
        assert json.loads(seen.stdout)["Digest"] == digest
