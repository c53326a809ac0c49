"""Image references: the one grammar every command uses to name an image.

Four forms are understood::

    oci:PATH[:TAG]                       an OCI image layout anywhere on disk
    docker://[HOST[:PORT]/]REPO[:TAG][@DIGEST]   an image in a registry
    docker-archive:FILE[:NAME[:TAG]]     a `docker save` tarball
    NAME[:TAG]                           an image in the default store (tag ``latest`` by default)
    NAME@sha256:HEX                      the image of that name in the store whose manifest has
                                         that digest (as docker's ``NAME@DIGEST``)

The transport prefix wins: ``oci:x`` is always the layout at ``x``, never a store image named
``oci``.

``oci:`` paths: skopeo splits at the first ``:``, so its paths cannot hold one, and its tags
may (the store's own are ``NAME:TAG``: ``oci:$LAYERDIFF_HOME/images:app:2``). We split at the
*last* ``:`` when what follows is a valid tag (docker's tag grammar, which has no ``/``), so a
path may contain ``:`` when a tag is given (``oci:/srv/a:b:v1`` is the layout ``/srv/a:b``,
tag ``v1``). Where no layout stands there, we split as skopeo does, at the first ``:`` before
which a layout (a directory holding ``oci-layout``) stands, taking what follows as its
reference name; in the store's layout that is a store name, checked as one. So a reference
that named a layout keeps naming it, and every one skopeo reads means the same thing here.

The default store is one OCI layout at ``<home>/images`` where home is ``$LAYERDIFF_HOME``, else
``$XDG_DATA_HOME/layerdiff``, else ``~/.local/share/layerdiff``. A store image's tag in
``index.json`` (annotation ``org.opencontainers.image.ref.name``) is ``NAME:TAG``; in an
``oci:PATH:TAG`` layout it is just ``TAG``, as skopeo and umoci expect.

Store names are Docker names: as docker does, ``docker.io/library/x``, ``docker.io/x``,
``index.docker.io/x``, ``library/x`` and ``x`` are one name, kept and shown in docker's familiar
(shortest) form ``x``, and ``docker.io/team/x`` is ``team/x``. The tags of an ``oci:`` layout are
free strings and are left as written.

``NAME@DIGEST`` names an image that exists: a pull by digest without a local name stores the
image under that reference (index tag ``NAME@sha256:HEX``, listed untagged as docker does), and
the reference also finds an image of the same name tagged otherwise whose manifest has the
digest. A new image (a commit, squash, tag or load) cannot be given such a name; see
:func:`check_writable`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path

from layerdiff.errors import InvalidReferenceError

__all__ = [
    "DEFAULT_TAG",
    "ArchiveRef",
    "ImageRef",
    "LayoutRef",
    "RegistryRef",
    "check_writable",
    "familiar_name",
    "is_layout",
    "parse_layout_reference",
    "parse_reference",
    "parse_store_reference",
    "pinned_digest",
    "store_home",
    "store_layout_path",
    "store_tag_name",
    "stored_tag",
]

#: Tag used when a reference names none.
DEFAULT_TAG = "latest"

# docker/distribution reference grammar (reference/regexp.go), written out once.
_ALNUM = r"[a-z0-9]+"
_SEPARATOR = r"(?:[._]|__|[-]+)"
_PATH_COMPONENT = rf"{_ALNUM}(?:{_SEPARATOR}{_ALNUM})*"
_DOMAIN_COMPONENT = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])"
_DOMAIN = rf"(?:{_DOMAIN_COMPONENT}(?:\.{_DOMAIN_COMPONENT})*|\[[0-9A-Fa-f:]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"  # ASCII only, like Go's \w in docker's pattern
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"

_NAME_RE = re.compile(rf"(?:{_DOMAIN}/)?{_PATH_COMPONENT}(?:/{_PATH_COMPONENT})*")
# An OCI layout's reference name, as the image spec's annotation (and skopeo) allow it.
_OCI_COMPONENT = r"[A-Za-z0-9]+(?:(?:[-._:@+]|--)[A-Za-z0-9]+)*"
_OCI_REF_NAME_RE = re.compile(rf"{_OCI_COMPONENT}(?:/{_OCI_COMPONENT})*")
_TAG_RE = re.compile(_TAG)
_DIGEST_RE = re.compile(_DIGEST)
_STORE_DIGEST_RE = re.compile(r"sha256:[0-9a-f]{64}")
_NAME_MAX = 255  # docker's NameTotalLengthMax

_DOCKER_HUB = "docker.io"
_DOCKER_HUB_LEGACY = "index.docker.io"  # docker reads it as docker.io
_OFFICIAL = "library/"  # Docker Hub's namespace of official images
# Transports of skopeo we do not speak; named in the error when `NAME:TAG` cannot be meant.
_OTHER_TRANSPORTS = frozenset(
    {"docker", "oci-archive", "dir", "containers-storage", "docker-daemon", "ostree", "sif"}
)


@dataclass(frozen=True, kw_only=True)
class LayoutRef:
    """An image in a local OCI layout: ``oci:PATH[:TAG]`` or ``NAME[:TAG]`` in the store."""

    #: The reference as the user wrote it.
    text: str
    #: Directory of the OCI image layout.
    layout: Path
    #: The ``org.opencontainers.image.ref.name`` in ``index.json``; ``None`` (only for
    #: ``oci:PATH``) means "the only image in the layout" when reading, ``latest`` when writing.
    tag: str | None
    #: True for a ``NAME[:TAG]`` reference into the default store.
    in_store: bool

    @property
    def write_tag(self) -> str:
        """The tag an image written to this reference gets."""
        return self.tag if self.tag is not None else DEFAULT_TAG

    @property
    def pinned(self) -> str | None:
        """The digest a store name ``NAME@DIGEST`` pins, else None."""
        return pinned_digest(self.tag) if self.in_store and self.tag is not None else None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, kw_only=True)
class RegistryRef:
    """An image in a registry: ``docker://HOST[:PORT]/REPO[:TAG][@DIGEST]``."""

    #: The reference as the user wrote it.
    text: str
    #: Registry host, with port when given (``docker.io`` when the reference names none).
    host: str
    #: Repository path (``library/`` is added for one-component Docker Hub names).
    repository: str
    #: Tag; ``latest`` when neither a tag nor a digest is given.
    tag: str | None
    #: ``ALGORITHM:HEX`` when the reference pins a digest.
    digest: str | None

    def __str__(self) -> str:
        return self.text


