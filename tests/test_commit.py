"""commit, images, inspect, history and the CLI, on the pure-Python stand-in core.

These check the Python half (image metadata, layouts, errors, output shapes) on their own; the
same paths run against the real core in test_integration.py.
"""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import os
import pty
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

import layerdiff
from layerdiff.catalog import load_image
from layerdiff.cli import main
from layerdiff.errors import ImageNotFoundError, InvalidChangeError, InvalidReferenceError
from layerdiff.image import canonical_json
from layerdiff.layout import Layout
from tests.conftest import run_cli
from tests.treecmp import assert_same_tree

commit_module = importlib.import_module("layerdiff.commit")


def make_rootfs(root: Path) -> Path:
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "os-release").write_text("ID=test\n")
    (root / "bin").mkdir()
    (root / "bin" / "app").write_bytes(b"#!/bin/sh\necho hi\n")
    os.chmod(root / "bin" / "app", 0o755)
    os.symlink("app", root / "bin" / "alias")
    for path in root.rglob("*"):
        os.utime(path, ns=(0, 1_600_000_000_000_000_000), follow_symlinks=False)
    return root


@pytest.fixture
def rootfs(tmp_path: Path) -> Path:
    return make_rootfs(tmp_path / "rootfs")


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """Run the CLI entry point in-process; return (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


def test_commit_into_store(rootfs: Path, store_home: Path) -> None:
    result = layerdiff.commit(rootfs, image="app:1", message="first", author="Jane")
    assert result.image == "app:1"
    assert result.layer.media_type == "application/vnd.oci.image.layer.v1.tar+gzip"
    layout = Layout.open(store_home / "images")
    assert layout.tags() == ["app:1"]
    assert layout.resolve("app:1")["digest"] == result.manifest_digest
    assert layout.has_blob(result.layer.digest)
    [summary] = layerdiff.images()
    assert (summary.name, summary.tag, summary.layers) == ("app", "1", 1)
    assert summary.digest == result.manifest_digest
    info = layerdiff.inspect("app:1")
    assert info["digest"] == result.manifest_digest
    assert info["config"]["rootfs"]["diff_ids"] == [result.layer.diff_id]
    assert info["layers"] == [
        {
            "digest": result.layer.digest,
            "diff_id": result.layer.diff_id,
            "size": result.layer.size,
            "media_type": result.layer.media_type,
        }
    ]
    assert info["manifest"]["config"]["digest"] == result.config_digest
    [step] = layerdiff.history("app:1")
    assert (step.created_by, step.comment, step.author) == ("layerdiff commit", "first", "Jane")
    assert step.size == result.layer.size and not step.empty_layer


def test_commit_on_base_with_changes(rootfs: Path, tmp_path: Path) -> None:
    base = layerdiff.commit(rootfs, image="base", changes=["ENV PATH=/bin", 'CMD ["/bin/app"]'])
    extra = tmp_path / "extra"
    extra.mkdir()
    (extra / "hello").write_text("hi")
    out = tmp_path / "out"
    result = layerdiff.commit(
        extra,
        image=f"oci:{out}:v2",
        base="base:latest",
        message="second",
        changes=["ENV MODE=prod", "WORKDIR /srv", "LABEL team=core"],
    )
    info = layerdiff.inspect(f"oci:{out}:v2")
    assert [lay["digest"] for lay in info["layers"]] == [base.layer.digest, result.layer.digest]
    cfg = info["config"]
    assert cfg["config"] == {
        "Env": ["PATH=/bin", "MODE=prod"],
        "Cmd": ["/bin/app"],
        "WorkingDir": "/srv",
        "Labels": {"team": "core"},
    }
    assert len(cfg["history"]) == 2 and len(cfg["rootfs"]["diff_ids"]) == 2
    # The base's layer blob was copied into the other layout; the tag is plain TAG there.
    layout = Layout.open(out)
    assert layout.has_blob(base.layer.digest)
    assert layout.tags() == ["v2"]
    steps = layerdiff.history(f"oci:{out}:v2")
    assert [s.comment for s in steps] == ["second", ""]  # newest first


def test_same_input_same_digests(rootfs: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")
    a = layerdiff.commit(rootfs, image="a")
    b = layerdiff.commit(rootfs, image="b")
    assert a.manifest_digest == b.manifest_digest
    assert layerdiff.inspect("a")["created"] == "2023-11-14T22:13:20Z"


def test_missing_base(rootfs: Path, store_home: Path) -> None:
    with pytest.raises(ImageNotFoundError, match="image not found: nope:1"):
        layerdiff.commit(rootfs, image="app", base="nope:1")
    with pytest.raises(ImageNotFoundError, match="oci:/nonexistent"):
        layerdiff.commit(rootfs, image="app", base="oci:/nonexistent:x")
    assert not (store_home / "images").exists()  # nothing was created


def test_bad_change_writes_nothing(rootfs: Path, store_home: Path) -> None:
    with pytest.raises(InvalidChangeError, match="unknown instruction: NOPE"):
        layerdiff.commit(rootfs, image="app", changes=["NOPE x"])
    assert not (store_home / "images").exists()


def test_bad_reference(rootfs: Path) -> None:
    with pytest.raises(InvalidReferenceError, match="'Bad'"):
        layerdiff.commit(rootfs, image="Bad")
    with pytest.raises(InvalidReferenceError, match="cannot commit into docker-archive:"):
        layerdiff.commit(rootfs, image="docker-archive:app.tar")


def test_failed_commit_leaves_index_alone(
    rootfs: Path, store_home: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = layerdiff.commit(rootfs, image="app")
    index = store_home / "images" / "index.json"
    before = index.read_bytes()

    def fail(*args: Any, **kwargs: Any) -> None:
        raise OSError(28, "No space left on device", "blob")

    for name in ("write_layer", "build_manifest"):
        with monkeypatch.context() as m:
            m.setattr(commit_module, name, fail)
            with pytest.raises(OSError):
                layerdiff.commit(rootfs, image="app", base="app")
        assert index.read_bytes() == before
    assert layerdiff.inspect("app")["digest"] == first.manifest_digest


def test_docker_schema2_base(rootfs: Path, tmp_path: Path) -> None:
    """A base written as a Docker v2 schema 2 manifest is accepted; the result is OCI."""
    layout = Layout.create(tmp_path / "docker")
    layer = layout.put_blob(b"not really a tar", media_type="x")
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["A=1"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + "0" * 64]},
        "history": [{"created_by": "docker"}],
    }
    cdesc = layout.put_blob(
        canonical_json(config), media_type="application/vnd.docker.container.image.v1+json"
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
        "config": cdesc,
        "layers": [{**layer, "mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip"}],
    }
    mdesc = layout.put_blob(
        canonical_json(manifest), media_type="application/vnd.docker.distribution.manifest.v2+json"
    )
    layout.set_tag("v1", mdesc)
    layerdiff.commit(rootfs, image="on-docker", base=f"oci:{layout.path}:v1")
    info = layerdiff.inspect("on-docker")
    assert info["manifest"]["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    assert info["manifest"]["config"]["mediaType"] == "application/vnd.oci.image.config.v1+json"
    assert info["layers"][0]["media_type"] == "application/vnd.oci.image.layer.v1.tar+gzip"
    assert info["config"]["config"]["Env"] == ["A=1"]


def test_images_of_empty_store(store_home: Path) -> None:
    assert layerdiff.images() == []
    # A store that cannot be made is not an empty one.
    if store_home.exists():
        store_home.rmdir()
    store_home.write_text("")
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        layerdiff.images()
    assert (info.value.errno, info.value.filename) == (errno.ENOTDIR, str(store_home))
    done = run_cli("images")
    assert (done.returncode, done.stderr) == (
        1,
        f"layerdiff: error: {store_home}: Not a directory\n",
    )


# -- the CLI, in-process ------------------------------------------------------------------------


def test_cli_commit_json(rootfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "commit",
        "--upper",
        str(rootfs),
        "app:1",
        "--json",
        "--progress",
        "none",
        "-m",
        "msg",
        "-a",
        "me",
        "-c",
        "USER 1000",
    )
    assert code == 0, err
    obj = json.loads(out)
    assert {"digest", "diff_id", "size", "media_type", "manifest"} <= obj.keys()
    assert obj["manifest"] == layerdiff.inspect("app:1")["digest"]
    assert layerdiff.inspect("app:1")["config"]["config"]["User"] == "1000"


def test_cli_changes_are_a_dockerfile_as_docker_commit_reads_them(rootfs: Path) -> None:
    """Several instructions in one -c, lines continued by a backslash and comments, as
    `docker commit` joins its changes into one Dockerfile."""
    done = run_cli(
        "commit",
        "--upper",
        str(rootfs),
        "--progress",
        "none",
        "-c",
        'ENV X=1\nENV PORTS="80 443" \\\n    Y=2\n# the ports\nEXPOSE $PORTS',
        "-c",
        "USER 1000",
        "app:dockerfile",
    )
    assert done.returncode == 0, done.stderr
    config = layerdiff.inspect("app:dockerfile")["config"]["config"]
    assert [e for e in config["Env"] if e[0] in "XPY"] == ["X=1", "PORTS=80 443", "Y=2"]
    assert config["ExposedPorts"] == {"80/tcp": {}, "443/tcp": {}}
    assert config["User"] == "1000"


def test_cli_commit_plain_progress(rootfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = run(
        capsys,
        "commit",
        "--upper",
        str(rootfs),
        "app",
        "--progress",
        "plain",
        "--compression",
        "none",
    )
    assert code == 0
    assert out.strip() == layerdiff.inspect("app")["digest"]
    assert "layerdiff: writing layer" in err


def test_unpack_squash_and_apply_report_their_steps(rootfs: Path, tmp_path: Path) -> None:
    """--progress, common to the commands that take time: plain lines in a log, none with
    --progress none (and the one JSON object on stdout either way)."""
    assert run_cli("commit", "--upper", str(rootfs), "--progress", "none", "app:s").returncode == 0
    done = run_cli("squash", "--progress", "plain", "app:s", "app:squashed")
    assert done.returncode == 0, done.stderr
    assert done.stderr.splitlines() == [
        "layerdiff: merging 1 layer into one",
        "layerdiff: writing config and manifest",
        "layerdiff: tagging app:squashed",
    ]
    done = run_cli("unpack", "--progress", "plain", "--json", "app:s", str(tmp_path / "u"))
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["layers"] == 1
    [line] = done.stderr.splitlines()
    assert line.startswith("layerdiff: layer 1 of 1 (")
    img = load_image("app:s")
    blob = img.layout.blob_path(img.layers[0]["digest"])
    done = run_cli("apply", "--progress", "plain", "--to", str(tmp_path / "a"), str(blob))
    assert (done.returncode, done.stderr) == (0, f"layerdiff: layer 1 of 1 ({blob})\n")
    done = run_cli("squash", "--progress", "none", "app:s", "app:quiet")
    assert (done.returncode, done.stderr) == (0, "")


def test_cli_commit_on_a_terminal_draws_one_live_display(rootfs: Path, tmp_path: Path) -> None:
    """Its steps and its blobs share one display: two at once redraw over each other."""
    pid, fd = pty.fork()
    if pid == 0:
        argv = [sys.executable, "-m", "layerdiff", "commit", "--upper", str(rootfs), "app:tty"]
        try:
            os.execv(sys.executable, argv)
        finally:
            os._exit(127)
    out = b""
    with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
        while chunk := os.read(fd, 4096):
            out += chunk
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, out
    assert out.count(b"\x1b[?25l") == 1, out  # a live display hides the cursor as it starts
    assert out.rstrip().endswith(layerdiff.inspect("app:tty")["digest"].encode())


def test_cli_images_inspect_history(rootfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run(capsys, "commit", "--upper", str(rootfs), "app:1", "-m", "hello", "--progress", "none")
    code, out, _ = run(capsys, "images")
    assert code == 0
    header, row = out.splitlines()
    assert header.split()[:3] == ["REPOSITORY", "TAG", "DIGEST"]
    assert row.split()[:2] == ["app", "1"]
    code, out, _ = run(capsys, "images", "--json")
    [entry] = json.loads(out)
    assert entry["name"] == "app" and entry["tag"] == "1" and entry["layers"] == 1
    code, out, _ = run(capsys, "inspect", "app:1")
    assert json.loads(out)["digest"] == entry["digest"]
    code, out, _ = run(capsys, "history", "app:1")
    assert "layerdiff commit" in out and "hello" in out
    code, out, _ = run(capsys, "history", "app:1", "--json")
    [step] = json.loads(out)
    assert step["created_by"] == "layerdiff commit" and step["comment"] == "hello"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["inspect", "Bad"], "invalid image reference 'Bad'"),
        (["inspect", "missing:1"], "image not found: missing:1"),
        (["history", "oci:/nonexistent/x:v1"], "image not found: oci:/nonexistent/x:v1"),
        (["commit", "--upper", "{rootfs}", "--from", "nope", "app"], "image not found: nope"),
        (["commit", "--upper", "{rootfs}", "-c", "RUN x", "app"], "RUN is not a valid change"),
        (["commit", "--upper", "{rootfs}", "docker-archive:a.tar"], "cannot commit into"),
    ],
)
def test_cli_errors_are_one_line(
    rootfs: Path, capsys: pytest.CaptureFixture[str], args: list[str], message: str
) -> None:
    code, out, err = run(capsys, *[a.format(rootfs=rootfs) for a in args])
    assert code == 1
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("layerdiff: error: ")
    assert message in err


def test_cli_usage_errors(rootfs: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "commit")
    assert code == 2 and "give CONTAINER [IMAGE], or --upper DIR IMAGE" in err
    code, _, err = run(capsys, "commit", "app")
    assert code == 1 and "no such container: app" in err
    code, _, err = run(capsys, "commit", "--upper", str(rootfs), "a", "b")
    assert code == 2 and "exactly one IMAGE" in err
    code, _, err = run(capsys, "diff", str(rootfs))
    assert code == 2 and "two directories" in err
    code, _, err = run(capsys, "commit", "--upper", str(rootfs), "--compression", "lz4", "app")
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("layerdiff: error: ")
    assert "'lz4' is not one of" in err and "layerdiff commit --help" in err


def _text_tree(root: Path) -> Path:
    """Source-like text, where a stronger deflate level visibly pays."""
    root.mkdir()
    for i in range(40):
        lines = [
            f"fn item_{i}_{j}(x: u32) -> u32 {{ x.wrapping_mul({j * 7 + i}) }}" for j in range(400)
        ]
        (root / f"m{i}.rs").write_text("\n".join(lines))
    return root


@pytest.mark.parametrize("compression", ["gzip", "zstd"])
def test_compression_level(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], compression: str
) -> None:
    tree = _text_tree(tmp_path / "src")
    sizes = {}
    for level in ("1", "9"):
        target = f"oci:{tmp_path / level}:x"
        code, out, err = run(
            capsys, "commit", "--json", "--progress", "none", "--compression", compression,
            "--compression-level", level, "--upper", str(tree), target,
        )  # fmt: skip
        assert code == 0, err
        sizes[level] = json.loads(out)["size"]
        # The level is part of what decides the bytes, and it alone: any thread count gives
        # the same blob.
        again = layerdiff.commit(
            tree, image=f"oci:{tmp_path / 'again'}:{level}", compression=compression,
            compression_level=int(level), threads=1,
        )  # fmt: skip
        assert again.layer.digest == json.loads(out)["digest"]
        assert again.layer.size == sizes[level]
    assert sizes["9"] < sizes["1"] * 0.95, sizes
    default = layerdiff.commit(tree, image=f"oci:{tmp_path / 'd'}:x", compression=compression)
    explicit = layerdiff.commit(
        tree, image=f"oci:{tmp_path / 'e'}:x", compression=compression, compression_level=2
    )
    assert default.layer.digest == explicit.layer.digest


def test_compression_level_errors(
    rootfs: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for args, message in [
        (["--compression-level", "13"], "13: gzip takes 1 to 12"),
        (["--compression", "zstd", "--compression-level", "0"], "0: zstd takes 1 to 19"),
        (["--compression", "none", "--compression-level", "3"], "--compression none takes no"),
        (["--compression-level", "x"], "'x' is not a valid integer"),
    ]:
        code, _, err = run(capsys, "commit", "--upper", str(rootfs), *args, f"oci:{tmp_path}/o")
        assert code == 2, err
        assert message in err and err.count("\n") == 1
    code, _, err = run(capsys, "squash", "--compression-level", "20", "a", "b")
    assert code == 2 and "20: gzip takes 1 to 12" in err
    for level in (0, 13, True, 2.0, "2"):
        with pytest.raises(layerdiff.InvalidArgumentError, match="compression_level="):
            layerdiff.commit(rootfs, image=f"oci:{tmp_path}/o", compression_level=level)  # type: ignore[arg-type]
    with pytest.raises(layerdiff.InvalidArgumentError, match="takes no level"):
        layerdiff.write_layer(rootfs, dest=tmp_path / "b", compression="none", compression_level=1)
    assert not (tmp_path / "o").exists() and not (tmp_path / "b").exists()


# -- other tools read what we write ------------------------------------------------------------


@pytest.mark.skipif(shutil.which("skopeo") is None, reason="skopeo is not installed")
def test_skopeo_reads_our_layout(rootfs: Path, tmp_path: Path) -> None:
    result = layerdiff.commit(rootfs, image=f"oci:{tmp_path}/lay:v1")
    proc = subprocess.run(
        ["skopeo", "inspect", f"oci:{tmp_path}/lay:v1"], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(proc.stdout)
    assert info["Digest"] == result.manifest_digest
    assert info["Layers"] == [result.layer.digest]


@pytest.mark.root
@pytest.mark.skipif(shutil.which("umoci") is None, reason="umoci is not installed")
@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_umoci_unpacks_our_image(rootfs: Path, tmp_path: Path, compression: str) -> None:
    layerdiff.commit(rootfs, image=f"oci:{tmp_path}/lay:v1", compression=compression)
    proc = subprocess.run(
        ["umoci", "unpack", "--image", f"{tmp_path}/lay:v1", str(tmp_path / "b")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    # Python's tarfile (the stand-in) rounds mtimes, so compare them in the real-core tests.
    assert_same_tree(rootfs, tmp_path / "b" / "rootfs", mtimes=False)


@pytest.mark.parametrize("closed", [1, 2])
def test_a_command_started_with_stdout_or_stderr_closed_still_does_its_work(
    rootfs: Path, tmp_path: Path, closed: int
) -> None:
    """As `layerdiff commit ... >&-`: what would be printed goes nowhere, the commit is made
    and the exit code says so; so too for a command that only prints."""
    layout = f"oci:{tmp_path / 'l'}"

    def run(*args: str) -> subprocess.CompletedProcess[bytes]:
        # Closed in the child once its streams are set up: the other one is still captured.
        return subprocess.run(
            [sys.executable, "-m", "layerdiff", *args],
            preexec_fn=lambda: os.close(closed),
            capture_output=True,
            check=False,
            timeout=120,
        )

    done = run("commit", "--json", "--upper", str(rootfs), f"{layout}:1")
    assert done.returncode == 0, done
    assert b"Traceback" not in done.stdout + done.stderr
    assert [i.tag for i in layerdiff.images(tmp_path / "l")] == ["1"]
    assert run("inspect", f"{layout}:1").returncode == 0


@pytest.mark.parametrize("args", [["diff"], ["diff", "--json"], ["images", "--json"]])
def test_a_full_standard_output_is_named(tmp_path: Path, args: list[str]) -> None:
    """Output that cannot be written fails saying where, not with the OS's message alone,
    which would read as the store's disk being full."""
    (tmp_path / "lower").mkdir()
    (tmp_path / "upper").mkdir()
    (tmp_path / "upper" / "f").write_text("x")
    if args[0] == "diff":
        args = [*args, str(tmp_path / "lower"), str(tmp_path / "upper")]
    else:
        layerdiff.commit(tmp_path / "upper", image="full:1")
    with open("/dev/full", "wb") as full:
        done = subprocess.run(
            [sys.executable, "-m", "layerdiff", *args],
            stdout=full,
            stderr=subprocess.PIPE,
            check=False,
            timeout=60,
        )
    assert done.returncode == 1
    assert done.stderr == b"layerdiff: error: standard output: No space left on device\n"


def test_command_output_survives_the_fast_exit_and_a_closed_pipe_is_quiet(
    tmp_path: Path,
) -> None:
    """The command exits without the interpreter's teardown: what it printed must still all
    arrive, and a reader that went away ends it quietly with a failure, as it does `cat`."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    lower.mkdir()
    upper.mkdir()
    for i in range(3000):  # more output than a pipe holds
        (upper / f"file-{i:05d}").write_text("x")
    out = run_cli("diff", "--json", str(lower), str(upper))
    assert out.returncode == 0, out.stderr
    assert len(json.loads(out.stdout)) == 3000
    gone = subprocess.Popen(
        [sys.executable, "-m", "layerdiff", "diff", str(lower), str(upper)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert gone.stdout is not None and gone.stderr is not None
    gone.stdout.close()
    err = gone.stderr.read().decode()
    assert gone.wait(timeout=60) == 1
    assert "Traceback" not in err and "Exception ignored" not in err, err
