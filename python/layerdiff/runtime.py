"""Containers: create one from an image, run it in namespaces on overlayfs, list, remove.

A container is a directory — ``$LAYERDIFF_HOME/containers/NAME/``, or any path the user gives
— holding ``container.json`` (image, config, state), the overlay ``upper/`` and ``work/``
directories, the **init layer** (``init/``: the mount points ``/etc/hosts``, ``/etc/hostname``,
``/etc/resolv.conf``, ``/proc``, ``/sys``, ``/dev``) and the files bind-mounted on the first
three. The image's layers come from the shared layer cache (:mod:`layerdiff.layercache`).
Because the init files are bind mounts, a container writing to them never changes its upper
directory, and a commit leaves them out by name as well.

``run`` starts a fresh helper process (``python -m layerdiff._helper``): the kernel refuses new
user and mount namespaces to a multi-threaded process, and this one may have threads.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import json
import os
import re
import secrets
import select
import signal
import socket
import stat
import struct
import subprocess
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from tty import setraw
from typing import Any

from layerdiff import layercache, refs
from layerdiff.blobstatus import OnBlob
from layerdiff.catalog import Image, load_image
from layerdiff.cgroups import Cgroup, Limits, unified
from layerdiff.commit import CommitResult, commit
from layerdiff.errors import (
    ContainerError,
    ContainerNotFoundError,
    InvalidArgumentError,
    InvalidReferenceError,
    LayerdiffOSError,
)
from layerdiff.image import rfc3339
from layerdiff.layer import Change, check_bool, check_sequence, diff_overlay
from layerdiff.layout import Layout, writing

__all__ = [
    "INIT_FILES",
    "Container",
    "RunResult",
    "commit_container",
    "containers",
    "create",
    "open_container",
    "pause",
    "remove",
    "run",
    "start",
]

#: Files the runtime writes for each container; never part of a commit.
INIT_FILES = ("etc/hosts", "etc/hostname", "etc/resolv.conf")
#: Directories the init layer provides as mount points.
_INIT_DIRS = ("etc", "dev", "proc", "sys")
_NAME_RE = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]{0,127}")
_ID_PREFIX_RE = re.compile(r"[0-9a-f]{1,64}")
#: What sethostname takes (64 bytes) and a resolver can look up: no spaces, slashes or the like.
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_STATE_FILE = "container.json"
#: Held (flock) by the process running the container, for the whole run.
_RUN_LOCK = ".run.lock"

#: In the store's containers directory: a symbolic link, named by ID, to each container that
#: was given a directory path as its name, so that the store knows of it (its image and layers
#: are kept for it, and it is listed).
_ELSEWHERE = ".elsewhere"
_DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_HELPER = Path(__file__).with_name("_helper.py")
#: Exit code of ``run`` when the container could not be set up (as ``docker run``).
EXIT_SETUP = 125


def containers_root() -> Path:
    """``$LAYERDIFF_HOME/containers``: where named containers live."""
    return refs.store_home() / "containers"


def _location(name: str) -> Path:
    """A container's directory: a path when ``name`` has a slash, else a name in the store."""
    if "/" in name or name in (".", ".."):
        return Path(os.path.abspath(name))
    if not _NAME_RE.fullmatch(name):
        raise ContainerError(
            f"invalid container name {name!r}: use letters, digits, '_', '.' and '-' "
            "(or give a directory path)"
        )
    return containers_root() / name


def _in_store(path: Path) -> bool:
    """Whether the container directory ``path`` is one of the store's own (by name)."""
    root = containers_root()
    if path.parent == root:
        return True
    try:
        return os.path.samefile(path.parent, root)
    except OSError:
        return False


def _pid_alive(pid: int | None) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie or a reused pid is not our helper: check its command line.
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    return _HELPER.name.encode() in cmdline


