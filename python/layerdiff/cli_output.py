"""Output shared by the command-line modules: JSON on stdout, tables, one-line errors."""

from __future__ import annotations

import json
import sys
from typing import Any, NoReturn

import click


def emit_json(obj: Any) -> None:
    """Print one JSON value on stdout."""
    click.echo(json.dumps(obj, indent=2, ensure_ascii=True))


def table(rows: list[list[str]]) -> None:
    """Print rows as aligned columns (the first row is the heading)."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for row in rows:
        cells = [cell.ljust(w) for cell, w in zip(row[:-1], widths[:-1], strict=True)]
        click.echo("   ".join([*cells, row[-1]]).rstrip())


def error(message: str) -> None:
    """Print ``layerdiff: error: MESSAGE`` on stderr, on one line."""
    click.echo(f"layerdiff: error: {' '.join(message.split())}", err=True)


def fail(message: str, code: int) -> NoReturn:
    """:func:`error`, then exit with ``code``."""
    error(message)
    sys.exit(code)
