"""``--change`` instructions: table-driven, one row per form docker commit accepts."""

from __future__ import annotations

from typing import Any

import pytest

from layerdiff.errors import FormatError, InvalidChangeError
from layerdiff.instructions import apply_changes, parse_change, split_changes

BASE: dict[str, Any] = {
    "Env": ["PATH=/usr/bin", "HOME=/root"],
    "Cmd": ["/bin/sh"],
    "WorkingDir": "/srv",
    "Labels": {"a": "1"},
}

CASES: list[tuple[list[str], dict[str, Any]]] = [
    # ENV: both forms; replacing keeps the variable's place.
    (["ENV A=1"], {"Env": ["PATH=/usr/bin", "HOME=/root", "A=1"]}),
    (['ENV A=1 B="two words"'], {"Env": ["PATH=/usr/bin", "HOME=/root", "A=1", "B=two words"]}),
    (["ENV HOME=/home/u"], {"Env": ["PATH=/usr/bin", "HOME=/home/u"]}),
    (
        ["ENV GREETING hello  world"],
        {"Env": ["PATH=/usr/bin", "HOME=/root", "GREETING=hello  world"]},
    ),
    (["env lower=case"], {"Env": ["PATH=/usr/bin", "HOME=/root", "lower=case"]}),
    (["ENV E="], {"Env": ["PATH=/usr/bin", "HOME=/root", "E="]}),
    # CMD / ENTRYPOINT: exec form and shell form.
    (['CMD ["nginx", "-g", "daemon off;"]'], {"Cmd": ["nginx", "-g", "daemon off;"]}),
    (["CMD echo hi there"], {"Cmd": ["/bin/sh", "-c", "echo hi there"]}),
    (["CMD []"], {"Cmd": []}),
    (["CMD [not json"], {"Cmd": ["/bin/sh", "-c", "[not json"]}),
    # ENTRYPOINT clears an inherited CMD, but not one set by the same changes.
    (['ENTRYPOINT ["/init"]'], {"Entrypoint": ["/init"], "Cmd": None}),
    (['CMD ["x"]', 'ENTRYPOINT ["/init"]'], {"Entrypoint": ["/init"], "Cmd": ["x"]}),
    (["ENTRYPOINT exec app"], {"Entrypoint": ["/bin/sh", "-c", "exec app"], "Cmd": None}),
    # WORKDIR: absolute, relative to the current one, normalised.
    (["WORKDIR /app"], {"WorkingDir": "/app"}),
    (["WORKDIR sub"], {"WorkingDir": "/srv/sub"}),
    (["WORKDIR ../x/./y/"], {"WorkingDir": "/x/y"}),
    (["WORKDIR a", "WORKDIR b"], {"WorkingDir": "/srv/a/b"}),
    (["WORKDIR //double"], {"WorkingDir": "/double"}),
    # EXPOSE: default tcp, protocols, ranges.
    (["EXPOSE 80 443/udp"], {"ExposedPorts": {"80/tcp": {}, "443/udp": {}}}),
    (["EXPOSE 8000-8002/tcp"], {"ExposedPorts": {"8000/tcp": {}, "8001/tcp": {}, "8002/tcp": {}}}),
    (["EXPOSE 53/UDP", "EXPOSE 53/sctp"], {"ExposedPorts": {"53/udp": {}, "53/sctp": {}}}),
    # LABEL: merged into the existing labels.
    (['LABEL k=v k2="v 2"'], {"Labels": {"a": "1", "k": "v", "k2": "v 2"}}),
    (["LABEL a=2"], {"Labels": {"a": "2"}}),
    (["LABEL maintainer Jane Doe"], {"Labels": {"a": "1", "maintainer": "Jane Doe"}}),
    # USER, VOLUME, STOPSIGNAL.
    (["USER app"], {"User": "app"}),
    (["USER 1000:1000"], {"User": "1000:1000"}),
    (['VOLUME ["/data", "/logs"]'], {"Volumes": {"/data": {}, "/logs": {}}}),
    (["VOLUME /a /b"], {"Volumes": {"/a": {}, "/b": {}}}),
    (["STOPSIGNAL SIGTERM"], {"StopSignal": "SIGTERM"}),
    (["STOPSIGNAL 9"], {"StopSignal": "9"}),
    (["STOPSIGNAL SIGRTMIN+3"], {"StopSignal": "SIGRTMIN+3"}),
    (["  USER   spaced  "], {"User": "spaced"}),
    # Word processing, as docker commit does it: variables from the image's Env as it stands
    # before the instruction, quotes removed, backslash escapes.
    (["ENV PATH=/opt/bin:$PATH"], {"Env": ["PATH=/opt/bin:/usr/bin", "HOME=/root"]}),
    (["ENV P=${HOME}/x Q=$HOME"], {"Env": ["PATH=/usr/bin", "HOME=/root", "P=/root/x", "Q=/root"]}),
    (["ENV HOME=/h H2=$HOME"], {"Env": ["PATH=/usr/bin", "HOME=/h", "H2=/root"]}),
    (["ENV A=1", "ENV B=$A"], {"Env": ["PATH=/usr/bin", "HOME=/root", "A=1", "B=1"]}),
    (['ENV C "a b"'], {"Env": ["PATH=/usr/bin", "HOME=/root", "C=a b"]}),
    (["ENV C a\\ b"], {"Env": ["PATH=/usr/bin", "HOME=/root", "C=a b"]}),
    (["ENV C='$HOME' D=\\$HOME"], {"Env": ["PATH=/usr/bin", "HOME=/root", "C=$HOME", "D=$HOME"]}),
    (['ENV C="q\\"$HOME\\\\x"'], {"Env": ["PATH=/usr/bin", "HOME=/root", 'C=q"/root\\x']}),
    (['ENV C="a\\nb"'], {"Env": ["PATH=/usr/bin", "HOME=/root", "C=a\\nb"]}),
    (
        ["ENV U=${NOPE:-def} V=${HOME:+set} W=${NOPE:+set}$NOPE"],
        {"Env": ["PATH=/usr/bin", "HOME=/root", "U=def", "V=set", "W="]},
    ),
    (
        ["ENV E=", "ENV X=${E-unset} Y=${E:-empty}"],
        {"Env": ["PATH=/usr/bin", "HOME=/root", "E=", "X=", "Y=empty"]},
    ),
    (["ENV A=${NOPE:-${HOME}/d}"], {"Env": ["PATH=/usr/bin", "HOME=/root", "A=/root/d"]}),
    (["ENV A=$ B=a$-b"], {"Env": ["PATH=/usr/bin", "HOME=/root", "A=$", "B=a$-b"]}),
    (['LABEL "k 1"="$HOME dir"'], {"Labels": {"a": "1", "k 1": "/root dir"}}),
    (["WORKDIR $HOME/app"], {"WorkingDir": "/root/app"}),
    (
        ["ENV PORT=8080", "EXPOSE $PORT/udp"],
        {"Env": ["PATH=/usr/bin", "HOME=/root", "PORT=8080"], "ExposedPorts": {"8080/udp": {}}},
    ),
    # As docker expands EXPOSE: the words of a variable's value are as many ports.
    (
        ['ENV P="80 443/udp"', "EXPOSE $P 8080"],
        {
            "Env": ["PATH=/usr/bin", "HOME=/root", "P=80 443/udp"],
            "ExposedPorts": {"80/tcp": {}, "443/udp": {}, "8080/tcp": {}},
        },
    ),
    (["VOLUME $HOME/data"], {"Volumes": {"/root/data": {}}}),
    (
        ["ENV U=app", "USER ${U}:1"],
        {"Env": ["PATH=/usr/bin", "HOME=/root", "U=app"], "User": "app:1"},
    ),
    (["STOPSIGNAL term"], {"StopSignal": "term"}),
    (["STOPSIGNAL RTMAX-2"], {"StopSignal": "RTMAX-2"}),
    # CMD and ENTRYPOINT keep their words as written.
    (["CMD echo $HOME"], {"Cmd": ["/bin/sh", "-c", "echo $HOME"]}),
    # HEALTHCHECK and ONBUILD go where docker commit puts them; durations in nanoseconds.
    (["HEALTHCHECK NONE"], {"Healthcheck": {"Test": ["NONE"]}}),
    (
        ["HEALTHCHECK --interval=5s --timeout=1m30s --retries=3 CMD curl -f http://x/ || exit 1"],
        {
            "Healthcheck": {
                "Test": ["CMD-SHELL", "curl -f http://x/ || exit 1"],
                "Interval": 5_000_000_000,
                "Timeout": 90_000_000_000,
                "Retries": 3,
            }
        },
    ),
    (
        ['HEALTHCHECK --start-period=0 --start-interval=1.5s CMD ["/bin/check", "-q"]'],
        {"Healthcheck": {"Test": ["CMD", "/bin/check", "-q"], "StartInterval": 1_500_000_000}},
    ),
    (["ONBUILD RUN make", "onbuild COPY . /src"], {"OnBuild": ["RUN make", "COPY . /src"]}),
    # WORKDIR, USER and STOPSIGNAL take the rest of the line whole, as docker's parser does.
    (["WORKDIR /home/my app"], {"WorkingDir": "/home/my app"}),
    (['WORKDIR "/srv/a b"'], {"WorkingDir": "/srv/a b"}),
    (["USER a b"], {"User": "a b"}),
    # A shell-form health check is CMD-SHELL, whatever its first character.
    (
        ["HEALTHCHECK CMD [ -f /tmp/healthy ] || exit 1"],
        {"Healthcheck": {"Test": ["CMD-SHELL", "[ -f /tmp/healthy ] || exit 1"]}},
    ),
    # A tab is a separator as a space is.
    (
        ["HEALTHCHECK --interval=5s\tCMD\ttrue"],
        {"Healthcheck": {"Test": ["CMD-SHELL", "true"], "Interval": 5_000_000_000}},
    ),
]


