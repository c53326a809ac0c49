"""End to end on the real core: the API, the ``layerdiff`` command, skopeo and umoci."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import platform
import re
import shutil
import stat
import subprocess
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from layerdiff.image import canonical_json
from layerdiff.layout import Layout
from tests import seccomp
from tests.conftest import run_cli
from tests.overlays import mount_or_skip
from tests.refapply import apply_layer
from tests.treecmp import assert_same_tree

SDE = "SOURCE_DATE_EPOCH"
T0 = 1_600_000_000_123_456_789  # mtimes with nanoseconds, to see that they survive


def make_rootfs(root: Path) -> Path:
    """A small rootfs with the usual kinds of entries."""
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n")
    (root / "etc" / "hostname").write_text("box\n")
    (root / "bin").mkdir()
    (root / "bin" / "app").write_bytes(b"#!/bin/sh\necho hi\n" + bytes(range(256)) * 40)
    os.chmod(root / "bin" / "app", 0o4755)
    os.symlink("app", root / "bin" / "alias")
    os.link(root / "bin" / "app", root / "bin" / "app-hardlink")
    (root / "tmp").mkdir()
    os.chmod(root / "tmp", 0o1777)
    (root / "var" / "lib" / "empty").mkdir(parents=True)
    os.setxattr(root / "etc" / "os-release", "user.note", b"kept")
    for path in root.rglob("*"):
        os.utime(path, ns=(T0, T0), follow_symlinks=False)
    return root


def change_rootfs(root: Path) -> None:
    """Typical container changes: add, modify, delete, replace a directory."""
    (root / "etc" / "hostname").write_text("changed\n")
    os.utime(root / "etc" / "hostname", ns=(T0 + 5, T0 + 5))
    (root / "etc" / "new.conf").write_text("new\n")
    os.unlink(root / "bin" / "alias")
    shutil.rmtree(root / "var" / "lib")
    (root / "var" / "lib").mkdir()
    (root / "var" / "lib" / "state").write_text("s")


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


@pytest.fixture
def changed(tmp_path: Path, rootfs: Path) -> Path:
    upper = tmp_path / "changed"
    subprocess.run(["cp", "-a", str(rootfs), str(upper)], check=True)
    change_rootfs(upper)
    return upper


def umoci_unpack(image: str, bundle: Path) -> Path:
    proc = subprocess.run(
        ["umoci", "unpack", "--image", image, str(bundle)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return bundle / "rootfs"


def umoci_reads_zstd() -> bool:
    out = subprocess.run(["umoci", "--version"], capture_output=True, text=True).stdout
    m = re.search(r"(\d+)\.(\d+)", out)
    return m is not None and (int(m[1]), int(m[2])) >= (0, 5)


# -- API ---------------------------------------------------------------------------------------


def test_diff(rootfs: Path, changed: Path) -> None:
    changes = layerdiff.diff(rootfs, changed)
    lines = [str(c) for c in changes]
    assert {"D /bin/alias", "C /etc/hostname", "A /etc/new.conf", "A /var/lib/state"} <= set(lines)
    assert "C /etc" in lines  # adding a file changed the directory's mtime
    # A directory whose only change is in its children is not reported.
    for d in ("bin", "etc", "var"):
        os.utime(changed / d, ns=(T0, T0))
    lines = [str(c) for c in layerdiff.diff(rootfs, changed)]
    assert "C /etc" not in lines and "C /bin" not in lines and "C /var" not in lines
    paths = [c.path_bytes for c in changes]
    assert paths == sorted(paths)
    assert all(isinstance(c, layerdiff.Change) and c.path.startswith("/") for c in changes)
    assert layerdiff.diff(rootfs, rootfs) == []


def test_diff_content(rootfs: Path, tmp_path: Path) -> None:
    other = tmp_path / "touched"
    subprocess.run(["cp", "-a", str(rootfs), str(other)], check=True)
    os.utime(other / "etc" / "os-release", ns=(T0 + 9, T0 + 9))  # touched, same bytes
    assert [str(c) for c in layerdiff.diff(rootfs, other)] == ["C /etc/os-release"]
    assert layerdiff.diff(rootfs, other, content=True) == []


def test_content_finds_a_file_rewritten_with_its_size_and_mtime(tmp_path: Path) -> None:
    """Trees whose mtimes are all normalised (as reproducible builds leave them): a file
    rewritten with the same size is not seen by metadata, and is by `--content`, in `diff`
    and in a two-tree `commit`, whose layer then gives the new bytes."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for root, version in ((lower, "1.2.3"), (upper, "1.2.4")):
        (root / "app").mkdir(parents=True)
        (root / "app" / "version").write_text(f"VERSION={version}\n")
        (root / "app" / "same").write_text("unchanged\n")
        for path in (root / "app" / "version", root / "app" / "same", root / "app"):
            os.utime(path, ns=(T0, T0))
    assert run_cli("diff", str(lower), str(upper)).stdout == ""
    assert run_cli("diff", "--content", str(lower), str(upper)).stdout == "C /app/version\n"
    assert run_cli("commit", "--upper", str(lower), "--progress", "none", "app:1").returncode == 0
    done = run_cli(
        "commit",
        "--lower",
        str(lower),
        "--upper",
        str(upper),
        "--content",
        "--from",
        "app:1",
        "--progress",
        "none",
        "app:2",
    )
    assert done.returncode == 0, done.stderr
    layerdiff.unpack("app:2", tmp_path / "out")
    assert (tmp_path / "out" / "app" / "version").read_text() == "VERSION=1.2.4\n"
    assert len(layerdiff.inspect("app:2")["manifest"]["layers"]) == 2
    refused = run_cli("commit", "--upper", str(upper), "--content", "app:3")
    assert refused.returncode == 2 and "--content compares with the --lower" in refused.stderr


