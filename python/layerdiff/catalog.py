"""Finding and describing images: reference → layout, manifest and config; listings.

Backs the public ``images()``, ``inspect()`` and ``history()``.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import stat
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from layerdiff import refs
from layerdiff.errors import FormatError, ImageNotFoundError, InvalidArgumentError, LayerdiffError
from layerdiff.image import (
    DOCKER_MANIFEST_MEDIA_TYPE,
    INDEX_MEDIA_TYPES,
    MANIFEST_MEDIA_TYPE,
    image_shape_problems,
)
from layerdiff.layout import INDEX_DIGEST, Descriptor, Layout, tag_of

__all__ = [
    "UNTAGGED",
    "HistoryEntry",
    "Image",
    "ImageSummary",
    "by_image_id",
    "history",
    "images",
    "index_tag",
    "inspect",
    "load_image",
]

#: Name and tag ``images()`` gives an untagged image (docker's, also in its JSON output).
UNTAGGED = "<none>"

_MANIFEST_TYPES = frozenset({MANIFEST_MEDIA_TYPE, DOCKER_MANIFEST_MEDIA_TYPE})


@dataclass(frozen=True, kw_only=True)
class Image:
    """An image read from a layout."""

    #: The reference it was found by.
    ref: refs.LayoutRef
    #: The layout holding it.
    layout: Layout
    #: Descriptor of its manifest.
    descriptor: Descriptor
    #: The manifest (OCI, or Docker schema 2).
    manifest: dict[str, Any]
    #: The image config.
    config: dict[str, Any]
    #: The layout's index entry it was reached by: its manifest's descriptor, or that of the
    #: multi-platform index it was picked from. ``None``: not known.
    entry: Descriptor | None = None

    @property
    def digest(self) -> str:
        """Digest of the manifest: the image's identity."""
        return str(self.descriptor["digest"])

    @property
    def layers(self) -> list[Descriptor]:
        """Layer descriptors, bottom first."""
        return list(self.manifest.get("layers", []))


@dataclass(frozen=True, kw_only=True)
class ImageSummary:
    """One line of ``images()``."""

    #: Image name (store) or layout path (``oci:``); ``<none>`` for an untagged store image.
    name: str
    #: Tag; ``<none>`` for an untagged image.
    tag: str
    #: Manifest digest.
    digest: str
    #: The config's ``created`` time, if any.
    created: str | None
    #: Bytes of all layer blobs plus the config; ``None`` when the image cannot be read.
    size: int | None
    #: Number of layers; ``None`` when the image cannot be read.
    layers: int | None
    #: Why the image cannot be read (a blob missing or corrupt: ``fsck`` says more), else None.
    error: str | None = None


@dataclass(frozen=True, kw_only=True)
class HistoryEntry:
    """One line of ``history()``, newest first as in ``docker history``."""

    #: When the step ran.
    created: str | None
    #: What made it.
    created_by: str
    #: Stored size of its layer; 0 for an empty (config-only) step.
    size: int
    #: Commit message.
    comment: str
    #: Author.
    author: str
    #: True when the step did not add a layer.
    empty_layer: bool
    #: Digest of its layer blob, None for an empty step.
    digest: str | None


def _pick_from_index(layout: Layout, index: dict[str, Any], where: str) -> Descriptor:
    """The manifest of a multi-platform index that fits this machine, by the rules pull
    follows (:mod:`layerdiff.platforms`): entries naming no platform are told apart by their
    configs; an index of one entry gives it whatever it names."""
    from layerdiff import platforms

    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    try:
        found = platforms.candidates(index, None, where)
    except ImageNotFoundError:
        if len(entries) == 1:
            return entries[0]
        raise
    if len(found) == 1:
        return found[0]
    for m in found:
        with contextlib.suppress(LayerdiffError, OSError, KeyError, TypeError, ValueError):
            if platforms.is_for(layout.read_json(layout.read_json(m)["config"]), None):
                return m
    return found[0]


def _load(ref: refs.LayoutRef) -> Image:
    if not (ref.layout / "oci-layout").is_file():
        raise ImageNotFoundError(f"image not found: {ref.text} (no OCI layout at {ref.layout})")
    layout = Layout.open(ref.layout)
    try:
        desc = layout.resolve(index_tag(layout, ref))
    except ImageNotFoundError as e:
        by_id = _by_image_id(layout, ref)
        if by_id is None:
            raise ImageNotFoundError(f"image not found: {ref.text} ({e})") from e
        ref, desc = by_id
    return _read(ref, layout, desc)


_IMAGE_ID = re.compile(r"(?:sha256:)?([0-9a-f]{12,64})")


