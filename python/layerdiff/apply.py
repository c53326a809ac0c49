"""``apply`` and ``unpack``: layer blobs onto a directory, confined to it.

Applying is the security boundary of the project: every path is resolved inside the target by
the core (``openat2`` with ``RESOLVE_IN_ROOT``), whatever the layer holds. ``unpack`` verifies
each blob's size and digest while it reads it, and leaves a marker beside the target until
every layer is in, so a failed or interrupted unpack is never taken for the image.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from layerdiff import _core, refs
from layerdiff.errors import FormatError, InvalidArgumentError, LayerdiffOSError
from layerdiff.layer import StrPath, check_bool, check_int, check_path, check_paths

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ApplyResult",
    "UnpackResult",
    "apply",
    "incomplete_marker",
    "unpack",
]

#: Default limit on the uncompressed size of one layer (a decompression-bomb guard).
DEFAULT_MAX_SIZE: int = _core.DEFAULT_MAX_SIZE


@dataclass(frozen=True, kw_only=True)
class ApplyResult:
    """What applying layers did."""

    #: Layers applied.
    layers: int
    #: Tar entries read, all layers together.
    entries: int
    #: Uncompressed bytes read.
    bytes: int
    #: Things skipped (device nodes without privilege, unsupported xattrs), one line each.
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True, kw_only=True)
class UnpackResult(ApplyResult):
    """What unpacking an image did."""

    #: Digest of the manifest that was unpacked.
    manifest_digest: str


def _privileged() -> bool:
    return os.geteuid() == 0


@contextlib.contextmanager
def _naming(layer: str) -> Iterator[None]:
    """Say which layer a malformed-content error is about: with several, the entry named in
    the message alone does not tell."""
    try:
        yield
    except FormatError as e:
        raise type(e)(f"{layer}: {e}") from e


def apply(
    root: StrPath,
    layers: StrPath | Sequence[StrPath],
    *,
    chown: bool | None = None,
    overlay: bool = False,
    userxattr: bool | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    lowers: Sequence[StrPath] | None = None,
    on_step: Callable[[str], None] | None = None,
) -> ApplyResult:
    """Apply layer blobs (tar, tar+gzip, tar+zstd: detected) in order onto the directory ``root``
    (``layers``: their paths, or the path of one).

    ``chown`` sets the owners the layer records (default: when running as root). ``overlay``
    writes overlayfs upper-dir form (whiteouts as 0/0 character devices, opaque directories as
    an xattr: ``user.overlay.opaque`` when ``userxattr``, default when not root). ``on_step``
    is called with a short message as each blob starts (for progress output).

    ``lowers`` (with ``overlay``): the directories of the layers below, top first, in the same
    form. What the layers pass through that only those hold (a symbolic link of theirs, the
    target of a hardlink, a parent directory) is copied up, as overlayfs copies up on a write,
    and whiteouts are made only where they hide something: mounted over ``lowers``, ``root``
    then shows what applying every layer in order onto one directory gives. Without them a
    layer is applied by itself, as docker's overlay2 stores it: an entry through an earlier
    layer's symbolic link makes a directory in the link's place.

    Every blob is checked to exist and be a regular file before the first is applied, but what
    a layer holds is only known as it is applied, and it is written into ``root`` as it is read:
    an apply that fails or is interrupted leaves ``root`` partly written (the layers before the
    failing one applied, that one in part), with no marker saying so; only a ``root`` it made
    and wrote nothing into is removed. Apply into a new directory and remove it on failure, or
    use :func:`unpack`, whose :func:`incomplete_marker` says when an image is not all in.
    """
    if isinstance(layers, (str, os.PathLike)):
        layers = [layers]  # one blob: a str is a Sequence too, of characters
    layers = check_paths("layers", layers)
    check_int("max_size", max_size, 1, 2**64 - 1)
    check_bool("overlay", overlay)
    for name, value in (("chown", chown), ("userxattr", userxattr)):
        if value is not None:
            check_bool(name, value)
    _check_target(root)
    if lowers is not None:
        if isinstance(lowers, (str, os.PathLike)):
            raise InvalidArgumentError("lowers is a sequence of directories, not one path")
        lowers = check_paths("lowers", lowers)
        if not overlay:
            raise InvalidArgumentError(
                "lower directories are only for overlay form (--overlay, overlay=True)"
            )
        for d in lowers:
            if not os.path.isdir(d):
                raise LayerdiffOSError(
                    errno.ENOTDIR, "lower layer is not a directory", os.fspath(d)
                )
    for blob in layers:  # every one, before the first is applied
        if not os.path.exists(blob):
            raise LayerdiffOSError(errno.ENOENT, "no such layer blob", os.fspath(blob))
        if not os.path.isfile(blob):
            raise LayerdiffOSError(errno.EINVAL, "not a regular file", os.fspath(blob))
    chown = _privileged() if chown is None else chown
    userxattr = (not _privileged()) if userxattr is None else userxattr
    entries = total = 0
    warnings: list[str] = []
    made = not os.path.lexists(root)
    try:
        for i, blob in enumerate(layers, 1):
            if on_step is not None:
                on_step(f"layer {i} of {len(layers)} ({os.fspath(blob)})")
            with _naming(f"layer {os.fspath(blob)}"):
                n, size, warn = _core.apply_layer(
                    root,
                    blob,
                    chown=chown,
                    overlay=overlay,
                    userxattr=userxattr,
                    max_size=max_size,
                    lowers=lowers,
                )
            entries += n
            total += size
            warnings.extend(warn)
    except BaseException:
        if made:  # a failure leaves no new empty directory behind
            with contextlib.suppress(OSError):
                os.rmdir(root)
        raise
    return ApplyResult(layers=len(layers), entries=entries, bytes=total, warnings=tuple(warnings))


def _check_target(root: StrPath) -> None:
    """Refuse a target that names no directory to write into: ``""`` (not the current
    directory), or ``/``; or no path at all."""
    if check_path("root", root) == "":
        raise InvalidArgumentError("the target directory is an empty string")
    if os.path.realpath(os.fsdecode(root)) == "/":  # also //, or a symlink to /
        raise InvalidArgumentError("the target directory is / itself: give a directory below it")


def incomplete_marker(root: StrPath) -> Path:
    """The file that says an unpack into ``root`` has not finished: ``.NAME.incomplete`` beside
    it (never inside, where a layer could remove or forge it)."""
    path = Path(os.path.abspath(root))
    return path.with_name(f".{path.name}.incomplete")


def unpack(
    image: str | refs.LayoutRef,
    root: StrPath,
    *,
    chown: bool | None = None,
    max_size: int = DEFAULT_MAX_SIZE,
    on_step: Callable[[str], None] | None = None,
) -> UnpackResult:
    """Apply every layer of ``image`` onto the new or empty directory ``root``.

    Each blob is checked against its descriptor (size and sha256) while it is read, and its
    uncompressed tar against the config's diff_id (as docker and containerd check it); a
    mismatch is an error. Until every layer is in, ``incomplete_marker(root)`` exists.
    ``on_step`` is called with a short message as each layer starts (for progress output).
    """
    # Imported on use: `apply` of blobs has no image to load, and the command line starts
    # faster without the image modules.
    from layerdiff.catalog import load_image
    from layerdiff.image import check_layer_media_types, layer_diff_ids

    check_int("max_size", max_size, 1, 2**64 - 1)
    if chown is not None:
        check_bool("chown", chown)
    _check_target(root)
    img = load_image(image)
    check_layer_media_types(img.layers, img.ref.text)  # all before anything is written
    diff_ids = layer_diff_ids(img.config, img.layers, img.ref.text)
    target = Path(root)
    marker = incomplete_marker(target)
    if target.exists() and (not target.is_dir() or any(target.iterdir())):
        why = "unpack target exists and is not an empty directory"
        if marker.exists():
            why += f" (an unpack into it did not finish, {marker.name} says: remove both)"
        raise LayerdiffOSError(17, why, str(root))
    chown = _privileged() if chown is None else chown
    target.mkdir(parents=True, exist_ok=True)
    marker.write_text(f"unpacking {img.digest}\n")
    entries = total = 0
    warnings: list[str] = []
    for i, desc in enumerate(img.layers, 1):
        blob = img.layout.blob_path(desc["digest"])
        if on_step is not None:
            on_step(f"layer {i} of {len(img.layers)} ({str(desc['digest'])[7:19]})")
        with _naming(f"layer {i} of {len(img.layers)} ({desc['digest']})"):
            n, size, warn = _core.apply_layer(
                target,
                blob,
                digest=desc["digest"],
                size=int(desc["size"]),
                chown=chown,
                max_size=max_size,
                diff_id=diff_ids[i - 1],
            )
        entries += n
        total += size
        warnings.extend(warn)
    marker.unlink()
    return UnpackResult(
        layers=len(img.layers),
        entries=entries,
        bytes=total,
        warnings=tuple(warnings),
        manifest_digest=img.digest,
    )
