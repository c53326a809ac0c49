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
    run(image, command=None, *, name=None, rm=False, env=(), limits=None, ...) -> RunResult
    create(image, *, name=None, ...) -> Container / start(container) -> RunResult
    containers() / remove(name, *, force=False)
    commit_container(name, image=None, *, message=None, changes=(), pause=True) -> CommitResult

Images are named ``oci:PATH[:TAG]`` or ``NAME[:TAG]`` (the default store, see
:mod:`layerdiff.refs`); registries ``docker://HOST/REPO[:TAG]``, docker save tarballs
``docker-archive:FILE[:NAME:TAG]``. Every error derives from :class:`LayerdiffError`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from layerdiff.apply import (
    DEFAULT_MAX_SIZE,
    ApplyResult,
    UnpackResult,
    apply,
    incomplete_marker,
    unpack,
)
from layerdiff.catalog import HistoryEntry, ImageSummary, history, images, inspect
from layerdiff.commit import CommitResult, commit
from layerdiff.errors import (
    ContainerError,
    ContainerNotFoundError,
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
from layerdiff.squash import SquashResult, squash

if TYPE_CHECKING:
    from layerdiff.archive import LoadResult, SaveResult, load, save
    from layerdiff.cgroups import Limits
    from layerdiff.remote import PullResult, PushResult, pull, push
    from layerdiff.runtime import (
        Container,
        RunResult,
        commit_container,
        containers,
        create,
        remove,
        run,
        start,
    )
    from layerdiff.transfer import BlobStatus

# Imported on first use: the registry client needs ``requests`` (slow to import), and neither
# it nor the container runtime should cost a command that does not use them.
_LAZY = {
    "LoadResult": "layerdiff.archive",
    "SaveResult": "layerdiff.archive",
    "load": "layerdiff.archive",
    "save": "layerdiff.archive",
    "PullResult": "layerdiff.remote",
    "PushResult": "layerdiff.remote",
    "pull": "layerdiff.remote",
    "push": "layerdiff.remote",
    "BlobStatus": "layerdiff.transfer",
    "Limits": "layerdiff.cgroups",
    "Container": "layerdiff.runtime",
    "RunResult": "layerdiff.runtime",
    "commit_container": "layerdiff.runtime",
    "containers": "layerdiff.runtime",
    "create": "layerdiff.runtime",
    "remove": "layerdiff.runtime",
    "run": "layerdiff.runtime",
    "start": "layerdiff.runtime",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'layerdiff' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__version__ = "0.1.0"

__all__ = [
    "DEFAULT_MAX_SIZE",
    "ApplyResult",
    "BlobStatus",
    "Change",
    "CommitResult",
    "Container",
    "ContainerError",
    "ContainerNotFoundError",
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
    "Limits",
    "LoadResult",
    "OverlayError",
    "Problem",
    "PullResult",
    "PushResult",
    "RegistryAuthError",
    "RegistryError",
    "RegistryUnreachableError",
    "ReservedNameError",
    "RunResult",
    "SaveResult",
    "SquashResult",
    "UnpackResult",
    "__version__",
    "apply",
    "commit",
    "commit_container",
    "containers",
    "create",
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
    "remove",
    "run",
    "save",
    "squash",
    "start",
    "unpack",
    "write_layer",
]
