"""Commit straight to a registry: the layer is uploaded while the core produces it.

The core writes the compressed layer into a pipe; :class:`~layerdiff.transfer.LayerStream`
reads it and PATCHes it to an upload session chunk by chunk. The digest is known when the core
returns, and closes the upload (``PUT ?digest=``). No copy of the layer is written to local
disk. Then the config and the manifest are pushed; the base image's blobs before all that, as a
push does (exists / mounted / uploaded).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from layerdiff import refs
from layerdiff.image import CONFIG_MEDIA_TYPE, MANIFEST_MEDIA_TYPE, build_manifest, canonical_json
from layerdiff.layer import LayerInfo, StrPath
from layerdiff.remote import open_registry, put_manifest
from layerdiff.transfer import BlobStatus, LayerStream, OnBlob, Sources, push_blob, push_bytes

if TYPE_CHECKING:
    from layerdiff.catalog import Image
    from layerdiff.commit import CommitResult

__all__ = ["commit_to_registry"]


def _quiet(_digest: str, _done: int, _size: int, _status: str | None) -> None:
    pass


def commit_to_registry(
    upper: StrPath,
    *,
    target: refs.RegistryRef,
    parent: Image | None,
    make_config: Callable[[LayerInfo], dict[str, Any]],
    write: Callable[[int], LayerInfo],
    tls_verify: bool,
    creds: str | None,
    on_step: Callable[[str], None],
    on_blob: OnBlob | None,
) -> CommitResult:
    """The registry half of :func:`layerdiff.commit` (which checks the arguments first)."""
    from layerdiff.commit import CommitResult

    report = on_blob or _quiet
    statuses: list[BlobStatus] = []
    with open_registry(target, tls_verify=tls_verify, creds=creds) as reg:
        base_layers = parent.layers if parent else []
        if parent is not None:
            on_step(f"pushing {len(base_layers)} base layers")
            sources = Sources(parent.layout)
            for desc in base_layers:
                statuses.append(
                    push_blob(
                        reg,
                        target.repository,
                        parent.layout,
                        desc,
                        mount_from=sources.repositories(reg.host, str(desc["digest"])),
                        on_blob=report,
                    )
                )

        on_step(f"streaming the layer to {target.host}/{target.repository}")
        stream = LayerStream(reg, target.repository, report)
        try:
            try:
                layer = write(stream.fd)
            except BaseException:
                stream.abort()  # the chunks still queued are not sent
                stream.raise_error()  # the upload's failure is why the writer stopped
                raise
            stream.end_of_layer()
            statuses.append(stream.close(layer.digest, layer.size))
        except BaseException:
            # Interrupted or failed, also while the last chunks went: the registry's session
            # is cancelled, as docker cancels it, not left to hold what was sent.
            stream.cancel()
            raise

        on_step("pushing config and manifest")
        config_bytes = canonical_json(make_config(layer))
        config_status = push_bytes(reg, target.repository, config_bytes, report)
        statuses.append(config_status)
        config_desc = {
            "mediaType": CONFIG_MEDIA_TYPE,
            "digest": config_status.digest,
            "size": config_status.size,
        }
        layer_desc = {"mediaType": layer.media_type, "digest": layer.digest, "size": layer.size}
        manifest = build_manifest(config=config_desc, layers=[*base_layers, layer_desc])
        digest = put_manifest(reg, target, canonical_json(manifest), MANIFEST_MEDIA_TYPE)
    if parent is not None:
        Sources(parent.layout).remember(
            target.host, target.repository, [str(d["digest"]) for d in base_layers]
        )
    return CommitResult(
        layer=layer,
        manifest_digest=digest,
        config_digest=config_status.digest,
        image=target.text,
        blobs=tuple(statuses),
    )
