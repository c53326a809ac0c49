"""Moving blobs and manifests between a layout and a registry: the steps of push and pull.

Push sends each blob at most once. ``HEAD`` first: a blob the repository has is skipped
("exists"). Else, when the layout remembers the blob in another repository of the same registry
(:class:`Sources`), a cross-repository mount is asked for ("mounted"); a registry that cannot
mount answers 202 with a fresh upload session, which is then used, and one that refuses the
mount (no pull on the source any more: 401 or 403, from the registry or its token server)
gets a plain upload, and that source is not asked for again in the session. Else the blob is
uploaded ("uploaded"): ``POST`` opens a session, ``PATCH`` sends the bytes (``Content-Range``, as
distribution 2.8 ignores a body on the ``POST``), and ``PUT`` with ``digest`` added to the
session's ``Location`` (resolved against the URL it answered) closes it. A local blob is
hashed while it is sent and refused (before the closing ``PUT``) when it does not match its
digest. A session that will not be closed (the blob failed, the push was stopped, also while
its bytes were on their way) is cancelled with ``DELETE``, as docker does, so its bytes are not
kept until the registry's purge; that fails (and is let go) for a session cut in the middle of
its ``PATCH``, whose location's state no longer matches what it holds.

Pull stores each blob the layout lacks, or holds damaged (a present blob is hashed first),
through a temporary file in the layout, checking its size and sha256 while it streams, and
refuses a mismatch with nothing stored.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import queue
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import requests

from layerdiff.blobstatus import STREAMED_LAYER, BlobStatus, OnBlob
from layerdiff.errors import (
    DigestMismatchError,
    RegistryAuthError,
    RegistryError,
    RegistryUnreachableError,
)
from layerdiff.layout import Descriptor, Layout, write_atomic
from layerdiff.registry import Registry, pull_scope, push_scope, retrying, with_query

__all__ = [
    "BlobStatus",
    "LayerStream",
    "OnBlob",
    "Sources",
    "fetch_blob",
    "push_blob",
    "push_bytes",
]


_CHUNK = 1 << 20  # bytes read and hashed at a time


class Stopped(Exception):
    """A blob transfer given up because its ``stop`` event was set."""


def _check_stop(stop: threading.Event | None) -> None:
    """Raise :class:`Stopped` once ``stop`` is set: the push or pull this transfer belongs to
    was interrupted or failed elsewhere, so the rest of its bytes are not wanted."""
    if stop is not None and stop.is_set():
        raise Stopped("interrupted")


_PATCH_CHUNK = 16 << 20  # bytes per PATCH of a streamed layer
_ABORT_GRACE = 2.0  # seconds an abandoned layer upload is waited for
_CANCEL_TIMEOUT = (2.0, 2.0)  # (connect, read) seconds for cancelling an upload session
_SOURCES = ".layerdiff.sources.json"
_SOURCES_KEPT = 8  # repositories remembered per blob


def _quiet(_digest: str, _done: int, _size: int, _status: str | None) -> None:
    pass


class Sources:
    """The repositories of each registry a layout's blobs were pushed to or pulled from, so a
    push to another repository of that registry can mount instead of upload. Kept in a small
    JSON file in the layout, changed under the layout's lock, written atomically."""

    def __init__(self, layout: Layout) -> None:
        """The memory of ``layout``."""
        self.layout = layout
        self.path = layout.path / _SOURCES

    def _read(self) -> dict[str, list[str]]:
        try:
            data = json.loads(self.path.read_bytes())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def repositories(self, host: str, digest: str) -> list[str]:
        """Repositories of ``host`` known to hold ``digest``, most recent first."""
        prefix = f"{host}/"
        entries = self._read().get(digest, [])
        return [e[len(prefix) :] for e in reversed(entries) if e.startswith(prefix)]

    def remember(self, host: str, repository: str, digests: list[str]) -> None:
        """Record that ``host/repository`` holds ``digests``."""
        where = f"{host}/{repository}"
        with contextlib.suppress(OSError), self.layout.locked():
            data = self._read()
            for digest in digests:
                entries = [e for e in data.get(digest, []) if e != where] + [where]
                data[digest] = entries[-_SOURCES_KEPT:]
            write_atomic(self.path, json.dumps(data, separators=(",", ":")).encode())


