"""Layouts and archives other tools write: artifacts beside images, multi-platform indexes,
names several images share (a layout docker 25 saves), a layer without its last padding, and
what gc and fsck make of them."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from layerdiff.image import canonical_json
from layerdiff.layout import REF_NAME, Layout
from tests.conftest import run_cli

EMPTY = "application/vnd.oci.empty.v1+json"
MANIFEST = "application/vnd.oci.image.manifest.v1+json"
INDEX = "application/vnd.oci.image.index.v1+json"


def image_in(layout: Path, tmp_path: Path, tag: str, content: str) -> dict[str, object]:
    """A one-layer image of a file holding ``content``, tagged ``tag`` in ``layout``; its
    index entry."""
    tree = tmp_path / f"tree-{tag}-{content}"
    tree.mkdir()
    (tree / "f").write_text(content)
    layerdiff.commit(tree, image=f"oci:{layout}:{tag}")
    return Layout.open(layout).resolve(tag)


def blob_names(layout: Path) -> set[str]:
    return {p.name for p in (layout / "blobs" / "sha256").iterdir()}


def test_artifacts_are_kept_by_gc_and_pass_fsck(tmp_path: Path) -> None:
    """A signature or chart (a manifest whose config is not an image's), an OCI 1.1 draft
    artifact manifest (its blobs under `blobs`) and a referrer (`subject`): gc keeps all they
    name, fsck checks their blobs and nothing of an image's rules."""
    path = tmp_path / "l"
    subject = image_in(path, tmp_path, "app", "a")
    layout = Layout.open(path)
    payload = layout.put_blob(b"signature bytes", media_type="application/octet-stream")
    config = layout.put_blob(b"{}", media_type=EMPTY)
    signature = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "artifactType": "application/vnd.example.signature",
        "config": config,
        "layers": [payload],
        "subject": subject,
    }
    layout.set_tag("sig", layout.put_blob(canonical_json(signature), media_type=MANIFEST))
    draft_blob = layout.put_blob(b"draft artifact", media_type="application/octet-stream")
    draft = {
        "mediaType": "application/vnd.oci.artifact.manifest.v1+json",
        "artifactType": "application/vnd.example",
        "blobs": [draft_blob],
    }
    layout.set_tag(
        "draft",
        layout.put_blob(
            canonical_json(draft), media_type="application/vnd.oci.artifact.manifest.v1+json"
        ),
    )
    before = blob_names(path)
    assert layerdiff.fsck(f"oci:{path}").ok, layerdiff.fsck(f"oci:{path}").problems
    assert run_cli("gc", f"oci:{path}").returncode == 0
    assert blob_names(path) == before
    # Their blobs are checked all the same.
    damaged = layout.blob_path(str(draft_blob["digest"]))
    damaged.write_bytes(b"draft artifacT")
    problems = [str(p) for p in layerdiff.fsck(f"oci:{path}").problems]
    assert len(problems) == 1 and str(draft_blob["digest"]) in problems[0], problems


def test_rmi_of_a_name_several_images_share_is_refused(tmp_path: Path) -> None:
    """A layout docker 25 saves names each image by its tag alone: two images both `latest`.
    Removing `latest` would take both, and gc their blobs: refused, nothing changed."""
    path = tmp_path / "l"
    image_in(path, tmp_path, "latest", "one")
    second = image_in(tmp_path / "other", tmp_path, "latest", "two")
    layout = Layout.open(path)
    for digest in [second["digest"], second["digest"]]:
        layout.import_blob(Layout.open(tmp_path / "other"), str(digest))
    other = Layout.open(tmp_path / "other")
    manifest = other.read_json(second)
    for desc in [manifest["config"], *manifest["layers"]]:
        layout.import_blob(other, str(desc["digest"]))
    layout.update_index(
        lambda ms: [*ms, {**second, "annotations": {REF_NAME: "latest", "x": "two"}}]
    )
    index = (path / "index.json").read_bytes()
    blobs = blob_names(path)
    done = run_cli("rmi", f"oci:{path}:latest")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "2 images are tagged 'latest'" in done.stderr, done.stderr
    assert (path / "index.json").read_bytes() == index
    assert blob_names(path) == blobs
    # Nor is either read by that name, as umoci refuses it: which one is meant is unknown.
    shown = run_cli("inspect", f"oci:{path}:latest")
    assert shown.returncode == 1 and "2 images are tagged 'latest'" in shown.stderr
    # fsck says so: a name no command can use.
    report = layerdiff.fsck(f"oci:{path}")
    assert [p.where for p in report.problems] == ["latest"], report.problems
    assert "the tag names 2 images" in report.problems[0].what


