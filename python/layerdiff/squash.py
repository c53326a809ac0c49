"""``squash``: merge the last N layers of an image into one, without extracting them.

The core folds the layers' tar headers and streams their contents into one new deterministic
layer. A layer's headers are kept as a layer index (``$LAYERDIFF_HOME/layer-index/sha256/<hex>``,
by blob digest): ``commit`` and ``squash`` write one for every layer they make, and squash
writes one for every layer it had to read. With it a squash streams each layer once instead of
twice; an index is checked against its layer as it is used and rewritten from the layer when it
does not match.

The config is rewritten to match: the squashed diff_ids become one, the non-empty history
entries of the range become one entry, and the range's ``empty_layer`` entries (config only
changes) are kept, in their order, before it.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from layerdiff import _core, refs
from layerdiff.catalog import load_image
from layerdiff.errors import FormatError, InvalidArgumentError
from layerdiff.image import (
    CONFIG_MEDIA_TYPE,
    MANIFEST_MEDIA_TYPE,
    build_manifest,
    canonical_json,
    check_history,
    check_layer_media_types,
    rfc3339,
)
from layerdiff.image import source_date_epoch as _resolve_epoch
from layerdiff.layer import LayerInfo, check_options
from layerdiff.layout import Layout, writing

__all__ = ["CREATED_BY", "SquashResult", "squash", "squash_config"]

#: ``created_by`` of the history entry of a squashed layer.
CREATED_BY = "layerdiff squash"


@dataclass(frozen=True, kw_only=True)
class SquashResult:
    """What a squash made."""

    #: The new (squashed) layer.
    layer: LayerInfo
    #: How many layers went into it.
    squashed: int
    #: Digest of the new image manifest.
    manifest_digest: str
    #: Digest of the new image config.
    config_digest: str
    #: The reference the new image was tagged as.
    image: str


def squash_config(
    config: dict[str, Any],
    *,
    count: int,
    diff_id: str,
    created: str,
    comment: str | None,
) -> dict[str, Any]:
    """``config`` with its last ``count`` layers replaced by the one layer ``diff_id``."""
    out = copy.deepcopy(config)
    diff_ids: list[str] = out["rootfs"]["diff_ids"]
    keep = len(diff_ids) - count
    out["rootfs"]["diff_ids"] = [*diff_ids[:keep], diff_id]
    history = out.get("history")
    if history is None:
        history = [{"created_by": "(history not recorded)"} for _ in diff_ids]
    # Split the history where the first squashed layer's entry stands.
    layers_seen = 0
    split = len(history)
    for i, entry in enumerate(history):
        if not entry.get("empty_layer", False):
            if layers_seen == keep:
                split = i
                break
            layers_seen += 1
    in_range = history[split:]
    kept_empty = [h for h in in_range if h.get("empty_layer", False)]
    squashed_steps = [str(h.get("created_by", "")) for h in in_range if not h.get("empty_layer")]
    squashed: dict[str, Any] = {
        "created": created,
        "created_by": CREATED_BY,
        "comment": comment or f"squashed {count} layers: " + " && ".join(squashed_steps),
    }
    out["history"] = [*history[:split], *kept_empty, squashed]
    out["created"] = created
    check_history(out)
    return out


def squash(
    image: str | refs.LayoutRef,
    new_image: str | refs.LayoutRef,
    *,
    layers: int | None = None,
    message: str | None = None,
    compression: str = "gzip",
    compression_level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
    on_step: Callable[[str], None] | None = None,
) -> SquashResult:
    """Write ``new_image``: ``image`` with its last ``layers`` layers (default: all) as one.

    ``compression`` and ``compression_level`` are those of :func:`layerdiff.write_layer`; the
    squashed layer's bytes are those a commit of the same tar at that level would give.
    ``on_step`` is called with a short message as each step starts (for progress output).
    """
    step = on_step or (lambda _msg: None)
    src = load_image(image)
    target = refs.check_writable(
        refs.parse_layout_reference(new_image) if isinstance(new_image, str) else new_image
    )
    n_threads = check_options(
        compression=compression, threads=threads, compression_level=compression_level
    )
    total = len(src.layers)
    count = total if layers is None else layers
    if total == 0:
        raise FormatError(f"{src.ref}: the image has no layers to squash")
    if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= total:
        raise InvalidArgumentError(f"layers={count!r}: must be between 1 and {total} for {src.ref}")
    check_history(src.config)
    check_layer_media_types(src.layers, src.ref.text, first=total - count)
    epoch = _resolve_epoch(source_date_epoch)

    with Layout.create_for_write(target.layout) as layout, writing(layout):
        kept = src.layers[: total - count]
        if not layout.same_as(src.layout):
            step(f"copying the {len(kept)} layers kept")
            for desc in kept:
                layout.import_blob(src.layout, desc["digest"])
        step(f"merging {count} layer{'s' if count != 1 else ''} into one")
        blob_paths = [src.layout.blob_path(d["digest"]) for d in src.layers]
        indexes = refs.layer_index_dir()
        # Every blob the merge reads is checked against its descriptor (size and sha256), as
        # unpack checks it, on a thread of its own while the core merges: a blob swapped in the
        # layout must not become a new layer that hashes right. (The merge may take only parts
        # of a blob, through its layer index.)
        stopped = threading.Event()
        checking = ThreadPoolExecutor(max_workers=1, thread_name_prefix="layerdiff-check")

        def check_all() -> None:
            for desc in src.layers:
                src.layout.check_blob(desc, stop=stopped.is_set)

        checked = checking.submit(check_all)
        try:
            merged = _core.squash_layers(
                blob_paths[: total - count],
                blob_paths[total - count :],
                layout.blobs_dir,
                compression=compression,
                level=compression_level,
                threads=n_threads,
                source_date_epoch=epoch,
                indexes=[
                    indexes / str(d["digest"]).removeprefix("sha256:")
                    for d in src.layers[total - count :]
                ],
                index_dir=indexes,
            )
        except BaseException:
            stopped.set()
            raise
        finally:
            checking.shutdown(wait=True)
        # Nothing is tagged when a blob is not what it should be. The merged layer is left:
        # another image may hold the very same blob, and gc removes it when none does.
        checked.result()
        layer = LayerInfo.from_core(merged)
        step("writing config and manifest")
        config = squash_config(
            src.config, count=count, diff_id=layer.diff_id, created=rfc3339(epoch), comment=message
        )
        config_desc = layout.put_blob(canonical_json(config), media_type=CONFIG_MEDIA_TYPE)
        layer_desc = {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
        manifest = build_manifest(config=config_desc, layers=[*kept, layer_desc])
        manifest_desc = layout.put_blob(canonical_json(manifest), media_type=MANIFEST_MEDIA_TYPE)
        step(f"tagging {target.text}")
        layout.set_tag(target.write_tag, manifest_desc)
    return SquashResult(
        layer=layer,
        squashed=count,
        manifest_digest=manifest_desc["digest"],
        config_digest=config_desc["digest"],
        image=target.text,
    )
