"""Diffs and layer blobs: typed wrappers over the Rust core.

``dest`` of :func:`write_layer` is a directory: when it is an OCI image layout (it holds an
``oci-layout`` file) the blob goes into its ``blobs/sha256/``; otherwise ``dest`` itself is the
blobs directory and the blob is ``dest/<hex of its digest>``. Either way the file name is the
digest, so writing the same layer twice stores it once.
"""

from __future__ import annotations

import dataclasses
import os
import types
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar, cast

from layerdiff.errors import InvalidArgumentError, LayerdiffOSError

_T = TypeVar("_T")

__all__ = [
    "COMPRESSIONS",
    "Change",
    "LayerInfo",
    "diff",
    "diff_overlay",
    "write_layer",
    "write_layer_to_fd",
]

#: Accepted ``compression`` values.
COMPRESSIONS = ("gzip", "zstd", "none")
#: The levels each compression takes (gzip: libdeflate's scale; none takes no level).
COMPRESSION_LEVELS = {"gzip": range(1, 13), "zstd": range(1, 20)}
#: Most worker threads a layer writer takes: the core's ``MAX_THREADS`` (zstd's own limit).
MAX_THREADS = 256

StrPath = str | os.PathLike[str]
ChangeKind = Literal["A", "C", "D"]


@dataclass(frozen=True)
class Change:
    """One change between two trees, as ``docker diff`` prints it."""

    #: ``A`` added, ``C`` changed, ``D`` deleted.
    kind: ChangeKind
    #: Absolute path inside the image (``/etc/hosts``); undecodable bytes as surrogate escapes.
    path: str

    def __str__(self) -> str:
        return f"{self.kind} {self.path}"

    @property
    def path_bytes(self) -> bytes:
        """The path as the file system spells it."""
        return os.fsencode(self.path)


@dataclass(frozen=True, kw_only=True)
class LayerInfo:
    """A written layer blob."""

    #: ``sha256:…`` of the stored (compressed) blob.
    digest: str
    #: ``sha256:…`` of the uncompressed tar.
    diff_id: str
    #: Stored size in bytes.
    size: int
    #: Uncompressed tar size in bytes.
    tar_size: int
    #: OCI media type (``application/vnd.oci.image.layer.v1.tar+gzip`` …).
    media_type: str
    #: Where the blob is (an absolute path); ``Path()`` for a layer streamed to a registry
    #: (never stored here).
    path: Path
    #: Things skipped on the way (sockets …), one message each.
    warnings: tuple[str, ...] = ()

    @classmethod
    def from_core(cls, t: tuple[str, str, int, int, str, str, list[str]]) -> LayerInfo:
        """From the tuple the core's layer writers return."""
        digest, diff_id, size, tar_size, media_type, path, warnings = t
        return cls(
            digest=digest,
            diff_id=diff_id,
            size=size,
            tar_size=tar_size,
            media_type=media_type,
            # Absolute, as the path of a blob given back should be: the caller may change
            # directory, or hand it to a process that runs elsewhere.
            path=Path(path).absolute() if path else Path(),
            warnings=tuple(warnings),
        )


def _changes(raw: list[tuple[str, bytes]]) -> list[Change]:
    return [Change(cast(ChangeKind, kind), "/" + os.fsdecode(bytes(path))) for kind, path in raw]


def diff(lower: StrPath, upper: StrPath, *, content: bool = False) -> list[Change]:
    """Changes that turn tree ``lower`` into tree ``upper``, sorted by path.

    With ``content``, regular files equal in all but perhaps their mtime are compared by
    content: a file touched but not changed is not reported, and one rewritten with the same
    size and mtime is (without it, as in ``docker diff``, that one is not seen).
    """
    from layerdiff import _core  # imported on use: the pure-Python parts work without it

    check_path("lower", lower)
    check_path("upper", upper)
    check_bool("content", content)
    return _changes(_core.diff(lower, upper, content=content))


def diff_overlay(
    upper: StrPath, *, lowers: Sequence[StrPath] = (), content: bool = False
) -> list[Change]:
    """Changes recorded by an overlayfs upper directory (``lowers`` top first, optional)."""
    from layerdiff import _core

    check_path("upper", upper)
    lowers = check_paths("lowers", lowers)
    check_bool("content", content)
    return _changes(_core.diff_overlay(upper, lowers=lowers, content=content))


def _source_date_epoch(explicit: int | None) -> int | None:
    # The image module on use: this one stays light for the command line's start.
    from layerdiff.image import source_date_epoch

    return source_date_epoch(explicit)


def blobs_dir_for(dest: StrPath) -> Path:
    """The directory blobs for ``dest`` go to (see the module docs)."""
    path = Path(dest)
    if (path / "oci-layout").is_file():
        return path / "blobs" / "sha256"
    return path


