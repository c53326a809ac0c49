"""``docker commit --change`` instructions: parse them and apply them to an image config.

Understood, with Dockerfile syntax: ``ENV K=V …`` / ``ENV K V``, ``CMD`` and ``ENTRYPOINT``
(JSON exec form ``["a","b"]`` or shell form ``a b`` → ``["/bin/sh","-c","a b"]``), ``WORKDIR``
(relative to the current one), ``EXPOSE 80 443/udp 8000-8002``, ``LABEL k=v …``, ``USER u[:g]``,
``VOLUME ["/a"]`` / ``VOLUME /a /b``, ``STOPSIGNAL``, ``HEALTHCHECK [--interval=D …] CMD …``
/ ``HEALTHCHECK NONE`` and ``ONBUILD INSTRUCTION``. As in a Dockerfile, ``ENTRYPOINT`` clears an
inherited ``CMD`` unless a ``CMD`` is set by the same list of changes. ``Healthcheck`` and
``OnBuild`` are kept where docker keeps them (the config's ``config``), which the OCI format
does not define: docker reads them, tools that do not know them pass them by.

As ``docker commit`` does, the arguments of every instruction but ``CMD`` and ``ENTRYPOINT`` go
through a Dockerfile's word processing: quotes are removed (``'…'`` literally, ``"…"`` with
``\\"``, ``\\\\`` and ``\\$`` escapes), a backslash outside quotes escapes the next
character, and ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR:+alternative}`` and
``${VAR:?message}`` (each also without the colon) are replaced from the environment the image
has before the instruction, so ``ENV PATH=/opt/bin:$PATH`` extends the inherited ``PATH``.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import posixpath
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from layerdiff.errors import InvalidChangeError

__all__ = ["Instruction", "apply_changes", "parse_change", "split_changes"]

_SUPPORTED = frozenset(
    {
        "ENV", "CMD", "ENTRYPOINT", "WORKDIR", "EXPOSE", "LABEL", "USER", "VOLUME", "STOPSIGNAL",
        "HEALTHCHECK", "ONBUILD",
    }
)  # fmt: skip
# Dockerfile instructions that exist but cannot be a commit change (docker says the same).
_NOT_CHANGES = frozenset({"ADD", "ARG", "COPY", "FROM", "MAINTAINER", "RUN", "SHELL"})
# HEALTHCHECK's options and the config keys they set (Go durations, in nanoseconds).
_HEALTH_DURATIONS = {
    "interval": "Interval",
    "timeout": "Timeout",
    "start-period": "StartPeriod",
    "start-interval": "StartInterval",
}
_GO_DURATION_RE = re.compile(r"(?P<n>\d+(?:\.\d*)?|\.\d+)(?P<unit>ns|us|µs|μs|ms|s|m|h)")
_GO_UNITS = {"ns": 1, "us": 1_000, "µs": 1_000, "μs": 1_000, "ms": 1_000_000, "s": 10**9}
_GO_UNITS.update({"m": 60 * 10**9, "h": 3600 * 10**9})
_GO_DURATION_MAX = 2**63 - 1  # a Go time.Duration is an int64 of nanoseconds
_PORT_RE = re.compile(r"(?P<lo>\d{1,5})(?:-(?P<hi>\d{1,5}))?(?:/(?P<proto>tcp|udp|sctp))?")
# Linux signal names (without SIG), as docker's STOPSIGNAL check knows them.
# fmt: off
_SIGNALS = frozenset({
    "ABRT", "ALRM", "BUS", "CHLD", "CLD", "CONT", "FPE", "HUP", "ILL", "INT", "IO", "IOT",
    "KILL", "PIPE", "POLL", "PROF", "PWR", "QUIT", "SEGV", "STKFLT", "STOP", "SYS", "TERM",
    "TRAP", "TSTP", "TTIN", "TTOU", "UNUSED", "URG", "USR1", "USR2", "VTALRM", "WINCH", "XCPU",
    "XFSZ",
})
# fmt: on
_REALTIME_RE = re.compile(r"RTMIN(?:\+(?P<up>\d+))?|RTMAX(?:-(?P<down>\d+))?")
_NAME_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_SHELL = ("/bin/sh", "-c")


@dataclass(frozen=True, kw_only=True)
class Instruction:
    """One parsed change: the keyword and its arguments.

    The words of ``CMD`` and ``ENTRYPOINT`` are final. Those of every other instruction are as
    written, checked for syntax; :func:`apply_changes` processes them (quotes, ``$VAR``) against
    the image's environment.
    """

    #: Upper-case keyword, e.g. ``ENV``.
    keyword: str
    #: Arguments for list-like instructions (CMD, ENTRYPOINT, EXPOSE, VOLUME; WORKDIR, USER and
    #: STOPSIGNAL as one word).
    words: tuple[str, ...] = ()
    #: ``(key, value)`` pairs for ENV and LABEL.
    pairs: tuple[tuple[str, str], ...] = ()
    #: The change as given, for messages.
    line: str = ""
    #: HEALTHCHECK: the ``Healthcheck`` object; ONBUILD: ``{"trigger": text}``.
    extra: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    #: CMD, ENTRYPOINT and HEALTHCHECK CMD in shell form: the command line, run by the image's
    #: ``Shell`` (``/bin/sh -c`` when it has none), as docker runs it; ``None``: JSON form.
    shell: str | None = None


def _error(line: str, why: str) -> InvalidChangeError:
    return InvalidChangeError(f"invalid change {line!r}: {why}")


def _split_words(line: str, rest: str) -> list[str]:
    """``rest`` split at whitespace outside quotes; quotes and escapes stay in the words."""
    words: list[str] = []
    word: list[str] = []
    quote = ""
    i = 0
    while i < len(rest):
        c = rest[i]
        if c == "\\" and quote != "'" and i + 1 < len(rest):
            word += rest[i : i + 2]
            i += 2
            continue
        if quote:
            quote = "" if c == quote else quote
        elif c in "'\"":
            quote = c
        elif c.isspace():
            if word:
                words.append("".join(word))
                word = []
            i += 1
            continue
        word.append(c)
        i += 1
    if quote:
        raise _error(line, f"unterminated {quote} quote")
    if word:
        words.append("".join(word))
    return words


class _Words:
    """A Dockerfile's processing of one word: quotes, escapes and ``$VAR`` substitution."""

    def __init__(self, line: str, env: Mapping[str, str], *, strict: bool = True) -> None:
        self.line = line
        self.env = env
        self.strict = strict  # False: only check the syntax (``${VAR:?}`` cannot fail yet)
        self.text = ""
        self.i = 0

    def __call__(self, text: str) -> str:
        self.text, self.i = text, 0
        return self._until("")

    def _until(self, stop: str) -> str:
        t, out = self.text, list[str]()
        while self.i < len(t):
            c = t[self.i]
            if stop and c == stop:
                self.i += 1
                return "".join(out)
            if c == "'":
                end = t.find("'", self.i + 1)
                if end < 0:
                    raise _error(self.line, "unterminated ' quote")
                out.append(t[self.i + 1 : end])
                self.i = end + 1
            elif c == '"':
                out.append(self._double_quoted())
            elif c == "\\":
                out.append(t[self.i + 1 : self.i + 2])  # a trailing backslash is dropped
                self.i += 2
            elif c == "$":
                out.append(self._dollar())
            else:
                out.append(c)
                self.i += 1
        if stop:
            raise _error(self.line, f"missing {stop!r} in {t!r}")
        return "".join(out)

    def _double_quoted(self) -> str:
        t, out = self.text, list[str]()
        self.i += 1
        while self.i < len(t):
            c = t[self.i]
            if c == '"':
                self.i += 1
                return "".join(out)
            if c == "\\" and t[self.i + 1 : self.i + 2] in ('"', "$", "\\"):
                out.append(t[self.i + 1])
                self.i += 2
            elif c == "$":
                out.append(self._dollar())
            else:
                out.append(c)
                self.i += 1
        raise _error(self.line, 'unterminated " quote')

    def _dollar(self) -> str:
        t = self.text
        self.i += 1
        if t[self.i : self.i + 1] != "{":
            m = _NAME_RE.match(t, self.i)
            if not m:
                return "$"
            self.i = m.end()
            return self.env.get(m[0], "")
        m = _NAME_RE.match(t, self.i + 1)
        if not m:
            raise _error(self.line, f"bad substitution in {t!r}")
        name, self.i = m[0], m.end()
        if self.i == len(t):
            raise _error(self.line, f"missing '}}' in {t!r}")
        if t[self.i : self.i + 1] == "}":
            self.i += 1
            return self.env.get(name, "")
        colon = t[self.i : self.i + 1] == ":"
        self.i += colon
        op = t[self.i : self.i + 1]
        if op not in ("-", "+", "?") or not op:
            raise _error(self.line, f"bad substitution in {t!r}")
        self.i += 1
        word = self._until("}")
        value = self.env.get(name)
        present = value is not None and (value != "" or not colon)
        if op == "-":
            return value if present and value is not None else word
        if op == "+":
            return word if present else ""
        if not present and self.strict:
            raise _error(self.line, f"{name}: {word or 'is not set'}")
        return value or ""