class _VerifiedFile:
    """A blob file as a request body: sent in 1 MiB chunks, hashed and counted on the way."""

    def __init__(
        self, path: Path, size: int, digest: str, on_blob: OnBlob, stop: threading.Event | None
    ) -> None:
        self.path = path
        self.stop = stop
        self.size = size
        self.digest = digest
        self.on_blob = on_blob
        self.found: str | None = None
        self.sent = 0

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        h = hashlib.sha256()
        self.sent = 0
        with self.path.open("rb") as f:
            while chunk := f.read(min(_CHUNK, self.size - self.sent + 1)):
                if self.sent + len(chunk) > self.size:
                    raise DigestMismatchError(
                        f"{self.path}: blob {self.digest} is larger than its descriptor's "
                        f"{self.size} bytes; refusing to push it"
                    )
                _check_stop(self.stop)
                h.update(chunk)
                self.sent += len(chunk)
                self.on_blob(self.digest, self.sent, self.size, None)
                yield chunk
        self.found = "sha256:" + h.hexdigest()

    def check(self) -> None:
        """Raise DigestMismatchError unless what was sent is the blob its digest names."""
        if self.sent != self.size or self.found != self.digest:
            raise DigestMismatchError(
                f"{self.path}: blob {self.digest} has digest {self.found} and {self.sent} bytes "
                f"(expected {self.size}); refusing to push it (run layerdiff fsck)"
            )


def _blob_exists(reg: Registry, repository: str, digest: str, size: int) -> bool:
    response = reg.request(
        "HEAD",
        f"/v2/{repository}/blobs/{digest}",
        scopes=[push_scope(repository)],
        expect=(200, 404),
    )
    return response.status_code == 200 and int(response.headers.get("Content-Length", size)) == size


def _open_upload(reg: Registry, repository: str, digest: str, mount_from: list[str]) -> str | None:
    """Start an upload; None when a mount did it all, else the session's absolute URL."""
    path = f"/v2/{repository}/blobs/uploads/"
    scopes = [push_scope(repository)]
    response = None
    mount_from = [r for r in mount_from if not reg.refused(pull_scope(r))]
    if mount_from:
        source = mount_from[0]
        try:
            response = reg.request(
                "POST",
                with_query(path, mount=digest, **{"from": source}),
                scopes=[*scopes, pull_scope(source)],
                expect=(201, 202),
            )
        except RegistryAuthError:
            # Not (or no longer) allowed to read the source, whether the registry or its token
            # server refused it: upload, as docker and skopeo do, and ask for that source no
            # more in this session (a token server that refuses a scope set naming it would
            # refuse every later request asking for it too).
            reg.refuse_scope(pull_scope(source))
            response = None
        if response is not None and response.status_code == 201:
            return None
    if response is None:
        response = reg.request("POST", path, scopes=scopes, expect=(202,))
    location = response.headers.get("Location")
    if not location:
        raise RegistryError(f"{reg.host}: POST {path}: 202 without a Location", status=202)
    return reg.absolute(location, response.url)


def _patch(reg: Registry, repository: str, location: str, body: Any, start: int, n: int) -> str:
    """Send ``n`` bytes at ``start`` of the upload; the session's next location."""
    response = reg.request(
        "PATCH",
        location,
        scopes=[push_scope(repository)],
        headers={
            "Content-Type": "application/octet-stream",
            "Content-Range": f"{start}-{start + n - 1}",
            "Content-Length": str(n),
        },
        data=body,
        expect=(202, 204),
        replayable=False,
    )
    return reg.absolute(response.headers.get("Location", location), response.url)


def _upload_offset(reg: Registry, repository: str, location: str, sent: int) -> int:
    """How many bytes the upload session at ``location`` holds (its ``Range``, ``0-LAST``);
    ``sent`` counted so far decides the one ambiguous answer, ``0-0`` (none or one byte)."""
    response = reg.request("GET", location, scopes=[push_scope(repository)], expect=(204,))
    found = re.fullmatch(r"(?:bytes=)?0-(\d+)", response.headers.get("Range", "0-0").strip())
    if found is None:
        raise RegistryError(f"{reg.host}: upload status without a Range", status=204)
    last = int(found.group(1))
    return 0 if last == 0 and sent == 0 else last + 1


