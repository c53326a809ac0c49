"""``python -m layerdiff``: the command line."""

from layerdiff.cli import entry

entry()
