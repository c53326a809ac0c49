"""Rootless containers: an unprivileged user runs, changes and commits a container.

The test runs as root (CI does) and drops to ``nobody`` for the real thing: a user namespace
mapping the caller to root, overlayfs with ``userxattr``, the ``user`` form of the layer cache.
It is skipped, saying why, where the kernel does not let unprivileged users make namespaces.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import pytest

import layerdiff
from layerdiff.catalog import load_image
from tests.containers import busybox_rootfs

pytestmark = pytest.mark.root

NOBODY = 65534
REPO_PYTHON = Path(layerdiff.__file__).resolve().parent.parent

SCRIPT = r"""
import json, sys
import layerdiff
from layerdiff import runtime

layerdiff.commit(sys.argv[1], image="bb:1", changes=['CMD ["sh"]'])
first = runtime.run("bb:1", ["sh", "-c",
    "id -u; echo hi > /root/f; rm /bin/vi; echo h > /etc/hostname; head -1 /proc/self/uid_map;"
    "echo 'root:*:1::::::' > /etc/shadow; chmod 000 /etc/shadow;"
    "mkdir /secret; echo s > /secret/f; chmod 000 /secret"],
    name="c")
commit = runtime.commit_container("c", "bb:2")
print(json.dumps({"diff": [str(c) for c in runtime.changes("c")]}))
second = runtime.run("bb:2", ["sh", "-c", "cat /root/f; test -e /bin/vi || echo gone"], rm=True)
other = runtime.run("bb:2", ["true"], user="nobody", rm=True)
try:
    runtime.run("bb:2", ["true"], rm=True, limits=layerdiff.Limits(pids=10))
    limited = "ran"
except layerdiff.ContainerError as e:
    limited = str(e)
# A running rootless container has no control group to freeze: commit says it does not pause.
import threading, time
live = runtime.create("bb:2", command=["sleep", "5"], name="live")
runner = threading.Thread(target=runtime.start, args=(live,))
runner.start()
for _ in range(500):
    if runtime.open_container("live").state == "running":
        break
    time.sleep(0.01)
steps = []
runtime.commit_container("live", "bb:live", on_step=steps.append)
runner.join()
print(json.dumps({"steps": steps}))
print(json.dumps({"codes": [first.exit_code, second.exit_code],
                  "errors": [first.error, second.error], "image": commit.image,
                  "warnings": list(commit.layer.warnings), "limited": limited,
                  "other": [other.exit_code, other.error]}))