def _ports(line: str, words: Iterable[str]) -> tuple[str, ...]:
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


def _check_signal(line: str, text: str) -> None:
    """Docker's STOPSIGNAL check: a signal number, or a Linux signal name with or without SIG."""
    if text.isascii() and text.isdigit():
        if 1 <= int(text) <= 64:
            return
    else:
        name = text.upper().removeprefix("SIG")
        m = _REALTIME_RE.fullmatch(name)
        if name in _SIGNALS or (m and int(m["up"] or 0) <= 15 and int(m["down"] or 0) <= 14):
            return
    raise _error(line, f"{text!r} is not a signal (e.g. SIGTERM, TERM or 15)")


def _pairs(line: str, keyword: str, rest: str) -> tuple[tuple[str, str], ...]:
    words = _split_words(line, rest)
    if not words:
        raise _error(line, f"{keyword} requires at least one argument")
    if "=" not in words[0]:
        # Legacy form `ENV KEY VALUE…`: the value is the rest of the line, one word.
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


def _command(line: str, keyword: str, rest: str) -> tuple[tuple[str, ...], str | None]:
    """The words of a JSON-form command, or the line of a shell-form one: (words, None) or
    ((), line)."""
    if rest.startswith("["):
        try:
            value = json.loads(rest)
        except (ValueError, RecursionError):
            value = None  # not JSON: docker falls back to the shell form
        if isinstance(value, list):
            if not all(isinstance(v, str) for v in value):
                raise _error(line, f"{keyword}: a JSON array must hold strings only")
            return tuple(value), None
    if not rest:
        raise _error(line, f"{keyword} requires at least one argument")
    return (), rest