@dataclass(frozen=True, kw_only=True)
class ArchiveRef:
    """A ``docker save`` tarball: ``docker-archive:FILE[:NAME[:TAG]]``."""

    #: The reference as the user wrote it.
    text: str
    #: The archive file.
    file: Path
    #: Image name inside the archive, in docker's familiar form (``None``: the only one).
    name: str | None
    #: Tag of that name (``latest`` when a name without tag is given).
    tag: str | None

    def __str__(self) -> str:
        return self.text


#: Any parsed image reference.
ImageRef = LayoutRef | RegistryRef | ArchiveRef


def store_home() -> Path:
    """The directory of layerdiff's own data (see the module docs)."""
    home = os.environ.get("LAYERDIFF_HOME")
    if home:
        # Absolute: a container's helper changes directory before it mounts the store's paths.
        return Path(os.path.abspath(home))
    xdg = os.environ.get("XDG_DATA_HOME")
    if xdg and os.path.isabs(xdg):  # the XDG spec says to ignore relative values
        return Path(xdg) / "layerdiff"
    return Path.home() / ".local" / "share" / "layerdiff"


def layer_index_dir() -> Path:
    """``<home>/layer-index/sha256``: the layer indexes squash reads instead of a layer's
    headers, one file per blob, named by the hex of its digest (a cache: see ``squash``)."""
    return store_home() / "layer-index" / "sha256"


def store_layout_path() -> Path:
    """The OCI layout of the default store (it may not exist yet)."""
    return store_home() / "images"


def _bad(text: str, why: str) -> InvalidReferenceError:
    return InvalidReferenceError(f"invalid image reference {text!r}: {why}")


def _split_name_tag(text: str, rest: str) -> tuple[str, str | None, str | None]:
    """Split ``NAME[:TAG][@DIGEST]`` checking docker's grammar; returns (name, tag, digest)."""
    digest: str | None = None
    if "@" in rest:
        rest, digest = rest.split("@", 1)
        if not _DIGEST_RE.fullmatch(digest):
            raise _bad(text, f"{digest!r} is not a digest (expected ALGORITHM:HEX)")
        if digest.startswith("sha256:") and not _STORE_DIGEST_RE.fullmatch(digest):
            # As docker's reference parser: a sha256 is 64 lowercase hex digits.
            raise _bad(text, f"{digest!r} is not a sha256 digest (64 lowercase hex digits)")
    name, tag = rest, None
    colon = rest.rfind(":")
    if colon > rest.rfind("/"):  # a ':' after the last '/' starts the tag, not a port
        name, tag = rest[:colon], rest[colon + 1 :]
        if not _TAG_RE.fullmatch(tag):
            raise _bad(text, f"{tag!r} is not a valid tag")
    if not name:
        raise _bad(text, "the name is empty")
    if len(name) > _NAME_MAX:
        raise _bad(text, f"the name is longer than {_NAME_MAX} characters")
    if not _NAME_RE.fullmatch(name):
        raise _bad(
            text,
            f"{name!r} is not a valid image name (lowercase letters, digits and . _ - "
            "separators, components split by '/', optionally after HOST[:PORT]/)",
        )
    return name, tag, digest


