"""``commit``: turn a tree (or the changes in it) into a new image, optionally on a base image.

The order of writes is what keeps a failed commit harmless: the layer, config and manifest
blobs are written first (unreferenced blobs are garbage, never damage) and the tag is set last,
in one atomic update of ``index.json``.
"""

from __future__ import annotations

import copy
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from layerdiff import refs
from layerdiff.blobstatus import BlobStatus, OnBlob
from layerdiff.catalog import Image, load_image, require_blob
from layerdiff.errors import (
    FormatError,
    InvalidArgumentError,
    InvalidReferenceError,
)
from layerdiff.image import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    add_layer,
    build_manifest,
    canonical_json,
    check_history,
    new_config,
    rfc3339,
    runtime_config_problems,
    short_json,
)
from layerdiff.image import source_date_epoch as _resolve_epoch
from layerdiff.layer import (
    LayerInfo,
    StrPath,
    check_exclude,
    check_options,
    check_paths,
    check_sequence,
    check_source,
    write_layer,
    write_layer_to_fd,
)
from layerdiff.layout import Layout, writing

__all__ = ["CREATED_BY", "CommitResult", "commit"]

#: ``created_by`` of the history entry a commit adds.
CREATED_BY = "layerdiff commit"


def _check_base(parent: Image) -> None:
    """Raise unless the base image can carry one more layer: its history matches its layers
    and every layer blob is present with its size (the commit would otherwise make an image
    that refers to what is not there)."""
    try:
        check_history(parent.config)
    except FormatError as e:
        raise type(e)(f"base image {parent.ref.text}: {e}") from e
    for desc in parent.layers:
        digest = desc["digest"]
        require_blob(
            parent.layout, digest, what=f"layer {digest} of the base image", size=desc.get("size")
        )


@dataclass(frozen=True, kw_only=True)
class CommitResult:
    """What a commit made."""

    #: The new layer.
    layer: LayerInfo
    #: Digest of the new image manifest (the image's identity).
    manifest_digest: str
    #: Digest of the new image config.
    config_digest: str
    #: The reference the image was tagged as.
    image: str
    #: For a commit to a registry: what happened to each blob (base layers, layer, config).
    blobs: tuple[BlobStatus, ...] = ()


