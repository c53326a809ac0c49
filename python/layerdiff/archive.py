"""``docker save`` tarballs (docker-archive): ``save`` writes one, ``load`` imports one.

What ``save`` writes is the form every reader takes (``docker load``, skopeo's
``docker-archive:``): ``manifest.json`` (``[{"Config", "RepoTags", "Layers"}]``), the config as
``<hex>.json`` and each layer *uncompressed* as ``<diff_id hex>.tar``, since readers check a
layer file's sha256 against the config's diff_id. Layers are decompressed by the core, which
checks their digest and diff_id on the way. The archive is written to a temporary name and
renamed, so a failed save leaves no partial file.

``load`` reads ``manifest.json``, which both forms of ``docker save`` carry: the legacy one
(``<id>/layer.tar``) and the OCI-layout one docker 25+ writes (``blobs/sha256/<hex>``, with
``manifest.json`` beside ``index.json``). Layers are stored as they are in the archive
(usually uncompressed tar; gzip and zstd are recognised by their first bytes), each checked
against its diff_id, and the image gets a new OCI manifest. As in a pull, the tags are set
last, while holding the store's writer lock.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import tarfile
import tempfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, TypeVar

from layerdiff import _core, refs
from layerdiff.catalog import Image, load_image
from layerdiff.errors import (
    DigestMismatchError,
    FormatError,
    ImageNotFoundError,
    InvalidReferenceError,
    LayerdiffError,
    LayerdiffOSError,
)
from layerdiff.image import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    build_manifest,
    canonical_json,
    check_layer_media_types,
    config_diff_ids,
    short_json,
)
from layerdiff.layout import Layout, writing

__all__ = ["LoadResult", "SaveResult", "load", "load_all", "save"]

_JSON_MAX = 64 << 20
_LINK_HOPS = 40  # links followed to reach one member: the kernel's limit for a path (MAXSYMLINKS)
_LAYER_TYPES = {
    b"\x1f\x8b": "application/vnd.oci.image.layer.v1.tar+gzip",
    b"\x28\xb5\x2f\xfd": "application/vnd.oci.image.layer.v1.tar+zstd",
}


@dataclass(frozen=True, kw_only=True)
class SaveResult:
    """What ``save`` wrote."""

    #: The archive file.
    file: Path
    #: Its ``RepoTags`` (empty: the image loads untagged).
    repo_tags: tuple[str, ...]
    #: The image's config digest (docker's image ID).
    config_digest: str
    #: Number of layers.
    layers: int


@dataclass(frozen=True, kw_only=True)
class LoadResult:
    """What ``load`` imported."""

    #: The local images it was tagged as (none: loaded untagged into the store).
    images: tuple[str, ...]
    #: Digest of the new OCI manifest.
    manifest_digest: str
    #: Digest of the config.
    config_digest: str
    #: Layer digests as stored, bottom first.
    layers: tuple[str, ...]


def _archive_ref(text: str | refs.ArchiveRef) -> refs.ArchiveRef:
    ref = refs.parse_reference(text) if isinstance(text, str) else text
    if not isinstance(ref, refs.ArchiveRef):
        raise InvalidReferenceError(
            f"invalid archive reference {str(ref)!r}: expected docker-archive:FILE[:NAME:TAG]"
        )
    return ref


def _member(name: str, size: int, mode: int = 0o644) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = size, mode, 0
    return info


def save(image: str | refs.LayoutRef, archive: str | refs.ArchiveRef) -> SaveResult:
    """Write ``image`` as the ``docker save`` tarball ``archive``
    (``docker-archive:FILE[:NAME:TAG]``; NAME:TAG becomes its tag, else a store image's own)."""
    ref = _archive_ref(archive)
    local = load_image(image)
    if ref.name is not None:
        repo_tags = [f"{ref.name}:{ref.tag}"]
    elif local.ref.in_store and local.ref.tag is not None and local.ref.pinned is None:
        repo_tags = [local.ref.tag]  # an image named by digest has no tag to give (as docker)
    else:
        repo_tags = []
    config_digest = str(local.manifest["config"]["digest"])
    config = local.layout.read_blob(config_digest)
    diff_ids = local.config.get("rootfs", {}).get("diff_ids") or []
    if len(diff_ids) != len(local.layers):
        raise FormatError(
            f"{local.ref.text}: {len(local.layers)} layers but {len(diff_ids)} diff_ids"
        )
    check_layer_media_types(local.layers, local.ref.text)
    target = ref.file
    try:
        _write(local, config, repo_tags, diff_ids, target)
    except LayerdiffError:
        raise
    except OSError as e:  # named by the path asked for, not a temporary file beside it
        raise LayerdiffOSError(
            e.errno, f"writing the archive: {e.strerror or e}", str(target)
        ) from e
    return SaveResult(
        file=target,
        repo_tags=tuple(repo_tags),
        config_digest=config_digest,
        layers=len(local.layers),
    )


def _write(
    local: Image, config: bytes, repo_tags: list[str], diff_ids: list[str], target: Path
) -> None:
    """Write the archive ``target`` through a temporary file beside it (beside the file a
    symbolic link leads to, which stays a link). A device or a pipe (``/dev/stdout``) is
    written as it is: there is nothing to rename over it."""
    fd = _descriptor_named(target)
    try:
        st = os.stat(target) if fd is None else None
    except FileNotFoundError:
        st = None
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(target))
    if fd is not None or (st is not None and not stat.S_ISREG(st.st_mode)):
        # This process's own descriptor (/dev/stdout, /dev/fd/3) is written where it stands,
        # as a shell redirection set it up (`>> out.tar` appends); a device or a pipe as it is.
        # Neither is renamed over.
        direct = os.fdopen(os.dup(fd), "wb") if fd is not None else open(target, "wb")  # noqa: SIM115
        with direct as out, tempfile.TemporaryDirectory(prefix="layerdiff-") as work:
            _write_tar(out, local, config, repo_tags, diff_ids, Path(work), stream=True)
        return
    real = Path(os.path.realpath(target))
    # The directory must exist, as for docker save -o and skopeo: a mistyped path is an
    # error, not a new directory tree.
    fd, tmp = tempfile.mkstemp(dir=real.parent, prefix=f".{real.name}.", suffix=".tmp")
    try:
        with (
            os.fdopen(fd, "wb") as out,
            tempfile.TemporaryDirectory(dir=real.parent, prefix=".layerdiff-save-") as work,
        ):
            _write_tar(out, local, config, repo_tags, diff_ids, Path(work))
            out.flush()
            os.fsync(out.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, real)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _descriptor_named(path: Path) -> int | None:
    """The descriptor of this process that ``path`` names (``/dev/stdout``, ``/dev/fd/N``,
    ``/proc/self/fd/N``), if it names one that is open."""
    text = os.path.abspath(path)
    named = {"/dev/stdin": "0", "/dev/stdout": "1", "/dev/stderr": "2"}.get(text)
    for prefix in ("/dev/fd/", "/proc/self/fd/", f"/proc/{os.getpid()}/fd/"):
        if text.startswith(prefix):
            named = text[len(prefix) :]
    if named is None or not named.isdigit():
        return None
    try:
        os.fstat(int(named))
    except OSError:
        return None
    return int(named)


