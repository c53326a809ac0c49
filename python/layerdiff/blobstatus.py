"""What a transfer reports about each blob: light enough for any module to import at runtime."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["STREAMED_LAYER", "WORKER_PREFIX", "BlobStatus", "OnBlob"]

#: Name prefix of the threads a push or pull moves blobs on.
WORKER_PREFIX = "layerdiff-blob"

#: What a layer streamed to a registry is reported as until its digest is known, at its end.
STREAMED_LAYER = "layer"

#: Progress callback: ``(digest, bytes done, size, status)``; ``status`` is None while the blob
#: is moving, then ``exists``, ``mounted``, ``uploaded`` (push) or ``downloaded`` (pull).
OnBlob = Callable[[str, int, int, str | None], None]


@dataclass(frozen=True)
class BlobStatus:
    """What happened to one blob."""

    #: ``sha256:…``
    digest: str
    #: Bytes.
    size: int
    #: ``exists`` | ``mounted`` | ``uploaded`` (push); ``exists`` | ``downloaded`` (pull).
    status: str