def test_a_multi_platform_image_is_tagged_whole_in_its_layout(tmp_path: Path) -> None:
    """As docker tag and umoci tag: the new name is the index's, so removing the old name
    keeps every platform."""
    path = tmp_path / "l"
    amd = image_in(path, tmp_path, "amd", "a")
    arm = image_in(path, tmp_path, "arm", "b")
    layout = Layout.open(path)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {**_plain(amd), "platform": {"os": "linux", "architecture": "amd64"}},
            {**_plain(arm), "platform": {"os": "linux", "architecture": "arm64"}},
        ],
    }
    entry = layout.put_blob(canonical_json(index), media_type=INDEX)
    layout.set_tag("multi", entry)
    for tag in ("amd", "arm"):
        layout.remove_tag(tag)
    tagged = run_cli("tag", f"oci:{path}:multi", f"oci:{path}:copy")
    assert tagged.returncode == 0 and tagged.stdout == f"{entry['digest']}\n", tagged
    assert layout.resolve("copy")["digest"] == entry["digest"]
    assert run_cli("rmi", f"oci:{path}:multi").returncode == 0
    assert layerdiff.fsck(f"oci:{path}").ok
    assert {str(amd["digest"])[7:], str(arm["digest"])[7:]} <= blob_names(path)


def _plain(desc: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in desc.items() if k != "annotations"}


