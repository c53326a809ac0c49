"""The layer cache: each image layer unpacked once, in overlayfs form, by its chain ID.

Containers use the cached layers directly as overlay lower directories, read-only and shared,
so a layer takes its space once however many containers run on it. A layer is unpacked into a
temporary directory and renamed into place when complete, under a per-layer lock: parallel
runs of one image wait for each other instead of unpacking twice, and nobody ever sees a
half-unpacked layer.

A layer is unpacked over the cached layers below it (see ``_core.apply_layer``'s ``lowers``):
what it writes through a symbolic link of an earlier layer, or hard-links to from one, is
copied up, so that the mounted stack shows the tree that applying the layers in order gives.
Its directory therefore depends on the layers below as well, and is keyed as containerd keys
its snapshots: by the chain ID (OCI image spec, config.md), which names the layer and
everything under it. The bottom layer's chain ID is its diff_id.

Two forms exist, as overlayfs reads opaque directories from different xattrs: ``trusted``
(``trusted.overlay.opaque``, mounted by root) and ``user`` (``user.overlay.opaque``, for
rootless containers mounting with ``userxattr``).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import stat
from collections.abc import Iterator
from pathlib import Path

from layerdiff import _core, refs
from layerdiff.catalog import Image
from layerdiff.errors import InvalidArgumentError
from layerdiff.image import check_layer_media_types, layer_diff_ids
from layerdiff.layout import check_digest

__all__ = [
    "FORMS",
    "cache_root",
    "cached",
    "chain_ids",
    "check",
    "collect",
    "ensure_layers",
    "layer_dir",
    "private_dir",
    "remove_tree",
]

#: The xattr namespaces a cached layer's opaque directories are written in.
FORMS = ("trusted", "user")

_TEMP_PREFIX = ".tmp-"
_INFO = "layer.json"


def cache_root() -> Path:
    """``$LAYERDIFF_HOME/layers``."""
    return refs.store_home() / "layers"


def private_dir(path: Path) -> None:
    """Make ``path`` (and its parents) a directory only its owner may enter, as docker keeps
    ``/var/lib/docker``: below it are trees whose setuid files (an image's, or a container's)
    another user of the host must not run."""
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o077:
        path.chmod(0o700)  # made by an earlier version, or under another umask


def layer_dir(chain_id: str, *, form: str) -> Path:
    """Where the layer of chain ID ``chain_id`` is (or would be) cached; its tree is the
    ``diff`` inside."""
    if form not in FORMS:
        raise InvalidArgumentError(f"unknown layer cache form {form!r}")
    return cache_root() / form / check_digest(chain_id)


def chain_ids(diff_ids: list[str]) -> list[str]:
    """The chain ID of each layer of a stack, bottom first: the first layer's diff_id, then
    ``sha256(chain below + " " + diff_id)``."""
    out: list[str] = []
    for diff_id in diff_ids:
        if not out:
            out.append(diff_id)
        else:
            out.append(_core.sha256(f"{out[-1]} {diff_id}".encode()))
    return out


@contextlib.contextmanager
def locked(path: Path, mode: int = 0o644) -> Iterator[None]:
    """An exclusive ``flock`` on the file ``path`` (created with ``mode``), for the block."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, mode)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def remove_tree(path: Path) -> None:
    """Remove a directory tree, also one whose directories a layer made read-only (which
    stops a non-root owner from deleting their contents)."""
    if path.is_symlink() or not path.exists():
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        return
    if not path.is_dir():
        path.unlink()
        return
    if os.geteuid() != 0:
        os.chmod(path, stat.S_IRWXU)
        for parent, dirs, _files in os.walk(path):
            for name in dirs:
                child = os.path.join(parent, name)
                if not os.path.islink(child):
                    os.chmod(child, stat.S_IRWXU)
    # Another process may still be writing into the tree (a container's caller recording its
    # exit while `rm -f` removes it): what vanishes meanwhile is fine, and a file that appears
    # after the listing is taken on the next attempt.
    for attempt in range(3):
        try:
            shutil.rmtree(path, onerror=_vanished_is_fine)
            return
        except OSError as e:
            if e.errno != errno.ENOTEMPTY or attempt == 2:
                raise


def _vanished_is_fine(
    _func: object, _path: str, exc_info: tuple[type, BaseException, object]
) -> None:
    """``shutil.rmtree``'s error handler: an entry already gone is not an error."""
    if not isinstance(exc_info[1], FileNotFoundError):
        raise exc_info[1]


