"""Container speed against peers, on the Debian rootfs image, side by side in one run.

- ``layerdiff run --rm IMAGE -- CMD``: time to the command's first instruction, cold (layer
  not cached yet) and warm, against ``umoci unpack`` + ``runc run`` (where runc is installed);
- commit of a container with 1,000 changed files against ``umoci repack`` of a bundle with the
  same changes.

"First instruction" is measured by the command itself: it prints the clock when it starts.

    python benches/bench_run.py [--runs N]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

from common import debian_rootfs, layerdiff_cmd, report, warm

import layerdiff
from layerdiff import layercache

LD = layerdiff_cmd()
# Prints CLOCK_REALTIME in ns as its first act (coreutils date in the Debian image).
FIRST = ["date", "+%s%N"]
CHANGE_1000 = (
    'find /usr/share/doc -type f | head -n 1000 | while read f; do echo changed >> "$f"; done'
)


def first_instruction(cmd: list[str], env: dict[str, str] | None = None) -> tuple[float, float]:
    """(seconds to the command's first instruction, seconds in all) of one run."""
    start = time.time_ns()
    t0 = time.perf_counter()
    out = subprocess.run(cmd, check=True, capture_output=True, text=True, env=env).stdout
    total = time.perf_counter() - t0
    return (int(out.strip().splitlines()[-1]) - start) / 1e9, total


def median_of(runs: int, fn: object) -> tuple[float, float]:
    results = [fn() for _ in range(runs)]  # type: ignore[operator]
    return (
        statistics.median(r[0] for r in results),
        statistics.median(r[1] for r in results),
    )


def runc_bundle(layout: Path, bundle: Path, args: list[str]) -> None:
    subprocess.run(
        ["umoci", "unpack", "--image", f"{layout}:1", str(bundle)],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = args
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = args.runs

    rootfs = debian_rootfs()
    warm(rootfs)
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-run-", dir="/var/tmp") as tmp:
        work = Path(tmp)
        os.environ["LAYERDIFF_HOME"] = str(work / "home")
        layout = work / "layout"
        image = f"oci:{layout}:1"
        layerdiff.commit(rootfs, image=image)
        env = dict(os.environ)
        run_cmd = [LD, "run", "--rm", image, "--", *FIRST]

        def cold() -> tuple[float, float]:
            shutil.rmtree(layercache.cache_root(), ignore_errors=True)
            os.sync()  # the deletion's writeback is not charged to the next run
            return first_instruction(run_cmd, env)

        cold_first, cold_total = median_of(runs, cold)
        first_instruction(run_cmd, env)  # fills the cache
        warm_first, warm_total = median_of(runs, lambda: first_instruction(run_cmd, env))

        if shutil.which("runc") and shutil.which("umoci"):
            counter = iter(range(1000))

            def peer_cold() -> tuple[float, float]:
                bundle = work / f"bundle{next(counter)}"
                start_ns = time.time_ns()
                t0 = time.perf_counter()
                runc_bundle(layout, bundle, FIRST)
                out = subprocess.run(
                    ["runc", "run", "-b", str(bundle), bundle.name],
                    check=True,
                    capture_output=True,
                    text=True,
                ).stdout
                total = time.perf_counter() - t0
                shutil.rmtree(bundle)
                os.sync()
                return (int(out.strip()) - start_ns) / 1e9, total

            peer_cold_first, peer_cold_total = median_of(runs, peer_cold)
            bundle = work / "bundle-warm"
            runc_bundle(layout, bundle, FIRST)
            peer_warm_first, peer_warm_total = median_of(
                runs,
                lambda: first_instruction(["runc", "run", "-b", str(bundle), "warm"]),
            )
            shutil.rmtree(bundle)
            note = "umoci unpack + runc run"
            rows += [
                ("run -- date: first instruction, cold", cold_first, peer_cold_first, note),
                ("run -- date: whole run, cold", cold_total, peer_cold_total, note),
                ("run -- date: first instruction, warm", warm_first, peer_warm_first, "runc run"),
                ("run -- date: whole run, warm", warm_total, peer_warm_total, "runc run"),
            ]
        else:
            print(f"no runc/umoci: cold {cold_first:.3f}s, warm {warm_first:.3f}s (first instr.)")

        # Commit of a container that changed 1,000 files, against umoci repack.
        subprocess.run(
            [LD, "run", "--name", "c1000", image, "--", "sh", "-c", CHANGE_1000], check=True
        )
        n = 0

        def ours_commit() -> tuple[float, float]:
            nonlocal n
            n += 1
            t0 = time.perf_counter()
            subprocess.run(
                [LD, "commit", "--progress", "none", "c1000", f"oci:{layout}:c{n}"],
                check=True,
                stdout=subprocess.DEVNULL,
            )
            return time.perf_counter() - t0, 0.0

        ours_c, _ = median_of(runs, ours_commit)
        if shutil.which("umoci"):
            bundle = work / "bundle-repack"
            runc_bundle(layout, bundle, FIRST)
            subprocess.run(["chroot", str(bundle / "rootfs"), "sh", "-c", CHANGE_1000], check=True)
            m = 0

            def umoci_repack() -> tuple[float, float]:
                nonlocal m
                m += 1
                t0 = time.perf_counter()
                subprocess.run(
                    [
                        "umoci",
                        "repack",
                        "--refresh-bundle",
                        "--image",
                        f"{layout}:u{m}",
                        str(bundle),
                    ],
                    check=True,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                return time.perf_counter() - t0, 0.0

            peer_c, _ = median_of(runs, umoci_repack)
            rows.append(("commit container, 1,000 changed files", ours_c, peer_c, "umoci repack"))
        else:
            print(f"no umoci: commit of 1,000 changed files {ours_c:.3f}s")
    report(rows)


if __name__ == "__main__":
    main()
