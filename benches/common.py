"""Shared helpers of the benchmarks: the Debian rootfs fixture, timing, and a result table.

Benchmarks run our command and the peer tools on the same input in one run and print ratios.
They are never part of the test suite.
"""

from __future__ import annotations

import os
import resource
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

WORK = Path(os.environ.get("LAYERDIFF_BENCH_DIR", Path(__file__).resolve().parent / "work"))
MIRROR = os.environ.get("LAYERDIFF_BENCH_MIRROR", "http://deb.debian.org/debian")


def debian_rootfs() -> Path:
    """A minbase Debian bookworm rootfs (about 200 MB, 7,000 entries), built once and kept."""
    rootfs = WORK / "debian-rootfs"
    done = WORK / "debian-rootfs.done"
    if done.exists():
        return rootfs
    if shutil.which("debootstrap") is None:
        sys.exit("benchmarks need debootstrap (apt-get install debootstrap)")
    if rootfs.exists():
        shutil.rmtree(rootfs)
    WORK.mkdir(parents=True, exist_ok=True)
    print(f"building {rootfs} with debootstrap (once)...", flush=True)
    subprocess.run(
        ["debootstrap", "--variant=minbase", "bookworm", str(rootfs), MIRROR],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    # Device nodes and a few runtime files differ between hosts; the layer engine handles them,
    # but peer tools run unprivileged in some setups, so keep the tree plain.
    shutil.rmtree(rootfs / "dev", ignore_errors=True)
    (rootfs / "dev").mkdir()
    done.touch()
    return rootfs


def warm(path: Path) -> None:
    """Read a tree once so every contender starts from the page cache."""
    subprocess.run(["tar", "-C", str(path), "-cf", "/dev/null", "."], check=True)


@dataclass
class Timing:
    """Median wall time of a few runs, and the peak RSS of the child processes."""

    seconds: float
    max_rss_mb: float


def timed(
    cmd: str | list[str], *, runs: int = 3, setup: Callable[[], None] | None = None
) -> Timing:
    """Run `cmd` (a shell string or argv) `runs` times; median seconds and peak child RSS."""
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        subprocess.run(cmd, shell=isinstance(cmd, str), check=True, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - start)
    rss_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return Timing(statistics.median(times), rss_kb / 1024)


def timed_call(
    fn: Callable[[], object], *, runs: int = 3, setup: Callable[[], None] | None = None
) -> float:
    """Median wall time of an in-process call (the API, without interpreter start-up)."""
    times = []
    for _ in range(runs):
        if setup is not None:
            setup()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def layerdiff_cmd() -> str:
    """The installed ``layerdiff`` script itself, not a version-manager shim in front of it.

    The package's bytecode is brought up to date first, as pip leaves an installed package: an
    editable install run with ``PYTHONDONTWRITEBYTECODE`` set would otherwise compile every
    module again on each start (about 13 ms here), which no installed copy does.
    """
    import sysconfig

    import layerdiff

    package = Path(layerdiff.__file__).parent
    subprocess.run([sys.executable, "-m", "compileall", "-q", str(package)], check=True)
    script = Path(sysconfig.get_path("scripts")) / "layerdiff"
    return str(script) if script.exists() else "layerdiff"


def start_up_ms(cmd: list[str], runs: int = 9) -> float:
    """Median wall time of a command that does next to nothing, in milliseconds."""
    return timed(cmd, runs=runs).seconds * 1000


def peak_rss_mb(cmd: list[str]) -> float:
    """Peak resident memory of one command, measured by GNU time's wait4 accounting."""
    out = subprocess.run(
        [sys.executable, "-c", _RSS_PROBE, *cmd], check=True, capture_output=True, text=True
    )
    return float(out.stdout.strip())


# A fresh interpreter runs the command so RUSAGE_CHILDREN covers that command alone.
_RSS_PROBE = """
import resource, subprocess, sys
subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL)
print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
"""


def report(rows: list[tuple[str, float, float, str]]) -> None:
    """Print (name, ours seconds, peer seconds, note) rows with the speed-up ratio."""
    print(f"{'benchmark':44} {'ours s':>8} {'peer s':>8} {'ratio':>7}  note")
    for name, ours, peer, note in rows:
        print(f"{name:44} {ours:8.3f} {peer:8.3f} {peer / ours:6.2f}x  {note}")
