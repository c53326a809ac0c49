"""Registry speed: push and pull of the Debian rootfs image against `skopeo copy` between the same
layout and a local registry (the Debian docker-registry), and commit straight to the registry
against commit-then-push, side by side in one run.

    python benches/bench_registry.py [--runs N]

Every run pushes to a new repository, so each blob is uploaded (not found or mounted); the
remembered blob sources (ours) and skopeo's blob-info cache are cleared before each run.
"""

from __future__ import annotations

import argparse
import itertools
import shutil
import sys
from pathlib import Path

from common import WORK, debian_rootfs, layerdiff_cmd, report, timed, warm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.registry_server import running_registry

LD = layerdiff_cmd()
_SKOPEO_CACHES = [
    Path("/var/lib/containers/cache/blob-info-cache-v1.boltdb"),
    Path.home() / ".local/share/containers/cache/blob-info-cache-v1.boltdb",
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    runs = parser.parse_args().runs
    rootfs = debian_rootfs()
    warm(rootfs)
    src = WORK / "registry-src"
    shutil.rmtree(src, ignore_errors=True)
    timed([LD, "commit", "--upper", str(rootfs), f"oci:{src}:1"], runs=1)
    counter = itertools.count()
    repo = ""

    def fresh(*remove: Path) -> None:
        nonlocal repo
        repo = f"r{next(counter)}"
        (src / ".layerdiff.sources.json").unlink(missing_ok=True)
        for path in [*_SKOPEO_CACHES, *remove]:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink(missing_ok=True)

    with running_registry(WORK / "registry-bench") as reg:
        shutil.rmtree(reg.storage, ignore_errors=True)
        rows = []
        ours = timed(
            f"{LD} push --tls-verify=false --progress=none oci:{src}:1 "
            f"docker://{reg.host}/$(cat {WORK}/repo):1",
            runs=runs,
            setup=lambda: (fresh(), (WORK / "repo").write_text(repo)),
        )
        peer = timed(
            f"skopeo copy -q --dest-tls-verify=false oci:{src}:1 "
            f"docker://{reg.host}/$(cat {WORK}/repo):1",
            runs=runs,
            setup=lambda: (fresh(), (WORK / "repo").write_text(repo)),
        )
        rows.append(("push Debian image (gzip)", ours.seconds, peer.seconds, "vs skopeo copy"))

        timed(
            f"{LD} push --tls-verify=false --progress=none oci:{src}:1 docker://{reg.host}/pull:1"
        )
        dst = WORK / "registry-dst"
        ours = timed(
            f"{LD} pull --tls-verify=false --progress=none docker://{reg.host}/pull:1 oci:{dst}:1",
            runs=runs,
            setup=lambda: fresh(dst),
        )
        peer = timed(
            f"skopeo copy -q --src-tls-verify=false docker://{reg.host}/pull:1 oci:{dst}:1",
            runs=runs,
            setup=lambda: fresh(dst),
        )
        rows.append(("pull Debian image (gzip)", ours.seconds, peer.seconds, "vs skopeo copy"))

        tmp = WORK / "registry-commit"
        ours = timed(
            f"{LD} commit --progress=none --tls-verify=false --upper {rootfs} "
            f"docker://{reg.host}/$(cat {WORK}/repo):1",
            runs=runs,
            setup=lambda: (fresh(), (WORK / "repo").write_text(repo)),
        )
        peer = timed(
            f"{LD} commit --progress=none --upper {rootfs} oci:{tmp}:1 && "
            f"{LD} push --tls-verify=false --progress=none oci:{tmp}:1 "
            f"docker://{reg.host}/$(cat {WORK}/repo):1",
            runs=runs,
            setup=lambda: (fresh(tmp), (WORK / "repo").write_text(repo)),
        )
        rows.append(("commit to registry", ours.seconds, peer.seconds, "vs commit, then push"))
    report(rows)


if __name__ == "__main__":
    main()
