"""``fsck`` and ``gc``: check every reachable blob of a layout; remove what nothing reaches.

fsck reads every blob an image reaches (through nested indexes too) and checks its size and
sha256 against its descriptor, each layer's decompressed sha256 against the config's diff_id,
and the manifest/config/history invariants, the types of the config's fields among them. gc
removes blobs no tag reaches and stale temporary files; it holds the layout's collector lock,
which writers (commit, squash) hold shared while their blobs are not tagged yet, so it never
removes a blob a running command is about to tag.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from layerdiff import _core, layercache, refs
from layerdiff.catalog import by_image_id, index_tag
from layerdiff.errors import (
    FormatError,
    InvalidArgumentError,
    InvalidReferenceError,
    LayerdiffError,
)
from layerdiff.image import (
    CONFIG_MEDIA_TYPE,
    IMAGE_CONFIG_MEDIA_TYPES,
    INDEX_MEDIA_TYPES,
    check_history,
    config_type_problems,
)
from layerdiff.layer import check_path
from layerdiff.layout import (
    _JSON_MAX,
    REF_NAME,
    Descriptor,
    Layout,
    check_digest,
    gc_lock,
    tag_of,
)

__all__ = ["FsckReport", "GcReport", "Problem", "fsck", "gc"]

_TEMP_PREFIXES = (".tmp-", ".index.json.", ".oci-layout.")


@dataclass(frozen=True)
class Problem:
    """One thing fsck found wrong."""

    #: The image (tag) or blob it is about.
    where: str
    #: What is wrong, with what was expected and what was found.
    what: str

    def __str__(self) -> str:
        return f"{self.where}: {self.what}"


@dataclass
class FsckReport:
    """What fsck checked and found."""

    images: int = 0
    blobs: int = 0
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """True when nothing is wrong."""
        return not self.problems


@dataclass(frozen=True)
class GcReport:
    """What gc removed."""

    blobs: int
    temporary: int
    bytes: int
    #: Cached layers removed (neither a container nor an image of the store uses them).
    layers: int = 0
    #: Manifests or indexes the layout names that could not be read: while there is one, what
    #: it names cannot be told, so no blob was removed.
    unreadable: tuple[str, ...] = ()


class _Checker:
    def __init__(self, layout: Layout, report: FsckReport) -> None:
        self.layout = layout
        self.report = report
        # digest -> (diff_id of a layer or the digest, size) once read, or what is wrong with it:
        # each blob is read once, and every image reaching a broken one is told.
        self.read: dict[str, tuple[str, int] | str] = {}

    def problem(self, where: str, what: str) -> None:
        found = Problem(where, what)
        if found not in self.report.problems:  # an image naming one blob twice is told once
            self.report.problems.append(found)

    def blob(self, where: str, desc: Descriptor, *, layer: bool = False) -> str | None:
        """Check one blob against its descriptor; the diff_id of a layer. None when broken."""
        digest = str(desc.get("digest", ""))
        if digest not in self.read:
            self.read[digest] = self._read(digest, layer=layer)
        read = self.read[digest]
        if isinstance(read, str):
            self.problem(where, read)
            return None
        diff_id, size = read
        if size != desc.get("size"):
            self.problem(
                where, f"blob {digest} is {size} bytes, descriptor says {desc.get('size')}"
            )
            return None
        return diff_id

    def _read(self, digest: str, *, layer: bool) -> tuple[str, int] | str:
        """Read a blob: its diff_id (a layer's) or digest and its size, or what is wrong."""
        try:
            check_digest(digest)
            path = self.layout.blob_path(digest)
        except LayerdiffError as e:
            return str(e)
        if not path.is_file():
            return f"blob {digest} is missing"
        self.report.blobs += 1
        diff_id: str | None = None
        try:
            if layer:
                found, size, diff_id, _ = _core.blob_digests(path)
            else:
                found, size = _sha256_file(path)
        except (LayerdiffError, OSError) as e:
            # A blob that does not decompress: say first whether it is the blob it should be.
            found, size = _sha256_file(path)
            if found == digest:
                return f"layer {digest} cannot be read: {e}"
        if found != digest:
            return f"blob {digest} has digest {found}"
        return diff_id or digest, size

    def json_blob(self, where: str, desc: Descriptor) -> dict[str, Any] | None:
        if self.blob(where, desc) is None:
            return None
        try:
            obj = json.loads(self.layout.blob_path(desc["digest"]).read_bytes())
        except (ValueError, RecursionError) as e:
            self.problem(where, f"blob {desc['digest']} is not JSON: {e or 'nested too deeply'}")
            return None
        if not isinstance(obj, dict):
            self.problem(where, f"blob {desc['digest']} is not a JSON object")
            return None
        return obj

    def manifest(self, where: str, desc: Descriptor) -> None:
        obj = self.json_blob(where, desc)
        if obj is None:
            return
        if desc.get("mediaType") in INDEX_MEDIA_TYPES or "manifests" in obj:
            for sub in obj.get("manifests", []):
                self.manifest(where, sub)
            return
        config_desc = obj.get("config")
        if not isinstance(config_desc, dict) and isinstance(obj.get("blobs"), list):
            # An artifact manifest (OCI 1.1 drafts): its blobs must be whole, nothing more.
            for blob in obj["blobs"]:
                if isinstance(blob, dict):
                    self.blob(where, blob)
            return
        if not isinstance(config_desc, dict):
            self.problem(where, "manifest has no config descriptor")
            return
        layers = obj.get("layers", [])
        if config_desc.get("mediaType", CONFIG_MEDIA_TYPE) not in IMAGE_CONFIG_MEDIA_TYPES:
            # An artifact (a signature, a chart): its blobs must be whole; the rules of an
            # image's config and layers are not its rules.
            self.blob(where, config_desc)
            for layer in layers if isinstance(layers, list) else []:
                if isinstance(layer, dict):
                    self.blob(where, layer)
            return
        self.report.images += 1
        config = self.json_blob(where, config_desc)
        diff_ids = [self.blob(where, layer, layer=True) for layer in layers]
        if config is None:
            return
        try:
            check_history(config)
        except LayerdiffError as e:
            self.problem(where, str(e))
        for what in config_type_problems(config):
            self.problem(where, what)
        want = config.get("rootfs", {}).get("diff_ids", [])
        if len(want) != len(layers):
            self.problem(where, f"{len(layers)} layers but {len(want)} diff_ids in the config")
            return
        for i, (found, expected) in enumerate(zip(diff_ids, want, strict=True)):
            if found is not None and found != expected:
                self.problem(where, f"layer {i} has diff_id {found}, config says {expected}")


def _target(target: str | os.PathLike[str] | None) -> refs.LayoutRef | None:
    """What ``target`` names: an image or a layout by reference (a str), a layout by path (an
    ``os.PathLike``), or (None) the default store."""
    if target is None:
        return None
    if isinstance(target, str):
        return refs.parse_layout_reference(target)
    if isinstance(target, os.PathLike):
        path = check_path("target", target)
        return refs.LayoutRef(text=f"oci:{path}", layout=Path(path), tag=None, in_store=False)
    raise InvalidArgumentError(
        f"target={target!r}: expected an image reference (a str) or a layout's path"
    )


def _layout_and_images(
    ref: refs.LayoutRef | None,
) -> tuple[Layout, list[tuple[str, Descriptor]]]:
    """The layout, and the (name, descriptor) of each image to check: all of them for the store
    or an untagged ``oci:PATH``, else the one named."""
    if ref is None:
        layout = Layout(refs.store_layout_path())
        if not layout.path.exists():  # a store never used: nothing to check, nothing made
            return layout, []
        layout = Layout.create(layout.path)
        return layout, _named(layout)
    layout = Layout.open(ref.layout)
    named = _named(layout)
    if ref.tag is not None:
        tag = index_tag(layout, ref)
        named = [(n, m) for n, m in named if n == tag]
        # No such name: a store image by its ID, as the other commands take one.
        found = by_image_id(layout, ref.text) if ref.in_store and not named else None
        if found is not None:
            named = [found]
    return layout, named


def _named(layout: Layout) -> list[tuple[str, Descriptor]]:
    return [
        (str((m.get("annotations") or {}).get(REF_NAME, m.get("digest"))), m)
        for m in layout.manifests()
    ]


def fsck(target: str | os.PathLike[str] | None = None) -> FsckReport:
    """Check the default store, an ``oci:PATH`` layout (or the layout at a path object), or one
    image; nothing is changed. A layout whose ``index.json`` cannot be read is a problem
    reported, as damage is; a path that is no layout at all is an error."""
    report = FsckReport()
    ref = _target(target)
    try:
        layout, named = _layout_and_images(ref)
    except FormatError as e:
        where = refs.store_layout_path() if ref is None else ref.layout
        if not refs.is_layout(where):
            raise
        report.problems.append(Problem(str(where), str(e)))
        return report
    if ref is not None and ref.tag is not None and not named:
        report.problems.append(Problem(ref.text, "no such image"))
    shared: dict[str, set[str]] = {}
    for name, desc in named:
        if tag_of(desc) is not None:
            shared.setdefault(name, set()).add(str(desc.get("digest")))
    for name, digests in shared.items():
        if len(digests) > 1:  # as a layout docker 25 saves: no command can tell which is meant
            listed = ", ".join(sorted(digests))
            report.problems.append(
                Problem(name, f"the tag names {len(digests)} images ({listed}): none is read by it")
            )
    checker = _Checker(layout, report)
    for name, desc in named:
        before = len(report.problems)
        try:
            checker.manifest(name, desc)
        except (AttributeError, KeyError, TypeError, ValueError) as e:
            # A manifest or config of the wrong shape (a list where an object goes): that
            # image is broken; the others are still checked.
            report.problems.append(Problem(name, f"malformed manifest or config ({e})"))
        except FileNotFoundError as e:  # a blob gone between being found and being read
            report.problems.append(Problem(name, f"{e.filename}: missing"))
        if len(report.problems) > before and not _still_named(layout, desc):
            # Removed (rmi, and its gc) while it was checked: what went with it is not damage.
            del report.problems[before:]
    if target is None:
        _check_containers(report)
    return report


def _still_named(layout: Layout, desc: Descriptor) -> bool:
    """Whether the layout's index still names the manifest (or index) ``desc``."""
    try:
        return any(m.get("digest") == desc.get("digest") for m in layout.manifests())
    except (LayerdiffError, OSError):
        return True  # cannot tell: the problems stand


def _check_containers(report: FsckReport) -> None:
    """The layer cache and what the containers of the store need from it and from images."""
    from layerdiff import runtime

    for name, why in runtime.broken_containers():
        report.problems.append(Problem(f"container {name}", f"{why} (rm -f removes it)"))
    used: dict[str, list[str]] = {}
    for c in runtime.containers():
        used[c.reference] = [str(d) for d in c.layer_dirs()]
        try:
            c.image()
        except (LayerdiffError, OSError, KeyError) as e:
            where = f"container {c.reference}"
            report.problems.append(Problem(where, f"its image is unreadable: {e}"))
    for where, what in layercache.check(used):
        report.problems.append(Problem(where, what))


def _container_roots(layout: Layout) -> tuple[list[Descriptor], set[str]]:
    """What the containers of the store keep alive: the manifests of their images in
    ``layout`` and the keys of their cached layers."""
    from layerdiff import runtime

    manifests: list[Descriptor] = []
    keys: set[str] = set()
    for c in runtime.containers():
        with contextlib.suppress(KeyError, TypeError):
            keys.update(c.layer_keys())
        with contextlib.suppress(OSError, KeyError):
            if os.path.samefile(c.data["image_layout"], layout.path):
                manifests.append(dict(c.data["image_descriptor"]))
    return manifests, keys


def _reachable(layout: Layout, extra: Sequence[Descriptor] = ()) -> tuple[set[str], list[str]]:
    """The digests reachable from the layout's index and ``extra``, and those of the manifests
    and indexes among them that could not be read (damaged, or an I/O error)."""
    seen: set[str] = set()
    unreadable: list[str] = []
    # Each with whether it stands where a manifest or an index does (the layout's index, an
    # index's entries, extra): only such a one's damage hides what it names; and whether the
    # layout's index (or extra) names it: only then does its absence hide anything (an
    # index's platforms may be missing by design: docker 25 saves this machine's alone).
    todo: list[tuple[Descriptor, bool, bool]] = [
        (d, True, True) for d in [*layout.manifests(), *extra]
    ]
    while todo:
        desc, named_as_manifest, top = todo.pop()
        digest = desc.get("digest")
        media = desc.get("mediaType")
        # Where a manifest or an index stands, one named by no digest of ours, or one the
        # layout's index names that is missing, hides what it names as a damaged one does.
        hides = (isinstance(media, str) and ("manifest" in media or "index" in media)) or (
            media is None and named_as_manifest
        )
        if not isinstance(digest, str):
            if hides:
                unreadable.append(f"an entry without a digest ({json.dumps(desc)[:80]})")
            continue
        if digest in seen:
            continue
        seen.add(digest)
        path = layout.blob_path(digest) if digest.startswith("sha256:") else None
        if path is None or not path.is_file():
            if hides and top:
                unreadable.append(digest)
            continue
        # What a manifest or an index may name, whatever its kind: an entry without a media
        # type is read too, and an artifact manifest's blobs and subject are kept (gc never
        # removes what something in the layout may refer to).
        if not isinstance(media, str) or "manifest" in media or "index" in media or "json" in media:
            try:
                if path.stat().st_size > _JSON_MAX:
                    continue
                obj = json.loads(path.read_bytes())
            except (ValueError, RecursionError, OSError):
                # A config's or a layer's damage hides nothing.
                if hides:
                    unreadable.append(digest)
                continue
            if isinstance(obj, dict):
                for key in ("manifests", "layers", "blobs"):
                    found = obj.get(key)
                    if isinstance(found, list):
                        todo.extend(
                            (d, key == "manifests", False) for d in found if isinstance(d, dict)
                        )
                for key in ("config", "subject"):
                    if isinstance(obj.get(key), dict):
                        todo.append((obj[key], key == "subject", False))
    return seen, unreadable


def _gc_layout(target: str | os.PathLike[str]) -> Layout:
    """The layout ``oci:PATH`` (or a plain path, or a path object) names: gc works on whole
    layouts, never on one image."""
    if not isinstance(target, (str, os.PathLike)):
        raise InvalidArgumentError(f"target={target!r}: expected a layout's path or oci:PATH")
    if not isinstance(target, str) or not target.startswith("oci:"):
        return Layout.open(check_path("target", target))
    ref = refs.parse_layout_reference(target)
    if ref.tag is not None:
        raise InvalidReferenceError(f"{target}: gc takes a layout, oci:PATH (no tag)")
    return Layout.open(ref.layout)


def gc(target: str | os.PathLike[str] | None = None) -> GcReport:
    """Remove unreachable blobs and stale temporary files from the default store (or an
    ``oci:PATH`` layout, or the layout at a path). Waits for commands that are writing into
    it."""
    layout = Layout.create(refs.store_layout_path()) if target is None else _gc_layout(target)
    removed = temporary = freed = layers = 0
    cache_keys: set[str] = set()
    with gc_lock(layout, fcntl.LOCK_EX):
        # The images containers were made from, in this layout: the store's or any other.
        in_use, container_keys = _container_roots(layout)
        if target is None:
            cache_keys = container_keys
        keep, unreadable = _reachable(layout, in_use)
        for path in list(layout.blobs_dir.iterdir()):
            if path.name.startswith("."):
                freed += _remove(path)
                temporary += 1
            elif f"sha256:{path.name}" not in keep and not unreadable:
                freed += _remove(path)
                removed += 1
        # index.json and oci-layout are written (through temporary files) under the index
        # lock, which untag takes without the collector's: a file being written is not stale.
        with layout.index_lock():
            for path in list(layout.path.iterdir()):
                if path.name.startswith(_TEMP_PREFIXES):
                    freed += _remove(path)
                    temporary += 1
        if target is None:
            # A cached layer stays while a container or an image of the store uses it.
            for desc in layout.manifests():
                with contextlib.suppress(LayerdiffError, OSError, KeyError, TypeError):
                    manifest = layout.read_json(desc)
                    config = layout.read_json(manifest["config"])
                    cache_keys.update(
                        layercache.chain_ids(list(config.get("rootfs", {}).get("diff_ids", [])))
                    )
            layers, stale, cache_freed = layercache.collect(cache_keys)
            temporary += stale
            from layerdiff import runtime

            # Links to containers given a path that no longer holds them count as stale.
            temporary += runtime.forget_vanished()
            freed += cache_freed
            freed += _collect_indexes(layout)
            layout.keep_reserve()  # given up by an rmi on a full disk: there may be room now
    return GcReport(
        blobs=removed,
        temporary=temporary,
        bytes=freed,
        layers=layers,
        unreadable=tuple(unreadable),
    )


def _collect_indexes(layout: Layout) -> int:
    """Remove squash's layer indexes of blobs the store no longer holds (an index of a blob of
    another layout goes too: it only saves time, and is written again when needed)."""
    freed = 0
    indexes = refs.layer_index_dir()
    for path in list(indexes.iterdir()) if indexes.is_dir() else []:
        if path.name.startswith(".") or not (layout.blobs_dir / path.name).is_file():
            freed += _remove(path)
    return freed


def _sha256_file(path: Path) -> tuple[str, int]:
    h = hashlib.sha256()
    size = 0
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
            size += len(chunk)
    return "sha256:" + h.hexdigest(), size


def _remove(path: Path) -> int:
    try:
        size = path.stat().st_size
        path.unlink()
    except FileNotFoundError:
        return 0
    return size