def commit(
    upper: StrPath,
    *,
    image: str | refs.LayoutRef | refs.RegistryRef,
    lower: StrPath | None = None,
    overlay: bool = False,
    lowers: Sequence[StrPath] = (),
    content: bool = False,
    base: str | refs.LayoutRef | Image | None = None,
    message: str | None = None,
    author: str | None = None,
    changes: Sequence[str] = (),
    compression: str = "gzip",
    compression_level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
    on_step: Callable[[str], None] | None = None,
    exclude: Sequence[str] = (),
    root_ids: tuple[int, int] | None = None,
    run_config: dict[str, Any] | None = None,
    created_by: str = CREATED_BY,
    tls_verify: bool = True,
    creds: str | None = None,
    on_blob: OnBlob | None = None,
) -> CommitResult:
    """Commit ``upper`` as a new image tagged ``image`` (``oci:PATH[:TAG]`` or ``NAME[:TAG]``,
    or ``docker://HOST/REPO[:TAG]``: straight to a registry).

    The new image is ``base`` (if given) plus one layer: the whole ``upper`` tree, or with
    ``lower`` the two-tree diff, or with ``overlay`` the changes an overlayfs upper dir records;
    ``content`` compares file contents in the diff (see :func:`layerdiff.diff`).
    Like ``docker commit`` a layer is always added, also when ``changes`` (``ENV …``, ``CMD …``)
    only alter the config. ``message`` and ``author`` go into the new history entry.
    ``source_date_epoch`` (default ``$SOURCE_DATE_EPOCH``) fixes the timestamps and clamps mtimes.
    ``on_step`` is called with a short message as each step starts (for progress output).
    ``exclude`` names paths left out of the layer (with what is below them; the target layout,
    or the store, is left out when it is inside ``upper``), ``root_ids`` the (uid, gid) recorded as
    root (see :func:`write_layer`); ``run_config`` replaces the base's runtime
    config (``Env``, ``Cmd``…) before ``changes`` apply, as a container's does.
    ``compression_level`` is that of :func:`write_layer`.
    A failure at any point leaves the target's tags as they were.

    To a registry, the layer is uploaded while it is produced (nothing of it is stored
    locally); the base's blobs are pushed as :func:`layerdiff.push` does, then the config and
    the manifest. ``tls_verify``, ``creds`` and ``on_blob`` are those of ``push``.
    """
    step = on_step or (lambda _msg: None)
    if not isinstance(image, (str, refs.LayoutRef, refs.RegistryRef)):
        raise InvalidArgumentError(f"image={image!r}: expected an image reference (a str)")
    if base is not None and not isinstance(base, (str, refs.LayoutRef, Image)):
        raise InvalidArgumentError(f"base={base!r}: expected an image reference (a str)")
    changes = check_sequence("changes", changes)
    for i, change in enumerate(changes):
        _check_text(f"changes[{i}]", change, optional=False)
    _check_text("message", message)
    _check_text("author", author)
    _check_text("created_by", created_by, optional=False)
    _check_run_config(run_config)
    lowers = check_paths("lowers", lowers)
    check_source(upper, lower, overlay, lowers)
    exclude = check_exclude(exclude)
    target = refs.parse_reference(image) if isinstance(image, str) else image
    if isinstance(target, refs.ArchiveRef):
        raise InvalidReferenceError(
            f"cannot commit into {target.text}: commit to an image, then layerdiff save it"
        )
    if isinstance(target, refs.LayoutRef):
        refs.check_writable(target)
    if isinstance(target, refs.RegistryRef) and target.digest is not None:
        raise InvalidReferenceError(
            f"cannot commit to {target.text}: a new image's digest is not known before it is "
            "written; name it by tag"
        )
    # Check everything that can be checked before the first byte is written.
    with_changes = _parse_changes(changes)
    check_options(compression=compression, threads=threads, compression_level=compression_level)
    epoch = _resolve_epoch(source_date_epoch)
    parent: Image | None = None
    if isinstance(base, Image):
        parent = base
    elif base is not None:
        parent = load_image(base)
    if parent is not None:
        _check_base(parent)
    created = rfc3339(epoch)
    base_config = parent.config if parent else new_config(created=created)
    runtime = run_config if run_config is not None else (base_config.get("config") or {})
    if run_config is None and parent is not None:
        # Carried into the new image, and changes apply to it: a field of the wrong type
        # (an Env that is a string) would make the new image as broken as the base.
        problems = (
            runtime_config_problems(runtime, "config.")
            if isinstance(runtime, dict)
            else [f"config must be an object, not {short_json(runtime)}"]
        )
        if problems:
            raise FormatError(f"base image {parent.ref.text}: image config: {problems[0]}")
    # Applied now, not once the layer is written: a change that its variables make invalid
    # (``EXPOSE $PORT``) stops the commit before anything is written.
    runtime = with_changes(runtime)

    def make_config(layer: LayerInfo) -> dict[str, Any]:
        config = {**base_config, "config": runtime}
        return add_layer(
            config,
            diff_id=layer.diff_id,
            created=created,
            created_by=created_by,
            comment=message,
            author=author,
        )

    if isinstance(target, refs.RegistryRef):
        from layerdiff.commit_remote import commit_to_registry

        return commit_to_registry(
            upper,
            target=target,
            parent=parent,
            make_config=make_config,
            write=lambda fd: write_layer_to_fd(
                upper,
                fd,
                lower=lower,
                overlay=overlay,
                lowers=lowers,
                content=content,
                compression=compression,
                compression_level=compression_level,
                threads=threads,
                source_date_epoch=epoch,
                exclude=exclude,
                root_ids=root_ids,
            ),
            tls_verify=tls_verify,
            creds=creds,
            on_step=step,
            on_blob=on_blob,
        )

    # The layout written into (the whole store, for a store image) is left out of the layer
    # when it is inside the tree, as tar leaves out the archive it writes.
    own = refs.store_home() if target.in_store else target.layout
    inside = _relative_inside(own, upper)
    if inside is not None:
        exclude = [*exclude, inside]

    with Layout.create_for_write(target.layout) as layout, writing(layout):
        # A damaged index stops the commit now, not once the layer is written: its blobs
        # would be left behind, and neither gc nor fsck can run on the layout until then.
        layout.read_index()
        base_layers = parent.layers if parent else []
        if parent is not None and parent.layout.same_as(layout):
            # Again, now that gc waits for this commit: an rmi of the base, and the gc it runs,
            # may have come between the first check and here.
            _check_base(parent)
        elif parent is not None:
            step(f"copying {len(base_layers)} base layers")
            for desc in base_layers:
                layout.import_blob(parent.layout, desc["digest"])

        step("writing layer")
        layer = write_layer(
            upper,
            dest=layout.path,
            lower=lower,
            overlay=overlay,
            lowers=lowers,
            content=content,
            compression=compression,
            compression_level=compression_level,
            threads=threads,
            source_date_epoch=epoch,
            exclude=exclude,
            root_ids=root_ids,
        )

        step("writing config and manifest")
        config = make_config(layer)
        config_desc = layout.put_blob(canonical_json(config), media_type=CONFIG_MEDIA_TYPE)
        layer_desc = {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
        manifest = build_manifest(config=config_desc, layers=[*base_layers, layer_desc])
        manifest_desc = layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE)

        step(f"tagging {target.text}")
        layout.set_tag(target.write_tag, manifest_desc)
    return CommitResult(
        layer=layer,
        manifest_digest=manifest_desc["digest"],
        config_digest=config_desc["digest"],
        image=target.text,
    )


