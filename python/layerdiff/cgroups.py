"""Control groups for containers: memory, CPU and process-count limits, freezing, cleanup.

Both hierarchies are spoken: cgroup v2 (one unified tree) and v1 (one tree per controller;
``memory``, ``cpu``, ``pids`` and ``freezer`` are used). A container's group is created as a
child of the caller's own group in each tree, so it works wherever the caller may create
groups (root, or a delegated subtree). The container's command joins the group as it
starts (through descriptors its helper opened), so every process of the command is in it and
the runtime's helper and init are not.
"""

from __future__ import annotations

import contextlib
import errno
import os
import re
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from layerdiff.errors import InvalidArgumentError, LayerdiffError, LayerdiffOSError

__all__ = ["Cgroup", "CgroupError", "Limits", "parse_cpus", "parse_memory"]

_ROOT = Path("/sys/fs/cgroup")
_V1_CONTROLLERS = ("memory", "cpu", "pids", "freezer")
#: CFS period for ``--cpus`` (the one docker uses).
_CPU_PERIOD = 100_000
_UNITS = {"": 1, "b": 1, "k": 1 << 10, "m": 1 << 20, "g": 1 << 30, "t": 1 << 40}
#: Smallest ``--memory`` docker accepts.
_MEMORY_MIN = 6 << 20
#: ``--cpus`` range: a 1000 µs quota per 100 ms period (the kernel's smallest) up to 1024 CPUs.
_CPUS_MIN, _CPUS_MAX = 0.01, 1024


class CgroupError(LayerdiffError, OSError):
    """A control group could not be created, limited or removed."""


def parse_memory(text: str) -> int:
    """``--memory`` as docker reads it: a number of bytes with an optional b, k, m, g suffix."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([bkmgt]?)b?\s*", text.lower())
    if not m:
        raise InvalidArgumentError(f"invalid memory size {text!r} (expected e.g. 512m or 2g)")
    return _check_memory(int(float(m.group(1)) * _UNITS[m.group(2)]), repr(text))


def parse_cpus(text: str) -> float:
    """``--cpus``: a positive number of CPUs (fractions allowed)."""
    try:
        value = float(text)
    except ValueError:
        raise InvalidArgumentError(f"invalid number of CPUs {text!r}") from None
    return _check_cpus(value, repr(text))


def _check_memory(value: int, shown: str) -> int:
    if value < _MEMORY_MIN:
        raise InvalidArgumentError(f"memory limit {shown} is below the minimum of 6m")
    return value


def _check_cpus(value: float, shown: str) -> float:
    if not _CPUS_MIN <= value <= _CPUS_MAX:  # NaN too: no comparison with it holds
        raise InvalidArgumentError(f"number of CPUs out of range: {shown}")
    return value


def _check_pids(value: int, shown: str) -> int:
    if value < 1:
        raise InvalidArgumentError(f"process-count limit {shown} is below the minimum of 1")
    return value


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


@dataclass(frozen=True)
class Limits:
    """Resource limits of a container; ``None`` means unlimited.

    Checked as the command line checks ``--memory``, ``--cpus`` and ``--pids-limit``:
    InvalidArgumentError for a value out of range or of the wrong type.
    """

    #: Bytes of memory (swap included), at least 6 MiB.
    memory: int | None = None
    #: CPUs, 0.01 to 1024 (fractions allowed).
    cpus: float | None = None
    #: Processes, at least 1.
    pids: int | None = None

    def __post_init__(self) -> None:
        if self.memory is not None:
            if not _is_int(self.memory):
                raise InvalidArgumentError(
                    f"memory limit must be a number of bytes, not {self.memory!r}"
                )
            _check_memory(self.memory, repr(self.memory))
        if self.cpus is not None:
            if not (_is_int(self.cpus) or isinstance(self.cpus, float)):
                raise InvalidArgumentError(f"number of CPUs must be a number, not {self.cpus!r}")
            _check_cpus(self.cpus, repr(self.cpus))
        if self.pids is not None:
            if not _is_int(self.pids):
                raise InvalidArgumentError(
                    f"process-count limit must be a whole number, not {self.pids!r}"
                )
            _check_pids(self.pids, repr(self.pids))

    @property
    def any(self) -> bool:
        """Whether any limit is set."""
        return self.memory is not None or self.cpus is not None or self.pids is not None


def _own_paths() -> dict[str, str]:
    """The caller's group in each hierarchy: controller (or ``""`` for v2) → path."""
    paths: dict[str, str] = {}
    with open("/proc/self/cgroup") as f:
        for line in f:
            _id, controllers, path = line.rstrip("\n").split(":", 2)
            for c in controllers.split(",") if controllers else [""]:
                paths[c] = path
    return paths


def _write(path: Path, value: str) -> None:
    try:
        path.write_text(value)
    except OSError as e:
        raise CgroupError(e.errno, f"writing {value!r}: {e.strerror}", str(path)) from None


def unified() -> bool:
    """Whether the machine runs the cgroup v2 hierarchy alone."""
    return (_ROOT / "cgroup.controllers").is_file()


