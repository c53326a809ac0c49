"""The container commands of the command line: create, run, start, ps, rm."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

import click

from layerdiff.cli_output import emit_json, error, fail, table
from layerdiff.errors import LayerdiffError

if TYPE_CHECKING:
    from layerdiff import runtime
    from layerdiff.cgroups import Limits

#: Exit code when the container cannot be set up or the command line is wrong
#: (``runtime.EXIT_SETUP``, as docker run, create and start).
EXIT_SETUP = 125


def _limits(memory: str | None, cpus: str | None, pids: int | None) -> Limits:
    from layerdiff.cgroups import Limits, parse_cpus, parse_memory

    def parsed(value: str | None, parse: Callable[[str], Any], option: str) -> Any:
        try:
            return parse(value) if value else None
        except ValueError as e:
            raise click.BadParameter(str(e), param_hint=option) from None

    return Limits(
        memory=parsed(memory, parse_memory, "--memory"),
        cpus=parsed(cpus, parse_cpus, "--cpus"),
        pids=pids,
    )


def _container_options(f: Callable[..., Any]) -> Callable[..., Any]:
    """Options shared by create and run (the subset of docker run's that applies)."""
    options = [
        click.option("--name", help="Container name (or a directory path for the container)."),
        click.option("-e", "--env", "env", multiple=True, metavar="K=V", help="Set a variable."),
        click.option("-w", "--workdir", help="Working directory inside the container (absolute)."),
        click.option("-u", "--user", help="USER[:GROUP] by name or number (the image's)."),
        click.option("--hostname", help="Hostname [default: the short container id]."),
        click.option(
            "--entrypoint",
            help='Replace the image\'s Entrypoint (one word; "" clears it, so that the '
            "command runs by itself).",
        ),
        click.option("-m", "--memory", metavar="SIZE", help="Memory limit, e.g. 512m, 2g."),
        click.option("--cpus", metavar="N", help="CPU limit, e.g. 1.5."),
        click.option("--pids-limit", type=click.IntRange(min=1), help="Process-count limit."),
        click.option(
            "--network",
            type=click.Choice(["host", "none"]),
            default="host",
            show_default=True,
            help="Share the host's network, or only a loopback of its own.",
        ),
    ]
    for option in reversed(options):
        f = option(f)
    return f


def _create(
    image: str,
    command: tuple[str, ...],
    name: str | None,
    env: tuple[str, ...],
    workdir: str | None,
    user: str | None,
    hostname: str | None,
    entrypoint: str | None,
    memory: str | None,
    cpus: str | None,
    pids_limit: int | None,
    network: str,
    tty: bool = False,
) -> runtime.Container:
    from layerdiff import runtime

    return runtime.create(
        image,
        tty=tty,
        name=name,
        command=command or None,
        entrypoint=_entrypoint(entrypoint),
        env=env,
        workdir=workdir,
        user=user,
        hostname=hostname,
        network=network,
        limits=_limits(memory, cpus, pids_limit),
    )


#: As docker run parses: once IMAGE is read, every word after it is the command's, even one
#: that looks like an option of ours (``run img id -u 1000``, ``run img ls --rm``).
_COMMAND_AFTER_IMAGE = {"allow_interspersed_args": False}


def _command(words: tuple[str, ...]) -> tuple[str, ...]:
    """The command given after IMAGE, without the ``--`` that may separate it."""
    return words[1:] if words[:1] == ("--",) else words


def _entrypoint(value: str | None) -> list[str] | None:
    """The Entrypoint ``--entrypoint`` asks for: none given keeps the image's, ``""`` clears it."""
    if value is None:
        return None
    return [value] if value else []


def _finish(result: runtime.RunResult) -> NoReturn:
    if result.error:
        error(result.error)
    sys.exit(result.exit_code)


def register(cli: click.Group) -> None:
    """Add the container commands to ``cli``."""

    @cli.command(
        epilog="""\b
Examples:
  layerdiff run --rm base:1 -- sh -c 'echo hello'
  layerdiff run --rm -it base:1 sh
  layerdiff run --name web -e PORT=80 --memory 256m app:1
  layerdiff run --network none --pids-limit 64 base:1 -- ps
Options go before IMAGE; everything after it is the command (a '--' after IMAGE is
optional). Exit code: the command's, 125 when the container cannot be set up (or the command
line is wrong), 126 when the command cannot run, 127 when it is not found in the image.""",
        context_settings=_COMMAND_AFTER_IMAGE,
    )
    @click.argument("image")
    @click.argument("command", nargs=-1)
    @click.option("--rm", is_flag=True, help="Remove the container when it exits.")
    @click.option(
        "-i",
        "--interactive",
        is_flag=True,
        help="Accepted for docker's sake: standard input always reaches the command.",
    )
    @click.option(
        "-t",
        "--tty",
        is_flag=True,
        help="Give the command a terminal of its own (its standard streams and controlling "
        "terminal, TERM=xterm), relayed to the caller's; typed keys reach it when standard "
        "input is a terminal (with -i and standard input that is not one, none is made).",
    )
    @click.option(
        "-d",
        "--detach",
        is_flag=True,
        hidden=True,  # refused with the way to do it
    )
    @_container_options
    def run(image: str, command: tuple[str, ...], rm: bool, **opts: Any) -> None:
        """Run COMMAND (default: the image's Entrypoint/Cmd) in a new container from IMAGE."""
        from layerdiff import runtime

        # `-it` with standard input that is no terminal (a pipe, a file): its bytes reach the
        # command as they are, where docker refuses ("the input device is not a TTY").
        if opts.pop("interactive") and not os.isatty(0):
            opts["tty"] = False
        if opts.pop("detach"):
            raise click.UsageError(
                "-d/--detach is not supported: a run stays attached to its caller (run it in "
                "the background, e.g. with '&' or nohup; ps shows it, rm -f stops it)"
            )
        limits = _limits(opts.pop("memory"), opts.pop("cpus"), opts.pop("pids_limit"))
        entrypoint = opts.pop("entrypoint")
        command = _command(command)
        try:
            result = runtime.run(
                image,
                command or None,
                rm=rm,
                entrypoint=_entrypoint(entrypoint),
                limits=limits,
                **opts,
            )
        except LayerdiffError as e:
            fail(str(e), EXIT_SETUP)
        _finish(result)

    @cli.command(
        epilog="""\b
Examples:
  layerdiff create --name dev base:1 -- sh -c 'apk add curl'
  layerdiff create --name /srv/containers/dev base:1
Options go before IMAGE; everything after it is the command (a '--' after IMAGE is
optional).""",
        context_settings=_COMMAND_AFTER_IMAGE,
    )
    @click.argument("image")
    @click.argument("command", nargs=-1)
    @click.option(
        "-t",
        "--tty",
        is_flag=True,
        help="Give the command a terminal of its own at each start (see run -t).",
    )
    @_container_options
    def create(image: str, command: tuple[str, ...], **opts: Any) -> None:
        """Create a container from IMAGE (its layers are cached) and print its name."""
        try:
            container = _create(image, _command(command), **opts)
        except LayerdiffError as e:
            fail(str(e), EXIT_SETUP)
        click.echo(container.name if "/" not in (opts["name"] or "") else str(container.path))

    @cli.command(epilog="Example:\n\n  layerdiff start dev")
    @click.argument("name", metavar="CONTAINER")
    def start(name: str) -> None:
        """Run a created container's command in the foreground; exit with its exit code."""
        from layerdiff import runtime

        try:
            result = runtime.start(runtime.open_container(name))
        except LayerdiffError as e:
            fail(str(e), EXIT_SETUP)
        _finish(result)

    @cli.command(epilog="Example:\n\n  layerdiff pause web")
    @click.argument("names", nargs=-1, required=True, metavar="CONTAINER...")
    def pause(names: tuple[str, ...]) -> None:
        """Freeze every process of running containers (like docker pause)."""
        _pause_each(names, frozen=True)

    @cli.command(epilog="Example:\n\n  layerdiff unpause web")
    @click.argument("names", nargs=-1, required=True, metavar="CONTAINER...")
    def unpause(names: tuple[str, ...]) -> None:
        """Thaw paused containers (like docker unpause): paused by `pause`, or left frozen by a
        `commit --pause` that was killed."""
        _pause_each(names, frozen=False)

    def _pause_each(names: tuple[str, ...], *, frozen: bool) -> None:
        from layerdiff import runtime

        _each(names, lambda name: runtime.pause(name, frozen=frozen))

    def _each(names: tuple[str, ...], act: Callable[[str], object]) -> None:
        """``act`` on every container named, printing each name done, as docker does; the
        failures are told and make the exit code 1 once all are tried."""
        failed = False
        for name in names:
            try:
                act(name)
            except LayerdiffError as e:
                error(str(e))
                failed = True
                continue
            click.echo(name)
        if failed:
            sys.exit(1)

    @cli.command(epilog="Example:\n\n  layerdiff ps --json")
    @click.option("-q", "--quiet", is_flag=True, help="Print IDs only, as docker ps -q does.")
    @click.option("--json", "as_json", is_flag=True, help="Print one JSON array on stdout.")
    @click.option(
        "-a", "--all", "all_", is_flag=True, help="Accepted for docker's sake: all are listed."
    )
    def ps(quiet: bool, as_json: bool, all_: bool) -> None:
        """List the containers of the store, with their state (like docker ps -a)."""
        from layerdiff import runtime

        found = runtime.containers()
        if quiet:
            for c in found:
                click.echo(c.id[:12])
            return
        if as_json:
            emit_json(
                [
                    {
                        "id": c.id,
                        "name": c.reference,
                        "image": c.data.get("image"),
                        "command": c.command,
                        "created": c.data.get("created"),
                        "state": c.state,
                        "exit_code": c.data.get("exit_code"),
                        "path": str(c.path),
                    }
                    for c in found
                ]
            )
            return
        import shlex  # for ps only

        rows = [["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "NAMES"]]
        seen: dict[Any, str | None] = {}
        for c in found:
            status = c.state
            if status == "exited" and c.data.get("exit_code") is not None:
                status = f"exited ({c.data['exit_code']})"
            command = shlex.join(c.command)
            command = command if len(command) <= 30 else command[:29] + "…"
            created = str(c.data.get("created", ""))
            rows.append([c.id[:12], _image_shown(c, seen), command, created, status, c.reference])
        table(rows)

    def _image_shown(container: Any, seen: dict[Any, str | None]) -> str:
        """The name the container's image was given, while it still names that image; else
        the image's ID, as docker shows it once the name has moved on. ``seen``: what each
        name named, looked up once for all the containers listed."""
        import dataclasses

        from layerdiff.refs import parse_layout_reference
        from layerdiff.tags import named

        made_from = container.data.get("image_descriptor", {}).get("digest")
        name = str(container.data.get("image"))
        try:
            ref = parse_layout_reference(name)
            if not ref.in_store:  # where it was, whatever directory ps runs in
                ref = dataclasses.replace(ref, layout=Path(container.data["image_layout"]))
            if ref not in seen:
                seen[ref] = None  # unless found below
                seen[ref] = str(named(ref)["digest"])
            now = seen[ref]
        except (LayerdiffError, OSError, KeyError, TypeError):
            now = None
        if now is None or now not in (made_from, container.data.get("image_entry")):
            return str(made_from).removeprefix("sha256:")[:12]
        return name

    @cli.command(epilog="Example:\n\n  layerdiff rm -f web dev")
    @click.argument("names", nargs=-1, required=True, metavar="CONTAINER...")
    @click.option("-f", "--force", is_flag=True, help="Also remove running containers.")
    def rm(names: tuple[str, ...], force: bool) -> None:
        """Remove containers: their directories, control groups and state."""
        from layerdiff import runtime

        _each(names, lambda name: runtime.remove(name, force=force))
