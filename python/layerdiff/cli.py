"""The ``layerdiff`` command line. It only parses arguments and calls the public API."""

from __future__ import annotations

# isort: off
from layerdiff import _quiet_start  # first: a Ctrl-C while the rest loads is one line

# isort: on

import os
import re
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

import layerdiff
from layerdiff.blobstatus import STREAMED_LAYER
from layerdiff.cli_containers import register as register_containers
from layerdiff.cli_output import emit_json as _emit_json
from layerdiff.cli_output import fail as _fail
from layerdiff.cli_output import table as _table
from layerdiff.errors import ContainerNotFoundError, InvalidReferenceError, LayerdiffError
from layerdiff.layer import COMPRESSION_LEVELS, COMPRESSIONS, MAX_THREADS

if TYPE_CHECKING:
    from layerdiff import runtime
    from layerdiff.layer import Change

_IMAGE_HELP = (
    "Images: oci:PATH[:TAG] (an OCI layout), NAME[:TAG] (the default store; or an image ID, "
    "the digest `images` shows), docker://HOST/REPO[:TAG] (a registry: push, pull, commit)."
)
_F = TypeVar("_F", bound=Callable[..., Any])


#: How ``diff`` prints a backslash and the control characters in a path (C's escapes).
_ESCAPES = {
    **{b: f"\\x{b:02x}".encode() for b in (*range(0x20), 0x7F)},
    0x5C: b"\\\\",
    0x09: b"\\t",
    0x0A: b"\\n",
    0x0D: b"\\r",
}


def _escaped_path(path: bytes) -> bytes:
    """``path`` on one line, unambiguously: a backslash and control characters escaped."""
    if not any(b in _ESCAPES for b in path):
        return path
    return b"".join(_ESCAPES.get(b, bytes((b,))) for b in path)


def _print_changes(changes: Sequence[Change], as_json: bool) -> None:
    if as_json:
        _emit_json([{"kind": c.kind, "path": c.path} for c in changes])
        return
    out = click.get_binary_stream("stdout")
    # Bytes, not text: a path that is not UTF-8 is printed as the file system spells it, but
    # one change per line (a newline in a name cannot make a line of its own).
    out.write(
        b"".join(c.kind.encode() + b" " + _escaped_path(c.path_bytes) + b"\n" for c in changes)
    )
    out.flush()


def _human_size(n: int) -> str:
    size = float(n)
    for unit in ("B", "kB", "MB", "GB"):
        if round(size, 1) < 1000 or unit == "GB":
            return f"{size:.0f}{unit}" if unit == "B" else f"{size:.1f}{unit}"
        size /= 1000
    raise AssertionError("unreachable")


class _Progress:
    """Progress on stderr: on a terminal one live display, a spinner row for the current
    step (:meth:`step`) above a bar per blob (called as an ``on_blob``); plain lines otherwise
    (CI logs), a step each and a finished blob each; or nothing. The display starts with the
    first step or blob: a command that reports neither draws nothing."""

    def __init__(self, mode: str, *, piped: str = "plain") -> None:
        """``piped``: what ``auto`` means when stderr is not a terminal."""
        if mode == "auto":
            mode = "live" if sys.stderr.isatty() else piped
        self.mode = mode
        self.lock = threading.Lock()
        self.bars: Any = None
        self.step_task: Any = None
        self.tasks: dict[str, Any] = {}

    def __enter__(self) -> _Progress:
        return self

    def __exit__(self, *exc: object) -> None:
        with self.lock:
            if self.bars is not None:
                if self.step_task is not None:
                    self.bars.remove_task(self.step_task)
                self.bars.__exit__(None, None, None)
                self.bars = None

    def _live(self) -> Any:
        if self.bars is None:
            from rich.console import Console
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                ProgressColumn,
                SpinnerColumn,
                Task,
                TextColumn,
            )
            from rich.text import Text

            class Only(ProgressColumn):
                """``column`` on the rows of blobs (``step=False``) or of the step."""

                def __init__(self, column: ProgressColumn, *, step: bool) -> None:
                    super().__init__()
                    self.column, self.on_step = column, step

                def render(self, task: Task) -> Any:
                    if bool(task.fields.get("step")) != self.on_step:
                        return Text("")
                    return self.column.render(task)

            self.bars = Progress(
                Only(SpinnerColumn(), step=True),
                TextColumn("{task.description}"),
                Only(BarColumn(), step=False),
                Only(DownloadColumn(), step=False),
                console=Console(stderr=True),
                transient=False,
            )
            self.bars.__enter__()
        return self.bars

    def step(self, msg: str) -> None:
        if self.mode == "live":
            with self.lock:
                bars = self._live()
                if self.step_task is None:
                    self.step_task = bars.add_task(msg, total=None, step=True)
                bars.update(self.step_task, description=msg)
        elif self.mode == "plain":
            click.echo(f"layerdiff: {msg}", err=True)

    def __call__(self, digest: str, done: int, size: int, status: str | None) -> None:
        short = digest.removeprefix("sha256:")[:12]
        if self.mode == "live":
            with self.lock:
                bars = self._live()
                task = self.tasks.get(digest)
                if task is None and status is not None and STREAMED_LAYER in self.tasks:
                    # The streamed layer's bar, now that its digest is known: one bar, not two.
                    task = self.tasks[digest] = self.tasks.pop(STREAMED_LAYER)
                if task is None:
                    task = self.tasks[digest] = bars.add_task(short, total=size or None)
                description = f"{short} {status}" if status else short
                bars.update(task, completed=done, total=size or None, description=description)
        elif self.mode == "plain" and status is not None:
            with self.lock:
                click.echo(f"layerdiff: {short} {status} ({_human_size(size)})", err=True)


def _blobs_json(blobs: Sequence[Any]) -> list[dict[str, Any]]:
    return [{"digest": b.digest, "size": b.size, "status": b.status} for b in blobs]


def _compression_options(command: _F) -> _F:
    """--compression and --compression-level, shared by commit and squash."""
    command = click.option(
        "--compression-level",
        type=int,
        metavar="N",
        help="Smaller output for more time: gzip 1-12 (libdeflate's scale), zstd 1-19 "
        "[default: 2].",
    )(command)
    return click.option(
        "--compression", type=click.Choice(COMPRESSIONS), default="gzip", show_default=True
    )(command)