def _shell_of(config: Mapping[str, Any]) -> list[str]:
    """The shell that runs shell-form commands: the config's ``Shell``, else /bin/sh -c."""
    shell = config.get("Shell")
    if isinstance(shell, list) and shell and all(isinstance(w, str) for w in shell):
        return list(shell)
    return list(_SHELL)


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
        words = _split_words(line, rest)
    if not words or not all(words):
        raise _error(line, "VOLUME requires at least one non-empty path")
    return tuple(words)


def _go_duration(line: str, option: str, text: str) -> int:
    """Nanoseconds of a Go duration (``1h30m``, ``1.5s``, ``300ms``, ``0``), computed as Go's
    ``time.ParseDuration`` does (the whole part exactly, the fraction in floating point), at
    least 1 ms unless 0 (docker's rule for HEALTHCHECK's options)."""
    body = text.lstrip("+")
    bad = _error(line, f"--{option}={text}: not a duration (e.g. 30s, 1m30s, 500ms)")
    if body == "0":
        return 0
    total, pos = 0, 0
    while pos < len(body):
        m = _GO_DURATION_RE.match(body, pos)
        if m is None:
            raise bad
        whole, _, fraction = m["n"].partition(".")
        unit = _GO_UNITS[m["unit"]]
        value = int(whole or "0") * unit
        if fraction:
            value += int(float(int(fraction)) * (float(unit) / 10 ** len(fraction)))
        total += value
        if total > _GO_DURATION_MAX:
            raise _error(line, f"--{option}={text}: too long a duration")
        pos = m.end()
    if not body:
        raise bad
    if 0 < total < 1_000_000:
        raise _error(line, f"--{option}={text}: cannot be less than 1ms")
    return total