def test_the_shell_form_runs_in_the_images_shell() -> None:
    """As docker: CMD, ENTRYPOINT in shell form run by the config's Shell (SHELL in a
    Dockerfile), /bin/sh -c only when it has none."""
    bash = ["/bin/bash", "-o", "pipefail", "-c"]
    out = apply_changes({"Shell": bash}, ["CMD curl x | grep y", "ENTRYPOINT exec app"])
    assert out["Cmd"] == [*bash, "curl x | grep y"]
    assert out["Entrypoint"] == [*bash, "exec app"]


@pytest.mark.parametrize(
    ("text", "ns"),
    [
        # Go's time.ParseDuration: the whole part exactly, the fraction in floating point.
        ("4.1s", 4_100_000_000),
        ("2.01s", 2_010_000_000),
        ("8.29s", 8_290_000_000),
        ("16.999s", 16_999_000_000),
        ("2.01ms", 2_010_000),
        ("1h30m", 5_400_000_000_000),
        (".5s", 500_000_000),
        ("1.s", 1_000_000_000),
    ],
)
def test_health_check_durations_are_gos(text: str, ns: int) -> None:
    out = apply_changes({}, [f"HEALTHCHECK --interval={text} CMD true"])
    assert out["Healthcheck"]["Interval"] == ns