def _write_tar(
    out: IO[bytes],
    local: Image,
    config: bytes,
    repo_tags: list[str],
    diff_ids: list[str],
    work: Path,
    *,
    stream: bool = False,
) -> None:
    """The archive's members into ``out`` (``stream``: one that cannot seek, a pipe); each
    layer's tar is spooled in ``work`` first."""
    config_digest = str(local.manifest["config"]["digest"])
    tar = tarfile.open(  # noqa: SIM115 (closed below: the two modes are two overloads)
        fileobj=out, mode="w|" if stream else "w", format=tarfile.PAX_FORMAT
    )
    with tar:
        config_name = f"{config_digest.removeprefix('sha256:')}.json"
        layer_names: list[str] = []
        for i, (desc, diff_id) in enumerate(zip(local.layers, diff_ids, strict=True)):
            name = f"{str(diff_id).removeprefix('sha256:')}.tar"
            layer_names.append(name)
            if name in layer_names[:-1]:
                continue  # the same layer twice: one file
            tar_path = work / f"layer-{i}"
            blob = local.layout.blob_path(str(desc["digest"]))
            digest, size, found_diff_id, tar_size = _core.decompress_blob(blob, tar_path)
            if (digest, size) != (desc["digest"], desc["size"]) or found_diff_id != diff_id:
                raise DigestMismatchError(
                    f"{blob}: layer {i} is {digest} ({size} bytes) with diff_id "
                    f"{found_diff_id}; expected {desc['digest']} ({desc['size']} bytes) "
                    f"with diff_id {diff_id}"
                )
            with tar_path.open("rb") as f:
                tar.addfile(_member(name, tar_size), f)
            tar_path.unlink()
        tar.addfile(_member(config_name, len(config)), _bytes(config))
        manifest = [{"Config": config_name, "RepoTags": repo_tags, "Layers": layer_names}]
        body = json.dumps(manifest, separators=(",", ":")).encode()
        tar.addfile(_member("manifest.json", len(body)), _bytes(body))


