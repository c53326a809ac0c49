"""Image config and manifest building: history invariant, timestamps, deterministic JSON."""

from __future__ import annotations

import hashlib
import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from layerdiff.errors import FormatError, InvalidArgumentError
from layerdiff.image import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    add_layer,
    build_manifest,
    canonical_json,
    check_history,
    go_arch,
    new_config,
    oci_layer_media_type,
    rfc3339,
    source_date_epoch,
)
from layerdiff.layercache import chain_ids
from layerdiff.platforms import candidates

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64


@pytest.mark.parametrize(
    ("machine", "arch", "variant"),
    [
        ("x86_64", "amd64", None),
        ("aarch64", "arm64", "v8"),
        ("armv7l", "arm", "v7"),
        ("i686", "386", None),
        ("ppc64le", "ppc64le", None),
        ("s390x", "s390x", None),
        ("riscv64", "riscv64", None),
    ],
)
def test_go_arch(machine: str, arch: str, variant: str | None) -> None:
    assert go_arch(machine) == (arch, variant)


def test_new_config_shape() -> None:
    config = new_config(created="2024-01-01T00:00:00Z", machine="x86_64")
    assert config == {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
        "created": "2024-01-01T00:00:00Z",
    }
    assert new_config(machine="armv7l")["variant"] == "v7"
    # arm64's v8 is the default, left out as docker leaves it out.
    assert "variant" not in new_config(machine="aarch64")


def test_chain_ids_are_the_oci_ones() -> None:
    """The layer cache's keys are OCI chain IDs, as containerd names its snapshots."""
    a, b, c = (f"sha256:{x * 64}" for x in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert chain_ids([a, b, c]) == [a, ab, abc]


def test_of_two_entries_for_one_platform_the_first_is_taken() -> None:
    """As docker and containerd pick from an index: the first entry of the best platform."""
    entry = {"os": "linux", "architecture": "arm64"}
    index = {"manifests": [{"digest": f"sha256:{x * 64}", "platform": entry} for x in "12"]}
    assert [m["digest"] for m in candidates(index, "linux/arm64", "x")] == [f"sha256:{'1' * 64}"]


def test_rfc3339(monkeypatch: pytest.MonkeyPatch) -> None:
    assert rfc3339(0) == "1970-01-01T00:00:00Z"
    assert rfc3339(1700000000) == "2023-11-14T22:13:20Z"
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "86400")
    assert rfc3339() == "1970-01-02T00:00:00Z"
    assert source_date_epoch() == 86400
    assert source_date_epoch(5) == 5  # an explicit value wins
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "")
    assert source_date_epoch() is None
    for bad in ("yesterday", "1.5", "-5", "١٢", "253402300800", "9" * 20):
        monkeypatch.setenv("SOURCE_DATE_EPOCH", bad)
        with pytest.raises(InvalidArgumentError, match=f"SOURCE_DATE_EPOCH='{bad}'"):
            source_date_epoch()
    # The last second an RFC 3339 time can hold.
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "253402300799")
    assert rfc3339() == "9999-12-31T23:59:59Z"
    for value in (-1, 253402300800):
        with pytest.raises(InvalidArgumentError, match=f"source_date_epoch={value}"):
            source_date_epoch(value)


def test_now_when_no_epoch() -> None:
    stamp = rfc3339()
    assert stamp.endswith("Z") and len(stamp) == len("2024-01-01T00:00:00Z")


def test_add_layer_and_empty_layer() -> None:
    config = new_config(created="t0")
    config = add_layer(config, diff_id=D1, created="t1", created_by="one", comment="c", author="me")
    config = add_layer(config, diff_id=None, created="t2", created_by="ENV only")
    config = add_layer(config, diff_id=D2, created="t3", created_by="two")
    assert config["rootfs"]["diff_ids"] == [D1, D2]
    assert config["history"] == [
        {"created": "t1", "created_by": "one", "comment": "c", "author": "me"},
        {"created": "t2", "created_by": "ENV only", "empty_layer": True},
        {"created": "t3", "created_by": "two"},
    ]
    assert config["created"] == "t3"
    assert "author" not in config  # the last commit gave none, as docker commit
    check_history(config)