def test_cli_diff_content_and_names_that_are_not_utf8(rootfs: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    subprocess.run(["cp", "-a", str(rootfs), str(other)], check=True)
    os.utime(other / "etc" / "os-release", ns=(T0 + 9, T0 + 9))  # touched, same bytes
    name = b"caf\xe9-\xff"  # Latin-1, not UTF-8
    (other / "etc" / os.fsdecode(name)).write_text("x")
    os.utime(other / "etc", ns=(T0, T0))
    want = [b"A /etc/" + name, b"C /etc/os-release"]
    proc = subprocess.run(
        [sys.executable, "-m", "layerdiff", "diff", str(rootfs), str(other)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0 and proc.stdout.splitlines() == want
    proc = subprocess.run(
        [sys.executable, "-m", "layerdiff", "diff", "--content", str(rootfs), str(other)],
        capture_output=True,
        check=False,
    )
    assert proc.stdout.splitlines() == want[:1]
    out = run_cli("diff", "--json", "--content", str(rootfs), str(other)).stdout
    [change] = json.loads(out)
    assert change["kind"] == "A" and os.fsencode(change["path"]) == b"/etc/" + name
    assert "\\udce9" in out and out.isascii()


def test_trees_given_as_symlinks_are_followed_and_nothing_below_them(
    rootfs: Path, changed: Path, tmp_path: Path
) -> None:
    (tmp_path / "lower-link").symlink_to(rootfs)
    (tmp_path / "upper-link").symlink_to(changed)
    by_link = run_cli("diff", str(tmp_path / "lower-link"), str(tmp_path / "upper-link"))
    assert by_link.returncode == 0, by_link.stderr
    assert by_link.stdout == run_cli("diff", str(rootfs), str(changed)).stdout != ""
    digests = []
    for upper in (changed, tmp_path / "upper-link"):
        done = run_cli(
            "commit", "--json", "--upper", str(upper), f"oci:{tmp_path / 'l'}:t",
            env={SDE: "1700000000"},
        )  # fmt: skip
        assert done.returncode == 0, done.stderr
        digests.append(json.loads(done.stdout)["digest"])
    assert digests[0] == digests[1]
    (tmp_path / "file-link").symlink_to(rootfs / "etc" / "hostname")
    refused = run_cli("diff", str(rootfs), str(tmp_path / "file-link"))
    assert refused.returncode == 2
    assert f"Directory '{tmp_path / 'file-link'}' is a file" in refused.stderr


def test_cli_diff_prints_one_line_per_change_whatever_the_names(tmp_path: Path) -> None:
    """A newline in a name cannot forge a line: a backslash and control characters are
    escaped as in C; --json gives the names exactly."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    (upper / "x\nD passwd").write_text("x")
    (upper / "back\\slash\ttab\x01").write_text("y")
    proc = subprocess.run(
        [sys.executable, "-m", "layerdiff", "diff", str(lower), str(upper)],
        capture_output=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [
        b"A /back\\\\slash\\ttab\\x01",
        b"A /x\\nD passwd",
    ]
    out = json.loads(run_cli("diff", "--json", str(lower), str(upper)).stdout)
    assert [c["path"] for c in out] == ["/back\\slash\ttab\x01", "/x\nD passwd"]


def test_package_ships_type_information() -> None:
    """PEP 561: the installed package says it is typed and carries the core's stubs."""
    import importlib.resources

    package = importlib.resources.files("layerdiff")
    assert package.joinpath("py.typed").is_file()
    stubs = package.joinpath("_core.pyi").read_text()
    assert "def write_layer(" in stubs and "MAX_THREADS: int" in stubs


def test_write_layer_into_plain_dir_and_layout(rootfs: Path, tmp_path: Path) -> None:
    info = layerdiff.write_layer(rootfs, dest=tmp_path / "blobs", compression="none")
    assert info.path == tmp_path / "blobs" / info.digest.removeprefix("sha256:")
    assert info.digest == info.diff_id  # uncompressed: the blob is the tar
    assert info.size == info.tar_size == info.path.stat().st_size
    assert info.media_type == "application/vnd.oci.image.layer.v1.tar"
    layout = Layout.create(tmp_path / "layout")
    gz = layerdiff.write_layer(rootfs, dest=layout.path)
    assert gz.path.parent == layout.blobs_dir
    assert gz.diff_id == info.diff_id and gz.digest != info.digest
    assert gz.media_type.endswith("+gzip")


def test_write_layer_is_deterministic(rootfs: Path, tmp_path: Path) -> None:
    copy = tmp_path / "elsewhere" / "copy"
    copy.parent.mkdir()
    subprocess.run(["cp", "-a", str(rootfs), str(copy)], check=True)
    for compression in ("none", "gzip", "zstd"):
        digests = {
            layerdiff.write_layer(
                tree, dest=tmp_path / f"b{n}", compression=compression, threads=threads
            ).digest
            for n, (tree, threads) in enumerate([(rootfs, 1), (copy, 2), (rootfs, None)])
        }
        assert len(digests) == 1, compression


def test_write_layer_round_trip(rootfs: Path, changed: Path, tmp_path: Path) -> None:
    info = layerdiff.write_layer(changed, dest=tmp_path / "blobs", lower=rootfs)
    applied = tmp_path / "applied"
    subprocess.run(["cp", "-a", str(rootfs), str(applied)], check=True)
    apply_layer(info.path, applied)
    assert_same_tree(changed, applied)


def test_source_date_epoch_clamps(rootfs: Path, tmp_path: Path) -> None:
    info = layerdiff.write_layer(
        rootfs, dest=tmp_path / "b", compression="none", source_date_epoch=1_000_000_000
    )
    out = tmp_path / "out"
    out.mkdir()
    apply_layer(info.path, out)
    assert (out / "bin" / "app").stat().st_mtime <= 1_000_000_000


def test_bad_options(rootfs: Path, tmp_path: Path) -> None:
    # Bad arguments are ValueErrors, and layerdiff's own, like every other error.
    with pytest.raises(layerdiff.InvalidArgumentError, match="compression 'lz4'"):
        layerdiff.write_layer(rootfs, dest=tmp_path, compression="lz4")
    with pytest.raises(layerdiff.InvalidArgumentError, match="exclude each other"):
        layerdiff.write_layer(rootfs, dest=tmp_path, lower=rootfs, overlay=True)
    for threads in (0, 257):
        with pytest.raises(layerdiff.InvalidArgumentError, match=f"threads={threads}: expected"):
            layerdiff.commit(rootfs, image="x", threads=threads)
    assert issubclass(layerdiff.InvalidArgumentError, ValueError)
    assert layerdiff.layer.MAX_THREADS == layerdiff._core.MAX_THREADS
    # OS errors name the file as the caller would: a str, like Python's own.
    with pytest.raises(OSError) as info:
        layerdiff.write_layer(tmp_path / "missing", dest=tmp_path)
    assert isinstance(info.value, layerdiff.LayerdiffError)
    assert info.value.filename == str(tmp_path / "missing")


def test_reserved_name(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / ".wh.sneaky").write_text("")
    with pytest.raises(layerdiff.ReservedNameError, match=r"\.wh\.sneaky"):
        layerdiff.write_layer(tmp_path / "t", dest=tmp_path / "b")


def test_commit_on_base(rootfs: Path, changed: Path, tmp_path: Path) -> None:
    base = layerdiff.commit(rootfs, image="base:1", changes=['CMD ["/bin/app"]'])
    result = layerdiff.commit(
        changed,
        image="app:1",
        lower=rootfs,
        base="base:1",
        message="change",
        author="Jane",
        changes=["ENV A=1"],
    )
    info = layerdiff.inspect("app:1")
    assert [lay["digest"] for lay in info["layers"]] == [base.layer.digest, result.layer.digest]
    assert info["config"]["rootfs"]["diff_ids"] == [base.layer.diff_id, result.layer.diff_id]
    assert info["config"]["config"] == {"Cmd": ["/bin/app"], "Env": ["A=1"]}
    steps = layerdiff.history("app:1")
    assert [(s.comment, s.author) for s in steps] == [("change", "Jane"), ("", "")]


# -- the command line, as a user runs it ---------------------------------------------------------


def test_cli_end_to_end(rootfs: Path, changed: Path, tmp_path: Path) -> None:
    proc = run_cli("commit", "--upper", str(rootfs), "base:1", "--json", "-m", "base")
    assert proc.returncode == 0, proc.stderr
    base = json.loads(proc.stdout)
    assert {"digest", "diff_id", "size", "media_type", "manifest"} <= base.keys()
    assert base["media_type"] == "application/vnd.oci.image.layer.v1.tar+gzip"

    proc = run_cli(
        "commit",
        "--lower",
        str(rootfs),
        "--upper",
        str(changed),
        "--from",
        "base:1",
        "app:2",
        "-m",
        "second",
        "-a",
        "Jane",
        "-c",
        "ENV MODE=prod",
        "-c",
        "EXPOSE 8080",
        "--compression",
        "zstd",
        "--threads",
        "2",
        "--json",
    )
    assert proc.returncode == 0, proc.stderr
    app = json.loads(proc.stdout)
    assert app["media_type"] == "application/vnd.oci.image.layer.v1.tar+zstd"

    proc = run_cli("diff", str(rootfs), str(changed))
    assert proc.returncode == 0
    assert "D /bin/alias" in proc.stdout.splitlines()
    assert "A /etc/new.conf" in proc.stdout.splitlines()
    proc = run_cli("diff", "--json", str(rootfs), str(changed))
    assert {"kind": "D", "path": "/bin/alias"} in json.loads(proc.stdout)

    proc = run_cli("images", "--json")
    listed = {(i["name"], i["tag"]): i for i in json.loads(proc.stdout)}
    assert listed[("app", "2")]["digest"] == app["manifest"]
    assert listed[("app", "2")]["layers"] == 2
    proc = run_cli("images")
    assert proc.returncode == 0 and "app" in proc.stdout and "base" in proc.stdout

    proc = run_cli("inspect", "app:2")
    info = json.loads(proc.stdout)
    assert info["digest"] == app["manifest"]
    assert info["config"]["config"]["ExposedPorts"] == {"8080/tcp": {}}
    assert [lay["digest"] for lay in info["layers"]] == [base["digest"], app["digest"]]

    proc = run_cli("history", "app:2", "--json")
    steps = json.loads(proc.stdout)
    assert [s["comment"] for s in steps] == ["second", "base"]
    assert steps[0]["size"] == app["size"]
    proc = run_cli("history", "app:2")
    assert proc.returncode == 0
    assert proc.stdout.splitlines()[0].split()[:3] == ["CREATED", "CREATED", "BY"]


def test_cli_change_uses_the_image_environment(rootfs: Path, tmp_path: Path) -> None:
    """-c 'ENV PATH=/opt/bin:$PATH' extends the base image's PATH, as docker commit does."""
    layout = tmp_path / "layout"
    proc = run_cli(
        "commit", "--upper", str(rootfs), "-c", "ENV PATH=/usr/bin", f"oci:{layout}:base",
        "--progress", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    proc = run_cli(
        "commit", "--upper", str(rootfs), "--from", f"oci:{layout}:base",
        "-c", "ENV PATH=/opt/bin:$PATH", "-c", 'LABEL "home dir"="${HOME:-/root}"',
        f"oci:{layout}:app", "--progress", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = layerdiff.inspect(f"oci:{layout}:app")["config"]["config"]
    assert config["Env"] == ["PATH=/opt/bin:/usr/bin"]
    assert config["Labels"] == {"home dir": "/root"}
    # A change its variables make invalid stops the commit before anything is written.
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    proc = run_cli(
        "commit", "--upper", str(rootfs), "--from", f"oci:{layout}:base",
        "-c", "EXPOSE $PATH", f"oci:{layout}:bad", "--progress", "none",
    )  # fmt: skip
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1
    assert "'/usr/bin' is not a port" in proc.stderr
    assert sorted((layout / "blobs" / "sha256").iterdir()) == blobs


def test_tag_and_rmi(rootfs: Path, changed: Path, tmp_path: Path, store_home: Path) -> None:
    """docker tag and docker rmi: names come and go; blobs go once no name reaches them."""
    first = layerdiff.commit(rootfs, image="app:1")
    second = layerdiff.commit(changed, image="app:2", lower=rootfs, base="app:1")
    proc = run_cli("tag", "app:2", "app:latest")
    assert proc.returncode == 0 and proc.stdout.strip() == second.manifest_digest
    assert layerdiff.inspect("app")["digest"] == second.manifest_digest
    # Into another layout: the blobs are copied, and umoci can unpack it there.
    export = f"oci:{tmp_path}/export:v2"
    assert run_cli("tag", "app:2", export).returncode == 0
    assert layerdiff.inspect(export)["digest"] == second.manifest_digest
    assert run_cli("fsck", f"oci:{tmp_path}/export").returncode == 0
    blobs = store_home / "images" / "blobs" / "sha256"
    top_layer = second.layer.digest.removeprefix("sha256:")
    # A name still reaching the image keeps its blobs.
    proc = run_cli("rmi", "app:2")
    assert proc.returncode == 0 and f"untagged app:2 ({second.manifest_digest})" in proc.stdout
    assert (blobs / top_layer).is_file()
    proc = run_cli("rmi", "app:latest")
    assert proc.returncode == 0 and not (blobs / top_layer).exists()
    assert [i.tag for i in layerdiff.images()] == ["1"]
    assert layerdiff.inspect("app:1")["digest"] == first.manifest_digest
    # --no-prune keeps the blobs; a missing name is an error that removes nothing.
    assert run_cli("rmi", "--no-prune", "app:1").returncode == 0
    assert (
        layerdiff.images() == [] and (blobs / first.layer.digest.removeprefix("sha256:")).exists()
    )
    proc = run_cli("rmi", f"{export}", "ghost:1")
    assert proc.returncode == 1 and "ghost:1" in proc.stderr
    assert layerdiff.inspect(export)["digest"] == second.manifest_digest
    with pytest.raises(layerdiff.ImageNotFoundError):
        layerdiff.tag("ghost:1", "x:1")
    # A source whose layer blob is gone: refused before anything is copied into a new layout.
    layer = Layout.open(tmp_path / "export").blob_path(second.layer.digest)
    layer.unlink()
    proc = run_cli("tag", export, f"oci:{tmp_path}/copy:1")
    assert proc.returncode == 1 and f"{layer}: blob {second.layer.digest}" in proc.stderr
    assert not (tmp_path / "copy").exists()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["commit", "--upper", "{rootfs}", "Not/Valid"], "invalid image reference 'Not/Valid'"),
        (
            ["commit", "--upper", "{rootfs}", "--from", "missing:1", "x"],
            "image not found: missing:1",
        ),
        (["inspect", "nothing:here"], "image not found: nothing:here"),
        (["diff", "{rootfs}", "{rootfs}/../nonexistent"], "does not exist"),
        (["commit", "--lower", "{rootfs}", "--upper", "{rootfs}", "x"], "give it as --from"),
        (["commit", "--overlay", "--upper", "{rootfs}", "x"], "give it as --from"),
        (["commit", "{rootfs}", "x"], "give it as --upper {rootfs}"),
        (["commit", "--upper", "{rootfs}", "--threads", "257", "x"], "1<=x<=256"),
        (["commit", "--upper", "{rootfs}", "--threads", "0", "x"], "1<=x<=256"),
        (["commit", "--upper", "{rootfs}", "x", f"{SDE}=1e3"], f"{SDE}='1e3'"),
        (["commit", "--upper", "{rootfs}", "x", f"{SDE}=253402300800"], "(the year 9999)"),
        (["images", "oci:"], "invalid image reference 'oci:': the layout path is empty"),
        (["commit", "--no-pause", "--upper", "{rootfs}", "x"], "go with CONTAINER, not --upper"),
        (["gc", "oci:"], "invalid image reference 'oci:': the layout path is empty"),
    ],
)
def test_cli_errors(rootfs: Path, args: list[str], message: str) -> None:
    # SOURCE_DATE_EPOCH=VALUE arguments are the environment, not the command's.
    env = dict(a.split("=", 1) for a in args if a.startswith(f"{SDE}="))
    args = [a for a in args if not a.startswith(f"{SDE}=")]
    proc = run_cli(*[a.format(rootfs=rootfs) for a in args], env=env)
    assert proc.returncode in (1, 2)
    assert proc.stdout == ""
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 or "Usage:" in proc.stderr
    assert message.format(rootfs=rootfs) in proc.stderr
    assert "Traceback" not in proc.stderr


def test_cli_error_from_core_is_one_line(tmp_path: Path) -> None:
    (tmp_path / "t").mkdir()
    (tmp_path / "t" / ".wh.x").write_text("")
    proc = run_cli("commit", "--upper", str(tmp_path / "t"), "x", "--progress", "none")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("layerdiff: error: ")
    assert ".wh.x" in proc.stderr


def deep_file(root: Path, name: str, data: bytes) -> str:
    """Write ``name`` below 16 directories of 250-byte names under ``root``, each step relative
    to the one before (the whole path is past what one system call takes); return its path."""
    fd = os.open(root, os.O_RDONLY)
    parts = []
    for i in range(16):
        part = f"d{i:02}" + "x" * 247
        with contextlib.suppress(FileExistsError):
            os.mkdir(part, dir_fd=fd)
        fd, old = os.open(part, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
        parts.append(part)
    f = os.open(name, os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
    os.write(f, data)
    os.close(f)
    os.close(fd)
    return "/".join([*parts, name])


def test_paths_up_to_path_max_commit_and_unpack_longer_are_refused(tmp_path: Path) -> None:
    """A path of 4096 bytes (PATH_MAX) goes through commit and unpack; one byte more could be
    unpacked by nobody, so commit refuses it, naming it, and leaves no layout behind."""
    tree = tmp_path / "t"
    tree.mkdir()
    rel = deep_file(tree, "f" * 80, b"deep")
    assert len(rel) == 4096
    image = f"oci:{tmp_path}/img:v1"
    proc = run_cli("commit", "--upper", str(tree), image, "--progress", "none")
    assert proc.returncode == 0, proc.stderr
    proc = run_cli("unpack", image, str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    fd = os.open(tmp_path / "out", os.O_RDONLY)
    for part in rel.split("/")[:-1]:
        fd, old = os.open(part, os.O_RDONLY, dir_fd=fd), fd
        os.close(old)
    f = os.open(rel.rsplit("/", 1)[1], os.O_RDONLY, dir_fd=fd)
    assert os.read(f, 10) == b"deep"

    too_long = deep_file(tree, "g" * 81, b"x")
    proc = run_cli("commit", "--upper", str(tree), f"oci:{tmp_path}/new:v1", "--progress", "none")
    assert proc.returncode == 1
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("layerdiff: error: ")
    assert (
        f"{tree}/{too_long}: its name in the layer would be longer than 4096 bytes" in proc.stderr
    )
    assert not (tmp_path / "new").exists()


def test_cli_commit_warns_about_what_others_lose(tmp_path: Path) -> None:
    """A socket is left out of the layer and an empty xattr value kept: both said in --json's
    warnings, or else on stderr."""
    import socket

    tree = tmp_path / "t"
    tree.mkdir()
    (tree / "f").write_text("x")
    os.setxattr(tree / "f", "user.empty", b"")
    with socket.socket(socket.AF_UNIX) as sock:
        sock.bind(str(tree / "sock"))
        proc = run_cli(
            "commit", "--upper", str(tree), f"oci:{tmp_path}/l:v1", "--json", "--progress", "none"
        )  # fmt: skip
        plain = run_cli(
            "commit", "--upper", str(tree), f"oci:{tmp_path}/l:v2", "--progress", "none"
        )
    assert proc.returncode == 0 and plain.returncode == 0, proc.stderr + plain.stderr
    assert proc.stderr == ""
    warnings = json.loads(proc.stdout)["warnings"]
    assert warnings == [
        "sock: socket not stored in the layer",
        "f: xattr user.empty has an empty value, which tools reading layers with Go's tar "
        "(docker, containerd, podman, umoci) drop",
    ]
    assert [f"layerdiff: warning: {w}" for w in warnings] == plain.stderr.splitlines()


@pytest.mark.parametrize("mode", ["two-tree", "overlay", "overlay without its lower"])
def test_commit_of_changes_warns_about_sockets_and_whites_out_what_they_replaced(
    tmp_path: Path, mode: str
) -> None:
    """A socket is a change like any other (as in docker diff): the layer leaves it out with a
    warning, and a socket where the lower had a file still removes that file."""
    import socket

    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    (lower / "f").write_text("old")
    (lower / "keep").write_text("k")
    layout = f"oci:{tmp_path}/l"
    assert run_cli("commit", "--upper", str(lower), f"{layout}:base", "--progress", "none")
    if mode == "two-tree":
        shutil.copytree(lower, upper, symlinks=True)
        (upper / "f").unlink()
        args = ["--lower", str(lower), "--upper", str(upper)]
        diff_args = [str(lower), str(upper)]
    else:
        upper.mkdir()
        lowers = ["--lower", str(lower)] if mode == "overlay" else []
        args = ["--overlay", "--upper", str(upper), *lowers]
        diff_args = ["--overlay", str(upper), *lowers]
    with socket.socket(socket.AF_UNIX) as a, socket.socket(socket.AF_UNIX) as b:
        a.bind(str(upper / "f"))
        b.bind(str(upper / "new.sock"))
        diff = run_cli("diff", *diff_args)
        proc = run_cli("commit", *args, "--from", f"{layout}:base", f"{layout}:next")
    assert diff.returncode == 0, diff.stderr
    # Without the lower dirs, whether a socket replaced something is unknown: it is taken to
    # (its whiteout is harmless where there was nothing).
    new_sock = "C /new.sock" if mode == "overlay without its lower" else "A /new.sock"
    assert diff.stdout.splitlines() == ["C /f", new_sock]
    assert proc.returncode == 0, proc.stderr
    assert [line for line in proc.stderr.splitlines() if "warning" in line] == [
        "layerdiff: warning: f: socket not stored in the layer",
        "layerdiff: warning: new.sock: socket not stored in the layer",
    ]
    out = tmp_path / "out"
    assert run_cli("unpack", f"{layout}:next", str(out)).returncode == 0
    assert sorted(p.name for p in out.iterdir()) == ["keep"]


def test_failed_commit_keeps_store(rootfs: Path, tmp_path: Path, store_home: Path) -> None:
    layerdiff.commit(rootfs, image="app")
    index = store_home / "images" / "index.json"
    before = index.read_bytes()
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ".wh.x").write_text("")
    with pytest.raises(layerdiff.ReservedNameError):
        layerdiff.commit(tmp_path / "bad", image="app", base="app")
    assert index.read_bytes() == before


def test_a_layout_inside_the_committed_tree_is_left_out_of_the_layer(
    rootfs: Path, tmp_path: Path, store_home: Path
) -> None:
    """As tar leaves out the archive it writes: `commit --upper . oci:./out:1` does not put
    the layout, half written, into its own layer, nor a store kept inside the tree."""
    (rootfs / "images").mkdir()
    (rootfs / "images" / "old").write_text("kept: only the layout itself is left out")
    for target in (f"oci:{rootfs / 'images' / 'out'}:1", f"oci:{rootfs / 'images' / 'out'}:2"):
        done = run_cli("commit", "--json", "--upper", str(rootfs), target)
        assert done.returncode == 0, done.stderr
    layer = layerdiff.inspect(f"oci:{rootfs / 'images' / 'out'}:2")["layers"][0]["digest"]
    blob = rootfs / "images" / "out" / "blobs" / "sha256" / layer.removeprefix("sha256:")
    with tarfile.open(blob) as tar:
        names = tar.getnames()
    assert "images/old" in names and not [n for n in names if n.startswith("images/out")]
    # The store, in the tree through a link.
    (rootfs / "home").mkdir()
    (tmp_path / "link-to-home").symlink_to(rootfs / "home")
    env = {"LAYERDIFF_HOME": str(tmp_path / "link-to-home")}
    done = run_cli("commit", "--json", "--upper", str(rootfs), "app:1", env=env)
    assert done.returncode == 0, done.stderr
    layer = json.loads(done.stdout)["digest"].removeprefix("sha256:")
    with tarfile.open(rootfs / "home" / "images" / "blobs" / "sha256" / layer) as tar:
        names = tar.getnames()
    assert "images/old" in names and not [n for n in names if n.startswith("home/")]
    assert [n for n in names if n.startswith("images/out/")]  # not the store: a tree like any


def test_a_damaged_target_index_stops_the_commit_before_the_layer_is_written(
    rootfs: Path, tmp_path: Path
) -> None:
    layout = tmp_path / "l"
    layerdiff.commit(rootfs, image=f"oci:{layout}:1")
    blobs = sorted((layout / "blobs" / "sha256").iterdir())
    (layout / "index.json").write_text("{")
    (rootfs / "new").write_text("a change, so the layer is a new blob")
    proc = run_cli("commit", "--upper", str(rootfs), f"oci:{layout}:2")
    assert proc.returncode == 1
    assert f"{layout / 'index.json'}: not JSON" in proc.stderr
    assert "writing layer" not in proc.stderr
    assert sorted((layout / "blobs" / "sha256").iterdir()) == blobs


def test_a_damaged_base_stops_the_commit_before_anything_is_written(
    rootfs: Path, tmp_path: Path
) -> None:
    """A base whose layer blob is gone or truncated, or whose history does not match its
    layers, is refused before a byte is written: no image that refers to what is not there."""
    layout = tmp_path / "l"
    for tag in ("base", "other"):
        layerdiff.commit(rootfs, image=f"oci:{layout}:{tag}", source_date_epoch=1)
    img = Layout.open(layout)
    index_before = (layout / "index.json").read_bytes()

    def commit_on(base: str, target: str) -> subprocess.CompletedProcess[str]:
        return run_cli("commit", "--upper", str(rootfs), "--from", base, target)

    manifest = json.loads(img.read_blob(img.resolve("base")["digest"]))
    blob = img.blob_path(manifest["layers"][0]["digest"])
    saved = blob.read_bytes()
    blob.unlink()
    proc = commit_on(f"oci:{layout}:base", f"oci:{layout}:next")
    assert proc.returncode == 1
    assert (
        f"{blob}: layer {manifest['layers'][0]['digest']} of the base image is missing"
        in proc.stderr
    )
    blob.write_bytes(saved[:-1])
    proc = commit_on(f"oci:{layout}:base", f"oci:{tmp_path}/elsewhere:next")
    assert proc.returncode == 1 and f"has {len(saved) - 1} bytes, its manifest says" in proc.stderr
    assert not (tmp_path / "elsewhere").exists()
    blob.write_bytes(saved)
    assert (layout / "index.json").read_bytes() == index_before

    # A history with one entry too many, in a copy of the image made by hand.
    config = json.loads(img.read_blob(manifest["config"]["digest"]))
    config["history"].append({"created_by": "stray"})
    config_desc = img.put_blob(canonical_json(config), media_type=manifest["config"]["mediaType"])
    bad = {**manifest, "config": config_desc}
    img.set_tag("bad", img.put_blob(canonical_json(bad), media_type=manifest["mediaType"]))
    proc = commit_on(f"oci:{layout}:bad", f"oci:{tmp_path}/new:x")
    assert proc.returncode == 1
    assert f"base image oci:{layout}:bad: image config: 2 history entries describe" in proc.stderr
    assert not (tmp_path / "new").exists()


def test_author_is_the_commits_not_the_bases(rootfs: Path, tmp_path: Path) -> None:
    """As docker commit: the image's author is the one given to this commit, none without."""
    ref = f"oci:{tmp_path}/l"
    layerdiff.commit(rootfs, image=f"{ref}:1", author="Jane <j@x>")
    layerdiff.commit(rootfs, image=f"{ref}:2", base=f"{ref}:1")
    layerdiff.commit(rootfs, image=f"{ref}:3", base=f"{ref}:2", author="Joe")
    configs = [layerdiff.inspect(f"{ref}:{n}")["config"] for n in (1, 2, 3)]
    assert [c.get("author") for c in configs] == ["Jane <j@x>", None, "Joe"]
    assert [h.get("author") for h in configs[2]["history"]] == ["Jane <j@x>", None, "Joe"]


def test_failed_commit_creates_no_store(tmp_path: Path, store_home: Path) -> None:
    """A commit that fails leaves no empty layout where there was none, nor its directories."""
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / ".wh.x").write_text("")
    (tmp_path / "empty").mkdir()
    home_before = sorted(store_home.iterdir())
    for image in (f"oci:{tmp_path}/new/deeper/layout:v1", f"oci:{tmp_path}/empty", "app"):
        proc = run_cli("commit", "--upper", str(tmp_path / "bad"), image, "--progress", "none")
        assert proc.returncode == 1 and ".wh.x" in proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad", "empty"]
    assert list((tmp_path / "empty").iterdir()) == []
    assert sorted(store_home.iterdir()) == home_before
    # A layout that already held an image keeps it, and one made by a commit that works stays.
    layerdiff.commit(tmp_path / "empty", image=f"oci:{tmp_path}/new:v1")
    with pytest.raises(layerdiff.ReservedNameError):
        layerdiff.commit(tmp_path / "bad", image=f"oci:{tmp_path}/new:v2")
    assert Layout(tmp_path / "new").tags() == ["v1"]


# -- other tools read our images -----------------------------------------------------------------


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_inspect(rootfs: Path, tmp_path: Path) -> None:
    result = layerdiff.commit(rootfs, image=f"oci:{tmp_path}/layout:v1")
    proc = subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path}/layout:v1"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["Digest"] == result.manifest_digest
    assert info["Layers"] == [result.layer.digest]
    assert info["Architecture"] == layerdiff.inspect(f"oci:{tmp_path}/layout:v1")["architecture"]


def test_healthcheck_and_onbuild_changes_are_kept_and_peers_still_read_the_image(
    rootfs: Path, tmp_path: Path
) -> None:
    ref = f"oci:{tmp_path}/layout:hc"
    proc = run_cli(
        "commit", "--upper", str(rootfs), ref, "-c", "HEALTHCHECK --interval=30s CMD test -f /ok",
        "-c", "ONBUILD RUN make",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    config = layerdiff.inspect(ref)["config"]["config"]
    assert config["Healthcheck"] == {"Test": ["CMD-SHELL", "test -f /ok"], "Interval": 30 * 10**9}
    assert config["OnBuild"] == ["RUN make"]
    peer = subprocess.run(
        ["skopeo", "inspect", "--config", ref], capture_output=True, text=True, check=False
    )
    assert peer.returncode == 0, peer.stderr


@pytest.mark.root
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_umoci_unpack(rootfs: Path, changed: Path, tmp_path: Path, compression: str) -> None:
    if compression == "zstd" and not umoci_reads_zstd():
        pytest.skip("this umoci (< 0.5) rejects zstd layers: 'blob is not correct mediatype'")
    layout = tmp_path / "layout"
    layerdiff.commit(rootfs, image=f"oci:{layout}:base", compression=compression)
    assert_same_tree(rootfs, umoci_unpack(f"{layout}:base", tmp_path / "b1"))
    layerdiff.commit(
        changed,
        image=f"oci:{layout}:app",
        lower=rootfs,
        base=f"oci:{layout}:base",
        compression=compression,
    )
    assert_same_tree(changed, umoci_unpack(f"{layout}:app", tmp_path / "b2"))


def test_hardlinked_symlinks_fifos_and_devices_stay_linked(tmp_path: Path) -> None:
    """As docker's layers do: the later names of a linked symlink, FIFO or device are hardlinks
    to the first, and every applier (GNU tar, tarfile, umoci, ours) makes one inode again."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("x")
    os.symlink("f", root / "sl")
    os.link(root / "sl", root / "sl2", follow_symlinks=False)
    os.mkfifo(root / "p")
    os.link(root / "p", root / "p2")
    os.mknod(root / "c", stat.S_IFCHR | 0o600, os.makedev(1, 3))
    os.link(root / "c", root / "c2")
    layout = tmp_path / "layout"
    proc = run_cli("commit", "--upper", str(root), f"oci:{layout}:one", "--json")
    assert proc.returncode == 0, proc.stderr
    blob = layout / "blobs" / "sha256" / json.loads(proc.stdout)["digest"].removeprefix("sha256:")
    with tarfile.open(blob) as tar:
        links = {m.name: m.linkname for m in tar if m.islnk()}
    assert links == {"c2": "c", "p2": "p", "sl2": "sl"}
    assert_same_tree(root, umoci_unpack(f"{layout}:one", tmp_path / "bundle"))
    gnu = tmp_path / "gnu"
    gnu.mkdir()
    subprocess.run(["tar", "-xzf", str(blob), "-C", str(gnu)], check=True)
    assert_same_tree(root, gnu)
    assert (gnu / "sl2").is_symlink() and os.lstat(gnu / "sl2").st_nlink == 2

    # A second layer breaks one set and links a fresh name into another; the squash of both
    # is the tree the two make in order.
    changed = tmp_path / "changed"
    subprocess.run(["cp", "-a", str(root), str(changed)], check=True)
    os.unlink(changed / "sl")
    os.symlink("f", changed / "sl")
    os.link(changed / "p", changed / "p3")
    layerdiff.commit(changed, image=f"oci:{layout}:two", lower=root, base=f"oci:{layout}:one")
    proc = run_cli("squash", f"oci:{layout}:two", f"oci:{layout}:flat")
    assert proc.returncode == 0, proc.stderr
    for ref in ("two", "flat"):
        layerdiff.unpack(f"oci:{layout}:{ref}", tmp_path / ref)
        assert_same_tree(changed, tmp_path / ref)
    assert os.lstat(tmp_path / "flat" / "p3").st_nlink == 3


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="needs setpriv (util-linux)")
def test_without_the_right_to_make_devices_a_linked_device_is_skipped_with_its_links(
    tmp_path: Path,
) -> None:
    """Unpacking where mknod is refused (no CAP_MKNOD, as rootless): each device node is
    skipped with a warning, and so are the hardlinks to it; the rest is unpacked."""
    root = tmp_path / "root"
    root.mkdir()
    (root / "f").write_text("x")
    os.mknod(root / "null", stat.S_IFCHR | 0o666, os.makedev(1, 3))
    os.link(root / "null", root / "null2")
    layout = tmp_path / "layout"
    layerdiff.commit(root, image=f"oci:{layout}:dev")
    out = tmp_path / "out"
    unpack = [sys.executable, "-m", "layerdiff", "unpack", f"oci:{layout}:dev", str(out)]
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-mknod", *unpack],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert "null: device node skipped (not permitted)" in proc.stderr
    assert "null2: hardlink to device node null skipped (not permitted)" in proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["f"]


def _deny_xattrat(err: int, *, only_get: bool = False) -> Callable[[], None]:
    """A ``preexec_fn`` under which ``getxattrat`` (464) and, unless ``only_get``,
    ``listxattrat`` (465) fail with ``err``."""
    return seccomp.deny([464] if only_get else [464, 465], err)


@pytest.mark.skipif(platform.machine() != "x86_64", reason="the seccomp filter is x86_64's")
@pytest.mark.root
def test_xattrs_are_read_where_listxattrat_and_getxattrat_are_refused(tmp_path: Path) -> None:
    """Where the kernel or a seccomp profile refuses the ``*xattrat`` calls the walk uses, it
    reads xattrs the older way: the same layer, byte for byte."""
    root = tmp_path / "root"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    os.setxattr(root / "d", "user.dir", b"1")
    os.setxattr(root / "d" / "f", "user.big", b"v" * 3000)
    os.symlink("f", root / "d" / "link")
    os.setxattr(root / "d" / "link", "trusted.mark", b"on-link", follow_symlinks=False)

    def commit(tag: str, preexec: Callable[[], None] | None = None) -> str:
        target = f"oci:{tmp_path / 'layout'}:{tag}"
        proc = subprocess.run(
            [sys.executable, "-m", "layerdiff", "commit", "--json", "--upper", str(root), target],
            capture_output=True,
            text=True,
            check=False,
            preexec_fn=preexec,
        )
        assert proc.returncode == 0, proc.stderr
        return str(json.loads(proc.stdout)["digest"])

    reference = commit("plain")
    blob = tmp_path / "layout" / "blobs" / "sha256" / reference.removeprefix("sha256:")
    with tarfile.open(blob) as tar:
        assert tar.getmember("d/link").pax_headers["SCHILY.xattr.trusted.mark"] == "on-link"
    for err, only_get in ((errno.EPERM, False), (errno.ENOSYS, False), (errno.EPERM, True)):
        assert commit(f"{err}-{only_get}", _deny_xattrat(err, only_get=only_get)) == reference

    # Without /proc as well, the older way is not there either: a one-line error, not a layer
    # whose entries all looked vanished.
    if shutil.which("unshare") is None:
        return
    target = f"oci:{tmp_path / 'layout'}:noproc"
    commit_cmd = [sys.executable, "-m", "layerdiff", "commit", "--upper", str(root), target]
    script = 'umount -l /proc && exec "$@"'
    proc = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *commit_cmd],
        capture_output=True,
        text=True,
        check=False,
        preexec_fn=_deny_xattrat(errno.EPERM, only_get=True),
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.endswith("\nlayerdiff: error: /proc/self/fd: No such file or directory\n")


# -- real overlay mounts -------------------------------------------------------------------------


def mount_overlay(tmp_path: Path, lower: Path, options: str = "") -> tuple[Path, Path]:
    """An overlay of ``lower`` under ``tmp_path``: (upper, merged). Skips where it cannot."""
    upper, work, merged = tmp_path / "upper", tmp_path / "work", tmp_path / "merged"
    for d in (upper, work, merged):
        d.mkdir()
    opts = f"lowerdir={lower},upperdir={upper},workdir={work}" + (f",{options}" if options else "")
    mount_or_skip(opts, merged)
    return upper, merged


@pytest.mark.root
def test_layers_applied_each_in_its_own_overlay_layer_keep_the_directories_above_a_change(
    tmp_path: Path,
) -> None:
    """A commit whose changes sit in directories it did not change (a file edited in place,
    the directory's mtime kept): applied as overlayfs layers, each into a directory of its own
    as docker, containerd and the layer cache do, the merged tree keeps those directories' mode
    and owner, because the layer holds them."""
    base = tmp_path / "base"
    (base / "tmp").mkdir(parents=True)
    (base / "tmp" / "f").write_text("1")
    os.chmod(base / "tmp", 0o1777)
    (base / "home" / "u").mkdir(parents=True)
    (base / "home" / "u" / ".profile").write_text("a")
    (base / "home" / "u" / "old").write_text("o")
    os.chown(base / "home" / "u", 1000, 1000)
    os.chmod(base / "home" / "u", 0o700)
    changed = tmp_path / "changed"
    subprocess.run(["cp", "-a", str(base), str(changed)], check=True)
    for path in (changed / "tmp", changed / "home" / "u"):
        st = os.stat(path)
        with open(path / ("f" if path.name == "tmp" else ".profile"), "a") as f:
            f.write("more")
        if path.name == "u":
            (path / "old").unlink()
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert [str(c) for c in layerdiff.diff(base, changed)] == [
        "C /home/u/.profile",
        "D /home/u/old",
        "C /tmp/f",
    ]
    layout = tmp_path / "layout"
    layerdiff.commit(base, image=f"oci:{layout}:base")
    layerdiff.commit(changed, image=f"oci:{layout}:new", lower=base, base=f"oci:{layout}:base")
    layers = layerdiff.inspect(f"oci:{layout}:new")["manifest"]["layers"]
    dirs = []
    for i, desc in enumerate(layers):
        blob = layout / "blobs" / "sha256" / desc["digest"].removeprefix("sha256:")
        dirs.append(tmp_path / f"layer{i}")
        layerdiff.apply(dirs[-1], [blob], overlay=True)
    merged = tmp_path / "merged"
    merged.mkdir()
    lowerdir = ":".join(str(d) for d in reversed(dirs))
    subprocess.run(
        ["mount", "-t", "overlay", "overlay", "-o", f"lowerdir={lowerdir}", str(merged)],
        check=True,
    )
    try:
        assert_same_tree(changed, merged, mtimes=False)
        assert oct(os.stat(merged / "tmp").st_mode) == oct(0o41777)
        st = os.stat(merged / "home" / "u")
        assert (st.st_uid, oct(st.st_mode)) == (1000, oct(0o40700))
    finally:
        subprocess.run(["umount", str(merged)], check=True)


def test_a_layer_holds_the_parents_of_the_changes_it_keeps_and_no_excluded_path(
    tmp_path: Path,
) -> None:
    base = tmp_path / "base"
    (base / "etc" / "sub").mkdir(parents=True)
    for name in ("etc/hostname", "etc/sub/conf", "etc/keep"):
        (base / name).write_text("1")
    os.chmod(base / "etc", 0o750)
    changed = tmp_path / "changed"
    subprocess.run(["cp", "-a", str(base), str(changed)], check=True)
    for name in ("etc/hostname", "etc/sub/conf"):
        st = os.stat((changed / name).parent)
        (changed / name).write_text("22")
        os.utime((changed / name).parent, ns=(st.st_atime_ns, st.st_mtime_ns))

    def members(**kwargs: Any) -> list[str]:
        dest = tmp_path / f"blobs{len(list(tmp_path.glob('blobs*')))}"
        info = layerdiff.write_layer(changed, dest=dest, lower=base, compression="none", **kwargs)
        with tarfile.open(info.path) as tar:
            return [m.name for m in tar]

    assert members() == ["etc", "etc/hostname", "etc/sub", "etc/sub/conf"]
    assert members(exclude=["/etc/hostname"]) == ["etc", "etc/sub", "etc/sub/conf"]
    assert members(exclude=["/etc/hostname", "/etc/sub/conf"]) == []
    # A directory is left out with what is below it, as tar --exclude leaves it out.
    assert members(exclude=["/etc/sub"]) == ["etc", "etc/hostname"]
    assert members(exclude=["/etc"]) == []


@pytest.mark.root
def test_overlay_upper_commit(rootfs: Path, tmp_path: Path) -> None:
    upper, merged = mount_overlay(tmp_path, rootfs)
    try:
        change_rootfs(merged)
        os.chmod(merged / "etc" / "os-release", 0o600)
        expected = tmp_path / "expected"
        subprocess.run(["cp", "-a", str(merged), str(expected)], check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    changes = {str(c) for c in layerdiff.diff_overlay(upper, lowers=[rootfs])}
    assert {"D /bin/alias", "A /etc/new.conf", "C /etc/hostname"} <= changes
    layerdiff.commit(rootfs, image="base")
    target = f"oci:{tmp_path}/layout:ovl"  # base in the store: its blobs are copied over
    layerdiff.commit(upper, image=target, overlay=True, lowers=[rootfs], base="base")
    proc = run_cli("diff", "--overlay", str(upper), "--lower", str(rootfs))
    assert proc.returncode == 0 and "D /bin/alias" in proc.stdout
    if shutil.which("umoci"):
        out = umoci_unpack(f"{tmp_path}/layout:ovl", tmp_path / "bundle")
        assert_same_tree(expected, out)


@pytest.mark.root
def test_overlay_commit_of_redirect_and_metacopy_upper(rootfs: Path, tmp_path: Path) -> None:
    """An upper dir written with redirect_dir and metacopy holds neither a renamed directory's
    files nor a chmod-ed file's data: the layer gets them from the merged tree."""
    upper, merged = mount_overlay(tmp_path, rootfs, "redirect_dir=on,metacopy=on,index=off")
    try:
        os.rename(merged / "bin", merged / "sbin")
        os.chmod(merged / "etc" / "os-release", 0o600)
        # Rewritten with its size and mtime kept (as cp -p, tar and rsync -t leave a file):
        # metadata alone says nothing changed, but the upper dir holds it whole.
        hostname = merged / "etc" / "hostname"
        before = hostname.stat()
        hostname.write_text("xyz\n")
        os.utime(hostname, ns=(before.st_atime_ns, before.st_mtime_ns))
        expected = tmp_path / "expected"
        subprocess.run(["cp", "-a", str(merged), str(expected)], check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert os.getxattr(upper / "sbin", "trusted.overlay.redirect")
    # A metacopy file: its size, but no data of its own.
    assert "trusted.overlay.metacopy" in os.listxattr(upper / "etc" / "os-release")
    assert (upper / "etc" / "os-release").read_bytes() == bytes(8)
    run_cli("commit", "--upper", str(rootfs), "base", "--progress", "none")
    target = f"oci:{tmp_path}/layout:ovl"
    proc = run_cli(
        "commit", "--overlay", "--upper", str(upper), "--lower", str(rootfs),
        "--from", "base", target, "--progress", "none",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "applied"
    out.mkdir()
    layout = Layout(tmp_path / "layout")
    for layer in layerdiff.inspect(target)["manifest"]["layers"]:
        apply_layer(layout.blob_path(layer["digest"]), out)
    assert_same_tree(expected, out)
    # Without the lower dirs the change cannot be known: refused, nothing written.
    proc = run_cli(
        "commit", "--overlay", "--upper", str(upper), "--from", "base", f"{target}2",
        "--progress", "none",
    )  # fmt: skip
    assert proc.returncode == 1 and "redirect" in proc.stderr
    assert proc.stderr.count("\n") == 1


@pytest.mark.root
def test_overlay_index_renamed_hard_link_is_refused_and_an_indexed_single_name_file_is_fine(
    tmp_path: Path,
) -> None:
    """With index=on a write to one name of a lower hard-link set changes all of them, which
    the upper dir does not record: refused, also when the name written was renamed (its path
    in the lower then holds nothing, or another file). With nfs_export every copied-up file is
    indexed: one whose lower file (found by its overlay.origin) has one name is committed."""
    lower = tmp_path / "lower"
    lower.mkdir()
    (lower / "a").write_text("orig\n")
    os.link(lower / "a", lower / "b")
    (lower / "other").write_text("other\n")
    (lower / "single").write_text("one\n")
    layout = f"oci:{tmp_path}/l"
    assert run_cli("commit", "--upper", str(lower), f"{layout}:base").returncode == 0
    for case, new_name in [("renamed", "c"), ("renamed over another", "other")]:
        work = tmp_path / case
        work.mkdir()
        upper, merged = mount_overlay(work, lower, "index=on")
        try:
            os.rename(merged / "a", merged / new_name)
            with open(merged / new_name, "a") as f:
                f.write("modified\n")
            assert (merged / "b").read_text() == "orig\nmodified\n"
        finally:
            subprocess.run(["umount", str(merged)], check=True)
        proc = run_cli(
            "commit", "--overlay", "--upper", str(upper), "--lower", str(lower),
            "--from", f"{layout}:base", f"{layout}:{new_name}",
        )  # fmt: skip
        assert proc.returncode == 1, (case, proc.stderr)
        assert (
            "index=on" in proc.stderr
            and "it was renamed, or linked to by a new name" in proc.stderr
        ), proc.stderr
    work = tmp_path / "single"
    work.mkdir()
    upper, merged = mount_overlay(work, lower, "index=on,nfs_export=on")
    try:
        with open(merged / "single", "a") as f:
            f.write("more\n")
        expected = tmp_path / "expected"
        subprocess.run(["cp", "-a", str(merged), str(expected)], check=True)
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    assert "trusted.overlay.nlink" in os.listxattr(upper / "single")
    out = commit_overlay_and_unpack(upper, lower, layout, tmp_path / "out")
    assert_same_tree(expected, out)


def commit_overlay_and_unpack(upper: Path, lower: Path, layout: str, out: Path) -> Path:
    """Commit the overlay upper dir ``upper`` (over ``lower``) onto ``layout:base`` through
    the CLI, and unpack the new image to ``out``."""
    proc = run_cli(
        "commit", "--overlay", "--upper", str(upper), "--lower", str(lower),
        "--from", f"{layout}:base", f"{layout}:next",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert run_cli("unpack", f"{layout}:next", str(out)).returncode == 0
    return out


@pytest.mark.root
def test_user_overlay_xattrs_in_an_upper_written_with_trusted_ones_are_not_markers(
    tmp_path: Path,
) -> None:
    """In an overlay that writes trusted.overlay.* xattrs, user.overlay.* ones are the tree's
    own (a rootless store kept in the image): not an opaque directory, not a whiteout."""
    lower = tmp_path / "lower"
    (lower / "store").mkdir(parents=True)
    (lower / "store" / "lowerfile").write_text("keep\n")
    layout = f"oci:{tmp_path}/l"
    assert run_cli("commit", "--upper", str(lower), f"{layout}:base").returncode == 0
    upper, merged = mount_overlay(tmp_path, lower)
    try:
        os.setxattr(merged / "store", "user.overlay.opaque", b"y")
        (merged / "empty").touch()
        os.setxattr(merged / "empty", "user.overlay.whiteout", b"")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    out = commit_overlay_and_unpack(upper, lower, layout, tmp_path / "out")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "empty",
        "store",
        "store/lowerfile",
    ]


@pytest.mark.root
def test_user_overlay_xattrs_are_data_when_only_the_upper_root_shows_trusted_ones(
    tmp_path: Path,
) -> None:
    """Nothing copied up, only new files: the one trusted.overlay.* xattr is the mount's uuid
    on the upper root, and it is enough to read user.overlay.* ones as the tree's own."""
    lower = tmp_path / "lower"
    (lower / "kept").mkdir(parents=True)
    (lower / "kept" / "f").write_text("keep\n")
    layout = f"oci:{tmp_path}/l"
    assert run_cli("commit", "--upper", str(lower), f"{layout}:base").returncode == 0
    upper, merged = mount_overlay(tmp_path, lower, "index=off")
    try:
        (merged / "data").touch()
        os.setxattr(merged / "data", "user.overlay.whiteout", b"")
        (merged / "new").mkdir()
        (merged / "new" / "g").write_text("g\n")
        os.setxattr(merged / "new", "user.overlay.opaque", b"y")
    finally:
        subprocess.run(["umount", str(merged)], check=True)
    if not any(n.startswith("trusted.overlay.") for n in os.listxattr(upper)):
        pytest.skip("this kernel marks no overlay upper root (overlayfs before 6.6)")
    below_root = [n for p in upper.rglob("*") for n in os.listxattr(p, follow_symlinks=False)]
    assert not [n for n in below_root if n.startswith("trusted.")], "nothing was copied up"
    diff = run_cli("diff", "--overlay", str(upper), "--lower", str(lower))
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.splitlines() == ["A /data", "A /new", "A /new/g"]
    out = commit_overlay_and_unpack(upper, lower, layout, tmp_path / "out")
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*")) == [
        "data",
        "kept",
        "kept/f",
        "new",
        "new/g",
    ]


@pytest.mark.root
def test_a_file_whose_xattrs_no_tar_reader_takes_is_refused_by_name(
    tmp_path: Path, store_home: Path
) -> None:
    """More than 1 MiB of xattrs on one file (tmpfs allows it) would make a PAX header that
    Go's archive/tar (docker, containerd, umoci) and our own reader refuse: the commit stops
    with one line naming the file, and nothing is stored."""
    tree = tmp_path / "t"
    tree.mkdir()
    mount = subprocess.run(["mount", "-t", "tmpfs", "tmpfs", str(tree)], check=False)
    if mount.returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        (tree / "big").write_text("x")
        for i in range(16):
            os.setxattr(tree / "big", f"trusted.x{i:02}", b"v" * 65536)
        proc = run_cli("commit", "--progress", "none", "--upper", str(tree), "xattrs:1")
    finally:
        subprocess.run(["umount", str(tree)], check=True)
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1, proc.stderr
    assert "big: its metadata (xattrs) take" in proc.stderr
    assert "more than the 1048576 bytes tar readers accept" in proc.stderr
    assert layerdiff.images() == []


@pytest.mark.parametrize("compression", ["gzip", "zstd", "none"])
def test_commit_memory_does_not_follow_the_file_size(tmp_path: Path, compression: str) -> None:
    # A file many times larger than the pipeline's buffers, of content no codec shrinks (so
    # every output buffer fills too): the command's peak memory stays within the design's
    # 100 MB bound, as it must for a file of any size.
    tree = tmp_path / "tree"
    tree.mkdir()
    try:
        with open(tree / "big", "wb") as f:
            for _ in range(256):
                f.write(os.urandom(1 << 20))
        # A fresh interpreter starts the command: a process's peak RSS counts the memory of the
        # one it was forked from until its exec, and this one's is large.
        probe = (
            "import resource, subprocess, sys; "
            "done = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, "
            "stderr=subprocess.PIPE); "
            "sys.stderr.buffer.write(done.stderr); "
            "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss); "
            "sys.exit(done.returncode)"
        )
        command = [sys.executable, "-m", "layerdiff", "commit", "--progress", "none"]
        command += ["--compression", compression, "--upper", str(tree)]
        command.append(f"oci:{tmp_path / 'layout'}:big")
        done = subprocess.run(
            [sys.executable, "-c", probe, *command], capture_output=True, text=True, check=False
        )
        assert done.returncode == 0, done.stderr
        peak_mb = int(done.stdout) / 1024
        assert peak_mb < 100, f"peak RSS {peak_mb:.0f} MB"
        # The whole file went in: random bytes leave every codec's output at least as long.
        blobs = (tmp_path / "layout" / "blobs" / "sha256").iterdir()
        assert max(b.stat().st_size for b in blobs) >= 256 << 20
    finally:
        # Half a GiB that pytest would keep for its last three runs.
        shutil.rmtree(tree)
        shutil.rmtree(tmp_path / "layout", ignore_errors=True)