def by_image_id(
    layout: Layout,
    text: str,
    *,
    keep: Callable[[Descriptor], bool] = lambda _: True,
    what: str = "images by digest",
) -> tuple[str, Descriptor] | None:
    """The image of ``layout`` (among those ``keep`` keeps) that ``text`` names by its digest
    as ``images`` shows it, docker's image ID (12 hex digits or more, ``sha256:`` optional):
    its digest and index entry. None when ``text`` is no such prefix or names none;
    ImageNotFoundError, saying ``what`` it names, when it names several."""
    found = _IMAGE_ID.fullmatch(text)
    if found is None:
        return None
    prefix = "sha256:" + found.group(1)
    matches = {
        str(m["digest"]): m
        for m in layout.manifests()
        if keep(m) and str(m.get("digest", "")).startswith(prefix)
    }
    if len(matches) > 1:
        raise ImageNotFoundError(f"{text}: names {len(matches)} {what}; give more of it")
    return matches.popitem() if matches else None


def _by_image_id(layout: Layout, ref: refs.LayoutRef) -> tuple[refs.LayoutRef, Descriptor] | None:
    """The store image that ``ref``, no name of the store, names by its ID, as docker takes
    an image ID where no name matches."""
    found = by_image_id(layout, ref.text) if ref.in_store else None
    if found is None:
        return None
    digest, desc = found
    by_digest = refs.LayoutRef(text=digest, layout=layout.path, tag=None, in_store=True)
    return by_digest, desc


def index_tag(layout: Layout, ref: refs.LayoutRef) -> str | None:
    """The tag in ``layout``'s index that ``ref`` names: its own, but for a store name the
    spelling the index has (:func:`refs.stored_tag`)."""
    if ref.in_store and ref.tag is not None:
        pinned = ref.pinned
        tags = layout.tags()
        if pinned is None or ref.tag in tags:
            return refs.stored_tag(ref.tag, tags)
        # NAME@DIGEST also finds an image of that name, tagged otherwise, with that manifest.
        name = refs.store_tag_name(ref.tag)
        for desc in layout.manifests():
            tag = tag_of(desc)
            if (
                tag is not None
                and pinned
                in (desc.get("digest"), (desc.get("annotations") or {}).get(INDEX_DIGEST))
                and refs.familiar_name(refs.store_tag_name(tag)) == name
            ):
                return tag
    return ref.tag


def _read(ref: refs.LayoutRef, layout: Layout, desc: Descriptor) -> Image:
    """The image an index entry of ``layout`` points at (``ref`` names it in errors)."""
    entry = desc
    for _ in range(4):  # index → manifest; nested indexes are rare but legal
        if desc.get("mediaType") not in INDEX_MEDIA_TYPES:
            break
        desc = _pick_from_index(layout, layout.read_json(desc), ref.text)
    manifest = layout.read_json(desc)
    media_type = desc.get("mediaType") or manifest.get("mediaType")
    if media_type not in _MANIFEST_TYPES:
        raise FormatError(f"{ref.text}: unsupported manifest media type {media_type!r}")
    config_desc = manifest.get("config")
    if not isinstance(config_desc, dict):
        raise FormatError(f"{ref.text}: manifest {desc['digest']} has no config descriptor")
    config = layout.read_json(config_desc)
    problems = image_shape_problems(manifest, config)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise FormatError(
            f"{ref.text}: malformed image: {problems[0]}{more}; layerdiff fsck lists what is "
            "damaged"
        )
    return Image(
        ref=ref, layout=layout, descriptor=desc, manifest=manifest, config=config, entry=entry
    )


def require_blob(layout: Layout, digest: str, *, what: str, size: int | None = None) -> None:
    """Raise unless blob ``digest`` of ``layout`` is there (a file; of ``size`` bytes when
    given): ImageNotFoundError or FormatError, naming its path and ``what`` it is."""
    path = layout.blob_path(digest)
    try:
        found = path.stat()
    except FileNotFoundError:
        found = None
    damaged = "(layerdiff fsck lists what is damaged)"
    if found is None or (size is None and not stat.S_ISREG(found.st_mode)):
        raise ImageNotFoundError(f"{path}: {what} is missing from its layout {damaged}")
    if size is not None and found.st_size != size:
        raise FormatError(
            f"{path}: {what} has {found.st_size} bytes, its manifest says {size} {damaged}"
        )


def load_image(reference: str | refs.LayoutRef) -> Image:
    """Read the image a reference names; ImageNotFoundError names the reference if absent."""
    if not isinstance(reference, (str, refs.LayoutRef)):
        raise InvalidArgumentError(f"image={reference!r}: expected an image reference (a str)")
    ref = refs.parse_layout_reference(reference) if isinstance(reference, str) else reference
    return _load(ref)


