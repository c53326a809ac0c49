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

import functools
import importlib
import sys
import types
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerdiff.errors import (
    ContainerError,
    ContainerNotFoundError,
    DigestMismatchError,
    FileChangedError,
    FormatError,
    ImageNotFoundError,
    InvalidArgumentError,
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

if TYPE_CHECKING:
    from layerdiff.apply import (
        DEFAULT_MAX_SIZE,
        ApplyResult,
        UnpackResult,
        apply,
        incomplete_marker,
        unpack,
    )
    from layerdiff.archive import LoadResult, SaveResult, load, load_all, save
    from layerdiff.blobstatus import BlobStatus
    from layerdiff.catalog import HistoryEntry, ImageSummary, history, images, inspect
    from layerdiff.cgroups import Limits
    from layerdiff.commit import CommitResult, commit
    from layerdiff.fsck import FsckReport, GcReport, Problem, fsck, gc
    from layerdiff.layer import Change, LayerInfo, diff, diff_overlay, write_layer
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
    from layerdiff.squash import SquashResult, squash
    from layerdiff.tags import tag, untag

# Every name of the API is imported on first use: a command pays only for the modules it needs
# (the registry client's ``requests`` alone takes longer to import than most commands take to
# run), and ``import layerdiff`` stays cheap for tools that use one function.
_LAZY = {
    **dict.fromkeys(
        ["DEFAULT_MAX_SIZE", "ApplyResult", "UnpackResult", "apply", "incomplete_marker", "unpack"],
        "layerdiff.apply",
    ),
    **dict.fromkeys(["LoadResult", "SaveResult", "load", "load_all", "save"], "layerdiff.archive"),
    **dict.fromkeys(
        ["HistoryEntry", "ImageSummary", "history", "images", "inspect"], "layerdiff.catalog"
    ),
    "Limits": "layerdiff.cgroups",
    **dict.fromkeys(["CommitResult", "commit"], "layerdiff.commit"),
    **dict.fromkeys(["FsckReport", "GcReport", "Problem", "fsck", "gc"], "layerdiff.fsck"),
    **dict.fromkeys(
        ["Change", "LayerInfo", "diff", "diff_overlay", "write_layer"], "layerdiff.layer"
    ),
    **dict.fromkeys(["PullResult", "PushResult", "pull", "push"], "layerdiff.remote"),
    **dict.fromkeys(
        [
            "Container",
            "RunResult",
            "commit_container",
            "containers",
            "create",
            "remove",
            "run",
            "start",
        ],
        "layerdiff.runtime",
    ),
    **dict.fromkeys(["SquashResult", "squash"], "layerdiff.squash"),
    **dict.fromkeys(["tag", "untag"], "layerdiff.tags"),
    "BlobStatus": "layerdiff.blobstatus",
}


def _ours(function: Callable[..., Any]) -> Callable[..., Any]:
    """``function`` raising :class:`LayerdiffOSError` (same errno, message and filenames) where a
    system call in the package's own Python code raised a plain ``OSError``: every error of
    the API derives from :class:`LayerdiffError`. What the caller's own code raises (a callback
    such as ``on_step``, a signal handler, a path object's ``__fspath__``) is theirs, and goes
    through untouched."""

    @functools.wraps(function)
    def api(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            if name.startswith("on_") and callable(value):
                kwargs[name] = _CallersCallback(value)
        try:
            return function(*args, **kwargs)
        except LayerdiffError:
            raise
        except OSError as e:
            if _raised_by_caller(e):
                raise
            if e.errno is None:
                raise LayerdiffOSError(*e.args) from e
            names = (e.filename, None, e.filename2) if e.filename2 is not None else (e.filename,)
            args = (e.errno, e.strerror, *names) if e.filename is not None else e.args[:2]
            raise LayerdiffOSError(*args) from e

    return api


class _CallersCallback:
    """A callback the caller passed (``on_step``, ``on_blob``): where it appears in a traceback,
    what was raised is the caller's, also when the callback is a builtin (``print``) that
    leaves no frame of its own."""

    __slots__ = ("callback",)

    def __init__(self, callback: Callable[..., Any]) -> None:
        self.callback = callback

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.callback(*args, **kwargs)


# Besides the standard library's, the modules whose frames are not the caller's: this
# package's and those of the libraries it calls (the registry client's).
_LIBRARIES = frozenset(
    {"layerdiff", "requests", "urllib3", "idna", "charset_normalizer", "certifi"}
)


def _raised_by_caller(error: BaseException) -> bool:
    """Whether ``error`` came out of the caller's code: a callback of theirs, or a frame of a
    module that is neither ours nor a library's (a signal handler's, say) on its way up."""
    tb = error.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        module = str(tb.tb_frame.f_globals.get("__name__", ""))
        if code is _CallersCallback.__call__.__code__:
            return True
        top = module.partition(".")[0]
        if top not in _LIBRARIES and top not in sys.stdlib_module_names:
            return True
        tb = tb.tb_next
    return False


class _Package(types.ModuleType):
    """The package object, resolving API names on first use.

    Four functions share their name with the submodule that defines them (``apply``,
    ``commit``, ``squash``, ``fsck``). Importing a submodule binds it on its package; here the
    function keeps the name, as it would after an eager ``from … import``.
    """

    def __getattr__(self, name: str) -> Any:
        module = _LAZY.get(name)
        if module is None:
            raise AttributeError(f"module 'layerdiff' has no attribute {name!r}")
        value = getattr(importlib.import_module(module), name)
        if isinstance(value, types.FunctionType):
            value = _ours(value)
        super().__setattr__(name, value)
        return value

    def __setattr__(self, name: str, value: Any) -> None:
        if isinstance(value, types.ModuleType) and _LAZY.get(name) == value.__name__:
            return  # the submodule stays reachable through sys.modules and its own imports
        super().__setattr__(name, value)

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_LAZY})


sys.modules[__name__].__class__ = _Package

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
    "InvalidArgumentError",
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
    "load_all",
    "pull",
    "push",
    "remove",
    "run",
    "save",
    "squash",
    "start",
    "tag",
    "unpack",
    "untag",
    "write_layer",
]
