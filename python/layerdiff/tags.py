"""Naming images: ``tag`` gives an image another name, ``untag`` takes one away (``docker tag``,
``docker rmi``). Names are tags in an OCI layout: ``NAME[:TAG]`` in the default store or
``oci:PATH[:TAG]``."""

from __future__ import annotations

from layerdiff import refs
from layerdiff.catalog import load_image
from layerdiff.errors import ImageNotFoundError
from layerdiff.fsck import writing
from layerdiff.layout import REF_NAME, Layout

__all__ = ["tag", "untag"]


def tag(source: str | refs.LayoutRef, target: str | refs.LayoutRef) -> str:
    """Name the image ``source`` names ``target`` as well, replacing what ``target`` named; in
    another layout, the image's blobs are copied (hard-linked where possible) there first.
    Returns the image's manifest digest."""
    image = load_image(source)
    dst = refs.parse_layout_reference(target) if isinstance(target, str) else target
    blobs = [
        image.digest,
        str(image.manifest["config"]["digest"]),
        *(str(d["digest"]) for d in image.layers),
    ]
    with Layout.create_for_write(dst.layout) as layout, writing(layout):
        if not layout.same_as(image.layout):
            for digest in blobs:
                layout.import_blob(image.layout, digest)
        descriptor = {k: v for k, v in image.descriptor.items() if k != "annotations"}
        layout.set_tag(dst.write_tag, descriptor)
    return image.digest


def untag(image: str | refs.LayoutRef) -> str:
    """Remove the name ``image`` (``NAME[:TAG]``, or ``oci:PATH:TAG``); return the manifest
    digest it named. The blobs stay until ``gc`` finds nothing else uses them."""
    ref = refs.parse_layout_reference(image) if isinstance(image, str) else image
    found = load_image(ref)
    name = ref.tag
    if name is None:  # oci:PATH naming the layout's only image: by the tag it has, if any
        name = (found.descriptor.get("annotations") or {}).get(REF_NAME)
        if not isinstance(name, str):
            raise ImageNotFoundError(f"{ref.text}: the image has no tag to remove")
    if not found.layout.remove_tag(name):
        raise ImageNotFoundError(f"image not found: {ref.text}")
    return found.digest
