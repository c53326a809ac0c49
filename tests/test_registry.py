"""push, pull and commit-to-registry against a real registry (distribution 2.8), with skopeo as
the independent client that checks what we pushed and pushes what we pull."""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tarfile
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import requests

import layerdiff
from layerdiff.blobstatus import OnBlob
from layerdiff.image import DOCKER_MANIFEST_MEDIA_TYPE, canonical_json, go_arch
from layerdiff.layout import Layout
from layerdiff.refs import store_layout_path
from tests.conftest import run_cli
from tests.registry_server import Registry, running_registry

pytestmark = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registry]:
    with running_registry(tmp_path_factory.mktemp("registry")) as reg:
        yield reg


def tree(root: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return root


def base_and_app(tmp_path: Path, tag: str) -> tuple[str, str]:
    """Two store images: base (one layer) and app (base + one layer)."""
    base = tree(tmp_path / "base", {"etc/os-release": b"ID=test\n", "bin/sh": b"\x7fELF" * 500})
    app = tree(tmp_path / "app", {"app/main.py": f"print({tag!r})\n".encode()})
    layerdiff.commit(base, image=f"base:{tag}")
    layerdiff.commit(app, image=f"app:{tag}", base=f"base:{tag}")
    return f"base:{tag}", f"app:{tag}"


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["skopeo", *args], capture_output=True, text=True, check=False, timeout=120
    )


def statuses(result: layerdiff.PushResult | layerdiff.PullResult) -> list[str]:
    return [b.status for b in result.blobs]


def test_push_exists_mounted_uploaded_and_skopeo_reads_it(
    registry: Registry, tmp_path: Path
) -> None:
    base, app = base_and_app(tmp_path, "t1")
    first = layerdiff.push(base, registry.ref("t1/base:1"), tls_verify=False)
    assert statuses(first) == ["uploaded", "uploaded"]  # config, layer
    # The app shares the base layer: only its own layer and config are sent.
    second = layerdiff.push(app, registry.ref("t1/base:app"), tls_verify=False)
    assert statuses(second) == ["uploaded", "exists", "uploaded"]
    # Another repository of the same registry: the store remembers, the registry mounts.
    third = layerdiff.push(app, registry.ref("t1/other:1"), tls_verify=False)
    assert statuses(third) == ["mounted", "mounted", "mounted"]
    assert third.manifest_digest == layerdiff.inspect(app)["digest"]

    out = skopeo(
        "copy", "--src-tls-verify=false", registry.ref("t1/other:1"), f"oci:{tmp_path / 'sk'}:x"
    )
    assert out.returncode == 0, out.stderr
    copied = Layout.open(tmp_path / "sk")
    assert copied.resolve("x")["digest"] == third.manifest_digest
    info = skopeo("inspect", "--tls-verify=false", registry.ref("t1/other:1"))
    assert json.loads(info.stdout)["Digest"] == third.manifest_digest


def test_a_blob_the_registry_holds_at_another_size_is_uploaded_again(
    registry: Registry, tmp_path: Path
) -> None:
    """A HEAD answer whose length is not the blob's (a damaged or partial copy there) does not
    count as the blob being there: it is sent again."""
    base, _ = base_and_app(tmp_path, "t9")
    assert statuses(layerdiff.push(base, registry.ref("t9/base:1"), tls_verify=False)) == [
        "uploaded",
        "uploaded",
    ]
    layer = str(layerdiff.inspect(base)["manifest"]["layers"][0]["digest"])
    data = registry.blob_data(layer)
    data.write_bytes(data.read_bytes()[:10])
    again = layerdiff.push(base, registry.ref("t9/base:1"), tls_verify=False)
    assert [(b.digest, b.status) for b in again.blobs if b.digest == layer] == [(layer, "uploaded")]


def test_pull_what_skopeo_pushed_docker_v2_and_only_missing_blobs(
    registry: Registry, tmp_path: Path
) -> None:
    _, app = base_and_app(tmp_path, "t2")
    src = layerdiff.inspect(app)["layout"]
    out = skopeo(
        "copy",
        "--dest-tls-verify=false",
        "--format",
        "v2s2",
        f"oci:{src}:{app}",
        registry.ref("t2/docker:v2"),
    )
    assert out.returncode == 0, out.stderr
    pulled = layerdiff.pull(
        registry.ref("t2/docker:v2"), "oci:" + str(tmp_path / "p") + ":v2", tls_verify=False
    )
    assert pulled.media_type == DOCKER_MANIFEST_MEDIA_TYPE
    assert statuses(pulled) == ["downloaded"] * 3
    info = json.loads(
        skopeo("inspect", "--raw", "--tls-verify=false", registry.ref("t2/docker:v2")).stdout
    )
    assert info["mediaType"] == DOCKER_MANIFEST_MEDIA_TYPE
    assert layerdiff.fsck(f"oci:{tmp_path / 'p'}").ok
    layerdiff.unpack(f"oci:{tmp_path / 'p'}:v2", tmp_path / "rootfs")
    assert (tmp_path / "rootfs/app/main.py").read_text() == "print('t2')\n"
    # Pulling it again into the same layout fetches nothing; the manifest bytes are kept, so
    # pushing it back gives the very same digest.
    again = layerdiff.pull(
        registry.ref("t2/docker:v2"), f"oci:{tmp_path / 'p'}:v2", tls_verify=False
    )
    assert statuses(again) == ["exists"] * 3
    back = layerdiff.push(f"oci:{tmp_path / 'p'}:v2", registry.ref("t2/back:v2"), tls_verify=False)
    assert back.manifest_digest == pulled.manifest_digest
    assert back.media_type == DOCKER_MANIFEST_MEDIA_TYPE


def _retag_arch(layout: Layout, tag: str, arch: str) -> dict[str, object]:
    desc = layout.resolve(tag)
    manifest = layout.read_json(desc)
    config = layout.read_json(manifest["config"])
    config["architecture"] = arch
    manifest["config"] = layout.put_blob(
        canonical_json(config), media_type=manifest["config"]["mediaType"]
    )
    out = layout.put_blob(canonical_json(manifest), media_type=desc["mediaType"])
    out["platform"] = {"os": "linux", "architecture": arch}
    return out


def test_pull_index_picks_the_platform(registry: Registry, tmp_path: Path) -> None:
    lay = tmp_path / "multi"
    for name in ("a", "b"):
        layerdiff.commit(tree(tmp_path / name, {"which": name.encode()}), image=f"oci:{lay}:{name}")
    layout = Layout.open(lay)
    native = go_arch()[0]
    other = "s390x" if native != "s390x" else "arm64"
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [_retag_arch(layout, "a", native), _retag_arch(layout, "b", other)],
    }
    layout.set_tag(
        "multi", layout.put_blob(canonical_json(index), media_type=str(index["mediaType"]))
    )
    out = skopeo(
        "copy", "--all", "--dest-tls-verify=false", f"oci:{lay}:multi", registry.ref("t3/multi:1")
    )
    assert out.returncode == 0, out.stderr

    mine = layerdiff.pull(registry.ref("t3/multi:1"), "multi:native", tls_verify=False)
    theirs = layerdiff.pull(
        registry.ref("t3/multi:1"), "multi:other", platform=f"linux/{other}", tls_verify=False
    )
    assert layerdiff.inspect("multi:native")["architecture"] == native
    assert layerdiff.inspect("multi:other")["architecture"] == other
    assert mine.manifest_digest != theirs.manifest_digest
    with pytest.raises(layerdiff.ImageNotFoundError, match="no linux/mips"):
        layerdiff.pull(registry.ref("t3/multi:1"), "x:1", platform="linux/mips", tls_verify=False)

    # Pinned by the index's digest, as `docker pull busybox@sha256:…` usually is: kept under
    # that name, which also finds the image pulled by tag above.
    head = requests.head(
        f"http://{registry.host}/v2/t3/multi/manifests/1",
        headers={"Accept": "application/vnd.oci.image.index.v1+json"},
        timeout=10,
    )
    index_digest = head.headers["Docker-Content-Digest"]
    pinned = f"{registry.host}/t3/multi@{index_digest}"
    out = run_cli("pull", "--tls-verify=false", "--progress=none", f"docker://{pinned}")
    assert out.returncode == 0, out.stderr
    assert layerdiff.inspect(pinned)["digest"] == mine.manifest_digest
    assert layerdiff.inspect(pinned)["architecture"] == native
    # A name pinning another digest is refused before anything is fetched.
    # With the store emptied, a refused pull leaves it empty.
    for i in layerdiff.images():
        assert run_cli("rmi", f"{i.name}:{i.tag}" if i.tag != "<none>" else pinned).returncode == 0
    layerdiff.gc()
    store = Layout.open(store_layout_path())
    assert not list(store.blobs_dir.iterdir())
    bad = run_cli(
        "pull",
        "--tls-verify=false",
        "--platform",
        f"linux/{other}",
        registry.ref("t3/multi:1"),
        f"multi@sha256:{'0' * 64}",
    )
    assert bad.returncode == 1 and f"not sha256:{'0' * 64}" in bad.stderr, bad.stderr
    assert not list(store.blobs_dir.iterdir())