def _cancel_upload(reg: Registry, repository: str, location: str) -> None:
    """Cancel the upload session at ``location`` (``DELETE``). Best effort: one try with a
    short timeout, and a failure is ignored (the registry purges stale sessions anyway)."""
    with contextlib.suppress(RegistryError):
        reg.request(
            "DELETE",
            location,
            scopes=[push_scope(repository)],
            expect=(200, 202, 204, 404),
            replayable=False,
            timeout=_CANCEL_TIMEOUT,
        )


def _close_upload(reg: Registry, repository: str, location: str, digest: str) -> None:
    response = reg.request(
        "PUT",
        with_query(location, digest=digest),
        scopes=[push_scope(repository)],
        headers={"Content-Type": "application/octet-stream", "Content-Length": "0"},
        expect=(201, 204),
        replayable=False,
    )
    found = response.headers.get("Docker-Content-Digest")
    if found and found != digest:
        raise RegistryError(f"{reg.host}: stored blob {digest} as {found}")


def push_blob(
    reg: Registry,
    repository: str,
    layout: Layout,
    desc: Descriptor,
    *,
    mount_from: list[str],
    on_blob: OnBlob = _quiet,
    stop: threading.Event | None = None,
) -> BlobStatus:
    """Make the registry's ``repository`` hold the layout's blob ``desc`` (see the module
    docs); retried whole on connection failures and 5xx. Once ``stop`` is set the upload
    ends at its next chunk with :class:`Stopped`."""
    digest, size = str(desc["digest"]), int(desc["size"])
    path = layout.blob_path(digest)
    try:
        local_size = path.stat().st_size
    except FileNotFoundError:
        local_size = -1
    if local_size != size:
        raise DigestMismatchError(
            f"{path}: blob {digest} is "
            f"{'missing' if local_size < 0 else f'{local_size} bytes'}, its descriptor says "
            f"{size} bytes; refusing to push it"
        )

    def attempt() -> str:
        _check_stop(stop)
        if _blob_exists(reg, repository, digest, size):
            return "exists"
        mounts = [r for r in mount_from if r != repository]
        location = _open_upload(reg, repository, digest, mounts)
        if location is None:
            return "mounted"
        try:
            body = _VerifiedFile(path, size, digest, on_blob, stop)
            if size:
                location = _patch(reg, repository, location, body, 0, size)
                body.check()
            elif digest != "sha256:" + hashlib.sha256(b"").hexdigest():
                body.found = "sha256:" + hashlib.sha256(path.read_bytes()).hexdigest()
                body.check()
            # Stopped while the bytes were on their way (Ctrl-C, or another blob failed): the
            # upload is not finished but cancelled, as the push will not put its manifest.
            _check_stop(stop)
            _close_upload(reg, repository, location, digest)
        except BaseException:
            _cancel_upload(reg, repository, location)
            raise
        return "uploaded"

    status = retrying(f"pushing blob {digest}", attempt, stop=stop)
    on_blob(digest, size, size, status)
    return BlobStatus(digest, size, status)


