"""OCI image layouts: ``oci-layout``, ``index.json`` and content-addressed ``blobs/sha256/``.

Writes are crash-safe: every file is written to a temporary name, fsynced and renamed into
place (then the directory is fsynced), so a reader sees the old or the new file, never half of
one. ``index.json`` is read, changed and written back under an exclusive ``flock`` on a lock file
inside the layout, so commits running in parallel never lose each other's tags.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import re
import stat
import tempfile
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from layerdiff import _core
from layerdiff.errors import (
    DigestMismatchError,
    FormatError,
    ImageNotFoundError,
    InvalidReferenceError,
    LayerdiffError,
    LayerdiffOSError,
)
from layerdiff.refs import pinned_digest, store_layout_path

__all__ = [
    "INDEX_DIGEST",
    "INDEX_MEDIA_TYPE",
    "REF_NAME",
    "Descriptor",
    "Layout",
    "check_digest",
    "gc_lock",
    "write_atomic",
    "writing",
]

#: Annotation of a manifest that was picked, for this machine's platform, from a
#: multi-platform index: the index's digest, which names the image as well (``NAME@DIGEST``).
INDEX_DIGEST = "dev.layerdiff.index.digest"

#: Media type of ``index.json`` (an OCI image index).
INDEX_MEDIA_TYPE = "application/vnd.oci.image.index.v1+json"
#: The annotation that names (tags) an image in ``index.json``.
REF_NAME = "org.opencontainers.image.ref.name"
#: A content descriptor: ``mediaType``, ``digest``, ``size`` and optional ``annotations``.
Descriptor = dict[str, Any]

_LAYOUT_FILE = "oci-layout"
_LAYOUT_VERSION = "1.0.0"
_INDEX_FILE = "index.json"
_LOCK_FILE = ".layerdiff.lock"  # extra files are allowed in a layout; tools ignore them
_GC_LOCK = ".layerdiff.gc.lock"
#: Taken before the collector's lock, exclusively by a collector, shared (for a moment) by a
#: writer: once a collector waits, writers that come after it wait behind it, rather than
#: keep the collector's lock shared for ever under a steady stream of commits.
_GC_GATE = ".layerdiff.gc.gate"
#: Errors of a write that found no room.
_FULL = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
#: Room the default store keeps for itself (allocated, never read), given up when removing
#: names finds the file system full: ``rmi`` must write a new ``index.json`` before it can
#: free any blob, and would otherwise fail on the full disk it is run to clear.
_RESERVE = ".layerdiff.reserve"
#: Least size of the reserve; it is kept at twice the index's size when that is more.
_RESERVE_MIN = 64 << 10
_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_JSON_MAX = 64 << 20  # index.json larger than this is not something we wrote or want to parse


def check_digest(digest: str) -> str:
    """Return the hex part of a ``sha256:<64 hex>`` digest; raise FormatError otherwise.

    Digests come from files other tools wrote; checking them before they become a path keeps a
    hostile ``index.json`` from naming a file outside ``blobs/``.
    """
    if not isinstance(digest, str) or not _DIGEST_RE.fullmatch(digest):
        raise FormatError(f"{digest!r}: not a sha256 digest (expected sha256:<64 hex digits>)")
    return digest[len("sha256:") :]


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``: temporary file beside it, fsync, rename, fsync the directory."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; blobs and index are meant to be readable
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.filename is None:
            e.filename = str(path)  # a write or fsync error (ENOSPC) names no file by itself
        raise
    _fsync_dir(path.parent)


#: Public name of the atomic file write, for small files other modules keep in a layout.
write_atomic = _write_atomic


def _ours(name: str) -> bool:
    """A name a layout being created (or an interrupted creation) may already hold."""
    return name in ("blobs", _INDEX_FILE) or name.startswith(
        (".layerdiff.", f".{_INDEX_FILE}.", f".{_LAYOUT_FILE}.")
    )


def _holds(path: Path, data: bytes) -> bool:
    """Whether the file at ``path`` holds ``data`` exactly (a small blob: read back whole)."""
    try:
        with path.open("rb") as f:
            return f.read(len(data) + 1) == data
    except OSError:
        return False


class Layout:
    """An OCI image layout directory."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        """Wrap the layout at ``path`` (use :meth:`open` or :meth:`create` to check it)."""
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"Layout({str(self.path)!r})"

    # -- opening -------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> Layout:
        """Open an existing layout; raise ImageNotFoundError if ``path`` holds none."""
        layout = cls(path)
        marker = layout.path / _LAYOUT_FILE
        if not marker.is_file():
            raise ImageNotFoundError(f"{layout.path}: no OCI image layout here (no oci-layout)")
        return layout

    @classmethod
    def create(cls, path: str | os.PathLike[str]) -> Layout:
        """Open the layout at ``path``, creating the directory and its files if missing.

        Safe when several processes create the same layout at once: creation happens under the
        layout's lock, and ``oci-layout`` is written last, so a directory holding it is complete.
        """
        layout = cls(path)
        marker = layout.path / _LAYOUT_FILE
        if marker.is_file():
            if not layout.blobs_dir.is_dir():  # a layout another tool wrote without blobs yet
                layout.blobs_dir.mkdir(parents=True, exist_ok=True)
            return layout
        try:
            layout.path.mkdir(parents=True, exist_ok=True)
        except FileExistsError:  # a file where the layout would be
            raise NotADirectoryError(
                errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(layout.path)
            ) from None
        layout._refuse_foreign()  # before the lock file is made: leave a foreign dir untouched
        with layout._locked():
            if marker.exists():
                return layout
            layout._refuse_foreign()
            layout.blobs_dir.mkdir(parents=True, exist_ok=True)
            if not (layout.path / _INDEX_FILE).exists():
                layout._write_index(
                    {"schemaVersion": 2, "mediaType": INDEX_MEDIA_TYPE, "manifests": []}
                )
            body = json.dumps({"imageLayoutVersion": _LAYOUT_VERSION}).encode()
            _write_atomic(marker, body)
        return layout

    @classmethod
    @contextlib.contextmanager
    def create_for_write(cls, path: str | os.PathLike[str]) -> Iterator[Layout]:
        """:meth:`create` for a command that writes an image into the layout: if the command
        fails and the layout was created for it, what was created is removed again, so a
        failed command leaves no empty layout behind. Not if it holds a blob or an image by
        then (another writer is using it too)."""
        made: list[Path] = []  # directories this creates, outermost first
        p = Path(os.path.abspath(path))
        while not os.path.lexists(p):
            made.insert(0, p)
            p = p.parent
        new = not (Path(path) / _LAYOUT_FILE).is_file()
        layout = cls.create(path)
        try:
            yield layout
        except BaseException:
            if new:
                with contextlib.suppress(OSError, LayerdiffError):
                    layout._remove_if_unused(made)
            raise

    def _remove_if_unused(self, made: list[Path]) -> None:
        """Remove the layout's own files if it holds no blob and no image, then the directories
        in ``made`` that are empty by then, innermost first.

        Only while no command writes into it: under the collector's lock, taken exclusively
        without waiting (a writer holds it shared), and the index lock. A writer that made the
        layout too and has not taken its lock yet finds it gone when it does, and makes it
        again (see :func:`writing`); one waiting on a lock file removed here opens the new one
        (see :func:`_lock_fd`)."""
        try:
            gc_fd = _gc_lock_fd(self.path, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return  # in use
        try:
            with self._locked():
                if self.manifests() or any(self.blobs_dir.iterdir()):
                    return
                self.blobs_dir.rmdir()
                self.blobs_dir.parent.rmdir()
                for name in (_LAYOUT_FILE, _INDEX_FILE):
                    (self.path / name).unlink()
                for extra in self.path.iterdir():
                    if extra.name.startswith(".layerdiff.") and extra.is_file():
                        extra.unlink()  # lock files, two of them held here
        finally:
            os.close(gc_fd)
        for d in reversed(made):
            try:
                d.rmdir()
            except OSError:
                return  # not empty: someone else's now

    def same_as(self, other: Layout) -> bool:
        """Whether ``other`` is this very layout, under whatever path (false if either is
        missing)."""
        try:
            return os.path.samefile(self.path, other.path)
        except FileNotFoundError:
            return False

    def _refuse_foreign(self) -> None:
        """Never scatter blobs/ and index.json into a directory that holds something else.

        Another process may finish creating the layout while it is listed: it writes
        ``oci-layout`` before anything else goes in, so a name that is not ours, with the
        marker present after the listing, belongs to a layout, not to a foreign directory.
        """
        if (
            any(not _ours(p.name) for p in self.path.iterdir())
            and not (self.path / _LAYOUT_FILE).is_file()
        ):
            raise FormatError(f"{self.path}: exists and is not an OCI image layout (not empty)")

    # -- blobs ---------------------------------------------------------------------------------

    @property
    def blobs_dir(self) -> Path:
        """``blobs/sha256``: where blobs are stored by the hex of their digest."""
        return self.path / "blobs" / "sha256"

    def blob_path(self, digest: str) -> Path:
        """Path of the blob ``digest`` (which may not exist)."""
        return self.blobs_dir / check_digest(digest)

    def has_blob(self, digest: str) -> bool:
        """Whether the blob ``digest`` is present."""
        return self.blob_path(digest).is_file()

    def put_blob(
        self,
        data: bytes,
        *,
        media_type: str,
        annotations: dict[str, str] | None = None,
    ) -> Descriptor:
        """Store ``data`` (skipped when already present) and return its descriptor."""
        digest = _core.sha256(data)
        path = self.blob_path(digest)
        if not _holds(path, data):  # absent, or damaged: written whole again
            self.blobs_dir.mkdir(parents=True, exist_ok=True)
            _write_atomic(path, data)
        desc: Descriptor = {"mediaType": media_type, "digest": digest, "size": len(data)}
        if annotations:
            desc["annotations"] = dict(annotations)
        return desc

    def check_blob(self, desc: Descriptor, *, stop: Callable[[], bool] | None = None) -> None:
        """Raise unless the blob ``desc`` names is here whole: a regular file (no symbolic link
        followed) of its size (when ``desc`` gives one), hashing to its digest. ``stop`` is
        asked between chunks; once it says so, the check ends quietly, having found nothing
        wrong so far."""
        import hashlib  # a file of any size: OpenSSL's, loaded only for it

        digest = str(desc["digest"])
        size = int(desc["size"]) if "size" in desc else None
        path = self.blob_path(digest)
        try:
            fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
        except FileNotFoundError as e:
            raise ImageNotFoundError(f"{path}: blob {digest} is missing from the layout") from e
        except OSError as e:
            raise LayerdiffOSError(
                e.errno, f"opening blob {digest}: {e.strerror}", str(path)
            ) from None
        with os.fdopen(fd, "rb") as f:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise FormatError(f"{path}: blob {digest} is not a regular file")
            if size is not None and st.st_size != size:
                raise DigestMismatchError(
                    f"{path}: size mismatch (expected {size} bytes, found {st.st_size})"
                )
            h = hashlib.sha256()
            while chunk := f.read(1 << 20):
                if stop is not None and stop():
                    return
                h.update(chunk)
        found = "sha256:" + h.hexdigest()
        if found != digest:
            raise DigestMismatchError(f"{path}: digest mismatch (expected {digest}, found {found})")

    def holds_blob(self, desc: Descriptor, *, stop: Callable[[], bool] | None = None) -> bool:
        """Whether the blob ``desc`` names is here whole (see :meth:`check_blob`): one damaged
        on disk (a flipped bit, a block of zeros) keeps its size, so it is hashed. A digest
        that is not one is an error (FormatError), not an absent blob."""
        self.blob_path(str(desc["digest"]))
        try:
            self.check_blob(desc, stop=stop)
        except (LayerdiffError, OSError):
            return False
        return True

    def read_blob(self, digest: str, *, limit: int = _JSON_MAX) -> bytes:
        """Read a (small) blob and check that it hashes to ``digest``."""
        path = self.blob_path(digest)
        try:
            with path.open("rb") as f:
                data = f.read(limit + 1)
        except FileNotFoundError as e:
            raise ImageNotFoundError(f"{path}: blob {digest} is missing from the layout") from e
        if len(data) > limit:
            raise FormatError(f"{path}: blob larger than {limit} bytes")
        found = _core.sha256(data)
        if found != digest:
            raise DigestMismatchError(f"{path}: digest mismatch (expected {digest}, found {found})")
        return data

    def read_json(self, desc: Descriptor) -> dict[str, Any]:
        """Read and parse the JSON blob a descriptor points at."""
        digest = desc.get("digest")
        if not isinstance(digest, str):
            raise FormatError(f"{self.path}: descriptor without digest: {desc!r}")
        data = self.read_blob(digest)
        try:
            obj = json.loads(data)
        except ValueError as e:
            raise FormatError(f"{self.blob_path(digest)}: not JSON: {e}") from e
        except RecursionError:
            raise FormatError(f"{self.blob_path(digest)}: JSON nested too deeply") from None
        if not isinstance(obj, dict):
            raise FormatError(f"{self.blob_path(digest)}: expected a JSON object")
        return obj

    def write_blob_stream(
        self,
        chunks: Iterable[bytes],
        *,
        digest: str | None = None,
        size: int | None = None,
        where: str = "",
    ) -> tuple[str, int]:
        """Store the blob made of ``chunks``; return its (digest, size).

        The bytes go to a temporary file in ``blobs/sha256`` (a name ``gc`` removes when a crash
        leaves it), hashed on the way; then fsync and rename to the digest's name. With
        ``digest`` (and ``size``) the stream must match them: more bytes than ``size`` stop the
        write at once, and a mismatch raises DigestMismatchError (naming ``where``) with nothing
        stored.
        """
        if digest is not None:
            check_digest(digest)
        import hashlib  # a stream of any size: OpenSSL's, loaded only for it

        self.blobs_dir.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.blobs_dir, prefix=".tmp-blob-", suffix=".tmp")
        try:
            h = hashlib.sha256()
            n = 0
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    n += len(chunk)
                    if size is not None and n > size:
                        raise DigestMismatchError(
                            f"{where or digest}: more than the {size} bytes its descriptor says"
                        )
                    h.update(chunk)
                    out.write(chunk)
                found = "sha256:" + h.hexdigest()
                if size is not None and n != size:
                    raise DigestMismatchError(
                        f"{where or digest}: {n} bytes, its descriptor says {size}"
                    )
                if digest is not None and found != digest:
                    raise DigestMismatchError(
                        f"{where or digest}: digest mismatch (expected {digest}, found {found})"
                    )
                out.flush()
                os.fsync(out.fileno())
            os.chmod(tmp, 0o644)
            os.replace(tmp, self.blob_path(found))
        except BaseException as e:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            if isinstance(e, OSError) and e.filename is None and e.errno in _FULL:
                e.filename = str(self.blobs_dir)  # a write error (ENOSPC) names no file itself
            raise
        _fsync_dir(self.blobs_dir)
        return found, n

    def import_blob(self, source: Layout, digest: str) -> None:
        """Make blob ``digest`` of layout ``source`` present here: a copy of its own, checked
        against the digest on the way. Never a hard link: the two layouts may belong to
        different users, and a change to one's blob must not reach the other's. One already
        here is hashed first: damaged on disk (its size kept), it is copied again."""
        if self.holds_blob({"digest": digest}):
            return
        src = source.blob_path(digest)
        try:
            f = src.open("rb")
        except FileNotFoundError as e:
            raise ImageNotFoundError(f"{src}: blob {digest} is missing from the layout") from e
        with f:
            chunks = iter(lambda: f.read(1 << 20), b"")
            self.write_blob_stream(chunks, digest=digest, where=str(src))

    # -- index.json ------------------------------------------------------------------------------

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """The layout's exclusive lock (the one ``index.json`` updates hold), for other small
        files kept beside the index that are read, changed and written back."""
        return self._locked()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """The index lock: held by whatever writes ``index.json`` or ``oci-layout``."""
        fd = _lock_fd(self.path / _LOCK_FILE, fcntl.LOCK_EX)
        try:
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def index_lock(self) -> contextlib.AbstractContextManager[None]:
        """The lock ``index.json`` is written under (its temporary files too)."""
        return self._locked()

    def read_index(self) -> dict[str, Any]:
        """The parsed ``index.json``."""
        path = self.path / _INDEX_FILE
        try:
            with path.open("rb") as f:
                data = f.read(_JSON_MAX + 1)
        except FileNotFoundError as e:
            raise ImageNotFoundError(f"{path}: missing; not an OCI image layout") from e
        try:
            index = json.loads(data)
        except ValueError as e:
            raise FormatError(f"{path}: not JSON: {e}") from e
        except RecursionError:
            raise FormatError(f"{path}: JSON nested too deeply") from None
        if not isinstance(index, dict) or index.get("schemaVersion") != 2:
            raise FormatError(f"{path}: not an OCI image index (schemaVersion 2 expected)")
        manifests = index.setdefault("manifests", [])
        if not isinstance(manifests, list) or not all(isinstance(m, dict) for m in manifests):
            raise FormatError(f"{path}: 'manifests' is not a list of descriptors")
        return index

    def _write_index(self, index: dict[str, Any], *, freeing: bool = False) -> None:
        data = json.dumps(index, separators=(",", ":"), ensure_ascii=False).encode()
        try:
            _write_atomic(self.path / _INDEX_FILE, data)
        except OSError as e:
            # Removing names on a full file system: the reserve makes room for the new index
            # (kept again by the gc that follows, once blobs are freed).
            if not (freeing and e.errno in _FULL and self._give_up_reserve()):
                raise
            _write_atomic(self.path / _INDEX_FILE, data)

    def update_index(
        self, change: Callable[[list[Descriptor]], list[Descriptor]], *, freeing: bool = False
    ) -> None:
        """Replace the index's manifest list by ``change(manifests)``, atomically and locked.
        ``freeing``: the change only removes entries, and may use the layout's reserve (see
        :meth:`keep_reserve`) when the file system is full."""
        with self._locked():
            index = self.read_index()
            index["manifests"] = change(list(index["manifests"]))
            index.setdefault("mediaType", INDEX_MEDIA_TYPE)
            self._write_index(index, freeing=freeing)

    def keep_reserve(self) -> None:
        """Keep a reserve of allocated room in the layout (twice the index's size, at least
        64 KiB), for removing names on a full file system. Done when there is room: a reserve
        that cannot be made is not an error."""
        path = self.path / _RESERVE
        had = True
        try:
            want = max(_RESERVE_MIN, 2 * (self.path / _INDEX_FILE).stat().st_size)
            if path.stat().st_size >= want:
                return
        except FileNotFoundError:
            had = False
        except OSError:
            return
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError:
            return
        try:
            os.posix_fallocate(fd, 0, want)
        except OSError:
            # No room now: a reserve there was is kept as it is (smaller is better than none);
            # a new one goes, and the next command that frees room makes it.
            if not had:
                with contextlib.suppress(OSError):
                    os.unlink(path)
        finally:
            os.close(fd)

    def _give_up_reserve(self) -> bool:
        """Remove the reserve; whether there was one."""
        try:
            os.unlink(self.path / _RESERVE)
        except OSError:
            return False
        return True

    def manifests(self) -> list[Descriptor]:
        """The descriptors listed in ``index.json``."""
        return list(self.read_index()["manifests"])

    def tags(self) -> list[str]:
        """Every tag (``org.opencontainers.image.ref.name``) in the index, in index order."""
        return [t for m in self.manifests() if (t := tag_of(m)) is not None]

    def resolve(self, tag: str | None) -> Descriptor:
        """The descriptor tagged ``tag``; ``None`` means the layout's only image.

        ``None`` on a layout with several images picks ``latest`` when it is tagged, and is an
        error otherwise.
        """
        manifests = self.manifests()
        if tag is None:
            if len(manifests) == 1:
                return dict(manifests[0])
            tag = "latest"
            if not any(tag_of(m) == tag for m in manifests):
                n = len(manifests)
                raise ImageNotFoundError(
                    f"{self.path}: holds {n} images and none tagged latest; name one as "
                    "oci:PATH:TAG"
                    if n
                    else f"{self.path}: holds no image"
                )
        found = [m for m in manifests if tag_of(m) == tag]
        if not found:
            raise ImageNotFoundError(f"{self.path}: no image tagged {tag!r}")
        digests = sorted({str(m.get("digest")) for m in found})
        if len(digests) > 1:
            # A layout docker 25 saves names each image by its tag alone; which one is meant
            # cannot be told from the name (umoci refuses it too).
            raise InvalidReferenceError(
                f"{self.path}: {len(digests)} images are tagged {tag!r} ({', '.join(digests)}); "
                "which one is meant cannot be told from the name"
            )
        return dict(found[0])

    def set_tag(self, tag: str, descriptor: Descriptor) -> None:
        """Point ``tag`` at ``descriptor``, replacing whatever the tag named before. A tag
        written ``NAME@DIGEST`` (a store image pulled by digest) only names that digest. An
        untagged entry of the digest (:meth:`add_untagged`) goes: as docker's ``<none>`` row,
        it was only there for want of a name."""
        check_digest(descriptor["digest"])
        pinned = pinned_digest(tag)
        picked_from = (descriptor.get("annotations") or {}).get(INDEX_DIGEST)
        if pinned is not None and pinned not in (descriptor["digest"], picked_from):
            raise InvalidReferenceError(
                f"{tag}: the reference pins {pinned}, but the image's manifest is "
                f"{descriptor['digest']}"
            )
        entry = dict(descriptor)
        entry["annotations"] = {**descriptor.get("annotations", {}), REF_NAME: tag}
        bare = {k: v for k, v in descriptor.items() if k != "annotations"}
        self.update_index(lambda ms: [m for m in ms if tag_of(m) != tag and m != bare] + [entry])

    def add_untagged(self, descriptor: Descriptor) -> None:
        """List ``descriptor`` in the index without a tag (``docker load`` of an untagged
        image), unless the index lists its digest already, tagged or not."""
        check_digest(descriptor["digest"])
        entry = {k: v for k, v in descriptor.items() if k != "annotations"}

        def change(ms: list[Descriptor]) -> list[Descriptor]:
            known = any(m.get("digest") == entry["digest"] for m in ms)
            return ms if known else [*ms, entry]

        self.update_index(change)

    def remove_tag(self, tag: str, *, digest: str | None = None) -> bool:
        """Remove ``tag`` from the index (only where it names ``digest``, when given); return
        whether it was there. Blobs stay (gc's job)."""
        removed = False

        def change(ms: list[Descriptor]) -> list[Descriptor]:
            nonlocal removed
            kept = [m for m in ms if tag_of(m) != tag or digest not in (None, m.get("digest"))]
            removed = len(kept) != len(ms)
            return kept

        self.update_index(change, freeing=True)
        return removed


def tag_of(desc: Descriptor) -> str | None:
    """The tag (``org.opencontainers.image.ref.name``) of an index entry, if it has one."""
    annotations = desc.get("annotations")
    if isinstance(annotations, dict):
        tag = annotations.get(REF_NAME)
        if isinstance(tag, str):
            return tag
    return None


@contextlib.contextmanager
def gc_lock(layout: Layout, mode: int) -> Iterator[None]:
    """The layout's collector lock, held in ``mode`` (``fcntl.LOCK_SH`` or ``LOCK_EX``)."""
    fd = _gc_lock_fd(layout.path, mode)
    try:
        yield
    finally:
        os.close(fd)


def _gc_lock_fd(path: Path, mode: int) -> int:
    """A descriptor of the collector's lock of the layout at ``path``, locked in ``mode``,
    taken through the gate (:data:`_GC_GATE`): in the mode's kind, and given up once the lock
    is held. (flock queues nobody: without it, shared holders coming and going would keep an
    exclusive request waiting as long as they come.)"""
    kind = fcntl.LOCK_EX if mode & fcntl.LOCK_EX else fcntl.LOCK_SH
    gate = _lock_fd(path / _GC_GATE, kind | (mode & fcntl.LOCK_NB))
    try:
        return _lock_fd(path / _GC_LOCK, mode)
    finally:
        os.close(gate)


def _lock_fd(path: Path, mode: int) -> int:
    """A descriptor of the lock file ``path``, locked in ``mode`` (``flock``). A lock file
    removed while it was waited for (with the layout a failed command made and nobody used)
    locks nothing any more: the one at ``path`` now is opened and waited for instead."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, mode)
            held = os.fstat(fd)
            try:
                now = os.stat(path)
            except FileNotFoundError:
                now = None
        except BaseException:
            os.close(fd)
            raise
        if now is not None and (now.st_dev, now.st_ino) == (held.st_dev, held.st_ino):
            return fd
        os.close(fd)


@contextlib.contextmanager
def writing(layout: Layout) -> Iterator[None]:
    """Held (shared) by a command from its first blob write to its tag: gc waits for it.

    The layout is whole while it is held: one that a failed command removed (it had made it,
    and found it unused) before this took the lock is made again first."""
    for _ in range(100):
        try:
            fd = _gc_lock_fd(layout.path, fcntl.LOCK_SH)
        except FileNotFoundError:  # the directory went with the layout
            Layout.create(layout.path)
            continue
        # Removed by a failed command: its marker goes with it (and it goes first). Without
        # its index, a layout is broken instead, which reading the index then says.
        if (layout.path / _LAYOUT_FILE).exists():
            try:
                yield
            finally:
                os.close(fd)
            if layout.path == store_layout_path():
                layout.keep_reserve()
            return
        os.close(fd)
        Layout.create(layout.path)
    raise LayerdiffOSError(errno.EAGAIN, "the layout keeps being removed", str(layout.path))