@dataclass
class Cgroup:
    """A container's control group (one directory per hierarchy)."""

    #: The group directories: one for v2, one per controller for v1.
    dirs: list[Path] = field(default_factory=list)
    #: True for cgroup v2.
    v2: bool = False

    @classmethod
    def create(cls, name: str, limits: Limits) -> Cgroup:
        """Create the group ``name`` under the caller's own and set ``limits``."""
        own = _own_paths()
        group = cls(v2=unified())
        try:
            if group.v2:
                parent = _ROOT / own.get("", "/").lstrip("/")
                wanted = {"memory", "cpu", "pids"}
                available = set((parent / "cgroup.controllers").read_text().split())
                for c in sorted(wanted & available):
                    with contextlib.suppress(OSError):
                        (parent / "cgroup.subtree_control").write_text(f"+{c}")
                group._mkdir(parent / name)
            else:
                for c in _V1_CONTROLLERS:
                    base = _ROOT / c
                    if (base / "cgroup.procs").is_file():
                        group._mkdir(base / own.get(c, "/").lstrip("/") / name)
            group._limit(limits)
        except BaseException:
            group.remove()
            raise
        return group

    def _mkdir(self, path: Path) -> None:
        try:
            path.mkdir()
        except FileExistsError:
            pass
        except OSError as e:
            raise CgroupError(
                e.errno, f"creating a control group: {e.strerror}", str(path)
            ) from None
        self.dirs.append(path)

    def _dir(self, controller: str) -> Path | None:
        if self.v2:
            return self.dirs[0] if self.dirs else None
        for d in self.dirs:
            if d.is_relative_to(_ROOT / controller):
                return d
        return None

    def _need(self, controller: str, file: str) -> Path:
        d = self._dir(controller)
        if d is None or not (d / file).exists():
            raise CgroupError(
                errno.ENOTSUP, f"the {controller} controller is not available for limits", file
            )
        return d / file

    def _limit(self, limits: Limits) -> None:
        if limits.memory is not None:
            if self.v2:
                _write(self._need("memory", "memory.max"), str(limits.memory))
                swap = self._need("memory", "memory.max").with_name("memory.swap.max")
                if swap.exists():
                    _write(swap, "0")
            else:
                _write(self._need("memory", "memory.limit_in_bytes"), str(limits.memory))
                memsw = self._need("memory", "memory.limit_in_bytes").with_name(
                    "memory.memsw.limit_in_bytes"
                )
                if memsw.exists():
                    _write(memsw, str(limits.memory))
        if limits.cpus is not None:
            quota = max(1000, int(limits.cpus * _CPU_PERIOD))
            if self.v2:
                _write(self._need("cpu", "cpu.max"), f"{quota} {_CPU_PERIOD}")
            else:
                _write(self._need("cpu", "cpu.cfs_period_us"), str(_CPU_PERIOD))
                _write(self._need("cpu", "cpu.cfs_quota_us"), str(quota))
        if limits.pids is not None:
            _write(self._need("pids", "pids.max"), str(limits.pids))

    @property
    def procs_files(self) -> list[str]:
        """The ``cgroup.procs`` files a process writes its pid into to join the group."""
        return [str(d / "cgroup.procs") for d in self.dirs]

    def pids(self) -> set[int]:
        """The processes in the group."""
        found: set[int] = set()
        for d in self.dirs:
            with contextlib.suppress(OSError):
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
        return found

    def frozen(self) -> bool:
        """Whether the group is frozen (or freezing); False when that cannot be read."""
        try:
            if self.v2:
                freeze = self.dirs[0] / "cgroup.freeze" if self.dirs else None
                return freeze is not None and freeze.read_text().strip() == "1"
            d = self._dir("freezer")
            return d is not None and (d / "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return False

    def freeze(self, frozen: bool = True) -> None:
        """Freeze (or thaw) every process of the group."""
        if self.v2:
            if self.dirs:
                _write(self.dirs[0] / "cgroup.freeze", "1" if frozen else "0")
            return
        d = self._dir("freezer")
        if d is None:
            raise CgroupError(errno.ENOTSUP, "no freezer controller to pause the container", "")
        _write(d / "freezer.state", "FROZEN" if frozen else "THAWED")
        if frozen:
            for _ in range(200):
                if (d / "freezer.state").read_text().strip() == "FROZEN":
                    return
                time.sleep(0.005)

    def remove(self, *, timeout: float = 5.0) -> None:
        """Kill what is left in the group and remove its directories."""
        deadline = time.monotonic() + timeout
        # A frozen process takes a SIGKILL only once thawed (cgroup v1's freezer).
        with contextlib.suppress(OSError, LayerdiffError):
            self.freeze(False)
        for d in reversed(self.dirs):
            while True:
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY or time.monotonic() > deadline:
                        raise LayerdiffOSError(
                            e.errno, f"removing a control group: {e.strerror}", str(d)
                        ) from None
                    with contextlib.suppress(OSError):
                        if (d / "freezer.state").exists():
                            (d / "freezer.state").write_text("THAWED")
                    for pid in self.pids():
                        with contextlib.suppress(ProcessLookupError):
                            os.kill(pid, signal.SIGKILL)
                    time.sleep(0.01)
        self.dirs = []