def test_add_layer_does_not_touch_input() -> None:
    config = new_config(created="t0")
    before = canonical_json(config)
    add_layer(config, diff_id=D1, created="t1", created_by="x")
    assert canonical_json(config) == before


@pytest.mark.parametrize("history", [{}, {"history": []}])
def test_base_without_history_gets_placeholders(history: dict[str, object]) -> None:
    # An empty history is the same as none: Go's JSON encoding leaves an empty one out.
    base = {"rootfs": {"type": "layers", "diff_ids": [D1]}, "config": {}, **history}
    check_history(base)
    out = add_layer(base, diff_id=D2, created="t", created_by="x")
    assert out["history"] == [
        {"created_by": "(history not recorded)"},
        {"created": "t", "created_by": "x"},
    ]
    check_history(out)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            {"rootfs": {"type": "layers", "diff_ids": [D1]}, "history": [{"empty_layer": True}]},
            "0 history entries",
        ),
        (
            {"rootfs": {"type": "layers", "diff_ids": []}, "history": [{"created_by": "x"}]},
            "1 history entries",
        ),
        ({"rootfs": {"type": "nope", "diff_ids": []}}, "rootfs.type"),
        ({"rootfs": {"type": "layers"}}, "diff_ids must be a list"),
        ({"rootfs": {"type": "layers", "diff_ids": []}, "history": "x"}, "history must be"),
    ],
)
def test_check_history_rejects(config: dict[str, object], message: str) -> None:
    with pytest.raises(FormatError, match=message):
        check_history(config)


def test_add_layer_refuses_inconsistent_base() -> None:
    bad = {"rootfs": {"type": "layers", "diff_ids": [D1]}, "history": [{"empty_layer": True}]}
    with pytest.raises(FormatError):
        add_layer(bad, diff_id=D2, created="t", created_by="x")


def test_manifest() -> None:
    config = {"mediaType": "whatever", "digest": D1, "size": 10}
    layers = [
        {"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "digest": D2, "size": 5},
        {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D1, "size": 7},
    ]
    manifest = build_manifest(config=config, layers=layers)
    assert manifest == {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": {"mediaType": CONFIG_MEDIA_TYPE, "digest": D1, "size": 10},
        "layers": [
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": D2, "size": 5},
            {"mediaType": "application/vnd.oci.image.layer.v1.tar+zstd", "digest": D1, "size": 7},
        ],
    }


def test_docker_media_types_map_to_oci() -> None:
    assert oci_layer_media_type("application/vnd.docker.image.rootfs.diff.tar") == (
        "application/vnd.oci.image.layer.v1.tar"
    )
    assert oci_layer_media_type("application/x-custom") == "application/x-custom"


def test_canonical_json_is_compact_sorted_utf8() -> None:
    assert canonical_json({"b": 1, "a": [1, {"d": "é", "c": None}]}) == (
        '{"a":[1,{"c":null,"d":"é"}],"b":1}'.encode()
    )


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda children: (
        st.lists(children, max_size=3) | st.dictionaries(st.text(max_size=5), children, max_size=3)
    ),
    max_leaves=10,
)


@given(st.dictionaries(st.text(max_size=5), json_values, max_size=5))
def test_canonical_json_is_independent_of_insertion_order(obj: dict[str, object]) -> None:
    shuffled = dict(reversed(list(obj.items())))
    assert canonical_json(obj) == canonical_json(shuffled)
    assert json.loads(canonical_json(obj)) == obj


def test_same_input_same_manifest_digest(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SOURCE_DATE_EPOCH", "1700000000")

    def build() -> str:
        config = add_layer(new_config(), diff_id=D1, created=rfc3339(), created_by="x")
        blob = canonical_json(config)
        desc = {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": "sha256:" + hashlib.sha256(blob).hexdigest(),
            "size": len(blob),
        }
        manifest = build_manifest(config=desc, layers=[{"mediaType": "m", "digest": D1, "size": 1}])
        return hashlib.sha256(canonical_json(manifest)).hexdigest()

    assert build() == build()
