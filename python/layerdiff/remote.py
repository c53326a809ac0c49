"""``push`` and ``pull``: images between a local layout and a registry.

Pull keeps the manifest's bytes exactly as the registry sent them, Docker schema 2 manifests
included, so the image's digest is the same on both sides and a later push sends the very same
manifest. From an image index (or Docker manifest list) the manifest of one platform is pulled
and tagged (``platform``, by default this machine's), as ``docker pull`` does.

Order of writes: blobs first (config and layers, in parallel), the manifest blob, then the tag
in one atomic ``index.json`` update; all of it while holding the layout's writer lock, so ``gc``
never removes a blob a running pull is about to tag, and a pull killed at any point leaves
only unreferenced blobs and temporary files (``gc`` removes them).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import queue
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from layerdiff import platforms, refs
from layerdiff.blobstatus import WORKER_PREFIX
from layerdiff.catalog import load_image
from layerdiff.errors import (
    DigestMismatchError,
    FormatError,
    ImageNotFoundError,
    InvalidReferenceError,
    RegistryError,
)
from layerdiff.image import (
    DOCKER_MANIFEST_MEDIA_TYPE,
    IMAGE_CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    check_history,
    check_layer_media_types,
)
from layerdiff.layout import INDEX_DIGEST, Descriptor, Layout, check_digest, writing
from layerdiff.registry import (
    BODY_MAX,
    MANIFEST_ACCEPT,
    Registry,
    parse_credentials,
    pull_scope,
    push_scope,
)
from layerdiff.transfer import BlobStatus, OnBlob, Sources, fetch_blob, push_blob

__all__ = ["PullResult", "PushResult", "open_registry", "pull", "push", "put_manifest"]

#: Blobs moved at once.
DEFAULT_JOBS = 4
#: Seconds an interrupted or failed push or pull waits for its other transfers to stop.
_STOP_GRACE = 2.0
_MANIFEST_MAX = BODY_MAX  # distribution's own limit on a manifest, as on every such answer
_T = TypeVar("_T")
_R = TypeVar("_R")


@dataclass(frozen=True, kw_only=True)
class PushResult:
    """What a push did."""

    #: The registry reference pushed to.
    destination: str
    #: Digest of the manifest pushed (the image's identity, the same on both sides).
    manifest_digest: str
    #: Its media type.
    media_type: str
    #: Config and layers (a blob listed twice, once), each ``exists`` | ``mounted`` | ``uploaded``.
    blobs: tuple[BlobStatus, ...]


@dataclass(frozen=True, kw_only=True)
class PullResult:
    """What a pull did."""

    #: The local image it was tagged as.
    image: str
    #: Digest of the manifest pulled (of the chosen platform's, for an index).
    manifest_digest: str
    #: Its media type.
    media_type: str
    #: Config and layers (a blob listed twice, once), each ``exists`` (stored) | ``downloaded``.
    blobs: tuple[BlobStatus, ...]


def _registry_ref(text: str | refs.RegistryRef) -> refs.RegistryRef:
    ref = refs.parse_reference(text) if isinstance(text, str) else text
    if not isinstance(ref, refs.RegistryRef):
        raise InvalidReferenceError(
            f"invalid image reference {str(ref)!r}: expected docker://HOST/REPO[:TAG]"
        )
    return ref


def open_registry(ref: refs.RegistryRef, *, tls_verify: bool, creds: str | None) -> Registry:
    """A session with the registry of ``ref``; ``creds`` is ``USER:PASS``."""
    reg = Registry(
        ref.host,
        tls_verify=tls_verify,
        credentials=parse_credentials(creds) if creds is not None else None,
    )
    try:
        _ = reg.base  # reach it once, before blobs are sent in parallel
    except BaseException:
        reg.close()
        raise
    return reg


def _parallel(fn: Callable[[_T, threading.Event], _R], items: Sequence[_T], jobs: int) -> list[_R]:
    """``fn(item, stop)`` for each item, ``jobs`` at a time. ``stop`` belongs to this call
    alone, so that other pushes and pulls running in the same process go on when it is set."""
    stop = threading.Event()
    if jobs <= 1 or len(items) <= 1:
        return [fn(i, stop) for i in items]
    futures: list[concurrent.futures.Future[_R]] = [concurrent.futures.Future() for _ in items]
    work: queue.SimpleQueue[tuple[_T, concurrent.futures.Future[_R]]] = queue.SimpleQueue()
    for pair in zip(items, futures, strict=True):
        work.put(pair)

    def worker() -> None:
        while True:
            try:
                item, future = work.get_nowait()
            except queue.Empty:
                return
            if not future.set_running_or_notify_cancel():
                continue  # cancelled before it started
            try:
                future.set_result(fn(item, stop))
            except BaseException as e:  # handed to the caller through the future
                future.set_exception(e)

    # Daemon threads, not a ThreadPoolExecutor's: the interpreter waits for those at exit, so
    # a transfer abandoned in a request that a registry never answers would hold up the exit
    # of the program that gave up on it until the request timed out.
    for n in range(min(jobs, len(items))):
        threading.Thread(target=worker, name=f"{WORKER_PREFIX}_{n}", daemon=True).start()
    try:
        # The first failure, whichever transfer it is, stops the rest at once.
        done, _ = concurrent.futures.wait(futures, return_when=concurrent.futures.FIRST_EXCEPTION)
        for f in futures:
            if f in done and f.exception() is not None:
                f.result()
        return [f.result() for f in futures]
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM) or failed: the transfers still running stop at their
        # next chunk or retry, and those not started never start. One stalled in a request
        # (a registry that stopped answering) is not waited for past the grace: its thread is
        # left to end, its temporary file to gc.
        stop.set()
        for f in futures:
            f.cancel()
        concurrent.futures.wait(futures, timeout=_STOP_GRACE)
        raise


def _quiet(_digest: str, _done: int, _size: int, _status: str | None) -> None:
    pass


def _unique(descs: list[Descriptor]) -> list[Descriptor]:
    """Each blob once, in order of first listing (a manifest may list a layer twice)."""
    seen: set[str] = set()
    out = []
    for d in descs:
        if str(d["digest"]) not in seen:
            seen.add(str(d["digest"]))
            out.append(d)
    return out


def put_manifest(reg: Registry, ref: refs.RegistryRef, data: bytes, media_type: str) -> str:
    """PUT the manifest ``data`` as the tag (or digest) of ``ref``; return its digest."""
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    if ref.digest is not None and ref.digest != digest:
        raise DigestMismatchError(
            f"{ref.text}: the image's manifest is {digest}, not the digest the reference names"
        )
    response = reg.request(
        "PUT",
        f"/v2/{ref.repository}/manifests/{ref.tag or digest}",
        scopes=[push_scope(ref.repository)],
        headers={"Content-Type": media_type},
        data=data,
        expect=(201, 200),
    )
    found = response.headers.get("Docker-Content-Digest")
    if found and found != digest:
        raise RegistryError(f"{reg.host}: stored manifest {digest} as {found}")
    return digest


def push(
    image: str | refs.LayoutRef,
    destination: str | refs.RegistryRef,
    *,
    tls_verify: bool = True,
    creds: str | None = None,
    jobs: int = DEFAULT_JOBS,
    on_blob: OnBlob | None = None,
) -> PushResult:
    """Push the local ``image`` to ``destination`` (``docker://HOST/REPO[:TAG]``).

    Each blob is sent at most once (``exists``, ``mounted`` or ``uploaded``, see
    :mod:`layerdiff.transfer`), ``jobs`` at a time, then the manifest with its own media type.
    ``creds`` is ``USER:PASS`` (default: the docker config's ``auths``); ``tls_verify=False``
    allows a registry without a trusted certificate or without TLS. ``on_blob`` sees progress.
    """
    dest = _registry_ref(destination)
    local = load_image(image)
    data = local.layout.read_blob(local.digest, limit=_MANIFEST_MAX)
    media_type = str(
        local.descriptor.get("mediaType") or local.manifest.get("mediaType") or MANIFEST_MEDIA_TYPE
    )
    if dest.digest is not None and dest.digest != local.digest:
        # Refused before any blob is sent, not after.
        raise DigestMismatchError(
            f"{dest.text}: the image's manifest is {local.digest}, not the digest the "
            "reference names"
        )
    blobs = _unique([local.manifest["config"], *local.layers])
    report = on_blob or _quiet
    sources = Sources(local.layout)
    with open_registry(dest, tls_verify=tls_verify, creds=creds) as reg:
        statuses = _parallel(
            lambda d, stop: push_blob(
                reg,
                dest.repository,
                local.layout,
                d,
                mount_from=sources.repositories(reg.host, str(d["digest"])),
                on_blob=report,
                stop=stop,
            ),
            blobs,
            jobs,
        )
        digest = put_manifest(reg, dest, data, media_type)
    sources.remember(dest.host, dest.repository, [b.digest for b in statuses])
    return PushResult(
        destination=dest.text, manifest_digest=digest, media_type=media_type, blobs=tuple(statuses)
    )


def _check_algorithm(ref: refs.RegistryRef, reference: str) -> None:
    """Refuse a manifest reference that is a digest of another algorithm than sha256."""
    if ":" in reference and not reference.startswith("sha256:"):  # a tag has no colon
        raise FormatError(
            f"{ref.text}: {reference}: only sha256 digests are supported, as in OCI layouts"
        )


def _get_manifest(
    reg: Registry, ref: refs.RegistryRef, reference: str, *, size: object = None
) -> tuple[bytes, str, str]:
    """(bytes, media type, digest) of a manifest, its digest checked when it is pinned (and its
    ``size``, when given: an index entry's)."""
    _check_algorithm(ref, reference)
    response = reg.request(
        "GET",
        f"/v2/{ref.repository}/manifests/{reference}",
        scopes=[pull_scope(ref.repository)],
        headers={"Accept": MANIFEST_ACCEPT},
        expect=(200, 404),
    )
    if response.status_code == 404:
        raise ImageNotFoundError(f"image not found: {ref.text} (no manifest {reference})")
    data = response.content
    if len(data) > _MANIFEST_MAX:
        raise FormatError(f"{ref.text}: manifest larger than {_MANIFEST_MAX} bytes")
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    pinned = reference if reference.startswith("sha256:") else None
    if type(size) is int and size != len(data):
        raise DigestMismatchError(
            f"{ref.text}: manifest {reference} is {len(data)} bytes, the index says {size}; "
            "the registry sent wrong bytes"
        )
    sent = response.headers.get("Docker-Content-Digest")
    for expected in (pinned, sent if sent and sent.startswith("sha256:") else None):
        if expected is not None and expected != digest:
            raise DigestMismatchError(
                f"{ref.text}: manifest {reference} has digest {digest}, expected {expected}; "
                "the registry sent wrong bytes"
            )
    try:
        obj = json.loads(data)
    except ValueError as e:
        raise FormatError(f"{ref.text}: manifest {reference} is not JSON: {e}") from e
    if not isinstance(obj, dict):
        raise FormatError(f"{ref.text}: manifest {reference} is not a JSON object")
    media_type = str(obj.get("mediaType") or response.headers.get("Content-Type", "")).split(";")[0]
    if obj.get("schemaVersion") == 1 or "signatures" in obj:
        raise FormatError(f"{ref.text}: Docker schema 1 manifests are not supported")
    if not media_type:
        media_type = (
            MANIFEST_MEDIA_TYPE if "config" in obj else "application/vnd.oci.image.index.v1+json"
        )
    return data, media_type, digest


def _check_manifest(manifest: dict[str, Any], where: str) -> tuple[Descriptor, list[Descriptor]]:
    """The config and layers of an image manifest, checked before anything is fetched: every
    descriptor a sha256 digest and a size, a container image's config (not an artifact's: a
    signature, a chart), layers that are tars."""
    config = manifest.get("config")
    layers = manifest.get("layers")
    if not isinstance(config, dict) or not isinstance(layers, list):
        raise FormatError(f"{where}: the manifest lacks config or layers")
    for d in [config, *layers]:
        size = d.get("size") if isinstance(d, dict) else None
        if not isinstance(d, dict) or type(size) is not int or size < 0:
            raise FormatError(f"{where}: a descriptor of the manifest lacks a size: {d!r}")
        try:
            check_digest(d.get("digest"))  # type: ignore[arg-type]
        except FormatError as e:
            raise FormatError(f"{where}: a descriptor of the manifest: {e}") from None
    media_type = config.get("mediaType")
    if not isinstance(media_type, str) or media_type not in IMAGE_CONFIG_MEDIA_TYPES:
        raise FormatError(
            f"{where}: not a container image: its config is {config.get('mediaType')!r} "
            "(an artifact, such as a signature or a chart?)"
        )
    check_layer_media_types(layers, where)
    return config, layers


def _check_config(
    layout: Layout, config: Descriptor, layers: list[Descriptor], platform: str | None, where: str
) -> None:
    """The image config (fetched, not yet tagged) agrees with its manifest, and with the
    platform asked for when the image came without an index to choose from."""
    body = layout.read_json(config)
    try:
        check_history(body)
    except FormatError as e:
        raise FormatError(f"{where}: {e}") from None
    diff_ids = body["rootfs"]["diff_ids"]
    if len(diff_ids) != len(layers):
        raise FormatError(
            f"{where}: the manifest has {len(layers)} layers, its config {len(diff_ids)} diff_ids"
        )
    if platform is not None and not platforms.is_for(body, platform):
        found = platforms.describe(body)
        raise ImageNotFoundError(
            f"{where}: the image is for {found or 'an unknown platform'}, not {platform}"
        )


def _by_config(
    reg: Registry, src: refs.RegistryRef, entries: list[Descriptor], platform: str | None
) -> Descriptor:
    """The first of the index ``entries`` (none names its platform) whose image config is for
    ``platform``, read from the registry without storing anything; the first of all when none
    is (pull then says what it found)."""
    for entry in entries:
        data, media_type, _ = _get_manifest(reg, src, str(entry["digest"]), size=entry.get("size"))
        if media_type not in (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE):
            continue
        try:
            config, _layers = _check_manifest(json.loads(data), src.text)
        except FormatError:
            continue
        if int(config["size"]) > _MANIFEST_MAX:
            continue
        response = reg.request(
            "GET",
            f"/v2/{src.repository}/blobs/{config['digest']}",
            scopes=[pull_scope(src.repository)],
        )
        body = response.content
        if "sha256:" + hashlib.sha256(body).hexdigest() != config["digest"]:
            continue
        try:
            obj = json.loads(body)
        except ValueError:
            continue
        if isinstance(obj, dict) and platforms.is_for(obj, platform):
            return entry
    return entries[0]


def _default_name(ref: refs.RegistryRef) -> str:
    # Stored under the familiar name (docker.io/library/busybox is busybox), as docker does;
    # pulled by digest, under NAME@DIGEST (docker lists it untagged, with its digest).
    name = refs.familiar_name(f"{ref.host}/{ref.repository}")
    if ref.digest is not None:
        return f"{name}@{ref.digest}"
    return f"{name}:{ref.tag}"


def pull(
    source: str | refs.RegistryRef,
    image: str | refs.LayoutRef | None = None,
    *,
    platform: str | None = None,
    tls_verify: bool = True,
    creds: str | None = None,
    jobs: int = DEFAULT_JOBS,
    on_blob: OnBlob | None = None,
) -> PullResult:
    """Pull ``source`` (``docker://HOST/REPO[:TAG][@DIGEST]``) into the local ``image``
    (default: ``HOST/REPO:TAG`` in the store, ``HOST/REPO@DIGEST`` for a pull by digest).

    Only blobs the layout lacks (or holds damaged) are fetched; each is verified (size,
    sha256) while it streams and a mismatch is refused with nothing stored. From an index, the
    ``platform`` (``OS/ARCH[/VARIANT]``, default this machine's) is chosen. See the module docs
    for the order of writes.
    """
    src = _registry_ref(source)
    if src.digest is not None:
        # Before the default name is made of it: that name could not hold the digest.
        _check_algorithm(src, src.digest)
    target_text = image if image is not None else _default_name(src)
    target = (
        refs.parse_layout_reference(target_text) if isinstance(target_text, str) else target_text
    )
    platforms.parse_platform(platform)  # a bad platform fails before anything is fetched
    report = on_blob or _quiet
    with open_registry(src, tls_verify=tls_verify, creds=creds) as reg:
        data, media_type, digest = _get_manifest(reg, src, src.digest or str(src.tag))
        index_digest = digest if media_type in INDEX_MEDIA_TYPES else None
        unknown = False  # chosen from an index entry that names no platform
        for _ in range(2):  # an index names manifests; nested indexes are not followed further
            if media_type not in INDEX_MEDIA_TYPES:
                break
            candidates = platforms.candidates(json.loads(data), platform, src.text)
            for entry in candidates:
                try:
                    check_digest(entry.get("digest"))  # type: ignore[arg-type]
                except FormatError as e:
                    raise FormatError(f"{src.text}: an entry of the index: {e}") from None
            chosen = candidates[0]
            if len(candidates) > 1:
                chosen = _by_config(reg, src, candidates, platform)
            unknown = unknown or not chosen.get("platform")
            data, media_type, digest = _get_manifest(
                reg, src, chosen["digest"], size=chosen.get("size")
            )
        pinned = target.pinned
        if pinned is not None and pinned not in (digest, index_digest):
            # Refused before a blob is fetched.
            raise DigestMismatchError(
                f"{target.text}: {src.text} is manifest {digest}"
                + (f" of index {index_digest}" if index_digest else "")
                + f", not {pinned}"
            )
        if media_type not in (MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE):
            raise FormatError(f"{src.text}: unsupported manifest media type {media_type!r}")
        manifest = json.loads(data)
        config, layers = _check_manifest(manifest, f"{src.text} (manifest {digest})")
        with Layout.create_for_write(target.layout) as layout, writing(layout):
            # The config first, and checked, before a layer is fetched: an image for another
            # platform, or whose config disagrees with its manifest, costs no download. (One
            # chosen from an index by its platform is the platform's already.)
            config_status = fetch_blob(reg, src.repository, layout, config, on_blob=report)
            wanted = platform if index_digest is None else None
            if unknown:
                wanted = platform or "/".join(x for x in platforms.parse_platform(None) if x)
            _check_config(layout, config, layers, wanted, src.text)
            layer_statuses = _parallel(
                lambda d, stop: fetch_blob(
                    reg, src.repository, layout, d, on_blob=report, stop=stop
                ),
                [d for d in _unique(layers) if d["digest"] != config["digest"]],
                jobs,
            )
            statuses = [config_status, *layer_statuses]
            desc = layout.put_blob(data, media_type=media_type)
            if index_digest is not None:  # so NAME@<index digest> names it, as docker has it
                desc["annotations"] = {INDEX_DIGEST: index_digest}
            layout.set_tag(target.write_tag, desc)
    Sources(layout).remember(src.host, src.repository, [s.digest for s in statuses])
    return PullResult(
        image=target.text, manifest_digest=digest, media_type=media_type, blobs=tuple(statuses)
    )
