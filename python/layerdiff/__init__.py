"""layerdiff: turn file-system changes into OCI image layers, fast and reproducibly.

The public API::

    diff(lower, upper, *, content=False) -> list[Change]
    diff_overlay(upper, *, lowers=(), content=False) -> list[Change]
    write_layer(upper, *, dest, lower=None, overlay=False, ...) -> LayerInfo
    commit(upper, *, image, lower=None, overlay=False, base=None, ...) -> CommitResult
    apply(root, layers, *, chown=None, overlay=False, max_size=...) -> ApplyResult
    unpack(image, root, *, chown=None, max_size=...) -> UnpackResult
    squash(image, new_image, *, layers=None, ...) -> SquashResult
    images() / inspect(image) / history(image)
    push(image, destination, *, tls_verify=True, creds=None, ...) -> PushResult
    pull(source, image=None, *, platform=None, tls_verify=True, creds=None, ...) -> PullResult
    save(image, archive) -> SaveResult / load(archive, image=None) -> LoadResult

Images are named ``oci:PATH[:TAG]`` or ``NAME[:TAG]`` (the default store, see
:mod:`layerdiff.refs`); registries ``docker://HOST/REPO[:TAG]``, docker save tarballs
``docker-archive:FILE[:NAME:TAG]``. Every error derives from :class:`LayerdiffError`.
"""

from __future__ import annotations

from layerdiff.apply import (
    DEFAULT_MAX_SIZE,
    ApplyResult,
    UnpackResult,
    apply,
    incomplete_marker,
    unpack,
)
from layerdiff.archive import LoadResult, SaveResult, load, save
from layerdiff.catalog import HistoryEntry, ImageSummary, history, images, inspect
from layerdiff.commit import CommitResult, commit
from layerdiff.errors import (
    DigestMismatchError,
    FileChangedError,
    FormatError,
    ImageNotFoundError,
    InvalidChangeError,
    InvalidReferenceError,
    LayerdiffError,
    LayerdiffOSError,
    LimitError,
    OverlayError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
    ReservedNameError,
)
from layerdiff.fsck import FsckReport, GcReport, Problem, fsck, gc
from layerdiff.layer import Change, LayerInfo, diff, diff_overlay, write_layer
from layerdiff.remote import PullResult, PushResult, pull, push
from layerdiff.squash import SquashResult, squash
from layerdiff.transfer import BlobStatus

__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ApplyResult",
    "BlobStatus",
    "Change",
    "CommitResult",
    "DigestMismatchError",
    "FileChangedError",
    "FormatError",
    "FsckReport",
    "GcReport",
    "HistoryEntry",
    "ImageNotFoundError",
    "ImageSummary",
    "InvalidChangeError",
    "InvalidReferenceError",
    "LayerInfo",
    "LayerdiffError",
    "LayerdiffOSError",
    "LimitError",
    "LoadResult",
    "OverlayError",
    "Problem",
    "PullResult",
    "PushResult",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachableError",
    "ReservedNameError",
    "SaveResult",
    "SquashResult",
    "UnpackResult",
    "__version__",
    "apply",
    "commit",
    "diff",
    "diff_overlay",
    "fsck",
    "gc",
    "history",
    "images",
    "incomplete_marker",
    "inspect",
    "load",
    "pull",
    "push",
    "save",
    "squash",
    "unpack",
    "write_layer",
]
