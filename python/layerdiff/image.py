"""Image metadata: OCI image config (with ``rootfs.diff_ids`` and ``history``) and manifests.

Pure functions over JSON-shaped dicts; reading and writing blobs is :mod:`layerdiff.layout`'s
job. JSON is serialised by :func:`canonical_json` (sorted keys, no spaces), so the same input
always gives the same bytes and therefore the same digest.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from layerdiff.errors import FormatError, InvalidArgumentError
from layerdiff.layout import Descriptor, check_digest

__all__ = [
    "CONFIG_MEDIA_TYPE",
    "DOCKER_CONFIG_MEDIA_TYPE",
    "DOCKER_MANIFEST_MEDIA_TYPE",
    "IMAGE_CONFIG_MEDIA_TYPES",
    "INDEX_MEDIA_TYPES",
    "MANIFEST_MEDIA_TYPE",
    "add_layer",
    "build_manifest",
    "canonical_json",
    "check_history",
    "check_layer_media_types",
    "config_type_problems",
    "go_arch",
    "new_config",
    "oci_layer_media_type",
    "rfc3339",
    "runtime_config_problems",
    "source_date_epoch",
]

#: OCI image manifest.
MANIFEST_MEDIA_TYPE = "application/vnd.oci.image.manifest.v1+json"
#: OCI image config.
CONFIG_MEDIA_TYPE = "application/vnd.oci.image.config.v1+json"
#: Docker image manifest v2 schema 2 (accepted as a base image).
DOCKER_MANIFEST_MEDIA_TYPE = "application/vnd.docker.distribution.manifest.v2+json"
#: Docker image config (the body is compatible with the OCI one).
DOCKER_CONFIG_MEDIA_TYPE = "application/vnd.docker.container.image.v1+json"
#: The configs of container images; a manifest with another is an artifact's.
IMAGE_CONFIG_MEDIA_TYPES = frozenset({CONFIG_MEDIA_TYPE, DOCKER_CONFIG_MEDIA_TYPE})
#: Multi-platform indexes: OCI image index and Docker manifest list.
INDEX_MEDIA_TYPES = frozenset(
    {
        "application/vnd.oci.image.index.v1+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
    }
)

# Docker layer media types and their OCI names, for building an OCI manifest on a Docker base.
_DOCKER_LAYERS = {
    "application/vnd.docker.image.rootfs.diff.tar": "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": (
        "application/vnd.oci.image.layer.v1.tar+gzip"
    ),
    "application/vnd.docker.image.rootfs.diff.tar.zstd": (
        "application/vnd.oci.image.layer.v1.tar+zstd"
    ),
    "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip": (
        "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
    ),
}

# uname machine → GOARCH (and variant), the names OCI configs use.
_GO_ARCH = {
    "x86_64": ("amd64", None),
    "amd64": ("amd64", None),
    "aarch64": ("arm64", "v8"),
    "arm64": ("arm64", "v8"),
    "armv7l": ("arm", "v7"),
    "armv6l": ("arm", "v6"),
    "i386": ("386", None),
    "i686": ("386", None),
    "ppc64le": ("ppc64le", None),
    "s390x": ("s390x", None),
    "riscv64": ("riscv64", None),
    "loongarch64": ("loong64", None),
    "mips64": ("mips64le", None),
}


def canonical_json(obj: Any) -> bytes:
    """Deterministic compact JSON: sorted keys, no whitespace, UTF-8."""
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def go_arch(machine: str | None = None) -> tuple[str, str | None]:
    """The OCI ``(architecture, variant)`` of ``machine`` (default: this machine)."""
    m = (machine or os.uname().machine).lower()
    return _GO_ARCH.get(m, (m, None))


#: The last second RFC 3339 can write (9999-12-31T23:59:59Z): image configs hold their times so.
MAX_EPOCH = 253_402_300_799


def source_date_epoch(value: int | None = None) -> int | None:
    """``value`` when given, else ``$SOURCE_DATE_EPOCH`` as an int, else None."""
    if value is not None:
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_EPOCH:
            raise InvalidArgumentError(
                f"source_date_epoch={value!r}: expected an integer from 0 to {MAX_EPOCH} "
                "(the year 9999)"
            )
        return value
    text = os.environ.get("SOURCE_DATE_EPOCH")
    if text is None or text == "":
        return None
    if not (text.isascii() and text.isdigit()) or int(text) > MAX_EPOCH:
        raise InvalidArgumentError(
            f"SOURCE_DATE_EPOCH={text!r}: expected seconds since 1970, 0 to {MAX_EPOCH} "
            "(the year 9999)"
        )
    return int(text)


def rfc3339(epoch: int | None = None) -> str:
    """``epoch`` (default: ``SOURCE_DATE_EPOCH``, else now) as RFC 3339 UTC, ``Z``-suffixed."""
    seconds = source_date_epoch(epoch)
    if seconds is None:
        seconds = int(time.time())
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def new_config(*, created: str | None = None, machine: str | None = None) -> dict[str, Any]:
    """An empty image config for this machine: no layers, no history."""
    arch, variant = go_arch(machine)
    config: dict[str, Any] = {
        "architecture": arch,
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": []},
        "history": [],
        "created": created or rfc3339(),
    }
    if variant and arch == "arm":  # arm64's v8 is the default and usually left out
        config["variant"] = variant
    return config


def check_history(config: dict[str, Any]) -> None:
    """Raise FormatError unless the non-empty history entries match the layers one to one.

    A config without history, or with an empty one, is accepted (history is optional in OCI,
    and Go's JSON encoding leaves an empty one out, so both mean the same).
    """
    rootfs = config.get("rootfs")
    if not isinstance(rootfs, dict) or rootfs.get("type") != "layers":
        raise FormatError("image config: rootfs.type must be 'layers'")
    diff_ids = rootfs.get("diff_ids")
    if not isinstance(diff_ids, list):
        raise FormatError("image config: rootfs.diff_ids must be a list")
    history = config.get("history")
    if history is None or history == []:
        return
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        raise FormatError("image config: history must be a list of objects")
    layers = sum(1 for h in history if not h.get("empty_layer", False))
    if layers != len(diff_ids):
        raise FormatError(
            f"image config: {layers} history entries describe a layer but there are "
            f"{len(diff_ids)} diff_ids"
        )


# The JSON type of each field of an image config, as the OCI image-spec (config.md) gives it,
# and of the fields of its ``config`` section (the container's defaults; docker's Shell,
# OnBuild and Healthcheck too). A null is accepted throughout: it is how Go writes an empty
# list or map, and docker's configs hold them (``"Cmd": null``).
_CONFIG_FIELDS = {
    "created": "a string",
    "author": "a string",
    "architecture": "a string",
    "os": "a string",
    "os.version": "a string",
    "os.features": "a list of strings",
    "variant": "a string",
    "config": "an object",
}
_RUNTIME_FIELDS = {
    "User": "a string",
    "WorkingDir": "a string",
    "StopSignal": "a string",
    "Env": "a list of strings",
    "Entrypoint": "a list of strings",
    "Cmd": "a list of strings",
    "Shell": "a list of strings",
    "OnBuild": "a list of strings",
    "ExposedPorts": "an object of objects",
    "Volumes": "an object of objects",
    "Labels": "an object of strings",
    "ArgsEscaped": "a boolean",
    "Healthcheck": "an object",
}
_HISTORY_FIELDS = {
    "created": "a string",
    "author": "a string",
    "created_by": "a string",
    "comment": "a string",
    "empty_layer": "a boolean",
}
_IS = {
    "a string": lambda v: isinstance(v, str),
    "a boolean": lambda v: isinstance(v, bool),
    "an object": lambda v: isinstance(v, dict),
    "a list of strings": lambda v: isinstance(v, list) and all(isinstance(x, str) for x in v),
    "an object of objects": lambda v: (
        isinstance(v, dict) and all(isinstance(x, dict) for x in v.values())
    ),
    "an object of strings": lambda v: (
        isinstance(v, dict) and all(isinstance(x, str) for x in v.values())
    ),
}


def _mistyped(obj: dict[str, Any], fields: dict[str, str], prefix: str) -> list[str]:
    return [
        f"{prefix}{name} must be {kind}, not {short_json(obj[name])}"
        for name, kind in fields.items()
        if obj.get(name) is not None and not _IS[kind](obj[name])
    ]


def runtime_config_problems(runtime: dict[str, Any], prefix: str = "") -> list[str]:
    """What in an image config's ``config`` section (``Env``, ``Cmd``…) is not of the type
    the OCI image-spec gives it, one message each (``prefix`` before each field's name)."""
    return _mistyped(runtime, _RUNTIME_FIELDS, prefix)


def config_type_problems(config: dict[str, Any]) -> list[str]:
    """What in the image config ``config`` is not of the type the OCI image-spec gives it: its
    own fields, its ``config`` section's and its history entries', one message each."""
    problems = _mistyped(config, _CONFIG_FIELDS, "")
    if isinstance(config.get("config"), dict):
        problems += runtime_config_problems(config["config"], "config.")
    history = config.get("history")
    for i, entry in enumerate(history if isinstance(history, list) else []):
        if isinstance(entry, dict):
            problems += _mistyped(entry, _HISTORY_FIELDS, f"history[{i}].")
    return [f"image config: {p}" for p in problems]


def add_layer(
    config: dict[str, Any],
    *,
    diff_id: str | None,
    created: str,
    created_by: str,
    comment: str | None = None,
    author: str | None = None,
) -> dict[str, Any]:
    """Return a copy of ``config`` with one more history entry (and layer, unless ``diff_id``
    is None: then the entry is an ``empty_layer`` one, for a config-only change)."""
    out = copy.deepcopy(config)
    out.setdefault("config", {})
    rootfs = out.setdefault("rootfs", {"type": "layers", "diff_ids": []})
    rootfs.setdefault("diff_ids", [])
    if not out.get("history"):
        # A base without history: describe its layers so the counts still match.
        out["history"] = [{"created_by": "(history not recorded)"} for _ in rootfs["diff_ids"]]
    check_history(out)
    entry: dict[str, Any] = {"created": created, "created_by": created_by}
    if comment:
        entry["comment"] = comment
    if author:
        entry["author"] = author
        out["author"] = author
    else:
        # As ``docker commit``: the image's author is the commit's, none when none is given.
        out.pop("author", None)
    if diff_id is None:
        entry["empty_layer"] = True
    else:
        rootfs["diff_ids"].append(diff_id)
    out["history"].append(entry)
    out["created"] = created
    check_history(out)
    return out


#: OCI layer media types (the non-distributable ones are deprecated, but images have them).
_OCI_LAYERS = frozenset(
    f"application/vnd.oci.image.layer.{kind}v1.tar{compression}"
    for kind in ("", "nondistributable.")
    for compression in ("", "+gzip", "+zstd")
)


def short_json(value: object) -> str:
    """``value`` as JSON, cut to fit in a one-line message."""
    text = json.dumps(value)
    return text if len(text) <= 60 else text[:59] + "…"


def _descriptor_problems(desc: object, what: str) -> list[str]:
    """What makes ``desc`` no content descriptor (a digest, a size, a media type), one message
    each, ``what`` naming it."""
    if not isinstance(desc, dict):
        return [f"{what} must be a descriptor (an object), not {short_json(desc)}"]
    problems = []
    if not isinstance(desc.get("digest"), str):
        problems.append(f"{what} has no digest")
    size = desc.get("size")
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        problems.append(f"{what} has no size (a whole number of bytes): {short_json(size)}")
    if not isinstance(desc.get("mediaType"), str):
        problems.append(f"{what} has no media type")
    return problems


def image_shape_problems(manifest: dict[str, Any], config: object) -> list[str]:
    """What in an image's manifest and config has not the shape an image's must have to be
    read (descriptors with a digest, size and media type; a config object whose fields have
    the OCI image-spec's types, with ``rootfs.diff_ids`` and ``history`` lists): one message
    each. A config of another media type (an artifact's) is only checked to be there."""
    problems = _descriptor_problems(manifest.get("config"), "the manifest's config")
    layers = manifest.get("layers", [])
    if not isinstance(layers, list):
        return [*problems, f"the manifest's layers must be a list, not {short_json(layers)}"]
    for i, layer in enumerate(layers):
        problems += _descriptor_problems(layer, f"the manifest's layers[{i}]")
    config_desc = manifest.get("config")
    media = config_desc.get("mediaType") if isinstance(config_desc, dict) else None
    if not isinstance(media, str) or media not in IMAGE_CONFIG_MEDIA_TYPES:
        return problems
    if not isinstance(config, dict):
        return [*problems, f"the image config must be an object, not {short_json(config)}"]
    rootfs = config.get("rootfs")
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    # Left out or null (moby writes it with omitempty, Go's OCI types as null) is none, which
    # an image without layers may have.
    listed = diff_ids is None or (
        isinstance(diff_ids, list) and all(isinstance(d, str) for d in diff_ids)
    )
    if not isinstance(rootfs, dict) or not listed or (diff_ids is None and layers):
        problems.append(
            f"image config: rootfs.diff_ids must be a list of digests, one per layer: "
            f"{short_json(rootfs)}"
        )
    history = config.get("history")
    if history is not None and not (
        isinstance(history, list) and all(isinstance(h, dict) for h in history)
    ):
        problems.append(
            f"image config: history must be a list of objects, not {short_json(history)}"
        )
    return problems + config_type_problems(config)


def config_diff_ids(config: object, where: str) -> list[str]:
    """The ``rootfs.diff_ids`` of the image config ``config``, checked to be sha256 digests;
    ``where`` names the config in errors."""
    rootfs = config.get("rootfs") if isinstance(config, dict) else None
    diff_ids = rootfs.get("diff_ids") if isinstance(rootfs, dict) else None
    if not isinstance(diff_ids, list):
        raise FormatError(
            f"{where}: the image config's rootfs.diff_ids is not a list: {short_json(diff_ids)}"
        )
    for diff_id in diff_ids:
        try:
            check_digest(diff_id)
        except FormatError as e:
            raise FormatError(f"{where}: the image config's rootfs.diff_ids: {e}") from None
    return diff_ids


def layer_diff_ids(config: dict[str, Any], layers: list[Descriptor], where: str) -> list[str]:
    """The config's ``rootfs.diff_ids``, one ``sha256:`` digest per layer of ``layers``; raise
    FormatError otherwise (``where`` names the image)."""
    diff_ids = config_diff_ids(config, where)
    if len(diff_ids) != len(layers):
        raise FormatError(
            f"{where}: config lists {len(diff_ids)} diff_ids for {len(layers)} layers"
        )
    return diff_ids


def check_layer_media_types(layers: list[Descriptor], where: str, *, first: int = 0) -> None:
    """Raise FormatError unless each of ``layers`` from index ``first`` on has a media type of
    a tar layer (OCI or Docker; plain, gzip or zstd); ``where`` names the image. A layer's
    compression is read from its bytes, as containerd does, but a blob named as something else
    (bzip2, or no layer at all) is not applied."""
    for i, desc in enumerate(layers[first:], first + 1):
        media_type = desc.get("mediaType")
        if media_type is None or media_type in _OCI_LAYERS or media_type in _DOCKER_LAYERS:
            continue
        raise FormatError(
            f"{where}: layer {i} of {len(layers)}: layer {desc.get('digest')} has media type "
            f"{media_type!r}, not a tar layer (tar, tar+gzip or tar+zstd) that can be applied"
        )


def oci_layer_media_type(media_type: str) -> str:
    """The OCI name of a layer media type (Docker names are mapped, OCI ones kept)."""
    return _DOCKER_LAYERS.get(media_type, media_type)


def build_manifest(
    *,
    config: Descriptor,
    layers: Sequence[Descriptor],
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """An OCI image manifest over a config descriptor and layer descriptors (bottom first)."""

    def clean(desc: Descriptor, media_type: str) -> Descriptor:
        out: Descriptor = {
            "mediaType": media_type,
            "digest": desc["digest"],
            "size": desc["size"],
        }
        if desc.get("annotations"):
            out["annotations"] = dict(desc["annotations"])
        if desc.get("urls"):
            out["urls"] = list(desc["urls"])
        return out

    manifest: dict[str, Any] = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_MEDIA_TYPE,
        "config": clean(config, CONFIG_MEDIA_TYPE),
        "layers": [clean(d, oci_layer_media_type(d["mediaType"])) for d in layers],
    }
    if annotations:
        manifest["annotations"] = dict(annotations)
    return manifest
