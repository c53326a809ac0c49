"""Exceptions raised by layerdiff.

All derive from :class:`LayerdiffError`; each also derives from the standard class a caller
would catch anyway (``OSError`` keeps ``errno`` and ``filename``, ``ValueError`` for bad input).
"""

from __future__ import annotations


class LayerdiffError(Exception):
    """Base class of every layerdiff error."""


class LayerdiffOSError(LayerdiffError, OSError):
    """An operating-system call failed; ``errno`` and ``filename`` say which and where."""


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
