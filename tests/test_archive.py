"""docker-archive: save writes what skopeo (and docker load) read; load imports what skopeo
writes, in the legacy form and in the OCI-layout form docker 25+ writes."""

from __future__ import annotations

import copy
import errno
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from layerdiff.layout import Layout
from tests.conftest import run_cli
from tests.stacks import MTIME, PLNK, D, Entry, F, H, S, layer_tar, load_layers
from tests.treecmp import assert_same_tree

needs_skopeo = pytest.mark.skipif(shutil.which("skopeo") is None, reason="needs skopeo")


def two_layer_image(tmp_path: Path, compression: str = "zstd") -> str:
    base = tmp_path / "base"
    (base / "etc").mkdir(parents=True)
    (base / "etc/os-release").write_text("ID=test\n")
    app = tmp_path / "app"
    (app / "srv").mkdir(parents=True)
    (app / "srv/data").write_bytes(os.urandom(100_000))
    layerdiff.commit(base, image="base:1")
    layerdiff.commit(app, image="app:1", base="base:1", compression=compression)
    return "app:1"


def skopeo(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["skopeo", *args], capture_output=True, text=True, check=False)


@needs_skopeo
def test_save_is_read_by_skopeo_and_loads_back(tmp_path: Path) -> None:
    image = two_layer_image(tmp_path)
    archive = tmp_path / "app.tar"
    out = run_cli("save", "--json", image, f"docker-archive:{archive}:team/app:7")
    assert out.returncode == 0, out.stderr
    saved = json.loads(out.stdout)
    assert saved["repo_tags"] == ["team/app:7"]
    assert saved["config"] == layerdiff.inspect(image)["manifest"]["config"]["digest"]
    with tarfile.open(archive) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert entry["RepoTags"] == ["team/app:7"]
    info = layerdiff.inspect(image)
    diff_ids = info["config"]["rootfs"]["diff_ids"]
    assert entry["Layers"] == [d.removeprefix("sha256:") + ".tar" for d in diff_ids]
    inspected = skopeo("inspect", f"docker-archive:{archive}")
    assert inspected.returncode == 0, inspected.stderr
    copied = skopeo("copy", f"docker-archive:{archive}", f"oci:{tmp_path / 'sk'}:x")
    assert copied.returncode == 0, copied.stderr
    sk = Layout.open(tmp_path / "sk")
    sk_config = sk.read_json(sk.read_json(sk.resolve("x"))["config"])
    assert sk_config["rootfs"]["diff_ids"] == diff_ids  # skopeo checked each layer against them

    loaded = layerdiff.load(archive)
    assert loaded.images == ("team/app:7",)
    assert loaded.config_digest == info["manifest"]["config"]["digest"]
    layerdiff.unpack(image, tmp_path / "a")
    layerdiff.unpack("team/app:7", tmp_path / "b")
    assert_same_tree(tmp_path / "a", tmp_path / "b")
    assert layerdiff.fsck().ok