def _progress_option(command: _F) -> _F:
    """--progress, for the commands of plumbing that report steps: quiet in a pipe unless
    asked (a script's stderr holds the one line of an error, nothing else)."""
    return click.option(
        "--progress",
        type=click.Choice(["auto", "plain", "none"]),
        default="auto",
        show_default=True,
        help="Progress on stderr: a live display on a terminal (auto; nothing in a pipe), "
        "plain lines, or nothing.",
    )(command)


def _check_compression_level(compression: str, level: int | None) -> None:
    if level is None:
        return
    levels = COMPRESSION_LEVELS.get(compression)
    if levels is None:
        raise click.BadParameter(
            f"--compression {compression} takes no level", param_hint="--compression-level"
        )
    if level not in levels:
        raise click.BadParameter(
            f"{level}: {compression} takes {levels.start} to {levels.stop - 1}",
            param_hint="--compression-level",
        )


def _registry_options(command: _F) -> _F:
    """--tls-verify, --creds, --progress and --json, shared by push, pull and commit."""
    command = click.option(
        "--json", "as_json", is_flag=True, help="Print one JSON object on stdout."
    )(command)
    command = click.option(
        "--progress",
        type=click.Choice(["auto", "plain", "none"]),
        default="auto",
        show_default=True,
        help="Progress on stderr: bars on a terminal, plain lines, or nothing.",
    )(command)
    command = click.option(
        "--creds",
        metavar="USER:PASS",
        envvar="LAYERDIFF_CREDS",
        help="Registry credentials; $LAYERDIFF_CREDS gives them too [default: the auths of "
        "$DOCKER_CONFIG/config.json when DOCKER_CONFIG is set, else of ~/.docker/config.json].",
    )(command)
    return click.option(
        "--tls-verify",
        type=click.BOOL,
        default=True,
        show_default=True,
        help="Require HTTPS with a trusted certificate; false also allows plain HTTP.",
    )(command)


@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=_IMAGE_HELP,
)
@click.version_option(layerdiff.__version__, prog_name="layerdiff")
def cli() -> None:
    """Turn file-system changes into OCI image layers and images; run containers and commit
    what they change; push and pull through registries."""


@cli.command(
    epilog="""\b
Examples:
  layerdiff diff rootfs-before rootfs-after
  layerdiff diff --content --json old new
  layerdiff diff --overlay /var/lib/overlay/upper --lower /var/lib/overlay/lower
  layerdiff diff web                  (what the container web changed, as docker diff)
"""
)
@click.argument("trees", nargs=-1, metavar="LOWER UPPER | --overlay UPPER | CONTAINER")
@click.option("--overlay", is_flag=True, help="UPPER is an overlayfs upper directory.")
@click.option(
    "--lower",
    "lowers",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="With --overlay: a lower directory (top first); repeat for more. Without one, an "
    "upper directory alone cannot tell what is new from what changed.",
)
@click.option(
    "--content",
    is_flag=True,
    help="Also compare the contents of files equal in all but perhaps their mtime: touched "
    "but identical files are not reported, and files rewritten with the same size and mtime "
    "are (without it they count as unchanged, as in docker diff).",
)
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    help="Print one JSON array on stdout. In a path that is not UTF-8, each byte that does "
    "not decode is written as \\udcXX (Python's os.fsencode gives the bytes back).",
)
def diff(
    trees: tuple[str, ...], overlay: bool, lowers: tuple[str, ...], content: bool, as_json: bool
) -> None:
    """Print the changes from LOWER to UPPER, one per line: A|C|D /path (like docker diff).
    Given a CONTAINER (a name, or a container directory), what it changed.

    A backslash or a control character in a path is escaped as in C (\\\\, \\n, \\t,
    \\r, \\xNN), so each change is one line; --json gives paths exactly."""
    container = _named_container(trees[0]) if len(trees) == 1 and not (overlay or lowers) else None
    if container is not None:
        from layerdiff.runtime import changes as container_changes

        _print_changes(container_changes(container, content=content), as_json)
        return
    if overlay and len(trees) != 1:
        raise click.UsageError("diff --overlay takes one directory: UPPER")
    if not overlay and len(trees) == 1 and not lowers:
        raise click.UsageError(
            f"no such container: {trees[0]} (diff takes a CONTAINER, two directories LOWER "
            "UPPER, or --overlay UPPER)"
        )
    if not overlay and len(trees) != 2:
        raise click.UsageError("diff takes two directories: LOWER UPPER (or --overlay UPPER)")
    if not overlay and lowers:
        raise click.UsageError("--lower is for --overlay; a two-tree diff takes LOWER UPPER")
    # Directories from here on, checked as click checks a directory argument.
    ctx = click.get_current_context()
    param = next(p for p in ctx.command.params if p.name == "trees")
    for tree in trees:
        click.Path(exists=True, file_okay=False).convert(tree, param, ctx)
    if overlay:
        changes = layerdiff.diff_overlay(trees[0], lowers=lowers, content=content)
    else:
        changes = layerdiff.diff(trees[0], trees[1], content=content)
    _print_changes(changes, as_json)


def _named_container(text: str) -> runtime.Container | None:
    """The container ``text`` names as every container command reads it: a path (with a
    ``/``) to a container directory, else a name or ID of the store's, whatever directory of
    that name the current one holds (one directory alone is no diff). None if there is none."""
    from layerdiff import runtime
    from layerdiff.errors import ContainerNotFoundError

    try:
        return runtime.open_container(text)
    except ContainerNotFoundError:  # an ambiguous ID or a broken container says so itself
        return None


