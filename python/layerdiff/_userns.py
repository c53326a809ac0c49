"""Writing a rootless container's layer as the container sees its files.

A rootless container's files are the caller's own, and it may have made some of them
unreadable to their owner (``/etc/shadow`` is mode 0000 in many images; ``useradd`` writes it
so). Inside the container root reads them all the same: it holds ``CAP_DAC_OVERRIDE`` over the
ids its user namespace maps. The layer is read the same way, by a child process that makes a
user namespace mapping the caller's uid and gid to root (as the container's does) and writes it
from there, as podman reads a rootless container from inside its namespace. The caller's
process is left as it was, and files the child writes (the blob) belong to the caller.

The request and the answer (a :class:`~layerdiff.layer.LayerInfo`, or the exception raised)
are pickled over the child's stdin and stdout: the child is our own program, run from this
package.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import pickle
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

_CLONE_NEWUSER = 0x10000000
_PR_SET_PDEATHSIG = 1
#: Seconds an interrupted child is given to clean up before it is killed.
_STOP_WAIT = 10.0


def call(function: str, kwargs: dict[str, Any], *, pass_fds: tuple[int, ...] = ()) -> Any:
    """``layerdiff.layer.<function>(**kwargs)`` run in a new user namespace mapping the caller
    to root; its result, or its exception raised here."""
    package_parent = str(Path(__file__).resolve().parent.parent)
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys; sys.path.insert(0, sys.argv[1]); "
            "from layerdiff._userns import _main; _main(int(sys.argv[2]))",
            package_parent,
            str(os.getpid()),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        pass_fds=pass_fds,
    )
    try:
        out, _ = child.communicate(pickle.dumps((function, kwargs)))
    except BaseException:
        # Interrupted (a terminal's Ctrl-C reached the child as well): it stops as the core
        # stops, removing its temporary file; killed only if it does not.
        with contextlib.suppress(OSError):
            child.send_signal(signal.SIGTERM)
        try:
            child.wait(timeout=_STOP_WAIT)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()
        raise
    if not out:
        raise OSError(
            f"writing the layer in a user namespace: its process exited {child.returncode}"
        )
    ok, value = pickle.loads(out)
    if not ok:
        raise value
    return value


def _enter_user_namespace() -> None:
    """Become root of a new user namespace that maps the caller's uid and gid to 0."""
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.unshare(_CLONE_NEWUSER) != 0:
        err = ctypes.get_errno()
        why = f"making a user namespace to read the container's files: {os.strerror(err)}"
        raise OSError(err, why)
    Path("/proc/self/setgroups").write_text("deny")
    Path("/proc/self/uid_map").write_text(f"0 {uid} 1")
    Path("/proc/self/gid_map").write_text(f"0 {gid} 1")


def _stop(_signum: int, _frame: object) -> None:
    raise KeyboardInterrupt  # the core then stops and removes what it was writing


def _main(parent: int) -> None:
    # Stopped as an interrupted command stops, cleaning up: asked to by the caller, or on its
    # death (a killed caller would otherwise leave this writing on, outside its locks).
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _stop)
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)  # the caller died before the line above
    function, kwargs = pickle.loads(sys.stdin.buffer.read())
    try:
        _enter_user_namespace()
        from layerdiff import layer

        result: tuple[bool, Any] = (True, getattr(layer, function)(**kwargs))
    except BaseException as e:  # every failure goes back to the caller
        result = (False, e)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # done: the answer goes back whole, or not at all
    try:
        data = pickle.dumps(result)
    except Exception as e:  # an exception that does not pickle
        data = pickle.dumps((False, OSError(f"{type(result[1]).__name__}: {e}")))
    try:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
    except OSError:
        os._exit(1)  # the caller is gone: nobody to tell
