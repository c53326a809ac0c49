"""The store under stress: commits killed at random points, parallel commits, a full disk, a
read-only store, and a hypothesis state machine of commit / tag / squash / untag / gc / fsck."""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

import layerdiff
from layerdiff.layout import Layout
from tests.conftest import run_cli


def make_tree(root: Path, seed: int, files: int = 20, size: int = 200_000) -> Path:
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    for i in range(files):
        (root / f"d{i % 4}").mkdir(exist_ok=True)
        (root / f"d{i % 4}" / f"f{i}").write_bytes(rng.randbytes(size))
    return root


def store_layout() -> Layout:
    return Layout.open(Path(os.environ["LAYERDIFF_HOME"]) / "images")


def test_commits_killed_at_random_points_leave_a_consistent_store(tmp_path: Path) -> None:
    tree = make_tree(tmp_path / "tree", 1, files=24, size=1_000_000)
    layerdiff.commit(tree, image="base:1", compression="none")
    expected = layerdiff.inspect("base:1")["digest"]

    def start(tag: str) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "layerdiff",
                "commit",
                "--progress",
                "none",
                "--from",
                "base:1",
                "--upper",
                str(tree),
                f"victim:{tag}",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )

    # The kills fall anywhere in a whole commit's time, however fast this machine is.
    begin = time.monotonic()
    assert start("whole").wait() == 0
    whole = time.monotonic() - begin
    rng = random.Random(7)
    killed = 0
    for attempt in range(15):
        proc = start(str(attempt))
        time.sleep(rng.uniform(0.05, 0.95) * whole)
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            killed += 1
        proc.wait()
        report = layerdiff.fsck()
        assert report.ok, (attempt, report.problems)
        assert layerdiff.inspect("base:1")["digest"] == expected
    assert killed >= 5, "too few commits were interrupted to mean anything"
    # Leftovers of the killed commits are temporary files or unreferenced blobs: gc takes them.
    layerdiff.gc()
    assert not [p for p in store_layout().blobs_dir.iterdir() if p.name.startswith(".")]
    assert layerdiff.fsck().ok


def test_parallel_commits_lose_no_tag(tmp_path: Path) -> None:
    script = (
        "import sys, layerdiff\n"
        "for i in range(5):\n"
        "    layerdiff.commit(sys.argv[1], image=f'{sys.argv[2]}:{i}', compression='none')\n"
    )
    trees = [make_tree(tmp_path / f"t{n}", n, files=4, size=10_000) for n in range(4)]
    procs = [
        subprocess.Popen([sys.executable, "-c", script, str(t), f"p{n}"])
        for n, t in enumerate(trees)
    ]
    assert all(p.wait() == 0 for p in procs)
    tags = store_layout().tags()
    assert sorted(tags) == sorted(f"p{n}:{i}" for n in range(4) for i in range(5))
    assert layerdiff.fsck().ok