"""


def _as_nobody() -> None:
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _run_as_nobody(
    python: str,
    script: str,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """``script`` run by ``python`` as nobody, with the repository's package."""
    return subprocess.run(
        [python, "-c", script, *args],
        env={"PYTHONPATH": str(REPO_PYTHON), "PATH": "/usr/bin:/bin", **(env or {})},
        cwd=cwd,
        preexec_fn=_as_nobody,
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def _interpreter() -> str:
    """An interpreter ``nobody`` may run (ours may live under root's home)."""
    for candidate in (sys.executable, "/usr/bin/python3"):
        try:
            probe = subprocess.run(
                [candidate, "-c", "import layerdiff._core"],
                env={"PYTHONPATH": str(REPO_PYTHON), "PATH": "/usr/bin:/bin"},
                preexec_fn=_as_nobody,
                capture_output=True,
                check=False,
            )
        except PermissionError:
            continue
        if probe.returncode == 0:
            return candidate
    pytest.skip(f"no Python that nobody can run with layerdiff from {REPO_PYTHON}")


def _give_to_nobody(root: Path) -> None:
    """Make ``root`` and everything below it nobody's."""
    for path in [root, *root.rglob("*")]:
        os.lchown(path, NOBODY, NOBODY)


def _skip_without_user_namespaces() -> None:
    userns = subprocess.run(
        ["unshare", "--user", "--map-root-user", "--mount", "true"],
        preexec_fn=_as_nobody,
        capture_output=True,
        check=False,
    )
    if userns.returncode != 0:
        pytest.skip(f"this kernel refuses unprivileged user namespaces: {userns.stderr!r}")


def test_rootless_run_and_commit(monkeypatch: pytest.MonkeyPatch) -> None:
    _skip_without_user_namespaces()
    python = _interpreter()
    work = Path(tempfile.mkdtemp(prefix="layerdiff-rootless-"))
    try:
        busybox_rootfs(work / "rootfs")
        (work / "home").mkdir()
        _give_to_nobody(work)
        done = _run_as_nobody(
            python,
            SCRIPT,
            str(work / "rootfs"),
            cwd=work,
            env={"LAYERDIFF_HOME": str(work / "home"), "HOME": str(work)},
        )
        assert done.returncode == 0, done.stderr
        lines = done.stdout.splitlines()
        result = json.loads(lines[-1])
        assert result["codes"] == [0, 0], result["errors"]
        steps = json.loads(lines[-2])["steps"]
        # docker diff's view, read as the container's root reads its files (/secret is 000).
        [diff] = [json.loads(line)["diff"] for line in lines if line.startswith('{"diff"')]
        assert {"A /secret", "A /secret/f", "A /etc/shadow", "D /bin/vi"} <= set(diff), diff
        assert any(step.startswith("not pausing the container") for step in steps), steps
        assert any("committed as owned by root" in w for w in result["warnings"])
        # Limits without a control group this user may make (cgroup v1): said so, by flag.
        if not Path("/sys/fs/cgroup/cgroup.controllers").exists():
            assert result["limited"].startswith("--pids-limit: limits need a control group")
        # Its user namespace maps the caller alone: no other user to become.
        assert result["other"][0] == 125
        assert "user 65534:65534: a rootless container has one user" in result["other"][1]
        # Inside: root, mapped to nobody outside. The new image holds the change.
        assert lines[0] == "0"
        assert lines[1].split() == ["0", str(NOBODY), "1"]
        assert lines[2:4] == ["hi", "gone"]
        # The cache is in the form for userxattr mounts, and the layer records root as owner.
        assert list((work / "home" / "layers" / "user").iterdir())
        assert not (work / "home" / "layers" / "trusted").exists()
        monkeypatch.setenv("LAYERDIFF_HOME", str(work / "home"))
        image = load_image("bb:2")
        with tarfile.open(image.layout.blob_path(image.layers[-1]["digest"])) as tar:
            members = {m.name.rstrip("/"): m for m in tar.getmembers()}
            # Files the container made unreadable to their owner, as useradd leaves
            # /etc/shadow, are read as the container's root reads them.
            shadow = tar.extractfile(members["etc/shadow"])
            assert shadow is not None and shadow.read() == b"root:*:1::::::\n"
            secret = tar.extractfile(members["secret/f"])
            assert secret is not None and secret.read() == b"s\n"
        assert set(members) >= {"root/f", "bin/.wh.vi", "etc/shadow", "secret", "secret/f"}
        assert "etc/hostname" not in members
        for name in ("root/f", "etc/shadow", "secret"):
            assert (members[name].uid, members[name].gid) == (0, 0), name
        assert members["etc/shadow"].mode == members["secret"].mode == 0
    finally:
        shutil.rmtree(work, ignore_errors=True)


STACKED = r"""
import os, sys
from pathlib import Path
import layerdiff

w = Path(sys.argv[1])
opts = dict(overlay=True, chown=False, userxattr=True)
layerdiff.apply(w / "s0", w / "l0.tar", lowers=[], **opts)
layerdiff.apply(w / "s1", w / "l1.tar", lowers=[w / "s0"], **opts)
layerdiff.apply(w / "s2", w / "l2.tar", lowers=[w / "s1", w / "s0"], **opts)
print(oct(os.stat(w / "s1/usr/bin").st_mode & 0o777), (w / "s1/usr/bin/new").read_text(),
      os.path.samefile(w / "s1/etc/shadow", w / "s1/etc/shadow.hl"),
      oct(os.stat(w / "s2/usr/bin").st_mode & 0o777))
"""


def test_rootless_layers_over_read_only_and_unreadable_lower_files() -> None:
    """The user form of the layer cache, as a rootless `run` makes it: a layer adding a file
    to a read-only (0555) lower directory, and hard-linking an unreadable (000) lower file,
    both applied over the layer below without privilege; the copied-up directory keeps its
    mode, and one made anew where it was does not take it."""
    from tests.stacks import D, F, H, layer_tar

    python = _interpreter()
    work = Path(tempfile.mkdtemp(prefix="layerdiff-rootless-"))
    try:
        (work / "l0.tar").write_bytes(
            layer_tar(
                [
                    D("usr"),
                    D("usr/bin", mode=0o555),
                    F("usr/bin/ls", mode=0o755),
                    D("etc"),
                    F("etc/shadow", b"s", mode=0o000),
                ]
            )
        )
        (work / "l1.tar").write_bytes(
            layer_tar([F("usr/bin/new", b"n"), H("etc/shadow.hl", "etc/shadow")])
        )
        # The copied-up /usr/bin replaced, and made again below a new /usr: the new one is
        # made as any directory a layer has no entry for (0755), not given the lower's mode.
        (work / "l2.tar").write_bytes(
            layer_tar([F("usr/bin/x"), F("usr", b"f"), D("usr"), F("usr/bin/y")])
        )
        _give_to_nobody(work)
        done = _run_as_nobody(python, STACKED, str(work))
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["0o555", "n", "True", "0o755"]
    finally:
        subprocess.run(["chmod", "-R", "u+rwX", str(work)], check=False)
        shutil.rmtree(work)


OVERLAY_DIFF = """
import sys
import layerdiff
try:
    layerdiff.diff_overlay(sys.argv[1], lowers=[sys.argv[2]])
except layerdiff.OverlayError as e:
    print("refused:", e)
else:
    print("read")
"""


def test_an_upper_written_by_root_is_refused_without_privilege_not_misread() -> None:
    """The markers of an overlay mounted by root (a renamed directory, one deleted and made
    again) are trusted.overlay.* xattrs, which nobody cannot read: the diff stops instead of
    giving a layer without them."""
    from tests.overlays import mount_or_skip

    python = _interpreter()
    work = Path(tempfile.mkdtemp(prefix="layerdiff-rootless-"))
    try:
        lower, upper, wd, merged = (work / n for n in ("lower", "upper", "work", "merged"))
        (lower / "d" / "sub").mkdir(parents=True)
        (lower / "d" / "sub" / "f").write_text("1")
        (lower / "e").mkdir()
        (lower / "e" / "h").write_text("2")
        for d in (upper, wd, merged):
            d.mkdir()
        opts = f"lowerdir={lower},upperdir={upper},workdir={wd},index=off,redirect_dir=on"
        mount_or_skip(opts, merged)
        try:
            (merged / "d").rename(merged / "dd")
            shutil.rmtree(merged / "e")
            (merged / "e").mkdir()
        finally:
            subprocess.run(["umount", str(merged)], check=True)
        os.chown(work, NOBODY, NOBODY)
        as_root = subprocess.run(
            [python, "-c", OVERLAY_DIFF, str(upper), str(lower)],
            env={"PYTHONPATH": str(REPO_PYTHON), "PATH": "/usr/bin:/bin"},
            capture_output=True,
            text=True,
            check=False,
        )
        assert as_root.stdout == "read\n", as_root.stderr
        done = _run_as_nobody(python, OVERLAY_DIFF, str(upper), str(lower))
        assert done.returncode == 0, done.stderr
        assert done.stdout.startswith(f"refused: {upper}: shows no user.overlay.* xattr"), (
            done.stdout
        )
        assert "read it as root" in done.stdout
    finally:
        shutil.rmtree(work)


KILLED_WRITER = r"""
import os, subprocess, sys, time
from pathlib import Path

tree, dest = Path(sys.argv[1]), Path(sys.argv[2])
writer = subprocess.Popen([sys.executable, "-c",
    "import sys, layerdiff; layerdiff.write_layer(sys.argv[1], dest=sys.argv[2], "
    "root_ids=(65534, 65534), compression_level=12)", str(tree), str(dest)])
for _ in range(1000):
    if dest.is_dir() and any(p.name.startswith(".tmp-") for p in dest.iterdir()):
        break
    time.sleep(0.01)
else:
    raise SystemExit("no temporary layer appeared")
writer.kill()
writer.wait()
for _ in range(500):
    if not any(p.name.startswith(".tmp-") for p in dest.iterdir()):
        break
    time.sleep(0.02)
print(sorted(p.name for p in dest.iterdir()))
"""


def test_a_rootless_layer_writer_whose_caller_is_killed_stops_and_cleans_up() -> None:
    """A rootless container's layer is written by a child in a user namespace: its caller
    killed (SIGKILL), it stops as an interrupted command does, its temporary file removed."""
    _skip_without_user_namespaces()
    python = _interpreter()
    work = Path(tempfile.mkdtemp(prefix="layerdiff-rootless-"))
    try:
        tree = work / "tree"
        tree.mkdir()
        # Slow to deflate at level 12: text, not random bytes (stored as they are).
        with open(tree / "numbers", "w") as f:
            for i in range(8_000_000):
                f.write(f"{i}\n")
        (work / "out").mkdir()
        _give_to_nobody(work)
        done = _run_as_nobody(
            python,
            KILLED_WRITER,
            str(tree),
            str(work / "out"),
            env={"LAYERDIFF_HOME": str(work / "home")},
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "[]", done.stdout
    finally:
        shutil.rmtree(work, ignore_errors=True)


def test_content_mode_leaves_files_the_caller_cannot_read_to_their_attributes() -> None:
    """`diff --content` by a user who cannot read a file (mode 0000, its own, equal on both
    sides): its attributes decide, as without --content, rather than the diff failing; a
    readable file rewritten with its size and mtime kept is still found."""
    python = _interpreter()
    work = Path(tempfile.mkdtemp(prefix="layerdiff-content-"))
    try:
        for side, data in (("l", b"one"), ("u", b"two")):
            (work / side).mkdir()
            (work / side / "secret").write_bytes(b"s")
            (work / side / "changed").write_bytes(data)
            for name in ("secret", "changed"):
                os.utime(work / side / name, ns=(10**18, 10**18))
            os.chmod(work / side / "secret", 0)
            os.utime(work / side, ns=(10**18, 10**18))
        _give_to_nobody(work)
        done = _run_as_nobody(
            python,
            "import sys, layerdiff\n"
            "print([str(c) for c in layerdiff.diff(sys.argv[1], sys.argv[2], content=True)])",
            str(work / "l"),
            str(work / "u"),
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == "['C /changed']"
    finally:
        shutil.rmtree(work)
