"""Ctrl-C, SIGTERM and SIGHUP stop long work promptly, with exit code 128 plus the signal's
number and nothing half-written left behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import layerdiff


def big_tree(root: Path) -> Path:
    """Enough data that a commit takes seconds: 48 files of 16 MiB of incompressible bytes."""
    root.mkdir()
    chunk = os.urandom(1 << 20)
    for i in range(48):
        with open(root / f"f{i:02}", "wb") as f:
            for j in range(16):
                f.write(chunk[j:] + chunk[:j])
    return root


def _default_signals() -> None:
    for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_DFL)


@pytest.mark.parametrize(
    ("sig", "code", "message"),
    [
        (signal.SIGINT, 130, "interrupted"),
        (signal.SIGTERM, 143, "terminated by SIGTERM"),
        (signal.SIGHUP, 129, "terminated by SIGHUP"),
    ],
)
def test_a_signal_stops_a_commit_and_leaves_the_store_as_it_was(
    tmp_path: Path, sig: signal.Signals, code: int, message: str
) -> None:
    tree = big_tree(tmp_path / "tree")
    layout = tmp_path / "layout"
    layerdiff.commit(tmp_path / "tree", image=f"oci:{layout}:first", compression="none")
    before = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    index_before = (layout / "index.json").read_bytes()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "layerdiff",
            "commit",
            "--progress",
            "none",
            "--threads",
            "1",
            "--compression",
            "zstd",
            "--upper",
            str(tree),
            f"oci:{layout}:second",
        ],
        stderr=subprocess.PIPE,
        text=True,
        # As a terminal starts it: run under nohup, the tests' SIGHUP would be ignored.
        preexec_fn=_default_signals,
    )
    # Interrupt once the layer is being written (its temporary blob exists), not after a fixed
    # delay that a fast machine may outrun.
    blobs = layout / "blobs" / "sha256"
    deadline = time.monotonic() + 20
    while not any(p.name.startswith(".tmp-") for p in blobs.iterdir()):
        assert proc.poll() is None, "the commit finished before it could be interrupted"
        assert time.monotonic() < deadline, "the commit never started writing its layer"
        time.sleep(0.01)
    assert proc.poll() is None, "the commit finished before it could be interrupted"
    start = time.monotonic()
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=30)
    assert time.monotonic() - start < 5, f"{sig.name} was not seen promptly"
    assert proc.returncode == code, err
    assert err.strip() == f"layerdiff: error: {message}"
    after = sorted(p.name for p in (layout / "blobs" / "sha256").iterdir())
    assert after == before, "a temporary or partial blob was left behind"
    assert (layout / "index.json").read_bytes() == index_before


def cli(*args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "layerdiff", *args], stderr=subprocess.PIPE, text=True
    )


def test_a_signal_inside_a_big_file_stops_the_commit_before_the_file_ends(tmp_path: Path) -> None:
    """Checked between the chunks of a file too: a commit spending its time on one 16 GiB file
    stops within moments, not when the file ends, and leaves no blob and no new layout."""
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "a").write_text("a")
    with open(tree / "z-big", "wb") as f:
        f.truncate(16 << 30)
    layout = tmp_path / "new-layout"
    proc = cli("commit", "--progress", "none", "--upper", str(tree), f"oci:{layout}:x")
    deadline = time.monotonic() + 20
    blobs = layout / "blobs" / "sha256"
    while not (blobs.is_dir() and any(p.name.startswith(".tmp-") for p in blobs.iterdir())):
        assert proc.poll() is None, "the commit finished before it could be interrupted"
        assert time.monotonic() < deadline, "the commit never started writing its layer"
        time.sleep(0.01)
    time.sleep(0.3)
    start = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 3, "SIGTERM was not seen until the file was read"
    assert proc.returncode == 143, err
    assert not layout.exists(), "the layout made for the commit was left behind"


def test_ctrl_c_stops_a_diff_promptly(tmp_path: Path) -> None:
    """A diff is cancelled too, between the files it hashes and the directories it reads."""
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    for root, mtime in ((lower, 1_600_000_000), (upper, 1_600_000_001)):
        root.mkdir()
        for i in range(12):
            with open(root / f"f{i:02}", "wb") as f:
                f.truncate(1 << 30)
            os.utime(root / f"f{i:02}", (mtime, mtime))
    proc = cli("diff", "--content", str(lower), str(upper))
    time.sleep(0.5)
    assert proc.poll() is None, "the diff finished before it could be interrupted"
    start = time.monotonic()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert time.monotonic() - start < 3, "Ctrl-C was not seen until the diff was done"
    assert proc.returncode == 130, err


def test_ctrl_c_while_the_command_loads_is_one_line() -> None:
    """A Ctrl-C that comes while the command's modules are imported (here: click's, the
    first slow one) ends it with the line it gives later, and by SIGINT, not a traceback."""
    script = (
        "import sys\n"
        "class Interrupt:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'click':\n"
        "            raise KeyboardInterrupt\n"
        "sys.meta_path.insert(0, Interrupt())\n"
        "from layerdiff.cli import entry\n"
        "entry()\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", script, "--version"], capture_output=True, text=True, timeout=60
    )
    assert done.stderr == "layerdiff: error: interrupted\n"
    assert done.returncode == -signal.SIGINT
    # Imported by a program of its own, the command line leaves its hook in place.
    kept = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys; h = sys.excepthook; import layerdiff.cli; assert sys.excepthook is h",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert kept.returncode == 0, kept.stderr