@contextlib.contextmanager
def _tmpfs(where: Path, size: str) -> Iterator[None]:
    """A tmpfs of ``size`` mounted at the new directory ``where`` while in use."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(where)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", str(where)], check=True)


@pytest.mark.root
def test_full_disk_fails_cleanly_and_keeps_the_store(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with _tmpfs(disk, "3m"):
        small = make_tree(tmp_path / "small", 2, files=2, size=10_000)
        big = make_tree(tmp_path / "big", 3, files=10, size=1_000_000)
        layout = disk / "layout"
        layerdiff.commit(small, image=f"oci:{layout}:small")
        index = (layout / "index.json").read_bytes()
        blobs = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
        proc = run_cli(
            "commit",
            "--progress",
            "none",
            "--upper",
            str(big),
            "--compression",
            "none",
            f"oci:{layout}:big",
        )
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "No space left on device" in proc.stderr
        assert (layout / "index.json").read_bytes() == index
        assert sorted(p.name for p in (layout / "blobs" / "sha256").iterdir()) == blobs
        assert layerdiff.fsck(f"oci:{layout}").ok


def _fill(disk: Path) -> None:
    """Fill the file system at ``disk`` to its last byte."""
    with (disk / "filler").open("wb", buffering=0) as f:
        for chunk in (65536, 1):
            with contextlib.suppress(OSError):
                while f.write(b"\0" * chunk):
                    pass


@pytest.mark.root
def test_rmi_frees_a_full_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """rmi is what a user runs on a full disk: the store keeps room for the index it must
    write before any blob can go, and a command that adds to the store never uses it."""
    disk = tmp_path / "disk"
    with _tmpfs(disk, "8m"):
        monkeypatch.setenv("LAYERDIFF_HOME", str(disk / "home"))
        layerdiff.commit(make_tree(tmp_path / "a", 7, files=3, size=1_000_000), image="a:1")
        layerdiff.commit(make_tree(tmp_path / "b", 8, files=1, size=100_000), image="b:1")
        reserve = disk / "home" / "images" / ".layerdiff.reserve"
        assert reserve.stat().st_size >= 64 << 10
        _fill(disk)
        failed = run_cli("commit", "--progress", "none", "--upper", str(tmp_path / "b"), "c:1")
        assert failed.returncode == 1 and "No space left on device" in failed.stderr
        assert reserve.exists()
        done = run_cli("rmi", "a:1")
        assert done.returncode == 0, done.stderr
        assert "untagged a:1" in done.stdout and "removed 3 blobs" in done.stdout, done.stdout
        assert store_layout().tags() == ["b:1"]
        assert os.statvfs(disk).f_bfree * os.statvfs(disk).f_frsize > 2_000_000
        assert reserve.stat().st_size >= 64 << 10  # made again once there was room
        assert layerdiff.fsck().ok


@pytest.mark.root
def test_a_reserve_that_cannot_grow_is_kept(tmp_path: Path) -> None:
    """The reserve grows with the index; on a disk without room for more, the one there stays
    (an rmi can still use it), rather than going too."""
    disk = tmp_path / "disk"
    with _tmpfs(disk, "2m"):
        layout = Layout.create(disk / "images")
        layout.keep_reserve()
        reserve = disk / "images" / ".layerdiff.reserve"
        assert reserve.stat().st_size == 64 << 10
        index = layout.read_index()
        index["annotations"] = {"pad": "x" * (48 << 10)}  # twice this is more than 64 KiB
        (disk / "images" / "index.json").write_text(json.dumps(index))
        _fill(disk)
        layout.keep_reserve()
        assert reserve.stat().st_size >= 64 << 10
        (disk / "filler").unlink()
        layout.keep_reserve()
        assert reserve.stat().st_size >= 96 << 10


@pytest.mark.root
def test_read_only_store_is_a_one_line_error(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with _tmpfs(disk, "20m"):
        src = make_tree(tmp_path / "src", 4, files=2, size=10_000)
        layout = disk / "layout"
        layerdiff.commit(src, image=f"oci:{layout}:one")
        subprocess.run(["mount", "-o", "remount,ro", str(disk)], check=True)
        proc = run_cli("commit", "--progress", "none", "--upper", str(src), f"oci:{layout}:two")
        assert proc.returncode == 1
        assert proc.stderr.count("\n") == 1 and "Read-only file system" in proc.stderr
        assert layerdiff.fsck(f"oci:{layout}").ok


class StoreMachine(RuleBasedStateMachine):
    """Random sequences of store operations; after each, fsck passes and every tag names the
    image the model says it names."""

    def __init__(self) -> None:
        super().__init__()
        self.dir = Path(tempfile.mkdtemp(prefix="layerdiff-store-"))
        self.layout = self.dir / "layout"
        self.model: dict[str, str] = {}  # tag -> manifest digest
        self.trees = [make_tree(self.dir / f"tree{i}", i, files=3, size=2_000) for i in range(3)]

    def ref(self, tag: str) -> str:
        return f"oci:{self.layout}:{tag}"

    @rule(tag=st.sampled_from("abcd"), tree=st.integers(0, 2), on_base=st.booleans())
    def commit(self, tag: str, tree: int, on_base: bool) -> None:
        base = None
        if on_base and self.model:
            base = self.ref(sorted(self.model)[0])
        result = layerdiff.commit(self.trees[tree], image=self.ref(tag), base=base)
        self.model[tag] = result.manifest_digest

    @rule(src=st.sampled_from("abcd"), dst=st.sampled_from("wxyz"))
    def squash(self, src: str, dst: str) -> None:
        if src in self.model:
            self.model[dst] = layerdiff.squash(self.ref(src), self.ref(dst)).manifest_digest

    @rule(tag=st.sampled_from("abcdwxyz"))
    def untag(self, tag: str) -> None:
        if Layout.open(self.layout).remove_tag(tag) if self.layout.exists() else False:
            del self.model[tag]

    @rule()
    def gc(self) -> None:
        if self.layout.exists():
            layerdiff.gc(f"oci:{self.layout}")

    @invariant()
    def store_is_consistent(self) -> None:
        if not self.layout.exists():
            return
        report = layerdiff.fsck(f"oci:{self.layout}")
        assert report.ok, report.problems
        for tag, digest in self.model.items():
            assert layerdiff.inspect(self.ref(tag))["digest"] == digest

    def teardown(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


StoreMachine.TestCase.settings = settings(
    max_examples=15,
    stateful_step_count=12,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_store_state_machine = StoreMachine.TestCase


def test_remove_tree_copes_with_a_writer_still_at_work(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A container's caller may record its exit while ``rm -f`` removes the container: a file
    that vanishes under the removal, or one that appears after it listed the directory, must
    not make it fail."""
    from layerdiff.layercache import remove_tree

    tree = tmp_path / "c"
    (tree / "upper").mkdir(parents=True)
    (tree / "upper" / "f").write_text("x")
    (tree / ".container.json.123").write_text("{}")
    real_unlink, real_rmdir = os.unlink, os.rmdir
    appeared: list[str] = []

    def unlink(name: str, *args: object, **kwargs: object) -> None:
        if name == ".container.json.123":
            real_unlink(tree / name)  # the writer renamed it away first
        real_unlink(name, *args, **kwargs)  # type: ignore[arg-type]

    def rmdir(name: str, *args: object, **kwargs: object) -> None:
        if not appeared and Path(name) == tree:
            appeared.append("x")
            (tree / "container.json").write_text("{}")  # written after the listing
        real_rmdir(name, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(os, "unlink", unlink)
    monkeypatch.setattr(os, "rmdir", rmdir)
    remove_tree(tree)
    assert not tree.exists()
    assert appeared == ["x"]


# Races, each made to happen at its worst moment: the interleaving another process would give.


@pytest.mark.parametrize("command", ["tag", "commit"])
def test_an_image_removed_while_it_is_tagged_or_built_on_is_not_referenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, command: str
) -> None:
    """An `rmi` of the source (and its gc) between the moment `tag` or `commit --from` read
    the image and the moment it holds off gc: the command fails, and nothing refers to the
    blobs that went."""
    import importlib

    module = importlib.import_module("layerdiff.tags" if command == "tag" else "layerdiff.commit")
    layerdiff.commit(make_tree(tmp_path / "base", 4, files=2, size=1000), image="base:1")
    real = module.writing

    def after_an_rmi(layout: Layout) -> object:
        layerdiff.untag("base:1")
        layerdiff.gc()
        return real(layout)

    monkeypatch.setattr(module, "writing", after_an_rmi)
    with pytest.raises(layerdiff.ImageNotFoundError, match="is missing"):
        if command == "tag":
            layerdiff.tag("base:1", "other:1")
        else:
            layerdiff.commit(make_tree(tmp_path / "top", 5, files=1), image="new:1", base="base:1")
    assert layerdiff.images() == []
    assert layerdiff.fsck().ok