def push_bytes(reg: Registry, repository: str, data: bytes, on_blob: OnBlob = _quiet) -> BlobStatus:
    """Make ``repository`` hold the blob ``data`` (a config): HEAD, else POST/PATCH/PUT."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()

    def attempt() -> str:
        if _blob_exists(reg, repository, digest, len(data)):
            return "exists"
        location = _open_upload(reg, repository, digest, [])
        assert location is not None
        try:
            if data:
                location = _patch(reg, repository, location, data, 0, len(data))
            _close_upload(reg, repository, location, digest)
        except BaseException:
            _cancel_upload(reg, repository, location)
            raise
        return "uploaded"

    status = retrying(f"pushing blob {digest}", attempt)
    on_blob(digest, len(data), len(data), status)
    return BlobStatus(digest, len(data), status)


def fetch_blob(
    reg: Registry,
    repository: str,
    layout: Layout,
    desc: Descriptor,
    *,
    on_blob: OnBlob = _quiet,
    stop: threading.Event | None = None,
) -> BlobStatus:
    """Store the blob ``desc`` of ``repository`` in the layout unless it is there (whole: a
    present blob is hashed, and one that is not the blob its digest names is fetched again and
    replaced); its size and sha256 are checked while it streams into a temporary file, and a
    mismatch stores nothing. Once ``stop`` is set the download ends at its next chunk with
    :class:`Stopped`."""
    digest, size = str(desc["digest"]), int(desc["size"])
    held = layout.holds_blob(desc, stop=None if stop is None else stop.is_set)
    _check_stop(stop)  # a check cut short says nothing
    if held:
        on_blob(digest, size, size, "exists")
        return BlobStatus(digest, size, "exists")

    def attempt() -> None:
        _check_stop(stop)
        response = reg.request(
            "GET",
            f"/v2/{repository}/blobs/{digest}",
            scopes=[pull_scope(repository)],
            # The blob's own bytes: a server (a CDN) that gzips what it sends would have them
            # decoded on the way, and their digest would no longer match.
            headers={"Accept-Encoding": "identity"},
            stream=True,
        )
        done = 0

        def chunks() -> Iterator[bytes]:
            nonlocal done
            with response:
                for chunk in _raw_chunks(response):
                    _check_stop(stop)
                    done += len(chunk)
                    on_blob(digest, done, size, None)
                    yield chunk

        try:
            layout.write_blob_stream(
                chunks(),
                digest=digest,
                size=size,
                where=f"{reg.host}/{repository}: blob {digest}",
            )
        except requests.RequestException as e:
            raise RegistryUnreachableError(
                f"registry {reg.host} broke off sending blob {digest} after {done} bytes"
            ) from e
        except DigestMismatchError as e:
            raise DigestMismatchError(f"{e}; the registry sent wrong bytes, nothing stored") from e

    retrying(f"pulling blob {digest}", attempt, stop=stop)
    on_blob(digest, size, size, "downloaded")
    return BlobStatus(digest, size, "downloaded")


def _raw_chunks(response: requests.Response) -> Iterator[bytes]:
    """The body's bytes as they came, whatever ``Content-Encoding`` says: a blob store that
    labels a gzip layer so (object metadata) must not have it decoded, or its digest fails.
    The errors are those ``iter_content`` raises."""
    import urllib3.exceptions

    try:
        yield from response.raw.stream(_CHUNK, decode_content=False)
    except urllib3.exceptions.ProtocolError as e:
        raise requests.exceptions.ChunkedEncodingError(e) from e
    except urllib3.exceptions.ReadTimeoutError as e:
        raise requests.exceptions.ConnectionError(e) from e
    except urllib3.exceptions.SSLError as e:
        raise requests.exceptions.SSLError(e) from e


class LayerStream:
    """An upload fed through a pipe: the core writes the layer to :attr:`fd` while a thread
    reads the pipe into 16 MiB chunks and another PATCHes them, so nothing of the layer is kept
    on disk and at most a few chunks are in memory.

    Once the layer is written, :meth:`end_of_layer` closes the write end and waits for the
    last chunk; :meth:`close` then finishes the upload with the digest, known only then.
    """

    def __init__(self, reg: Registry, repository: str, on_blob: OnBlob = _quiet) -> None:
        """Open the upload session and the pipe."""
        self.reg = reg
        self.repository = repository
        self.on_blob = on_blob
        location = retrying("opening an upload", lambda: _open_upload(reg, repository, "", []))
        assert location is not None  # no mount was asked for
        self.location = location
        read_fd, self.fd = os.pipe()
        with contextlib.suppress(OSError):  # a bigger pipe: fewer wake-ups (Linux only)
            import fcntl

            fcntl.fcntl(self.fd, fcntl.F_SETPIPE_SZ, 1 << 20)
        self._reader = os.fdopen(read_fd, "rb", buffering=0)
        self._chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=2)
        self._error: BaseException | None = None
        self._aborted = threading.Event()
        self._closed = False  # finished or cancelled: no DELETE is due
        self.sent = 0
        self._pump = threading.Thread(target=self._read_pipe, name="layerdiff-pipe", daemon=True)
        self._upload = threading.Thread(target=self._send, name="layerdiff-upload", daemon=True)
        self._pump.start()
        self._upload.start()

    def _read_pipe(self) -> None:
        try:
            while self._error is None and not self._aborted.is_set():
                buf = bytearray()
                while len(buf) < _PATCH_CHUNK:
                    piece = self._reader.read(_PATCH_CHUNK - len(buf))
                    if not piece:
                        break
                    buf += piece
                if not buf:
                    break
                self._chunks.put(bytes(buf))
        except BaseException as e:
            self._error = self._error or e
        finally:
            self._chunks.put(None)
            # A writer blocked on a full pipe gets EPIPE once nobody reads: it stops too.
            self._reader.close()

    def _send(self) -> None:
        try:
            while (chunk := self._chunks.get()) is not None:
                if self._error is not None or self._aborted.is_set():
                    continue  # drain so the pump never blocks
                self._send_chunk(chunk)
                self.sent += len(chunk)
                self.on_blob(STREAMED_LAYER, self.sent, 0, None)
        except BaseException as e:
            self._error = self._error or e  # the pump stops reading after its current chunk
            while self._chunks.get() is not None:
                pass
        if self._error is not None or self._aborted.is_set():
            _cancel_upload(self.reg, self.repository, self.location)

    def _send_chunk(self, chunk: bytes) -> None:
        """PATCH ``chunk`` at :attr:`sent`; a failure that retrying can mend is retried (the
        chunk is in memory) once the session says it holds no byte of the failed attempt."""
        tries = 0

        def attempt() -> str:
            nonlocal tries
            tries += 1
            if tries > 1:
                try:
                    held = _upload_offset(self.reg, self.repository, self.location, self.sent)
                except RegistryError as e:
                    if e.status != 404:
                        raise
                    # The address a registry gives changes with each chunk it takes: it took
                    # the one whose answer was lost, and the new address went with the answer.
                    raise RegistryError(
                        f"{self.reg.host}: the answer to a chunk was lost, and the upload is "
                        "no longer found at its last address (the registry may have taken the "
                        "chunk); it cannot go on (commit again)",
                        status=404,
                    ) from e
                if held != self.sent:
                    raise RegistryError(
                        f"{self.reg.host}: the upload kept {held - self.sent} bytes of a failed "
                        "chunk; it cannot go on (commit again)"
                    )
            return _patch(self.reg, self.repository, self.location, chunk, self.sent, len(chunk))

        self.location = retrying(
            f"sending the layer to {self.repository}", attempt, stop=self._aborted
        )

    def end_of_layer(self) -> None:
        """Close the write end (the pipe's reader then sees the end) and wait for the last
        chunk to be sent."""
        with contextlib.suppress(OSError):
            os.close(self.fd)
        self._pump.join()
        self._upload.join()

    def abort(self) -> None:
        """The layer will not be finished (interrupted, or its writer failed): send nothing
        more, and wait at most a moment for a chunk being sent (a registry may have stopped
        answering; the threads are daemons and end with the request)."""
        self._aborted.set()
        with contextlib.suppress(OSError):
            os.close(self.fd)
        deadline = time.monotonic() + _ABORT_GRACE
        for thread in (self._pump, self._upload):
            thread.join(max(0.0, deadline - time.monotonic()))

    def cancel(self) -> None:
        """Give the upload up: :meth:`abort`, then cancel the session (``DELETE``, best effort)
        unless :meth:`close` finished or cancelled it already."""
        self.abort()
        if not self._closed:
            self._closed = True
            _cancel_upload(self.reg, self.repository, self.location)

    def raise_error(self) -> None:
        """Raise the upload's failure, if it had one (it is the cause of a writer's EPIPE)."""
        if self._error is not None:
            raise self._error

    def close(self, digest: str, size: int) -> BlobStatus:
        """Finish the upload as blob ``digest`` of ``size`` bytes (after leaving the context);
        an upload that cannot be finished is cancelled."""
        self.raise_error()
        tries = 0

        def attempt() -> None:
            nonlocal tries
            tries += 1
            # A PUT whose answer was lost may have stored the blob: then it is there.
            if tries > 1 and _blob_exists(self.reg, self.repository, digest, size):
                return
            _close_upload(self.reg, self.repository, self.location, digest)

        try:
            if self.sent != size:
                raise RegistryError(
                    f"{self.reg.host}: sent {self.sent} bytes of a {size}-byte layer"
                )
            retrying(f"finishing the layer upload to {self.repository}", attempt)
        except BaseException:
            self._closed = True
            _cancel_upload(self.reg, self.repository, self.location)
            raise
        self._closed = True
        self.on_blob(digest, size, size, "uploaded")
        return BlobStatus(digest, size, "uploaded")