def images(layout: str | os.PathLike[str] | None = None) -> list[ImageSummary]:
    """The images of the default store (or of the OCI layout at ``layout``), in index order.

    An untagged image (an index entry without a ref.name, as ``skopeo copy`` to ``oci:PATH``
    writes it) has the tag :data:`UNTAGGED`, and in the store that name too, as in
    ``docker images``. An image that cannot be read (its manifest or config blob missing or
    corrupt) is listed too, with what its index entry tells and the reason in ``error``.
    """
    in_store = layout is None
    path = refs.store_layout_path() if layout is None else layout
    if not refs.is_layout(path):
        if in_store:
            for made_on_first_write in (refs.store_home(), refs.store_layout_path()):
                if os.path.lexists(made_on_first_write) and not os.path.isdir(made_on_first_write):
                    # What a commit would fail on: say so now, not "no images".
                    raise NotADirectoryError(
                        errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(made_on_first_write)
                    )
            return []  # the store is created on first write; empty until then
        raise ImageNotFoundError(f"{path}: no OCI image layout here")
    lay = Layout.open(path)
    out = []
    for desc in lay.manifests():
        tag = tag_of(desc)
        if tag is None:
            name, short = (UNTAGGED if in_store else str(lay.path)), UNTAGGED
            text = str(desc.get("digest", "")) if in_store else f"oci:{lay.path}"
            ref = refs.LayoutRef(text=text, layout=lay.path, tag=None, in_store=in_store)
        elif in_store and refs.pinned_digest(tag) is not None:
            name, short = refs.store_tag_name(tag), UNTAGGED  # pulled by digest, as docker lists it
            ref = refs.LayoutRef(text=tag, layout=lay.path, tag=tag, in_store=True)
        elif in_store:
            name, _, short = tag.rpartition(":")
            ref = refs.LayoutRef(text=tag, layout=lay.path, tag=tag, in_store=True)
        else:
            name, short = str(lay.path), tag
            ref = refs.LayoutRef(
                text=f"oci:{lay.path}:{tag}", layout=lay.path, tag=tag, in_store=False
            )
        out.append(_summary(ref, lay, desc, name=name, tag=short))
    return out


def _summary(
    ref: refs.LayoutRef, layout: Layout, desc: Descriptor, *, name: str, tag: str
) -> ImageSummary:
    """One line of ``images()``; what the index entry tells when the image cannot be read."""
    try:
        image = _read(ref, layout, desc)
        size = _stored_size(image)
    except (LayerdiffError, OSError) as e:
        return ImageSummary(
            name=name,
            tag=tag,
            digest=str(desc.get("digest", "")),
            created=None,
            size=None,
            layers=None,
            error=str(e),
        )
    return ImageSummary(
        name=name,
        tag=tag,
        digest=image.digest,
        created=image.config.get("created"),
        size=size,
        layers=len(image.layers),
    )


def _stored_size(image: Image) -> int:
    """Bytes of the image's config and layer blobs, as its manifest gives them (each a size,
    which :func:`_read` checked)."""
    return int(image.manifest["config"]["size"]) + sum(int(d["size"]) for d in image.layers)


def inspect(reference: str) -> dict[str, Any]:
    """A JSON-ready description: reference, manifest digest, manifest, config and layers."""
    image = load_image(reference)
    diff_ids = image.config.get("rootfs", {}).get("diff_ids") or []
    layers = [
        {
            "digest": d["digest"],
            "diff_id": diff_ids[i] if i < len(diff_ids) else None,
            "size": d["size"],
            "media_type": d["mediaType"],
        }
        for i, d in enumerate(image.layers)
    ]
    return {
        "image": image.ref.text,
        "layout": str(image.layout.path),
        "digest": image.digest,
        "media_type": image.descriptor.get("mediaType"),
        "created": image.config.get("created"),
        "architecture": image.config.get("architecture"),
        "os": image.config.get("os"),
        "layers": layers,
        "manifest": image.manifest,
        "config": image.config,
    }


def history(reference: str) -> list[HistoryEntry]:
    """The image's history, newest first, each step with the stored size of its layer."""
    image = load_image(reference)
    layers = image.layers
    steps = image.config.get("history")
    if not isinstance(steps, list):
        steps = []
    entries: list[HistoryEntry] = []
    next_layer = 0
    for step in steps:
        empty = bool(step.get("empty_layer", False))
        layer = None if empty or next_layer >= len(layers) else layers[next_layer]
        if not empty:
            next_layer += 1
        entries.append(_entry(step, layer, empty))
    for layer in layers[next_layer:]:  # layers the history does not describe
        entries.append(_entry({}, layer, False))
    entries.reverse()
    return entries


def _entry(step: dict[str, Any], layer: Descriptor | None, empty: bool) -> HistoryEntry:
    return HistoryEntry(
        created=step.get("created"),
        created_by=str(step.get("created_by", "")),
        size=int(layer["size"]) if layer else 0,
        comment=str(step.get("comment", "")),
        author=str(step.get("author", "")),
        empty_layer=empty,
        digest=str(layer["digest"]) if layer else None,
    )
