"""``python -m oasisvq``: the command line."""

from oasisvq.cli import entry

entry()
