"""Helpers for container tests: a static busybox root filesystem and image."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

BUSYBOX = Path("/bin/busybox")


def busybox_rootfs(root: Path) -> Path:
    """A minimal root filesystem: static busybox with every applet linked in /bin, a passwd and
    group with root and nobody, /root and a sticky /tmp."""
    if not BUSYBOX.is_file():
        raise RuntimeError("these tests need Debian's busybox-static (/bin/busybox)")
    for d in ("bin", "etc", "root", "tmp", "var"):
        (root / d).mkdir(parents=True, exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    applets = subprocess.run(
        [str(BUSYBOX), "--list"], capture_output=True, text=True, check=True
    ).stdout.split()
    for applet in applets:
        if applet != "busybox":
            os.symlink("busybox", root / "bin" / applet)
    (root / "etc" / "passwd").write_text(
        "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"
    )
    (root / "etc" / "group").write_text("root:x:0:\nnogroup:x:65534:\n")
    os.chmod(root / "tmp", 0o1777)
    return root
