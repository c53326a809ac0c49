"""Naming images: ``tag`` gives an image another name, ``untag`` takes one away (``docker tag``,
``docker rmi``). Names are tags in an OCI layout: ``NAME[:TAG]`` in the default store or
``oci:PATH[:TAG]``."""

from __future__ import annotations

import os
from pathlib import Path

from layerdiff import refs
from layerdiff.catalog import by_image_id, index_tag, load_image, require_blob
from layerdiff.errors import ImageNotFoundError
from layerdiff.layout import REF_NAME, Descriptor, Layout, tag_of, writing

__all__ = [
    "named",
    "remove_untagged",
    "tag",
    "tag_to_remove",
    "tags_of_image_id",
    "untag",
    "untagged_image",
]


def tag(source: str | refs.LayoutRef, target: str | refs.LayoutRef) -> str:
    """Name the image ``source`` names ``target`` as well, replacing what ``target`` named; in
    another layout, the image's blobs are copied there first (of a multi-platform image, this
    machine's platform's; in the same layout the name goes to the whole index, as docker and
    umoci tag it). Returns the digest the name was given: the manifest's, or the index's."""
    image = load_image(source)
    dst = refs.check_writable(
        refs.parse_layout_reference(target) if isinstance(target, str) else target
    )
    blobs = [
        image.digest,
        str(image.manifest["config"]["digest"]),
        *(str(d["digest"]) for d in image.layers),
    ]
    same = Layout(dst.layout).same_as(image.layout)
    entry = image.descriptor
    if same and image.entry is not None:
        entry = image.entry
        blobs.insert(0, str(entry["digest"]))
    if not same:
        # Every blob is checked before any is copied: a broken source leaves nothing behind.
        for digest in blobs:
            require_blob(image.layout, digest, what=f"blob {digest} of {image.ref.text}")
    with Layout.create_for_write(dst.layout) as layout, writing(layout):
        if not same:
            for digest in blobs:
                layout.import_blob(image.layout, digest)
        else:
            # Checked now that gc waits for this tag: an rmi of the source, and the gc it runs,
            # may have come since the image was read.
            for digest in blobs:
                require_blob(layout, digest, what=f"blob {digest} of {image.ref.text}")
        descriptor = {k: v for k, v in entry.items() if k != "annotations"}
        layout.set_tag(dst.write_tag, descriptor)
    return str(descriptor["digest"])


def named(image: str | refs.LayoutRef) -> Descriptor:
    """The index entry the name ``image`` (``NAME[:TAG]``, or ``oci:PATH[:TAG]``) points at,
    without reading the image, which may be broken; ImageNotFoundError if there is none."""
    ref = refs.parse_layout_reference(image) if isinstance(image, str) else image
    try:
        layout = Layout.open(ref.layout)
        return layout.resolve(index_tag(layout, ref))
    except ImageNotFoundError as e:
        raise ImageNotFoundError(f"image not found: {ref.text} ({e})") from e


def untag(image: str | refs.LayoutRef) -> str:
    """Remove the name ``image`` (``NAME[:TAG]``, or ``oci:PATH:TAG``); return the digest it
    named ("" for an index entry naming none). Only the layout's index is read, so the name of
    an image whose blobs are missing or corrupt goes as well. The blobs stay until ``gc`` finds
    nothing else uses them."""
    ref = refs.parse_layout_reference(image) if isinstance(image, str) else image
    layout, name, descriptor = _tag_to_remove(ref)
    # A damaged entry naming no digest goes too (it is the only one of its name).
    digest = descriptor.get("digest")
    digest = digest if isinstance(digest, str) else None
    if not layout.remove_tag(name, digest=digest):
        raise ImageNotFoundError(f"image not found: {ref.text}")
    return digest or ""


def tag_to_remove(image: str | refs.LayoutRef) -> tuple[Path, str]:
    """The layout (its real path) and the tag :func:`untag` would remove for ``image``;
    ImageNotFoundError when it would find none. Nothing is changed."""
    ref = refs.parse_layout_reference(image) if isinstance(image, str) else image
    layout, name, _ = _tag_to_remove(ref)
    return Path(os.path.realpath(layout.path)), name


def _tag_to_remove(ref: refs.LayoutRef) -> tuple[Layout, str, Descriptor]:
    layout = Layout.open(ref.layout)
    # A name by digest removes that name only, never a tag that happens to hold the digest.
    name = ref.tag if ref.pinned is not None else index_tag(layout, ref)
    try:
        descriptor = layout.resolve(name)
    except ImageNotFoundError as e:
        raise ImageNotFoundError(f"image not found: {ref.text} ({e})") from e
    if name is None:  # oci:PATH naming the layout's only image: by the tag it has, if any
        name = tag_of(descriptor)
        if name is None:
            raise ImageNotFoundError(f"{ref.text}: the image has no tag to remove")
    # A name several images share (a layout docker 25 saves) was refused by resolve.
    return layout, name, descriptor


def untagged_image(text: str) -> tuple[Path, str] | None:
    """The store's untagged image that ``text`` names by its digest, as ``images`` shows it
    (12 hex digits or more, ``sha256:`` optional): (the store's real path, the digest). None
    when ``text`` is no such prefix or names nothing untagged; ImageNotFoundError when it
    names several."""
    path = refs.store_layout_path()
    if not (path / "index.json").is_file():
        return None
    found = by_image_id(Layout.open(path), text, keep=_untagged, what="untagged images")
    return (Path(os.path.realpath(path)), found[0]) if found else None


def tags_of_image_id(text: str) -> list[str]:
    """The store's tags (``NAME:TAG``) of the image ``text`` names by its ID, as ``images``
    shows it (12 hex digits or more, ``sha256:`` optional); empty when it names none, and
    ImageNotFoundError when it names several images."""
    path = refs.store_layout_path()
    if not (path / "index.json").is_file():
        return []
    layout = Layout.open(path)
    found = by_image_id(layout, text)
    if found is None:
        return []
    return sorted(t for m in layout.manifests() if m.get("digest") == found[0] and (t := tag_of(m)))


def remove_untagged(layout: str | os.PathLike[str], digest: str) -> None:
    """Drop the untagged entries of ``digest`` from the layout's index (its blobs stay until
    ``gc``)."""
    Layout.open(layout).update_index(
        lambda ms: [m for m in ms if not (_untagged(m) and m.get("digest") == digest)],
        freeing=True,
    )


def _untagged(desc: Descriptor) -> bool:
    return REF_NAME not in (desc.get("annotations") or {})