def test_workdir_of_nothing_is_refused() -> None:
    with pytest.raises(InvalidChangeError, match="cannot normalize nothing"):
        apply_changes({}, ["WORKDIR $UNSET"])


@pytest.mark.parametrize(("changes", "expected"), CASES)
def test_apply(changes: list[str], expected: dict[str, Any]) -> None:
    out = apply_changes(BASE, changes)
    want = {**BASE, **expected}
    want = {k: v for k, v in want.items() if v is not None}
    assert out == want


def test_apply_does_not_touch_input() -> None:
    before = repr(BASE)
    apply_changes(BASE, ["ENV X=1", "LABEL b=2", "EXPOSE 1"])
    assert repr(BASE) == before


def test_apply_on_empty_config() -> None:
    out = apply_changes({}, ["ENV A=1", "WORKDIR rel", "EXPOSE 22"])
    assert out == {"Env": ["A=1"], "WorkingDir": "/rel", "ExposedPorts": {"22/tcp": {}}}


BAD = [
    ("RUN make", "RUN is not a valid change command"),
    ("FROM debian", "FROM is not a valid change command"),
    ("FROBNICATE x", "unknown instruction: FROBNICATE"),
    ("", "unknown instruction"),
    ("ENV", "ENV requires at least one argument"),
    ("ENV A", "needs a value"),
    ("ENV A=1 B", "can't find = in 'B'"),
    ("ENV =x", "names can not be blank"),
    ("ENV A='unbalanced", "unterminated ' quote"),
    ('ENV A="unbalanced', 'unterminated " quote'),
    ("ENV A=${HOME", "missing '}'"),
    ("ENV A=${}", "bad substitution"),
    ("ENV A=${HOME/x/y}", "bad substitution"),
    ("STOPSIGNAL FOO", "is not a signal"),
    ("STOPSIGNAL 0", "is not a signal"),
    ("STOPSIGNAL 65", "is not a signal"),
    ("STOPSIGNAL SIGRTMIN+16", "is not a signal"),
    ("LABEL", "LABEL requires at least one argument"),
    ("CMD", "CMD requires at least one argument"),
    ("EXPOSE", "EXPOSE requires at least one port"),
    ("EXPOSE http", "is not a port"),
    ("EXPOSE 80/icmp", "is not a port"),
    ("EXPOSE 0", "ports are 1-65535"),
    ("EXPOSE 70000", "ports are 1-65535"),
    ("EXPOSE 90-80", "ranges go upwards"),
    ("VOLUME", "VOLUME requires at least one"),
    ('VOLUME ["/a", 1]', "JSON array of strings"),
    ("VOLUME [broken", "not a JSON array"),
    ("WORKDIR", "requires exactly one argument"),
    ("STOPSIGNAL", "requires exactly one argument"),
    # As docker's parser: a JSON array of anything but strings is an error, not a shell line.
    ("CMD [1, 2]", "JSON array must hold strings only"),
    ('ENTRYPOINT ["a", 1]', "JSON array must hold strings only"),
    ("HEALTHCHECK CMD []", "Missing command after HEALTHCHECK CMD"),
    ("HEALTHCHECK --interval=10000000h CMD true", "too long a duration"),
    ("STOPSIGNAL sig-term", "is not a signal"),
    ("HEALTHCHECK", "HEALTHCHECK requires at least one argument"),
    ("HEALTHCHECK NONE x", "HEALTHCHECK NONE takes no arguments"),
    ("HEALTHCHECK --interval=10us CMD true", "cannot be less than 1ms"),
    ("HEALTHCHECK --interval=5 CMD true", "not a duration"),
    ("HEALTHCHECK --timeout CMD true", "needs a value"),
    ("HEALTHCHECK --retries=-1 CMD true", "--retries cannot be negative"),
    ("HEALTHCHECK --foo=1 CMD true", "unknown flag: --foo"),
    ("HEALTHCHECK CMD", "requires at least one argument"),
    ("HEALTHCHECK EXEC x", "unknown type 'EXEC' in HEALTHCHECK (try CMD)"),
    ("ONBUILD", "ONBUILD requires at least one argument"),
    ("ONBUILD ONBUILD RUN x", "chaining ONBUILD"),
    ("ONBUILD from x", "FROM isn't allowed as an ONBUILD trigger"),
]


