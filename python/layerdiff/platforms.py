"""Platforms: which image of a multi-platform index suits a machine, as docker and containerd
choose it (``containerd/platforms``): names normalised (``x86_64`` is ``amd64``, ``armhf`` is
``arm/v7``), ARM variants ranked (an arm/v7 machine runs v6 images), amd64 microarchitecture
levels read from the CPU (a v3 machine runs v3, v2 and plain images, best first; plain amd64
runs plain images only). Pull and local reads of a layout's index use the same rules."""

from __future__ import annotations

import functools
import re
from typing import Any

from layerdiff.errors import ImageNotFoundError, InvalidArgumentError
from layerdiff.image import go_arch
from layerdiff.layout import Descriptor

__all__ = ["candidates", "describe", "is_for", "parse_platform", "rank", "suits"]

#: Architecture names docker and containerd take for the OCI ones (``platforms.Normalize``):
#: (architecture, the variant it implies).
_ARCH_ALIASES: dict[str, tuple[str, str | None]] = {
    "x86_64": ("amd64", None),
    "x86-64": ("amd64", None),
    "i386": ("386", None),
    "aarch64": ("arm64", None),
    "armhf": ("arm", "v7"),
    "armel": ("arm", "v6"),
}


#: What each part of a platform may be made of (containerd's ``specifierRe``): no spaces, which
#: would make a platform no image names.
_SPECIFIER_RE = re.compile(r"[A-Za-z0-9_.-]+")


def parse_platform(text: str | None) -> tuple[str, str, str | None]:
    """``OS/ARCH[/VARIANT]`` → (os, arch, variant), normalised as docker normalises it
    (``Linux/x86_64`` is linux/amd64, ``linux/armhf`` linux/arm/v7, ``arm/7`` arm/v7); None
    means this machine's."""
    if text is None:
        arch, variant = go_arch()
        return "linux", arch, _amd64_level() if arch == "amd64" else variant
    parts = text.split("/")
    if len(parts) not in (2, 3) or not all(_SPECIFIER_RE.fullmatch(p) for p in parts):
        raise InvalidArgumentError(
            f"platform {text!r}: expected OS/ARCH[/VARIANT], e.g. linux/arm64"
        )
    arch, implied = _arch(parts[1])
    variant = _variant(parts[2]) if len(parts) == 3 else implied
    if arch == "amd64" and variant == "v1":
        variant = None
    return parts[0].lower(), arch, variant


def _arch(name: str) -> tuple[str, str | None]:
    """The OCI architecture docker takes ``name`` for, and the variant it implies."""
    return _ARCH_ALIASES.get(name.lower(), (name.lower(), None))


def _variant(name: str) -> str:
    """A variant as docker spells it: lower case, ``7`` is ``v7``."""
    name = name.lower()
    return f"v{name}" if name.isdigit() else name


#: The variants an ARM machine runs, best first, as containerd ranks them: an arm/v7 machine
#: takes an arm/v6 image when there is no v7 one; ``arm`` alone means v7, ``arm64`` v8.
_ARM_VARIANTS: dict[str, dict[str, list[str | None]]] = {
    "arm": {"v8": ["v8", "v7", "v6", "v5"], "v7": ["v7", "v6", "v5"], "v6": ["v6", "v5"]},
    "arm64": {"v8": ["v8", None]},
}
_ARM_DEFAULT = {"arm": "v7", "arm64": "v8"}


#: The microarchitecture levels an amd64 machine of a level runs, best first (v1 is plain amd64).
_AMD64_LEVELS: list[str | None] = ["v4", "v3", "v2", None]

#: The CPU flags (``/proc/cpuinfo``) each x86-64 microarchitecture level needs.
_LEVEL_FLAGS = {
    "v2": {"cx16", "lahf_lm", "popcnt", "sse4_1", "sse4_2", "ssse3"},
    "v3": {"avx", "avx2", "bmi1", "bmi2", "f16c", "fma", "abm", "movbe", "xsave"},
    "v4": {"avx512f", "avx512bw", "avx512cd", "avx512dq", "avx512vl"},
}


