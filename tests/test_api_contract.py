"""The Python API's contract: every error derives from LayerdiffError, bad arguments are
InvalidArgumentError (also a ValueError) before anything is done, and the public names carry
type hints that resolve at run time."""

from __future__ import annotations

import errno
import typing
from pathlib import Path
from typing import Any, cast

import pytest

import layerdiff


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "tree"
    (root / "etc").mkdir(parents=True)
    (root / "etc" / "hosts").write_text("127.0.0.1 localhost\n")
    (root / "etc" / "hostname").write_text("box\n")
    return root


def test_system_call_failures_are_layerdiff_os_errors_with_errno_and_filename(
    tree: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("x")
    cases: list[tuple[Any, int, str]] = [
        (lambda: layerdiff.write_layer(tree, dest=a_file), errno.EEXIST, str(a_file)),
        (
            lambda: layerdiff.commit(tree, image=f"oci:{a_file}/sub:v1"),
            errno.ENOTDIR,
            f"{a_file}/sub",
        ),
    ]
    layerdiff.commit(tree, image=f"oci:{tmp_path}/l:v1")
    cases.append(
        (
            lambda: layerdiff.unpack(f"oci:{tmp_path}/l:v1", a_file / "x"),
            errno.ENOTDIR,
            str(a_file / "x"),
        )
    )
    for call, code, filename in cases:
        with pytest.raises(layerdiff.LayerdiffOSError) as info:
            call()
        assert isinstance(info.value, OSError)
        assert info.value.errno == code, info.value
        assert str(info.value.filename) == filename


def test_a_lone_string_is_refused_where_a_list_is_expected(tree: Path, tmp_path: Path) -> None:
    """A str is a sequence of characters: exclude="etc/hosts" would exclude "e", "t", "c"…"""
    calls: dict[str, Any] = {
        "exclude": lambda: layerdiff.write_layer(tree, dest=tmp_path / "b", exclude="etc/hosts"),
        "lowers": lambda: layerdiff.diff_overlay(tree, lowers=str(tmp_path)),
        "changes": lambda: layerdiff.commit(tree, image=f"oci:{tmp_path}/l", changes="ENV A=b"),
        "command": lambda: layerdiff.create("no-such-image", command="echo hi"),
    }
    for name, call in calls.items():
        with pytest.raises(layerdiff.InvalidArgumentError, match=f"^{name}="):
            call()
    assert not (tmp_path / "b").exists() and not (tmp_path / "l").exists()
    # A list works, and excludes what it names.
    info = layerdiff.write_layer(tree, dest=tmp_path / "b", exclude=["etc/hosts"])
    assert info.size > 0


def test_numbers_out_of_range_and_wrong_types_are_invalid_arguments(
    tree: Path, tmp_path: Path
) -> None:
    layerdiff.commit(tree, image=f"oci:{tmp_path}/l:v1")
    image = f"oci:{tmp_path}/l:v1"
    calls: list[tuple[str, Any]] = [
        ("max_size=-1", lambda: layerdiff.unpack(image, tmp_path / "o", max_size=-1)),
        (
            "max_size=1180591620717411303424",
            lambda: layerdiff.apply(tmp_path / "o", [], max_size=2**70),
        ),
        ("root_ids uid", lambda: layerdiff.write_layer(tree, dest=tmp_path, root_ids=(-1, 0))),
        ("layers=0", lambda: layerdiff.squash(image, f"oci:{tmp_path}/l:s", layers=0)),
        ("layers=5", lambda: layerdiff.squash(image, f"oci:{tmp_path}/l:s", layers=5)),
        ("image=None", lambda: layerdiff.commit(tree, image=cast(Any, None))),
        ("base=5", lambda: layerdiff.commit(tree, image=image, base=cast(Any, 5))),
        ("container='c'", lambda: layerdiff.start(cast(Any, "c"))),
        ("image=None", lambda: layerdiff.inspect(cast(Any, None))),
        ("image=7", lambda: layerdiff.history(cast(Any, 7))),
        ("dest=''", lambda: layerdiff.write_layer(tree, dest="")),
    ]
    for what, call in calls:
        with pytest.raises(layerdiff.InvalidArgumentError) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert str(info.value).startswith(what), (what, info.value)
    assert not (tmp_path / "o").exists()


def test_public_type_hints_resolve_at_run_time() -> None:
    """For tools that read annotations (pydantic, typeguard…): no name left to TYPE_CHECKING."""
    for name in layerdiff.__all__:
        value = getattr(layerdiff, name)
        if callable(value):
            typing.get_type_hints(value)


def test_commit_refuses_what_an_image_config_cannot_hold_before_writing(
    tree: Path, tmp_path: Path
) -> None:
    """Text JSON in UTF-8 cannot hold (a lone surrogate, from bytes decoded with
    surrogateescape) and values of the wrong type would make an invalid config: refused before
    the layer is written, not after."""
    image = f"oci:{tmp_path}/l:v1"
    calls: list[tuple[str, dict[str, Any]]] = [
        ("message=", {"message": "caf\udce9"}),
        ("message=5", {"message": 5}),
        ("author=['x']", {"author": ["x"]}),
        ("author=", {"author": "\udcff"}),
        ("created_by=None", {"created_by": None}),
        ("created_by=", {"created_by": "a\udcffb"}),
        ("changes[1]=", {"changes": ["ENV A=b", "ENV A=\udcff"]}),
        ("changes[0]=5", {"changes": [5]}),
        ("run_config=[1]", {"run_config": [1]}),
        ("run_config: Env must be a list of strings", {"run_config": {"Env": "notalist"}}),
        ("run_config: Cmd must be a list of strings", {"run_config": {"Cmd": 7}}),
        ("run_config: Labels must be an object of strings", {"run_config": {"Labels": {"a": 1}}}),
        ("run_config: not JSON", {"run_config": {"Env": {"A"}}}),
        ("run_config: not JSON", {"run_config": {"User": "\udcff"}}),
    ]
    for what, kwargs in calls:
        with pytest.raises(layerdiff.InvalidArgumentError) as info:
            layerdiff.commit(tree, image=image, **kwargs)
        assert str(info.value).startswith(what), (what, info.value)
        assert not (tmp_path / "l").exists(), what
    # None where the config leaves a field out, and JSON's null in run_config, are fine.
    result = layerdiff.commit(
        tree, image=image, message=None, author=None, run_config={"Cmd": None, "Env": ["A=b"]}
    )
    assert layerdiff.inspect(image)["config"]["config"] == {"Cmd": None, "Env": ["A=b"]}
    assert result.image == image


def test_paths_flags_and_numbers_of_the_wrong_kind_are_invalid_arguments(
    tree: Path, tmp_path: Path
) -> None:
    """Each refused before anything is written, naming the parameter, as a LayerdiffError:
    not a TypeError, a plain ValueError or a flag read from a truthy value."""
    image = f"oci:{tmp_path}/l:v1"
    layerdiff.commit(tree, image=image)
    blob = layerdiff.commit(tree, image=image).layer.path
    out = tmp_path / "out"
    calls: list[tuple[str, Any]] = [
        ("upper='tr\\x00ee'", lambda: layerdiff.commit("tr\0ee", image=image)),
        ("lower=", lambda: layerdiff.commit(tree, image=image, lower=f"{tree}\0")),
        ("lowers=", lambda: layerdiff.commit(tree, image=image, overlay=True, lowers=["a\0"])),
        ("root=", lambda: layerdiff.apply(f"{out}\0", [blob])),
        ("layers=", lambda: layerdiff.apply(out, [f"{blob}\0"])),
        ("root=", lambda: layerdiff.unpack(image, f"{out}\0")),
        ("upper=", lambda: layerdiff.diff(tree, f"{tree}\0")),
        ("lower=1", lambda: layerdiff.diff(cast(Any, 1), tree)),
        ("dest=", lambda: layerdiff.write_layer(tree, dest=f"{out}\0")),
        ("threads='2'", lambda: layerdiff.commit(tree, image=image, threads=cast(Any, "2"))),
        ("threads=True", lambda: layerdiff.commit(tree, image=image, threads=True)),
        ("threads=2.0", lambda: layerdiff.write_layer(tree, dest=out, threads=cast(Any, 2.0))),
        (
            "source_date_epoch='5'",
            lambda: layerdiff.commit(tree, image=image, source_date_epoch=cast(Any, "5")),
        ),
        (
            "source_date_epoch=True",
            lambda: layerdiff.write_layer(tree, dest=out, source_date_epoch=True),
        ),
        ("exclude=[1]", lambda: layerdiff.commit(tree, image=image, exclude=cast(Any, [1]))),
        ("exclude=['../x']", lambda: layerdiff.commit(tree, image=image, exclude=["../x"])),
        (
            "exclude=['etc/./hosts']",
            lambda: layerdiff.write_layer(tree, dest=out, exclude=["etc/./hosts"]),
        ),
        ("exclude=['/']", lambda: layerdiff.write_layer(tree, dest=out, exclude=["/"])),
        ("content='yes'", lambda: layerdiff.diff(tree, tree, content=cast(Any, "yes"))),
        ("content=1", lambda: layerdiff.diff_overlay(tree, content=cast(Any, 1))),
        ("overlay='no'", lambda: layerdiff.write_layer(tree, dest=out, overlay=cast(Any, "no"))),
        ("chown='no'", lambda: layerdiff.apply(out, [blob], chown=cast(Any, "no"))),
        ("target=5", lambda: layerdiff.fsck(cast(Any, 5))),
        ("target=5", lambda: layerdiff.gc(cast(Any, 5))),
        ("target=", lambda: layerdiff.gc(f"{out}\0")),
    ]
    for what, call in calls:
        with pytest.raises(layerdiff.InvalidArgumentError) as info:
            call()
        assert isinstance(info.value, ValueError)
        assert str(info.value).startswith(what), (what, info.value)
        assert not out.exists(), what
    with pytest.raises(layerdiff.InvalidReferenceError, match="cannot hold a NUL byte"):
        layerdiff.commit(tree, image=f"oci:{out}\0:v1")
    assert not out.exists()
    # A leading or trailing / is fine in exclude: the path is still inside the tree.
    layer = layerdiff.write_layer(tree, dest=out, exclude=["/etc/hosts", "etc/hostname/"])
    assert layer.size > 0


def test_fsck_and_gc_take_a_layout_as_a_path_object(tree: Path, tmp_path: Path) -> None:
    layerdiff.commit(tree, image=f"oci:{tmp_path}/l:v1")
    report = layerdiff.fsck(tmp_path / "l")
    assert report.ok and report.images == 1
    (tmp_path / "l" / "blobs" / "sha256" / ("0" * 64)).write_text("unreachable")
    assert layerdiff.gc(tmp_path / "l").blobs == 1
    assert layerdiff.fsck(tmp_path / "l").ok


def test_blob_paths_given_back_are_absolute(
    tree: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    paths = [
        layerdiff.write_layer(tree, dest="rel").path,
        layerdiff.commit(tree, image="oci:lay:v1").layer.path,
        layerdiff.commit(tree, image="oci:lay:v2", lower=tree, base="oci:lay:v1").layer.path,
        layerdiff.squash("oci:lay:v2", "oci:lay:v3").layer.path,
    ]
    monkeypatch.chdir("/")
    for path in paths:
        assert path.is_absolute() and path.is_file(), path
    assert paths[0].parent == tmp_path / "rel"
    assert paths[1].parent == tmp_path / "lay" / "blobs" / "sha256"