@dataclass
class Container:
    """A container directory and its ``container.json``."""

    #: The container directory.
    path: Path
    #: Contents of ``container.json``.
    data: dict[str, Any]

    @property
    def name(self) -> str:
        """The container's name (its directory's name)."""
        return str(self.data["name"])

    @property
    def reference(self) -> str:
        """What names the container in a command: its name in the store, else its path."""
        return self.name if _in_store(self.path) else str(self.path)

    @property
    def id(self) -> str:
        """64 hex digits, unique."""
        return str(self.data["id"])

    @property
    def config(self) -> dict[str, Any]:
        """The runtime config: the image's, with the overrides given at create."""
        return dict(self.data.get("config") or {})

    @property
    def command(self) -> list[str]:
        """What a run executes: Entrypoint followed by Cmd."""
        config = self.config
        return [*(config.get("Entrypoint") or []), *(config.get("Cmd") or [])]

    @property
    def state(self) -> str:
        """``created``, ``running``, ``paused`` (running, frozen) or ``exited``. A run whose
        caller died counts as exited: running means a run holds the container's lock, not only
        that a process has the pid recorded, which another may have been given since."""
        state = str(self.data.get("state", "created"))
        if state == "running":
            group = self._cgroup()
            if _busy(self.path) is False or not _pid_alive(self.data.get("pid")):
                # A run killed while its container was frozen leaves its processes there,
                # frozen (a frozen process takes no signal, not even its parent's death's),
                # until a start or an rm ends them: still paused, not exited.
                with contextlib.suppress(OSError):
                    if group is not None and group.pids() and group.frozen():
                        return "paused"
                return "exited"
            if group is not None and group.frozen():
                return "paused"
        return state

    def _cgroup(self) -> Cgroup | None:
        """The control group of the container's run, if it has one."""
        dirs = [Path(d) for d in self.data.get("cgroup") or []]
        return Cgroup(dirs=dirs, v2=unified()) if dirs else None

    @property
    def upper(self) -> Path:
        """The overlay upper directory: everything the container changed."""
        return self.path / "upper"

    def image(self) -> Image:
        """The image the container was created from (by manifest digest, not by tag)."""
        layout = Layout.open(self.data["image_layout"])
        desc = dict(self.data["image_descriptor"])
        manifest = layout.read_json(desc)
        config = layout.read_json(manifest["config"])
        ref = refs.LayoutRef(
            text=str(self.data["image"]), layout=layout.path, tag=None, in_store=False
        )
        return Image(ref=ref, layout=layout, descriptor=desc, manifest=manifest, config=config)

    def layer_keys(self) -> list[str]:
        """The layer cache's keys of the container's layers, bottom first: their chain IDs
        (their diff_ids for a container made before the cache took chain IDs)."""
        return list(self.data.get("layer_keys") or self.data["layers"])

    def layer_dirs(self) -> list[Path]:
        """The cached layer trees, bottom first."""
        form = "user" if self.data.get("rootless") else "trusted"
        return [layercache.layer_dir(k, form=form) / "diff" for k in self.layer_keys()]

    def save(self) -> None:
        """Write ``container.json`` atomically (not synced: a state lost in a crash is seen
        for what it is, a run whose helper is gone)."""
        body = json.dumps(self.data, indent=2, sort_keys=True).encode() + b"\n"
        tmp = self.path / f".{_STATE_FILE}.{os.getpid()}"
        tmp.write_bytes(body)
        os.replace(tmp, self.path / _STATE_FILE)


def users_of(layout: str | os.PathLike[str], digest: str) -> list[Container]:
    """The containers of the store made from the image ``digest`` (its manifest, or the
    multi-platform index it was picked from) of ``layout``."""
    found = []
    for c in containers():
        with contextlib.suppress(OSError, KeyError, TypeError):
            made_from = (c.data["image_descriptor"]["digest"], c.data.get("image_entry"))
            if digest in made_from and os.path.samefile(c.data["image_layout"], layout):
                found.append(c)
    return found


def open_container(name: str) -> Container:
    """The container named ``name`` (or at the directory ``name``); else, as docker does, the
    store's one container whose ID (``ps``) starts with ``name``. A name wins: a directory of
    the store by that name is that container, even one being created or left broken."""
    try:
        return _open_named(name)
    except ContainerNotFoundError:
        if not _ID_PREFIX_RE.fullmatch(name) or os.path.lexists(_location(name)):
            raise
    found = [c for c in containers() if str(c.data.get("id", "")).startswith(name)]
    if len(found) > 1:
        names = ", ".join(c.name for c in found)
        raise ContainerError(f"container ID prefix {name} is ambiguous: {names}")
    if not found:
        raise ContainerNotFoundError(f"no such container: {name}")
    return found[0]


def _open_named(name: str) -> Container:
    """The container named ``name`` (or at the directory ``name``), not looked up by ID."""
    path = _location(name)
    try:
        return Container(path=path, data=_read_state(path))
    except FileNotFoundError:
        raise ContainerNotFoundError(f"no such container: {name}") from None


def _read_state(path: Path) -> dict[str, Any]:
    """The ``container.json`` of the container directory ``path`` (FileNotFoundError if none)."""
    try:
        data: dict[str, Any] = json.loads((path / _STATE_FILE).read_text())
    except FileNotFoundError:
        raise
    except (OSError, ValueError) as e:
        raise ContainerError(f"{path / _STATE_FILE}: unreadable container state: {e}") from None
    if not isinstance(data, dict):
        raise ContainerError(f"{path / _STATE_FILE}: unreadable container state: not an object")
    return data


def containers() -> list[Container]:
    """The containers of the store, oldest first: those it holds, and those it was given a
    directory path for."""
    found = []
    root = containers_root()
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        with contextlib.suppress(ContainerError):
            found.append(_open_named(entry.name))
    for link, path in _elsewhere():
        with contextlib.suppress(ContainerError, OSError):
            data = _read_state(path)
            if data.get("id") == link.name:  # not another container made there since
                found.append(Container(path=path, data=data))
    return sorted(found, key=lambda c: (str(c.data.get("created", "")), c.name))


def _elsewhere() -> list[tuple[Path, Path]]:
    """The store's links to containers given a directory path: (link, the path it names)."""
    links = containers_root() / _ELSEWHERE
    found = []
    for link in sorted(links.iterdir()) if links.is_dir() else []:
        with contextlib.suppress(OSError):
            found.append((link, Path(os.readlink(link))))
    return found


def forget_vanished() -> int:
    """Remove the store's links to containers given a directory path that holds them no
    more (removed by hand, say); return how many. The caller holds the store's gc lock."""
    alive = {c.id for c in containers()}
    gone = 0
    for link, _path in _elsewhere():
        if link.name not in alive:
            with contextlib.suppress(FileNotFoundError):
                link.unlink()
            gone += 1
    return gone