def check_options(
    *, compression: str, threads: int | None, compression_level: int | None = None
) -> int:
    """Validate the options every layer writer takes; return the core's thread count."""
    if compression not in COMPRESSIONS:
        raise InvalidArgumentError(
            f"compression {compression!r}: expected one of {', '.join(COMPRESSIONS)}"
        )
    if compression_level is not None:
        levels = COMPRESSION_LEVELS.get(compression)
        if levels is None:
            raise InvalidArgumentError(
                f"compression_level={compression_level!r}: compression {compression!r} "
                "takes no level"
            )
        if (
            isinstance(compression_level, bool)
            or not isinstance(compression_level, int)
            or compression_level not in levels
        ):
            raise InvalidArgumentError(
                f"compression_level={compression_level!r}: {compression} takes "
                f"{levels.start} to {levels.stop - 1}"
            )
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS
    ):
        raise InvalidArgumentError(
            f"threads={threads!r}: expected 1 to {MAX_THREADS} (or None for one per core)"
        )
    return threads or 0


def check_sequence(name: str, value: Sequence[_T]) -> list[_T]:
    """``value`` as a list, refusing a lone ``str`` or ``bytes`` (a sequence too, of characters,
    which would silently mean each character)."""
    if isinstance(value, (str, bytes, os.PathLike)):
        raise InvalidArgumentError(f"{name}={value!r}: expected a list of them, not one")
    return list(value)


def check_path(name: str, value: StrPath) -> str:
    """``value`` as a str if it is a path (a str or an ``os.PathLike`` of one) the system can
    take, else InvalidArgumentError: a NUL byte ends a path for the kernel."""
    try:
        path = os.fspath(value)
    except TypeError:
        path = None
    if not isinstance(path, str):
        raise InvalidArgumentError(f"{name}={value!r}: expected a path (a str or os.PathLike)")
    if "\0" in path:
        raise InvalidArgumentError(f"{name}={value!r}: a path cannot hold a NUL byte")
    return path


def check_paths(name: str, values: Sequence[StrPath]) -> list[StrPath]:
    """``values`` as a list, each checked by :func:`check_path` (``name`` says which)."""
    values = check_sequence(name, values)
    for value in values:
        check_path(name, value)
    return values


def check_bool(name: str, value: bool) -> bool:
    """``value`` if it is True or False (not a truthy str), else InvalidArgumentError."""
    if not isinstance(value, bool):
        raise InvalidArgumentError(f"{name}={value!r}: expected True or False")
    return value


def check_exclude(exclude: Sequence[str]) -> list[str]:
    """``exclude`` as a list of paths inside the tree (relative to its root, a leading ``/``
    allowed), or InvalidArgumentError: a ``..``, ``.`` or empty component would never match
    a path of the layer, so the path would silently exclude nothing."""
    paths = check_sequence("exclude", exclude)
    for path in paths:
        if not isinstance(path, str):
            raise InvalidArgumentError(f"exclude={exclude!r}: {path!r} is not a str")
        if "\0" in path or any(p in ("", ".", "..") for p in path.strip("/").split("/")):
            raise InvalidArgumentError(
                f"exclude={exclude!r}: {path!r} is not a path inside the tree (such as "
                "etc/hosts: relative to its root, without '.', '..' or empty components)"
            )
        try:
            path.encode()
        except UnicodeEncodeError:
            raise InvalidArgumentError(
                f"exclude={exclude!r}: {path!r} is not UTF-8: such a name cannot be excluded"
            ) from None
    return paths


def check_int(name: str, value: int, low: int, high: int) -> int:
    """``value`` if it is an int from ``low`` to ``high``, else InvalidArgumentError."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidArgumentError(f"{name}={value!r}: expected an integer from {low} to {high}")
    return value


def _check_root_ids(root_ids: tuple[int, int] | None) -> tuple[int, int] | None:
    if root_ids is None:
        return None
    if not isinstance(root_ids, tuple) or len(root_ids) != 2:
        raise InvalidArgumentError(f"root_ids={root_ids!r}: expected (uid, gid)")
    # 2**32 - 1 is the kernel's "no id" (-1): not an owner.
    return (
        check_int("root_ids uid", root_ids[0], 0, 2**32 - 2),
        check_int("root_ids gid", root_ids[1], 0, 2**32 - 2),
    )


def check_source(
    upper: StrPath, lower: StrPath | None, overlay: bool, lowers: Sequence[StrPath]
) -> None:
    """The tree a layer is made of, as :func:`write_layer` takes it: paths, and ``lower`` or
    ``overlay`` (with ``lowers``), not both; else InvalidArgumentError."""
    check_path("upper", upper)
    if lower is not None:
        check_path("lower", lower)
    check_bool("overlay", overlay)
    if lower is not None and overlay:
        raise InvalidArgumentError(
            "lower and overlay exclude each other (use lowers= with overlay)"
        )
    if lowers and not overlay:
        raise InvalidArgumentError("lowers= is for overlay=True; a two-tree diff takes lower=")


def _as_container_root(root_ids: tuple[int, int] | None) -> bool:
    """Whether a tree whose ``root_ids`` are root is to be read as a rootless container's root
    reads it: they are the caller's own ids, and the caller is not root."""
    euid = os.geteuid()
    return euid != 0 and root_ids == (euid, os.getegid())


