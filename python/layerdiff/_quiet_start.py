"""The command line's first import: a Ctrl-C while the rest of its modules load ends it with
the line it gives once it runs (``layerdiff: error: interrupted``), and by SIGINT, not with a
traceback of the import. (One during the interpreter's own start, before this, still gives
Python's traceback.)"""

from __future__ import annotations

import sys
from types import TracebackType

_previous = sys.excepthook


def _hook(kind: type[BaseException], value: BaseException, tb: TracebackType | None) -> None:
    if issubclass(kind, KeyboardInterrupt):
        # Python then ends by SIGINT, as a shell expects of an interrupted command.
        sys.stderr.write("layerdiff: error: interrupted\n")
        return
    _previous(kind, value, tb)


def loaded() -> None:
    """The modules are loaded: the command's own handling takes over."""
    if sys.excepthook is _hook:
        sys.excepthook = _previous


sys.excepthook = _hook