def _parse_oci(text: str, rest: str) -> LayoutRef:
    path, tag = rest, None
    colon = rest.rfind(":")
    # After the last ':' comes a tag, unless a '/' follows it: then the ':' is in the path.
    if colon >= 0 and "/" not in rest[colon + 1 :]:
        path, tag = rest[:colon], rest[colon + 1 :]
    if not is_layout(path):
        found = _split_at_a_layout(text, rest)
        if found is not None:
            return found
    if tag is not None and not _TAG_RE.fullmatch(tag):
        raise _bad(
            text,
            f"{tag!r} is not a tag (up to 128 letters, digits, '_', '.' and '-', not "
            "starting with '.' or '-')",
        )
    if not path:
        raise _bad(text, "the layout path is empty (expected oci:PATH[:TAG])")
    return LayoutRef(text=text, layout=Path(path), tag=tag, in_store=False)


def is_layout(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an OCI image layout: a directory holding ``oci-layout``."""
    return bool(os.fspath(path)) and os.path.isfile(os.path.join(path, "oci-layout"))


def _split_at_a_layout(text: str, rest: str) -> LayoutRef | None:
    """As skopeo splits ``oci:PATH:REF``, where the last ':' names no layout: at the first ':'
    before which a layout stands, the rest its reference name (which may hold ':' and '/').
    In the store's own layout the rest is a store name, under the store's rules
    (``oci:$LAYERDIFF_HOME/images:app:2`` is ``app:2``)."""
    start = 0
    while (colon := rest.find(":", start)) > 0:
        start = colon + 1
        path, name = rest[:colon], rest[colon + 1 :]
        if not (_OCI_REF_NAME_RE.fullmatch(name) and is_layout(path)):
            continue
        store = store_layout_path()
        with contextlib.suppress(OSError):
            if os.path.samefile(path, store):
                return dataclasses.replace(_parse_store(name), text=text)
        return LayoutRef(text=text, layout=Path(path), tag=name, in_store=False)
    return None


def _split_domain(name: str) -> tuple[str | None, str]:
    """docker's splitDockerDomain: (host, path); the first component is a host if it could not
    be a path component. ``None`` when the name has no host."""
    first, slash, remainder = name.partition("/")
    if slash and (any(c in first for c in ".:[") or first == "localhost" or first != first.lower()):
        return first, remainder
    return None, name


def familiar_name(name: str) -> str:
    """Docker's familiar form of a valid image name (``reference.FamiliarName``): a Docker Hub
    name without ``docker.io/`` (or ``index.docker.io/``), and an official image without
    ``library/``; a name of any other registry is unchanged."""
    host, path = _split_domain(name)
    if host not in (None, _DOCKER_HUB, _DOCKER_HUB_LEGACY):
        return name
    official = path.removeprefix(_OFFICIAL)
    return official if official != path and "/" not in official else path


def stored_tag(tag: str, tags: list[str]) -> str:
    """How the store's index spells the store tag ``tag`` (``NAME:TAG``, familiar): itself, or
    the last of ``tags`` that is the same name spelt in full (as versions before names were
    made familiar wrote them); ``tag`` when none is."""
    if tag in tags:
        return tag
    for found in reversed(tags):
        name, colon, short = found.rpartition(":")
        if colon and "/" not in short and f"{familiar_name(name)}:{short}" == tag:
            return found
    return tag


def _parse_docker(text: str, rest: str) -> RegistryRef:
    name, tag, digest = _split_name_tag(text, rest)
    found, repository = _split_domain(name)
    # index.docker.io is Docker Hub's old name: the same registry, as docker takes it.
    host = _DOCKER_HUB if found in (None, _DOCKER_HUB_LEGACY) else found
    if host == _DOCKER_HUB and "/" not in repository:
        repository = f"{_OFFICIAL}{repository}"
    if tag is None and digest is None:
        tag = DEFAULT_TAG
    return RegistryRef(text=text, host=host, repository=repository, tag=tag, digest=digest)


def _parse_archive(text: str, rest: str) -> ArchiveRef:
    # As skopeo does: the file ends at the first ':'; what follows is a docker NAME[:TAG].
    file, colon, named = rest.partition(":")
    if not file:
        raise _bad(text, "the archive path is empty (expected docker-archive:FILE[:NAME:TAG])")
    if not colon:
        return ArchiveRef(text=text, file=Path(file), name=None, tag=None)
    name, tag, digest = _split_name_tag(text, named)
    if digest is not None:
        raise _bad(text, "an archive reference names a tag, not a digest")
    return ArchiveRef(text=text, file=Path(file), name=familiar_name(name), tag=tag or DEFAULT_TAG)


def _parse_store(text: str) -> LayoutRef:
    try:
        name, tag, digest = _split_name_tag(text, text)
    except InvalidReferenceError as e:
        if is_layout(text):
            raise InvalidReferenceError(f"{e} (an OCI layout is named oci:{text})") from None
        raise
    if digest is not None:
        if not _STORE_DIGEST_RE.fullmatch(digest):
            raise _bad(text, f"{digest!r}: store images are pinned by a sha256 digest")
        # As docker does, a tag given beside the digest is not looked at.
        return LayoutRef(
            text=text,
            layout=store_layout_path(),
            tag=f"{familiar_name(name)}@{digest}",
            in_store=True,
        )
    return LayoutRef(
        text=text,
        layout=store_layout_path(),
        tag=f"{familiar_name(name)}:{tag or DEFAULT_TAG}",
        in_store=True,
    )


def pinned_digest(store_tag: str) -> str | None:
    """The digest of a store tag written ``NAME@DIGEST``, else None."""
    _, at, digest = store_tag.partition("@")
    return digest if at else None


def store_tag_name(store_tag: str) -> str:
    """The name part of a store tag (``NAME:TAG`` or ``NAME@DIGEST``)."""
    if "@" in store_tag:
        return store_tag.partition("@")[0]
    return store_tag.rpartition(":")[0]


def check_writable(ref: LayoutRef) -> LayoutRef:
    """``ref``, unless it names a store image by digest, which a new image cannot take (its
    digest is not known before it is written): then InvalidReferenceError."""
    if ref.pinned is not None:
        raise _bad(
            ref.text,
            "a digest names an image that exists; name a new image NAME[:TAG]",
        )
    if ref.in_store and ref.tag is not None:
        # As docker tag refuses them: an image ID is looked for by the whole text given, so a
        # name that reads as one (sha256:<hex>, 64 hex digits alone) would hide it.
        if store_tag_name(ref.tag) == "sha256":
            raise _bad(ref.text, "a name spelled as a digest algorithm would hide an image ID")
        if re.fullmatch(r"[0-9a-f]{64}", ref.text):
            raise _bad(ref.text, "a name of 64 hexadecimal digits would hide an image ID")
    return ref


def parse_reference(text: str) -> ImageRef:
    """Parse an image reference (see the module docs); raise InvalidReferenceError if malformed."""
    if not text or text != text.strip() or "\n" in text:
        raise _bad(text, "empty or surrounded by whitespace")
    if "\0" in text:
        raise _bad(text, "a reference cannot hold a NUL byte")
    if text.startswith("docker://"):
        return _parse_docker(text, text[len("docker://") :])
    if text.startswith("docker-archive:"):
        return _parse_archive(text, text[len("docker-archive:") :])
    if text.startswith("oci:"):
        return _parse_oci(text, text[len("oci:") :])
    transport, colon, after = text.partition(":")
    if colon and transport in _OTHER_TRANSPORTS and not _TAG_RE.fullmatch(after):
        raise _bad(text, f"the {transport!r} transport is not supported")
    return _parse_store(text)


def parse_store_reference(text: str) -> LayoutRef:
    """Parse ``NAME[:TAG]`` as an image of the default store, even where it looks like another
    transport's reference (a ``docker save`` archive's ``RepoTags`` are such names)."""
    return _parse_store(text)


def parse_layout_reference(text: str) -> LayoutRef:
    """Parse a reference that must name an image in a local OCI layout (store or ``oci:``)."""
    ref = parse_reference(text)
    if not isinstance(ref, LayoutRef):
        raise _bad(text, "only oci:PATH[:TAG] and NAME[:TAG] images can be used here")
    return ref