@cli.command(
    epilog="""\b
Examples:
  layerdiff commit web app:2 -m "configured" -c 'CMD ["/app"]'
  layerdiff commit /srv/containers/dev            (image: dev:latest)
  layerdiff commit --upper rootfs base:1
  layerdiff commit --lower rootfs --upper rootfs2 --from base:1 app:1 -m "add app"
  layerdiff commit --overlay --upper /ovl/upper --from base:1 oci:out:v2
A CONTAINER is a name from 'layerdiff ps' or a container directory path.
"""
)
@click.argument("targets", nargs=-1, metavar="CONTAINER [IMAGE] | --upper DIR IMAGE")
@click.option(
    "--upper",
    type=click.Path(exists=True, file_okay=False),
    help="The tree to commit (or the overlayfs upper dir with --overlay).",
)
@click.option(
    "--lower",
    "lowers",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="The tree UPPER was made from: commit only the difference, on top of --from IMAGE "
    "(required with it). With --overlay: the lower dirs, top first (repeatable).",
)
@click.option("--overlay", is_flag=True, help="UPPER is an overlayfs upper directory.")
@click.option(
    "--content",
    is_flag=True,
    help="With --lower: compare the contents of files equal in all but perhaps their mtime, "
    "so that a file rewritten with the same size and mtime (a tree whose mtimes are "
    "normalised) is in the layer, and a touched but identical one is not.",
)
@click.option("--from", "base", metavar="IMAGE", help="Base image the new layer goes on top of.")
@click.option("-m", "--message", help="Commit message (history comment).")
@click.option("-a", "--author", help="Author, e.g. 'Jane Doe <jane@example.com>'.")
@click.option(
    "-c",
    "--change",
    "changes",
    multiple=True,
    metavar="INSTRUCTION",
    help="Dockerfile instruction for the config: ENV, CMD, ENTRYPOINT, WORKDIR, "
    "EXPOSE, LABEL, USER, VOLUME, STOPSIGNAL, HEALTHCHECK, ONBUILD (repeatable; the changes "
    "are read as one Dockerfile, so one may hold several lines). As in a Dockerfile, $VAR is "
    "the image's (quote it from your shell: -c 'ENV PATH=/opt/bin:$PATH').",
)
@click.option(
    "--pause/--no-pause",
    default=True,
    show_default=True,
    help="Freeze a running container while its changes are read.",
)
@_compression_options
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    help="Worker threads; never changes the output [default: all cores].",
)
@_registry_options
def commit(
    targets: tuple[str, ...],
    upper: str | None,
    lowers: tuple[str, ...],
    overlay: bool,
    content: bool,
    base: str | None,
    message: str | None,
    author: str | None,
    changes: tuple[str, ...],
    pause: bool,
    compression: str,
    compression_level: int | None,
    threads: int | None,
    tls_verify: bool,
    creds: str | None,
    progress: str,
    as_json: bool,
) -> None:
    """Commit a container's changes (or a tree) as a new image: its image plus one layer.

    IMAGE may be docker://HOST/REPO:TAG: the layer is then streamed to the registry while it
    is written, with no copy on local disk.
    """
    _check_compression_level(compression, compression_level)
    with _Progress(progress) as shown:
        step, on_blob = shown.step, shown
        if upper is None:
            if not 1 <= len(targets) <= 2:
                raise click.UsageError("give CONTAINER [IMAGE], or --upper DIR IMAGE")
            if len(targets) == 1 and (lowers or overlay or base):
                raise click.UsageError(
                    "Missing option '--upper': the directory to commit (--lower, --overlay and "
                    "--from go with it)"
                )
            if lowers or overlay or base or content:
                raise click.UsageError(
                    "--lower, --overlay, --content and --from go with --upper, not CONTAINER"
                )
            from layerdiff.runtime import commit_container

            try:
                result = commit_container(
                    targets[0],
                    targets[1] if len(targets) == 2 else None,
                    message=message,
                    author=author,
                    changes=changes,
                    pause=pause,
                    compression=compression,
                    compression_level=compression_level,
                    threads=threads,
                    on_step=step,
                    tls_verify=tls_verify,
                    creds=creds,
                    on_blob=on_blob,
                )
            except ContainerNotFoundError as e:
                if not os.path.isdir(targets[0]):
                    raise
                hint = f"to commit the directory, give it as --upper {targets[0]}"
                raise ContainerNotFoundError(f"{e} ({hint})") from e
        else:
            if len(targets) != 1:
                raise click.UsageError("with --upper DIR, give exactly one IMAGE")
            source = click.get_current_context().get_parameter_source("pause")
            if source is click.core.ParameterSource.COMMANDLINE:
                raise click.UsageError("--pause and --no-pause go with CONTAINER, not --upper")
            if not overlay and len(lowers) > 1:
                raise click.UsageError("several --lower dirs need --overlay")
            if content and not lowers:
                raise click.UsageError("--content compares with the --lower tree: give one")
            if (lowers or overlay) and base is None:
                raise click.UsageError(
                    "--lower and --overlay make a layer of changes, which is only an image on "
                    "top of the image they change: give it as --from IMAGE"
                )
            result = layerdiff.commit(
                upper,
                image=targets[0],
                lower=None if overlay or not lowers else lowers[0],
                content=content,
                overlay=overlay,
                lowers=lowers if overlay else (),
                base=base,
                message=message,
                author=author,
                changes=changes,
                compression=compression,
                compression_level=compression_level,
                threads=threads,
                on_step=step,
                tls_verify=tls_verify,
                creds=creds,
                on_blob=on_blob,
            )
    layer = result.layer
    if as_json:
        extra = {"blobs": _blobs_json(result.blobs)} if result.blobs else {}
        _emit_json(
            {
                **extra,
                "image": result.image,
                "manifest": result.manifest_digest,
                "config": result.config_digest,
                "digest": layer.digest,
                "diff_id": layer.diff_id,
                "size": layer.size,
                "tar_size": layer.tar_size,
                "media_type": layer.media_type,
                "warnings": list(layer.warnings),
            }
        )
        return
    for warning in layer.warnings:
        _warn(warning)
    click.echo(result.manifest_digest)


@cli.command(
    epilog="""\b
Examples:
  layerdiff tag app:2 app:latest
  layerdiff tag app:2 oci:/srv/export:v2      (copies the image's blobs there)"""
)
@click.argument("source", metavar="SOURCE_IMAGE")
@click.argument("target", metavar="TARGET_IMAGE")
def tag(source: str, target: str) -> None:
    """Give SOURCE_IMAGE the name TARGET_IMAGE too (like docker tag); print its digest."""
    click.echo(layerdiff.tag(source, target))


