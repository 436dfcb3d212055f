"""`python -m runner`: the same as the `itwin-run` command."""

from runner.cli import entry

entry()
