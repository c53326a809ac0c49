"""Properties of apply and squash over random trees and random changes.

- apply(lower, layer(lower, upper)) == upper, with our own applier;
- squash(L1..Ln), applied, gives the same tree as applying L1..Ln in order — for squashing all
  layers and for squashing the top ones on a kept base;
- the squashed layer is deterministic: the same image squashed twice gives the same digest.

Trees come from the same generators as the round-trip property (tests/test_roundtrip_property).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import layerdiff
from tests.test_roundtrip_property import (
    Clock,
    apply_op,
    build_ops,
    change_ops,
    copy_tree,
    existing_paths,
)
from tests.treecmp import assert_same_tree

SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)


def _change(tree: Path, data: st.DataObject, n: int, clock: Clock) -> None:
    for _ in range(n):
        apply_op(tree, data.draw(change_ops(existing_paths(tree)), label="change"), clock)


@SETTINGS
@given(
    build=st.lists(build_ops, min_size=4, max_size=25),
    data=st.data(),
    n_changes=st.integers(1, 15),
    compression=st.sampled_from(["none", "gzip", "zstd"]),
)
def test_our_apply_of_the_diff_layer_gives_upper(
    build: list[tuple[Any, ...]], data: st.DataObject, n_changes: int, compression: str
) -> None:
    with tempfile.TemporaryDirectory(prefix="layerdiff-prop-") as tmp:
        base = Path(tmp)
        lower, upper = base / "lower", base / "upper"
        lower.mkdir()
        for op in build:
            apply_op(lower, op, Clock(1_600_000_000_000_000_000))
        copy_tree(lower, upper)
        _change(upper, data, n_changes, Clock(1_700_000_000_000_000_000))
        info = layerdiff.write_layer(
            upper, dest=base / "blobs", lower=lower, compression=compression
        )
        applied = base / "applied"
        copy_tree(lower, applied)
        layerdiff.apply(applied, [info.path])
        assert_same_tree(upper, applied)


@SETTINGS
@given(
    build=st.lists(build_ops, min_size=4, max_size=20),
    data=st.data(),
    steps=st.lists(st.integers(1, 10), min_size=2, max_size=4),
)
def test_squash_applies_like_the_layers_in_order(
    build: list[tuple[Any, ...]], data: st.DataObject, steps: list[int]
) -> None:
    with tempfile.TemporaryDirectory(prefix="layerdiff-prop-") as tmp:
        base = Path(tmp)
        layout = base / "layout"
        tree = base / "t0"
        tree.mkdir()
        clock = Clock(1_600_000_000_000_000_000)
        for op in build:
            apply_op(tree, op, clock)
        layerdiff.commit(tree, image=f"oci:{layout}:0", compression="none")
        for i, n in enumerate(steps, start=1):
            nxt = base / f"t{i}"
            copy_tree(tree, nxt)
            _change(nxt, data, n, clock)
            layerdiff.commit(
                nxt, image=f"oci:{layout}:{i}", lower=tree, base=f"oci:{layout}:{i - 1}"
            )
            tree = nxt
        top = f"oci:{layout}:{len(steps)}"

        sequential = base / "sequential"
        layerdiff.unpack(top, sequential)
        assert_same_tree(tree, sequential)

        keep = data.draw(st.integers(0, len(steps)), label="layers kept below the squash")
        squashed = layerdiff.squash(
            top, f"oci:{layout}:squashed", layers=len(steps) + 1 - keep, compression="gzip"
        )
        out = base / "squashed"
        layerdiff.unpack(f"oci:{layout}:squashed", out)
        assert_same_tree(sequential, out)

        # The second squash reads the layer indexes the first one wrote.
        again = layerdiff.squash(
            top, f"oci:{layout}:again", layers=len(steps) + 1 - keep, compression="gzip"
        )
        assert again.layer.digest == squashed.layer.digest