@cli.command(
    epilog="""\b
Examples:
  layerdiff rmi app:1 app:2
  layerdiff rmi --no-prune oci:/srv/export:v2"""
)
@click.argument("images", nargs=-1, required=True, metavar="IMAGE...")
@click.option(
    "--no-prune", is_flag=True, help="Only remove the names; leave the blobs for a later gc."
)
@click.option(
    "-f",
    "--force",
    is_flag=True,
    help="Remove the last name of an image a container was made from too (the container keeps "
    "its image's blobs), and every name of an image given by its ID.",
)
def rmi(images: tuple[str, ...], no_prune: bool, force: bool) -> None:
    """Remove image names (like docker rmi), then the blobs no other name reaches. An image
    ID (its digest as images shows it, 12 hex digits or more) removes an untagged image, or
    the one name of a tagged one (every name with --force). As docker, the last name of an
    image a container was made from stays unless --force. If any IMAGE cannot be removed,
    none is."""
    from layerdiff.errors import ImageNotFoundError, InvalidReferenceError
    from layerdiff.refs import LayoutRef, parse_layout_reference, store_tag_name
    from layerdiff.tags import (
        named,
        remove_untagged,
        tag_to_remove,
        tags_of_image_id,
        untagged_image,
    )

    # Every name is checked before any goes (a broken image's name goes too); a name given
    # twice, in any spelling (t, t:latest, a relative or absolute oci: path), goes once. An
    # untagged image of the store goes by its digest, as `images` shows it.
    refs: dict[tuple[object, str], LayoutRef] = {}
    untagged: dict[tuple[object, str], str] = {}
    try:
        for text in images:
            try:
                ref = parse_layout_reference(text)
                refs.setdefault(tag_to_remove(ref), ref)
            except (ImageNotFoundError, InvalidReferenceError):
                found = untagged_image(text)
                if found is not None:
                    untagged.setdefault(found, text)
                    continue
                # As docker: an image ID takes the image's one name, or with -f all of them.
                names = tags_of_image_id(text)
                if not names:
                    raise
                # One repository's tag with its digest references is one reference to docker.
                repositories = {store_tag_name(n) for n in names}
                tags = [n for n in names if "@" not in n]
                if not force and (len(repositories) > 1 or len(tags) > 1):
                    raise _InUseError(
                        f"conflict: unable to remove {text} (must force): the image is named "
                        f"{', '.join(names)} (remove them by name, or use rmi -f)"
                    ) from None
                for name in names:
                    ref = parse_layout_reference(name)
                    refs.setdefault(tag_to_remove(ref), ref)
        if not force:
            _refuse_images_in_use(
                {key: (str(named(ref).get("digest")), ref.text) for key, ref in refs.items()},
                {(layout, digest): (digest, text) for (layout, digest), text in untagged.items()},
            )
    except (ImageNotFoundError, InvalidReferenceError, _InUseError) as e:
        if len(images) == 1:
            raise
        raise type(e)(f"{e} (no image was removed)") from None
    layouts: dict[str, str | None] = {}
    for (layout, _), ref in refs.items():
        digest = layerdiff.untag(ref)
        click.echo(f"untagged {ref.text} ({digest or 'no digest'})")
        layouts[str(layout)] = None if ref.in_store else f"oci:{layout}"
    for (layout, digest), _ in untagged.items():
        remove_untagged(str(layout), digest)
        click.echo(f"deleted the untagged image {digest}")
        layouts[str(layout)] = None
    if no_prune:
        return
    for target in layouts.values():
        report = layerdiff.gc(target)
        click.echo(_gc_summary(report))


class _InUseError(LayerdiffError):
    """A name rmi refuses to take without --force, as docker's "must force" conflict: the last
    one of a container's image, or one of several an image ID stands for."""


def _refuse_images_in_use(
    tags: dict[tuple[object, str], tuple[str, str]],
    untagged: dict[tuple[object, str], tuple[str, str]],
) -> None:
    """Fail, as ``docker rmi`` does, when a name about to go is the last one that reaches the
    image a container of the store was made from: ``tags`` maps (layout, tag) and ``untagged``
    (layout, digest) to (the digest it names, the name as given). A name reaches the manifest
    it names, and those of a multi-platform index it names."""
    import contextlib

    from layerdiff import runtime
    from layerdiff.image import INDEX_MEDIA_TYPES
    from layerdiff.layout import Layout, tag_of

    if not runtime.containers_root().is_dir():
        return
    for (layout, _), (digest, text) in [*tags.items(), *untagged.items()]:
        users = runtime.users_of(str(layout), digest)
        if not users:
            continue
        lay = Layout.open(str(layout))
        kept: set[object] = set()
        for m in lay.manifests():
            tag = tag_of(m)
            if tag is None or (layout, tag) in tags:
                continue
            kept.add(m.get("digest"))
            if m.get("mediaType") in INDEX_MEDIA_TYPES:
                with contextlib.suppress(LayerdiffError, OSError):
                    children = lay.read_json(m).get("manifests")
                    if isinstance(children, list):
                        kept.update(e.get("digest") for e in children if isinstance(e, dict))
        for c in users:
            if c.data["image_descriptor"]["digest"] not in kept:
                raise _InUseError(
                    f"conflict: unable to remove {text} (must force): container {c.reference} "
                    "was made from it (remove the container first, or use rmi -f)"
                )