def _unpack(
    image: Image,
    desc: dict[str, object],
    diff_id: str,
    final: Path,
    form: str,
    lowers: list[Path],
) -> None:
    tmp = final.with_name(f"{_TEMP_PREFIX}{final.name}.{os.urandom(4).hex()}")
    tree = tmp / "diff"
    tree.mkdir(parents=True)
    try:
        blob = image.layout.blob_path(str(desc["digest"]))
        entries, size, _warnings = _core.apply_layer(
            tree,
            blob,
            digest=str(desc["digest"]),
            size=int(str(desc["size"])),
            chown=os.geteuid() == 0,
            overlay=True,
            userxattr=form == "user",
            lowers=list(reversed(lowers)),
            diff_id=diff_id,
        )
        info = {
            "chain_id": f"sha256:{final.name}",
            "diff_id": diff_id,
            "digest": desc["digest"],
            "entries": entries,
            "bytes": size,
        }
        (tmp / _INFO).write_text(json.dumps(info, sort_keys=True) + "\n")
        os.rename(tmp, final)
    except BaseException:
        remove_tree(tmp)
        raise
    fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def ensure_layers(image: Image, *, form: str) -> list[Path]:
    """The cached tree of every layer of ``image``, bottom first, unpacking missing ones.

    Each blob's size and digest, and its uncompressed tar's against the config's diff_id, are
    checked while it is unpacked: the cache is keyed by chain IDs made of diff_ids. A mismatch
    is an error and nothing is cached for that layer.
    """
    diff_ids = layer_diff_ids(image.config, image.layers, image.ref.text)
    check_layer_media_types(image.layers, image.ref.text)  # all before any is unpacked
    dirs: list[Path] = []
    private_dir(cache_root())
    for desc, diff_id, chain_id in zip(image.layers, diff_ids, chain_ids(diff_ids), strict=True):
        final = layer_dir(chain_id, form=form)
        if not final.is_dir():
            final.parent.mkdir(parents=True, exist_ok=True)
            with locked(final.with_name(f".{final.name}.lock")):
                if not final.is_dir():  # another run may have unpacked it while we waited
                    _unpack(image, desc, diff_id, final, form, dirs)
        dirs.append(final / "diff")
    return dirs


def cached() -> list[Path]:
    """Every layer directory in the cache (of either form), temporary ones included."""
    found = []
    for form in FORMS:
        base = cache_root() / form
        for entry in sorted(base.iterdir()) if base.is_dir() else []:
            if entry.is_dir():
                found.append(entry)
    return found


def check(used: dict[str, list[str]]) -> list[tuple[str, str]]:
    """Problems of the cache as (where, what): a layer directory without its record or tree,
    a record that names another layer, and every layer a container uses that is missing.
    ``used`` maps a container's name to the cached layer directories it needs."""
    problems = []
    for path in cached():
        if path.name.startswith(_TEMP_PREFIX):
            continue
        where = f"layer cache {path}"
        try:
            info = json.loads((path / _INFO).read_text())
        except (OSError, ValueError) as e:
            problems.append((where, f"unreadable {_INFO}: {e}"))
            continue
        # Layers cached before chain IDs keyed them by diff_id.
        key = info.get("chain_id", info.get("diff_id"))
        if key != f"sha256:{path.name}":
            problems.append((where, f"holds layer {key}, not {path.name}"))
        if not (path / "diff").is_dir():
            problems.append((where, "has no diff directory"))
    for name, dirs in used.items():
        for d in dirs:
            if not Path(d).is_dir():
                problems.append((f"container {name}", f"cached layer missing: {d}"))
    return problems


def collect(keep: set[str]) -> tuple[int, int, int]:
    """Remove cached layers whose key (chain ID) is not in ``keep``, interrupted unpacks and stale
    locks; return (layers removed, temporary directories removed, bytes freed). The caller
    holds the store's gc lock, which every unpack runs under (shared)."""
    removed = temporary = freed = 0
    for path in cached():
        stale = path.name.startswith(_TEMP_PREFIX)
        if not stale and f"sha256:{path.name}" in keep:
            continue
        freed += _size(path)
        if not stale:
            # Out of the way first: a collector killed halfway leaves a temporary directory,
            # never a layer with part of its tree that the next run would take as whole.
            gone = path.with_name(f"{_TEMP_PREFIX}{path.name}.{os.urandom(4).hex()}")
            os.rename(path, gone)
            remove_tree(gone)
        else:
            remove_tree(path)
        lock = path.with_name(f".{path.name}.lock")
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()
        if stale:
            temporary += 1
        else:
            removed += 1
    return removed, temporary, freed


def _size(path: Path) -> int:
    total = 0
    for parent, _dirs, files in os.walk(path):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(parent, name)).st_size
    return total