def _check_text(name: str, value: object, *, optional: bool = True) -> None:
    """Raise InvalidArgumentError unless ``value`` is a str (or None, when ``optional``) that
    UTF-8, and so an image config, can hold."""
    if value is None and optional:
        return
    if not isinstance(value, str):
        expected = "a str or None" if optional else "a str"
        raise InvalidArgumentError(f"{name}={value!r}: expected {expected}")
    try:
        value.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(
            f"{name}={value!r}: not text UTF-8 can hold (a lone surrogate, as undecodable "
            "bytes decoded with surrogateescape give)"
        ) from None


def _check_run_config(run_config: object) -> None:
    """Raise InvalidArgumentError unless ``run_config`` is None or an image config's ``config``
    section an image can hold: JSON, in UTF-8, each field of its OCI type."""
    if run_config is None:
        return
    if not isinstance(run_config, dict):
        raise InvalidArgumentError(
            f"run_config={run_config!r}: expected a dict (an image config's config: Env, Cmd…)"
        )
    try:
        canonical_json(run_config)
    except (TypeError, ValueError, RecursionError) as e:
        raise InvalidArgumentError(f"run_config: not JSON an image config can hold: {e}") from None
    problems = runtime_config_problems(run_config)
    if problems:
        raise InvalidArgumentError(f"run_config: {'; '.join(problems)}")


def _relative_inside(path: StrPath, tree: StrPath) -> str | None:
    """``path`` relative to the directory ``tree`` when it is below it, links resolved."""
    real, top = os.path.realpath(path), os.path.realpath(tree)
    if os.path.commonpath([real, top]) != top or real == top:
        return None
    return os.path.relpath(real, top)


def _parse_changes(changes: Sequence[str]) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """Parse ``changes`` now; the function returned applies them to a copy of a config's
    ``config`` section."""
    if not changes:
        return copy.deepcopy
    from layerdiff.instructions import apply_changes, parse_change, split_changes

    parsed = [parse_change(c) for c in split_changes(changes)]
    return lambda config: apply_changes(config, parsed)
