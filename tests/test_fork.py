"""The API in a child forked after the parent has used it: Python's multiprocessing forks by
default on Linux, so a pool of workers made after a first call must work as the parent does."""

from __future__ import annotations

import multiprocessing
import shutil
from pathlib import Path

import layerdiff


def _work(args: tuple[str, str, str]) -> tuple[list[str], str]:
    lower, upper, layout = args
    changes = [f"{c.kind} {c.path}" for c in layerdiff.diff(lower, upper)]
    info = layerdiff.commit(upper, image=f"oci:{layout}:v1", threads=2)
    return changes, info.layer.digest


def test_a_forked_child_calls_the_core_as_its_parent_does(tmp_path: Path) -> None:
    lower, upper = tmp_path / "lower", tmp_path / "upper"
    (lower / "d").mkdir(parents=True)
    (lower / "d" / "f").write_text("same")
    shutil.copytree(lower, upper)  # times kept: only the new file differs
    (upper / "new").write_text("new")
    # The parent's own calls first: they start the core's threads in this process.
    want = _work((str(lower), str(upper), str(tmp_path / "parent")))
    jobs = [(str(lower), str(upper), str(tmp_path / f"child{i}")) for i in range(2)]
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map_async(_work, jobs).get(timeout=60)
    assert got == [want, want]
    assert want[0] == ["A /new"]