def _bytes(data: bytes) -> IO[bytes]:
    import io

    return io.BytesIO(data)


def _read_member(tar: tarfile.TarFile, name: str, where: str, limit: int = _JSON_MAX) -> bytes:
    f = _open_member(tar, name, where)
    with f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise FormatError(f"{where}: {name} is larger than {limit} bytes")
    return data


def _open_member(tar: tarfile.TarFile, name: str, where: str) -> IO[bytes]:
    """The file member ``name``, through the links docker's legacy form uses for repeated
    layers: a symlink's target is relative to its own directory, a hardlink's to the root."""
    member = name
    try:
        info = _find(tar, member)
        seen = {info.name}
        while info.issym() or info.islnk():
            if len(seen) > _LINK_HOPS:
                raise FormatError(
                    f"{where}: {name!r} is reached through more than {_LINK_HOPS} links"
                )
            base = os.path.dirname(info.name) if info.issym() else ""
            member = os.path.normpath(os.path.join(base, info.linkname))
            info = _find(tar, member)
            if info.name in seen:
                raise FormatError(f"{where}: {name!r} is reached through links that loop")
            seen.add(info.name)
        f = tar.extractfile(info)
    except KeyError as e:
        missing = "" if member == name else f" ({name!r} links to it)"
        raise FormatError(f"{where}: the archive has no {member!r}{missing}") from e
    if f is None:
        raise FormatError(f"{where}: {name!r} is not a file")
    return f


def _find(tar: tarfile.TarFile, name: str) -> tarfile.TarInfo:
    """The member named ``name``, ``./`` prefixes aside (``tar -C dir -cf x.tar .`` writes
    them, and a manifest may name its files so). Of several, the last, as tar extracts them,
    but never a hardlink to its own name: GNU tar stores a file given twice so, and means the
    copy before it."""
    want = _normalized(name)
    found = None
    for m in tar.getmembers():
        if _normalized(m.name) == want and not (m.islnk() and _normalized(m.linkname) == want):
            found = m
    if found is None:
        raise KeyError(name)
    return found


def _normalized(name: str) -> str:
    return os.path.normpath("/" + name).lstrip("/")


def _chunks(f: IO[bytes]) -> Iterator[bytes]:
    while chunk := f.read(1 << 20):
        yield chunk


@dataclass(frozen=True, kw_only=True)
class _Entry:
    """One image of an archive's ``manifest.json``."""

    #: The member holding its config.
    config: str
    #: Its ``RepoTags`` as store names (docker's familiar form, as docker reads them).
    repo_tags: list[refs.LayoutRef]
    #: The members holding its layers, bottom first.
    layers: list[str]


def _entries(data: bytes, where: str) -> list[_Entry]:
    """The images ``manifest.json`` lists, each field checked for the type docker writes."""
    try:
        found = json.loads(data)
    except ValueError as e:
        raise FormatError(f"{where}: manifest.json is not JSON: {e}") from e
    if not isinstance(found, list) or not all(isinstance(e, dict) for e in found):
        raise FormatError(f"{where}: manifest.json is not a list of images")
    return [_entry(e, f"{where}: manifest.json") for e in found]