@cli.command(
    epilog="""\b
Examples:
  layerdiff images --json
  layerdiff images team/app          (every tag of team/app, as docker images REPOSITORY)
  layerdiff images oci:./export"""
)
@click.argument("layout", required=False, metavar="[oci:PATH | REPOSITORY[:TAG]]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array on stdout.")
def images(layout: str | None, as_json: bool) -> None:
    """List the images of the default store (those of one repository, or one tag, as docker
    images REPOSITORY[:TAG] does), or of the OCI layout oci:PATH."""
    path = None
    wanted: tuple[str, str | None, str | None] | None = None
    if layout is not None and layout.startswith("oci:"):
        path = layout[len("oci:") :]
        if not path:
            raise InvalidReferenceError(
                f"invalid image reference {layout!r}: the layout path is empty (expected oci:PATH)"
            )
    elif layout is not None:
        from layerdiff.refs import is_layout, parse_store_reference, pinned_digest, store_tag_name

        ref = parse_store_reference(layout)  # checked as a name; the tag only if given
        name = store_tag_name(str(ref.tag))
        digest = pinned_digest(str(ref.tag))
        if digest is not None:
            wanted = (name, None, digest)
        elif layout.rfind(":") > layout.rfind("/"):
            wanted = (name, str(ref.tag).removeprefix(f"{name}:"), None)
        else:
            wanted = (name, None, None)
    from layerdiff.catalog import UNTAGGED

    found = layerdiff.images(path)
    if wanted is not None:
        name, tag, digest = wanted
        found = [
            i
            for i in found
            if i.name == name and tag in (None, i.tag) and digest in (None, i.digest)
        ]
        if not found and layout is not None and is_layout(layout):
            raise click.UsageError(f"no image {layout!r} in the store; the layout is oci:{layout}")
    found = sorted(found, key=_created_order, reverse=True)  # newest first, as docker lists
    for i in found:  # like docker, list what can be read and say what cannot
        if i.error is None:
            continue
        layout_ref = None if path is None else f"oci:{i.name}"
        if i.tag != UNTAGGED:
            what = check = f"{layout_ref or i.name}:{i.tag}"
        else:  # fsck checks it with the rest of its layout
            what = f"the untagged image {i.digest}" + (f" of {layout_ref}" if layout_ref else "")
            check = layout_ref or ""
        _warn(f"{what} cannot be read ({i.error}); see layerdiff fsck {check}")
    if as_json:
        _emit_json([asdict(i) for i in found])
        return
    rows = [["REPOSITORY", "TAG", "DIGEST", "CREATED", "LAYERS", "SIZE"]]
    rows += [
        [
            i.name,
            i.tag,
            i.digest[7:19],
            i.created or "",
            "N/A" if i.layers is None else str(i.layers),
            "N/A" if i.size is None else _human_size(i.size),
        ]
        for i in found
    ]
    _table(rows)


def _created_order(image: layerdiff.ImageSummary) -> float:
    """When ``image`` was created, as seconds since the epoch (no time or one that cannot be
    read: before all others)."""
    import datetime

    text = image.created or ""
    # Python reads microseconds at most: Go writes nanoseconds.
    text = re.sub(r"(\.\d{6})\d+", r"\1", text).replace("Z", "+00:00")
    try:
        when = datetime.datetime.fromisoformat(text)
    except ValueError:
        return float("-inf")
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.UTC)
    return when.timestamp()


@cli.command(epilog="Example:\n\n  layerdiff inspect app:1 | jq .config.config")
@click.argument("image")
def inspect(image: str) -> None:
    """Print an image as JSON: manifest digest, layers, manifest and config."""
    _emit_json(layerdiff.inspect(image))


@cli.command(epilog="Example:\n\n  layerdiff history --json oci:out:v2")
@click.argument("image")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON array on stdout.")
def history(image: str, as_json: bool) -> None:
    """Show the steps an image was made of, newest first (like docker history)."""
    entries = layerdiff.history(image)
    if as_json:
        _emit_json([asdict(e) for e in entries])
        return
    rows = [["CREATED", "CREATED BY", "SIZE", "COMMENT"]]
    rows += [
        [
            e.created or "<missing>",
            _one_line(e.created_by, 60),
            _human_size(e.size),
            _one_line(e.comment, 60),
        ]
        for e in entries
    ]
    _table(rows)


if TYPE_CHECKING:
    _IntParam = click.ParamType[int]  # generic in the click the checks run with
else:
    _IntParam = click.ParamType


class _Size(_IntParam):
    """A size in bytes: ``1048576``, ``512m``, ``1.5g`` (k, m, g, t: powers of 1024, as
    docker reads them, a fraction allowed; a trailing ``b`` or ``ib`` too), from 1 to
    2**64 - 1."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        import re
        from fractions import Fraction

        found = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", str(value).lower())
        shift = {"": 0, "k": 10, "m": 20, "g": 30, "t": 40}
        size = int(Fraction(found.group(1)) * (1 << shift[found.group(2)])) if found else 0
        if not 1 <= size <= 2**64 - 1:
            self.fail(f"{value!r} is not a size from 1 byte to 16 EiB (e.g. 256g)", param, ctx)
        return size


def _human_units(size: int) -> str:
    """``size`` as the largest unit that divides it: ``256g``."""
    for unit, shift in (("t", 40), ("g", 30), ("m", 20), ("k", 10)):
        if size % (1 << shift) == 0:
            return f"{size >> shift}{unit}"
    return str(size)


def _apply_options(command: _F) -> _F:
    """--chown/--no-chown and --max-size, shared by apply and unpack."""
    command = click.option(
        "--max-size",
        type=_Size(),
        default=_human_units(layerdiff.DEFAULT_MAX_SIZE),
        show_default=True,
        metavar="SIZE",
        help="Refuse a layer whose uncompressed size exceeds this: bytes, or with a k, m, g or t "
        "suffix (1024-based, as docker's sizes).",
    )(command)
    return click.option(
        "--chown/--no-chown",
        default=None,
        help="Set owners from the layers [default: --chown as root, --no-chown otherwise].",
    )(command)


@cli.command(
    epilog="""\b
Examples:
  layerdiff apply --to rootfs layer1.tar.gz layer2.tar.zst
  layerdiff apply --overlay --to /var/cache/layers/L2 --lower /var/cache/layers/L1 layer2.tar.gz