@functools.cache
def _amd64_level() -> str | None:
    """This machine's x86-64 level (``v2``…``v4``; None: plain amd64), as containerd reads it
    to pick an image: a v3 machine takes a v3 image before a plain one, never a v4 one."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next(
                (line.split(":", 1)[1].split() for line in f if line.startswith("flags")), []
            )
    except OSError:
        return None
    level = None
    for name in ("v2", "v3", "v4"):
        if not _LEVEL_FLAGS[name] <= set(flags):
            break
        level = name
    return level


def suits(arch: str, variant: str | None) -> list[str | None] | None:
    """The variants of ``arch`` that suit ``variant``, best first; None: any will do."""
    if arch in _ARM_VARIANTS:
        variant = variant or _ARM_DEFAULT[arch]
        return list(_ARM_VARIANTS[arch].get(variant, [variant]))
    if arch == "amd64" and variant in _AMD64_LEVELS:
        # Plain amd64 (v1) runs only plain images, as containerd's platform matcher has it.
        return _AMD64_LEVELS[_AMD64_LEVELS.index(variant) :]
    return None if variant is None else [variant]


def _normalized(p: dict[str, Any]) -> tuple[object, object, object]:
    """(os, architecture, variant) of a platform an index entry or a config gives, the names
    normalised as a wanted platform's are (``x86_64`` is ``amd64``, ``Linux`` is ``linux``)."""
    os_name, arch, variant = p.get("os"), p.get("architecture"), p.get("variant")
    if isinstance(os_name, str):
        os_name = os_name.lower()
    if isinstance(arch, str):
        arch, implied = _arch(arch)
        variant = variant or implied
    if isinstance(variant, str):
        variant = _variant(variant)
    return os_name, arch, variant


def rank(p: dict[str, Any], want_os: str, want_arch: str, wanted: list[str | None] | None) -> int:
    """How well platform ``p`` (``os``, ``architecture``, ``variant``) suits the one wanted:
    0 best, -1 not at all."""
    os_name, arch, variant = _normalized(p)
    if os_name != want_os or arch != want_arch:
        return -1
    if (want_arch, variant) in (("arm64", "v8"), ("amd64", "v1")):
        variant = None  # arm64 and arm64/v8 are one platform, amd64 and amd64/v1 too
    if want_arch == "arm" and variant is None:
        variant = "v7"  # as containerd reads an arm entry without a variant
    return 0 if wanted is None else (wanted.index(variant) if variant in wanted else -1)


def is_for(config: dict[str, Any], platform: str | None) -> bool:
    """Whether the image config ``config`` (its ``os``, ``architecture``, ``variant``) is for
    ``platform`` (None: this machine)."""
    want_os, want_arch, want_variant = parse_platform(platform)
    return rank(config, want_os, want_arch, suits(want_arch, want_variant)) >= 0


def describe(p: dict[str, Any]) -> str:
    """``OS/ARCH[/VARIANT]`` of a platform an index entry or a config gives, as it gives it."""
    return "/".join(str(x) for x in (p.get("os"), p.get("architecture"), p.get("variant")) if x)


def candidates(index: dict[str, Any], platform: str | None, where: str) -> list[Descriptor]:
    """The best entry of ``index`` for ``platform`` (None: this machine); else every entry that
    names no platform, in order, to be told apart by their configs, as containerd does."""
    want_os, want_arch, want_variant = parse_platform(platform)
    entries = [m for m in index.get("manifests", []) if isinstance(m, dict)]
    wanted = suits(want_arch, want_variant)
    best: tuple[int, Descriptor] | None = None
    for m in entries:
        platform_of = m.get("platform")
        r = rank(platform_of if isinstance(platform_of, dict) else {}, want_os, want_arch, wanted)
        if r >= 0 and (best is None or r < best[0]):
            best = (r, m)
    if best is not None:
        return [best[1]]
    unknown = [m for m in entries if not m.get("platform")]
    if unknown:
        return unknown
    found = ", ".join(describe(p) for m in entries if isinstance(p := m.get("platform"), dict))
    want = "/".join(x for x in (want_os, want_arch, want_variant) if x)
    raise ImageNotFoundError(f"{where}: no {want} image in the index (it has: {found or 'none'})")