@pytest.mark.parametrize(("line", "message"), BAD)
def test_bad(line: str, message: str) -> None:
    with pytest.raises(InvalidChangeError) as info:
        parse_change(line)
    text = str(info.value)
    assert message in text
    assert repr(line) in text
    assert "\n" not in text


def test_bad_change_is_format_and_value_error() -> None:
    with pytest.raises(FormatError):
        parse_change("RUN x")
    with pytest.raises(ValueError):
        parse_change("RUN x")


def test_one_bad_change_applies_none() -> None:
    with pytest.raises(InvalidChangeError):
        apply_changes(BASE, ["ENV A=1", "NOPE"])


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (["ENV P=http", "EXPOSE $P"], "'http' is not a port"),
        (["ENV S=FOO", "STOPSIGNAL $S"], "'FOO' is not a signal"),
        (['ENV A="${NOPE:?must be set}"'], "NOPE: must be set"),
        (["ENV A=${NOPE?}"], "NOPE: is not set"),
        (["VOLUME $NOPE"], "non-empty path"),
    ],
)
def test_bad_after_substitution(changes: list[str], message: str) -> None:
    """What a variable decides is checked when the change is applied, naming the change."""
    for line in changes:
        parse_change(line)
    with pytest.raises(InvalidChangeError) as info:
        apply_changes(BASE, changes)
    assert message in str(info.value) and repr(changes[-1]) in str(info.value)


@pytest.mark.parametrize(
    ("changes", "lines"),
    [
        (["ENV X=1"], ["ENV X=1"]),
        (["ENV X=1\nENV Y=2"], ["ENV X=1", "ENV Y=2"]),
        # A trailing backslash continues the line, also into the next change, as docker joins
        # them; blank lines and comments go, also inside a continued one.
        (["ENV A=1 \\", "  B=2"], ["ENV A=1   B=2"]),
        (["LABEL a=1 \\  \n# note\n\n  b=2\nEXPOSE 80"], ["LABEL a=1   b=2", "EXPOSE 80"]),
        (["# only a comment", "", "   "], []),
        (["LABEL a=#b", 'CMD ["x\\\\"]'], ["LABEL a=#b", 'CMD ["x\\\\"]']),
        (["ENV A=1 \\"], ["ENV A=1 "]),
    ],
)
def test_changes_are_read_as_docker_commit_joins_them(changes: list[str], lines: list[str]) -> None:
    assert split_changes(changes) == lines