def test_a_failed_command_removes_the_layout_it_made_only_while_nobody_writes_into_it(
    tmp_path: Path,
) -> None:
    """Another command made the same new layout and writes into it: it is left alone; one
    that made it and has not begun to write finds it made again when it does."""
    from layerdiff.layout import writing

    path = tmp_path / "new" / "layout"
    other = Layout.create(path)
    with writing(other):
        Layout(path)._remove_if_unused([tmp_path / "new", path])  # the failed command
        assert (path / "oci-layout").is_file()
        other.put_blob(b"{}", media_type="application/json")
    shutil.rmtree(tmp_path / "new")

    other = Layout.create(path)  # made, not written into yet
    Layout(path)._remove_if_unused([tmp_path / "new", path])
    assert not (tmp_path / "new").exists()
    with writing(other):
        assert (path / "oci-layout").is_file() and (path / "index.json").is_file()
        desc = other.put_blob(b"{}", media_type="application/json")
        other.set_tag("t", desc)
    assert Layout.open(path).tags() == ["t"]


def test_a_lock_file_removed_while_it_is_waited_for_is_opened_again(tmp_path: Path) -> None:
    import fcntl
    import threading

    from layerdiff.layout import _lock_fd

    lock = tmp_path / ".layerdiff.gc.lock"
    held = _lock_fd(lock, fcntl.LOCK_EX)
    got: list[int] = []
    waiter = threading.Thread(target=lambda: got.append(_lock_fd(lock, fcntl.LOCK_EX)))
    waiter.start()
    time.sleep(0.2)
    lock.unlink()  # as the cleanup of an unused layout does, holding it
    os.close(held)
    waiter.join(10)
    assert got, "still waiting"
    assert os.fstat(got[0]).st_ino == os.stat(lock).st_ino  # the lock file there now
    try:
        with pytest.raises(BlockingIOError):
            os.close(_lock_fd(lock, fcntl.LOCK_EX | fcntl.LOCK_NB))
    finally:
        os.close(got[0])