def _entry(obj: dict[str, Any], where: str) -> _Entry:
    config = obj.get("Config")
    if not isinstance(config, str) or not config:
        raise FormatError(f"{where}: Config is not a file name: {short_json(config)}")
    tags = obj.get("RepoTags")
    if tags is None:  # docker's form of an untagged image
        tags = []
    if not _strings(tags):
        raise FormatError(f"{where}: RepoTags is not a list of names: {short_json(tags)}")
    try:
        repo_tags = [refs.parse_store_reference(t) for t in tags]
    except InvalidReferenceError as e:
        raise FormatError(f"{where}: RepoTags: {e}") from e
    layers = obj.get("Layers")
    if layers is None:
        layers = []
    if not _strings(layers):
        raise FormatError(f"{where}: Layers is not a list of file names: {short_json(layers)}")
    return _Entry(config=config, repo_tags=repo_tags, layers=layers)


def _diff_ids(config: bytes, where: str) -> list[str]:
    """The config's ``rootfs.diff_ids``, checked to be sha256 digests."""
    try:
        obj = json.loads(config)
    except ValueError as e:
        raise FormatError(f"{where}: the image config is not JSON: {e}") from e
    return config_diff_ids(obj, where)


def _strings(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _pick(entries: list[_Entry], ref: refs.ArchiveRef | None, where: str) -> _Entry:
    if ref is not None and ref.name is not None:
        want = f"{ref.name}:{ref.tag}"  # familiar, as docker matches names
        for e in entries:
            if want in [t.tag for t in e.repo_tags]:
                return e
        raise ImageNotFoundError(f"{where}: no image tagged {want} in the archive")
    if len(entries) != 1:
        raise ImageNotFoundError(
            f"{where}: the archive holds {len(entries)} images; name one as "
            "docker-archive:FILE:NAME:TAG"
        )
    return entries[0]


def load(
    archive: str | os.PathLike[str] | refs.ArchiveRef,
    image: str | refs.LayoutRef | None = None,
) -> LoadResult:
    """Import a ``docker save`` tarball (a path, or ``docker-archive:FILE[:NAME:TAG]``) as
    ``image`` (default: each of its ``RepoTags`` in the store). An archive of several images
    (``docker save a b``) needs one named (``docker-archive:FILE:NAME:TAG``); see
    :func:`load_all` for all of them."""
    return _opened(archive, lambda tar, ref, where: _load(tar, ref, image, where))


def load_all(archive: str | os.PathLike[str]) -> tuple[LoadResult, ...]:
    """Import every image of a ``docker save`` tarball, each as its ``RepoTags`` in the store,
    as ``docker load`` does."""

    def every(tar: tarfile.TarFile, _ref: object, where: str) -> tuple[LoadResult, ...]:
        entries = _entries(_read_member(tar, "manifest.json", where), where)
        return tuple(_load_entry(tar, entry, None, where) for entry in entries)

    return _opened(archive, every)


_T = TypeVar("_T")
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


def _opened(
    archive: str | os.PathLike[str] | refs.ArchiveRef,
    work: Callable[[tarfile.TarFile, refs.ArchiveRef | None, str], _T],
) -> _T:
    """``work`` done on the archive opened, a broken one reported as a FormatError."""
    ref: refs.ArchiveRef | None = None
    if isinstance(archive, refs.ArchiveRef):
        ref, path = archive, archive.file
    elif isinstance(archive, str) and archive.startswith("docker-archive:"):
        ref = _archive_ref(archive)
        path = ref.file
    else:
        path = Path(archive)
    where = "standard input" if str(path) == "-" else str(path)
    with contextlib.ExitStack() as stack:
        try:
            if str(path) == "-" or not stat.S_ISREG(os.stat(path).st_mode):
                # A pipe (`docker save x | layerdiff load -`): read out of order, so kept in a
                # temporary file first, as docker load keeps what it is sent.
                spool = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "archive"
                with (
                    open(0 if str(path) == "-" else path, "rb", closefd=str(path) != "-") as src,
                    open(spool, "wb") as dst,
                ):
                    shutil.copyfileobj(src, dst, 1 << 20)
                path = spool
            with open(path, "rb") as f:
                zstd = f.read(4) == _ZSTD_MAGIC
            if zstd:
                # `docker save | zstd`, which docker load takes: tarfile reads gzip, bzip2 and
                # xz itself, and needs to seek, so a zstd archive is decompressed first.
                spool = Path(stack.enter_context(tempfile.TemporaryDirectory())) / "archive.tar"
                _core.decompress_blob(path, spool)
                path = spool
            tar = stack.enter_context(tarfile.open(path, mode="r:*"))
        except tarfile.TarError as e:
            raise FormatError(f"{where}: not a tar archive, plain or compressed") from e
        except OSError as e:
            if isinstance(e, LayerdiffError):
                raise
            raise LayerdiffOSError(e.errno, f"reading the archive: {e.strerror}", where) from e
        try:
            return work(tar, ref, where)
        except (tarfile.TarError, EOFError, zlib.error) as e:
            reason = str(e) or type(e).__name__
            raise FormatError(f"{where}: a truncated or corrupt archive ({reason})") from e


def _load(
    tar: tarfile.TarFile,
    ref: refs.ArchiveRef | None,
    image: str | refs.LayoutRef | None,
    where: str,
) -> LoadResult:
    entry = _pick(_entries(_read_member(tar, "manifest.json", where), where), ref, where)
    if image is None and ref is not None and ref.name is not None:
        # The image named, under that name alone: not its other tags as well.
        want = f"{ref.name}:{ref.tag}"
        image = next(t for t in entry.repo_tags if t.tag == want)
    return _load_entry(tar, entry, image, where)


def _load_entry(
    tar: tarfile.TarFile, entry: _Entry, image: str | refs.LayoutRef | None, where: str
) -> LoadResult:
    if image is not None:
        targets = [refs.parse_layout_reference(image) if isinstance(image, str) else image]
    else:
        targets = entry.repo_tags  # none: the image loads untagged into the store, as in docker
    for t in targets:
        refs.check_writable(t)
    config = _read_member(tar, entry.config, where)
    diff_ids = _diff_ids(config, f"{where}: {entry.config}")
    layer_names = entry.layers
    if len(layer_names) != len(diff_ids):
        raise FormatError(
            f"{where}: {len(layer_names)} layers but {len(diff_ids)} diff_ids in the config"
        )
    first = targets[0].layout if targets else refs.store_layout_path()
    with Layout.create_for_write(first) as layout, writing(layout):
        layers = []
        for name, diff_id in zip(layer_names, diff_ids, strict=True):
            with _open_member(tar, name, where) as f:
                head = f.read(4)
                digest, size = layout.write_blob_stream(
                    _prepend(head, _chunks(f)), where=f"{where}: {name}"
                )
            media_type = next(
                (t for magic, t in _LAYER_TYPES.items() if head.startswith(magic)),
                "application/vnd.oci.image.layer.v1.tar",
            )
            found = digest
            if media_type != "application/vnd.oci.image.layer.v1.tar":
                found = _core.blob_digests(layout.blob_path(digest))[2]
            if found != diff_id:
                raise DigestMismatchError(
                    f"{where}: layer {name} has diff_id {found}, the config says {diff_id}"
                )
            layers.append({"mediaType": media_type, "digest": digest, "size": size})
        config_desc = layout.put_blob(config, media_type=CONFIG_MEDIA_TYPE)
        manifest = build_manifest(config=config_desc, layers=layers)
        manifest_desc = layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE)
        for target in targets:
            tagged = layout if target.layout == layout.path else Layout.create(target.layout)
            if tagged is not layout:
                for d in [config_desc, manifest_desc, *layers]:
                    tagged.import_blob(layout, str(d["digest"]))
            tagged.set_tag(target.write_tag, manifest_desc)
        if not targets:
            layout.add_untagged(manifest_desc)
    return LoadResult(
        images=tuple(t.tag if t.in_store and t.tag is not None else t.text for t in targets),
        manifest_digest=str(manifest_desc["digest"]),
        config_digest=str(config_desc["digest"]),
        layers=tuple(str(d["digest"]) for d in layers),
    )


def _prepend(head: bytes, rest: Iterator[bytes]) -> Iterator[bytes]:
    if head:
        yield head
    yield from rest
