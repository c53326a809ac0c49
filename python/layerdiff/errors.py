"""Exceptions raised by layerdiff.

All derive from :class:`LayerdiffError`; each also derives from the standard class a caller
would catch anyway (``OSError`` keeps ``errno`` and ``filename``, ``ValueError`` for bad input).
"""

from __future__ import annotations

from typing import Any


class LayerdiffError(Exception):
    """Base class of every layerdiff error."""


class LayerdiffOSError(LayerdiffError, OSError):
    """An operating-system call failed; ``errno`` and ``filename`` say which and where.

    As ``OSError(errno, …)`` itself does, ``LayerdiffOSError(errno, …)`` makes an instance of
    the standard subclass for that errno as well: one for ``ENOENT`` is a
    ``FileNotFoundError``, one for ``EACCES`` a ``PermissionError``, and so on.
    """

    def __new__(cls, *args: Any) -> LayerdiffOSError:
        kind: type[LayerdiffOSError] = cls
        if cls is LayerdiffOSError and len(args) >= 2 and isinstance(args[0], int):
            kind = _errno_class(args[0])
        return OSError.__new__(kind, *args)

    def __reduce__(self) -> str | tuple[Any, ...]:
        reduced = super().__reduce__()
        if isinstance(reduced, tuple) and type(self) in _ERRNO_CLASSES.values():
            # Made again through LayerdiffOSError, which picks the class by errno again: the
            # classes of _errno_class are made on use, and pickle could not find them by name.
            return (LayerdiffOSError, *reduced[1:])
        return reduced


# The standard OSError subclass (FileNotFoundError…) -> LayerdiffOSError's subclass of it.
_ERRNO_CLASSES: dict[type[OSError], type[LayerdiffOSError]] = {}


def _errno_class(code: int) -> type[LayerdiffOSError]:
    """The class of a LayerdiffOSError for the errno ``code``: derived from the class
    ``OSError`` picks for it too (made on first use), else LayerdiffOSError itself."""
    standard = type(OSError(code, ""))
    if standard is OSError:
        return LayerdiffOSError
    found = _ERRNO_CLASSES.get(standard)
    if found is None:
        name = f"Layerdiff{standard.__name__}"
        namespace = {"__module__": __name__, "__doc__": LayerdiffOSError.__doc__}
        made = type(name, (LayerdiffOSError, standard), namespace)
        found = _ERRNO_CLASSES.setdefault(standard, made)
    return found


class FormatError(LayerdiffError, ValueError):
    """Input that is not what the format allows: a malformed archive, manifest or name."""


class ReservedNameError(FormatError):
    """A tree holds a ``.wh.``-prefixed name, which a layer would read as a whiteout."""


class FileChangedError(LayerdiffError, OSError):
    """A file changed while it was being read into a layer."""


class OverlayError(LayerdiffError, ValueError):
    """An overlay upper directory that cannot be turned into a layer as given."""


class LimitError(FormatError):
    """A size, depth or count limit was exceeded."""


class DigestMismatchError(FormatError):
    """Content did not hash to the digest it was named by."""


class InvalidArgumentError(LayerdiffError, ValueError):
    """An argument out of its range or not one of its choices (``threads``, ``compression``…)."""


class InvalidReferenceError(LayerdiffError, ValueError):
    """An image reference that does not parse."""


class ImageNotFoundError(LayerdiffError, LookupError):
    """An image reference that names no image."""


class InvalidChangeError(FormatError):
    """A ``--change`` instruction (``ENV``, ``CMD``, …) that does not parse."""


class ContainerError(LayerdiffError, RuntimeError):
    """A container cannot be created, run, committed or removed as asked."""


class ContainerNotFoundError(ContainerError, LookupError):
    """No container has the given name (or directory)."""


class RegistryError(LayerdiffError):
    """A registry refused a request or answered with something unusable.

    ``status`` is the HTTP status (``None`` when there was no answer), ``code`` the
    distribution-spec error code (``BLOB_UNKNOWN``, ``DENIED``, …) when the registry gave one.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None):
        super().__init__(message)
        self.status = status
        self.code = code


class RegistryAuthError(RegistryError, PermissionError):
    """The registry wants credentials it was not given, or refused the ones it was given."""


class RegistryUnreachableError(RegistryError, ConnectionError):
    """No answer from the registry: connection refused or reset, DNS, TLS, timeouts."""
