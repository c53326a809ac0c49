"""The Rust core. Thin bindings: every call releases the GIL and raises layerdiff.errors classes."""

from collections.abc import Sequence
from os import PathLike

_Path = str | PathLike[str]

__all__ = [
    "DEFAULT_MAX_SIZE",
    "MAX_THREADS",
    "apply_layer",
    "blob_digests",
    "decompress_blob",
    "diff",
    "diff_overlay",
    "run_container",
    "sha256",
    "squash_layers",
    "write_layer",
    "write_layer_to_fd",
]

def diff(lower: _Path, upper: _Path, *, content: bool = False) -> list[tuple[str, bytes]]:
    """Changes turning tree `lower` into tree `upper`: (letter A|C|D, relative path bytes)."""

def diff_overlay(
    upper: _Path, *, lowers: Sequence[_Path] = ..., content: bool = False
) -> list[tuple[str, bytes]]:
    """Changes recorded by an overlayfs upper directory (lowers top first)."""

def write_layer(
    upper: _Path,
    blobs_dir: _Path,
    *,
    lower: _Path | None = None,
    overlay: bool = False,
    lowers: Sequence[_Path] = ...,
    content: bool = False,
    compression: str = "gzip",
    level: int | None = None,
    threads: int = 0,
    source_date_epoch: int | None = None,
    exclude: Sequence[str] = ...,
    root_ids: tuple[int, int] | None = None,
    index_dir: _Path | None = None,
) -> tuple[str, str, int, int, str, str, list[str]]:
    """Write one layer blob into `blobs_dir` (an OCI layout's blobs/sha256).

    Without `lower` or `overlay` the layer holds the whole `upper` tree; with `lower` the
    two-tree diff; with `overlay` the overlay-upper diff (against `lowers` when given).
    With `index_dir`, the blob's layer index (for squash) is written there, named by the hex
    of its digest. Returns (digest, diff_id, size, tar_size, media_type, path, warnings).
    """

DEFAULT_MAX_SIZE: int
MAX_THREADS: int

def apply_layer(
    root: _Path,
    blob: _Path,
    *,
    digest: str | None = None,
    size: int | None = None,
    chown: bool = True,
    overlay: bool = False,
    userxattr: bool = False,
    max_size: int = ...,
    lowers: Sequence[_Path] | None = None,
    diff_id: str | None = None,
) -> tuple[int, int, list[str]]:
    """Apply one layer blob (tar, tar+gzip, tar+zstd) onto `root`, confined to it.

    With `digest` the blob is verified (sha256 and `size`) while read; with `diff_id`, the
    sha256 of its whole uncompressed stream too (after the blob's). With `overlay` and
    `lowers` (the directories of the layers below in the same form, top first), what the
    layer passes through that only they hold is copied up, so that the overlay of them all
    is the layers applied in order; whiteouts are then made only where they hide something.
    Returns (entries, uncompressed bytes, warnings).
    """

def squash_layers(
    lower: Sequence[_Path],
    range: Sequence[_Path],
    blobs_dir: _Path,
    *,
    compression: str = "gzip",
    level: int | None = None,
    threads: int = 0,
    source_date_epoch: int | None = None,
    indexes: Sequence[_Path] | None = None,
    index_dir: _Path | None = None,
) -> tuple[str, str, int, int, str, str, list[str]]:
    """Squash the layer blobs `range`, which sit on `lower`, into one blob in `blobs_dir`.

    `indexes` (one file per layer of `range`) are layer indexes: read when usable and checked
    against the layers, written when not. The new blob's index goes into `index_dir`.

    Returns (digest, diff_id, size, tar_size, media_type, path, warnings) like write_layer.
    """

def blob_digests(path: _Path) -> tuple[str, int, str, int]:
    """(digest, size, diff_id, tar_size) of a blob file and of its decompressed stream."""

def sha256(data: bytes) -> str:
    """``sha256:<hex>`` of ``data`` (a small blob: a config, a manifest)."""

def run_container(
    *,
    argv: list[str],
    env: list[str],
    cwd: str,
    user: str,
    hostname: str,
    layers_dir: _Path,
    lowers: list[str],
    upper: _Path,
    work: _Path,
    rootfs: _Path,
    binds: list[tuple[_Path, str]],
    volumes: list[tuple[_Path, str]] = ...,
    rootless: bool = False,
    new_network: bool = False,
    error_fd: int = 2,
    parent_pid: int = 0,
    cgroup_fds: list[int] = ...,
    console_fd: int = ...,
    console_size: tuple[int, int] = ...,
) -> int:
    """Run a container (namespaces, overlay root, init) in this single-threaded process and
    return its exit code."""

def decompress_blob(blob: _Path, dest: _Path) -> tuple[str, int, str, int]:
    """Decompress a layer blob into the new file `dest`: (digest, size, diff_id, tar_size)."""

def write_layer_to_fd(
    upper: _Path,
    fd: int,
    *,
    lower: _Path | None = None,
    overlay: bool = False,
    lowers: Sequence[_Path] = ...,
    content: bool = False,
    compression: str = "gzip",
    level: int | None = None,
    threads: int = 0,
    source_date_epoch: int | None = None,
    exclude: Sequence[str] = ...,
    root_ids: tuple[int, int] | None = None,
) -> tuple[str, str, int, int, str, str, list[str]]:
    """Write one layer blob to the file descriptor `fd` (written through a duplicate, which
    is closed on return; `fd` stays the caller's). Returns the tuple of `write_layer`, path ''.
    """