def test_gc_leaves_an_index_being_written_alone(tmp_path: Path) -> None:
    """`rmi` writes index.json under the index lock alone; gc, which removes stale temporary
    files of it, waits for that lock."""
    import threading

    layout = Layout.create(tmp_path / "l")
    done: list[object] = []
    with layout.index_lock():
        tmp = layout.path / ".index.json.abcd.tmp"
        tmp.write_text("{}")
        gc = threading.Thread(target=lambda: done.append(layerdiff.gc(f"oci:{layout.path}")))
        gc.start()
        gc.join(0.5)
        assert gc.is_alive() and tmp.exists()
        tmp.unlink()
    gc.join(10)
    assert done


@pytest.mark.root
def test_a_full_disk_during_load_names_the_store(tmp_path: Path) -> None:
    disk = tmp_path / "disk"
    with _tmpfs(disk, "1m"):
        big = make_tree(tmp_path / "big", 6, files=4, size=1_000_000)
        layerdiff.commit(big, image=f"oci:{tmp_path / 'src'}:1", compression="none")
        layerdiff.save(f"oci:{tmp_path / 'src'}:1", f"docker-archive:{tmp_path / 'image.tar'}")
        done = run_cli("load", str(tmp_path / "image.tar"), f"oci:{disk / 'l'}:1")
        assert done.returncode == 1 and done.stderr.count("\n") == 1, done.stderr
        assert f"{disk / 'l' / 'blobs' / 'sha256'}: No space left on device" in done.stderr


@pytest.mark.root
def test_a_full_target_during_unpack_is_the_systems_error_not_the_layers(tmp_path: Path) -> None:
    """A disk that fills while a layer is written out is an OSError with its errno and the
    path in the target, as docker reports it, not a malformed layer."""
    import errno

    big = make_tree(tmp_path / "big", 6, files=4, size=1_000_000)
    layerdiff.commit(big, image=f"oci:{tmp_path / 'src'}:1")
    disk = tmp_path / "disk"
    with _tmpfs(disk, "1m"):
        with pytest.raises(layerdiff.LayerdiffOSError) as info:
            layerdiff.unpack(f"oci:{tmp_path / 'src'}:1", disk / "out")
        assert info.value.errno == errno.ENOSPC
        assert str(info.value.filename).startswith(str(disk / "out")), info.value
        done = run_cli("unpack", f"oci:{tmp_path / 'src'}:1", str(disk / "again"))
        assert done.returncode == 1 and "No space left on device" in done.stderr
        assert "reading content" not in done.stderr, done.stderr