"""
)
@click.argument("layers", nargs=-1, required=True, type=click.Path(exists=True))
@click.option("--to", "root", type=click.Path(file_okay=False), help="Target directory (required).")
@click.option(
    "--overlay",
    is_flag=True,
    help="Write overlayfs upper-dir form (whiteouts as 0/0 devices, opaque dirs as xattrs).",
)
@click.option(
    "--lower",
    "lowers",
    multiple=True,
    type=click.Path(exists=True, file_okay=False),
    help="With --overlay: a directory of the layers below, in the same form, top first "
    "(repeatable). What the layers reach through them is copied up, so that the overlay "
    "mount of them all shows the layers applied in order.",
)
@_apply_options
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def apply(
    layers: tuple[str, ...],
    root: str,
    overlay: bool,
    lowers: tuple[str, ...],
    chown: bool | None,
    max_size: int,
    progress: str,
    as_json: bool,
) -> None:
    """Apply layer blobs (tar, tar.gz, tar.zst: detected) in order onto a directory.

    Nothing outside the directory is ever touched, whatever the layers hold.
    """
    folders = [layer for layer in layers if os.path.isdir(layer)]
    if root is None:
        hint = f" (is {folders[0]!r} the target? give it as --to {folders[0]})" if folders else ""
        raise click.UsageError(f"Missing option '--to': the directory to apply onto{hint}")
    if folders:
        raise click.UsageError(f"layer {folders[0]!r} is a directory: a layer is a tar file")
    if lowers and not overlay:
        raise click.UsageError("--lower goes with --overlay: the layer directories below --to")
    with _Progress(progress, piped="none") as shown:
        result = layerdiff.apply(
            root,
            layers,
            chown=chown,
            overlay=overlay,
            lowers=list(lowers) if lowers else None,
            max_size=max_size,
            on_step=shown.step,
        )
    _report_apply(asdict(result), result.warnings, as_json)


def _report_apply(obj: dict[str, Any], warnings: Sequence[str], as_json: bool) -> None:
    if as_json:
        _emit_json({**obj, "warnings": list(warnings)})
        return
    for warning in warnings:
        _warn(warning)


def _warn(text: str) -> None:
    """A warning on stderr, on one line whatever the names in it hold (a newline in an entry
    name must not make a line of its own)."""
    click.echo(f"layerdiff: warning: {' '.join(text.split())}", err=True)


@cli.command(epilog="Example:\n\n  layerdiff unpack debian:12 ./rootfs")
@click.argument("image")
@click.argument("directory", type=click.Path(file_okay=False))
@_apply_options
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def unpack(
    image: str, directory: str, chown: bool | None, max_size: int, progress: str, as_json: bool
) -> None:
    """Unpack every layer of IMAGE into DIRECTORY (new or empty), verifying each blob.

    Until it has finished, a marker file .NAME.incomplete stands beside DIRECTORY.
    """
    with _Progress(progress, piped="none") as shown:
        result = layerdiff.unpack(
            image, directory, chown=chown, max_size=max_size, on_step=shown.step
        )
    _report_apply(_digest_names(asdict(result)), result.warnings, as_json)


@cli.command(
    epilog="""\b
Examples:
  layerdiff squash app:1 app:1-squashed
  layerdiff squash --layers 3 oci:build:latest oci:build:small -m "build steps"
"""
)
@click.argument("image")
@click.argument("new_image")
@click.option(
    "--layers", type=click.IntRange(min=1), help="Squash the last N layers [default: all]."
)
@click.option("-m", "--message", help="Comment of the squashed layer's history entry.")
@_compression_options
@click.option(
    "--threads",
    type=click.IntRange(1, MAX_THREADS),
    help="Worker threads; never changes the output [default: all cores].",
)
@_progress_option
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def squash(
    image: str,
    new_image: str,
    layers: int | None,
    message: str | None,
    compression: str,
    compression_level: int | None,
    threads: int | None,
    progress: str,
    as_json: bool,
) -> None:
    """Write NEW_IMAGE: IMAGE with its last layers merged into one, without extracting them."""
    _check_compression_level(compression, compression_level)
    with _Progress(progress, piped="none") as shown:
        try:
            result = layerdiff.squash(
                image,
                new_image,
                layers=layers,
                message=message,
                compression=compression,
                compression_level=compression_level,
                threads=threads,
                on_step=shown.step,
            )
        except layerdiff.InvalidArgumentError as e:
            if not str(e).startswith(f"layers={layers!r}:"):
                raise
            raise click.BadParameter(
                str(e).removeprefix(f"layers={layers!r}:").strip(), param_hint="'--layers'"
            ) from None
    if as_json:
        _emit_json(
            {
                "image": result.image,
                "manifest": result.manifest_digest,
                "config": result.config_digest,
                "squashed": result.squashed,
                "digest": result.layer.digest,
                "diff_id": result.layer.diff_id,
                "size": result.layer.size,
                "media_type": result.layer.media_type,
            }
        )
        return
    click.echo(result.manifest_digest)


@cli.command(
    epilog="""\b
Examples:
  layerdiff push app:1 docker://registry.example.com/team/app:1
  layerdiff push --tls-verify=false oci:out:v2 docker://localhost:5000/app:v2 --json
"""
)
@click.argument("image")
@click.argument("destination", metavar="docker://HOST/REPO[:TAG]")
@click.option(
    "--jobs", type=click.IntRange(min=1), default=4, show_default=True, help="Blobs sent at once."
)
@_registry_options
def push(
    image: str,
    destination: str,
    jobs: int,
    tls_verify: bool,
    creds: str | None,
    progress: str,
    as_json: bool,
) -> None:
    """Push IMAGE to a registry, sending each blob at most once.

    A blob the repository has is skipped (exists), one known in another repository of the
    registry is mounted, others are uploaded; then the manifest is put.
    """
    with _Progress(progress) as on_blob:
        result = layerdiff.push(
            image, destination, tls_verify=tls_verify, creds=creds, jobs=jobs, on_blob=on_blob
        )
    if as_json:
        _emit_json(
            {
                "image": image,
                "destination": result.destination,
                "manifest": result.manifest_digest,
                "media_type": result.media_type,
                "blobs": _blobs_json(result.blobs),
            }
        )
        return
    click.echo(result.manifest_digest)


@cli.command(
    epilog="""\b
Examples:
  layerdiff pull docker://registry.example.com/team/app:1 app:1
  layerdiff pull --platform linux/arm64 docker://localhost:5000/app:v2 oci:out:v2
"""
)
@click.argument("source", metavar="docker://HOST/REPO[:TAG][@DIGEST]")
@click.argument("image", required=False)
@click.option(
    "--platform",
    metavar="OS/ARCH[/VARIANT]",
    help="From a multi-platform image, the one to pull [default: this machine's].",
)
@click.option(
    "--jobs",
    type=click.IntRange(min=1),
    default=4,
    show_default=True,
    help="Blobs fetched at once.",
)
@_registry_options
def pull(
    source: str,
    image: str | None,
    platform: str | None,
    jobs: int,
    tls_verify: bool,
    creds: str | None,
    progress: str,
    as_json: bool,
) -> None:
    """Pull an image from a registry into IMAGE (default: HOST/REPO:TAG in the store, or
    HOST/REPO@DIGEST when pulled by digest: listed untagged, used by that name).

    Only missing blobs are fetched, each checked (size and sha256) as it streams in.
    """
    with _Progress(progress) as on_blob:
        result = layerdiff.pull(
            source,
            image,
            platform=platform,
            tls_verify=tls_verify,
            creds=creds,
            jobs=jobs,
            on_blob=on_blob,
        )
    if as_json:
        _emit_json(
            {
                "image": result.image,
                "source": source,
                "manifest": result.manifest_digest,
                "media_type": result.media_type,
                "blobs": _blobs_json(result.blobs),
            }
        )
        return
    click.echo(result.manifest_digest)


@cli.command(
    epilog="""\b
