"""Commit speed: `layerdiff commit --upper ROOTFS` against tar|openssl, tar|pigz, tar|zstd and
umoci repack, on a real Debian rootfs, side by side in one run.

    python benches/bench_commit.py [--runs N] [--skip-memory]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
from pathlib import Path

from common import (
    WORK,
    debian_rootfs,
    layerdiff_cmd,
    peak_rss_mb,
    report,
    start_up_ms,
    timed,
    timed_call,
    warm,
)

import layerdiff

LD = layerdiff_cmd()


def api(rootfs: Path, compression: str, runs: int) -> float:
    """The same commit through the Python API, in this process (no interpreter start-up)."""
    target = WORK / f"api-{compression}"
    return timed_call(
        lambda: layerdiff.commit(rootfs, image=f"oci:{target}:bench", compression=compression),
        runs=runs,
        setup=lambda: shutil.rmtree(target, ignore_errors=True),
    )


def layout(name: str) -> Path:
    path = WORK / name
    shutil.rmtree(path, ignore_errors=True)
    return path


def umoci_bundle(rootfs: Path) -> tuple[Path, Path]:
    """An umoci layout with an empty image and a bundle whose rootfs is a copy of `rootfs`."""
    oci = layout("umoci-layout")
    bundle = WORK / "umoci-bundle"
    shutil.rmtree(bundle, ignore_errors=True)
    subprocess.run(["umoci", "init", "--layout", str(oci)], check=True)
    subprocess.run(["umoci", "new", "--image", f"{oci}:base"], check=True)
    subprocess.run(
        ["umoci", "unpack", "--image", f"{oci}:base", str(bundle)],
        check=True,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["cp", "-a", f"{rootfs}/.", str(bundle / "rootfs")], check=True)
    return oci, bundle


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--skip-memory", action="store_true")
    args = parser.parse_args()
    runs = args.runs

    rootfs = debian_rootfs()
    warm(rootfs)
    out = WORK / "out"
    out.mkdir(parents=True, exist_ok=True)
    env_note = f"rootfs {rootfs} on {os.cpu_count()} cores"
    print(env_note)
    # The command line's fixed cost, which the in-process rows below leave out.
    print(
        f"start-up: python -c pass {start_up_ms([sys.executable, '-c', 'pass']):.0f} ms, "
        f"python -S -c pass {start_up_ms([sys.executable, '-S', '-c', 'pass']):.0f} ms, "
        f"layerdiff --version {start_up_ms([LD, '--version']):.0f} ms"
    )

    def ours(compression: str) -> float:
        target = layout(f"ours-{compression}")
        cmd = [
            LD,
            "commit",
            "--compression",
            compression,
            "--upper",
            str(rootfs),
            f"oci:{target}:bench",
        ]
        return timed(
            cmd, runs=runs, setup=lambda: shutil.rmtree(target, ignore_errors=True)
        ).seconds

    def blob_size(compression: str) -> int:
        target = WORK / f"ours-{compression}"
        out_json = subprocess.run(
            [
                LD,
                "commit",
                "--json",
                "--compression",
                compression,
                "--upper",
                str(rootfs),
                f"oci:{target}:size",
            ],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        import json

        return int(json.loads(out_json)["size"])

    tar = f"tar -C {rootfs} --numeric-owner -cf - ."
    rows = []
    t_none = ours("none")
    t_sha = timed(f"{tar} | openssl dgst -sha256", runs=runs).seconds
    rows.append(("commit --compression none vs tar|openssl", t_none, t_sha, "target >= 1.5x"))
    rows.append(("  same, API in-process", api(rootfs, "none", runs), t_sha, ""))

    t_gzip = ours("gzip")
    t_pigz = timed(f"{tar} | pigz -p2 -6 > {out}/pigz.tar.gz", runs=runs).seconds
    ours_gz = blob_size("gzip")
    pigz_gz = (out / "pigz.tar.gz").stat().st_size
    rows.append(
        (
            "commit --compression gzip vs tar|pigz -p2 -6",
            t_gzip,
            t_pigz,
            f"target >= 2x; size {ours_gz / pigz_gz:.3f} of pigz (target <= 1.03)",
        )
    )
    t_gzip_api = api(rootfs, "gzip", runs)
    rows.append(("  same, API in-process", t_gzip_api, t_pigz, ""))

    t_zstd = ours("zstd")
    t_zstd_peer = timed(f"{tar} | zstd -q -T0 -3 > {out}/peer.tar.zst", runs=runs).seconds
    ours_zst = blob_size("zstd")
    peer_zst = (out / "peer.tar.zst").stat().st_size
    rows.append(
        (
            "commit --compression zstd vs tar|zstd -T0 -3",
            t_zstd,
            t_zstd_peer,
            f"target >= 1.2x; size {ours_zst / peer_zst:.3f} of zstd",
        )
    )
    rows.append(("  same, API in-process", api(rootfs, "zstd", runs), t_zstd_peer, ""))

    if shutil.which("umoci"):
        oci, bundle = umoci_bundle(rootfs)
        warm(bundle / "rootfs")
        t_umoci = timed(
            ["umoci", "repack", "--image", f"{oci}:bench", str(bundle)], runs=runs
        ).seconds
        rows.append(("commit (gzip) vs umoci repack (gzip)", t_gzip, t_umoci, "target >= 2.5x"))
        rows.append(("  same, API in-process", t_gzip_api, t_umoci, ""))
    report(rows)

    if not args.skip_memory:
        big = WORK / "bigfile-tree"
        if not (big / "big.bin").exists():
            big.mkdir(parents=True, exist_ok=True)
            # 2 GiB of poorly compressible data, written once.
            subprocess.run(f"head -c 2G /dev/urandom > {big}/big.bin", shell=True, check=True)
        target = layout("ours-big")
        rss = peak_rss_mb([LD, "commit", "--upper", str(big), f"oci:{target}:big"])
        print(f"peak RSS committing a 2 GiB file (gzip): {rss:.0f} MB (target <= 100 MB)")


if __name__ == "__main__":
    main()