def _healthcheck(line: str, rest: str) -> dict[str, Any]:
    """The ``Healthcheck`` object of ``HEALTHCHECK [--option=value …] CMD …`` or ``NONE``."""
    if not rest:
        raise _error(line, "HEALTHCHECK requires at least one argument")
    options: dict[str, str] = {}
    while rest.startswith("--"):
        flag, rest = [*rest.split(None, 1), ""][:2]
        name, eq, value = flag[2:].partition("=")
        if name not in _HEALTH_DURATIONS and name != "retries":
            raise _error(line, f"unknown flag: --{name}")
        if not eq:
            raise _error(line, f"--{name} needs a value (--{name}=VALUE)")
        options[name] = value
    kind, args = [*rest.split(None, 1), ""][:2]
    kind, args = kind.upper(), args.strip()
    if kind == "NONE":
        if args or options:
            raise _error(line, "HEALTHCHECK NONE takes no arguments")
        return {"Test": ["NONE"]}
    if kind != "CMD":
        raise _error(line, f"unknown type {kind or '(none)'!r} in HEALTHCHECK (try CMD)")
    words, shell = _command(line, "HEALTHCHECK CMD", args)
    if shell is None and not words:
        raise _error(line, "Missing command after HEALTHCHECK CMD")
    out: dict[str, Any] = {
        "Test": ["CMD-SHELL", shell] if shell is not None else ["CMD", *words],
    }
    for name, key in _HEALTH_DURATIONS.items():
        if name in options and (ns := _go_duration(line, name, options[name])):
            out[key] = ns
    if "retries" in options:
        text = options["retries"]
        if not re.fullmatch(r"[+-]?\d+", text) or abs(int(text)) >= 2**31:
            raise _error(line, f"--retries={text}: not a number")
        if int(text) < 0:
            raise _error(line, f"--retries cannot be negative ({text})")
        if int(text):
            out["Retries"] = int(text)
    return out


def _onbuild(line: str, rest: str) -> str:
    """The trigger of ``ONBUILD INSTRUCTION …``, as written."""
    trigger = rest.split(None, 1)[0].upper() if rest else ""
    if not trigger:
        raise _error(line, "ONBUILD requires at least one argument")
    if trigger == "ONBUILD":
        raise _error(line, "chaining ONBUILD via `ONBUILD ONBUILD` isn't allowed")
    if trigger in ("FROM", "MAINTAINER"):
        raise _error(line, f"{trigger} isn't allowed as an ONBUILD trigger")
    return rest


def split_changes(changes: Iterable[str]) -> list[str]:
    """The instructions of ``changes`` read as ``docker commit`` reads them: joined by newlines
    into one Dockerfile, whose lines a trailing backslash continues and where blank lines and
    ``#`` comments are passed over. (One change per ``--change`` is the usual case.)"""
    out: list[str] = []
    pending = ""  # an instruction continued so far
    for raw in "\n".join(changes).split("\n"):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue  # also inside a continued instruction, as docker's parser skips them
        body = raw.rstrip()
        if body.endswith("\\"):
            pending += body[:-1]
            continue
        out.append(pending + raw)
        pending = ""
    if pending.strip():
        out.append(pending)
    return out


def parse_change(line: str) -> Instruction:
    """Parse one ``--change`` instruction; raise InvalidChangeError naming the line if malformed.

    What does not depend on the image's environment is checked here, so that a bad change is
    reported before anything is written.
    """
    stripped = line.strip()
    parts = stripped.split(None, 1)
    keyword = parts[0].upper() if parts else ""
    rest = parts[1].strip() if len(parts) > 1 else ""
    if keyword in _NOT_CHANGES:
        raise _error(line, f"{keyword} is not a valid change command")
    if keyword not in _SUPPORTED:
        shown = keyword or "(empty)"
        raise _error(line, f"unknown instruction: {shown}")
    if keyword in ("CMD", "ENTRYPOINT"):
        words, shell = _command(line, keyword, rest)
        return Instruction(keyword=keyword, words=words, shell=shell, line=line)
    if keyword == "HEALTHCHECK":
        return Instruction(keyword=keyword, extra=_healthcheck(line, rest), line=line)
    if keyword == "ONBUILD":
        return Instruction(keyword=keyword, extra={"trigger": _onbuild(line, rest)}, line=line)
    if keyword in ("ENV", "LABEL"):
        ins = Instruction(keyword=keyword, pairs=_pairs(line, keyword, rest))
    elif keyword == "EXPOSE":
        ins = Instruction(keyword=keyword, words=tuple(_split_words(line, rest)))
        if not ins.words:
            raise _error(line, "EXPOSE requires at least one port")
    elif keyword == "VOLUME":
        ins = Instruction(keyword=keyword, words=_volumes(line, rest))
    else:
        # WORKDIR, USER, STOPSIGNAL: the rest of the line is the one argument, spaces and all
        # (docker's parser takes it whole; quotes are then the word's own).
        if not rest:
            raise _error(line, f"{keyword} requires exactly one argument")
        _split_words(line, rest)  # quotes closed
        ins = Instruction(keyword=keyword, words=(rest,))
    # The syntax of every word, and the values that hold no variable.
    check = _Words(line, {}, strict=False)
    for text in [*ins.words, *(t for pair in ins.pairs for t in pair)]:
        check(text)
    fixed = [check(w) for w in ins.words if "$" not in w]
    if keyword == "EXPOSE":
        _ports(line, fixed)
    elif keyword == "STOPSIGNAL" and fixed:
        _check_signal(line, fixed[0])
    return dataclasses.replace(ins, line=line)