def test_save_to_a_pipe_or_through_a_link_writes_there_and_leaves_the_link(tmp_path: Path) -> None:
    """As `docker save -o /dev/stdout`: a pipe is written as it is, with nothing made beside
    it; a symbolic link to a file stays a link, and the file it leads to is replaced."""
    image = two_layer_image(tmp_path)
    out = subprocess.run(
        [sys.executable, "-m", "layerdiff", "save", image, "docker-archive:/dev/stdout"],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert os.path.islink("/dev/stdout")
    with tarfile.open(fileobj=io.BytesIO(out.stdout)) as tar:
        [entry] = json.load(tar.extractfile("manifest.json"))  # type: ignore[arg-type]
    assert entry["RepoTags"] == ["app:1"]
    assert not any(p.name.startswith(".stdout") for p in Path("/dev").iterdir())

    # Standard output a file a shell opened, with something written before: kept, followed.
    with open(tmp_path / "out.tar", "wb") as f:
        f.write(b"HEADER\n")
        f.flush()
        done = subprocess.run(
            [sys.executable, "-m", "layerdiff", "save", image, "docker-archive:/dev/stdout"],
            stdout=f,
            stderr=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "out.tar").read_bytes() == b"HEADER\n" + out.stdout

    (tmp_path / "real.tar").write_bytes(b"old")
    (tmp_path / "link.tar").symlink_to("real.tar")
    linked = run_cli("save", image, f"docker-archive:{tmp_path / 'link.tar'}")
    assert linked.returncode == 0, linked.stderr
    assert (tmp_path / "link.tar").is_symlink()
    assert (tmp_path / "real.tar").read_bytes() == out.stdout


@needs_skopeo
def test_load_what_skopeo_saved(tmp_path: Path) -> None:
    image = two_layer_image(tmp_path, "gzip")  # docker images cannot hold zstd layers
    src = layerdiff.inspect(image)["layout"]
    archive = tmp_path / "sk.tar"
    out = skopeo("copy", f"oci:{src}:{image}", f"docker-archive:{archive}:sk/app:1")
    assert out.returncode == 0, out.stderr
    result = run_cli("load", str(archive))
    assert result.returncode == 0, result.stderr
    assert (
        layerdiff.inspect("docker.io/sk/app:1")["config"]["rootfs"]
        == layerdiff.inspect(image)["config"]["rootfs"]
    )
    # Named on the command line instead, into an OCI layout.
    result = run_cli("load", str(archive), f"oci:{tmp_path / 'out'}:v1")
    assert result.returncode == 0, result.stderr
    assert layerdiff.fsck(f"oci:{tmp_path / 'out'}").ok


def test_load_oci_layout_form(tmp_path: Path) -> None:
    """docker 25+: an OCI layout whose manifest.json points into blobs/sha256."""
    image = two_layer_image(tmp_path)
    info = layerdiff.inspect(image)
    layout = Path(info["layout"])
    archive = tmp_path / "oci-form.tar"
    entry = {
        "Config": "blobs/sha256/" + info["manifest"]["config"]["digest"].removeprefix("sha256:"),
        "RepoTags": ["oci/form:1"],
        "Layers": ["blobs/sha256/" + d["digest"].removeprefix("sha256:") for d in info["layers"]],
    }
    (tmp_path / "manifest.json").write_text(json.dumps([entry]))
    with tarfile.open(archive, "w") as tar:
        tar.add(layout / "oci-layout", "oci-layout")
        tar.add(layout / "index.json", "index.json")
        tar.add(layout / "blobs", "blobs")
        tar.add(tmp_path / "manifest.json", "manifest.json")
    loaded = layerdiff.load(archive)
    assert loaded.images == ("oci/form:1",)
    assert loaded.layers == tuple(d["digest"] for d in info["layers"])  # stored as they were
    layerdiff.unpack("oci/form:1", tmp_path / "r")
    assert (tmp_path / "r/srv/data").stat().st_size == 100_000


def test_load_refuses_a_layer_that_is_not_its_diff_id(tmp_path: Path) -> None:
    image = two_layer_image(tmp_path)
    archive = tmp_path / "a.tar"
    layerdiff.save(image, f"docker-archive:{archive}:x/y:1")
    bad = tmp_path / "bad.tar"
    with tarfile.open(archive) as src, tarfile.open(bad, "w") as dst:
        for member in src.getmembers():
            data = src.extractfile(member).read()  # type: ignore[union-attr]
            if member.name.endswith(".tar"):
                data = data[:-1] + b"\x01"
            import io

            dst.addfile(member, io.BytesIO(data))
    with pytest.raises(layerdiff.DigestMismatchError, match="diff_id"):
        layerdiff.load(bad)
    assert layerdiff.images() == [i for i in layerdiff.images() if i.name != "x/y"]
    out = run_cli("load", str(tmp_path / "missing.tar"))
    assert out.returncode != 0 and out.stderr.count("\n") == 1


def _archive_of_links(path: Path, links: dict[str, str]) -> Path:
    """A tar holding symlinks ``name -> target``, and a file ``end`` holding an empty list."""
    with tarfile.open(path, "w") as tar:
        for name, target in links.items():
            info = tarfile.TarInfo(name)
            info.type, info.linkname = tarfile.SYMTYPE, target
            tar.addfile(info)
        info = tarfile.TarInfo("end")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"[]"))
    return path


