"""Apply, unpack and squash speed against peers, on the Debian rootfs, side by side in one run.

- apply of its gzip layer onto tmpfs vs ``pigz -dc | tar -x`` (target >= 1.5x);
- ``layerdiff unpack`` vs ``umoci unpack`` of the same image (target >= 5x);
- squash of a 3-layer image vs unpack + commit of the result (target >= 3x).

    python benches/bench_apply.py [--runs N]
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import tempfile
from pathlib import Path

from common import WORK, debian_rootfs, layerdiff_cmd, report, timed, timed_call, warm

import layerdiff

LD = layerdiff_cmd()


def three_layer_image(rootfs: Path, layout: Path) -> str:
    """The rootfs split into three layers: /usr, then /var and /etc, then the rest."""
    stages = WORK / "stages"
    shutil.rmtree(stages, ignore_errors=True)
    stages.mkdir(parents=True)
    s1, s2, s3 = stages / "s1", stages / "s2", stages / "s3"
    s1.mkdir()
    subprocess.run(["cp", "-a", str(rootfs / "usr"), str(s1 / "usr")], check=True)
    subprocess.run(["cp", "-a", str(s1), str(s2)], check=True)
    for d in ("var", "etc"):
        subprocess.run(["cp", "-a", str(rootfs / d), str(s2 / d)], check=True)
    subprocess.run(["cp", "-a", str(rootfs), str(s3)], check=True)
    layerdiff.commit(s1, image=f"oci:{layout}:1")
    layerdiff.commit(s2, image=f"oci:{layout}:2", lower=s1, base=f"oci:{layout}:1")
    layerdiff.commit(s3, image=f"oci:{layout}:3", lower=s2, base=f"oci:{layout}:2")
    return f"oci:{layout}:3"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    runs = args.runs

    rootfs = debian_rootfs()
    warm(rootfs)
    layout = WORK / "apply-layout"
    shutil.rmtree(layout, ignore_errors=True)
    layerdiff.commit(rootfs, image=f"oci:{layout}:one")
    blob = layerdiff.inspect(f"oci:{layout}:one")["manifest"]["layers"][0]["digest"]
    blob_path = layout / "blobs" / "sha256" / blob.removeprefix("sha256:")
    tmpfs = Path(tempfile.mkdtemp(dir="/dev/shm", prefix="layerdiff-bench-"))
    target = tmpfs / "t"

    def clean() -> None:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir()

    rows = []
    ours = timed([LD, "apply", "--to", str(target), str(blob_path)], runs=runs, setup=clean)
    peer = timed(
        f"pigz -dc {blob_path} | tar -x --numeric-owner -C {target}", runs=runs, setup=clean
    )
    rows.append(
        (
            "apply gzip layer (tmpfs) vs pigz -dc|tar -x",
            ours.seconds,
            peer.seconds,
            "target >= 1.5x",
        )
    )
    api = timed_call(lambda: layerdiff.apply(target, [blob_path]), runs=runs, setup=clean)
    rows.append(("  same, API in-process", api, peer.seconds, ""))

    def clean_unpack() -> None:
        shutil.rmtree(target, ignore_errors=True)

    ours = timed([LD, "unpack", f"oci:{layout}:one", str(target)], runs=runs, setup=clean_unpack)
    if shutil.which("umoci"):
        peer = timed(
            ["umoci", "unpack", "--image", f"{layout}:one", str(target)],
            runs=runs,
            setup=clean_unpack,
        )
        rows.append(("unpack vs umoci unpack (tmpfs)", ours.seconds, peer.seconds, "target >= 5x"))
        api = timed_call(
            lambda: layerdiff.unpack(f"oci:{layout}:one", target), runs=runs, setup=clean_unpack
        )
        rows.append(("  same, API in-process", api, peer.seconds, ""))

    layout3 = WORK / "squash-layout"
    shutil.rmtree(layout3, ignore_errors=True)
    top = three_layer_image(rootfs, layout3)
    # The layers were made by commit, which left their layer indexes in the store home.
    ours = timed([LD, "squash", top, f"oci:{layout3}:squashed"], runs=runs)
    # Layers nobody indexed (pulled, say): every run starts from an empty store home.
    cold_home = tmpfs / "cold-home"
    cold = timed(
        f"LAYERDIFF_HOME={cold_home} {LD} squash {top} oci:{layout3}:cold",
        runs=runs,
        setup=lambda: shutil.rmtree(cold_home, ignore_errors=True),
    )
    unpacked = tmpfs / "u"

    def unpack_then_commit() -> None:
        shutil.rmtree(unpacked, ignore_errors=True)
        subprocess.run([LD, "unpack", top, str(unpacked)], check=True)
        subprocess.run(
            [
                LD,
                "commit",
                "--progress",
                "none",
                "--upper",
                str(unpacked),
                f"oci:{layout3}:recommitted",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )

    import time

    times = []
    for _ in range(runs):
        start = time.perf_counter()
        unpack_then_commit()
        times.append(time.perf_counter() - start)
    times.sort()
    peer_s = times[len(times) // 2]
    rows.append(("squash 3 layers vs unpack + commit", ours.seconds, peer_s, "target >= 3x"))
    rows.append(("  same, layers not indexed yet", cold.seconds, peer_s, ""))
    api = timed_call(lambda: layerdiff.squash(top, f"oci:{layout3}:squashed"), runs=runs)
    rows.append(("  same, API in-process", api, peer_s, ""))
    report(rows)
    shutil.rmtree(tmpfs, ignore_errors=True)


if __name__ == "__main__":
    main()
