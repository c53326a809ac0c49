"""``docker commit --change`` instructions: parse them and apply them to an image config.

Understood, with Dockerfile syntax: ``ENV K=V …`` / ``ENV K V``, ``CMD`` and ``ENTRYPOINT``
(JSON exec form ``["a","b"]`` or shell form ``a b`` → ``["/bin/sh","-c","a b"]``), ``WORKDIR``
(relative to the current one), ``EXPOSE 80 443/udp 8000-8002``, ``LABEL k=v …``, ``USER u[:g]``,
``VOLUME ["/a"]`` / ``VOLUME /a /b`` and ``STOPSIGNAL``. As in a Dockerfile, ``ENTRYPOINT``
clears an inherited ``CMD`` unless a ``CMD`` is set by the same list of changes.
Environment variables are not substituted (``$HOME`` stays as written).
"""

from __future__ import annotations

import copy
import json
import posixpath
import re
import shlex
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from layerdiff.errors import InvalidChangeError

__all__ = ["Instruction", "apply_changes", "parse_change"]

_SUPPORTED = frozenset(
    {"ENV", "CMD", "ENTRYPOINT", "WORKDIR", "EXPOSE", "LABEL", "USER", "VOLUME", "STOPSIGNAL"}
)
# Dockerfile instructions that exist but cannot be a commit change (docker says the same).
_NOT_CHANGES = frozenset(
    {"ADD", "ARG", "COPY", "FROM", "HEALTHCHECK", "MAINTAINER", "ONBUILD", "RUN", "SHELL"}
)
_PORT_RE = re.compile(r"(?P<lo>\d{1,5})(?:-(?P<hi>\d{1,5}))?(?:/(?P<proto>tcp|udp|sctp))?")
_SIGNAL_RE = re.compile(r"(?:SIG)?[A-Z][A-Z0-9]*(?:[+-]\d+)?|\d+")
_SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One parsed change: the keyword and its normalised arguments."""

    #: Upper-case keyword, e.g. ``ENV``.
    keyword: str
    #: Arguments for list-like instructions (CMD, ENTRYPOINT, EXPOSE as ``80/tcp``, VOLUME,
    #: WORKDIR, USER and STOPSIGNAL as one word).
    words: tuple[str, ...] = ()
    #: ``(key, value)`` pairs for ENV and LABEL.
    pairs: tuple[tuple[str, str], ...] = ()


def _error(line: str, why: str) -> InvalidChangeError:
    return InvalidChangeError(f"invalid change {line!r}: {why}")


def _shell_words(line: str, rest: str) -> list[str]:
    try:
        return shlex.split(rest, posix=True)
    except ValueError as e:  # unbalanced quotes
        raise _error(line, str(e)) from e


def _pairs(line: str, keyword: str, rest: str) -> tuple[tuple[str, str], ...]:
    words = _shell_words(line, rest)
    if not words:
        raise _error(line, f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        # Legacy form `ENV KEY VALUE…`: the value is the rest of the line as written.
        parts = rest.split(None, 1)
        if len(parts) < 2:
            raise _error(line, f"{keyword} {parts[0]} needs a value (KEY=VALUE or KEY VALUE)")
        return ((words[0], parts[1].strip()),)
    pairs: list[tuple[str, str]] = []
    for word in words:
        key, eq, value = word.partition("=")
        if not eq:
            raise _error(line, f"can't find = in {word!r}; must be of the form name=value")
        if not key:
            raise _error(line, f"{keyword} names can not be blank")
        pairs.append((key, value))
    return tuple(pairs)


def _command(line: str, keyword: str, rest: str) -> tuple[str, ...]:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError:
            value = None  # not JSON: docker falls back to the shell form
        if isinstance(value, list) and all(isinstance(v, str) for v in value):
            return tuple(value)
    if not rest:
        raise _error(line, f"{keyword} requires at least one argument")
    return (*_SHELL, rest)


def _ports(line: str, rest: str) -> tuple[str, ...]:
    words = rest.split()
    if not words:
        raise _error(line, "EXPOSE requires at least one port")
    ports: list[str] = []
    for word in words:
        m = _PORT_RE.fullmatch(word.lower())
        if not m:
            raise _error(line, f"{word!r} is not a port (PORT[-PORT][/tcp|udp|sctp])")
        lo, hi = int(m["lo"]), int(m["hi"] or m["lo"])
        if not 0 < lo <= hi <= 65535:
            raise _error(line, f"{word!r}: ports are 1-65535 and ranges go upwards")
        ports.extend(f"{p}/{m['proto'] or 'tcp'}" for p in range(lo, hi + 1))
    return tuple(ports)


def _volumes(line: str, rest: str) -> tuple[str, ...]:
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except ValueError as e:
            raise _error(line, f"not a JSON array: {e}") from e
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise _error(line, "VOLUME takes a JSON array of strings")
        words = value
    else:
        words = rest.split()
    if not words or not all(words):
        raise _error(line, "VOLUME requires at least one non-empty path")
    return tuple(words)


def parse_change(line: str) -> Instruction:
    """Parse one ``--change`` instruction; raise InvalidChangeError naming the line if malformed."""
    stripped = line.strip()
    parts = stripped.split(None, 1)
    keyword = parts[0].upper() if parts else ""
    rest = parts[1].strip() if len(parts) > 1 else ""
    if keyword in _NOT_CHANGES:
        raise _error(line, f"{keyword} is not a valid change command")
    if keyword not in _SUPPORTED:
        shown = keyword or "(empty)"
        raise _error(line, f"unknown instruction: {shown}")
    if keyword in ("ENV", "LABEL"):
        return Instruction(keyword=keyword, pairs=_pairs(line, keyword, rest))
    if keyword in ("CMD", "ENTRYPOINT"):
        return Instruction(keyword=keyword, words=_command(line, keyword, rest))
    if keyword == "EXPOSE":
        return Instruction(keyword=keyword, words=_ports(line, rest))
    if keyword == "VOLUME":
        return Instruction(keyword=keyword, words=_volumes(line, rest))
    if not rest or len(rest.split()) != 1:
        raise _error(line, f"{keyword} takes exactly one argument")
    if keyword == "STOPSIGNAL" and not _SIGNAL_RE.fullmatch(rest):
        raise _error(line, f"{rest!r} is not a signal (e.g. SIGTERM, TERM or 15)")
    return Instruction(keyword=keyword, words=(rest,))


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    prefix = key + "="
    out = [e for e in env if not e.startswith(prefix)]
    index = next((i for i, e in enumerate(env) if e.startswith(prefix)), len(out))
    out.insert(index, prefix + value)
    return out


def apply_changes(config: dict[str, Any], changes: Iterable[str | Instruction]) -> dict[str, Any]:
    """Return a copy of the image config's ``config`` section with ``changes`` applied.

    Every change is parsed before any is applied, so a bad one changes nothing.
    """
    instructions = [c if isinstance(c, Instruction) else parse_change(c) for c in changes]
    out = copy.deepcopy(config)
    cmd_set = False
    for ins in instructions:
        k = ins.keyword
        if k == "ENV":
            env = list(out.get("Env") or [])
            for key, value in ins.pairs:
                env = _set_env(env, key, value)
            out["Env"] = env
        elif k == "LABEL":
            out["Labels"] = {**(out.get("Labels") or {}), **dict(ins.pairs)}
        elif k == "CMD":
            out["Cmd"] = list(ins.words)
            cmd_set = True
        elif k == "ENTRYPOINT":
            out["Entrypoint"] = list(ins.words)
            if not cmd_set:
                out.pop("Cmd", None)
        elif k == "WORKDIR":
            base = out.get("WorkingDir") or "/"
            joined = posixpath.normpath(posixpath.join("/", base, ins.words[0]))
            out["WorkingDir"] = "/" + joined.lstrip("/")  # normpath keeps a leading "//"
        elif k == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            ports.update({p: {} for p in ins.words})
            out["ExposedPorts"] = ports
        elif k == "VOLUME":
            volumes = dict(out.get("Volumes") or {})
            volumes.update({v: {} for v in ins.words})
            out["Volumes"] = volumes
        elif k == "USER":
            out["User"] = ins.words[0]
        elif k == "STOPSIGNAL":
            out["StopSignal"] = ins.words[0]
    return out