@pytest.mark.parametrize(
    ("links", "message"),
    [
        ({"manifest.json": "manifest.json"}, "links that loop"),
        ({"manifest.json": "a", "a": "b", "b": "a"}, "links that loop"),
        ({"manifest.json": "d/../manifest.json"}, "links that loop"),
        (
            {"manifest.json": "l0", **{f"l{i}": f"l{i + 1}" for i in range(50)}, "l50": "end"},
            "more than 40 links",
        ),
    ],
    ids=["self", "cycle", "self-by-another-path", "long-chain"],
)
def test_load_refuses_a_symlink_loop_in_the_archive(
    tmp_path: Path, links: dict[str, str], message: str
) -> None:
    archive = _archive_of_links(tmp_path / "loop.tar", links)
    # In a child process: what this guards against is a load that never returns.
    proc = subprocess.run(
        [sys.executable, "-m", "layerdiff", "load", str(archive)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line == f"layerdiff: error: {archive}: 'manifest.json' is reached through {message}"
    with pytest.raises(layerdiff.FormatError, match=r"'manifest\.json' is reached through"):
        layerdiff.load(archive)


def test_load_follows_links_to_layers_in_other_directories(tmp_path: Path) -> None:
    """docker's legacy form links a repeated layer as ../<id>/layer.tar (a symlink, relative
    to its directory); a tar hardlink names its target from the archive's root."""
    image = two_layer_image(tmp_path)
    saved = tmp_path / "saved.tar"
    layerdiff.save(image, f"docker-archive:{saved}:x/y:1")
    relinked = tmp_path / "relinked.tar"
    with tarfile.open(saved) as src, tarfile.open(relinked, "w") as dst:
        [entry] = json.load(src.extractfile("manifest.json"))  # type: ignore[arg-type]
        layers = []
        for i, name in enumerate(entry["Layers"]):
            info = copy.copy(src.getmember(name))
            info.name = f"blob{i}/layer.tar"
            dst.addfile(info, src.extractfile(name))
            link = tarfile.TarInfo(f"id{i}/layer.tar")
            if i == 0:
                link.type, link.linkname = tarfile.SYMTYPE, f"../blob{i}/layer.tar"
            else:
                link.type, link.linkname = tarfile.LNKTYPE, f"blob{i}/layer.tar"
            dst.addfile(link)
            layers.append(link.name)
        config = src.getmember(entry["Config"])
        dst.addfile(config, src.extractfile(config))
        body = json.dumps([{**entry, "Layers": layers}]).encode()
        info = tarfile.TarInfo("manifest.json")
        info.size = len(body)
        dst.addfile(info, io.BytesIO(body))
    assert layerdiff.load(relinked).layers == layerdiff.load(saved).layers


def _with_member(saved: Path, out: Path, name: str, change: Any) -> Path:
    """``saved`` with the JSON member ``name`` (manifest.json: its one entry) changed."""
    with tarfile.open(saved) as src, tarfile.open(out, "w") as dst:
        [entry] = json.load(src.extractfile("manifest.json"))  # type: ignore[arg-type]
        member = entry["Config"] if name == "config" else name
        for info in src.getmembers():
            data = src.extractfile(info).read()  # type: ignore[union-attr]
            if info.name == member:
                obj = json.loads(data)
                change(obj[0] if name == "manifest.json" else obj)
                data = json.dumps(obj).encode()
                info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    return out


def _set(key: str, value: Any) -> Any:
    return lambda obj: obj.update({key: value})


@pytest.mark.parametrize(
    ("member", "change", "message"),
    [
        ("manifest.json", _set("RepoTags", "abc"), "RepoTags is not a list of names"),
        ("manifest.json", _set("RepoTags", [5]), "RepoTags is not a list of names"),
        ("manifest.json", _set("RepoTags", ["Not/Valid:1"]), "RepoTags: invalid image"),
        ("manifest.json", _set("RepoTags", ["oci:/tmp/x:1"]), "RepoTags: invalid image"),
        ("manifest.json", _set("Config", 5), "Config is not a file name"),
        ("manifest.json", lambda e: e.pop("Config"), "Config is not a file name"),
        ("manifest.json", _set("Layers", "ab"), "Layers is not a list of file names"),
        ("manifest.json", _set("Layers", [{}]), "Layers is not a list of file names"),
        ("config", _set("rootfs", {"type": "layers", "diff_ids": 5}), "rootfs.diff_ids is not"),
        ("config", _set("rootfs", {"diff_ids": [5]}), "rootfs.diff_ids: 5: not a sha256"),
        ("config", _set("rootfs", "layers"), "rootfs.diff_ids is not"),
        ("config", lambda c: c.pop("rootfs"), "rootfs.diff_ids is not"),
    ],
)
def test_load_refuses_malformed_manifest_fields(
    tmp_path: Path, member: str, change: Any, message: str
) -> None:
    image = two_layer_image(tmp_path)
    saved = tmp_path / "saved.tar"
    layerdiff.save(image, f"docker-archive:{saved}:x/y:1")
    bad = _with_member(saved, tmp_path / "bad.tar", member, change)
    with pytest.raises(layerdiff.FormatError, match=re.escape(message)) as info:
        layerdiff.load(bad)
    assert "\n" not in str(info.value) and str(bad) in str(info.value)
    assert [i.name for i in layerdiff.images()] == ["base", "app"]  # nothing was tagged
    proc = run_cli("load", str(bad))
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and message in proc.stderr


def test_load_of_a_missing_file_is_the_packages_os_error(tmp_path: Path) -> None:
    missing = tmp_path / "missing.tar"
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        layerdiff.load(missing)
    assert info.value.errno == errno.ENOENT and info.value.filename == str(missing)
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        layerdiff.load(tmp_path)
    assert info.value.errno == errno.EISDIR and info.value.filename == str(tmp_path)


@pytest.mark.parametrize(
    ("target", "code"),
    [
        ("{tmp}/dir", errno.EISDIR),
        ("/proc/x.tar", errno.ENOENT),
        ("{tmp}/file/x.tar", errno.ENOTDIR),
        ("{tmp}/no-such-dir/x.tar", errno.ENOENT),
    ],
    ids=["a-directory", "proc", "below-a-file", "in-a-missing-directory"],
)
def test_save_where_it_cannot_write_names_the_path_given(
    tmp_path: Path, target: str, code: int
) -> None:
    image = two_layer_image(tmp_path)
    (tmp_path / "dir").mkdir()
    (tmp_path / "file").write_text("")
    path = target.format(tmp=tmp_path)
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        layerdiff.save(image, f"docker-archive:{path}")
    assert (info.value.filename, info.value.errno) == (path, code)
    proc = run_cli("save", image, f"docker-archive:{path}")
    assert proc.returncode == 1
    [line] = proc.stderr.splitlines()
    assert line.startswith(f"layerdiff: error: {path}: ") and ".tmp" not in line
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    assert list((tmp_path / "dir").iterdir()) == []


def test_results_are_hashable_values(tmp_path: Path) -> None:
    """Like the other results (LayerInfo, CommitResult…): frozen, with tuples, so hashable."""
    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("x")
    layerdiff.commit(tree, image="app:1")
    saved = layerdiff.save("app:1", f"docker-archive:{tmp_path}/a.tar")
    loaded = layerdiff.load(tmp_path / "a.tar", "copy:1")
    assert len({saved, saved}) == 1 and len({loaded, loaded}) == 1


def test_an_aufs_image_loads_unpacks_and_squashes(tmp_path: Path) -> None:
    """An image docker made on aufs: a layer's hardlinks point into `.wh..wh.plnk/`, where
    aufs kept their file. They become one file with that file's content and header, as they
    were in the container; the link directory is never made; squash gives the same tree."""
    base = layer_tar([D("usr"), F("usr/old", b"old")])
    aufs = layer_tar(
        [
            D(PLNK, mode=0o700),
            F(f"{PLNK}/262.1418", b"#!/bin/sh\necho hi\n", mode=0o755),
            D("usr/bin"),
            H("usr/bin/a", f"{PLNK}/262.1418"),
            H("usr/bin/b", f"{PLNK}/262.1418"),
            F(".wh..wh.aufs", b"", mode=0o600),
        ]
    )
    load_layers(tmp_path, "old/aufs:1", [base, aufs])

    out = run_cli("unpack", "old/aufs:1", str(tmp_path / "r"))
    assert out.returncode == 0, out.stderr
    root = tmp_path / "r"
    assert sorted(p.name for p in root.iterdir()) == ["usr"]
    a, b = root / "usr/bin/a", root / "usr/bin/b"
    assert a.read_bytes() == b.read_bytes() == b"#!/bin/sh\necho hi\n"
    assert a.stat().st_mode & 0o7777 == 0o755 and a.stat().st_mtime == MTIME
    assert a.stat().st_ino == b.stat().st_ino and a.stat().st_nlink == 2
    # The rest of aufs' metadata is ignored, with a warning.
    assert out.stderr.count("\n") == 1 and ".wh..wh.aufs: aufs metadata entry ignored" in out.stderr

    squashed = layerdiff.squash("old/aufs:1", "old/aufs:squashed")
    assert squashed.layer.size > 0
    layerdiff.unpack("old/aufs:squashed", tmp_path / "s")
    assert_same_tree(root, tmp_path / "s")
    # The second squash reads the layers' indexes and finds them right: none is made again.
    index_dir = Path(os.environ["LAYERDIFF_HOME"]) / "layer-index/sha256"
    sources = [
        d["digest"].removeprefix("sha256:") for d in layerdiff.inspect("old/aufs:1")["layers"]
    ]

    def indexes() -> list[int]:
        return [(index_dir / d).stat().st_ino for d in sources]

    before = indexes()
    layerdiff.squash("old/aufs:1", "old/aufs:again")
    assert indexes() == before


_KEPT = F(f"{PLNK}/1", b"kept")


@pytest.mark.parametrize(
    ("lower", "aufs"),
    [
        # An ordinary hardlink to the made file, which is then replaced: the file lives on
        # under the ordinary link, and the next aufs hardlink joins it.
        (
            [],
            [_KEPT, H("a", f"{PLNK}/1"), H("b", "a"), F("a", b"other"), H("c", f"{PLNK}/1")],
        ),
        # The same file reached through a symlinked parent, then by its own path.
        (
            [D("e"), S("d", "e")],
            [_KEPT, H("d/x", f"{PLNK}/1"), H("e/x", f"{PLNK}/1")],
        ),
        # The symlinked parent is replaced by a directory between two hardlinks.
        (
            [D("e"), S("d", "e")],
            [_KEPT, H("d/x", f"{PLNK}/1"), D("d"), H("d/x", f"{PLNK}/1")],
        ),
        # Every link to the made file replaced: the next hardlink makes it again.
        (
            [],
            [
                _KEPT,
                H("a", f"{PLNK}/1"),
                F("a", b"other"),
                H("b", f"{PLNK}/1"),
                H("c", f"{PLNK}/1"),
            ],
        ),
        # An ordinary hardlink naming its own target through a symlinked parent.
        ([D("e"), S("d", "e")], [F("e/x", b"x"), H("d/x", "e/x")]),
    ],
)
def test_aufs_hardlinks_apply_as_they_squash(
    tmp_path: Path, lower: list[Entry], aufs: list[Entry]
) -> None:
    load_layers(tmp_path, "old/aufs:1", [layer_tar(lower), layer_tar(aufs)])
    layerdiff.unpack("old/aufs:1", tmp_path / "r")
    layerdiff.squash("old/aufs:1", "old/aufs:squashed")
    layerdiff.unpack("old/aufs:squashed", tmp_path / "s")
    assert_same_tree(tmp_path / "r", tmp_path / "s")
    # A second squash finds the indexes the first kept right (a layer whose contents are
    # taken out of path order gets none): none is made again.
    index_dir = Path(os.environ["LAYERDIFF_HOME"]) / "layer-index/sha256"
    sources = [
        d["digest"].removeprefix("sha256:") for d in layerdiff.inspect("old/aufs:1")["layers"]
    ]

    def indexes() -> dict[str, int]:
        return {d: (index_dir / d).stat().st_ino for d in sources if (index_dir / d).exists()}

    before = indexes()
    layerdiff.squash("old/aufs:1", "old/aufs:again")
    assert indexes() == before


def test_squash_refuses_a_path_below_a_file_as_unpack_does(tmp_path: Path) -> None:
    """A layer putting `a/b` below its own file `a`: unpack fails (as docker's apply does), and
    squash refuses it too instead of writing a layer nothing can apply."""
    load_layers(tmp_path, "odd/below:1", [layer_tar([F("a", b"A"), F("a/b", b"B")])])
    unpack = run_cli("unpack", "odd/below:1", str(tmp_path / "r"))
    squash = run_cli("squash", "odd/below:1", "odd/below:squashed")
    assert unpack.returncode == squash.returncode == 1, (unpack.stderr, squash.stderr)
    assert "a/b: Not a directory" in unpack.stderr and "a/b: Not a directory" in squash.stderr
    assert run_cli("inspect", "odd/below:squashed").returncode != 0


def test_load_of_a_truncated_or_corrupt_archive_is_a_format_error(tmp_path: Path) -> None:
    image = two_layer_image(tmp_path)
    archive = tmp_path / "app.tar"
    layerdiff.save(image, f"docker-archive:{archive}")
    data = archive.read_bytes()
    import gzip

    cases = {
        "cut.tar": data[:1000],
        "cut-in-a-layer.tar": data[: len(data) // 2],
        "cut.tar.gz": gzip.compress(data)[:500],
        "not-a-tar": b"hello\n" * 100,
    }
    for name, body in cases.items():
        (tmp_path / name).write_bytes(body)
        with pytest.raises(layerdiff.FormatError):
            layerdiff.load(tmp_path / name, "x:1")
        done = run_cli("load", str(tmp_path / name), "x:1")
        assert done.returncode == 1, (name, done.stderr)
        [line] = done.stderr.splitlines()
        assert "internal error" not in line and "ReadError" not in line, line
    assert [i.tag for i in layerdiff.images() if i.name == "x"] == []
    assert layerdiff.fsck().ok


def test_load_reads_names_with_a_dot_slash_and_files_given_twice(tmp_path: Path) -> None:
    """``tar -C dir -cf x.tar .`` names every member ``./…``, and a manifest may name them so;
    GNU tar stores a file given twice as a hardlink to its own name. docker and skopeo read
    both."""
    image = two_layer_image(tmp_path)
    layerdiff.save(image, f"docker-archive:{tmp_path / 'app.tar'}:app:1")
    tree = tmp_path / "tree"
    tree.mkdir()
    with tarfile.open(tmp_path / "app.tar") as tar:
        tar.extractall(tree, filter="data")
    manifest = json.loads((tree / "manifest.json").read_text())
    manifest[0]["Config"] = "./" + manifest[0]["Config"]
    manifest[0]["Layers"] = ["./" + name for name in manifest[0]["Layers"]]
    (tree / "manifest.json").write_text(json.dumps(manifest))
    dotted = tmp_path / "dotted.tar"
    subprocess.run(["tar", "-C", str(tree), "-cf", str(dotted), "."], check=True)
    config = layerdiff.inspect(image)["manifest"]["config"]["digest"]
    assert layerdiff.load(dotted, "dotted:1").config_digest == config
    twice = tmp_path / "twice.tar"
    members = sorted(os.listdir(tree))
    subprocess.run(
        ["tar", "-C", str(tree), "-cf", str(twice), *members, "manifest.json"], check=True
    )
    with tarfile.open(twice) as tar:
        assert [m.islnk() for m in tar.getmembers() if m.name == "manifest.json"] == [False, True]
    assert layerdiff.load(twice, "twice:1").config_digest == config


def test_load_of_an_archive_of_several_images_loads_them_all(tmp_path: Path) -> None:
    """What ``docker save a b`` writes: load takes every image, each as its tags (an image
    without one, as ``docker save IMAGE-ID`` writes it, untagged), as docker load does;
    docker-archive:FILE:NAME:TAG picks one, from the command line too."""
    image = two_layer_image(tmp_path)
    layerdiff.save("base:1", f"docker-archive:{tmp_path / 'a.tar'}:team/base:1")
    layerdiff.save(image, f"docker-archive:{tmp_path / 'b.tar'}:team/app:1")
    both = tmp_path / "both"
    both.mkdir()
    entries = []
    for name in ("a.tar", "b.tar"):
        with tarfile.open(tmp_path / name) as tar:
            tar.extractall(both, filter="data")
        entries += json.loads((both / "manifest.json").read_text())
    entries.append({**entries[1], "RepoTags": None})  # app again, by its ID
    (both / "manifest.json").write_text(json.dumps(entries))
    untagged_only = tmp_path / "untagged"
    untagged_only.mkdir()
    with tarfile.open(tmp_path / "b.tar") as tar:
        tar.extractall(untagged_only, filter="data")
    [app_entry] = json.loads((untagged_only / "manifest.json").read_text())
    (untagged_only / "manifest.json").write_text(json.dumps([{**app_entry, "RepoTags": None}]))
    lone = tmp_path / "lone.tar"
    subprocess.run(["tar", "-C", str(untagged_only), "-cf", str(lone), "."], check=True)
    archive = tmp_path / "both.tar"
    subprocess.run(["tar", "-C", str(both), "-cf", str(archive), "."], check=True)

    one = run_cli("load", f"docker-archive:{archive}:team/app:1", "picked:1")
    assert one.returncode == 0, one.stderr
    assert one.stdout.split()[0] == "picked:1"
    done = run_cli("load", "--json", str(archive))
    assert done.returncode == 0, done.stderr
    loaded = json.loads(done.stdout)
    assert [r["images"] for r in loaded] == [["team/base:1"], ["team/app:1"], []]
    # The digests under the names commit and squash give them, too.
    assert [(r["manifest"], r["config"]) for r in loaded] == [
        (r["manifest_digest"], r["config_digest"]) for r in loaded
    ]
    names = {f"{i.name}:{i.tag}" for i in layerdiff.images()}
    assert {"team/base:1", "team/app:1", "picked:1"} <= names
    # Loaded by its ID where a name holds it already, it is not listed a second time.
    assert [i for i in layerdiff.images() if i.tag == "<none>"] == []
    with pytest.raises(layerdiff.ImageNotFoundError, match="holds 3 images"):
        layerdiff.load(archive)
    for name in ("team/app:1", "picked:1"):
        assert run_cli("rmi", "--no-prune", name).returncode == 0
    done = run_cli("load", str(lone))
    assert (done.returncode, done.stdout.split()[0]) == (0, "<none>"), done.stderr
    untagged = [i for i in layerdiff.images() if i.tag == "<none>"]
    assert [i.digest for i in untagged] == [loaded[2]["manifest_digest"]]
    assert layerdiff.fsck().ok
    # rmi takes an untagged image by its digest, as images shows it (docker's image ID).
    short = untagged[0].digest.removeprefix("sha256:")[:12]
    done = run_cli("rmi", short)
    assert done.returncode == 0, done.stderr
    assert f"deleted the untagged image {untagged[0].digest}" in done.stdout
    assert [i for i in layerdiff.images() if i.tag == "<none>"] == []
    assert run_cli("rmi", short).returncode == 1  # gone
    assert layerdiff.fsck().ok

    # Tagged, it is listed by its name alone, as docker drops the <none> row; by its ID, rmi
    # takes its one name, and all of them only with -f.
    assert run_cli("load", str(lone)).returncode == 0
    assert run_cli("tag", short, "fromid:1").returncode == 0
    rows = [(i.name, i.tag) for i in layerdiff.images() if i.digest == untagged[0].digest]
    assert rows == [("fromid", "1")]
    assert run_cli("tag", "fromid:1", "fromid:2").returncode == 0
    refused = run_cli("rmi", short)
    assert refused.returncode == 1 and "fromid:1, fromid:2" in refused.stderr, refused
    assert run_cli("rmi", "fromid:2").returncode == 0
    done = run_cli("rmi", short)
    assert done.returncode == 0 and "untagged fromid:1" in done.stdout, done
    assert run_cli("load", str(lone)).returncode == 0
    assert run_cli("tag", short, "fromid:1").returncode == 0
    assert run_cli("tag", short, "fromid:2").returncode == 0
    assert run_cli("rmi", "-f", short).returncode == 0
    assert not [i for i in layerdiff.images() if i.digest == untagged[0].digest]
    assert layerdiff.fsck().ok


def test_save_takes_a_file_as_docker_save_does(tmp_path: Path) -> None:
    """`save IMAGE FILE`, `save -o FILE IMAGE` and `save IMAGE > FILE` write the same archive
    as `docker-archive:FILE`; a terminal, a layout or two targets are usage errors."""
    image = two_layer_image(tmp_path)
    assert run_cli("save", image, f"docker-archive:{tmp_path / 'ref.tar'}").returncode == 0
    want = (tmp_path / "ref.tar").read_bytes()
    plain = run_cli("save", image, str(tmp_path / "plain.tar"))
    assert plain.returncode == 0 and plain.stdout == f"{tmp_path / 'plain.tar'}\n", plain.stderr
    assert (tmp_path / "plain.tar").read_bytes() == want
    assert run_cli("save", "-o", str(tmp_path / "o.tar"), image).returncode == 0
    assert (tmp_path / "o.tar").read_bytes() == want
    piped = subprocess.run(
        [sys.executable, "-m", "layerdiff", "save", image],
        capture_output=True,
        check=False,
        timeout=120,
    )
    assert piped.returncode == 0 and piped.stdout == want, piped.stderr
    for args in (
        ["save", image, str(tmp_path / "a.tar"), "-o", str(tmp_path / "b.tar")],
        ["save", image, f"oci:{tmp_path / 'layout'}"],
    ):
        done = run_cli(*args)
        assert done.returncode == 2 and "layerdiff: error:" in done.stderr, done.stderr
    assert not (tmp_path / "a.tar").exists() and not (tmp_path / "b.tar").exists()
    import pty

    leader, follower = pty.openpty()
    try:
        on_tty = subprocess.run(
            [sys.executable, "-m", "layerdiff", "save", image],
            stdout=follower,
            stderr=subprocess.PIPE,
            check=False,
            timeout=120,
        )
    finally:
        os.close(follower)
        os.close(leader)
    assert on_tty.returncode == 2 and b"refusing to write an archive to a terminal" in on_tty.stderr