def broken_containers() -> list[tuple[str, str]]:
    """Store containers that cannot be opened, and why: an unreadable ``container.json``, or
    none, left by a create that was killed (one being created now is not listed)."""
    root = containers_root()
    found = []
    for entry in sorted(root.iterdir()) if root.is_dir() else []:
        # A name no container could have is not one of ours (lost+found, a directory a
        # container was given by path).
        if not entry.is_dir() or not _NAME_RE.fullmatch(entry.name):
            continue
        try:
            _open_named(entry.name)
        except ContainerError as e:
            if not _busy(entry):
                found.append((entry.name, str(e)))
    return found


def _busy(path: Path) -> bool | None:
    """True while a create or run holds the container's lock; None when that cannot be told
    (its lock file is another user's to read)."""
    try:
        fd = os.open(path / _RUN_LOCK, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    except PermissionError:
        return None
    try:
        # Shared: two lookers never see each other as a run; a start that meets one waits.
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def _merge_env(env: list[str], extra: Sequence[str]) -> list[str]:
    out = list(env)
    for item in extra:
        key, eq, value = item.partition("=")
        if not key:
            raise ContainerError(f"invalid environment variable {item!r} (expected KEY=VALUE)")
        if not eq:  # ``-e KEY`` passes the caller's value, as docker does
            if key not in os.environ:
                continue
            value = os.environ[key]
        # In its place when the image has it, as docker replaces it; else at the end.
        at = next((i for i, e in enumerate(out) if e.partition("=")[0] == key), None)
        if at is None:
            out.append(f"{key}={value}")
        else:
            out = [e for i, e in enumerate(out) if i == at or e.partition("=")[0] != key]
            out[at] = f"{key}={value}"
    return out


def _init_files(path: Path, hostname: str, network: str, layer_dirs: Sequence[Path]) -> None:
    """The init layer (the top lower layer: mount points for the init files, ``/dev``,
    ``/proc`` and ``/sys``) and the init files' contents. Its directories take the attributes
    of the image's, which they stand over (xattrs and ACLs included): else a container would
    see, and a commit of one that writes there would record, 0755 root where the image has,
    say, an ``/etc`` of 0750."""
    init = path / "init"
    for d in _INIT_DIRS:
        (init / d).mkdir(parents=True, exist_ok=True)
    for rel in INIT_FILES:
        (init / rel).write_bytes(b"")
    for d in _INIT_DIRS:
        image_dir = _image_dir(layer_dirs, d)
        if image_dir is not None:
            where, found = image_dir
            with contextlib.suppress(PermissionError):  # not root: our own ids only
                os.chown(init / d, found.st_uid, found.st_gid)
            _copy_xattrs(where, init / d)
            os.chmod(init / d, stat.S_IMODE(found.st_mode))
            os.utime(init / d, ns=(found.st_atime_ns, found.st_mtime_ns))
    hosts = (
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n127.0.1.1\t{hostname}\n"
    )
    (path / "hosts").write_text(hosts)
    (path / "hostname").write_text(hostname + "\n")
    resolv = ""
    if network == "host":
        with contextlib.suppress(OSError):
            resolv = Path("/etc/resolv.conf").read_text()
    (path / "resolv.conf").write_text(resolv)


def _image_dir(layer_dirs: Sequence[Path], name: str) -> tuple[Path, os.stat_result] | None:
    """The image's directory ``/name`` (a name in its root), as overlayfs shows it, and its
    attributes: the topmost of the cached layers (bottom first) that holds the name decides;
    ``None`` when none does or it is not a directory there (a whiteout, a symlink)."""
    for d in reversed(layer_dirs):
        try:
            found = os.lstat(d / name)
        except FileNotFoundError:
            continue
        return (d / name, found) if stat.S_ISDIR(found.st_mode) else None
    return None


def _copy_xattrs(source: Path, target: Path) -> None:
    """The extended attributes of the directory ``source`` (ACLs included) onto ``target``,
    but overlayfs' own (an opaque marker of the layer ``source`` is in must not hide the
    layers below the init layer). Those this caller may not set (``trusted.*`` without
    privilege) or the file system cannot hold are left out."""
    try:
        names = os.listxattr(source, follow_symlinks=False)
    except OSError:
        return
    for name in names:
        if name.startswith(("trusted.overlay.", "user.overlay.")):
            continue
        with contextlib.suppress(OSError):
            value = os.getxattr(source, name, follow_symlinks=False)
            os.setxattr(target, name, value, follow_symlinks=False)


def create(
    image: str | refs.LayoutRef,
    *,
    name: str | None = None,
    command: Sequence[str] | None = None,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    hostname: str | None = None,
    network: str = "host",
    limits: Limits | None = None,
    tty: bool = False,
) -> Container:
    """Create a container from ``image`` (its layers are cached on first use).

    ``command`` replaces the image's Cmd, ``entrypoint`` its Entrypoint (``[]`` clears it);
    ``env`` (``K=V``), ``workdir`` (absolute) and ``user`` override the image config;
    ``network`` is ``host`` (share the caller's) or ``none`` (loopback only); ``limits`` apply
    whenever it runs. ``name`` with a slash is a directory path. With ``tty``, each run gives
    the command a terminal of its own (``docker run -t``), relayed to the caller's streams.
    """
    tty = check_bool("tty", tty)
    if network not in ("host", "none"):
        raise ContainerError(f"unknown network mode {network!r} (expected host or none)")
    command = None if command is None else check_sequence("command", command)
    entrypoint = None if entrypoint is None else check_sequence("entrypoint", entrypoint)
    env = check_sequence("env", env)
    img = load_image(image)
    cid = secrets.token_hex(32)
    path = _location(name or cid[:12])
    rootless = os.geteuid() != 0
    config = dict(img.config.get("config") or {})
    config["Env"] = _merge_env(list(config.get("Env") or [f"PATH={_DEFAULT_PATH}"]), env)
    if entrypoint is not None:
        config["Entrypoint"] = list(entrypoint)
        config.pop("Cmd", None)
    if command:
        config["Cmd"] = list(command)
    if workdir is not None:
        if not workdir.startswith("/"):
            raise ContainerError(
                f"working directory {workdir!r} is not absolute (it is a path in the container)"
            )
        config["WorkingDir"] = workdir
    if user is not None:
        config["User"] = user
    volumes = _volumes(config)
    hostname = hostname or cid[:12]
    if not _HOSTNAME_RE.fullmatch(hostname):
        raise ContainerError(
            f"invalid hostname {hostname!r}: up to 64 letters, digits, '-', '_' and '.'"
        )
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # Claims the name: a second create of it fails here. Its owner's alone: what the
        # container makes setuid in upper/ is not for other users of the host to run.
        path.mkdir(mode=0o700)
    except FileExistsError:
        raise ContainerError(f"container name or directory in use: {path}") from None
    except OSError as e:
        raise LayerdiffOSError(
            e.errno, f"creating the container: {e.strerror}", str(path)
        ) from None
    try:
        store = Layout.create(refs.store_layout_path())
        # The run lock, held while the container is made: `rm -f` leaves it be until then, and
        # removes what a killed create left (a directory without container.json). While it
        # writes, gc waits, and then keeps the layers of the containers it can see.
        with layercache.locked(path / _RUN_LOCK, 0o600), writing(store):
            form = "user" if rootless else "trusted"
            layer_dirs = layercache.ensure_layers(img, form=form)
            for d in ("upper", "work", "rootfs"):
                (path / d).mkdir()
            for i in range(len(volumes)):
                (path / "volumes" / str(i)).mkdir(parents=True)
            diff_ids = list(img.config["rootfs"]["diff_ids"])
            _init_files(path, hostname, network, layer_dirs)
            container = Container(
                path=path,
                data={
                    "id": cid,
                    "name": path.name,
                    "created": rfc3339(None),
                    "image": img.ref.text,
                    # Absolute: the container is used from any directory, as its name is.
                    "image_layout": os.path.abspath(img.layout.path),
                    "image_descriptor": dict(img.descriptor),
                    # The layout's entry it was reached by: a multi-platform index's, perhaps.
                    "image_entry": str((img.entry or img.descriptor)["digest"]),
                    "layers": diff_ids,
                    "layer_keys": layercache.chain_ids(diff_ids),
                    "rootless": rootless,
                    "config": config,
                    "hostname": hostname,
                    "network": network,
                    "limits": dataclasses.asdict(limits or Limits()),
                    "tty": tty,
                    "volumes": volumes,
                    "state": "created",
                },
            )
            container.save()
            if not _in_store(path):
                links = containers_root() / _ELSEWHERE
                links.mkdir(parents=True, exist_ok=True)
                os.symlink(path, links / cid)
    except BaseException:
        layercache.remove_tree(path)
        raise
    return container


def _volumes(config: dict[str, Any]) -> list[str]:
    """The image's volumes (``VOLUME``), each an anonymous volume of the container, as
    docker makes them: a directory of the container's own mounted at that path, kept out of
    ``upper/`` (so out of a commit) and removed with the container."""
    found = config.get("Volumes") or {}
    if not isinstance(found, dict):
        raise ContainerError(f"the image's Volumes is not an object: {found!r}")
    volumes: set[tuple[str, ...]] = set()
    for path in found:
        parts = tuple(p for p in str(path).split("/") if p not in ("", "."))
        if not str(path).startswith("/") or ".." in parts:
            raise ContainerError(f"the image's volume {path!r} is not an absolute path")
        if not parts:
            raise ContainerError("the image's volume '/' would hide the whole root")
        if parts[0] in ("proc", "sys", "dev"):
            raise ContainerError(
                f"the image's volume {path!r} is under /{parts[0]}, which the runtime mounts itself"
            )
        volumes.add(parts)  # one volume a path, however it is spelled
    # A directory before those below it, which are mounted on the volume it becomes.
    return ["/" + "/".join(parts) for parts in sorted(volumes)]


@dataclass(frozen=True, kw_only=True)
class RunResult:
    """How a container's command ended."""

    #: Exit code: the command's, 128+N for a signal N, 125 set-up failed, 126 cannot execute,
    #: 127 not found.
    exit_code: int
    #: The runtime's message when the command could not be started, else ``None``.
    error: str | None
    #: The container (already removed when run with ``rm``).
    container: Container


#: Signals to ``run``/``start`` that go on to the container, as docker's sig-proxy passes them.
_FORWARDED = (
    signal.SIGALRM,
    signal.SIGVTALRM,
    signal.SIGPROF,
    signal.SIGPWR,
    signal.SIGTERM,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGWINCH,
    signal.SIGINT,
)

#: Of those, the ones a terminal sends to its whole foreground process group: Ctrl-C, Ctrl-\,
#: a resize. The container's processes are in that group and have them already. (A hang-up
#: goes to the session leader alone, which run may be: it is passed on.)
_FROM_TERMINAL = frozenset({signal.SIGINT, signal.SIGQUIT, signal.SIGWINCH})

#: Of those, the ones an application may use itself (timers, profilers): passed on only when
#: the caller leaves them at their default action (as the command line does).
_IF_UNUSED = frozenset({signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGPWR})

#: Of those, the ones that end a run: a frozen container is thawed to receive them.
_STOPPING = frozenset({signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT})

#: ``si_code`` of a signal the kernel sent itself, as a terminal's are (``SI_KERNEL``).
_SI_KERNEL = 0x80


class _Console:
    """The caller's end of a container's terminal (``-t``), as docker's CLI attaches to one:
    the core makes the terminal in the container and sends its master side over ``child``;
    a thread then copies the command's output to our standard output and, when standard input
    is a terminal, what is typed to the command, with our terminal in raw mode meanwhile (so
    that Ctrl-C and the like reach the command's terminal as keys)."""

    def __init__(self) -> None:
        self.parent, self.child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        self.master: int | None = None
        self.received = threading.Event()
        self.output = threading.Thread(target=self._output, name="layerdiff-console", daemon=True)
        # Typed keys go in on a thread of their own: a command that reads none must not keep
        # its output from coming out (its terminal's input queue fills, and the write waits).
        self.input = threading.Thread(target=self._input, name="layerdiff-keys", daemon=True)
        self.stop_r, self.stop_w = os.pipe()

    def close(self) -> None:
        self.child.close()
        self.parent.close()
        os.close(self.stop_r)
        os.close(self.stop_w)

    @staticmethod
    def size() -> tuple[int, int]:
        """The caller's terminal's rows and columns (0, 0 when it is on none): the size the
        command's terminal starts with, before the command does."""
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                rows, cols, _, _ = struct.unpack(
                    "HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8)
                )
                return rows, cols
        return 0, 0

    @contextlib.contextmanager
    def attached(self, proc: subprocess.Popen[bytes]) -> Iterator[None]:
        """Relay while the block runs, then until the container's processes, the last holders
        of its terminal, are gone: ``proc``, the helper, is killed first if the block ended
        early (the container dies with it); the output left is copied, however slowly it is
        read. The caller's terminal is put back first of all."""
        self.child.close()  # the container holds it now
        saved = None
        typed = os.isatty(0)
        if typed:
            with contextlib.suppress(termios.error):
                saved = termios.tcgetattr(0)
                setraw(0)
        self.output.start()
        if typed:
            self.input.start()
        try:
            yield
        finally:
            if saved is not None:
                with contextlib.suppress(termios.error):
                    termios.tcsetattr(0, termios.TCSADRAIN, saved)
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.write(self.stop_w, b"x")
            self.output.join()
            if self.input.ident is not None:
                # Ends at once: told to, or its write to the terminal failing now that nobody
                # holds the other side.
                self.input.join(5)
            self.parent.close()
            if not self.input.is_alive():
                os.close(self.stop_r)
                os.close(self.stop_w)
                if self.master is not None:
                    os.close(self.master)

    def resize(self) -> None:
        """Give the command's terminal the size of ours (if we are on one)."""
        rows, cols = self.size()
        if self.master is not None and (rows or cols):
            with contextlib.suppress(OSError):
                size = struct.pack("HHHH", rows, cols, 0, 0)
                fcntl.ioctl(self.master, termios.TIOCSWINSZ, size)

    def _output(self) -> None:
        try:
            _, fds, _, _ = socket.recv_fds(self.parent, 1, 1)
        except OSError:
            fds = []
        if fds:
            self.master = fds[0]
        self.received.set()
        if self.master is None:
            return  # the container ended before its command had a terminal
        while True:
            try:
                data = os.read(self.master, 1 << 16)
            except OSError:  # EIO: nobody holds the terminal any more
                data = b""
            if not data:
                return
            with contextlib.suppress(OSError):  # a closed output: keep draining
                _write_all(1, data)

    def _input(self) -> None:
        self.received.wait()
        if self.master is None:
            return
        poller = select.poll()  # not select(): descriptors may be numbered past 1023
        poller.register(0, select.POLLIN)
        poller.register(self.stop_r, select.POLLIN)
        while True:
            ready = {fd for fd, _ in poller.poll()}
            if self.stop_r in ready:
                return
            try:
                data = os.read(0, 1 << 16)
                if not data:
                    return
                _write_all(self.master, data)
            except OSError:
                return


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


@contextlib.contextmanager
def _forwarding(
    proc: subprocess.Popen[bytes], group: Cgroup | None = None, console: _Console | None = None
) -> Iterator[None]:
    """While the container runs, signals to us go on to it: those of ``_FORWARDED`` (the
    default action of most would kill us and leave it unwatched). Those a terminal sent
    (``_FROM_TERMINAL``, from the kernel) are not passed on: the terminal sent them to the
    container's processes itself, and passing them on would deliver them twice. A process's
    ``kill -INT`` or ``kill -QUIT`` to run is passed on.

    Telling the two apart needs the signal's ``si_code``, which only ``sigwaitinfo`` gives, and
    only for a signal every thread blocks. In a process with other threads (an application
    using the API), SIGINT is ignored for the run instead, as a terminal's Ctrl-C still
    reaches the container, and the others are passed on. Only the main thread handles signals:
    called from another thread, this does nothing and the application's own handlers stay in
    place.

    A signal that ends a run (``_STOPPING``) first thaws ``group``, the container's control
    group: a frozen process would never see it (a ``commit --pause`` killed while it held the
    container frozen leaves it so).

    With a ``console`` (``-t``), the command is in a session of its own on a terminal of its
    own: a signal the caller's terminal sends reaches us (and the runtime's own processes)
    but not it, so every one is passed on, and a resize is passed on as the new size, from
    which its terminal signals it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def thaw(sig: int) -> None:
        if group is not None and sig in _STOPPING:
            with contextlib.suppress(OSError):
                group.freeze(False)

    def forward(sig: int, _frame: object) -> None:
        if console is not None and sig == signal.SIGWINCH:
            console.resize()
            return
        thaw(sig)
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(sig)

    old = {s: signal.getsignal(s) for s in _FORWARDED}
    passed = [s for s in _FORWARDED if s not in _IF_UNUSED or old[s] == signal.SIG_DFL]
    try:
        if console is not None:
            for s in passed:
                signal.signal(s, forward)
            yield
        elif _threads() > 1:
            for s in passed:
                signal.signal(s, signal.SIG_IGN if s == signal.SIGINT else forward)
            yield
        else:
            for s in passed:
                if s not in _FROM_TERMINAL:
                    signal.signal(s, forward)
            with _terminal_signals(forward, thaw):
                yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


def _threads() -> int:
    """Threads of this process that a terminal's signal sent to it may go to (``/proc``):
    native ones included, not those that block all of them (the core's own workers block every
    signal). 2 when it cannot say."""
    terminal = sum(1 << (s - 1) for s in _FROM_TERMINAL)
    count = 0
    try:
        for task in os.listdir("/proc/self/task"):
            # A thread that ended meanwhile: ENOENT on open, ESRCH on read.
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                with open(f"/proc/self/task/{task}/status") as f:
                    blocked = next((line for line in f if line.startswith("SigBlk:")), "")
                mask = int(blocked.split()[1], 16) if blocked else 0
                count += mask & terminal != terminal
    except (OSError, ValueError, IndexError):
        return 2
    return count


@contextlib.contextmanager
def _terminal_signals(
    forward: Callable[[int, object], None], thaw: Callable[[int], None]
) -> Iterator[None]:
    """A thread taking every signal of ``_FROM_TERMINAL`` with ``sigwaitinfo``, passing on
    those a process sent; for those the terminal sent (the container has them already),
    ``thaw`` alone, so that a paused container takes its Ctrl-C.

    They are blocked in this (the only) thread first, so the helper inherits the mask and
    nothing else receives them. Should one arrive while nobody waits for it any more, its
    Python handler is a no-op until the mask is restored: a SIGINT meant for the container
    never becomes a KeyboardInterrupt of the caller's.
    """
    for s in _FROM_TERMINAL:
        signal.signal(s, lambda _sig, _frame: None)
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _FROM_TERMINAL)
    done = threading.Event()

    def receive() -> None:
        while True:
            info = signal.sigwaitinfo(_FROM_TERMINAL)
            if done.is_set():
                return
            with contextlib.suppress(OSError):  # the thread must live until told to stop
                if info.si_code != _SI_KERNEL:
                    forward(info.si_signo, None)
                else:
                    thaw(info.si_signo)

    helper = threading.Thread(target=receive, name="layerdiff-signals", daemon=True)
    try:
        helper.start()
        yield
    finally:
        done.set()
        if helper.is_alive():
            # Addressed to the process, not the thread: should the helper have just returned
            # on a signal of its own, this one waits, blocked, for the no-op handler.
            os.kill(os.getpid(), signal.SIGWINCH)
            helper.join()
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)


def _with_hostname(env: list[str], hostname: str) -> list[str]:
    """``env`` with ``HOSTNAME``, as docker sets it, unless the image or ``-e`` set it."""
    if any(e.split("=", 1)[0] == "HOSTNAME" for e in env):
        return list(env)
    return [*env, f"HOSTNAME={hostname}"]


def start(container: Container) -> RunResult:
    """Run the container's command, wait for it, and return how it ended."""
    if not isinstance(container, Container):
        raise InvalidArgumentError(
            f"container={container!r}: expected a Container (from create or open_container)"
        )
    # One run at a time: the lock is held for the whole run and goes with the process, so two
    # starts never share the upper directory, whatever their timing.
    lock = os.open(container.path / _RUN_LOCK, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        for attempt in range(20):
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                # A run holds it for good; a look at the container's state (ps) for a moment.
                if attempt == 19:
                    raise ContainerError(
                        f"container {container.reference} is already running"
                    ) from None
                time.sleep(0.01)
        fresh = _read_state(container.path)
        container.data.clear()
        container.data.update(fresh)
        return _start_locked(container)
    finally:
        os.close(lock)


def _start_locked(container: Container) -> RunResult:
    # The lock is ours: a state that says running is what a run killed with it left.
    limits = Limits(**(container.data.get("limits") or {}))
    config = container.config
    argv = container.command
    if not argv:
        raise ContainerError("no command given and the image has no Entrypoint or Cmd")
    for d in container.layer_dirs():
        if not d.is_dir():
            raise ContainerError(f"cached layer missing: {d} (remove and re-create the container)")
    # Made by an earlier version, they may be open to other users.
    layercache.private_dir(container.path)
    layercache.private_dir(layercache.cache_root())
    stale = container._cgroup()
    if stale is not None:
        # What a run killed with it left: processes frozen by a pause never see the signal
        # that should have ended them. Thawed and killed, not taken over.
        stale.remove()
    group: Cgroup | None = None
    try:
        group = Cgroup.create(f"layerdiff-{container.id[:16]}", limits)
    except OSError as e:
        if limits.any and e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
            asked = [
                flag
                for flag, value in (
                    ("--memory", limits.memory),
                    ("--cpus", limits.cpus),
                    ("--pids-limit", limits.pids),
                )
                if value is not None
            ]
            raise ContainerError(
                f"{', '.join(asked)}: limits need a control group, and this user may not "
                f"make one here ({e.strerror}; a rootless container on cgroup v1 cannot): "
                "run as root, or without them"
            ) from None
        if limits.any:
            raise
    read_fd, write_fd = os.pipe()
    layers_dir = layercache.cache_root()
    env = _with_hostname(config.get("Env") or [], str(container.data["hostname"]))
    if container.data.get("tty") and not any(e.split("=", 1)[0] == "TERM" for e in env):
        env.append("TERM=xterm")  # as docker sets it for a terminal, kept out of the config
    spec: dict[str, Any] = {
        "argv": argv,
        "env": env,
        "cwd": str(config.get("WorkingDir") or "/"),
        "user": str(config.get("User") or ""),
        "hostname": str(container.data["hostname"]),
        "layers_dir": str(layers_dir),
        "lowers": [str(container.path / "init")]
        + [os.path.relpath(d, layers_dir) for d in reversed(container.layer_dirs())],
        "upper": str(container.upper),
        "work": str(container.path / "work"),
        "rootfs": str(container.path / "rootfs"),
        "binds": [[str(container.path / Path(f).name), f] for f in INIT_FILES],
        "volumes": [
            [str(container.path / "volumes" / str(i)), v]
            for i, v in enumerate(container.data.get("volumes") or [])
        ],
        "rootless": bool(container.data.get("rootless")),
        "new_network": container.data.get("network") == "none",
        "error_fd": write_fd,
        "parent_pid": os.getpid(),
        "cgroup_procs": group.procs_files if group else [],
    }
    console = _Console() if container.data.get("tty") else None
    if console is not None:
        spec["console_fd"] = console.child.fileno()
        spec["console_size"] = list(console.size())
    spec_read, spec_write = os.pipe()
    try:
        proc = subprocess.Popen(
            [sys.executable, "-S", "-E", str(_HELPER), str(spec_read)],
            pass_fds=(write_fd, spec_read, *([console.child.fileno()] if console else [])),
        )
        os.close(spec_read)
        with os.fdopen(spec_write, "wb") as f:
            f.write(json.dumps(spec).encode())
    except BaseException:
        for fd in (read_fd, write_fd, spec_read, spec_write):
            with contextlib.suppress(OSError):
                os.close(fd)
        if console is not None:
            console.close()
        if group:
            group.remove()
        raise
    os.close(write_fd)
    container.data.update(
        state="running",
        pid=proc.pid,
        started=rfc3339(None),
        cgroup=[str(d) for d in group.dirs] if group else [],
    )
    try:
        container.save()
        with contextlib.ExitStack() as attached:
            attached.enter_context(_forwarding(proc, group, console))
            if console is not None:
                attached.enter_context(console.attached(proc))
            code = proc.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        with os.fdopen(read_fd, "rb") as errors:
            message = errors.read().decode(errors="replace").strip()
        if group:
            group.remove()
        container.data.update(state="exited", exit_code=proc.returncode, finished=rfc3339(None))
        container.data.pop("pid", None)
        container.data["cgroup"] = []
        with contextlib.suppress(OSError):
            container.save()
    code = code if code >= 0 else 128 - code
    error = message.splitlines()[-1] if message else None
    return RunResult(exit_code=code, error=error, container=container)


def run(
    image: str | refs.LayoutRef,
    command: Sequence[str] | None = None,
    *,
    name: str | None = None,
    rm: bool = False,
    entrypoint: Sequence[str] | None = None,
    env: Sequence[str] = (),
    workdir: str | None = None,
    user: str | None = None,
    hostname: str | None = None,
    network: str = "host",
    limits: Limits | None = None,
    tty: bool = False,
) -> RunResult:
    """Create a container from ``image`` and run ``command`` (default: the image's
    Entrypoint/Cmd) in it; with ``rm``, remove the container afterwards. The command's
    stdin, stdout and stderr are the caller's."""
    container = create(
        image,
        name=name,
        command=command,
        entrypoint=entrypoint,
        env=env,
        workdir=workdir,
        user=user,
        hostname=hostname,
        network=network,
        limits=limits,
        tty=tty,
    )
    try:
        return start(container)
    finally:
        if rm:
            # Gone already when `rm -f` removed it while it ran: the run's result stands.
            with contextlib.suppress(ContainerNotFoundError):
                remove(str(container.path), force=True)


def _remove_broken(path: Path, name: str) -> None:
    """Remove the store container at ``path`` whose state cannot be read, or was never written
    (its create was killed): unless a create or run holds its lock. Nothing is known of its
    control groups."""
    if _busy(path):
        raise ContainerError(f"container {name} is being created or run")
    layercache.remove_tree(path)


def remove(name: str, *, force: bool = False) -> None:
    """Remove a container (``force``: also a running one, which is killed first; and one
    whose state is unreadable, or was never written by a create that was killed)."""
    try:
        container = open_container(name)
    except ContainerError as e:  # ContainerNotFoundError included
        # A directory given by path is left to its owner: it may be anything.
        path = _location(name)
        if path.parent != containers_root() or not path.is_dir():
            raise
        if not force:
            raise ContainerError(f"{e} (rm -f removes what is left of it)") from None
        _remove_broken(path, name)
        return
    state = container.state
    if state in ("running", "paused"):
        if not force:
            raise ContainerError(f"container {container.reference} is {state} (use --force)")
        pid = container.data.get("pid")
        if pid and _pid_alive(pid):  # not when its run is gone (the number perhaps reused)
            with contextlib.suppress(ProcessLookupError):
                os.kill(int(pid), signal.SIGKILL)
    elif _busy(container.path):
        raise ContainerError(f"container {container.reference} is being started: try again")
    group = container._cgroup()
    if group is not None:
        group.remove()
    layercache.remove_tree(container.path)
    with contextlib.suppress(FileNotFoundError):
        (containers_root() / _ELSEWHERE / container.id).unlink()


def pause(name: str, *, frozen: bool = True) -> Container:
    """Freeze every process of the running container ``name`` (``frozen=False``: thaw them),
    as ``docker pause`` and ``unpause`` do."""
    container = open_container(name)
    state = container.state
    want, other = ("paused", "running") if frozen else ("running", "paused")
    if state == want:
        raise ContainerError(f"container {container.reference} is {want} already")
    group = container._cgroup()
    if state != other or group is None:
        why = "it has no control group" if state == other else f"it is {state}"
        raise ContainerError(f"cannot {'pause' if frozen else 'unpause'} {container.name}: {why}")
    group.freeze(frozen)
    return container


def changes(container: str | Container, *, content: bool = False) -> list[Change]:
    """What ``container`` (a name, directory or ID, or a :class:`Container`) changed, as
    ``docker diff`` lists it: its upper directory against its image's layers, the files the
    runtime writes for it left out. ``content`` is :func:`layerdiff.diff_overlay`'s."""
    check_bool("content", content)
    found = open_container(container) if isinstance(container, str) else container
    args: dict[str, Any] = {
        "upper": found.upper,
        "lowers": list(reversed(found.layer_dirs())),
        "content": content,
    }
    if found.data.get("rootless") and os.geteuid() != 0:
        # Read as its root reads its files (some it may have made unreadable to their owner),
        # as its commit reads them.
        from layerdiff import _userns

        listed: list[Change] = _userns.call("diff_overlay", args)
    else:
        listed = diff_overlay(**args)
    own = {"/" + f for f in INIT_FILES}
    return [c for c in listed if os.fsdecode(c.path) not in own]


def commit_container(
    name: str,
    image: str | refs.LayoutRef | None = None,
    *,
    message: str | None = None,
    author: str | None = None,
    changes: Sequence[str] = (),
    pause: bool = True,
    compression: str = "gzip",
    compression_level: int | None = None,
    threads: int | None = None,
    source_date_epoch: int | None = None,
    on_step: Callable[[str], None] | None = None,
    tls_verify: bool = True,
    creds: str | None = None,
    on_blob: OnBlob | None = None,
) -> CommitResult:
    """Commit what the container ``name`` changed as one new layer on top of its image.

    The layer is the overlay-upper diff of the container (the init files left out); the new
    config is the container's (its Env, Cmd… as run) with ``changes`` applied. ``image``
    defaults to ``NAME:latest`` in the store; ``docker://…`` streams the layer to a registry
    (``tls_verify``, ``creds``, ``on_blob`` as for :func:`layerdiff.commit`). With ``pause``,
    a running container is frozen while its upper directory is read, so the layer is one
    consistent moment. ``compression``, ``compression_level`` and ``threads`` are those of
    :func:`layerdiff.write_layer`.
    """
    container = open_container(name)
    target = image if image is not None else f"{container.name.lower()}:latest"
    if isinstance(target, str) and image is None:
        try:
            refs.parse_layout_reference(target)
        except InvalidReferenceError as e:
            raise InvalidReferenceError(
                f"{e}: the container's name makes no image name; give the image to commit to"
            ) from None
    # A paused container stays paused; one frozen here is thawed when done.
    running = container.state == "running"
    group = container._cgroup() if pause and running else None
    if group is not None:
        group.freeze(True)
    elif pause and running and on_step is not None:
        on_step("not pausing the container: it has no control group (a rootless one)")
    try:
        result = commit(
            container.upper,
            image=target,
            overlay=True,
            lowers=list(reversed(container.layer_dirs())),
            base=container.image(),
            message=message,
            author=author,
            changes=changes,
            compression=compression,
            compression_level=compression_level,
            threads=threads,
            source_date_epoch=source_date_epoch,
            on_step=on_step,
            exclude=INIT_FILES,
            root_ids=(os.getuid(), os.getgid()) if container.data.get("rootless") else None,
            run_config=container.config,
            tls_verify=tls_verify,
            creds=creds,
            on_blob=on_blob,
        )
    finally:
        if group is not None:
            group.freeze(False)
    if not container.data.get("rootless"):
        return result
    # Not silently: the container's user namespace maps one user, so every file it changed
    # is root's in the layer, whoever owned it in the image.
    note = (
        "rootless container: the files it changed are committed as owned by root, the one "
        "user its namespace maps (owners the image gave them are not kept)"
    )
    layer = dataclasses.replace(result.layer, warnings=(*result.layer.warnings, note))
    return dataclasses.replace(result, layer=layer)
