"""layerdiff: turn file-system changes into OCI image layers, fast and reproducibly.

The public API::

    diff(lower, upper, *, content=False) -> list[Change]
    diff_overlay(upper, *, lowers=(), content=False) -> list[Change]
    write_layer(upper, *, dest, lower=None, overlay=False, ...) -> LayerInfo
    commit(upper, *, image, lower=None, overlay=False, base=None, ...) -> CommitResult
    images() / inspect(image) / history(image)

Images are named ``oci:PATH[:TAG]`` or ``NAME[:TAG]`` (the default store, see
:mod:`layerdiff.refs`). Every error derives from :class:`LayerdiffError`.
"""

from __future__ import annotations

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
    ReservedNameError,
)
from layerdiff.layer import Change, LayerInfo, diff, diff_overlay, write_layer

__version__ = "0.1.0"

__all__ = [
    "Change",
    "CommitResult",
    "DigestMismatchError",
    "FileChangedError",
    "FormatError",
    "HistoryEntry",
    "ImageNotFoundError",
    "ImageSummary",
    "InvalidChangeError",
    "InvalidReferenceError",
    "LayerInfo",
    "LayerdiffError",
    "LayerdiffOSError",
    "LimitError",
    "OverlayError",
    "ReservedNameError",
    "__version__",
    "commit",
    "diff",
    "diff_overlay",
    "history",
    "images",
    "inspect",
    "write_layer",
]