Examples:
  layerdiff save app:1 docker-archive:app.tar:app:1    # then: docker load -i app.tar
  layerdiff save -o app.tar app:1                      # as docker save
  layerdiff save app:1 | ssh host docker load
"""
)
@click.argument("image")
@click.argument("archive", required=False, metavar="[ARCHIVE]")
@click.option(
    "-o", "--output", metavar="FILE", help="Write the archive to FILE (as docker save -o)."
)
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def save(image: str, archive: str | None, output: str | None, as_json: bool) -> None:
    """Write IMAGE as a docker save tarball (what docker load reads) to ARCHIVE:
    docker-archive:FILE[:NAME:TAG] (NAME:TAG the archive's name for it), or a plain FILE, or
    -o FILE; to standard output when none is given and it is no terminal."""
    from layerdiff.refs import ArchiveRef

    if archive is not None and output is not None:
        raise click.UsageError("give the archive once: as ARCHIVE or as -o FILE")
    target: str | ArchiveRef
    if archive is not None and archive.startswith("docker-archive:"):
        target = archive
    else:
        file = archive if archive is not None else output
        if file is None:
            if sys.stdout.isatty():
                raise click.UsageError(
                    "refusing to write an archive to a terminal: give a FILE or -o FILE, or "
                    "redirect standard output"
                )
            file = "/dev/stdout"
        elif file.startswith("oci:") or "://" in file:
            raise click.UsageError(
                f"{file}: save writes a docker save tarball; to copy an image into another "
                "layout or a registry use tag or push"
            )
        if not file:
            raise click.UsageError("the archive's file name is empty")
        target = ArchiveRef(text=file, file=Path(file), name=None, tag=None)
    result = layerdiff.save(image, target)
    if _is_stdout(result.file):
        return  # the archive went there: nothing may follow it
    if as_json:
        _emit_json(_digest_names(asdict(result)) | {"file": str(result.file)})
        return
    click.echo(str(result.file))


def _digest_names(fields: dict[str, Any]) -> dict[str, Any]:
    """``fields`` (an API result) with ``manifest`` and ``config`` as well, the names commit,
    squash and push give the digests, beside the API's ``manifest_digest`` and
    ``config_digest``."""
    for short in ("manifest", "config"):
        if f"{short}_digest" in fields:
            fields.setdefault(short, fields[f"{short}_digest"])
    return fields


def _is_stdout(path: os.PathLike[str]) -> bool:
    """Whether ``path`` is this process's standard output (``/dev/stdout``, a pipe's)."""
    try:
        there, out = os.stat(path), os.fstat(sys.stdout.fileno())
    except (OSError, ValueError):
        return False
    return (there.st_dev, there.st_ino) == (out.st_dev, out.st_ino)


@cli.command(
    epilog="""\b
Examples:
  docker save -o app.tar app:1 && layerdiff load app.tar
  layerdiff load app.tar oci:out:app
  docker save -o both.tar app:1 db:2 && layerdiff load both.tar
  layerdiff load docker-archive:both.tar:db:2 db:copy
  docker save app:1 | zstd | layerdiff load -
"""
)
@click.argument("file", metavar="FILE|docker-archive:FILE[:NAME:TAG]")
@click.argument("image", required=False)
@click.option(
    "--json", "as_json", is_flag=True, help="Print one JSON object (an array for several)."
)
def load(file: str, image: str | None, as_json: bool) -> None:
    """Import a docker save tarball (legacy or OCI-layout form) as IMAGE (default: its tags).

    An archive of several images loads them all, each as its tags, as docker load does; name
    one (docker-archive:FILE:NAME:TAG) to load it alone or as IMAGE. FILE - reads standard
    input (kept in a temporary file while it loads). The archive may be compressed (gzip,
    bzip2, xz, zstd).
    """
    if image is None and not file.startswith("docker-archive:"):
        results = layerdiff.load_all(file)
    else:
        results = (layerdiff.load(file, image),)
    if as_json:
        found = [_digest_names(asdict(r)) for r in results]
        _emit_json(found[0] if len(found) == 1 else found)
        return
    for result in results:
        for name in result.images or ("<none>",):  # untagged, as docker images shows it
            click.echo(f"{name} {result.manifest_digest}")


@cli.command(
    epilog="""\b
Examples:
  layerdiff fsck                 # every image in the default store
  layerdiff fsck app:1           # one image
  layerdiff fsck oci:./layout    # every image of a layout
"""
)
@click.argument("target", required=False, metavar="[IMAGE|oci:PATH]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def fsck(target: str | None, as_json: bool) -> None:
    """Check every blob the images reach: size, sha256, diff_ids, config and history.

    Exits 0 only when all is well; names each problem otherwise.
    """
    report = layerdiff.fsck(target)
    if as_json:
        _emit_json(
            {
                "ok": report.ok,
                "images": report.images,
                "blobs": report.blobs,
                "problems": [{"where": p.where, "what": p.what} for p in report.problems],
            }
        )
    else:
        for problem in report.problems:
            click.echo(f"{problem}")
        summary = f"{_count(report.images, 'image')}, {_count(report.blobs, 'blob')} checked"
        verdict = "all well" if report.ok else _count(len(report.problems), "problem")
        click.echo(f"{summary}, {verdict}", err=True)
    if not report.ok:
        sys.exit(1)


@cli.command(epilog="Example:\n\n  layerdiff gc --json")
@click.argument("layout", required=False, metavar="[oci:PATH]")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON object on stdout.")
def gc(layout: str | None, as_json: bool) -> None:
    """Remove blobs no image reaches, cached layers nothing uses and stale temporary files
    (default store, or oci:PATH).

    Safe while other commands run: it waits for commits and squashes writing into the store.
    """
    if layout is not None and not layout.startswith("oci:"):
        raise click.UsageError(f"{layout!r}: expected oci:PATH")
    report = layerdiff.gc(layout)
    if as_json:
        _emit_json(asdict(report))
        return
    click.echo(_gc_summary(report))


def _gc_summary(report: layerdiff.GcReport) -> str:
    """What gc removed, each kind counted, and the bytes that freed."""
    line = (
        f"removed {_count(report.blobs, 'blob')}, {_count(report.layers, 'cached layer')} and "
        f"{_count(report.temporary, 'temporary file')}, {_human_size(report.bytes)} freed"
    )
    if report.unreadable:
        line += (
            f"; every blob kept: {', '.join(report.unreadable)} cannot be read, and what it "
            "names with it (fsck says more)"
        )
    return line


def _count(n: int, noun: str) -> str:
    """``1 blob``, ``2 blobs``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