def _as_container_root_call(
    function: str, args: dict[str, Any], *, pass_fds: tuple[int, ...] = ()
) -> LayerInfo:
    """``function`` of this module called with its arguments ``args`` (its ``locals()``; the
    modules it imported left out), in a user namespace mapping the caller to root, where the
    files the caller owns are root's and no ``root_ids`` are needed."""
    from layerdiff import _userns

    kwargs = {
        k: v for k, v in args.items() if k != "root_ids" and not isinstance(v, types.ModuleType)
    }
    result = _userns.call(function, kwargs, pass_fds=pass_fds)
    assert isinstance(result, LayerInfo)
    return result


def write_layer(
    upper: StrPath,
    *,
    dest: StrPath,
    lower: StrPath | None = None,
    overlay: bool = False,
    lowers: Sequence[StrPath] = (),
    content: bool = False,
    compression: str = "gzip",
    compression_level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
    exclude: Sequence[str] = (),
    root_ids: tuple[int, int] | None = None,
) -> LayerInfo:
    """Write one layer blob into ``dest`` and describe it.

    Without ``lower`` or ``overlay`` the layer holds the whole ``upper`` tree; with ``lower`` it
    holds the two-tree diff; with ``overlay`` the changes an overlayfs upper dir records
    (``lowers``, top first, help tell added from changed). ``threads=None`` uses every core and
    never changes the bytes. ``source_date_epoch`` (default ``$SOURCE_DATE_EPOCH``) clamps mtimes.
    ``content`` compares file contents in the diff (see :func:`diff`). Paths in ``exclude``
    (relative to the root, e.g. ``etc/hosts``; a leading ``/`` is allowed, ``.``, ``..`` and
    empty components are refused) are left out of the layer, with what is below them; files
    owned by ``root_ids`` (uid, gid) are recorded as owned by root (a rootless container's
    view); when they are the caller's own and the caller is not root, the tree is read as the
    container reads it, from a user namespace mapping them to root (see
    :mod:`layerdiff._userns`): files their owner may not read (mode 0000) are read all the same,
    and files of ids it does not map are recorded as owned by nobody (65534), as the container
    sees them.
    ``compression_level`` (gzip: 1 to 12, libdeflate's scale, default 2; zstd: 1 to 19,
    default 2) trades time for size; the same level always gives the same bytes.
    """
    from layerdiff import _core, refs

    lowers = check_paths("lowers", lowers)
    exclude = check_exclude(exclude)
    root_ids = _check_root_ids(root_ids)
    if _as_container_root(root_ids):
        return _as_container_root_call("write_layer", locals())
    check_source(upper, lower, overlay, lowers)
    n_threads = check_options(
        compression=compression, threads=threads, compression_level=compression_level
    )
    check_bool("content", content)
    epoch = _source_date_epoch(source_date_epoch)
    if check_path("dest", dest) == "":
        raise InvalidArgumentError("dest='': expected a directory or an OCI layout")
    blobs = blobs_dir_for(dest)
    blobs.mkdir(parents=True, exist_ok=True)

    return LayerInfo.from_core(
        _core.write_layer(
            upper,
            blobs,
            lower=lower,
            overlay=overlay,
            lowers=list(lowers),
            content=content,
            compression=compression,
            level=compression_level,
            threads=n_threads,
            source_date_epoch=epoch,
            exclude=list(exclude),
            root_ids=root_ids,
            index_dir=refs.layer_index_dir(),
        )
    )


def write_layer_to_fd(
    upper: StrPath,
    fd: int,
    *,
    lower: StrPath | None = None,
    overlay: bool = False,
    lowers: Sequence[StrPath] = (),
    content: bool = False,
    compression: str = "gzip",
    compression_level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
    exclude: Sequence[str] = (),
    root_ids: tuple[int, int] | None = None,
) -> LayerInfo:
    """:func:`write_layer`, but the blob goes to the open file descriptor ``fd`` (the write end
    of a pipe, typically), which stays the caller's to close. ``path`` of the result is
    ``Path()``."""
    check_int("fd", fd, 0, 2**31 - 1)
    try:
        os.fstat(fd)
    except OSError as e:
        raise LayerdiffOSError(e.errno, f"fd={fd}: {e.strerror}") from None
    lowers = check_paths("lowers", lowers)
    check_bool("content", content)
    exclude = check_exclude(exclude)
    root_ids = _check_root_ids(root_ids)
    if _as_container_root(root_ids):
        return _as_container_root_call("write_layer_to_fd", locals(), pass_fds=(fd,))
    check_source(upper, lower, overlay, lowers)
    n_threads = check_options(
        compression=compression, threads=threads, compression_level=compression_level
    )
    from layerdiff import _core

    info = LayerInfo.from_core(
        _core.write_layer_to_fd(
            upper,
            fd,
            lower=lower,
            overlay=overlay,
            lowers=list(lowers),
            content=content,
            compression=compression,
            level=compression_level,
            threads=n_threads,
            source_date_epoch=_source_date_epoch(source_date_epoch),
            exclude=list(exclude),
            root_ids=root_ids,
        )
    )
    return dataclasses.replace(info, path=Path())