def _env_map(env: Iterable[str]) -> dict[str, str]:
    """An image config's ``Env`` list (``KEY=VALUE``) as a mapping."""
    return dict((e.partition("=")[0], e.partition("=")[2]) for e in env)


def _set_env(env: list[str], key: str, value: str) -> list[str]:
    prefix = key + "="
    out = [e for e in env if not e.startswith(prefix)]
    index = next((i for i, e in enumerate(env) if e.startswith(prefix)), len(out))
    out.insert(index, prefix + value)
    return out


def _final(ins: Instruction, config: Mapping[str, Any]) -> list[str]:
    """The command of a CMD or ENTRYPOINT: its words, or its line after the image's shell."""
    return list(ins.words) if ins.shell is None else [*_shell_of(config), ins.shell]


def apply_changes(config: dict[str, Any], changes: Iterable[str | Instruction]) -> dict[str, Any]:
    """Return a copy of the image config's ``config`` section with ``changes`` applied.

    Every change is parsed before any is applied, so a bad one changes nothing. Variables in
    an instruction's arguments take the values of ``Env`` as the changes before it left it.
    """
    instructions = [c if isinstance(c, Instruction) else parse_change(c) for c in changes]
    out = copy.deepcopy(config)
    cmd_set = False
    for ins in instructions:
        k = ins.keyword
        line = ins.line or k
        word = _Words(line, _env_map(out.get("Env") or []))
        if k == "ENV":
            env = list(out.get("Env") or [])
            for key, value in [(word(a), word(b)) for a, b in ins.pairs]:
                env = _set_env(env, key, value)
            out["Env"] = env
        elif k == "LABEL":
            labels = {word(a): word(b) for a, b in ins.pairs}
            out["Labels"] = {**(out.get("Labels") or {}), **labels}
        elif k == "CMD":
            out["Cmd"] = _final(ins, out)
            cmd_set = True
        elif k == "ENTRYPOINT":
            out["Entrypoint"] = _final(ins, out)
            if not cmd_set:
                out.pop("Cmd", None)
        elif k == "WORKDIR":
            base = out.get("WorkingDir") or "/"
            path = word(ins.words[0])
            if not path:
                raise _error(line, "WORKDIR: cannot normalize nothing (an empty path)")
            joined = posixpath.normpath(posixpath.join("/", base, path))
            out["WorkingDir"] = "/" + joined.lstrip("/")  # normpath keeps a leading "//"
        elif k == "EXPOSE":
            ports = dict(out.get("ExposedPorts") or {})
            # As docker expands EXPOSE: a variable's value gives as many ports as words.
            expanded = [p for w in ins.words for p in word(w).split()]
            if not expanded:
                raise _error(line, "EXPOSE requires at least one port")
            ports.update({p: {} for p in _ports(line, expanded)})
            out["ExposedPorts"] = ports
        elif k == "VOLUME":
            volumes = dict(out.get("Volumes") or {})
            paths = [word(v) for v in ins.words]
            if not all(paths):
                raise _error(line, "VOLUME requires at least one non-empty path")
            volumes.update({v: {} for v in paths})
            out["Volumes"] = volumes
        elif k == "USER":
            out["User"] = word(ins.words[0])
        elif k == "STOPSIGNAL":
            signal = word(ins.words[0])
            _check_signal(line, signal)
            out["StopSignal"] = signal
        elif k == "HEALTHCHECK":
            out["Healthcheck"] = copy.deepcopy(dict(ins.extra))
        elif k == "ONBUILD":
            out["OnBuild"] = [*(out.get("OnBuild") or []), ins.extra["trigger"]]
    return out