register_containers(cli)


def _one_line(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _message(exc: BaseException) -> str:
    """One line saying what went wrong, with the file name when the OS reported one."""
    if isinstance(exc, OSError) and exc.strerror:
        name = os.fsdecode(exc.filename) if exc.filename is not None else None
        text = exc.strerror if name is None or name in exc.strerror else f"{name}: {exc.strerror}"
    else:
        text = str(exc) or type(exc).__name__
    return " ".join(text.split())


class _Terminated(BaseException):
    """SIGTERM or SIGHUP arrived (``args[0]``): stop as Ctrl-C does, cleaning up on the way."""


def _terminate(signum: int, _frame: object) -> None:
    raise _Terminated(signum)


#: Commands whose exit code is the container command's: their own failures, bad usage
#: included, exit 125 as docker's do, so that they cannot be taken for the command's.
_CONTAINER_EXIT_COMMANDS = frozenset({"run", "start", "create"})


def _usage_exit_code(e: click.UsageError) -> int:
    if e.ctx is not None and e.ctx.command.name in _CONTAINER_EXIT_COMMANDS:
        from layerdiff.cli_containers import EXIT_SETUP

        return EXIT_SETUP
    return e.exit_code


def main(argv: Sequence[str] | None = None) -> None:
    """Entry point: run the CLI, turning every expected failure into one line on stderr.

    SIGTERM and SIGHUP stop it like Ctrl-C (unless they are ignored, as under ``nohup``): what
    was being written is removed and no tag changes (a blob already whole stays, unreferenced,
    for ``gc``). The exit code is 128 plus
    the signal's number, as a shell reports a process the signal killed.
    """
    for sig in (signal.SIGTERM, signal.SIGHUP):
        if signal.getsignal(sig) == signal.SIG_DFL:
            signal.signal(sig, _terminate)
    try:
        code = cli.main(
            args=list(argv) if argv is not None else None,
            prog_name="layerdiff",
            standalone_mode=False,
        )
    except click.exceptions.Abort as e:
        if isinstance(e.__cause__, KeyboardInterrupt):
            _fail("interrupted", 130)
        _fail("aborted", 1)
    except KeyboardInterrupt:
        _fail("interrupted", 130)
    except _Terminated as e:
        _fail(f"terminated by {signal.Signals(e.args[0]).name}", 128 + e.args[0])
    except click.exceptions.NoArgsIsHelpError as e:  # `layerdiff` alone: the help, as is
        click.echo(e.format_message(), err=True)
        sys.exit(e.exit_code)
    except click.UsageError as e:
        hint = f" (see '{e.ctx.command_path} --help')" if e.ctx is not None else ""
        _fail(_one_line(e.format_message(), 10_000) + hint, _usage_exit_code(e))
    except click.ClickException as e:
        _fail(_one_line(e.format_message(), 10_000), e.exit_code)
    except (LayerdiffError, OSError, ValueError) as e:
        _fail(_message(e), 1)
    except RecursionError:  # hostile input: JSON nested thousands deep
        _fail("a document nested too deeply to be read (a hostile or broken JSON file?)", 1)
    except Exception as e:  # a defect, not bad input: still one line, but say so
        _fail(f"internal error: {_message(e)}", 70)
    except BaseException as e:
        # The core's panics arrive as pyo3's PanicException, a BaseException.
        if type(e).__name__ != "PanicException":
            raise
        _fail(f"internal error: {_message(e)}", 70)
    sys.exit(code if isinstance(code, int) else 0)


def _waited_for(thread: threading.Thread) -> bool:
    """Whether exiting should wait for ``thread``: any other than this one, a daemon, or a blob
    transfer an interrupted or failed push or pull left behind (it is not wanted any more,
    and what it leaves is a temporary file, which gc removes)."""
    from layerdiff.blobstatus import WORKER_PREFIX

    return not (
        thread is threading.current_thread()
        or thread.daemon
        or thread.name.startswith(WORKER_PREFIX)
    )


class _NamedStdout:
    """``sys.stdout`` (or its ``buffer``), whose write errors name it: "standard output: No
    space left on device", not the OS's message alone, which would read as the store's."""

    def __init__(self, stream: Any) -> None:
        self._stream = stream

    @property
    def buffer(self) -> _NamedStdout:
        return _NamedStdout(self._stream.buffer)

    def write(self, data: Any) -> int:
        try:
            return int(self._stream.write(data))
        except OSError as e:
            raise type(e)(e.errno, e.strerror, "standard output") from None

    def flush(self) -> None:
        try:
            self._stream.flush()
        except OSError as e:
            raise type(e)(e.errno, e.strerror, "standard output") from None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)


def entry() -> NoReturn:
    """The ``layerdiff`` command: :func:`main`, then exit without tearing the interpreter down.

    By then every result is written and synced; the teardown would only free memory, module by
    module (tens of milliseconds). It still runs when a thread other than this one is alive, as
    Python would wait for it.
    """
    # Started with a standard stream closed (`>&-`), Python makes it None: what would go to it
    # goes nowhere instead, as writes to a closed descriptor do for other programs.
    for name in ("stdout", "stderr"):
        if getattr(sys, name) is None:
            setattr(sys, name, open(os.devnull, "w"))  # noqa: SIM115 (open until exit)
    sys.stdout = _NamedStdout(sys.stdout)
    try:
        main()
        code: object = 0
    except SystemExit as e:
        code = e.code
    if any(_waited_for(t) for t in threading.enumerate()):
        raise SystemExit(code)
    if code is None:
        code = 0
    elif not isinstance(code, int):
        print(code, file=sys.stderr)  # what SystemExit with a message does
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (BrokenPipeError, OSError):
        code = code or 120  # as Python's own exit when flushing stdout fails
    os._exit(code)


_quiet_start.loaded()
