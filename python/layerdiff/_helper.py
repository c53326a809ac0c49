"""The fresh, single-threaded process that starts a container (see :mod:`layerdiff.runtime`).

It opens the container's control groups' ``cgroup.procs`` files (the command joins them as it
starts), then hands over to the core, which makes the namespaces and forks the container's
PID 1.
It runs as a script without ``site`` (start-up time is part of every container start), and
imports nothing but the core. Its argument is a descriptor to read the run specification
(JSON) from — not the command line, which the container's ``ps`` shows as its PID 1; it exits
with the container's exit code.
"""

import json
import os
import sys


def main() -> None:
    try:
        with os.fdopen(int(sys.argv[1]), "rb") as f:
            spec = json.loads(f.read())
    except ValueError:
        # The caller went away (interrupted) before it had handed over the whole spec; it
        # reports that itself, and there is nothing to start or undo here.
        os._exit(125)
    error_fd = spec["error_fd"]
    # Opened here, joined by the command alone as it starts: the helper and the container's
    # init stay out of the limits and counts (the command's setup error reports a failure).
    spec["cgroup_fds"] = []
    for procs in spec.pop("cgroup_procs"):
        try:
            spec["cgroup_fds"].append(os.open(procs, os.O_WRONLY | os.O_CLOEXEC))
        except OSError as e:
            os.write(error_fd, f"joining the control group {procs}: {e.strerror}\n".encode())
            os._exit(125)
    spec["binds"] = [(source, target) for source, target in spec["binds"]]
    spec["volumes"] = [(source, target) for source, target in spec["volumes"]]
    if "console_size" in spec:
        spec["console_size"] = tuple(spec["console_size"])
    try:
        # Run as a script (``python -S .../layerdiff/_helper.py``), the extension sits beside
        # it on sys.path: the package and its imports are not loaded at all.
        try:
            import _core  # type: ignore[import-not-found]
        except ImportError:
            from layerdiff import _core

        code = _core.run_container(**spec)
    except Exception as e:  # a defect; still one line for the caller, not a traceback
        os.write(error_fd, f"starting the container: {type(e).__name__}: {e}\n".encode())
        code = 125
    os._exit(code)


if __name__ == "__main__":
    try:
        main()
    except KeyboardInterrupt:
        # A Ctrl-C that reached this process before the core took the signals over: the
        # exit code says so, the caller reports it, and a traceback would only be noise.
        os._exit(130)
