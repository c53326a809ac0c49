"""Errors from the core: one base class, the stdlib class a caller would catch, errno and
filename kept for I/O errors."""

from __future__ import annotations

import errno
import os
import pickle
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

import pytest

import layerdiff
from layerdiff.layer import write_layer_to_fd


def test_missing_tree_is_an_oserror_with_errno_and_filename(tmp_path: Path) -> None:
    (tmp_path / "upper").mkdir()
    missing = tmp_path / "missing"
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        layerdiff.diff(missing, tmp_path / "upper")
    err = info.value
    assert isinstance(err, OSError) and isinstance(err, layerdiff.LayerdiffError)
    assert err.errno == errno.ENOENT
    assert Path(err.filename) == missing


def test_reserved_name_is_a_value_error_naming_the_path(tmp_path: Path) -> None:
    (tmp_path / "tree" / "etc").mkdir(parents=True)
    (tmp_path / "tree" / "etc" / ".wh.sneaky").write_text("x")
    with pytest.raises(layerdiff.ReservedNameError) as info:
        layerdiff.write_layer(tmp_path / "tree", dest=tmp_path / "blobs")
    assert isinstance(info.value, ValueError)
    assert "etc/.wh.sneaky" in str(info.value)


def test_corrupt_layer_is_a_format_error_naming_the_entry(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(b"\x00" * 100 + b"not a tar" * 200)
    with pytest.raises(layerdiff.FormatError) as info:
        layerdiff.apply(tmp_path / "out", [blob])
    assert isinstance(info.value, ValueError)
    assert "checksum" in str(info.value)


def test_os_errors_are_also_the_standard_class_of_their_errno(tmp_path: Path) -> None:
    """``except FileNotFoundError`` catches a missing path, as it would from ``open``."""
    a_file = tmp_path / "file"
    a_file.write_text("x")
    tree = tmp_path / "tree"
    tree.mkdir()
    cases: list[tuple[Callable[[], object], type[OSError], int]] = [
        (lambda: layerdiff.diff(tmp_path / "missing", tree), FileNotFoundError, errno.ENOENT),
        (lambda: layerdiff.write_layer(tree, dest=a_file), FileExistsError, errno.EEXIST),
        (lambda: layerdiff.diff(a_file / "x", tree), NotADirectoryError, errno.ENOTDIR),
    ]
    for call, standard, code in cases:
        with pytest.raises(standard) as info:
            call()
        err = info.value
        assert isinstance(err, layerdiff.LayerdiffOSError), repr(err)
        assert isinstance(err, layerdiff.LayerdiffError)
        assert err.errno == code
        assert err.filename is not None
        again = pickle.loads(pickle.dumps(err))
        assert type(again) is type(err)
        assert (again.errno, again.strerror, again.filename) == (code, err.strerror, err.filename)
        assert str(again) == str(err) == f"[Errno {code}] {err.strerror}: {err.filename!r}"


def test_os_errors_made_by_hand_pick_their_class_as_oserror_does() -> None:
    made = layerdiff.LayerdiffOSError(errno.EACCES, "Permission denied", "/x", None, "/y")
    assert isinstance(made, PermissionError) and isinstance(made, layerdiff.LayerdiffError)
    assert made.filename2 == "/y"
    assert type(layerdiff.LayerdiffOSError(errno.EPERM, "x")) is type(made)
    # No standard class for EIO, nor for a message alone: LayerdiffOSError itself.
    assert type(layerdiff.LayerdiffOSError(errno.EIO, "x")) is layerdiff.LayerdiffOSError
    alone = layerdiff.LayerdiffOSError("no errno")
    assert type(alone) is layerdiff.LayerdiffOSError and alone.errno is None
    assert str(pickle.loads(pickle.dumps(alone))) == "no errno"


def test_what_the_callers_own_code_raises_goes_through_untouched(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    for i in range(3000):
        (tree / f"f{i}").write_text(f"{i}\n" * 100)
    image = f"oci:{tmp_path}/l:v1"
    broken = BrokenPipeError(errno.EPIPE, "Broken pipe")

    def on_step(_message: str) -> None:
        raise broken

    with pytest.raises(BrokenPipeError) as info:
        layerdiff.commit(tree, image=image, on_step=on_step)
    assert info.value is broken
    # A builtin as the callback: no frame of the caller's, but what it raised is theirs too.
    with pytest.raises(FileNotFoundError) as missing:
        layerdiff.commit(tree, image=image, on_step=cast(Any, os.stat))
    assert not isinstance(missing.value, layerdiff.LayerdiffError)

    # The caller's signal handler, run while the layer is written.
    alarm = TimeoutError("the caller's deadline")

    def on_alarm(_signum: int, _frame: object) -> None:
        raise alarm

    def arm(message: str) -> None:
        if message == "writing layer":
            signal.setitimer(signal.ITIMER_REAL, 0.002)

    previous = signal.signal(signal.SIGALRM, on_alarm)
    try:
        with pytest.raises(TimeoutError) as timed_out:
            layerdiff.commit(tree, image=image, on_step=arm)
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)
    assert timed_out.value is alarm
    # Nothing was tagged (the layout itself is made only once a layer is whole).
    assert not (tmp_path / "l").exists() or layerdiff.images(tmp_path / "l") == []


def test_a_file_descriptor_to_write_a_layer_to_is_checked(tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    read_end, write_end = os.pipe()
    os.close(read_end)
    os.close(write_end)
    with pytest.raises(layerdiff.LayerdiffOSError) as info:
        write_layer_to_fd(tree, write_end)
    assert info.value.errno == errno.EBADF and f"fd={write_end}" in str(info.value)
    for fd in (10**12, -1, 2**31):
        with pytest.raises(layerdiff.InvalidArgumentError, match=f"^fd={fd}: "):
            write_layer_to_fd(tree, fd)
