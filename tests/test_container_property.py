"""Property: committing a container records exactly what its command changed.

Random shell scripts (write, append, delete, mkdir, chmod, symlink, hardlink, rename) run in a
container; the container is committed and the new image unpacked. The oracle is the same
script run by the same busybox in a plain ``chroot`` on a copy of the image's tree: real file
system semantics, no overlay involved. Both trees must be equal.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerdiff
from layerdiff import runtime
from tests.containers import busybox_rootfs
from tests.treecmp import assert_same_tree

pytestmark = pytest.mark.root

NAMES = ["a", "b", "c", "a/b", "a/c", "b/a", "c/c/c"]
paths = st.sampled_from(NAMES).map(lambda p: f"/data/{p}")
contents = st.sampled_from(["x", "hello", "a longer line of text", ""])

ops = st.one_of(
    st.builds(lambda p: f"mkdir -p {p}", paths),
    st.builds(lambda p, c: f"echo '{c}' > {p}", paths, contents),
    st.builds(lambda p, c: f"echo '{c}' >> {p}", paths, contents),
    st.builds(lambda p: f"rm -rf {p}", paths),
    st.builds(
        lambda p, m: f"chmod {m:o} {p}", paths, st.sampled_from([0o600, 0o755, 0o4755, 0o1777])
    ),
    st.builds(lambda p, t: f"ln -sfn {t} {p}", paths, st.sampled_from(["a", "/data/b", "../x"])),
    st.builds(lambda p, q: f"ln {p} {q}", paths, paths),
    st.builds(lambda p, q: f"test -d {p} || mv {p} {q}", paths, paths),
    st.builds(lambda p: f"touch {p}", paths),
)


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    """A busybox image with a small /data tree, and that tree unpacked."""
    work = tmp_path_factory.mktemp("prop")
    root = busybox_rootfs(work / "rootfs")
    for rel, text in [("a/x", "1"), ("a/b/y", "2"), ("b", "3"), ("c/c/c", "4")]:
        path = root / "data" / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    ref = f"oci:{work / 'layout'}:1"
    layerdiff.commit(root, image=ref)
    return ref, root


# Directories are never renamed: without redirect_dir, overlayfs answers EXDEV and mv copies
# the tree instead, which differs from a rename in ways a layer cannot show (inode identity).
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(script=st.lists(ops, min_size=1, max_size=12))
def test_commit_holds_exactly_the_changes(
    script: list[str], base: tuple[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> None:
    image, tree = base
    text = "; ".join(script) + "; true"  # a failing step (rm of nothing) is fine
    work = tmp_path_factory.mktemp("case")

    expected = work / "expected"
    shutil.copytree(tree, expected, symlinks=True)
    subprocess.run(
        ["chroot", str(expected), "/bin/sh", "-c", text], check=True, capture_output=True
    )

    result = runtime.run(image, ["sh", "-c", text], name=str(work / "c"))
    assert result.exit_code == 0, result.error
    committed = runtime.commit_container(str(work / "c"), f"oci:{work / 'out'}:1")
    got = work / "got"
    layerdiff.unpack(committed.image, got)
    assert_same_tree(expected, got, mtimes=False)
    runtime.remove(str(work / "c"))
    shutil.rmtree(work)