def test_index_entries_without_a_platform_and_manifests_that_are_not_what_they_say(
    registry: Registry, tmp_path: Path
) -> None:
    """An index entry naming no platform is taken, as containerd takes it, and the platform
    checked in its config. A manifest is checked against the entry's size, and only sha256
    pins a manifest: another algorithm is refused, not taken on trust."""
    lay = tmp_path / "noplat"
    layerdiff.commit(tree(tmp_path / "a", {"which": b"a"}), image=f"oci:{lay}:a")
    layout = Layout.open(lay)
    native = go_arch()[0]
    entry = _retag_arch(layout, "a", native)
    del entry["platform"]
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [entry],
    }
    layout.set_tag("i", layout.put_blob(canonical_json(index), media_type=str(index["mediaType"])))
    out = skopeo("copy", "--all", "--dest-tls-verify=false", f"oci:{lay}:i", registry.ref("np/x:1"))
    assert out.returncode == 0, out.stderr
    pulled = layerdiff.pull(registry.ref("np/x:1"), "np:1", tls_verify=False)
    assert pulled.manifest_digest == entry["digest"]
    other = "s390x" if native != "s390x" else "arm64"
    refused = run_cli(
        "pull", "--tls-verify=false", "--platform", f"linux/{other}", registry.ref("np/x:1"), "np:2"
    )
    assert refused.returncode == 1
    assert f"the image is for linux/{native}, not linux/{other}" in refused.stderr

    # Several entries without a platform: each config is read until one is for the platform.
    layerdiff.commit(tree(tmp_path / "b", {"which": b"b"}), image=f"oci:{lay}:b")
    foreign = _retag_arch(layout, "b", other)
    del foreign["platform"]
    both = {**index, "manifests": [foreign, entry]}
    layout.set_tag("two", layout.put_blob(canonical_json(both), media_type=str(index["mediaType"])))
    out = skopeo(
        "copy", "--all", "--dest-tls-verify=false", f"oci:{lay}:two", registry.ref("np/x:two")
    )
    assert out.returncode == 0, out.stderr
    mine = layerdiff.pull(registry.ref("np/x:two"), "np:mine", tls_verify=False)
    assert mine.manifest_digest == entry["digest"]
    theirs = layerdiff.pull(
        registry.ref("np/x:two"), "np:theirs", platform=f"linux/{other}", tls_verify=False
    )
    assert theirs.manifest_digest == foreign["digest"]
    for name in ("np:mine", "np:theirs"):
        assert run_cli("rmi", name).returncode == 0

    # The same entry with a size that is not the manifest's.
    wrong = {**index, "manifests": [{**entry, "size": int(str(entry["size"])) + 1}]}
    put = requests.put(
        f"http://{registry.host}/v2/np/x/manifests/wrong",
        data=canonical_json(wrong),
        headers={"Content-Type": str(index["mediaType"])},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    bad = run_cli("pull", "--tls-verify=false", registry.ref("np/x:wrong"), "np:3")
    assert bad.returncode == 1
    assert f"is {entry['size']} bytes, the index says {int(str(entry['size'])) + 1}" in bad.stderr

    sha512 = "sha512:" + "ab" * 64
    bad = run_cli(
        "pull", "--tls-verify=false", f"docker://{registry.host}/np/x@{sha512}", f"oci:{lay}:t"
    )
    assert bad.returncode == 1 and "only sha256 digests are supported" in bad.stderr, bad.stderr
    assert [i.tag for i in layerdiff.images()] == ["1"]


@pytest.mark.parametrize(
    ("index", "want", "picked"),
    [
        # As docker and containerd: arm alone is arm/v7, arm64 is arm64/v8 with or without it.
        (["amd64", "arm64", "arm/v6", "arm/v7"], "linux/arm", "arm/v7"),
        (["amd64", "arm64", "arm/v6", "arm/v7"], "linux/arm/v6", "arm/v6"),
        (["amd64", "arm64/v8", "arm/v7"], "linux/arm64", "arm64/v8"),
        (["amd64", "arm64", "arm/v7"], "linux/arm64/v8", "arm64"),
        # An arm/v7 machine runs an arm/v6 image when there is no v7 one, not the reverse.
        (["arm/v5", "arm/v6"], "linux/arm/v7", "arm/v6"),
        (["arm/v7"], "linux/arm/v6", None),
        # Plain amd64 runs plain images only, as containerd's matcher has it: a v2 or v3 one
        # listed first is not taken (it may not run on the CPU).
        (["amd64/v2", "amd64"], "linux/amd64", "amd64"),
        (["amd64/v3"], "linux/amd64", None),
        # Entries normalised too, as docker reads them.
        (["arm64", "x86_64"], "linux/amd64", "x86_64"),
        (["amd64", "aarch64"], "linux/arm64", "aarch64"),
        # An arm entry without a variant is arm/v7, as containerd reads it.
        (["amd64", "arm"], "linux/arm", "arm"),
        (["arm/v6", "arm"], "linux/arm/v7", "arm"),
        # Names docker takes for the OCI ones, and amd64 levels: a v3 machine runs v2 and v1.
        (["arm64", "amd64"], "linux/x86_64", "amd64"),
        (["arm64", "amd64"], "Linux/AMD64", "amd64"),
        (["amd64", "arm64"], "linux/aarch64", "arm64"),
        (["amd64", "arm/v6", "arm/v7"], "linux/armhf", "arm/v7"),
        (["amd64", "arm/v6", "arm/v7"], "linux/armel", "arm/v6"),
        (["amd64", "arm/v6", "arm/v7"], "linux/arm/6", "arm/v6"),
        (["amd64", "arm64"], "linux/amd64/v2", "amd64"),
        (["amd64", "amd64/v3", "amd64/v2"], "linux/amd64/v3", "amd64/v3"),
        (["amd64/v1", "amd64/v3"], "linux/amd64/v2", "amd64/v1"),
        (["amd64/v3"], "linux/amd64/v2", None),
    ],
)
def test_the_platform_is_picked_as_docker_picks_it(
    index: list[str], want: str, picked: str | None
) -> None:
    from layerdiff.platforms import candidates

    manifests = []
    for i, platform in enumerate(index):
        arch, _, variant = platform.partition("/")
        p = {"os": "linux", "architecture": arch, **({"variant": variant} if variant else {})}
        manifests.append({"digest": f"sha256:{i:064d}", "platform": p})
    if picked is None:
        with pytest.raises(layerdiff.ImageNotFoundError, match=f"no {want} image"):
            candidates({"manifests": manifests}, want, "x")
        return
    chosen = candidates({"manifests": manifests}, want, "x")[0]
    assert chosen == manifests[index.index(picked)]


def test_corrupt_blob_in_registry_is_refused(
    registry: Registry, tmp_path: Path, store_home: Path
) -> None:
    layerdiff.commit(
        tree(tmp_path / "c", {"data": os.urandom(300_000)}),
        image="oci:" + str(tmp_path / "l") + ":c",
    )
    pushed = layerdiff.push(
        f"oci:{tmp_path / 'l'}:c", registry.ref("t4/corrupt:1"), tls_verify=False
    )
    layer = pushed.blobs[-1].digest
    data = registry.blob_data(layer)
    raw = bytearray(data.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    data.write_bytes(bytes(raw))
    with pytest.raises(layerdiff.DigestMismatchError, match="wrong bytes") as e:
        layerdiff.pull(registry.ref("t4/corrupt:1"), "corrupt:1", tls_verify=False)
    assert layer in str(e.value)
    # The failure stops the config's transfer too; a store made for the pull and left empty is
    # removed again.
    if (store_home / "images" / "oci-layout").exists():
        store = Layout.open(store_home / "images")
        assert not store.has_blob(layer)
        assert store.tags() == []
    assert layerdiff.fsck().ok
    # The CLI says it in one line.
    cli = run_cli(
        "pull", "--progress=none", "--tls-verify=false", registry.ref("t4/corrupt:1"), "corrupt:1"
    )
    assert cli.returncode == 1
    assert cli.stderr.count("\n") == 1 and "digest mismatch" in cli.stderr


def test_push_refuses_a_local_blob_that_does_not_match(registry: Registry, tmp_path: Path) -> None:
    lay = tmp_path / "bad"
    result = layerdiff.commit(tree(tmp_path / "t", {"f": os.urandom(50_000)}), image=f"oci:{lay}:1")
    blob = Layout.open(lay).blob_path(result.layer.digest)
    raw = bytearray(blob.read_bytes())
    raw[100] ^= 1
    blob.write_bytes(bytes(raw))
    with pytest.raises(layerdiff.DigestMismatchError, match="refusing to push"):
        layerdiff.push(f"oci:{lay}:1", registry.ref("t5/bad:1"), tls_verify=False)
    head = requests.head(f"http://{registry.host}/v2/t5/bad/blobs/{result.layer.digest}", timeout=5)
    assert head.status_code == 404
    assert skopeo("inspect", "--tls-verify=false", registry.ref("t5/bad:1")).returncode != 0
    # The upload session that carried the bytes was cancelled, not left for the purge.
    assert open_uploads(registry, "t5/bad") == []


def open_uploads(registry: Registry, repository: str) -> list[str]:
    """The upload sessions ``registry`` holds for ``repository``: those of its storage's
    ``_uploads`` with a start time (a cancelled one loses it and its data; distribution leaves
    the directory, with a hash state, to its purge)."""
    uploads = registry.storage / "docker/registry/v2/repositories" / repository / "_uploads"
    return sorted(p.parent.name for p in uploads.glob("*/startedat"))


def test_a_commit_to_a_registry_that_fails_cancels_its_upload_session(
    registry: Registry, tmp_path: Path
) -> None:
    """The layer's upload session is opened before the layer is written; a layer that fails
    (here: a name the layer format reserves) leaves no session behind in the registry."""
    upper = tree(tmp_path / "t", {"big": os.urandom(1 << 20), "z/.wh.reserved": b"x"})
    out = run_cli("commit", "--tls-verify=false", "--upper", str(upper), registry.ref("t14/x:1"))
    assert out.returncode == 1 and ".wh.reserved" in out.stderr, out.stderr
    repos = registry.storage / "docker/registry/v2/repositories"
    assert any((repos / "t14/x/_uploads").iterdir())  # the session was opened
    assert open_uploads(registry, "t14/x") == []


def test_cli_push_pull_json_and_plain_progress(registry: Registry, tmp_path: Path) -> None:
    _, app = base_and_app(tmp_path, "t6")
    out = run_cli(
        "push", "--tls-verify=false", "--json", "--progress=plain", app, registry.ref("t6/app:1")
    )
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["manifest"] == layerdiff.inspect(app)["digest"]
    assert [sorted(b) for b in obj["blobs"]] == [["digest", "size", "status"]] * 3
    assert {b["status"] for b in obj["blobs"]} == {"uploaded"}
    assert len(out.stderr.strip().splitlines()) == 3 and "uploaded" in out.stderr
    out = run_cli(
        "pull", "--tls-verify=false", "--json", "--progress=none", registry.ref("t6/app:1")
    )
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert obj["image"] == f"{registry.host}/t6/app:1"
    assert {b["status"] for b in obj["blobs"]} == {"exists"}  # same store
    assert out.stderr == ""
    bad = run_cli("push", "--tls-verify=false", app, f"docker://127.0.0.1:{registry.port + 1}/x:1")
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1
    assert "unreachable" in bad.stderr and "Connection refused" in bad.stderr


def test_commit_streams_the_layer_to_the_registry(
    registry: Registry, tmp_path: Path, store_home: Path
) -> None:
    base, _ = base_and_app(tmp_path, "t7")
    layerdiff.push(base, registry.ref("t7/base:1"), tls_verify=False)
    store = Layout.open(store_home / "images")
    before = set(os.listdir(store.blobs_dir))
    upper = tree(tmp_path / "new", {"big": os.urandom(20 << 20), "small": b"x"})
    out = run_cli(
        "commit",
        "--upper",
        str(upper),
        "--from",
        base,
        "--tls-verify=false",
        "--json",
        "--progress=none",
        registry.ref("t7/app:2"),
    )
    assert out.returncode == 0, out.stderr
    obj = json.loads(out.stdout)
    assert [b["status"] for b in obj["blobs"]] == ["mounted", "uploaded", "uploaded"]
    assert set(os.listdir(store.blobs_dir)) == before  # nothing of the layer on local disk
    copied = skopeo(
        "copy", "--src-tls-verify=false", registry.ref("t7/app:2"), f"oci:{tmp_path / 'sk'}:x"
    )
    assert copied.returncode == 0, copied.stderr
    layerdiff.unpack(f"oci:{tmp_path / 'sk'}:x", tmp_path / "rootfs")
    assert (tmp_path / "rootfs/big").read_bytes() == (upper / "big").read_bytes()
    assert (tmp_path / "rootfs/etc/os-release").exists()
    # The same commit into a layout gives the same layer digest: one pipeline, two sinks.
    local = layerdiff.commit(upper, image=f"oci:{tmp_path / 'loc'}:x", base=base)
    assert local.layer.digest == obj["digest"] and local.layer.diff_id == obj["diff_id"]


def test_registry_killed_mid_push_then_push_again(tmp_path: Path) -> None:
    src = tmp_path / "big"
    layerdiff.commit(
        tree(tmp_path / "t", {"big": os.urandom(96 << 20)}),
        image=f"oci:{src}:1",
        compression="none",
    )
    with running_registry(tmp_path / "reg") as reg:
        push = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "layerdiff",
                "push",
                "--tls-verify=false",
                "--progress=none",
                f"oci:{src}:1",
                reg.ref("kill/me:1"),
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        uploads = reg.storage / "docker/registry/v2/repositories/kill/me/_uploads"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if any(p.name == "data" and p.stat().st_size > 0 for p in uploads.rglob("data")):
                break
            time.sleep(0.002)
        reg.kill()
        _, err = push.communicate(timeout=60)
        assert push.returncode == 1
        assert err.count("\n") == 1 and "unreachable" in err, err
        reg.start()
        result = layerdiff.push(f"oci:{src}:1", reg.ref("kill/me:1"), tls_verify=False)
        assert result.manifest_digest == layerdiff.inspect(f"oci:{src}:1")["digest"]
        out = skopeo(
            "copy", "--src-tls-verify=false", reg.ref("kill/me:1"), f"oci:{tmp_path / 'sk'}:x"
        )
        assert out.returncode == 0, out.stderr


def test_pull_killed_leaves_the_store_consistent_and_parallel_pulls(
    registry: Registry, tmp_path: Path, store_home: Path
) -> None:
    src = f"oci:{tmp_path / 'src'}:1"
    layerdiff.commit(
        tree(tmp_path / "t", {"big": os.urandom(64 << 20)}), image=src, compression="none"
    )
    layerdiff.push(src, registry.ref("t8/big:1"), tls_verify=False)
    layerdiff.commit(tree(tmp_path / "s", {"s": b"small"}), image="keep:1")
    blobs = store_home / "images/blobs/sha256"
    pull = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerdiff",
            "pull",
            "--tls-verify=false",
            "--progress=none",
            registry.ref("t8/big:1"),
            "big:1",
        ],
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and not any(
        p.name.startswith(".tmp-") for p in blobs.iterdir()
    ):
        time.sleep(0.002)
    os.kill(pull.pid, signal.SIGKILL)
    pull.wait()
    report = layerdiff.fsck()
    assert report.ok, report.problems
    assert [i.name for i in layerdiff.images()] == ["keep"]
    layerdiff.gc()
    assert not any(p.name.startswith(".") for p in blobs.iterdir())

    # Parallel pulls into one store lose no tag.
    errors: list[BaseException] = []

    def one(i: int) -> None:
        try:
            layerdiff.pull(registry.ref("t8/big:1"), f"big:{i}", tls_verify=False)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert sorted(i.tag for i in layerdiff.images() if i.name == "big") == ["0", "1", "2"]
    assert layerdiff.fsck().ok


@pytest.mark.root
def test_commit_a_container_straight_to_the_registry(
    registry: Registry, tmp_path: Path, store_home: Path
) -> None:
    from tests.containers import busybox_rootfs

    layerdiff.commit(busybox_rootfs(tmp_path / "bb"), image="bb:1")
    pushed = layerdiff.push("bb:1", registry.ref("ct/app:base"), tls_verify=False)
    assert statuses(pushed) == ["uploaded", "uploaded"]
    ran = run_cli("run", "--name", "ct", "bb:1", "--", "sh", "-c", "echo v2 > /version")
    assert ran.returncode == 0, ran.stderr
    done = run_cli(
        "commit",
        "--tls-verify=false",
        "--json",
        "--progress",
        "none",
        "ct",
        registry.ref("ct/app:2"),
    )
    assert done.returncode == 0, done.stderr
    blobs = {b["status"] for b in json.loads(done.stdout)["blobs"]}
    assert "uploaded" in blobs and "exists" in blobs  # the base layer was not sent again

    pulled = run_cli("pull", "--tls-verify=false", registry.ref("ct/app:2"), "back:2")
    assert pulled.returncode == 0, pulled.stderr
    check = run_cli("run", "--rm", "back:2", "--", "sh", "-c", "cat /version; cat /etc/hostname")
    assert check.returncode == 0, check.stderr
    assert check.stdout.split()[0] == "v2"


def test_a_failed_or_interrupted_transfer_stops_the_others_at_their_next_chunk() -> None:
    """When one blob transfer fails, or Ctrl-C lands, the transfers still running stop at their
    next chunk (the check the upload and download loops make) instead of running to their end."""
    from layerdiff import transfer
    from layerdiff.remote import _parallel

    started: list[int] = []
    stops: list[threading.Event] = []

    def blob(i: int, stop: threading.Event) -> int:
        started.append(i)
        stops.append(stop)
        if i == 0:
            time.sleep(0.2)
            raise RuntimeError("blob 0 failed")
        while True:  # a transfer that would run forever but for the check
            transfer._check_stop(stop)
            time.sleep(0.01)

    begin = time.monotonic()
    with pytest.raises(RuntimeError, match="blob 0 failed"):
        _parallel(blob, list(range(6)), jobs=3)
    assert time.monotonic() - begin < 5
    assert {0, 1, 2} <= set(started)
    assert len({id(s) for s in stops}) == 1  # one event for the whole call

    # A failure later in the list stops the transfers before it as soon as it happens.
    def late(i: int, stop: threading.Event) -> int:
        if i == 2:
            raise RuntimeError("blob 2 failed")
        while not stop.wait(0.01):  # would run for a minute but for the stop
            if time.monotonic() - begin > 60:
                return i
        transfer._check_stop(stop)
        return i

    begin = time.monotonic()
    with pytest.raises(RuntimeError, match="blob 2 failed"):
        _parallel(late, [0, 1, 2], jobs=3)
    assert time.monotonic() - begin < 5
    # The next call has its own event, not the one this failure set.
    assert _parallel(lambda i, stop: (i, stop.is_set()), [1, 2], jobs=2) == [(1, False), (2, False)]


def test_a_failed_pull_does_not_stop_another_running_in_the_same_process(
    registry: Registry, tmp_path: Path
) -> None:
    """Transfers stop together only within one push or pull: an application pulling two images
    in two threads, one of which fails, still gets the other."""
    for name in ("a", "b"):
        src = f"oci:{tmp_path / name}:1"
        layerdiff.commit(
            tree(tmp_path / f"t{name}", {"big": os.urandom(16 << 20)}),
            image=src,
            compression="none",
        )
        layerdiff.push(src, registry.ref(f"t10/{name}:1"), tls_verify=False)
    a_layer = layerdiff.inspect(f"oci:{tmp_path / 'a'}:1")["layers"][0]["digest"]
    b_image = layerdiff.inspect(f"oci:{tmp_path / 'b'}:1")
    b_config, b_layer = b_image["manifest"]["config"]["digest"], b_image["layers"][0]["digest"]
    a_running = threading.Event()

    def slow_a(digest: str, _done: int, _size: int, status: str | None) -> None:
        if digest == a_layer and status is None:
            a_running.set()
            time.sleep(0.05)  # 16 chunks: about 0.8 s in all

    def failing_b(digest: str, _done: int, _size: int, status: str | None) -> None:
        if digest == b_config and status is not None:
            raise RuntimeError("b's progress callback failed")
        if digest == b_layer and status is None:
            time.sleep(0.5)  # b's own stop waits for this transfer

    outcome: dict[str, object] = {}

    def pull(name: str, on_blob: OnBlob) -> None:
        try:
            outcome[name] = layerdiff.pull(
                registry.ref(f"t10/{name}:1"),
                f"oci:{tmp_path / ('pulled-' + name)}:1",
                tls_verify=False,
                on_blob=on_blob,
            )
        except Exception as e:
            outcome[name] = e

    a = threading.Thread(target=pull, args=("a", slow_a))
    a.start()
    assert a_running.wait(30)
    b = threading.Thread(target=pull, args=("b", failing_b))
    b.start()
    a.join(60)
    b.join(60)
    assert isinstance(outcome["b"], RuntimeError), outcome["b"]
    assert isinstance(outcome["a"], layerdiff.PullResult), repr(outcome["a"])
    assert [s.status for s in outcome["a"].blobs] == ["downloaded", "downloaded"]


class _CountingServer(ThreadingHTTPServer):
    """An HTTP (or, given a certificate, HTTPS) server that counts the connections it is
    offered, handshakes that fail included."""

    daemon_threads = True
    connections = 0

    def get_request(self) -> tuple[socket.socket, Any]:
        self.connections += 1
        return super().get_request()


@contextlib.contextmanager
def _serving(
    handler: type[BaseHTTPRequestHandler], tls: ssl.SSLContext | None = None
) -> Iterator[tuple[_CountingServer, str]]:
    """A server of ``handler`` on a free port of 127.0.0.1 (over TLS with ``tls``), and its
    HOST:PORT; stopped on leaving."""
    server = _CountingServer(("127.0.0.1", 0), handler)
    if tls is not None:
        server.socket = tls.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield server, f"127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def test_a_gzip_blob_a_store_labels_gzip_encoded_is_kept_as_it_came(
    registry: Registry, tmp_path: Path
) -> None:
    """A blob store (S3 with Content-Encoding in an object's metadata, a CDN) may label a gzip
    layer ``Content-Encoding: gzip``: the bytes are the blob all the same and must not be
    decoded on the way. Nor is on-the-fly compression asked for."""
    _, app = base_and_app(tmp_path, "enc")
    assert layerdiff.push(app, registry.ref("enc/app:1"), tls_verify=False)
    asked: list[str] = []
    upstream = f"http://{registry.host}"

    class Labelling(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            got = requests.get(
                upstream + self.path,
                headers={k: v for k, v in self.headers.items() if k.lower() != "host"},
                stream=True,
                timeout=10,
            )
            body = got.raw.read(decode_content=False)
            self.send_response(got.status_code)
            for k, v in got.headers.items():
                if k.lower() not in ("content-length", "transfer-encoding", "connection"):
                    self.send_header(k, v)
            if "/blobs/" in self.path:
                asked.append(self.headers.get("Accept-Encoding", ""))
                if body.startswith(b"\x1f\x8b"):
                    self.send_header("Content-Encoding", "gzip")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_HEAD = do_GET

    with _serving(Labelling) as (_, host):
        pulled = run_cli(
            "pull",
            "--tls-verify=false",
            "--progress=none",
            f"docker://{host}/enc/app:1",
            f"oci:{tmp_path / 'p'}:1",
        )
    assert pulled.returncode == 0, pulled.stderr
    assert (
        layerdiff.inspect(f"oci:{tmp_path / 'p'}:1")["digest"] == layerdiff.inspect(app)["digest"]
    )
    assert layerdiff.fsck(f"oci:{tmp_path / 'p'}").ok
    assert asked and all(a == "identity" for a in asked), asked


def _interrupted(args: list[str], ready: threading.Event) -> tuple[int, str, float]:
    """Run the command ``args``, send it SIGINT once ``ready`` is set; its exit code, its
    stderr, and the seconds from the signal to its end."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", *args], stderr=subprocess.PIPE, text=True
    )
    assert ready.wait(60)
    begin = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    return proc.returncode, err, time.monotonic() - begin


class _Registry(BaseHTTPRequestHandler):
    """A base for fake registries: HTTP/1.1, answers without a body, no log."""

    protocol_version = "HTTP/1.1"

    def _answer(self, status: int, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


class _Answer200(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("kind", "reason"),
    [
        ("plain HTTP", "wrong version number"),
        ("self-signed HTTPS", "certificate verify failed: self-signed certificate"),
    ],
)
def test_a_tls_failure_that_a_retry_cannot_mend_fails_at_once_with_its_reason_and_the_hint(
    tmp_path: Path, kind: str, reason: str
) -> None:
    from tests.registry_server import _make_cert

    ctx = None
    if kind != "plain HTTP":
        key_pem, _, cert = _make_cert(tmp_path)
        (tmp_path / "key.pem").write_bytes(key_pem)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.load_cert_chain(cert, tmp_path / "key.pem")
    with _serving(_Answer200, ctx) as (server, host):
        out = run_cli("pull", f"docker://{host}/x:1", f"oci:{tmp_path / 'o'}:1")
        assert out.returncode == 1, out.stderr
        assert out.stderr.count("\n") == 1, out.stderr
        assert f"{host}: TLS failed ({reason})" in out.stderr
        assert "--tls-verify=false" in out.stderr
        assert "attempts" not in out.stderr
        assert server.connections == 1  # not retried: the same answer would come again


def test_pull_by_digest_without_a_local_name_as_docker_does(
    registry: Registry, tmp_path: Path, store_home: Path
) -> None:
    """``pull docker://HOST/REPO@DIGEST`` stores the image as ``HOST/REPO@DIGEST``: listed
    untagged with its digest, usable by that name, and never a name for a new image."""
    src = f"oci:{tmp_path / 'src'}:1"
    layerdiff.commit(tree(tmp_path / "t", {"f": b"pinned\n"}), image=src)
    digest = layerdiff.push(src, registry.ref("t12/app:1"), tls_verify=False).manifest_digest
    other = "sha256:" + "0" * 64
    name = f"{registry.host}/t12/app"
    pinned = f"{name}@{digest}"

    out = run_cli("pull", "--tls-verify=false", "--json", "--progress=none", f"docker://{pinned}")
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["image"] == pinned
    listed = json.loads(run_cli("images", "--json").stdout)
    assert [(i["name"], i["tag"], i["digest"]) for i in listed] == [(name, "<none>", digest)]
    assert layerdiff.inspect(pinned)["digest"] == digest
    assert [h.created_by for h in layerdiff.history(pinned)] == ["layerdiff commit"]
    # Pulled again: nothing to fetch.
    again = layerdiff.pull(f"docker://{pinned}", tls_verify=False)
    assert statuses(again) == ["exists", "exists"]

    # A digest names an image that exists: never a new one, and the store stays as it was.
    before = (store_home / "images/index.json").read_bytes()
    for args in (
        ["commit", "--upper", str(tmp_path / "t"), pinned],
        ["tag", pinned, f"{name}@{other}"],
        ["squash", pinned, f"{name}@{digest}"],
    ):
        bad = run_cli(*args)
        assert bad.returncode != 0
        assert "a digest names an image that exists" in bad.stderr, bad.stderr
        assert bad.stderr.count("\n") == 1
    assert (store_home / "images/index.json").read_bytes() == before
    # Saved, it has no tag to give (docker save of NAME@DIGEST writes none).
    assert run_cli("save", pinned, f"docker-archive:{tmp_path / 'p.tar'}").returncode == 0
    import tarfile

    with tarfile.open(tmp_path / "p.tar") as tar:
        member = tar.extractfile("manifest.json")
        assert member is not None
        assert not json.loads(member.read())[0].get("RepoTags")
    # Another name for it by tag is fine.
    assert run_cli("tag", pinned, "app:pinned").returncode == 0
    assert layerdiff.inspect("app:pinned")["digest"] == digest

    # NAME@DIGEST also finds the image pulled by tag, and only with its own digest.
    assert run_cli("rmi", pinned).returncode == 0
    layerdiff.pull(registry.ref("t12/app:1"), tls_verify=False)
    assert layerdiff.inspect(pinned)["image"] == pinned
    assert layerdiff.inspect(pinned)["digest"] == digest
    missing = run_cli("inspect", f"{name}@{other}")
    assert missing.returncode != 0 and "not found" in missing.stderr
    # A pull by a digest the registry does not have stores nothing.
    gone = run_cli("pull", "--tls-verify=false", f"docker://{name}@{other}")
    assert gone.returncode == 1 and gone.stderr.count("\n") == 1
    assert sorted((i.name, i.tag) for i in layerdiff.images()) == sorted(
        [("app", "pinned"), (name, "1")]
    )
    # By its ID: a tag and the digest references of one repository are one reference, as
    # docker counts them; with another repository's name too, -f is needed.
    layerdiff.pull(f"docker://{pinned}", tls_verify=False)
    short = digest.removeprefix("sha256:")[:12]
    refused = run_cli("rmi", short)
    assert refused.returncode == 1 and "app:pinned" in refused.stderr, refused.stderr
    assert run_cli("rmi", "app:pinned").returncode == 0
    done = run_cli("rmi", short)
    assert done.returncode == 0, done.stderr
    assert layerdiff.images() == []


def test_a_blob_listed_twice_is_sent_and_fetched_once(
    registry: Registry, tmp_path: Path, store_home: Path
) -> None:
    import hashlib
    import tarfile

    from layerdiff.image import (
        CONFIG_MEDIA_TYPE,
        MANIFEST_MEDIA_TYPE,
        add_layer,
        build_manifest,
        new_config,
    )

    layout = Layout.create(tmp_path / "img")
    f = tmp_path / "f"
    f.write_bytes(os.urandom(1 << 20))
    with tarfile.open(tmp_path / "l.tar", "w") as tar:
        tar.add(f, "f")
    blob = (tmp_path / "l.tar").read_bytes()
    desc = layout.put_blob(blob, media_type="application/vnd.oci.image.layer.v1.tar")
    config = new_config(created="2024-01-01T00:00:00Z")
    for _ in range(3):
        diff_id = "sha256:" + hashlib.sha256(blob).hexdigest()
        config = add_layer(config, diff_id=diff_id, created="2024-01-01T00:00:00Z", created_by="t")
    config_desc = layout.put_blob(canonical_json(config), media_type=CONFIG_MEDIA_TYPE)
    manifest = build_manifest(config=config_desc, layers=[desc, desc, desc])
    layout.set_tag("v1", layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE))

    image = f"oci:{tmp_path / 'img'}:v1"
    out = run_cli("push", "--tls-verify=false", "--json", image, registry.ref("t13/x:1"))
    assert out.returncode == 0, out.stderr
    pushed = json.loads(out.stdout)["blobs"]
    assert [b["status"] for b in pushed] == ["uploaded", "uploaded"]  # config, the layer once
    pulled = layerdiff.pull(registry.ref("t13/x:1"), tls_verify=False)
    assert [(b.digest, b.status) for b in pulled.blobs] == [
        (config_desc["digest"], "downloaded"),
        (desc["digest"], "downloaded"),
    ]
    assert layerdiff.fsck().ok

    # A digest the image does not have is refused before anything is sent; a commit cannot
    # name its image by digest at all.
    wrong = "sha256:" + "1" * 64
    bad = run_cli(
        "push", "--tls-verify=false", f"oci:{tmp_path / 'img'}:v1", registry.ref(f"t13/y@{wrong}")
    )
    assert bad.returncode == 1 and "not the digest the reference names" in bad.stderr
    bad = run_cli("commit", "--upper", str(tmp_path / "img"), registry.ref(f"t13/z@{wrong}"))
    assert bad.returncode == 1 and "name it by tag" in bad.stderr
    repos = next(registry.storage.rglob("repositories"))
    assert (repos / "t13" / "x").is_dir()
    assert not (repos / "t13" / "y").exists() and not (repos / "t13" / "z").exists()


class _Flooding(BaseHTTPRequestHandler):
    """A registry that answers a manifest GET (or, with ``blob``, a blob GET) with ``status``
    and a body that does not end (up to 512 MiB), counting what it managed to send."""

    status = 200
    sent = 0
    blob = False

    def do_GET(self) -> None:
        if self.path == "/v2/":
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if type(self).blob and "/manifests/" in self.path:
            body = canonical_json(
                {
                    "schemaVersion": 2,
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "config": {
                        "mediaType": "application/vnd.oci.image.config.v1+json",
                        "digest": "sha256:" + "3" * 64,
                        "size": 10,
                    },
                    "layers": [],
                }
            )
            self.send_response(200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(type(self).status)
        if type(self).status in (301, 302, 307):
            self.send_header("Location", "/v2/x/manifests/elsewhere")
        self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
        self.end_headers()
        chunk = b" " * (1 << 20)
        try:
            for _ in range(512):
                self.wfile.write(chunk)
                type(self).sent += len(chunk)
        except OSError:
            pass

    def log_message(self, *args: object) -> None:
        pass


@pytest.mark.parametrize(
    ("status", "blob"), [(200, False), (404, False), (302, False), (404, True), (500, True)]
)
def test_an_endless_answer_is_refused_without_being_read_whole(
    tmp_path: Path, status: int, blob: bool
) -> None:
    """A manifest, an error, a redirect or a blob's error answer that does not end: refused
    (or reported) having read little of it."""

    class Handler(_Flooding):
        pass

    Handler.status = status
    Handler.blob = blob
    with _serving(Handler) as (_, host):
        out = run_cli("pull", "--tls-verify=false", f"docker://{host}/x:1", f"oci:{tmp_path}/o:1")
        assert out.returncode == 1 and out.stderr.count("\n") == 1, out.stderr
        if not blob and status != 302:
            assert f"answered {status} with more than {4 << 20} bytes" in out.stderr
        time.sleep(0.2)
        assert Handler.sent < 64 << 20  # what the socket buffers took, not the 512 MiB


def _stalling_registry(
    layers: list[str],
    layer_size: int,
    on_layer: Callable[[], None],
    release: threading.Event,
    asked: list[str],
) -> type[BaseHTTPRequestHandler]:
    """A registry holding the image ``x:1`` (a config and ``layers``, each ``layer_size`` bytes
    by its manifest) that stopped answering: a GET of a layer calls ``on_layer``, then waits for
    ``release`` and ends without an answer. Every path asked is appended to ``asked``."""
    import hashlib

    diff_ids = ["sha256:" + hashlib.sha256(d.encode()).hexdigest() for d in layers]
    config = canonical_json(
        {"architecture": "amd64", "os": "linux", "rootfs": {"type": "layers", "diff_ids": diff_ids}}
    )
    config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
    manifest = canonical_json(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": config_digest,
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar",
                    "digest": d,
                    "size": layer_size,
                }
                for d in layers
            ],
        }
    )

    class Stalling(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            asked.append(self.path)
            if any(self.path.endswith(d) for d in layers):
                on_layer()
                release.wait(60)  # a registry that stopped answering
                return
            body = {
                "/v2/": b"",
                "/v2/x/manifests/1": manifest,
                f"/v2/x/blobs/{config_digest}": config,
            }.get(self.path)
            self.send_response(404 if body is None else 200)
            self.send_header("Content-Type", "application/vnd.oci.image.manifest.v1+json")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args: object) -> None:
            pass

    return Stalling


def test_an_interrupted_pull_does_not_wait_for_a_registry_that_stopped_answering(
    tmp_path: Path,
) -> None:
    """Ctrl-C during a pull whose layer GET the registry never answers: the pull ends within
    a few seconds with 130, and nothing is asked again."""
    layer_digest = "sha256:" + "2" * 64
    asked: list[str] = []
    layer_asked = threading.Event()
    release = threading.Event()
    handler = _stalling_registry([layer_digest], 1 << 20, layer_asked.set, release, asked)
    with _serving(handler) as (_, host):
        try:
            code, err, elapsed = _interrupted(
                [
                    "pull",
                    "--tls-verify=false",
                    "--progress=none",
                    f"docker://{host}/x:1",
                    f"oci:{tmp_path}/o:1",
                ],
                layer_asked,
            )
        finally:
            release.set()
        assert code == 130, err
        assert elapsed < 10, elapsed  # not the 60 s the registry would take
        assert asked.count(f"/v2/x/blobs/{layer_digest}") == 1  # not asked again


def test_an_interrupted_api_pull_lets_the_interpreter_exit_without_waiting_for_the_registry(
    tmp_path: Path,
) -> None:
    """KeyboardInterrupt in a program pulling with the API while the registry has stopped
    answering its layer GETs: the program ends at once, not when the transfer threads it
    abandoned time out (Python waits for non-daemon threads at exit)."""
    both_asked = threading.Barrier(3)
    release = threading.Event()

    def on_layer() -> None:
        with contextlib.suppress(threading.BrokenBarrierError):
            both_asked.wait(60)

    layers = ["sha256:" + c * 64 for c in "23"]
    with _serving(_stalling_registry(layers, 9, on_layer, release, [])) as (_, host):
        program = (
            "import layerdiff\n"
            "try:\n"
            f"    layerdiff.pull('docker://{host}/x:1', 'oci:{tmp_path}/o:1', tls_verify=False)\n"
            "except KeyboardInterrupt:\n"
            "    print('interrupted', flush=True)\n"
        )
        proc = subprocess.Popen(
            [sys.executable, "-c", program], stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        try:
            both_asked.wait(60)
            begin = time.monotonic()
            proc.send_signal(signal.SIGINT)
            out, err = proc.communicate(timeout=120)
            elapsed = time.monotonic() - begin
        finally:
            release.set()
            if proc.poll() is None:
                proc.kill()
        assert out == b"interrupted\n", err
        assert proc.returncode == 0, err
        assert elapsed < 10, elapsed  # not the 60 s the registry would take


def test_an_interrupted_commit_to_a_registry_sends_no_more_of_the_layer(tmp_path: Path) -> None:
    """Ctrl-C while a commit streams its layer to a slow registry: the chunks still queued
    are not sent, the upload session is cancelled, and the command ends within a few
    seconds."""
    patches: list[str] = []
    deletes: list[str] = []
    first_patch = threading.Event()

    class Slow(_Registry):
        def do_DELETE(self) -> None:
            deletes.append(self.path)
            self._answer(204)

        def do_GET(self) -> None:
            self._answer(200 if self.path == "/v2/" else 404)

        def do_HEAD(self) -> None:
            self._answer(404)

        def do_POST(self) -> None:
            self._answer(202, {"Location": "/v2/x/blobs/uploads/u1"})

        def do_PATCH(self) -> None:
            patches.append(self.path)
            first_patch.set()
            left = int(self.headers["Content-Length"])
            while left:  # 2 MB/s
                got = self.rfile.read(min(left, 256 << 10))
                if not got:
                    return
                left -= len(got)
                time.sleep(0.125)
            self._answer(202, {"Location": "/v2/x/blobs/uploads/u1"})

    upper = tree(tmp_path / "t", {"big": os.urandom(96 << 20)})
    with _serving(Slow) as (_, host):
        code, err, elapsed = _interrupted(
            [
                "commit",
                "--tls-verify=false",
                "--compression",
                "none",
                "--upper",
                str(upper),
                f"docker://{host}/x:1",
            ],
            first_patch,
        )
        assert code == 130, err
        assert elapsed < 8, elapsed  # each 16 MiB chunk takes 8 s at this speed
        time.sleep(1)
        assert len(patches) <= 2, patches  # the chunk in flight, at most one more
        assert deletes == ["/v2/x/blobs/uploads/u1"]


def test_commit_to_a_registry_rides_out_a_503_on_a_chunk_and_on_the_closing_put(
    tmp_path: Path,
) -> None:
    """A registry answering 503 once to the layer's PATCH and once to its closing PUT: the
    commit asks where the upload stands, sends the chunk again, and succeeds, as push does."""
    import hashlib

    stored: dict[str, bytes] = {}
    uploads: dict[str, bytearray] = {}
    log: list[str] = []
    failed: set[str] = set()

    class Flaky(_Registry):
        def _fail_once(self, what: str) -> bool:
            if what in failed:
                return False
            failed.add(what)
            self._answer(503)
            return True

        def do_GET(self) -> None:
            log.append(f"GET {self.path}")
            if self.path == "/v2/":
                return self._answer(200)
            upload = self.path.rpartition("/")[2]
            if upload in uploads:
                held = len(uploads[upload])
                return self._answer(204, {"Range": f"0-{max(held - 1, 0)}"})
            self._answer(404)

        def do_HEAD(self) -> None:
            digest = self.path.rpartition("/")[2]
            if digest in stored:
                return self._answer(200, {"Docker-Content-Digest": digest})
            self._answer(404)

        def do_POST(self) -> None:
            name = f"u{len(uploads)}"
            uploads[name] = bytearray()
            self._answer(202, {"Location": f"/v2/x/blobs/uploads/{name}"})

        def do_PATCH(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            log.append("PATCH")
            if self._fail_once("PATCH"):
                return
            name = self.path.rpartition("/")[2]
            uploads[name] += body
            self._answer(202, {"Location": self.path, "Range": f"0-{len(uploads[name]) - 1}"})

        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            path, _, query = self.path.partition("?")
            if "/manifests/" in path:
                digest = "sha256:" + hashlib.sha256(body).hexdigest()
                stored[digest] = body
                return self._answer(201, {"Docker-Content-Digest": digest})
            log.append("PUT")
            if self._fail_once("PUT"):
                return
            digest = query.partition("digest=")[2].replace("%3A", ":")
            data = bytes(uploads.pop(path.rpartition("/")[2]) + body)
            assert "sha256:" + hashlib.sha256(data).hexdigest() == digest
            stored[digest] = data
            self._answer(201, {"Docker-Content-Digest": digest})

    upper = tree(tmp_path / "t", {"f": os.urandom(3 << 20), "g": b"g"})
    with _serving(Flaky) as (_, host):
        out = run_cli(
            "commit", "--tls-verify=false", "--json", "--upper", str(upper), f"docker://{host}/x:1"
        )
        assert out.returncode == 0, out.stderr
        layer = json.loads(out.stdout)
        assert layer["digest"] in stored
        # The same layer as a local commit of the tree.
        local = layerdiff.commit(upper, image=f"oci:{tmp_path / 'local'}:1")
        assert layer["digest"] == local.layer.digest
        assert log.count("PATCH") >= 2 and any(
            e.startswith("GET /v2/x/blobs/uploads/") for e in log
        )


def test_a_streamed_layer_has_one_progress_bar_which_ends_under_its_digest() -> None:
    """On a terminal, the bar of a layer streamed to a registry (known as "layer" until its
    digest is) becomes the digest's bar when it is done, rather than staying unfinished."""
    from layerdiff.blobstatus import STREAMED_LAYER
    from layerdiff.cli import _Progress

    class Bars:
        def __init__(self) -> None:
            self.tasks: dict[int, dict[str, object]] = {}

        def add_task(self, description: str, total: int | None) -> int:
            self.tasks[len(self.tasks)] = {"description": description, "total": total}
            return len(self.tasks) - 1

        def update(self, task: int, **fields: object) -> None:
            self.tasks[task].update(fields)

    progress = _Progress("live")
    bars = progress.bars = Bars()
    digest = "sha256:" + "ab" * 32
    progress(STREAMED_LAYER, 1 << 20, 0, None)
    progress(STREAMED_LAYER, 2 << 20, 0, None)
    progress(digest, 3 << 20, 3 << 20, "uploaded")
    progress("sha256:" + "cd" * 32, 10, 10, "uploaded")  # the config: a bar of its own
    assert len(bars.tasks) == 2
    assert bars.tasks[0]["description"] == f"{'ab' * 6} uploaded"
    assert bars.tasks[0]["completed"] == bars.tasks[0]["total"] == 3 << 20


def _put_raw(registry: Registry, repo: str, manifest: dict[str, Any], blobs: list[bytes]) -> str:
    """Upload ``blobs`` and ``manifest`` as they are, with no client checking them; the
    reference to pull."""
    base = f"http://{registry.host}/v2/{repo}"
    for data in blobs:
        started = requests.post(f"{base}/blobs/uploads/", timeout=10)
        location = urllib.parse.urljoin(base, started.headers["Location"])
        digest = "sha256:" + hashlib.sha256(data).hexdigest()
        sep = "&" if "?" in location else "?"
        done = requests.put(f"{location}{sep}digest={digest}", data=data, timeout=10)
        assert done.status_code == 201, done.text
    body = canonical_json(manifest)
    put = requests.put(
        f"{base}/manifests/1",
        data=body,
        headers={"Content-Type": str(manifest["mediaType"])},
        timeout=10,
    )
    assert put.status_code == 201, put.text
    return registry.ref(f"{repo}:1")


def _descriptor(media_type: str, data: bytes) -> dict[str, Any]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def test_pull_refuses_what_is_not_a_consistent_image_and_tags_nothing(
    registry: Registry, tmp_path: Path
) -> None:
    """An artifact (a chart, a signature), a manifest whose layers are not its config's
    diff_ids, an image for another platform than the one asked for: refused with one line,
    nothing tagged, the store sound (as docker and containerd refuse them)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("f")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    tar_bytes = layer.getvalue()
    diff_id = "sha256:" + hashlib.sha256(tar_bytes).hexdigest()
    arch = go_arch()[0]
    config = canonical_json(
        {"architecture": arch, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [diff_id]}}
    )
    tar_layer = _descriptor("application/vnd.oci.image.layer.v1.tar", tar_bytes)
    oci = "application/vnd.oci.image.manifest.v1+json"
    chart = b'{"name":"chart"}'
    cases = {
        "an artifact": (
            {"schemaVersion": 2, "mediaType": oci,
             "config": _descriptor("application/vnd.cncf.helm.config.v1+json", chart),
             "layers": [_descriptor("application/vnd.cncf.helm.chart.content.v1.tar+gzip", b"x")]},
            [chart, b"x"], None, "not a container image",
        ),
        "fewer layers than diff_ids": (
            {"schemaVersion": 2, "mediaType": oci,
             "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
             "layers": []},
            [config], None, "0 layers, its config 1 diff_ids",
        ),
        "another platform": (
            {"schemaVersion": 2, "mediaType": oci,
             "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
             "layers": [tar_layer]},
            [config, tar_bytes], "linux/mips", "not linux/mips",
        ),
    }  # fmt: skip
    for i, (name, (manifest, blobs, platform, message)) in enumerate(cases.items()):
        ref = _put_raw(registry, f"bad/c{i}", manifest, blobs)
        args = ["pull", "--progress=none", "--tls-verify=false", ref, f"bad:{i}"]
        if platform:
            args[1:1] = ["--platform", platform]
        done = run_cli(*args)
        assert done.returncode == 1, (name, done.stderr)
        [line] = done.stderr.splitlines()
        assert message in line, (name, line)
    assert layerdiff.images() == []
    assert layerdiff.fsck().ok
    # The platform and the config are checked before a layer is fetched.
    stored = store_layout_path() / "blobs" / "sha256"
    assert not (stored / str(tar_layer["digest"]).removeprefix("sha256:")).exists()
    # The same image pulled for its own platform is fine.
    manifest, blobs, _, _ = cases["another platform"]
    ok = _put_raw(registry, "bad/ok", manifest, blobs)
    pulled = layerdiff.pull(ok, "good:1", platform=f"linux/{arch}", tls_verify=False)
    assert layerdiff.inspect("good:1")["digest"] == pulled.manifest_digest


def test_a_401_that_names_no_way_to_authenticate_says_so(tmp_path: Path) -> None:
    class Refusing(_Registry):
        def do_GET(self) -> None:
            self._answer(401)

        do_HEAD = do_GET

    with _serving(Refusing) as (_, host):
        done = run_cli("pull", "--progress=none", "--tls-verify=false", f"docker://{host}/x:1")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "refused access (401) and named no way to authenticate" in line, line


def test_a_chunk_whose_answer_is_lost_ends_the_streamed_commit_with_the_reason(
    tmp_path: Path,
) -> None:
    """distribution gives an upload a new address with each chunk it takes. When the answer to
    a chunk is lost, the old address no longer finds the upload: the commit says so, and that
    it cannot go on, rather than quoting the registry's 404 for the status request."""
    answered: list[str] = []

    class Forgetful(_Registry):
        def do_GET(self) -> None:
            answered.append(f"GET {self.path}")
            self._answer(200 if self.path == "/v2/" else 404)

        def do_HEAD(self) -> None:
            self._answer(404)

        def do_POST(self) -> None:
            self._answer(202, {"Location": "/v2/x/blobs/uploads/u1?_state=first"})

        def do_PATCH(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            answered.append("PATCH")
            self.close_connection = True  # taken, and the answer lost on the way

        def do_DELETE(self) -> None:
            self._answer(404)

    upper = tree(tmp_path / "t", {"f": os.urandom(1 << 20)})
    with _serving(Forgetful) as (_, host):
        done = run_cli(
            "commit", "--tls-verify=false", "--progress=none", "--compression", "none",
            "--upper", str(upper), f"docker://{host}/x:1",
        )  # fmt: skip
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "the answer to a chunk was lost" in line and "commit again" in line, line
    assert answered.count("PATCH") == 1, answered


def test_pull_fetches_again_a_stored_blob_that_is_damaged(
    registry: Registry, tmp_path: Path
) -> None:
    """A blob the layout holds at the right size but with other bytes (a flipped bit) is not
    taken as present: it is fetched again and put in place of the damaged one, by rename."""
    base, _ = base_and_app(tmp_path, "t16")
    layerdiff.push(base, registry.ref("t16/base:1"), tls_verify=False)
    target = f"oci:{tmp_path / 'p'}"
    first = layerdiff.pull(registry.ref("t16/base:1"), f"{target}:1", tls_verify=False)
    config, layer = (b.digest for b in first.blobs)
    blob = Layout.open(tmp_path / "p").blob_path(layer)
    raw = bytearray(blob.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    blob.write_bytes(bytes(raw))
    damaged = blob.stat().st_ino
    again = layerdiff.pull(registry.ref("t16/base:1"), f"{target}:2", tls_verify=False)
    assert [(b.digest, b.status) for b in again.blobs] == [
        (config, "exists"),
        (layer, "downloaded"),
    ]
    assert "sha256:" + hashlib.sha256(blob.read_bytes()).hexdigest() == layer
    assert blob.stat().st_ino != damaged  # a new file renamed over it, not rewritten in place
    assert layerdiff.fsck(target).ok


def test_relative_upload_locations_are_resolved_against_the_request(
    registry: Registry, tmp_path: Path
) -> None:
    """A registry may give an upload's Location relative to the URL it answers (``UUID?_state=…``
    for ``…/blobs/uploads/``): push and a streamed commit resolve it there, as a browser would,
    not against the registry's root."""
    from tests.registry_server import forwarding_proxy

    def relative(method: str, path: str, status: int, headers: list[tuple[str, str]]) -> Any:
        if method not in ("POST", "PATCH") or status != 202:
            return headers
        directory = path.partition("?")[0].rpartition("/")[0] + "/"
        out = []
        for k, v in headers:
            if k.lower() == "location":
                where = urllib.parse.urlsplit(v)
                assert where.path.startswith(directory), (where.path, directory)
                v = where.path.removeprefix(directory) + (f"?{where.query}" if where.query else "")
                assert not v.startswith("/")
            out.append((k, v))
        return out

    base, _ = base_and_app(tmp_path, "t17")
    upper = tree(tmp_path / "upper", {"streamed": os.urandom(100_000)})
    with forwarding_proxy(registry.host, answer=relative) as proxy:
        pushed = layerdiff.push(base, f"docker://{proxy.host}/t17/base:1", tls_verify=False)
        committed = run_cli(
            "commit", "--tls-verify=false", "--progress=none", "--upper", str(upper),
            f"docker://{proxy.host}/t17/streamed:1",
        )  # fmt: skip
    assert statuses(pushed) == ["uploaded", "uploaded"]
    assert committed.returncode == 0, committed.stderr
    assert any(m == "PATCH" and "/blobs/uploads/" in p for m, p, _ in proxy.seen)
    for ref, name in ((registry.ref("t17/base:1"), "b"), (registry.ref("t17/streamed:1"), "s")):
        layerdiff.pull(ref, f"oci:{tmp_path / 'back'}:{name}", tls_verify=False)
    assert layerdiff.fsck(f"oci:{tmp_path / 'back'}").ok
    assert layerdiff.inspect(f"oci:{tmp_path / 'back'}:b")["digest"] == pushed.manifest_digest


def test_a_push_stopped_while_a_blob_is_sent_cancels_its_upload_rather_than_finish_it(
    registry: Registry, tmp_path: Path
) -> None:
    """Ctrl-C (or another blob's failure) as the last bytes of a blob go out: the upload is
    not closed with its digest (the push will not tag anything) but cancelled, and nothing of
    it stays in the registry."""
    from layerdiff import transfer
    from layerdiff.registry import Registry as Client

    lay = tmp_path / "l"
    made = layerdiff.commit(
        tree(tmp_path / "t", {"f": os.urandom(3 << 20)}), image=f"oci:{lay}:1", compression="none"
    )
    desc = {
        "mediaType": made.layer.media_type,
        "digest": made.layer.digest,
        "size": made.layer.size,
    }
    stop = threading.Event()

    def interrupt_at_the_end(_digest: str, done: int, size: int, status: str | None) -> None:
        if status is None and done == size:
            stop.set()

    with Client(registry.host, tls_verify=False) as reg, pytest.raises(transfer.Stopped):
        transfer.push_blob(
            reg, "t18/x", Layout.open(lay), desc, mount_from=[], on_blob=interrupt_at_the_end,
            stop=stop,
        )  # fmt: skip
    head = requests.head(f"http://{registry.host}/v2/t18/x/blobs/{made.layer.digest}", timeout=5)
    assert head.status_code == 404
    assert open_uploads(registry, "t18/x") == []


@pytest.mark.parametrize(
    "body",
    [
        b'{"errors": {"a": 1}}',
        b'{"errors": 5}',
        b'{"errors": [5]}',
        b'{"errors": [{"code": ["x"], "message": {"m": 1}}]}',
        b"[1, 2]",
        b"[" * 100_000,
    ],
)
def test_an_error_body_of_any_shape_gives_a_one_line_error_with_the_status(
    tmp_path: Path, body: bytes
) -> None:
    class Malformed(_Registry):
        def do_GET(self) -> None:
            if self.path == "/v2/":
                return self._answer(200)
            self.send_response(400)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    with _serving(Malformed) as (_, host):
        done = run_cli("pull", "--progress=none", "--tls-verify=false", f"docker://{host}/x:1")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert f"{host}: GET /v2/x/manifests/1: 400 Bad Request" in line, line
    assert "internal error" not in line


def test_a_pull_by_a_digest_of_another_algorithm_says_so(tmp_path: Path) -> None:
    """Without a local name, as with one: the algorithm is named, before the registry is
    reached (which is not running here)."""
    from tests.registry_server import free_port

    ref = f"docker://127.0.0.1:{free_port()}/x@sha512:{'a' * 128}"
    for args in ([ref], [ref, f"oci:{tmp_path / 'o'}:1"]):
        done = run_cli("pull", "--progress=none", "--tls-verify=false", *args)
        assert done.returncode == 1
        [line] = done.stderr.splitlines()
        assert f"sha512:{'a' * 128}: only sha256 digests are supported" in line, line
        assert "unreachable" not in line


@pytest.mark.parametrize(
    "platform", ["linux/amd64 ", " linux/amd64", "linux /amd64", "linux/arm/v7\n"]
)
def test_a_platform_with_stray_whitespace_is_refused(platform: str) -> None:
    from layerdiff.platforms import parse_platform

    with pytest.raises(layerdiff.InvalidArgumentError, match="expected OS/ARCH"):
        parse_platform(platform)
    # Refused before the registry is reached (nothing listens at port 1).
    with pytest.raises(layerdiff.InvalidArgumentError, match="expected OS/ARCH"):
        layerdiff.pull("docker://127.0.0.1:1/x:1", "x:1", platform=platform, tls_verify=False)


def test_an_invalid_registry_address_fails_at_once(tmp_path: Path) -> None:
    done = run_cli("pull", "--progress=none", "--tls-verify=false", "docker://127.0.0.1:99999/x:1")
    assert done.returncode == 1
    [line] = done.stderr.splitlines()
    assert "127.0.0.1:99999" in line and "not a valid URL" in line, line
    assert "attempts" not in line


def test_a_host_name_with_no_address_fails_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """getaddrinfo's "no such name" comes again on every try: not retried with backoff (a
    resolver that did not answer, EAI_AGAIN, is)."""
    real = socket.getaddrinfo
    asked: list[object] = []

    def getaddrinfo(host: object, *args: Any, **kwargs: Any) -> Any:
        if host == "registry.example.invalid":
            asked.append(host)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return real(host, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    begin = time.monotonic()
    with pytest.raises(layerdiff.RegistryUnreachableError) as e:
        layerdiff.pull("docker://registry.example.invalid/x:1", "x:1")
    assert time.monotonic() - begin < 0.4  # the first backoff alone is 0.5 s
    assert len(asked) == 1, asked
    assert "Name or service not known" in str(e.value) and "attempts" not in str(e.value)