@pytest.mark.root
def test_gc_of_any_layout_keeps_the_images_containers_were_made_from(
    tmp_path: Path, store_home: Path
) -> None:
    if not Path("/bin/busybox").is_file():
        pytest.skip("needs busybox-static")
    from tests.containers import busybox_rootfs

    path = tmp_path / "l"
    root = busybox_rootfs(tmp_path / "rootfs")
    layerdiff.commit(root, image=f"oci:{path}:1", changes=['CMD ["sh"]'])
    made = run_cli("create", "--name", "c", f"oci:{path}:1", "--", "sh", "-c", "echo x > /x")
    assert made.returncode == 0, made.stderr
    blobs = blob_names(path)
    forced = run_cli("rmi", "-f", f"oci:{path}:1")
    assert forced.returncode == 0, forced.stderr
    assert blob_names(path) == blobs
    # What went is told by kind: the bytes of cached layers are not blobs'.
    assert "removed 0 blobs, 0 cached layers and 0 temporary files" in forced.stdout
    assert run_cli("start", "c").returncode == 0
    done = run_cli("commit", "--progress", "none", "c", "c:1")
    assert done.returncode == 0, done.stderr
    assert run_cli("rm", "c").returncode == 0
    assert run_cli("gc", f"oci:{path}").returncode == 0
    assert blob_names(path) == set()


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")
def test_load_of_one_name_of_an_archive_entry_tags_that_name_alone(tmp_path: Path) -> None:
    image_in(tmp_path / "l", tmp_path, "1", "a")
    archive = tmp_path / "a.tar"
    copied = subprocess.run(
        [
            "skopeo",
            "copy",
            "--additional-tag",
            "second/img:2",
            f"oci:{tmp_path / 'l'}:1",
            f"docker-archive:{archive}:first/img:1",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert copied.returncode == 0, copied.stderr
    done = run_cli("load", f"docker-archive:{archive}:second/img:2")
    assert done.returncode == 0, done.stderr
    assert [(i.name, i.tag) for i in layerdiff.images()] == [("second/img", "2")]


def test_json_nested_too_deep_is_a_one_line_error(tmp_path: Path) -> None:
    path = tmp_path / "l"
    image_in(path, tmp_path, "1", "a")
    (path / "index.json").write_text("[" * 200_000)
    for args in (["images", f"oci:{path}"], ["fsck", f"oci:{path}"]):
        done = run_cli(*args)
        assert done.returncode == 1, done.stderr
        assert done.stderr.count("\n") == 1 and "internal error" not in done.stderr


def test_a_layer_ending_right_after_its_last_content_applies(tmp_path: Path) -> None:
    """Older `umoci insert` ends a layer right after its last file's content: no padding, no
    end marker. Docker and containerd (Go's archive/tar) read it whole."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_bytes(b"x" * 1000)
    tar = tmp_path / "full.tar"
    with tarfile.open(tar, "w", format=tarfile.USTAR_FORMAT) as t:
        t.add(tree / "f", arcname="f")
    data = tar.read_bytes()
    cut = tmp_path / "cut.tar"
    cut.write_bytes(data[: 512 + 1000])
    (tmp_path / "out").mkdir()
    done = run_cli("apply", "--to", str(tmp_path / "out"), str(cut))
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out" / "f").read_bytes() == b"x" * 1000
    (tmp_path / "out2").mkdir()
    half = tmp_path / "half.tar"
    half.write_bytes(data[: 512 + 1000 + 10])  # the padding cut short: truncated
    assert run_cli("apply", "--to", str(tmp_path / "out2"), str(half)).returncode == 1


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_a_zstd_compressed_archive_loads_as_docker_load_takes_it(tmp_path: Path) -> None:
    image_in(tmp_path / "l", tmp_path, "1", "a")
    archive = tmp_path / "a.tar"
    layerdiff.save(f"oci:{tmp_path / 'l'}:1", f"docker-archive:{archive}:z/img:1")
    subprocess.run(["zstd", "-q", str(archive), "-o", str(tmp_path / "a.tar.zst")], check=True)
    done = run_cli("load", str(tmp_path / "a.tar.zst"))
    assert done.returncode == 0, done.stderr
    assert [(i.name, i.tag) for i in layerdiff.images()] == [("z/img", "1")]
    damaged = bytearray((tmp_path / "a.tar.zst").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "bad.tar.zst").write_bytes(bytes(damaged))
    bad = run_cli("load", str(tmp_path / "bad.tar.zst"), "z/img:2")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1, bad.stderr


def test_a_layout_without_its_index_is_reported_as_such(tmp_path: Path) -> None:
    (tmp_path / "l").mkdir()
    (tmp_path / "l" / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (tmp_path / "t").mkdir()
    done = run_cli("commit", "--upper", str(tmp_path / "t"), f"oci:{tmp_path / 'l'}:1")
    assert done.returncode == 1 and done.stderr.count("\n") == 1
    assert "index.json: missing; not an OCI image layout" in done.stderr, done.stderr


@pytest.mark.root
def test_rmi_keeps_a_multi_platform_image_a_container_was_made_from(
    tmp_path: Path, store_home: Path
) -> None:
    if not Path("/bin/busybox").is_file():
        pytest.skip("needs busybox-static")
    from layerdiff.image import go_arch
    from tests.containers import busybox_rootfs

    path = tmp_path / "l"
    layerdiff.commit(busybox_rootfs(tmp_path / "rootfs"), image=f"oci:{path}:native")
    foreign = image_in(path, tmp_path, "foreign", "f")
    layout = Layout.open(path)
    native = layout.resolve("native")
    arch = go_arch()[0]
    other = "s390x" if arch != "s390x" else "arm64"
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {**_plain(native), "platform": {"os": "linux", "architecture": arch}},
            {**_plain(foreign), "platform": {"os": "linux", "architecture": other}},
        ],
    }
    layout.set_tag("multi", layout.put_blob(canonical_json(index), media_type=INDEX))
    for tag in ("native", "foreign"):
        layout.remove_tag(tag)
    made = run_cli("create", "--name", "m", f"oci:{path}:multi", "--", "true")
    assert made.returncode == 0, made.stderr
    refused = run_cli("rmi", f"oci:{path}:multi")
    assert refused.returncode == 1 and "container m was made from it" in refused.stderr
    assert layout.tags() == ["multi"]
    # Another name that reaches the container's manifest, the index's or the manifest's own:
    # then a name can go, as docker untags it; the last one cannot.
    layout.set_tag("again", _plain(layout.resolve("multi")))
    layout.set_tag("just-mine", _plain(native))
    assert run_cli("rmi", f"oci:{path}:multi").returncode == 0
    assert run_cli("rmi", f"oci:{path}:again").returncode == 0
    refused = run_cli("rmi", f"oci:{path}:just-mine")
    assert refused.returncode == 1 and "container m was made from it" in refused.stderr


def test_a_layouts_index_is_read_by_the_rules_pull_follows(tmp_path: Path) -> None:
    """inspect, run and tag pick from a layout's index as pull picks from a registry's:
    names normalised (`x86_64` is amd64), the CPU's amd64 level preferred."""
    from layerdiff.image import go_arch
    from layerdiff.platforms import parse_platform

    if go_arch()[0] != "amd64":
        pytest.skip("the cases are amd64's")
    path = tmp_path / "l"
    plain = image_in(path, tmp_path, "plain", "p")
    leveled = image_in(path, tmp_path, "v2", "v")
    other = image_in(path, tmp_path, "arm", "a")
    layout = Layout.open(path)
    index = {
        "schemaVersion": 2,
        "mediaType": INDEX,
        "manifests": [
            {**_plain(other), "platform": {"os": "linux", "architecture": "arm64"}},
            {**_plain(plain), "platform": {"os": "Linux", "architecture": "x86_64"}},
            {
                **_plain(leveled),
                "platform": {"os": "linux", "architecture": "amd64", "variant": "v2"},
            },
        ],
    }
    layout.set_tag("multi", layout.put_blob(canonical_json(index), media_type=INDEX))
    level = parse_platform(None)[2]
    want = leveled if level in ("v2", "v3", "v4") else plain
    assert layerdiff.inspect(f"oci:{path}:multi")["digest"] == want["digest"]


@pytest.mark.parametrize(
    "broken",
    [
        {"config": {"mediaType": ["x"]}},
        {"layers": ["x", 1]},
        {"layers": 5},
        {"manifests": ["x"]},
        "nested",
    ],
)
def test_fsck_and_images_name_a_malformed_image_and_go_on(tmp_path: Path, broken: object) -> None:
    path = tmp_path / "l"
    good = image_in(path, tmp_path, "good", "g")
    layout = Layout.open(path)
    if broken == "nested":
        body = b"[" * 100_000
    else:
        manifest = layout.read_json(good)
        assert isinstance(broken, dict)
        if "config" in broken:
            broken = {"config": {**manifest["config"], **broken["config"]}}
        body = canonical_json({**manifest, **broken})
    layout.set_tag("bad", layout.put_blob(body, media_type=MANIFEST))
    done = run_cli("fsck", f"oci:{path}")
    assert done.returncode == 1, done.stderr
    assert "internal error" not in done.stdout + done.stderr
    assert "bad:" in done.stdout + done.stderr and "good:" not in done.stdout + done.stderr
    listed = run_cli("images", "--json", f"oci:{path}")
    assert listed.returncode == 0, listed.stderr
    assert sorted(i["tag"] for i in json.loads(listed.stdout)) == ["bad", "good"]


@pytest.mark.parametrize(
    ("edit", "said"),
    [
        ({"layers": [1]}, "layers[0] must be a descriptor"),
        ({"layer": {"mediaType": None}}, "layers[0] has no media type"),
        ({"layer": {"size": -1}}, "layers[0] has no size"),
        ({"config": {"created": 5}}, "created must be a string"),
        ({"config": {"history": [1, 2]}}, "history must be a list of objects"),
        ({"config": {"rootfs": None}}, "rootfs.diff_ids must be a list"),
    ],
)
def test_an_image_of_the_wrong_shape_is_a_one_line_error_everywhere(
    tmp_path: Path, edit: dict[str, Any], said: str
) -> None:
    """JSON of the wrong shape in a manifest or config (a number where a descriptor goes, a
    size of -1, a created time that is no string) is the same one-line error from every
    command that reads the image, and `images` still lists the others."""
    path = tmp_path / "l"
    good = image_in(path, tmp_path, "good", "g")
    layout = Layout.open(path)
    manifest = layout.read_json(good)
    if "config" in edit:
        config = {**layout.read_json(manifest["config"]), **edit["config"]}
        manifest["config"] = layout.put_blob(
            canonical_json(config), media_type=manifest["config"]["mediaType"]
        )
    elif "layer" in edit:
        layer = {
            k: v for k, v in {**manifest["layers"][0], **edit["layer"]}.items() if v is not None
        }
        manifest["layers"] = [layer]
    else:
        manifest.update(edit)
    layout.set_tag("bad", layout.put_blob(canonical_json(manifest), media_type=MANIFEST))
    bad = f"oci:{path}:bad"
    for args in (
        ["inspect", bad],
        ["history", bad],
        ["tag", bad, f"oci:{tmp_path / 'other'}:x"],
        ["unpack", bad, str(tmp_path / "out")],
        ["squash", bad, f"oci:{tmp_path / 'sq'}:x"],
        ["save", bad, str(tmp_path / "a.tar")],
        ["commit", "--from", bad, "--upper", str(tmp_path / "tree-good-g"), "x:1"],
    ):
        done = run_cli(*args)
        assert done.returncode == 1, (args, done.stderr)
        assert done.stderr.count("\n") == 1 and said in done.stderr, (args, done.stderr)
    listed = run_cli("images", f"oci:{path}")
    assert listed.returncode == 0 and said in listed.stderr, listed.stderr
    assert "good" in listed.stdout and "bad" in listed.stdout


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs zstd")
def test_load_reads_standard_input_as_docker_load_does(tmp_path: Path) -> None:
    image_in(tmp_path / "l", tmp_path, "1", "a")
    archive = tmp_path / "a.tar"
    layerdiff.save(f"oci:{tmp_path / 'l'}:1", f"docker-archive:{archive}:in/img:1")
    packed = subprocess.run(
        ["zstd", "-q", "-c", str(archive)], capture_output=True, check=True
    ).stdout
    for data, name in [(archive.read_bytes(), "in/img:plain"), (packed, "in/img:zstd")]:
        done = subprocess.run(
            [sys.executable, "-m", "layerdiff", "load", "-", name],
            input=data,
            capture_output=True,
            check=False,
            timeout=120,
        )
        assert done.returncode == 0, done.stderr
    assert sorted(i.tag for i in layerdiff.images()) == ["plain", "zstd"]


@pytest.mark.parametrize("rootfs", [{"type": "layers"}, {"type": "layers", "diff_ids": None}])
def test_an_image_without_layers_may_leave_its_diff_ids_out(
    tmp_path: Path, rootfs: dict[str, Any]
) -> None:
    """moby leaves an empty diff_ids out (omitempty), Go's OCI types write null: an image
    without layers reads either way."""
    layout = Layout.create(tmp_path / "l")
    config = {"architecture": "amd64", "os": "linux", "rootfs": rootfs, "config": {}}
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": layout.put_blob(
            canonical_json(config), media_type="application/vnd.oci.image.config.v1+json"
        ),
        "layers": [],
    }
    layout.set_tag("empty", layout.put_blob(canonical_json(manifest), media_type=MANIFEST))
    ref = f"oci:{tmp_path / 'l'}:empty"
    for args in (["inspect", ref], ["history", ref], ["save", ref, str(tmp_path / "e.tar")]):
        done = run_cli(*args)
        assert done.returncode == 0, (args, done.stderr)
